//! The VM: one per dataplane, holding exactly the memory the caller names.
//!
//! Every [`Region`] becomes a KVM memory slot at guest-physical address ==
//! host-virtual address (read-only slots for code and read-only data) and
//! the same pages in the guest's identity page tables (user pages; NX
//! unless code; read-only unless writable). Nothing else is mapped, so a
//! guest access anywhere else is a page fault that ends the run with a
//! report (see [`crate::fault`]).
//!
//! Besides the caller's regions the VM maps, at addresses reserved in this
//! process so nothing else can land there:
//! - a page of user code stubs (read-only, executable): the return stub a
//!   called function returns into, and the LSTAR system-call stub;
//! - a page of ring-0 exception handlers (supervisor only);
//! - two *unbacked* pages (page-table entries but no memory slot), whose
//!   stores exit to the VMM: the user exit page (return value, system
//!   call) and the supervisor fault page (one address per exception
//!   vector, so ring-3 code cannot fake a fault);
//! - per vCPU: its GDT, IDT and TSS (supervisor, read-only) and a ring-0
//!   stack for exception frames (supervisor), see [`crate::vcpu`].
//!
//! The page tables live in an arena of their own that is a read-only slot
//! and mapped at no virtual address.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Bytes, MmapRegion, VolatileMemory};

use crate::paging::{PageTables, PagingError, Perms};
use crate::region::{
    parse_maps, Access, MapsEntry, MapsError, Region, RegionError, RegionTable, PAGE_SIZE,
};
use crate::sys;
use crate::syscall::SyscallPolicy;
use crate::vcpu::{Vcpu, VcpuConfig, VcpuError};
use crate::x86;

/// Offset of the return exit in the user exit page.
pub(crate) const EXIT_RETURN: u64 = 0;
/// Offset of the system-call exit in the user exit page.
pub(crate) const EXIT_SYSCALL: u64 = 8;
/// Offset of the return stub in the stub page.
const STUB_RETURN: u64 = 0;
/// Offset of the system-call stub in the stub page.
const STUB_SYSCALL: u64 = 64;

/// Errors in creating a VM or mapping memory into it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} — is the kvm module loaded and are you in group kvm?")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks a capability the runtime needs.
    #[error("KVM lacks {0}; this runtime needs read-only memory slots and user memory")]
    MissingCapability(&'static str),
    /// A KVM ioctl on the VM failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Allocating VMM-owned memory failed.
    #[error("cannot allocate {what}: {source}")]
    Alloc {
        /// What it was for.
        what: &'static str,
        /// The mmap error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Page-table arena problem.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// A region description was invalid.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// /proc/self/maps could not be read.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// A region is not (wholly) this process's memory with the rights it
    /// asks for.
    #[error(
        "region {region} is not mapped in this process with {needed} access at {addr:#x} — \
         map only memory the process owns, writable regions from writable mappings"
    )]
    NotHostMemory {
        /// The region.
        region: Region,
        /// First address that failed the check.
        addr: u64,
        /// What the check needed.
        needed: &'static str,
    },
    /// KVM refused a memory slot.
    #[error("cannot add memory slot {slot} for {region}: {source}")]
    Memslot {
        /// Slot number.
        slot: u32,
        /// The region (or piece of it).
        region: Region,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The range holds the runtime's own stub or handler pages.
    #[error("{start:#x}+{len:#x} holds the runtime's stub pages, which stay mapped")]
    RuntimePages {
        /// Start of the range asked for.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// All KVM memory slots are in use.
    #[error("all {max} KVM memory slots are used — merge adjacent regions")]
    OutOfSlots {
        /// Slots KVM offers.
        max: u32,
    },
}

/// How to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Page-table pages to reserve (address space only until used); each
    /// page table maps 2 MiB, so the default 8192 maps up to ~16 GiB.
    pub page_table_pages: usize,
    /// What system calls the guest may make.
    pub syscalls: SyscallPolicy,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            page_table_pages: 8192,
            syscalls: SyscallPolicy::default(),
        }
    }
}

