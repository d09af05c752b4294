//! Insights at the edges of a session's life: a counter moves exactly once
//! per session end, whoever ends it (logouts racing revocations, reuse
//! detection, "sign out that device", re-authentications that evict), and
//! a duration is what the docs say, from the last authentication to when
//! the user left (sessions removed after they expired, multi-year
//! sessions), without the snapshot ever panicking.
//! Every test goes through a real axum `Router` and a `ManualClock`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::{send, send_request, sign_in, who_is, Gate, COOKIE};
use http::Request;
use tower_session_guard::clock::ManualClock;
use tower_session_guard::{
    ClientBinding, InsightsConfig, Key, MemoryStore, OnLimit, RejectReason, Session, SessionError,
    SessionLayer,
};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn layer(clock: &ManualClock) -> SessionLayer {
    SessionLayer::new(MemoryStore::new(10_000), Key::generate())
        .with_idle_timeout(30 * MINUTE)
        .with_absolute_timeout(8 * HOUR)
        .with_clock(clock.clone())
        .with_insights(InsightsConfig::default().with_minimum_samples(1))
}

/// The common test app plus the session-management calls the common app
/// lacks, and a logout that waits at a gate.
fn app(layer: SessionLayer, gate: Gate) -> Router {
    let extra = Router::new()
        .route("/logout_others", post(logout_others))
        .route("/logout_everywhere", post(logout_everywhere))
        .route("/revoke_other", post(revoke_other))
        .route("/reauth", post(reauth))
        .route("/held_logout", post(held_logout))
        .with_state(gate)
        .layer(layer.clone());
    common::app(layer).merge(extra)
}

async fn logout_others(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_others().await?.to_string())
}

async fn logout_everywhere(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_everywhere().await?.to_string())
}

async fn revoke_other(session: Session) -> Result<String, SessionError> {
    let mine = session.my_sessions().await?;
    let other = mine
        .iter()
        .find(|s| !s.is_current)
        .expect("another session");
    Ok(session.revoke_mine(&other.handle).await?.to_string())
}

async fn reauth(session: Session) -> Result<&'static str, SessionError> {
    session.reauthenticate().await?;
    Ok("ok")
}

async fn held_logout(
    State(gate): State<Gate>,
    session: Session,
) -> Result<&'static str, SessionError> {
    gate.hold().await;
    session.logout().await?;
    Ok("bye")
}

/// "Sign out that device" (`revoke_mine` on another session) ends a
/// signed-in session: it must be counted (as a logout or a revocation)
/// and its duration recorded, like `logout_others` does.
#[tokio::test]
async fn revoke_mine_of_another_device_is_counted_once() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone(), Gate::default());
    let _phone = sign_in(&app, "alice").await;
    clock.advance(MINUTE);
    let laptop = sign_in(&app, "alice").await;
    clock.advance(5 * MINUTE);
    let reply = send(&app, "POST", "/revoke_other", Some(&laptop)).await;
    assert_eq!(reply.body, "true");

    let insights = layer.insights();
    assert_eq!(
        insights.logouts + insights.revocations,
        1,
        "revoke_mine ended a session: logouts {}, revocations {}",
        insights.logouts,
        insights.revocations
    );
    assert_eq!(insights.session_durations.count, 1);
}

/// A renewed token reused after its grace, with `with_revoke_on_reuse`:
/// the layer ends the signed-in successor. That end must be counted
/// (revocations) with its duration, or the operator never sees it.
#[tokio::test]
async fn a_successor_revoked_for_token_reuse_is_counted() {
    let clock = ManualClock::new();
    let layer = layer(&clock)
        .with_renewal_interval(10 * MINUTE, Duration::from_secs(30))
        .with_revoke_on_reuse(true);
    let app = app(layer.clone(), Gate::default());
    let old = sign_in(&app, "alice").await;
    clock.advance(11 * MINUTE);
    let renewed = who_is(&app, &old).await.token().expect("renewed");
    assert_ne!(renewed, old);
    clock.advance(MINUTE);
    // The copied old token, past its grace: the successor is ended.
    assert_eq!(who_is(&app, &old).await.body, "anonymous");
    assert_eq!(who_is(&app, &renewed).await.body, "anonymous");

    let insights = layer.insights();
    assert_eq!(insights.renewals, 1);
    assert_eq!(insights.token_reuses, 1);
    assert_eq!(
        insights.revocations, 1,
        "the successor ended by reuse detection is not counted"
    );
    assert_eq!(insights.session_durations.count, 1);
}

