//! Rendering results: one JSON object per line (the shape documented in
//! the [module docs](super)), or a human table with one row per point.

use std::io::{self, Write};

use super::{PointResult, SweepResult};

/// Writes `point` as one JSON line.
pub fn json_point(out: &mut dyn Write, point: &PointResult) -> io::Result<()> {
    serde_json::to_writer(&mut *out, point)?;
    writeln!(out)
}

/// Writes a sweep's points and its summary, one JSON object per line.
pub fn json_sweep(out: &mut dyn Write, sweep: &SweepResult) -> io::Result<()> {
    for p in &sweep.points {
        json_point(out, p)?;
    }
    serde_json::to_writer(&mut *out, sweep)?;
    writeln!(out)
}

/// The table's header line.
pub fn table_header(out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>7} notes",
        "offered/s",
        "achieved/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "hit %",
        "cpu",
        "srv",
        "errors",
    )
}

/// One row of the table.
pub fn table_row(out: &mut dyn Write, p: &PointResult) -> io::Result<()> {
    let cores = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
    let hit = if p.gets > 0 {
        format!("{:.1}", 100.0 * p.hits as f64 / p.gets as f64)
    } else {
        "-".to_owned()
    };
    let mut notes = Vec::new();
    notes.push(if p.meets_slo { "slo ok" } else { "slo missed" });
    if p.generator_lagged {
        notes.push("GENERATOR LAGGED");
    }
    if p.unanswered > 0 {
        notes.push("unanswered");
    }
    if p.dropped > 0 {
        notes.push("dropped");
    }
    writeln!(
        out,
        "{:>10.0} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>6} {:>6} {:>7} {}",
        p.offered_rps,
        p.achieved_rps,
        p.latency_us.p50,
        p.latency_us.p99,
        p.latency_us.p999,
        p.latency_us.max,
        hit,
        cores(p.client_cpu),
        cores(p.server_cpu),
        p.errors + p.unanswered + p.dropped,
        notes.join(", ")
    )
}

/// A sweep as a table and a closing line with the best rate.
pub fn table_sweep(out: &mut dyn Write, s: &SweepResult) -> io::Result<()> {
    table_header(out)?;
    for p in &s.points {
        table_row(out, p)?;
    }
    match (s.best_rps, s.best_achieved_rps) {
        (Some(best), Some(achieved)) => writeln!(
            out,
            "{} {}: highest rate with p99 ≤ {:.0} µs: {best:.0}/s offered, {achieved:.0}/s achieved",
            s.transport, s.workload, s.slo_us
        ),
        _ => writeln!(
            out,
            "{} {}: no rate tried met p99 ≤ {:.0} µs",
            s.transport, s.workload, s.slo_us
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Latency, LoadParams, SendLag};

    fn point(rate: f64, ok: bool) -> PointResult {
        PointResult {
            kind: "point",
            transport: "linux",
            workload: "etc",
            connections: 4,
            offered_rps: rate,
            scheduled_rps: rate,
            achieved_rps: rate,
            warmup_s: 1.0,
            duration_s: 5.0,
            requests: 10,
            gets: 8,
            sets: 2,
            hits: 6,
            misses: 2,
            errors: 0,
            unanswered: 0,
            dropped: 0,
            latency_us: Latency {
                p50: 40.0,
                p90: 50.0,
                p99: 90.0,
                p999: 120.0,
                max: 300.0,
                mean: 42.0,
            },
            generator_lagged: !ok,
            send_lag_us: SendLag::default(),
            lag_bound_us: 100.0,
            client_cpu: Some(0.98),
            server_cpu: None,
            slo_us: 500.0,
            meets_slo: ok,
        }
    }

    #[test]
    fn json_lines_have_the_documented_keys() {
        let s = SweepResult::from_points(
            "linux",
            &LoadParams::default(),
            vec![point(1000.0, true), point(2000.0, false)],
        );
        let mut out = Vec::new();
        json_sweep(&mut out, &s).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for key in [
            "kind",
            "transport",
            "workload",
            "offered_rps",
            "achieved_rps",
            "latency_us",
            "generator_lagged",
            "send_lag_us",
            "client_cpu",
            "server_cpu",
            "meets_slo",
            "unanswered",
        ] {
            assert!(lines[0].get(key).is_some(), "missing {key}");
        }
        assert_eq!(lines[0]["latency_us"]["p999"], 120.0);
        assert_eq!(lines[0]["server_cpu"], serde_json::Value::Null);
        assert_eq!(lines[2]["kind"], "sweep");
        assert_eq!(lines[2]["best_rps"], 1000.0);
        assert_eq!(lines[2]["points"], 2);
    }

    #[test]
    fn table_flags_a_lagging_generator_and_names_the_best_rate() {
        let s = SweepResult::from_points(
            "ix",
            &LoadParams::default(),
            vec![point(1000.0, true), point(2000.0, false)],
        );
        let mut out = Vec::new();
        table_sweep(&mut out, &s).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("GENERATOR LAGGED"));
        assert!(text.contains("75.0"), "hit rate column: {text}");
        assert!(text.contains("1000/s offered"), "{text}");
    }
}
