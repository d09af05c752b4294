//! The session protocol, written once over the store primitives.
//!
//! Every store, this crate's or an application's, implements only the
//! primitives of [`SessionStore`]: each atomic on one key and on nothing
//! more. Loading through a renewal's forward, creating, committing a delta,
//! logging in under a limit, regenerating and renewing ids, logging out
//! (here or everywhere) and revoking are written here, once, in an order
//! that is safe when no two primitives run as one step:
//!
//! 1. **A successor exists before anything points to it.** A move (login,
//!    `regenerate()`, renewal) creates the new session first, then indexes
//!    it, and only then replaces the old session with its placeholder (a
//!    renewal's [`Forward`] or a [`Superseded`] marker). A request that
//!    finds a placeholder therefore always finds its successor, or finds it
//!    already gone.
//! 2. **A move only replaces the version it copied.** The replacement is
//!    conditional on the old session's version: a write that landed in
//!    between makes it fail, and the move starts again from the new
//!    version, so no write is lost. A move that finds the old id no longer a
//!    session (a concurrent renewal won, a logout removed it) deletes its
//!    copy and reports that the session is gone: of concurrent renewals
//!    exactly one wins, and a logout is never undone.
//! 3. **An index entry may be stale, but is never the only truth.** A
//!    session is created before it is indexed and removed before it leaves
//!    the index. Readers load every indexed id and check it (a session, of
//!    this user, not expired), and drop the entries that fail.
//! 4. **A removal follows the session wherever it moved.** Logging out,
//!    revoking, evicting and expiring delete the entry under the id and, if
//!    it was a placeholder, the session it leads to (a renewal's forward
//!    always; a login's or regeneration's marker only to a session of the
//!    same user), so a session moved a moment ago cannot escape.
//! 5. **Counting a user's sessions and acting on the count is one step.**
//!    A login under a session limit, and "log out everywhere", hold the
//!    store's per-user lock. Renewals need no lock: they move a session,
//!    they never add one. (While a session is moving both of its ids may
//!    count, so a login at that instant may evict or refuse one session too
//!    many, never one too few.)
//! 6. **A write to a moved session follows it.** A commit whose session was
//!    renewed while the request ran lands on the successor; one whose
//!    session was replaced by a login or a regeneration is not saved, and
//!    says so.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::join_all;

use crate::clock::UnixMillis;
use crate::id::{IdHash, SessionId};
use crate::policy::{self, SessionLimit};
use crate::record::{Change, Entry, Forward, SessionData, SessionRecord, Superseded};
use crate::store::{SessionStore, StoreError};

/// How long the marker left under an id replaced by a login or a
/// regeneration lasts: requests that were in flight with the old id
/// meanwhile get no session but leave the client's (new) cookie alone.
pub(crate) const SUPERSEDED_FOR_MS: UnixMillis = 30_000;

/// How many fresh ids to try when a store reports a collision (it never
/// should: ids are 128 random bits).
const CREATE_ATTEMPTS: usize = 3;

/// How often a move starts again after a write landed on the old session.
const MOVE_ATTEMPTS: usize = 8;

/// Placeholders followed by a removal, at most.
const MAX_HOPS: usize = 4;

/// Passes over a user's index by "log out everywhere", at most.
const MAX_PASSES: usize = 8;

/// What a token's id leads to.
pub(crate) enum Found {
    /// A session; `id` is the successor's when a renewal's forward was followed.
    Session {
        id: SessionId,
        record: Arc<SessionRecord>,
        forwarded: bool,
    },
    /// The id was replaced by a login or a regeneration moments ago: the
    /// request was in flight, and the client probably holds the new id.
    InFlight,
    /// A placeholder that leads nowhere any more.
    Gone,
    /// A renewed id presented after its grace period ended, while its
    /// successor may still be live: the token was probably copied before
    /// the renewal, and one of its two holders is not the user.
    Reused {
        /// The id the renewal moved the session to.
        successor: IdHash,
    },
    /// Nothing is stored under the id.
    Missing,
}

