//! Elastic RSS steering over memif: the receiver changes its redirection
//! table at run time, in the wire's shared memory, and the sender follows
//! it from the next frame; queues come and go while the link stays up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dataplane::nic::memif::{MemifConfig, MemifError, MemifPort, MemifQueue, MemifRole, Steering};
use dataplane::nic::QueuePair;
use dataplane::rss::{FlowTuple, RssConfig};

const GROUPS: usize = 128;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("ix-memif-elastic-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// A port with `queues` queues whose own receive table is `reta`.
fn port(sock: &Path, role: MemifRole, queues: u16, reta: Vec<u16>) -> MemifPort {
    let mut rss = RssConfig::round_robin(queues, GROUPS);
    rss.reta = reta;
    MemifPort::open(MemifConfig {
        queues,
        log2_ring_size: 8,
        steering: Steering::Rss(rss),
        ..MemifConfig::new(sock, role)
    })
    .unwrap()
}

fn up(p: &MemifPort) {
    p.wait_connected(Duration::from_secs(10)).unwrap();
}

fn queue(p: &MemifPort, q: u16, pool: u16) -> MemifQueue {
    p.queue(q, dataplane::buf::Pool::new(pool, 512, false).unwrap())
        .unwrap()
}

/// An Ethernet/IPv4/UDP frame of `flow` carrying `flow_id` and `seq`.
fn udp_frame(flow: &FlowTuple, flow_id: u32, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
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
    f[42..46].copy_from_slice(&flow_id.to_le_bytes());
    f[46..50].copy_from_slice(&seq.to_le_bytes());
    f
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xffu8; 60];
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f
}

fn flows(n: u32) -> Vec<FlowTuple> {
    (0..n)
        .map(|i| FlowTuple {
            src_ip: [10, 0, (i >> 8) as u8, i as u8],
            dst_ip: [10, 1, 0, 1],
            src_port: 1024u16.wrapping_add((i as u16).wrapping_mul(7919)),
            dst_port: 80,
        })
        .collect()
}

fn group(flow: &FlowTuple) -> usize {
    RssConfig::round_robin(1, GROUPS).flow_group(flow)
}

