//! ICMPv4 messages (RFC 792), enough for a host to answer ping
//! (RFC 1122 §3.2.2.6: every host must implement an echo server).
//!
//! The view reads the common header (type, code, checksum) and the echo
//! fields; [`Icmpv4Repr`] distinguishes echo request, echo reply and
//! "anything else", which the dataplane counts and ignores. The checksum
//! covers the whole ICMP message (header and data) and is always verified.
//!
//! Deviations: the dataplane originates no error messages (destination
//! unreachable, time exceeded…); RFC 1122 §3.2.2 lets a host omit most of
//! them, and for a kernel-bypass server answering only TCP that is the
//! usual choice.

use super::checksum;

/// Errors from parsing an ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Icmpv4Error {
    /// The buffer is shorter than the 8-byte ICMP header.
    #[error("ICMP message of {len} bytes is shorter than the 8-byte header")]
    Truncated {
        /// Length of the buffer.
        len: usize,
    },
    /// The checksum over the message does not verify.
    #[error("ICMP checksum does not verify")]
    BadChecksum,
}

/// Length of the ICMP header (type, code, checksum and the 4-byte
/// rest-of-header, which for echo holds identifier and sequence number).
pub const HEADER_LEN: usize = field::DATA.start;

/// ICMP type of an echo reply.
pub const TYPE_ECHO_REPLY: u8 = 0;
/// ICMP type of an echo request.
pub const TYPE_ECHO_REQUEST: u8 = 8;

mod field {
    use std::ops::{Range, RangeFrom};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    pub const REST_OF_HEADER: Range<usize> = 4..8;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// A read/write view of an ICMPv4 message (the whole IPv4 payload).
///
/// Contract: once [`Icmpv4Packet::new_checked`] (or
/// [`Icmpv4Packet::check_len`]) has succeeded, no accessor panics.
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without checking; accessors may panic until
    /// [`check_len`](Self::check_len) has succeeded.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    /// Wraps `buffer` after checking it holds the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>, Icmpv4Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds the 8-byte header.
    #[inline]
    pub fn check_len(&self) -> Result<(), Icmpv4Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Icmpv4Error::Truncated { len })
        } else {
            Ok(())
        }
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

    /// The message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The echo identifier (meaningful for echo request/reply).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        self.read_u16(field::ECHO_IDENT)
    }

    /// The echo sequence number (meaningful for echo request/reply).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        self.read_u16(field::ECHO_SEQNO)
    }

    /// The bytes after the 8-byte header (echo data, or the offending
    /// datagram's header for error messages).
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the checksum over the whole message verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    #[inline]
    fn write_u16(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.write_u16(field::CHECKSUM, v);
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        self.write_u16(field::ECHO_IDENT, v);
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.write_u16(field::ECHO_SEQNO, v);
    }

    /// Zeroes the 4-byte rest-of-header (for types that leave it unused).
    #[inline]
    pub fn clear_rest_of_header(&mut self) {
        self.buffer.as_mut()[field::REST_OF_HEADER].fill(0);
    }

    /// The bytes after the header, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes and stores the checksum over the whole buffer.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
}

/// A validated ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv4Repr<'a> {
    /// Echo request (type 8): "ping".
    EchoRequest {
        /// Identifier chosen by the sender.
        ident: u16,
        /// Sequence number chosen by the sender.
        seq_no: u16,
        /// Data to be echoed back.
        data: &'a [u8],
    },
    /// Echo reply (type 0).
    EchoReply {
        /// Identifier of the request.
        ident: u16,
        /// Sequence number of the request.
        seq_no: u16,
        /// Data of the request.
        data: &'a [u8],
    },
    /// Any other message (or an echo with a non-zero code), which the
    /// dataplane counts and ignores. Emitting it writes the type and code
    /// with an empty rest-of-header and no data.
    Other {
        /// The message type.
        msg_type: u8,
        /// The message code.
        code: u8,
    },
}

