//! The default store: a bounded in-memory cache on moka.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;

use super::{Login, LoginOutcome, Regeneration, SessionStore, StoreError};
use crate::clock::UnixMillis;
use crate::id::{IdHash, IdHashState};
use crate::policy::is_live_session_of;
use crate::record::{Change, SessionRecord};

/// Bound on follow-the-forward hops and on repeated passes over a user's index.
const MAX_PASSES: usize = 4;

/// Number of per-user login locks (users hash onto them).
const USER_LOCKS: usize = 64;

/// How long after its deadline a record may linger before the cache drops it.
///
/// The policy, not the cache, decides expiry: the slack lets the layer see an
/// expired record (and report *why* it expired) instead of finding nothing.
const BACKSTOP_SLACK: Duration = Duration::from_secs(30);

/// [`BACKSTOP_SLACK`] in the records' clock unit.
const BACKSTOP_SLACK_MS: UnixMillis = 30_000;

/// Sessions kept by [`MokaStore::default`].
pub const DEFAULT_MAX_SESSIONS: u64 = 100_000;

/// An in-memory store for a single process, bounded by a number of sessions.
///
/// - **Bounded**: at most `max_sessions` records; when full, the least
///   recently used session is dropped to make room (plain LRU, so a new
///   session is never refused).
/// - **Expiry backstop**: each record is dropped some seconds after its
///   idle or absolute deadline, so memory held by abandoned sessions comes
///   back without a sweeper task.
/// - **Atomic**: each session has its own lock; an update is a
///   read-modify-write under it, so concurrent requests writing different
///   keys keep all their writes, and a deleted session stays deleted.
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
    records: Cache<IdHash, Arc<Slot>, IdHashState>,
    users: Arc<UserIndex>,
}

/// One session's place in the cache: its current record behind its own lock.
///
/// Updates swap the record in place instead of writing the cache, which
/// would take moka's per-key compute machinery on every request. Lock
/// order: no cache operation is ever called while a slot is locked (the
/// cache's listener and expiry callbacks lock slots themselves).
struct Slot(Mutex<SlotState>);

struct SlotState {
    /// `None` once the session was removed: a request that fetched the slot
    /// before that finds nothing, and cannot write the session back.
    record: Option<Arc<SessionRecord>>,
    /// The deadline the cache's backstop was last computed for.
    scheduled_for: UnixMillis,
}

impl Slot {
    fn new(record: Arc<SessionRecord>) -> Self {
        Self(Mutex::new(SlotState {
            scheduled_for: record.expires_at(),
            record: Some(record),
        }))
    }

    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self) -> Option<Arc<SessionRecord>> {
        self.state().record.clone()
    }

    /// Removes the record if `condition` holds for it.
    fn take_if(
        &self,
        condition: impl FnOnce(&SessionRecord) -> bool,
    ) -> Option<Arc<SessionRecord>> {
        let mut state = self.state();
        match &state.record {
            Some(record) if condition(record) => state.record.take(),
            _ => None,
        }
    }

    /// Replaces the record with `replace(current)` unless that returns
    /// `None`; says whether the cache's backstop must be rescheduled.
    fn replace(
        &self,
        replace: impl FnOnce(&Arc<SessionRecord>) -> Option<SessionRecord>,
    ) -> Replaced {
        let mut state = self.state();
        let Some(current) = &state.record else {
            return Replaced::Gone;
        };
        let Some(next) = replace(current) else {
            return Replaced::Kept(Arc::clone(current));
        };
        let deadline = next.expires_at();
        let previous = state.record.replace(Arc::new(next));
        // The backstop must never fall due before the record's deadline,
        // nor hold a short-lived placeholder for the rest of a long session.
        let reschedule = deadline > state.scheduled_for.saturating_add(BACKSTOP_SLACK_MS / 2)
            || deadline.saturating_add(BACKSTOP_SLACK_MS) < state.scheduled_for;
        Replaced::Done {
            previous: previous.unwrap_or_else(|| unreachable!("checked above")),
            reschedule,
        }
    }
}

/// What [`Slot::replace`] did.
enum Replaced {
    /// The session was removed meanwhile.
    Gone,
    /// The replacement declined; this is the record left in place.
    Kept(Arc<SessionRecord>),
    /// Replaced `previous`.
    Done {
        previous: Arc<SessionRecord>,
        reschedule: bool,
    },
}

