//! Who is asking: the client's IP address (trusted-proxy aware), its
//! network, its browser family, and whether the request came over HTTPS.
//!
//! Forwarding headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`)
//! are believed only when the layer is told which proxies to trust
//! ([`TrustedProxies`]); otherwise anyone could claim any address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, Request};
use serde::{Deserialize, Serialize};

/// What the layer knows of the client behind a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientContext {
    /// The client's IP address: the peer address, or, behind trusted
    /// proxies, the address they report.
    pub ip: Option<IpAddr>,
    /// The User-Agent reduced to a family such as `"Chrome on Windows"`
    /// (`None` when the header is missing).
    pub user_agent: Option<String>,
    /// Whether the request arrived over HTTPS.
    pub https: bool,
}

/// User-Agent headers longer than this are not parsed (their family is `Other`).
const MAX_USER_AGENT_LEN: usize = 1024;

/// The most forwarding-header entries read per request (from the right).
const MAX_FORWARDED_ENTRIES: usize = 64;

impl ClientContext {
    /// Reads the client context from a request, trusting no proxy.
    ///
    /// The peer address comes from axum's `ConnectInfo<SocketAddr>`
    /// (feature `axum`), tonic's `TcpConnectInfo` (feature `tonic`) or a
    /// plain `SocketAddr` in the request extensions;
    /// HTTPS from the request URI's scheme.
    pub fn from_request<B>(request: &Request<B>) -> Self {
        Self::from_request_with(request, &TrustedProxies::none())
    }

    /// Reads the client context from a request, believing forwarding
    /// headers as far as `proxies` allows.
    pub fn from_request_with<B>(request: &Request<B>, proxies: &TrustedProxies) -> Self {
        let mut context = Self::without_user_agent(request, proxies);
        context.user_agent = request
            .headers()
            .get(http::header::USER_AGENT)
            .map(family_of);
        context
    }

    /// The address and scheme only; the User-Agent family is worked out
    /// later, and only if something needs it.
    pub(crate) fn without_user_agent<B>(request: &Request<B>, proxies: &TrustedProxies) -> Self {
        let headers = request.headers();
        let peer = peer_addr(request).map(|addr| canonical(addr.ip()));
        let direct_https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS)
            || request.extensions().get::<Https>().is_some();
        let (ip, https) = match peer {
            Some(peer) if proxies.trusts_peer(peer) => {
                let chain = forwarded_chain(headers, proxies.header);
                let ip = proxies.client_in(&chain, peer);
                let https = direct_https || forwarded_https(headers, proxies.header);
                (Some(ip), https)
            }
            _ => (peer, direct_https),
        };
        Self {
            ip,
            user_agent: None,
            https,
        }
    }
}

/// The family of a raw `User-Agent` header value.
pub(crate) fn family_of(value: &http::HeaderValue) -> String {
    match value.to_str() {
        Ok(text) => user_agent_family(text),
        Err(_) => "Other".to_owned(),
    }
}

fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
    {
        return Some(addr);
    }
    extensions.get::<SocketAddr>().copied()
}

/// A request-extension marker that says the connection is TLS.
///
/// Servers that terminate TLS in-process see origin-form requests
/// (`GET /path`) with no scheme in the URI; insert `Https` into the
/// request's extensions from your TLS acceptor (or a small layer on the TLS
/// listener only) so that [`SessionLayer::with_https_only`](crate::SessionLayer::with_https_only)
/// knows the request is secure. Behind a TLS-terminating proxy, declare the
/// proxy with [`TrustedProxies`] instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Https;

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are IPv4 addresses.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Which proxies in front of the application may be believed about the
/// client's address and scheme, and which header family they set.
///
/// Proxies set either `X-Forwarded-For` with `X-Forwarded-Proto` (the
/// default: nginx, HAProxy, cloud load balancers) or the standard
/// `Forwarded` header. Only the configured family is read: a proxy that sets
/// one family passes the other through from the client untouched, so
/// reading both would let clients choose their own address and scheme.
///
/// ```
/// use tower_session_guard::client::{ForwardedHeader, TrustedProxies};
///
/// // One load balancer in front of the app, setting X-Forwarded-For/-Proto:
/// let one_hop = TrustedProxies::hops(1);
/// // Or any proxy inside these networks, setting `Forwarded`:
/// let internal = TrustedProxies::networks(["10.0.0.0/8", "fd00::/8"])
///     .unwrap()
///     .with_header(ForwardedHeader::Forwarded);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    rule: ProxyRule,
    header: ForwardedHeader,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum ProxyRule {
    #[default]
    None,
    Hops(usize),
    Networks(Vec<Network>),
}

