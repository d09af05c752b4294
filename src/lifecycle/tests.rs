//! Races between two lifecycle operations, lined up step by step over a
//! store whose primitives run one-shot hooks.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::{self as lifecycle, Login, LoginOutcome};
use crate::clock::UnixMillis;
use crate::id::{IdHash, SessionId};
use crate::policy::{OnLimit, SessionLimit};
use crate::record::{Change, Deadlines, Entry, SessionData, SessionRecord};
use crate::store::{MemoryStore, SessionStore, StoreError, UserLock};

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

#[derive(Clone)]
struct Hooked {
    inner: MemoryStore,
    hooks: Arc<Mutex<Vec<(&'static str, Hook)>>>,
}

impl Hooked {
    fn new(inner: &MemoryStore) -> Self {
        Self {
            inner: inner.clone(),
            hooks: Arc::default(),
        }
    }
    fn on(&self, op: &'static str, hook: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static) {
        self.hooks.lock().unwrap().push((op, Box::new(hook)));
    }
    async fn run(&self, op: &str) {
        let hook = {
            let mut hooks = self.hooks.lock().unwrap();
            hooks
                .iter()
                .position(|(o, _)| *o == op)
                .map(|i| hooks.remove(i).1)
        };
        if let Some(hook) = hook {
            hook().await;
        }
    }
}

#[async_trait]
impl SessionStore for Hooked {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        self.inner.create(record).await
    }
    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.inner.load(id).await
    }
    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        self.inner.update(id, change).await
    }
    async fn replace(&self, id: &IdHash, v: u64, with: Option<&Entry>) -> Result<bool, StoreError> {
        self.run("before:replace").await;
        self.inner.replace(id, v, with).await
    }
    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let r = self.inner.delete(id).await;
        self.run("after:delete").await;
        r
    }
    async fn index_add(&self, u: &str, id: &IdHash, until: UnixMillis) -> Result<(), StoreError> {
        self.inner.index_add(u, id, until).await
    }
    async fn index_remove(&self, u: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        self.run("before:index_remove").await;
        self.inner.index_remove(u, ids).await
    }
    async fn index_members(&self, u: &str, now: UnixMillis) -> Result<Vec<IdHash>, StoreError> {
        self.run("before:index_members").await;
        let r = self.inner.index_members(u, now).await;
        self.run("after:index_members").await;
        r
    }
    async fn lock_user(&self, u: &str) -> Result<UserLock, StoreError> {
        self.inner.lock_user(u).await
    }
}

const NOW: UnixMillis = 1_000_000;

fn record(user: &str) -> SessionRecord {
    Deadlines {
        created_at: NOW,
        idle_deadline: NOW + 3_600_000,
        absolute_deadline: NOW + 7_200_000,
    }
    .record(
        SessionId::generate().hash(),
        Some(user.to_owned()),
        SessionData::default(),
    )
}

/// A re-login from session A (limit 2, the user has S1 and A) while another
/// request renews A after the login counted: the login must move the
/// renewed session, not leave it beside a new one (3 under a limit of 2).
#[tokio::test]
async fn a_login_racing_a_renewal_of_its_session_keeps_the_limit() {
    let mut counts = Vec::new();
    for on_limit in [OnLimit::EvictLeastRecent, OnLimit::RejectLogin] {
        let store = MemoryStore::new(1_000);
        let (_s1, _) = lifecycle::create(&store, record("u")).await.unwrap();
        let (a, _) = lifecycle::create(&store, record("u")).await.unwrap();
        let hooked = Hooked::new(&store);
        {
            let (store, a) = (store.clone(), a.clone());
            // The renewal runs after the login counted the user's sessions.
            hooked.on("after:index_members", move || {
                Box::pin(async move {
                    lifecycle::regenerate(&store, &a, &Change::default(), NOW, Some(30_000))
                        .await
                        .unwrap()
                        .expect("renewed");
                })
            });
        }
        let change = Change::default();
        let outcome = lifecycle::login(
            &hooked,
            Login {
                previous: Some(a.hash()),
                record: record("u"),
                change: &change,
                limit: Some(SessionLimit { max: 2, on_limit }),
                now: NOW,
            },
        )
        .await
        .unwrap();
        assert!(matches!(outcome, LoginOutcome::LoggedIn { .. }));
        let live = lifecycle::sessions_of(&store, "u", NOW).await.unwrap();
        counts.push((on_limit, live.len()));
    }
    assert!(
        counts.iter().all(|(_, n)| *n <= 2),
        "live sessions under a limit of 2: {counts:?}"
    );
}

/// A renewal whose first attempt loses to a concurrent write retries; an
/// admin listing that saw the first attempt's copy vanish drops that id
/// from the index. The retry must be under another id, or the moved
/// session would be live but unindexed, and "log out everywhere" would
/// miss it.
#[tokio::test]
async fn a_move_retried_under_a_concurrent_listing_stays_indexed() {
    let store = MemoryStore::new(1_000);
    let (a, _) = lifecycle::create(&store, record("u")).await.unwrap();
    let (deleted_tx, deleted_rx) = tokio::sync::oneshot::channel::<()>();
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();

    let mover = Hooked::new(&store);
    {
        let (store, a) = (store.clone(), a.clone());
        // A request's commit lands on A during the move: the replace fails.
        mover.on("before:replace", move || {
            Box::pin(async move {
                let write = Change {
                    set: vec![("k".into(), serde_json::json!(1))],
                    ..Change::default()
                };
                assert!(store.update(&a.hash(), &write).await.unwrap().is_some());
            })
        });
    }
    mover.on("after:delete", move || {
        Box::pin(async move {
            deleted_tx.send(()).unwrap();
            loaded_rx.await.unwrap();
        })
    });
    let lister = Hooked::new(&store);
    lister.on("before:index_members", move || {
        Box::pin(async move { deleted_rx.await.unwrap() })
    });
    lister.on("before:index_remove", move || {
        Box::pin(async move {
            loaded_tx.send(()).unwrap();
            done_rx.await.unwrap();
        })
    });
    let listing =
        tokio::spawn(async move { lifecycle::sessions_of(&lister, "u", NOW).await.unwrap() });

    let (n, _) = lifecycle::regenerate(&mover, &a, &Change::default(), NOW, Some(30_000))
        .await
        .unwrap()
        .expect("renewed");
    done_tx.send(()).unwrap();
    listing.await.unwrap();

    assert!(matches!(
        store.load(&n.hash()).await.unwrap(),
        Some(Entry::Session(_))
    ));
    let removed = lifecycle::logout_user(&store, "u", None, NOW)
        .await
        .unwrap();
    assert!(
        store.load(&n.hash()).await.unwrap().is_none(),
        "log out everywhere removed {} sessions and left the renewed session alive (index: {:?})",
        removed.len(),
        store.index_members("u", NOW).await.unwrap().len()
    );
}
