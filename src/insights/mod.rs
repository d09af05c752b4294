//! What one layer has observed of its sessions, and the time limits that
//! follow from it: [`SessionLayer::insights`](crate::SessionLayer::insights).
//!
//! How long do people really stay signed in, and how long do they leave a
//! session idle before coming back? The layer keeps the answer as it
//! serves: fixed-size histograms (eight buckets per power of two, so any
//! figure is known to within 12.5 %, and never below the truth), a few
//! counters, and nothing per session or per user, so memory stays the same
//! (about 9 KiB: two histograms of 496 counters, enough for any duration a
//! `u64` of milliseconds holds) after a thousand sessions or a billion. Recording is a few
//! relaxed atomic additions on the request's path: no lock, no allocation.
//!
//! The snapshot ([`Insights`]) serializes with serde for an admin page, and
//! carries two suggestions with their reasoning:
//!
//! - **absolute timeout** = the 99th percentile of signed-in session
//!   durations plus a margin (10 minutes by default), the OWASP advice of
//!   "how long people use the app, plus a little";
//! - **idle timeout** = the 99th percentile of idle gaps plus a margin
//!   (5 minutes by default).
//!
//! Both need a minimum of observations (100 by default) before they give a
//! value; tune the margins and that minimum with
//! [`SessionLayer::with_insights`](crate::SessionLayer::with_insights).
//!
//! What is measured:
//!
//! - a **session duration** is recorded when a signed-in session ends and
//!   the layer sees it end: a logout (from sign-in to the logout), a request
//!   finding it expired (to its last recorded activity after an idle
//!   timeout, to its deadline after an absolute one), an eviction by the
//!   session limit (to its last recorded activity), a revocation (to the
//!   revocation) or a rejection that destroyed it (client binding, changed
//!   credentials: to its last accepted activity). Durations are counted
//!   from the session's last authentication (sign-in or re-authentication),
//!   which is what the absolute timeout counts from;
//! - a session is counted **once**, by whoever actually removed it from the
//!   store: a logout racing a revocation, or two requests finding the same
//!   expired session, count one end;
//! - a session that had **already expired** when it was removed (say an
//!   abandoned device's session, removed hours later by "log out other
//!   devices" or an administrator) is counted as the expiry it was, not as
//!   a logout or a revocation, and measured like one: its user had left.
//!   Likewise a session a request finds after its absolute deadline, but
//!   idle since before it, is an idle expiry measured to its last activity;
//! - an **idle gap** is the time since the session's recorded activity, on
//!   each request that finds its session, including the one that finds it
//!   expired by the idle timeout. It is exactly what the idle timeout is
//!   compared with (activity is recorded at most every quarter of the idle
//!   timeout, to spare the store writes, so it may exceed the time since
//!   the previous request by that much);
//! - **sessions per user** is how many sessions the user holds right after
//!   each sign-in. It is counted by layers with a session limit, as the
//!   limit's own check counts them under the user's lock; without a limit
//!   it would cost a store round trip per sign-in, and is left out.
//!
//! Not counted as a session end:
//!
//! - a session whose browser never comes back: the store removes it unseen;
//! - a signed-in session taken over by another user's sign-in in the same
//!   browser (the session moves to the new user, and is counted as that
//!   user's sign-in, not as the previous user's logout);
//! - a re-authentication, which is not a login either (its evictions, and
//!   the session it creates when there was none, are counted).
//!
//! Anonymous sessions count in the logout, expiry, eviction and revocation
//! counters like any other, but have no duration: only signed-in time is
//! measured. A rejection that destroys a session is counted by its reason
//! in [`Insights::rejections`], not in those counters.
//!
//! The figures are this layer's (and its clones'): behind a load balancer,
//! each instance sees its share, which is the same picture at a smaller
//! scale.
//!
//! ```
//! use tower_session_guard::{Key, MemoryStore, SessionLayer};
//!
//! let layer = SessionLayer::new(MemoryStore::default(), Key::generate());
//! // ...serve requests; later, on an admin page:
//! let insights = layer.insights();
//! println!("{}", insights.suggested.absolute_timeout.reasoning);
//! let json = serde_json::to_string(&insights).unwrap();
//! # assert!(json.contains("\"suggested\""));
//! ```

#[cfg(feature = "metrics")]
pub(crate) mod emit;
mod histogram;
mod observer;

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

