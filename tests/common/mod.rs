//! Shared helpers for the integration tests: a small app, request helpers,
//! a store that fails on demand, and a tracing capture.
#![allow(dead_code)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_session_guard::clock::UnixMillis;
use tower_session_guard::store::IdHash;
use tower_session_guard::store::UserLock;
use tower_session_guard::store::{Change, ChangeListener, Entry, SessionRecord};
use tower_session_guard::{
    MemoryStore, Session, SessionError, SessionLayer, SessionStore, StoreError,
};

pub const COOKIE: &str = "__Host-id";

/// The test app: a counter, reads, login/logout and per-key writes.
pub fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/count", get(count))
        .route("/read", get(read))
        .route("/whoami", get(whoami))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/regenerate", post(regenerate))
        .route("/set/{key}/{value}", post(set))
        .route("/get/{key}", get(get_key))
        .route("/noop", get(|| async { "noop" }))
        .layer(layer)
}

async fn count(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("n")?.unwrap_or(0);
    session.insert("n", n + 1)?;
    Ok((n + 1).to_string())
}

async fn read(session: Session) -> Result<String, SessionError> {
    let n: Option<u64> = session.get("n")?;
    Ok(n.map_or_else(|| "none".to_owned(), |n| n.to_string()))
}

async fn whoami(session: Session) -> String {
    session.user_id().unwrap_or_else(|| "anonymous".to_owned())
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.logout().await?;
    Ok("bye")
}

async fn regenerate(session: Session) -> &'static str {
    session.regenerate();
    "ok"
}

async fn set(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    session.insert(key, value)?;
    Ok("ok")
}

async fn get_key(session: Session, Path(key): Path<String>) -> Result<String, SessionError> {
    let value: Option<String> = session.get(&key)?;
    Ok(value.unwrap_or_else(|| "none".to_owned()))
}

/// Holds a handler at a point of its choosing until the test lets it go,
/// to line a request up against another one.
#[derive(Clone, Default)]
pub struct Gate {
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Gate {
    /// In the handler: says it got here, then waits for [`Gate::open`].
    pub async fn hold(&self) {
        self.entered.notify_one();
        self.release.notified().await;
    }

    /// In the test: waits until a handler is held.
    pub async fn reached(&self) {
        self.entered.notified().await;
    }

    /// In the test: lets the held handler go on.
    pub fn open(&self) {
        self.release.notify_one();
    }
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `Set-Cookie` values for the session cookie.
    pub fn session_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| v.starts_with(&format!("{COOKIE}=")))
            .map(str::to_owned)
            .collect()
    }

    /// The token handed out, if the response set a non-empty session cookie.
    pub fn token(&self) -> Option<String> {
        self.session_cookies().iter().find_map(|c| {
            let value = c.split(';').next()?.split_once('=')?.1;
            (!value.is_empty()).then(|| value.to_owned())
        })
    }

    /// Whether the response removed the session cookie.
    pub fn clears_cookie(&self) -> bool {
        self.session_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0"))
    }

    /// Whether the response said anything about the session cookie.
    pub fn touches_cookie(&self) -> bool {
        !self.session_cookies().is_empty()
    }
}

