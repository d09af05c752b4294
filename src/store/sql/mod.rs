//! Durable sessions in SQL, on the application's own [sqlx] pool:
//! [`PostgresStore`] (feature `postgres`), [`SqliteStore`] (feature
//! `sqlite`) and [`MySqlStore`] (feature `mysql`, for MySQL 8 and MariaDB
//! 10.5 or newer).
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
//! use tower_session_guard::store::SqliteStore;
//! use tower_session_guard::{Key, SessionLayer};
//!
//! let options = SqliteConnectOptions::new()
//!     .filename("sessions.db")
//!     .create_if_missing(true);
//! let pool = SqlitePoolOptions::new().connect_with(options).await?;
//! let store = SqliteStore::new(pool)
//!     .with_table_prefix("shop_")               // default "tsg_"
//!     .with_timeout(Duration::from_secs(1));     // default 2 s, then 503
//! store.migrate().await?;                        // creates or upgrades the tables
//! let _purge = store.spawn_purge_task(Duration::from_secs(600));
//! let layer = SessionLayer::new(store, Key::generate());
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! [`migrate`](PostgresStore::migrate) creates four tables, named with the
//! store's prefix (`tsg_` unless changed with `with_table_prefix`, so that
//! applications sharing a database keep apart). The schema is versioned:
//! `tsg_schema` holds the version the tables are at, and `migrate` applies
//! the steps after it, safely from several instances at once. Version 1
//! creates the tables (every statement `IF NOT EXISTS`); version 2 adds
//! the `sign_in` and `grace_until` columns. The tables at version 2:
//!
//! | table | key | columns | indexes |
//! |---|---|---|---|
//! | `tsg_sessions` | `id_hash` | one [`Entry`]: `kind` (`s` a session, `f` a renewal's forward, `x` a superseded marker), `user_id`, `data` (a JSON object: `jsonb` on PostgreSQL, `JSON` on MySQL, text on SQLite), `created_at`, `last_seen`, `idle_deadline`, `absolute_deadline`, `id_issued_at`, `version`, `ip`, `user_agent`, `binding` (the client binding's JSON), `successor`, `sealed_id`, `sign_in` (the sign-in's JSON: authentication time, the session's own lifetime, the credential stamp's keyed hash), `grace_until` (a forward's end of grace; its deadlines hold when it may go); `expires_at` is generated as the earlier deadline | `expires_at` |
//! | `tsg_user_sessions` | `(user_key, id_hash)` | the users' index: `ends_at` (the session's absolute deadline) | the key (a user's sessions), `ends_at` |
//! | `tsg_locks` | `user_key` | a user's lock: `token`, `ends_at` (its lease) | `ends_at` |
//! | `tsg_schema` | `id` | `version` | |
//!
//! Keys are binary: `id_hash` is the 32-byte at-rest hash of the session
//! id (never the id, so a dump of the tables cannot be replayed), and
//! `user_key` a SHA-256 of the user id (any user id makes a fixed-size
//! key). Times are milliseconds since the Unix epoch (`BIGINT`). A
//! placeholder keeps its end in both deadlines, so `expires_at` covers
//! every kind.
//!
//! # Atomicity
//!
//! Each primitive of [`SessionStore`](super::SessionStore) is one statement
//! on one row, atomic on its own; the session protocol above them (limits,
//! renewals, logouts following a move) is the crate's, the same over every
//! store.
//!
//! | primitive | statement |
//! |---|---|
//! | `create` | `INSERT`, refused when the key exists (`ON CONFLICT DO NOTHING`; MySQL: the duplicate-key error) |
//! | `load` | `SELECT` by `id_hash` |
//! | `update` | one `UPDATE ... WHERE id_hash = ? AND kind = 's'` applying the delta in place (below), returning the new version (`RETURNING`; MySQL: `CAST(LAST_INSERT_ID(version + 1) AS SIGNED)`, read from the statement's result) |
//! | `replace` | `UPDATE` (or `DELETE`) `... WHERE id_hash = ? AND kind = 's' AND version = ?` |
//! | `delete` | `DELETE ... RETURNING` (MySQL: `SELECT ... FOR UPDATE` and `DELETE` in one transaction) |
//! | `index_add`, `index_remove`, `index_members` | an upsert, a `DELETE`, a `SELECT` on the user's rows |
//! | `lock_user` | see [Locking](#locking) |
//!
//! A commit sends only what the request changed, and the database applies
//! it to the row in one statement: the keys removed, the keys set, a touch
//! that only moves `last_seen` and the idle deadline forward (and never
//! past the absolute deadline), the binding if it changed, `version + 1`.
//! Two instances writing different keys of one session therefore both
//! keep their writes: there is no read-modify-write of the whole record.
//!
//! | backend | the data part of the delta |
//! |---|---|
//! | PostgreSQL | `data = (data - $removed::text[]) \|\| $set::jsonb` |
//! | MySQL, MariaDB | `data = JSON_SET(JSON_REMOVE(data, '$."k"', ...), '$."k"', JSON_EXTRACT(?, '$'), ...)` |
//! | SQLite | `data = json_set(json_remove(data, '$."k"', ...), '$."k"', json(?), ...)` |
//!
//! SQLite's JSON paths cannot name a key holding `"`, `\` or a control
//! character; a delta naming one is applied in a `BEGIN IMMEDIATE`
//! transaction instead (read, apply, write: SQLite lets one writer at a
//! time in, so it is just as atomic).
//!
//! Numbers in session data read back as they were set on every backend,
//! integers as integers and floats as floats with every bit, with one
//! exception: PostgreSQL's `jsonb` holds numbers as `numeric`, which has no
//! negative zero, so a `-0.0` reads back from a `PostgresStore` as `0.0`
//! (equal under `==`, without its sign). A
//! [`CachedStore`](super::CachedStore) in front keeps the `-0.0` its own
//! update set in its copy until the copy goes.
//!
//! # Durability
//!
//! Every write commits synchronously (it returns once the database has it
//! on disk), unless a `PostgresStore` is built with
//! [`with_synchronous_data_writes(false)`](PostgresStore::with_synchronous_data_writes):
//! then a request's delta that only writes session data and activity (keys
//! set and removed, last seen, the idle deadline) commits asynchronously.
//! The statement sets `synchronous_commit = off` for its own transaction
//! (`set_config(..., true)` on the row it updates), so nothing else on the
//! connection is affected. Such a commit skips the wait for the WAL flush,
//! which is most of a write's time; the price is that a crash of the
//! *database server* loses the data writes of its last moments (at most
//! three times `wal_writer_delay`, 600 ms by default), and those sessions
//! come back as they were just before. Creating a session, logins,
//! logouts, renewals, revocations, deletions, a changed client binding, the
//! user index and the user lock always commit synchronously, and every
//! synchronous commit makes all earlier asynchronous ones durable with it:
//! a crash never brings back a session that was logged out or revoked. A
//! crash of the application loses nothing either way. SQLite and MySQL
//! commit every write as their configuration says (on SQLite see
//! [`SqliteStore`] about `synchronous`).
//!
//! # Locking
//!
//! Logins and "log out everywhere" hold their user's lock, so that the
//! session limit holds under logins racing across instances. On all three
//! backends the lock is a row in `tsg_locks` with a lease:
//! taking it is an `INSERT` that does nothing when the user's row exists
//! (the unique key makes exactly one of racing inserts win), releasing it
//! a `DELETE` of the row holding the holder's random token, and a row
//! whose lease lapsed (by the database's clock: instances' clocks do not
//! matter) is removed by the next taker. Waiters retry with a backoff of
//! up to 20 ms, bounded by the operation timeout. (InnoDB may answer two
//! inserts racing on a just-released row with a deadlock error; for the
//! lock that only means "not taken yet", and the waiter retries.) On
//! SQLite, the writers of one process also take turns in an in-process
//! queue, so that SQLite's busy handler, which retries with sleeps and is
//! not fair, only arbitrates between processes.
//!
//! Why not an advisory lock (`pg_advisory_lock`, MySQL's `GET_LOCK`)? Those
//! belong to a connection, so the lock would pin a pooled connection for
//! as long as it is held, while the holder needs further connections for
//! the login itself: a burst of logins of different users could take
//! every connection of the pool and stall until the timeout. The lease row
//! pins nothing, behaves the same on every backend (SQLite files shared by
//! several processes included) and is what the Redis store does. The price:
//! if an instance dies holding a lock, that user's logins get `503` until
//! the lease lapses (five operation timeouts, at least 5 seconds).
//!
//! # Expiry and purging
//!
//! The policy decides expiry from the record's deadlines; rows past them
//! are only garbage. [`purge_expired`](PostgresStore::purge_expired)
//! deletes the rows that ended more than 30 seconds ago (sessions,
//! placeholders, index entries, lapsed locks) in batches of 1 000, each a
//! `DELETE` of the oldest rows found through the deadline index (never a
//! full-table scan), until a batch comes back short.
//! [`spawn_purge_task`](PostgresStore::spawn_purge_task) runs it on an
//! interval. Without it, sessions nobody comes back to stay in the table
//! (a session read after its deadline is removed by the layer).
//!
//! # Round trips
//!
//! Reading a session is one statement (one round trip once the statement
//! is prepared on the connection; sqlx caches prepared statements per
//! connection). Committing a request is at most one more: the delta's
//! `UPDATE`, or the new session's `INSERT`; a request that changed nothing
//! writes nothing. Build the pool with
//! `test_before_acquire(false)` to avoid sqlx's extra `ping` round trip
//! per operation. A login costs one statement per primitive the protocol
//! calls, like on Redis.
//!
//! # Caching
//!
//! A [`CachedStore`](super::CachedStore) in front of a `PostgresStore` is
//! invalidated across instances through `LISTEN`/`NOTIFY`: every write
//! that changes an entry calls `pg_notify` on `<prefix>changes` in the same
//! statement (delivered when it commits), with the entry's hash in hex as
//! the payload (and, for the delta's `UPDATE`, `:` and the version it
//! left, so that a cache already holding that version keeps its copy), and
//! the cache listens on a connection of its own, opened with the pool's
//! settings. A write request through the cache then costs one round trip:
//! the cache answers the load and keeps its copy current through the
//! update. While that
//! connection is down the cache is bypassed. SQLite and MySQL have no such
//! feed: over them a `CachedStore`'s copies live for its TTL (default 5
//! seconds), which then bounds how long another instance's change (a
//! revocation, say) can go unseen. One process over SQLite sees all its
//! own writes at once.
//!
//! # Outages
//!
//! Every primitive is bounded by a timeout (default [`DEFAULT_TIMEOUT`], 2
//! seconds; `with_timeout`), waiting for a pooled connection included.
//! When the database is down, slow or unreachable, the primitive fails
//! with [`StoreError::Timeout`] or [`StoreError::Unavailable`] and the
//! layer answers `503 Service Unavailable` and logs the error: a commit
//! that failed is never reported as saved. sqlx replaces broken
//! connections by itself, so service resumes when the database is back. A
//! timed-out write may or may not have been applied; either way its
//! request was answered `503`.
//!
//! [`Entry`]: crate::record::Entry

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use self::backend::Dialect;
use super::bounded;
use crate::store::StoreError;

