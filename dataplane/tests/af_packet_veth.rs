//! The AF_PACKET backend against a real Linux stack: a veth pair whose
//! far end sits in a fresh network namespace (`ix-testnet`). Frames are
//! built by hand here; the namespace's kernel answers them.
//!
//! Needs root; prints `SKIPPED: …` otherwise.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dataplane::buf::{PktBuf, Pool};
use dataplane::nic::af_packet::{
    AfPacketConfig, AfPacketError, AfPacketPort, AfPacketQueue, TpacketVersion,
};
use dataplane::nic::QueuePair;
use dataplane::wire::checksum::checksum;
use ix_testnet::TestNet;

/// The dataplane's own (locally administered) MAC address.
const OUR_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

fn pool(id: u16) -> Pool {
    Pool::new(id, 1024, false).unwrap()
}

fn open(net: &TestNet, config: &AfPacketConfig) -> AfPacketQueue {
    AfPacketPort::open(net.host_if(), config, pool(1)).unwrap()
}

fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    a.extend_from_slice(&OUR_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth(BROADCAST, ETHERTYPE_ARP, &a)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(len as usize);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + u.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&u);
    let c = checksum(&pseudo);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

fn send(q: &mut AfPacketQueue, frame: &[u8]) {
    let mut b = q.pool().alloc().unwrap();
    assert!(b.extend_from_slice(frame));
    let mut frames = vec![b];
    assert_eq!(q.tx_burst(&mut frames), 1);
    assert_eq!(q.stats().tx_dropped, 0);
}

