//! The network interface of one elastic thread: everything between a
//! received Ethernet frame and TCP, and between a TCP segment and a frame
//! ready for the NIC.
//!
//! Receive ([`Interface::receive`]):
//! - Ethernet (RFC 894): frames not addressed to our MAC or broadcast are
//!   dropped; ARP and IPv4 are processed, other EtherTypes dropped.
//! - ARP (RFC 826): the packet-reception algorithm with its merge step —
//!   an existing entry for the sender is refreshed; if we are the target
//!   the sender is learned and a request is answered; a sender we are
//!   resolving is learned from any ARP packet. Learning an address
//!   releases the frames waiting for it, in order. Senders that are
//!   multicast, unspecified (RFC 5227 probes are answered, not learned),
//!   off our subnet, or claim our own address are not learned.
//! - IPv4 (RFC 791, RFC 1122 §3.2.1): header checksum verified, options
//!   ignored, fragments dropped (no reassembly), only datagrams for our
//!   address accepted; TTL is not checked on local delivery (RFC 1122
//!   §3.2.1.7). A unicast datagram that arrived in a link-layer broadcast
//!   is dropped (RFC 1122 §3.3.6), as is one from a broadcast, multicast or
//!   unspecified source address (RFC 1122 §3.2.1.3).
//! - ICMP (RFC 792, RFC 1122 §3.2.2.6): echo requests are answered in the
//!   request's own buffer when nobody else holds it; other messages are
//!   counted and ignored. No ICMP errors are generated.
//! - TCP: the segment is returned to the caller as a view into the
//!   received buffer ([`Delivered::Tcp`]), no copy.
//!
//! Send ([`IfaceSender`], the [`IpSender`] TCP uses): a frame is built in
//! one pool buffer — TCP fills its bytes, then the IPv4 header (DF set,
//! TTL 64, a per-interface identification counter) and the Ethernet header
//! go in front. The next hop is the destination on our subnet, else the
//! gateway; its MAC comes from the [`ArpCache`], and a frame for an
//! unresolved next hop waits there while a request goes out. The headers
//! of recent destinations reached through a plain ARP hit are kept as
//! templates (a small direct-mapped table): while the ARP cache is
//! unchanged and the entry is not due for a refresh, the next datagram to
//! that destination copies them and patches length, identification and
//! checksum (the checksum from the template's partial sum, RFC 1071
//! §2(A)) — the same bytes, less work.
//!
//! Every dropped frame is counted in [`NetStats`] by reason and traced at
//! debug level. Nothing here panics on network input, and nothing allocates
//! in steady state as long as the caller's `tx` vector has capacity.

use std::net::Ipv4Addr;

use crate::buf::{PktBuf, Pool, BUF_DATA};
use crate::net::arp_cache::{ArpCache, ArpCacheStats, ArpConfig, Enqueued, Lookup};
use crate::net::IpSender;
use crate::time::Instant;
use crate::wire::arp::{self, ArpOperation, ArpPacket, ArpRepr};
use crate::wire::checksum;
use crate::wire::ethernet::{self, EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
use crate::wire::icmp::{self, Icmpv4Packet, Icmpv4Repr};
use crate::wire::ipv4::{self, IpProtocol, Ipv4Error, Ipv4Packet, Ipv4Repr};

/// Bytes of Ethernet and IPv4 header in front of a transport segment.
const HDRS: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;

/// Smallest MTU an IPv4 link may have (RFC 791 §3.2).
pub const MIN_MTU: usize = 68;
/// Largest MTU a frame in one pool buffer can carry.
pub const MAX_MTU: usize = BUF_DATA - ethernet::HEADER_LEN;

/// Errors in an interface configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    /// The MAC address is a group address.
    #[error("interface MAC {mac} is a multicast address; use a unicast one (first octet even)")]
    MulticastMac {
        /// The configured MAC.
        mac: EthernetAddress,
    },
    /// The prefix length is beyond 32.
    #[error("prefix length /{prefix_len} is longer than 32 bits")]
    PrefixTooLong {
        /// The configured prefix length.
        prefix_len: u8,
    },
    /// The address cannot be a host's own.
    #[error("{ip} cannot be an interface address: use a unicast IPv4 address")]
    BadAddress {
        /// The configured address.
        ip: Ipv4Addr,
    },
    /// The gateway is not on the interface's subnet.
    #[error(
        "gateway {gateway} is not on the subnet {ip}/{prefix_len}; fix the prefix or the gateway"
    )]
    GatewayOffLink {
        /// The configured gateway.
        gateway: Ipv4Addr,
        /// The interface address.
        ip: Ipv4Addr,
        /// The prefix length.
        prefix_len: u8,
    },
    /// The MTU is outside what IPv4 and the packet buffers allow.
    #[error("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU} (IPv4 minimum to one packet buffer)")]
    MtuOutOfRange {
        /// The configured MTU.
        mtu: usize,
    },
}

/// The addresses and link parameters of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Our MAC address.
    pub mac: EthernetAddress,
    /// Our IPv4 address.
    pub ip: Ipv4Addr,
    /// Length of the subnet prefix (24 for a /24).
    pub prefix_len: u8,
    /// The router for destinations off the subnet, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Largest IPv4 datagram (header included) sent or echoed, normally
    /// 1500.
    pub mtu: usize,
}

impl IfaceConfig {
    /// Checks the configuration; [`Interface::new`] requires it to pass.
    pub fn validate(&self) -> Result<(), IfaceError> {
        if self.mac.is_multicast() {
            return Err(IfaceError::MulticastMac { mac: self.mac });
        }
        if self.prefix_len > 32 {
            return Err(IfaceError::PrefixTooLong {
                prefix_len: self.prefix_len,
            });
        }
        let ip = self.ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(IfaceError::BadAddress { ip });
        }
        if let Some(gateway) = self.gateway {
            if !self.on_link(gateway) || gateway == ip {
                return Err(IfaceError::GatewayOffLink {
                    gateway,
                    ip,
                    prefix_len: self.prefix_len,
                });
            }
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(IfaceError::MtuOutOfRange { mtu: self.mtu });
        }
        Ok(())
    }

    /// The subnet mask as a number.
    #[inline]
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0)
    }

    /// Whether `addr` is on our subnet.
    #[inline]
    pub fn on_link(&self, addr: Ipv4Addr) -> bool {
        (u32::from(addr) ^ u32::from(self.ip)) & self.mask() == 0
    }

    /// Whether `addr` is our subnet's directed broadcast address (for
    /// prefixes up to /30).
    #[inline]
    fn is_subnet_broadcast(&self, addr: Ipv4Addr) -> bool {
        self.prefix_len <= 30 && self.on_link(addr) && u32::from(addr) | self.mask() == u32::MAX
    }
}

/// Counters of an interface, by event and drop reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to [`Interface::receive`].
    pub rx_frames: u64,
    /// Frames for another MAC (or a multicast group).
    pub not_for_us: u64,
    /// Frames shorter than an Ethernet header or from a multicast source.
    pub bad_eth: u64,
    /// Frames of an EtherType other than ARP and IPv4.
    pub unknown_ethertype: u64,
    /// ARP packets that are malformed, not Ethernet/IPv4, or from a
    /// multicast MAC.
    pub bad_arp: u64,
    /// ARP requests for our address that were answered.
    pub arp_requests_answered: u64,
    /// ARP packets from which a mapping was learned or refreshed.
    pub arp_learned: u64,
    /// ARP packets that claim our own IPv4 address.
    pub arp_conflict: u64,
    /// IPv4 packets with a bad length, IHL or version.
    pub bad_ipv4_header: u64,
    /// IPv4 packets whose header checksum does not verify.
    pub bad_ipv4_checksum: u64,
    /// IPv4 fragments (not reassembled).
    pub ip_fragment: u64,
    /// IPv4 packets for another address.
    pub ip_not_for_us: u64,
    /// Unicast IPv4 packets that arrived in a link-layer broadcast.
    pub ip_link_broadcast: u64,
    /// IPv4 packets from a broadcast, multicast or unspecified source.
    pub ip_bad_src: u64,
    /// IPv4 packets of a protocol other than TCP and ICMP.
    pub unknown_protocol: u64,
    /// ICMP messages that are truncated or fail their checksum.
    pub bad_icmp: u64,
    /// ICMP echo requests answered.
    pub icmp_echo_replied: u64,
    /// ICMP messages other than echo requests (ignored).
    pub icmp_ignored: u64,
    /// TCP segments returned to the caller.
    pub tcp_delivered: u64,
    /// Frames pushed to the TX vector (including ARP).
    pub tx_frames: u64,
    /// ARP requests sent (first tries, retransmissions and refresh polls).
    pub arp_requests_sent: u64,
    /// Frames not sent because the pool had no free buffer.
    pub tx_pool_exhausted: u64,
    /// Datagrams not sent because they exceed the MTU.
    pub tx_too_big: u64,
    /// Datagrams not sent because the destination is off the subnet and
    /// there is no gateway.
    pub tx_no_route: u64,
    /// Datagrams not sent because their source is not our address.
    pub tx_bad_src: u64,
    /// Frames dropped because the ARP pending queue was full.
    pub arp_pending_dropped: u64,
    /// Frames dropped because their next hop did not answer ARP.
    pub arp_timeout_dropped: u64,
    /// Entries in the ARP cache (gauge).
    pub arp_entries: u64,
    /// Frames waiting for ARP resolution (gauge).
    pub arp_pending: u64,
}

