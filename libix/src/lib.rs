//! libix — the application API of the IX dataplane.
//!
//! Not sockets: the dataplane runs your handlers with **events** (a
//! connection knocks, data arrived, bytes were acknowledged, a connection
//! died, a timer fired) and your handlers make **calls** on the core they
//! run on (accept, send, close, connect, arm a timer). Everything happens on
//! one pinned core, run to completion, with no locks.
//!
//! Zero-copy both ways:
//! - [`RxBuf`] is a read-only view of the received packet buffer. While you
//!   hold it, its bytes count against the connection's receive window (flow
//!   control by ownership); dropping it tells TCP you are done
//!   (`recv_done`).
//! - [`TxBuf`] is an immutable, reference-counted buffer. [`Cx::sendv`]
//!   keeps a reference until the peer acknowledges the bytes, then
//!   [`App::sent`] tells you how many were acknowledged.
//!
//! # Example: an echo server
//!
//! ```no_run
//! use libix::{App, Conn, Cx, Knock, FourTuple, RxBuf};
//!
//! struct Echo;
//!
//! impl App for Echo {
//!     fn start(&mut self, cx: &mut Cx) {
//!         cx.listen(7).expect("port 7 is free");
//!     }
//!     fn knock(&mut self, _cx: &mut Cx, _conn: Conn, _peer: FourTuple) -> Knock {
//!         Knock::Accept
//!     }
//!     fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
//!         // Zero-copy echo: the reply references the received buffer.
//!         // (A real server keeps what the send window did not take and
//!         // sends it after `sent`.)
//!         let _ = cx.sendv(conn, &[data.to_tx()]);
//!     } // `data` dropped here: its bytes are released to TCP.
//! }
//!
//! fn main() -> Result<(), libix::IxError> {
//!     let cfg = libix::Config::memif_master("/tmp/ix-echo.sock", "10.0.0.1".parse().unwrap());
//!     let dp = libix::Dataplane::start(cfg, |_core| Echo)?;
//!     dp.join()?;
//!     Ok(())
//! }
//! ```
//!
//! # What the types forbid at compile time
//!
//! Received data cannot be written:
//!
//! ```compile_fail
//! fn scribble(data: &mut libix::RxBuf) {
//!     data[0] = 0; // RxBuf derefs to &[u8] only
//! }
//! ```
//!
//! Buffers belong to their core and cannot move to another thread:
//!
//! ```compile_fail
//! fn smuggle(data: libix::RxBuf) {
//!     std::thread::spawn(move || drop(data));
//! }
//! ```
//!
//! A transmit buffer is immutable once built, so the stack can retransmit
//! exactly what was sent:
//!
//! ```compile_fail
//! fn rewrite(buf: &mut libix::TxBuf) {
//!     buf.as_slice()[0] = 1;
//! }
//! ```

use std::any::Any;
use std::net::SocketAddrV4;
use std::ops::Deref;
use std::time::Duration;

use dataplane::elastic::{AppEvent, Core, Handler, RxView};
use dataplane::tcp::ConnId;
pub use dataplane::tcp::{ConnectError, DeadReason as Dead, FourTuple};
pub use dataplane::time::Instant;
pub use dataplane::txbuf::TxBuf;

mod cores;
mod runtime;
pub use runtime::{Config, CoreReport, Dataplane, IxError, NicConfig, Registered, RunReport};

/// A connection handle. Stable for the connection's life; a handle of a
/// closed connection is refused by every call (handles are generational).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conn(ConnId);

impl Conn {
    /// A small index, unique among this core's live connections: use it to
    /// index your per-connection state.
    #[inline]
    pub fn index(self) -> usize {
        self.0.idx() as usize
    }
}

/// Answer to a knocking connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knock {
    /// Take it: events for it follow.
    Accept,
    /// Refuse it: the peer sees a reset.
    Reject,
}

/// Received bytes: a read-only view of the packet buffer they arrived in.
///
/// Dereferences to `&[u8]`. Dropping it releases the bytes to TCP, which
/// reopens the receive window.
#[derive(Debug)]
pub struct RxBuf(RxView);

impl RxBuf {
    /// A transmit buffer over the same bytes, without copying (echo,
    /// forwarding, or storing and serving them later).
    #[inline]
    pub fn to_tx(&self) -> TxBuf {
        self.0.to_tx()
    }
}

impl Deref for RxBuf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.0.data()
    }
}

impl AsRef<[u8]> for RxBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.data()
    }
}

/// Errors a call can return.
pub type CallError = dataplane::elastic::CallError;

/// The calls an application makes on the core its handler runs on.
pub struct Cx<'a> {
    core: &'a mut Core,
}

