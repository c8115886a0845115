//! ARP packets (RFC 826), with the generic view over any hardware and
//! protocol address sizes and a [`ArpRepr`] for the only combination the
//! dataplane speaks: Ethernet hardware addresses and IPv4 protocol
//! addresses.
//!
//! Deviations: RARP and InARP operations are not represented; a packet
//! with any operation other than request (1) or reply (2), or any other
//! hardware/protocol type, fails [`ArpRepr::parse`].

use std::net::Ipv4Addr;

use super::ethernet::{EtherType, EthernetAddress};

/// Errors from parsing an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArpError {
    /// The buffer is shorter than the fixed header or than the addresses
    /// the header announces.
    #[error("ARP packet of {len} bytes is shorter than the {need} bytes its header needs")]
    Truncated {
        /// Length of the buffer.
        len: usize,
        /// Bytes the header (and its address lengths) require.
        need: usize,
    },
    /// The hardware type is not Ethernet (1).
    #[error("ARP hardware type {htype} is not Ethernet (1); only Ethernet is supported")]
    UnsupportedHardware {
        /// The hardware type field.
        htype: u16,
    },
    /// The protocol type is not IPv4 (0x0800).
    #[error("ARP protocol type {ptype:#06x} is not IPv4 (0x0800); only IPv4 is supported")]
    UnsupportedProtocol {
        /// The protocol type field.
        ptype: u16,
    },
    /// The address lengths do not match Ethernet (6) and IPv4 (4).
    #[error("ARP address lengths {hlen}/{plen} do not match Ethernet/IPv4 (6/4)")]
    BadAddressLength {
        /// The hardware address length field.
        hlen: u8,
        /// The protocol address length field.
        plen: u8,
    },
    /// The operation is neither request nor reply.
    #[error("ARP operation {op} is neither request (1) nor reply (2)")]
    UnsupportedOperation {
        /// The operation field.
        op: u16,
    },
}

/// ARP hardware type for Ethernet (RFC 826, IANA "Hardware Types").
pub const HTYPE_ETHERNET: u16 = 1;

/// Length of an Ethernet/IPv4 ARP packet.
pub const ETHERNET_IPV4_LEN: usize = field::ADDRS + 2 * (6 + 4);

/// The ARP operation of an Ethernet/IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// "Who has target protocol address? Tell source."
    Request,
    /// "Source protocol address is at source hardware address."
    Reply,
}

impl ArpOperation {
    /// The operation code on the wire.
    #[inline]
    pub const fn code(self) -> u16 {
        match self {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
        }
    }
}

mod field {
    use std::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    /// Start of the variable-length address fields.
    pub const ADDRS: usize = 8;

    #[inline]
    pub const fn sha(hlen: u8, _plen: u8) -> Range<usize> {
        ADDRS..ADDRS + hlen as usize
    }
    #[inline]
    pub const fn spa(hlen: u8, plen: u8) -> Range<usize> {
        let start = sha(hlen, plen).end;
        start..start + plen as usize
    }
    #[inline]
    pub const fn tha(hlen: u8, plen: u8) -> Range<usize> {
        let start = spa(hlen, plen).end;
        start..start + hlen as usize
    }
    #[inline]
    pub const fn tpa(hlen: u8, plen: u8) -> Range<usize> {
        let start = tha(hlen, plen).end;
        start..start + plen as usize
    }
}

