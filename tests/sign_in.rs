//! Sign-in through a real axum `Router`: remember-me lifetimes,
//! re-authentication, the `SignedIn` guard and its return path, "my
//! sessions", credential stamps, passive requests and the reuse of a
//! renewed id.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query};
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};

use common::{send, send_request, Reply};
use tower_session_guard::clock::{Clock, ManualClock};
use tower_session_guard::{
    safe_return_path, Key, LoginOptions, MemoryStore, RejectReason, Session, SessionError,
    SessionEvent, SessionHandle, SessionInfo, SessionLayer, SignedIn,
};

const IDLE: Duration = Duration::from_secs(30 * 60);
const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
const MONTH: Duration = Duration::from_secs(30 * 86_400);
const MINUTE: Duration = Duration::from_secs(60);

fn layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_idle_timeout(IDLE)
        .with_absolute_timeout(ABSOLUTE)
        .with_clock(clock.clone())
}

#[derive(serde::Deserialize)]
struct LoginForm {
    remember: Option<u8>,
    next: Option<String>,
}

/// The app: sign-in with remember-me and a return path, guarded pages,
/// re-authentication, the device list.
fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/login/{user}", post(login))
        .route("/whoami", get(whoami))
        .route("/account", get(account).post(account))
        .route("/reauth", post(reauth))
        .route("/sensitive", post(sensitive))
        .route("/sessions", get(sessions))
        .route("/revoke/{handle}", post(revoke))
        .route("/expires", get(expires))
        .route("/poll", get(poll))
        .route("/authenticated", get(authenticated))
        .fallback(account)
        .layer(layer)
}

async fn login(
    session: Session,
    Path(user): Path<String>,
    Query(form): Query<LoginForm>,
) -> Result<Redirect, SessionError> {
    let options = match form.remember {
        Some(1) => LoginOptions::remember_me(MONTH).with_method("password"),
        _ => LoginOptions::new().with_method("password"),
    };
    session.login_with(user, options).await?;
    let next = form
        .next
        .as_deref()
        .and_then(safe_return_path)
        .unwrap_or("/");
    Ok(Redirect::to(next))
}

async fn whoami(session: Session) -> String {
    session.user_id().unwrap_or_else(|| "anonymous".to_owned())
}

async fn account(SignedIn(user): SignedIn) -> String {
    format!("account of {user}")
}

async fn reauth(session: Session) -> Result<&'static str, SessionError> {
    session.reauthenticate().await?;
    Ok("ok")
}

async fn sensitive(session: Session) -> Result<&'static str, SessionError> {
    session.require_recent_auth(Duration::from_secs(10 * 60))?;
    Ok("done")
}

async fn sessions(session: Session) -> Result<String, SessionError> {
    let list: Vec<SessionInfo> = session.my_sessions().await?;
    Ok(serde_json::to_string(&list).expect("SessionInfo serializes"))
}

async fn revoke(
    session: Session,
    Path(handle): Path<SessionHandle>,
) -> Result<String, SessionError> {
    Ok(session.revoke_mine(&handle).await?.to_string())
}

