//! NIC backends behind one queue-pair trait.
//!
//! The trait is shaped like a hardware queue pair (and like a DPDK ethdev
//! queue): burst receive of filled buffers, burst transmit, a buffer pool
//! per queue. Every backend receives into buffers of the queue's own
//! [`Pool`] (the backend's write into a fresh slot is the NIC's DMA) and
//! transmits buffers of any pool of the same core. Nothing blocks; nothing
//! allocates on the heap in steady state.
//!
//! Backends: [`memif`] (shared-memory packet interface, DPDK/VPP
//! compatible), [`af_packet`] (TPACKET_V3 rings on a Linux interface),
//! [`fault`] (a wrapper injecting loss, duplication, reordering and
//! corruption for tests), and with the `dpdk` cargo feature `dpdk` (any
//! DPDK ethdev: NICs and DPDK's virtual devices).

pub mod af_packet;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod fault;
pub mod memif;
pub mod pipe;

use crate::buf::{PktBuf, Pool};

/// Counters kept by every queue pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames the backend had to drop on receive (pool empty, oversize…).
    pub rx_dropped: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Frames dropped on transmit (oversize, peer gone).
    pub tx_dropped: u64,
}

/// One RX/TX queue pair of a port, owned by one elastic thread.
pub trait QueuePair {
    /// Receives up to `max` frames into buffers of [`Self::pool`], appending
    /// them to `out`. Returns how many were appended. Never blocks.
    fn rx_burst(&mut self, out: &mut Vec<PktBuf>, max: usize) -> usize;

    /// Transmits frames from the front of `frames`, removing those taken.
    /// Returns how many were taken; the rest stay (e.g. the ring is full)
    /// for a later call. Frames the backend cannot send at all are taken,
    /// dropped and counted.
    fn tx_burst(&mut self, frames: &mut Vec<PktBuf>) -> usize;

    /// The queue's buffer pool: RX lands here, and the stack allocates TX
    /// frames from it.
    fn pool(&self) -> &Pool;

    /// Counters.
    fn stats(&self) -> QueueStats;
}
