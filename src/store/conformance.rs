//! The store contract as a reusable test suite (feature `test-util`).
//!
//! Every store in this crate passes it, and so should yours:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower_session_guard::store::{conformance, MemoryStore};
//!
//! conformance::run(&MemoryStore::new(1_000)).await;
//! # }
//! ```
//!
//! It checks each primitive of [`SessionStore`] on its own, then runs the
//! crate's session protocol over the store (logins under a limit, renewals
//! racing each other, logouts following a moved session), so that a store
//! whose primitives are each right but do not fit together fails here and
//! not in production.
//!
//! Each check uses fresh random ids and user ids, so the suite can run
//! against a shared backend without cleaning it first. A failed check
//! panics with a message naming the rule that was broken.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use super::{SessionStore, StoreError};
use crate::clock::{Clock, SystemClock, UnixMillis};
use crate::id::{IdHash, SessionId};
use crate::lifecycle::{self, Found, Login, LoginOutcome};
use crate::policy::{OnLimit, SessionLimit};
use crate::record::{
    Binding, Change, Deadlines, Entry, Forward, SeenLocation, SeenNetwork, SessionData,
    SessionRecord, SignIn, StampHash, Superseded, Touch,
};

/// Runs every check of the store contract against `store`.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn run<S: SessionStore>(store: &S) {
    create_then_load_round_trips(store).await;
    create_refuses_to_overwrite(store).await;
    load_of_unknown_id_is_none(store).await;
    update_applies_the_delta(store).await;
    update_writes_nothing_without_a_session(store).await;
    concurrent_updates_keep_every_key(store).await;
    touches_move_deadlines_forward_only(store).await;
    replace_only_replaces_the_version_read(store).await;
    placeholders_round_trip(store).await;
    delete_returns_what_was_there(store).await;
    the_index_adds_lists_and_removes(store).await;
    the_user_lock_excludes_a_second_holder(store).await;
    renewal_forwards_the_old_id_and_its_writes(store).await;
    regeneration_kills_the_old_id(store).await;
    only_one_of_concurrent_renewals_wins(store).await;
    login_moves_the_previous_session_into_the_index(store).await;
    login_evicts_the_least_recently_used_at_the_limit(store).await;
    login_rejected_at_the_limit_changes_nothing(store).await;
    concurrent_logins_never_overshoot_the_limit(store).await;
    logout_follows_a_session_moved_meanwhile(store).await;
    revoke_follows_a_move_only_within_its_user(store).await;
    logout_everywhere_keeps_the_one_asked_for(store).await;
}

/// A fresh record for the suite: live for an hour from now, holding
/// `greeting = "hello"`.
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

fn must<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("store contract: {what} failed: {err}"),
    }
}

/// A fresh, unique user id for one check.
fn user() -> String {
    format!("user-{}", SessionId::generate().fingerprint())
}

fn now() -> UnixMillis {
    SystemClock.now()
}

async fn created<S: SessionStore>(store: &S, user_id: Option<&str>) -> SessionRecord {
    let record = sample_record(user_id);
    assert!(
        must("create", store.create(&record).await),
        "store contract: create of a new id must return true"
    );
    if let Some(user) = user_id {
        must(
            "index_add",
            store
                .index_add(user, &record.id_hash, record.absolute_deadline)
                .await,
        );
    }
    record
}

async fn session<S: SessionStore>(
    store: &S,
    id: &IdHash,
    what: &str,
) -> std::sync::Arc<SessionRecord> {
    match must("load", store.load(id).await) {
        Some(Entry::Session(record)) => record,
        other => panic!("store contract: {what}: expected a session, got {other:?}"),
    }
}

fn set(key: &str, value: serde_json::Value) -> Change {
    Change {
        set: vec![(key.to_owned(), value)],
        ..Change::default()
    }
}