/// Loads the session `id` names, following a live renewal's forward.
pub(crate) async fn load(
    store: &dyn SessionStore,
    id: &SessionId,
    now: UnixMillis,
) -> Result<Found, StoreError> {
    let forward = match store.load(&id.hash()).await? {
        None => return Ok(Found::Missing),
        Some(Entry::Session(record)) => {
            return Ok(Found::Session {
                id: id.clone(),
                record,
                forwarded: false,
            })
        }
        Some(Entry::Superseded(marker)) => {
            return Ok(if now < marker.until {
                Found::InFlight
            } else {
                Found::Gone
            })
        }
        Some(Entry::Forward(forward)) => forward,
    };
    let next = id.unseal(&forward.sealed_id);
    if next.hash() != forward.successor {
        return Ok(Found::Gone);
    }
    if now >= forward.until {
        return Ok(Found::Reused {
            successor: forward.successor,
        });
    }
    Ok(match store.load(&forward.successor).await? {
        Some(Entry::Session(record)) => Found::Session {
            id: next,
            record,
            forwarded: true,
        },
        // Renewed, then replaced by a login or a regeneration moments ago:
        // the client most likely holds the newest id.
        Some(Entry::Superseded(marker)) if now < marker.until => Found::InFlight,
        _ => Found::Gone,
    })
}

/// Stores `record` as a new session under a fresh id (drawn again on the
/// never expected collision) and indexes it if it is signed in.
pub(crate) async fn create(
    store: &dyn SessionStore,
    record: SessionRecord,
) -> Result<(SessionId, SessionRecord), StoreError> {
    create_as(store, record, None).await
}

/// Like [`create`], trying `planned` first: an id drawn earlier in the
/// request, whose CSRF token a page already carries. A new session no one
/// holds yet, so no listing can see it between attempts.
pub(crate) async fn create_as(
    store: &dyn SessionStore,
    mut record: SessionRecord,
    mut planned: Option<SessionId>,
) -> Result<(SessionId, SessionRecord), StoreError> {
    for _ in 0..CREATE_ATTEMPTS {
        let id = planned.take().unwrap_or_else(SessionId::generate);
        record.id_hash = id.hash();
        if store.create(&record).await? {
            if let Some(user) = &record.user_id {
                store
                    .index_add(user, &record.id_hash, record.absolute_deadline)
                    .await?;
            }
            return Ok((id, record));
        }
    }
    Err(StoreError::IdCollision)
}

/// Applies what a request changed to its session. A session renewed while
/// the request ran gets the change under its new id. Returns `false` when
/// the session is gone or was replaced by a login or a regeneration.
pub(crate) async fn commit(
    store: &dyn SessionStore,
    id: &IdHash,
    change: &Change,
) -> Result<bool, StoreError> {
    if store.update(id, change).await?.is_some() {
        return Ok(true);
    }
    match store.load(id).await? {
        Some(Entry::Forward(forward)) => {
            Ok(store.update(&forward.successor, change).await?.is_some())
        }
        _ => Ok(false),
    }
}

/// Gives the session `old` a new id, applying `change` on the way.
///
/// With a `grace` period (a renewal), the old id forwards to the new one
/// until `now + grace`; without, it is dead at once (a short-lived
/// superseded marker keeps in-flight requests from clearing the new
/// cookie). `None` when `old` is no longer a session (a concurrent renewal
/// won, or it was removed).
pub(crate) async fn regenerate(
    store: &dyn SessionStore,
    old: &SessionId,
    change: &Change,
    now: UnixMillis,
    grace: Option<UnixMillis>,
) -> Result<Option<(SessionId, Arc<SessionRecord>)>, StoreError> {
    move_with(store, old, change, now, grace.map(|grace| (grace, 0))).await
}

/// A renewal: like [`regenerate`] with a grace period, and the forward
/// kept `watch` longer (never past the session's absolute deadline), so
/// that the old id presented after its grace is recognised as reuse of a
/// renewed token ([`Found::Reused`]).
pub(crate) async fn renew(
    store: &dyn SessionStore,
    old: &SessionId,
    change: &Change,
    now: UnixMillis,
    grace: UnixMillis,
    watch: UnixMillis,
) -> Result<Option<(SessionId, Arc<SessionRecord>)>, StoreError> {
    move_with(store, old, change, now, Some((grace, watch))).await
}

