//! AF_PACKET backend: a [`QueuePair`] on a Linux network interface through
//! memory-mapped `TPACKET_V2` or `TPACKET_V3` rings (`packet(7)`; the
//! kernel's `Documentation/networking/packet_mmap.rst`).
//!
//! This is how real Linux TCP stacks reach the dataplane in tests: one end
//! of a veth pair sits in a network namespace with the Linux stack, the
//! other end is opened here and carries the dataplane's own MAC and IP.
//!
//! # Rings
//!
//! One `AF_PACKET`/`SOCK_RAW` socket, bound to the interface for all
//! protocols, with two rings in one shared mapping (RX first, then TX),
//! in one of two formats ([`AfPacketConfig::version`]):
//!
//! - **RX, `TPACKET_V3`**: the kernel fills variable-sized frames into
//!   blocks and hands a whole block to user space when it is full or when
//!   the block's retire timer ([`AfPacketConfig::block_timeout_ms`]) fires.
//!   [`QueuePair::rx_burst`] walks the handed-over blocks in order, copies
//!   each frame into a fresh slot of the queue's [`Pool`] (that copy stands
//!   in for a NIC's DMA), and returns each block to the kernel as soon as
//!   its last frame is taken. RX costs no system call.
//! - **TX, `TPACKET_V3` fixed-size frames**: since Linux 4.11 a V3 socket
//!   has a TX ring with the V2 semantics (fixed frames, `tp_next_offset`
//!   must be 0; block-wise TX is not supported). [`QueuePair::tx_burst`]
//!   copies each frame into the next free slot, marks it
//!   `TP_STATUS_SEND_REQUEST`, and kicks the kernel with one non-blocking
//!   `sendto(fd, NULL, 0, MSG_DONTWAIT)` per burst. That system call per
//!   burst is inherent to AF_PACKET (the kernel has no TX doorbell in
//!   memory); AF_XDP or a real NIC would avoid it.
//! - **RX and TX, `TPACKET_V2`** (the default): both rings hold
//!   fixed-size frame slots with a status word each. RX frames reach user
//!   space one by one as the kernel writes them, with no block timer, at
//!   the price of a whole slot per frame (frames longer than a slot are
//!   dropped and counted). RX is copied into the pool the same way; TX
//!   works exactly as under V3.
//!
//! Why V2 is the default: on veth, a ping through this backend measured a
//! median round trip of 5-7 µs with V2 and 1 ms with V3 (the block retire
//! timer; see below). Both keep up with a 230-400 kframes/s blast from the
//! namespace while the receiving thread runs; but V3 packs small frames
//! densely (about 14 000 60-byte frames per 2 MiB, against 1 024 V2
//! slots), so it rides out longer stalls of a descheduled receiver: with
//! 2 MiB rings and the CPU shared with other tests, V2 once lost 45% of
//! such a blast where V3 lost none. The default ring is therefore 8 MiB
//! (4 096 V2 slots). Choose V3 when receive bursts matter more than
//! latency.
//!
//! # Deviations and caveats
//!
//! - **Latency floor at low load (V3).** A V3 block reaches user space
//!   only when full or retired, so a lone frame waits up to the retire
//!   timeout (at least 1 ms; measured round trips over veth: median about
//!   1 ms). Under load blocks fill and the timer does not matter. Use
//!   [`TpacketVersion::V2`] for request/response tests.
//! - **Checksums.** Frames sent by a Linux peer over veth with TX checksum
//!   offload on carry partial checksums (`CHECKSUM_PARTIAL`, reported as
//!   `TP_STATUS_CSUMNOTREADY`). They are dropped and counted
//!   ([`AfPacketStats::rx_csum_not_ready`]); turn the peer's offload off
//!   (`ethtool -K <peer> tx off`, which the `ix-testnet` harness does).
//! - **Promiscuous.** The dataplane uses its own MAC, not the interface's,
//!   so the socket adds a `PACKET_MR_PROMISC` membership (dropped again by
//!   the kernel when the socket closes).
//! - **Own frames.** `PACKET_IGNORE_OUTGOING` (Linux 4.20) keeps our own
//!   transmissions out of the RX ring; frames the kernel still marks
//!   `PACKET_OUTGOING` are skipped and counted.
//! - **Multi-queue.** [`AfPacketPort::open_queues`] puts several sockets
//!   in one `PACKET_FANOUT_HASH` group. The kernel spreads flows by its own
//!   flow hash, not by our Toeplitz key and redirection table
//!   ([`crate::rss`]): flow groups cannot be steered or migrated on this
//!   backend. (A `PACKET_FANOUT_EBPF` program reading the table from a map
//!   could follow it; not done.)
//! - **MTU** is read once at open; frames longer than MTU + 14 bytes are
//!   dropped on TX and counted.
//!
//! # Shared memory
//!
//! The ring mapping is written by the kernel concurrently with us, so no
//! `&[u8]` or `&mut [u8]` is ever formed over it: status words are atomic
//! (acquire on read, release on hand-back), other fields are read at
//! offsets, and frame bytes are copied. Offsets read from the ring are
//! checked against the block before use, so even a corrupt ring cannot
//! make the walker read outside the mapping; such frames are counted as
//! malformed.

mod sys;

use std::ffi::CString;
use std::io;

use crate::buf::{PktBuf, Pool};
use crate::nic::{QueuePair, QueueStats};
use sys::{PacketSocket, RingMap, TpacketReq3};

/// Length of an Ethernet header: the shortest frame the kernel transmits.
const ETH_HLEN: usize = 14;

/// Status bits of `<linux/if_packet.h>`.
mod status {
    /// RX block (or TX frame) belongs to the kernel / is available.
    pub const KERNEL: u32 = 0;
    /// RX block handed to user space.
    pub const USER: u32 = 1 << 0;
    /// RX: the kernel dropped frames since the last block (ring full).
    pub const LOSING: u32 = 1 << 2;
    /// RX frame: checksum not computed yet (`CHECKSUM_PARTIAL`).
    pub const CSUMNOTREADY: u32 = 1 << 3;
    /// TX frame: ready for the kernel to send.
    pub const SEND_REQUEST: u32 = 1 << 0;
    /// TX frame: being sent (the skb is alive).
    pub const SENDING: u32 = 1 << 1;
    /// TX frame: the kernel rejected its format.
    pub const WRONG_FORMAT: u32 = 1 << 2;
}

/// Offsets in `struct tpacket_block_desc` (`tpacket_hdr_v1` at 8).
mod blk {
    /// `block_status`.
    pub const STATUS: usize = 8;
    /// `num_pkts`.
    pub const NUM_PKTS: usize = 12;
    /// `offset_to_first_pkt`.
    pub const FIRST_PKT: usize = 16;
    /// Size of the descriptor: no frame starts before this.
    pub const SIZE: usize = 48;
}

/// `sizeof(struct sockaddr_ll)`, which follows each frame header.
const SLL_SIZE: usize = 20;

