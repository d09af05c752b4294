//! Raw session ids never appear in `tracing` output, events or errors.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{app, forbidden_forms, send, FlakyStore, LogCapture};
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{Key, SessionEvent, SessionLayer};

#[tokio::test]
async fn raw_ids_never_appear_in_logs_or_events() {
    let logs = LogCapture::install();
    let events = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&events);
    let clock = ManualClock::new();
    let store = FlakyStore::default();
    let layer = SessionLayer::new(store.clone(), Key::generate())
        .with_idle_timeout(Duration::from_secs(60))
        .with_clock(clock.clone())
        .with_event_handler(move |e: &SessionEvent| {
            sink.lock().unwrap().push_str(&format!("{e:?}\n"))
        });
    let app = app(layer);

    let mut tokens = Vec::new();
    let first = send(&app, "GET", "/count", None).await.token().unwrap();
    tokens.push(first.clone());
    let logged_in = send(&app, "POST", "/login/zoe", Some(&first))
        .await
        .token()
        .unwrap();
    tokens.push(logged_in.clone());
    let regenerated = send(&app, "POST", "/regenerate", Some(&logged_in))
        .await
        .token()
        .unwrap();
    tokens.push(regenerated.clone());
    send(&app, "GET", "/read", Some(&first)).await; // unknown session
    store.fail_reads.store(true, Ordering::SeqCst);
    send(&app, "GET", "/read", Some(&regenerated)).await; // store error
    store.fail_reads.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(61));
    send(&app, "GET", "/read", Some(&regenerated)).await; // expiry
    let fresh = send(&app, "GET", "/count", None).await.token().unwrap();
    tokens.push(fresh.clone());
    send(&app, "POST", "/logout", Some(&fresh)).await;

    let logs = logs.text();
    let events = events.lock().unwrap().clone();
    assert!(
        logs.contains("session event"),
        "the capture saw the layer's output:\n{logs}"
    );
    for kind in [
        "Created",
        "LoggedIn",
        "Regenerated",
        "Rejected",
        "Expired",
        "LoggedOut",
    ] {
        assert!(
            events.contains(kind),
            "{kind} missing from events:\n{events}"
        );
    }
    for token in &tokens {
        for form in forbidden_forms(token) {
            assert!(
                !logs.contains(&form),
                "raw id form {form:?} found in logs:\n{logs}"
            );
            assert!(
                !events.contains(&form),
                "raw id form {form:?} found in events:\n{events}"
            );
        }
    }
}
