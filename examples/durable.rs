//! Sessions that survive a restart: the demo site with its sessions in a
//! SQLite file (or PostgreSQL), and its signing key in a file.
//!
//! ```text
//! cargo run --example durable --features sqlite
//! ```
//!
//! Open the address it prints (http://127.0.0.1:3004; `PORT` changes the
//! port, `DEMO_ADDR` the whole address), sign in, stop the program (Ctrl-C) and start it again: the browser
//! is still signed in and its counter goes on (the events list starts
//! afresh: it is kept in memory). Sessions are kept in
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

mod site;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tower_session_guard::{Key, SessionStore};

use site::{Events, Page, Settings};

const PAGE: Page = Page {
    title: "tower-session-guard: durable sessions",
    heading: "Durable sessions",
    note: "Restart the program: you stay signed in.",
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = site::address(3004);
    let database =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://durable-sessions.db".to_owned());
    let key_file =
        std::env::var("SESSION_KEY_FILE").unwrap_or_else(|_| "durable-sessions.key".to_owned());

    let key = load_or_create_key(Path::new(&key_file))?;
    let store = open_store(&database).await?;
    // The demo's site, time limits (`DEMO_IDLE_SECS`, ...) and cookie.
    let settings = Settings::from_env();
    let events = Events::default();
    let sessions = site::layer(store, key, settings, events.clone());
    let app = site::router(PAGE, settings, events, sessions);

    let listener = tokio::net::TcpListener::bind(address).await?;
    println!(
        "durable demo listening on http://{} (sessions in {})",
        listener.local_addr()?,
        database.split('@').next_back().unwrap_or(&database)
    );
    // With the peer address, which client binding and guessing detection need.
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await?;
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
