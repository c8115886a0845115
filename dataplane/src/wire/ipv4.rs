//! IPv4 packets (RFC 791 §3.1), header checksum per RFC 1071.
//!
//! The view reads every header field; [`Ipv4Repr`] is what the dataplane
//! acts on: an unfragmented datagram whose header is well formed and whose
//! checksum verifies.
//!
//! Deviations and limits:
//! - Options are skipped, never interpreted (RFC 791 says a host must
//!   implement them; RFC 7126 recommends dropping or ignoring most of them
//!   today). [`Ipv4Repr::emit`] never writes options.
//! - Fragments (MF set or a non-zero offset) fail [`Ipv4Repr::parse`]: the
//!   dataplane does not reassemble (RFC 791 §3.2) and sends with DF set, so
//!   a TCP peer doing path MTU discovery does not fragment towards it.
//! - The header checksum is always verified in software; there is no
//!   receive checksum offload yet.
//! - Bytes after the datagram's total length (Ethernet minimum-size
//!   padding) are allowed and are not part of [`Ipv4Packet::payload`].

use std::net::Ipv4Addr;

use super::checksum;

/// Errors from parsing an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    /// The buffer is shorter than the minimum header.
    #[error("IPv4 packet of {len} bytes is shorter than the 20-byte minimum header")]
    Truncated {
        /// Length of the buffer.
        len: usize,
    },
    /// The IHL is below 5 words or reaches past the buffer.
    #[error("IPv4 header length {header_len} is below 20 or beyond the {len}-byte buffer")]
    BadHeaderLength {
        /// Header length from the IHL field, in bytes.
        header_len: usize,
        /// Length of the buffer.
        len: usize,
    },
    /// The total length is below the header length or beyond the buffer.
    #[error("IPv4 total length {total_len} is below the {header_len}-byte header or beyond the {len}-byte buffer")]
    BadTotalLength {
        /// The total length field.
        total_len: usize,
        /// Header length in bytes.
        header_len: usize,
        /// Length of the buffer.
        len: usize,
    },
    /// The version field is not 4.
    #[error("IP version {version} is not 4")]
    BadVersion {
        /// The version field.
        version: u8,
    },
    /// The header checksum does not verify.
    #[error("IPv4 header checksum does not verify")]
    BadChecksum,
    /// The datagram is a fragment; reassembly is not supported.
    #[error("IPv4 fragment (offset {offset}, more fragments {more}): reassembly is not supported")]
    Fragment {
        /// Fragment offset in bytes.
        offset: u16,
        /// The MF flag.
        more: bool,
    },
}

