//! The three services every benchmark compares, built the same way: one axum
//! `Router` per service with the same routes and handlers doing the same work.
//!
//! - **bare**: no session layer; the handlers return what a session handler
//!   would, without a session.
//! - **tower-session-guard**: this crate with [`MemoryStore`] and its default
//!   `__Host-id` cookie.
//! - **tower-sessions**: tower-sessions 0.14 with tower-sessions-moka-store
//!   0.15 and signed cookies (its default cookie name is `id`).
//!
//! Routes: `GET /read` reads one key, `POST /write` increments a counter,
//! `POST /new` writes one key, `POST /login` signs a user in (this crate only).
//!
//! Shared by `benches/sessions.rs` and the `bench_*` examples.
#![allow(dead_code)] // each benchmark binary uses a different part

use axum::body::Body;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tower::Service;

/// Sessions each store holds before it evicts (this crate's default).
pub const STORE_CAPACITY: u64 = 100_000;

/// One of the services under comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// No session layer.
    Bare,
    /// This crate.
    Guard,
    /// tower-sessions with its moka store and signed cookies.
    TowerSessions,
}

impl Subject {
    /// All three, in the order results are reported.
    pub const ALL: [Subject; 3] = [Subject::Bare, Subject::Guard, Subject::TowerSessions];

    /// The name used in benchmark ids, result files and the chart.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Bare => "bare",
            Subject::Guard => "tower-session-guard",
            Subject::TowerSessions => "tower-sessions",
        }
    }

    /// A fresh router (with a fresh, empty store) for this service.
    pub fn router(self) -> Router {
        match self {
            Subject::Bare => bare::router(),
            Subject::Guard => guard::router(STORE_CAPACITY),
            Subject::TowerSessions => tower_sessions_app::router(STORE_CAPACITY),
        }
    }
}

/// A request as a browser holding `cookie` would send it.
pub fn request(method: Method, path: &'static str, cookie: Option<&HeaderValue>) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = axum::http::Uri::from_static(path);
    if let Some(cookie) = cookie {
        request.headers_mut().insert(COOKIE, cookie.clone());
    }
    request
}

/// The `Cookie` header a browser would send back after `response`, if it
/// set a cookie.
pub fn cookie_from<B>(response: &Response<B>) -> Option<HeaderValue> {
    let set_cookie = response.headers().get(SET_COOKIE)?.to_str().ok()?;
    let pair = set_cookie.split(';').next()?.trim();
    HeaderValue::from_str(pair).ok()
}

/// Starts a session holding `n = 0` by calling `POST /new` without a cookie,
/// and returns the `Cookie` header that carries it.
///
/// # Panics
///
/// If the service does not answer 200 with a session cookie.
pub async fn start_session(router: &mut Router) -> HeaderValue {
    let response = router
        .call(request(Method::POST, "/new", None))
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(response.status(), StatusCode::OK, "POST /new failed");
    cookie_from(&response).expect("POST /new set no session cookie")
}

/// A `Cookie` header for the bare service, the same size as a real one, so
/// every service receives the same request.
pub fn bare_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
}

/// `<target>/bench-results`, created if needed, where the `bench_*` examples
/// leave results for `bench_chart`.
///
/// Found from this program's own path (`<target>/<profile>/examples/<name>`),
/// so it follows `CARGO_TARGET_DIR`.
pub fn results_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("cannot find this program's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("programs run from <target>/<profile>/examples/");
    let dir = target.join("bench-results");
    std::fs::create_dir_all(&dir).expect("cannot create the results folder");
    dir
}

/// No session layer: the handlers return what the session handlers would.
pub mod bare {
    use super::*;

    pub fn router() -> Router {
        Router::new()
            .route("/read", get(|| async { "0".to_owned() }))
            .route("/write", post(|| async { "1".to_owned() }))
            .route("/new", post(|| async { "0" }))
    }
}

/// This crate with its moka store and default (`__Host-id`) cookie.
pub mod guard {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower_session_guard::{Key, MemoryStore, Session, SessionError, SessionLayer};

    /// The layer with a store holding up to `capacity` sessions.
    pub fn layer(capacity: u64) -> SessionLayer {
        SessionLayer::new(MemoryStore::new(capacity), Key::generate())
    }

    pub fn router(capacity: u64) -> Router {
        routes().layer(layer(capacity))
    }

    /// The routes, for a layer over another store.
    pub fn routes() -> Router {
        Router::new()
            .route("/read", get(read))
            .route("/write", post(write))
            .route("/new", post(new))
            .route("/login", post(login))
    }

    async fn read(session: Session) -> Result<String, SessionError> {
        let n: u64 = session.get("n")?.unwrap_or(0);
        Ok(n.to_string())
    }

    async fn write(session: Session) -> Result<String, SessionError> {
        let n: u64 = session.get("n")?.unwrap_or(0);
        session.insert("n", n + 1)?;
        Ok((n + 1).to_string())
    }

    async fn new(session: Session) -> Result<&'static str, SessionError> {
        session.insert("n", 0_u64)?;
        Ok("0")
    }

    /// Signs in a different user each time, as a real sign-in page would:
    /// one user with a hundred thousand sessions is not a workload.
    async fn login(session: Session) -> Result<&'static str, SessionError> {
        static NEXT_USER: AtomicU64 = AtomicU64::new(0);
        let user = NEXT_USER.fetch_add(1, Ordering::Relaxed);
        session.login(format!("user-{user}")).await?;
        Ok("welcome")
    }
}

/// tower-sessions 0.14 with tower-sessions-moka-store 0.15 and signed cookies.
pub mod tower_sessions_app {
    use super::*;
    use tower_sessions::cookie::Key;
    use tower_sessions::service::SignedCookie;
    use tower_sessions::{Session, SessionManagerLayer, SessionStore};
    use tower_sessions_moka_store::MokaStore;

    /// The layer with a store holding up to `capacity` sessions.
    pub fn layer(capacity: u64) -> SessionManagerLayer<MokaStore, SignedCookie> {
        SessionManagerLayer::new(MokaStore::new(Some(capacity))).with_signed(Key::generate())
    }

    pub fn router(capacity: u64) -> Router {
        routes().layer(layer(capacity))
    }

    /// The routes behind a layer over `store` (another tower-sessions store).
    pub fn router_over(store: impl SessionStore + Clone) -> Router {
        routes().layer(SessionManagerLayer::new(store).with_signed(Key::generate()))
    }

    fn routes() -> Router {
        Router::new()
            .route("/read", get(read))
            .route("/write", post(write))
            .route("/new", post(new))
    }

    fn failed<E>(_: E) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    async fn read(session: Session) -> Result<String, StatusCode> {
        let n: u64 = session.get("n").await.map_err(failed)?.unwrap_or(0);
        Ok(n.to_string())
    }

    async fn write(session: Session) -> Result<String, StatusCode> {
        let n: u64 = session.get("n").await.map_err(failed)?.unwrap_or(0);
        session.insert("n", n + 1).await.map_err(failed)?;
        Ok((n + 1).to_string())
    }

    async fn new(session: Session) -> Result<&'static str, StatusCode> {
        session.insert("n", 0_u64).await.map_err(failed)?;
        Ok("0")
    }
}

/// The median of `values` (NaN when there are none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}
