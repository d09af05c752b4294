//! What the layer knows about signing in: per-session lifetimes
//! ([`LoginOptions`]), the credential stamp that ends sessions when a
//! password changes ([`SessionLayer::with_user_stamp`](crate::SessionLayer::with_user_stamp)),
//! the [`SignedIn`] guard and the return path it hands the sign-in page.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{duration_millis, UnixMillis};
use crate::id::IdHash;
use crate::key::Keyring;
use crate::policy::Timeouts;
use crate::record::{Deadlines, SignIn, StampHash};

/// The longest authentication method label [`LoginOptions::with_method`]
/// accepts, in bytes.
pub const MAX_METHOD_LEN: usize = 64;

/// How a sign-in's session lives: its own idle and absolute timeouts, a
/// persistent cookie, the authentication method. Handed to
/// [`Session::login_with`](crate::Session::login_with); the layer's
/// timeouts apply to whatever is not set here.
///
/// ```
/// use std::time::Duration;
/// use tower_session_guard::{LoginOptions, Session, SessionError};
///
/// async fn sign_in(session: Session, remember: bool) -> Result<(), SessionError> {
///     // ...once the password checked out:
///     let options = if remember {
///         // Signed in for 30 days, across browser restarts.
///         LoginOptions::remember_me(Duration::from_secs(30 * 86_400))
///     } else {
///         LoginOptions::new()
///     };
///     session.login_with("user-42", options.with_method("password")).await
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginOptions {
    idle: Option<Duration>,
    absolute: Option<Duration>,
    persistent: bool,
    method: Option<String>,
}

impl LoginOptions {
    /// The layer's timeouts and cookie, no method label: what
    /// [`Session::login`](crate::Session::login) does.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// "Remember me": the session lasts `lifetime` from sign-in, idle or
    /// not, and its cookie is persistent (`Max-Age` derived from the stored
    /// deadline), so it survives a browser restart.
    #[must_use]
    pub fn remember_me(lifetime: Duration) -> Self {
        Self {
            idle: Some(lifetime),
            absolute: Some(lifetime),
            persistent: true,
            method: None,
        }
    }

    /// This session's idle timeout, instead of the layer's.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle = Some(timeout);
        self
    }

    /// This session's absolute timeout, counted from sign-in, instead of the layer's.
    #[must_use]
    pub fn with_absolute_timeout(mut self, timeout: Duration) -> Self {
        self.absolute = Some(timeout);
        self
    }

    /// Whether the cookie outlives the browser session (`Max-Age`), whatever
    /// the layer's [`CookieConfig`](crate::CookieConfig) says.
    #[must_use]
    pub fn with_persistent_cookie(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// How the user proved who they are ("password", "passkey", "sso"),
    /// kept with the session and shown by [`SessionInfo`](crate::SessionInfo).
    #[must_use]
    pub fn with_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Checks the options, with a sentence for what is wrong.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        for timeout in [self.idle, self.absolute].into_iter().flatten() {
            if timeout < Duration::from_millis(1) {
                return Err("a session timeout must be at least one millisecond");
            }
        }
        if let Some(method) = &self.method {
            if method.is_empty() || method.len() > MAX_METHOD_LEN {
                return Err(
                    "an authentication method label must be 1 to 64 bytes, e.g. \"password\"",
                );
            }
        }
        Ok(())
    }

    /// The deadlines of a session signed in at `now` with these options.
    pub(crate) fn deadlines(&self, now: UnixMillis, layer: &Timeouts) -> Deadlines {
        let absolute = self.absolute.map_or(layer.absolute, duration_millis);
        let idle = self.idle.map_or(layer.idle, duration_millis);
        let absolute_deadline = now.saturating_add(absolute);
        Deadlines {
            created_at: now,
            idle_deadline: now.saturating_add(idle).min(absolute_deadline),
            absolute_deadline,
        }
    }

    /// What the session keeps of this sign-in.
    pub(crate) fn sign_in(&self, now: UnixMillis, stamp: Option<StampHash>) -> SignIn {
        SignIn {
            authenticated_at: now,
            method: self.method.as_deref().map(Into::into),
            idle_timeout: self.idle.map(duration_millis),
            absolute_timeout: self.absolute.map(duration_millis),
            persistent: self.persistent,
            stamp,
        }
    }

    /// The options a session was signed in with, to sign it in again
    /// (`reauthenticate`): the same lifetime and cookie.
    pub(crate) fn of(sign_in: &SignIn) -> Self {
        Self {
            idle: sign_in.idle_timeout.map(Duration::from_millis),
            absolute: sign_in.absolute_timeout.map(Duration::from_millis),
            persistent: sign_in.persistent,
            method: sign_in.method.as_deref().map(str::to_owned),
        }
    }
}

