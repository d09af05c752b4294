//! The change feed: every script that changes an entry publishes its hash
//! on the store's channel; [`follow_changes`] subscribes to it and tells a
//! [`ChangeListener`] (a [`CachedStore`](crate::store::CachedStore)).

use std::sync::Arc;
use std::time::Duration;

use ::redis::{Client, RedisError, Value};
use futures_util::StreamExt;

use crate::store::{ChangeListener, StoreChange};

/// How often an idle feed checks that its connection still works.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Pauses between attempts to reconnect the feed.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Keeps the change feed of one listener running while it is active:
/// subscribes on one of `nodes` (any node of a Cluster sees every message
/// published on it), reports the connection's state and every change, and
/// reconnects, trying the nodes in turn.
pub(super) async fn follow_changes(
    nodes: Arc<[Client]>,
    channel: String,
    timeout: Duration,
    listener: Arc<dyn ChangeListener>,
) {
    let mut attempt = 0usize;
    let mut pause = RETRY_MIN;
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
                pause = RETRY_MIN;
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
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Passes messages to `listener` until the connection fails or the
/// listener is gone. A quiet connection is probed with `PING`.
async fn relay(pubsub: ::redis::aio::PubSub, timeout: Duration, listener: &dyn ChangeListener) {
    let (mut sink, mut stream) = pubsub.split();
    let probe_timeout = timeout.min(PROBE_EVERY);
    while listener.is_active() {
        match tokio::time::timeout(PROBE_EVERY, stream.next()).await {
            Ok(Some(message)) => {
                let payload: Result<String, _> = message.get_payload();
                if let Some(change) = payload.ok().and_then(|text| StoreChange::parse(&text)) {
                    listener.changed(change).await;
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
