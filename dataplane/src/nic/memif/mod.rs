//! memif: the shared-memory packet interface of DPDK (`net_memif`), VPP
//! and libmemif, implemented natively — the dataplane's default "wire".
//!
//! Two endpoints meet on a Unix seqpacket socket. The **master** (DPDK
//! calls it *server*) listens; the **slave** (*client*) connects and owns
//! all shared memory: it creates the regions (memfds) and rings, and hands
//! them to the master as file descriptors (`SCM_RIGHTS`) during the
//! handshake (see `handshake` for the message sequence and `proto` for
//! the 128-byte messages). After CONNECTED, frames travel through
//! descriptor rings in the regions, without system calls:
//!
//! - **client-to-server rings** (slave → master): the slave produces at
//!   `head` (descriptor points at one of its buffers, length, `NEXT` flag
//!   for chained buffers) and publishes with a release store of `head`;
//!   the master consumes from its private cursor up to `head` (acquire)
//!   and hands the slots back with a release store of `tail`.
//! - **server-to-client rings** (master → slave): the slave *posts* empty
//!   buffers by advancing `head` (release); the master fills posted
//!   buffers from its cursor, sets length and flags, and publishes with a
//!   release store of `tail`; the slave consumes up to `tail` (acquire)
//!   and re-posts the slots.
//!
//! Both sides zero head and tail on connecting and set the ring flag
//! `MASK_INT` on the rings they receive from: this backend polls, so a
//! peer never needs to signal the per-ring eventfds. The eventfds are
//! still exchanged (the protocol requires them) and signalled when a peer
//! receives in interrupt mode (its `MASK_INT` clear).
//!
//! # Queues, and RSS steering (an extension, both ends libix dataplanes)
//!
//! With [`Steering::None`] queue *k* sends on ring *k* and receives on ring
//! *k* of the other direction, exactly as DPDK's `net_memif` pairs queues
//! and rings: a DPDK or VPP peer needs nothing special. With
//! [`Steering::Rss`] the sender places each frame in the queue the
//! *receiver's* redirection table chooses, as NIC hardware would. To
//! keep every ring single-producer/single-consumer there are Q×Q rings
//! per direction: sender queue *k*, receiver queue *j* → ring `k*Q + j`;
//! receiver queue *j* polls rings `{k*Q + j}`. With one queue both
//! layouts are the same and nothing is steered.
//!
//! Each end's [`RssConfig`] is its *own* receive side: the Toeplitz key
//! and the initial redirection table (flow group → queue). Both ends must
//! have the same number of queues, the same key (the sender hashes with
//! its own key; with different keys frames would land on queues the
//! receiver did not choose) and the same number of flow groups (1..=512).
//! The master checks key and group count against the steering area
//! header the slave wrote and refuses the connection otherwise. The
//! tables themselves may differ.
//!
//! The tables live in the wire's shared memory, in a **steering area**:
//! the slave makes region 0 (the rings) one 4 KiB page longer, and the
//! area is the last [`STEER_AREA_LEN`] bytes of region 0 (start rounded
//! down to 64 bytes, so both ends find it from the region size alone).
//! It holds a header (magic `"IXRS"`, version 1, flow groups, the slave's
//! key), then the
//! master's receive table (steering client-to-server rings) and the
//! slave's (server-to-client), each an active-queue bit mask `u32` and a
//! `u16` per flow group; the `steer` module has the byte offsets. The
//! slave writes the header and its table when it creates the region, the
//! master checks that the area is clear of every ring and that the
//! header matches before it writes its own table, and only then answers
//! CONNECTED — so each side's table is in place before the peer's first
//! frame. Both write their table again when the link comes up (a change
//! made during the handshake), and every reconnect starts over on fresh
//! memory from the table last set.
//!
//! At run time [`MemifPort::set_rx_table`] publishes a new own table
//! (entry by entry, relaxed atomic stores; the mask is first widened to
//! old ∪ new queues and narrowed afterwards). The sender's transmit path
//! reads the peer's entry for each frame's flow group with one relaxed
//! atomic load — no lock, no system call — so the next frame follows the
//! new table. Frames already in a ring stay with the queue they were put
//! in: moving a flow between queues keeps its order only if the old
//! queue is drained before the new one sees the flow's next frames.
//!
//! A frame that cannot be hashed (ARP, anything not TCP/UDP over IPv4)
//! goes to every queue whose bit is set in the peer's active-queue mask —
//! every queue that appears in its table — like a broadcast, so each of
//! the peer's running cores keeps its own neighbour table; idle queues
//! (no flow group, rings nobody polls) get none.
//!
//! The port opens all Q queues' rings (Q = [`MemifConfig::queues`], the
//! most cores the dataplane may run); a core added later takes its queue
//! with [`MemifPort::queue`] at any time, and a queue dropped (a core
//! removed) can be taken again; its ring cursors live in the shared rings.
//!
//! **A misbehaving peer** can write anything into its table. Nothing it
//! writes is used as an index without a bounds check: an entry naming a
//! queue the port does not have drops the frame and counts it
//! ([`MemifQueue::steer_dropped`], also in `tx_dropped`), mask bits beyond
//! the port's queues are ignored, and an empty mask drops unhashable
//! frames (counted the same way). A peer can thus misroute or lose only
//! its own incoming traffic. The area is accessed only through atomics at
//! offsets, never as a byte slice.
//!
//! # Memory and limits
//!
//! The slave allocates 2 × rings × ring size buffers of `buffer_size`
//! bytes (hugepages when reserved). Descriptor offsets are 32-bit, so that
//! must stay below 4 GiB. Both ends should use the same `buffer_size`:
//! DPDK's master writes up to its own buffer size into posted buffers.
//!
//! A received frame is copied into a fresh slot of the queue's [`Pool`]
//! (that copy is this NIC's DMA); frames longer than a slot's data area
//! ([`crate::buf::BUF_DATA`]) cannot be delivered as one [`PktBuf`] and are
//! dropped and counted. [`MemifQueue::rx_burst_bytes`] and
//! [`MemifQueue::tx_burst_bytes`] carry frames of any size up to
//! [`MAX_FRAME_LEN`] (jumbo frames, chained over several buffers).
//!
//! # Misbehaving peers
//!
//! A malformed or out-of-order control message ends the connection with a
//! DISCONNECT naming the problem. Descriptors are validated against the
//! mapped regions before any copy; a frame with an invalid descriptor is
//! dropped and counted; ring indices that make no sense, or a posted
//! buffer outside the regions, end the connection. Nothing a peer sends
//! can make this side panic or touch memory outside the regions.
//!
//! One risk remains and is accepted: a slave that *shrinks* a region's
//! file after the master mapped it makes the master's next access to the
//! lost pages raise SIGBUS. The master checks at ADD_REGION that the fd
//! holds the declared size; DPDK and this backend seal their 4 KiB-page
//! regions against shrinking (`F_SEAL_SHRINK`), hugetlb memfds cannot be
//! sealed. Run untrusted peers in separate isolation domains.
//!
//! # Socket paths
//!
//! A path starting with `@` is an abstract-namespace address (DPDK's
//! default; DPDK needs `socket-abstract=no` to use a filesystem path).
//!
//! [`Pool`]: crate::buf::Pool
//! [`PktBuf`]: crate::buf::PktBuf

