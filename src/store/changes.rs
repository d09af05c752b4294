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
    /// The session under this hash was updated in place
    /// ([`SessionStore::update`](super::SessionStore::update)), by any
    /// handle on the backend, and is now at this version: a copy at this
    /// version or a later one is still current, any other is not.
    Updated(IdHash, u64),
}

impl StoreChange {
    /// Reads a change feed's message: an entry's hash in hex
    /// ([`Changed`](Self::Changed)), followed by `:` and a version for an
    /// update ([`Updated`](Self::Updated); a version it cannot read makes it
    /// a `Changed`). `None` without a hash.
    #[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
    pub(crate) fn parse(payload: &str) -> Option<Self> {
        match payload.split_once(':') {
            None => IdHash::from_hex(payload).map(Self::Changed),
            Some((hex, version)) => {
                let id = IdHash::from_hex(hex)?;
                // Versions are stored as signed 64-bit integers. A version
                // that cannot be read still names an entry that changed.
                Some(match version.parse::<i64>() {
                    Ok(version) => Self::Updated(id, u64::from_ne_bytes(version.to_ne_bytes())),
                    Err(_) => Self::Changed(id),
                })
            }
        }
    }
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
