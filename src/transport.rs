//! Where the token travels: the session cookie (the default), a request
//! header for API and gRPC clients, or either.
//!
//! The default cookie is `__Host-id; Path=/; Secure; HttpOnly; SameSite=Lax`
//! with no `Domain` and no `Max-Age`. The `__Host-` prefix makes browsers
//! refuse the cookie unless it is `Secure`, has `Path=/` and no `Domain`,
//! which shuts out cookie tossing from sibling subdomains.
//!
//! The name prefixes checked at start-up ([`CookieConfig::validate`]):
//! `__Secure-` (Secure), `__Host-` (Secure, `Path=/`, no Domain), and the
//! newer `__Http-` (Secure and HttpOnly) and `__Host-Http-` (both sets),
//! which tell the server the cookie was set by a `Set-Cookie` header and
//! not by a script. The last two come from the current cookie draft
//! (rfc6265bis, after draft-httponlyprefix-weiss-http) and are documented
//! by MDN; a browser that does not know them yet treats `__Http-` as an
//! ordinary name, and `__Host-Http-` still as a `__Host-` cookie. The
//! default stays `__Host-id`, which every current browser enforces.

use std::fmt;

use cookie::{Cookie, SameSite};
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

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
    partitioned: bool,
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
            partitioned: false,
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

    /// Adds the `Partitioned` attribute (CHIPS): browsers then keep the
    /// cookie apart for each top-level site the application is embedded
    /// in (an iframe, a widget), so it cannot track a user across sites
    /// and is still sent where third-party cookies are blocked. Default: `false`.
    ///
    /// Only for applications served inside other sites' pages; browsers
    /// require `Secure` (checked at start-up), and cross-site iframes also
    /// need `with_same_site(SameSite::None)`.
    #[must_use]
    pub fn with_partitioned(mut self, partitioned: bool) -> Self {
        self.partitioned = partitioned;
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
    pub fn validate(&self) -> Result<(), CookieConfigError> {
        let name = || self.name.clone();
        if self.name.is_empty() || !self.name.bytes().all(is_token_byte) {
            return Err(CookieConfigError::InvalidName(name()));
        }
        if !self.path.starts_with('/')
            || self.path.bytes().any(|b| b == b';' || b.is_ascii_control())
        {
            return Err(CookieConfigError::InvalidPath(self.path.clone()));
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty()
                || domain
                    .bytes()
                    .any(|b| b == b';' || b.is_ascii_control() || b == b' ')
            {
                return Err(CookieConfigError::InvalidDomain(domain.clone()));
            }
        }
        if has_prefix(&self.name, "__Host-") {
            if !self.secure {
                return Err(CookieConfigError::HostPrefixNotSecure(name()));
            }
            if self.domain.is_some() {
                return Err(CookieConfigError::HostPrefixWithDomain(name()));
            }
            if self.path != "/" {
                return Err(CookieConfigError::HostPrefixWithPath {
                    name: name(),
                    path: self.path.clone(),
                });
            }
        }
        if has_prefix(&self.name, "__Secure-") && !self.secure {
            return Err(CookieConfigError::SecurePrefixNotSecure(name()));
        }
        let http_prefix =
            has_prefix(&self.name, "__Http-") || has_prefix(&self.name, "__Host-Http-");
        if http_prefix && !self.secure {
            return Err(CookieConfigError::HttpPrefixNotSecure(name()));
        }
        if http_prefix && !self.http_only {
            return Err(CookieConfigError::HttpPrefixNotHttpOnly(name()));
        }
        if self.partitioned && !self.secure {
            return Err(CookieConfigError::PartitionedNotSecure);
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(CookieConfigError::SameSiteNoneNotSecure);
        }
        Ok(())
    }

    fn build(&self, value: String) -> Cookie<'static> {
        let mut cookie = Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site)
            .partitioned(self.partitioned)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }

    /// The `Set-Cookie` value that hands a client `token`.
    ///
    /// `max_age_secs` is used only for persistent cookies.
    #[cfg(test)]
    pub(crate) fn set_cookie(&self, token: String, max_age_secs: u64) -> HeaderValue {
        self.writer().set_cookie(&token, max_age_secs, false)
    }

    /// The `Set-Cookie` value that removes the session cookie: same name,
    /// path, domain and flags, an empty value and `Max-Age=0`.
    #[cfg(test)]
    pub(crate) fn removal_cookie(&self) -> HeaderValue {
        self.writer().removal.clone()
    }

    /// The cookie's text, rendered once.
    pub(crate) fn writer(&self) -> CookieWriter {
        let rendered = self.build(String::new()).to_string();
        // "name=; attributes..." → "; attributes..."
        let attributes = rendered
            .split_once(';')
            .map_or(String::new(), |(_, rest)| format!(";{rest}"));
        let mut removal = self.build(String::new());
        removal.set_max_age(cookie::time::Duration::ZERO);
        CookieWriter {
            name: self.name.clone(),
            attributes,
            persistent: self.persistent,
            removal: header_value(&removal),
        }
    }
}

