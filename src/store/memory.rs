//! The default store: a bounded in-memory cache of sessions, [`MemoryStore`].

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, UnitWeighter};

use super::{SessionStore, StoreError, UserLock};
use crate::clock::UnixMillis;
use crate::id::{IdHash, IdHashState};
use crate::record::{Change, Entry, SessionRecord};

/// Sessions kept by [`MemoryStore::default`].
pub const DEFAULT_MAX_SESSIONS: u64 = 100_000;

/// How long after its deadline an entry may linger before the store drops
/// it, in seconds. The policy, not the store, decides expiry: the slack
/// lets the layer see an expired session (and report *why* it expired)
/// instead of finding nothing.
const BACKSTOP_SLACK_SECS: u64 = 30;

/// Number of per-user login locks (users hash onto them).
const USER_LOCKS: usize = 64;

/// An in-memory store for a single process, bounded by a number of
/// sessions, on the [`quick_cache`] concurrent cache.
///
/// - **Bounded, and never refusing**: at most about `max_sessions`
///   entries. A new session is always admitted; room is made by evicting
///   with quick_cache's scan-resistant policy (S3-FIFO), so a burst of
///   one-time visitors does not flush the sessions in regular use.
/// - **Signed-in sessions come last**: while the store holds any anonymous
///   session (or a placeholder left by a moved session), no signed-in
///   session is evicted. A flood of anonymous visitors pushes out other
///   anonymous visitors, never your users. When only signed-in sessions
///   remain, the least valuable of them go as usual.
/// - **Expiry backstop without a sweeper**: an entry whose deadline passed
///   more than 30 seconds ago is dropped when it is next read, and evicted
///   first under pressure; [`run_pending_tasks`](Self::run_pending_tasks)
///   drops them all at once.
/// - **Exact user index**: an eviction takes the session out of its user's
///   index in the same step, and a session is only indexed while it is
///   stored, so the index never outgrows the store.
/// - **Atomic per key**: every primitive holds the key's shard lock, so
///   concurrent requests writing different keys keep all their writes.
///
/// Clones share one cache: two layers (say, before and after a key
/// rotation) can share a store.
///
/// ```
/// use tower_session_guard::{Key, MemoryStore, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::new(50_000), Key::generate());
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    entries: Cache<IdHash, Slot, UnitWeighter, IdHashState, Hooks>,
    index: Arc<Index>,
    locks: Box<[Arc<async_lock::Mutex<()>>]>,
    /// The origin of the backstop's clock.
    started: Instant,
}

/// What the cache keeps per key: the entry, and when the backstop may
/// drop it (seconds since the store was made).
#[derive(Clone)]
struct Slot {
    stored: Stored,
    drop_after: u32,
}

/// An [`Entry`], with the rare placeholders boxed so that every slot stays small.
#[derive(Clone)]
enum Stored {
    Session(Arc<SessionRecord>),
    Placeholder(Box<Entry>),
}

impl Stored {
    fn new(entry: &Entry) -> Self {
        match entry {
            Entry::Session(record) => Self::Session(Arc::clone(record)),
            placeholder => Self::Placeholder(Box::new(placeholder.clone())),
        }
    }

    fn entry(&self) -> Entry {
        match self {
            Self::Session(record) => Entry::Session(Arc::clone(record)),
            Self::Placeholder(entry) => (**entry).clone(),
        }
    }

    /// The signed-in user, for a signed-in session.
    fn user(&self) -> Option<&str> {
        match self {
            Self::Session(record) => record.user_id.as_deref(),
            Self::Placeholder(_) => None,
        }
    }
}

/// The per-user index, and the count of entries eviction may take first.
struct Index {
    /// User key → that user's session ids.
    users: Mutex<HashMap<u64, Ids, IdHashState>>,
    /// The index key of a user id.
    key_of: fn(&std::collections::hash_map::RandomState, &str) -> u64,
    hasher: std::collections::hash_map::RandomState,
    /// Entries that are not signed-in sessions: while there are any,
    /// signed-in sessions are pinned.
    evictable: AtomicUsize,
}

