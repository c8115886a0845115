//! `ixload`: an open-loop memcached load generator (see
//! `ix_tools::load` for what it measures and its JSON shape).
//!
//! ```text
//! # one point, Linux sockets, against memcached on loopback
//! ixload --transport linux --server 127.0.0.1:11211 --rate 50000
//!
//! # the highest rate with p99 <= 500 us, over our dataplane (memif slave)
//! ixload --transport ix --memif /tmp/kvs.sock --ip 10.0.0.2 \
//!        --server 10.0.0.1:11211 --sweep --quick --json
//! ```
//!
//! Exit codes: 0 success, 1 the run failed, 2 bad arguments (clap).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ix_tools::load::{
    self, report, LoadParams, Popularity, SweepParams, Target, Transport, WorkloadKind,
};

/// Open-loop memcached load generator: Poisson arrivals, Facebook ETC/USR
/// workloads, latency from scheduled send time, SLO search.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  \
ixload --transport linux --server 127.0.0.1:11211 --rate 50000\n  \
ixload --transport ix --memif /tmp/kvs.sock --ip 10.0.0.2 --server 10.0.0.1:11211 --sweep --quick"
)]
struct Args {
    /// How to reach the server.
    #[arg(long, value_enum, default_value = "linux")]
    transport: TransportArg,
    /// memif socket of the server's dataplane (transport ix).
    #[arg(long, required_if_eq("transport", "ix"))]
    memif: Option<PathBuf>,
    /// Our IPv4 address on the memif wire (transport ix).
    #[arg(long, required_if_eq("transport", "ix"))]
    ip: Option<Ipv4Addr>,
    /// Queues of the memif wire (transport ix): the server's port's queue
    /// count, which both ends must open.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:11211")]
    server: SocketAddrV4,
    /// Workload.
    #[arg(long, value_enum, default_value = "etc")]
    workload: WorkloadKind,
    /// Offered rate of one point, requests/s.
    #[arg(long, conflicts_with = "sweep", required_unless_present = "sweep")]
    rate: Option<f64>,
    /// Search for the highest rate meeting the SLO.
    #[arg(long)]
    sweep: bool,
    /// Quick sweep (< 30 s): 0.2 s warm-up, 1 s points, 10 % resolution.
    #[arg(long, requires = "sweep")]
    quick: bool,
    /// First rate of a sweep, requests/s.
    #[arg(long, requires = "sweep")]
    start_rate: Option<f64>,
    /// Highest rate of a sweep, requests/s.
    #[arg(long, requires = "sweep")]
    max_rate: Option<f64>,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Warm-up seconds per point (not recorded).
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured seconds per point.
    #[arg(long)]
    duration: Option<f64>,
    /// p99 objective, microseconds.
    #[arg(long, default_value_t = 500.0)]
    slo_us: f64,
    /// Number of keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Key popularity: `uniform` or `zipf:S` (e.g. zipf:0.99).
    #[arg(long, default_value = "uniform", value_parser = parse_popularity)]
    popularity: Popularity,
    /// Seed of sizes, keys and arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the preload (GETs of unset keys miss).
    #[arg(long)]
    no_preload: bool,
    /// Server process whose CPU use to report.
    #[arg(long)]
    server_pid: Option<u32>,
    /// CPU to pin the generator to.
    #[arg(long)]
    cpu: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TransportArg {
    /// Our dataplane (libix) over a memif wire.
    Ix,
    /// Linux TCP sockets with epoll.
    Linux,
}

fn parse_popularity(s: &str) -> Result<Popularity, String> {
    match s.split_once(':') {
        None if s == "uniform" => Ok(Popularity::Uniform),
        Some(("zipf", exp)) => exp
            .parse::<f64>()
            .ok()
            .filter(|e| e.is_finite() && *e > 0.0)
            .map(Popularity::Zipf)
            .ok_or_else(|| format!("zipf exponent {exp:?} is not a positive number")),
        _ => Err(format!("{s:?}: use `uniform` or `zipf:S`")),
    }
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("--{what} {s}: give a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Args::parse()) {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return;
        }
        eprintln!("ixload: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let transport = match (args.transport, args.memif, args.ip) {
        (TransportArg::Ix, Some(memif), Some(ip)) => Transport::Ix {
            memif,
            ip,
            queues: args.queues,
        },
        (TransportArg::Ix, _, _) => bail!("--transport ix needs --memif and --ip"),
        (TransportArg::Linux, _, _) => Transport::Linux,
    };
    let target = Target {
        transport,
        server: args.server,
        server_pid: args.server_pid,
        cpu: args.cpu,
    };
    let mut params = LoadParams {
        connections: args.connections,
        slo: Duration::from_secs_f64(args.slo_us.max(0.0) / 1e6),
        preload: !args.no_preload,
        ..LoadParams::default()
    };
    params.workload.kind = args.workload;
    params.workload.keys = args.keys;
    params.workload.popularity = args.popularity;
    params.workload.seed = args.seed;
    if args.quick {
        SweepParams::quick_timing(&mut params);
    }
    if let Some(w) = args.warmup {
        params.warmup = seconds(w, "warmup")?;
    }
    if let Some(d) = args.duration {
        params.duration = seconds(d, "duration")?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.sweep {
        let mut sweep = if args.quick {
            SweepParams::quick()
        } else {
            SweepParams::full()
        };
        if let Some(r) = args.start_rate {
            sweep.start_rps = r;
            sweep.min_rps = sweep.min_rps.min(r);
        }
        if let Some(r) = args.max_rate {
            sweep.max_rps = r;
        }
        let result = load::sweep(&target, &params, &sweep).context("sweep failed")?;
        if args.json {
            report::json_sweep(&mut out, &result)?;
        } else {
            report::table_sweep(&mut out, &result)?;
        }
    } else {
        params.rate = args.rate.context("give --rate or --sweep")?;
        if !(params.rate.is_finite() && params.rate > 0.0) {
            bail!("--rate {}: give a positive rate", params.rate);
        }
        let point = load::run_point(&target, &params).context("load run failed")?;
        if args.json {
            report::json_point(&mut out, &point)?;
        } else {
            report::table_header(&mut out)?;
            report::table_row(&mut out, &point)?;
        }
    }
    out.flush()?;
    Ok(())
}