/// The forwarding header family your proxies set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` and `X-Forwarded-Proto`. The default.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=...;proto=...` (RFC 7239).
    Forwarded,
}

impl TrustedProxies {
    /// No proxy: forwarding headers are ignored and the client is the peer.
    /// The default.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// The last `n` hops (the peer included) are proxies of yours: the
    /// client is the address `n` places left of the peer in the forwarding
    /// header.
    #[must_use]
    pub fn hops(n: usize) -> Self {
        Self {
            rule: ProxyRule::Hops(n),
            header: ForwardedHeader::default(),
        }
    }

    /// Peers inside these networks (CIDR text such as `10.0.0.0/8`) are
    /// proxies of yours: the client is the right-most address in the chain
    /// that is not inside them.
    ///
    /// # Errors
    ///
    /// [`InvalidProxyNetwork`] for the first entry that is not a network.
    pub fn networks<I, S>(networks: I) -> Result<Self, InvalidProxyNetwork>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        networks
            .into_iter()
            .map(|text| {
                let text = text.as_ref();
                text.parse::<Network>()
                    .map_err(|_| InvalidProxyNetwork(text.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|networks| Self {
                rule: ProxyRule::Networks(networks),
                header: ForwardedHeader::default(),
            })
    }

    /// Which header family the proxies set. Default: [`ForwardedHeader::XForwardedFor`].
    #[must_use]
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    fn trusts_peer(&self, peer: IpAddr) -> bool {
        match &self.rule {
            ProxyRule::None => false,
            ProxyRule::Hops(n) => *n > 0,
            ProxyRule::Networks(networks) => networks.iter().any(|n| n.contains(peer)),
        }
    }

    /// The client in `chain` (left to right, as sent), given the peer.
    fn client_in(&self, chain: &[Option<IpAddr>], peer: IpAddr) -> IpAddr {
        // Walk from the peer leftwards. `None` marks an entry that did not
        // parse: nothing left of it can be believed.
        let mut current = peer;
        match &self.rule {
            ProxyRule::None => peer,
            ProxyRule::Hops(n) => {
                for entry in chain.iter().rev().take(*n) {
                    match entry {
                        Some(ip) => current = *ip,
                        None => break,
                    }
                }
                current
            }
            ProxyRule::Networks(networks) => {
                for entry in chain.iter().rev() {
                    if !networks.iter().any(|n| n.contains(current)) {
                        break;
                    }
                    match entry {
                        Some(ip) => current = *ip,
                        None => break,
                    }
                }
                current
            }
        }
    }
}

/// The addresses in the configured forwarding header, left to right, at
/// most [`MAX_FORWARDED_ENTRIES`] of the right-most.
fn forwarded_chain(headers: &HeaderMap, family: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let entries: Vec<Option<IpAddr>> = match family {
        ForwardedHeader::Forwarded => {
            joined(headers, &http::header::FORWARDED).map_or_else(Vec::new, |text| {
                text.split(',')
                    .map(|element| {
                        element
                            .split(';')
                            .find_map(|pair| {
                                let (key, value) = pair.split_once('=')?;
                                key.trim().eq_ignore_ascii_case("for").then_some(value)
                            })
                            .and_then(parse_node)
                    })
                    .collect()
            })
        }
        ForwardedHeader::XForwardedFor => joined(headers, &X_FORWARDED_FOR)
            .map_or_else(Vec::new, |text| text.split(',').map(parse_node).collect()),
    };
    let skip = entries.len().saturating_sub(MAX_FORWARDED_ENTRIES);
    // Beyond the cap, the left-most kept entry is treated as unreadable.
    let mut kept: Vec<Option<IpAddr>> = entries.into_iter().skip(skip).collect();
    if skip > 0 {
        if let Some(first) = kept.first_mut() {
            *first = None;
        }
    }
    kept
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// All values of a header joined by commas; non-UTF-8 values make it unreadable.
fn joined(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let text = value.to_str().ok()?;
        match &mut out {
            Some(all) => {
                all.push(',');
                all.push_str(text);
            }
            None => out = Some(text.to_owned()),
        }
    }
    out
}

/// One node of a forwarding header: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`,
/// `"[2001:db8::1]"`, `fe80::1%eth0`. Obfuscated and `unknown` nodes are `None`.
pub(crate) fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"').trim();
    if text.len() > 100 {
        return None;
    }
    let host = if let Some(rest) = text.strip_prefix('[') {
        rest.split(']').next()?
    } else if text.matches(':').count() == 1 {
        // IPv4 with a port.
        text.split(':').next()?
    } else {
        text
    };
    // Zone ids name a local interface; they say nothing about the client.
    let host = host.split('%').next()?;
    host.parse::<IpAddr>().ok().map(canonical)
}

/// Whether a trusted proxy says the original request was HTTPS, in the
/// configured header family. The right-most value is our own proxy's.
fn forwarded_https(headers: &HeaderMap, family: ForwardedHeader) -> bool {
    match family {
        ForwardedHeader::Forwarded => joined(headers, &http::header::FORWARDED)
            .and_then(|text| {
                text.rsplit(',').next().map(|last| {
                    last.split(';').any(|pair| {
                        pair.split_once('=').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("proto")
                                && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
                        })
                    })
                })
            })
            .unwrap_or(false),
        ForwardedHeader::XForwardedFor => joined(headers, &X_FORWARDED_PROTO)
            .and_then(|text| {
                text.rsplit(',')
                    .next()
                    .map(|p| p.trim().eq_ignore_ascii_case("https"))
            })
            .unwrap_or(false),
    }
}

