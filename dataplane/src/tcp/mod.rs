//! The per-core TCP engine: one [`TcpStack`] per elastic thread, single
//! threaded, every structure preallocated at [`TcpStack::new`].
//!
//! # What it implements
//!
//! - RFC 9293 (TCP): the connection state machine of §3.3.2 with all
//!   states, including simultaneous open and close (CLOSING), LAST-ACK and
//!   TIME-WAIT (2 MSL configurable, [`TcpConfig::time_wait`]); segment
//!   processing in the order of §3.10.7; the MSS option (§3.7.1; 536 when
//!   the peer sends none); receive-window flow control and receiver SWS
//!   avoidance (§3.8.6.2.2); sender SWS avoidance (§3.8.6.2.1);
//!   zero-window probing with the persist timer (§3.8.6.1, probes carry
//!   one byte of new data); RSTs for segments to closed ports
//!   (§3.10.7.1); delayed ACKs (§3.8.6.3: every second full-sized
//!   segment's worth of data is acknowledged at once, otherwise after
//!   [`TcpConfig::delayed_ack`]; out-of-order, duplicate and gap-filling
//!   segments are acknowledged at once).
//! - RFC 5961 §3–§5: an RST is honoured only when its sequence number is
//!   exactly RCV.NXT (an in-window one draws a challenge ACK), a SYN on a
//!   synchronized connection draws a challenge ACK, and an ACK older than
//!   SND.UNA − MAX.SND.WND is dropped.
//! - RFC 6298 (RTO): SRTT/RTTVAR, one timed segment per window, Karn's
//!   rule, exponential backoff capped at [`TcpConfig::rto_max`], and
//!   [`TcpConfig::max_retries`] before the connection is reported dead.
//! - RFC 5681 (slow start, congestion avoidance, fast retransmit on the
//!   third duplicate ACK) with RFC 6582 NewReno recovery (partial ACKs
//!   retransmit the next hole; `recover` guards against false fast
//!   retransmits) and RFC 3042 limited transmit. The initial window
//!   follows RFC 6928:
//!   `min(10·MSS, max(2·MSS, 14600))`, one MSS if the SYN was
//!   retransmitted.
//! - RFC 7323 window scaling only (no timestamps): scaling is used in both
//!   directions only if both SYNs carry the option.
//! - RFC 6528 initial sequence numbers: a 4 µs clock plus SipHash-2-4 of
//!   the 4-tuple under a secret key.
//!
//! # Where it deviates (on purpose)
//!
//! - No SACK, no timestamps (options are parsed and ignored), no urgent
//!   data (the URG flag and pointer are ignored), no ECN, no keepalive.
//! - Nagle's algorithm is off (as with `TCP_NODELAY`): IX applications
//!   batch their own sends.
//! - Data and FIN carried on a SYN are not accepted (not acknowledged, so
//!   the peer sends them again after the handshake).
//! - `rto_min` defaults to 200 ms (as in Linux) rather than RFC 6298's 1 s;
//!   after a SYN retransmission the RTO restarts at
//!   [`TcpConfig::rto_initial`] when the handshake completes, rather than
//!   at 3 s (RFC 6298 §5.7).
//! - A zero-length segment is acceptable from the RCV.NXT of our last
//!   ACK on, not only from RCV.NXT (as Linux does): a pure ACK overtaken
//!   by data is processed rather than answered with a duplicate ACK.
//! - Pure ACKs carry SND.MAX as sequence number (as BSD does), so that
//!   they stay acceptable to the peer after a timeout rewound SND.NXT.
//! - A FIN is sent even into a zero window (as BSD does); the receiver
//!   drops it and it is retransmitted.
//! - The persist timer probes for ever while the peer keeps answering
//!   (RFC 9293 MUST-37); without keepalive, a peer that vanishes while
//!   advertising a zero window is only noticed by the application. A
//!   connection the application has closed gives up (RST) after
//!   [`TcpConfig::max_retries`] probes, so a peer cannot pin it for ever.
//! - A window update is sent on [`TcpStack::recv_done`] only when the
//!   window at least doubles and grows by min(MSS, buffer/2); smaller
//!   openings ride on the next ACK.
//!
//! # Resource bounds (no allocation in steady state)
//!
//! Connections live in a slab of [`TcpConfig::max_conns`] entries found by
//! a keyed hash table sized at start-up. Queued send buffers and received
//! segments awaiting delivery are nodes of two shared fixed-size slabs
//! ([`TcpConfig::tx_queue_entries`], [`TcpConfig::rx_queue_entries`]).
//! SYN floods are bounded by [`TcpConfig::max_half_open`] (SYN-RECEIVED
//! connections) and the per-listener [`TcpConfig::backlog`] of established
//! connections not yet accepted; excess SYNs are dropped and counted. When
//! a slab is full the stack degrades: `send` accepts fewer bytes, an
//! out-of-order segment is dropped (the peer retransmits it).
//!
//! # Life of a connection, seen from the application
//!
//! Passive: [`TcpEvent::Knock`] when the handshake completes → the
//! application calls [`TcpStack::accept`] (giving its cookie; data and a
//! FIN that arrived in between are delivered then) or
//! [`TcpStack::reject`]. Active: [`TcpStack::connect`] →
//! [`TcpEvent::Connected`]. Then [`TcpEvent::Recv`] (zero-copy views of
//! the RX buffers, to be released with [`TcpStack::recv_done`]),
//! [`TcpEvent::Sent`] (bytes acknowledged; the stack drops its `TxBuf`
//! references), and [`TcpEvent::Dead`]. After `Dead { PeerClosed }` the
//! handle stays valid (for sending) until [`TcpStack::close`]; after
//! `Dead { Reset | TimedOut }`, a failed `Connected`, `close`, `abort` or
//! `reject` it is invalid and no further event names it. A connection that
//! dies after `Knock` but before `accept` is reported as `Dead` with
//! cookie 0.
//!
//! Header prediction (after Van Jacobson; RFC 9293 §3.10.7.4 allows any
//! implementation that behaves as the step-by-step processing): a segment on
//! an ESTABLISHED connection that carries only ACK (and PSH), starts at
//! RCV.NXT, fits the receive window, acknowledges new data or repeats
//! SND.UNA with data of its own, announces a non-zero window that the
//! SND.WL1/SND.WL2 rule lets update ours, and finds no recovery, persist
//! timer or out-of-order data in progress, is
//! handled by a straight-line path with the same effects
//! ([`TcpStats::segs_predicted`] counts them); everything else takes the
//! full path.
//!
//! Connections can move between the stacks of one process (flow-group
//! migration between elastic threads): [`TcpStack::export`] takes one out
//! as a [`MovedConn`], [`TcpStack::import`] puts it into another stack,
//! and [`TcpStack::input_steered`] hands back segments whose flow group
//! another core owns. See [`migrate`] for what travels and what
//! is dropped (out-of-order segments) or counted as released (delivered,
//! unreleased bytes).
//!
//! Output is batched: `input`, `send`, `recv_done` and `close` only mark a
//! connection; [`TcpStack::flush`], called once per loop turn, emits its
//! data, FIN and (coalesced) ACKs. Timers run in [`TcpStack::poll`], which
//! sends retransmissions at once.

