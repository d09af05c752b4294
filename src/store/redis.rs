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
//! *hash tags*: only they decide a key's slot. Each session record has a
//! tag of its own, so sessions spread evenly over the nodes; a user's index
//! and login lock share the user's tag, so one node owns a user's login
//! state. No script touches more than one key (see below), so nothing
//! depends on two keys sharing a slot by chance.
//!
//! | key | type | holds | slot |
//! |---|---|---|---|
//! | `tsg:s:{<id hash>}` | hash | one session record, or the placeholder left under a replaced id | its own |
//! | `tsg:u:{<user hash>}:sessions` | sorted set | the user's session hashes, scored by absolute deadline | the user's |
//! | `tsg:u:{<user hash>}:lock` | string | the user's login lock (token, with a lease) | the user's |
//! | `tsg:changes` | pub/sub channel | hashes of changed records, for [`CachedStore`](super::CachedStore)s | — |
//!
//! `<id hash>` is the 64-hex-digit at-rest hash of the session id (never
//! the id), `<user hash>` 32 hex digits of a SHA-256 of the user id, so
//! user names stay out of key names and any user id makes a valid tag.
//!
//! A record's hash has the fields `kind` (`s` session, `f` a renewal's
//! forwarding entry, `x` a superseded marker), `user`, `created`, `seen`,
//! `idle`, `abs`, `issued`, `ver`, `ip`, `ua`, `bind` (the client binding,
//! as JSON), `succ` and `sealed` (a forwarding entry's successor), and one
//! field `d:<key>` per session key holding that value's JSON. Because each session key is its own field, a
//! delta touches only the fields it names and never re-encodes the others.
//!
//! # Atomicity
//!
//! Each operation on one key is one Lua script, so it is atomic on its own:
//! create (only if the key is free), update (apply the delta, move the
//! deadlines forward only, bump the version, refresh the expiry), delete,
//! and replace-with-placeholder (only if the key still holds a session).
//! Every script that changes a record also publishes its hash on the change
//! channel, in the same atomic step.
//!
//! A session and its user's index are in different slots (the session's
//! slot comes from its random id, which is all a request knows), so no
//! single script can cover both. Operations that span them are ordered so
//! that every state in between is safe:
//!
//! - **Moving a session to a new id** (login, `regenerate()`, renewal):
//!   read the old record; create the new one (not yet reachable: nobody
//!   knows its id); add it to the user's index; then replace the old record
//!   with its placeholder if it is still a session. If that last step finds
//!   the old id deleted or already replaced (a logout, a concurrent renewal
//!   that won), the new record is deleted again and the move reports no
//!   session, so of concurrent renewals exactly one wins and a logout is
//!   never undone. Writes that landed on the old record between the read
//!   and the replacement come back from the replacing script and are
//!   applied to the new record, so they are not lost. A session is thus in
//!   its user's index before anyone can reach it.
//! - **Login** takes the user's lock first (`SET NX PX` with a random token
//!   and a lease of five operation timeouts, at least 5 seconds; released
//!   by a compare-and-delete script, or by the lease if the instance dies).
//!   Under it, the live sessions are read from the index, the limit is
//!   applied with [`sessions_to_evict`],
//!   the session is created or moved and indexed, and the evicted sessions
//!   are deleted. If an evicted session turns out to have been renewed at
//!   that moment, its successor is already in the index, so the index is
//!   read again and the limit applied again. Concurrent logins of one user,
//!   on any number of instances, therefore never overshoot the limit. (For
//!   the instant a session is being moved to a new id both ids count, so a
//!   login at that very moment may evict or refuse one session too many,
//!   never one too few.)
//! - **Logout everywhere** (`delete_user`) takes the same lock and deletes
//!   the indexed sessions, re-reading the index until a pass finds nothing
//!   more (a renewal running meanwhile indexes its new id before the old
//!   one becomes a placeholder, so the next pass finds it).
//! - **Index trimming**: entries whose absolute deadline has passed are
//!   removed by score whenever the index is written or read; entries whose
//!   record is gone, expired, replaced or of another user are removed when
//!   a read finds them. A record is always written before its index entry,
//!   so an entry without a record is dead and safe to remove. The index key
//!   expires with its last entry.
//!
//! # Expiry
//!
//! The policy decides expiry from the record's deadlines. Redis's own TTL is
//! only a backstop: each record gets `PEXPIREAT` at its earliest deadline
//! plus 30 seconds (so the layer can still see *why* a session expired), and
//! every touch moves it. Instances' clocks should agree with Redis's within
//! those 30 seconds.
//!
//! # Round trips
//!
//! Loading a session is one round trip (`HGETALL`). Committing a request is
//! at most one more: one script for an update (data and activity), one for
//! a new session. The tests count them with `MONITOR`. Only the rare steps
//! take more: following a renewal's forwarding entry (one more load, or one
//! more update), moving a session to a new id (3: read, create, replace;
//! plus 1 to index a signed-in user's session, plus 1 if writes landed on
//! the old id meanwhile), a login (7 to 9, most of them a few bytes) and
//! listing or revoking a user's sessions (a handful, the reads of the
//! sessions themselves sent concurrently). After Redis restarts, the first
//! use of each script costs two more (`NOSCRIPT`, then `SCRIPT LOAD`).
//!
//! # Outages
//!
//! Every operation is bounded by a timeout (default [`DEFAULT_TIMEOUT`], 2
//! seconds, see [`RedisStore::with_timeout`]). When Redis is down, slow or
//! unreachable, the operation fails with [`StoreError::Timeout`] or
//! [`StoreError::Unavailable`] and the layer answers `503 Service
//! Unavailable`: nothing is dropped silently and no request waits longer
//! than the timeout for the store. Connections are re-established in the
//! background, so service resumes by itself when Redis is back. A timed-out
//! write may or may not have been applied; either way the request that made
//! it was answered `503`. Replies are matched to requests by the client, so
//! a late reply can never be taken for another session's.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use async_trait::async_trait;
use futures_util::future::join_all;
use futures_util::StreamExt;
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::{
    ChangeListener, Login, LoginOutcome, Regeneration, SessionStore, StoreChange, StoreError,
};
use crate::clock::{duration_millis, UnixMillis};
use crate::id::{IdHash, SealedId};
use crate::policy::{is_live_session_of, sessions_to_evict, SessionLimit};
use crate::record::{Change, SessionData, SessionRecord, Successor, Touch};

