//! Replays every file of the committed fuzz corpus (`fuzz/corpus/<target>/`)
//! through the checks its fuzz target runs, so that `cargo test` keeps
//! every input a fuzzer ever needed (and every crash it found) passing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tower_session_guard::fuzzing;

/// Runs `check` on every file of `fuzz/corpus/<target>`; fails naming
/// each file whose check panicked, or when the folder holds no file.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a corpus file reads");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files failed their check: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn token_corpus() {
    replay("token", fuzzing::token);
}

#[test]
fn cookie_header_corpus() {
    replay("cookie_header", fuzzing::cookie_header);
}

#[test]
fn transports_corpus() {
    replay("transports", fuzzing::transports);
}

#[test]
fn forwarded_corpus() {
    replay("forwarded", fuzzing::forwarded);
}

#[cfg(feature = "redis")]
#[test]
fn redis_codec_corpus() {
    replay("redis_codec", fuzzing::redis_codec);
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
#[test]
fn sql_codec_corpus() {
    replay("sql_codec", fuzzing::sql_codec);
}

#[test]
fn the_corpus_carries_tokens_the_key_signed() {
    // Without them no input reaches the code past verification.
    for (target, token) in [
        ("token", fuzzing::known_token()),
        ("token", fuzzing::known_fallback_token()),
        ("token", fuzzing::known_csrf_token()),
        ("cookie_header", fuzzing::known_token()),
        ("transports", fuzzing::known_token()),
        ("forwarded", fuzzing::known_token()),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let found = std::fs::read_dir(&dir)
            .expect("the corpus folder reads")
            .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
            .any(|data| data.windows(token.len()).any(|w| w == token.as_bytes()));
        assert!(found, "no {target} corpus file carries {token}");
    }
}
