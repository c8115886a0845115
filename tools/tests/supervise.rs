//! Supervision end to end, with the real `ixcpd` binary (so that it can be
//! killed like a crashed daemon): per-core stats of a launched `ix-echo`
//! server moving under traffic (`ixctl stats --json`, `--watch`); ixcpd
//! killed with SIGKILL and started again on the same socket and config,
//! the dataplane still `running` with its resources counted, reattached,
//! publishing through the page it handed back; `kill -9` of the re-adopted
//! dataplane giving every resource back within a second; `ixctl stop` of
//! a re-adopted dataplane; and the output of a re-adopted program in
//! `ixctl logs`.
//!
//! `ixcpd` is the binary built next to `ixctl` (`cargo test --workspace`,
//! or `cargo build -p ix-control-plane` first); without it the test says
//! SKIPPED. This test process makes itself a child subreaper, so that the
//! dataplanes a killed ixcpd leaves behind are reparented to it and
//! reaped here; every process and file it makes is gone when it ends,
//! also when it fails (the daemons' logs are printed then).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ix_tools::echo::{EchoClient, EchoClientConfig, EchoClientResult, MessageSize, ResultSink};
use serde_json::Value;
use support::{ixctl_json, ixctl_ok, IXCTL};

mod support;

const IX_ECHO: &str = env!("CARGO_BIN_EXE_ix-echo");

/// A directory with an ixcpd config (memif wire `wire0` master 10.77.0.1,
/// `wire0-peer` slave 10.77.0.2) and the ixcpd processes run on it.
struct Site {
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    ixcpd: PathBuf,
    daemon: Option<Child>,
    started: u32,
    /// Dataplane pids to kill on the way out.
    dataplanes: Vec<u32>,
}

impl Site {
    fn new(ixcpd: PathBuf) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("ix-supervise-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("ixcpd.sock");
        let wire = dir.path().join("wire0.sock");
        let config = dir.path().join("ixcpd.toml");
        std::fs::write(
            &config,
            format!(
                "cores = \"all\"\nmemory = \"64 MiB\"\nhugepages = \"off\"\n\
                 [api]\nsocket = {socket:?}\n\
                 [[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = {wire:?}\nrole = \"master\"\n\
                 queues = 2\nip = \"10.77.0.1/24\"\n\
                 [[ports]]\nname = \"wire0-peer\"\nkind = \"memif\"\nsocket = {wire:?}\n\
                 role = \"slave\"\nqueues = 2\nip = \"10.77.0.2/24\"\n"
            ),
        )
        .unwrap();
        Site {
            dir,
            socket,
            config,
            ixcpd,
            daemon: None,
            started: 0,
            dataplanes: Vec::new(),
        }
    }

    /// Starts ixcpd in the foreground, its log in the directory, and waits
    /// until it answers.
    fn start_ixcpd(&mut self) {
        self.started += 1;
        let log =
            File::create(self.dir.path().join(format!("ixcpd-{}.log", self.started))).unwrap();
        let child = Command::new(&self.ixcpd)
            .arg("--foreground")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        wait(Duration::from_secs(5), "ixcpd answering", || {
            self.ixctl(&["status"]).status.success()
        });
    }

