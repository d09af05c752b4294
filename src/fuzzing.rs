//! The checks the fuzz targets in `fuzz/` run on each input, and that
//! `tests/fuzz_corpus.rs` replays on every file of the committed corpus.
//!
//! For fuzzing only (feature `fuzzing`): not part of the public API, and
//! free to change in any release.
//!
//! Each `pub fn` takes the fuzzer's bytes, feeds them to one parser, and
//! panics when the outcome breaks a rule that holds for every input (no
//! session from a token the key did not sign, only statuses the layer can
//! give, codecs that decode what they encode, no raw id in an event).
//! Inputs are mostly text, one item a line, so that corpus files read as
//! what they test; see each function for its layout.

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};

use crate::client::{ClientContext, ForwardedHeader, TrustedProxies};
use crate::clock::ManualClock;
use crate::id::{IdHash, SealedId, SessionId, ID_LEN};
use crate::key::{Key, Keyring};
use crate::policy::{ClientBinding, RejectAction};
use crate::record::{Deadlines, SessionData};
use crate::store::{MemoryStore, SessionStore};
use crate::transport::{read_cookie, TokenRead};
use crate::{Csrf, GuessingDetection, Session, SessionLayer, Transport};

/// The primary key of every check.
const PRIMARY: [u8; 32] = [0x42; 32];
/// A fallback key (tokens it signed still verify, to be re-signed).
const FALLBACK: [u8; 32] = [0x24; 32];
/// A key the checks never trust.
const FOREIGN: [u8; 32] = [0x99; 32];
/// The id of the one session the layer checks know.
const KNOWN_ID: [u8; ID_LEN] = [0x11; ID_LEN];
/// The fixed time of the layer checks (2026-01-01T00:00:00Z).
const NOW: u64 = 1_767_225_600_000;
/// The header [`Transport::header`] reads in the transport check.
pub const TOKEN_HEADER: &str = "x-session-token";
/// The header a form's CSRF token is read from by the checks' handler.
const FORM_TOKEN_HEADER: &str = "x-form-token";
/// At most this many request headers are taken from one input.
const MAX_HEADERS: usize = 64;

fn keyring() -> Keyring {
    let mut ring = Keyring::new(key(&PRIMARY));
    ring.set_fallbacks(vec![key(&FALLBACK)]);
    ring
}

fn key(bytes: &[u8; 32]) -> Key {
    Key::from_bytes(bytes).expect("32 bytes make a key")
}

/// The token of the one session the layer checks know, as the layer
/// issued it. Corpus files that carry it reach the code past verification.
#[must_use]
pub fn known_token() -> String {
    keyring().sign(&SessionId::from_bytes(KNOWN_ID))
}

/// The same session's token signed with the fallback key.
#[must_use]
pub fn known_fallback_token() -> String {
    Keyring::new(key(&FALLBACK)).sign(&SessionId::from_bytes(KNOWN_ID))
}

/// The CSRF token of the known session.
#[must_use]
pub fn known_csrf_token() -> String {
    keyring().csrf_token(&SessionId::from_bytes(KNOWN_ID))
}

