//! Turns benchmark results into `benches/results.json` and the bar chart
//! `benches/results.svg` shown in BENCHMARKS.md, and prints the table of
//! ratios against the targets of the benchmark issue.
//!
//! ```text
//! cargo bench -p benchmarks --features bench --bench sessions                       # -> target/criterion/
//! cargo run -p benchmarks --features bench --release --example bench_memory         # -> target/bench-results/memory.json
//! cargo run -p benchmarks --features bench --release --example bench_http           # -> target/bench-results/http.json
//! cargo run -p benchmarks --features bench --release --example bench_wrk            # -> target/bench-results/wrk.json
//! cargo run -p benchmarks --features bench --release --example bench_profile -- instructions   # -> target/bench-results/instructions.json
//! cargo run -p benchmarks --features bench --release --example bench_chart          # -> benches/results.{json,svg}
//! cargo run -p benchmarks --features bench --release --example bench_chart -- --render-only   # redraw from benches/results.json
//! ```
//!
//! Time per request is criterion's median estimate for each benchmark.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

const SUBJECTS: [&str; 3] = ["bare", "tower-session-guard", "tower-sessions"];
const COLORS: [&str; 3] = ["#9e9e9e", "#2b7bba", "#e08a2c"];
const SCENARIOS: [&str; 4] = ["read", "write", "new", "login"];
const BARE: &str = "bare";
const GUARD: &str = "tower-session-guard";
const TOWER_SESSIONS: &str = "tower-sessions";

fn main() {
    let render_only = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--render-only") => true,
        Some(other) => panic!("unknown argument {other:?}; the only option is --render-only"),
    };
    let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let summary_path = benches.join("results.json");
    let summary = if render_only {
        let text = std::fs::read_to_string(&summary_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", summary_path.display()));
        serde_json::from_str(&text).expect("benches/results.json is not valid JSON")
    } else {
        let summary = collect(&target_dir());
        std::fs::write(&summary_path, format!("{summary:#}\n")).expect("cannot write results.json");
        println!("wrote {}", summary_path.display());
        summary
    };
    let svg_path = benches.join("results.svg");
    std::fs::write(&svg_path, render(&summary)).expect("cannot write results.svg");
    println!("wrote {}\n", svg_path.display());
    print!("{}", targets_table(&summary));
}

/// `<target>`, from this program's path (`<target>/<profile>/examples/<name>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find this program's path");
    exe.ancestors()
        .nth(3)
        .expect("programs run from <target>/<profile>/examples/")
        .to_path_buf()
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Gathers criterion's estimates and the examples' result files.
fn collect(target: &Path) -> Value {
    let mut times = serde_json::Map::new();
    for scenario in SCENARIOS {
        let mut row = serde_json::Map::new();
        for subject in SUBJECTS {
            let path = target
                .join("criterion")
                .join(scenario)
                .join(subject)
                .join("new/estimates.json");
            if let Some(estimates) = read_json(&path) {
                row.insert(
                    subject.into(),
                    estimates["median"]["point_estimate"].clone(),
                );
            }
        }
        times.insert(scenario.into(), row.into());
    }
    let results = target.join("bench-results");
    let memory = read_json(&results.join("memory.json")).unwrap_or_else(|| json!({}));
    let http = read_json(&results.join("http.json")).unwrap_or_else(|| json!({}));
    let wrk = read_json(&results.join("wrk.json")).unwrap_or_else(|| json!({}));
    let instructions = read_json(&results.join("instructions.json")).unwrap_or_else(|| json!({}));
    rounded(json!({
        "machine": machine(),
        "time_per_request_ns": times,
        "instructions_per_request": instructions["instructions_per_request"],
        "memory": memory,
        "http": http,
        "wrk": wrk,
    }))
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown", |(_, name)| name.trim());
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
    })
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

/// The targets: (what, measured ratio, limit, higher is better).
fn targets(summary: &Value) -> Vec<(&'static str, Option<f64>, f64, bool)> {
    let time =
        |scenario: &str, subject: &str| number(&summary["time_per_request_ns"][scenario][subject]);
    let instructions = |scenario: &str, subject: &str| {
        number(&summary["instructions_per_request"][scenario][subject])
    };
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let memory = &summary["memory"]["bytes_per_session"];
    let wrk = |subject: &str| number(&summary["wrk"]["requests_per_second"]["read"][subject]);
    vec![
        (
            "read, time per request, ÷ bare",
            ratio(time("read", GUARD), time("read", BARE)),
            2.0,
            false,
        ),
        (
            "read, instructions per request, ÷ bare",
            ratio(instructions("read", GUARD), instructions("read", BARE)),
            2.0,
            false,
        ),
        (
            "HTTP reads/s (wrk), ÷ bare",
            ratio(wrk(GUARD), wrk(BARE)),
            0.90,
            true,
        ),
        (
            "HTTP reads/s (wrk), ÷ tower-sessions",
            ratio(wrk(GUARD), wrk(TOWER_SESSIONS)),
            1.35,
            true,
        ),
        (
            "bytes per stored session, ÷ tower-sessions",
            ratio(number(&memory[GUARD]), number(&memory[TOWER_SESSIONS])),
            0.60,
            false,
        ),
        (
            "read, time per request, ÷ tower-sessions",
            ratio(time("read", GUARD), time("read", TOWER_SESSIONS)),
            0.55,
            false,
        ),
        (
            "write, time per request, ÷ tower-sessions",
            ratio(time("write", GUARD), time("write", TOWER_SESSIONS)),
            0.40,
            false,
        ),
        (
            "new session, time per request, ÷ tower-sessions",
            ratio(time("new", GUARD), time("new", TOWER_SESSIONS)),
            0.50,
            false,
        ),
    ]
}

