//! The `linux` row of the echo benchmark: Linux kernel TCP over loopback, with
//! the same application logic our dataplane's echo apps run.
//!
//! - **Server**: one thread pinned to [`EchoParams::server_core`], an epoll
//!   loop (level-triggered) over a non-blocking listener on `127.0.0.1:0` and
//!   its accepted sockets (`TCP_NODELAY`). Every byte read is written back; when
//!   the socket buffer is full the rest is kept and the connection waits for
//!   `EPOLLOUT` before reading again.
//! - **Client**: one thread pinned to [`EchoParams::client_core`] with
//!   [`EchoParams::connections`] connections (`TCP_NODELAY`), each a closed
//!   loop with exactly one request of [`EchoParams::message_size`] bytes in
//!   flight: fill the request with a pattern unique to (connection, sequence
//!   number), send it, wait until the whole echo has arrived, compare it byte
//!   for byte, record the round trip (monotonic clock, ns) and send the next.
//!   Round trips completing during the warm-up are not recorded.
//!
//! A connection whose echo is wrong, short or fails with a socket error is
//! closed and counted in [`EchoResult::errors`]; the run fails only if every
//! connection failed, or if no echo byte arrived for [`STALL_TIMEOUT`]. Both
//! threads stop on their own: the client when the measured time is over, the
//! server when told to after the client has finished. Neither loop allocates
//! once its connections are set up.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use super::report::{latency_histogram, EchoResult};
use super::EchoParams;
use crate::sys::{self, Epoll, Events, READABLE, WRITABLE};

/// The client gives up when no echo byte arrived for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time the server sleeps in epoll before checking whether to stop.
const SERVER_POLL: Duration = Duration::from_millis(20);

/// Longest time the client sleeps in epoll before checking its deadlines.
const CLIENT_POLL: Duration = Duration::from_millis(10);

/// Per-connection server buffer: how much is read (and echoed) at once.
const SERVER_BUF: usize = 64 * 1024;

/// Epoll token of the listening socket (connections use their slot index).
const LISTENER: u64 = u64::MAX;

/// File descriptors needed besides the two per connection (epolls, listener,
/// stdio, the test harness).
const SPARE_FDS: u64 = 64;

/// Why the Linux echo benchmark failed, or why one of its connections did.
#[derive(Debug, thiserror::Error)]
pub enum LinuxEchoError {
    /// `connections` was zero.
    #[error("connections must be at least 1")]
    NoConnections,
    /// `message_size` was zero.
    #[error("message size must be at least 1 byte")]
    EmptyMessage,
    /// The echo did not match the request.
    #[error("connection {conn}: echo differs from the request at byte {offset} (sent {sent:#04x}, got {got:#04x})")]
    Mismatch {
        /// Client connection index.
        conn: usize,
        /// First differing byte.
        offset: usize,
        /// Byte sent at `offset`.
        sent: u8,
        /// Byte echoed at `offset`.
        got: u8,
    },
    /// The server closed the connection before the whole echo arrived.
    #[error(
        "connection {conn}: server closed the connection after {received} of {expected} echo bytes"
    )]
    PeerClosed {
        /// Client connection index.
        conn: usize,
        /// Echo bytes received for the current request.
        received: usize,
        /// Request size.
        expected: usize,
    },
    /// A socket call failed on a client connection.
    #[error("connection {conn}: socket error")]
    Socket {
        /// Client connection index.
        conn: usize,
        /// The failing call's error.
        #[source]
        source: io::Error,
    },
    /// Every client connection failed; the first failure is the source.
    #[error("all {connections} connections failed")]
    AllConnectionsFailed {
        /// Number of connections.
        connections: usize,
        /// Why the first one failed.
        #[source]
        first: Box<LinuxEchoError>,
    },
    /// No echo byte arrived for [`STALL_TIMEOUT`].
    #[error("no echo byte arrived for {} s; is the server thread stuck or starved of CPU?", .waited.as_secs())]
    Stalled {
        /// How long the client waited.
        waited: Duration,
    },
    /// A benchmark thread panicked (a bug; the panic message is on stderr).
    #[error("the echo {thread} thread panicked")]
    ThreadPanicked {
        /// `server` or `client`.
        thread: &'static str,
    },
}