impl NetStats {
    /// Every frame or datagram dropped, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.not_for_us
            + self.bad_eth
            + self.unknown_ethertype
            + self.bad_arp
            + self.bad_ipv4_header
            + self.bad_ipv4_checksum
            + self.ip_fragment
            + self.ip_not_for_us
            + self.ip_link_broadcast
            + self.ip_bad_src
            + self.unknown_protocol
            + self.bad_icmp
            + self.tx_pool_exhausted
            + self.tx_too_big
            + self.tx_no_route
            + self.tx_bad_src
            + self.arp_pending_dropped
            + self.arp_timeout_dropped
    }
}

/// A packet the interface hands up to the caller.
#[derive(Debug)]
pub enum Delivered {
    /// A TCP segment for our address.
    Tcp {
        /// Source address (the peer).
        src: Ipv4Addr,
        /// Destination address (ours).
        dst: Ipv4Addr,
        /// The segment (the IPv4 payload, padding trimmed) as a window
        /// into the received frame's buffer.
        segment: PktBuf,
    },
}

/// The network interface of one queue; see the module docs.
#[derive(Debug)]
pub struct Interface {
    cfg: IfaceConfig,
    arp: ArpCache,
    next_ident: u16,
    stats: NetStats,
    /// Headers of recent destinations reached through a plain ARP hit,
    /// reused while that stays true; direct-mapped by [`template_slot`].
    tx_templates: Box<[Option<TxTemplate>]>,
}

/// Entries of the TX header template table (a power of two).
const TX_TEMPLATES: usize = 64;

/// The template table entry for `dst`: the low bits of the address, which
/// tell apart the hosts of a subnet.
#[inline]
fn template_slot(dst: Ipv4Addr) -> usize {
    u32::from(dst) as usize & (TX_TEMPLATES - 1)
}

/// The Ethernet and IPv4 headers of datagrams to one destination, ready to
/// copy: everything but the total length, identification and checksum
/// (which are zero here) is what [`Ipv4Repr::emit`] and
/// [`EthernetRepr::emit`] write.
///
/// Valid while the ARP cache's generation is `arp_generation` and the
/// clock is before `until`: then a lookup of the next hop would be a plain
/// hit on the MAC in the header (see [`ArpCache::stable_hit`]), so the
/// frame is exactly what the full path builds, without its work.
#[derive(Debug, Clone, Copy)]
struct TxTemplate {
    dst: Ipv4Addr,
    protocol: u8,
    arp_generation: u64,
    until: Instant,
    /// One's-complement sum (RFC 1071, not folded) of the IPv4 header
    /// with total length, identification and checksum zero.
    partial_sum: u32,
    hdr: [u8; HDRS],
}

/// Offsets in a frame of the IPv4 fields a [`TxTemplate`] leaves out.
const TOTAL_LEN_AT: usize = ethernet::HEADER_LEN + 2;
const IDENT_AT: usize = ethernet::HEADER_LEN + 4;
const CHECKSUM_AT: usize = ethernet::HEADER_LEN + 10;

impl TxTemplate {
    /// The headers `send_ipv4` would write towards `dst` via `mac`.
    fn new(
        src: (EthernetAddress, Ipv4Addr),
        dst: Ipv4Addr,
        mac: EthernetAddress,
        protocol: IpProtocol,
        arp_generation: u64,
        until: Instant,
    ) -> TxTemplate {
        let mut hdr = [0u8; HDRS];
        let mut f = EthernetFrame::new_unchecked(&mut hdr[..]);
        EthernetRepr {
            src_addr: src.0,
            dst_addr: mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut f);
        let mut ip = Ipv4Packet::new_unchecked(f.payload_mut());
        Ipv4Repr {
            src_addr: src.1,
            dst_addr: dst,
            protocol,
            payload_len: 0,
            ttl: ipv4::DEFAULT_TTL,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut ip);
        ip.set_total_len(0);
        ip.set_checksum(0);
        let partial_sum = checksum::sum(0, &hdr[ethernet::HEADER_LEN..]);
        TxTemplate {
            dst,
            protocol: u8::from(protocol),
            arp_generation,
            until,
            partial_sum,
            hdr,
        }
    }