async fn create_then_load_round_trips<S: SessionStore>(store: &S) {
    let mut record = sample_record(Some(&user()));
    record.ip = Some("2001:db8::7".parse().expect("an address"));
    record.user_agent = Some("Firefox on Linux".into());
    record.data.insert("n".into(), json!(1.5));
    record.data.insert("big".into(), json!(u64::MAX));
    record
        .data
        .insert("nested".into(), json!({"a": [1, null, "é"]}));
    record.binding = Some(Box::new(Binding {
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
    }));
    record.sign_in = Some(Box::new(SignIn {
        authenticated_at: record.created_at,
        method: Some("passkey".into()),
        idle_timeout: Some(30 * 86_400_000),
        absolute_timeout: Some(30 * 86_400_000),
        persistent: true,
        stamp: Some(StampHash([0xa5; 16])),
    }));
    assert!(
        must("create", store.create(&record).await),
        "store contract: create of a new id must return true"
    );
    let loaded = session(store, &record.id_hash, "a created session must load").await;
    assert_eq!(
        *loaded, record,
        "store contract: load must return the session as created"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn create_refuses_to_overwrite<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let mut other = record.clone();
    other.user_id = Some("intruder".into());
    assert!(
        !must("create", store.create(&other).await),
        "store contract: create on an existing id must return false"
    );
    let loaded = session(store, &record.id_hash, "after a refused create").await;
    assert_eq!(
        loaded.user_id, None,
        "store contract: a colliding create must not overwrite"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn load_of_unknown_id_is_none<S: SessionStore>(store: &S) {
    let loaded = must("load", store.load(&SessionId::generate().hash()).await);
    assert!(
        loaded.is_none(),
        "store contract: an unknown id must load as None"
    );
}

async fn update_applies_the_delta<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let binding = Binding {
        user_agent: Some("Safari on macOS".into()),
        ..Binding::default()
    };
    let change = Change {
        set: vec![("n".into(), json!(7)), ("list".into(), json!([1, 2]))],
        removed: vec!["greeting".into()],
        touch: None,
        binding: Some(binding.clone()),
    };
    let version = must("update", store.update(&record.id_hash, &change).await);
    assert_eq!(
        version,
        Some(record.version.wrapping_add(1)),
        "store contract: update of a stored session must return its new version, one more \
         than before"
    );
    let loaded = session(store, &record.id_hash, "after an update").await;
    assert_eq!(
        Some(loaded.version),
        version,
        "store contract: the version update returns must be the stored one"
    );
    let mut expected = record.clone();
    expected.apply(&change);
    assert_eq!(
        loaded.data, expected.data,
        "store contract: update must set and remove the keys it names"
    );
    assert_eq!(
        loaded.binding.as_deref(),
        Some(&binding),
        "store contract: update must replace the client binding"
    );
    assert!(
        loaded.version > record.version,
        "store contract: update must bump the version"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn update_writes_nothing_without_a_session<S: SessionStore>(store: &S) {
    let id = SessionId::generate().hash();
    assert_eq!(
        must("update", store.update(&id, &set("n", json!(1))).await),
        None,
        "store contract: update of an unknown id must return None"
    );
    assert!(
        must("load", store.load(&id).await).is_none(),
        "store contract: update of an unknown id must not create anything"
    );

    let record = created(store, None).await;
    let marker = Entry::Superseded(Superseded {
        successor: SessionId::generate().hash(),
        until: now() + 10_000,
        user_id: None,
    });
    must(
        "replace",
        store
            .replace(&record.id_hash, record.version, Some(&marker))
            .await,
    );
    assert_eq!(
        must(
            "update",
            store.update(&record.id_hash, &set("n", json!(1))).await
        ),
        None,
        "store contract: update of a placeholder must return None"
    );
    assert_eq!(
        must("load", store.load(&record.id_hash).await),
        Some(marker),
        "store contract: update of a placeholder must leave it as it was"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn concurrent_updates_keep_every_key<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let changes: Vec<Change> = (0..64).map(|i| set(&format!("k{i}"), json!(i))).collect();
    let updates = changes
        .iter()
        .map(|change| store.update(&record.id_hash, change));
    let mut versions = Vec::new();
    for result in join_all(updates).await {
        let version = must("update", result);
        assert!(
            version.is_some(),
            "store contract: a concurrent update lost the session"
        );
        versions.extend(version);
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=64).map(|n| record.version.wrapping_add(n)).collect();
    assert_eq!(
        versions, expected,
        "store contract: each of concurrent updates must return the version it made"
    );
    let loaded = session(store, &record.id_hash, "after concurrent updates").await;
    for i in 0..64 {
        assert_eq!(
            loaded.data.get(&format!("k{i}")),
            Some(&json!(i)),
            "store contract: concurrent updates of different keys must all be kept (k{i} lost)"
        );
    }
    store.delete(&record.id_hash).await.ok();
}

async fn touches_move_deadlines_forward_only<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let forward = Touch {
        last_seen: record.last_seen + 1_000,
        idle_deadline: record.idle_deadline + 1_000,
    };
    let backward = Touch {
        last_seen: record.last_seen - 1_000,
        idle_deadline: record.idle_deadline - 1_000,
    };
    let beyond = Touch {
        last_seen: record.last_seen + 2_000,
        idle_deadline: record.absolute_deadline + 60_000,
    };
    for touch in [forward, backward] {
        let change = Change {
            touch: Some(touch),
            ..Change::default()
        };
        must("update", store.update(&record.id_hash, &change).await);
    }
    let loaded = session(store, &record.id_hash, "after touches").await;
    assert_eq!(
        (loaded.last_seen, loaded.idle_deadline),
        (forward.last_seen, forward.idle_deadline),
        "store contract: a touch must move deadlines forward and never back"
    );
    let change = Change {
        touch: Some(beyond),
        ..Change::default()
    };
    must("update", store.update(&record.id_hash, &change).await);
    let loaded = session(store, &record.id_hash, "after a long touch").await;
    assert_eq!(
        loaded.idle_deadline, record.absolute_deadline,
        "store contract: a touch must not move the idle deadline past the absolute one"
    );
    store.delete(&record.id_hash).await.ok();
}

async fn replace_only_replaces_the_version_read<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    must(
        "update",
        store.update(&record.id_hash, &set("n", json!(1))).await,
    );
    let forward = Entry::Forward(Forward {
        successor: SessionId::generate().hash(),
        sealed_id: SessionId::generate().seal(&SessionId::generate()),
        until: now() + 10_000,
        kept_until: now() + 10_000,
    });
    assert!(
        !must(
            "replace",
            store
                .replace(&record.id_hash, record.version, Some(&forward))
                .await
        ),
        "store contract: replace at a version that was written since must refuse"
    );
    let current = session(store, &record.id_hash, "after a refused replace").await;
    assert_eq!(
        current.data.get("n"),
        Some(&json!(1)),
        "store contract: a refused replace must leave the session as it was"
    );
    assert!(
        must(
            "replace",
            store
                .replace(&record.id_hash, current.version, Some(&forward))
                .await
        ),
        "store contract: replace at the current version must succeed"
    );
    assert!(
        !must(
            "replace",
            store.replace(&record.id_hash, current.version, None).await
        ),
        "store contract: replace must refuse when the key holds a placeholder"
    );
    store.delete(&record.id_hash).await.ok();

    let doomed = created(store, None).await;
    assert!(
        must(
            "replace",
            store.replace(&doomed.id_hash, doomed.version, None).await
        ),
        "store contract: replace with nothing at the current version must remove"
    );
    assert!(
        must("load", store.load(&doomed.id_hash).await).is_none(),
        "store contract: replace with nothing must leave nothing"
    );
    assert!(
        !must(
            "replace",
            store.replace(&SessionId::generate().hash(), 0, None).await
        ),
        "store contract: replace of an unknown id must refuse"
    );
}

async fn placeholders_round_trip<S: SessionStore>(store: &S) {
    let old = SessionId::generate();
    let new = SessionId::generate();
    let placeholders = [
        Entry::Forward(Forward {
            successor: new.hash(),
            sealed_id: old.seal(&new),
            until: now() + 10_000,
            // Kept past its grace, for reuse detection.
            kept_until: now() + 3_600_000,
        }),
        Entry::Superseded(Superseded {
            successor: new.hash(),
            until: now() + 10_000,
            user_id: None,
        }),
        Entry::Superseded(Superseded {
            successor: new.hash(),
            until: now() + 10_000,
            user_id: Some("ann@example.com".to_owned()),
        }),
    ];
    for placeholder in placeholders {
        let record = created(store, None).await;
        must(
            "replace",
            store
                .replace(&record.id_hash, record.version, Some(&placeholder))
                .await,
        );
        assert_eq!(
            must("load", store.load(&record.id_hash).await),
            Some(placeholder),
            "store contract: a placeholder must load as it was stored"
        );
        store.delete(&record.id_hash).await.ok();
    }
}

async fn delete_returns_what_was_there<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let removed = must("delete", store.delete(&record.id_hash).await);
    assert_eq!(
        removed.as_ref().and_then(Entry::session).map(|r| r.id_hash),
        Some(record.id_hash),
        "store contract: delete must return the session it removed"
    );
    assert!(
        must("load", store.load(&record.id_hash).await).is_none(),
        "store contract: a deleted session must not load"
    );
    assert!(
        must("delete", store.delete(&record.id_hash).await).is_none(),
        "store contract: a second delete must return nothing"
    );
}

async fn the_index_adds_lists_and_removes<S: SessionStore>(store: &S) {
    let user_id = user();
    let a = created(store, Some(&user_id)).await;
    let b = created(store, Some(&user_id)).await;
    let mut members = must("index_members", store.index_members(&user_id, now()).await);
    members.sort();
    let mut expected = vec![a.id_hash, b.id_hash];
    expected.sort();
    assert_eq!(
        members, expected,
        "store contract: the index must list the ids added to it"
    );
    must(
        "index_add",
        store
            .index_add(&user_id, &a.id_hash, a.absolute_deadline)
            .await,
    );
    assert_eq!(
        must("index_members", store.index_members(&user_id, now()).await).len(),
        2,
        "store contract: adding an id twice must list it once"
    );
    must(
        "index_remove",
        store.index_remove(&user_id, &[a.id_hash]).await,
    );
    assert_eq!(
        must("index_members", store.index_members(&user_id, now()).await),
        vec![b.id_hash],
        "store contract: a removed id must leave the index"
    );
    assert!(
        must("index_members", store.index_members(&user(), now()).await).is_empty(),
        "store contract: another user's index must be empty"
    );
    must(
        "index_remove",
        store.index_remove(&user_id, &[b.id_hash]).await,
    );
    store.delete(&a.id_hash).await.ok();
    store.delete(&b.id_hash).await.ok();
}

async fn the_user_lock_excludes_a_second_holder<S: SessionStore>(store: &S) {
    let user_id = user();
    let held = must("lock_user", store.lock_user(&user_id).await);
    let second = store.lock_user(&user_id);
    tokio::pin!(second);
    let waited = tokio::time::timeout(Duration::from_millis(100), &mut second).await;
    assert!(
        waited.is_err(),
        "store contract: a user's lock must not be handed out twice"
    );
    held.release().await;
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("store contract: a released user lock must be handed to the next waiter");
    must("lock_user", second).release().await;
}

async fn renewal_forwards_the_old_id_and_its_writes<S: SessionStore>(store: &S) {
    let record = created(store, Some(&user())).await;
    let old_id = SessionId::generate();
    // The record was created under a random hash: give it `old_id`'s.
    let record = rekey(store, record, &old_id).await;
    let at = now();
    let (new_id, moved) = must(
        "renewal",
        lifecycle::regenerate(store, &old_id, &Change::default(), at, Some(10_000)).await,
    )
    .expect("store contract: renewal of a stored session must move it");
    assert_eq!(
        moved.data, record.data,
        "store contract: a renewal keeps data"
    );
    match must("load", lifecycle::load(store, &old_id, at).await) {
        Found::Session {
            id,
            forwarded: true,
            ..
        } => assert_eq!(
            id, new_id,
            "store contract: the old id must forward to the new one"
        ),
        _ => panic!("store contract: during the grace period the old id must forward"),
    }
    assert!(
        must(
            "commit",
            lifecycle::commit(store, &old_id.hash(), &set("late", json!(true))).await
        ),
        "store contract: a write through the old id must land on the renewed session"
    );
    let renewed = session(store, &new_id.hash(), "the renewed session").await;
    assert_eq!(
        renewed.data.get("late"),
        Some(&json!(true)),
        "store contract: a write through the old id must reach the successor"
    );
    assert!(
        must(
            "renewal",
            lifecycle::regenerate(store, &old_id, &Change::default(), at, Some(10_000)).await
        )
        .is_none(),
        "store contract: an id already renewed must not be renewed again"
    );
    cleanup(store, &[old_id.hash(), new_id.hash()]).await;
}

async fn regeneration_kills_the_old_id<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let old_id = SessionId::generate();
    rekey(store, record, &old_id).await;
    let at = now();
    let (new_id, moved) = must(
        "regenerate",
        lifecycle::regenerate(store, &old_id, &set("cart", json!(["apple"])), at, None).await,
    )
    .expect("store contract: regeneration of a stored session must move it");
    assert_eq!(
        moved.data.get("cart"),
        Some(&json!(["apple"])),
        "store contract: a regeneration applies its writes"
    );
    assert!(
        matches!(
            must("load", lifecycle::load(store, &old_id, at).await),
            Found::InFlight
        ),
        "store contract: a regenerated id must hold a superseded marker"
    );
    assert!(
        !must(
            "commit",
            lifecycle::commit(store, &old_id.hash(), &set("late", json!(1))).await
        ),
        "store contract: a write through a superseded id must not land"
    );
    cleanup(store, &[old_id.hash(), new_id.hash()]).await;
}

async fn only_one_of_concurrent_renewals_wins<S: SessionStore>(store: &S) {
    let record = created(store, None).await;
    let old_id = SessionId::generate();
    rekey(store, record, &old_id).await;
    let at = now();
    let change = Change::default();
    let results =
        join_all((0..16).map(|_| lifecycle::regenerate(store, &old_id, &change, at, Some(10_000))))
            .await;
    let winners: Vec<_> = results
        .into_iter()
        .filter_map(|r| must("renewal", r))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "store contract: exactly one of concurrent renewals must win"
    );
    cleanup(store, &[old_id.hash(), winners[0].0.hash()]).await;
}

