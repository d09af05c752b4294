//! The default store: a bounded in-memory cache of sessions, [`MemoryStore`].

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// - **Bounded, and never refusing**: about `max_sessions` entries. A new
///   session is always admitted; room is made by evicting with
///   quick_cache's scan-resistant policy (S3-FIFO), so a burst of one-time
///   visitors does not flush the sessions in regular use.
/// - **Signed-in sessions come first**: signed-in sessions and anonymous
///   ones are kept in two tiers (the placeholder a moved session leaves
///   behind stays in its session's tier, so a flood cannot cut a signed-in
///   session's renewal short). An anonymous session never evicts a signed-in one: a
///   flood of anonymous visitors only pushes out other anonymous visitors.
///   Each signed-in session takes its room from the anonymous tier, down
///   to a reserve of 1 % of `max_sessions` (at least one), so that
///   visitors can still start a session when signed-in users fill the
///   store; only then does a login evict the least valuable signed-in
///   session. The store may therefore hold up to 1 % more than
///   `max_sessions`.
/// - **Expiry backstop without a sweeper thread**: entries whose deadline
///   passed more than 30 seconds ago (sessions nobody came back to) are
///   dropped by a sweep that the request creating a new session runs once
///   per quarter of `max_sessions` new sessions (at least 1024 apart);
///   [`run_pending_tasks`](Self::run_pending_tasks) sweeps at once.
///   Sessions that are read after their deadline are removed by the
///   layer's policy, which reports why they expired.
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

type Tier = Cache<IdHash, Slot, UnitWeighter, IdHashState, Evictions>;

struct Shared {
    /// Signed-in sessions.
    signed_in: Tier,
    /// Anonymous sessions and placeholders.
    anonymous: Tier,
    index: Arc<Index>,
    /// Sizes of the tiers (see [`Shared::rebalance`]).
    room: Room,
    /// New sessions so far, to pace the backstop's sweeps.
    created: AtomicU64,
    locks: Box<[Arc<async_lock::Mutex<()>>]>,
    /// The origin of the backstop's clock.
    started: Instant,
}

/// How the store's bound is shared between the tiers.
struct Room {
    max_sessions: u64,
    /// The anonymous tier never shrinks below this.
    reserve: u64,
    /// The anonymous tier is resized when its target moved this far.
    step: u64,
    /// The anonymous tier's capacity as last set (set under this lock, so
    /// that concurrent rebalances apply in order).
    anonymous: Mutex<u64>,
    /// The backstop sweeps once per this many new sessions.
    sweep_every: u64,
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

    fn into_entry(self) -> Entry {
        match self {
            Self::Session(record) => Entry::Session(record),
            Self::Placeholder(entry) => *entry,
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

/// The per-user index, and the size of the signed-in tier.
struct Index {
    /// User key → that user's session ids.
    users: Mutex<HashMap<u64, Ids, IdHashState>>,
    /// The index key of a user id.
    key_of: fn(&std::collections::hash_map::RandomState, &str) -> u64,
    hasher: std::collections::hash_map::RandomState,
    /// Entries in the signed-in tier.
    signed_in: AtomicU64,
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
            signed_in: AtomicU64::new(0),
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

    /// Accounts for `slot` under `id` leaving the store, from the
    /// signed-in tier or not; `by_store` when the store itself dropped it
    /// (an eviction, the backstop), which the lifecycle does not see, so
    /// the user index is updated here.
    fn released(&self, id: &IdHash, slot: &Slot, signed_in_tier: bool, by_store: bool) {
        if signed_in_tier {
            self.signed_in.fetch_sub(1, Ordering::Relaxed);
        }
        if let (true, Some(user)) = (by_store, slot.stored.user()) {
            self.remove(user, std::slice::from_ref(id));
        }
    }
}

/// quick_cache's eviction hook: an evicted session leaves its user's index.
#[derive(Clone)]
struct Evictions {
    index: Arc<Index>,
    signed_in_tier: bool,
}

impl Lifecycle<IdHash, Slot> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), id: IdHash, slot: Slot) {
        self.index.released(&id, &slot, self.signed_in_tier, true);
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
        Self::with_index(max_sessions, started, Index::new())
    }