/// Polls `q` until a frame satisfies `want` or `timeout` passes; other
/// frames are dropped.
fn recv_until(
    q: &mut AfPacketQueue,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<PktBuf> {
    let deadline = Instant::now() + timeout;
    let mut rx = Vec::with_capacity(32);
    while Instant::now() < deadline {
        q.rx_burst(&mut rx, 32);
        if let Some(i) = rx.iter().position(|f| want(f.data())) {
            return Some(rx.swap_remove(i));
        }
        rx.clear();
        std::hint::spin_loop();
    }
    None
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

fn is_arp_reply_from(f: &[u8], ip: Ipv4Addr) -> bool {
    f.len() >= 42
        && ethertype(f) == ETHERTYPE_ARP
        && f[20..22] == [0, 2]
        && f[28..32] == ip.octets()
}

fn is_echo_reply(f: &[u8], id: u16, seq: u16) -> bool {
    f.len() >= 42
        && ethertype(f) == ETHERTYPE_IPV4
        && f[23] == 1
        && f[34] == 0
        && f[38..40] == id.to_be_bytes()
        && f[40..42] == seq.to_be_bytes()
}

#[test]
fn arp_request_gets_the_linux_reply_at_our_own_mac() {
    let Some(net) = TestNet::veth_pair("arp") else {
        return;
    };
    let mut q = open(&net, &AfPacketConfig::default());
    assert_ne!(q.interface().mac, OUR_MAC, "we speak with a MAC of our own");

    let start = Instant::now();
    send(&mut q, &arp_request(net.dp_ip(), net.ns_ip()));
    let reply = recv_until(&mut q, Duration::from_secs(2), |f| {
        is_arp_reply_from(f, net.ns_ip())
    })
    .expect("the namespace answers ARP");
    let rtt = start.elapsed();
    let f = reply.data();
    assert_eq!(
        f[0..6],
        OUR_MAC,
        "unicast to our MAC, received in promiscuous mode"
    );
    assert_eq!(f[22..28], net.ns_mac(), "sender hardware address");
    assert_eq!(f[32..38], OUR_MAC, "target hardware address");
    assert_eq!(f[38..42], net.dp_ip().octets(), "target protocol address");
    eprintln!("ARP round trip over af_packet/veth: {rtt:?}");
    assert_eq!(q.xstats().rx_outgoing, 0, "own frames never show on RX");
}

/// Pings the namespace 20 times through `q`, checking every reply, and
/// returns the sorted round-trip times.
fn ping(net: &TestNet, q: &mut AfPacketQueue, id: u16) -> Vec<Duration> {
    let payload: Vec<u8> = (0..56u8).collect();
    let mut rtts = Vec::new();
    for seq in 1..=20u16 {
        let frame = eth(
            net.ns_mac(),
            ETHERTYPE_IPV4,
            &ipv4(net.dp_ip(), net.ns_ip(), 1, &icmp_echo(id, seq, &payload)),
        );
        let start = Instant::now();
        send(q, &frame);
        let reply = recv_until(q, Duration::from_secs(2), |f| is_echo_reply(f, id, seq))
            .unwrap_or_else(|| panic!("no echo reply for seq {seq}"));
        rtts.push(start.elapsed());
        let f = reply.data();
        assert_eq!(f[0..6], OUR_MAC);
        assert_eq!(f[26..30], net.ns_ip().octets(), "from the namespace");
        assert_eq!(f[30..34], net.dp_ip().octets(), "to us");
        assert_eq!(checksum(&f[14..34]), 0, "valid IPv4 header checksum");
        assert_eq!(checksum(&f[34..]), 0, "valid ICMP checksum");
        assert_eq!(f[42..], payload[..], "payload echoed");
    }
    rtts.sort();
    rtts
}

#[test]
fn icmp_echo_gets_a_reply_from_the_namespace_kernel() {
    let Some(net) = TestNet::veth_pair("icmp") else {
        return;
    };
    net.add_neighbor(net.dp_ip(), OUR_MAC).unwrap();
    let configs = [
        (
            "V3, 4 KiB blocks, 1 ms retire",
            AfPacketConfig {
                version: TpacketVersion::V3,
                block_size: 4096,
                block_count: 64,
                ..AfPacketConfig::default()
            },
        ),
        (
            "V2",
            AfPacketConfig {
                version: TpacketVersion::V2,
                ..AfPacketConfig::default()
            },
        ),
    ];
    for (id, (what, config)) in configs.iter().enumerate() {
        let mut q = open(&net, config);
        let rtts = ping(&net, &mut q, 0x4240 + id as u16);
        eprintln!(
            "ICMP echo round trip over af_packet/veth ({what}): min {:?}, median {:?}, max {:?}",
            rtts[0],
            rtts[rtts.len() / 2],
            rtts[rtts.len() - 1]
        );
    }
}

#[test]
fn echo_with_a_bad_checksum_is_dropped_by_the_namespace_kernel() {
    let Some(net) = TestNet::veth_pair("badsum") else {
        return;
    };
    net.add_neighbor(net.dp_ip(), OUR_MAC).unwrap();
    let mut q = open(&net, &AfPacketConfig::default());
    let mut icmp = icmp_echo(7, 1, b"checksum me");
    icmp[2] ^= 0x01;
    let before = net.ns_counter("rx_packets").unwrap();
    send(
        &mut q,
        &eth(
            net.ns_mac(),
            ETHERTYPE_IPV4,
            &ipv4(net.dp_ip(), net.ns_ip(), 1, &icmp),
        ),
    );
    let reply = recv_until(&mut q, Duration::from_millis(300), |f| {
        is_echo_reply(f, 7, 1)
    });
    assert!(
        reply.is_none(),
        "Linux must verify our checksums, not trust the veth"
    );
    assert_eq!(
        net.ns_counter("rx_packets").unwrap(),
        before + 1,
        "the frame arrived"
    );
}

/// Sends `n` copies of `template` in bursts of `burst` (one kick each)
/// and waits for the namespace's `rx_packets` to settle. Returns the time
/// spent queueing and how many frames the namespace counted.
fn blast(
    net: &TestNet,
    q: &mut AfPacketQueue,
    template: &[u8],
    n: u64,
    burst: usize,
) -> (Duration, u64) {
    let before = net.ns_counter("rx_packets").unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut frames = Vec::with_capacity(burst);
    let mut rx = Vec::with_capacity(64);
    while sent < n {
        while frames.len() < burst && sent + (frames.len() as u64) < n {
            let mut b = q.pool().alloc().unwrap();
            assert!(b.extend_from_slice(template));
            frames.push(b);
        }
        sent += q.tx_burst(&mut frames) as u64;
        q.rx_burst(&mut rx, 64);
        assert!(
            rx.iter().all(|f| f.data()[6..12] != OUR_MAC),
            "our own frames do not come back"
        );
        rx.clear();
    }
    let elapsed = start.elapsed();
    q.flush();
    let mut delivered = net.ns_counter("rx_packets").unwrap() - before;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = net.ns_counter("rx_packets").unwrap() - before;
        if now == delivered {
            break;
        }
        delivered = now;
    }
    (elapsed, delivered)
}

#[test]
fn tx_blast_reaches_the_namespace() {
    let Some(net) = TestNet::veth_pair("blast") else {
        return;
    };
    const N: u64 = 200_000;
    let datagram = udp(net.dp_ip(), net.ns_ip(), 40000, 9, &[0u8; 18]);
    // To the namespace's MAC: Linux takes each frame up to UDP (closed
    // port). To a foreign MAC: Linux drops it right after the veth counted
    // it, so the rate is that of the backend and the veth alone.
    let to_stack = eth(net.ns_mac(), ETHERTYPE_IPV4, &datagram);
    let to_nobody = eth([2, 0, 0, 0, 0, 9], ETHERTYPE_IPV4, &datagram);
    assert_eq!(to_stack.len(), 60);
    let v2 = AfPacketConfig {
        version: TpacketVersion::V2,
        ..AfPacketConfig::default()
    };
    let v3 = AfPacketConfig {
        version: TpacketVersion::V3,
        ..AfPacketConfig::default()
    };
    let runs: [(&str, &[u8], usize, &AfPacketConfig); 5] = [
        (
            "to the namespace stack (UDP, closed port)",
            &to_stack,
            32,
            &v2,
        ),
        ("to a foreign MAC (dropped at L2)", &to_nobody, 32, &v2),
        ("to a foreign MAC (dropped at L2)", &to_nobody, 256, &v2),
        ("to a foreign MAC (dropped at L2)", &to_nobody, 32, &v3),
        ("to a foreign MAC (dropped at L2)", &to_nobody, 256, &v3),
    ];
    for (what, template, burst, config) in runs {
        let mut q = open(&net, config);
        let (elapsed, delivered) = blast(&net, &mut q, template, N, burst);
        let xs = q.xstats();
        eprintln!(
            "TX blast of {N} 60-byte frames {what}, {:?}, bursts of {burst}: \
             {:.0} kframes/s queued, {delivered} counted by the namespace's veth \
             ({:.0} kframes/s); {} kicks, {} busy, ring full {} times",
            config.version,
            N as f64 / elapsed.as_secs_f64() / 1e3,
            delivered as f64 / elapsed.as_secs_f64() / 1e3,
            xs.tx_kicks,
            xs.tx_kick_busy,
            xs.tx_ring_full,
        );
        assert_eq!(q.stats().tx_packets, N);
        assert_eq!(q.stats().tx_dropped, 0);
        assert_eq!(xs.tx_kick_errors, 0);
        assert!(
            delivered >= N * 9 / 10,
            "the namespace counted only {delivered} of {N} frames"
        );
    }
}

/// Ethertype of the IEEE 802 local experimental range: nobody's stack
/// takes these frames, only our packet socket.
const ETHERTYPE_EXPERIMENTAL: u16 = 0x88b5;

#[test]
fn rx_blast_from_the_namespace_is_caught() {
    let Some(net) = TestNet::veth_pair("rxblast") else {
        return;
    };
    const N: u64 = 200_000;
    for version in [TpacketVersion::V3, TpacketVersion::V2] {
        let config = AfPacketConfig {
            version,
            ..AfPacketConfig::default()
        };
        let mut q = open(&net, &config);
        let ns_if = net.ns_if().to_owned();
        let ns_mac = net.ns_mac();
        // The sender is an AF_PACKET queue too, opened inside the namespace.
        let sender = net.spawn_in_ns(move || {
            let mut tx = AfPacketPort::open(&ns_if, &AfPacketConfig::default(), pool(9)).unwrap();
            let mut frame = [0u8; 60];
            frame[0..6].copy_from_slice(&OUR_MAC);
            frame[6..12].copy_from_slice(&ns_mac);
            frame[12..14].copy_from_slice(&ETHERTYPE_EXPERIMENTAL.to_be_bytes());
            let mut seq = 0u64;
            let mut burst = Vec::with_capacity(32);
            let start = Instant::now();
            while seq < N {
                while burst.len() < 32 && seq + (burst.len() as u64) < N {
                    let mut b = tx.pool().alloc().unwrap();
                    frame[14..22].copy_from_slice(&(seq + burst.len() as u64).to_be_bytes());
                    assert!(b.extend_from_slice(&frame));
                    burst.push(b);
                }
                seq += tx.tx_burst(&mut burst) as u64;
            }
            tx.flush();
            start.elapsed()
        });

        let mut rx = Vec::with_capacity(64);
        let mut got = 0u64;
        let mut in_order = true;
        let mut next = 0u64;
        let mut first = None;
        let mut last = Instant::now();
        let mut sender_time = None;
        loop {
            let n = q.rx_burst(&mut rx, 64);
            for f in rx.drain(..) {
                let d = f.data();
                if d.len() >= 22 && ethertype(d) == ETHERTYPE_EXPERIMENTAL {
                    let seq = u64::from_be_bytes(d[14..22].try_into().unwrap());
                    in_order &= seq >= next;
                    next = seq + 1;
                    got += 1;
                }
            }
            if n > 0 {
                last = Instant::now();
                first.get_or_insert(last);
            }
            if sender_time.is_none() && sender.is_finished() {
                sender_time = Some(Instant::now());
            }
            let settled = sender_time.is_some_and(|t| t.elapsed() > Duration::from_millis(200))
                && last.elapsed() > Duration::from_millis(200);
            if got == N || settled {
                break;
            }
        }
        let send_time = sender.join().unwrap().unwrap();
        let kernel = q.kernel_stats().unwrap();
        let span = last - first.expect("frames arrived");
        eprintln!(
            "RX of {N} 60-byte frames from the namespace, {version:?}: {got} received \
             ({:.0} kframes/s over {span:?}; sender took {send_time:?}); kernel counted {} \
             for the socket, dropped {}; {} losing marks",
            got as f64 / span.as_secs_f64() / 1e3,
            kernel.packets,
            kernel.drops,
            q.xstats().rx_losing,
        );
        assert!(in_order, "frames arrive in order");
        assert_eq!(
            got + kernel.drops,
            N,
            "every frame is received or counted by the kernel as a ring drop"
        );
    }
}

#[test]
fn fanout_spreads_flows_and_delivers_each_frame_once() {
    let Some(net) = TestNet::veth_pair("fanout") else {
        return;
    };
    net.add_neighbor(net.dp_ip(), OUR_MAC).unwrap();
    let mut queues = AfPacketPort::open_queues(
        net.host_if(),
        &AfPacketConfig::default(),
        vec![pool(1), pool(2)],
    )
    .unwrap();
    assert_eq!(queues.len(), 2);

    const FLOWS: u16 = 64;
    let script = format!(
        "for p in $(seq 20000 {}); do printf x > /dev/udp/{}/$p; done",
        20000 + FLOWS - 1,
        net.dp_ip()
    );
    let status = net
        .run_in_ns("bash")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());

    let mut seen = vec![0u32; FLOWS as usize];
    let mut per_queue = [0usize; 2];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut rx = Vec::new();
    while per_queue.iter().sum::<usize>() < FLOWS as usize && Instant::now() < deadline {
        for (i, q) in queues.iter_mut().enumerate() {
            q.rx_burst(&mut rx, 32);
            for f in rx.drain(..) {
                let d = f.data();
                if d.len() >= 42 && ethertype(d) == ETHERTYPE_IPV4 && d[23] == 17 {
                    let port = u16::from_be_bytes([d[36], d[37]]);
                    if let Some(slot) = port
                        .checked_sub(20000)
                        .and_then(|p| seen.get_mut(p as usize))
                    {
                        *slot += 1;
                        per_queue[i] += 1;
                    }
                }
            }
        }
    }
    eprintln!("fanout of {FLOWS} UDP flows over 2 queues: {per_queue:?}");
    assert!(
        seen.iter().all(|&n| n == 1),
        "each datagram exactly once: {seen:?}"
    );
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "both queues get flows: {per_queue:?}"
    );
}

#[test]
fn opening_a_down_interface_says_so() {
    let Some(net) = TestNet::veth_pair("down") else {
        return;
    };
    let status = std::process::Command::new("ip")
        .args(["link", "set", net.host_if(), "down"])
        .status()
        .unwrap();
    assert!(status.success());
    let err = AfPacketPort::open(net.host_if(), &AfPacketConfig::default(), pool(1)).unwrap_err();
    assert!(matches!(err, AfPacketError::InterfaceDown { .. }), "{err}");
    assert!(err.to_string().contains("ip link set"), "{err}");
}
