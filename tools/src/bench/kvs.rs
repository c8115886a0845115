//! The KVS benchmark: the same memcached workload, open loop, against
//! `ixkvs` on our dataplane, the same KVS core on Linux sockets, and real
//! memcached, each with one server core; an SLO search per system, then
//! one point per system at a common rate.
//!
//! For each system in turn: start its server pinned to `server_core`,
//! run [`load::sweep`] from `client_core` (our load generator on libix
//! over a memif wire for `ix`, on Linux sockets for the others), stop the
//! server. The *common rate* is the lowest of the rates the systems
//! sustained within the SLO (so every system can carry it); each system's
//! server is started once more for one point at that rate, which gives
//! the p50/p99 compared in the table. A system that cannot run (memcached
//! not installed, a server that does not start) keeps its row with the
//! reason.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::bench::embedded::EmbeddedIxcpd;
use crate::bench::ix_echo::sibling_binary;
use crate::cli::resolve_program;
use crate::load::sweep::Search;
use crate::load::{
    self, LoadParams, Planner, PointResult, SweepParams, SweepResult, Target, Transport,
    WorkloadKind, WorkloadSpec,
};
use control_plane::config::PortKind;

/// memcached's port.
const KVS_PORT: u16 = 11211;
/// How long a server has to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A system of the KVS benchmark; its name is its row and JSON key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvsSystem {
    /// `ixkvs` on our dataplane, over memif.
    Ix,
    /// The same KVS core on Linux sockets (epoll), over loopback.
    Linux,
    /// Debian's memcached, over loopback.
    Memcached,
}

impl KvsSystem {
    /// Row name and JSON key.
    pub fn name(self) -> &'static str {
        match self {
            KvsSystem::Ix => "ix",
            KvsSystem::Linux => "linux",
            KvsSystem::Memcached => "memcached",
        }
    }
}

/// What one KVS benchmark run does.
#[derive(Clone, Debug, PartialEq)]
pub struct KvsParams {
    /// ETC or USR.
    pub workload: WorkloadKind,
    /// The quick sweep (short points, coarse resolution: < 2 minutes for
    /// three systems).
    pub quick: bool,
    /// Connections of the load generator.
    pub connections: usize,
    /// The p99 objective.
    pub slo: Duration,
    /// Where the CSV and the plot go.
    pub out_dir: PathBuf,
    /// Server memory limit, MiB (ixkvs and memcached alike).
    pub memory_mib: u32,
    /// CPU of the server.
    pub server_core: usize,
    /// CPU of the load generator.
    pub client_core: usize,
}

impl Default for KvsParams {
    fn default() -> Self {
        KvsParams {
            workload: WorkloadKind::Etc,
            quick: false,
            connections: 64,
            slo: Duration::from_micros(500),
            out_dir: PathBuf::from("bench-out"),
            memory_mib: 256,
            server_core: 0,
            client_core: 1,
        }
    }
}

impl KvsParams {
    fn load_params(&self) -> LoadParams {
        let mut p = LoadParams {
            workload: WorkloadSpec::new(self.workload),
            connections: self.connections,
            slo: self.slo,
            ..LoadParams::default()
        };
        if self.quick {
            SweepParams::quick_timing(&mut p);
        }
        p
    }

    fn sweep_params(&self) -> SweepParams {
        if self.quick {
            SweepParams::quick()
        } else {
            SweepParams::full()
        }
    }
}

/// What one system did.
#[derive(Debug)]
pub struct KvsRun {
    /// Every point of its SLO search.
    pub sweep: SweepResult,
    /// Its point at the common rate (when there is one and it ran).
    pub common: Option<PointResult>,
}

/// One row: a system and what it did, or why it did not run.
#[derive(Debug)]
pub struct KvsRow {
    /// The system.
    pub system: KvsSystem,
    /// Its run, or the one-line reason it did not run.
    pub outcome: Result<KvsRun, String>,
}

/// The whole benchmark's result.
#[derive(Debug)]
pub struct KvsReport {
    /// The parameters it ran with.
    pub params: KvsParams,
    /// The rate every system was measured at for p50/p99.
    pub common_rps: Option<f64>,
    /// One row per system, in the order asked.
    pub rows: Vec<KvsRow>,
}

