//! [`PostgresStore`]: sessions in PostgreSQL (feature `postgres`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::Postgres;
use tokio::runtime::Handle;

use super::backend::Dialect;
use super::backend::{runners, sealed::Backend, BoxFuture, Params};
use super::codec::{self, Delta};
use super::primitives::SqlStore;
use super::statements::Statements;
use super::{bounded, store_error};
use crate::id::IdHash;
use crate::record::Change;
use crate::store::{ChangeListener, StoreChange, StoreError};

/// A session store in PostgreSQL (10 or newer), on the application's own
/// [`PgPool`](sqlx::PgPool). Clones share the pool.
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
pub type PostgresStore = SqlStore<Postgres>;

/// What a PostgreSQL store holds besides its pool: whether writes announce
/// their changes, whether data writes commit synchronously, and the runtime
/// its change feed runs on.
#[derive(Clone)]
pub struct PgOptions {
    announce: bool,
    synchronous_data_writes: bool,
    runtime: Option<Handle>,
}

impl PostgresStore {
    /// Whether every write announces the entry it changed with `NOTIFY`,
    /// for [`CachedStore`](crate::store::CachedStore)s on other instances.
    /// Default: on. Turn it off only where no instance caches sessions: it
    /// must be the same on every instance.
    #[must_use]
    pub fn with_change_notifications(mut self, announce: bool) -> Self {
        self.extra.announce = announce;
        self.rewrite_statements();
        self
    }

    /// Whether a commit that only writes session data and activity (the
    /// delta of a request: keys set and removed, last seen, the idle
    /// deadline) waits for PostgreSQL to flush it to disk. Default: on,
    /// every commit is synchronous. `false` makes such commits asynchronous
    /// (`synchronous_commit = off` for that statement's transaction alone).
    ///
    /// An asynchronous commit returns before its WAL record is flushed,
    /// which saves a write most of its time; if the *database server*
    /// crashes, the data writes of its last moments (at most three times
    /// `wal_writer_delay`, 600 ms by default) are lost, though their
    /// requests were answered as saved, and those sessions come back as
    /// they were just before. Nothing else is: creating a session, logins,
    /// logouts, renewals, revocations, deletions, a changed client binding
    /// and the user index and lock commit synchronously either way, and each
    /// synchronous commit also makes every earlier asynchronous one durable,
    /// so a crash can never bring back a session that was logged out or
    /// revoked. A crash of the application loses nothing either way.
    ///
    /// Turn it off where losing a moment of session data to a crash of the
    /// database server is acceptable (carts, counters, preferences) and
    /// write latency matters.
    #[must_use]
    pub fn with_synchronous_data_writes(mut self, synchronous: bool) -> Self {
        self.extra.synchronous_data_writes = synchronous;
        self.rewrite_statements();
        self
    }
}

impl Backend for Postgres {
    type Extra = PgOptions;

    const STORE_NAME: &'static str = "PostgresStore";
    const DIALECT: Dialect = Dialect::Postgres;
    const NOW_MS: &'static str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
    const DATA_AS_TEXT: &'static str = "data::text";

    fn new_extra() -> PgOptions {
        PgOptions {
            announce: true,
            synchronous_data_writes: true,
            runtime: Handle::try_current().ok(),
        }
    }

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn data_placeholder(n: usize) -> String {
        format!("${n}::jsonb")
    }

    /// A write that changed an entry announces its hash in the same
    /// statement, for caches on other instances; PostgreSQL delivers the
    /// notification when the statement commits.
    fn announced(options: &PgOptions, write: String, channel: &str) -> String {
        if options.announce {
            format!(
                "WITH changed AS ({write} RETURNING id_hash) SELECT 1 FROM changed \
                 CROSS JOIN LATERAL pg_notify('{channel}', encode(changed.id_hash, 'hex'))"
            )
        } else {
            write
        }
    }

