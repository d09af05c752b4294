//! [`SqliteStore`]: sessions in a SQLite file (feature `sqlite`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Row as _, Sqlite};
use tokio::task::JoinHandle;

use super::codec::{self, Columns, Delta, Stored};
use super::lock::{self, LockTable};
use super::{bind_columns, bounded, store_error, Settings};
use crate::clock::UnixMillis;
use crate::id::IdHash;
use crate::record::{Change, Entry, SessionRecord};
use crate::store::{SessionStore, StoreError, UserLock};

/// The database's clock in milliseconds, for lock leases.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// A session store in a SQLite database, on the application's own
/// [`SqlitePool`]: sessions survive a restart of the process. Clones share
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
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    settings: Settings,
    sql: Arc<Statements>,
    /// This process's writers take turns here, in order; SQLite's busy
    /// timeout then only arbitrates between processes (it retries with
    /// sleeps, unfairly: a writer could starve behind the others).
    writes: Arc<tokio::sync::Mutex<()>>,
}

/// The fixed statements, written once for the table prefix (the delta's
/// statement depends on the keys it names, see [`SqliteStore::update_sql`]).
struct Statements {
    sessions: String,
    create: String,
    load: String,
    replace_with: String,
    replace_none: String,
    delete: String,
    read_data: String,
    write_data: String,
    index_add: String,
    index_members: String,
    lock_take: String,
    lock_clear: String,
    lock_give_back: String,
    purge: [String; 3],
    users: String,
}

impl Statements {
    fn new(settings: &Settings) -> Self {
        let t = settings.tables();
        let columns = codec::entry_columns("data");
        let placeholders = vec!["?"; codec::WRITTEN_COLUMNS.len()].join(", ");
        let assignments = codec::WRITTEN_COLUMNS
            .iter()
            .map(|column| format!("{column} = ?"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            create: format!(
                "INSERT INTO {s} (id_hash, {cols}) VALUES (?, {placeholders}) \
                 ON CONFLICT (id_hash) DO NOTHING",
                s = t.sessions,
                cols = codec::WRITTEN_COLUMNS.join(", "),
            ),
            load: format!("SELECT {columns} FROM {} WHERE id_hash = ?", t.sessions),
            replace_with: format!(
                "UPDATE {s} SET {assignments} WHERE id_hash = ? AND kind = 's' AND version = ?",
                s = t.sessions
            ),
            replace_none: format!(
                "DELETE FROM {s} WHERE id_hash = ? AND kind = 's' AND version = ?",
                s = t.sessions
            ),
            delete: format!(
                "DELETE FROM {s} WHERE id_hash = ? RETURNING {columns}",
                s = t.sessions
            ),
            read_data: format!(
                "SELECT data FROM {s} WHERE id_hash = ? AND kind = 's'",
                s = t.sessions
            ),
            write_data: format!(
                "UPDATE {s} SET data = ?, {touch} WHERE id_hash = ? AND kind = 's'",
                s = t.sessions,
                touch = TOUCH,
            ),
            index_add: format!(
                "INSERT INTO {u} (user_key, id_hash, ends_at) VALUES (?, ?, ?) \
                 ON CONFLICT (user_key, id_hash) DO UPDATE SET ends_at = excluded.ends_at",
                u = t.users
            ),
            index_members: format!(
                "SELECT id_hash FROM {u} WHERE user_key = ? AND ends_at >= ?",
                u = t.users
            ),
            lock_take: format!(
                "INSERT INTO {l} (user_key, token, ends_at) VALUES (?, ?, {NOW_MS} + ?) \
                 ON CONFLICT (user_key) DO NOTHING",
                l = t.locks
            ),
            lock_clear: format!(
                "DELETE FROM {l} WHERE user_key = ? AND ends_at < {NOW_MS}",
                l = t.locks
            ),
            lock_give_back: format!(
                "DELETE FROM {l} WHERE user_key = ? AND token = ?",
                l = t.locks
            ),
            purge: [
                (t.sessions.as_str(), "id_hash", "expires_at"),
                (t.users.as_str(), "user_key, id_hash", "ends_at"),
                (t.locks.as_str(), "user_key", "ends_at"),
            ]
            .map(|(table, key, deadline)| {
                format!(
                    "DELETE FROM {table} WHERE ({key}) IN \
                     (SELECT {key} FROM {table} WHERE {deadline} < ? ORDER BY {deadline} LIMIT ?)"
                )
            }),
            sessions: t.sessions,
            users: t.users,
        }
    }
}

/// The columns a delta sets besides the data, with its parameters in this
/// order: binding, last seen, idle deadline (twice).
const TOUCH: &str = "binding = COALESCE(?, binding), \
     last_seen = MAX(last_seen, COALESCE(?, last_seen)), \
     idle_deadline = CASE WHEN ? IS NULL THEN idle_deadline \
       ELSE MIN(MAX(idle_deadline, ?), absolute_deadline) END, \
     version = version + 1";

/// The JSON path of a top-level key, if SQLite's path syntax can name it
/// (its quoted labels end at the first `"` and take no escapes).
fn json_path(key: &str) -> Option<String> {
    let plain = !key.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    plain.then(|| format!("$.\"{key}\""))
}

impl SqliteStore {
    /// A store on `pool`, with the default table prefix (`tsg_`) and
    /// timeout (2 seconds). Call [`migrate`](Self::migrate) once before
    /// use to create the tables.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        let settings = Settings::default();
        let sql = Arc::new(Statements::new(&settings));
        Self {
            pool,
            settings,
            sql,
            writes: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The prefix of the store's table names. Default:
    /// [`DEFAULT_TABLE_PREFIX`](super::DEFAULT_TABLE_PREFIX) (`tsg_`).
    ///
    /// # Panics
    ///
    /// If `prefix` is not 1 to 40 ASCII letters, digits and underscores,
    /// starting with a letter or an underscore: it becomes part of SQL
    /// statements.
    #[must_use]
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings = self.settings.with_prefix(prefix.into());
        self.sql = Arc::new(Statements::new(&self.settings));
        self
    }

