//! [`MySqlStore`]: sessions in MySQL or MariaDB (feature `mysql`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySql, MySqlArguments, MySqlPool, MySqlRow};
use sqlx::Row as _;
use tokio::task::JoinHandle;

use super::codec::{self, Columns, Delta, Stored};
use super::lock::{self, LockTable};
use super::{bind_columns, bounded, store_error, Settings};
use crate::clock::UnixMillis;
use crate::id::IdHash;
use crate::record::{Change, Entry, SessionRecord};
use crate::store::{SessionStore, StoreError, UserLock};

/// The database's clock in milliseconds, for lock leases.
const NOW_MS: &str = "CAST(UNIX_TIMESTAMP(SYSDATE(3)) * 1000 AS SIGNED)";

type Query<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// A session store in MySQL 8 or MariaDB 10.5 (or newer), on the
/// application's own [`MySqlPool`]. Clones share the pool.
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
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    settings: Settings,
    sql: Arc<Statements>,
}

/// The fixed statements, written once for the table prefix (the delta's
/// statement depends on the keys it names, see [`MySqlStore::update_sql`]).
struct Statements {
    sessions: String,
    create: String,
    load: String,
    replace_with: String,
    replace_none: String,
    lock_row: String,
    delete: String,
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
        let columns = codec::entry_columns("CAST(data AS CHAR)");
        let placeholders = vec!["?"; codec::WRITTEN_COLUMNS.len()].join(", ");
        let assignments = codec::WRITTEN_COLUMNS
            .iter()
            .map(|column| format!("{column} = ?"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            create: format!(
                "INSERT INTO {s} (id_hash, {cols}) VALUES (?, {placeholders})",
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
            lock_row: format!(
                "SELECT {columns} FROM {} WHERE id_hash = ? FOR UPDATE",
                t.sessions
            ),
            delete: format!("DELETE FROM {} WHERE id_hash = ?", t.sessions),
            index_add: format!(
                "INSERT INTO {u} (user_key, id_hash, ends_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE ends_at = VALUES(ends_at)",
                u = t.users
            ),
            index_members: format!(
                "SELECT id_hash FROM {u} WHERE user_key = ? AND ends_at >= ?",
                u = t.users
            ),
            lock_take: format!(
                "INSERT IGNORE INTO {l} (user_key, token, ends_at) VALUES (?, ?, {NOW_MS} + ?)",
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
            .map(|(table, _, deadline)| {
                format!("DELETE FROM {table} WHERE {deadline} < ? ORDER BY {deadline} LIMIT ?")
            }),
            sessions: t.sessions,
            users: t.users,
        }
    }
}

/// The columns a delta sets besides the data, with its parameters in this
/// order: binding, last seen, idle deadline (twice).
/// (MySQL assigns left to right, each seeing the columns set before it:
/// none of these reads a column set before it.)
const TOUCH: &str = "binding = COALESCE(?, binding), \
     last_seen = GREATEST(last_seen, COALESCE(?, last_seen)), \
     idle_deadline = CASE WHEN ? IS NULL THEN idle_deadline \
       ELSE LEAST(GREATEST(idle_deadline, ?), absolute_deadline) END, \
     version = version + 1";

/// The JSON path of a top-level key: `$.` and the key as a JSON string,
/// which MySQL and MariaDB read with its escapes.
fn json_path(key: &str) -> String {
    format!("$.{}", serde_json::Value::from(key))
}

impl MySqlStore {
    /// A store on `pool`, with the default table prefix (`tsg_`) and
    /// timeout (2 seconds). Call [`migrate`](Self::migrate) once before
    /// use to create the tables.
    #[must_use]
    pub fn new(pool: MySqlPool) -> Self {
        let settings = Settings::default();
        let sql = Arc::new(Statements::new(&settings));
        Self {
            pool,
            settings,
            sql,
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
    pub fn pool(&self) -> &MySqlPool {
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
    /// does nothing when they are current. Concurrent runs are serialized
    /// by a named lock (`GET_LOCK`).
    ///
    /// # Errors
    ///
    /// When the database cannot be reached, refuses the DDL, or holds
    /// tables of a newer schema version than this crate knows.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let t = self.settings.tables();
        let mut connection = self.pool.acquire().await.map_err(store_error)?;
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
            .bind(&t.schema)
            .fetch_one(&mut *connection)
            .await
            .map_err(store_error)?;
        if locked != Some(1) {
            return Err(StoreError::Timeout);
        }
        let migrated = self.migrate_locked(&t, &mut connection).await;
        let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&t.schema)
            .execute(&mut *connection)
            .await;
        migrated
    }

    async fn migrate_locked(
        &self,
        t: &super::Tables,
        connection: &mut sqlx::MySqlConnection,
    ) -> Result<(), StoreError> {
        let steps = super::migrations(t, super::Dialect::MySql);
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, version INTEGER NOT NULL) \
             ENGINE=InnoDB",
            t.schema
        ))
        .execute(&mut *connection)
        .await
        .map_err(store_error)?;
        let current: Option<i32> =
            sqlx::query_scalar(&format!("SELECT version FROM {} WHERE id = 1", t.schema))
                .fetch_optional(&mut *connection)
                .await
                .map_err(store_error)?;
        let current = super::check_version(current.map(i64::from), steps.len())?;
        // DDL commits by itself on MySQL: each step is idempotent instead.
        for (version, statements) in steps.iter().enumerate().skip(current) {
            for statement in statements {
                sqlx::query(statement)
                    .execute(&mut *connection)
                    .await
                    .map_err(store_error)?;
            }
            sqlx::query(&format!(
                "INSERT INTO {} (id, version) VALUES (1, ?) \
                 ON DUPLICATE KEY UPDATE version = VALUES(version)",
                t.schema
            ))
            .bind(i32::try_from(version + 1).unwrap_or(i32::MAX))
            .execute(&mut *connection)
            .await
            .map_err(store_error)?;
        }
        Ok(())
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
        super::purge_batches(&self.settings, move |table, before, batch| {
            let pool = pool.clone();
            let sql = Arc::clone(&sql);
            async move {
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

    /// The delta's statement for `change`: `JSON_REMOVE` of the keys
    /// removed and `JSON_SET` of the keys set, with their parameters in order.
    fn update_sql(&self, change: &Change) -> String {
        let mut data = "data".to_owned();
        if !change.removed.is_empty() {
            let paths = vec!["?"; change.removed.len()].join(", ");
            data = format!("JSON_REMOVE({data}, {paths})");
        }
        if !change.set.is_empty() {
            // `JSON_EXTRACT(?, '$')` makes the text a JSON value (MariaDB
            // has no `CAST(? AS JSON)`).
            let pairs = vec!["?, JSON_EXTRACT(?, '$')"; change.set.len()].join(", ");
            data = format!("JSON_SET({data}, {pairs})");
        }
        format!(
            "UPDATE {s} SET data = {data}, {TOUCH} WHERE id_hash = ? AND kind = 's'",
            s = self.sql.sessions
        )
    }

    async fn fetch_entry(&self, query: &str, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let row: Option<MySqlRow> = bounded(self.settings.timeout, async {
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

    async fn affected(&self, query: Query<'_>) -> Result<u64, StoreError> {
        bounded(self.settings.timeout, async {
            let done = query.execute(&self.pool).await.map_err(store_error)?;
            Ok(done.rows_affected())
        })
        .await
    }
}

impl fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStore")
            .field("table_prefix", &self.settings.prefix)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SessionStore for MySqlStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let columns = Columns::of_session(record)?;
        let query = sqlx::query(&self.sql.create).bind(record.id_hash.as_bytes().as_slice());
        match self.affected(bind_columns!(query, columns)).await {
            Ok(_) => Ok(true),
            Err(StoreError::Backend(err)) if is_duplicate_key(&*err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.fetch_entry(&self.sql.load, id).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let sql = self.update_sql(change);
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
        // MySQL has no `DELETE ... RETURNING`: the row is read under its
        // lock and deleted in one transaction.
        let row: Option<MySqlRow> = bounded(self.settings.timeout, async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            let row = sqlx::query(&self.sql.lock_row)
                .bind(id.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            if row.is_some() {
                sqlx::query(&self.sql.delete)
                    .bind(id.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok(row)
        })
        .await?;
        row.map(|row| Stored::read(&row)?.into_entry(*id))
            .transpose()
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
impl LockTable for MySqlStore {
    async fn take(&self, user_key: &[u8], token: &[u8], lease_ms: i64) -> Result<bool, StoreError> {
        let taken = sqlx::query(&self.sql.lock_take)
            .bind(user_key)
            .bind(token)
            .bind(lease_ms)
            .execute(&self.pool)
            .await;
        not_taken_on_deadlock(taken)
    }

    async fn clear_lapsed(&self, user_key: &[u8]) -> Result<bool, StoreError> {
        let cleared = sqlx::query(&self.sql.lock_clear)
            .bind(user_key)
            .execute(&self.pool)
            .await;
        not_taken_on_deadlock(cleared)
    }

    async fn give_back(&self, user_key: &[u8], token: &[u8]) -> Result<(), StoreError> {
        sqlx::query(&self.sql.lock_give_back)
            .bind(user_key)
            .bind(token)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// Whether a statement on the lock table changed its row. InnoDB can
/// report a deadlock when inserts race on a row just deleted (each holds a
/// shared lock on the deleted record and wants an exclusive one): one of
/// them is rolled back, which for a lock means only "not taken this time",
/// and the caller tries again.
fn not_taken_on_deadlock(
    result: Result<sqlx::mysql::MySqlQueryResult, sqlx::Error>,
) -> Result<bool, StoreError> {
    match result {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("40001") => Ok(false),
        Err(err) => Err(store_error(err)),
    }
}

/// Whether `err` is MySQL's duplicate-key error (a `create` on a taken key).
fn is_duplicate_key(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    err.downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .is_some_and(|db| db.is_unique_violation())
}
