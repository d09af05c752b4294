//! The soak run itself: an axum app behind [`SessionLayer`] over a
//! [`MemoryStore`] kept at capacity, served on 127.0.0.1 and driven over
//! real HTTP/1 keep-alive connections, one sequential client per
//! connection, for a bounded time. Shared by `examples/soak/main.rs` (the
//! long run) and `tests/soak.rs` (the short one in the test suite).
//!
//! What each client does, chosen at random per request (weights in
//! [`Client::step`]):
//!
//! - **read** `GET /read`: its user and counter, checked against what the
//!   client knows;
//! - **write** `POST /count`: increments its counter; a `200` is an
//!   acknowledged increment;
//! - **login** `POST /login/{user}`: a new id, data kept;
//! - **logout** `POST /logout`: the server answers the final counter before
//!   destroying the session, which is checked, and the client starts over;
//! - **visit** `POST /count` without a cookie, the cookie thrown away: a
//!   one-request anonymous session, the kind that fills the store and gets
//!   evicted.
//!
//! Renewals come from the layer (`with_renewal_interval`): a response that
//! carries a new token the client did not ask for.
//!
//! What is expected, and nothing else: every response is `200`. A session
//! ends only by its logout, or, for an anonymous session, by eviction at
//! capacity (the store evicts anonymous sessions first, signed-in ones only
//! when no anonymous one is left; visits keep plenty of those). A client
//! learns its session was dropped when the server answers that the session
//! is new (`x-new: 1`) although the client presented a token; its counter
//! then legitimately starts over. A signed-in session dropped that way, a
//! counter that differs from the client's acknowledged increments, a user
//! other than the client's, a status other than `200` or a broken
//! connection is a failure.

#![allow(dead_code)] // the example and the test each use a part

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use http::{Method, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tower_session_guard::{Key, MemoryStore, Session, SessionError, SessionLayer};

/// The session cookie's name (the default cookie).
const COOKIE_NAME: &str = "__Host-id";

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long the clients send requests.
    pub duration: Duration,
    /// Concurrent HTTP connections, one client each.
    pub connections: usize,
    /// The store's `max_sessions`.
    pub capacity: u64,
    /// How often RSS is sampled.
    pub sample_every: Duration,
    /// The layer's renewal interval.
    pub renew_every: Duration,
    /// The layer's renewal grace.
    pub renew_grace: Duration,
    /// The largest ratio of the last third's peak RSS to the second
    /// third's that still counts as flat.
    pub flat_ratio: f64,
    /// Whether signed-in clients sign in again (a new id each time, and a
    /// 30-second marker under the old one in the signed-in tier). Off by
    /// default; see RELIABILITY.md for what it shows at this rate.
    pub relogins: bool,
}

impl Config {
    /// The full run: 64 connections for 10 minutes.
    pub fn full() -> Self {
        Self {
            duration: Duration::from_secs(600),
            connections: 64,
            capacity: 4_096,
            sample_every: Duration::from_secs(5),
            renew_every: Duration::from_secs(10),
            renew_grace: Duration::from_secs(1),
            flat_ratio: 1.10,
            relogins: false,
        }
    }

    /// The short run of the test suite.
    pub fn smoke() -> Self {
        Self {
            duration: Duration::from_secs(15),
            connections: 16,
            capacity: 512,
            sample_every: Duration::from_millis(500),
            renew_every: Duration::from_secs(3),
            renew_grace: Duration::from_secs(1),
            flat_ratio: 1.10,
            relogins: false,
        }
    }