/// The key prefix of [`RedisStore`] unless changed: `tsg:`.
pub const DEFAULT_PREFIX: &str = "tsg:";

/// How long a [`RedisStore`] operation may take unless changed: 2 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after its earliest deadline Redis keeps a record (see the
/// module docs on expiry).
const BACKSTOP_SLACK_MS: u64 = 30_000;

/// How often an idle change feed checks that its connection still works.
const FEED_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Pauses between attempts to reconnect the change feed.
const FEED_RETRY_MIN: Duration = Duration::from_millis(50);
const FEED_RETRY_MAX: Duration = Duration::from_secs(1);

/// Passes of `delete_user` and eviction rounds of `login`, at most.
const MAX_PASSES: usize = 8;

const KIND_SESSION: &str = "s";
const KIND_FORWARD: &str = "f";
const KIND_SUPERSEDED: &str = "x";
const DATA_FIELD: &str = "d:";

/// Creates a record unless its key is taken.
/// KEYS: record. ARGV: expire-at, then field/value pairs.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
";

/// Applies a delta to a session; reports a forwarding entry's successor.
/// KEYS: record. ARGV: channel ('' for none), hash, touch last-seen ('' for
/// none), touch idle deadline, backstop slack, client binding JSON ('' for
/// unchanged), number of removed fields, the removed fields, then set
/// field/value pairs.
const UPDATE: &str = r"
local kind = redis.call('HGET', KEYS[1], 'kind')
if kind == 'f' then return {2, redis.call('HGET', KEYS[1], 'succ')} end
if kind ~= 's' then return {0} end
local removed = tonumber(ARGV[7])
for i = 8, 7 + removed do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 8 + removed, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'bind', ARGV[6]) end
if ARGV[3] ~= '' then
  if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[1], 'seen')) then
    redis.call('HSET', KEYS[1], 'seen', ARGV[3])
  end
  local idle = redis.call('HGET', KEYS[1], 'idle')
  local abs = redis.call('HGET', KEYS[1], 'abs')
  if tonumber(ARGV[4]) > tonumber(idle) then idle = ARGV[4] end
  if tonumber(idle) > tonumber(abs) then idle = abs end
  redis.call('HSET', KEYS[1], 'idle', idle)
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(idle) + tonumber(ARGV[5])))
end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return {1}
";

/// Deletes a record, optionally only if it belongs to a user.
/// KEYS: record. ARGV: channel, hash, '1' to require the user, the user.
/// Returns {0} nothing there, {1} a session deleted, {2} a placeholder
/// deleted, {2, successor} a forwarding entry deleted, {-1} another user's
/// (left alone).
const DELETE: &str = r"
local found = redis.call('HMGET', KEYS[1], 'kind', 'user', 'succ')
if not found[1] then return {0} end
if ARGV[3] == '1' and found[2] ~= ARGV[4] then return {-1} end
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
if found[1] == 's' then return {1} end
if found[1] == 'f' and found[3] then return {2, found[3]} end
return {2}
";

/// Replaces a session with a placeholder if it is still a session.
/// KEYS: record. ARGV: channel, hash, the version read, expire-at, then the
/// placeholder's field/value pairs. Returns {0} when there is no session,
/// {1} when it was unchanged since read, {2, fields} with what it held when
/// it had changed.
const REPLACE: &str = r"
if redis.call('HGET', KEYS[1], 'kind') ~= 's' then return {0} end
local version = redis.call('HGET', KEYS[1], 'ver')
local current = {}
if version ~= ARGV[3] then current = redis.call('HGETALL', KEYS[1]) end
redis.call('DEL', KEYS[1])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
if version == ARGV[3] then return {1} end
return {2, current}
";

/// Adds a session to a user's index and trims it.
/// KEYS: index. ARGV: member, score (absolute deadline), now, slack.
const INDEX_ADD: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(last[2]) + tonumber(ARGV[4])))
end
return 1
";

