//! Where sessions live: the [`SessionStore`] trait and its implementations.
//!
//! A store does I/O only. It keeps [`Entry`]s under the at-rest hash of
//! the session id and offers a few primitives, each atomic on one key. It
//! never decides whether a session is expired or acceptable (the layer's
//! policy does, from the record), and it knows nothing of logins, limits,
//! renewals or logouts: the session protocol is written once, above this
//! trait, and runs the same over every store.
//!
//! | store | feature | for |
//! |---|---|---|
//! | [`MemoryStore`] | always | one process; bounded, in memory ([`quick_cache`]) |
//! | `RedisStore` | `redis` | several instances sharing Redis (single node or Cluster); see the `redis` module for the key layout and atomicity |
//! | `PostgresStore`, `SqliteStore`, `MySqlStore` | `postgres`, `sqlite`, `mysql` | durable sessions in SQL on the application's sqlx pool; see the `sql` module for the schema, locking and purging |
//! | [`CachedStore`] | always | a bounded in-memory cache ([`moka`]) in front of another store; invalidated across instances by Redis pub/sub or PostgreSQL `LISTEN`/`NOTIFY` |
//!
//! # Writing a store
//!
//! A store implements the primitives of [`SessionStore`] and nothing more:
//!
//! | primitive | atomic on one key |
//! |---|---|
//! | [`create`](SessionStore::create) | store a session unless the key holds anything |
//! | [`load`](SessionStore::load) | read the entry |
//! | [`update`](SessionStore::update) | apply a [`Change`] to a session ([`SessionRecord::apply`] does it in memory) and return its new version |
//! | [`replace`](SessionStore::replace) | swap or remove a session, only at the version the caller read |
//! | [`delete`](SessionStore::delete) | remove and return the entry |
//! | [`index_add`](SessionStore::index_add), [`index_remove`](SessionStore::index_remove), [`index_members`](SessionStore::index_members) | the user's index of session ids (the index key alone) |
//! | [`lock_user`](SessionStore::lock_user) | a per-user lock that logins and "log out everywhere" hold |
//!
//! The protocol above the trait relies on nothing else: no operation spans
//! two keys, and it orders its steps so that every state in between is
//! safe (a successor is written before anything points to it, a move only
//! replaces the version it copied, an index entry may be stale but is never
//! the only truth, a removal follows a session that just moved). So a store
//! maps directly onto a Redis Cluster slot, a SQL row with a version
//! column, or a DynamoDB item with a condition expression.
//!
//! Here is a complete store over a `Mutex<HashMap>`. It passes the
//! contract suite, [`conformance`] (feature `test-util`), which checks each
//! primitive and then runs the whole protocol (logins racing at a limit,
//! concurrent renewals, logouts following a moved session) over the store.
//! A real store would also drop entries some time after their
//! [`Entry::expires_at`], as a backstop: the protocol removes the sessions
//! it sees expire, but not the ones nobody comes back to.
//!
//! ```
//! use std::collections::{HashMap, HashSet};
//! use std::sync::{Arc, Mutex, MutexGuard};
//!
//! use async_trait::async_trait;
//! use tower_session_guard::clock::UnixMillis;
//! use tower_session_guard::store::{Change, Entry, IdHash, SessionRecord};
//! use tower_session_guard::store::{SessionStore, StoreError, UserLock};
//!
//! /// Sessions in a `HashMap`, for one process.
//! #[derive(Clone, Default)]
//! pub struct HashMapStore {
//!     entries: Arc<Mutex<HashMap<IdHash, Entry>>>,
//!     index: Arc<Mutex<HashMap<String, HashSet<IdHash>>>>,
//!     // One lock for every user: simple, and enough for one process.
//!     logins: Arc<tokio::sync::Mutex<()>>,
//! }
//!
//! impl HashMapStore {
//!     fn entries(&self) -> MutexGuard<'_, HashMap<IdHash, Entry>> {
//!         self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
//!     }
//!
//!     fn index(&self) -> MutexGuard<'_, HashMap<String, HashSet<IdHash>>> {
//!         self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
//!     }
//! }
//!
//! #[async_trait]
//! impl SessionStore for HashMapStore {
//!     async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
//!         let mut entries = self.entries();
//!         if entries.contains_key(&record.id_hash()) {
//!             return Ok(false);
//!         }
//!         entries.insert(record.id_hash(), Entry::Session(Arc::new(record.clone())));
//!         Ok(true)
//!     }
//!
//!     async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
//!         Ok(self.entries().get(id).cloned())
//!     }
//!
//!     async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
//!         match self.entries().get_mut(id) {
//!             Some(Entry::Session(record)) => {
//!                 let record = Arc::make_mut(record);
//!                 record.apply(change);
//!                 Ok(Some(record.version()))
//!             }
//!             _ => Ok(None),
//!         }
//!     }
//!
//!     async fn replace(
//!         &self,
//!         id: &IdHash,
//!         version: u64,
//!         with: Option<&Entry>,
//!     ) -> Result<bool, StoreError> {
//!         let mut entries = self.entries();
//!         match entries.get(id) {
//!             Some(Entry::Session(current)) if current.version() == version => {}
//!             _ => return Ok(false),
//!         }
//!         match with {
//!             Some(entry) => entries.insert(*id, entry.clone()),
//!             None => entries.remove(id),
//!         };
//!         Ok(true)
//!     }
//!
//!     async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
//!         Ok(self.entries().remove(id))
//!     }
//!
//!     async fn index_add(
//!         &self,
//!         user_id: &str,
//!         id: &IdHash,
//!         _until: UnixMillis,
//!     ) -> Result<(), StoreError> {
//!         self.index().entry(user_id.to_owned()).or_default().insert(*id);
//!         Ok(())
//!     }
//!
//!     async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
//!         let mut index = self.index();
//!         if let Some(members) = index.get_mut(user_id) {
//!             members.retain(|id| !ids.contains(id));
//!             if members.is_empty() {
//!                 index.remove(user_id);
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     async fn index_members(
//!         &self,
//!         user_id: &str,
//!         _now: UnixMillis,
//!     ) -> Result<Vec<IdHash>, StoreError> {
//!         let index = self.index();
//!         Ok(index.get(user_id).map(|m| m.iter().copied().collect()).unwrap_or_default())
//!     }
//!
//!     async fn lock_user(&self, _user_id: &str) -> Result<UserLock, StoreError> {
//!         Ok(UserLock::new(Arc::clone(&self.logins).lock_owned().await))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // In your tests (feature `test-util`):
//! # #[cfg(feature = "test-util")]
//! tower_session_guard::store::conformance::run(&HashMapStore::default()).await;
//!
//! // And in your app:
//! use tower_session_guard::{Key, SessionLayer};
//! let layer = SessionLayer::new(HashMapStore::default(), Key::generate());
//! # let _ = layer;
//! # }
//! ```
//!
//! Stores report failures as [`StoreError`]: the layer answers `503
//! Service Unavailable` and logs the error. Bound every operation by a
//! timeout, so that a slow backend fails requests instead of piling them up.
//!
//! A store shared by several instances can also announce changes made
//! through any of them ([`SessionStore::watch_changes`]), so that a
//! [`CachedStore`] in front of it drops stale copies at once.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixMillis;

mod cached;
mod changes;
mod lock;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub mod sql;

#[cfg(feature = "test-util")]
pub mod conformance;

pub use self::cached::{CachedStore, DEFAULT_CACHE_TTL};
pub use self::changes::{ChangeListener, StoreChange};
pub use self::lock::{HeldLock, UserLock};
pub use self::memory::{MemoryStore, DEFAULT_MAX_SESSIONS};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, DEFAULT_PREFIX, DEFAULT_TIMEOUT};
#[cfg(feature = "mysql")]
pub use self::sql::MySqlStore;
#[cfg(feature = "postgres")]
pub use self::sql::PostgresStore;
#[cfg(feature = "sqlite")]
pub use self::sql::SqliteStore;
pub use crate::id::{IdHash, SealedId, SessionId};
pub use crate::record::{
    Binding, Change, Deadlines, Entry, Forward, RecordParts, SessionData, SessionRecord, SignIn,
    Superseded, Touch,
};

