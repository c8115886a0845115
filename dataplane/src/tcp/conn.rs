//! Per-connection state (the TCB of RFC 9293 §3.3.1), kept small: buffers
//! live outside it, in the stack's node slabs, and are reached through list
//! heads stored here.

use std::time::Duration;

use super::list::NIL;
use super::{FourTuple, TcpConfig};
use crate::time::Instant;
use crate::timer::TimerId;
use crate::wire::tcp::SeqNum;

/// Connection states of RFC 9293 §3.3.2 (LISTEN is a listener, not a
/// connection; CLOSED is a free slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Closed,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
        }
    }
}

/// What the connection's retransmission-slot timer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// Retransmit SYN, SYN-ACK, data or FIN.
    Rexmit,
    /// Zero-window probe.
    Persist,
    /// End of TIME-WAIT.
    TimeWait,
    /// Give up waiting for the peer's FIN after our close.
    FinWait2,
}

/// The two timers of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerSlot {
    /// Retransmission, persist, TIME-WAIT or FIN-WAIT-2 (see
    /// [`Conn::rtx_kind`]).
    Rtx,
    /// Delayed ACK.
    Ack,
}

/// Token stored in the timer wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerToken {
    pub idx: u32,
    pub gen: u32,
    pub slot: TimerSlot,
}

/// A connection timer kept lazily: the deadline lives here, and the wheel
/// entry standing for it is only replaced when the deadline moves earlier.
/// Moving the deadline later or stopping the timer leaves the entry in
/// place; when it fires, the stack re-files it at the current deadline or
/// drops it (see `TcpStack::on_timer`). Most segments restart the
/// retransmission timer and stop the delayed-ACK timer: this way they touch
/// no wheel list. The delayed-ACK deadline is set when data arrives but
/// filed only at the next flush (or poll), so that a reply sent in the same
/// loop turn, which carries the ACK, never files it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LazyTimer {
    /// When the timer is due; `None` while it is stopped.
    pub at: Option<Instant>,
    /// The wheel entry and its deadline; while it is pending, not later
    /// than `at` (except for a delayed ACK not yet filed).
    pub entry: Option<(TimerId, Instant)>,
}

/// Boolean state of a connection.
pub(crate) mod flag {
    /// Created by a listener (passive open).
    pub const PASSIVE: u32 = 1 << 0;
    /// Counted in the stack's half-open total (SYN-RECEIVED, passive).
    pub const HALF_OPEN: u32 = 1 << 1;
    /// Knock sent, waiting for accept: counted in the listener's backlog.
    pub const BACKLOG: u32 = 1 << 2;
    /// The application holds the handle: events flow.
    pub const APP: u32 = 1 << 3;
    /// The application closed: finish quietly, deliver nothing.
    pub const ORPHAN: u32 = 1 << 4;
    /// A FIN follows the queued data.
    pub const FIN_QUEUED: u32 = 1 << 5;
    /// Our FIN is acknowledged.
    pub const FIN_ACKED: u32 = 1 << 6;
    /// The peer's FIN arrived out of order at `rcv_fin`.
    pub const OOO_FIN: u32 = 1 << 7;
    /// An ACK must go out at the next flush.
    pub const ACK_NOW: u32 = 1 << 8;
    /// In the stack's dirty list.
    pub const DIRTY: u32 = 1 << 9;
    /// Retransmit the segment at SND.UNA at the next output.
    pub const REXMIT_UNA: u32 = 1 << 10;
    /// In NewReno fast recovery.
    pub const RECOVERY: u32 = 1 << 11;
    /// A segment is being timed for an RTT sample.
    pub const RTT_TIMING: u32 = 1 << 12;
    /// Our SYN (or SYN-ACK) was retransmitted.
    pub const SYN_REXMIT: u32 = 1 << 13;
    /// The peer's FIN was received; waiting for accept to report it.
    pub const PEER_CLOSED_PENDING: u32 = 1 << 14;
    /// A partial ACK was seen in this recovery (RFC 6582 timer rule).
    pub const PARTIAL_SEEN: u32 = 1 << 15;
    /// Window scaling in use (our SYN offers it; cleared unless the peer's
    /// SYN carries it too).
    pub const WSCALE: u32 = 1 << 16;
}

