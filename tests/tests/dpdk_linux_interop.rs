//! Interop with the Linux kernel's TCP over the DPDK backend: the set-up of
//! `linux_interop.rs` (a veth pair from `ix-testnet`, a Linux stack in the
//! namespace at one end) with DPDK's `net_af_packet` virtual device
//! (`net_af_packet…,iface=<root-side veth end>`) in place of our own
//! af_packet backend at the other, so our TCP stack talks to Linux through
//! `nic::dpdk`.
//!
//! - Linux clients against our echo server: four std `TcpStream`s opened
//!   on threads that joined the namespace, at once, each sending 1 B,
//!   2 B, one segment, one segment plus a byte, 64 KiB and random sizes
//!   up to 64 KiB, one message at a time; every echoed byte is compared,
//!   then each closes its side and waits for our FIN. Ping first.
//! - Our echo client against a Linux echo server (a std `TcpListener` in
//!   the namespace): four connections, random 1 B–64 KiB messages, every
//!   byte verified, orderly close on both sides.
//!
//! In both, neither side sends or receives a reset.
//!
//! DPDK's EAL starts once per process: every test here starts it with the
//! same arguments ([`eal`]; the second start returns the running EAL) and
//! attaches a vdev of its own name, which the port detaches when the
//! dataplane ends. Both sides busy-poll, so the tests take turns
//! ([`SERIAL`]). Built only with `--features dpdk`; needs root for the
//! namespace (prints `SKIPPED: …` without it). The driver comes from
//! DPDK's plugin directory (Debian: `librte-net-af-packet23`, a dependency
//! of `libdpdk-dev`): a missing driver fails the test, it does not skip.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::nic::dpdk::{EalConfig, PortConfig};
use ix_testnet::TestNet;
use ix_tools::echo::{
    EchoClient, EchoClientConfig, EchoClientResult, EchoServer, MessageSize, ResultSink,
};
use libix::{Config, Dataplane, RunReport};

/// Both sides busy-poll: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Connections per test.
const CONNS: usize = 4;
/// Largest message.
const MAX_MESSAGE: usize = 64 * 1024;
/// How long a Linux socket waits for one read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The Linux echo server's port.
const LINUX_PORT: u16 = 5001;

/// The EAL of this test binary: the same for every test.
fn eal() -> EalConfig {
    EalConfig::virtual_devices("ixtest-dpdk-afp")
}

/// A dataplane on a `net_af_packet` device named `net_af_packet_<tag>`
/// over the root-side veth end of `net`.
fn dpdk_config(net: &TestNet, tag: &str) -> Config {
    let name = format!("net_af_packet_{tag}");
    let mut port = PortConfig::new(&name, 1);
    port.attach = Some(format!("{name},iface={},qpairs=1", net.host_if()));
    let mut cfg = Config::dpdk(eal(), port, net.dp_ip());
    cfg.prefix_len = net.prefix_len();
    cfg.pool_buffers = 4096;
    cfg.hugepages = false;
    cfg.link_timeout = Duration::from_secs(10);
    cfg
}

/// splitmix64: the seeded generator of message sizes and contents.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The messages of Linux connection `seed`: the edge sizes (one byte,
/// one full segment of 1460 bytes and one more, 64 KiB), then random
/// sizes in 1 B..=64 KiB, filled with random bytes.
fn messages(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = seed;
    let mut sizes = vec![1, 2, 1460, 1461, MAX_MESSAGE];
    sizes.extend((0..27).map(|_| 1 + (next(&mut rng) % MAX_MESSAGE as u64) as usize));
    sizes
        .into_iter()
        .map(|len| (0..len).map(|_| next(&mut rng) as u8).collect())
        .collect()
}