/// Storage primitives for session entries, keyed by the at-rest hash of
/// the session id.
///
/// Each method is atomic on the one key it names, and on nothing more: no
/// method spans two keys, so a store maps onto a Redis Cluster slot, a SQL
/// row or a DynamoDB item. The session protocol (limits, renewals with
/// their forwards, logout following a move, the order that keeps all of it
/// safe) is written once above this trait, in the crate's lifecycle; a
/// store makes no decision of its own. See "Writing a store" in the
/// [module docs](self).
///
/// The trait is object safe: the layer holds stores as `Arc<dyn SessionStore>`.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores `record` as a session under `record.id_hash()`, unless that key
    /// holds anything already.
    ///
    /// Returns `Ok(false)` on such a collision and leaves the existing entry
    /// untouched.
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError>;

    /// The entry under `id`, if there is one.
    ///
    /// A store may stop returning an entry some time after its
    /// [`expires_at`](Entry::expires_at) (its expiry backstop), never before.
    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError>;

    /// Applies `change` to the session under `id` (as
    /// [`SessionRecord::apply`] does: keys set and removed, a touch that
    /// only moves deadlines forward, the version bumped).
    ///
    /// Returns the session's version after the change (the version it had,
    /// plus one, whatever concurrent updates applied before it), or
    /// `Ok(None)`, writing nothing, when `id` holds no session (nothing, or
    /// a placeholder). Concurrent updates that set different keys must all
    /// be kept. A cache in front of the store keeps its copy current with
    /// the version: its copy plus `change` is the stored session exactly
    /// when the copy's version plus one is the version returned.
    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError>;

    /// Replaces the session under `id` with `with` (or removes it, for
    /// `None`), only if it is still a session at `version`.
    ///
    /// Returns whether it did; `Ok(false)`, writing nothing, when `id` holds
    /// no session or a session at another version.
    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError>;

    /// Removes whatever `id` holds and returns it.
    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError>;

    /// Adds `id` to the user's index, until `until` (the session's absolute
    /// deadline, after which the entry may be dropped).
    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Removes `ids` from the user's index (those it does not hold are ignored).
    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError>;

    /// The ids in the user's index, without those whose `until` is before
    /// `now`. The index may hold stale entries (sessions that are gone or
    /// moved): readers load each one and check it.
    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError>;

    /// Waits for the user's lock and returns it held; it is released by
    /// [`UserLock::release`] or when dropped.
    ///
    /// Logins and "log out everywhere" of one user hold it, so that the
    /// session limit is counted and applied as one step, also across
    /// instances sharing the store. A store may use one lock for several
    /// users (or for all of them).
    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError>;

    /// Starts telling `listener` which entries change through any handle
    /// on this store's backend (other instances sharing one Redis, say), so
    /// that a cache in front of the store, such as [`CachedStore`], can drop
    /// its copies. Returns whether the store will call `listener`.
    ///
    /// An update should be reported as [`StoreChange::Updated`] with the
    /// version it left, so that a cache that applied it itself keeps its
    /// copy; anything else as [`StoreChange::Changed`].
    ///
    /// The default returns `false`: right for stores that only this
    /// process changes, like [`MemoryStore`].
    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        let _ = listener;
        false
    }

    /// How many entries the store holds now, if it can tell cheaply (no
    /// scan, no query): the layer's live-sessions figure
    /// ([`SessionLayer::insights`](crate::SessionLayer::insights) and, with
    /// the `metrics` feature, a gauge).
    ///
    /// The default returns `None`, right for stores that would need a
    /// round trip to count. [`MemoryStore`] counts its entries.
    fn live_sessions(&self) -> Option<u64> {
        None
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
    /// A newly drawn session id was already taken (never expected: ids are
    /// 128 random bits); nothing was changed.
    IdCollision,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "the session store is unavailable: {why}"),
            Self::Timeout => f.write_str("the session store did not answer in time"),
            Self::Corrupt(why) => write!(f, "a stored session could not be decoded: {why}"),
            Self::Backend(err) => write!(f, "the session store failed: {err}"),
            Self::IdCollision => f.write_str(
                "the session store already held a newly drawn session id; nothing was changed",
            ),
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

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        (**self).load(id).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        (**self).update(id, change).await
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        (**self).replace(id, version, with).await
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        (**self).delete(id).await
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        (**self).index_add(user_id, id, until).await
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        (**self).index_remove(user_id, ids).await
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        (**self).index_members(user_id, now).await
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        (**self).lock_user(user_id).await
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        (**self).watch_changes(listener)
    }

    fn live_sessions(&self) -> Option<u64> {
        (**self).live_sessions()
    }
}

/// Runs a network store's `operation` within `timeout`.
#[cfg(any(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "mysql"
))]
async fn bounded<T>(
    timeout: std::time::Duration,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}