fn millis(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

async fn expires(session: Session) -> String {
    session
        .expires_at()
        .map_or_else(|| "none".to_owned(), |at| millis(at).to_string())
}

async fn poll(session: Session) -> String {
    session.mark_passive();
    session
        .expires_at()
        .map_or_else(|| "none".to_owned(), |at| millis(at).to_string())
}

async fn authenticated(session: Session) -> String {
    session
        .authenticated_at()
        .map_or_else(|| "never".to_owned(), |at| millis(at).to_string())
}

async fn sign_in(app: &Router, user: &str, remember: bool) -> (String, Reply) {
    let uri = if remember {
        format!("/login/{user}?remember=1")
    } else {
        format!("/login/{user}")
    };
    let reply = send(app, "POST", &uri, None).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    (reply.token().expect("a sign-in hands out a token"), reply)
}

async fn who(app: &Router, token: &str) -> String {
    send(app, "GET", "/whoami", Some(token)).await.body
}

fn max_age(reply: &Reply) -> Option<u64> {
    reply.session_cookies().iter().find_map(|cookie| {
        cookie
            .split("; ")
            .find_map(|part| part.strip_prefix("Max-Age="))
            .map(|value| value.parse().unwrap())
    })
}

fn events(layer: SessionLayer) -> (SessionLayer, Arc<Mutex<Vec<SessionEvent>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let layer = layer.with_event_handler(move |event: &SessionEvent| {
        sink.lock().unwrap().push(event.clone());
    });
    (layer, seen)
}

#[tokio::test]
async fn remember_me_keeps_its_own_lifetime_and_a_persistent_cookie() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let (remembered, reply) = sign_in(&app, "ann", true).await;
    assert_eq!(
        max_age(&reply),
        Some(MONTH.as_secs()),
        "Max-Age from the stored deadline"
    );
    let (plain, reply) = sign_in(&app, "bob", false).await;
    assert_eq!(
        max_age(&reply),
        None,
        "the layer's session cookie for a plain sign-in"
    );

    // Two hours idle: past the layer's idle timeout, not past the month.
    clock.advance(2 * 3600 * Duration::from_secs(1));
    assert_eq!(who(&app, &remembered).await, "ann");
    assert_eq!(who(&app, &plain).await, "anonymous");

    // Past the layer's absolute timeout, still within the month.
    clock.advance(10 * 86_400 * Duration::from_secs(1));
    assert_eq!(who(&app, &remembered).await, "ann");
    let list: serde_json::Value =
        serde_json::from_str(&send(&app, "GET", "/sessions", Some(&remembered)).await.body)
            .unwrap();
    assert_eq!(list[0]["remembered"], true);
    assert_eq!(list[0]["idle_timeout"], MONTH.as_millis() as u64);
    assert_eq!(list[0]["method"], "password");

    // The month is the month, however active the session is.
    clock.advance(20 * 86_400 * Duration::from_secs(1));
    assert_eq!(who(&app, &remembered).await, "anonymous");
}

#[tokio::test]
async fn a_reissued_remember_me_cookie_counts_down_from_the_stored_deadline() {
    let clock = ManualClock::new();
    let app = app(layer(&clock).with_renewal_interval(Duration::from_secs(3600), MINUTE));
    let (token, _) = sign_in(&app, "ann", true).await;
    clock.advance(Duration::from_secs(10 * 86_400));
    let renewed = send(&app, "GET", "/whoami", Some(&token)).await;
    assert_eq!(renewed.body, "ann");
    assert_ne!(renewed.token().as_deref(), Some(&*token), "renewed");
    assert_eq!(
        max_age(&renewed),
        Some(20 * 86_400),
        "Max-Age is what is left of the stored deadline"
    );
}