/// Runs the benchmark on `systems`, reporting progress on stderr.
pub fn run_kvs(params: &KvsParams, systems: &[KvsSystem]) -> KvsReport {
    let mut rows: Vec<KvsRow> = systems
        .iter()
        .map(|&system| {
            eprintln!("bench kvs: {} — SLO search", system.name());
            let outcome = sweep_system(system, params)
                .map(|sweep| KvsRun {
                    sweep,
                    common: None,
                })
                .map_err(|e| format!("{e:#}"));
            if let Err(why) = &outcome {
                eprintln!("bench kvs: {}: {why}", system.name());
            }
            KvsRow { system, outcome }
        })
        .collect();
    let common_rps = rows
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok()?.sweep.best_rps)
        .min_by(f64::total_cmp);
    if let Some(rate) = common_rps {
        for row in &mut rows {
            let Ok(run) = &mut row.outcome else { continue };
            eprintln!(
                "bench kvs: {} — common rate {:.0} req/s",
                row.system.name(),
                rate
            );
            match point_at(row.system, params, rate) {
                Ok(p) => run.common = Some(p),
                Err(e) => eprintln!(
                    "bench kvs: {}: common point failed: {e:#}",
                    row.system.name()
                ),
            }
        }
    }
    KvsReport {
        params: params.clone(),
        common_rps,
        rows,
    }
}

fn sweep_system(system: KvsSystem, params: &KvsParams) -> anyhow::Result<SweepResult> {
    let server = Server::start(system, params)?;
    let load = params.load_params();
    let planner = Progress {
        inner: Search::new(params.sweep_params()),
        system: system.name(),
    };
    let points = load::run_session(&server.target, &load, Box::new(planner))
        .with_context(|| format!("load generator against {}", system.name()))?;
    let transport = server.target.transport.name();
    server.stop()?;
    Ok(SweepResult::from_points(transport, &load, points))
}

fn point_at(system: KvsSystem, params: &KvsParams, rate: f64) -> anyhow::Result<PointResult> {
    let server = Server::start(system, params)?;
    let load = LoadParams {
        rate,
        ..params.load_params()
    };
    let point = load::run_point(&server.target, &load)?;
    server.stop()?;
    Ok(point)
}

/// A sweep planner that prints each point as it completes.
struct Progress<P> {
    inner: P,
    system: &'static str,
}

impl<P: Planner> Planner for Progress<P> {
    fn next_rate(&mut self, done: &[PointResult]) -> Option<f64> {
        if let Some(p) = done.last() {
            eprintln!(
                "  {:<9} offered {:>9.0}/s achieved {:>9.0}/s p50 {:>8.1} µs p99 {:>9.1} µs {}",
                self.system,
                p.offered_rps,
                p.achieved_rps,
                p.latency_us.p50,
                p.latency_us.p99,
                if p.meets_slo {
                    "meets SLO"
                } else if p.generator_lagged {
                    "missed (generator lagged)"
                } else {
                    "missed"
                }
            );
        }
        self.inner.next_rate(done)
    }
}

/// What runs a server.
enum ServerProcess {
    /// A process of ours (the Linux KVS, memcached).
    Child(Child),
    /// A dataplane launched by an embedded ixcpd.
    Dataplane(EmbeddedIxcpd),
}

/// A running server and how the load generator reaches it.
struct Server {
    process: ServerProcess,
    target: Target,
}

