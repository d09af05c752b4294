//! [`SqlStore`]: the store primitives, written once over a backend's
//! statements and runner.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Pool;
use tokio::task::JoinHandle;

use super::backend::sealed::Backend;
use super::backend::{Params, SqlBackend};
use super::codec::{self, Columns, Delta};
use super::lock::{self, LockTable};
use super::statements::Statements;
use super::{bounded, store_error, Settings, BACKSTOP_SLACK_MS, PURGE_BATCH};
use crate::clock::{Clock, SystemClock, UnixMillis};
use crate::id::IdHash;
use crate::record::{Change, Entry, SessionRecord};
use crate::store::{ChangeListener, SessionStore, StoreError, UserLock};

/// A session store in a SQL database, on the application's own sqlx
/// [`Pool`]. Clones share the pool. Name it by its backend:
/// [`PostgresStore`](super::PostgresStore), [`SqliteStore`](super::SqliteStore)
/// or [`MySqlStore`](super::MySqlStore); see the [module docs](super) for
/// the schema, how each primitive stays atomic, the user lock, expiry and
/// purging, and outages.
pub struct SqlStore<DB: SqlBackend> {
    pub(super) pool: Pool<DB>,
    pub(super) settings: Settings,
    pub(super) sql: Arc<Statements>,
    pub(super) extra: DB::Extra,
}

impl<DB: SqlBackend> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            settings: self.settings.clone(),
            sql: Arc::clone(&self.sql),
            extra: self.extra.clone(),
        }
    }
}

impl<DB: SqlBackend> SqlStore<DB> {
    /// A store on `pool`, with the default table prefix (`tsg_`) and
    /// timeout (2 seconds). Call [`migrate`](Self::migrate) once before
    /// use to create the tables.
    ///
    /// The store uses the pool as it is configured. For one round trip per
    /// read, build it with
    /// [`test_before_acquire(false)`](sqlx::pool::PoolOptions::test_before_acquire)
    /// (sqlx otherwise pings each connection before handing it out; a
    /// broken connection then fails one operation, `503`, and is replaced).
    #[must_use]
    pub fn new(pool: Pool<DB>) -> Self {
        let settings = Settings::default();
        let extra = DB::new_extra();
        let sql = Arc::new(Statements::new::<DB>(&settings, &extra));
        Self {
            pool,
            settings,
            sql,
            extra,
        }
    }

