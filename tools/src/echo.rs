//! Echo server and echo client on libix.
//!
//! The server sends back every byte it receives, zero-copy (the reply
//! references the received packet buffer). The client keeps one request
//! outstanding per connection, verifies every byte of each reply against
//! the pattern it sent, and records round-trip latencies.
//!
//! Message contents come from a fixed pseudo-random pattern, so requests
//! need no allocation and any corruption, loss, duplication or reordering
//! of bytes shows up as a verification error.

use std::any::Any;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use libix::{App, Conn, Cx, Dead, FourTuple, Instant, Knock, RxBuf, TxBuf};

/// Length of the shared request pattern; messages are windows of it.
const PATTERN_LEN: usize = 256 * 1024;

/// The request pattern: deterministic bytes every peer can recompute.
pub fn pattern() -> Rc<[u8]> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..PATTERN_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Per-connection state of the echo server: replies the send window did
/// not take yet.
#[derive(Default)]
struct ServerConn {
    backlog: Vec<TxBuf>,
    /// The peer closed its side: close ours once the backlog is sent.
    closing: bool,
}

/// A server connection on its way to another core: its backlog, copied.
struct MovedServerConn {
    backlog: Vec<u8>,
    closing: bool,
}

/// The echo server.
pub struct EchoServer {
    port: u16,
    conns: Vec<ServerConn>,
    /// Bytes echoed.
    pub echoed: u64,
}

impl EchoServer {
    /// A server listening on `port`.
    pub fn new(port: u16) -> EchoServer {
        EchoServer {
            port,
            conns: Vec::new(),
            echoed: 0,
        }
    }

    fn slot(&mut self, conn: Conn) -> &mut ServerConn {
        let i = conn.index();
        if i >= self.conns.len() {
            self.conns.resize_with(i + 1, ServerConn::default);
        }
        &mut self.conns[i]
    }

    fn push(&mut self, cx: &mut Cx, conn: Conn) {
        let state = self.slot(conn);
        if state.backlog.is_empty() {
            return;
        }
        let Ok(mut taken) = cx.sendv(conn, &state.backlog) else {
            state.backlog.clear();
            return;
        };
        self.echoed += taken as u64;
        let state = self.slot(conn);
        let mut done = 0;
        for buf in state.backlog.iter_mut() {
            if taken >= buf.len() {
                taken -= buf.len();
                done += 1;
            } else {
                buf.advance(taken);
                break;
            }
        }
        state.backlog.drain(..done);
        self.close_if_drained(cx, conn);
    }

    fn close_if_drained(&mut self, cx: &mut Cx, conn: Conn) {
        let state = self.slot(conn);
        if state.closing && state.backlog.is_empty() {
            state.closing = false;
            let _ = cx.close(conn);
        }
    }
}

impl App for EchoServer {
    const MIGRATES: bool = true;

    fn start(&mut self, cx: &mut Cx) {
        if let Err(e) = cx.listen(self.port) {
            log::error!("echo server cannot listen on port {}: {e}", self.port);
            cx.stop();
        }
    }

    fn knock(&mut self, _cx: &mut Cx, conn: Conn, _peer: FourTuple) -> Knock {
        *self.slot(conn) = ServerConn::default();
        Knock::Accept
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        let state = self.slot(conn);
        if state.backlog.is_empty() {
            let tx = data.to_tx();
            match cx.sendv(conn, std::slice::from_ref(&tx)) {
                Ok(n) => {
                    self.echoed += n as u64;
                    if n < tx.len() {
                        self.slot(conn).backlog.push(tx.slice(n, tx.len() - n));
                    }
                }
                Err(e) => log::debug!("echo to {conn:?} failed: {e}"),
            }
        } else {
            state.backlog.push(data.to_tx());
            self.push(cx, conn);
        }
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        self.push(cx, conn);
    }

    fn migrate_out(&mut self, _cx: &mut Cx, conn: Conn) -> Option<Box<dyn Any + Send>> {
        let state = std::mem::take(self.slot(conn));
        let backlog: Vec<u8> = state
            .backlog
            .iter()
            .flat_map(|b| b.as_slice().iter().copied())
            .collect();
        Some(Box::new(MovedServerConn {
            backlog,
            closing: state.closing,
        }))
    }

