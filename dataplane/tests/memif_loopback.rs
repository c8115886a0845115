//! Two memif ports (master and slave) in one process over a socket in a
//! temporary directory: frames both ways with every byte checked, chained
//! buffers, ring wrap-around, back-pressure, disconnect and reconnect, and
//! a one-queue throughput blast.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::buf::{PktBuf, Pool, BUF_DATA};
use dataplane::nic::memif::{MemifConfig, MemifError, MemifPort, MemifQueue, MemifRole};
use dataplane::nic::QueuePair;

const WAIT: Duration = Duration::from_secs(10);

/// A directory removed (with whatever sockets are left) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ix-memif-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("memif.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cfg(path: &Path, role: MemifRole, log2: u8, bsize: u32) -> MemifConfig {
    MemifConfig {
        log2_ring_size: log2,
        buffer_size: bsize,
        ..MemifConfig::new(path, role)
    }
}

fn connect(master: MemifConfig, slave: MemifConfig) -> (MemifPort, MemifPort) {
    let m = MemifPort::open(master).unwrap();
    let s = MemifPort::open(slave).unwrap();
    m.wait_connected(WAIT).unwrap();
    s.wait_connected(WAIT).unwrap();
    (m, s)
}

/// Deterministic frame contents: the sequence number, then a pattern.
fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq * 7) as u8)
        .collect();
    let n = len.min(8);
    v[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    v
}

fn pkt(pool: &Pool, bytes: &[u8]) -> PktBuf {
    let mut b = pool.alloc().expect("pool has room");
    assert!(b.extend_from_slice(bytes));
    b
}

/// Sends `frames` from `tx` and receives them all on `rx`, in order,
/// checking every byte. Sends in bursts, receiving in between.
fn exchange(tx: &mut MemifQueue, rx: &mut MemifQueue, frames: &[Vec<u8>]) {
    let dropped_before = tx.stats().tx_dropped;
    let mut next_rx = 0;
    let mut sent = 0;
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while next_rx < frames.len() {
        assert!(Instant::now() < deadline, "stuck at frame {next_rx}");
        if sent < frames.len() {
            let end = (sent + 32).min(frames.len());
            let mut burst: Vec<PktBuf> = frames[sent..end]
                .iter()
                .map(|f| pkt(tx.pool(), f))
                .collect();
            sent += tx.tx_burst(&mut burst);
        }
        rx.rx_burst(&mut got, 64);
        for b in got.drain(..) {
            assert_eq!(b.data(), &frames[next_rx][..], "frame {next_rx}");
            next_rx += 1;
        }
    }
    assert_eq!(tx.stats().tx_dropped, dropped_before);
}

#[test]
fn frames_of_every_size_cross_both_ways() {
    let dir = TempDir::new("sizes");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 10, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 10, 2048),
    );
    let mut mq = m.queue(0, Pool::new(1, 512, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 512, false).unwrap()).unwrap();
    let frames: Vec<Vec<u8>> = (60..=BUF_DATA)
        .step_by(7)
        .chain([BUF_DATA])
        .enumerate()
        .map(|(i, len)| pattern(i as u64, len))
        .collect();
    exchange(&mut sq, &mut mq, &frames);
    exchange(&mut mq, &mut sq, &frames);
    let st = mq.stats();
    assert_eq!(st.rx_packets, frames.len() as u64);
    assert_eq!(st.tx_packets, frames.len() as u64);
    assert_eq!(
        st.rx_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn small_buffers_chain_and_reassemble_into_one_slot() {
    let dir = TempDir::new("chain");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 8, 256),
        cfg(&dir.sock(), MemifRole::Slave, 8, 256),
    );
    let mut mq = m.queue(0, Pool::new(1, 512, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 512, false).unwrap()).unwrap();
    let frames: Vec<Vec<u8>> = [60, 255, 256, 257, 511, 512, 1000, 1514, 2048]
        .iter()
        .cycle()
        .take(300)
        .enumerate()
        .map(|(i, &len)| pattern(i as u64, len))
        .collect();
    exchange(&mut sq, &mut mq, &frames);
    exchange(&mut mq, &mut sq, &frames);
}

