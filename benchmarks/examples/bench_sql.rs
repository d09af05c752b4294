//! Sessions in PostgreSQL: this crate's `PostgresStore` beside tower-sessions
//! 0.14 with tower-sessions-sqlx-store 0.15 (`PostgresStore`), on the same
//! database, in one run. Time per request for read, write and new-session
//! requests through an axum `Router`, and rows written per request.
//!
//! ```text
//! cargo run -p benchmarks --features postgres --release --example bench_sql
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test ROUNDS=7 REQUESTS=2000 \
//!     cargo run -p benchmarks --features postgres --release --example bench_sql
//! ```
//!
//! Writes `benches/sql_results.json` and the chart `benches/sql_results.svg`
//! shown in BENCHMARKS.md, and prints the table of ratios (`RENDER_ONLY=1`
//! draws the chart and prints the table again from the JSON).
//!
//! Every subject gets its own pool with the same settings (10 connections,
//! `test_before_acquire(false)`, so that no subject pays sqlx's extra ping
//! per operation) and its own tables, created for the run and dropped after
//! it. Requests go one at a time (latency, not throughput). The subjects
//! take turns for `ROUNDS` rounds of `REQUESTS` requests per scenario; the
//! time per request is the median of the rounds' means, so that the
//! machine's drift spreads over all of them.
//!
//! Rows written per request come from PostgreSQL's own counters
//! (`pg_stat_user_tables`: rows inserted, updated and deleted in the
//! subject's tables): per scenario, a pass with only the set-up and a pass
//! with `REQUESTS` more requests, each on a pool closed and given time for
//! its backends to report (a few minutes in all). `COUNT_SCANS=1` counts
//! index and table scans instead (statements that read a table).
//! This crate's store runs with `with_synchronous_data_writes(false)`
//! (data-only commits asynchronous); `SYNCHRONOUS_DATA_WRITES=1` measures
//! the default, every commit synchronous. One subject,
//! `CachedStore<PostgresStore>, synchronous`, always runs with the default,
//! so that one run shows both.

#[path = "../benches/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::Router;
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tower::Service as _;

const SCENARIOS: [&str; 3] = ["read", "write", "new"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Subject {
    /// This crate, `PostgresStore` with change notifications off (nothing
    /// caches its sessions, so nothing listens).
    Guard,
    /// This crate, `CachedStore<PostgresStore>` (LISTEN/NOTIFY).
    GuardCached,
    /// The same, with every commit synchronous whatever
    /// `SYNCHRONOUS_DATA_WRITES` says (the store's default).
    GuardCachedDurable,
    /// tower-sessions with tower-sessions-sqlx-store's `PostgresStore`.
    TowerSessions,
    /// tower-sessions with a moka cache in front (`CachingSessionStore`).
    TowerSessionsCached,
}

impl Subject {
    const ALL: [Subject; 5] = [
        Subject::Guard,
        Subject::GuardCached,
        Subject::GuardCachedDurable,
        Subject::TowerSessions,
        Subject::TowerSessionsCached,
    ];

    /// This subject's place in [`Subject::ALL`].
    fn index(self) -> usize {
        Subject::ALL
            .iter()
            .position(|s| *s == self)
            .expect("every subject is in ALL")
    }

    fn name(self) -> &'static str {
        match self {
            Subject::Guard => "tower-session-guard (no NOTIFY)",
            Subject::GuardCached => "tower-session-guard + CachedStore",
            Subject::GuardCachedDurable => "tower-session-guard + CachedStore, synchronous",
            Subject::TowerSessions => "tower-sessions",
            Subject::TowerSessionsCached => "tower-sessions + CachingSessionStore",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Subject::Guard => "#2b7bba",
            Subject::GuardCached => "#8fc1e3",
            Subject::GuardCachedDurable => "#5a9fd0",
            Subject::TowerSessions => "#e08a2c",
            Subject::TowerSessionsCached => "#f3c58f",
        }
    }

    /// The tables this subject's store writes, for the row counters.
    fn tables(self, run: &str) -> (String, Vec<String>) {
        match self {
            Subject::Guard | Subject::GuardCached | Subject::GuardCachedDurable => (
                "public".to_owned(),
                ["sessions", "user_sessions", "locks"]
                    .iter()
                    .map(|t| format!("{}{t}", guard_prefix(self, run)))
                    .collect(),
            ),
            Subject::TowerSessions | Subject::TowerSessionsCached => {
                (ts_schema(self, run), vec!["session".to_owned()])
            }
        }
    }
}