    /// Writes the headers of a datagram with `l4_len` payload bytes and
    /// identification `ident` into the first [`HDRS`] bytes of `frame`.
    #[inline(always)]
    fn write(&self, frame: &mut [u8], l4_len: usize, ident: u16) {
        let total_len = (ipv4::HEADER_LEN + l4_len) as u16;
        // The header sum is linear in its 16-bit words: add the two fields
        // that were zero in the template (RFC 1071 §2(A)).
        let c = checksum::finish(self.partial_sum + u32::from(total_len) + u32::from(ident));
        let h = &mut frame[..HDRS];
        h.copy_from_slice(&self.hdr);
        h[TOTAL_LEN_AT..TOTAL_LEN_AT + 2].copy_from_slice(&total_len.to_be_bytes());
        h[IDENT_AT..IDENT_AT + 2].copy_from_slice(&ident.to_be_bytes());
        h[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Sets the destination MAC of a frame this interface built.
///
/// Frames built here are only ever held by one handle (the TCP fill
/// closure sees bytes, not the buffer), so the buffer is writable.
fn set_eth_dst(frame: &mut PktBuf, mac: EthernetAddress) {
    let bytes = frame
        .data_mut()
        .expect("a frame built by the interface has a single handle");
    EthernetFrame::new_unchecked(bytes).set_dst_addr(mac);
}

/// Builds and queues an ARP request for `target`, broadcast or (to refresh
/// a known entry) unicast to `to`.
fn send_arp_request(
    cfg: &IfaceConfig,
    stats: &mut NetStats,
    pool: &Pool,
    tx: &mut Vec<PktBuf>,
    target: Ipv4Addr,
    to: Option<EthernetAddress>,
) {
    let Some(mut buf) = pool.alloc() else {
        stats.tx_pool_exhausted += 1;
        return;
    };
    let arp = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: cfg.mac,
        source_protocol_addr: cfg.ip,
        target_hardware_addr: EthernetAddress::UNSPECIFIED,
        target_protocol_addr: target,
    };
    let eth = EthernetRepr {
        src_addr: cfg.mac,
        dst_addr: to.unwrap_or(EthernetAddress::BROADCAST),
        ethertype: EtherType::Arp,
    };
    if !buf.append(ethernet::HEADER_LEN + arp::ETHERNET_IPV4_LEN) {
        // A fresh buffer has BUF_DATA bytes of room: cannot happen.
        stats.tx_too_big += 1;
        return;
    }
    emit_arp(&mut buf, &eth, &arp);
    tx.push(buf);
    stats.arp_requests_sent += 1;
    stats.tx_frames += 1;
}

/// Writes an Ethernet header and an ARP packet into a writable window of
/// exactly that size.
fn emit_arp(buf: &mut PktBuf, eth: &EthernetRepr, arp: &ArpRepr) {
    let bytes = buf
        .data_mut()
        .expect("an ARP frame being built has a single handle");
    let mut frame = EthernetFrame::new_unchecked(bytes);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
}

impl Interface {
    /// An interface with the default ARP cache sizes ([`ArpConfig`]).
    ///
    /// # Panics
    /// If `cfg` fails [`IfaceConfig::validate`]; validate configuration
    /// that comes from outside the program first.
    pub fn new(cfg: IfaceConfig, now: Instant) -> Interface {
        Self::with_arp_config(cfg, ArpConfig::default(), now)
    }

    /// An interface with the given ARP cache sizes and timers.
    ///
    /// # Panics
    /// If `cfg` fails [`IfaceConfig::validate`].
    pub fn with_arp_config(cfg: IfaceConfig, arp: ArpConfig, now: Instant) -> Interface {
        if let Err(e) = cfg.validate() {
            panic!("invalid interface configuration: {e}");
        }
        // RFC 6864 leaves the identification of atomic datagrams free;
        // starting from the clock avoids repeating the last run's values.
        let nanos = now.as_nanos();
        Interface {
            cfg,
            arp: ArpCache::new(arp),
            next_ident: (nanos ^ (nanos >> 16) ^ (nanos >> 32)) as u16,
            stats: NetStats::default(),
            tx_templates: vec![None; TX_TEMPLATES].into_boxed_slice(),
        }
    }

    /// Our MAC address.
    #[inline]
    pub fn mac(&self) -> EthernetAddress {
        self.cfg.mac
    }

    /// Our IPv4 address.
    #[inline]
    pub fn ip(&self) -> Ipv4Addr {
        self.cfg.ip
    }

    /// The configuration.
    #[inline]
    pub fn config(&self) -> &IfaceConfig {
        &self.cfg
    }

    /// Counters, with the ARP cache's gauges and drop counts folded in.
    pub fn stats(&self) -> NetStats {
        let arp: ArpCacheStats = self.arp.stats();
        NetStats {
            arp_pending_dropped: arp.pending_dropped,
            arp_timeout_dropped: arp.timeout_dropped,
            arp_entries: arp.entries as u64,
            arp_pending: arp.pending_frames as u64,
            ..self.stats
        }
    }

    /// The ARP cache (for inspection).
    pub fn arp_cache(&self) -> &ArpCache {
        &self.arp
    }

    /// Adds a static ARP entry (never expires). Returns false if the cache
    /// is full of static entries.
    pub fn add_static_arp(&mut self, ip: Ipv4Addr, mac: EthernetAddress) -> bool {
        self.arp.add_static(ip, mac)
    }

    /// The next hop for `dst`: itself on our subnet, else the gateway.
    #[inline]
    fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.cfg.on_link(dst) {
            Some(dst)
        } else {
            self.cfg.gateway
        }
    }

    #[inline]
    fn take_ident(&mut self) -> u16 {
        let id = self.next_ident;
        self.next_ident = id.wrapping_add(1);
        id
    }

    /// Processes one received frame; see the module docs. Replies (ARP,
    /// ICMP) and frames released by ARP resolution are pushed to `tx`; a
    /// TCP segment is returned.
    pub fn receive(
        &mut self,
        now: Instant,
        frame: PktBuf,
        pool: &Pool,
        tx: &mut Vec<PktBuf>,
    ) -> Option<Delivered> {
        self.stats.rx_frames += 1;
        if let Some((src, payload_len)) = self.plain_tcp(frame.data()) {
            let mut segment = frame;
            segment.advance(HDRS);
            segment.truncate(payload_len);
            self.stats.tcp_delivered += 1;
            return Some(Delivered::Tcp {
                src,
                dst: self.cfg.ip,
                segment,
            });
        }
        self.receive_full(now, frame, pool, tx)
    }

    /// [`receive`](Self::receive) for every frame that is not plain TCP to
    /// us (and, in tests, for those too, to check the two paths agree).
    fn receive_full(
        &mut self,
        now: Instant,
        frame: PktBuf,
        pool: &Pool,
        tx: &mut Vec<PktBuf>,
    ) -> Option<Delivered> {
        let eth =
            match EthernetFrame::new_checked(frame.data()).and_then(|f| EthernetRepr::parse(&f)) {
                Ok(eth) => eth,
                Err(e) => {
                    self.stats.bad_eth += 1;
                    log::debug!("drop frame: {e}");
                    return None;
                }
            };
        if eth.dst_addr != self.cfg.mac && !eth.dst_addr.is_broadcast() {
            self.stats.not_for_us += 1;
            return None;
        }
        if eth.src_addr.is_multicast() {
            self.stats.bad_eth += 1;
            log::debug!("drop frame from multicast source {}", eth.src_addr);
            return None;
        }
        match eth.ethertype {
            EtherType::Arp => {
                self.process_arp(now, frame, pool, tx);
                None
            }
            EtherType::Ipv4 => self.process_ipv4(frame, &eth, pool, tx),
            EtherType::Ipv6 | EtherType::Unknown(_) => {
                self.stats.unknown_ethertype += 1;
                None
            }
        }
    }

    /// The common case in one pass over fixed offsets: a unicast frame
    /// from a unicast MAC to ours carrying an option-less, unfragmented
    /// IPv4 datagram with a good checksum from an acceptable source to our
    /// address, protocol TCP. Returns the source and the TCP length, or
    /// `None` for anything else, which then takes the full path (where it
    /// is processed or dropped and counted); everything accepted here
    /// would be delivered the same way by the full path.
    #[inline]
    fn plain_tcp(&self, d: &[u8]) -> Option<(Ipv4Addr, usize)> {
        let h: &[u8; HDRS] = d.get(..HDRS)?.try_into().ok()?;
        let ip: &[u8; ipv4::HEADER_LEN] = h[ethernet::HEADER_LEN..].try_into().ok()?;
        // Our MAC is unicast (validated), so a match is not a broadcast.
        if h[..6] != self.cfg.mac.0
            || h[6] & 0x01 != 0
            || h[12..14] != [0x08, 0x00]
            || ip[0] != 0x45
            || ip[9] != u8::from(IpProtocol::Tcp)
            || ip[16..20] != self.cfg.ip.octets()
        {
            return None;
        }
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        // A fragment has MF set or a non-zero offset: only DF may be set.
        if total_len < ipv4::HEADER_LEN
            || total_len > d.len() - ethernet::HEADER_LEN
            || ip[6] & 0xbf != 0
            || ip[7] != 0
            || !ipv4::header_checksum_ok(ip)
        {
            return None;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        if src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || self.cfg.is_subnet_broadcast(src)
        {
            return None;
        }
        Some((src, total_len - ipv4::HEADER_LEN))
    }

    fn process_arp(&mut self, now: Instant, frame: PktBuf, pool: &Pool, tx: &mut Vec<PktBuf>) {
        let payload = &frame.data()[ethernet::HEADER_LEN..];
        let repr = match ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) {
            Ok(r) => r,
            Err(e) => {
                self.stats.bad_arp += 1;
                log::debug!("drop ARP: {e}");
                return;
            }
        };
        let (sha, spa) = (repr.source_hardware_addr, repr.source_protocol_addr);
        if sha.is_multicast() {
            self.stats.bad_arp += 1;
            log::debug!("drop ARP from multicast hardware address {sha}");
            return;
        }
        if spa == self.cfg.ip {
            self.stats.arp_conflict += 1;
            log::debug!("ARP from {sha} claims our address {spa}");
            return;
        }
        let for_us = repr.target_protocol_addr == self.cfg.ip;
        let learnable = !spa.is_unspecified()
            && !spa.is_broadcast()
            && !spa.is_multicast()
            && self.cfg.on_link(spa);
        if learnable {
            // RFC 826: merge into an existing entry; add one only if the
            // packet is for us — or, beyond RFC 826, if we are resolving
            // the sender anyway (e.g. its gratuitous ARP crossed our
            // request).
            let learned = if for_us || self.arp.is_resolving(spa) {
                self.arp.insert(spa, sha, now)
            } else {
                self.arp.update(spa, sha, now)
            };
            if learned {
                self.stats.arp_learned += 1;
                let stats = &mut self.stats;
                self.arp.take_pending(spa, |mut f| {
                    set_eth_dst(&mut f, sha);
                    tx.push(f);
                    stats.tx_frames += 1;
                });
            }
        }
        if for_us && repr.operation == ArpOperation::Request {
            self.reply_arp(frame, &repr, pool, tx);
        }
    }

    /// Answers an ARP request for our address, in the request's buffer if
    /// we hold the only handle to it.
    fn reply_arp(&mut self, frame: PktBuf, req: &ArpRepr, pool: &Pool, tx: &mut Vec<PktBuf>) {
        const LEN: usize = ethernet::HEADER_LEN + arp::ETHERNET_IPV4_LEN;
        let mut buf = if frame.is_unique() {
            // The frame passed ArpPacket::check_len, so it holds LEN bytes.
            let mut f = frame;
            f.truncate(LEN);
            f
        } else {
            drop(frame);
            let Some(mut b) = pool.alloc() else {
                self.stats.tx_pool_exhausted += 1;
                return;
            };
            if !b.append(LEN) {
                self.stats.tx_too_big += 1;
                return;
            }
            b
        };
        let reply = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.cfg.mac,
            source_protocol_addr: self.cfg.ip,
            target_hardware_addr: req.source_hardware_addr,
            target_protocol_addr: req.source_protocol_addr,
        };
        let eth = EthernetRepr {
            src_addr: self.cfg.mac,
            dst_addr: req.source_hardware_addr,
            ethertype: EtherType::Arp,
        };
        emit_arp(&mut buf, &eth, &reply);
        tx.push(buf);
        self.stats.arp_requests_answered += 1;
        self.stats.tx_frames += 1;
    }

    fn process_ipv4(
        &mut self,
        mut frame: PktBuf,
        eth: &EthernetRepr,
        pool: &Pool,
        tx: &mut Vec<PktBuf>,
    ) -> Option<Delivered> {
        let parsed = Ipv4Packet::new_checked(&frame.data()[ethernet::HEADER_LEN..])
            .and_then(|p| Ok((Ipv4Repr::parse(&p)?, p.header_len())));
        let (ip, header_len) = match parsed {
            Ok(v) => v,
            Err(e) => {
                match e {
                    Ipv4Error::BadChecksum => self.stats.bad_ipv4_checksum += 1,
                    Ipv4Error::Fragment { .. } => self.stats.ip_fragment += 1,
                    Ipv4Error::Truncated { .. }
                    | Ipv4Error::BadHeaderLength { .. }
                    | Ipv4Error::BadTotalLength { .. }
                    | Ipv4Error::BadVersion { .. } => self.stats.bad_ipv4_header += 1,
                }
                log::debug!("drop IPv4: {e}");
                return None;
            }
        };
        if ip.dst_addr != self.cfg.ip {
            self.stats.ip_not_for_us += 1;
            return None;
        }
        if eth.dst_addr.is_broadcast() {
            self.stats.ip_link_broadcast += 1;
            return None;
        }
        let src = ip.src_addr;
        if src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || self.cfg.is_subnet_broadcast(src)
        {
            self.stats.ip_bad_src += 1;
            log::debug!("drop IPv4 from bad source {src}");
            return None;
        }
        let l4_off = ethernet::HEADER_LEN + header_len;
        match ip.protocol {
            IpProtocol::Tcp => {
                frame.advance(l4_off);
                frame.truncate(ip.payload_len);
                self.stats.tcp_delivered += 1;
                Some(Delivered::Tcp {
                    src,
                    dst: ip.dst_addr,
                    segment: frame,
                })
            }
            IpProtocol::Icmp => {
                self.process_icmp(frame, eth, &ip, l4_off, pool, tx);
                None
            }
            IpProtocol::Udp | IpProtocol::Unknown(_) => {
                self.stats.unknown_protocol += 1;
                None
            }
        }
    }

