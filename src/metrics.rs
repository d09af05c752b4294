//! Counters, histograms and a gauge through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`).
//!
//! The layer records through whatever recorder the application installed
//! (Prometheus, OpenTelemetry, StatsD, ...); with none installed, recording
//! does nothing. Names follow Prometheus conventions: every name starts
//! with `tower_session_guard_`, counters end in `_total`, times are
//! histograms in seconds ending in `_seconds`. Labels come from small fixed
//! sets (a reason, an operation, how a session ended): never a session id,
//! token, fingerprint, user id or address, so a flood of bad tokens cannot
//! blow up an exporter's memory.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `tower_session_guard_sessions_created_total` | counter | | sessions stored for the first time |
//! | `tower_session_guard_logins_total` | counter | | sign-ins |
//! | `tower_session_guard_logouts_total` | counter | | sessions ended by `logout`, `logout_everywhere`, `logout_others` |
//! | `tower_session_guard_renewals_total` | counter | | ids renewed by `with_renewal_interval` |
//! | `tower_session_guard_regenerations_total` | counter | | ids changed by `Session::regenerate` |
//! | `tower_session_guard_expiries_total` | counter | `reason`: `idle`, `absolute` | sessions found expired (and destroyed) by a request, or removed after they had expired; `reason` is the deadline passed first |
//! | `tower_session_guard_rejections_total` | counter | `reason`: see below | tokens not accepted |
//! | `tower_session_guard_evictions_total` | counter | | sessions destroyed to keep a user under the session limit (at a sign-in or a re-authentication) |
//! | `tower_session_guard_revocations_total` | counter | | sessions destroyed through `SessionAdmin`, by `Session::revoke_mine` of another device, or for reuse of their renewed token (`with_revoke_on_reuse`) |
//! | `tower_session_guard_token_reuses_total` | counter | | renewed tokens presented after their grace period (copied before the renewal, most likely) |
//! | `tower_session_guard_guessing_blocks_total` | counter | | networks blocked (`429`) for sending too many bad tokens |
//! | `tower_session_guard_store_errors_total` | counter | `operation`: see below | failed store operations |
//! | `tower_session_guard_session_duration_seconds` | histogram | `end`: `logout`, `idle_timeout`, `absolute_timeout`, `evicted`, `revoked`, `rejected` | how long a signed-in session lasted, at its end (see the [`insights`](crate::insights) module docs for what counts) |
//! | `tower_session_guard_idle_gap_seconds` | histogram | | time since the session's recorded activity, on each request that finds one |
//! | `tower_session_guard_store_operation_seconds` | histogram | `operation` | how long each store operation took |
//! | `tower_session_guard_live_sessions` | gauge | | entries the store holds, for stores that can tell (see below) |
//!
//! `reason` of a rejection: `invalid_token`, `unknown_session`,
//! `ambiguous_token`, `insecure_transport`, `user_agent_changed`,
//! `too_many_networks`, `impossible_travel`, `cross_site_request`,
//! `csrf_token_mismatch`, `credentials_changed`. `operation` of the store: `create`, `load`,
//! `update`, `replace`, `delete`, `index_add`, `index_remove`,
//! `index_members`, `lock_user` (the store's primitives; a request's load
//! is one `load`, or two through a renewal's forward, and its commit one
//! `update` or `create`).
//!
//! The live-sessions gauge is set from
//! [`SessionStore::live_sessions`], at
//! most once a second, when a request passes: [`MemoryStore`](crate::MemoryStore)
//! can tell (its entries, including the short-lived placeholders of
//! sessions that just moved), and so can a [`CachedStore`](crate::CachedStore)
//! in front of one; Redis and the SQL stores cannot without a scan or a
//! count query per sample, and report nothing.
//!
//! Call [`describe`] once after installing the recorder to give the
//! exporter each metric's help text and unit.
//!
//! ```ignore
//! use metrics_exporter_prometheus::PrometheusBuilder;
//!
//! let prometheus = PrometheusBuilder::new()
//!     .install_recorder()
//!     .expect("one recorder per process");
//! // Help text and units.
//! tower_session_guard::metrics::describe();
//! // Serve `prometheus.render()` on GET /metrics (or use the exporter's own
//! // HTTP listener, its `http-listener` feature).
//! ```
//!
//! A whole app doing this is the repository's `e2e/examples/prometheus.rs`
//! (`cargo run -p e2e --example prometheus --features metrics`).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{Key, Label, Level, Metadata, Unit};

