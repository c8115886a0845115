//! Multi-queue memif with RSS steering: each frame lands on the queue the
//! receiver's RSS key and redirection table choose, none is lost, and each
//! (sender queue, receiver queue) ring keeps its order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dataplane::buf::{PktBuf, Pool};
use dataplane::nic::memif::{MemifConfig, MemifPort, MemifQueue, MemifRole, Steering};
use dataplane::nic::QueuePair;
use dataplane::rss::{FlowTuple, RssConfig};

const Q: u16 = 4;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("ix-memif-rss-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// An Ethernet/IPv4/UDP frame of `flow`, carrying `tag` in its payload.
fn udp_frame(flow: &FlowTuple, tag: u64, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14 + 20 + 8 + 8)];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&flow.src_ip);
    ip[16..20].copy_from_slice(&flow.dst_ip);
    f[34..36].copy_from_slice(&flow.src_port.to_be_bytes());
    f[36..38].copy_from_slice(&flow.dst_port.to_be_bytes());
    f[42..50].copy_from_slice(&tag.to_le_bytes());
    f
}

fn flows(n: u16) -> Vec<FlowTuple> {
    (0..n)
        .map(|i| FlowTuple {
            src_ip: [10, 0, (i >> 8) as u8, i as u8],
            dst_ip: [10, 1, 0, 1],
            src_port: 1024u16.wrapping_add(i.wrapping_mul(7919)),
            dst_port: 80 + (i % 3),
        })
        .collect()
}

/// A port whose own receive side is `rss`.
fn port(path: &std::path::Path, role: MemifRole, rss: &RssConfig) -> MemifPort {
    MemifPort::open(MemifConfig {
        queues: Q,
        log2_ring_size: 8,
        steering: Steering::Rss(rss.clone()),
        ..MemifConfig::new(path, role)
    })
    .unwrap()
}

fn queues(p: &MemifPort, pool_base: u16) -> Vec<MemifQueue> {
    (0..Q)
        .map(|q| {
            p.queue(q, Pool::new(pool_base + q, 1024, false).unwrap())
                .unwrap()
        })
        .collect()
}

/// Sends `per_queue` frames from every sender queue (flows spread over
/// all of them) and checks where each arrives.
fn steer_and_check(
    tx: &mut [MemifQueue],
    rx: &mut [MemifQueue],
    rx_rss: &RssConfig,
    flows: &[FlowTuple],
    per_queue: u64,
) {
    // Expected tag order per (sender, receiver) pair.
    let mut expected: HashMap<(u16, u16), Vec<u64>> = HashMap::new();
    let mut pending: Vec<Vec<Vec<u8>>> = vec![Vec::new(); tx.len()];
    for (k, p) in pending.iter_mut().enumerate() {
        for i in 0..per_queue {
            let tag = ((k as u64) << 32) | i;
            let flow = &flows[(i as usize * 31 + k * 7) % flows.len()];
            let frame = udp_frame(flow, tag, 64 + (i as usize % 400));
            let j = rx_rss.queue_for(flow);
            assert_eq!(rx_rss.queue_for_frame(&frame), j);
            expected.entry((k as u16, j)).or_default().push(tag);
            p.push(frame);
        }
        p.reverse(); // pop from the back in order
    }
    let total = per_queue * tx.len() as u64;
    let mut got: HashMap<(u16, u16), Vec<u64>> = HashMap::new();
    let mut received = 0u64;
    let mut bufs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < total {
        assert!(Instant::now() < deadline, "received {received} of {total}");
        for (k, q) in tx.iter_mut().enumerate() {
            let mut burst: Vec<PktBuf> = Vec::new();
            while burst.len() < 32 {
                let Some(f) = pending[k].pop() else { break };
                let mut b = q.pool().alloc().unwrap();
                assert!(b.extend_from_slice(&f));
                burst.push(b);
            }
            q.tx_burst(&mut burst);
            // Put back what did not fit, in order.
            for b in burst.into_iter().rev() {
                pending[k].push(b.data().to_vec());
            }
        }
        for (j, q) in rx.iter_mut().enumerate() {
            q.rx_burst(&mut bufs, 64);
            for b in bufs.drain(..) {
                let d = b.data();
                assert_eq!(
                    rx_rss.queue_for_frame(d),
                    j as u16,
                    "frame landed on the wrong queue"
                );
                let tag = u64::from_le_bytes(d[42..50].try_into().unwrap());
                got.entry(((tag >> 32) as u16, j as u16))
                    .or_default()
                    .push(tag);
                received += 1;
            }
        }
    }
    assert_eq!(got, expected, "every frame, in order per ring");
    for q in tx.iter() {
        assert_eq!(q.stats().tx_dropped, 0);
    }
    for q in rx.iter() {
        assert_eq!(q.stats().rx_dropped, 0);
    }
    // Every receive queue got traffic from every sender queue.
    assert_eq!(got.len(), (Q * Q) as usize);
}