/// A Markdown table of the targets, for BENCHMARKS.md.
fn targets_table(summary: &Value) -> String {
    let mut out =
        String::from("| tower-session-guard ÷ … | measured | target | met |\n|---|---|---|---|\n");
    for (what, measured, limit, higher_is_better) in targets(summary) {
        let (measured, met) = match measured {
            None => ("not measured".to_owned(), "—"),
            Some(m) => {
                let met = if higher_is_better {
                    m >= limit
                } else {
                    m <= limit
                };
                (format!("{m:.2}"), if met { "yes" } else { "no" })
            }
        };
        let sign = if higher_is_better { "≥" } else { "≤" };
        let _ = writeln!(out, "| {what} | {measured} | {sign} {limit:.2} | {met} |");
    }
    out
}

/// One group of bars: its label, one value per subject, and lines of
/// notes printed under it (ratios and targets).
struct Group {
    label: String,
    values: [Option<f64>; 3],
    notes: Vec<String>,
}

/// One chart panel: groups of bars, one bar per subject, on its own scale.
struct Panel {
    title: &'static str,
    groups: Vec<Group>,
    format: fn(f64) -> String,
    width: f64,
}

/// The notes under a group: this crate ÷ tower-sessions with its target,
/// and ÷ bare where there is a target for it.
fn notes(
    values: &[Option<f64>; 3],
    target: Option<&str>,
    bare_target: Option<&str>,
) -> Vec<String> {
    let mut notes = Vec::new();
    if let (Some(guard), Some(other)) = (values[1], values[2]) {
        match target {
            Some(target) => notes.push(format!("{:.2}× t-s, target {target}", guard / other)),
            None => notes.push(format!("{:.2}× tower-sessions", guard / other)),
        }
    }
    if let (Some(bare), Some(guard), Some(target)) = (values[0], values[1], bare_target) {
        notes.push(format!("{:.2}× bare, target {target}", guard / bare));
    }
    notes
}