/// Where the fields of a frame header are (`struct tpacket2_hdr` or
/// `struct tpacket3_hdr`, then a 16-aligned `struct sockaddr_ll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// `tp_status`.
    status: usize,
    /// `tp_len`: bytes of the frame on the wire.
    len: usize,
    /// `tp_snaplen`: bytes present in the ring.
    snaplen: usize,
    /// `tp_mac` (16 bits): offset of the frame from the header.
    mac: usize,
    /// `sll_pkttype` of the `sockaddr_ll` after the header.
    pkttype: usize,
    /// `TPACKETx_HDRLEN`: the smallest legal frame size.
    hdrlen: usize,
    /// Where TX frame data starts: `TPACKETx_HDRLEN - sizeof(sockaddr_ll)`.
    tx_data: usize,
    /// `tp_next_offset` (V3 only).
    next_offset: Option<usize>,
}

/// `struct tpacket2_hdr` is 32 bytes.
const V2: Layout = Layout {
    status: 0,
    len: 4,
    snaplen: 8,
    mac: 12,
    pkttype: 32 + 10,
    hdrlen: 32 + SLL_SIZE,
    tx_data: 32,
    next_offset: None,
};

/// `struct tpacket3_hdr` is 48 bytes.
const V3: Layout = Layout {
    status: 20,
    len: 16,
    snaplen: 12,
    mac: 24,
    pkttype: 48 + 10,
    hdrlen: 48 + SLL_SIZE,
    tx_data: 48,
    next_offset: Some(0),
};

/// `sll_pkttype` of a frame we sent ourselves.
const PACKET_OUTGOING: u8 = 4;
/// Ring block sizes must be multiples of the page size.
const RING_PAGE: u32 = 4096;

/// Errors from opening or querying an AF_PACKET queue.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    /// The interface does not exist (in this network namespace).
    #[error(
        "interface {ifname}: no such device — check `ip link show` (and the network namespace)"
    )]
    NoSuchDevice {
        /// Interface name.
        ifname: String,
    },
    /// The name cannot be an interface name.
    #[error("interface name {ifname:?} is invalid: it must be 1-15 bytes without NUL")]
    BadName {
        /// The name given.
        ifname: String,
    },
    /// Packet sockets need `CAP_NET_RAW`.
    #[error("interface {ifname}: a packet socket needs CAP_NET_RAW — run as root")]
    NeedsCapNetRaw {
        /// Interface name.
        ifname: String,
    },
    /// The interface is administratively down.
    #[error("interface {ifname} is down — bring it up with `ip link set {ifname} up`")]
    InterfaceDown {
        /// Interface name.
        ifname: String,
    },
    /// A configuration value breaks a kernel rule.
    #[error("af_packet config: {field} = {value} {rule}")]
    BadConfig {
        /// The offending field of [`AfPacketConfig`].
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it must satisfy.
        rule: &'static str,
    },
    /// A system call failed.
    #[error("interface {ifname}: {op} failed: {source}")]
    Sys {
        /// Interface name.
        ifname: String,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The ring format (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpacketVersion {
    /// Fixed-size frame slots on RX and TX: frames reach user space one by
    /// one, no timer latency.
    V2,
    /// Variable-sized frames packed in RX blocks handed over when full or
    /// retired; fixed TX slots.
    V3,
}

/// Ring geometry and socket options of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfPacketConfig {
    /// Ring format (default V2: lowest latency; see the module docs).
    pub version: TpacketVersion,
    /// Size of a ring block in bytes: a multiple of 4096. Under V3,
    /// smaller RX blocks reach user space sooner under moderate load.
    pub block_size: u32,
    /// Number of RX blocks.
    pub block_count: u32,
    /// V3 RX block retire timeout in milliseconds (at least 1): the
    /// latency of a lone frame. Unused by V2.
    pub block_timeout_ms: u32,
    /// Size of a frame slot (header included): a multiple of 16 and at
    /// most `block_size`. TX slots under both versions, RX slots under
    /// V2; frames up to `frame_size - 48` bytes fit (V3 TX; `- 32` for V2
    /// TX, about `- 80` for V2 RX).
    pub frame_size: u32,
    /// Number of TX frame slots (rounded up to whole blocks).
    pub tx_frames: u32,
    /// Bypass the qdisc layer on TX (`PACKET_QDISC_BYPASS`): faster, but
    /// no traffic shaping and drops instead of queueing when the driver is
    /// busy.
    pub qdisc_bypass: bool,
    /// Put the interface in promiscuous mode while the socket is open, so
    /// frames to our own MAC (not the interface's) arrive.
    pub promiscuous: bool,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        AfPacketConfig {
            version: TpacketVersion::V2,
            block_size: 1 << 16,
            block_count: 128,
            block_timeout_ms: 1,
            frame_size: 2048,
            tx_frames: 1024,
            qdisc_bypass: true,
            promiscuous: true,
        }
    }
}

/// Ring sizes derived from a validated [`AfPacketConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    layout: Layout,
    rx: TpacketReq3,
    tx: TpacketReq3,
}

impl Geometry {
    fn rx_bytes(&self) -> usize {
        self.rx.block_size as usize * self.rx.block_nr as usize
    }

    fn tx_bytes(&self) -> usize {
        self.tx.block_size as usize * self.tx.block_nr as usize
    }
}

impl AfPacketConfig {
    fn geometry(&self) -> Result<Geometry, AfPacketError> {
        let bad = |field, value: u32, rule| {
            Err(AfPacketError::BadConfig {
                field,
                value: value.into(),
                rule,
            })
        };
        if self.block_size == 0 || !self.block_size.is_multiple_of(RING_PAGE) {
            return bad(
                "block_size",
                self.block_size,
                "must be a positive multiple of 4096",
            );
        }
        if self.block_count == 0 {
            return bad("block_count", self.block_count, "must be at least 1");
        }
        if self.block_timeout_ms == 0 {
            return bad(
                "block_timeout_ms",
                self.block_timeout_ms,
                "must be at least 1",
            );
        }
        let min_frame = (V3.tx_data + 64) as u32;
        if !self.frame_size.is_multiple_of(16)
            || self.frame_size < min_frame
            || self.frame_size > self.block_size
        {
            return bad(
                "frame_size",
                self.frame_size,
                "must be a multiple of 16, at least 112 and at most block_size",
            );
        }
        if self.tx_frames == 0 {
            return bad("tx_frames", self.tx_frames, "must be at least 1");
        }
        let rx_bytes = u64::from(self.block_size) * u64::from(self.block_count);
        let per_block = self.block_size / self.frame_size;
        let tx_blocks = self.tx_frames.div_ceil(per_block);
        let tx_bytes = u64::from(self.block_size) * u64::from(tx_blocks);
        if rx_bytes + tx_bytes > 1 << 31 {
            return Err(AfPacketError::BadConfig {
                field: "block_size * block_count",
                value: rx_bytes + tx_bytes,
                rule: "plus the TX ring must stay under 2 GiB",
            });
        }
        let (layout, retire_blk_tov) = match self.version {
            TpacketVersion::V2 => (V2, 0),
            TpacketVersion::V3 => (V3, self.block_timeout_ms),
        };
        Ok(Geometry {
            layout,
            rx: TpacketReq3 {
                block_size: self.block_size,
                block_nr: self.block_count,
                frame_size: self.frame_size,
                frame_nr: per_block * self.block_count,
                retire_blk_tov,
                sizeof_priv: 0,
                feature_req_word: 0,
            },
            // The kernel refuses a V3 TX ring with a retire timeout,
            // private area or feature word (and reads none of them for V2).
            tx: TpacketReq3 {
                block_size: self.block_size,
                block_nr: tx_blocks,
                frame_size: self.frame_size,
                frame_nr: per_block * tx_blocks,
                retire_blk_tov: 0,
                sizeof_priv: 0,
                feature_req_word: 0,
            },
        })
    }
}

