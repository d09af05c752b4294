//! One request's way through the layer: arrive (steps 1–5), call the inner
//! service with the session (step 6), depart (step 7), answer (steps 8–9).
//!
//! Each step is a function of what the step before returned; events go to
//! one [`EventSink`], emitted once when the request is answered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use tower_service::Service;

use super::builder::Config;
use crate::client::{ClientContext, Network};
use crate::clock::UnixMillis;
use crate::event::{self, RejectReason, SessionEvent};
use crate::id::{IdHash, SessionId};
use crate::insights::End;
use crate::lifecycle::{self, Found};
use crate::policy::{
    self, BindingVerdict, Csrf, CsrfVerdict, Ending, Origin, Provenance, RejectAction, Verdict,
};
use crate::record::{Binding, Change, SessionRecord, Touch};
use crate::session::{self, Session, State};
use crate::sign_in::StampCheck;
use crate::store::StoreError;
use crate::transport::{Carrier, TokenRead};

pub(super) async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
{
    let mut sink = EventSink::new(&config);
    let answered = travel(&config, inner, request, &mut sink).await;
    sink.emit(&config);
    answered
}

async fn travel<S, ReqBody, ResBody>(
    config: &Config,
    mut inner: S,
    mut request: Request<ReqBody>,
    sink: &mut EventSink,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
{
    let arrived = match read(config, &request, sink) {
        Ok(reading) => find(config, reading, sink).await,
        Err(refusal) => Err(refusal),
    };
    let arrival = match arrived {
        Ok(arrival) => arrival,
        Err(refusal) => return Ok(refuse(config, refusal)),
    };
    let (session, departure) = hand_over(config, arrival, &mut request, sink.enabled);
    let response = inner.call(request).await?;
    let plan = depart(config, &session, &departure, sink).await;
    Ok(answer(config, plan, &departure, response, sink))
}

/// The events of one request, built only when someone listens: events
/// carry fingerprints, and a fingerprint costs two SHA-256 runs.
struct EventSink {
    enabled: bool,
    events: Vec<SessionEvent>,
}

impl EventSink {
    fn new(config: &Config) -> Self {
        Self {
            enabled: config.events.is_some() || event::tracing_enabled(),
            events: Vec::new(),
        }
    }

    fn push(&mut self, event: impl FnOnce() -> SessionEvent) {
        if self.enabled {
            self.events.push(event());
        }
    }

    fn emit(self, config: &Config) {
        for event in &self.events {
            event::emit(config.events.as_ref(), event);
        }
    }
}

/// What the layer knows about the request while it reads its token.
struct Visitor<'a> {
    config: &'a Config,
    now: UnixMillis,
    client: &'a ClientContext,
    /// The client's network as the guessing detector groups it.
    guessing_network: Option<Network>,
    sink: &'a mut EventSink,
}

impl<'a> Visitor<'a> {
    fn new(
        config: &'a Config,
        now: UnixMillis,
        client: &'a ClientContext,
        guessing_network: Option<Network>,
        sink: &'a mut EventSink,
    ) -> Self {
        Self {
            config,
            now,
            client,
            guessing_network,
            sink,
        }
    }

    fn reject(&mut self, id: Option<&SessionId>, reason: RejectReason) {
        self.config.observer.rejected(reason);
        let network = self.client.ip.map(Network::of_default);
        self.sink.push(|| SessionEvent::Rejected {
            session: id.map(SessionId::fingerprint),
            reason,
            network,
        });
    }

    /// Counts a token that named no live session; may raise the alarm.
    fn guess_failed(&mut self) {
        let (Some(guard), Some(network)) = (&self.config.guessing, self.guessing_network) else {
            return;
        };
        if let Some(alarm) = guard.failure(network, self.now) {
            self.config.observer.guessing_blocked();
            self.sink.push(|| SessionEvent::GuessingDetected {
                network,
                failures: alarm.failures,
            });
        }
    }
}

