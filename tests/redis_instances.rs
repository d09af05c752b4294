//! Two application instances sharing one Redis, each with its own
//! connection and its own in-memory cache, driven through axum routers.
#![cfg(feature = "redis")]

mod common;
mod redis_common;

use std::time::Duration;

use axum::Router;
use common::{send, sign_in, who_is, Reply};
use futures_util::future::join_all;
use http::StatusCode;
use redis_common::{eventually, SharedRedis};
use tower_session_guard::store::IdHash;
use tower_session_guard::store::{CachedStore, RedisStore};
use tower_session_guard::{Key, OnLimit, SessionAdmin, SessionLayer, SessionStore};

/// One instance: its router, its admin handle, its cache.
struct Instance {
    app: Router,
    admin: SessionAdmin,
    cache: CachedStore<RedisStore>,
}

/// Two instances on one Redis, sharing the signing key (as a deployment
/// would) and nothing else. `configure` sets both layers up alike.
async fn two_instances(
    test: &str,
    configure: impl Fn(SessionLayer) -> SessionLayer,
) -> Option<(Instance, Instance, SharedRedis)> {
    two_different_instances(test, &configure, &configure).await
}

/// Like [`two_instances`], with each layer set up its own way.
async fn two_different_instances(
    test: &str,
    configure_a: &dyn Fn(SessionLayer) -> SessionLayer,
    configure_b: &dyn Fn(SessionLayer) -> SessionLayer,
) -> Option<(Instance, Instance, SharedRedis)> {
    let redis = SharedRedis::connect(test).await?;
    let key = Key::generate();
    let mut instances = Vec::new();
    let stores = [redis.store.clone(), redis.another_instance().await];
    for (store, configure) in stores.into_iter().zip([configure_a, configure_b]) {
        let cache = CachedStore::new(store, 10_000);
        let layer = configure(SessionLayer::new(cache.clone(), key.clone()));
        instances.push(Instance {
            app: common::app(layer.clone()),
            admin: layer.sessions(),
            cache,
        });
    }
    for instance in &instances {
        assert!(
            eventually(Duration::from_secs(5), || async {
                instance.cache.is_caching()
            })
            .await
            .is_some(),
            "the change feed connects"
        );
    }
    let b = instances.pop().unwrap();
    let a = instances.pop().unwrap();
    Some((a, b, redis))
}

/// `count` logins of `user` at once, alternating between the instances.
async fn race_logins(a: &Instance, b: &Instance, user: &str, count: usize) -> Vec<Reply> {
    let path = format!("/login/{user}");
    join_all((0..count).map(|i| {
        let app = if i % 2 == 0 { &a.app } else { &b.app };
        send(app, "POST", &path, None)
    }))
    .await
}

#[tokio::test]
async fn a_login_on_one_instance_is_signed_in_on_the_other() {
    let Some((a, b, _redis)) = two_instances("login_across", |l| l).await else {
        return;
    };
    let token = sign_in(&a.app, "ann").await;
    assert_eq!(who_is(&b.app, &token).await.body, "ann");

    let set = send(&a.app, "POST", "/set/color/blue", Some(&token)).await;
    assert_eq!(set.status, StatusCode::OK);
    // B held a copy from the request above; the change reaches it over
    // pub/sub within milliseconds.
    let took = eventually(Duration::from_millis(100), || async {
        send(&b.app, "GET", "/get/color", Some(&token)).await.body == "blue"
    })
    .await;
    assert!(took.is_some(), "B still reads no color after 100 ms");
    send(&a.app, "POST", "/set/color/green", Some(&token)).await;
    let took = eventually(Duration::from_millis(100), || async {
        send(&b.app, "GET", "/get/color", Some(&token)).await.body == "green"
    })
    .await;
    assert!(took.is_some(), "B still reads the old value after 100 ms");
}

#[tokio::test]
async fn a_logout_on_one_instance_signs_out_on_the_other_within_100_ms() {
    let Some((a, b, _redis)) = two_instances("logout_across", |l| l).await else {
        return;
    };
    let token = sign_in(&a.app, "ann").await;
    // A serves the session from its cache.
    assert_eq!(who_is(&a.app, &token).await.body, "ann");
    assert_eq!(who_is(&a.app, &token).await.body, "ann");

    common::logout_reaches_the_other_instance(&b.app, &a.app, &token).await;
}

