//! The KVS server as a libix application: one [`IxKvs`] per elastic
//! thread, all sharing one [`Kvs`].
//!
//! Per connection a [`Session`] parses each received [`RxBuf`] in place and
//! the buffer is dropped (released to TCP, reopening the window) as soon as
//! it is parsed. Replies are queued `TxBuf`s (slices of stored items, no
//! copy) handed to `sendv`; what the send window does not take stays queued
//! until [`App::sent`]. When the queue passes
//! [`super::session::BACKLOG_LIMIT`] the connection stops parsing and holds
//! its next `RxBuf`s instead: the receive window closes and the client is
//! slowed by TCP flow control, without the server buffering more.
//!
//! When the dataplane grows or shrinks, a connection whose flow group
//! moves to another core takes its session along ([`App::migrate_out`]):
//! the parser's state, its queued replies and the input not parsed yet,
//! copied; the other core's instance carries on from there.
//!
//! Time: each handler reads `Cx::now()` (the loop turn's time), so a
//! request costs no clock read.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

use libix::{App, Conn, Cx, Dead, FourTuple, Knock, RxBuf};

use super::clock::RelTime;
use super::session::Session;
use super::stats::{dec, inc};
use super::Kvs;

/// One connection's state on its core.
struct Connection {
    conn: Conn,
    session: Session,
    /// Received bytes not parsed yet that came along when the connection
    /// moved from another core (parsed before `held`), and how many of
    /// them were used.
    carried: Vec<u8>,
    carried_off: usize,
    /// Received buffers not parsed yet (backpressure), with how much of
    /// the front one was used.
    held: VecDeque<RxBuf>,
    held_off: usize,
    /// The peer closed its side: close ours once the replies are out.
    peer_closed: bool,
}

impl Connection {
    fn new(conn: Conn, session: Session) -> Connection {
        Connection {
            conn,
            session,
            carried: Vec::new(),
            carried_off: 0,
            held: VecDeque::new(),
            held_off: 0,
            peer_closed: false,
        }
    }

    /// Whether received bytes wait to be parsed.
    fn has_input(&self) -> bool {
        self.carried_off < self.carried.len() || !self.held.is_empty()
    }
}

/// A connection on its way to another core: its session and unparsed
/// input, copied (see [`App::migrate_out`]).
struct MovedConnection {
    session: super::session::MovedSession,
    input: Vec<u8>,
    peer_closed: bool,
}

/// The KVS application of one elastic thread.
pub struct IxKvs {
    kvs: Arc<Kvs>,
    port: u16,
    worker: usize,
    conns: Vec<Option<Connection>>,
}

impl IxKvs {
    /// The application for core `worker`, serving `kvs` on TCP `port`.
    pub fn new(kvs: Arc<Kvs>, port: u16, worker: usize) -> IxKvs {
        IxKvs {
            kvs,
            port,
            worker,
            conns: Vec::new(),
        }
    }

    /// Forgets a connection (its handle is dead or closed).
    fn forget(&mut self, conn: Conn) {
        if let Some(slot) = self.conns.get_mut(conn.index()) {
            if slot.as_ref().is_some_and(|c| c.conn == conn) {
                *slot = None;
                dec(&self.kvs.worker(self.worker).curr_connections);
            }
        }
    }

    /// Sends what the window takes, parses held input while the backlog
    /// allows, and closes the connection when it is done.
    fn pump(&mut self, cx: &mut Cx, conn: Conn) {
        let now = self.kvs.now(cx.now());
        let Some(c) = lookup(&mut self.conns, conn) else {
            return;
        };
        match flush(cx, c, &self.kvs, self.worker, now) {
            Flow::Open => {}
            Flow::Done => {
                if c.peer_closed && c.session.mid_request() {
                    log::debug!("kvs: {conn:?} closed in the middle of a request");
                }
                let _ = cx.close(conn);
                self.forget(conn);
            }
            Flow::Failed => {
                let _ = cx.abort(conn);
                self.forget(conn);
            }
        }
    }
}

/// The live connection for `conn`, if it is still ours.
#[inline]
fn lookup(conns: &mut [Option<Connection>], conn: Conn) -> Option<&mut Connection> {
    conns
        .get_mut(conn.index())
        .and_then(Option::as_mut)
        .filter(|c| c.conn == conn)
}

/// What a connection should do after [`flush`].
enum Flow {
    /// Keep going.
    Open,
    /// Everything is sent and the connection is finished: close it.
    Done,
    /// Sending failed: reset it.
    Failed,
}

