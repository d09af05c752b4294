//! Requests per second with an outside load generator: each of the three
//! services (bare, this crate, tower-sessions) runs as its own process on a
//! one-thread runtime pinned to one core, and [wrk](https://github.com/wg/wrk)
//! loads it from the other core over 127.0.0.1.
//!
//! ```text
//! apt-get install wrk      # once; taskset comes with util-linux
//! cargo run -p benchmarks --features bench --release --example bench_wrk
//! cargo run -p benchmarks --features bench --release --example bench_wrk -- --seconds 10 --rounds 3 --connections 64
//! ```
//!
//! Scenarios, as in the other benchmarks:
//! - `read`: `GET /read` with a valid session cookie; the handler reads one key.
//! - `write`: `POST /write` with a valid session cookie; the handler
//!   increments a counter.
//! - `new`: `POST /new` without a cookie; the handler writes one key, so
//!   every request creates a session (the store evicts at its capacity).
//!
//! Every measurement starts a fresh server process, which first checks its
//! own answers in process (a read with its cookie answers `200` without a
//! `Set-Cookie`, a new session gets one), then serves; wrk warms it up for two
//! seconds before the measured run. A run with any socket error or any
//! answer other than 2xx fails the benchmark: a broken service is not fast.
//! The server's CPU time during the measured run (user space and kernel,
//! from `/proc/<pid>/stat`) is reported per request beside the rate, which
//! shows how much of a request is the layer's work and how much the
//! kernel's socket work.
//! Each round measures every scenario and service once, starting with a
//! different service each round; the median of the rounds is reported and
//! written to `target/bench-results/wrk.json` for `bench_chart`.
//!
//! The program runs the servers by starting itself again with
//! `serve <service>`; that mode listens on a free loopback port, prints
//! `ready <address> <cookie>` and serves until its standard input closes.

#[path = "../benches/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use axum::http::header::SET_COOKIE;
use axum::http::{Method, StatusCode};
use axum::serve::ListenerExt;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tower::Service;

use support::Subject;

const SCENARIOS: [Scenario; 3] = [Scenario::Read, Scenario::Write, Scenario::New];

/// One kind of request the load generator repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Read,
    Write,
    New,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Read => "read",
            Scenario::Write => "write",
            Scenario::New => "new",
        }
    }

    /// The method and path of its request, and whether it carries the
    /// session cookie.
    fn request(self) -> (&'static str, &'static str, bool) {
        match self {
            Scenario::Read => ("GET", "/read", true),
            Scenario::Write => ("POST", "/write", true),
            Scenario::New => ("POST", "/new", false),
        }
    }
}

struct Settings {
    seconds: u64,
    rounds: usize,
    connections: usize,
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("serve") {
        let name = args.next().expect("usage: bench_wrk serve <service>");
        let subject = Subject::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("unknown service {name:?}"));
        serve(subject);
        return;
    }
    measure(settings());
}

fn settings() -> Settings {
    let mut settings = Settings {
        seconds: 10,
        rounds: 3,
        connections: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--seconds", Some(n)) if n > 0 => settings.seconds = n,
            ("--rounds", Some(n)) if n > 0 => settings.rounds = n as usize,
            ("--connections", Some(n)) if n > 0 => settings.connections = n as usize,
            _ => panic!(
                "unknown or invalid argument {flag:?}; use --seconds N, --rounds N, --connections N"
            ),
        }
    }
    settings
}

/// The server mode: one service on a one-thread runtime.
fn serve(subject: Subject) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    runtime.block_on(async {
        let mut router = subject.router();
        let cookie = match subject {
            Subject::Bare => support::bare_cookie(),
            _ => support::start_session(&mut router).await,
        };
        self_check(subject, &mut router, &cookie).await;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("cannot listen on 127.0.0.1");
        let address = listener.local_addr().expect("a bound address");
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let cookie = cookie.to_str().expect("cookies are ASCII").to_owned();
        println!("ready {address} {cookie}");
        std::io::stdout().flush().expect("cannot write to stdout");
        // Serve until the parent closes our standard input (or dies).
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        });
        tokio::select! {
            served = axum::serve(listener, router) => served.expect("the server failed"),
            _ = stdin_closed => {}
        }
    });
}