/// Checks network prefix lengths given to a builder.
///
/// # Panics
///
/// If `ipv4` is over 32 or `ipv6` over 128, with a sentence saying so.
pub(crate) fn checked_prefixes(ipv4: u8, ipv6: u8) -> (u8, u8) {
    assert!(
        ipv4 <= 32 && ipv6 <= 128,
        "network prefixes are at most 32 bits for IPv4 and 128 for IPv6"
    );
    (ipv4, ipv6)
}

/// A trusted-proxy network that is not written as a network, from
/// [`TrustedProxies::networks`]; holds the text given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidProxyNetwork(pub String);

impl fmt::Display for InvalidProxyNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a network; write it as CIDR, e.g. `10.0.0.0/8`",
            self.0
        )
    }
}

impl std::error::Error for InvalidProxyNetwork {}

/// An IP network: an address and a prefix length, such as `203.0.113.0/24`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

/// The IPv4 prefix length that makes addresses one network unless
/// configured otherwise (client binding, guessing detection, events): /24.
pub const DEFAULT_IPV4_PREFIX: u8 = 24;

/// The IPv6 prefix length that makes addresses one network unless
/// configured otherwise (client binding, guessing detection, events): /48.
pub const DEFAULT_IPV6_PREFIX: u8 = 48;

