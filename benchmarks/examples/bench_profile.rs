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
//!
//! ## Instructions per request
//!
//! ```text
//! cargo run -p benchmarks --features bench --release --example bench_profile -- instructions
//! ```
//!
//! runs every scenario on every service under `valgrind --tool=callgrind`
//! twice, with 20 000 and with 40 000 requests, and reports the difference
//! divided by 20 000: the instructions one more request costs, without the
//! start-up, the first session and the process exit. Unlike times, the counts
//! repeat exactly from run to run whatever else the machine is doing. They
//! go to `target/bench-results/instructions.json` for `bench_chart`. Valgrind
//! hides the CPU's SHA extensions, so SHA-256 runs in software there and
//! weighs more than on the CPU.

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::process::Command;

use axum::http::Method;
use tower::Service;

use support::Subject;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("instructions") {
        count_instructions();
        return;
    }
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

/// The instruction counts per request of every scenario and service.
fn count_instructions() {
    const BASE: u64 = 20_000;
    let exe = std::env::current_exe().expect("cannot find this program's path");
    let results = support::results_dir();
    let scenarios = ["read", "write", "new", "login"];
    let mut table = serde_json::Map::new();
    for scenario in scenarios {
        let mut row = serde_json::Map::new();
        for subject in Subject::ALL {
            if scenario == "login" && subject != Subject::Guard {
                continue;
            }
            let total = |requests: u64| {
                let out = results.join(format!(
                    "callgrind-{scenario}-{}-{requests}.out",
                    subject.name()
                ));
                let status = Command::new("valgrind")
                    .arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(&exe)
                    .args([scenario, subject.name(), &requests.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("cannot run valgrind: install it (apt-get install valgrind)");
                assert!(
                    status.success(),
                    "valgrind {scenario} {} failed",
                    subject.name()
                );
                let text = std::fs::read_to_string(&out).expect("callgrind wrote no output");
                let _ = std::fs::remove_file(&out);
                text.lines()
                    .find_map(|line| {
                        line.strip_prefix("totals:")
                            .or(line.strip_prefix("summary:"))
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .expect("no totals in callgrind's output")
            };
            let per_request = (total(2 * BASE) - total(BASE)) / BASE;
            println!(
                "{scenario:>5} {:>20}: {per_request:>7} instructions per request",
                subject.name()
            );
            row.insert(subject.name().into(), per_request.into());
        }
        table.insert(scenario.into(), row.into());
    }
    let summary = serde_json::json!({
        "tool": "valgrind --tool=callgrind",
        "requests": [BASE, 2 * BASE],
        "instructions_per_request": table,
    });
    let path = results.join("instructions.json");
    std::fs::write(&path, format!("{summary:#}\n")).expect("cannot write instructions.json");
    println!("wrote {}", path.display());
}