/// Sends `rounds` frames of every flow from `tx` (flow-interleaved, each
/// flow's sequence numbers starting at `first_seq`) while receiving on
/// `rx`; returns, per receive queue, the (flow, seq) pairs in arrival
/// order, after a short grace for strays.
fn exchange(
    tx: &mut MemifQueue,
    rx: &mut [&mut MemifQueue],
    fl: &[FlowTuple],
    first_seq: u32,
    rounds: u32,
) -> Vec<Vec<(u32, u32)>> {
    let frames: Vec<Vec<u8>> = (0..rounds)
        .flat_map(|r| {
            fl.iter()
                .enumerate()
                .map(move |(i, f)| udp_frame(f, i as u32, first_seq + r))
        })
        .collect();
    let total = frames.len();
    let mut got = vec![Vec::new(); rx.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut sent, mut n, mut grace) = (0, 0, 0);
    while n < total || grace < 50 {
        assert!(
            Instant::now() < deadline,
            "sent {sent}, received {n} of {total}"
        );
        if sent < total {
            let end = (sent + 32).min(total);
            let refs: Vec<&[u8]> = frames[sent..end].iter().map(|f| &f[..]).collect();
            sent += tx.tx_burst_bytes(&refs);
        } else if n >= total {
            grace += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        for (j, q) in rx.iter_mut().enumerate() {
            q.rx_burst_bytes(64, |f| {
                let id = u32::from_le_bytes(f[42..46].try_into().unwrap());
                let seq = u32::from_le_bytes(f[46..50].try_into().unwrap());
                got[j].push((id, seq));
                n += 1;
            });
        }
    }
    assert_eq!(n, total, "nothing lost, nothing duplicated");
    assert_eq!(tx.stats().tx_dropped, 0);
    got
}

/// Checks each flow's frames landed on `want(flow)` only, in order.
fn check_placement(
    got: &[Vec<(u32, u32)>],
    fl: &[FlowTuple],
    first_seq: u32,
    rounds: u32,
    want: impl Fn(&FlowTuple) -> usize,
) {
    for (j, frames) in got.iter().enumerate() {
        let mut next = vec![first_seq; fl.len()];
        for &(id, seq) in frames {
            let i = id as usize;
            assert_eq!(want(&fl[i]), j, "flow {id} on queue {j}");
            assert_eq!(seq, next[i], "flow {id} out of order on queue {j}");
            next[i] += 1;
        }
        for (i, &n) in next.iter().enumerate() {
            if want(&fl[i]) == j {
                assert_eq!(n, first_seq + rounds, "flow {i} incomplete");
            }
        }
    }
}

#[test]
fn receiver_table_change_moves_flows_between_queues_at_once() {
    let dir = temp_dir("move");
    let sock = dir.0.join("memif.sock");
    let m = port(&sock, MemifRole::Master, 2, vec![0; GROUPS]);
    let s = port(
        &sock,
        MemifRole::Slave,
        2,
        RssConfig::round_robin(2, GROUPS).reta,
    );
    up(&m);
    up(&s);
    let mut m0 = queue(&m, 0, 1);
    let mut m1 = queue(&m, 1, 2);
    let mut s0 = queue(&s, 0, 3);
    let fl = flows(64);
    let rounds = 20;

    // Every group on queue 0: queue 1's rings stay empty.
    assert_eq!(s.peer_rx_table(), Some(vec![0; GROUPS]));
    let got = exchange(&mut s0, &mut [&mut m0, &mut m1], &fl, 0, rounds);
    check_placement(&got, &fl, 0, rounds, |_| 0);
    assert!(got[1].is_empty());

    // Odd groups to queue 1: the sender follows from the next frame.
    let moved: Vec<u16> = (0..GROUPS).map(|g| (g % 2) as u16).collect();
    m.set_rx_table(&moved).unwrap();
    assert_eq!(m.rx_table(), moved);
    assert_eq!(s.peer_rx_table(), Some(moved.clone()));
    let got = exchange(&mut s0, &mut [&mut m0, &mut m1], &fl, rounds, rounds);
    check_placement(&got, &fl, rounds, rounds, |f| group(f) % 2);
    assert!(!got[0].is_empty() && !got[1].is_empty(), "both queues used");

    // And back.
    m.set_rx_table(&[0; GROUPS]).unwrap();
    let got = exchange(&mut s0, &mut [&mut m0, &mut m1], &fl, 2 * rounds, rounds);
    check_placement(&got, &fl, 2 * rounds, rounds, |_| 0);
    assert_eq!(s0.steer_dropped(), 0);
}

#[test]
fn queue_taken_after_connect_receives_once_the_table_names_it() {
    let dir = temp_dir("late");
    let sock = dir.0.join("memif.sock");
    // The master runs one core of at most two.
    let m = port(&sock, MemifRole::Master, 2, vec![0; GROUPS]);
    let s = port(&sock, MemifRole::Slave, 2, vec![0; GROUPS]);
    up(&m);
    up(&s);
    let mut m0 = queue(&m, 0, 1);
    let mut s0 = queue(&s, 0, 3);
    let fl = flows(32);
    let got = exchange(&mut s0, &mut [&mut m0], &fl, 0, 5);
    check_placement(&got, &fl, 0, 5, |_| 0);

    let half: Vec<u16> = (0..GROUPS).map(|g| (g % 2) as u16).collect();
    let mut seq = 5;
    for round in 0..2 {
        // A core is added: it takes queue 1, then the table names it.
        let mut m1 = queue(&m, 1, 2);
        m.set_rx_table(&half).unwrap();
        let got = exchange(&mut s0, &mut [&mut m0, &mut m1], &fl, seq, 5);
        check_placement(&got, &fl, seq, 5, |f| group(f) % 2);
        assert!(!got[1].is_empty(), "round {round}: queue 1 received");
        seq += 5;
        // The core is removed: its groups go back to queue 0 first.
        m.set_rx_table(&[0; GROUPS]).unwrap();
        drop(m1);
        let got = exchange(&mut s0, &mut [&mut m0], &fl, seq, 5);
        check_placement(&got, &fl, seq, 5, |_| 0);
        seq += 5;
    }
    // A sending queue dropped and taken again carries on where it was.
    drop(s0);
    let mut s0 = queue(&s, 0, 4);
    let got = exchange(&mut s0, &mut [&mut m0], &fl, seq, 5);
    check_placement(&got, &fl, seq, 5, |_| 0);
}

#[test]
fn unhashable_frames_reach_only_queues_in_the_peers_table() {
    let dir = temp_dir("arp");
    let sock = dir.0.join("memif.sock");
    let m = port(
        &sock,
        MemifRole::Master,
        4,
        RssConfig::round_robin(4, GROUPS).reta,
    );
    // The slave runs cores 0 and 2 of four.
    let two: Vec<u16> = (0..GROUPS).map(|g| 2 * (g % 2) as u16).collect();
    let s = port(&sock, MemifRole::Slave, 4, two);
    up(&m);
    up(&s);
    let mut m0 = queue(&m, 0, 1);
    let mut sq: Vec<MemifQueue> = (0..4).map(|j| queue(&s, j, 10 + j)).collect();
    let arp = arp_frame();
    let count = |sq: &mut [MemifQueue]| {
        let mut got = [0usize; 4];
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            for (j, q) in sq.iter_mut().enumerate() {
                q.rx_burst_bytes(8, |f| {
                    assert_eq!(f, &arp[..]);
                    got[j] += 1;
                });
            }
        }
        got
    };
    assert_eq!(m0.tx_burst_bytes(&[&arp]), 1);
    assert_eq!(count(&mut sq), [1, 0, 1, 0]);
    // All four cores run: all four hear it.
    s.set_rx_table(&RssConfig::round_robin(4, GROUPS).reta)
        .unwrap();
    assert_eq!(m0.tx_burst_bytes(&[&arp]), 1);
    assert_eq!(count(&mut sq), [1, 1, 1, 1]);
    assert_eq!(m0.stats().tx_packets, 2);
}

