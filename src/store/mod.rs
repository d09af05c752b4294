//! Where session records live: the [`SessionStore`] trait and its implementations.
//!
//! A store does I/O only. It never decides whether a session is expired or
//! acceptable (the layer's policy does, from the record); it keeps records
//! under the id's at-rest hash, applies deltas atomically, and frees memory
//! some time after a record's deadline as a backstop.
//!
//! | store | feature | for |
//! |---|---|---|
//! | [`MokaStore`] | always | one process; bounded, in memory |
//! | `RedisStore` | `redis` | several instances sharing Redis (single node or Cluster); see the `redis` module for the key layout and atomicity |
//! | [`CachedStore`] | always | a bounded in-memory cache in front of another store; over Redis, invalidated across instances by pub/sub |
//!
//! Writing a store? Run the public contract suite on it: see
//! [`conformance`] (feature `test-util`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixMillis;
use crate::id::{IdHash, SealedId};
use crate::policy::SessionLimit;
use crate::record::{Change, SessionRecord, Successor};

mod cached;
mod changes;
mod moka;
#[cfg(feature = "redis")]
pub mod redis;
mod table;

#[cfg(feature = "test-util")]
pub mod conformance;

pub use self::cached::{CachedStore, DEFAULT_CACHE_TTL};
pub use self::changes::{ChangeListener, StoreChange};
pub use self::moka::{MokaStore, DEFAULT_MAX_SESSIONS};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, DEFAULT_PREFIX, DEFAULT_TIMEOUT};

/// Storage for session records, keyed by the at-rest hash of the session id.
///
/// Every method is atomic with respect to the others on the same key. The
/// trait is object safe: the layer holds stores as `Arc<dyn SessionStore>`.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new record under `record.id_hash`, unless a record already
    /// exists there.
    ///
    /// Returns `Ok(false)` on such a collision and leaves the existing record
    /// untouched (the layer then draws another id).
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError>;

    /// The record under `id`, if there is one.
    async fn load(&self, id: &IdHash) -> Result<Option<Arc<SessionRecord>>, StoreError>;

    /// Applies `change` to the record under `id` atomically (see
    /// [`SessionRecord::apply`]). Concurrent updates that set different keys
    /// must all be kept. When `id` holds a forwarding entry, the change goes
    /// to its successor (requests that were in flight during a renewal keep
    /// their writes). Returns `Ok(false)` when there is no record.
    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError>;

    /// Deletes the record under `id`. Returns whether there was one.
    async fn delete(&self, id: &IdHash) -> Result<bool, StoreError>;

    /// Moves the record under `old` to `new` in one atomic step, applying
    /// `regeneration` on the way; afterwards only a placeholder is stored
    /// under `old` ([`Regeneration::replacement`]: a renewal's forwarding
    /// entry, or a short-lived superseded marker).
    ///
    /// Returns the record as stored under `new`, or `Ok(None)` when there was
    /// no session under `old` (nothing, or a forwarding entry: then nothing
    /// is written, so of concurrent renewals exactly one wins).
    async fn regenerate(
        &self,
        old: &IdHash,
        new: &IdHash,
        regeneration: &Regeneration,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError>;

    /// Signs a user in, as one atomic step per user: enforces the session
    /// limit (with [`sessions_to_evict`](crate::policy::sessions_to_evict)), deletes the evicted
    /// sessions, then moves `login.previous` to `login.record.id_hash`
    /// ([`Login::moved`], leaving [`Login::superseded`] under the old id)
    /// or, when there is no previous session or it is gone, creates
    /// `login.record`. Finally the new session joins the user's index.
    ///
    /// Concurrent logins of one user must not overshoot the limit.
    async fn login(&self, login: &Login) -> Result<LoginOutcome, StoreError>;

    /// The user's live sessions at `now` (not forwarding entries), read
    /// from the per-user index without scanning the store. Dead index
    /// entries found on the way are dropped.
    async fn list_user(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Arc<SessionRecord>>, StoreError>;

    /// Deletes every session of the user except `keep`, atomically per user,
    /// and returns the hashes deleted.
    async fn delete_user(
        &self,
        user_id: &str,
        keep: Option<&IdHash>,
    ) -> Result<Vec<IdHash>, StoreError>;

    /// Starts telling `listener` which records change through any handle
    /// on this store's backend (other instances sharing one Redis, say), so
    /// that a cache in front of the store, such as [`CachedStore`], can drop
    /// its copies. Returns whether the store will call `listener`.
    ///
    /// The default returns `false`: right for stores that only this
    /// process changes, like [`MokaStore`].
    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        let _ = listener;
        false
    }
}

/// How long the entry left under an id replaced by a login or a
/// regeneration lasts (30 seconds): requests that were in flight with the
/// old id meanwhile get no session but leave the client's (new) cookie alone.
pub const SUPERSEDED_FOR_MS: UnixMillis = 30_000;

/// A login for [`SessionStore::login`].
#[derive(Clone, Debug, PartialEq)]
pub struct Login {
    /// The session the request arrived with, if it was stored.
    pub previous: Option<IdHash>,
    /// The session to create when there is no previous one; its `id_hash`
    /// is the new id's hash either way, and its `user_id`, `ip`,
    /// `user_agent`, `binding` and `id_issued_at` are applied to a moved session.
    pub record: SessionRecord,
    /// Pending writes, applied to a moved session (already in `record`'s data).
    pub change: Change,
    /// The user's session limit, if any.
    pub limit: Option<SessionLimit>,
    /// The current time, to tell live sessions from dead ones.
    pub now: UnixMillis,
}