/// Trims a user's index by score and returns its members.
/// KEYS: index. ARGV: now ('' to skip trimming).
const INDEX_READ: &str = r"
if ARGV[1] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Releases a lock if this holder still has it.
/// KEYS: lock. ARGV: token.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The Lua scripts, hashed once per process.
struct Scripts {
    create: Script,
    update: Script,
    delete: Script,
    replace: Script,
    index_add: Script,
    index_read: Script,
    unlock: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        create: Script::new(CREATE),
        update: Script::new(UPDATE),
        delete: Script::new(DELETE),
        replace: Script::new(REPLACE),
        index_add: Script::new(INDEX_ADD),
        index_read: Script::new(INDEX_READ),
        unlock: Script::new(UNLOCK),
    })
}

/// A session store in Redis, shared by every instance pointed at it.
///
/// See the [module docs](self) for the key layout, how each operation stays
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

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

#[derive(Clone)]
enum Source {
    Single(Client),
    Cluster(Arc<ClusterClient>),
    Given,
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
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
                let mut connection = store.connection.clone();
                ::redis::cmd("PING")
                    .query_async::<Value>(&mut connection)
                    .await
                    .map_err(store_error)
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
    /// [`DEFAULT_TIMEOUT`] (2 seconds).
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
        match &self.source {
            Source::Single(client) => {
                if let Ok(manager) =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
                {
                    self.connection = Connection::Single(manager);
                }
            }
            Source::Cluster(cluster) => {
                self.connection = Connection::Cluster(
                    cluster.get_pending_async_connection_with_config(cluster_config(timeout)),
                );
            }
            Source::Given => {}
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
        record_key(&self.prefix, id)
    }

    fn index_key(&self, user_id: &str) -> String {
        user_key(&self.prefix, user_id, "sessions")
    }

    fn lock_key(&self, user_id: &str) -> String {
        user_key(&self.prefix, user_id, "lock")
    }

    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    /// The channel argument of the scripts: empty when changes are not announced.
    fn announce_to(&self) -> String {
        if self.announce {
            self.channel()
        } else {
            String::new()
        }
    }

    fn lock_lease(&self) -> Duration {
        (self.timeout * 5).max(Duration::from_secs(5))
    }

    async fn run<T>(&self, script: &Script, key: &str, args: &[String]) -> Result<T, StoreError>
    where
        T: ::redis::FromRedisValue,
    {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        cmd.query_async(&mut connection).await.map_err(store_error)
    }

    /// The record under `id`, as stored (one `HGETALL`).
    async fn fetch(&self, id: &IdHash) -> Result<Option<SessionRecord>, StoreError> {
        let value: Value = self
            .query(::redis::cmd("HGETALL").arg(self.record_key(id)))
            .await?;
        let fields = field_pairs(value)?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_record(*id, fields).map(Some)
    }

    async fn insert_new(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        let mut args = vec![expire_at(record)];
        args.extend(encode_record(record)?.into_iter().flat_map(|(f, v)| [f, v]));
        let created: i64 = self
            .run(&scripts().create, &self.record_key(&record.id_hash), &args)
            .await?;
        Ok(created == 1)
    }

    async fn apply(&self, id: &IdHash, change: &Change) -> Result<Applied, StoreError> {
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
        let reply: Vec<Value> = self
            .run(&scripts().update, &self.record_key(id), &args)
            .await?;
        match reply.as_slice() {
            [Value::Int(1)] => Ok(Applied::Done),
            [Value::Int(2), successor] => {
                let hex = text(successor.clone())?;
                IdHash::from_hex(&hex)
                    .map(Applied::Forwarded)
                    .ok_or_else(|| corrupt("a forwarding entry names an invalid successor"))
            }
            _ => Ok(Applied::Missing),
        }
    }

    async fn remove(&self, id: &IdHash, only_of: Option<&str>) -> Result<Removed, StoreError> {
        let args = [
            self.announce_to(),
            id.to_hex(),
            if only_of.is_some() { "1" } else { "0" }.to_owned(),
            only_of.unwrap_or_default().to_owned(),
        ];
        let reply: Vec<Value> = self
            .run(&scripts().delete, &self.record_key(id), &args)
            .await?;
        Ok(match reply.as_slice() {
            [Value::Int(1)] => Removed::Session,
            [Value::Int(2), successor] => {
                let hex = text(successor.clone())?;
                Removed::Forward(
                    IdHash::from_hex(&hex)
                        .ok_or_else(|| corrupt("a forwarding entry names an invalid successor"))?,
                )
            }
            [Value::Int(2)] => Removed::Placeholder,
            [Value::Int(-1)] => Removed::OtherUser,
            _ => Removed::Nothing,
        })
    }

