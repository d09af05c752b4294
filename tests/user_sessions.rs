//! Per-user session control: limits, logout everywhere, admin revocation,
//! renewal with grace, key rotation.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use common::{login_as as login, send, whoami_with as whoami};
use http::StatusCode;
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{
    Key, MemoryStore, OnLimit, Session, SessionError, SessionEvent, SessionHandle, SessionLayer,
};

type Events = Arc<Mutex<Vec<SessionEvent>>>;

fn recording(layer: SessionLayer) -> (SessionLayer, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let layer =
        layer.with_event_handler(move |e: &SessionEvent| sink.lock().unwrap().push(e.clone()));
    (layer, events)
}

fn app(layer: SessionLayer) -> Router {
    common::app(layer.clone()).merge(
        Router::new()
            .route("/everywhere", post(everywhere))
            .route("/others", post(others))
            .route("/login-status/{user}", post(login_status))
            .route(
                "/fp",
                get(|s: Session| async move {
                    s.fingerprint().map(|f| f.to_string()).unwrap_or_default()
                }),
            )
            .layer(layer),
    )
}

async fn everywhere(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_everywhere().await?.to_string())
}

async fn others(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_others().await?.to_string())
}

async fn login_status(session: Session, Path(user): Path<String>) -> String {
    match session.login(user).await {
        Ok(()) => "ok".to_owned(),
        Err(err) => err.to_string(),
    }
}

fn kinds(events: &Events) -> Vec<&'static str> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(SessionEvent::kind)
        .collect()
}

#[tokio::test]
async fn the_least_recently_used_session_is_evicted_at_the_limit() {
    let clock = ManualClock::new();
    let (layer, events) = recording(
        SessionLayer::new(MemoryStore::new(100), Key::generate())
            .with_session_limit(3, OnLimit::EvictLeastRecent)
            .with_clock(clock.clone()),
    );
    let app = app(layer);
    let first = login(&app, "ana").await;
    clock.advance(Duration::from_secs(60));
    let second = login(&app, "ana").await;
    clock.advance(Duration::from_secs(60));
    let third = login(&app, "ana").await;
    // Use the first session again, long enough later to record activity.
    clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(whoami(&app, &first).await.body, "ana");

    let fourth = login(&app, "ana").await;
    let evicted = whoami(&app, &second).await;
    assert_eq!(
        evicted.body, "anonymous",
        "the least recently used session is gone"
    );
    assert!(evicted.clears_cookie());
    for token in [&first, &third, &fourth] {
        assert_eq!(whoami(&app, token).await.body, "ana");
    }
    assert!(kinds(&events).contains(&"evicted"));
}

#[tokio::test]
async fn reject_login_refuses_a_login_over_the_limit_and_changes_nothing() {
    let app = app(SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_session_limit(2, OnLimit::RejectLogin));
    let a = login(&app, "ben").await;
    let b = login(&app, "ben").await;
    let anonymous = send(&app, "GET", "/count", None).await.token().unwrap();
    let refused = send(&app, "POST", "/login/ben", Some(&anonymous)).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.body.contains("most allowed"), "{}", refused.body);
    assert_eq!(refused.token(), None, "no new id was issued");
    assert_eq!(whoami(&app, &a).await.body, "ben");
    assert_eq!(whoami(&app, &b).await.body, "ben");
    let still = whoami(&app, &anonymous).await;
    assert_eq!(still.body, "anonymous");
    assert_eq!(
        send(&app, "GET", "/read", Some(&anonymous)).await.body,
        "1",
        "the anonymous session is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_logins_never_overshoot_a_limit_of_three() {
    let layer = SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_session_limit(3, OnLimit::EvictLeastRecent);
    let admin = layer.sessions();
    let app = app(layer);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { login(&app, "cy").await })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    assert_eq!(admin.list("cy").await.unwrap().len(), 3);
    let mut alive = 0;
    for token in &tokens {
        if whoami(&app, token).await.body == "cy" {
            alive += 1;
        }
    }
    assert_eq!(alive, 3, "exactly three of the twenty tokens still work");
}

#[tokio::test]
async fn a_per_user_limit_applies_per_role() {
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate()).with_session_limit_fn(
        |user: &str| match user {
            "admin" => 1,
            "banned" => 0,
            _ => 3,
        },
        OnLimit::RejectLogin,
    );
    let app = app(layer);
    login(&app, "admin").await;
    assert_eq!(
        send(&app, "POST", "/login/admin", None).await.status,
        StatusCode::CONFLICT
    );
    for _ in 0..3 {
        login(&app, "dee").await;
    }
    assert_eq!(
        send(&app, "POST", "/login/dee", None).await.status,
        StatusCode::CONFLICT
    );
    let banned = send(&app, "POST", "/login/banned", None).await;
    assert_eq!(
        banned.status,
        StatusCode::CONFLICT,
        "a limit of 0 refuses every login"
    );
}

