//! memif shared memory: the regions of one connection, the rings inside
//! them, and the packet buffers the descriptors point at.
//!
//! Ring layout (DPDK `memif.h`, `memif_ring_t`, 64-byte cache lines):
//!
//! | offset | field                                              |
//! |--------|----------------------------------------------------|
//! | 0      | cookie `u32` = `0x3E31F20`                         |
//! | 4      | flags `u16` (bit 0 `MASK_INT`: receiver polls, no interrupts) |
//! | 6      | head `u16` (free-running index)                     |
//! | 64     | tail `u16` (free-running index)                     |
//! | 128    | descriptors, 16 bytes each, `1 << log2_ring_size` of them |
//!
//! Descriptor (`memif_desc_t`): flags `u16` at 0 (bit 0 `NEXT`: the frame
//! continues in the next slot), region `u16` at 2, length `u32` at 4,
//! offset `u32` at 8, metadata `u32` at 12.
//!
//! This module is one of the backend's two `unsafe` wrapper modules (the
//! other is `control`). Memory shared with the peer is never turned into a
//! Rust reference to plain bytes: head, tail, flags, cookie and descriptor
//! fields are read and written as atomics at their offsets (the C side
//! uses atomics for head and tail and plain accesses for the rest; on the
//! platforms we run on, a relaxed atomic access is the same instruction as
//! a plain one). Packet bytes are copied in and out with bounds checks
//! against the mapped region; a peer that rewrites a buffer while we copy
//! it only garbles its own frame (an accepted race, as for any NIC DMA
//! into memory the sender still owns).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use crate::mem::SharedMem;

/// Ring cookie.
pub const COOKIE: u32 = 0x03E3_1F20;
/// Ring flag: the receiver polls; the sender need not signal the eventfd.
pub const RING_FLAG_MASK_INT: u16 = 1;
/// Descriptor flag: the frame continues in the next descriptor.
pub const DESC_FLAG_NEXT: u16 = 1;
/// Largest ring accepted (as log2), as DPDK's `ETH_MEMIF_MAX_LOG2_RING_SIZE`.
pub const MAX_LOG2_RING_SIZE: u8 = 14;
/// Size of the ring header before the descriptors.
pub const RING_HEADER: usize = 128;
/// Size of one descriptor.
pub const DESC_SIZE: usize = 16;

/// Field offsets (see the module docs).
mod off {
    pub const COOKIE: usize = 0;
    pub const FLAGS: usize = 4;
    pub const HEAD: usize = 6;
    pub const TAIL: usize = 64;
    pub const D_FLAGS: usize = 0;
    pub const D_REGION: usize = 2;
    pub const D_LENGTH: usize = 4;
    pub const D_OFFSET: usize = 8;
}

/// Bytes taken by a ring of `1 << log2` descriptors.
pub const fn ring_bytes(log2: u8) -> usize {
    RING_HEADER + (DESC_SIZE << log2)
}

/// Errors placing a ring in a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The region index names no region.
    #[error("ring refers to region {region}, but only {regions} were added")]
    NoSuchRegion {
        /// The index.
        region: u16,
        /// Regions present.
        regions: usize,
    },
    /// The ring size is out of range.
    #[error("ring size 2^{log2} out of range (1..=2^{MAX_LOG2_RING_SIZE})")]
    Size {
        /// The requested log2 size.
        log2: u8,
    },
    /// The ring does not fit the region.
    #[error("ring at offset {offset} ({bytes} bytes) does not fit region {region} of {region_len} bytes")]
    Outside {
        /// Region index.
        region: u16,
        /// Ring offset.
        offset: u32,
        /// Ring size in bytes.
        bytes: usize,
        /// Region size.
        region_len: usize,
    },
    /// The ring offset is not 4-byte aligned.
    #[error("ring offset {offset} is not 4-byte aligned")]
    Misaligned {
        /// Ring offset.
        offset: u32,
    },
}

/// The mapped regions of one connection, indexed by region number. They
/// stay mapped as long as any view ([`Ring`], [`Buffers`]) holds them.
#[derive(Debug)]
pub struct Regions {
    maps: Vec<SharedMem>,
}

