//! Races between a session's lifecycle steps (renewal, regeneration, a second
//! login, logout, admin revocation), and between anonymous and signed-in
//! sessions for room in the store, through a real axum `Router`.

mod common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use common::{send, sign_in, Gate, Reply};
use http::StatusCode;
use tokio::task::JoinHandle;
use tower_session_guard::clock::ManualClock;
use tower_session_guard::MemoryStore;
use tower_session_guard::{CachedStore, Key, Session, SessionError, SessionLayer};

/// Sessions get a new id every 15 minutes...
const RENEW_EVERY: Duration = Duration::from_secs(15 * 60);
/// ...and the old id keeps working for 30 seconds after.
const GRACE: Duration = Duration::from_secs(30);
/// Far longer than any test runs: a stale cached copy would outlive it.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// A layer over a `CachedStore` in front of a `MemoryStore`, renewing ids
/// on `clock`.
fn cached_renewing_layer(clock: &ManualClock) -> SessionLayer {
    let store = CachedStore::new(MemoryStore::new(1_000), 1_000).with_ttl(CACHE_TTL);
    SessionLayer::new(store, Key::generate())
        .with_renewal_interval(RENEW_EVERY, GRACE)
        .with_clock(clock.clone())
}

/// The common test app, plus two routes whose handlers hold on `gate`
/// once the layer has loaded their session: `/held/set/{key}/{value}`
/// (then writes the key) and `/held/logout` (then logs out).
fn app_with_held_routes(layer: SessionLayer, gate: &Gate) -> Router {
    let held = Router::new()
        .route(
            "/held/set/{key}/{value}",
            post({
                let gate = gate.clone();
                move |session: Session, Path((key, value)): Path<(String, String)>| {
                    let gate = gate.clone();
                    async move {
                        gate.hold().await;
                        session.insert(key, value)?;
                        Ok::<_, SessionError>("ok")
                    }
                }
            }),
        )
        .route(
            "/held/logout",
            post({
                let gate = gate.clone();
                move |session: Session| {
                    let gate = gate.clone();
                    async move {
                        gate.hold().await;
                        session.logout().await?;
                        Ok::<_, SessionError>("bye")
                    }
                }
            }),
        )
        .layer(layer.clone());
    common::app(layer).merge(held)
}

/// Sends a request in its own task, to be held by a gate.
fn spawn_send(
    app: &Router,
    method: &'static str,
    uri: &'static str,
    token: &str,
) -> JoinHandle<Reply> {
    let app = app.clone();
    let token = token.to_owned();
    tokio::spawn(async move { send(&app, method, uri, Some(&token)).await })
}

async fn whoami(app: &Router, token: &str) -> String {
    send(app, "GET", "/whoami", Some(token)).await.body
}

async fn get_key(app: &Router, token: &str, key: &str) -> String {
    send(app, "GET", &format!("/get/{key}"), Some(token))
        .await
        .body
}

#[tokio::test]
async fn revoking_a_renewed_session_through_a_cache_ends_it_at_once() {
    let clock = ManualClock::new();
    let layer = cached_renewing_layer(&clock);
    let admin = layer.sessions();
    let app = common::app(layer);
    let old = sign_in(&app, "ana").await;

    // An admin opens ana's sessions page...
    let listed = admin.list("ana").await.unwrap();
    assert_eq!(listed.len(), 1);

    // ...meanwhile ana's session is renewed, and her browser goes on with
    // the new token (so the cache holds a copy of the renewed session).
    clock.advance(RENEW_EVERY + Duration::from_secs(60));
    let renewed = send(&app, "GET", "/whoami", Some(&old)).await;
    assert_eq!(renewed.body, "ana");
    let new = renewed.token().expect("a due session gets a new id");
    assert_ne!(new, old);
    assert_eq!(whoami(&app, &new).await, "ana");

    // The admin revokes the session shown on the page.
    assert!(
        admin.revoke(&listed[0].handle).await.unwrap(),
        "the revocation found the session"
    );
    assert!(
        admin.list("ana").await.unwrap().is_empty(),
        "the admin sees the session gone"
    );
    assert_eq!(
        whoami(&app, &new).await,
        "anonymous",
        "a revoked session ends at once: its renewed token must not be served from a cached \
         copy until the cache TTL passes"
    );
}

