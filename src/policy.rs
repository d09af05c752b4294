//! The security policy: pure decisions about a session record.
//!
//! Nothing here does I/O or reads a clock; every function is given `now`.
//! That keeps the rules easy to test exhaustively and the same on every
//! instance that shares a store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{duration_millis, UnixMillis};
use crate::id::IdHash;
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

/// Id renewal settings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Renewal {
    /// Renew ids older than this.
    pub(crate) every: u64,
    /// How long the previous id keeps working.
    pub(crate) grace: u64,
}

/// Whether the record's id is old enough to be renewed at `now`.
pub(crate) fn renewal_due(
    record: &SessionRecord,
    now: UnixMillis,
    renewal: Option<&Renewal>,
) -> bool {
    renewal.is_some_and(|r| now.saturating_sub(record.id_issued_at) >= r.every)
}

/// Whether a forwarding entry left by a renewal still forwards at `now`.
pub(crate) fn forward_alive(forward: &SessionRecord, now: UnixMillis) -> bool {
    now < forward.expires_at()
}

/// What `login` does when the user already has the maximum number of sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnLimit {
    /// Destroy the user's least recently used sessions to make room.
    EvictLeastRecent,
    /// Refuse the new login with [`SessionError::LimitReached`](crate::SessionError::LimitReached).
    RejectLogin,
}

/// A per-user session limit, as applied to one login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimit {
    /// The most live sessions the user may have, counting the new one.
    pub max: usize,
    /// What to do when the login would exceed `max`.
    pub on_limit: OnLimit,
}

/// The limit would be exceeded and the rule says to refuse the login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitReached;

/// Which of a user's live sessions must go so that one more fits under `limit`.
///
/// `live` are the user's other live sessions (not the one logging in).
/// Stores call this inside the critical section of their login operation,
/// so that concurrent logins cannot overshoot the limit.
///
/// # Errors
///
/// [`LimitReached`] when the limit is full and the rule is
/// [`OnLimit::RejectLogin`].
pub fn sessions_to_evict(
    live: &[&SessionRecord],
    limit: &SessionLimit,
) -> Result<Vec<IdHash>, LimitReached> {
    let max = limit.max;
    if max == 0 {
        // No session at all is allowed: nothing can be evicted to make room.
        return Err(LimitReached);
    }
    if live.len() < max {
        return Ok(Vec::new());
    }
    match limit.on_limit {
        OnLimit::RejectLogin => Err(LimitReached),
        OnLimit::EvictLeastRecent => {
            let mut by_recency: Vec<&SessionRecord> = live.to_vec();
            by_recency.sort_by_key(|r| (r.last_seen, r.created_at));
            let excess = live.len() + 1 - max;
            Ok(by_recency.iter().take(excess).map(|r| r.id_hash).collect())
        }
    }
}

/// How the layer finds a user's session limit.
#[derive(Clone)]
pub(crate) enum LimitRule {
    /// The same limit for everyone.
    Fixed(SessionLimit),
    /// A limit computed per user id (say, from a role).
    PerUser(Arc<dyn Fn(&str) -> usize + Send + Sync>, OnLimit),
}

impl LimitRule {
    pub(crate) fn for_user(&self, user_id: &str) -> SessionLimit {
        match self {
            Self::Fixed(limit) => *limit,
            Self::PerUser(max, on_limit) => SessionLimit {
                max: max(user_id),
                on_limit: *on_limit,
            },
        }
    }
}

impl fmt::Debug for LimitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(limit) => f.debug_tuple("Fixed").field(limit).finish(),
            Self::PerUser(_, on_limit) => f.debug_tuple("PerUser").field(on_limit).finish(),
        }
    }
}

/// Whether `record` counts as a live session of `user_id` at `now`.
#[must_use]
pub fn is_live_session_of(record: &SessionRecord, user_id: &str, now: UnixMillis) -> bool {
    !record.is_placeholder()
        && record.user_id.as_deref() == Some(user_id)
        && now < record.expires_at()
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
    fn eviction_picks_the_least_recently_used() {
        let mut a = record_at(0);
        a.last_seen = 300;
        let mut b = record_at(0);
        b.last_seen = 100;
        let mut c = record_at(0);
        c.last_seen = 200;
        let limit = SessionLimit {
            max: 3,
            on_limit: OnLimit::EvictLeastRecent,
        };
        assert_eq!(sessions_to_evict(&[&a, &b], &limit), Ok(vec![]));
        assert_eq!(
            sessions_to_evict(&[&a, &b, &c], &limit),
            Ok(vec![b.id_hash])
        );
        let two = SessionLimit { max: 2, ..limit };
        assert_eq!(
            sessions_to_evict(&[&a, &b, &c], &two),
            Ok(vec![b.id_hash, c.id_hash])
        );
        let reject = SessionLimit {
            max: 3,
            on_limit: OnLimit::RejectLogin,
        };
        assert_eq!(sessions_to_evict(&[&a, &b, &c], &reject), Err(LimitReached));
        assert_eq!(sessions_to_evict(&[&a], &reject), Ok(vec![]));
        let zero = SessionLimit { max: 0, ..limit };
        assert_eq!(sessions_to_evict(&[], &zero), Err(LimitReached));
    }

    #[test]
    fn renewal_is_due_after_the_interval() {
        let r = record_at(0);
        let renewal = Renewal {
            every: 500,
            grace: 50,
        };
        assert!(!renewal_due(&r, 499, Some(&renewal)));
        assert!(renewal_due(&r, 500, Some(&renewal)));
        assert!(!renewal_due(&r, 5_000, None));
    }

    #[test]
    fn touches_never_pass_the_absolute_deadline() {
        let r = record_at(0);
        let touch = touch_due(&r, ABSOLUTE - 10, &timeouts()).unwrap();
        assert_eq!(touch.idle_deadline, ABSOLUTE);
    }
}