/// What the kernel reports about an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// MTU (bytes of IP packet, Ethernet header excluded).
    pub mtu: u32,
    /// Whether the interface is administratively up (`IFF_UP`).
    pub up: bool,
}

/// Looks up index, MAC, MTU and state of `ifname` (needs no privilege).
pub fn interface_info(ifname: &str) -> Result<InterfaceInfo, AfPacketError> {
    let cname = if_cname(ifname)?;
    let map_err = |op, source: io::Error| match source.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => AfPacketError::NoSuchDevice {
            ifname: ifname.to_owned(),
        },
        _ => AfPacketError::Sys {
            ifname: ifname.to_owned(),
            op,
            source,
        },
    };
    let index = sys::if_index(&cname).map_err(|e| map_err("if_nametoindex", e))?;
    let info = sys::if_info(&cname).map_err(|e| map_err("SIOCGIF* ioctl", e))?;
    Ok(InterfaceInfo {
        index,
        mac: info.mac,
        mtu: info.mtu,
        up: info.flags & libc::IFF_UP as u32 != 0,
    })
}

fn if_cname(ifname: &str) -> Result<CString, AfPacketError> {
    let bad = || AfPacketError::BadName {
        ifname: ifname.to_owned(),
    };
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(bad());
    }
    CString::new(ifname).map_err(|_| bad())
}

/// Backend-specific counters of an [`AfPacketQueue`], beyond
/// [`QueueStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AfPacketStats {
    /// V3 RX blocks consumed and returned to the kernel.
    pub rx_blocks: u64,
    /// V3 blocks or V2 frames flagged `TP_STATUS_LOSING`: the kernel has
    /// dropped frames for want of ring space since its counters were last
    /// read (the flag stays set until [`AfPacketQueue::kernel_stats`]
    /// reads them, and that says how many).
    pub rx_losing: u64,
    /// Our own transmissions seen on RX and skipped.
    pub rx_outgoing: u64,
    /// Frames dropped because their checksum was left to offload.
    pub rx_csum_not_ready: u64,
    /// Frames dropped because the ring held only part of them, or they
    /// exceed a buffer.
    pub rx_truncated: u64,
    /// Frames lost to ring metadata pointing outside its block.
    pub rx_malformed: u64,
    /// TX bursts cut short by a full ring.
    pub tx_ring_full: u64,
    /// TX frames the kernel flagged `TP_STATUS_WRONG_FORMAT`.
    pub tx_wrong_format: u64,
    /// `sendto` kicks issued.
    pub tx_kicks: u64,
    /// Kicks that found the socket busy (frames stay queued for the next).
    pub tx_kick_busy: u64,
    /// Kicks that failed otherwise (e.g. interface down).
    pub tx_kick_errors: u64,
}

/// Receive counters kept by the kernel for the socket, cumulative.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames the kernel accepted for this socket.
    pub packets: u64,
    /// Frames the kernel dropped (ring full).
    pub drops: u64,
    /// Times the RX queue was frozen for want of a free block.
    pub freezes: u64,
}

/// Opens AF_PACKET queues on an interface.
#[derive(Debug)]
pub struct AfPacketPort;

/// How a socket takes part in a fanout group.
#[derive(Debug, Clone, Copy)]
enum Fanout {
    None,
    CreateUnique,
    Join(u16),
}

impl AfPacketPort {
    /// Opens one queue pair on `ifname`, receiving into `pool`.
    pub fn open(
        ifname: &str,
        config: &AfPacketConfig,
        pool: Pool,
    ) -> Result<AfPacketQueue, AfPacketError> {
        AfPacketQueue::open(ifname, config, pool, Fanout::None)
    }

    /// Opens one queue pair per pool on `ifname`, joined in a new
    /// `PACKET_FANOUT_HASH` group so that each flow lands on one queue.
    /// The kernel's flow hash decides which (see the module docs on RSS).
    pub fn open_queues(
        ifname: &str,
        config: &AfPacketConfig,
        pools: Vec<Pool>,
    ) -> Result<Vec<AfPacketQueue>, AfPacketError> {
        let n = pools.len();
        if n == 0 {
            return Err(AfPacketError::BadConfig {
                field: "pools",
                value: 0,
                rule: "must hold one pool per queue",
            });
        }
        let mut queues = Vec::with_capacity(n);
        let mut group = Fanout::None;
        for pool in pools {
            if n > 1 && matches!(group, Fanout::None) {
                group = Fanout::CreateUnique;
            }
            let q = AfPacketQueue::open(ifname, config, pool, group)?;
            if matches!(group, Fanout::CreateUnique) {
                let arg = q.sock.fanout().map_err(|source| AfPacketError::Sys {
                    ifname: ifname.to_owned(),
                    op: "reading back PACKET_FANOUT",
                    source,
                })?;
                group = Fanout::Join((arg & 0xffff) as u16);
            }
            queues.push(q);
        }
        Ok(queues)
    }
}

/// What became of one RX frame.
enum Taken {
    /// Copied into a buffer.
    Frame(PktBuf),
    /// Skipped or dropped, and counted.
    Skipped,
    /// Its header points outside the ring space it may use; nothing was
    /// counted or allocated.
    Malformed,
}

/// Copies the RX frame whose header (in `layout`) is at `at` into a fresh
/// buffer of `pool`. The frame may use `room` bytes of ring from `at`, of
/// which the caller checked that at least `layout.hdrlen` exist.
fn take_frame(
    map: &RingMap,
    layout: &Layout,
    at: usize,
    room: usize,
    pool: &Pool,
    st: &mut QueueStats,
    xs: &mut AfPacketStats,
) -> Taken {
    let snaplen = map.read_u32(at + layout.snaplen) as usize;
    let len = map.read_u32(at + layout.len) as usize;
    let fstatus = map.read_u32(at + layout.status);
    let mac = map.read_u16(at + layout.mac) as usize;
    let pkttype = map.read_u8(at + layout.pkttype);
    if mac < layout.hdrlen || mac + snaplen > room {
        return Taken::Malformed;
    }
    if pkttype == PACKET_OUTGOING {
        xs.rx_outgoing += 1;
        return Taken::Skipped;
    }
    if fstatus & status::CSUMNOTREADY != 0 {
        xs.rx_csum_not_ready += 1;
        st.rx_dropped += 1;
        return Taken::Skipped;
    }
    if snaplen < len {
        xs.rx_truncated += 1;
        st.rx_dropped += 1;
        return Taken::Skipped;
    }
    let Some(mut buf) = pool.alloc() else {
        st.rx_dropped += 1;
        return Taken::Skipped;
    };
    if !buf.append(snaplen) {
        xs.rx_truncated += 1;
        st.rx_dropped += 1;
        return Taken::Skipped;
    }
    map.copy_out(
        at + mac,
        buf.data_mut()
            .expect("a freshly allocated buffer is unique"),
    );
    st.rx_packets += 1;
    st.rx_bytes += snaplen as u64;
    Taken::Frame(buf)
}

