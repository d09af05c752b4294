//! A bounded in-memory cache in front of another store: [`CachedStore`].

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::Expiry;

use super::{ChangeListener, SessionStore, StoreChange, StoreError, UserLock};
use crate::clock::{duration_millis, UnixMillis};
use crate::id::{IdHash, IdHashState};
use crate::record::{Change, Entry, SessionRecord};

/// How long [`CachedStore`] keeps a copy by default: 5 seconds.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);

/// Number of invalidation counters (sessions hash onto them).
const STRIPES: usize = 256;

/// The backing store announces no changes: copies live for the TTL.
const FEED_NONE: u8 = 0;
/// The backing store's change feed is live: copies are dropped when announced.
const FEED_LIVE: u8 = 1;
/// The change feed is down: the cache is bypassed until it is live again.
const FEED_DOWN: u8 = 2;

/// A moka cache in front of another store, typically a
/// [`RedisStore`](crate::store::RedisStore) (feature `redis`): loads are
/// answered from memory when they can be, every write goes through to the
/// backing store.
///
/// It caches the backing store's primitives, not the session protocol: a
/// load's result is kept, and every write this cache passes on (an
/// update, a replacement, a deletion, whatever the write was for) drops
/// the copy of the key it names, whether or not it succeeded. A renewed,
/// revoked or logged-out session is therefore never served from a copy
/// that this instance's own writes made stale.
///
/// ```
/// # #[cfg(feature = "redis")]
/// # async fn run() -> Result<(), tower_session_guard::StoreError> {
/// use std::time::Duration;
/// use tower_session_guard::store::{CachedStore, RedisStore};
/// use tower_session_guard::{Key, SessionLayer};
///
/// let redis = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let store = CachedStore::new(redis, 50_000).with_ttl(Duration::from_secs(5));
/// let layer = SessionLayer::new(store, Key::generate());
/// # Ok(())
/// # }
/// ```
///
/// # How fresh the copies are
///
/// - **Writes through this cache** drop the local copy of the key they
///   write at once.
/// - **Writes through other instances** reach this cache over the backing
///   store's change feed ([`SessionStore::watch_changes`]): `RedisStore`
///   publishes every change on Redis pub/sub in the same script that makes
///   it, so another instance drops its copy within the pub/sub delivery
///   time, typically well under a millisecond on a local network.
///   `PostgresStore` (feature `postgres`) does the same with `pg_notify`
///   in the statement that makes the change, delivered at its commit, and
///   `LISTEN` on a connection of its own.
/// - **Staleness bound**: a message can still be lost (a pub/sub connection
///   that dies without the subscriber noticing yet). A copy is never kept
///   longer than the cache TTL (default [`DEFAULT_CACHE_TTL`], 5 seconds,
///   see [`with_ttl`](Self::with_ttl)), so a revoked session is refused
///   everywhere at most one TTL after the revocation, whatever happens to
///   the messages.
/// - **Feed down, cache off**: while the change feed is disconnected, the
///   cache is bypassed and every load goes to the backing store (so during
///   a Redis outage requests get the store's error, a `503`, rather than
///   copies nobody can invalidate). The cache is emptied when the feed
///   comes back.
/// - Over a store without a change feed (a [`MemoryStore`](super::MemoryStore),
///   or a `RedisStore` with change notifications turned off) copies live
///   for the TTL: fine for one process, where every write goes through
///   this cache, but not for several instances.
///
/// Clones share one cache.
pub struct CachedStore<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    records: Cache<IdHash, Entry, IdHashState>,
    ttl_ms: Arc<AtomicU64>,
    feed: AtomicU8,
    /// Bumped when everything is dropped (the feed connected or went down).
    epoch: AtomicU64,
    /// Bumped when a session hashing to the stripe is dropped: a load that
    /// raced with the drop must not put its older copy back.
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<S: SessionStore> CachedStore<S> {
    /// Caches at most `max_sessions` records in front of `inner`, each for
    /// at most [`DEFAULT_CACHE_TTL`] (5 seconds), and subscribes to
    /// `inner`'s change feed if it has one.
    ///
    /// Over a `RedisStore` the feed is a task on the Tokio runtime the
    /// store was created in.
    #[must_use]
    pub fn new(inner: S, max_sessions: u64) -> Self {
        let ttl_ms = Arc::new(AtomicU64::new(duration_millis(DEFAULT_CACHE_TTL)));
        let records = Cache::builder()
            .max_capacity(max_sessions)
            .expire_after(CopyLifetime(Arc::clone(&ttl_ms)))
            .build_with_hasher(IdHashState::new());
        let shared = Arc::new(Shared {
            records,
            ttl_ms,
            // Until the feed says it is live, nothing is cached.
            feed: AtomicU8::new(FEED_DOWN),
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        });
        let listener = Arc::new(FeedListener(Arc::downgrade(&shared)));
        if !inner.watch_changes(listener) {
            shared.feed.store(FEED_NONE, Ordering::SeqCst);
        }
        Self { inner, shared }
    }
}

