//! CSRF protection through a real axum `Router`: the origin check with each
//! header combination, the token in a header and in a form, its rotation,
//! and the exemption of header-carried sessions.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Form, Router};
use common::{send_request, Reply, COOKIE};
use http::{Request, StatusCode};
use serde::Deserialize;
use tower_session_guard::{
    Csrf, Key, MemoryStore, RejectReason, Session, SessionError, SessionEvent, SessionLayer,
    Transport,
};

const HOST: &str = "app.example.com";
const SAME: &str = "http://app.example.com";
const FOREIGN: &str = "http://evil.example";

#[derive(Deserialize)]
struct TransferForm {
    #[serde(default)]
    csrf_token: String,
    amount: u64,
}

/// The app under test, with a count of handler calls and the events.
struct App {
    router: Router,
    calls: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<SessionEvent>>>,
}

impl App {
    fn new(csrf: Csrf) -> Self {
        Self::with(|layer| layer.with_csrf(csrf))
    }

    fn with(configure: impl FnOnce(SessionLayer) -> SessionLayer) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let layer = configure(
            SessionLayer::new(MemoryStore::new(100), Key::generate())
                .with_event_handler(move |e| seen.lock().unwrap().push(e.clone())),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let counter = move |session: Session| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let n: u64 = session.get("n")?.unwrap_or(0);
                session.insert("n", n + 1)?;
                Ok::<_, SessionError>((n + 1).to_string())
            }
        };
        let router = Router::new()
            .route("/count", get(counter.clone()).post(counter))
            .route(
                "/login/{user}",
                post(|session: Session, Path(user): Path<String>| async move {
                    session.login(user).await?;
                    Ok::<_, SessionError>("ok")
                }),
            )
            .route(
                "/regenerate",
                post(|session: Session| async move {
                    session.regenerate();
                    "ok"
                }),
            )
            .route(
                "/token",
                get(|session: Session| async move {
                    session.csrf_token().unwrap_or_else(|| "none".to_owned())
                }),
            )
            .route(
                "/transfer",
                post(
                    |session: Session, Form(form): Form<TransferForm>| async move {
                        session.verify_csrf(&form.csrf_token)?;
                        Ok::<_, SessionError>(format!("sent {}", form.amount))
                    },
                ),
            )
            .layer(layer);
        Self {
            router,
            calls,
            events,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn rejections(&self) -> Vec<RejectReason> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Rejected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    async fn send(&self, request: http::request::Builder, body: &str) -> Reply {
        send_request(
            &self.router,
            request.body(Body::from(body.to_owned())).unwrap(),
        )
        .await
    }

    /// A session holding a count, and its cookie token.
    async fn session(&self) -> String {
        let reply = self.send(get_from("/count", None), "").await;
        reply.token().expect("a session")
    }

    async fn csrf_token(&self, cookie: &str) -> String {
        let reply = self.send(get_from("/token", Some(cookie)), "").await;
        assert_ne!(reply.body, "none");
        reply.body
    }
}

fn request(method: &str, uri: &str, cookie: Option<&str>) -> http::request::Builder {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, HOST);
    if let Some(token) = cookie {
        builder = builder.header(http::header::COOKIE, format!("{COOKIE}={token}"));
    }
    builder
}

fn get_from(uri: &str, cookie: Option<&str>) -> http::request::Builder {
    request("GET", uri, cookie)
}

fn post_to(uri: &str, cookie: Option<&str>) -> http::request::Builder {
    request("POST", uri, cookie)
}

fn form(builder: http::request::Builder) -> http::request::Builder {
    builder.header(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    )
}

/// The headers a browser sends, in each combination the rules look at.
#[derive(Clone, Copy, Debug)]
struct Provenance {
    fetch_site: Option<&'static str>,
    origin: Option<&'static str>,
    referer: Option<&'static str>,
}

