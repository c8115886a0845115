//! The Internet checksum (RFC 1071) and the IPv4 pseudo-header sum used by
//! TCP and UDP (RFC 9293 §3.1, RFC 768).

use std::net::Ipv4Addr;

/// Adds `data` to a running one's-complement sum (not yet folded).
///
/// Bytes are taken as big-endian 16-bit words; an odd trailing byte is
/// padded with zero. Sums of several pieces compose only when every piece
/// but the last has even length.
///
/// Works 8 bytes at a time with end-around carry on 64 bits (valid since
/// 2^16 ≡ 1 mod 0xffff, RFC 1071 §2(B)), then folds to at most 17 bits so
/// that callers can add a few more values without overflow.
#[inline]
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut wide = u64::from(acc);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (r, carry) = wide.overflowing_add(w);
        wide = r + u64::from(carry);
    }
    // Fold to 33 bits first so the remaining few words cannot overflow.
    wide = (wide >> 32) + (wide & 0xffff_ffff);
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        wide += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        wide += u64::from(*last) << 8;
    }
    // Fold 64 → 32 → 17 bits (each step may leave one carry bit).
    wide = (wide >> 32) + (wide & 0xffff_ffff);
    wide = (wide >> 32) + (wide & 0xffff_ffff);
    let mut narrow = wide as u32;
    narrow = (narrow >> 16) + (narrow & 0xffff);
    narrow
}

/// Folds a running sum to 16 bits and complements it: the value to store
/// in a checksum field.
#[inline]
pub fn finish(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of `data` alone.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The running sum of the IPv4 pseudo-header for an upper-layer packet of
/// `len` bytes with protocol number `proto`.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc + u32::from(proto) + u32::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (before
        // complement).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &data)), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        // A real IPv4 header with its checksum (0xb861) in place.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0);
        let mut zeroed = hdr;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(checksum(&zeroed), 0xb861);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x12]), checksum(&[0x12, 0x00]));
    }

    /// The 8-byte path agrees with a plain 16-bit-word reference on every
    /// length and alignment, including carries from all-ones data.
    #[test]
    fn wide_sum_matches_word_by_word_reference() {
        fn reference(data: &[u8]) -> u16 {
            let mut acc: u32 = 0;
            for c in data.chunks(2) {
                let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
                acc += u32::from(w);
                acc = (acc & 0xffff) + (acc >> 16);
            }
            !(acc as u16)
        }
        let mut x = 0x1234_5678u32;
        let random: Vec<u8> = (0..600)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let ones = vec![0xffu8; 600];
        for data in [&random, &ones] {
            for start in 0..9 {
                for len in 0..(data.len() - start) {
                    let piece = &data[start..start + len];
                    assert_eq!(checksum(piece), reference(piece), "start {start} len {len}");
                }
            }
        }
    }

    #[test]
    fn pieces_compose() {
        let data: Vec<u8> = (0..=255u8).collect();
        let whole = checksum(&data);
        let split = finish(sum(sum(0, &data[..100]), &data[100..]));
        assert_eq!(whole, split);
    }
}