#[test]
fn reconnect_republishes_the_table_last_set() {
    let dir = temp_dir("reconnect");
    let sock = dir.0.join("memif.sock");
    let rr = RssConfig::round_robin(2, GROUPS).reta;
    let m = port(&sock, MemifRole::Master, 2, rr.clone());
    let mut s = port(&sock, MemifRole::Slave, 2, rr.clone());
    up(&m);
    up(&s);
    let master_table: Vec<u16> = (0..GROUPS).map(|g| u16::from(g % 3 == 0)).collect();
    let slave_table: Vec<u16> = (0..GROUPS).map(|g| u16::from(g % 5 != 0)).collect();
    m.set_rx_table(&master_table).unwrap();

    // The slave goes away and a new one comes: the master's table is in
    // the new shared memory.
    drop(s);
    assert!(m.wait_disconnected(Duration::from_secs(10)));
    s = port(&sock, MemifRole::Slave, 2, rr.clone());
    up(&s);
    up(&m);
    assert_eq!(s.peer_rx_table(), Some(master_table.clone()));
    s.set_rx_table(&slave_table).unwrap();
    assert_eq!(m.peer_rx_table(), Some(slave_table.clone()));

    // The master goes away and comes back: the slave (the same port)
    // republishes its table on the fresh memory.
    let first = s.connections();
    drop(m);
    assert!(s.wait_disconnected(Duration::from_secs(10)));
    let m = port(&sock, MemifRole::Master, 2, rr.clone());
    up(&m);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.connections() == first {
        assert!(Instant::now() < deadline, "slave did not reconnect");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(m.peer_rx_table(), Some(slave_table.clone()));
    assert_eq!(s.peer_rx_table(), Some(rr));

    // And frames follow it.
    let mut m0 = queue(&m, 0, 1);
    let mut s0 = queue(&s, 0, 3);
    let mut s1 = queue(&s, 1, 4);
    let fl = flows(40);
    let got = exchange(&mut m0, &mut [&mut s0, &mut s1], &fl, 0, 4);
    check_placement(&got, &fl, 0, 4, |f| usize::from(slave_table[group(f)]));
}

#[test]
fn new_tables_are_checked_before_anything_changes() {
    let dir = temp_dir("validate");
    let sock = dir.0.join("memif.sock");
    let rr = RssConfig::round_robin(2, GROUPS).reta;
    let m = port(&sock, MemifRole::Master, 2, rr.clone());
    assert!(matches!(
        m.set_rx_table(&[0; 64]),
        Err(MemifError::RetaLength {
            len: 64,
            groups: GROUPS
        })
    ));
    let mut bad = vec![1; GROUPS];
    bad[77] = 2;
    assert!(matches!(
        m.set_rx_table(&bad),
        Err(MemifError::Reta {
            group: 77,
            queue: 2,
            queues: 2
        })
    ));
    assert_eq!(m.rx_table(), rr);
    let plain = MemifPort::open(MemifConfig::new(
        dir.0.join("plain.sock"),
        MemifRole::Master,
    ))
    .unwrap();
    assert!(matches!(
        plain.set_rx_table(&[0; GROUPS]),
        Err(MemifError::NotSteering)
    ));
    assert!(plain.rx_table().is_empty());
}

#[test]
fn different_flow_group_counts_are_refused_with_a_reason() {
    let dir = temp_dir("groups");
    let sock = dir.0.join("memif.sock");
    let m = port(
        &sock,
        MemifRole::Master,
        2,
        RssConfig::round_robin(2, GROUPS).reta,
    );
    let s = MemifPort::open(MemifConfig {
        queues: 2,
        log2_ring_size: 8,
        steering: Steering::Rss(RssConfig::round_robin(2, 64)),
        ..MemifConfig::new(&sock, MemifRole::Slave)
    })
    .unwrap();
    let err = m.wait_connected(Duration::from_millis(500)).unwrap_err();
    assert!(err.to_string().contains("64 flow groups"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .last_event()
        .is_some_and(|e| e.contains("peer has 64 flow groups, we have 128"))
    {
        assert!(
            Instant::now() < deadline,
            "slave told: {:?}",
            s.last_event()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!s.is_connected());
}