mod backend;
pub(crate) mod codec;
mod lock;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod primitives;
#[cfg(feature = "sqlite")]
mod sqlite;
mod statements;

pub use self::backend::SqlBackend;
#[cfg(feature = "mysql")]
pub use self::mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use self::postgres::PostgresStore;
pub use self::primitives::SqlStore;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteStore;

/// The table prefix of the SQL stores unless changed: `tsg_`.
pub const DEFAULT_TABLE_PREFIX: &str = "tsg_";

/// How long a SQL store operation may take unless changed: 2 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after its end a row is kept before the purge deletes it: the
/// layer can still see *why* a session expired.
const BACKSTOP_SLACK_MS: u64 = 30_000;

/// Rows one purge statement deletes at most.
const PURGE_BATCH: i64 = 1_000;

/// The longest accepted table prefix (identifiers are limited to 63 bytes
/// on PostgreSQL and 64 on MySQL; the longest name added is 22).
const MAX_PREFIX_LEN: usize = 40;

/// What every SQL store is configured with.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    prefix: Arc<str>,
    timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_TABLE_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Settings {
    fn with_prefix(mut self, prefix: String) -> Self {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !prefix.starts_with(|c: char| c.is_ascii_digit());
        assert!(
            valid,
            "the table prefix {prefix:?} is not a plain SQL name; use 1 to {MAX_PREFIX_LEN} ASCII \
             letters, digits and underscores, starting with a letter, such as \"shop_\""
        );
        self.prefix = prefix.into();
        self
    }

    fn with_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "the SQL store's operation timeout must be at least one millisecond; pass e.g. \
             `Duration::from_secs(2)`"
        );
        self.timeout = timeout;
        self
    }

    fn tables(&self) -> Tables {
        let p = &self.prefix;
        Tables {
            sessions: format!("{p}sessions"),
            users: format!("{p}user_sessions"),
            locks: format!("{p}locks"),
            schema: format!("{p}schema"),
        }
    }

    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }
}

