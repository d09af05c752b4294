//! The demo site the `demo` and `durable` examples serve: sign-in, a
//! per-session visit counter and sign-out, under a title and a note of
//! each example's own. Every form carries the session's CSRF token in a
//! hidden field, and every handler that takes a form checks it with
//! `Session::verify_csrf` before doing anything.

use std::net::SocketAddr;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use tower_session_guard::{Session, SessionError, SessionLayer};

mod insights;

/// What a page of the site says besides the session's state.
#[derive(Clone, Copy)]
pub struct Page {
    pub title: &'static str,
    pub heading: &'static str,
    pub note: &'static str,
}

/// The address to listen on: `DEMO_ADDR` (a whole address) if it is set,
/// else 127.0.0.1 on `PORT`, else 127.0.0.1 on `default_port`.
pub fn address(default_port: u16) -> SocketAddr {
    if let Ok(address) = std::env::var("DEMO_ADDR") {
        return address
            .parse()
            .expect("DEMO_ADDR must be an address such as 127.0.0.1:8080");
    }
    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .expect("PORT must be a port number such as 8080"),
        Err(_) => default_port,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The site's routes, behind `sessions`.
pub fn router(page: Page, sessions: SessionLayer) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .merge(insights::routes(sessions.clone()))
        .layer(sessions)
        .with_state(page)
}

async fn home(State(page): State<Page>, session: Session) -> Result<Html<String>, SessionError> {
    let visits: u64 = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
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
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<h1>{heading}</h1>
<p>Visits in this session: <strong id="visits">{visits}</strong></p>
{who}
<p>{note}</p>
<p><a href="/insights">Session insights</a></p>
</body>
</html>"#,
        title = page.title,
        heading = page.heading,
        note = page.note,
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
