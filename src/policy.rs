//! The security policy: pure decisions about a session record.
//!
//! Nothing here does I/O or reads a clock; every function is given `now`.
//! That keeps the rules easy to test exhaustively and the same on every
//! instance that shares a store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{duration_millis, UnixMillis};
use std::net::IpAddr;

use crate::client::{ClientContext, Network, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX};
use crate::id::IdHash;
use crate::record::{Binding, Deadlines, SeenLocation, SeenNetwork, SessionRecord, Touch};

mod csrf;

pub(crate) use self::csrf::{
    csrf_verdict, is_cross_site, is_unsafe_method, CsrfVerdict, Origin, Provenance,
};
pub use self::csrf::{Csrf, DEFAULT_TOKEN_HEADER};

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
/// since the last one: a quarter of it, so a busy session is written at
/// most four times per idle timeout instead of on every request.
pub(crate) fn touch_due(
    record: &SessionRecord,
    now: UnixMillis,
    timeouts: &Timeouts,
) -> Option<Touch> {
    // A session signed in with its own lifetime (remember-me) keeps it.
    let idle = record
        .sign_in
        .as_ref()
        .and_then(|s| s.idle_timeout)
        .unwrap_or(timeouts.idle);
    // Recorded at most every quarter of the layer's idle window even for a
    // month-long session, so that `last_seen` (the device list's order, the
    // least-recently-used eviction) stays current.
    if now.saturating_sub(record.last_seen) < (idle / 4).min(timeouts.idle / 4) {
        return None;
    }
    Some(Touch {
        last_seen: now,
        idle_deadline: now.saturating_add(idle).min(record.absolute_deadline),
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

/// Whether session tokens may travel on this request: never over plain
/// HTTP when the layer is HTTPS-only (a token read there is ignored, and
/// none is set or cleared).
pub(crate) fn tokens_allowed(https_only: bool, https: bool) -> bool {
    !https_only || https
}

/// How a request that ends without a stored session answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Store a new session and hand the client its token.
    Create,
    /// Leave the client's cookie as it is.
    Keep,
    /// Tell the client to drop its cookie.
    Clear,
    /// The handler's writes could not be saved: say so instead of its answer.
    Unsaved,
}

/// What to do at the end of a request that has no stored session.
///
/// - Lazy creation: only a session that holds something is stored.
/// - A request that arrived with an id replaced moments ago by a login or
///   a regeneration (`in_flight`) never starts a session nor clears the
///   cookie: the client most likely holds the new id by now. Its writes
///   cannot be saved, and must not pass as saved.
/// - Otherwise a client that sent a token (a stale one) or just logged out
///   is told to drop its cookie.
pub(crate) fn without_session(
    has_writes: bool,
    in_flight: bool,
    logged_out: bool,
    had_token: bool,
) -> Ending {
    match (in_flight && !logged_out, has_writes) {
        (true, true) => Ending::Unsaved,
        (true, false) => Ending::Keep,
        (false, true) => Ending::Create,
        (false, false) if had_token || logged_out => Ending::Clear,
        (false, false) => Ending::Keep,
    }
}

/// What to do when the session a request wrote to was destroyed or
/// replaced by another request meanwhile (logout, login, revocation,
/// expiry): writes cannot be saved and must not pass as saved; a mere touch
/// is moot. Either way the cookie is left alone: the client may already
/// hold a newer one.
pub(crate) fn session_lost(has_writes: bool) -> Ending {
    if has_writes {
        Ending::Unsaved
    } else {
        Ending::Keep
    }
}

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The token was malformed or its signature did not verify.
    InvalidToken,
    /// The token was authentic but no live session has that id (strict mode).
    UnknownSession,
    /// The request carried several different session tokens.
    AmbiguousToken,
    /// A token arrived over plain HTTP while the layer is HTTPS-only.
    InsecureTransport,
    /// The User-Agent family differs from the one the session was bound to.
    UserAgentChanged,
    /// The session was used from more distinct networks than allowed.
    TooManyNetworks,
    /// The session moved between places faster than anyone travels.
    ImpossibleTravel,
    /// An unsafe request came from a page of another site ([`Csrf`]); it
    /// was answered `403` without calling the handler.
    CrossSiteRequest,
    /// An unsafe request lacked the session's CSRF token, or carried a
    /// wrong one ([`Csrf::with_header_token_required`]); it was answered
    /// `403` without calling the handler.
    CsrfTokenMismatch,
    /// The user's credentials changed since the session signed in (its
    /// credential stamp no longer matches; see
    /// [`SessionLayer::with_user_stamp`](crate::SessionLayer::with_user_stamp)),
    /// or the user is gone. The session was destroyed.
    CredentialsChanged,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidToken => "invalid token",
            Self::UnknownSession => "unknown session",
            Self::AmbiguousToken => "several different session tokens",
            Self::InsecureTransport => "token sent over plain HTTP",
            Self::UserAgentChanged => "browser family changed",
            Self::TooManyNetworks => "too many networks",
            Self::ImpossibleTravel => "impossible travel",
            Self::CrossSiteRequest => "cross-site request",
            Self::CsrfTokenMismatch => "missing or wrong CSRF token",
            Self::CredentialsChanged => "credentials changed since sign-in",
        })
    }
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
/// The lifecycle calls this under the user's lock, so that concurrent
/// logins cannot overshoot the limit.
///
/// # Errors
///
/// [`LimitReached`] when the limit is full and the rule is
/// [`OnLimit::RejectLogin`].
pub(crate) fn sessions_to_evict(
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

/// What a session is bound to, and how strictly.
///
/// Defaults: the User-Agent family must not change; at most 3 distinct
/// networks (IPv4 /24, IPv6 /48) within 10 minutes; no location check
/// until a [`Locate`] is given, then at most 1000 km/h between sightings,
/// ignoring moves under 50 km. A rejected session is destroyed and the
/// request continues anonymously ([`RejectAction::Destroy`]).
///
/// ```
/// use std::time::Duration;
/// use tower_session_guard::policy::{ClientBinding, RejectAction};
///
/// let strict = ClientBinding::default()
///     .with_max_networks(2, Duration::from_secs(30 * 60))
///     .with_action(RejectAction::Respond);
/// ```
#[derive(Clone)]
pub struct ClientBinding {
    user_agent: bool,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    max_networks: usize,
    network_window: u64,
    locator: Option<Arc<dyn Locate>>,
    max_speed_kmh: f64,
    min_distance_km: f64,
    action: RejectAction,
}

impl Default for ClientBinding {
    fn default() -> Self {
        Self {
            user_agent: true,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            max_networks: 3,
            network_window: 10 * 60 * 1000,
            locator: None,
            max_speed_kmh: 1000.0,
            min_distance_km: 50.0,
            action: RejectAction::Destroy,
        }
    }
}

impl fmt::Debug for ClientBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBinding")
            .field("user_agent", &self.user_agent)
            .field("ipv4_prefix", &self.ipv4_prefix)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("max_networks", &self.max_networks)
            .field("network_window_ms", &self.network_window)
            .field("locator", &self.locator.is_some())
            .field("max_speed_kmh", &self.max_speed_kmh)
            .field("min_distance_km", &self.min_distance_km)
            .field("action", &self.action)
            .finish()
    }
}

