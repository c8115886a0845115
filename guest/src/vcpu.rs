//! A vCPU running host functions in guest ring 3.
//!
//! One vCPU per host thread: KVM ties a vCPU to the task that runs it
//! (moving it costs an RCU grace period per switch), and the guest uses the
//! thread's TLS, so [`Vcpu`] is created on the thread that runs it and is
//! not `Send`.
//!
//! Set-up (Intel SDM vol. 3A §9.8.5, "Initializing IA-32e mode", done
//! directly through `KVM_SET_SREGS` instead of by guest code): CR0 with
//! paging and write-protect, CR4 with PAE, SSE and XSAVE, EFER with long
//! mode, NX and SYSCALL; CR3 at the VM's identity page tables; CS/SS the
//! host's user selectors (0x33/0x2b) so the vCPU *starts* in ring 3 (ring
//! 0 is emulated ~2000× slower on kvm_pvm and runs only exception
//! handlers); FS base the thread's own TLS pointer; XCR0 the host's (the C
//! library picked AVX/AVX-512 routines for it); CPUID what KVM supports;
//! LSTAR the system-call stub.
//!
//! A call sets RIP to the function, RDI to the argument and RSP to the
//! vCPU's own stack, with the return stub's address as the return address.
//! The function returns into the stub, which stores RAX to the unbacked
//! return address: an MMIO exit whose data *is* the return value.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_dtable, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcr, kvm_xcrs, Msrs,
};
use kvm_ioctls::{Cap, SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, MmapRegion, VolatileMemory};

use crate::fault::{FaultKind, FaultReport, Touch};
use crate::paging::Perms;
use crate::region::{page_down, page_up, parse_maps, Access, Region, PAGE_SIZE};
use crate::sys;
use crate::syscall::{self, SyscallRequest, SyscallStats, Verdict};
use crate::vm::{Vm, VmError, EXIT_RETURN, EXIT_SYSCALL};
use crate::x86;

/// RFLAGS bits the guest may carry across a system call (arithmetic flags,
/// TF, IF, DF, AC); IOPL, NT and the rest are never taken from R11.
const RFLAGS_USER_MASK: u64 = 0x0004_0fd5;
/// Bytes above the thread pointer mapped for the thread control block
/// (glibc's `struct pthread` is about 2.3 KiB).
const TCB_BYTES: u64 = 4096;
/// Static TLS the C library may hand to objects loaded later (its surplus).
const TLS_SURPLUS: u64 = 4096;
/// Bytes kept free above the first return address: a callee may read its
/// caller's outgoing stack arguments there (glibc's variadic `syscall`
/// loads its seventh argument from `8(%rsp)` whether or not it was passed).
const CALLER_AREA: u64 = 64;

/// Errors in setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {op} failed: {source}")]
    Kvm {
        /// vCPU id.
        id: u64,
        /// The operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Mapping the vCPU's memory failed.
    #[error("vCPU {id}: {source}")]
    Map {
        /// vCPU id.
        id: u64,
        /// The mapping error.
        source: VmError,
    },
    /// Allocating its stack or tables failed.
    #[error("vCPU {id}: cannot allocate {what}: {source}")]
    Alloc {
        /// vCPU id.
        id: u64,
        /// What for.
        what: &'static str,
        /// The error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The thread's TLS could not be located.
    #[error("vCPU {id}: cannot find this thread's TLS: {source}")]
    Tls {
        /// vCPU id.
        id: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The stack size is unusable.
    #[error("vCPU stack of {0} bytes: give at least 16 KiB, a multiple of 4 KiB")]
    Stack(usize),
}

/// How a run ended other than by returning.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The guest faulted; the report says where and how.
    #[error("guest fault: {0}")]
    Fault(Box<FaultReport>),
    /// The guest called `exit` or `exit_group`.
    #[error("guest exited with status {0}")]
    Exited(i32),
    /// The guest panicked (caught at the entry trampoline).
    #[error("guest code panicked")]
    Panicked,
    /// The vCPU stopped for a reason the runtime does not serve.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The value to place on the guest stack does not fit.
    #[error("{0} bytes do not fit on the guest stack")]
    TooLarge(usize),
}

/// How to set up a vCPU.
#[derive(Clone, Debug)]
pub struct VcpuConfig {
    /// Bytes of guest stack (a guard page below it stays unmapped).
    pub stack_bytes: usize,
    /// Map the calling thread's TLS block (thread-locals, `errno`, the
    /// stack-protector canary at `fs:0x28`) and point FS at it.
    pub map_tls: bool,
}

impl Default for VcpuConfig {
    fn default() -> Self {
        VcpuConfig {
            stack_bytes: 256 * 1024,
            map_tls: true,
        }
    }
}

/// Counters of one vCPU.
#[derive(Clone, Debug, Default)]
pub struct VcpuStats {
    /// Calls made.
    pub calls: u64,
    /// VM exits seen (returns, system calls, faults).
    pub exits: u64,
    /// `KVM_RUN` interrupted by a signal and restarted.
    pub interrupted: u64,
    /// System calls.
    pub syscalls: SyscallStats,
}

/// Time spent setting the vCPU up.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuTimings {
    /// Memory: stack, tables, TLS mapping.
    pub memory: Duration,
    /// KVM: create, CPUID, XCRs, special registers, MSRs.
    pub registers: Duration,
}

