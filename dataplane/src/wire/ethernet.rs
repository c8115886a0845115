//! Ethernet II frames (IEEE 802.3 clause 3.2.6 "Length/Type" used as an
//! EtherType, RFC 894 for IPv4 over Ethernet).
//!
//! The frame as the NIC hands it over: destination address, source
//! address, EtherType, payload. The preamble, start delimiter and frame
//! check sequence are the NIC's business and never reach us.
//!
//! Deviations: 802.1Q VLAN tags are not parsed (a tagged frame carries
//! EtherType 0x8100 and is reported as [`EtherType::Unknown`]); frames with
//! a length instead of a type (values below 0x0600, 802.3 with LLC) are
//! likewise `Unknown`. Minimum-size padding is not added on emit: the NIC
//! backends (memif, af_packet, DPDK) accept short frames.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing an Ethernet frame or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EthernetError {
    /// The buffer is shorter than an Ethernet header.
    #[error("Ethernet frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// Length of the buffer.
        len: usize,
    },
    /// A textual MAC address is not six colon-separated hex octets.
    #[error(
        "not a MAC address: expected six hex octets separated by ':' (e.g. 02:00:00:00:00:01)"
    )]
    BadAddress,
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The all-zero address, used as the unknown target in ARP requests.
    pub const UNSPECIFIED: EthernetAddress = EthernetAddress([0; 6]);

    /// The address in `bytes`.
    ///
    /// # Panics
    /// If `bytes` is not exactly six bytes long.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(bytes);
        EthernetAddress(a)
    }

    /// The six octets.
    #[inline]
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether this is an individual (unicast) address: the I/G bit is
    /// clear.
    #[inline]
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// Whether this is a group address (multicast or broadcast): the I/G
    /// bit is set.
    #[inline]
    pub const fn is_multicast(&self) -> bool {
        !self.is_unicast()
    }

    /// Whether this is the broadcast address.
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether this is a locally administered address (U/L bit set).
    #[inline]
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for EthernetAddress {
    type Err = EthernetError;

    /// Parses `aa:bb:cc:dd:ee:ff` (hex digits in either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(EthernetError::BadAddress)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(EthernetError::BadAddress);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| EthernetError::BadAddress)?;
        }
        if parts.next().is_some() {
            return Err(EthernetError::BadAddress);
        }
        Ok(EthernetAddress(out))
    }
}

/// The protocol carried in an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// IPv4 (0x0800).
    Ipv4,
    /// ARP (0x0806).
    Arp,
    /// IPv6 (0x86dd); recognised so that it can be counted, not processed.
    Ipv6,
    /// Anything else, including 802.1Q tags and 802.3 length values.
    Unknown(u16),
}

impl From<u16> for EtherType {
    #[inline]
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    #[inline]
    fn from(t: EtherType) -> u16 {
        match t {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(v) => v,
        }
    }
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

mod field {
    use std::ops::{Range, RangeFrom};

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// A read/write view of an Ethernet II frame in a byte buffer.
///
/// Contract: once [`EthernetFrame::new_checked`] (or
/// [`EthernetFrame::check_len`]) has succeeded, no accessor panics.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length; accessors may panic
    /// until [`check_len`](Self::check_len) has succeeded.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>, EthernetError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds at least the header.
    #[inline]
    pub fn check_len(&self) -> Result<(), EthernetError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(EthernetError::Truncated { len })
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// The source address.
    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The bytes after the header (including any trailing padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
    }

    /// The bytes after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The validated contents of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source address.
    pub src_addr: EthernetAddress,
    /// Destination address.
    pub dst_addr: EthernetAddress,
    /// Protocol of the payload.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr, EthernetError> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Length of the header this emits.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `frame`.
    ///
    /// # Panics
    /// If the frame's buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes a hex fixture.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        assert!(s.len() & 1 == 0, "odd hex fixture");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex fixture"))
            .collect()
    }