/// What arrived with the request, once its token was read and checked.
struct Arrival {
    now: UnixMillis,
    client: ClientContext,
    carrier: Carrier,
    tokens_allowed: bool,
    /// The request carried a token (any token, good or bad).
    had_token: bool,
    /// The authentic id the request carried, if any.
    arrived_as: Option<SessionId>,
    found: Token,
}

/// What the token led to.
enum Token {
    /// No session: no token, or one that led to nothing usable.
    None,
    /// An id replaced moments ago by a login or a regeneration: this
    /// request was in flight.
    InFlight,
    /// A session the policy rejected and destroyed.
    Destroyed,
    /// A valid session.
    Session(Loaded),
}

/// The session a request arrived with, once validated.
struct Loaded {
    id: SessionId,
    record: Arc<SessionRecord>,
    touch: Option<Touch>,
    /// A new client-binding state to store.
    binding: Option<Box<Binding>>,
    /// The client needs its token again: signed with a fallback key, or
    /// issued by this request (a renewal).
    resend: bool,
}

/// Why the request is answered by the layer without calling the handler.
enum Refusal {
    /// The CSRF rules refused the request.
    Forbidden { reason: RejectReason },
    /// A protection needs the client's address and the request has none.
    NoClientAddress,
    /// Too many bad tokens from this network.
    Blocked { retry_after: u64 },
    /// The store failed while loading the session.
    StoreFailed,
    /// Client binding refused the session and wants a `401`.
    Unauthorized { carrier: Carrier, https: bool },
}

/// What steps 1–3 read from the request.
struct Reading {
    now: UnixMillis,
    client: ClientContext,
    carrier: Carrier,
    tokens_allowed: bool,
    had_token: bool,
    guessing_network: Option<Network>,
    /// The authentic id the request carried, and whether its token must be
    /// signed again with the primary key.
    verified: Option<(SessionId, bool)>,
}

/// Steps 1–3: reads the token, verifies it, and notes the client.
fn read<ReqBody>(
    config: &Config,
    request: &Request<ReqBody>,
    sink: &mut EventSink,
) -> Result<Reading, Refusal> {
    // The User-Agent family is worked out up front only when binding needs it.
    let client = if config.binding.is_some() {
        ClientContext::from_request_with(request, &config.proxies)
    } else {
        ClientContext::without_user_agent(request, &config.proxies)
    };
    if client.ip.is_none() && (config.binding.is_some() || config.guessing.is_some()) {
        client_address_missing(config, sink)?;
    }
    let now = config.clock.now();
    config.observer.request(now, &*config.store);
    let tokens_allowed = policy::tokens_allowed(config.https_only, client.https);
    let (token, carrier) = config
        .transport
        .read(request.headers(), &config.cookie_writer);
    let had_token = !token.is_absent();
    let guessing_network = config
        .guessing
        .as_ref()
        .zip(client.ip)
        .map(|(guard, ip)| guard.settings().network_of(ip));
    if let (true, Some(guard), Some(network)) = (had_token, &config.guessing, guessing_network) {
        if let Some(retry_after) = guard.blocked(&network, now) {
            return Err(Refusal::Blocked { retry_after });
        }
    }
    let mut visitor = Visitor::new(config, now, &client, guessing_network, sink);
    let verified = match token {
        TokenRead::Absent => None,
        _ if !tokens_allowed => {
            visitor.reject(None, RejectReason::InsecureTransport);
            None
        }
        TokenRead::Ambiguous => {
            visitor.reject(None, RejectReason::AmbiguousToken);
            None
        }
        TokenRead::Present(text) => {
            let verified = config.keyring.verify(text);
            if verified.is_none() {
                visitor.reject(None, RejectReason::InvalidToken);
                visitor.guess_failed();
            }
            verified.map(|v| (v.id, v.needs_resign))
        }
    };
    if let Some(csrf) = &config.csrf {
        let id = verified.as_ref().map(|(id, _)| id);
        if let Err(reason) = check_csrf(config, csrf, request, client.https, carrier, id) {
            visitor.reject(id, reason);
            return Err(Refusal::Forbidden { reason });
        }
    }
    Ok(Reading {
        now,
        client,
        carrier,
        tokens_allowed,
        had_token,
        guessing_network,
        verified,
    })
}

