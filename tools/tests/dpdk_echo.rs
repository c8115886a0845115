//! Two dataplanes — our TCP/IP stack with the echo server and the echo
//! client (`ix_tools::echo`) on libix — joined by a DPDK `net_memif` pair:
//! both ends are DPDK ports driven by the DPDK backend, each in its own
//! process with its own EAL. The client verifies every byte that comes
//! back; the test checks every round trip completed, nothing was corrupt
//! and every connection closed in order. With one core per side, and with
//! two (two queue pairs per port; memif pairs queue k with the peer's
//! queue k, and each client core picks local ports whose replies hash to
//! its own queue).
//!
//! The server is this test binary run again (`--exact NAME`) with
//! `IX_DPDK_ECHO_SERVE` set to the directory of the memif socket: the same
//! test function then serves instead of connecting. It is killed when the
//! client is done, also when the test fails.
//!
//! Through the control plane: an ixcpd (on a thread of this process) with a
//! port of kind `dpdk` (a `net_memif` server device) lists it in `ixctl
//! resources` (kind `dpdk`, its queues, then its owner) and launches
//! `ix-echo server` on it; the echo client connects from this process over
//! its own DPDK port.
//!
//! `ixctl bench echo` runs the `ix_dpdk` row alone (`--system ix_dpdk`)
//! and beside the native memif row (`--nic dpdk`).
//!
//! Built only with `--features dpdk`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::nic::dpdk::{EalConfig, PortConfig};
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use libix::{Config, Dataplane};
use serde_json::Value;
use support::{Ixcpd, IXCTL};

mod support;

const SERVE_ENV: &str = "IX_DPDK_ECHO_SERVE";
/// What the server prints once its port is started.
const READY: &str = "dpdk echo server: port started";
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const PORT: u16 = 7;
/// The server gives up on its own after this long.
const SERVER_LIFETIME: Duration = Duration::from_secs(120);

/// Both sides busy-poll: one pair of dataplanes at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A dataplane on a DPDK memif port in `role` on `socket`.
fn dpdk_config(role: &str, tag: &str, socket: &Path, ip: Ipv4Addr, cores: usize) -> Config {
    let eal = EalConfig::virtual_devices(&format!("ixtest-echo-{role}"));
    let name = format!("net_memif_{role}{tag}");
    let mut port = PortConfig::new(&name, 1);
    port.attach = Some(format!(
        "{name},role={role},id=0,socket={},socket-abstract=no",
        socket.display()
    ));
    let mut cfg = Config::dpdk(eal, port, ip);
    cfg.cores = vec![None; cores];
    cfg.pool_buffers = 4096;
    cfg.hugepages = false;
    cfg.link_timeout = Duration::from_secs(30);
    cfg
}

/// The server side (in the child process): echo until killed.
fn serve(dir: &Path, tag: &str, cores: usize) {
    let cfg = dpdk_config("server", tag, &dir.join("memif.sock"), SERVER_IP, cores);
    let dp = Dataplane::start(cfg, |_| EchoServer::new(PORT)).expect("server dataplane starts");
    // The port is started: a client may connect now (DPDK's memif client
    // tries once, when its port starts).
    eprintln!("{READY}");
    dp.stop_after(SERVER_LIFETIME);
    let report = dp.join().expect("server dataplane runs");
    assert_eq!(report.cores.len(), cores);
}