#[tokio::test]
async fn a_write_in_flight_across_a_renewal_is_seen_with_the_new_token_at_once() {
    let clock = ManualClock::new();
    let gate = Gate::default();
    let app = app_with_held_routes(cached_renewing_layer(&clock), &gate);
    let old = sign_in(&app, "bo").await;

    // Request A arrives with the old token before a renewal is due, loads
    // the session and is held before it writes.
    let in_flight = spawn_send(&app, "POST", "/held/set/k/v", &old);
    gate.reached().await;

    // Request B, past the renewal interval, renews the session.
    clock.advance(RENEW_EVERY + Duration::from_secs(60));
    let renewed = send(&app, "GET", "/whoami", Some(&old)).await;
    assert_eq!(renewed.body, "bo");
    let new = renewed.token().expect("a due session gets a new id");
    assert_ne!(new, old);
    // The browser goes on with the new token: the cache now holds a copy.
    assert_eq!(
        get_key(&app, &new, "k").await,
        "none",
        "A has not written yet"
    );

    // A writes k=v and completes, within the grace period.
    gate.open();
    let written = in_flight.await.unwrap();
    assert_eq!(
        written.status,
        StatusCode::OK,
        "the in-flight write lands on the renewed session: {}",
        written.body
    );
    assert_eq!(
        get_key(&app, &new, "k").await,
        "v",
        "a write made across a renewal is seen with the new token at once, not after the \
         cache TTL"
    );
}

/// A signed-in session; a logout with its token loads it and is held
/// while `racer` (a request with the same token) moves the session to a
/// new id; then the logout goes on. Returns the app and the token the
/// racer was handed.
async fn a_held_logout_racing(racer: &str) -> (Router, String) {
    let gate = Gate::default();
    let layer = SessionLayer::new(MemoryStore::new(1_000), Key::generate());
    let app = app_with_held_routes(layer, &gate);
    let token = sign_in(&app, "cy").await;

    let logout = spawn_send(&app, "POST", "/held/logout", &token);
    gate.reached().await;
    let raced = send(&app, "POST", racer, Some(&token)).await;
    assert_eq!(raced.status, StatusCode::OK, "{}", raced.body);
    let moved = raced
        .token()
        .expect("the racer moved the session to a new id");
    assert_ne!(moved, token);
    assert_eq!(
        whoami(&app, &moved).await,
        "cy",
        "until the logout goes on, the moved session is signed in"
    );

    gate.open();
    let bye = logout.await.unwrap();
    assert_eq!(bye.status, StatusCode::OK, "{}", bye.body);
    assert!(bye.clears_cookie(), "the logout removes the cookie");
    (app, moved)
}

#[tokio::test]
async fn a_logout_racing_a_regenerate_ends_the_moved_session() {
    let (app, moved) = a_held_logout_racing("/regenerate").await;
    assert_eq!(
        whoami(&app, &moved).await,
        "anonymous",
        "a logout ends the session it loaded, even if a regenerate moved it to a new id \
         meanwhile: no live, orphaned session may survive it"
    );
}

#[tokio::test]
async fn a_logout_racing_a_second_login_of_the_same_user_ends_the_new_session() {
    let (app, moved) = a_held_logout_racing("/login/cy").await;
    assert_eq!(
        whoami(&app, &moved).await,
        "anonymous",
        "a logout ends the session it loaded, even if a second login of the same user moved \
         it to a new id meanwhile: no live, orphaned session may survive it"
    );
}

