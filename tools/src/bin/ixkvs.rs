//! `ixkvs`: a memcached-compatible key-value server on the IX dataplane, or
//! the same server on Linux sockets (the baseline).
//!
//! ```text
//! ixkvs --stack ix --memif /tmp/wire.sock --ip 10.0.0.1 [--cores 2] [--port 11211] [-m 64]
//! ixkvs --stack ix --af-packet veth0 --ip 10.0.0.1
//! ixkvs --stack linux --listen 127.0.0.1:11211 [--threads 2] [--cpu 0,1]
//! ```
//!
//! With `--stack ix` and neither `--memif` nor `--af-packet`, it runs as a
//! dataplane of ixcpd: it registers under `--dataplane NAME` (default
//! `$IX_DATAPLANE`, which `ixctl launch` sets) and runs on the cores, port,
//! addresses and buffer pools ixcpd allocated:
//!
//! ```text
//! ixctl launch --name kvs --cores 2 --port wire0 -- ixkvs --stack ix
//! ```
//!
//! Once serving it prints one line on stdout, `ixkvs: listening on
//! ADDR:PORT (...)`, which scripts and tests wait for. It runs until killed
//! or `--seconds` pass. Exit codes: 0 done, 1 failed (the reason on
//! stderr), 2 bad arguments.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ix_tools::kvs::linux_server::{LinuxOptions, LinuxServer};
use ix_tools::kvs::store::StoreConfig;
use ix_tools::kvs::{ix_server, Kvs, DEFAULT_PORT};
use libix::{Config, Registered};

/// A memcached-compatible key-value server on the IX dataplane or on
/// Linux sockets.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: ixkvs --stack linux --listen 127.0.0.1:11211 --threads 2"
)]
struct Args {
    /// Network stack: `ix` (kernel-bypass dataplane) or `linux` (epoll).
    #[arg(long, value_enum)]
    stack: Stack,
    /// Item memory in MiB (memcached's -m).
    #[arg(short = 'm', long = "memory", value_name = "MiB", default_value_t = 64)]
    memory: usize,
    /// Largest item in bytes (memcached's -I).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_item_size: usize,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    seconds: Option<u64>,
    /// CPUs to pin to, one per core or thread (e.g. 0,1).
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<usize>,

    /// [ix] memif socket to create (this end is the master).
    #[arg(long, conflicts_with_all = ["af_packet", "dataplane", "listen", "threads"], requires = "ip")]
    memif: Option<PathBuf>,
    /// [ix] Linux interface to drive with af_packet (one core).
    #[arg(long, value_name = "IFACE", conflicts_with_all = ["dataplane", "listen", "threads"], requires = "ip")]
    af_packet: Option<String>,
    /// [ix] Our IPv4 address (with --memif or --af-packet).
    #[arg(long)]
    ip: Option<Ipv4Addr>,
    /// [ix] Prefix length of our subnet.
    #[arg(long, default_value_t = 24)]
    prefix_len: u8,
    /// [ix] Elastic threads (with --memif; the peer must use as many).
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// [ix] TCP port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// [ix] Connections per core, at most.
    #[arg(long)]
    max_conns: Option<usize>,
    /// [ix] Seconds to wait for the memif peer.
    #[arg(long, default_value_t = 3600)]
    link_timeout: u64,
    /// [ix] Register with ixcpd under this name [default: $IX_DATAPLANE].
    #[arg(long, value_name = "NAME", conflicts_with_all = ["listen", "threads"])]
    dataplane: Option<String>,

    /// [linux] Address to listen on (port 0: any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// [linux] Server threads.
    #[arg(long)]
    threads: Option<usize>,
}

/// The NIC of a standalone dataplane.
enum NicKind {
    Memif(PathBuf),
    AfPacket(String),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    Ix,
    Linux,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("ixkvs: {e:#}");
        std::process::exit(1);
    }
}

/// Stops the server after `seconds`, if given.
fn stop_after(seconds: Option<u64>, stop: Arc<AtomicBool>) {
    if let Some(s) = seconds {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(s));
            stop.store(true, Ordering::Relaxed);
        });
    }
}

fn announce(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ixkvs: {line}");
    let _ = out.flush();
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.memory == 0 {
        anyhow::bail!("-m must be at least 1 MiB");
    }
    let store = StoreConfig {
        limit_bytes: args.memory << 20,
        item_max: args.max_item_size.max(1024),
        shards: 0,
    };
    match args.stack {
        Stack::Linux => run_linux(&args, store),
        Stack::Ix => run_ix(&args, store),
    }
}

fn run_linux(args: &Args, store: StoreConfig) -> anyhow::Result<()> {
    if args.memif.is_some() || args.af_packet.is_some() || args.dataplane.is_some() {
        anyhow::bail!("--memif, --af-packet and --dataplane are for --stack ix");
    }
    let threads = args.threads.unwrap_or(1);
    let opts = LinuxOptions {
        listen: args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
        threads,
        cpus: args.cpu.clone(),
    };
    let kvs = Kvs::shared(store, threads);
    let server = LinuxServer::start(kvs, &opts)?;
    announce(format_args!(
        "listening on {} (linux, {threads} threads)",
        server.local_addr()
    ));
    stop_after(args.seconds, server.stop_flag());
    server.join()?;
    Ok(())
}

fn run_ix(args: &Args, store: StoreConfig) -> anyhow::Result<()> {
    if args.listen.is_some() || args.threads.is_some() {
        anyhow::bail!("--listen and --threads are for --stack linux (use --ip, --port, --cores)");
    }
    let tune = |cfg: &mut Config| {
        if let Some(n) = args.max_conns {
            cfg.tcp.max_conns = n;
        }
    };
    let port = args.port;
    let standalone = match (&args.memif, &args.af_packet) {
        (Some(path), _) => Some((
            args.cores,
            format!("memif {}", path.display()),
            NicKind::Memif(path.clone()),
        )),
        (None, Some(iface)) => Some((
            1,
            format!("af_packet {iface}"),
            NicKind::AfPacket(iface.clone()),
        )),
        (None, None) => None,
    };
    let (dp, what) = match standalone {
        Some((cores, nic, kind)) => {
            let ip = args.ip.context("--memif and --af-packet need --ip")?;
            anyhow::ensure!(cores >= 1, "--cores must be at least 1");
            let mut cfg = match kind {
                NicKind::Memif(path) => Config::memif_master(path, ip),
                NicKind::AfPacket(iface) => Config::af_packet(iface, ip),
            };
            cfg.cores = (0..cores).map(|i| args.cpu.get(i).copied()).collect();
            cfg.prefix_len = args.prefix_len;
            cfg.link_timeout = Duration::from_secs(args.link_timeout);
            tune(&mut cfg);
            let kvs = Kvs::shared(store, cores);
            let dp = ix_server::start(cfg, kvs, port)?;
            (dp, format!("{ip}:{port} (ix, {nic}, {cores} cores)"))
        }
        None => {
            let mut reg = Registered::register(args.dataplane.as_deref())
                .context("no --memif or --af-packet given, so registering with ixcpd")?;
            tune(&mut reg.config);
            let cores = reg.config.cores.len();
            let what = format!(
                "{}:{port} (ix, dataplane {} of ixcpd, cpus {:?})",
                reg.config.ip,
                reg.name(),
                reg.config.cores.iter().flatten().collect::<Vec<_>>()
            );
            let kvs = Kvs::shared(store, cores);
            (ix_server::start_registered(reg, kvs, port)?, what)
        }
    };
    announce(format_args!("listening on {what}"));
    stop_after(args.seconds, dp.stop_flag());
    dp.join()?;
    Ok(())
}