/// The transmission control block.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    // Identity and table links.
    pub tuple: FourTuple,
    pub gen: u32,
    /// Next in the hash chain (or in the free list).
    pub hnext: u32,
    pub state: State,
    pub flags: u32,
    pub cookie: u64,

    // Send sequence space (RFC 9293 §3.3.1) plus SND.MAX, the highest
    // sequence number sent (SND.NXT moves back on a timeout).
    pub iss: SeqNum,
    pub snd_una: SeqNum,
    pub snd_nxt: SeqNum,
    pub snd_max: SeqNum,
    pub snd_wl1: SeqNum,
    pub snd_wl2: SeqNum,
    /// Peer's window, scaled to bytes.
    pub snd_wnd: u32,
    /// Largest window the peer offered.
    pub max_sndwnd: u32,
    pub snd_mss: u16,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// Send queue: list of TxBufs, the head's first byte at SND.UNA (after
    /// the SYN).
    pub tx_head: u32,
    pub tx_tail: u32,
    /// Bytes queued (unacknowledged and unsent).
    pub tx_queued: u32,
    /// Cached position in the send queue: a node and its first byte's
    /// sequence number.
    pub tx_cur: u32,
    pub tx_cur_seq: SeqNum,

    // Congestion control (RFC 5681, 6582).
    pub cwnd: u32,
    pub ssthresh: u32,
    pub recover: SeqNum,
    pub dupacks: u8,
    /// Consecutive timeouts (or probes) without progress.
    pub retries: u8,

    // RTT estimation (RFC 6298), microseconds.
    pub srtt_us: u32,
    pub rttvar_us: u32,
    pub rto_us: u32,
    pub rtt_seq: SeqNum,
    pub rtt_start: Instant,

    // Receive sequence space.
    pub irs: SeqNum,
    pub rcv_nxt: SeqNum,
    /// Right edge of the window last advertised (never moves left).
    pub rcv_adv: SeqNum,
    /// RCV.NXT carried by the last ACK sent.
    pub rcv_acked: SeqNum,
    /// Sequence number of an out-of-order FIN.
    pub rcv_fin: SeqNum,
    /// Bytes delivered to the application and not yet released.
    pub rx_held: u32,
    /// In-order bytes waiting for accept (list `pend_head..pend_tail`).
    pub rx_pending: u32,
    pub pend_head: u32,
    pub pend_tail: u32,
    /// Out-of-order segments, sorted by sequence number.
    pub ooo_head: u32,
    pub ooo_bytes: u32,
    pub ooo_count: u16,

    // Timers: the retransmission slot (RTO, persist, TIME-WAIT,
    // FIN-WAIT-2) and the delayed-ACK slot.
    pub rtx_kind: TimerKind,
    pub rtx: LazyTimer,
    pub ack: LazyTimer,
}

impl Conn {
    /// A free slot.
    pub(crate) fn empty(tuple: FourTuple) -> Conn {
        Conn {
            tuple,
            gen: 0,
            hnext: NIL,
            state: State::Closed,
            flags: 0,
            cookie: 0,
            iss: SeqNum(0),
            snd_una: SeqNum(0),
            snd_nxt: SeqNum(0),
            snd_max: SeqNum(0),
            snd_wl1: SeqNum(0),
            snd_wl2: SeqNum(0),
            snd_wnd: 0,
            max_sndwnd: 0,
            snd_mss: 536,
            snd_wscale: 0,
            rcv_wscale: 0,
            tx_head: NIL,
            tx_tail: NIL,
            tx_queued: 0,
            tx_cur: NIL,
            tx_cur_seq: SeqNum(0),
            cwnd: 0,
            ssthresh: u32::MAX,
            recover: SeqNum(0),
            dupacks: 0,
            retries: 0,
            srtt_us: 0,
            rttvar_us: 0,
            rto_us: 0,
            rtt_seq: SeqNum(0),
            rtt_start: Instant::ZERO,
            irs: SeqNum(0),
            rcv_nxt: SeqNum(0),
            rcv_adv: SeqNum(0),
            rcv_acked: SeqNum(0),
            rcv_fin: SeqNum(0),
            rx_held: 0,
            rx_pending: 0,
            pend_head: NIL,
            pend_tail: NIL,
            ooo_head: NIL,
            ooo_bytes: 0,
            ooo_count: 0,
            rtx_kind: TimerKind::Rexmit,
            rtx: LazyTimer::default(),
            ack: LazyTimer::default(),
        }
    }

