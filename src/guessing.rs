//! Session-id guessing detection: too many bad tokens from one network.
//!
//! Every token that fails verification or names no live session counts as
//! a failure of the client's network. Past a threshold within a sliding
//! window, requests from that network that carry a session token are
//! answered `429 Too Many Requests` with `Retry-After` until the window has
//! passed. Memory is bounded: the counters live in a size-limited moka cache.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::sync::Cache;

use crate::client::{Network, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX};
use crate::clock::{duration_millis, UnixMillis};

/// Guessing-detection settings for
/// [`SessionLayer::with_guessing_detection`](crate::SessionLayer::with_guessing_detection).
///
/// Defaults: 20 failures per minute per network (IPv4 /24, IPv6 /48),
/// at most 100 000 networks tracked at once.
///
/// ```
/// use std::time::Duration;
/// use tower_session_guard::GuessingDetection;
///
/// let detection = GuessingDetection::default().with_threshold(50, Duration::from_secs(60));
/// ```
#[derive(Clone, Debug)]
pub struct GuessingDetection {
    max_failures: u32,
    window: u64,
    max_networks: u64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl Default for GuessingDetection {
    fn default() -> Self {
        Self {
            max_failures: 20,
            window: 60_000,
            max_networks: 100_000,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl GuessingDetection {
    /// More than `max_failures` within `window` blocks the network. Default: 20 per minute.
    ///
    /// # Panics
    ///
    /// If `max_failures` is zero or `window` is under a millisecond.
    #[must_use]
    pub fn with_threshold(mut self, max_failures: u32, window: Duration) -> Self {
        assert!(
            max_failures > 0,
            "the guessing threshold must be at least one failure"
        );
        assert!(
            window >= Duration::from_millis(1),
            "the guessing window must be at least one millisecond"
        );
        self.max_failures = max_failures;
        self.window = duration_millis(window);
        self
    }

    /// How many networks are tracked at once (least recently seen dropped
    /// first). Default: 100 000.
    #[must_use]
    pub fn with_max_networks(mut self, max: u64) -> Self {
        self.max_networks = max;
        self
    }

    /// The prefix lengths that group addresses into one network. Default: 24 and 48.
    ///
    /// # Panics
    ///
    /// If `ipv4` is over 32 or `ipv6` over 128.
    #[must_use]
    pub fn with_network_prefixes(mut self, ipv4: u8, ipv6: u8) -> Self {
        (self.ipv4_prefix, self.ipv6_prefix) = crate::client::checked_prefixes(ipv4, ipv6);
        self
    }

    pub(crate) fn network_of(&self, ip: std::net::IpAddr) -> Network {
        Network::of(ip, self.ipv4_prefix, self.ipv6_prefix)
    }
}

/// Failure counts per network, in two fixed buckets weighted into a sliding window.
#[derive(Default)]
struct Counter {
    bucket_start: UnixMillis,
    current: u32,
    previous: u32,
    blocked_until: UnixMillis,
}

impl Counter {
    fn roll(&mut self, now: UnixMillis, window: u64) {
        let elapsed = now.saturating_sub(self.bucket_start);
        if elapsed >= 2 * window {
            self.previous = 0;
            self.current = 0;
            self.bucket_start = now;
        } else if elapsed >= window {
            self.previous = self.current;
            self.current = 0;
            self.bucket_start += window;
        }
    }

    /// Failures in the last `window`, estimated.
    fn estimate(&self, now: UnixMillis, window: u64) -> f64 {
        let into_bucket = now.saturating_sub(self.bucket_start).min(window);
        // Millisecond counts and small integers: exact enough in f64.
        #[allow(clippy::cast_precision_loss)]
        let weight = 1.0 - into_bucket as f64 / window as f64;
        f64::from(self.previous) * weight + f64::from(self.current)
    }
}

/// The layer's detector.
#[derive(Clone)]
pub(crate) struct Guard {
    settings: GuessingDetection,
    counters: Cache<Network, Arc<Mutex<Counter>>>,
}

/// A network just crossed the threshold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Alarm {
    pub(crate) failures: u32,
}

impl Guard {
    pub(crate) fn new(settings: GuessingDetection) -> Self {
        let counters = Cache::builder()
            .max_capacity(settings.max_networks)
            .time_to_idle(Duration::from_millis(settings.window.saturating_mul(2)))
            .build();
        Self { settings, counters }
    }

    pub(crate) fn settings(&self) -> &GuessingDetection {
        &self.settings
    }

    /// Seconds to wait if `network` is blocked at `now`.
    pub(crate) fn blocked(&self, network: &Network, now: UnixMillis) -> Option<u64> {
        let counter = self.counters.get(network)?;
        let counter = counter.lock().unwrap_or_else(PoisonError::into_inner);
        (now < counter.blocked_until).then(|| (counter.blocked_until - now).div_ceil(1000).max(1))
    }

    /// Counts a failure; returns an alarm when this failure crosses the threshold.
    pub(crate) fn failure(&self, network: Network, now: UnixMillis) -> Option<Alarm> {
        let window = self.settings.window;
        let counter = self.counters.get_with(network, || {
            Arc::new(Mutex::new(Counter {
                bucket_start: now,
                ..Counter::default()
            }))
        });
        let mut counter = counter.lock().unwrap_or_else(PoisonError::into_inner);
        counter.roll(now, window);
        counter.current = counter.current.saturating_add(1);
        if now < counter.blocked_until {
            return None;
        }
        let estimate = counter.estimate(now, window);
        if estimate > f64::from(self.settings.max_failures) {
            counter.blocked_until = now + window;
            // Rounded estimate of a small count.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let failures = estimate.round() as u32;
            return Some(Alarm { failures });
        }
        None
    }

    #[cfg(test)]
    fn tracked(&self) -> u64 {
        self.counters.run_pending_tasks();
        self.counters.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(n: u32) -> Network {
        Network::of(
            std::net::IpAddr::V4(std::net::Ipv4Addr::from(n << 8)),
            24,
            48,
        )
    }

    #[test]
    fn the_threshold_blocks_and_the_window_unblocks() {
        let guard = Guard::new(GuessingDetection::default());
        let n = net(1);
        for i in 0..20 {
            assert!(guard.failure(n, 1_000 + i).is_none());
        }
        assert!(guard.blocked(&n, 1_020).is_none());
        let alarm = guard
            .failure(n, 1_021)
            .expect("the 21st failure in a minute alarms");
        assert_eq!(alarm.failures, 21);
        assert_eq!(guard.blocked(&n, 1_021), Some(60));
        assert!(
            guard.blocked(&net(2), 1_021).is_none(),
            "other networks are unaffected"
        );
        assert!(
            guard.blocked(&n, 61_021).is_none(),
            "the block ends with the window"
        );
    }

    #[test]
    fn slow_failures_never_block() {
        let guard = Guard::new(GuessingDetection::default());
        let n = net(3);
        // One failure every 4 seconds: 15 a minute.
        for i in 0..100u64 {
            assert!(guard.failure(n, i * 4_000).is_none(), "failure {i}");
        }
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_networks() {
        let guard = Guard::new(GuessingDetection::default().with_max_networks(1_000));
        for i in 0..200_000 {
            guard.failure(net(i), 1_000);
        }
        assert!(
            guard.tracked() <= 1_000,
            "{} networks tracked",
            guard.tracked()
        );
    }
}
