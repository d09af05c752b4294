//! The default store: a bounded in-memory table of sessions.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::table::{Replaced, Table};
use super::{Login, LoginOutcome, Regeneration, SessionStore, StoreError};
use crate::clock::UnixMillis;
use crate::id::{IdHash, IdHashState};
use crate::policy::is_live_session_of;
use crate::record::{Change, SessionRecord};

/// Bound on follow-the-forward hops and on repeated passes over a user's index.
const MAX_PASSES: usize = 4;

/// Number of per-user login locks (users hash onto them).
const USER_LOCKS: usize = 64;

/// How long after its deadline a record may linger before the store drops it.
///
/// The policy, not the store, decides expiry: the slack lets the layer see an
/// expired record (and report *why* it expired) instead of finding nothing.
const BACKSTOP_SLACK: Duration = Duration::from_secs(30);

/// Sessions kept by [`MokaStore::default`].
pub const DEFAULT_MAX_SESSIONS: u64 = 100_000;

/// An in-memory store for a single process, bounded by a number of sessions.
///
/// - **Bounded**: at most `max_sessions` records (at least one). A new
///   session is never refused: room is made by dropping, of a few sessions
///   sampled at random, one past its deadline if there is one, else the
///   least recently used (the approximation of LRU that Redis uses). The
///   bound is shared out among the table's shards, so dropping starts when
///   the first shard fills, a few percent short of `max_sessions`.
/// - **Expiry backstop**: a record may be dropped 30 seconds after its idle
///   or absolute deadline. Every new session checks a few stored ones in
///   turn, so the memory of abandoned sessions comes back as new ones
///   arrive, without a sweeper task; [`run_pending_tasks`](Self::run_pending_tasks)
///   checks them all.
/// - **Atomic**: the table is split into shards, each behind a read-write
///   lock. Reads share it; every write (an update's read-modify-write, a
///   delete, the swap of a renewal) holds it, so concurrent requests
///   writing different keys keep all their writes, and a deleted session
///   stays deleted.
/// - **Small**: per session, the table keeps the id's hash, a pointer to
///   the record and 8 bytes of bookkeeping, in one shard's arrays. The
///   store was first built on the `moka` cache, hence its name; moka's
///   per-entry bookkeeping cost more memory and time than the session, so
///   the store now keeps its own table.
///
/// Clones share one table: two layers (say, before and after a key
/// rotation) can share a store.
///
/// ```
/// use tower_session_guard::{Key, MokaStore, SessionLayer};
///
/// let layer = SessionLayer::new(MokaStore::new(50_000), Key::generate());
/// ```
#[derive(Clone)]
pub struct MokaStore {
    records: Arc<Table>,
    users: Arc<UserIndex>,
}