/// Checks in process that the service answers the benchmark's requests as
/// it should, so that a fast wrong answer cannot pass for a fast answer.
async fn self_check(subject: Subject, router: &mut axum::Router, cookie: &axum::http::HeaderValue) {
    let call = |router: &mut axum::Router, method: Method, path, cookie| {
        let request = support::request(method, path, cookie);
        let future = router.call(request);
        async move { future.await.unwrap_or_else(|never| match never {}) }
    };
    let read = call(router, Method::GET, "/read", Some(cookie)).await;
    assert_eq!(read.status(), StatusCode::OK, "{}: read", subject.name());
    assert!(
        !read.headers().contains_key(SET_COOKIE),
        "{}: a read set a cookie",
        subject.name()
    );
    let write = call(router, Method::POST, "/write", Some(cookie)).await;
    assert_eq!(write.status(), StatusCode::OK, "{}: write", subject.name());
    let new = call(router, Method::POST, "/new", None).await;
    assert_eq!(new.status(), StatusCode::OK, "{}: new", subject.name());
    if subject != Subject::Bare {
        assert!(
            new.headers().contains_key(SET_COOKIE),
            "{}: a new session set no cookie",
            subject.name()
        );
    }
}

/// A server process and how to reach it.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    address: SocketAddr,
    cookie: String,
}

impl Server {
    /// Starts this program in `serve` mode for `subject`, pinned to `core`.
    fn start(subject: Subject, core: Option<usize>) -> Server {
        let exe = std::env::current_exe().expect("cannot find this program's path");
        let mut command = match core {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(core.to_string()).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        let mut child = command
            .arg("serve")
            .arg(subject.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the server process");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("a piped stdout"))
            .read_line(&mut line)
            .expect("cannot read the server's first line");
        let mut words = line.split_whitespace();
        let (Some("ready"), Some(address), Some(cookie)) =
            (words.next(), words.next(), words.next())
        else {
            panic!(
                "{}: the server did not start (it printed {line:?})",
                subject.name()
            );
        };
        Server {
            address: address.parse().expect("the server prints its address"),
            cookie: cookie.to_owned(),
            stdin,
            child,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.wait_timeout(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `Child::wait` with a deadline, polling (std has none of its own).
trait WaitTimeout {
    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let step = Duration::from_millis(20);
        let mut waited = Duration::ZERO;
        while waited < limit {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(step);
            waited += step;
        }
        None
    }
}

/// What one wrk run reported.
struct WrkRun {
    requests: u64,
    requests_per_second: f64,
    latency_p50_us: Option<f64>,
    latency_p99_us: Option<f64>,
}

/// The CPU time a process has used so far, in user space and in the
/// kernel, in seconds (`/proc/<pid>/stat`; zero where there is no `/proc`).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14 and stime 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let per_second = clock_ticks_per_second();
    (ticks(11) / per_second, ticks(12) / per_second)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs wrk against `server` for `seconds`, pinned to `core`.
fn wrk(
    server: &Server,
    scenario: Scenario,
    seconds: u64,
    connections: usize,
    core: Option<usize>,
    script_dir: &std::path::Path,
) -> WrkRun {
    let (method, path, with_cookie) = scenario.request();
    // wrk takes the method and body from a script; a script without a
    // `request` function keeps wrk's prebuilt request, so it costs nothing
    // per request.
    let script = script_dir.join(format!("wrk-{}.lua", scenario.name()));
    let mut lua = format!("wrk.method = \"{method}\"\n");
    if with_cookie {
        lua.push_str(&format!(
            "wrk.headers[\"Cookie\"] = \"{}\"\n",
            server.cookie
        ));
    }
    std::fs::write(&script, lua).expect("cannot write the wrk script");
    let mut command = match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg("wrk");
            command
        }
        None => Command::new("wrk"),
    };
    let output = command
        .args(["-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{}{path}", server.address))
        .output()
        .expect("cannot run wrk: install it (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx or 3xx responses") && !text.contains("Socket errors"),
        "{} {}: the run had errors:\n{text}",
        scenario.name(),
        server.address
    );
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"));
    let requests_per_second = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let percentile = |label: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|value| micros(value.trim()))
    };
    WrkRun {
        requests,
        requests_per_second,
        latency_p50_us: percentile("50%"),
        latency_p99_us: percentile("99%"),
    }
}

