//! Idle and absolute timeouts, enforced from the stored record.

mod common;

use std::time::Duration;

use common::{app, send, FlakyStore};
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{Key, MemoryStore, SessionLayer};

const IDLE: Duration = Duration::from_secs(30 * 60);
const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);

fn timed_layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_idle_timeout(IDLE)
        .with_absolute_timeout(ABSOLUTE)
        .with_clock(clock.clone())
}

#[tokio::test]
async fn idle_expiry_with_a_manual_clock() {
    let clock = ManualClock::new();
    let app = app(timed_layer(&clock));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    clock.advance(IDLE - Duration::from_secs(1));
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "1");

    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    clock.advance(IDLE);
    let reply = send(&app, "GET", "/read", Some(&token)).await;
    assert_eq!(reply.body, "none");
    assert!(reply.clears_cookie());
}

#[tokio::test]
async fn absolute_expiry_with_a_manual_clock() {
    let clock = ManualClock::new();
    let app = app(timed_layer(&clock));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    // Stay active: a request every 10 minutes keeps the idle timer fresh.
    let mut elapsed = Duration::ZERO;
    while elapsed + Duration::from_secs(600) < ABSOLUTE {
        clock.advance(Duration::from_secs(600));
        elapsed += Duration::from_secs(600);
        assert_eq!(
            send(&app, "GET", "/read", Some(&token)).await.body,
            "1",
            "alive at {elapsed:?}"
        );
    }
    clock.advance(ABSOLUTE - elapsed);
    let reply = send(&app, "GET", "/read", Some(&token)).await;
    assert_eq!(
        reply.body, "none",
        "the absolute deadline ends an active session"
    );
    assert!(reply.clears_cookie());
}

#[tokio::test]
async fn touching_within_the_idle_window_keeps_the_session_until_the_absolute_deadline() {
    let clock = ManualClock::new();
    let app = app(timed_layer(&clock));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    // Each gap is 29 minutes: longer than the idle timeout in total, never in one go.
    for _ in 0..16 {
        clock.advance(Duration::from_secs(29 * 60));
        assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "1");
    }
    clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "none");
}

#[tokio::test]
async fn reads_record_activity_only_after_a_quarter_of_the_idle_window() {
    let clock = ManualClock::new();
    let store = FlakyStore::default();
    let layer = SessionLayer::new(store.clone(), Key::generate())
        .with_idle_timeout(IDLE)
        .with_clock(clock.clone());
    let app = app(layer);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    let after_create = store.writes();
    for _ in 0..20 {
        clock.advance(Duration::from_secs(60));
        send(&app, "GET", "/read", Some(&token)).await;
    }
    // 20 minutes of reads, one a minute: touches at 7.5 and 15 minutes only.
    assert_eq!(store.writes() - after_create, 2);
}

#[tokio::test]
async fn idle_expiry_with_real_sub_second_sleeps() {
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_idle_timeout(Duration::from_millis(200))
        .with_absolute_timeout(Duration::from_secs(60));
    let app = app(layer);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "1");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "none");
}

#[tokio::test]
async fn absolute_expiry_with_real_sub_second_sleeps() {
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_idle_timeout(Duration::from_secs(60))
        .with_absolute_timeout(Duration::from_millis(400));
    let app = app(layer);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "1");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "none");
}

#[test]
#[should_panic(expected = "idle timeout must be at least one millisecond")]
fn a_sub_millisecond_idle_timeout_fails_at_start_up() {
    let _ = SessionLayer::new(MemoryStore::new(1), Key::generate())
        .with_idle_timeout(Duration::from_micros(500));
}

#[test]
#[should_panic(expected = "absolute timeout must be at least one millisecond")]
fn a_zero_absolute_timeout_fails_at_start_up() {
    let _ = SessionLayer::new(MemoryStore::new(1), Key::generate())
        .with_absolute_timeout(Duration::ZERO);
}

#[tokio::test]
async fn a_persistent_cookie_carries_the_time_left_to_the_absolute_deadline() {
    let clock = ManualClock::new();
    let app = app(SessionLayer::new(MemoryStore::new(10), Key::generate())
        .with_absolute_timeout(Duration::from_secs(3600))
        .with_cookie(tower_session_guard::CookieConfig::default().with_persistent(true))
        .with_clock(clock.clone()));
    let token = send(&app, "POST", "/login/pat", None)
        .await
        .token()
        .unwrap();
    clock.advance(Duration::from_secs(600));
    let regenerated = send(&app, "POST", "/regenerate", Some(&token)).await;
    let cookie = &regenerated.session_cookies()[0];
    assert!(cookie.contains("Max-Age=3000"), "{cookie}");
}

#[tokio::test]
async fn the_absolute_timeout_counts_from_sign_in_not_from_the_first_visit() {
    let clock = ManualClock::new();
    let layer = SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_idle_timeout(ABSOLUTE * 4)
        .with_absolute_timeout(ABSOLUTE)
        .with_clock(clock.clone());
    let app = app(layer);
    // An anonymous visitor browses for most of the absolute window...
    let anonymous = send(&app, "GET", "/count", None).await.token().unwrap();
    clock.advance(ABSOLUTE - Duration::from_secs(3600));
    // ...then signs in: the window starts again, and the data stays.
    let signed_in = send(&app, "POST", "/login/ann", Some(&anonymous))
        .await
        .token()
        .unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&signed_in)).await.body,
        "ann",
        "signed in for two hours of an eight-hour window"
    );
    assert_eq!(send(&app, "GET", "/read", Some(&signed_in)).await.body, "1");
    clock.advance(ABSOLUTE - Duration::from_secs(2 * 3600));
    let reply = send(&app, "GET", "/whoami", Some(&signed_in)).await;
    assert_eq!(reply.body, "anonymous", "eight hours after sign-in it ends");
    assert!(reply.clears_cookie());
}
