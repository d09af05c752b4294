//! Sessions that survive a restart: the demo site with its sessions in a
//! SQLite file (or PostgreSQL), and its signing key in a file.
//!
//! ```text
//! cargo run --example durable --features sqlite
//! ```
//!
//! Open the address it prints (http://127.0.0.1:3000; `DEMO_ADDR` changes
//! it), sign in, stop the program (Ctrl-C) and start it again: the browser
//! is still signed in and its visit counter goes on. Sessions are kept in
//! `durable-sessions.db` and the key in `durable-sessions.key`, in the
//! current directory (`DATABASE_URL` and `SESSION_KEY_FILE` change them).
//!
//! With PostgreSQL instead (the `postgres` feature as well):
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example durable --features sqlite,postgres
//! ```
//!
//! Both the sessions and the key must outlive the process: a new key would
//! make every cookie issued before the restart unverifiable. Keep the key
//! file secret (it is created readable by its owner only).
//!
//! The demo serves plain HTTP, so it uses a cookie named `id` without the
//! `Secure` flag; in production keep `CookieConfig::default()` behind HTTPS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use tower_session_guard::{
    CookieConfig, Key, Session, SessionError, SessionEvent, SessionLayer, SessionStore,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address: SocketAddr = std::env::var("DEMO_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()
        .expect("DEMO_ADDR must be an address such as 127.0.0.1:3000");
    let database =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://durable-sessions.db".to_owned());
    let key_file =
        std::env::var("SESSION_KEY_FILE").unwrap_or_else(|_| "durable-sessions.key".to_owned());

    let key = load_or_create_key(Path::new(&key_file))?;
    let store = open_store(&database).await?;
    let sessions = SessionLayer::new(store, key)
        .with_idle_timeout(Duration::from_secs(30 * 60))
        .with_absolute_timeout(Duration::from_secs(8 * 3600))
        // Plain-HTTP development cookie; see the module docs.
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false))
        .with_event_handler(|event: &SessionEvent| println!("session event: {event:?}"));

    let app = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(sessions);

    let listener = tokio::net::TcpListener::bind(address).await?;
    println!(
        "durable demo listening on http://{} (sessions in {})",
        listener.local_addr()?,
        database.split('@').next_back().unwrap_or(&database)
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// The store `url` names, its tables created or upgraded, its purge task
/// running every ten minutes.
async fn open_store(url: &str) -> Result<Arc<dyn SessionStore>, Box<dyn std::error::Error>> {
    if url.starts_with("postgres") {
        #[cfg(feature = "postgres")]
        {
            let pool = sqlx::postgres::PgPoolOptions::new().connect(url).await?;
            let store = tower_session_guard::PostgresStore::new(pool);
            store.migrate().await?;
            let _purge = store.spawn_purge_task(Duration::from_secs(600));
            return Ok(Arc::new(store));
        }
        #[cfg(not(feature = "postgres"))]
        return Err("DATABASE_URL names PostgreSQL: run with `--features sqlite,postgres`".into());
    }
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(options.create_if_missing(true))
        .await?;
    let store = tower_session_guard::SqliteStore::new(pool);
    store.migrate().await?;
    let _purge = store.spawn_purge_task(Duration::from_secs(600));
    Ok(Arc::new(store))
}

/// The signing key from `path`, or a new one written there (owner-only).
fn load_or_create_key(path: &Path) -> Result<Key, Box<dyn std::error::Error>> {
    use rand::TryRngCore as _;

    if let Ok(bytes) = std::fs::read(path) {
        return Ok(Key::from_bytes(&bytes)?);
    }
    let mut bytes = [0u8; 64];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, &bytes)?;
    Ok(Key::from_bytes(&bytes)?)
}

async fn home(session: Session) -> Result<Html<String>, SessionError> {
    let visits: u64 = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    let who = match session.user_id() {
        Some(user) => format!(
            r#"<p>Signed in as <strong id="user">{}</strong>.</p>
<form method="post" action="/logout"><button id="logout" type="submit">Sign out</button></form>"#,
            escape(&user)
        ),
        None => r#"<p id="user-anonymous">Not signed in.</p>
<form method="post" action="/login">
  <label>User name <input id="username" name="username" autocomplete="username" required maxlength="64"></label>
  <button id="login" type="submit">Sign in</button>
</form>"#
            .to_owned(),
    };
    Ok(Html(format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>tower-session-guard: durable sessions</title></head>
<body>
<h1>Durable sessions</h1>
<p>Visits in this session: <strong id="visits">{visits}</strong></p>
{who}
<p>Restart the program: you stay signed in.</p>
</body>
</html>"#
    )))
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
}

async fn login(session: Session, Form(form): Form<LoginForm>) -> Response {
    let username = form.username.trim();
    if username.is_empty() || username.len() > 64 {
        return Redirect::to("/").into_response();
    }
    // A real site checks a password here.
    match session.login(username).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(err) => err.into_response(),
    }
}

async fn logout(session: Session) -> Response {
    match session.logout().await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(err) => err.into_response(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