    fn process_icmp(
        &mut self,
        frame: PktBuf,
        eth: &EthernetRepr,
        ip: &Ipv4Repr,
        icmp_off: usize,
        pool: &Pool,
        tx: &mut Vec<PktBuf>,
    ) {
        let icmp_len = ip.payload_len;
        let msg = &frame.data()[icmp_off..icmp_off + icmp_len];
        let is_request = match Icmpv4Packet::new_checked(msg).and_then(|p| {
            Icmpv4Repr::parse(&p).map(|r| matches!(r, Icmpv4Repr::EchoRequest { .. }))
        }) {
            Ok(r) => r,
            Err(e) => {
                self.stats.bad_icmp += 1;
                log::debug!("drop ICMP: {e}");
                return;
            }
        };
        if !is_request {
            self.stats.icmp_ignored += 1;
            return;
        }
        if ipv4::HEADER_LEN + icmp_len > self.cfg.mtu {
            self.stats.tx_too_big += 1;
            return;
        }
        // The reply is the request with type 0, a new checksum and new
        // headers. In place: the ICMP message stays where it is and the
        // headers go right in front of it (over the request's headers,
        // whose IPv4 part is at least as long).
        let mut out = if frame.is_unique() {
            let mut f = frame;
            let start = f.offset() + icmp_off - HDRS;
            f.set_window(start, HDRS + icmp_len);
            f
        } else {
            let Some(mut b) = pool.alloc() else {
                self.stats.tx_pool_exhausted += 1;
                return;
            };
            if !b.append(HDRS) || !b.extend_from_slice(&frame.data()[icmp_off..icmp_off + icmp_len])
            {
                self.stats.tx_too_big += 1;
                return;
            }
            b
        };
        let reply_ip = Ipv4Repr {
            src_addr: self.cfg.ip,
            dst_addr: ip.src_addr,
            protocol: IpProtocol::Icmp,
            payload_len: icmp_len,
            ttl: ipv4::DEFAULT_TTL,
            ident: self.take_ident(),
            dont_frag: true,
        };
        let reply_eth = EthernetRepr {
            src_addr: self.cfg.mac,
            dst_addr: eth.src_addr,
            ethertype: EtherType::Ipv4,
        };
        let bytes = out
            .data_mut()
            .expect("the reply buffer is uniquely held or freshly allocated");
        let mut icmp_msg = Icmpv4Packet::new_unchecked(&mut bytes[HDRS..]);
        icmp_msg.set_msg_type(icmp::TYPE_ECHO_REPLY);
        icmp_msg.fill_checksum();
        let mut f = EthernetFrame::new_unchecked(bytes);
        reply_eth.emit(&mut f);
        reply_ip.emit(&mut Ipv4Packet::new_unchecked(f.payload_mut()));
        tx.push(out);
        self.stats.icmp_echo_replied += 1;
        self.stats.tx_frames += 1;
    }

    /// Advances ARP to `now`: retransmits requests that are due, drops the
    /// frames of next hops that never answered.
    pub fn poll(&mut self, now: Instant, pool: &Pool, tx: &mut Vec<PktBuf>) {
        let (cfg, stats) = (&self.cfg, &mut self.stats);
        self.arp
            .poll(now, |ip| send_arp_request(cfg, stats, pool, tx, ip, None));
    }

    /// The earliest time [`poll`](Self::poll) has work to do, if any.
    pub fn poll_at(&self) -> Option<Instant> {
        self.arp.poll_at()
    }

    /// Binds the interface to a pool and TX vector for TCP output.
    pub fn sender<'a>(
        &'a mut self,
        now: Instant,
        pool: &'a Pool,
        tx: &'a mut Vec<PktBuf>,
    ) -> IfaceSender<'a> {
        IfaceSender {
            iface: self,
            now,
            pool,
            tx,
        }
    }
}

/// An [`Interface`] bound to a pool and a TX vector for one turn of the
/// loop: the [`IpSender`] TCP emits segments through.
#[derive(Debug)]
pub struct IfaceSender<'a> {
    iface: &'a mut Interface,
    now: Instant,
    pool: &'a Pool,
    tx: &'a mut Vec<PktBuf>,
}

impl IfaceSender<'_> {
    /// Builds an IPv4 datagram of `l4_len` payload bytes filled by `fill`
    /// and sends it towards `dst`.
    fn send_ipv4(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        let (iface, pool) = (&mut *self.iface, self.pool);
        if src != iface.cfg.ip {
            iface.stats.tx_bad_src += 1;
            return false;
        }
        if ipv4::HEADER_LEN + l4_len > iface.cfg.mtu {
            iface.stats.tx_too_big += 1;
            return false;
        }
        let protocol_nr = u8::from(protocol);
        let slot = template_slot(dst);
        let (generation, now) = (iface.arp.generation(), self.now);
        if let Some(t) = iface.tx_templates[slot].as_ref().filter(|t| {
            t.dst == dst
                && t.protocol == protocol_nr
                && t.arp_generation == generation
                && now < t.until
        }) {
            // Fields, not methods, below: `t` borrows the template table.
            let Some(mut buf) = pool.alloc() else {
                iface.stats.tx_pool_exhausted += 1;
                return false;
            };
            if !buf.append(HDRS + l4_len) {
                iface.stats.tx_too_big += 1;
                return false;
            }
            let ident = iface.next_ident;
            iface.next_ident = ident.wrapping_add(1);
            let bytes = buf
                .data_mut()
                .expect("a freshly allocated buffer is unique");
            fill(&mut bytes[HDRS..]);
            t.write(bytes, l4_len, ident);
            self.tx.push(buf);
            iface.stats.tx_frames += 1;
            return true;
        }
        let Some(next_hop) = iface.next_hop(dst) else {
            iface.stats.tx_no_route += 1;
            return false;
        };
        let Some(mut buf) = pool.alloc() else {
            iface.stats.tx_pool_exhausted += 1;
            return false;
        };
        if !buf.append(HDRS + l4_len) {
            // The MTU is at most MAX_MTU, which fits a buffer.
            iface.stats.tx_too_big += 1;
            return false;
        }
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len: l4_len,
            ttl: ipv4::DEFAULT_TTL,
            ident: iface.take_ident(),
            dont_frag: true,
        };
        let eth = EthernetRepr {
            src_addr: iface.cfg.mac,
            dst_addr: EthernetAddress::UNSPECIFIED,
            ethertype: EtherType::Ipv4,
        };
        {
            let bytes = buf
                .data_mut()
                .expect("a freshly allocated buffer is unique");
            fill(&mut bytes[HDRS..]);
            let mut f = EthernetFrame::new_unchecked(bytes);
            eth.emit(&mut f);
            ip.emit(&mut Ipv4Packet::new_unchecked(f.payload_mut()));
        }
        let sent = self.transmit(next_hop, buf);
        let iface = &mut *self.iface;
        iface.tx_templates[template_slot(dst)] =
            iface
                .arp
                .stable_hit(next_hop, self.now)
                .map(|(mac, until)| {
                    TxTemplate::new(
                        (iface.cfg.mac, src),
                        dst,
                        mac,
                        protocol,
                        iface.arp.generation(),
                        until,
                    )
                });
        sent
    }

    /// Sends a frame whose Ethernet destination is still to be filled in
    /// towards `next_hop`, resolving it first if needed.
    fn transmit(&mut self, next_hop: Ipv4Addr, mut frame: PktBuf) -> bool {
        let (iface, now, pool, tx) = (&mut *self.iface, self.now, self.pool, &mut *self.tx);
        match iface.arp.lookup(next_hop, now) {
            Lookup::Hit(mac) => {
                set_eth_dst(&mut frame, mac);
                tx.push(frame);
                iface.stats.tx_frames += 1;
                true
            }
            Lookup::Refresh(mac) => {
                set_eth_dst(&mut frame, mac);
                tx.push(frame);
                iface.stats.tx_frames += 1;
                send_arp_request(&iface.cfg, &mut iface.stats, pool, tx, next_hop, Some(mac));
                true
            }
            Lookup::Miss => match iface.arp.enqueue(next_hop, frame, now) {
                Enqueued::SendRequest => {
                    send_arp_request(&iface.cfg, &mut iface.stats, pool, tx, next_hop, None);
                    true
                }
                Enqueued::Waiting => true,
                Enqueued::Dropped => false,
            },
        }
    }
}

