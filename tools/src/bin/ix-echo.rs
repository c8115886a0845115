//! `ix-echo`: the echo server and echo client apps of libix as a program.
//!
//! ```text
//! ix-echo server --memif /tmp/wire.sock --ip 10.0.0.1 [--port 7] [--cpu 0]
//! ix-echo client --memif /tmp/wire.sock --ip 10.0.0.2 --server 10.0.0.1:7 \
//!                [--conns 16] [--size 64] [--seconds 5]
//! ```
//!
//! The server is the memif master (it creates the socket); the client is
//! the slave. Built with the `dpdk` feature, `--dpdk-vdev DEVARGS` runs
//! either role on a DPDK virtual device instead (e.g.
//! `net_memif0,role=server,socket=/tmp/m.sock,socket-abstract=no`). The client verifies every echoed byte and prints RPC/s and
//! p50/p99 round-trip latency.
//!
//! Without `--memif`, either role runs as a dataplane of ixcpd: it
//! registers under `--dataplane NAME` (default `$IX_DATAPLANE`) and runs
//! on the cores, port, addresses and buffer pools ixcpd allocated:
//!
//! ```text
//! ixctl launch --name echo --cores 1 --port wire0 -- ix-echo server
//! ixctl launch --name load --cores 1 --port wire0-peer -- \
//!     ix-echo client --server 10.77.0.1:7 --seconds 2
//! ```

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use ix_tools::nic_args::{start_dataplane, NicArgs, WireEnd};
use libix::Config;

/// Echo server and client on the IX dataplane over a memif wire.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run the echo server (memif master, or the port ixcpd allocated).
    Server {
        #[command(flatten)]
        nic: NicArgs,
        /// TCP port to listen on.
        #[arg(long, default_value_t = 7)]
        port: u16,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Run the echo client (memif slave, or the port ixcpd allocated) and
    /// print what it measured.
    Client {
        #[command(flatten)]
        nic: NicArgs,
        /// Server address.
        #[arg(long)]
        server: SocketAddrV4,
        /// Concurrent connections, one request in flight each.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// Request size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Measured seconds (after one second of warm-up).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("ix-echo: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.role {
        Role::Server { nic, port, seconds } => {
            let dp = start_dataplane(
                "ix-echo",
                nic,
                WireEnd::Master,
                |_| {},
                move |_| EchoServer::new(port),
            )?;
            if let Some(s) = seconds {
                dp.stop_after(Duration::from_secs(s));
            }
            dp.join()?;
        }
        Role::Client {
            nic,
            server,
            conns,
            size,
            seconds,
        } => {
            let tune = |cfg: &mut Config| cfg.tcp.max_conns = cfg.tcp.max_conns.max(2 * conns);
            let client = EchoClientConfig {
                server,
                connections: conns,
                size: MessageSize::Fixed(size),
                messages_per_conn: None,
                warmup: Duration::from_secs(1),
                duration: Some(Duration::from_secs(seconds)),
                deadline: Duration::from_secs(seconds + 30),
            };
            let out = ResultSink::default();
            let out2 = out.clone();
            let dp = start_dataplane("ix-echo", nic, WireEnd::Slave, tune, move |_| {
                EchoClient::new(client.clone(), out2.clone())
            })?;
            dp.join()?;
            let r = EchoClientResult::collect(&out).context("the client stored no result")?;
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            println!(
                "{} round trips in {:.2} s: {:.0} RPC/s, p50 {:.1} µs, p99 {:.1} µs; {} bytes verified, {} corrupt, {} failed connections",
                r.measured,
                secs,
                r.measured as f64 / secs,
                r.latency_ns.value_at_quantile(0.5) as f64 / 1e3,
                r.latency_ns.value_at_quantile(0.99) as f64 / 1e3,
                r.verified_bytes,
                r.corrupt_bytes,
                r.failed_conns
            );
        }
    }
    Ok(())
}