/// The per-user index: user id → hashes of that user's sessions.
///
/// Entries leave it when the cache drops their record for any reason
/// (deletion, expiry, eviction by size), through the cache's removal
/// listener, so it never holds more entries than there are records.
#[derive(Default)]
struct UserIndex {
    sessions: Mutex<HashMap<String, Vec<IdHash>>>,
    /// Serialises logins and mass deletions per user (striped), so that the
    /// limit check and the write it allows happen as one step.
    locks: Vec<async_lock::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl UserIndex {
    fn new() -> Self {
        Self {
            sessions: Mutex::default(),
            locks: (0..USER_LOCKS)
                .map(|_| async_lock::Mutex::new(()))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn lock_for(&self, user_id: &str) -> &async_lock::Mutex<()> {
        // The modulo keeps the index in range; truncation is intended.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (self.hasher.hash_one(user_id) % USER_LOCKS as u64) as usize;
        &self.locks[stripe]
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<IdHash>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, user_id: &str, id: IdHash) {
        let mut map = self.map();
        // Most users have one session: no room reserved for four.
        let entry = map
            .entry(user_id.to_owned())
            .or_insert_with(|| Vec::with_capacity(1));
        if !entry.contains(&id) {
            entry.push(id);
        }
    }

    fn remove(&self, user_id: &str, id: &IdHash) {
        let mut map = self.map();
        if let Some(entry) = map.get_mut(user_id) {
            entry.retain(|h| h != id);
            if entry.is_empty() {
                map.remove(user_id);
            }
        }
    }

    fn hashes(&self, user_id: &str) -> Vec<IdHash> {
        self.map().get(user_id).cloned().unwrap_or_default()
    }

    fn users(&self) -> usize {
        self.map().len()
    }
}

impl MokaStore {
    /// A store holding at most `max_sessions` sessions.
    #[must_use]
    pub fn new(max_sessions: u64) -> Self {
        let users = Arc::new(UserIndex::new());
        let listener_users = Arc::clone(&users);
        let records = Cache::builder()
            .max_capacity(max_sessions)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Backstop)
            .eviction_listener(move |key: Arc<IdHash>, slot: Arc<Slot>, cause| {
                // A rescheduled slot stays where it is. A removal by this
                // store has emptied its slot and updated the index already;
                // an eviction (size, expiry) is done here.
                if cause != RemovalCause::Replaced {
                    if let Some(record) = slot.take_if(|_| true) {
                        if let Some(user) = &record.user_id {
                            listener_users.remove(user, &key);
                        }
                    }
                }
            })
            .build_with_hasher(IdHashState::new());
        Self { records, users }
    }

    /// The number of users with at least one indexed session, approximately.
    #[must_use]
    pub fn indexed_users(&self) -> usize {
        self.users.users()
    }

    /// The record under `id`, if there is one.
    fn get(&self, id: &IdHash) -> Option<Arc<SessionRecord>> {
        self.records.get(id)?.record()
    }

    /// The user's live sessions; dead index entries are dropped on the way.
    async fn live_sessions(&self, user_id: &str, now: UnixMillis) -> Vec<Arc<SessionRecord>> {
        let mut live = Vec::new();
        for hash in self.users.hashes(user_id) {
            match self.get(&hash) {
                Some(record) if is_live_session_of(&record, user_id, now) => live.push(record),
                // A forwarding entry leaves the index with its own removal.
                Some(record) if record.is_placeholder() => {}
                Some(record) if record.user_id.as_deref() == Some(user_id) => {
                    // Expired: the policy would refuse it anyway.
                    self.take(&hash, |r| now >= r.expires_at());
                }
                _ => self.users.remove(user_id, &hash),
            }
        }
        live
    }

    /// Inserts `record` unless its key is taken; returns whether it was inserted.
    ///
    /// The look-up and the insert are two steps (as in moka's own
    /// `or_insert`; an atomic insert-if-absent would go through moka's
    /// per-key compute, which costs more than the rest of a new session).
    /// Two inserts of one key could only race with two equal 128-bit ids
    /// drawn from the OS CSPRNG at the same instant; the check is there for
    /// the sequential case, such as a store shared by two layers.
    fn insert_new(&self, record: Arc<SessionRecord>) -> bool {
        let id = record.id_hash;
        if self.records.contains_key(&id) {
            return false;
        }
        let user = record.user_id.clone();
        self.records.insert(id, Arc::new(Slot::new(record)));
        // After the insert: an index entry without its record would be
        // dropped as dead by a `delete_user` pass running meanwhile.
        if let Some(user) = &user {
            self.users.add(user, id);
        }
        true
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
        self.records.run_pending_tasks();
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
        Ok(self.insert_new(Arc::new(record.clone())))
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.get(id))
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let mut target = *id;
        // At most one hop: a forwarding entry points at a real session.
        for _ in 0..2 {
            let Some(slot) = self.records.get(&target) else {
                return Ok(false);
            };
            let replaced = slot.replace(|current| {
                (!current.is_placeholder()).then(|| {
                    let mut record = SessionRecord::clone(current);
                    record.apply(change);
                    record
                })
            });
            match replaced {
                Replaced::Done { reschedule, .. } => {
                    if reschedule {
                        self.reschedule(&target, &slot);
                    }
                    return Ok(true);
                }
                Replaced::Kept(placeholder) => match placeholder.successor {
                    Some(next) if target == *id => target = next.id_hash,
                    _ => return Ok(false),
                },
                Replaced::Gone => return Ok(false),
            }
        }
        Ok(false)
    }

    async fn delete(&self, id: &IdHash) -> Result<bool, StoreError> {
        Ok(self.remove_following(id, None, None).is_some())
    }

    async fn regenerate(
        &self,
        old: &IdHash,
        new: &IdHash,
        regeneration: &Regeneration,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        // The new record is stored before the old one is swapped for its
        // placeholder, so a request that finds a forwarding entry always
        // finds its successor. The swap only happens if the old record is
        // still the one that was copied (no write is lost), and of
        // concurrent renewals exactly one wins the swap.
        let Some(slot) = self.records.get(old) else {
            return Ok(None);
        };
        loop {
            let previous = match slot.record() {
                Some(previous) if !previous.is_placeholder() => previous,
                _ => return Ok(None),
            };
            let moved = Arc::new(regeneration.apply_to(&previous, new));
            if !self.insert_new(Arc::clone(&moved)) {
                return Err(StoreError::Unavailable(
                    "the new session id was already taken; nothing was changed".into(),
                ));
            }
            let swapped = slot.replace(|current| {
                Arc::ptr_eq(current, &previous).then(|| regeneration.replacement(current, new))
            });
            match swapped {
                Replaced::Done { reschedule, .. } => {
                    if reschedule {
                        self.reschedule(old, &slot);
                    }
                    return Ok(Some(moved));
                }
                // Written meanwhile: copy again.
                Replaced::Kept(current) if !current.is_placeholder() => {
                    self.take(new, |_| true);
                }
                Replaced::Kept(_) | Replaced::Gone => {
                    self.take(new, |_| true);
                    return Ok(None);
                }
            }
        }
    }

    async fn login(&self, login: &Login) -> Result<LoginOutcome, StoreError> {
        let user_id = login.record.user_id.as_deref().unwrap_or_default();
        let _serialised = self.users.lock_for(user_id).lock().await;

        // Without a limit there is nothing to count: a login costs the same
        // however many sessions the user already has.
        let live = if login.limit.is_some() {
            self.live_sessions(user_id, login.now).await
        } else {
            Vec::new()
        };
        let Ok(evicted) = login.evictions(&live) else {
            return Ok(LoginOutcome::LimitReached);
        };

        // Move the previous session, if it is still a session.
        if let Some(previous_id) = &login.previous {
            if let Some(slot) = self.records.get(previous_id) {
                let superseded = slot.replace(|current| {
                    (!current.is_placeholder()).then(|| login.superseded(current))
                });
                if let Replaced::Done {
                    previous,
                    reschedule,
                } = superseded
                {
                    if reschedule {
                        self.reschedule(previous_id, &slot);
                    }
                    let moved = Arc::new(login.moved(&previous));
                    if !self.insert_new(Arc::clone(&moved)) {
                        slot.replace(|_| Some(SessionRecord::clone(&previous)));
                        return Err(StoreError::Unavailable(
                            "the new session id was already taken; nothing was changed".into(),
                        ));
                    }
                    self.evict(&evicted);
                    return Ok(LoginOutcome::LoggedIn {
                        record: moved,
                        moved: true,
                        evicted,
                    });
                }
            }
        }
        let record = Arc::new(login.record.clone());
        if !self.insert_new(Arc::clone(&record)) {
            return Err(StoreError::Unavailable(
                "the new session id was already taken; nothing was changed".into(),
            ));
        }
        self.evict(&evicted);
        Ok(LoginOutcome::LoggedIn {
            record,
            moved: false,
            evicted,
        })
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        Ok(self.live_sessions(user_id, now).await)
    }

    async fn delete_user(
        &self,
        user_id: &str,
        keep: Option<&IdHash>,
    ) -> Result<Vec<IdHash>, StoreError> {
        let _serialised = self.users.lock_for(user_id).lock().await;
        let mut deleted = Vec::new();
        let mut seen = HashSet::new();
        // A renewal running meanwhile adds its new id to the index after we
        // read it: pass again until a pass finds nothing new.
        for _ in 0..MAX_PASSES {
            let pending: Vec<IdHash> = self
                .users
                .hashes(user_id)
                .into_iter()
                .filter(|h| Some(h) != keep && seen.insert(*h))
                .collect();
            if pending.is_empty() {
                break;
            }
            for hash in pending {
                if let Some(removed) = self.remove_following(&hash, Some(user_id), keep) {
                    seen.insert(removed);
                    deleted.push(removed);
                } else if self.get(&hash).is_none() {
                    self.users.remove(user_id, &hash);
                }
            }
        }
        Ok(deleted)
    }
}

impl MokaStore {
    fn evict(&self, victims: &[IdHash]) {
        for victim in victims {
            self.remove_following(victim, None, None);
        }
    }

