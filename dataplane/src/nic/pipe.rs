//! An in-process wire: two [`QueuePair`] ends joined back to back, for
//! tests and simulations that run both peers on one thread.
//!
//! A frame transmitted on one end is copied into a fresh slot of the
//! other end's pool at once (that copy is the receiving NIC's DMA) and
//! waits in the other end's receive queue until its `rx_burst`. The wire
//! never pushes back on the sender: like a NIC whose receive ring is full,
//! the receiver drops what it has no room for (queue at `capacity`, or
//! pool empty) and counts it in its `rx_dropped`. A frame sent after the
//! other end was dropped is counted in the sender's `tx_dropped`.
//!
//! The receive queues are allocated once, at full capacity: no heap
//! allocation after [`pair`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::buf::{PktBuf, Pool};
use crate::nic::{QueuePair, QueueStats};

/// One end's receive side and counters.
#[derive(Debug)]
struct End {
    pool: Pool,
    rx: VecDeque<PktBuf>,
    stats: QueueStats,
}

#[derive(Debug)]
struct Wire {
    ends: [End; 2],
    capacity: usize,
}

/// One end of a [`pair`].
#[derive(Debug)]
pub struct PipeQueue {
    wire: Rc<RefCell<Wire>>,
    side: usize,
    pool: Pool,
}

/// Joins two queue pairs: end `a` receives into `pool_a`, end `b` into
/// `pool_b`, and each end holds at most `capacity` received frames.
///
/// Panics if `capacity` is zero.
pub fn pair(pool_a: Pool, pool_b: Pool, capacity: usize) -> (PipeQueue, PipeQueue) {
    assert!(capacity > 0, "a pipe needs room for at least one frame");
    let end = |pool: &Pool| End {
        pool: pool.clone(),
        rx: VecDeque::with_capacity(capacity),
        stats: QueueStats::default(),
    };
    let wire = Rc::new(RefCell::new(Wire {
        ends: [end(&pool_a), end(&pool_b)],
        capacity,
    }));
    (
        PipeQueue {
            wire: wire.clone(),
            side: 0,
            pool: pool_a,
        },
        PipeQueue {
            wire,
            side: 1,
            pool: pool_b,
        },
    )
}

impl PipeQueue {
    /// Frames waiting in this end's receive queue.
    pub fn pending(&self) -> usize {
        self.wire.borrow().ends[self.side].rx.len()
    }
}

impl QueuePair for PipeQueue {
    fn rx_burst(&mut self, out: &mut Vec<PktBuf>, max: usize) -> usize {
        let mut wire = self.wire.borrow_mut();
        let end = &mut wire.ends[self.side];
        let n = max.min(end.rx.len());
        for buf in end.rx.drain(..n) {
            end.stats.rx_packets += 1;
            end.stats.rx_bytes += buf.len() as u64;
            out.push(buf);
        }
        n
    }

    fn tx_burst(&mut self, frames: &mut Vec<PktBuf>) -> usize {
        let peer_alive = Rc::strong_count(&self.wire) > 1;
        let mut wire = self.wire.borrow_mut();
        let capacity = wire.capacity;
        let [a, b] = &mut wire.ends;
        let (me, peer) = if self.side == 0 { (a, b) } else { (b, a) };
        let n = frames.len();
        for frame in frames.drain(..) {
            if !peer_alive {
                me.stats.tx_dropped += 1;
                continue;
            }
            me.stats.tx_packets += 1;
            me.stats.tx_bytes += frame.len() as u64;
            if peer.rx.len() == capacity {
                peer.stats.rx_dropped += 1;
                continue;
            }
            let Some(mut copy) = peer.pool.alloc() else {
                peer.stats.rx_dropped += 1;
                continue;
            };
            if !copy.extend_from_slice(frame.data()) {
                // Longer than a receive buffer: a NIC would drop it too.
                peer.stats.rx_dropped += 1;
                continue;
            }
            peer.rx.push_back(copy);
        }
        n
    }

    fn pool(&self) -> &Pool {
        &self.pool
    }