async fn logged_in<S: SessionStore>(
    store: &S,
    user_id: &str,
    previous: Option<IdHash>,
    limit: Option<SessionLimit>,
) -> LoginOutcome {
    let record = sample_record(Some(user_id));
    let change = Change::default();
    let login = Login {
        previous,
        now: record.created_at,
        record,
        change: &change,
        limit,
    };
    must("login", lifecycle::login(store, login).await)
}

fn signed_in(outcome: LoginOutcome) -> (std::sync::Arc<SessionRecord>, bool, Vec<IdHash>) {
    match outcome {
        LoginOutcome::LoggedIn {
            record,
            moved,
            evicted,
            ..
        } => (record, moved, evicted.iter().map(|r| r.id_hash).collect()),
        LoginOutcome::LimitReached => {
            panic!("store contract: a login under the limit must succeed")
        }
    }
}

async fn listed<S: SessionStore>(store: &S, user_id: &str) -> Vec<IdHash> {
    let mut ids: Vec<IdHash> = must("list", lifecycle::sessions_of(store, user_id, now()).await)
        .iter()
        .map(|r| r.id_hash)
        .collect();
    ids.sort();
    ids
}

async fn login_moves_the_previous_session_into_the_index<S: SessionStore>(store: &S) {
    let user_id = user();
    let anonymous = created(store, None).await;
    let (record, moved, _) =
        signed_in(logged_in(store, &user_id, Some(anonymous.id_hash), None).await);
    assert!(
        moved,
        "store contract: login must move a stored previous session"
    );
    assert_eq!(
        record.data.get("greeting"),
        Some(&json!("hello")),
        "store contract: login keeps data"
    );
    assert!(
        matches!(
            must("load", store.load(&anonymous.id_hash).await),
            Some(Entry::Superseded(_))
        ),
        "store contract: after a login the old id must hold a superseded marker"
    );
    assert_eq!(
        listed(store, &user_id).await,
        vec![record.id_hash],
        "store contract: the signed-in session must be in the user's index"
    );
    sign_out_everywhere(store, &user_id).await;
    store.delete(&anonymous.id_hash).await.ok();
}