    /// This with what the environment overrides: `SOAK_SECS`,
    /// `SOAK_CONNECTIONS`, `SOAK_CAPACITY`, `SOAK_SAMPLE_MS`,
    /// `SOAK_RENEW_SECS`, `SOAK_RELOGINS=1`.
    pub fn with_env(mut self) -> Self {
        let number = |name: &str| -> Option<u64> {
            let value = std::env::var(name).ok()?;
            Some(
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} must be a whole number, not {value:?}")),
            )
        };
        if let Some(secs) = number("SOAK_SECS") {
            self.duration = Duration::from_secs(secs);
        }
        if let Some(n) = number("SOAK_CONNECTIONS") {
            self.connections = usize::try_from(n).expect("SOAK_CONNECTIONS fits");
        }
        if let Some(n) = number("SOAK_CAPACITY") {
            self.capacity = n;
        }
        if let Some(ms) = number("SOAK_SAMPLE_MS") {
            self.sample_every = Duration::from_millis(ms);
        }
        if let Some(secs) = number("SOAK_RENEW_SECS") {
            self.renew_every = Duration::from_secs(secs);
        }
        if let Some(on) = number("SOAK_RELOGINS") {
            self.relogins = on == 1;
        }
        self
    }
}

/// Request counts by kind, over all clients.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
    pub logins: u64,
    pub logouts: u64,
    pub visits: u64,
    /// Renewals the clients saw (a new token they did not ask for).
    pub renewals: u64,
    /// Anonymous sessions of clients dropped by the store (expected at
    /// capacity).
    pub anonymous_lost: u64,
    /// Session lifetimes whose counter was checked at their end (logout,
    /// or the final read) against the acknowledged increments.
    pub epochs_checked: u64,
    /// Acknowledged increments in those lifetimes.
    pub increments_checked: u64,
}

impl Counts {
    fn add(&mut self, other: &Self) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.logins += other.logins;
        self.logouts += other.logouts;
        self.visits += other.visits;
        self.renewals += other.renewals;
        self.anonymous_lost += other.anonymous_lost;
        self.epochs_checked += other.epochs_checked;
        self.increments_checked += other.increments_checked;
    }

    pub fn requests(&self) -> u64 {
        self.reads + self.writes + self.logins + self.logouts + self.visits
    }
}

/// One RSS sample.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub held: u64,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub config: Config,
    pub elapsed: Duration,
    pub counts: Counts,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Everything unexpected (at most the first 20 are kept, all counted).
    pub problems: Vec<String>,
    pub problem_count: u64,
    pub samples: Vec<Sample>,
    /// The layer's own counts.
    pub server_created: u64,
    pub server_logins: u64,
    pub server_logouts: u64,
    pub server_renewals: u64,
    /// Entries in the store at the end.
    pub held_at_end: u64,
}

/// The flatness verdict on the RSS curve.
#[derive(Debug)]
pub struct Flatness {
    pub second_third_max: u64,
    pub last_third_max: u64,
    pub ratio: f64,
    pub flat: bool,
}

impl Report {
    /// The peak RSS of the second third and of the last third of the run,
    /// and whether the last stays within `flat_ratio` of the second.
    pub fn flatness(&self) -> Option<Flatness> {
        let third = self.elapsed / 3;
        let in_range = |from: Duration, to: Duration| {
            let values: Vec<u64> = self
                .samples
                .iter()
                .filter(|s| s.at >= from && s.at <= to)
                .map(|s| s.rss_kib)
                .collect();
            (values.len() >= 2).then(|| values.into_iter().max().unwrap())
        };
        let second = in_range(third, third * 2)?;
        let last = in_range(third * 2, self.elapsed + self.config.sample_every)?;
        #[allow(clippy::cast_precision_loss)]
        let ratio = last as f64 / second as f64;
        Some(Flatness {
            second_third_max: second,
            last_third_max: last,
            ratio,
            flat: ratio <= self.config.flat_ratio,
        })
    }

