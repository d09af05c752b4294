//! Where the token travels: the session cookie.
//!
//! The default cookie is `__Host-id; Path=/; Secure; HttpOnly; SameSite=Lax`
//! with no `Domain` and no `Max-Age`. The `__Host-` prefix makes browsers
//! refuse the cookie unless it is `Secure`, has `Path=/` and no `Domain`,
//! which shuts out cookie tossing from sibling subdomains.

use std::fmt;

use cookie::{Cookie, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

/// How the session cookie is named and flagged.
///
/// Every setter states its default. The layer checks the combination when
/// it is given one ([`SessionLayer::with_cookie`](crate::SessionLayer::with_cookie))
/// and panics with a sentence saying what to change if browsers would refuse it.
///
/// ```
/// use tower_session_guard::{CookieConfig, SameSite};
///
/// // A browser-session cookie with the secure defaults, but SameSite=Strict.
/// let cookie = CookieConfig::default().with_same_site(SameSite::Strict);
///
/// // For local development over plain http (never in production):
/// let dev = CookieConfig::default().with_name("id").with_secure(false);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    name: String,
    path: String,
    domain: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    persistent: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: "__Host-id".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            persistent: false,
        }
    }
}

impl CookieConfig {
    /// The cookie's name. Default: `__Host-id`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The cookie's `Path`. Default: `/` (the only path a `__Host-` cookie may have).
    #[must_use]
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The cookie's `Domain`. Default: none, so the cookie goes back only to
    /// the exact host that set it (a `__Host-` cookie may not have one).
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Whether the cookie is `Secure` (sent over HTTPS only). Default: `true`.
    #[must_use]
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Whether the cookie is `HttpOnly` (hidden from scripts). Default: `true`.
    #[must_use]
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The cookie's `SameSite`. Default: `Lax`.
    #[must_use]
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// Whether the cookie outlives the browser session. Default: `false`
    /// (no `Max-Age`, the browser forgets it on exit). When `true`, `Max-Age`
    /// is the time left to the session's absolute deadline.
    #[must_use]
    pub fn with_persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// The cookie's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that browsers will accept this cookie as configured.
    ///
    /// # Errors
    ///
    /// A sentence that says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.bytes().all(is_token_byte) {
            return Err(format!(
                "the session cookie name {:?} is not a valid cookie name; use letters, digits and `-_.!#$%&'*+^`|~` only",
                self.name
            ));
        }
        if !self.path.starts_with('/')
            || self.path.bytes().any(|b| b == b';' || b.is_ascii_control())
        {
            return Err(format!(
                "the session cookie path {:?} must start with `/` and contain no `;` or control characters",
                self.path
            ));
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty()
                || domain
                    .bytes()
                    .any(|b| b == b';' || b.is_ascii_control() || b == b' ')
            {
                return Err(format!(
                    "the session cookie domain {domain:?} is not a valid domain"
                ));
            }
        }
        if has_prefix(&self.name, "__Host-") {
            if !self.secure {
                return Err(format!(
                    "the session cookie is named {:?} but `with_secure(false)` was set: browsers drop `__Host-` cookies \
                     that are not Secure; keep `with_secure(true)` or choose a name without the `__Host-` prefix",
                    self.name
                ));
            }
            if self.domain.is_some() {
                return Err(format!(
                    "the session cookie is named {:?} but has a domain: browsers drop `__Host-` cookies with a Domain; \
                     remove `with_domain(..)` or choose a name without the `__Host-` prefix",
                    self.name
                ));
            }
            if self.path != "/" {
                return Err(format!(
                    "the session cookie is named {:?} but its path is {:?}: `__Host-` cookies must have `Path=/`; \
                     remove `with_path(..)` or choose a name without the `__Host-` prefix",
                    self.name, self.path
                ));
            }
        }
        if has_prefix(&self.name, "__Secure-") && !self.secure {
            return Err(format!(
                "the session cookie is named {:?} but `with_secure(false)` was set: browsers drop `__Secure-` cookies \
                 that are not Secure; keep `with_secure(true)` or rename the cookie",
                self.name
            ));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(
                "`SameSite=None` needs a Secure cookie (browsers drop it otherwise); keep `with_secure(true)` \
                 or use `SameSite::Lax`"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn build(&self, value: String) -> Cookie<'static> {
        let mut cookie = Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }

    /// The `Set-Cookie` value that hands a client `token`.
    ///
    /// `max_age_secs` is used only for persistent cookies.
    pub(crate) fn set_cookie(&self, token: String, max_age_secs: u64) -> HeaderValue {
        let mut cookie = self.build(token);
        if self.persistent {
            let secs = i64::try_from(max_age_secs).unwrap_or(i64::MAX);
            cookie.set_max_age(cookie::time::Duration::seconds(secs));
        }
        header_value(&cookie)
    }

    /// The `Set-Cookie` value that removes the session cookie: same name,
    /// path, domain and flags, an empty value and `Max-Age=0`.
    pub(crate) fn removal_cookie(&self) -> HeaderValue {
        let mut cookie = self.build(String::new());
        cookie.set_max_age(cookie::time::Duration::ZERO);
        header_value(&cookie)
    }
}