/// A cookie configuration browsers would refuse, from
/// [`CookieConfig::validate`]. Each variant's message says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieConfigError {
    /// The name is empty or holds characters a cookie name cannot.
    InvalidName(String),
    /// The path does not start with `/`, or holds `;` or control characters.
    InvalidPath(String),
    /// The domain is empty or holds `;`, spaces or control characters.
    InvalidDomain(String),
    /// A `__Host-` cookie that is not Secure.
    HostPrefixNotSecure(String),
    /// A `__Host-` cookie with a Domain.
    HostPrefixWithDomain(String),
    /// A `__Host-` cookie whose path is not `/`.
    HostPrefixWithPath {
        /// The cookie's name.
        name: String,
        /// The path it was given.
        path: String,
    },
    /// A `__Secure-` cookie that is not Secure.
    SecurePrefixNotSecure(String),
    /// `SameSite=None` on a cookie that is not Secure.
    SameSiteNoneNotSecure,
    /// A `__Http-` or `__Host-Http-` cookie that is not Secure.
    HttpPrefixNotSecure(String),
    /// A `__Http-` or `__Host-Http-` cookie that is not HttpOnly.
    HttpPrefixNotHttpOnly(String),
    /// A `Partitioned` cookie that is not Secure.
    PartitionedNotSecure,
}

impl fmt::Display for CookieConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(name) => write!(
                f,
                "the session cookie name {name:?} is not a valid cookie name; use letters, digits and `-_.!#$%&'*+^`|~` only"
            ),
            Self::InvalidPath(path) => write!(
                f,
                "the session cookie path {path:?} must start with `/` and contain no `;` or control characters"
            ),
            Self::InvalidDomain(domain) => {
                write!(f, "the session cookie domain {domain:?} is not a valid domain")
            }
            Self::HostPrefixNotSecure(name) => write!(
                f,
                "the session cookie is named {name:?} but `with_secure(false)` was set: browsers drop `__Host-` cookies \
                 that are not Secure; keep `with_secure(true)` or choose a name without the `__Host-` prefix"
            ),
            Self::HostPrefixWithDomain(name) => write!(
                f,
                "the session cookie is named {name:?} but has a domain: browsers drop `__Host-` cookies with a Domain; \
                 remove `with_domain(..)` or choose a name without the `__Host-` prefix"
            ),
            Self::HostPrefixWithPath { name, path } => write!(
                f,
                "the session cookie is named {name:?} but its path is {path:?}: `__Host-` cookies must have `Path=/`; \
                 remove `with_path(..)` or choose a name without the `__Host-` prefix"
            ),
            Self::SecurePrefixNotSecure(name) => write!(
                f,
                "the session cookie is named {name:?} but `with_secure(false)` was set: browsers drop `__Secure-` cookies \
                 that are not Secure; keep `with_secure(true)` or rename the cookie"
            ),
            Self::HttpPrefixNotSecure(name) => write!(
                f,
                "the session cookie is named {name:?} but `with_secure(false)` was set: browsers drop `__Http-` and \
                 `__Host-Http-` cookies that are not Secure; keep `with_secure(true)` or rename the cookie"
            ),
            Self::HttpPrefixNotHttpOnly(name) => write!(
                f,
                "the session cookie is named {name:?} but `with_http_only(false)` was set: browsers drop `__Http-` and \
                 `__Host-Http-` cookies that are not HttpOnly; keep `with_http_only(true)` or rename the cookie"
            ),
            Self::PartitionedNotSecure => f.write_str(
                "`with_partitioned(true)` needs a Secure cookie (browsers drop a Partitioned cookie otherwise); keep \
                 `with_secure(true)` or leave the cookie unpartitioned",
            ),
            Self::SameSiteNoneNotSecure => f.write_str(
                "`SameSite=None` needs a Secure cookie (browsers drop it otherwise); keep `with_secure(true)` \
                 or use `SameSite::Lax`",
            ),
        }
    }
}