/// A read/write view of an ARP packet of any address sizes.
///
/// Contract: once [`ArpPacket::new_checked`] (or
/// [`ArpPacket::check_len`]) has succeeded, no accessor panics (address
/// setters additionally need slices of the announced lengths).
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking; accessors may panic until
    /// [`check_len`](Self::check_len) has succeeded.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds the fixed header and all
    /// four addresses.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>, ArpError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds the fixed header and the four addresses of
    /// the lengths it announces. Trailing bytes (padding) are allowed.
    #[inline]
    pub fn check_len(&self) -> Result<(), ArpError> {
        let len = self.buffer.as_ref().len();
        if len < field::ADDRS {
            return Err(ArpError::Truncated {
                len,
                need: field::ADDRS,
            });
        }
        let need = field::tpa(self.hardware_len(), self.protocol_len()).end;
        if len < need {
            return Err(ArpError::Truncated { len, need });
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

    /// The hardware type (1 for Ethernet).
    #[inline]
    pub fn hardware_type(&self) -> u16 {
        self.read_u16(field::HTYPE)
    }

    /// The protocol type (an EtherType; 0x0800 for IPv4).
    #[inline]
    pub fn protocol_type(&self) -> u16 {
        self.read_u16(field::PTYPE)
    }

    /// Length of a hardware address in bytes.
    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Length of a protocol address in bytes.
    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// The operation code (1 request, 2 reply).
    #[inline]
    pub fn operation(&self) -> u16 {
        self.read_u16(field::OPER)
    }

    /// The sender hardware address.
    #[inline]
    pub fn source_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::sha(self.hardware_len(), self.protocol_len())]
    }

    /// The sender protocol address.
    #[inline]
    pub fn source_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::spa(self.hardware_len(), self.protocol_len())]
    }

    /// The target hardware address.
    #[inline]
    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::tha(self.hardware_len(), self.protocol_len())]
    }

    /// The target protocol address.
    #[inline]
    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::tpa(self.hardware_len(), self.protocol_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    #[inline]
    fn write_u16(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the hardware type.
    #[inline]
    pub fn set_hardware_type(&mut self, v: u16) {
        self.write_u16(field::HTYPE, v);
    }

    /// Sets the protocol type.
    #[inline]
    pub fn set_protocol_type(&mut self, v: u16) {
        self.write_u16(field::PTYPE, v);
    }

    /// Sets the hardware address length.
    #[inline]
    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HLEN] = v;
    }

    /// Sets the protocol address length.
    #[inline]
    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::PLEN] = v;
    }

    /// Sets the operation code.
    #[inline]
    pub fn set_operation(&mut self, v: u16) {
        self.write_u16(field::OPER, v);
    }

    /// Sets the sender hardware address (of the announced length).
    #[inline]
    pub fn set_source_hardware_addr(&mut self, a: &[u8]) {
        let r = field::sha(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[r].copy_from_slice(a);
    }

    /// Sets the sender protocol address (of the announced length).
    #[inline]
    pub fn set_source_protocol_addr(&mut self, a: &[u8]) {
        let r = field::spa(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[r].copy_from_slice(a);
    }

    /// Sets the target hardware address (of the announced length).
    #[inline]
    pub fn set_target_hardware_addr(&mut self, a: &[u8]) {
        let r = field::tha(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[r].copy_from_slice(a);
    }

    /// Sets the target protocol address (of the announced length).
    #[inline]
    pub fn set_target_protocol_addr(&mut self, a: &[u8]) {
        let r = field::tpa(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[r].copy_from_slice(a);
    }
}

/// A validated Ethernet/IPv4 ARP request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: ArpOperation,
    /// Sender MAC.
    pub source_hardware_addr: EthernetAddress,
    /// Sender IPv4 address (0.0.0.0 in an RFC 5227 probe).
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC (ignored, usually zero, in a request).
    pub target_hardware_addr: EthernetAddress,
    /// Target IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Validates an Ethernet/IPv4 request or reply.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr, ArpError> {
        packet.check_len()?;
        let htype = packet.hardware_type();
        if htype != HTYPE_ETHERNET {
            return Err(ArpError::UnsupportedHardware { htype });
        }
        let ptype = packet.protocol_type();
        if ptype != u16::from(EtherType::Ipv4) {
            return Err(ArpError::UnsupportedProtocol { ptype });
        }
        let (hlen, plen) = (packet.hardware_len(), packet.protocol_len());
        if (hlen, plen) != (6, 4) {
            return Err(ArpError::BadAddressLength { hlen, plen });
        }
        let operation = match packet.operation() {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            op => return Err(ArpError::UnsupportedOperation { op }),
        };
        let ipv4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Ok(ArpRepr {
            operation,
            source_hardware_addr: EthernetAddress::from_bytes(packet.source_hardware_addr()),
            source_protocol_addr: ipv4(packet.source_protocol_addr()),
            target_hardware_addr: EthernetAddress::from_bytes(packet.target_hardware_addr()),
            target_protocol_addr: ipv4(packet.target_protocol_addr()),
        })
    }

    /// Length of the packet this emits.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_IPV4_LEN
    }

    /// Writes the packet into `packet`.
    ///
    /// # Panics
    /// If the buffer is shorter than [`ETHERNET_IPV4_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(u16::from(EtherType::Ipv4));
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation.code());
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::tests::hex;
    use proptest::prelude::*;

    /// The ARP payload of a request Linux broadcast for 10.0.0.2 (captured
    /// on a veth, Ethernet header stripped).
    const REQUEST: &str = "00010800060400010200000000010a0000010000000000000a000002";
    /// The reply the peer's Linux sent back.
    const REPLY: &str = "00010800060400020200000000020a0000020200000000010a000001";

    fn mac(last: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, last])
    }

    #[test]
    fn parses_captured_request() {
        let bytes = hex(REQUEST);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            ArpRepr {
                operation: ArpOperation::Request,
                source_hardware_addr: mac(1),
                source_protocol_addr: Ipv4Addr::new(10, 0, 0, 1),
                target_hardware_addr: EthernetAddress::UNSPECIFIED,
                target_protocol_addr: Ipv4Addr::new(10, 0, 0, 2),
            }
        );
    }

    #[test]
    fn captured_reply_round_trips_through_emit() {
        let bytes = hex(REPLY);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.operation, ArpOperation::Reply);
        assert_eq!(repr.source_hardware_addr, mac(2));
        assert_eq!(repr.target_protocol_addr, Ipv4Addr::new(10, 0, 0, 1));
        let mut out = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn emit_leaves_bytes_after_the_packet_alone() {
        let repr = ArpRepr::parse(&ArpPacket::new_checked(&hex(REQUEST)[..]).unwrap()).unwrap();
        let mut out = [0xa5u8; ETHERNET_IPV4_LEN + 4];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out[..ETHERNET_IPV4_LEN], hex(REQUEST)[..]);
        assert_eq!(out[ETHERNET_IPV4_LEN..], [0xa5; 4]);
    }

    #[test]
    fn trailing_padding_is_allowed() {
        let mut bytes = hex(REQUEST);
        bytes.extend_from_slice(&[0; 18]);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.target_protocol_addr, Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn truncated_packet_is_rejected() {
        let bytes = hex(REQUEST);
        for len in 0..bytes.len() {
            let err = ArpPacket::new_checked(&bytes[..len]).unwrap_err();
            assert!(matches!(err, ArpError::Truncated { .. }), "{len}: {err}");
        }
    }

    #[test]
    fn address_lengths_beyond_the_buffer_are_rejected() {
        let mut bytes = hex(REQUEST);
        bytes[4] = 255;
        assert_eq!(
            ArpPacket::new_checked(&bytes[..]).unwrap_err(),
            ArpError::Truncated {
                len: 28,
                need: 8 + 2 * (255 + 4)
            }
        );
    }

    #[test]
    fn other_hardware_protocol_or_operation_is_rejected() {
        let parse = |patch: &dyn Fn(&mut Vec<u8>)| {
            let mut b = hex(REQUEST);
            patch(&mut b);
            ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()).unwrap_err()
        };
        assert_eq!(
            parse(&|b| b[1] = 6),
            ArpError::UnsupportedHardware { htype: 6 }
        );
        assert_eq!(
            parse(&|b| b[2..4].copy_from_slice(&[0x86, 0xdd])),
            ArpError::UnsupportedProtocol { ptype: 0x86dd }
        );
        assert_eq!(
            parse(&|b| b[7] = 3),
            ArpError::UnsupportedOperation { op: 3 }
        );
        // A consistent packet with 8-byte hardware addresses: the view reads
        // it, the repr refuses it.
        let mut long = hex(REQUEST);
        long[4] = 8;
        long.extend_from_slice(&[0; 4]);
        let p = ArpPacket::new_checked(&long[..]).unwrap();
        assert_eq!(p.source_hardware_addr().len(), 8);
        assert_eq!(
            ArpRepr::parse(&p).unwrap_err(),
            ArpError::BadAddressLength { hlen: 8, plen: 4 }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = ArpPacket::new_checked(&bytes[..]) {
                let _ = (p.hardware_type(), p.protocol_type(), p.operation());
                let _ = (p.source_hardware_addr(), p.source_protocol_addr());
                let _ = (p.target_hardware_addr(), p.target_protocol_addr());
                if let Ok(repr) = ArpRepr::parse(&p) {
                    let mut out = vec![0u8; repr.buffer_len()];
                    repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
                    prop_assert_eq!(&out[..], &bytes[..ETHERNET_IPV4_LEN]);
                }
            }
        }

        #[test]
        fn valid_headers_with_arbitrary_addresses_round_trip(
            op in 1u16..=2, sha in any::<[u8; 6]>(), spa in any::<[u8; 4]>(),
            tha in any::<[u8; 6]>(), tpa in any::<[u8; 4]>(),
        ) {
            let mut b = vec![0, 1, 8, 0, 6, 4, 0, op as u8];
            for a in [&sha[..], &spa[..], &tha[..], &tpa[..]] {
                b.extend_from_slice(a);
            }
            let repr = ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()).unwrap();
            let mut out = vec![0xa5u8; ETHERNET_IPV4_LEN];
            repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
            prop_assert_eq!(out, b);
        }
    }
}
