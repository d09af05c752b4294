//! The store contract as a reusable test suite (feature `test-util`).
//!
//! Every store in this crate passes it, and so should yours:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower_session_guard::store::{conformance, MokaStore};
//!
//! conformance::run(&MokaStore::new(1_000)).await;
//! # }
//! ```
//!
//! Each check uses fresh random ids, so the suite can run against a shared
//! backend without cleaning it first. A failed check panics with a message
//! naming the rule that was broken.

use serde_json::json;

use std::sync::Arc;

use super::{Forward, Login, LoginOutcome, Regeneration, SessionStore};
use crate::clock::{Clock, SystemClock};
use crate::id::{IdHash, SessionId};
use crate::policy::{OnLimit, SessionLimit};
use crate::record::{
    Binding, Change, Deadlines, SeenLocation, SeenNetwork, SessionData, SessionRecord, Touch,
};

/// Runs every check of the store contract against `store`.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn run<S: SessionStore + ?Sized>(store: &S) {
    create_then_load_round_trips(store).await;
    create_refuses_to_overwrite(store).await;
    load_of_unknown_id_is_none(store).await;
    update_applies_the_delta(store).await;
    update_of_unknown_id_writes_nothing(store).await;
    concurrent_updates_keep_every_key(store).await;
    touches_move_deadlines_forward_only(store).await;
    delete_removes_and_reports(store).await;
    regenerate_moves_the_record(store).await;
    regenerate_of_unknown_id_writes_nothing(store).await;
    renewal_leaves_a_forward_that_routes_updates(store).await;
    delete_through_a_forward_ends_the_renewed_session(store).await;
    only_one_of_concurrent_renewals_wins(store).await;
    login_moves_the_previous_session_into_the_index(store).await;
    login_without_a_previous_session_creates_one(store).await;
    login_evicts_the_least_recently_used_at_the_limit(store).await;
    login_rejected_at_the_limit_changes_nothing(store).await;
    concurrent_logins_never_overshoot_the_limit(store).await;
    list_user_skips_dead_and_foreign_sessions(store).await;
    delete_user_keeps_the_one_asked_for(store).await;
}

/// After a login or a regeneration, the old id holds only a short-lived
/// superseded marker: no data, no successor, and updates do not land.
async fn assert_superseded<S: SessionStore + ?Sized>(
    store: &S,
    old: &IdHash,
    at: crate::clock::UnixMillis,
    what: &str,
) {
    let marker = must("load", store.load(old).await).unwrap_or_else(|| {
        panic!("store contract: after {what} the old id must hold a superseded marker")
    });
    assert!(
        marker.superseded && marker.successor.is_none() && marker.data.is_empty(),
        "store contract: after {what} the old id must be a superseded marker without data, got {marker:?}"
    );
    assert_eq!(
        marker.idle_deadline,
        (at + super::SUPERSEDED_FOR_MS).min(marker.absolute_deadline),
        "store contract: the superseded marker lasts SUPERSEDED_FOR_MS"
    );
    let change = Change {
        set: vec![("late".into(), json!(1))],
        ..Change::default()
    };
    assert!(
        !must("update", store.update(old, &change).await),
        "store contract: an update of a superseded id must not land"
    );
}

/// A renewal of `record` from `old` to `new` with a 10-second grace period.
fn renewal(record: &SessionRecord, old: &SessionId, new: &SessionId) -> Regeneration {
    Regeneration {
        forward: Some(Forward {
            sealed_id: old.seal(new),
            until: record.created_at + 10_000,
        }),
        issued_at: record.created_at + 1,
        ..Regeneration::default()
    }
}

/// A fresh, unique user id for one check.
fn user() -> String {
    format!("user-{}", SessionId::generate().fingerprint())
}

fn login_for(user_id: &str, previous: Option<IdHash>, limit: Option<SessionLimit>) -> Login {
    let record = sample_record(Some(user_id));
    Login {
        previous,
        now: record.created_at,
        record,
        change: Change::default(),
        limit,
    }
}

