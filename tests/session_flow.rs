//! The session lifecycle through a real axum `Router`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::{app, send, send_request, FlakyStore, COOKIE};
use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_session_guard::{
    CookieConfig, Key, MemoryStore, SameSite, Session, SessionEvent, SessionLayer,
};

fn layer() -> SessionLayer {
    SessionLayer::new(MemoryStore::new(1_000), Key::generate())
}

#[tokio::test]
async fn counter_persists_across_requests() {
    let app = app(layer());
    let first = send(&app, "GET", "/count", None).await;
    assert_eq!(first.body, "1");
    let token = first
        .token()
        .expect("a session that holds data gets a cookie");
    for expected in 2..=5 {
        let reply = send(&app, "GET", "/count", Some(&token)).await;
        assert_eq!(reply.body, expected.to_string());
        assert!(!reply.touches_cookie(), "an unchanged id is not re-sent");
    }
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "5");
}

#[tokio::test]
async fn anonymous_reads_store_nothing_and_set_no_cookie() {
    let store = FlakyStore::default();
    let app = app(SessionLayer::new(store.clone(), Key::generate()));
    for _ in 0..100 {
        let reply = send(&app, "GET", "/read", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "none");
        assert!(!reply.touches_cookie());
        assert!(reply.headers.get(http::header::CACHE_CONTROL).is_none());
    }
    assert_eq!(store.writes(), 0);
    store.inner.run_pending_tasks().await;
    assert_eq!(store.inner.len(), 0);
}

#[tokio::test]
async fn a_session_emptied_in_the_same_request_is_not_stored() {
    let store = FlakyStore::default();
    let app = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                session.insert("temp", 1).unwrap();
                session.remove("temp");
                "ok"
            }),
        )
        .layer(SessionLayer::new(store.clone(), Key::generate()));
    let reply = send(&app, "GET", "/", None).await;
    assert!(!reply.touches_cookie());
    assert_eq!(store.writes(), 0);
}

#[tokio::test]
async fn login_changes_the_token_and_the_old_token_no_longer_works() {
    let clock = tower_session_guard::clock::ManualClock::new();
    let app = app(layer().with_clock(clock.clone()));
    let anonymous = send(&app, "GET", "/count", None).await.token().unwrap();
    let login = send(&app, "POST", "/login/alice", Some(&anonymous)).await;
    let logged_in = login.token().expect("login hands out a new token");
    assert_ne!(logged_in, anonymous);
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&logged_in)).await.body,
        "alice"
    );

    let replay = send(&app, "GET", "/whoami", Some(&anonymous)).await;
    assert_eq!(replay.body, "anonymous", "the old token is dead at once");
    assert!(
        !replay.touches_cookie(),
        "right after the login, a straggler with the old token must not clear the new cookie"
    );
    clock.advance(std::time::Duration::from_secs(31));
    let later = send(&app, "GET", "/whoami", Some(&anonymous)).await;
    assert_eq!(later.body, "anonymous");
    assert!(
        later.clears_cookie(),
        "later, a dead token's cookie is cleared"
    );
}

#[tokio::test]
async fn data_survives_login() {
    let app = app(layer());
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    send(&app, "GET", "/count", Some(&token)).await;
    let token = send(&app, "POST", "/login/bob", Some(&token))
        .await
        .token()
        .unwrap();
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "2");
}

#[tokio::test]
async fn login_without_a_session_creates_one_for_the_user() {
    let app = app(layer());
    let reply = send(&app, "POST", "/login/carol", None).await;
    let token = reply.token().unwrap();
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&token)).await.body,
        "carol"
    );
}

#[tokio::test]
async fn writes_made_before_login_in_the_same_request_are_kept() {
    let app = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                session.insert("before", "yes").unwrap();
                session.login("dave").await.unwrap();
                session.insert("after", "yes").unwrap();
                "ok"
            }),
        )
        .route(
            "/check",
            get(|session: Session| async move {
                let before: Option<String> = session.get("before").unwrap();
                let after: Option<String> = session.get("after").unwrap();
                format!("{before:?} {after:?} {:?}", session.user_id())
            }),
        )
        .layer(layer());
    let token = send(&app, "GET", "/", None).await.token().unwrap();
    assert_eq!(
        send(&app, "GET", "/check", Some(&token)).await.body,
        r#"Some("yes") Some("yes") Some("dave")"#
    );
}

