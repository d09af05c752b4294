//! Outage drills: a private Redis (append-only file, `appendfsync always`)
//! and a private PostgreSQL (`fsync` and `synchronous_commit` on, as
//! shipped), each killed with `SIGKILL` by pid in the middle of a load of
//! 16 signed-in clients and a stream of new sign-ins, then restarted on the
//! same port and data directory, while the app keeps running.
//!
//! The checks:
//! - every request that starts after the kill and before the restart
//!   answers `503`, within the store's timeout plus slack, and no request
//!   at all waits longer than two store operations' timeouts plus slack;
//! - the only statuses are `200` and `503`, every request that ended
//!   before the kill was `200`, and nobody is ever answered as someone else;
//! - every client is served again after the restart, without restarting
//!   the app;
//! - no acknowledged write is lost: each client's counter ends at least
//!   at its acknowledged increments, and at most at those plus its failed
//!   ones (a failed increment may have been applied, its answer lost with
//!   the server); every counter a client reads along the way lies between
//!   the same bounds.
//!
//! Each drill prints its figures (time to the first `503`, to recovery,
//! writes acknowledged and found); RELIABILITY.md records a run. Without
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use common::{send, sign_in};
use http::StatusCode;

/// Signed-in clients, each sending increments, reads and `whoami` in turn.
const CLIENTS: usize = 16;
/// The store's operation timeout in the drills.
const TIMEOUT: Duration = Duration::from_millis(500);
/// What a loaded machine may add to a timeout.
const SLACK: Duration = Duration::from_millis(1_000);
/// How long the server stays dead.
const DOWN_FOR: Duration = Duration::from_millis(1_500);
/// How long after the restart every client must be served again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

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
    first_503_after_kill: Option<Duration>,
    requests_while_down: usize,
    slowest_while_down: Duration,
    slowest_overall: Duration,
    first_200_after_restart: Option<Duration>,
    all_recovered_after_restart: Option<Duration>,
    restart_took: Duration,
    acknowledged: u64,
    failed_writes: u64,
    found: u64,
    applied_unacknowledged: u64,
    requests: usize,
    problems: Vec<String>,
}

