//! Cross-site request forgery: which requests are cross-site, and which
//! must carry the session's CSRF token.
//!
//! The rules follow the OWASP CSRF Prevention Cheat Sheet: an unsafe request
//! (any method but `GET`, `HEAD`, `OPTIONS` and `TRACE`) is refused when the
//! browser says it comes from another site (Fetch Metadata,
//! `Sec-Fetch-Site`), or, from browsers that do not send Fetch Metadata,
//! when `Origin` (then `Referer`) names another origin than the request's
//! own. Everything here is a pure function of the request's headers.

use std::fmt;

use http::{HeaderName, Method, Uri};

/// The header scripts send the CSRF token in, unless configured otherwise.
pub const DEFAULT_TOKEN_HEADER: &str = "x-csrf-token";

/// Cross-site request forgery protection for
/// [`SessionLayer::with_csrf`](crate::SessionLayer::with_csrf).
///
/// What the layer does with it, for every request with an unsafe method
/// (anything but `GET`, `HEAD`, `OPTIONS` and `TRACE`) whose session
/// travels in a cookie, or that could start one (a sign-in form):
///
/// 1. **Origin check.** The request is refused with `403 Forbidden`,
///    without calling the handler, when `Sec-Fetch-Site` is `cross-site`
///    or `same-site` (a sibling subdomain is another origin), or, from a
///    browser that sends no Fetch Metadata, when `Origin` (or, without
///    it, `Referer`) names another origin than the request's own
///    (`Origin: null` included). The request's own origin is its scheme
///    (HTTPS as the layer detects it, see
///    [`with_https_only`](crate::SessionLayer::with_https_only)) and its
///    `Host` header; origins listed with
///    [`with_allowed_origins`](Self::with_allowed_origins) pass too.
///    A request with none of these headers is not from a browser that
///    could be tricked into sending it, and passes.
/// 2. **Token check**, with
///    [`with_header_token_required(true)`](Self::with_header_token_required):
///    a request that carries a session must also carry the session's
///    token, [`Session::csrf_token`](crate::Session::csrf_token), in the
///    `x-csrf-token` header ([`with_token_header`](Self::with_token_header)).
///    Forms cannot set headers: a handler that takes a form checks the
///    token itself with [`Session::verify_csrf`](crate::Session::verify_csrf).
///
/// Requests whose session travels in a header
/// ([`Transport::header`](crate::Transport::header),
/// [`Transport::bearer`](crate::Transport::bearer)) are exempt: a browser
/// never adds such a header to a forged request.
///
/// ```
/// use tower_session_guard::{Csrf, Key, MemoryStore, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
///     .with_csrf(
///         Csrf::default()
///             .with_allowed_origins(["https://admin.example.com"])
///             .with_header_token_required(true),
///     );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csrf {
    allowed_origins: Vec<Origin>,
    token_header: HeaderName,
    header_token_required: bool,
}

impl Default for Csrf {
    /// The origin check on, no extra origins, the token checked by the
    /// handlers (not required in a header by the layer).
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            token_header: HeaderName::from_static(DEFAULT_TOKEN_HEADER),
            header_token_required: false,
        }
    }
}

impl Csrf {
    /// Other origins whose pages may send unsafe requests, written as
    /// browsers send them in `Origin`: `scheme://host` or
    /// `scheme://host:port` (say, `https://admin.example.com`). Default: none.
    ///
    /// # Panics
    ///
    /// If an entry is not such an origin (a path, a wildcard, a missing
    /// scheme); the message says what to write instead.
    #[must_use]
    pub fn with_allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for origin in origins {
            let text = origin.as_ref();
            let parsed = Origin::parse(text).filter(|_| is_serialized_origin(text));
            let Some(parsed) = parsed else {
                panic!(
                    "{text:?} is not an origin for `Csrf::with_allowed_origins`; write it as browsers send it in \
                     the `Origin` header: `https://host` or `https://host:port`, with no path, no trailing `/` \
                     and no wildcard"
                );
            };
            self.allowed_origins.push(parsed);
        }
        self
    }

    /// The request header the layer reads the token from. Default:
    /// `x-csrf-token`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name.
    #[must_use]
    pub fn with_token_header(mut self, name: &str) -> Self {
        self.token_header = HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
            panic!("{name:?} is not a valid header name for the CSRF token; use lower-case letters, digits and `-`")
        });
        self
    }

    /// Whether the layer itself refuses (`403`) an unsafe request that
    /// carries a cookie session but not the session's token in the token
    /// header. Default: `false`: the origin check only, and handlers verify
    /// form tokens with [`Session::verify_csrf`](crate::Session::verify_csrf).
    ///
    /// Turn it on for applications whose pages send unsafe requests from
    /// scripts (`fetch(url, { method: "POST", headers: { "x-csrf-token":
    /// token } })`); plain HTML forms cannot set a header and would be refused.
    #[must_use]
    pub fn with_header_token_required(mut self, required: bool) -> Self {
        self.header_token_required = required;
        self
    }

    /// The header the token is read from.
    #[must_use]
    pub fn token_header(&self) -> &HeaderName {
        &self.token_header
    }

    /// Whether the layer requires the token in the header.
    #[must_use]
    pub fn header_token_required(&self) -> bool {
        self.header_token_required
    }

    /// The extra origins allowed.
    pub(crate) fn allowed_origins(&self) -> &[Origin] {
        &self.allowed_origins
    }
}