/// Kills the server process and removes its directory, however the test
/// ends.
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Server {
    fn start(test: &str, tag: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("ix-dpdk-echo-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(SERVE_ENV, &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Server { child, dir }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Waits until the server's port is started: its memif socket exists
    /// from the moment the device is attached, but a client that connects
    /// before the server's port starts is turned away, and DPDK's memif
    /// client does not try again.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output().contains(READY) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn echo_over_dpdk_memif(test: &str, tag: &str, cores: usize) {
    if let Some(dir) = std::env::var_os(SERVE_ENV) {
        serve(Path::new(&dir), tag, cores);
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start(test, tag);
    server.wait_ready();

    let cfg = dpdk_config(
        "client",
        tag,
        &server.dir.join("memif.sock"),
        CLIENT_IP,
        cores,
    );
    run_client(cfg, SERVER_IP, &|| server.output());
}

/// Runs echo clients (8 connections per core, 100 messages of 1 B to
/// 16 KiB each) against `server` and checks every byte came back and
/// every connection closed in order. `context` says what the server did,
/// for failure messages.
fn run_client(cfg: Config, server: Ipv4Addr, context: &dyn Fn() -> String) {
    let conns_per_core = 8;
    let messages = 100;
    let cores = cfg.cores.len();
    let client = EchoClientConfig {
        server: SocketAddrV4::new(server, PORT),
        connections: conns_per_core,
        size: MessageSize::Random {
            min: 1,
            max: 16 * 1024,
            seed: 7,
        },
        messages_per_conn: Some(messages),
        warmup: Duration::ZERO,
        duration: None,
        deadline: Duration::from_secs(90),
    };
    let out = ResultSink::default();
    let sink = out.clone();
    let dp = Dataplane::start(cfg, move |_| EchoClient::new(client.clone(), sink.clone()))
        .unwrap_or_else(|e| panic!("client dataplane: {e}\n{}", context()));
    let report = dp
        .join()
        .unwrap_or_else(|e| panic!("client dataplane: {e}\n{}", context()));
    let r = EchoClientResult::collect(&out).expect("every client core stored a result");
    let queues: Vec<String> = report
        .cores
        .iter()
        .map(|c| format!("core {}: {:?}", c.core, c.queue))
        .collect();
    let summary = format!(
        "{} round trips, {} bytes verified, {} corrupt, {} failed and {} closed connections, timed out: {}; client {}\n{}",
        r.completed,
        r.verified_bytes,
        r.corrupt_bytes,
        r.failed_conns,
        r.closed_conns,
        r.timed_out,
        queues.join("; "),
        context()
    );
    let conns = (conns_per_core * cores) as u64;
    assert!(!r.timed_out, "{summary}");
    assert_eq!(r.completed, conns * messages, "{summary}");
    assert_eq!((r.corrupt_bytes, r.failed_conns), (0, 0), "{summary}");
    assert_eq!(r.closed_conns, conns, "{summary}");
    assert!(r.verified_bytes > conns * messages, "{summary}");
    for core in &report.cores {
        assert!(
            core.queue.rx_packets > 0,
            "core {} received nothing: {summary}",
            core.core
        );
        assert_eq!(core.queue.rx_dropped, 0, "{summary}");
    }
    eprintln!(
        "{} round trips, {} bytes verified, p50 {} µs",
        r.completed,
        r.verified_bytes,
        r.latency_ns.value_at_quantile(0.5) / 1000
    );
}

#[test]
fn echo_between_two_dataplanes_over_dpdk_memif() {
    echo_over_dpdk_memif("echo_between_two_dataplanes_over_dpdk_memif", "one", 1);
}

#[test]
fn echo_between_two_two_core_dataplanes_over_dpdk_memif() {
    echo_over_dpdk_memif(
        "echo_between_two_two_core_dataplanes_over_dpdk_memif",
        "two",
        2,
    );
}

const IX_ECHO: &str = env!("CARGO_BIN_EXE_ix-echo");

/// An ixcpd on a thread with one port: `nic0`, a DPDK `net_memif` server
/// device on `m.sock` in the daemon's directory, 10.9.2.1/24.
fn start_ixcpd() -> Ixcpd {
    Ixcpd::start_with("ix-dpdk-ixcpd-", |dir| {
        format!(
            "[[ports]]\nname = \"nic0\"\nkind = \"dpdk\"\ndevice = \"net_memif_nic0\"\n\
             vdev = \"net_memif_nic0,role=server,id=0,socket={},socket-abstract=no\"\n\
             queues = 1\nip = \"10.9.2.1/24\"\n",
            dir.join("m.sock").display()
        )
    })
}

impl Ixcpd {
    /// What ixcpd shows of dataplane `name`'s output.
    fn logs(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.ixctl(&["logs", name]).stdout).into_owned()
    }
}

#[test]
fn ixcpd_lists_a_dpdk_port_and_launches_an_echo_server_on_it() {
    if std::env::var_os(SERVE_ENV).is_some() {
        return; // a server child of another test runs only that test
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = start_ixcpd();
    let r = d.json(&["resources"]);
    let port = &r["ports"][0];
    assert_eq!(
        (&port["name"], &port["kind"], &port["queues"]),
        (&Value::from("nic0"), &Value::from("dpdk"), &Value::from(1)),
        "{r}"
    );
    let table = d.ok(&["resources"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("nic0 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["nic0", "dpdk", "1", "-"]
    );

    // ix-echo (built with the dpdk feature, as this test) registers, gets
    // the port, and libix opens it through DPDK.
    let launched: Value = serde_json::from_str(&d.ok(&[
        "launch", "--name", "echo", "--cores", "1", "--port", "nic0", "--json", "--", IX_ECHO,
        "server",
    ]))
    .unwrap();
    assert_eq!(launched["dataplane"]["state"], "running", "{launched}");
    // A memif client must not connect before the server's port started:
    // ix-echo says when it has.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.logs("echo").contains("ix-echo: port open") {
        assert!(
            Instant::now() < deadline,
            "echo never opened its port:\n{}",
            d.logs("echo")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let row = d.ok(&["resources"]);
    assert!(
        row.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nic0", "dpdk", "1", "echo"]),
        "{row}"
    );

    let cfg = dpdk_config(
        "client",
        "ixcpd",
        &d.dir.path().join("m.sock"),
        Ipv4Addr::new(10, 9, 2, 2),
        1,
    );
    run_client(cfg, Ipv4Addr::new(10, 9, 2, 1), &|| d.logs("echo"));
}

/// `ixctl bench echo` with `args`, short runs of 4 connections, as JSON;
/// checks that each of `rows` ran without errors.
fn bench_echo(args: &[&str], rows: &[&str]) -> Value {
    let out = Command::new(IXCTL)
        .args(["bench", "echo"])
        .args(args)
        .args([
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--json",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in rows {
        let row = &v[name];
        assert!(row["error"].is_null(), "{name}: {v}\n{stderr}");
        assert!(row["rps"].as_f64().unwrap() > 0.0, "{name}: {v}");
        assert_eq!(row["errors"], 0, "{name}: {v}");
    }
    v
}

#[test]
fn bench_echo_has_an_ix_dpdk_row() {
    if std::env::var_os(SERVE_ENV).is_some() {
        return; // a server child of another test runs only that test
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = bench_echo(&["--system", "ix_dpdk"], &["ix_dpdk"]);
    assert!(v["ix"].is_null(), "only the row asked for: {v}");
}

#[test]
fn bench_echo_nic_dpdk_runs_the_memif_and_dpdk_rows_in_one_run() {
    if std::env::var_os(SERVE_ENV).is_some() {
        return; // a server child of another test runs only that test
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = bench_echo(&["--system", "ix", "--nic", "dpdk"], &["ix", "ix_dpdk"]);
    assert!(v["linux"].is_null(), "{v}");
}