/// The per-user index: user id → hashes of that user's sessions.
///
/// Entries leave it when their record leaves the table for any reason
/// (deletion, eviction, backstop), so it never holds more entries than
/// there are records.
///
/// Users are keyed by a keyed 64-bit hash of their id, not by a copy of
/// it. Two users whose ids share a hash would share one list; every
/// reader checks the record's own user id, so they would still see and
/// delete only their own sessions.
struct UserIndex {
    sessions: Mutex<HashMap<u64, Sessions, IdHashState>>,
    /// The index key of a user id: `key_of(&hasher, user_id)`.
    key_of: fn(&std::collections::hash_map::RandomState, &str) -> u64,
    /// Serialises logins and mass deletions per user (striped), so that the
    /// limit check and the write it allows happen as one step.
    locks: Vec<async_lock::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

/// One user's sessions: most users have one, kept inline.
enum Sessions {
    One(IdHash),
    Many(Vec<IdHash>),
}

impl Sessions {
    fn as_slice(&self) -> &[IdHash] {
        match self {
            Self::One(id) => std::slice::from_ref(id),
            Self::Many(ids) => ids,
        }
    }
}

impl UserIndex {
    fn new() -> Self {
        Self {
            // The keys are SipHash outputs already: the table only mixes them.
            sessions: Mutex::new(HashMap::with_hasher(IdHashState::new())),
            key_of: |hasher, user_id| hasher.hash_one(user_id),
            locks: (0..USER_LOCKS)
                .map(|_| async_lock::Mutex::new(()))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, user_id: &str) -> u64 {
        (self.key_of)(&self.hasher, user_id)
    }

    fn lock_for(&self, user_id: &str) -> &async_lock::Mutex<()> {
        // The modulo keeps the index in range; truncation is intended.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (self.key(user_id) % USER_LOCKS as u64) as usize;
        &self.locks[stripe]
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sessions, IdHashState>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, user_id: &str, id: IdHash) {
        let key = self.key(user_id);
        let mut map = self.map();
        match map.get_mut(&key) {
            None => {
                map.insert(key, Sessions::One(id));
            }
            Some(sessions) if sessions.as_slice().contains(&id) => {}
            Some(sessions @ Sessions::One(_)) => {
                let first = sessions.as_slice()[0];
                *sessions = Sessions::Many(vec![first, id]);
            }
            Some(Sessions::Many(ids)) => ids.push(id),
        }
    }

    fn remove(&self, user_id: &str, id: &IdHash) {
        let key = self.key(user_id);
        let mut map = self.map();
        let now_empty = match map.get_mut(&key) {
            None => false,
            Some(Sessions::One(only)) => only == id,
            Some(Sessions::Many(ids)) => {
                ids.retain(|h| h != id);
                ids.is_empty()
            }
        };
        if now_empty {
            map.remove(&key);
        }
    }

    fn hashes(&self, user_id: &str) -> Vec<IdHash> {
        let key = self.key(user_id);
        self.map()
            .get(&key)
            .map(|sessions| sessions.as_slice().to_vec())
            .unwrap_or_default()
    }

    fn users(&self) -> usize {
        self.map().len()
    }
}

impl MokaStore {
    /// A store holding at most `max_sessions` sessions (at least one).
    #[must_use]
    pub fn new(max_sessions: u64) -> Self {
        let users = Arc::new(UserIndex::new());
        let dropped_users = Arc::clone(&users);
        let records = Table::new(
            max_sessions,
            BACKSTOP_SLACK,
            // Evicted or past the backstop: out of the user's index too.
            // (Removals by the store itself update the index themselves.)
            Box::new(move |id, record| {
                if let Some(user) = &record.user_id {
                    dropped_users.remove(user, id);
                }
            }),
        );
        Self {
            records: Arc::new(records),
            users,
        }
    }

    /// The number of users with at least one indexed session.
    #[must_use]
    pub fn indexed_users(&self) -> usize {
        self.users.users()
    }

    /// The user's live sessions; dead index entries are dropped on the way.
    fn live_sessions(&self, user_id: &str, now: UnixMillis) -> Vec<Arc<SessionRecord>> {
        let mut live = Vec::new();
        for hash in self.users.hashes(user_id) {
            match self.records.get(&hash) {
                None => self.forget_if_gone(user_id, &hash),
                // Another user's, sharing this user's index key.
                Some(record) if record.user_id.as_deref() != Some(user_id) => {}
                Some(record) if is_live_session_of(&record, user_id, now) => live.push(record),
                // A forwarding entry leaves the index with its own removal.
                Some(record) if record.is_placeholder() => {}
                Some(_) => {
                    // Expired: the policy would refuse it anyway.
                    self.take(&hash, |r| now >= r.expires_at());
                }
            }
        }
        live
    }

    /// Inserts `record` unless its key is taken, atomically; returns whether
    /// it was inserted.
    ///
    /// The user's index entry is added under the table's lock, with the
    /// record: an eviction cannot slip in between and leave an entry for a
    /// record that is gone, nor can a reader see the entry before the record.
    fn insert_new(&self, record: Arc<SessionRecord>) -> bool {
        self.records.insert_new(record, |stored| {
            if let Some(user) = &stored.user_id {
                self.users.add(user, stored.id_hash);
            }
        })
    }

    /// Drops `id` from the user's index if the table holds nothing under
    /// it, checked under the table's lock: a session (re)inserted under
    /// `id` meanwhile keeps its entry.
    fn forget_if_gone(&self, user_id: &str, id: &IdHash) {
        self.records
            .if_absent(id, || self.users.remove(user_id, id));
    }

    /// The number of sessions held.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.records.len()
    }

