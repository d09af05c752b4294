//! Client-aware protection through a real axum `Router`: trusted proxies,
//! HTTPS-only, client binding, impossible travel, guessing detection.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use common::{send_request, LogCapture, Reply, COOKIE};
use http::{Request, StatusCode};
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{
    ClientBinding, GuessingDetection, Key, Location, MemoryStore, RejectAction, RejectReason,
    Session, SessionEvent, SessionLayer, TrustedProxies,
};

const CHROME_130: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";
const CHROME_131: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.86 Safari/537.36";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";

type Events = Arc<Mutex<Vec<SessionEvent>>>;

/// A request from `peer` with `token`, a User-Agent and extra headers.
struct Call<'a> {
    uri: &'a str,
    peer: &'a str,
    user_agent: Option<&'a str>,
    token: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Call<'a> {
    fn get(uri: &'a str, peer: &'a str) -> Self {
        Self {
            uri,
            peer,
            user_agent: Some(CHROME_130),
            token: None,
            headers: Vec::new(),
        }
    }

    fn token(mut self, token: &'a str) -> Self {
        self.token = Some(token);
        self
    }

    fn agent(mut self, user_agent: &'a str) -> Self {
        self.user_agent = Some(user_agent);
        self
    }

    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    async fn send(self, app: &Router) -> Reply {
        let mut request = Request::get(self.uri).body(Body::empty()).unwrap();
        let peer: SocketAddr = format!("{}:40000", self.peer).parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let headers = request.headers_mut();
        if let Some(agent) = self.user_agent {
            headers.insert(http::header::USER_AGENT, agent.parse().unwrap());
        }
        if let Some(token) = self.token {
            headers.insert(
                http::header::COOKIE,
                format!("{COOKIE}={token}").parse().unwrap(),
            );
        }
        for (name, value) in self.headers {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        send_request(app, request).await
    }
}

fn recording(layer: SessionLayer) -> (SessionLayer, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    (
        layer.with_event_handler(move |e: &SessionEvent| sink.lock().unwrap().push(e.clone())),
        events,
    )
}

fn rejections(events: &Events) -> Vec<RejectReason> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(1_000), Key::generate()).with_clock(clock.clone())
}

/// Starts a session (counter = 1) from `peer` with `agent`; returns its token.
async fn start(app: &Router, peer: &str, agent: &str) -> String {
    let reply = Call::get("/count", peer).agent(agent).send(app).await;
    reply.token().expect("a session was created")
}

async fn read(app: &Router, peer: &str, agent: &str, token: &str) -> Reply {
    Call::get("/read", peer)
        .agent(agent)
        .token(token)
        .send(app)
        .await
}

#[tokio::test]
async fn spoofed_forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let clock = ManualClock::new();
    let plain = layer(&clock);
    let admin = plain.sessions();
    let app = common::app(plain);
    post(
        Call::get("/login/uma", "198.51.100.7")
            .header("x-forwarded-for", "1.2.3.4")
            .header("forwarded", "for=5.6.7.8"),
        &app,
    )
    .await;
    let info = admin.list("uma").await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].ip, Some("198.51.100.7".parse::<IpAddr>().unwrap()));
}

