//! Cookie options from the current cookie drafts, through a real axum
//! `Router`: `Partitioned` and the `__Http-` / `__Host-Http-` prefixes.

mod common;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::send_request;
use http::Request;
use tower_session_guard::{CookieConfig, Key, MemoryStore, Session, SessionError, SessionLayer};

fn app(cookie: CookieConfig) -> Router {
    Router::new()
        .route(
            "/count",
            get(|session: Session| async move {
                session.insert("n", 1)?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .layer(SessionLayer::new(MemoryStore::new(10), Key::generate()).with_cookie(cookie))
}

async fn set_cookie(app: &Router) -> String {
    let request = Request::get("/count").body(Body::empty()).unwrap();
    let reply = send_request(app, request).await;
    reply.headers[http::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_partitioned_cookie_carries_the_attribute() {
    let cookie = set_cookie(&app(CookieConfig::default().with_partitioned(true))).await;
    assert!(cookie.starts_with("__Host-id="), "{cookie}");
    assert!(
        cookie.contains("Partitioned") && cookie.contains("Secure"),
        "{cookie}"
    );
    let plain = set_cookie(&app(CookieConfig::default())).await;
    assert!(!plain.contains("Partitioned"), "{plain}");
}

#[test]
#[should_panic(expected = "`with_partitioned(true)` needs a Secure cookie")]
fn a_partitioned_cookie_without_secure_fails_at_start_up() {
    let _ = app(CookieConfig::default()
        .with_name("id")
        .with_secure(false)
        .with_partitioned(true));
}

#[tokio::test]
async fn http_prefixed_names_are_accepted_with_their_flags() {
    let cookie = set_cookie(&app(CookieConfig::default().with_name("__Host-Http-id"))).await;
    assert!(cookie.starts_with("__Host-Http-id="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{cookie}"
    );
}

#[test]
#[should_panic(expected = "keep `with_http_only(true)`")]
fn an_http_prefixed_name_without_http_only_fails_at_start_up() {
    let _ = app(CookieConfig::default()
        .with_name("__Http-id")
        .with_http_only(false));
}
