//! The RSS steering area: both ends' receive redirection tables, kept in
//! the wire's shared memory so a sender always steers by the receiver's
//! *current* table (see the module docs of `memif` for the semantics).
//!
//! Only with [`super::Steering::Rss`] and more than one queue. The slave
//! makes region 0 (the rings region) one [`STEER_AREA_LEN`] page longer
//! than its rings need; the area is the last `STEER_AREA_LEN` bytes of
//! region 0, its start rounded down to 64 bytes (both ends compute it from
//! the region's size alone). Layout, little-endian, offsets in the area:
//!
//! | offset | field                                                     |
//! |--------|-----------------------------------------------------------|
//! | 0      | magic `u32` = [`STEER_MAGIC`] (written by the slave)       |
//! | 4      | version `u16` = [`STEER_VERSION`]                          |
//! | 6      | flow groups `u16` (length of both tables, 1..=512)         |
//! | 8      | the slave's Toeplitz key, 40 bytes (the master checks it is its own) |
//! | 64     | master's table: active-queue mask `u32` (bit *j*: queue *j* appears in the table) |
//! | 128    | master's table: queue of each flow group, `u16` × groups (room for 512) |
//! | 1152   | slave's table: active-queue mask `u32`                     |
//! | 1216   | slave's table: `u16` × groups                              |
//!
//! The master's table steers client-to-server rings (the slave reads it
//! when sending), the slave's steers server-to-client rings. Each end
//! writes only its own table and reads only the peer's.
//!
//! Every field is accessed as an atomic at its offset (relaxed: each
//! value stands alone, no other memory is published through it); the
//! area is never seen as a byte slice. A reader trusts nothing: entries
//! and mask bits naming a queue the port does not have are the caller's
//! to drop (see `queue`).
//!
//! Updating a table ([`SteerArea::publish`]) first widens the mask to old
//! ∪ new queues, then stores the entries one by one, then narrows the mask
//! to the new queues: a sender reading mid-update sees, per flow group,
//! the old or the new queue, and a mask that covers both.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use super::ring::Regions;
use crate::rss::RSS_KEY_LEN;

/// Bytes reserved for the steering area at the end of region 0.
pub const STEER_AREA_LEN: usize = 4096;
/// Most flow groups a table holds.
pub const MAX_FLOW_GROUPS: usize = 512;
/// Magic word of the area ("IXRS" in memory).
pub const STEER_MAGIC: u32 = u32::from_le_bytes(*b"IXRS");
/// Layout version.
pub const STEER_VERSION: u16 = 1;
/// Most queues a mask can name (RSS steering allows at most 16).
pub const MAX_MASK_QUEUES: usize = 32;

/// Field offsets in the area (see the module docs).
mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const GROUPS: usize = 6;
    pub const KEY: usize = 8;
    pub const MASTER: usize = 64;
    pub const SLAVE: usize = 64 + TABLE_BLOCK;
    /// Mask word, then entries at `ENTRIES` within a table block.
    pub const MASK: usize = 0;
    pub const ENTRIES: usize = 64;
    pub const TABLE_BLOCK: usize = ENTRIES + 2 * super::MAX_FLOW_GROUPS;
}

const _: () = assert!(off::SLAVE + off::TABLE_BLOCK <= STEER_AREA_LEN);
const _: () = assert!(off::KEY + RSS_KEY_LEN <= off::MASTER && RSS_KEY_LEN.is_multiple_of(4));

/// Whose receive table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The master's (steers client-to-server rings).
    Master,
    /// The slave's (steers server-to-client rings).
    Slave,
}

impl Side {
    /// The other end's side.
    pub fn peer(self) -> Side {
        match self {
            Side::Master => Side::Slave,
            Side::Slave => Side::Master,
        }
    }

    fn block(self) -> usize {
        match self {
            Side::Master => off::MASTER,
            Side::Slave => off::SLAVE,
        }
    }
}

/// Offset of the steering area in a region of `region_len` bytes, or
/// `None` when the region is too small to hold one.
pub fn area_offset(region_len: usize) -> Option<usize> {
    region_len.checked_sub(STEER_AREA_LEN).map(|o| o & !63usize)
}

/// Size of a rings region that holds `rings_len` bytes of rings and the
/// steering area after them (page-aligned).
pub fn region_len_with_area(rings_len: usize) -> usize {
    rings_len.div_ceil(STEER_AREA_LEN) * STEER_AREA_LEN + STEER_AREA_LEN
}

/// Bit mask of the queues a table names (queues ≥ 32 are left out; the
/// configuration allows at most 16 with RSS steering).
pub fn queue_mask(table: &[u16]) -> u32 {
    table
        .iter()
        .filter(|&&q| usize::from(q) < MAX_MASK_QUEUES)
        .fold(0, |m, &q| m | 1 << q)
}

