//! A memif queue pair: the hot path.
//!
//! Receive walks the rings this queue consumes, copies each complete frame
//! (following `NEXT` chains) into a fresh slot of the queue's pool, and
//! hands the ring slots back once per burst (master: one release store of
//! `tail`; slave: re-post the buffers, one release store of `head`).
//! Transmit copies frames into ring buffers (chaining when a frame is
//! longer than a buffer), then publishes once per burst and per ring
//! (slave: release store of `head`; master: release store of `tail`). The
//! peer's index is read once per ring per burst with an acquire load —
//! the same pairing as DPDK's `eth_memif_rx`/`eth_memif_tx`.
//!
//! No allocation, lock or system call in steady state: the link state is
//! one acquire load per burst, and an eventfd is written only for a peer
//! that asked for interrupts (ring flag `MASK_INT` clear).

#![deny(unsafe_code)]

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::control;
use super::handshake::{Connection, OwnLayout};
use super::port::Shared;
use super::ring::{Buffers, Desc, Ring, DESC_FLAG_NEXT, RING_FLAG_MASK_INT};
use super::steer::{Side, SteerArea};
use super::{MemifRole, MAX_FRAME_LEN};
use crate::buf::{PktBuf, Pool};
use crate::nic::{QueuePair, QueueStats};
use crate::rss::{toeplitz, FlowTuple, RSS_KEY_LEN};

/// A ring this queue produces into.
struct TxRing {
    ring: Ring,
    /// Ring index within its direction.
    index: u16,
    /// Our free-running producer index (slave: head; master: tail).
    cursor: u16,
    /// Slots free this burst.
    free: u16,
    /// Written this burst, to publish.
    dirty: bool,
}

/// A ring this queue consumes from.
struct RxRing {
    ring: Ring,
    index: u16,
    /// Our free-running consumer index.
    cursor: u16,
}

/// RSS steering on one connection: the peer's table in shared memory.
struct TxSteer {
    area: SteerArea,
    /// The peer's side (whose table this end reads).
    peer: Side,
    key: [u8; RSS_KEY_LEN],
}

/// Per-connection state of a queue.
struct Active {
    conn: Arc<Connection>,
    generation: u64,
    bufs: Buffers,
    /// Master side (consumes client-to-server, fills posted buffers).
    master: bool,
    /// The slave's own buffer layout.
    own: Option<OwnLayout>,
    /// Indexed by the peer's queue (RSS) or a single ring.
    tx: Vec<TxRing>,
    rx: Vec<RxRing>,
    /// Receive ring to start the next burst with (fairness).
    rx_next: usize,
    /// RSS steering (`tx` is then indexed by the peer's queue).
    steer: Option<TxSteer>,
}

/// The ring protocol was broken by the peer.
#[derive(Debug, Clone, Copy)]
struct Fault(&'static str);

/// A memif queue pair, owned by one thread (see [`super::MemifPort::queue`]).
pub struct MemifQueue {
    shared: Arc<Shared>,
    q: u16,
    pool: Pool,
    /// The Toeplitz key, with RSS steering over several queues.
    rss_key: Option<[u8; RSS_KEY_LEN]>,
    seen: u64,
    link: Option<Active>,
    stats: QueueStats,
    /// Frames dropped because the peer's table named no queue it has.
    steer_dropped: u64,
    /// Private copy target for [`MemifQueue::rx_burst_bytes`].
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for MemifQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemifQueue")
            .field("queue", &self.q)
            .field("up", &self.link.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Where received frames go.
trait Sink {
    /// Starts a frame; false when there is no room (stop receiving).
    fn begin(&mut self) -> bool;
    /// Appends one segment; false if it is invalid or does not fit.
    fn segment(&mut self, bufs: &Buffers, d: &Desc) -> bool;
    /// Bytes in the frame so far.
    fn len(&self) -> usize;
    /// Delivers the frame; returns its length.
    fn commit(&mut self) -> usize;
    /// Throws the frame away.
    fn abort(&mut self);
}

/// Receives into pool slots.
struct PktSink<'a> {
    pool: &'a Pool,
    out: &'a mut Vec<PktBuf>,
    cur: Option<PktBuf>,
}

impl Sink for PktSink<'_> {
    #[inline]
    fn begin(&mut self) -> bool {
        self.cur = self.pool.alloc();
        self.cur.is_some()
    }

    #[inline]
    fn segment(&mut self, bufs: &Buffers, d: &Desc) -> bool {
        let Some(b) = self.cur.as_mut() else {
            return false;
        };
        let old = b.len();
        if !b.append(d.length as usize) {
            return false;
        }
        let Some(dst) = b.data_mut() else {
            return false;
        };
        if !bufs.copy_out(d.region, d.offset, &mut dst[old..]) {
            b.truncate(old);
            return false;
        }
        true
    }

    #[inline]
    fn len(&self) -> usize {
        self.cur.as_ref().map_or(0, PktBuf::len)
    }

    #[inline]
    fn commit(&mut self) -> usize {
        let b = self.cur.take().expect("commit after begin");
        let n = b.len();
        self.out.push(b);
        n
    }

    #[inline]
    fn abort(&mut self) {
        self.cur = None;
    }
}

/// Receives into a private buffer and shows each frame to a closure.
struct ByteSink<'a, F: FnMut(&[u8])> {
    scratch: &'a mut [u8],
    len: usize,
    f: F,
}