/// A user signs in, works 10 minutes, leaves; comes back the next day.
/// The policy reports the absolute timeout (checked first), but the user
/// left after 10 minutes: the duration must be ~10 minutes, not the full
/// 8 h absolute timeout, and the suggestion must not claim sessions were
/// cut short by the absolute timeout.
#[tokio::test]
async fn an_abandoned_session_found_after_its_absolute_deadline_lasted_until_its_last_activity() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone(), Gate::default());
    let token = sign_in(&app, "alice").await;
    clock.advance(10 * MINUTE);
    assert_eq!(who_is(&app, &token).await.body, "alice"); // activity recorded
    clock.advance(DAY);
    assert_eq!(who_is(&app, &token).await.body, "anonymous");

    let insights = layer.insights();
    let p99 = insights.session_durations.p99.expect("one duration");
    assert!(
        p99 <= 15 * MINUTE,
        "an abandoned 10-minute session counted as lasting {p99:?}"
    );
    let reasoning = &insights.suggested.absolute_timeout.reasoning;
    assert!(
        !reasoning.contains("ended by the absolute timeout"),
        "untrue: {reasoning}"
    );
}

/// `logout_others` removes a session that idled out hours ago (the
/// per-user index keeps it until its absolute deadline). Its user left
/// at its last activity; counting it "until the logout" inflates the
/// durations that the absolute-timeout suggestion is made from.
#[tokio::test]
async fn logout_others_of_an_idled_out_session_counts_it_to_its_last_activity() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone(), Gate::default());
    let _abandoned = sign_in(&app, "alice").await;
    let active = sign_in(&app, "alice").await;
    let mut active = active;
    for _ in 0..18 {
        clock.advance(20 * MINUTE);
        let reply = who_is(&app, &active).await;
        assert_eq!(reply.body, "alice");
        if let Some(token) = reply.token() {
            active = token;
        }
    }
    // Six hours on: the first session idled out after 30 minutes.
    let reply = send(&app, "POST", "/logout_others", Some(&active)).await;
    assert_eq!(reply.body, "1");

    let insights = layer.insights();
    let p99 = insights.session_durations.p99.expect("one duration");
    assert!(
        p99 <= 30 * MINUTE,
        "a session idle since its sign-in counted as lasting {p99:?}"
    );
}

/// One session, ended once: the user's logout request is in flight while
/// an administrator revokes the user. Only one end may be counted.
#[tokio::test]
async fn a_logout_racing_a_revocation_is_counted_once() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let gate = Gate::default();
    let app = app(layer.clone(), gate.clone());
    let token = sign_in(&app, "alice").await;
    clock.advance(5 * MINUTE);

    let request = {
        let app = app.clone();
        let token = token.clone();
        tokio::spawn(async move { send(&app, "POST", "/held_logout", Some(&token)).await })
    };
    gate.reached().await;
    assert_eq!(layer.sessions().revoke_user("alice").await.unwrap(), 1);
    gate.open();
    assert_eq!(request.await.unwrap().body, "bye");

    let insights = layer.insights();
    assert_eq!(
        insights.session_durations.count, 1,
        "one session, {} durations (logouts {}, revocations {})",
        insights.session_durations.count, insights.logouts, insights.revocations
    );
    assert_eq!(insights.logouts + insights.revocations, 1);
}