    fn migrate_in(&mut self, cx: &mut Cx, conn: Conn, state: Option<Box<dyn Any + Send>>) {
        let moved = state.and_then(|s| s.downcast::<MovedServerConn>().ok());
        let slot = self.slot(conn);
        *slot = ServerConn::default();
        if let Some(m) = moved {
            if !m.backlog.is_empty() {
                slot.backlog.push(TxBuf::from_vec(m.backlog));
            }
            slot.closing = m.closing;
            self.push(cx, conn);
            self.close_if_drained(cx, conn);
        }
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        let state = self.slot(conn);
        if matches!(why, Dead::PeerClosed) {
            // Echo what is still queued, then close.
            state.closing = true;
            self.close_if_drained(cx, conn);
        } else {
            state.backlog.clear();
            state.closing = false;
        }
    }
}

/// Sizes of the client's requests.
#[derive(Debug, Clone, Copy)]
pub enum MessageSize {
    /// Every request has this many bytes.
    Fixed(usize),
    /// Sizes drawn uniformly from `min..=max` with a seeded generator.
    Random {
        /// Smallest request.
        min: usize,
        /// Largest request.
        max: usize,
        /// Seed.
        seed: u64,
    },
}

/// What the echo client does.
#[derive(Debug, Clone)]
pub struct EchoClientConfig {
    /// Server address.
    pub server: SocketAddrV4,
    /// Connections opened by this core.
    pub connections: usize,
    /// Request sizes.
    pub size: MessageSize,
    /// Stop after this many round trips per connection (then close).
    pub messages_per_conn: Option<u64>,
    /// Time before latencies are recorded.
    pub warmup: Duration,
    /// Measured time (then close); `None` runs until the message count.
    pub duration: Option<Duration>,
    /// Give up if the run lasts longer than this.
    pub deadline: Duration,
}

/// What the echo client measured.
#[derive(Debug, Clone)]
pub struct EchoClientResult {
    /// Round trips completed in the measured window.
    pub measured: u64,
    /// Round trips completed in all.
    pub completed: u64,
    /// Bytes received and verified.
    pub verified_bytes: u64,
    /// Bytes that differed from what was sent (must be 0).
    pub corrupt_bytes: u64,
    /// Connections that failed (connect error, reset, timeout).
    pub failed_conns: u64,
    /// Connections closed in order after their last round trip.
    pub closed_conns: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Round-trip latencies in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Whether the run hit its deadline.
    pub timed_out: bool,
}

/// Where each core's client leaves its result when it stops.
pub type ResultSink = Arc<Mutex<Vec<EchoClientResult>>>;

impl EchoClientResult {
    /// Combines the results of several cores: counts add up, latencies
    /// merge, the measured window is the longest. `None` for no results.
    pub fn combine(results: Vec<EchoClientResult>) -> Option<EchoClientResult> {
        let mut it = results.into_iter();
        let mut total = it.next()?;
        for r in it {
            total.measured += r.measured;
            total.completed += r.completed;
            total.verified_bytes += r.verified_bytes;
            total.corrupt_bytes += r.corrupt_bytes;
            total.failed_conns += r.failed_conns;
            total.closed_conns += r.closed_conns;
            total.elapsed = total.elapsed.max(r.elapsed);
            total.timed_out |= r.timed_out;
            total
                .latency_ns
                .add(&r.latency_ns)
                .expect("histograms of equal bounds merge");
        }
        Some(total)
    }

    /// Takes and combines what the cores left in `sink`.
    pub fn collect(sink: &ResultSink) -> Option<EchoClientResult> {
        let results = std::mem::take(&mut *sink.lock().expect("result lock poisoned"));
        EchoClientResult::combine(results)
    }
}

struct ClientConn {
    conn: Option<Conn>,
    sent_at: Instant,
    msg_len: usize,
    msg_off: usize,
    unsent: Option<TxBuf>,
    received: usize,
    done_msgs: u64,
    rng: u64,
    finished: bool,
}

const TIMER_MEASURE_START: u64 = 1;
const TIMER_MEASURE_END: u64 = 2;
const TIMER_DEADLINE: u64 = 3;
const TIMER_LINGER: u64 = 4;

/// How long the client waits for its close handshakes before stopping.
const LINGER: Duration = Duration::from_secs(3);

/// The echo client.
pub struct EchoClient {
    cfg: EchoClientConfig,
    pattern: Rc<[u8]>,
    conns: Vec<ClientConn>,
    by_index: Vec<usize>,
    measuring: bool,
    ending: bool,
    started_at: Instant,
    measure_from: Instant,
    measure_to: Option<Instant>,
    lingering_since: Option<Instant>,
    result: EchoClientResult,
    out: ResultSink,
    stored: bool,
}

