//! [`PostgresStore`]: sessions in PostgreSQL (feature `postgres`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::Row as _;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::codec::{self, Columns, Delta, Stored};
use super::lock::{self, LockTable};
use super::{bind_columns, bounded, store_error, Settings};
use crate::clock::UnixMillis;
use crate::id::IdHash;
use crate::record::{Change, Entry, SessionRecord};
use crate::store::{ChangeListener, SessionStore, StoreChange, StoreError, UserLock};

/// The database's clock in milliseconds, for lock leases.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A session store in PostgreSQL (10 or newer), on the application's own
/// [`PgPool`]. Clones share the pool.
///
/// See the [module docs](super) for the schema, how each primitive stays
/// atomic, the user lock, expiry and purging, and outages. Over
/// PostgreSQL a [`CachedStore`](crate::store::CachedStore) is invalidated
/// across instances through `LISTEN`/`NOTIFY`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_session_guard::store::{CachedStore, PostgresStore};
/// use tower_session_guard::{Key, SessionLayer};
///
/// let pool = sqlx::postgres::PgPoolOptions::new()
///     .max_connections(20)
///     .connect("postgres://app@127.0.0.1/app")
///     .await?;
/// let store = PostgresStore::new(pool).with_table_prefix("shop_"); // default "tsg_"
/// store.migrate().await?;
/// let _purge = store.spawn_purge_task(Duration::from_secs(300));
/// // Optional: a local cache, invalidated across instances by LISTEN/NOTIFY.
/// let layer = SessionLayer::new(CachedStore::new(store, 100_000), Key::generate());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    settings: Settings,
    sql: Arc<Statements>,
    announce: bool,
    runtime: Option<Handle>,
}

/// Every statement, written once for the table prefix.
struct Statements {
    create: String,
    load: String,
    update: String,
    replace_with: String,
    replace_none: String,
    delete: String,
    index_add: String,
    index_remove: String,
    index_members: String,
    lock_take: String,
    lock_clear: String,
    lock_give_back: String,
    purge: [String; 3],
    channel: String,
}

impl Statements {
    fn new(settings: &Settings, announce: bool) -> Self {
        let t = settings.tables();
        let channel = settings.channel();
        // A write that changed an entry announces its hash in the same
        // statement, for caches on other instances; PostgreSQL delivers
        // the notification when the statement commits.
        let announced = |write: String| {
            if announce {
                format!(
                    "WITH changed AS ({write} RETURNING id_hash) SELECT 1 FROM changed \
                     CROSS JOIN LATERAL pg_notify('{channel}', encode(changed.id_hash, 'hex'))"
                )
            } else {
                format!("{write} RETURNING 1")
            }
        };
        let columns = codec::entry_columns("data::text");
        let assignments = codec::WRITTEN_COLUMNS
            .iter()
            .enumerate()
            .map(|(n, column)| {
                let cast = if *column == "data" { "::jsonb" } else { "" };
                format!("{column} = ${}{cast}", n + 3)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let values = (0..codec::WRITTEN_COLUMNS.len())
            .map(|n| {
                let cast = if n == 2 { "::jsonb" } else { "" };
                format!("${}{cast}", n + 2)
            })
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            create: format!(
                "INSERT INTO {s} (id_hash, {cols}) VALUES ($1, {values}) \
                 ON CONFLICT (id_hash) DO NOTHING",
                s = t.sessions,
                cols = codec::WRITTEN_COLUMNS.join(", "),
            ),
            load: format!("SELECT {columns} FROM {} WHERE id_hash = $1", t.sessions),
            update: announced(format!(
                "UPDATE {s} SET \
                   data = (data - $2::text[]) || $3::jsonb, \
                   binding = COALESCE($4, binding), \
                   last_seen = GREATEST(last_seen, COALESCE($5, last_seen)), \
                   idle_deadline = CASE WHEN $6::bigint IS NULL THEN idle_deadline \
                     ELSE LEAST(GREATEST(idle_deadline, $6), absolute_deadline) END, \
                   version = version + 1 \
                 WHERE id_hash = $1 AND kind = 's'",
                s = t.sessions
            )),
            replace_with: announced(format!(
                "UPDATE {s} SET {assignments} WHERE id_hash = $1 AND kind = 's' AND version = $2",
                s = t.sessions
            )),
            replace_none: announced(format!(
                "DELETE FROM {s} WHERE id_hash = $1 AND kind = 's' AND version = $2",
                s = t.sessions
            )),
            delete: if announce {
                format!(
                    "WITH gone AS (DELETE FROM {s} WHERE id_hash = $1 RETURNING *) \
                     SELECT {columns}, pg_notify('{channel}', encode(id_hash, 'hex')) IS NULL \
                     FROM gone",
                    s = t.sessions
                )
            } else {
                format!(
                    "DELETE FROM {s} WHERE id_hash = $1 RETURNING {columns}",
                    s = t.sessions
                )
            },
            index_add: format!(
                "INSERT INTO {u} (user_key, id_hash, ends_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_key, id_hash) DO UPDATE SET ends_at = EXCLUDED.ends_at",
                u = t.users
            ),
            index_remove: format!(
                "DELETE FROM {u} WHERE user_key = $1 AND id_hash = ANY($2)",
                u = t.users
            ),
            index_members: format!(
                "SELECT id_hash FROM {u} WHERE user_key = $1 AND ends_at >= $2",
                u = t.users
            ),
            lock_take: format!(
                "INSERT INTO {l} (user_key, token, ends_at) VALUES ($1, $2, {NOW_MS} + $3) \
                 ON CONFLICT (user_key) DO NOTHING",
                l = t.locks
            ),
            lock_clear: format!(
                "DELETE FROM {l} WHERE user_key = $1 AND ends_at < {NOW_MS}",
                l = t.locks
            ),
            lock_give_back: format!(
                "DELETE FROM {l} WHERE user_key = $1 AND token = $2",
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
                     (SELECT {key} FROM {table} WHERE {deadline} < $1 ORDER BY {deadline} LIMIT $2)"
                )
            }),
            channel,
        }
    }
}