    /// Whether the store holds no sessions.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every record past its backstop now, instead of as new
    /// sessions arrive.
    ///
    /// Not needed in production; useful in tests and memory measurements.
    pub async fn run_pending_tasks(&self) {
        self.records.sweep_all();
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
            .field("sessions", &self.records.len())
            .finish()
    }
}

#[async_trait]
impl SessionStore for MokaStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        Ok(self.insert_new(Arc::new(record.clone())))
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.records.get(id))
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let mut target = *id;
        // At most one hop: a forwarding entry points at a real session.
        for _ in 0..2 {
            let replaced = self.records.replace(&target, |current| {
                (!current.is_placeholder()).then(|| {
                    let mut record = SessionRecord::clone(current);
                    record.apply(change);
                    record
                })
            });
            match replaced {
                Replaced::Done { .. } => return Ok(true),
                Replaced::Kept(placeholder) => match placeholder.successor.as_deref() {
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
        loop {
            let previous = match self.records.get(old) {
                Some(previous) if !previous.is_placeholder() => previous,
                _ => return Ok(None),
            };
            let moved = Arc::new(regeneration.apply_to(&previous, new));
            if !self.insert_new(Arc::clone(&moved)) {
                return Err(StoreError::Unavailable(
                    "the new session id was already taken; nothing was changed".into(),
                ));
            }
            let swapped = self.records.replace(old, |current| {
                Arc::ptr_eq(current, &previous).then(|| regeneration.replacement(current, new))
            });
            match swapped {
                Replaced::Done { .. } => return Ok(Some(moved)),
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
            self.live_sessions(user_id, login.now)
        } else {
            Vec::new()
        };
        let Ok(evicted) = login.evictions(&live) else {
            return Ok(LoginOutcome::LimitReached);
        };

        // Move the previous session, if it is still a session.
        if let Some(previous_id) = &login.previous {
            let superseded = self.records.replace(previous_id, |current| {
                (!current.is_placeholder()).then(|| login.superseded(current))
            });
            if let Replaced::Done { previous } = superseded {
                let moved = Arc::new(login.moved(&previous));
                if !self.insert_new(Arc::clone(&moved)) {
                    self.records
                        .replace(previous_id, |_| Some(SessionRecord::clone(&previous)));
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
        Ok(self.live_sessions(user_id, now))
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
                } else {
                    self.forget_if_gone(user_id, &hash);
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
            let next = removed.successor.as_ref().map(|s| s.id_hash)?;
            if Some(&next) == keep {
                return None;
            }
            current = next;
        }
        None
    }

    /// Removes the record under `id` if `condition` holds for it, under
    /// the shard's write lock: an update cannot write it back afterwards.
    fn take(
        &self,
        id: &IdHash,
        condition: impl FnOnce(&SessionRecord) -> bool,
    ) -> Option<Arc<SessionRecord>> {
        self.records.take_if(id, condition, |taken| {
            if let Some(user) = &taken.user_id {
                self.users.remove(user, id);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::lifetime;
    use super::*;
    use crate::id::SessionId;
    use crate::record::{Deadlines, SessionData};

    #[test]
    fn the_backstop_lasts_to_the_earliest_deadline_plus_slack() {
        let mut record = test_record(None);
        assert_eq!(
            lifetime(&record, BACKSTOP_SLACK),
            Duration::from_secs(60) + BACKSTOP_SLACK
        );
        record.last_seen = 31_000;
        assert_eq!(
            lifetime(&record, BACKSTOP_SLACK),
            Duration::from_secs(30) + BACKSTOP_SLACK
        );
        record.idle_deadline = 10_000_000;
        assert_eq!(
            lifetime(&record, BACKSTOP_SLACK),
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

    #[tokio::test]
    async fn users_sharing_an_index_key_see_and_delete_only_their_own_sessions() {
        let mut users = UserIndex::new();
        // Every user id hashes alike: one list for all.
        users.key_of = |_, _| 42;
        let store = MokaStore::new(100);
        let store = MokaStore {
            users: Arc::new(users),
            ..store
        };
        let (a, b) = (test_record(Some("a")), test_record(Some("b")));
        store.create(&a).await.unwrap();
        store.create(&b).await.unwrap();
        assert_eq!(store.indexed_users(), 1, "the keys were meant to collide");

        let listed = store.list_user("a", 2_000).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id_hash, a.id_hash);
        assert_eq!(store.delete_user("a", None).await.unwrap(), vec![a.id_hash]);
        assert!(
            store.load(&b.id_hash).await.unwrap().is_some(),
            "b's session was deleted"
        );
        assert_eq!(store.list_user("b", 2_000).await.unwrap().len(), 1);
    }

    #[test]
    fn evicted_sessions_leave_the_user_index_even_under_concurrent_inserts() {
        let store = MokaStore::new(1);
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000 {
                        assert!(store.insert_new(Arc::new(test_record(Some(&format!(
                            "user-{worker}-{n}"
                        ))))));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.indexed_users(),
            1,
            "index entries outlived their sessions"
        );
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