/// One user's session ids: most users have one, kept inline.
///
/// Users are keyed by a keyed 64-bit hash of their id, not by a copy of
/// it. Two users whose ids share a hash would share one list; readers
/// check each session's own user id, so they would still see and remove
/// only their own sessions.
enum Ids {
    One(IdHash),
    Many(Vec<IdHash>),
}

impl Ids {
    fn as_slice(&self) -> &[IdHash] {
        match self {
            Self::One(id) => std::slice::from_ref(id),
            Self::Many(ids) => ids,
        }
    }
}

impl Index {
    fn new() -> Self {
        Self {
            users: Mutex::new(HashMap::with_hasher(IdHashState::new())),
            key_of: |hasher, user_id| hasher.hash_one(user_id),
            hasher: std::collections::hash_map::RandomState::new(),
            evictable: AtomicUsize::new(0),
        }
    }

    fn key(&self, user_id: &str) -> u64 {
        (self.key_of)(&self.hasher, user_id)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<u64, Ids, IdHashState>> {
        // Every change to the map is a single step: poisoning is ignored.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, user_id: &str, id: IdHash) {
        let key = self.key(user_id);
        let mut map = self.map();
        match map.get_mut(&key) {
            None => {
                map.insert(key, Ids::One(id));
            }
            Some(ids) if ids.as_slice().contains(&id) => {}
            Some(ids @ Ids::One(_)) => {
                let first = ids.as_slice()[0];
                *ids = Ids::Many(vec![first, id]);
            }
            Some(Ids::Many(ids)) => ids.push(id),
        }
    }

    fn remove(&self, user_id: &str, removed: &[IdHash]) {
        let key = self.key(user_id);
        let mut map = self.map();
        let now_empty = match map.get_mut(&key) {
            None => false,
            Some(Ids::One(only)) => removed.contains(only),
            Some(Ids::Many(ids)) => {
                ids.retain(|id| !removed.contains(id));
                ids.is_empty()
            }
        };
        if now_empty {
            map.remove(&key);
        }
    }

    fn members(&self, user_id: &str) -> Vec<IdHash> {
        self.map()
            .get(&self.key(user_id))
            .map(|ids| ids.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Accounts for `slot` entering the store.
    fn admitted(&self, slot: &Slot) {
        if slot.stored.user().is_none() {
            self.evictable.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Accounts for `slot` under `id` leaving the store; `by_store` when
    /// the store itself dropped it (an eviction, the backstop), which the
    /// lifecycle does not see, so the user index is updated here.
    fn released(&self, id: &IdHash, slot: &Slot, by_store: bool) {
        match slot.stored.user() {
            None => {
                self.evictable.fetch_sub(1, Ordering::Relaxed);
            }
            Some(user) if by_store => self.remove(user, std::slice::from_ref(id)),
            Some(_) => {}
        }
    }
}

/// quick_cache's hooks: signed-in sessions are pinned while anything else
/// can be evicted, and an eviction leaves the user index.
#[derive(Clone)]
struct Hooks(Arc<Index>);

impl Lifecycle<IdHash, Slot> for Hooks {
    type RequestState = ();

    fn is_pinned(&self, _id: &IdHash, slot: &Slot) -> bool {
        slot.stored.user().is_some() && self.0.evictable.load(Ordering::Relaxed) > 0
    }

    fn on_evict(&self, _state: &mut (), id: IdHash, slot: Slot) {
        self.0.released(&id, &slot, true);
    }
}

impl MemoryStore {
    /// A store holding about `max_sessions` sessions (at least one).
    #[must_use]
    pub fn new(max_sessions: u64) -> Self {
        Self::started_at(max_sessions, Instant::now())
    }

    /// A store whose backstop clock started at `started`.
    fn started_at(max_sessions: u64, started: Instant) -> Self {
        let max_sessions = max_sessions.max(1);
        let index = Arc::new(Index::new());
        let entries = Cache::with(
            usize::try_from(max_sessions).unwrap_or(usize::MAX),
            max_sessions,
            UnitWeighter,
            IdHashState::new(),
            Hooks(Arc::clone(&index)),
        );
        Self {
            shared: Arc::new(Shared {
                entries,
                index,
                locks: (0..USER_LOCKS)
                    .map(|_| Arc::new(async_lock::Mutex::new(())))
                    .collect(),
                started,
            }),
        }
    }

    /// The number of entries held (sessions, and placeholders left by
    /// sessions that moved moments ago).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.shared.entries.len() as u64
    }

    /// Whether the store holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.shared.entries.is_empty()
    }

    /// The number of users with at least one indexed session.
    #[must_use]
    pub fn indexed_users(&self) -> usize {
        self.shared.index.map().len()
    }

    /// Drops every entry past its backstop now, instead of when it is next
    /// read or evicted.
    ///
    /// Not needed in production; useful in tests and memory measurements.
    pub async fn run_pending_tasks(&self) {
        let shared = &*self.shared;
        let now = shared.now_secs();
        let mut expired = Vec::new();
        for (id, slot) in shared.entries.iter() {
            if slot.drop_after < now {
                expired.push(id);
            }
        }
        for id in expired {
            shared.take_if(&id, |slot| slot.drop_after < now, true);
        }
    }
}

impl Shared {
    fn now_secs(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// A slot for `entry`, kept by the backstop for `lifetime_ms` plus the slack.
    fn slot(&self, entry: &Entry, lifetime_ms: UnixMillis) -> Slot {
        let secs = u64::from(self.now_secs())
            .saturating_add(lifetime_ms.div_ceil(1000))
            .saturating_add(BACKSTOP_SLACK_SECS);
        Slot {
            stored: Stored::new(entry),
            drop_after: u32::try_from(secs).unwrap_or(u32::MAX),
        }
    }

    /// A slot for a session, kept until its deadline as seen from its last activity.
    fn session_slot(&self, record: Arc<SessionRecord>) -> Slot {
        let lifetime = record.expires_at().saturating_sub(record.last_seen);
        self.slot(&Entry::Session(record), lifetime)
    }

    /// Removes the slot under `id` if `condition` holds for it, under the
    /// shard's lock, and accounts for it.
    fn take_if(
        &self,
        id: &IdHash,
        condition: impl FnOnce(&Slot) -> bool,
        by_store: bool,
    ) -> Option<Slot> {
        let (_, slot) = self.entries.remove_if(id, condition)?;
        self.index.released(id, &slot, by_store);
        Some(slot)
    }
}

impl Default for MemoryStore {
    /// A store for [`DEFAULT_MAX_SESSIONS`] (100 000) sessions.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SESSIONS)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.shared.entries.len())
            .field("capacity", &self.shared.entries.capacity())
            .finish()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let shared = &*self.shared;
        match shared
            .entries
            .entry(&record.id_hash, None, |_, _| EntryAction::Retain(()))
        {
            EntryResult::Vacant(vacancy) => {
                let slot = shared.session_slot(Arc::new(record.clone()));
                shared.index.admitted(&slot);
                // The guard holds the key: nothing else was inserted under it.
                let _ = vacancy.insert(slot);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let shared = &*self.shared;
        let Some(slot) = shared.entries.get(id) else {
            return Ok(None);
        };
        let now = shared.now_secs();
        if slot.drop_after < now {
            shared.take_if(id, |slot| slot.drop_after < now, true);
            return Ok(None);
        }
        Ok(Some(slot.stored.entry()))
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let shared = &*self.shared;
        let updated = shared.entries.entry(id, None, |_, slot| {
            let Stored::Session(current) = &slot.stored else {
                return EntryAction::Retain(false);
            };
            let mut record = SessionRecord::clone(current);
            record.apply(change);
            let record = Arc::new(record);
            *slot = if change.touch.is_some() {
                shared.session_slot(record)
            } else {
                Slot {
                    stored: Stored::Session(record),
                    drop_after: slot.drop_after,
                }
            };
            EntryAction::Retain(true)
        });
        Ok(matches!(updated, EntryResult::Retained(true)))
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        let shared = &*self.shared;
        let Some(with) = with else {
            let removed = shared.take_if(
                id,
                |slot| matches!(&slot.stored, Stored::Session(r) if r.version == version),
                false,
            );
            return Ok(removed.is_some());
        };
        let replaced = shared
            .entries
            .entry(id, None, |_, slot| match &slot.stored {
                Stored::Session(current) if current.version == version => {
                    // Kept at least as long as the session it replaces would have been.
                    let lifetime = with.expires_at().saturating_sub(current.last_seen);
                    let new = shared.slot(with, lifetime);
                    shared.index.released(id, slot, false);
                    shared.index.admitted(&new);
                    *slot = new;
                    EntryAction::Retain(true)
                }
                _ => EntryAction::Retain(false),
            });
        Ok(matches!(replaced, EntryResult::Retained(true)))
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .shared
            .take_if(id, |_| true, false)
            .map(|slot| slot.stored.entry()))
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        _until: UnixMillis,
    ) -> Result<(), StoreError> {
        // Under the key's shard lock, and only while the session is
        // stored: an eviction cannot slip in between and leave an entry
        // behind for a session that is gone.
        let index = &self.shared.index;
        let _ = self.shared.entries.entry(id, None, |_, slot| {
            if slot.stored.user() == Some(user_id) {
                index.add(user_id, *id);
            }
            EntryAction::Retain(())
        });
        Ok(())
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        self.shared.index.remove(user_id, ids);
        Ok(())
    }

    async fn index_members(
        &self,
        user_id: &str,
        _now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        Ok(self.shared.index.members(user_id))
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        let locks = &self.shared.locks;
        // The modulo keeps the index in range; truncation is intended.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (self.shared.index.key(user_id) % locks.len() as u64) as usize;
        Ok(UserLock::new(locks[stripe].lock_arc().await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::record::{Deadlines, SessionData};

    /// A live session created at 1 s, idle until 61 s, over at 3601 s.
    fn record(user: Option<&str>) -> SessionRecord {
        Deadlines {
            created_at: 1_000,
            idle_deadline: 61_000,
            absolute_deadline: 3_601_000,
        }
        .record(
            SessionId::generate().hash(),
            user.map(str::to_owned),
            SessionData::default(),
        )
    }

    #[tokio::test]
    async fn users_sharing_an_index_key_see_and_remove_only_their_own_sessions() {
        let mut index = Index::new();
        // Every user id hashes alike: one list for all.
        index.key_of = |_, _| 42;
        let store = MemoryStore::new(100);
        let index = Arc::new(index);
        let store = MemoryStore {
            shared: Arc::new(Shared {
                entries: Cache::with(
                    100,
                    100,
                    UnitWeighter,
                    IdHashState::new(),
                    Hooks(Arc::clone(&index)),
                ),
                index,
                locks: store.shared.locks.clone(),
                started: Instant::now(),
            }),
        };
        let (a, b) = (record(Some("a")), record(Some("b")));
        for r in [&a, &b] {
            store.create(r).await.unwrap();
            store
                .index_add(
                    r.user_id.as_deref().unwrap(),
                    &r.id_hash,
                    r.absolute_deadline,
                )
                .await
                .unwrap();
        }
        assert_eq!(store.indexed_users(), 1, "the keys were meant to collide");

        let listed = crate::lifecycle::sessions_of(&store, "a", 2_000)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id_hash, a.id_hash);
        let removed = crate::lifecycle::logout_user(&store, "a", None, 2_000)
            .await
            .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].id_hash, a.id_hash);
        assert!(
            store.load(&b.id_hash).await.unwrap().is_some(),
            "b's session was removed"
        );
        assert_eq!(
            crate::lifecycle::sessions_of(&store, "b", 2_000)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn evicted_sessions_leave_the_user_index_even_under_concurrent_inserts() {
        let store = MemoryStore::new(50);
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let store = store.clone();
                std::thread::spawn(move || {
                    futures_executor(async move {
                        for n in 0..5_000 {
                            let user = format!("user-{worker}-{n}");
                            let r = record(Some(&user));
                            assert!(store.create(&r).await.unwrap());
                            store
                                .index_add(&user, &r.id_hash, r.absolute_deadline)
                                .await
                                .unwrap();
                        }
                    });
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(store.len() <= 60, "{} entries", store.len());
        assert_eq!(
            store.indexed_users() as u64,
            store.len(),
            "index entries outlived their sessions"
        );
    }

    /// Runs a future that never waits on anything but the store's own locks.
    fn futures_executor<F: std::future::Future<Output = ()>>(future: F) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future);
    }

    #[tokio::test]
    async fn anonymous_entries_are_evicted_before_any_signed_in_session() {
        let store = MemoryStore::new(100);
        let mut signed_in = Vec::new();
        for n in 0..60 {
            let r = record(Some(&format!("u{n}")));
            store.create(&r).await.unwrap();
            signed_in.push(r.id_hash);
        }
        for _ in 0..2_000 {
            store.create(&record(None)).await.unwrap();
        }
        for id in &signed_in {
            assert!(
                store.load(id).await.unwrap().is_some(),
                "a signed-in session was evicted while anonymous ones remained"
            );
        }
        assert!(store.len() <= 110, "{} entries", store.len());

        // With no anonymous session left, signed-in sessions are evictable.
        for _ in 0..2_000 {
            store.create(&record(Some("more"))).await.unwrap();
        }
        assert!(store.len() <= 110, "{} entries", store.len());
    }

    #[tokio::test]
    async fn the_backstop_drops_entries_long_past_their_deadline() {
        // The store's clock reads five seconds: `drop_after = 0` has passed.
        let store =
            MemoryStore::started_at(100, Instant::now() - std::time::Duration::from_secs(5));
        let shared = &store.shared;
        let (stale, kept, swept) = (record(Some("u")), record(Some("u")), record(None));
        for (r, drop_after) in [(&stale, 0), (&kept, u32::MAX), (&swept, 0)] {
            let slot = Slot {
                stored: Stored::Session(Arc::new(r.clone())),
                drop_after,
            };
            shared.index.admitted(&slot);
            shared.entries.insert(r.id_hash, slot);
            if let Some(user) = &r.user_id {
                store.index_add(user, &r.id_hash, 0).await.unwrap();
            }
        }
        assert_eq!(store.load(&stale.id_hash).await.unwrap(), None);
        assert!(store.load(&kept.id_hash).await.unwrap().is_some());
        assert_eq!(
            store.shared.index.members("u"),
            vec![kept.id_hash],
            "a session dropped by the backstop leaves the index"
        );
        assert_eq!(store.shared.index.evictable.load(Ordering::Relaxed), 1);
        store.run_pending_tasks().await;
        assert_eq!(store.len(), 1, "the sweep drops what nobody reads");
        assert_eq!(store.shared.index.evictable.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_replaced_session_keeps_its_count_right() {
        let store = MemoryStore::new(10);
        let r = record(Some("u"));
        store.create(&r).await.unwrap();
        assert_eq!(store.shared.index.evictable.load(Ordering::Relaxed), 0);
        let marker = Entry::Superseded(crate::record::Superseded {
            successor: SessionId::generate().hash(),
            until: 2_000,
        });
        assert!(!store.replace(&r.id_hash, 7, Some(&marker)).await.unwrap());
        assert!(store.replace(&r.id_hash, 0, Some(&marker)).await.unwrap());
        assert_eq!(store.shared.index.evictable.load(Ordering::Relaxed), 1);
        assert_eq!(store.load(&r.id_hash).await.unwrap(), Some(marker));
        store.delete(&r.id_hash).await.unwrap();
        assert_eq!(store.shared.index.evictable.load(Ordering::Relaxed), 0);
    }
}
