//! Redis outages: a frozen server, a stopped one, a black hole, a closed
//! port. Requests that need the store get `503` within the timeout, nothing
//! waits longer, no one is ever served as someone else, and service comes
//! back by itself when Redis does.
//!
//! Each test runs a private `redis-server` (or none at all), never the
//! shared one.
#![cfg(feature = "redis")]

mod common;
mod redis_common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::{login_as as login, send, whoami_with as whoami};
use http::StatusCode;
use redis_common::{eventually, free_port, PrivateRedis};
use tower_session_guard::store::{CachedStore, RedisStore};
use tower_session_guard::{Key, SessionLayer};

/// Sends a request and checks it failed with 503 within `limit`.
async fn unavailable_within(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    limit: Duration,
) {
    let start = Instant::now();
    let reply = send(app, method, uri, token).await;
    let took = start.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{method} {uri}: {}",
        reply.body
    );
    assert!(
        took < limit,
        "{method} {uri} took {took:?}, more than {limit:?}"
    );
    assert!(!reply.clears_cookie(), "an outage must not sign anyone out");
}

#[tokio::test]
async fn a_frozen_redis_answers_503_within_the_timeout_and_service_resumes() {
    let Some(redis) = PrivateRedis::start("frozen_redis") else {
        return;
    };
    let timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .with_timeout(timeout);
    let app = common::app(SessionLayer::new(store, Key::generate()));
    let ann = login(&app, "ann").await;
    let bob = login(&app, "bob").await;
    send(&app, "POST", "/set/color/blue", Some(&ann)).await;

    redis.freeze();
    let limit = timeout + Duration::from_millis(400);
    unavailable_within(&app, "GET", "/whoami", Some(&ann), limit).await;
    unavailable_within(&app, "POST", "/set/color/red", Some(&bob), limit).await;
    unavailable_within(&app, "POST", "/login/carl", None, limit).await;
    unavailable_within(&app, "GET", "/count", None, limit).await;

    redis.thaw();
    let back = eventually(Duration::from_secs(10), || async {
        whoami(&app, &ann).await.body == "ann"
    })
    .await;
    assert!(
        back.is_some(),
        "service did not resume after Redis came back"
    );
    assert_eq!(whoami(&app, &bob).await.body, "bob");
    assert_eq!(
        send(&app, "GET", "/get/color", Some(&ann)).await.body,
        "blue"
    );
}