    /// Deletes the session under `id`, following a renewal's forwarding
    /// entry to the session it points to, so a session renewed a moment
    /// ago cannot escape a logout, a revocation or an eviction. Returns the
    /// hash of the session deleted, if one was.
    async fn remove_following(
        &self,
        id: &IdHash,
        only_of: Option<&str>,
        keep: Option<&IdHash>,
    ) -> Result<Option<IdHash>, StoreError> {
        let mut current = *id;
        for _ in 0..MAX_PASSES {
            match self.remove(&current, only_of).await? {
                Removed::Session => return Ok(Some(current)),
                Removed::Forward(next) if Some(&next) != keep => current = next,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Replaces the session under `old` with `placeholder` if it is still
    /// a session.
    async fn replace(
        &self,
        old: &SessionRecord,
        placeholder: &SessionRecord,
    ) -> Result<Replaced, StoreError> {
        let mut args = vec![
            self.announce_to(),
            old.id_hash.to_hex(),
            old.version.to_string(),
            expire_at(placeholder),
        ];
        args.extend(
            encode_record(placeholder)?
                .into_iter()
                .flat_map(|(f, v)| [f, v]),
        );
        let reply: Vec<Value> = self
            .run(&scripts().replace, &self.record_key(&old.id_hash), &args)
            .await?;
        match reply.as_slice() {
            [Value::Int(1)] => Ok(Replaced::Unchanged),
            [Value::Int(2), current] => {
                let fields = field_pairs(current.clone())?;
                decode_record(old.id_hash, fields).map(|r| Replaced::Changed(Box::new(r)))
            }
            _ => Ok(Replaced::NoSession),
        }
    }

    async fn index_add(
        &self,
        user_id: &str,
        record: &SessionRecord,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let args = [
            record.id_hash.to_hex(),
            record.absolute_deadline.to_string(),
            now.to_string(),
            BACKSTOP_SLACK_MS.to_string(),
        ];
        self.run::<Value>(&scripts().index_add, &self.index_key(user_id), &args)
            .await?;
        Ok(())
    }

    /// The user's indexed hashes; with `now`, dead entries by score go first.
    async fn index_members(
        &self,
        user_id: &str,
        now: Option<UnixMillis>,
    ) -> Result<Vec<IdHash>, StoreError> {
        let args = [now.map_or_else(String::new, |n| n.to_string())];
        let members: Vec<String> = self
            .run(&scripts().index_read, &self.index_key(user_id), &args)
            .await?;
        // An entry that is not a hash cannot name a session: skip it.
        Ok(members.iter().filter_map(|m| IdHash::from_hex(m)).collect())
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
        self.query::<Value>(&cmd).await?;
        Ok(())
    }

    /// The user's live sessions at `now`; dead index entries are dropped.
    async fn live_sessions(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        let members = self.index_members(user_id, Some(now)).await?;
        let records = join_all(members.iter().map(|id| self.fetch(id))).await;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (id, record) in members.iter().zip(records) {
            match record? {
                Some(record) if is_live_session_of(&record, user_id, now) => {
                    live.push(Arc::new(record));
                }
                _ => dead.push(*id),
            }
        }
        self.index_remove(user_id, &dead).await?;
        Ok(live)
    }

    /// Moves the session `old` to `moved.id_hash`, leaving `placeholder`
    /// under the old id (see "Atomicity" in the module docs). `None` when
    /// `old` stopped being a session before the move completed.
    ///
    /// `own` is the change this move applies (its keys win over concurrent
    /// writes); `carry_data` is false when the move drops the old data.
    async fn move_session(
        &self,
        old: &SessionRecord,
        mut moved: SessionRecord,
        placeholder: &SessionRecord,
        own: &Change,
        carry_data: bool,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if !self.insert_new(&moved).await? {
            return Err(StoreError::Unavailable(
                "the new session id was already taken; nothing was changed".into(),
            ));
        }
        if let Some(user) = &moved.user_id {
            self.index_add(user, &moved, now).await?;
        }
        match self.replace(old, placeholder).await? {
            Replaced::Unchanged => Ok(Some(moved)),
            Replaced::Changed(current) => {
                let late = writes_between(old, &current, own, carry_data);
                if !late.is_empty() {
                    self.apply(&moved.id_hash, &late).await?;
                    moved.apply(&late);
                }
                Ok(Some(moved))
            }
            Replaced::NoSession => {
                self.remove(&moved.id_hash, None).await?;
                if let Some(user) = &moved.user_id {
                    self.index_remove(user, &[moved.id_hash]).await?;
                }
                Ok(None)
            }
        }
    }

    /// Takes the user's lock, waiting for another holder to finish.
    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        let key = self.lock_key(user_id);
        let mut token = [0u8; 16];
        OsRng.try_fill_bytes(&mut token).map_err(|err| {
            StoreError::Unavailable(format!("no randomness for a lock token: {err}"))
        })?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let lease = duration_millis(self.lock_lease());
        let mut pause = Duration::from_millis(1);
        loop {
            let taken: Value = self
                .query(
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(lease),
                )
                .await?;
            if matches!(taken, Value::Okay | Value::SimpleString(_)) {
                return Ok(UserLock {
                    store: self.clone(),
                    key,
                    token,
                    held: true,
                });
            }
            // The operation's timeout bounds the wait.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn login_locked(&self, login: &Login, user_id: &str) -> Result<LoginOutcome, StoreError> {
        // Without a limit there is nothing to count.
        let live = if login.limit.is_some() {
            self.live_sessions(user_id, login.now).await?
        } else {
            Vec::new()
        };
        let Ok(victims) = login.evictions(&live) else {
            return Ok(LoginOutcome::LimitReached);
        };

        let mut signed_in = None;
        if let Some(previous_id) = &login.previous {
            if let Some(previous) = self.fetch(previous_id).await? {
                if !previous.is_placeholder() {
                    let carry_data =
                        previous.user_id.is_none() || previous.user_id == login.record.user_id;
                    signed_in = self
                        .move_session(
                            &previous,
                            login.moved(&previous),
                            &login.superseded(&previous),
                            &login.change,
                            carry_data,
                            login.now,
                        )
                        .await?
                        .map(|record| (record, true));
                }
            }
        }
        let (record, moved) = match signed_in {
            Some(done) => done,
            None => {
                if !self.insert_new(&login.record).await? {
                    return Err(StoreError::Unavailable(
                        "the new session id was already taken; nothing was changed".into(),
                    ));
                }
                self.index_add(user_id, &login.record, login.now).await?;
                (login.record.clone(), false)
            }
        };
        let evicted = self
            .evict(user_id, victims, login.limit, &record.id_hash, login.now)
            .await?;
        Ok(LoginOutcome::LoggedIn {
            record: Arc::new(record),
            moved,
            evicted,
        })
    }

    /// Deletes `victims`; if one was renewed meanwhile (its successor is
    /// then indexed), counts again and evicts again.
    async fn evict(
        &self,
        user_id: &str,
        mut victims: Vec<IdHash>,
        limit: Option<SessionLimit>,
        signed_in: &IdHash,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        let mut evicted = Vec::new();
        for _ in 0..MAX_PASSES {
            if victims.is_empty() {
                break;
            }
            let results = join_all(victims.iter().map(|id| self.remove(id, Some(user_id)))).await;
            let mut renewed = false;
            for (id, result) in victims.iter().zip(results) {
                match result? {
                    Removed::Session => evicted.push(*id),
                    Removed::Placeholder | Removed::Forward(_) => renewed = true,
                    Removed::Nothing | Removed::OtherUser => {}
                }
            }
            self.index_remove(user_id, &victims).await?;
            let Some(limit) = limit.filter(|_| renewed) else {
                break;
            };
            let live = self.live_sessions(user_id, now).await?;
            let others: Vec<&SessionRecord> = live
                .iter()
                .map(|r| &**r)
                .filter(|r| r.id_hash != *signed_in)
                .collect();
            victims = sessions_to_evict(&others, &limit).unwrap_or_default();
        }
        Ok(evicted)
    }

    async fn delete_user_locked(
        &self,
        user_id: &str,
        keep: Option<&IdHash>,
    ) -> Result<Vec<IdHash>, StoreError> {
        let mut deleted = Vec::new();
        for _ in 0..MAX_PASSES {
            let targets: Vec<IdHash> = self
                .index_members(user_id, None)
                .await?
                .into_iter()
                .filter(|id| Some(id) != keep)
                .collect();
            if targets.is_empty() {
                break;
            }
            let results = join_all(targets.iter().map(|id| self.remove(id, Some(user_id)))).await;
            let mut found = false;
            for (id, result) in targets.iter().zip(results) {
                match result? {
                    Removed::Session => {
                        deleted.push(*id);
                        found = true;
                    }
                    // A renewed session's successor is already indexed:
                    // the next pass finds it.
                    Removed::Placeholder | Removed::Forward(_) => found = true,
                    Removed::Nothing | Removed::OtherUser => {}
                }
            }
            self.index_remove(user_id, &targets).await?;
            if !found {
                break;
            }
        }
        Ok(deleted)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("RedisStore")
            .field(
                "mode",
                &match self.connection {
                    Connection::Single(_) => "single node",
                    Connection::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("change_notifications", &self.announce)
            .finish()
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            let created = self.insert_new(record).await?;
            if created && !record.is_placeholder() {
                if let Some(user) = &record.user_id {
                    self.index_add(user, record, record.created_at).await?;
                }
            }
            Ok(created)
        })
        .await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        bounded(self.timeout, async {
            Ok(self.fetch(id).await?.map(Arc::new))
        })
        .await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            match self.apply(id, change).await? {
                Applied::Done => Ok(true),
                Applied::Missing => Ok(false),
                // At most one hop: a forwarding entry points at a session.
                Applied::Forwarded(next) => {
                    Ok(matches!(self.apply(&next, change).await?, Applied::Done))
                }
            }
        })
        .await
    }

    async fn delete(&self, id: &IdHash) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            Ok(self.remove_following(id, None, None).await?.is_some())
        })
        .await
    }

    async fn regenerate(
        &self,
        old: &IdHash,
        new: &IdHash,
        regeneration: &Regeneration,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        bounded(self.timeout, async {
            let Some(record) = self.fetch(old).await? else {
                return Ok(None);
            };
            if record.is_placeholder() {
                return Ok(None);
            }
            let moved = self
                .move_session(
                    &record,
                    regeneration.apply_to(&record, new),
                    &regeneration.replacement(&record, new),
                    &regeneration.change,
                    true,
                    regeneration.issued_at,
                )
                .await?;
            Ok(moved.map(Arc::new))
        })
        .await
    }

    async fn login(&self, login: &Login) -> Result<LoginOutcome, StoreError> {
        let user_id = login.record.user_id.as_deref().unwrap_or_default();
        bounded(self.timeout, async {
            let lock = self.lock_user(user_id).await?;
            let outcome = self.login_locked(login, user_id).await;
            lock.release().await;
            outcome
        })
        .await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        bounded(self.timeout, self.live_sessions(user_id, now)).await
    }

    async fn delete_user(
        &self,
        user_id: &str,
        keep: Option<&IdHash>,
    ) -> Result<Vec<IdHash>, StoreError> {
        bounded(self.timeout, async {
            let lock = self.lock_user(user_id).await?;
            let deleted = self.delete_user_locked(user_id, keep).await;
            lock.release().await;
            deleted
        })
        .await
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
        runtime.spawn(follow_changes(
            Arc::clone(&self.feed_nodes),
            self.channel(),
            self.timeout,
            listener,
        ));
        true
    }
}