impl std::error::Error for CookieConfigError {}

/// What a `Clear-Site-Data` response header tells the browser to forget
/// (see [`SessionLayer::with_clear_site_data_directives`](crate::SessionLayer::with_clear_site_data_directives)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SiteData {
    /// `"cookies"`: every cookie of the site (its registrable domain, so
    /// sibling subdomains' cookies too) and HTTP authentication credentials.
    Cookies,
    /// `"storage"`: `localStorage`, `sessionStorage`, IndexedDB, service
    /// workers and other script-held storage of the origin.
    Storage,
    /// `"cache"`: the browser's HTTP cache (and back/forward cache) for the origin.
    Cache,
    /// `"executionContexts"`: reloads the origin's open documents.
    ExecutionContexts,
}

impl SiteData {
    /// The directive as it appears in the header, quotes included.
    #[must_use]
    pub fn directive(self) -> &'static str {
        match self {
            Self::Cookies => "\"cookies\"",
            Self::Storage => "\"storage\"",
            Self::Cache => "\"cache\"",
            Self::ExecutionContexts => "\"executionContexts\"",
        }
    }
}

/// The `Clear-Site-Data` value for `directives` (duplicates dropped);
/// `None` when there are none.
pub(crate) fn clear_site_data(directives: &[SiteData]) -> Option<HeaderValue> {
    let mut seen: Vec<SiteData> = Vec::new();
    for directive in directives {
        if !seen.contains(directive) {
            seen.push(*directive);
        }
    }
    let text = seen
        .iter()
        .map(|d| d.directive())
        .collect::<Vec<_>>()
        .join(", ");
    (!text.is_empty()).then(|| HeaderValue::from_str(&text).expect("directives are ASCII"))
}

/// A [`CookieConfig`] rendered once at start-up: each response then only
/// joins the name, the token and the fixed attributes.
#[derive(Clone, Debug)]
pub(crate) struct CookieWriter {
    name: String,
    /// `; HttpOnly; SameSite=Lax; Secure; Path=/` and so on.
    attributes: String,
    persistent: bool,
    removal: HeaderValue,
}

