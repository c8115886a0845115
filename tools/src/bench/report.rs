//! Latency statistics and the echo benchmark report.
//!
//! Round trips are recorded in nanoseconds in an HdrHistogram (3 significant
//! digits, 1 ns to 60 s) and summarised as an [`EchoResult`]. A [`Report`] is a
//! list of rows, one per system in the order given (`ix`, `linux`, later
//! `ix_kvm`, `ix_dpdk`), each holding a result or the reason it did not run,
//! so adding a system is adding a row.
//!
//! Two renderings: a human table (RPC/s, p50 µs, p99 µs and each row's RPC/s
//! as a multiple of the `linux` row), and a JSON object with a stable shape:
//! one key per system whose value is either an [`EchoResult`] object
//! (`rps`, `p50_us`, `p99_us`, `p999_us`, `requests`, `errors`) or
//! `{"error": "<why it did not run>"}`, then `ratio_rps`: ix RPC/s ÷ linux RPC/s,
//! or `null` when either did not run.

use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::EchoParams;

/// Largest round trip the histogram can hold; longer ones are clamped to it.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// Name of the baseline row that ratios are taken against.
pub const BASELINE: &str = "linux";

/// Name of the row whose ratio to the baseline is `ratio_rps` in the JSON.
pub const DATAPLANE: &str = "ix";

/// An empty histogram for round-trip times in nanoseconds (1 ns ..
/// [`MAX_LATENCY`], 3 significant digits). Recording into it never allocates.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY.as_nanos() as u64, 3)
        .expect("constant bounds 1..60 s with 3 significant digits are valid")
}

/// Statistics of one echo benchmark run on one system.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EchoResult {
    /// Completed round trips per second of measured time.
    pub rps: f64,
    /// Median round trip, microseconds.
    pub p50_us: f64,
    /// 99th percentile round trip, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile round trip, microseconds.
    pub p999_us: f64,
    /// Round trips completed (and verified) during the measured time.
    pub requests: u64,
    /// Failed round trips: wrong or missing echo bytes, socket errors.
    pub errors: u64,
}

impl EchoResult {
    /// Summarises round trips recorded in nanoseconds over `measured` time.
    pub fn from_histogram(latencies_ns: &Histogram<u64>, measured: Duration, errors: u64) -> Self {
        let requests = latencies_ns.len();
        let secs = measured.as_secs_f64();
        let rps = if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        };
        let us = |q: f64| latencies_ns.value_at_quantile(q) as f64 / 1000.0;
        EchoResult {
            rps,
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            requests,
            errors,
        }
    }
}

/// What happened to one system in a benchmark run.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The benchmark ran and produced these statistics.
    Ran(EchoResult),
    /// The benchmark could not run; the error chain says why.
    NotRun(String),
}

/// One row of the report: a system and its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// System name as shown and used as JSON key: `ix`, `linux`, ….
    pub system: String,
    /// Its result or why there is none.
    pub outcome: Outcome,
}

impl Row {
    /// A row for a system from the result of running it; an error becomes
    /// [`Outcome::NotRun`] with the whole chain (`{:#}`).
    pub fn from_run(system: &str, run: anyhow::Result<EchoResult>) -> Self {
        let outcome = match run {
            Ok(result) => Outcome::Ran(result),
            Err(err) => Outcome::NotRun(format!("{err:#}")),
        };
        Row {
            system: system.to_owned(),
            outcome,
        }
    }
}

/// The echo benchmark report: rows in the order they are shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// A report over `rows`, shown in the order given.
    pub fn new(rows: Vec<Row>) -> Self {
        Report { rows }
    }

    /// The rows, in order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The result of `system`, if it has a row and ran.
    pub fn result(&self, system: &str) -> Option<&EchoResult> {
        self.rows
            .iter()
            .find(|row| row.system == system)
            .and_then(|row| match &row.outcome {
                Outcome::Ran(result) => Some(result),
                Outcome::NotRun(_) => None,
            })
    }

    /// `system`'s RPC/s divided by the [`BASELINE`]'s, when both ran and the
    /// baseline completed at least one request.
    pub fn ratio_to_baseline(&self, system: &str) -> Option<f64> {
        let base = self.result(BASELINE)?;
        let this = self.result(system)?;
        (base.rps > 0.0).then(|| this.rps / base.rps)
    }

    /// True when some row did not run.
    pub fn has_failures(&self) -> bool {
        self.rows
            .iter()
            .any(|row| matches!(row.outcome, Outcome::NotRun(_)))
    }

    /// Writes the human table, headed by the run's parameters.
    pub fn write_table(&self, out: &mut dyn Write, params: &EchoParams) -> io::Result<()> {
        writeln!(
            out,
            "echo over loopback: {} connection{} × {} B, {:.1} s measured after {:.1} s warm-up, ix batch ≤ {}",
            params.connections,
            if params.connections == 1 { "" } else { "s" },
            params.message_size,
            params.duration.as_secs_f64(),
            params.warmup.as_secs_f64(),
            params.batch,
        )?;
        writeln!(
            out,
            "{:<10} {:>12} {:>10} {:>10} {:>9}",
            "system", "RPC/s", "p50 µs", "p99 µs", "× linux"
        )?;
        for row in &self.rows {
            match &row.outcome {
                Outcome::Ran(r) => {
                    let ratio = match self.ratio_to_baseline(&row.system) {
                        Some(ratio) => format!("{ratio:.2}"),
                        None => "—".to_owned(),
                    };
                    write!(
                        out,
                        "{:<10} {:>12.0} {:>10.1} {:>10.1} {:>9}",
                        row.system, r.rps, r.p50_us, r.p99_us, ratio
                    )?;
                    if r.errors > 0 {
                        write!(out, "  {} errors", r.errors)?;
                    }
                    writeln!(out)?;
                }
                Outcome::NotRun(why) => writeln!(
                    out,
                    "{:<10} {:>12} {:>10} {:>10} {:>9}  not run: {why}",
                    row.system, "—", "—", "—", "—"
                )?,
            }
        }
        Ok(())
    }

    /// Writes the JSON object (see the module docs for its shape) and a newline.
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }
}

