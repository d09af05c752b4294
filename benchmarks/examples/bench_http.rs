//! Requests per second over real sockets: the three services of the
//! benchmarks (bare, this crate, tower-sessions) served by axum on
//! 127.0.0.1, loaded by a hyper client with 64 keep-alive connections
//! sending a fixed number of **read** requests (valid session cookie, the
//! handler reads one key), all in the same run.
//!
//! ```text
//! cargo run -p benchmarks --features bench --release --example bench_http
//! cargo run -p benchmarks --features bench --release --example bench_http -- --requests 50000 --connections 64 --rounds 3
//! ```
//!
//! Client and servers share one tokio runtime (one worker per core), so the
//! numbers are what the machine does with both ends busy; every service gets
//! the same client. After a warm-up, each round measures every service once,
//! starting with a different one each round; the median of the rounds is
//! reported and written to `target/bench-results/http.json` for
//! `bench_chart`. Only loopback addresses are used, and every loop is
//! bounded by the request count and a deadline.

#[path = "../benches/support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::{COOKIE, HOST, SET_COOKIE};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::serve::ListenerExt;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use support::Subject;

const DEFAULT_REQUESTS: u64 = 200_000;
const DEFAULT_CONNECTIONS: usize = 64;
const DEFAULT_ROUNDS: usize = 5;
/// The longest one service's share of a round may take before the run is
/// abandoned as broken.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

struct Settings {
    requests: u64,
    connections: usize,
    rounds: usize,
}

/// A running service and the cookie its clients send.
struct Target {
    subject: Subject,
    address: SocketAddr,
    cookie: HeaderValue,
}

#[tokio::main]
async fn main() {
    let settings = settings();
    let mut targets = Vec::new();
    for subject in Subject::ALL {
        targets.push(serve(subject).await);
    }
    println!(
        "{} read requests per service per round over {} connections, {} rounds, {} cores",
        settings.requests,
        settings.connections,
        settings.rounds,
        std::thread::available_parallelism().map_or(1, usize::from),
    );

    for target in &targets {
        load(target, settings.requests / 10 + 1, settings.connections).await;
    }

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..settings.rounds {
        let mut line = format!("round {}:", round + 1);
        for k in 0..targets.len() {
            let index = (round + k) % targets.len();
            let rate = load(&targets[index], settings.requests, settings.connections).await;
            rates[index].push(rate);
            line += &format!("  {} {rate:.0}/s", targets[index].subject.name());
        }
        println!("{line}");
    }

    let medians: Vec<f64> = rates.iter().map(|r| support::median(r)).collect();
    println!();
    for (target, rate) in targets.iter().zip(&medians) {
        println!(
            "{:<20} {rate:>9.0} requests/s (median)",
            target.subject.name()
        );
    }
    let [bare, guard, tower_sessions] = [medians[0], medians[1], medians[2]];
    println!(
        "tower-session-guard / tower-sessions: {:.2} (target >= 1.30)",
        guard / tower_sessions
    );
    println!("tower-session-guard / bare: {:.2}", guard / bare);

    let json = serde_json::json!({
        "requests": settings.requests,
        "connections": settings.connections,
        "rounds": settings.rounds,
        "requests_per_second": {
            "bare": bare,
            "tower-session-guard": guard,
            "tower-sessions": tower_sessions,
        },
        "all_rounds": {
            "bare": rates[0],
            "tower-session-guard": rates[1],
            "tower-sessions": rates[2],
        },
    });
    let path = support::results_dir().join("http.json");
    std::fs::write(&path, format!("{json:#}\n")).expect("cannot write the results");
    println!("wrote {}", path.display());
}

fn settings() -> Settings {
    let mut settings = Settings {
        requests: DEFAULT_REQUESTS,
        connections: DEFAULT_CONNECTIONS,
        rounds: DEFAULT_ROUNDS,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--requests", Some(n)) if n > 0 => settings.requests = n,
            ("--connections", Some(n)) if n > 0 => settings.connections = n as usize,
            ("--rounds", Some(n)) if n > 0 => settings.rounds = n as usize,
            _ => panic!(
                "unknown or invalid argument {flag:?}; use --requests N, --connections N, --rounds N"
            ),
        }
    }
    settings
}

/// Starts `subject` on a free loopback port with one session ready.
async fn serve(subject: Subject) -> Target {
    let mut router = subject.router();
    let cookie = match subject {
        Subject::Bare => support::bare_cookie(),
        _ => support::start_session(&mut router).await,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("cannot listen on 127.0.0.1");
    let address = listener.local_addr().expect("a bound address");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    Target {
        subject,
        address,
        cookie,
    }
}

/// Sends `requests` reads to `target` over `connections` connections;
/// returns requests per second. Connecting is not timed.
async fn load(target: &Target, requests: u64, connections: usize) -> f64 {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(target.address).await);
    }
    let remaining = Arc::new(AtomicU64::new(requests));
    let start = Instant::now();
    let mut clients = JoinSet::new();
    for sender in senders {
        clients.spawn(client(
            sender,
            target.cookie.clone(),
            Arc::clone(&remaining),
        ));
    }
    let mut sent = 0;
    let finished = tokio::time::timeout(RUN_DEADLINE, async {
        while let Some(result) = clients.join_next().await {
            match result.expect("a client task panicked") {
                Ok(count) => sent += count,
                Err(problem) => panic!("{}: {problem}", target.subject.name()),
            }
        }
    })
    .await;
    let elapsed = start.elapsed();
    assert!(
        finished.is_ok(),
        "{}: not finished after {RUN_DEADLINE:?}",
        target.subject.name()
    );
    assert_eq!(sent, requests);
    requests as f64 / elapsed.as_secs_f64()
}

async fn connect(address: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(address)
        .await
        .expect("cannot connect to the server");
    stream.set_nodelay(true).expect("cannot set TCP_NODELAY");
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake failed");
    tokio::spawn(connection);
    sender
}

/// Sends reads on one connection until the shared budget is spent; checks
/// every answer. Returns how many it sent.
async fn client(
    mut sender: SendRequest<Empty<Bytes>>,
    cookie: HeaderValue,
    remaining: Arc<AtomicU64>,
) -> Result<u64, String> {
    let host = HeaderValue::from_static("127.0.0.1");
    let mut sent = 0;
    while remaining
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = axum::http::Uri::from_static("/read");
        request.headers_mut().insert(HOST, host.clone());
        request.headers_mut().insert(COOKIE, cookie.clone());
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        if response.headers().contains_key(SET_COOKIE) {
            return Err("a read request set a cookie".to_owned());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if body != "0" {
            return Err(format!("unexpected body {body:?}"));
        }
        sent += 1;
    }
    Ok(sent)
}
