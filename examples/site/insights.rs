//! The site's `/insights` page: what the session layer observed, the
//! session-duration histogram as a small inline SVG chart, and the
//! suggested time limits beside the configured ones.
//!
//! An admin page: a real site puts it behind its own access check.

use std::fmt::Write as _;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use tower_session_guard::insights::{Distribution, Suggestion};
use tower_session_guard::{Insights, SessionLayer};

use super::escape;

/// `GET /insights`, reading `sessions`' insights.
pub fn routes<S: Clone + Send + Sync + 'static>(sessions: SessionLayer) -> Router<S> {
    Router::new().route(
        "/insights",
        get(move || {
            let insights = sessions.insights();
            async move { Html(page(&insights)) }
        }),
    )
}

/// The whole page.
pub fn page(insights: &Insights) -> String {
    let durations = &insights.session_durations;
    let rejections: String = insights
        .rejections
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| format!("<li>{}: {}</li>", r.reason, r.count))
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Session insights</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25rem .75rem; text-align: left; vertical-align: top; }}
.reasoning {{ color: #555; font-size: .9rem; }}
</style></head>
<body>
<h1>Session insights</h1>
<h2>How long signed-in sessions last</h2>
{chart}
<p>{summary}</p>
<h2>Time limits</h2>
<table>
<tr><th></th><th>configured</th><th>suggested</th><th>why</th></tr>
{absolute}
{idle}
</table>
<h2>Idle gaps</h2>
<p>{gaps}</p>
<h2>Counts</h2>
<ul>
<li>sessions created: {created}</li><li>sign-ins: {logins}</li><li>sign-outs: {logouts}</li>
<li>expired: {idle_expiries} idle, {absolute_expiries} absolute</li>
<li>renewals: {renewals}; evictions: {evictions}; revocations: {revocations}</li>
<li>sessions per user at sign-in: {per_user}</li>
<li>live sessions in the store: {live}</li>
</ul>
<h3>Refused tokens</h3>
<ul>{rejections}</ul>
<p><a href="/">Back</a></p>
</body>
</html>"#,
        chart = chart(durations),
        summary = quantiles(durations, "signed-in sessions ended"),
        absolute = limit_row(
            "absolute timeout",
            insights.configured.absolute_timeout,
            &insights.suggested.absolute_timeout
        ),
        idle = limit_row(
            "idle timeout",
            insights.configured.idle_timeout,
            &insights.suggested.idle_timeout
        ),
        gaps = quantiles(&insights.idle_gaps, "returns to a session"),
        created = insights.sessions_created,
        logins = insights.logins,
        logouts = insights.logouts,
        idle_expiries = insights.expiries.idle,
        absolute_expiries = insights.expiries.absolute,
        renewals = insights.renewals,
        evictions = insights.evictions,
        revocations = insights.revocations,
        per_user = match insights.sessions_per_user.p99 {
            Some(p99) => format!(
                "half at most {}, 99% at most {p99}",
                insights.sessions_per_user.p50.unwrap_or(0)
            ),
            None => "no sign-ins yet".to_owned(),
        },
        live = insights
            .live_sessions
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
    )
}

/// One bar per power of two of seconds, from the shortest session seen to
/// the longest, so the horizontal axis is logarithmic like the histogram.
fn chart(durations: &Distribution) -> String {
    if durations.buckets.is_empty() {
        return "<p>No signed-in session has ended yet.</p>".to_owned();
    }
    let octave = |d: Duration| 64 - (d.as_millis() as u64 / 1000).leading_zeros();
    let first = octave(durations.buckets[0].from);
    let last = octave(durations.buckets[durations.buckets.len() - 1].from);
    let mut bars = vec![0u64; (last - first + 1) as usize];
    for bucket in &durations.buckets {
        bars[(octave(bucket.from) - first) as usize] += bucket.count;
    }
    let tallest = bars.iter().copied().max().unwrap_or(1).max(1);
    let (width, height, bar) = (480, 120, 480 / bars.len().max(1));
    let mut svg = format!(
        r#"<svg id="durations" role="img" aria-label="Histogram of signed-in session durations" width="{width}" height="{}" viewBox="0 0 {width} {}">"#,
        height + 20,
        height + 20
    );
    for (i, &count) in bars.iter().enumerate() {
        let h = (count * height as u64 / tallest) as usize;
        let from = if first + i as u32 == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1 << (first + i as u32 - 1))
        };
        let _ = write!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{h}" fill="#4a7"><title>from {}: {count}</title></rect>"##,
            i * bar,
            height - h,
            bar.saturating_sub(2).max(1),
            short(from),
        );
        if i % 4 == 0 {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" font-size="10">{}</text>"#,
                i * bar,
                height + 14,
                short(from)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

fn limit_row(name: &str, configured: Duration, suggested: &Suggestion) -> String {
    format!(
        r#"<tr><td>{name}</td><td>{}</td><td>{}</td><td class="reasoning">{}</td></tr>"#,
        short(configured),
        suggested.value.map_or_else(|| "not yet".to_owned(), short),
        escape(&suggested.reasoning)
    )
}

fn quantiles(distribution: &Distribution, what: &str) -> String {
    match (distribution.p50, distribution.p90, distribution.p99) {
        (Some(p50), Some(p90), Some(p99)) => format!(
            "{} {what}: half within {}, 90% within {}, 99% within {}.",
            distribution.count,
            short(p50),
            short(p90),
            short(p99)
        ),
        _ => format!("No {what} yet."),
    }
}

/// `3 h 20 min`, `12 min`, `40 s`.
fn short(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        _ if secs % 3600 < 60 => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}
