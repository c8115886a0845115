//! Runs a validated [`Command`] and writes its output.

use std::io::Write;

use anyhow::Context;

use crate::bench::report::{Report, Row};
use crate::bench::{ix_echo, linux_echo};
use crate::cli::{BenchEcho, Command, System};

/// Runs `command`, writing its report to `out`. Returns the report so the
/// caller can tell whether every system ran; an `Err` means nothing useful
/// was written (or writing itself failed).
pub fn execute(command: &Command, out: &mut dyn Write) -> anyhow::Result<Report> {
    match command {
        Command::BenchEcho(echo) => bench_echo(echo, out),
    }
}

fn bench_echo(echo: &BenchEcho, out: &mut dyn Write) -> anyhow::Result<Report> {
    let rows = echo
        .systems
        .iter()
        .map(|&system| {
            log::info!("bench echo: running {}", system.name());
            let run = match system {
                System::Ix => ix_echo::run_ix_echo(&echo.params),
                System::Linux => linux_echo::run_linux_echo(&echo.params),
            };
            Row::from_run(system.name(), run)
        })
        .collect();
    let report = Report::new(rows);
    if echo.json {
        report.write_json(out)
    } else {
        report.write_table(out, &echo.params)
    }
    .context("writing the report")?;
    out.flush().context("writing the report")?;
    Ok(report)
}