/// What an update script did.
enum Applied {
    Done,
    Forwarded(IdHash),
    Missing,
}

/// What a delete script found.
enum Removed {
    Nothing,
    Session,
    /// A superseded marker (it points nowhere).
    Placeholder,
    /// A renewal's forwarding entry, and the session it forwarded to.
    Forward(IdHash),
    OtherUser,
}

/// What a replace script found.
enum Replaced {
    NoSession,
    Unchanged,
    Changed(Box<SessionRecord>),
}

/// A held per-user lock. Released explicitly; if the operation holding it
/// is cancelled (its timeout fired), released from a spawned task, and if
/// the whole instance dies, by its lease.
struct UserLock {
    store: RedisStore,
    key: String,
    token: String,
    held: bool,
}

impl UserLock {
    async fn release(mut self) {
        self.held = false;
        let result = self
            .store
            .run::<Value>(&scripts().unlock, &self.key, &[self.token.clone()])
            .await;
        if let Err(err) = result {
            tracing::warn!(
                target: "tower_session_guard",
                error = %err,
                "could not release a user's login lock; it expires with its lease"
            );
        }
    }
}

impl Drop for UserLock {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Some(runtime) = self.store.runtime.clone() else {
            return;
        };
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        runtime.spawn(async move {
            let args = [token];
            let release = store.run::<Value>(&scripts().unlock, &key, &args);
            let _ = tokio::time::timeout(store.timeout, release).await;
        });
    }
}

