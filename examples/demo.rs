//! A small site with sign-in, a per-session counter and sign-out.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Then open the address it prints (http://127.0.0.1:3000 by default; set
//! `DEMO_ADDR=127.0.0.1:8080` to change it).
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

use std::net::SocketAddr;
use std::time::Duration;

use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use tower_session_guard::{
    CookieConfig, Csrf, Key, MemoryStore, Session, SessionError, SessionEvent, SessionLayer,
};

#[tokio::main]
async fn main() {
    let address: SocketAddr = std::env::var("DEMO_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()
        .expect("DEMO_ADDR must be an address such as 127.0.0.1:3000");

    let sessions = SessionLayer::new(MemoryStore::default(), Key::generate())
        .with_idle_timeout(Duration::from_secs(30 * 60))
        .with_absolute_timeout(Duration::from_secs(8 * 3600))
        // Plain-HTTP development cookie; see the module docs.
        .with_cookie(CookieConfig::default().with_name("id").with_secure(false))
        // Posts from other sites get a 403 before any handler runs.
        .with_csrf(Csrf::default())
        .with_event_handler(|event: &SessionEvent| println!("session event: {event:?}"));

    let app = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(sessions);

    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|err| {
            panic!("cannot listen on {address}: {err}; set DEMO_ADDR to a free address")
        });
    println!(
        "demo listening on http://{}",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app).await.unwrap();
}

async fn home(session: Session) -> Result<Html<String>, SessionError> {
    let visits: u64 = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    // Every form carries it; every handler that takes a form checks it.
    let csrf = format!(
        r#"<input type="hidden" name="csrf_token" value="{}">"#,
        escape(&session.csrf_token().unwrap_or_default())
    );
    let who = match session.user_id() {
        Some(user) => format!(
            r#"<p>Signed in as <strong id="user">{}</strong>.</p>
<form method="post" action="/logout">{csrf}<button id="logout" type="submit">Sign out</button></form>"#,
            escape(&user)
        ),
        None => format!(
            r#"<p id="user-anonymous">Not signed in.</p>
<form method="post" action="/login">{csrf}
  <label>User name <input id="username" name="username" autocomplete="username" required maxlength="64"></label>
  <button id="login" type="submit">Sign in</button>
</form>"#
        ),
    };
    Ok(Html(format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>tower-session-guard demo</title></head>
<body>
<h1>tower-session-guard demo</h1>
<p>Visits in this session: <strong id="visits">{visits}</strong></p>
{who}
<p><a href="/">Reload</a></p>
</body>
</html>"#
    )))
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    #[serde(default)]
    csrf_token: String,
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
}

async fn login(session: Session, Form(form): Form<LoginForm>) -> Response {
    if let Err(err) = session.verify_csrf(&form.csrf_token) {
        return err.into_response(); // 403
    }
    let username = form.username.trim();
    if username.is_empty() || username.len() > 64 {
        return Redirect::to("/").into_response();
    }
    // A real site checks a password here. `login` gives the session a new
    // id, so an id planted before sign-in is worthless after it.
    match session.login(username).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(err) => err.into_response(),
    }
}

async fn logout(session: Session, Form(form): Form<LogoutForm>) -> Response {
    if let Err(err) = session.verify_csrf(&form.csrf_token) {
        return err.into_response(); // 403
    }
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
