//! [`Observer`]: where the layer reports what happens to sessions, kept in
//! atomics for [`Insights`] and sent on as metrics (feature `metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::{Counts, LogHistogram};
use super::{
    suggest_absolute, suggest_idle, Bucket, Distribution, Expiries, Insights, InsightsConfig,
    Limits, Rejections, SessionCount, SessionsPerUser, Suggestions, REASONS,
};
use crate::clock::UnixMillis;
use crate::event::RejectReason;
use crate::policy::ExpiryReason;
use crate::record::SessionRecord;
use crate::store::SessionStore;

/// How a session ended, as the code that removed it saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// `logout`, `logout_everywhere`, `logout_others`.
    Logout,
    /// A request found it expired.
    Expired(ExpiryReason),
    /// The session limit made room for a new sign-in or a re-authentication.
    Evicted,
    /// `SessionAdmin` revoked it, the user signed out one of their other
    /// devices (`Session::revoke_mine`), or its renewed token was reused
    /// (`with_revoke_on_reuse`).
    Revoked,
    /// A request's check refused it and destroyed it: client binding, or
    /// credentials changed. The rejection is counted by its reason.
    Rejected,
}

/// The expiry a session had reached at `now`, if any: the deadline it
/// passed first. Its idle deadline never lies past its absolute one (it is
/// capped there), so an idle deadline before the absolute one that has
/// passed means the user left first.
fn expired_at(record: &SessionRecord, now: UnixMillis) -> Option<ExpiryReason> {
    if now < record.expires_at() {
        None
    } else if record.idle_deadline < record.absolute_deadline {
        Some(ExpiryReason::Idle)
    } else {
        Some(ExpiryReason::Absolute)
    }
}

/// Buckets of sessions per user: 1 to [`SessionsPerUser::MAX`] (and more).
const PER_USER: usize = SessionsPerUser::MAX as usize;

