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

use super::{Regeneration, SessionStore};
use crate::clock::{Clock, SystemClock};
use crate::id::SessionId;
use crate::record::{Change, Deadlines, SessionData, SessionRecord, Touch};

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
    let change = Change {
        set: vec![("n".into(), json!(7)), ("list".into(), json!([1, 2]))],
        removed: vec!["greeting".into()],
        touch: None,
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
    assert!(
        must("load", store.load(&record.id_hash).await).is_none(),
        "store contract: after regenerate the old id must be dead"
    );
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