/// Errors locating the steering area.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SteerError {
    /// The region cannot hold the area.
    #[error("rings region of {region_len} bytes has no room for the {STEER_AREA_LEN}-byte RSS steering area — is the peer a libix dataplane with RSS steering and as many queues?")]
    NoRoom {
        /// Size of the region.
        region_len: usize,
    },
    /// The region index names no region.
    #[error("no region {region} for the RSS steering area")]
    NoRegion {
        /// The index.
        region: u16,
    },
    /// A table length outside 1..=512.
    #[error("RSS table of {groups} flow groups (allowed 1..={MAX_FLOW_GROUPS})")]
    Groups {
        /// The length.
        groups: usize,
    },
}

/// A view of the steering area of one connection. Holds the regions alive.
pub struct SteerArea {
    _keep: Arc<Regions>,
    base: NonNull<u8>,
    groups: usize,
}

impl std::fmt::Debug for SteerArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteerArea")
            .field("groups", &self.groups)
            .finish()
    }
}

impl SteerArea {
    /// The area at the end of `region`, for tables of `groups` entries.
    pub fn new(regions: Arc<Regions>, region: u16, groups: usize) -> Result<SteerArea, SteerError> {
        if groups == 0 || groups > MAX_FLOW_GROUPS {
            return Err(SteerError::Groups { groups });
        }
        let Some(map) = regions.get(usize::from(region)) else {
            return Err(SteerError::NoRegion { region });
        };
        let Some(offset) = area_offset(map.len()) else {
            return Err(SteerError::NoRoom {
                region_len: map.len(),
            });
        };
        // SAFETY: offset + STEER_AREA_LEN <= map.len() (area_offset), so
        // the pointer stays inside the mapping; a mapping is never null.
        let base = unsafe { NonNull::new_unchecked(map.as_ptr().add(offset)) };
        Ok(SteerArea {
            _keep: regions,
            base,
            groups,
        })
    }

    /// Flow groups per table.
    pub fn groups(&self) -> usize {
        self.groups
    }

