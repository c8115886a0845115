//! The control plane end to end: an ixcpd serving a memif wire (both ends
//! configured), `ixctl launch` starting `ix-echo` as dataplanes on it,
//! echoes verified across the wire, `kill -9` giving every resource back
//! within a second, over-allocation refused, `ixctl stop`, and the time
//! from `launch` to the first echo served.
//!
//! ixcpd runs on a thread of this test process (the same server the
//! `ixcpd` binary runs), each test with its own socket directory; the
//! launched programs are its children. Every test ends its dataplanes and
//! the daemon on the way out, also when it fails.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ix_tools::echo::{EchoClient, EchoClientConfig, EchoClientResult, MessageSize, ResultSink};
use serde_json::Value;
use support::{Ixcpd, IXCTL};

mod support;

const IX_ECHO: &str = env!("CARGO_BIN_EXE_ix-echo");

/// An ixcpd on a thread, with a memif wire `wire0` (master, 10.77.0.1)
/// and `wire0-peer` (slave, 10.77.0.2) in its own temporary directory.
fn start_ixcpd() -> Ixcpd {
    Ixcpd::start_with("ix-launch-", |dir| {
        let wire = dir.join("wire0.sock");
        format!(
            "[[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = {wire:?}\nrole = \"master\"\n\
             queues = 2\nip = \"10.77.0.1/24\"\n\
             [[ports]]\nname = \"wire0-peer\"\nkind = \"memif\"\nsocket = {wire:?}\n\
             role = \"slave\"\nqueues = 2\nip = \"10.77.0.2/24\"\n"
        )
    })
}

impl Ixcpd {
    fn launch(&self, name: &str, port: &str, app: &[&str]) -> Value {
        let mut args = vec![
            "launch", "--name", name, "--cores", "1", "--port", port, "--json", "--",
        ];
        args.extend_from_slice(app);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Free cores, used memory and free ports, from `ixctl resources`.
    fn free(&self) -> (usize, u64, usize) {
        let r = self.json(&["resources"]);
        let free = |key: &str| {
            r[key]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["owner"].is_null())
                .count()
        };
        (
            free("cores"),
            r["memory"]["used"].as_u64().unwrap(),
            free("ports"),
        )
    }

    fn cores(&self) -> usize {
        self.json(&["resources"])["cores"].as_array().unwrap().len()
    }