async fn move_with(
    store: &dyn SessionStore,
    old: &SessionId,
    change: &Change,
    now: UnixMillis,
    grace: Option<(UnixMillis, UnixMillis)>,
) -> Result<Option<(SessionId, Arc<SessionRecord>)>, StoreError> {
    let grace = grace.filter(|&(grace, _)| grace > 0);
    move_session(store, &old.hash(), false, |current, new| {
        let mut record = current.clone();
        record.apply(change);
        record.id_hash = new.hash();
        record.id_issued_at = now;
        let left = match grace {
            Some((grace, watch)) => {
                let until = now.saturating_add(grace);
                Entry::Forward(Forward {
                    successor: new.hash(),
                    sealed_id: old.seal(new),
                    until,
                    kept_until: until
                        .saturating_add(watch)
                        .min(record.absolute_deadline)
                        .max(until),
                })
            }
            None => superseded_by(current, &new.hash(), now),
        };
        (record, left)
    })
    .await
}

/// A login, as the session handle asks for it.
pub(crate) struct Login<'a> {
    /// The stored session the request arrived with, if any.
    pub(crate) previous: Option<IdHash>,
    /// The session to create when there is no previous one: the user, the
    /// client (its `id_hash` is replaced by the new id's). Its `user_id`,
    /// `id_issued_at`, deadlines, `ip`, `user_agent` and `binding` also go
    /// to a moved session.
    pub(crate) record: SessionRecord,
    /// The request's pending writes, applied to a moved session.
    pub(crate) change: &'a Change,
    /// The user's session limit, if any.
    pub(crate) limit: Option<SessionLimit>,
    pub(crate) now: UnixMillis,
}

/// What a login did.
pub(crate) enum LoginOutcome {
    LoggedIn {
        /// The new id.
        id: SessionId,
        record: Arc<SessionRecord>,
        /// The previous session was moved (`false`: a new one was created).
        moved: bool,
        /// Sessions removed to respect the limit.
        evicted: Vec<Arc<SessionRecord>>,
        /// How many live sessions the user holds now, this one included,
        /// as the limit's check counted them under the user's lock; `None`
        /// without a limit (nothing was counted).
        held: Option<usize>,
    },
    /// The limit is full and refuses the login; nothing changed.
    LimitReached,
}

/// Signs a user in under a new id: applies the limit, moves the previous
/// session (or creates one), indexes it, and evicts what the limit says,
/// all under the user's lock.
pub(crate) async fn login(
    store: &dyn SessionStore,
    login: Login<'_>,
) -> Result<LoginOutcome, StoreError> {
    let user = login.record.user_id.clone().unwrap_or_default();
    let lock = store.lock_user(&user).await?;
    let outcome = login_locked(store, &login, &user).await;
    lock.release().await;
    outcome
}

async fn login_locked(
    store: &dyn SessionStore,
    login: &Login<'_>,
    user: &str,
) -> Result<LoginOutcome, StoreError> {
    // The user's other live sessions, and those to evict among them.
    let (others, victims) = match &login.limit {
        None => (None, Vec::new()),
        Some(limit) => {
            let live = sessions_of(store, user, login.now).await?;
            let others: Vec<&SessionRecord> = live
                .iter()
                .map(|record| &**record)
                .filter(|record| Some(record.id_hash) != login.previous)
                .collect();
            match policy::sessions_to_evict(&others, limit) {
                Ok(victims) => (Some(others.len()), victims),
                Err(policy::LimitReached) => return Ok(LoginOutcome::LimitReached),
            }
        }
    };

    let mut moved = None;
    if let Some(previous) = &login.previous {
        // A renewal running meanwhile may have moved the previous session:
        // the login follows it, so that the renewed copy cannot outlive the
        // count the limit was checked against.
        moved = move_session(store, previous, true, |current, new| {
            (
                moved_by(login, current, new),
                superseded_by(current, &new.hash(), login.now),
            )
        })
        .await?;
    }
    let (id, record, was_moved) = match moved {
        Some((id, record)) => (id, record, true),
        None => {
            let (id, record) = create(store, login.record.clone()).await?;
            (id, Arc::new(record), false)
        }
    };

    let mut evicted = Vec::new();
    for victim in &victims {
        let owner = Owner::Known(Some(user));
        if let Some(removed) = remove_following(store, victim, owner, Some(&id.hash())).await? {
            evicted.push(removed);
        }
    }
    Ok(LoginOutcome::LoggedIn {
        id,
        record,
        moved: was_moved,
        evicted,
        // The others, less those evicted, and this one.
        held: others.map(|others| others.saturating_sub(victims.len()) + 1),
    })
}

