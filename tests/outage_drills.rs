//! Outage drills: a private Redis (append-only file, `appendfsync always`)
//! and a private PostgreSQL (`fsync` and `synchronous_commit` on, as
//! shipped), each killed with `SIGKILL` by pid in the middle of a load of
//! 16 signed-in clients and a stream of new sign-ins, then restarted on the
//! same port and data directory, while the app keeps running.
//!
//! The checks (on statuses and counts, never on durations: a shared
//! machine may be slow at any moment):
//! - requests before the kill answer `200`; a `503` arrives after it, and
//!   every request that starts after the kill and ends before the restart
//!   answers `503` (the store's timeout is set, so none waits for a dead
//!   server's TCP timeout);
//! - the only statuses are `200` and `503`, and nobody is ever answered as
//!   someone else;
//! - once the server is back, every client and the new sign-ins are served
//!   again within [`RECOVERY_ATTEMPTS`] attempts each, without restarting
//!   the app;
//! - no acknowledged write is lost: each client's counter ends at least
//!   at its acknowledged increments, and at most at those plus its failed
//!   ones (a failed increment may have been applied, its answer lost with
//!   the server); every counter a client reads along the way lies between
//!   the same bounds.
//!
//! Each drill prints its timeline (requests before the kill, `503`s while
//! down and how long they took, attempts and time to recover, writes
//! acknowledged and found); RELIABILITY.md records a run. Without
//! `redis-server` or PostgreSQL's server programs a drill prints a
//! `SKIPPED` line and passes; `REQUIRE_REDIS=1` / `REQUIRE_POSTGRES=1`
//! make that a failure.
#![cfg(any(feature = "redis", feature = "postgres"))]
// The Redis and the SQL helpers each include `common/external.rs`.
#![allow(clippy::duplicate_mod)]

mod common;
#[cfg(feature = "redis")]
mod redis_common;
#[cfg(feature = "postgres")]
mod sql_common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use common::{send, sign_in};
use http::StatusCode;

/// Signed-in clients, each sending increments, reads and `whoami` in turn.
const CLIENTS: usize = 16;
/// The store's operation timeout in the drills.
const TIMEOUT: Duration = Duration::from_millis(500);
/// How long the load runs before the kill.
const LOAD_BEFORE_KILL: Duration = Duration::from_secs(1);
/// How long the server stays dead.
const DOWN_FOR: Duration = Duration::from_millis(1_500);
/// The most requests a client (or the sign-in stream) may need, once the
/// server accepts connections again, to be served.
const RECOVERY_ATTEMPTS: u32 = 100;
/// The pause after a failed request once the server is back (before, a
/// short one: refused connections fail at once, do not spin).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(50);
/// Requests each client sends after its first success past the restart.
const AFTER_RECOVERY: u32 = 20;

/// A server the drill kills and starts again.
trait Backend {
    /// Kills it with `SIGKILL`; returns once it is gone.
    fn kill(&mut self);
    /// Starts it again on the same port and data; returns once it accepts
    /// connections.
    fn restart(&mut self);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
    WhoAmI,
    NewLogin,
}

/// One request of the load.
#[derive(Clone, Debug)]
struct Record {
    client: usize,
    kind: Kind,
    start: Instant,
    end: Instant,
    status: StatusCode,
    body: String,
    /// The how-manieth request since the server was back (1 for the first),
    /// for requests that started after that.
    attempt_after_up: Option<u32>,
}

/// When the drill did what.
struct Timeline {
    kill_sent: Instant,
    dead: Instant,
    restart_sent: Instant,
    up: Instant,
}

