//! Metrics through the `metrics` facade: each counter moves exactly when
//! its event happens, and no label ever carries an id, a token, a
//! fingerprint or a user id. Each test runs the app on a current-thread
//! runtime under its own local recorder, so tests do not see each other's
//! metrics.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use common::{app, send, send_request, sign_in, who_is, FlakyStore};
use http::{Request, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tower_session_guard::clock::ManualClock;
use tower_session_guard::metrics as names;
use tower_session_guard::{GuessingDetection, Key, MemoryStore, OnLimit, SessionLayer};

const MINUTE: Duration = Duration::from_secs(60);

/// Every label value the crate documents.
const ALLOWED_LABEL_VALUES: &[&str] = &[
    "idle",
    "absolute",
    "invalid_token",
    "unknown_session",
    "ambiguous_token",
    "insecure_transport",
    "user_agent_changed",
    "too_many_networks",
    "impossible_travel",
    "cross_site_request",
    "csrf_token_mismatch",
    "credentials_changed",
    "create",
    "load",
    "update",
    "replace",
    "delete",
    "index_add",
    "index_remove",
    "index_members",
    "lock_user",
    "logout",
    "idle_timeout",
    "absolute_timeout",
    "evicted",
    "revoked",
    "rejected",
];

/// Runs `scenario` with its own recorder.
fn with_recorder<F, Fut>(scenario: F)
where
    F: FnOnce(Snapshotter) -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(scenario(snapshotter)));
}

/// What one snapshot holds (each snapshot drains the recorder).
#[derive(Default)]
struct Seen {
    /// Counters that moved, as `name{label=value}` → increase.
    counters: BTreeMap<String, u64>,
    /// Histogram values, by `name{label=value}`.
    histograms: BTreeMap<String, Vec<f64>>,
    gauges: BTreeMap<String, f64>,
    /// Every label value.
    labels: Vec<String>,
}

fn seen(snapshotter: &Snapshotter) -> Seen {
    let mut seen = Seen::default();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        seen.labels
            .extend(key.labels().map(|l| l.value().to_owned()));
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        match (kind, value) {
            (MetricKind::Counter, DebugValue::Counter(n)) if n > 0 => {
                seen.counters.insert(name, n);
            }
            (MetricKind::Histogram, DebugValue::Histogram(values)) if !values.is_empty() => {
                seen.histograms
                    .insert(name, values.into_iter().map(|v| v.into_inner()).collect());
            }
            (MetricKind::Gauge, DebugValue::Gauge(value)) => {
                seen.gauges.insert(name, value.into_inner());
            }
            _ => {}
        }
    }
    seen
}

/// The counters that moved since the last look, and by how much.
fn counters(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
    seen(snapshotter).counters
}

fn only<const N: usize>(moved: [(&str, u64); N]) -> BTreeMap<String, u64> {
    moved.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(1_000), Key::generate())
        .with_idle_timeout(30 * MINUTE)
        .with_absolute_timeout(8 * 60 * MINUTE)
        .with_clock(clock.clone())
}

#[test]
fn each_counter_moves_exactly_when_its_event_happens() {
    with_recorder(|metrics| async move {
        let clock = ManualClock::new();
        let layer = layer(&clock)
            .with_renewal_interval(10 * MINUTE, Duration::ZERO)
            .with_session_limit(1, OnLimit::EvictLeastRecent);
        let app = app(layer.clone());

        let token = send(&app, "GET", "/count", None).await.token().unwrap();
        assert_eq!(counters(&metrics), only([(names::SESSIONS_CREATED, 1)]));

        send(&app, "GET", "/read", Some(&token)).await;
        assert_eq!(counters(&metrics), only([]));

        let reply = send(&app, "POST", "/login/alice", Some(&token)).await;
        let token = reply.token().unwrap();
        assert_eq!(counters(&metrics), only([(names::LOGINS, 1)]));

        let token = send(&app, "POST", "/regenerate", Some(&token))
            .await
            .token()
            .unwrap();
        assert_eq!(counters(&metrics), only([(names::REGENERATIONS, 1)]));

        clock.advance(11 * MINUTE);
        let token = who_is(&app, &token).await.token().unwrap();
        assert_eq!(counters(&metrics), only([(names::RENEWALS, 1)]));

        // The limit of one: alice's second sign-in evicts the first.
        sign_in(&app, "alice").await;
        assert_eq!(
            counters(&metrics),
            only([
                (names::SESSIONS_CREATED, 1),
                (names::LOGINS, 1),
                (names::EVICTIONS, 1)
            ])
        );
        assert_eq!(who_is(&app, &token).await.body, "anonymous");
        let reason = format!("{}{{reason=unknown_session}}", names::REJECTIONS);
        assert_eq!(counters(&metrics), only([(reason.as_str(), 1)]));

        let bob = sign_in(&app, "bob").await;
        counters(&metrics);
        send(&app, "POST", "/logout", Some(&bob)).await;
        assert_eq!(counters(&metrics), only([(names::LOGOUTS, 1)]));

        let bob = sign_in(&app, "bob").await;
        counters(&metrics);
        clock.advance(31 * MINUTE);
        who_is(&app, &bob).await;
        let idle = format!("{}{{reason=idle}}", names::EXPIRIES);
        assert_eq!(counters(&metrics), only([(idle.as_str(), 1)]));

        sign_in(&app, "carol").await;
        counters(&metrics);
        assert_eq!(layer.sessions().revoke_user("carol").await.unwrap(), 1);
        assert_eq!(counters(&metrics), only([(names::REVOCATIONS, 1)]));

        send(&app, "GET", "/whoami", Some("not-a-token")).await;
        let invalid = format!("{}{{reason=invalid_token}}", names::REJECTIONS);
        assert_eq!(counters(&metrics), only([(invalid.as_str(), 1)]));
    });
}