#[test]
#[should_panic(expected = "a session limit of 0 would refuse every login")]
fn a_limit_of_zero_fails_at_start_up() {
    let _ = SessionLayer::new(MemoryStore::new(1), Key::generate())
        .with_session_limit(0, OnLimit::RejectLogin);
}

#[tokio::test]
async fn logout_everywhere_destroys_every_session_of_the_user() {
    let (layer, events) = recording(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let app = app(layer);
    let tokens: Vec<String> = futures_join(&app, "eve", 4).await;
    let other_user = login(&app, "fay").await;
    let reply = send(&app, "POST", "/everywhere", Some(&tokens[0])).await;
    assert_eq!(reply.body, "4");
    assert!(reply.clears_cookie());
    for token in &tokens {
        assert_eq!(whoami(&app, token).await.body, "anonymous");
    }
    assert_eq!(
        whoami(&app, &other_user).await.body,
        "fay",
        "other users are untouched"
    );
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "logged_out")
            .count(),
        4
    );
}

#[tokio::test]
async fn logout_others_keeps_the_current_session() {
    let app = app(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let tokens: Vec<String> = futures_join(&app, "gil", 3).await;
    let reply = send(&app, "POST", "/others", Some(&tokens[2])).await;
    assert_eq!(reply.body, "2");
    assert!(!reply.touches_cookie());
    assert_eq!(whoami(&app, &tokens[2]).await.body, "gil");
    assert_eq!(whoami(&app, &tokens[0]).await.body, "anonymous");
    assert_eq!(whoami(&app, &tokens[1]).await.body, "anonymous");
    // Anonymous sessions have no "others".
    let anonymous = send(&app, "GET", "/count", None).await.token().unwrap();
    assert_eq!(
        send(&app, "POST", "/others", Some(&anonymous)).await.body,
        "0"
    );
}

async fn futures_join(app: &Router, user: &str, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        tokens.push(login(app, user).await);
    }
    tokens
}

#[tokio::test]
async fn the_admin_handle_lists_and_revokes_without_ids() {
    let (layer, events) = recording(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let admin = layer.sessions();
    let app = app(layer);
    let first = login(&app, "hal").await;
    let second = login(&app, "hal").await;

    let sessions = admin.list("hal").await.unwrap();
    assert_eq!(sessions.len(), 2);
    for info in &sessions {
        assert_eq!(info.user_id.as_deref(), Some("hal"));
        assert!(info.created <= info.last_seen && info.last_seen < info.expires);
        let shown = format!("{info:?} {}", info.handle);
        assert!(
            !shown.contains(&first) && !shown.contains(&second),
            "{shown}"
        );
    }

    // Revoke the session behind `first`, found by the fingerprint its own request reports.
    let first_fingerprint = fingerprint_of(&app, &first).await;
    let target = sessions
        .iter()
        .find(|info| info.fingerprint.to_string() == first_fingerprint)
        .unwrap();
    let handle: SessionHandle = target.handle.to_string().parse().unwrap();
    assert!(admin.revoke(&handle).await.unwrap());
    assert!(
        !admin.revoke(&handle).await.unwrap(),
        "revoking twice is a no-op"
    );
    let revoked = whoami(&app, &first).await;
    assert_eq!(revoked.body, "anonymous");
    assert!(revoked.clears_cookie());
    assert_eq!(whoami(&app, &second).await.body, "hal");
    assert!(kinds(&events).contains(&"revoked"));

    assert_eq!(admin.revoke_user("hal").await.unwrap(), 1);
    assert_eq!(whoami(&app, &second).await.body, "anonymous");
}

async fn fingerprint_of(app: &Router, token: &str) -> String {
    send(app, "GET", "/fp", Some(token)).await.body
}

#[tokio::test]
async fn admin_calls_with_odd_input_are_clear_no_ops() {
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate());
    let admin = layer.sessions();
    assert!(admin.list("nobody").await.unwrap().is_empty());
    assert!(admin.list("").await.unwrap().is_empty());
    assert_eq!(admin.revoke_user("nobody").await.unwrap(), 0);
    assert_eq!(admin.revoke_user("").await.unwrap(), 0);
    assert_eq!(admin.revoke_user(&"x".repeat(10 * 1024)).await.unwrap(), 0);
    let unknown: SessionHandle = "ab".repeat(32).parse().unwrap();
    assert!(!admin.revoke(&unknown).await.unwrap());
    assert!("not-a-handle".parse::<SessionHandle>().is_err());
}