/// One Linux connection to `server` (run on a thread in the namespace):
/// sends each of `msgs` once the previous one came back whole, a reader
/// thread comparing every echoed byte; then closes its side and waits for
/// the server's FIN. Returns the bytes verified.
fn linux_client(server: SocketAddr, msgs: Vec<Vec<u8>>) -> Result<u64, String> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))
        .map_err(|e| format!("connect to {server}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut rx = stream.try_clone().map_err(|e| e.to_string())?;
    let (msg_tx, msg_rx) = mpsc::channel::<Vec<u8>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // The reader drains the socket while the writer writes, so a message
    // larger than the socket buffers cannot stall both.
    let reader = std::thread::spawn(move || -> Result<u64, String> {
        let mut verified = 0u64;
        let mut got = vec![0u8; MAX_MESSAGE];
        for (i, want) in msg_rx.iter().enumerate() {
            let got = &mut got[..want.len()];
            rx.read_exact(got)
                .map_err(|e| format!("message {i} ({} B): read: {e}", want.len()))?;
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                return Err(format!(
                    "message {i} ({} B): byte {at} is {:#04x}, sent {:#04x}",
                    want.len(),
                    got[at],
                    want[at]
                ));
            }
            verified += want.len() as u64;
            if done_tx.send(()).is_err() {
                break;
            }
        }
        // The writer closed its side: the server echoes nothing more and
        // closes its own.
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest)
            .map_err(|e| format!("waiting for the server's FIN: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the last echo", rest.len()));
        }
        Ok(verified)
    });
    let sent = (|| -> Result<(), String> {
        for (i, msg) in msgs.into_iter().enumerate() {
            let len = msg.len();
            msg_tx
                .send(msg.clone())
                .map_err(|_| format!("message {i}: the reader stopped"))?;
            stream
                .write_all(&msg)
                .map_err(|e| format!("message {i} ({len} B): write: {e}"))?;
            done_rx
                .recv_timeout(IO_TIMEOUT)
                .map_err(|_| format!("message {i} ({len} B): no whole echo"))?;
        }
        Ok(())
    })();
    drop(msg_tx);
    // A failed writer shuts both ways so the reader does not wait out its
    // timeout.
    let how = if sent.is_ok() {
        Shutdown::Write
    } else {
        Shutdown::Both
    };
    stream.shutdown(how).map_err(|e| format!("shutdown: {e}"))?;
    let read = reader
        .join()
        .map_err(|_| "the reader panicked".to_string())?;
    match (sent, read) {
        (Ok(()), read) => read,
        (Err(w), Ok(_)) => Err(w),
        (Err(w), Err(r)) => Err(format!("{w}; reader: {r}")),
    }
}

/// Checks a one-core run: frames went both ways through the DPDK queue,
/// none dropped there, no TCP reset either way; prints what it carried.
fn check_run(report: &RunReport, verified: u64) {
    let core = &report.cores[0];
    let (q, tcp) = (core.queue, core.tcp);
    assert!(q.rx_packets > 0 && q.tx_packets > 0, "{q:?}");
    assert_eq!(q.rx_dropped, 0, "{q:?}");
    assert!(tcp.segs_in > 0, "{tcp:?}");
    assert_eq!((tcp.rst_sent, tcp.rst_received), (0, 0), "{tcp:?}");
    eprintln!(
        "{verified} bytes verified; DPDK queue: {} frames in, {} out",
        q.rx_packets, q.tx_packets
    );
}

#[test]
fn linux_clients_to_our_echo_server_over_dpdk_af_packet() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = TestNet::veth_pair("dafp-srv") else {
        return;
    };
    let dp = Dataplane::start(dpdk_config(&net, "srv"), |_| EchoServer::new(7))
        .expect("dataplane starts on the DPDK net_af_packet port");
    // The kernel's ping gets answers from our ICMP, through DPDK.
    match net
        .run_in_ns("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &net.dp_ip().to_string()])
        .output()
    {
        Ok(p) => assert!(
            p.status.success(),
            "ping failed: {}",
            String::from_utf8_lossy(&p.stdout)
        ),
        Err(e) => eprintln!("SKIPPED: ping part: cannot run ping ({e}); install iputils-ping"),
    }
    let server = SocketAddr::from((net.dp_ip(), 7));
    let clients: Vec<_> = (0..CONNS as u64)
        .map(|seed| {
            let msgs = messages(seed);
            let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
            (total, net.spawn_in_ns(move || linux_client(server, msgs)))
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .map(|(total, c)| (total, c.join().expect("client thread")))
        .collect();
    dp.stop();
    let report = dp.join().expect("dataplane ran");
    let mut verified = 0;
    for (i, (total, r)) in results.into_iter().enumerate() {
        let v = r
            .expect("the client joins the namespace")
            .unwrap_or_else(|e| panic!("Linux client {i}: {e}\n{report:?}"));
        assert_eq!(v, total, "Linux client {i}");
        verified += v;
    }
    check_run(&report, verified);
}

/// A Linux echo server on `listener` (in the namespace): accepts `conns`
/// connections within `IO_TIMEOUT`, echoes each on a thread of its own
/// until the peer closes, then closes. Returns the bytes echoed per
/// connection.
fn linux_echo_server(listener: TcpListener, conns: usize) -> Result<Vec<u64>, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut echoers = Vec::with_capacity(conns);
    while echoers.len() < conns {
        match listener.accept() {
            Ok((stream, _)) => echoers.push(std::thread::spawn(move || echo(stream))),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accepted {} connections: {e}", echoers.len())),
        }
    }
    echoers
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| "an echo thread panicked".to_string())?
        })
        .collect()
}

