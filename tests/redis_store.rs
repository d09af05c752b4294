//! `RedisStore` and `CachedStore<RedisStore>` against a real Redis: the
//! store contract, the key layout, expiry, the user index, change
//! announcements, and the round trips a request costs.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;
mod redis_common;

use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use redis_common::{eventually, SharedRedis};
use serde_json::json;
use tower_session_guard::record::{Change, Touch};
use tower_session_guard::store::{conformance, CachedStore, Login, LoginOutcome, RedisStore};
use tower_session_guard::{Key, SessionLayer, SessionStore};

#[tokio::test]
async fn redis_store_passes_the_store_contract() {
    let Some(redis) = SharedRedis::connect("redis_store_passes_the_store_contract").await else {
        return;
    };
    conformance::run(&redis.store).await;
}

#[tokio::test]
async fn cached_redis_store_passes_the_store_contract() {
    let Some(redis) = SharedRedis::connect("cached_redis_store_passes_the_store_contract").await
    else {
        return;
    };
    let cached = CachedStore::new(redis.store.clone(), 10_000);
    assert!(
        eventually(Duration::from_secs(5), || async { cached.is_caching() })
            .await
            .is_some(),
        "the change feed connects"
    );
    conformance::run(&cached).await;
}

#[tokio::test]
async fn every_key_lives_under_the_prefix_with_its_hash_tag() {
    let Some(redis) = SharedRedis::connect("key_layout").await else {
        return;
    };
    let record = conformance::sample_record(None);
    redis.store.create(&record).await.unwrap();
    let login = login_for("ann", None);
    redis.store.login(&login).await.unwrap();

    let mut keys = redis.keys();
    keys.sort();
    let record_key = format!("{}s:{{{}}}", redis.prefix, record.id_hash.to_hex());
    assert!(keys.contains(&record_key), "{keys:?}");
    let index: Vec<&String> = keys.iter().filter(|k| k.ends_with(":sessions")).collect();
    assert_eq!(index.len(), 1, "one index for the one user: {keys:?}");
    assert!(index[0].starts_with(&format!("{}u:{{", redis.prefix)));
    assert!(
        !keys.iter().any(|k| k.contains("ann")),
        "user ids stay out of key names: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with(":lock")),
        "the login lock is released: {keys:?}"
    );
}

#[tokio::test]
async fn redis_expiry_follows_the_records_deadlines_plus_slack() {
    let Some(redis) = SharedRedis::connect("expiry").await else {
        return;
    };
    let record = conformance::sample_record(None);
    redis.store.create(&record).await.unwrap();
    let key = format!("{}s:{{{}}}", redis.prefix, record.id_hash.to_hex());
    let mut connection = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(expire_at as u64, record.expires_at() + 30_000);

    let touch = Touch {
        last_seen: record.last_seen + 60_000,
        idle_deadline: record.idle_deadline + 60_000,
    };
    let change = Change {
        touch: Some(touch),
        ..Change::default()
    };
    assert!(redis.store.update(&record.id_hash, &change).await.unwrap());
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        expire_at as u64,
        touch.idle_deadline + 30_000,
        "a touch moves the backstop"
    );
}

