//! Tokens in a request header (API clients, gRPC) instead of a cookie.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use common::{send_request, Reply};
use http::{HeaderMap, Request, StatusCode};
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{Key, MemoryStore, OnLimit, SessionEvent, SessionLayer, Transport};

const HEADER: &str = "x-session-token";

async fn call(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    send_request(app, request).await
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn header_app(layer: SessionLayer) -> Router {
    common::app(layer.with_transport(Transport::header(HEADER)))
}

#[tokio::test]
async fn a_header_token_carries_the_session_and_comes_back_in_the_same_header() {
    let app = header_app(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let first = call(&app, "GET", "/count", &[]).await;
    assert!(
        first.headers.get(http::header::SET_COOKIE).is_none(),
        "no cookie with a header transport"
    );
    let token = header(&first.headers, HEADER).expect("the new token comes back in the header");
    assert_eq!(first.headers[http::header::CACHE_CONTROL], "no-store");
    assert_eq!(
        call(&app, "GET", "/count", &[(HEADER, &token)]).await.body,
        "2"
    );

    let login = call(&app, "POST", "/login/api-user", &[(HEADER, &token)]).await;
    let logged_in = header(&login.headers, HEADER).unwrap();
    assert_ne!(logged_in, token);
    assert_eq!(
        call(&app, "GET", "/whoami", &[(HEADER, &logged_in)])
            .await
            .body,
        "api-user"
    );
    assert_eq!(
        call(&app, "GET", "/read", &[(HEADER, &logged_in)])
            .await
            .body,
        "2",
        "data survived the login"
    );
}

#[tokio::test]
async fn logout_answers_an_empty_header_and_an_event() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let app = header_app(
        SessionLayer::new(MemoryStore::new(100), Key::generate())
            .with_event_handler(move |e: &SessionEvent| sink.lock().unwrap().push(e.clone())),
    );
    let token = header(&call(&app, "POST", "/login/bo", &[]).await.headers, HEADER).unwrap();
    let logout = call(&app, "POST", "/logout", &[(HEADER, &token)]).await;
    assert_eq!(
        header(&logout.headers, HEADER).as_deref(),
        Some(""),
        "an empty value removes the token"
    );
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, SessionEvent::TokenRemoved { session: Some(_) })));
    assert_eq!(
        call(&app, "GET", "/whoami", &[(HEADER, &token)]).await.body,
        "anonymous"
    );
}

#[tokio::test]
async fn bearer_tokens_work_in_any_case_and_other_schemes_are_ignored() {
    let app = common::app(
        SessionLayer::new(MemoryStore::new(100), Key::generate())
            .with_transport(Transport::bearer()),
    );
    let login = call(&app, "POST", "/login/cat", &[]).await;
    let value = header(&login.headers, "authorization").unwrap();
    let token = value
        .strip_prefix("Bearer ")
        .expect("the token comes back as a bearer token");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let reply = call(
            &app,
            "GET",
            "/whoami",
            &[("authorization", &format!("{scheme} {token}"))],
        )
        .await;
        assert_eq!(reply.body, "cat", "{scheme}");
    }
    let basic = call(
        &app,
        "GET",
        "/whoami",
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_eq!(basic.body, "anonymous");
    assert!(
        basic.headers.get("authorization").is_none(),
        "a Basic header is not ours to clear"
    );
    let empty = call(&app, "GET", "/whoami", &[("authorization", "Bearer")]).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, "anonymous");
}

#[tokio::test]
async fn odd_header_values_are_no_session_never_an_error() {
    let app = header_app(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let token = header(&call(&app, "GET", "/count", &[]).await.headers, HEADER).unwrap();
    let spaced = format!("   {token}  ");
    assert_eq!(
        call(&app, "GET", "/read", &[(HEADER, &spaced)]).await.body,
        "1",
        "surrounding spaces are trimmed"
    );
    let two_values = call(&app, "GET", "/read", &[(HEADER, &token), (HEADER, &token)]).await;
    assert_eq!(two_values.body, "none", "a header sent twice is ambiguous");
    let comma = call(
        &app,
        "GET",
        "/read",
        &[(HEADER, &format!("{token}, {token}"))],
    )
    .await;
    assert_eq!(comma.body, "none");
    let huge = "A".repeat(16 * 1024);
    let reply = call(&app, "GET", "/read", &[(HEADER, &huge)]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "none")
    );
    assert_eq!(
        header(&reply.headers, HEADER).as_deref(),
        Some(""),
        "the bad token is cleared"
    );
}

#[tokio::test]
async fn cookie_or_header_prefers_the_cookie_and_answers_the_way_the_token_came() {
    let app = common::app(
        SessionLayer::new(MemoryStore::new(100), Key::generate())
            .with_transport(Transport::cookie_or_header(HEADER)),
    );
    let browser = call(&app, "GET", "/count", &[]).await;
    let cookie_token = browser.token().expect("no token came: the cookie is used");
    assert!(browser.headers.get(HEADER).is_none());

    let api = call(&app, "POST", "/login/dan", &[(HEADER, &cookie_token)]).await;
    let header_token =
        header(&api.headers, HEADER).expect("a header token is answered in the header");
    assert!(api.headers.get(http::header::SET_COOKIE).is_none());

    let other = call(&app, "GET", "/count", &[]).await.token().unwrap();
    let both = call(
        &app,
        "GET",
        "/whoami",
        &[
            ("cookie", &format!("{}={other}", common::COOKIE)),
            (HEADER, &header_token),
        ],
    )
    .await;
    assert_eq!(both.body, "anonymous", "the cookie took precedence");
}

#[tokio::test]
async fn every_rule_applies_to_header_tokens_too() {
    let clock = ManualClock::new();
    let app = header_app(
        SessionLayer::new(MemoryStore::new(100), Key::generate())
            .with_idle_timeout(Duration::from_secs(60))
            .with_session_limit(1, OnLimit::EvictLeastRecent)
            .with_clock(clock.clone()),
    );
    // Strict mode: an authentic token the store does not know is not adopted.
    let other = header_app(SessionLayer::new(MemoryStore::new(10), Key::generate()));
    let foreign = header(&call(&other, "GET", "/count", &[]).await.headers, HEADER).unwrap();
    assert_eq!(
        call(&app, "GET", "/read", &[(HEADER, &foreign)]).await.body,
        "none"
    );
    // The limit evicts the older session.
    let first = header(&call(&app, "POST", "/login/eve", &[]).await.headers, HEADER).unwrap();
    let second = header(&call(&app, "POST", "/login/eve", &[]).await.headers, HEADER).unwrap();
    assert_eq!(
        call(&app, "GET", "/whoami", &[(HEADER, &first)]).await.body,
        "anonymous"
    );
    assert_eq!(
        call(&app, "GET", "/whoami", &[(HEADER, &second)])
            .await
            .body,
        "eve"
    );
    // Idle expiry.
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        call(&app, "GET", "/whoami", &[(HEADER, &second)])
            .await
            .body,
        "anonymous"
    );
}