async fn logged_in<S: SessionStore + ?Sized>(
    store: &S,
    login: &Login,
) -> (Arc<SessionRecord>, bool, Vec<IdHash>) {
    match must("login", store.login(login).await) {
        LoginOutcome::LoggedIn {
            record,
            moved,
            evicted,
        } => (record, moved, evicted),
        other => panic!("store contract: login under the limit must succeed, got {other:?}"),
    }
}

async fn renewal_leaves_a_forward_that_routes_updates<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(Some(&user()));
    must("create", store.create(&record).await);
    let old_id = SessionId::generate();
    let new_id = SessionId::generate();
    let new = new_id.hash();
    let regeneration = renewal(&record, &old_id, &new_id);
    must(
        "regenerate",
        store.regenerate(&record.id_hash, &new, &regeneration).await,
    )
    .expect("store contract: renewal of a stored id must move it");
    let forward = must("load", store.load(&record.id_hash).await)
        .expect("store contract: a renewal with grace must leave a forwarding entry");
    let successor = forward
        .successor
        .as_deref()
        .expect("store contract: the forwarding entry must name its successor");
    assert_eq!(
        successor.id_hash, new,
        "store contract: the forward must point at the new id"
    );
    assert_eq!(
        old_id.unseal(&successor.sealed_id),
        new_id,
        "store contract: the sealed id must round trip"
    );
    assert!(
        forward.data.is_empty(),
        "store contract: a forwarding entry holds no data"
    );
    assert_eq!(
        forward.idle_deadline,
        record.created_at + 10_000,
        "store contract: the forward ends with the grace period"
    );

    let change = Change {
        set: vec![("late".into(), json!(true))],
        ..Change::default()
    };
    assert!(
        must("update", store.update(&record.id_hash, &change).await),
        "store contract: an update through a forwarding entry must succeed"
    );
    let moved = must("load", store.load(&new).await).unwrap();
    assert_eq!(
        moved.data.get("late"),
        Some(&json!(true)),
        "store contract: updates via the old id must reach the successor"
    );
    assert!(
        must(
            "regenerate",
            store
                .regenerate(
                    &record.id_hash,
                    &SessionId::generate().hash(),
                    &regeneration
                )
                .await
        )
        .is_none(),
        "store contract: a forwarding entry must not be renewed again"
    );
    store.delete(&record.id_hash).await.ok();
    store.delete(&new).await.ok();
}

async fn delete_through_a_forward_ends_the_renewed_session<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(Some(&user()));
    must("create", store.create(&record).await);
    let old_id = SessionId::generate();
    let new_id = SessionId::generate();
    let renewal = renewal(&record, &old_id, &new_id);
    must(
        "regenerate",
        store
            .regenerate(&record.id_hash, &new_id.hash(), &renewal)
            .await,
    )
    .expect("store contract: renewal of a stored id must move it");
    assert!(
        must("delete", store.delete(&record.id_hash).await),
        "store contract: deleting a renewed id must report the session it forwarded to as deleted"
    );
    assert!(
        must("load", store.load(&new_id.hash()).await).is_none(),
        "store contract: deleting through a forwarding entry must delete the renewed session too"
    );

    // A superseded marker points nowhere: deleting it ends nothing else.
    let other = sample_record(None);
    must("create", store.create(&other).await);
    let moved = SessionId::generate().hash();
    let regeneration = Regeneration {
        issued_at: other.created_at + 1,
        ..Regeneration::default()
    };
    must(
        "regenerate",
        store
            .regenerate(&other.id_hash, &moved, &regeneration)
            .await,
    );
    assert!(
        !must("delete", store.delete(&other.id_hash).await),
        "store contract: deleting a superseded marker deletes no session"
    );
    assert!(
        must("load", store.load(&moved).await).is_some(),
        "store contract: deleting a superseded marker must leave the new session alone"
    );
    store.delete(&moved).await.ok();
}

