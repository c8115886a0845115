//! The elastic thread: one per core, owning one RX/TX queue pair, running
//! to completion. This file is the hot path; read it top to bottom.
//!
//! One turn of the loop, in IX's order:
//!
//! 1. read the clock once;
//! 2. apply what the application released since the last turn
//!    (`recv_done` of dropped receive buffers reopens TCP windows);
//! 3. timers: TCP (retransmission, delayed ACK, persist, TIME_WAIT), ARP,
//!    and the application's own;
//! 4. poll the RX queue for at most `batch` frames — take what is there,
//!    never wait for a batch to fill (adaptive batching);
//! 5. run each frame through Ethernet → ARP/IPv4 → ICMP | TCP, appending
//!    events to the core's event array;
//! 6. run the application's per-turn poll hook, then hand the event array
//!    to its handlers, whose calls act on this core's stack directly (same
//!    protection domain, no crossing);
//! 7. TCP output for every connection touched this turn, then one TX burst.
//!
//! Between steps 2 and 3 the thread reads its mailbox when it has mail
//! (one atomic check per turn): flow-group migration between the
//! dataplane's cores (see [`crate::migrate`]) and retirement. A segment
//! that matches none of the core's connections is checked against the
//! flow-group owners: a group moving here is held until the move settles,
//! another core's group is forwarded to it.
//!
//! No locks, no allocation and no system calls in steady state: buffers
//! come from the queue's pool, the event and TX arrays are reused, and the
//! thread counts in plain fields of its own. Every
//! [`stats::PUBLISH_INTERVAL`] of loop clock (10 ms, as IX) it publishes
//! its counters and moving averages (see [`crate::stats`]) to its
//! [`CoreCounters`] and, under a control plane, to its record of the
//! shared stats page: stores and fences, no locked read-modify-write.

use std::any::Any;
use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::buf::{PktBuf, Pool};
use crate::migrate::{
    Arrival, Attention, HandOver, Message, Owner, Shared, MAX_HELD, SETTLE_AFTER,
};
use crate::net::iface::{Delivered, IfaceConfig, Interface};
use crate::nic::QueuePair;
use crate::rss::RssConfig;
use crate::stats::{self, Averages, CoreStats, CoreWriter, Interval, LocalRecord};
use crate::tcp::{ConnId, FourTuple, TcpConfig, TcpError, TcpEvent, TcpStack};
use crate::time::Instant;
use crate::timer::TimerWheel;
use crate::txbuf::TxBuf;

/// Default bound on the RX batch (IX's B).
pub const DEFAULT_BATCH: usize = 64;

/// First local port of outgoing connections (as Linux's default range).
const EPHEMERAL_FIRST: u16 = 32768;

/// Configuration of one elastic thread.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Index of the queue pair (and of the core among the dataplane's).
    pub queue: u16,
    /// The port's RSS configuration at start: the key, and the flow groups'
    /// first owners (a standalone thread; threads of one dataplane share
    /// [`Shared`], see [`ElasticThread::with_shared`]).
    pub rss: RssConfig,
    /// The interface's addresses.
    pub iface: IfaceConfig,
    /// TCP parameters.
    pub tcp: TcpConfig,
    /// Upper bound of the adaptive RX batch.
    pub batch: usize,
    /// Capacity of the application timer wheel.
    pub app_timers: usize,
}

/// What one elastic thread published last, readable from other threads
/// while it runs: the same fields and seqlock as its record of the stats
/// page ([`crate::stats`]), in process memory. Standalone dataplanes (no
/// control plane, no page) have only this. Updated every
/// [`stats::PUBLISH_INTERVAL`] and when the loop ends.
#[derive(Debug, Default)]
pub struct CoreCounters {
    record: LocalRecord,
}

impl CoreCounters {
    /// The latest publication.
    pub fn snapshot(&self) -> CoreStats {
        self.record.read()
    }

    /// Mean RX batch size over the thread's life (at the last publication).
    pub fn mean_batch(&self) -> f64 {
        self.snapshot().mean_batch()
    }
}

/// Errors of calls an application makes on its core.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// TCP refused the call.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// No local port is free for an outgoing connection to this peer.
    #[error("no free local port for a connection to {0} that hashes to this core")]
    NoLocalPort(SocketAddrV4),
    /// The application timer wheel is full.
    #[error("too many application timers armed")]
    TimersFull,
}

/// Receive buffers the application has released, applied at the next turn.
///
/// Shared (single-threaded) between the core and every [`RxView`] it
/// handed out.
#[derive(Debug, Default)]
pub struct ReleaseQueue {
    pending: RefCell<Vec<(ConnId, u32)>>,
}

/// A received, in-order payload held by the application.
///
/// Dropping it tells TCP the bytes are consumed (`recv_done`): until then
/// they count against the receive window — flow control by ownership.
#[derive(Debug)]
pub struct RxView {
    data: PktBuf,
    conn: ConnId,
    released: Rc<ReleaseQueue>,
}