/// The store's table names.
struct Tables {
    sessions: String,
    users: String,
    locks: String,
    schema: String,
}

/// The schema's versions: step `n` brings the tables from version `n` to
/// `n + 1`. Append steps; never change one that shipped.
fn migrations(t: &Tables, dialect: Dialect) -> Vec<Vec<String>> {
    let (bytes, token, big, text, json, short) = match dialect {
        Dialect::Postgres => ("BYTEA", "BYTEA", "BIGINT", "TEXT", "JSONB", "TEXT"),
        Dialect::Sqlite => ("BLOB", "BLOB", "INTEGER", "TEXT", "TEXT", "TEXT"),
        Dialect::MySql => (
            "BINARY(32)",
            "VARBINARY(16)",
            "BIGINT",
            "TEXT",
            "JSON",
            "VARCHAR(45)",
        ),
    };
    let expires_at = match dialect {
        Dialect::Postgres => {
            "BIGINT GENERATED ALWAYS AS (LEAST(idle_deadline, absolute_deadline)) STORED"
        }
        Dialect::Sqlite => {
            "INTEGER GENERATED ALWAYS AS (MIN(idle_deadline, absolute_deadline)) VIRTUAL"
        }
        Dialect::MySql => {
            "BIGINT GENERATED ALWAYS AS (LEAST(idle_deadline, absolute_deadline)) STORED"
        }
    };
    let after = dialect.table_options();
    let kind = if dialect == Dialect::MySql {
        "CHAR(1)"
    } else {
        "TEXT"
    };
    // MySQL has no `CREATE INDEX IF NOT EXISTS`: its indexes are declared
    // with the table.
    let index = |table: &str, name: &str, column: &str| -> (String, Option<String>) {
        if dialect == Dialect::MySql {
            (format!(", INDEX {table}_{name} ({column})"), None)
        } else {
            (
                String::new(),
                Some(format!(
                    "CREATE INDEX IF NOT EXISTS {table}_{name} ON {table} ({column})"
                )),
            )
        }
    };
    let (sessions_inline, sessions_index) = index(&t.sessions, "expires_at", "expires_at");
    let (users_inline, users_index) = index(&t.users, "ends_at", "ends_at");
    let (locks_inline, locks_index) = index(&t.locks, "ends_at", "ends_at");
    let mut version_1 = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {s} (\
               id_hash {bytes} NOT NULL PRIMARY KEY, \
               kind {kind} NOT NULL, \
               user_id {text}, \
               data {json} NOT NULL, \
               created_at {big} NOT NULL, \
               last_seen {big} NOT NULL, \
               idle_deadline {big} NOT NULL, \
               absolute_deadline {big} NOT NULL, \
               id_issued_at {big} NOT NULL, \
               version {big} NOT NULL, \
               ip {short}, \
               user_agent {text}, \
               binding {text}, \
               successor {bytes}, \
               sealed_id {token}, \
               expires_at {expires_at}{sessions_inline}\
             ){after}",
            s = t.sessions
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {u} (\
               user_key {bytes} NOT NULL, \
               id_hash {bytes} NOT NULL, \
               ends_at {big} NOT NULL, \
               PRIMARY KEY (user_key, id_hash){users_inline}\
             ){after}",
            u = t.users
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {l} (\
               user_key {bytes} NOT NULL PRIMARY KEY, \
               token {token} NOT NULL, \
               ends_at {big} NOT NULL{locks_inline}\
             ){after}",
            l = t.locks
        ),
    ];
    version_1.extend(
        [sessions_index, users_index, locks_index]
            .into_iter()
            .flatten(),
    );
    // PostgreSQL can make the step idempotent; SQLite runs it in the
    // migration's transaction; on MySQL a step interrupted between its two
    // statements needs the first column dropped by hand.
    let if_missing = if dialect == Dialect::Postgres {
        "IF NOT EXISTS "
    } else {
        ""
    };
    let version_2 = vec![
        format!(
            "ALTER TABLE {s} ADD COLUMN {if_missing}sign_in {text}",
            s = t.sessions
        ),
        format!(
            "ALTER TABLE {s} ADD COLUMN {if_missing}grace_until {big}",
            s = t.sessions
        ),
    ];
    vec![version_1, version_2]
}