/// Why client binding and guessing detection cannot work, and the fix
/// (a macro so the log line and the answer's body share one sentence).
macro_rules! no_client_address {
    () => {
        "client binding and guessing detection need the client's address, but the request carries none: \
         serve the app with `into_make_service_with_connect_info::<SocketAddr>()` (axum), or declare the proxy \
         in front with `with_trusted_proxies`"
    };
}

const NO_CLIENT_ADDRESS: &str = no_client_address!();

/// The fail-closed answer's body.
const NO_CLIENT_ADDRESS_ANSWER: &str = concat!(
    "500 Internal Server Error: tower-session-guard: ",
    no_client_address!()
);

/// Says, once per layer and loudly, that a protection is not working;
/// refuses the request when the layer fails closed.
fn client_address_missing(config: &Config, sink: &mut EventSink) -> Result<(), Refusal> {
    if !config.missing_address_logged.swap(true, Ordering::Relaxed) {
        tracing::error!(target: "tower_session_guard", "{NO_CLIENT_ADDRESS}");
    }
    sink.push(|| SessionEvent::ClientAddressMissing);
    if config.client_address_required {
        return Err(Refusal::NoClientAddress);
    }
    Ok(())
}

/// Refuses an unsafe request from another site, or one without the
/// session's CSRF token when the layer requires it in a header. Runs
/// before the session is loaded, so a refused request renews nothing.
fn check_csrf<ReqBody>(
    config: &Config,
    csrf: &Csrf,
    request: &Request<ReqBody>,
    https: bool,
    carrier: Carrier,
    session: Option<&SessionId>,
) -> Result<(), RejectReason> {
    let headers = request.headers();
    let verdict = policy::csrf_verdict(
        csrf,
        policy::is_unsafe_method(request.method()),
        carrier == Carrier::Header,
        session.is_some(),
        || {
            let provenance = Provenance {
                fetch_site: header_text(headers, "sec-fetch-site"),
                origin: header_text(headers, http::header::ORIGIN.as_str()),
                referer: header_text(headers, http::header::REFERER.as_str()),
            };
            let host = header_text(headers, http::header::HOST.as_str())
                .or_else(|| request.uri().authority().map(http::uri::Authority::as_str));
            let own = host.and_then(|host| Origin::of_request(https, host));
            policy::is_cross_site(&provenance, own.as_ref(), csrf.allowed_origins())
        },
    );
    match verdict {
        CsrfVerdict::Exempt | CsrfVerdict::Pass => Ok(()),
        CsrfVerdict::CrossSite => Err(RejectReason::CrossSiteRequest),
        CsrfVerdict::NeedsHeaderToken => {
            let token = header_text(headers, csrf.token_header().as_str());
            match session.zip(token) {
                Some((id, token)) if config.keyring.verify_csrf(id, token) => Ok(()),
                _ => Err(RejectReason::CsrfTokenMismatch),
            }
        }
    }
}

/// A header's first value as text; a value that is not UTF-8 is present
/// but names nothing (`""`).
fn header_text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.to_str().unwrap_or(""))
}