impl Regions {
    /// Takes ownership of mapped regions (index = position). Every region
    /// must be mapped writable: rings and buffers are written by both sides.
    pub fn new(maps: Vec<SharedMem>) -> Regions {
        assert!(maps.iter().all(SharedMem::is_writable));
        Regions { maps }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Region `i`.
    pub fn get(&self, i: usize) -> Option<&SharedMem> {
        self.maps.get(i)
    }
}

/// One region's mapping, as a raw span.
#[derive(Clone, Copy)]
struct Span {
    ptr: NonNull<u8>,
    len: usize,
}

/// Bounds-checked access to the packet buffers of a connection's regions.
///
/// Holds the regions alive; not `Send` (made per thread from the shared
/// [`Regions`]).
pub struct Buffers {
    _keep: Arc<Regions>,
    spans: Box<[Span]>,
}

impl Buffers {
    /// A view of every region of `regions`.
    pub fn new(regions: Arc<Regions>) -> Buffers {
        let spans = regions
            .maps
            .iter()
            .map(|m| Span {
                ptr: NonNull::new(m.as_ptr()).expect("a mapping is never null"),
                len: m.len(),
            })
            .collect();
        Buffers {
            _keep: regions,
            spans,
        }
    }

    /// Pointer to `len` bytes at `offset` in `region`, if they are inside.
    #[inline]
    fn at(&self, region: u16, offset: u32, len: usize) -> Option<*mut u8> {
        let span = self.spans.get(usize::from(region))?;
        let off = offset as usize;
        if off.checked_add(len)? > span.len {
            return None;
        }
        // SAFETY: off + len <= span.len, so the result stays inside the
        // mapping (one past the end at most when len == 0).
        Some(unsafe { span.ptr.as_ptr().add(off) })
    }

