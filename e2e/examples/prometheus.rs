//! Session metrics for Prometheus: an axum app with `SessionLayer` and the
//! `metrics` feature, its metrics on `GET /metrics`.
//!
//! ```text
//! cargo run -p e2e --example prometheus --features metrics
//! curl -c jar -b jar http://127.0.0.1:3006/ ; curl http://127.0.0.1:3006/metrics
//! ```
//!
//! `PORT` changes the port (default 3006).

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tower_session_guard::{CookieConfig, Key, MemoryStore, Session, SessionError, SessionLayer};

#[tokio::main]
async fn main() {
    use metrics_exporter_prometheus::PrometheusBuilder;

    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("one recorder per process");
    // Help text and units.
    tower_session_guard::metrics::describe();
    // Serve `prometheus.render()` on GET /metrics (or use the exporter's own
    // HTTP listener, its `http-listener` feature).

    // A plain-HTTP development cookie, as in the demo: browsers send
    // `__Host-`/`Secure` cookies over HTTPS only.
    let layer = SessionLayer::new(MemoryStore::default(), Key::generate())
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false));
    let app = Router::new()
        .route("/", get(count))
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .layer(layer);
    let port: u16 = std::env::var("PORT").map_or(3006, |port| {
        port.parse()
            .expect("PORT must be a port number such as 8080")
    });
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}; set PORT to a free port"));
    println!("serving on http://{address}/ (metrics on http://{address}/metrics)");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("the server runs");
}

async fn count(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("n")?.unwrap_or(0);
    session.insert("n", n + 1)?;
    Ok(format!("visit {}\n", n + 1))
}