/// The JSON value of a row that did not run.
#[derive(Serialize)]
struct NotRunJson<'a> {
    error: &'a str,
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.rows.len() + 1))?;
        for row in &self.rows {
            match &row.outcome {
                Outcome::Ran(result) => map.serialize_entry(&row.system, result)?,
                Outcome::NotRun(why) => {
                    map.serialize_entry(&row.system, &NotRunJson { error: why })?
                }
            }
        }
        map.serialize_entry("ratio_rps", &self.ratio_to_baseline(DATAPLANE))?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn result(rps: f64) -> EchoResult {
        EchoResult {
            rps,
            p50_us: 50.0,
            p99_us: 99.0,
            p999_us: 99.9,
            requests: 1000,
            errors: 0,
        }
    }

    fn json_of(report: &Report) -> Value {
        let mut out = Vec::new();
        report.write_json(&mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn from_histogram_computes_rate_and_percentiles_in_microseconds() {
        let mut h = latency_histogram();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap(); // 1 µs .. 1000 µs
        }
        let r = EchoResult::from_histogram(&h, Duration::from_millis(500), 2);
        assert_eq!(r.requests, 1000);
        assert_eq!(r.errors, 2);
        assert!((r.rps - 2000.0).abs() < 1e-9);
        assert!((r.p50_us - 500.0).abs() <= 1.0, "p50 {}", r.p50_us);
        assert!((r.p99_us - 990.0).abs() <= 1.0, "p99 {}", r.p99_us);
        assert!((r.p999_us - 999.0).abs() <= 1.0, "p999 {}", r.p999_us);
    }

    #[test]
    fn from_histogram_of_nothing_is_zero_not_nan() {
        let r = EchoResult::from_histogram(&latency_histogram(), Duration::ZERO, 0);
        assert_eq!((r.rps, r.p50_us, r.requests), (0.0, 0.0, 0));
    }

    #[test]
    fn histogram_clamps_latencies_beyond_the_maximum() {
        let mut h = latency_histogram();
        h.saturating_record(u64::MAX);
        assert_eq!(h.len(), 1);
        let r = EchoResult::from_histogram(&h, Duration::from_secs(1), 0);
        assert!(r.p50_us >= 59_000_000.0 && r.p50_us <= 61_000_000.0);
    }

    #[test]
    fn json_has_one_object_per_system_with_numbers_and_the_ratio() {
        let report = Report::new(vec![
            Row::from_run("ix", Ok(result(300_000.0))),
            Row::from_run("linux", Ok(result(150_000.0))),
        ]);
        let v = json_of(&report);
        for system in ["ix", "linux"] {
            for key in ["rps", "p50_us", "p99_us", "p999_us"] {
                assert!(
                    v[system][key].is_f64(),
                    "{system}.{key} = {}",
                    v[system][key]
                );
            }
            for key in ["requests", "errors"] {
                assert!(
                    v[system][key].is_u64(),
                    "{system}.{key} = {}",
                    v[system][key]
                );
            }
        }
        assert_eq!(v["ratio_rps"].as_f64(), Some(2.0));
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn json_reports_a_system_that_did_not_run_as_error_and_ratio_as_null() {
        let report = Report::new(vec![
            Row::from_run("ix", Err(anyhow::anyhow!("link down").context("ix echo"))),
            Row::from_run("linux", Ok(result(150_000.0))),
        ]);
        let v = json_of(&report);
        assert_eq!(v["ix"]["error"], "ix echo: link down");
        assert!(v["linux"]["rps"].is_f64());
        assert!(v["ratio_rps"].is_null());
        assert!(report.has_failures());
    }

    #[test]
    fn json_round_trips_an_echo_result() {
        let r = result(123_456.5);
        let back: EchoResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn table_has_a_row_per_system_with_ratio_and_the_reason_a_row_is_missing() {
        let report = Report::new(vec![
            Row::from_run("ix", Err(anyhow::anyhow!("memif link did not come up"))),
            Row::from_run("linux", Ok(result(150_000.0))),
            Row::from_run("ix_kvm", Ok(result(75_000.0))),
        ]);
        let mut out = Vec::new();
        report
            .write_table(&mut out, &EchoParams::default())
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].contains("16 connections × 64 B"), "{}", lines[0]);
        assert!(lines[1].contains("RPC/s") && lines[1].contains("p99 µs"));
        assert!(
            lines[2].starts_with("ix") && lines[2].ends_with("not run: memif link did not come up")
        );
        let linux: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(linux, ["linux", "150000", "50.0", "99.0", "1.00"]);
        assert!(
            lines[4].starts_with("ix_kvm") && lines[4].ends_with("0.50"),
            "{}",
            lines[4]
        );
    }

    #[test]
    fn table_shows_errors_of_a_row_that_ran() {
        let mut r = result(10.0);
        r.errors = 3;
        let report = Report::new(vec![Row::from_run("linux", Ok(r))]);
        let mut out = Vec::new();
        report
            .write_table(&mut out, &EchoParams::default())
            .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("3 errors"));
    }

    #[test]
    fn ratio_needs_a_baseline_that_completed_requests() {
        let report = Report::new(vec![
            Row::from_run("ix", Ok(result(1.0))),
            Row::from_run("linux", Ok(result(0.0))),
        ]);
        assert_eq!(report.ratio_to_baseline("ix"), None);
        assert!(!report.has_failures());
    }
}