/// The previous session as a login moves it. A session signed in as
/// another user keeps none of that user's data: only the request's own
/// writes carry over.
fn moved_by(login: &Login<'_>, previous: &SessionRecord, new: &SessionId) -> SessionRecord {
    let mut moved = previous.clone();
    if previous.user_id.is_some() && previous.user_id != login.record.user_id {
        moved.data = SessionData::default();
    }
    moved.apply(login.change);
    let template = &login.record;
    moved.id_hash = new.hash();
    moved.user_id.clone_from(&template.user_id);
    moved.id_issued_at = template.id_issued_at;
    // A sign-in starts the idle and absolute windows afresh: the absolute
    // timeout counts from authentication, not from the first anonymous visit.
    moved.last_seen = moved.last_seen.max(template.last_seen);
    moved.idle_deadline = template.idle_deadline;
    moved.absolute_deadline = template.absolute_deadline;
    moved.ip = template.ip;
    moved.user_agent.clone_from(&template.user_agent);
    moved.binding.clone_from(&template.binding);
    moved.sign_in.clone_from(&template.sign_in);
    moved
}

/// The marker left under a moved session's old id.
fn superseded_by(previous: &SessionRecord, successor: &IdHash, now: UnixMillis) -> Entry {
    Entry::Superseded(Superseded {
        successor: *successor,
        until: now.saturating_add(SUPERSEDED_FOR_MS),
        user_id: previous.user_id.clone(),
    })
}

/// Moves the session under `old` to a new id, as `build` makes its record
/// and the entry to leave under `old` from the current session and the new
/// id (see rules 1 and 2 in the module docs). Each attempt draws a new id,
/// so a reader that saw an attempt's copy vanish can never mistake a later
/// attempt's for it. With `follow_forwards`, a session renewed meanwhile is
/// moved from where the renewal put it. `None` when `old` is no longer a
/// session.
async fn move_session(
    store: &dyn SessionStore,
    old: &IdHash,
    follow_forwards: bool,
    build: impl Fn(&SessionRecord, &SessionId) -> (SessionRecord, Entry),
) -> Result<Option<(SessionId, Arc<SessionRecord>)>, StoreError> {
    let mut old = *old;
    for _ in 0..MOVE_ATTEMPTS {
        let current = match store.load(&old).await? {
            Some(Entry::Session(current)) => current,
            Some(Entry::Forward(forward)) if follow_forwards => {
                old = forward.successor;
                continue;
            }
            _ => return Ok(None),
        };
        let new = SessionId::generate();
        let (moved, left) = build(&current, &new);
        if !store.create(&moved).await? {
            return Err(StoreError::IdCollision);
        }
        if let Some(user) = &moved.user_id {
            store
                .index_add(user, &moved.id_hash, moved.absolute_deadline)
                .await?;
        }
        if store.replace(&old, current.version, Some(&left)).await? {
            if let Some(user) = &current.user_id {
                store.index_remove(user, &[old]).await?;
            }
            return Ok(Some((new, Arc::new(moved))));
        }
        // Written meanwhile (copy again), or no longer a session (the next
        // load says so). Nobody knows the new id yet: take it back.
        store.delete(&moved.id_hash).await?;
        if let Some(user) = &moved.user_id {
            store.index_remove(user, &[moved.id_hash]).await?;
        }
    }
    Ok(None)
}

/// Whose session a removal means, to decide which moves it follows.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// Unknown: a renewal's forward is followed (a renewal never changes
    /// the user), and a login's or regeneration's marker to a session of
    /// the user the marker names.
    Unknown,
    /// The session's user (`None`: anonymous): a login's or regeneration's
    /// marker is followed too, to a session of that same user.
    Known(Option<&'a str>),
}

/// Removes the session under `id`, following it if it moved (rule 4),
/// but never to `keep`. Returns the session removed, if one was.
async fn remove_following(
    store: &dyn SessionStore,
    id: &IdHash,
    owner: Owner<'_>,
    keep: Option<&IdHash>,
) -> Result<Option<Arc<SessionRecord>>, StoreError> {
    let mut current = *id;
    // The user a followed session must have: `None` while any will do.
    let mut owner: Option<Option<String>> = match owner {
        Owner::Unknown => None,
        Owner::Known(user) => Some(user.map(str::to_owned)),
    };
    for hop in 0..MAX_HOPS {
        if let (Some(user), true) = (&owner, hop > 0) {
            // Only a session of the same user is followed to.
            match store.load(&current).await? {
                Some(Entry::Session(record)) if record.user_id != *user => return Ok(None),
                None => return Ok(None),
                Some(_) => {}
            }
        }
        let next = match store.delete(&current).await? {
            None => return Ok(None),
            Some(Entry::Session(record)) => {
                if let Some(user) = &record.user_id {
                    store.index_remove(user, &[current]).await?;
                }
                return Ok(Some(record));
            }
            Some(Entry::Forward(forward)) => forward.successor,
            Some(Entry::Superseded(marker)) => {
                if owner.is_none() {
                    // Followed only into the session of the user it had.
                    match marker.user_id {
                        Some(user) => owner = Some(Some(user)),
                        None => return Ok(None),
                    }
                }
                marker.successor
            }
        };
        if Some(&next) == keep {
            return Ok(None);
        }
        current = next;
    }
    Ok(None)
}