mod conn;
mod isn;
mod list;
pub mod migrate;
mod stack;
mod table;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::net::SocketAddrV4;
use std::time::Duration;

use thiserror::Error;

use crate::buf::PktBuf;

pub use migrate::MovedConn;
pub use stack::TcpStack;

/// Configuration of a [`TcpStack`].
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Our MSS, announced in SYNs and the largest payload we send.
    pub mss: u16,
    /// Our window scale shift (RFC 7323), 0..=14.
    pub window_scale: u8,
    /// Receive buffer per connection: the bound on bytes delivered but not
    /// yet released with `recv_done`, plus bytes waiting for `accept`, plus
    /// out-of-order bytes held.
    pub recv_buffer: u32,
    /// Send buffer per connection: the bound on queued, unacknowledged
    /// bytes.
    pub send_buffer: u32,
    /// Maximum connections (all states, TIME-WAIT included).
    pub max_conns: usize,
    /// Maximum listening ports.
    pub max_listeners: usize,
    /// Per listener: established connections not yet accepted.
    pub backlog: usize,
    /// Per stack: connections in SYN-RECEIVED.
    pub max_half_open: usize,
    /// Per connection: out-of-order segments held.
    pub max_ooo_segments: u16,
    /// Total nodes for queued send buffers (all connections).
    pub tx_queue_entries: usize,
    /// Total nodes for received segments held for reordering or until
    /// `accept` (all connections).
    pub rx_queue_entries: usize,
    /// Delayed-ACK timeout.
    pub delayed_ack: Duration,
    /// Lower bound of the retransmission timeout.
    pub rto_min: Duration,
    /// RTO before the first RTT sample.
    pub rto_initial: Duration,
    /// Upper bound of the RTO (and of the persist interval).
    pub rto_max: Duration,
    /// TIME-WAIT duration (2 MSL).
    pub time_wait: Duration,
    /// How long a closed connection waits in FIN-WAIT-2 for the peer's FIN.
    pub fin_wait_2_timeout: Duration,
    /// Retransmissions of data or FIN before the connection is dead.
    pub max_retries: u8,
    /// Retransmissions of a SYN or SYN-ACK before giving up.
    pub max_syn_retries: u8,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            mss: 1460,
            window_scale: 7,
            recv_buffer: 256 * 1024,
            send_buffer: 64 * 1024,
            max_conns: 4096,
            max_listeners: 16,
            backlog: 128,
            max_half_open: 1024,
            max_ooo_segments: 256,
            tx_queue_entries: 4096 * 8,
            rx_queue_entries: 4096 * 16,
            delayed_ack: Duration::from_micros(500),
            rto_min: Duration::from_millis(200),
            rto_initial: Duration::from_secs(1),
            rto_max: Duration::from_secs(60),
            time_wait: Duration::from_secs(60),
            fin_wait_2_timeout: Duration::from_secs(60),
            max_retries: 8,
            max_syn_retries: 5,
        }
    }
}