#[tokio::test]
async fn a_trusted_proxy_reports_the_client_address() {
    let clock = ManualClock::new();
    let proxied =
        layer(&clock).with_trusted_proxies(TrustedProxies::networks(["10.0.0.0/8"]).unwrap());
    let admin = proxied.sessions();
    let app = common::app(proxied);
    post(
        Call::get("/login/vic", "10.0.0.2").header("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
        &app,
    )
    .await;
    let info = admin.list("vic").await.unwrap();
    assert_eq!(info[0].ip, Some("203.0.113.9".parse::<IpAddr>().unwrap()));
}

/// Sends `call` as a POST.
async fn post(call: Call<'_>, app: &Router) -> Reply {
    let mut request = Request::post(call.uri).body(Body::empty()).unwrap();
    let peer: SocketAddr = format!("{}:40000", call.peer).parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    if let Some(agent) = call.user_agent {
        request
            .headers_mut()
            .insert(http::header::USER_AGENT, agent.parse().unwrap());
    }
    if let Some(token) = call.token {
        request.headers_mut().insert(
            http::header::COOKIE,
            format!("{COOKIE}={token}").parse().unwrap(),
        );
    }
    for (name, value) in call.headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    send_request(app, request).await
}

#[tokio::test]
async fn https_only_ignores_tokens_and_sets_no_cookie_over_plain_http() {
    let clock = ManualClock::new();
    let (https_only, events) = recording(layer(&clock).with_https_only(true));
    let app = common::app(https_only);

    let plain = Call::get("/count", "203.0.113.1").send(&app).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(
        !plain.touches_cookie(),
        "no session cookie on a plain-HTTP response"
    );

    let secure = Call::get("https://shop.example/count", "203.0.113.1")
        .send(&app)
        .await;
    let token = secure.token().expect("HTTPS responses carry the cookie");

    let over_http = Call::get("/read", "203.0.113.1")
        .token(&token)
        .send(&app)
        .await;
    assert_eq!(
        over_http.body, "none",
        "the token is ignored over plain HTTP"
    );
    assert!(
        !over_http.touches_cookie(),
        "not even a removal cookie over plain HTTP"
    );
    assert!(rejections(&events).contains(&RejectReason::InsecureTransport));

    let over_https = Call::get("https://shop.example/read", "203.0.113.1")
        .token(&token)
        .send(&app)
        .await;
    assert_eq!(over_https.body, "1", "the session is intact");

    let login = post(Call::get("/login/walt", "203.0.113.1"), &app).await;
    assert_eq!(
        login.status,
        StatusCode::FORBIDDEN,
        "no login over plain HTTP"
    );
    assert!(!login.touches_cookie());
}

#[tokio::test]
async fn https_is_believed_from_x_forwarded_proto_only_from_a_trusted_proxy() {
    let clock = ManualClock::new();
    let app = common::app(
        layer(&clock)
            .with_https_only(true)
            .with_trusted_proxies(TrustedProxies::networks(["10.0.0.0/8"]).unwrap()),
    );
    let via_proxy = Call::get("/count", "10.0.0.2")
        .header("x-forwarded-proto", "https")
        .send(&app)
        .await;
    assert!(
        via_proxy.token().is_some(),
        "TLS ended at our proxy: a cookie is set"
    );
    let spoofed = Call::get("/count", "198.51.100.9")
        .header("x-forwarded-proto", "https")
        .send(&app)
        .await;
    assert!(
        !spoofed.touches_cookie(),
        "anyone else claiming https is not believed"
    );
}

fn bound(clock: &ManualClock, binding: ClientBinding) -> (Router, Events) {
    let (layer, events) = recording(layer(clock).with_client_binding(binding));
    (common::app(layer), events)
}

#[tokio::test]
async fn a_new_address_in_the_same_network_and_a_browser_update_keep_the_session() {
    let clock = ManualClock::new();
    let (app, events) = bound(&clock, ClientBinding::default());
    let token = start(&app, "203.0.113.10", CHROME_130).await;
    assert_eq!(
        read(&app, "203.0.113.200", CHROME_130, &token).await.body,
        "1"
    );
    assert_eq!(
        read(&app, "203.0.113.10", CHROME_131, &token).await.body,
        "1"
    );
    assert!(rejections(&events).is_empty());
}

#[tokio::test]
async fn a_different_browser_family_is_rejected_and_the_session_destroyed() {
    let clock = ManualClock::new();
    let (app, events) = bound(&clock, ClientBinding::default());
    let token = start(&app, "203.0.113.10", CHROME_130).await;
    let stolen = read(&app, "203.0.113.10", FIREFOX, &token).await;
    assert_eq!(stolen.body, "none");
    assert!(stolen.clears_cookie());
    assert_eq!(rejections(&events), [RejectReason::UserAgentChanged]);
    assert_eq!(
        read(&app, "203.0.113.10", CHROME_130, &token).await.body,
        "none",
        "the session is destroyed, not just refused once"
    );
}

#[tokio::test]
async fn three_networks_in_ten_minutes_are_fine_and_a_fourth_is_not() {
    let clock = ManualClock::new();
    let (app, events) = bound(&clock, ClientBinding::default());
    let token = start(&app, "198.51.100.1", CHROME_130).await;
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        read(&app, "198.51.101.1", CHROME_130, &token).await.body,
        "1"
    );
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        read(&app, "198.51.102.1", CHROME_130, &token).await.body,
        "1"
    );
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        read(&app, "198.51.100.1", CHROME_130, &token).await.body,
        "1",
        "a known network"
    );
    clock.advance(Duration::from_secs(120));
    let fourth = read(&app, "198.51.103.1", CHROME_130, &token).await;
    assert_eq!(fourth.body, "none");
    assert!(fourth.clears_cookie());
    assert_eq!(rejections(&events), [RejectReason::TooManyNetworks]);
}

