//! Bad tokens are "no session": never a panic, never an error status.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{app, send, send_cookies, FlakyStore, COOKIE};
use http::{HeaderValue, StatusCode};
use proptest::prelude::*;
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{Key, MemoryStore, SessionLayer};

/// An app, a store that counts loads, and a valid token holding `n = 1`.
async fn setup() -> (axum::Router, FlakyStore, String) {
    let store = FlakyStore::default();
    let app = app(SessionLayer::new(store.clone(), Key::generate()));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    (app, store, token)
}

/// Asserts the request got no session and a normal status from the handler.
async fn assert_no_session(app: &axum::Router, cookies: &[HeaderValue]) -> common::Reply {
    let reply = send_cookies(app, "/read", cookies).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "none", "no session may be adopted");
    assert_eq!(reply.token(), None);
    reply
}

fn cookie(value: &str) -> HeaderValue {
    HeaderValue::try_from(format!("{COOKIE}={value}")).unwrap()
}

#[tokio::test]
async fn a_tampered_token_is_no_session_and_costs_no_store_lookup() {
    let (app, store, token) = setup().await;
    let loads_before = store.loads.load(std::sync::atomic::Ordering::SeqCst);
    for position in [0, 10, 21, token.len() - 1] {
        let mut bytes = token.clone().into_bytes();
        bytes[position] = if bytes[position] == b'x' { b'y' } else { b'x' };
        let tampered = String::from_utf8(bytes).unwrap();
        let reply = assert_no_session(&app, &[cookie(&tampered)]).await;
        assert!(reply.clears_cookie());
    }
    assert_eq!(
        store.loads.load(std::sync::atomic::Ordering::SeqCst),
        loads_before
    );
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_no_session() {
    // Same store, another key: only the signature check can refuse it.
    let (app, store, _) = setup().await;
    let other = common::app(SessionLayer::new(store.clone(), Key::generate()));
    let foreign = send(&other, "GET", "/count", None).await.token().unwrap();
    let loads_before = store.loads.load(std::sync::atomic::Ordering::SeqCst);
    assert_no_session(&app, &[cookie(&foreign)]).await;
    assert_eq!(
        store.loads.load(std::sync::atomic::Ordering::SeqCst),
        loads_before,
        "a forged token never reaches the store"
    );
}

#[tokio::test]
async fn a_truncated_token_is_no_session() {
    let (app, _, token) = setup().await;
    for len in [0, 1, 22, token.len() - 1] {
        assert_no_session(&app, &[cookie(&token[..len])]).await;
    }
}

#[tokio::test]
async fn an_empty_cookie_value_is_no_session() {
    let (app, _, _) = setup().await;
    assert_no_session(&app, &[cookie("")]).await;
    assert_no_session(&app, &[HeaderValue::from_static("__Host-id")]).await;
    assert_no_session(&app, &[HeaderValue::from_static("")]).await;
}

#[tokio::test]
async fn non_base64_bytes_are_no_session() {
    let (app, _, token) = setup().await;
    let same_length_garbage = "!".repeat(token.len());
    assert_no_session(&app, &[cookie(&same_length_garbage)]).await;
    // Standard-alphabet base64 of the same bytes is not the URL-safe form we issue.
    let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    let standard = base64::engine::general_purpose::STANDARD.encode(raw);
    assert_no_session(&app, &[cookie(&standard)]).await;
}

#[tokio::test]
async fn a_16_kib_cookie_header_is_no_session() {
    let (app, _, token) = setup().await;
    assert_no_session(&app, &[cookie(&"A".repeat(16 * 1024))]).await;
    // A huge header that also carries the valid token among junk cookies still works.
    let junk: String = (0..1000).map(|i| format!("junk{i}=xxxxxxxxxx; ")).collect();
    let header = HeaderValue::try_from(format!("{junk}{COOKIE}={token}")).unwrap();
    assert!(header.len() > 16 * 1024);
    assert_eq!(send_cookies(&app, "/read", &[header]).await.body, "1");
}

#[tokio::test]
async fn the_session_cookie_repeated_100_times_with_different_values_is_no_session() {
    let (app, _, token) = setup().await;
    let mut values: Vec<String> = (0..99).map(|i| format!("{COOKIE}=forged{i}")).collect();
    values.push(format!("{COOKIE}={token}"));
    let one_header = HeaderValue::try_from(values.join("; ")).unwrap();
    assert_no_session(&app, &[one_header]).await;
    let many_headers: Vec<HeaderValue> = values
        .iter()
        .map(|v| HeaderValue::try_from(v.as_str()).unwrap())
        .collect();
    assert_no_session(&app, &many_headers).await;
}

#[tokio::test]
async fn the_same_valid_token_repeated_100_times_is_one_session() {
    let (app, _, token) = setup().await;
    let repeated = vec![format!("{COOKIE}={token}"); 100].join("; ");
    let reply = send_cookies(&app, "/read", &[HeaderValue::try_from(repeated).unwrap()]).await;
    assert_eq!(reply.body, "1");
    let headers: Vec<HeaderValue> = (0..100).map(|_| cookie(&token)).collect();
    assert_eq!(send_cookies(&app, "/read", &headers).await.body, "1");
}

#[tokio::test]
async fn non_utf8_cookie_bytes_are_no_session() {
    let (app, _, _) = setup().await;
    let header = HeaderValue::from_bytes(b"__Host-id=\xff\xfe\xfd; other=\x80").unwrap();
    assert_no_session(&app, &[header]).await;
}

#[tokio::test]
async fn a_valid_token_replayed_after_logout_is_no_session() {
    let (app, _, token) = setup().await;
    send(&app, "POST", "/logout", Some(&token)).await;
    let reply = assert_no_session(&app, &[cookie(&token)]).await;
    assert!(reply.clears_cookie());
}

#[tokio::test]
async fn a_valid_token_replayed_after_idle_expiry_is_no_session() {
    let clock = ManualClock::new();
    let app = app(SessionLayer::new(MemoryStore::new(10), Key::generate())
        .with_idle_timeout(Duration::from_secs(60))
        .with_clock(clock.clone()));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    clock.advance(Duration::from_secs(61));
    assert_no_session(&app, &[cookie(&token)]).await;
    clock.advance(Duration::from_secs(1));
    assert_no_session(&app, &[cookie(&token)]).await;
}

#[tokio::test]
async fn a_valid_token_replayed_after_absolute_expiry_is_no_session() {
    let clock = ManualClock::new();
    let app = app(SessionLayer::new(MemoryStore::new(10), Key::generate())
        .with_idle_timeout(Duration::from_secs(600))
        .with_absolute_timeout(Duration::from_secs(900))
        .with_clock(clock.clone()));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(300));
        send(&app, "GET", "/count", Some(&token)).await;
    }
    assert_no_session(&app, &[cookie(&token)]).await;
}