    /// Every check that failed, in words; empty when the run passed.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.problem_count > 0 {
            failures.push(format!(
                "{} unexpected responses or broken connections; first: {:?}",
                self.problem_count, self.problems
            ));
        }
        let unexpected: u64 = self
            .statuses
            .iter()
            .filter(|(status, _)| **status != 200)
            .map(|(_, n)| n)
            .sum();
        if unexpected > 0 {
            failures.push(format!(
                "{unexpected} responses not 200: {:?}",
                self.statuses
            ));
        }
        match self.flatness() {
            None => failures.push(format!(
                "too few RSS samples ({}) to judge flatness",
                self.samples.len()
            )),
            Some(f) if !f.flat => failures.push(format!(
                "RSS grew after warm-up: last third's peak {} KiB is {:.3}x the second third's {} KiB (allowed {:.2}x)",
                f.last_third_max, f.ratio, f.second_third_max, self.config.flat_ratio
            )),
            Some(_) => {}
        }
        let c = &self.counts;
        for (kind, n) in [
            ("reads", c.reads),
            ("writes", c.writes),
            ("logins", c.logins),
            ("logouts", c.logouts),
            ("visits", c.visits),
            ("renewals", c.renewals),
            ("checked session lifetimes", c.epochs_checked),
        ] {
            if n == 0 {
                failures.push(format!("no {kind}: the mix did not exercise them"));
            }
        }
        if self.server_created <= self.config.capacity {
            failures.push(format!(
                "only {} sessions were created for a capacity of {}: the store never had to evict",
                self.server_created, self.config.capacity
            ));
        }
        // quick_cache holds about its capacity; placeholders left by
        // renewals and logins count as entries too.
        let bound = self.config.capacity + self.config.capacity / 10;
        for sample in &self.samples {
            if sample.held > bound {
                failures.push(format!(
                    "the store held {} entries at {:?}, over {bound} for a capacity of {}",
                    sample.held, sample.at, self.config.capacity
                ));
                break;
            }
        }
        if c.logins != self.server_logins {
            failures.push(format!(
                "the clients sent {} logins, the layer counted {}",
                c.logins, self.server_logins
            ));
        }
        // A session due for renewal is renewed before the handler runs; a
        // login or logout then replaces the renewed token, so the client
        // sees no renewal there. Any other renewal reaches its client.
        let hidden = c.logins + c.logouts;
        if c.renewals > self.server_renewals || self.server_renewals > c.renewals + hidden {
            failures.push(format!(
                "the clients saw {} renewals, the layer counted {}",
                c.renewals, self.server_renewals
            ));
        }
        failures
    }

    /// The report, as printed at the end of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = c.requests() as f64 / secs;
        let _ = writeln!(
            out,
            "soak: {} connections for {:.0} s, MemoryStore capacity {}, renewal every {:?} (grace {:?}){}",
            self.config.connections,
            secs,
            self.config.capacity,
            self.config.renew_every,
            self.config.renew_grace,
            if self.config.relogins { ", signed-in clients sign in again" } else { "" }
        );
        let _ = writeln!(
            out,
            "requests: {} ({rate:.0}/s): reads {}, writes {}, logins {}, logouts {}, visits {}",
            c.requests(),
            c.reads,
            c.writes,
            c.logins,
            c.logouts,
            c.visits
        );
        let _ = writeln!(
            out,
            "renewals seen {} (layer: {}), logins (layer: {}), logouts (layer: {})",
            c.renewals, self.server_renewals, self.server_logins, self.server_logouts
        );
        let _ = writeln!(
            out,
            "sessions created {}, held at the end {}, so at least {} evicted; anonymous client sessions evicted {}",
            self.server_created,
            self.held_at_end,
            self.server_created
                .saturating_sub(self.server_logouts + self.held_at_end),
            c.anonymous_lost
        );
        let _ = writeln!(
            out,
            "counters: {} session lifetimes checked at their end, {} acknowledged increments all present",
            c.epochs_checked, c.increments_checked
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "statuses: {}; unexpected: {}",
            statuses.join(", "),
            self.problem_count
        );
        let _ = writeln!(out, "RSS (KiB) and store entries over time:");
        let peak = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(1);
        for sample in &self.samples {
            let width = usize::try_from(sample.rss_kib * 50 / peak.max(1)).unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:>6.1} s {:>8} KiB {:>6} held |{}",
                sample.at.as_secs_f64(),
                sample.rss_kib,
                sample.held,
                "#".repeat(width)
            );
        }
        if let Some(f) = self.flatness() {
            let _ = writeln!(
                out,
                "RSS peak: second third {} KiB, last third {} KiB, ratio {:.3} (flat if <= {:.2}): {}",
                f.second_third_max,
                f.last_third_max,
                f.ratio,
                self.config.flat_ratio,
                if f.flat { "flat" } else { "GROWING" }
            );
        }
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(out, "result: PASS");
        } else {
            for failure in &failures {
                let _ = writeln!(out, "FAIL: {failure}");
            }
        }
        out
    }
}