impl PostgresStore {
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
    pub fn new(pool: PgPool) -> Self {
        let settings = Settings::default();
        let sql = Arc::new(Statements::new(&settings, true));
        Self {
            pool,
            settings,
            sql,
            announce: true,
            runtime: Handle::try_current().ok(),
        }
    }

    /// The prefix of the store's table names (and of its `NOTIFY`
    /// channel). Default: [`DEFAULT_TABLE_PREFIX`](super::DEFAULT_TABLE_PREFIX)
    /// (`tsg_`). Give applications sharing a database different prefixes.
    ///
    /// # Panics
    ///
    /// If `prefix` is not 1 to 40 ASCII letters, digits and underscores,
    /// starting with a letter or an underscore: it becomes part of SQL
    /// statements.
    #[must_use]
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings = self.settings.with_prefix(prefix.into());
        self.sql = Arc::new(Statements::new(&self.settings, self.announce));
        self
    }

    /// How long one store operation may take before it fails with
    /// [`StoreError::Timeout`] (and the request gets `503`). Default:
    /// [`DEFAULT_TIMEOUT`](super::DEFAULT_TIMEOUT) (2 seconds). Waiting for
    /// a pooled connection and for a user's lock counts.
    ///
    /// # Panics
    ///
    /// If `timeout` is shorter than one millisecond.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.settings = self.settings.with_timeout(timeout);
        self
    }

    /// Whether every write announces the entry it changed with `NOTIFY`,
    /// for [`CachedStore`](crate::store::CachedStore)s on other instances.
    /// Default: on. Turn it off only where no instance caches sessions: it
    /// must be the same on every instance.
    #[must_use]
    pub fn with_change_notifications(mut self, announce: bool) -> Self {
        self.announce = announce;
        self.sql = Arc::new(Statements::new(&self.settings, announce));
        self
    }

    /// The pool the store uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
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
    /// instances at once (it holds a transaction-scoped advisory lock).
    ///
    /// # Errors
    ///
    /// When the database cannot be reached, refuses the DDL, or holds
    /// tables of a newer schema version than this crate knows.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let t = self.settings.tables();
        let steps = super::migrations(&t, super::Dialect::Postgres);
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&t.schema)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
            t.schema
        ))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let current: Option<i32> =
            sqlx::query_scalar(&format!("SELECT version FROM {} WHERE id = 1", t.schema))
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let current = super::check_version(current.map(i64::from), steps.len())?;
        for (version, statements) in steps.iter().enumerate().skip(current) {
            for statement in statements {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            sqlx::query(&format!(
                "INSERT INTO {} (id, version) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                t.schema
            ))
            .bind(i32::try_from(version + 1).unwrap_or(i32::MAX))
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

    async fn fetch_entry(&self, query: &str, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let row: Option<PgRow> = bounded(self.settings.timeout, async {
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

    /// Runs a write that returns a row when it changed something.
    async fn changed(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<bool, StoreError> {
        bounded(self.settings.timeout, async {
            let row = query
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
            Ok(row.is_some())
        })
        .await
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table_prefix", &self.settings.prefix)
            .field("timeout", &self.settings.timeout)
            .field("change_notifications", &self.announce)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let columns = Columns::of_session(record)?;
        let query = sqlx::query(&self.sql.create).bind(record.id_hash.as_bytes().as_slice());
        let query = bind_columns!(query, columns);
        bounded(self.settings.timeout, async {
            let done = query.execute(&self.pool).await.map_err(store_error)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.fetch_entry(&self.sql.load, id).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        let delta = Delta::of(change)?;
        let query = sqlx::query(&self.sql.update)
            .bind(id.as_bytes().as_slice())
            .bind(delta.removed)
            .bind(Delta::set_object(change)?)
            .bind(delta.binding)
            .bind(delta.last_seen)
            .bind(delta.idle_deadline);
        self.changed(query).await
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
                let query = sqlx::query(&self.sql.replace_with)
                    .bind(id.as_bytes().as_slice())
                    .bind(version);
                bind_columns!(query, columns)
            }
            None => sqlx::query(&self.sql.replace_none)
                .bind(id.as_bytes().as_slice())
                .bind(version),
        };
        self.changed(query).await
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.fetch_entry(&self.sql.delete, id).await
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
        bounded(self.settings.timeout, async {
            query.execute(&self.pool).await.map_err(store_error)?;
            Ok(())
        })
        .await
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        let query = sqlx::query(&self.sql.index_remove)
            .bind(codec::user_key(user_id))
            .bind(ids);
        bounded(self.settings.timeout, async {
            query.execute(&self.pool).await.map_err(store_error)?;
            Ok(())
        })
        .await
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

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        if !self.announce {
            return false;
        }
        let Some(runtime) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            tracing::warn!(
                target: "tower_session_guard",
                "no Tokio runtime to run the PostgreSQL change feed on; caches in front of this \
                 store keep copies for their whole TTL"
            );
            return false;
        };
        runtime.spawn(follow_changes(
            self.pool.clone(),
            self.sql.channel.clone(),
            self.settings.timeout,
            listener,
        ));
        true
    }
}

#[async_trait]
impl LockTable for PostgresStore {
    async fn take(&self, user_key: &[u8], token: &[u8], lease_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.lock_take)
            .bind(user_key)
            .bind(token)
            .bind(lease_ms)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn clear_lapsed(&self, user_key: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.lock_clear)
            .bind(user_key)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
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

/// How often an idle change feed checks that its connection still works.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Pauses between attempts to reconnect the change feed.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Keeps `listener` told of every change announced on `channel` while it
/// is active: `LISTEN` on a connection of its own (opened with the pool's
/// settings, outside the pool), the connection's state reported, a quiet
/// connection probed, and reconnected after a failure.
async fn follow_changes(
    pool: PgPool,
    channel: String,
    timeout: Duration,
    listener: Arc<dyn ChangeListener>,
) {
    let mut pause = RETRY_MIN;
    while listener.is_active() {
        let subscribed = bounded(timeout, async {
            let mut feed = PgListener::connect_with(&pool).await.map_err(store_error)?;
            feed.listen(&channel).await.map_err(store_error)?;
            Ok(feed)
        })
        .await;
        match subscribed {
            Ok(feed) => {
                pause = RETRY_MIN;
                listener.changed(StoreChange::Connected).await;
                relay(feed, timeout, &*listener).await;
                listener.changed(StoreChange::Disconnected).await;
                tracing::warn!(
                    target: "tower_session_guard",
                    "the PostgreSQL change feed was interrupted; caches are bypassed until it is back"
                );
            }
            Err(err) => tracing::debug!(
                target: "tower_session_guard",
                error = %err,
                "could not LISTEN for session changes; retrying"
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Passes notifications to `listener` until the connection fails or the
/// listener is gone. A quiet connection is probed with `SELECT 1`.
async fn relay(mut feed: PgListener, timeout: Duration, listener: &dyn ChangeListener) {
    let probe_timeout = timeout.min(PROBE_EVERY);
    while listener.is_active() {
        match tokio::time::timeout(PROBE_EVERY, feed.try_recv()).await {
            Ok(Ok(Some(notification))) => {
                if let Some(id) = IdHash::from_hex(notification.payload()) {
                    listener.changed(StoreChange::Changed(id)).await;
                }
            }
            // The connection was lost (`None`) or failed.
            Ok(Ok(None) | Err(_)) => return,
            Err(_) => {
                let probe =
                    tokio::time::timeout(probe_timeout, sqlx::query("SELECT 1").execute(&mut feed))
                        .await;
                if !matches!(probe, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}