impl Cx<'_> {
    /// The time at the start of this loop turn.
    #[inline]
    pub fn now(&self) -> Instant {
        self.core.now()
    }

    /// Index of this core among the dataplane's.
    pub fn core_index(&self) -> u16 {
        self.core.queue()
    }

    /// Starts accepting connections on a TCP port.
    pub fn listen(&mut self, port: u16) -> Result<(), CallError> {
        self.core.listen(port)
    }

    /// Opens a connection; [`App::connected`] reports the outcome.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<Conn, CallError> {
        self.core.connect(remote).map(Conn)
    }

    /// Sends the buffers in order without copying them. Returns how many
    /// bytes the send window took, from the front; keep the rest and send
    /// it after [`App::sent`].
    #[inline]
    pub fn sendv(&mut self, conn: Conn, bufs: &[TxBuf]) -> Result<usize, CallError> {
        self.core.sendv(conn.0, bufs)
    }

    /// Closes in order: what was sent is delivered, then the peer sees the
    /// end of the stream. The handle is invalid afterwards.
    pub fn close(&mut self, conn: Conn) -> Result<(), CallError> {
        self.core.close(conn.0)
    }

    /// Resets the connection at once.
    pub fn abort(&mut self, conn: Conn) -> Result<(), CallError> {
        self.core.abort(conn.0)
    }

    /// Arms a one-shot timer: [`App::timer`] runs with `token` after
    /// `after`.
    pub fn arm_timer(&mut self, after: Duration, token: u64) -> Result<(), CallError> {
        self.core.arm_timer(after, token)
    }

    /// Ends this core's loop after the current turn.
    pub fn stop(&mut self) {
        self.core.stop()
    }

    /// Live connections on this core (TIME-WAIT included).
    pub fn connections(&self) -> usize {
        self.core.connections()
    }

    /// Connections on this core that are open or still closing (all but
    /// TIME-WAIT): wait for zero before stopping so that every close
    /// handshake completes. Scans the connection table.
    pub fn unfinished_connections(&self) -> usize {
        self.core.unfinished_connections()
    }
}

/// An application: handlers for the dataplane's events. One instance runs
/// per core; all methods of an instance run on that core.
pub trait App {
    /// Whether the application's connections may move between cores
    /// while the dataplane runs ([`Dataplane::resize`], `ixctl cores`, the
    /// load policy): say `true` once [`App::migrate_out`] and
    /// [`App::migrate_in`] carry everything it keeps per connection.
    /// Resizing a dataplane whose application says `false` (the default)
    /// is refused.
    const MIGRATES: bool = false;

    /// Called once when the core starts: listen, connect, arm timers.
    fn start(&mut self, cx: &mut Cx) {
        let _ = cx;
    }

    /// A connection completed the handshake on a listening port.
    fn knock(&mut self, cx: &mut Cx, conn: Conn, peer: FourTuple) -> Knock {
        let _ = (cx, conn, peer);
        Knock::Accept
    }

    /// An outgoing connection is established (`Ok`) or failed.
    fn connected(&mut self, cx: &mut Cx, conn: Conn, result: Result<(), ConnectError>) {
        let _ = (cx, conn, result);
    }

    /// In-order bytes arrived.
    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf);

    /// The peer acknowledged `acked` more bytes: send buffer space is free.
    fn sent(&mut self, cx: &mut Cx, conn: Conn, acked: usize) {
        let _ = (cx, conn, acked);
    }

    /// The peer closed its side ([`Dead::PeerClosed`]: you may still send,
    /// then close), or the connection is gone ([`Dead::Reset`],
    /// [`Dead::TimedOut`]: the handle is already invalid). The default
    /// closes the connection.
    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        let _ = why;
        let _ = cx.close(conn);
    }

    /// A timer armed with [`Cx::arm_timer`] fired.
    fn timer(&mut self, cx: &mut Cx, token: u64) {
        let _ = (cx, token);
    }

    /// Called once on every turn of the core's loop, idle turns included,
    /// before the turn's events, with [`Cx::now`] the turn's time. For work
    /// due more precisely than timers allow (they tick every 16 µs), such
    /// as a load generator sending on a schedule; what it sends leaves in
    /// the same turn. It runs millions of times a second: return at once
    /// when nothing is due. The default does nothing.
    #[inline]
    fn poll(&mut self, cx: &mut Cx) {
        let _ = cx;
    }

    /// `conn` is about to move to another core of the dataplane (its flow
    /// group migrates while the dataplane grows or shrinks): return what
    /// the application keeps for it, to be handed to
    /// [`App::migrate_in`] on the other core's instance. The state must be
    /// `Send`: copy out the bytes of any [`RxBuf`] or [`TxBuf`] it holds
    /// ([`RxBuf`]s still held count as consumed once the connection
    /// moved). The default keeps nothing.
    fn migrate_out(&mut self, cx: &mut Cx, conn: Conn) -> Option<Box<dyn Any + Send>> {
        let _ = (cx, conn);
        None
    }

    /// A connection arrived from another core, under its handle on this
    /// core, with what [`App::migrate_out`] returned for it there.
    fn migrate_in(&mut self, cx: &mut Cx, conn: Conn, state: Option<Box<dyn Any + Send>>) {
        let _ = (cx, conn, state);
    }
}

