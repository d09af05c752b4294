//! [`SqliteStore`]: sessions in a SQLite file (feature `sqlite`).

use std::sync::Arc;

use sqlx::Sqlite;

use super::backend::Dialect;
use super::backend::{runners, sealed::Backend, BoxFuture, Params, WriteTurn};
use super::codec::{self, Delta};
use super::primitives::{json_path_update, SqlStore};
use super::{bounded, store_error};
use crate::id::IdHash;
use crate::record::Change;
use crate::store::StoreError;

/// A session store in a SQLite database, on the application's own
/// [`SqlitePool`](sqlx::SqlitePool): sessions survive a restart of the process. Clones share
/// the pool.
///
/// Several processes may share one database file: every primitive is one
/// statement (SQLite admits one writer at a time), and the user lock is a
/// row in the file, not a lock in one process's memory. There is no change
/// feed, so a [`CachedStore`](crate::store::CachedStore) in front keeps
/// copies for its TTL. See the [module docs](super) for the schema, the
/// delta, locking, purging and outages.
///
/// sqlx opens SQLite databases in WAL mode by default, which lets reads
/// go on while a commit is written; keep it so. With WAL,
/// [`synchronous(SqliteSynchronous::Normal)`](sqlx::sqlite::SqliteConnectOptions::synchronous)
/// saves an fsync per commit and still survives a crash of the process (a
/// power loss may lose the last commits).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
/// use tower_session_guard::store::SqliteStore;
/// use tower_session_guard::{Key, SessionLayer};
///
/// let options = SqliteConnectOptions::new()
///     .filename("sessions.db")
///     .create_if_missing(true);
/// let pool = SqlitePoolOptions::new().connect_with(options).await?;
/// let store = SqliteStore::new(pool);
/// store.migrate().await?;
/// let layer = SessionLayer::new(store, Key::generate());
/// # Ok(())
/// # }
/// ```
pub type SqliteStore = SqlStore<Sqlite>;

/// What a SQLite store holds besides its pool: this process's writers take
/// turns here, in order, so that SQLite's busy timeout only arbitrates
/// between processes (it retries with sleeps, unfairly: a writer could
/// starve behind the others).
#[derive(Clone)]
pub struct Writers(Arc<tokio::sync::Mutex<()>>);

impl Backend for Sqlite {
    type Extra = Writers;

    const STORE_NAME: &'static str = "SqliteStore";
    const DIALECT: Dialect = Dialect::Sqlite;
    const NOW_MS: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    const DATA_AS_TEXT: &'static str = "data";

    fn new_extra() -> Writers {
        Writers(Arc::new(tokio::sync::Mutex::new(())))
    }

    fn greatest(a: &str, b: &str) -> String {
        format!("MAX({a}, {b})")
    }

    fn least(a: &str, b: &str) -> String {
        format!("MIN({a}, {b})")
    }

    fn write_turn(writers: &Writers) -> BoxFuture<'_, Option<WriteTurn<'_>>> {
        Box::pin(async { Some(writers.0.lock().await) })
    }

    runners!();

    /// `json_remove` of the keys removed and `json_set` of the keys set;
    /// a delta naming a key no JSON path can name is applied in a
    /// transaction instead.
    fn update<'a>(
        store: &'a SqliteStore,
        id: &'a IdHash,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            match json_path_update(store, id, change, "json(?)", json_path)? {
                Some((sql, params)) => {
                    let sql = format!("{sql} RETURNING version");
                    store.write_returning_version(&sql, params).await
                }
                None => {
                    bounded(
                        store.settings.timeout,
                        update_in_transaction(store, id, change),
                    )
                    .await
                }
            }
        })
    }

    fn migrate(store: &SqliteStore) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = store
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(store_error)?;
            store.migrate_on(&mut tx).await?;
            tx.commit().await.map_err(store_error)
        })
    }
}

/// The JSON path of a top-level key, if SQLite's path syntax can name it
/// (its quoted labels end at the first `"` and take no escapes).
fn json_path(key: &str) -> Option<String> {
    let plain = !key.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    plain.then(|| format!("$.\"{key}\""))
}

/// Applies a delta naming keys no JSON path can name: read, apply and
/// write in one `BEGIN IMMEDIATE` transaction, which holds SQLite's write
/// lock throughout.
async fn update_in_transaction(
    store: &SqliteStore,
    id: &IdHash,
    change: &Change,
) -> Result<Option<u64>, StoreError> {
    let delta = Delta::of(change)?;
    let sessions = &store.sql.sessions;
    let _turn = Sqlite::write_turn(&store.extra).await;
    let mut tx = store
        .pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(store_error)?;
    let data: Option<String> = sqlx::query_scalar(&format!(
        "SELECT data FROM {sessions} WHERE id_hash = ? AND kind = 's'"
    ))
    .bind(id.as_bytes().as_slice())
    .fetch_optional(&mut *tx)
    .await
    .map_err(store_error)?;
    let Some(data) = data else {
        return Ok(None);
    };
    let mut data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&data)
        .map_err(|_| codec::corrupt("stored session data is not a JSON object"))?;
    for key in &change.removed {
        data.remove(key);
    }
    for (key, value) in &change.set {
        data.insert(key.clone(), value.clone());
    }
    let params = delta.touch_params(Params::new().text(Some(codec::encode_json(&data)?)));
    let write = format!(
        "UPDATE {sessions} SET data = ?, {touch} WHERE id_hash = ? AND kind = 's' \
         RETURNING version",
        touch = super::statements::Statements::touch::<Sqlite>(2),
    );
    let version: Option<i64> = params
        .id(id)
        .bind(sqlx::query(&write))
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?
        .map(|row| sqlx::Row::try_get(&row, 0))
        .transpose()
        .map_err(store_error)?;
    tx.commit().await.map_err(store_error)?;
    Ok(version.map(codec::version_of))
}