impl Server {
    fn start(system: KvsSystem, params: &KvsParams) -> anyhow::Result<Server> {
        let memory = params.memory_mib.to_string();
        let cpu = params.server_core.to_string();
        match system {
            KvsSystem::Ix => {
                // ixkvs runs as a dataplane of an ixcpd of our own, on the
                // built-in wire's `wire0` end; the load generator is the
                // machine at the other end of the wire.
                let mut ixcpd = EmbeddedIxcpd::start()?;
                let bin = sibling_binary("ixkvs")?;
                let args: Vec<String> = ["--stack", "ix", "--port", &KVS_PORT.to_string()]
                    .iter()
                    .map(|a| a.to_string())
                    .chain(["-m".to_string(), memory])
                    .collect();
                let reply = ixcpd.launch("kvs", "wire0", &bin, &args)?;
                let server_ip = ixcpd.port("wire0")?.ip;
                let peer = ixcpd.port("wire0-peer")?;
                let PortKind::Memif { socket: memif, .. } = &peer.kind else {
                    bail!("the built-in wire0-peer is not a memif port");
                };
                let (memif, client_ip, queues) = (memif.clone(), peer.ip, peer.kind.queues());
                // The generator takes a CPU the dataplane did not get.
                let cpu = (0..2usize)
                    .find(|c| !reply.dataplane.cpus.contains(&(*c as u32)))
                    .unwrap_or(params.client_core);
                Ok(Server {
                    process: ServerProcess::Dataplane(ixcpd),
                    target: Target {
                        transport: Transport::Ix {
                            memif,
                            ip: client_ip,
                            queues,
                        },
                        server: SocketAddrV4::new(server_ip, KVS_PORT),
                        server_pid: Some(reply.pid),
                        cpu: Some(cpu),
                    },
                })
            }
            KvsSystem::Linux => {
                let bin = sibling_binary("ixkvs")?;
                let mut cmd = Command::new(&bin);
                cmd.args(["--stack", "linux", "--listen", "127.0.0.1:0"])
                    .args(["--threads", "1", "--cpu", &cpu, "-m", &memory]);
                let mut child = spawn(&mut cmd, &bin)?;
                let line = wait_for_line(&mut child, "ixkvs: listening on ")?;
                let addr = line
                    .trim_start_matches("ixkvs: listening on ")
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .with_context(|| format!("ixkvs printed no address: {line:?}"))?;
                let SocketAddr::V4(server) = addr else {
                    bail!("ixkvs listens on {addr}, not an IPv4 address");
                };
                Ok(Server::over_loopback(child, server, params))
            }
            KvsSystem::Memcached => {
                let cwd = std::env::current_dir().context("reading the current directory")?;
                let bin = resolve_program("memcached", &cwd).context(
                    "memcached not installed (scripts/setup.sh installs Debian's memcached)",
                )?;
                let port = free_port()?;
                let mut cmd = Command::new(&bin);
                cmd.args(["-U", "0", "-l", "127.0.0.1", "-t", "1", "-c", "4096"])
                    .args(["-p", &port.to_string(), "-m", &memory]);
                // memcached refuses to run as root unless told which user.
                if control_plane::sys::euid() == 0 {
                    cmd.args(["-u", "root"]);
                }
                let child = spawn(&mut cmd, &bin)?;
                let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                let mut child = child;
                wait_for_connect(&mut child, server)?;
                crate::sys::pin_process(child.id(), params.server_core)
                    .context("pinning memcached")?;
                Ok(Server::over_loopback(child, server, params))
            }
        }
    }

    fn over_loopback(child: Child, server: SocketAddrV4, params: &KvsParams) -> Server {
        let pid = child.id();
        Server {
            process: ServerProcess::Child(child),
            target: Target {
                transport: Transport::Linux,
                server,
                server_pid: Some(pid),
                cpu: Some(params.client_core),
            },
        }
    }