impl IpSender for IfaceSender<'_> {
    fn send_tcp(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        self.send_ipv4(src, dst, IpProtocol::Tcp, l4_len, fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::tests::hex;
    use proptest::prelude::*;
    use std::time::Duration;

    // Captured on a veth between two Linux network namespaces: 10.0.0.1
    // (02:00:00:00:00:01) asks for and pings 10.0.0.2 (02:00:00:00:00:02),
    // then opens a TCP connection to port 7777. The interface under test
    // plays 10.0.0.2.
    const ARP_REQUEST: &str =
        "ffffffffffff020000000001080600010800060400010200000000010a0000010000000000000a000002";
    const ARP_REPLY: &str =
        "020000000001020000000002080600010800060400020200000000020a0000020200000000010a000001";
    const ECHO_REQUEST: &str = "02000000000202000000000108004500003c734040004001b37e0a0000010a0000020800f3c812340001101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";
    const ECHO_REPLY: &str = "02000000000102000000000208004500003c52cf0000400113f00a0000020a0000010000fbc812340001101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";
    const TCP_SYN: &str = "02000000000202000000000108004500003ca52d40004006818c0a0000010a000002a8201e617dccbd7600000000a002faf014310000020405b40402080a8c6e04a7000000000103030a";
    const IPV6_MLD: &str = "33330000001602000000000186dd6000000000240001fe80000000000000b42a8bfffe6306f3ff0200000000000000000000000000163a000502000001008f0024320000000104000000ff0200000000000000000001ff6306f3";

    const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
    const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const GATEWAY_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xfe]);
    const T0: Instant = Instant::from_millis(1_000);

    fn cfg() -> IfaceConfig {
        IfaceConfig {
            mac: OUR_MAC,
            ip: OUR_IP,
            prefix_len: 24,
            gateway: Some(GATEWAY),
            mtu: 1500,
        }
    }

    fn iface() -> Interface {
        Interface::new(cfg(), T0)
    }

    fn pool() -> Pool {
        Pool::new(9, 32, false).unwrap()
    }

    fn rx(pool: &Pool, bytes: &[u8]) -> PktBuf {
        let mut b = pool.alloc().unwrap();
        assert!(b.extend_from_slice(bytes));
        b
    }

    fn at(secs: f64) -> Instant {
        T0 + Duration::from_secs_f64(secs)
    }

    /// An Ethernet frame around `payload`.
    fn eth(dst: EthernetAddress, src: EthernetAddress, t: EtherType, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; ethernet::HEADER_LEN + payload.len()];
        let mut f = EthernetFrame::new_unchecked(&mut b[..]);
        EthernetRepr {
            src_addr: src,
            dst_addr: dst,
            ethertype: t,
        }
        .emit(&mut f);
        f.payload_mut().copy_from_slice(payload);
        b
    }

    /// A frame from the peer carrying an IPv4 datagram with `payload`.
    fn ip_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; ipv4::HEADER_LEN + payload.len()];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: proto,
            payload_len: payload.len(),
            ttl: 64,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut p);
        p.payload_mut().copy_from_slice(payload);
        eth(OUR_MAC, PEER_MAC, EtherType::Ipv4, &b)
    }

    fn arp_frame(op: ArpOperation, sha: EthernetAddress, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut b = vec![0u8; arp::ETHERNET_IPV4_LEN];
        ArpRepr {
            operation: op,
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_hardware_addr: EthernetAddress::UNSPECIFIED,
            target_protocol_addr: tpa,
        }
        .emit(&mut ArpPacket::new_unchecked(&mut b[..]));
        let dst = if op == ArpOperation::Request {
            EthernetAddress::BROADCAST
        } else {
            OUR_MAC
        };
        eth(dst, sha, EtherType::Arp, &b)
    }

    fn parse_arp(frame: &PktBuf) -> (EthernetRepr, ArpRepr) {
        let f = EthernetFrame::new_checked(frame.data()).unwrap();
        let e = EthernetRepr::parse(&f).unwrap();
        let a = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
        (e, a)
    }

    /// Parses a frame we sent down to its IPv4 header, checking the
    /// Ethernet and IPv4 layers are consistent; returns the headers and the
    /// IPv4 payload.
    fn parse_ip(frame: &PktBuf) -> (EthernetRepr, Ipv4Repr, Vec<u8>) {
        let f = EthernetFrame::new_checked(frame.data()).unwrap();
        let e = EthernetRepr::parse(&f).unwrap();
        assert_eq!(e.ethertype, EtherType::Ipv4);
        let p = Ipv4Packet::new_checked(f.payload()).unwrap();
        assert_eq!(
            p.total_len(),
            f.payload().len(),
            "no bytes after the datagram"
        );
        assert_eq!(p.header_len(), 20);
        let ip = Ipv4Repr::parse(&p).unwrap();
        (e, ip, p.payload().to_vec())
    }

    /// Sends a TCP-protocol datagram whose payload is `[tag; len]`.
    fn send(
        iface: &mut Interface,
        now: Instant,
        pool: &Pool,
        tx: &mut Vec<PktBuf>,
        dst: Ipv4Addr,
        tag: u8,
        len: usize,
    ) -> bool {
        iface
            .sender(now, pool, tx)
            .send_tcp(OUR_IP, dst, len, &mut |b: &mut [u8]| b.fill(tag))
    }

    // --- configuration -------------------------------------------------

    #[test]
    fn config_validation_names_the_problem() {
        assert_eq!(cfg().validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut IfaceConfig)| {
            let mut c = cfg();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            bad(&|c| c.mac = EthernetAddress::BROADCAST),
            IfaceError::MulticastMac { .. }
        ));
        assert!(matches!(
            bad(&|c| c.prefix_len = 33),
            IfaceError::PrefixTooLong { prefix_len: 33 }
        ));
        assert!(matches!(
            bad(&|c| c.ip = Ipv4Addr::UNSPECIFIED),
            IfaceError::BadAddress { .. }
        ));
        assert!(matches!(
            bad(&|c| c.gateway = Some(Ipv4Addr::new(10, 0, 1, 1))),
            IfaceError::GatewayOffLink { .. }
        ));
        assert!(matches!(
            bad(&|c| c.mtu = 67),
            IfaceError::MtuOutOfRange { mtu: 67 }
        ));
        assert!(matches!(
            bad(&|c| c.mtu = MAX_MTU + 1),
            IfaceError::MtuOutOfRange { .. }
        ));
        let mut host_route = cfg();
        host_route.prefix_len = 32;
        host_route.gateway = None;
        assert_eq!(host_route.validate(), Ok(()));
        assert!(host_route.on_link(OUR_IP) && !host_route.on_link(PEER_IP));
        let mut everything = cfg();
        everything.prefix_len = 0;
        assert!(everything.on_link(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    #[should_panic(expected = "invalid interface configuration")]
    fn new_refuses_an_invalid_configuration() {
        let mut c = cfg();
        c.mtu = 0;
        Interface::new(c, T0);
    }

    // --- Ethernet --------------------------------------------------------

    #[test]
    fn frames_for_another_mac_or_a_multicast_group_are_dropped() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let mut other = hex(TCP_SYN);
        other[5] = 0x99;
        assert!(iface
            .receive(T0, rx(&pool, &other), &pool, &mut tx)
            .is_none());
        assert!(iface
            .receive(T0, rx(&pool, &hex(IPV6_MLD)), &pool, &mut tx)
            .is_none());
        let s = iface.stats();
        assert_eq!((s.rx_frames, s.not_for_us, s.tcp_delivered), (2, 2, 0));
        assert!(tx.is_empty());
        assert_eq!(pool.available(), 32);
    }

    #[test]
    fn runts_multicast_sources_and_other_ethertypes_are_dropped() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let syn = hex(TCP_SYN);
        iface.receive(T0, rx(&pool, &syn[..13]), &pool, &mut tx);
        let mut mcast_src = syn.clone();
        mcast_src[6] = 0x01;
        iface.receive(T0, rx(&pool, &mcast_src), &pool, &mut tx);
        let ipv6 = eth(OUR_MAC, PEER_MAC, EtherType::Ipv6, &[0; 40]);
        iface.receive(T0, rx(&pool, &ipv6), &pool, &mut tx);
        let vlan = eth(OUR_MAC, PEER_MAC, EtherType::Unknown(0x8100), &syn[12..]);
        iface.receive(T0, rx(&pool, &vlan), &pool, &mut tx);
        let s = iface.stats();
        assert_eq!((s.bad_eth, s.unknown_ethertype), (2, 2));
        assert!(tx.is_empty());
    }

    // --- ARP -------------------------------------------------------------

    #[test]
    fn arp_request_for_our_ip_gets_the_reply_linux_sent() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let req = rx(&pool, &hex(ARP_REQUEST));
        let slot = req.index();
        assert!(iface.receive(T0, req, &pool, &mut tx).is_none());
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].data(), &hex(ARP_REPLY)[..]);
        assert_eq!(tx[0].index(), slot, "answered in the request's buffer");
        assert_eq!(iface.stats().arp_requests_answered, 1);
        assert_eq!(
            iface.arp_cache().get(PEER_IP, T0),
            Some(PEER_MAC),
            "requester learned"
        );
    }

    #[test]
    fn arp_request_in_a_shared_buffer_is_answered_from_a_new_one() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let mut padded = hex(ARP_REQUEST);
        padded.resize(60, 0);
        let req = rx(&pool, &padded);
        let held = req.clone();
        iface.receive(T0, req, &pool, &mut tx);
        assert_eq!(tx.len(), 1);
        assert_ne!(tx[0].index(), held.index());
        assert_eq!(tx[0].data(), &hex(ARP_REPLY)[..]);
        assert_eq!(held.data(), &padded[..], "the shared request is untouched");
    }

    #[test]
    fn arp_for_another_ip_is_neither_answered_nor_learned() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let req = arp_frame(
            ArpOperation::Request,
            PEER_MAC,
            PEER_IP,
            Ipv4Addr::new(10, 0, 0, 3),
        );
        iface.receive(T0, rx(&pool, &req), &pool, &mut tx);
        assert!(tx.is_empty());
        assert_eq!(iface.arp_cache().get(PEER_IP, T0), None);
        // …but it refreshes an entry we already have (RFC 826 merge).
        iface.receive(T0, rx(&pool, &hex(ARP_REQUEST)), &pool, &mut tx);
        let moved = EthernetAddress([2, 0, 0, 0, 0, 0x11]);
        let req = arp_frame(
            ArpOperation::Request,
            moved,
            PEER_IP,
            Ipv4Addr::new(10, 0, 0, 3),
        );
        iface.receive(at(1.0), rx(&pool, &req), &pool, &mut tx);
        assert_eq!(iface.arp_cache().get(PEER_IP, at(1.0)), Some(moved));
        assert_eq!(iface.stats().arp_learned, 2);
    }

    #[test]
    fn arp_probes_are_answered_but_not_learned() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let probe = arp_frame(
            ArpOperation::Request,
            PEER_MAC,
            Ipv4Addr::UNSPECIFIED,
            OUR_IP,
        );
        iface.receive(T0, rx(&pool, &probe), &pool, &mut tx);
        assert_eq!(tx.len(), 1);
        let (e, a) = parse_arp(&tx[0]);
        assert_eq!(
            (e.dst_addr, a.target_protocol_addr),
            (PEER_MAC, Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(iface.stats().arp_entries, 0);
    }

    #[test]
    fn malformed_conflicting_and_off_subnet_arp_is_ignored() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let mut bad = hex(ARP_REQUEST);
        bad[14 + 1] = 6; // IEEE 802 hardware type
        iface.receive(T0, rx(&pool, &bad), &pool, &mut tx);
        iface.receive(T0, rx(&pool, &hex(ARP_REQUEST)[..40]), &pool, &mut tx);
        let mcast = EthernetAddress([1, 0, 0x5e, 0, 0, 1]);
        let mut req = arp_frame(ArpOperation::Request, mcast, PEER_IP, OUR_IP);
        req[6..12].copy_from_slice(&PEER_MAC.0); // only the ARP sender is multicast
        iface.receive(T0, rx(&pool, &req), &pool, &mut tx);
        assert_eq!(iface.stats().bad_arp, 3);
        let conflict = arp_frame(ArpOperation::Reply, PEER_MAC, OUR_IP, OUR_IP);
        iface.receive(T0, rx(&pool, &conflict), &pool, &mut tx);
        assert_eq!(iface.stats().arp_conflict, 1);
        assert!(tx.is_empty());
        let far = arp_frame(
            ArpOperation::Request,
            PEER_MAC,
            Ipv4Addr::new(192, 0, 2, 1),
            OUR_IP,
        );
        iface.receive(T0, rx(&pool, &far), &pool, &mut tx);
        assert_eq!(tx.len(), 1, "answered");
        assert_eq!(iface.stats().arp_entries, 0, "not learned");
    }

    #[test]
    fn arp_reply_releases_pending_frames_in_order() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        for tag in 1..=3 {
            assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, tag, 20));
        }
        assert_eq!(tx.len(), 1, "one ARP request, frames held");
        let (e, a) = parse_arp(&tx[0]);
        assert_eq!(e.dst_addr, EthernetAddress::BROADCAST);
        assert_eq!(
            a,
            ArpRepr {
                operation: ArpOperation::Request,
                source_hardware_addr: OUR_MAC,
                source_protocol_addr: OUR_IP,
                target_hardware_addr: EthernetAddress::UNSPECIFIED,
                target_protocol_addr: PEER_IP,
            }
        );
        assert_eq!(iface.stats().arp_pending, 3);
        tx.clear();
        let reply = arp_frame(ArpOperation::Reply, PEER_MAC, PEER_IP, OUR_IP);
        iface.receive(at(0.1), rx(&pool, &reply), &pool, &mut tx);
        assert_eq!(tx.len(), 3);
        for (i, f) in tx.iter().enumerate() {
            let (e, ip, payload) = parse_ip(f);
            assert_eq!((e.dst_addr, e.src_addr), (PEER_MAC, OUR_MAC));
            assert_eq!(ip.dst_addr, PEER_IP);
            assert_eq!(payload, [i as u8 + 1; 20]);
        }
        let s = iface.stats();
        assert_eq!((s.arp_pending, s.arp_entries, s.tx_frames), (0, 1, 4));
        // Resolved now: the next frame goes straight out.
        tx.clear();
        assert!(send(&mut iface, at(0.2), &pool, &mut tx, PEER_IP, 4, 20));
        assert_eq!(tx.len(), 1);
        assert_eq!(parse_ip(&tx[0]).0.dst_addr, PEER_MAC);
    }

    #[test]
    fn gratuitous_arp_from_a_next_hop_being_resolved_releases_its_frames() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, 1, 20));
        tx.clear();
        let garp = arp_frame(ArpOperation::Request, PEER_MAC, PEER_IP, PEER_IP);
        iface.receive(at(0.1), rx(&pool, &garp), &pool, &mut tx);
        assert_eq!(tx.len(), 1, "the waiting frame, no ARP reply");
        assert_eq!(parse_ip(&tx[0]).0.dst_addr, PEER_MAC);
        // Not resolving: a gratuitous ARP from a stranger teaches nothing.
        let stranger = Ipv4Addr::new(10, 0, 0, 9);
        let garp = arp_frame(ArpOperation::Request, GATEWAY_MAC, stranger, stranger);
        iface.receive(at(0.2), rx(&pool, &garp), &pool, &mut tx);
        assert_eq!(iface.arp_cache().get(stranger, at(0.2)), None);
    }

    #[test]
    fn pending_queue_per_next_hop_is_bounded() {
        let arp_cfg = ArpConfig {
            pending_per_ip: 4,
            ..ArpConfig::default()
        };
        let (pool, mut tx) = (pool(), Vec::new());
        let mut iface = Interface::with_arp_config(cfg(), arp_cfg, T0);
        for tag in 0..4 {
            assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, tag, 20));
        }
        assert!(!send(&mut iface, T0, &pool, &mut tx, PEER_IP, 4, 20));
        let s = iface.stats();
        assert_eq!(
            (s.arp_pending, s.arp_pending_dropped, s.arp_requests_sent),
            (4, 1, 1)
        );
        assert_eq!(
            pool.available(),
            32 - 4 - 1,
            "4 waiting, 1 ARP request in tx"
        );
    }

    #[test]
    fn pending_queue_in_total_is_bounded() {
        let arp_cfg = ArpConfig {
            pending_total: 3,
            ..ArpConfig::default()
        };
        let (pool, mut tx) = (pool(), Vec::new());
        let mut iface = Interface::with_arp_config(cfg(), arp_cfg, T0);
        for host in 10..13 {
            assert!(send(
                &mut iface,
                T0,
                &pool,
                &mut tx,
                Ipv4Addr::new(10, 0, 0, host),
                0,
                20
            ));
        }
        assert!(!send(
            &mut iface,
            T0,
            &pool,
            &mut tx,
            Ipv4Addr::new(10, 0, 0, 13),
            0,
            20
        ));
        assert_eq!(iface.stats().arp_pending_dropped, 1);
        assert_eq!(tx.len(), 3, "one request per resolving next hop");
    }

    #[test]
    fn unanswered_requests_are_retransmitted_then_frames_dropped() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, 1, 20));
        assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, 2, 20));
        assert_eq!(iface.poll_at(), Some(at(1.0)));
        iface.poll(at(0.5), &pool, &mut tx);
        assert_eq!(tx.len(), 1);
        iface.poll(at(1.0), &pool, &mut tx);
        iface.poll(at(2.0), &pool, &mut tx);
        assert_eq!(tx.len(), 3);
        for f in &tx {
            assert_eq!(parse_arp(f).1.target_protocol_addr, PEER_IP);
        }
        iface.poll(at(3.0), &pool, &mut tx);
        assert_eq!(tx.len(), 3);
        let s = iface.stats();
        assert_eq!(
            (s.arp_pending, s.arp_timeout_dropped, s.arp_requests_sent),
            (0, 2, 3)
        );
        tx.clear();
        assert_eq!(pool.available(), 32);
    }

    #[test]
    fn entry_near_expiry_is_refreshed_by_unicast_poll() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        iface.receive(T0, rx(&pool, &hex(ARP_REQUEST)), &pool, &mut tx);
        tx.clear();
        // Two sends well before expiry: the second reuses cached headers,
        // which must not outlive the quiet part of the entry's life.
        assert!(send(&mut iface, at(1.0), &pool, &mut tx, PEER_IP, 1, 20));
        assert!(send(&mut iface, at(2.0), &pool, &mut tx, PEER_IP, 1, 20));
        assert_eq!(tx.len(), 2);
        tx.clear();
        assert!(send(&mut iface, at(56.0), &pool, &mut tx, PEER_IP, 1, 20));
        assert_eq!(tx.len(), 2, "the frame, then a refresh poll");
        assert_eq!(parse_ip(&tx[0]).0.dst_addr, PEER_MAC);
        let (e, a) = parse_arp(&tx[1]);
        assert_eq!((e.dst_addr, a.target_protocol_addr), (PEER_MAC, PEER_IP));
        // The peer's reply confirms the entry for another minute.
        iface.receive(at(56.1), rx(&pool, &hex(ARP_REQUEST)), &pool, &mut tx);
        tx.clear();
        assert!(send(&mut iface, at(100.0), &pool, &mut tx, PEER_IP, 2, 20));
        assert_eq!(tx.len(), 1);
    }

    // --- IPv4 --------------------------------------------------------------

    #[test]
    fn tcp_segment_is_delivered_as_a_view_into_the_frame() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let mut bytes = hex(TCP_SYN);
        bytes.extend_from_slice(&[0; 4]); // Ethernet padding
        let frame = rx(&pool, &bytes);
        let (slot, off) = (frame.index(), frame.offset());
        let Some(Delivered::Tcp { src, dst, segment }) = iface.receive(T0, frame, &pool, &mut tx)
        else {
            panic!("TCP segment not delivered");
        };
        assert_eq!((src, dst), (PEER_IP, OUR_IP));
        assert_eq!(segment.index(), slot, "same slot: no copy");
        assert_eq!(segment.offset(), off + 34);
        assert_eq!(
            segment.data(),
            &bytes[34..74],
            "the IPv4 payload, padding trimmed"
        );
        assert_eq!(
            &segment.data()[..4],
            [0xa8, 0x20, 0x1e, 0x61],
            "ports 43040 → 7777"
        );
        assert_eq!(iface.stats().tcp_delivered, 1);
        assert!(tx.is_empty());
    }

    #[test]
    fn tcp_segment_after_ip_options_starts_after_them() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let syn = hex(TCP_SYN);
        let mut b = syn[..34].to_vec();
        b.extend_from_slice(&[1, 1, 1, 0]);
        b.extend_from_slice(&syn[34..]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[14..]);
        p.set_header_len(24);
        p.set_total_len(64);
        p.fill_checksum();
        let Some(Delivered::Tcp { segment, .. }) = iface.receive(T0, rx(&pool, &b), &pool, &mut tx)
        else {
            panic!("TCP segment not delivered");
        };
        assert_eq!(segment.data(), &syn[34..]);
    }

    #[test]
    fn bad_ipv4_is_dropped_and_counted_by_reason() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let syn = hex(TCP_SYN);
        let mut feed =
            |b: &[u8]| assert!(iface.receive(T0, rx(&pool, b), &pool, &mut tx).is_none());

        let mut bad_sum = syn.clone();
        bad_sum[14 + 10] ^= 0xff;
        feed(&bad_sum);

        feed(&syn[..14 + 19]); // truncated header
        feed(&syn[..60]); // truncated datagram
        let mut v6 = syn.clone();
        v6[14] = 0x65;
        feed(&v6);

        let mut frag = syn.clone();
        let mut p = Ipv4Packet::new_unchecked(&mut frag[14..]);
        p.set_more_frags(true);
        p.fill_checksum();
        feed(&frag);

        feed(&ip_frame(
            PEER_IP,
            Ipv4Addr::new(10, 0, 0, 3),
            IpProtocol::Tcp,
            &[0; 20],
        ));
        feed(&ip_frame(
            Ipv4Addr::new(10, 0, 0, 255),
            OUR_IP,
            IpProtocol::Tcp,
            &[0; 20],
        ));
        feed(&ip_frame(
            Ipv4Addr::new(224, 0, 0, 1),
            OUR_IP,
            IpProtocol::Tcp,
            &[0; 20],
        ));
        feed(&ip_frame(PEER_IP, OUR_IP, IpProtocol::Udp, &[0; 8]));
        let mut l2_bcast = syn.clone();
        l2_bcast[..6].copy_from_slice(&[0xff; 6]);
        feed(&l2_bcast);

        let s = iface.stats();
        assert_eq!(s.bad_ipv4_checksum, 1);
        assert_eq!(s.bad_ipv4_header, 3);
        assert_eq!(s.ip_fragment, 1);
        assert_eq!(s.ip_not_for_us, 1);
        assert_eq!(s.ip_bad_src, 2);
        assert_eq!(s.unknown_protocol, 1);
        assert_eq!(s.ip_link_broadcast, 1);
        assert_eq!((s.rx_frames, s.tcp_delivered), (10, 0));
        assert!(tx.is_empty());
        assert_eq!(pool.available(), 32);
    }

    #[test]
    fn ttl_is_not_checked_for_local_delivery() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let mut syn = hex(TCP_SYN);
        let mut p = Ipv4Packet::new_unchecked(&mut syn[14..]);
        p.set_ttl(0);
        p.fill_checksum();
        assert!(iface.receive(T0, rx(&pool, &syn), &pool, &mut tx).is_some());
    }

    // --- ICMP ------------------------------------------------------------

    /// Checks an echo reply against the one Linux sent for the captured
    /// request: Ethernet header and ICMP message byte for byte, IPv4
    /// header field by field (identification and DF are ours to choose).
    fn assert_linux_like_echo_reply(frame: &PktBuf) {
        let linux = hex(ECHO_REPLY);
        let (_, ip, payload) = parse_ip(frame);
        assert_eq!(frame.data()[..14], linux[..14]);
        assert_eq!(payload, &linux[34..]);
        assert_eq!((ip.src_addr, ip.dst_addr), (OUR_IP, PEER_IP));
        assert_eq!(
            (ip.protocol, ip.ttl, ip.payload_len),
            (IpProtocol::Icmp, 64, 40)
        );
        let icmp = Icmpv4Packet::new_checked(&payload[..]).unwrap();
        assert!(icmp.verify_checksum());
    }

    #[test]
    fn echo_request_gets_a_byte_correct_reply_in_place() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let req = rx(&pool, &hex(ECHO_REQUEST));
        let slot = req.index();
        assert!(iface.receive(T0, req, &pool, &mut tx).is_none());
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].index(), slot, "reply built in the request's buffer");
        assert_linux_like_echo_reply(&tx[0]);
        assert_eq!(iface.stats().icmp_echo_replied, 1);
        assert_eq!(pool.available(), 31);
    }

    #[test]
    fn echo_request_in_a_shared_buffer_is_copied_into_a_new_one() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let req = rx(&pool, &hex(ECHO_REQUEST));
        let held = req.clone();
        iface.receive(T0, req, &pool, &mut tx);
        assert_eq!(tx.len(), 1);
        assert_ne!(tx[0].index(), held.index());
        assert_linux_like_echo_reply(&tx[0]);
        assert_eq!(held.data(), &hex(ECHO_REQUEST)[..]);
    }

    #[test]
    fn echo_request_with_options_and_padding_gets_a_plain_reply() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let req = hex(ECHO_REQUEST);
        let mut b = req[..34].to_vec();
        b.extend_from_slice(&[1; 8]); // eight NOP options
        b.extend_from_slice(&req[34..]);
        b.extend_from_slice(&[0xee; 6]); // padding
        let mut p = Ipv4Packet::new_unchecked(&mut b[14..]);
        p.set_header_len(28);
        p.set_total_len(68);
        p.fill_checksum();
        iface.receive(T0, rx(&pool, &b), &pool, &mut tx);
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].len(), 74);
        assert_linux_like_echo_reply(&tx[0]);
    }

    #[test]
    fn echo_reply_is_limited_by_the_mtu() {
        let (pool, mut tx) = (pool(), Vec::new());
        let mut c = cfg();
        c.mtu = 68;
        let mut iface = Interface::new(c, T0);
        let mut echo = vec![8u8, 0, 0, 0, 0, 1, 0, 1];
        echo.extend_from_slice(&[0x55; 41]);
        Icmpv4Packet::new_unchecked(&mut echo[..]).fill_checksum();
        iface.receive(
            T0,
            rx(&pool, &ip_frame(PEER_IP, OUR_IP, IpProtocol::Icmp, &echo)),
            &pool,
            &mut tx,
        );
        assert!(tx.is_empty());
        assert_eq!(iface.stats().tx_too_big, 1);
        echo.truncate(48);
        Icmpv4Packet::new_unchecked(&mut echo[..]).fill_checksum();
        iface.receive(
            T0,
            rx(&pool, &ip_frame(PEER_IP, OUR_IP, IpProtocol::Icmp, &echo)),
            &pool,
            &mut tx,
        );
        assert_eq!(tx.len(), 1);
    }

    #[test]
    fn corrupt_and_other_icmp_is_dropped_and_counted() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let mut bad = hex(ECHO_REQUEST);
        bad[40] ^= 1;
        iface.receive(T0, rx(&pool, &bad), &pool, &mut tx);
        iface.receive(
            T0,
            rx(
                &pool,
                &ip_frame(PEER_IP, OUR_IP, IpProtocol::Icmp, &[8, 0, 0]),
            ),
            &pool,
            &mut tx,
        );
        let mut reply = hex(ECHO_REPLY);
        reply.copy_within(6..12, 0); // retarget to us
        reply[..6].copy_from_slice(&OUR_MAC.0);
        let mut ip = Ipv4Packet::new_unchecked(&mut reply[14..]);
        ip.set_src_addr(PEER_IP);
        ip.set_dst_addr(OUR_IP);
        ip.fill_checksum();
        iface.receive(T0, rx(&pool, &reply), &pool, &mut tx);
        let s = iface.stats();
        assert_eq!((s.bad_icmp, s.icmp_ignored, s.icmp_echo_replied), (2, 1, 0));
        assert!(tx.is_empty());
    }

    // --- sending -----------------------------------------------------------

    #[test]
    fn ip_sender_builds_a_frame_that_parses_back() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        assert!(iface.add_static_arp(PEER_IP, PEER_MAC));
        let segment: Vec<u8> = (0..33).collect();
        let mut sender = iface.sender(T0, &pool, &mut tx);
        assert!(
            sender.send_tcp(OUR_IP, PEER_IP, segment.len(), &mut |b: &mut [u8]| {
                b.copy_from_slice(&segment)
            })
        );
        assert!(sender.send_tcp(OUR_IP, PEER_IP, 0, &mut |_: &mut [u8]| {}));
        assert_eq!(tx.len(), 2);
        assert_eq!(tx[0].len(), 14 + 20 + 33);
        let (e, ip, payload) = parse_ip(&tx[0]);
        assert_eq!(
            e,
            EthernetRepr {
                src_addr: OUR_MAC,
                dst_addr: PEER_MAC,
                ethertype: EtherType::Ipv4
            }
        );
        assert_eq!(
            (ip.src_addr, ip.dst_addr, ip.protocol),
            (OUR_IP, PEER_IP, IpProtocol::Tcp)
        );
        assert_eq!((ip.ttl, ip.dont_frag, ip.payload_len), (64, true, 33));
        assert_eq!(payload, segment);
        let (_, ip2, payload2) = parse_ip(&tx[1]);
        assert_eq!(ip2.ident, ip.ident.wrapping_add(1));
        assert!(payload2.is_empty());
        assert_eq!(iface.stats().tx_frames, 2);
    }

    #[test]
    fn learned_mac_change_retargets_the_next_frame() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        iface.receive(T0, rx(&pool, &hex(ARP_REQUEST)), &pool, &mut tx);
        tx.clear();
        assert!(send(&mut iface, at(1.0), &pool, &mut tx, PEER_IP, 1, 20));
        assert!(send(&mut iface, at(1.0), &pool, &mut tx, PEER_IP, 1, 20));
        let moved = EthernetAddress([2, 0, 0, 0, 0, 0x77]);
        let req = arp_frame(ArpOperation::Request, moved, PEER_IP, OUR_IP);
        iface.receive(at(2.0), rx(&pool, &req), &pool, &mut tx);
        assert!(send(&mut iface, at(3.0), &pool, &mut tx, PEER_IP, 1, 20));
        let dsts: Vec<_> = tx
            .iter()
            .filter(|f| EthernetFrame::new_unchecked(f.data()).ethertype() == EtherType::Ipv4)
            .map(|f| parse_ip(f).0.dst_addr)
            .collect();
        assert_eq!(dsts, [PEER_MAC, PEER_MAC, moved]);
    }

    #[test]
    fn alternating_destinations_keep_their_own_headers() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        let other = Ipv4Addr::new(10, 0, 0, 3);
        let other_mac = EthernetAddress([2, 0, 0, 0, 0, 3]);
        iface.add_static_arp(PEER_IP, PEER_MAC);
        iface.add_static_arp(other, other_mac);
        for _ in 0..3 {
            assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, 1, 20));
            assert!(send(&mut iface, T0, &pool, &mut tx, other, 2, 20));
        }
        assert!(iface.tx_templates[template_slot(PEER_IP)].is_some());
        assert!(iface.tx_templates[template_slot(other)].is_some());
        for (i, f) in tx.iter().enumerate() {
            let (e, ip, payload) = parse_ip(f);
            let (mac, dst, tag) = if i % 2 == 0 {
                (PEER_MAC, PEER_IP, 1)
            } else {
                (other_mac, other, 2)
            };
            assert_eq!((e.dst_addr, ip.dst_addr, payload[0]), (mac, dst, tag));
        }
    }

    #[test]
    fn off_subnet_destinations_go_through_the_gateway() {
        let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
        iface.add_static_arp(GATEWAY, GATEWAY_MAC);
        let far = Ipv4Addr::new(192, 0, 2, 80);
        assert!(send(&mut iface, T0, &pool, &mut tx, far, 7, 10));
        let (e, ip, _) = parse_ip(&tx[0]);
        assert_eq!((e.dst_addr, ip.dst_addr), (GATEWAY_MAC, far));

        let mut c = cfg();
        c.gateway = None;
        let mut no_gw = Interface::new(c, T0);
        assert!(!send(&mut no_gw, T0, &pool, &mut tx, far, 7, 10));
        assert_eq!(no_gw.stats().tx_no_route, 1);
    }

    #[test]
    fn sender_refuses_what_it_cannot_send_and_counts_it() {
        let pool = Pool::new(9, 2, false).unwrap();
        let (mut iface, mut tx) = (iface(), Vec::new());
        iface.add_static_arp(PEER_IP, PEER_MAC);
        assert!(!send(&mut iface, T0, &pool, &mut tx, PEER_IP, 0, 1481));
        assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, 0, 1480));
        let spoof = |i: &mut Interface, tx: &mut Vec<PktBuf>| {
            i.sender(T0, &pool, tx)
                .send_tcp(PEER_IP, OUR_IP, 20, &mut |_: &mut [u8]| {})
        };
        assert!(!spoof(&mut iface, &mut tx));
        assert!(send(&mut iface, T0, &pool, &mut tx, PEER_IP, 0, 20));
        assert!(!send(&mut iface, T0, &pool, &mut tx, PEER_IP, 0, 20));
        let s = iface.stats();
        assert_eq!(
            (s.tx_too_big, s.tx_bad_src, s.tx_pool_exhausted, s.tx_frames),
            (1, 1, 1, 2)
        );
        assert_eq!(tx.len(), 2);
        assert_eq!(tx[0].len(), 1514);
    }

    proptest! {
        /// Frames after the first to a destination come from cached
        /// headers: they must be exactly what the full path writes, for
        /// every length and identification (checksum carries included).
        #[test]
        fn cached_headers_match_a_fresh_emit(
            ident in any::<u16>(),
            lens in proptest::collection::vec(0usize..=1480, 1..8),
            far in any::<bool>(),
        ) {
            let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
            iface.add_static_arp(PEER_IP, PEER_MAC);
            iface.add_static_arp(GATEWAY, GATEWAY_MAC);
            iface.next_ident = ident;
            let dst = if far { Ipv4Addr::new(192, 0, 2, 80) } else { PEER_IP };
            for &len in &lens {
                prop_assert!(send(&mut iface, T0, &pool, &mut tx, dst, 0xa5, len));
                let frame = tx.pop().unwrap();
                let (e, ip, payload) = parse_ip(&frame);
                prop_assert_eq!(payload.len(), len);
                let mut want = [0u8; HDRS];
                let mut f = EthernetFrame::new_unchecked(&mut want[..]);
                e.emit(&mut f);
                let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
                p.set_total_len((ipv4::HEADER_LEN + len) as u16);
                ip.emit(&mut p);
                prop_assert_eq!(&frame.data()[..HDRS], &want[..]);
            }
        }

        /// The one-pass TCP path and the full path agree on every frame
        /// near a valid TCP one: same delivery, same counters.
        #[test]
        fn plain_tcp_path_agrees_with_the_full_path(
            edits in proptest::collection::vec((0usize..40, any::<u8>()), 0..3),
            fix_checksum in any::<bool>(),
            cut in 0usize..8,
        ) {
            let pool = pool();
            let (mut fast, mut full, mut tx) = (iface(), iface(), Vec::new());
            let mut b = hex(TCP_SYN);
            b.truncate(b.len() - cut);
            for &(at, v) in &edits {
                b[at] = v;
            }
            if fix_checksum {
                let ip = &mut b[14..34];
                ip[10] = 0;
                ip[11] = 0;
                let c = checksum::checksum(ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
            }
            let got = fast.receive(T0, rx(&pool, &b), &pool, &mut tx);
            let want = full.receive_full(T0, rx(&pool, &b), &pool, &mut tx);
            full.stats.rx_frames += 1;
            prop_assert_eq!(fast.stats(), full.stats());
            match (got, want) {
                (None, None) => {}
                (
                    Some(Delivered::Tcp { src: s1, dst: d1, segment: g1 }),
                    Some(Delivered::Tcp { src: s2, dst: d2, segment: g2 }),
                ) => {
                    prop_assert_eq!((s1, d1), (s2, d2));
                    prop_assert_eq!(g1.data(), g2.data());
                }
                (g, w) => prop_assert!(false, "fast {:?} vs full {:?}", g, w),
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
            let delivered = iface.receive(T0, rx(&pool, &bytes), &pool, &mut tx);
            prop_assert_eq!(iface.stats().rx_frames, 1);
            drop((delivered, tx));
            prop_assert_eq!(pool.available(), 32, "no buffer leaked");
        }

        #[test]
        fn arbitrary_payloads_to_us_never_panic(
            kind in 0u8..3,
            bcast in any::<bool>(),
            head in proptest::collection::vec(any::<u8>(), 0..60),
            fix_checksum in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let (pool, mut iface, mut tx) = (pool(), iface(), Vec::new());
            let t = [EtherType::Arp, EtherType::Ipv4, EtherType::Unknown(0x1234)][usize::from(kind)];
            let dst = if bcast { EthernetAddress::BROADCAST } else { OUR_MAC };
            let mut payload = head;
            if t == EtherType::Ipv4 && payload.len() >= 20 {
                // Make the header plausible more often than chance would.
                payload[0] = 0x45;
                payload[16..20].copy_from_slice(&OUR_IP.octets());
                if fix_checksum {
                    Ipv4Packet::new_unchecked(&mut payload[..]).fill_checksum();
                }
            }
            payload.extend_from_slice(&tail);
            let frame = eth(dst, PEER_MAC, t, &payload);
            let delivered = iface.receive(T0, rx(&pool, &frame), &pool, &mut tx);
            iface.poll(at(10.0), &pool, &mut tx);
            for f in &tx {
                prop_assert!(EthernetFrame::new_checked(f.data()).is_ok());
            }
            drop((delivered, tx));
            prop_assert_eq!(pool.available(), 32, "no buffer leaked");
        }
    }
}