/// Runs the load against `app`, kills and restarts `backend` in its
/// middle, and checks what came back.
async fn drill(name: &str, app: Router, backend: &mut dyn Backend) -> Findings {
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        tokens.push(sign_in(&app, &format!("{name}-user-{i}")).await);
    }
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (client, token) in tokens.iter().cloned().enumerate() {
        let (app, records, stop) = (app.clone(), Arc::clone(&records), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let kinds = [Kind::Write, Kind::Read, Kind::WhoAmI];
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let kind = kinds[i % kinds.len()];
                i += 1;
                let uri = match kind {
                    Kind::Write => "/count",
                    Kind::Read => "/read",
                    _ => "/whoami",
                };
                let start = Instant::now();
                let reply = send(&app, "GET", uri, Some(&token)).await;
                let record = Record {
                    client,
                    kind,
                    start,
                    end: Instant::now(),
                    status: reply.status,
                    body: reply.body,
                };
                let failed = record.status != StatusCode::OK;
                records.lock().unwrap().push(record);
                if failed {
                    // Refused connections fail at once: do not spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    {
        let (app, records, stop) = (app.clone(), Arc::clone(&records), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let start = Instant::now();
                let reply = send(&app, "POST", &format!("/login/newcomer-{n}"), None).await;
                records.lock().unwrap().push(Record {
                    client: CLIENTS,
                    kind: Kind::NewLogin,
                    start,
                    end: Instant::now(),
                    status: reply.status,
                    body: reply.body,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let kill_sent = Instant::now();
    tokio::task::block_in_place(|| backend.kill());
    let dead = Instant::now();
    tokio::time::sleep(DOWN_FOR).await;
    let restart_sent = Instant::now();
    tokio::task::block_in_place(|| backend.restart());
    let up = Instant::now();

    // Load on until every client was served after the restart, and a
    // second more.
    let recovered = |records: &[Record]| {
        (0..CLIENTS).all(|client| {
            records
                .iter()
                .any(|r| r.client == client && r.start >= restart_sent && r.status == 200)
        })
    };
    let deadline = up + RECOVERY_LIMIT;
    while !recovered(&records.lock().unwrap()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let records = records.lock().unwrap().clone();
    let timeline = Timeline {
        kill_sent,
        dead,
        restart_sent,
        up,
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

/// Checks the load's records against the timeline.
fn judge(records: &[Record], t: &Timeline, users: &[String]) -> Findings {
    let mut f = Findings {
        requests: records.len(),
        restart_took: t.up - t.restart_sent,
        ..Findings::default()
    };
    let down_limit = TIMEOUT + SLACK;
    let overall_limit = TIMEOUT * 2 + SLACK;
    for r in records {
        let took = r.end - r.start;
        f.slowest_overall = f.slowest_overall.max(took);
        if took > overall_limit {
            problem(
                &mut f,
                format!("{:?} took {took:?}, over {overall_limit:?}", r.kind),
            );
        }
        if r.status != StatusCode::OK && r.status != StatusCode::SERVICE_UNAVAILABLE {
            problem(&mut f, format!("{:?} answered {}", r.kind, r.status));
        }
        if r.end < t.kill_sent && r.status != StatusCode::OK {
            problem(
                &mut f,
                format!("{:?} answered {} before the kill", r.kind, r.status),
            );
        }
        if r.start >= t.dead && r.end <= t.restart_sent {
            f.requests_while_down += 1;
            f.slowest_while_down = f.slowest_while_down.max(took);
            if r.status != StatusCode::SERVICE_UNAVAILABLE {
                problem(
                    &mut f,
                    format!(
                        "{:?} answered {} while the server was dead",
                        r.kind, r.status
                    ),
                );
            }
            if took > down_limit {
                problem(
                    &mut f,
                    format!(
                        "{:?} took {took:?} while the server was dead, over {down_limit:?}",
                        r.kind
                    ),
                );
            }
        }
        if r.status == StatusCode::SERVICE_UNAVAILABLE && r.end >= t.kill_sent {
            let after = r.end - t.kill_sent;
            f.first_503_after_kill = Some(f.first_503_after_kill.map_or(after, |a| a.min(after)));
        }
    }
    if f.requests_while_down == 0 {
        problem(
            &mut f,
            "no request ran while the server was dead".to_owned(),
        );
    }
    match f.first_503_after_kill {
        None => problem(&mut f, "no request answered 503 after the kill".to_owned()),
        Some(after) if after > (t.dead - t.kill_sent) + down_limit => problem(
            &mut f,
            format!("the first 503 came {after:?} after the kill, over the timeout plus slack"),
        ),
        Some(_) => {}
    }

    // Recovery, per client.
    let mut slowest_recovery = Duration::ZERO;
    for client in 0..CLIENTS {
        let back = records
            .iter()
            .filter(|r| r.client == client && r.start >= t.restart_sent && r.status == 200)
            .map(|r| r.end - t.restart_sent)
            .min();
        match back {
            Some(back) => {
                slowest_recovery = slowest_recovery.max(back);
                f.first_200_after_restart =
                    Some(f.first_200_after_restart.map_or(back, |b| b.min(back)));
            }
            None => problem(
                &mut f,
                format!("client {client} was not served within {RECOVERY_LIMIT:?} of the restart"),
            ),
        }
    }
    if f.problems.iter().all(|p| !p.contains("was not served")) {
        f.all_recovered_after_restart = Some(slowest_recovery);
    }
    if !records
        .iter()
        .any(|r| r.kind == Kind::NewLogin && r.start >= t.restart_sent && r.status == 200)
    {
        problem(
            &mut f,
            "no new sign-in succeeded after the restart".to_owned(),
        );
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

/// The figures, for the test output and RELIABILITY.md.
fn summary(name: &str, f: &Findings) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or_else(|| "never".to_owned(), |d| format!("{} ms", d.as_millis()))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name} drill: {} requests; store timeout {} ms, server dead for {} ms",
        f.requests,
        TIMEOUT.as_millis(),
        DOWN_FOR.as_millis()
    );
    let _ = writeln!(
        out,
        "  first 503 {} after SIGKILL; {} requests while dead, all 503, slowest {} ms; slowest request overall {} ms",
        ms(f.first_503_after_kill),
        f.requests_while_down,
        f.slowest_while_down.as_millis(),
        f.slowest_overall.as_millis()
    );
    let _ = writeln!(
        out,
        "  restart took {} ms; first 200 {} after the restart began, every client served {} after",
        f.restart_took.as_millis(),
        ms(f.first_200_after_restart),
        ms(f.all_recovered_after_restart)
    );
    let _ = writeln!(
        out,
        "  increments acknowledged {}, found {} (failed {}, of which applied before the answer was lost {})",
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