    #[inline]
    fn u16_at(&self, off: usize) -> &AtomicU16 {
        debug_assert!(off + 2 <= STEER_AREA_LEN && off.is_multiple_of(2));
        // SAFETY: every caller passes a constant header offset or a table
        // entry offset with index < groups <= MAX_FLOW_GROUPS, so `off` is
        // 2-aligned and inside the area (checked by the layout assertion);
        // the area base is 64-aligned in a page-aligned mapping that lives
        // as long as `self` (the Arc). The peer accesses the same words
        // only from another process, through atomics or plain stores of
        // the same width (see the module docs).
        unsafe { AtomicU16::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= STEER_AREA_LEN && off.is_multiple_of(4));
        // SAFETY: as in `u16_at`, with `off` a 4-aligned header offset.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    /// Writes magic, version, table length and the Toeplitz key (the
    /// slave, at creation).
    pub fn write_header(&self, key: &[u8; RSS_KEY_LEN]) {
        for (i, w) in key.chunks_exact(4).enumerate() {
            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            self.u32_at(off::KEY + 4 * i).store(w, Ordering::Relaxed);
        }
        self.u32_at(off::MAGIC)
            .store(STEER_MAGIC, Ordering::Relaxed);
        self.u16_at(off::VERSION)
            .store(STEER_VERSION, Ordering::Relaxed);
        self.u16_at(off::GROUPS)
            .store(self.groups as u16, Ordering::Relaxed);
    }

    /// Whether the header is the one [`SteerArea::write_header`] writes
    /// for this many groups; else what it holds (magic, version, groups).
    pub fn check_header(&self) -> Result<(), (u32, u16, u16)> {
        let got = (
            self.u32_at(off::MAGIC).load(Ordering::Relaxed),
            self.u16_at(off::VERSION).load(Ordering::Relaxed),
            self.u16_at(off::GROUPS).load(Ordering::Relaxed),
        );
        if got == (STEER_MAGIC, STEER_VERSION, self.groups as u16) {
            Ok(())
        } else {
            Err(got)
        }
    }

    /// The Toeplitz key in the header.
    pub fn key(&self) -> [u8; RSS_KEY_LEN] {
        let mut key = [0u8; RSS_KEY_LEN];
        for (i, w) in key.chunks_exact_mut(4).enumerate() {
            let v = self.u32_at(off::KEY + 4 * i).load(Ordering::Relaxed);
            w.copy_from_slice(&v.to_le_bytes());
        }
        key
    }

    /// The queue `side`'s table gives flow group `group`; `u16::MAX` for
    /// a group beyond the table (a caller bug, never a panic). One relaxed
    /// load: the hot path.
    #[inline]
    pub fn entry(&self, side: Side, group: usize) -> u16 {
        if group >= self.groups {
            return u16::MAX;
        }
        self.u16_at(side.block() + off::ENTRIES + 2 * group)
            .load(Ordering::Relaxed)
    }

    /// The active-queue mask of `side`'s table, as written (untrusted).
    #[inline]
    pub fn mask(&self, side: Side) -> u32 {
        self.u32_at(side.block() + off::MASK)
            .load(Ordering::Relaxed)
    }

    /// Stores one entry of `side`'s table (tests play a lying peer with it).
    pub fn set_entry(&self, side: Side, group: usize, queue: u16) {
        if group < self.groups {
            self.u16_at(side.block() + off::ENTRIES + 2 * group)
                .store(queue, Ordering::Relaxed);
        }
    }

    /// Overwrites the active-queue mask of `side`'s table (tests play a
    /// lying peer with it).
    #[cfg(test)]
    pub fn set_mask(&self, side: Side, mask: u32) {
        self.u32_at(side.block() + off::MASK)
            .store(mask, Ordering::Relaxed);
    }

    /// Publishes `table` as `side`'s table: mask widened to old ∪ new,
    /// entries stored one by one, mask narrowed to new (module docs).
    /// Entries beyond the area's group count are ignored.
    pub fn publish(&self, side: Side, table: &[u16]) {
        let mask = self.u32_at(side.block() + off::MASK);
        let new = queue_mask(table);
        mask.store(mask.load(Ordering::Relaxed) | new, Ordering::Relaxed);
        for (g, &q) in table.iter().enumerate().take(self.groups) {
            self.set_entry(side, g, q);
        }
        mask.store(new, Ordering::Relaxed);
    }

    /// A copy of `side`'s table as it is now.
    pub fn read_table(&self, side: Side) -> Vec<u16> {
        (0..self.groups).map(|g| self.entry(side, g)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::SharedMem;

    fn regions(len: usize) -> Arc<Regions> {
        Arc::new(Regions::new(vec![
            SharedMem::create("t", len, false).unwrap()
        ]))
    }

    #[test]
    fn area_sits_in_the_last_page_of_the_region() {
        assert_eq!(region_len_with_area(1), 2 * STEER_AREA_LEN);
        assert_eq!(region_len_with_area(4096), 2 * STEER_AREA_LEN);
        assert_eq!(region_len_with_area(4097), 3 * STEER_AREA_LEN);
        assert_eq!(area_offset(3 * 4096), Some(2 * 4096));
        assert_eq!(area_offset(4096 + 100), Some(64));
        assert_eq!(area_offset(4095), None);
    }

    #[test]
    fn tables_are_separate_and_read_back() {
        let a = SteerArea::new(regions(8192), 0, 128).unwrap();
        a.write_header(&crate::rss::DEFAULT_RSS_KEY);
        assert_eq!(a.check_header(), Ok(()));
        assert_eq!(a.key(), crate::rss::DEFAULT_RSS_KEY);
        let m: Vec<u16> = (0..128).map(|g| g % 3).collect();
        let s: Vec<u16> = (0..128).map(|g| 15 - g % 2).collect();
        a.publish(Side::Master, &m);
        a.publish(Side::Slave, &s);
        assert_eq!(a.read_table(Side::Master), m);
        assert_eq!(a.read_table(Side::Slave), s);
        assert_eq!(a.mask(Side::Master), 0b111);
        assert_eq!(a.mask(Side::Slave), 0b1100_0000_0000_0000);
        assert_eq!(a.entry(Side::Master, 128), u16::MAX, "beyond the table");
    }

    #[test]
    fn header_of_another_size_or_garbage_is_refused() {
        let r = regions(8192);
        SteerArea::new(r.clone(), 0, 64)
            .unwrap()
            .write_header(&[7; RSS_KEY_LEN]);
        let a = SteerArea::new(r, 0, 128).unwrap();
        assert_eq!(a.check_header(), Err((STEER_MAGIC, STEER_VERSION, 64)));
        let fresh = SteerArea::new(regions(8192), 0, 128).unwrap();
        assert_eq!(fresh.check_header(), Err((0, 0, 0)));
    }

    #[test]
    fn missing_region_or_bad_group_count_is_refused() {
        let r = Arc::new(Regions::new(vec![]));
        assert_eq!(
            SteerArea::new(r, 0, 128).unwrap_err(),
            SteerError::NoRegion { region: 0 }
        );
        assert_eq!(
            SteerArea::new(regions(8192), 0, 513).unwrap_err(),
            SteerError::Groups { groups: 513 }
        );
        assert_eq!(
            SteerArea::new(regions(8192), 0, 0).unwrap_err(),
            SteerError::Groups { groups: 0 }
        );
    }
}