/// Steps 4–5: loads the session the token names and asks the policy about it.
async fn find(config: &Config, reading: Reading, sink: &mut EventSink) -> Result<Arrival, Refusal> {
    let Reading {
        now,
        client,
        carrier,
        tokens_allowed,
        had_token,
        guessing_network,
        verified,
    } = reading;
    let arrived_as = verified.as_ref().map(|(id, _)| id.clone());
    let found = match verified {
        None => Token::None,
        Some((id, resign)) => {
            let mut visitor = Visitor::new(config, now, &client, guessing_network, sink);
            // Boxed: its state is larger than the rest of the request's,
            // which would otherwise carry room for it.
            match Box::pin(load(&mut visitor, id, resign)).await {
                Ok(Loading::Done(found)) => found,
                Ok(Loading::Unauthorized) => {
                    return Err(Refusal::Unauthorized {
                        carrier,
                        https: client.https,
                    })
                }
                Ok(Loading::StampFailed) => return Err(Refusal::StoreFailed),
                Err(err) => {
                    tracing::error!(
                        target: "tower_session_guard",
                        error = %err,
                        "session store failed while loading a session; answering 503"
                    );
                    return Err(Refusal::StoreFailed);
                }
            }
        }
    };
    Ok(Arrival {
        now,
        client,
        carrier,
        tokens_allowed,
        had_token,
        arrived_as,
        found,
    })
}

/// What loading a verified id came to.
enum Loading {
    Done(Token),
    /// Client binding refused the session and wants a `401`.
    Unauthorized,
    /// The credential-stamp lookup failed: the session can be neither
    /// accepted nor ended.
    StampFailed,
}

/// Loads the session a verified id names (through a renewal's forward),
/// applies the policy (timeouts, client binding) and renews the id when
/// it is due.
async fn load(
    visitor: &mut Visitor<'_>,
    id: SessionId,
    resign: bool,
) -> Result<Loading, StoreError> {
    let config = visitor.config;
    let now = visitor.now;
    // Two rounds at most: a renewal lost to a concurrent request is retried
    // once, through the forward the winner left.
    for round in 0..2 {
        let (current, record, forwarded) = match lifecycle::load(&*config.store, &id, now).await? {
            Found::Session {
                id,
                record,
                forwarded,
            } => (id, record, forwarded),
            Found::Missing => {
                visitor.reject(Some(&id), RejectReason::UnknownSession);
                // The second round follows a renewal this request lost:
                // the id was real, whatever removed it since.
                if round == 0 {
                    visitor.guess_failed();
                }
                return Ok(Loading::Done(Token::None));
            }
            Found::InFlight => {
                visitor.reject(Some(&id), RejectReason::UnknownSession);
                return Ok(Loading::Done(Token::InFlight));
            }
            Found::Gone => {
                visitor.reject(Some(&id), RejectReason::UnknownSession);
                return Ok(Loading::Done(Token::None));
            }
            Found::Reused { successor } => {
                Box::pin(reused(visitor, &id, successor)).await;
                return Ok(Loading::Done(Token::None));
            }
        };
        let touch = match policy::evaluate(&record, now, &config.timeouts) {
            Verdict::Valid { touch } => {
                // The second round reloads the same return.
                if round == 0 {
                    config.observer.returned(&record, now);
                }
                touch
            }
            Verdict::Expired(reason) => {
                // Counted by the request that removed it, once.
                if Box::pin(destroy(config, &current, &record, "an expired session"))
                    .await
                    .is_some()
                {
                    config.observer.ended(End::Expired(reason), &record, now);
                }
                let network = visitor.client.ip.map(Network::of_default);
                visitor.sink.push(|| SessionEvent::Expired {
                    session: current.fingerprint(),
                    reason,
                    network,
                });
                return Ok(Loading::Done(Token::None));
            }
        };
        let binding = match &config.binding {
            None => None,
            Some(rules) => {
                let client = visitor.client;
                let location = rules.locate(client.ip);
                match policy::check_binding(
                    record.binding.as_deref(),
                    client,
                    location.as_ref(),
                    now,
                    rules,
                ) {
                    BindingVerdict::Accept(update) => update.map(Box::new),
                    BindingVerdict::Reject(reason) => {
                        if Box::pin(destroy(config, &current, &record, "a rejected session"))
                            .await
                            .is_some()
                        {
                            config.observer.ended(End::Rejected, &record, now);
                        }
                        visitor.reject(Some(&current), reason);
                        return Ok(match rules.action() {
                            RejectAction::Respond => Loading::Unauthorized,
                            _ => Loading::Done(Token::Destroyed),
                        });
                    }
                }
            }
        };
        if let (Some(stamp), Some(user)) = (&config.stamp, record.user_id.as_deref()) {
            let stored = record.sign_in.as_ref().and_then(|s| s.stamp.as_ref());
            let checked = stamp.check(&config.keyring, current.hash(), user, stored, now);
            match Box::pin(checked).await {
                StampCheck::Current => {}
                StampCheck::Changed => {
                    let removed = Box::pin(destroy(
                        config,
                        &current,
                        &record,
                        "a session whose credentials changed",
                    ))
                    .await;
                    if removed.is_some() {
                        config.observer.ended(End::Rejected, &record, now);
                    }
                    visitor.reject(Some(&current), RejectReason::CredentialsChanged);
                    return Ok(Loading::Done(Token::Destroyed));
                }
                StampCheck::Failed(err) => {
                    tracing::error!(
                        target: "tower_session_guard",
                        session = %current.fingerprint(),
                        error = %err,
                        "the user stamp lookup failed; answering 503"
                    );
                    return Ok(Loading::StampFailed);
                }
            }
        }
        if forwarded || !policy::renewal_due(&record, now, config.renewal.as_ref()) {
            return Ok(Loading::Done(Token::Session(Loaded {
                id: current,
                record,
                touch,
                binding,
                resend: resign || forwarded,
            })));
        }
        // Boxed, like the other rare steps: the common path's future would
        // otherwise carry room for theirs.
        if let Some(renewed) = Box::pin(renew(visitor, &current, touch, binding)).await? {
            return Ok(Loading::Done(Token::Session(renewed)));
        }
    }
    visitor.reject(Some(&id), RejectReason::UnknownSession);
    Ok(Loading::Done(Token::None))
}