/// Everything the layer observed: counters and fixed-size histograms.
pub(crate) struct Observer {
    created: AtomicU64,
    logins: AtomicU64,
    logouts: AtomicU64,
    renewals: AtomicU64,
    regenerations: AtomicU64,
    evictions: AtomicU64,
    revocations: AtomicU64,
    guessing_blocks: AtomicU64,
    expired_idle: AtomicU64,
    expired_absolute: AtomicU64,
    /// Signed-in sessions among `expired_absolute`.
    signed_in_expired_absolute: AtomicU64,
    token_reuses: AtomicU64,
    rejections: [AtomicU64; REASONS.len()],
    durations: LogHistogram,
    idle_gaps: LogHistogram,
    per_user: [AtomicU64; PER_USER],
    /// When the live-sessions gauge is next sampled.
    #[cfg(feature = "metrics")]
    gauge_due: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Observer {
    pub(crate) fn new() -> Self {
        Self {
            created: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            logouts: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            regenerations: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
            guessing_blocks: AtomicU64::new(0),
            expired_idle: AtomicU64::new(0),
            expired_absolute: AtomicU64::new(0),
            signed_in_expired_absolute: AtomicU64::new(0),
            token_reuses: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            durations: LogHistogram::new(),
            idle_gaps: LogHistogram::new(),
            per_user: std::array::from_fn(|_| AtomicU64::new(0)),
            #[cfg(feature = "metrics")]
            gauge_due: AtomicU64::new(0),
        }
    }

    /// A request arrived at `now`: samples the store's live sessions for
    /// the gauge, at most once a second.
    #[inline]
    pub(crate) fn request(&self, now: UnixMillis, store: &dyn SessionStore) {
        #[cfg(feature = "metrics")]
        if now >= self.gauge_due.load(Ordering::Relaxed) {
            self.gauge_due
                .store(now.saturating_add(1000), Ordering::Relaxed);
            if let Some(count) = store.live_sessions() {
                super::emit::live_sessions(count);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (now, store);
    }

    /// A session was stored for the first time.
    pub(crate) fn created(&self) {
        bump(&self.created);
        #[cfg(feature = "metrics")]
        super::emit::created();
    }

    /// A user signed in and then held `held` sessions, if known.
    pub(crate) fn logged_in(&self, held: Option<usize>) {
        bump(&self.logins);
        if let Some(held) = held {
            bump(&self.per_user[held.clamp(1, PER_USER) - 1]);
        }
        #[cfg(feature = "metrics")]
        super::emit::logged_in();
    }

    /// A session's id was renewed on its interval.
    pub(crate) fn renewed(&self) {
        bump(&self.renewals);
        #[cfg(feature = "metrics")]
        super::emit::renewed();
    }

    /// A session's id was regenerated on request.
    pub(crate) fn regenerated(&self) {
        bump(&self.regenerations);
        #[cfg(feature = "metrics")]
        super::emit::regenerated();
    }

    /// A network was blocked for guessing.
    pub(crate) fn guessing_blocked(&self) {
        bump(&self.guessing_blocks);
        #[cfg(feature = "metrics")]
        super::emit::guessing_blocked();
    }

    /// A token was not accepted.
    pub(crate) fn rejected(&self, reason: RejectReason) {
        bump(&self.rejections[reason_index(reason)]);
        #[cfg(feature = "metrics")]
        super::emit::rejected(reason);
    }

    /// A request found its session, valid, at `now`.
    #[inline]
    pub(crate) fn returned(&self, record: &SessionRecord, now: UnixMillis) {
        let gap = now.saturating_sub(record.last_seen);
        self.idle_gaps.record(gap);
        #[cfg(feature = "metrics")]
        super::emit::idle_gap(gap);
    }

    /// A renewed token came back after its grace.
    pub(crate) fn token_reused(&self) {
        bump(&self.token_reuses);
        #[cfg(feature = "metrics")]
        super::emit::token_reused();
    }

    /// A session was removed at `now`, as `end` says. Call it only when
    /// the store actually removed it, so that a session ended twice in a
    /// race is counted once.
    ///
    /// A session that had expired already when it was removed (by a
    /// logout of all devices, a revocation, ...) is counted as the expiry
    /// it was, and measured like one: its user had left by then. One
    /// found by a request after its absolute deadline but idle since
    /// before it is an idle expiry.
    pub(crate) fn ended(&self, end: End, record: &SessionRecord, now: UnixMillis) {
        let found_by_request = matches!(end, End::Expired(_));
        let end = expired_at(record, now).map_or(end, End::Expired);
        let signed_in = record.user_id.is_some();
        let counter = match end {
            End::Logout => Some(&self.logouts),
            End::Expired(ExpiryReason::Idle) => {
                if found_by_request {
                    // The user came back, after the idle timeout.
                    self.returned(record, now);
                }
                Some(&self.expired_idle)
            }
            End::Expired(ExpiryReason::Absolute) => {
                if signed_in {
                    bump(&self.signed_in_expired_absolute);
                }
                Some(&self.expired_absolute)
            }
            End::Evicted => Some(&self.evictions),
            End::Revoked => Some(&self.revocations),
            // Counted with the rejections, by reason.
            End::Rejected => None,
        };
        if let Some(counter) = counter {
            bump(counter);
        }
        let duration = signed_in.then(|| {
            let until = match end {
                End::Logout | End::Revoked => now,
                // Its user left at its last activity (a rejected session's
                // last accepted one).
                End::Expired(ExpiryReason::Idle) | End::Evicted | End::Rejected => record.last_seen,
                End::Expired(ExpiryReason::Absolute) => record.absolute_deadline.min(now),
            };
            until.saturating_sub(signed_in_since(record))
        });
        if let Some(duration) = duration {
            self.durations.record(duration);
        }
        #[cfg(feature = "metrics")]
        super::emit::ended(end, duration);
    }

    /// What was observed, and the limits it suggests.
    pub(crate) fn snapshot(
        &self,
        config: &InsightsConfig,
        configured: Limits,
        live_sessions: Option<u64>,
    ) -> Insights {
        let session_durations = distribution(&self.durations.counts());
        let idle_counts = self.idle_gaps.counts();
        let idle_gaps = distribution(&idle_counts);
        let expiries = Expiries {
            idle: read(&self.expired_idle),
            absolute: read(&self.expired_absolute),
        };
        let suggested = Suggestions {
            absolute_timeout: suggest_absolute(
                &session_durations,
                read(&self.signed_in_expired_absolute),
                config,
                configured.absolute_timeout,
            ),
            idle_timeout: suggest_idle(
                &idle_gaps,
                idle_counts.above(millis(configured.idle_timeout)),
                config,
                configured.idle_timeout,
            ),
        };
        Insights {
            sessions_created: read(&self.created),
            logins: read(&self.logins),
            logouts: read(&self.logouts),
            renewals: read(&self.renewals),
            regenerations: read(&self.regenerations),
            evictions: read(&self.evictions),
            revocations: read(&self.revocations),
            token_reuses: read(&self.token_reuses),
            guessing_blocks: read(&self.guessing_blocks),
            expiries,
            rejections: REASONS
                .iter()
                .zip(&self.rejections)
                .map(|(&reason, count)| Rejections {
                    reason,
                    count: read(count),
                })
                .collect(),
            live_sessions,
            session_durations,
            idle_gaps,
            sessions_per_user: sessions_per_user(&self.per_user),
            configured,
            suggested,
        }
    }
}

/// When a signed-in session's time started: its creation.
/// When the session's current sign-in began: its last authentication (what
/// the absolute timeout counts from), or its creation for a session signed
/// in before authentication times were kept.
fn signed_in_since(record: &SessionRecord) -> UnixMillis {
    record.authenticated_at().unwrap_or(record.created_at)
}

fn reason_index(reason: RejectReason) -> usize {
    REASONS
        .iter()
        .position(|&known| known == reason)
        .unwrap_or(0)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn distribution(counts: &Counts) -> Distribution {
    let quantile = |q| counts.quantile(q).map(Duration::from_millis);
    Distribution {
        count: counts.total(),
        p50: quantile(0.5),
        p90: quantile(0.9),
        p99: quantile(0.99),
        buckets: counts
            .non_empty()
            .map(|(from, to, count)| Bucket {
                from: Duration::from_millis(from),
                to: Duration::from_millis(to),
                count,
            })
            .collect(),
    }
}

fn sessions_per_user(buckets: &[AtomicU64; PER_USER]) -> SessionsPerUser {
    let counts: Vec<u64> = buckets.iter().map(read).collect();
    let total: u64 = counts.iter().sum();
    let quantile = |q: f64| -> Option<u32> {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        counts.iter().zip(1u32..).find_map(|(&count, sessions)| {
            seen += count;
            (seen >= rank).then_some(sessions)
        })
    };
    SessionsPerUser {
        count: total,
        p50: quantile(0.5),
        p90: quantile(0.9),
        p99: quantile(0.99),
        sign_ins: counts
            .iter()
            .zip(1u32..)
            .filter(|(&count, _)| count > 0)
            .map(|(&sign_ins, sessions)| SessionCount { sessions, sign_ins })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::IdHash;
    use crate::insights::histogram;
    use crate::record::{Deadlines, SessionData};

    const LIMITS: Limits = Limits {
        idle_timeout: Duration::from_secs(1800),
        absolute_timeout: Duration::from_secs(12 * 3600),
    };

    fn signed_in(created_at: UnixMillis, last_seen: UnixMillis) -> SessionRecord {
        let deadlines = Deadlines {
            created_at,
            idle_deadline: u64::MAX,
            absolute_deadline: u64::MAX,
        };
        let mut record = deadlines.record(
            IdHash::from_bytes([7; 32]),
            Some("alice".to_owned()),
            SessionData::default(),
        );
        record.last_seen = last_seen;
        record
    }

    fn snapshot_size(observer: &Observer) -> usize {
        let insights = observer.snapshot(&InsightsConfig::default(), LIMITS, None);
        serde_json::to_vec(&insights).unwrap().len()
    }

    /// A million sessions of every length, from milliseconds to years: the
    /// snapshot holds at most one entry per bucket, so its size has a
    /// ceiling that does not depend on how much was seen.
    #[test]
    fn a_million_sessions_leave_the_snapshot_within_its_fixed_bound() {
        let observer = Observer::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut after_ten_thousand = 0;
        for i in 0..1_000_000u64 {
            // xorshift: lengths spread over every power of two.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let length = seed >> (seed % 64);
            let record = signed_in(1_000, 1_000 + length / 2);
            observer.ended(End::Logout, &record, 1_000u64.saturating_add(length));
            observer.returned(&record, record.last_seen.saturating_add(length % 4_000_000));
            #[allow(clippy::cast_possible_truncation)]
            observer.logged_in(Some((seed % 100) as usize));
            if i == 9_999 {
                after_ten_thousand = snapshot_size(&observer);
            }
        }
        let insights = observer.snapshot(&InsightsConfig::default(), LIMITS, None);
        assert_eq!(insights.session_durations.count, 1_000_000);
        assert!(insights.session_durations.buckets.len() <= histogram::BUCKETS);
        assert!(insights.idle_gaps.buckets.len() <= histogram::BUCKETS);
        assert!(insights.sessions_per_user.sign_ins.len() <= PER_USER);
        // Every bucket at most once, each entry under 80 bytes of JSON.
        let ceiling = (2 * histogram::BUCKETS + PER_USER) * 80 + 4096;
        let size = snapshot_size(&observer);
        assert!(size <= ceiling, "{size} bytes, over {ceiling}");
        // A hundred times the sessions: only the digits of the counts grew.
        assert!(
            size < after_ten_thousand * 2,
            "{after_ten_thousand} then {size} bytes"
        );
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        for (index, reason) in REASONS.iter().enumerate() {
            assert_eq!(reason_index(*reason), index);
        }
    }

    #[test]
    fn anonymous_sessions_count_but_have_no_duration() {
        let observer = Observer::new();
        let mut record = signed_in(0, 10);
        record.user_id = None;
        observer.ended(End::Logout, &record, 100);
        let insights = observer.snapshot(&InsightsConfig::default(), LIMITS, None);
        assert_eq!(insights.logouts, 1);
        assert_eq!(insights.session_durations.count, 0);
    }
}
