//! The SQL stores through real axum routers: two instances (each with its
//! own pool and layer) over one database act as one, sessions survive a
//! restart, concurrent writes are all kept, a stopped PostgreSQL gives 503
//! and then recovers, and the tables hold no raw token or id.
#![cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]

mod common;
mod sql_common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::{send, sign_in as login, who_is as whoami};
use futures_util::future::join_all;
use http::StatusCode;
#[allow(unused_imports)]
use sql_common::{eventually, DropTables, SqliteFile};
use tower_session_guard::{Key, OnLimit, SessionAdmin, SessionLayer, SessionStore};

/// One database the tests run against, and how a new instance opens it.
enum Db {
    #[cfg(feature = "postgres")]
    Postgres { prefix: String, _tables: DropTables },
    #[cfg(feature = "sqlite")]
    Sqlite { file: SqliteFile },
    #[cfg(feature = "mysql")]
    MySql { prefix: String, _tables: DropTables },
}

impl Db {
    fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { .. } => "PostgreSQL",
            #[cfg(feature = "sqlite")]
            Self::Sqlite { .. } => "SQLite",
            #[cfg(feature = "mysql")]
            Self::MySql { .. } => "MySQL",
        }
    }

    /// A store on a pool of its own, as a new instance (or a restarted
    /// process) opens it, with its tables migrated.
    async fn open(&self) -> Arc<dyn SessionStore> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { prefix, .. } => {
                open_shared::<sqlx::Postgres>(&sql_common::postgres_url(), prefix).await
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite { file } => {
                let store = tower_session_guard::SqliteStore::new(file.pool().await);
                store.migrate().await.unwrap();
                Arc::new(store)
            }
            #[cfg(feature = "mysql")]
            Self::MySql { prefix, .. } => {
                open_shared::<sqlx::MySql>(&sql_common::mysql_url(), prefix).await
            }
        }
    }

    /// Every row of every table of the store, as the database prints it
    /// (binary columns as hex), plus the raw bytes of a SQLite file.
    async fn dump(&self) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { prefix, .. } => {
                let pool = sqlx::PgPool::connect(&sql_common::postgres_url())
                    .await
                    .unwrap();
                let mut dump = String::new();
                for table in sql_common::tables(prefix) {
                    let rows: Vec<String> =
                        sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                            .fetch_all(&pool)
                            .await
                            .unwrap();
                    dump.push_str(&rows.join("\n"));
                    dump.push('\n');
                }
                dump
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite { file } => {
                let mut dump = String::new();
                for entry in std::fs::read_dir(&file.dir).unwrap() {
                    let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                    dump.push_str(&String::from_utf8_lossy(&bytes));
                    // Binary ids would show as bytes, not text: add them as hex.
                    dump.extend(bytes.iter().map(|b| format!("{b:02x}")));
                }
                dump
            }
            #[cfg(feature = "mysql")]
            Self::MySql { prefix, .. } => {
                let pool = sqlx::MySqlPool::connect(&sql_common::mysql_url())
                    .await
                    .unwrap();
                let mut dump = String::new();
                let t = sql_common::tables(prefix);
                for query in [
                    format!(
                        "SELECT CAST(CONCAT_WS('|', HEX(id_hash), kind, user_id, data, ip, \
                         user_agent, binding, HEX(successor), HEX(sealed_id)) AS CHAR) FROM {}",
                        t[0]
                    ),
                    format!(
                        "SELECT CAST(CONCAT_WS('|', HEX(user_key), HEX(id_hash), ends_at) AS CHAR) \
                         FROM {}",
                        t[1]
                    ),
                ] {
                    let rows: Vec<String> =
                        sqlx::query_scalar(&query).fetch_all(&pool).await.unwrap();
                    dump.push_str(&rows.join("\n"));
                    dump.push('\n');
                }
                dump
            }
        }
    }
}

