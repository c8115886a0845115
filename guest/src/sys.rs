//! The crate's unsafe code: thin wrappers over the KVM memory-slot ioctl,
//! raw system calls, and a few reads of CPU and C-library state. Everything
//! else in the crate is safe code over these.

use std::arch::asm;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;

use crate::region::Region;

/// Registers `region` as guest-physical memory slot `slot` at the same
/// address (guest-physical == host-virtual), read-only unless the region is
/// writable.
pub(crate) fn set_memslot(vm: &VmFd, slot: u32, region: &Region) -> Result<(), kvm_ioctls::Error> {
    let mem = kvm_userspace_memory_region {
        slot,
        flags: if region.access().writable() {
            0
        } else {
            KVM_MEM_READONLY
        },
        guest_phys_addr: region.start(),
        memory_size: region.len(),
        userspace_addr: region.start(),
    };
    // SAFETY: the ioctl's contract is that `userspace_addr..+memory_size`
    // is this process's memory for as long as the slot exists. The caller
    // (`Vm::map`) checked against /proc/self/maps that the range is mapped
    // with the rights the region asks for, and regions are never removed.
    // Should the host unmap it anyway, KVM follows through its MMU
    // notifier and the guest's next access fails KVM_RUN with EFAULT; the
    // host is never handed freed memory. Guest writes through the slot are
    // the writes of host code run by `Vcpu::call`, whose own contract
    // covers them.
    unsafe { vm.set_user_memory_region(mem) }
}

/// Deletes memory slot `slot` (which was at guest-physical `gpa`).
pub(crate) fn delete_memslot(vm: &VmFd, slot: u32, gpa: u64) -> Result<(), kvm_ioctls::Error> {
    let mem = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: 0,
        userspace_addr: 0,
    };
    // SAFETY: a size of 0 deletes the slot; KVM stops using the memory it
    // named (its shadow entries are zapped) and touches no host memory.
    unsafe { vm.set_user_memory_region(mem) }
}

/// The calling thread's FS base (its TLS pointer).
pub(crate) fn fs_base() -> std::io::Result<u64> {
    const ARCH_GET_FS: libc::c_long = 0x1003;
    let mut base: u64 = 0;
    // SAFETY: arch_prctl(ARCH_GET_FS, addr) writes one unsigned long to
    // `addr`, which points at a live, aligned u64 of this frame.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_FS,
            &mut base as *mut u64 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(base)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// XCR0 of the host: the state components its code may use (SSE, AVX,
/// AVX-512…).
pub(crate) fn host_xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it faults only when
    // CR4.OSXSAVE is clear, and every x86-64 Linux this crate supports
    // sets it (the AVX-using C library would not run otherwise). It
    // touches no memory.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Bytes of static TLS below the thread pointer: the sum of every loaded
/// object's `PT_TLS` segment, each rounded to its alignment.
pub(crate) fn static_tls_bytes() -> u64 {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        total: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `dl_phdr_info` whose
        // `dlpi_phdr` points at `dlpi_phnum` program headers, and `total`
        // is the `&mut u64` given below, live for the whole iteration.
        unsafe {
            let info = &*info;
            let total = &mut *(total as *mut u64);
            for i in 0..usize::from(info.dlpi_phnum) {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_TLS {
                    let align = ph.p_align.max(1);
                    *total += ph.p_memsz.div_ceil(align) * align;
                }
            }
        }
        0
    }
    let mut total: u64 = 0;
    // SAFETY: `each` matches the callback type and only reads what the
    // loader passes; `total` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut total as *mut u64 as *mut libc::c_void) };
    total
}

/// The writable `PT_LOAD` segments of every loaded object, as address
/// ranges `[start, end)` (end not rounded: `.bss` may end mid-page).
pub(crate) fn writable_segments() -> Vec<(u64, u64)> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        out: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `dl_phdr_info` whose
        // `dlpi_phdr` points at `dlpi_phnum` program headers, and `out` is
        // the `&mut Vec` given below, live for the whole iteration.
        unsafe {
            let info = &*info;
            let out = &mut *(out as *mut Vec<(u64, u64)>);
            for i in 0..usize::from(info.dlpi_phnum) {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 {
                    let start = info.dlpi_addr.wrapping_add(ph.p_vaddr);
                    out.push((start, start.wrapping_add(ph.p_memsz)));
                }
            }
        }
        0
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    // SAFETY: `each` matches the callback type and only reads what the
    // loader passes; `out` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(each),
            &mut out as *mut Vec<(u64, u64)> as *mut libc::c_void,
        )
    };
    out
}

