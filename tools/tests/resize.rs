//! Adding and removing cores of a running echo server while a client
//! keeps many connections busy: every byte comes back exactly once and in
//! order, and no connection breaks — also when the client's wire loses,
//! duplicates and reorders frames. The same for ixkvs, whose sessions move
//! with their connections. Cores are oversubscribed on a 2-core
//! machine (three elastic threads plus this test): it checks correctness,
//! not speed.

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::nic::fault::FaultConfig;
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use ix_tools::kvs::ix_server;
use ix_tools::kvs::store::StoreConfig;
use ix_tools::kvs::Kvs;
use libix::{App, Config, Conn, Cx, Dataplane, Dead, RxBuf, TxBuf};

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

/// A KVS client: on each connection, `set` a value that changes every
/// round, then `get` it, pipelined in one send, and checks the reply
/// byte for byte. Every [`ROUNDS_PER_CONN`] rounds a connection closes and
/// a new one opens in its place, so handshakes meet migrations too.
struct KvsChecker {
    server: SocketAddrV4,
    conns: Vec<KvsConn>,
    until: Option<libix::Instant>,
    run: Duration,
    out: Arc<Mutex<KvsTally>>,
}

struct KvsConn {
    conn: Option<Conn>,
    round: u64,
    unsent: Option<TxBuf>,
    expected: Vec<u8>,
    got: Vec<u8>,
}

/// What the KVS clients saw.
#[derive(Debug, Default)]
struct KvsTally {
    rounds: u64,
    wrong: u64,
    broken: u64,
    opened: u64,
    closed: u64,
}

/// Rounds on one connection before it is replaced by a new one.
const ROUNDS_PER_CONN: u64 = 20;

impl KvsChecker {
    fn next_round(&mut self, cx: &mut Cx, i: usize) {
        let c = &mut self.conns[i];
        c.round += 1;
        let len = 1 + (c.round as usize * 37 + i * 101) % 3000;
        let value: Vec<u8> = (0..len)
            .map(|j| b'a' + ((j as u64 + c.round + i as u64) % 26) as u8)
            .collect();
        let mut req = format!("set k{i} {} 0 {len}\r\n", c.round % 1000).into_bytes();
        req.extend_from_slice(&value);
        req.extend_from_slice(format!("\r\nget k{i}\r\n").as_bytes());
        c.expected = format!("STORED\r\nVALUE k{i} {} {len}\r\n", c.round % 1000).into_bytes();
        c.expected.extend_from_slice(&value);
        c.expected.extend_from_slice(b"\r\nEND\r\n");
        c.got.clear();
        c.unsent = Some(TxBuf::from_vec(req));
        self.push(cx, i);
    }

    fn push(&mut self, cx: &mut Cx, i: usize) {
        let c = &mut self.conns[i];
        let (Some(conn), Some(buf)) = (c.conn, c.unsent.as_mut()) else {
            return;
        };
        match cx.sendv(conn, std::slice::from_ref(buf)) {
            Ok(n) if n >= buf.len() => c.unsent = None,
            Ok(n) => buf.advance(n),
            Err(_) => c.unsent = None,
        }
    }

    fn slot(&self, conn: Conn) -> Option<usize> {
        self.conns.iter().position(|c| c.conn == Some(conn))
    }

    fn close(&mut self, cx: &mut Cx, i: usize) {
        if let Some(conn) = self.conns[i].conn.take() {
            let closed = cx.close(conn).is_ok();
            self.out.lock().unwrap().closed += u64::from(closed);
        }
    }

    fn finish(&mut self, cx: &mut Cx, i: usize) {
        self.close(cx, i);
        if self.conns.iter().all(|c| c.conn.is_none()) {
            cx.stop();
        }
    }

    fn open(&mut self, cx: &mut Cx, i: usize) {
        self.conns[i].conn = cx.connect(self.server).ok();
        let mut t = self.out.lock().unwrap();
        t.opened += 1;
        t.broken += u64::from(self.conns[i].conn.is_none());
    }
}

impl App for KvsChecker {
    fn start(&mut self, cx: &mut Cx) {
        self.until = Some(cx.now() + self.run);
        for i in 0..self.conns.len() {
            self.open(cx, i);
        }
        cx.arm_timer(self.run + Duration::from_secs(30), 1).unwrap();
    }

