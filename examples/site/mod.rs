//! The demo site the `demo` and `durable` examples serve: sign-in with
//! "remember me", a counter that writes only when asked, the signed-in
//! user's sessions (revoke one, sign out the others), a password change
//! that needs a recent sign-in, the session's deadlines counting down, the
//! cookie as the browser received it and the session's last events.
//!
//! Every form carries the session's CSRF token in a hidden field once a
//! session is stored, and every handler that takes a form checks it with
//! `Session::verify_csrf` before doing anything (before anything is
//! stored there is no token to carry: `verify_csrf` accepts a request
//! without a stored session, which acts for nobody, and the layer's
//! origin check refuses cross-site posts).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use tower_session_guard::{
    safe_return_path, CookieConfig, Csrf, Key, LoginOptions, Session, SessionError, SessionEvent,
    SessionHandle, SessionInfo, SessionLayer, SessionStore, SignedIn,
};

mod insights;
mod observe;

pub use observe::Events;
use observe::{Cookies, DeliveredCookie};

/// The session cookie's name: a plain-HTTP development cookie (see the
/// examples' module docs).
pub const COOKIE: &str = "id";

/// How many of the session's events the page lists.
const EVENTS_SHOWN: usize = 8;

/// What a page of the site says besides the session's state.
#[derive(Clone, Copy)]
pub struct Page {
    pub title: &'static str,
    pub heading: &'static str,
    pub note: &'static str,
}

/// The time limits, from the environment.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `DEMO_IDLE_SECS`, default 30 minutes.
    pub idle: Duration,
    /// `DEMO_ABSOLUTE_SECS`, default 8 hours.
    pub absolute: Duration,
    /// `DEMO_REMEMBER_SECS`: a "remember me" sign-in's lifetime, default 30 days.
    pub remember: Duration,
    /// `DEMO_RECENT_AUTH_SECS`: how recent a sign-in a password change
    /// needs, default 5 minutes.
    pub recent_auth: Duration,
}

impl Settings {
    /// The settings the environment gives, defaults for the rest.
    pub fn from_env() -> Self {
        Self {
            idle: seconds("DEMO_IDLE_SECS", 30 * 60),
            absolute: seconds("DEMO_ABSOLUTE_SECS", 8 * 3600),
            remember: seconds("DEMO_REMEMBER_SECS", 30 * 86_400),
            recent_auth: seconds("DEMO_RECENT_AUTH_SECS", 5 * 60),
        }
    }
}

