//! `SessionLayer::insights`: what the layer observed, through a real
//! router and a manual clock, and the limits it suggests.

mod common;

use std::time::Duration;

use common::{app, send, sign_in, who_is};
use tower_session_guard::clock::ManualClock;
use tower_session_guard::insights::Distribution;
use tower_session_guard::{InsightsConfig, Key, MemoryStore, OnLimit, RejectReason, SessionLayer};

const MINUTE: Duration = Duration::from_secs(60);

fn layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(10_000), Key::generate())
        .with_idle_timeout(60 * MINUTE)
        .with_absolute_timeout(30 * 24 * 60 * MINUTE)
        .with_clock(clock.clone())
}

/// The value of rank `ceil(q × n)` among `values`.
fn true_quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

/// A reported quantile is the top of the bucket holding the true one: not
/// below it, and at most an eighth above it.
fn assert_close(reported: Option<Duration>, truth: Duration) {
    let reported = reported.expect("a quantile once something was observed");
    assert!(
        reported >= truth && reported.as_secs_f64() <= truth.as_secs_f64() * 1.125,
        "reported {reported:?} for a true {truth:?}"
    );
}

fn assert_quantiles(distribution: &Distribution, values: &[Duration]) {
    assert_eq!(distribution.count, values.len() as u64);
    assert_close(distribution.p50, true_quantile(values, 0.5));
    assert_close(distribution.p90, true_quantile(values, 0.9));
    assert_close(distribution.p99, true_quantile(values, 0.99));
}

/// Up to the whole minute.
fn whole_minutes(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs().div_ceil(60) * 60)
}

#[tokio::test]
async fn sessions_of_known_lengths_give_their_quantiles_and_the_absolute_timeout() {
    let clock = ManualClock::new();
    let layer = layer(&clock).with_idle_timeout(24 * 60 * MINUTE);
    let app = app(layer.clone());
    let mut lengths = Vec::new();
    for minutes in 1..=100u32 {
        let token = sign_in(&app, &format!("user-{minutes}")).await;
        clock.advance(MINUTE * minutes);
        assert_eq!(
            send(&app, "POST", "/logout", Some(&token)).await.body,
            "bye"
        );
        lengths.push(MINUTE * minutes);
    }

    let insights = layer.insights();
    assert_eq!(insights.logins, 100);
    assert_eq!(insights.logouts, 100);
    assert_quantiles(&insights.session_durations, &lengths);
    let p99 = insights.session_durations.p99.unwrap();
    let suggested = &insights.suggested.absolute_timeout;
    assert_eq!(suggested.value, Some(whole_minutes(p99 + 10 * MINUTE)));
    assert!(suggested.value.unwrap() >= 109 * MINUTE);
    assert!(
        suggested.reasoning.contains("the 100 signed-in sessions"),
        "{}",
        suggested.reasoning
    );
    assert_eq!(insights.configured.absolute_timeout, 30 * 24 * 60 * MINUTE);
}

#[tokio::test]
async fn the_margin_and_the_minimum_are_the_layers_to_choose() {
    let clock = ManualClock::new();
    let layer = layer(&clock).with_insights(
        InsightsConfig::default()
            .with_absolute_margin(30 * MINUTE)
            .with_minimum_samples(3),
    );
    let app = app(layer.clone());
    for user in ["a", "b"] {
        let token = sign_in(&app, user).await;
        clock.advance(20 * MINUTE);
        send(&app, "POST", "/logout", Some(&token)).await;
    }
    let waiting = layer.insights().suggested.absolute_timeout;
    assert_eq!(waiting.value, None);
    assert!(
        waiting.reasoning.contains("at least 3"),
        "{}",
        waiting.reasoning
    );

    let token = sign_in(&app, "c").await;
    clock.advance(20 * MINUTE);
    send(&app, "POST", "/logout", Some(&token)).await;
    let insights = layer.insights();
    let p99 = insights.session_durations.p99.unwrap();
    assert_close(Some(p99), 20 * MINUTE);
    assert_eq!(
        insights.suggested.absolute_timeout.value,
        Some(whole_minutes(p99 + 30 * MINUTE))
    );
}

#[tokio::test]
async fn idle_gaps_are_measured_from_the_recorded_activity_and_suggest_the_idle_timeout() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone());
    let token = sign_in(&app, "alice").await;
    // Every gap is over a quarter of the hour-long idle timeout, so each
    // request records activity and the next gap starts from it.
    let gaps: Vec<Duration> = (0..100u32).map(|i| MINUTE * (16 + i % 40)).collect();
    for gap in &gaps {
        clock.advance(*gap);
        assert_eq!(who_is(&app, &token).await.body, "alice");
    }
    let insights = layer.insights();
    assert_quantiles(&insights.idle_gaps, &gaps);
    let p99 = insights.idle_gaps.p99.unwrap();
    assert_eq!(
        insights.suggested.idle_timeout.value,
        Some(whole_minutes(p99 + 5 * MINUTE))
    );
    assert_eq!(insights.expiries.idle, 0);

    // A return after the idle timeout is a gap too, and an expiry.
    clock.advance(90 * MINUTE);
    assert_eq!(who_is(&app, &token).await.body, "anonymous");
    let insights = layer.insights();
    assert_eq!(insights.idle_gaps.count, 101);
    assert_eq!(insights.expiries.idle, 1);
    // The session ended at its last activity: the sum of the gaps.
    assert_eq!(insights.session_durations.count, 1);
    assert_close(insights.session_durations.p50, gaps.iter().sum());
}