/// Token decoding and verification: the whole input as a token, and the
/// first 16 bytes as an id to sign.
///
/// A token verifies only if it is, byte for byte, the token the primary
/// (or fallback) key gives its id: no other spelling of a signed id is
/// accepted. Tokens made here verify to their id, and a token with any
/// one character changed does not. The same holds for CSRF tokens and for
/// the hex forms of id hashes and sealed ids.
pub fn token(data: &[u8]) {
    let ring = keyring();
    let primary = Keyring::new(key(&PRIMARY));
    let fallback = Keyring::new(key(&FALLBACK));
    let text = String::from_utf8_lossy(data);

    // The input as a token: it verifies only as the token its key issues.
    if let Some(verified) = ring.verify(&text) {
        let signer = if verified.needs_resign {
            &fallback
        } else {
            &primary
        };
        assert_eq!(
            signer.sign(&verified.id),
            text,
            "a token verified that is not the one its key issues for its id"
        );
    }
    let foreign = Keyring::new(key(&FOREIGN));
    if let Some(verified) = foreign.verify(&text) {
        assert_eq!(foreign.sign(&verified.id), text);
        assert!(
            ring.verify(&text).is_none(),
            "a token verified under keys that did not sign it"
        );
    }

    // The input's first bytes as an id.
    let mut raw = [0u8; ID_LEN];
    for (slot, byte) in raw.iter_mut().zip(data) {
        *slot = *byte;
    }
    let id = SessionId::from_bytes(raw);
    let issued = ring.sign(&id);
    let verified = ring
        .verify(&issued)
        .expect("a token the ring signed verifies");
    assert!(verified.id == id && !verified.needs_resign);
    let old = fallback.sign(&id);
    let verified = ring.verify(&old).expect("a fallback key's token verifies");
    assert!(verified.id == id && verified.needs_resign);
    assert!(foreign.verify(&issued).is_none());
    // One character changed, at a place and to a character the input picks.
    let position = data.get(ID_LEN).map_or(0, |b| usize::from(*b)) % issued.len();
    let replacement = data.get(ID_LEN + 1).copied().unwrap_or(b'A');
    let mut changed = issued.clone().into_bytes();
    if changed[position] != replacement {
        changed[position] = replacement;
        let changed = String::from_utf8_lossy(&changed);
        assert!(
            ring.verify(&changed).is_none(),
            "a token with one character changed still verified"
        );
    }

    // CSRF tokens.
    if ring.verify_csrf(&id, &text) {
        let trimmed = text.trim();
        assert!(
            trimmed == primary.csrf_token(&id) || trimmed == fallback.csrf_token(&id),
            "a CSRF token verified that is not the one a key gives this id"
        );
    }
    assert!(ring.verify_csrf(&id, &ring.csrf_token(&id)));
    assert!(
        ring.verify(&ring.csrf_token(&id)).is_none(),
        "a CSRF token is never a session token"
    );

    // Hex forms read back from stores.
    if let Some(hash) = IdHash::from_hex(&text) {
        assert!(hash.to_hex().eq_ignore_ascii_case(&text));
        assert_eq!(IdHash::from_hex(&hash.to_hex()), Some(hash));
    }
    if let Some(sealed) = SealedId::from_hex(&text) {
        assert!(sealed.to_hex().eq_ignore_ascii_case(&text));
        assert_eq!(SealedId::from_hex(&sealed.to_hex()), Some(sealed));
    }
}

/// A request decoded from a fuzz input: first byte the configuration,
/// then lines of text: the method, the URI, and `name: value` headers.
struct Input {
    config: u8,
    request: Request<Body>,
}

impl Input {
    fn parse(data: &[u8]) -> Self {
        let (config, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
        let mut lines = rest.split(|b| *b == b'\n');
        let method = lines
            .next()
            .and_then(|m| Method::from_bytes(trim(m)).ok())
            .unwrap_or(Method::GET);
        let uri = lines
            .next()
            .and_then(|u| Uri::try_from(trim(u)).ok())
            .unwrap_or_else(|| Uri::from_static("/"));
        let mut request = Request::new(Body::empty());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers(lines);
        Self { config, request }
    }
}

/// `name: value` lines as a header map; lines that are not a header (as
/// a server would refuse them) are skipped.
fn headers<'a>(lines: impl Iterator<Item = &'a [u8]>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.take(MAX_HEADERS) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(trim(name)),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime"),
    );
}

fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.borrow().block_on(future))
}