mod control;
mod handshake;
mod port;
pub mod proto;
mod queue;
mod ring;
mod steer;

use std::path::PathBuf;
use std::time::Duration;

pub use port::MemifPort;
pub use queue::MemifQueue;
pub use steer::{MAX_FLOW_GROUPS, STEER_AREA_LEN};

use crate::rss::RssConfig;

/// Largest frame [`MemifQueue::tx_burst_bytes`] sends and
/// [`MemifQueue::rx_burst_bytes`] receives.
pub const MAX_FRAME_LEN: usize = 65_536;

/// Which end of the socket this port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemifRole {
    /// Listens on the socket (DPDK: `role=server`).
    Master,
    /// Connects to the socket and owns the shared memory (DPDK:
    /// `role=client`).
    Slave,
}

/// How frames are spread over the peer's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steering {
    /// Queue *k* ↔ ring *k* in each direction, as DPDK.
    None,
    /// Each frame goes to the queue the *peer's* current redirection
    /// table picks (Q×Q rings per direction; see the module docs). The
    /// configuration is *this end's* receive side: the Toeplitz key (the
    /// same at both ends) and the initial receive table (1..=512 flow
    /// groups, the same number at both ends; change it at run time with
    /// [`MemifPort::set_rx_table`]).
    Rss(RssConfig),
}