impl Login {
    /// Which of the user's `live` sessions to delete so this login fits
    /// under its limit (the previous session itself does not count), or
    /// `Err` when the limit refuses the login.
    ///
    /// # Errors
    ///
    /// [`LimitReached`](crate::policy::LimitReached) when the limit is full and the rule is `RejectLogin`.
    pub fn evictions(
        &self,
        live: &[Arc<SessionRecord>],
    ) -> Result<Vec<IdHash>, crate::policy::LimitReached> {
        let Some(limit) = self.limit else {
            return Ok(Vec::new());
        };
        let others: Vec<&SessionRecord> = live
            .iter()
            .map(|r| &**r)
            .filter(|r| Some(r.id_hash) != self.previous)
            .collect();
        crate::policy::sessions_to_evict(&others, &limit)
    }

    /// The entry to leave under the previous id.
    #[must_use]
    pub fn superseded(&self, previous: &SessionRecord) -> SessionRecord {
        previous.superseded_marker(self.now.saturating_add(SUPERSEDED_FOR_MS))
    }

    /// The record as stored after moving `previous` to the new id.
    ///
    /// A session signed in as another user keeps none of that user's data:
    /// only this request's writes carry over.
    #[must_use]
    pub fn moved(&self, previous: &SessionRecord) -> SessionRecord {
        let mut moved = previous.clone();
        if previous.user_id.is_some() && previous.user_id != self.record.user_id {
            moved.data = crate::record::SessionData::default();
        }
        moved.apply(&self.change);
        moved.id_hash = self.record.id_hash;
        moved.user_id.clone_from(&self.record.user_id);
        moved.id_issued_at = self.record.id_issued_at;
        moved.ip = self.record.ip;
        moved.user_agent.clone_from(&self.record.user_agent);
        moved.binding.clone_from(&self.record.binding);
        moved
    }
}

/// What [`SessionStore::login`] did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoginOutcome {
    /// The user is signed in under the new id.
    LoggedIn {
        /// The session as stored.
        record: Arc<SessionRecord>,
        /// Whether the previous session was moved (`false`: a new one was created).
        moved: bool,
        /// Sessions deleted to respect the limit.
        evicted: Vec<IdHash>,
    },
    /// The limit is full and the rule refuses the login; nothing changed.
    LimitReached,
}

/// What changes when a stored session gets a new id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regeneration {
    /// Pending data changes, applied in the same step.
    pub change: Change,
    /// `Some` to set the signed-in user (a login).
    pub user_id: Option<String>,
    /// When the new id was issued.
    pub issued_at: UnixMillis,
    /// Leave a forwarding entry under the old id (a renewal with a grace
    /// period) instead of deleting it.
    pub forward: Option<Forward>,
}

/// The forwarding entry a renewal leaves under the old id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The new id, sealed with the old one.
    pub sealed_id: SealedId,
    /// When the old id stops working.
    pub until: UnixMillis,
}

impl Regeneration {
    /// The record as it should be stored under `new`.
    #[must_use]
    pub fn apply_to(&self, record: &SessionRecord, new: &IdHash) -> SessionRecord {
        let mut moved = record.clone();
        moved.apply(&self.change);
        moved.id_hash = *new;
        moved.id_issued_at = self.issued_at;
        if let Some(user) = &self.user_id {
            moved.user_id = Some(user.clone());
        }
        moved
    }

    /// The entry to leave under the old id: the renewal's forwarding entry,
    /// or else a superseded marker for [`SUPERSEDED_FOR_MS`].
    #[must_use]
    pub fn replacement(&self, record: &SessionRecord, new: &IdHash) -> SessionRecord {
        match self.forward {
            Some(forward) => record.forward_to(
                Successor {
                    id_hash: *new,
                    sealed_id: forward.sealed_id,
                },
                forward.until,
            ),
            None => record.superseded_marker(self.issued_at.saturating_add(SUPERSEDED_FOR_MS)),
        }
    }
}

/// A store could not do what was asked.
///
/// The layer answers `503 Service Unavailable` for every variant and logs it
/// at `error`. No variant carries a session id.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The backing service could not be reached or refused the operation.
    Unavailable(String),
    /// The backing service did not answer in time.
    Timeout,
    /// A stored record could not be decoded.
    Corrupt(String),
    /// Any other failure of the backing service.
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "the session store is unavailable: {why}"),
            Self::Timeout => f.write_str("the session store did not answer in time"),
            Self::Corrupt(why) => write!(f, "a stored session could not be decoded: {why}"),
            Self::Backend(err) => write!(f, "the session store failed: {err}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Backend(err) => Some(&**err),
            _ => None,
        }
    }
}

/// A shared store is a store: `SessionLayer::new(Arc::clone(&store), key)`.
#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        (**self).create(record).await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        (**self).load(id).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        (**self).update(id, change).await
    }

    async fn delete(&self, id: &IdHash) -> Result<bool, StoreError> {
        (**self).delete(id).await
    }

    async fn regenerate(
        &self,
        old: &IdHash,
        new: &IdHash,
        regeneration: &Regeneration,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        (**self).regenerate(old, new, regeneration).await
    }

    async fn login(&self, login: &Login) -> Result<LoginOutcome, StoreError> {
        (**self).login(login).await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        (**self).list_user(user_id, now).await
    }

    async fn delete_user(
        &self,
        user_id: &str,
        keep: Option<&IdHash>,
    ) -> Result<Vec<IdHash>, StoreError> {
        (**self).delete_user(user_id, keep).await
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        (**self).watch_changes(listener)
    }
}