/// What the checks' handler answers: whether a session came with the
/// request, and what the session thought of a form's CSRF token.
async fn handler(session: Session, headers: HeaderMap) -> String {
    let Some(user) = session.user_id() else {
        return if session.is_new() {
            "none".to_owned()
        } else {
            "anonymous".to_owned()
        };
    };
    let n: Option<u64> = session.get("n").ok().flatten();
    let csrf = headers
        .get(FORM_TOKEN_HEADER)
        .map(|value| session.verify_csrf(value.to_str().unwrap_or("")).is_ok());
    format!("session user={user} n={n:?} csrf={csrf:?}")
}

/// One request through a fresh app that knows one session.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    events: Vec<String>,
}

/// Sends `request` through a `SessionLayer` set up by `configure` over a
/// fresh store holding the known session (signed in as `ann`, `n = 1`).
fn exchange(
    request: Request<Body>,
    configure: impl FnOnce(SessionLayer) -> SessionLayer,
) -> Exchange {
    block_on(async move {
        let store = MemoryStore::new(64);
        let mut record = Deadlines {
            created_at: NOW,
            idle_deadline: NOW + 3_600_000,
            absolute_deadline: NOW + 86_400_000,
        }
        .record(
            SessionId::from_bytes(KNOWN_ID).hash(),
            Some("ann".to_owned()),
            SessionData::default(),
        );
        record.data.insert("n".to_owned(), serde_json::json!(1));
        assert!(store.create(&record).await.expect("a memory store works"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let layer = SessionLayer::new(store, key(&PRIMARY))
            .with_fallback_keys([key(&FALLBACK)])
            .with_clock(ManualClock::starting_at(NOW))
            .with_event_handler(move |event| {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!("{event:?}"));
            });
        let app = Router::new().fallback(handler).layer(configure(layer));
        let mut service = app;
        std::future::poll_fn(|cx| {
            tower_service::Service::<Request<Body>>::poll_ready(&mut service, cx)
        })
        .await
        .unwrap_or_else(|never| match never {});
        let response = tower_service::Service::call(&mut service, request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the body is small");
        let events = std::mem::take(
            &mut *events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Exchange {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            events,
        }
    })
}

/// All header values of a request, joined, for "did the token come with it".
fn carried(headers: &HeaderMap) -> Vec<u8> {
    let mut all = Vec::new();
    for value in headers.values() {
        all.extend_from_slice(value.as_bytes());
        all.push(b'\n');
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The rules every answer of the layer keeps, whatever came in.
fn check_exchange(sent: &HeaderMap, exchange: &Exchange, statuses: &[StatusCode]) {
    let ring = keyring();
    let token = known_token();
    let old = known_fallback_token();
    assert!(
        statuses.contains(&exchange.status),
        "status {} is not one this layer gives here ({statuses:?}); body {:?}",
        exchange.status,
        exchange.body
    );
    let all = carried(sent);
    if exchange.body.starts_with("session") {
        assert!(
            contains(&all, &token) || contains(&all, &old),
            "a session was found for a request that carried no token the key signed: {}",
            exchange.body
        );
    }
    // Every token handed out verifies; no cookie is set under another name.
    for value in exchange.headers.get_all(http::header::SET_COOKIE) {
        let text = value.to_str().expect("Set-Cookie is text");
        let cookie = cookie::Cookie::parse(text).expect("Set-Cookie parses");
        assert!(
            cookie.value().is_empty() || ring.verify(cookie.value()).is_some(),
            "a cookie was set to something other than a token: {text}"
        );
    }
    for name in [TOKEN_HEADER, http::header::AUTHORIZATION.as_str()] {
        for value in exchange.headers.get_all(name) {
            let text = value.to_str().expect("token headers are text");
            let text = text.strip_prefix("Bearer ").unwrap_or(text);
            assert!(
                text.is_empty() || ring.verify(text).is_some(),
                "a token header was set to something other than a token: {text}"
            );
        }
    }
    // No raw id or token in any event.
    let id_hex: String = KNOWN_ID.iter().map(|b| format!("{b:02x}")).collect();
    for event in &exchange.events {
        for secret in [&token[..21], &old[..21], &id_hex] {
            assert!(
                !event.contains(secret),
                "an event shows a raw token or id: {event}"
            );
        }
    }
}

/// The Cookie header, through a `SessionLayer` with the cookie transport
/// and CSRF protection. Input: a configuration byte, then lines (method,
/// URI, headers); bit 0 of the configuration byte asks the layer for the
/// CSRF token in a header.
///
/// The answer is the handler's or a `403`; a session is found only when a
/// cookie header carried the known token; every `Set-Cookie` holds a
/// token that verifies or nothing; no event shows a raw id. The cookie
/// reader never returns a value holding `;`.
pub fn cookie_header(data: &[u8]) {
    let Input { config, request } = Input::parse(data);
    let sent = request.headers().clone();
    match read_cookie(&sent, "__Host-id") {
        TokenRead::Present(value) => assert!(!value.contains(';'), "{value:?}"),
        TokenRead::Absent | TokenRead::Ambiguous => {}
    }
    let exchange = exchange(request, |layer| {
        layer.with_csrf(Csrf::default().with_header_token_required(config & 1 == 1))
    });
    check_exchange(&sent, &exchange, &[StatusCode::OK, StatusCode::FORBIDDEN]);
    if exchange.body.starts_with("session") {
        let cookies: Vec<u8> = sent
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain([b'\n']))
            .collect();
        assert!(
            contains(&cookies, &known_token()) || contains(&cookies, &known_fallback_token()),
            "a session was found without its token in a Cookie header"
        );
    }
}

/// The header and bearer transports, through a `SessionLayer`. Input as
/// for [`cookie_header`]; bits 0–1 of the configuration byte pick the
/// transport: `x-session-token`, bearer, the cookie or `x-session-token`,
/// the cookie or bearer.
///
/// The rules of [`cookie_header`], and: a token header that comes back
/// holds a token that verifies, `Bearer <token>`, or nothing.
pub fn transports(data: &[u8]) {
    let Input { config, request } = Input::parse(data);
    let sent = request.headers().clone();
    let transport = match config & 3 {
        0 => Transport::header(TOKEN_HEADER),
        1 => Transport::bearer(),
        2 => Transport::cookie_or_header(TOKEN_HEADER),
        _ => Transport::cookie_or_bearer(),
    };
    let exchange = exchange(request, |layer| {
        layer.with_transport(transport).with_csrf(Csrf::default())
    });
    check_exchange(&sent, &exchange, &[StatusCode::OK, StatusCode::FORBIDDEN]);
}

/// The peers a forwarding check's request comes from: proxies of ours
/// (inside `10.0.0.0/8` or `fd00::/8`) and strangers, IPv4-mapped too.
const PEERS: [&str; 4] = [
    "10.0.0.2:80",
    "203.0.113.9:5000",
    "[fd00::1]:443",
    "[::ffff:10.0.0.3]:80",
];

/// `Forwarded` and `X-Forwarded-*`: the client context under every kind
/// of proxy trust, then a `SessionLayer` trusting proxies, with client
/// binding, guessing detection and `https_only` on. Input as for
/// [`cookie_header`]; bits 0–1 of the configuration byte pick the peer,
/// bits 2–3 the layer's trust (none, one hop, two hops, the networks
/// `10.0.0.0/8` and `fd00::/8`), bit 4 the header family, bit 5 whether
/// a refused binding answers `401`.
///
/// Without trust, the client is the peer and HTTPS is what the URI says;
/// the client never depends on the family of headers not configured; a
/// client other than the peer comes only from a header of that family;
/// a parsed node reads back from its own text. The layer answers with the
/// handler, `401`, `403` or `429`.
pub fn forwarded(data: &[u8]) {
    let Input {
        config,
        mut request,
    } = Input::parse(data);
    let peer: SocketAddr = PEERS[usize::from(config & 3)]
        .parse()
        .expect("the peers are addresses");
    request.extensions_mut().insert(peer);
    let peer_ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer.ip(), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    let direct_https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
    let family = if config & 16 == 0 {
        ForwardedHeader::XForwardedFor
    } else {
        ForwardedHeader::Forwarded
    };
    let networks = TrustedProxies::networks(["10.0.0.0/8", "fd00::/8"])
        .expect("the networks are CIDR")
        .with_header(family);
    let rules = [
        TrustedProxies::none(),
        TrustedProxies::hops(0).with_header(family),
        TrustedProxies::hops(1).with_header(family),
        TrustedProxies::hops(2).with_header(family),
        TrustedProxies::hops(usize::MAX).with_header(family),
        networks.clone(),
    ];
    let own_names: &[HeaderName] = match family {
        ForwardedHeader::XForwardedFor => &[
            HeaderName::from_static("x-forwarded-for"),
            HeaderName::from_static("x-forwarded-proto"),
        ],
        _ => &[http::header::FORWARDED],
    };
    // The same request with only the configured family's headers.
    let mut only_own = Request::new(());
    *only_own.uri_mut() = request.uri().clone();
    only_own.extensions_mut().insert(peer);
    for name in own_names {
        for value in request.headers().get_all(name) {
            only_own.headers_mut().append(name.clone(), value.clone());
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        let context = ClientContext::from_request_with(&request, rule);
        let ip = context.ip.expect("a request with a peer has a client");
        if i < 2 {
            assert_eq!(ip, peer_ip, "a client address believed without trust");
            assert_eq!(context.https, direct_https, "HTTPS believed without trust");
        }
        if ip != peer_ip {
            assert!(
                own_names.iter().any(|n| request.headers().contains_key(n)),
                "a client address from nowhere"
            );
        }
        let own = ClientContext::from_request_with(&only_own, rule);
        assert_eq!(
            (own.ip, own.https),
            (context.ip, context.https),
            "headers of the family not configured changed the client"
        );
    }
    for name in [
        HeaderName::from_static("x-forwarded-for"),
        http::header::FORWARDED,
    ] {
        for value in request.headers().get_all(&name) {
            let Ok(text) = value.to_str() else { continue };
            for node in text.split([',', ';']) {
                let node = node.split_once('=').map_or(node, |(_, v)| v);
                if let Some(ip) = crate::client::parse_node(node) {
                    assert_eq!(crate::client::parse_node(&ip.to_string()), Some(ip));
                }
            }
        }
    }

    let sent = request.headers().clone();
    let trust = match (config >> 2) & 3 {
        0 => TrustedProxies::none(),
        1 => TrustedProxies::hops(1).with_header(family),
        2 => TrustedProxies::hops(2).with_header(family),
        _ => networks,
    };
    let action = if config & 32 == 0 {
        RejectAction::Destroy
    } else {
        RejectAction::Respond
    };
    let exchange = exchange(request, |layer| {
        layer
            .with_trusted_proxies(trust)
            .with_https_only(config & 64 != 0)
            .with_client_binding(ClientBinding::default().with_action(action))
            .with_guessing_detection(GuessingDetection::default())
            .with_client_address_required(true)
            .with_csrf(Csrf::default())
    });
    check_exchange(
        &sent,
        &exchange,
        &[
            StatusCode::OK,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::TOO_MANY_REQUESTS,
        ],
    );
}

/// Input lines as the fields of one Redis hash: `name=value` per line, a
/// line without `=` a name with no value (a reply Redis never sends, but a
/// damaged one might).
#[cfg(feature = "redis")]
fn redis_reply(data: &[u8]) -> ::redis::Value {
    let mut items = Vec::new();
    for line in data.split(|b| *b == b'\n').take(256) {
        match line.iter().position(|b| *b == b'=') {
            Some(eq) => {
                items.push(::redis::Value::BulkString(line[..eq].to_vec()));
                items.push(::redis::Value::BulkString(line[eq + 1..].to_vec()));
            }
            None => items.push(::redis::Value::BulkString(line.to_vec())),
        }
    }
    ::redis::Value::Array(items)
}

/// The Redis record codec: an `HGETALL` reply decoded to an entry. The
/// input is the hash's fields, `name=value` per line; a line without `=`
/// is a name with no value.
///
/// A damaged reply is `StoreError::Corrupt`, never a panic or another
/// error; an entry that decodes encodes to fields that decode to the same
/// entry, and encode to the same fields again.
#[cfg(feature = "redis")]
pub fn redis_codec(data: &[u8]) {
    use crate::store::redis::codec::{decode_entry, encode_entry, field_pairs};
    use crate::StoreError;

    let id = SessionId::from_bytes(KNOWN_ID).hash();
    let fields = match field_pairs(redis_reply(data)) {
        Ok(fields) => fields,
        Err(StoreError::Corrupt(_)) => return,
        Err(other) => panic!("a damaged reply is corrupt, not {other:?}"),
    };
    let entry = match decode_entry(id, fields) {
        Ok(Some(entry)) => entry,
        Ok(None) => return,
        Err(StoreError::Corrupt(_)) => return,
        Err(other) => panic!("a damaged entry is corrupt, not {other:?}"),
    };
    if let crate::record::Entry::Forward(forward) = &entry {
        assert!(
            forward.kept_until >= forward.until,
            "a forward kept for less time than it works: {forward:?}"
        );
    }
    let _ = format!("{entry:?}");
    let encoded = encode_entry(&entry).expect("a decoded entry encodes");
    let again = decode_entry(id, encoded.clone())
        .expect("an encoded entry decodes")
        .expect("an encoded entry has fields");
    assert_eq!(again, entry, "the entry changed through the codec");
    let mut re_encoded = encode_entry(&again).expect("a decoded entry encodes");
    let mut encoded = encoded;
    encoded.sort();
    re_encoded.sort();
    assert_eq!(re_encoded, encoded, "the fields changed through the codec");
}

/// The SQL record codec: a row of the sessions table, one column a line
/// in the order the stores select them (`kind, user_id, data, created_at,
/// last_seen, idle_deadline, absolute_deadline, id_issued_at, version, ip,
/// user_agent, binding, successor, sealed_id, sign_in, grace_until`).
/// A line starting with `-` is NULL; otherwise its first byte is dropped
/// and the rest is the value: text, a decimal integer (anything else is
/// 0), or hex bytes for `successor` and `sealed_id` (text that is not hex
/// is taken as its bytes).
///
/// A row that does not hold an entry is `StoreError::Corrupt`, never a
/// panic; an entry that decodes writes a row that decodes to the same
/// entry.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub fn sql_codec(data: &[u8]) {
    use crate::store::sql::codec::{Columns, Stored};
    use crate::StoreError;

    let mut lines = data.split(|b| *b == b'\n');
    let mut next = || -> Option<Vec<u8>> {
        let line = lines.next().unwrap_or(b"-");
        match line.split_first() {
            Some((b'-', _)) => None,
            Some((_, value)) => Some(value.to_vec()),
            None => Some(Vec::new()),
        }
    };
    let text = |v: Option<Vec<u8>>| v.map(|v| String::from_utf8_lossy(&v).into_owned());
    let integer = |v: Option<Vec<u8>>| {
        v.map(|v| {
            String::from_utf8_lossy(&v)
                .trim()
                .parse::<i64>()
                .unwrap_or(0)
        })
    };
    let bytes = |v: Option<Vec<u8>>| v.map(|v| hex(&v).unwrap_or(v));
    let stored = Stored {
        kind: text(next()).unwrap_or_default(),
        user_id: text(next()),
        data: text(next()).unwrap_or_default(),
        created_at: integer(next()).unwrap_or(0),
        last_seen: integer(next()).unwrap_or(0),
        idle_deadline: integer(next()).unwrap_or(0),
        absolute_deadline: integer(next()).unwrap_or(0),
        id_issued_at: integer(next()).unwrap_or(0),
        version: integer(next()).unwrap_or(0),
        ip: text(next()),
        user_agent: text(next()),
        binding: text(next()),
        successor: bytes(next()),
        sealed_id: bytes(next()),
        sign_in: text(next()),
        grace_until: integer(next()),
    };
    let id = SessionId::from_bytes(KNOWN_ID).hash();
    let entry = match stored.into_entry(id) {
        Ok(entry) => entry,
        Err(StoreError::Corrupt(_)) => return,
        Err(other) => panic!("a damaged row is corrupt, not {other:?}"),
    };
    if let crate::record::Entry::Forward(forward) = &entry {
        assert!(
            forward.kept_until >= forward.until,
            "a forward kept for less time than it works: {forward:?}"
        );
    }
    let _ = format!("{entry:?}");
    let written = Columns::of(&entry).expect("a decoded entry encodes");
    let again = Stored::from(written)
        .into_entry(id)
        .expect("a written row decodes");
    assert_eq!(again, entry, "the entry changed through the codec");
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
fn hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(config: u8, headers: &[String]) -> Vec<u8> {
        let mut data = vec![config];
        data.extend_from_slice(b"GET\n/");
        for header in headers {
            data.push(b'\n');
            data.extend_from_slice(header.as_bytes());
        }
        data
    }

    fn body(data: &[u8], configure: impl FnOnce(SessionLayer) -> SessionLayer) -> String {
        let Input { request, .. } = Input::parse(data);
        exchange(request, configure).body
    }

    #[test]
    fn the_known_token_reaches_the_session_and_others_do_not() {
        let token = known_token();
        let found = body(&get(0, &[format!("cookie: __Host-id={token}")]), |l| l);
        assert_eq!(found, "session user=ann n=Some(1) csrf=None");
        let old = known_fallback_token();
        let found = body(&get(0, &[format!("cookie: __Host-id={old}")]), |l| l);
        assert!(found.starts_with("session user=ann"), "{found}");
        let tampered = format!("{}A", &token[..token.len() - 1]);
        let found = body(&get(0, &[format!("cookie: __Host-id={tampered}")]), |l| l);
        assert_eq!(found, "none");
        let header = get(0, &[format!("{TOKEN_HEADER}: {token}")]);
        assert_eq!(body(&header, |l| l), "none", "the cookie transport only");
        let found = body(&header, |l| {
            l.with_transport(Transport::header(TOKEN_HEADER))
        });
        assert!(found.starts_with("session"), "{found}");
    }

    #[test]
    fn the_checks_catch_a_session_without_its_token() {
        let exchange = Exchange {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: "session user=ann".to_owned(),
            events: Vec::new(),
        };
        let caught = std::panic::catch_unwind(|| {
            check_exchange(&HeaderMap::new(), &exchange, &[StatusCode::OK]);
        });
        assert!(caught.is_err());
        let caught = std::panic::catch_unwind(|| {
            let exchange = Exchange {
                body: "none".to_owned(),
                status: StatusCode::INTERNAL_SERVER_ERROR,
                ..exchange
            };
            check_exchange(&HeaderMap::new(), &exchange, &[StatusCode::OK]);
        });
        assert!(caught.is_err());
    }

    #[test]
    fn input_lines_make_a_request() {
        let Input { config, request } = Input::parse(
            b"\x07POST\nhttps://a.example/x\nhost: a.example\nbad line\n: x\nx-a: 1\r",
        );
        assert_eq!(config, 7);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "https://a.example/x");
        assert_eq!(request.headers().len(), 2);
        assert_eq!(request.headers()["x-a"], "1");
        let Input { config, request } = Input::parse(b"");
        assert_eq!((config, request.method()), (0, &Method::GET));
    }
}