fn guard_prefix(subject: Subject, run: &str) -> String {
    match subject {
        Subject::GuardCached => format!("bench_{run}_c_"),
        Subject::GuardCachedDurable => format!("bench_{run}_d_"),
        _ => format!("bench_{run}_"),
    }
}

fn ts_schema(subject: Subject, run: &str) -> String {
    match subject {
        Subject::TowerSessionsCached => format!("bench_{run}_tsc"),
        _ => format!("bench_{run}_ts"),
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(10)
        .test_before_acquire(false)
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}; set DATABASE_URL"))
}

async fn router(subject: Subject, url: &str, run: &str) -> (Router, PgPool) {
    let pool = pool(url).await;
    let router = match subject {
        Subject::Guard | Subject::GuardCached | Subject::GuardCachedDurable => {
            let store = tower_session_guard::PostgresStore::new(pool.clone())
                .with_table_prefix(guard_prefix(subject, run))
                // Data writes commit asynchronously unless `SYNCHRONOUS_DATA_WRITES`
                // asks for the store's default.
                .with_synchronous_data_writes(
                    subject == Subject::GuardCachedDurable
                        || std::env::var("SYNCHRONOUS_DATA_WRITES").is_ok(),
                );
            store.migrate().await.expect("migrate");
            if subject == Subject::Guard {
                // Nothing caches the plain store's sessions: no need to announce.
                guard_router(store.with_change_notifications(false))
            } else {
                let cached = tower_session_guard::CachedStore::new(store, 100_000);
                let start = Instant::now();
                while !cached.is_caching() && start.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                guard_router(cached)
            }
        }
        Subject::TowerSessions | Subject::TowerSessionsCached => {
            let store = tower_sessions_sqlx_store::PostgresStore::new(pool.clone())
                .with_schema_name(ts_schema(subject, run))
                .expect("a valid schema name");
            store.migrate().await.expect("migrate");
            if subject == Subject::TowerSessions {
                support::tower_sessions_app::router_over(store)
            } else {
                let cache = tower_sessions_moka_store::MokaStore::new(Some(100_000));
                support::tower_sessions_app::router_over(tower_sessions::CachingSessionStore::new(
                    cache, store,
                ))
            }
        }
    };
    (router, pool)
}

/// The benchmarks' handlers behind this crate's layer over `store`.
fn guard_router(store: impl tower_session_guard::SessionStore) -> Router {
    let layer = tower_session_guard::SessionLayer::new(store, tower_session_guard::Key::generate());
    support::guard::routes().layer(layer)
}

fn request(method: Method, path: &'static str, cookie: Option<&HeaderValue>) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = axum::http::Uri::from_static(path);
    if let Some(cookie) = cookie {
        request.headers_mut().insert(COOKIE, cookie.clone());
    }
    request
}