    fn connected(&mut self, cx: &mut Cx, conn: Conn, result: Result<(), libix::ConnectError>) {
        let Some(i) = self.slot(conn) else { return };
        if result.is_ok() {
            self.next_round(cx, i);
        } else {
            self.out.lock().unwrap().broken += 1;
            self.conns[i].conn = None;
        }
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        let Some(i) = self.slot(conn) else { return };
        let c = &mut self.conns[i];
        c.got.extend_from_slice(&data);
        if c.got.len() < c.expected.len() {
            return;
        }
        {
            let mut t = self.out.lock().unwrap();
            t.rounds += 1;
            t.wrong += u64::from(c.got != c.expected);
        }
        if self.until.is_some_and(|u| cx.now() >= u) {
            self.finish(cx, i);
        } else if self.conns[i].round.is_multiple_of(ROUNDS_PER_CONN) {
            self.close(cx, i);
            self.open(cx, i);
        } else {
            self.next_round(cx, i);
        }
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        if let Some(i) = self.slot(conn) {
            self.push(cx, i);
        }
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, _why: Dead) {
        if let Some(i) = self.slot(conn) {
            self.out.lock().unwrap().broken += 1;
            self.conns[i].conn = None;
            if self.conns.iter().all(|c| c.conn.is_none()) {
                cx.stop();
            }
        }
    }

    fn timer(&mut self, cx: &mut Cx, _token: u64) {
        cx.stop();
    }
}

#[test]
fn ixkvs_sessions_move_with_their_connections_while_cores_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kvs.sock");
    let mut server = Config::memif_master(&sock, SERVER_IP.into());
    server.max_cores = Some(2);
    let kvs = Kvs::shared(StoreConfig::default(), 2);
    let server = ix_server::start(server, kvs, 11211).expect("ixkvs starts");
    let mut client = Config::memif_slave(&sock, CLIENT_IP.into());
    client.max_cores = Some(2);
    // The client closes first: its TIME-WAITs must not fill its table.
    client.tcp.time_wait = Duration::from_millis(200);
    let tally = Arc::new(Mutex::new(KvsTally::default()));
    let (out, run, conns) = (tally.clone(), Duration::from_secs(4), 24);
    let client = Dataplane::start(client, move |_| KvsChecker {
        server: SocketAddrV4::new(SERVER_IP.into(), 11211),
        conns: (0..conns)
            .map(|_| KvsConn {
                conn: None,
                round: 0,
                unsent: None,
                expected: Vec::new(),
                got: Vec::new(),
            })
            .collect(),
        until: None,
        run,
        out: out.clone(),
    })
    .expect("client starts");
    let began = Instant::now();
    let mut sizes = Vec::new();
    while began.elapsed() + Duration::from_millis(750) < run {
        std::thread::sleep(Duration::from_millis(250));
        let want = if server.cores() == 1 { 2 } else { 1 };
        server
            .resize(&vec![None; want])
            .unwrap_or_else(|e| panic!("resize to {want} cores: {e}"));
        sizes.push(want);
    }
    client.join().expect("client ran");
    server.stop();
    let report = server.join().expect("server ran");
    let moved: u64 = report.cores.iter().map(|c| c.migration.exported).sum();
    let t = tally.lock().unwrap();
    eprintln!("ixkvs resizes {sizes:?}: {t:?}, connections moved {moved}");
    assert!(sizes.len() >= 6, "only {} resizes ran", sizes.len());
    assert!(moved >= conns as u64, "only {moved} connections moved");
    assert_eq!(t.wrong, 0, "replies differed from what was stored");
    assert_eq!(t.broken, 0, "connections broke");
    assert_eq!(t.closed, t.opened, "every connection closed in order");
    assert!(
        t.opened > 2 * conns as u64,
        "only {} connections opened",
        t.opened
    );
    assert!(t.rounds > 500, "only {} rounds", t.rounds);
}

/// An application that keeps nothing it could hand over.
struct Unmovable;

impl App for Unmovable {
    fn recv(&mut self, _cx: &mut Cx, _conn: Conn, _data: RxBuf) {}
}

#[test]
fn a_dataplane_whose_application_cannot_move_connections_is_not_resized() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::memif_master(dir.path().join("plain.sock"), SERVER_IP.into());
    cfg.max_cores = Some(2);
    let dp = Dataplane::start(cfg, |_| Unmovable).expect("starts");
    let err = dp.resize(&[None, None]).unwrap_err().to_string();
    assert!(err.contains("MIGRATES"), "{err}");
    assert_eq!(dp.cores(), 1);
    dp.stop();
    dp.join().expect("ran");
}
