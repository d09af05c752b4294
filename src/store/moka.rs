//! The default store: a bounded in-memory cache on moka.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::Expiry;

use super::{Regeneration, SessionStore, StoreError};
use crate::id::IdHash;
use crate::record::{Change, SessionRecord};

/// How long after its deadline a record may linger before the cache drops it.
///
/// The policy, not the cache, decides expiry: the slack lets the layer see an
/// expired record (and report *why* it expired) instead of finding nothing.
const BACKSTOP_SLACK: Duration = Duration::from_secs(30);

/// Sessions kept by [`MokaStore::default`].
pub const DEFAULT_MAX_SESSIONS: u64 = 100_000;

/// An in-memory store for a single process, bounded by a number of sessions.
///
/// - **Bounded**: at most `max_sessions` records; when full, the least
///   recently used session is dropped to make room (plain LRU, so a new
///   session is never refused).
/// - **Expiry backstop**: each record is dropped some seconds after its
///   idle or absolute deadline, measured from its last write, so memory held
///   by abandoned sessions comes back without a sweeper task.
/// - **Atomic**: updates are read-modify-write under moka's per-key lock, so
///   concurrent requests writing different keys keep all their writes.
///
/// Clones share one cache: two layers (say, before and after a key
/// rotation) can share a store.
///
/// ```
/// use tower_session_guard::{Key, MokaStore, SessionLayer};
///
/// let layer = SessionLayer::new(MokaStore::new(50_000), Key::generate());
/// ```
#[derive(Clone)]
pub struct MokaStore {
    records: Cache<IdHash, Arc<SessionRecord>>,
}

impl MokaStore {
    /// A store holding at most `max_sessions` sessions.
    #[must_use]
    pub fn new(max_sessions: u64) -> Self {
        let records = Cache::builder()
            .max_capacity(max_sessions)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Backstop)
            .build();
        Self { records }
    }

    /// The number of sessions held, approximately (moka counts lazily).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.records.entry_count()
    }

    /// Whether the store holds no sessions, approximately.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs moka's pending housekeeping now (evictions, expiries, counts).
    ///
    /// Not needed in production; useful in tests and memory measurements.
    pub async fn run_pending_tasks(&self) {
        self.records.run_pending_tasks().await;
    }
}

impl Default for MokaStore {
    /// A store for [`DEFAULT_MAX_SESSIONS`] (100 000) sessions.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SESSIONS)
    }
}

impl fmt::Debug for MokaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaStore")
            .field("sessions", &self.records.entry_count())
            .finish()
    }
}

#[async_trait]
impl SessionStore for MokaStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let result = self
            .records
            .entry(record.id_hash)
            .and_compute_with(|existing| {
                let op = match existing {
                    Some(_) => Op::Nop,
                    None => Op::Put(Arc::new(record.clone())),
                };
                std::future::ready(op)
            })
            .await;
        Ok(matches!(result, CompResult::Inserted(_)))
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.records.get(id).await)
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let result = self
            .records
            .entry(*id)
            .and_compute_with(|existing| {
                let op = match existing {
                    Some(entry) => {
                        let mut record = SessionRecord::clone(entry.value());
                        record.apply(change);
                        Op::Put(Arc::new(record))
                    }
                    None => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }

    async fn delete(&self, id: &IdHash) -> Result<bool, StoreError> {
        Ok(self.records.remove(id).await.is_some())
    }

    async fn regenerate(
        &self,
        old: &IdHash,
        new: &IdHash,
        regeneration: &Regeneration,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let Some(previous) = self.records.remove(old).await else {
            return Ok(None);
        };
        let moved = Arc::new(regeneration.apply_to(&previous, new));
        let result = self
            .records
            .entry(*new)
            .and_compute_with(|existing| {
                let op = match existing {
                    Some(_) => Op::Nop,
                    None => Op::Put(Arc::clone(&moved)),
                };
                std::future::ready(op)
            })
            .await;
        if matches!(result, CompResult::Inserted(_)) {
            Ok(Some(moved))
        } else {
            // A 128-bit collision: put the old session back untouched.
            self.records.insert(*old, previous).await;
            Err(StoreError::Unavailable(
                "the new session id was already taken; nothing was changed".into(),
            ))
        }
    }
}

/// Per-record lifetime in the cache: the time left to the record's earliest
/// deadline as of its last write, plus [`BACKSTOP_SLACK`].
///
/// Measured from the record's own `last_seen`, not the wall clock, so a
/// record written under a test clock is not dropped early.
struct Backstop;

impl Backstop {
    fn lifetime(record: &SessionRecord) -> Duration {
        let left = record.expires_at().saturating_sub(record.last_seen);
        Duration::from_millis(left) + BACKSTOP_SLACK
    }
}

impl Expiry<IdHash, Arc<SessionRecord>> for Backstop {
    fn expire_after_create(
        &self,
        _key: &IdHash,
        value: &Arc<SessionRecord>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Self::lifetime(value))
    }

    fn expire_after_update(
        &self,
        _key: &IdHash,
        value: &Arc<SessionRecord>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(Self::lifetime(value))
    }
}