impl EchoClient {
    /// A client that will store its result in `out` when it stops.
    pub fn new(cfg: EchoClientConfig, out: ResultSink) -> EchoClient {
        EchoClient {
            pattern: pattern(),
            conns: Vec::with_capacity(cfg.connections),
            by_index: Vec::new(),
            measuring: false,
            ending: false,
            started_at: Instant::ZERO,
            measure_from: Instant::ZERO,
            measure_to: None,
            lingering_since: None,
            result: EchoClientResult {
                measured: 0,
                completed: 0,
                verified_bytes: 0,
                corrupt_bytes: 0,
                failed_conns: 0,
                closed_conns: 0,
                elapsed: Duration::ZERO,
                latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .expect("valid histogram bounds"),
                timed_out: false,
            },
            out,
            stored: false,
            cfg,
        }
    }

    fn next_size(&self, c: &mut ClientConn) -> usize {
        match self.cfg.size {
            MessageSize::Fixed(n) => n,
            MessageSize::Random { min, max, .. } => {
                c.rng ^= c.rng << 13;
                c.rng ^= c.rng >> 7;
                c.rng ^= c.rng << 17;
                min + (c.rng % (max - min + 1) as u64) as usize
            }
        }
    }

    fn send_next(&mut self, cx: &mut Cx, i: usize) {
        let mut c = std::mem::replace(&mut self.conns[i], placeholder());
        let len = self.next_size(&mut c).clamp(1, PATTERN_LEN / 2);
        c.msg_len = len;
        c.msg_off = (c.done_msgs as usize * 7919 + i * 104_729) % (PATTERN_LEN - len);
        c.received = 0;
        c.sent_at = cx.now();
        c.unsent = Some(TxBuf::from_rc(self.pattern.clone()).slice(c.msg_off, len));
        self.conns[i] = c;
        self.push(cx, i);
    }

    fn push(&mut self, cx: &mut Cx, i: usize) {
        let c = &mut self.conns[i];
        let (Some(conn), Some(buf)) = (c.conn, c.unsent.as_mut()) else {
            return;
        };
        match cx.sendv(conn, std::slice::from_ref(buf)) {
            Ok(n) if n >= buf.len() => c.unsent = None,
            Ok(n) => buf.advance(n),
            Err(e) => {
                log::debug!("send on {conn:?} failed: {e}");
                c.unsent = None;
            }
        }
    }

    fn conn_slot(&self, conn: Conn) -> Option<usize> {
        let i = *self.by_index.get(conn.index())?;
        (self.conns.get(i)?.conn == Some(conn)).then_some(i)
    }

    fn finish_conn(&mut self, cx: &mut Cx, i: usize) {
        let c = &mut self.conns[i];
        if c.finished {
            return;
        }
        c.finished = true;
        if let Some(conn) = c.conn.take() {
            if cx.close(conn).is_ok() {
                self.result.closed_conns += 1;
            }
        }
        self.maybe_stop(cx);
    }

    /// Once every connection is finished, waits (up to [`LINGER`]) for the
    /// close handshakes to complete, then stops the core.
    fn maybe_stop(&mut self, cx: &mut Cx) {
        if self.lingering_since.is_some() || !self.conns.iter().all(|c| c.finished) {
            return;
        }
        self.store(cx);
        self.lingering_since = Some(cx.now());
        self.linger(cx);
    }

    fn linger(&mut self, cx: &mut Cx) {
        let since = self.lingering_since.unwrap_or(cx.now());
        let done = cx.unfinished_connections() == 0 || cx.now() - since >= LINGER;
        if done
            || cx
                .arm_timer(Duration::from_millis(1), TIMER_LINGER)
                .is_err()
        {
            cx.stop();
        }
    }

    fn store(&mut self, cx: &mut Cx) {
        let end = self.measure_to.unwrap_or(cx.now());
        self.result.elapsed = end - self.measure_from;
        let snapshot = EchoClientResult {
            latency_ns: self.result.latency_ns.clone(),
            ..self.result.clone()
        };
        if !self.stored {
            self.stored = true;
            self.out
                .lock()
                .expect("result lock poisoned")
                .push(snapshot);
        }
    }
}

fn placeholder() -> ClientConn {
    ClientConn {
        conn: None,
        sent_at: Instant::ZERO,
        msg_len: 0,
        msg_off: 0,
        unsent: None,
        received: 0,
        done_msgs: 0,
        rng: 0,
        finished: true,
    }
}

