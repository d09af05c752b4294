//! The layer among other tower middleware: tower-http's trace, compression
//! and timeout layers around it and inside it, axum's `Router::nest`, and a
//! plain `tower::service_fn` served by hyper without axum.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use common::{Reply, COOKIE};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Bytes, Incoming};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_session_guard::{CookieConfig, Key, MemoryStore, Session, SessionError, SessionLayer};

/// Longer than the compression layer's minimum size, so it is compressed.
const PADDING: &str = "................................................................";

/// How long the timeout layers wait; `/slow` takes far longer.
const TIMEOUT: Duration = Duration::from_millis(200);

/// Routes without a session layer: each test puts one around them.
fn routes() -> Router {
    Router::new()
        .route("/count", get(count))
        .route("/read/{key}", get(read))
        .route("/whoami", get(whoami))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/slow", get(slow))
}

/// Counts, and answers with a body large enough to be compressed. The
/// count is in a header too, so it can be read from a compressed answer.
async fn count(session: Session) -> Result<impl IntoResponse, SessionError> {
    let n: u64 = session.get("n")?.unwrap_or(0) + 1;
    session.insert("n", n)?;
    Ok((
        [("x-count", n.to_string())],
        format!("count {n}\n{PADDING}{PADDING}"),
    ))
}

async fn read(
    session: Session,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Result<String, SessionError> {
    let value: Option<serde_json::Value> = session.get(&key)?;
    Ok(value.map_or_else(|| "none".to_owned(), |v| v.to_string()))
}

async fn whoami(session: Session) -> String {
    session.user_id().unwrap_or_else(|| "anonymous".to_owned())
}

async fn login(
    session: Session,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("welcome")
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.logout().await?;
    Ok("bye")
}

/// Outlives every timeout layer here.
async fn slow(session: Session) -> Result<&'static str, SessionError> {
    session.insert("slow", true)?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok("too late")
}

fn sessions() -> SessionLayer {
    SessionLayer::new(MemoryStore::new(100), Key::generate())
}

fn timeout() -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, TIMEOUT)
}

/// Sends one request through any HTTP service and reads the answer whole.
async fn call<S, B>(service: &S, request: Request<Body>) -> Reply
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: HttpBody,
    B::Error: Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: &str, uri: &str, token: Option<&str>, gzip: bool) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::COOKIE, format!("{COOKIE}={token}"));
    }
    if gzip {
        request = request.header(header::ACCEPT_ENCODING, "gzip");
    }
    request.body(Body::empty()).unwrap()
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// What every arrangement must keep: compressed answers carry the cookie,
/// the counter persists, a login issues a new token, a timed-out request
/// leaves the session usable, and a logout clears the cookie.
async fn sessions_survive<S, B>(app: S)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: HttpBody,
    B::Error: Debug,
{
    let first = call(&app, request("GET", "/count", None, true)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        header(&first, "content-encoding"),
        Some("gzip"),
        "the answer was compressed"
    );
    assert!(
        !first.body.contains("count 1"),
        "the body is gzip, not plain text"
    );
    assert_eq!(header(&first, "x-count"), Some("1"));
    let token = first
        .token()
        .expect("a compressed answer still carries Set-Cookie");
    assert_eq!(header(&first, "cache-control"), Some("no-store"));

    let second = call(&app, request("GET", "/count", Some(&token), true)).await;
    assert_eq!(
        header(&second, "x-count"),
        Some("2"),
        "the counter persists"
    );
    let plain = call(&app, request("GET", "/count", Some(&token), false)).await;
    assert_eq!(header(&plain, "content-encoding"), None);
    assert!(plain.body.starts_with("count 3\n"), "{}", plain.body);

    let timed_out = call(&app, request("GET", "/slow", Some(&token), true)).await;
    assert_eq!(timed_out.status, StatusCode::REQUEST_TIMEOUT);
    assert!(
        !timed_out.clears_cookie(),
        "a timeout does not end the session"
    );
    let after = call(&app, request("GET", "/count", Some(&token), true)).await;
    assert_eq!(
        header(&after, "x-count"),
        Some("4"),
        "the session outlives a timed-out request"
    );

    let login = call(&app, request("POST", "/login/alice", Some(&token), true)).await;
    assert_eq!(login.status, StatusCode::OK);
    let user_token = login.token().expect("a login issues a new token");
    assert_ne!(user_token, token);
    let who = call(&app, request("GET", "/whoami", Some(&user_token), true)).await;
    assert_eq!(who.body, "alice");
    let old = call(&app, request("GET", "/whoami", Some(&token), true)).await;
    assert_eq!(old.body, "anonymous", "the pre-login token is dead");

    let logout = call(&app, request("POST", "/logout", Some(&user_token), true)).await;
    assert!(logout.clears_cookie(), "{:?}", logout.headers);
    let gone = call(&app, request("GET", "/whoami", Some(&user_token), true)).await;
    assert_eq!(gone.body, "anonymous");
}

#[tokio::test]
async fn tower_http_layers_around_the_session_layer() {
    // Outermost first: trace, compression and timeout see the answer the
    // session layer made, cookie included.
    let app = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(CompressionLayer::new())
        .layer(timeout())
        .layer(sessions())
        .service(routes());
    sessions_survive(app).await;
}