impl<F: FnMut(&[u8])> Sink for ByteSink<'_, F> {
    fn begin(&mut self) -> bool {
        self.len = 0;
        true
    }

    fn segment(&mut self, bufs: &Buffers, d: &Desc) -> bool {
        let end = self.len + d.length as usize;
        if end > self.scratch.len()
            || !bufs.copy_out(d.region, d.offset, &mut self.scratch[self.len..end])
        {
            return false;
        }
        self.len = end;
        true
    }

    fn len(&self) -> usize {
        self.len
    }

    fn commit(&mut self) -> usize {
        (self.f)(&self.scratch[..self.len]);
        self.len
    }

    fn abort(&mut self) {}
}

impl MemifQueue {
    pub(crate) fn new(shared: Arc<Shared>, q: u16, pool: Pool) -> MemifQueue {
        let rss_key = shared.cfg.rss_steering().map(|r| r.key);
        MemifQueue {
            shared,
            q,
            pool,
            rss_key,
            seen: u64::MAX,
            link: None,
            stats: QueueStats::default(),
            steer_dropped: 0,
            scratch: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
        }
    }

    /// This queue's number.
    pub fn id(&self) -> u16 {
        self.q
    }

    /// Frames not sent because the peer's redirection table (in the shared
    /// memory) named a queue the port does not have, or no queue at all
    /// for an unhashable frame. Also counted in `tx_dropped`.
    pub fn steer_dropped(&self) -> u64 {
        self.steer_dropped
    }

    /// Whether the link is up as this queue sees it.
    pub fn is_up(&mut self) -> bool {
        self.check_link()
    }

