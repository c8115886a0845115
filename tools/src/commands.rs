//! Runs a validated [`Command`] and writes its output: benchmarks, and the
//! requests to ixcpd (human text by default, the reply's JSON with
//! `--json`).
//!
//! `ixctl stats NAME` prints one row per core of what the core last
//! published in its stats page (see `dataplane::stats`): totals since it
//! started (RX, TX, DROPS, turns), live connections, and the moving
//! averages — BATCH (frames per non-empty RX burst), QUEUE (frames found
//! per RX poll; the burst bound B when the queue held more), FULL (share
//! of polls that hit B), IDLE (share of idle loop turns), LOOP (time per
//! turn) — and AGE, the time since its last publication (a core publishes
//! every 10 ms while its loop runs, so a growing age is a stuck core).
//! With `--watch`, it reads again every interval and adds RX/s and TX/s:
//! the counters' growth between two reads over the growth of the cores'
//! own publication clock, so the rate covers exactly the packets counted.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use control_plane::client::{Client, ClientError};
use control_plane::proto::{CoreStatsView, DataplaneInfo, DataplaneState, LogLine, StatsReply};
use control_plane::units::Bytes;
use serde::Serialize;

use crate::bench::kvs::{self, KvsReport};
use crate::bench::report::{Report, Row};
use crate::bench::{ix_echo, linux_echo};
use crate::cli::{BenchEcho, BenchKvs, Command, Ctl, CtlOp, System, Watch};

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
                #[cfg(feature = "dpdk")]
                System::IxDpdk => ix_echo::run_ix_dpdk_echo(&echo.params),
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
    if let CtlOp::Stats {
        name,
        watch: Some(watch),
    } = &ctl.op
    {
        return watch_stats(&ctl.socket, name, *watch, ctl.json, out);
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
        CtlOp::Stats { name, .. } => {
            let s = client.stats(name)?;
            if ctl.json {
                return json(out, &s);
            }
            stats_text(out, &s, None)?;
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
            let noun = if a.cores() == 1 { "core" } else { "cores" };
            writeln!(out, "{name}: {} {noun}, cpus {}", a.cores(), cpus(&a.cpus))?;
        }
    }
    Ok(())
}

/// Packets per second of one core between two reads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CoreRates {
    /// Core index.
    pub core: u16,
    /// Frames received per second; `None` when the core published
    /// nothing new between the reads (or its counters went back: a new
    /// process under the same name).
    pub rx_pps: Option<f64>,
    /// Frames transmitted per second, likewise.
    pub tx_pps: Option<f64>,
}

/// The rates of every core in `now` that `before` also has.
pub fn rates(before: &StatsReply, now: &StatsReply) -> Vec<CoreRates> {
    now.cores
        .iter()
        .map(|c| {
            let prev = before.cores.iter().find(|p| p.core == c.core);
            let rate = |pick: fn(&CoreStatsView) -> u64| {
                let p = prev?;
                let dt = c.heartbeat_ns.checked_sub(p.heartbeat_ns)?;
                let dn = pick(c).checked_sub(pick(p))?;
                (dt > 0).then(|| dn as f64 * 1e9 / dt as f64)
            };
            CoreRates {
                core: c.core,
                rx_pps: rate(|v| v.rx_packets),
                tx_pps: rate(|v| v.tx_packets),
            }
        })
        .collect()
}