/// Cursor over a V3 RX ring's blocks.
#[derive(Debug)]
struct RxBlocks {
    block_size: usize,
    block_count: usize,
    /// Block being read, or awaited from the kernel.
    block: usize,
    /// Whether `block` is handed to us.
    held: bool,
    /// Frames of `block` not yet read.
    remaining: u32,
    /// Offset of the next frame within `block`.
    offset: usize,
}

impl RxBlocks {
    fn new(block_size: usize, block_count: usize) -> RxBlocks {
        RxBlocks {
            block_size,
            block_count,
            block: 0,
            held: false,
            remaining: 0,
            offset: 0,
        }
    }

    fn release(&mut self, map: &RingMap) {
        map.store_release_u32(self.block * self.block_size + blk::STATUS, status::KERNEL);
        self.held = false;
        self.block = (self.block + 1) % self.block_count;
    }

    /// Moves up to `max` frames from handed-over blocks into `pool`
    /// buffers appended to `out`.
    fn burst(
        &mut self,
        map: &RingMap,
        pool: &Pool,
        out: &mut Vec<PktBuf>,
        max: usize,
        st: &mut QueueStats,
        xs: &mut AfPacketStats,
    ) -> usize {
        let mut got = 0;
        while got < max {
            let base = self.block * self.block_size;
            if !self.held {
                let s = map.load_acquire_u32(base + blk::STATUS);
                if s & status::USER == 0 {
                    break;
                }
                if s & status::LOSING != 0 {
                    xs.rx_losing += 1;
                }
                self.held = true;
                self.remaining = map.read_u32(base + blk::NUM_PKTS);
                self.offset = map.read_u32(base + blk::FIRST_PKT) as usize;
                xs.rx_blocks += 1;
            }
            if self.remaining == 0 {
                self.release(map);
                continue;
            }
            if let Some(buf) = self.frame(map, base, pool, st, xs) {
                out.push(buf);
                got += 1;
            }
        }
        if self.held && self.remaining == 0 {
            self.release(map);
        }
        got
    }

    /// Reads the frame at the cursor and advances it. `None` when the
    /// frame was skipped or dropped (and counted).
    fn frame(
        &mut self,
        map: &RingMap,
        base: usize,
        pool: &Pool,
        st: &mut QueueStats,
        xs: &mut AfPacketStats,
    ) -> Option<PktBuf> {
        let pkt = self.offset;
        if pkt < blk::SIZE || !pkt.is_multiple_of(8) || pkt + V3.hdrlen > self.block_size {
            return self.malformed(xs);
        }
        let at = base + pkt;
        let next = map.read_u32(at) as usize;
        let taken = take_frame(map, &V3, at, self.block_size - pkt, pool, st, xs);
        if let Taken::Malformed = taken {
            return self.malformed(xs);
        }
        self.remaining -= 1;
        if self.remaining > 0 && next == 0 {
            // A zero link with frames left would read this frame again.
            xs.rx_malformed += u64::from(self.remaining);
            self.remaining = 0;
        }
        self.offset = pkt + next;
        match taken {
            Taken::Frame(buf) => Some(buf),
            Taken::Skipped | Taken::Malformed => None,
        }
    }

    fn malformed(&mut self, xs: &mut AfPacketStats) -> Option<PktBuf> {
        xs.rx_malformed += u64::from(self.remaining);
        self.remaining = 0;
        None
    }
}

/// Cursor over a V2 RX ring's frame slots.
#[derive(Debug)]
struct RxFrames {
    slots: Slots,
    /// Next slot to look at.
    head: usize,
}

impl RxFrames {
    /// Moves up to `max` frames handed over by the kernel into `pool`
    /// buffers appended to `out`, returning each slot at once.
    fn burst(
        &mut self,
        map: &RingMap,
        pool: &Pool,
        out: &mut Vec<PktBuf>,
        max: usize,
        st: &mut QueueStats,
        xs: &mut AfPacketStats,
    ) -> usize {
        let mut got = 0;
        while got < max {
            let at = self.slots.offset(self.head);
            let s = map.load_acquire_u32(at + V2.status);
            if s & status::USER == 0 {
                break;
            }
            if s & status::LOSING != 0 {
                xs.rx_losing += 1;
            }
            match take_frame(map, &V2, at, self.slots.frame_size, pool, st, xs) {
                Taken::Frame(buf) => {
                    out.push(buf);
                    got += 1;
                }
                Taken::Skipped => {}
                Taken::Malformed => xs.rx_malformed += 1,
            }
            map.store_release_u32(at + V2.status, status::KERNEL);
            self.head = (self.head + 1) % self.slots.count;
        }
        got
    }
}

/// The RX ring, in either format.
#[derive(Debug)]
enum RxRing {
    Blocks(RxBlocks),
    Frames(RxFrames),
}

impl RxRing {
    fn burst(
        &mut self,
        map: &RingMap,
        pool: &Pool,
        out: &mut Vec<PktBuf>,
        max: usize,
        st: &mut QueueStats,
        xs: &mut AfPacketStats,
    ) -> usize {
        match self {
            RxRing::Blocks(r) => r.burst(map, pool, out, max, st, xs),
            RxRing::Frames(r) => r.burst(map, pool, out, max, st, xs),
        }
    }
}

/// Fixed-size frame slots laid out in blocks (frames never straddle a
/// block), starting at `base` in the mapping.
#[derive(Debug, Clone, Copy)]
struct Slots {
    base: usize,
    block_size: usize,
    frame_size: usize,
    per_block: usize,
    count: usize,
}

impl Slots {
    fn new(base: usize, req: &TpacketReq3) -> Slots {
        Slots {
            base,
            block_size: req.block_size as usize,
            frame_size: req.frame_size as usize,
            per_block: (req.block_size / req.frame_size) as usize,
            count: req.frame_nr as usize,
        }
    }

    fn offset(&self, i: usize) -> usize {
        self.base + (i / self.per_block) * self.block_size + (i % self.per_block) * self.frame_size
    }
}

/// Cursor over the TX ring's frame slots.
#[derive(Debug)]
struct TxRing {
    layout: Layout,
    slots: Slots,
    /// Next slot to fill.
    head: usize,
    /// Oldest slot handed to the kernel and not yet seen free.
    tail: usize,
    /// Slots between `tail` and `head`.
    in_flight: usize,
    /// Longest frame accepted.
    max_frame: usize,
}

