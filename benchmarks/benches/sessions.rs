//! Time per request, in process: the same axum router with no session layer,
//! with this crate and with tower-sessions, called through
//! `tower::Service::call` on a current-thread tokio runtime.
//!
//! ```text
//! cargo bench -p benchmarks --features bench --bench sessions
//! ```
//!
//! One criterion group per scenario:
//! - `read`: a valid session cookie, the handler reads one key;
//! - `write`: a valid session cookie, the handler increments a counter;
//! - `new`: no cookie, the handler writes one key (a session is created);
//! - `login`: this crate only, `Session::login` on an existing session
//!   (new id, old id dead, user recorded). Each iteration signs in on a
//!   fresh session made before the clock starts.
//!
//! For valid-cookie scenarios the session is created once and its cookie
//! reused. See BENCHMARKS.md for the results and how to turn them into the chart.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Method, StatusCode};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::Runtime;
use tower::Service;

use support::Subject;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// Benchmarks `method path` against each of `subjects`, every request
/// carrying a session cookie when `with_session` is set.
fn scenario(c: &mut Criterion, name: &str, method: Method, path: &'static str, with_session: bool) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    for subject in Subject::ALL {
        let mut router = subject.router();
        let cookie: Option<HeaderValue> = match (with_session, subject) {
            (false, _) => None,
            (true, Subject::Bare) => Some(support::bare_cookie()),
            (true, _) => Some(rt.block_on(support::start_session(&mut router))),
        };
        // A benchmark of a failing request measures nothing useful.
        let response = rt
            .block_on(router.call(support::request(method.clone(), path, cookie.as_ref())))
            .unwrap_or_else(|never| match never {});
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{name}/{} failed",
            subject.name()
        );
        group.bench_function(subject.name(), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut router = router.clone();
                let cookie = cookie.clone();
                let method = method.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let request = support::request(method.clone(), path, cookie.as_ref());
                        let response = router.call(request).await;
                        black_box(response).expect("routers are infallible");
                    }
                    start.elapsed()
                }
            });
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    scenario(c, "read", Method::GET, "/read", true);
}

fn write(c: &mut Criterion) {
    scenario(c, "write", Method::POST, "/write", true);
}

fn new(c: &mut Criterion) {
    scenario(c, "new", Method::POST, "/new", false);
}

fn login(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("login");
    let router = Subject::Guard.router();
    group.bench_function(Subject::Guard.name(), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut router = router.clone();
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    // A login moves the session to a new id, so every
                    // iteration needs its own session; making it is not timed.
                    let cookie = support::start_session(&mut router).await;
                    let request = support::request(Method::POST, "/login", Some(&cookie));
                    let start = Instant::now();
                    let response = router.call(request).await;
                    timed += start.elapsed();
                    let response = black_box(response).expect("routers are infallible");
                    assert!(
                        support::cookie_from(&response).is_some(),
                        "login issued no cookie"
                    );
                }
                timed
            }
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = read, write, new, login
}
criterion_main!(benches);