    /// A fresh connection in `state` with send sequence starting at `iss`.
    pub(crate) fn open(
        tuple: FourTuple,
        state: State,
        flags: u32,
        iss: SeqNum,
        cfg: &TcpConfig,
    ) -> Conn {
        let mut c = Conn::empty(tuple);
        c.state = state;
        c.flags = flags;
        c.iss = iss;
        c.snd_una = iss;
        c.snd_nxt = iss;
        c.snd_max = iss;
        c.recover = iss;
        c.rcv_wscale = cfg.window_scale.min(crate::wire::tcp::MAX_WINDOW_SCALE);
        c.rto_us = duration_us(cfg.rto_initial);
        c
    }

    /// The timer of `slot`.
    #[inline]
    pub(crate) fn timer_mut(&mut self, slot: TimerSlot) -> &mut LazyTimer {
        match slot {
            TimerSlot::Rtx => &mut self.rtx,
            TimerSlot::Ack => &mut self.ack,
        }
    }

    #[inline]
    pub(crate) fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    #[inline]
    pub(crate) fn set(&mut self, f: u32) {
        self.flags |= f;
    }

    #[inline]
    pub(crate) fn clear(&mut self, f: u32) {
        self.flags &= !f;
    }

    /// Whether events for this connection go to the application.
    #[inline]
    pub(crate) fn app_owned(&self) -> bool {
        self.has(flag::APP) && !self.has(flag::ORPHAN)
    }

    /// Sequence number after the last queued data byte.
    #[inline]
    pub(crate) fn data_end(&self) -> SeqNum {
        self.snd_una + self.tx_queued
    }

    /// Bytes sent and not acknowledged (RFC 5681 FlightSize).
    #[inline]
    pub(crate) fn flight_size(&self) -> u32 {
        self.snd_max.since(self.snd_una)
    }

    /// The RFC 6928 initial window (one MSS after a SYN retransmission).
    pub(crate) fn initial_window(&self) -> u32 {
        let mss = u32::from(self.snd_mss);
        if self.has(flag::SYN_REXMIT) {
            mss
        } else {
            (10 * mss).min((2 * mss).max(14_600))
        }
    }

    /// Takes an RTT measurement (RFC 6298 §2) of the segment timed since
    /// `rtt_start`, acknowledged at `now`.
    pub(crate) fn rtt_sample(&mut self, now: Instant, bounds: RtoBounds) {
        let rtt_ns = now.as_nanos().saturating_sub(self.rtt_start.as_nanos());
        let r = ((rtt_ns / 1_000).min(u64::from(u32::MAX)) as u32).max(1);
        if self.srtt_us == 0 {
            self.srtt_us = r;
            self.rttvar_us = r / 2;
        } else {
            let err = self.srtt_us.abs_diff(r);
            self.rttvar_us = ((3 * u64::from(self.rttvar_us) + u64::from(err)) / 4) as u32;
            self.srtt_us = ((7 * u64::from(self.srtt_us) + u64::from(r)) / 8) as u32;
        }
        let rto = u64::from(self.srtt_us) + (4 * u64::from(self.rttvar_us)).max(1);
        self.rto_us = (rto.min(u64::from(u32::MAX)) as u32).clamp(bounds.min_us, bounds.max_us);
    }

