//! The session layer around a plain hyper service: no axum, no router.
//!
//! ```text
//! cargo run --example hyper_service
//! ```
//!
//! Then open the address it prints (http://127.0.0.1:3003 by default; set
//! `PORT=8080` to change the port) and reload, or use curl with a cookie jar:
//! every session keeps its own count.
//!
//! ```text
//! curl -c jar -b jar http://127.0.0.1:3003/   # Visits in this session: 1
//! curl -c jar -b jar http://127.0.0.1:3003/   # Visits in this session: 2
//! curl http://127.0.0.1:3003/                 # no jar, a new session: 1
//! ```
//!
//! Any `tower::Service` over `http::Request` works the same way: the layer
//! puts a [`Session`] in the request extensions, and commits what the
//! service changed when the response goes out. The response body type must
//! implement `Default` (the layer answers some errors itself, with an empty
//! body); `http_body_util::Full<Bytes>` does.
//!
//! Like the demo it serves plain HTTP, so it uses the development cookie
//! `id` without `Secure`. In production keep `CookieConfig::default()`
//! (`__Host-id; Secure; HttpOnly; SameSite=Lax; Path=/`) behind HTTPS.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::{service_fn, ServiceBuilder};
use tower_session_guard::{CookieConfig, Key, MemoryStore, Session, SessionError, SessionLayer};

#[tokio::main]
async fn main() {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .expect("PORT must be a port number such as 8080"),
        Err(_) => 3003,
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));

    let sessions = SessionLayer::new(MemoryStore::default(), Key::generate())
        // Plain-HTTP development cookie; see the module docs.
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false));

    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}; set PORT to a free port"));
    println!(
        "hyper service listening on http://{}",
        listener.local_addr().unwrap()
    );

    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(connection) => connection,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
        };
        let service = ServiceBuilder::new()
            // Without axum's `ConnectInfo`, the layer learns the client's
            // address from a `SocketAddr` in the request extensions.
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer);
                request
            })
            .layer(sessions.clone())
            .service(service_fn(count));
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(err) = connection.await {
                eprintln!("connection from {peer} failed: {err}");
            }
        });
    }
}

/// Counts the requests made in the caller's session.
async fn count(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(session) = request.extensions().get::<Session>() else {
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session layer is not installed\n".to_owned(),
        ));
    };
    Ok(match next_visit(session) {
        Ok(visits) => text(
            StatusCode::OK,
            format!("Visits in this session: {visits}\n"),
        ),
        Err(err) => {
            // Details go to the log, not to the client.
            eprintln!("session error: {err}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n".to_owned(),
            )
        }
    })
}

/// Reads and bumps the counter. Both calls are synchronous: the layer
/// loaded the session before the service ran and saves it afterwards.
fn next_visit(session: &Session) -> Result<u64, SessionError> {
    let visits = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    Ok(visits)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
