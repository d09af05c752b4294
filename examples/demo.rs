//! A small site with sign-in, a per-session counter and sign-out.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Then open the address it prints (http://127.0.0.1:3000 by default; set
//! `PORT=8080` to change the port, or `DEMO_ADDR=0.0.0.0:8080` the whole
//! address).
//!
//! The demo serves plain HTTP, so it uses a cookie named `id` without the
//! `Secure` flag: browsers only send `Secure` (and `__Host-`) cookies over
//! HTTPS, with an exception for `localhost`/`127.0.0.1` that not every
//! browser makes. In production keep `CookieConfig::default()`
//! (`__Host-id; Secure; HttpOnly; SameSite=Lax; Path=/`) behind HTTPS.
//!
//! Its forms are protected against cross-site request forgery: the layer
//! refuses posts from other sites (`with_csrf`), and each form carries the
//! session's CSRF token in a hidden field, which its handler checks with
//! `Session::verify_csrf` before doing anything.

mod site;

use std::net::SocketAddr;
use std::time::Duration;

use tower_session_guard::{CookieConfig, Csrf, Key, MemoryStore, SessionEvent, SessionLayer};

use site::Page;

const PAGE: Page = Page {
    title: "tower-session-guard demo",
    heading: "tower-session-guard demo",
    note: r#"<a href="/">Reload</a>"#,
};

#[tokio::main]
async fn main() {
    let address = site::address(3000);
    let sessions = SessionLayer::new(MemoryStore::default(), Key::generate())
        .with_idle_timeout(Duration::from_secs(30 * 60))
        .with_absolute_timeout(Duration::from_secs(8 * 3600))
        // Plain-HTTP development cookie; see the module docs.
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false))
        // Posts from other sites get a 403 before any handler runs.
        .with_csrf(Csrf::default())
        .with_event_handler(|event: &SessionEvent| println!("session event: {event:?}"));
    let app = site::router(PAGE, sessions);

    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}; set PORT to a free port"));
    println!(
        "demo listening on http://{}",
        listener.local_addr().unwrap()
    );
    // With the peer address, which client binding and guessing detection need.
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await.unwrap();
}