impl<S> CachedStore<S> {
    /// How long a copy may be served at most. Default: [`DEFAULT_CACHE_TTL`]
    /// (5 seconds). This bounds how long a change made through another
    /// instance can go unseen if its invalidation message is lost; a
    /// shorter TTL means fresher copies and more loads from the backing
    /// store. Set it before the store is used; clones share it.
    ///
    /// # Panics
    ///
    /// If `ttl` is shorter than one millisecond (use the backing store
    /// directly instead of a cache that keeps nothing).
    #[must_use]
    pub fn with_ttl(self, ttl: Duration) -> Self {
        assert!(
            ttl >= Duration::from_millis(1),
            "a cache TTL under one millisecond caches nothing; pass the backing store to the layer \
             directly, or a TTL such as `Duration::from_secs(5)`"
        );
        self.shared
            .ttl_ms
            .store(duration_millis(ttl), Ordering::SeqCst);
        self
    }

    /// The backing store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether loads are answered from the cache right now: `false` while
    /// the backing store's change feed is down or not yet connected.
    #[must_use]
    pub fn is_caching(&self) -> bool {
        self.shared.feed.load(Ordering::SeqCst) != FEED_DOWN
    }

    /// The number of copies held, approximately (moka counts lazily).
    #[must_use]
    pub fn cached_len(&self) -> u64 {
        self.shared.records.entry_count()
    }
}

impl Shared {
    fn stripe(&self, id: &IdHash) -> &AtomicU64 {
        // The modulo keeps the index in range; truncation is intended.
        #[allow(clippy::cast_possible_truncation)]
        let index = (self.hasher.hash_one(id) % STRIPES as u64) as usize;
        &self.stripes[index]
    }

    /// What a load must see unchanged to keep the copy it read.
    fn stamp(&self, id: &IdHash) -> (u64, u64) {
        (
            self.epoch.load(Ordering::SeqCst),
            self.stripe(id).load(Ordering::SeqCst),
        )
    }

    fn usable(&self) -> bool {
        self.feed.load(Ordering::SeqCst) != FEED_DOWN
    }

    /// Drops the copy of `id`. The counter moves first, so a load that
    /// read the older record either sees the move or has its copy removed.
    async fn forget(&self, id: &IdHash) {
        self.stripe(id).fetch_add(1, Ordering::SeqCst);
        self.records.invalidate(id).await;
    }

    fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.records.invalidate_all();
    }
}

impl<S: Clone> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("cached", &self.shared.records.entry_count())
            .field("caching", &self.is_caching())
            .finish()
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for CachedStore<S> {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let result = self.inner.create(record).await;
        self.shared.forget(&record.id_hash).await;
        result
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let shared = &self.shared;
        if shared.usable() {
            if let Some(entry) = shared.records.get(id).await {
                // The feed may have gone down since the copy was made.
                if shared.usable() {
                    return Ok(Some(entry));
                }
            }
        }
        let stamp = shared.stamp(id);
        let loaded = self.inner.load(id).await?;
        if let Some(entry) = &loaded {
            if shared.usable() {
                shared.records.insert(*id, entry.clone()).await;
                // Dropped meanwhile (a change announced while the load was
                // on its way): the copy may predate that change.
                if shared.stamp(id) != stamp {
                    shared.records.invalidate(id).await;
                }
            }
        }
        Ok(loaded)
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let result = self.inner.update(id, change).await;
        // Forgotten even on error: the write may have landed anyway.
        self.shared.forget(id).await;
        result
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        let result = self.inner.replace(id, version, with).await;
        // Also when refused: the copy that led to a stale version must go.
        self.shared.forget(id).await;
        result
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let result = self.inner.delete(id).await;
        self.shared.forget(id).await;
        result
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        self.inner.index_add(user_id, id, until).await
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        self.inner.index_remove(user_id, ids).await
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        self.inner.index_members(user_id, now).await
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        self.inner.lock_user(user_id).await
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        self.inner.watch_changes(listener)
    }

    fn live_sessions(&self) -> Option<u64> {
        self.inner.live_sessions()
    }
}

