//! memif control messages: the fixed 128-byte records exchanged over the
//! Unix seqpacket control socket.
//!
//! Layout (memif protocol version 2.0, as in DPDK's `drivers/net/memif/
//! memif.h` and libmemif): a little-endian `u16` message type at offset 0,
//! then one packed body starting at offset 2, the rest zero up to 128
//! bytes. Strings are fixed-size, NUL-padded byte arrays (not necessarily
//! NUL-terminated when full).
//!
//! | type | value | body (offset: field)                                      |
//! |------|-------|-----------------------------------------------------------|
//! | ACK            | 1 | —                                                 |
//! | HELLO          | 2 | 2: name\[32], 34: min_version u16, 36: max_version u16, 38: max_region u16, 40: max_s2c_ring u16, 42: max_c2s_ring u16, 44: max_log2_ring_size u8 |
//! | INIT           | 3 | 2: version u16, 4: id u32, 8: mode u8, 9: secret\[24], 33: name\[32] |
//! | ADD_REGION     | 4 | 2: index u16, 4: size u64 (the region's fd rides along as SCM_RIGHTS) |
//! | ADD_RING       | 5 | 2: flags u16 (bit 0: client-to-server), 4: index u16, 6: region u16, 8: offset u32, 12: log2_ring_size u8, 13: private_hdr_size u16 (the ring's eventfd rides along) |
//! | CONNECT        | 6 | 2: if_name\[32]                                   |
//! | CONNECTED      | 7 | 2: if_name\[32]                                   |
//! | DISCONNECT     | 8 | 2: code u32, 6: reason\[96]                       |
//!
//! The "max" fields of HELLO are the highest allowed *index* (count − 1),
//! except `max_log2_ring_size`. Type 0 (NONE) is not a message.
//!
//! Decoding never panics: a record of the wrong size, of an unknown type,
//! or with an invalid interface mode is an error the caller answers with
//! DISCONNECT.

/// Size of every control message.
pub const MSG_SIZE: usize = 128;
/// Protocol version 2.0 (major in the high byte).
pub const VERSION: u16 = 0x0200;
/// Size of the name fields.
pub const NAME_LEN: usize = 32;
/// Size of the secret field.
pub const SECRET_LEN: usize = 24;
/// Size of the disconnect reason field.
pub const REASON_LEN: usize = 96;
/// Interface mode "ethernet" (the only one this backend speaks).
pub const MODE_ETHERNET: u8 = 0;
/// ADD_RING flag: the ring carries client-to-server (slave-to-master)
/// traffic.
pub const ADD_RING_FLAG_C2S: u16 = 1;

/// Message type numbers.
mod ty {
    pub const ACK: u16 = 1;
    pub const HELLO: u16 = 2;
    pub const INIT: u16 = 3;
    pub const ADD_REGION: u16 = 4;
    pub const ADD_RING: u16 = 5;
    pub const CONNECT: u16 = 6;
    pub const CONNECTED: u16 = 7;
    pub const DISCONNECT: u16 = 8;
}

/// Byte offsets of the fields (see the table in the module docs).
mod field {
    use std::ops::Range;
    pub const TYPE: Range<usize> = 0..2;

    pub const HELLO_NAME: Range<usize> = 2..34;
    pub const HELLO_MIN_VERSION: Range<usize> = 34..36;
    pub const HELLO_MAX_VERSION: Range<usize> = 36..38;
    pub const HELLO_MAX_REGION: Range<usize> = 38..40;
    pub const HELLO_MAX_S2C_RING: Range<usize> = 40..42;
    pub const HELLO_MAX_C2S_RING: Range<usize> = 42..44;
    pub const HELLO_MAX_LOG2_RING_SIZE: usize = 44;

    pub const INIT_VERSION: Range<usize> = 2..4;
    pub const INIT_ID: Range<usize> = 4..8;
    pub const INIT_MODE: usize = 8;
    pub const INIT_SECRET: Range<usize> = 9..33;
    pub const INIT_NAME: Range<usize> = 33..65;

    pub const REGION_INDEX: Range<usize> = 2..4;
    pub const REGION_SIZE: Range<usize> = 4..12;

