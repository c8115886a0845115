//! Adding and removing cores of a running echo server while a client
//! keeps many connections busy: every byte comes back exactly once and in
//! order, and no connection breaks — also when the client's wire loses,
//! duplicates and reorders frames. Cores are oversubscribed on a 2-core
//! machine (three elastic threads plus this test): it checks correctness,
//! not speed.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use dataplane::nic::fault::FaultConfig;
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use libix::{Config, Dataplane};

const SERVER_IP: [u8; 4] = [10, 7, 7, 1];
const CLIENT_IP: [u8; 4] = [10, 7, 7, 2];
const PORT: u16 = 7;

/// Runs a one-core echo server (up to two cores) and a one-core client
/// with `conns` connections over a memif wire opened with two queues on
/// both ends, flipping the server between one and two cores every 250 ms
/// while the client runs for `run`. Returns the sizes the server went
/// through, the client's result and the connections the server's cores
/// handed over and took over in all.
fn echo_while_resizing(
    conns: usize,
    run: Duration,
    faults: Option<FaultConfig>,
) -> (Vec<usize>, EchoClientResult, (u64, u64)) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("resize.sock");
    let mut server = Config::memif_master(&sock, SERVER_IP.into());
    server.max_cores = Some(2);
    server.pool_buffers = 8192;
    let server = Dataplane::start(server, |_| EchoServer::new(PORT)).expect("server starts");
    let mut client = Config::memif_slave(&sock, CLIENT_IP.into());
    client.max_cores = Some(2);
    client.pool_buffers = 8192;
    client.faults = faults;
    let sink = ResultSink::default();
    let out = sink.clone();
    let cfg = EchoClientConfig {
        server: SocketAddrV4::new(SERVER_IP.into(), PORT),
        connections: conns,
        size: MessageSize::Random {
            min: 1,
            max: 8192,
            seed: 7,
        },
        messages_per_conn: None,
        warmup: Duration::ZERO,
        duration: Some(run),
        deadline: run + Duration::from_secs(30),
    };
    let client = Dataplane::start(client, move |_| EchoClient::new(cfg.clone(), out.clone()))
        .expect("client starts");
    let mut sizes = Vec::new();
    let began = Instant::now();
    while began.elapsed() + Duration::from_millis(750) < run {
        std::thread::sleep(Duration::from_millis(250));
        let want = if server.cores() == 1 { 2 } else { 1 };
        let got = server
            .resize(&vec![None; want])
            .unwrap_or_else(|e| panic!("resize to {want} cores: {e}"));
        assert_eq!((got, server.cores()), (want, want));
        let table = server.flow_groups();
        assert!(table.iter().all(|&q| usize::from(q) < want));
        if want == 2 {
            assert!(
                table.iter().filter(|&&q| q == 1).count() >= table.len() / 2 - 1,
                "the new core got about half of the flow groups"
            );
        }
        sizes.push(want);
    }
    client.join().expect("client ran");
    server.stop();
    let report = server.join().expect("server ran");
    let r = EchoClientResult::collect(&sink).expect("the client stored its result");
    let moved = report.cores.iter().fold((0, 0), |(e, i), c| {
        (e + c.migration.exported, i + c.migration.imported)
    });
    eprintln!(
        "resizes {sizes:?}: {} round trips, {} bytes verified, {} corrupt, {} failed, {} closed; \
         connections exported {}, imported {}; per core {:?}",
        r.completed,
        r.verified_bytes,
        r.corrupt_bytes,
        r.failed_conns,
        r.closed_conns,
        moved.0,
        moved.1,
        report.cores.iter().map(|c| c.migration).collect::<Vec<_>>()
    );
    (sizes, r, moved)
}

fn assert_intact(sizes: &[usize], r: &EchoClientResult, moved: (u64, u64), conns: usize) {
    assert!(sizes.len() >= 6, "only {} resizes ran", sizes.len());
    assert!(
        moved.0 >= conns as u64,
        "only {} connections moved between cores",
        moved.0
    );
    assert_eq!(
        moved.0, moved.1,
        "every connection handed over was taken over"
    );
    assert!(!r.timed_out, "the client hit its deadline");
    assert_eq!(r.corrupt_bytes, 0, "bytes differed from what was sent");
    assert_eq!(r.failed_conns, 0, "connections broke");
    assert_eq!(
        r.closed_conns, conns as u64,
        "every connection closed in order"
    );
    assert!(r.completed > 500, "only {} round trips", r.completed);
}

#[test]
fn cores_added_and_removed_under_echo_load_lose_no_byte_and_no_connection() {
    let (sizes, r, moved) = echo_while_resizing(64, Duration::from_secs(4), None);
    assert_intact(&sizes, &r, moved, 64);
}

#[test]
fn cores_added_and_removed_over_a_lossy_reordering_wire_keep_every_byte() {
    let faults = FaultConfig {
        seed: 11,
        drop: 0.01,
        duplicate: 0.01,
        reorder: 0.02,
        ..FaultConfig::default()
    };
    let (sizes, r, moved) = echo_while_resizing(32, Duration::from_secs(4), Some(faults));
    assert_intact(&sizes, &r, moved, 32);
}