    /// Follows link changes: one acquire load when nothing changed.
    #[inline]
    fn check_link(&mut self) -> bool {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.resync();
        }
        self.link.is_some()
    }

    #[cold]
    fn resync(&mut self) {
        let (g, conn) = self.shared.snapshot();
        self.seen = g;
        self.link = conn.map(|c| self.activate(c, g));
    }

    /// Builds the ring views of queue `q` on a new connection.
    fn activate(&self, conn: Arc<Connection>, generation: u64) -> Active {
        let cfg = &self.shared.cfg;
        let master = cfg.role == MemifRole::Master;
        let q = self.q;
        let nq = cfg.queues;
        let rss = self.rss_key.is_some();
        // Ring indices: sender k → receiver j uses ring k*Q + j.
        let tx_idx: Vec<u16> = if rss {
            (0..nq).map(|j| q * nq + j).collect()
        } else {
            vec![q]
        };
        let rx_idx: Vec<u16> = if rss {
            (0..nq).map(|k| k * nq + q).collect()
        } else {
            vec![q]
        };
        // The slave transmits on client-to-server rings, the master on
        // server-to-client rings.
        let tx_c2s = !master;
        let tx = tx_idx
            .into_iter()
            .map(|i| {
                let ring = conn.ring(tx_c2s, i);
                let cursor = if master {
                    ring.tail(Ordering::Relaxed)
                } else {
                    ring.head(Ordering::Relaxed)
                };
                TxRing {
                    ring,
                    index: i,
                    cursor,
                    free: 0,
                    dirty: false,
                }
            })
            .collect();
        let rx = rx_idx
            .into_iter()
            .map(|i| {
                let ring = conn.ring(!tx_c2s, i);
                let cursor = if master {
                    ring.tail(Ordering::Relaxed)
                } else {
                    // Everything consumed has been re-posted: head is one
                    // ring ahead of the consumer.
                    ring.head(Ordering::Relaxed).wrapping_sub(ring.size())
                };
                RxRing {
                    ring,
                    index: i,
                    cursor,
                }
            })
            .collect();
        let steer = self.rss_key.and_then(|key| {
            let (area, spec) = conn.steer_area().zip(conn.steer)?;
            Some(TxSteer {
                area,
                peer: spec.own.peer(),
                key,
            })
        });
        Active {
            steer,
            bufs: Buffers::new(conn.regions.clone()),
            own: conn.own,
            conn,
            generation,
            master,
            tx,
            rx,
            rx_next: 0,
        }
    }

    /// Reports a broken ring protocol and stops using the connection.
    #[cold]
    fn fault(&mut self, f: Fault) {
        if let Some(a) = self.link.take() {
            self.shared.report_fault(a.generation, f.0);
        }
    }

    fn rx_with<S: Sink>(&mut self, sink: &mut S, max: usize) -> usize {
        if max == 0 || !self.check_link() {
            return 0;
        }
        let act = self.link.as_mut().expect("link checked");
        let n_rings = act.rx.len();
        let mut got = 0;
        let mut fault = None;
        for i in 0..n_rings {
            let idx = (act.rx_next + i) % n_rings;
            match rx_ring(
                &mut act.rx[idx],
                act.master,
                act.own,
                &act.bufs,
                sink,
                max - got,
                &mut self.stats,
            ) {
                Ok(n) => got += n,
                Err(f) => {
                    fault = Some(f);
                    break;
                }
            }
            if got >= max {
                break;
            }
        }
        act.rx_next = (act.rx_next + 1) % n_rings;
        if let Some(f) = fault {
            self.fault(f);
        }
        got
    }

    /// Receives up to `max` frames of any size up to [`MAX_FRAME_LEN`],
    /// copying each into a private buffer and calling `f` with it.
    /// Returns how many frames were received.
    pub fn rx_burst_bytes(&mut self, max: usize, f: impl FnMut(&[u8])) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut sink = ByteSink {
            scratch: &mut scratch,
            len: 0,
            f,
        };
        let n = self.rx_with(&mut sink, max);
        self.scratch = scratch;
        n
    }

    /// Transmits byte frames from the front of `frames` (any size up to
    /// [`MAX_FRAME_LEN`], chained over several buffers as needed). Returns
    /// how many were taken (sent, or dropped and counted when the link is
    /// down or a frame is empty or too long); the rest did not fit.
    pub fn tx_burst_bytes(&mut self, frames: &[&[u8]]) -> usize {
        self.tx_with(frames, |f| f)
    }

    fn tx_with<T>(&mut self, frames: &[T], data: impl Fn(&T) -> &[u8]) -> usize {
        if frames.is_empty() {
            return 0;
        }
        if !self.check_link() {
            self.stats.tx_dropped += frames.len() as u64;
            return frames.len();
        }
        let act = self.link.as_mut().expect("link checked");
        match tx_frames(act, frames, data, &mut self.stats, &mut self.steer_dropped) {
            Ok(n) => n,
            Err((n, f)) => {
                self.fault(f);
                n
            }
        }
    }
}