/// Applies the backing store's announcements to the cache while the cache
/// exists.
struct FeedListener(Weak<Shared>);

#[async_trait]
impl ChangeListener for FeedListener {
    async fn changed(&self, change: StoreChange) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        match change {
            StoreChange::Connected => {
                // Changes made while the feed was down were not announced.
                shared.forget_all();
                shared.feed.store(FEED_LIVE, Ordering::SeqCst);
            }
            StoreChange::Disconnected => {
                shared.feed.store(FEED_DOWN, Ordering::SeqCst);
                shared.forget_all();
            }
            StoreChange::Changed(id) => shared.forget(&id).await,
        }
    }

    fn is_active(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Every copy lives for the configured TTL from when it was loaded.
struct CopyLifetime(Arc<AtomicU64>);

impl Expiry<IdHash, Entry> for CopyLifetime {
    fn expire_after_create(
        &self,
        _key: &IdHash,
        _value: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::SeqCst)))
    }

    fn expire_after_update(
        &self,
        _key: &IdHash,
        _value: &Entry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::SeqCst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn record() -> SessionRecord {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        crate::record::Deadlines {
            created_at: now,
            idle_deadline: now + 60_000,
            absolute_deadline: now + 120_000,
        }
        .record(
            crate::id::SessionId::generate().hash(),
            None,
            crate::record::SessionData::default(),
        )
    }

    #[tokio::test]
    async fn writes_through_the_cache_are_seen_at_once() {
        let store = CachedStore::new(MemoryStore::new(100), 100);
        let record = record();
        assert!(store.create(&record).await.unwrap());
        assert!(store.load(&record.id_hash).await.unwrap().is_some());
        let change = Change {
            set: vec![("k".into(), serde_json::json!(1))],
            ..Change::default()
        };
        assert!(store.update(&record.id_hash, &change).await.unwrap());
        let loaded = store.load(&record.id_hash).await.unwrap().unwrap();
        let loaded = loaded.session().unwrap();
        assert_eq!(loaded.data.get("k"), Some(&serde_json::json!(1)));
        assert!(store.delete(&record.id_hash).await.unwrap().is_some());
        assert!(store.load(&record.id_hash).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn announced_changes_drop_copies_and_a_dead_feed_bypasses_the_cache() {
        let backing = MemoryStore::new(100);
        let store = CachedStore::new(backing.clone(), 100);
        let listener = FeedListener(Arc::downgrade(&store.shared));
        listener.changed(StoreChange::Connected).await;
        let record = record();
        backing.create(&record).await.unwrap();
        store.load(&record.id_hash).await.unwrap().unwrap();

        // Changed behind the cache's back: the copy is still served...
        backing.delete(&record.id_hash).await.unwrap();
        assert!(store.load(&record.id_hash).await.unwrap().is_some());
        // ...until the change is announced.
        listener.changed(StoreChange::Changed(record.id_hash)).await;
        assert!(store.load(&record.id_hash).await.unwrap().is_none());

        backing.create(&record).await.unwrap();
        store.load(&record.id_hash).await.unwrap().unwrap();
        listener.changed(StoreChange::Disconnected).await;
        assert!(!store.is_caching());
        backing.delete(&record.id_hash).await.unwrap();
        assert!(
            store.load(&record.id_hash).await.unwrap().is_none(),
            "with the feed down every load goes to the backing store"
        );
    }

    #[tokio::test]
    async fn the_feed_ends_when_the_cache_is_dropped() {
        let store = CachedStore::new(MemoryStore::new(10), 10);
        let listener = FeedListener(Arc::downgrade(&store.shared));
        assert!(listener.is_active());
        drop(store);
        assert!(!listener.is_active());
    }
}