    fn delete_returning(
        options: &PgOptions,
        sessions: &str,
        columns: &str,
        channel: &str,
    ) -> String {
        if options.announce {
            format!(
                "WITH gone AS (DELETE FROM {sessions} WHERE id_hash = $1 RETURNING *) \
                 SELECT {columns}, pg_notify('{channel}', encode(id_hash, 'hex')) IS NULL \
                 FROM gone"
            )
        } else {
            format!("DELETE FROM {sessions} WHERE id_hash = $1 RETURNING {columns}")
        }
    }

    runners!();

    /// `data = (data - removed) || set`, with the keys removed as one
    /// `text[]` (parameter 7) and the keys set as one `jsonb` object; the
    /// second commits asynchronously when data writes are not synchronous.
    fn fixed_deltas(options: &PgOptions, sessions: &str, channel: &str) -> [String; 2] {
        let delta = |asynchronous: bool| {
            // Evaluated on the row it updates, so in force when this
            // statement's own transaction commits, and for it alone.
            let commit = if asynchronous {
                " AND set_config('synchronous_commit', 'off', true) = 'off'"
            } else {
                ""
            };
            let update = format!(
                "UPDATE {sessions} SET data = (data - $7::text[]) || $2::jsonb, {touch} \
                 WHERE id_hash = $1 AND kind = 's'{commit}",
                touch = Statements::touch::<Self>(3),
            );
            // The announcement names the version the update left, so that
            // a cache holding exactly that version keeps it.
            if options.announce {
                format!(
                    "WITH changed AS ({update} RETURNING id_hash, version) \
                     SELECT changed.version FROM changed CROSS JOIN LATERAL \
                     pg_notify('{channel}', encode(changed.id_hash, 'hex') || ':' || changed.version)"
                )
            } else {
                format!("{update} RETURNING version")
            }
        };
        [delta(false), delta(!options.synchronous_data_writes)]
    }

    fn update<'a>(
        store: &'a PostgresStore,
        id: &'a IdHash,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let delta = Delta::of(change)?;
            // A changed client binding is a security decision: it commits
            // synchronously, like the rest of them.
            let [synchronous, data_write] = &store.sql.fixed_deltas;
            let sql = if change.binding.is_some() {
                synchronous
            } else {
                data_write
            };
            let params = Params::new().id(id).text(Some(Delta::set_object(change)?));
            let query = delta
                .touch_params(params)
                .bind(sqlx::query(sql))
                .bind(&delta.removed);
            let row = bounded(store.settings.timeout, async {
                query.fetch_optional(&store.pool).await.map_err(store_error)
            })
            .await?;
            row.map(|row| sqlx::Row::try_get::<i64, _>(&row, 0).map(codec::version_of))
                .transpose()
                .map_err(store_error)
        })
    }

    fn migrate(store: &PostgresStore) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let schema = store.settings.tables().schema;
            let mut tx = store.pool.begin().await.map_err(store_error)?;
            Self::execute_on(
                &mut tx,
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                Params::new().text(Some(schema)),
            )
            .await
            .map_err(store_error)?;
            store.migrate_on(&mut tx).await?;
            tx.commit().await.map_err(store_error)
        })
    }

    fn watch_changes(store: &PostgresStore, listener: Arc<dyn ChangeListener>) -> bool {
        if !store.extra.announce {
            return false;
        }
        let runtime = store
            .extra
            .runtime
            .clone()
            .or_else(|| Handle::try_current().ok());
        let Some(runtime) = runtime else {
            tracing::warn!(
                target: "tower_session_guard",
                "no Tokio runtime to run the PostgreSQL change feed on; caches in front of this \
                 store keep copies for their whole TTL"
            );
            return false;
        };
        runtime.spawn(follow_changes(
            store.pool.clone(),
            store.sql.channel.clone(),
            store.settings.timeout,
            listener,
        ));
        true
    }

    fn debug_extra(options: &PgOptions, debug: &mut fmt::DebugStruct<'_, '_>) {
        debug
            .field("change_notifications", &options.announce)
            .field("synchronous_data_writes", &options.synchronous_data_writes);
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
                if let Some(change) = StoreChange::parse(notification.payload()) {
                    listener.changed(change).await;
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
