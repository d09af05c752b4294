//! `RedisStore` and `CachedStore<RedisStore>` on a real three-node Redis
//! Cluster of private `redis-server` processes: every script must touch
//! keys of one slot only, or Cluster refuses it.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;
mod redis_common;

use std::time::{Duration, Instant};

use common::send;
use http::StatusCode;
use redis_common::{eventually, PrivateRedis};
use tower_session_guard::store::{conformance, CachedStore, RedisStore};
use tower_session_guard::{Key, OnLimit, SessionLayer, SessionStore};

/// Three cluster nodes sharing the 16384 slots, no replicas.
fn start_cluster(test: &str) -> Option<Vec<PrivateRedis>> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        nodes.push(PrivateRedis::start_with(
            test,
            true,
            args.iter().map(|a| (*a).to_owned()).collect(),
        )?);
    }
    let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
    for (node, (first, last)) in nodes.iter().zip(ranges) {
        let mut connection = redis::Client::open(node.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(first)
            .arg(last)
            .query(&mut connection)
            .unwrap();
        for other in &nodes {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(other.port)
                .query(&mut connection)
                .unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &nodes {
        let mut connection = redis::Client::open(node.url())
            .unwrap()
            .get_connection()
            .unwrap();
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut connection)
                .unwrap();
            if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Some(nodes)
}

fn keys_per_node(nodes: &[PrivateRedis]) -> Vec<i64> {
    nodes
        .iter()
        .map(|node| {
            let mut connection = redis::Client::open(node.url())
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("DBSIZE").query(&mut connection).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_keep_their_contract_on_redis_cluster() {
    let Some(nodes) = start_cluster("redis_cluster") else {
        return;
    };
    // One node's URL is enough: Cluster mode is detected.
    let store = RedisStore::connect(&nodes[1].url()).await.unwrap();
    assert!(format!("{store:?}").contains("cluster"), "{store:?}");
    conformance::run(&store).await;

    let cached = CachedStore::new(store.clone(), 10_000);
    assert!(
        eventually(Duration::from_secs(5), || async { cached.is_caching() })
            .await
            .is_some()
    );
    conformance::run(&cached).await;

    // Sessions spread over the nodes: this is a real cluster.
    for _ in 0..30 {
        store
            .create(&conformance::sample_record(None))
            .await
            .unwrap();
    }
    let spread = keys_per_node(&nodes);
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "keys per node: {spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_sessions_through_redis_cluster() {
    let Some(nodes) = start_cluster("redis_cluster_instances") else {
        return;
    };
    let seeds = nodes
        .iter()
        .map(PrivateRedis::url)
        .collect::<Vec<_>>()
        .join(",");
    let key = Key::generate();
    let mut apps = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..2 {
        let cache = CachedStore::new(RedisStore::connect(&seeds).await.unwrap(), 1_000);
        assert!(
            eventually(Duration::from_secs(5), || async { cache.is_caching() })
                .await
                .is_some()
        );
        let layer =
            SessionLayer::new(cache, key.clone()).with_session_limit(2, OnLimit::EvictLeastRecent);
        admins.push(layer.sessions());
        apps.push(common::app(layer));
    }
    let (a, b) = (&apps[0], &apps[1]);
    let reply = send(a, "POST", "/login/ann", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let token = reply.token().unwrap();
    assert_eq!(send(b, "GET", "/whoami", Some(&token)).await.body, "ann");
    assert_eq!(send(a, "GET", "/whoami", Some(&token)).await.body, "ann");

    assert_eq!(
        send(b, "POST", "/logout", Some(&token)).await.status,
        StatusCode::OK
    );
    assert!(eventually(Duration::from_millis(100), || async {
        send(a, "GET", "/whoami", Some(&token)).await.body == "anonymous"
    })
    .await
    .is_some());

    for i in 0..6 {
        let app = if i % 2 == 0 { a } else { b };
        assert_eq!(
            send(app, "POST", "/login/bob", None).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(admins[0].list("bob").await.unwrap().len(), 2);
    assert_eq!(admins[1].revoke_user("bob").await.unwrap(), 2);
}