#[tokio::test]
async fn empty_and_oversized_user_ids_are_refused_by_login() {
    let app = app(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let long = "u".repeat(10 * 1024);
    let reply = send(&app, "POST", &format!("/login-status/{long}"), None).await;
    assert!(
        reply.body.contains("longer than 1024 bytes"),
        "{}",
        reply.body
    );
    assert_eq!(reply.token(), None);
    let app_empty = Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                s.login("")
                    .await
                    .map(|()| "ok")
                    .unwrap_or_else(|_| "refused")
            }),
        )
        .layer(SessionLayer::new(MemoryStore::new(10), Key::generate()));
    assert_eq!(send(&app_empty, "GET", "/", None).await.body, "refused");
}

#[tokio::test]
async fn the_user_index_does_not_outgrow_the_store() {
    let store = MemoryStore::new(50);
    let app = app(SessionLayer::new(store.clone(), Key::generate()));
    for i in 0..500 {
        login(&app, &format!("user{i}")).await;
    }
    store.run_pending_tasks().await;
    assert!(
        store.indexed_users() <= 50,
        "{} users indexed",
        store.indexed_users()
    );
}

#[tokio::test]
async fn expired_sessions_drop_out_of_the_index() {
    let clock = ManualClock::new();
    let store = MemoryStore::new(100);
    let layer = SessionLayer::new(store.clone(), Key::generate())
        .with_idle_timeout(Duration::from_secs(60))
        .with_clock(clock.clone());
    let admin = layer.sessions();
    let app = app(layer);
    login(&app, "ida").await;
    login(&app, "ida").await;
    assert_eq!(admin.list("ida").await.unwrap().len(), 2);
    clock.advance(Duration::from_secs(61));
    assert!(admin.list("ida").await.unwrap().is_empty());
    store.run_pending_tasks().await;
    assert_eq!(store.indexed_users(), 0, "the dead entries were dropped");
}

#[tokio::test]
async fn renewal_issues_a_new_id_and_the_old_one_works_only_during_grace() {
    let clock = ManualClock::new();
    let (layer, events) = recording(
        SessionLayer::new(MemoryStore::new(100), Key::generate())
            .with_renewal_interval(Duration::from_secs(15 * 60), Duration::from_secs(30))
            .with_clock(clock.clone()),
    );
    let app = app(layer);
    let anonymous = send(&app, "GET", "/count", None).await.token().unwrap();
    let old = send(&app, "POST", "/login/jo", Some(&anonymous))
        .await
        .token()
        .unwrap();

    clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(whoami(&app, &old).await.token(), None, "not due yet");

    clock.advance(Duration::from_secs(60));
    let renewed = whoami(&app, &old).await;
    assert_eq!(renewed.body, "jo");
    let new = renewed.token().expect("a due session gets a new id");
    assert_ne!(new, old);
    assert!(kinds(&events).contains(&"renewed"));

    // Inside the grace period the old id still works, and is pointed at the new id.
    clock.advance(Duration::from_secs(29));
    let in_grace = whoami(&app, &old).await;
    assert_eq!(in_grace.body, "jo");
    assert_eq!(in_grace.token().as_deref(), Some(new.as_str()));
    assert_eq!(
        send(&app, "GET", "/read", Some(&new)).await.body,
        "1",
        "data kept"
    );

    // After it, the old id is dead and the new one lives on.
    clock.advance(Duration::from_secs(2));
    let late = whoami(&app, &old).await;
    assert_eq!(late.body, "anonymous");
    assert!(late.clears_cookie());
    assert_eq!(whoami(&app, &new).await.body, "jo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_the_old_id_at_renewal_time_all_lands_on_one_new_id() {
    let clock = ManualClock::new();
    let store = MemoryStore::new(100);
    let layer = SessionLayer::new(store, Key::generate())
        .with_renewal_interval(Duration::from_secs(60), Duration::from_secs(10))
        .with_clock(clock.clone());
    let app = app(layer);
    let old = login(&app, "kit").await;
    clock.advance(Duration::from_secs(61));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            let old = old.clone();
            tokio::spawn(
                async move { send(&app, "POST", &format!("/set/k{i}/v{i}"), Some(&old)).await },
            )
        })
        .collect();
    let mut new_tokens = std::collections::HashSet::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        new_tokens.insert(reply.token().expect("every response hands out the new id"));
    }
    assert_eq!(new_tokens.len(), 1, "all requests end on the same new id");
    let new = new_tokens.into_iter().next().unwrap();
    assert_ne!(new, old);
    assert_eq!(whoami(&app, &new).await.body, "kit");
    for i in 0..40 {
        assert_eq!(
            send(&app, "GET", &format!("/get/k{i}"), Some(&new))
                .await
                .body,
            format!("v{i}")
        );
    }
}