/// Receives complete frames from one ring into `sink`; returns how many.
#[inline]
fn rx_ring<S: Sink>(
    r: &mut RxRing,
    master: bool,
    own: Option<OwnLayout>,
    bufs: &Buffers,
    sink: &mut S,
    max: usize,
    stats: &mut QueueStats,
) -> Result<usize, Fault> {
    let ring = &r.ring;
    let size = ring.size();
    // The producer's index: head on client-to-server rings (master side),
    // tail on server-to-client rings. Acquire pairs with the producer's
    // release store, making the descriptors and buffers visible.
    let produced = if master {
        ring.head(Ordering::Acquire)
    } else {
        ring.tail(Ordering::Acquire)
    };
    if produced.wrapping_sub(r.cursor) > size {
        return Err(Fault("peer moved the ring index beyond the ring"));
    }
    let start = r.cursor;
    let mut cur = start;
    let mut n = 0;
    while cur != produced && n < max {
        if !sink.begin() {
            break;
        }
        let mut s = cur;
        let mut ok = true;
        let complete = loop {
            if s == produced {
                // A chain published half-way: wait for the rest.
                break false;
            }
            let d = ring.desc(s);
            s = s.wrapping_add(1);
            if ok {
                ok = sink.segment(bufs, &d);
            }
            if d.flags & DESC_FLAG_NEXT == 0 {
                break true;
            }
        };
        if !complete {
            sink.abort();
            break;
        }
        cur = s;
        // An empty frame is as malformed as a bad descriptor.
        if ok && sink.len() > 0 {
            stats.rx_bytes += sink.commit() as u64;
            stats.rx_packets += 1;
            n += 1;
        } else {
            sink.abort();
            stats.rx_dropped += 1;
        }
    }
    if cur != start {
        if master {
            // Hand the slots back to the slave.
            ring.set_tail(cur, Ordering::Release);
        } else {
            // Re-post the consumed buffers (the same physical slots), then
            // move head one ring ahead of the new cursor.
            let own = own.expect("the slave knows its own layout");
            let mut s = start;
            while s != cur {
                ring.set_desc(
                    s,
                    Desc {
                        flags: 0,
                        region: own.region,
                        length: own.buffer_size,
                        offset: own.buffer_offset(false, r.index, s),
                    },
                );
                s = s.wrapping_add(1);
            }
            ring.set_head(cur.wrapping_add(size), Ordering::Release);
        }
        r.cursor = cur;
    }
    Ok(n)
}

/// Copies frames into rings and publishes them; returns how many frames
/// were taken, or the count taken so far and a fault.
fn tx_frames<T>(
    act: &mut Active,
    frames: &[T],
    data: impl Fn(&T) -> &[u8],
    stats: &mut QueueStats,
    steer_dropped: &mut u64,
) -> Result<usize, (usize, Fault)> {
    // Snapshot the room in every ring once per burst.
    for t in act.tx.iter_mut() {
        let size = t.ring.size();
        let room = if act.master {
            // Posted buffers: slave's head (acquire: the descriptors it
            // posted are visible) minus our tail.
            t.ring.head(Ordering::Acquire).wrapping_sub(t.cursor)
        } else {
            // Ring size minus what the master has not yet consumed.
            let used = t.cursor.wrapping_sub(t.ring.tail(Ordering::Acquire));
            size.wrapping_sub(used)
        };
        if room > size {
            return Err((0, Fault("peer moved the ring index beyond the ring")));
        }
        t.free = room;
        t.dirty = false;
    }
    let mut taken = 0;
    let mut fault = None;
    for f in frames {
        let bytes = data(f);
        if bytes.is_empty() || bytes.len() > MAX_FRAME_LEN {
            stats.tx_dropped += 1;
            taken += 1;
            continue;
        }
        let j = match &act.steer {
            None => 0,
            Some(s) => match FlowTuple::from_frame(bytes) {
                // The peer's current entry for the flow's group: one
                // relaxed load from the shared memory. Untrusted: an entry
                // naming no queue of ours misses `act.tx` below.
                Some(flow) => {
                    let group = toeplitz(&s.key, &flow.hash_input()) as usize % s.area.groups();
                    usize::from(s.area.entry(s.peer, group))
                }
                None => {
                    // Not hashable (ARP, broadcasts): every queue in the
                    // peer's table gets a copy, so each of its running
                    // cores keeps its own neighbour table current (idle
                    // queues, whose rings nobody polls, get none). Best
                    // effort, as broadcast is: a full ring misses its copy.
                    let mask = s.area.mask(s.peer);
                    let mut sent = false;
                    for (j, t) in act.tx.iter_mut().enumerate() {
                        if 1u32.checked_shl(j as u32).is_none_or(|bit| mask & bit == 0) {
                            continue;
                        }
                        sent = true;
                        let put = if act.master {
                            fill_posted(t, &act.bufs, bytes)
                        } else {
                            produce_own(t, &act.bufs, act.own.expect("slave layout"), bytes)
                        };
                        if let Put::Fault(f) = put {
                            fault = Some(f);
                            break;
                        }
                    }
                    if fault.is_some() {
                        break;
                    }
                    if sent {
                        stats.tx_packets += 1;
                        stats.tx_bytes += bytes.len() as u64;
                    } else {
                        stats.tx_dropped += 1;
                        *steer_dropped += 1;
                    }
                    taken += 1;
                    continue;
                }
            },
        };
        let Some(t) = act.tx.get_mut(j) else {
            stats.tx_dropped += 1;
            *steer_dropped += 1;
            taken += 1;
            continue;
        };
        let put = if act.master {
            fill_posted(t, &act.bufs, bytes)
        } else {
            produce_own(t, &act.bufs, act.own.expect("slave layout"), bytes)
        };
        match put {
            Put::Sent => {
                stats.tx_packets += 1;
                stats.tx_bytes += bytes.len() as u64;
                taken += 1;
            }
            Put::TooLong => {
                stats.tx_dropped += 1;
                taken += 1;
            }
            Put::Full => break,
            Put::Fault(f) => {
                fault = Some(f);
                break;
            }
        }
    }
    for t in act.tx.iter_mut().filter(|t| t.dirty) {
        if act.master {
            t.ring.set_tail(t.cursor, Ordering::Release);
        } else {
            t.ring.set_head(t.cursor, Ordering::Release);
        }
        if t.ring.flags() & RING_FLAG_MASK_INT == 0 {
            let spec = if act.master {
                &act.conn.s2c
            } else {
                &act.conn.c2s
            };
            control::eventfd_signal(spec[usize::from(t.index)].intr.as_fd());
        }
    }
    match fault {
        None => Ok(taken),
        Some(f) => Err((taken, f)),
    }
}