/// How many steps of [`migrations`] the tables are past, from the stored
/// version (`None`: no version row, new tables).
fn check_version(stored: Option<i64>, known: usize) -> Result<usize, StoreError> {
    let current = usize::try_from(stored.unwrap_or(0)).unwrap_or(usize::MAX);
    if current > known {
        return Err(StoreError::Unavailable(format!(
            "the session tables are at schema version {current}, newer than the {known} this \
             version of tower-session-guard knows; upgrade it, or use another table prefix"
        )));
    }
    Ok(current)
}

/// A sqlx error as the store reports it: a timeout, an unreachable
/// database, a row that does not decode, or anything else.
fn store_error(err: sqlx::Error) -> StoreError {
    use sqlx::Error;
    match err {
        Error::PoolTimedOut => StoreError::Timeout,
        Error::Io(_)
        | Error::Tls(_)
        | Error::Protocol(_)
        | Error::PoolClosed
        | Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
        Error::Database(ref db) if unavailable(db.code().as_deref()) => {
            StoreError::Unavailable(err.to_string())
        }
        Error::ColumnDecode { .. }
        | Error::Decode(_)
        | Error::ColumnNotFound(_)
        | Error::TypeNotFound { .. } => StoreError::Corrupt(err.to_string()),
        other => StoreError::Backend(Box::new(other)),
    }
}

/// Database error codes that say the database is not there right now:
/// PostgreSQL's connection exceptions (`08…`) and shutdowns (`57P0…`),
/// SQLite's busy and locked.
fn unavailable(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08")
            || code.starts_with("57P0")
            || matches!(code, "5" | "6" | "261" | "262" | "517")
    })
}

/// Runs `purge` every `every` until the task is aborted.
fn spawn_purge<F, Fut>(every: Duration, purge: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, StoreError>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match purge().await {
                Ok(purged) => tracing::debug!(
                    target: "tower_session_guard",
                    purged,
                    "purged expired session rows"
                ),
                Err(err) => tracing::error!(
                    target: "tower_session_guard",
                    error = %err,
                    "could not purge expired session rows; retrying at the next interval"
                ),
            }
        }
    })
}
