//! Sign-in at its edges, through a real axum `Router`: nested routers,
//! renewals without a grace, long-lived sessions' activity, cookies that
//! stop being persistent, hostile return paths, passive renewals.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};

use common::{send, send_request, Reply};
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{
    Key, LoginOptions, MemoryStore, OnLimit, Session, SessionError, SessionInfo, SessionLayer,
    SignedIn,
};

const IDLE: Duration = Duration::from_secs(30 * 60);
const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
const MONTH: Duration = Duration::from_secs(30 * 86_400);
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

fn layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_idle_timeout(IDLE)
        .with_absolute_timeout(ABSOLUTE)
        .with_clock(clock.clone())
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn remember(
    session: Session,
    Path(user): Path<String>,
) -> Result<&'static str, SessionError> {
    session
        .login_with(user, LoginOptions::remember_me(MONTH))
        .await?;
    Ok("ok")
}

async fn whoami(session: Session) -> String {
    session.user_id().unwrap_or_else(|| "anonymous".to_owned())
}

async fn sessions(session: Session) -> Result<String, SessionError> {
    let list: Vec<SessionInfo> = session.my_sessions().await?;
    Ok(serde_json::to_string(&list).unwrap())
}

async fn logout_then_write(session: Session) -> Result<&'static str, SessionError> {
    session.logout().await?;
    session.insert("cart", "apple")?;
    Ok("ok")
}

async fn regenerate(session: Session) -> &'static str {
    session.regenerate();
    "ok"
}

async fn poll(session: Session) -> String {
    session.mark_passive();
    session
        .expires_at()
        .map_or_else(|| "none".to_owned(), |at| millis(at).to_string())
}

fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/login/{user}", post(login))
        .route("/remember/{user}", post(remember))
        .route("/whoami", get(whoami))
        .route("/sessions", get(sessions))
        .route("/logout-then-write", post(logout_then_write))
        .route("/regenerate", post(regenerate))
        .route("/poll", get(poll))
        .route(
            "/account",
            get(|SignedIn(user): SignedIn| async move { user }),
        )
        .fallback(|SignedIn(user): SignedIn| async move { user })
        .layer(layer)
}

fn max_age(reply: &Reply) -> Option<u64> {
    reply.session_cookies().iter().find_map(|cookie| {
        cookie
            .split("; ")
            .find_map(|part| part.strip_prefix("Max-Age="))
            .map(|value| value.parse().unwrap())
    })
}

async fn sign_in_as_device(app: &Router, uri: &str, agent: &str) -> String {
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header(http::header::USER_AGENT, agent)
        .body(axum::body::Body::empty())
        .unwrap();
    let reply = send_request(app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.token().unwrap()
}

fn millis(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// `SignedIn` builds `next` from `parts.uri`, which axum strips of the
/// prefix under `Router::nest`: a guarded page at `/admin/users` sends the
/// user back to `/users` after signing in (a 404, or another page).
#[tokio::test]
async fn the_guard_returns_to_the_full_path_under_a_nested_router() {
    let clock = ManualClock::new();
    let admin = Router::new().route(
        "/users",
        get(|SignedIn(user): SignedIn| async move { user }),
    );
    let app = Router::new()
        .nest("/admin", admin)
        .layer(layer(&clock).with_sign_in_page("/login"));
    let reply = send(&app, "GET", "/admin/users?page=2", None).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        reply.headers[http::header::LOCATION],
        "/login?next=/admin/users%3Fpage%3D2",
        "the return path must be the path the browser asked for"
    );
}

/// Without a grace, a request in flight during a renewal cannot be told
/// from a copied token, so revoking on reuse would sign users out: the
/// combination is refused at start-up rather than silently doing nothing.
#[test]
#[should_panic(expected = "with a grace of at least a few seconds")]
fn revoke_on_reuse_without_a_grace_is_refused_at_start_up() {
    let clock = ManualClock::new();
    let _ = app(layer(&clock)
        .with_renewal_interval(Duration::from_secs(15 * 60), Duration::ZERO)
        .with_revoke_on_reuse(true));
}

/// A remember-me session's idle timeout is its whole lifetime, and activity
/// is only written after a quarter of the idle window: `last_seen` of a
/// 30-day session moves once every 7.5 days. "My devices", sorted "most
/// recently used first", then shows a device used a minute ago as unused
/// for days, and `OnLimit::EvictLeastRecent` evicts the device in use.
#[tokio::test]
async fn remember_me_devices_show_when_they_were_last_used() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
    let laptop = sign_in_as_device(&app, "/remember/ann", firefox).await;
    clock.advance(MINUTE);
    let phone = sign_in_as_device(&app, "/remember/ann", chrome).await;

    // The laptop is used every day; the phone is not.
    for _ in 0..3 {
        clock.advance(DAY);
        assert_eq!(
            send(&app, "GET", "/whoami", Some(&laptop)).await.body,
            "ann"
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&send(&app, "GET", "/sessions", Some(&phone)).await.body).unwrap();
    assert_eq!(
        list[0]["is_current"], false,
        "the laptop, used today, comes first: {list}"
    );
    let laptop_seen = list[0]["last_seen"].as_u64().unwrap();
    assert!(
        clock_now(&clock) - laptop_seen < DAY.as_millis() as u64,
        "last_seen of a device used today is today: {list}"
    );
}

/// The same staleness through `OnLimit::EvictLeastRecent`: the device used
/// today is signed out instead of the one idle for days.
#[tokio::test]
async fn a_remember_me_limit_evicts_the_device_in_use() {
    let clock = ManualClock::new();
    let app = app(layer(&clock).with_session_limit(2, OnLimit::EvictLeastRecent));
    let laptop = sign_in_as_device(&app, "/remember/ann", "laptop").await;
    clock.advance(MINUTE);
    let phone = sign_in_as_device(&app, "/remember/ann", "phone").await;
    for _ in 0..3 {
        clock.advance(DAY);
        assert_eq!(
            send(&app, "GET", "/whoami", Some(&laptop)).await.body,
            "ann"
        );
    }
    let _tablet = sign_in_as_device(&app, "/remember/ann", "tablet").await;
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&laptop)).await.body,
        "ann",
        "the laptop, used today, is not the least recently used"
    );
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&phone)).await.body,
        "anonymous"
    );
}