use crate::id::IdHash;
use crate::policy::RejectReason;
use crate::record::{Change, Entry, SessionRecord};
use crate::store::{ChangeListener, SessionStore, StoreError, UserLock};

/// `tower_session_guard_sessions_created_total`.
pub const SESSIONS_CREATED: &str = "tower_session_guard_sessions_created_total";
/// `tower_session_guard_logins_total`.
pub const LOGINS: &str = "tower_session_guard_logins_total";
/// `tower_session_guard_logouts_total`.
pub const LOGOUTS: &str = "tower_session_guard_logouts_total";
/// `tower_session_guard_renewals_total`.
pub const RENEWALS: &str = "tower_session_guard_renewals_total";
/// `tower_session_guard_regenerations_total`.
pub const REGENERATIONS: &str = "tower_session_guard_regenerations_total";
/// `tower_session_guard_expiries_total`, label `reason`.
pub const EXPIRIES: &str = "tower_session_guard_expiries_total";
/// `tower_session_guard_rejections_total`, label `reason`.
pub const REJECTIONS: &str = "tower_session_guard_rejections_total";
/// `tower_session_guard_evictions_total`.
pub const EVICTIONS: &str = "tower_session_guard_evictions_total";
/// `tower_session_guard_revocations_total`.
pub const REVOCATIONS: &str = "tower_session_guard_revocations_total";
/// `tower_session_guard_token_reuses_total`.
pub const TOKEN_REUSES: &str = "tower_session_guard_token_reuses_total";
/// `tower_session_guard_guessing_blocks_total`.
pub const GUESSING_BLOCKS: &str = "tower_session_guard_guessing_blocks_total";
/// `tower_session_guard_store_errors_total`, label `operation`.
pub const STORE_ERRORS: &str = "tower_session_guard_store_errors_total";
/// `tower_session_guard_session_duration_seconds`, label `end`.
pub const SESSION_DURATION: &str = "tower_session_guard_session_duration_seconds";
/// `tower_session_guard_idle_gap_seconds`.
pub const IDLE_GAP: &str = "tower_session_guard_idle_gap_seconds";
/// `tower_session_guard_store_operation_seconds`, label `operation`.
pub const STORE_OPERATION: &str = "tower_session_guard_store_operation_seconds";
/// `tower_session_guard_live_sessions`.
pub const LIVE_SESSIONS: &str = "tower_session_guard_live_sessions";