/// Outcome of placing one frame in a ring.
enum Put {
    Sent,
    /// Needs more buffers than the ring has: never fits.
    TooLong,
    /// Not enough room now.
    Full,
    Fault(Fault),
}

/// Slave: copy into our own buffers of the next free slots.
#[inline(always)]
fn produce_own(t: &mut TxRing, bufs: &Buffers, own: OwnLayout, bytes: &[u8]) -> Put {
    let bsize = own.buffer_size as usize;
    if bytes.len() <= bsize {
        // The common case: one buffer holds the frame (no division, no
        // chunking). A ring has at least one slot, so it is never too long.
        if t.free == 0 {
            return Put::Full;
        }
        let offset = own.buffer_offset(true, t.index, t.cursor);
        if !bufs.copy_in(own.region, offset, bytes) {
            return Put::Fault(Fault("own buffer outside the regions"));
        }
        t.ring.set_desc(
            t.cursor,
            Desc {
                flags: 0,
                region: own.region,
                length: bytes.len() as u32,
                offset,
            },
        );
        t.cursor = t.cursor.wrapping_add(1);
        t.free -= 1;
        t.dirty = true;
        return Put::Sent;
    }
    let nseg = bytes.len().div_ceil(bsize);
    if nseg > usize::from(t.ring.size()) {
        return Put::TooLong;
    }
    if nseg > usize::from(t.free) {
        return Put::Full;
    }
    let mut slot = t.cursor;
    let mut chunks = bytes.chunks(bsize).peekable();
    while let Some(chunk) = chunks.next() {
        let offset = own.buffer_offset(true, t.index, slot);
        if !bufs.copy_in(own.region, offset, chunk) {
            return Put::Fault(Fault("own buffer outside the regions"));
        }
        let flags = if chunks.peek().is_some() {
            DESC_FLAG_NEXT
        } else {
            0
        };
        t.ring.set_desc(
            slot,
            Desc {
                flags,
                region: own.region,
                length: chunk.len() as u32,
                offset,
            },
        );
        slot = slot.wrapping_add(1);
    }
    t.cursor = slot;
    t.free -= nseg as u16;
    t.dirty = true;
    Put::Sent
}

