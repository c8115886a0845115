//! The runtime a dataplane uses: one VM per dataplane, one vCPU per elastic
//! thread, each thread's loop run as a Rust closure in guest ring 3.
//!
//! [`GuestRuntime::new`] builds the VM from the process image (code and
//! read-only data; optionally the writable data of the program and its
//! libraries) plus the regions the dataplane names (heap arena, pools,
//! rings). Each elastic thread then calls [`GuestRuntime::enter_thread`]
//! on itself: that maps the thread's TLS and a fresh guest stack, creates
//! its vCPU and pre-faults every mapped page, so the loop sees no
//! first-touch exits. [`GuestThread::run`] moves a closure onto the guest
//! stack and runs it there; its return value comes back the same way.

use std::mem::{align_of, size_of, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{addr_of, addr_of_mut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::region::{MapsError, ProcessImage, Region};
use crate::vcpu::{RunError, Vcpu, VcpuConfig, VcpuError};
use crate::vm::{Vm, VmConfig, VmError};

/// Errors in building the runtime or a thread's vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The process image could not be read.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Creating or mapping the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Setting up the thread's vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Pre-faulting the guest's memory failed.
    #[error("pre-faulting guest memory: {0}")]
    Prefault(#[source] RunError),
}

/// What the runtime maps.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// The dataplane's own memory: heap arena, buffer pools (RX pools
    /// read-only), NIC rings, stats page.
    pub regions: Vec<Region>,
    /// Also map the writable data (`.data`, `.bss`) of the program and its
    /// libraries. Code that calls into the C library (`malloc`, stdio, the
    /// `syscall` wrappers' `errno` handling, unwinding) needs it.
    pub map_image_data: bool,
    /// VM settings (system-call allow-list, page-table arena).
    pub vm: VmConfig,
    /// Per-thread settings (stack size).
    pub vcpu: VcpuConfig,
}

/// One dataplane's VM, shared by its elastic threads.
#[derive(Debug, Clone)]
pub struct GuestRuntime {
    vm: Arc<Vm>,
    vcpu: VcpuConfig,
}

impl GuestRuntime {
    /// Creates the VM and maps the image and `config.regions`.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let vm = Vm::new(config.vm)?;
        let image = ProcessImage::current()?;
        let mut regions = image.code_and_rodata;
        if config.map_image_data {
            regions.extend(image.data);
        }
        regions.extend(config.regions);
        vm.map_all(regions)?;
        Ok(GuestRuntime {
            vm,
            vcpu: config.vcpu,
        })
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Maps one more region (a pool handed over later, a grown heap).
    pub fn map(&self, region: Region) -> Result<(), RuntimeError> {
        Ok(self.vm.map(region)?)
    }

    /// Makes a vCPU for the calling thread, with its TLS and its own guest
    /// stack mapped, and pre-faults the guest's memory.
    pub fn enter_thread(&self) -> Result<GuestThread, RuntimeError> {
        let mut vcpu = self.vm.create_vcpu(self.vcpu.clone())?;
        let t0 = Instant::now();
        let prefaulted_pages = vcpu.prefault().map_err(RuntimeError::Prefault)?;
        Ok(GuestThread {
            vcpu,
            prefaulted_pages,
            prefault_time: t0.elapsed(),
        })
    }
}

/// An elastic thread's vCPU.
#[derive(Debug)]
pub struct GuestThread {
    vcpu: Vcpu,
    prefaulted_pages: u64,
    prefault_time: Duration,
}

const READY: u64 = 0;
const TAKEN: u64 = 1;
const DONE: u64 = 2;
const PANICKED: u64 = 3;

/// What [`GuestThread::run`] places on the guest stack.
#[repr(C)]
struct Frame<F, R> {
    state: u64,
    f: MaybeUninit<F>,
    out: MaybeUninit<R>,
}

/// Guest-side entry of [`GuestThread::run`]: takes the closure out of the
/// frame, runs it, stores its result (or notes a panic) in the frame.
extern "C" fn trampoline<F: FnOnce() -> R, R>(frame: u64) -> u64 {
    let frame = frame as *mut Frame<F, R>;
    // SAFETY: `run` wrote an initialised `Frame<F, R>` in state READY at
    // `frame` on this vCPU's stack (above our stack pointer) and reads it
    // only after this function returns; the closure is moved out exactly
    // once, and the state records that it was.
    let f = unsafe {
        addr_of_mut!((*frame).state).write_volatile(TAKEN);
        addr_of!((*frame).f).read().assume_init()
    };
    let state = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => {
            // SAFETY: as above; `out` is written once, then marked DONE.
            unsafe { addr_of_mut!((*frame).out).write(MaybeUninit::new(r)) };
            DONE
        }
        Err(payload) => {
            drop(payload);
            PANICKED
        }
    };
    // SAFETY: as above.
    unsafe { addr_of_mut!((*frame).state).write_volatile(state) };
    state
}