fn header_value(cookie: &Cookie<'_>) -> HeaderValue {
    // Names, paths and domains were validated at start-up and tokens are
    // base64url, so the text is always a valid header value.
    HeaderValue::try_from(cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Browsers match the `__Host-` and `__Secure-` prefixes case-insensitively.
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// RFC 6265 `token` characters (a cookie name).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the request said about the session token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenRead<'a> {
    /// No session cookie.
    Absent,
    /// One token (possibly repeated identically).
    Present(&'a str),
    /// Several different values: none is trusted.
    Ambiguous,
}

impl TokenRead<'_> {
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

/// Reads the session cookie from every `Cookie` header of a request.
///
/// Headers that are not UTF-8 are skipped. Identical repeats of one value
/// are harmless and count as one; different values are ambiguous (cookie
/// tossing), and the request gets no session.
pub(crate) fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> TokenRead<'a> {
    let mut found: Option<&'a str> = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            if key.trim() != name {
                continue;
            }
            let value = value.trim().trim_matches('"');
            match found {
                None => found = Some(value),
                Some(seen) if seen == value => {}
                Some(_) => return TokenRead::Ambiguous,
            }
        }
    }
    found.map_or(TokenRead::Absent, TokenRead::Present)
}

/// Adds `Set-Cookie` and `Cache-Control: no-store` to response headers.
pub(crate) fn write_cookie(headers: &mut HeaderMap, cookie: HeaderValue) {
    headers.append(SET_COOKIE, cookie);
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
}

impl fmt::Display for CookieConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.build("…".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn finds_the_cookie_among_others() {
        let h = headers(&[b"a=1; __Host-id=tok; b=2"]);
        assert_eq!(read_cookie(&h, "__Host-id"), TokenRead::Present("tok"));
        assert_eq!(read_cookie(&h, "id"), TokenRead::Absent);
    }

    #[test]
    fn identical_repeats_count_once_and_different_values_are_ambiguous() {
        let h = headers(&[b"__Host-id=tok; __Host-id=tok", b"__Host-id=tok"]);
        assert_eq!(read_cookie(&h, "__Host-id"), TokenRead::Present("tok"));
        let h = headers(&[b"__Host-id=tok", b"__Host-id=other"]);
        assert_eq!(read_cookie(&h, "__Host-id"), TokenRead::Ambiguous);
    }

    #[test]
    fn non_utf8_headers_are_skipped() {
        let h = headers(&[b"__Host-id=\xff\xfe", b"__Host-id=tok"]);
        assert_eq!(read_cookie(&h, "__Host-id"), TokenRead::Present("tok"));
    }

    #[test]
    fn default_cookie_has_every_secure_flag() {
        let value = CookieConfig::default().set_cookie("tok".into(), 60);
        let text = value.to_str().unwrap();
        for part in [
            "__Host-id=tok",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!text.contains("Max-Age"), "{text}");
        assert!(!text.contains("Domain"), "{text}");
    }

    #[test]
    fn persistent_cookies_carry_max_age() {
        let value = CookieConfig::default()
            .with_persistent(true)
            .set_cookie("tok".into(), 3600);
        assert!(value.to_str().unwrap().contains("Max-Age=3600"));
    }

    #[test]
    fn removal_keeps_name_path_domain_and_flags() {
        let config = CookieConfig::default()
            .with_name("sid")
            .with_domain("example.com")
            .with_path("/app");
        let text = config.removal_cookie().to_str().unwrap().to_owned();
        for part in [
            "sid=",
            "Path=/app",
            "Domain=example.com",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Max-Age=0",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }

    #[test]
    fn host_prefix_misconfigurations_are_refused_with_advice() {
        let base = CookieConfig::default();
        assert!(base.validate().is_ok());
        let err = base.clone().with_secure(false).validate().unwrap_err();
        assert!(err.contains("with_secure(true)"), "{err}");
        let err = base
            .clone()
            .with_domain("example.com")
            .validate()
            .unwrap_err();
        assert!(err.contains("Domain"), "{err}");
        let err = base.clone().with_path("/app").validate().unwrap_err();
        assert!(err.contains("Path=/"), "{err}");
        assert!(base.clone().with_name("bad name").validate().is_err());
        let err = base
            .clone()
            .with_name("__host-id")
            .with_secure(false)
            .validate()
            .unwrap_err();
        assert!(
            err.contains("with_secure(true)"),
            "prefixes match in any case: {err}"
        );
        assert!(base
            .clone()
            .with_name("__SECURE-id")
            .with_secure(false)
            .validate()
            .is_err());
        assert!(base
            .clone()
            .with_name("id")
            .with_secure(false)
            .validate()
            .is_ok());
    }
}