/// One line of `ixctl stats --watch --json`.
#[derive(Serialize)]
struct WatchLine<'a> {
    unix_ms: u64,
    stats: &'a StatsReply,
    rates: Vec<CoreRates>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ixctl stats NAME --watch`: reads every `watch.interval` and redraws
/// (clearing the terminal when stdout is one), or prints a JSON line per
/// read. When ixcpd stops answering (a restart), says so and keeps trying.
fn watch_stats(
    socket: &Path,
    name: &str,
    watch: Watch,
    json_lines: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let clear = !json_lines && std::io::stdout().is_terminal();
    let mut client = Some(Client::connect(socket)?);
    let mut before: Option<StatsReply> = None;
    let mut reads = 0u64;
    loop {
        let reply = match client.as_mut().map(|c| c.stats(name)) {
            Some(Ok(reply)) => Some(reply),
            Some(Err(ClientError::Api(err))) => return Err(err.into()),
            Some(Err(err)) => {
                writeln!(out, "ixcpd: {err}; trying again")?;
                client = None;
                None
            }
            None => match Client::connect(socket) {
                Ok(c) => {
                    client = Some(c);
                    continue;
                }
                Err(err) => {
                    writeln!(out, "ixcpd: {err}; trying again")?;
                    None
                }
            },
        };
        if let Some(now) = reply {
            let rates = before.as_ref().map(|b| rates(b, &now)).unwrap_or_default();
            if json_lines {
                serde_json::to_writer(
                    &mut *out,
                    &WatchLine {
                        unix_ms: unix_ms(),
                        stats: &now,
                        rates,
                    },
                )?;
                writeln!(out)?;
            } else {
                if clear {
                    write!(out, "\x1b[H\x1b[2J")?;
                } else if reads > 0 {
                    writeln!(out)?;
                }
                stats_text(out, &now, Some(&rates))?;
            }
            before = Some(now);
        }
        out.flush()?;
        reads += 1;
        if watch.count.is_some_and(|n| reads >= n) {
            return Ok(());
        }
        std::thread::sleep(watch.interval);
    }
}

/// The text of one `stats` reply: the dataplane, then a row per core
/// (with rates when watching).
fn stats_text(
    out: &mut dyn Write,
    s: &StatsReply,
    rates: Option<&[CoreRates]>,
) -> anyhow::Result<()> {
    dataplane_table(out, std::slice::from_ref(&s.dataplane))?;
    let a = &s.allocation;
    writeln!(
        out,
        "pools: {} × {} ({} buffers each{}); lifeline {}",
        a.cores(),
        Bytes(a.pool_bytes),
        a.buffers_per_core,
        if a.huge { ", hugepages" } else { "" },
        if s.dataplane.lifeline {
            "open"
        } else {
            "not held (not registered, or not reattached since an ixcpd restart)"
        }
    )?;
    let watching = rates.is_some();
    write!(out, "CORE  CPU  GROUPS  {:>10}  {:>10}", "RX", "TX")?;
    if watching {
        write!(out, "  {:>8}  {:>8}", "RX/s", "TX/s")?;
    }
    writeln!(
        out,
        "  {:>7}  {:>6}  {:>6}  {:>6}  {:>5}  {:>6}  {:>8}  {:>6}",
        "DROPS", "CONNS", "BATCH", "QUEUE", "FULL", "IDLE", "LOOP", "AGE"
    )?;
    for c in &s.cores {
        write!(
            out,
            "{:<4}  {:<3}  {:<6}  {:>10}  {:>10}",
            c.core,
            c.cpu,
            a.flow_groups_of(c.core).len(),
            c.rx_packets,
            c.tx_packets
        )?;
        if let Some(rates) = rates {
            let r = rates.iter().find(|r| r.core == c.core);
            write!(
                out,
                "  {:>8}  {:>8}",
                per_second(r.and_then(|r| r.rx_pps)),
                per_second(r.and_then(|r| r.tx_pps))
            )?;
        }
        writeln!(
            out,
            "  {:>7}  {:>6}  {:>6.2}  {:>6.2}  {:>5}  {:>6}  {:>8}  {:>6}",
            c.drops,
            c.connections,
            c.avg_batch_milli as f64 / 1000.0,
            c.avg_queue_milli as f64 / 1000.0,
            percent(c.avg_full_ppm),
            percent(c.avg_idle_ppm),
            nanos(c.avg_loop_ns),
            c.age_ms
                .map_or_else(|| "-".to_owned(), |ms| human_ms(ms).replace(' ', "")),
        )?;
    }
    if let Some(note) = &s.note {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

/// `12`, `12.3k`, `1.23M` per second; `-` when unknown.
fn per_second(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_owned(),
        Some(r) if r < 1e4 => format!("{r:.0}"),
        Some(r) if r < 1e6 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{:.2}M", r / 1e6),
    }
}

/// Parts per million as a percentage.
fn percent(ppm: u64) -> String {
    format!("{:.1}%", ppm as f64 / 1e4)
}

/// `850ns`, `12.5us`, `3.2ms`.
fn nanos(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}us", ns as f64 / 1e3),
        _ => format!("{:.1}ms", ns as f64 / 1e6),
    }
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
        "{:<w$}  STATE      PID      {:<pw$}  CPUS      MEMORY     POLICY",
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
            "{:<w$}  {state:<9}  {pid:<7}  {:<pw$}  {:<8}  {:<9}  {}",
            d.name,
            d.port,
            cpus(&d.cpus),
            Bytes(d.memory_bytes).to_string(),
            d.policy.name()
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

#[cfg(test)]
mod tests {
    use super::*;
    use control_plane::resources::Allocation;

    fn reply(cores: Vec<CoreStatsView>) -> StatsReply {
        StatsReply {
            dataplane: DataplaneInfo {
                name: "echo".into(),
                state: DataplaneState::Running,
                pid: Some(42),
                port: "wire0".into(),
                cpus: vec![0, 1],
                buffers_per_core: 512,
                memory_bytes: 2 << 20,
                since_unix_ms: 0,
                lifeline: true,
                policy: control_plane::config::Policy::None,
            },
            allocation: Allocation {
                name: "echo".into(),
                port: "wire0".into(),
                cpus: vec![0, 1],
                buffers_per_core: 512,
                pool_bytes: 1 << 20,
                page_size: 4096,
                huge: false,
                reta: (0..128).map(|g| (g % 2) as u16).collect(),
            },
            cores,
            note: None,
            read_ns: 0,
        }
    }

    fn core(core: u16, heartbeat_ns: u64, rx: u64, tx: u64) -> CoreStatsView {
        CoreStatsView {
            core,
            cpu: u32::from(core),
            heartbeat_ns,
            age_ms: Some(3),
            publishes: 1,
            rx_packets: rx,
            tx_packets: tx,
            avg_batch_milli: 1500,
            avg_idle_ppm: 421_000,
            avg_loop_ns: 320,
            ..CoreStatsView::default()
        }
    }

    #[test]
    fn rates_are_growth_over_the_cores_own_clock() {
        let before = reply(vec![core(0, 1_000_000_000, 100, 50), core(1, 5, 7, 7)]);
        let now = reply(vec![
            core(0, 1_500_000_000, 600, 50),
            // Nothing published since: no rate, not zero.
            core(1, 5, 7, 7),
        ]);
        let r = rates(&before, &now);
        assert_eq!(r[0].rx_pps, Some(1000.0));
        assert_eq!(r[0].tx_pps, Some(0.0));
        assert_eq!((r[1].rx_pps, r[1].tx_pps), (None, None));
        // Counters that went back (another process) have no rate.
        let reset = reply(vec![core(0, 2_000_000_000, 3, 3)]);
        assert_eq!(rates(&now, &reset)[0].rx_pps, None);
        assert!(rates(&reply(vec![]), &now)
            .iter()
            .all(|r| r.rx_pps.is_none()));
    }

    #[test]
    fn the_table_has_a_row_per_core_and_rates_when_watching() {
        let mut s = reply(vec![core(0, 1, 123_456, 120_000), core(1, 1, 0, 0)]);
        s.note = Some("core 1's record did not hold still".into());
        let mut out = Vec::new();
        stats_text(&mut out, &s, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains("lifeline open"), "{text}");
        assert!(lines[3].starts_with("CORE  CPU  GROUPS") && !lines[3].contains("RX/s"));
        let row: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "0", "0", "64", "123456", "120000", "0", "0", "1.50", "0.00", "0.0%", "42.1%",
                "320ns", "3ms"
            ]
        );
        assert_eq!(
            lines.last(),
            Some(&"note: core 1's record did not hold still")
        );
        let mut out = Vec::new();
        let rates = [CoreRates {
            core: 0,
            rx_pps: Some(1_234_567.0),
            tx_pps: Some(12_345.0),
        }];
        stats_text(&mut out, &s, Some(&rates)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("RX/s"), "{text}");
        let row: Vec<&str> = text.lines().nth(4).unwrap().split_whitespace().collect();
        assert_eq!(row[5..7], ["1.23M", "12.3k"]);
        let row: Vec<&str> = text.lines().nth(5).unwrap().split_whitespace().collect();
        assert_eq!(row[5..7], ["-", "-"], "no rate for core 1 yet");
    }
}
