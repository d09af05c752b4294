//! Runs one benchmark scenario in a loop, for a profiler.
//!
//! ```text
//! cargo build -p benchmarks --features bench --release --example bench_profile
//! valgrind --tool=callgrind --callgrind-out-file=read.callgrind \
//!     target/release/examples/bench_profile read tower-session-guard 20000
//! callgrind_annotate --inclusive=yes read.callgrind | head -60
//! ```
//!
//! Arguments: the scenario (`read`, `write`, `new` or `login`), the service
//! (`bare`, `tower-session-guard` or `tower-sessions`) and the number of
//! requests (default 20 000). The requests are the ones `benches/sessions.rs`
//! times, on the same current-thread runtime; set
//! `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only` when building to get
//! source lines in the profile.

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;

use axum::http::Method;
use tower::Service;

use support::Subject;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_profile <read|write|new|login> <bare|tower-session-guard|tower-sessions> [requests]";
    let scenario = args.next().expect(usage);
    let subject_name = args.next().expect(usage);
    let requests: u64 = args.next().map_or(20_000, |n| n.parse().expect(usage));
    let subject = Subject::ALL
        .into_iter()
        .find(|s| s.name() == subject_name)
        .expect(usage);
    let (method, path, with_session) = match scenario.as_str() {
        "read" => (Method::GET, "/read", true),
        "write" => (Method::POST, "/write", true),
        "new" => (Method::POST, "/new", false),
        "login" if subject == Subject::Guard => (Method::POST, "/login", true),
        _ => panic!("{usage} (login: tower-session-guard only)"),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    rt.block_on(async {
        let mut router = subject.router();
        let mut cookie = match (with_session, subject) {
            (false, _) => None,
            (true, Subject::Bare) => Some(support::bare_cookie()),
            (true, _) => Some(support::start_session(&mut router).await),
        };
        for _ in 0..requests {
            if scenario == "login" {
                // Every login needs a session of its own.
                cookie = Some(support::start_session(&mut router).await);
            }
            let request = support::request(method.clone(), path, cookie.as_ref());
            let response = router.call(request).await;
            black_box(response).expect("routers are infallible");
        }
        // Tearing down a store of 100 000 sessions is not part of any
        // request: leave it to the process exit, out of the profile.
        std::mem::forget(router);
    });
}