/// What a drill measured, and the checks that failed.
#[derive(Default)]
struct Findings {
    requests: usize,
    before_kill: usize,
    first_503_after_kill: Option<Duration>,
    requests_while_down: usize,
    fastest_while_down: Option<Duration>,
    slowest_while_down: Duration,
    slowest_overall: Duration,
    kill_took: Duration,
    restart_took: Duration,
    first_200_after_up: Option<Duration>,
    all_recovered_after_up: Option<Duration>,
    most_attempts_to_recover: u32,
    login_attempts_to_recover: Option<u32>,
    unavailable: usize,
    acknowledged: u64,
    failed_writes: u64,
    found: u64,
    applied_unacknowledged: u64,
    problems: Vec<String>,
}

/// Sends requests until, after the server is back, the sender was served
/// and sent `AFTER_RECOVERY` more, or was refused `RECOVERY_ATTEMPTS` times
/// in a row: bounded by the number of requests, not by the clock.
async fn load(
    app: Router,
    client: usize,
    token: Option<String>,
    up: Arc<OnceLock<Instant>>,
    records: Arc<Mutex<Vec<Record>>>,
) {
    let kinds = [Kind::Write, Kind::Read, Kind::WhoAmI];
    let mut i = 0;
    let mut attempts_after_up = 0u32;
    let mut served_after_up = 0u32;
    let mut logins = 0u64;
    loop {
        let back = up.get().is_some();
        if back {
            attempts_after_up += 1;
        }
        let (kind, method, uri) = match &token {
            Some(_) => {
                let kind = kinds[i % kinds.len()];
                i += 1;
                let uri = match kind {
                    Kind::Write => "/count",
                    Kind::Read => "/read",
                    _ => "/whoami",
                };
                (kind, "GET", uri.to_owned())
            }
            None => {
                logins += 1;
                (
                    Kind::NewLogin,
                    "POST",
                    format!("/login/newcomer-{client}-{logins}"),
                )
            }
        };
        let start = Instant::now();
        let reply = send(&app, method, &uri, token.as_deref()).await;
        let ok = reply.status == StatusCode::OK;
        records.lock().unwrap().push(Record {
            client,
            kind,
            start,
            end: Instant::now(),
            status: reply.status,
            body: reply.body,
            attempt_after_up: back.then_some(attempts_after_up),
        });
        if back {
            if ok || served_after_up > 0 {
                served_after_up += 1;
            }
            if served_after_up > AFTER_RECOVERY
                || (served_after_up == 0 && attempts_after_up >= RECOVERY_ATTEMPTS)
            {
                return;
            }
        }
        if !ok {
            let pause = if back {
                PAUSE_AFTER_FAILURE
            } else {
                Duration::from_millis(5)
            };
            tokio::time::sleep(pause).await;
        } else if token.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs the load against `app`, kills and restarts `backend` in its
/// middle, and checks what came back.
async fn drill(name: &str, app: Router, backend: &mut dyn Backend) -> Findings {
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        tokens.push(sign_in(&app, &format!("{name}-user-{i}")).await);
    }
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let up = Arc::new(OnceLock::new());
    let mut tasks = Vec::new();
    for (client, token) in tokens.iter().cloned().enumerate() {
        tasks.push(tokio::spawn(load(
            app.clone(),
            client,
            Some(token),
            Arc::clone(&up),
            Arc::clone(&records),
        )));
    }
    // The stream of new sign-ins, as client `CLIENTS`.
    tasks.push(tokio::spawn(load(
        app.clone(),
        CLIENTS,
        None,
        Arc::clone(&up),
        Arc::clone(&records),
    )));

    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    let kill_sent = Instant::now();
    tokio::task::block_in_place(|| backend.kill());
    let dead = Instant::now();
    tokio::time::sleep(DOWN_FOR).await;
    let restart_sent = Instant::now();
    tokio::task::block_in_place(|| backend.restart());
    let up_at = Instant::now();
    up.set(up_at).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let records = records.lock().unwrap().clone();
    let timeline = Timeline {
        kill_sent,
        dead,
        restart_sent,
        up: up_at,
    };
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("{name}-user-{i}")).collect();
    let mut findings = judge(&records, &timeline, &users);

    // What each client's counter holds now.
    for (client, token) in tokens.iter().enumerate() {
        let reply = send(&app, "GET", "/read", Some(token)).await;
        if reply.status != StatusCode::OK {
            findings.problems.push(format!(
                "client {client}: the final read answered {}",
                reply.status
            ));
            continue;
        }
        let found: u64 = reply.body.parse().unwrap_or(0);
        let writes = records
            .iter()
            .filter(|r| r.client == client && r.kind == Kind::Write);
        let acknowledged = writes.clone().filter(|r| r.status == 200).count() as u64;
        let failed = writes.filter(|r| r.status != 200).count() as u64;
        findings.acknowledged += acknowledged;
        findings.failed_writes += failed;
        findings.found += found;
        findings.applied_unacknowledged += found.saturating_sub(acknowledged);
        if found < acknowledged {
            findings.problems.push(format!(
                "client {client}: {acknowledged} increments acknowledged, the counter holds {found}: acknowledged writes were lost"
            ));
        }
        if found > acknowledged + failed {
            findings.problems.push(format!(
                "client {client}: the counter holds {found}, more than the {} increments sent",
                acknowledged + failed
            ));
        }
    }
    findings
}