async fn login_evicts_the_least_recently_used_at_the_limit<S: SessionStore>(store: &S) {
    let user_id = user();
    let limit = SessionLimit {
        max: 2,
        on_limit: OnLimit::EvictLeastRecent,
    };
    let (first, _, _) = signed_in(logged_in(store, &user_id, None, Some(limit)).await);
    let (second, _, _) = signed_in(logged_in(store, &user_id, None, Some(limit)).await);
    // The first is used again: the second becomes the least recently used.
    let touch = Change {
        touch: Some(Touch {
            last_seen: second.last_seen + 1_000,
            idle_deadline: second.idle_deadline + 1_000,
        }),
        ..Change::default()
    };
    must("update", store.update(&first.id_hash, &touch).await);
    let (third, _, evicted) = signed_in(logged_in(store, &user_id, None, Some(limit)).await);
    assert_eq!(
        evicted,
        vec![second.id_hash],
        "store contract: at the limit the least recently used session is evicted"
    );
    assert!(
        must("load", store.load(&second.id_hash).await).is_none(),
        "store contract: an evicted session must be gone"
    );
    let mut expected = vec![first.id_hash, third.id_hash];
    expected.sort();
    assert_eq!(listed(store, &user_id).await, expected);
    sign_out_everywhere(store, &user_id).await;
}