    /// Deletes the record under `id` (only if it belongs to `user`, when
    /// given); when it is a renewal's forwarding entry, deletes the session
    /// it forwards to as well (unless that is `keep`), so a session renewed
    /// a moment ago cannot escape a logout, a revocation or an eviction.
    /// Returns the hash of the session deleted, if one was.
    fn remove_following(
        &self,
        id: &IdHash,
        user: Option<&str>,
        keep: Option<&IdHash>,
    ) -> Option<IdHash> {
        let owned = |r: &SessionRecord| user.map_or(true, |u| r.user_id.as_deref() == Some(u));
        let mut current = *id;
        for _ in 0..MAX_PASSES {
            let removed = self.take(&current, owned)?;
            if !removed.is_placeholder() {
                return Some(current);
            }
            // A superseded marker points nowhere: its id was replaced by a
            // login or a regeneration, a new session that is not this one.
            let next = removed.successor.map(|s| s.id_hash)?;
            if Some(&next) == keep {
                return None;
            }
            current = next;
        }
        None
    }

    /// Removes the record under `id` if `condition` holds for it. The slot
    /// is emptied under its lock first, so an update that fetched it
    /// meanwhile finds nothing and cannot write the session back.
    fn take(
        &self,
        id: &IdHash,
        condition: impl FnOnce(&SessionRecord) -> bool,
    ) -> Option<Arc<SessionRecord>> {
        let slot = self.records.get(id)?;
        let taken = slot.take_if(condition)?;
        if let Some(user) = &taken.user_id {
            self.users.remove(user, id);
        }
        self.records
            .entry(*id)
            .and_compute_with(|existing| match existing {
                Some(entry) if Arc::ptr_eq(entry.value(), &slot) => Op::Remove,
                _ => Op::Nop,
            });
        Some(taken)
    }

