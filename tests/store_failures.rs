//! A failing store answers 503 with a tracing error; nothing is silently dropped.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use common::{send, FlakyStore, LogCapture};
use http::StatusCode;
use tower_session_guard::{Key, Session, SessionLayer};

fn counting_app(store: &FlakyStore, calls: &Arc<AtomicUsize>) -> Router {
    let calls = Arc::clone(calls);
    Router::new()
        .route(
            "/count",
            get(move |session: Session| {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let n: u64 = session.get("n").unwrap().unwrap_or(0);
                    session.insert("n", n + 1).unwrap();
                    (n + 1).to_string()
                }
            }),
        )
        .route(
            "/login",
            get(|session: Session| async move {
                match session.login("ann").await {
                    Ok(()) => "ok".to_owned(),
                    Err(err) => format!("{}", err.status()),
                }
            }),
        )
        .layer(SessionLayer::new(store.clone(), Key::generate()))
}

#[tokio::test]
async fn a_store_error_on_load_answers_503_without_calling_the_handler() {
    let store = FlakyStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counting_app(&store, &calls);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let logs = LogCapture::install();
    store.fail_reads.store(true, Ordering::SeqCst);
    let reply = send(&app, "GET", "/count", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler was not called"
    );
    assert!(!reply.touches_cookie(), "the cookie is left alone");
    let text = logs.text();
    assert!(
        text.contains("ERROR") && text.contains("while loading"),
        "{text}"
    );

    store.fail_reads.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&app, "GET", "/count", Some(&token)).await.body,
        "2",
        "the session survived"
    );
}

#[tokio::test]
async fn a_store_error_on_commit_answers_503_instead_of_the_handler_response() {
    let store = FlakyStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counting_app(&store, &calls);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();

    let logs = LogCapture::install();
    store.fail_writes.store(true, Ordering::SeqCst);
    let reply = send(&app, "GET", "/count", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(
        reply.body, "2",
        "the handler's response is not sent as if saved"
    );
    assert!(logs.text().contains("while saving"), "{}", logs.text());

    // A new session that cannot be created is a 503 too, not a silent no-op.
    let reply = send(&app, "GET", "/count", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.token(), None);

    store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(send(&app, "GET", "/count", Some(&token)).await.body, "2");
}

#[tokio::test]
async fn a_store_error_during_login_leaves_the_old_session_valid() {
    let store = FlakyStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counting_app(&store, &calls);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    store.fail_writes.store(true, Ordering::SeqCst);
    let reply = send(&app, "GET", "/login", Some(&token)).await;
    assert_eq!(reply.body, "503 Service Unavailable");
    assert_eq!(reply.token(), None);
    store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(send(&app, "GET", "/count", Some(&token)).await.body, "2");
}