impl<'a> Icmpv4Repr<'a> {
    /// Validates a message: checksum over the whole buffer, then the type.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Icmpv4Packet<&'a T>,
    ) -> Result<Icmpv4Repr<'a>, Icmpv4Error> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Icmpv4Error::BadChecksum);
        }
        let buffer: &'a T = packet.buffer;
        let data = &AsRef::<[u8]>::as_ref(buffer)[field::DATA];
        Ok(match (packet.msg_type(), packet.msg_code()) {
            (TYPE_ECHO_REQUEST, 0) => Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            (TYPE_ECHO_REPLY, 0) => Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            (msg_type, code) => Icmpv4Repr::Other { msg_type, code },
        })
    }

    /// Length of the message this emits.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        match self {
            Icmpv4Repr::EchoRequest { data, .. } | Icmpv4Repr::EchoReply { data, .. } => {
                HEADER_LEN + data.len()
            }
            Icmpv4Repr::Other { .. } => HEADER_LEN,
        }
    }

    /// Writes the message, checksum included, into the first
    /// [`buffer_len`](Self::buffer_len) bytes of `packet`'s buffer, which
    /// must be exactly that long (the checksum covers the whole buffer).
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        match *self {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                let t = if matches!(self, Icmpv4Repr::EchoRequest { .. }) {
                    TYPE_ECHO_REQUEST
                } else {
                    TYPE_ECHO_REPLY
                };
                packet.set_msg_type(t);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                packet.data_mut()[..data.len()].copy_from_slice(data);
            }
            Icmpv4Repr::Other { msg_type, code } => {
                packet.set_msg_type(msg_type);
                packet.set_msg_code(code);
                packet.clear_rest_of_header();
            }
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::tests::hex;
    use proptest::prelude::*;

    /// The ICMP part of an echo request sent by Linux (captured on a veth).
    const ECHO_REQUEST: &str =
        "0800f3c812340001101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";
    /// The echo reply Linux answered it with.
    const ECHO_REPLY: &str =
        "0000fbc812340001101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";

    #[test]
    fn parses_captured_echo_request() {
        let bytes = hex(ECHO_REQUEST);
        let p = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code(), p.checksum()), (8, 0, 0xf3c8));
        let data: Vec<u8> = (0x10..0x30).collect();
        assert_eq!(
            Icmpv4Repr::parse(&p).unwrap(),
            Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: &data
            }
        );
    }

    #[test]
    fn captured_reply_round_trips_through_emit() {
        let bytes = hex(ECHO_REPLY);
        let p = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        let repr = Icmpv4Repr::parse(&p).unwrap();
        assert!(matches!(
            repr,
            Icmpv4Repr::EchoReply {
                ident: 0x1234,
                seq_no: 1,
                ..
            }
        ));
        let mut out = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn request_turned_into_reply_matches_linux() {
        let req = hex(ECHO_REQUEST);
        let p = Icmpv4Packet::new_checked(&req[..]).unwrap();
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = Icmpv4Repr::parse(&p).unwrap()
        else {
            panic!("not an echo request")
        };
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        let mut out = vec![0xa5u8; reply.buffer_len()];
        reply.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, hex(ECHO_REPLY));
    }

    #[test]
    fn other_types_parse_as_other_and_emit_an_empty_message() {
        // Destination unreachable, port unreachable, with a dummy quote.
        let mut b = vec![3u8, 3, 0, 0, 0, 0, 0, 0, 0x45, 0, 0, 0];
        Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        let p = Icmpv4Packet::new_checked(&b[..]).unwrap();
        let repr = Icmpv4Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::Other {
                msg_type: 3,
                code: 3
            }
        );
        let mut out = [0xa5u8; HEADER_LEN];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        let q = Icmpv4Packet::new_checked(&out[..]).unwrap();
        assert!(q.verify_checksum());
        assert_eq!(Icmpv4Repr::parse(&q).unwrap(), repr);
        assert_eq!(out[4..], [0; 4]);
    }

    #[test]
    fn echo_with_nonzero_code_is_other() {
        let mut b = hex(ECHO_REQUEST);
        b[1] = 1;
        Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        let p = Icmpv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Icmpv4Repr::parse(&p).unwrap(),
            Icmpv4Repr::Other {
                msg_type: 8,
                code: 1
            }
        );
    }

    #[test]
    fn truncated_message_is_rejected() {
        let bytes = hex(ECHO_REQUEST);
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&bytes[..len]).unwrap_err(),
                Icmpv4Error::Truncated { len }
            );
        }
        // Cutting the data invalidates the checksum.
        let p = Icmpv4Packet::new_checked(&bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(Icmpv4Repr::parse(&p).unwrap_err(), Icmpv4Error::BadChecksum);
    }

    #[test]
    fn corrupted_message_fails_the_checksum() {
        let bytes = hex(ECHO_REQUEST);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let p = Icmpv4Packet::new_checked(&b[..]).unwrap();
            assert_eq!(
                Icmpv4Repr::parse(&p).unwrap_err(),
                Icmpv4Error::BadChecksum,
                "byte {i}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Icmpv4Packet::new_checked(&bytes[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no(), p.data());
                let _ = Icmpv4Repr::parse(&p);
            }
        }

        #[test]
        fn emitted_echoes_parse_back(
            request in any::<bool>(), ident in any::<u16>(), seq_no in any::<u16>(),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let repr = if request {
                Icmpv4Repr::EchoRequest { ident, seq_no, data: &data }
            } else {
                Icmpv4Repr::EchoReply { ident, seq_no, data: &data }
            };
            let mut out = vec![0xa5u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
            let p = Icmpv4Packet::new_checked(&out[..]).unwrap();
            prop_assert_eq!(Icmpv4Repr::parse(&p).unwrap(), repr);
        }
    }
}