#[tokio::test]
async fn the_user_index_is_scored_by_absolute_deadline_and_trimmed_when_read() {
    let Some(redis) = SharedRedis::connect("user_index").await else {
        return;
    };
    let logins: Vec<Login> = (0..3).map(|_| login_for("ann", None)).collect();
    for login in &logins {
        redis.store.login(login).await.unwrap();
    }
    let index_key = redis
        .keys()
        .into_iter()
        .find(|k| k.ends_with(":sessions"))
        .unwrap();
    let mut connection = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let scored: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(&index_key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(scored.len(), 3);
    for (member, score) in &scored {
        let login = logins
            .iter()
            .find(|l| l.record.id_hash.to_hex() == *member)
            .unwrap();
        assert_eq!(*score, login.record.absolute_deadline);
    }
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&index_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0, "the index expires with its last entry");

    // A deleted session leaves the index when the index is next read.
    redis.store.delete(&logins[0].record.id_hash).await.unwrap();
    let listed = redis.store.list_user("ann", logins[0].now).await.unwrap();
    assert_eq!(listed.len(), 2);
    let size: usize = redis::cmd("ZCARD")
        .arg(&index_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(size, 2, "the dead entry was trimmed");
    // Past every absolute deadline the index empties by score.
    let far = logins[0].record.absolute_deadline + 1;
    assert!(redis.store.list_user("ann", far).await.unwrap().is_empty());
    let size: usize = redis::cmd("ZCARD")
        .arg(&index_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(size, 0);
}

#[tokio::test]
async fn every_change_is_announced_on_the_change_channel() {
    let Some(redis) = SharedRedis::connect("announcements").await else {
        return;
    };
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{}changes", redis.prefix))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();
    let record = conformance::sample_record(None);
    redis.store.create(&record).await.unwrap();
    let change = Change {
        set: vec![("k".into(), json!(1))],
        ..Change::default()
    };
    redis.store.update(&record.id_hash, &change).await.unwrap();
    redis.store.delete(&record.id_hash).await.unwrap();
    for what in ["update", "delete"] {
        let message = tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .unwrap_or_else(|_| panic!("no announcement of the {what}"))
            .unwrap();
        assert_eq!(
            message.get_payload::<String>().unwrap(),
            record.id_hash.to_hex()
        );
    }

    let quiet = redis.store.clone().with_change_notifications(false);
    let other = conformance::sample_record(None);
    quiet.create(&other).await.unwrap();
    quiet.update(&other.id_hash, &change).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), messages.next())
            .await
            .is_err(),
        "with notifications off nothing is published"
    );
}

#[tokio::test]
async fn a_session_with_many_keys_and_odd_values_round_trips() {
    let Some(redis) = SharedRedis::connect("odd_values").await else {
        return;
    };
    let record = conformance::sample_record(None);
    redis.store.create(&record).await.unwrap();
    let change = Change {
        set: (0..500)
            .map(|i| {
                (
                    format!("key {i} d:ü"),
                    json!({"i": i, "f": 0.1, "big": u64::MAX, "empty": []}),
                )
            })
            .collect(),
        ..Change::default()
    };
    assert!(redis.store.update(&record.id_hash, &change).await.unwrap());
    let loaded = redis.store.load(&record.id_hash).await.unwrap().unwrap();
    assert_eq!(loaded.data.len(), 501);
    for (key, value) in &change.set {
        assert_eq!(loaded.data.get(key), Some(value), "{key}");
    }
}

fn login_for(user: &str, previous: Option<tower_session_guard::id::IdHash>) -> Login {
    let record = conformance::sample_record(Some(user));
    Login {
        previous,
        now: record.created_at,
        record,
        change: Change::default(),
        limit: None,
    }
}

/// Counts the commands one connection sends, by watching `MONITOR` for
/// its address between two markers it sends itself. Commands run inside
/// scripts show as `lua` and are not round trips.
struct RoundTrips {
    connection: redis::aio::ConnectionManager,
    address: String,
    monitor: std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>,
    marker: usize,
}

impl RoundTrips {
    async fn watch(client: &redis::Client, connection: redis::aio::ConnectionManager) -> Self {
        let mut me = connection.clone();
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut me)
            .await
            .unwrap();
        let address = info
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap()
            .to_owned();
        let monitor = client.get_async_monitor().await.unwrap();
        Self {
            connection,
            address,
            monitor: Box::pin(monitor.into_on_message::<String>()),
            marker: 0,
        }
    }

    async fn mark(&mut self) -> String {
        self.marker += 1;
        let marker = format!(
            "tsg-round-trip-marker-{}-{}",
            std::process::id(),
            self.marker
        );
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut self.connection)
            .await
            .unwrap();
        marker
    }

    /// The commands this connection sent while `work` ran.
    async fn during<F: std::future::Future>(&mut self, work: F) -> Vec<String> {
        let begin = self.mark().await;
        work.await;
        let end = self.mark().await;
        let mut seen = Vec::new();
        let mut inside = false;
        let ours = format!(" {}]", self.address);
        loop {
            let line = tokio::time::timeout(Duration::from_secs(5), self.monitor.next())
                .await
                .expect("MONITOR keeps reporting")
                .expect("MONITOR stays open");
            if !line.contains(&ours) {
                continue;
            }
            if line.contains(&begin) {
                inside = true;
            } else if line.contains(&end) {
                return seen;
            } else if inside {
                let command = line
                    .split('"')
                    .nth(1)
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                seen.push(command);
            }
        }
    }
}

