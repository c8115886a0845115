//! The DPDK backend on DPDK's in-process virtual devices: `net_ring`
//! (each queue's TX ring is its own RX ring: a loopback cable per queue)
//! and `net_null` (a device with an RSS redirection table and key, which
//! hashes nothing but reports back what was programmed: flows hashed with
//! what it reports spread over its queues exactly as our stack expects).
//!
//! One EAL per process: every test calls [`eal`], which initialises it
//! once (`--no-huge -m 512 --no-pci --no-shconf`, file prefix
//! `ixtest-dpdk-ring`) and attaches its own uniquely named device, removed again when
//! its port closes. Built only with `--features dpdk`.

use std::time::{Duration, Instant};

use dataplane::buf::{PktBuf, Pool, BUF_SIZE};
use dataplane::nic::dpdk::{sys, DpdkError, DpdkPort, Eal, EalConfig, PortConfig};
use dataplane::nic::QueuePair;
use dataplane::rss::{toeplitz, FlowTuple, RssConfig};

fn eal() -> &'static Eal {
    Eal::init(&EalConfig::virtual_devices("ixtest-dpdk-ring"))
        .expect("EAL starts with virtual devices only")
}

/// A `net_ring` port with `queues` loopback queues, attached for this
/// test under a name of its own.
fn ring_port(tag: &str, queues: u16) -> DpdkPort {
    let eal = eal();
    let name = format!("net_ring_{tag}");
    let mut cfg = PortConfig::new(&name, queues);
    cfg.attach = Some(name);
    cfg.mbufs_per_queue = 4096;
    let port = DpdkPort::open(eal, &cfg).expect("net_ring port opens");
    port.wait_link(Duration::from_secs(5)).expect("link up");
    port
}

/// A frame of `len` bytes whose contents depend on `seq` (sequence number
/// at bytes 14..22).
fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect();
    v[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    v[12..14].copy_from_slice(&[0x88, 0xb5]);
    v[14..22].copy_from_slice(&seq.to_le_bytes());
    v
}

fn buf_of(pool: &Pool, bytes: &[u8]) -> PktBuf {
    let mut b = pool.alloc().expect("pool has room");
    assert!(b.extend_from_slice(bytes));
    b
}

/// Receives until `n` frames came or a second passed.
fn receive(q: &mut impl QueuePair, n: usize) -> Vec<PktBuf> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.len() < n && Instant::now() < deadline {
        q.rx_burst(&mut got, 64);
    }
    got
}

const SIZES: [usize; 9] = [60, 64, 65, 128, 256, 512, 1024, 1514, 2048];

#[test]
fn ring_loopback_returns_frames_intact() {
    let port = ring_port("intact", 1);
    assert_eq!(port.driver(), "net_ring");
    let mut q = port.queue(0, Pool::new(1, 1024, false).unwrap()).unwrap();
    for round in 0..20u64 {
        let frames: Vec<Vec<u8>> = SIZES
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(round * 100 + i as u64, len))
            .collect();
        let mut out: Vec<PktBuf> = frames.iter().map(|f| buf_of(q.pool(), f)).collect();
        assert_eq!(q.tx_burst(&mut out), frames.len());
        assert!(out.is_empty());
        let back = receive(&mut q, frames.len());
        assert_eq!(back.len(), frames.len(), "round {round}");
        for (b, f) in back.iter().zip(&frames) {
            assert_eq!(b.data(), &f[..], "round {round}: frame changed");
        }
    }
    let st = q.stats();
    assert_eq!(st.tx_packets, 20 * SIZES.len() as u64);
    assert_eq!(st.rx_packets, st.tx_packets);
    assert_eq!(st.rx_bytes, st.tx_bytes);
    assert_eq!((st.rx_dropped, st.tx_dropped), (0, 0));
    let ps = port.port_stats().unwrap();
    assert_eq!(ps.opackets, st.tx_packets);
    drop(q);
    drop(port);
    // The pools' slots all came back.
}