fn render(summary: &Value) -> String {
    let time_groups = SCENARIOS
        .iter()
        .map(|scenario| {
            let row = &summary["time_per_request_ns"][*scenario];
            let values = SUBJECTS.map(|s| number(&row[s]).map(|ns| ns / 1000.0));
            let (target, bare_target) = match *scenario {
                "read" => (Some("≤ 0.55"), Some("≤ 2.0")),
                "write" => (Some("≤ 0.40"), None),
                "new" => (Some("≤ 0.50"), None),
                _ => (None, None),
            };
            Group {
                label: scenario.to_string(),
                notes: notes(&values, target, bare_target),
                values,
            }
        })
        .collect();
    let single = |label: &str, values: [Option<f64>; 3], target: &str| {
        vec![Group {
            label: label.to_owned(),
            notes: notes(&values, Some(target), None),
            values,
        }]
    };
    let memory = &summary["memory"]["bytes_per_session"];
    let wrk = &summary["wrk"]["requests_per_second"];
    let wrk_groups = ["read", "write", "new"]
        .iter()
        .map(|scenario| {
            let values = SUBJECTS.map(|s| number(&wrk[*scenario][s]));
            let mut notes = Vec::new();
            if let [Some(bare), Some(guard), Some(other)] = values {
                notes.push(format!("{:.2}× bare", guard / bare));
                notes.push(format!("{:.2}× tower-sessions", guard / other));
                if *scenario == "read" {
                    notes.push("targets ≥ 0.90, ≥ 1.35".to_owned());
                }
            }
            Group {
                label: scenario.to_string(),
                values,
                notes,
            }
        })
        .collect();
    let instruction_groups = ["read", "write", "new"]
        .iter()
        .map(|scenario| {
            let row = &summary["instructions_per_request"][*scenario];
            let values = SUBJECTS.map(|s| number(&row[s]).map(|n| n / 1000.0));
            let bare_target = (*scenario == "read").then_some("≤ 2.0");
            Group {
                label: scenario.to_string(),
                notes: notes(&values, None, bare_target),
                values,
            }
        })
        .collect();
    let panels = [
        Panel {
            title: "time per request, µs (lower is better)",
            groups: time_groups,
            format: |v| format!("{v:.2}"),
            width: 600.0,
        },
        Panel {
            title: "instructions per request, thousands",
            groups: instruction_groups,
            format: |v| format!("{v:.1}"),
            width: 460.0,
        },
        Panel {
            title: "bytes per session",
            groups: single(
                "1M sessions",
                SUBJECTS.map(|s| number(&memory[s])),
                "≤ 0.60",
            ),
            format: |v| format!("{v:.0}"),
            width: 220.0,
        },
        Panel {
            title: "HTTP requests/s with wrk (higher is better)",
            groups: wrk_groups,
            format: |v| format!("{:.0}k", v / 1000.0),
            width: 440.0,
        },
    ];

    let width: f64 = panels.iter().map(|p| p.width).sum();
    let height = 440.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="12" y="22" font-size="15" font-weight="bold">tower-session-guard vs tower-sessions vs no session layer (t-s: tower-sessions)</text>
"#
    );
    let machine = &summary["machine"];
    let _ = writeln!(
        svg,
        r##"<text x="12" y="40" fill="#555">{} cores, {}</text>"##,
        machine["cores"],
        escape(machine["cpu"].as_str().unwrap_or("unknown CPU")),
    );
    let mut x = 12.0;
    for (subject, color) in SUBJECTS.iter().zip(COLORS) {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="50" width="12" height="12" fill="{color}"/><text x="{}" y="60">{subject}</text>"#,
            x + 16.0
        );
        x += 30.0 + 7.0 * subject.len() as f64;
    }
    let mut left = 0.0;
    for panel in &panels {
        draw_panel(&mut svg, panel, left, 80.0, height - 80.0);
        left += panel.width;
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, panel: &Panel, left: f64, top: f64, height: f64) {
    let (margin_left, margin_right, margin_top, margin_bottom) = (50.0, 10.0, 28.0, 76.0);
    let plot_left = left + margin_left;
    let plot_width = panel.width - margin_left - margin_right;
    let plot_top = top + margin_top;
    let plot_height = height - margin_top - margin_bottom;
    let baseline = plot_top + plot_height;

    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
        left + 12.0,
        top + 10.0,
        escape(panel.title)
    );
    let largest = panel
        .groups
        .iter()
        .flat_map(|group| group.values.iter().flatten())
        .fold(0.0_f64, |a, &b| a.max(b));
    if largest <= 0.0 {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" fill="#555">not measured</text>"##,
            plot_left,
            plot_top + plot_height / 2.0
        );
        return;
    }
    let step = nice_step(largest / 4.0);
    let top_value = (largest * 1.12 / step).ceil() * step;
    let y = |v: f64| baseline - v / top_value * plot_height;

    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_left}" x2="{}" y1="{line_y:.1}" y2="{line_y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            plot_left + plot_width,
            plot_left - 6.0,
            y(tick) + 4.0,
            trim_zeros(&(panel.format)(tick)),
            line_y = y(tick),
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{plot_left}" x2="{}" y1="{baseline}" y2="{baseline}" stroke="#333"/>"##,
        plot_left + plot_width
    );

    let group_width = plot_width / panel.groups.len() as f64;
    for (index, group) in panel.groups.iter().enumerate() {
        let (label, values) = (&group.label, &group.values);
        let group_left = plot_left + group_width * index as f64;
        let present: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
        let bar_width = (group_width * 0.8 / 3.0).min(44.0);
        let bars_left = group_left + (group_width - bar_width * present.len() as f64) / 2.0;
        for (slot, &series) in present.iter().enumerate() {
            let value = values[series].unwrap_or_default();
            let bar_x = bars_left + bar_width * slot as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{bar_x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                y(value),
                bar_width - 3.0,
                baseline - y(value),
                COLORS[series],
                SUBJECTS[series],
                escape(label),
                (panel.format)(value),
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                bar_x + (bar_width - 3.0) / 2.0,
                y(value) - 4.0,
                (panel.format)(value),
            );
        }
        let center = group_left + group_width / 2.0;
        let _ = writeln!(
            svg,
            r#"<text x="{center:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            baseline + 16.0,
            escape(label)
        );
        for (line, note) in group.notes.iter().enumerate() {
            let _ = writeln!(
                svg,
                r##"<text x="{center:.1}" y="{:.1}" text-anchor="middle" fill="#555" font-size="11">{}</text>"##,
                baseline + 32.0 + 14.0 * line as f64,
                escape(note)
            );
        }
    }
}

/// `15.00` → `15`, `150.0k` → `150k`, `2.50` → `2.5`.
fn trim_zeros(text: &str) -> String {
    let (number, suffix) = text.split_at(text.trim_end_matches(|c: char| c.is_alphabetic()).len());
    if !number.contains('.') {
        return text.to_owned();
    }
    let number = number.trim_end_matches('0').trim_end_matches('.');
    format!("{number}{suffix}")
}

/// Rounds every number in `value` to one decimal, to keep results.json readable.
fn rounded(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => json!((f * 10.0).round() / 10.0),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(rounded).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, rounded(v))).collect())
        }
        other => other,
    }
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10_f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= rough)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