/// The error a credential-stamp lookup may fail with.
pub type StampError = Box<dyn std::error::Error + Send + Sync>;

/// What a credential-stamp lookup returns.
type StampFuture = Pin<Box<dyn Future<Output = Result<Option<String>, StampError>> + Send>>;

type Lookup = Arc<dyn Fn(String) -> StampFuture + Send + Sync>;

/// Sessions checked at most this many at once in a layer's stamp cache.
const STAMP_CACHE_SESSIONS: usize = 100_000;

/// The layer's credential-stamp rule: the lookup, how often a session is
/// checked, and when each was last found current.
#[derive(Clone)]
pub(crate) struct UserStamp {
    lookup: Lookup,
    interval: UnixMillis,
    checked: Arc<quick_cache::sync::Cache<IdHash, UnixMillis>>,
}

/// What a stamp check found.
#[derive(Debug)]
pub(crate) enum StampCheck {
    /// Checked within the interval, or checked now and current.
    Current,
    /// The user's credentials changed (or the user is gone): end the session.
    Changed,
    /// The lookup failed; the session can be neither accepted nor ended.
    Failed(StampError),
}

impl UserStamp {
    pub(crate) fn new<F, Fut>(interval: Duration, lookup: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<String>, StampError>> + Send + 'static,
    {
        Self {
            lookup: Arc::new(move |user| Box::pin(lookup(user))),
            interval: duration_millis(interval),
            checked: Arc::new(quick_cache::sync::Cache::new(STAMP_CACHE_SESSIONS)),
        }
    }

    /// The keyed hash to store with a sign-in of `user_id`.
    pub(crate) async fn current(
        &self,
        keyring: &Keyring,
        user_id: &str,
    ) -> Result<Option<StampHash>, StampError> {
        let stamp = (self.lookup)(user_id.to_owned()).await?;
        Ok(stamp.map(|stamp| StampHash(keyring.stamp_hash(user_id, &stamp))))
    }

    /// Checks the session `id_hash` of `user_id`, unless it was found
    /// current less than the interval ago.
    pub(crate) async fn check(
        &self,
        keyring: &Keyring,
        id_hash: IdHash,
        user_id: &str,
        stored: Option<&StampHash>,
        now: UnixMillis,
    ) -> StampCheck {
        if let Some(at) = self.checked.get(&id_hash) {
            if now.saturating_sub(at) < self.interval {
                return StampCheck::Current;
            }
        }
        let stamp = match (self.lookup)(user_id.to_owned()).await {
            Ok(stamp) => stamp,
            Err(err) => return StampCheck::Failed(err),
        };
        let current = match (stored, stamp) {
            (Some(stored), Some(stamp)) => keyring.verify_stamp(user_id, &stamp, &stored.0),
            // Signed in before the stamp was configured, or the user is gone.
            _ => false,
        };
        if current {
            self.checked.insert(id_hash, now);
            StampCheck::Current
        } else {
            self.checked.remove(&id_hash);
            StampCheck::Changed
        }
    }

    /// Marks a session just signed in (its stamp was read now).
    pub(crate) fn checked_now(&self, id_hash: IdHash, now: UnixMillis) {
        self.checked.insert(id_hash, now);
    }
}

impl fmt::Debug for UserStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserStamp")
            .field("interval_ms", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The longest return path [`safe_return_path`] accepts, in bytes.
pub const MAX_RETURN_PATH_LEN: usize = 2048;

/// `candidate` if it is a path on this site that is safe to redirect to
/// after sign-in, `None` otherwise.
///
/// A safe return path starts with one `/` and is never read by a browser
/// as another origin: no `//` or `/\` at its start (a protocol-relative
/// URL), no backslash, no control character or space (browsers drop tabs
/// and newlines, turning `/\t/evil.example` into `//evil.example`), and
/// none of that once percent-decoded, once or twice (a value decoded again
/// by a later step). Use it on the `next` parameter a sign-in form
/// receives before redirecting there.
///
/// ```
/// use tower_session_guard::safe_return_path;
///
/// assert_eq!(safe_return_path("/account?tab=devices"), Some("/account?tab=devices"));
/// assert_eq!(safe_return_path("//evil.example"), None);
/// assert_eq!(safe_return_path("https://evil.example"), None);
/// assert_eq!(safe_return_path("/\\evil.example"), None);
/// assert_eq!(safe_return_path("/%2F%2Fevil.example"), None);
/// ```
#[must_use]
pub fn safe_return_path(candidate: &str) -> Option<&str> {
    let raw = candidate.as_bytes();
    if raw.len() > MAX_RETURN_PATH_LEN
        || raw.iter().any(|&b| b == b'\\' || b.is_ascii_control())
        || !starts_on_this_site(raw)
    {
        return None;
    }
    let once = percent_decode(raw);
    let twice = percent_decode(&once);
    (starts_on_this_site(&once) && starts_on_this_site(&twice)).then_some(candidate)
}

/// Whether `path`, as a browser reads it (tabs and line breaks dropped,
/// `\` taken for `/`), starts with exactly one slash.
fn starts_on_this_site(path: &[u8]) -> bool {
    let mut read = path
        .iter()
        .filter(|&&b| !matches!(b, b'\t' | b'\n' | b'\r'))
        .map(|&b| if b == b'\\' { b'/' } else { b });
    read.next() == Some(b'/') && read.next() != Some(b'/')
}

fn percent_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' && i + 2 < text.len() {
            if let (Some(high), Some(low)) = (hex_value(text[i + 1]), hex_value(text[i + 2])) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `path` as the value of a query parameter: everything but unreserved
/// characters and `/` percent-encoded.
pub(crate) fn encode_query_value(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3 / 2);
    for &byte in path.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::FromRequestParts;
    use axum_core::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::{header, HeaderValue, Method, StatusCode};

    use super::{encode_query_value, safe_return_path};
    use crate::session::{Session, SessionLayerMissing};

    /// The signed-in user's id, for handlers only signed-in users may reach.
    ///
    /// Without a signed-in user the handler is not called: the answer is
    /// `401 Unauthorized`, or, when the layer has a sign-in page
    /// ([`SessionLayer::with_sign_in_page`](crate::SessionLayer::with_sign_in_page))
    /// and the request is a `GET` or `HEAD` (a page a browser asked for), a
    /// `303 See Other` to that page with the path to come back to in its
    /// `next` parameter. That path is always a same-site relative path (see
    /// [`safe_return_path`]); the sign-in handler checks it again before
    /// redirecting there.
    ///
    /// ```
    /// use tower_session_guard::SignedIn;
    ///
    /// async fn account(SignedIn(user): SignedIn) -> String {
    ///     format!("signed in as {user}")
    /// }
    /// ```
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SignedIn(pub String);

    /// Why a [`SignedIn`] handler was not called.
    #[derive(Debug)]
    #[non_exhaustive]
    pub enum SignInRequired {
        /// Nobody is signed in: `401`.
        Unauthorized,
        /// Nobody is signed in: `303` to this location (the sign-in page
        /// and the return path).
        Redirect(String),
        /// No `SessionLayer` ran for the request: `500`.
        LayerMissing(SessionLayerMissing),
    }

    impl std::fmt::Display for SignInRequired {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Self::Unauthorized | Self::Redirect(_) => f.write_str("sign in to continue"),
                Self::LayerMissing(missing) => std::fmt::Display::fmt(missing, f),
            }
        }
    }

    impl std::error::Error for SignInRequired {}

    impl IntoResponse for SignInRequired {
        fn into_response(self) -> Response {
            match self {
                Self::Unauthorized => (
                    StatusCode::UNAUTHORIZED,
                    "401 Unauthorized: sign in to continue",
                )
                    .into_response(),
                Self::Redirect(location) => {
                    let mut response = StatusCode::SEE_OTHER.into_response();
                    if let Ok(value) = HeaderValue::try_from(location) {
                        response.headers_mut().insert(header::LOCATION, value);
                    }
                    response
                        .headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
                Self::LayerMissing(missing) => missing.into_response(),
            }
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for SignedIn {
        type Rejection = SignInRequired;

        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
            let session = Session::from_request_parts(parts, state)
                .await
                .map_err(SignInRequired::LayerMissing)?;
            if let Some(user) = session.user_id() {
                return Ok(Self(user));
            }
            match session.sign_in_page() {
                Some(page) if parts.method == Method::GET || parts.method == Method::HEAD => {
                    // The path the browser asked for: under `Router::nest`
                    // the request's own URI has lost the prefix.
                    let uri = parts
                        .extensions
                        .get::<axum::extract::OriginalUri>()
                        .map_or(&parts.uri, |original| &original.0);
                    let here = uri
                        .path_and_query()
                        .map_or("/", http::uri::PathAndQuery::as_str);
                    let back = safe_return_path(here).unwrap_or("/");
                    let join = if page.contains('?') { '&' } else { '?' };
                    Err(SignInRequired::Redirect(format!(
                        "{page}{join}next={}",
                        encode_query_value(back)
                    )))
                }
                _ => Err(SignInRequired::Unauthorized),
            }
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::{SignInRequired, SignedIn};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_this_site() {
        for safe in [
            "/",
            "/account",
            "/a/b?c=d&e=%20f#top",
            "/%7Euser",
            "/x%2Fy",
            "/search?q=%5C",
            "/ spaced",
        ] {
            assert_eq!(safe_return_path(safe), Some(safe), "{safe:?}");
        }
        for unsafe_path in [
            "",
            "account",
            "//evil.example",
            "///evil.example",
            "https://evil.example",
            "http:/evil.example",
            "javascript:alert(1)",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/%2F%2Fevil.example",
            "%2F%2Fevil.example",
            "/%2f/evil.example",
            "/%5Cevil.example",
            "/%5cevil.example",
            "/%252F%252Fevil.example",
            "/%09/evil.example",
            "/%0a/evil.example",
            "/%5C%5Cevil.example",
            "/a\\b",
        ] {
            assert_eq!(safe_return_path(unsafe_path), None, "{unsafe_path:?}");
        }
        assert_eq!(
            safe_return_path(&format!("/{}", "a".repeat(MAX_RETURN_PATH_LEN))),
            None
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query_value("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
    }

    #[test]
    fn remember_me_outlives_the_layer_defaults() {
        let layer = Timeouts::new(Duration::from_secs(60), Duration::from_secs(3600));
        let month = Duration::from_secs(30 * 86_400);
        let deadlines = LoginOptions::remember_me(month).deadlines(1_000, &layer);
        assert_eq!(deadlines.absolute_deadline, 1_000 + 30 * 86_400_000);
        assert_eq!(deadlines.idle_deadline, deadlines.absolute_deadline);
        let plain = LoginOptions::new().deadlines(1_000, &layer);
        assert_eq!(plain.idle_deadline, 61_000);
        assert_eq!(plain.absolute_deadline, 3_601_000);
        let short = LoginOptions::new()
            .with_idle_timeout(Duration::from_secs(7200))
            .deadlines(1_000, &layer);
        assert_eq!(
            short.idle_deadline, short.absolute_deadline,
            "idle never passes absolute"
        );
    }

    #[test]
    fn bad_options_are_refused_with_a_sentence() {
        assert!(LoginOptions::new().with_method("").validate().is_err());
        assert!(LoginOptions::new()
            .with_method("x".repeat(65))
            .validate()
            .is_err());
        assert!(LoginOptions::new()
            .with_idle_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(LoginOptions::remember_me(Duration::from_secs(60))
            .with_method("password")
            .validate()
            .is_ok());
    }
}