impl TxRing {
    fn new(layout: Layout, slots: Slots, max_frame: usize) -> TxRing {
        TxRing {
            layout,
            slots,
            head: 0,
            tail: 0,
            in_flight: 0,
            max_frame: max_frame.min(slots.frame_size - layout.tx_data),
        }
    }

    /// Frees the slots the kernel has finished with, oldest first.
    fn reclaim(&mut self, map: &RingMap, xs: &mut AfPacketStats) {
        while self.in_flight > 0 {
            let s = map.load_acquire_u32(self.slots.offset(self.tail) + self.layout.status);
            if s & (status::SEND_REQUEST | status::SENDING) != 0 {
                break;
            }
            if s & status::WRONG_FORMAT != 0 {
                xs.tx_wrong_format += 1;
            }
            self.tail = (self.tail + 1) % self.slots.count;
            self.in_flight -= 1;
        }
    }

    /// Whether the oldest slot still waits for the kernel to pick it up
    /// (an earlier kick found the socket busy).
    fn awaiting_kick(&self, map: &RingMap) -> bool {
        self.in_flight > 0
            && map.load_acquire_u32(self.slots.offset(self.tail) + self.layout.status)
                & status::SEND_REQUEST
                != 0
    }

    /// Copies frames from the front of `frames` into free slots, removing
    /// those taken. Returns (taken, queued in the ring).
    fn burst(
        &mut self,
        map: &RingMap,
        frames: &mut Vec<PktBuf>,
        st: &mut QueueStats,
        xs: &mut AfPacketStats,
    ) -> (usize, usize) {
        self.reclaim(map, xs);
        let l = self.layout;
        let mut taken = 0;
        let mut queued = 0;
        for f in frames.iter() {
            let len = f.len();
            if !(ETH_HLEN..=self.max_frame).contains(&len) {
                st.tx_dropped += 1;
                taken += 1;
                continue;
            }
            if self.in_flight == self.slots.count {
                xs.tx_ring_full += 1;
                break;
            }
            let at = self.slots.offset(self.head);
            map.copy_in(at + l.tx_data, f.data());
            if let Some(next) = l.next_offset {
                map.write_u32(at + next, 0);
            }
            map.write_u32(at + l.snaplen, len as u32);
            map.write_u32(at + l.len, len as u32);
            map.store_release_u32(at + l.status, status::SEND_REQUEST);
            self.head = (self.head + 1) % self.slots.count;
            self.in_flight += 1;
            taken += 1;
            queued += 1;
            st.tx_packets += 1;
            st.tx_bytes += len as u64;
        }
        frames.drain(..taken);
        (taken, queued)
    }
}

/// One RX/TX queue pair on a Linux interface (see the module docs).
#[derive(Debug)]
pub struct AfPacketQueue {
    // Field order matters on drop: unmap the rings before closing the
    // socket.
    ring: RingMap,
    sock: PacketSocket,
    pool: Pool,
    ifname: String,
    info: InterfaceInfo,
    rx: RxRing,
    tx: TxRing,
    stats: QueueStats,
    xstats: AfPacketStats,
    kstats: KernelStats,
}

impl AfPacketQueue {
    fn open(
        ifname: &str,
        config: &AfPacketConfig,
        pool: Pool,
        fanout: Fanout,
    ) -> Result<AfPacketQueue, AfPacketError> {
        let geo = config.geometry()?;
        let info = interface_info(ifname)?;
        if !info.up {
            return Err(AfPacketError::InterfaceDown {
                ifname: ifname.to_owned(),
            });
        }
        let sys_err = |op| {
            move |source| AfPacketError::Sys {
                ifname: ifname.to_owned(),
                op,
                source,
            }
        };
        let sock = PacketSocket::new().map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => AfPacketError::NeedsCapNetRaw {
                ifname: ifname.to_owned(),
            },
            _ => sys_err("socket(AF_PACKET)")(e),
        })?;
        let version = match config.version {
            TpacketVersion::V2 => sys::TPACKET_V2,
            TpacketVersion::V3 => sys::TPACKET_V3,
        };
        sock.set_packet_int(libc::PACKET_VERSION, version)
            .map_err(sys_err("setting PACKET_VERSION"))?;
        // Skip (not stall on) a TX frame the kernel finds malformed.
        sock.set_packet_int(libc::PACKET_LOSS, 1)
            .map_err(sys_err("setting PACKET_LOSS"))?;
        if config.qdisc_bypass {
            sock.set_packet_int(libc::PACKET_QDISC_BYPASS, 1)
                .map_err(sys_err("setting PACKET_QDISC_BYPASS"))?;
        }
        sock.set_ring(libc::PACKET_RX_RING, &geo.rx)
            .map_err(sys_err("setting up the RX ring"))?;
        sock.set_ring(libc::PACKET_TX_RING, &geo.tx)
            .map_err(sys_err("setting up the TX ring (V3: Linux >= 4.11)"))?;
        let ring = sock
            .map_rings(geo.rx_bytes() + geo.tx_bytes())
            .map_err(sys_err("mapping the rings"))?;
        sock.bind(info.index)
            .map_err(sys_err("binding the packet socket"))?;
        if let Err(e) = sock.set_packet_int(libc::PACKET_IGNORE_OUTGOING, 1) {
            // Before Linux 4.20: the RX walker skips outgoing frames.
            log::debug!("{ifname}: PACKET_IGNORE_OUTGOING unavailable: {e}");
        }
        if config.promiscuous {
            sock.add_promisc(info.index)
                .map_err(sys_err("adding the PACKET_MR_PROMISC membership"))?;
        }
        let hash = libc::PACKET_FANOUT_HASH;
        match fanout {
            Fanout::None => {}
            Fanout::CreateUnique => sock
                .set_fanout((hash | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16)
                .map_err(sys_err("creating a PACKET_FANOUT group"))?,
            Fanout::Join(id) => sock
                .set_fanout(u32::from(id) | hash << 16)
                .map_err(sys_err("joining the PACKET_FANOUT group"))?,
        }
        let max_frame = info.mtu as usize + ETH_HLEN;
        Ok(AfPacketQueue {
            rx: match config.version {
                TpacketVersion::V2 => RxRing::Frames(RxFrames {
                    slots: Slots::new(0, &geo.rx),
                    head: 0,
                }),
                TpacketVersion::V3 => RxRing::Blocks(RxBlocks::new(
                    geo.rx.block_size as usize,
                    geo.rx.block_nr as usize,
                )),
            },
            tx: TxRing::new(geo.layout, Slots::new(geo.rx_bytes(), &geo.tx), max_frame),
            ring,
            sock,
            pool,
            ifname: ifname.to_owned(),
            info,
            stats: QueueStats::default(),
            xstats: AfPacketStats::default(),
            kstats: KernelStats::default(),
        })
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface as it was when the queue opened.
    pub fn interface(&self) -> InterfaceInfo {
        self.info
    }

    /// Longest frame [`QueuePair::tx_burst`] sends (MTU + Ethernet header,
    /// bounded by the TX slot).
    pub fn max_frame(&self) -> usize {
        self.tx.max_frame
    }

    /// Backend-specific counters.
    pub fn xstats(&self) -> AfPacketStats {
        self.xstats
    }

    /// The kernel's receive counters for this socket (a system call; not
    /// for the hot path).
    pub fn kernel_stats(&mut self) -> Result<KernelStats, AfPacketError> {
        let s = self
            .sock
            .statistics()
            .map_err(|source| AfPacketError::Sys {
                ifname: self.ifname.clone(),
                op: "reading PACKET_STATISTICS",
                source,
            })?;
        // The kernel resets its counters on every read.
        self.kstats.packets += u64::from(s.packets);
        self.kstats.drops += u64::from(s.drops);
        self.kstats.freezes += u64::from(s.freeze_q_cnt);
        Ok(self.kstats)
    }

    /// Kicks the kernel if queued TX frames still wait for it (after a
    /// kick that found the socket busy). [`QueuePair::tx_burst`] does this
    /// itself; call `flush` when there is nothing more to send.
    pub fn flush(&mut self) {
        if self.tx.awaiting_kick(&self.ring) {
            self.kick();
        }
    }

    fn kick(&mut self) {
        self.xstats.tx_kicks += 1;
        if let Err(e) = self.sock.kick() {
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => self.xstats.tx_kick_busy += 1,
                _ => {
                    self.xstats.tx_kick_errors += 1;
                    log::debug!("{}: TX kick failed: {e}", self.ifname);
                }
            }
        }
    }
}