/// Master: fill the buffers the slave posted, from our cursor on.
#[inline(always)]
fn fill_posted(t: &mut TxRing, bufs: &Buffers, bytes: &[u8]) -> Put {
    if t.free == 0 {
        return Put::Full;
    }
    let first = t.ring.desc(t.cursor);
    if first.length as usize >= bytes.len() {
        // The common case: one posted buffer holds the frame.
        if !bufs.copy_in(first.region, first.offset, bytes) {
            return Put::Fault(Fault("peer posted a buffer outside its regions"));
        }
        t.ring.set_len_flags(t.cursor, bytes.len() as u32, 0);
        t.cursor = t.cursor.wrapping_add(1);
        t.free -= 1;
        t.dirty = true;
        return Put::Sent;
    }
    // Chained: first check that the posted buffers hold the frame (without
    // writing, so a frame that does not fit leaves the ring untouched).
    let mut need = bytes.len();
    let mut nseg: u16 = 0;
    while need > 0 {
        if nseg == t.ring.size() {
            return Put::TooLong;
        }
        if nseg == t.free {
            return Put::Full;
        }
        let d = t.ring.desc(t.cursor.wrapping_add(nseg));
        if d.length == 0 {
            return Put::Fault(Fault("peer posted an empty buffer"));
        }
        need = need.saturating_sub(d.length as usize);
        nseg += 1;
    }
    let mut rest = bytes;
    for i in 0..nseg {
        let slot = t.cursor.wrapping_add(i);
        let d = t.ring.desc(slot);
        let n = (d.length as usize).min(rest.len());
        if !bufs.copy_in(d.region, d.offset, &rest[..n]) {
            return Put::Fault(Fault("peer posted a buffer outside its regions"));
        }
        rest = &rest[n..];
        let flags = if i + 1 < nseg { DESC_FLAG_NEXT } else { 0 };
        t.ring.set_len_flags(slot, n as u32, flags);
    }
    t.cursor = t.cursor.wrapping_add(nseg);
    t.free -= nseg;
    t.dirty = true;
    Put::Sent
}

impl QueuePair for MemifQueue {
    fn rx_burst(&mut self, out: &mut Vec<PktBuf>, max: usize) -> usize {
        let pool = self.pool.clone();
        let mut sink = PktSink {
            pool: &pool,
            out,
            cur: None,
        };
        self.rx_with(&mut sink, max)
    }

    fn tx_burst(&mut self, frames: &mut Vec<PktBuf>) -> usize {
        let n = self.tx_with(frames, PktBuf::data);
        frames.drain(..n);
        n
    }

