//! Where the layer reads the time: [`SystemClock`] in production,
//! [`ManualClock`] in tests.
//!
//! Session records store times as milliseconds since the Unix epoch
//! ([`UnixMillis`]), so deadlines mean the same thing on every instance that
//! shares a store.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the unit of every time in a session record.
pub type UnixMillis = u64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time in milliseconds since the Unix epoch.
    fn now(&self) -> UnixMillis;
}

/// The operating system's wall clock. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        to_millis(SystemTime::now())
    }
}

/// A clock that moves only when told to, shared by all its clones.
///
/// ```
/// use std::time::Duration;
/// use tower_session_guard::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(31 * 60));
/// assert_eq!(clock.now() - start, 31 * 60 * 1000);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock starting at the current system time.
    #[must_use]
    pub fn new() -> Self {
        Self::starting_at(SystemClock.now())
    }

    /// A manual clock starting at `millis` since the Unix epoch.
    #[must_use]
    pub fn starting_at(millis: UnixMillis) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(millis)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_millis(by), Ordering::SeqCst);
    }

    /// Sets the clock to `millis` since the Unix epoch.
    pub fn set(&self, millis: UnixMillis) {
        self.now.store(millis, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        self.now.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

/// A `SystemTime` as milliseconds since the epoch (0 for times before it).
pub(crate) fn to_millis(time: SystemTime) -> UnixMillis {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_millis)
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::starting_at(1_000);
        let other = clock.clone();
        clock.advance(Duration::from_millis(250));
        assert_eq!(other.now(), 1_250);
        other.set(5);
        assert_eq!(clock.now(), 5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > 1_577_836_800_000);
    }
}
