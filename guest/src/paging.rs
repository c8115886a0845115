//! Identity 4-level page tables for the guest, in memory the guest cannot
//! reach.
//!
//! Intel SDM vol. 3A §4.5 (4-level paging) and AMD APM vol. 2 §5.3: a PML4
//! entry → PDPT → page directory → page table → 4 KiB page. Every entry
//! maps virtual address *x* to physical address *x* (guest-physical ==
//! host-virtual, Dune-style). Permissions are set on the leaf only: the
//! upper levels allow everything (user, writable, executable), and the
//! effective right is the intersection over the walk (SDM §4.6), so the
//! leaf decides. Accessed and dirty bits are set from the start: the page
//! walker then never has to write an entry, and the tables can sit in a
//! read-only memory slot. The tables themselves are mapped at no virtual
//! address, so nothing running in the guest can read or change them.
//!
//! The arena is reserved up front (`MAP_NORESERVE`: pages cost memory only
//! once written) and never moves, because the guest's CR3 and every entry
//! hold addresses inside it. Entries are written with atomic stores: a
//! vCPU of the same VM may walk the tables while another thread maps more.
//! Only additions are supported: changing or removing a present entry would
//! need the guest's TLB (and KVM's shadow of these tables) flushed.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, MmapRegion, VolatileMemory};

use crate::region::PAGE_SIZE;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const NX: u64 = 1 << 63;
/// Physical-address bits 12..=51 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const UPPER: u64 = P | RW | US | A;

/// Errors in building page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Reserving the arena failed.
    #[error("cannot reserve {bytes} bytes for guest page tables: {source}")]
    Reserve {
        /// Arena size asked for.
        bytes: usize,
        /// The mmap error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The arena has no free table page left.
    #[error(
        "guest page-table arena full ({pages} pages) — give the VM a larger \
         page_table_pages (each page table maps 2 MiB)"
    )]
    Full {
        /// Arena capacity in pages.
        pages: usize,
    },
    /// A page is already mapped (callers map each page once).
    #[error("guest page {addr:#x} is already mapped")]
    AlreadyMapped {
        /// The page.
        addr: u64,
    },
}

/// Rights of a leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Reachable from ring 3 (else ring 0 only).
    pub user: bool,
    /// Writable.
    pub write: bool,
    /// Executable (else NX).
    pub exec: bool,
}

/// Identity page tables in an arena of their own.
#[derive(Debug)]
pub struct PageTables {
    arena: MmapRegion,
    pages: usize,
    used: usize,
}

impl PageTables {
    /// Reserves an arena of `pages` table pages (at least one: the PML4)
    /// and creates an empty PML4.
    pub fn new(pages: usize) -> Result<Self, PagingError> {
        let pages = pages.max(1);
        let bytes = pages * PAGE_SIZE as usize;
        let arena = MmapRegion::build(
            None,
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|source| PagingError::Reserve { bytes, source })?;
        Ok(PageTables {
            arena,
            pages,
            used: 1,
        })
    }

    /// Guest-physical (== host-virtual) address of the PML4: the guest's CR3.
    pub fn root(&self) -> u64 {
        self.base()
    }

    /// First address of the arena (for its memory slot).
    pub fn base(&self) -> u64 {
        self.arena.as_ptr() as u64
    }

    /// Arena length in bytes.
    pub fn arena_len(&self) -> u64 {
        self.arena.len() as u64
    }

    /// Table pages in use, PML4 included.
    pub fn used_pages(&self) -> usize {
        self.used
    }

    /// Table pages the mapping of `[start, end)` would add at most (one
    /// page table per 2 MiB, one directory per 1 GiB, one PDPT per 512 GiB
    /// touched).
    pub fn pages_needed(start: u64, end: u64) -> usize {
        let span = |shift: u32| ((end - 1) >> shift) - (start >> shift) + 1;
        (span(21) + span(30) + span(39)) as usize
    }

