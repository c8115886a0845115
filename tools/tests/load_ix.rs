//! `ixload`'s ix transport end to end: the generator's libix dataplane
//! (memif slave) against a small memcached written here on libix (memif
//! master), both in this process over a memif wire. The fake server
//! stores each key's value length on SET and answers GETs with that many
//! bytes, so the generator's hit check and value-length check are real.
//! Two sessions run one after the other against the same server: the
//! second reconnects the wire and reuses the ports of the first.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ix_tools::load::{self, LoadParams, Target, Transport, WorkloadKind, WorkloadSpec};
use libix::{App, Config, Conn, Cx, Dataplane, Dead, FourTuple, Knock, RxBuf, TxBuf};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const PORT: u16 = 11211;

#[derive(Default)]
struct KvsConn {
    /// Request bytes not yet parsed.
    input: Vec<u8>,
    /// Reply bytes the send window did not take.
    backlog: Vec<TxBuf>,
}

/// A memcached that remembers value lengths (not contents).
#[derive(Default)]
struct FakeKvs {
    lens: HashMap<Vec<u8>, usize>,
    conns: HashMap<Conn, KvsConn>,
}

/// Parses one complete request at the front of `input`: its length and
/// the reply, or `None` if more bytes are needed.
fn answer(input: &[u8], lens: &mut HashMap<Vec<u8>, usize>) -> Option<(usize, Vec<u8>)> {
    let nl = input.windows(2).position(|w| w == b"\r\n")?;
    let words: Vec<&[u8]> = input[..nl].split(|&b| b == b' ').collect();
    match words.as_slice() {
        [b"get", key] => {
            let reply = match lens.get(*key) {
                Some(&n) => {
                    let mut r = b"VALUE ".to_vec();
                    r.extend_from_slice(key);
                    r.extend_from_slice(format!(" 0 {n}\r\n").as_bytes());
                    r.resize(r.len() + n, b'v');
                    r.extend_from_slice(b"\r\nEND\r\n");
                    r
                }
                None => b"END\r\n".to_vec(),
            };
            Some((nl + 2, reply))
        }
        [b"set", key, _flags, _exp, n] => {
            let n: usize = std::str::from_utf8(n).ok()?.parse().ok()?;
            let total = nl + 2 + n + 2;
            if input.len() < total {
                return None;
            }
            lens.insert(key.to_vec(), n);
            Some((total, b"STORED\r\n".to_vec()))
        }
        _ => Some((nl + 2, b"ERROR\r\n".to_vec())),
    }
}

impl FakeKvs {
    fn push(&mut self, cx: &mut Cx, conn: Conn) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.backlog.is_empty() {
            return;
        }
        let Ok(mut taken) = cx.sendv(conn, &c.backlog) else {
            c.backlog.clear();
            return;
        };
        let mut done = 0;
        for b in c.backlog.iter_mut() {
            if taken >= b.len() {
                taken -= b.len();
                done += 1;
            } else {
                b.advance(taken);
                break;
            }
        }
        c.backlog.drain(..done);
    }
}

impl App for FakeKvs {
    fn start(&mut self, cx: &mut Cx) {
        cx.listen(PORT).expect("port is free");
    }

    fn knock(&mut self, _cx: &mut Cx, conn: Conn, _peer: FourTuple) -> Knock {
        self.conns.insert(conn, KvsConn::default());
        Knock::Accept
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.input.extend_from_slice(&data);
        let mut replies = Vec::new();
        let mut used = 0;
        while let Some((n, reply)) = answer(&c.input[used..], &mut self.lens) {
            used += n;
            replies.extend_from_slice(&reply);
        }
        c.input.drain(..used);
        if !replies.is_empty() {
            c.backlog.push(TxBuf::from_vec(replies));
            self.push(cx, conn);
        }
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        self.push(cx, conn);
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        self.conns.remove(&conn);
        if matches!(why, Dead::PeerClosed) {
            let _ = cx.close(conn);
        }
    }
}

#[test]
fn ix_sessions_against_a_libix_memcached_hit_every_get() {
    let dir = tempfile::Builder::new()
        .prefix("ixload-ix-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("memif.sock");
    let mut cfg = Config::memif_master(&sock, SERVER_IP);
    cfg.hugepages = false;
    cfg.link_timeout = Duration::from_secs(20);
    let server = Dataplane::start(cfg, |_| FakeKvs::default()).unwrap();

    let target = Target {
        transport: Transport::Ix {
            memif: sock.clone(),
            ip: CLIENT_IP,
            queues: 1,
        },
        server: SocketAddrV4::new(SERVER_IP, PORT),
        server_pid: Some(std::process::id()),
        cpu: None,
    };
    let params = LoadParams {
        rate: 20_000.0,
        workload: WorkloadSpec {
            keys: 5_000,
            ..WorkloadSpec::new(WorkloadKind::Etc)
        },
        connections: 16,
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        ..LoadParams::default()
    };
    let first = load::run_point(&target, &params);
    let second = load::run_points(
        &target,
        &LoadParams {
            duration: Duration::from_millis(500),
            ..params.clone()
        },
        &[5_000.0, 10_000.0],
    );
    server.stop();
    let report = server.join().unwrap();

    let r = first.unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!(r.transport, "ix");
    assert_eq!((r.errors, r.misses, r.dropped), (0, 0, 0), "{r:?}");
    assert!(r.gets > 10_000 && r.hits == r.gets, "{r:?}");
    assert!(r.sets > 3_000, "{r:?}");
    let rel = (r.achieved_rps - 20_000.0).abs() / 20_000.0;
    assert!(rel < 0.1, "achieved {} of 20000/s", r.achieved_rps);
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.p99);
    assert!(r.client_cpu.is_some() && r.server_cpu.is_some());

    let points = second.expect("a second session reconnects to the same server");
    assert_eq!(points.len(), 2);
    for p in &points {
        assert_eq!((p.errors, p.misses), (0, 0), "{p:?}");
        assert!(p.hits == p.gets && p.gets > 0);
        let rel = (p.achieved_rps - p.offered_rps).abs() / p.offered_rps;
        assert!(rel < 0.15, "{p:?}");
    }
    // Every session closed its connections in order: no reset either way.
    let tcp = &report.cores[0].tcp;
    assert_eq!((tcp.rst_sent, tcp.rst_received), (0, 0), "{tcp:?}");
}