#[test]
fn each_queue_of_a_ring_port_keeps_its_own_frames() {
    let port = ring_port("twoq", 2);
    let mut q0 = port.queue(0, Pool::new(1, 512, false).unwrap()).unwrap();
    let mut q1 = port.queue(1, Pool::new(2, 512, false).unwrap()).unwrap();
    for (k, q) in [&mut q0, &mut q1].into_iter().enumerate() {
        let mut out: Vec<PktBuf> = (0..50)
            .map(|i| buf_of(q.pool(), &pattern(k as u64 * 1000 + i, 100)))
            .collect();
        assert_eq!(q.tx_burst(&mut out), 50);
    }
    for (k, q) in [&mut q0, &mut q1].into_iter().enumerate() {
        let back = receive(q, 50);
        assert_eq!(back.len(), 50);
        for (i, b) in back.iter().enumerate() {
            assert_eq!(b.data(), &pattern(k as u64 * 1000 + i as u64, 100)[..]);
            assert_eq!(
                b.pool_id(),
                k as u16 + 1,
                "received into the queue's own pool"
            );
        }
    }
}

#[test]
fn a_full_tx_ring_leaves_the_rest_for_later_in_order() {
    let port = ring_port("full", 1);
    let mut q = port.queue(0, Pool::new(1, 4096, false).unwrap()).unwrap();
    // net_ring's rings hold 1023 frames: 1500 cannot all go at once.
    let total = 1500u64;
    let mut out: Vec<PktBuf> = (0..total)
        .map(|i| buf_of(q.pool(), &pattern(i, 80)))
        .collect();
    let first = q.tx_burst(&mut out);
    assert!(first < total as usize, "the ring took {first}");
    assert_eq!(out.len(), total as usize - first, "unsent frames stay");
    assert_eq!(
        out[0].data(),
        &pattern(first as u64, 80)[..],
        "from the front"
    );
    let mut back = receive(&mut q, first);
    assert_eq!(q.tx_burst(&mut out), total as usize - first);
    back.extend(receive(&mut q, total as usize - first));
    assert_eq!(back.len(), total as usize);
    for (i, b) in back.iter().enumerate() {
        assert_eq!(
            b.data(),
            &pattern(i as u64, 80)[..],
            "frame {i} out of order"
        );
    }
    assert_eq!(q.stats().tx_dropped, 0);
}

#[test]
fn frames_larger_than_an_mbuf_are_dropped_and_counted() {
    let port = ring_port("big", 1);
    let mut q = port.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
    let mut big = q.pool().alloc().unwrap();
    big.set_window(0, BUF_SIZE); // 2176 bytes: more than an mbuf's 2048
    let mut out = vec![
        buf_of(q.pool(), &pattern(1, 60)),
        big,
        buf_of(q.pool(), &pattern(2, 60)),
    ];
    assert_eq!(q.tx_burst(&mut out), 3, "all taken");
    let back = receive(&mut q, 2);
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].data(), &pattern(1, 60)[..]);
    assert_eq!(back[1].data(), &pattern(2, 60)[..]);
    assert_eq!(q.stats().tx_dropped, 1);
    assert_eq!(q.stats().tx_packets, 2);
}

#[test]
fn an_empty_pool_drops_received_frames_and_counts_them() {
    let port = ring_port("nopool", 1);
    let mut q = port.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
    let mut out: Vec<PktBuf> = (0..10).map(|i| buf_of(q.pool(), &pattern(i, 60))).collect();
    assert_eq!(q.tx_burst(&mut out), 10);
    let hoard: Vec<PktBuf> = std::iter::from_fn(|| q.pool().alloc()).collect();
    let mut got = Vec::new();
    assert_eq!(q.rx_burst(&mut got, 64), 0);
    assert_eq!(q.stats().rx_dropped, 10);
    drop(hoard);
}

