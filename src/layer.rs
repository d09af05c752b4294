//! [`SessionLayer`], [`SessionService`] and the response future.
//!
//! The service walks each request through the steps in the crate docs:
//! read the token, verify it, load the record, ask the policy, hand the
//! handler a [`Session`], then commit what changed and answer with the
//! token. It holds no rules of its own: it asks `policy` and tells `store`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::admin::SessionAdmin;
use crate::client::{ClientContext, Network, TrustedProxies};
use crate::clock::{duration_millis, Clock, SystemClock, UnixMillis};
use crate::event::{self, EventHandler, RejectReason, SessionEvent};
use crate::guessing::{Guard, GuessingDetection};
use crate::id::{IdHash, SessionId};
use crate::key::{Key, Keyring};
use crate::lifecycle::{self, Found};
use crate::policy::{
    self, BindingVerdict, ClientBinding, LimitRule, OnLimit, RejectAction, Renewal, SessionLimit,
    Timeouts, Verdict,
};
use crate::record::{Binding, Change, SessionRecord, Touch};
use crate::session::{self, Happening, Session, State};
use crate::store::{SessionStore, StoreError};
use crate::transport::{CookieConfig, CookieWriter, TokenRead, Transport};

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
struct Config {
    store: Arc<dyn SessionStore>,
    keyring: Keyring,
    cookie: CookieConfig,
    /// `cookie`, rendered once.
    cookie_writer: CookieWriter,
    timeouts: Timeouts,
    clock: Arc<dyn Clock>,
    events: Option<EventHandler>,
    limit: Option<LimitRule>,
    renewal: Option<Renewal>,
    proxies: TrustedProxies,
    transport: Transport,
    https_only: bool,
    binding: Option<ClientBinding>,
    guessing: Option<Guard>,
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
                store: Arc::new(store),
                keyring: Keyring::new(key),
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
        self.config_mut()
            .keyring
            .set_fallbacks(keys.into_iter().collect());
        self
    }

    /// Limits how many live sessions one user may have. Default: no limit.
    ///
    /// Checked on [`Session::login`], atomically per user in the store, so
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

    /// A handle to list and revoke sessions from outside a request (an
    /// admin endpoint, a background task). See [`SessionAdmin`].
    #[must_use]
    pub fn sessions(&self) -> SessionAdmin {
        SessionAdmin::new(
            Arc::clone(&self.config.store),
            Arc::clone(&self.config.clock),
            self.config.events.clone(),
        )
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
        SessionService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`SessionLayer`].
///
/// It works with any request body and any response body that implements
/// `Default` (the body of the layer's own `503`, `409`, `429` and `401`
/// answers). axum's `Router::layer` converts bodies for you; with a bare
/// `ServiceBuilder`, a layer whose response body has no `Default` (such as
/// tower-http's `TraceLayer`) goes outside the session layer, or its body is
/// mapped first.
///
/// What the handler wrote is committed whatever the response status. A
/// timeout placed *inside* the session layer still lets the writes made
/// before it fired be saved; place timeouts outside the session layer when
/// a timed-out request must leave the session untouched.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> SessionService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was driven to readiness is the one that must be
        // called; keep a fresh clone for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            future: Box::pin(handle(Arc::clone(&self.config), inner, request)),
        }
    }
}

/// The response future of [`SessionService`].
///
/// It is boxed: the request awaits the store twice around the inner
/// service, and the store futures are already boxed trait-object futures,
/// so a hand-written state machine would save one allocation at the cost
/// of a great deal of `unsafe`-adjacent pinning code.
pub struct ResponseFuture<ResBody, E> {
    future: Pin<Box<dyn Future<Output = Result<Response<ResBody>, E>> + Send>>,
}