    /// Waits up to `limit` for `done`; how long it took.
    fn wait(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let t0 = Instant::now();
        while !done() {
            assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        t0.elapsed()
    }

    fn wire(&self) -> PathBuf {
        self.dir.path().join("wire0.sock")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn launched_echo_serves_a_launched_client_and_kill_9_frees_everything() {
    let d = start_ixcpd();
    let total = d.cores();
    assert_eq!(d.free(), (total, 0, 2));

    let echo = d.launch("echo", "wire0", &[IX_ECHO, "server"]);
    let pid = echo["pid"].as_u64().unwrap();
    assert_eq!(echo["dataplane"]["state"], "running");
    assert_eq!(echo["dataplane"]["cpus"], serde_json::json!([0]));

    // `status`, as a table and as JSON, shows it running with its CPU and pid.
    let table = d.ok(&["status"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        ["echo", "running", &pid.to_string(), "wire0", "0"]
    );
    let status = d.json(&["status"]);
    assert_eq!(status["dataplanes"][0]["pid"].as_u64(), Some(pid));

    // Over-allocation is refused, naming what is short.
    let out = d.ixctl(&[
        "launch",
        "--name",
        "big",
        "--cores",
        "2",
        "--port",
        "wire0-peer",
        "--",
        IX_ECHO,
        "server",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "ixctl: not enough cores: asked 2, free {} (of {total})",
            total - 1
        )) && err.lines().count() == 1,
        "{err}"
    );
    // KVM isolation is not built yet, and says so.
    let out = d.ixctl(&[
        "launch",
        "--name",
        "vm",
        "--isolation",
        "kvm",
        "--port",
        "wire0-peer",
        "--",
        IX_ECHO,
        "server",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("kvm isolation is not built yet"),
        "{}",
        stderr(&out)
    );

    if total >= 2 {
        // A client dataplane launched on the other end of the wire.
        d.launch(
            "load",
            "wire0-peer",
            &[
                IX_ECHO,
                "client",
                "--server",
                "10.77.0.1:7",
                "--seconds",
                "1",
                "--conns",
                "4",
            ],
        );
        d.wait(Duration::from_secs(20), "the client finishing", || {
            d.json(&["status"])["dataplanes"].as_array().unwrap().len() == 1
        });
        let logs = d.ok(&["logs", "load"]);
        let result = logs
            .lines()
            .find(|l| l.contains("round trips in"))
            .unwrap_or_else(|| panic!("no result in the client's log:\n{logs}"));
        assert!(
            result.contains(" 0 corrupt, 0 failed connections"),
            "{result}"
        );
        let verified: u64 = result
            .split("; ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{result}"));
        assert!(verified >= 64 * 100, "{result}");
        assert!(logs.contains("exited (exit code 0)"), "{logs}");
    } else {
        eprintln!("SKIPPED: the launched client needs a second CPU ({total} configured)");
    }

    // kill -9 of the server: its core, memory and port are free within 1 s.
    // SAFETY: kill() takes no pointers; `pid` is the dataplane ixcpd launched.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let took = d.wait(
        Duration::from_secs(1),
        "resources back after kill -9",
        || d.free() == (total, 0, 2),
    );
    eprintln!("kill -9 → resources free in {took:?}");
    let logs = d.ok(&["logs", "echo"]);
    assert!(logs.contains("killed by signal 9"), "{logs}");

    // Launch again under the same name, then `ixctl stop`.
    let echo = d.launch("echo", "wire0", &[IX_ECHO, "server"]);
    let pid = echo["pid"].as_u64().unwrap();
    let stopped = d.ok(&["stop", "echo"]);
    assert!(
        stopped.contains(&format!("SIGTERM sent to pid {pid}")),
        "{stopped}"
    );
    d.wait(Duration::from_secs(1), "resources back after stop", || {
        d.free() == (total, 0, 2)
    });
    assert_eq!(d.ok(&["status"]).lines().nth(1), Some("no dataplanes"));
    let out = d.ixctl(&["stop", "echo"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "ixctl: no dataplane named \"echo\"\n");
}

#[test]
fn a_program_that_fails_before_registering_reports_its_output() {
    let d = start_ixcpd();
    let out = d.ixctl(&[
        "launch",
        "--name",
        "bad",
        "--port",
        "wire0",
        "--",
        "sh",
        "-c",
        "echo cannot open the port >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("exited (exit code 7) before registering; last output: cannot open the port"),
        "{err}"
    );
    assert_eq!(d.free(), (d.cores(), 0, 2));
    assert!(d
        .ok(&["logs", "bad"])
        .contains("stderr: cannot open the port"));
    // A program that is not there is refused before anything is allocated.
    let out = d.ixctl(&[
        "launch",
        "--name",
        "x",
        "--port",
        "wire0",
        "--",
        "no-such-ix-app",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "ixctl: no-such-ix-app: not found in PATH\n");
}

/// One echo from a client that starts right after the server's launch:
/// the time from `ixctl launch` to the first request served.
#[test]
fn launch_to_first_echo_served_is_measured() {
    let d = start_ixcpd();
    let t0 = Instant::now();
    let echo = d.launch("echo", "wire0", &[IX_ECHO, "server"]);
    let launched = t0.elapsed();
    let registered_ms = echo["registered_ms"].as_u64().unwrap();

    let mut cfg = libix::Config::memif_slave(d.wire(), Ipv4Addr::new(10, 77, 0, 2));
    // The wire's ports have two queues: both ends open them all.
    cfg.max_cores = Some(2);
    cfg.pool_buffers = 1024;
    cfg.hugepages = false;
    let client = EchoClientConfig {
        server: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 7),
        connections: 1,
        size: MessageSize::Fixed(64),
        messages_per_conn: Some(1),
        warmup: Duration::ZERO,
        duration: None,
        deadline: Duration::from_secs(10),
    };
    let sink = ResultSink::default();
    let sink2 = sink.clone();
    let dp = libix::Dataplane::start(cfg, move |_| EchoClient::new(client.clone(), sink2.clone()))
        .unwrap();
    dp.join().unwrap();
    let served = t0.elapsed();
    let r = EchoClientResult::collect(&sink).unwrap();
    assert_eq!((r.completed, r.verified_bytes, r.corrupt_bytes), (1, 64, 0));
    eprintln!(
        "launch timing: registered {registered_ms} ms after start (ixcpd), `ixctl launch` \
         returned after {} ms, first echo served {} ms after `ixctl launch` began",
        launched.as_millis(),
        served.as_millis()
    );
    assert!(
        served < Duration::from_secs(2),
        "launch to first echo took {served:?}"
    );
}

/// `ixctl up` starts the `ixcpd` built next to it once, and says so when
/// one already answers.
#[test]
fn ixctl_up_starts_ixcpd_once() {
    let ixcpd = Path::new(IXCTL).with_file_name("ixcpd");
    if !ixcpd.is_file() {
        eprintln!(
            "SKIPPED: {} is not built (cargo test --workspace builds it)",
            ixcpd.display()
        );
        return;
    }
    let dir = tempfile::Builder::new().prefix("ix-up-").tempdir().unwrap();
    let socket = dir.path().join("ixcpd.sock");
    let ixctl = |args: &[&str]| {
        Command::new(IXCTL)
            .args(args)
            .env("IX_SOCKET", &socket)
            .output()
            .unwrap()
    };
    let out = ixctl(&["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("ixcpd started (pid "), "{text}");
    let status: Value = serde_json::from_slice(&ixctl(&["status", "--json"]).stdout).unwrap();
    let pid = status["daemon"]["pid"].as_i64().unwrap() as i32;
    let again = String::from_utf8(ixctl(&["up"]).stdout).unwrap();
    assert!(
        again.starts_with(&format!("ixcpd already running (pid {pid})")),
        "{again}"
    );
    let resources = String::from_utf8(ixctl(&["resources"]).stdout).unwrap();
    assert!(resources.contains("wire0-peer"), "{resources}");
    // SAFETY: kill() takes no pointers; `pid` is the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t0 = Instant::now();
    while socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(5), "ixcpd did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}