impl Network {
    /// The network of `ip` with the default prefixes
    /// ([`DEFAULT_IPV4_PREFIX`], [`DEFAULT_IPV6_PREFIX`]).
    #[must_use]
    pub fn of_default(ip: IpAddr) -> Self {
        Self::of(ip, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX)
    }

    /// The network of `ip` with an IPv4 prefix of `v4_prefix` bits and an
    /// IPv6 prefix of `v6_prefix` bits (say 24 and 48).
    #[must_use]
    pub fn of(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let prefix = v4_prefix.min(32);
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                Self {
                    base: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let prefix = v6_prefix.min(128);
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                Self {
                    base: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    prefix,
                }
            }
        }
    }

    /// Whether `ip` is inside this network.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.base, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => Self::of(ip, self.prefix, 128) == *self,
            (IpAddr::V6(_), IpAddr::V6(_)) => Self::of(ip, 32, self.prefix) == *self,
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Network {
    type Err = InvalidNetwork;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (base, prefix) = match text.split_once('/') {
            Some((base, prefix)) => (base, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = base.trim().parse().map_err(|_| InvalidNetwork)?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| InvalidNetwork)?,
            None => max,
        };
        if prefix > max {
            return Err(InvalidNetwork);
        }
        Ok(Self::of(ip, prefix, prefix))
    }
}

impl From<Network> for String {
    fn from(network: Network) -> Self {
        network.to_string()
    }
}

impl TryFrom<String> for Network {
    type Error = InvalidNetwork;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// Text that is not a network in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidNetwork;

impl fmt::Display for InvalidNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a network in CIDR form, such as `10.0.0.0/8` or `2001:db8::/32`")
    }
}

impl std::error::Error for InvalidNetwork {}

/// Reduces a User-Agent header to its browser and platform families, with
/// no version numbers: browsers update mid-session, and a session should
/// survive Chrome 130 becoming Chrome 131.
///
/// ```
/// use tower_session_guard::client::user_agent_family;
///
/// let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
///               (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// assert_eq!(user_agent_family(chrome), "Chrome on Windows");
/// ```
#[must_use]
pub fn user_agent_family(user_agent: &str) -> String {
    if user_agent.trim().is_empty() {
        return "Other".to_owned();
    }
    if user_agent.len() > MAX_USER_AGENT_LEN {
        return "Other".to_owned();
    }
    let browser = browser_family(user_agent);
    match platform_family(user_agent) {
        Some(platform) => format!("{browser} on {platform}"),
        None => browser.to_owned(),
    }
}

fn browser_family(ua: &str) -> &'static str {
    // Order matters: Edge and Opera also say "Chrome", Chrome also says "Safari".
    const BROWSERS: &[(&str, &str)] = &[
        ("Edg/", "Edge"),
        ("EdgA/", "Edge"),
        ("EdgiOS/", "Edge"),
        ("OPR/", "Opera"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("Wget/", "Wget"),
        ("okhttp/", "OkHttp"),
        ("python-requests/", "Python Requests"),
        ("Go-http-client/", "Go"),
    ];
    BROWSERS
        .iter()
        .find(|(marker, _)| ua.contains(marker))
        .map_or("Other", |(_, family)| family)
}

