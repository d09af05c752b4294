//! A bounded in-memory cache in front of another store: [`CachedStore`].

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
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
/// load's result is kept; an update keeps the copy it was made on current
/// (below); and every other write this cache passes on (a replacement, a
/// deletion, whatever the write was for) drops the copy of the key it
/// names, whether or not it succeeded. A renewed, revoked or logged-out
/// session is therefore never served from a copy that this instance's own
/// writes made stale.
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
/// - **Updates through this cache** (a request's data and activity) apply
///   to the local copy too, when the version the backing store returns
///   is the copy's plus one: nothing else was applied in between, so the
///   copy plus the change is exactly what is stored, and the session's
///   next request is answered from memory. Otherwise (another instance
///   wrote first, the update failed or was cancelled) the copy is
///   dropped; after a cancelled update, whose statement may still run to
///   its end, loads of that session keep no copy for one TTL. **Other writes through this cache** drop the local copy of
///   the key they write at once.
/// - **Writes through other instances** reach this cache over the backing
///   store's change feed ([`SessionStore::watch_changes`]): `RedisStore`
///   publishes every change on Redis pub/sub in the same script that makes
///   it, so another instance drops its copy within the pub/sub delivery
///   time, typically well under a millisecond on a local network.
///   `PostgresStore` (feature `postgres`) does the same with `pg_notify`
///   in the statement that makes the change, delivered at its commit, and
///   `LISTEN` on a connection of its own. An update is announced with the
///   version it left ([`StoreChange::Updated`]): a copy at that version or
///   later stays, which keeps this instance's own announcements from
///   dropping the copies its updates kept current.
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
    /// The updates on their way through this cache, by stripe: each id
    /// with how many.
    in_flight: Box<[Mutex<Updating>]>,
    /// Ids whose copies must not be served while a task on its way drops
    /// them (an update cancelled after it was sent), and how many there are
    /// (loads look at the list only when there are any).
    condemned: Mutex<Vec<IdHash>>,
    condemned_count: AtomicUsize,
    /// Ids whose loads keep no copy until the instant given (an update of
    /// theirs was cancelled and may still land), and how many there are
    /// (loads that keep a copy look at the list only when there are any).
    uncached: Mutex<Vec<(IdHash, Instant)>>,
    uncached_count: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
}

/// The ids of a stripe with updates on their way.
type Updating = Vec<OnItsWay>;

/// An id with updates on their way through this cache.
struct OnItsWay {
    id: IdHash,
    /// How many.
    count: u32,
    /// The copy an announcement one version ahead of it took out of the
    /// cache meanwhile, and the stamp that must be unchanged for the update
    /// that made that version to put it back (see [`Shared::updated`]).
    parked: Option<(Arc<SessionRecord>, (u64, u64))>,
}

/// An update on its way through the cache, from before it is sent until
/// its copy is settled (kept current or dropped). Dropped unsettled (the
/// request was cancelled while the write was out), it drops the copy.
struct InFlight<'a> {
    shared: &'a Arc<Shared>,
    id: IdHash,
    settled: bool,
}

impl<'a> InFlight<'a> {
    fn start(shared: &'a Arc<Shared>, id: IdHash) -> Self {
        let mut held = shared.in_flight(&id);
        match held.iter_mut().find(|way| way.id == id) {
            Some(way) => way.count += 1,
            None => held.push(OnItsWay {
                id,
                count: 1,
                parked: None,
            }),
        }
        drop(held);
        Self {
            shared,
            id,
            settled: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            // The write may have landed, and an announcement of it may have
            // been left to this update: the copy goes. It may also land
            // later (a statement already sent runs to its end), after a
            // load has read the row from before it: for one TTL, loads of
            // this id keep no copy.
            self.shared.keep_no_copy_for_a_while(self.id);
            self.shared.forget_soon(self.id);
        }
        let mut held = self.shared.in_flight(&self.id);
        if let Some(at) = held.iter().position(|way| way.id == self.id) {
            if held[at].count > 1 {
                held[at].count -= 1;
            } else {
                held.swap_remove(at);
            }
        }
    }
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
            in_flight: (0..STRIPES).map(|_| Mutex::new(Vec::new())).collect(),
            condemned: Mutex::new(Vec::new()),
            condemned_count: AtomicUsize::new(0),
            uncached: Mutex::new(Vec::new()),
            uncached_count: AtomicUsize::new(0),
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
    fn stripe_index(&self, id: &IdHash) -> usize {
        // The modulo keeps the index in range; truncation is intended.
        #[allow(clippy::cast_possible_truncation)]
        let index = (self.hasher.hash_one(id) % STRIPES as u64) as usize;
        index
    }