impl CookieWriter {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `persistent` asks for `Max-Age` whatever the configuration says (a
    /// remember-me sign-in).
    pub(crate) fn set_cookie(
        &self,
        token: &str,
        max_age_secs: u64,
        persistent: bool,
    ) -> HeaderValue {
        let mut text =
            String::with_capacity(self.name.len() + token.len() + self.attributes.len() + 24);
        text.push_str(&self.name);
        text.push('=');
        text.push_str(token);
        text.push_str(&self.attributes);
        if self.persistent || persistent {
            text.push_str("; Max-Age=");
            text.push_str(&max_age_secs.min(i64::MAX as u64).to_string());
        }
        // Names, paths and domains were validated at start-up and tokens are
        // base64url, so the text is always a valid header value.
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub(crate) fn removal(&self) -> HeaderValue {
        self.removal.clone()
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

/// Where session tokens travel, set with
/// [`SessionLayer::with_transport`](crate::SessionLayer::with_transport).
///
/// - [`Transport::cookie`] (the default): the cookie of
///   [`CookieConfig`](crate::CookieConfig).
/// - [`Transport::header`]: a request header of your choosing; new and
///   renewed tokens come back in the same response header, and an empty
///   value tells the client to forget its token.
/// - [`Transport::bearer`]: `Authorization: Bearer <token>`; new tokens come
///   back as `Authorization: Bearer <token>` on the response.
/// - [`Transport::cookie_or_header`] / [`Transport::cookie_or_bearer`]:
///   both; the cookie takes precedence, and the answer goes back the way
///   the token came (the cookie when none came).
///
/// Header values are trimmed of surrounding spaces. A header sent twice, a
/// value that is not a token (a 16 KiB value, two comma-separated tokens),
/// or `Bearer` with nothing after it is *no session*, never an error; the
/// `Bearer` scheme name is matched case-insensitively (`bearer` works), and
/// `Authorization` headers of other schemes (`Basic ...`) are left alone.
///
/// ```
/// use tower_session_guard::{Key, MemoryStore, SessionLayer, Transport};
///
/// let api = SessionLayer::new(MemoryStore::default(), Key::generate())
///     .with_transport(Transport::header("x-session-token"));
/// let both = SessionLayer::new(MemoryStore::default(), Key::generate())
///     .with_transport(Transport::cookie_or_bearer());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transport {
    cookie: bool,
    header: Option<HeaderSlot>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HeaderSlot {
    Named(HeaderName),
    Bearer,
}

impl Default for Transport {
    fn default() -> Self {
        Self::cookie()
    }
}

impl Transport {
    /// The session cookie only. The default.
    #[must_use]
    pub fn cookie() -> Self {
        Self {
            cookie: true,
            header: None,
        }
    }

    /// A request/response header such as `x-session-token`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name, or is `cookie`, `set-cookie`
    /// or `authorization` (use [`Transport::bearer`] for the latter).
    #[must_use]
    pub fn header(name: &str) -> Self {
        let header = HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
            panic!("{name:?} is not a valid header name for session tokens; use lower-case letters, digits and `-`")
        });
        assert!(
            header != COOKIE && header != SET_COOKIE && header != AUTHORIZATION,
            "`{header}` cannot carry session tokens as a plain header; use `Transport::cookie()` or `Transport::bearer()`"
        );
        Self {
            cookie: false,
            header: Some(HeaderSlot::Named(header)),
        }
    }

    /// `Authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer() -> Self {
        Self {
            cookie: false,
            header: Some(HeaderSlot::Bearer),
        }
    }

    /// The cookie, or else the header `name` (see [`Transport::header`]).
    ///
    /// # Panics
    ///
    /// As [`Transport::header`].
    #[must_use]
    pub fn cookie_or_header(name: &str) -> Self {
        Self {
            cookie: true,
            ..Self::header(name)
        }
    }

    /// The cookie, or else `Authorization: Bearer <token>`.
    #[must_use]
    pub fn cookie_or_bearer() -> Self {
        Self {
            cookie: true,
            ..Self::bearer()
        }
    }

    /// Reads the token; says which way it came.
    pub(crate) fn read<'a>(
        &self,
        headers: &'a HeaderMap,
        cookie: &CookieWriter,
    ) -> (TokenRead<'a>, Carrier) {
        if self.cookie {
            let read = read_cookie(headers, cookie.name());
            if !read.is_absent() || self.header.is_none() {
                return (read, Carrier::Cookie);
            }
        }
        let read = match &self.header {
            Some(HeaderSlot::Named(name)) => read_header(headers, name),
            Some(HeaderSlot::Bearer) => read_bearer(headers),
            None => TokenRead::Absent,
        };
        let carrier = if read.is_absent() && self.cookie {
            Carrier::Cookie
        } else {
            Carrier::Header
        };
        (read, carrier)
    }