#[tokio::test]
async fn recent_authentication_is_required_and_reauthentication_renews_it() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let (token, _) = sign_in(&app, "ann", false).await;
    let signed_in_at = send(&app, "GET", "/authenticated", Some(&token)).await.body;
    assert_ne!(signed_in_at, "never");
    assert_eq!(
        send(&app, "POST", "/sensitive", Some(&token)).await.body,
        "done"
    );

    // Active for 12 minutes, but the last proof is older than 10.
    for _ in 0..4 {
        clock.advance(3 * MINUTE);
        assert_eq!(who(&app, &token).await, "ann");
    }
    let refused = send(&app, "POST", "/sensitive", Some(&token)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers[http::header::CONTENT_TYPE],
        "application/json"
    );
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["error"], "reauthentication_required");
    assert_eq!(body["max_age_secs"], 600);

    let reauth = send(&app, "POST", "/reauth", Some(&token)).await;
    assert_eq!(reauth.status, StatusCode::OK);
    let fresh = reauth.token().expect("re-authentication issues a new id");
    assert_ne!(fresh, token);
    assert_eq!(who(&app, &token).await, "anonymous", "the old id is dead");
    assert_eq!(
        send(&app, "POST", "/sensitive", Some(&fresh)).await.body,
        "done"
    );
    let reauthenticated_at = send(&app, "GET", "/authenticated", Some(&fresh)).await.body;
    assert_eq!(
        reauthenticated_at.parse::<u64>().unwrap() - signed_in_at.parse::<u64>().unwrap(),
        12 * 60_000
    );

    // Nobody signed in: nothing is recent.
    let anonymous = send(&app, "POST", "/sensitive", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = serde_json::from_str(&anonymous.body).unwrap();
    assert_eq!(body["error"], "sign_in_required");
    assert_eq!(
        send(&app, "POST", "/reauth", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn reauthentication_starts_the_absolute_window_afresh() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let (token, _) = sign_in(&app, "ann", false).await;
    // Active for 7 hours.
    for _ in 0..28 {
        clock.advance(Duration::from_secs(15 * 60));
        assert_eq!(who(&app, &token).await, "ann");
    }
    let fresh = send(&app, "POST", "/reauth", Some(&token))
        .await
        .token()
        .unwrap();
    // Two more active hours: past 8 hours from the first sign-in.
    for _ in 0..8 {
        clock.advance(Duration::from_secs(15 * 60));
        assert_eq!(who(&app, &fresh).await, "ann");
    }
}

#[tokio::test]
async fn the_guard_answers_401_without_a_sign_in_page() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let refused = send(&app, "GET", "/account", None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let (token, _) = sign_in(&app, "ann", false).await;
    assert_eq!(
        send(&app, "GET", "/account", Some(&token)).await.body,
        "account of ann"
    );
}

#[tokio::test]
async fn the_guard_redirects_to_the_sign_in_page_with_a_same_site_return_path() {
    let clock = ManualClock::new();
    let app = app(layer(&clock).with_sign_in_page("/login"));
    let reply = send(&app, "GET", "/account?tab=devices&x=a%20b", None).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        reply.headers[http::header::LOCATION],
        "/login?next=/account%3Ftab%3Ddevices%26x%3Da%2520b"
    );
    // An API call (not a page) gets the 401.
    assert_eq!(
        send(&app, "POST", "/account", None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A request path that a browser would read as another site never
    // becomes the return path.
    for path in [
        "//evil.example",
        "//evil.example/account",
        "/\\evil.example",
    ] {
        let request = Request::builder()
            .uri(http::Uri::builder().path_and_query(path).build().unwrap())
            .body(axum::body::Body::empty())
            .unwrap();
        let reply = send_request(&app, request).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(
            reply.headers[http::header::LOCATION],
            "/login?next=/",
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_sign_in_handler_only_returns_to_paths_on_this_site() {
    let clock = ManualClock::new();
    let app = app(layer(&clock).with_sign_in_page("/login"));
    let back = send(&app, "POST", "/login/ann?next=%2Faccount%3Ftab%3D1", None).await;
    assert_eq!(back.headers[http::header::LOCATION], "/account?tab=1");
    for next in [
        "//evil.example",
        "%2F%2Fevil.example",
        "https://evil.example",
        "https%3A%2F%2Fevil.example",
        "/%5Cevil.example",
        "%2F%5Cevil.example",
        "/%252F%252Fevil.example",
        "%2F%252F%252Fevil.example",
        "/%09/evil.example",
        "%2F%09%2Fevil.example",
        "javascript:alert(1)",
    ] {
        let reply = send(&app, "POST", &format!("/login/ann?next={next}"), None).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(reply.headers[http::header::LOCATION], "/", "{next}");
    }
}

#[test]
#[should_panic(expected = "the sign-in page must be a path on this site")]
fn a_sign_in_page_on_another_site_is_refused_at_start_up() {
    let _ = SessionLayer::new(MemoryStore::default(), Key::generate())
        .with_sign_in_page("//evil.example/login");
}

async fn sign_in_as_device(app: &Router, user: &str, agent: &str) -> String {
    let request = Request::builder()
        .method("POST")
        .uri(format!("/login/{user}"))
        .header(http::header::USER_AGENT, agent)
        .body(axum::body::Body::empty())
        .unwrap();
    send_request(app, request).await.token().unwrap()
}

fn handles(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|info| info["handle"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn my_sessions_lists_this_users_devices_and_revokes_only_its_own() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
    let laptop = sign_in_as_device(&app, "ann", firefox).await;
    clock.advance(MINUTE);
    let phone = sign_in_as_device(&app, "ann", chrome).await;
    clock.advance(MINUTE);
    let bob = sign_in_as_device(&app, "bob", firefox).await;

    let reply = send(&app, "GET", "/sessions", Some(&laptop)).await;
    let list: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // Most recent first: the phone signed in later.
    assert_eq!(list[0]["is_current"], false);
    assert_eq!(list[1]["is_current"], true);
    assert!(list[0]["user_agent"].as_str().unwrap().contains("Chrome"));
    assert!(list[1]["user_agent"].as_str().unwrap().contains("Firefox"));
    assert!(list[0]["last_seen"].as_u64().unwrap() > list[1]["last_seen"].as_u64().unwrap());
    assert!(list[0]["authenticated_at"].is_u64());
    for token in [&laptop, &phone, &bob] {
        for form in common::forbidden_forms(token) {
            assert!(!reply.body.contains(&form), "the list shows no id");
        }
    }
    let ann = handles(&list);

    // Bob cannot end Ann's session with its handle.
    let refused = send(&app, "POST", &format!("/revoke/{}", ann[0]), Some(&bob)).await;
    assert_eq!(refused.body, "false");
    assert_eq!(who(&app, &phone).await, "ann");
    // A handle that is not one is refused by the extractor.
    let bad = send(&app, "POST", "/revoke/not-a-handle", Some(&laptop)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Ann signs her phone out from her laptop.
    let revoked = send(&app, "POST", &format!("/revoke/{}", ann[0]), Some(&laptop)).await;
    assert_eq!(revoked.body, "true");
    assert_eq!(who(&app, &phone).await, "anonymous");
    assert_eq!(who(&app, &laptop).await, "ann");
    assert_eq!(who(&app, &bob).await, "bob");
    let again = send(&app, "POST", &format!("/revoke/{}", ann[0]), Some(&laptop)).await;
    assert_eq!(again.body, "false", "already gone");

    // Her own current handle signs this session out.
    let own = send(&app, "POST", &format!("/revoke/{}", ann[1]), Some(&laptop)).await;
    assert_eq!(own.body, "true");
    assert!(own.clears_cookie());
    assert_eq!(who(&app, &laptop).await, "anonymous");
    // Anonymous: nothing listed, nothing revoked.
    assert_eq!(send(&app, "GET", "/sessions", None).await.body, "[]");
}

#[test]
fn handles_round_trip_through_serde() {
    let hex = "ab".repeat(32);
    let handle: SessionHandle = serde_json::from_str(&format!("\"{hex}\"")).unwrap();
    assert_eq!(
        serde_json::to_string(&handle).unwrap(),
        format!("\"{hex}\"")
    );
    assert!(serde_json::from_str::<SessionHandle>("\"abc\"").is_err());
    assert!(serde_json::from_str::<SessionHandle>("12").is_err());
}

type Stamps = Arc<Mutex<HashMap<String, Result<String, String>>>>;

fn stamped(clock: &ManualClock, stamps: &Stamps) -> SessionLayer {
    let stamps = Arc::clone(stamps);
    layer(clock).with_user_stamp(MINUTE, move |user: String| {
        let stamp = stamps.lock().unwrap().get(&user).cloned();
        async move {
            match stamp {
                None => Ok(None),
                Some(Ok(stamp)) => Ok(Some(stamp)),
                Some(Err(why)) => Err(why.into()),
            }
        }
    })
}

#[tokio::test]
async fn a_credential_change_ends_every_other_session_past_the_interval() {
    let clock = ManualClock::new();
    let stamps: Stamps = Arc::default();
    stamps
        .lock()
        .unwrap()
        .insert("ann".into(), Ok("password-1".into()));
    stamps
        .lock()
        .unwrap()
        .insert("bob".into(), Ok("password-9".into()));
    let (layer, seen) = events(stamped(&clock, &stamps));
    let app = app(layer);
    let (laptop, _) = sign_in(&app, "ann", false).await;
    let (phone, _) = sign_in(&app, "ann", false).await;
    let (bob, _) = sign_in(&app, "bob", false).await;

    // Ann changes her password on the laptop: the stamp changes, and the
    // laptop's session takes the new one.
    stamps
        .lock()
        .unwrap()
        .insert("ann".into(), Ok("password-2".into()));
    let laptop = send(&app, "POST", "/reauth", Some(&laptop))
        .await
        .token()
        .unwrap();

    // Within the interval the phone's check is cached.
    assert_eq!(who(&app, &phone).await, "ann");
    clock.advance(MINUTE + Duration::from_secs(1));
    let ended = send(&app, "GET", "/whoami", Some(&phone)).await;
    assert_eq!(ended.body, "anonymous");
    assert!(ended.clears_cookie());
    assert_eq!(
        who(&app, &phone).await,
        "anonymous",
        "destroyed, not only refused"
    );
    assert_eq!(who(&app, &laptop).await, "ann");
    assert_eq!(who(&app, &bob).await, "bob");
    assert!(seen.lock().unwrap().iter().any(|event| matches!(
        event,
        SessionEvent::Rejected {
            reason: RejectReason::CredentialsChanged,
            ..
        }
    )));

    // A user who is gone is signed out too.
    stamps.lock().unwrap().remove("bob");
    clock.advance(MINUTE + Duration::from_secs(1));
    assert_eq!(who(&app, &bob).await, "anonymous");
}

#[tokio::test]
async fn a_failing_stamp_lookup_answers_503_and_keeps_the_session() {
    let clock = ManualClock::new();
    let stamps: Stamps = Arc::default();
    stamps.lock().unwrap().insert("ann".into(), Ok("1".into()));
    let app = app(stamped(&clock, &stamps));
    let (token, _) = sign_in(&app, "ann", false).await;
    stamps
        .lock()
        .unwrap()
        .insert("ann".into(), Err("database down".into()));
    clock.advance(MINUTE + Duration::from_secs(1));
    let reply = send(&app, "GET", "/whoami", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!reply.touches_cookie());
    // A sign-in cannot read the stamp either.
    let login = send(&app, "POST", "/login/ann", None).await;
    assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE);

    stamps.lock().unwrap().insert("ann".into(), Ok("1".into()));
    assert_eq!(who(&app, &token).await, "ann", "back once the lookup works");
}

#[tokio::test]
async fn sessions_signed_in_before_the_stamp_was_configured_end_at_their_first_check() {
    let clock = ManualClock::new();
    let store = MemoryStore::new(100);
    let key = Key::generate();
    let plain = app(SessionLayer::new(store.clone(), key.clone()).with_clock(clock.clone()));
    let (token, _) = sign_in(&plain, "ann", false).await;
    let stamps: Stamps = Arc::default();
    stamps.lock().unwrap().insert("ann".into(), Ok("1".into()));
    let lookup_stamps = Arc::clone(&stamps);
    let with_stamp = app(SessionLayer::new(store, key)
        .with_clock(clock.clone())
        .with_user_stamp(MINUTE, move |user: String| {
            let stamp = lookup_stamps.lock().unwrap().get(&user).cloned();
            async move { Ok(stamp.and_then(Result::ok)) }
        }));
    assert_eq!(who(&with_stamp, &token).await, "anonymous");
}

#[tokio::test]
async fn a_passive_request_does_not_extend_the_idle_timeout() {
    let clock = ManualClock::new();
    let app = app(layer(&clock));
    let (token, _) = sign_in(&app, "ann", false).await;
    let first: u64 = send(&app, "GET", "/expires", Some(&token))
        .await
        .body
        .parse()
        .unwrap();

    // Polled every 10 minutes for 40 minutes: the session still expires 30
    // minutes after the sign-in.
    clock.advance(Duration::from_secs(10 * 60));
    let polled: u64 = send(&app, "GET", "/poll", Some(&token))
        .await
        .body
        .parse()
        .unwrap();
    assert_eq!(polled, first, "a passive request leaves the deadline alone");
    clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(
        send(&app, "GET", "/poll", Some(&token)).await.body,
        first.to_string()
    );
    clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(
        send(&app, "GET", "/poll", Some(&token)).await.body,
        "none",
        "expired"
    );

    // An active request at the same points keeps the session alive and
    // shows the deadline it moved to.
    let (token, _) = sign_in(&app, "ann", false).await;
    clock.advance(Duration::from_secs(10 * 60));
    let moved: u64 = send(&app, "GET", "/expires", Some(&token))
        .await
        .body
        .parse()
        .unwrap();
    assert_eq!(moved, clock.now() + IDLE.as_millis() as u64);
    clock.advance(Duration::from_secs(25 * 60));
    assert_eq!(who(&app, &token).await, "ann");
}

#[tokio::test]
async fn a_renewed_id_reused_after_its_grace_is_reported() {
    let clock = ManualClock::new();
    let (layer, seen) =
        events(layer(&clock).with_renewal_interval(Duration::from_secs(15 * 60), MINUTE));
    let app = app(layer);
    let (old, _) = sign_in(&app, "ann", false).await;
    clock.advance(Duration::from_secs(16 * 60));
    let new = send(&app, "GET", "/whoami", Some(&old))
        .await
        .token()
        .expect("renewed");
    // Within the grace, the old id still works, and nobody is accused.
    assert_eq!(who(&app, &old).await, "ann");
    clock.advance(2 * MINUTE);
    let reused = send(&app, "GET", "/whoami", Some(&old)).await;
    assert_eq!(reused.body, "anonymous");
    assert!(reused.clears_cookie());
    let reports: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| match event {
            SessionEvent::ReusedAfterRenewal {
                successor_revoked, ..
            } => Some(*successor_revoked),
            _ => None,
        })
        .collect();
    assert_eq!(reports, [false]);
    assert_eq!(
        who(&app, &new).await,
        "ann",
        "by default the successor lives on"
    );
}

#[tokio::test]
async fn with_revoke_on_reuse_the_successor_ends_too() {
    let clock = ManualClock::new();
    let (layer, seen) = events(
        layer(&clock)
            .with_renewal_interval(Duration::from_secs(15 * 60), MINUTE)
            .with_revoke_on_reuse(true),
    );
    let app = app(layer);
    let (old, _) = sign_in(&app, "ann", false).await;
    clock.advance(Duration::from_secs(16 * 60));
    let new = send(&app, "GET", "/whoami", Some(&old))
        .await
        .token()
        .expect("renewed");
    clock.advance(2 * MINUTE);
    assert_eq!(who(&app, &old).await, "anonymous");
    assert_eq!(
        who(&app, &new).await,
        "anonymous",
        "both holders must sign in again"
    );
    assert!(seen.lock().unwrap().iter().any(|event| matches!(
        event,
        SessionEvent::ReusedAfterRenewal {
            successor_revoked: true,
            ..
        }
    )));
    // Other users are untouched.
    let (bob, _) = sign_in(&app, "bob", false).await;
    assert_eq!(who(&app, &bob).await, "bob");
}

#[test]
#[should_panic(expected = "also call `with_renewal_interval`")]
fn revoke_on_reuse_without_renewals_is_refused_at_start_up() {
    let _ =
        app(SessionLayer::new(MemoryStore::default(), Key::generate()).with_revoke_on_reuse(true));
}

#[tokio::test]
async fn bad_login_options_are_refused_and_change_nothing() {
    async fn bad(session: Session) -> Result<&'static str, SessionError> {
        session
            .login_with("ann", LoginOptions::new().with_method(""))
            .await?;
        Ok("signed in")
    }
    let app = Router::new()
        .route("/bad", post(bad))
        .layer(SessionLayer::new(MemoryStore::default(), Key::generate()));
    let reply = send(&app, "POST", "/bad", None).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!reply.touches_cookie());
}
