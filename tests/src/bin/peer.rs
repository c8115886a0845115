//! The peer process of the cross-process tests: an echo server or an echo
//! client dataplane on a memif port, with optional fault injection. The
//! client prints its verified result as one JSON line on stdout.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dataplane::nic::fault::FaultConfig;
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use libix::{Config, Dataplane};

#[derive(Parser)]
struct Args {
    /// memif socket path.
    #[arg(long)]
    memif: PathBuf,
    /// Our IPv4 address.
    #[arg(long)]
    ip: Ipv4Addr,
    /// Inject faults on RX: `SEED,DROP,DUP,REORDER[,CORRUPT]` (rates 0..1).
    #[arg(long)]
    faults: Option<String>,
    /// Elastic threads (one memif queue each; both ends must agree).
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// Seconds to wait for the memif link.
    #[arg(long, default_value_t = 20)]
    link_timeout: u64,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Echo server (memif master); runs until killed or `--seconds`.
    Server {
        /// TCP port.
        #[arg(long, default_value_t = 7)]
        port: u16,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Echo client (memif slave).
    Client {
        /// Server address.
        #[arg(long)]
        server: SocketAddrV4,
        /// Connections.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Message sizes MIN-MAX (bytes).
        #[arg(long, default_value = "64-64")]
        size: String,
        /// Round trips per connection.
        #[arg(long, default_value_t = 10)]
        msgs: u64,
        /// Seed of the size generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 100)]
        deadline: u64,
    },
}

fn parse_faults(s: &str) -> anyhow::Result<FaultConfig> {
    let parts: Vec<&str> = s.split(',').collect();
    let (seed, drop, dup, reorder, corrupt) = match parts[..] {
        [a, b, c, d] => (a, b, c, d, "0"),
        [a, b, c, d, e] => (a, b, c, d, e),
        _ => bail!("--faults wants SEED,DROP,DUP,REORDER[,CORRUPT], got {s:?}"),
    };
    Ok(FaultConfig {
        seed: seed.parse().context("fault seed")?,
        drop: drop.parse().context("drop rate")?,
        duplicate: dup.parse().context("duplicate rate")?,
        reorder: reorder.parse().context("reorder rate")?,
        corrupt: corrupt.parse().context("corrupt rate")?,
        direction: dataplane::nic::fault::Direction::Rx,
        ..FaultConfig::default()
    })
}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let args = Args::parse();
    let faults = args.faults.as_deref().map(parse_faults).transpose()?;
    match args.role {
        Role::Server { port, seconds } => {
            let mut cfg = Config::memif_master(&args.memif, args.ip);
            cfg.faults = faults;
            cfg.cores = vec![None; args.cores];
            cfg.link_timeout = Duration::from_secs(args.link_timeout);
            let dp = Dataplane::start(cfg, move |_| EchoServer::new(port))?;
            dp.stop_after(Duration::from_secs(seconds));
            let report = dp.join()?;
            eprintln!("server: {report:?}");
        }
        Role::Client {
            server,
            conns,
            size,
            msgs,
            seed,
            deadline,
        } => {
            let (min, max) = size
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .context("--size wants MIN-MAX")?;
            let mut cfg = Config::memif_slave(&args.memif, args.ip);
            cfg.faults = faults;
            cfg.cores = vec![None; args.cores];
            cfg.link_timeout = Duration::from_secs(args.link_timeout);
            cfg.tcp.max_conns = cfg.tcp.max_conns.max(2 * conns);
            let out = ResultSink::default();
            let client_cfg = EchoClientConfig {
                server,
                connections: conns,
                size: MessageSize::Random { min, max, seed },
                messages_per_conn: Some(msgs),
                warmup: Duration::ZERO,
                duration: None,
                deadline: Duration::from_secs(deadline),
            };
            let out2 = out.clone();
            let dp = Dataplane::start(cfg, move |_| {
                EchoClient::new(client_cfg.clone(), out2.clone())
            })?;
            let report = dp.join()?;
            eprintln!("client: {report:?}");
            let r = EchoClientResult::collect(&out).context("client stored no result")?;
            println!(
                "{}",
                serde_json::json!({
                    "completed": r.completed,
                    "verified_bytes": r.verified_bytes,
                    "corrupt_bytes": r.corrupt_bytes,
                    "failed_conns": r.failed_conns,
                    "closed_conns": r.closed_conns,
                    "timed_out": r.timed_out,
                    "p50_us": r.latency_ns.value_at_quantile(0.5) as f64 / 1e3,
                })
            );
        }
    }
    Ok(())
}