/// Runs `operation` within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

/// Keeps the change feed of one listener running: subscribes on one of
/// `nodes`, reports the connection's state and every change, reconnects.
async fn follow_changes(
    nodes: Arc<[Client]>,
    channel: String,
    timeout: Duration,
    listener: Arc<dyn ChangeListener>,
) {
    let mut attempt = 0usize;
    let mut pause = FEED_RETRY_MIN;
    while listener.is_active() {
        let node = &nodes[attempt % nodes.len()];
        attempt = attempt.wrapping_add(1);
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = node.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                pause = FEED_RETRY_MIN;
                listener.changed(StoreChange::Connected).await;
                relay(pubsub, timeout, &*listener).await;
                listener.changed(StoreChange::Disconnected).await;
                tracing::warn!(
                    target: "tower_session_guard",
                    "the Redis change feed was interrupted; caches are bypassed until it is back"
                );
            }
            Ok(Err(err)) => tracing::debug!(
                target: "tower_session_guard",
                error = %err,
                "could not subscribe to the Redis change feed; retrying"
            ),
            Err(_) => tracing::debug!(
                target: "tower_session_guard",
                "subscribing to the Redis change feed timed out; retrying"
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(FEED_RETRY_MAX);
    }
}

/// Passes messages to `listener` until the connection fails or the
/// listener is gone. A quiet connection is probed with `PING`.
async fn relay(pubsub: ::redis::aio::PubSub, timeout: Duration, listener: &dyn ChangeListener) {
    let (mut sink, mut stream) = pubsub.split();
    let probe_timeout = timeout.min(FEED_PROBE_EVERY);
    while listener.is_active() {
        match tokio::time::timeout(FEED_PROBE_EVERY, stream.next()).await {
            Ok(Some(message)) => {
                let payload: Result<String, _> = message.get_payload();
                if let Some(id) = payload.ok().and_then(|hex| IdHash::from_hex(&hex)) {
                    listener.changed(StoreChange::Changed(id)).await;
                }
            }
            Ok(None) => return,
            Err(_) => {
                let probe = tokio::time::timeout(probe_timeout, sink.ping::<Value>()).await;
                if !matches!(probe, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

async fn runs_in_cluster_mode(client: &Client) -> Result<bool, StoreError> {
    bounded(DEFAULT_TIMEOUT, async {
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connection_timeouts(DEFAULT_TIMEOUT)))
            .set_response_timeout(Some(connection_timeouts(DEFAULT_TIMEOUT)));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(store_error)?;
        let info: String = ::redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
    })
    .await
}

/// The connection's own timeouts: under the operation's, so a dead
/// connection is noticed (and replaced) before operations give up on it.
fn connection_timeouts(operation: Duration) -> Duration {
    (operation * 3 / 4).max(Duration::from_millis(1))
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connection_timeouts(timeout)))
        .set_response_timeout(Some(connection_timeouts(timeout)))
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(500))
}

fn cluster_config(timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(connection_timeouts(timeout))
        .set_response_timeout(connection_timeouts(timeout))
}

fn store_error(err: RedisError) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout
    } else if err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_cluster_error()
    {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(Box::new(err))
    }
}

fn invalid_url(err: RedisError) -> StoreError {
    StoreError::Unavailable(format!(
        "the Redis URL is not valid ({err}); expected e.g. \"redis://127.0.0.1:6379\""
    ))
}

fn corrupt(why: &str) -> StoreError {
    StoreError::Corrupt(why.to_owned())
}

/// The key of the record under `id`: its own hash tag.
fn record_key(prefix: &str, id: &IdHash) -> String {
    format!("{prefix}s:{{{}}}", id.to_hex())
}