    fn stripe(&self, id: &IdHash) -> &AtomicU64 {
        &self.stripes[self.stripe_index(id)]
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

    /// Applies an update that left the session at `version` to the copy
    /// it was made on: the copy is then the stored session exactly when it
    /// was at the version before (nothing else was applied in between).
    /// Whether the copy was kept, as the updated session.
    async fn advance(&self, id: &IdHash, change: &Change, version: u64) -> bool {
        let result = self
            .records
            .entry(*id)
            .and_compute_with(|current| {
                let op = match current.map(moka::Entry::into_value) {
                    Some(Entry::Session(copy)) if copy.version.wrapping_add(1) == version => {
                        let mut next = SessionRecord::clone(&copy);
                        next.apply(change);
                        Op::Put(Entry::Session(Arc::new(next)))
                    }
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        matches!(result, CompResult::ReplacedWith(_))
    }

    /// Handles an announced update that left the session under `id` at
    /// `version`: a copy at that version or later is current (this cache
    /// applied that update itself, or loaded its result). Any other copy
    /// goes at once. One a version behind, while this cache has an update
    /// of `id` on its way, is parked with that update rather than dropped:
    /// the announcement may be that update's own, arriving before its
    /// answer, and the update puts the copy back, updated, if the version
    /// is its own ([`restore`](Self::restore)). Until then it is not served.
    async fn updated(&self, id: &IdHash, version: u64) {
        // Taken before the copy is read: any drop after it, but the one
        // below, keeps a parked copy from coming back.
        let (epoch, stripe) = self.stamp(id);
        match self.records.get(id).await {
            Some(Entry::Session(copy)) if copy.version >= version => {}
            Some(Entry::Session(copy)) if copy.version.wrapping_add(1) == version => {
                self.forget(id).await;
                let mut held = self.in_flight(id);
                if let Some(way) = held.iter_mut().find(|way| way.id == *id) {
                    way.parked = Some((copy, (epoch, stripe.wrapping_add(1))));
                }
            }
            _ => self.forget(id).await,
        }
    }

    /// Puts back the copy parked for `id` (see [`updated`](Self::updated))
    /// with `change` applied, when it is one version behind `version`, the
    /// version this update left: the announcement that parked it was this
    /// update's own. Not when anything was dropped since, or a copy was
    /// loaded meanwhile. Whether the copy is back, as the updated session.
    async fn restore(&self, id: &IdHash, change: &Change, version: u64) -> bool {
        let parked = {
            let mut held = self.in_flight(id);
            held.iter_mut()
                .find(|way| way.id == *id)
                .and_then(|way| way.parked.take())
        };
        let Some((copy, stamp)) = parked else {
            return false;
        };
        if copy.version.wrapping_add(1) != version {
            return false;
        }
        let mut next = SessionRecord::clone(&copy);
        next.apply(change);
        let next = Entry::Session(Arc::new(next));
        let result = self
            .records
            .entry(*id)
            .and_compute_with(|current| {
                std::future::ready(match current {
                    None => Op::Put(next),
                    Some(_) => Op::Nop,
                })
            })
            .await;
        // A drop after the put has the copy gone; one before it is seen here.
        matches!(result, CompResult::Inserted(_)) && self.stamp(id) == stamp
    }

    fn in_flight(&self, id: &IdHash) -> MutexGuard<'_, Updating> {
        self.in_flight[self.stripe_index(id)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an update of `id` through this cache is on its way.
    #[cfg(test)]
    fn updating(&self, id: &IdHash) -> bool {
        self.in_flight(id).iter().any(|way| way.id == *id)
    }

    /// Drops the copy of `id` from where nothing can be awaited: on the
    /// Tokio runtime when there is one, otherwise with every other copy.
    fn forget_soon(self: &Arc<Self>, id: IdHash) {
        self.stripe(&id).fetch_add(1, Ordering::SeqCst);
        // Not served from now on; unmarked once the copy is gone.
        self.condemn(id, true);
        let condemned = Condemned {
            shared: Arc::clone(self),
            id,
            dropped: false,
        };
        #[cfg(any(
            feature = "redis",
            feature = "postgres",
            feature = "sqlite",
            feature = "mysql",
            feature = "test-util",
            feature = "fuzzing"
        ))]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut condemned = condemned;
                condemned.shared.records.invalidate(&condemned.id).await;
                condemned.dropped = true;
            });
            return;
        }
        // Off a runtime: every copy goes now.
        drop(condemned);
    }

    fn uncached_ids(&self) -> MutexGuard<'_, Vec<(IdHash, Instant)>> {
        self.uncached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps loads of `id` from keeping a copy for one TTL.
    fn keep_no_copy_for_a_while(&self, id: IdHash) {
        let until = Instant::now() + Duration::from_millis(self.ttl_ms.load(Ordering::SeqCst));
        let mut ids = self.uncached_ids();
        ids.push((id, until));
        self.uncached_count.store(ids.len(), Ordering::SeqCst);
    }

    /// Whether a load of `id` may keep a copy now (see
    /// [`keep_no_copy_for_a_while`](Self::keep_no_copy_for_a_while)).
    fn may_keep_copy(&self, id: &IdHash) -> bool {
        if self.uncached_count.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let now = Instant::now();
        let mut ids = self.uncached_ids();
        ids.retain(|(_, until)| *until > now);
        self.uncached_count.store(ids.len(), Ordering::SeqCst);
        !ids.iter().any(|(held, _)| held == id)
    }

    fn condemned_ids(&self) -> MutexGuard<'_, Vec<IdHash>> {
        self.condemned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks (or, once its copy is gone, unmarks) `id` as not to be served.
    fn condemn(&self, id: IdHash, condemned: bool) {
        let mut ids = self.condemned_ids();
        if condemned {
            ids.push(id);
        } else if let Some(at) = ids.iter().position(|held| *held == id) {
            ids.swap_remove(at);
        }
        self.condemned_count.store(ids.len(), Ordering::SeqCst);
    }

    /// Whether the copy of `id` must not be served (see [`condemn`](Self::condemn)).
    fn is_condemned(&self, id: &IdHash) -> bool {
        self.condemned_count.load(Ordering::SeqCst) != 0 && self.condemned_ids().contains(id)
    }

    fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.records.invalidate_all();
    }
}