impl RxView {
    /// The payload bytes (a view into the RX packet buffer).
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.data.data()
    }

    /// The connection the payload arrived on.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// A transmit buffer over the same bytes (no copy): for echoing or
    /// forwarding received data. The packet buffer stays alive until the
    /// peer acknowledges it.
    #[inline]
    pub fn to_tx(&self) -> TxBuf {
        TxBuf::from_packet(self.data.clone())
    }
}

impl Drop for RxView {
    #[inline]
    fn drop(&mut self) {
        self.released
            .pending
            .borrow_mut()
            .push((self.conn, self.data.len() as u32));
    }
}

/// An event for the application, produced by one loop turn.
#[derive(Debug)]
pub enum AppEvent {
    /// A connection completed its handshake on a listening port.
    Knock {
        /// The new connection.
        conn: ConnId,
        /// Its addresses.
        tuple: FourTuple,
    },
    /// An outgoing connection is established, or failed.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Whether it succeeded.
        result: Result<(), crate::tcp::ConnectError>,
    },
    /// In-order data arrived.
    Recv {
        /// The payload.
        data: RxView,
    },
    /// The peer acknowledged bytes.
    Sent {
        /// The connection.
        conn: ConnId,
        /// Bytes newly acknowledged.
        acked: u32,
    },
    /// The peer closed its side, or the connection died.
    Dead {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: crate::tcp::DeadReason,
    },
    /// An application timer fired.
    Timer {
        /// The token given when it was armed.
        token: u64,
    },
}

/// What the application sees of its core: the calls it can make.
pub struct Core {
    cfg: CoreConfig,
    now: Instant,
    pool: Pool,
    iface: Interface,
    tcp: TcpStack,
    app_timers: TimerWheel<u64>,
    released: Rc<ReleaseQueue>,
    late_events: Vec<TcpEvent>,
    tx: Vec<PktBuf>,
    next_port: u16,
    stop: bool,
    shared: Arc<Shared>,
}

impl Core {
    /// The current time (read once per turn).
    #[inline]
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This core's queue index.
    pub fn queue(&self) -> u16 {
        self.cfg.queue
    }

    /// The interface address.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.cfg.iface.ip
    }

    /// Starts accepting connections on `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), CallError> {
        Ok(self.tcp.listen(port)?)
    }

    /// Accepts a knocking connection.
    pub fn accept(&mut self, conn: ConnId) -> Result<(), CallError> {
        Ok(self.tcp.accept(conn, 0, &mut self.late_events)?)
    }

    /// Rejects a knocking connection (the peer sees a reset).
    pub fn reject(&mut self, conn: ConnId) -> Result<(), CallError> {
        Ok(self.tcp.reject(conn)?)
    }

    /// Opens a connection to `remote`, choosing a local port whose flow
    /// hashes back to a flow group this core owns. Ports are tried in
    /// order from a random start (RFC 6056, algorithm 1's effect): a
    /// restarted program does not reuse the 4-tuples of connections its
    /// peer may still hold.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, CallError> {
        let local_ip = self.cfg.iface.ip;
        for _ in 0..(u16::MAX - EPHEMERAL_FIRST) {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            let tuple = FourTuple {
                local: SocketAddrV4::new(local_ip, port),
                remote,
            };
            if !self.shared.owners.is_owned_by(&tuple, self.cfg.queue) {
                continue;
            }
            match self.tcp.connect(self.now, tuple, 0) {
                Ok(conn) => return Ok(conn),
                Err(TcpError::TupleInUse) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CallError::NoLocalPort(remote))
    }

    /// Queues `bufs` for sending, without copying them. Returns how many
    /// bytes the send buffer took (from the front); send the rest after a
    /// `Sent` event.
    #[inline]
    pub fn sendv(&mut self, conn: ConnId, bufs: &[TxBuf]) -> Result<usize, CallError> {
        Ok(self.tcp.send(conn, bufs)?)
    }

    /// Closes the connection in order: queued data, then FIN. The handle is
    /// invalid afterwards.
    pub fn close(&mut self, conn: ConnId) -> Result<(), CallError> {
        Ok(self.tcp.close(conn)?)
    }

    /// Resets the connection now.
    pub fn abort(&mut self, conn: ConnId) -> Result<(), CallError> {
        Ok(self.tcp.abort(conn)?)
    }

    /// Arms a one-shot application timer that fires `after` from now with
    /// `token`.
    pub fn arm_timer(&mut self, after: Duration, token: u64) -> Result<(), CallError> {
        self.app_timers
            .schedule(self.now + after, token)
            .map(|_| ())
            .map_err(|_| CallError::TimersFull)
    }

    /// Asks the loop to end after this turn.
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// TCP counters.
    pub fn tcp_stats(&self) -> crate::tcp::TcpStats {
        self.tcp.stats()
    }

    /// Network-layer counters.
    pub fn net_stats(&self) -> crate::net::iface::NetStats {
        self.iface.stats()
    }

    /// Adds a neighbour whose MAC is known in advance.
    pub fn add_static_arp(&mut self, ip: Ipv4Addr, mac: crate::wire::ethernet::EthernetAddress) {
        self.iface.add_static_arp(ip, mac);
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.tcp.conn_count()
    }

    /// Connections not yet fully closed (all but TIME-WAIT). Scans the
    /// connection table: for shutdown, not for every event.
    pub fn unfinished_connections(&self) -> usize {
        self.tcp.unfinished_count()
    }

    fn apply_releases(&mut self) {
        let mut pending = self.released.pending.borrow_mut();
        for (conn, len) in pending.drain(..) {
            // A connection closed since the data was delivered no longer
            // has a window to reopen; nothing to do.
            let _ = self.tcp.recv_done(conn, len as usize);
        }
    }
}