/// Echoes `stream` until its peer closes, then closes it.
fn echo(mut stream: TcpStream) -> Result<u64, String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut echoed = 0u64;
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("after {echoed} B: read: {e}"))?;
        if n == 0 {
            return Ok(echoed);
        }
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("after {echoed} B: write: {e}"))?;
        echoed += n as u64;
    }
}

#[test]
fn our_echo_client_to_a_linux_echo_server_over_dpdk_af_packet() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = TestNet::veth_pair("dafp-cli") else {
        return;
    };
    let addr = SocketAddrV4::new(net.ns_ip(), LINUX_PORT);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = net.spawn_in_ns(move || {
        let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let _ = ready_tx.send(());
        linux_echo_server(listener, CONNS)
    });
    if ready_rx.recv_timeout(IO_TIMEOUT).is_err() {
        let err = server.join().expect("server thread");
        panic!("the Linux server did not start: {err:?}");
    }

    let messages = 40;
    let client = EchoClientConfig {
        server: addr,
        connections: CONNS,
        size: MessageSize::Random {
            min: 1,
            max: MAX_MESSAGE,
            seed: 11,
        },
        messages_per_conn: Some(messages),
        warmup: Duration::ZERO,
        duration: None,
        deadline: Duration::from_secs(90),
    };
    let out = ResultSink::default();
    let sink = out.clone();
    let dp = Dataplane::start(dpdk_config(&net, "cli"), move |_| {
        EchoClient::new(client.clone(), sink.clone())
    })
    .expect("dataplane starts on the DPDK net_af_packet port");
    let report = dp.join().expect("dataplane ran");
    let r = EchoClientResult::collect(&out).expect("client result");
    let echoed = server
        .join()
        .expect("server thread")
        .expect("the server joins the namespace")
        .unwrap_or_else(|e| panic!("Linux server: {e}\n{r:?}"));

    let conns = CONNS as u64;
    assert!(!r.timed_out, "{r:?}");
    assert_eq!((r.corrupt_bytes, r.failed_conns), (0, 0), "{r:?}");
    assert_eq!(r.completed, conns * messages, "{r:?}");
    assert_eq!(r.closed_conns, conns, "{r:?}");
    assert_eq!(echoed.len(), CONNS);
    assert_eq!(
        r.verified_bytes,
        echoed.iter().sum::<u64>(),
        "we verified what Linux echoed"
    );
    assert!(r.verified_bytes > conns * messages, "{r:?}");
    check_run(&report, r.verified_bytes);
}

#[test]
fn messages_cover_the_edges_and_stay_within_64_kib() {
    let a = messages(1);
    assert_eq!(a, messages(1), "seeded");
    assert_ne!(a, messages(2));
    let sizes: Vec<usize> = a.iter().map(Vec::len).collect();
    assert_eq!(sizes[..5], [1, 2, 1460, 1461, MAX_MESSAGE]);
    assert!(sizes.iter().all(|&s| (1..=MAX_MESSAGE).contains(&s)));
    assert!(sizes[5..].iter().any(|&s| s != sizes[5]), "{sizes:?}");
}
