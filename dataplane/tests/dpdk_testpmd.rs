//! The DPDK backend against `dpdk-testpmd`: our port is a DPDK
//! `net_memif` client, testpmd the `net_memif` server forwarding in
//! `macswap` mode (each frame goes back out of the port it came in on,
//! source and destination MAC addresses exchanged). Every frame we send
//! must come back, in order, byte for byte but for the swapped addresses
//! — on one queue, and on each of two queues.
//!
//! Two processes, two EALs: testpmd (lcores 0-1, `--no-huge`, its own
//! file prefix) and this test binary (one EAL for the binary, see
//! [`eal`]). testpmd is killed and its files removed at the end, also
//! when the test fails. Built only with `--features dpdk`; prints
//! `SKIPPED: ...` when `dpdk-testpmd` is not installed.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{testpmd_binary, Spec, Testpmd, SERIAL};

use dataplane::buf::{PktBuf, Pool};
use dataplane::nic::dpdk::{DpdkPort, DpdkQueue, Eal, EalConfig, PortConfig};
use dataplane::nic::QueuePair;

fn eal() -> &'static Eal {
    Eal::init(&EalConfig::virtual_devices("ixtest-dpdk-testpmd"))
        .expect("EAL starts with virtual devices only")
}

/// testpmd with a memif server port, forwarding in macswap mode.
fn testpmd(bin: &Path, tag: &str, queues: u16) -> Testpmd {
    let mut pmd = Testpmd::start(
        bin,
        &Spec {
            tag,
            role: "server",
            forward: "macswap",
            queues,
            abstract_socket: None,
        },
    );
    pmd.wait_started(Duration::from_secs(60));
    pmd
}

/// Our memif client port to testpmd's socket.
fn client_port(pmd: &Testpmd, tag: &str, queues: u16) -> DpdkPort {
    let name = format!("net_memif_{tag}");
    let mut cfg = PortConfig::new(&name, queues);
    cfg.attach = Some(format!(
        "{name},role=client,id=0,socket={},socket-abstract=no",
        pmd.socket().display()
    ));
    let port = DpdkPort::open(eal(), &cfg).unwrap_or_else(|e| panic!("{e}\n{}", pmd.output()));
    port.wait_link(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", pmd.output()));
    port
}

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Ethertypes: data frames and warm-up probes (IEEE local experimental).
const DATA: [u8; 2] = [0x88, 0xb5];
const PROBE: [u8; 2] = [0x88, 0xb6];

/// A frame from us to the peer; its contents depend on `seq`.
fn frame(seq: u64, len: usize, ethertype: [u8; 2]) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(13).wrapping_add(seq) as u8)
        .collect();
    v[0..6].copy_from_slice(&PEER_MAC);
    v[6..12].copy_from_slice(&OUR_MAC);
    v[12..14].copy_from_slice(&ethertype);
    v[14..22].copy_from_slice(&seq.to_le_bytes());
    v
}

/// What macswap sends back for `f`.
fn swapped(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    v[0..6].copy_from_slice(&f[6..12]);
    v[6..12].copy_from_slice(&f[0..6]);
    v
}

/// testpmd flushes what arrives before it forwards: probe until one
/// comes back.
fn warm_up(q: &mut DpdkQueue, pmd: &Testpmd) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = frame(0, 60, PROBE);
    let mut back = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no probe came back\n{}",
            pmd.output()
        );
        let mut b = q.pool().alloc().unwrap();
        assert!(b.extend_from_slice(&probe));
        q.tx_burst(&mut vec![b]);
        std::thread::sleep(Duration::from_millis(10));
        q.rx_burst(&mut back, 64);
        if back.drain(..).any(|b| b.data() == &swapped(&probe)[..]) {
            return;
        }
    }
}

/// Sends `count` frames (sizes cycling through `sizes`), at most 128 in
/// flight, and checks each comes back in order, MACs swapped, the rest
/// unchanged.
fn echo_through(q: &mut DpdkQueue, sizes: &[usize], count: u64, pmd: &Testpmd) {
    let frame_of = |s: u64| frame(s, sizes[s as usize % sizes.len()], DATA);
    let (mut sent, mut got) = (0u64, 0u64);
    let mut back = Vec::new();
    let mut out: Vec<PktBuf> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < count {
        assert!(
            Instant::now() < deadline,
            "{got} of {count} frames came back ({sent} sent)\n{}",
            pmd.output()
        );
        if out.is_empty() && sent < count && sent - got < 128 {
            for s in sent..(sent + 32).min(count) {
                let mut b = q.pool().alloc().unwrap();
                assert!(b.extend_from_slice(&frame_of(s)));
                out.push(b);
            }
        }
        sent += q.tx_burst(&mut out) as u64;
        q.rx_burst(&mut back, 64);
        for b in back.drain(..) {
            if b.data()[12..14] == PROBE {
                continue; // a late warm-up echo
            }
            assert_eq!(
                b.data(),
                &swapped(&frame_of(got))[..],
                "frame {got} came back changed"
            );
            got += 1;
        }
    }
    assert_eq!((q.stats().rx_dropped, q.stats().tx_dropped), (0, 0));
}

const SIZES: [usize; 9] = [60, 64, 65, 128, 256, 512, 1024, 1514, 2048];

#[test]
fn testpmd_macswaps_every_frame_back_intact() {
    let Some(bin) = testpmd_binary() else {
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pmd = testpmd(&bin, "one", 1);
    let port = client_port(&pmd, "one", 1);
    assert_eq!(port.driver(), "net_memif");
    let mut q = port.queue(0, Pool::new(1, 2048, false).unwrap()).unwrap();
    warm_up(&mut q, &pmd);
    echo_through(&mut q, &SIZES, 20_000, &pmd);
    assert!(port.port_stats().unwrap().opackets >= 20_000);
}

#[test]
fn testpmd_macswaps_on_each_of_two_queues() {
    let Some(bin) = testpmd_binary() else {
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pmd = testpmd(&bin, "two", 2);
    let port = client_port(&pmd, "two", 2);
    // memif pairs queue k with the peer's queue k, and testpmd forwards
    // queue k's frames back on queue k.
    for k in 0..2 {
        let mut q = port.queue(k, Pool::new(k, 2048, false).unwrap()).unwrap();
        warm_up(&mut q, &pmd);
        echo_through(&mut q, &SIZES, 5_000, &pmd);
    }
}