/// The resident set size of this process, from `/proc/self/status`.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// The app: a body `user|counter` (`-` for no user, `none` for no
/// counter) and `x-new: 1` when the session was not stored when the
/// request arrived.
fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/read", get(read))
        .route("/count", post(count))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .layer(layer)
}

fn state(session: &Session) -> Result<impl IntoResponse, SessionError> {
    let n: Option<u64> = session.get("n")?;
    let user = session.user_id().unwrap_or_else(|| "-".to_owned());
    let n = n.map_or_else(|| "none".to_owned(), |n| n.to_string());
    let new = if session.is_new() { "1" } else { "0" };
    Ok(([("x-new", new)], format!("{user}|{n}")))
}

async fn read(session: Session) -> Result<impl IntoResponse, SessionError> {
    state(&session)
}

async fn count(session: Session) -> Result<impl IntoResponse, SessionError> {
    let n: u64 = session.get("n")?.unwrap_or(0);
    session.insert("n", n + 1)?;
    state(&session)
}

async fn login(
    session: Session,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, SessionError> {
    session.login(user).await?;
    state(&session)
}

async fn logout(session: Session) -> Result<impl IntoResponse, SessionError> {
    let before = state(&session)?;
    session.logout().await?;
    Ok(before)
}

/// Runs the soak and reports; never panics on a failed check (see
/// [`Report::failures`]).
pub async fn run(config: Config) -> Report {
    let store = MemoryStore::new(config.capacity);
    let layer = SessionLayer::new(store.clone(), Key::generate())
        .with_renewal_interval(config.renew_every, config.renew_grace);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(layer.clone())).into_future());

    let start = Instant::now();
    let stop_at = start + config.duration;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let samples = Arc::clone(&samples);
        let store = store.clone();
        let every = config.sample_every;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let sample = Sample {
                    at: start.elapsed(),
                    rss_kib: rss_kib(),
                    held: store.len(),
                };
                samples.lock().unwrap().push(sample);
            }
        })
    };

    let clients: Vec<_> = (0..config.connections)
        .map(|i| tokio::spawn(Client::new(i, address, config.relogins).run(stop_at)))
        .collect();
    let mut counts = Counts::default();
    let mut statuses = BTreeMap::new();
    let mut problems = Vec::new();
    let mut problem_count = 0;
    for client in clients {
        let outcome = client.await.expect("a client task panicked");
        counts.add(&outcome.counts);
        for (status, n) in outcome.statuses {
            *statuses.entry(status).or_insert(0) += n;
        }
        problem_count += outcome.problem_count;
        for problem in outcome.problems {
            if problems.len() < 20 {
                problems.push(problem);
            }
        }
    }
    let elapsed = start.elapsed();
    samples.lock().unwrap().push(Sample {
        at: elapsed,
        rss_kib: rss_kib(),
        held: store.len(),
    });
    sampler.abort();
    server.abort();
    let insights = layer.insights();
    let samples = samples.lock().unwrap().clone();
    Report {
        config,
        elapsed,
        counts,
        statuses,
        problems,
        problem_count,
        samples,
        server_created: insights.sessions_created,
        server_logins: insights.logins,
        server_logouts: insights.logouts,
        server_renewals: insights.renewals,
        held_at_end: store.len(),
    }
}

/// One parsed response.
struct Reply {
    status: StatusCode,
    /// The new token, if the response set the session cookie.
    token: Option<String>,
    /// Whether the response removed the session cookie.
    cleared: bool,
    new: bool,
    user: String,
    n: Option<u64>,
}