/// A connection handle: an index into the stack's connection slab and a
/// generation, so a stale handle never reaches a reused slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    idx: u32,
    gen: u32,
}

impl ConnId {
    /// Index of the connection's slot (dense, below `max_conns`).
    pub fn idx(self) -> u32 {
        self.idx
    }
}

/// The addresses of a connection, from this stack's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    /// Our address and port.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
}

/// Why a connection ended (or half-ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The peer sent FIN: no more data will arrive; sending still works
    /// until [`TcpStack::close`].
    PeerClosed,
    /// The peer reset the connection.
    Reset,
    /// Retransmissions went unanswered.
    TimedOut,
}

/// Why an active open failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The peer answered with RST (nothing listening).
    #[error("connection refused by the peer")]
    Refused,
    /// The SYN went unanswered.
    #[error("connection attempt timed out")]
    TimedOut,
}

/// What the stack tells the application.
#[derive(Debug)]
pub enum TcpEvent {
    /// A handshake completed on a listening port: accept or reject.
    Knock {
        /// The new connection.
        conn: ConnId,
        /// Its addresses.
        tuple: FourTuple,
    },
    /// An active open finished; on error the handle is invalid.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The application's cookie given to `connect`.
        cookie: u64,
        /// Outcome.
        result: Result<(), ConnectError>,
    },
    /// In-order payload: a view of the received packet buffer (no copy).
    /// Release it with [`TcpStack::recv_done`] to reopen the window.
    Recv {
        /// The connection.
        conn: ConnId,
        /// The application's cookie.
        cookie: u64,
        /// The bytes.
        data: PktBuf,
    },
    /// The peer acknowledged `acked` more bytes: that much send-buffer
    /// space is free again.
    Sent {
        /// The connection.
        conn: ConnId,
        /// The application's cookie.
        cookie: u64,
        /// Bytes newly acknowledged.
        acked: u32,
    },
    /// The connection ended (or the peer closed its side).
    Dead {
        /// The connection.
        conn: ConnId,
        /// The application's cookie (0 if it was never accepted).
        cookie: u64,
        /// Why.
        reason: DeadReason,
    },
}

