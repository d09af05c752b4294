//! Who is asking: the client's IP address, browser family and whether the
//! request came over HTTPS.

use std::net::{IpAddr, SocketAddr};

use http::Request;

/// What the layer knows of the client behind a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientContext {
    /// The client's IP address, when the connection's peer address is known.
    pub ip: Option<IpAddr>,
    /// The User-Agent reduced to a family such as `"Chrome on Windows"`.
    pub user_agent: Option<String>,
    /// Whether the request arrived over HTTPS.
    pub https: bool,
}

/// User-Agent headers longer than this are not parsed (their family is `Other`).
const MAX_USER_AGENT_LEN: usize = 1024;

impl ClientContext {
    /// Reads the client context from a request.
    ///
    /// The peer address comes from a `SocketAddr` in the request
    /// extensions; HTTPS from the request URI's scheme.
    pub fn from_request<B>(request: &Request<B>) -> Self {
        let user_agent = request
            .headers()
            .get(http::header::USER_AGENT)
            .map(|value| match value.to_str() {
                Ok(text) => user_agent_family(text),
                Err(_) => "Other".to_owned(),
            });
        Self {
            ip: peer_addr(request).map(|addr| addr.ip()),
            user_agent,
            https: request.uri().scheme() == Some(&http::uri::Scheme::HTTPS),
        }
    }
}

fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    request.extensions().get::<SocketAddr>().copied()
}

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