impl QueuePair for AfPacketQueue {
    fn rx_burst(&mut self, out: &mut Vec<PktBuf>, max: usize) -> usize {
        self.rx.burst(
            &self.ring,
            &self.pool,
            out,
            max,
            &mut self.stats,
            &mut self.xstats,
        )
    }

    fn tx_burst(&mut self, frames: &mut Vec<PktBuf>) -> usize {
        let (taken, queued) = self
            .tx
            .burst(&self.ring, frames, &mut self.stats, &mut self.xstats);
        if queued > 0 || self.tx.awaiting_kick(&self.ring) {
            self.kick();
        }
        taken
    }

    fn pool(&self) -> &Pool {
        &self.pool
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 4096;
    /// `tp_next_offset` of `struct tpacket3_hdr`.
    const NEXT: usize = 0;

    fn pool(n: u32) -> Pool {
        Pool::new(1, n, false).unwrap()
    }

    /// Writes a V3 block at `block` holding `frames` as the kernel would:
    /// descriptor, then 8-aligned headers linked by `tp_next_offset`.
    fn write_block(map: &RingMap, block: usize, frames: &[(&[u8], u32, u8)]) {
        let base = block * BLOCK;
        map.copy_in(base, &[0u8; BLOCK]);
        let mut off = blk::SIZE;
        for (i, (data, fstatus, pkttype)) in frames.iter().enumerate() {
            let at = base + off;
            let mac = 80usize;
            let total = (mac + data.len()).next_multiple_of(8);
            let next = if i + 1 == frames.len() { 0 } else { total };
            map.write_u32(at + NEXT, next as u32);
            map.write_u32(at + V3.snaplen, data.len() as u32);
            map.write_u32(at + V3.len, data.len() as u32);
            map.write_u32(at + V3.status, *fstatus);
            map.copy_in(at + V3.mac, &(mac as u16).to_ne_bytes());
            map.copy_in(at + V3.pkttype, &[*pkttype]);
            map.copy_in(at + mac, data);
            off += total;
        }
        map.write_u32(base + blk::NUM_PKTS, frames.len() as u32);
        map.write_u32(base + blk::FIRST_PKT, blk::SIZE as u32);
        map.store_release_u32(base + blk::STATUS, status::USER);
    }

    fn rx_fixture(blocks: usize) -> (RingMap, RxBlocks, QueueStats, AfPacketStats) {
        (
            RingMap::anonymous(blocks * BLOCK),
            RxBlocks::new(BLOCK, blocks),
            QueueStats::default(),
            AfPacketStats::default(),
        )
    }

    #[test]
    fn config_default_is_valid_and_sizes_rings() {
        let geo = AfPacketConfig::default().geometry().unwrap();
        assert_eq!(geo.layout, V2);
        assert_eq!(geo.rx.frame_nr, 32 * 128);
        assert_eq!(geo.tx.frame_nr, 1024);
        assert_eq!(geo.tx.retire_blk_tov, 0);
        assert_eq!(geo.rx_bytes(), 8 << 20);
    }

    #[test]
    fn config_rounds_tx_frames_up_to_whole_blocks() {
        let cfg = AfPacketConfig {
            block_size: 8192,
            tx_frames: 5,
            ..AfPacketConfig::default()
        };
        let geo = cfg.geometry().unwrap();
        assert_eq!(geo.tx.block_nr, 2);
        assert_eq!(geo.tx.frame_nr, 8);
    }

    #[test]
    fn config_rejects_what_the_kernel_would() {
        let d = AfPacketConfig::default;
        let cases = [
            (
                AfPacketConfig {
                    block_size: 1000,
                    ..d()
                },
                "block_size",
            ),
            (
                AfPacketConfig {
                    block_count: 0,
                    ..d()
                },
                "block_count",
            ),
            (
                AfPacketConfig {
                    block_timeout_ms: 0,
                    ..d()
                },
                "block_timeout_ms",
            ),
            (
                AfPacketConfig {
                    frame_size: 2050,
                    ..d()
                },
                "frame_size",
            ),
            (
                AfPacketConfig {
                    frame_size: 64,
                    ..d()
                },
                "frame_size",
            ),
            (
                AfPacketConfig {
                    block_size: 4096,
                    frame_size: 8192,
                    ..d()
                },
                "frame_size",
            ),
            (
                AfPacketConfig {
                    tx_frames: 0,
                    ..d()
                },
                "tx_frames",
            ),
        ];
        for (cfg, field) in cases {
            match cfg.geometry() {
                Err(AfPacketError::BadConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{cfg:?}: expected BadConfig({field}), got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_interface_is_named_in_the_error() {
        let err = AfPacketPort::open("ixnosuch0", &AfPacketConfig::default(), pool(4)).unwrap_err();
        assert!(matches!(err, AfPacketError::NoSuchDevice { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "interface ixnosuch0: no such device — check `ip link show` (and the network namespace)"
        );
    }

    #[test]
    fn bad_interface_names_are_refused() {
        for name in ["", "a-name-longer-than-15", "nul\0byte"] {
            let err = interface_info(name).unwrap_err();
            assert!(
                matches!(err, AfPacketError::BadName { .. }),
                "{name:?}: {err:?}"
            );
        }
    }

    #[test]
    fn loopback_info_is_read() {
        let info = interface_info("lo").unwrap();
        assert!(info.index > 0);
        assert_eq!(info.mac, [0; 6]);
        assert!(info.mtu >= 1500);
    }

    #[test]
    fn rx_copies_frames_into_pool_and_returns_the_block() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(2);
        let p = pool(8);
        write_block(&map, 0, &[(b"first frame...", 0, 0), (b"second", 0, 3)]);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 32, &mut st, &mut xs), 2);
        assert_eq!(out[0].data(), b"first frame...");
        assert_eq!(out[1].data(), b"second");
        assert!(p.owns(&out[0]));
        assert_eq!(map.load_acquire_u32(blk::STATUS), status::KERNEL);
        assert_eq!((st.rx_packets, st.rx_bytes), (2, 20));
        assert_eq!(xs.rx_blocks, 1);
        assert_eq!(rx.block, 1);
    }

    #[test]
    fn rx_respects_max_and_resumes_mid_block() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(2);
        let p = pool(8);
        write_block(&map, 0, &[(b"a", 0, 0), (b"b", 0, 0), (b"c", 0, 0)]);
        write_block(&map, 1, &[(b"d", 0, 0)]);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 2, &mut st, &mut xs), 2);
        assert_eq!(
            map.load_acquire_u32(blk::STATUS),
            status::USER,
            "block 0 still ours"
        );
        assert_eq!(rx.burst(&map, &p, &mut out, 2, &mut st, &mut xs), 2);
        assert_eq!(map.load_acquire_u32(blk::STATUS), status::KERNEL);
        assert_eq!(map.load_acquire_u32(BLOCK + blk::STATUS), status::KERNEL);
        let got: Vec<&[u8]> = out.iter().map(|b| b.data()).collect();
        assert_eq!(got, [b"a", b"b", b"c", b"d"]);
        assert_eq!(rx.burst(&map, &p, &mut out, 2, &mut st, &mut xs), 0);
    }

    #[test]
    fn rx_wraps_around_the_ring() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(2);
        let p = pool(8);
        let mut out = Vec::new();
        for round in 0..5u8 {
            let block = round as usize % 2;
            write_block(&map, block, &[(&[round; 20], 0, 0)]);
            assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
            assert_eq!(out.pop().unwrap().data(), &[round; 20]);
        }
        assert_eq!(xs.rx_blocks, 5);
    }