#[tokio::test]
async fn a_revocation_on_one_instance_signs_out_on_the_other_within_100_ms() {
    let Some((a, b, _redis)) = two_instances("revoke_across", |l| l).await else {
        return;
    };
    let first = sign_in(&a.app, "ann").await;
    let second = sign_in(&a.app, "ann").await;
    assert_eq!(who_is(&a.app, &first).await.body, "ann");
    assert_eq!(who_is(&a.app, &second).await.body, "ann");

    let listed = b.admin.list("ann").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(b.admin.revoke(&listed[0].handle).await.unwrap());
    assert!(eventually(Duration::from_millis(100), || async {
        let mut anonymous = 0;
        for token in [&first, &second] {
            if who_is(&a.app, token).await.body == "anonymous" {
                anonymous += 1;
            }
        }
        anonymous == 1
    })
    .await
    .is_some());

    assert_eq!(b.admin.revoke_user("ann").await.unwrap(), 1);
    assert!(eventually(Duration::from_millis(100), || async {
        who_is(&a.app, &first).await.body == "anonymous"
            && who_is(&a.app, &second).await.body == "anonymous"
    })
    .await
    .is_some());
}

#[tokio::test]
async fn a_lost_invalidation_is_bounded_by_the_cache_ttl() {
    let Some(redis) = SharedRedis::connect("lost_invalidation").await else {
        return;
    };
    let key = Key::generate();
    let ttl = Duration::from_millis(300);
    let a_cache = CachedStore::new(redis.store.clone(), 1_000).with_ttl(ttl);
    assert!(
        eventually(Duration::from_secs(5), || async { a_cache.is_caching() })
            .await
            .is_some()
    );
    let a = common::app(SessionLayer::new(a_cache, key.clone()));
    // B announces nothing: as if every message about its changes were lost.
    let quiet = redis
        .another_instance()
        .await
        .with_change_notifications(false);
    let b = common::app(SessionLayer::new(quiet, key));

    let token = sign_in(&a, "ann").await;
    assert_eq!(who_is(&a, &token).await.body, "ann");
    assert_eq!(
        send(&b, "POST", "/logout", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        who_is(&a, &token).await.body,
        "ann",
        "A serves its copy: it heard nothing"
    );
    assert!(
        eventually(ttl + Duration::from_millis(200), || async {
            who_is(&a, &token).await.body == "anonymous"
        })
        .await
        .is_some(),
        "A kept serving a logged-out session past its cache TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_session_limit_holds_when_20_logins_race_on_both_instances() {
    let Some((a, b, _redis)) = two_instances("limit_race", |l| {
        l.with_session_limit(3, OnLimit::EvictLeastRecent)
    })
    .await
    else {
        return;
    };
    let replies = race_logins(&a, &b, "ann", 20).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let tokens: Vec<String> = replies.iter().map(|r| r.token().unwrap()).collect();

    assert_eq!(a.admin.list("ann").await.unwrap().len(), 3);
    assert_eq!(b.admin.list("ann").await.unwrap().len(), 3);
    let mut signed_in = 0;
    for (i, token) in tokens.iter().enumerate() {
        let app = if i % 2 == 0 { &b.app } else { &a.app };
        if who_is(app, token).await.body == "ann" {
            signed_in += 1;
        }
    }
    assert_eq!(signed_in, 3, "exactly the limit of tokens still work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_limit_refuses_all_but_the_limit_of_20_racing_logins() {
    let Some((a, b, _redis)) = two_instances("limit_reject_race", |l| {
        l.with_session_limit(3, OnLimit::RejectLogin)
    })
    .await
    else {
        return;
    };
    let replies = race_logins(&a, &b, "ann", 20).await;
    let accepted = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .count();
    assert_eq!((accepted, refused), (3, 17));
    assert_eq!(a.admin.list("ann").await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_writes_to_one_session_across_instances_are_all_kept() {
    let Some((a, b, redis)) = two_instances("concurrent_writes", |l| l).await else {
        return;
    };
    let token = sign_in(&a.app, "ann").await;
    let replies = join_all((0..200).map(|i| {
        let app = if i % 2 == 0 { &a.app } else { &b.app };
        let uri = format!("/set/k{i}/v{i}");
        let token = token.clone();
        async move { send(app, "POST", &uri, Some(&token)).await }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }

    // Every write is in Redis at once...
    let listed = a.admin.list("ann").await.unwrap();
    assert_eq!(listed.len(), 1);
    let hash = IdHash::from_hex(&listed[0].handle.to_string()).unwrap();
    let entry = redis.store.load(&hash).await.unwrap().unwrap();
    let record = entry.session().expect("a session");
    for i in 0..200 {
        assert_eq!(
            record.data().get(&format!("k{i}")),
            Some(&serde_json::json!(format!("v{i}"))),
            "k{i} lost"
        );
    }
    // ...and both instances read them all once their copies are dropped.
    for instance in [&a, &b] {
        let all_there = eventually(Duration::from_secs(1), || async {
            for i in (0..200).step_by(7) {
                let reply = send(&instance.app, "GET", &format!("/get/k{i}"), Some(&token)).await;
                if reply.body != format!("v{i}") {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(all_there.is_some());
    }
}

#[tokio::test]
async fn a_renewal_on_one_instance_is_followed_on_the_other_within_100_ms() {
    // Only B renews ids: whatever A does with the old id, it learned from B.
    let Some((a, b, _redis)) = two_different_instances("renewal_across", &|l| l, &|l| {
        l.with_renewal_interval(Duration::from_millis(200), Duration::from_secs(10))
    })
    .await
    else {
        return;
    };
    let old = sign_in(&a.app, "ann").await;
    assert_eq!(who_is(&a.app, &old).await.body, "ann");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A serves the old id from its copy and keeps it (A renews nothing).
    let kept = who_is(&a.app, &old).await;
    assert_eq!(kept.body, "ann");
    assert_eq!(kept.token(), None);

    let renewed = who_is(&b.app, &old).await;
    assert_eq!(renewed.body, "ann");
    let new = renewed.token().expect("B renewed the id");
    assert_ne!(new, old);
    // A drops its copy of the old id, finds the forwarding entry and hands
    // out the same new id.
    let followed = eventually(Duration::from_millis(100), || async {
        let reply = who_is(&a.app, &old).await;
        reply.body == "ann" && reply.token().as_deref() == Some(new.as_str())
    })
    .await;
    assert!(
        followed.is_some(),
        "A still serves the renewed id as it was"
    );
    assert_eq!(who_is(&a.app, &new).await.body, "ann");
}

#[tokio::test]
async fn an_eviction_on_one_instance_signs_out_on_the_other_within_100_ms() {
    let Some((a, b, _redis)) = two_instances("evict_across", |l| {
        l.with_session_limit(1, OnLimit::EvictLeastRecent)
    })
    .await
    else {
        return;
    };
    let first = sign_in(&a.app, "ann").await;
    assert_eq!(who_is(&a.app, &first).await.body, "ann");
    assert_eq!(who_is(&a.app, &first).await.body, "ann");
    let second = sign_in(&b.app, "ann").await;
    assert!(eventually(Duration::from_millis(100), || async {
        who_is(&a.app, &first).await.body == "anonymous"
    })
    .await
    .is_some());
    assert_eq!(who_is(&a.app, &second).await.body, "ann");
}

#[tokio::test]
async fn a_login_on_one_instance_retires_the_old_id_on_the_other_within_100_ms() {
    let Some((a, b, _redis)) = two_instances("login_move_across", |l| l).await else {
        return;
    };
    // An anonymous session with data, served by A from its copy.
    let anonymous = send(&a.app, "GET", "/count", None).await.token().unwrap();
    assert_eq!(
        send(&a.app, "GET", "/read", Some(&anonymous)).await.body,
        "1"
    );
    assert_eq!(
        send(&a.app, "GET", "/read", Some(&anonymous)).await.body,
        "1"
    );

    let signed_in = send(&b.app, "POST", "/login/ann", Some(&anonymous)).await;
    let token = signed_in.token().unwrap();
    assert_ne!(token, anonymous);
    assert!(eventually(Duration::from_millis(100), || async {
        send(&a.app, "GET", "/read", Some(&anonymous)).await.body == "none"
    })
    .await
    .is_some());
    assert_eq!(send(&a.app, "GET", "/read", Some(&token)).await.body, "1");
    assert_eq!(who_is(&a.app, &token).await.body, "ann");
}