impl ClientBinding {
    /// Whether a change of User-Agent family (Chrome → Firefox, Windows →
    /// Android) rejects the session. Default: `true`. Version changes never do.
    #[must_use]
    pub fn with_user_agent_check(mut self, check: bool) -> Self {
        self.user_agent = check;
        self
    }

    /// The prefix lengths that make two addresses one network. Default: 24 and 48.
    ///
    /// # Panics
    ///
    /// If `ipv4` is over 32 or `ipv6` over 128.
    #[must_use]
    pub fn with_network_prefixes(mut self, ipv4: u8, ipv6: u8) -> Self {
        (self.ipv4_prefix, self.ipv6_prefix) = crate::client::checked_prefixes(ipv4, ipv6);
        self
    }

    /// A session seen from more than `max` distinct networks within
    /// `window` is treated as stolen. Default: 3 within 10 minutes.
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    #[must_use]
    pub fn with_max_networks(mut self, max: usize, window: Duration) -> Self {
        assert!(
            max > 0,
            "a session must be allowed at least one network; pass 1 or more"
        );
        self.max_networks = max;
        self.network_window = duration_millis(window);
        self
    }

    /// Turns on impossible-travel detection with your IP-to-location lookup.
    #[must_use]
    pub fn with_locator(mut self, locator: impl Locate) -> Self {
        self.locator = Some(Arc::new(locator));
        self
    }