/// Gives the session a new id, leaving a forward for the grace period.
/// `None` when a concurrent request renewed it first.
async fn renew(
    visitor: &mut Visitor<'_>,
    id: &SessionId,
    touch: Option<Touch>,
    binding: Option<Box<Binding>>,
) -> Result<Option<Loaded>, StoreError> {
    let config = visitor.config;
    let Some(renewal) = config.renewal else {
        return Ok(None);
    };
    // The activity is recorded at commit, unless the request is passive.
    let change = Change {
        binding: binding.map(|b| *b),
        ..Change::default()
    };
    let renewed = lifecycle::renew(
        &*config.store,
        id,
        &change,
        visitor.now,
        renewal.grace,
        renewal.every,
    )
    .await?;
    let Some((new_id, record)) = renewed else {
        return Ok(None);
    };
    config.observer.renewed();
    visitor.sink.push(|| SessionEvent::Renewed {
        session: new_id.fingerprint(),
        previous: id.fingerprint(),
    });
    Ok(Some(Loaded {
        id: new_id,
        record,
        touch,
        binding: None,
        resend: true,
    }))
}

/// A renewed id came back after its grace: reports it and, when the layer
/// says so, ends the session it was renewed into. A store failure here is
/// logged: the request is refused its session either way.
async fn reused(visitor: &mut Visitor<'_>, id: &SessionId, successor: IdHash) {
    let config = visitor.config;
    config.observer.token_reused();
    let mut revoked = false;
    if config.revoke_on_reuse {
        match lifecycle::revoke(&*config.store, &successor).await {
            Ok(removed) => {
                if let Some(removed) = removed {
                    config.observer.ended(End::Revoked, &removed, visitor.now);
                    revoked = true;
                }
            }
            Err(err) => tracing::error!(
                target: "tower_session_guard",
                session = %successor.fingerprint(),
                error = %err,
                "could not end a session whose renewed token was reused"
            ),
        }
    }
    let network = visitor.client.ip.map(Network::of_default);
    visitor.sink.push(|| SessionEvent::ReusedAfterRenewal {
        session: id.fingerprint(),
        successor: successor.fingerprint(),
        successor_revoked: revoked,
        network,
    });
}