    fn stats(&self) -> QueueStats {
        self.wire.borrow().ends[self.side].stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{BUF_DATA, BUF_HEADROOM};

    fn pools(n: u32) -> (Pool, Pool) {
        (
            Pool::new(1, n, false).unwrap(),
            Pool::new(2, n, false).unwrap(),
        )
    }

    fn frame(pool: &Pool, bytes: &[u8]) -> PktBuf {
        let mut b = pool.alloc().unwrap();
        assert!(b.extend_from_slice(bytes));
        b
    }

    #[test]
    fn frames_cross_both_ways_into_the_receivers_pool() {
        let (pa, pb) = pools(8);
        let (mut a, mut b) = pair(pa.clone(), pb.clone(), 4);
        let mut tx = vec![frame(&pa, b"to b"), frame(&pa, b"again")];
        assert_eq!(a.tx_burst(&mut tx), 2);
        assert!(tx.is_empty());
        assert_eq!(pa.available(), 8, "sender's buffers are released");
        let mut rx = Vec::new();
        assert_eq!(b.rx_burst(&mut rx, 8), 2);
        assert_eq!(rx[0].data(), b"to b");
        assert_eq!(rx[1].data(), b"again");
        assert!(pb.owns(&rx[0]));
        assert_eq!(rx[0].headroom(), BUF_HEADROOM);

        let mut tx = vec![frame(&pb, b"to a")];
        b.tx_burst(&mut tx);
        let mut back = Vec::new();
        assert_eq!(a.rx_burst(&mut back, 8), 1);
        assert_eq!(back[0].data(), b"to a");
        assert_eq!(a.stats().tx_packets, 2);
        assert_eq!(a.stats().tx_bytes, 9);
        assert_eq!(b.stats().rx_packets, 2);
        assert_eq!(a.stats().rx_packets, 1);
    }

    #[test]
    fn rx_burst_takes_at_most_max_in_order() {
        let (pa, pb) = pools(8);
        let (mut a, mut b) = pair(pa.clone(), pb, 8);
        let mut tx: Vec<_> = (0..5u8).map(|i| frame(&pa, &[i])).collect();
        a.tx_burst(&mut tx);
        let mut rx = Vec::new();
        assert_eq!(b.rx_burst(&mut rx, 3), 3);
        assert_eq!(b.pending(), 2);
        assert_eq!(b.rx_burst(&mut rx, 3), 2);
        let order: Vec<u8> = rx.iter().map(|f| f.data()[0]).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn full_receive_queue_drops_and_counts() {
        let (pa, pb) = pools(16);
        let (mut a, b) = pair(pa.clone(), pb.clone(), 3);
        let mut tx: Vec<_> = (0..5u8).map(|i| frame(&pa, &[i])).collect();
        assert_eq!(a.tx_burst(&mut tx), 5, "the wire never pushes back");
        assert_eq!(b.pending(), 3);
        assert_eq!(b.stats().rx_dropped, 2);
        assert_eq!(a.stats().tx_packets, 5);
        assert_eq!(pb.available(), 13);
    }

    #[test]
    fn empty_receiver_pool_drops_and_counts() {
        let pa = Pool::new(1, 4, false).unwrap();
        let pb = Pool::new(2, 1, false).unwrap();
        let (mut a, b) = pair(pa.clone(), pb, 8);
        let mut tx = vec![frame(&pa, b"x"), frame(&pa, b"y")];
        a.tx_burst(&mut tx);
        assert_eq!(b.pending(), 1);
        assert_eq!(b.stats().rx_dropped, 1);
    }

    #[test]
    fn frame_longer_than_a_buffer_is_dropped() {
        let (pa, pb) = pools(4);
        let (mut a, b) = pair(pa.clone(), pb, 8);
        let mut big = pa.alloc().unwrap();
        assert!(big.append(BUF_DATA));
        assert!(big.prepend(10));
        a.tx_burst(&mut vec![big]);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.stats().rx_dropped, 1);
    }

    #[test]
    fn sending_to_a_dropped_peer_counts_tx_dropped() {
        let (pa, pb) = pools(4);
        let (mut a, b) = pair(pa.clone(), pb, 8);
        drop(b);
        assert_eq!(a.tx_burst(&mut vec![frame(&pa, b"lost")]), 1);
        assert_eq!(a.stats().tx_dropped, 1);
        assert_eq!(a.stats().tx_packets, 0);
    }
}