    /// The prefix of the store's table names (and, on PostgreSQL, of its
    /// `NOTIFY` channel). Default:
    /// [`DEFAULT_TABLE_PREFIX`](super::DEFAULT_TABLE_PREFIX) (`tsg_`). Give
    /// applications sharing a database different prefixes.
    ///
    /// # Panics
    ///
    /// If `prefix` is not 1 to 40 ASCII letters, digits and underscores,
    /// starting with a letter or an underscore: it becomes part of SQL
    /// statements.
    #[must_use]
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings = self.settings.with_prefix(prefix.into());
        self.rewrite_statements();
        self
    }

    /// How long one store operation may take before it fails with
    /// [`StoreError::Timeout`] (and the request gets `503`). Default:
    /// [`DEFAULT_TIMEOUT`](super::DEFAULT_TIMEOUT) (2 seconds). Waiting for
    /// a pooled connection, for a user's lock and (on SQLite) for the
    /// database's write lock counts.
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
    pub fn pool(&self) -> &Pool<DB> {
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
    /// does nothing when they are current. Safe to run from several
    /// instances at once: PostgreSQL holds a transaction-scoped advisory
    /// lock, SQLite one `BEGIN IMMEDIATE` transaction, MySQL a named lock
    /// (`GET_LOCK`).
    ///
    /// # Errors
    ///
    /// When the database cannot be reached, refuses the DDL, or holds
    /// tables of a newer schema version than this crate knows.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        DB::migrate(self).await
    }

    /// Deletes the rows that ended more than 30 seconds ago (sessions,
    /// placeholders, index entries, lapsed locks), in batches of 1 000
    /// through the deadline indexes; returns how many.
    ///
    /// # Errors
    ///
    /// When the database fails; rows deleted by earlier batches stay deleted.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let before = codec::millis(SystemClock.now().saturating_sub(BACKSTOP_SLACK_MS));
        let mut purged = 0;
        for statement in &self.sql.purge {
            loop {
                let params = Params::new().integer(before).integer(PURGE_BATCH);
                let deleted = self.write(statement, params).await?;
                purged += deleted;
                if deleted < PURGE_BATCH.unsigned_abs() {
                    break;
                }
            }
        }
        Ok(purged)
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

    /// Writes the statements again after a setting they depend on changed.
    pub(super) fn rewrite_statements(&mut self) {
        self.sql = Arc::new(Statements::new::<DB>(&self.settings, &self.extra));
    }

    /// Runs a write in this process's turn, within the timeout; how many
    /// rows it changed.
    pub(super) async fn write(&self, sql: &str, params: Params) -> Result<u64, StoreError> {
        bounded(self.settings.timeout, async {
            let _turn = DB::write_turn(&self.extra).await;
            DB::execute(&self.pool, sql, params)
                .await
                .map_err(store_error)
        })
        .await
    }

    /// Runs a write that returns at most one row of one integer (a
    /// delta's `UPDATE ... RETURNING version`); that integer, as a version.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(super) async fn write_returning_version(
        &self,
        sql: &str,
        params: Params,
    ) -> Result<Option<u64>, StoreError> {
        bounded(self.settings.timeout, async {
            let _turn = DB::write_turn(&self.extra).await;
            DB::fetch_optional_integer(&self.pool, sql, params)
                .await
                .map_err(store_error)
        })
        .await
        .map(|version| version.map(codec::version_of))
    }

    /// Runs an insert that does nothing (or fails with a duplicate key)
    /// when the row exists; whether it inserted.
    async fn insert(&self, sql: &str, params: Params) -> Result<bool, StoreError> {
        bounded(self.settings.timeout, async {
            let _turn = DB::write_turn(&self.extra).await;
            inserted(DB::execute(&self.pool, sql, params).await)
        })
        .await
    }

    /// Runs a statement that reads (or deletes and returns) the entry
    /// under `id`, within the timeout.
    pub(super) async fn fetch_entry(
        &self,
        sql: &str,
        id: &IdHash,
        write: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let stored = bounded(self.settings.timeout, async {
            let _turn = if write {
                DB::write_turn(&self.extra).await
            } else {
                None
            };
            DB::fetch_entry(&self.pool, sql, Params::new().id(id)).await
        })
        .await?;
        stored.map(|stored| stored.into_entry(*id)).transpose()
    }

    /// Creates or upgrades the tables on `connection`, which holds
    /// whatever keeps concurrent migrations apart.
    pub(super) async fn migrate_on(
        &self,
        connection: &mut DB::Connection,
    ) -> Result<(), StoreError> {
        let t = self.settings.tables();
        let steps = super::migrations(&t, DB::DIALECT);
        DB::execute_on(
            connection,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, version INTEGER NOT NULL){}",
                t.schema,
                DB::DIALECT.table_options()
            ),
            Params::new(),
        )
        .await
        .map_err(store_error)?;
        let current = DB::fetch_integer(
            connection,
            &format!(
                "SELECT {} FROM {} WHERE id = 1",
                DB::as_bigint("version"),
                t.schema
            ),
        )
        .await
        .map_err(store_error)?;
        let current = super::check_version(current, steps.len())?;
        let record_version = format!(
            "INSERT INTO {} (id, version) VALUES (1, {}){}",
            t.schema,
            DB::placeholder(1),
            DB::on_conflict_update("id", "version")
        );
        // DDL commits by itself on MySQL: each step is idempotent instead.
        for (version, statements) in steps.iter().enumerate().skip(current) {
            for statement in statements {
                DB::execute_on(connection, statement, Params::new())
                    .await
                    .map_err(store_error)?;
            }
            let version = i64::try_from(version + 1).unwrap_or(i64::MAX);
            DB::execute_on(connection, &record_version, Params::new().integer(version))
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}

/// Whether an insert that may meet an existing row inserted one: a
/// duplicate key (MySQL reports it as an error) means it did not.
fn inserted(result: Result<u64, sqlx::Error>) -> Result<bool, StoreError> {
    match result {
        Ok(rows) => Ok(rows == 1),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(err) => Err(store_error(err)),
    }
}

/// Whether a statement on the lock table changed its row. InnoDB can
/// report a deadlock when inserts race on a row just deleted (each holds a
/// shared lock on the deleted record and wants an exclusive one): one of
/// them is rolled back, which for a lock means only "not taken this time",
/// and the caller tries again.
fn changed_lock_row(result: Result<u64, sqlx::Error>) -> Result<bool, StoreError> {
    match result {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("40001") => Ok(false),
        other => inserted(other),
    }
}