/// A re-authentication is not a login (sound today: kept as a
/// regression test), but when it evicts sessions to respect a limit that
/// went down (a per-user limit function), the evictions it reports as
/// events must be counted too.
#[tokio::test]
async fn evictions_made_by_a_reauthentication_are_counted() {
    let clock = ManualClock::new();
    let limit = Arc::new(AtomicUsize::new(3));
    let for_user = Arc::clone(&limit);
    let layer = layer(&clock).with_session_limit_fn(
        move |_| for_user.load(Ordering::SeqCst),
        OnLimit::EvictLeastRecent,
    );
    let app = app(layer.clone(), Gate::default());
    sign_in(&app, "alice").await;
    clock.advance(MINUTE);
    sign_in(&app, "alice").await;
    clock.advance(MINUTE);
    let token = sign_in(&app, "alice").await;
    assert_eq!(layer.insights().logins, 3);

    limit.store(1, Ordering::SeqCst);
    clock.advance(MINUTE);
    let reply = send(&app, "POST", "/reauth", Some(&token)).await;
    assert_eq!(reply.body, "ok");
    assert_eq!(layer.sessions().list("alice").await.unwrap().len(), 1);

    let insights = layer.insights();
    assert_eq!(insights.logins, 3, "a re-authentication is not a login");
    assert_eq!(
        insights.evictions, 2,
        "the re-authentication evicted two sessions"
    );
}

/// The histogram tops out at 2^36 ms (~2.2 years) and then reports the
/// last bucket's top, below the truth, which the docs say never happens.
/// A remember-me style deployment with multi-year sessions gets a
/// suggested absolute timeout shorter than what users actually do.
#[tokio::test]
async fn a_three_year_session_is_not_reported_below_the_truth() {
    let clock = ManualClock::new();
    let layer = layer(&clock)
        .with_idle_timeout(4 * 365 * DAY)
        .with_absolute_timeout(4 * 365 * DAY);
    let app = app(layer.clone(), Gate::default());
    let token = sign_in(&app, "alice").await;
    clock.advance(3 * 365 * DAY);
    assert_eq!(
        send(&app, "POST", "/logout", Some(&token)).await.body,
        "bye"
    );

    let insights = layer.insights();
    let p99 = insights.session_durations.p99.unwrap();
    assert!(
        p99 >= 3 * 365 * DAY,
        "a 3-year session reported as at most {:.2} years",
        p99.as_secs_f64() / (365.0 * 86_400.0)
    );
}

/// A generous margin (say `Duration::MAX`, "never suggest lower") must
/// not make the admin page's `insights()` panic on `Duration` overflow.
#[tokio::test]
async fn a_huge_margin_does_not_panic_the_snapshot() {
    let clock = ManualClock::new();
    let layer = layer(&clock).with_insights(
        InsightsConfig::default()
            .with_absolute_margin(Duration::MAX)
            .with_idle_margin(Duration::MAX)
            .with_minimum_samples(1),
    );
    let app = app(layer.clone(), Gate::default());
    let token = sign_in(&app, "alice").await;
    clock.advance(MINUTE);
    who_is(&app, &token).await;
    send(&app, "POST", "/logout", Some(&token)).await;

    let insights = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| layer.insights()));
    assert!(insights.is_ok(), "insights() panicked");
}

/// Without `with_revoke_on_reuse` the reuse of a renewed token ends
/// nothing, but is still counted: it is the sign of a copied token.
#[tokio::test]
async fn a_reused_renewed_token_is_counted_even_when_nothing_is_revoked() {
    let clock = ManualClock::new();
    let layer = layer(&clock).with_renewal_interval(10 * MINUTE, Duration::from_secs(30));
    let app = app(layer.clone(), Gate::default());
    let old = sign_in(&app, "alice").await;
    clock.advance(11 * MINUTE);
    let renewed = who_is(&app, &old).await.token().expect("renewed");
    clock.advance(MINUTE);
    assert_eq!(who_is(&app, &old).await.body, "anonymous");
    assert_eq!(who_is(&app, &old).await.body, "anonymous");
    assert_eq!(who_is(&app, &renewed).await.body, "alice");

    let insights = layer.insights();
    assert_eq!(insights.token_reuses, 2);
    assert_eq!(insights.revocations, 0);
    assert_eq!(insights.session_durations.count, 0);
}

