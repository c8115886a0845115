//! [`TcpStack`]: the application calls, segment arrival (RFC 9293
//! §3.10.7, in its order), output, and timers. See the module docs of
//! [`crate::tcp`] for the RFCs followed and the deviations.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::conn::{duration_us, flag, Conn, RtoBounds, State, TimerKind, TimerSlot, TimerToken};
use super::isn::{initial_seq, SipKey};
use super::list::{NodeSlab, NIL};
use super::table::ConnTable;
use super::{ConnId, ConnectError, DeadReason, FourTuple, TcpConfig, TcpError, TcpEvent, TcpStats};
use crate::buf::PktBuf;
use crate::net::IpSender;
use crate::time::Instant;
use crate::timer::TimerWheel;
use crate::txbuf::TxBuf;
use crate::wire::tcp::{SeqNum, TcpFlags, TcpPacket, TcpParseError, TcpRepr, HEADER_LEN};

/// Smallest MSS we accept from a peer (a tiny MSS would multiply our
/// segment count).
const MIN_PEER_MSS: u16 = 64;
/// MSS assumed when the peer's SYN carries none (RFC 9293 §3.7.1).
const DEFAULT_PEER_MSS: u16 = 536;
/// Queued RSTs from `abort`/`reject`, sent at the next flush.
const RST_QUEUE: usize = 64;

pub(super) struct Listener {
    pub(super) port: u16,
    /// Established connections not yet accepted.
    pub(super) pending: usize,
}

/// A received segment's payload held for reordering or until accept.
pub(super) struct RxSeg {
    pub(super) seq: SeqNum,
    pub(super) buf: PktBuf,
}

struct RstSpec {
    tuple: FourTuple,
    seq: SeqNum,
    ack: Option<SeqNum>,
}

/// The TCP engine of one elastic thread (see the module docs).
pub struct TcpStack {
    pub(super) cfg: TcpConfig,
    pub(super) conns: ConnTable,
    pub(super) listeners: Vec<Listener>,
    wheel: TimerWheel<TimerToken>,
    pub(super) txq: NodeSlab<TxBuf>,
    pub(super) rxq: NodeSlab<RxSeg>,
    pub(super) dirty: Vec<ConnId>,
    fired: Vec<TimerToken>,
    rst_queue: Vec<RstSpec>,
    isn_key: SipKey,
    rto_bounds: RtoBounds,
    /// Header prediction on (tests turn it off to compare both paths).
    predict: bool,
    pub(super) half_open: usize,
    pub(super) stats: TcpStats,
}

