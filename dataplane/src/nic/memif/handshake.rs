//! The memif connection handshake, both roles, over one control socket.
//!
//! Sequence (as DPDK's `memif_socket.c` and libmemif drive it; the client
//! sends one message and waits for the answer before the next):
//!
//! ```text
//!   master (server)                      slave (client)
//!     HELLO (limits)          ───────▶
//!                             ◀───────   INIT (version, id, secret, name)
//!     ACK                     ───────▶
//!                             ◀───────   ADD_REGION ×n (fd: memfd)
//!     ACK                     ───────▶
//!                             ◀───────   ADD_RING ×rings (fd: eventfd),
//!     ACK                     ───────▶     client-to-server rings first
//!                             ◀───────   CONNECT (interface name)
//!     CONNECTED               ───────▶
//! ```
//!
//! The slave creates all shared memory: region 0 holds the rings
//! (client-to-server rings first, then server-to-client), region 1 the
//! packet buffers, `ring_size` buffers of `buffer_size` bytes per ring.
//! On connecting, each side zeroes head and tail of every ring and sets
//! `MASK_INT` on the rings it receives from (this backend always polls);
//! the slave then posts every buffer of its server-to-client rings.
//!
//! Anything malformed, out of range or out of order ends the handshake
//! with a DISCONNECT whose reason says what was wrong (best effort) and an
//! error for the caller. Where DPDK is lenient we are too (ACKs are
//! ignored anywhere; the private header size of ADD_RING is ignored).

#![deny(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::control::{self, ControlError, SeqPacket};
use super::proto::{self, AddRegion, AddRing, Hello, Init, Message, ProtoError};
use super::ring::{self, Desc, Regions, Ring, RingError};
use super::steer::{self, Side, SteerArea};
use crate::mem::{MemError, SharedMem};
use crate::rss::RssConfig;

/// Most regions a master accepts (DPDK: `ETH_MEMIF_MAX_REGION_NUM`).
pub const MAX_REGIONS: u16 = 256;
/// Region of the rings in the slave's layout.
pub const RINGS_REGION: u16 = 0;
/// Region of the packet buffers in the slave's layout.
pub const BUFFERS_REGION: u16 = 1;

/// What the handshake needs from the port configuration.
#[derive(Debug, Clone)]
pub struct Params {
    /// Interface id.
    pub id: u32,
    /// Secret (empty = none).
    pub secret: Option<String>,
    /// Application and interface name sent to the peer.
    pub name: String,
    /// Rings per direction.
    pub rings: u16,
    /// Ring size as log2 (the slave's wish; the master's maximum).
    pub log2_ring_size: u8,
    /// Packet buffer size (slave).
    pub buffer_size: u32,
    /// With RSS steering over several queues: the Toeplitz key (the same
    /// at both ends) and this end's current receive table, published in
    /// the steering area before the peer can send (its length is the
    /// number of flow groups, the same at both ends).
    pub rss: Option<RssConfig>,
}

/// Errors of a handshake. Each one's text is the DISCONNECT reason sent.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The control socket failed, closed, timed out or was interrupted.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A record could not be decoded.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// More descriptors were passed than one message carries.
    #[error("too many file descriptors in one message")]
    TooManyFds,
    /// A message arrived out of order.
    #[error("unexpected {got} (expected {expected})")]
    Unexpected {
        /// What the state machine waited for.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// The peer's protocol version range excludes ours.
    #[error(
        "incompatible memif version (peer {min:#06x}..={max:#06x}, ours {:#06x})",
        proto::VERSION
    )]
    Version {
        /// Lowest version of the peer.
        min: u16,
        /// Highest version of the peer.
        max: u16,
    },
    /// INIT asked for an interface id this master does not serve.
    #[error("ID not found (asked {asked}, serving {serving})")]
    Id {
        /// Requested id.
        asked: u32,
        /// Our id.
        serving: u32,
    },
    /// INIT carried no secret although one is configured.
    #[error("Secret required")]
    SecretRequired,
    /// INIT carried the wrong secret.
    #[error("Incorrect secret")]
    SecretMismatch,
    /// A message that must carry a descriptor came without one.
    #[error("Missing {what} fd")]
    MissingFd {
        /// Which descriptor.
        what: &'static str,
    },
    /// ADD_REGION with an index out of sequence or range.
    #[error("Invalid region index {index} (expected {expected})")]
    RegionIndex {
        /// Index received.
        index: u16,
        /// Next index expected.
        expected: u16,
    },
    /// ADD_REGION whose size is zero, too large, or larger than its fd.
    #[error("region {index} size {declared} invalid (fd holds {actual} bytes)")]
    RegionSize {
        /// Region index.
        index: u16,
        /// Size declared in the message.
        declared: u64,
        /// Size of the file behind the fd.
        actual: u64,
    },
    /// A region could not be created or mapped.
    #[error("shared memory: {0}")]
    Mem(#[from] MemError),
    /// ADD_RING with an index beyond the configured rings.
    #[error("Invalid ring index {index} ({dir}, {rings} rings configured)")]
    RingIndex {
        /// Direction ("c2s" or "s2c").
        dir: &'static str,
        /// Index received.
        index: u16,
        /// Rings configured per direction.
        rings: u16,
    },
    /// ADD_RING for a ring already added.
    #[error("ring {index} ({dir}) added twice")]
    RingTwice {
        /// Direction.
        dir: &'static str,
        /// Index.
        index: u16,
    },
    /// ADD_RING placing the ring outside its region, misaligned, etc.
    #[error("ring {index} ({dir}): {source}")]
    RingPlacement {
        /// Direction.
        dir: &'static str,
        /// Index.
        index: u16,
        /// What is wrong.
        source: RingError,
    },
    /// CONNECT before every ring was added.
    #[error("ring {index} ({dir}) missing at CONNECT ({rings} per direction expected)")]
    RingMissing {
        /// Direction.
        dir: &'static str,
        /// Index of the first missing ring.
        index: u16,
        /// Rings expected per direction.
        rings: u16,
    },
    /// A ring's cookie is not the memif cookie.
    #[error("Wrong ring: ring {index} ({dir}) cookie {cookie:#x}")]
    Cookie {
        /// Direction.
        dir: &'static str,
        /// Index.
        index: u16,
        /// Cookie found.
        cookie: u32,
    },
    /// The master's HELLO limits are below what we are configured for.
    #[error("peer accepts at most {max} {what}, we need {need} — configure both ends alike")]
    PeerLimit {
        /// Which limit.
        what: &'static str,
        /// The peer's limit.
        max: u32,
        /// What we need.
        need: u32,
    },
    /// The layout would not fit 32-bit region offsets.
    #[error("buffer region of {bytes} bytes exceeds 32-bit offsets: fewer queues, smaller rings or buffers")]
    TooLarge {
        /// Bytes needed.
        bytes: u64,
    },
    /// RSS steering: the rings region has no steering area clear of the
    /// rings.
    #[error("rings region of {region_len} bytes has no room for the RSS steering area after its rings (they end at byte {rings_end}) — is the peer a libix dataplane with RSS steering?")]
    SteerRoom {
        /// Size of region 0.
        region_len: u64,
        /// End of the last ring in region 0.
        rings_end: u64,
    },
    /// RSS steering: the steering area's header is not ours.
    #[error("RSS steering: peer has {groups} flow groups, we have {ours} (area magic {magic:#x} version {version}, ours {:#x} version {}) — configure both ends with Steering::Rss and as many flow groups", steer::STEER_MAGIC, steer::STEER_VERSION)]
    SteerHeader {
        /// Magic found.
        magic: u32,
        /// Version found.
        version: u16,
        /// Flow groups found.
        groups: u16,
        /// Our flow groups.
        ours: usize,
    },
    /// RSS steering: the slave hashes with another Toeplitz key.
    #[error(
        "RSS steering: peer uses another Toeplitz key — configure both ends with the same key"
    )]
    SteerKey,
    /// The peer sent DISCONNECT.
    #[error("peer disconnected: {reason}")]
    PeerDisconnected {
        /// The peer's reason.
        reason: String,
    },
}