/// Runs the echo benchmark on Linux kernel TCP over loopback: starts the
/// server and the client threads, waits for the warm-up and the measured
/// duration, stops both and returns the client's statistics.
pub fn run_linux_echo(params: &EchoParams) -> anyhow::Result<EchoResult> {
    if params.connections == 0 {
        return Err(LinuxEchoError::NoConnections.into());
    }
    if params.message_size == 0 {
        return Err(LinuxEchoError::EmptyMessage.into());
    }
    sys::ensure_open_files(2 * params.connections as u64 + SPARE_FDS)
        .with_context(|| format!("{} connections need more open files", params.connections))?;

    let listener =
        TcpListener::bind("127.0.0.1:0").context("binding the echo server to 127.0.0.1")?;
    let addr = listener
        .local_addr()
        .context("reading the echo server's port")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let stop = Arc::new(AtomicBool::new(false));

    let server = {
        let stop = Arc::clone(&stop);
        let core = params.server_core;
        thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || {
                pin_or_warn(core, "server");
                serve(listener, &stop)
            })
            .context("starting the echo server thread")?
    };
    let client = {
        let params = params.clone();
        thread::Builder::new()
            .name("echo-client".into())
            .spawn(move || {
                pin_or_warn(params.client_core, "client");
                run_client(addr, &params)
            })
            .context("starting the echo client thread")
    };
    // Whatever happened to the client, the server must be told to stop and joined.
    let client = client.map(|handle| handle.join());
    stop.store(true, Ordering::Relaxed);
    let server = server.join();

    let served = server
        .map_err(|_| LinuxEchoError::ThreadPanicked { thread: "server" })?
        .context("echo server")?;
    let client = client?
        .map_err(|_| LinuxEchoError::ThreadPanicked { thread: "client" })?
        .context("echo client")?;
    log::debug!(
        "linux echo: server accepted {} connections, echoed {} bytes, dropped {} on socket errors",
        served.accepted,
        served.echoed_bytes,
        served.socket_errors
    );
    Ok(EchoResult::from_histogram(
        &client.latencies_ns,
        client.measured,
        client.errors,
    ))
}

/// Pins the calling thread; a failure only degrades the measurement, so it is
/// logged rather than fatal.
fn pin_or_warn(core: usize, role: &str) {
    if let Err(err) = sys::pin_current_thread(core) {
        log::warn!("echo {role}: cannot pin to core {core} ({err}); running unpinned");
    }
}

/// What the server did, for the debug log.
#[derive(Debug, Default)]
struct ServerStats {
    accepted: u64,
    echoed_bytes: u64,
    socket_errors: u64,
}

/// One accepted connection: bytes read but not yet written back are
/// `buf[start..end]`.
struct ServerConn {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// The echo server loop; returns when `stop` is set.
fn serve(listener: TcpListener, stop: &AtomicBool) -> anyhow::Result<ServerStats> {
    let epoll = Epoll::new().context("creating the server's epoll")?;
    epoll
        .add(listener.as_fd(), READABLE, LISTENER)
        .context("watching the listener")?;
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<ServerConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut stats = ServerStats::default();

    while !stop.load(Ordering::Relaxed) {
        epoll
            .wait(&mut events, SERVER_POLL)
            .context("waiting for server events")?;
        for event in events.iter() {
            if event.token == LISTENER {
                accept_all(&listener, &epoll, &mut conns, &mut free, &mut stats)?;
                continue;
            }
            let slot = event.token as usize;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            match echo(conn, &epoll, slot as u64, &mut stats) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    // Peer closed or the socket failed: forget the connection.
                    if let Some(conn) = conns[slot].take() {
                        epoll
                            .delete(conn.stream.as_fd())
                            .context("unwatching a closed connection")?;
                    }
                    free.push(slot);
                }
            }
        }
    }
    Ok(stats)
}

/// Accepts every pending connection and registers it for reading.
fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    conns: &mut Vec<Option<ServerConn>>,
    free: &mut Vec<usize>,
    stats: &mut ServerStats,
) -> anyhow::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("accepting a connection"),
        };
        stream
            .set_nonblocking(true)
            .context("making a connection non-blocking")?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let slot = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        epoll
            .add(stream.as_fd(), READABLE, slot as u64)
            .context("watching a connection")?;
        conns[slot] = Some(ServerConn {
            stream,
            buf: vec![0; SERVER_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        });
        stats.accepted += 1;
    }
}

