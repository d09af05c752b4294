//! Sessions in Redis, shared by every instance of an application:
//! [`RedisStore`] (feature `redis`), for a single node, Redis Cluster, or
//! Valkey.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_session_guard::StoreError> {
//! use std::time::Duration;
//! use tower_session_guard::store::{CachedStore, RedisStore};
//! use tower_session_guard::{Key, SessionLayer};
//!
//! // One node, or any node of a Cluster (detected), or several seeds:
//! // "redis://10.0.0.1:6379,redis://10.0.0.2:6379".
//! let redis = RedisStore::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .with_prefix("shop:")                     // default "tsg:"
//!     .with_timeout(Duration::from_secs(1));    // default 2 s, then 503
//! // Optional: a local cache, invalidated across instances by pub/sub.
//! let store = CachedStore::new(redis, 100_000);
//! let layer = SessionLayer::new(store, Key::generate());
//! # Ok(())
//! # }
//! ```
//!
//! # Key layout
//!
//! Every key starts with the prefix (`tsg:` unless changed with
//! [`RedisStore::with_prefix`]). The parts in braces are Redis Cluster
//! *hash tags*: only they decide a key's slot. Each entry has a tag of its
//! own, so sessions spread evenly over the nodes; a user's index and lock
//! share the user's tag. No script touches more than one key, so nothing
//! depends on two keys sharing a slot.
//!
//! | key | type | holds | slot |
//! |---|---|---|---|
//! | `tsg:s:{<id hash>}` | hash | one [`Entry`]: a session, or the placeholder left under a replaced id | its own |
//! | `tsg:u:{<user hash>}:sessions` | sorted set | the user's index: session hashes, scored by absolute deadline | the user's |
//! | `tsg:u:{<user hash>}:lock` | string | the user's lock (a random token, with a lease) | the user's |
//! | `tsg:changes` | pub/sub channel | hashes of changed entries, for [`CachedStore`](super::CachedStore)s | — |
//!
//! `<id hash>` is the 64-hex-digit at-rest hash of the session id (never
//! the id), `<user hash>` 32 hex digits of a SHA-256 of the user id, so
//! user names stay out of key names and any user id makes a valid tag.
//!
//! An entry's hash has a field `kind` and, for each kind:
//!
//! - `s`, a session: `user`, `created`, `seen`, `idle`, `abs`, `issued`,
//!   `ver`, `ip`, `ua`, `bind` (the client binding, as JSON), and one field
//!   `d:<key>` per session key holding that value's JSON. Because each
//!   session key is its own field, a delta touches only the fields it names
//!   and never re-encodes the others.
//! - `f`, a renewal's forward: `succ` (the successor's hash), `sealed` (its
//!   id, readable only with the old one), `until`.
//! - `x`, a superseded marker: `succ`, `until`.
//!
//! # Atomicity
//!
//! Each primitive of [`SessionStore`] is one Lua script (or one command)
//! on one key, so it is atomic on its own, on a single node as on Cluster:
//!
//! | primitive | Redis |
//! |---|---|
//! | `create` | script: write the session only if the key is free |
//! | `load` | `HGETALL` |
//! | `update` | script: apply the delta to a session (nothing for a placeholder), move the deadlines forward only, bump `ver`, move the expiry |
//! | `replace` | script: only if the key holds a session at the given `ver`, delete it and write the new entry (or nothing) |
//! | `delete` | script: read the hash whole, then delete it |
//! | `index_add` | script: `ZADD`, trim, move the index's expiry |
//! | `index_members` | script: trim by score, `ZRANGE` |
//! | `index_remove` | `ZREM` |
//! | `lock_user` | `SET NX PX` with a random token; released by a compare-and-delete script |
//!
//! Every script that changes an entry also publishes its hash (in hex) on
//! the change channel, in the same atomic step; the update script adds
//! `:` and the version it left, so that caches at that version keep their
//! copies (a `create` publishes nothing: no cache holds a copy of a key
//! that held nothing).
//!
//! A session and its user's index are in different slots, so no script
//! covers both. The store needs none: the session protocol (logins under a
//! limit, renewals leaving a forward, logouts following a moved session) is
//! written once above the primitives, by the crate, in an order that is safe
//! when each primitive is atomic on one key only (see [`SessionStore`]). In
//! short: a new session is created and indexed before anything points to
//! it; a move replaces the old session only at the version it copied; an
//! index entry may be stale and readers check each one; a removal follows a
//! session that moved; and counting a user's sessions against the limit is
//! done under the user's lock.
//!
//! The lock's lease is five operation timeouts, at least 5 seconds: if an
//! instance dies holding a user's lock, that user's logins fail (`503`, as
//! waiting for the lock is bounded by the timeout) until the lease lapses.
//!
//! # Expiry
//!
//! The policy decides expiry from the record's deadlines. Redis's own TTL is
//! only a backstop: each entry gets `PEXPIREAT` at its end (a session's
//! earliest deadline, a placeholder's `until`) plus 30 seconds, so the layer
//! can still see *why* a session expired; every touch moves it. A user's
//! index expires 30 seconds after its last entry's absolute deadline.
//! Entries leave the index by score when it is read (those ending before
//! the reader's `now`) and when it is added to (those ending more than 30
//! seconds before Redis's own clock: their sessions are already gone from
//! Redis). Instances' clocks should agree with Redis's within those 30
//! seconds.
//!
//! # Round trips
//!
//! Loading a session is one round trip (`HGETALL`). Committing a request is
//! at most one more: one script for an update (data and activity), one for
//! a new session. The tests count them with `MONITOR`. Only the rare steps
//! take more, one round trip per primitive the protocol calls: following a
//! renewal's forward (one more load), moving a session to a new id (load,
//! create, replace; plus index add and remove for a signed-in user), a
//! login (6 after the request's load, moving an anonymous session: lock,
//! load, create, index, replace, unlock; with a session limit also the
//! index read and the user's sessions, loaded concurrently), a logout (2:
//! delete, and the index entry's removal), and listing or revoking a
//! user's sessions. After Redis restarts, the first use of each script
//! costs two more (`NOSCRIPT`, then `SCRIPT LOAD`).
//!
//! # Outages
//!
//! Every primitive is bounded by a timeout (default [`DEFAULT_TIMEOUT`], 2
//! seconds, see [`RedisStore::with_timeout`]). When Redis is down, slow or
//! unreachable, the primitive fails with [`StoreError::Timeout`] or
//! [`StoreError::Unavailable`] and the layer answers `503 Service
//! Unavailable`: nothing is dropped silently and no primitive waits longer
//! than the timeout (waiting for a user's lock included). Connections are
//! re-established in the background, so service resumes by itself when
//! Redis is back. A timed-out write may or may not have been applied;
//! either way the request that made it was answered `503`. Replies are
//! matched to requests by the client, so a late reply can never be taken
//! for another session's.
//!
//! [`Entry`]: crate::record::Entry

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::cluster::ClusterClient;
use ::redis::{Client, Value};
use async_trait::async_trait;
use tokio::runtime::Handle;