/// Configuration of one memif port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemifConfig {
    /// Control socket (`@name` for the abstract namespace).
    pub socket_path: PathBuf,
    /// Master or slave.
    pub role: MemifRole,
    /// Interface id; a master serves the slave that asks for its id.
    pub id: u32,
    /// Shared secret the master requires (at most 23 bytes).
    pub secret: Option<String>,
    /// Name sent to the peer (at most 31 bytes).
    pub name: String,
    /// Queue pairs (1..).
    pub queues: u16,
    /// Descriptors per ring, as log2 (1..=14; default 10).
    pub log2_ring_size: u8,
    /// Bytes per shared packet buffer (64..=65535; default 2048).
    pub buffer_size: u32,
    /// Frame placement over queues.
    pub steering: Steering,
}

impl MemifConfig {
    /// A one-queue configuration with DPDK's defaults: id 0, no secret,
    /// 1024-descriptor rings, 2048-byte buffers, no steering.
    pub fn new(socket_path: impl Into<PathBuf>, role: MemifRole) -> MemifConfig {
        MemifConfig {
            socket_path: socket_path.into(),
            role,
            id: 0,
            secret: None,
            name: "ix".into(),
            queues: 1,
            log2_ring_size: 10,
            buffer_size: 2048,
            steering: Steering::None,
        }
    }

    /// Rings per direction: Q×Q with RSS steering over several queues,
    /// else Q.
    pub fn rings_per_direction(&self) -> usize {
        let q = usize::from(self.queues);
        match self.steering {
            Steering::Rss(_) if q > 1 => q * q,
            _ => q,
        }
    }

    /// The RSS configuration when frames are steered (RSS steering and
    /// more than one queue; with one queue there is nothing to steer).
    pub fn rss_steering(&self) -> Option<&RssConfig> {
        match &self.steering {
            Steering::Rss(r) if self.queues > 1 => Some(r),
            _ => None,
        }
    }

    /// Bytes of packet buffers the slave allocates.
    pub fn buffer_bytes(&self) -> u64 {
        2 * self.rings_per_direction() as u64
            * (1u64 << self.log2_ring_size.min(63))
            * u64::from(self.buffer_size)
    }

    /// Checks every field; the error names the field and its allowed range.
    pub fn validate(&self) -> Result<(), MemifError> {
        let range = |field, value: u64, lo: u64, hi: u64, allowed| {
            if value < lo || value > hi {
                Err(MemifError::Config {
                    field,
                    value,
                    allowed,
                })
            } else {
                Ok(())
            }
        };
        range("queues", self.queues.into(), 1, 256, "1..=256")?;
        range(
            "rings per direction",
            self.rings_per_direction() as u64,
            1,
            256,
            "at most 256 (RSS steering needs queues² rings: at most 16 queues)",
        )?;
        range(
            "log2_ring_size",
            self.log2_ring_size.into(),
            1,
            ring::MAX_LOG2_RING_SIZE.into(),
            "1..=14",
        )?;
        range(
            "buffer_size",
            self.buffer_size.into(),
            64,
            65_535,
            "64..=65535",
        )?;
        range(
            "name length",
            self.name.len() as u64,
            0,
            (proto::NAME_LEN - 1) as u64,
            "at most 31 bytes",
        )?;
        if let Some(s) = &self.secret {
            range(
                "secret length",
                s.len() as u64,
                0,
                (proto::SECRET_LEN - 1) as u64,
                "at most 23 bytes",
            )?;
        }
        if let Steering::Rss(rss) = &self.steering {
            range(
                "RSS redirection table length",
                rss.reta.len() as u64,
                1,
                steer::MAX_FLOW_GROUPS as u64,
                "1..=512 flow groups",
            )?;
            if let Some((group, &queue)) =
                rss.reta.iter().enumerate().find(|(_, &q)| q >= self.queues)
            {
                return Err(MemifError::Reta {
                    group,
                    queue,
                    queues: self.queues,
                });
            }
        }
        let bytes = self.buffer_bytes();
        if bytes > u64::from(u32::MAX) {
            return Err(MemifError::TooLarge { bytes });
        }
        Ok(())
    }
}