/// The application side of the loop: receives each turn's events.
pub trait Handler {
    /// Called once before the first turn (listen, connect, arm timers).
    fn start(&mut self, core: &mut Core);
    /// Called with the events of one turn, in order. The vector is drained
    /// by the callee or cleared after the call.
    fn handle(&mut self, core: &mut Core, events: &mut Vec<AppEvent>);
    /// Called once on every turn of the loop, idle turns included, before
    /// the turn's events: for work due at a time finer than the timer
    /// wheel's 16 µs tick (a load generator's scheduled sends). What it
    /// queues leaves in the same turn's TX burst. Runs in the hot loop, so
    /// it must be cheap when it has nothing to do. The default does nothing.
    #[inline]
    fn poll(&mut self, core: &mut Core) {
        let _ = core;
    }
    /// Called when `conn` is about to move to another core (its flow group
    /// migrates): return the connection's application state, to be given
    /// to [`Handler::migrate_in`] there. Receive buffers still held for it
    /// count as consumed afterwards: keep copies of what is needed. The
    /// default keeps nothing.
    fn migrate_out(&mut self, core: &mut Core, conn: ConnId) -> Option<Box<dyn Any + Send>> {
        let _ = (core, conn);
        None
    }
    /// Called when a connection arrived from another core, under its new
    /// handle, with what [`Handler::migrate_out`] returned there.
    fn migrate_in(&mut self, core: &mut Core, conn: ConnId, state: Option<Box<dyn Any + Send>>) {
        let _ = (core, conn, state);
    }
}

/// Turns TCP's events into the application's, wrapping received data in
/// views that release their bytes when dropped.
#[inline]
fn convert_events(tcp: &mut Vec<TcpEvent>, app: &mut Vec<AppEvent>, released: &Rc<ReleaseQueue>) {
    // One capacity check for the whole batch (the drain's length is exact).
    app.extend(tcp.drain(..).map(|ev| match ev {
        TcpEvent::Knock { conn, tuple } => AppEvent::Knock { conn, tuple },
        TcpEvent::Connected { conn, result, .. } => AppEvent::Connected { conn, result },
        TcpEvent::Recv { conn, data, .. } => AppEvent::Recv {
            data: RxView {
                data,
                conn,
                released: released.clone(),
            },
        },
        TcpEvent::Sent { conn, acked, .. } => AppEvent::Sent { conn, acked },
        TcpEvent::Dead { conn, reason, .. } => AppEvent::Dead { conn, reason },
    }));
}

/// The thread's own counts, in plain fields (only it writes them).
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    rx_packets: u64,
    tx_packets: u64,
    batches: u64,
    turns: u64,
    idle_turns: u64,
    full_polls: u64,
    events: u64,
}

/// Where the current publication interval began, and when it ends.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Instant,
    at: Totals,
}

impl Window {
    fn starting(start: Instant, at: Totals) -> Window {
        Window {
            start,
            end: start + stats::PUBLISH_INTERVAL,
            at,
        }
    }
}

/// Flow-group migration counters of one core (see [`crate::migrate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// Connections handed to other cores.
    pub exported: u64,
    /// Connections taken over from other cores.
    pub imported: u64,
    /// Connections that could not be imported (table or pool full): lost,
    /// logged; the peer's next segment draws a reset.
    pub import_failed: u64,
    /// Segments forwarded to the core owning their flow group.
    pub forwarded: u64,
    /// Forwarded segments received from other cores.
    pub forwards_received: u64,
    /// Segments held for a group moving here, and replayed.
    pub held: u64,
    /// Segments dropped because the hold queue was full, or a forwarded
    /// one found the pool empty (TCP retransmits them).
    pub held_dropped: u64,
}

/// Groups this core handed over and is still forwarding for.
struct Outgoing {
    groups: Vec<u16>,
    to: u16,
    settle_at: Instant,
    drained: bool,
    report: HandOver,
    done: std::sync::mpsc::Sender<HandOver>,
}

/// A segment held for a flow group moving to this core.
struct Held {
    group: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    segment: PktBuf,
}