async fn only_one_of_concurrent_renewals_wins<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    let old_id = SessionId::generate();
    let attempts: Vec<(IdHash, Regeneration)> = (0..16)
        .map(|_| {
            let new_id = SessionId::generate();
            (new_id.hash(), renewal(&record, &old_id, &new_id))
        })
        .collect();
    let results = join_all(
        attempts
            .iter()
            .map(|(new, r)| store.regenerate(&record.id_hash, new, r)),
    )
    .await;
    let winners: Vec<_> = results
        .into_iter()
        .filter_map(|r| must("regenerate", r))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "store contract: exactly one of concurrent renewals must win"
    );
    store.delete(&record.id_hash).await.ok();
    store.delete(&winners[0].id_hash).await.ok();
}

async fn login_moves_the_previous_session_into_the_index<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let anonymous = sample_record(None);
    must("create", store.create(&anonymous).await);
    let mut login = login_for(&user_id, Some(anonymous.id_hash), None);
    login.change.set.push(("cart".into(), json!(3)));
    let (record, moved, evicted) = logged_in(store, &login).await;
    assert!(
        moved,
        "store contract: login must move an existing previous session"
    );
    assert!(evicted.is_empty());
    assert_eq!(
        record.id_hash, login.record.id_hash,
        "store contract: the session moves to the new id"
    );
    assert_eq!(
        record.user_id.as_deref(),
        Some(&*user_id),
        "store contract: login sets the user"
    );
    assert_eq!(
        record.data.get("greeting"),
        Some(&json!("hello")),
        "store contract: login keeps data"
    );
    assert_eq!(
        record.data.get("cart"),
        Some(&json!(3)),
        "store contract: login applies pending writes"
    );
    assert_superseded(store, &anonymous.id_hash, login.now, "login").await;
    let listed = must("list_user", store.list_user(&user_id, login.now).await);
    assert_eq!(
        listed.len(),
        1,
        "store contract: the new session must be in the user's index"
    );
    assert_eq!(listed[0].id_hash, record.id_hash);
    must("delete_user", store.delete_user(&user_id, None).await);
}

async fn login_without_a_previous_session_creates_one<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let gone = SessionId::generate().hash();
    let login = login_for(&user_id, Some(gone), None);
    let (record, moved, _) = logged_in(store, &login).await;
    assert!(
        !moved,
        "store contract: login whose previous session is gone must create one"
    );
    assert_eq!(
        *record, login.record,
        "store contract: the created session is the login's record"
    );
    must("delete_user", store.delete_user(&user_id, None).await);
}

async fn login_evicts_the_least_recently_used_at_the_limit<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let limit = SessionLimit {
        max: 2,
        on_limit: OnLimit::EvictLeastRecent,
    };
    let first = login_for(&user_id, None, Some(limit));
    logged_in(store, &first).await;
    let mut second = login_for(&user_id, None, Some(limit));
    second.record.last_seen += 10;
    logged_in(store, &second).await;
    // The first session is used again later than the second.
    let touch = Change {
        touch: Some(Touch {
            last_seen: first.record.last_seen + 20,
            idle_deadline: first.record.idle_deadline + 20,
        }),
        ..Change::default()
    };
    must("update", store.update(&first.record.id_hash, &touch).await);
    let third = login_for(&user_id, None, Some(limit));
    let (_, _, evicted) = logged_in(store, &third).await;
    assert_eq!(
        evicted,
        vec![second.record.id_hash],
        "store contract: the least recently used session must be evicted"
    );
    assert!(
        must("load", store.load(&second.record.id_hash).await).is_none(),
        "store contract: an evicted session must be deleted"
    );
    let listed = must("list_user", store.list_user(&user_id, third.now).await);
    assert_eq!(
        listed.len(),
        2,
        "store contract: the user must be back at the limit"
    );
    must("delete_user", store.delete_user(&user_id, None).await);
}

