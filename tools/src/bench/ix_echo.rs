//! The `ix` row of the echo benchmark: our dataplane's echo server and echo
//! client (libix apps) in two processes joined by a memif wire, run with the
//! same [`EchoParams`] as the Linux baseline in [`super::linux_echo`].
//!
//! The server is the `ix-echo` binary (installed next to `ixctl`), pinned to
//! `server_core`; the client runs in this process, pinned to
//! `client_core`.

use std::path::PathBuf;
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

/// Runs the echo benchmark on our dataplane and returns its statistics.
pub fn run_ix_echo(params: &EchoParams) -> anyhow::Result<EchoResult> {
    let dir = std::env::temp_dir().join(format!("ixctl-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let sock = dir.join("memif.sock");
    let _ = std::fs::remove_file(&sock);
    let server_bin = sibling_binary("ix-echo")?;
    let run_for = params.warmup + params.duration + Duration::from_secs(30);
    let server = Command::new(&server_bin)
        .args([
            "server",
            "--memif",
            sock.to_str().context("socket path is not UTF-8")?,
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
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", server_bin.display()))?;
    let _server = ServerProcess(server);

    let mut cfg = Config::memif_slave(&sock, SERVER_IP.into());
    cfg.ip = CLIENT_IP.into();
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
    let _ = std::fs::remove_dir_all(&dir);
    let r = EchoClientResult::collect(&out).context("the echo client stored no result")?;
    if r.timed_out {
        bail!(
            "the echo client hit its deadline ({} round trips done)",
            r.completed
        );
    }
    if r.completed == 0 {
        bail!("no round trip completed over the memif wire");
    }
    Ok(EchoResult::from_histogram(
        &r.latency_ns,
        r.elapsed,
        r.corrupt_bytes.min(1) + r.failed_conns,
    ))
}