    pub const RING_FLAGS: Range<usize> = 2..4;
    pub const RING_INDEX: Range<usize> = 4..6;
    pub const RING_REGION: Range<usize> = 6..8;
    pub const RING_OFFSET: Range<usize> = 8..12;
    pub const RING_LOG2_SIZE: usize = 12;
    pub const RING_PRIVATE_HDR: Range<usize> = 13..15;

    pub const IF_NAME: Range<usize> = 2..34;

    pub const DISC_CODE: Range<usize> = 2..6;
    pub const DISC_REASON: Range<usize> = 6..102;
}

/// Errors decoding a control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The record is not exactly [`MSG_SIZE`] bytes.
    #[error("invalid message size {len} (memif messages are {MSG_SIZE} bytes)")]
    Size {
        /// Bytes received.
        len: usize,
    },
    /// The type field holds no known message type.
    #[error("unknown message type {ty}")]
    UnknownType {
        /// The type field.
        ty: u16,
    },
    /// INIT asked for an interface mode other than ethernet.
    #[error("interface mode {mode} not supported (only ethernet, 0)")]
    Mode {
        /// The mode field.
        mode: u8,
    },
}

/// HELLO (server → client): the server's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The server application's name.
    pub name: String,
    /// Lowest protocol version supported.
    pub min_version: u16,
    /// Highest protocol version supported.
    pub max_version: u16,
    /// Highest region index accepted.
    pub max_region: u16,
    /// Highest server-to-client ring index accepted.
    pub max_s2c_ring: u16,
    /// Highest client-to-server ring index accepted.
    pub max_c2s_ring: u16,
    /// Largest ring size accepted, as log2.
    pub max_log2_ring_size: u8,
}

/// INIT (client → server): which interface the client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Interface id (selects the server's interface).
    pub id: u32,
    /// Secret bytes (NUL-padded; empty when none).
    pub secret: [u8; SECRET_LEN],
    /// The client application's name.
    pub name: String,
}

/// ADD_REGION (client → server): a shared memory region, fd attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddRegion {
    /// Region index (regions are added in order 0, 1, …).
    pub index: u16,
    /// Size in bytes.
    pub size: u64,
}

/// ADD_RING (client → server): a ring inside a region, eventfd attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddRing {
    /// True for a client-to-server ring.
    pub c2s: bool,
    /// Ring index within its direction.
    pub index: u16,
    /// Region holding the ring.
    pub region: u16,
    /// Offset of the ring header in the region.
    pub offset: u32,
    /// Number of descriptors, as log2.
    pub log2_ring_size: u8,
    /// Size of a private header (unused by DPDK and this backend).
    pub private_hdr_size: u16,
}

/// A decoded control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Acknowledges INIT, ADD_REGION and ADD_RING.
    Ack,
    /// The server's limits, sent on accept.
    Hello(Hello),
    /// The client's interface selection.
    Init(Init),
    /// A region.
    AddRegion(AddRegion),
    /// A ring.
    AddRing(AddRing),
    /// Client is done; carries the client's interface name.
    Connect {
        /// The client interface's name.
        if_name: String,
    },
    /// Server is done; carries the server's interface name.
    Connected {
        /// The server interface's name.
        if_name: String,
    },
    /// Either side tears the connection down.
    Disconnect {
        /// Error code (0 in DPDK).
        code: u32,
        /// Human-readable reason.
        reason: String,
    },
}

fn put_u16(b: &mut [u8; MSG_SIZE], r: std::ops::Range<usize>, v: u16) {
    b[r].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8; MSG_SIZE], r: std::ops::Range<usize>, v: u32) {
    b[r].copy_from_slice(&v.to_le_bytes());
}

/// Copies `s` into a NUL-padded field, truncated to leave at least one NUL
/// (as `strlcpy` does in the C implementations).
fn put_str(b: &mut [u8; MSG_SIZE], r: std::ops::Range<usize>, s: &[u8]) {
    let room = r.len() - 1;
    let n = s.len().min(room);
    b[r.start..r.start + n].copy_from_slice(&s[..n]);
}