async fn login_rejected_at_the_limit_changes_nothing<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let limit = SessionLimit {
        max: 1,
        on_limit: OnLimit::RejectLogin,
    };
    logged_in(store, &login_for(&user_id, None, Some(limit))).await;
    let anonymous = sample_record(None);
    must("create", store.create(&anonymous).await);
    let refused = login_for(&user_id, Some(anonymous.id_hash), Some(limit));
    assert_eq!(
        must("login", store.login(&refused).await),
        LoginOutcome::LimitReached,
        "store contract: a full limit with RejectLogin must refuse the login"
    );
    assert!(
        must("load", store.load(&anonymous.id_hash).await).is_some(),
        "store contract: a refused login must leave the previous session alone"
    );
    assert!(
        must("load", store.load(&refused.record.id_hash).await).is_none(),
        "store contract: a refused login must not create the new session"
    );
    store.delete(&anonymous.id_hash).await.ok();
    must("delete_user", store.delete_user(&user_id, None).await);
}

async fn concurrent_logins_never_overshoot_the_limit<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let limit = SessionLimit {
        max: 3,
        on_limit: OnLimit::EvictLeastRecent,
    };
    let logins: Vec<Login> = (0..24)
        .map(|_| login_for(&user_id, None, Some(limit)))
        .collect();
    for result in join_all(logins.iter().map(|login| store.login(login))).await {
        must("login", result);
    }
    let now = logins[0].now;
    let live = must("list_user", store.list_user(&user_id, now).await);
    assert_eq!(
        live.len(),
        3,
        "store contract: concurrent logins must not overshoot the limit"
    );
    let mut loadable = 0;
    for login in &logins {
        if must("load", store.load(&login.record.id_hash).await).is_some() {
            loadable += 1;
        }
    }
    assert_eq!(
        loadable, 3,
        "store contract: evicted sessions must be gone from the store too"
    );
    must("delete_user", store.delete_user(&user_id, None).await);
}

async fn list_user_skips_dead_and_foreign_sessions<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let live = login_for(&user_id, None, None);
    logged_in(store, &live).await;
    let mut expired = login_for(&user_id, None, None);
    expired.record.idle_deadline = live.now + 5;
    logged_in(store, &expired).await;
    let deleted = login_for(&user_id, None, None);
    logged_in(store, &deleted).await;
    must("delete", store.delete(&deleted.record.id_hash).await);
    logged_in(store, &login_for(&user(), None, None)).await;

    let listed = must("list_user", store.list_user(&user_id, live.now + 10).await);
    let hashes: Vec<IdHash> = listed.iter().map(|r| r.id_hash).collect();
    assert_eq!(
        hashes,
        vec![live.record.id_hash],
        "store contract: list_user must return only live sessions of that user"
    );
    assert!(
        must("list_user", store.list_user(&user(), live.now).await).is_empty(),
        "store contract: an unknown user has no sessions"
    );
    must("delete_user", store.delete_user(&user_id, None).await);
}

async fn delete_user_keeps_the_one_asked_for<S: SessionStore + ?Sized>(store: &S) {
    let user_id = user();
    let logins: Vec<Login> = (0..3).map(|_| login_for(&user_id, None, None)).collect();
    for login in &logins {
        logged_in(store, login).await;
    }
    let keep = logins[1].record.id_hash;
    let mut deleted = must(
        "delete_user",
        store.delete_user(&user_id, Some(&keep)).await,
    );
    deleted.sort();
    let mut expected = vec![logins[0].record.id_hash, logins[2].record.id_hash];
    expected.sort();
    assert_eq!(
        deleted, expected,
        "store contract: delete_user must delete all but the kept session"
    );
    assert!(
        must("load", store.load(&keep).await).is_some(),
        "store contract: the kept session must survive"
    );
    let rest = must("delete_user", store.delete_user(&user_id, None).await);
    assert_eq!(
        rest,
        vec![keep],
        "store contract: a second delete_user removes the kept one"
    );
    assert!(
        must("delete_user", store.delete_user(&user_id, None).await).is_empty(),
        "store contract: a user with no sessions deletes nothing"
    );
}