async fn login_rejected_at_the_limit_changes_nothing<S: SessionStore>(store: &S) {
    let user_id = user();
    let limit = SessionLimit {
        max: 1,
        on_limit: OnLimit::RejectLogin,
    };
    let (first, _, _) = signed_in(logged_in(store, &user_id, None, Some(limit)).await);
    let anonymous = created(store, None).await;
    assert!(
        matches!(
            logged_in(store, &user_id, Some(anonymous.id_hash), Some(limit)).await,
            LoginOutcome::LimitReached
        ),
        "store contract: a login over a rejecting limit must be refused"
    );
    assert!(
        matches!(
            must("load", store.load(&anonymous.id_hash).await),
            Some(Entry::Session(_))
        ),
        "store contract: a refused login must leave the previous session alone"
    );
    assert_eq!(listed(store, &user_id).await, vec![first.id_hash]);
    sign_out_everywhere(store, &user_id).await;
    store.delete(&anonymous.id_hash).await.ok();
}

async fn concurrent_logins_never_overshoot_the_limit<S: SessionStore>(store: &S) {
    let user_id = user();
    let limit = SessionLimit {
        max: 3,
        on_limit: OnLimit::EvictLeastRecent,
    };
    let outcomes = join_all((0..12).map(|_| logged_in(store, &user_id, None, Some(limit)))).await;
    for outcome in outcomes {
        signed_in(outcome);
    }
    assert_eq!(
        listed(store, &user_id).await.len(),
        3,
        "store contract: concurrent logins must leave exactly the limit"
    );
    sign_out_everywhere(store, &user_id).await;
}