impl HandshakeError {
    /// Whether the peer should be told (it did not end things itself).
    fn tell_peer(&self) -> bool {
        !matches!(
            self,
            HandshakeError::PeerDisconnected { .. }
                | HandshakeError::Control(ControlError::Closed)
                | HandshakeError::Control(ControlError::Stopped)
        )
    }
}

/// A ring as agreed in the handshake.
#[derive(Debug)]
pub struct RingSpec {
    /// Region holding it.
    pub region: u16,
    /// Offset in the region.
    pub offset: u32,
    /// Size as log2.
    pub log2: u8,
    /// Its interrupt eventfd.
    pub intr: OwnedFd,
}

/// The slave's own buffer layout (for computing buffer offsets instead of
/// trusting descriptor contents the master could have rewritten).
#[derive(Debug, Clone, Copy)]
pub struct OwnLayout {
    /// Region of the buffers.
    pub region: u16,
    /// Bytes per buffer.
    pub buffer_size: u32,
    /// Buffers per ring.
    pub ring_size: u32,
    /// Rings per direction.
    pub rings: u16,
}

impl OwnLayout {
    /// Offset of the buffer of `slot` (masked) of client-to-server ring
    /// `ring` (`c2s`) or server-to-client ring `ring`.
    #[inline]
    pub fn buffer_offset(&self, c2s: bool, ring: u16, slot: u16) -> u32 {
        let global = if c2s {
            u32::from(ring)
        } else {
            u32::from(self.rings) + u32::from(ring)
        };
        let slot = u32::from(slot) & (self.ring_size - 1);
        (global * self.ring_size + slot) * self.buffer_size
    }
}

/// The steering area of a connection (RSS steering over several queues).
#[derive(Debug, Clone, Copy)]
pub struct SteerSpec {
    /// Flow groups per table.
    pub groups: usize,
    /// This end's table (the one it writes).
    pub own: Side,
}

/// An established connection: its regions and rings.
#[derive(Debug)]
pub struct Connection {
    /// The mapped regions.
    pub regions: Arc<Regions>,
    /// Client-to-server rings by index.
    pub c2s: Vec<RingSpec>,
    /// Server-to-client rings by index.
    pub s2c: Vec<RingSpec>,
    /// The slave's buffer layout (`None` on the master).
    pub own: Option<OwnLayout>,
    /// The peer application's name.
    pub peer_name: String,
    /// The peer interface's name.
    pub peer_if_name: String,
    /// The steering area, with RSS steering over several queues.
    pub steer: Option<SteerSpec>,
}

impl Connection {
    /// A view of ring `index` of a direction.
    pub fn ring(&self, c2s: bool, index: u16) -> Ring {
        let s = &if c2s { &self.c2s } else { &self.s2c }[usize::from(index)];
        Ring::new(self.regions.clone(), s.region, s.offset, s.log2)
            .expect("ring placement was validated during the handshake")
    }

    /// A view of the steering area, with RSS steering over several queues.
    pub fn steer_area(&self) -> Option<SteerArea> {
        let spec = self.steer?;
        Some(
            SteerArea::new(self.regions.clone(), RINGS_REGION, spec.groups)
                .expect("steering area placement was validated during the handshake"),
        )
    }

    /// Zeroes head and tail of every ring and sets `MASK_INT` on those
    /// this side receives from (`rx_c2s`: the master receives
    /// client-to-server rings).
    fn reset_rings(&self, rx_c2s: bool) {
        for (c2s, n) in [(true, self.c2s.len()), (false, self.s2c.len())] {
            for i in 0..n as u16 {
                let r = self.ring(c2s, i);
                r.set_head(0, Ordering::Relaxed);
                r.set_tail(0, Ordering::Relaxed);
                if c2s == rx_c2s {
                    r.set_flags(ring::RING_FLAG_MASK_INT);
                }
            }
        }
    }
}

fn dir(c2s: bool) -> &'static str {
    if c2s {
        "c2s"
    } else {
        "s2c"
    }
}