    /// Stops the server; an exit before being asked is an error.
    fn stop(mut self) -> anyhow::Result<()> {
        match &mut self.process {
            ServerProcess::Child(child) => {
                if let Some(status) = child.try_wait().context("waiting for the server")? {
                    bail!("the server exited during the run ({status})");
                }
            }
            ServerProcess::Dataplane(ixcpd) => ixcpd.check_running("kvs")?,
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The embedded ixcpd stops its dataplanes when dropped.
        if let ServerProcess::Child(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(cmd: &mut Command, bin: &Path) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits until the child prints a line starting with `prefix` on stdout,
/// then keeps draining its stdout in the background. Returns the line.
fn wait_for_line(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("the server's stdout")?;
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with(&prefix) {
                sent = true;
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => Ok(line),
        Err(_) => match child.try_wait() {
            Ok(Some(status)) => bail!("the server exited while starting ({status})"),
            _ => bail!(
                "the server did not start within {} s",
                START_TIMEOUT.as_secs()
            ),
        },
    }
}

/// Waits until `addr` accepts a connection (or the child exits).
fn wait_for_connect(child: &mut Child, addr: SocketAddrV4) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited while starting ({status})");
        }
        if Instant::now() > deadline {
            bail!(
                "{addr} did not accept connections within {} s",
                START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// One system's entry in the JSON report.
#[derive(Debug, Serialize)]
struct SystemJson {
    /// Highest offered rate meeting the SLO (null if none).
    slo_rps: Option<f64>,
    /// p50 at the common rate, µs.
    p50_us: Option<f64>,
    /// p99 at the common rate, µs.
    p99_us: Option<f64>,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl KvsReport {
    fn row(&self, system: KvsSystem) -> Option<&KvsRun> {
        self.rows
            .iter()
            .find(|r| r.system == system)
            .and_then(|r| r.outcome.as_ref().ok())
    }

    /// `ix`'s SLO rate divided by `baseline`'s, when both have one.
    pub fn ratio(&self, baseline: KvsSystem) -> Option<f64> {
        let ix = self.row(KvsSystem::Ix)?.sweep.best_rps?;
        let base = self.row(baseline)?.sweep.best_rps?;
        (base > 0.0).then(|| ix / base)
    }

    /// True when some system did not run.
    pub fn has_failures(&self) -> bool {
        self.rows.iter().any(|r| r.outcome.is_err())
    }

    /// The systems that did not run, with the reason.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.rows.iter().filter_map(|r| match &r.outcome {
            Err(why) => Some((r.system.name(), why.as_str())),
            Ok(_) => None,
        })
    }

    /// The JSON object: one entry per system (`slo_rps`, `p50_us`,
    /// `p99_us`), `ratio_linux`, `ratio_memcached`, `common_rps`,
    /// `workload`, `slo_us`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for r in &self.rows {
            let entry = match &r.outcome {
                Ok(run) => SystemJson {
                    slo_rps: run.sweep.best_rps,
                    p50_us: run.common.as_ref().map(|p| p.latency_us.p50),
                    p99_us: run.common.as_ref().map(|p| p.latency_us.p99),
                    error: None,
                },
                Err(why) => SystemJson {
                    slo_rps: None,
                    p50_us: None,
                    p99_us: None,
                    error: Some(why.clone()),
                },
            };
            obj.insert(
                r.system.name().into(),
                serde_json::to_value(entry).expect("plain data serializes"),
            );
        }
        obj.insert("ratio_linux".into(), self.ratio(KvsSystem::Linux).into());
        obj.insert(
            "ratio_memcached".into(),
            self.ratio(KvsSystem::Memcached).into(),
        );
        obj.insert("common_rps".into(), self.common_rps.into());
        obj.insert("workload".into(), self.params.workload.name().into());
        obj.insert(
            "slo_us".into(),
            (self.params.slo.as_secs_f64() * 1e6).into(),
        );
        serde_json::Value::Object(obj)
    }

    /// The human table.
    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let p = &self.params;
        writeln!(
            out,
            "kvs {}: {} connections, open loop, SLO p99 ≤ {:.0} µs, one server core{}",
            p.workload.name(),
            p.connections,
            p.slo.as_secs_f64() * 1e6,
            if p.quick { " (quick)" } else { "" }
        )?;
        match self.common_rps {
            Some(r) => writeln!(out, "p50/p99 at the common rate of {r:.0} req/s")?,
            None => writeln!(out, "no common rate: no system met the SLO")?,
        }
        writeln!(
            out,
            "{:<10} {:>12} {:>10} {:>10} {:>9} {:>12}",
            "system", "SLO req/s", "p50 µs", "p99 µs", "× linux", "× memcached"
        )?;
        let fmt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "—".to_string(), |v| format!("{v:.prec$}"))
        };
        for r in &self.rows {
            match &r.outcome {
                Ok(run) => {
                    let (ratio_l, ratio_m) = if r.system == KvsSystem::Ix {
                        (
                            fmt(self.ratio(KvsSystem::Linux), 2),
                            fmt(self.ratio(KvsSystem::Memcached), 2),
                        )
                    } else {
                        ("".into(), "".into())
                    };
                    writeln!(
                        out,
                        "{:<10} {:>12} {:>10} {:>10} {:>9} {:>12}",
                        r.system.name(),
                        fmt(run.sweep.best_rps, 0),
                        fmt(run.common.as_ref().map(|p| p.latency_us.p50), 1),
                        fmt(run.common.as_ref().map(|p| p.latency_us.p99), 1),
                        ratio_l,
                        ratio_m
                    )?;
                }
                Err(why) => writeln!(out, "{:<10} did not run: {why}", r.system.name())?,
            }
        }
        Ok(())
    }

    /// Writes every measured point as CSV to `path`.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        writeln!(
            f,
            "system,phase,offered_rps,achieved_rps,p50_us,p99_us,p999_us,client_cpu,server_cpu,generator_lagged,meets_slo"
        )?;
        for r in &self.rows {
            let Ok(run) = &r.outcome else { continue };
            let phases = run
                .sweep
                .points
                .iter()
                .map(|p| ("sweep", p))
                .chain(run.common.iter().map(|p| ("common", p)));
            for (phase, p) in phases {
                writeln!(
                    f,
                    "{},{phase},{:.0},{:.0},{:.1},{:.1},{:.1},{},{},{},{}",
                    r.system.name(),
                    p.offered_rps,
                    p.achieved_rps,
                    p.latency_us.p50,
                    p.latency_us.p99,
                    p.latency_us.p999,
                    p.client_cpu.map_or(String::new(), |c| format!("{c:.2}")),
                    p.server_cpu.map_or(String::new(), |c| format!("{c:.2}")),
                    p.generator_lagged,
                    p.meets_slo
                )?;
            }
        }
        f.flush()
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Draws p99 latency against achieved throughput for every system, with
    /// the SLO as a horizontal line, as an SVG at `path`.
    pub fn write_plot(&self, path: &Path) -> anyhow::Result<()> {
        use plotters::prelude::*;

        let slo_us = self.params.slo.as_secs_f64() * 1e6;
        // Per system: (points the generator kept up with, points where it
        // lagged); the line joins the former, the latter are hollow marks.
        type Points = Vec<(f64, f64)>;
        let series: Vec<(&'static str, Points, Points)> = self
            .rows
            .iter()
            .filter_map(|r| {
                let run = r.outcome.as_ref().ok()?;
                let (mut kept, mut lagged): (Points, Points) = (Vec::new(), Vec::new());
                for p in run.sweep.points.iter().filter(|p| p.achieved_rps > 0.0) {
                    let xy = (p.achieved_rps / 1e3, p.latency_us.p99.max(1.0));
                    if p.generator_lagged {
                        lagged.push(xy);
                    } else {
                        kept.push(xy);
                    }
                }
                kept.sort_by(|a, b| a.0.total_cmp(&b.0));
                Some((r.system.name(), kept, lagged))
            })
            .collect();
        let x_max = series
            .iter()
            .flat_map(|(_, k, l)| k.iter().chain(l).map(|q| q.0))
            .fold(1.0, f64::max)
            * 1.1;
        let y_max = series
            .iter()
            .flat_map(|(_, k, l)| k.iter().chain(l).map(|q| q.1))
            .fold(slo_us * 4.0, f64::max)
            .min(1e6);
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "KVS {} — p99 latency vs throughput, one server core (hollow: generator lagged)",
                    self.params.workload.name()
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, (1.0..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("achieved throughput (thousand requests/s)")
            .y_desc("p99 latency (µs)")
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, slo_us), (x_max, slo_us)],
                BLACK.mix(0.5),
            ))?
            .label(format!("SLO {slo_us:.0} µs"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.5)));
        let colors = [RED, BLUE, GREEN, MAGENTA];
        for (i, (name, kept, lagged)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(kept.iter().copied(), color))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            chart.draw_series(
                kept.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
            chart.draw_series(
                lagged
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.stroke_width(1))),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Writes the CSV and the plot into the output directory; returns
    /// their paths.
    pub fn write_files(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = &self.params.out_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let base = format!("kvs-{}", self.params.workload.name());
        let csv = dir.join(format!("{base}.csv"));
        let svg = dir.join(format!("{base}.svg"));
        self.write_csv(&csv)?;
        self.write_plot(&svg)?;
        Ok((csv, svg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Latency, SendLag};

    fn point(system: &'static str, offered: f64, p99: f64, lagged: bool) -> PointResult {
        PointResult {
            kind: "point",
            transport: system,
            workload: "etc",
            connections: 64,
            offered_rps: offered,
            scheduled_rps: offered,
            achieved_rps: offered,
            warmup_s: 0.2,
            duration_s: 1.0,
            requests: offered as u64,
            gets: 0,
            sets: 0,
            hits: 0,
            misses: 0,
            errors: 0,
            unanswered: 0,
            dropped: 0,
            latency_us: Latency {
                p50: p99 / 4.0,
                p99,
                ..Latency::default()
            },
            generator_lagged: lagged,
            send_lag_us: SendLag::default(),
            lag_bound_us: 100.0,
            client_cpu: Some(1.0),
            server_cpu: Some(0.5),
            slo_us: 500.0,
            meets_slo: p99 <= 500.0 && !lagged,
        }
    }

    fn run(system: KvsSystem, points: Vec<PointResult>, common: f64) -> KvsRow {
        let params = LoadParams::default();
        let name = system.name();
        KvsRow {
            system,
            outcome: Ok(KvsRun {
                sweep: SweepResult::from_points(name, &params, points),
                common: Some(point(name, common, 100.0, false)),
            }),
        }
    }

    fn report(out_dir: PathBuf) -> KvsReport {
        KvsReport {
            params: KvsParams {
                out_dir,
                ..KvsParams::default()
            },
            common_rps: Some(40_000.0),
            rows: vec![
                run(
                    KvsSystem::Ix,
                    vec![
                        point("ix", 100_000.0, 80.0, false),
                        point("ix", 400_000.0, 300.0, false),
                        point("ix", 800_000.0, 9_000.0, true),
                    ],
                    40_000.0,
                ),
                run(
                    KvsSystem::Linux,
                    vec![
                        point("linux", 40_000.0, 200.0, false),
                        point("linux", 80_000.0, 2_000.0, false),
                    ],
                    40_000.0,
                ),
                KvsRow {
                    system: KvsSystem::Memcached,
                    outcome: Err("memcached not installed".into()),
                },
            ],
        }
    }

    #[test]
    fn ratios_compare_slo_rates_and_skip_systems_that_did_not_run() {
        let r = report(PathBuf::from("unused"));
        assert_eq!(r.ratio(KvsSystem::Linux), Some(10.0));
        assert_eq!(r.ratio(KvsSystem::Memcached), None);
        assert!(r.has_failures());
        let json = r.to_json();
        assert_eq!(json["ix"]["slo_rps"], 400_000.0);
        assert_eq!(json["linux"]["p99_us"], 100.0);
        assert_eq!(json["memcached"]["error"], "memcached not installed");
        assert_eq!(json["ratio_linux"], 10.0);
        assert!(json["ratio_memcached"].is_null());
        let mut table = Vec::new();
        r.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("memcached  did not run: memcached not installed"));
        assert!(table.contains("10.00"), "{table}");
    }

    #[test]
    fn csv_has_every_point_and_the_plot_marks_lagged_points_hollow() {
        let dir = tempfile::tempdir().unwrap();
        let r = report(dir.path().to_path_buf());
        let (csv, svg) = r.write_files().unwrap();
        let csv = std::fs::read_to_string(csv).unwrap();
        // Header, 3 + 1 ix points, 2 + 1 linux points, no memcached.
        assert_eq!(csv.lines().count(), 1 + 4 + 3, "{csv}");
        assert!(csv.contains("ix,sweep,800000,800000,2250.0,9000.0,0.0,1.00,0.50,true,false"));
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("SLO 500 µs") && svg.contains("linux"));
        let circles: Vec<&str> = svg
            .split("<circle")
            .skip(1)
            .filter_map(|c| c.split("/>").next())
            .collect();
        let hollow = circles
            .iter()
            .filter(|c| c.contains("fill=\"none\""))
            .count();
        // Filled: the 2 ix and 2 linux points the generator kept up with;
        // hollow: the one where it lagged.
        assert_eq!((circles.len() - hollow, hollow), (4, 1), "{svg}");
    }
}