/// Errors of the application's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TcpError {
    /// The handle is stale (the connection ended or was closed).
    #[error("no such connection: the handle is stale (closed, reset or timed out)")]
    InvalidConn,
    /// The call does not fit the connection's state.
    #[error("connection is {state}: {call} is not allowed now")]
    InvalidState {
        /// The call.
        call: &'static str,
        /// The state's name.
        state: &'static str,
    },
    /// Port already listening.
    #[error("port {port} is already listening")]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// Too many listening ports.
    #[error("too many listening ports ({max}): raise max_listeners")]
    TooManyListeners {
        /// The limit.
        max: usize,
    },
    /// A connection with these addresses exists.
    #[error("a connection with these addresses exists: pick another local port")]
    TupleInUse,
    /// The connection table is full.
    #[error("connection table full ({max}): raise max_conns")]
    TableFull {
        /// The limit.
        max: usize,
    },
    /// A moved connection belongs to a listener this stack does not have.
    #[error("cannot import: no listener on port {port} here; listen on it before moving its connections")]
    NotListening {
        /// The local port.
        port: u16,
    },
    /// A moved half-open connection would exceed the half-open limit.
    #[error("cannot import: half-open limit ({max}) reached; raise max_half_open or retry after handshakes finish")]
    HalfOpenFull {
        /// The limit.
        max: usize,
    },
    /// A moved connection waiting for accept would exceed the backlog.
    #[error(
        "cannot import: backlog of port {port} full ({max}); accept connections or raise backlog"
    )]
    BacklogFull {
        /// The listener's port.
        port: u16,
        /// The limit.
        max: usize,
    },
    /// A moved connection's queued bytes need more queue nodes than are
    /// free.
    #[error("cannot import: {queue} queue needs {need} free nodes, {free} left; raise {queue}_queue_entries")]
    QueueFull {
        /// Which slab: "tx" or "rx".
        queue: &'static str,
        /// Nodes needed.
        need: usize,
        /// Nodes free.
        free: usize,
    },
    /// The packet-buffer pool ran out while copying a moved connection's
    /// received bytes.
    #[error("cannot import: packet pool exhausted ({need} buffers needed); retry when buffers are released")]
    PoolEmpty {
        /// Buffers needed.
        need: usize,
    },
    /// `recv_done` released more bytes than were delivered.
    #[error("recv_done of {len} bytes, but only {held} are delivered and unreleased")]
    ReleaseTooLarge {
        /// Bytes released.
        len: usize,
        /// Bytes held.
        held: u32,
    },
}

/// Counters of a stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments received (all, valid or not).
    pub segs_in: u64,
    /// Segments handled by header prediction (in-order, no surprises; see
    /// the module docs).
    pub segs_predicted: u64,
    /// Segments sent.
    pub segs_out: u64,
    /// Segments the IP layer could not send.
    pub segs_out_failed: u64,
    /// Payload bytes received in order.
    pub bytes_in: u64,
    /// Payload bytes sent (retransmissions included).
    pub bytes_out: u64,
    /// Segments retransmitted (RTO, fast retransmit, NewReno partial ACK).
    pub retransmits: u64,
    /// Fast retransmits (third duplicate ACK).
    pub fast_retransmits: u64,
    /// Retransmission timeouts.
    pub rto_timeouts: u64,
    /// Zero-window probes sent.
    pub window_probes: u64,
    /// Dropped: checksum mismatch.
    pub dropped_bad_checksum: u64,
    /// Dropped: malformed header or options.
    pub dropped_malformed: u64,
    /// Segments for no connection and no listener (answered by RST unless
    /// they were RSTs).
    pub dropped_no_listener: u64,
    /// Segments outside the receive window (answered by ACK).
    pub dropped_out_of_window: u64,
    /// Segments or parts of segments already received.
    pub duplicate_segments: u64,
    /// Out-of-order segments dropped (per-connection or stack-wide limit).
    pub ooo_dropped: u64,
    /// RSTs sent.
    pub rst_sent: u64,
    /// RSTs that ended a connection.
    pub rst_received: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// SYNs dropped: listener backlog full.
    pub syn_dropped_backlog: u64,
    /// SYNs dropped: half-open limit reached.
    pub syn_dropped_half_open: u64,
    /// SYNs dropped: connection table full.
    pub syn_dropped_table_full: u64,
    /// Handshake-completing ACKs dropped because the backlog was full.
    pub ack_dropped_backlog: u64,
    /// `send` calls cut short because the send-queue slab was full.
    pub tx_queue_full: u64,
    /// Timers that could not be scheduled (wheel full).
    pub timer_full: u64,
    /// RSTs from `abort`/`reject` not sent because their queue was full.
    pub rst_queue_full: u64,
    /// Connections opened (passive and active).
    pub conns_opened: u64,
    /// Connections freed.
    pub conns_closed: u64,
    /// Connections taken out by [`TcpStack::export`].
    pub conns_exported: u64,
    /// Connections put in by [`TcpStack::import`].
    pub conns_imported: u64,
    /// Out-of-order segments dropped when their connection was exported
    /// (never acknowledged: the peer retransmits them).
    pub migrate_ooo_dropped: u64,
    /// Segments for no connection of ours whose flow group another core
    /// owns, handed back by [`TcpStack::input_steered`].
    pub steered_away: u64,
    /// Connections in the table now (all states).
    pub conns_active: u64,
    /// Connections in SYN-RECEIVED now.
    pub half_open: u64,
    /// Send-queue slab nodes in use now.
    pub tx_queue_used: u64,
    /// Receive-queue slab nodes in use now (out of order or awaiting
    /// accept).
    pub rx_queue_used: u64,
}