fn get_u16(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([b[r.start], b[r.start + 1]])
}

fn get_u32(b: &[u8], r: std::ops::Range<usize>) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[r]);
    u32::from_le_bytes(x)
}

fn get_u64(b: &[u8], r: std::ops::Range<usize>) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[r]);
    u64::from_le_bytes(x)
}

/// A NUL-padded string field as text (up to the first NUL, lossy UTF-8).
fn get_str(b: &[u8], r: std::ops::Range<usize>) -> String {
    let f = &b[r];
    let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

impl Message {
    /// The protocol's name of the message type (for logs and errors).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ack => "ACK",
            Message::Hello(_) => "HELLO",
            Message::Init(_) => "INIT",
            Message::AddRegion(_) => "ADD_REGION",
            Message::AddRing(_) => "ADD_RING",
            Message::Connect { .. } => "CONNECT",
            Message::Connected { .. } => "CONNECTED",
            Message::Disconnect { .. } => "DISCONNECT",
        }
    }

    /// Encodes into a 128-byte record. Strings longer than their field are
    /// truncated (keeping a terminating NUL).
    pub fn encode(&self) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        let t = match self {
            Message::Ack => ty::ACK,
            Message::Hello(h) => {
                put_str(&mut b, field::HELLO_NAME, h.name.as_bytes());
                put_u16(&mut b, field::HELLO_MIN_VERSION, h.min_version);
                put_u16(&mut b, field::HELLO_MAX_VERSION, h.max_version);
                put_u16(&mut b, field::HELLO_MAX_REGION, h.max_region);
                put_u16(&mut b, field::HELLO_MAX_S2C_RING, h.max_s2c_ring);
                put_u16(&mut b, field::HELLO_MAX_C2S_RING, h.max_c2s_ring);
                b[field::HELLO_MAX_LOG2_RING_SIZE] = h.max_log2_ring_size;
                ty::HELLO
            }
            Message::Init(i) => {
                put_u16(&mut b, field::INIT_VERSION, i.version);
                put_u32(&mut b, field::INIT_ID, i.id);
                b[field::INIT_MODE] = MODE_ETHERNET;
                b[field::INIT_SECRET].copy_from_slice(&i.secret);
                put_str(&mut b, field::INIT_NAME, i.name.as_bytes());
                ty::INIT
            }
            Message::AddRegion(r) => {
                put_u16(&mut b, field::REGION_INDEX, r.index);
                b[field::REGION_SIZE].copy_from_slice(&r.size.to_le_bytes());
                ty::ADD_REGION
            }
            Message::AddRing(r) => {
                let flags = if r.c2s { ADD_RING_FLAG_C2S } else { 0 };
                put_u16(&mut b, field::RING_FLAGS, flags);
                put_u16(&mut b, field::RING_INDEX, r.index);
                put_u16(&mut b, field::RING_REGION, r.region);
                put_u32(&mut b, field::RING_OFFSET, r.offset);
                b[field::RING_LOG2_SIZE] = r.log2_ring_size;
                put_u16(&mut b, field::RING_PRIVATE_HDR, r.private_hdr_size);
                ty::ADD_RING
            }
            Message::Connect { if_name } => {
                put_str(&mut b, field::IF_NAME, if_name.as_bytes());
                ty::CONNECT
            }
            Message::Connected { if_name } => {
                put_str(&mut b, field::IF_NAME, if_name.as_bytes());
                ty::CONNECTED
            }
            Message::Disconnect { code, reason } => {
                put_u32(&mut b, field::DISC_CODE, *code);
                put_str(&mut b, field::DISC_REASON, reason.as_bytes());
                ty::DISCONNECT
            }
        };
        put_u16(&mut b, field::TYPE, t);
        b
    }

    /// Decodes a received record.
    pub fn decode(b: &[u8]) -> Result<Message, ProtoError> {
        if b.len() != MSG_SIZE {
            return Err(ProtoError::Size { len: b.len() });
        }
        let t = get_u16(b, field::TYPE);
        Ok(match t {
            ty::ACK => Message::Ack,
            ty::HELLO => Message::Hello(Hello {
                name: get_str(b, field::HELLO_NAME),
                min_version: get_u16(b, field::HELLO_MIN_VERSION),
                max_version: get_u16(b, field::HELLO_MAX_VERSION),
                max_region: get_u16(b, field::HELLO_MAX_REGION),
                max_s2c_ring: get_u16(b, field::HELLO_MAX_S2C_RING),
                max_c2s_ring: get_u16(b, field::HELLO_MAX_C2S_RING),
                max_log2_ring_size: b[field::HELLO_MAX_LOG2_RING_SIZE],
            }),
            ty::INIT => {
                let mode = b[field::INIT_MODE];
                if mode != MODE_ETHERNET {
                    return Err(ProtoError::Mode { mode });
                }
                let mut secret = [0u8; SECRET_LEN];
                secret.copy_from_slice(&b[field::INIT_SECRET]);
                Message::Init(Init {
                    version: get_u16(b, field::INIT_VERSION),
                    id: get_u32(b, field::INIT_ID),
                    secret,
                    name: get_str(b, field::INIT_NAME),
                })
            }
            ty::ADD_REGION => Message::AddRegion(AddRegion {
                index: get_u16(b, field::REGION_INDEX),
                size: get_u64(b, field::REGION_SIZE),
            }),
            ty::ADD_RING => Message::AddRing(AddRing {
                c2s: get_u16(b, field::RING_FLAGS) & ADD_RING_FLAG_C2S != 0,
                index: get_u16(b, field::RING_INDEX),
                region: get_u16(b, field::RING_REGION),
                offset: get_u32(b, field::RING_OFFSET),
                log2_ring_size: b[field::RING_LOG2_SIZE],
                private_hdr_size: get_u16(b, field::RING_PRIVATE_HDR),
            }),
            ty::CONNECT => Message::Connect {
                if_name: get_str(b, field::IF_NAME),
            },
            ty::CONNECTED => Message::Connected {
                if_name: get_str(b, field::IF_NAME),
            },
            ty::DISCONNECT => Message::Disconnect {
                code: get_u32(b, field::DISC_CODE),
                reason: get_str(b, field::DISC_REASON),
            },
            other => return Err(ProtoError::UnknownType { ty: other }),
        })
    }
}

