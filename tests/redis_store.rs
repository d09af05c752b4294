//! `RedisStore` and `CachedStore<RedisStore>` against a real Redis: the
//! store contract, the key layout, expiry, the user index, the user lock,
//! change announcements, and the round trips a request costs.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;
mod redis_common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use redis::aio::MultiplexedConnection;
use redis_common::{eventually, SharedRedis};
use serde_json::json;
use tower_session_guard::clock::{Clock, SystemClock};
use tower_session_guard::store::{conformance, CachedStore, RedisStore};
use tower_session_guard::store::{Change, Entry, Forward, SessionRecord, Superseded, Touch};
use tower_session_guard::store::{IdHash, SealedId, SessionId};
use tower_session_guard::{Key, OnLimit, SessionLayer, SessionStore, StoreError};

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

fn record_key(redis: &SharedRedis, id: &IdHash) -> String {
    format!("{}s:{{{}}}", redis.prefix, id.to_hex())
}

async fn connection(redis: &SharedRedis) -> MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn expire_time(connection: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(connection)
        .await
        .unwrap()
}

/// Creates a signed-in session and indexes it, as a login does.
async fn signed_in(store: &RedisStore, user: &str) -> SessionRecord {
    let record = conformance::sample_record(Some(user));
    assert!(store.create(&record).await.unwrap());
    store
        .index_add(user, &record.id_hash(), record.absolute_deadline())
        .await
        .unwrap();
    record
}

fn touch(record: &SessionRecord, by: u64) -> Change {
    Change {
        touch: Some(Touch {
            last_seen: record.last_seen() + by,
            idle_deadline: record.idle_deadline() + by,
        }),
        ..Change::default()
    }
}