/// What a client found.
struct Outcome {
    counts: Counts,
    statuses: BTreeMap<u16, u64>,
    problems: Vec<String>,
    problem_count: u64,
}

/// One connection's sequential client, and what it knows of its session.
struct Client {
    index: usize,
    address: SocketAddr,
    connection: Option<Connection>,
    rng: u64,
    relogins: bool,
    token: Option<String>,
    /// Signed in as `user-{index}`.
    signed_in: bool,
    /// The counter the server must hold: the acknowledged increments of
    /// this session's lifetime (`None`: none yet).
    counter: Option<u64>,
    outcome: Outcome,
}

impl Client {
    fn new(index: usize, address: SocketAddr, relogins: bool) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Self {
            index,
            address,
            connection: None,
            rng: (seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            relogins,
            token: None,
            signed_in: false,
            counter: None,
            outcome: Outcome {
                counts: Counts::default(),
                statuses: BTreeMap::new(),
                problems: Vec::new(),
                problem_count: 0,
            },
        }
    }

    fn user(&self) -> String {
        format!("user-{}", self.index)
    }

    fn random(&mut self) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn problem(&mut self, what: String) {
        self.outcome.problem_count += 1;
        if self.outcome.problems.len() < 20 {
            self.outcome
                .problems
                .push(format!("client {}: {what}", self.index));
        }
    }

    async fn run(mut self, stop_at: Instant) -> Outcome {
        let now = Instant::now();
        let halfway = now + stop_at.saturating_duration_since(now) / 2;
        while Instant::now() < stop_at {
            // Every client signs out at least once, half-way through if
            // chance did not make it do so before: a short run exercises
            // logouts whatever its request rate.
            if Instant::now() >= halfway && self.outcome.counts.logouts == 0 && self.signed_in {
                self.logout().await;
                continue;
            }
            self.step().await;
        }
        // The final check: the counter holds every acknowledged increment.
        if self.token.is_some() {
            let before = self.counter;
            if let Some(reply) = self.request(Method::GET, "/read", true).await {
                self.outcome.counts.reads += 1;
                if self.follow(&reply, "final read") && reply.n == before {
                    self.outcome.counts.epochs_checked += 1;
                    self.outcome.counts.increments_checked += before.unwrap_or(0);
                }
            }
        }
        self.outcome
    }

    async fn step(&mut self) {
        let roll = self.random() % 10_000;
        match roll {
            0..4_500 => self.read().await,
            4_500..8_000 => self.write().await,
            8_000..9_500 => self.visit().await,
            // A signed-in client signs in again only with `relogins`.
            9_500..9_990 if !self.signed_in || self.relogins => self.login().await,
            9_990..9_992 => self.logout().await,
            _ => self.read().await,
        }
    }

    async fn read(&mut self) {
        let Some(reply) = self.request(Method::GET, "/read", true).await else {
            return;
        };
        self.outcome.counts.reads += 1;
        if self.token.is_none() {
            if reply.user != "-" || reply.n.is_some() || reply.token.is_some() {
                self.problem(format!(
                    "a read without a cookie answered user {} counter {:?} token {}",
                    reply.user,
                    reply.n,
                    reply.token.is_some()
                ));
            }
            return;
        }
        self.follow(&reply, "read");
    }

    async fn write(&mut self) {
        let Some(reply) = self.request(Method::POST, "/count", true).await else {
            return;
        };
        self.outcome.counts.writes += 1;
        if self.token.is_none() {
            // A new anonymous session.
            if reply.n != Some(1) || reply.token.is_none() || reply.user != "-" {
                self.problem(format!(
                    "a first write answered counter {:?}, user {}, token {}",
                    reply.n,
                    reply.user,
                    reply.token.is_some()
                ));
                return;
            }
            self.token = reply.token;
            self.counter = Some(1);
            return;
        }
        // `follow` checks the counter before this increment; the handler
        // answers it after, so check against one more.
        let expected = Some(self.counter.unwrap_or(0) + 1);
        if self.lost(&reply) {
            return;
        }
        if reply.n != expected || reply.user != self.expected_user() {
            self.problem(format!(
                "a write answered {}|{:?}, expected {}|{expected:?}",
                reply.user,
                reply.n,
                self.expected_user()
            ));
        }
        self.counter = reply.n;
        self.renewal(&reply, false);
    }