/// Signs a session out: removes it, and the session it moved to if a
/// concurrent request moved it (a renewal, a regeneration, a login of the
/// same user). `user` is the session's user as the request loaded it.
pub(crate) async fn logout(
    store: &dyn SessionStore,
    id: &IdHash,
    user: Option<&str>,
) -> Result<Option<Arc<SessionRecord>>, StoreError> {
    remove_following(store, id, Owner::Known(user), None).await
}

/// Removes the session under `id` (from an admin handle), following a
/// renewal's forward, and a regeneration's or login's marker to the
/// session of the same user. Returns the session removed, if one was.
pub(crate) async fn revoke(
    store: &dyn SessionStore,
    id: &IdHash,
) -> Result<Option<Arc<SessionRecord>>, StoreError> {
    remove_following(store, id, Owner::Unknown, None).await
}

/// Removes every session of `user` but `keep`, under the user's lock, and
/// returns the sessions removed.
pub(crate) async fn logout_user(
    store: &dyn SessionStore,
    user: &str,
    keep: Option<&IdHash>,
    now: UnixMillis,
) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
    let lock = store.lock_user(user).await?;
    let removed = logout_user_locked(store, user, keep, now).await;
    lock.release().await;
    removed
}

async fn logout_user_locked(
    store: &dyn SessionStore,
    user: &str,
    keep: Option<&IdHash>,
    now: UnixMillis,
) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
    let mut removed = Vec::new();
    let mut seen = HashSet::new();
    // A renewal running meanwhile indexes its new id before the old one
    // forwards to it: pass again until a pass finds nothing new.
    for _ in 0..MAX_PASSES {
        let pending: Vec<IdHash> = store
            .index_members(user, now)
            .await?
            .into_iter()
            .filter(|id| Some(id) != keep && seen.insert(*id))
            .collect();
        if pending.is_empty() {
            break;
        }
        // Leave alone the sessions of another user sharing this user's
        // index by chance (a store may key its index by a hash).
        let entries = join_all(pending.iter().map(|id| store.load(id))).await;
        let mut mine = Vec::with_capacity(pending.len());
        for (id, entry) in pending.iter().zip(entries) {
            match entry? {
                Some(Entry::Session(record)) if record.user_id.as_deref() != Some(user) => {}
                _ => mine.push(*id),
            }
        }
        let owner = Owner::Known(Some(user));
        let results = join_all(
            mine.iter()
                .map(|id| remove_following(store, id, owner, keep)),
        )
        .await;
        for result in results {
            if let Some(record) = result? {
                seen.insert(record.id_hash);
                removed.push(record);
            }
        }
        store.index_remove(user, &mine).await?;
    }
    Ok(removed)
}

/// The user's live sessions at `now`, read through the index; entries
/// that name no live session of the user are dropped from it (rule 3).
pub(crate) async fn sessions_of(
    store: &dyn SessionStore,
    user: &str,
    now: UnixMillis,
) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
    let members = store.index_members(user, now).await?;
    let entries = join_all(members.iter().map(|id| store.load(id))).await;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (id, entry) in members.iter().zip(entries) {
        match entry? {
            Some(Entry::Session(record)) if record.user_id.as_deref() == Some(user) => {
                if now < record.expires_at() {
                    live.push(record);
                } else {
                    dead.push(*id);
                }
            }
            // Another user's session, under an index key shared by chance.
            Some(Entry::Session(_)) => {}
            // Gone, or moved: the successor has its own entry.
            None | Some(Entry::Forward(_) | Entry::Superseded(_)) => dead.push(*id),
        }
    }
    if !dead.is_empty() {
        store.index_remove(user, &dead).await?;
    }
    Ok(live)
}

#[cfg(test)]
mod tests;
