//! The `ix` row of the echo benchmark: our dataplane's echo server and echo
//! client (libix apps) in two processes joined by a memif wire, run with the
//! same [`EchoParams`] as the Linux baseline in [`super::linux_echo`]; and,
//! with the `dpdk` feature, the `ix_dpdk` row: the same over a DPDK
//! `net_memif` pair driven by the DPDK backend.
//!
//! The server is the `ix-echo` binary (installed next to `ixctl`), pinned to
//! `server_core`; the client runs in this process, pinned to
//! `client_core`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use libix::{Config, Dataplane};

use super::report::EchoResult;
use super::EchoParams;
use crate::echo::{EchoClient, EchoClientConfig, EchoClientResult, MessageSize, ResultSink};

/// Server and client addresses on the benchmark wire.
const SERVER_IP: [u8; 4] = [10, 0, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 0, 0, 2];
const PORT: u16 = 7;

/// Kills the server process when the benchmark ends, however it ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Path of a binary installed next to the running one.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found next to {} — build it with `cargo build --release -p ix-tools`",
        exe.display()
    )
}

/// Runs the echo benchmark on our dataplane over the native memif and
/// returns its statistics.
pub fn run_ix_echo(params: &EchoParams) -> anyhow::Result<EchoResult> {
    let dir = bench_dir("memif")?;
    let sock = dir.join("memif.sock");
    let _ = std::fs::remove_file(&sock);
    let server_nic = vec![
        "--memif".to_string(),
        sock.to_str()
            .context("socket path is not UTF-8")?
            .to_string(),
    ];
    let mut cfg = Config::memif_slave(&sock, SERVER_IP.into());
    cfg.ip = CLIENT_IP.into();
    run_pair(params, &dir, server_nic, cfg, "memif")
}

/// The `ix_dpdk` row: the same two processes, each on a DPDK `net_memif`
/// device driven by the DPDK backend (the server `ix-echo --dpdk-vdev`,
/// the client in this process), so the row differs from `ix` only by the
/// NIC backend. `ix-echo` must be built with the `dpdk` feature too.
#[cfg(feature = "dpdk")]
pub fn run_ix_dpdk_echo(params: &EchoParams) -> anyhow::Result<EchoResult> {
    use dataplane::nic::dpdk::{EalConfig, PortConfig};
    let dir = bench_dir("dpdk")?;
    let sock = dir.join("dpdk-memif.sock");
    let _ = std::fs::remove_file(&sock);
    let sock = sock.to_str().context("socket path is not UTF-8")?;
    let server_nic = vec![
        "--dpdk-vdev".to_string(),
        format!("net_memif_ixs,role=server,id=0,socket={sock},socket-abstract=no"),
    ];
    let eal = EalConfig {
        lcores: params.client_core.to_string(),
        ..EalConfig::virtual_devices("ixctl-bench")
    };
    let mut port = PortConfig::new("net_memif_ixc", 1);
    port.attach = Some(format!(
        "net_memif_ixc,role=client,id=0,socket={sock},socket-abstract=no"
    ));
    let cfg = Config::dpdk(eal, port, CLIENT_IP.into());
    run_pair(params, &dir, server_nic, cfg, "DPDK net_memif")
}

/// A fresh directory for one row's sockets and the server's output.
fn bench_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ixctl-echo-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Starts `ix-echo server` with `server_nic` (its wire flags), waits until
/// its port is open, runs the echo client on `cfg` in this process, and
/// returns what the client measured.
fn run_pair(
    params: &EchoParams,
    dir: &Path,
    server_nic: Vec<String>,
    mut cfg: Config,
    wire: &str,
) -> anyhow::Result<EchoResult> {
    let server_bin = sibling_binary("ix-echo")?;
    let run_for = params.warmup + params.duration + Duration::from_secs(30);
    let err_path = dir.join("server.stderr");
    let err_file = std::fs::File::create(&err_path)
        .with_context(|| format!("cannot create {}", err_path.display()))?;
    let server = Command::new(&server_bin)
        .arg("server")
        .args(&server_nic)
        .args([
            "--ip",
            &std::net::Ipv4Addr::from(SERVER_IP).to_string(),
            "--port",
            &PORT.to_string(),
            "--cpu",
            &params.server_core.to_string(),
            "--seconds",
            &run_for.as_secs().to_string(),
            "--batch",
            &params.batch.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .with_context(|| format!("cannot start {}", server_bin.display()))?;
    let mut server = ServerProcess(server);
    let server_said = || std::fs::read_to_string(&err_path).unwrap_or_default();
    // A DPDK memif client connects once: only after the server's port is
    // open.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server_said().contains("port open") {
        if let Ok(Some(status)) = server.0.try_wait() {
            bail!("ix-echo server exited ({status}): {}", server_said().trim());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "ix-echo server did not open its port: {}",
                server_said().trim()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    cfg.cores = vec![Some(params.client_core)];
    cfg.link_timeout = Duration::from_secs(10);
    cfg.batch = params.batch;
    cfg.tcp.max_conns = cfg.tcp.max_conns.max(2 * params.connections);
    let client_cfg = EchoClientConfig {
        server: std::net::SocketAddrV4::new(SERVER_IP.into(), PORT),
        connections: params.connections,
        size: MessageSize::Fixed(params.message_size),
        messages_per_conn: None,
        warmup: params.warmup,
        duration: Some(params.duration),
        deadline: run_for,
    };
    let out = ResultSink::default();
    let out2 = out.clone();
    let dp = Dataplane::start(cfg, move |_| {
        EchoClient::new(client_cfg.clone(), out2.clone())
    })
    .context("cannot start the client dataplane")?;
    dp.join().context("client dataplane failed")?;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    let r = EchoClientResult::collect(&out).context("the echo client stored no result")?;
    if r.timed_out {
        bail!(
            "the echo client hit its deadline ({} round trips done)",
            r.completed
        );
    }
    if r.completed == 0 {
        bail!("no round trip completed over the {wire} wire");
    }
    Ok(EchoResult::from_histogram(
        &r.latency_ns,
        r.elapsed,
        r.corrupt_bytes.min(1) + r.failed_conns,
    ))
}