/// Checks the load's records against the timeline. Durations are
/// measured for the report, never judged.
fn judge(records: &[Record], t: &Timeline, users: &[String]) -> Findings {
    let mut f = Findings {
        requests: records.len(),
        kill_took: t.dead - t.kill_sent,
        restart_took: t.up - t.restart_sent,
        ..Findings::default()
    };
    for r in records {
        let took = r.end - r.start;
        f.slowest_overall = f.slowest_overall.max(took);
        if r.status != StatusCode::OK && r.status != StatusCode::SERVICE_UNAVAILABLE {
            problem(&mut f, format!("{:?} answered {}", r.kind, r.status));
        }
        if r.end < t.kill_sent {
            f.before_kill += 1;
            if r.status != StatusCode::OK {
                problem(
                    &mut f,
                    format!("{:?} answered {} before the kill", r.kind, r.status),
                );
            }
        }
        if r.start >= t.dead && r.end <= t.restart_sent {
            f.requests_while_down += 1;
            f.slowest_while_down = f.slowest_while_down.max(took);
            f.fastest_while_down = Some(f.fastest_while_down.map_or(took, |d| d.min(took)));
            if r.status != StatusCode::SERVICE_UNAVAILABLE {
                problem(
                    &mut f,
                    format!(
                        "{:?} answered {} while the server was dead",
                        r.kind, r.status
                    ),
                );
            }
        }
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            f.unavailable += 1;
        }
        if r.status == StatusCode::SERVICE_UNAVAILABLE && r.end >= t.kill_sent {
            let after = r.end - t.kill_sent;
            f.first_503_after_kill = Some(f.first_503_after_kill.map_or(after, |a| a.min(after)));
        }
    }
    if f.before_kill == 0 {
        problem(&mut f, "no request ended before the kill".to_owned());
    }
    if f.requests_while_down == 0 {
        problem(
            &mut f,
            "no request ran while the server was dead".to_owned(),
        );
    }
    if f.first_503_after_kill.is_none() {
        problem(&mut f, "no request answered 503 after the kill".to_owned());
    }

    // Recovery, per client and for the sign-in stream: the first success
    // among the requests that started once the server was back.
    let first_success = |client: usize| {
        records
            .iter()
            .filter(|r| r.client == client && r.status == 200)
            .filter_map(|r| Some((r.attempt_after_up?, r.end - t.up)))
            .min()
    };
    let mut slowest_recovery = Some(Duration::ZERO);
    for client in 0..CLIENTS {
        match first_success(client) {
            Some((attempt, after)) => {
                f.most_attempts_to_recover = f.most_attempts_to_recover.max(attempt);
                slowest_recovery = slowest_recovery.map(|s| s.max(after));
                f.first_200_after_up = Some(f.first_200_after_up.map_or(after, |b| b.min(after)));
            }
            None => {
                slowest_recovery = None;
                problem(
                    &mut f,
                    format!(
                        "client {client} was not served within {RECOVERY_ATTEMPTS} attempts once the server was back"
                    ),
                );
            }
        }
    }
    f.all_recovered_after_up = slowest_recovery;
    match first_success(CLIENTS) {
        Some((attempt, _)) => f.login_attempts_to_recover = Some(attempt),
        None => problem(
            &mut f,
            format!(
                "no new sign-in succeeded within {RECOVERY_ATTEMPTS} attempts once the server was back"
            ),
        ),
    }

    // Each client's answers, in order: its own name, and counters between
    // the acknowledged increments and the ones sent.
    for (client, user) in users.iter().enumerate() {
        let mut floor = 0u64;
        let mut sent = 0u64;
        for r in records.iter().filter(|r| r.client == client) {
            if r.kind == Kind::Write {
                sent += 1;
            }
            if r.status != StatusCode::OK {
                continue;
            }
            match r.kind {
                Kind::WhoAmI => {
                    if r.body != *user {
                        problem(
                            &mut f,
                            format!("client {client} was answered as {:?}", r.body),
                        );
                    }
                }
                Kind::Write | Kind::Read => {
                    let n: u64 = if r.body == "none" {
                        0
                    } else if let Ok(n) = r.body.parse() {
                        n
                    } else {
                        problem(&mut f, format!("client {client}: a counter {:?}", r.body));
                        continue;
                    };
                    let least = if r.kind == Kind::Write {
                        floor + 1
                    } else {
                        floor
                    };
                    if n < least || n > sent {
                        problem(
                            &mut f,
                            format!(
                                "client {client}: {:?} answered {n}, expected {least} to {sent}",
                                r.kind
                            ),
                        );
                    }
                    floor = floor.max(n);
                }
                Kind::NewLogin => {}
            }
        }
    }
    f
}