fn platform_family(ua: &str) -> Option<&'static str> {
    const PLATFORMS: &[(&str, &str)] = &[
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iOS"),
        ("CrOS", "ChromeOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Macintosh", "macOS"),
        ("Linux", "Linux"),
    ];
    PLATFORMS
        .iter()
        .find(|(marker, _)| ua.contains(marker))
        .map(|(_, family)| *family)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &[u8])]) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        request
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let r = request(
            "198.51.100.7:5000",
            &[
                ("x-forwarded-for", b"1.2.3.4"),
                ("forwarded", b"for=5.6.7.8;proto=https"),
            ],
        );
        let ctx = ClientContext::from_request(&r);
        assert_eq!(ctx.ip, ip("198.51.100.7"));
        assert!(!ctx.https);
        let only_internal = TrustedProxies::networks(["10.0.0.0/8"]).unwrap();
        let ctx = ClientContext::from_request_with(&r, &only_internal);
        assert_eq!(
            ctx.ip,
            ip("198.51.100.7"),
            "the peer is not one of our proxies"
        );
        assert!(!ctx.https);
    }

    #[test]
    fn trusted_hops_pick_the_client_from_the_right() {
        let r = request(
            "10.0.0.2:80",
            &[("x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.0.0.1")],
        );
        assert_eq!(
            ClientContext::from_request_with(&r, &TrustedProxies::hops(1)).ip,
            ip("10.0.0.1")
        );
        assert_eq!(
            ClientContext::from_request_with(&r, &TrustedProxies::hops(2)).ip,
            ip("203.0.113.9")
        );
        let nets = TrustedProxies::networks(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            ClientContext::from_request_with(&r, &nets).ip,
            ip("203.0.113.9"),
            "6.6.6.6 was client-supplied"
        );
    }

    #[test]
    fn forwarded_header_is_understood() {
        let r = request(
            "10.0.0.2:80",
            &[(
                "forwarded",
                b"for=\"[2001:db8::7]:4711\";proto=http, for=192.0.2.60;proto=https;by=10.0.0.2",
            )],
        );
        let one = TrustedProxies::hops(1).with_header(ForwardedHeader::Forwarded);
        let ctx = ClientContext::from_request_with(&r, &one);
        assert_eq!(ctx.ip, ip("192.0.2.60"));
        assert!(ctx.https, "the right-most element is our proxy's");
        let two = TrustedProxies::hops(2).with_header(ForwardedHeader::Forwarded);
        let ctx = ClientContext::from_request_with(&r, &two);
        assert_eq!(ctx.ip, ip("2001:db8::7"));
        let ctx = ClientContext::from_request_with(&r, &TrustedProxies::hops(1));
        assert_eq!(
            ctx.ip,
            ip("10.0.0.2"),
            "Forwarded is not read when the proxies set X-Forwarded-For"
        );
        assert!(!ctx.https);
    }

    #[test]
    fn a_client_supplied_forwarded_header_is_not_mixed_with_x_forwarded_for() {
        // The proxy sets X-Forwarded-*; the client adds its own `Forwarded`.
        let r = request(
            "10.0.0.2:80",
            &[
                ("x-forwarded-for", b"198.51.100.7"),
                ("x-forwarded-proto", b"http"),
                ("forwarded", b"for=9.9.9.9;proto=https"),
            ],
        );
        let ctx = ClientContext::from_request_with(&r, &TrustedProxies::hops(1));
        assert_eq!(ctx.ip, ip("198.51.100.7"));
        assert!(!ctx.https);
    }

    #[test]
    fn the_https_marker_says_the_connection_is_tls() {
        let mut r = request("203.0.113.1:443", &[]);
        assert!(!ClientContext::from_request(&r).https);
        r.extensions_mut().insert(Https);
        assert!(ClientContext::from_request(&r).https);
    }

    #[test]
    fn x_forwarded_proto_counts_only_from_a_trusted_proxy() {
        let r = request("10.0.0.2:80", &[("x-forwarded-proto", b"https")]);
        assert!(ClientContext::from_request_with(&r, &TrustedProxies::hops(1)).https);
        assert!(!ClientContext::from_request(&r).https);
    }

    #[test]
    fn malformed_forwarding_headers_never_panic_and_stop_the_walk() {
        let trusted = TrustedProxies::hops(3);
        let garbage = request(
            "10.0.0.2:80",
            &[("x-forwarded-for", b"garbage, ;;;, 203.0.113.5")],
        );
        assert_eq!(
            ClientContext::from_request_with(&garbage, &trusted).ip,
            ip("203.0.113.5"),
            "nothing left of an unreadable entry is believed"
        );
        let long: String = (0..1000)
            .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(", ");
        let r = request("10.0.0.2:80", &[("x-forwarded-for", long.as_bytes())]);
        assert_eq!(
            ClientContext::from_request_with(&r, &TrustedProxies::hops(1)).ip,
            ip("10.1.3.231")
        );
        let nets = TrustedProxies::networks(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            ClientContext::from_request_with(&r, &nets).ip,
            ip("10.1.3.169"),
            "the walk stops at the cap of 64 entries"
        );
        let zoned = request("10.0.0.2:80", &[("x-forwarded-for", b"fe80::1%eth0")]);
        assert_eq!(
            ClientContext::from_request_with(&zoned, &trusted).ip,
            ip("fe80::1")
        );
        let binary = request("10.0.0.2:80", &[("x-forwarded-for", b"\xff\xfe")]);
        assert_eq!(
            ClientContext::from_request_with(&binary, &trusted).ip,
            ip("10.0.0.2")
        );
        let unknown = request("10.0.0.2:80", &[("forwarded", b"for=unknown, for=_hidden")]);
        assert_eq!(
            ClientContext::from_request_with(&unknown, &trusted).ip,
            ip("10.0.0.2")
        );
    }

    #[test]
    fn user_agents_of_any_shape_give_a_family() {
        let missing = request("1.1.1.1:1", &[]);
        assert_eq!(ClientContext::from_request(&missing).user_agent, None);
        let empty = request("1.1.1.1:1", &[("user-agent", b"")]);
        assert_eq!(
            ClientContext::from_request(&empty).user_agent.as_deref(),
            Some("Other")
        );
        let huge = vec![b'a'; 8 * 1024];
        let long = request("1.1.1.1:1", &[("user-agent", &huge)]);
        assert_eq!(
            ClientContext::from_request(&long).user_agent.as_deref(),
            Some("Other")
        );
        let binary = request("1.1.1.1:1", &[("user-agent", b"Mozilla \xff\xfe")]);
        assert_eq!(
            ClientContext::from_request(&binary).user_agent.as_deref(),
            Some("Other")
        );
    }

    #[test]
    fn networks_mask_and_contain() {
        let n = Network::of(ip("203.0.113.77").unwrap(), 24, 48);
        assert_eq!(n.to_string(), "203.0.113.0/24");
        assert!(n.contains(ip("203.0.113.1").unwrap()));
        assert!(!n.contains(ip("203.0.114.1").unwrap()));
        let v6 = Network::of(ip("2001:db8:1:2::5").unwrap(), 24, 48);
        assert_eq!(v6.to_string(), "2001:db8:1::/48");
        assert!(v6.contains(ip("2001:db8:1:ffff::1").unwrap()));
        assert_eq!(
            "10.0.0.0/8".parse::<Network>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
        let mapped = Network::of(ip("::ffff:203.0.113.9").unwrap(), 24, 48);
        assert_eq!(mapped, n, "IPv4-mapped addresses are IPv4");
    }

    #[test]
    fn versions_do_not_change_the_family() {
        let v130 = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";
        let v131 = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";
        assert_eq!(user_agent_family(v130), user_agent_family(v131));
        assert_eq!(user_agent_family(v130), "Chrome on Linux");
    }

    #[test]
    fn families_are_told_apart() {
        let firefox =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0";
        let safari = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";
        assert_eq!(user_agent_family(firefox), "Firefox on Windows");
        assert_eq!(user_agent_family(edge), "Edge on Windows");
        assert_eq!(user_agent_family(safari), "Safari on iOS");
        assert_eq!(user_agent_family("curl/8.5.0"), "curl");
    }

    #[test]
    fn odd_user_agents_are_other() {
        assert_eq!(user_agent_family(""), "Other");
        assert_eq!(user_agent_family("   "), "Other");
        assert_eq!(user_agent_family(&"Chrome/1 ".repeat(1000)), "Other");
        assert_eq!(user_agent_family("something"), "Other");
    }
}