fn seconds(variable: &str, default: u64) -> Duration {
    match std::env::var(variable) {
        Ok(value) => Duration::from_secs(
            value
                .parse()
                .ok()
                .filter(|&secs| secs > 0)
                .unwrap_or_else(|| panic!("{variable} must be a positive number of seconds")),
        ),
        Err(_) => Duration::from_secs(default),
    }
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

/// The session layer both examples use: `settings`' timeouts, the
/// development cookie, the origin check, `/login` as the sign-in page, and
/// every event printed and kept in `events`.
pub fn layer(
    store: impl SessionStore,
    key: Key,
    settings: Settings,
    events: Events,
) -> SessionLayer {
    SessionLayer::new(store, key)
        .with_idle_timeout(settings.idle)
        .with_absolute_timeout(settings.absolute)
        // Plain-HTTP development cookie; see the examples' module docs.
        .with_cookie(CookieConfig::default().with_name(COOKIE).with_secure(false))
        // Posts from other sites get a 403 before any handler runs.
        .with_csrf(Csrf::default())
        // Pages behind `SignedIn` send visitors here (`?next=` the page).
        .with_sign_in_page("/login")
        .with_event_handler(move |event: &SessionEvent| {
            println!("session event: {event:?}");
            events.record(event);
        })
}

#[derive(Clone)]
struct Site {
    page: Page,
    settings: Settings,
    events: Events,
}

/// The site's routes, behind `sessions` (built by [`layer`] with the same
/// `events`).
pub fn router(page: Page, settings: Settings, events: Events, sessions: SessionLayer) -> Router {
    let cookies = Cookies::new(COOKIE);
    let site = Site {
        page,
        settings,
        events,
    };
    Router::new()
        .route("/", get(home))
        .route("/login", get(home).post(login))
        .route("/logout", post(logout))
        .route("/count", post(count))
        .route("/status", get(status))
        .route("/password", post(change_password))
        .route("/reauthenticate", post(reauthenticate))
        .route("/sessions/revoke", post(revoke))
        .route("/sessions/others", post(sign_out_others))
        .merge(insights::routes(sessions.clone()))
        .layer(sessions)
        // Outside the session layer, so it sees the `Set-Cookie` it sends.
        .layer(axum::middleware::from_fn_with_state(
            cookies,
            observe::record_cookies,
        ))
        .with_state(site)
}

/// `?notice=` after a form, and `?next=` on the sign-in page.
#[derive(Deserialize, Default)]
struct Notice {
    notice: Option<String>,
    ended: Option<usize>,
    next: Option<String>,
}

async fn home(
    State(site): State<Site>,
    Extension(delivered): Extension<DeliveredCookie>,
    Query(query): Query<Notice>,
    session: Session,
) -> Result<Html<String>, SessionError> {
    let stored = session.fingerprint();
    let user = session.user_id();
    let visits: u64 = session.get::<u64>("visits")?.unwrap_or(0);
    let devices = session.my_sessions().await?;
    let current = devices.iter().find(|d| d.is_current);
    // Only a stored session has a token worth carrying (asking for one
    // would start a session on a first visit).
    let token = stored
        .and_then(|_| session.csrf_token())
        .unwrap_or_default();
    let csrf = format!(
        r#"<input type="hidden" name="csrf_token" value="{}">"#,
        escape(&token)
    );

    let mut body = String::new();
    body += &notice(&query);
    body += r#"<p id="session-ended" class="notice warn" hidden>This session has ended (a timeout, or signed out from elsewhere). <a href="/">Reload</a></p>"#;

    // Who.
    body += r#"<section><h2>You</h2>"#;
    match &user {
        Some(user) => {
            body += &format!(
                r#"<p>Signed in as <strong id="user">{}</strong>{}.</p>
<form method="post" action="/logout">{csrf}<button id="logout" type="submit">Sign out</button></form>"#,
                escape(user),
                match current {
                    Some(info) if info.remembered => " (remembered: a persistent cookie)",
                    _ => " (until the browser closes, or a timeout)",
                }
            );
        }
        None => {
            let next = query
                .next
                .as_deref()
                .and_then(safe_return_path)
                .map(|next| {
                    format!(
                        r#"<input type="hidden" name="next" value="{}">"#,
                        escape(next)
                    )
                })
                .unwrap_or_default();
            body += &format!(
                r#"<p id="user-anonymous">Not signed in. Any name and any password will do: this demo has no user table.</p>
<form method="post" action="/login" class="row">{csrf}{next}
  <label>Name <input id="username" name="username" autocomplete="username" required maxlength="64"></label>
  <label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
  <label><input id="remember" name="remember" type="checkbox" value="1"> Remember me ({})</label>
  <button id="login" type="submit">Sign in</button>
</form>"#,
                human(site.settings.remember)
            );
        }
    }
    body += "</section>";

    // The counter.
    body += &format!(
        r#"<section id="counter"><h2>Counter</h2>
<p>Presses in this session: <strong id="visits">{visits}</strong></p>
<form method="post" action="/count">{csrf}<button id="count" type="submit">Count</button></form>"#
    );
    if stored.is_none() {
        body += if delivered.presented {
            r#"<p id="cookie-refused" class="muted">Your browser sent a session cookie this server no longer accepts (it timed out, or was signed out or revoked), so this response tells it to forget it.</p>"#
        } else {
            r#"<p id="nothing-stored" class="muted">Nothing is stored for you yet, and this page set no cookie: a session starts at its first write (press Count, or sign in). Reading pages writes nothing.</p>"#
        };
    }
    body += "</section>";

    // Deadlines.
    if stored.is_some() {
        body += r#"<section><h2>Deadlines</h2><table>"#;
        if let Some(expires) = session.expires_at() {
            body += &format!(
                r#"<tr><th>Ends unless used</th><td><span id="expires" data-deadline="{}">{}</span></td><td class="muted">idle timeout {}; each page you open pushes it back (the countdown's own polling does not)</td></tr>"#,
                unix_millis(expires),
                until(expires),
                human(
                    current
                        .and_then(|info| info.idle_timeout)
                        .unwrap_or(site.settings.idle)
                ),
            );
        }
        if let Some(info) = current {
            body += &format!(
                r#"<tr><th>Ends anyway</th><td><span id="ends" data-deadline="{}">{}</span></td><td class="muted">absolute timeout, counted from sign-in</td></tr>"#,
                unix_millis(info.ends),
                until(info.ends),
            );
        } else {
            body += &format!(
                r#"<tr><th>Absolute timeout</th><td>{}</td><td class="muted">from when the session was created; a sign-in starts it afresh</td></tr>"#,
                human(site.settings.absolute)
            );
        }
        body += "</table></section>";
    }

    // The cookie.
    body += r#"<section><h2>Your cookie</h2>"#;
    body += &match &delivered.set_cookie {
        Some((at, header)) => format!(
            r#"<p>Your browser holds the cookie this response header delivered {}:</p><pre id="cookie">Set-Cookie: {}</pre>
<p class="muted">HttpOnly: page scripts cannot read it. Without Max-Age it is a session cookie, gone when the browser closes; a remembered sign-in gets one.</p>"#,
            ago(*at),
            escape(header)
        ),
        None if delivered.presented => r#"<p id="cookie">Your browser sent a session cookie this process did not send (an earlier run, or another one).</p>"#.to_owned(),
        None => r#"<p id="cookie">None yet.</p>"#.to_owned(),
    };
    body += "</section>";

    // Devices.
    if user.is_some() {
        body += r#"<section><h2>Your sessions</h2><table id="sessions">
<tr><th>Browser</th><th>IP</th><th>Last seen</th><th>Signed in</th><th>Kind</th><th></th></tr>"#;
        for device in &devices {
            body += &device_row(device, &csrf);
        }
        body += &format!(
            r#"</table>
<form method="post" action="/sessions/others">{csrf}<button id="logout-others" type="submit">Sign out other devices</button></form>
<p class="muted">Sign in as the same name from another browser profile (or <code>curl -c jar -b jar</code>) and it appears here.</p></section>
<section id="password"><h2>Change password</h2>
<p class="muted">Needs a sign-in within the last {}; after that it asks for your password again. Changing it signs out your other sessions.</p>
<form method="post" action="/password" class="row">{csrf}
  <label>Current <input id="current-password" name="current_password" type="password" autocomplete="current-password"></label>
  <label>New <input id="new-password" name="new_password" type="password" autocomplete="new-password" required></label>
  <button id="change-password" type="submit">Change password</button>
</form></section>"#,
            human(site.settings.recent_auth)
        );
    }

    // Events.
    if let Some(fingerprint) = stored {
        let events = site.events.of(fingerprint, EVENTS_SHOWN);
        body += &format!(
            r#"<section><h2>This session's events</h2><p class="muted">Session <code>{fingerprint}</code> (a log-safe fingerprint), newest first.</p><ol id="events">"#
        );
        for (at, event) in &events {
            body += &format!(
                "<li><code>{}</code> {} <span class=\"muted\">{}</span></li>",
                event.kind(),
                escape(&event_detail(event)),
                ago(*at)
            );
        }
        if events.is_empty() {
            body += "<li class=\"muted\">None yet.</li>";
        }
        body += "</ol></section>";
    }

    Ok(Html(layout(
        site.page,
        &body,
        stored.is_some(),
        r#"<a href="/insights">Session insights</a>"#,
    )))
}

fn device_row(device: &SessionInfo, csrf: &str) -> String {
    let class = if device.is_current {
        "session current"
    } else {
        "session"
    };
    format!(
        r#"<tr class="{class}"><td>{browser}{this}</td><td>{ip}</td><td>{seen}</td><td>{signed_in}</td><td>{kind}</td>
<td><form method="post" action="/sessions/revoke">{csrf}<input type="hidden" name="handle" value="{handle}"><button class="revoke" type="submit">{action}</button></form></td></tr>"#,
        browser = escape(device.user_agent.as_deref().unwrap_or("unknown")),
        this = if device.is_current {
            " <strong>(this one)</strong>"
        } else {
            ""
        },
        ip = device
            .ip
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
        seen = ago(device.last_seen),
        signed_in = device.authenticated_at.map_or_else(String::new, ago),
        kind = if device.remembered {
            "remembered"
        } else {
            "browser session"
        },
        handle = device.handle,
        action = if device.is_current {
            "Sign out"
        } else {
            "Revoke"
        },
    )
}

/// `GET /status`: the deadlines as JSON, for the page's countdowns.
/// Passive: polling does not keep the session alive.
async fn status(session: Session) -> Result<Response, SessionError> {
    session.mark_passive();
    let ends = session
        .my_sessions()
        .await?
        .into_iter()
        .find(|info| info.is_current)
        .map(|info| unix_millis(info.ends));
    let body = serde_json::json!({
        "stored": session.fingerprint().is_some(),
        "signed_in": session.user_id().is_some(),
        "expires": session.expires_at().map(unix_millis),
        "ends": ends,
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    #[serde(default)]
    remember: Option<String>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    csrf_token: String,
}

async fn login(
    State(site): State<Site>,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Result<Redirect, SessionError> {
    session.verify_csrf(&form.csrf_token)?; // 403 otherwise
    let username = form.username.trim();
    if username.is_empty() || username.len() > 64 {
        return Ok(Redirect::to("/"));
    }
    // A real site checks the password here. `login_with` gives the session
    // a new id, so an id planted before sign-in is worthless after it.
    let options = match form.remember {
        Some(_) => LoginOptions::remember_me(site.settings.remember),
        None => LoginOptions::new(),
    };
    session
        .login_with(username, options.with_method("password"))
        .await?;
    let next = form
        .next
        .as_deref()
        .and_then(safe_return_path)
        .unwrap_or("/");
    Ok(Redirect::to(next))
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf_token: String,
}

async fn logout(session: Session, Form(form): Form<CsrfForm>) -> Result<Redirect, SessionError> {
    session.verify_csrf(&form.csrf_token)?;
    session.logout().await?;
    Ok(Redirect::to("/"))
}

async fn count(session: Session, Form(form): Form<CsrfForm>) -> Result<Redirect, SessionError> {
    session.verify_csrf(&form.csrf_token)?;
    let visits = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    Ok(Redirect::to("/#counter"))
}

#[derive(Deserialize)]
struct RevokeForm {
    handle: SessionHandle,
    #[serde(default)]
    csrf_token: String,
}

async fn revoke(
    SignedIn(_): SignedIn,
    session: Session,
    Form(form): Form<RevokeForm>,
) -> Result<Redirect, SessionError> {
    session.verify_csrf(&form.csrf_token)?;
    // Only ever one of this user's own sessions, whatever handle is posted.
    let ended = session.revoke_mine(&form.handle).await?;
    Ok(Redirect::to(if ended {
        "/?notice=revoked"
    } else {
        "/?notice=not-yours"
    }))
}

async fn sign_out_others(
    SignedIn(_): SignedIn,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, SessionError> {
    session.verify_csrf(&form.csrf_token)?;
    let ended = session.logout_others().await?;
    Ok(Redirect::to(&format!("/?notice=others&ended={ended}")))
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    csrf_token: String,
}

async fn change_password(
    State(site): State<Site>,
    SignedIn(_): SignedIn,
    session: Session,
    Form(form): Form<PasswordForm>,
) -> Result<Response, SessionError> {
    session.verify_csrf(&form.csrf_token)?;
    match session.require_recent_auth(site.settings.recent_auth) {
        Ok(()) => {}
        Err(SessionError::ReauthenticationRequired { .. }) => {
            return Ok(reauthentication_page(site, &session).into_response());
        }
        Err(err) => return Err(err),
    }
    if form.new_password.is_empty() {
        return Ok(Redirect::to("/#password").into_response());
    }
    // A real site checks the current password and stores the new one here.
    // New id and sign-in time, then every other device signed out.
    session.reauthenticate().await?;
    let ended = session.logout_others().await?;
    Ok(Redirect::to(&format!("/?notice=password-changed&ended={ended}")).into_response())
}

fn reauthentication_page(site: Site, session: &Session) -> (StatusCode, Html<String>) {
    let token = session.csrf_token().unwrap_or_default();
    let signed_in = session
        .authenticated_at()
        .map_or_else(|| "a while ago".to_owned(), ago);
    let body = format!(
        r#"<section id="reauth"><h2>Confirm it is you</h2>
<p>You signed in {signed_in}; changing the password needs a sign-in within the last {}. Enter your password again (any password: this demo has no user table).</p>
<form method="post" action="/reauthenticate" class="row">
  <input type="hidden" name="csrf_token" value="{}">
  <label>Password <input id="reauth-password" name="password" type="password" autocomplete="current-password" required></label>
  <button id="reauth-submit" type="submit">Confirm</button>
</form></section>"#,
        human(site.settings.recent_auth),
        escape(&token)
    );
    (
        StatusCode::UNAUTHORIZED,
        Html(layout(site.page, &body, true, r#"<a href="/">Back</a>"#)),
    )
}

async fn reauthenticate(
    SignedIn(_): SignedIn,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, SessionError> {
    session.verify_csrf(&form.csrf_token)?;
    // A real site checks the password here.
    session.reauthenticate().await?;
    Ok(Redirect::to("/?notice=reauthenticated#password"))
}

fn notice(query: &Notice) -> String {
    let ended = query.ended.unwrap_or(0);
    let text = match query.notice.as_deref() {
        Some("password-changed") => {
            format!("Password changed; {ended} other session(s) signed out.")
        }
        Some("reauthenticated") => "Password confirmed: you can change it now.".to_owned(),
        Some("revoked") => "That session is signed out.".to_owned(),
        Some("not-yours") => "No such session of yours.".to_owned(),
        Some("others") => format!("{ended} other session(s) signed out."),
        _ => return String::new(),
    };
    format!(r#"<p id="notice" class="notice">{text}</p>"#)
}

fn event_detail(event: &SessionEvent) -> String {
    match event {
        SessionEvent::LoggedIn { user_id, .. } | SessionEvent::Reauthenticated { user_id, .. } => {
            user_id.clone()
        }
        SessionEvent::Expired { reason, .. } => reason.to_string(),
        SessionEvent::Rejected { reason, .. } => reason.to_string(),
        _ => String::new(),
    }
}

/// The page around `body`; with `countdowns`, the script that runs the
/// `data-deadline` countdowns and polls `/status` (passively).
fn layout(page: Page, body: &str, countdowns: bool, footer: &str) -> String {
    let script = if countdowns { COUNTDOWN } else { "" };
    format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>{title}</title>
<style>{STYLE}</style></head>
<body>
<h1>{heading}</h1>
<p class="muted">{note}</p>
{body}
<footer>{footer}</footer>
{script}
</body>
</html>"#,
        title = page.title,
        heading = page.heading,
        note = page.note,
    )
}

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 1.5rem auto; padding: 0 1rem; color: #1d2433; background: #f6f7fb; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.05rem; margin: 0 0 .5rem; }
section { background: #fff; border: 1px solid #dde1ea; border-radius: 8px; padding: .8rem 1rem; margin: .8rem 0; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eef0f5; vertical-align: middle; }
tr.current { background: #eef6ee; } [data-deadline] { white-space: nowrap; font-variant-numeric: tabular-nums; }
pre { background: #1d2433; color: #e6e9f0; padding: .5rem .7rem; border-radius: 6px; white-space: pre-wrap; word-break: break-all; margin: .3rem 0; }
form { margin: .3rem 0; } .row { display: flex; gap: .6rem; flex-wrap: wrap; align-items: center; }
input[type=text], input:not([type]), input[type=password] { padding: .25rem .4rem; border: 1px solid #b9c0cf; border-radius: 4px; }
button { padding: .3rem .8rem; border: 0; border-radius: 4px; background: #2f5bd3; color: #fff; cursor: pointer; }
button.revoke { background: #b33a3a; }
.muted { color: #5c6577; font-size: .9rem; } .notice { background: #e7f0ff; border: 1px solid #b7cdf5; padding: .5rem .8rem; border-radius: 6px; }
.warn { background: #fff1e0; border-color: #f0c58c; } code { font-size: .9em; } footer { margin-top: 1rem; }
";

const COUNTDOWN: &str = r#"<script>
const clocks = () => document.querySelectorAll("[data-deadline]");
const fmt = s => (s >= 3600 ? Math.floor(s / 3600) + " h " : "") + (s >= 60 ? Math.floor(s % 3600 / 60) + " min " : "") + s % 60 + " s";
let ended = false;
async function poll() {
  if (ended) return;
  try {
    const s = await (await fetch("/status", { cache: "no-store" })).json();
    if (!s.stored) { ended = true; document.getElementById("session-ended").hidden = false; return; }
    const set = (id, t) => { const el = document.getElementById(id); if (el && t) el.dataset.deadline = t; };
    set("expires", s.expires); set("ends", s.ends);
  } catch (_) {}
}
function tick() {
  let due = false;
  clocks().forEach(el => {
    const left = Math.max(0, Math.ceil((+el.dataset.deadline - Date.now()) / 1000));
    el.textContent = left > 0 ? "in " + fmt(left) : "now";
    if (left === 0) due = true;
  });
  if (due) poll();
}
setInterval(tick, 1000); setInterval(poll, 5000); tick();
</script>"#;

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// "12 s ago", "3 min ago".
fn ago(time: SystemTime) -> String {
    let elapsed = SystemTime::now().duration_since(time).unwrap_or_default();
    format!("{} ago", human(elapsed))
}

/// "in 29 min 59 s" (the script keeps it current).
fn until(time: SystemTime) -> String {
    let left = time.duration_since(SystemTime::now()).unwrap_or_default();
    format!("in {}", human(left))
}

/// A duration in the largest units that fit: "8 h", "29 min 59 s", "2 s".
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 if secs % 60 == 0 => format!("{} min", secs / 60),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86_399 if secs % 3600 == 0 => format!("{} h", secs / 3600),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ if secs % 86_400 == 0 => format!("{} days", secs / 86_400),
        _ => format!("{} days {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