#[test]
fn errors_name_the_port_and_what_to_do() {
    let eal = eal();
    let err = DpdkPort::open(eal, &PortConfig::new("0000:42:00.0", 1)).unwrap_err();
    assert!(matches!(err, DpdkError::NoSuchPort { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("port 0000:42:00.0: no such device — is it bound to vfio-pci"),
        "{msg}"
    );

    let mut cfg = PortConfig::new("net_ring_toomany", 64);
    cfg.attach = Some("net_ring_toomany".into());
    let err = DpdkPort::open(eal, &cfg).unwrap_err();
    assert!(
        matches!(err, DpdkError::TooManyQueues { asked: 64, .. }),
        "{err}"
    );

    let port = ring_port("errs", 1);
    let q = port.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
    let taken = port.queue(0, Pool::new(2, 64, false).unwrap()).unwrap_err();
    assert!(
        matches!(taken, DpdkError::QueueTaken { queue: 0, .. }),
        "{taken}"
    );
    drop(q);
    assert!(
        port.queue(0, Pool::new(3, 64, false).unwrap()).is_ok(),
        "released on drop"
    );
    let none = port.queue(1, Pool::new(4, 64, false).unwrap()).unwrap_err();
    assert!(matches!(
        none,
        DpdkError::NoSuchQueue {
            queue: 1,
            queues: 1,
            ..
        }
    ));
    assert!(matches!(
        port.update_flow_groups(&[(0, 0)]),
        Err(DpdkError::NoRss { .. })
    ));

    let err = Eal::init(&EalConfig::virtual_devices("another")).unwrap_err();
    assert!(matches!(err, DpdkError::EalMismatch { .. }), "{err}");
    assert!(err.to_string().contains("one EAL per process"));
}

#[test]
fn null_device_takes_our_rss_key_and_redirection_table() {
    let eal = eal();
    let mut cfg = PortConfig::new("net_null_rss", 2);
    cfg.attach = Some("net_null_rss".into());
    let mut rss = RssConfig::round_robin(2, 128);
    rss.key[0] ^= 0x5a; // not the device's default key
    cfg.rss = Some(rss.clone());
    let port = DpdkPort::open(eal, &cfg).unwrap();
    assert!(
        port.rss_offloaded(),
        "net_null reports a RETA and hash functions"
    );
    assert_eq!(port.device_rss_key().unwrap(), rss.key);
    let reta = port.device_reta().unwrap();
    assert_eq!(reta.len() % 128, 0);
    for (i, &q) in reta.iter().enumerate() {
        assert_eq!(q, rss.reta[i % 128], "entry {i}");
    }
    // A NIC hashing with the key it reports indexes the table it reports
    // by the hash's low bits: every flow lands on the queue our stack
    // expects (RssConfig::queue_for), and the flows spread over both.
    let device_key = port.device_rss_key().unwrap();
    let mut per_queue = [0usize; 2];
    for i in 0..1000u16 {
        let flow = FlowTuple {
            src_ip: [10, 1, (i >> 8) as u8, i as u8],
            dst_ip: [10, 0, 0, 1],
            src_port: 1024 + i.wrapping_mul(37),
            dst_port: 80,
        };
        let hash = toeplitz(&device_key, &flow.hash_input()) as usize;
        let q = reta[hash % reta.len()];
        assert_eq!(q, rss.queue_for(&flow), "flow {flow:?}");
        per_queue[usize::from(q)] += 1;
    }
    assert!(per_queue.iter().all(|&n| n > 400), "{per_queue:?}");
    // Migrating flow groups 3 and 10 to the other queue rewrites their
    // entries and leaves every other alone.
    port.update_flow_groups(&[(3, 0), (10, 1)]).unwrap();
    let mut want = rss.reta.clone();
    want[3] = 0;
    want[10] = 1;
    assert_eq!(port.flow_groups(), want);
    let reta = port.device_reta().unwrap();
    for (i, &q) in reta.iter().enumerate() {
        assert_eq!(q, want[i % 128], "entry {i} after the move");
    }
    let bad = port.update_flow_groups(&[(128, 0)]).unwrap_err();
    assert!(
        matches!(bad, DpdkError::RetaEntry { group: 128, .. }),
        "{bad}"
    );
    let bad = port.update_flow_groups(&[(0, 2)]).unwrap_err();
    assert!(
        matches!(bad, DpdkError::RetaEntry { queue: 2, .. }),
        "{bad}"
    );
    assert_eq!(port.flow_groups(), want, "a refused move changes nothing");
}

/// Nanoseconds per frame for `frames` frames of `len` bytes sent and
/// received back through our queue pair (one copy each way).
fn ns_per_frame_copying(len: usize, frames: usize) -> f64 {
    let port = ring_port(&format!("copy{len}"), 1);
    let mut q = port.queue(0, Pool::new(1, 1024, false).unwrap()).unwrap();
    let proto: Vec<PktBuf> = (0..32)
        .map(|i| buf_of(q.pool(), &pattern(i, len)))
        .collect();
    let (mut out, mut back) = (Vec::with_capacity(32), Vec::with_capacity(64));
    let (mut sent, mut got) = (0, 0);
    let start = Instant::now();
    while got < frames {
        out.extend(proto.iter().cloned());
        sent += q.tx_burst(&mut out);
        out.clear();
        got += q.rx_burst(&mut back, 64);
        back.clear();
    }
    let ns = start.elapsed().as_nanos() as f64 / got as f64;
    assert_eq!(
        q.stats().rx_bytes,
        (got * len) as u64,
        "every byte came back"
    );
    assert!(sent >= got);
    ns
}

/// The same through DPDK alone: mbufs allocated, sized (no payload
/// written or copied), sent, received, their first byte read, freed —
/// what a zero-copy backend would leave.
fn ns_per_frame_raw(len: usize, frames: usize) -> f64 {
    let port = ring_port(&format!("raw{len}"), 1);
    let name = std::ffi::CString::new(format!("rawpool{len}")).unwrap();
    // SAFETY: a unique pool name; sizes within DPDK's limits.
    let mp = unsafe {
        sys::rte_pktmbuf_pool_create(
            name.as_ptr(),
            4096,
            256,
            0,
            sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            -1,
        )
    };
    assert!(!mp.is_null());
    let mut tx = [std::ptr::null_mut::<sys::rte_mbuf>(); 32];
    let mut rx = [std::ptr::null_mut::<sys::rte_mbuf>(); 64];
    let (mut got, mut sum) = (0usize, 0u64);
    let start = Instant::now();
    while got < frames {
        // SAFETY: `tx` has room for 32 mbufs of the live pool `mp`; each
        // gets `len` bytes of its data room (len ≤ 2048); tx_burst takes
        // the first `n`, the rest are freed once.
        unsafe {
            assert_eq!(sys::ix_rte_pktmbuf_alloc_bulk(mp, tx.as_mut_ptr(), 32), 0);
            for &m in &tx {
                assert!(!sys::ix_rte_pktmbuf_append(m, len as u16).is_null());
            }
            let n = usize::from(sys::ix_rte_eth_tx_burst(
                port.port_id(),
                0,
                tx.as_mut_ptr(),
                32,
            ));
            if n < 32 {
                sys::rte_pktmbuf_free_bulk(tx.as_mut_ptr().add(n), (32 - n) as u32);
            }
        }
        // SAFETY: our port's queue 0 (no DpdkQueue claims it); `rx` has
        // room for 64; each received mbuf is read then freed once.
        unsafe {
            let n = usize::from(sys::ix_rte_eth_rx_burst(
                port.port_id(),
                0,
                rx.as_mut_ptr(),
                64,
            ));
            for &m in &rx[..n] {
                sum += u64::from(*sys::ix_rte_pktmbuf_mtod(m).cast::<u8>());
                assert_eq!(sys::ix_rte_pktmbuf_pkt_len(m) as usize, len);
            }
            sys::rte_pktmbuf_free_bulk(rx.as_mut_ptr(), n as u32);
            got += n;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / got as f64;
    std::hint::black_box(sum);
    drop(port);
    // SAFETY: the port that held mbufs of `mp` in its ring is closed.
    unsafe { sys::rte_mempool_free(mp) };
    ns
}

/// Measures what the copy between rte_mbuf and PktBuf costs (the module
/// docs' remaining gap): per frame, our queue pair against DPDK alone on
/// the same loopback device. Prints the figures; checks only that both
/// paths delivered every frame.
#[test]
fn copy_cost_per_frame() {
    const FRAMES: usize = 200_000;
    for len in [64usize, 1514] {
        let raw = ns_per_frame_raw(len, FRAMES);
        let ours = ns_per_frame_copying(len, FRAMES);
        eprintln!(
            "dpdk net_ring loopback, {len} B frames: DPDK alone {raw:.0} ns/frame, \
             through DpdkQueue (copy in, copy out) {ours:.0} ns/frame: +{:.0} ns ({:.1}x)",
            ours - raw,
            ours / raw
        );
    }
}
