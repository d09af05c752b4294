//! The connection a [`RedisStore`](super::RedisStore) talks through: one
//! node or a Cluster, its timeouts, and how Redis errors become
//! [`StoreError`]s.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Value};

use super::DEFAULT_TIMEOUT;
use crate::store::{bounded, StoreError};

/// A connection to one node (reconnecting by itself) or to a Cluster
/// (routing each command to the node owning its key's slot). Clones share
/// the connection.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where a connection came from, to rebuild it with other timeouts.
#[derive(Clone)]
pub(super) enum Source {
    Single(Client),
    Cluster(Arc<ClusterClient>),
    /// A connection manager the application configured itself.
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

impl Connection {
    /// What the connection is, for `Debug` output.
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Single(_) => "single node",
            Self::Cluster(_) => "cluster",
        }
    }

    /// Sends one command.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut connection = self.clone();
        cmd.query_async(&mut connection).await.map_err(store_error)
    }

    /// A lazily connecting connection from `source` with `timeout`'s
    /// connection timeouts; `None` for a connection given as it is.
    pub(super) fn rebuilt(source: &Source, timeout: Duration) -> Option<Self> {
        match source {
            Source::Single(client) => {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
                    .ok()
                    .map(Self::Single)
            }
            Source::Cluster(cluster) => Some(Self::Cluster(
                cluster.get_pending_async_connection_with_config(cluster_config(timeout)),
            )),
            Source::Given => None,
        }
    }
}

/// Whether the node `client` points at runs in Cluster mode (`INFO cluster`).
pub(super) async fn runs_in_cluster_mode(client: &Client) -> Result<bool, StoreError> {
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

pub(super) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connection_timeouts(timeout)))
        .set_response_timeout(Some(connection_timeouts(timeout)))
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(500))
}

pub(super) fn cluster_config(timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(connection_timeouts(timeout))
        .set_response_timeout(connection_timeouts(timeout))
}

/// A Redis error as the store reports it: a timeout, an unreachable
/// server, or anything else.
pub(super) fn store_error(err: RedisError) -> StoreError {
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

pub(super) fn invalid_url(err: RedisError) -> StoreError {
    StoreError::Unavailable(format!(
        "the Redis URL is not valid ({err}); expected e.g. \"redis://127.0.0.1:6379\""
    ))
}