#[test]
fn jumbo_frames_travel_chained_through_the_byte_api() {
    let dir = TempDir::new("jumbo");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 8, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 8, 2048),
    );
    let mut mq = m.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 64, false).unwrap()).unwrap();
    let sizes = [60, 2047, 2048, 2049, 4096, 9000, 9001, 16384, 65536];
    for dir in 0..2 {
        let (tx, rx) = if dir == 0 {
            (&mut sq, &mut mq)
        } else {
            (&mut mq, &mut sq)
        };
        for round in 0..20u64 {
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &l)| pattern(round * 100 + i as u64, l))
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            assert_eq!(tx.tx_burst_bytes(&refs), frames.len());
            let mut got = Vec::new();
            let deadline = Instant::now() + WAIT;
            while got.len() < frames.len() {
                assert!(Instant::now() < deadline);
                rx.rx_burst_bytes(16, |f| got.push(f.to_vec()));
            }
            assert_eq!(got, frames);
        }
    }
    // Too long for the byte API: dropped and counted, not sent.
    let huge = vec![0u8; 65537];
    assert_eq!(sq.tx_burst_bytes(&[&huge]), 1);
    assert_eq!(sq.stats().tx_dropped, 1);
}

#[test]
fn frame_longer_than_a_pool_slot_is_dropped_and_counted() {
    let dir = TempDir::new("oversize");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 8, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 8, 2048),
    );
    let mut mq = m.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 64, false).unwrap()).unwrap();
    let big = pattern(1, 9000);
    let small = pattern(2, 100);
    assert_eq!(sq.tx_burst_bytes(&[&big, &small]), 2);
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.is_empty() {
        assert!(Instant::now() < deadline);
        mq.rx_burst(&mut got, 8);
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data(), &small[..]);
    assert_eq!(mq.stats().rx_dropped, 1);
    drop(got);
    assert_eq!(
        mq.pool().available(),
        64,
        "the dropped frame's slot came back"
    );
}

#[test]
fn ring_wraps_around_many_times_in_order() {
    let dir = TempDir::new("wrap");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 4, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 4, 2048),
    );
    let mut mq = m.queue(0, Pool::new(1, 256, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 256, false).unwrap()).unwrap();
    // 16-slot rings, 70 000 frames: the 16-bit indices wrap too.
    let frames: Vec<Vec<u8>> = (0..70_000u64)
        .map(|i| pattern(i, 60 + (i as usize * 13) % 200))
        .collect();
    exchange(&mut sq, &mut mq, &frames);
    exchange(&mut mq, &mut sq, &frames);
}

#[test]
fn full_ring_takes_only_what_fits() {
    let dir = TempDir::new("full");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 5, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 5, 2048),
    );
    let mut mq = m.queue(0, Pool::new(1, 256, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 256, false).unwrap()).unwrap();
    for dir in 0..2 {
        let (tx, rx) = if dir == 0 {
            (&mut sq, &mut mq)
        } else {
            (&mut mq, &mut sq)
        };
        let mut burst: Vec<PktBuf> = (0..100).map(|i| pkt(tx.pool(), &pattern(i, 64))).collect();
        assert_eq!(tx.tx_burst(&mut burst), 32, "a 32-slot ring takes 32");
        assert_eq!(burst.len(), 68);
        assert_eq!(
            tx.tx_burst(&mut burst),
            0,
            "nothing more until the peer reads"
        );
        let mut got = Vec::new();
        assert_eq!(rx.rx_burst(&mut got, 8), 8);
        assert_eq!(tx.tx_burst(&mut burst), 8);
        assert_eq!(rx.rx_burst(&mut got, 100), 32);
        assert_eq!(tx.tx_burst(&mut burst), 32);
        assert_eq!(rx.rx_burst(&mut got, 100), 32);
        assert_eq!(tx.tx_burst(&mut burst), 28);
        assert_eq!(rx.rx_burst(&mut got, 100), 28);
        for (i, b) in got.iter().enumerate() {
            assert_eq!(b.data(), &pattern(i as u64, 64)[..]);
        }
        assert_eq!(tx.stats().tx_dropped, 0);
    }
}

#[test]
fn chained_frame_waits_for_enough_free_slots() {
    let dir = TempDir::new("chainfull");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 3, 256),
        cfg(&dir.sock(), MemifRole::Slave, 3, 256),
    );
    let mut mq = m.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 64, false).unwrap()).unwrap();
    for dir in 0..2 {
        let (tx, rx) = if dir == 0 {
            (&mut sq, &mut mq)
        } else {
            (&mut mq, &mut sq)
        };
        // 8 slots of 256 bytes: a 1000-byte frame takes 4.
        let a = pattern(1, 1000);
        let b = pattern(2, 1000);
        let c = pattern(3, 1000);
        assert_eq!(tx.tx_burst_bytes(&[&a, &b, &c]), 2);
        let mut got = Vec::new();
        assert_eq!(rx.rx_burst_bytes(1, |f| got.push(f.to_vec())), 1);
        assert_eq!(tx.tx_burst_bytes(&[&c]), 1);
        while got.len() < 3 {
            rx.rx_burst_bytes(8, |f| got.push(f.to_vec()));
        }
        assert_eq!(got, vec![a, b, c]);
        // Longer than the whole ring: can never be sent, dropped.
        assert_eq!(tx.tx_burst_bytes(&[&pattern(4, 2049)]), 1);
        assert_eq!(tx.stats().tx_dropped, 1);
    }
}

