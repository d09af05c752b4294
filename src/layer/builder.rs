//! [`SessionLayer`]: the builder and the configuration its services share.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::SessionService;
use crate::admin::SessionAdmin;
use crate::client::TrustedProxies;
use crate::clock::{duration_millis, Clock, SystemClock};
use crate::event::{EventHandler, SessionEvent};
use crate::guessing::{Guard, GuessingDetection};
use crate::insights::{Insights, InsightsConfig, Limits, Observer};
use crate::key::{Key, Keyring};
use crate::policy::{ClientBinding, Csrf, LimitRule, OnLimit, Renewal, SessionLimit, Timeouts};
use crate::sign_in::{StampError, UserStamp};
use crate::store::SessionStore;
use crate::transport::{self, CookieConfig, CookieWriter, SiteData, Transport};

/// Adds validated sessions to every request of the service it wraps.
///
/// A small `Clone` configuration: every service it makes shares one store,
/// keyring and settings. Builders are consuming; invalid settings panic
/// with a sentence saying what to change, at start-up, never per request.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tower_session_guard::{Key, MemoryStore, Session, SessionError, SessionLayer};
///
/// async fn handler(session: Session) -> Result<String, SessionError> {
///     let n: u64 = session.get("n")?.unwrap_or(0);
///     session.insert("n", n + 1)?;
///     Ok(n.to_string())
/// }
///
/// let layer = SessionLayer::new(MemoryStore::new(100_000), Key::generate())
///     .with_idle_timeout(Duration::from_secs(30 * 60))
///     .with_absolute_timeout(Duration::from_secs(8 * 3600));
/// let app: Router = Router::new().route("/", get(handler)).layer(layer);
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
pub(super) struct Config {
    pub(super) store: Arc<dyn SessionStore>,
    /// Shared with every request's `Session`, which makes CSRF tokens.
    pub(super) keyring: Arc<Keyring>,
    pub(super) cookie: CookieConfig,
    /// `cookie`, rendered once.
    pub(super) cookie_writer: CookieWriter,
    pub(super) timeouts: Timeouts,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) events: Option<EventHandler>,
    pub(super) limit: Option<LimitRule>,
    pub(super) renewal: Option<Renewal>,
    pub(super) proxies: TrustedProxies,
    pub(super) transport: Transport,
    pub(super) https_only: bool,
    pub(super) binding: Option<ClientBinding>,
    pub(super) guessing: Option<Guard>,
    pub(super) csrf: Option<Csrf>,
    /// The `Clear-Site-Data` value sent when a session ends, when on.
    pub(super) clear_site_data: Option<http::HeaderValue>,
    /// Refuse (`500`) a request without a client address when a
    /// protection needs one.
    pub(super) client_address_required: bool,
    /// Whether the missing client address was logged (once per layer).
    pub(super) missing_address_logged: Arc<AtomicBool>,
    /// The credential-stamp rule, when on.
    pub(super) stamp: Option<UserStamp>,
    /// Where `SignedIn` redirects, when set.
    pub(super) sign_in_page: Option<Arc<str>>,
    /// End the successor of a renewed id reused after its grace.
    pub(super) revoke_on_reuse: bool,
    /// What the layer observed, for [`SessionLayer::insights`] and metrics.
    pub(super) observer: Arc<Observer>,
    pub(super) insights: InsightsConfig,
}