/// A store on the shared server at `url` with a pool of its own, as a new
/// instance (or a restarted process) opens it, its tables migrated.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn open_shared<DB: tower_session_guard::store::sql::SqlBackend>(
    url: &str,
    prefix: &str,
) -> Arc<dyn SessionStore> {
    let pool = sqlx::Pool::<DB>::connect(url).await.unwrap();
    let store = tower_session_guard::store::sql::SqlStore::new(pool).with_table_prefix(prefix);
    store.migrate().await.unwrap();
    Arc::new(store)
}

/// Every database available to this run, each under a fresh prefix (or
/// file). Missing servers are skipped (or fail, with `REQUIRE_*=1`).
#[allow(clippy::vec_init_then_push)] // which pushes run depends on the features
async fn databases(test: &str) -> Vec<Db> {
    let mut databases = Vec::new();
    #[cfg(feature = "postgres")]
    if let Some((store, tables)) = sql_common::postgres_store(test).await {
        databases.push(Db::Postgres {
            prefix: store.table_prefix().to_owned(),
            _tables: tables,
        });
    }
    #[cfg(feature = "sqlite")]
    databases.push(Db::Sqlite {
        file: SqliteFile::new(test),
    });
    #[cfg(feature = "mysql")]
    if let Some((store, tables)) = sql_common::mysql_store(test).await {
        databases.push(Db::MySql {
            prefix: store.table_prefix().to_owned(),
            _tables: tables,
        });
    }
    databases
}

/// One application instance: a router and its admin handle.
struct Instance {
    app: Router,
    admin: SessionAdmin,
}

fn instance(
    store: Arc<dyn SessionStore>,
    key: &Key,
    configure: fn(SessionLayer) -> SessionLayer,
) -> Instance {
    let layer = configure(SessionLayer::new(store, key.clone()));
    Instance {
        app: common::app(layer.clone()),
        admin: layer.sessions(),
    }
}

/// Two instances on `db`, each with its own pool, sharing the signing key.
async fn two_instances(
    db: &Db,
    configure: fn(SessionLayer) -> SessionLayer,
) -> (Instance, Instance) {
    let key = Key::generate();
    (
        instance(db.open().await, &key, configure),
        instance(db.open().await, &key, configure),
    )
}