impl<ResBody, E> Future for ResponseFuture<ResBody, E> {
    type Output = Result<Response<ResBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<ResBody, E> fmt::Debug for ResponseFuture<ResBody, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The session a request arrived with, once validated.
struct Loaded {
    id: SessionId,
    record: Arc<SessionRecord>,
    touch: Option<Touch>,
    /// A new client-binding state to store.
    binding: Option<Box<Binding>>,
    /// Signed with a fallback key: re-issue with the primary.
    resign: bool,
    /// The id was issued by this request (a renewal): send it.
    issued: bool,
}

/// The events of one request, built only when someone listens: events
/// carry fingerprints, and a fingerprint costs two SHA-256 runs.
struct Events {
    enabled: bool,
    list: Vec<SessionEvent>,
}

impl Events {
    fn new(config: &Config) -> Self {
        Self {
            enabled: config.events.is_some() || event::tracing_enabled(),
            list: Vec::new(),
        }
    }

    fn push(&mut self, event: impl FnOnce() -> SessionEvent) {
        if self.enabled {
            self.list.push(event());
        }
    }
}

/// What the layer learns about one request on its way through.
struct Visit {
    now: UnixMillis,
    client: ClientContext,
    /// The client's network as the guessing detector groups it.
    network: Option<Network>,
    events: Events,
    /// The token named an id replaced moments ago.
    superseded: bool,
    /// Client binding rejected the session and wants a 401.
    respond_unauthorized: bool,
    /// The authentic id the request carried, if any.
    arrived_as: Option<SessionId>,
}

impl Visit {
    fn reject(&mut self, id: Option<&SessionId>, reason: RejectReason) {
        let network = self.event_network();
        self.events.push(|| SessionEvent::Rejected {
            session: id.map(SessionId::fingerprint),
            reason,
            network,
        });
    }

    fn event_network(&self) -> Option<Network> {
        self.client.ip.map(|ip| Network::of(ip, 24, 48))
    }

    /// Counts a token that named no live session; may raise the alarm.
    fn guess_failed(&mut self, config: &Config) {
        let (Some(guard), Some(network)) = (&config.guessing, self.network) else {
            return;
        };
        if let Some(alarm) = guard.failure(network, self.now) {
            self.events.push(|| SessionEvent::GuessingDetected {
                network,
                failures: alarm.failures,
            });
        }
    }
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    // The User-Agent family is worked out up front only when binding needs it.
    let client = if config.binding.is_some() {
        ClientContext::from_request_with(&request, &config.proxies)
    } else {
        ClientContext::without_user_agent(&request, &config.proxies)
    };
    let network = config
        .guessing
        .as_ref()
        .zip(client.ip)
        .map(|(guard, ip)| guard.settings().network_of(ip));
    let mut visit = Visit {
        now: config.clock.now(),
        client,
        network,
        events: Events::new(&config),
        superseded: false,
        respond_unauthorized: false,
        arrived_as: None,
    };
    // Cookies only travel over HTTPS when the layer is HTTPS-only.
    let cookies_allowed = !config.https_only || visit.client.https;

    // Steps 1–2: the token and its signature.
    let (token, carrier) = config
        .transport
        .read(request.headers(), &config.cookie_writer);
    let had_token = !token.is_absent();
    if had_token {
        if let (Some(guard), Some(network)) = (&config.guessing, visit.network) {
            if let Some(retry_after) = guard.blocked(&network, visit.now) {
                return Ok(too_many_requests(retry_after));
            }
        }
    }
    let verified = match token {
        TokenRead::Absent => None,
        _ if !cookies_allowed => {
            visit.reject(None, RejectReason::InsecureTransport);
            None
        }
        TokenRead::Ambiguous => {
            visit.reject(None, RejectReason::AmbiguousToken);
            None
        }
        TokenRead::Present(text) => {
            let verified = config.keyring.verify(text);
            if verified.is_none() {
                visit.reject(None, RejectReason::InvalidToken);
                visit.guess_failed(&config);
            }
            visit.arrived_as = verified.as_ref().map(|v| v.id.clone());
            verified
        }
    };

    // Steps 3–5: the record and the policy's verdict.
    let loaded = match verified {
        None => None,
        // Boxed, like the commit below: their states are larger than the
        // rest of the request's, which would otherwise carry room for them.
        Some(verified) => match Box::pin(load(
            &config,
            verified.id,
            verified.needs_resign,
            &mut visit,
        ))
        .await
        {
            Ok(loaded) => loaded,
            Err(err) => {
                tracing::error!(
                    target: "tower_session_guard",
                    error = %err,
                    "session store failed while loading a session; answering 503"
                );
                emit_all(&config, &visit.events.list);
                return Ok(unavailable());
            }
        },
    };
    if visit.respond_unauthorized {
        let mut response = status_only(StatusCode::UNAUTHORIZED);
        config
            .transport
            .remove(response.headers_mut(), carrier, &config.cookie_writer);
        emit_all(&config, &visit.events.list);
        return Ok(response);
    }