/// The protocol carried in an IPv4 datagram (IANA "Assigned Internet
/// Protocol Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// ICMP (1).
    Icmp,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// Any other protocol number.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    #[inline]
    fn from(v: u8) -> Self {
        match v {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    #[inline]
    fn from(p: IpProtocol) -> u8 {
        match p {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Unknown(v) => v,
        }
    }
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// The time to live the dataplane puts in datagrams it originates
/// (RFC 1700's recommended default, as Linux uses).
pub const DEFAULT_TTL: u8 = 64;

mod field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Whether an option-less header's checksum verifies: the one's-complement
/// sum of its ten 16-bit words is 0xffff (RFC 1071).
///
/// Sums the five 32-bit words in native byte order: the one's-complement
/// sum commutes with byte swapping (RFC 1071 §2(B)), and 0xffff is its own
/// swap, so the test is the same as on big-endian words.
#[inline(always)]
pub fn header_checksum_ok(hdr: &[u8; HEADER_LEN]) -> bool {
    let w = |i: usize| {
        u64::from(u32::from_ne_bytes([
            hdr[i],
            hdr[i + 1],
            hdr[i + 2],
            hdr[i + 3],
        ]))
    };
    let mut s = w(0) + w(4) + w(8) + w(12) + w(16);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
///
/// Contract: once [`Ipv4Packet::new_checked`] (or
/// [`Ipv4Packet::check_len`]) has succeeded, no accessor panics:
/// `20 <= header_len() <= total_len() <= buffer length`.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking; accessors may panic until
    /// [`check_len`](Self::check_len) has succeeded.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>, Ipv4Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the lengths: the buffer holds a minimum header, the IHL is
    /// at least 5 words and fits the buffer, the total length covers the
    /// header and fits the buffer (which may be longer: padding).
    #[inline]
    pub fn check_len(&self) -> Result<(), Ipv4Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Ipv4Error::Truncated { len });
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN || header_len > len {
            return Err(Ipv4Error::BadHeaderLength { header_len, len });
        }
        let total_len = self.total_len();
        if total_len < header_len || total_len > len {
            return Err(Ipv4Error::BadTotalLength {
                total_len,
                header_len,
                len,
            });
        }
        Ok(())
    }

    /// Gives the buffer back.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn read_u16(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The version field (4 for IPv4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Differentiated services code point (RFC 2474).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification bits (RFC 3168).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length of the datagram (header and payload) in bytes.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(self.read_u16(field::LENGTH))
    }

    /// The identification field.
    #[inline]
    pub fn ident(&self) -> u16 {
        self.read_u16(field::IDENT)
    }

    /// The don't-fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_DF != 0
    }

    /// The more-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field × 8).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.read_u16(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header checksum (over the header including options)
    /// verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let hdr = &self.buffer.as_ref()[..self.header_len()];
        match <&[u8; HEADER_LEN]>::try_from(hdr) {
            Ok(fixed) => header_checksum_ok(fixed),
            Err(_) => checksum::checksum(hdr) == 0,
        }
    }

    /// The options, if any (bytes between the fixed header and the
    /// payload).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to the total length
    /// (trailing padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn write_u16(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the version field.
    #[inline]
    pub fn set_version(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (v << 4);
    }

    /// Sets the header length in bytes (a multiple of 4, at most 60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(len & 3 == 0 && len <= 60);
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the DSCP.
    #[inline]
    pub fn set_dscp(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (v << 2);
    }

    /// Sets the ECN bits.
    #[inline]
    pub fn set_ecn(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (v & 0x03);
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        self.write_u16(field::LENGTH, v);
    }

    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        self.write_u16(field::IDENT, v);
    }

    /// Clears the flags and the fragment offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        self.write_u16(field::FLG_OFF, 0);
    }

    /// Sets or clears the don't-fragment flag.
    #[inline]
    pub fn set_dont_frag(&mut self, on: bool) {
        let v = self.read_u16(field::FLG_OFF);
        self.write_u16(field::FLG_OFF, if on { v | FLAG_DF } else { v & !FLAG_DF });
    }

    /// Sets or clears the more-fragments flag.
    #[inline]
    pub fn set_more_frags(&mut self, on: bool) {
        let v = self.read_u16(field::FLG_OFF);
        self.write_u16(field::FLG_OFF, if on { v | FLAG_MF } else { v & !FLAG_MF });
    }

    /// Sets the fragment offset in bytes (a multiple of 8).
    #[inline]
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let v = self.read_u16(field::FLG_OFF);
        self.write_u16(field::FLG_OFF, (v & !OFFSET_MASK) | (bytes >> 3));
    }

    /// Sets the time to live.
    #[inline]
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    /// Sets the protocol.
    #[inline]
    pub fn set_protocol(&mut self, p: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = u8::from(p);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.write_u16(field::CHECKSUM, v);
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Computes and stores the header checksum (the header length field
    /// must be set).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// The payload, writable (header length and total length must be set
    /// and fit the buffer).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// A validated, unfragmented IPv4 datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length in bytes (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub ident: u16,
    /// The don't-fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Validates a datagram: lengths (as [`Ipv4Packet::check_len`]),
    /// version 4, header checksum, not a fragment — in that order, so a
    /// corrupted header is reported as such rather than as a fragment.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr, Ipv4Error> {
        packet.check_len()?;
        let version = packet.version();
        if version != 4 {
            return Err(Ipv4Error::BadVersion { version });
        }
        if !packet.verify_checksum() {
            return Err(Ipv4Error::BadChecksum);
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(Ipv4Error::Fragment {
                offset: packet.frag_offset(),
                more: packet.more_frags(),
            });
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.total_len() - packet.header_len(),
            ttl: packet.ttl(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Length of the header this emits (no options).
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header (no options, DSCP/ECN zero) with its
    /// checksum into `packet`. The payload is not touched.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`], or in debug builds if
    /// `payload_len` does not fit the 16-bit total length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX) - HEADER_LEN);
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp(0);
        packet.set_ecn(0);
        packet.set_total_len((HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::tests::hex;
    use proptest::prelude::*;

    /// An ICMP echo request sent by Linux from 10.0.0.1 to 10.0.0.2
    /// (captured on a veth, Ethernet header stripped).
    const ECHO_REQUEST: &str = "4500003c734040004001b37e0a0000010a0000020800f3c812340001101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";
    /// Linux's echo reply (DF clear).
    const ECHO_REPLY: &str = "4500003c52cf0000400113f00a0000020a0000010000fbc812340001101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";
    /// A TCP SYN from 10.0.0.1:43040 to 10.0.0.2:7777 (TCP checksum left
    /// partial by the veth's offload; the IPv4 header is complete).
    const TCP_SYN: &str = "4500003ca52d40004006818c0a0000010a000002a8201e617dccbd7600000000a002faf014310000020405b40402080a8c6e04a7000000000103030a";

    #[test]
    fn parses_captured_echo_request() {
        let bytes = hex(ECHO_REQUEST);
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 60);
        assert_eq!(p.ident(), 0x7340);
        assert!(p.dont_frag() && !p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.checksum(), 0xb37e);
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &bytes[20..]);
        let repr = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Ipv4Repr {
                src_addr: Ipv4Addr::new(10, 0, 0, 1),
                dst_addr: Ipv4Addr::new(10, 0, 0, 2),
                protocol: IpProtocol::Icmp,
                payload_len: 40,
                ttl: 64,
                ident: 0x7340,
                dont_frag: true,
            }
        );
    }

    #[test]
    fn captured_headers_round_trip_through_emit() {
        for fixture in [ECHO_REQUEST, ECHO_REPLY, TCP_SYN] {
            let bytes = hex(fixture);
            let repr = Ipv4Repr::parse(&Ipv4Packet::new_checked(&bytes[..]).unwrap()).unwrap();
            let mut out = vec![0xa5u8; bytes.len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
            assert_eq!(out[..20], bytes[..20], "{fixture}");
            assert!(out[20..].iter().all(|&b| b == 0xa5), "payload touched");
        }
    }

    #[test]
    fn captured_tcp_syn_is_tcp() {
        let bytes = hex(TCP_SYN);
        let repr = Ipv4Repr::parse(&Ipv4Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.protocol, IpProtocol::Tcp);
        assert_eq!(repr.payload_len, 40);
    }

    #[test]
    fn trailing_padding_is_excluded_from_payload() {
        let mut bytes = hex(ECHO_REQUEST);
        bytes.extend_from_slice(&[0xee; 6]);
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.payload().len(), 40);
        assert_eq!(Ipv4Repr::parse(&p).unwrap().payload_len, 40);
    }

    #[test]
    fn truncated_packet_is_rejected() {
        let bytes = hex(ECHO_REQUEST);
        for len in 0..HEADER_LEN {
            assert_eq!(
                Ipv4Packet::new_checked(&bytes[..len]).unwrap_err(),
                Ipv4Error::Truncated { len }
            );
        }
        for len in HEADER_LEN..bytes.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&bytes[..len]).unwrap_err(),
                Ipv4Error::BadTotalLength {
                    total_len: 60,
                    header_len: 20,
                    len
                }
            );
        }
    }

    #[test]
    fn bad_header_lengths_are_rejected() {
        let mut bytes = hex(ECHO_REQUEST);
        bytes[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            Ipv4Error::BadHeaderLength {
                header_len: 16,
                len: 60
            }
        );
        bytes[0] = 0x4f;
        assert!(
            Ipv4Packet::new_checked(&bytes[..]).is_ok(),
            "60-byte header fits"
        );
        assert!(matches!(
            Ipv4Packet::new_checked(&bytes[..40]).unwrap_err(),
            Ipv4Error::BadHeaderLength {
                header_len: 60,
                len: 40
            }
        ));
        let mut short_total = hex(ECHO_REQUEST);
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(
            Ipv4Packet::new_checked(&short_total[..]).unwrap_err(),
            Ipv4Error::BadTotalLength { total_len: 19, .. }
        ));
    }

    #[test]
    fn corrupted_header_fails_the_checksum() {
        let bytes = hex(ECHO_REQUEST);
        for i in 0..HEADER_LEN {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            if let Ok(p) = Ipv4Packet::new_checked(&b[..]) {
                let err = Ipv4Repr::parse(&p).unwrap_err();
                assert!(
                    matches!(err, Ipv4Error::BadChecksum | Ipv4Error::BadVersion { .. }),
                    "byte {i}: {err}"
                );
            }
        }
    }

    #[test]
    fn other_version_is_rejected() {
        let mut b = hex(ECHO_REQUEST);
        b[0] = 0x65;
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_checked(&b[..]).unwrap()).unwrap_err(),
            Ipv4Error::BadVersion { version: 6 }
        );
    }

    #[test]
    fn fragments_are_rejected_after_the_checksum() {
        let mut b = hex(ECHO_REQUEST);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_more_frags(true);
        p.fill_checksum();
        assert_eq!(
            Ipv4Repr::parse(&p).unwrap_err(),
            Ipv4Error::Fragment {
                offset: 0,
                more: true
            }
        );
        p.set_more_frags(false);
        p.set_frag_offset(1480);
        assert!(p.dont_frag(), "offset setter keeps DF");
        p.fill_checksum();
        assert_eq!(
            Ipv4Repr::parse(&p).unwrap_err(),
            Ipv4Error::Fragment {
                offset: 1480,
                more: false
            }
        );
        // A fragment with a broken checksum is a bad checksum.
        p.set_checksum(p.checksum() ^ 1);
        assert_eq!(Ipv4Repr::parse(&p).unwrap_err(), Ipv4Error::BadChecksum);
    }

    #[test]
    fn options_are_skipped() {
        let orig = hex(ECHO_REQUEST);
        let mut b = orig[..20].to_vec();
        b.extend_from_slice(&[0x01, 0x01, 0x01, 0x00]); // NOP NOP NOP EOL
        b.extend_from_slice(&orig[20..]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_header_len(24);
        p.set_total_len(64);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.options(), [1, 1, 1, 0]);
        assert_eq!(p.payload(), &orig[20..]);
        let repr = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(repr.payload_len, 40);
    }

    #[test]
    fn setters_write_the_fields_accessors_read() {
        let mut b = [0xa5u8; 20];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_dscp(46);
        p.set_ecn(2);
        p.set_total_len(20);
        p.set_ident(0xbeef);
        p.clear_flags();
        p.set_dont_frag(true);
        p.set_ttl(1);
        p.set_protocol(IpProtocol::Unknown(132));
        p.set_src_addr(Ipv4Addr::new(192, 0, 2, 1));
        p.set_dst_addr(Ipv4Addr::new(198, 51, 100, 7));
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.dscp(), p.ecn(), p.ident(), p.ttl()), (46, 2, 0xbeef, 1));
        assert_eq!(p.protocol(), IpProtocol::Unknown(132));
        assert!(p.verify_checksum());
        assert!(p.payload().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
                let _ = (p.version(), p.dscp(), p.ecn(), p.ident(), p.dont_frag(), p.more_frags());
                let _ = (p.frag_offset(), p.ttl(), p.protocol(), p.checksum(), p.src_addr(), p.dst_addr());
                let _ = (p.verify_checksum(), p.options(), p.payload());
                let _ = Ipv4Repr::parse(&p);
            }
        }

        /// The fixed-header check agrees with the general RFC 1071 sum on
        /// random headers, on the same headers with a correct checksum, and
        /// on all-zero and all-ones words (the two encodings of zero).
        #[test]
        fn fixed_header_check_matches_the_general_sum(
            mut hdr in any::<[u8; HEADER_LEN]>(), fill in any::<bool>(), extreme in 0u8..3,
        ) {
            match extreme {
                1 => hdr = [0; HEADER_LEN],
                2 => hdr = [0xff; HEADER_LEN],
                _ => {}
            }
            if fill {
                hdr[10] = 0;
                hdr[11] = 0;
                let c = checksum::checksum(&hdr);
                hdr[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(header_checksum_ok(&hdr), checksum::checksum(&hdr) == 0);
        }

        #[test]
        fn emitted_headers_parse_back(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(),
            payload_len in 0usize..100, ttl in any::<u8>(), ident in any::<u16>(), df in any::<bool>(),
        ) {
            let repr = Ipv4Repr {
                src_addr: Ipv4Addr::from(src),
                dst_addr: Ipv4Addr::from(dst),
                protocol: IpProtocol::from(proto),
                payload_len,
                ttl,
                ident,
                dont_frag: df,
            };
            let mut b = vec![0xa5u8; HEADER_LEN + payload_len + 3];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
            let p = Ipv4Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr);
        }
    }
}
