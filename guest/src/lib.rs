//! KVM isolation runtime: host functions run on vCPUs in guest ring 3,
//! Dune-style, seeing only the memory they are given; system calls go
//! through an allow-list; any other touch ends the run with a report.
//!
//! This is the protection layer of the dataplane (IX, OSDI'14, §3–4, which
//! builds on Dune, OSDI'12): an elastic thread's loop runs inside a VM
//! whose memory is exactly what the dataplane owns, so a stray pointer in
//! the application or the stack cannot reach the control plane, another
//! dataplane, or the host-side runtime.
//!
//! # How it works
//!
//! - **Mapping** ([`vm`], [`paging`], [`region`]): guest-physical address
//!   == host-virtual address. Each [`Region`] the caller names becomes a KVM
//!   memory slot at its own address (read-only slots for code and
//!   read-only data) and the same pages in identity 4-level page tables
//!   (user pages, NX unless code, read-only unless writable). The tables
//!   live in a read-only slot mapped at no guest address. Nothing else is
//!   mapped. [`ProcessImage`] finds the program's code and read-only data
//!   (and, separately, its writable data) from `/proc/self/maps` and the
//!   loaded objects' program headers.
//! - **Ring 3** ([`vcpu`], [`x86`]): the vCPU is put straight into 64-bit
//!   ring 3 through `KVM_SET_SREGS` with the host's user selectors (CS
//!   0x33, SS 0x2b), the thread's FS base (its TLS), the host's XCR0 (so
//!   SSE/AVX/AVX-512 code the C library selected runs) and CPUID.
//!   [`Vcpu::call`] points RIP at an `extern "C" fn(u64) -> u64` of this
//!   program with a return address in a stub that stores RAX to an
//!   unbacked page: the MMIO exit carries the return value.
//! - **System calls** ([`syscall`]): on kvm_pvm a `syscall` in ring 3
//!   jumps to LSTAR and stays in ring 3; LSTAR is a stub that stores to
//!   the unbacked page. The VMM checks the number against the allow-list
//!   (write to allowed descriptors, clock_gettime, futex wait/wake,
//!   sched_yield; exit/exit_group end the run), checks every pointer
//!   argument against the guest's regions, runs it with `libc::syscall`,
//!   puts the result in RAX and resumes at RCX. Anything else gets
//!   `-EPERM` and is counted ([`SyscallStats`]).
//! - **Faults** ([`fault`]): an IDT in guest memory sends every exception
//!   to a one-instruction ring-0 handler (ring 0 is emulated ~2000× slower
//!   on kvm_pvm, fine for a fault path) that stores to a supervisor-only
//!   unbacked page whose offset is the vector. The VMM reads the frame
//!   the CPU pushed on the vCPU's ring-0 stack and CR2 and returns a
//!   [`FaultReport`]: address, instruction pointer, read/write/execute,
//!   and the mapping each lies in (or none; or the stack guard page).
//! - **Threads**: one vCPU per host thread ([`Vcpu`] is not `Send`), each
//!   with its own guest stack (a guard page below it), its thread's TLS,
//!   its own GDT/IDT/TSS and ring-0 stack. Regions can be added while
//!   vCPUs run (slot first, then page-table entries written atomically)
//!   and taken out ([`Vm::unmap`]: entries cleared, then the slot deleted,
//!   which makes KVM drop its shadow entries); a vCPU takes its stack,
//!   tables and TLS out of the VM when dropped.
//!
//! Deviation from IX: IX ran the dataplane in VMX non-root ring 0 and the
//! application in ring 3. On this machine class `/dev/kvm` is kvm_pvm
//! (software virtualization): ring 3 runs natively, ring 0 is emulated, so
//! the whole elastic thread (stack and application) runs in ring 3 and is
//! protected *from the host and everything else*, not from its own
//! application. On hosts with VT-x/SVM the dataplane could move to ring 0
//! with the application in ring 3 — a possible mode, not a promise.
//!
//! References: Intel SDM vol. 3A ch. 2–6 and 9 (system registers,
//! paging, interrupts, IA-32e initialisation); the KVM API
//! (`Documentation/virt/kvm/api.rst`: `KVM_SET_USER_MEMORY_REGION` with
//! `KVM_MEM_READONLY`, `KVM_RUN` and `KVM_EXIT_MMIO`,
//! `KVM_CAP_SYNC_REGS`); the Linux x86-64 system-call ABI.
//!
//! # Example
//!
//! ```
//! use guest::{ProcessImage, VcpuConfig, Vm, VmConfig};
//!
//! extern "C" fn double(x: u64) -> u64 {
//!     2 * x
//! }
//!
//! if !Vm::available() {
//!     eprintln!("SKIPPED: /dev/kvm not available");
//!     return;
//! }
//! let vm = Vm::new(VmConfig::default()).unwrap();
//! vm.map_all(ProcessImage::current().unwrap().code_and_rodata).unwrap();
//! let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
//! // SAFETY: `double` touches only registers.
//! assert_eq!(unsafe { vcpu.call(double, 21) }.unwrap(), 42);
//! ```
//!
//! A vCPU stays on the thread that made it:
//!
//! ```compile_fail
//! fn needs_send<T: Send>() {}
//! needs_send::<guest::Vcpu>();
//! ```
//!
//! # Integration with the dataplane (next step)
//!
//! [`GuestRuntime`] is the API the elastic threads will use:
//!
//! ```text
//! let rt = GuestRuntime::new(RuntimeConfig {
//!     regions: vec![arena, tx_pool_0, rx_pool_0 (read-only), rings…, stats page],
//!     map_image_data: true,
//!     ..RuntimeConfig::default()
//! })?;
//! // on each pinned elastic thread:
//! let mut g = rt.enter_thread()?;          // vCPU, stack, TLS; pre-faulted
//! match unsafe { g.run(move || elastic_loop(core)) } {
//!     Ok(()) => {}                          // the loop returned (stop command)
//!     Err(RunError::Fault(report)) => …     // end the dataplane, tell ixcpd `report`
//!     Err(e) => …
//! }
//! ```
//!
//! What an elastic thread needs mapped, and nothing more:
//!
//! - **code and read-only data** of the program and its libraries
//!   ([`ProcessImage::code_and_rodata`]), including `[vdso]`/`[vvar]`: the
//!   loop's clock read (`Instant::now`) then runs in the guest with no
//!   exit (tested: a 20 ms clock loop makes one exit, its return).
//! - **writable statics** ([`ProcessImage::data`]): Rust std and glibc
//!   keep state there (`memcpy`/`memset` tuning, `malloc`'s arena,
//!   `errno` handling of the syscall wrappers). Mapping them exposes the
//!   process's other statics too; in a dataplane process those are the
//!   dataplane's own, but the host-side runtime (the libix lifeline
//!   thread) should keep its state on its own heap, which is not mapped.
//! - **its stack**: [`VcpuConfig::stack_bytes`], with a guard page.
//! - **its TLS**: FS base is the host thread's own; the static TLS block
//!   and the thread control block around it are mapped read-write
//!   (thread-locals, the stack-protector canary at `fs:0x28`).
//! - **the heap arena**: everything the loop allocates must come from
//!   memory in a region. The plan: a global allocator over a per-dataplane
//!   arena (the pools, connection tables and event arrays are allocated
//!   at start-up, before the loop, and the loop allocates nothing in
//!   steady state — `dataplane/tests/steady_state_alloc.rs`). When the
//!   arena runs out the allocator asks the VMM (a third exit address, like
//!   the system-call stub), which `mmap`s more and maps it with
//!   [`Vm::map`] — tested: memory mapped while a vCPU lives becomes
//!   reachable at once. glibc `malloc` from the host heap (`[heap]`)
//!   must not be used inside: that region is not, and should not be,
//!   mapped.
//! - **pools and rings**: the memfd mappings (`dataplane::mem::SharedMem`)
//!   of the core's buffer pool, its NIC queue rings, the stats page and
//!   the command slots, read-write; memory a peer or the kernel writes
//!   and the dataplane only reads (a memif peer's region, an af_packet RX
//!   ring, a NIC's RX buffers) read-only. The current memif/af_packet
//!   backends copy each frame into the core's own pool on RX (the "DMA"),
//!   so that pool stays writable; a zero-copy backend's RX pool would be
//!   read-only.
//!
//! The loop must make no system call on the hot path: each costs a VM
//! exit (about 27 µs here, see below). Polling, the clock and the stats
//! page need none; an idle loop that wants to sleep can `futex`-wait
//! (allowed) on a word the control plane writes.
//!
//! # Measured costs (this machine class, kvm_pvm, noisy shared box)
//!
//! From `cargo test -p ix-guest --test kvm -- --nocapture` (the
//! `costs_of_each_step_are_measured`, `prefaulting_removes_first_touch_costs`
//! and `simd_memcpy_…` tests print them):
//!
//! | step | cost |
//! |---|---|
//! | VM create (`Vm::new`: VM fd, CPUID, stub pages, page-table arena) | 0.6–1.5 ms |
//! | map the image (29 regions, 3.4 MiB, code + rodata + data) | 0.35–1.7 ms |
//! | vCPU setup (stack, tables, TLS mapping; KVM create, CPUID, XCR0, sregs, MSRs) | 0.35–0.7 ms |
//! | first call of a fresh vCPU (first-touch faults of stack and code) | 100–165 µs |
//! | pre-fault of every mapped page | ≈ 4 µs per page (912 pages: 3.3–4 ms) |
//! | call round trip host → guest → host (steady) | ≈ 24.5 µs (34 µs with `KVM_SET_REGS` instead of sync regs) |
//! | system call forwarded (or denied) | ≈ 26–27 µs (43 µs with `KVM_GET/SET_REGS`) |
//! | first touch of a page in the guest without pre-fault | ≈ 3.5 µs (2048 pages: 7 ms; after pre-fault 40–100 µs) |
//! | AVX2 memcpy + hash of 8 × 4 MiB, guest / host | 0.92–1.00 |
//!
//! A VM exit (the return or a system call) is dominated by `KVM_RUN`
//! itself on kvm_pvm; register transfer goes through the `kvm_run` page
//! (`KVM_CAP_SYNC_REGS`) to avoid two more ioctls.
//!
//! # Not done yet
//!
//! - Stopping a guest that does not return (a kick with `immediate_exit`
//!   and a signal); the loop is expected to poll its command slot.
//! - The arena allocator and its grow request. ([`Vm::unmap`] takes whole
//!   regions out, by clearing their entries and deleting their slots;
//!   changing a mapping's rights in place is not supported.)
//! - Wiring into libix's elastic threads and `--isolation kvm|process`.

#![warn(missing_docs)]

pub mod fault;
pub mod paging;
pub mod region;
pub mod runtime;
mod sys;
pub mod syscall;
pub mod vcpu;
pub mod vm;
pub mod x86;

pub use fault::{FaultKind, FaultReport, Touch};
pub use paging::Perms;
pub use region::{Access, ProcessImage, Region, RegionError};
pub use runtime::{GuestRuntime, GuestThread, RuntimeConfig, RuntimeError};
pub use syscall::{SyscallPolicy, SyscallStats};
pub use vcpu::{RunError, Vcpu, VcpuConfig, VcpuError, VcpuStats, VcpuTimings};
pub use vm::{Vm, VmConfig, VmError};
