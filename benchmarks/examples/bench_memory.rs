//! Memory per stored session: 1,000,000 sessions, each holding a user id and
//! two small values, in this crate's `MemoryStore` and in tower-sessions' moka
//! store.
//!
//! ```text
//! cargo run -p benchmarks --features bench --release --example bench_memory                          # both stores, one process each
//! cargo run -p benchmarks --features bench --release --example bench_memory -- tower-session-guard   # one store only
//! cargo run -p benchmarks --features bench --release --example bench_memory -- tower-sessions --sessions 200000
//! ```
//!
//! Sessions are created the way an application would create them, through
//! each library's own layer: one request per session to a handler that
//! stores two values and the user (`Session::login` here, a `user_id` key
//! in tower-sessions, which has no notion of a user). Bytes per session is
//! the growth of the process's resident memory (`/proc/self/statm`) while
//! they are created, divided by their number. Each store is measured in its
//! own process so that neither inherits the other's heap. With no store
//! named, the program runs itself once per store, prints the ratio and
//! writes `target/bench-results/memory.json` for `bench_chart`.

#[path = "../benches/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use tower::Service;

const DEFAULT_SESSIONS: u64 = 1_000_000;
/// Sessions made before the baseline is taken, so that one-time costs
/// (runtime, thread-locals, the cache's first allocations) are not counted.
const WARM_UP_SESSIONS: u64 = 1_000;
/// The line a child prints for its parent.
const RESULT_PREFIX: &str = "bytes_per_session:";

fn main() {
    let mut store = None;
    let mut sessions = DEFAULT_SESSIONS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sessions" => {
                sessions = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--sessions takes a positive number");
            }
            name => store = Some(name.to_owned()),
        }
    }
    match store.as_deref() {
        None => compare(sessions),
        Some(name) => {
            let subject = support::Subject::ALL
                .into_iter()
                .find(|s| *s != support::Subject::Bare && s.name() == name)
                .unwrap_or_else(|| {
                    panic!("unknown store {name:?}; use `tower-session-guard` or `tower-sessions`")
                });
            measure(subject, sessions);
        }
    }
}

/// Runs this program once per store and reports both.
fn compare(sessions: u64) {
    let exe = std::env::current_exe().expect("cannot find this program's path");
    let mut results = Vec::new();
    for subject in [support::Subject::Guard, support::Subject::TowerSessions] {
        let output = Command::new(&exe)
            .arg(subject.name())
            .arg("--sessions")
            .arg(sessions.to_string())
            .output()
            .expect("cannot run the measuring process");
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        assert!(
            output.status.success(),
            "measuring {} failed: {}",
            subject.name(),
            String::from_utf8_lossy(&output.stderr)
        );
        let bytes: f64 = stdout
            .lines()
            .find_map(|line| line.strip_prefix(RESULT_PREFIX))
            .and_then(|n| n.trim().parse().ok())
            .expect("the measuring process printed no result");
        results.push((subject.name(), bytes));
    }
    let ratio = results[0].1 / results[1].1;
    println!(
        "ratio {} / {}: {ratio:.2} (target <= 0.70)",
        results[0].0, results[1].0
    );
    let json = serde_json::json!({
        "sessions": sessions,
        "bytes_per_session": {
            results[0].0: results[0].1,
            results[1].0: results[1].1,
        },
    });
    let path = support::results_dir().join("memory.json");
    std::fs::write(&path, format!("{json:#}\n")).expect("cannot write the results");
    println!("wrote {}", path.display());
}

/// Creates `sessions` sessions in one store and prints bytes per session.
fn measure(subject: support::Subject, sessions: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    // Room for all of them: nothing may be evicted.
    let capacity = 2 * (sessions + WARM_UP_SESSIONS);
    let mut router = match subject {
        support::Subject::Guard => guard::router(capacity),
        support::Subject::TowerSessions => tower_sessions_app::router(capacity),
        support::Subject::Bare => unreachable!("the bare service stores nothing"),
    };
    rt.block_on(async {
        for user in 0..WARM_UP_SESSIONS {
            populate(&mut router, user).await;
        }
        let before = resident_bytes();
        let start = Instant::now();
        let mut last_cookie = None;
        for user in WARM_UP_SESSIONS..WARM_UP_SESSIONS + sessions {
            last_cookie = Some(populate(&mut router, user).await);
        }
        let after = resident_bytes();
        let elapsed = start.elapsed();

        // The last session must hold what was written.
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = axum::http::Uri::from_static("/user");
        request.headers_mut().insert(
            axum::http::header::COOKIE,
            last_cookie.expect("at least one session"),
        );
        let response = router
            .call(request)
            .await
            .unwrap_or_else(|never| match never {});
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let expected = format!("user-{}", WARM_UP_SESSIONS + sessions - 1);
        assert_eq!(body, expected.as_bytes(), "the last session lost its user");

        let per_session = after.saturating_sub(before) as f64 / sessions as f64;
        println!(
            "{}: {sessions} sessions in {:.1} s, resident {:.1} MiB -> {:.1} MiB",
            subject.name(),
            elapsed.as_secs_f64(),
            before as f64 / 1_048_576.0,
            after as f64 / 1_048_576.0,
        );
        println!("{RESULT_PREFIX} {per_session:.1}");
    });
}

/// One request that creates one session for `user`; returns its cookie.
async fn populate(router: &mut Router, user: u64) -> axum::http::HeaderValue {
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("/populate/{user}").parse().expect("a valid path");
    let response = router
        .call(request)
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "creating a session failed"
    );
    support::cookie_from(&response).expect("no session cookie was set")
}

/// The process's resident memory in bytes, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm")
        .expect("cannot read /proc/self/statm (this benchmark needs Linux)");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("unexpected /proc/self/statm format");
    pages * page_size()
}

fn page_size() -> u64 {
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(4096)
}

mod guard {
    use super::*;
    use tower_session_guard::{Session, SessionError};

    pub fn router(capacity: u64) -> Router {
        Router::new()
            .route("/populate/{user}", post(populate))
            .route("/user", get(user))
            .layer(support::guard::layer(capacity))
    }

    async fn populate(session: Session, Path(user): Path<u64>) -> Result<(), SessionError> {
        session.insert("cart_items", 3_u32)?;
        session.insert("theme", "dark")?;
        session.login(format!("user-{user}")).await
    }

    async fn user(session: Session) -> String {
        session.user_id().unwrap_or_default()
    }
}

mod tower_sessions_app {
    use super::*;
    use tower_sessions::Session;

    pub fn router(capacity: u64) -> Router {
        Router::new()
            .route("/populate/{user}", post(populate))
            .route("/user", get(user))
            .layer(support::tower_sessions_app::layer(capacity))
    }

    async fn populate(session: Session, Path(user): Path<u64>) -> Result<(), StatusCode> {
        let failed = |_| StatusCode::INTERNAL_SERVER_ERROR;
        session
            .insert("user_id", format!("user-{user}"))
            .await
            .map_err(failed)?;
        session.insert("cart_items", 3_u32).await.map_err(failed)?;
        session.insert("theme", "dark").await.map_err(failed)?;
        Ok(())
    }

    async fn user(session: Session) -> String {
        session
            .get::<String>("user_id")
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}
