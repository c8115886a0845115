//! Moving live connections between the stacks of one process: when a flow
//! group migrates from one elastic thread to another, each of its
//! connections is taken out of the source [`TcpStack`] with
//! [`TcpStack::export`], travels to the target thread as a [`MovedConn`]
//! (`Send`, owning copies of its bytes), and is put into the target stack
//! with [`TcpStack::import`]. Neither the peer nor the byte stream notices:
//! no byte is lost, duplicated or reordered, and the connection keeps its
//! sequence space, windows and timers.
//!
//! # What travels
//!
//! - The whole transmission control block (RFC 9293 §3.3.1): state,
//!   send and receive sequence space (ISS, SND.UNA/NXT/MAX, SND.WL1/WL2,
//!   IRS, RCV.NXT, the advertised right edge and the last RCV.NXT
//!   acknowledged), the peer's window, its maximum and both scale shifts,
//!   the MSS, congestion control (cwnd, ssthresh, `recover`, duplicate-ACK
//!   count, recovery flags; RFC 5681/6582), the RTO estimator (SRTT,
//!   RTTVAR, RTO with its backoff, retry count, the timed segment and its
//!   start; RFC 6298), the delayed-ACK state (an ACK owed now, or its
//!   deadline), the FIN state (queued, acknowledged, peer's FIN pending
//!   report), the application's cookie and whether the application owns
//!   the handle, closed it, or has yet to accept it.
//! - The send queue, unacknowledged and unsent bytes alike (SND.UNA up to
//!   the last queued byte): `TxBuf`s are `Rc`-based and stay on the
//!   source thread, so their bytes are copied into one `Arc<[u8]>`; the
//!   target queues it as one `TxBuf`. The peer sees the same stream.
//! - In-order received bytes that TCP has acknowledged but not handed to
//!   the application (data that arrived before `accept`): copied out, and
//!   on import copied into packet buffers of the target's pool (import
//!   fails if the pool runs short).
//! - Timers as absolute deadlines ([`crate::time::Instant`] is one
//!   monotonic clock for the whole process): retransmission, persist,
//!   TIME-WAIT or FIN-WAIT-2 expiry, and the delayed ACK. The target
//!   files them in its own wheel; a deadline already past fires at its
//!   next `poll`.
//!
//! # What does not travel (by contract)
//!
//! - Out-of-order segments: they were never cumulatively acknowledged, so
//!   dropping them loses nothing: the peer retransmits them. An
//!   out-of-order FIN is dropped likewise. They are counted in
//!   [`TcpStats::migrate_ooo_dropped`](super::TcpStats::migrate_ooo_dropped).
//! - Bytes delivered to the application and not yet released with
//!   `recv_done`: on migration they count as released, so the receive
//!   window reopens on the target (a window update goes out at its next
//!   flush if the opening is worth announcing). The application keeps
//!   its `PktBuf`s (they return to the source pool when dropped) and a
//!   later `recv_done` with the old handle on the source is an
//!   [`TcpError::InvalidConn`] error with no other effect.
//! - RSTs already queued by the source for the connection's addresses
//!   (from an earlier abort) stay with the source and go out at its next
//!   flush.
//!
//! # Handles
//!
//! A connection gets a new [`ConnId`] on the target (returned by `import`);
//! the caller hands it to the application, whose later calls and events
//! use it. The source's handle is stale from `export` on.
//!
//! # Bookkeeping
//!
//! Export removes the connection from the source entirely (hash table,
//! slab, timer wheel, queue slabs, dirty list, half-open count, its
//! listener's count of connections awaiting accept); the handle goes
//! stale. Import checks every resource first and changes nothing when one
//! is missing, giving the `MovedConn` back so the caller can import it
//! into the source again: a free slot, no connection with the same
//! addresses, a listener on the local port for a passive connection still
//! in SYN-RECEIVED or awaiting accept (and room in its backlog, and under
//! the half-open limit), enough queue nodes and packet buffers. On
//! success the connection is hashed under the target's key, its timers are
//! armed, and it is marked for the next `flush`, which sends what is due
//! (an owed ACK, a window update, data, a SYN or FIN).
//!
//! # Steering
//!
//! While a flow group moves, the NIC may still deliver some of its
//! segments to the old core. [`TcpStack::input_steered`] hands such a
//! segment back (instead of answering it with an RST) when it matches no
//! connection and the caller's `mine` says the flow group is another
//! core's; the caller forwards it there.
//!
//! Export and import allocate (they are not on the per-packet path).