/// `logout_everywhere` removes the current session along with the others:
/// each is counted once, the current one included.
#[tokio::test]
async fn logout_everywhere_counts_every_session_once() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone(), Gate::default());
    let _phone = sign_in(&app, "alice").await;
    let laptop = sign_in(&app, "alice").await;
    clock.advance(5 * MINUTE);
    let reply = send(&app, "POST", "/logout_everywhere", Some(&laptop)).await;
    assert_eq!(reply.body, "2");

    let insights = layer.insights();
    assert_eq!(insights.logouts, 2);
    assert_eq!(insights.session_durations.count, 2);
}

/// A signed-in session that client binding rejects and destroys has ended:
/// its rejection is counted by reason, and its time (to its last accepted
/// activity) is measured.
#[tokio::test]
async fn a_signed_in_session_destroyed_by_a_rejection_is_measured() {
    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";
    const FIREFOX: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
    let request = |method: &str, uri: &str, agent: &str, token: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::USER_AGENT, agent);
        if let Some(token) = token {
            request = request.header(http::header::COOKIE, format!("{COOKIE}={token}"));
        }
        request.body(Body::empty()).unwrap()
    };
    let clock = ManualClock::new();
    let layer = layer(&clock).with_client_binding(ClientBinding::default());
    let app = app(layer.clone(), Gate::default());
    let login = send_request(&app, request("POST", "/login/alice", CHROME, None)).await;
    let token = login.token().expect("signed in");
    clock.advance(10 * MINUTE);
    let reply = send_request(&app, request("GET", "/whoami", CHROME, Some(&token))).await;
    assert_eq!(reply.body, "alice");
    clock.advance(MINUTE);
    let reply = send_request(&app, request("GET", "/whoami", FIREFOX, Some(&token))).await;
    assert_eq!(reply.body, "anonymous");

    let insights = layer.insights();
    let rejected = insights
        .rejections
        .iter()
        .find(|r| r.reason == RejectReason::UserAgentChanged)
        .map(|r| r.count);
    assert_eq!(rejected, Some(1));
    assert_eq!(
        insights.logouts + insights.revocations + insights.evictions,
        0
    );
    assert_eq!(insights.session_durations.count, 1);
    let p99 = insights.session_durations.p99.unwrap();
    assert!(
        (10 * MINUTE..=12 * MINUTE).contains(&p99),
        "measured to the last accepted activity: {p99:?}"
    );
}

/// Anonymous sessions kept alive until their absolute deadline say nothing
/// about how long people stay signed in: the suggestion must not claim
/// signed-in sessions were cut short by the absolute timeout.
#[tokio::test]
async fn only_signed_in_sessions_count_as_cut_short_by_the_absolute_timeout() {
    let clock = ManualClock::new();
    let layer = layer(&clock);
    let app = app(layer.clone(), Gate::default());
    let visitor = send(&app, "GET", "/count", None).await.token().unwrap();
    for _ in 0..24 {
        clock.advance(20 * MINUTE);
        send(&app, "GET", "/count", Some(&visitor)).await;
    }
    let user = sign_in(&app, "alice").await;
    clock.advance(10 * MINUTE);
    assert_eq!(send(&app, "POST", "/logout", Some(&user)).await.body, "bye");

    let insights = layer.insights();
    assert_eq!(insights.expiries.absolute, 1, "the visitor's session");
    assert_eq!(insights.session_durations.count, 1);
    let reasoning = &insights.suggested.absolute_timeout.reasoning;
    assert!(
        !reasoning.contains("ended by the absolute timeout"),
        "untrue: {reasoning}"
    );
}