/// Notes a failed check (the first 20 are kept).
fn problem(f: &mut Findings, text: String) {
    if f.problems.len() < 20 {
        f.problems.push(text);
    }
}

/// The timeline and figures, for the test output and RELIABILITY.md.
fn summary(name: &str, f: &Findings) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or_else(|| "never".to_owned(), |d| format!("{} ms", d.as_millis()))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name} drill: {CLIENTS} signed-in clients and a stream of new sign-ins, {} requests in all; store timeout {} ms",
        f.requests,
        TIMEOUT.as_millis(),
    );
    let _ = writeln!(
        out,
        "  before the kill: {} requests, all 200 ({} ms of load)",
        f.before_kill,
        LOAD_BEFORE_KILL.as_millis()
    );
    let _ = writeln!(
        out,
        "  SIGKILL by pid: gone {} ms after it was sent; first 503 {} after the kill",
        f.kill_took.as_millis(),
        ms(f.first_503_after_kill),
    );
    let _ = writeln!(
        out,
        "  while dead ({} ms): {} requests, all 503, answered in {} to {} ms; {} 503s in all",
        DOWN_FOR.as_millis(),
        f.requests_while_down,
        f.fastest_while_down.unwrap_or_default().as_millis(),
        f.slowest_while_down.as_millis(),
        f.unavailable,
    );
    let _ = writeln!(
        out,
        "  restart: accepting connections {} ms after it began; first 200 {} later, every client served {} later, the slowest at its attempt {} (the bound is {RECOVERY_ATTEMPTS}); new sign-ins served at attempt {}",
        f.restart_took.as_millis(),
        ms(f.first_200_after_up),
        ms(f.all_recovered_after_up),
        f.most_attempts_to_recover,
        f.login_attempts_to_recover
            .map_or_else(|| "never".to_owned(), |a| a.to_string()),
    );
    let _ = writeln!(
        out,
        "  slowest request of the whole drill {} ms",
        f.slowest_overall.as_millis()
    );
    let _ = writeln!(
        out,
        "  increments acknowledged {}, found after the restart {} (failed {}, of which applied before the answer was lost {})",
        f.acknowledged, f.found, f.failed_writes, f.applied_unacknowledged
    );
    if f.problems.is_empty() {
        let _ = writeln!(out, "  result: PASS");
    }
    for problem in &f.problems {
        let _ = writeln!(out, "  FAIL: {problem}");
    }
    out
}

