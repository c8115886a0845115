//! Keyed hashing for the TCP engine: SipHash-2-4 (Aumasson & Bernstein,
//! 2012), used for initial sequence numbers per RFC 6528 and for the
//! connection table's bucket index (keyed, so a peer cannot aim many
//! 4-tuples at one bucket).

use std::net::SocketAddrV4;

use crate::time::Instant;
use crate::wire::tcp::SeqNum;

/// A 128-bit SipHash key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SipKey {
    k0: u64,
    k1: u64,
}

impl SipKey {
    /// The key from 16 secret bytes (little-endian halves, as in the paper).
    pub(crate) fn new(bytes: [u8; 16]) -> SipKey {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        b.copy_from_slice(&bytes[8..]);
        SipKey {
            k0: u64::from_le_bytes(a),
            k1: u64::from_le_bytes(b),
        }
    }

    /// A different key derived from this one, for an unrelated use of the
    /// same secret.
    pub(crate) fn derive(self, label: u64) -> SipKey {
        SipKey {
            k0: siphash24(self, &label.to_le_bytes()),
            k1: siphash24(self, &(!label).to_le_bytes()),
        }
    }
}

#[inline]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `data` under `key` (the ISN generator's PRF).
pub(crate) fn siphash24(key: SipKey, data: &[u8]) -> u64 {
    siphash::<2, 4>(key, data)
}

/// SipHash-1-3 of `data` under `key`: the connection table's hash (as
/// Rust's `HashMap`): keyed, so a peer cannot aim its 4-tuples at one
/// bucket, and half the rounds of 2-4 on the per-packet lookup.
#[inline]
pub(crate) fn siphash13(key: SipKey, data: &[u8]) -> u64 {
    siphash::<1, 3>(key, data)
}

/// SipHash-c-d of `data` under `key`.
#[inline]
fn siphash<const C: usize, const D: usize>(key: SipKey, data: &[u8]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let m = u64::from_le_bytes(w);
        v[3] ^= m;
        for _ in 0..C {
            round(&mut v);
        }
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rem = chunks.remainder();
    last[..rem.len()].copy_from_slice(rem);
    last[7] = data.len() as u8;
    let b = u64::from_le_bytes(last);
    v[3] ^= b;
    for _ in 0..C {
        round(&mut v);
    }
    v[0] ^= b;
    v[2] ^= 0xff;
    for _ in 0..D {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The 12 bytes identifying a connection: local address and port, remote
/// address and port.
#[inline]
pub(crate) fn tuple_bytes(local: SocketAddrV4, remote: SocketAddrV4) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&local.ip().octets());
    b[4..6].copy_from_slice(&local.port().to_be_bytes());
    b[6..10].copy_from_slice(&remote.ip().octets());
    b[10..].copy_from_slice(&remote.port().to_be_bytes());
    b
}

/// RFC 6528 §3: ISN = M + F(localip, localport, remoteip, remoteport,
/// secretkey), with M a timer ticking every 4 µs and F a keyed hash
/// (SipHash-2-4 truncated to 32 bits).
pub(crate) fn initial_seq(
    key: SipKey,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    now: Instant,
) -> SeqNum {
    let m = (now.as_nanos() / 4_000) as u32;
    let f = siphash24(key, &tuple_bytes(local, remote)) as u32;
    SeqNum(m.wrapping_add(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key() -> SipKey {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        SipKey::new(k)
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // SipHash paper, Appendix A: key 00..0f, message 00..0e.
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(key(), &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn isn_advances_with_the_clock_and_differs_per_tuple() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000);
        let c = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40001);
        let t0 = Instant::from_millis(1);
        let t1 = Instant::from_millis(2);
        let i0 = initial_seq(key(), a, b, t0);
        assert_eq!(initial_seq(key(), a, b, t1).since(i0), 250, "4 µs ticks");
        assert_ne!(initial_seq(key(), a, c, t0), i0);
        assert_ne!(initial_seq(key().derive(1), a, b, t0), i0);
    }
}