use std::sync::Arc;

use super::conn::{flag, Conn, State, TimerSlot};
use super::list::NIL;
use super::stack::RxSeg;
use super::{ConnId, FourTuple, TcpError, TcpStack};
use crate::buf::{Pool, BUF_DATA};
use crate::time::Instant;
use crate::txbuf::TxBuf;

/// A connection taken out of one stack by [`TcpStack::export`], ready to
/// be put into another (possibly on another thread) by
/// [`TcpStack::import`]. It owns copies of its bytes and no handle into
/// either stack.
pub struct MovedConn {
    /// The TCB, detached: list heads empty, no wheel entries, not dirty;
    /// timer deadlines kept in `rtx.at` / `ack.at`. Boxed so that the
    /// error of a failed import stays small.
    conn: Box<Conn>,
    /// Send queue from SND.UNA on (`conn.tx_queued` bytes).
    tx: Arc<[u8]>,
    /// In-order bytes awaiting accept (`conn.rx_pending` bytes).
    rx_pending: Vec<u8>,
    /// Out-of-order segments dropped at export.
    ooo_dropped: u16,
    /// Delivered, unreleased bytes counted as released at export.
    rx_released: u32,
    exported_at: Instant,
}

impl MovedConn {
    /// The connection's addresses.
    pub fn tuple(&self) -> FourTuple {
        self.conn.tuple
    }

    /// The application's cookie (0 if it was never accepted).
    pub fn cookie(&self) -> u64 {
        self.conn.cookie
    }

    /// The state's name (RFC 9293 §3.3.2), e.g. `"ESTABLISHED"`.
    pub fn state(&self) -> &'static str {
        self.conn.state.name()
    }

    /// Queued send bytes carried (unacknowledged and unsent).
    pub fn tx_bytes(&self) -> usize {
        self.tx.len()
    }

    /// Received in-order bytes carried that await `accept`.
    pub fn rx_pending_bytes(&self) -> usize {
        self.rx_pending.len()
    }

    /// Out-of-order segments dropped at export (the peer retransmits
    /// them).
    pub fn ooo_dropped(&self) -> u16 {
        self.ooo_dropped
    }

    /// Bytes delivered to the application and not released when the
    /// connection was exported; they count as released.
    pub fn rx_released(&self) -> u32 {
        self.rx_released
    }

    /// Whether the connection still waits for the application's `accept`
    /// (its `Knock` was reported by the source; the target sends none:
    /// the application accepts the handle `import` returns).
    pub fn awaiting_accept(&self) -> bool {
        self.conn.has(flag::BACKLOG)
    }

    /// When it was exported.
    pub fn exported_at(&self) -> Instant {
        self.exported_at
    }
}

impl std::fmt::Debug for MovedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MovedConn")
            .field("tuple", &self.conn.tuple)
            .field("state", &self.conn.state.name())
            .field("tx_bytes", &self.tx.len())
            .field("rx_pending_bytes", &self.rx_pending.len())
            .field("ooo_dropped", &self.ooo_dropped)
            .field("rx_released", &self.rx_released)
            .finish()
    }
}

/// What `import` needs of a listener for a connection.
fn needs_listener(c: &Conn) -> bool {
    c.has(flag::HALF_OPEN) || c.has(flag::BACKLOG)
}

impl TcpStack {
    /// Appends the handle and addresses of every connection in the table,
    /// in any state (SYN-SENT and SYN-RECEIVED to TIME-WAIT). Scans the
    /// table: for migration and shutdown, not the per-packet path.
    pub fn connections(&self, out: &mut Vec<(ConnId, FourTuple)>) {
        self.conns.live(out);
    }