pub(crate) struct MapState {
    pub(crate) tables: PageTables,
    pub(crate) regions: RegionTable,
    /// Memory slot of each mapped region, by start address.
    slots: BTreeMap<u64, u32>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

/// A VM whose memory is exactly the regions mapped into it. Shared between
/// the threads that run its vCPUs (`Arc<Vm>`).
pub struct Vm {
    fd: VmFd,
    map: Mutex<MapState>,
    max_slots: u32,
    /// Reserved, never-backed pages: [user exit page][fault page].
    exits: MmapRegion,
    /// [user stub page][ring-0 handler page].
    code: MmapRegion,
    cpuid: CpuId,
    xcr0: u64,
    cr4: u64,
    policy: SyscallPolicy,
    next_vcpu: AtomicU64,
    created_in: Duration,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("regions", &self.regions().len())
            .field(
                "user_exit_page",
                &format_args!("{:#x}", self.user_exit_page()),
            )
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Whether `/dev/kvm` can be opened here.
    pub fn available() -> bool {
        Kvm::new().is_ok()
    }

    /// Creates a VM with nothing of the caller's mapped yet (only the
    /// runtime's own stub, handler and exit pages).
    pub fn new(config: VmConfig) -> Result<Arc<Vm>, VmError> {
        let t0 = Instant::now();
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ReadonlyMem, "KVM_CAP_READONLY_MEM"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(|source| VmError::Kvm {
            op: "KVM_CREATE_VM",
            source,
        })?;
        let max_slots = u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Kvm {
                op: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let (xcr0, cr4) = cpu_features(&cpuid);
        let exits = MmapRegion::build(
            None,
            2 * PAGE_SIZE as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|source| VmError::Alloc {
            what: "exit pages",
            source,
        })?;
        let code = MmapRegion::new(2 * PAGE_SIZE as usize).map_err(|source| VmError::Alloc {
            what: "stub pages",
            source,
        })?;
        let vm = Vm {
            fd,
            map: Mutex::new(MapState {
                tables: PageTables::new(config.page_table_pages)?,
                regions: RegionTable::new(),
                slots: BTreeMap::new(),
                free_slots: Vec::new(),
                next_slot: 0,
            }),
            max_slots,
            exits,
            code,
            cpuid,
            xcr0,
            cr4,
            policy: config.syscalls,
            next_vcpu: AtomicU64::new(0),
            created_in: Duration::ZERO,
        };
        vm.install_runtime_pages()?;
        Ok(Arc::new(Vm {
            created_in: t0.elapsed(),
            ..vm
        }))
    }

    /// Writes the stubs and handlers and maps the runtime's pages.
    fn install_runtime_pages(&self) -> Result<(), VmError> {
        let user_exit = self.user_exit_page();
        let fault_page = user_exit + PAGE_SIZE;
        let stubs = self.code.as_ptr() as u64;
        let handlers = stubs + PAGE_SIZE;
        let mem = |r: vm_memory::volatile_memory::Result<()>| {
            r.expect("stub offsets lie in the two code pages")
        };
        mem(self.code.as_volatile_slice().write_slice(
            &x86::store_rax_stub(user_exit + EXIT_RETURN),
            STUB_RETURN as usize,
        ));
        mem(self.code.as_volatile_slice().write_slice(
            &x86::store_rax_stub(user_exit + EXIT_SYSCALL),
            STUB_SYSCALL as usize,
        ));
        for v in 0..x86::EXCEPTION_VECTORS {
            mem(self.code.as_volatile_slice().write_slice(
                &x86::store_al_stub(fault_page + v as u64),
                PAGE_SIZE as usize + v * x86::HANDLER_STRIDE,
            ));
        }
        let mut map = self.lock();
        let arena = Region::new(
            "guest page tables",
            map.tables.base(),
            map.tables.arena_len(),
            Access::ReadOnly,
        )?;
        self.add_slot(&mut map, &arena)?;
        let user_rx = Perms {
            user: true,
            write: false,
            exec: true,
        };
        let sup_rx = Perms {
            user: false,
            ..user_rx
        };
        let stub_page = Region::new("guest stubs", stubs, PAGE_SIZE, Access::Code)?;
        self.map_locked(&mut map, stub_page, user_rx)?;
        let handler_page = Region::new("exception handlers", handlers, PAGE_SIZE, Access::Code)?;
        self.map_locked(&mut map, handler_page, sup_rx)?;
        // The exit pages get page-table entries but no slot: stores there
        // are MMIO exits.
        map.tables.map(
            user_exit,
            PAGE_SIZE,
            Perms {
                user: true,
                write: true,
                exec: false,
            },
        )?;
        map.tables.map(
            fault_page,
            PAGE_SIZE,
            Perms {
                user: false,
                write: true,
                exec: false,
            },
        )?;
        Ok(())
    }

    /// Maps `region` for the guest (ring 3). Parts already mapped keep
    /// their first mapping; the rest must be this process's memory with the
    /// rights the region asks for (checked against /proc/self/maps).
    ///
    /// The memory must stay mapped in the process while it is mapped in the
    /// VM: [`Vm::unmap`] it before freeing it. KVM follows the host's page
    /// tables, so if the range were unmapped and something else later
    /// mapped at the same address, the guest would see that instead.
    pub fn map(&self, region: Region) -> Result<(), VmError> {
        self.map_all([region])
    }

    /// Maps several regions, reading /proc/self/maps once.
    pub fn map_all(&self, regions: impl IntoIterator<Item = Region>) -> Result<(), VmError> {
        let text = std::fs::read_to_string("/proc/self/maps").map_err(MapsError::from)?;
        let host = parse_maps(&text)?;
        let mut map = self.lock();
        for region in regions {
            check_host_memory(&host, &region)?;
            let perms = Perms {
                user: true,
                write: region.access().writable(),
                exec: region.access().executable(),
            };
            self.map_locked(&mut map, region, perms)?;
        }
        Ok(())
    }

    /// Maps a region of VMM-owned memory with explicit page rights
    /// (supervisor pages of a vCPU). Returns the pieces newly mapped.
    pub(crate) fn map_internal(
        &self,
        region: Region,
        perms: Perms,
    ) -> Result<Vec<Region>, VmError> {
        let mut map = self.lock();
        self.map_locked(&mut map, region, perms)
    }

    /// [`Vm::map`] returning the pieces newly mapped (for a vCPU to take
    /// back when it goes).
    pub(crate) fn map_checked(&self, region: Region) -> Result<Vec<Region>, VmError> {
        let text = std::fs::read_to_string("/proc/self/maps").map_err(MapsError::from)?;
        check_host_memory(&parse_maps(&text)?, &region)?;
        let perms = Perms {
            user: true,
            write: region.access().writable(),
            exec: region.access().executable(),
        };
        let mut map = self.lock();
        self.map_locked(&mut map, region, perms)
    }

    fn map_locked(
        &self,
        map: &mut MapState,
        region: Region,
        perms: Perms,
    ) -> Result<Vec<Region>, VmError> {
        let pieces = map.regions.uncovered(&region);
        for piece in &pieces {
            // Slot first: a vCPU racing on the new entries must find memory.
            let slot = self.add_slot(map, piece)?;
            map.tables.map(piece.start(), piece.len(), perms)?;
            map.slots.insert(piece.start(), slot);
            map.regions.insert(piece.clone());
        }
        Ok(pieces)
    }

    fn add_slot(&self, map: &mut MapState, region: &Region) -> Result<u32, VmError> {
        let slot = match map.free_slots.last() {
            Some(&slot) => slot,
            None if map.next_slot < self.max_slots => map.next_slot,
            None => {
                return Err(VmError::OutOfSlots {
                    max: self.max_slots,
                })
            }
        };
        sys::set_memslot(&self.fd, slot, region).map_err(|source| VmError::Memslot {
            slot,
            region: region.clone(),
            source,
        })?;
        if map.free_slots.last() == Some(&slot) {
            map.free_slots.pop();
        } else {
            map.next_slot += 1;
        }
        Ok(slot)
    }

    /// Takes every mapped region lying wholly in `[start, start + len)` out
    /// of the guest: its page-table entries are cleared, then its memory
    /// slot deleted (KVM drops its shadow entries and flushes the vCPUs'
    /// TLBs), so a later guest touch faults. The host memory itself is
    /// left alone. The runtime's own pages cannot be unmapped.
    pub fn unmap(&self, start: u64, len: u64) -> Result<Vec<Region>, VmError> {
        let runtime = self.code.as_ptr() as u64..self.code.as_ptr() as u64 + 2 * PAGE_SIZE;
        if start < runtime.end && start.saturating_add(len) > runtime.start {
            return Err(VmError::RuntimePages { start, len });
        }
        let mut map = self.lock();
        let inside: Vec<Region> = map
            .regions
            .regions()
            .iter()
            .filter(|r| r.start() >= start && r.end() <= start.saturating_add(len))
            .cloned()
            .collect();
        for r in &inside {
            self.unmap_locked(&mut map, r)?;
        }
        Ok(inside)
    }

    /// Unmaps regions this runtime mapped itself (a vCPU's pages).
    pub(crate) fn unmap_regions(&self, regions: &[Region]) -> Result<(), VmError> {
        let mut map = self.lock();
        for r in regions {
            self.unmap_locked(&mut map, r)?;
        }
        Ok(())
    }

    fn unmap_locked(&self, map: &mut MapState, region: &Region) -> Result<(), VmError> {
        let Some(slot) = map.slots.remove(&region.start()) else {
            return Ok(());
        };
        map.tables.unmap(region.start(), region.len());
        sys::delete_memslot(&self.fd, slot, region.start()).map_err(|source| VmError::Memslot {
            slot,
            region: region.clone(),
            source,
        })?;
        map.regions.remove(region.start());
        map.free_slots.push(slot);
        Ok(())
    }

    /// The regions mapped, sorted by address (the runtime's own pages
    /// included).
    pub fn regions(&self) -> Vec<Region> {
        self.lock().regions.regions().to_vec()
    }

    /// The mapped region holding `addr`, if any.
    pub fn region_at(&self, addr: u64) -> Option<Region> {
        self.lock().regions.find(addr).cloned()
    }

    /// The page-table rights of `addr`'s page as the guest sees them, if
    /// the page is mapped.
    pub fn page_rights(&self, addr: u64) -> Option<Perms> {
        self.lock().tables.translate(addr)
    }

    /// The page-table arena `(start, len)`: a read-only memory slot mapped
    /// at no guest virtual address (for audits and tests).
    pub fn page_table_arena(&self) -> (u64, u64) {
        let map = self.lock();
        (map.tables.base(), map.tables.arena_len())
    }

    /// Creates a vCPU for the calling thread (see [`Vcpu`]).
    pub fn create_vcpu(self: &Arc<Self>, config: VcpuConfig) -> Result<Vcpu, VcpuError> {
        let id = self.next_vcpu.fetch_add(1, Ordering::Relaxed);
        Vcpu::new(Arc::clone(self), id, config)
    }

    /// How long [`Vm::new`] took.
    pub fn created_in(&self) -> Duration {
        self.created_in
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, MapState> {
        // A panic while holding the lock cannot leave the table half
        // updated in a way later readers misinterpret (entries are added
        // whole), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub(crate) fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    pub(crate) fn xcr0(&self) -> u64 {
        self.xcr0
    }

    pub(crate) fn cr4(&self) -> u64 {
        self.cr4
    }

    pub(crate) fn policy(&self) -> &SyscallPolicy {
        &self.policy
    }

    pub(crate) fn user_exit_page(&self) -> u64 {
        self.exits.as_ptr() as u64
    }

    pub(crate) fn fault_page(&self) -> u64 {
        self.user_exit_page() + PAGE_SIZE
    }

    pub(crate) fn return_stub(&self) -> u64 {
        self.code.as_ptr() as u64 + STUB_RETURN
    }

    pub(crate) fn syscall_stub(&self) -> u64 {
        self.code.as_ptr() as u64 + STUB_SYSCALL
    }

    pub(crate) fn handler(&self, vector: usize) -> u64 {
        self.code.as_ptr() as u64 + PAGE_SIZE + (vector * x86::HANDLER_STRIDE) as u64
    }
}

/// XCR0 the guest gets (the host's, limited to what KVM supports: host code
/// picked its SSE/AVX/AVX-512 routines from the host's XCR0) and the CR4
/// bits to match.
fn cpu_features(cpuid: &CpuId) -> (u64, u64) {
    let supported = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map(|e| u64::from(e.edx) << 32 | u64::from(e.eax))
        .unwrap_or(3);
    let fsgsbase = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 7 && e.index == 0)
        .is_some_and(|e| e.ebx & 1 != 0);
    let mut cr4 = x86::CR4_PAE | x86::CR4_OSFXSR | x86::CR4_OSXMMEXCPT | x86::CR4_OSXSAVE;
    if fsgsbase {
        cr4 |= x86::CR4_FSGSBASE;
    }
    (sys::host_xcr0() & supported, cr4)
}

/// Checks that every page of `region` is in a host mapping that is
/// readable (and writable when the region is).
fn check_host_memory(host: &[MapsEntry], region: &Region) -> Result<(), VmError> {
    let write = region.access().writable();
    let mut at = region.start();
    while at < region.end() {
        let i = host.partition_point(|e| e.end <= at);
        match host.get(i) {
            Some(e) if e.start <= at && e.read && (e.write || !write) => at = e.end,
            _ => {
                return Err(VmError::NotHostMemory {
                    region: region.clone(),
                    addr: at,
                    needed: if write { "read-write" } else { "read" },
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64, read: bool, write: bool) -> MapsEntry {
        MapsEntry {
            start,
            end,
            read,
            write,
            exec: false,
            shared: false,
            offset: 0,
            path: String::new(),
        }
    }

    #[test]
    fn host_check_accepts_covered_ranges_across_entries() {
        let host = [
            entry(0x1000, 0x3000, true, true),
            entry(0x3000, 0x5000, true, true),
        ];
        let r = Region::new("a", 0x2000, 0x2000, Access::ReadWrite).unwrap();
        assert!(check_host_memory(&host, &r).is_ok());
    }

    #[test]
    fn host_check_refuses_holes_and_missing_rights() {
        let host = [
            entry(0x1000, 0x2000, true, false),
            entry(0x3000, 0x4000, false, false),
        ];
        let ro = Region::new("a", 0x1000, 0x1000, Access::ReadOnly).unwrap();
        assert!(check_host_memory(&host, &ro).is_ok());
        let rw = Region::new("a", 0x1000, 0x1000, Access::ReadWrite).unwrap();
        assert!(matches!(
            check_host_memory(&host, &rw),
            Err(VmError::NotHostMemory { addr: 0x1000, .. })
        ));
        let hole = Region::new("a", 0x1000, 0x2000, Access::ReadOnly).unwrap();
        assert!(matches!(
            check_host_memory(&host, &hole),
            Err(VmError::NotHostMemory { addr: 0x2000, .. })
        ));
        let guard = Region::new("a", 0x3000, 0x1000, Access::ReadOnly).unwrap();
        assert!(matches!(
            check_host_memory(&host, &guard),
            Err(VmError::NotHostMemory { addr: 0x3000, .. })
        ));
    }
}