    /// The fastest believable travel between two sightings. Default: 1000 km/h.
    #[must_use]
    pub fn with_max_speed_kmh(mut self, kmh: f64) -> Self {
        self.max_speed_kmh = kmh;
        self
    }

    /// Moves shorter than this are never impossible (GeoIP is imprecise).
    /// Default: 50 km.
    #[must_use]
    pub fn with_min_distance_km(mut self, km: f64) -> Self {
        self.min_distance_km = km;
        self
    }

    /// What happens to a request whose session is rejected. Default:
    /// [`RejectAction::Destroy`].
    #[must_use]
    pub fn with_action(mut self, action: RejectAction) -> Self {
        self.action = action;
        self
    }

    /// What a rejection does.
    #[must_use]
    pub fn action(&self) -> RejectAction {
        self.action
    }

    /// The client's network under these prefixes.
    #[must_use]
    pub fn network_of(&self, ip: IpAddr) -> Network {
        Network::of(ip, self.ipv4_prefix, self.ipv6_prefix)
    }

    /// Looks up where `ip` is, if a locator is configured (I/O for the layer,
    /// done before the policy runs).
    pub(crate) fn locate(&self, ip: Option<IpAddr>) -> Option<Location> {
        self.locator.as_ref().and_then(|l| l.locate(ip?))
    }
}

/// What a rejected session's request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectAction {
    /// Destroy the session, clear the cookie, and serve the request anonymously.
    Destroy,
    /// Destroy the session, clear the cookie, and answer `401 Unauthorized`
    /// without calling the service.
    Respond,
}

/// An IP-to-location lookup, backed by your own GeoIP database.
///
/// The crate ships no location data.
pub trait Locate: Send + Sync + 'static {
    /// Where `ip` is, if known.
    fn locate(&self, ip: IpAddr) -> Option<Location>;
}

impl<F> Locate for F
where
    F: Fn(IpAddr) -> Option<Location> + Send + Sync + 'static,
{
    fn locate(&self, ip: IpAddr) -> Option<Location> {
        self(ip)
    }
}

/// A place on Earth.
#[derive(Clone, Debug, PartialEq)]
pub struct Location {
    /// Degrees north (negative: south).
    pub latitude: f64,
    /// Degrees east (negative: west).
    pub longitude: f64,
    /// ISO country code, if known.
    pub country: Option<String>,
}

/// Great-circle distance in kilometres.
fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The policy's answer about a session's client.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum BindingVerdict {
    /// Accept; store the new binding state if there is one.
    Accept(Option<Binding>),
    /// The session is probably stolen.
    Reject(RejectReason),
}

/// How long a location sighting stays fresh before it is rewritten.
const LOCATION_REFRESH_MS: u64 = 60_000;

/// The binding state of a session created by `client` at `now`.
pub(crate) fn initial_binding(
    client: &ClientContext,
    location: Option<&Location>,
    now: UnixMillis,
    rules: &ClientBinding,
) -> Binding {
    Binding {
        user_agent: client.user_agent.clone(),
        networks: client
            .ip
            .map(|ip| SeenNetwork {
                network: rules.network_of(ip),
                last_seen: now,
            })
            .into_iter()
            .collect(),
        location: location.map(|l| SeenLocation {
            latitude: l.latitude,
            longitude: l.longitude,
            at: now,
        }),
    }
}

