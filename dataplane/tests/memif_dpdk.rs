//! Interoperability with DPDK's `net_memif`: `dpdk-testpmd` forwards every
//! frame it receives back out of the same port (io forwarding, loop
//! topology), and we check that each frame returns byte for byte — with
//! testpmd as the server and our port as the slave, and the other way
//! round.
//!
//! testpmd runs in the background (see `support`), killed and its files
//! removed at the end, also when the test fails. Prints `SKIPPED: ...`
//! when `dpdk-testpmd` is not installed.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{testpmd_binary, workdir, Spec, Testpmd, SERIAL};

use dataplane::buf::{PktBuf, Pool};
use dataplane::nic::memif::{MemifConfig, MemifPort, MemifQueue, MemifRole};
use dataplane::nic::QueuePair;

/// Waits for our port to connect to testpmd, failing fast if testpmd
/// dies.
fn wait_connected(pmd: &mut Testpmd, port: &MemifPort, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while port.wait_connected(Duration::from_millis(100)).is_err() {
        if let Some(status) = pmd.exited() {
            panic!("testpmd exited ({status}):\n{}", pmd.output());
        }
        assert!(
            Instant::now() < deadline,
            "no memif link with testpmd ({:?}):\n{}",
            port.last_event(),
            pmd.output()
        );
    }
}

/// testpmd with one memif port in `role`, io forwarding.
fn testpmd(
    bin: &Path,
    tag: &str,
    role: &str,
    queues: u16,
    abstract_socket: Option<&str>,
) -> Testpmd {
    Testpmd::start(
        bin,
        &Spec {
            tag,
            role,
            forward: "io",
            queues,
            abstract_socket,
        },
    )
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(13).wrapping_add(seq) as u8)
        .collect();
    // Unicast destination so nothing treats it specially.
    v[0] = 0x02;
    v[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    v[14..22].copy_from_slice(&seq.to_le_bytes());
    v
}

/// Ethertype of warm-up probes (IEEE local experimental 2).
const PROBE_TYPE: [u8; 2] = [0x88, 0xb6];

/// testpmd drops whatever arrives while it flushes its receive queues
/// before forwarding starts: probe until a frame comes back.
fn warm_up(q: &mut MemifQueue, pmd: &Testpmd) {
    let mut probe = vec![0u8; 60];
    probe[0] = 0x02;
    probe[12..14].copy_from_slice(&PROBE_TYPE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no probe came back\n{}",
            pmd.output()
        );
        q.tx_burst_bytes(&[&probe]);
        std::thread::sleep(Duration::from_millis(20));
        let mut back = false;
        q.rx_burst_bytes(64, |f| back |= f == &probe[..]);
        if back {
            return;
        }
    }
}

/// Sends `count` frames of the given sizes on `q` and checks that each
/// comes back, in order, byte for byte. At most 128 frames in flight.
fn echo_through(q: &mut MemifQueue, sizes: &[usize], count: u64, pmd: &Testpmd) {
    let frame_of = |seq: u64| pattern(seq, sizes[seq as usize % sizes.len()]);
    let (mut sent, mut got) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut bufs = Vec::new();
    while got < count {
        assert!(
            Instant::now() < deadline,
            "{got} of {count} frames came back ({sent} sent)\n{}",
            pmd.output()
        );
        if sent < count && sent - got < 128 {
            let end = (sent + 16).min(count);
            let mut burst: Vec<PktBuf> = (sent..end)
                .map(|s| {
                    let mut b = q.pool().alloc().unwrap();
                    assert!(b.extend_from_slice(&frame_of(s)));
                    b
                })
                .collect();
            sent += q.tx_burst(&mut burst) as u64;
        }
        q.rx_burst(&mut bufs, 64);
        for b in bufs.drain(..) {
            if b.data()[12..14] == PROBE_TYPE {
                continue; // a late warm-up echo
            }
            assert_eq!(
                b.data(),
                &frame_of(got)[..],
                "frame {got} came back changed"
            );
            got += 1;
        }
    }
    assert_eq!(q.stats().tx_dropped, 0);
    assert_eq!(q.stats().rx_dropped, 0);
}