#[tokio::test]
async fn two_instances_share_logins_and_revocations() {
    for db in databases("sql_share").await {
        let (a, b) = two_instances(&db, |l| l).await;
        let token = login(&a.app, "ann").await;
        assert_eq!(whoami(&b.app, &token).await.body, "ann", "{}", db.name());
        let set = send(&b.app, "POST", "/set/color/blue", Some(&token)).await;
        assert_eq!(set.status, StatusCode::OK);
        let read = send(&a.app, "GET", "/get/color", Some(&token)).await;
        assert_eq!(read.body, "blue", "{}", db.name());

        let listed = b.admin.list("ann").await.unwrap();
        assert_eq!(listed.len(), 1, "{}", db.name());
        assert!(b.admin.revoke(&listed[0].handle).await.unwrap());
        assert_eq!(
            whoami(&a.app, &token).await.body,
            "anonymous",
            "{}: a session revoked on B still worked on A",
            db.name()
        );
        assert!(a.admin.list("ann").await.unwrap().is_empty());

        let token = login(&b.app, "bob").await;
        let logout = send(&a.app, "POST", "/logout", Some(&token)).await;
        assert_eq!(logout.status, StatusCode::OK);
        assert_eq!(
            whoami(&b.app, &token).await.body,
            "anonymous",
            "{}",
            db.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_logins_at_a_limit_of_3_leave_exactly_3() {
    let logs = common::LogCapture::install();
    for db in databases("sql_limit").await {
        let (a, b) =
            two_instances(&db, |l| l.with_session_limit(3, OnLimit::EvictLeastRecent)).await;
        let replies = join_all((0..20).map(|i| {
            let app = if i % 2 == 0 { &a.app } else { &b.app };
            send(app, "POST", "/login/ann", None)
        }))
        .await;
        let signed_in = replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        let failed: Vec<_> = replies
            .iter()
            .filter(|r| r.status != StatusCode::OK)
            .map(|r| (r.status, r.body.clone()))
            .collect();
        assert_eq!(
            signed_in,
            20,
            "{}: every login succeeds, evicting: {failed:?}\n{}",
            db.name(),
            logs.text()
                .lines()
                .filter(|l| l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            a.admin.list("ann").await.unwrap().len(),
            3,
            "{}: the limit of 3 was not kept",
            db.name()
        );
        let tokens: Vec<String> = replies.iter().map(|r| r.token().unwrap()).collect();
        let live = join_all(tokens.iter().map(|t| whoami(&b.app, t)))
            .await
            .iter()
            .filter(|r| r.body == "ann")
            .count();
        assert_eq!(live, 3, "{}", db.name());

        let (a, b) = two_instances(&db, |l| l.with_session_limit(3, OnLimit::RejectLogin)).await;
        let replies = join_all((0..20).map(|i| {
            let app = if i % 2 == 0 { &a.app } else { &b.app };
            send(app, "POST", "/login/bob", None)
        }))
        .await;
        let accepted = replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert_eq!(accepted, 3, "{}: RejectLogin let {accepted} in", db.name());
        assert_eq!(b.admin.list("bob").await.unwrap().len(), 3);
    }
}

#[tokio::test]
async fn a_session_survives_rebuilding_the_layer_and_the_pool() {
    for db in databases("sql_restart").await {
        let key = Key::generate();
        let first = instance(db.open().await, &key, |l| l);
        let token = login(&first.app, "ann").await;
        send(&first.app, "POST", "/set/cart/3-apples", Some(&token)).await;
        drop(first);

        let second = instance(db.open().await, &key, |l| l);
        assert_eq!(
            whoami(&second.app, &token).await.body,
            "ann",
            "{}",
            db.name()
        );
        let cart = send(&second.app, "GET", "/get/cart", Some(&token)).await;
        assert_eq!(cart.body, "3-apples", "{}", db.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_writes_to_distinct_keys_are_all_kept() {
    for db in databases("sql_writes").await {
        let (a, b) = two_instances(&db, |l| l).await;
        let token = login(&a.app, "ann").await;
        let replies = join_all((0..100).map(|i| {
            let app = if i % 2 == 0 { &a.app } else { &b.app };
            let uri = format!("/set/k{i}/v{i}");
            let token = token.clone();
            async move { send(app, "POST", &uri, Some(&token)).await }
        }))
        .await;
        for reply in &replies {
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{}: {}",
                db.name(),
                reply.body
            );
        }
        for i in 0..100 {
            let reply = send(&b.app, "GET", &format!("/get/k{i}"), Some(&token)).await;
            assert_eq!(reply.body, format!("v{i}"), "{}: k{i} lost", db.name());
        }
    }
}

#[tokio::test]
async fn the_tables_hold_no_raw_token_or_id() {
    for db in databases("sql_no_raw").await {
        let (a, _) = two_instances(&db, |l| {
            l.with_renewal_interval(Duration::from_millis(1), Duration::from_secs(10))
        })
        .await;
        let mut tokens = Vec::new();
        let anonymous = send(&a.app, "GET", "/count", None).await.token().unwrap();
        tokens.push(anonymous.clone());
        let signed_in = send(&a.app, "POST", "/login/zoe", Some(&anonymous))
            .await
            .token()
            .unwrap();
        tokens.push(signed_in.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Some(renewed) = send(&a.app, "GET", "/count", Some(&signed_in))
            .await
            .token()
        {
            tokens.push(renewed);
        }
        let regenerated = send(&a.app, "POST", "/regenerate", Some(tokens.last().unwrap()))
            .await
            .token()
            .unwrap();
        tokens.push(regenerated);

        let dump = db.dump().await;
        assert!(
            dump.contains("zoe"),
            "{}: the dump holds the rows",
            db.name()
        );
        for token in &tokens {
            for form in common::forbidden_forms(token) {
                assert!(
                    !dump.contains(&form),
                    "{}: raw id form {form:?} found in the tables",
                    db.name()
                );
            }
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    use tower_session_guard::store::{CachedStore, Change, PostgresStore};

    #[tokio::test]
    async fn cached_instances_drop_copies_through_listen_notify_within_100_ms() {
        let test = "sql_cached_pg";
        let Some((store, _tables)) = sql_common::postgres_store(test).await else {
            return;
        };
        let key = Key::generate();
        let mut instances = Vec::new();
        let another = sqlx::PgPool::connect(&sql_common::postgres_url())
            .await
            .unwrap();
        for store in [
            store.clone(),
            PostgresStore::new(another).with_table_prefix(store.table_prefix()),
        ] {
            let cache = CachedStore::new(store, 10_000);
            let connected =
                eventually(Duration::from_secs(5), || async { cache.is_caching() }).await;
            assert!(connected.is_some(), "the LISTEN feed connects");
            instances.push(instance(Arc::new(cache), &key, |l| l));
        }
        let (a, b) = (&instances[0], &instances[1]);
        let token = login(&a.app, "ann").await;
        // Both hold a copy now.
        assert_eq!(whoami(&a.app, &token).await.body, "ann");
        assert_eq!(whoami(&b.app, &token).await.body, "ann");
        assert_eq!(whoami(&a.app, &token).await.body, "ann");

        send(&b.app, "POST", "/set/color/blue", Some(&token)).await;
        let took = eventually(Duration::from_millis(100), || async {
            send(&a.app, "GET", "/get/color", Some(&token)).await.body == "blue"
        })
        .await;
        assert!(
            took.is_some(),
            "A still read no color 100 ms after B wrote it"
        );

        common::logout_reaches_the_other_instance(&b.app, &a.app, &token).await;
    }

    #[tokio::test]
    async fn a_cached_instance_answers_after_its_own_writes_from_its_copy() {
        let test = "sql_cached_own";
        let Some((store, _tables)) = sql_common::postgres_store(test).await else {
            return;
        };
        // Counts the loads reaching the database.
        let counted = common::FlakyStore::around(store.clone());
        let loads = Arc::clone(&counted.loads);
        let cache = CachedStore::new(counted, 10_000);
        let connected = eventually(Duration::from_secs(5), || async { cache.is_caching() }).await;
        assert!(connected.is_some(), "the LISTEN feed connects");
        let key = Key::generate();
        let a = instance(Arc::new(cache), &key, |l| l);
        let token = login(&a.app, "ann").await;
        send(&a.app, "POST", "/set/color/blue", Some(&token)).await;
        // The update's own announcement has come back by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = loads.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(
                send(&a.app, "GET", "/get/color", Some(&token)).await.body,
                "blue"
            );
            send(&a.app, "POST", "/set/size/9", Some(&token)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            send(&a.app, "GET", "/get/size", Some(&token)).await.body,
            "9"
        );
        assert_eq!(
            loads.load(Ordering::SeqCst),
            before,
            "requests after this instance's own writes went to the database"
        );

        // Another instance's write to another key reaches this one's copy.
        let another = sqlx::PgPool::connect(&sql_common::postgres_url())
            .await
            .unwrap();
        let b = instance(
            Arc::new(PostgresStore::new(another).with_table_prefix(store.table_prefix())),
            &key,
            |l| l,
        );
        send(&b.app, "POST", "/set/shape/round", Some(&token)).await;
        let seen = eventually(Duration::from_millis(100), || async {
            send(&a.app, "GET", "/get/shape", Some(&token)).await.body == "round"
        })
        .await;
        assert!(seen.is_some(), "A's copy hid B's write for 100 ms");
        assert_eq!(
            send(&a.app, "GET", "/get/size", Some(&token)).await.body,
            "9"
        );
    }

    /// The copy an update keeps current holds what the database holds,
    /// also for values `jsonb` would store differently if written as
    /// serde_json writes them (a float of 1e16 or more, `1e16`, comes back
    /// from `jsonb` as an integer).
    #[cfg(feature = "test-util")]
    #[tokio::test]
    async fn a_kept_copy_holds_what_the_database_holds() {
        use serde_json::json;
        use tower_session_guard::store::conformance;

        let test = "sql_cached_jsonb";
        let Some((store, _tables)) = sql_common::postgres_store(test).await else {
            return;
        };
        let cache = CachedStore::new(store.clone(), 100);
        let connected = eventually(Duration::from_secs(5), || async { cache.is_caching() }).await;
        assert!(connected.is_some(), "the LISTEN feed connects");
        let record = conformance::sample_record(None);
        let id = record.id_hash();
        assert!(cache.create(&record).await.unwrap());
        cache.load(&id).await.unwrap().unwrap();
        let change = Change {
            set: vec![("big".into(), json!(1e16)), ("float".into(), json!(2.5e17))],
            ..Change::default()
        };
        assert_eq!(cache.update(&id, &change).await.unwrap(), Some(1));
        // The update's own announcement has come back by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let copy = cache.load(&id).await.unwrap().unwrap();
        let stored = store.load(&id).await.unwrap().unwrap();
        assert_eq!(
            copy.session().unwrap().data(),
            stored.session().unwrap().data(),
            "the cache's copy differs from the stored session"
        );
    }

    #[tokio::test]
    async fn a_request_that_changes_nothing_writes_nothing() {
        let test = "sql_no_write";
        let Some((store, _tables)) = sql_common::postgres_store(test).await else {
            return;
        };
        let (pool, prefix) = (store.pool().clone(), store.table_prefix().to_owned());
        let app = instance(Arc::new(store), &Key::generate(), |l| l).app;
        let token = login(&app, "ann").await;
        send(&app, "POST", "/set/color/red", Some(&token)).await;
        // `xmin` is the transaction that last wrote the row.
        let row_state = || async {
            sqlx::query_as::<_, (String, i64)>(&format!(
                "SELECT xmin::text, version FROM {prefix}sessions WHERE user_id = 'ann'"
            ))
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let before = row_state().await;
        for uri in ["/whoami", "/get/color", "/read", "/noop"] {
            let reply = send(&app, "GET", uri, Some(&token)).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
        assert_eq!(
            row_state().await,
            before,
            "a read-only request wrote the row"
        );
        send(&app, "POST", "/set/color/blue", Some(&token)).await;
        assert_ne!(row_state().await, before, "a write reached the row");
    }

    #[tokio::test]
    async fn a_stopped_postgres_answers_503_within_the_timeout_and_service_resumes() {
        let Some(mut server) = sql_common::PrivatePostgres::start("sql_pg_outage") else {
            return;
        };
        let logs = common::LogCapture::install();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&server.url())
            .await
            .unwrap();
        let store = PostgresStore::new(pool).with_timeout(Duration::from_millis(500));
        store.migrate().await.unwrap();
        let app = instance(Arc::new(store), &Key::generate(), |l| l).app;
        let token = login(&app, "ann").await;
        send(&app, "POST", "/set/cart/2-pears", Some(&token)).await;

        server.stop();
        for (method, uri) in [
            ("GET", "/whoami"),
            ("POST", "/set/cart/3-pears"),
            ("GET", "/count"),
        ] {
            let start = Instant::now();
            let reply = send(&app, method, uri, Some(&token)).await;
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {uri} with the database down: {}",
                reply.body
            );
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{method} {uri} took {:?}",
                start.elapsed()
            );
            assert!(!reply.clears_cookie(), "an outage must not sign anyone out");
        }
        let fresh = send(&app, "POST", "/login/bob", None).await;
        assert_eq!(fresh.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            logs.text().contains("ERROR"),
            "the outage was logged at error:\n{}",
            logs.text()
        );

        server.launch();
        let back = eventually(Duration::from_secs(20), || async {
            whoami(&app, &token).await.body == "ann"
        })
        .await;
        assert!(
            back.is_some(),
            "service did not resume after the database came back"
        );
        let cart = send(&app, "GET", "/get/cart", Some(&token)).await;
        assert_eq!(
            cart.body, "2-pears",
            "the write refused during the outage was not saved"
        );
        assert!(!login(&app, "bob").await.is_empty());
    }
}
