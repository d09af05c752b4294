//! A soak run: 64 HTTP connections for 10 minutes against an axum app
//! behind `SessionLayer` over a `MemoryStore` kept at capacity, on
//! 127.0.0.1 only. Reads, counter writes, logins, renewals, logouts and
//! one-request visits that fill the store; at the end it checks that every
//! response was `200`, that every acknowledged counter increment is
//! present, and that RSS stayed flat after warm-up, prints the RSS curve,
//! and exits non-zero when a check failed. `run.rs` says exactly what is
//! expected.
//!
//! ```text
//! nice -n 10 cargo run --release --example soak
//! SOAK_SECS=20 cargo run --release --example soak        # a short run
//! ```
//!
//! Also `SOAK_CONNECTIONS`, `SOAK_CAPACITY` (the store's `max_sessions`)
//! and `SOAK_SAMPLE_MS` (how often RSS is sampled). The test suite runs a
//! short version of it (`tests/soak.rs`). Results: RELIABILITY.md.

mod run;

#[tokio::main]
async fn main() {
    let config = run::Config::full().with_env();
    println!(
        "soak: {} connections for {:?} on 127.0.0.1 (PID {})",
        config.connections,
        config.duration,
        std::process::id()
    );
    let report = run::run(config).await;
    print!("{}", report.render());
    if !report.failures().is_empty() {
        std::process::exit(1);
    }
}