async fn call(router: &mut Router, request: Request<Body>) -> axum::response::Response {
    let response = router
        .call(request)
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// A session holding `n = 0`, as its cookie.
async fn start_session(router: &mut Router) -> HeaderValue {
    let response = call(router, request(Method::POST, "/new", None)).await;
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    HeaderValue::from_str(set_cookie.split(';').next().unwrap().trim()).unwrap()
}

/// Sends `count` requests of `scenario`; the mean time per request.
async fn run_scenario(router: &mut Router, scenario: &str, count: usize) -> Duration {
    let cookie = start_session(router).await;
    let (method, path, cookie) = match scenario {
        "read" => (Method::GET, "/read", Some(&cookie)),
        "write" => (Method::POST, "/write", Some(&cookie)),
        _ => (Method::POST, "/new", None),
    };
    // Warm the connections' prepared statements.
    for _ in 0..20 {
        call(router, request(method.clone(), path, cookie)).await;
    }
    let start = Instant::now();
    for _ in 0..count {
        std::hint::black_box(call(router, request(method.clone(), path, cookie)).await);
    }
    start.elapsed() / u32::try_from(count.max(1)).unwrap()
}

/// Rows inserted, updated and deleted so far in `tables` of `schema`.
async fn rows_written(admin: &PgPool, schema: &str, tables: &[String]) -> i64 {
    let column = if std::env::var("COUNT_SCANS").is_ok() {
        "idx_scan + seq_scan"
    } else {
        "n_tup_ins + n_tup_upd + n_tup_del"
    };
    sqlx::query_scalar::<_, i64>(&format!(
        "SELECT COALESCE(SUM({column}), 0)::bigint \
         FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY($2)"
    ))
    .bind(schema)
    .bind(tables)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rounds: usize = env_number("ROUNDS", 5);
    let requests: usize = env_number("REQUESTS", 1_000);
    let run = format!("{}", std::process::id());
    let benches = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    if std::env::var("RENDER_ONLY").is_ok() {
        // The chart again, from the results of the last run.
        let results = std::fs::read_to_string(benches.join("sql_results.json")).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&results).unwrap();
        std::fs::write(benches.join("sql_results.svg"), render(&summary)).unwrap();
        println!("{}", table(&summary));
        return;
    }
    let admin = pool(&url).await;
    if std::env::var("LOADS_ONLY").is_ok() {
        loads_only(&url, &run, requests).await;
        drop_tables(&admin, &run).await;
        return;
    }

    // Time per request: the subjects take turns, round after round.
    let mut routers = Vec::new();
    for subject in Subject::ALL {
        routers.push(router(subject, &url, &run).await);
    }
    let mut times = vec![vec![Vec::new(); SCENARIOS.len()]; Subject::ALL.len()];
    if std::env::var("TIMES_ONLY").is_ok() {
        for round in 0..rounds {
            for scenario in SCENARIOS {
                let line: Vec<String> = {
                    let mut line = Vec::new();
                    for (n, (router, _)) in routers.iter_mut().enumerate() {
                        let mean = run_scenario(router, scenario, requests).await;
                        line.push(format!("{}={mean:?}", Subject::ALL[n].name()));
                    }
                    line
                };
                println!("round {round} {scenario}: {}", line.join(", "));
            }
        }
        drop_tables(&admin, &run).await;
        return;
    }
    for round in 0..rounds {
        for (s, scenario) in SCENARIOS.iter().enumerate() {
            for (n, (router, _)) in routers.iter_mut().enumerate() {
                let mean = run_scenario(router, scenario, requests).await;
                times[n][s].push(mean);
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    for (_, pool) in routers.drain(..) {
        pool.close().await;
    }

    // Rows written per request: per subject and scenario, one pass with
    // only the set-up (a new session, the warm-up requests) and one with
    // `requests` more; the difference, over `requests`.
    let mut rows = vec![vec![0.0; SCENARIOS.len()]; Subject::ALL.len()];
    for (n, subject) in Subject::ALL.into_iter().enumerate() {
        let (schema, tables) = subject.tables(&run);
        for (s, scenario) in SCENARIOS.iter().enumerate() {
            let mut written = Vec::new();
            let mut before = settled_rows(&admin, &schema, &tables).await;
            for count in [0, requests] {
                let (mut router, pool) = router(subject, &url, &run).await;
                run_scenario(&mut router, scenario, count).await;
                drop(router);
                pool.close().await;
                let after = settled_rows(&admin, &schema, &tables).await;
                written.push(after - before);
                before = after;
            }
            #[allow(clippy::cast_precision_loss)]
            let per_request = (written[1] - written[0]) as f64 / requests as f64;
            rows[n][s] = per_request;
        }
    }

    drop_tables(&admin, &run).await;

    let summary = summarize(&times, &rows, rounds, requests);
    std::fs::write(benches.join("sql_results.json"), format!("{summary:#}\n")).unwrap();
    std::fs::write(benches.join("sql_results.svg"), render(&summary)).unwrap();
    println!("{}", table(&summary));
}

/// The row counters once every backend of a closed pool reported: a
/// backend flushes its counters when it exits and, while idle, at the
/// latest 10 seconds after its last transaction; then they are read until
/// they stop moving.
async fn settled_rows(admin: &PgPool, schema: &str, tables: &[String]) -> i64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut last = rows_written(admin, schema, tables).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rows_written(admin, schema, tables).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

async fn drop_tables(admin: &PgPool, run: &str) {
    for subject in [
        Subject::Guard,
        Subject::GuardCached,
        Subject::GuardCachedDurable,
    ] {
        let prefix = guard_prefix(subject, run);
        for table in ["sessions", "user_sessions", "locks", "schema"] {
            let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {prefix}{table}"))
                .execute(admin)
                .await;
        }
    }
    for subject in [Subject::TowerSessions, Subject::TowerSessionsCached] {
        let _ = sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            ts_schema(subject, run)
        ))
        .execute(admin)
        .await;
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn summarize(
    times: &[Vec<Vec<Duration>>],
    rows: &[Vec<f64>],
    rounds: usize,
    requests: usize,
) -> serde_json::Value {
    let subjects: Vec<serde_json::Value> = Subject::ALL
        .iter()
        .enumerate()
        .map(|(n, subject)| {
            let scenarios: serde_json::Map<String, serde_json::Value> = SCENARIOS
                .iter()
                .enumerate()
                .map(|(s, scenario)| {
                    let micros: Vec<f64> =
                        times[n][s].iter().map(|d| d.as_secs_f64() * 1e6).collect();
                    (
                        (*scenario).to_owned(),
                        json!({
                            "median_us": median(&times[n][s]).as_secs_f64() * 1e6,
                            "rounds_us": micros,
                            "rows_written_per_request": (rows[n][s] * 100.0).round() / 100.0,
                        }),
                    )
                })
                .collect();
            json!({"name": subject.name(), "color": subject.color(), "scenarios": scenarios})
        })
        .collect();
    json!({
        "rounds": rounds,
        "requests_per_round": requests,
        "subjects": subjects,
    })
}

fn median_us(summary: &serde_json::Value, subject: usize, scenario: &str) -> f64 {
    summary["subjects"][subject]["scenarios"][scenario]["median_us"]
        .as_f64()
        .unwrap()
}

fn table(summary: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| subject | read µs | write µs | new µs | rows written: read | write | new |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (n, subject) in Subject::ALL.iter().enumerate() {
        let s = &summary["subjects"][n]["scenarios"];
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            subject.name(),
            median_us(summary, n, "read"),
            median_us(summary, n, "write"),
            median_us(summary, n, "new"),
            s["read"]["rows_written_per_request"],
            s["write"]["rows_written_per_request"],
            s["new"]["rows_written_per_request"],
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| ratio | read | write | new | target |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (ours, theirs, what) in [
        (
            Subject::Guard,
            Subject::TowerSessions,
            "PostgresStore ÷ tower-sessions PostgresStore",
        ),
        (
            Subject::GuardCached,
            Subject::TowerSessions,
            "CachedStore<PostgresStore> ÷ tower-sessions PostgresStore",
        ),
        (
            Subject::GuardCachedDurable,
            Subject::TowerSessions,
            "CachedStore<PostgresStore>, synchronous ÷ tower-sessions PostgresStore",
        ),
        (
            Subject::GuardCached,
            Subject::TowerSessionsCached,
            "CachedStore<PostgresStore> ÷ tower-sessions CachingSessionStore",
        ),
        (
            Subject::GuardCachedDurable,
            Subject::TowerSessionsCached,
            "CachedStore<PostgresStore>, synchronous ÷ tower-sessions CachingSessionStore",
        ),
    ] {
        let ratio = |scenario: &str| {
            median_us(summary, ours.index(), scenario)
                / median_us(summary, theirs.index(), scenario)
        };
        let _ = writeln!(
            out,
            "| {what} | {:.2} | {:.2} | {:.2} | ≤ 0.90 / 0.60 / 0.90 |",
            ratio("read"),
            ratio("write"),
            ratio("new")
        );
    }
    out
}

/// A grouped bar chart: time per request for each scenario and subject.
fn render(summary: &serde_json::Value) -> String {
    // Room below the plot for the scenario names and two legend entries a row.
    let legend_rows = Subject::ALL.len().div_ceil(2) as f64;
    let (width, left, top, bottom) = (760.0, 60.0, 40.0, 40.0 + legend_rows * 16.0);
    let height = 250.0 + top + bottom;
    let plot_h = height - top - bottom;
    let max = SCENARIOS
        .iter()
        .flat_map(|s| (0..Subject::ALL.len()).map(move |n| (n, *s)))
        .map(|(n, s)| median_us(summary, n, s))
        .fold(0.0_f64, f64::max)
        * 1.1;
    let group_w = (width - left - 20.0) / SCENARIOS.len() as f64;
    let bar_w = group_w * 0.8 / Subject::ALL.len() as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">Sessions in PostgreSQL: time per request (µs, median of rounds; lower is better)</text>"#
    );
    for tick in 0..=4 {
        let value = max * f64::from(tick) / 4.0;
        let y = top + plot_h - plot_h * f64::from(tick) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{value:.0}</text>"##,
            width - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    for (s, scenario) in SCENARIOS.iter().enumerate() {
        let x0 = left + group_w * s as f64 + group_w * 0.1;
        for (n, subject) in Subject::ALL.iter().enumerate() {
            let value = median_us(summary, n, scenario);
            let h = plot_h * value / max;
            let x = x0 + bar_w * n as f64;
            let y = top + plot_h - h;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{value:.0}</text>"#,
                bar_w - 2.0,
                subject.color(),
                x + bar_w / 2.0 - 1.0,
                y - 3.0
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{scenario}</text>"#,
            x0 + group_w * 0.4,
            top + plot_h + 16.0
        );
    }
    for (n, subject) in Subject::ALL.iter().enumerate() {
        let x = left + (n % 2) as f64 * 330.0;
        let y = top + plot_h + 38.0 + (n / 2) as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{}" y="{y:.1}">{}</text>"#,
            y - 9.0,
            subject.color(),
            x + 14.0,
            subject.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Time per `load` of the two stores alone, without a layer (`LOADS_ONLY=1`).
async fn loads_only(url: &str, run: &str, count: usize) {
    use tower_session_guard::SessionStore as _;
    use tower_sessions::SessionStore as _;
    let ours = tower_session_guard::PostgresStore::new(pool(url).await)
        .with_table_prefix(guard_prefix(Subject::Guard, run));
    ours.migrate().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut data = tower_session_guard::store::SessionData::default();
    data.insert("greeting".to_owned(), json!("hello"));
    let record = tower_session_guard::store::Deadlines {
        created_at: now,
        idle_deadline: now + 1_800_000,
        absolute_deadline: now + 3_600_000,
    }
    .record(
        tower_session_guard::store::SessionId::generate().hash(),
        None,
        data,
    );
    ours.create(&record).await.unwrap();
    let theirs = tower_sessions_sqlx_store::PostgresStore::new(pool(url).await)
        .with_schema_name(ts_schema(Subject::TowerSessions, run))
        .unwrap();
    theirs.migrate().await.unwrap();
    let mut their_record = tower_sessions::session::Record {
        id: tower_sessions::session::Id::default(),
        data: std::collections::HashMap::from([("greeting".to_owned(), json!("hello"))]),
        expiry_date: tower_sessions::cookie::time::OffsetDateTime::now_utc()
            + tower_sessions::cookie::time::Duration::hours(1),
    };
    theirs.create(&mut their_record).await.unwrap();
    for round in 0..3 {
        let start = Instant::now();
        for _ in 0..count {
            std::hint::black_box(ours.load(&record.id_hash()).await.unwrap());
        }
        let a = start.elapsed() / u32::try_from(count).unwrap();
        let start = Instant::now();
        for _ in 0..count {
            std::hint::black_box(theirs.load(&their_record.id).await.unwrap());
        }
        let b = start.elapsed() / u32::try_from(count).unwrap();
        println!(
            "round {round}: PostgresStore::load {a:?}, tower-sessions PostgresStore::load {b:?}"
        );
    }
}