/// One decoded message and the fds that came with it.
fn recv_msg(
    ch: &SeqPacket,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<(Message, Vec<OwnedFd>), HandshakeError> {
    let r = ch.recv(Some(deadline), stop)?;
    if r.fds_truncated {
        return Err(HandshakeError::TooManyFds);
    }
    let msg = Message::decode(&r.buf[..r.len.min(r.buf.len())]).map_err(|e| match e {
        // Report the true size of an oversized record, not the buffer's.
        ProtoError::Size { .. } => ProtoError::Size { len: r.len },
        e => e,
    })?;
    if let Message::Disconnect { reason, .. } = msg {
        return Err(HandshakeError::PeerDisconnected { reason });
    }
    Ok((msg, r.fds))
}

/// Waits for an ACK (the only answer to INIT, ADD_REGION and ADD_RING).
fn expect_ack(
    ch: &SeqPacket,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<(), HandshakeError> {
    match recv_msg(ch, deadline, stop)?.0 {
        Message::Ack => Ok(()),
        m => Err(HandshakeError::Unexpected {
            expected: "ACK",
            got: m.kind(),
        }),
    }
}

fn one_fd(mut fds: Vec<OwnedFd>, what: &'static str) -> Result<OwnedFd, HandshakeError> {
    match fds.len() {
        0 => Err(HandshakeError::MissingFd { what }),
        1 => Ok(fds.pop().expect("one fd")),
        _ => Err(HandshakeError::TooManyFds),
    }
}

/// Sends DISCONNECT for a failed handshake, best effort.
fn fail<T>(ch: &SeqPacket, r: Result<T, HandshakeError>) -> Result<T, HandshakeError> {
    if let Err(e) = &r {
        if e.tell_peer() {
            send_disconnect(ch, &e.to_string());
        }
    }
    r
}

/// Sends DISCONNECT with `reason`, ignoring failure (the peer may be gone).
pub fn send_disconnect(ch: &SeqPacket, reason: &str) {
    let msg = Message::Disconnect {
        code: 0,
        reason: reason.to_owned(),
    };
    let _ = ch.send(&msg.encode(), None);
}

/// Runs the master (server) side on an accepted socket: HELLO, then the
/// client's INIT, regions and rings, until CONNECT.
pub fn master(
    ch: &SeqPacket,
    p: &Params,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<Connection, HandshakeError> {
    fail(ch, master_inner(ch, p, deadline, stop))
}

fn master_inner(
    ch: &SeqPacket,
    p: &Params,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<Connection, HandshakeError> {
    let hello = Message::Hello(Hello {
        name: p.name.clone(),
        min_version: proto::VERSION,
        max_version: proto::VERSION,
        max_region: MAX_REGIONS - 1,
        max_s2c_ring: p.rings - 1,
        max_c2s_ring: p.rings - 1,
        max_log2_ring_size: ring::MAX_LOG2_RING_SIZE,
    });
    ch.send(&hello.encode(), None)?;

    let init = loop {
        match recv_msg(ch, deadline, stop)?.0 {
            Message::Ack => continue,
            Message::Init(i) => break i,
            m => {
                return Err(HandshakeError::Unexpected {
                    expected: "INIT",
                    got: m.kind(),
                })
            }
        }
    };
    check_init(&init, p)?;
    ch.send(&Message::Ack.encode(), None)?;

    let mut maps: Vec<SharedMem> = Vec::new();
    let mut c2s: Vec<Option<RingSpec>> = (0..p.rings).map(|_| None).collect();
    let mut s2c: Vec<Option<RingSpec>> = (0..p.rings).map(|_| None).collect();
    loop {
        let (msg, fds) = recv_msg(ch, deadline, stop)?;
        match msg {
            Message::Ack => continue,
            Message::AddRegion(ar) => {
                let fd = one_fd(fds, "region")?;
                maps.push(map_region(&ar, fd, maps.len())?);
            }
            Message::AddRing(ar) => {
                let fd = one_fd(fds, "interrupt")?;
                let table = if ar.c2s { &mut c2s } else { &mut s2c };
                add_ring(&ar, fd, &maps, table, p.rings)?;
            }
            Message::Connect { if_name } => {
                let mut conn = Connection {
                    regions: Arc::new(Regions::new(maps)),
                    c2s: complete(c2s, true, p.rings)?,
                    s2c: complete(s2c, false, p.rings)?,
                    own: None,
                    peer_name: init.name,
                    peer_if_name: if_name,
                    steer: None,
                };
                check_cookies(&conn)?;
                if let Some(rss) = &p.rss {
                    let area = check_steer_area(&conn, rss)?;
                    // Before CONNECTED: the slave steers by it from its
                    // first frame.
                    area.publish(Side::Master, &rss.reta);
                    conn.steer = Some(SteerSpec {
                        groups: rss.reta.len(),
                        own: Side::Master,
                    });
                }
                conn.reset_rings(true);
                let done = Message::Connected {
                    if_name: p.name.clone(),
                };
                ch.send(&done.encode(), None)?;
                return Ok(conn);
            }
            m => {
                return Err(HandshakeError::Unexpected {
                    expected: "ADD_REGION, ADD_RING or CONNECT",
                    got: m.kind(),
                })
            }
        }
        ch.send(&Message::Ack.encode(), None)?;
    }
}

fn check_init(init: &Init, p: &Params) -> Result<(), HandshakeError> {
    if init.version != proto::VERSION {
        return Err(HandshakeError::Version {
            min: init.version,
            max: init.version,
        });
    }
    if init.id != p.id {
        return Err(HandshakeError::Id {
            asked: init.id,
            serving: p.id,
        });
    }
    if let Some(secret) = p.secret.as_deref().filter(|s| !s.is_empty()) {
        // Compared as C strings up to the first NUL, as DPDK's strncmp.
        let given = &init.secret[..init
            .secret
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(proto::SECRET_LEN)];
        if given.is_empty() {
            return Err(HandshakeError::SecretRequired);
        }
        let want = proto::secret_field(Some(secret));
        let want = &want[..want
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(proto::SECRET_LEN)];
        if given != want {
            return Err(HandshakeError::SecretMismatch);
        }
    }
    Ok(())
}

fn map_region(ar: &AddRegion, fd: OwnedFd, have: usize) -> Result<SharedMem, HandshakeError> {
    if usize::from(ar.index) != have || ar.index >= MAX_REGIONS {
        return Err(HandshakeError::RegionIndex {
            index: ar.index,
            expected: have as u16,
        });
    }
    let actual = control::fd_size(fd.as_fd())?;
    // A region must fit 32-bit descriptor offsets plus a ring header, and
    // the fd must really hold it (else touching it would raise SIGBUS).
    if ar.size == 0 || ar.size > u64::from(u32::MAX) + 1 || ar.size > actual {
        return Err(HandshakeError::RegionSize {
            index: ar.index,
            declared: ar.size,
            actual,
        });
    }
    Ok(SharedMem::from_fd(fd, ar.size as usize, true)?)
}

fn add_ring(
    ar: &AddRing,
    fd: OwnedFd,
    maps: &[SharedMem],
    table: &mut [Option<RingSpec>],
    rings: u16,
) -> Result<(), HandshakeError> {
    let d = dir(ar.c2s);
    let Some(entry) = table.get_mut(usize::from(ar.index)) else {
        return Err(HandshakeError::RingIndex {
            dir: d,
            index: ar.index,
            rings,
        });
    };
    if entry.is_some() {
        return Err(HandshakeError::RingTwice {
            dir: d,
            index: ar.index,
        });
    }
    let placement = |source| HandshakeError::RingPlacement {
        dir: d,
        index: ar.index,
        source,
    };
    if ar.log2_ring_size == 0 || ar.log2_ring_size > ring::MAX_LOG2_RING_SIZE {
        return Err(placement(RingError::Size {
            log2: ar.log2_ring_size,
        }));
    }
    let Some(map) = maps.get(usize::from(ar.region)) else {
        return Err(placement(RingError::NoSuchRegion {
            region: ar.region,
            regions: maps.len(),
        }));
    };
    if !ar.offset.is_multiple_of(4) {
        return Err(placement(RingError::Misaligned { offset: ar.offset }));
    }
    let bytes = ring::ring_bytes(ar.log2_ring_size);
    if (ar.offset as usize)
        .checked_add(bytes)
        .is_none_or(|end| end > map.len())
    {
        return Err(placement(RingError::Outside {
            region: ar.region,
            offset: ar.offset,
            bytes,
            region_len: map.len(),
        }));
    }
    *entry = Some(RingSpec {
        region: ar.region,
        offset: ar.offset,
        log2: ar.log2_ring_size,
        intr: fd,
    });
    Ok(())
}

fn complete(
    table: Vec<Option<RingSpec>>,
    c2s: bool,
    rings: u16,
) -> Result<Vec<RingSpec>, HandshakeError> {
    table
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or(HandshakeError::RingMissing {
                dir: dir(c2s),
                index: i as u16,
                rings,
            })
        })
        .collect()
}

/// Master: the slave's rings region must end in a steering area clear of
/// every ring, with the header the slave writes for our table length and
/// our key.
fn check_steer_area(conn: &Connection, rss: &RssConfig) -> Result<SteerArea, HandshakeError> {
    let groups = rss.reta.len();
    let region_len = conn
        .regions
        .get(usize::from(RINGS_REGION))
        .map_or(0, SharedMem::len);
    let rings_end = conn
        .c2s
        .iter()
        .chain(&conn.s2c)
        .filter(|r| r.region == RINGS_REGION)
        .map(|r| r.offset as usize + ring::ring_bytes(r.log2))
        .max()
        .unwrap_or(0);
    let room = HandshakeError::SteerRoom {
        region_len: region_len as u64,
        rings_end: rings_end as u64,
    };
    match steer::area_offset(region_len) {
        Some(off) if off >= rings_end => {}
        _ => return Err(room),
    }
    let area = SteerArea::new(conn.regions.clone(), RINGS_REGION, groups).map_err(|_| room)?;
    area.check_header()
        .map_err(|(magic, version, g)| HandshakeError::SteerHeader {
            magic,
            version,
            groups: g,
            ours: groups,
        })?;
    if area.key() != rss.key {
        return Err(HandshakeError::SteerKey);
    }
    Ok(area)
}

fn check_cookies(conn: &Connection) -> Result<(), HandshakeError> {
    for (c2s, n) in [(true, conn.c2s.len()), (false, conn.s2c.len())] {
        for i in 0..n as u16 {
            let cookie = conn.ring(c2s, i).cookie();
            if cookie != ring::COOKIE {
                return Err(HandshakeError::Cookie {
                    dir: dir(c2s),
                    index: i,
                    cookie,
                });
            }
        }
    }
    Ok(())
}

/// Runs the slave (client) side on a connected socket: waits for HELLO,
/// creates the regions and rings, sends INIT, regions, rings and CONNECT,
/// each after the previous one's ACK.
pub fn slave(
    ch: &SeqPacket,
    p: &Params,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<Connection, HandshakeError> {
    fail(ch, slave_inner(ch, p, deadline, stop))
}

fn slave_inner(
    ch: &SeqPacket,
    p: &Params,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> Result<Connection, HandshakeError> {
    let hello = match recv_msg(ch, deadline, stop)?.0 {
        Message::Hello(h) => h,
        m => {
            return Err(HandshakeError::Unexpected {
                expected: "HELLO",
                got: m.kind(),
            })
        }
    };
    if hello.min_version > proto::VERSION || hello.max_version < proto::VERSION {
        return Err(HandshakeError::Version {
            min: hello.min_version,
            max: hello.max_version,
        });
    }
    let need = u32::from(p.rings);
    for (what, max) in [
        ("client-to-server rings", hello.max_c2s_ring),
        ("server-to-client rings", hello.max_s2c_ring),
    ] {
        if u32::from(max) + 1 < need {
            return Err(HandshakeError::PeerLimit {
                what,
                max: u32::from(max) + 1,
                need,
            });
        }
    }
    if hello.max_region < BUFFERS_REGION {
        return Err(HandshakeError::PeerLimit {
            what: "regions",
            max: u32::from(hello.max_region) + 1,
            need: 2,
        });
    }
    let log2 = p.log2_ring_size.min(hello.max_log2_ring_size);
    if log2 == 0 {
        return Err(HandshakeError::PeerLimit {
            what: "log2 ring size",
            max: u32::from(hello.max_log2_ring_size),
            need: 1,
        });
    }

    let conn = create_layout(p, log2, hello.name)?;

    let init = Message::Init(Init {
        version: proto::VERSION,
        id: p.id,
        secret: proto::secret_field(p.secret.as_deref()),
        name: p.name.clone(),
    });
    ch.send(&init.encode(), None)?;
    expect_ack(ch, deadline, stop)?;
    for i in 0..conn.regions.len() {
        let map = conn.regions.get(i).expect("index in range");
        let msg = Message::AddRegion(AddRegion {
            index: i as u16,
            size: map.len() as u64,
        });
        ch.send(&msg.encode(), Some(map.fd()))?;
        expect_ack(ch, deadline, stop)?;
    }
    for (c2s, specs) in [(true, &conn.c2s), (false, &conn.s2c)] {
        for (i, spec) in specs.iter().enumerate() {
            let msg = Message::AddRing(AddRing {
                c2s,
                index: i as u16,
                region: spec.region,
                offset: spec.offset,
                log2_ring_size: spec.log2,
                private_hdr_size: 0,
            });
            ch.send(&msg.encode(), Some(spec.intr.as_fd()))?;
            expect_ack(ch, deadline, stop)?;
        }
    }
    let connect = Message::Connect {
        if_name: p.name.clone(),
    };
    ch.send(&connect.encode(), None)?;
    let if_name = loop {
        match recv_msg(ch, deadline, stop)?.0 {
            Message::Ack => continue,
            Message::Connected { if_name } => break if_name,
            m => {
                return Err(HandshakeError::Unexpected {
                    expected: "CONNECTED",
                    got: m.kind(),
                })
            }
        }
    };
    let conn = Connection {
        peer_if_name: if_name,
        ..conn
    };
    conn.reset_rings(false);
    post_all_buffers(&conn);
    Ok(conn)
}

/// Creates the slave's regions, rings and eventfds (see the module docs).
fn create_layout(p: &Params, log2: u8, peer_name: String) -> Result<Connection, HandshakeError> {
    let rings = p.rings;
    let ring_size = 1u32 << log2;
    let rings_len = 2 * usize::from(rings) * ring::ring_bytes(log2);
    let region0_len = match p.rss {
        Some(_) => steer::region_len_with_area(rings_len),
        None => rings_len,
    };
    let buf_bytes = 2 * u64::from(rings) * u64::from(ring_size) * u64::from(p.buffer_size);
    if buf_bytes > u64::from(u32::MAX) {
        return Err(HandshakeError::TooLarge { bytes: buf_bytes });
    }
    let ring_mem = SharedMem::create("memif-rings", region0_len, false)?;
    let buf_mem = SharedMem::create("memif-buffers", buf_bytes as usize, true)?;
    for m in [&ring_mem, &buf_mem] {
        // Hugetlb memfds cannot be sealed; their size is fixed anyway.
        if !m.is_huge() {
            control::seal_shrink(m.fd())?;
        }
    }
    let regions = Arc::new(Regions::new(vec![ring_mem, buf_mem]));
    let own = OwnLayout {
        region: BUFFERS_REGION,
        buffer_size: p.buffer_size,
        ring_size,
        rings,
    };
    let mut c2s = Vec::new();
    let mut s2c = Vec::new();
    for (k, is_c2s) in [(0u16, true), (rings, false)] {
        for i in 0..rings {
            let offset = (usize::from(k + i) * ring::ring_bytes(log2)) as u32;
            let r = Ring::new(regions.clone(), RINGS_REGION, offset, log2)
                .expect("the rings region is sized for every ring");
            r.set_cookie(ring::COOKIE);
            r.set_flags(0);
            r.set_head(0, Ordering::Relaxed);
            r.set_tail(0, Ordering::Relaxed);
            for s in 0..r.size() {
                r.set_desc(
                    s,
                    Desc {
                        flags: 0,
                        region: BUFFERS_REGION,
                        length: p.buffer_size,
                        offset: own.buffer_offset(is_c2s, i, s),
                    },
                );
            }
            let spec = RingSpec {
                region: RINGS_REGION,
                offset,
                log2,
                intr: control::eventfd()?,
            };
            if is_c2s { &mut c2s } else { &mut s2c }.push(spec);
        }
    }
    let mut conn = Connection {
        regions,
        c2s,
        s2c,
        own: Some(own),
        peer_name,
        peer_if_name: String::new(),
        steer: None,
    };
    if let Some(rss) = &p.rss {
        let table = &rss.reta;
        conn.steer = Some(SteerSpec {
            groups: table.len(),
            own: Side::Slave,
        });
        let area =
            SteerArea::new(conn.regions.clone(), RINGS_REGION, table.len()).map_err(|_| {
                HandshakeError::SteerRoom {
                    region_len: region0_len as u64,
                    rings_end: rings_len as u64,
                }
            })?;
        area.write_header(&rss.key);
        // Before ADD_REGION: the master steers by it from its first frame.
        area.publish(Side::Slave, table);
    }
    Ok(conn)
}

/// Posts every buffer of the server-to-client rings (the slave's receive
/// rings): descriptors point at the slave's own buffers, full capacity,
/// and head moves one ring ahead of tail.
fn post_all_buffers(conn: &Connection) {
    let own = conn.own.expect("only the slave posts buffers");
    for i in 0..conn.s2c.len() as u16 {
        let r = conn.ring(false, i);
        for s in 0..r.size() {
            r.set_desc(
                s,
                Desc {
                    flags: 0,
                    region: own.region,
                    length: own.buffer_size,
                    offset: own.buffer_offset(false, i, s),
                },
            );
        }
        r.set_head(r.size(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    fn params(rings: u16) -> Params {
        Params {
            id: 7,
            secret: None,
            name: "ix-test".into(),
            rings,
            log2_ring_size: 4,
            buffer_size: 256,
            rss: None,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// Reads messages until DISCONNECT and returns its reason.
    fn disconnect_reason(ch: &SeqPacket) -> String {
        loop {
            let r = ch.recv(Some(soon()), None).expect("a DISCONNECT");
            if let Ok(Message::Disconnect { reason, .. }) = Message::decode(r.bytes()) {
                return reason;
            }
        }
    }

    fn recv_decoded(ch: &SeqPacket) -> Message {
        Message::decode(ch.recv(Some(soon()), None).unwrap().bytes()).unwrap()
    }

    #[test]
    fn master_and_slave_agree_on_rings_and_regions() {
        let (a, b) = SeqPacket::pair().unwrap();
        let p = params(2);
        let pm = p.clone();
        let m = thread::spawn(move || master(&a, &pm, soon(), None).map(|c| (c, a)));
        let s = slave(&b, &p, soon(), None).unwrap();
        let (mc, _a) = m.join().unwrap().unwrap();
        assert_eq!(mc.c2s.len(), 2);
        assert_eq!(mc.s2c.len(), 2);
        assert_eq!(mc.regions.len(), 2);
        assert_eq!(mc.peer_if_name, "ix-test");
        assert_eq!(s.peer_name, "ix-test");
        // The master sees the slave's posted receive buffers and polling
        // flags; the two mappings are the same memory.
        let ms = mc.ring(false, 1);
        assert_eq!(ms.head(Ordering::Acquire), 16);
        assert_eq!(ms.flags(), ring::RING_FLAG_MASK_INT);
        assert_eq!(mc.ring(true, 0).flags(), ring::RING_FLAG_MASK_INT);
        let d = ms.desc(3);
        assert_eq!(d.region, BUFFERS_REGION);
        assert_eq!(d.length, 256);
        assert_eq!(d.offset, ((2 + 1) * 16 + 3) * 256);
        s.ring(true, 0).set_tail(5, Ordering::Release);
        assert_eq!(mc.ring(true, 0).tail(Ordering::Acquire), 5);
    }

    #[test]
    fn steering_tables_are_in_place_before_connected() {
        let (a, b) = SeqPacket::pair().unwrap();
        let mut p = params(4);
        let master_table: Vec<u16> = (0..128).map(|g| (g % 2) as u16).collect();
        let slave_table = vec![1u16; 128];
        let mut pm = p.clone();
        pm.rss = Some(RssConfig {
            reta: master_table.clone(),
            ..RssConfig::round_robin(1, 128)
        });
        p.rss = Some(RssConfig {
            reta: slave_table.clone(),
            ..RssConfig::round_robin(1, 128)
        });
        let m = thread::spawn(move || master(&a, &pm, soon(), None).map(|c| (c, a)));
        let s = slave(&b, &p, soon(), None).unwrap();
        let (mc, _a) = m.join().unwrap().unwrap();
        // The area is the last page of region 0, after the rings.
        let rings_len = 2 * 4 * ring::ring_bytes(4);
        assert_eq!(s.regions.get(0).unwrap().len(), 4096 + 4096);
        assert!(steer::area_offset(8192).unwrap() >= rings_len);
        // When the slave has CONNECTED, both tables are readable by both.
        let (sa, ma) = (s.steer_area().unwrap(), mc.steer_area().unwrap());
        assert_eq!(sa.read_table(Side::Master), master_table);
        assert_eq!(ma.read_table(Side::Slave), slave_table);
        assert_eq!(sa.mask(Side::Master), 0b11);
        assert_eq!(ma.mask(Side::Slave), 0b10);
        assert_eq!(s.steer.unwrap().own, Side::Slave);
        assert_eq!(mc.steer.unwrap().own, Side::Master);
    }

    #[test]
    fn master_with_steering_rejects_a_slave_without_the_area() {
        let (a, b) = SeqPacket::pair().unwrap();
        let p = params(4);
        let mut pm = p.clone();
        pm.rss = Some(RssConfig::round_robin(1, 128));
        let m = thread::spawn(move || master(&a, &pm, soon(), None));
        let r = slave(&b, &p, soon(), None);
        let err = m.join().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::SteerRoom {
                    region_len: 4096,
                    rings_end: 3072
                }
            ),
            "{err}"
        );
        match r {
            Err(HandshakeError::PeerDisconnected { reason }) => {
                assert!(
                    reason.contains("no room for the RSS steering area"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn master_rejects_a_slave_hashing_with_another_key() {
        let (a, b) = SeqPacket::pair().unwrap();
        let mut p = params(4);
        let mut pm = p.clone();
        pm.rss = Some(RssConfig::round_robin(2, 128));
        let mut other = RssConfig::round_robin(2, 128);
        other.key[39] ^= 1;
        p.rss = Some(other);
        let m = thread::spawn(move || master(&a, &pm, soon(), None));
        let r = slave(&b, &p, soon(), None);
        assert!(matches!(m.join().unwrap(), Err(HandshakeError::SteerKey)));
        match r {
            Err(HandshakeError::PeerDisconnected { reason }) => {
                assert!(reason.contains("another Toeplitz key"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A hand-written client: reads HELLO, then plays `script`.
    fn misbehaving_slave(
        p: Params,
        script: impl FnOnce(&SeqPacket) + Send + 'static,
    ) -> (Result<Connection, HandshakeError>, String) {
        let (a, b) = SeqPacket::pair().unwrap();
        let peer = thread::spawn(move || {
            assert!(matches!(recv_decoded(&b), Message::Hello(_)));
            script(&b);
            disconnect_reason(&b)
        });
        let r = master(&a, &p, soon(), None);
        let reason = peer.join().unwrap();
        (r, reason)
    }

    fn init(id: u32, secret: Option<&str>) -> [u8; 128] {
        Message::Init(Init {
            version: proto::VERSION,
            id,
            secret: proto::secret_field(secret),
            name: "bad".into(),
        })
        .encode()
    }

    fn send_ok(ch: &SeqPacket, msg: &[u8; 128], fd: Option<BorrowedFd<'_>>) {
        ch.send(msg, fd).unwrap();
        assert_eq!(recv_decoded(ch), Message::Ack);
    }

    fn region_msg(index: u16, size: u64) -> [u8; 128] {
        Message::AddRegion(AddRegion { index, size }).encode()
    }

    fn ring_msg(c2s: bool, index: u16, region: u16, offset: u32, log2: u8) -> [u8; 128] {
        Message::AddRing(AddRing {
            c2s,
            index,
            region,
            offset,
            log2_ring_size: log2,
            private_hdr_size: 0,
        })
        .encode()
    }

    #[test]
    fn master_rejects_wrong_message_size() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            b.send_raw(&[3u8; 100], None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::Proto(ProtoError::Size { len: 100 }))
        ));
        assert!(reason.contains("invalid message size"), "{reason}");
    }

    #[test]
    fn master_rejects_oversized_message() {
        let (r, _) = misbehaving_slave(params(1), |b| {
            b.send_raw(&[3u8; 200], None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::Proto(ProtoError::Size { len: 200 }))
        ));
    }

    #[test]
    fn master_rejects_unknown_type() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mut m = [0u8; 128];
            m[0] = 42;
            b.send_raw(&m, None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::Proto(ProtoError::UnknownType { ty: 42 }))
        ));
        assert!(reason.contains("unknown message type"), "{reason}");
    }

    #[test]
    fn master_rejects_region_before_init() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            b.send(&region_msg(0, 4096), None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::Unexpected {
                expected: "INIT",
                got: "ADD_REGION"
            })
        ));
        assert!(reason.contains("unexpected ADD_REGION"), "{reason}");
    }

    #[test]
    fn master_rejects_wrong_id_and_secret() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            b.send(&init(8, None), None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::Id {
                asked: 8,
                serving: 7
            })
        ));
        assert!(reason.contains("ID not found"));

        let mut p = params(1);
        p.secret = Some("open sesame".into());
        let (r, reason) = misbehaving_slave(p.clone(), |b| {
            b.send(&init(7, None), None).unwrap();
        });
        assert!(matches!(r, Err(HandshakeError::SecretRequired)));
        assert_eq!(reason, "Secret required");
        let (r, reason) = misbehaving_slave(p.clone(), |b| {
            b.send(&init(7, Some("open barley")), None).unwrap();
        });
        assert!(matches!(r, Err(HandshakeError::SecretMismatch)));
        assert_eq!(reason, "Incorrect secret");
        // A prefix of the secret is not the secret.
        let (r, _) = misbehaving_slave(p.clone(), |b| {
            b.send(&init(7, Some("open")), None).unwrap();
        });
        assert!(matches!(r, Err(HandshakeError::SecretMismatch)));
        // Bytes after the terminating NUL do not matter (C string compare).
        let (a, b) = SeqPacket::pair().unwrap();
        let peer = thread::spawn(move || {
            assert!(matches!(recv_decoded(&b), Message::Hello(_)));
            let mut m = init(7, Some("open sesame"));
            m[9 + 12..9 + 24].fill(b'x');
            m[9 + 11] = 0;
            b.send(&m, None).unwrap();
            recv_decoded(&b)
        });
        let r = master(&a, &p, Instant::now() + Duration::from_millis(200), None);
        assert_eq!(
            peer.join().unwrap(),
            Message::Ack,
            "the secret was accepted"
        );
        // Then the peer went quiet or away: no further step.
        assert!(matches!(r, Err(HandshakeError::Control(_))));
    }

    #[test]
    fn master_rejects_wrong_version() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mut m = init(7, None);
            m[3] = 1; // version 1.0
            b.send(&m, None).unwrap();
        });
        assert!(matches!(r, Err(HandshakeError::Version { .. })));
        assert!(reason.contains("incompatible memif version"), "{reason}");
    }

    #[test]
    fn master_rejects_region_without_fd_or_out_of_order() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            send_ok(b, &init(7, None), None);
            b.send(&region_msg(0, 4096), None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::MissingFd { what: "region" })
        ));
        assert_eq!(reason, "Missing region fd");

        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mem = SharedMem::create("t", 4096, false).unwrap();
            send_ok(b, &init(7, None), None);
            b.send(&region_msg(1, 4096), Some(mem.fd())).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::RegionIndex {
                index: 1,
                expected: 0
            })
        ));
        assert!(reason.contains("Invalid region index"), "{reason}");
    }

    #[test]
    fn master_rejects_region_larger_than_its_fd() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mem = SharedMem::create("t", 4096, false).unwrap();
            send_ok(b, &init(7, None), None);
            b.send(&region_msg(0, 1 << 20), Some(mem.fd())).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::RegionSize {
                declared: 1048576,
                actual: 4096,
                ..
            })
        ));
        assert!(reason.contains("size 1048576 invalid"), "{reason}");
    }

    #[test]
    fn master_rejects_bad_ring_index_and_region_and_placement() {
        type Case = (u16, u16, u32, u8, &'static str);
        let cases: [Case; 5] = [
            (1, 0, 0, 4, "Invalid ring index 1"),
            (0, 3, 0, 4, "refers to region 3"),
            (0, 0, 4096 - 128, 4, "does not fit region 0"),
            (0, 0, 2, 4, "not 4-byte aligned"),
            (0, 0, 0, 15, "out of range"),
        ];
        for (index, region, offset, log2, want) in cases {
            let (r, reason) = misbehaving_slave(params(1), move |b| {
                let mem = SharedMem::create("t", 4096, false).unwrap();
                let efd = control::eventfd().unwrap();
                send_ok(b, &init(7, None), None);
                send_ok(b, &region_msg(0, 4096), Some(mem.fd()));
                b.send(
                    &ring_msg(true, index, region, offset, log2),
                    Some(efd.as_fd()),
                )
                .unwrap();
            });
            assert!(r.is_err());
            assert!(reason.contains(want), "{reason} lacks {want}");
        }
    }

    #[test]
    fn master_rejects_ring_without_eventfd() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mem = SharedMem::create("t", 4096, false).unwrap();
            send_ok(b, &init(7, None), None);
            send_ok(b, &region_msg(0, 4096), Some(mem.fd()));
            b.send(&ring_msg(true, 0, 0, 0, 4), None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::MissingFd { what: "interrupt" })
        ));
        assert_eq!(reason, "Missing interrupt fd");
    }

    #[test]
    fn master_rejects_connect_with_missing_ring_or_bad_cookie() {
        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mem = SharedMem::create("t", 4096, false).unwrap();
            let efd = control::eventfd().unwrap();
            send_ok(b, &init(7, None), None);
            send_ok(b, &region_msg(0, 4096), Some(mem.fd()));
            send_ok(b, &ring_msg(true, 0, 0, 0, 4), Some(efd.as_fd()));
            let c = Message::Connect {
                if_name: "x".into(),
            };
            b.send(&c.encode(), None).unwrap();
        });
        assert!(matches!(
            r,
            Err(HandshakeError::RingMissing { dir: "s2c", .. })
        ));
        assert!(reason.contains("missing at CONNECT"), "{reason}");

        // Both rings present but never initialised: cookie is zero.
        let (r, reason) = misbehaving_slave(params(1), |b| {
            let mem = SharedMem::create("t", 4096, false).unwrap();
            let efd = control::eventfd().unwrap();
            send_ok(b, &init(7, None), None);
            send_ok(b, &region_msg(0, 4096), Some(mem.fd()));
            send_ok(b, &ring_msg(true, 0, 0, 0, 4), Some(efd.as_fd()));
            send_ok(b, &ring_msg(false, 0, 0, 512, 4), Some(efd.as_fd()));
            let c = Message::Connect {
                if_name: "x".into(),
            };
            b.send(&c.encode(), None).unwrap();
        });
        assert!(matches!(r, Err(HandshakeError::Cookie { cookie: 0, .. })));
        assert!(reason.contains("Wrong ring"), "{reason}");
    }

    #[test]
    fn master_reports_peer_disconnect_without_answering() {
        let (a, b) = SeqPacket::pair().unwrap();
        let peer = thread::spawn(move || {
            assert!(matches!(recv_decoded(&b), Message::Hello(_)));
            let d = Message::Disconnect {
                code: 1,
                reason: "changed my mind".into(),
            };
            b.send(&d.encode(), None).unwrap();
            // Nothing more comes back: the master just closes.
            matches!(b.recv(Some(soon()), None), Err(ControlError::Closed))
        });
        let r = master(&a, &params(1), soon(), None);
        drop(a);
        assert!(peer.join().unwrap());
        assert!(
            matches!(r, Err(HandshakeError::PeerDisconnected { reason }) if reason == "changed my mind")
        );
    }

    #[test]
    fn master_times_out_on_a_silent_client() {
        let (a, _b) = SeqPacket::pair().unwrap();
        let r = master(
            &a,
            &params(1),
            Instant::now() + Duration::from_millis(30),
            None,
        );
        assert!(matches!(
            r,
            Err(HandshakeError::Control(ControlError::Timeout))
        ));
    }

    /// A hand-written server: sends `hello`, then plays `script`.
    fn misbehaving_master(
        p: Params,
        first: [u8; 128],
    ) -> (Result<Connection, HandshakeError>, String) {
        let (a, b) = SeqPacket::pair().unwrap();
        let peer = thread::spawn(move || {
            a.send_raw(&first, None).unwrap();
            disconnect_reason(&a)
        });
        let r = slave(&b, &p, soon(), None);
        (r, peer.join().unwrap())
    }

    fn hello_with(f: impl FnOnce(&mut Hello)) -> [u8; 128] {
        let mut h = Hello {
            name: "srv".into(),
            min_version: proto::VERSION,
            max_version: proto::VERSION,
            max_region: 255,
            max_s2c_ring: 255,
            max_c2s_ring: 255,
            max_log2_ring_size: 14,
        };
        f(&mut h);
        Message::Hello(h).encode()
    }

    #[test]
    fn slave_rejects_incompatible_hello() {
        let (r, reason) = misbehaving_master(params(1), hello_with(|h| h.min_version = 0x0300));
        assert!(matches!(r, Err(HandshakeError::Version { .. })));
        assert!(reason.contains("incompatible"), "{reason}");

        let (r, reason) = misbehaving_master(params(4), hello_with(|h| h.max_c2s_ring = 1));
        assert!(matches!(
            r,
            Err(HandshakeError::PeerLimit {
                max: 2,
                need: 4,
                ..
            })
        ));
        assert!(reason.contains("configure both ends alike"), "{reason}");

        let (r, _) = misbehaving_master(params(1), hello_with(|h| h.max_region = 0));
        assert!(matches!(
            r,
            Err(HandshakeError::PeerLimit {
                what: "regions",
                ..
            })
        ));
    }

    #[test]
    fn slave_rejects_garbage_instead_of_hello() {
        let (r, reason) = misbehaving_master(params(1), [0xee; 128]);
        assert!(matches!(
            r,
            Err(HandshakeError::Proto(ProtoError::UnknownType { .. }))
        ));
        assert!(reason.contains("unknown message type"), "{reason}");
        let (r, _) = misbehaving_master(params(1), Message::Ack.encode());
        assert!(matches!(
            r,
            Err(HandshakeError::Unexpected {
                expected: "HELLO",
                got: "ACK"
            })
        ));
    }

    #[test]
    fn slave_uses_the_masters_smaller_ring_size() {
        let (a, b) = SeqPacket::pair().unwrap();
        let peer = thread::spawn(move || {
            a.send(&hello_with(|h| h.max_log2_ring_size = 2), None)
                .unwrap();
            // Collect the slave's INIT, regions and rings.
            let mut log2s = Vec::new();
            loop {
                match recv_decoded(&a) {
                    Message::AddRing(r) => log2s.push(r.log2_ring_size),
                    Message::Connect { .. } => break,
                    _ => {}
                }
                a.send(&Message::Ack.encode(), None).unwrap();
            }
            a.send(
                &Message::Connected {
                    if_name: "m".into(),
                }
                .encode(),
                None,
            )
            .unwrap();
            log2s
        });
        let conn = slave(&b, &params(1), soon(), None).unwrap();
        assert_eq!(peer.join().unwrap(), vec![2, 2]);
        assert_eq!(conn.ring(false, 0).size(), 4);
        assert_eq!(conn.peer_if_name, "m");
    }

    #[test]
    fn own_layout_gives_disjoint_buffers() {
        let own = OwnLayout {
            region: 1,
            buffer_size: 2048,
            ring_size: 1024,
            rings: 2,
        };
        assert_eq!(own.buffer_offset(true, 0, 0), 0);
        assert_eq!(own.buffer_offset(true, 0, 1025), 2048);
        assert_eq!(own.buffer_offset(true, 1, 0), 1024 * 2048);
        assert_eq!(own.buffer_offset(false, 0, 0), 2 * 1024 * 2048);
        assert_eq!(own.buffer_offset(false, 1, 1023), (4 * 1024 - 1) * 2048);
    }
}