/// A vCPU bound to the thread that created it.
pub struct Vcpu {
    vm: Arc<Vm>,
    fd: VcpuFd,
    id: u64,
    /// Stack and descriptor tables, mapped in the VM while the vCPU lives.
    mem: VcpuMemory,
    /// The special registers of a fresh vCPU in ring 3; restored before
    /// the next call after an exception left the vCPU in ring 0.
    sregs: kvm_sregs,
    in_ring0: bool,
    /// KVM copies the general registers to and from the `kvm_run` page
    /// (`KVM_CAP_SYNC_REGS`), saving two ioctls per system call.
    sync_regs: bool,
    stats: VcpuStats,
    timings: VcpuTimings,
    /// `!Send`: the vCPU and the TLS it maps belong to this thread.
    _thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("id", &self.id)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

const GDT_OFFSET: usize = 0;
const IDT_OFFSET: usize = 0x100;
const TSS_OFFSET: usize = 0x400;

impl Vcpu {
    pub(crate) fn new(vm: Arc<Vm>, id: u64, config: VcpuConfig) -> Result<Self, VcpuError> {
        if config.stack_bytes < 16 * 1024 || !config.stack_bytes.is_multiple_of(PAGE_SIZE as usize)
        {
            return Err(VcpuError::Stack(config.stack_bytes));
        }
        let t0 = Instant::now();
        let alloc = |what, bytes| {
            MmapRegion::build(
                None,
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
            .map_err(|source| VcpuError::Alloc { id, what, source })
        };
        let stack = alloc("stack", config.stack_bytes + PAGE_SIZE as usize)?;
        let tables = alloc("descriptor tables", 2 * PAGE_SIZE as usize)?;
        let tables_at = tables.as_ptr() as u64;
        let stack_base = stack.as_ptr() as u64;
        let ring0_top = tables_at + 2 * PAGE_SIZE;
        let slice = tables.as_volatile_slice();
        let put = |r: vm_memory::volatile_memory::Result<()>| {
            r.expect("descriptor tables lie in their page")
        };
        for (i, d) in x86::gdt(tables_at + TSS_OFFSET as u64).iter().enumerate() {
            put(slice.write_obj(*d, GDT_OFFSET + i * 8));
        }
        for v in 0..x86::EXCEPTION_VECTORS {
            let [lo, hi] = x86::interrupt_gate(vm.handler(v));
            put(slice.write_obj(lo, IDT_OFFSET + v * 16));
            put(slice.write_obj(hi, IDT_OFFSET + v * 16 + 8));
        }
        put(slice.write_slice(&x86::tss(ring0_top), TSS_OFFSET));

        let mut mem = VcpuMemory {
            vm: Arc::clone(&vm),
            pieces: Vec::new(),
            stack: Some(stack),
            tables: Some(tables),
        };
        let mut map = |region: Result<Region, _>, perms| {
            let region = region.map_err(|e| VcpuError::Map {
                id,
                source: VmError::Region(e),
            })?;
            let pieces = vm
                .map_internal(region, perms)
                .map_err(|source| VcpuError::Map { id, source })?;
            mem.pieces.extend(pieces);
            Ok::<(), VcpuError>(())
        };
        let sup = |write| Perms {
            user: false,
            write,
            exec: false,
        };
        map(
            Region::new(
                format!("vcpu {id} tables"),
                tables_at,
                PAGE_SIZE,
                Access::ReadOnly,
            ),
            sup(false),
        )?;
        map(
            Region::new(
                format!("vcpu {id} ring-0 stack"),
                tables_at + PAGE_SIZE,
                PAGE_SIZE,
                Access::ReadWrite,
            ),
            sup(true),
        )?;
        let stack_at = stack_base + PAGE_SIZE;
        map(
            Region::new(
                format!("vcpu {id} stack"),
                stack_at,
                config.stack_bytes as u64,
                Access::ReadWrite,
            ),
            Perms {
                user: true,
                write: true,
                exec: false,
            },
        )?;
        let fs = if config.map_tls {
            let fs = sys::fs_base().map_err(|source| VcpuError::Tls { id, source })?;
            let tls = tls_region(id, fs).map_err(|source| VcpuError::Tls { id, source })?;
            let pieces = vm
                .map_checked(tls)
                .map_err(|source| VcpuError::Map { id, source })?;
            mem.pieces.extend(pieces);
            fs
        } else {
            0
        };
        let memory = t0.elapsed();

        let t1 = Instant::now();
        let kvm_err = |op| move |source| VcpuError::Kvm { id, op, source };
        let fd = vm
            .fd()
            .create_vcpu(id)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(vm.cpuid())
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_xcr {
            xcr: 0,
            reserved: 0,
            value: vm.xcr0(),
        };
        fd.set_xcrs(&xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        let mut sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let flat = |selector: u16, code: bool| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_: if code { 0xb } else { 0x3 },
            present: 1,
            dpl: 3,
            db: u8::from(!code),
            s: 1,
            l: u8::from(code),
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = flat(x86::USER_CS, true);
        sregs.ss = flat(x86::USER_DS, false);
        sregs.ds = flat(x86::USER_DS, false);
        sregs.es = flat(x86::USER_DS, false);
        sregs.fs = kvm_segment {
            base: fs,
            ..flat(0, false)
        };
        sregs.gs = flat(0, false);
        sregs.tr = kvm_segment {
            base: tables_at + TSS_OFFSET as u64,
            limit: (x86::TSS_SIZE - 1) as u32,
            selector: x86::TSS_SEL,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.ldt = kvm_segment {
            type_: 0x2,
            unusable: 1,
            ..Default::default()
        };
        sregs.gdt = kvm_dtable {
            base: tables_at + GDT_OFFSET as u64,
            limit: (x86::GDT_ENTRIES * 8 - 1) as u16,
            padding: [0; 3],
        };
        sregs.idt = kvm_dtable {
            base: tables_at + IDT_OFFSET as u64,
            limit: (x86::EXCEPTION_VECTORS * 16 - 1) as u16,
            padding: [0; 3],
        };
        sregs.cr0 = x86::CR0;
        sregs.cr3 = vm.lock().tables.root();
        sregs.cr4 = vm.cr4();
        sregs.efer = x86::EFER;
        fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        let msr = |index, data| kvm_msr_entry {
            index,
            reserved: 0,
            data,
        };
        let msrs = Msrs::from_entries(&[
            msr(x86::MSR_LSTAR, vm.syscall_stub()),
            msr(
                x86::MSR_STAR,
                u64::from(x86::USER32_CS) << 48 | u64::from(x86::KERNEL_CS) << 32,
            ),
            msr(x86::MSR_SFMASK, 0),
        ])
        .expect("three entries fit an MSR list");
        let set = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Kvm {
                id,
                op: "KVM_SET_MSRS (LSTAR/STAR/SFMASK)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        let mut fd = fd;
        let sync_regs = vm.fd().check_extension(Cap::SyncRegs);
        if sync_regs {
            fd.set_sync_valid_reg(SyncReg::Register);
        }
        let registers = t1.elapsed();
        Ok(Vcpu {
            vm,
            fd,
            id,
            mem,
            sregs,
            in_ring0: false,
            sync_regs,
            stats: VcpuStats::default(),
            timings: VcpuTimings { memory, registers },
            _thread: PhantomData,
        })
    }

    /// The vCPU's id in its VM.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Counters.
    pub fn stats(&self) -> &VcpuStats {
        &self.stats
    }

    /// Set-up times.
    pub fn timings(&self) -> VcpuTimings {
        self.timings
    }

    /// The guest stack: `[start, top)`.
    pub fn stack_range(&self) -> (u64, u64) {
        let start = self.mem.stack().as_ptr() as u64 + PAGE_SIZE;
        (
            start,
            self.mem.stack().as_ptr() as u64 + self.mem.stack().len() as u64,
        )
    }

    /// Calls `f(arg)` on this vCPU in guest ring 3 and returns its result.
    ///
    /// # Safety
    ///
    /// Calling `f(arg)` directly on this thread must be sound. In the guest
    /// `f` runs on the vCPU's stack with this thread's TLS and sees only the
    /// VM's regions: a touch of anything else ends the run with
    /// [`RunError::Fault`] *in the middle of `f`*, like a thread stopped
    /// for good at that instruction. What `f` was changing in writable
    /// regions and in this thread's thread-locals (a C library cache, a
    /// `RefCell` borrow) may be left half done, and `f`'s stack frames are
    /// discarded; the caller must not rely on any of it afterwards (the
    /// dataplane ends).
    pub unsafe fn call(&mut self, f: extern "C" fn(u64) -> u64, arg: u64) -> Result<u64, RunError> {
        let (_, top) = self.stack_range();
        // SAFETY: forwarded to this function's contract.
        unsafe { self.enter(f as usize as u64, arg, top - CALLER_AREA) }
    }

    /// Reserves `size` bytes aligned to `align` at the top of the guest
    /// stack and returns their address; the caller writes its value there
    /// and passes [`Vcpu::enter`] the address as `below`.
    pub(crate) fn reserve_top(&self, size: usize, align: usize) -> Result<u64, RunError> {
        let (start, top) = self.stack_range();
        let align = align.max(16) as u64;
        let at = (top - CALLER_AREA)
            .checked_sub(size as u64)
            .map(|a| a & !(align - 1))
            .filter(|&a| a >= start + 4096)
            .ok_or(RunError::TooLarge(size))?;
        Ok(at)
    }

    /// Runs `entry(arg)` with the stack starting below `below` (which lies
    /// in the guest stack).
    ///
    /// # Safety
    ///
    /// As [`Vcpu::call`], for `entry` being an `extern "C" fn(u64) -> u64`.
    pub(crate) unsafe fn enter(
        &mut self,
        entry: u64,
        arg: u64,
        below: u64,
    ) -> Result<u64, RunError> {
        let (start, top) = self.stack_range();
        debug_assert!(below > start && below <= top);
        let rsp = (below & !15) - 8;
        self.mem
            .stack()
            .as_volatile_slice()
            .write_obj(self.vm.return_stub(), (rsp - start + PAGE_SIZE) as usize)
            .expect("return slot lies in the stack");
        if self.in_ring0 {
            self.fd
                .set_sregs(&self.sregs)
                .map_err(|source| RunError::Kvm {
                    op: "KVM_SET_SREGS",
                    source,
                })?;
            self.in_ring0 = false;
        }
        let regs = kvm_regs {
            rip: entry,
            rdi: arg,
            rsp,
            rflags: x86::RFLAGS_DEFAULT,
            ..Default::default()
        };
        self.store_regs(&regs)?;
        self.stats.calls += 1;
        self.run()
    }

    /// Faults in every page the guest may touch, on the host and in the
    /// vCPU's view (KVM's shadow page tables), so that the first touch
    /// costs nothing later. Returns the pages touched.
    pub fn prefault(&mut self) -> Result<u64, RunError> {
        let regions: Vec<Region> = self
            .vm
            .regions()
            .into_iter()
            .filter(|r| !r.name().starts_with("[vvar"))
            .collect();
        let mut pages = 0;
        for r in &regions {
            if self.vm.page_rights(r.start()).is_some_and(|p| p.user) {
                // Best effort on the host side: a region the kernel cannot
                // populate is faulted in by the guest's touch below.
                let _ = sys::populate(r);
            }
        }
        let arg = self.reserve_top(16, 16)?;
        for r in regions {
            if !self.vm.page_rights(r.start()).is_some_and(|p| p.user) {
                continue;
            }
            let slice = self.mem.stack().as_volatile_slice();
            let off = (arg - self.mem.stack().as_ptr() as u64) as usize;
            slice
                .write_obj(r.start(), off)
                .and_then(|()| slice.write_obj(r.len(), off + 8))
                .expect("argument slot lies in the stack");
            // SAFETY: `touch_pages` only reads the pages of a region
            // mapped readable in the guest, named by the two words just
            // written below `arg` on the guest stack.
            pages += unsafe { self.enter(sys::touch_pages as *const () as u64, arg, arg)? };
        }
        Ok(pages)
    }

    /// Runs the vCPU until the guest returns, exits or faults.
    fn run(&mut self) -> Result<u64, RunError> {
        let user_exit = self.vm.user_exit_page();
        let fault_page = self.vm.fault_page();
        loop {
            let exit = match self.fd.run() {
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    let mut v = [0u8; 8];
                    let n = data.len().min(8);
                    v[..n].copy_from_slice(&data[..n]);
                    Exit::Mmio {
                        addr,
                        value: u64::from_le_bytes(v),
                        write: true,
                    }
                }
                Ok(VcpuExit::MmioRead(addr, _)) => Exit::Mmio {
                    addr,
                    value: 0,
                    write: false,
                },
                Ok(VcpuExit::Shutdown) => Exit::Shutdown,
                Ok(other) => Exit::Other(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.stats.interrupted += 1;
                    continue;
                }
                Err(source) => {
                    return Err(RunError::Kvm {
                        op: "KVM_RUN",
                        source,
                    })
                }
            };
            self.stats.exits += 1;
            match exit {
                Exit::Mmio { addr, value, write } if write && addr == user_exit + EXIT_RETURN => {
                    return Ok(value)
                }
                Exit::Mmio { addr, write, .. } if write && addr == user_exit + EXIT_SYSCALL => {
                    self.syscall()?
                }
                Exit::Mmio { addr, write, .. }
                    if write
                        && addr >= fault_page
                        && addr < fault_page + x86::EXCEPTION_VECTORS as u64 =>
                {
                    return Err(self.exception((addr - fault_page) as u8));
                }
                Exit::Mmio { addr, write, .. } => {
                    return Err(self.unbacked(addr, write));
                }
                Exit::Shutdown => return Err(self.shutdown()),
                Exit::Other(what) => return Err(RunError::UnexpectedExit(what)),
            }
        }
    }

    /// Serves a system call: registers in, allow-list, result out, resume
    /// at RCX.
    fn syscall(&mut self) -> Result<(), RunError> {
        let mut regs = self.load_regs()?;
        let req = SyscallRequest {
            nr: regs.rax,
            args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
        };
        let decision = {
            let map = self.vm.lock();
            syscall::decide(self.vm.policy(), &map.regions, &req)
        };
        match syscall::carry_out(&req, decision, &mut self.stats.syscalls) {
            Verdict::Exit(status) => Err(RunError::Exited(status)),
            Verdict::Return(rax) => {
                regs.rax = rax as u64;
                regs.rip = regs.rcx;
                regs.rflags = (regs.r11 & RFLAGS_USER_MASK) | x86::RFLAGS_DEFAULT;
                self.store_regs(&regs)
            }
        }
    }

    /// The guest's registers at the last exit: from the shared `kvm_run`
    /// page when KVM syncs them there (no ioctl), else `KVM_GET_REGS`.
    fn load_regs(&mut self) -> Result<kvm_regs, RunError> {
        if self.sync_regs {
            return Ok(self.fd.sync_regs().regs);
        }
        self.fd.get_regs().map_err(|source| RunError::Kvm {
            op: "KVM_GET_REGS",
            source,
        })
    }

    /// Sets the registers the next `KVM_RUN` starts with: through the
    /// `kvm_run` page when KVM syncs them (no ioctl), else `KVM_SET_REGS`.
    fn store_regs(&mut self, regs: &kvm_regs) -> Result<(), RunError> {
        if self.sync_regs {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            return Ok(());
        }
        self.fd.set_regs(regs).map_err(|source| RunError::Kvm {
            op: "KVM_SET_REGS",
            source,
        })
    }

    /// The report of exception `vector`, from the frame the CPU pushed on
    /// the ring-0 stack and CR2.
    fn exception(&mut self, vector: u8) -> RunError {
        self.in_ring0 = true;
        let frame_top = self.mem.tables().len() - 8;
        let word = |i: usize| -> u64 {
            self.mem
                .tables()
                .as_volatile_slice()
                .load(frame_top - 8 * i, Ordering::Relaxed)
                .unwrap_or(0)
        };
        // Pushed, from the top: SS, RSP, RFLAGS, CS, RIP, [error code].
        let (rsp, rip) = (word(1), word(4));
        let error_code = x86::has_error_code(vector).then(|| word(5));
        let (address, touch) = if vector == 14 {
            let cr2 = self.fd.get_sregs().map(|s| s.cr2).unwrap_or(0);
            (Some(cr2), error_code.map(FaultReport::touch_from_pf_error))
        } else {
            (None, None)
        };
        self.report(
            FaultKind::Exception { vector, error_code },
            address,
            touch,
            rip,
            rsp,
        )
    }

    /// The report of an access to an address with page-table entries but
    /// no memory (an exit page touched other than by the stubs).
    fn unbacked(&mut self, addr: u64, write: bool) -> RunError {
        let regs = self.fd.get_regs().unwrap_or_default();
        let touch = if write { Touch::Write } else { Touch::Read };
        self.report(
            FaultKind::Unbacked,
            Some(addr),
            Some(touch),
            regs.rip,
            regs.rsp,
        )
    }

    fn shutdown(&mut self) -> RunError {
        self.in_ring0 = true;
        let regs = self.fd.get_regs().unwrap_or_default();
        self.report(FaultKind::Shutdown, None, None, regs.rip, regs.rsp)
    }

    fn report(
        &self,
        kind: FaultKind,
        address: Option<u64>,
        touch: Option<Touch>,
        rip: u64,
        rsp: u64,
    ) -> RunError {
        let (start, _) = self.stack_range();
        let map = self.vm.lock();
        RunError::Fault(Box::new(FaultReport {
            kind,
            address,
            touch,
            rip,
            rsp,
            region: address.and_then(|a| map.regions.find(a).cloned()),
            code_region: map.regions.find(rip).cloned(),
            stack_overflow: address.is_some_and(|a| a < start && a >= start - PAGE_SIZE),
        }))
    }
}

/// A vCPU's own memory and the regions it mapped into the VM (tables,
/// stacks, TLS). The regions are taken out of the VM when the vCPU goes,
/// before the memory is freed, so nothing freed (its stack, the thread's
/// TLS once the thread ends) stays reachable from the VM's other vCPUs.
struct VcpuMemory {
    vm: Arc<Vm>,
    pieces: Vec<Region>,
    /// [guard page][stack]; `None` only once leaked in `drop`.
    stack: Option<MmapRegion>,
    /// [GDT, IDT, TSS][ring-0 stack]; `None` only once leaked in `drop`.
    tables: Option<MmapRegion>,
}

impl VcpuMemory {
    fn stack(&self) -> &MmapRegion {
        self.stack.as_ref().expect("present until drop")
    }

    fn tables(&self) -> &MmapRegion {
        self.tables.as_ref().expect("present until drop")
    }
}

impl Drop for VcpuMemory {
    fn drop(&mut self) {
        if let Err(e) = self.vm.unmap_regions(&self.pieces) {
            // Freeing memory the guest can still reach would hand the next
            // allocation there to the VM: leak it instead.
            log::error!("cannot unmap a vCPU's memory from its VM ({e}); leaking it");
            std::mem::forget(self.stack.take());
            std::mem::forget(self.tables.take());
        }
    }
}

enum Exit {
    Mmio { addr: u64, value: u64, write: bool },
    Shutdown,
    Other(String),
}

/// The calling thread's TLS window: the static TLS below the thread
/// pointer and the thread control block above it, cut to the host mapping
/// that holds the thread pointer.
fn tls_region(id: u64, fs: u64) -> std::io::Result<Region> {
    let below = sys::static_tls_bytes() + TLS_SURPLUS;
    let text = std::fs::read_to_string("/proc/self/maps")?;
    let maps = parse_maps(&text).map_err(std::io::Error::other)?;
    let holder = maps
        .iter()
        .find(|e| e.start <= fs && fs < e.end)
        .ok_or_else(|| std::io::Error::other(format!("thread pointer {fs:#x} is not mapped")))?;
    let start = page_down(fs.saturating_sub(below)).max(holder.start);
    let end = page_up(fs + TCB_BYTES).min(holder.end);
    Region::new(
        format!("vcpu {id} TLS"),
        start,
        end - start,
        Access::ReadWrite,
    )
    .map_err(std::io::Error::other)
}
