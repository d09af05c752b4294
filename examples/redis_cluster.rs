//! Two instances of one application sharing sessions through Redis.
//!
//! ```text
//! redis-server --port 6379 --save "" --appendonly no   # if none is running
//! cargo run --example redis_cluster --features redis
//! ```
//!
//! Instance A listens on http://127.0.0.1:3001 and instance B on
//! http://127.0.0.1:3002 (set `INSTANCE_A_ADDR` / `INSTANCE_B_ADDR` to
//! change them, `REDIS_URL` to use another Redis or a Cluster node). Each has
//! its own Redis connection and its own in-memory cache, as two processes
//! behind a load balancer would; they share only Redis and the signing key.
//! Pass `a` or `b` to run a single instance per process (then give both
//! processes the same `SESSION_KEY`, a base64 secret such as
//! `openssl rand -base64 64` prints).
//!
//! Cookies belong to a host, not a port, so a browser or `curl` cookie jar
//! sends the same session cookie to both:
//!
//! ```text
//! curl -c jar -b jar -X POST http://127.0.0.1:3001/login/alice   # sign in on A
//! curl -b jar http://127.0.0.1:3002/                              # B: signed in as alice
//! curl -c jar -b jar -X POST http://127.0.0.1:3002/logout         # sign out on B
//! curl -b jar http://127.0.0.1:3001/                              # A: anonymous at once
//! ```
//!
//! Like the `demo` example it serves plain HTTP with a development cookie
//! (`id`, without `Secure`); keep `CookieConfig::default()` behind HTTPS in
//! production.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use tower_session_guard::store::{CachedStore, RedisStore};
use tower_session_guard::{
    CookieConfig, Key, OnLimit, Session, SessionAdmin, SessionError, SessionLayer,
};

#[tokio::main]
async fn main() {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // Every instance must sign with the same key; in production it comes
    // from your secret store.
    let key = if std::env::var_os("SESSION_KEY").is_some() {
        Key::from_env("SESSION_KEY").unwrap_or_else(|err| panic!("{err}"))
    } else {
        Key::generate()
    };
    let which = std::env::args().nth(1).unwrap_or_default();
    let mut instances = Vec::new();
    let mut addresses = Vec::new();
    for (name, variable, default) in [
        ("A", "INSTANCE_A_ADDR", "127.0.0.1:3001"),
        ("B", "INSTANCE_B_ADDR", "127.0.0.1:3002"),
    ] {
        if !which.is_empty() && !which.eq_ignore_ascii_case(name) {
            continue;
        }
        let address: SocketAddr = std::env::var(variable)
            .unwrap_or_else(|_| default.to_owned())
            .parse()
            .unwrap_or_else(|_| panic!("{variable} must be an address such as {default}"));
        let app = instance(name, &redis_url, key.clone()).await;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}; set {variable}"));
        println!("instance {name} listening on http://{address}");
        addresses.push(address);
        instances.push(tokio::spawn(async move {
            // With the peer address, so the session list shows where each came from.
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service).await.unwrap();
        }));
    }
    if let [a, b] = addresses[..] {
        println!(
            "\nTry:\n  curl -c jar -b jar -X POST http://{a}/login/alice\n  \
             curl -b jar http://{b}/\n  \
             curl -b jar http://{b}/sessions\n  \
             curl -c jar -b jar -X POST http://{b}/logout\n  \
             curl -b jar http://{a}/\n"
        );
    }
    for instance in instances {
        instance.await.unwrap();
    }
}

/// One application instance: its own Redis connection, its own cache.
async fn instance(name: &'static str, redis_url: &str, key: Key) -> Router {
    let redis = match RedisStore::connect(redis_url).await {
        Ok(redis) => redis.with_timeout(Duration::from_secs(2)),
        Err(err) => {
            eprintln!(
                "cannot reach Redis at {redis_url}: {err}\n\
                 start one with `redis-server --port 6379 --save \"\" --appendonly no`, or set REDIS_URL"
            );
            std::process::exit(1);
        }
    };
    let store = CachedStore::new(redis, 100_000);
    let sessions = SessionLayer::new(store, key)
        .with_session_limit(3, OnLimit::EvictLeastRecent)
        // Plain-HTTP development cookie; see the module docs.
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false));
    let admin = sessions.sessions();
    Router::new()
        .route("/", get(home))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/logout/everywhere", post(logout_everywhere))
        .route("/sessions", get(list_sessions))
        .with_state(Instance { name, admin })
        .layer(sessions)
}

#[derive(Clone)]
struct Instance {
    name: &'static str,
    admin: SessionAdmin,
}

async fn home(State(instance): State<Instance>, session: Session) -> Result<String, SessionError> {
    let visits: u64 = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    let who = session.user_id().map_or_else(
        || "anonymous".to_owned(),
        |user| format!("signed in as {user}"),
    );
    Ok(format!(
        "instance {}: {who}; visit {visits} of this session\n",
        instance.name
    ))
}

async fn login(
    State(instance): State<Instance>,
    session: Session,
    Path(user): Path<String>,
) -> Result<String, SessionError> {
    // A real application checks a password first.
    session.login(user.clone()).await?;
    Ok(format!("instance {}: welcome, {user}\n", instance.name))
}

async fn logout(
    State(instance): State<Instance>,
    session: Session,
) -> Result<String, SessionError> {
    session.logout().await?;
    Ok(format!("instance {}: signed out\n", instance.name))
}

async fn logout_everywhere(
    State(instance): State<Instance>,
    session: Session,
) -> Result<String, SessionError> {
    let ended = session.logout_everywhere().await?;
    Ok(format!(
        "instance {}: {ended} session(s) ended\n",
        instance.name
    ))
}

/// The signed-in user's sessions, as any instance sees them.
async fn list_sessions(State(instance): State<Instance>, session: Session) -> String {
    let Some(user) = session.user_id() else {
        return format!("instance {}: sign in first\n", instance.name);
    };
    match instance.admin.list(&user).await {
        Ok(list) => {
            let mut text = format!(
                "instance {}: {user} has {} session(s)\n",
                instance.name,
                list.len()
            );
            for info in list {
                text.push_str(&format!(
                    "  {} from {:?} using {:?}\n",
                    info.fingerprint, info.ip, info.user_agent
                ));
            }
            text
        }
        Err(err) => format!("instance {}: {err}\n", instance.name),
    }
}
