//! The crate on show: sign-in with "remember me", a counter that writes
//! only when asked (a first visit stores nothing and gets no cookie), the
//! user's sessions on every device (revoke one, sign out the others), a
//! password change that needs a recent sign-in, the idle and absolute
//! deadlines counting down, the cookie as the browser received it and the
//! session's last events.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Short timeouts, to watch a session end:
//!
//! ```text
//! DEMO_IDLE_SECS=20 DEMO_ABSOLUTE_SECS=120 cargo run --example demo
//! ```
//!
//! (`DEMO_REMEMBER_SECS` sets a "remember me" sign-in's lifetime, 30 days by
//! default; `DEMO_RECENT_AUTH_SECS` how recent a sign-in the password change
//! needs, 5 minutes by default.) Sign in as the same name from a second
//! browser profile, or with curl and a cookie jar, and both sessions are
//! listed.
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

use tower_session_guard::{Key, MemoryStore};

use site::{Events, Page, Settings};

const PAGE: Page = Page {
    title: "tower-session-guard demo",
    heading: "tower-session-guard demo",
    note: "Secure server-side sessions for tower and axum: sign in here, then from a second browser profile, and watch the sessions, deadlines, cookie and events below.",
};

#[tokio::main]
async fn main() {
    let address = site::address(3000);
    let settings = Settings::from_env();
    let events = Events::default();
    let sessions = site::layer(
        MemoryStore::default(),
        Key::generate(),
        settings,
        events.clone(),
    );
    let app = site::router(PAGE, settings, events, sessions);

    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}; set PORT to a free port"));
    println!(
        "demo listening on http://{} (idle timeout {} s, absolute {} s)",
        listener.local_addr().unwrap(),
        settings.idle.as_secs(),
        settings.absolute.as_secs(),
    );
    // With the peer address, which client binding, guessing detection and
    // the sessions list's IP column need.
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await.unwrap();
}