    /// Puts `slot` back under `id` so that the cache recomputes its
    /// backstop from the slot's current record.
    ///
    /// A plain insert, not a compute: if the session was removed meanwhile,
    /// this puts back an emptied slot, which reads as no session and which
    /// the backstop drops within a second.
    fn reschedule(&self, id: &IdHash, slot: &Arc<Slot>) {
        self.records.insert(*id, Arc::clone(slot));
    }
}

/// The cache's lifetime for a slot: the time left to its record's earliest
/// deadline, plus [`BACKSTOP_SLACK`], from the time the slot is stored or
/// rescheduled (the store reschedules when a write moves the deadline by
/// more than half the slack either way).
///
/// Measured from the record's own `last_seen`, not the wall clock, so a
/// record written under a test clock is not dropped early.
struct Backstop;

impl Backstop {
    fn lifetime(record: &SessionRecord) -> Duration {
        let left = record.expires_at().saturating_sub(record.last_seen);
        Duration::from_millis(left) + BACKSTOP_SLACK
    }

    fn schedule(slot: &Slot) -> Option<Duration> {
        let mut state = slot.state();
        let record = state.record.clone()?;
        state.scheduled_for = record.expires_at();
        Some(Self::lifetime(&record))
    }
}

impl Expiry<IdHash, Arc<Slot>> for Backstop {
    fn expire_after_create(
        &self,
        _key: &IdHash,
        slot: &Arc<Slot>,
        _created_at: Instant,
    ) -> Option<Duration> {
        // An emptied slot is on its way out: a second is plenty.
        Some(Self::schedule(slot).unwrap_or(Duration::from_secs(1)))
    }