impl<DB: SqlBackend> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct(DB::STORE_NAME);
        debug
            .field("table_prefix", &self.settings.prefix)
            .field("timeout", &self.settings.timeout);
        DB::debug_extra(&self.extra, &mut debug);
        debug.finish_non_exhaustive()
    }
}

#[async_trait]
impl<DB: SqlBackend> SessionStore for SqlStore<DB> {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let params = Params::new()
            .id(&record.id_hash)
            .columns(Columns::of_session(record)?);
        self.insert(&self.sql.create, params).await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.fetch_entry(&self.sql.load, id, false).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        DB::update(self, id, change).await
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        let version = codec::version_param(version);
        let (sql, params) = match with {
            Some(entry) => (
                &self.sql.replace_with,
                Params::new().columns(Columns::of(entry)?).id(id),
            ),
            None => (&self.sql.replace_none, Params::new().id(id)),
        };
        Ok(self.write(sql, params.integer(version)).await? == 1)
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        DB::delete(self, id).await
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        let params = Params::new()
            .bytes(codec::user_key(user_id))
            .id(id)
            .integer(codec::millis(until));
        self.write(&self.sql.index_add, params).await.map(drop)
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = self.sql.index_remove::<DB>(ids.len());
        let params = ids
            .iter()
            .fold(Params::new().bytes(codec::user_key(user_id)), Params::id);
        self.write(&sql, params).await.map(drop)
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        let params = Params::new()
            .bytes(codec::user_key(user_id))
            .integer(codec::millis(now));
        let keys = bounded(self.settings.timeout, async {
            DB::fetch_keys(&self.pool, &self.sql.index_members, params)
                .await
                .map_err(store_error)
        })
        .await?;
        Ok(keys.iter().filter_map(|key| codec::id_hash(key)).collect())
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        lock::lock_user(
            Arc::new(self.clone()),
            codec::user_key(user_id),
            self.settings.timeout,
        )
        .await
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        DB::watch_changes(self, listener)
    }
}

#[async_trait]
impl<DB: SqlBackend> LockTable for SqlStore<DB> {
    async fn take(&self, user_key: &[u8], token: &[u8], lease_ms: i64) -> Result<bool, StoreError> {
        let params = Params::new().bytes(user_key).bytes(token).integer(lease_ms);
        let _turn = DB::write_turn(&self.extra).await;
        changed_lock_row(DB::execute(&self.pool, &self.sql.lock_take, params).await)
    }

    async fn clear_lapsed(&self, user_key: &[u8]) -> Result<bool, StoreError> {
        let params = Params::new().bytes(user_key);
        let _turn = DB::write_turn(&self.extra).await;
        changed_lock_row(DB::execute(&self.pool, &self.sql.lock_clear, params).await)
    }

    async fn give_back(&self, user_key: &[u8], token: &[u8]) -> Result<(), StoreError> {
        let params = Params::new().bytes(user_key).bytes(token);
        let _turn = DB::write_turn(&self.extra).await;
        DB::execute(&self.pool, &self.sql.lock_give_back, params)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// The statement and parameters of a delta written with JSON paths (SQLite,
/// MySQL): `json_remove` of the keys removed and `json_set` of the keys
/// set, each value made JSON by `value` (an expression of one parameter);
/// `None` when `path` cannot name a key.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(super) fn json_path_update<DB: Backend>(
    store: &SqlStore<DB>,
    id: &IdHash,
    change: &Change,
    value: &str,
    path: impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, Params)>, StoreError> {
    let delta = Delta::of(change)?;
    let mut data = "data".to_owned();
    let mut params = Params::new();
    if !delta.removed.is_empty() {
        let paths = vec!["?"; delta.removed.len()].join(", ");
        data = format!("json_remove({data}, {paths})");
        for key in &delta.removed {
            let Some(path) = path(key) else {
                return Ok(None);
            };
            params = params.text(Some(path));
        }
    }
    if !change.set.is_empty() {
        let pairs = vec![format!("?, {value}"); change.set.len()].join(", ");
        data = format!("json_set({data}, {pairs})");
        for (key, value) in Delta::set_values(change)? {
            let Some(path) = path(&key) else {
                return Ok(None);
            };
            params = params.text(Some(path)).text(Some(value));
        }
    }
    let sql = format!(
        "UPDATE {s} SET data = {data}, {touch} WHERE id_hash = ? AND kind = 's'",
        s = store.sql.sessions,
        touch = Statements::touch::<DB>(1),
    );
    Ok(Some((sql, delta.touch_params(params).id(id))))
}