/// Gives the installed recorder the help text and unit of every metric
/// this crate records. Call it once, after installing the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SESSIONS_CREATED,
        Unit::Count,
        "Sessions stored for the first time."
    );
    describe_counter!(LOGINS, Unit::Count, "Sign-ins.");
    describe_counter!(LOGOUTS, Unit::Count, "Sessions ended by a logout.");
    describe_counter!(
        RENEWALS,
        Unit::Count,
        "Session ids renewed on their interval."
    );
    describe_counter!(
        REGENERATIONS,
        Unit::Count,
        "Session ids changed on request."
    );
    describe_counter!(
        EXPIRIES,
        Unit::Count,
        "Sessions found expired, by timeout (reason)."
    );
    describe_counter!(
        REJECTIONS,
        Unit::Count,
        "Session tokens not accepted, by reason."
    );
    describe_counter!(
        EVICTIONS,
        Unit::Count,
        "Sessions destroyed to respect the session limit."
    );
    describe_counter!(
        REVOCATIONS,
        Unit::Count,
        "Sessions revoked: by an administrator, from another device, or for token reuse."
    );
    describe_counter!(
        TOKEN_REUSES,
        Unit::Count,
        "Renewed session tokens presented after their grace period."
    );
    describe_counter!(
        GUESSING_BLOCKS,
        Unit::Count,
        "Networks blocked for sending too many bad tokens."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Failed session store operations, by operation."
    );
    describe_histogram!(
        SESSION_DURATION,
        Unit::Seconds,
        "How long signed-in sessions lasted, by how they ended."
    );
    describe_histogram!(
        IDLE_GAP,
        Unit::Seconds,
        "Time since a session's recorded activity, on each request that found one."
    );
    describe_histogram!(
        STORE_OPERATION,
        Unit::Seconds,
        "How long session store operations took, by operation."
    );
    describe_gauge!(
        LIVE_SESSIONS,
        Unit::Count,
        "Entries the session store holds."
    );
}

/// Where the layer's metrics say they come from.
pub(crate) static METADATA: Metadata<'static> =
    Metadata::new("tower_session_guard", Level::INFO, Some(module_path!()));

/// A `&'static Key`, labels included, built at compile time: recording
/// allocates nothing.
macro_rules! static_key {
    ($name:expr) => {{
        static KEY: Key = Key::from_static_name($name);
        &KEY
    }};
    ($name:expr, $label:literal => $value:literal) => {{
        static LABELS: [Label; 1] = [Label::from_static_parts($label, $value)];
        static KEY: Key = Key::from_static_parts($name, &LABELS);
        &KEY
    }};
}
pub(crate) use static_key;

pub(crate) fn increment(key: &'static Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(1));
}

pub(crate) fn record(key: &'static Key, value: f64) {
    metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA).record(value));
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn seconds(millis: u64) -> f64 {
    millis as f64 / 1000.0
}

/// The key counting rejections for `reason`.
pub(crate) fn rejection_key(reason: RejectReason) -> &'static Key {
    match reason {
        RejectReason::InvalidToken => static_key!(REJECTIONS, "reason" => "invalid_token"),
        RejectReason::UnknownSession => static_key!(REJECTIONS, "reason" => "unknown_session"),
        RejectReason::AmbiguousToken => static_key!(REJECTIONS, "reason" => "ambiguous_token"),
        RejectReason::InsecureTransport => {
            static_key!(REJECTIONS, "reason" => "insecure_transport")
        }
        RejectReason::UserAgentChanged => {
            static_key!(REJECTIONS, "reason" => "user_agent_changed")
        }
        RejectReason::TooManyNetworks => static_key!(REJECTIONS, "reason" => "too_many_networks"),
        RejectReason::ImpossibleTravel => static_key!(REJECTIONS, "reason" => "impossible_travel"),
        RejectReason::CrossSiteRequest => {
            static_key!(REJECTIONS, "reason" => "cross_site_request")
        }
        RejectReason::CsrfTokenMismatch => {
            static_key!(REJECTIONS, "reason" => "csrf_token_mismatch")
        }
        RejectReason::CredentialsChanged => {
            static_key!(REJECTIONS, "reason" => "credentials_changed")
        }
    }
}

/// A store primitive, for the store's metrics.
#[derive(Clone, Copy)]
enum Operation {
    Create,
    Load,
    Update,
    Replace,
    Delete,
    IndexAdd,
    IndexRemove,
    IndexMembers,
    LockUser,
}