    fn expire_after_update(
        &self,
        _key: &IdHash,
        slot: &Arc<Slot>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(Self::schedule(slot).unwrap_or(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::record::{Deadlines, SessionData};

    #[test]
    fn the_backstop_lasts_to_the_earliest_deadline_plus_slack() {
        let mut record = test_record(None);
        assert_eq!(
            Backstop::lifetime(&record),
            Duration::from_secs(60) + BACKSTOP_SLACK
        );
        record.last_seen = 31_000;
        assert_eq!(
            Backstop::lifetime(&record),
            Duration::from_secs(30) + BACKSTOP_SLACK
        );
        record.idle_deadline = 10_000_000;
        assert_eq!(
            Backstop::lifetime(&record),
            Duration::from_millis(3_601_000 - 31_000) + BACKSTOP_SLACK,
            "capped by the absolute deadline"
        );
    }

    /// A live session created at 1 s, idle until 61 s, over at 3601 s.
    fn test_record(user: Option<&str>) -> SessionRecord {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_sessions_never_come_back_through_a_concurrent_update() {
        let store = MokaStore::new(10_000);
        for _ in 0..2_000 {
            let record = test_record(Some("u"));
            let id = record.id_hash;
            store.create(&record).await.unwrap();
            let change = Change {
                set: vec![("k".into(), serde_json::json!(1))],
                ..Change::default()
            };
            let updater = {
                let store = store.clone();
                tokio::spawn(async move { store.update(&id, &change).await.unwrap() })
            };
            let deleter = {
                let store = store.clone();
                tokio::spawn(async move { store.delete(&id).await.unwrap() })
            };
            updater.await.unwrap();
            assert!(deleter.await.unwrap());
            assert!(
                store.load(&id).await.unwrap().is_none(),
                "a deleted session came back"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_user_catches_a_session_renewed_meanwhile() {
        use crate::store::{Forward, Regeneration};

        let store = MokaStore::new(100_000);
        for round in 0..200 {
            let user = format!("u{round}");
            let mut last = None;
            for _ in 0..20 {
                let record = test_record(Some(&user));
                store.create(&record).await.unwrap();
                last = Some(record.id_hash);
            }
            let old = last.unwrap();
            let old_id = SessionId::generate();
            let new_id = SessionId::generate();
            let renewal = Regeneration {
                forward: Some(Forward {
                    sealed_id: old_id.seal(&new_id),
                    until: 10_000,
                }),
                issued_at: 2_000,
                ..Regeneration::default()
            };
            let renewer = {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .regenerate(&old, &new_id.hash(), &renewal)
                        .await
                        .unwrap()
                })
            };
            let deleter = {
                let store = store.clone();
                let user = user.clone();
                tokio::spawn(async move { store.delete_user(&user, None).await.unwrap() })
            };
            renewer.await.unwrap();
            deleter.await.unwrap();
            let survivors = store.list_user(&user, 1_500).await.unwrap();
            assert!(
                survivors.is_empty(),
                "round {round}: {} sessions survived",
                survivors.len()
            );
        }
    }
}