impl App for EchoClient {
    fn start(&mut self, cx: &mut Cx) {
        self.started_at = cx.now();
        let seed = match self.cfg.size {
            MessageSize::Random { seed, .. } => seed,
            MessageSize::Fixed(_) => 1,
        };
        for i in 0..self.cfg.connections {
            let mut c = placeholder();
            c.finished = false;
            c.rng = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64)
                | 1;
            match cx.connect(self.cfg.server) {
                Ok(conn) => {
                    if self.by_index.len() <= conn.index() {
                        self.by_index.resize(conn.index() + 1, usize::MAX);
                    }
                    self.by_index[conn.index()] = i;
                    c.conn = Some(conn);
                }
                Err(e) => {
                    log::warn!("connect to {} failed: {e}", self.cfg.server);
                    self.result.failed_conns += 1;
                    c.finished = true;
                }
            }
            self.conns.push(c);
        }
        if self.cfg.warmup.is_zero() {
            self.measuring = true;
            self.measure_from = cx.now();
        } else {
            let _ = cx.arm_timer(self.cfg.warmup, TIMER_MEASURE_START);
        }
        if let Some(d) = self.cfg.duration {
            let _ = cx.arm_timer(self.cfg.warmup + d, TIMER_MEASURE_END);
        }
        let _ = cx.arm_timer(self.cfg.deadline, TIMER_DEADLINE);
        self.maybe_stop(cx);
    }

    fn connected(&mut self, cx: &mut Cx, conn: Conn, result: Result<(), libix::ConnectError>) {
        let Some(i) = self.conn_slot(conn) else {
            return;
        };
        match result {
            Ok(()) => self.send_next(cx, i),
            Err(e) => {
                log::warn!("connection {i} failed: {e:?}");
                self.result.failed_conns += 1;
                self.conns[i].conn = None;
                self.conns[i].finished = true;
                self.maybe_stop(cx);
            }
        }
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        let Some(i) = self.conn_slot(conn) else {
            return;
        };
        let c = &mut self.conns[i];
        let start = c.msg_off + c.received;
        let take = data.len().min(c.msg_len - c.received);
        let expected = &self.pattern[start..start + take];
        let bad = expected
            .iter()
            .zip(data.iter())
            .filter(|(a, b)| a != b)
            .count();
        // Bytes beyond the outstanding request were never sent: corrupt.
        let extra = data.len() - take;
        self.result.corrupt_bytes += (bad + extra) as u64;
        self.result.verified_bytes += (take - bad) as u64;
        c.received += take;
        if c.received < c.msg_len {
            return;
        }
        let rtt = cx.now() - c.sent_at;
        c.done_msgs += 1;
        self.result.completed += 1;
        if self.measuring {
            self.result.measured += 1;
            let _ = self.result.latency_ns.record(rtt.as_nanos().max(1) as u64);
        }
        let done = self.ending
            || self
                .cfg
                .messages_per_conn
                .is_some_and(|n| self.conns[i].done_msgs >= n);
        drop(data);
        if done {
            self.finish_conn(cx, i);
        } else {
            self.send_next(cx, i);
        }
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        if let Some(i) = self.conn_slot(conn) {
            self.push(cx, i);
        }
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        let Some(i) = self.conn_slot(conn) else {
            return;
        };
        if !matches!(why, Dead::PeerClosed) {
            log::warn!("connection {i} died: {why:?}");
            self.result.failed_conns += 1;
            self.conns[i].conn = None;
        }
        self.finish_conn(cx, i);
    }

    fn timer(&mut self, cx: &mut Cx, token: u64) {
        match token {
            TIMER_MEASURE_START => {
                self.measuring = true;
                self.measure_from = cx.now();
            }
            TIMER_MEASURE_END => {
                self.measuring = false;
                self.measure_to = Some(cx.now());
                self.ending = true;
                // Connections idle between round trips finish now; the others
                // finish when their outstanding reply arrives.
                for i in 0..self.conns.len() {
                    if self.conns[i].unsent.is_none()
                        && self.conns[i].received >= self.conns[i].msg_len
                    {
                        self.finish_conn(cx, i);
                    }
                }
            }
            TIMER_LINGER => self.linger(cx),
            TIMER_DEADLINE => {
                // A run already lingering has stored its complete result.
                if self.lingering_since.is_none() {
                    self.result.timed_out = true;
                    self.store(cx);
                }
                cx.stop();
            }
            _ => {}
        }
    }
}