#[tokio::test]
async fn a_request_costs_one_round_trip_to_load_and_at_most_one_to_commit() {
    let Some(redis) = SharedRedis::connect("round_trips").await else {
        return;
    };
    let client = redis.client();
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let store = RedisStore::from_connection_manager(manager.clone(), client.clone())
        .with_prefix(redis.prefix.clone());
    let app = common::app(SessionLayer::new(store.clone(), Key::generate()));
    let mut trips = RoundTrips::watch(&client, manager).await;

    // The scripts are loaded once; measure the steady state after that.
    let first = common::send(&app, "GET", "/count", None).await;
    let token = first.token().unwrap();
    common::send(&app, "GET", "/count", Some(&token)).await;

    let created = trips
        .during(common::send(&app, "GET", "/count", None))
        .await;
    assert_eq!(created, ["EVALSHA"], "a new session: one script");

    let read = trips
        .during(async {
            let reply = common::send(&app, "GET", "/read", Some(&token)).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, "2");
        })
        .await;
    assert_eq!(read, ["HGETALL"], "a read-only request: the load alone");

    let written = trips
        .during(async {
            let reply = common::send(&app, "GET", "/count", Some(&token)).await;
            assert_eq!(reply.body, "3");
        })
        .await;
    assert_eq!(
        written,
        ["HGETALL", "EVALSHA"],
        "a writing request: the load and one script"
    );

    // A login (lock, index, move, unlock) is the expensive step, and rare.
    let login = trips
        .during(async {
            let reply = common::send(&app, "POST", "/login/ann", Some(&token)).await;
            assert_eq!(reply.status, StatusCode::OK);
        })
        .await;
    assert!(login.len() <= 12, "a login took {login:?}");

    // A cache in front answers repeated reads without Redis at all.
    let cached = CachedStore::new(store, 1_000);
    assert!(
        eventually(Duration::from_secs(5), || async { cached.is_caching() })
            .await
            .is_some()
    );
    let cached_app = common::app(SessionLayer::new(cached, Key::generate()));
    let token = common::send(&cached_app, "GET", "/count", None)
        .await
        .token()
        .unwrap();
    common::send(&cached_app, "GET", "/read", Some(&token)).await;
    let again = trips
        .during(common::send(&cached_app, "GET", "/read", Some(&token)))
        .await;
    assert!(
        again.is_empty(),
        "a cached read: no round trip, got {again:?}"
    );
    println!(
        "round trips: create {created:?}, read {read:?}, write {written:?}, login {login:?}, \
         cached read {again:?}"
    );
}

#[tokio::test]
async fn a_refused_login_leaves_no_lock_behind() {
    let Some(redis) = SharedRedis::connect("refused_login").await else {
        return;
    };
    let mut login = login_for("ann", None);
    login.limit = Some(tower_session_guard::policy::SessionLimit {
        max: 1,
        on_limit: tower_session_guard::OnLimit::RejectLogin,
    });
    assert!(matches!(
        redis.store.login(&login).await.unwrap(),
        LoginOutcome::LoggedIn { .. }
    ));
    let mut second = login_for("ann", None);
    second.limit = login.limit;
    assert_eq!(
        redis.store.login(&second).await.unwrap(),
        LoginOutcome::LimitReached
    );
    assert!(!redis.keys().iter().any(|k| k.ends_with(":lock")));
}