/// Checks a stored session against the client now using it.
pub(crate) fn check_binding(
    state: Option<&Binding>,
    client: &ClientContext,
    location: Option<&Location>,
    now: UnixMillis,
    rules: &ClientBinding,
) -> BindingVerdict {
    let Some(state) = state else {
        // Bound from its first request under these rules.
        return BindingVerdict::Accept(Some(initial_binding(client, location, now, rules)));
    };
    if rules.user_agent && state.user_agent != client.user_agent {
        return BindingVerdict::Reject(RejectReason::UserAgentChanged);
    }
    let mut next = state.clone();
    let mut changed = false;

    if let Some(ip) = client.ip {
        let network = rules.network_of(ip);
        let before = next.networks.len();
        next.networks
            .retain(|seen| now.saturating_sub(seen.last_seen) < rules.network_window);
        changed |= next.networks.len() != before;
        match next
            .networks
            .iter_mut()
            .find(|seen| seen.network == network)
        {
            Some(seen) => {
                // Refresh rarely: a quarter window of staleness is harmless.
                if now.saturating_sub(seen.last_seen) >= rules.network_window / 4 {
                    seen.last_seen = now;
                    changed = true;
                }
            }
            None => {
                if next.networks.len() >= rules.max_networks {
                    return BindingVerdict::Reject(RejectReason::TooManyNetworks);
                }
                next.networks.push(SeenNetwork {
                    network,
                    last_seen: now,
                });
                changed = true;
            }
        }
    }

    if let Some(here) = location {
        match next.location {
            Some(last) => {
                let distance = distance_km(
                    (last.latitude, last.longitude),
                    (here.latitude, here.longitude),
                );
                if distance >= rules.min_distance_km {
                    // Precision of a millisecond clock; a zero interval is infinitely fast.
                    #[allow(clippy::cast_precision_loss)]
                    let hours = now.saturating_sub(last.at) as f64 / 3_600_000.0;
                    if hours <= 0.0 || distance / hours > rules.max_speed_kmh {
                        return BindingVerdict::Reject(RejectReason::ImpossibleTravel);
                    }
                }
                if distance >= rules.min_distance_km
                    || now.saturating_sub(last.at) >= LOCATION_REFRESH_MS
                {
                    next.location = Some(SeenLocation {
                        latitude: here.latitude,
                        longitude: here.longitude,
                        at: now,
                    });
                    changed = true;
                }
            }
            None => {
                next.location = Some(SeenLocation {
                    latitude: here.latitude,
                    longitude: here.longitude,
                    at: now,
                });
                changed = true;
            }
        }
    }
    BindingVerdict::Accept(changed.then_some(next))
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
    #[test]
    fn tokens_travel_over_plain_http_only_when_the_layer_allows_it() {
        assert!(tokens_allowed(false, false));
        assert!(tokens_allowed(false, true));
        assert!(tokens_allowed(true, true));
        assert!(!tokens_allowed(true, false));
    }

    #[test]
    fn only_a_session_holding_something_is_created() {
        assert_eq!(without_session(true, false, false, false), Ending::Create);
        assert_eq!(without_session(false, false, false, false), Ending::Keep);
    }

    #[test]
    fn a_request_in_flight_across_a_login_neither_creates_nor_clears() {
        assert_eq!(without_session(true, true, false, true), Ending::Unsaved);
        assert_eq!(without_session(false, true, false, true), Ending::Keep);
        // Unless it logged out itself: then its cookie goes.
        assert_eq!(without_session(false, true, true, true), Ending::Clear);
    }

    #[test]
    fn a_stale_token_or_a_logout_clears_the_cookie() {
        assert_eq!(without_session(false, false, false, true), Ending::Clear);
        assert_eq!(without_session(false, false, true, false), Ending::Clear);
        assert_eq!(without_session(true, false, true, true), Ending::Create);
    }

    #[test]
    fn writes_to_a_lost_session_are_reported_and_a_touch_is_moot() {
        assert_eq!(session_lost(true), Ending::Unsaved);
        assert_eq!(session_lost(false), Ending::Keep);
    }

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

    fn client(ip: &str, ua: &str) -> ClientContext {
        ClientContext {
            ip: Some(ip.parse().unwrap()),
            user_agent: Some(ua.to_owned()),
            https: true,
        }
    }

    #[test]
    fn binding_accepts_the_same_client_without_writing() {
        let rules = ClientBinding::default();
        let c = client("203.0.113.5", "Chrome on Linux");
        let state = initial_binding(&c, None, 0, &rules);
        assert_eq!(
            check_binding(Some(&state), &c, None, 1_000, &rules),
            BindingVerdict::Accept(None)
        );
        let neighbour = client("203.0.113.200", "Chrome on Linux");
        assert_eq!(
            check_binding(Some(&state), &neighbour, None, 1_000, &rules),
            BindingVerdict::Accept(None)
        );
    }

    #[test]
    fn binding_rejects_a_new_browser_family() {
        let rules = ClientBinding::default();
        let state = initial_binding(&client("203.0.113.5", "Chrome on Linux"), None, 0, &rules);
        assert_eq!(
            check_binding(
                Some(&state),
                &client("203.0.113.5", "Firefox on Linux"),
                None,
                1,
                &rules
            ),
            BindingVerdict::Reject(RejectReason::UserAgentChanged)
        );
        let lax = ClientBinding::default().with_user_agent_check(false);
        assert!(matches!(
            check_binding(
                Some(&state),
                &client("203.0.113.5", "Firefox on Linux"),
                None,
                1,
                &lax
            ),
            BindingVerdict::Accept(_)
        ));
    }

    #[test]
    fn a_fourth_network_within_the_window_is_rejected_but_old_ones_age_out() {
        let rules = ClientBinding::default();
        let ua = "Chrome on Linux";
        let mut state = initial_binding(&client("198.51.100.1", ua), None, 0, &rules);
        for (i, ip) in ["198.51.101.1", "198.51.102.1"].iter().enumerate() {
            match check_binding(
                Some(&state),
                &client(ip, ua),
                None,
                (i as u64 + 1) * 60_000,
                &rules,
            ) {
                BindingVerdict::Accept(Some(next)) => state = next,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(state.networks.len(), 3);
        assert_eq!(
            check_binding(
                Some(&state),
                &client("198.51.103.1", ua),
                None,
                5 * 60_000,
                &rules
            ),
            BindingVerdict::Reject(RejectReason::TooManyNetworks)
        );
        assert!(matches!(
            check_binding(
                Some(&state),
                &client("198.51.103.1", ua),
                None,
                11 * 60_000,
                &rules
            ),
            BindingVerdict::Accept(Some(_))
        ));
    }

    #[test]
    fn impossible_travel_is_rejected_and_a_train_ride_is_not() {
        let rules = ClientBinding::default();
        let ua = "Safari on iOS";
        let oslo = Location {
            latitude: 59.91,
            longitude: 10.75,
            country: Some("NO".into()),
        };
        let bergen = Location {
            latitude: 60.39,
            longitude: 5.32,
            country: Some("NO".into()),
        };
        let tokyo = Location {
            latitude: 35.68,
            longitude: 139.69,
            country: Some("JP".into()),
        };
        let c = client("203.0.113.5", ua);
        let state = initial_binding(&c, Some(&oslo), 0, &rules);
        assert_eq!(
            check_binding(Some(&state), &c, Some(&tokyo), 5 * 60_000, &rules),
            BindingVerdict::Reject(RejectReason::ImpossibleTravel)
        );
        assert!(matches!(
            check_binding(Some(&state), &c, Some(&bergen), 60 * 60_000, &rules),
            BindingVerdict::Accept(Some(_))
        ));
        let near = Location {
            latitude: 59.95,
            longitude: 10.80,
            country: None,
        };
        assert!(matches!(
            check_binding(Some(&state), &c, Some(&near), 1, &rules),
            BindingVerdict::Accept(_)
        ));
        assert!((distance_km((59.91, 10.75), (60.39, 5.32)) - 305.0).abs() < 10.0);
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