#[tokio::test]
async fn logout_kills_the_token_and_clears_the_cookie() {
    let app = app(layer());
    let token = send(&app, "POST", "/login/erin", None)
        .await
        .token()
        .unwrap();
    let logout = send(&app, "POST", "/logout", Some(&token)).await;
    assert!(logout.clears_cookie());
    assert_eq!(logout.token(), None);
    let replay = send(&app, "GET", "/whoami", Some(&token)).await;
    assert_eq!(replay.body, "anonymous");
}

#[tokio::test]
async fn logging_in_as_another_user_keeps_none_of_the_previous_users_data() {
    let app = app(layer());
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    let alice = send(&app, "POST", "/login/alice", Some(&token))
        .await
        .token()
        .unwrap();
    assert_eq!(
        send(&app, "GET", "/read", Some(&alice)).await.body,
        "1",
        "anonymous data carries into a login"
    );
    let bob = send(&app, "POST", "/login/bob", Some(&alice))
        .await
        .token()
        .unwrap();
    assert_eq!(send(&app, "GET", "/whoami", Some(&bob)).await.body, "bob");
    assert_eq!(
        send(&app, "GET", "/read", Some(&bob)).await.body,
        "none",
        "alice's data is not bob's"
    );
}

#[tokio::test]
async fn a_request_in_flight_across_a_login_keeps_the_new_cookie_and_reports_its_lost_write() {
    let gate = common::Gate::default();
    // Build both routes on one layer so they share the store and key.
    let shared = layer();
    let app = common::app(shared.clone()).merge(
        Router::new()
            .route(
                "/slow-write",
                get({
                    let gate = gate.clone();
                    move |session: Session| {
                        let gate = gate.clone();
                        async move {
                            gate.hold().await;
                            session.insert("late", true).unwrap();
                            "written"
                        }
                    }
                }),
            )
            .layer(shared),
    );
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    let in_flight = {
        let app = app.clone();
        let token = token.clone();
        tokio::spawn(async move { send(&app, "GET", "/slow-write", Some(&token)).await })
    };
    gate.reached().await;
    let logged_in = send(&app, "POST", "/login/quinn", Some(&token))
        .await
        .token()
        .unwrap();
    gate.open();
    let late = in_flight.await.unwrap();
    assert_eq!(
        late.status,
        StatusCode::CONFLICT,
        "the lost write is not reported as saved"
    );
    assert!(
        !late.touches_cookie(),
        "the in-flight response must not clear the new cookie"
    );

    // A read with the old token just after the login leaves the cookie alone too.
    let straggler = send(&app, "GET", "/whoami", Some(&token)).await;
    assert_eq!(straggler.body, "anonymous");
    assert!(!straggler.touches_cookie());
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&logged_in)).await.body,
        "quinn"
    );
}

#[tokio::test]
async fn regenerate_issues_a_new_id_and_keeps_the_data() {
    let app = app(layer());
    let old = send(&app, "GET", "/count", None).await.token().unwrap();
    let new = send(&app, "POST", "/regenerate", Some(&old))
        .await
        .token()
        .unwrap();
    assert_ne!(old, new);
    assert_eq!(send(&app, "GET", "/read", Some(&new)).await.body, "1");
    assert_eq!(send(&app, "GET", "/read", Some(&old)).await.body, "none");
}