    /// Opens the congestion window for `acked` newly acknowledged bytes:
    /// slow start below `ssthresh`, else congestion avoidance (RFC 5681
    /// §3.1, equations 2 and 3).
    #[inline]
    pub(crate) fn grow_cwnd(&mut self, acked: u32) {
        let mss = u32::from(self.snd_mss);
        if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(acked.min(mss));
        } else {
            let inc = u64::from(mss) * u64::from(mss) / u64::from(self.cwnd.max(1));
            self.cwnd = self.cwnd.saturating_add((inc as u32).max(1));
        }
    }

    /// Doubles the RTO (RFC 6298 §5.5), up to `rto_max`.
    pub(crate) fn back_off(&mut self, bounds: RtoBounds) {
        self.rto_us = self.rto_us.saturating_mul(2).min(bounds.max_us);
    }

    /// At the end of the handshake: a SYN retransmission left the RTO
    /// backed off with no RTT sample (Karn's rule); data starts again from
    /// the initial RTO (RFC 6298 §5.7, with our `rto_initial` for its 3 s).
    pub(crate) fn handshake_done(&mut self, cfg: &TcpConfig) {
        self.retries = 0;
        if self.has(flag::SYN_REXMIT) && self.srtt_us == 0 {
            self.rto_us = duration_us(cfg.rto_initial);
        }
    }

    /// When a retransmission timer started at `now` expires.
    #[inline]
    pub(crate) fn rto_deadline(&self, now: Instant) -> Instant {
        Instant::from_nanos(
            now.as_nanos()
                .saturating_add(u64::from(self.rto_us) * 1_000),
        )
    }

    /// Receive buffer space from RCV.NXT on.
    pub(crate) fn rx_space(&self, cfg: &TcpConfig) -> u32 {
        cfg.recv_buffer
            .saturating_sub(self.rx_held)
            .saturating_sub(self.rx_pending)
    }

    /// Window still promised to the peer beyond RCV.NXT.
    pub(crate) fn rcv_wnd(&self) -> u32 {
        if self.rcv_adv > self.rcv_nxt {
            self.rcv_adv.since(self.rcv_nxt)
        } else {
            0
        }
    }

    /// Smallest window increase worth announcing (RFC 9293 §3.8.6.2.2).
    pub(crate) fn sws_threshold(cfg: &TcpConfig) -> u32 {
        (cfg.recv_buffer / 2).min(u32::from(cfg.mss))
    }

    /// The window field for an outgoing segment, moving `rcv_adv` to the
    /// right edge it announces. Receiver SWS avoidance: the right edge
    /// only moves when it can move by at least the threshold; it never
    /// moves left. SYN segments carry an unscaled window.
    pub(crate) fn advertise(&mut self, cfg: &TcpConfig, syn: bool) -> u16 {
        let space = self.rx_space(cfg);
        let promised = self.rcv_wnd();
        let wnd = if space >= promised + Self::sws_threshold(cfg) {
            space.max(promised)
        } else {
            promised
        };
        let shift = if syn { 0 } else { self.rcv_wscale };
        let field = (wnd >> shift).min(0xffff);
        let edge = self.rcv_nxt + (field << shift);
        if edge > self.rcv_adv {
            self.rcv_adv = edge;
        }
        field as u16
    }

    /// Whether releasing buffer space warrants an immediate window update:
    /// the window at least doubles and grows by the SWS threshold.
    pub(crate) fn window_update_due(&self, cfg: &TcpConfig) -> bool {
        let space = self.rx_space(cfg);
        let promised = self.rcv_wnd();
        space >= promised + Self::sws_threshold(cfg) && space >= 2 * promised
    }
}

/// [`TcpConfig::rto_min`] and [`TcpConfig::rto_max`] in microseconds,
/// converted once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtoBounds {
    pub min_us: u32,
    pub max_us: u32,
}

impl RtoBounds {
    pub(crate) fn new(cfg: &TcpConfig) -> RtoBounds {
        RtoBounds {
            min_us: duration_us(cfg.rto_min),
            max_us: duration_us(cfg.rto_max),
        }
    }
}

/// A duration in whole microseconds, saturating at `u32::MAX`.
pub(crate) fn duration_us(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}