impl SessionLayer {
    /// A layer keeping sessions in `store`, signing tokens with `key`.
    ///
    /// Defaults: idle timeout 30 minutes, absolute timeout 12 hours, the
    /// cookie of [`CookieConfig::default`] (`__Host-id; Path=/; Secure;
    /// HttpOnly; SameSite=Lax`), the system clock, no event handler.
    #[must_use]
    pub fn new(store: impl SessionStore, key: Key) -> Self {
        Self {
            config: Arc::new(Config {
                store: observed_store(Arc::new(store)),
                keyring: Arc::new(Keyring::new(key)),
                cookie: CookieConfig::default(),
                cookie_writer: CookieConfig::default().writer(),
                timeouts: Timeouts::default(),
                clock: Arc::new(SystemClock),
                events: None,
                limit: None,
                renewal: None,
                proxies: TrustedProxies::none(),
                transport: Transport::cookie(),
                https_only: false,
                binding: None,
                guessing: None,
                csrf: None,
                clear_site_data: None,
                client_address_required: false,
                missing_address_logged: Arc::new(AtomicBool::new(false)),
                stamp: None,
                sign_in_page: None,
                revoke_on_reuse: false,
                observer: Arc::new(Observer::new()),
                insights: InsightsConfig::default(),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Sessions with no activity for `timeout` expire. Default: 30 minutes.
    ///
    /// Enforced on the server from the stored record. To spare the store a
    /// write on every request, activity is recorded only once a quarter of
    /// the window has passed since it was last recorded: a session idle for
    /// the full `timeout` always expires, and one idle for at least three
    /// quarters of it may expire, depending on when it was last touched.
    ///
    /// # Panics
    ///
    /// If `timeout` is shorter than one millisecond.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "the idle timeout must be at least one millisecond (times are kept in whole milliseconds); \
             pass e.g. `Duration::from_secs(30 * 60)`"
        );
        let absolute = self.config.timeouts.absolute;
        self.config_mut().timeouts = Timeouts::new(timeout, Duration::from_millis(absolute));
        self
    }

    /// Sessions end `timeout` after creation, active or not. Default: 12 hours.
    ///
    /// # Panics
    ///
    /// If `timeout` is shorter than one millisecond.
    #[must_use]
    pub fn with_absolute_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "the absolute timeout must be at least one millisecond (times are kept in whole milliseconds); \
             pass e.g. `Duration::from_secs(12 * 3600)`"
        );
        let idle = self.config.timeouts.idle;
        self.config_mut().timeouts = Timeouts::new(Duration::from_millis(idle), timeout);
        self
    }

    /// The session cookie's name and flags. Default: [`CookieConfig::default`].
    ///
    /// # Panics
    ///
    /// If browsers would refuse the cookie, e.g. a `__Host-` name with
    /// `with_secure(false)`, a domain or a path other than `/`; the message
    /// says what to change.
    #[must_use]
    pub fn with_cookie(mut self, cookie: CookieConfig) -> Self {
        if let Err(problem) = cookie.validate() {
            panic!("invalid session cookie configuration: {problem}");
        }
        self.config_mut().cookie_writer = cookie.writer();
        self.config_mut().cookie = cookie;
        self
    }