impl Provenance {
    fn apply(self, mut builder: http::request::Builder) -> http::request::Builder {
        if let Some(site) = self.fetch_site {
            builder = builder.header("sec-fetch-site", site);
        }
        if let Some(origin) = self.origin {
            builder = builder.header(http::header::ORIGIN, origin);
        }
        if let Some(referer) = self.referer {
            builder = builder.header(http::header::REFERER, referer);
        }
        builder
    }
}

const CROSS_SITE: [Provenance; 4] = [
    Provenance {
        fetch_site: Some("cross-site"),
        origin: None,
        referer: None,
    },
    Provenance {
        fetch_site: Some("same-site"),
        origin: None,
        referer: None,
    },
    Provenance {
        fetch_site: None,
        origin: Some(FOREIGN),
        referer: None,
    },
    Provenance {
        fetch_site: None,
        origin: None,
        referer: Some("http://evil.example/attack.html"),
    },
];

const SAME_ORIGIN: [Provenance; 4] = [
    Provenance {
        fetch_site: Some("same-origin"),
        origin: None,
        referer: None,
    },
    Provenance {
        fetch_site: None,
        origin: Some(SAME),
        referer: None,
    },
    Provenance {
        fetch_site: None,
        origin: None,
        referer: Some("http://app.example.com/form"),
    },
    // No header at all: not a browser that could be tricked.
    Provenance {
        fetch_site: None,
        origin: None,
        referer: None,
    },
];

#[tokio::test]
async fn cross_site_posts_are_refused_with_403_before_the_handler_runs() {
    let app = App::new(Csrf::default());
    let cookie = app.session().await;
    let calls = app.calls();
    for provenance in CROSS_SITE {
        let reply = app
            .send(provenance.apply(post_to("/count", Some(&cookie))), "")
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{provenance:?}");
        assert!(
            reply.body.contains("cross-site request refused"),
            "{provenance:?}: {}",
            reply.body
        );
        assert!(!reply.touches_cookie(), "{provenance:?}");
    }
    assert_eq!(app.calls(), calls, "the handler never ran");
    assert_eq!(app.rejections(), [RejectReason::CrossSiteRequest; 4]);
    let count = app.send(get_from("/count", Some(&cookie)), "").await;
    assert_eq!(count.body, "2", "the session is unchanged");
}

#[tokio::test]
async fn same_origin_posts_pass_with_each_header_combination() {
    let app = App::new(Csrf::default());
    let cookie = app.session().await;
    for (n, provenance) in SAME_ORIGIN.into_iter().enumerate() {
        let reply = app
            .send(provenance.apply(post_to("/count", Some(&cookie))), "")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{provenance:?}");
        assert_eq!(reply.body, (n + 2).to_string());
    }
    assert_eq!(app.rejections(), []);
}

#[tokio::test]
async fn a_cross_site_login_post_is_refused_and_sets_no_cookie() {
    // Login CSRF ("session donation"): the attacker's page posts its own
    // credentials to sign the victim in as the attacker.
    let app = App::new(Csrf::default());
    for provenance in CROSS_SITE {
        let reply = app
            .send(provenance.apply(post_to("/login/attacker", None)), "")
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{provenance:?}");
        assert!(!reply.touches_cookie(), "{provenance:?}");
    }
    let reply = app
        .send(SAME_ORIGIN[1].apply(post_to("/login/alice", None)), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.token().is_some());
}

#[tokio::test]
async fn without_csrf_protection_the_cross_site_login_succeeds() {
    // What the protection is for: the same request, without it.
    let app = App::with(|layer| layer);
    let reply = app
        .send(CROSS_SITE[0].apply(post_to("/login/attacker", None)), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.token().is_some());
}