    fn pool(&self) -> &Pool {
        &self.pool
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

impl Drop for MemifQueue {
    fn drop(&mut self) {
        self.shared.release_queue(self.q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nic::memif::steer::Side;
    use crate::nic::memif::{MemifConfig, MemifPort};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// A connected master/slave pair on a socket in a fresh directory.
    struct Pair {
        dir: PathBuf,
        master: MemifPort,
        slave: MemifPort,
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pair(tag: &str) -> Pair {
        let dir = std::env::temp_dir().join(format!("ix-memif-q-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("memif.sock");
        let cfg = |role| MemifConfig {
            log2_ring_size: 4,
            ..MemifConfig::new(&sock, role)
        };
        let master = MemifPort::open(cfg(MemifRole::Master)).unwrap();
        let slave = MemifPort::open(cfg(MemifRole::Slave)).unwrap();
        master.wait_connected(Duration::from_secs(10)).unwrap();
        slave.wait_connected(Duration::from_secs(10)).unwrap();
        Pair { dir, master, slave }
    }

    fn conn(p: &MemifPort) -> Arc<Connection> {
        p.shared().snapshot().1.expect("connected")
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A connected two-queue pair with RSS steering, round-robin tables.
    fn rss_pair(tag: &str) -> Pair {
        let dir = std::env::temp_dir().join(format!("ix-memif-q-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("memif.sock");
        let cfg = |role| MemifConfig {
            queues: 2,
            log2_ring_size: 4,
            steering: crate::nic::memif::Steering::Rss(crate::rss::RssConfig::round_robin(2, 128)),
            ..MemifConfig::new(&sock, role)
        };
        let master = MemifPort::open(cfg(MemifRole::Master)).unwrap();
        let slave = MemifPort::open(cfg(MemifRole::Slave)).unwrap();
        master.wait_connected(Duration::from_secs(10)).unwrap();
        slave.wait_connected(Duration::from_secs(10)).unwrap();
        Pair { dir, master, slave }
    }

    /// A UDP/IPv4 frame from port `sport`.
    fn udp(sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f
    }

    #[test]
    fn peer_table_naming_missing_queues_drops_and_counts() {
        let p = rss_pair("badtable");
        let mut m0 = p.master.queue(0, Pool::new(1, 64, false).unwrap()).unwrap();
        let mut m1 = p.master.queue(1, Pool::new(2, 64, false).unwrap()).unwrap();
        let mut s0 = p.slave.queue(0, Pool::new(3, 64, false).unwrap()).unwrap();
        assert!(s0.is_up());
        // The master "lies" in its table (the same memory the slave reads):
        // queues it does not have, and a mask naming only such queues.
        let area = conn(&p.master).steer_area().unwrap();
        for g in 0..128 {
            area.set_entry(Side::Master, g, 2 + g as u16 * 509);
        }
        area.set_entry(Side::Master, 5, u16::MAX);
        area.set_mask(Side::Master, 0xffff_fffc);
        let frames: Vec<Vec<u8>> = (0..12u16)
            .map(|i| udp(1000 + i * 77))
            .chain(std::iter::once(vec![0xff; 60]))
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(s0.tx_burst_bytes(&refs), 13, "all taken");
        assert_eq!(s0.steer_dropped(), 13);
        assert_eq!(s0.stats().tx_dropped, 13);
        assert_eq!(s0.stats().tx_packets, 0);
        let mut got = Vec::new();
        assert_eq!(m0.rx_burst(&mut got, 32) + m1.rx_burst(&mut got, 32), 0);
        assert!(p.slave.is_connected(), "a bad table is not fatal");
        assert!(p.slave.peer_rx_table().unwrap().contains(&u16::MAX));
        // The peer repairs its table: frames flow again.
        p.master.set_rx_table(&[1; 128]).unwrap();
        assert_eq!(s0.tx_burst_bytes(&refs), 13);
        assert_eq!(s0.steer_dropped(), 13);
        wait_for("the frames", || {
            m1.rx_burst(&mut got, 32);
            got.len() == 13
        });
        assert_eq!(m0.rx_burst(&mut got, 32), 0);
    }

    #[test]
    fn descriptor_outside_the_regions_drops_only_that_frame() {
        let p = pair("baddesc");
        let mut mq = p.master.queue(0, Pool::new(1, 32, false).unwrap()).unwrap();
        let mut sq = p.slave.queue(0, Pool::new(2, 32, false).unwrap()).unwrap();
        assert!(mq.is_up() && sq.is_up());
        assert_eq!(sq.tx_burst_bytes(&[&[1u8; 60], &[2u8; 60], &[3u8; 60]]), 3);
        // The slave "lies" about its first two descriptors after publishing.
        let ring = conn(&p.slave).ring(true, 0);
        let d = ring.desc(0);
        ring.set_desc(0, Desc { region: 7, ..d });
        let d = ring.desc(1);
        ring.set_desc(
            1,
            Desc {
                offset: u32::MAX - 10,
                ..d
            },
        );
        let mut got = Vec::new();
        assert_eq!(mq.rx_burst(&mut got, 8), 1);
        assert_eq!(got[0].data(), &[3u8; 60][..]);
        assert_eq!(mq.stats().rx_dropped, 2);
        assert!(p.master.is_connected(), "a bad descriptor is not fatal");
    }

    #[test]
    fn ring_index_beyond_the_ring_ends_the_connection() {
        let p = pair("badindex");
        let mut mq = p.master.queue(0, Pool::new(1, 32, false).unwrap()).unwrap();
        assert!(mq.is_up());
        let first = p.master.connections();
        // head 21 ahead of the master's tail on a 16-slot ring.
        conn(&p.slave).ring(true, 0).set_head(21, Ordering::Release);
        let mut got = Vec::new();
        assert_eq!(mq.rx_burst(&mut got, 8), 0);
        // Until the control thread acts, the queue treats the link as down.
        assert_eq!(mq.tx_burst_bytes(&[&[0u8; 60]]), 1);
        assert_eq!(mq.stats().tx_dropped, 1);
        wait_for("the disconnect", || {
            p.master
                .last_event()
                .is_some_and(|e| e.contains("beyond the ring"))
        });
        // The slave was told, and reconnects with fresh rings.
        wait_for("the reconnect", || p.master.connections() > first);
        wait_for("the queue to see the link", || mq.is_up());
    }

    #[test]
    fn posted_buffer_outside_the_regions_ends_the_connection() {
        let p = pair("badpost");
        let mut mq = p.master.queue(0, Pool::new(1, 32, false).unwrap()).unwrap();
        assert!(mq.is_up());
        let ring = conn(&p.slave).ring(false, 0);
        let d = ring.desc(0);
        ring.set_desc(
            0,
            Desc {
                offset: u32::MAX - 100,
                ..d
            },
        );
        assert_eq!(mq.tx_burst_bytes(&[&[5u8; 200]]), 0);
        wait_for("the disconnect", || {
            p.master
                .last_event()
                .is_some_and(|e| e.contains("outside its regions"))
        });
        wait_for("the slave to hear it", || {
            p.slave
                .last_event()
                .is_some_and(|e| e.contains("outside its regions"))
        });
    }

    #[test]
    fn empty_frame_is_dropped_and_counted() {
        let p = pair("empty");
        let mut mq = p.master.queue(0, Pool::new(1, 32, false).unwrap()).unwrap();
        let mut sq = p.slave.queue(0, Pool::new(2, 32, false).unwrap()).unwrap();
        assert!(mq.is_up() && sq.is_up());
        assert_eq!(sq.tx_burst_bytes(&[&[1u8; 60], &[2u8; 60]]), 2);
        conn(&p.slave).ring(true, 0).set_len_flags(0, 0, 0);
        let mut got = Vec::new();
        assert_eq!(mq.rx_burst(&mut got, 8), 1);
        assert_eq!(got[0].data(), &[2u8; 60][..]);
        assert_eq!(mq.stats().rx_dropped, 1);
    }

    #[test]
    fn peer_in_interrupt_mode_gets_its_eventfd_signalled() {
        let p = pair("intr");
        let mut mq = p.master.queue(0, Pool::new(1, 32, false).unwrap()).unwrap();
        assert!(mq.is_up());
        let slave = conn(&p.slave);
        let ring = slave.ring(false, 0);
        let efd = slave.s2c[0].intr.as_fd();
        // Polling peer (MASK_INT set): no signal.
        assert_eq!(mq.tx_burst_bytes(&[&[1u8; 60]]), 1);
        assert!(control::poll_readable(&[efd], Some(Duration::ZERO)).unwrap() == 0);
        // The peer asks for interrupts: each burst signals once.
        ring.set_flags(0);
        assert_eq!(mq.tx_burst_bytes(&[&[2u8; 60], &[3u8; 60]]), 2);
        assert!(control::poll_readable(&[efd], Some(Duration::ZERO)).unwrap() == 1);
        control::eventfd_drain(efd);
    }

    #[test]
    fn chain_published_half_way_waits_for_the_rest() {
        let p = pair("halfchain");
        let mut mq = p.master.queue(0, Pool::new(1, 32, false).unwrap()).unwrap();
        let mut sq = p.slave.queue(0, Pool::new(2, 32, false).unwrap()).unwrap();
        assert!(mq.is_up() && sq.is_up());
        // Three-segment frame, published one slot at a time by hand.
        let frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert_eq!(sq.tx_burst_bytes(&[&frame]), 1);
        let ring = conn(&p.slave).ring(true, 0);
        ring.set_head(1, Ordering::Release);
        let mut got = Vec::new();
        assert_eq!(mq.rx_burst_bytes(4, |f| got.push(f.to_vec())), 0);
        ring.set_head(3, Ordering::Release);
        assert_eq!(mq.rx_burst_bytes(4, |f| got.push(f.to_vec())), 1);
        assert_eq!(got, vec![frame]);
    }
}
