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
//!
//! Writing a store? Run the public contract suite on it: see
//! [`conformance`] (feature `test-util`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixMillis;
use crate::id::IdHash;
use crate::record::{Change, SessionRecord};

mod moka;

#[cfg(feature = "test-util")]
pub mod conformance;

pub use self::moka::{MokaStore, DEFAULT_MAX_SESSIONS};

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
    /// must all be kept. Returns `Ok(false)` when there is no record.
    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError>;

    /// Deletes the record under `id`. Returns whether there was one.
    async fn delete(&self, id: &IdHash) -> Result<bool, StoreError>;

    /// Moves the record under `old` to `new` in one atomic step, applying
    /// `regeneration` on the way; afterwards nothing is stored under `old`.
    ///
    /// Returns the record as stored under `new`, or `Ok(None)` when there was
    /// no record under `old` (then nothing is written).
    async fn regenerate(
        &self,
        old: &IdHash,
        new: &IdHash,
        regeneration: &Regeneration,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError>;
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
}