/// A fresh record for the suite: live for an hour from now.
#[must_use]
pub fn sample_record(user_id: Option<&str>) -> SessionRecord {
    let now = SystemClock.now();
    let deadlines = Deadlines {
        created_at: now,
        idle_deadline: now + 30 * 60 * 1000,
        absolute_deadline: now + 60 * 60 * 1000,
    };
    let mut data = SessionData::default();
    data.insert("greeting".into(), json!("hello"));
    deadlines.record(
        SessionId::generate().hash(),
        user_id.map(str::to_owned),
        data,
    )
}

fn must<T>(what: &str, result: Result<T, super::StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("store contract: {what} failed: {err}"),
    }
}

async fn create_then_load_round_trips<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(Some("user-1"));
    assert!(
        must("create", store.create(&record).await),
        "store contract: create of a new id must return true"
    );
    let loaded = must("load", store.load(&record.id_hash).await)
        .expect("store contract: a created record must load");
    assert_eq!(
        *loaded, record,
        "store contract: load must return the record as created"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn create_refuses_to_overwrite<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    let mut other = record.clone();
    other.user_id = Some("intruder".into());
    assert!(
        !must("create", store.create(&other).await),
        "store contract: create on an existing id must return false"
    );
    let loaded = must("load", store.load(&record.id_hash).await).unwrap();
    assert_eq!(
        loaded.user_id, None,
        "store contract: a colliding create must not overwrite"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn load_of_unknown_id_is_none<S: SessionStore + ?Sized>(store: &S) {
    let loaded = must("load", store.load(&SessionId::generate().hash()).await);
    assert!(
        loaded.is_none(),
        "store contract: an unknown id must load as None"
    );
}

async fn update_applies_the_delta<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    let binding = Binding {
        user_agent: Some("Firefox on Linux".into()),
        networks: vec![SeenNetwork {
            network: "203.0.113.0/24".parse().expect("a network"),
            last_seen: record.created_at,
        }],
        location: Some(SeenLocation {
            latitude: 59.9,
            longitude: 10.7,
            at: record.created_at,
        }),
    };
    let change = Change {
        set: vec![("n".into(), json!(7)), ("list".into(), json!([1, 2]))],
        removed: vec!["greeting".into()],
        touch: None,
        binding: Some(binding.clone()),
    };
    assert!(
        must("update", store.update(&record.id_hash, &change).await),
        "store contract: update of a stored id must return true"
    );
    let loaded = must("load", store.load(&record.id_hash).await).unwrap();
    assert_eq!(
        loaded.data.get("n"),
        Some(&json!(7)),
        "store contract: update must set keys"
    );
    assert_eq!(
        loaded.data.get("list"),
        Some(&json!([1, 2])),
        "store contract: update must set keys"
    );
    assert_eq!(
        loaded.data.get("greeting"),
        None,
        "store contract: update must remove keys"
    );
    assert!(
        loaded.version > record.version,
        "store contract: update must bump the version"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn update_of_unknown_id_writes_nothing<S: SessionStore + ?Sized>(store: &S) {
    let id = SessionId::generate().hash();
    let change = Change {
        set: vec![("n".into(), json!(1))],
        ..Change::default()
    };
    assert!(
        !must("update", store.update(&id, &change).await),
        "store contract: update of an unknown id must return false"
    );
    assert!(
        must("load", store.load(&id).await).is_none(),
        "store contract: update of an unknown id must not create a record"
    );
}

async fn concurrent_updates_keep_every_key<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    let changes: Vec<Change> = (0..64)
        .map(|i| Change {
            set: vec![(format!("k{i}"), json!(i))],
            ..Change::default()
        })
        .collect();
    let updates = changes
        .iter()
        .map(|change| store.update(&record.id_hash, change));
    for result in join_all(updates).await {
        assert!(
            must("update", result),
            "store contract: concurrent update lost the record"
        );
    }
    let loaded = must("load", store.load(&record.id_hash).await).unwrap();
    for i in 0..64 {
        assert_eq!(
            loaded.data.get(&format!("k{i}")),
            Some(&json!(i)),
            "store contract: concurrent updates of different keys must all be kept (k{i} lost)"
        );
    }
    store.delete(&record.id_hash).await.ok();
}

async fn touches_move_deadlines_forward_only<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    let forward = Touch {
        last_seen: record.last_seen + 1_000,
        idle_deadline: record.idle_deadline + 1_000,
    };
    let backward = Touch {
        last_seen: record.last_seen - 1_000,
        idle_deadline: record.idle_deadline - 1_000,
    };
    for touch in [forward, backward] {
        let change = Change {
            touch: Some(touch),
            ..Change::default()
        };
        must("update", store.update(&record.id_hash, &change).await);
    }
    let loaded = must("load", store.load(&record.id_hash).await).unwrap();
    assert_eq!(
        (loaded.last_seen, loaded.idle_deadline),
        (forward.last_seen, forward.idle_deadline),
        "store contract: a touch must move deadlines forward and never back"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn delete_removes_and_reports<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    assert!(
        must("delete", store.delete(&record.id_hash).await),
        "store contract: delete of a stored id must return true"
    );
    assert!(
        must("load", store.load(&record.id_hash).await).is_none(),
        "store contract: a deleted record must not load"
    );
    assert!(
        !must("delete", store.delete(&record.id_hash).await),
        "store contract: a second delete must return false"
    );
}

async fn regenerate_moves_the_record<S: SessionStore + ?Sized>(store: &S) {
    let record = sample_record(None);
    must("create", store.create(&record).await);
    let new = SessionId::generate().hash();
    let regeneration = Regeneration {
        change: Change {
            set: vec![("cart".into(), json!(["apple"]))],
            ..Change::default()
        },
        user_id: Some("user-9".into()),
        issued_at: record.created_at + 5,
        forward: None,
    };
    let moved = must(
        "regenerate",
        store.regenerate(&record.id_hash, &new, &regeneration).await,
    )
    .expect("store contract: regenerate of a stored id must return the moved record");
    assert_eq!(
        moved.id_hash, new,
        "store contract: the moved record must carry its new hash"
    );
    assert_superseded(store, &record.id_hash, regeneration.issued_at, "regenerate").await;
    let loaded = must("load", store.load(&new).await)
        .expect("store contract: after regenerate the new id must load");
    assert_eq!(
        loaded.user_id.as_deref(),
        Some("user-9"),
        "store contract: regenerate must set the user"
    );
    assert_eq!(
        loaded.data.get("greeting"),
        Some(&json!("hello")),
        "store contract: regenerate must keep data"
    );
    assert_eq!(
        loaded.data.get("cart"),
        Some(&json!(["apple"])),
        "store contract: regenerate must apply the change"
    );
    assert_eq!(
        loaded.created_at, record.created_at,
        "store contract: regenerate must keep the creation time"
    );
    assert_eq!(
        loaded.id_issued_at,
        record.created_at + 5,
        "store contract: regenerate must record the issue time"
    );
    store.delete(&new).await.ok();
}

async fn regenerate_of_unknown_id_writes_nothing<S: SessionStore + ?Sized>(store: &S) {
    let old = SessionId::generate().hash();
    let new = SessionId::generate().hash();
    let moved = must(
        "regenerate",
        store.regenerate(&old, &new, &Regeneration::default()).await,
    );
    assert!(
        moved.is_none(),
        "store contract: regenerate of an unknown id must return None"
    );
    assert!(
        must("load", store.load(&new).await).is_none(),
        "store contract: regenerate of an unknown id must not create the new id"
    );
}

/// Polls futures concurrently without pulling in an executor crate.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;

    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}