#[tokio::test]
async fn safe_methods_are_never_refused() {
    let app = App::new(Csrf::default().with_header_token_required(true));
    let cookie = app.session().await;
    for provenance in CROSS_SITE {
        for method in ["GET", "HEAD"] {
            let reply = app
                .send(
                    provenance.apply(request(method, "/count", Some(&cookie))),
                    "",
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{method} {provenance:?}");
        }
    }
}

#[tokio::test]
async fn allowed_origins_may_post() {
    let app = App::new(Csrf::default().with_allowed_origins(["https://admin.example.com"]));
    let cookie = app.session().await;
    let reply = app
        .send(
            post_to("/count", Some(&cookie))
                .header("sec-fetch-site", "same-site")
                .header(http::header::ORIGIN, "https://admin.example.com"),
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let other = app
        .send(
            post_to("/count", Some(&cookie))
                .header("sec-fetch-site", "same-site")
                .header(http::header::ORIGIN, "https://blog.example.com"),
            "",
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_request_scheme_is_part_of_its_origin() {
    let app = App::new(Csrf::default());
    let cookie = app.session().await;
    let https = |origin: &'static str| {
        request("POST", "https://app.example.com/count", Some(&cookie))
            .header(http::header::ORIGIN, origin)
    };
    let same = app.send(https("https://app.example.com"), "").await;
    assert_eq!(same.status, StatusCode::OK);
    let downgraded = app.send(https("http://app.example.com"), "").await;
    assert_eq!(downgraded.status, StatusCode::FORBIDDEN);
    let other_port = app.send(https("https://app.example.com:8443"), "").await;
    assert_eq!(other_port.status, StatusCode::FORBIDDEN);
    let null = app.send(https("null"), "").await;
    assert_eq!(null.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_header_token_is_required_when_configured() {
    let app = App::new(Csrf::default().with_header_token_required(true));
    let cookie = app.session().await;
    let token = app.csrf_token(&cookie).await;
    let calls = app.calls();

    let missing = app.send(post_to("/count", Some(&cookie)), "").await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert!(missing.body.contains("CSRF token"), "{}", missing.body);

    let other_cookie = app.session().await;
    let others = app.csrf_token(&other_cookie).await;
    let wrong = app
        .send(
            post_to("/count", Some(&cookie)).header("x-csrf-token", &others),
            "",
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let garbage = app
        .send(
            post_to("/count", Some(&cookie)).header("x-csrf-token", "not-a-token"),
            "",
        )
        .await;
    assert_eq!(garbage.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.calls(),
        calls + 1,
        "only the second session's creation ran"
    );

    let right = app
        .send(
            post_to("/count", Some(&cookie)).header("x-csrf-token", &token),
            "",
        )
        .await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(right.body, "2");
    assert_eq!(
        app.rejections(),
        [RejectReason::CsrfTokenMismatch; 3],
        "each refusal is an event"
    );

    // A request without a session has no token to carry (a sign-in form).
    let anonymous = app
        .send(SAME_ORIGIN[1].apply(post_to("/count", None)), "")
        .await;
    assert_eq!(anonymous.status, StatusCode::OK);
}

#[tokio::test]
async fn the_token_header_name_is_configurable() {
    let app = App::new(
        Csrf::default()
            .with_header_token_required(true)
            .with_token_header("x-xsrf"),
    );
    let cookie = app.session().await;
    let token = app.csrf_token(&cookie).await;
    let default_name = app
        .send(
            post_to("/count", Some(&cookie)).header("x-csrf-token", &token),
            "",
        )
        .await;
    assert_eq!(default_name.status, StatusCode::FORBIDDEN);
    let configured = app
        .send(
            post_to("/count", Some(&cookie)).header("x-xsrf", &token),
            "",
        )
        .await;
    assert_eq!(configured.status, StatusCode::OK);
}

#[tokio::test]
async fn the_form_token_is_checked_by_the_handler() {
    let app = App::new(Csrf::default());
    let cookie = app.session().await;
    let token = app.csrf_token(&cookie).await;

    let right = app
        .send(
            form(post_to("/transfer", Some(&cookie))),
            &format!("csrf_token={token}&amount=5"),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(right.body, "sent 5");

    for body in [
        "amount=5",
        "csrf_token=&amount=5",
        "csrf_token=abc&amount=5",
    ] {
        let wrong = app
            .send(form(post_to("/transfer", Some(&cookie))), body)
            .await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{body}");
        assert!(wrong.body.contains("CSRF token"), "{}", wrong.body);
    }
    let other_cookie = app.session().await;
    let others = app.csrf_token(&other_cookie).await;
    let swapped = app
        .send(
            form(post_to("/transfer", Some(&cookie))),
            &format!("csrf_token={others}&amount=5"),
        )
        .await;
    assert_eq!(swapped.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_token_changes_at_login_and_regeneration() {
    let app = App::new(Csrf::default().with_header_token_required(true));
    let cookie = app.session().await;
    let before = app.csrf_token(&cookie).await;

    let login = app
        .send(
            post_to("/login/alice", Some(&cookie)).header("x-csrf-token", &before),
            "",
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let signed_in = login.token().expect("a new id at login");
    let after_login = app.csrf_token(&signed_in).await;
    assert_ne!(after_login, before, "a new token at login");
    let stale = app
        .send(
            post_to("/count", Some(&signed_in)).header("x-csrf-token", &before),
            "",
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::FORBIDDEN,
        "the pre-login token is dead"
    );

    let regenerated = app
        .send(
            post_to("/regenerate", Some(&signed_in)).header("x-csrf-token", &after_login),
            "",
        )
        .await;
    assert_eq!(regenerated.status, StatusCode::OK);
    let moved = regenerated.token().expect("a new id");
    let after_regeneration = app.csrf_token(&moved).await;
    assert_ne!(after_regeneration, after_login);
    let stale = app
        .send(
            post_to("/count", Some(&moved)).header("x-csrf-token", &after_login),
            "",
        )
        .await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN);
    let fresh = app
        .send(
            post_to("/count", Some(&moved)).header("x-csrf-token", &after_regeneration),
            "",
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK);
}

#[tokio::test]
async fn the_token_reveals_neither_the_id_nor_the_session_token() {
    let app = App::new(Csrf::default());
    let cookie = app.session().await;
    let token = app.csrf_token(&cookie).await;
    for form in common::forbidden_forms(&cookie) {
        assert!(!token.contains(&form), "{form}");
    }
    // The CSRF token is no session token.
    let reply = app.send(get_from("/count", Some(&token)), "").await;
    assert_eq!(
        reply.body, "1",
        "a new session, not the one the token belongs to"
    );
}

#[tokio::test]
async fn a_first_visit_gets_a_token_for_the_session_it_starts() {
    // A sign-in page is often the first page: nothing is stored yet.
    let app = App::new(Csrf::default().with_header_token_required(true));
    let page = app.send(get_from("/token", None), "").await;
    assert_ne!(page.body, "none");
    let cookie = page.token().expect("asking for a token starts the session");
    let posted = app
        .send(
            form(post_to("/transfer", Some(&cookie))),
            &format!("csrf_token={}&amount=1", page.body),
        )
        .await;
    assert_eq!(
        posted.status,
        StatusCode::FORBIDDEN,
        "the layer wants the header"
    );
    let posted = app
        .send(
            form(post_to("/transfer", Some(&cookie)).header("x-csrf-token", &page.body)),
            &format!("csrf_token={}&amount=1", page.body),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{}", posted.body);
    assert_eq!(app.csrf_token(&cookie).await, page.body, "the same session");
}

#[tokio::test]
async fn sessions_carried_in_a_header_are_exempt() {
    let header_app = App::with(|layer| {
        layer
            .with_transport(Transport::cookie_or_header("x-session"))
            .with_csrf(Csrf::default().with_header_token_required(true))
    });
    let token = header_app.session().await;
    let reply = header_app
        .send(
            CROSS_SITE[0].apply(post_to("/count", None).header("x-session", &token)),
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "no cookie, nothing to forge");
    assert_eq!(reply.body, "2");
    // The same session in its cookie is protected.
    let cookie = header_app
        .send(CROSS_SITE[0].apply(post_to("/count", Some(&token))), "")
        .await;
    assert_eq!(cookie.status, StatusCode::FORBIDDEN);
}