pub(crate) use self::observer::{End, Observer};
use crate::event::RejectReason;

/// How [`SessionLayer::insights`](crate::SessionLayer::insights) turns what
/// it observed into suggested time limits.
///
/// ```
/// use std::time::Duration;
/// use tower_session_guard::{InsightsConfig, Key, MemoryStore, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::default(), Key::generate()).with_insights(
///     InsightsConfig::default()
///         .with_absolute_margin(Duration::from_secs(30 * 60))
///         .with_minimum_samples(1_000),
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsightsConfig {
    absolute_margin: Duration,
    idle_margin: Duration,
    minimum_samples: u64,
}

impl Default for InsightsConfig {
    /// Margins of 10 minutes (absolute) and 5 minutes (idle); 100
    /// observations before a suggestion.
    fn default() -> Self {
        Self {
            absolute_margin: Duration::from_secs(10 * 60),
            idle_margin: Duration::from_secs(5 * 60),
            minimum_samples: 100,
        }
    }
}

impl InsightsConfig {
    /// What is added to the 99th percentile of session durations to suggest
    /// the absolute timeout. Default: 10 minutes.
    #[must_use]
    pub fn with_absolute_margin(mut self, margin: Duration) -> Self {
        self.absolute_margin = margin;
        self
    }

    /// What is added to the 99th percentile of idle gaps to suggest the
    /// idle timeout. Default: 5 minutes.
    #[must_use]
    pub fn with_idle_margin(mut self, margin: Duration) -> Self {
        self.idle_margin = margin;
        self
    }

    /// How many observations (ended signed-in sessions; idle gaps) a
    /// suggestion needs; with fewer, it says so instead of guessing from
    /// too little. Default: 100.
    ///
    /// # Panics
    ///
    /// If `minimum` is zero: a 99th percentile of nothing means nothing.
    #[must_use]
    pub fn with_minimum_samples(mut self, minimum: u64) -> Self {
        assert!(
            minimum > 0,
            "insights need at least one observation before suggesting a limit; pass e.g. 100"
        );
        self.minimum_samples = minimum;
        self
    }
}

/// What one layer has observed, from
/// [`SessionLayer::insights`](crate::SessionLayer::insights). Times
/// serialize as seconds.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Insights {
    /// Sessions stored for the first time.
    pub sessions_created: u64,
    /// Sign-ins.
    pub logins: u64,
    /// Sessions ended by a logout (`logout`, `logout_everywhere`,
    /// `logout_others`), anonymous ones included.
    pub logouts: u64,
    /// Ids renewed on their interval.
    pub renewals: u64,
    /// Ids changed by `Session::regenerate`.
    pub regenerations: u64,
    /// Sessions destroyed to keep a user under the session limit, at a
    /// sign-in or a re-authentication.
    pub evictions: u64,
    /// Sessions destroyed through [`SessionAdmin`](crate::admin::SessionAdmin),
    /// signed out from another device with
    /// [`Session::revoke_mine`](crate::Session::revoke_mine), or ended
    /// because their renewed token was reused
    /// ([`with_revoke_on_reuse`](crate::SessionLayer::with_revoke_on_reuse)).
    pub revocations: u64,
    /// Renewed tokens presented after their grace period
    /// ([`SessionEvent::ReusedAfterRenewal`](crate::SessionEvent::ReusedAfterRenewal)):
    /// copied before the renewal, most likely.
    pub token_reuses: u64,
    /// Networks blocked for sending too many bad tokens.
    pub guessing_blocks: u64,
    /// Sessions a request found expired, by timeout.
    pub expiries: Expiries,
    /// Tokens not accepted, by reason (every reason, zero or not).
    pub rejections: Vec<Rejections>,
    /// Entries the store holds now, if it can tell
    /// ([`SessionStore::live_sessions`](crate::SessionStore::live_sessions)).
    pub live_sessions: Option<u64>,
    /// How long signed-in sessions lasted (see the module docs).
    pub session_durations: Distribution,
    /// Time since a session's recorded activity, per request that found one.
    pub idle_gaps: Distribution,
    /// Sessions a user held right after each sign-in, counted by layers
    /// with a session limit (see the module docs).
    pub sessions_per_user: SessionsPerUser,
    /// The layer's time limits now.
    pub configured: Limits,
    /// The time limits the observations suggest.
    pub suggested: Suggestions,
}