    // Step 6: the handler's session.
    let now = visit.now;
    let deadlines = policy::fresh_deadlines(now, &config.timeouts);
    let arrival = Arrival {
        touch: loaded.as_ref().and_then(|l| l.touch),
        binding: loaded.as_ref().and_then(|l| l.binding.clone()),
        resign: loaded.as_ref().is_some_and(|l| l.resign || l.issued),
        superseded: visit.superseded,
    };
    // What a session created by this request would start as.
    let template = session::Template {
        deadlines,
        user_agent_header: if visit.client.user_agent.is_none() {
            request.headers().get(http::header::USER_AGENT).cloned()
        } else {
            None
        },
        // The client is not needed past this point but by the template.
        client: std::mem::take(&mut visit.client),
        binding: config.binding.clone(),
    };
    let context = session::Context {
        store: Arc::clone(&config.store),
        limit: config.limit.clone(),
        template,
        login_allowed: cookies_allowed,
    };
    let session = Session::new(context, loaded.map(|l| (l.id, l.record)));
    request.extensions_mut().insert(session.clone());
    let mut response = inner.call(request).await?;

    // Steps 7–8: commit and answer with the token.
    let state = session.take_state();
    let logged_out = state.logged_out;
    let outcome = if cookies_allowed {
        Box::pin(commit(
            &config,
            state,
            arrival,
            now,
            session.template(),
            &mut visit.events,
        ))
        .await
    } else {
        // Over plain HTTP nothing can be handed to the client, so nothing
        // new is stored (a login was already refused).
        Ok(Outcome::Keep)
    };
    match outcome {
        Ok(Outcome::Issue {
            id,
            absolute_deadline,
        }) => {
            let token = config.keyring.sign(&id);
            let max_age = absolute_deadline.saturating_sub(now).div_ceil(1000);
            config.transport.issue(
                response.headers_mut(),
                carrier,
                &config.cookie_writer,
                &token,
                max_age,
            );
        }
        Ok(Outcome::Keep) => {}
        Ok(Outcome::Unsaved) => {
            tracing::warn!(
                target: "tower_session_guard",
                "the session was destroyed or replaced while the request ran; answering 409 instead of \
                 the handler's response because its writes could not be saved"
            );
            response = conflict();
        }
        Ok(Outcome::NoSession) => {
            if (had_token || logged_out)
                && config
                    .transport
                    .remove(response.headers_mut(), carrier, &config.cookie_writer)
            {
                let arrived_as = visit.arrived_as.as_ref();
                visit.events.push(|| SessionEvent::TokenRemoved {
                    session: arrived_as.map(SessionId::fingerprint),
                });
            }
        }
        Err(err) => {
            tracing::error!(
                target: "tower_session_guard",
                error = %err,
                "session store failed while saving a session; answering 503 instead of the handler's response"
            );
            response = unavailable();
        }
    }