/// Adapts an [`App`] to the elastic thread's event array.
pub(crate) struct Dispatch<A>(pub(crate) A);

impl<A: App> Handler for Dispatch<A> {
    fn start(&mut self, core: &mut Core) {
        self.0.start(&mut Cx { core });
    }

    fn migrate_out(&mut self, core: &mut Core, conn: ConnId) -> Option<Box<dyn Any + Send>> {
        self.0.migrate_out(&mut Cx { core }, Conn(conn))
    }

    fn migrate_in(&mut self, core: &mut Core, conn: ConnId, state: Option<Box<dyn Any + Send>>) {
        self.0.migrate_in(&mut Cx { core }, Conn(conn), state);
    }

    #[inline]
    fn poll(&mut self, core: &mut Core) {
        self.0.poll(&mut Cx { core });
    }

    #[inline]
    fn handle(&mut self, core: &mut Core, events: &mut Vec<AppEvent>) {
        let mut cx = Cx { core };
        for ev in events.drain(..) {
            match ev {
                AppEvent::Recv { data } => {
                    let conn = Conn(data.conn());
                    self.0.recv(&mut cx, conn, RxBuf(data));
                }
                AppEvent::Sent { conn, acked } => self.0.sent(&mut cx, Conn(conn), acked as usize),
                AppEvent::Knock { conn, tuple } => {
                    let decision = self.0.knock(&mut cx, Conn(conn), tuple);
                    let result = match decision {
                        Knock::Accept => cx.core.accept(conn),
                        Knock::Reject => cx.core.reject(conn),
                    };
                    if let Err(e) = result {
                        log::debug!("knock answer for {conn:?} failed: {e}");
                    }
                }
                AppEvent::Connected { conn, result } => {
                    self.0.connected(&mut cx, Conn(conn), result)
                }
                AppEvent::Dead { conn, reason } => self.0.dead(&mut cx, Conn(conn), reason),
                AppEvent::Timer { token } => self.0.timer(&mut cx, token),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::buf::Pool;
    use dataplane::elastic::{CoreConfig, ElasticThread, DEFAULT_BATCH};
    use dataplane::net::iface::IfaceConfig;
    use dataplane::nic::pipe;
    use dataplane::rss::RssConfig;
    use dataplane::tcp::TcpConfig;
    use dataplane::wire::ethernet::EthernetAddress;

    /// Counts its polls and remembers the time each saw.
    #[derive(Default)]
    struct Ticker {
        polls: u64,
        last_now: Instant,
        went_back: bool,
    }

    impl App for Ticker {
        fn recv(&mut self, _cx: &mut Cx, _conn: Conn, _data: RxBuf) {}
        fn poll(&mut self, cx: &mut Cx) {
            self.polls += 1;
            self.went_back |= cx.now() < self.last_now;
            self.last_now = cx.now();
        }
    }

    #[test]
    fn app_poll_runs_on_every_idle_turn_with_the_turns_time() {
        let (queue, _peer) = pipe::pair(
            Pool::new(1, 256, false).unwrap(),
            Pool::new(2, 256, false).unwrap(),
            64,
        );
        let cfg = CoreConfig {
            queue: 0,
            rss: RssConfig::round_robin(1, 16),
            iface: IfaceConfig {
                mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                ip: std::net::Ipv4Addr::new(10, 3, 0, 1),
                prefix_len: 24,
                gateway: None,
                mtu: 1500,
            },
            tcp: TcpConfig::default(),
            batch: DEFAULT_BATCH,
            app_timers: 16,
        };
        let mut thread = ElasticThread::new(cfg, queue, Default::default());
        let mut app = Dispatch(Ticker::default());
        let before = Instant::now();
        for _ in 0..500 {
            thread.turn(&mut app);
        }
        assert_eq!(app.0.polls, 500);
        assert!(!app.0.went_back);
        assert!(app.0.last_now >= before);
    }
}