#[tokio::test]
async fn every_key_lives_under_the_prefix_with_its_hash_tag() {
    let Some(redis) = SharedRedis::connect("key_layout").await else {
        return;
    };
    let anonymous = conformance::sample_record(None);
    redis.store.create(&anonymous).await.unwrap();
    let layer = SessionLayer::new(redis.store.clone(), Key::generate());
    let admin = layer.sessions();
    let app = common::app(layer);
    let reply = common::send(&app, "POST", "/login/ann", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let listed = admin.list("ann").await.unwrap();
    assert_eq!(listed.len(), 1);
    let ann = IdHash::from_hex(&listed[0].handle.to_string()).unwrap();

    let keys = redis.keys();
    for id in [anonymous.id_hash(), ann] {
        let key = record_key(&redis, &id);
        assert!(keys.contains(&key), "{key} is not among {keys:?}");
    }
    let index: Vec<&String> = keys.iter().filter(|k| k.ends_with(":sessions")).collect();
    assert_eq!(index.len(), 1, "one index for the one user: {keys:?}");
    assert!(index[0].starts_with(&format!("{}u:{{", redis.prefix)));
    assert_eq!(keys.len(), 3, "two sessions and an index: {keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("ann")),
        "user ids stay out of key names: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with(":lock")),
        "the login's lock is released: {keys:?}"
    );
}

#[tokio::test]
async fn redis_expiry_follows_each_entrys_end_plus_slack() {
    let Some(redis) = SharedRedis::connect("expiry").await else {
        return;
    };
    let mut connection = connection(&redis).await;
    let record = conformance::sample_record(None);
    redis.store.create(&record).await.unwrap();
    let key = record_key(&redis, &record.id_hash());
    assert_eq!(
        expire_time(&mut connection, &key).await as u64,
        record.expires_at() + 30_000
    );

    let moved = touch(&record, 60_000);
    assert!(redis
        .store
        .update(&record.id_hash(), &moved)
        .await
        .unwrap()
        .is_some());
    let moved_to = moved.touch.unwrap().idle_deadline + 30_000;
    assert_eq!(
        expire_time(&mut connection, &key).await as u64,
        moved_to,
        "a touch moves the backstop"
    );
    let write = Change {
        set: vec![("k".into(), json!(1))],
        ..Change::default()
    };
    assert!(redis
        .store
        .update(&record.id_hash(), &write)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        expire_time(&mut connection, &key).await as u64,
        moved_to,
        "a write without a touch leaves the backstop"
    );

    // A placeholder lasts until its own end, plus the slack.
    let until = SystemClock.now() + 10_000;
    let new = SessionId::generate();
    let placeholders = [
        Entry::Forward(Forward {
            successor: new.hash(),
            sealed_id: SealedId::from_hex(&"5e".repeat(16)).unwrap(),
            until,
            kept_until: until,
        }),
        Entry::Superseded(Superseded {
            successor: new.hash(),
            until,
            user_id: None,
        }),
    ];
    for placeholder in placeholders {
        let record = conformance::sample_record(None);
        redis.store.create(&record).await.unwrap();
        assert!(redis
            .store
            .replace(&record.id_hash(), record.version(), Some(&placeholder))
            .await
            .unwrap());
        let key = record_key(&redis, &record.id_hash());
        assert_eq!(
            expire_time(&mut connection, &key).await as u64,
            until + 30_000,
            "{placeholder:?}"
        );
    }

    // The index lasts until its last entry's end, plus the slack.
    let first = signed_in(&redis.store, "ann").await;
    let mut later = conformance::sample_record(Some("ann")).into_parts();
    later.absolute_deadline += 60_000;
    let later = SessionRecord::from_parts(later);
    redis.store.create(&later).await.unwrap();
    redis
        .store
        .index_add("ann", &later.id_hash(), later.absolute_deadline())
        .await
        .unwrap();
    redis
        .store
        .index_add("ann", &first.id_hash(), first.absolute_deadline())
        .await
        .unwrap();
    let index = index_key(&redis);
    assert_eq!(
        expire_time(&mut connection, &index).await as u64,
        later.absolute_deadline() + 30_000
    );
}

fn index_key(redis: &SharedRedis) -> String {
    redis
        .keys()
        .into_iter()
        .find(|k| k.ends_with(":sessions"))
        .expect("an index")
}

async fn index_size(connection: &mut MultiplexedConnection, index: &str) -> usize {
    redis::cmd("ZCARD")
        .arg(index)
        .query_async(connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_user_index_is_scored_by_absolute_deadline_and_trimmed() {
    let Some(redis) = SharedRedis::connect("user_index").await else {
        return;
    };
    let mut records = Vec::new();
    for _ in 0..3 {
        records.push(signed_in(&redis.store, "ann").await);
    }
    let index = index_key(&redis);
    let mut connection = connection(&redis).await;
    let scored: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(scored.len(), 3);
    for (member, score) in &scored {
        let record = records
            .iter()
            .find(|r| r.id_hash().to_hex() == *member)
            .unwrap();
        assert_eq!(*score, record.absolute_deadline());
    }

    // A removed session leaves the index when a reader finds it gone.
    redis.store.delete(&records[0].id_hash()).await.unwrap();
    let admin = SessionLayer::new(redis.store.clone(), Key::generate()).sessions();
    assert_eq!(admin.list("ann").await.unwrap().len(), 2);
    assert_eq!(
        index_size(&mut connection, &index).await,
        2,
        "the dead entry was trimmed"
    );

    // Adding drops the entries whose sessions Redis has expired by its own
    // clock (ended more than the slack ago), and only those.
    let now = SystemClock.now();
    let (gone, recent) = (SessionId::generate().hash(), SessionId::generate().hash());
    redis
        .store
        .index_add("ann", &gone, now - 60_000)
        .await
        .unwrap();
    redis
        .store
        .index_add("ann", &recent, now - 5_000)
        .await
        .unwrap();
    let score = |member: IdHash| {
        redis::cmd("ZSCORE")
            .arg(&index)
            .arg(member.to_hex())
            .to_owned()
    };
    let gone_score: Option<u64> = score(gone).query_async(&mut connection).await.unwrap();
    let recent_score: Option<u64> = score(recent).query_async(&mut connection).await.unwrap();
    assert_eq!(gone_score, None, "an entry Redis has expired stayed");
    assert_eq!(
        recent_score,
        Some(now - 5_000),
        "an entry within the slack went"
    );

    // Reading drops what ends before the reader's now.
    let listed = redis.store.index_members("ann", now).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(!listed.contains(&recent));
    let far = records[2].absolute_deadline() + 1;
    assert!(redis
        .store
        .index_members("ann", far)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(index_size(&mut connection, &index).await, 0);
}

/// The messages on the store's change channel, from now on.
async fn change_messages(
    redis: &SharedRedis,
) -> impl futures_util::Stream<Item = redis::Msg> + Unpin {
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{}changes", redis.prefix))
        .await
        .unwrap();
    pubsub.into_on_message()
}

#[tokio::test]
async fn every_change_is_announced_on_the_change_channel() {
    let Some(redis) = SharedRedis::connect("announcements").await else {
        return;
    };
    let mut messages = change_messages(&redis).await;
    let change = Change {
        set: vec![("k".into(), json!(1))],
        ..Change::default()
    };
    let marker = |record: &SessionRecord| {
        Entry::Superseded(Superseded {
            successor: SessionId::generate().hash(),
            until: record.created_at() + 10_000,
            user_id: None,
        })
    };
    let record = conformance::sample_record(None);
    redis.store.create(&record).await.unwrap();
    let version = redis
        .store
        .update(&record.id_hash(), &change)
        .await
        .unwrap()
        .expect("a session to update");
    redis
        .store
        .replace(&record.id_hash(), version, Some(&marker(&record)))
        .await
        .unwrap();
    redis.store.delete(&record.id_hash()).await.unwrap();
    let hex = record.id_hash().to_hex();
    // An update names the version it left, so caches at that version keep
    // their copies; other changes name the entry alone.
    let expected = [format!("{hex}:{version}"), hex.clone(), hex];
    for (what, expected) in ["update", "replace", "delete"].into_iter().zip(expected) {
        let message = tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .unwrap_or_else(|_| panic!("no announcement of the {what}"))
            .unwrap();
        assert_eq!(message.get_payload::<String>().unwrap(), expected, "{what}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), messages.next())
            .await
            .is_err(),
        "one announcement per change, none for a create"
    );

    let quiet = redis.store.clone().with_change_notifications(false);
    let other = conformance::sample_record(None);
    quiet.create(&other).await.unwrap();
    quiet.update(&other.id_hash(), &change).await.unwrap();
    quiet
        .replace(&other.id_hash(), other.version() + 1, Some(&marker(&other)))
        .await
        .unwrap();
    quiet.delete(&other.id_hash()).await.unwrap();
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
    assert!(redis
        .store
        .update(&record.id_hash(), &change)
        .await
        .unwrap()
        .is_some());
    let loaded = redis.store.load(&record.id_hash()).await.unwrap().unwrap();
    let loaded = loaded.session().expect("a session");
    assert_eq!(loaded.data().len(), 501);
    for (key, value) in &change.set {
        assert_eq!(loaded.data().get(key), Some(value), "{key}");
    }
}

#[tokio::test]
async fn a_damaged_entry_is_reported_corrupt_not_served() {
    let Some(redis) = SharedRedis::connect("damaged").await else {
        return;
    };
    let mut connection = connection(&redis).await;
    let id = SessionId::generate().hash();
    let key = record_key(&redis, &id);
    for fields in [
        vec![("kind", "s"), ("created", "soon")],
        vec![("kind", "f"), ("succ", "not a hash"), ("until", "1")],
        vec![("kind", "?")],
        vec![("user", "ann")],
    ] {
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (field, value) in &fields {
            hset.arg(*field).arg(*value);
        }
        let _: () = hset.query_async(&mut connection).await.unwrap();
        assert!(
            matches!(redis.store.load(&id).await, Err(StoreError::Corrupt(_))),
            "{fields:?}"
        );
    }
    // A string where a hash belongs: Redis refuses the read.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(redis.store.load(&id).await.is_err());
}

#[tokio::test]
async fn a_user_lock_has_a_lease_and_a_dropped_one_is_released() {
    let Some(redis) = SharedRedis::connect("user_lock").await else {
        return;
    };
    let mut connection = connection(&redis).await;
    let lock = redis.store.lock_user("ann").await.unwrap();
    let key = redis
        .keys()
        .into_iter()
        .find(|k| k.ends_with(":lock"))
        .expect("a lock key");
    let lease: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((1..=10_000).contains(&lease), "lease {lease} ms");

    // Dropped without a release (a cancelled request): a spawned task
    // releases it well before the lease would.
    drop(lock);
    let start = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(1), redis.store.lock_user("ann"))
        .await
        .expect("a dropped lock is released before its lease lapses")
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    again.release().await;
    assert!(!redis.keys().iter().any(|k| k.ends_with(":lock")));
}

#[tokio::test]
async fn waiting_for_a_user_lock_is_bounded_by_the_timeout() {
    let Some(redis) = SharedRedis::connect("lock_wait").await else {
        return;
    };
    let impatient = redis.store.clone().with_timeout(Duration::from_millis(200));
    let held = redis.store.lock_user("ann").await.unwrap();
    let start = Instant::now();
    assert!(matches!(
        impatient.lock_user("ann").await,
        Err(StoreError::Timeout)
    ));
    assert!(start.elapsed() < Duration::from_millis(600));
    held.release().await;
    impatient.lock_user("ann").await.unwrap().release().await;
    assert!(!redis.keys().iter().any(|k| k.ends_with(":lock")));
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
    let warm_up = common::send(&app, "POST", "/login/warm-up", None).await;
    common::send(&app, "POST", "/logout", warm_up.token().as_deref()).await;

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

    // A login (lock, move, index, unlock) is the expensive step, and rare.
    let mut signed_in = None;
    let login = trips
        .during(async {
            let reply = common::send(&app, "POST", "/login/ann", Some(&token)).await;
            assert_eq!(reply.status, StatusCode::OK);
            signed_in = reply.token();
        })
        .await;
    assert!(login.len() <= 8, "a login took {login:?}");
    let logout = trips
        .during(async {
            let reply = common::send(&app, "POST", "/logout", signed_in.as_deref()).await;
            assert_eq!(reply.status, StatusCode::OK);
        })
        .await;
    assert!(logout.len() <= 3, "a logout took {logout:?}");

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
         logout {logout:?}, cached read {again:?}"
    );
}

#[tokio::test]
async fn a_refused_login_leaves_no_lock_behind() {
    let Some(redis) = SharedRedis::connect("refused_login").await else {
        return;
    };
    let layer = SessionLayer::new(redis.store.clone(), Key::generate())
        .with_session_limit(1, OnLimit::RejectLogin);
    let app = common::app(layer);
    let first = common::send(&app, "POST", "/login/ann", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let second = common::send(&app, "POST", "/login/ann", None).await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.body);
    assert!(!redis.keys().iter().any(|k| k.ends_with(":lock")));
}

/// Versions of 10^14 and more, and past 2^53, are returned and announced
/// exactly as stored (read as a Lua number, a double, they would print as
/// "1e+14", which no cache reads, and round past 2^53).
#[tokio::test]
async fn large_versions_are_returned_and_announced_exactly() {
    let Some(redis) = SharedRedis::connect("large_versions").await else {
        return;
    };
    let mut messages = change_messages(&redis).await;
    let change = Change {
        set: vec![("k".into(), json!(1))],
        ..Change::default()
    };
    for start in [99_999_999_999_999, (1 << 54) + 1] {
        let mut parts = conformance::sample_record(None).into_parts();
        parts.version = start;
        let record = SessionRecord::from_parts(parts);
        redis.store.create(&record).await.unwrap();
        let version = redis
            .store
            .update(&record.id_hash(), &change)
            .await
            .unwrap();
        let stored = redis.store.load(&record.id_hash()).await.unwrap().unwrap();
        let stored = stored.session().unwrap().version();
        assert_eq!(stored, start + 1);
        assert_eq!(version, Some(stored), "the version returned");
        let message = tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .expect("an announcement of the update")
            .unwrap();
        assert_eq!(
            message.get_payload::<String>().unwrap(),
            format!("{}:{stored}", record.id_hash().to_hex()),
            "the version announced"
        );
    }
}