    async fn visit(&mut self) {
        let Some(reply) = self.request(Method::POST, "/count", false).await else {
            return;
        };
        self.outcome.counts.visits += 1;
        if reply.n != Some(1) || reply.token.is_none() || !reply.new {
            self.problem(format!(
                "a visit answered counter {:?}, new {}, token {}",
                reply.n,
                reply.new,
                reply.token.is_some()
            ));
        }
    }

    async fn login(&mut self) {
        let uri = format!("/login/{}", self.user());
        let Some(reply) = self.request(Method::POST, &uri, true).await else {
            return;
        };
        self.outcome.counts.logins += 1;
        if self.token.is_some() && self.lost(&reply) {
            // The anonymous session was evicted: the login made a new one.
            self.counter = None;
        } else if reply.n != self.counter {
            self.problem(format!(
                "a login answered counter {:?}, expected {:?} (data is kept)",
                reply.n, self.counter
            ));
        }
        if reply.user != self.user() || reply.token.is_none() {
            self.problem(format!(
                "a login answered user {}, token {}",
                reply.user,
                reply.token.is_some()
            ));
            return;
        }
        self.token = reply.token;
        self.signed_in = true;
        self.counter = reply.n;
    }

    async fn logout(&mut self) {
        let Some(reply) = self.request(Method::POST, "/logout", true).await else {
            return;
        };
        self.outcome.counts.logouts += 1;
        if self.token.is_some() && !self.lost(&reply) {
            // The answer is the session as it was before the logout.
            if reply.n == self.counter && reply.user == self.expected_user() {
                self.outcome.counts.epochs_checked += 1;
                self.outcome.counts.increments_checked += self.counter.unwrap_or(0);
            } else {
                self.problem(format!(
                    "a logout answered {}|{:?}, expected {}|{:?}",
                    reply.user,
                    reply.n,
                    self.expected_user(),
                    self.counter
                ));
            }
            if !reply.cleared {
                self.problem("a logout did not remove the cookie".to_owned());
            }
        }
        self.token = None;
        self.signed_in = false;
        self.counter = None;
    }

    fn expected_user(&self) -> String {
        if self.signed_in {
            self.user()
        } else {
            "-".to_owned()
        }
    }

    /// Whether the server dropped the client's session (it answered a new
    /// one although the client presented a token); accounts for it, and
    /// starts the client over from what the response says.
    fn lost(&mut self, reply: &Reply) -> bool {
        if !reply.new {
            return false;
        }
        if self.signed_in {
            self.problem(format!(
                "a signed-in session was dropped (counter {:?})",
                self.counter
            ));
        } else {
            self.outcome.counts.anonymous_lost += 1;
        }
        self.signed_in = reply.user != "-";
        self.counter = reply.n;
        self.token = reply.token.clone();
        true
    }

    /// Checks a read-like answer on the client's session, follows a
    /// renewal; whether everything matched.
    fn follow(&mut self, reply: &Reply, what: &str) -> bool {
        if self.lost(reply) {
            if reply.token.is_some() || !reply.cleared {
                self.problem(format!(
                    "a {what} of a dropped session did not just remove the cookie"
                ));
            }
            return false;
        }
        let mut ok = true;
        if reply.user != self.expected_user() || reply.n != self.counter {
            self.problem(format!(
                "a {what} answered {}|{:?}, expected {}|{:?}",
                reply.user,
                reply.n,
                self.expected_user(),
                self.counter
            ));
            ok = false;
        }
        self.renewal(reply, false);
        ok
    }