    /// Takes connection `conn` out of this stack (see the module docs for
    /// what travels) and returns it. The handle is stale afterwards: calls
    /// with it fail with [`TcpError::InvalidConn`], and no event names it.
    pub fn export(&mut self, now: Instant, conn: ConnId) -> Result<MovedConn, TcpError> {
        let idx = self.resolve(conn)?;
        let c = self.conns.get(idx);
        let mut tx = Vec::with_capacity(c.tx_queued as usize);
        let mut node = c.tx_head;
        while node != NIL {
            tx.extend_from_slice(self.txq.get(node).as_slice());
            node = self.txq.next(node);
        }
        let mut rx_pending = Vec::with_capacity(c.rx_pending as usize);
        let mut node = c.pend_head;
        while node != NIL {
            rx_pending.extend_from_slice(self.rxq.get(node).buf.data());
            node = self.rxq.next(node);
        }
        debug_assert_eq!(tx.len(), c.tx_queued as usize);
        debug_assert_eq!(rx_pending.len(), c.rx_pending as usize);
        let mut m = c.clone();
        let (ooo_dropped, rx_released) = (m.ooo_count, m.rx_held);
        m.gen = 0;
        m.hnext = NIL;
        m.tx_head = NIL;
        m.tx_tail = NIL;
        m.tx_cur = NIL;
        m.tx_cur_seq = m.snd_una;
        m.pend_head = NIL;
        m.pend_tail = NIL;
        m.ooo_head = NIL;
        m.ooo_bytes = 0;
        m.ooo_count = 0;
        m.rx_held = 0;
        m.clear(flag::OOO_FIN | flag::DIRTY);
        m.rtx.entry = None;
        m.ack.entry = None;
        self.detach(idx);
        if let Some(pos) = self.dirty.iter().position(|d| *d == conn) {
            self.dirty.swap_remove(pos);
        }
        self.stats.conns_exported += 1;
        self.stats.migrate_ooo_dropped += u64::from(ooo_dropped);
        Ok(MovedConn {
            conn: Box::new(m),
            tx: Arc::from(tx),
            rx_pending,
            ooo_dropped,
            rx_released,
            exported_at: now,
        })
    }