/// Deletes a session the policy refused. The policy refuses it whatever
/// happens here, so a store failure is logged, not fatal.
async fn destroy(
    config: &Config,
    id: &SessionId,
    record: &SessionRecord,
    what: &str,
) -> Option<Arc<SessionRecord>> {
    match lifecycle::logout(&*config.store, &id.hash(), record.user_id.as_deref()).await {
        Ok(removed) => removed,
        Err(err) => {
            tracing::error!(
                target: "tower_session_guard",
                session = %id.fingerprint(),
                error = %err,
                "could not delete {what}"
            );
            None
        }
    }
}

/// What the answer needs to know of how the request arrived.
struct Departure {
    now: UnixMillis,
    https: bool,
    /// The policy rejected and destroyed the session the request came with.
    destroyed: bool,
    carrier: Carrier,
    tokens_allowed: bool,
    had_token: bool,
    arrived_as: Option<SessionId>,
    in_flight: bool,
    binding: Option<Box<Binding>>,
    resend: bool,
}

/// Step 6: the handler's [`Session`], in the request's extensions.
fn hand_over<ReqBody>(
    config: &Config,
    arrival: Arrival,
    request: &mut Request<ReqBody>,
    events_enabled: bool,
) -> (Session, Departure) {
    let Arrival {
        now,
        client,
        carrier,
        tokens_allowed,
        had_token,
        arrived_as,
        found,
    } = arrival;
    let destroyed = matches!(found, Token::Destroyed);
    let (loaded, in_flight) = match found {
        Token::Session(loaded) => (Some(loaded), false),
        Token::InFlight => (None, true),
        Token::None | Token::Destroyed => (None, false),
    };
    let departure = Departure {
        now,
        https: client.https,
        destroyed,
        carrier,
        tokens_allowed,
        had_token,
        arrived_as: arrived_as.clone(),
        in_flight,
        binding: loaded.as_ref().and_then(|l| l.binding.clone()),
        resend: loaded.as_ref().is_some_and(|l| l.resend),
    };
    // What a session created by this request would start as.
    let template = session::Template {
        deadlines: policy::fresh_deadlines(now, &config.timeouts),
        timeouts: config.timeouts,
        user_agent_header: if client.user_agent.is_none() {
            request.headers().get(http::header::USER_AGENT).cloned()
        } else {
            None
        },
        client,
        binding: config.binding.clone(),
    };
    let context = session::Context {
        store: Arc::clone(&config.store),
        limit: config.limit.clone(),
        template,
        login_allowed: tokens_allowed,
        events_enabled,
        keyring: Arc::clone(&config.keyring),
        arrived_as,
        stamp: config.stamp.clone(),
        sign_in_page: config.sign_in_page.clone(),
        observer: Arc::clone(&config.observer),
    };
    let (loaded, touch) = match loaded {
        Some(l) => (Some((l.id, l.record)), l.touch),
        None => (None, None),
    };
    let session = Session::new(context, loaded, touch);
    request.extensions_mut().insert(session.clone());
    (session, departure)
}

/// What the response tells the client.
enum Plan {
    /// Hand the client this id's token.
    Issue {
        id: SessionId,
        absolute_deadline: UnixMillis,
        /// The session's own sign-in asks for a persistent cookie.
        persistent: bool,
    },
    /// Leave the client's token alone.
    Keep,
    /// Tell the client to drop its token.
    Clear,
    /// Tell the client to drop its token: its session was ended (logout,
    /// or rejected by the policy), so `Clear-Site-Data` goes too.
    SignOut,
    /// The request's writes could not be saved.
    Unsaved,
    /// The store failed while saving.
    Unavailable,
}

