//! Interop with the Linux kernel's TCP: python3 sockets in a network
//! namespace, reached over a veth pair whose root-side end our dataplane
//! drives with af_packet. Both directions, ≥ 10 MiB verified, orderly close.
//!
//! Needs root (namespaces, veth, raw sockets) and python3; prints
//! `SKIPPED: …` otherwise.

use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ix_testnet::TestNet;
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use libix::{Config, Dataplane};

const TEN_MIB: usize = 10 * 1024 * 1024;

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/linux_peer.py")
}

fn have_python() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn setup(prefix: &str) -> Option<TestNet> {
    if !have_python() {
        eprintln!("SKIPPED: python3 not installed");
        return None;
    }
    TestNet::veth_pair(prefix)
}

fn dataplane_config(net: &TestNet) -> Config {
    let mut cfg = Config::af_packet(net.host_if(), net.dp_ip());
    cfg.prefix_len = net.prefix_len();
    cfg.hugepages = false;
    cfg
}

#[test]
fn linux_client_to_our_echo_server_ten_mib_verified() {
    let Some(net) = setup("ixi-srv") else { return };
    let dp = Dataplane::start(dataplane_config(&net), |_| EchoServer::new(7))
        .expect("dataplane starts on the veth");
    // The kernel's ping gets answers from our ICMP.
    let ping = net
        .run_in_ns("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &net.dp_ip().to_string()])
        .output();
    match ping {
        Ok(p) => assert!(
            p.status.success(),
            "ping failed: {}",
            String::from_utf8_lossy(&p.stdout)
        ),
        Err(e) => eprintln!("SKIPPED: ping part: cannot run ping ({e}); install iputils-ping"),
    }
    let out = net
        .run_in_ns("python3")
        .arg(peer_script())
        .args([
            "client",
            &net.dp_ip().to_string(),
            "7",
            &TEN_MIB.to_string(),
        ])
        .output()
        .expect("run the Linux client");
    dp.stop();
    let report = dp.join().expect("dataplane ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Linux client failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON summary");
    assert_eq!(v["ok"], true);
    assert_eq!(v["received"], TEN_MIB);
    let tcp = report.cores[0].tcp;
    assert!(tcp.segs_in > 0);
    // Orderly: both sides closed with FIN, nobody reset.
    assert_eq!((tcp.rst_sent, tcp.rst_received), (0, 0), "{tcp:?}");
}

#[test]
fn our_client_to_linux_echo_server_ten_mib_verified() {
    let Some(net) = setup("ixi-cli") else { return };
    let mut server = net
        .run_in_ns("python3")
        .arg(peer_script())
        .args(["server", &net.ns_ip().to_string(), "5001"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Linux server");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().expect("server prints when listening").unwrap();
    assert!(first.contains("listening"), "{first}");

    let out = ResultSink::default();
    let out2 = out.clone();
    let client = EchoClientConfig {
        server: SocketAddrV4::new(net.ns_ip(), 5001),
        connections: 1,
        size: MessageSize::Fixed(64 * 1024),
        messages_per_conn: Some((TEN_MIB / (64 * 1024)) as u64),
        warmup: Duration::ZERO,
        duration: None,
        deadline: Duration::from_secs(120),
    };
    let dp = Dataplane::start(dataplane_config(&net), move |_| {
        EchoClient::new(client.clone(), out2.clone())
    })
    .expect("dataplane starts on the veth");
    let report = dp.join().expect("dataplane ran");
    let tcp = report.cores[0].tcp;
    assert_eq!((tcp.rst_sent, tcp.rst_received), (0, 0), "{tcp:?}");
    let r = EchoClientResult::collect(&out).expect("client result");
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.failed_conns, 0);
    assert_eq!(r.corrupt_bytes, 0);
    assert_eq!(r.verified_bytes, TEN_MIB as u64);
    assert_eq!(r.closed_conns, 1);

    let status = server.wait().expect("server exits");
    let summary = lines.next().expect("server summary").unwrap();
    assert!(status.success(), "Linux server failed: {summary}");
    let v: serde_json::Value = serde_json::from_str(&summary).expect("JSON summary");
    assert_eq!(v["ok"], true);
    assert_eq!(v["echoed"], TEN_MIB);
}
