//! Runs a validated [`Command`] and writes its output: benchmarks, and the
//! requests to ixcpd (human text by default, the reply's JSON with
//! `--json`).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use control_plane::client::{Client, ClientError};
use control_plane::proto::{DataplaneInfo, DataplaneState, LogLine};
use control_plane::units::Bytes;
use serde::Serialize;

use crate::bench::kvs::{self, KvsReport};
use crate::bench::report::{Report, Row};
use crate::bench::{ix_echo, linux_echo};
use crate::cli::{BenchEcho, BenchKvs, Command, Ctl, CtlOp, System};

/// How long `ixctl up` waits for a started ixcpd to answer.
pub const UP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a command produced.
#[derive(Debug)]
pub enum Done {
    /// A benchmark report (some systems may not have run).
    Bench(Report),
    /// The KVS benchmark's report (some systems may not have run).
    BenchKvs(KvsReport),
    /// A request to ixcpd succeeded.
    Ctl,
}

/// Runs `command`, writing its output to `out`. An `Err` is a one-line
/// failure for `ixctl: …`.
pub fn execute(command: &Command, out: &mut dyn Write) -> anyhow::Result<Done> {
    match command {
        Command::BenchEcho(echo) => bench_echo(echo, out).map(Done::Bench),
        Command::BenchKvs(kvs) => bench_kvs(kvs, out).map(Done::BenchKvs),
        Command::Ctl(ctl) => {
            run_ctl(ctl, out)?;
            out.flush().context("writing the output")?;
            Ok(Done::Ctl)
        }
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

fn bench_kvs(kvs: &BenchKvs, out: &mut dyn Write) -> anyhow::Result<KvsReport> {
    let report = kvs::run_kvs(&kvs.params, &kvs.systems);
    let (csv, svg) = report.write_files()?;
    eprintln!("bench kvs: wrote {} and {}", csv.display(), svg.display());
    if kvs.json {
        json(out, &report.to_json())?;
    } else {
        report.write_table(out).context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    Ok(report)
}

fn json(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).context("writing JSON")?;
    writeln!(out).context("writing JSON")?;
    Ok(())
}

fn run_ctl(ctl: &Ctl, out: &mut dyn Write) -> anyhow::Result<()> {
    if let CtlOp::Up {
        config,
        socket_given,
    } = &ctl.op
    {
        return up(&ctl.socket, config.as_deref(), *socket_given, out);
    }
    let mut client = Client::connect(&ctl.socket)?;
    match &ctl.op {
        CtlOp::Up { .. } => unreachable!("handled above"),
        CtlOp::Status => {
            let status = client.status()?;
            if ctl.json {
                return json(out, &status);
            }
            let d = &status.daemon;
            writeln!(
                out,
                "ixcpd {} (pid {}) on {}, up {}, policy {}, {} clients",
                d.version,
                d.pid,
                d.socket,
                human_ms(d.uptime_ms),
                d.policy.name(),
                d.clients
            )?;
            dataplane_table(out, &status.dataplanes)?;
        }
        CtlOp::Resources => {
            let r = client.resources()?;
            if ctl.json {
                return json(out, &r);
            }
            let free = r.cores.iter().filter(|c| c.owner.is_none()).count();
            writeln!(out, "CORE  OWNER   ({free} of {} free)", r.cores.len())?;
            for c in &r.cores {
                writeln!(out, "{:<5} {}", c.cpu, c.owner.as_deref().unwrap_or("-"))?;
            }
            writeln!(
                out,
                "MEMORY  {} used of {}, {} free ({} pages{})",
                Bytes(r.memory.used),
                Bytes(r.memory.budget),
                Bytes(r.memory.budget - r.memory.used),
                Bytes(r.memory.page_size),
                if r.memory.huge { ", hugepages" } else { "" }
            )?;
            let w = r
                .ports
                .iter()
                .map(|p| p.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            writeln!(out, "{:<w$}  KIND       QUEUES  OWNER", "PORT")?;
            for p in &r.ports {
                writeln!(
                    out,
                    "{:<w$}  {:<9}  {:<6}  {}",
                    p.name,
                    p.kind,
                    p.queues,
                    p.owner.as_deref().unwrap_or("-")
                )?;
            }
        }
        CtlOp::Launch(args) => {
            let l = client.launch(args.clone())?;
            if ctl.json {
                return json(out, &l);
            }
            writeln!(
                out,
                "launched {}: pid {} on cpus {} of port {}, registered {} ms after start",
                l.dataplane.name,
                l.pid,
                cpus(&l.dataplane.cpus),
                l.dataplane.port,
                l.registered_ms
            )?;
        }
        CtlOp::Stop(name) => {
            let s = client.stop(name)?;
            if ctl.json {
                return json(out, &s);
            }
            match (s.released, s.pid) {
                (true, Some(pid)) => {
                    writeln!(out, "stopped {name}: pid {pid} killed, resources free")?
                }
                (true, None) => writeln!(out, "stopped {name}: resources free")?,
                (false, Some(pid)) => writeln!(
                    out,
                    "stopping {name}: SIGTERM sent to pid {pid}; its resources return when it exits"
                )?,
                (false, None) => writeln!(out, "stopping {name}")?,
            }
        }
        CtlOp::Stats(name) => {
            let s = client.stats(name)?;
            if ctl.json {
                return json(out, &s);
            }
            dataplane_table(out, std::slice::from_ref(&s.dataplane))?;
            let a = &s.allocation;
            writeln!(
                out,
                "pools: {} × {} ({} buffers each{})",
                a.cores(),
                Bytes(a.pool_bytes),
                a.buffers_per_core,
                if a.huge { ", hugepages" } else { "" }
            )?;
            for q in 0..a.cores() as u16 {
                writeln!(
                    out,
                    "queue {q} (cpu {}): {} flow groups",
                    a.cpus[usize::from(q)],
                    a.flow_groups_of(q).len()
                )?;
            }
        }
        CtlOp::Logs(name, lines) => {
            let l = client.logs(name, *lines)?;
            if ctl.json {
                return json(out, &l);
            }
            if l.dropped > 0 {
                writeln!(out, "({} earlier lines not shown)", l.dropped)?;
            }
            for line in &l.lines {
                writeln!(out, "{} {}", clock(line), line.text)?;
            }
        }
        CtlOp::Cores(name, n) => {
            let a = client.cores(name, *n)?;
            if ctl.json {
                return json(out, &a);
            }
            writeln!(out, "{name}: {} cores, cpus {}", a.cores(), cpus(&a.cpus))?;
        }
    }
    Ok(())
}

fn dataplane_table(out: &mut dyn Write, dps: &[DataplaneInfo]) -> anyhow::Result<()> {
    if dps.is_empty() {
        writeln!(out, "no dataplanes")?;
        return Ok(());
    }
    let w = dps.iter().map(|d| d.name.len()).max().unwrap_or(4).max(4);
    let pw = dps.iter().map(|d| d.port.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<w$}  STATE      PID      {:<pw$}  CPUS      MEMORY",
        "NAME", "PORT"
    )?;
    for d in dps {
        let state = match d.state {
            DataplaneState::Allocated => "allocated",
            DataplaneState::Running => "running",
            DataplaneState::Stopping => "stopping",
        };
        let pid = d.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        writeln!(
            out,
            "{:<w$}  {state:<9}  {pid:<7}  {:<pw$}  {:<8}  {}",
            d.name,
            d.port,
            cpus(&d.cpus),
            Bytes(d.memory_bytes)
        )?;
    }
    Ok(())
}

fn cpus(list: &[u32]) -> String {
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=119_999 => format!("{} s", ms / 1000),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// `hh:mm:ss.mmm` (UTC) of a log line.
fn clock(line: &LogLine) -> String {
    let ms = line.unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `ixctl up`: nothing to do when an ixcpd answers; else start the
/// `ixcpd` next to this program in the background and wait until it
/// answers.
fn up(
    socket: &Path,
    config: Option<&Path>,
    socket_given: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if let Ok(mut client) = Client::connect(socket) {
        let status = client.status()?;
        writeln!(
            out,
            "ixcpd already running (pid {}) on {}",
            status.daemon.pid, status.daemon.socket
        )?;
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find ixctl's own path")?;
    let ixcpd = exe.with_file_name("ixcpd");
    if !ixcpd.is_file() {
        bail!(
            "ixcpd not found at {} (build the workspace: cargo build --release)",
            ixcpd.display()
        );
    }
    let mut cmd = std::process::Command::new(&ixcpd);
    if socket_given {
        cmd.arg("--socket").arg(socket);
    }
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    // ixcpd forks into the background and its first process exits; its
    // stdout line says where it runs, its stderr why it could not.
    let done = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", ixcpd.display()))?;
    if !done.status.success() {
        let err = String::from_utf8_lossy(&done.stderr);
        let err = err.trim().lines().last().unwrap_or("no message");
        bail!(
            "ixcpd did not start: {}",
            err.strip_prefix("ixcpd: ").unwrap_or(err)
        );
    }
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        match Client::connect(socket).and_then(|mut c| c.status()) {
            Ok(status) => {
                writeln!(
                    out,
                    "ixcpd started (pid {}) on {}",
                    status.daemon.pid, status.daemon.socket
                )?;
                return Ok(());
            }
            Err(ClientError::NotRunning { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => return Err(err).context("ixcpd started but does not answer"),
        }
    }
}