/// The connection a TCP segment (header first) from `src` to `dst`
/// belongs to, from our side.
fn segment_tuple(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> Option<FourTuple> {
    let (sp, dp) = (segment.get(0..2)?, segment.get(2..4)?);
    Some(FourTuple {
        local: SocketAddrV4::new(dst, u16::from_be_bytes([dp[0], dp[1]])),
        remote: SocketAddrV4::new(src, u16::from_be_bytes([sp[0], sp[1]])),
    })
}

/// Keeps a segment of a group moving to this core until the move settles
/// (dropped and counted beyond [`MAX_HELD`]).
fn hold(
    held: &mut Vec<Held>,
    stats: &mut MigrationStats,
    group: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    segment: PktBuf,
) {
    if held.len() < MAX_HELD {
        stats.held += 1;
        held.push(Held {
            group: group as u16,
            src,
            dst,
            segment,
        });
    } else {
        stats.held_dropped += 1;
    }
}

/// Holds `segment` if its flow group is moving to `core`; gives it back
/// otherwise.
fn hold_if_moving_here(
    core: &Core,
    held: &mut Vec<Held>,
    stats: &mut MigrationStats,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    segment: PktBuf,
) -> Option<PktBuf> {
    let Some(tuple) = segment_tuple(src, dst, segment.data()) else {
        return Some(segment);
    };
    let group = core.shared.owners.group_of(&tuple);
    if core.shared.owners.owner(group) == (Owner::Moving { to: core.cfg.queue }) {
        hold(held, stats, group, src, dst, segment);
        None
    } else {
        Some(segment)
    }
}

/// A segment that matched no connection of `core` and whose flow group is
/// not the core's: held when the group is moving here, forwarded to the
/// group's core otherwise.
fn steer_away(
    core: &mut Core,
    held: &mut Vec<Held>,
    stats: &mut MigrationStats,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    segment: PktBuf,
) {
    let me = core.cfg.queue;
    let Some(tuple) = segment_tuple(src, dst, segment.data()) else {
        return;
    };
    let d = segment.data();
    let group = core.shared.owners.group_of(&tuple);
    match core.shared.owners.owner(group) {
        Owner::Moving { to } if to == me => hold(held, stats, group, src, dst, segment),
        owner => {
            stats.forwarded += 1;
            core.shared.post(
                owner.core(),
                Message::Forward {
                    src,
                    dst,
                    segment: d.to_vec(),
                },
            );
        }
    }
}

/// One elastic thread's state: the [`Core`] plus the loop's scratch arrays.
pub struct ElasticThread<Q: QueuePair> {
    queue: Q,
    core: Core,
    rx: Vec<PktBuf>,
    tcp_events: Vec<TcpEvent>,
    events: Vec<AppEvent>,
    totals: Totals,
    window: Window,
    averages: Averages,
    publishes: u64,
    counters: Arc<CoreCounters>,
    page: Option<CoreWriter>,
    outgoing: Vec<Outgoing>,
    held: Vec<Held>,
    migration: MigrationStats,
    /// The mailbox signal as of the last time the mailbox was read.
    seen: Attention,
}

impl<Q: QueuePair> ElasticThread<Q> {
    /// Builds the thread's state around an opened queue pair, as the only
    /// core of its dataplane (flow-group owners from `cfg.rss`).
    pub fn new(cfg: CoreConfig, queue: Q, counters: Arc<CoreCounters>) -> Self {
        let shared = Shared::new(&cfg.rss, cfg.queue + 1, true);
        Self::with_shared(cfg, queue, counters, shared)
    }

    /// Builds the thread's state around an opened queue pair, as core
    /// `cfg.queue` of a dataplane whose cores share `shared`.
    pub fn with_shared(
        cfg: CoreConfig,
        queue: Q,
        counters: Arc<CoreCounters>,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        let pool = queue.pool().clone();
        let batch = cfg.batch.max(1);
        let max_conns = cfg.tcp.max_conns;
        let core = Core {
            iface: Interface::new(cfg.iface, now),
            tcp: TcpStack::new(cfg.tcp.clone(), now, rand::random()),
            app_timers: TimerWheel::new(now, cfg.app_timers),
            released: Rc::new(ReleaseQueue {
                pending: RefCell::new(Vec::with_capacity(4 * batch + max_conns)),
            }),
            late_events: Vec::with_capacity(4 * batch),
            tx: Vec::with_capacity(4 * batch + 64),
            next_port: EPHEMERAL_FIRST + rand::random::<u16>() % (u16::MAX - EPHEMERAL_FIRST),
            stop: false,
            shared,
            now,
            pool,
            cfg,
        };
        ElasticThread {
            queue,
            rx: Vec::with_capacity(batch),
            tcp_events: Vec::with_capacity(4 * batch),
            events: Vec::with_capacity(4 * batch),
            totals: Totals::default(),
            window: Window::starting(now, Totals::default()),
            averages: Averages::default(),
            publishes: 0,
            counters,
            page: None,
            outgoing: Vec::new(),
            held: Vec::new(),
            migration: MigrationStats::default(),
            seen: Attention::default(),
            core,
        }
    }

    /// Flow-group migration counters.
    pub fn migration_stats(&self) -> MigrationStats {
        self.migration
    }

    /// Publishes to `writer` too: this core's record of the stats page the
    /// control plane gave the dataplane.
    pub fn attach_stats(&mut self, writer: CoreWriter) {
        self.page = Some(writer);
    }

    /// The core, for set-up before the loop starts.
    pub fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Before the loop starts: waits until `link_up` says the port's link
    /// is up (so the application's first packets are not lost), `stop` is
    /// set, or `timeout` passes — serving the mailbox meanwhile, so flow
    /// groups can move while there is no peer yet.
    pub fn wait_for_link<H: Handler>(
        &mut self,
        handler: &mut H,
        stop: &AtomicBool,
        timeout: Duration,
        mut link_up: impl FnMut(&mut Q) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !self.core.stop && !stop.load(Ordering::Relaxed) && !link_up(&mut self.queue) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.core.now = now;
            let attention = self.core.shared.attention(self.core.cfg.queue);
            if !self.outgoing.is_empty() || attention.has_mail_since(self.seen) {
                self.seen = attention;
                self.serve_mail(handler, now);
            }
            // No traffic without a link: the next hand-over may settle.
            for o in &mut self.outgoing {
                o.drained = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs the loop until the handler calls [`Core::stop`] or `stop` is
    /// set by another thread.
    pub fn run<H: Handler>(&mut self, handler: &mut H, stop: &AtomicBool) {
        self.core.now = Instant::now();
        handler.start(&mut self.core);
        self.flush_tx();
        while !self.core.stop && !stop.load(Ordering::Relaxed) {
            self.turn(handler);
        }
        self.publish();
        self.core.apply_releases();
    }

    /// One turn of the loop. Returns whether anything happened.
    pub fn turn<H: Handler>(&mut self, handler: &mut H) -> bool {
        let core = &mut self.core;
        // 1. clock
        core.now = Instant::now();
        let now = core.now;

        // 2. buffers the application released since the last turn
        core.apply_releases();

        // mail from the controller and the other cores: flow-group moves
        let attention = core.shared.attention(core.cfg.queue);
        if !self.outgoing.is_empty() || attention.has_mail_since(self.seen) {
            self.seen = attention;
            self.serve_mail(handler, now);
        }
        let core = &mut self.core;

        // 3. timers
        core.tcp.poll(
            now,
            &mut core.iface.sender(now, &core.pool, &mut core.tx),
            &mut self.tcp_events,
        );
        core.iface.poll(now, &core.pool, &mut core.tx);
        let events = &mut self.events;
        core.app_timers
            .advance(now, |token| events.push(AppEvent::Timer { token }));

        // 4. RX, adaptive batch
        let n = self.queue.rx_burst(&mut self.rx, core.cfg.batch);

        // 5. protocol processing (while flow groups move here, their
        // segments wait until the move settles: older ones may still come
        // through the source)
        let me = core.cfg.queue;
        let holding = attention.has_incoming();
        for frame in self.rx.drain(..) {
            if let Some(Delivered::Tcp { src, dst, segment }) =
                core.iface.receive(now, frame, &core.pool, &mut core.tx)
            {
                let segment = if holding {
                    match hold_if_moving_here(
                        core,
                        &mut self.held,
                        &mut self.migration,
                        src,
                        dst,
                        segment,
                    ) {
                        Some(segment) => segment,
                        None => continue,
                    }
                } else {
                    segment
                };
                let owners = &core.shared.owners;
                let away = core.tcp.input_steered(
                    now,
                    src,
                    dst,
                    segment,
                    &mut core.iface.sender(now, &core.pool, &mut core.tx),
                    &mut self.tcp_events,
                    |t: &FourTuple| owners.is_owned_by(t, me),
                );
                if let Some(segment) = away {
                    steer_away(core, &mut self.held, &mut self.migration, src, dst, segment);
                }
            }
        }
        if n < core.cfg.batch {
            for o in &mut self.outgoing {
                o.drained = true;
            }
        }
        convert_events(&mut self.tcp_events, &mut self.events, &core.released);

        // 6. the application: its per-turn poll, then its events; accepting
        // a connection can deliver data that arrived before the accept,
        // which is handed over in the same turn
        handler.poll(core);
        if !core.late_events.is_empty() {
            convert_events(&mut core.late_events, &mut self.events, &core.released);
        }
        let had_events = !self.events.is_empty();
        while !self.events.is_empty() {
            self.totals.events += self.events.len() as u64;
            handler.handle(core, &mut self.events);
            self.events.clear();
            convert_events(&mut core.late_events, &mut self.events, &core.released);
        }

        // 7. TCP output and TX
        core.apply_releases();
        core.tcp
            .flush(now, &mut core.iface.sender(now, &core.pool, &mut core.tx));
        let sent = self.flush_tx();

        let t = &mut self.totals;
        t.turns += 1;
        if n > 0 {
            t.batches += 1;
            t.rx_packets += n as u64;
            if n >= self.core.cfg.batch {
                t.full_polls += 1;
            }
        }
        let busy = n > 0 || had_events || sent > 0;
        if !busy {
            t.idle_turns += 1;
            std::hint::spin_loop();
        }
        if now >= self.window.end {
            self.publish_at(now);
        }
        busy
    }

    /// Reads the mailbox (see [`crate::migrate`]), then settles the
    /// hand-overs that are due.
    fn serve_mail<H: Handler>(&mut self, handler: &mut H, now: Instant) {
        let me = self.core.cfg.queue;
        while let Some(msg) = self.core.shared.take_mail(me) {
            match msg {
                Message::MigrateOut { groups, to, done } => {
                    self.hand_over(handler, now, groups, to, done);
                }
                Message::Arrive { from, conns } => self.take_over(handler, now, from, conns),
                Message::Forward { src, dst, segment } => {
                    self.run_forwarded(now, src, dst, &segment);
                }
                Message::Settled { groups } => self.settle(now, &groups),
                Message::Retire => self.core.stop = true,
            }
        }
        let mut i = 0;
        while i < self.outgoing.len() {
            let o = &self.outgoing[i];
            if o.drained && now >= o.settle_at {
                let o = self.outgoing.swap_remove(i);
                self.core
                    .shared
                    .post(o.to, Message::Settled { groups: o.groups });
                // The controller may have stopped waiting; nothing to do.
                let _ = o.done.send(o.report);
            } else {
                i += 1;
            }
        }
    }

    /// Exports every connection of `groups` (with the application's state
    /// for it) to core `to`.
    fn hand_over<H: Handler>(
        &mut self,
        handler: &mut H,
        now: Instant,
        groups: Vec<u16>,
        to: u16,
        done: std::sync::mpsc::Sender<HandOver>,
    ) {
        let core = &mut self.core;
        let me = core.cfg.queue;
        let mut moving = vec![false; core.shared.owners.groups()];
        for &g in &groups {
            if let Some(m) = moving.get_mut(usize::from(g)) {
                *m = true;
            }
        }
        let mut list = Vec::new();
        core.tcp.connections(&mut list);
        list.retain(|(_, t)| moving[core.shared.owners.group_of(t)]);
        let states: Vec<_> = list
            .iter()
            .map(|&(conn, _)| handler.migrate_out(core, conn))
            .collect();
        // What the application let go of in `migrate_out` is consumed.
        core.apply_releases();
        let mut conns = Vec::with_capacity(list.len());
        for ((conn, tuple), app) in list.into_iter().zip(states) {
            match core.tcp.export(now, conn) {
                Ok(moved) => conns.push(Arrival { conn: moved, app }),
                Err(e) => log::warn!("core {me}: cannot hand {tuple:?} over to core {to}: {e}"),
            }
        }
        self.migration.exported += conns.len() as u64;
        let report = HandOver {
            from: me,
            to,
            groups: groups.len(),
            conns: conns.len(),
        };
        core.shared.post(to, Message::Arrive { from: me, conns });
        self.outgoing.push(Outgoing {
            groups,
            to,
            settle_at: now + SETTLE_AFTER,
            drained: false,
            report,
            done,
        });
    }

    /// Imports connections handed over by core `from`.
    fn take_over<H: Handler>(
        &mut self,
        handler: &mut H,
        now: Instant,
        from: u16,
        conns: Vec<Arrival>,
    ) {
        let me = self.core.cfg.queue;
        for Arrival { conn, app } in conns {
            match self.core.tcp.import(now, conn, &self.core.pool) {
                Ok(id) => {
                    self.migration.imported += 1;
                    handler.migrate_in(&mut self.core, id, app);
                }
                Err((e, conn)) => {
                    self.migration.import_failed += 1;
                    log::error!(
                        "core {me}: connection {:?} from core {from} lost: {e}",
                        conn.tuple()
                    );
                }
            }
        }
    }

    /// Runs a segment another core forwarded (a group moving here counts
    /// as this core's: the segment is older than any held one).
    fn run_forwarded(&mut self, now: Instant, src: Ipv4Addr, dst: Ipv4Addr, bytes: &[u8]) {
        self.migration.forwards_received += 1;
        let core = &mut self.core;
        let Some(mut segment) = core.pool.alloc() else {
            self.migration.held_dropped += 1;
            return;
        };
        if bytes.len() > segment.tailroom() {
            self.migration.held_dropped += 1;
            return;
        }
        segment.extend_from_slice(bytes);
        let me = core.cfg.queue;
        let owners = &core.shared.owners;
        let away = core.tcp.input_steered(
            now,
            src,
            dst,
            segment,
            &mut core.iface.sender(now, &core.pool, &mut core.tx),
            &mut self.tcp_events,
            |t: &FourTuple| owners.owner(owners.group_of(t)).core() == me,
        );
        if let Some(segment) = away {
            steer_away(core, &mut self.held, &mut self.migration, src, dst, segment);
        }
    }

    /// Takes `groups` over for good and replays what was held for them.
    fn settle(&mut self, now: Instant, groups: &[u16]) {
        let core = &mut self.core;
        let me = core.cfg.queue;
        core.shared.settle(groups, me);
        let held = std::mem::take(&mut self.held);
        for h in held {
            if !groups.contains(&h.group) {
                self.held.push(h);
                continue;
            }
            let owners = &core.shared.owners;
            let away = core.tcp.input_steered(
                now,
                h.src,
                h.dst,
                h.segment,
                &mut core.iface.sender(now, &core.pool, &mut core.tx),
                &mut self.tcp_events,
                |t: &FourTuple| owners.is_owned_by(t, me),
            );
            if let Some(segment) = away {
                steer_away(
                    core,
                    &mut self.held,
                    &mut self.migration,
                    h.src,
                    h.dst,
                    segment,
                );
            }
        }
    }

    fn flush_tx(&mut self) -> usize {
        let mut sent = 0;
        if !self.core.tx.is_empty() {
            sent = self.queue.tx_burst(&mut self.core.tx);
            self.totals.tx_packets += sent as u64;
        }
        sent
    }

    /// The queue pair's counters.
    pub fn queue_stats(&self) -> crate::nic::QueueStats {
        self.queue.stats()
    }

    /// Publishes now, ending the current interval early (the loop calls
    /// it when it stops, so the last counts are not lost).
    pub fn publish(&mut self) {
        self.publish_at(Instant::now());
    }

    /// Folds the interval that ends at `now` into the averages and
    /// publishes everything: stores only, no allocation, no system call.
    fn publish_at(&mut self, now: Instant) {
        let (t, at) = (self.totals, self.window.at);
        self.averages.fold(&Interval {
            elapsed_ns: now.saturating_since(self.window.start).as_nanos() as u64,
            turns: t.turns - at.turns,
            rx_packets: t.rx_packets - at.rx_packets,
            batches: t.batches - at.batches,
            idle_turns: t.idle_turns - at.idle_turns,
            full_polls: t.full_polls - at.full_polls,
        });
        self.window = Window::starting(now, t);
        self.publishes += 1;
        let q = self.queue.stats();
        let a = &self.averages;
        let snapshot = CoreStats {
            heartbeat_ns: now.as_nanos(),
            publishes: self.publishes,
            rx_packets: t.rx_packets,
            tx_packets: t.tx_packets,
            drops: q.rx_dropped + q.tx_dropped + self.core.iface.stats().dropped_total(),
            connections: self.core.tcp.conn_count() as u64,
            batches: t.batches,
            turns: t.turns,
            idle_turns: t.idle_turns,
            full_polls: t.full_polls,
            events: t.events,
            batch_bound: self.core.cfg.batch as u64,
            avg_batch_milli: a.batch_milli,
            avg_queue_milli: a.queue_milli,
            avg_idle_ppm: a.idle_ppm,
            avg_full_ppm: a.full_ppm,
            avg_loop_ns: a.loop_ns,
        };
        self.counters.record.publish(&snapshot);
        if let Some(page) = &self.page {
            page.publish(&snapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::Pool;
    use crate::nic::pipe::{self, PipeQueue};
    use crate::wire::ethernet::EthernetAddress;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

    fn core_cfg(ip: Ipv4Addr, last: u8) -> CoreConfig {
        CoreConfig {
            queue: 0,
            rss: RssConfig::round_robin(1, 16),
            iface: IfaceConfig {
                mac: EthernetAddress([2, 0, 0, 0, 0, last]),
                ip,
                prefix_len: 24,
                gateway: None,
                mtu: 1500,
            },
            tcp: TcpConfig::default(),
            batch: DEFAULT_BATCH,
            app_timers: 64,
        }
    }

    fn threads() -> (ElasticThread<PipeQueue>, ElasticThread<PipeQueue>) {
        let (a, b) = pipe::pair(
            Pool::new(1, 4096, false).unwrap(),
            Pool::new(2, 4096, false).unwrap(),
            1024,
        );
        (
            ElasticThread::new(core_cfg(SERVER, 1), a, Arc::default()),
            ElasticThread::new(core_cfg(CLIENT, 2), b, Arc::default()),
        )
    }

    /// Echoes everything, keeping what the send window did not take.
    #[derive(Default)]
    struct Echo {
        backlog: Vec<(ConnId, TxBuf)>,
        peer_closed: usize,
    }

    impl Handler for Echo {
        fn start(&mut self, core: &mut Core) {
            core.listen(7).unwrap();
        }
        fn handle(&mut self, core: &mut Core, events: &mut Vec<AppEvent>) {
            for ev in events.drain(..) {
                match ev {
                    AppEvent::Knock { conn, .. } => core.accept(conn).unwrap(),
                    AppEvent::Recv { data } => self.backlog.push((data.conn(), data.to_tx())),
                    AppEvent::Dead { conn, reason } => {
                        assert_eq!(reason, crate::tcp::DeadReason::PeerClosed);
                        self.peer_closed += 1;
                        core.close(conn).unwrap();
                    }
                    AppEvent::Sent { .. } | AppEvent::Connected { .. } | AppEvent::Timer { .. } => {
                    }
                }
            }
            let mut rest = Vec::new();
            for (conn, mut buf) in self.backlog.drain(..) {
                let n = core.sendv(conn, std::slice::from_ref(&buf)).unwrap();
                if n < buf.len() {
                    buf.advance(n);
                    rest.push((conn, buf));
                }
            }
            self.backlog = rest;
        }
    }

    /// Sends `total` bytes of a pattern on one connection, verifies the
    /// echo, then closes.
    struct Sender {
        total: usize,
        sent: usize,
        received: Vec<u8>,
        conn: Option<ConnId>,
        connected: bool,
        closed: bool,
    }

    fn byte(i: usize) -> u8 {
        (i * 31 + i / 253) as u8
    }

    impl Handler for Sender {
        fn start(&mut self, core: &mut Core) {
            self.conn = Some(core.connect(SocketAddrV4::new(SERVER, 7)).unwrap());
        }
        fn handle(&mut self, core: &mut Core, events: &mut Vec<AppEvent>) {
            for ev in events.drain(..) {
                match ev {
                    AppEvent::Connected { result, .. } => {
                        result.unwrap();
                        self.connected = true;
                    }
                    AppEvent::Recv { data } => self.received.extend_from_slice(data.data()),
                    AppEvent::Dead { conn, reason } => {
                        assert_eq!(reason, crate::tcp::DeadReason::PeerClosed);
                        assert!(self.closed, "server closed first on {conn:?}");
                    }
                    _ => {}
                }
            }
            let conn = self.conn.unwrap();
            if self.connected && self.sent < self.total {
                let n = (self.total - self.sent).min(4000);
                let chunk: Vec<u8> = (self.sent..self.sent + n).map(byte).collect();
                self.sent += core.sendv(conn, &[TxBuf::from_vec(chunk)]).unwrap();
            }
            if self.received.len() == self.total && !self.closed {
                core.close(conn).unwrap();
                self.closed = true;
            }
        }
    }

    /// Counts its polls and the events it was handed.
    #[derive(Default)]
    struct Poller {
        polls: u64,
        events: u64,
    }

    impl Handler for Poller {
        fn start(&mut self, _core: &mut Core) {}
        fn handle(&mut self, _core: &mut Core, events: &mut Vec<AppEvent>) {
            self.events += events.len() as u64;
        }
        fn poll(&mut self, _core: &mut Core) {
            self.polls += 1;
        }
    }

    #[test]
    fn poll_hook_runs_once_per_turn_while_idle() {
        let (mut idle, _peer) = threads();
        let mut poller = Poller::default();
        for _ in 0..1_000 {
            assert!(!idle.turn(&mut poller), "a turn without traffic is idle");
        }
        assert_eq!((poller.polls, poller.events), (1_000, 0));
    }

    #[test]
    fn echo_over_a_pipe_delivers_every_byte_and_closes_in_order() {
        let (mut server, mut client) = threads();
        let mut echo = Echo::default();
        let mut sender = Sender {
            total: 300_000,
            sent: 0,
            received: Vec::new(),
            conn: None,
            connected: false,
            closed: false,
        };
        echo.start(server.core());
        sender.start(client.core());
        for _ in 0..200_000 {
            server.turn(&mut echo);
            client.turn(&mut sender);
            if sender.closed && echo.peer_closed == 1 && server.core().connections() == 0 {
                break;
            }
        }
        assert_eq!(sender.received.len(), sender.total);
        assert!(sender
            .received
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte(i)));
        assert!(sender.closed);
        assert_eq!(echo.peer_closed, 1);
        // The server's side ends in CLOSED (the client holds TIME-WAIT).
        assert_eq!(server.core().connections(), 0);
        assert_eq!(
            server.queue.pool().available(),
            server.queue.pool().capacity()
        );
    }

    #[test]
    fn counters_and_the_stats_page_get_the_same_publication() {
        let (mut server, mut client) = threads();
        let page = crate::stats::StatsPage::create("ix-elastic-test", 1).unwrap();
        server.attach_stats(page.writer(0).unwrap());
        let mut echo = Echo::default();
        let mut sender = Sender {
            total: 100_000,
            sent: 0,
            received: Vec::new(),
            conn: None,
            connected: false,
            closed: false,
        };
        echo.start(server.core());
        sender.start(client.core());
        // Long enough in loop-clock time for the interval to pass.
        let t0 = std::time::Instant::now();
        while t0.elapsed() < 3 * stats::PUBLISH_INTERVAL || sender.received.len() < sender.total {
            server.turn(&mut echo);
            client.turn(&mut sender);
        }
        let before = page.read(0).unwrap();
        assert!(before.publishes >= 1, "published on its own: {before:?}");
        server.publish();
        let last = server.counters.snapshot();
        assert_eq!(page.read(0).unwrap(), last);
        assert_eq!(last.publishes, before.publishes + 1);
        assert!(last.rx_packets > 0 && last.tx_packets > 0 && last.events > 0);
        assert!(last.turns >= last.batches && last.turns >= last.idle_turns);
        assert_eq!(last.rx_packets, server.queue.stats().rx_packets);
        assert_eq!(last.tx_packets, server.queue.stats().tx_packets);
        assert_eq!(last.batch_bound, DEFAULT_BATCH as u64);
        assert!(last.avg_loop_ns > 0 && last.avg_idle_ppm <= 1_000_000);
        assert!(last.heartbeat_ns >= before.heartbeat_ns);
        assert!(last.mean_batch() >= 1.0);
    }
}