impl Operation {
    fn duration_key(self) -> &'static Key {
        match self {
            Self::Create => static_key!(STORE_OPERATION, "operation" => "create"),
            Self::Load => static_key!(STORE_OPERATION, "operation" => "load"),
            Self::Update => static_key!(STORE_OPERATION, "operation" => "update"),
            Self::Replace => static_key!(STORE_OPERATION, "operation" => "replace"),
            Self::Delete => static_key!(STORE_OPERATION, "operation" => "delete"),
            Self::IndexAdd => static_key!(STORE_OPERATION, "operation" => "index_add"),
            Self::IndexRemove => static_key!(STORE_OPERATION, "operation" => "index_remove"),
            Self::IndexMembers => static_key!(STORE_OPERATION, "operation" => "index_members"),
            Self::LockUser => static_key!(STORE_OPERATION, "operation" => "lock_user"),
        }
    }

    fn error_key(self) -> &'static Key {
        match self {
            Self::Create => static_key!(STORE_ERRORS, "operation" => "create"),
            Self::Load => static_key!(STORE_ERRORS, "operation" => "load"),
            Self::Update => static_key!(STORE_ERRORS, "operation" => "update"),
            Self::Replace => static_key!(STORE_ERRORS, "operation" => "replace"),
            Self::Delete => static_key!(STORE_ERRORS, "operation" => "delete"),
            Self::IndexAdd => static_key!(STORE_ERRORS, "operation" => "index_add"),
            Self::IndexRemove => static_key!(STORE_ERRORS, "operation" => "index_remove"),
            Self::IndexMembers => static_key!(STORE_ERRORS, "operation" => "index_members"),
            Self::LockUser => static_key!(STORE_ERRORS, "operation" => "lock_user"),
        }
    }
}

/// The layer's store, timed: every primitive's duration and failures go
/// to the store's metrics. Decides nothing; passes everything through.
pub(crate) struct TimedStore {
    inner: Arc<dyn SessionStore>,
}

impl TimedStore {
    pub(crate) fn new(inner: Arc<dyn SessionStore>) -> Self {
        Self { inner }
    }
}

/// Runs one store operation, recording how long it took and whether it failed.
async fn timed<T>(
    operation: Operation,
    run: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = run.await;
    record(operation.duration_key(), started.elapsed().as_secs_f64());
    if result.is_err() {
        increment(operation.error_key());
    }
    result
}

#[async_trait]
impl SessionStore for TimedStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        timed(Operation::Create, self.inner.create(record)).await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        timed(Operation::Load, self.inner.load(id)).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        timed(Operation::Update, self.inner.update(id, change)).await
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        timed(Operation::Replace, self.inner.replace(id, version, with)).await
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        timed(Operation::Delete, self.inner.delete(id)).await
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        expires_at: crate::clock::UnixMillis,
    ) -> Result<(), StoreError> {
        timed(
            Operation::IndexAdd,
            self.inner.index_add(user_id, id, expires_at),
        )
        .await
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        timed(
            Operation::IndexRemove,
            self.inner.index_remove(user_id, ids),
        )
        .await
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: crate::clock::UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        timed(
            Operation::IndexMembers,
            self.inner.index_members(user_id, now),
        )
        .await
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        timed(Operation::LockUser, self.inner.lock_user(user_id)).await
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        self.inner.watch_changes(listener)
    }

    fn live_sessions(&self) -> Option<u64> {
        self.inner.live_sessions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_a_short_lower_case_word() {
        // Every key the layer records: sessions, rejections (every
        // reason), and the store's operations.
        let mut keys: Vec<&Key> = crate::insights::emit::keys();
        assert!(keys.contains(&rejection_key(RejectReason::CredentialsChanged)));
        for op in [
            Operation::Create,
            Operation::Load,
            Operation::Update,
            Operation::Replace,
            Operation::Delete,
            Operation::IndexAdd,
            Operation::IndexRemove,
            Operation::IndexMembers,
            Operation::LockUser,
        ] {
            keys.push(op.duration_key());
            keys.push(op.error_key());
        }
        for key in keys {
            assert!(key.name().starts_with("tower_session_guard_"));
            for label in key.labels() {
                let value = label.value();
                assert!(
                    !value.is_empty()
                        && value.len() <= 24
                        && value.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: {value}",
                    key.name()
                );
            }
        }
    }
}