fn wait_up(q: &mut MemifQueue) {
    let deadline = Instant::now() + WAIT;
    while !q.is_up() {
        assert!(Instant::now() < deadline, "queue never saw the link up");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn master_survives_slave_leaving_and_serves_the_next_one() {
    let dir = TempDir::new("reconnect");
    let m = MemifPort::open(cfg(&dir.sock(), MemifRole::Master, 6, 2048)).unwrap();
    let mut mq = m.queue(0, Pool::new(1, 256, false).unwrap()).unwrap();
    let frames: Vec<Vec<u8>> = (0..500).map(|i| pattern(i, 100)).collect();
    for round in 1..=3 {
        let s = MemifPort::open(cfg(&dir.sock(), MemifRole::Slave, 6, 2048)).unwrap();
        s.wait_connected(WAIT).unwrap();
        m.wait_connected(WAIT).unwrap();
        let mut sq = s.queue(0, Pool::new(2, 256, false).unwrap()).unwrap();
        wait_up(&mut mq);
        exchange(&mut sq, &mut mq, &frames);
        exchange(&mut mq, &mut sq, &frames);
        // Leave frames in flight both ways, then vanish.
        let mut burst = vec![pkt(sq.pool(), &frames[0])];
        sq.tx_burst(&mut burst);
        drop(sq);
        drop(s);
        assert!(m.wait_disconnected(WAIT));
        assert_eq!(m.connections(), round);
        assert!(m.last_event().unwrap().contains("interface closed"));
        // Link down: transmit drops and counts, receive gives nothing.
        let before = mq.stats().tx_dropped;
        let mut burst = vec![pkt(mq.pool(), &frames[0]), pkt(mq.pool(), &frames[1])];
        assert_eq!(mq.tx_burst(&mut burst), 2);
        assert_eq!(mq.stats().tx_dropped, before + 2);
        let mut got = Vec::new();
        assert_eq!(mq.rx_burst(&mut got, 8), 0);
    }
    assert_eq!(
        mq.pool().available(),
        256,
        "no slot leaked across reconnects"
    );
}

#[test]
fn slave_reconnects_when_a_master_comes_back() {
    let dir = TempDir::new("remaster");
    let s = MemifPort::open(cfg(&dir.sock(), MemifRole::Slave, 6, 2048)).unwrap();
    let mut sq = s.queue(0, Pool::new(2, 256, false).unwrap()).unwrap();
    // No master yet: the slave keeps trying.
    assert!(matches!(
        s.wait_connected(Duration::from_millis(50)),
        Err(MemifError::Timeout { .. })
    ));
    let frames: Vec<Vec<u8>> = (0..300).map(|i| pattern(i, 200)).collect();
    for _ in 0..2 {
        let m = MemifPort::open(cfg(&dir.sock(), MemifRole::Master, 6, 2048)).unwrap();
        m.wait_connected(WAIT).unwrap();
        s.wait_connected(WAIT).unwrap();
        let mut mq = m.queue(0, Pool::new(1, 256, false).unwrap()).unwrap();
        wait_up(&mut sq);
        exchange(&mut sq, &mut mq, &frames);
        exchange(&mut mq, &mut sq, &frames);
        drop(mq);
        drop(m);
        assert!(s.wait_disconnected(WAIT));
        assert!(!dir.sock().exists(), "the master removed its socket file");
    }
    assert_eq!(s.connections(), 2);
}

#[test]
fn wrong_secret_keeps_the_link_down_with_a_reason() {
    let dir = TempDir::new("secret");
    let m = MemifPort::open(MemifConfig {
        secret: Some("right".into()),
        ..cfg(&dir.sock(), MemifRole::Master, 6, 2048)
    })
    .unwrap();
    let s = MemifPort::open(MemifConfig {
        secret: Some("wrong".into()),
        ..cfg(&dir.sock(), MemifRole::Slave, 6, 2048)
    })
    .unwrap();
    let err = s.wait_connected(Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("Incorrect secret"), "{err}");
    assert!(!m.is_connected());
    assert!(m.last_event().unwrap().contains("Incorrect secret"));
}

#[test]
fn second_slave_is_turned_away_while_one_is_served() {
    let dir = TempDir::new("second");
    let (m, s1) = connect(
        cfg(&dir.sock(), MemifRole::Master, 6, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 6, 2048),
    );
    let s2 = MemifPort::open(cfg(&dir.sock(), MemifRole::Slave, 6, 2048)).unwrap();
    let err = s2.wait_connected(Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("Already connected"), "{err}");
    assert!(m.is_connected() && s1.is_connected());
    // Once the first leaves, the persistent second one gets in.
    drop(s1);
    s2.wait_connected(WAIT).unwrap();
    // The master counts the connection on its own control thread, which
    // may finish a moment after the slave sees CONNECTED.
    let deadline = std::time::Instant::now() + WAIT;
    while m.connections() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(m.connections(), 2);
}

#[test]
fn queue_ids_are_checked_and_exclusive() {
    let dir = TempDir::new("claim");
    let m = MemifPort::open(cfg(&dir.sock(), MemifRole::Master, 6, 2048)).unwrap();
    let q = m.queue(0, Pool::new(1, 8, false).unwrap()).unwrap();
    assert!(matches!(
        m.queue(0, Pool::new(2, 8, false).unwrap()),
        Err(MemifError::QueueInUse { queue: 0 })
    ));
    assert!(matches!(
        m.queue(1, Pool::new(3, 8, false).unwrap()),
        Err(MemifError::NoSuchQueue {
            queue: 1,
            queues: 1
        })
    ));
    drop(q);
    assert!(m.queue(0, Pool::new(4, 8, false).unwrap()).is_ok());
    // A second master on the same live socket is refused.
    assert!(matches!(
        MemifPort::open(cfg(&dir.sock(), MemifRole::Master, 6, 2048)),
        Err(MemifError::Listen { .. })
    ));
}

/// One queue, slave → master, 64-byte frames, sender and receiver on two
/// threads. Prints frames per second for packet buffers (allocate, fill,
/// transmit; receive into the pool, free) and for the byte API.
#[test]
fn one_queue_blast_throughput() {
    let dir = TempDir::new("blast");
    let (m, s) = connect(
        cfg(&dir.sock(), MemifRole::Master, 10, 2048),
        cfg(&dir.sock(), MemifRole::Slave, 10, 2048),
    );
    let m = Arc::new(m);
    let s = Arc::new(s);
    let n: u64 = if cfg!(debug_assertions) {
        300_000
    } else {
        10_000_000
    };
    for mode in ["pktbuf", "bytes"] {
        let rx_port = m.clone();
        let rx = std::thread::spawn(move || {
            let mut q = rx_port.queue(0, Pool::new(1, 1024, true).unwrap()).unwrap();
            wait_up(&mut q);
            let mut got = Vec::with_capacity(64);
            let mut count = 0u64;
            let mut expect_seq = 0u64;
            let t0 = Instant::now();
            while count < n {
                assert!(t0.elapsed() < Duration::from_secs(120), "blast stalled");
                q.rx_burst(&mut got, 64);
                for b in got.drain(..) {
                    let seq = u64::from_le_bytes(b.data()[..8].try_into().unwrap());
                    assert_eq!(seq, expect_seq);
                    expect_seq += 1;
                    count += 1;
                }
            }
            (count, t0.elapsed())
        });
        let tx_port = s.clone();
        let tx = std::thread::spawn(move || {
            let mut q = tx_port.queue(0, Pool::new(2, 1024, true).unwrap()).unwrap();
            wait_up(&mut q);
            let mut burst: Vec<PktBuf> = Vec::with_capacity(32);
            let mut frames = [[0u8; 64]; 32];
            let mut seq = 0u64;
            while seq < n {
                let k = (n - seq).min(32) as usize;
                if mode == "pktbuf" {
                    while burst.len() < k {
                        let mut b = q.pool().alloc().unwrap();
                        b.append(64);
                        let s = seq + burst.len() as u64;
                        b.data_mut().unwrap()[..8].copy_from_slice(&s.to_le_bytes());
                        burst.push(b);
                    }
                    seq += q.tx_burst(&mut burst) as u64;
                } else {
                    for (i, f) in frames[..k].iter_mut().enumerate() {
                        f[..8].copy_from_slice(&(seq + i as u64).to_le_bytes());
                    }
                    let refs: [&[u8]; 32] = std::array::from_fn(|i| &frames[i][..]);
                    seq += q.tx_burst_bytes(&refs[..k]) as u64;
                }
            }
            assert_eq!(q.stats().tx_dropped, 0);
        });
        tx.join().unwrap();
        let (count, took) = rx.join().unwrap();
        eprintln!(
            "memif one-queue blast ({mode}, 64 B, {}): {count} frames in {took:?} = {:.2} Mpps",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            count as f64 / took.as_secs_f64() / 1e6
        );
        assert_eq!(count, n);
    }
}