#[tokio::test]
async fn networks_seen_longer_ago_than_the_window_no_longer_count() {
    let clock = ManualClock::new();
    let (app, _) = bound(&clock, ClientBinding::default());
    let token = start(&app, "198.51.100.1", CHROME_130).await;
    assert_eq!(
        read(&app, "198.51.101.1", CHROME_130, &token).await.body,
        "1"
    );
    assert_eq!(
        read(&app, "198.51.102.1", CHROME_130, &token).await.body,
        "1"
    );
    clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(
        read(&app, "198.51.103.1", CHROME_130, &token).await.body,
        "1"
    );
}

#[tokio::test]
async fn reject_action_respond_answers_401_without_calling_the_service() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/",
            get(move |session: Session| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    session.insert("x", 1).unwrap();
                    "ok"
                }
            }),
        )
        .layer(
            layer(&clock)
                .with_client_binding(ClientBinding::default().with_action(RejectAction::Respond)),
        );
    let token = Call::get("/", "203.0.113.10")
        .send(&app)
        .await
        .token()
        .unwrap();
    let stolen = Call::get("/", "203.0.113.10")
        .agent(FIREFOX)
        .token(&token)
        .send(&app)
        .await;
    assert_eq!(stolen.status, StatusCode::UNAUTHORIZED);
    assert!(stolen.clears_cookie());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the service was not called for the stolen session"
    );
}

/// A tiny GeoIP table: the second octet of a 10.x address picks a city.
fn cities(ip: IpAddr) -> Option<Location> {
    let IpAddr::V4(v4) = ip else { return None };
    let (latitude, longitude, country) = match v4.octets()[1] {
        1 => (59.91, 10.75, "NO"),  // Oslo
        2 => (60.39, 5.32, "NO"),   // Bergen
        3 => (35.68, 139.69, "JP"), // Tokyo
        _ => return None,
    };
    Some(Location {
        latitude,
        longitude,
        country: Some(country.into()),
    })
}

#[tokio::test]
async fn oslo_to_tokyo_in_five_minutes_is_rejected() {
    let clock = ManualClock::new();
    let (app, events) = bound(&clock, ClientBinding::default().with_locator(cities));
    let token = start(&app, "10.1.0.1", CHROME_130).await;
    clock.advance(Duration::from_secs(5 * 60));
    let tokyo = read(&app, "10.3.0.1", CHROME_130, &token).await;
    assert_eq!(tokyo.body, "none");
    assert_eq!(rejections(&events), [RejectReason::ImpossibleTravel]);
}

#[tokio::test]
async fn oslo_to_bergen_in_an_hour_is_not() {
    let clock = ManualClock::new();
    let (layer, events) = recording(
        layer(&clock)
            .with_idle_timeout(Duration::from_secs(2 * 3600))
            .with_client_binding(ClientBinding::default().with_locator(cities)),
    );
    let app = common::app(layer);
    let token = start(&app, "10.1.0.1", CHROME_130).await;
    clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(read(&app, "10.1.0.1", CHROME_130, &token).await.body, "1");
    clock.advance(Duration::from_secs(60 * 60));
    assert_eq!(read(&app, "10.2.0.1", CHROME_130, &token).await.body, "1");
    assert!(rejections(&events).is_empty());
}

#[tokio::test]
async fn too_many_bad_tokens_from_one_network_get_429_until_the_window_passes() {
    let clock = ManualClock::new();
    let (guarded, events) =
        recording(layer(&clock).with_guessing_detection(GuessingDetection::default()));
    let app = common::app(guarded);
    let good = start(&app, "198.51.100.50", CHROME_130).await;
    for i in 0..20 {
        let guess = format!("{:A<43}", format!("guess{i}"));
        let reply = read(&app, "198.51.100.7", CHROME_130, &guess).await;
        assert_eq!(reply.status, StatusCode::OK, "guess {i} is just no session");
    }
    let last = read(&app, "198.51.100.7", CHROME_130, &"B".repeat(43)).await;
    assert_eq!(
        last.status,
        StatusCode::OK,
        "the 21st failure raises the alarm"
    );
    let blocked = read(&app, "198.51.100.99", CHROME_130, &good).await;
    assert_eq!(
        blocked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the whole network is blocked"
    );
    assert_eq!(blocked.headers[http::header::RETRY_AFTER], "60");
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, SessionEvent::GuessingDetected { failures: 21, .. })));

    let no_token = Call::get("/read", "198.51.100.7").send(&app).await;
    assert_eq!(
        no_token.status,
        StatusCode::OK,
        "requests without a token are served"
    );
    let elsewhere = read(&app, "203.0.113.1", CHROME_130, &"C".repeat(43)).await;
    assert_eq!(
        elsewhere.status,
        StatusCode::OK,
        "other networks are unaffected"
    );

    clock.advance(Duration::from_secs(61));
    assert_eq!(
        read(&app, "198.51.100.99", CHROME_130, &good).await.body,
        "1",
        "unblocked after the window"
    );
}