#[test]
fn frames_land_on_the_queue_the_receivers_rss_picks() {
    let dir = temp_dir("steer");
    let sock = dir.0.join("memif.sock");
    // The two ends have different tables (same key, same number of flow
    // groups); each publishes its own, each sender steers by its peer's.
    let master_rss = RssConfig::round_robin(Q, 128);
    let mut slave_rss = RssConfig::round_robin(Q, 128);
    slave_rss.reta.reverse();
    slave_rss.reta.rotate_left(5);
    let m = port(&sock, MemifRole::Master, &master_rss);
    let s = port(&sock, MemifRole::Slave, &slave_rss);
    m.wait_connected(Duration::from_secs(10)).unwrap();
    s.wait_connected(Duration::from_secs(10)).unwrap();
    let mut mq = queues(&m, 10);
    let mut sq = queues(&s, 20);
    let fl = flows(500);
    steer_and_check(&mut sq, &mut mq, &master_rss, &fl, 3000);
    steer_and_check(&mut mq, &mut sq, &slave_rss, &fl, 3000);
}

#[test]
fn non_ip_frames_reach_every_queue() {
    let dir = temp_dir("nonip");
    let sock = dir.0.join("memif.sock");
    let rss = RssConfig::round_robin(Q, 128);
    let m = port(&sock, MemifRole::Master, &rss);
    let s = port(&sock, MemifRole::Slave, &rss);
    s.wait_connected(Duration::from_secs(10)).unwrap();
    let mut mq = queues(&m, 10);
    let mut sq = queues(&s, 20);
    let arp = {
        let mut f = vec![0xffu8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f
    };
    for q in sq.iter_mut() {
        assert_eq!(q.tx_burst_bytes(&[&arp]), 1);
    }
    let mut got = [0usize; Q as usize];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.iter().any(|&n| n < Q as usize) {
        assert!(Instant::now() < deadline);
        for (j, q) in mq.iter_mut().enumerate() {
            q.rx_burst_bytes(8, |f| {
                assert_eq!(f, &arp[..]);
                got[j] += 1;
            });
        }
    }
    // Each of the Q senders' broadcast reached each of the Q receivers
    // once, so every core's neighbour table learns from it.
    assert_eq!(got, [Q as usize; Q as usize]);
}

#[test]
fn rss_queues_run_on_their_own_threads() {
    let dir = temp_dir("threads");
    let sock = dir.0.join("memif.sock");
    let rss = RssConfig::round_robin(Q, 128);
    let m = std::sync::Arc::new(port(&sock, MemifRole::Master, &rss));
    let s = std::sync::Arc::new(port(&sock, MemifRole::Slave, &rss));
    m.wait_connected(Duration::from_secs(10)).unwrap();
    let per_queue = 20_000u64;
    let total = per_queue * u64::from(Q);
    let fl = flows(256);
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let receivers: Vec<_> = (0..Q)
        .map(|j| {
            let m = m.clone();
            let rss = rss.clone();
            let received = received.clone();
            std::thread::spawn(move || {
                let mut q = m.queue(j, Pool::new(j, 1024, false).unwrap()).unwrap();
                let mut bufs = Vec::new();
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                // Until every queue together has everything.
                while received.load(Ordering::Relaxed) < total {
                    assert!(Instant::now() < deadline, "receive stalled");
                    q.rx_burst(&mut bufs, 64);
                    for b in bufs.drain(..) {
                        assert_eq!(rss.queue_for_frame(b.data()), j);
                        n += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n
            })
        })
        .collect();
    let senders: Vec<_> = (0..Q)
        .map(|k| {
            let s = s.clone();
            let fl = fl.clone();
            std::thread::spawn(move || {
                let mut q = s.queue(k, Pool::new(10 + k, 1024, false).unwrap()).unwrap();
                let frames: Vec<Vec<u8>> = (0..per_queue)
                    .map(|i| udp_frame(&fl[(i as usize + usize::from(k) * 13) % fl.len()], i, 64))
                    .collect();
                let mut i = 0;
                while i < frames.len() {
                    let end = (i + 32).min(frames.len());
                    let refs: Vec<&[u8]> = frames[i..end].iter().map(|f| &f[..]).collect();
                    i += q.tx_burst_bytes(&refs);
                }
                assert_eq!(q.stats().tx_dropped, 0);
            })
        })
        .collect();
    for t in senders {
        t.join().unwrap();
    }
    let per_rx: Vec<u64> = receivers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        per_rx.iter().sum::<u64>(),
        total,
        "nothing lost or duplicated"
    );
    assert!(
        per_rx.iter().all(|&n| n > 0),
        "every queue got its share: {per_rx:?}"
    );
}