/// Handles readiness of one connection: finishes a pending write, or reads
/// and writes back. Returns `Ok(false)` when the peer closed it.
fn echo(
    conn: &mut ServerConn,
    epoll: &Epoll,
    token: u64,
    stats: &mut ServerStats,
) -> io::Result<bool> {
    let had_pending = conn.start < conn.end;
    if !had_pending {
        match conn.stream.read(&mut conn.buf) {
            Ok(0) => return Ok(false),
            Ok(n) => (conn.start, conn.end) = (0, n),
            Err(err) if is_transient(&err) => return Ok(true),
            Err(err) => {
                stats.socket_errors += 1;
                return Err(err);
            }
        }
    }
    while conn.start < conn.end {
        match conn.stream.write(&conn.buf[conn.start..conn.end]) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                conn.start += n;
                stats.echoed_bytes += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => {
                stats.socket_errors += 1;
                return Err(err);
            }
        }
    }
    let pending = conn.start < conn.end;
    if pending != had_pending {
        // Stop reading while echo bytes wait for room; resume once they left.
        let interest = if pending { WRITABLE } else { READABLE };
        epoll.modify(conn.stream.as_fd(), interest, token)?;
    }
    Ok(true)
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// What the client measured.
struct ClientOutcome {
    latencies_ns: Histogram<u64>,
    measured: Duration,
    errors: u64,
}

/// One client connection and its request in flight: `tx` is the request,
/// `rx[..received]` the echo so far.
struct ClientConn {
    stream: Option<TcpStream>,
    tx: Box<[u8]>,
    rx: Box<[u8]>,
    sent: usize,
    received: usize,
    seq: u64,
    started: Instant,
    writing: bool,
}

/// Fills a request with a pattern unique to (connection, sequence number), so
/// that an echo of another request, another connection or stale bytes fails
/// verification.
fn fill_request(buf: &mut [u8], conn: usize, seq: u64) {
    let seed = (conn as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ seq.wrapping_mul(0xd1b5_4a32_d192_ed03);
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = (seed >> ((i % 8) * 8)) as u8 ^ (i / 8) as u8;
    }
}

/// The first offset where `echo` differs from `sent`, if any.
fn first_difference(sent: &[u8], echo: &[u8]) -> Option<usize> {
    sent.iter().zip(echo).position(|(a, b)| a != b)
}

impl ClientConn {
    /// Starts the next request: fills it and sends as much as the socket takes.
    fn begin(&mut self, index: usize, epoll: &Epoll, now: Instant) -> Result<(), LinuxEchoError> {
        self.seq += 1;
        fill_request(&mut self.tx, index, self.seq);
        self.sent = 0;
        self.received = 0;
        self.started = now;
        self.send(index, epoll)
    }