/// Sends queued replies while the window takes them, parsing held input
/// whenever the backlog has room.
fn flush(cx: &mut Cx, c: &mut Connection, kvs: &Kvs, worker: usize, now: RelTime) -> Flow {
    loop {
        if !c.session.replies().is_empty() {
            match cx.sendv(c.conn, c.session.replies()) {
                Ok(n) => {
                    c.session.consume(n);
                    super::stats::add(&kvs.worker(worker).bytes_written, n as u64);
                }
                Err(e) => {
                    log::debug!("kvs: send on {:?} failed: {e}", c.conn);
                    return Flow::Failed;
                }
            }
        }
        if c.session.is_blocked() || !c.has_input() {
            break;
        }
        if c.carried_off < c.carried.len() {
            let used = c
                .session
                .feed(&c.carried[c.carried_off..], kvs, worker, now);
            c.carried_off += used;
            if c.carried_off < c.carried.len() {
                continue;
            }
            c.carried = Vec::new();
            c.carried_off = 0;
        }
        while let Some(buf) = c.held.front() {
            let used = c.session.feed(&buf[c.held_off..], kvs, worker, now);
            c.held_off += used;
            if c.held_off < buf.len() {
                break;
            }
            c.held.pop_front();
            c.held_off = 0;
        }
    }
    let finished = c.session.wants_close() || (c.peer_closed && !c.has_input());
    if c.session.replies().is_empty() && finished {
        Flow::Done
    } else {
        Flow::Open
    }
}

impl App for IxKvs {
    const MIGRATES: bool = true;

    fn start(&mut self, cx: &mut Cx) {
        if let Err(e) = cx.listen(self.port) {
            log::error!("kvs: cannot listen on port {}: {e}", self.port);
            cx.stop();
        }
    }

    fn knock(&mut self, _cx: &mut Cx, conn: Conn, _peer: FourTuple) -> Knock {
        let i = conn.index();
        if i >= self.conns.len() {
            self.conns.resize_with(i + 1, || None);
        }
        let stats = self.kvs.worker(self.worker);
        if self.conns[i].is_some() {
            // A stale entry whose end we missed: the slot is reused.
            dec(&stats.curr_connections);
        }
        self.conns[i] = Some(Connection::new(
            conn,
            Session::new(self.kvs.store().item_max()),
        ));
        inc(&stats.curr_connections);
        inc(&stats.total_connections);
        Knock::Accept
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        let now = self.kvs.now(cx.now());
        let Some(c) = lookup(&mut self.conns, conn) else {
            return;
        };
        if c.has_input() || c.session.is_blocked() {
            c.held.push_back(data);
            return;
        }
        let used = c.session.feed(&data, &self.kvs, self.worker, now);
        if used < data.len() {
            c.held_off = used;
            c.held.push_back(data);
        }
        // Otherwise `data` is dropped here: released to TCP.
        self.pump(cx, conn);
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        self.pump(cx, conn);
    }

    fn migrate_out(&mut self, _cx: &mut Cx, conn: Conn) -> Option<Box<dyn Any + Send>> {
        let c = lookup(&mut self.conns, conn)?;
        let mut input = c.carried.split_off(c.carried_off);
        for (i, buf) in c.held.iter().enumerate() {
            let from = if i == 0 { c.held_off } else { 0 };
            input.extend_from_slice(&buf[from..]);
        }
        let c = self.conns[conn.index()].take()?;
        dec(&self.kvs.worker(self.worker).curr_connections);
        // The held receive buffers are dropped here: their bytes travel
        // in `input`.
        Some(Box::new(MovedConnection {
            session: c.session.into_moved(),
            input,
            peer_closed: c.peer_closed,
        }))
    }

    fn migrate_in(&mut self, cx: &mut Cx, conn: Conn, state: Option<Box<dyn Any + Send>>) {
        // No state: the connection was still in its handshake on the other
        // core (its knock comes here).
        let Some(moved) = state.and_then(|s| s.downcast::<MovedConnection>().ok()) else {
            return;
        };
        let i = conn.index();
        if i >= self.conns.len() {
            self.conns.resize_with(i + 1, || None);
        }
        let stats = self.kvs.worker(self.worker);
        if self.conns[i].is_some() {
            dec(&stats.curr_connections);
        }
        let mut c = Connection::new(conn, Session::from_moved(moved.session));
        c.carried = moved.input;
        c.peer_closed = moved.peer_closed;
        self.conns[i] = Some(c);
        inc(&stats.curr_connections);
        self.pump(cx, conn);
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        if matches!(why, Dead::PeerClosed) {
            if let Some(c) = lookup(&mut self.conns, conn) {
                c.peer_closed = true;
            }
            self.pump(cx, conn);
        } else {
            self.forget(conn);
        }
    }
}

/// Starts the KVS on a dataplane: one [`IxKvs`] per configured core, all
/// serving `kvs` on `port`.
pub fn start(
    cfg: libix::Config,
    kvs: Arc<Kvs>,
    port: u16,
) -> Result<libix::Dataplane, libix::IxError> {
    libix::Dataplane::start(cfg, move |core| {
        IxKvs::new(kvs.clone(), port, usize::from(core))
    })
}

