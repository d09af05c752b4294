//! `PostgresStore`, `SqliteStore` and `MySqlStore` against real databases:
//! the store contract, the schema and its migrations, the delta, purging,
//! and what a dump of the tables holds.
#![cfg(feature = "test-util")]
#![cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]

mod sql_common;

use serde_json::json;
#[allow(unused_imports)]
use sql_common::SqliteFile;
use tower_session_guard::store::conformance;
use tower_session_guard::store::{Change, SessionRecord};
use tower_session_guard::SessionStore;

/// The tests of a backend on a shared server, under the names given:
/// `$store(test)` opens a migrated store under a fresh prefix, or skips.
#[allow(unused_macros)]
macro_rules! server_backend_tests {
    ($store:path; $contract:ident, $migrations:ident, $odd_keys:ident, $purge:ident,) => {
        #[tokio::test]
        async fn $contract() {
            let Some((store, _tables)) = $store(stringify!($contract)).await else {
                return;
            };
            conformance::run(&store).await;
        }

        #[tokio::test]
        async fn $migrations() {
            let Some((store, _tables)) = $store(stringify!($migrations)).await else {
                return;
            };
            store.migrate().await.unwrap();
            store.clone().migrate().await.unwrap();
            let prefix = store.table_prefix().to_owned();
            let version = || async {
                let version: i32 =
                    sqlx::query_scalar(&format!("SELECT version FROM {prefix}schema"))
                        .fetch_one(store.pool())
                        .await
                        .unwrap();
                version
            };
            assert_eq!(version().await, 2);

            // Tables left at version 1 by an earlier release are upgraded.
            for statement in [
                format!("ALTER TABLE {prefix}sessions DROP COLUMN sign_in"),
                format!("ALTER TABLE {prefix}sessions DROP COLUMN grace_until"),
                format!("UPDATE {prefix}schema SET version = 1"),
            ] {
                sqlx::query(&statement).execute(store.pool()).await.unwrap();
            }
            store.migrate().await.unwrap();
            assert_eq!(version().await, 2);
            conformance::run(&store).await;
        }

        #[tokio::test]
        async fn $odd_keys() {
            let Some((store, _tables)) = $store(stringify!($odd_keys)).await else {
                return;
            };
            super::odd_keys_round_trip(&store).await;
        }

        #[tokio::test]
        async fn $purge() {
            let Some((store, _tables)) = $store(stringify!($purge)).await else {
                return;
            };
            super::purge_removes_only_what_ended(&store, || store.purge_expired()).await;
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use tower_session_guard::store::{CachedStore, PostgresStore};

    use sql_common::postgres_store as store;

    server_backend_tests! {
        store;
        postgres_store_passes_the_store_contract,
        postgres_migrations_are_idempotent,
        postgres_applies_odd_keys_in_the_delta,
        postgres_purge_removes_only_what_ended,
    }

    #[tokio::test]
    async fn postgres_update_wraps_the_version_as_apply_does() {
        let Some((store, _tables)) = store("pg_version_wraps").await else {
            return;
        };
        super::update_wraps_the_version_as_apply_does(&store).await;
    }

    #[tokio::test]
    async fn postgres_store_without_notifications_passes_the_store_contract() {
        let Some((store, _tables)) = store("pg_contract_quiet").await else {
            return;
        };
        conformance::run(&store.with_change_notifications(false)).await;
    }

    #[tokio::test]
    async fn cached_postgres_store_passes_the_store_contract() {
        let Some((store, _tables)) = store("pg_cached_contract").await else {
            return;
        };
        let cached = CachedStore::new(store, 10_000);
        let connected = sql_common::eventually(std::time::Duration::from_secs(5), || async {
            cached.is_caching()
        })
        .await;
        assert!(connected.is_some(), "the LISTEN feed connects");
        conformance::run(&cached).await;
    }

    /// Records, for every row the store writes in its sessions table, the
    /// `synchronous_commit` in force in the writing transaction (which is
    /// what its commit reads), and returns the modes recorded so far.
    struct CommitModes {
        store: PostgresStore,
    }

    impl CommitModes {
        async fn install(store: &PostgresStore) -> Self {
            let p = store.table_prefix();
            for statement in [
                format!("CREATE TABLE {p}commit_modes (n SERIAL PRIMARY KEY, mode TEXT NOT NULL)"),
                format!(
                    "CREATE FUNCTION {p}record_commit_mode() RETURNS trigger AS $$ BEGIN \
                     INSERT INTO {p}commit_modes (mode) \
                     VALUES (current_setting('synchronous_commit')); \
                     RETURN NEW; END $$ LANGUAGE plpgsql"
                ),
                format!(
                    "CREATE TRIGGER {p}commit_mode BEFORE INSERT OR UPDATE ON {p}sessions \
                     FOR EACH ROW EXECUTE FUNCTION {p}record_commit_mode()"
                ),
            ] {
                sqlx::query(&statement).execute(store.pool()).await.unwrap();
            }
            Self {
                store: store.clone(),
            }
        }

        /// The modes recorded since the last call.
        async fn taken(&self) -> Vec<String> {
            let p = self.store.table_prefix();
            sqlx::query_scalar(&format!("DELETE FROM {p}commit_modes RETURNING mode"))
                .fetch_all(self.store.pool())
                .await
                .unwrap()
        }
    }

    impl Drop for CommitModes {
        fn drop(&mut self) {
            let p = self.store.table_prefix().to_owned();
            let url = sql_common::postgres_url();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                        for statement in [
                            format!("DROP TABLE IF EXISTS {p}commit_modes"),
                            format!("DROP FUNCTION IF EXISTS {p}record_commit_mode() CASCADE"),
                        ] {
                            let _ = sqlx::query(&statement).execute(&pool).await;
                        }
                    }
                });
            })
            .join();
        }
    }

    #[tokio::test]
    async fn postgres_data_writes_commit_asynchronously_only_when_asked() {
        let Some((store, _tables)) = store("pg_commit_modes").await else {
            return;
        };
        let modes = CommitModes::install(&store).await;
        let fast = store.clone().with_synchronous_data_writes(false);
        let record = conformance::sample_record(None);
        let data = Change {
            set: vec![("n".into(), json!(1))],
            ..Change::default()
        };
        let rebinding = Change {
            binding: Some(Default::default()),
            ..data.clone()
        };

        assert!(store.create(&record).await.unwrap());
        assert_eq!(modes.taken().await, ["on"], "creating a session");
        assert!(store
            .update(&record.id_hash(), &data)
            .await
            .unwrap()
            .is_some());
        assert_eq!(modes.taken().await, ["on"], "a data write by default");

        assert!(fast
            .update(&record.id_hash(), &data)
            .await
            .unwrap()
            .is_some());
        assert_eq!(modes.taken().await, ["off"], "an asynchronous data write");
        assert!(fast
            .update(&record.id_hash(), &rebinding)
            .await
            .unwrap()
            .is_some());
        assert_eq!(modes.taken().await, ["on"], "a changed client binding");
        let stored = fast.load(&record.id_hash()).await.unwrap().unwrap();
        let version = stored.session().unwrap().version();
        assert!(fast
            .replace(&record.id_hash(), version, Some(&stored))
            .await
            .unwrap());
        assert_eq!(
            modes.taken().await,
            ["on"],
            "a replacement (login, renewal)"
        );
        let quiet = fast.with_change_notifications(false);
        assert!(quiet
            .update(&record.id_hash(), &data)
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            modes.taken().await,
            ["off"],
            "an asynchronous data write without NOTIFY"
        );
    }

    #[tokio::test]
    async fn postgres_keeps_data_as_jsonb() {
        let Some((store, _tables)) = store("pg_jsonb").await else {
            return;
        };
        let record = conformance::sample_record(None);
        store.create(&record).await.unwrap();
        let kind: String = sqlx::query_scalar(&format!(
            "SELECT jsonb_typeof(data) FROM {}sessions",
            store.table_prefix()
        ))
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(kind, "object");
    }

    #[tokio::test]
    async fn postgres_purge_task_runs_on_its_interval() {
        let Some((store, _tables)) = store("pg_purge_task").await else {
            return;
        };
        let mut ended = conformance::sample_record(None).into_parts();
        ended.idle_deadline = ended.created_at - 60_000;
        let ended = SessionRecord::from_parts(ended);
        assert!(store.create(&ended).await.unwrap());
        let task = store.spawn_purge_task(std::time::Duration::from_millis(50));
        let gone = sql_common::eventually(std::time::Duration::from_secs(5), || async {
            store.load(&ended.id_hash()).await.unwrap().is_none()
        })
        .await;
        task.abort();
        assert!(
            gone.is_some(),
            "the purge task did not remove the ended session"
        );
    }

    #[tokio::test]
    async fn postgres_store_defaults() {
        let Some(pool) = sql_common::postgres_pool("pg_defaults").await else {
            return;
        };
        let store = PostgresStore::new(pool);
        assert_eq!(store.timeout(), std::time::Duration::from_secs(2));
        assert_eq!(store.table_prefix(), "tsg_");
        let debug = format!("{store:?}");
        assert!(
            debug.contains("PostgresStore") && !debug.contains("postgres://"),
            "{debug}"
        );
    }

    #[tokio::test]
    #[should_panic(expected = "is not a plain SQL name")]
    async fn a_table_prefix_that_is_not_a_plain_name_is_refused() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1/none")
            .unwrap();
        let _ = PostgresStore::new(pool).with_table_prefix("x; DROP TABLE users; --");
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use tower_session_guard::store::SqliteStore;

    pub async fn store(file: &SqliteFile) -> SqliteStore {
        let store = SqliteStore::new(file.pool().await);
        store.migrate().await.unwrap();
        store
    }

    #[tokio::test]
    async fn sqlite_store_passes_the_store_contract() {
        let file = SqliteFile::new("sqlite_contract");
        conformance::run(&store(&file).await).await;
    }

    #[tokio::test]
    async fn sqlite_migrations_are_idempotent_and_prefixes_keep_apart() {
        let file = SqliteFile::new("sqlite_migrate");
        let a = store(&file).await;
        a.migrate().await.unwrap();
        let b = SqliteStore::new(a.pool().clone()).with_table_prefix("other_");
        b.migrate().await.unwrap();
        let record = conformance::sample_record(None);
        a.create(&record).await.unwrap();
        assert!(b.load(&record.id_hash()).await.unwrap().is_none());
        assert!(a.load(&record.id_hash()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sqlite_update_wraps_the_version_as_apply_does() {
        let file = SqliteFile::new("sqlite_version_wraps");
        super::update_wraps_the_version_as_apply_does(&store(&file).await).await;
    }

    #[tokio::test]
    async fn sqlite_applies_odd_keys_in_the_delta() {
        let file = SqliteFile::new("sqlite_odd_keys");
        super::odd_keys_round_trip(&store(&file).await).await;
    }

    #[tokio::test]
    async fn sqlite_purge_removes_only_what_ended() {
        let file = SqliteFile::new("sqlite_purge");
        let store = store(&file).await;
        super::purge_removes_only_what_ended(&store, || store.purge_expired()).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    use sql_common::mysql_store as store;

    server_backend_tests! {
        store;
        mysql_store_passes_the_store_contract,
        mysql_migrations_are_idempotent,
        mysql_applies_odd_keys_in_the_delta,
        mysql_purge_removes_only_what_ended,
    }

    #[tokio::test]
    async fn mysql_update_wraps_the_version_as_apply_does() {
        let Some((store, _tables)) = store("mysql_version_wraps").await else {
            return;
        };
        super::update_wraps_the_version_as_apply_does(&store).await;
    }
}

/// The version is a `u64` kept in a signed `BIGINT`: an update past
/// `i64::MAX` as stored (a version of `2^63` or more, stored negative)
/// returns and stores the version `SessionRecord::apply` gives, up to the
/// wrap from `u64::MAX` to 0.
#[allow(dead_code)]
async fn update_wraps_the_version_as_apply_does<S: SessionStore>(store: &S) {
    let mut parts = conformance::sample_record(None).into_parts();
    parts.version = u64::MAX - 2;
    let record = SessionRecord::from_parts(parts);
    assert!(store.create(&record).await.unwrap());
    let change = Change {
        set: vec![("n".into(), json!(1))],
        ..Change::default()
    };
    for expected in [u64::MAX - 1, u64::MAX, 0, 1] {
        let version = store.update(&record.id_hash(), &change).await;
        assert_eq!(version.unwrap(), Some(expected), "the version returned");
        let loaded = store.load(&record.id_hash()).await.unwrap().unwrap();
        assert_eq!(
            loaded.session().unwrap().version(),
            expected,
            "the version stored"
        );
    }
}

/// Keys JSON paths find awkward, and values JSON columns find awkward,
/// set and removed through the delta.
#[allow(dead_code)]
async fn odd_keys_round_trip<S: SessionStore>(store: &S) {
    let record = conformance::sample_record(None);
    assert!(store.create(&record).await.unwrap());
    let keys = [
        "plain",
        "with space",
        "dot.ted",
        "quo\"te",
        "back\\slash",
        "$.root",
        "[0]",
        "é😀",
        "new\nline",
        "",
    ];
    let values = [
        json!(u64::MAX),
        json!(1.5),
        json!(null),
        json!({"a": null, "b": {"c": [1, 2]}}),
        json!("a \"string\" with \\ and \u{1}"),
        json!([]),
        json!(true),
        json!(-7),
        json!("x"),
        json!({}),
    ];
    let change = Change {
        set: keys
            .iter()
            .zip(&values)
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..Change::default()
    };
    assert!(store
        .update(&record.id_hash(), &change)
        .await
        .unwrap()
        .is_some());
    let loaded = store.load(&record.id_hash()).await.unwrap().unwrap();
    let data = &loaded.session().unwrap().data();
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(data.get(key), Some(value), "{key:?}");
    }
    // A value replacing an object replaces it whole (no merge).
    let change = Change {
        set: vec![("quo\"te".into(), json!({"only": 1}))],
        removed: vec!["back\\slash".into(), "dot.ted".into(), "greeting".into()],
        ..Change::default()
    };
    assert!(store
        .update(&record.id_hash(), &change)
        .await
        .unwrap()
        .is_some());
    let loaded = store.load(&record.id_hash()).await.unwrap().unwrap();
    let data = &loaded.session().unwrap().data();
    assert_eq!(data.get("quo\"te"), Some(&json!({"only": 1})));
    assert_eq!(data.get("back\\slash"), None);
    assert_eq!(data.get("dot.ted"), None);
    assert_eq!(data.get("greeting"), None);
    assert_eq!(data.get("plain"), Some(&json!(u64::MAX)));
    assert_eq!(data.len(), keys.len() - 2);
}

/// Rows that ended more than the slack ago go; the others stay.
#[allow(dead_code)]
async fn purge_removes_only_what_ended<S, F, Fut>(store: &S, purge: F)
where
    S: SessionStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, tower_session_guard::StoreError>>,
{
    use tower_session_guard::clock::{Clock, SystemClock};
    let now = SystemClock.now();
    let live = conformance::sample_record(Some("ann"));
    let mut ended = Vec::new();
    for _ in 0..2_500 {
        let mut record = conformance::sample_record(None).into_parts();
        record.created_at = now - 7_200_000;
        record.last_seen = record.created_at;
        record.id_issued_at = record.created_at;
        record.idle_deadline = now - 3_600_000;
        record.absolute_deadline = now - 60_000;
        ended.push(SessionRecord::from_parts(record));
    }
    assert!(store.create(&live).await.unwrap());
    use futures_util::StreamExt as _;
    let created: Vec<_> = futures_util::stream::iter(ended.iter().map(|r| store.create(r)))
        .buffer_unordered(8)
        .collect()
        .await;
    for c in &created {
        assert!(matches!(c, Ok(true)), "{c:?}");
    }
    // Ended a second ago, within the purge's slack. Made just before the
    // purge, so a slow bulk insert above cannot age it past the slack.
    let mut recent = conformance::sample_record(None).into_parts();
    recent.idle_deadline = SystemClock.now() - 1_000;
    let recent = SessionRecord::from_parts(recent);
    assert!(store.create(&recent).await.unwrap());
    store
        .index_add("ann", &live.id_hash(), live.absolute_deadline())
        .await
        .unwrap();
    store
        .index_add("ann", &ended[0].id_hash(), now - 60_000)
        .await
        .unwrap();
    let purged = purge().await.unwrap();
    assert_eq!(purged, 2_501, "2 500 sessions and one index entry");
    assert!(store.load(&live.id_hash()).await.unwrap().is_some());
    assert!(store.load(&recent.id_hash()).await.unwrap().is_some());
    assert!(store.load(&ended[7].id_hash()).await.unwrap().is_none());
    assert_eq!(
        store.index_members("ann", 0).await.unwrap(),
        vec![live.id_hash()]
    );
    assert_eq!(purge().await.unwrap(), 0);
}

/// Numbers whose JSON text some column would change: whole floats of
/// 10^16 and more (which serde_json writes in exponent form, and which
/// PostgreSQL's `jsonb` would give back as integers), subnormals, the
/// extremes, zeros of both signs, and integers at the ends of `u64` and
/// `i64`, also nested.
#[allow(dead_code)]
fn awkward_numbers() -> Vec<(String, serde_json::Value)> {
    let floats = [
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        f64::from_bits(0x000f_ffff_ffff_ffff), // the largest subnormal
        f64::MIN_POSITIVE,
        1e-7,
        0.1,
        184.674_407_370_952_22,
        1e15,
        9_007_199_254_740_992.0,
        1e16,
        -1e16,
        -2.5e17,
        1e23,
        9_223_372_036_854_775_808.0,
        18_446_744_073_709_551_616.0,
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN,
    ];
    let mut values: Vec<(String, serde_json::Value)> = floats
        .iter()
        .enumerate()
        .map(|(n, f)| (format!("f{n}"), json!(f)))
        .collect();
    values.extend([
        ("u64 max".to_owned(), json!(u64::MAX)),
        ("i64 min".to_owned(), json!(i64::MIN)),
        ("i64 max".to_owned(), json!(i64::MAX)),
        ("zero".to_owned(), json!(0)),
        (
            "nested".to_owned(),
            json!({"a": [1e16, -0.0, 5e-324, f64::MAX, u64::MAX, i64::MIN]}),
        ),
    ]);
    values
}

/// A value's numbers with their kind (float, unsigned, signed) and, for a
/// float, every bit: `-0.0` and `0.0` differ here, not under `==`.
#[allow(dead_code)]
fn number_bits(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => format!("f64:{:#018x}", n.as_f64().unwrap().to_bits()),
        Value::Number(n) if n.is_u64() => format!("u64:{n}"),
        Value::Number(n) => format!("i64:{n}"),
        Value::Array(items) => {
            let items: Vec<_> = items.iter().map(number_bits).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(map) => {
            let items: Vec<_> = map
                .iter()
                .map(|(k, v)| format!("{k}={}", number_bits(v)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        other => other.to_string(),
    }
}

/// `value` with every `-0.0` made `0.0`.
#[allow(dead_code)]
fn without_negative_zero(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => {
            json!(0.0)
        }
        Value::Array(items) => Value::Array(items.iter().map(without_negative_zero).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_negative_zero(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every number of [`awkward_numbers`] reads back with its kind and every
/// bit, written by `create`, by the delta, and by the delta SQLite applies
/// in a transaction (a key no JSON path names). `negative_zero`: whether
/// the backend keeps the sign of a zero (`jsonb` does not: its numbers are
/// `numeric`, which has no negative zero).
#[allow(dead_code)]
async fn numbers_keep_their_kind_and_bits<S: SessionStore>(store: &S, negative_zero: bool) {
    let values = awkward_numbers();
    let check = |entry: Option<tower_session_guard::store::Entry>, how: &str| {
        let entry = entry.expect("the session is there");
        let data = entry.session().unwrap().data();
        let wrong: Vec<String> = values
            .iter()
            .filter_map(|(key, value)| {
                let expected = if negative_zero {
                    value.clone()
                } else {
                    without_negative_zero(value)
                };
                let got = data.get(key).map(number_bits);
                (got.as_deref() != Some(number_bits(&expected).as_str())).then(|| {
                    format!(
                        "{key}: set {value} ({}), read {got:?}",
                        number_bits(&expected)
                    )
                })
            })
            .collect();
        assert!(wrong.is_empty(), "{how}:\n{}", wrong.join("\n"));
    };

    let mut parts = conformance::sample_record(None).into_parts();
    for (key, value) in &values {
        parts.data.insert(key.clone(), value.clone());
    }
    let record = SessionRecord::from_parts(parts);
    assert!(store.create(&record).await.unwrap());
    check(store.load(&record.id_hash()).await.unwrap(), "created");

    for odd_key in [None, Some("quo\"te")] {
        let record = conformance::sample_record(None);
        assert!(store.create(&record).await.unwrap());
        let mut set = values.clone();
        set.extend(odd_key.map(|key| (key.to_owned(), json!(1))));
        let change = Change {
            set,
            ..Change::default()
        };
        assert!(store
            .update(&record.id_hash(), &change)
            .await
            .unwrap()
            .is_some());
        check(
            store.load(&record.id_hash()).await.unwrap(),
            &format!("updated (odd key: {odd_key:?})"),
        );
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_numbers_keep_their_kind_and_bits_but_the_sign_of_zero() {
    let Some((store, _tables)) = sql_common::postgres_store("pg_numbers").await else {
        return;
    };
    numbers_keep_their_kind_and_bits(&store, false).await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_numbers_keep_their_kind_and_bits() {
    let Some((store, _tables)) = sql_common::mysql_store("mysql_numbers").await else {
        return;
    };
    numbers_keep_their_kind_and_bits(&store, true).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_numbers_keep_their_kind_and_bits() {
    let file = SqliteFile::new("sqlite_numbers");
    numbers_keep_their_kind_and_bits(&sqlite::store(&file).await, true).await;
}