impl GuestThread {
    /// Runs `f` on this thread's vCPU in guest ring 3 and returns its
    /// result. The closure is moved onto the guest stack, so what it
    /// captures by value travels with it; what it borrows must lie in the
    /// VM's regions (a borrow of the host stack faults).
    ///
    /// A panic inside is caught at the guest entry and returned as
    /// [`RunError::Panicked`] (unwinding needs the image's writable data
    /// mapped). If the run ends before the closure started, it is dropped
    /// here; if it ends while the closure runs, the closure is leaked.
    ///
    /// # Safety
    ///
    /// As [`Vcpu::call`]: after a fault, exit or panic mid-way, whatever
    /// `f` was changing (in writable regions, in this thread's
    /// thread-locals) may be left half done; the caller must not rely on
    /// it.
    pub unsafe fn run<F, R>(&mut self, f: F) -> Result<R, RunError>
    where
        F: FnOnce() -> R,
    {
        let at = self
            .vcpu
            .reserve_top(size_of::<Frame<F, R>>(), align_of::<Frame<F, R>>())?;
        let frame = at as *mut Frame<F, R>;
        // SAFETY: `reserve_top` returned an address inside this vCPU's
        // stack (its own allocation, mapped read-write on the host) with
        // room and alignment for a `Frame<F, R>`; the vCPU is not running,
        // so nothing else uses that memory now.
        unsafe {
            frame.write(Frame {
                state: READY,
                f: MaybeUninit::new(f),
                out: MaybeUninit::uninit(),
            })
        };
        let entry = trampoline::<F, R> as *const () as u64;
        // SAFETY: forwarded to this function's contract; `trampoline`
        // reads only the frame just written.
        let result = unsafe { self.vcpu.enter(entry, at, at) };
        // SAFETY: the frame is still in place: the guest only changes its
        // state and `out`, through the same fields.
        let state = unsafe { addr_of!((*frame).state).read_volatile() };
        match (result, state) {
            // SAFETY: DONE means `out` holds the closure's result, written
            // once; it is read once here.
            (Ok(_), DONE) => Ok(unsafe { addr_of!((*frame).out).read().assume_init() }),
            (Ok(_), PANICKED) => Err(RunError::Panicked),
            (Ok(_), other) => Err(RunError::UnexpectedExit(format!(
                "guest returned with the closure in state {other}"
            ))),
            (Err(e), READY) => {
                // SAFETY: READY means the guest never took the closure: it
                // is still initialised in the frame and dropped once here.
                drop(unsafe { addr_of!((*frame).f).read().assume_init() });
                Err(e)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// The vCPU (counters, plain calls).
    pub fn vcpu(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }

    /// Pages pre-faulted when the thread entered.
    pub fn prefaulted_pages(&self) -> u64 {
        self.prefaulted_pages
    }

    /// Time pre-faulting took.
    pub fn prefault_time(&self) -> Duration {
        self.prefault_time
    }
}