#[test]
fn an_absolute_expiry_is_counted_with_its_reason() {
    with_recorder(|metrics| async move {
        let clock = ManualClock::new();
        let app = app(layer(&clock));
        let token = sign_in(&app, "alice").await;
        for _ in 0..17 {
            clock.advance(29 * MINUTE);
            who_is(&app, &token).await;
        }
        let observed = seen(&metrics);
        let absolute = format!("{}{{reason=absolute}}", names::EXPIRIES);
        assert_eq!(observed.counters.get(&absolute), Some(&1));
        let duration = format!("{}{{end=absolute_timeout}}", names::SESSION_DURATION);
        assert_eq!(observed.histograms[&duration], [8.0 * 3600.0]);
    });
}

#[test]
fn durations_idle_gaps_store_times_and_live_sessions_are_recorded() {
    with_recorder(|metrics| async move {
        let clock = ManualClock::new();
        let app = app(layer(&clock));
        let token = sign_in(&app, "alice").await;
        clock.advance(10 * MINUTE);
        who_is(&app, &token).await;
        clock.advance(5 * MINUTE);
        send(&app, "POST", "/logout", Some(&token)).await;

        let observed = seen(&metrics);
        assert_eq!(observed.histograms[names::IDLE_GAP], [600.0, 300.0]);
        let logout = format!("{}{{end=logout}}", names::SESSION_DURATION);
        assert_eq!(observed.histograms[&logout], [900.0]);
        for operation in ["load", "create", "delete", "index_add", "index_remove"] {
            let name = format!("{}{{operation={operation}}}", names::STORE_OPERATION);
            let times = observed.histograms.get(&name);
            assert!(
                times.is_some_and(|t| t.iter().all(|&s| s >= 0.0)),
                "{name} in {:?}",
                observed.histograms.keys()
            );
        }
        // Sampled as the logout's request arrived: alice's session.
        assert_eq!(observed.gauges.get(names::LIVE_SESSIONS), Some(&1.0));

        clock.advance(Duration::from_secs(2));
        send(&app, "GET", "/noop", None).await;
        assert_eq!(seen(&metrics).gauges.get(names::LIVE_SESSIONS), Some(&0.0));
        sign_in(&app, "bob").await;
        clock.advance(Duration::from_secs(2));
        send(&app, "GET", "/noop", None).await;
        assert_eq!(seen(&metrics).gauges.get(names::LIVE_SESSIONS), Some(&1.0));
    });
}

/// Counting a user's sessions for insights costs a sign-in no store
/// round trip: without a limit the index is not read at all, with one it
/// is read once, by the limit's own check.
#[test]
fn a_sign_in_reads_the_users_index_only_for_its_limit() {
    with_recorder(|metrics| async move {
        let index_reads = |metrics: &Snapshotter| {
            let name = format!("{}{{operation=index_members}}", names::STORE_OPERATION);
            seen(metrics).histograms.get(&name).map_or(0, Vec::len)
        };
        let clock = ManualClock::new();
        let unlimited = app(layer(&clock));
        sign_in(&unlimited, "alice").await;
        assert_eq!(index_reads(&metrics), 0);

        let limited = layer(&clock).with_session_limit(3, OnLimit::EvictLeastRecent);
        let with_limit = app(limited.clone());
        sign_in(&with_limit, "alice").await;
        sign_in(&with_limit, "alice").await;
        assert_eq!(index_reads(&metrics), 2);
        let per_user = limited.insights().sessions_per_user;
        assert_eq!(per_user.count, 2);
        assert_eq!(per_user.p99, Some(2));
    });
}

#[test]
fn a_reused_renewed_token_and_the_revocation_it_causes_are_counted() {
    with_recorder(|metrics| async move {
        let clock = ManualClock::new();
        let layer = layer(&clock)
            .with_renewal_interval(10 * MINUTE, Duration::from_secs(30))
            .with_revoke_on_reuse(true);
        let app = app(layer);
        let old = sign_in(&app, "alice").await;
        clock.advance(11 * MINUTE);
        who_is(&app, &old).await.token().expect("renewed");
        counters(&metrics);
        clock.advance(MINUTE);
        assert_eq!(who_is(&app, &old).await.body, "anonymous");
        let observed = seen(&metrics);
        assert_eq!(
            observed.counters,
            only([(names::TOKEN_REUSES, 1), (names::REVOCATIONS, 1)])
        );
        let revoked = format!("{}{{end=revoked}}", names::SESSION_DURATION);
        assert_eq!(observed.histograms[&revoked], [12.0 * 60.0]);
    });
}