    /// Kills ixcpd as a crash would: SIGKILL, nothing cleaned up.
    fn kill_ixcpd(&mut self) {
        let mut child = self.daemon.take().expect("ixcpd running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn ixctl(&self, args: &[&str]) -> Output {
        support::ixctl(&self.socket, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        ixctl_ok(&self.socket, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        ixctl_json(&self.socket, args)
    }

    /// Launches `ix-echo server` as dataplane `name` on wire0; its pid.
    fn launch_echo(&mut self, name: &str) -> u32 {
        let out: Value = serde_json::from_str(&self.ok(&[
            "launch", "--name", name, "--cores", "1", "--port", "wire0", "--json", "--", IX_ECHO,
            "server",
        ]))
        .unwrap();
        let pid = out["pid"].as_u64().unwrap() as u32;
        self.dataplanes.push(pid);
        pid
    }

    /// Free cores, used memory, free ports.
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

    fn dataplane(&self, name: &str) -> Option<Value> {
        self.json(&["status"])["dataplanes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
    }

    /// Core 0 of `name`'s stats.
    fn core0(&self, name: &str) -> Value {
        self.json(&["stats", name])["cores"][0].clone()
    }

    fn logs(&self, name: &str) -> String {
        self.ok(&["logs", name])
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for &pid in &self.dataplanes {
            // SAFETY: kill() takes no pointers; these are our dataplanes.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            reap(pid);
        }
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for i in 1..=self.started {
                let path = self.dir.path().join(format!("ixcpd-{i}.log"));
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                eprintln!("---- ixcpd #{i} ----\n{log}");
            }
        }
    }
}

/// Waits up to `limit` for `done`; how long it took.
fn wait(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

/// Collects the exit of `pid` if it is (now) this process's child.
fn reap(pid: u32) {
    // SAFETY: waitpid with a null status pointer; WNOHANG never blocks.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// An echo client dataplane in this process on the wire's other end:
/// `conns` connections for `secs` seconds. Its result.
fn traffic(wire: &Path, conns: usize, secs: u64) -> EchoClientResult {
    let mut cfg = libix::Config::memif_slave(wire, Ipv4Addr::new(10, 77, 0, 2));
    // The wire's ports have two queues: both ends open them all.
    cfg.max_cores = Some(2);
    cfg.pool_buffers = 1024;
    cfg.hugepages = false;
    let client = EchoClientConfig {
        server: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 7),
        connections: conns,
        size: MessageSize::Fixed(64),
        messages_per_conn: None,
        warmup: Duration::ZERO,
        duration: Some(Duration::from_secs(secs)),
        deadline: Duration::from_secs(secs + 20),
    };
    let sink = ResultSink::default();
    let sink2 = sink.clone();
    let dp = libix::Dataplane::start(cfg, move |_| EchoClient::new(client.clone(), sink2.clone()))
        .unwrap();
    dp.join().unwrap();
    EchoClientResult::collect(&sink).unwrap()
}

fn ixcpd_binary() -> Option<PathBuf> {
    let path = Path::new(IXCTL).with_file_name("ixcpd");
    if path.is_file() {
        return Some(path);
    }
    eprintln!(
        "SKIPPED: {} is not built (cargo test --workspace builds it; or cargo build -p \
         ix-control-plane)",
        path.display()
    );
    None
}

fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer flag only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

#[test]
fn stats_move_under_traffic_and_a_restarted_ixcpd_readopts_its_dataplanes() {
    let Some(ixcpd) = ixcpd_binary() else {
        return;
    };
    become_subreaper();
    let mut site = Site::new(ixcpd);
    site.start_ixcpd();
    let total = site.json(&["resources"])["cores"].as_array().unwrap().len();
    let wire = site.dir.path().join("wire0.sock");

    // A launched server's core waits for its wire's peer before its loop
    // runs: a record, nothing published yet.
    let pid = site.launch_echo("echo");
    let waiting = site.core0("echo");
    assert_eq!(
        (waiting["cpu"].as_u64(), waiting["publishes"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(waiting["age_ms"].is_null(), "{waiting}");

    // Under traffic the counters move, and the watch sees rates.
    let watcher = {
        let socket = site.socket.clone();
        std::thread::spawn(move || {
            Command::new(IXCTL)
                .arg("--socket")
                .arg(&socket)
                .args([
                    "stats",
                    "echo",
                    "--watch",
                    "--interval",
                    "0.3",
                    "--count",
                    "4",
                    "--json",
                ])
                .output()
                .unwrap()
        })
    };
    let result = traffic(&wire, 4, 1);
    assert_eq!((result.corrupt_bytes, result.failed_conns), (0, 0));
    assert!(result.completed > 100, "{} round trips", result.completed);
    let watched = watcher.join().unwrap();
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(watched.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0]["rates"].as_array().unwrap().is_empty());
    let busiest = lines[1..]
        .iter()
        .filter_map(|l| l["rates"][0]["rx_pps"].as_f64())
        .fold(0.0, f64::max);
    assert!(busiest > 100.0, "rates seen: {lines:?}");
    // Counts are as of the last publication (every 10 ms): wait for two
    // more, so that they cover the end of the traffic.
    let seen = site.core0("echo")["publishes"].as_u64().unwrap();
    wait(
        Duration::from_secs(2),
        "publications after the traffic",
        || site.core0("echo")["publishes"].as_u64().unwrap() >= seen + 2,
    );
    let busy = site.core0("echo");
    let rx = busy["rx_packets"].as_u64().unwrap();
    assert!(
        rx >= result.completed,
        "{rx} frames for {} round trips: {busy}",
        result.completed
    );
    assert!(busy["tx_packets"].as_u64().unwrap() >= result.completed);
    assert!(busy["batches"].as_u64().unwrap() > 0 && busy["events"].as_u64().unwrap() > 0);
    assert!(busy["avg_batch_milli"].as_u64().unwrap() >= 1000, "{busy}");
    // Between bursts of traffic the loop idles, and says so.
    wait(Duration::from_secs(2), "the idle fraction back up", || {
        site.core0("echo")["avg_idle_ppm"].as_u64() > Some(500_000)
    });
    assert!(site.core0("echo")["age_ms"].as_u64().unwrap() < 1000);
    let table = site.ok(&["stats", "echo"]);
    assert!(
        table.contains("CORE  CPU  GROUPS") && table.contains("lifeline open"),
        "{table}"
    );

    // ixcpd dies; the dataplane does not.
    let used = site.free();
    assert_eq!((used.0, used.2), (total - 1, 1));
    site.kill_ixcpd();
    assert!(alive(pid), "the dataplane outlives ixcpd");
    site.start_ixcpd();
    let echo = site.dataplane("echo").expect("known again");
    assert_eq!(echo["state"], "running");
    assert_eq!(echo["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(site.free(), used, "its resources are counted as used");
    let took = wait(Duration::from_secs(5), "the dataplane reattaching", || {
        site.dataplane("echo")
            .is_some_and(|d| d["lifeline"] == true)
    });
    eprintln!("reattached {took:?} after the new ixcpd answered");
    // The page came back with it: publications go on, traffic counts.
    let before = site.core0("echo");
    assert!(site.json(&["stats", "echo"])["note"].is_null());
    let again = traffic(&wire, 2, 1);
    assert_eq!(again.corrupt_bytes, 0);
    let seen = site.core0("echo")["publishes"].as_u64().unwrap();
    wait(
        Duration::from_secs(2),
        "publications after the traffic",
        || site.core0("echo")["publishes"].as_u64().unwrap() >= seen + 2,
    );
    let after = site.core0("echo");
    assert!(after["publishes"].as_u64() > before["publishes"].as_u64());
    assert!(
        after["rx_packets"].as_u64().unwrap()
            >= before["rx_packets"].as_u64().unwrap() + again.completed
    );
    let logs = site.logs("echo");
    assert!(logs.contains("re-adopted after an ixcpd restart"), "{logs}");
    assert!(logs.contains(&format!("reattached by pid {pid}")), "{logs}");
    assert!(
        logs.contains("stderr: ix-echo: registered as echo"),
        "output read again: {logs}"
    );
    assert!(
        logs.contains("reattached to ixcpd after"),
        "the dataplane's side: {logs}"
    );

    // kill -9 of the re-adopted dataplane: everything back within 1 s.
    // SAFETY: kill() takes no pointers; `pid` is the dataplane launched above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let took = wait(
        Duration::from_secs(1),
        "resources back after kill -9",
        || site.free() == (total, 0, 2),
    );
    eprintln!("kill -9 of a re-adopted dataplane → resources free in {took:?}");
    reap(pid);

    // `ixctl stop` of a re-adopted dataplane.
    let pid = site.launch_echo("echo2");
    site.kill_ixcpd();
    site.start_ixcpd();
    wait(Duration::from_secs(5), "echo2 reattaching", || {
        site.dataplane("echo2")
            .is_some_and(|d| d["lifeline"] == true)
    });
    let stopped = site.ok(&["stop", "echo2"]);
    assert!(
        stopped.contains(&format!("SIGTERM sent to pid {pid}")),
        "{stopped}"
    );
    wait(Duration::from_secs(3), "resources back after stop", || {
        site.free() == (total, 0, 2)
    });
    assert!(site.logs("echo2").contains("lifeline closed"));
    reap(pid);
    assert!(!alive(pid));
}

#[test]
fn a_dataplane_that_dies_while_ixcpd_is_down_is_released_on_start() {
    let Some(ixcpd) = ixcpd_binary() else {
        return;
    };
    become_subreaper();
    let mut site = Site::new(ixcpd);
    site.start_ixcpd();
    let total = site.json(&["resources"])["cores"].as_array().unwrap().len();
    let pid = site.launch_echo("echo");
    site.kill_ixcpd();
    // SAFETY: kill() takes no pointers; `pid` is the dataplane launched above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait(Duration::from_secs(2), "the dataplane gone", || {
        reap(pid);
        !alive(pid)
    });
    site.start_ixcpd();
    assert!(site.dataplane("echo").is_none());
    assert_eq!(site.free(), (total, 0, 2));
    let logs = site.logs("echo");
    assert!(
        logs.contains(&format!("pid {pid} exited while no ixcpd ran")),
        "{logs}"
    );
}