    /// Puts a moved connection into this stack: a new slot hashed under
    /// this stack's key, its queues rebuilt (received bytes awaiting accept
    /// copied into buffers from `pool`), its timers armed at their
    /// deadlines, and marked so that the next [`flush`](Self::flush) sends
    /// what is due. A connection awaiting accept counts in this stack's
    /// listener backlog; the application accepts it with the returned
    /// handle. On failure nothing changes and the connection comes back
    /// with the error, to be imported elsewhere (e.g. back into its
    /// source).
    pub fn import(
        &mut self,
        now: Instant,
        moved: MovedConn,
        pool: &Pool,
    ) -> Result<ConnId, (TcpError, MovedConn)> {
        if let Err(e) = self.import_check(&moved) {
            return Err((e, moved));
        }
        // The bytes awaiting accept, copied into this core's buffers and
        // queued in list nodes (unwound if anything runs short).
        let (head, tail) = match self.import_rx_pending(&moved, pool) {
            Ok(list) => list,
            Err(e) => return Err((e, moved)),
        };
        let tx_node = if moved.tx.is_empty() {
            None
        } else {
            match self.txq.alloc(TxBuf::from_arc(moved.tx.clone())) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.rxq.release_list(head);
                    let e = TcpError::QueueFull {
                        queue: "tx",
                        need: 1,
                        free: 0,
                    };
                    return Err((e, moved));
                }
            }
        };
        let idx = match self.conns.insert((*moved.conn).clone()) {
            Some(i) => i,
            None => {
                self.rxq.release_list(head);
                if let Some(n) = tx_node {
                    self.txq.release(n);
                }
                let e = TcpError::TableFull {
                    max: self.cfg.max_conns,
                };
                return Err((e, moved));
            }
        };
        let c = self.conns.get_mut(idx);
        c.pend_head = head;
        c.pend_tail = tail;
        if let Some(n) = tx_node {
            c.tx_head = n;
            c.tx_tail = n;
        }
        let (half_open, backlog, port) = (
            c.has(flag::HALF_OPEN),
            c.has(flag::BACKLOG),
            c.tuple.local.port(),
        );
        let (rtx_at, ack_at) = (c.rtx.at, c.ack.at);
        let receiving = matches!(
            c.state,
            State::Established | State::FinWait1 | State::FinWait2
        );
        // Released bytes may reopen a window worth announcing (as
        // `recv_done` would); otherwise the window is left to ride on the
        // next segment, as on the source.
        if moved.rx_released > 0 && receiving && c.window_update_due(&self.cfg) {
            c.set(flag::ACK_NOW);
        }
        if half_open {
            self.half_open += 1;
        }
        if backlog {
            if let Some(p) = self.listener_pending(port) {
                *p += 1;
            }
        }
        if let Some(at) = rtx_at {
            self.arm(idx, TimerSlot::Rtx, at);
        }
        if let Some(at) = ack_at {
            self.arm(idx, TimerSlot::Ack, at);
        }
        self.mark_dirty(idx);
        self.stats.conns_imported += 1;
        log::debug!(
            "tcp: imported a connection after {:?} in transit",
            now.saturating_since(moved.exported_at)
        );
        Ok(self.conns.id(idx))
    }

    /// Copies the bytes awaiting accept of `m` into buffers from `pool`,
    /// queued as a list of receive-queue nodes; returns its head and tail
    /// (both [`NIL`] when there is nothing). On failure nothing is held.
    fn import_rx_pending(&mut self, m: &MovedConn, pool: &Pool) -> Result<(u32, u32), TcpError> {
        let (mut head, mut tail) = (NIL, NIL);
        // The peer's FIN, if it came before accept, follows the bytes.
        let fin = u32::from(m.conn.has(flag::PEER_CLOSED_PENDING));
        let mut seq = m.conn.rcv_nxt - m.conn.rx_pending - fin;
        let mut rest = &m.rx_pending[..];
        while !rest.is_empty() {
            let chunks_left = rest.len().div_ceil(BUF_DATA);
            let Some(mut buf) = pool.alloc() else {
                self.rxq.release_list(head);
                return Err(TcpError::PoolEmpty { need: chunks_left });
            };
            let n = rest.len().min(buf.tailroom()).min(BUF_DATA);
            if n == 0 || !buf.extend_from_slice(&rest[..n]) {
                self.rxq.release_list(head);
                return Err(TcpError::PoolEmpty { need: chunks_left });
            }
            let node = match self.rxq.alloc(RxSeg { seq, buf }) {
                Ok(node) => node,
                Err(_) => {
                    self.rxq.release_list(head);
                    return Err(TcpError::QueueFull {
                        queue: "rx",
                        need: chunks_left,
                        free: 0,
                    });
                }
            };
            if tail == NIL {
                head = node;
            } else {
                self.rxq.set_next(tail, node);
            }
            tail = node;
            seq = seq + n as u32;
            rest = &rest[n..];
        }
        Ok((head, tail))
    }

    /// Every condition of `import` that does not need an allocation.
    fn import_check(&self, m: &MovedConn) -> Result<(), TcpError> {
        let c = &m.conn;
        if self.conns.lookup(&c.tuple).is_some() {
            return Err(TcpError::TupleInUse);
        }
        if self.conns.len() >= self.conns.capacity() {
            return Err(TcpError::TableFull {
                max: self.cfg.max_conns,
            });
        }
        // No timer-wheel check: the wheel has room for two entries per
        // slot plus slack, and a connection holds at most one entry per
        // timer, so a free slot implies room for its timers.
        if needs_listener(c) {
            let port = c.tuple.local.port();
            let Some(l) = self.listeners.iter().find(|l| l.port == port) else {
                return Err(TcpError::NotListening { port });
            };
            if c.has(flag::BACKLOG) && l.pending >= self.cfg.backlog {
                return Err(TcpError::BacklogFull {
                    port,
                    max: self.cfg.backlog,
                });
            }
        }
        if c.has(flag::HALF_OPEN) && self.half_open >= self.cfg.max_half_open {
            return Err(TcpError::HalfOpenFull {
                max: self.cfg.max_half_open,
            });
        }
        let need = usize::from(!m.tx.is_empty());
        if need > self.txq.available() {
            return Err(TcpError::QueueFull {
                queue: "tx",
                need,
                free: self.txq.available(),
            });
        }
        Ok(())
    }
}