/// wrk's latency (`412.00us`, `1.20ms`, `2.01s`) in microseconds.
fn micros(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn measure(settings: Settings) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // The server on one core, wrk on another; with one core, both unpinned.
    let (server_core, wrk_core) = if cores >= 2 {
        (Some(1), Some(0))
    } else {
        eprintln!("one core only: server and wrk share it, unpinned");
        (None, None)
    };
    let results = support::results_dir();
    println!(
        "wrk, {} connections, {} s per run, {} rounds; server pinned to core {}, wrk to core {}",
        settings.connections,
        settings.seconds,
        settings.rounds,
        server_core.map_or("-".into(), |c| c.to_string()),
        wrk_core.map_or("-".into(), |c| c.to_string()),
    );

    // rates[scenario][subject] = one value per round.
    let mut rates = vec![vec![Vec::new(); Subject::ALL.len()]; SCENARIOS.len()];
    let mut p99 = vec![vec![Vec::new(); Subject::ALL.len()]; SCENARIOS.len()];
    let mut user = vec![vec![Vec::new(); Subject::ALL.len()]; SCENARIOS.len()];
    let mut kernel = vec![vec![Vec::new(); Subject::ALL.len()]; SCENARIOS.len()];
    for round in 0..settings.rounds {
        for (s, scenario) in SCENARIOS.into_iter().enumerate() {
            for k in 0..Subject::ALL.len() {
                let i = (k + round) % Subject::ALL.len();
                let subject = Subject::ALL[i];
                let server = Server::start(subject, server_core);
                wrk(
                    &server,
                    scenario,
                    2,
                    settings.connections,
                    wrk_core,
                    &results,
                );
                let (user_before, kernel_before) = cpu_seconds(server.child.id());
                let run = wrk(
                    &server,
                    scenario,
                    settings.seconds,
                    settings.connections,
                    wrk_core,
                    &results,
                );
                let (user_after, kernel_after) = cpu_seconds(server.child.id());
                let per_request = |seconds: f64| seconds * 1e6 / run.requests.max(1) as f64;
                let user_us = per_request(user_after - user_before);
                let kernel_us = per_request(kernel_after - kernel_before);
                println!(
                    "round {} {:>5} {:>20}: {:>9.0} requests/s, p50 {} µs, p99 {} µs, server CPU per request {user_us:.2} µs user + {kernel_us:.2} µs kernel",
                    round + 1,
                    scenario.name(),
                    subject.name(),
                    run.requests_per_second,
                    run.latency_p50_us.map_or("?".into(), |v| format!("{v:.0}")),
                    run.latency_p99_us.map_or("?".into(), |v| format!("{v:.0}")),
                );
                rates[s][i].push(run.requests_per_second);
                user[s][i].push(user_us);
                kernel[s][i].push(kernel_us);
                if let Some(v) = run.latency_p99_us {
                    p99[s][i].push(v);
                }
            }
        }
    }

    let table = |values: &Vec<Vec<Vec<f64>>>| {
        let mut by_scenario = Map::new();
        for (s, scenario) in SCENARIOS.into_iter().enumerate() {
            let mut row = Map::new();
            for (i, subject) in Subject::ALL.into_iter().enumerate() {
                if !values[s][i].is_empty() {
                    row.insert(subject.name().into(), json!(support::median(&values[s][i])));
                }
            }
            by_scenario.insert(scenario.name().into(), Value::Object(row));
        }
        Value::Object(by_scenario)
    };
    let summary = json!({
        "generator": "wrk",
        "connections": settings.connections,
        "seconds": settings.seconds,
        "rounds": settings.rounds,
        "pinned": server_core.is_some(),
        "requests_per_second": table(&rates),
        "latency_p99_us": table(&p99),
        "server_user_us_per_request": table(&user),
        "server_kernel_us_per_request": table(&kernel),
        "every_round": table_of_rounds(&rates),
    });

    println!("\nmedian of {} rounds, requests/s:", settings.rounds);
    println!(
        "| scenario | bare | tower-session-guard | tower-sessions | guard ÷ bare | guard ÷ tower-sessions |"
    );
    println!("|---|---|---|---|---|---|");
    for (s, scenario) in SCENARIOS.into_iter().enumerate() {
        let m: Vec<f64> = (0..Subject::ALL.len())
            .map(|i| support::median(&rates[s][i]))
            .collect();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            scenario.name(),
            m[0],
            m[1],
            m[2],
            m[1] / m[0],
            m[1] / m[2]
        );
    }
    let path = results.join("wrk.json");
    std::fs::write(&path, format!("{summary:#}\n")).expect("cannot write wrk.json");
    println!("wrote {}", path.display());
}

fn table_of_rounds(values: &[Vec<Vec<f64>>]) -> Value {
    let mut by_scenario = Map::new();
    for (s, scenario) in SCENARIOS.into_iter().enumerate() {
        let mut row = Map::new();
        for (i, subject) in Subject::ALL.into_iter().enumerate() {
            let rounded: Vec<f64> = values[s][i].iter().map(|v| v.round()).collect();
            row.insert(subject.name().into(), json!(rounded));
        }
        by_scenario.insert(scenario.name().into(), Value::Object(row));
    }
    Value::Object(by_scenario)
}