#[tokio::test]
async fn an_absolute_expiry_counts_the_session_up_to_its_deadline() {
    let clock = ManualClock::new();
    let layer = SessionLayer::new(MemoryStore::new(100), Key::generate())
        .with_idle_timeout(60 * MINUTE)
        .with_absolute_timeout(100 * MINUTE)
        .with_clock(clock.clone());
    let app = app(layer.clone());
    let token = sign_in(&app, "alice").await;
    for _ in 0..4 {
        clock.advance(30 * MINUTE);
        who_is(&app, &token).await;
    }
    let insights = layer.insights();
    assert_eq!(insights.expiries.absolute, 1);
    assert_close(insights.session_durations.p50, 100 * MINUTE);
}

#[tokio::test]
async fn sessions_per_user_are_counted_at_each_sign_in() {
    let clock = ManualClock::new();
    let layer = layer(&clock).with_session_limit(2, OnLimit::EvictLeastRecent);
    let app = app(layer.clone());
    for _ in 0..3 {
        sign_in(&app, "alice").await;
        clock.advance(MINUTE);
    }
    sign_in(&app, "bob").await;
    let per_user = layer.insights().sessions_per_user;
    let counted: Vec<(u32, u64)> = per_user
        .sign_ins
        .iter()
        .map(|c| (c.sessions, c.sign_ins))
        .collect();
    // alice: 1, then 2, then 2 again (the limit evicted one); bob: 1.
    assert_eq!(counted, [(1, 2), (2, 2)]);
    assert_eq!(per_user.count, 4);
    assert_eq!(per_user.p50, Some(1));
    assert_eq!(per_user.p99, Some(2));

    let insights = layer.insights();
    assert_eq!(insights.evictions, 1);
    // The evicted session ended at its last activity: its sign-in.
    assert_close(insights.session_durations.p50, Duration::ZERO);
}

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone());
    send(&app, "GET", "/whoami", Some("forged")).await;
    send(&app, "GET", "/whoami", Some("forged-again")).await;
    let token = sign_in(&app, "alice").await;
    send(&app, "POST", "/logout", Some(&token)).await;
    send(&app, "GET", "/whoami", Some(&token)).await;

    let rejections = layer.insights().rejections;
    let count = |reason| {
        rejections
            .iter()
            .find(|r| r.reason == reason)
            .map(|r| r.count)
    };
    assert_eq!(count(RejectReason::InvalidToken), Some(2));
    assert_eq!(count(RejectReason::UnknownSession), Some(1));
    assert_eq!(count(RejectReason::CrossSiteRequest), Some(0));
}

#[tokio::test]
async fn revocations_end_sessions_too() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone());
    sign_in(&app, "alice").await;
    sign_in(&app, "alice").await;
    clock.advance(45 * MINUTE);
    assert_eq!(layer.sessions().revoke_user("alice").await.unwrap(), 2);
    let insights = layer.insights();
    assert_eq!(insights.revocations, 2);
    assert_eq!(insights.session_durations.count, 2);
    assert_close(insights.session_durations.p99, 45 * MINUTE);
}

#[tokio::test]
async fn the_snapshot_serializes_times_as_seconds_and_names_reasons() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone());
    let token = sign_in(&app, "alice").await;
    sign_in(&app, "bob").await;
    clock.advance(MINUTE);
    send(&app, "POST", "/logout", Some(&token)).await;
    send(&app, "GET", "/whoami", Some("forged")).await;

    let json: serde_json::Value = serde_json::to_value(layer.insights()).unwrap();
    assert_eq!(json["configured"]["idle_timeout"], 3600.0);
    assert_eq!(json["live_sessions"], 1, "bob's session: {json}");
    let durations = &json["session_durations"];
    assert_eq!(durations["count"], 1);
    let p50 = durations["p50"].as_f64().unwrap();
    assert!((60.0..=67.5).contains(&p50), "{p50}");
    assert_eq!(json["rejections"][0]["reason"], "invalid_token");
    assert_eq!(json["rejections"][0]["count"], 1);
    assert!(json["suggested"]["absolute_timeout"]["value"].is_null());
    assert!(json["suggested"]["absolute_timeout"]["reasoning"].is_string());
}

/// Memory is fixed: the snapshot after thousands of sessions through the
/// router is no larger than its bound, and a million more (recorded
/// directly, in the crate's own tests) keep it there.
#[tokio::test]
async fn the_snapshot_stays_small_however_many_sessions_it_saw() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone());
    for i in 0..2_000u64 {
        let token = sign_in(&app, &format!("user-{}", i % 97)).await;
        clock.advance(Duration::from_millis(i * i * 37 % 86_400_000));
        send(&app, "POST", "/logout", Some(&token)).await;
    }
    let insights = layer.insights();
    assert_eq!(insights.session_durations.count, 2_000);
    let size = serde_json::to_vec(&insights).unwrap().len();
    assert!(size < 32 * 1024, "{size} bytes");
    assert!(insights.session_durations.buckets.len() <= 496);
}

#[tokio::test]
async fn a_duration_counts_from_the_sign_in_not_from_the_first_anonymous_visit() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone());
    // Browsing anonymously for 50 minutes, then signed in for 10.
    let visitor = send(&app, "GET", "/count", None).await.token().unwrap();
    clock.advance(50 * MINUTE);
    let signed_in = send(&app, "POST", "/login/ann", Some(&visitor))
        .await
        .token()
        .unwrap();
    clock.advance(10 * MINUTE);
    assert_eq!(
        send(&app, "POST", "/logout", Some(&signed_in)).await.body,
        "bye"
    );
    let durations = layer.insights().session_durations;
    assert_eq!(durations.count, 1);
    assert_close(durations.p50, 10 * MINUTE);
}
