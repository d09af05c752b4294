//! The security policy: pure decisions about a session record.
//!
//! Nothing here does I/O or reads a clock; every function is given `now`.
//! That keeps the rules easy to test exhaustively and the same on every
//! instance that shares a store.

use std::fmt;
use std::time::Duration;

use crate::clock::{duration_millis, UnixMillis};
use crate::record::{Deadlines, SessionRecord, Touch};

/// Default idle timeout: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default absolute timeout: 12 hours.
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// The timeouts a session lives under, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) idle: u64,
    pub(crate) absolute: u64,
}

impl Timeouts {
    pub(crate) fn new(idle: Duration, absolute: Duration) -> Self {
        Self {
            idle: duration_millis(idle),
            absolute: duration_millis(absolute),
        }
    }

    /// How stale `last_seen` may get before a request records activity.
    ///
    /// A quarter of the idle window: a busy session is written at most four
    /// times per idle timeout instead of on every request.
    fn touch_after(&self) -> u64 {
        self.idle / 4
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::new(DEFAULT_IDLE_TIMEOUT, DEFAULT_ABSOLUTE_TIMEOUT)
    }
}

/// Why a session stopped being accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExpiryReason {
    /// No activity for the idle timeout.
    Idle,
    /// The absolute timeout since creation has passed.
    Absolute,
}

impl fmt::Display for ExpiryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle timeout",
            Self::Absolute => "absolute timeout",
        })
    }
}

/// The policy's answer for a loaded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accept the session; record activity if `touch` is set.
    Valid { touch: Option<Touch> },
    /// The session is over; destroy it and continue without one.
    Expired(ExpiryReason),
}

/// Decides whether `record` is still acceptable at `now`.
pub(crate) fn evaluate(record: &SessionRecord, now: UnixMillis, timeouts: &Timeouts) -> Verdict {
    if now >= record.absolute_deadline {
        return Verdict::Expired(ExpiryReason::Absolute);
    }
    if now >= record.idle_deadline {
        return Verdict::Expired(ExpiryReason::Idle);
    }
    Verdict::Valid {
        touch: touch_due(record, now, timeouts),
    }
}

/// The touch to record at `now`, if enough of the idle window has passed
/// since the last one.
pub(crate) fn touch_due(
    record: &SessionRecord,
    now: UnixMillis,
    timeouts: &Timeouts,
) -> Option<Touch> {
    if now.saturating_sub(record.last_seen) < timeouts.touch_after() {
        return None;
    }
    Some(Touch {
        last_seen: now,
        idle_deadline: now
            .saturating_add(timeouts.idle)
            .min(record.absolute_deadline),
    })
}

/// The deadlines of a session created at `now`.
pub(crate) fn fresh_deadlines(now: UnixMillis, timeouts: &Timeouts) -> Deadlines {
    let absolute_deadline = now.saturating_add(timeouts.absolute);
    Deadlines {
        created_at: now,
        idle_deadline: now.saturating_add(timeouts.idle).min(absolute_deadline),
        absolute_deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::record::SessionData;

    const IDLE: u64 = 1_000;
    const ABSOLUTE: u64 = 10_000;

    fn timeouts() -> Timeouts {
        Timeouts {
            idle: IDLE,
            absolute: ABSOLUTE,
        }
    }

    fn record_at(now: UnixMillis) -> SessionRecord {
        fresh_deadlines(now, &timeouts()).record(
            SessionId::generate().hash(),
            None,
            SessionData::default(),
        )
    }

    #[test]
    fn fresh_record_is_valid_without_a_touch() {
        let r = record_at(0);
        assert_eq!(evaluate(&r, 0, &timeouts()), Verdict::Valid { touch: None });
        assert_eq!(
            evaluate(&r, IDLE / 4 - 1, &timeouts()),
            Verdict::Valid { touch: None }
        );
    }

    #[test]
    fn a_quarter_of_the_idle_window_asks_for_a_touch() {
        let r = record_at(0);
        assert_eq!(
            evaluate(&r, IDLE / 4, &timeouts()),
            Verdict::Valid {
                touch: Some(Touch {
                    last_seen: IDLE / 4,
                    idle_deadline: IDLE / 4 + IDLE
                })
            }
        );
    }

    #[test]
    fn idle_deadline_expires_exactly_at_the_deadline() {
        let r = record_at(0);
        assert!(matches!(
            evaluate(&r, IDLE - 1, &timeouts()),
            Verdict::Valid { .. }
        ));
        assert_eq!(
            evaluate(&r, IDLE, &timeouts()),
            Verdict::Expired(ExpiryReason::Idle)
        );
    }

    #[test]
    fn absolute_deadline_wins_over_activity() {
        let mut r = record_at(0);
        r.idle_deadline = ABSOLUTE + 5_000;
        assert_eq!(
            evaluate(&r, ABSOLUTE, &timeouts()),
            Verdict::Expired(ExpiryReason::Absolute)
        );
    }

    #[test]
    fn touches_never_pass_the_absolute_deadline() {
        let r = record_at(0);
        let touch = touch_due(&r, ABSOLUTE - 10, &timeouts()).unwrap();
        assert_eq!(touch.idle_deadline, ABSOLUTE);
    }
}