#[tokio::test]
async fn an_unknown_but_authentic_id_is_never_adopted() {
    // Strict mode: a correctly signed token whose session the store does not
    // hold (e.g. a store was flushed) gets a fresh session with a new id.
    let key = Key::generate();
    let app_a = app(SessionLayer::new(MemoryStore::new(10), key.clone()));
    let app_b = app(SessionLayer::new(MemoryStore::new(10), key));
    let token = send(&app_a, "GET", "/count", None).await.token().unwrap();
    let reply = send(&app_b, "GET", "/count", Some(&token)).await;
    assert_eq!(reply.body, "1");
    let new_token = reply.token().unwrap();
    assert_ne!(new_token, token, "the unknown id was not adopted");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_cookie_headers_never_panic_or_adopt_a_session(
        headers in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "[ -~]{0,120}".prop_map(|s| format!("{COOKIE}={s}").into_bytes()),
                "[A-Za-z0-9_-]{43}".prop_map(|s| format!("a=b; {COOKIE}={s}; c=d").into_bytes()),
            ],
            0..4,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (app, _, _) = setup().await;
            let values: Vec<HeaderValue> = headers
                .iter()
                .filter_map(|bytes| HeaderValue::from_bytes(bytes).ok())
                .collect();
            let reply = send_cookies(&app, "/read", &values).await;
            assert_eq!(reply.status, StatusCode::OK, "the handler's status comes through");
            assert_eq!(reply.body, "none", "no session is adopted");
            assert_eq!(reply.token(), None);
        });
    }
}