/// Step 7: commits what the request changed.
async fn depart(
    config: &Config,
    session: &Session,
    departure: &Departure,
    sink: &mut EventSink,
) -> Plan {
    let mut state = session.take_state();
    sink.events.append(&mut state.events);
    let ended = state.logged_out || departure.destroyed;
    if !departure.tokens_allowed {
        // Over plain HTTP nothing can be handed to the client, so nothing
        // new is stored (a login was already refused).
        return Plan::Keep;
    }
    // Boxed, like the load: its state is larger than the rest of the request's.
    match Box::pin(commit(config, state, departure, session.template(), sink)).await {
        Ok(Plan::Clear) if ended => Plan::SignOut,
        Ok(plan) => plan,
        Err(err) => {
            tracing::error!(
                target: "tower_session_guard",
                error = %err,
                "session store failed while saving a session; answering 503 instead of the handler's response"
            );
            Plan::Unavailable
        }
    }
}

/// Applies the request's changes to the store and says what the client
/// must be told.
async fn commit(
    config: &Config,
    state: State,
    departure: &Departure,
    template: &session::Template,
    sink: &mut EventSink,
) -> Result<Plan, StoreError> {
    let now = departure.now;
    let Some(id) = state.id else {
        // A page that was handed a CSRF token needs the session it names.
        let has_writes = state.pending.has_values() || state.planned_id.is_some();
        let ending = policy::without_session(
            has_writes,
            departure.in_flight,
            state.logged_out,
            departure.had_token,
        );
        if ending != Ending::Create {
            return Ok(plan_for(ending));
        }
        let record = template.record(IdHash::from_bytes([0; 32]), None, state.pending.into_data());
        let (id, record) = lifecycle::create_as(&*config.store, record, state.planned_id).await?;
        config.observer.created();
        sink.push(|| SessionEvent::Created {
            session: id.fingerprint(),
        });
        return Ok(Plan::Issue {
            id,
            absolute_deadline: record.absolute_deadline,
            persistent: false,
        });
    };

    let absolute_deadline = state
        .record
        .as_ref()
        .map_or(template.deadlines.absolute_deadline, |r| {
            r.absolute_deadline
        });
    let persistent = state
        .record
        .as_ref()
        .and_then(|r| r.sign_in.as_ref())
        .is_some_and(|s| s.persistent);
    let mut change = state.pending.into_change();
    let has_writes = !change.is_empty();
    change.touch = if state.passive { None } else { state.touch };
    change.binding = departure.binding.as_deref().cloned();

    if state.regenerate {
        let regenerated = Box::pin(lifecycle::regenerate(
            &*config.store,
            &id,
            &change,
            now,
            None,
        ));
        return Ok(match regenerated.await? {
            Some((new_id, record)) => {
                config.observer.regenerated();
                sink.push(|| SessionEvent::Regenerated {
                    session: new_id.fingerprint(),
                    previous: id.fingerprint(),
                });
                Plan::Issue {
                    id: new_id,
                    absolute_deadline: record.absolute_deadline,
                    persistent,
                }
            }
            None => lost(&id, has_writes),
        });
    }

    if !change.is_empty() && !lifecycle::commit(&*config.store, &id.hash(), &change).await? {
        return Ok(lost(&id, has_writes));
    }
    Ok(if state.id_issued || departure.resend {
        Plan::Issue {
            id,
            absolute_deadline,
            persistent,
        }
    } else {
        Plan::Keep
    })
}

/// The session was destroyed or replaced by another request while this
/// one ran.
fn lost(id: &SessionId, has_writes: bool) -> Plan {
    tracing::debug!(
        target: "tower_session_guard",
        session = %id.fingerprint(),
        "session was destroyed or replaced while the request ran"
    );
    plan_for(policy::session_lost(has_writes))
}

fn plan_for(ending: Ending) -> Plan {
    match ending {
        // `without_session` decides creation; the caller creates.
        Ending::Create | Ending::Keep => Plan::Keep,
        Ending::Clear => Plan::Clear,
        Ending::Unsaved => Plan::Unsaved,
    }
}