    /// Hands the client `token` the way it talks to us.
    pub(crate) fn issue(
        &self,
        headers: &mut HeaderMap,
        carrier: Carrier,
        cookie: &CookieWriter,
        token: &str,
        max_age: u64,
        persistent: bool,
    ) {
        match (carrier, &self.header) {
            (Carrier::Header, Some(slot)) => write_header(headers, slot, token),
            _ => write_cookie(headers, cookie.set_cookie(token, max_age, persistent)),
        }
    }

    /// Tells the client to forget its token. Returns whether it was a header.
    pub(crate) fn remove(
        &self,
        headers: &mut HeaderMap,
        carrier: Carrier,
        cookie: &CookieWriter,
    ) -> bool {
        match (carrier, &self.header) {
            (Carrier::Header, Some(slot)) => {
                write_header(headers, slot, "");
                true
            }
            _ => {
                write_cookie(headers, cookie.removal());
                false
            }
        }
    }
}

/// Which way the token came in (and so goes back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carrier {
    Cookie,
    Header,
}

fn read_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> TokenRead<'a> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return TokenRead::Absent;
    };
    if values.next().is_some() {
        return TokenRead::Ambiguous;
    }
    // Not UTF-8: certainly not a token; an empty candidate fails verification.
    TokenRead::Present(first.to_str().map_or("", str::trim))
}

fn read_bearer(headers: &HeaderMap) -> TokenRead<'_> {
    let mut bearer = None;
    for value in headers.get_all(AUTHORIZATION) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        let text = text.trim();
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            continue;
        }
        if bearer.is_some() {
            return TokenRead::Ambiguous;
        }
        bearer = Some(rest.trim());
    }
    bearer.map_or(TokenRead::Absent, TokenRead::Present)
}