    fn with_index(max_sessions: u64, started: Instant, index: Index) -> Self {
        let max_sessions = max_sessions.max(1);
        let index = Arc::new(index);
        let tier = |signed_in_tier| {
            Cache::with(
                usize::try_from(max_sessions).unwrap_or(usize::MAX),
                max_sessions,
                UnitWeighter,
                IdHashState::new(),
                Evictions {
                    index: Arc::clone(&index),
                    signed_in_tier,
                },
            )
        };
        Self {
            shared: Arc::new(Shared {
                signed_in: tier(true),
                anonymous: tier(false),
                room: Room {
                    max_sessions,
                    reserve: (max_sessions / 100).max(1),
                    step: (max_sessions / 256).max(1),
                    anonymous: Mutex::new(max_sessions),
                    sweep_every: (max_sessions / 4).max(1024),
                },
                created: AtomicU64::new(0),
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
        (self.shared.signed_in.len() + self.shared.anonymous.len()) as u64
    }

    /// Whether the store holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.shared.signed_in.is_empty() && self.shared.anonymous.is_empty()
    }

    /// The number of users with at least one indexed session.
    #[must_use]
    pub fn indexed_users(&self) -> usize {
        self.shared.index.map().len()
    }

    /// Drops every entry past its backstop now, instead of at the next
    /// sweep.
    ///
    /// Not needed in production; useful in tests and memory measurements.
    pub async fn run_pending_tasks(&self) {
        self.shared.sweep();
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

    /// The tier that holds `id`, if either does: the signed-in tier if it
    /// holds it, else the anonymous one (where a missing key is then
    /// found missing).
    fn tier_of(&self, id: &IdHash) -> &Tier {
        if self.signed_in.contains_key(id) {
            &self.signed_in
        } else {
            &self.anonymous
        }
    }

    /// Removes the slot under `id` from `tier` if `condition` holds for it,
    /// under the shard's lock, and accounts for it.
    fn take_if(
        &self,
        tier: &Tier,
        id: &IdHash,
        condition: impl FnOnce(&Slot) -> bool,
        by_store: bool,
    ) -> Option<Slot> {
        let (_, slot) = tier.remove_if(id, condition)?;
        let signed_in_tier = std::ptr::eq(tier, &self.signed_in);
        self.index.released(id, &slot, signed_in_tier, by_store);
        if signed_in_tier {
            self.rebalance();
        }
        Some(slot)
    }

    /// Drops every entry past its backstop, keeping the user index and the
    /// count of signed-in sessions exact.
    fn sweep(&self) {
        let now = self.now_secs();
        for (tier, signed_in_tier) in [(&self.signed_in, true), (&self.anonymous, false)] {
            tier.retain(|id, slot| {
                let keep = slot.drop_after >= now;
                if !keep {
                    self.index.released(id, slot, signed_in_tier, true);
                }
                keep
            });
        }
        self.rebalance();
    }

    /// Gives the anonymous tier the room signed-in sessions leave, down to
    /// the reserve, once the target has moved by a step.
    fn rebalance(&self) {
        let room = &self.room;
        let mut anonymous = room
            .anonymous
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let signed_in = self.index.signed_in.load(Ordering::Relaxed);
        let target = room
            .max_sessions
            .saturating_sub(signed_in)
            .max(room.reserve);
        if target.abs_diff(*anonymous) >= room.step {
            *anonymous = target;
            self.anonymous.set_capacity(target);
        }
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
            .field("signed_in", &self.shared.signed_in.len())
            .field("anonymous", &self.shared.anonymous.len())
            .field("max_sessions", &self.shared.room.max_sessions)
            .finish()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let shared = &*self.shared;
        let (tier, other) = if record.user_id.is_some() {
            (&shared.signed_in, &shared.anonymous)
        } else {
            (&shared.anonymous, &shared.signed_in)
        };
        if other.contains_key(&record.id_hash) {
            return Ok(false);
        }
        let EntryResult::Vacant(vacancy) =
            tier.entry(&record.id_hash, None, |_, _| EntryAction::Retain(()))
        else {
            return Ok(false);
        };
        // The guard holds the key: nothing else was inserted under it.
        let _ = vacancy.insert(shared.session_slot(Arc::new(record.clone())));
        if record.user_id.is_some() {
            shared.index.signed_in.fetch_add(1, Ordering::Relaxed);
            shared.rebalance();
        }
        let created = shared.created.fetch_add(1, Ordering::Relaxed) + 1;
        if created % shared.room.sweep_every == 0 {
            shared.sweep();
        }
        Ok(true)
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let shared = &*self.shared;
        let slot = match shared.signed_in.get(id) {
            Some(slot) => slot,
            None => match shared.anonymous.get(id) {
                Some(slot) => slot,
                None => return Ok(None),
            },
        };
        Ok(Some(slot.stored.into_entry()))
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        let shared = &*self.shared;
        let tier = shared.tier_of(id);
        let updated = tier.entry(id, None, |_, slot| {
            let Stored::Session(current) = &slot.stored else {
                return EntryAction::Retain(None);
            };
            let mut record = SessionRecord::clone(current);
            record.apply(change);
            let version = record.version;
            let record = Arc::new(record);
            *slot = if change.touch.is_some() {
                shared.session_slot(record)
            } else {
                Slot {
                    stored: Stored::Session(record),
                    drop_after: slot.drop_after,
                }
            };
            EntryAction::Retain(Some(version))
        });
        Ok(match updated {
            EntryResult::Retained(version) => version,
            _ => None,
        })
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        let shared = &*self.shared;
        let tier = shared.tier_of(id);
        let at_version =
            |slot: &Slot| matches!(&slot.stored, Stored::Session(r) if r.version == version);
        let Some(with) = with else {
            return Ok(shared.take_if(tier, id, at_version, false).is_some());
        };
        // In place, in the tier the session was in: a placeholder lasts as
        // long in the face of evictions as the session it stands for.
        let replaced = tier.entry(id, None, |_, slot| {
            let Stored::Session(current) = &slot.stored else {
                return EntryAction::Retain(false);
            };
            if current.version != version {
                return EntryAction::Retain(false);
            }
            // Kept at least as long as the session it replaces would have been.
            let lifetime = with.expires_at().saturating_sub(current.last_seen);
            *slot = shared.slot(with, lifetime);
            EntryAction::Retain(true)
        });
        Ok(matches!(replaced, EntryResult::Retained(true)))
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let shared = &*self.shared;
        let removed = shared
            .take_if(&shared.signed_in, id, |_| true, false)
            .or_else(|| shared.take_if(&shared.anonymous, id, |_| true, false));
        Ok(removed.map(|slot| slot.stored.into_entry()))
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
        let _ = self.shared.signed_in.entry(id, None, |_, slot| {
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

    /// [`len`](MemoryStore::len): sessions, and the placeholders of
    /// sessions that moved moments ago.
    fn live_sessions(&self) -> Option<u64> {
        Some(self.len())
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

    async fn signed_in(store: &MemoryStore, user: &str) -> SessionRecord {
        let r = record(Some(user));
        assert!(store.create(&r).await.unwrap());
        store
            .index_add(user, &r.id_hash, r.absolute_deadline)
            .await
            .unwrap();
        r
    }

    #[tokio::test]
    async fn users_sharing_an_index_key_see_and_remove_only_their_own_sessions() {
        let mut index = Index::new();
        // Every user id hashes alike: one list for all.
        index.key_of = |_, _| 42;
        let store = MemoryStore::with_index(100, Instant::now(), index);
        let a = signed_in(&store, "a").await;
        let b = signed_in(&store, "b").await;
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
        let listed = crate::lifecycle::sessions_of(&store, "b", 2_000)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
    }

    #[test]
    fn evicted_sessions_leave_the_user_index_even_under_concurrent_inserts() {
        let store = MemoryStore::new(50);
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    runtime.block_on(async move {
                        for n in 0..5_000 {
                            signed_in(&store, &format!("user-{worker}-{n}")).await;
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
        assert_eq!(
            store.shared.index.signed_in.load(Ordering::Relaxed),
            store.len(),
            "the count of signed-in sessions drifted"
        );
    }

    #[tokio::test]
    async fn anonymous_sessions_never_evict_a_signed_in_one() {
        let store = MemoryStore::new(100);
        let mut users = Vec::new();
        for n in 0..60 {
            users.push(signed_in(&store, &format!("u{n}")).await.id_hash);
        }
        for _ in 0..2_000 {
            assert!(store.create(&record(None)).await.unwrap());
        }
        for id in &users {
            assert!(
                store.load(id).await.unwrap().is_some(),
                "an anonymous session evicted a signed-in one"
            );
        }
        assert!(store.len() <= 105, "{} entries", store.len());

        // Signed-in sessions take their room from the anonymous ones, down
        // to the reserve; then they evict each other.
        for n in 0..2_000 {
            signed_in(&store, &format!("more{n}")).await;
        }
        assert!(store.len() <= 105, "{} entries", store.len());
        assert!(
            store.shared.anonymous.len() <= 2,
            "{} anonymous entries kept beyond the reserve",
            store.shared.anonymous.len()
        );
    }

    #[tokio::test]
    async fn a_placeholder_stays_in_its_sessions_tier() {
        let store = MemoryStore::new(10);
        let r = signed_in(&store, "u").await;
        let marker = Entry::Superseded(crate::record::Superseded {
            successor: SessionId::generate().hash(),
            until: 2_000,
            user_id: None,
        });
        assert!(!store.replace(&r.id_hash, 7, Some(&marker)).await.unwrap());
        assert!(store.replace(&r.id_hash, 0, Some(&marker)).await.unwrap());
        assert!(store.shared.signed_in.contains_key(&r.id_hash));
        assert_eq!(store.load(&r.id_hash).await.unwrap(), Some(marker));
        // An anonymous flood cannot push it out.
        for _ in 0..1_000 {
            store.create(&record(None)).await.unwrap();
        }
        assert!(store.load(&r.id_hash).await.unwrap().is_some());
        assert!(store.delete(&r.id_hash).await.unwrap().is_some());
        assert_eq!(store.shared.index.signed_in.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_backstop_sweeps_entries_long_past_their_deadline() {
        // The store's clock reads five seconds: `drop_after = 0` has passed.
        let store =
            MemoryStore::started_at(100, Instant::now() - std::time::Duration::from_secs(5));
        let shared = &store.shared;
        let stale = record(Some("u"));
        let kept = record(Some("u"));
        for (r, drop_after) in [(&stale, 0), (&kept, u32::MAX)] {
            shared.signed_in.insert(
                r.id_hash,
                Slot {
                    stored: Stored::Session(Arc::new(r.clone())),
                    drop_after,
                },
            );
            shared.index.signed_in.fetch_add(1, Ordering::Relaxed);
            store.index_add("u", &r.id_hash, 0).await.unwrap();
        }
        let abandoned = record(None);
        shared.anonymous.insert(
            abandoned.id_hash,
            Slot {
                stored: Stored::Session(Arc::new(abandoned.clone())),
                drop_after: 0,
            },
        );
        // New sessions pace the sweep: the one that makes 1024 runs it.
        for _ in 0..1_023 {
            store.create(&record(None)).await.unwrap();
        }
        assert!(store.load(&stale.id_hash).await.unwrap().is_some());
        store.create(&record(None)).await.unwrap();
        assert_eq!(store.load(&stale.id_hash).await.unwrap(), None);
        assert_eq!(store.load(&abandoned.id_hash).await.unwrap(), None);
        assert!(store.load(&kept.id_hash).await.unwrap().is_some());
        assert_eq!(
            shared.index.members("u"),
            vec![kept.id_hash],
            "a session dropped by the backstop leaves the index"
        );
        assert_eq!(
            shared.index.signed_in.load(Ordering::Relaxed),
            store.shared.signed_in.len() as u64,
            "the count of signed-in sessions stays exact"
        );
    }
}