async fn logout_follows_a_session_moved_meanwhile<S: SessionStore>(store: &S) {
    for grace in [Some(10_000), None] {
        let user_id = user();
        let (old_id, new_id) = moved_session(store, &user_id, grace).await;
        let removed = must(
            "logout",
            lifecycle::logout(store, &old_id.hash(), Some(&user_id)).await,
        );
        assert_eq!(
            removed.map(|r| r.id_hash),
            Some(new_id.hash()),
            "store contract: a logout through the old id must end the moved session"
        );
        assert!(
            must("load", store.load(&new_id.hash()).await).is_none(),
            "store contract: the moved session must be gone after the logout"
        );
        assert!(listed(store, &user_id).await.is_empty());
    }
}

/// A session of `user_id` stored under a known id and then moved to a new
/// one (with a forward for `grace`, or a superseded marker): `(old, new)`.
async fn moved_session<S: SessionStore>(
    store: &S,
    user_id: &str,
    grace: Option<UnixMillis>,
) -> (SessionId, SessionId) {
    let record = created(store, Some(user_id)).await;
    let old_id = SessionId::generate();
    rekey(store, record, &old_id).await;
    let (new_id, _) = must(
        "move",
        lifecycle::regenerate(store, &old_id, &Change::default(), now(), grace).await,
    )
    .expect("store contract: a stored session must move");
    (old_id, new_id)
}