    /// Maps every page of `[start, start + len)` to itself with `perms`.
    /// `start` and `len` are page-aligned.
    pub fn map(&mut self, start: u64, len: u64, perms: Perms) -> Result<(), PagingError> {
        debug_assert!(start.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE));
        let mut leaf = P | A | D;
        if perms.user {
            leaf |= US;
        }
        if perms.write {
            leaf |= RW;
        }
        if !perms.exec {
            leaf |= NX;
        }
        let mut addr = start;
        while addr < start + len {
            let table = self.walk_create(addr)?;
            // Fill this page table up to its end or the range's end.
            let table_end = (addr | ((1 << 21) - 1)) + 1;
            let stop = table_end.min(start + len);
            while addr < stop {
                let slot = table + ((addr >> 12) & 0x1ff) * 8;
                if self.load(slot) & P != 0 {
                    return Err(PagingError::AlreadyMapped { addr });
                }
                self.store(slot, (addr & ADDR_MASK) | leaf);
                addr += PAGE_SIZE;
            }
        }
        Ok(())
    }

    /// Clears the leaf entries of `[start, start + len)` (pages not mapped
    /// are skipped; table pages stay allocated). The caller makes the
    /// change visible to vCPUs (deleting the memory slot makes KVM drop
    /// its shadow entries and flush).
    pub fn unmap(&mut self, start: u64, len: u64) {
        let mut addr = start;
        while addr < start + len {
            if let Some(slot) = self.leaf_slot(addr) {
                self.store(slot, 0);
            }
            addr += PAGE_SIZE;
        }
    }

    /// Address of the level-1 entry for `addr`, if its tables exist.
    fn leaf_slot(&self, addr: u64) -> Option<u64> {
        let mut table = self.root();
        for shift in [39u32, 30, 21] {
            let e = self.load(table + ((addr >> shift) & 0x1ff) * 8);
            if e & P == 0 {
                return None;
            }
            table = e & ADDR_MASK;
        }
        Some(table + ((addr >> 12) & 0x1ff) * 8)
    }

    /// The leaf rights of `addr`'s page, if mapped.
    pub fn translate(&self, addr: u64) -> Option<Perms> {
        let mut table = self.root();
        let mut nx = false;
        for shift in [39u32, 30, 21, 12] {
            let e = self.load(table + ((addr >> shift) & 0x1ff) * 8);
            if e & P == 0 {
                return None;
            }
            nx |= e & NX != 0;
            if shift == 12 {
                debug_assert_eq!(e & ADDR_MASK, addr & ADDR_MASK & !(PAGE_SIZE - 1));
                return Some(Perms {
                    user: e & US != 0,
                    write: e & RW != 0,
                    exec: !nx,
                });
            }
            table = e & ADDR_MASK;
        }
        None
    }

    /// The page table (level 1) for `addr`, creating missing levels.
    fn walk_create(&mut self, addr: u64) -> Result<u64, PagingError> {
        let mut table = self.root();
        for shift in [39u32, 30, 21] {
            let slot = table + ((addr >> shift) & 0x1ff) * 8;
            let e = self.load(slot);
            table = if e & P != 0 {
                e & ADDR_MASK
            } else {
                let next = self.alloc()?;
                self.store(slot, next | UPPER);
                next
            };
        }
        Ok(table)
    }

    /// A zeroed table page from the arena (fresh anonymous memory is zero
    /// and pages are never freed).
    fn alloc(&mut self) -> Result<u64, PagingError> {
        if self.used == self.pages {
            return Err(PagingError::Full { pages: self.pages });
        }
        let page = self.base() + self.used as u64 * PAGE_SIZE;
        self.used += 1;
        Ok(page)
    }

    fn offset(&self, addr: u64) -> usize {
        debug_assert!(addr >= self.base() && addr + 8 <= self.base() + self.arena_len());
        (addr - self.base()) as usize
    }

    fn load(&self, addr: u64) -> u64 {
        self.arena
            .as_volatile_slice()
            .load(self.offset(addr), Ordering::Acquire)
            .expect("entry address lies in the arena")
    }

    fn store(&self, addr: u64, value: u64) {
        self.arena
            .as_volatile_slice()
            .store(value, self.offset(addr), Ordering::Release)
            .expect("entry address lies in the arena")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX: Perms = Perms {
        user: true,
        write: false,
        exec: true,
    };
    const RW_DATA: Perms = Perms {
        user: true,
        write: true,
        exec: false,
    };

    #[test]
    fn mapped_pages_translate_with_their_rights_and_others_do_not() {
        let mut pt = PageTables::new(16).unwrap();
        pt.map(0x5555_0000_0000, 3 * PAGE_SIZE, RX).unwrap();
        pt.map(0x7fff_f000_0000, PAGE_SIZE, RW_DATA).unwrap();
        assert_eq!(pt.translate(0x5555_0000_2abc), Some(RX));
        assert_eq!(pt.translate(0x7fff_f000_0fff), Some(RW_DATA));
        assert_eq!(pt.translate(0x5555_0000_3000), None);
        assert_eq!(pt.translate(0x5554_ffff_f000), None);
        assert_eq!(pt.translate(0), None);
    }

    #[test]
    fn entries_are_identity_with_accessed_dirty_and_nx() {
        let mut pt = PageTables::new(8).unwrap();
        let va = 0x1234_5678_9000;
        pt.map(va, PAGE_SIZE, RW_DATA).unwrap();
        let mut table = pt.root();
        for shift in [39u32, 30, 21] {
            let e = pt.load(table + ((va >> shift) & 0x1ff) * 8);
            assert_eq!(e & !ADDR_MASK, UPPER, "upper levels allow all");
            table = e & ADDR_MASK;
            assert!(table >= pt.base() && table < pt.base() + pt.arena_len());
        }
        let leaf = pt.load(table + ((va >> 12) & 0x1ff) * 8);
        assert_eq!(leaf & ADDR_MASK, va);
        assert_eq!(leaf & !ADDR_MASK, P | RW | US | A | D | NX);
    }

    #[test]
    fn supervisor_pages_lack_the_user_bit() {
        let mut pt = PageTables::new(8).unwrap();
        let sup = Perms {
            user: false,
            write: false,
            exec: false,
        };
        pt.map(0x4000_0000, PAGE_SIZE, sup).unwrap();
        assert_eq!(pt.translate(0x4000_0000), Some(sup));
    }

    #[test]
    fn unmapped_pages_stop_translating_and_can_be_mapped_again() {
        let mut pt = PageTables::new(8).unwrap();
        pt.map(0x30_0000, 3 * PAGE_SIZE, RX).unwrap();
        pt.unmap(0x30_1000, PAGE_SIZE);
        pt.unmap(0x7000_0000, PAGE_SIZE);
        assert_eq!(pt.translate(0x30_0000), Some(RX));
        assert_eq!(pt.translate(0x30_1000), None);
        assert_eq!(pt.translate(0x30_2000), Some(RX));
        pt.map(0x30_1000, PAGE_SIZE, RW_DATA).unwrap();
        assert_eq!(pt.translate(0x30_1000), Some(RW_DATA));
    }

    #[test]
    fn mapping_a_page_twice_is_refused() {
        let mut pt = PageTables::new(8).unwrap();
        pt.map(0x10_0000, 2 * PAGE_SIZE, RX).unwrap();
        assert!(matches!(
            pt.map(0x10_1000, PAGE_SIZE, RX),
            Err(PagingError::AlreadyMapped { addr: 0x10_1000 })
        ));
    }

    #[test]
    fn full_arena_is_reported_not_overrun() {
        let mut pt = PageTables::new(4).unwrap();
        pt.map(0x20_0000, PAGE_SIZE, RX).unwrap();
        assert_eq!(pt.used_pages(), 4);
        assert!(matches!(
            pt.map(0x40_0000, PAGE_SIZE, RX),
            Err(PagingError::Full { pages: 4 })
        ));
    }

    #[test]
    fn pages_needed_bounds_what_map_uses() {
        let cases = [
            (0x1f_f000u64, 0x20_1000u64),
            (0x3fff_f000, 0x4000_1000),
            (0x7f_ffff_f000, 0x80_0000_1000),
            (0x1000, 0x0080_1000),
        ];
        for (start, end) in cases {
            let mut pt = PageTables::new(64).unwrap();
            pt.map(start, end - start, RX).unwrap();
            assert_eq!(pt.used_pages() - 1, PageTables::pages_needed(start, end));
        }
    }
}