use self::codec::{
    data_field, decode_entry, encode_entry, encode_json, encode_session, expire_at, field_pairs,
};
use self::connection::{
    cluster_config, invalid_url, manager_config, runs_in_cluster_mode, store_error, Connection,
    Source,
};
use self::lock::RedisLock;
use self::scripts::{run, scripts};
use super::{bounded, ChangeListener, SessionStore, StoreError, UserLock};
use crate::clock::UnixMillis;
use crate::id::IdHash;
use crate::record::{Change, Entry, SessionRecord};

pub(crate) mod codec;
mod connection;
mod feed;
mod lock;
mod scripts;

/// The key prefix of [`RedisStore`] unless changed: `tsg:`.
pub const DEFAULT_PREFIX: &str = "tsg:";

/// How long a [`RedisStore`] operation may take unless changed: 2 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after its end Redis keeps an entry (see the module docs on
/// expiry).
const BACKSTOP_SLACK_MS: u64 = 30_000;

/// The shortest lease of a user's lock.
const MIN_LOCK_LEASE: Duration = Duration::from_secs(5);

/// A session store in Redis, shared by every instance pointed at it.
///
/// See the [module docs](self) for the key layout, how each primitive stays
/// atomic on a single node and on Redis Cluster, the round trips, and what
/// happens during an outage.
///
/// - [`connect`](Self::connect) a URL (a single node or any Cluster node;
///   Cluster mode is detected), or several comma-separated Cluster seeds;
/// - or build it from a [`redis::Client`]
///   ([`from_client`](Self::from_client), which connects lazily, so an
///   application can start while Redis is down), a
///   [`ClusterClient`] ([`from_cluster_client`](Self::from_cluster_client))
///   or an existing [`ConnectionManager`]
///   ([`from_connection_manager`](Self::from_connection_manager)).
///
/// Clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    /// Where the connection came from, to rebuild it with new timeouts.
    source: Source,
    /// Nodes the change feed may subscribe on (any node of a Cluster sees
    /// every message published on it).
    feed_nodes: Arc<[Client]>,
    prefix: Arc<str>,
    timeout: Duration,
    announce: bool,
    runtime: Option<Handle>,
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://[user:password@]host:port[/db]`,
    /// or `rediss://` where the `redis` crate is built with TLS).
    ///
    /// If the node runs in Cluster mode the store becomes a Cluster client
    /// with that node as seed. Several comma-separated URLs are taken as
    /// Cluster seeds.
    ///
    /// Uses the default timeout ([`DEFAULT_TIMEOUT`]) for connecting.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] or [`StoreError::Timeout`] when the URL
    /// is invalid or no node answers within the timeout.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let seeds: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let Some(first) = seeds.first() else {
            return Err(StoreError::Unavailable(
                "no Redis URL was given; pass e.g. \"redis://127.0.0.1:6379\"".into(),
            ));
        };
        let client = Client::open(*first).map_err(invalid_url)?;
        if seeds.len() == 1 && !runs_in_cluster_mode(&client).await? {
            let store = Self::from_client(client)?;
            // Connect now, so a wrong address fails here, not on the first request.
            bounded(DEFAULT_TIMEOUT, async {
                store.connection.query::<Value>(&::redis::cmd("PING")).await
            })
            .await?;
            return Ok(store);
        }
        let feed_nodes = seeds
            .iter()
            .map(|seed| Client::open(*seed).map_err(invalid_url))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = ClusterClient::new(seeds.iter().copied()).map_err(invalid_url)?;
        let connection = bounded(DEFAULT_TIMEOUT, async {
            cluster
                .get_async_connection_with_config(cluster_config(DEFAULT_TIMEOUT))
                .await
                .map_err(store_error)
        })
        .await?;
        Ok(Self::assemble(
            Connection::Cluster(connection),
            Source::Cluster(Arc::new(cluster)),
            feed_nodes,
        ))
    }

    /// A store on one Redis node, connecting lazily: the first operation
    /// connects, so an application can start while Redis is down (its
    /// requests get `503` until Redis is up).
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the client cannot be set up.
    pub fn from_client(client: Client) -> Result<Self, StoreError> {
        let manager = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config(DEFAULT_TIMEOUT),
        )
        .map_err(store_error)?;
        Ok(Self::assemble(
            Connection::Single(manager),
            Source::Single(client.clone()),
            vec![client],
        ))
    }

    /// A store on Redis Cluster, connecting lazily. `feed_nodes` are the
    /// nodes (any of the cluster's) the change feed for
    /// [`CachedStore`](super::CachedStore)s subscribes on, tried in turn;
    /// with none, the store announces its changes but cannot watch them.
    ///
    /// Must be called inside a Tokio runtime.
    #[must_use]
    pub fn from_cluster_client(cluster: ClusterClient, feed_nodes: Vec<Client>) -> Self {
        let connection =
            cluster.get_pending_async_connection_with_config(cluster_config(DEFAULT_TIMEOUT));
        Self::assemble(
            Connection::Cluster(connection),
            Source::Cluster(Arc::new(cluster)),
            feed_nodes,
        )
    }

    /// A store on an existing connection manager (a single node). Its own
    /// timeouts and reconnection settings stay as they were configured;
    /// [`with_timeout`](Self::with_timeout) still bounds every operation.
    /// `client` (for the same node) opens the change feed's connection.
    #[must_use]
    pub fn from_connection_manager(manager: ConnectionManager, client: Client) -> Self {
        Self::assemble(Connection::Single(manager), Source::Given, vec![client])
    }

    fn assemble(connection: Connection, source: Source, feed_nodes: Vec<Client>) -> Self {
        Self {
            connection,
            source,
            feed_nodes: feed_nodes.into(),
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
            announce: true,
            runtime: Handle::try_current().ok(),
        }
    }

    /// The prefix of every key and of the change channel. Default:
    /// [`DEFAULT_PREFIX`] (`tsg:`). Give applications sharing a Redis
    /// different prefixes.
    ///
    /// # Panics
    ///
    /// If `prefix` contains `{` or `}`: the store places its own Cluster
    /// hash tags, and braces in the prefix would override them.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            !prefix.contains(['{', '}']),
            "the Redis key prefix {prefix:?} contains a brace; the store adds its own Cluster hash \
             tags, so use a prefix without `{{` and `}}`, such as \"app:\""
        );
        self.prefix = prefix.into();
        self
    }

    /// How long one store operation may take before it fails with
    /// [`StoreError::Timeout`] (and the request gets `503`). Default:
    /// [`DEFAULT_TIMEOUT`] (2 seconds). Waiting for a user's lock counts.
    ///
    /// The connection's own connect and response timeouts are set to three
    /// quarters of it, so a dead connection is noticed and replaced before
    /// operations give up on it (not for a store built
    /// [`from_connection_manager`](Self::from_connection_manager), whose
    /// manager keeps its own settings).
    ///
    /// # Panics
    ///
    /// If `timeout` is shorter than one millisecond.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "the Redis operation timeout must be at least one millisecond; pass e.g. `Duration::from_secs(2)`"
        );
        self.timeout = timeout;
        if let Some(connection) = Connection::rebuilt(&self.source, timeout) {
            self.connection = connection;
        }
        self
    }

    /// Whether every change is published on the change channel for
    /// [`CachedStore`](super::CachedStore)s on other instances. Default:
    /// on. Turn it off only where no instance caches sessions: a cache then
    /// learns nothing of other instances' changes and keeps stale copies
    /// for its whole TTL. It must be the same on every instance. (On Redis
    /// Cluster every message travels to every node over the cluster bus:
    /// one small message per change.)
    #[must_use]
    pub fn with_change_notifications(mut self, announce: bool) -> Self {
        self.announce = announce;
        self
    }

    /// The operation timeout in force.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The key prefix in force.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn record_key(&self, id: &IdHash) -> String {
        codec::record_key(&self.prefix, id)
    }

    fn index_key(&self, user_id: &str) -> String {
        codec::index_key(&self.prefix, user_id)
    }

    /// The channel argument of the scripts: empty when changes are not announced.
    fn announce_to(&self) -> String {
        if self.announce {
            codec::channel(&self.prefix)
        } else {
            String::new()
        }
    }

    fn lock_lease(&self) -> Duration {
        (self.timeout * 5).max(MIN_LOCK_LEASE)
    }

    /// The arguments of the update script for `change` on `id`.
    fn update_args(&self, id: &IdHash, change: &Change) -> Result<Vec<String>, StoreError> {
        let mut args = vec![
            self.announce_to(),
            id.to_hex(),
            change
                .touch
                .map_or_else(String::new, |t| t.last_seen.to_string()),
            change
                .touch
                .map_or_else(String::new, |t| t.idle_deadline.to_string()),
            BACKSTOP_SLACK_MS.to_string(),
            match &change.binding {
                Some(binding) => encode_json(binding)?,
                None => String::new(),
            },
            change.removed.len().to_string(),
        ];
        args.extend(change.removed.iter().map(|key| data_field(key)));
        for (key, value) in &change.set {
            args.push(data_field(key));
            args.push(encode_json(value)?);
        }
        Ok(args)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("RedisStore")
            .field("mode", &self.connection.mode())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("change_notifications", &self.announce)
            .finish()
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let mut args = vec![expire_at(record.expires_at())];
        args.extend(
            encode_session(record)?
                .into_iter()
                .flat_map(|(f, v)| [f, v]),
        );
        let key = self.record_key(&record.id_hash);
        bounded(self.timeout, async {
            let created: i64 = run(&self.connection, &scripts().create, &key, &args).await?;
            Ok(created == 1)
        })
        .await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let key = self.record_key(id);
        bounded(self.timeout, async {
            let value: Value = self
                .connection
                .query(::redis::cmd("HGETALL").arg(key))
                .await?;
            decode_entry(*id, field_pairs(value)?)
        })
        .await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        let args = self.update_args(id, change)?;
        let key = self.record_key(id);
        bounded(self.timeout, async {
            let version: Option<i64> =
                run(&self.connection, &scripts().update, &key, &args).await?;
            Ok(version.map(|version| u64::from_ne_bytes(version.to_ne_bytes())))
        })
        .await
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        let mut args = vec![
            self.announce_to(),
            id.to_hex(),
            version.to_string(),
            with.map_or_else(String::new, |entry| expire_at(entry.expires_at())),
        ];
        if let Some(entry) = with {
            args.extend(encode_entry(entry)?.into_iter().flat_map(|(f, v)| [f, v]));
        }
        let key = self.record_key(id);
        bounded(self.timeout, async {
            let replaced: i64 = run(&self.connection, &scripts().replace, &key, &args).await?;
            Ok(replaced == 1)
        })
        .await
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        let args = [self.announce_to(), id.to_hex()];
        let key = self.record_key(id);
        bounded(self.timeout, async {
            let removed: Value = run(&self.connection, &scripts().delete, &key, &args).await?;
            decode_entry(*id, field_pairs(removed)?)
        })
        .await
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        let args = [
            id.to_hex(),
            until.to_string(),
            BACKSTOP_SLACK_MS.to_string(),
        ];
        let key = self.index_key(user_id);
        bounded(
            self.timeout,
            run::<Value>(&self.connection, &scripts().index_add, &key, &args),
        )
        .await?;
        Ok(())
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg(self.index_key(user_id));
        for id in ids {
            cmd.arg(id.to_hex());
        }
        bounded(self.timeout, self.connection.query::<Value>(&cmd)).await?;
        Ok(())
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        let args = [now.to_string()];
        let key = self.index_key(user_id);
        let members: Vec<String> = bounded(
            self.timeout,
            run(&self.connection, &scripts().index_read, &key, &args),
        )
        .await?;
        // A member that is not a hash cannot name a session: skip it.
        Ok(members.iter().filter_map(|m| IdHash::from_hex(m)).collect())
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        let key = codec::lock_key(&self.prefix, user_id);
        let lock = bounded(
            self.timeout,
            RedisLock::acquire(&self.connection, key, self.lock_lease(), self.timeout),
        )
        .await?;
        Ok(UserLock::from_held(lock))
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        if !self.announce || self.feed_nodes.is_empty() {
            return false;
        }
        let Some(runtime) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            tracing::warn!(
                target: "tower_session_guard",
                "no Tokio runtime to run the Redis change feed on; caches in front of this store \
                 keep copies for their whole TTL"
            );
            return false;
        };
        runtime.spawn(feed::follow_changes(
            Arc::clone(&self.feed_nodes),
            codec::channel(&self.prefix),
            self.timeout,
            listener,
        ));
        true
    }
}