/// Starts the KVS on the dataplane ixcpd allocated (see
/// [`libix::Registered`]).
pub fn start_registered(
    reg: libix::Registered,
    kvs: Arc<Kvs>,
    port: u16,
) -> Result<libix::Dataplane, libix::IxError> {
    libix::Dataplane::start_registered(reg, move |core| {
        IxKvs::new(kvs.clone(), port, usize::from(core))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::store::StoreConfig;
    use libix::TxBuf;
    use std::net::SocketAddrV4;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use std::time::Duration;

    const VALUE: usize = 100_000;
    const GETS: usize = 300;
    const HOLD: u64 = 1;
    const DEADLINE: u64 = 2;

    /// What the client saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// Gets the server had parsed when the client stopped holding.
        parsed_while_held: u64,
        /// Reply bytes received in all.
        received: usize,
        /// Whether the replies were exactly as expected.
        exact: bool,
    }

    /// Pipelines one big `set` and many `get`s of it, and keeps every
    /// received buffer (closing its receive window) for a while before
    /// reading the rest.
    struct Hoarder {
        server: SocketAddrV4,
        kvs: Arc<Kvs>,
        conn: Option<Conn>,
        unsent: Option<TxBuf>,
        held: Vec<RxBuf>,
        holding: bool,
        got: Vec<u8>,
        expected: Vec<u8>,
        seen: Arc<Mutex<Seen>>,
    }

    impl Hoarder {
        fn push(&mut self, cx: &mut Cx) {
            let (Some(conn), Some(buf)) = (self.conn, self.unsent.as_mut()) else {
                return;
            };
            match cx.sendv(conn, std::slice::from_ref(buf)) {
                Ok(n) if n >= buf.len() => self.unsent = None,
                Ok(n) => buf.advance(n),
                Err(_) => cx.stop(),
            }
        }

        fn take(&mut self, data: &[u8]) {
            self.got.extend_from_slice(data);
        }
    }

    impl App for Hoarder {
        fn start(&mut self, cx: &mut Cx) {
            self.conn = cx.connect(self.server).ok();
            cx.arm_timer(Duration::from_secs(60), DEADLINE).unwrap();
        }

        fn connected(&mut self, cx: &mut Cx, _conn: Conn, result: Result<(), libix::ConnectError>) {
            if result.is_err() {
                cx.stop();
                return;
            }
            let mut req = format!("set big 0 0 {VALUE}\r\n").into_bytes();
            req.extend(std::iter::repeat_n(b'v', VALUE));
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(&b"get big\r\n".repeat(GETS));
            self.unsent = Some(TxBuf::from_vec(req));
            self.push(cx);
            cx.arm_timer(Duration::from_millis(500), HOLD).unwrap();
        }

        fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
            if self.holding {
                self.held.push(data);
                return;
            }
            self.take(&data);
            if self.got.len() >= self.expected.len() {
                let mut seen = self.seen.lock().unwrap();
                seen.received = self.got.len();
                seen.exact = self.got == self.expected;
                let _ = cx.close(conn);
                cx.stop();
            }
        }

        fn sent(&mut self, cx: &mut Cx, _conn: Conn, _acked: usize) {
            self.push(cx);
        }

        fn timer(&mut self, cx: &mut Cx, token: u64) {
            if token == HOLD {
                let parsed = self
                    .kvs
                    .workers()
                    .iter()
                    .map(|w| w.cmd_get.load(Ordering::Relaxed))
                    .sum();
                self.seen.lock().unwrap().parsed_while_held = parsed;
                self.holding = false;
                for buf in std::mem::take(&mut self.held) {
                    self.take(&buf);
                }
            } else {
                cx.stop();
            }
        }
    }

    #[test]
    fn a_client_that_holds_its_buffers_stalls_the_server_instead_of_growing_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("kvs.sock");
        let kvs = Kvs::shared(StoreConfig::default(), 1);
        let server = start(
            libix::Config::memif_master(&sock, "10.9.8.1".parse().unwrap()),
            kvs.clone(),
            11211,
        )
        .unwrap();
        let mut expected = b"STORED\r\n".to_vec();
        for _ in 0..GETS {
            expected.extend_from_slice(format!("VALUE big 0 {VALUE}\r\n").as_bytes());
            expected.extend(std::iter::repeat_n(b'v', VALUE));
            expected.extend_from_slice(b"\r\nEND\r\n");
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (k, s) = (kvs.clone(), seen.clone());
        let client = libix::Dataplane::start(
            libix::Config::memif_slave(&sock, "10.9.8.2".parse().unwrap()),
            move |_| Hoarder {
                server: "10.9.8.1:11211".parse().unwrap(),
                kvs: k.clone(),
                conn: None,
                unsent: None,
                held: Vec::new(),
                holding: true,
                got: Vec::new(),
                expected: expected.clone(),
                seen: s.clone(),
            },
        )
        .unwrap();
        client.join().unwrap();
        server.stop();
        server.join().unwrap();
        let seen = seen.lock().unwrap();
        eprintln!(
            "gets parsed while the client held its buffers: {}",
            seen.parsed_while_held
        );
        assert!(seen.parsed_while_held >= 1, "the server answered nothing");
        assert!(
            seen.parsed_while_held < 20,
            "the server parsed {} of {GETS} gets while the client read nothing",
            seen.parsed_while_held
        );
        assert!(seen.exact, "{} reply bytes, not as expected", seen.received);
        assert_eq!(
            kvs.worker(0).cmd_get.load(Ordering::Relaxed),
            GETS as u64,
            "every get ran once the client read again"
        );
    }
}