/// Steps 8–9: the token (or its removal) on the handler's response, or
/// the layer's own answer.
fn answer<ResBody: Default>(
    config: &Config,
    plan: Plan,
    departure: &Departure,
    mut response: Response<ResBody>,
    sink: &mut EventSink,
) -> Response<ResBody> {
    match plan {
        Plan::Issue {
            id,
            absolute_deadline,
            persistent,
        } => {
            let token = config.keyring.sign(&id);
            let max_age = absolute_deadline
                .saturating_sub(departure.now)
                .div_ceil(1000);
            config.transport.issue(
                response.headers_mut(),
                departure.carrier,
                &config.cookie_writer,
                &token,
                max_age,
                persistent,
            );
            response
        }
        Plan::Keep => response,
        Plan::Clear | Plan::SignOut => {
            if matches!(plan, Plan::SignOut) {
                clear_site_data(config, departure.https, &mut response);
            }
            let removed = config.transport.remove(
                response.headers_mut(),
                departure.carrier,
                &config.cookie_writer,
            );
            if removed {
                let arrived_as = departure.arrived_as.as_ref();
                sink.push(|| SessionEvent::TokenRemoved {
                    session: arrived_as.map(SessionId::fingerprint),
                });
            }
            response
        }
        Plan::Unsaved => {
            tracing::warn!(
                target: "tower_session_guard",
                "the session was destroyed or replaced while the request ran; answering 409 instead of \
                 the handler's response because its writes could not be saved"
            );
            status_only(StatusCode::CONFLICT)
        }
        Plan::Unavailable => status_only(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// The layer's own answer to a request it does not pass on.
fn refuse<ResBody: Default + 'static>(config: &Config, refusal: Refusal) -> Response<ResBody> {
    match refusal {
        Refusal::NoClientAddress => {
            with_text(StatusCode::INTERNAL_SERVER_ERROR, NO_CLIENT_ADDRESS_ANSWER)
        }
        Refusal::Forbidden { reason } => {
            let why = match reason {
                RejectReason::CsrfTokenMismatch => {
                    "403 Forbidden: this request lacks the session's CSRF token (or carries a wrong one); \
                     reload the page and try again"
                }
                _ => "403 Forbidden: cross-site request refused; send it from a page of this site",
            };
            with_text(StatusCode::FORBIDDEN, why)
        }
        Refusal::Blocked { retry_after } => {
            let mut response = status_only(StatusCode::TOO_MANY_REQUESTS);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        Refusal::StoreFailed => status_only(StatusCode::SERVICE_UNAVAILABLE),
        Refusal::Unauthorized { carrier, https } => {
            let mut response = status_only(StatusCode::UNAUTHORIZED);
            clear_site_data(config, https, &mut response);
            config
                .transport
                .remove(response.headers_mut(), carrier, &config.cookie_writer);
            response
        }
    }
}

/// Adds `Clear-Site-Data` when configured; over HTTPS only, where
/// browsers honour it.
fn clear_site_data<B>(config: &Config, https: bool, response: &mut Response<B>) {
    if let (Some(value), true) = (&config.clear_site_data, https) {
        response.headers_mut().insert(
            http::header::HeaderName::from_static("clear-site-data"),
            value.clone(),
        );
    }
}

/// The layer's own answer with a body that says why, when the response
/// body type is one the layer can write text into (axum's `Body`, with the
/// `axum` feature); any other body type (the service accepts every body
/// that has a `Default`) gets the status alone.
fn with_text<B: Default + 'static>(status: StatusCode, text: &'static str) -> Response<B> {
    let mut response = status_only::<B>(status);
    #[cfg(feature = "axum")]
    {
        let body: Box<dyn std::any::Any> = Box::new(axum_core::body::Body::from(text));
        if let Ok(body) = body.downcast::<B>() {
            *response.body_mut() = *body;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
    }
    #[cfg(not(feature = "axum"))]
    let _ = text;
    response
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
