//! A short soak run (`examples/soak`): 16 connections for 15 seconds
//! against a `MemoryStore` at capacity, with the same checks as the long
//! run: every response `200`, every acknowledged counter increment
//! present, RSS flat after warm-up, and every kind of request exercised.
//! Its own test binary, so that the RSS it samples is its alone.

#[path = "../examples/soak/run.rs"]
mod run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_loses_no_increment_and_keeps_memory_flat() {
    let report = run::run(run::Config::smoke().with_env()).await;
    println!("{}", report.render());
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