impl std::fmt::Debug for TcpStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStack")
            .field("conns", &self.conns.len())
            .field("listeners", &self.listeners.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Copies `out.len()` bytes of the send queue starting at `off` in `node`.
fn copy_payload(txq: &NodeSlab<TxBuf>, mut node: u32, mut off: usize, out: &mut [u8]) {
    let mut done = 0;
    while done < out.len() && node != NIL {
        let b = txq.get(node).as_slice();
        let n = (b.len() - off).min(out.len() - done);
        out[done..done + n].copy_from_slice(&b[off..off + n]);
        done += n;
        off = 0;
        node = txq.next(node);
    }
}

impl TcpStack {
    /// A stack with every table preallocated from `cfg`. `secret` keys the
    /// ISN generator (RFC 6528) and the connection hash; draw it from a
    /// random source.
    pub fn new(cfg: TcpConfig, now: Instant, secret: [u8; 16]) -> TcpStack {
        let key = SipKey::new(secret);
        let timers = 2 * cfg.max_conns + 16;
        TcpStack {
            conns: ConnTable::new(cfg.max_conns, key.derive(1)),
            listeners: Vec::with_capacity(cfg.max_listeners),
            wheel: TimerWheel::new(now, timers),
            txq: NodeSlab::new(cfg.tx_queue_entries),
            rxq: NodeSlab::new(cfg.rx_queue_entries),
            dirty: Vec::with_capacity(cfg.max_conns),
            fired: Vec::with_capacity(timers),
            rst_queue: Vec::with_capacity(RST_QUEUE),
            isn_key: key.derive(2),
            rto_bounds: RtoBounds::new(&cfg),
            predict: true,
            half_open: 0,
            stats: TcpStats::default(),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> TcpStats {
        let mut s = self.stats;
        s.conns_active = self.conns.len() as u64;
        s.half_open = self.half_open as u64;
        s.tx_queue_used = self.txq.used() as u64;
        s.rx_queue_used = self.rxq.used() as u64;
        s
    }

    /// Connections in the table (all states, TIME-WAIT included).
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections still exchanging data or closing handshakes: all but
    /// those in TIME-WAIT. Scans the table; meant for shutdown, not for the
    /// per-packet path.
    pub fn unfinished_count(&self) -> usize {
        self.conns.count_where(|s| s != State::TimeWait)
    }

    /// When [`poll`](Self::poll) next has work (see
    /// [`TimerWheel::next_deadline`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    /// Starts accepting connections on `port` (any local address).
    pub fn listen(&mut self, port: u16) -> Result<(), TcpError> {
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(TcpError::PortInUse { port });
        }
        if self.listeners.len() >= self.cfg.max_listeners {
            return Err(TcpError::TooManyListeners {
                max: self.cfg.max_listeners,
            });
        }
        self.listeners.push(Listener { port, pending: 0 });
        Ok(())
    }

    /// Stops listening on `port`: half-open connections to it are reset;
    /// established ones waiting for accept can still be accepted.
    pub fn unlisten(&mut self, port: u16) {
        let Some(pos) = self.listeners.iter().position(|l| l.port == port) else {
            return;
        };
        self.listeners.swap_remove(pos);
        for i in 0..self.conns.capacity() as u32 {
            let c = self.conns.get(i);
            if c.state == State::SynReceived && c.has(flag::PASSIVE) && c.tuple.local.port() == port
            {
                self.queue_rst(i);
                self.free(i);
            }
        }
    }

    /// Opens a connection (sends SYN at the next flush). The caller picks
    /// the local port, one whose 4-tuple the NIC steers to this core.
    pub fn connect(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        cookie: u64,
    ) -> Result<ConnId, TcpError> {
        if self.conns.lookup(&tuple).is_some() {
            return Err(TcpError::TupleInUse);
        }
        let iss = initial_seq(self.isn_key, tuple.local, tuple.remote, now);
        let mut c = Conn::open(
            tuple,
            State::SynSent,
            flag::APP | flag::WSCALE,
            iss,
            &self.cfg,
        );
        c.cookie = cookie;
        let idx = self.conns.insert(c).ok_or(TcpError::TableFull {
            max: self.cfg.max_conns,
        })?;
        self.stats.conns_opened += 1;
        self.mark_dirty(idx);
        Ok(self.conns.id(idx))
    }

    /// Accepts a connection announced by [`TcpEvent::Knock`]; data (and a
    /// FIN) that arrived since are delivered into `events` now.
    pub fn accept(
        &mut self,
        conn: ConnId,
        cookie: u64,
        events: &mut Vec<TcpEvent>,
    ) -> Result<(), TcpError> {
        let idx = self.resolve(conn)?;
        let c = self.conns.get_mut(idx);
        if !c.has(flag::BACKLOG) {
            return Err(TcpError::InvalidState {
                call: "accept",
                state: c.state.name(),
            });
        }
        c.clear(flag::BACKLOG);
        c.set(flag::APP);
        c.cookie = cookie;
        let port = c.tuple.local.port();
        if let Some(l) = self.listeners.iter_mut().find(|l| l.port == port) {
            l.pending = l.pending.saturating_sub(1);
        }
        let c = self.conns.get_mut(idx);
        let mut node = std::mem::replace(&mut c.pend_head, NIL);
        c.pend_tail = NIL;
        while node != NIL {
            let next = self.rxq.next(node);
            let seg = self.rxq.release(node);
            let len = seg.buf.len() as u32;
            let c = self.conns.get_mut(idx);
            c.rx_pending -= len;
            c.rx_held += len;
            events.push(TcpEvent::Recv {
                conn,
                cookie,
                data: seg.buf,
            });
            node = next;
        }
        let c = self.conns.get_mut(idx);
        if c.has(flag::PEER_CLOSED_PENDING) {
            c.clear(flag::PEER_CLOSED_PENDING);
            events.push(TcpEvent::Dead {
                conn,
                cookie,
                reason: DeadReason::PeerClosed,
            });
        }
        Ok(())
    }

    /// Refuses a connection announced by [`TcpEvent::Knock`]: RST (at the
    /// next flush) and the handle is freed.
    pub fn reject(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.resolve(conn)?;
        let c = self.conns.get(idx);
        if !c.has(flag::BACKLOG) {
            return Err(TcpError::InvalidState {
                call: "reject",
                state: c.state.name(),
            });
        }
        self.queue_rst(idx);
        self.free(idx);
        Ok(())
    }

    /// Queues `bufs` for sending (no copy: the stack keeps clones until the
    /// peer acknowledges them). Returns the bytes taken, bounded by the
    /// free send-buffer space; a [`TcpEvent::Sent`] tells when to offer
    /// the rest.
    pub fn send(&mut self, conn: ConnId, bufs: &[TxBuf]) -> Result<usize, TcpError> {
        let idx = self.resolve_app(conn, "send")?;
        let c = self.conns.get(idx);
        if !matches!(c.state, State::Established | State::CloseWait) {
            return Err(TcpError::InvalidState {
                call: "send",
                state: c.state.name(),
            });
        }
        let mut space = self.cfg.send_buffer.saturating_sub(c.tx_queued) as usize;
        let mut taken = 0usize;
        for b in bufs {
            if space == 0 {
                break;
            }
            let n = b.len().min(space);
            if n == 0 {
                continue;
            }
            let piece = if n == b.len() {
                b.clone()
            } else {
                b.slice(0, n)
            };
            let Ok(node) = self.txq.alloc(piece) else {
                self.stats.tx_queue_full += 1;
                break;
            };
            let c = self.conns.get_mut(idx);
            if c.tx_tail == NIL {
                c.tx_head = node;
            } else {
                self.txq.set_next(c.tx_tail, node);
            }
            c.tx_tail = node;
            c.tx_queued += n as u32;
            space -= n;
            taken += n;
            if n < b.len() {
                break;
            }
        }
        if taken > 0 {
            self.mark_dirty(idx);
        }
        Ok(taken)
    }

    /// Releases `len` bytes delivered by [`TcpEvent::Recv`], reopening the
    /// receive window (a window update goes out at the next flush if the
    /// window grew enough, RFC 9293 §3.8.6.2.2).
    pub fn recv_done(&mut self, conn: ConnId, len: usize) -> Result<(), TcpError> {
        let idx = self.resolve_app(conn, "recv_done")?;
        let c = self.conns.get_mut(idx);
        if len > c.rx_held as usize {
            return Err(TcpError::ReleaseTooLarge {
                len,
                held: c.rx_held,
            });
        }
        c.rx_held -= len as u32;
        if c.window_update_due(&self.cfg) {
            c.set(flag::ACK_NOW);
            self.mark_dirty(idx);
        }
        Ok(())
    }

    /// Orderly close: queued data, then FIN. The handle is invalid
    /// afterwards and no event names it again; the stack finishes
    /// FIN-WAIT/LAST-ACK/TIME-WAIT itself.
    pub fn close(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.resolve_app(conn, "close")?;
        let c = self.conns.get_mut(idx);
        match c.state {
            State::SynSent => {
                self.free(idx);
                return Ok(());
            }
            State::SynReceived => {
                self.queue_rst(idx);
                self.free(idx);
                return Ok(());
            }
            State::Established => c.state = State::FinWait1,
            State::CloseWait => c.state = State::LastAck,
            s => {
                return Err(TcpError::InvalidState {
                    call: "close",
                    state: s.name(),
                })
            }
        }
        c.set(flag::FIN_QUEUED | flag::ORPHAN);
        // Nobody will release delivered bytes any more.
        c.rx_held = 0;
        self.mark_dirty(idx);
        Ok(())
    }

    /// Resets the connection now (RST at the next flush); the handle is
    /// invalid afterwards.
    pub fn abort(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.resolve_app(conn, "abort")?;
        if self.conns.get(idx).state != State::SynSent {
            self.queue_rst(idx);
        }
        self.free(idx);
        Ok(())
    }

    /// Processes one received segment (TCP header and payload; the payload
    /// handed to the application is a view of it). `src` is the peer, `dst`
    /// us. Replies are batched until [`flush`](Self::flush), except RSTs
    /// for segments that match no connection.
    pub fn input(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        segment: PktBuf,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
    ) {
        // Every flow group is ours: nothing is handed back.
        let _ = self.input_with(now, src, dst, segment, tx, events, |_| true);
    }

    /// Like [`input`](Self::input) on a core that shares its flow groups
    /// with others while connections migrate between them: a well-formed
    /// segment that matches no connection here and whose tuple `mine`
    /// says belongs to another core's flow group is handed back untouched
    /// (not processed, no RST; counted in [`TcpStats::steered_away`]) for
    /// the caller to forward to that core. `mine` is asked only when the
    /// lookup misses, so the path of a segment for a connection of ours
    /// is the same as `input`'s. Malformed segments are dropped and
    /// counted here as by `input`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn input_steered(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        segment: PktBuf,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
        mine: impl FnMut(&FourTuple) -> bool,
    ) -> Option<PktBuf> {
        self.input_with(now, src, dst, segment, tx, events, mine)
    }

    /// [`input`](Self::input) and [`input_steered`](Self::input_steered):
    /// generic over `mine` so that `input`'s constant answer costs nothing.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn input_with(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        segment: PktBuf,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
        mut mine: impl FnMut(&FourTuple) -> bool,
    ) -> Option<PktBuf> {
        self.stats.segs_in += 1;
        let parsed = TcpPacket::new_checked(segment.data())
            .and_then(|p| TcpRepr::parse(&p, src, dst).map(|r| (r, p.header_len())));
        let (repr, hdr_len) = match parsed {
            Ok(x) => x,
            Err(TcpParseError::BadChecksum) => {
                self.stats.dropped_bad_checksum += 1;
                return None;
            }
            Err(e) => {
                log::debug!("tcp: dropping malformed segment from {src}: {e}");
                self.stats.dropped_malformed += 1;
                return None;
            }
        };
        if repr.flags.contains(TcpFlags::SYN) && repr.flags.contains(TcpFlags::RST) {
            self.stats.dropped_malformed += 1;
            return None;
        }
        let tuple = FourTuple {
            local: SocketAddrV4::new(dst, repr.dst_port),
            remote: SocketAddrV4::new(src, repr.src_port),
        };
        match self.conns.lookup(&tuple) {
            Some(idx) => self.conn_input(idx, now, &repr, &segment, hdr_len, tx, events),
            None if !mine(&tuple) => {
                self.stats.steered_away += 1;
                return Some(segment);
            }
            None => self.no_conn_input(now, tuple, &repr, tx),
        }
        None
    }

    /// Runs due timers: retransmissions (sent at once), delayed ACKs,
    /// zero-window probes, TIME-WAIT and FIN-WAIT-2 expiry.
    pub fn poll(&mut self, now: Instant, tx: &mut dyn IpSender, events: &mut Vec<TcpEvent>) {
        // Delayed-ACK deadlines set since the last flush are filed by the
        // next flush; a poll coming first files them itself.
        for i in 0..self.dirty.len() {
            if let Some(idx) = self.conns.resolve(self.dirty[i]) {
                if let Some(at) = self.conns.get(idx).ack.at {
                    self.arm(idx, TimerSlot::Ack, at);
                }
            }
        }
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(now, |t| fired.push(t));
        for t in fired.drain(..) {
            self.on_timer(t, now, tx, events);
        }
        self.fired = fired;
    }

    /// Emits what the calls and segments since the last flush made due:
    /// queued RSTs, SYNs, data, FINs and coalesced ACKs. Call once per loop
    /// turn, after the application's calls.
    pub fn flush(&mut self, now: Instant, tx: &mut dyn IpSender) {
        let mut rsts = std::mem::take(&mut self.rst_queue);
        for r in rsts.drain(..) {
            self.send_rst(tx, r.tuple, r.seq, r.ack);
        }
        self.rst_queue = rsts;
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain(..) {
            if let Some(idx) = self.conns.resolve(id) {
                let c = self.conns.get_mut(idx);
                if c.has(flag::DIRTY) {
                    c.clear(flag::DIRTY);
                    self.output(idx, now, tx);
                }
            }
        }
        self.dirty = dirty;
    }

    // ----------------------------------------------------------------
    // Handles and bookkeeping.

    pub(super) fn resolve(&self, id: ConnId) -> Result<u32, TcpError> {
        self.conns.resolve(id).ok_or(TcpError::InvalidConn)
    }

    /// A handle the application owns (accepted or connected, not closed).
    fn resolve_app(&self, id: ConnId, call: &'static str) -> Result<u32, TcpError> {
        let idx = self.resolve(id)?;
        let c = self.conns.get(idx);
        if !c.app_owned() {
            return Err(TcpError::InvalidState {
                call,
                state: if c.has(flag::BACKLOG) {
                    "not yet accepted"
                } else {
                    c.state.name()
                },
            });
        }
        Ok(idx)
    }

    pub(super) fn mark_dirty(&mut self, idx: u32) {
        let c = self.conns.get_mut(idx);
        if !c.has(flag::DIRTY) {
            c.set(flag::DIRTY);
            let id = self.conns.id(idx);
            self.dirty.push(id);
        }
    }

    pub(super) fn listener_pending(&mut self, port: u16) -> Option<&mut usize> {
        self.listeners
            .iter_mut()
            .find(|l| l.port == port)
            .map(|l| &mut l.pending)
    }

    /// Frees a connection and everything it holds. No event.
    fn free(&mut self, idx: u32) {
        self.detach(idx);
        self.stats.conns_closed += 1;
    }

    /// Removes connection `idx` from every structure of the stack: its
    /// timers, queue nodes, half-open and backlog counts, and its slot
    /// (whose generation moves on, so its handle goes stale).
    pub(super) fn detach(&mut self, idx: u32) {
        let c = self.conns.get(idx);
        let (rtx, ack) = (c.rtx.entry, c.ack.entry);
        let (tx_head, ooo, pend) = (c.tx_head, c.ooo_head, c.pend_head);
        let (half_open, backlog, port) = (
            c.has(flag::HALF_OPEN),
            c.has(flag::BACKLOG),
            c.tuple.local.port(),
        );
        for (id, _) in [rtx, ack].into_iter().flatten() {
            self.wheel.cancel(id);
        }
        self.txq.release_list(tx_head);
        self.rxq.release_list(ooo);
        self.rxq.release_list(pend);
        if half_open {
            self.half_open -= 1;
        }
        if backlog {
            if let Some(p) = self.listener_pending(port) {
                *p = p.saturating_sub(1);
            }
        }
        self.conns.remove(idx);
    }

    /// Reports the end of a connection to its owner, then frees it.
    fn kill(&mut self, idx: u32, reason: DeadReason, events: &mut Vec<TcpEvent>) {
        let conn = self.conns.id(idx);
        let c = self.conns.get(idx);
        let opening = matches!(c.state, State::SynSent | State::SynReceived);
        if opening && !c.has(flag::PASSIVE) {
            if c.app_owned() {
                let result = Err(match reason {
                    DeadReason::Reset => ConnectError::Refused,
                    _ => ConnectError::TimedOut,
                });
                events.push(TcpEvent::Connected {
                    conn,
                    cookie: c.cookie,
                    result,
                });
            }
        } else if c.app_owned() {
            events.push(TcpEvent::Dead {
                conn,
                cookie: c.cookie,
                reason,
            });
        } else if c.has(flag::BACKLOG) {
            events.push(TcpEvent::Dead {
                conn,
                cookie: 0,
                reason,
            });
        }
        self.free(idx);
    }

    fn queue_rst(&mut self, idx: u32) {
        let c = self.conns.get(idx);
        if self.rst_queue.len() >= RST_QUEUE {
            self.stats.rst_queue_full += 1;
            return;
        }
        let ack = (c.state != State::SynSent).then_some(c.rcv_nxt);
        self.rst_queue.push(RstSpec {
            tuple: c.tuple,
            seq: c.snd_max,
            ack,
        });
    }

    // ----------------------------------------------------------------
    // Timers.

    /// Sets the timer of `slot` to `at`. The wheel is touched only when
    /// the timer has no entry or its entry is due later than `at` (see
    /// `LazyTimer`).
    pub(super) fn arm(&mut self, idx: u32, slot: TimerSlot, at: Instant) {
        let c = self.conns.get_mut(idx);
        let gen = c.gen;
        let t = c.timer_mut(slot);
        t.at = Some(at);
        if let Some((id, entry_at)) = t.entry {
            if entry_at <= at {
                return;
            }
            // Does nothing if the entry fired in the batch being handled:
            // its token then finds a newer entry and is ignored.
            self.wheel.cancel(id);
        }
        t.entry = match self.wheel.schedule(at, TimerToken { idx, gen, slot }) {
            Ok(id) => Some((id, at)),
            Err(_) => {
                t.at = None;
                self.stats.timer_full += 1;
                None
            }
        };
    }

    /// (Re)starts the retransmission-slot timer as `kind`, `after` from now.
    fn set_rtx(&mut self, idx: u32, now: Instant, kind: TimerKind, after: std::time::Duration) {
        self.set_rtx_at(idx, kind, now + after);
    }

    /// (Re)starts the retransmission-slot timer as `kind`, due at `at`.
    fn set_rtx_at(&mut self, idx: u32, kind: TimerKind, at: Instant) {
        self.conns.get_mut(idx).rtx_kind = kind;
        self.arm(idx, TimerSlot::Rtx, at);
    }

    fn stop_rtx(&mut self, idx: u32) {
        self.conns.get_mut(idx).rtx.at = None;
    }

    /// Starts the retransmission timer unless it runs.
    fn ensure_rexmit(&mut self, idx: u32, now: Instant) {
        let c = self.conns.get(idx);
        if c.rtx.at.is_none() || c.rtx_kind != TimerKind::Rexmit {
            let at = c.rto_deadline(now);
            self.set_rtx_at(idx, TimerKind::Rexmit, at);
        }
    }

    fn on_timer(
        &mut self,
        t: TimerToken,
        now: Instant,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
    ) {
        let Some(idx) = self.conns.resolve(ConnId {
            idx: t.idx,
            gen: t.gen,
        }) else {
            return;
        };
        let timer = self.conns.get_mut(idx).timer_mut(t.slot);
        // A token fired in this batch may belong to an entry replaced while
        // an earlier token of the batch was handled: only the current, no
        // longer pending, entry counts.
        match timer.entry {
            Some((id, _)) if !self.wheel.is_pending(id) => timer.entry = None,
            _ => return,
        }
        match timer.at {
            None => return,
            Some(at) if at > now => {
                // The deadline moved on since the entry was filed.
                self.arm(idx, t.slot, at);
                return;
            }
            Some(_) => timer.at = None,
        }
        let c = self.conns.get_mut(idx);
        match t.slot {
            TimerSlot::Ack => {
                c.set(flag::ACK_NOW);
                self.output(idx, now, tx);
            }
            TimerSlot::Rtx => match c.rtx_kind {
                TimerKind::Rexmit => self.on_rexmit_timeout(idx, now, tx, events),
                TimerKind::Persist => self.on_persist_timeout(idx, now, tx),
                TimerKind::TimeWait | TimerKind::FinWait2 => self.free(idx),
            },
        }
    }

    /// RFC 6298 §5.4–5.7 and RFC 5681 §3.1 (equation 4, loss window).
    fn on_rexmit_timeout(
        &mut self,
        idx: u32,
        now: Instant,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
    ) {
        let cfg = &self.cfg;
        let c = self.conns.get_mut(idx);
        c.retries = c.retries.saturating_add(1);
        let opening = matches!(c.state, State::SynSent | State::SynReceived);
        let limit = if opening {
            cfg.max_syn_retries
        } else {
            cfg.max_retries
        };
        if c.retries > limit {
            if c.state == State::SynReceived && c.has(flag::PASSIVE) {
                self.free(idx);
            } else {
                self.kill(idx, DeadReason::TimedOut, events);
            }
            return;
        }
        self.stats.rto_timeouts += 1;
        c.back_off(self.rto_bounds);
        c.clear(flag::RTT_TIMING);
        if opening {
            c.snd_nxt = c.iss;
            c.set(flag::SYN_REXMIT);
        } else {
            let mss = u32::from(c.snd_mss);
            if c.retries == 1 {
                c.ssthresh = (c.flight_size() / 2).max(2 * mss);
            }
            c.cwnd = mss;
            c.snd_nxt = c.snd_una;
            c.recover = c.snd_max;
            c.dupacks = 0;
            c.clear(flag::RECOVERY | flag::PARTIAL_SEEN | flag::REXMIT_UNA);
        }
        self.output(idx, now, tx);
    }

    /// Zero-window probe (RFC 9293 §3.8.6.1): one byte of new data at
    /// SND.UNA; the persist interval backs off like the RTO.
    fn on_persist_timeout(&mut self, idx: u32, now: Instant, tx: &mut dyn IpSender) {
        let c = self.conns.get_mut(idx);
        if c.snd_wnd != 0 || c.data_end() <= c.snd_una || c.snd_nxt != c.snd_una {
            // The window opened or there is nothing to probe with.
            self.mark_dirty(idx);
            return;
        }
        c.retries = c.retries.saturating_add(1);
        if c.has(flag::ORPHAN) && c.retries > self.cfg.max_retries {
            // Nobody is left to wait for a window that never opens.
            self.queue_rst(idx);
            self.free(idx);
            return;
        }
        let seq = c.snd_una;
        if seq + 1 > c.snd_max {
            c.snd_max = seq + 1;
        }
        let shift = u32::from(c.retries.min(16));
        let interval = (u64::from(c.rto_us) << shift).min(u64::from(duration_us(self.cfg.rto_max)));
        self.transmit(idx, seq, 1, TcpFlags::EMPTY, tx);
        self.stats.window_probes += 1;
        self.set_rtx(
            idx,
            now,
            TimerKind::Persist,
            std::time::Duration::from_micros(interval),
        );
    }

    // ----------------------------------------------------------------
    // Output.

    /// Sends one segment of connection `idx`: `len` payload bytes from the
    /// send queue at `seq`, `flags` plus ACK (except on a SYN in
    /// SYN-SENT), our window, and the SYN options.
    fn transmit(
        &mut self,
        idx: u32,
        seq: SeqNum,
        len: u32,
        flags: TcpFlags,
        tx: &mut dyn IpSender,
    ) {
        let cfg = &self.cfg;
        let c = self.conns.get_mut(idx);
        let syn = flags.contains(TcpFlags::SYN);
        let ack = (c.state != State::SynSent).then_some(c.rcv_nxt);
        let window = c.advertise(cfg, syn);
        let (mss, window_scale) = if syn {
            let ws = c.has(flag::WSCALE).then_some(c.rcv_wscale);
            (Some(cfg.mss), ws)
        } else {
            (None, None)
        };
        let repr = TcpRepr {
            src_port: c.tuple.local.port(),
            dst_port: c.tuple.remote.port(),
            seq,
            ack,
            flags,
            window,
            mss,
            window_scale,
            sack_permitted: false,
            payload_len: len as usize,
        };
        // Locate the payload in the send queue, from the cached position
        // when it is at or before `seq`, else from the head (at SND.UNA).
        let (mut node, mut start) = (NIL, seq);
        if len > 0 {
            (node, start) = if c.tx_cur != NIL && c.tx_cur_seq <= seq {
                (c.tx_cur, c.tx_cur_seq)
            } else {
                (c.tx_head, c.snd_una)
            };
            loop {
                let l = self.txq.get(node).len() as u32;
                if seq.since(start) < l {
                    break;
                }
                start = start + l;
                node = self.txq.next(node);
            }
            c.tx_cur = node;
            c.tx_cur_seq = start;
        }
        let off = seq.since(start) as usize;
        let (src, dst) = (*c.tuple.local.ip(), *c.tuple.remote.ip());
        if ack.is_some() {
            c.rcv_acked = c.rcv_nxt;
            c.clear(flag::ACK_NOW);
        }
        if ack.is_some() {
            c.ack.at = None;
        }
        let txq = &self.txq;
        let sent = tx.send_tcp(src, dst, repr.segment_len(), &mut |buf: &mut [u8]| {
            let h = repr.header_len();
            copy_payload(txq, node, off, &mut buf[h..]);
            repr.emit(&mut TcpPacket::new_unchecked(buf), src, dst);
        });
        self.stats.segs_out += 1;
        self.stats.bytes_out += u64::from(len);
        if !sent {
            self.stats.segs_out_failed += 1;
        }
    }

    /// An RST not tied to a live connection.
    fn send_rst(
        &mut self,
        tx: &mut dyn IpSender,
        tuple: FourTuple,
        seq: SeqNum,
        ack: Option<SeqNum>,
    ) {
        let repr = TcpRepr {
            src_port: tuple.local.port(),
            dst_port: tuple.remote.port(),
            seq,
            ack,
            flags: TcpFlags::RST,
            window: 0,
            mss: None,
            window_scale: None,
            sack_permitted: false,
            payload_len: 0,
        };
        let (src, dst) = (*tuple.local.ip(), *tuple.remote.ip());
        let sent = tx.send_tcp(src, dst, HEADER_LEN, &mut |buf: &mut [u8]| {
            repr.emit(&mut TcpPacket::new_unchecked(buf), src, dst);
        });
        self.stats.segs_out += 1;
        self.stats.rst_sent += 1;
        if !sent {
            self.stats.segs_out_failed += 1;
        }
    }

    /// Everything connection `idx` has to send now, then the delayed-ACK
    /// timer if an ACK is still owed.
    fn output(&mut self, idx: u32, now: Instant, tx: &mut dyn IpSender) {
        self.output_segments(idx, now, tx);
        if let Some(at) = self.conns.get(idx).ack.at {
            self.arm(idx, TimerSlot::Ack, at);
        }
    }

    /// The segments of [`output`](Self::output). Pure ACKs carry SND.MAX,
    /// not SND.NXT: after a timeout rewinds SND.NXT, the peer may already
    /// have everything up to SND.MAX and would find an older sequence
    /// number unacceptable and drop the ACK (as BSD does).
    fn output_segments(&mut self, idx: u32, now: Instant, tx: &mut dyn IpSender) {
        let c = self.conns.get(idx);
        match c.state {
            State::Closed => return,
            State::SynSent | State::SynReceived => {
                if c.snd_nxt == c.iss {
                    self.send_syn(idx, now, tx);
                } else if c.has(flag::ACK_NOW) && c.state == State::SynReceived {
                    let seq = c.snd_max;
                    self.transmit(idx, seq, 0, TcpFlags::EMPTY, tx);
                }
                return;
            }
            State::TimeWait => {
                if c.has(flag::ACK_NOW) {
                    let seq = c.snd_max;
                    self.transmit(idx, seq, 0, TcpFlags::EMPTY, tx);
                }
                return;
            }
            _ => {}
        }
        if c.has(flag::REXMIT_UNA) {
            self.retransmit_una(idx, now, tx);
        }
        self.send_data(idx, now, tx);
        let c = self.conns.get(idx);
        if c.has(flag::ACK_NOW) {
            let seq = c.snd_max;
            self.transmit(idx, seq, 0, TcpFlags::EMPTY, tx);
        }
    }

    fn send_syn(&mut self, idx: u32, now: Instant, tx: &mut dyn IpSender) {
        let c = self.conns.get(idx);
        let (iss, first) = (c.iss, c.snd_max == c.iss);
        self.transmit(idx, iss, 0, TcpFlags::SYN, tx);
        let c = self.conns.get_mut(idx);
        c.snd_nxt = iss + 1;
        c.snd_max = iss + 1;
        if first {
            c.set(flag::RTT_TIMING);
            c.rtt_seq = iss + 1;
            c.rtt_start = now;
        }
        self.ensure_rexmit(idx, now);
    }

    /// Fast retransmit / NewReno partial-ACK retransmit of the segment at
    /// SND.UNA (RFC 5681 §3.2, RFC 6582 §3.2).
    fn retransmit_una(&mut self, idx: u32, now: Instant, tx: &mut dyn IpSender) {
        let c = self.conns.get_mut(idx);
        c.clear(flag::REXMIT_UNA);
        let data_end = c.data_end();
        let left = if data_end > c.snd_una {
            data_end.since(c.snd_una)
        } else {
            0
        };
        let len = left.min(u32::from(c.snd_mss));
        let fin = c.has(flag::FIN_QUEUED)
            && !c.has(flag::FIN_ACKED)
            && len == left
            && c.snd_max > data_end;
        if len == 0 && !fin {
            return;
        }
        if c.has(flag::RTT_TIMING) && c.rtt_seq > c.snd_una {
            // Karn: the timed segment may be the one retransmitted.
            c.clear(flag::RTT_TIMING);
        }
        let seq = c.snd_una;
        let flags = if fin { TcpFlags::FIN } else { TcpFlags::EMPTY };
        self.transmit(idx, seq, len, flags, tx);
        self.stats.retransmits += 1;
        self.ensure_rexmit(idx, now);
    }

    /// New data (and FIN) within min(cwnd, peer window), with sender SWS
    /// avoidance; arms the persist timer when a zero window blocks data.
    fn send_data(&mut self, idx: u32, now: Instant, tx: &mut dyn IpSender) {
        loop {
            let c = self.conns.get(idx);
            let data_end = c.data_end();
            let mss = u32::from(c.snd_mss);
            let in_flight = c.snd_nxt.since(c.snd_una);
            // Limited transmit (RFC 3042): each of the first two duplicate
            // ACKs lets one more segment out, so that a small window
            // still produces the third duplicate ACK.
            let mut cwnd = c.cwnd;
            if !c.has(flag::RECOVERY) && c.dupacks <= 2 {
                cwnd = cwnd.saturating_add(u32::from(c.dupacks) * mss);
            }
            let usable = c.snd_wnd.min(cwnd).saturating_sub(in_flight);
            let remaining = if data_end > c.snd_nxt {
                data_end.since(c.snd_nxt)
            } else {
                0
            };
            if remaining == 0 {
                if c.has(flag::FIN_QUEUED) && !c.has(flag::FIN_ACKED) && c.snd_nxt == data_end {
                    let retrans = data_end < c.snd_max;
                    self.transmit(idx, data_end, 0, TcpFlags::FIN, tx);
                    let c = self.conns.get_mut(idx);
                    c.snd_nxt = data_end + 1;
                    if c.snd_nxt > c.snd_max {
                        c.snd_max = c.snd_nxt;
                    }
                    if retrans {
                        self.stats.retransmits += 1;
                    }
                    self.ensure_rexmit(idx, now);
                }
                break;
            }
            let len = remaining.min(usable).min(mss);
            if len == 0 {
                break;
            }
            if len < mss && len < remaining && in_flight > 0 && len < c.max_sndwnd / 2 {
                // Sender SWS avoidance: wait for a bigger opening.
                break;
            }
            let fin = c.has(flag::FIN_QUEUED) && len == remaining;
            let mut flags = TcpFlags::EMPTY;
            if len == remaining {
                flags = flags | TcpFlags::PSH;
            }
            if fin {
                flags = flags | TcpFlags::FIN;
            }
            let seq = c.snd_nxt;
            let retrans = seq < c.snd_max;
            self.transmit(idx, seq, len, flags, tx);
            let c = self.conns.get_mut(idx);
            c.snd_nxt = seq + len + u32::from(fin);
            if c.snd_nxt > c.snd_max {
                c.snd_max = c.snd_nxt;
            }
            if retrans {
                self.stats.retransmits += 1;
            } else if !c.has(flag::RTT_TIMING) {
                c.set(flag::RTT_TIMING);
                c.rtt_seq = c.snd_nxt;
                c.rtt_start = now;
            }
            self.ensure_rexmit(idx, now);
        }
        let c = self.conns.get(idx);
        if c.snd_wnd == 0
            && c.data_end() > c.snd_nxt
            && c.snd_nxt == c.snd_una
            && c.rtx.at.is_none()
        {
            let at = c.rto_deadline(now);
            self.set_rtx_at(idx, TimerKind::Persist, at);
        }
    }

    // ----------------------------------------------------------------
    // Input.

    /// A segment for no connection: a SYN to a listener opens one,
    /// anything else but an RST is answered by RST (RFC 9293 §3.10.7.1).
    fn no_conn_input(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        repr: &TcpRepr,
        tx: &mut dyn IpSender,
    ) {
        let syn_only = repr.flags.contains(TcpFlags::SYN) && repr.ack.is_none();
        if syn_only && self.listeners.iter().any(|l| l.port == tuple.local.port()) {
            self.passive_open(now, tuple, repr);
            return;
        }
        self.stats.dropped_no_listener += 1;
        if repr.flags.contains(TcpFlags::RST) {
            return;
        }
        self.reset_reply(tuple, repr, tx);
    }

    /// The RST answering a segment that belongs to nothing we have.
    fn reset_reply(&mut self, tuple: FourTuple, repr: &TcpRepr, tx: &mut dyn IpSender) {
        match repr.ack {
            Some(ack) => self.send_rst(tx, tuple, ack, None),
            None => self.send_rst(tx, tuple, SeqNum(0), Some(repr.seq + repr.seq_len())),
        }
    }

    /// LISTEN state, SYN arrives (RFC 9293 §3.10.7.2, third check): a new
    /// SYN-RECEIVED connection within the half-open and backlog bounds.
    fn passive_open(&mut self, now: Instant, tuple: FourTuple, repr: &TcpRepr) {
        let port = tuple.local.port();
        let pending = self
            .listeners
            .iter()
            .find(|l| l.port == port)
            .map_or(0, |l| l.pending);
        if pending >= self.cfg.backlog {
            self.stats.syn_dropped_backlog += 1;
            return;
        }
        if self.half_open >= self.cfg.max_half_open {
            self.stats.syn_dropped_half_open += 1;
            return;
        }
        let iss = initial_seq(self.isn_key, tuple.local, tuple.remote, now);
        let mut c = Conn::open(
            tuple,
            State::SynReceived,
            flag::PASSIVE | flag::HALF_OPEN,
            iss,
            &self.cfg,
        );
        self.take_syn_options(&mut c, repr);
        let Some(idx) = self.conns.insert(c) else {
            self.stats.syn_dropped_table_full += 1;
            return;
        };
        self.half_open += 1;
        self.stats.conns_opened += 1;
        self.mark_dirty(idx);
    }

    /// Receive-side initialization and option negotiation from the peer's
    /// SYN (or SYN-ACK).
    fn take_syn_options(&self, c: &mut Conn, repr: &TcpRepr) {
        c.irs = repr.seq;
        c.rcv_nxt = repr.seq + 1;
        c.rcv_adv = c.rcv_nxt;
        c.rcv_acked = c.rcv_nxt;
        c.snd_mss = repr
            .mss
            .unwrap_or(DEFAULT_PEER_MSS)
            .max(MIN_PEER_MSS)
            .min(self.cfg.mss);
        match repr.window_scale {
            Some(ws) => {
                c.set(flag::WSCALE);
                c.snd_wscale = ws;
            }
            _ => {
                c.clear(flag::WSCALE);
                c.snd_wscale = 0;
                c.rcv_wscale = 0;
            }
        }
        // The window of a SYN is never scaled (RFC 7323 §2.2).
        c.snd_wnd = u32::from(repr.window);
        c.max_sndwnd = c.snd_wnd;
        c.snd_wl1 = repr.seq;
    }

    /// SYN-SENT state (RFC 9293 §3.10.7.3).
    fn syn_sent_input(
        &mut self,
        idx: u32,
        now: Instant,
        repr: &TcpRepr,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
    ) {
        let c = self.conns.get(idx);
        let rst = repr.flags.contains(TcpFlags::RST);
        if let Some(ack) = repr.ack {
            if ack <= c.iss || ack > c.snd_max {
                if !rst {
                    let tuple = c.tuple;
                    self.send_rst(tx, tuple, ack, None);
                }
                return;
            }
        }
        if rst {
            if repr.ack.is_some() {
                self.stats.rst_received += 1;
                self.kill(idx, DeadReason::Reset, events);
            }
            return;
        }
        if !repr.flags.contains(TcpFlags::SYN) {
            return;
        }
        let mut c = self.conns.get(idx).clone();
        self.take_syn_options(&mut c, repr);
        *self.conns.get_mut(idx) = c;
        let Some(ack) = repr.ack else {
            // Simultaneous open: answer with SYN-ACK from SYN-RECEIVED.
            let c = self.conns.get_mut(idx);
            c.state = State::SynReceived;
            c.snd_nxt = c.iss;
            self.stop_rtx(idx);
            self.mark_dirty(idx);
            return;
        };
        let cfg = &self.cfg;
        let c = self.conns.get_mut(idx);
        c.snd_una = ack;
        c.snd_wl2 = ack;
        if c.snd_nxt < ack {
            c.snd_nxt = ack;
        }
        if c.has(flag::RTT_TIMING) && ack >= c.rtt_seq {
            c.clear(flag::RTT_TIMING);
            c.rtt_sample(now, self.rto_bounds);
        }
        c.state = State::Established;
        c.cwnd = c.initial_window();
        c.handshake_done(cfg);
        c.set(flag::ACK_NOW);
        let cookie = c.cookie;
        let conn = self.conns.id(idx);
        self.stop_rtx(idx);
        self.mark_dirty(idx);
        events.push(TcpEvent::Connected {
            conn,
            cookie,
            result: Ok(()),
        });
    }

    /// Segment arrival on a connection past SYN-SENT (RFC 9293 §3.10.7.4).
    #[allow(clippy::too_many_arguments)]
    fn conn_input(
        &mut self,
        idx: u32,
        now: Instant,
        repr: &TcpRepr,
        segment: &PktBuf,
        hdr_len: usize,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
    ) {
        let c = self.conns.get(idx);
        let state = c.state;
        let syn = repr.flags.contains(TcpFlags::SYN);
        let rst = repr.flags.contains(TcpFlags::RST);
        match state {
            State::SynSent => return self.syn_sent_input(idx, now, repr, tx, events),
            // A new SYN may reuse a TIME-WAIT connection's addresses when
            // its sequence number is beyond what we saw (RFC 9293 §3.6.1).
            State::TimeWait
                if syn
                    && repr.ack.is_none()
                    && repr.seq > c.rcv_nxt
                    && self
                        .listeners
                        .iter()
                        .any(|l| l.port == c.tuple.local.port()) =>
            {
                let tuple = c.tuple;
                self.free(idx);
                self.passive_open(now, tuple, repr);
                return;
            }
            // A retransmitted SYN: send the SYN-ACK again.
            State::SynReceived if syn && repr.ack.is_none() && repr.seq == c.irs => {
                let iss = c.iss;
                self.conns.get_mut(idx).snd_nxt = iss;
                self.mark_dirty(idx);
                return;
            }
            _ => {}
        }

        if self.predict && self.predicted(c, repr) {
            self.stats.segs_predicted += 1;
            return self.fast_input(idx, now, repr, segment, hdr_len, events);
        }

        // First: sequence number acceptability.
        let seg_len = repr.seq_len();
        let wnd = c.rcv_wnd();
        let rcv_nxt = c.rcv_nxt;
        let in_window = |s: SeqNum| s >= rcv_nxt && s.diff(rcv_nxt) < wnd as i32;
        // Zero-length segments are taken from the RCV.NXT we last
        // acknowledged on (as Linux does), so that an ACK overtaken by
        // data is processed instead of drawing a duplicate ACK that the
        // peer would count towards a fast retransmit.
        let rcv_acked = c.rcv_acked;
        let mut acceptable = match (seg_len, wnd) {
            (0, 0) => repr.seq >= rcv_acked && repr.seq <= rcv_nxt,
            (0, _) => repr.seq >= rcv_acked && repr.seq.diff(rcv_nxt) < wnd as i32,
            (_, 0) => false,
            (n, _) => in_window(repr.seq) || in_window(repr.seq + (n - 1)),
        };
        // Zero window: still process the ACK and RST of a segment at
        // RCV.NXT (its text is trimmed below).
        let zero_window_probe = !acceptable && wnd == 0 && repr.seq == rcv_nxt;
        acceptable |= zero_window_probe;
        if !acceptable {
            if repr.seq < rcv_nxt {
                self.stats.duplicate_segments += 1;
            } else {
                self.stats.dropped_out_of_window += 1;
            }
            if !rst {
                self.conns.get_mut(idx).set(flag::ACK_NOW);
                self.mark_dirty(idx);
            }
            return;
        }

        // Second: RST (RFC 5961 §3.2: exact match resets, else challenge).
        if rst {
            if repr.seq != rcv_nxt {
                self.challenge_ack(idx);
                return;
            }
            match state {
                // RFC 1337: ignore RSTs in TIME-WAIT (no assassination).
                State::TimeWait => {}
                State::SynReceived if c.has(flag::PASSIVE) => {
                    self.stats.rst_received += 1;
                    self.free(idx);
                }
                _ => {
                    self.stats.rst_received += 1;
                    self.kill(idx, DeadReason::Reset, events);
                }
            }
            return;
        }

        // Fourth: SYN on a synchronized connection (RFC 5961 §4).
        if syn {
            if state == State::SynReceived && c.has(flag::PASSIVE) {
                self.free(idx);
            } else {
                self.challenge_ack(idx);
            }
            return;
        }

        // Fifth: the ACK field.
        let Some(ack) = repr.ack else {
            return;
        };
        if state == State::SynReceived && !self.syn_received_ack(idx, now, repr, ack, tx, events) {
            return;
        }
        if !self.process_ack(idx, now, repr, ack, events) {
            return;
        }

        // Seventh: segment text; eighth: FIN.
        let c = self.conns.get(idx);
        if matches!(
            c.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) && (repr.payload_len > 0 || repr.flags.contains(TcpFlags::FIN))
        {
            self.receive_text(idx, now, repr, segment, hdr_len, zero_window_probe, events);
        }
        self.mark_dirty(idx);
    }

    /// Header prediction: whether the full processing of `repr` on `c`
    /// would be the straight line of [`fast_input`](Self::fast_input).
    #[inline]
    fn predicted(&self, c: &Conn, repr: &TcpRepr) -> bool {
        let Some(ack) = repr.ack else {
            return false;
        };
        let len = repr.payload_len as u32;
        c.state == State::Established
            && repr.flags.without(TcpFlags::PSH) == TcpFlags::EMPTY
            && repr.seq == c.rcv_nxt
            && len <= c.rcv_wnd()
            && (ack > c.snd_una || (ack == c.snd_una && len > 0))
            && ack <= c.snd_max
            && (c.snd_wl1 < repr.seq || (c.snd_wl1 == repr.seq && c.snd_wl2 <= ack))
            && repr.window != 0
            && c.snd_wnd != 0
            && c.rtx_kind == TimerKind::Rexmit
            && c.flags & (flag::RECOVERY | flag::OOO_FIN | flag::FIN_QUEUED) == 0
            && c.ooo_head == NIL
    }

    /// A predicted segment (see [`predicted`](Self::predicted)): the
    /// effects of the ACK, window and text checks of RFC 9293 §3.10.7.4
    /// for a segment that passes every check the common way.
    fn fast_input(
        &mut self,
        idx: u32,
        now: Instant,
        repr: &TcpRepr,
        segment: &PktBuf,
        hdr_len: usize,
        events: &mut Vec<TcpEvent>,
    ) {
        let ack = repr.ack.unwrap_or(repr.seq);
        let c = self.conns.get_mut(idx);
        if ack > c.snd_una {
            let acked = ack.since(c.snd_una);
            if c.has(flag::RTT_TIMING) && ack >= c.rtt_seq {
                c.clear(flag::RTT_TIMING);
                c.rtt_sample(now, self.rto_bounds);
            }
            c.dupacks = 0;
            c.grow_cwnd(acked);
            c.snd_una = ack;
            if c.snd_nxt < ack {
                c.snd_nxt = ack;
            }
            c.retries = 0;
            let (cookie, owned) = (c.cookie, c.app_owned());
            self.release_acked(idx, acked);
            if owned {
                events.push(TcpEvent::Sent {
                    conn: self.conns.id(idx),
                    cookie,
                    acked,
                });
            }
            let c = self.conns.get(idx);
            if c.snd_una == c.snd_max {
                self.stop_rtx(idx);
            } else {
                let at = c.rto_deadline(now);
                self.set_rtx_at(idx, TimerKind::Rexmit, at);
            }
        }
        // The window update (its WL1/WL2 rule checked by `predicted`); the
        // persist timer is not running.
        let c = self.conns.get_mut(idx);
        let seg_wnd = u32::from(repr.window) << c.snd_wscale;
        c.snd_wnd = seg_wnd;
        c.snd_wl1 = repr.seq;
        c.snd_wl2 = ack;
        c.max_sndwnd = c.max_sndwnd.max(seg_wnd);
        if repr.payload_len > 0 {
            self.deliver(idx, segment.slice(hdr_len, repr.payload_len), events);
            let c = self.conns.get_mut(idx);
            if c.rcv_nxt.since(c.rcv_acked) >= 2 * u32::from(self.cfg.mss) {
                c.set(flag::ACK_NOW);
            } else if c.ack.at.is_none() {
                c.ack.at = Some(now + self.cfg.delayed_ack);
            }
        }
        self.mark_dirty(idx);
    }

    fn challenge_ack(&mut self, idx: u32) {
        self.stats.challenge_acks += 1;
        self.conns.get_mut(idx).set(flag::ACK_NOW);
        self.mark_dirty(idx);
    }

    /// SYN-RECEIVED, ACK arrives: the handshake completes (Knock for a
    /// passive open, Connected for a simultaneous one). Returns false if
    /// the segment is consumed.
    fn syn_received_ack(
        &mut self,
        idx: u32,
        now: Instant,
        repr: &TcpRepr,
        ack: SeqNum,
        tx: &mut dyn IpSender,
        events: &mut Vec<TcpEvent>,
    ) -> bool {
        let c = self.conns.get(idx);
        if ack <= c.iss || ack > c.snd_max {
            let tuple = c.tuple;
            self.send_rst(tx, tuple, ack, None);
            return false;
        }
        let passive = c.has(flag::PASSIVE);
        let port = c.tuple.local.port();
        if passive {
            let backlog = self.cfg.backlog;
            match self.listener_pending(port) {
                None => {
                    self.queue_rst(idx);
                    self.free(idx);
                    return false;
                }
                Some(p) if *p >= backlog => {
                    self.stats.ack_dropped_backlog += 1;
                    return false;
                }
                Some(p) => *p += 1,
            }
        }
        let cfg = &self.cfg;
        let c = self.conns.get_mut(idx);
        c.snd_una = c.iss + 1;
        // A retransmitted SYN in this batch rewound SND.NXT to resend the
        // SYN-ACK; the ACK makes that moot.
        if c.snd_nxt < c.snd_una {
            c.snd_nxt = c.snd_una;
        }
        if c.has(flag::RTT_TIMING) && ack >= c.rtt_seq {
            c.clear(flag::RTT_TIMING);
            c.rtt_sample(now, self.rto_bounds);
        }
        c.state = State::Established;
        c.cwnd = c.initial_window();
        c.handshake_done(cfg);
        c.snd_wnd = u32::from(repr.window) << c.snd_wscale;
        c.max_sndwnd = c.max_sndwnd.max(c.snd_wnd);
        c.snd_wl1 = repr.seq;
        c.snd_wl2 = ack;
        let (tuple, cookie) = (c.tuple, c.cookie);
        if passive {
            c.clear(flag::HALF_OPEN);
            c.set(flag::BACKLOG);
            self.half_open -= 1;
        }
        self.stop_rtx(idx);
        let conn = self.conns.id(idx);
        if passive {
            events.push(TcpEvent::Knock { conn, tuple });
        } else {
            events.push(TcpEvent::Connected {
                conn,
                cookie,
                result: Ok(()),
            });
        }
        true
    }

    /// The ACK field in synchronized states: send-queue release, RTT,
    /// congestion control, window update, FIN acknowledgment. Returns
    /// false if the segment is consumed (or the connection freed).
    fn process_ack(
        &mut self,
        idx: u32,
        now: Instant,
        repr: &TcpRepr,
        ack: SeqNum,
        events: &mut Vec<TcpEvent>,
    ) -> bool {
        let c = self.conns.get_mut(idx);
        if ack > c.snd_max {
            // Acknowledges something never sent.
            c.set(flag::ACK_NOW);
            self.mark_dirty(idx);
            return false;
        }
        if ack < c.snd_una - c.max_sndwnd.max(1) {
            // RFC 5961 §5.2: too old to be a legitimate ACK.
            self.challenge_ack(idx);
            return false;
        }
        let mss = u32::from(c.snd_mss);
        let seg_wnd = u32::from(repr.window) << c.snd_wscale;
        let mut fin_acked = false;
        if ack > c.snd_una {
            let acked = ack.since(c.snd_una);
            let fin_seq = c.data_end();
            let data_acked = if c.has(flag::FIN_QUEUED) && ack > fin_seq {
                fin_acked = !c.has(flag::FIN_ACKED);
                c.set(flag::FIN_ACKED);
                c.tx_queued
            } else {
                acked
            };
            if c.has(flag::RTT_TIMING) && ack >= c.rtt_seq {
                c.clear(flag::RTT_TIMING);
                c.rtt_sample(now, self.rto_bounds);
            }
            let mut restart_timer = true;
            if c.has(flag::RECOVERY) {
                if ack >= c.recover {
                    // Full ACK (RFC 6582 §3.2 step 3): leave recovery.
                    c.cwnd = c
                        .ssthresh
                        .min(c.flight_size().saturating_sub(acked).max(mss) + mss);
                    c.clear(flag::RECOVERY | flag::PARTIAL_SEEN);
                    c.dupacks = 0;
                } else {
                    // Partial ACK: retransmit the next hole, deflate.
                    c.set(flag::REXMIT_UNA);
                    c.cwnd = c.cwnd.saturating_sub(acked);
                    if acked >= mss {
                        c.cwnd += mss;
                    }
                    restart_timer = !c.has(flag::PARTIAL_SEEN);
                    c.set(flag::PARTIAL_SEEN);
                }
            } else {
                c.dupacks = 0;
                c.grow_cwnd(acked);
            }
            c.snd_una = ack;
            if c.snd_nxt < ack {
                c.snd_nxt = ack;
            }
            c.retries = 0;
            let (cookie, owned) = (c.cookie, c.app_owned());
            self.release_acked(idx, data_acked);
            if owned && data_acked > 0 {
                events.push(TcpEvent::Sent {
                    conn: self.conns.id(idx),
                    cookie,
                    acked: data_acked,
                });
            }
            let c = self.conns.get(idx);
            if c.snd_una == c.snd_max {
                if c.rtx_kind == TimerKind::Rexmit {
                    self.stop_rtx(idx);
                }
            } else if restart_timer {
                let at = c.rto_deadline(now);
                self.set_rtx_at(idx, TimerKind::Rexmit, at);
            }
        } else if ack == c.snd_una
            && repr.payload_len == 0
            && !repr.flags.contains(TcpFlags::FIN)
            && c.snd_max > c.snd_una
            && seg_wnd == c.snd_wnd
            && seg_wnd != 0
        {
            // Duplicate ACK (RFC 5681 §2); not while the window is closed,
            // when ACKs answer window probes.
            c.dupacks = c.dupacks.saturating_add(1);
            if c.has(flag::RECOVERY) {
                c.cwnd = c.cwnd.saturating_add(mss);
            } else if c.dupacks == 3 && ack > c.recover {
                // Fast retransmit (RFC 6582 §3.2 step 2). Segments sent by
                // limited transmit do not count in FlightSize (RFC 3042).
                c.ssthresh = (c.flight_size().min(c.cwnd) / 2).max(2 * mss);
                c.recover = c.snd_max;
                c.cwnd = c.ssthresh + 3 * mss;
                c.set(flag::RECOVERY | flag::REXMIT_UNA);
                c.clear(flag::PARTIAL_SEEN);
                self.stats.fast_retransmits += 1;
            }
        }

        // Window update (RFC 9293 §3.10.7.4, fifth check).
        let c = self.conns.get_mut(idx);
        if c.snd_wl1 < repr.seq || (c.snd_wl1 == repr.seq && c.snd_wl2 <= ack) {
            c.snd_wnd = seg_wnd;
            c.snd_wl1 = repr.seq;
            c.snd_wl2 = ack;
            c.max_sndwnd = c.max_sndwnd.max(seg_wnd);
            if seg_wnd > 0 && c.rtx_kind == TimerKind::Persist && c.rtx.at.is_some() {
                c.retries = 0;
                self.stop_rtx(idx);
            }
        }

        if fin_acked {
            let c = self.conns.get_mut(idx);
            match c.state {
                State::FinWait1 => {
                    c.state = State::FinWait2;
                    self.set_rtx(idx, now, TimerKind::FinWait2, self.cfg.fin_wait_2_timeout);
                }
                State::Closing => self.enter_time_wait(idx, now),
                State::LastAck => {
                    self.free(idx);
                    return false;
                }
                _ => {}
            }
        }
        true
    }

    /// Drops `n` acknowledged bytes from the head of the send queue.
    fn release_acked(&mut self, idx: u32, mut n: u32) {
        let c = self.conns.get_mut(idx);
        c.tx_queued -= n;
        while n > 0 {
            let head = c.tx_head;
            let len = self.txq.get(head).len() as u32;
            if len <= n {
                n -= len;
                c.tx_head = self.txq.next(head);
                if c.tx_head == NIL {
                    c.tx_tail = NIL;
                }
                if c.tx_cur == head {
                    c.tx_cur = NIL;
                }
                self.txq.release(head);
            } else {
                self.txq.get_mut(head).advance(n as usize);
                if c.tx_cur == head {
                    c.tx_cur_seq = c.tx_cur_seq + n;
                }
                n = 0;
            }
        }
    }

    fn enter_time_wait(&mut self, idx: u32, now: Instant) {
        let c = self.conns.get_mut(idx);
        c.state = State::TimeWait;
        let ooo = std::mem::replace(&mut c.ooo_head, NIL);
        c.ooo_bytes = 0;
        c.ooo_count = 0;
        self.rxq.release_list(ooo);
        self.set_rtx(idx, now, TimerKind::TimeWait, self.cfg.time_wait);
    }

    /// Segment text and FIN (RFC 9293 §3.10.7.4, seventh and eighth
    /// checks): trim to the window, deliver in order, queue out of order,
    /// decide between an immediate and a delayed ACK.
    #[allow(clippy::too_many_arguments)]
    fn receive_text(
        &mut self,
        idx: u32,
        now: Instant,
        repr: &TcpRepr,
        segment: &PktBuf,
        hdr_len: usize,
        zero_window_probe: bool,
        events: &mut Vec<TcpEvent>,
    ) {
        let c = self.conns.get(idx);
        let rcv_nxt = c.rcv_nxt;
        let mut seq = repr.seq;
        let mut off = hdr_len;
        let mut len = if zero_window_probe {
            0
        } else {
            repr.payload_len as u32
        };
        let mut fin = repr.flags.contains(TcpFlags::FIN) && !zero_window_probe;
        let edge = c.rcv_adv.max(rcv_nxt);
        let had_ooo = c.ooo_head != NIL;
        if zero_window_probe && repr.payload_len > 0 {
            self.conns.get_mut(idx).set(flag::ACK_NOW);
        }
        // Trim what we already have.
        if seq < rcv_nxt {
            let old = rcv_nxt.since(seq);
            let cut = old.min(len);
            self.stats.duplicate_segments += u64::from(cut > 0);
            off += cut as usize;
            len -= cut;
            if old > cut {
                fin = false; // the FIN was old too
            }
            seq = rcv_nxt;
        }
        // Trim what lies beyond the window (a FIN may sit at its edge).
        if seq + len > edge {
            len = if edge > seq { edge.since(seq) } else { 0 };
            fin = false;
        }
        let mut ack_now = had_ooo || repr.payload_len as u32 != len;
        if len > 0 {
            let data = segment.slice(off, len as usize);
            if seq == rcv_nxt {
                self.deliver(idx, data, events);
                ack_now |= self.pull_ooo(idx, events);
            } else {
                self.ooo_insert(idx, seq, data);
                ack_now = true;
            }
        }
        if fin {
            let fin_seq = seq + len;
            let c = self.conns.get_mut(idx);
            if fin_seq == c.rcv_nxt {
                self.fin_received(idx, now, events);
            } else if fin_seq > c.rcv_nxt {
                c.set(flag::OOO_FIN);
                c.rcv_fin = fin_seq;
                ack_now = true;
            }
        }
        let c = self.conns.get_mut(idx);
        if c.has(flag::OOO_FIN) && c.rcv_fin == c.rcv_nxt {
            self.fin_received(idx, now, events);
        }
        let c = self.conns.get_mut(idx);
        if ack_now || c.rcv_nxt.since(c.rcv_acked) >= 2 * u32::from(self.cfg.mss) {
            c.set(flag::ACK_NOW);
        } else if c.rcv_nxt != c.rcv_acked && c.ack.at.is_none() {
            // The delayed ACK's deadline only: `output` files it in the
            // wheel unless a reply in this loop turn carries the ACK.
            c.ack.at = Some(now + self.cfg.delayed_ack);
        }
    }

    /// In-order data at RCV.NXT: to the application, to the accept queue,
    /// or (after close) dropped.
    fn deliver(&mut self, idx: u32, data: PktBuf, events: &mut Vec<TcpEvent>) {
        let len = data.len() as u32;
        let conn = self.conns.id(idx);
        let c = self.conns.get_mut(idx);
        if c.app_owned() {
            c.rx_held += len;
            events.push(TcpEvent::Recv {
                conn,
                cookie: c.cookie,
                data,
            });
        } else if c.has(flag::BACKLOG) {
            let seq = c.rcv_nxt;
            let Ok(node) = self.rxq.alloc(RxSeg { seq, buf: data }) else {
                // No room to hold it until accept: as if lost.
                self.stats.ooo_dropped += 1;
                return;
            };
            let c = self.conns.get_mut(idx);
            if c.pend_tail == NIL {
                c.pend_head = node;
            } else {
                self.rxq.set_next(c.pend_tail, node);
            }
            c.pend_tail = node;
            c.rx_pending += len;
        }
        let c = self.conns.get_mut(idx);
        c.rcv_nxt = c.rcv_nxt + len;
        self.stats.bytes_in += u64::from(len);
    }

    /// Delivers out-of-order segments that RCV.NXT has reached. Returns
    /// whether any was (a gap was filled).
    fn pull_ooo(&mut self, idx: u32, events: &mut Vec<TcpEvent>) -> bool {
        let mut filled = false;
        loop {
            let c = self.conns.get_mut(idx);
            let head = c.ooo_head;
            if head == NIL || self.rxq.get(head).seq > c.rcv_nxt {
                break;
            }
            c.ooo_head = self.rxq.next(head);
            c.ooo_count -= 1;
            let rcv_nxt = c.rcv_nxt;
            let seg = self.rxq.release(head);
            let len = seg.buf.len() as u32;
            self.conns.get_mut(idx).ooo_bytes -= len;
            let skip = rcv_nxt.since(seg.seq);
            if skip >= len {
                continue;
            }
            let data = if skip > 0 {
                seg.buf.slice(skip as usize, (len - skip) as usize)
            } else {
                seg.buf
            };
            self.deliver(idx, data, events);
            filled = true;
        }
        filled
    }

    /// Holds an out-of-order segment, trimming overlaps with what is held
    /// (sorted list; duplicates dropped).
    fn ooo_insert(&mut self, idx: u32, seq: SeqNum, data: PktBuf) {
        let max = self.cfg.max_ooo_segments;
        let c = self.conns.get_mut(idx);
        if c.ooo_count >= max {
            self.stats.ooo_dropped += 1;
            return;
        }
        let mut start = seq;
        let mut end = seq + data.len() as u32;
        let mut prev = NIL;
        let mut cur = c.ooo_head;
        // Skip segments wholly before this one.
        while cur != NIL {
            let s = self.rxq.get(cur);
            if s.seq + s.buf.len() as u32 > start {
                break;
            }
            prev = cur;
            cur = self.rxq.next(cur);
        }
        // Overlap with a segment starting at or before us: trim our front.
        if cur != NIL {
            let s = self.rxq.get(cur);
            if s.seq <= start {
                let s_end = s.seq + s.buf.len() as u32;
                if s_end >= end {
                    self.stats.duplicate_segments += 1;
                    return;
                }
                start = s_end;
                prev = cur;
                cur = self.rxq.next(cur);
            }
        }
        // Drop held segments we cover entirely.
        while cur != NIL {
            let s = self.rxq.get(cur);
            let s_end = s.seq + s.buf.len() as u32;
            if s_end > end {
                break;
            }
            let next = self.rxq.next(cur);
            let removed = self.rxq.release(cur);
            let c = self.conns.get_mut(idx);
            c.ooo_bytes -= removed.buf.len() as u32;
            c.ooo_count -= 1;
            if prev == NIL {
                c.ooo_head = next;
            } else {
                self.rxq.set_next(prev, next);
            }
            cur = next;
        }
        // Partial overlap with the next one: trim our end.
        if cur != NIL {
            let s = self.rxq.get(cur);
            if s.seq < end {
                end = s.seq;
            }
        }
        if end <= start {
            self.stats.duplicate_segments += 1;
            return;
        }
        let piece = data.slice(start.since(seq) as usize, end.since(start) as usize);
        let Ok(node) = self.rxq.alloc(RxSeg {
            seq: start,
            buf: piece,
        }) else {
            self.stats.ooo_dropped += 1;
            return;
        };
        self.rxq.set_next(node, cur);
        let c = self.conns.get_mut(idx);
        if prev == NIL {
            c.ooo_head = node;
        } else {
            self.rxq.set_next(prev, node);
        }
        c.ooo_bytes += end.since(start);
        c.ooo_count += 1;
    }

    /// The peer's FIN, in order (RFC 9293 §3.10.7.4, eighth check).
    fn fin_received(&mut self, idx: u32, now: Instant, events: &mut Vec<TcpEvent>) {
        let conn = self.conns.id(idx);
        let c = self.conns.get_mut(idx);
        c.rcv_nxt = c.rcv_nxt + 1;
        c.clear(flag::OOO_FIN);
        c.set(flag::ACK_NOW);
        match c.state {
            State::SynReceived | State::Established => {
                c.state = State::CloseWait;
                if c.app_owned() {
                    events.push(TcpEvent::Dead {
                        conn,
                        cookie: c.cookie,
                        reason: DeadReason::PeerClosed,
                    });
                } else if c.has(flag::BACKLOG) {
                    c.set(flag::PEER_CLOSED_PENDING);
                }
            }
            State::FinWait1 => {
                if c.has(flag::FIN_ACKED) {
                    self.enter_time_wait(idx, now);
                } else {
                    c.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(idx, now),
            _ => {}
        }
    }
}

#[cfg(test)]
impl TcpStack {
    /// The state of a connection by handle, for tests.
    pub(crate) fn state_of(&self, id: ConnId) -> Option<&'static str> {
        self.conns
            .resolve(id)
            .map(|i| self.conns.get(i).state.name())
    }

    /// The state of the connection with `tuple`, for tests.
    pub(crate) fn state_by_tuple(&self, tuple: &FourTuple) -> Option<&'static str> {
        self.conns
            .lookup(tuple)
            .map(|i| self.conns.get(i).state.name())
    }

    /// Read access to a connection, for tests.
    pub(crate) fn conn_by_tuple(&self, tuple: &FourTuple) -> Option<&Conn> {
        self.conns.lookup(tuple).map(|i| self.conns.get(i))
    }

    /// Turns header prediction on or off, for tests comparing both paths.
    pub(crate) fn set_header_prediction(&mut self, on: bool) {
        self.predict = on;
    }

    /// Write access to a connection, for tests that set up a state.
    pub(crate) fn conn_mut_by_tuple(&mut self, tuple: &FourTuple) -> Option<&mut Conn> {
        let i = self.conns.lookup(tuple)?;
        Some(self.conns.get_mut(i))
    }
}