#[tokio::test]
async fn cookie_attributes_are_exactly_as_specified() {
    let app = app(layer());
    let reply = send(&app, "GET", "/count", None).await;
    let cookies = reply.session_cookies();
    assert_eq!(cookies.len(), 1);
    let mut attributes: Vec<&str> = cookies[0].split("; ").skip(1).collect();
    attributes.sort_unstable();
    assert_eq!(attributes, ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"]);
    assert!(cookies[0].starts_with(&format!("{COOKIE}=")));
    assert_eq!(reply.headers[http::header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn removal_cookie_keeps_name_path_and_flags() {
    let app = app(layer());
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    let reply = send(&app, "POST", "/logout", Some(&token)).await;
    let cookies = reply.session_cookies();
    assert_eq!(cookies.len(), 1);
    let mut attributes: Vec<&str> = cookies[0].split("; ").collect();
    attributes.sort_unstable();
    assert_eq!(
        attributes,
        [
            "HttpOnly",
            "Max-Age=0",
            "Path=/",
            "SameSite=Lax",
            "Secure",
            &format!("{COOKIE}=") as &str
        ]
    );
    assert_eq!(reply.headers[http::header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn persistent_cookies_last_until_the_absolute_deadline() {
    let layer = layer()
        .with_absolute_timeout(std::time::Duration::from_secs(3600))
        .with_cookie(CookieConfig::default().with_persistent(true));
    let reply = send(&app(layer), "GET", "/count", None).await;
    let cookie = &reply.session_cookies()[0];
    assert!(cookie.contains("Max-Age=3600"), "{cookie}");
}

#[tokio::test]
async fn a_custom_cookie_is_used_for_reading_and_writing() {
    let layer = layer().with_cookie(
        CookieConfig::default()
            .with_name("sid")
            .with_secure(false)
            .with_same_site(SameSite::Strict),
    );
    let app = app(layer);
    let reply = send(&app, "GET", "/count", None).await;
    let set = reply.headers[http::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.starts_with("sid=") && set.contains("SameSite=Strict") && !set.contains("Secure"),
        "{set}"
    );
    let token = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("sid=")
        .to_owned();
    let request = Request::get("/count")
        .header(http::header::COOKIE, format!("sid={token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send_request(&app, request).await.body, "2");
}

#[test]
#[should_panic(expected = "with_secure(true)")]
fn host_cookie_without_secure_fails_at_start_up() {
    let _ = layer().with_cookie(CookieConfig::default().with_secure(false));
}

#[test]
#[should_panic(expected = "Domain")]
fn host_cookie_with_a_domain_fails_at_start_up() {
    let _ = layer().with_cookie(CookieConfig::default().with_domain("example.com"));
}

#[test]
#[should_panic(expected = "Path=/")]
fn host_cookie_with_a_path_fails_at_start_up() {
    let _ = layer().with_cookie(CookieConfig::default().with_path("/app"));
}

#[tokio::test]
async fn the_extractor_without_the_layer_answers_500_saying_so() {
    let app: Router = Router::new().route("/", get(|_session: Session| async { "unreachable" }));
    let reply = send(&app, "GET", "/", None).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.body.contains("Is `SessionLayer` installed"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn events_name_sessions_by_fingerprint() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let layer =
        layer().with_event_handler(move |e: &SessionEvent| sink.lock().unwrap().push(e.clone()));
    let app = app(layer);
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    let token = send(&app, "POST", "/login/frank", Some(&token))
        .await
        .token()
        .unwrap();
    send(&app, "POST", "/logout", Some(&token)).await;
    let events = events.lock().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(SessionEvent::kind).collect();
    assert_eq!(kinds, ["created", "logged_in", "logged_out"]);
    match &events[1] {
        SessionEvent::LoggedIn {
            user_id, previous, ..
        } => {
            assert_eq!(user_id, "frank");
            assert!(previous.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn works_inside_service_builder_around_any_body_type() {
    // A plain tower service (no axum routing) with its own body type.
    let service =
        ServiceBuilder::new()
            .layer(layer())
            .service_fn(|request: Request<String>| async move {
                let session = request.extensions().get::<Session>().cloned().unwrap();
                let n: u64 = session.get("n").unwrap().unwrap_or(0);
                session.insert("n", n + 1).unwrap();
                Ok::<_, Infallible>(Response::new(format!("{}", n + 1)))
            });
    let response = service
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(response.body(), "1");
    let set_cookie = response.headers()[http::header::SET_COOKIE]
        .to_str()
        .unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let mut request = Request::new(String::new());
    request
        .headers_mut()
        .insert(http::header::COOKIE, cookie.parse().unwrap());
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.body(), "2");
}

#[tokio::test]
async fn two_layers_sharing_a_store_share_sessions() {
    let store = MemoryStore::new(100);
    let key = Key::generate();
    let a = app(SessionLayer::new(store.clone(), key.clone()));
    let b = app(SessionLayer::new(store, key));
    let token = send(&a, "GET", "/count", None).await.token().unwrap();
    assert_eq!(send(&b, "GET", "/count", Some(&token)).await.body, "2");
}

#[tokio::test]
async fn session_debug_output_hides_the_id() {
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&seen);
    let app = Router::new()
        .route(
            "/",
            get(move |session: Session| {
                let sink = Arc::clone(&sink);
                async move {
                    session.insert("x", 1).unwrap();
                    *sink.lock().unwrap() = format!("{session:?}");
                    "ok"
                }
            }),
        )
        .layer(layer());
    let token = send(&app, "GET", "/", None).await.token().unwrap();
    send(&app, "GET", "/", Some(&token)).await;
    let debug = seen.lock().unwrap().clone();
    assert!(debug.contains("fingerprint: Some("), "{debug}");
    for form in common::forbidden_forms(&token) {
        assert!(!debug.contains(&form), "{form:?} in {debug}");
    }
}