/// Prints the figures where they are seen even when output is captured,
/// and fails on any problem.
fn conclude(name: &str, findings: &Findings) {
    let text = summary(name, findings);
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    assert!(findings.problems.is_empty(), "{text}");
    assert!(findings.acknowledged > 0, "no write was acknowledged");
}

#[cfg(feature = "redis")]
mod redis_drill {
    use super::*;
    use redis_common::PrivateRedis;
    use tower_session_guard::store::RedisStore;
    use tower_session_guard::{Key, SessionLayer};

    impl Backend for PrivateRedis {
        fn kill(&mut self) {
            PrivateRedis::kill(self);
        }

        fn restart(&mut self) {
            self.launch();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_killed_mid_load_answers_503_then_recovers_with_every_acknowledged_write() {
        let persist = ["--appendonly", "yes", "--appendfsync", "always"].map(str::to_owned);
        let Some(mut redis) = PrivateRedis::start_with("redis_kill_drill", false, persist.into())
        else {
            return;
        };
        let mut connection = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        for (setting, expected) in [("appendonly", "yes"), ("appendfsync", "always")] {
            let got: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(setting)
                .query(&mut connection)
                .unwrap();
            assert_eq!(
                got[1], expected,
                "the private Redis must persist every write"
            );
        }
        drop(connection);
        assert!(redis.pid().is_some());

        let store = RedisStore::connect(&redis.url())
            .await
            .unwrap()
            .with_timeout(TIMEOUT);
        let app = common::app(SessionLayer::new(store, Key::generate()));
        let findings = drill("redis", app, &mut redis).await;
        conclude("Redis (AOF, appendfsync always)", &findings);
    }
}

#[cfg(feature = "postgres")]
mod postgres_drill {
    use super::*;
    use sql_common::PrivatePostgres;
    use tower_session_guard::{Key, PostgresStore, SessionLayer};

    /// The server, and how many backends outlived their postmaster long
    /// enough to need killing too.
    struct Killed {
        server: PrivatePostgres,
        stragglers: usize,
    }

    impl Backend for Killed {
        fn kill(&mut self) {
            self.stragglers += self.server.kill();
        }

        fn restart(&mut self) {
            self.server.launch();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_killed_mid_load_answers_503_then_recovers_with_every_acknowledged_write() {
        let Some(server) = PrivatePostgres::start_durable("postgres_kill_drill") else {
            return;
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(CLIENTS as u32 + 4)
            .connect(&server.url())
            .await
            .unwrap();
        for (setting, expected) in [("fsync", "on"), ("synchronous_commit", "on")] {
            let (value,): (String,) = sqlx::query_as(&format!("SHOW {setting}"))
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(
                value, expected,
                "the private PostgreSQL must flush every commit"
            );
        }
        let store = PostgresStore::new(pool).with_timeout(TIMEOUT);
        store.migrate().await.unwrap();
        let app = common::app(SessionLayer::new(store, Key::generate()));
        let mut backend = Killed {
            server,
            stragglers: 0,
        };
        let findings = drill("postgres", app, &mut backend).await;
        conclude(
            &format!(
                "PostgreSQL (fsync, synchronous commit; {} backends outlived the postmaster past 10 s)",
                backend.stragglers
            ),
            &findings,
        );
    }
}