/// Sends one request through the app.
/// Signs `user` in on a fresh session of `app` (the test app's `/login`)
/// and returns the token.
pub async fn sign_in(app: &Router, user: &str) -> String {
    let reply = send(app, "POST", &format!("/login/{user}"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.token().expect("a login hands out a token")
}

/// Who the test app says `token` is signed in as (`anonymous` if no one).
pub async fn who_is(app: &Router, token: &str) -> Reply {
    send(app, "GET", "/whoami", Some(token)).await
}

pub async fn send(app: &Router, method: &str, uri: &str, token: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(http::header::COOKIE, format!("{COOKIE}={token}"));
    }
    send_request(app, request.body(Body::empty()).unwrap()).await
}

/// Logs `token` out on instance `b`, and asserts that instance `a` (which
/// may hold a cached copy) refuses it within 100 ms.
pub async fn logout_reaches_the_other_instance(b: &Router, a: &Router, token: &str) {
    let logout = send(b, "POST", "/logout", Some(token)).await;
    assert_eq!(logout.status, StatusCode::OK);
    let start = std::time::Instant::now();
    let refused = tokio::time::timeout(std::time::Duration::from_millis(100), async {
        while who_is(a, token).await.body != "anonymous" {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the token still worked on A 100 ms after logging out on B"
    );
    println!(
        "replay on A refused {:?} after logout on B",
        start.elapsed()
    );
}

/// Sends a request with raw `Cookie` header values.
pub async fn send_cookies(app: &Router, uri: &str, cookies: &[HeaderValue]) -> Reply {
    let mut request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    for value in cookies {
        request
            .headers_mut()
            .append(http::header::COOKIE, value.clone());
    }
    send_request(app, request).await
}

pub async fn send_request(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Every form a raw id could be written in: the token, the id bytes as
/// hex (either case), as base64 in both alphabets, and as a byte list.
pub fn forbidden_forms(token: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    let raw = URL_SAFE_NO_PAD.decode(token).unwrap();
    let id = &raw[..16];
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        token.to_owned(),
        token[..22].to_owned(),
        hex.clone(),
        hex.to_uppercase(),
        URL_SAFE_NO_PAD.encode(id),
        STANDARD.encode(id),
        format!("{id:?}"),
    ]
}

/// A store around another (a `MemoryStore` unless said) that fails on
/// demand and counts loads and writes.
#[derive(Clone)]
pub struct FlakyStore<S = MemoryStore> {
    pub inner: S,
    pub fail_reads: Arc<AtomicBool>,
    pub fail_writes: Arc<AtomicBool>,
    pub creates: Arc<AtomicUsize>,
    pub updates: Arc<AtomicUsize>,
    pub loads: Arc<AtomicUsize>,
}

impl<S> FlakyStore<S> {
    /// Counts what reaches `inner`, failing nothing until told to.
    pub fn around(inner: S) -> Self {
        Self {
            inner,
            fail_reads: Arc::default(),
            fail_writes: Arc::default(),
            creates: Arc::default(),
            updates: Arc::default(),
            loads: Arc::default(),
        }
    }

    fn check(&self, flag: &AtomicBool) -> Result<(), StoreError> {
        if flag.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "the test switched the store off".into(),
            ))
        } else {
            Ok(())
        }
    }

    pub fn writes(&self) -> usize {
        self.creates.load(Ordering::SeqCst) + self.updates.load(Ordering::SeqCst)
    }
}

impl Default for FlakyStore {
    fn default() -> Self {
        Self::around(MemoryStore::default())
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for FlakyStore<S> {
    async fn create(&self, record: &SessionRecord) -> Result<bool, StoreError> {
        self.check(&self.fail_writes)?;
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create(record).await
    }

    async fn load(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.check(&self.fail_reads)?;
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(id).await
    }

    async fn update(&self, id: &IdHash, change: &Change) -> Result<Option<u64>, StoreError> {
        self.check(&self.fail_writes)?;
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.update(id, change).await
    }

    async fn replace(
        &self,
        id: &IdHash,
        version: u64,
        with: Option<&Entry>,
    ) -> Result<bool, StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.replace(id, version, with).await
    }

    async fn delete(&self, id: &IdHash) -> Result<Option<Entry>, StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.delete(id).await
    }

    async fn index_add(
        &self,
        user_id: &str,
        id: &IdHash,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.index_add(user_id, id, until).await
    }

    async fn index_remove(&self, user_id: &str, ids: &[IdHash]) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.index_remove(user_id, ids).await
    }

    async fn index_members(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<IdHash>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.index_members(user_id, now).await
    }

    async fn lock_user(&self, user_id: &str) -> Result<UserLock, StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.lock_user(user_id).await
    }

    fn watch_changes(&self, listener: Arc<dyn ChangeListener>) -> bool {
        self.inner.watch_changes(listener)
    }
}

/// Everything `tracing` printed since [`LogCapture::install`], at every level.
///
/// One process-wide subscriber writes to one buffer (per-thread scoped
/// subscribers race with callsite-interest caching when tests run in
/// parallel); each capture reads the buffer from where it started. Other
/// tests of the same binary may add lines, so assertions look for lines,
/// never for the absence of everything else.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

/// A view of the shared buffer from one starting point.
pub struct CaptureView {
    start: usize,
}

static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();

impl LogCapture {
    /// Starts capturing (installing the process-wide subscriber the first time).
    pub fn install() -> CaptureView {
        let capture = CAPTURE.get_or_init(|| {
            let capture = Self::default();
            let writer = capture.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in tests");
            capture
        });
        let start = capture.0.lock().unwrap().len();
        CaptureView { start }
    }
}

impl CaptureView {
    pub fn text(&self) -> String {
        let buffer = CAPTURE.get().expect("installed").0.lock().unwrap();
        String::from_utf8_lossy(&buffer[self.start..]).into_owned()
    }
}

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
