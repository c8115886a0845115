//! `ixctl cores` on a running dataplane: the echo server, launched by
//! ixcpd on one core, grows to two and shrinks back, again and again,
//! while a client on the wire's other end keeps many connections busy —
//! every byte comes back exactly once and in order, no connection breaks,
//! and the books follow each step. Cores are oversubscribed on a 2-core
//! machine (the client runs here too): a correctness test.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use ix_tools::echo::{EchoClient, EchoClientConfig, EchoClientResult, MessageSize, ResultSink};
use serde_json::Value;
use support::Ixcpd;

mod support;

const IX_ECHO: &str = env!("CARGO_BIN_EXE_ix-echo");

/// An ixcpd on a thread with a memif wire of two queues: `wire0` (master,
/// 10.77.0.1) and `wire0-peer` (slave, 10.77.0.2).
fn start_ixcpd() -> Ixcpd {
    Ixcpd::start_with("ix-elastic-", |dir| {
        let wire = dir.join("wire0.sock");
        format!(
            "[[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = {wire:?}\nrole = \"master\"\n\
             queues = 2\nip = \"10.77.0.1/24\"\n\
             [[ports]]\nname = \"wire0-peer\"\nkind = \"memif\"\nsocket = {wire:?}\n\
             role = \"slave\"\nqueues = 2\nip = \"10.77.0.2/24\"\n"
        )
    })
}

/// An echo client in this process on the wire's other end: `conns`
/// connections of random-size messages for `run`.
fn client(wire: &Path, conns: usize, run: Duration) -> (libix::Dataplane, ResultSink) {
    let mut cfg = libix::Config::memif_slave(wire, Ipv4Addr::new(10, 77, 0, 2));
    cfg.max_cores = Some(2);
    cfg.pool_buffers = 4096;
    cfg.hugepages = false;
    let cfg_client = EchoClientConfig {
        server: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 7),
        connections: conns,
        size: MessageSize::Random {
            min: 1,
            max: 4096,
            seed: 3,
        },
        messages_per_conn: None,
        warmup: Duration::ZERO,
        duration: Some(run),
        deadline: run + Duration::from_secs(30),
    };
    let sink = ResultSink::default();
    let out = sink.clone();
    let dp = libix::Dataplane::start(cfg, move |_| {
        EchoClient::new(cfg_client.clone(), out.clone())
    })
    .expect("the client starts");
    (dp, sink)
}

fn dataplane(d: &Ixcpd, name: &str) -> Value {
    let status = d.json(&["status"]);
    status["dataplanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {status}"))
}

fn free_cores(d: &Ixcpd) -> usize {
    d.json(&["resources"])["cores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["owner"].is_null())
        .count()
}

#[test]
fn ixctl_cores_grows_and_shrinks_a_running_echo_server_under_load() {
    let d = start_ixcpd();
    let total = d.json(&["resources"])["cores"].as_array().unwrap().len();
    if total < 2 {
        eprintln!("SKIPPED: ixcpd has {total} core to give out; resizing needs two");
        return;
    }
    let launched: Value = serde_json::from_str(&d.ok(&[
        "launch", "--name", "echo", "--cores", "1", "--port", "wire0", "--json", "--", IX_ECHO,
        "server",
    ]))
    .unwrap();
    assert_eq!(launched["dataplane"]["cpus"].as_array().unwrap().len(), 1);
    let run = Duration::from_secs(6);
    let (client, sink) = client(&d.dir.path().join("wire0.sock"), 32, run);
    let began = Instant::now();
    let mut steps = Vec::new();
    while began.elapsed() + Duration::from_millis(1500) < run {
        std::thread::sleep(Duration::from_millis(300));
        let want = if steps.last() == Some(&2) { 1 } else { 2 };
        let reply = d.json(&["cores", "echo", &want.to_string()]);
        assert_eq!(
            reply["cpus"].as_array().map(Vec::len),
            Some(want),
            "ixctl cores echo {want}: {reply}"
        );
        let dp = dataplane(&d, "echo");
        assert_eq!(dp["state"], "running");
        assert_eq!(dp["cpus"].as_array().unwrap().len(), want, "{dp}");
        assert_eq!(free_cores(&d), total - want);
        let stats = d.json(&["stats", "echo"]);
        assert_eq!(stats["cores"].as_array().unwrap().len(), want, "{stats}");
        steps.push(want);
    }
    client.join().expect("the client ran");
    let r = EchoClientResult::collect(&sink).expect("the client stored its result");
    eprintln!(
        "ixctl cores steps {steps:?}: {} round trips, {} bytes verified, {} corrupt, {} failed, \
         {} closed",
        r.completed, r.verified_bytes, r.corrupt_bytes, r.failed_conns, r.closed_conns
    );
    assert!(steps.len() >= 6, "only {} resizes", steps.len());
    assert!(!r.timed_out, "the client hit its deadline");
    assert_eq!(r.corrupt_bytes, 0, "bytes differed from what was sent");
    assert_eq!(r.failed_conns, 0, "connections broke");
    assert_eq!(r.closed_conns, 32, "every connection closed in order");
    assert!(r.completed > 500, "only {} round trips", r.completed);

    // Asking for more than the port has queues names what is short.
    let out = d.ixctl(&["cores", "echo", "3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue") || err.contains("core"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");

    // Stopping the dataplane returns everything.
    d.ok(&["stop", "echo"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while free_cores(&d) != total {
        assert!(Instant::now() < deadline, "cores not back after stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