/// A key of the user's (`what`: "sessions" or "lock"), tagged with a hash
/// of the user id so all of them share one slot.
fn user_key(prefix: &str, user_id: &str, what: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tower-session-guard/redis-user/v1\0");
    hasher.update(user_id.as_bytes());
    let digest = hasher.finalize();
    let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}u:{{{tag}}}:{what}")
}

fn data_field(key: &str) -> String {
    format!("{DATA_FIELD}{key}")
}

fn encode_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(Box::new(err)))
}

/// When Redis may drop the record: its earliest deadline plus the slack.
fn expire_at(record: &SessionRecord) -> String {
    record
        .expires_at()
        .saturating_add(BACKSTOP_SLACK_MS)
        .to_string()
}

/// The hash fields a record is stored as.
fn encode_record(record: &SessionRecord) -> Result<Vec<(String, String)>, StoreError> {
    let kind = if record.successor.is_some() {
        KIND_FORWARD
    } else if record.superseded {
        KIND_SUPERSEDED
    } else {
        KIND_SESSION
    };
    let mut fields = vec![
        ("kind".to_owned(), kind.to_owned()),
        ("created".to_owned(), record.created_at.to_string()),
        ("seen".to_owned(), record.last_seen.to_string()),
        ("idle".to_owned(), record.idle_deadline.to_string()),
        ("abs".to_owned(), record.absolute_deadline.to_string()),
        ("issued".to_owned(), record.id_issued_at.to_string()),
        ("ver".to_owned(), record.version.to_string()),
    ];
    if let Some(user) = &record.user_id {
        fields.push(("user".to_owned(), user.clone()));
    }
    if let Some(ip) = record.ip {
        fields.push(("ip".to_owned(), ip.to_string()));
    }
    if let Some(user_agent) = &record.user_agent {
        fields.push(("ua".to_owned(), user_agent.to_string()));
    }
    if let Some(binding) = &record.binding {
        fields.push(("bind".to_owned(), encode_json(binding)?));
    }
    if let Some(successor) = &record.successor {
        fields.push(("succ".to_owned(), successor.id_hash.to_hex()));
        fields.push(("sealed".to_owned(), successor.sealed_id.to_hex()));
    }
    for (key, value) in record.data.iter() {
        fields.push((data_field(key), encode_json(value)?));
    }
    Ok(fields)
}

/// A record from its hash fields.
fn decode_record(id: IdHash, fields: Vec<(String, String)>) -> Result<SessionRecord, StoreError> {
    let mut kind = None;
    let mut user_id = None;
    let mut numbers = [None::<u64>; 6];
    let mut ip = None;
    let mut user_agent = None;
    let mut binding = None;
    let mut successor_hash = None;
    let mut sealed = None;
    let mut data = SessionData::default();
    for (field, value) in fields {
        let slot = match field.as_str() {
            "created" => Some(0),
            "seen" => Some(1),
            "idle" => Some(2),
            "abs" => Some(3),
            "issued" => Some(4),
            "ver" => Some(5),
            _ => None,
        };
        if let Some(slot) = slot {
            numbers[slot] = Some(
                value
                    .parse()
                    .map_err(|_| corrupt("a stored time or version is not a number"))?,
            );
            continue;
        }
        match field.as_str() {
            "kind" => kind = Some(value),
            "user" => user_id = Some(value),
            "ip" => {
                ip = Some(
                    value
                        .parse::<IpAddr>()
                        .map_err(|_| corrupt("a stored client address is not an IP address"))?,
                );
            }
            "ua" => user_agent = Some(value.into_boxed_str()),
            "bind" => {
                binding = Some(
                    serde_json::from_str(&value)
                        .map_err(|_| corrupt("a stored client binding is not valid"))?,
                );
            }
            "succ" => {
                successor_hash = Some(
                    IdHash::from_hex(&value)
                        .ok_or_else(|| corrupt("a stored successor is not an id hash"))?,
                );
            }
            "sealed" => {
                sealed = Some(
                    SealedId::from_hex(&value)
                        .ok_or_else(|| corrupt("a stored sealed id is not valid"))?,
                );
            }
            other => {
                if let Some(key) = other.strip_prefix(DATA_FIELD) {
                    let value = serde_json::from_str(&value)
                        .map_err(|_| corrupt("a stored session value is not JSON"))?;
                    data.insert(key.to_owned(), value);
                }
                // Unknown fields (a newer version's) are ignored.
            }
        }
    }
    let [Some(created_at), Some(last_seen), Some(idle_deadline), Some(absolute_deadline), Some(id_issued_at), Some(version)] =
        numbers
    else {
        return Err(corrupt("a stored session lacks a time or its version"));
    };
    let kind = kind.ok_or_else(|| corrupt("a stored session has no kind"))?;
    let successor = match (kind.as_str(), successor_hash, sealed) {
        (KIND_FORWARD, Some(id_hash), Some(sealed_id)) => {
            Some(Box::new(Successor { id_hash, sealed_id }))
        }
        (KIND_FORWARD, _, _) => return Err(corrupt("a forwarding entry has no successor")),
        _ => None,
    };
    Ok(SessionRecord {
        id_hash: id,
        user_id,
        data,
        created_at,
        last_seen,
        idle_deadline,
        absolute_deadline,
        id_issued_at,
        version,
        ip,
        user_agent,
        successor,
        superseded: kind == KIND_SUPERSEDED,
        binding,
    })
}