/// Sessions found expired, by timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Expiries {
    /// Expired for inactivity.
    pub idle: u64,
    /// Expired at the absolute deadline.
    pub absolute: u64,
}

/// How often tokens were refused for one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Rejections {
    /// The reason.
    #[serde(serialize_with = "serialize_reason")]
    pub reason: RejectReason,
    /// How many times.
    pub count: u64,
}

/// A distribution of times: how many, the usual quantiles, and the
/// non-empty buckets (for a chart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Distribution {
    /// How many times were observed.
    pub count: u64,
    /// Half of the times were at most this (`None` before any).
    #[serde(serialize_with = "seconds_opt")]
    pub p50: Option<Duration>,
    /// 90 % of the times were at most this.
    #[serde(serialize_with = "seconds_opt")]
    pub p90: Option<Duration>,
    /// 99 % of the times were at most this.
    #[serde(serialize_with = "seconds_opt")]
    pub p99: Option<Duration>,
    /// The non-empty buckets, shortest first; at most a few hundred.
    pub buckets: Vec<Bucket>,
}

/// Times from `from` to `to` (both included), and how many fell there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Bucket {
    /// The shortest time of the bucket.
    #[serde(serialize_with = "seconds")]
    pub from: Duration,
    /// The longest time of the bucket.
    #[serde(serialize_with = "seconds")]
    pub to: Duration,
    /// How many times fell in it.
    pub count: u64,
}

/// How many sessions users held right after signing in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionsPerUser {
    /// Sign-ins counted.
    pub count: u64,
    /// Half of the sign-ins left their user with at most this many sessions.
    pub p50: Option<u32>,
    /// 90 % of them at most this many.
    pub p90: Option<u32>,
    /// 99 % of them at most this many.
    pub p99: Option<u32>,
    /// Sign-ins by the number of sessions their user then held, fewest
    /// first, non-empty only; [`SessionsPerUser::MAX`] stands for that many or more.
    pub sign_ins: Vec<SessionCount>,
}

impl SessionsPerUser {
    /// The largest number counted separately.
    pub const MAX: u32 = 64;
}

/// How many sign-ins left their user holding `sessions` sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionCount {
    /// Sessions held.
    pub sessions: u32,
    /// Sign-ins.
    pub sign_ins: u64,
}

/// A layer's time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Limits {
    /// The idle timeout.
    #[serde(serialize_with = "seconds")]
    pub idle_timeout: Duration,
    /// The absolute timeout.
    #[serde(serialize_with = "seconds")]
    pub absolute_timeout: Duration,
}

/// The time limits the observations suggest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Suggestions {
    /// For [`with_absolute_timeout`](crate::SessionLayer::with_absolute_timeout).
    pub absolute_timeout: Suggestion,
    /// For [`with_idle_timeout`](crate::SessionLayer::with_idle_timeout).
    pub idle_timeout: Suggestion,
}

/// A suggested setting and why; no value until enough was observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Suggestion {
    /// The suggested limit, rounded up to a whole minute (a whole second
    /// below one minute).
    #[serde(serialize_with = "seconds_opt")]
    pub value: Option<Duration>,
    /// How it was worked out, in a sentence or three.
    pub reasoning: String,
}

/// The label of a rejection reason, as in metrics and JSON.
pub(crate) fn reason_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::InvalidToken => "invalid_token",
        RejectReason::UnknownSession => "unknown_session",
        RejectReason::AmbiguousToken => "ambiguous_token",
        RejectReason::InsecureTransport => "insecure_transport",
        RejectReason::UserAgentChanged => "user_agent_changed",
        RejectReason::TooManyNetworks => "too_many_networks",
        RejectReason::ImpossibleTravel => "impossible_travel",
        RejectReason::CrossSiteRequest => "cross_site_request",
        RejectReason::CsrfTokenMismatch => "csrf_token_mismatch",
        RejectReason::CredentialsChanged => "credentials_changed",
    }
}

/// Every rejection reason, in the order insights list them.
pub(crate) const REASONS: [RejectReason; 10] = [
    RejectReason::InvalidToken,
    RejectReason::UnknownSession,
    RejectReason::AmbiguousToken,
    RejectReason::InsecureTransport,
    RejectReason::UserAgentChanged,
    RejectReason::TooManyNetworks,
    RejectReason::ImpossibleTravel,
    RejectReason::CrossSiteRequest,
    RejectReason::CsrfTokenMismatch,
    RejectReason::CredentialsChanged,
];