#[tokio::test]
async fn renewal_keeps_the_absolute_deadline() {
    let clock = ManualClock::new();
    let app = app(SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_idle_timeout(Duration::from_secs(3600))
        .with_absolute_timeout(Duration::from_secs(3 * 3600))
        .with_renewal_interval(Duration::from_secs(900), Duration::ZERO)
        .with_clock(clock.clone()));
    let mut token = login(&app, "lu").await;
    for _ in 0..11 {
        clock.advance(Duration::from_secs(950));
        let reply = whoami(&app, &token).await;
        assert_eq!(reply.body, "lu");
        let next = reply.token().unwrap();
        assert_eq!(
            whoami(&app, &token).await.body,
            "anonymous",
            "zero grace kills the old id at once"
        );
        token = next;
    }
    clock.advance(Duration::from_secs(950));
    assert_eq!(
        whoami(&app, &token).await.body,
        "anonymous",
        "renewals do not extend the absolute deadline"
    );
}

#[tokio::test]
async fn key_rotation_accepts_fallback_keys_and_reissues_with_the_primary() {
    let store = MemoryStore::new(100);
    let old_key = Key::generate();
    let new_key = Key::generate();
    let before = app(SessionLayer::new(store.clone(), old_key.clone()));
    let token = login(&before, "mo").await;

    let during =
        app(SessionLayer::new(store.clone(), new_key.clone()).with_fallback_keys([old_key]));
    let reply = whoami(&during, &token).await;
    assert_eq!(reply.body, "mo");
    let resigned = reply.token().expect("a fallback-signed token is re-issued");
    assert_ne!(resigned, token);
    assert_eq!(
        whoami(&during, &resigned).await.token(),
        None,
        "a primary-signed token is left alone"
    );

    let after = app(SessionLayer::new(store, new_key));
    assert_eq!(whoami(&after, &resigned).await.body, "mo");
    let removed = whoami(&after, &token).await;
    assert_eq!(
        removed.body, "anonymous",
        "a token signed with a removed key is no session"
    );
}

#[tokio::test]
async fn revoking_a_handle_listed_before_a_renewal_ends_the_renewed_session() {
    let clock = ManualClock::new();
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_renewal_interval(Duration::from_secs(15 * 60), Duration::from_secs(30))
        .with_clock(clock.clone());
    let admin = layer.sessions();
    let app = app(layer);
    let old = login(&app, "ned").await;
    let listed = admin.list("ned").await.unwrap();
    clock.advance(Duration::from_secs(16 * 60));
    let renewed = whoami(&app, &old).await.token().expect("renewed");
    assert!(admin.revoke(&listed[0].handle).await.unwrap());
    assert_eq!(
        whoami(&app, &renewed).await.body,
        "anonymous",
        "the renewed session is gone too"
    );
}

#[tokio::test]
async fn a_logout_racing_a_renewal_still_ends_the_session() {
    let clock = ManualClock::new();
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_renewal_interval(Duration::from_secs(15 * 60), Duration::from_secs(30))
        .with_clock(clock.clone());
    let gate = common::Gate::default();
    let slow = Router::new()
        .route(
            "/slow-logout",
            post({
                let gate = gate.clone();
                move |session: Session| {
                    let gate = gate.clone();
                    async move {
                        gate.hold().await;
                        session.logout().await.unwrap();
                        "bye"
                    }
                }
            }),
        )
        .layer(layer.clone());
    let app = app(layer).merge(slow);
    let old = login(&app, "oli").await;
    let logout = {
        let app = app.clone();
        let old = old.clone();
        tokio::spawn(async move { send(&app, "POST", "/slow-logout", Some(&old)).await })
    };
    gate.reached().await;
    clock.advance(Duration::from_secs(16 * 60));
    let renewed = whoami(&app, &old)
        .await
        .token()
        .expect("renewed while the logout waited");
    gate.open();
    logout.await.unwrap();
    assert_eq!(
        whoami(&app, &renewed).await.body,
        "anonymous",
        "the logout reached the renewed session"
    );
}