    // Step 9: events.
    emit_all(&config, &visit.events.list);
    Ok(response)
}

/// Loads the record for a verified id, follows a renewal's forwarding
/// entry, applies the policy (timeouts, client binding) and renews the id
/// when it is due.
async fn load(
    config: &Config,
    id: SessionId,
    resign: bool,
    visit: &mut Visit,
) -> Result<Option<Loaded>, StoreError> {
    let now = visit.now;
    // Two rounds at most: a renewal lost to a concurrent request is retried
    // once, through the forwarding entry the winner left.
    for _ in 0..2 {
        let (current, record, issued) = match lifecycle::load(&*config.store, &id, now).await? {
            Found::Session {
                id,
                record,
                forwarded,
            } => (id, record, forwarded),
            Found::Missing => {
                visit.reject(Some(&id), RejectReason::UnknownSession);
                visit.guess_failed(config);
                return Ok(None);
            }
            Found::InFlight => {
                // Replaced by a login or regeneration moments ago: this
                // request was in flight. No session, but the client's cookie
                // (by now probably the new one) is left alone.
                visit.superseded = true;
                visit.reject(Some(&id), RejectReason::UnknownSession);
                return Ok(None);
            }
            Found::Gone => {
                visit.reject(Some(&id), RejectReason::UnknownSession);
                return Ok(None);
            }
        };
        let touch = match policy::evaluate(&record, now, &config.timeouts) {
            Verdict::Valid { touch } => touch,
            Verdict::Expired(reason) => {
                Box::pin(destroy(config, &current, &record, "an expired session")).await;
                let network = visit.event_network();
                visit.events.push(|| SessionEvent::Expired {
                    session: current.fingerprint(),
                    reason,
                    network,
                });
                return Ok(None);
            }
        };
        let binding = match &config.binding {
            None => None,
            Some(rules) => {
                let location = rules.locate(visit.client.ip);
                match policy::check_binding(
                    record.binding.as_deref(),
                    &visit.client,
                    location.as_ref(),
                    now,
                    rules,
                ) {
                    BindingVerdict::Accept(update) => update.map(Box::new),
                    BindingVerdict::Reject(reason) => {
                        Box::pin(destroy(config, &current, &record, "a rejected session")).await;
                        visit.reject(Some(&current), reason);
                        visit.respond_unauthorized = rules.action() == RejectAction::Respond;
                        return Ok(None);
                    }
                }
            }
        };
        if issued || !policy::renewal_due(&record, now, config.renewal.as_ref()) {
            return Ok(Some(Loaded {
                id: current,
                record,
                touch,
                binding,
                resign,
                issued,
            }));
        }
        // Boxed, like the other rare steps: the common path's future
        // would otherwise carry room for theirs.
        if let Some(renewed) = Box::pin(renew(config, &current, touch, binding, visit)).await? {
            return Ok(Some(renewed));
        }
    }
    visit.reject(Some(&id), RejectReason::UnknownSession);
    Ok(None)
}

/// Gives the session a new id, leaving a forwarding entry for the grace
/// period. `None` when a concurrent request renewed it first.
async fn renew(
    config: &Config,
    id: &SessionId,
    touch: Option<Touch>,
    binding: Option<Box<Binding>>,
    visit: &mut Visit,
) -> Result<Option<Loaded>, StoreError> {
    let Some(renewal) = config.renewal else {
        return Ok(None);
    };
    let now = visit.now;
    let change = Change {
        touch,
        binding: binding.map(|b| *b),
        ..Change::default()
    };
    let Some((new_id, record)) =
        lifecycle::regenerate(&*config.store, id, &change, now, Some(renewal.grace)).await?
    else {
        return Ok(None);
    };
    visit.events.push(|| SessionEvent::Renewed {
        session: new_id.fingerprint(),
        previous: id.fingerprint(),
    });
    Ok(Some(Loaded {
        id: new_id,
        record,
        touch: None,
        binding: None,
        resign: false,
        issued: true,
    }))
}

/// Deletes a session the policy refused. The policy refuses it whatever
/// happens here, so a store failure is logged, not fatal.
async fn destroy(config: &Config, id: &SessionId, record: &SessionRecord, what: &str) {
    let removed = lifecycle::logout(&*config.store, &id.hash(), record.user_id.as_deref()).await;
    if let Err(err) = removed {
        tracing::error!(
            target: "tower_session_guard",
            session = %id.fingerprint(),
            error = %err,
            "could not delete {what}"
        );
    }
}

/// What the response must tell the client.
enum Outcome {
    /// Hand the client this id's token.
    Issue {
        id: SessionId,
        absolute_deadline: UnixMillis,
    },
    /// The client's token is still right.
    Keep,
    /// No session is stored for the client.
    NoSession,
    /// The request wrote to a session that another request destroyed or
    /// replaced meanwhile: the writes were not saved.
    Unsaved,
}

/// What the load step found out that the commit step needs.
struct Arrival {
    /// Activity to record.
    touch: Option<Touch>,
    /// A new client-binding state to record.
    binding: Option<Box<Binding>>,
    /// The client must be sent its (current) token again.
    resign: bool,
    /// The token named an id replaced moments ago.
    superseded: bool,
}

/// Step 7: applies what the request changed to the store.
async fn commit(
    config: &Config,
    state: State,
    arrival: Arrival,
    now: UnixMillis,
    template: &session::Template,
    events: &mut Events,
) -> Result<Outcome, StoreError> {
    for happening in state.happenings {
        events.push(|| match happening {
            Happening::Created { session } => SessionEvent::Created { session },
            Happening::LoggedIn {
                session,
                previous,
                user_id,
            } => SessionEvent::LoggedIn {
                session,
                previous,
                user_id,
            },
            Happening::LoggedOut { session, user_id } => {
                SessionEvent::LoggedOut { session, user_id }
            }
            Happening::Evicted { session, user_id } => SessionEvent::Evicted { session, user_id },
        });
    }

    let Some(id) = state.id else {
        if arrival.superseded && !state.logged_out {
            // In flight across a login: starting a new session here would
            // replace the client's new cookie.
            return Ok(if state.pending.has_values() {
                Outcome::Unsaved
            } else {
                Outcome::Keep
            });
        }
        if !state.pending.has_values() {
            return Ok(Outcome::NoSession);
        }
        // Lazy creation: only a session that holds something is stored.
        let record = template.record(IdHash::from_bytes([0; 32]), None, state.pending.into_data());
        let (id, record) = lifecycle::create(&*config.store, record).await?;
        events.push(|| SessionEvent::Created {
            session: id.fingerprint(),
        });
        return Ok(Outcome::Issue {
            id,
            absolute_deadline: record.absolute_deadline,
        });
    };

    let absolute_deadline = state
        .record
        .as_ref()
        .map_or(template.deadlines.absolute_deadline, |r| {
            r.absolute_deadline
        });
    let mut change = state.pending.into_change();
    let has_writes = !change.is_empty();
    change.touch = arrival.touch;
    change.binding = arrival.binding.map(|b| *b);

    if state.regenerate {
        let regenerated = Box::pin(lifecycle::regenerate(
            &*config.store,
            &id,
            &change,
            now,
            None,
        ));
        return match regenerated.await? {
            Some((new_id, record)) => {
                events.push(|| SessionEvent::Regenerated {
                    session: new_id.fingerprint(),
                    previous: id.fingerprint(),
                });
                Ok(Outcome::Issue {
                    id: new_id,
                    absolute_deadline: record.absolute_deadline,
                })
            }
            None => Ok(session_vanished(&id, has_writes)),
        };
    }

    if !change.is_empty() && !lifecycle::commit(&*config.store, &id.hash(), &change).await? {
        return Ok(session_vanished(&id, has_writes));
    }
    if state.id_issued || arrival.resign {
        Ok(Outcome::Issue {
            id,
            absolute_deadline,
        })
    } else {
        Ok(Outcome::Keep)
    }
}

/// The session was destroyed or replaced by another request (logout,
/// login, revocation, expiry) while this one ran. Writes cannot be saved
/// and must not pass as saved; a mere touch is moot. Either way the cookie
/// is left alone: the client may already hold a newer one.
fn session_vanished(id: &SessionId, has_writes: bool) -> Outcome {
    tracing::debug!(
        target: "tower_session_guard",
        session = %id.fingerprint(),
        "session was destroyed or replaced while the request ran"
    );
    if has_writes {
        Outcome::Unsaved
    } else {
        Outcome::Keep
    }
}

fn emit_all(config: &Config, events: &[SessionEvent]) {
    for event in events {
        event::emit(config.events.as_ref(), event);
    }
}

fn unavailable<B: Default>() -> Response<B> {
    status_only(StatusCode::SERVICE_UNAVAILABLE)
}

fn too_many_requests<B: Default>(retry_after_secs: u64) -> Response<B> {
    let mut response = status_only(StatusCode::TOO_MANY_REQUESTS);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    );
    response
}

fn conflict<B: Default>() -> Response<B> {
    status_only(StatusCode::CONFLICT)
}

fn status_only<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}
