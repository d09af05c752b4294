//! What the observer saw, as metrics (feature `metrics`).

use metrics::{Key, Label};

use super::End;
use crate::metrics::{
    increment, record, rejection_key, seconds, static_key, EVICTIONS, EXPIRIES, GUESSING_BLOCKS,
    IDLE_GAP, LIVE_SESSIONS, LOGINS, LOGOUTS, METADATA, REGENERATIONS, RENEWALS, REVOCATIONS,
    SESSIONS_CREATED, SESSION_DURATION, TOKEN_REUSES,
};
use crate::policy::{ExpiryReason, RejectReason};

pub(crate) fn created() {
    increment(static_key!(SESSIONS_CREATED));
}

pub(crate) fn logged_in() {
    increment(static_key!(LOGINS));
}

pub(crate) fn renewed() {
    increment(static_key!(RENEWALS));
}

pub(crate) fn regenerated() {
    increment(static_key!(REGENERATIONS));
}

pub(crate) fn guessing_blocked() {
    increment(static_key!(GUESSING_BLOCKS));
}

pub(crate) fn token_reused() {
    increment(static_key!(TOKEN_REUSES));
}

pub(crate) fn rejected(reason: RejectReason) {
    increment(rejection_key(reason));
}

pub(crate) fn idle_gap(millis: u64) {
    record(static_key!(IDLE_GAP), seconds(millis));
}

/// A session ended: its counter, and its duration if it was signed in.
pub(crate) fn ended(end: End, signed_in_for: Option<u64>) {
    let (counter, duration) = end_keys(end);
    if let Some(counter) = counter {
        increment(counter);
    }
    if let Some(millis) = signed_in_for {
        record(duration, seconds(millis));
    }
}

/// The counter an end moves (none for a rejection: it is counted by its
/// reason) and the duration histogram it records to.
pub(crate) fn end_keys(end: End) -> (Option<&'static Key>, &'static Key) {
    match end {
        End::Logout => (
            Some(static_key!(LOGOUTS)),
            static_key!(SESSION_DURATION, "end" => "logout"),
        ),
        End::Expired(ExpiryReason::Idle) => (
            Some(static_key!(EXPIRIES, "reason" => "idle")),
            static_key!(SESSION_DURATION, "end" => "idle_timeout"),
        ),
        End::Expired(ExpiryReason::Absolute) => (
            Some(static_key!(EXPIRIES, "reason" => "absolute")),
            static_key!(SESSION_DURATION, "end" => "absolute_timeout"),
        ),
        End::Evicted => (
            Some(static_key!(EVICTIONS)),
            static_key!(SESSION_DURATION, "end" => "evicted"),
        ),
        End::Revoked => (
            Some(static_key!(REVOCATIONS)),
            static_key!(SESSION_DURATION, "end" => "revoked"),
        ),
        End::Rejected => (None, static_key!(SESSION_DURATION, "end" => "rejected")),
    }
}

/// Every key recorded here, for the label checks.
#[cfg(test)]
pub(crate) fn keys() -> Vec<&'static Key> {
    let ends = [
        End::Logout,
        End::Expired(ExpiryReason::Idle),
        End::Expired(ExpiryReason::Absolute),
        End::Evicted,
        End::Revoked,
        End::Rejected,
    ];
    let mut keys = vec![
        static_key!(SESSIONS_CREATED),
        static_key!(LOGINS),
        static_key!(RENEWALS),
        static_key!(REGENERATIONS),
        static_key!(GUESSING_BLOCKS),
        static_key!(TOKEN_REUSES),
        static_key!(IDLE_GAP),
        static_key!(LIVE_SESSIONS),
    ];
    for end in ends {
        let (counter, duration) = end_keys(end);
        keys.extend(counter);
        keys.push(duration);
    }
    keys.extend(crate::insights::REASONS.iter().map(|&r| rejection_key(r)));
    keys
}

/// Sets the live-sessions gauge.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn live_sessions(count: u64) {
    let key = static_key!(LIVE_SESSIONS);
    metrics::with_recorder(|recorder| {
        recorder.register_gauge(key, &METADATA).set(count as f64);
    });
}