    /// Where tokens travel: a cookie, a header, or either (see
    /// [`Transport`]). Default: [`Transport::cookie`]. Every rule (signing,
    /// strict mode, timeouts, limits, binding) is the same whatever the
    /// transport.
    #[must_use]
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.config_mut().transport = transport;
        self
    }

    /// Keys that still verify tokens but no longer sign them. Default: none.
    ///
    /// A token signed with a fallback key is accepted and re-issued, signed
    /// with the primary key, on the same response.
    #[must_use]
    pub fn with_fallback_keys(mut self, keys: impl IntoIterator<Item = Key>) -> Self {
        Arc::make_mut(&mut self.config_mut().keyring).set_fallbacks(keys.into_iter().collect());
        self
    }

    /// Limits how many live sessions one user may have. Default: no limit.
    ///
    /// Checked on [`Session::login`](crate::Session::login), atomically per user in the store, so
    /// concurrent logins cannot overshoot it. With
    /// [`OnLimit::EvictLeastRecent`] the user's least recently used sessions
    /// are destroyed to make room (their next request is anonymous and their
    /// cookie is cleared); with [`OnLimit::RejectLogin`] the login fails with
    /// [`SessionError::LimitReached`](crate::SessionError::LimitReached) and
    /// nothing changes.
    ///
    /// # Panics
    ///
    /// If `max` is zero (no login could ever succeed).
    #[must_use]
    pub fn with_session_limit(mut self, max: usize, on_limit: OnLimit) -> Self {
        assert!(
            max > 0,
            "a session limit of 0 would refuse every login; pass at least 1, or leave the limit out"
        );
        self.config_mut().limit = Some(LimitRule::Fixed(SessionLimit { max, on_limit }));
        self
    }

    /// Like [`with_session_limit`](Self::with_session_limit), with the limit
    /// computed per user id (say, from a role) at each login. A function
    /// that returns 0 for a user makes that user's logins fail with
    /// [`SessionError::LimitReached`](crate::SessionError::LimitReached).
    #[must_use]
    pub fn with_session_limit_fn<F>(mut self, max_for_user: F, on_limit: OnLimit) -> Self
    where
        F: Fn(&str) -> usize + Send + Sync + 'static,
    {
        self.config_mut().limit = Some(LimitRule::PerUser(Arc::new(max_for_user), on_limit));
        self
    }

    /// Gives sessions a new id once their id is `every` old (the OWASP
    /// "renewal timeout"). Default: off.
    ///
    /// Data, user and deadlines are kept. The previous id keeps working for
    /// `grace` after the renewal, so requests already in flight with the old
    /// cookie are not logged out: they are served the renewed session and
    /// receive the new cookie too. After `grace` the old id is dead. A zero
    /// `grace` kills the old id at once.
    ///
    /// For one more interval after a non-zero grace (never past the
    /// session's absolute deadline) the old id is still recognised: presented then,
    /// it is a copied token used after the user's browser moved on, and the
    /// layer reports [`SessionEvent::ReusedAfterRenewal`] (and, with
    /// [`with_revoke_on_reuse`](Self::with_revoke_on_reuse), ends the
    /// session). The request gets no session either way.
    ///
    /// # Panics
    ///
    /// If `every` is shorter than one millisecond.
    #[must_use]
    pub fn with_renewal_interval(mut self, every: Duration, grace: Duration) -> Self {
        assert!(
            every >= Duration::from_millis(1),
            "the renewal interval must be at least one millisecond; pass e.g. `Duration::from_secs(15 * 60)`"
        );
        self.config_mut().renewal = Some(Renewal {
            every: duration_millis(every),
            grace: duration_millis(grace),
        });
        self
    }

    /// Ends the renewed session too when a renewed id is reused after its
    /// grace period ([`SessionEvent::ReusedAfterRenewal`]), as refresh-token
    /// reuse detection does: the layer cannot tell which holder of the
    /// token is the user, so both must sign in again. Default: `false`
    /// (the event is reported, the successor lives on).
    ///
    /// # Panics
    ///
    /// When the layer wraps a service, if this is on without a renewal
    /// interval ([`with_renewal_interval`](Self::with_renewal_interval)) or
    /// with a zero grace: without renewals there is no reuse to detect, and
    /// without a grace a request in flight during a renewal could not be
    /// told from a copied token.
    ///
    /// The trade-off, as with refresh tokens: anyone holding an old token
    /// within the watch window (one renewal interval after its grace) can
    /// end the user's session once, by presenting it. Turn this on where a
    /// forced sign-in is cheaper than a stolen session.
    #[must_use]
    pub fn with_revoke_on_reuse(mut self, revoke: bool) -> Self {
        self.config_mut().revoke_on_reuse = revoke;
        self
    }

    /// Ends a signed-in session when the user's credentials change.
    ///
    /// `lookup(user_id)` returns the user's current *stamp*: any string
    /// that changes when their credentials or rights do, say a hash of the
    /// password hash and a roles version read from the user table (`None`
    /// when the user is gone). The layer keeps a keyed hash of the stamp
    /// with each sign-in, reads the stamp again at most once per `interval`
    /// per session (remembered in a bounded in-memory cache per layer), and
    /// compares the two in constant time. A session whose stamp no longer
    /// matches is destroyed on that request, which continues without a
    /// session ([`SessionEvent::Rejected`] with
    /// [`RejectReason::CredentialsChanged`](crate::RejectReason::CredentialsChanged)).
    /// A failing lookup answers `503`: the session can be neither trusted
    /// nor ended.
    ///
    /// "Password changed: sign out everywhere else": store the new
    /// password (the stamp changes), then call
    /// [`Session::reauthenticate`](crate::Session::reauthenticate), which
    /// stores the new stamp with the current session; every other session
    /// ends at its next check (call
    /// [`Session::logout_others`](crate::Session::logout_others) to end
    /// them at once). Sessions signed in before the stamp was configured
    /// have none and end at their first check.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_session_guard::{Key, MemoryStore, SessionLayer};
    ///
    /// # #[derive(Clone)] struct Users;
    /// # impl Users { async fn password_version(&self, _user: &str) -> Result<Option<String>, std::io::Error> { Ok(Some("1".into())) } }
    /// let users = Users; // the app's user table
    /// let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
    ///     .with_user_stamp(Duration::from_secs(60), move |user_id: String| {
    ///         let users = users.clone();
    ///         async move { Ok(users.password_version(&user_id).await?) }
    ///     });
    /// ```
    #[must_use]
    pub fn with_user_stamp<F, Fut>(mut self, interval: Duration, lookup: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<String>, StampError>> + Send + 'static,
    {
        self.config_mut().stamp = Some(UserStamp::new(interval, lookup));
        self
    }

    /// Where [`SignedIn`](crate::SignedIn) sends a browser that is not
    /// signed in: a `GET` or `HEAD` to a guarded page is answered `303 See
    /// Other` to `page`, with `next=<the page asked for>` added to its
    /// query. Default: none (the guard answers `401`).
    ///
    /// # Panics
    ///
    /// If `page` is not a path on this site (such as `/login`).
    #[must_use]
    pub fn with_sign_in_page(mut self, page: &str) -> Self {
        assert!(
            crate::safe_return_path(page).is_some(),
            "the sign-in page must be a path on this site starting with one `/`, such as \"/login\"; got {page:?}"
        );
        self.config_mut().sign_in_page = Some(Arc::from(page));
        self
    }

    /// Which proxies may tell the layer the client's address and scheme,
    /// and in which header family (`X-Forwarded-For` / `X-Forwarded-Proto`
    /// by default, or `Forwarded`; see [`TrustedProxies`]). Default: none;
    /// forwarding headers are ignored and the client is the peer.
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.config_mut().proxies = proxies;
        self
    }

    /// Refuses session tokens over plain HTTP. Default: `false`.
    ///
    /// When `true`, a token arriving over plain HTTP is ignored (and a
    /// `Rejected` event with `InsecureTransport` says so), no session
    /// cookie is ever set or cleared on a plain-HTTP response, and
    /// `login` over plain HTTP fails with `SessionError::InsecureTransport`.
    /// HTTPS is known from the request URI's scheme, from the
    /// [`client::Https`](crate::client::Https) marker a TLS acceptor puts in
    /// the request extensions (origin-form requests carry no scheme), or
    /// from `X-Forwarded-Proto` / `Forwarded: proto=` sent by a trusted
    /// proxy ([`with_trusted_proxies`](Self::with_trusted_proxies)). The URI
    /// scheme is what the client wrote; it is a convenience for proxies and
    /// tests, not a proof of TLS: a server that also listens in plain HTTP
    /// should rely on the marker or on a trusted proxy.
    #[must_use]
    pub fn with_https_only(mut self, https_only: bool) -> Self {
        self.config_mut().https_only = https_only;
        self
    }

    /// Binds sessions to their client (see [`ClientBinding`] for the rules
    /// and defaults). Default: off.
    ///
    /// A session used by a different browser family, from too many
    /// networks at once, or (with a locator) from two places too far apart
    /// for the time between them, is treated as stolen: it is destroyed and
    /// a `Rejected` event names the reason.
    #[must_use]
    pub fn with_client_binding(mut self, binding: ClientBinding) -> Self {
        self.config_mut().binding = Some(binding);
        self
    }

    /// Answers `429 Too Many Requests` to networks that send too many bad
    /// session tokens (see [`GuessingDetection`]). Default: off, because
    /// behind a proxy that is not declared with
    /// [`with_trusted_proxies`](Self::with_trusted_proxies) every client
    /// shares one address.
    #[must_use]
    pub fn with_guessing_detection(mut self, detection: GuessingDetection) -> Self {
        self.config_mut().guessing = Some(Guard::new(detection));
        self
    }

    /// What to do with a request that carries no client address while
    /// client binding or guessing detection is on, both of which need it.
    /// Default: `false`: serve the request without those protections.
    ///
    /// A protection that cannot work is never silently off: the first such
    /// request is logged as a `tracing` error naming the fix (serve axum
    /// with `into_make_service_with_connect_info::<SocketAddr>()`, or, behind
    /// a proxy, declare it with
    /// [`with_trusted_proxies`](Self::with_trusted_proxies)), and every one
    /// sends a [`SessionEvent::ClientAddressMissing`]. With `true` the layer
    /// also fails closed: such requests are answered
    /// `500 Internal Server Error` with that sentence, without calling the
    /// handler.
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use axum::{routing::get, Router};
    /// use tower_session_guard::{ClientBinding, Key, MemoryStore, SessionLayer};
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
    ///     .with_client_binding(ClientBinding::default())
    ///     .with_client_address_required(true);
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// // The peer address the binding needs:
    /// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    /// # }
    /// ```
    #[must_use]
    pub fn with_client_address_required(mut self, required: bool) -> Self {
        self.config_mut().client_address_required = required;
        self
    }

    /// Protects against cross-site request forgery (see [`Csrf`] for what
    /// is checked). Default: off.
    ///
    /// Unsafe requests (`POST`, `PUT`, `PATCH`, `DELETE`, ...) from pages
    /// of other sites are answered `403 Forbidden` without calling the
    /// handler, sign-in forms included (login CSRF). Handlers that take
    /// forms put [`Session::csrf_token`](crate::Session::csrf_token) in a
    /// hidden field and check it with
    /// [`Session::verify_csrf`](crate::Session::verify_csrf).
    ///
    /// ```
    /// use tower_session_guard::{Csrf, Key, MemoryStore, SessionLayer};
    ///
    /// let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
    ///     .with_csrf(Csrf::default());
    /// ```
    #[must_use]
    pub fn with_csrf(mut self, csrf: Csrf) -> Self {
        self.config_mut().csrf = Some(csrf);
        self
    }

    /// Answers `Clear-Site-Data: "cookies"` when a browser's session ends:
    /// on [`logout`](crate::Session::logout),
    /// [`logout_everywhere`](crate::Session::logout_everywhere) (for the
    /// browser that asked), and when the layer destroys a session the
    /// policy rejected (client binding). Default: `false`.
    ///
    /// The browser then drops every cookie of the site, not only the
    /// session cookie: turn it on when nothing else the site keeps in
    /// cookies should outlive a sign-out. It is sent over HTTPS only
    /// (browsers ignore it elsewhere), and not on a response that also
    /// starts a new session. For other directives, see
    /// [`with_clear_site_data_directives`](Self::with_clear_site_data_directives).
    #[must_use]
    pub fn with_clear_site_data(mut self, on: bool) -> Self {
        self.config_mut().clear_site_data = if on {
            transport::clear_site_data(&[SiteData::Cookies])
        } else {
            None
        };
        self
    }

    /// Like [`with_clear_site_data(true)`](Self::with_clear_site_data),
    /// with the directives to send, say `[SiteData::Cookies,
    /// SiteData::Storage]`; an empty list turns it off.
    ///
    /// ```
    /// use tower_session_guard::{Key, MemoryStore, SessionLayer, SiteData};
    ///
    /// let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
    ///     .with_clear_site_data_directives([SiteData::Cookies, SiteData::Storage, SiteData::Cache]);
    /// ```
    #[must_use]
    pub fn with_clear_site_data_directives(
        mut self,
        directives: impl IntoIterator<Item = SiteData>,
    ) -> Self {
        let directives: Vec<SiteData> = directives.into_iter().collect();
        self.config_mut().clear_site_data = transport::clear_site_data(&directives);
        self
    }

    /// A handle to list and revoke sessions from outside a request (an
    /// admin endpoint, a background task). See [`SessionAdmin`].
    #[must_use]
    pub fn sessions(&self) -> SessionAdmin {
        SessionAdmin::new(
            Arc::clone(&self.config.store),
            Arc::clone(&self.config.clock),
            self.config.events.clone(),
            Arc::clone(&self.config.observer),
        )
    }

    /// What this layer (and its clones) observed since it was made: how
    /// long signed-in sessions lasted and how long they sat idle (quantiles
    /// and buckets), sessions per user (with a session limit), rejections
    /// by reason, and the absolute and idle timeouts those figures suggest,
    /// with the reasoning.
    /// See [`insights`](crate::insights).
    ///
    /// Always on: recording costs a few atomic additions per request and a
    /// fixed 9 KiB or so, and the figures are there the day they are
    /// needed, without a restart. The snapshot serializes with serde.
    #[must_use]
    pub fn insights(&self) -> Insights {
        let limits = Limits {
            idle_timeout: Duration::from_millis(self.config.timeouts.idle),
            absolute_timeout: Duration::from_millis(self.config.timeouts.absolute),
        };
        self.config.observer.snapshot(
            &self.config.insights,
            limits,
            self.config.store.live_sessions(),
        )
    }

    /// How [`insights`](Self::insights) turns its observations into
    /// suggested limits: the margins and the minimum of observations (see
    /// [`InsightsConfig`]). Default: [`InsightsConfig::default`].
    #[must_use]
    pub fn with_insights(mut self, insights: InsightsConfig) -> Self {
        self.config_mut().insights = insights;
        self
    }

    /// Where the layer reads the time. Default: [`SystemClock`].
    ///
    /// Tests pass a [`ManualClock`](crate::clock::ManualClock) to control
    /// expiry without sleeping.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.config_mut().clock = Arc::new(clock);
        self
    }

    /// Calls `handler` with every [`SessionEvent`]. Default: events go to
    /// `tracing` only.
    ///
    /// The handler runs on the request's task: keep it quick (send to a
    /// channel for anything slow).
    #[must_use]
    pub fn with_event_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(&SessionEvent) + Send + Sync + 'static,
    {
        self.config_mut().events = Some(Arc::new(handler));
        self
    }
}

/// The layer's store: timed for the store's metrics with the `metrics`
/// feature, as given otherwise.
fn observed_store(store: Arc<dyn SessionStore>) -> Arc<dyn SessionStore> {
    #[cfg(feature = "metrics")]
    return Arc::new(crate::metrics::TimedStore::new(store));
    #[cfg(not(feature = "metrics"))]
    store
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cookie", &self.config.cookie)
            .field("timeouts", &self.config.timeouts)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        if self.config.revoke_on_reuse {
            assert!(
                self.config.renewal.is_some_and(|r| r.grace > 0),
                "with_revoke_on_reuse(true) needs renewed ids to watch after a grace period: also call \
                 `with_renewal_interval` with a grace of at least a few seconds (with no grace, requests in \
                 flight during a renewal would count as reuse and sign the user out)"
            );
        }
        SessionService::new(inner, Arc::clone(&self.config))
    }
}