    #[test]
    fn rx_skips_outgoing_and_drops_partial_checksums() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(1);
        let p = pool(8);
        write_block(
            &map,
            0,
            &[
                (b"ours", 0, PACKET_OUTGOING),
                (b"partial", status::CSUMNOTREADY, 0),
                (b"good", 0, 0),
            ],
        );
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
        assert_eq!(out[0].data(), b"good");
        assert_eq!(xs.rx_outgoing, 1);
        assert_eq!(xs.rx_csum_not_ready, 1);
        assert_eq!(st.rx_dropped, 1);
    }

    #[test]
    fn rx_drops_truncated_frames() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(1);
        let p = pool(8);
        write_block(&map, 0, &[(b"cut", 0, 0), (b"whole", 0, 0)]);
        map.write_u32(blk::SIZE + V3.len, 3000);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
        assert_eq!(out[0].data(), b"whole");
        assert_eq!(xs.rx_truncated, 1);
    }

    #[test]
    fn rx_counts_pool_exhaustion_and_still_returns_the_block() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(1);
        let p = pool(1);
        write_block(&map, 0, &[(b"one", 0, 0), (b"two", 0, 0)]);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
        assert_eq!(st.rx_dropped, 1);
        assert_eq!(p.stats().exhausted, 1);
        assert_eq!(map.load_acquire_u32(blk::STATUS), status::KERNEL);
    }

    #[test]
    fn rx_survives_corrupt_ring_metadata() {
        let p = pool(8);
        let mut out = Vec::new();
        type Corrupt = fn(&RingMap);
        let corruptions: [Corrupt; 6] = [
            |m| m.write_u32(blk::FIRST_PKT, BLOCK as u32 - 8),
            |m| m.write_u32(blk::FIRST_PKT, 3),
            |m| m.write_u32(blk::SIZE + V3.snaplen, u32::MAX),
            |m| m.copy_in(blk::SIZE + V3.mac, &u16::MAX.to_ne_bytes()),
            |m| m.write_u32(blk::SIZE + NEXT, 0),
            |m| m.write_u32(blk::SIZE + NEXT, u32::MAX - 7),
        ];
        for corrupt in corruptions {
            let (map, mut rx, mut st, mut xs) = rx_fixture(1);
            write_block(&map, 0, &[(b"one", 0, 0), (b"two", 0, 0), (b"three", 0, 0)]);
            map.write_u32(blk::NUM_PKTS, 3);
            corrupt(&map);
            out.clear();
            let got = rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs);
            assert!(got <= 1, "at most the first frame survives");
            assert_eq!(got as u64 + xs.rx_malformed, 3, "every frame accounted for");
            assert_eq!(map.load_acquire_u32(blk::STATUS), status::KERNEL);
        }
    }

    #[test]
    fn rx_accepts_an_empty_retired_block() {
        let (map, mut rx, mut st, mut xs) = rx_fixture(2);
        let p = pool(4);
        write_block(&map, 0, &[]);
        write_block(&map, 1, &[(b"x", 0, 0)]);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 4, &mut st, &mut xs), 1);
        assert_eq!(xs.rx_blocks, 2);
    }

    fn tx_fixture(frames: u32) -> (RingMap, TxRing) {
        tx_fixture_with(V3, frames)
    }

    /// A TX ring of `frames` 2 KiB slots, two per 4 KiB block, placed after
    /// one page standing in for the RX ring.
    fn tx_fixture_with(layout: Layout, frames: u32) -> (RingMap, TxRing) {
        let req = TpacketReq3 {
            block_size: 4096,
            block_nr: frames.div_ceil(2),
            frame_size: 2048,
            frame_nr: frames.div_ceil(2) * 2,
            ..TpacketReq3::default()
        };
        let map = RingMap::anonymous(4096 + req.block_size as usize * req.block_nr as usize);
        (map, TxRing::new(layout, Slots::new(4096, &req), 1514))
    }

    fn frame(p: &Pool, len: usize, fill: u8) -> PktBuf {
        let mut b = p.alloc().unwrap();
        assert!(b.extend_from_slice(&vec![fill; len]));
        b
    }

    #[test]
    fn tx_fills_slots_and_marks_them_for_the_kernel() {
        let (map, mut tx) = tx_fixture(4);
        let p = pool(8);
        let (mut st, mut xs) = (QueueStats::default(), AfPacketStats::default());
        let mut frames = vec![frame(&p, 60, 1), frame(&p, 1514, 2), frame(&p, 100, 3)];
        assert_eq!(tx.burst(&map, &mut frames, &mut st, &mut xs), (3, 3));
        assert!(frames.is_empty());
        for (i, (len, fill)) in [(60usize, 1u8), (1514, 2), (100, 3)]
            .into_iter()
            .enumerate()
        {
            let at = 4096 + i * 2048;
            assert_eq!(map.load_acquire_u32(at + V3.status), status::SEND_REQUEST);
            assert_eq!(map.read_u32(at + V3.len) as usize, len);
            assert_eq!(map.read_u32(at + NEXT), 0);
            let mut data = vec![0u8; len];
            map.copy_out(at + V3.tx_data, &mut data);
            assert!(data.iter().all(|&b| b == fill));
        }
        assert_eq!((st.tx_packets, st.tx_bytes), (3, 1674));
        assert!(tx.awaiting_kick(&map));
    }

    #[test]
    fn tx_stops_at_a_full_ring_and_reuses_freed_slots() {
        let (map, mut tx) = tx_fixture(2);
        let p = pool(8);
        let (mut st, mut xs) = (QueueStats::default(), AfPacketStats::default());
        let mut frames: Vec<_> = (0..3).map(|i| frame(&p, 64, i)).collect();
        assert_eq!(tx.burst(&map, &mut frames, &mut st, &mut xs), (2, 2));
        assert_eq!(frames.len(), 1, "the third frame waits");
        assert_eq!(xs.tx_ring_full, 1);
        // The kernel sends the first frame and frees its slot.
        map.store_release_u32(4096 + V3.status, status::KERNEL);
        assert_eq!(tx.burst(&map, &mut frames, &mut st, &mut xs), (1, 1));
        let mut data = [0u8; 64];
        map.copy_out(4096 + V3.tx_data, &mut data);
        assert_eq!(data, [2u8; 64], "slot 0 reused for the third frame");
    }

    #[test]
    fn tx_drops_frames_it_cannot_send() {
        let (map, mut tx) = tx_fixture(4);
        let p = pool(8);
        let (mut st, mut xs) = (QueueStats::default(), AfPacketStats::default());
        let mut frames = vec![frame(&p, 13, 0), frame(&p, 1515, 0), frame(&p, 14, 0)];
        assert_eq!(tx.burst(&map, &mut frames, &mut st, &mut xs), (3, 1));
        assert_eq!(st.tx_dropped, 2);
        assert_eq!(st.tx_packets, 1);
    }

    #[test]
    fn tx_counts_frames_the_kernel_rejects() {
        let (map, mut tx) = tx_fixture(2);
        let p = pool(8);
        let (mut st, mut xs) = (QueueStats::default(), AfPacketStats::default());
        let mut frames = vec![frame(&p, 64, 0)];
        tx.burst(&map, &mut frames, &mut st, &mut xs);
        map.store_release_u32(4096 + V3.status, status::WRONG_FORMAT);
        tx.burst(&map, &mut frames, &mut st, &mut xs);
        assert_eq!(xs.tx_wrong_format, 1);
        assert!(!tx.awaiting_kick(&map));
    }

    /// Four 2 KiB V2 RX slots in two 4 KiB blocks.
    fn v2_fixture() -> (RingMap, RxFrames, QueueStats, AfPacketStats) {
        let req = TpacketReq3 {
            block_size: 4096,
            block_nr: 2,
            frame_size: 2048,
            frame_nr: 4,
            ..TpacketReq3::default()
        };
        (
            RingMap::anonymous(2 * 4096),
            RxFrames {
                slots: Slots::new(0, &req),
                head: 0,
            },
            QueueStats::default(),
            AfPacketStats::default(),
        )
    }

    /// Writes a frame into V2 slot `i` as the kernel would, handing it over.
    fn write_slot(map: &RingMap, rx: &RxFrames, i: usize, data: &[u8], pkttype: u8) {
        let at = rx.slots.offset(i);
        let mac = 66usize;
        map.write_u32(at + V2.snaplen, data.len() as u32);
        map.write_u32(at + V2.len, data.len() as u32);
        map.copy_in(at + V2.mac, &(mac as u16).to_ne_bytes());
        map.copy_in(at + V2.pkttype, &[pkttype]);
        map.copy_in(at + mac, data);
        map.store_release_u32(at + V2.status, status::USER);
    }

    #[test]
    fn config_sets_the_retire_timer_only_for_v3() {
        let v3 = AfPacketConfig {
            version: TpacketVersion::V3,
            block_timeout_ms: 2,
            ..AfPacketConfig::default()
        };
        let geo = v3.geometry().unwrap();
        assert_eq!(geo.layout, V3);
        assert_eq!((geo.rx.retire_blk_tov, geo.tx.retire_blk_tov), (2, 0));
        let v2 = AfPacketConfig {
            version: TpacketVersion::V2,
            ..v3
        };
        assert_eq!(v2.geometry().unwrap().rx.retire_blk_tov, 0);
    }

    #[test]
    fn v2_rx_takes_frames_one_by_one_and_returns_each_slot() {
        let (map, mut rx, mut st, mut xs) = v2_fixture();
        let p = pool(8);
        let mut out = Vec::new();
        for round in 0..6u8 {
            write_slot(&map, &rx, rx.head, &[round; 60], 0);
            assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
            assert_eq!(out.pop().unwrap().data(), &[round; 60]);
        }
        for i in 0..4 {
            let at = rx.slots.offset(i);
            assert_eq!(map.load_acquire_u32(at + V2.status), status::KERNEL);
        }
        assert_eq!((st.rx_packets, rx.head), (6, 2), "wrapped around");
    }

    #[test]
    fn v2_rx_stops_at_the_first_slot_the_kernel_owns() {
        let (map, mut rx, mut st, mut xs) = v2_fixture();
        let p = pool(8);
        write_slot(&map, &rx, 0, b"first", 0);
        write_slot(&map, &rx, 2, b"not yet", 0);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
        assert_eq!(out[0].data(), b"first");
        assert_eq!(rx.head, 1);
    }

    #[test]
    fn v2_rx_skips_outgoing_and_survives_corrupt_slots() {
        let (map, mut rx, mut st, mut xs) = v2_fixture();
        let p = pool(8);
        write_slot(&map, &rx, 0, b"ours", PACKET_OUTGOING);
        write_slot(&map, &rx, 1, b"bad mac", 0);
        map.copy_in(rx.slots.offset(1) + V2.mac, &u16::MAX.to_ne_bytes());
        write_slot(&map, &rx, 2, b"bad len", 0);
        map.write_u32(rx.slots.offset(2) + V2.snaplen, 4000);
        write_slot(&map, &rx, 3, b"good", 0);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&map, &p, &mut out, 8, &mut st, &mut xs), 1);
        assert_eq!(out[0].data(), b"good");
        assert_eq!((xs.rx_outgoing, xs.rx_malformed), (1, 2));
        for i in 0..4 {
            let at = rx.slots.offset(i);
            assert_eq!(map.load_acquire_u32(at + V2.status), status::KERNEL);
        }
    }

    #[test]
    fn v2_tx_puts_data_after_the_v2_header() {
        let (map, mut tx) = tx_fixture_with(V2, 2);
        let p = pool(4);
        let (mut st, mut xs) = (QueueStats::default(), AfPacketStats::default());
        let mut frames = vec![frame(&p, 60, 7)];
        assert_eq!(tx.burst(&map, &mut frames, &mut st, &mut xs), (1, 1));
        let at = 4096;
        assert_eq!(
            map.load_acquire_u32(at),
            status::SEND_REQUEST,
            "tp_status first"
        );
        assert_eq!(map.read_u32(at + 4), 60, "tp_len");
        let mut data = [0u8; 60];
        map.copy_out(at + 32, &mut data);
        assert_eq!(data, [7u8; 60]);
        assert_eq!(tx.max_frame, 1514);
    }
}