/// Jumbo frames through the byte API (chained descriptors both ways).
fn echo_jumbo(q: &mut MemifQueue, pmd: &Testpmd) {
    let sizes = [2049usize, 4000, 9000];
    for (i, &len) in sizes.iter().cycle().take(30).enumerate() {
        let f = pattern(1_000_000 + i as u64, len);
        assert_eq!(q.tx_burst_bytes(&[&f]), 1);
        let mut back = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while back.is_none() {
            assert!(
                Instant::now() < deadline,
                "jumbo {len} lost\n{}",
                pmd.output()
            );
            q.rx_burst_bytes(1, |g| {
                if g[12..14] != PROBE_TYPE {
                    back = Some(g.to_vec())
                }
            });
        }
        assert_eq!(back.unwrap(), f, "jumbo frame of {len} bytes changed");
    }
}

fn wait_queue_up(q: &mut MemifQueue) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !q.is_up() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
}

const SIZES: [usize; 9] = [60, 64, 65, 128, 256, 512, 1024, 1514, 2048];

#[test]
fn testpmd_server_echoes_what_our_slave_sends() {
    let Some(bin) = testpmd_binary() else {
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pmd = testpmd(&bin, "srv", "server", 1, None);
    pmd.wait_started(Duration::from_secs(60));
    let port = MemifPort::open(MemifConfig::new(pmd.socket(), MemifRole::Slave)).unwrap();
    wait_connected(&mut pmd, &port, Duration::from_secs(30));
    let mut q = port.queue(0, Pool::new(1, 1024, false).unwrap()).unwrap();
    wait_queue_up(&mut q);
    warm_up(&mut q, &pmd);
    echo_through(&mut q, &SIZES, 20_000, &pmd);
    echo_jumbo(&mut q, &pmd);
    drop(q);
    drop(port);
}

#[test]
fn testpmd_client_echoes_what_our_master_sends() {
    let Some(bin) = testpmd_binary() else {
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Our master must listen before the testpmd client starts.
    let sock = workdir("cli").join("memif.sock");
    let port = MemifPort::open(MemifConfig::new(&sock, MemifRole::Master)).unwrap();
    let mut pmd = testpmd(&bin, "cli", "client", 1, None);
    wait_connected(&mut pmd, &port, Duration::from_secs(60));
    let mut q = port.queue(0, Pool::new(1, 1024, false).unwrap()).unwrap();
    wait_queue_up(&mut q);
    warm_up(&mut q, &pmd);
    echo_through(&mut q, &SIZES, 20_000, &pmd);
    echo_jumbo(&mut q, &pmd);
    drop(q);
    drop(port);
}

#[test]
fn testpmd_two_queues_pair_with_ours() {
    let Some(bin) = testpmd_binary() else {
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pmd = testpmd(&bin, "mq", "server", 2, None);
    pmd.wait_started(Duration::from_secs(60));
    let port = MemifPort::open(MemifConfig {
        queues: 2,
        ..MemifConfig::new(pmd.socket(), MemifRole::Slave)
    })
    .unwrap();
    wait_connected(&mut pmd, &port, Duration::from_secs(30));
    // testpmd's io forwarding sends queue k's frames back on queue k.
    for k in 0..2 {
        let mut q = port.queue(k, Pool::new(k, 1024, false).unwrap()).unwrap();
        wait_queue_up(&mut q);
        warm_up(&mut q, &pmd);
        echo_through(&mut q, &SIZES, 5_000, &pmd);
    }
}

#[test]
fn testpmd_on_an_abstract_socket() {
    let Some(bin) = testpmd_binary() else {
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // DPDK's default: an abstract address named by the socket argument.
    let name = format!("ix-memif-test-{}", std::process::id());
    let mut pmd = testpmd(&bin, "abs", "server", 1, Some(&name));
    pmd.wait_started(Duration::from_secs(60));
    let port = MemifPort::open(MemifConfig::new(format!("@{name}"), MemifRole::Slave)).unwrap();
    wait_connected(&mut pmd, &port, Duration::from_secs(30));
    let mut q = port.queue(0, Pool::new(1, 1024, false).unwrap()).unwrap();
    wait_queue_up(&mut q);
    warm_up(&mut q, &pmd);
    echo_through(&mut q, &SIZES, 2_000, &pmd);
}