#[tokio::test]
async fn a_stopped_redis_answers_503_and_sessions_survive_its_restart() {
    let Some(mut redis) = PrivateRedis::start("stopped_redis") else {
        return;
    };
    // The default timeout: 2 seconds.
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(store.timeout(), Duration::from_secs(2));
    let app = common::app(SessionLayer::new(store, Key::generate()));
    let ann = login(&app, "ann").await;
    send(&app, "POST", "/set/color/blue", Some(&ann)).await;

    redis.stop_saving();
    let limit = Duration::from_millis(2_600);
    unavailable_within(&app, "GET", "/whoami", Some(&ann), limit).await;
    unavailable_within(&app, "POST", "/login/bob", None, limit).await;

    redis.launch();
    let back = eventually(Duration::from_secs(10), || async {
        whoami(&app, &ann).await.body == "ann"
    })
    .await;
    assert!(back.is_some(), "service did not resume after the restart");
    assert_eq!(
        send(&app, "GET", "/get/color", Some(&ann)).await.body,
        "blue",
        "the session from before the outage kept its data"
    );
    assert_eq!(
        send(&app, "POST", "/login/bob", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_default_timeout_bounds_requests_to_a_black_hole() {
    // Accepts connections (the kernel does) but never answers.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", hole.local_addr().unwrap());
    let store = RedisStore::from_client(redis::Client::open(url.as_str()).unwrap()).unwrap();
    let app = common::app(SessionLayer::new(store, Key::generate()));
    let start = Instant::now();
    unavailable_within(&app, "GET", "/count", None, Duration::from_millis(2_600)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(1_400),
        "gave up after {:?}, before the timeout: nothing refused the connection",
        start.elapsed()
    );

    let connect = Instant::now();
    assert!(RedisStore::connect(&url).await.is_err());
    assert!(connect.elapsed() < Duration::from_millis(2_600));
    drop(hole);
}

#[tokio::test]
async fn a_closed_port_answers_503_without_hanging() {
    let url = format!("redis://127.0.0.1:{}", free_port(false));
    let start = Instant::now();
    assert!(RedisStore::connect(&url).await.is_err());
    assert!(start.elapsed() < Duration::from_millis(2_600));

    // An application may start while Redis is down: it answers 503 until then.
    let store = RedisStore::from_client(redis::Client::open(url.as_str()).unwrap()).unwrap();
    let app = common::app(SessionLayer::new(store, Key::generate()));
    unavailable_within(&app, "GET", "/count", None, Duration::from_millis(2_600)).await;
}

#[tokio::test]
async fn a_cache_is_bypassed_while_redis_is_down_and_resumes_after() {
    let Some(mut redis) = PrivateRedis::start("cache_outage") else {
        return;
    };
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let cache = CachedStore::new(store, 1_000);
    assert!(
        eventually(Duration::from_secs(5), || async { cache.is_caching() })
            .await
            .is_some()
    );
    let app = common::app(SessionLayer::new(cache.clone(), Key::generate()));
    let ann = login(&app, "ann").await;
    assert_eq!(whoami(&app, &ann).await.body, "ann");
    assert_eq!(whoami(&app, &ann).await.body, "ann");

    // A frozen server: the feed's probe notices within about two seconds,
    // and from then on the cached copy is not served.
    redis.freeze();
    assert!(
        eventually(Duration::from_secs(4), || async { !cache.is_caching() })
            .await
            .is_some(),
        "the change feed did not notice the frozen server"
    );
    unavailable_within(&app, "GET", "/whoami", Some(&ann), Duration::from_secs(1)).await;
    redis.thaw();
    assert!(eventually(Duration::from_secs(10), || async {
        whoami(&app, &ann).await.body == "ann"
    })
    .await
    .is_some());

    // A stopped server: the feed's connection closes at once.
    assert!(
        eventually(Duration::from_secs(5), || async { cache.is_caching() })
            .await
            .is_some()
    );
    assert_eq!(whoami(&app, &ann).await.body, "ann");
    redis.stop_saving();
    assert!(
        eventually(Duration::from_secs(1), || async { !cache.is_caching() })
            .await
            .is_some()
    );
    unavailable_within(&app, "GET", "/whoami", Some(&ann), Duration::from_secs(1)).await;
    redis.launch();
    assert!(eventually(Duration::from_secs(10), || async {
        cache.is_caching() && whoami(&app, &ann).await.body == "ann"
    })
    .await
    .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_is_served_as_another_user_while_redis_flaps() {
    let Some(redis) = PrivateRedis::start("flapping_redis") else {
        return;
    };
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let app = common::app(SessionLayer::new(store, Key::generate()));
    let mut users = Vec::new();
    for i in 0..6 {
        let user = format!("user{i}");
        let token = login(&app, &user).await;
        users.push((user, token));
    }

    let stop_at = Instant::now() + Duration::from_millis(2_500);
    let clients: Vec<_> = users
        .iter()
        .cloned()
        .map(|(user, token)| {
            let app = app.clone();
            tokio::spawn(async move {
                let (mut served, mut refused) = (0, 0);
                while Instant::now() < stop_at {
                    let reply = whoami(&app, &token).await;
                    match reply.status {
                        StatusCode::OK => {
                            assert_eq!(reply.body, user, "served as someone else");
                            served += 1;
                        }
                        StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (served, refused)
            })
        })
        .collect();
    let redis = Arc::new(redis);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.freeze();
        tokio::time::sleep(Duration::from_millis(400)).await;
        redis.thaw();
    }
    let (mut served, mut refused) = (0, 0);
    for client in clients {
        let (s, r) = client.await.unwrap();
        served += s;
        refused += r;
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    for (user, token) in &users {
        let back = eventually(Duration::from_secs(10), || async {
            whoami(&app, token).await.body == *user
        })
        .await;
        assert!(back.is_some());
    }
}