    /// Sends more of the request; watches for writability while some is left.
    fn send(&mut self, index: usize, epoll: &Epoll) -> Result<(), LinuxEchoError> {
        let socket = |source| LinuxEchoError::Socket {
            conn: index,
            source,
        };
        let stream = self
            .stream
            .as_mut()
            .expect("only live connections are driven");
        while self.sent < self.tx.len() {
            match stream.write(&self.tx[self.sent..]) {
                Ok(0) => return Err(socket(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(socket(err)),
            }
        }
        let writing = self.sent < self.tx.len();
        if writing != self.writing {
            let interest = if writing {
                READABLE | WRITABLE
            } else {
                READABLE
            };
            epoll
                .modify(stream.as_fd(), interest, index as u64)
                .map_err(socket)?;
            self.writing = writing;
        }
        Ok(())
    }

    /// Reads echo bytes; returns `Ok(true)` when the whole echo is in and
    /// matches the request.
    fn receive(&mut self, index: usize) -> Result<bool, LinuxEchoError> {
        let stream = self
            .stream
            .as_mut()
            .expect("only live connections are driven");
        // Never read past the request: extra bytes would be an echo of nothing
        // and show up as a mismatch of the next request.
        match stream.read(&mut self.rx[self.received..]) {
            Ok(0) => Err(LinuxEchoError::PeerClosed {
                conn: index,
                received: self.received,
                expected: self.rx.len(),
            }),
            Ok(n) => {
                self.received += n;
                if self.received < self.rx.len() {
                    return Ok(false);
                }
                match first_difference(&self.tx, &self.rx) {
                    None => Ok(true),
                    Some(offset) => Err(LinuxEchoError::Mismatch {
                        conn: index,
                        offset,
                        sent: self.tx[offset],
                        got: self.rx[offset],
                    }),
                }
            }
            Err(err) if is_transient(&err) => Ok(false),
            Err(source) => Err(LinuxEchoError::Socket {
                conn: index,
                source,
            }),
        }
    }
}

/// Failed client connections: how many, how many are still alive, and why
/// the first one failed.
struct Failures {
    count: u64,
    connections: usize,
    live: usize,
    first: Option<LinuxEchoError>,
}

impl Failures {
    fn new(connections: usize) -> Self {
        Failures {
            count: 0,
            connections,
            live: connections,
            first: None,
        }
    }

    /// Closes `conn` after `err` and counts it.
    fn record(&mut self, conn: &mut ClientConn, err: LinuxEchoError, epoll: &Epoll) {
        log::warn!("linux echo: {err}");
        if let Some(stream) = conn.stream.take() {
            // Closing the socket unregisters it too; deleting first keeps the
            // interest list exact even if a duplicate of the fd existed.
            let _ = epoll.delete(stream.as_fd());
        }
        self.count += 1;
        self.live -= 1;
        self.first.get_or_insert(err);
    }

    /// Fails once no connection is left, with the first failure as the cause.
    fn check_any_alive(&mut self) -> Result<(), LinuxEchoError> {
        match (self.live, self.first.take()) {
            (0, Some(first)) => Err(LinuxEchoError::AllConnectionsFailed {
                connections: self.connections,
                first: Box::new(first),
            }),
            (_, first) => {
                self.first = first;
                Ok(())
            }
        }
    }
}

/// The closed-loop client against the echo server at `addr`.
fn run_client(addr: SocketAddr, params: &EchoParams) -> anyhow::Result<ClientOutcome> {
    let epoll = Epoll::new().context("creating the client's epoll")?;
    let mut conns = Vec::with_capacity(params.connections);
    let set_up = Instant::now();
    for index in 0..params.connections {
        let stream =
            TcpStream::connect(addr).with_context(|| format!("connecting {index} to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .set_nonblocking(true)
            .context("making a connection non-blocking")?;
        epoll
            .add(stream.as_fd(), READABLE, index as u64)
            .context("watching a connection")?;
        conns.push(ClientConn {
            stream: Some(stream),
            tx: vec![0; params.message_size].into_boxed_slice(),
            rx: vec![0; params.message_size].into_boxed_slice(),
            sent: 0,
            received: 0,
            seq: 0,
            started: set_up,
            writing: false,
        });
    }

    let mut latencies_ns = latency_histogram();
    let mut events = Events::with_capacity(params.connections);
    let mut failures = Failures::new(params.connections);

    let start = Instant::now();
    let measure_from = start + params.warmup;
    let end = measure_from + params.duration;
    for (index, conn) in conns.iter_mut().enumerate() {
        if let Err(err) = conn.begin(index, &epoll, start) {
            failures.record(conn, err, &epoll);
        }
    }
    let mut last_progress = start;

    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        failures.check_any_alive()?;
        if now.duration_since(last_progress) >= STALL_TIMEOUT {
            return Err(LinuxEchoError::Stalled {
                waited: now.duration_since(last_progress),
            }
            .into());
        }
        let ready = epoll
            .wait(&mut events, (end - now).min(CLIENT_POLL))
            .context("waiting for client events")?;
        if ready > 0 {
            // Level-triggered events on live connections mean bytes moved or
            // a connection ended: either way the server is not stuck.
            last_progress = now;
        }
        for event in events.iter() {
            let index = event.token as usize;
            let Some(conn) = conns.get_mut(index) else {
                continue;
            };
            if conn.stream.is_none() {
                continue;
            }
            if event.writable && conn.writing {
                if let Err(err) = conn.send(index, &epoll) {
                    failures.record(conn, err, &epoll);
                    continue;
                }
            }
            if !(event.readable || event.closed) {
                continue;
            }
            match conn.receive(index) {
                Ok(false) => {}
                Ok(true) => {
                    let done = Instant::now();
                    if done >= measure_from && done < end {
                        latencies_ns
                            .saturating_record(done.duration_since(conn.started).as_nanos() as u64);
                    }
                    if let Err(err) = conn.begin(index, &epoll, done) {
                        failures.record(conn, err, &epoll);
                    }
                }
                Err(err) => failures.record(conn, err, &epoll),
            }
        }
    }
    Ok(ClientOutcome {
        latencies_ns,
        measured: params.duration,
        errors: failures.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(connections: usize, message_size: usize) -> EchoParams {
        EchoParams {
            duration: Duration::from_millis(1000),
            warmup: Duration::from_millis(100),
            connections,
            message_size,
            ..EchoParams::default()
        }
    }

    #[test]
    fn linux_echo_completes_verified_round_trips_on_four_connections() {
        let result = run_linux_echo(&quick(4, 64)).unwrap();
        assert!(result.requests > 0, "{result:?}");
        assert_eq!(
            result.errors, 0,
            "every echo must match its request: {result:?}"
        );
        assert!(result.rps > 0.0 && result.p50_us > 0.0 && result.p99_us >= result.p50_us);
    }

    #[test]
    fn linux_echo_handles_messages_larger_than_socket_buffers() {
        // 4 MiB requests do not fit loopback socket buffers: both sides must
        // interleave partial writes with reads instead of deadlocking.
        let params = EchoParams {
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            ..quick(2, 4 << 20)
        };
        let result = run_linux_echo(&params).unwrap();
        assert!(result.requests > 0, "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}");
    }

    #[test]
    fn linux_echo_rejects_zero_connections_and_empty_messages() {
        let err = run_linux_echo(&quick(0, 64)).unwrap_err();
        assert!(matches!(
            err.downcast_ref(),
            Some(LinuxEchoError::NoConnections)
        ));
        let err = run_linux_echo(&quick(1, 0)).unwrap_err();
        assert!(matches!(
            err.downcast_ref(),
            Some(LinuxEchoError::EmptyMessage)
        ));
    }

    /// A server that echoes the first request with byte 10 flipped.
    fn corrupting_server() -> (SocketAddr, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            stream.read_exact(&mut buf).unwrap();
            buf[10] ^= 0x5a;
            stream.write_all(&buf).unwrap();
            // Hold the connection until the client closes it.
            let _ = stream.read(&mut buf);
        });
        (addr, handle)
    }

    #[test]
    fn client_detects_a_corrupted_echo_byte() {
        let (addr, server) = corrupting_server();
        let err = run_client(addr, &quick(1, 64))
            .err()
            .expect("a corrupted echo must fail");
        server.join().unwrap();
        let Some(LinuxEchoError::AllConnectionsFailed { first, .. }) = err.downcast_ref() else {
            panic!("unexpected error: {err:#}");
        };
        assert!(
            matches!(
                **first,
                LinuxEchoError::Mismatch {
                    conn: 0,
                    offset: 10,
                    ..
                }
            ),
            "{first}"
        );
    }

    #[test]
    fn client_reports_a_server_that_closes_mid_echo() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            stream.read_exact(&mut buf).unwrap();
            stream.write_all(&buf[..20]).unwrap();
        });
        let err = run_client(addr, &quick(1, 64))
            .err()
            .expect("a short echo must fail");
        server.join().unwrap();
        let Some(LinuxEchoError::AllConnectionsFailed { first, .. }) = err.downcast_ref() else {
            panic!("unexpected error: {err:#}");
        };
        assert!(
            matches!(
                **first,
                LinuxEchoError::PeerClosed {
                    received: 20,
                    expected: 64,
                    ..
                }
            ),
            "{first}"
        );
    }

    #[test]
    fn request_patterns_differ_between_connections_and_sequence_numbers() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill_request(&mut a, 0, 1);
        fill_request(&mut b, 0, 2);
        assert_ne!(a, b);
        fill_request(&mut b, 1, 1);
        assert_ne!(a, b);
        fill_request(&mut b, 0, 1);
        assert_eq!(a, b);
    }

    #[test]
    fn first_difference_finds_the_earliest_wrong_byte() {
        assert_eq!(first_difference(b"abcdef", b"abcdef"), None);
        assert_eq!(first_difference(b"abcdef", b"abXdeY"), Some(2));
    }
}