    /// An ARP request broadcast by Linux (captured on a veth).
    const ARP_REQUEST: &str =
        "ffffffffffff020000000001080600010800060400010200000000010a0000010000000000000a000002";
    /// An IPv6 MLD report to a multicast group (captured on a veth).
    const IPV6_MLD: &str = "33330000001602000000000186dd6000000000240001fe80000000000000b42a8bfffe6306f3ff0200000000000000000000000000163a000502000001008f0024320000000104000000ff0200000000000000000001ff6306f3";

    #[test]
    fn parses_captured_broadcast_arp_frame() {
        let bytes = hex(ARP_REQUEST);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        let repr = EthernetRepr::parse(&frame).unwrap();
        assert_eq!(repr.dst_addr, EthernetAddress::BROADCAST);
        assert_eq!(repr.src_addr, EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(repr.ethertype, EtherType::Arp);
        assert_eq!(frame.payload(), &bytes[14..]);
        assert_eq!(frame.payload().len(), 28);
    }

    #[test]
    fn parses_captured_ipv6_multicast_frame() {
        let bytes = hex(IPV6_MLD);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert!(frame.dst_addr().is_multicast());
        assert!(!frame.dst_addr().is_broadcast());
        assert!(frame.src_addr().is_unicast());
        assert!(frame.src_addr().is_local());
        assert_eq!(frame.ethertype(), EtherType::Ipv6);
    }

    #[test]
    fn emit_round_trips_captured_header() {
        let bytes = hex(ARP_REQUEST);
        let repr = EthernetRepr::parse(&EthernetFrame::new_checked(&bytes[..]).unwrap()).unwrap();
        let mut out = vec![0xa5u8; bytes.len()];
        let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&bytes[14..]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn emit_writes_every_header_byte_and_nothing_after() {
        let repr = EthernetRepr {
            src_addr: EthernetAddress([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
            dst_addr: EthernetAddress([0x02, 0x66, 0x77, 0x88, 0x99, 0xaa]),
            ethertype: EtherType::Ipv4,
        };
        let mut out = [0xa5u8; 20];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(
            out[..14],
            [0x02, 0x66, 0x77, 0x88, 0x99, 0xaa, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x08, 0x00]
        );
        assert!(out[14..].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn truncated_frame_is_rejected() {
        let bytes = hex(ARP_REQUEST);
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&bytes[..len]).unwrap_err(),
                EthernetError::Truncated { len }
            );
        }
        let header_only = EthernetFrame::new_checked(&bytes[..HEADER_LEN]).unwrap();
        assert!(header_only.payload().is_empty());
    }

    #[test]
    fn unknown_ethertypes_are_kept() {
        assert_eq!(EtherType::from(0x8100), EtherType::Unknown(0x8100));
        assert_eq!(u16::from(EtherType::Unknown(0x0042)), 0x0042);
        for t in [EtherType::Ipv4, EtherType::Arp, EtherType::Ipv6] {
            assert_eq!(EtherType::from(u16::from(t)), t);
        }
    }

    #[test]
    fn address_display_and_parse_round_trip() {
        let a = EthernetAddress([0x02, 0xab, 0x0c, 0x00, 0xff, 0x10]);
        assert_eq!(a.to_string(), "02:ab:0c:00:ff:10");
        assert_eq!("02:AB:0c:00:ff:10".parse::<EthernetAddress>().unwrap(), a);
        for bad in [
            "",
            "02:ab:0c:00:ff",
            "02:ab:0c:00:ff:10:11",
            "2:ab:0c:00:ff:10",
            "02:ab:0c:00:ff:zz",
            "+2:ab:0c:00:ff:10",
        ] {
            assert_eq!(
                bad.parse::<EthernetAddress>(),
                Err(EthernetError::BadAddress),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = EthernetFrame::new_checked(&bytes[..]) {
                let repr = EthernetRepr::parse(&frame).unwrap();
                prop_assert_eq!(frame.payload().len() + HEADER_LEN, bytes.len());
                let mut out = bytes.clone();
                repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
                prop_assert_eq!(out, bytes);
            }
        }
    }
}