#[tokio::test]
async fn rejections_expiries_and_alarms_are_logged_at_warn_with_the_network() {
    let logs = LogCapture::install();
    let clock = ManualClock::new();
    let app = common::app(
        layer(&clock)
            .with_idle_timeout(Duration::from_secs(60))
            .with_client_binding(ClientBinding::default())
            .with_guessing_detection(
                GuessingDetection::default().with_threshold(2, Duration::from_secs(60)),
            ),
    );
    let stolen = start(&app, "203.0.113.10", CHROME_130).await;
    read(&app, "203.0.113.10", FIREFOX, &stolen).await;
    let idle = start(&app, "203.0.113.10", CHROME_130).await;
    clock.advance(Duration::from_secs(61));
    read(&app, "203.0.113.10", CHROME_130, &idle).await;
    for _ in 0..3 {
        read(&app, "198.51.100.7", CHROME_130, &"Z".repeat(43)).await;
    }
    let text = logs.text();
    let warns: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warns
            .iter()
            .any(|l| l.contains("UserAgentChanged") && l.contains("203.0.113.0/24")),
        "{text}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("Expired") && l.contains("203.0.113.0/24")),
        "{text}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("GuessingDetected") && l.contains("198.51.100.0/24")),
        "{text}"
    );
    for token in [&stolen, &idle] {
        for form in common::forbidden_forms(token) {
            assert!(!text.contains(&form), "raw id form {form:?} in logs");
        }
    }
}

#[tokio::test]
async fn odd_forwarding_and_user_agent_headers_never_break_a_request() {
    let clock = ManualClock::new();
    let app = common::app(
        layer(&clock)
            .with_trusted_proxies(TrustedProxies::hops(2))
            .with_client_binding(ClientBinding::default())
            .with_guessing_detection(GuessingDetection::default()),
    );
    let thousand: String = (0..1000)
        .map(|i| format!("10.9.{}.{}", i / 256, i % 256))
        .collect::<Vec<_>>()
        .join(",");
    let long_agent = "A".repeat(8 * 1024);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("x-forwarded-for", "garbage")],
        vec![("x-forwarded-for", &thousand)],
        vec![("x-forwarded-for", "fe80::1%eth0, [2001:db8::1]:443")],
        vec![(
            "forwarded",
            "for=\"[2001:db8::9%25en0]\";proto=https, for=unknown",
        )],
        vec![("user-agent", "")],
        vec![("user-agent", &long_agent)],
    ];
    for headers in cases {
        let mut call = Call::get("/count", "10.0.0.2");
        call.user_agent = None;
        for (name, value) in &headers {
            call = call.header(name, value);
        }
        let reply = call.send(&app).await;
        assert_eq!(reply.status, StatusCode::OK, "{headers:?}");
        let token = reply.token().unwrap();
        let mut again = Call::get("/count", "10.0.0.2").token(&token);
        again.user_agent = None;
        for (name, value) in &headers {
            again = again.header(name, value);
        }
        assert_eq!(
            again.send(&app).await.body,
            "2",
            "the same odd client keeps its session: {headers:?}"
        );
    }
    // Non-UTF-8 bytes in the User-Agent and forwarding headers.
    let mut request = Request::get("/count").body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo("10.0.0.2:1".parse::<SocketAddr>().unwrap()));
    request.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_bytes(b"Mozilla \xff\xfe").unwrap(),
    );
    request.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\xff, 1.2.3.4").unwrap(),
    );
    assert_eq!(send_request(&app, request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_peer_address_comes_from_connect_info_over_a_real_socket() {
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate()).with_cookie(
        tower_session_guard::CookieConfig::default()
            .with_name("id")
            .with_secure(false),
    );
    let admin = layer.sessions();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            common::app(layer).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{address}/login/xena"))
        .header("x-forwarded-for", "9.9.9.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let info = admin.list("xena").await.unwrap();
    assert_eq!(info[0].ip, Some("127.0.0.1".parse::<IpAddr>().unwrap()));
    server.abort();
}
