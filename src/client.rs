//! Who is asking: the client's IP address, browser family and whether the
//! request came over HTTPS.

use std::net::{IpAddr, SocketAddr};

use http::Request;

/// What the layer knows of the client behind a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientContext {
    /// The client's IP address, when the connection's peer address is known.
    pub ip: Option<IpAddr>,
    /// Whether the request arrived over HTTPS.
    pub https: bool,
}

impl ClientContext {
    /// Reads the client context from a request.
    ///
    /// The peer address comes from a `SocketAddr` in the request
    /// extensions; HTTPS from the request URI's scheme.
    pub fn from_request<B>(request: &Request<B>) -> Self {
        Self {
            ip: peer_addr(request).map(|addr| addr.ip()),
            https: request.uri().scheme() == Some(&http::uri::Scheme::HTTPS),
        }
    }
}

fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    request.extensions().get::<SocketAddr>().copied()
}
