//! Helpers for the tests against servers outside the test process (Redis,
//! PostgreSQL, MariaDB): a skip line when one is missing, names no other
//! test run uses, and polling. Included by `tests/redis_common` and
//! `tests/sql_common`.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Says a test is skipped, on the terminal even when output is captured;
/// fails instead when `variable` (`REQUIRE_REDIS`, `REQUIRE_POSTGRES`,
/// `REQUIRE_MYSQL`) is 1.
pub fn skip(test: &str, why: &str, variable: &str) {
    let required = std::env::var(variable).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: {why} ({variable}=1 makes this a failure)"
    );
    // Written to stderr directly, not with `eprintln!`, which the test
    // harness captures: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why}; {variable}=1 makes this a failure"
    );
}

/// A suffix no other test (or test run) uses: the process id, a counter
/// and the clock's nanoseconds, joined by `separator`.
pub fn unique_suffix(separator: char) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let pid = std::process::id();
    format!("{pid}{separator}{n}{separator}{nanos}")
}

/// Polls `check` until it holds or `within` passes; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