    /// Copies `dst.len()` bytes out of the buffer at `region`/`offset`.
    /// False (nothing copied) when the range is outside the regions.
    #[inline]
    pub fn copy_out(&self, region: u16, offset: u32, dst: &mut [u8]) -> bool {
        let Some(src) = self.at(region, offset, dst.len()) else {
            return false;
        };
        // SAFETY: `src..src+len` is inside a live mapping (checked by `at`;
        // the Arc keeps it mapped); `dst` is private memory that cannot
        // overlap a shared region; bytes have no validity invariant, so a
        // concurrent peer write only garbles the copy (see module docs).
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` into the buffer at `region`/`offset`. False (nothing
    /// written) when the range is outside the regions.
    #[inline]
    pub fn copy_in(&self, region: u16, offset: u32, src: &[u8]) -> bool {
        let Some(dst) = self.at(region, offset, src.len()) else {
            return false;
        };
        // SAFETY: `dst..dst+len` is inside a live writable mapping (checked
        // by `at`; `Regions::new` asserts writability); no Rust reference
        // to the shared bytes exists; `src` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        true
    }
}

/// A descriptor's fields (metadata is neither read nor written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Flags ([`DESC_FLAG_NEXT`]).
    pub flags: u16,
    /// Region of the buffer.
    pub region: u16,
    /// Bytes in the buffer (producer) or buffer capacity (posted).
    pub length: u32,
    /// Offset of the buffer in its region.
    pub offset: u32,
}

/// A view of one ring in a mapped region. Holds the regions alive.
pub struct Ring {
    _keep: Arc<Regions>,
    base: NonNull<u8>,
    log2: u8,
}

impl Ring {
    /// The ring at `offset` of `region`, after checking that it fits, is
    /// aligned and has a size in range.
    pub fn new(
        regions: Arc<Regions>,
        region: u16,
        offset: u32,
        log2: u8,
    ) -> Result<Ring, RingError> {
        if log2 > MAX_LOG2_RING_SIZE {
            return Err(RingError::Size { log2 });
        }
        let Some(map) = regions.get(usize::from(region)) else {
            return Err(RingError::NoSuchRegion {
                region,
                regions: regions.len(),
            });
        };
        if !offset.is_multiple_of(4) {
            return Err(RingError::Misaligned { offset });
        }
        let bytes = ring_bytes(log2);
        if (offset as usize)
            .checked_add(bytes)
            .is_none_or(|end| end > map.len())
        {
            return Err(RingError::Outside {
                region,
                offset,
                bytes,
                region_len: map.len(),
            });
        }
        // SAFETY: offset + ring_bytes(log2) <= map.len() (checked above),
        // so the pointer stays inside the mapping.
        let base = unsafe { NonNull::new_unchecked(map.as_ptr().add(offset as usize)) };
        Ok(Ring {
            _keep: regions,
            base,
            log2,
        })
    }

    /// Number of descriptors.
    #[inline]
    pub fn size(&self) -> u16 {
        1 << self.log2
    }

    #[inline]
    fn u16_at(&self, off: usize) -> &AtomicU16 {
        debug_assert!(off + 2 <= ring_bytes(self.log2) && off.is_multiple_of(2));
        // SAFETY: `off` is a 2-aligned offset inside the ring (callers pass
        // header offsets or descriptor field offsets of a masked slot), the
        // ring base is 4-aligned in a page-aligned mapping, and the mapping
        // lives as long as `self` (the Arc). The peer accesses the field
        // concurrently only from another process (see the module docs).
        unsafe { AtomicU16::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= ring_bytes(self.log2) && off.is_multiple_of(4));
        // SAFETY: as in `u16_at`, with `off` 4-aligned.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    /// The cookie word.
    pub fn cookie(&self) -> u32 {
        self.u32_at(off::COOKIE).load(Ordering::Relaxed)
    }

    /// Writes the cookie word.
    pub fn set_cookie(&self, v: u32) {
        self.u32_at(off::COOKIE).store(v, Ordering::Relaxed)
    }

    /// The ring flags.
    #[inline]
    pub fn flags(&self) -> u16 {
        self.u16_at(off::FLAGS).load(Ordering::Relaxed)
    }

    /// Writes the ring flags.
    pub fn set_flags(&self, v: u16) {
        self.u16_at(off::FLAGS).store(v, Ordering::Relaxed)
    }

    /// Loads head.
    #[inline]
    pub fn head(&self, order: Ordering) -> u16 {
        self.u16_at(off::HEAD).load(order)
    }

    /// Stores head.
    #[inline]
    pub fn set_head(&self, v: u16, order: Ordering) {
        self.u16_at(off::HEAD).store(v, order)
    }

    /// Loads tail.
    #[inline]
    pub fn tail(&self, order: Ordering) -> u16 {
        self.u16_at(off::TAIL).load(order)
    }

    /// Stores tail.
    #[inline]
    pub fn set_tail(&self, v: u16, order: Ordering) {
        self.u16_at(off::TAIL).store(v, order)
    }

    #[inline]
    fn desc_off(&self, slot: u16) -> usize {
        let masked = usize::from(slot) & ((1usize << self.log2) - 1);
        RING_HEADER + masked * DESC_SIZE
    }

    /// Reads the descriptor of free-running index `slot` (masked).
    #[inline]
    pub fn desc(&self, slot: u16) -> Desc {
        let d = self.desc_off(slot);
        Desc {
            flags: self.u16_at(d + off::D_FLAGS).load(Ordering::Relaxed),
            region: self.u16_at(d + off::D_REGION).load(Ordering::Relaxed),
            length: self.u32_at(d + off::D_LENGTH).load(Ordering::Relaxed),
            offset: self.u32_at(d + off::D_OFFSET).load(Ordering::Relaxed),
        }
    }

    /// Writes every field of the descriptor of `slot` (masked).
    #[inline]
    pub fn set_desc(&self, slot: u16, v: Desc) {
        let d = self.desc_off(slot);
        self.u16_at(d + off::D_FLAGS)
            .store(v.flags, Ordering::Relaxed);
        self.u16_at(d + off::D_REGION)
            .store(v.region, Ordering::Relaxed);
        self.u32_at(d + off::D_LENGTH)
            .store(v.length, Ordering::Relaxed);
        self.u32_at(d + off::D_OFFSET)
            .store(v.offset, Ordering::Relaxed);
    }

    /// Writes length and flags of the descriptor of `slot` (masked), as a
    /// producer filling a buffer the peer posted.
    #[inline]
    pub fn set_len_flags(&self, slot: u16, length: u32, flags: u16) {
        let d = self.desc_off(slot);
        self.u32_at(d + off::D_LENGTH)
            .store(length, Ordering::Relaxed);
        self.u16_at(d + off::D_FLAGS)
            .store(flags, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(lens: &[usize]) -> Arc<Regions> {
        Arc::new(Regions::new(
            lens.iter()
                .map(|&l| SharedMem::create("ix-memif-ring-test", l, false).unwrap())
                .collect(),
        ))
    }

    #[test]
    fn fields_land_at_protocol_offsets() {
        let r = regions(&[8192]);
        let ring = Ring::new(r.clone(), 0, 256, 3).unwrap();
        ring.set_cookie(COOKIE);
        ring.set_flags(RING_FLAG_MASK_INT);
        ring.set_head(0x1234, Ordering::Release);
        ring.set_tail(0xabcd, Ordering::Release);
        ring.set_desc(
            9, // masks to slot 1
            Desc {
                flags: DESC_FLAG_NEXT,
                region: 2,
                length: 0x0102_0304,
                offset: 0x0a0b_0c0d,
            },
        );
        let mut b = [0u8; 256];
        r.get(0).unwrap().read_at(256, &mut b);
        assert_eq!(&b[0..4], &COOKIE.to_le_bytes());
        assert_eq!(&b[4..6], &[1, 0]);
        assert_eq!(&b[6..8], &[0x34, 0x12]);
        assert_eq!(&b[64..66], &[0xcd, 0xab]);
        assert_eq!(
            &b[144..160],
            &[1, 0, 2, 0, 4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a, 0, 0, 0, 0]
        );
        assert_eq!(ring.desc(1).length, 0x0102_0304);
        ring.set_len_flags(1, 60, 0);
        assert_eq!(
            ring.desc(1),
            Desc {
                flags: 0,
                region: 2,
                length: 60,
                offset: 0x0a0b_0c0d
            }
        );
    }

    #[test]
    fn ring_outside_or_misaligned_or_oversized_is_refused() {
        let r = regions(&[4096]);
        assert_eq!(ring_bytes(3), 256);
        assert!(Ring::new(r.clone(), 0, 4096 - 256, 3).is_ok());
        assert!(matches!(
            Ring::new(r.clone(), 0, 4096 - 252, 3),
            Err(RingError::Outside { .. })
        ));
        assert!(matches!(
            Ring::new(r.clone(), 0, u32::MAX - 3, 3),
            Err(RingError::Outside { .. })
        ));
        assert!(matches!(
            Ring::new(r.clone(), 0, 2, 3),
            Err(RingError::Misaligned { offset: 2 })
        ));
        assert!(matches!(
            Ring::new(r.clone(), 1, 0, 3),
            Err(RingError::NoSuchRegion { region: 1, .. })
        ));
        assert!(matches!(
            Ring::new(r, 0, 0, 15),
            Err(RingError::Size { log2: 15 })
        ));
    }

    #[test]
    fn buffer_copies_are_bounds_checked() {
        let r = regions(&[4096, 8192]);
        let b = Buffers::new(r.clone());
        assert!(b.copy_in(1, 8190, b"hi"));
        let mut out = [0u8; 2];
        assert!(b.copy_out(1, 8190, &mut out));
        assert_eq!(&out, b"hi");
        assert!(!b.copy_in(1, 8191, b"hi"));
        assert!(!b.copy_out(0, 4095, &mut out));
        assert!(!b.copy_out(2, 0, &mut out));
        assert!(!b.copy_out(0, u32::MAX, &mut out));
        let mut whole = vec![0u8; 4096];
        assert!(b.copy_out(0, 0, &mut whole));
        assert!(!b.copy_out(0, 1, &mut whole));
    }
}