/// Runs system call `nr` with `args` on this thread and returns the
/// kernel's answer: the result, or `-errno`.
///
/// # Safety
///
/// Any pointer among `args` must be valid for what system call `nr` does
/// with it (the allow-list checks each against the guest's regions first),
/// and the call must not break an invariant of this process that Rust code
/// relies on (no `munmap`, no `close` of a descriptor someone owns).
pub(crate) unsafe fn raw_syscall(nr: i64, args: [u64; 6]) -> i64 {
    // SAFETY: forwarded to the caller's contract above.
    let rc = unsafe {
        libc::syscall(
            nr as libc::c_long,
            args[0],
            args[1],
            args[2],
            args[3],
            args[4],
            args[5],
        )
    };
    if rc == -1 {
        -i64::from(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    } else {
        rc
    }
}

/// Faults in the host pages of `region` (writable ones for writing)
/// without changing their contents, so KVM finds them present when the
/// guest first touches them.
pub(crate) fn populate(region: &Region) -> std::io::Result<()> {
    const MADV_POPULATE_READ: libc::c_int = 22;
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let advice = if region.access().writable() {
        MADV_POPULATE_WRITE
    } else {
        MADV_POPULATE_READ
    };
    // SAFETY: MADV_POPULATE_* only faults pages in (as a read or a write
    // access that stores nothing would); it changes no data and no mapping.
    // The range is a page-aligned region of this process.
    let rc = unsafe {
        libc::madvise(
            region.start() as *mut libc::c_void,
            region.len() as usize,
            advice,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Guest code: reads one byte of every page of the range `arg` points at
/// (two u64: start, length), so the vCPU's first touch of each page happens
/// here and not on the hot path. Returns the number of pages read.
pub(crate) extern "C" fn touch_pages(arg: u64) -> u64 {
    // SAFETY: the VMM placed two u64 at `arg` on this vCPU's stack before
    // the call, and the range they name is a region mapped in the guest
    // (readable). Volatile reads: the bytes may be written concurrently by
    // other threads and the values are discarded.
    unsafe {
        let p = arg as *const u64;
        let (start, len) = (p.read(), p.add(1).read());
        let mut at = start;
        while at < start + len {
            std::ptr::read_volatile(at as *const u8);
            at += crate::region::PAGE_SIZE;
        }
        len / crate::region::PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_base_points_at_the_tcb_self_pointer() {
        let fs = fs_base().unwrap();
        let self_ptr: u64;
        // SAFETY: on x86-64 glibc the first word of the TCB (fs:0) is a
        // pointer to itself; reading it has no side effect.
        unsafe { asm!("mov {}, fs:0", out(reg) self_ptr, options(nostack, readonly)) };
        assert_eq!(fs, self_ptr);
    }

    #[test]
    fn xcr0_has_x87_and_sse() {
        assert_eq!(host_xcr0() & 3, 3);
    }

    #[test]
    fn static_tls_covers_this_thread_local() {
        thread_local!(static X: u64 = const { 7 });
        let fs = fs_base().unwrap();
        let addr = X.with(|x| x as *const u64 as u64);
        let tls = static_tls_bytes();
        assert!(tls > 0);
        assert!(addr < fs && addr >= fs - tls, "{addr:#x} {fs:#x} {tls}");
    }

    #[test]
    fn raw_syscall_returns_negative_errno() {
        // SAFETY: close(-1) touches no memory and no descriptor.
        let rc = unsafe { raw_syscall(libc::SYS_close, [u64::MAX, 0, 0, 0, 0, 0]) };
        assert_eq!(rc, -i64::from(libc::EBADF));
        // SAFETY: getpid has no arguments.
        let pid = unsafe { raw_syscall(libc::SYS_getpid, [0; 6]) };
        assert_eq!(pid, i64::from(std::process::id()));
    }
}