fn serialize_reason<S: serde::Serializer>(
    reason: &RejectReason,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(reason_label(*reason))
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[allow(clippy::ref_option)] // serde's `serialize_with` hands a reference
fn seconds_opt<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

/// The absolute timeout the session durations suggest.
fn suggest_absolute(
    durations: &Distribution,
    cut_short: u64,
    config: &InsightsConfig,
    configured: Duration,
) -> Suggestion {
    let Some(p99) = durations
        .p99
        .filter(|_| durations.count >= config.minimum_samples)
    else {
        return too_few(
            format!(
                "Only {} signed-in sessions have ended so far",
                durations.count
            ),
            config.minimum_samples,
        );
    };
    let value = round_up(p99.saturating_add(config.absolute_margin));
    let mut reasoning = format!(
        "99% of the {} signed-in sessions that ended lasted at most {}; with a margin of {} that gives {} \
         (configured: {}).",
        durations.count,
        human(p99),
        human(config.absolute_margin),
        human(value),
        human(configured),
    );
    // Sessions cut by the absolute timeout might have lasted longer.
    if cut_short * 100 >= durations.count {
        let _ = write!(
            reasoning,
            " {cut_short} of them were ended by the absolute timeout itself, so people may stay longer than \
             this shows: raise the limit for a while before lowering it."
        );
    }
    Suggestion {
        value: Some(value),
        reasoning,
    }
}

/// The idle timeout the idle gaps suggest.
fn suggest_idle(
    gaps: &Distribution,
    expired: u64,
    config: &InsightsConfig,
    configured: Duration,
) -> Suggestion {
    let Some(p99) = gaps.p99.filter(|_| gaps.count >= config.minimum_samples) else {
        return too_few(
            format!("Only {} returns to a session were seen so far", gaps.count),
            config.minimum_samples,
        );
    };
    let value = round_up(p99.saturating_add(config.idle_margin));
    let mut reasoning = format!(
        "99% of the {} returns to a session came at most {} after its recorded activity; with a margin of {} \
         that gives {} (configured: {}).",
        gaps.count,
        human(p99),
        human(config.idle_margin),
        human(value),
        human(configured),
    );
    if expired * 100 >= gaps.count {
        let _ = write!(
            reasoning,
            " {expired} of those returns came too late and found the session expired by the idle timeout."
        );
    }
    Suggestion {
        value: Some(value),
        reasoning,
    }
}

fn too_few(observed: String, minimum: u64) -> Suggestion {
    Suggestion {
        value: None,
        reasoning: format!("{observed}; a suggestion needs at least {minimum}."),
    }
}

/// Up to a whole minute, or a whole second below one minute.
fn round_up(duration: Duration) -> Duration {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let step = if millis >= 60_000 { 60_000 } else { 1_000 };
    Duration::from_millis(millis.div_ceil(step).max(1).saturating_mul(step))
}

/// `2 h 5 min`, `12 min 30 s`, `45 s`, `0.25 s`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut text = String::new();
    if hours > 0 {
        let _ = write!(text, "{hours} h");
        if minutes > 0 {
            let _ = write!(text, " {minutes} min");
        }
    } else if minutes > 0 {
        let _ = write!(text, "{minutes} min");
        if seconds > 0 {
            let _ = write!(text, " {seconds} s");
        }
    } else if duration.subsec_millis() > 0 {
        let _ = write!(text, "{} s", duration.as_secs_f64());
    } else {
        let _ = write!(text, "{seconds} s");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(human(Duration::from_secs(7_500)), "2 h 5 min");
        assert_eq!(human(Duration::from_secs(750)), "12 min 30 s");
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_millis(250)), "0.25 s");
        assert_eq!(human(Duration::from_secs(3600)), "1 h");
    }

    #[test]
    fn suggestions_round_up_to_whole_minutes() {
        assert_eq!(round_up(Duration::from_secs(61)), Duration::from_secs(120));
        assert_eq!(round_up(Duration::from_secs(120)), Duration::from_secs(120));
        assert_eq!(
            round_up(Duration::from_millis(1_500)),
            Duration::from_secs(2)
        );
        assert_eq!(round_up(Duration::ZERO), Duration::from_secs(1));
    }
}