    /// A token the client did not ask for is a renewal.
    fn renewal(&mut self, reply: &Reply, asked: bool) {
        if let Some(token) = &reply.token {
            if !asked && Some(token) != self.token.as_ref() {
                self.outcome.counts.renewals += 1;
                self.token = Some(token.clone());
            }
        }
        if reply.cleared {
            self.problem("a live session's cookie was removed".to_owned());
        }
    }

    async fn connection(&mut self) -> Option<&mut Connection> {
        if self.connection.is_none() {
            match TcpStream::connect(self.address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    self.connection = Some(Connection {
                        stream,
                        buffer: Vec::with_capacity(1024),
                    });
                }
                Err(err) => self.problem(format!("cannot connect: {err}")),
            }
        }
        self.connection.as_mut()
    }

    /// Sends a request (with the client's token when `with_token`) and
    /// parses the answer; `None` (and a problem) when the connection broke
    /// or the status was not 200.
    async fn request(&mut self, method: Method, uri: &str, with_token: bool) -> Option<Reply> {
        let cookie = match (&self.token, with_token) {
            (Some(token), true) => format!("cookie: {COOKIE_NAME}={token}\r\n"),
            _ => String::new(),
        };
        let request = format!(
            "{method} {uri} HTTP/1.1\r\nhost: 127.0.0.1\r\n{cookie}content-length: 0\r\n\r\n"
        );
        let connection = self.connection().await?;
        let response = match connection.exchange(request.as_bytes()).await {
            Ok(response) => response,
            Err(err) => {
                self.connection = None;
                self.problem(format!("{uri}: the connection broke: {err}"));
                return None;
            }
        };
        if response.close {
            self.connection = None;
        }
        *self
            .outcome
            .statuses
            .entry(response.status.as_u16())
            .or_insert(0) += 1;
        if response.status != StatusCode::OK {
            self.problem(format!("{uri} answered {}", response.status));
            return None;
        }
        let mut token = None;
        let mut cleared = false;
        for value in response.header_values("set-cookie") {
            let Some(rest) = value.strip_prefix(&format!("{COOKIE_NAME}=")) else {
                continue;
            };
            let token_value = rest.split(';').next().unwrap_or("");
            if token_value.is_empty() {
                cleared = true;
            } else {
                token = Some(token_value.to_owned());
            }
        }
        let new = response.header_values("x-new").any(|v| v == "1");
        let text = String::from_utf8_lossy(&response.body);
        let Some((user, n)) = text.split_once('|') else {
            self.problem(format!("{uri}: an unexpected body {text:?}"));
            return None;
        };
        let n = if n == "none" {
            None
        } else if let Ok(n) = n.parse() {
            Some(n)
        } else {
            self.problem(format!("{uri}: an unexpected counter {n:?}"));
            return None;
        };
        Some(Reply {
            status: response.status,
            token,
            cleared,
            new,
            user: user.to_owned(),
            n,
        })
    }
}

/// A plain HTTP/1.1 keep-alive connection, one request at a time: the
/// example needs no HTTP client library (the app's answers always carry a
/// `content-length`).
struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
}

/// One response, read to the end.
struct Response {
    status: StatusCode,
    /// Header names in lower case, and their values.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server closes the connection after this response.
    close: bool,
}

impl Response {
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Connection {
    /// Writes `request` and reads its response.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        use std::io::{Error, ErrorKind};
        let mut rest = request;
        while !rest.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| {
                Error::new(ErrorKind::InvalidData, format!("a status line in {head:?}"))
            })?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if header("transfer-encoding").is_some() {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "a body without a length",
            ));
        }
        let length: usize = match header("content-length") {
            Some(length) => length
                .parse()
                .map_err(|_| Error::new(ErrorKind::InvalidData, "a bad content-length"))?,
            None => 0,
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let end = head_end + 4 + length;
        while self.buffer.len() < end {
            self.fill().await?;
        }
        let body = self.buffer[head_end + 4..end].to_vec();
        self.buffer.drain(..end);
        Ok(Response {
            status,
            headers,
            body,
            close,
        })
    }

    /// Reads what the socket has into the buffer; an error at the end of
    /// the stream.
    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.buffer.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
    }
}