#[tokio::test]
async fn tower_http_layers_inside_the_session_layer() {
    // The session layer answers some errors itself with an empty body, so
    // the body type below it must implement `Default`. `CompressionBody`
    // does; trace's `ResponseBody` does not, hence the conversion back to
    // axum's `Body` (axum's `Router::layer` does the same on its own).
    let app = ServiceBuilder::new()
        .layer(sessions())
        .map_response(|response: Response<_>| response.map(Body::new))
        .layer(TraceLayer::new_for_http())
        .layer(CompressionLayer::new())
        .layer(timeout())
        .service(routes());
    sessions_survive(app).await;
}

#[tokio::test]
async fn tower_http_layers_around_the_session_layer_with_router_layer() {
    // `Router::layer`: each call wraps the ones before it.
    let app = routes()
        .layer(sessions())
        .layer(timeout())
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());
    sessions_survive(app).await;
}

#[tokio::test]
async fn tower_http_layers_inside_the_session_layer_with_router_layer() {
    let app = routes()
        .layer(timeout())
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .layer(sessions());
    sessions_survive(app).await;
}

#[tokio::test]
async fn a_timeout_around_the_session_layer_saves_nothing_of_the_cancelled_request() {
    // The timeout drops the whole session future: the write `/slow` made
    // before it was cancelled is never committed.
    let app = ServiceBuilder::new()
        .layer(timeout())
        .layer(sessions())
        .service(routes());
    let token = call(&app, request("GET", "/count", None, false))
        .await
        .token()
        .unwrap();
    let timed_out = call(&app, request("GET", "/slow", Some(&token), false)).await;
    assert_eq!(timed_out.status, StatusCode::REQUEST_TIMEOUT);
    assert!(!timed_out.touches_cookie());
    let read = call(&app, request("GET", "/read/slow", Some(&token), false)).await;
    assert_eq!(read.body, "none");
}

#[tokio::test]
async fn nested_routers_share_the_session_and_their_cookie_changes_apply() {
    let account = Router::new()
        .route("/count", get(count))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout));
    let app = Router::new()
        .route("/count", get(count))
        .route("/whoami", get(whoami))
        .nest("/account", account)
        .layer(sessions());

    let outer = common::send(&app, "GET", "/count", None).await;
    let token = outer.token().unwrap();
    assert_eq!(header(&outer, "x-count"), Some("1"));
    let nested = common::send(&app, "GET", "/account/count", Some(&token)).await;
    assert_eq!(
        header(&nested, "x-count"),
        Some("2"),
        "the nested route sees the outer route's session"
    );
    assert!(
        !nested.touches_cookie(),
        "an unchanged id is not sent again"
    );
    let outer = common::send(&app, "GET", "/count", Some(&token)).await;
    assert_eq!(header(&outer, "x-count"), Some("3"));

    // Login in a nested route: its new cookie reaches the client and the
    // outer routes recognise it.
    let login = common::send(&app, "POST", "/account/login/bob", Some(&token)).await;
    assert_eq!(login.status, StatusCode::OK);
    let user_token = login.token().expect("the nested login sets a cookie");
    assert_ne!(user_token, token);
    assert_eq!(
        common::send(&app, "GET", "/whoami", Some(&user_token))
            .await
            .body,
        "bob"
    );
    assert_eq!(
        common::send(&app, "GET", "/whoami", Some(&token))
            .await
            .body,
        "anonymous",
        "the pre-login id died with the nested login"
    );
    let outer = common::send(&app, "GET", "/count", Some(&user_token)).await;
    assert_eq!(
        header(&outer, "x-count"),
        Some("4"),
        "data kept across login"
    );

    // Logout in a nested route clears the cookie and ends the session for
    // the outer routes too.
    let logout = common::send(&app, "POST", "/account/logout", Some(&user_token)).await;
    assert!(logout.clears_cookie(), "{:?}", logout.headers);
    assert_eq!(
        common::send(&app, "GET", "/whoami", Some(&user_token))
            .await
            .body,
        "anonymous"
    );
    let fresh = common::send(&app, "GET", "/account/count", Some(&user_token)).await;
    assert_eq!(header(&fresh, "x-count"), Some("1"));
    assert_ne!(fresh.token(), Some(user_token), "a new session, a new id");
}

/// The service of `examples/hyper_service.rs`: a counter reading the
/// session from the request extensions.
async fn plain_counter(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session = request
        .extensions()
        .get::<Session>()
        .expect("the session layer is installed");
    let visits = session.get::<u64>("visits").unwrap().unwrap_or(0) + 1;
    session.insert("visits", visits).unwrap();
    Ok(Response::new(Full::new(Bytes::from(visits.to_string()))))
}

#[tokio::test]
async fn a_plain_service_fn_served_by_hyper_keeps_a_counter_per_session() {
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = ServiceBuilder::new()
                .map_request(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(peer);
                    request
                })
                .layer(layer.clone())
                .service(service_fn(plain_counter));
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(service);
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                    .unwrap();
            });
        }
    });

    let url = format!("http://{address}/");
    let alice = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let bob = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let visit = |client: &reqwest::Client| {
        let request = client.get(&url);
        async move {
            let response = request.send().await.unwrap();
            let cookie = response
                .headers()
                .get(header::SET_COOKIE)
                .map(|v| v.to_str().unwrap().to_owned());
            (response.text().await.unwrap(), cookie)
        }
    };

    let (body, cookie) = visit(&alice).await;
    assert_eq!(body, "1");
    let cookie = cookie.expect("the first write sets the cookie");
    assert!(
        cookie.starts_with("id=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert_eq!(visit(&alice).await.0, "2");
    assert_eq!(visit(&bob).await.0, "1", "another client, another session");
    assert_eq!(visit(&alice).await.0, "3");
    assert_eq!(visit(&bob).await.0, "2");
    server.abort();
}