    /// How long one store operation may take before it fails with
    /// [`StoreError::Timeout`] (and the request gets `503`). Default:
    /// [`DEFAULT_TIMEOUT`](super::DEFAULT_TIMEOUT) (2 seconds). Waiting for
    /// a pooled connection, for SQLite's write lock and for a user's lock
    /// counts.
    ///
    /// # Panics
    ///
    /// If `timeout` is shorter than one millisecond.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.settings = self.settings.with_timeout(timeout);
        self
    }

    /// The pool the store uses.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The table prefix in force.
    #[must_use]
    pub fn table_prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// The operation timeout in force.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Creates the store's tables, or brings them to this version's schema;
    /// does nothing when they are current. Runs in one `BEGIN IMMEDIATE`
    /// transaction, so concurrent runs (several processes on one file) are
    /// serialized.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or written, or holds tables of a
    /// newer schema version than this crate knows.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let t = self.settings.tables();
        let steps = super::migrations(&t, super::Dialect::Sqlite);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
            t.schema
        ))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let current: Option<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {} WHERE id = 1", t.schema))
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let current = super::check_version(current, steps.len())?;
        for (version, statements) in steps.iter().enumerate().skip(current) {
            for statement in statements {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            sqlx::query(&format!(
                "INSERT INTO {} (id, version) VALUES (1, ?) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                t.schema
            ))
            .bind(i64::try_from(version + 1).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    /// Deletes the rows that ended more than 30 seconds ago (sessions,
    /// placeholders, index entries, lapsed locks), in batches of 1 000
    /// through the deadline indexes; returns how many.
    ///
    /// # Errors
    ///
    /// When the database fails; rows deleted by earlier batches stay deleted.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        let sql = Arc::clone(&self.sql);
        let writes = Arc::clone(&self.writes);
        super::purge_batches(&self.settings, move |table, before, batch| {
            let pool = pool.clone();
            let sql = Arc::clone(&sql);
            let writes = Arc::clone(&writes);
            async move {
                let _turn = writes.lock().await;
                sqlx::query(&sql.purge[table])
                    .bind(before)
                    .bind(batch)
                    .execute(&pool)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err(store_error)
            }
        })
        .await
    }

    /// Runs [`purge_expired`](Self::purge_expired) every `every` on the
    /// Tokio runtime, until the returned handle is aborted. Failures are
    /// logged at `error` and retried at the next tick.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use = "the task runs until the handle is aborted; keep it to stop it"]
    pub fn spawn_purge_task(&self, every: Duration) -> JoinHandle<()> {
        let store = self.clone();
        super::spawn_purge(every, move || {
            let store = store.clone();
            async move { store.purge_expired().await }
        })
    }

    /// The delta's statement for `change`: `json_remove` of the keys
    /// removed and `json_set` of the keys set, with their parameters in
    /// order; `None` when a key cannot be named by a JSON path.
    fn update_sql(&self, change: &Change) -> Option<String> {
        let mut data = "data".to_owned();
        if !change.removed.is_empty() {
            let paths = vec!["?"; change.removed.len()].join(", ");
            data = format!("json_remove({data}, {paths})");
        }
        if !change.set.is_empty() {
            let pairs = vec!["?, json(?)"; change.set.len()].join(", ");
            data = format!("json_set({data}, {pairs})");
        }
        let named = change
            .removed
            .iter()
            .chain(change.set.iter().map(|(k, _)| k));
        named.clone().all(|key| json_path(key).is_some()).then(|| {
            format!(
                "UPDATE {s} SET data = {data}, {TOUCH} WHERE id_hash = ? AND kind = 's'",
                s = self.sql.sessions
            )
        })
    }

    /// Applies a delta naming keys no JSON path can name: read, apply and
    /// write in one `BEGIN IMMEDIATE` transaction, which holds SQLite's
    /// write lock throughout.
    async fn update_in_transaction(
        &self,
        id: &IdHash,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let delta = Delta::of(change)?;
        let _turn = self.writes.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)?;
        let data: Option<String> = sqlx::query_scalar(&self.sql.read_data)
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        let Some(data) = data else {
            return Ok(false);
        };
        let mut data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&data)
            .map_err(|_| codec::corrupt("stored session data is not a JSON object"))?;
        for key in &change.removed {
            data.remove(key);
        }
        for (key, value) in &change.set {
            data.insert(key.clone(), value.clone());
        }
        let done = sqlx::query(&self.sql.write_data)
            .bind(codec::encode_json(&data)?)
            .bind(delta.binding)
            .bind(delta.last_seen)
            .bind(delta.idle_deadline)
            .bind(delta.idle_deadline)
            .bind(id.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn fetch_entry(
        &self,
        query: &str,
        id: &IdHash,
        write: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let row: Option<SqliteRow> = bounded(self.settings.timeout, async {
            let _turn = if write {
                Some(self.writes.lock().await)
            } else {
                None
            };
            sqlx::query(query)
                .bind(id.as_bytes().as_slice())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)
        })
        .await?;
        row.map(|row| Stored::read(&row)?.into_entry(*id))
            .transpose()
    }

    /// Runs a write in this process's turn; how many rows it changed.
    async fn affected(&self, query: Query<'_>) -> Result<u64, StoreError> {
        bounded(self.settings.timeout, async {
            let _turn = self.writes.lock().await;
            let done = query.execute(&self.pool).await.map_err(store_error)?;
            Ok(done.rows_affected())
        })
        .await
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table_prefix", &self.settings.prefix)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let columns = Columns::of_session(record)?;
        let query = sqlx::query(&self.sql.create).bind(record.id_hash.as_bytes().as_slice());
        Ok(self.affected(bind_columns!(query, columns)).await? == 1)
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.fetch_entry(&self.sql.load, id, false).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let Some(sql) = self.update_sql(change) else {
            return bounded(
                self.settings.timeout,
                self.update_in_transaction(id, change),
            )
            .await;
        };
        let delta = Delta::of(change)?;
        let mut query = sqlx::query(&sql);
        for key in &delta.removed {
            query = query.bind(json_path(key));
        }
        for (key, value) in Delta::set_values(change)? {
            query = query.bind(json_path(&key)).bind(value);
        }
        let query = query
            .bind(delta.binding)
            .bind(delta.last_seen)
            .bind(delta.idle_deadline)
            .bind(delta.idle_deadline)
            .bind(id.as_bytes().as_slice());
        Ok(self.affected(query).await? == 1)
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        let version = codec::version_param(version);
        let query = match with {
            Some(entry) => {
                let columns = Columns::of(entry)?;
                let query = sqlx::query(&self.sql.replace_with);
                bind_columns!(query, columns)
                    .bind(id.as_bytes().as_slice())
                    .bind(version)
            }
            None => sqlx::query(&self.sql.replace_none)
                .bind(id.as_bytes().as_slice())
                .bind(version),
        };
        Ok(self.affected(query).await? == 1)
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.fetch_entry(&self.sql.delete, id, true).await
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(&self.sql.index_add)
            .bind(codec::user_key(user_id))
            .bind(id.as_bytes().as_slice())
            .bind(codec::millis(until));
        self.affected(query).await.map(drop)
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM {u} WHERE user_key = ? AND id_hash IN ({ids})",
            u = self.sql.users,
            ids = vec!["?"; ids.len()].join(", ")
        );
        let mut query = sqlx::query(&sql).bind(codec::user_key(user_id));
        for id in ids {
            query = query.bind(id.as_bytes().to_vec());
        }
        self.affected(query).await.map(drop)
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        let query = sqlx::query(&self.sql.index_members)
            .bind(codec::user_key(user_id))
            .bind(codec::millis(now));
        let rows = bounded(self.settings.timeout, async {
            query.fetch_all(&self.pool).await.map_err(store_error)
        })
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<Vec<u8>, _>(0).ok())
            .filter_map(|bytes| codec::id_hash(&bytes))
            .collect())
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        lock::lock_user(
            Arc::new(self.clone()),
            codec::user_key(user_id),
            self.settings.timeout,
        )
        .await
    }
}

#[async_trait]
impl LockTable for SqliteStore {
    async fn take(&self, user_key: &[u8], token: &[u8], lease_ms: i64) -> Result<bool, StoreError> {
        let query = sqlx::query(&self.sql.lock_take)
            .bind(user_key)
            .bind(token)
            .bind(lease_ms);
        Ok(self.affected(query).await? == 1)
    }

    async fn clear_lapsed(&self, user_key: &[u8]) -> Result<bool, StoreError> {
        let query = sqlx::query(&self.sql.lock_clear).bind(user_key);
        Ok(self.affected(query).await? == 1)
    }

    async fn give_back(&self, user_key: &[u8], token: &[u8]) -> Result<(), StoreError> {
        let query = sqlx::query(&self.sql.lock_give_back)
            .bind(user_key)
            .bind(token);
        self.affected(query).await.map(drop)
    }
}
