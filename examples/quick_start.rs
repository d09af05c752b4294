//! The README's Quick start, as a program: a counter, sign-in and sign-out
//! behind `SessionLayer`, with the key from the environment.
//!
//! ```text
//! SESSION_KEY="$(openssl rand -base64 64)" cargo run --example quick_start
//! ```
//!
//! It listens on http://127.0.0.1:3005 (`PORT` changes the port). It keeps
//! the production cookie (`__Host-id; Secure`), which browsers send back
//! over plain HTTP only to `localhost`/`127.0.0.1`, and only some of them;
//! `cargo run --example demo` uses a development cookie instead.
//!
//! Below this header the file is the README's Quick start, character for
//! character; `tests/quick_start.rs` keeps the two the same.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tower_session_guard::{Key, MemoryStore, Session, SessionError, SessionLayer};

async fn count(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("n")?.unwrap_or(0); // sync: the layer already loaded the session
    session.insert("n", n + 1)?; // saved when the response goes out
    Ok(format!("{}\n", n + 1))
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    // ...check the password first...
    session.login("user-42").await?; // new id now, old id dead, data kept
    Ok("welcome\n")
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.logout().await?; // session destroyed, cookie removed
    Ok("bye\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A base64 secret of at least 32 bytes, the same for every instance:
    // export SESSION_KEY="$(openssl rand -base64 64)"
    // When it is missing or unusable, the message says what to change.
    let key = Key::from_env("SESSION_KEY").unwrap_or_else(|err| panic!("{err}"));
    let sessions = SessionLayer::new(MemoryStore::new(100_000), key)
        .with_idle_timeout(Duration::from_secs(30 * 60))
        .with_absolute_timeout(Duration::from_secs(8 * 3600));

    let app = Router::new()
        .route("/", get(count))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(sessions);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3005".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // With the peer address: client binding and guessing detection need it.
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await?;
    Ok(())
}