/// Errors of the memif backend's public API.
#[derive(Debug, thiserror::Error)]
pub enum MemifError {
    /// A configuration field is out of range.
    #[error("memif {field} = {value} is out of range (allowed: {allowed})")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value (a length for strings).
        value: u64,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The RSS redirection table names a queue the port does not have.
    #[error("memif RSS table sends flow group {group} to queue {queue}, but the port has {queues} queues")]
    Reta {
        /// Flow group.
        group: usize,
        /// Queue named.
        queue: u16,
        /// Queues of the port.
        queues: u16,
    },
    /// A new receive table has another number of flow groups than the
    /// configured one.
    #[error("memif RSS table of {len} flow groups given, the port was configured with {groups} (both ends must agree on the number)")]
    RetaLength {
        /// Length given.
        len: usize,
        /// Length configured.
        groups: usize,
    },
    /// The port does not steer by RSS, so it has no receive table.
    #[error(
        "memif port is not configured with Steering::Rss: it has no redirection table to change"
    )]
    NotSteering,
    /// The buffer memory would not fit 32-bit region offsets.
    #[error("memif buffers need {bytes} bytes, more than 32-bit offsets reach — use fewer queues, smaller rings or smaller buffers")]
    TooLarge {
        /// Bytes needed.
        bytes: u64,
    },
    /// The master could not listen on its socket.
    #[error("cannot listen on memif socket {path:?}: {source} — is another master serving it?")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: control::ControlError,
    },
    /// The control thread could not be started.
    #[error("cannot start the memif control thread: {0}")]
    Thread(std::io::Error),
    /// The port has no such queue.
    #[error("memif queue {queue} does not exist (the port has {queues})")]
    NoSuchQueue {
        /// Queue asked for.
        queue: u16,
        /// Queues of the port.
        queues: u16,
    },
    /// The queue was already handed out and is still alive.
    #[error("memif queue {queue} is already in use (drop the other MemifQueue first)")]
    QueueInUse {
        /// The queue.
        queue: u16,
    },
    /// The link did not come up in time.
    #[error("memif link on {path:?} not up after {waited:?} (last event: {})", .last.as_deref().unwrap_or("no peer yet"))]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The last handshake failure or disconnect reason, if any.
        last: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = MemifConfig::new("/tmp/x.sock", MemifRole::Slave);
        c.validate().unwrap();
        assert_eq!(c.rings_per_direction(), 1);
        assert_eq!(c.buffer_bytes(), 2 * 1024 * 2048);
    }

    #[test]
    fn rss_layout_squares_the_rings() {
        let mut c = MemifConfig::new("/tmp/x.sock", MemifRole::Slave);
        c.queues = 4;
        assert_eq!(c.rings_per_direction(), 4);
        c.steering = Steering::Rss(RssConfig::round_robin(4, 128));
        assert_eq!(c.rings_per_direction(), 16);
        c.validate().unwrap();
        c.queues = 1;
        c.steering = Steering::Rss(RssConfig::round_robin(1, 128));
        assert_eq!(c.rings_per_direction(), 1);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let base = MemifConfig::new("/tmp/x.sock", MemifRole::Master);
        let cases: Vec<(MemifConfig, &str)> = vec![
            (
                MemifConfig {
                    queues: 0,
                    ..base.clone()
                },
                "queues",
            ),
            (
                MemifConfig {
                    log2_ring_size: 15,
                    ..base.clone()
                },
                "log2_ring_size",
            ),
            (
                MemifConfig {
                    buffer_size: 32,
                    ..base.clone()
                },
                "buffer_size",
            ),
            (
                MemifConfig {
                    name: "n".repeat(32),
                    ..base.clone()
                },
                "name length",
            ),
            (
                MemifConfig {
                    secret: Some("s".repeat(24)),
                    ..base.clone()
                },
                "secret length",
            ),
            (
                MemifConfig {
                    queues: 17,
                    steering: Steering::Rss(RssConfig::round_robin(17, 128)),
                    ..base.clone()
                },
                "rings per direction",
            ),
        ];
        for (c, field) in cases {
            match c.validate() {
                Err(MemifError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn reta_naming_a_missing_queue_is_refused() {
        let mut c = MemifConfig::new("/tmp/x.sock", MemifRole::Master);
        c.queues = 2;
        c.steering = Steering::Rss(RssConfig::round_robin(3, 6));
        assert!(matches!(
            c.validate(),
            Err(MemifError::Reta {
                group: 2,
                queue: 2,
                queues: 2
            })
        ));
    }

    #[test]
    fn oversized_buffer_memory_is_refused() {
        let mut c = MemifConfig::new("/tmp/x.sock", MemifRole::Slave);
        c.queues = 16;
        c.steering = Steering::Rss(RssConfig::round_robin(16, 128));
        c.log2_ring_size = 14;
        assert!(matches!(c.validate(), Err(MemifError::TooLarge { .. })));
    }
}