async fn revoke_follows_a_move_only_within_its_user<S: SessionStore>(store: &S) {
    // A regeneration keeps the user: a handle to the old id ends the moved session.
    let user_id = user();
    let (old_id, new_id) = moved_session(store, &user_id, None).await;
    let revoked = must("revoke", lifecycle::revoke(store, &old_id.hash()).await);
    assert_eq!(
        revoked.map(|r| r.id_hash),
        Some(new_id.hash()),
        "store contract: revoking a regenerated session's old id must end the moved session"
    );
    assert!(listed(store, &user_id).await.is_empty());

    // Signing in as someone else: the old id's user is gone, the new user's
    // session must survive a revocation through the old id.
    let (first, second) = (user(), user());
    let (previous, _, _) = signed_in(logged_in(store, &first, None, None).await);
    let (switched, moved, _) =
        signed_in(logged_in(store, &second, Some(previous.id_hash), None).await);
    assert!(
        moved,
        "store contract: a login must move the previous session"
    );
    assert!(
        must("revoke", lifecycle::revoke(store, &previous.id_hash).await).is_none(),
        "store contract: a revocation must not follow a session into another user's sign-in"
    );
    assert!(
        must("load", store.load(&switched.id_hash).await).is_some(),
        "store contract: the other user's session must survive"
    );
    sign_out_everywhere(store, &second).await;
}

async fn logout_everywhere_keeps_the_one_asked_for<S: SessionStore>(store: &S) {
    let user_id = user();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (record, _, _) = signed_in(logged_in(store, &user_id, None, None).await);
        ids.push(record.id_hash);
    }
    let keep = ids[1];
    let removed = must(
        "logout others",
        lifecycle::logout_user(store, &user_id, Some(&keep), now()).await,
    );
    let mut removed: Vec<IdHash> = removed.iter().map(|r| r.id_hash).collect();
    removed.sort();
    let mut expected = vec![ids[0], ids[2]];
    expected.sort();
    assert_eq!(
        removed, expected,
        "store contract: logging out the others must remove all but the kept session"
    );
    assert_eq!(listed(store, &user_id).await, vec![keep]);
    let rest = must(
        "logout everywhere",
        lifecycle::logout_user(store, &user_id, None, now()).await,
    );
    assert_eq!(rest.len(), 1, "store contract: the kept one goes last");
    assert!(
        must(
            "logout everywhere",
            lifecycle::logout_user(store, &user_id, None, now()).await
        )
        .is_empty(),
        "store contract: a user with no sessions loses nothing"
    );
}

/// Stores `record` again under `id`'s hash (the suite needs the id itself
/// to renew), removing it from its random one.
/// Ends every session of `user_id`: a check's clean-up.
async fn sign_out_everywhere<S: SessionStore>(store: &S, user_id: &str) {
    must(
        "logout everywhere",
        lifecycle::logout_user(store, user_id, None, now()).await,
    );
}

async fn rekey<S: SessionStore>(
    store: &S,
    mut record: SessionRecord,
    id: &SessionId,
) -> SessionRecord {
    store.delete(&record.id_hash).await.ok();
    if let Some(user) = &record.user_id {
        store.index_remove(user, &[record.id_hash]).await.ok();
    }
    record.id_hash = id.hash();
    assert!(must("create", store.create(&record).await));
    if let Some(user) = &record.user_id {
        must(
            "index_add",
            store
                .index_add(user, &record.id_hash, record.absolute_deadline)
                .await,
        );
    }
    record
}

async fn cleanup<S: SessionStore>(store: &S, ids: &[IdHash]) {
    for id in ids {
        if let Ok(Some(Entry::Session(record))) = store.delete(id).await {
            if let Some(user) = &record.user_id {
                store.index_remove(user, &[*id]).await.ok();
            }
        }
    }
}