/// The writes that reached `current` after `read` was read, except the
/// keys `own` writes itself (the move applies those last, so they win).
fn writes_between(
    read: &SessionRecord,
    current: &SessionRecord,
    own: &Change,
    carry_data: bool,
) -> Change {
    let owned =
        |key: &str| own.set.iter().any(|(k, _)| k == key) || own.removed.iter().any(|k| k == key);
    let mut late = Change::default();
    if carry_data {
        for (key, value) in current.data.iter() {
            if !owned(key) && read.data.get(key) != Some(value) {
                late.set.push((key.to_owned(), value.clone()));
            }
        }
        for (key, _) in read.data.iter() {
            if !owned(key) && current.data.get(key).is_none() {
                late.removed.push(key.to_owned());
            }
        }
    }
    if own.binding.is_none() && current.binding != read.binding {
        late.binding = current.binding.as_deref().cloned();
    }
    if current.last_seen > read.last_seen || current.idle_deadline > read.idle_deadline {
        late.touch = Some(Touch {
            last_seen: current.last_seen,
            idle_deadline: current.idle_deadline,
        });
    }
    late
}

/// Field/value pairs from an `HGETALL`-shaped reply (RESP2 array or RESP3 map).
fn field_pairs(value: Value) -> Result<Vec<(String, String)>, StoreError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(corrupt("a stored session has a field without a value"));
            }
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(field), Some(value)) = (items.next(), items.next()) {
                pairs.push((text(field)?, text(value)?));
            }
            Ok(pairs)
        }
        Value::Map(items) => items
            .into_iter()
            .map(|(field, value)| Ok((text(field)?, text(value)?)))
            .collect(),
        _ => Err(corrupt("a stored session is not a hash")),
    }
}

fn text(value: Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|_| corrupt("a stored field is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text),
        _ => Err(corrupt("a stored field is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::record::Deadlines;
    use serde_json::json;

    fn record() -> SessionRecord {
        let mut record = Deadlines {
            created_at: 1_000,
            idle_deadline: 61_000,
            absolute_deadline: 3_601_000,
        }
        .record(
            SessionId::generate().hash(),
            Some("ann".into()),
            SessionData::default(),
        );
        record.data.insert("n".into(), json!(1.5));
        record.data.insert("big".into(), json!(u64::MAX));
        record.data.insert("empty".into(), json!([]));
        record.ip = Some("2001:db8::1".parse().unwrap());
        record.user_agent = Some("Firefox on Linux".into());
        record
    }

    #[test]
    fn records_round_trip_through_hash_fields() {
        let record = record();
        let fields = encode_record(&record).unwrap();
        assert_eq!(decode_record(record.id_hash, fields).unwrap(), record);

        let old = SessionId::generate();
        let new = SessionId::generate();
        let forward = record.forward_to(
            Successor {
                id_hash: new.hash(),
                sealed_id: old.seal(&new),
            },
            9_000,
        );
        let fields = encode_record(&forward).unwrap();
        assert_eq!(decode_record(record.id_hash, fields).unwrap(), forward);
        let marker = record.superseded_marker(9_000);
        let fields = encode_record(&marker).unwrap();
        assert_eq!(decode_record(record.id_hash, fields).unwrap(), marker);
    }

    #[test]
    fn damaged_records_are_corrupt_not_panics() {
        let id = SessionId::generate().hash();
        for fields in [
            vec![("kind".to_owned(), "s".to_owned())],
            vec![("created".to_owned(), "soon".to_owned())],
            vec![("d:k".to_owned(), "{not json".to_owned())],
        ] {
            assert!(matches!(
                decode_record(id, fields),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn late_writes_carry_over_except_the_moves_own() {
        let read = record();
        let mut current = read.clone();
        current.data.insert("late".into(), json!(true));
        current.data.insert("mine".into(), json!("theirs"));
        current.data.remove("n");
        current.last_seen += 10;
        let own = Change {
            set: vec![("mine".into(), json!("ours"))],
            ..Change::default()
        };
        let late = writes_between(&read, &current, &own, true);
        assert_eq!(late.set, vec![("late".to_owned(), json!(true))]);
        assert_eq!(late.removed, vec!["n".to_owned()]);
        assert!(late.touch.is_some());
        let dropped = writes_between(&read, &current, &own, false);
        assert!(dropped.set.is_empty() && dropped.removed.is_empty());
    }

    #[test]
    fn keys_of_one_user_share_a_hash_tag_and_ids_have_their_own() {
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = key[open..].find('}').unwrap() + open;
            key[open + 1..close].to_owned()
        };
        assert_eq!(
            tag(&user_key("app:", "ann", "lock")),
            tag(&user_key("app:", "ann", "sessions"))
        );
        assert_ne!(
            tag(&user_key("app:", "ann", "lock")),
            tag(&user_key("app:", "bob", "lock"))
        );
        let id = SessionId::generate().hash();
        assert_eq!(tag(&record_key("app:", &id)), id.to_hex());
        let odd = user_key("app:", "we{ird}", "lock");
        assert!(odd.starts_with("app:u:{") && !odd.contains("we{"), "{odd}");
    }
}
