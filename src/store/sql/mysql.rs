//! [`MySqlStore`]: sessions in MySQL or MariaDB (feature `mysql`).

use sqlx::MySql;

use super::backend::Dialect;
use super::backend::{runners, sealed::Backend, BoxFuture, Params};
use super::primitives::{json_path_update, SqlStore};
use super::{bounded, store_error};
use crate::id::IdHash;
use crate::record::{Change, Entry};
use crate::store::StoreError;

/// A session store in MySQL 8 or MariaDB 10.5 (or newer), on the
/// application's own [`MySqlPool`](sqlx::MySqlPool). Clones share the pool.
///
/// There is no change feed, so a [`CachedStore`](crate::store::CachedStore)
/// in front keeps copies for its TTL. See the [module docs](super) for the
/// schema, the delta, locking, purging and outages. The tables use InnoDB.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_session_guard::store::MySqlStore;
/// use tower_session_guard::{Key, SessionLayer};
///
/// let pool = sqlx::mysql::MySqlPoolOptions::new()
///     .connect("mysql://app@127.0.0.1/app")
///     .await?;
/// let store = MySqlStore::new(pool);
/// store.migrate().await?;
/// let layer = SessionLayer::new(store, Key::generate());
/// # Ok(())
/// # }
/// ```
pub type MySqlStore = SqlStore<MySql>;

impl Backend for MySql {
    type Extra = ();

    const STORE_NAME: &'static str = "MySqlStore";
    const DIALECT: Dialect = Dialect::MySql;
    const NOW_MS: &'static str = "CAST(UNIX_TIMESTAMP(SYSDATE(3)) * 1000 AS SIGNED)";
    const DATA_AS_TEXT: &'static str = "CAST(data AS CHAR)";
    /// `LAST_INSERT_ID` is unsigned: cast back for the signed column (a
    /// version of 2^63 or more is stored negative).
    const NEXT_VERSION: &'static str = "CAST(LAST_INSERT_ID(version + 1) AS SIGNED)";

    fn new_extra() {}

    fn as_bigint(expr: &str) -> String {
        format!("CAST({expr} AS SIGNED)")
    }

    /// Nothing: a plain `INSERT` on a taken key fails with the duplicate-key
    /// error, which the store reads as "not inserted".
    fn on_conflict_do_nothing(_key: &str) -> String {
        String::new()
    }

    fn on_conflict_update(_key: &str, column: &str) -> String {
        format!(" ON DUPLICATE KEY UPDATE {column} = VALUES({column})")
    }

    /// MySQL takes `ORDER BY` and `LIMIT` on the `DELETE` itself (and
    /// refuses `LIMIT` in an `IN` subquery).
    fn purge_batch(table: &str, _key: &str, deadline: &str) -> String {
        format!("DELETE FROM {table} WHERE {deadline} < ? ORDER BY {deadline} LIMIT ?")
    }

    /// A plain `DELETE`: MySQL has no `DELETE ... RETURNING`, so
    /// [`delete`](Backend::delete) reads the row under its lock first.
    fn delete_returning(_extra: &(), sessions: &str, _columns: &str, _channel: &str) -> String {
        format!("DELETE FROM {sessions} WHERE id_hash = ?")
    }

    runners!();

    /// `JSON_REMOVE` of the keys removed and `JSON_SET` of the keys set.
    fn update<'a>(
        store: &'a MySqlStore,
        id: &'a IdHash,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            // `JSON_EXTRACT(?, '$')` makes the text a JSON value (MariaDB
            // has no `CAST(? AS JSON)`); every key has a path.
            match json_path_update(store, id, change, "JSON_EXTRACT(?, '$')", json_path)? {
                Some((sql, params)) => {
                    // The new version comes back as the statement's
                    // `LAST_INSERT_ID` (see `NEXT_VERSION`).
                    let done = bounded(store.settings.timeout, async {
                        params
                            .bind(sqlx::query(&sql))
                            .execute(&store.pool)
                            .await
                            .map_err(store_error)
                    })
                    .await?;
                    Ok((done.rows_affected() == 1).then(|| done.last_insert_id()))
                }
                None => Err(StoreError::Corrupt(
                    "a session key has no MySQL JSON path".to_owned(),
                )),
            }
        })
    }

    /// The row read under its lock (`SELECT ... FOR UPDATE`) and deleted,
    /// in one transaction.
    fn delete<'a>(
        store: &'a MySqlStore,
        id: &'a IdHash,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let lock_row = format!("{} FOR UPDATE", store.sql.load);
            let row = bounded(store.settings.timeout, async {
                let mut tx = store.pool.begin().await.map_err(store_error)?;
                let row = sqlx::query(&lock_row)
                    .bind(id.as_bytes().as_slice())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                if row.is_some() {
                    MySql::execute_on(&mut tx, &store.sql.delete, Params::new().id(id))
                        .await
                        .map_err(store_error)?;
                }
                tx.commit().await.map_err(store_error)?;
                Ok(row)
            })
            .await?;
            row.map(|row| super::codec::Stored::read(&row)?.into_entry(*id))
                .transpose()
        })
    }

    fn migrate(store: &MySqlStore) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let schema = store.settings.tables().schema;
            let mut connection = store.pool.acquire().await.map_err(store_error)?;
            let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
                .bind(&schema)
                .fetch_one(&mut *connection)
                .await
                .map_err(store_error)?;
            if locked != Some(1) {
                return Err(StoreError::Timeout);
            }
            let migrated = store.migrate_on(&mut connection).await;
            let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(&schema)
                .execute(&mut *connection)
                .await;
            migrated
        })
    }
}

/// The JSON path of a top-level key: `$.` and the key as a JSON string,
/// which MySQL and MariaDB read with its escapes.
fn json_path(key: &str) -> Option<String> {
    Some(format!("$.{}", serde_json::Value::from(key)))
}