fn write_header(headers: &mut HeaderMap, slot: &HeaderSlot, token: &str) {
    // Tokens are base64url, so the value is always valid.
    let (name, value) = match slot {
        HeaderSlot::Named(name) => (name.clone(), HeaderValue::from_str(token)),
        HeaderSlot::Bearer if token.is_empty() => (AUTHORIZATION, Ok(HeaderValue::from_static(""))),
        HeaderSlot::Bearer => (
            AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {token}")),
        ),
    };
    if let Ok(value) = value {
        headers.insert(name, value);
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
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

    fn header_map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn header_tokens_are_trimmed_and_repeats_are_ambiguous() {
        let transport = Transport::header("x-session-token");
        let cookie = CookieConfig::default().writer();
        let h = header_map(&[("x-session-token", b"  tok  ")]);
        assert_eq!(
            transport.read(&h, &cookie),
            (TokenRead::Present("tok"), Carrier::Header)
        );
        let h = header_map(&[("x-session-token", b"a"), ("x-session-token", b"b")]);
        assert_eq!(transport.read(&h, &cookie).0, TokenRead::Ambiguous);
        let h = header_map(&[("x-session-token", b"\xff")]);
        assert_eq!(transport.read(&h, &cookie).0, TokenRead::Present(""));
    }

    #[test]
    fn bearer_is_case_insensitive_and_ignores_other_schemes() {
        let transport = Transport::bearer();
        let cookie = CookieConfig::default().writer();
        let read = |value: &[u8]| {
            let h = header_map(&[("authorization", value)]);
            match transport.read(&h, &cookie).0 {
                TokenRead::Present(t) => Some(t.to_owned()),
                _ => None,
            }
        };
        assert_eq!(read(b"Bearer tok"), Some("tok".into()));
        assert_eq!(read(b"bearer tok"), Some("tok".into()));
        assert_eq!(
            read(b"Bearer"),
            Some(String::new()),
            "no token: fails verification"
        );
        assert_eq!(read(b"Basic dXNlcjpwYXNz"), None);
    }

    #[test]
    fn the_cookie_takes_precedence_over_the_header() {
        let transport = Transport::cookie_or_header("x-session-token");
        let cookie = CookieConfig::default().writer();
        let h = header_map(&[("cookie", b"__Host-id=c"), ("x-session-token", b"h")]);
        assert_eq!(
            transport.read(&h, &cookie),
            (TokenRead::Present("c"), Carrier::Cookie)
        );
        let h = header_map(&[("x-session-token", b"h")]);
        assert_eq!(
            transport.read(&h, &cookie),
            (TokenRead::Present("h"), Carrier::Header)
        );
        assert_eq!(
            transport.read(&HeaderMap::new(), &cookie),
            (TokenRead::Absent, Carrier::Cookie)
        );
    }

    #[test]
    #[should_panic(expected = "use `Transport::cookie()` or `Transport::bearer()`")]
    fn the_cookie_header_cannot_be_a_plain_token_header() {
        let _ = Transport::header("cookie");
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
    fn partitioned_cookies_carry_the_attribute_and_need_secure() {
        let partitioned = CookieConfig::default().with_partitioned(true);
        assert!(partitioned.validate().is_ok());
        let text = partitioned.set_cookie("t".to_owned(), 0);
        assert!(text.to_str().unwrap().contains("Partitioned"), "{text:?}");
        let removal = partitioned.removal_cookie();
        assert!(
            removal.to_str().unwrap().contains("Partitioned"),
            "{removal:?}"
        );
        let plain = CookieConfig::default().set_cookie("t".to_owned(), 0);
        assert!(
            !plain.to_str().unwrap().contains("Partitioned"),
            "{plain:?}"
        );
        let err = CookieConfig::default()
            .with_name("id")
            .with_secure(false)
            .with_partitioned(true)
            .validate()
            .unwrap_err();
        assert_eq!(err, CookieConfigError::PartitionedNotSecure);
        assert!(err.to_string().contains("with_secure(true)"), "{err}");
    }

    #[test]
    fn http_prefixes_need_secure_and_http_only() {
        for name in ["__Http-id", "__Host-Http-id", "__http-id"] {
            let base = CookieConfig::default().with_name(name);
            assert!(base.validate().is_ok(), "{name}");
            let err = base.clone().with_http_only(false).validate().unwrap_err();
            assert_eq!(
                err,
                CookieConfigError::HttpPrefixNotHttpOnly(name.to_owned())
            );
            assert!(err.to_string().contains("with_http_only(true)"), "{err}");
            let err = base.clone().with_secure(false).validate().unwrap_err();
            assert!(err.to_string().contains("with_secure(true)"), "{err}");
        }
        // `__Host-Http-` is a `__Host-` cookie too.
        let err = CookieConfig::default()
            .with_name("__Host-Http-id")
            .with_path("/app")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("Path=/"), "{err}");
    }

    #[test]
    fn host_prefix_misconfigurations_are_refused_with_advice() {
        let base = CookieConfig::default();
        assert!(base.validate().is_ok());
        let err = base
            .clone()
            .with_secure(false)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("with_secure(true)"), "{err}");
        let err = base
            .clone()
            .with_domain("example.com")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("Domain"), "{err}");
        let err = base
            .clone()
            .with_path("/app")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("Path=/"), "{err}");
        assert!(base.clone().with_name("bad name").validate().is_err());
        let err = base
            .clone()
            .with_name("__host-id")
            .with_secure(false)
            .validate()
            .unwrap_err()
            .to_string();
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