/// An id condemned by [`Shared::forget_soon`], held by the task that drops
/// its copy: unmarked when the task ends. Dropped before the copy was
/// dropped (no runtime, or the task's runtime shut down before it ran), it
/// drops every copy instead, so that the id does not stay condemned for
/// good.
struct Condemned {
    shared: Arc<Shared>,
    id: IdHash,
    dropped: bool,
}

impl Drop for Condemned {
    fn drop(&mut self) {
        if !self.dropped {
            self.shared.forget_all();
        }
        self.shared.condemn(self.id, false);
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
                // The feed may have gone down since the copy was made, or
                // an update cancelled on its way may have made it stale.
                if shared.usable() && !shared.is_condemned(id) {
                    return Ok(Some(entry));
                }
            }
        }
        let stamp = shared.stamp(id);
        let loaded = self.inner.load(id).await?;
        if let Some(entry) = &loaded {
            if shared.usable() && shared.may_keep_copy(id) {
                // A later copy of the session (kept by an update that
                // finished while this load was on its way) stays.
                let entry = entry.clone();
                shared
                    .records
                    .entry(*id)
                    .and_compute_with(|current| {
                        let later = matches!(
                            (current.as_ref().map(moka::Entry::value), &entry),
                            (Some(Entry::Session(held)), Entry::Session(loaded))
                                if held.version > loaded.version
                        );
                        std::future::ready(if later { Op::Nop } else { Op::Put(entry) })
                    })
                    .await;
                // Dropped meanwhile (a change announced while the load was
                // on its way): the copy may predate that change.
                if shared.stamp(id) != stamp {
                    shared.records.invalidate(id).await;
                }
            }
        }
        Ok(loaded)
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        let shared = &self.shared;
        let mut in_flight = InFlight::start(shared, *id);
        let stamp = shared.stamp(id);
        let result = self.inner.update(id, change).await;
        if let Ok(Some(version)) = result {
            if shared.usable() && shared.advance(id, change, version).await {
                // Something announced meanwhile may postdate the update.
                if shared.stamp(id) != stamp {
                    shared.forget(id).await;
                }
                in_flight.settled = true;
                return result;
            }
            // The update's own announcement may have come first.
            if shared.usable() && shared.restore(id, change, version).await {
                in_flight.settled = true;
                return result;
            }
        }
        // Forgotten even on error: the write may have landed anyway.
        shared.forget(id).await;
        in_flight.settled = true;
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
            StoreChange::Updated(id, version) => shared.updated(&id, version).await,
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
        assert_eq!(
            store.update(&record.id_hash, &change).await.unwrap(),
            Some(1)
        );
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

    fn set(key: &str, value: i64) -> Change {
        Change {
            set: vec![(key.into(), serde_json::json!(value))],
            ..Change::default()
        }
    }

    fn data_of(entry: Option<Entry>) -> crate::record::SessionData {
        entry.unwrap().session().unwrap().data.clone()
    }

    #[tokio::test]
    async fn an_update_keeps_the_copy_it_was_made_on_current() {
        let backing = MemoryStore::new(100);
        let store = CachedStore::new(backing.clone(), 100);
        let record = record();
        backing.create(&record).await.unwrap();
        store.load(&record.id_hash).await.unwrap().unwrap();
        assert_eq!(
            store.update(&record.id_hash, &set("a", 1)).await.unwrap(),
            Some(1)
        );
        // Gone behind the cache's back: only a kept copy can answer now,
        // and it has the update.
        backing.delete(&record.id_hash).await.unwrap();
        let copy = store.load(&record.id_hash).await.unwrap().unwrap();
        let copy = copy.session().unwrap();
        assert_eq!(copy.data.get("a"), Some(&serde_json::json!(1)));
        assert_eq!(copy.version, 1);
    }

    #[tokio::test]
    async fn an_update_over_a_stale_copy_drops_it() {
        let backing = MemoryStore::new(100);
        let store = CachedStore::new(backing.clone(), 100);
        let record = record();
        backing.create(&record).await.unwrap();
        store.load(&record.id_hash).await.unwrap().unwrap();
        // Another instance writes first: the copy is one version behind.
        backing.update(&record.id_hash, &set("b", 2)).await.unwrap();
        assert_eq!(
            store.update(&record.id_hash, &set("a", 1)).await.unwrap(),
            Some(2)
        );
        let data = data_of(store.load(&record.id_hash).await.unwrap());
        assert_eq!(data.get("a"), Some(&serde_json::json!(1)));
        assert_eq!(
            data.get("b"),
            Some(&serde_json::json!(2)),
            "the copy missed the other write"
        );
    }

    #[tokio::test]
    async fn an_announced_update_keeps_copies_at_its_version_only() {
        let backing = MemoryStore::new(100);
        let store = CachedStore::new(backing.clone(), 100);
        let listener = FeedListener(Arc::downgrade(&store.shared));
        listener.changed(StoreChange::Connected).await;
        let record = record();
        backing.create(&record).await.unwrap();
        store.load(&record.id_hash).await.unwrap().unwrap();
        store.update(&record.id_hash, &set("a", 1)).await.unwrap();
        // This cache's own update, announced: the copy is at its version.
        listener
            .changed(StoreChange::Updated(record.id_hash, 1))
            .await;
        backing.update(&record.id_hash, &set("b", 2)).await.unwrap();
        assert_eq!(
            data_of(store.load(&record.id_hash).await.unwrap()).get("b"),
            None,
            "the copy at the announced version was kept"
        );
        // Another handle's update: the copy is behind it.
        listener
            .changed(StoreChange::Updated(record.id_hash, 2))
            .await;
        assert_eq!(
            data_of(store.load(&record.id_hash).await.unwrap()).get("b"),
            Some(&serde_json::json!(2))
        );
    }

    #[tokio::test]
    async fn an_announcement_racing_this_caches_own_update_is_left_to_it() {
        use futures_util::FutureExt;

        let backing = MemoryStore::new(100);
        let held = Held {
            answer_held: true,
            ..Held::new(&backing)
        };
        let answer = Arc::clone(&held.answer);
        let store = CachedStore::new(held, 100);
        let shared = &store.shared;
        let listener = FeedListener(Arc::downgrade(shared));
        listener.changed(StoreChange::Connected).await;
        let record = record();
        let id = record.id_hash;
        backing.create(&record).await.unwrap();
        store.load(&id).await.unwrap().unwrap();

        // The update landed, and its announcement arrives before its
        // answer: the copy one version behind is not served meanwhile...
        let change = set("a", 1);
        let mut mine = store.update(&id, &change);
        assert!((&mut mine).now_or_never().is_none());
        listener.changed(StoreChange::Updated(id, 1)).await;
        assert!(shared.records.get(&id).await.is_none());
        // ...and the answer puts it back, updated.
        answer.notify_one();
        assert_eq!(mine.await.unwrap(), Some(1));
        let copy = shared.records.get(&id).await.unwrap();
        assert_eq!(copy.session().unwrap().version, 1);
        assert_eq!(
            copy.session().unwrap().data.get("a"),
            Some(&serde_json::json!(1))
        );
        assert!(!shared.updating(&id));

        // The same race with another instance's update announced after this
        // one's: the parked copy stays out.
        let change = set("c", 3);
        let mut mine = store.update(&id, &change);
        assert!((&mut mine).now_or_never().is_none());
        listener.changed(StoreChange::Updated(id, 2)).await;
        assert_eq!(backing.update(&id, &set("b", 2)).await.unwrap(), Some(3));
        listener.changed(StoreChange::Updated(id, 3)).await;
        answer.notify_one();
        assert_eq!(mine.await.unwrap(), Some(2));
        assert!(shared.records.get(&id).await.is_none());
        let data = data_of(store.load(&id).await.unwrap());
        assert_eq!(data.get("b"), Some(&serde_json::json!(2)));
        assert_eq!(data.get("c"), Some(&serde_json::json!(3)));

        // With no update out, an announcement a version ahead drops the copy.
        listener.changed(StoreChange::Updated(id, 4)).await;
        assert!(shared.records.get(&id).await.is_none());

        // An update cancelled while out leaves no copy behind.
        store.load(&id).await.unwrap().unwrap();
        drop(InFlight::start(shared, id));
        tokio::task::yield_now().await;
        assert!(shared.records.get(&id).await.is_none());
        assert!(!shared.updating(&id));
    }

    #[test]
    fn announcements_parse_as_changes_and_versioned_updates() {
        let id = crate::id::SessionId::generate().hash();
        let hex = id.to_hex();
        assert_eq!(StoreChange::parse(&hex), Some(StoreChange::Changed(id)));
        assert_eq!(
            StoreChange::parse(&format!("{hex}:42")),
            Some(StoreChange::Updated(id, 42))
        );
        for bad in ["", "zz", &format!("{}:1", &hex[2..])] {
            assert_eq!(StoreChange::parse(bad), None, "{bad:?}");
        }
        // A version that cannot be read (another format, a newer one) still
        // names the entry: the copy goes rather than the announcement.
        for odd in ["", "x", "1e+14", "18446744073709551615"] {
            assert_eq!(
                StoreChange::parse(&format!("{hex}:{odd}")),
                Some(StoreChange::Changed(id)),
                "{odd:?}"
            );
        }
    }

    /// A `MemoryStore` whose updates can be held: before they reach it
    /// (`hold`, until `gate` is notified), or after they were applied
    /// (`answer_held`, until `answer` is notified; never, for a request
    /// cancelled while its write was out). With `lands_late`, an update is
    /// applied once `gate` is notified, whether or not its caller is still
    /// waiting (as a database runs a statement it was sent).
    #[derive(Clone)]
    struct Held {
        inner: MemoryStore,
        gate: Arc<tokio::sync::Notify>,
        answer: Arc<tokio::sync::Notify>,
        hold: bool,
        answer_held: bool,
        lands_late: bool,
    }

    impl Held {
        fn new(inner: &MemoryStore) -> Self {
            Self {
                inner: inner.clone(),
                gate: Arc::new(tokio::sync::Notify::new()),
                answer: Arc::new(tokio::sync::Notify::new()),
                hold: false,
                answer_held: false,
                lands_late: false,
            }
        }
    }

    #[async_trait]
    impl SessionStore for Held {
        async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
            self.inner.create(record).await
        }
        async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
            self.inner.load(id).await
        }
        async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
            if self.hold {
                self.gate.notified().await;
            }
            if self.lands_late {
                let (inner, id, change) = (self.inner.clone(), *id, change.clone());
                let gate = Arc::clone(&self.gate);
                let write = tokio::spawn(async move {
                    gate.notified().await;
                    inner.update(&id, &change).await
                });
                return write.await.expect("the write does not panic");
            }
            let result = self.inner.update(id, change).await;
            if self.answer_held {
                self.answer.notified().await;
            }
            result
        }
        async fn replace(
            &self,
            id: &IdHash,
            version: u64,
            with: Option<&Entry>,
        ) -> Result<bool, StoreError> {
            self.inner.replace(id, version, with).await
        }
        async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
            self.inner.delete(id).await
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
    }

    /// Another instance's update, announced while this cache has an update
    /// of the same session on its way, is seen at once: the copy it made
    /// stale is not served until that update is answered (up to the backing
    /// store's timeout).
    #[tokio::test]
    async fn another_instances_announced_update_is_seen_while_an_update_is_on_its_way() {
        use futures_util::FutureExt;

        let backing = MemoryStore::new(100);
        let held = Held {
            hold: true,
            ..Held::new(&backing)
        };
        let gate = Arc::clone(&held.gate);
        let store = CachedStore::new(held, 100);
        let listener = FeedListener(Arc::downgrade(&store.shared));
        listener.changed(StoreChange::Connected).await;
        let record = record();
        let id = record.id_hash;
        backing.create(&record).await.unwrap();
        store.load(&id).await.unwrap().unwrap();

        // This instance's update is on its way (held before the store).
        let change = set("a", 1);
        let mut mine = store.update(&id, &change);
        assert!((&mut mine).now_or_never().is_none());
        // Another instance's update lands first and is announced.
        assert_eq!(backing.update(&id, &set("b", 2)).await.unwrap(), Some(1));
        listener.changed(StoreChange::Updated(id, 1)).await;
        // Delivered: this cache must not answer with the copy before it.
        let seen = data_of(store.load(&id).await.unwrap());
        gate.notify_one();
        assert_eq!(mine.await.unwrap(), Some(2));
        assert_eq!(
            seen.get("b"),
            Some(&serde_json::json!(2)),
            "the announced update was hidden while this cache's own update was out"
        );
        let data = data_of(store.load(&id).await.unwrap());
        assert_eq!(data.get("a"), Some(&serde_json::json!(1)));
        assert_eq!(data.get("b"), Some(&serde_json::json!(2)));
    }

    /// An update cancelled after its write landed leaves the copy from
    /// before the write unserved at once, before the task that drops it
    /// has run.
    #[tokio::test]
    async fn a_cancelled_update_leaves_no_copy_to_serve() {
        use futures_util::FutureExt;

        let backing = MemoryStore::new(100);
        let held = Held {
            answer_held: true,
            ..Held::new(&backing)
        };
        let store = CachedStore::new(held, 100);
        let record = record();
        let id = record.id_hash;
        backing.create(&record).await.unwrap();
        store.load(&id).await.unwrap().unwrap();

        let change = set("a", 1);
        let mut cancelled = store.update(&id, &change);
        assert!((&mut cancelled).now_or_never().is_none());
        // The write landed; the request goes away before its answer.
        drop(cancelled);
        let data = data_of(store.load(&id).await.unwrap());
        assert_eq!(
            data.get("a"),
            Some(&serde_json::json!(1)),
            "the copy from before the cancelled (landed) write was served"
        );
    }

    /// An update cancelled on a runtime that shuts down before the task
    /// dropping its copy has run (a runtime of its own per worker thread, a
    /// test's runtime, a server shutting down) leaves nothing condemned:
    /// the task, dropped, drops every copy and unmarks the id, which would
    /// otherwise never be answered from memory again (and every load of
    /// every session would take the list's lock).
    #[test]
    fn an_update_cancelled_as_its_runtime_shuts_down_leaves_nothing_condemned() {
        use futures_util::FutureExt;

        let main = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let backing = MemoryStore::new(100);
        let held = Held {
            answer_held: true,
            ..Held::new(&backing)
        };
        let store = CachedStore::new(held, 100).with_ttl(Duration::from_millis(50));
        let record = record();
        let id = record.id_hash;
        main.block_on(async {
            backing.create(&record).await.unwrap();
            store.load(&id).await.unwrap().unwrap();
        });
        // Another runtime cancels an update after its write landed, and
        // shuts down before the task it spawned has run.
        let worker = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let change = set("a", 1);
        worker.block_on(async {
            let mut cancelled = store.update(&id, &change);
            assert!((&mut cancelled).now_or_never().is_none());
            drop(cancelled);
        });
        drop(worker);
        main.block_on(async {
            let data = data_of(store.load(&id).await.unwrap());
            assert_eq!(
                data.get("a"),
                Some(&serde_json::json!(1)),
                "the copy from before the cancelled (landed) write was served"
            );
            // One TTL after the cancelled update, a load keeps a copy
            // again, and it is served from memory.
            tokio::time::sleep(Duration::from_millis(60)).await;
            store.load(&id).await.unwrap().unwrap();
            backing.delete(&id).await.unwrap();
            assert!(
                store.load(&id).await.unwrap().is_some(),
                "the session is no longer answered from memory"
            );
        });
        assert_eq!(store.shared.condemned_count.load(Ordering::SeqCst), 0);
    }

    /// A cancelled update whose write the database applies after the
    /// request went away (a statement already sent runs to its end: sqlx
    /// cannot take it back) can land after the task that drops the copy
    /// has run. A load in between reads the row from before the write, and
    /// must not keep it: over a store without a change feed (SQLite, MySQL)
    /// nothing would drop that copy before the TTL.
    #[tokio::test]
    async fn a_cancelled_update_landing_late_leaves_no_copy_to_serve() {
        use futures_util::FutureExt;

        let backing = MemoryStore::new(100);
        let held = Held {
            lands_late: true,
            ..Held::new(&backing)
        };
        let gate = Arc::clone(&held.gate);
        let store = CachedStore::new(held, 100);
        let record = record();
        let id = record.id_hash;
        backing.create(&record).await.unwrap();
        store.load(&id).await.unwrap().unwrap();

        let change = set("a", 1);
        let mut cancelled = store.update(&id, &change);
        assert!((&mut cancelled).now_or_never().is_none());
        drop(cancelled);
        // The task dropping the copy has run; the write is still on its way.
        while store.shared.records.contains_key(&id) {
            tokio::task::yield_now().await;
        }
        assert_eq!(data_of(store.load(&id).await.unwrap()).get("a"), None);
        // The write lands.
        gate.notify_one();
        while data_of(backing.load(&id).await.unwrap()).get("a").is_none() {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            data_of(store.load(&id).await.unwrap()).get("a"),
            Some(&serde_json::json!(1)),
            "the copy from before the cancelled write was served after the write landed"
        );
        // For one TTL only: then loads keep copies again.
        assert!(!store.shared.may_keep_copy(&id));
        let short = CachedStore::new(MemoryStore::new(10), 10).with_ttl(Duration::from_millis(20));
        short.shared.keep_no_copy_for_a_while(id);
        assert!(!short.shared.may_keep_copy(&id));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(short.shared.may_keep_copy(&id));
        assert_eq!(short.shared.uncached_count.load(Ordering::SeqCst), 0);
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