fn clock_now(clock: &ManualClock) -> u64 {
    use tower_session_guard::clock::Clock;
    clock.now()
}

/// Remember-me `Max-Age`: kept through `regenerate`, gone after a logout
/// followed by anonymous writes, gone after a plain sign-in over it.
#[tokio::test]
async fn remember_me_cookie_is_persistent_only_while_the_session_is_remembered() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let reply = send(&app, "POST", "/remember/ann", None).await;
    let token = reply.token().unwrap();
    assert_eq!(max_age(&reply), Some(MONTH.as_secs()));

    clock.advance(DAY);
    let regenerated = send(&app, "POST", "/regenerate", Some(&token)).await;
    let token = regenerated.token().unwrap();
    assert_eq!(max_age(&regenerated), Some(MONTH.as_secs() - DAY.as_secs()));

    let plain = send(&app, "POST", "/login/bob", Some(&token)).await;
    assert_eq!(
        max_age(&plain),
        None,
        "a plain sign-in over it: a session cookie"
    );
    let bob = plain.token().unwrap();
    let remembered = send(&app, "POST", "/remember/ann", Some(&bob)).await;
    let ann = remembered.token().unwrap();
    let anonymous = send(&app, "POST", "/logout-then-write", Some(&ann)).await;
    assert!(anonymous.token().is_some());
    assert_eq!(
        max_age(&anonymous),
        None,
        "an anonymous session after logout"
    );
}

/// The guard's redirect never carries a header break or an off-site path,
/// whatever the request path.
#[tokio::test]
async fn the_guard_location_is_always_a_plain_same_site_path() {
    let clock = ManualClock::new();
    let app = app(layer(&clock).with_sign_in_page("/login?via=guard"));
    for path in [
        "/account?x=%0d%0aSet-Cookie:%20a=b",
        "/account?next=//evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%09/evil.example",
        "/%252F%252Fevil.example",
    ] {
        let request = Request::builder()
            .uri(http::Uri::builder().path_and_query(path).build().unwrap())
            .body(axum::body::Body::empty())
            .unwrap();
        let reply = send_request(&app, request).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{path}");
        let location = reply.headers[http::header::LOCATION].to_str().unwrap();
        assert!(
            location.starts_with("/login?via=guard&next=/"),
            "{path}: {location}"
        );
        assert!(
            !location.contains('\r') && !location.contains('\n'),
            "{path}: {location}"
        );
        let next = location.split("next=").nth(1).unwrap();
        assert!(
            next.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~/%".contains(c)),
            "{path}: {location}"
        );
    }
    let long = format!("/account?{}", "a".repeat(5000));
    let reply = send(&app, "GET", &long, None).await;
    assert_eq!(
        reply.headers[http::header::LOCATION],
        "/login?via=guard&next=/"
    );
}

/// A passive request that renews the id still records no activity.
#[tokio::test]
async fn a_passive_request_that_renews_the_id_records_no_activity() {
    let clock = ManualClock::new();
    let app = app(layer(&clock).with_renewal_interval(Duration::from_secs(5 * 60), MINUTE));
    let token = common::sign_in(&app, "ann").await;
    let signed_in = clock_now(&clock);
    clock.advance(Duration::from_secs(20 * 60));
    let polled = send(&app, "GET", "/poll", Some(&token)).await;
    assert_eq!(
        polled.body,
        (signed_in + IDLE.as_millis() as u64).to_string()
    );
    let renewed = polled.token().expect("renewed");
    clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&renewed)).await.body,
        "anonymous"
    );
}