/// A web origin: scheme, host (lower case) and port.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute URL or a serialized origin; `None` for
    /// anything else, `null` included. User information (`user@host`) is
    /// refused: no browser sends it in `Origin` or `Referer`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let uri: Uri = text.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let authority = uri.authority()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        let port = match authority.port_u16() {
            Some(port) => port,
            None => default_port(&scheme)?,
        };
        Some(Self {
            host: authority.host().to_ascii_lowercase(),
            scheme,
            port,
        })
    }

    /// The origin a request was sent to: its scheme and its `Host` (or the
    /// request target's authority, as HTTP/2 sends it).
    pub(crate) fn of_request(https: bool, host: &str) -> Option<Self> {
        let scheme = if https { "https" } else { "http" };
        let authority: http::uri::Authority = host.parse().ok()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        Some(Self {
            scheme: scheme.to_owned(),
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `scheme://authority` and nothing after it.
fn is_serialized_origin(text: &str) -> bool {
    text.split_once("://")
        .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(['/', '?', '#', '*']))
}

/// Whether a request with this method can change state (RFC 9110 §9.2.1:
/// every method but the safe ones).
pub(crate) fn is_unsafe_method(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What a request says about where it comes from. Values that are not
/// UTF-8 are passed as `Some("")`: present, and naming nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Provenance<'a> {
    /// `Sec-Fetch-Site`.
    pub(crate) fetch_site: Option<&'a str>,
    /// `Origin`.
    pub(crate) origin: Option<&'a str>,
    /// `Referer`.
    pub(crate) referer: Option<&'a str>,
}

/// Whether a request comes from a page of another origin than `own` (the
/// request's own origin; `None` when the request named no host) and
/// not from one of `allowed`.
///
/// In order: an `Origin` in `allowed` passes; then Fetch Metadata decides
/// when present (`same-origin` and `none`, a user-typed address, pass;
/// `same-site`, `cross-site` and unknown values do not); then `Origin`
/// must equal `own`; then `Referer`'s origin must equal `own` or be
/// allowed; a request with none of these headers passes.
pub(crate) fn is_cross_site(
    provenance: &Provenance<'_>,
    own: Option<&Origin>,
    allowed: &[Origin],
) -> bool {
    let origin = provenance.origin.map(Origin::parse);
    if let Some(Some(origin)) = &origin {
        if allowed.contains(origin) {
            return false;
        }
    }
    if let Some(site) = provenance.fetch_site {
        let site = site.trim();
        return !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"));
    }
    let same = |candidate: &Origin| own == Some(candidate);
    if let Some(origin) = origin {
        return !origin.as_ref().is_some_and(same);
    }
    if let Some(referer) = provenance.referer {
        return !Origin::parse(referer).is_some_and(|r| same(&r) || allowed.contains(&r));
    }
    false
}

/// What the CSRF rules make of a request, before the handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CsrfVerdict {
    /// Nothing to check: a safe method, or a session in a header.
    Exempt,
    /// Refuse: the request comes from another site.
    CrossSite,
    /// The origin is fine; the session's token must be in the token header.
    NeedsHeaderToken,
    /// The origin is fine.
    Pass,
}

/// What a request must pass, from what it is: its method, whether its
/// session token came in a header, whether it carries an authentic session
/// token, and whether it comes from another site.
pub(crate) fn csrf_verdict(
    csrf: &Csrf,
    unsafe_method: bool,
    token_in_header: bool,
    has_session: bool,
    cross_site: impl FnOnce() -> bool,
) -> CsrfVerdict {
    if !unsafe_method || token_in_header {
        return CsrfVerdict::Exempt;
    }
    if cross_site() {
        return CsrfVerdict::CrossSite;
    }
    if has_session && csrf.header_token_required {
        CsrfVerdict::NeedsHeaderToken
    } else {
        CsrfVerdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Origin {
        Origin::of_request(true, "app.example.com").unwrap()
    }

    fn from(fetch_site: Option<&str>, origin: Option<&str>, referer: Option<&str>) -> bool {
        let provenance = Provenance {
            fetch_site,
            origin,
            referer,
        };
        let allowed = [Origin::parse("https://admin.example.com").unwrap()];
        is_cross_site(&provenance, Some(&own()), &allowed)
    }

    #[test]
    fn safe_methods_are_exempt_and_the_rest_are_not() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!is_unsafe_method(&method), "{method}");
        }
        for method in [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::CONNECT,
            Method::from_bytes(b"PROPFIND").unwrap(),
        ] {
            assert!(is_unsafe_method(&method), "{method}");
        }
    }

    #[test]
    fn fetch_metadata_decides_when_present() {
        assert!(!from(Some("same-origin"), None, None));
        assert!(!from(Some("none"), None, None));
        assert!(from(Some("cross-site"), None, None));
        assert!(from(Some("same-site"), None, None));
        assert!(from(Some("something-new"), None, None));
        assert!(from(Some(""), None, None));
        // Fetch Metadata wins over a matching Origin: it cannot be forged.
        assert!(from(
            Some("cross-site"),
            Some("https://app.example.com"),
            None
        ));
    }

    #[test]
    fn allowed_origins_pass_even_when_cross_site() {
        assert!(!from(
            Some("same-site"),
            Some("https://admin.example.com"),
            None
        ));
        assert!(!from(None, Some("https://admin.example.com:443"), None));
        assert!(!from(None, None, Some("https://admin.example.com/page")));
        assert!(from(Some("cross-site"), Some("https://evil.example"), None));
    }

    #[test]
    fn origin_is_compared_exactly_by_scheme_host_and_port() {
        assert!(!from(None, Some("https://app.example.com"), None));
        assert!(!from(None, Some("https://APP.Example.com"), None));
        assert!(!from(None, Some("https://app.example.com:443"), None));
        assert!(from(None, Some("http://app.example.com"), None));
        assert!(from(None, Some("https://app.example.com:8443"), None));
        assert!(from(None, Some("https://example.com"), None));
        assert!(from(
            None,
            Some("https://app.example.com.evil.example"),
            None
        ));
        assert!(from(None, Some("https://evil.example"), None));
    }

    #[test]
    fn null_and_malformed_origins_are_cross_site() {
        for origin in [
            "null",
            "",
            "app.example.com",
            "https://",
            "https://user@app.example.com",
            "ftp://app.example.com",
        ] {
            assert!(from(None, Some(origin), None), "{origin:?}");
        }
    }

    #[test]
    fn referer_is_the_fallback_when_origin_is_missing() {
        assert!(!from(None, None, Some("https://app.example.com/form?x=1")));
        assert!(from(None, None, Some("https://evil.example/attack")));
        assert!(from(None, None, Some("http://app.example.com/form")));
        assert!(from(None, None, Some("not a url")));
        // Origin, when present, is what counts.
        assert!(from(
            None,
            Some("https://evil.example"),
            Some("https://app.example.com/")
        ));
    }

    #[test]
    fn a_request_without_any_provenance_passes() {
        assert!(!from(None, None, None));
    }

    #[test]
    fn an_unknown_own_origin_matches_nothing() {
        let provenance = Provenance {
            origin: Some("https://app.example.com"),
            ..Provenance::default()
        };
        assert!(is_cross_site(&provenance, None, &[]));
    }

    #[test]
    fn own_origin_comes_from_scheme_and_host() {
        let plain = Origin::of_request(false, "localhost:3000").unwrap();
        assert_eq!(Origin::parse("http://localhost:3000"), Some(plain.clone()));
        assert_ne!(Origin::parse("https://localhost:3000"), Some(plain));
        let v6 = Origin::of_request(false, "[::1]:8080").unwrap();
        assert_eq!(Origin::parse("http://[::1]:8080"), Some(v6));
        assert_eq!(
            Origin::of_request(true, "Example.COM"),
            Origin::parse("https://example.com:443")
        );
        assert!(Origin::of_request(true, "").is_none());
        assert!(Origin::of_request(true, "a b").is_none());
    }

    #[test]
    fn the_verdict_exempts_safe_methods_and_header_sessions() {
        let csrf = Csrf::default().with_header_token_required(true);
        let cross = || true;
        assert_eq!(
            csrf_verdict(&csrf, false, false, true, cross),
            CsrfVerdict::Exempt
        );
        assert_eq!(
            csrf_verdict(&csrf, true, true, true, cross),
            CsrfVerdict::Exempt
        );
        assert_eq!(
            csrf_verdict(&csrf, true, false, false, cross),
            CsrfVerdict::CrossSite
        );
        assert_eq!(
            csrf_verdict(&csrf, true, false, true, || false),
            CsrfVerdict::NeedsHeaderToken
        );
        assert_eq!(
            csrf_verdict(&csrf, true, false, false, || false),
            CsrfVerdict::Pass
        );
        assert_eq!(
            csrf_verdict(&Csrf::default(), true, false, true, || false),
            CsrfVerdict::Pass
        );
    }

    #[test]
    #[should_panic(expected = "no path")]
    fn allowed_origins_with_a_path_are_refused_at_start_up() {
        let _ = Csrf::default().with_allowed_origins(["https://admin.example.com/"]);
    }

    #[test]
    #[should_panic(expected = "is not an origin")]
    fn allowed_origins_without_a_scheme_are_refused_at_start_up() {
        let _ = Csrf::default().with_allowed_origins(["admin.example.com"]);
    }
}