#[test]
fn store_failures_are_counted_by_operation() {
    with_recorder(|metrics| async move {
        let store = FlakyStore::default();
        let app = app(SessionLayer::new(store.clone(), Key::generate()));
        let token = send(&app, "GET", "/count", None).await.token().unwrap();
        counters(&metrics);

        store.fail_reads.store(true, Ordering::SeqCst);
        let reply = send(&app, "GET", "/read", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let load = format!("{}{{operation=load}}", names::STORE_ERRORS);
        assert_eq!(counters(&metrics), only([(load.as_str(), 1)]));

        store.fail_reads.store(false, Ordering::SeqCst);
        store.fail_writes.store(true, Ordering::SeqCst);
        send(&app, "GET", "/count", Some(&token)).await;
        let update = format!("{}{{operation=update}}", names::STORE_ERRORS);
        assert_eq!(counters(&metrics), only([(update.as_str(), 1)]));
    });
}

#[test]
fn a_guessing_block_is_counted_once_per_block() {
    with_recorder(|metrics| async move {
        let clock = ManualClock::new();
        let layer = layer(&clock).with_guessing_detection(
            GuessingDetection::default().with_threshold(2, Duration::from_secs(60)),
        );
        let app = app(layer);
        let peer: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        for _ in 0..5 {
            let mut request = Request::builder()
                .uri("/whoami")
                .header("cookie", "__Host-id=forged")
                .body(Body::empty())
                .unwrap();
            request.extensions_mut().insert(ConnectInfo(peer));
            send_request(&app, request).await;
        }
        let moved = counters(&metrics);
        assert_eq!(moved.get(names::GUESSING_BLOCKS), Some(&1));
    });
}

/// Sign-ins, logouts, expiries, rejections, renewals and revocations with
/// user ids and tokens that would be easy to spot: no label value holds
/// any of them, nor a fingerprint, nor anything but a short word.
#[test]
fn no_label_value_carries_an_id_a_token_a_fingerprint_or_a_user_id() {
    with_recorder(|metrics| async move {
        let clock = ManualClock::new();
        let layer = layer(&clock)
            .with_renewal_interval(5 * MINUTE, Duration::from_secs(30))
            .with_session_limit(2, OnLimit::EvictLeastRecent);
        let app = app(layer.clone());
        let mut secrets = vec!["user-7f3a9c".to_owned(), "mallory-b2e1".to_owned()];
        let mut labels = Vec::new();
        for round in 0..3 {
            for user in ["user-7f3a9c", "mallory-b2e1"] {
                let token = sign_in(&app, user).await;
                secrets.push(token.clone());
                let fingerprint = layer.sessions().list(user).await.unwrap();
                secrets.extend(fingerprint.iter().map(|info| info.fingerprint.to_string()));
                secrets.extend(fingerprint.iter().map(|info| info.handle.to_string()));
                clock.advance(6 * MINUTE);
                if let Some(renewed) = who_is(&app, &token).await.token() {
                    secrets.push(renewed);
                }
                send(&app, "GET", "/whoami", Some(&format!("{token}x"))).await;
                if round == 1 {
                    send(&app, "POST", "/logout", Some(&token)).await;
                }
            }
            clock.advance(40 * MINUTE);
        }
        layer.sessions().revoke_user("mallory-b2e1").await.unwrap();
        labels.extend(seen(&metrics).labels);

        assert!(labels.len() > 5, "{labels:?}");
        for value in &labels {
            assert!(
                ALLOWED_LABEL_VALUES.contains(&value.as_str()),
                "label value {value:?} is not one of the documented words"
            );
            for secret in &secrets {
                assert!(
                    !value.contains(secret.as_str()),
                    "label value {value:?} carries {secret:?}"
                );
            }
        }
    });
}

/// The Prometheus set-up shown in the README and in the `metrics` module
/// docs is the one `examples/prometheus.rs` compiles and runs.
#[test]
fn the_documented_prometheus_set_up_is_the_example() {
    let example = include_str!("../examples/prometheus.rs");
    let readme = include_str!("../../README.md");
    let block = readme
        .split_once("Prometheus, in a few lines")
        .expect("the README shows the Prometheus set-up")
        .1
        .split_once("```rust,ignore\n")
        .expect("in a rust block")
        .1
        .split_once("\n```")
        .expect("the block ends")
        .0;
    let module_docs: String = include_str!("../../src/metrics.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
        .collect();
    for shown in [
        block,
        module_docs
            .split_once("```ignore\n")
            .unwrap()
            .1
            .split_once("\n```")
            .unwrap()
            .0,
    ] {
        for line in shown.lines().filter(|line| !line.is_empty()) {
            assert!(
                example.contains(line.trim()),
                "the documented line {line:?} is not in e2e/examples/prometheus.rs"
            );
        }
    }
}