/// The secret field for an optional secret string: its bytes, NUL-padded,
/// truncated to leave a terminating NUL (as DPDK's `strlcpy`).
pub fn secret_field(secret: Option<&str>) -> [u8; SECRET_LEN] {
    let mut f = [0u8; SECRET_LEN];
    if let Some(s) = secret {
        let n = s.len().min(SECRET_LEN - 1);
        f[..n].copy_from_slice(&s.as_bytes()[..n]);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            name: "DPDK 22.11.0".into(),
            min_version: VERSION,
            max_version: VERSION,
            max_region: 255,
            max_s2c_ring: 254,
            max_c2s_ring: 253,
            max_log2_ring_size: 14,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            Message::Ack,
            Message::Hello(hello()),
            Message::Init(Init {
                version: VERSION,
                id: 0xdead_beef,
                secret: secret_field(Some("s3cret")),
                name: "ix".into(),
            }),
            Message::AddRegion(AddRegion {
                index: 1,
                size: 0x1_2345_6789,
            }),
            Message::AddRing(AddRing {
                c2s: true,
                index: 3,
                region: 0,
                offset: 0x8100,
                log2_ring_size: 10,
                private_hdr_size: 0,
            }),
            Message::Connect {
                if_name: "net_memif0".into(),
            },
            Message::Connected {
                if_name: "memif0".into(),
            },
            Message::Disconnect {
                code: 7,
                reason: "Incorrect secret".into(),
            },
        ];
        for m in msgs {
            let b = m.encode();
            assert_eq!(Message::decode(&b), Ok(m.clone()), "{}", m.kind());
        }
    }

    /// Field offsets pinned byte by byte (the packed C layout).
    #[test]
    fn hello_fields_sit_at_protocol_offsets() {
        let b = Message::Hello(hello()).encode();
        assert_eq!(&b[0..2], &[2, 0]);
        assert_eq!(&b[2..14], b"DPDK 22.11.0");
        assert_eq!(b[14], 0);
        assert_eq!(&b[34..45], &[0, 2, 0, 2, 255, 0, 254, 0, 253, 0, 14]);
        assert!(b[45..].iter().all(|&x| x == 0));
    }

    #[test]
    fn init_and_ring_fields_sit_at_protocol_offsets() {
        let b = Message::Init(Init {
            version: VERSION,
            id: 0x0403_0201,
            secret: secret_field(Some("ab")),
            name: "n".into(),
        })
        .encode();
        assert_eq!(&b[0..9], &[3, 0, 0, 2, 1, 2, 3, 4, MODE_ETHERNET]);
        assert_eq!(&b[9..12], b"ab\0");
        assert_eq!(&b[33..35], b"n\0");

        let b = Message::AddRing(AddRing {
            c2s: false,
            index: 0x0102,
            region: 0x0304,
            offset: 0x0807_0605,
            log2_ring_size: 11,
            private_hdr_size: 0x0a09,
        })
        .encode();
        assert_eq!(&b[0..15], &[5, 0, 0, 0, 2, 1, 4, 3, 5, 6, 7, 8, 11, 9, 10]);

        let b = Message::AddRegion(AddRegion {
            index: 2,
            size: 0x0102_0304_0506_0708,
        })
        .encode();
        assert_eq!(&b[0..12], &[4, 0, 2, 0, 8, 7, 6, 5, 4, 3, 2, 1]);

        let b = Message::Disconnect {
            code: 1,
            reason: "bye".into(),
        }
        .encode();
        assert_eq!(&b[0..10], &[8, 0, 1, 0, 0, 0, b'b', b'y', b'e', 0]);
    }

    #[test]
    fn truncated_and_oversized_records_are_rejected() {
        let b = Message::Ack.encode();
        for len in [0, 1, 2, 64, 127] {
            assert_eq!(Message::decode(&b[..len]), Err(ProtoError::Size { len }));
        }
        let long = [0u8; 129];
        assert_eq!(Message::decode(&long), Err(ProtoError::Size { len: 129 }));
    }

    #[test]
    fn unknown_and_none_types_are_rejected() {
        let mut b = [0u8; MSG_SIZE];
        assert_eq!(Message::decode(&b), Err(ProtoError::UnknownType { ty: 0 }));
        b[0] = 9;
        assert_eq!(Message::decode(&b), Err(ProtoError::UnknownType { ty: 9 }));
        b[0] = 0xff;
        b[1] = 0xff;
        assert_eq!(
            Message::decode(&b),
            Err(ProtoError::UnknownType { ty: 0xffff })
        );
    }

    #[test]
    fn init_with_non_ethernet_mode_is_rejected() {
        let mut b = Message::Init(Init {
            version: VERSION,
            id: 0,
            secret: [0; SECRET_LEN],
            name: String::new(),
        })
        .encode();
        b[8] = 1;
        assert_eq!(Message::decode(&b), Err(ProtoError::Mode { mode: 1 }));
    }

    #[test]
    fn garbage_strings_decode_without_panic() {
        let mut b = Message::Connect {
            if_name: String::new(),
        }
        .encode();
        // A full, unterminated, invalid-UTF-8 name.
        b[2..34].fill(0xff);
        let Ok(Message::Connect { if_name }) = Message::decode(&b) else {
            panic!("CONNECT with a garbage name should decode");
        };
        assert_eq!(if_name.chars().count(), 32);
    }

    #[test]
    fn long_strings_are_truncated_with_a_terminator() {
        let long = "x".repeat(200);
        let b = Message::Disconnect {
            code: 0,
            reason: long.clone(),
        }
        .encode();
        assert_eq!(b[6 + REASON_LEN - 1], 0);
        let Ok(Message::Disconnect { reason, .. }) = Message::decode(&b) else {
            panic!("DISCONNECT should decode");
        };
        assert_eq!(reason, long[..REASON_LEN - 1]);
        assert_eq!(secret_field(Some(&long))[SECRET_LEN - 1], 0);
        assert_eq!(secret_field(None), [0; SECRET_LEN]);
    }
}