#[tokio::test]
async fn an_anonymous_flood_never_evicts_a_signed_in_session() {
    const CAP: u64 = 200;
    let app = common::app(SessionLayer::new(MemoryStore::new(CAP), Key::generate()));

    // Half the store's room goes to signed-in users, one session each.
    let mut signed_in = Vec::new();
    for i in 0..CAP / 2 {
        let user = format!("user{i}");
        let token = sign_in(&app, &user).await;
        signed_in.push((user, token));
    }

    // Then a flood of anonymous visitors, each storing a session of its own.
    for _ in 0..10 * CAP {
        let visitor = send(&app, "POST", "/set/k/v", None).await;
        assert!(
            visitor.token().is_some(),
            "an anonymous visitor's write is stored"
        );
    }

    let mut evicted = Vec::new();
    for (user, token) in &signed_in {
        if whoami(&app, token).await != *user {
            evicted.push(user.as_str());
        }
    }
    assert!(
        evicted.is_empty(),
        "anonymous sessions never evict a signed-in one while anonymous ones remain, yet {} \
         anonymous visitors evicted {} of {} signed-in sessions (e.g. {:?})",
        10 * CAP,
        evicted.len(),
        signed_in.len(),
        &evicted[..evicted.len().min(3)]
    );
}

#[tokio::test]
async fn a_request_in_flight_across_a_renewal_and_a_regeneration_keeps_the_new_cookie() {
    let clock = ManualClock::new();
    let layer = SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_renewal_interval(RENEW_EVERY, GRACE)
        .with_clock(clock.clone());
    let app = common::app(layer);
    let first = sign_in(&app, "bo").await;
    clock.advance(RENEW_EVERY + Duration::from_secs(1));
    // One tab's request renews the id; another tab then regenerates it.
    let renewed = send(&app, "GET", "/whoami", Some(&first))
        .await
        .token()
        .expect("a renewal hands out the new id");
    let newest = send(&app, "POST", "/regenerate", Some(&renewed))
        .await
        .token()
        .expect("a regeneration hands out the new id");
    // A request the browser sent with the first id arrives now, within grace.
    let late: Reply = send(&app, "GET", "/noop", Some(&first)).await;
    assert!(
        !late.clears_cookie(),
        "a request in flight across a renewal and a regeneration must leave the client's new cookie alone: {:?}",
        late.session_cookies()
    );
    assert_eq!(whoami(&app, &newest).await, "bo");
}

#[tokio::test]
async fn an_anonymous_flood_does_not_cut_a_renewal_short() {
    const CAP: u64 = 200;
    let clock = ManualClock::new();
    let gate = Gate::default();
    let layer = SessionLayer::new(MemoryStore::new(CAP), Key::generate())
        .with_renewal_interval(RENEW_EVERY, GRACE)
        .with_clock(clock.clone());
    let app = app_with_held_routes(layer, &gate);
    let first = sign_in(&app, "cy").await;
    let flood = |app: Router| async move {
        for _ in 0..2 * CAP {
            let reply = send(&app, "POST", "/set/k/v", None).await;
            assert!(reply.token().is_some(), "each visitor stores a session");
        }
    };
    flood(app.clone()).await;

    // A logout with the first id has loaded the session and is held...
    let logout = spawn_send(&app, "POST", "/held/logout", &first);
    gate.reached().await;
    // ...while another tab's request renews the id, and visitors keep coming.
    clock.advance(RENEW_EVERY + Duration::from_secs(1));
    let renewed = send(&app, "GET", "/whoami", Some(&first))
        .await
        .token()
        .expect("a renewal hands out the new id");
    flood(app.clone()).await;
    assert_eq!(
        whoami(&app, &first).await,
        "cy",
        "within the grace period the old id still forwards, whatever the anonymous traffic"
    );
    gate.open();
    assert_eq!(logout.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        whoami(&app, &renewed).await,
        "anonymous",
        "a logout with the old id ends the renewed session"
    );
}
