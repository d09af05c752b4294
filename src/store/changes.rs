//! How a shared store tells a cache in front of it that records changed
//! elsewhere: [`StoreChange`] and [`ChangeListener`], used by
//! [`SessionStore::watch_changes`](super::SessionStore::watch_changes).

use async_trait::async_trait;

use crate::id::IdHash;

/// One announcement from a store's change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreChange {
    /// The feed is live: from now on every change is announced. Changes
    /// made before, while it was not, were not: drop every copy.
    Connected,
    /// The feed is down: changes may go unannounced until the next
    /// [`Connected`](Self::Connected). Copies must not be trusted meanwhile.
    Disconnected,
    /// The record under this hash was changed or removed, by any handle on
    /// the backend (this process's included).
    Changed(IdHash),
}

/// Receives a store's [`StoreChange`]s (see
/// [`SessionStore::watch_changes`](super::SessionStore::watch_changes)).
#[async_trait]
pub trait ChangeListener: Send + Sync + 'static {
    /// Called with each change, in the order the backend reported them.
    async fn changed(&self, change: StoreChange);

    /// Whether the listener still wants changes. Once it says `false` the
    /// store ends the feed (say, after the cache it served was dropped).
    fn is_active(&self) -> bool;
}
