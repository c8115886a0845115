//! The runtime on a real /dev/kvm: mapping, calls in ring 3, SIMD code,
//! system calls through the allow-list, fault reports, two vCPUs at once,
//! closures, and the costs of each step (printed, not asserted).

use std::cell::Cell;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use guest::{
    Access, FaultKind, FaultReport, GuestRuntime, Perms, ProcessImage, Region, RunError,
    RuntimeConfig, SyscallPolicy, Touch, VcpuConfig, Vm, VmConfig, VmError,
};
use vm_memory::{Bytes, MmapRegion, VolatileMemory};

fn kvm() -> bool {
    if Vm::available() {
        true
    } else {
        eprintln!("SKIPPED: /dev/kvm not available");
        false
    }
}

/// A VM with this program's code and read-only data mapped.
fn image_vm(policy: SyscallPolicy, with_data: bool) -> Arc<Vm> {
    let vm = Vm::new(VmConfig {
        syscalls: policy,
        ..VmConfig::default()
    })
    .unwrap();
    let img = ProcessImage::current().unwrap();
    vm.map_all(img.code_and_rodata).unwrap();
    if with_data {
        vm.map_all(img.data).unwrap();
    }
    vm
}

fn pages(n: usize) -> MmapRegion {
    MmapRegion::new(n * 4096).unwrap()
}

fn region(name: &str, mem: &MmapRegion, access: Access) -> Region {
    Region::from_ptr(name, mem.as_ptr(), mem.len(), access).unwrap()
}

fn fault(r: Result<u64, RunError>) -> FaultReport {
    match r {
        Err(RunError::Fault(report)) => *report,
        other => panic!("expected a fault, got {other:?}"),
    }
}

extern "C" fn add_one(x: u64) -> u64 {
    x.wrapping_add(1)
}

extern "C" fn read_u64(addr: u64) -> u64 {
    // SAFETY: none needed for the host: in the guest a bad address faults.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

extern "C" fn write_u64(addr: u64) -> u64 {
    // SAFETY: as read_u64.
    unsafe { std::ptr::write_volatile(addr as *mut u64, 0xdead_beef) };
    1
}

#[test]
fn vm_maps_exactly_the_named_regions_with_their_rights() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let arena = pages(16);
    let rx = pages(4);
    vm.map_all([
        region("heap arena", &arena, Access::ReadWrite),
        region("rx pool", &rx, Access::ReadOnly),
    ])
    .unwrap();
    let rx_perms = Perms {
        user: true,
        write: false,
        exec: false,
    };
    let code = add_one as *const () as u64;
    assert_eq!(
        vm.page_rights(code),
        Some(Perms {
            user: true,
            write: false,
            exec: true
        })
    );
    assert_eq!(vm.region_at(code).map(|r| r.access()), Some(Access::Code));
    static RODATA: [u8; 16] = *b"read-only data!!";
    assert_eq!(vm.page_rights(RODATA.as_ptr() as u64), Some(rx_perms));
    assert_eq!(
        vm.page_rights(arena.as_ptr() as u64 + 5 * 4096),
        Some(Perms {
            user: true,
            write: true,
            exec: false
        })
    );
    assert_eq!(
        vm.page_rights(rx.as_ptr() as u64 + 3 * 4096),
        Some(rx_perms)
    );
    let heap = Box::new([0u8; 64]);
    assert_eq!(vm.page_rights(heap.as_ptr() as u64), None);
    assert_eq!(vm.region_at(heap.as_ptr() as u64), None);
    let local = 0u64;
    assert_eq!(vm.page_rights(&local as *const u64 as u64), None);
    let (tables, _) = vm.page_table_arena();
    assert_eq!(vm.page_rights(tables), None, "page tables are not mapped");

    let image = ProcessImage::current().unwrap();
    for r in vm.regions() {
        let named =
            ["heap arena", "rx pool", "guest stubs", "exception handlers"].contains(&r.name());
        let from_image = image.code_and_rodata.iter().any(|i| i.name() == r.name());
        assert!(named || from_image, "unexpected mapping {r}");
    }
}

#[test]
fn regions_that_are_not_host_memory_with_those_rights_are_refused() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let guard = MmapRegion::build(
        None,
        4096,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
    )
    .unwrap();
    assert!(matches!(
        vm.map(region("guard", &guard, Access::ReadOnly)),
        Err(VmError::NotHostMemory { .. })
    ));
    let code = vm.region_at(add_one as *const () as u64).unwrap();
    let writable_code = Region::new("code", code.start(), 4096, Access::ReadWrite).unwrap();
    let fresh = Vm::new(VmConfig::default()).unwrap();
    assert!(matches!(
        fresh.map(writable_code),
        Err(VmError::NotHostMemory { .. })
    ));
}

#[test]
fn call_returns_the_functions_value() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    for x in [0, 41, u64::MAX] {
        // SAFETY: add_one touches nothing but registers.
        assert_eq!(unsafe { vcpu.call(add_one, x) }.unwrap(), x.wrapping_add(1));
    }
    assert_eq!(vcpu.stats().calls, 3);
    assert_eq!(vcpu.stats().exits, 3, "one exit per call: the return");
}

/// Input of the hashing benchmark: copy `len` bytes from `src` to `dst`,
/// hash `dst`, `rounds` times.
#[repr(C)]
struct HashJob {
    src: u64,
    dst: u64,
    len: u64,
    rounds: u64,
    avx2: u64,
}

fn hash_scalar(data: &[u8]) -> u64 {
    let mut acc = [0x9e37_79b9_7f4a_7c15u64; 4];
    for chunk in data.chunks_exact(32) {
        for (lane, word) in chunk.chunks_exact(8).enumerate() {
            let x = acc[lane] ^ u64::from_le_bytes(word.try_into().unwrap());
            acc[lane] = (x & 0xffff_ffff)
                .wrapping_mul(0x9e37_79b1)
                .wrapping_add(x >> 32);
        }
    }
    acc.iter().fold(0, |h, a| h.rotate_left(17) ^ a)
}

/// The same hash as `hash_scalar`, four lanes in one AVX2 register.
#[target_feature(enable = "avx2")]
fn hash_avx2(data: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_set1_epi64x(0x9e37_79b9_7f4a_7c15u64 as i64);
    let prime = _mm256_set1_epi64x(0x9e37_79b1);
    for chunk in data.chunks_exact(32) {
        // SAFETY: the chunk has 32 readable bytes; loadu needs no alignment.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        let x = _mm256_xor_si256(acc, v);
        acc = _mm256_add_epi64(_mm256_mul_epu32(x, prime), _mm256_srli_epi64(x, 32));
    }
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` has 32 writable bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
    lanes.iter().fold(0, |h, a| h.rotate_left(17) ^ a)
}

extern "C" fn copy_and_hash(job: u64) -> u64 {
    // SAFETY: `job` points at a HashJob in the arena whose buffers are
    // arena memory of `len` bytes each.
    let job = unsafe { &*(job as *const HashJob) };
    // SAFETY: as above; the two buffers do not overlap.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(job.src as *const u8, job.len as usize),
            std::slice::from_raw_parts_mut(job.dst as *mut u8, job.len as usize),
        )
    };
    let mut h = 0;
    for _ in 0..job.rounds {
        dst.copy_from_slice(src);
        h ^= if job.avx2 != 0 {
            // SAFETY: the host checked AVX2 before setting the flag.
            unsafe { hash_avx2(black_box(dst)) }
        } else {
            hash_scalar(black_box(dst))
        };
    }
    h
}

#[test]
fn simd_memcpy_and_hashing_run_in_the_guest_as_on_the_host() {
    if !kvm() {
        return;
    }
    // glibc's memcpy reads its tuning variables from libc's writable data.
    let vm = image_vm(SyscallPolicy::default(), true);
    const LEN: usize = 4 << 20;
    let arena = pages(2 * LEN / 4096 + 1);
    vm.map(region("arena", &arena, Access::ReadWrite)).unwrap();
    let base = arena.as_ptr() as u64;
    let src = arena.get_slice(4096, LEN).unwrap();
    for i in 0..LEN / 8 {
        src.store(
            (i as u64).wrapping_mul(0x0123_4567_89ab_cdef),
            i * 8,
            std::sync::atomic::Ordering::Relaxed,
        )
        .unwrap();
    }
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    let job = HashJob {
        src: base + 4096,
        dst: base + 4096 + LEN as u64,
        len: LEN as u64,
        rounds: 8,
        avx2: u64::from(avx2),
    };
    arena.as_volatile_slice().write_obj(job.src, 0).unwrap();
    arena.as_volatile_slice().write_obj(job.dst, 8).unwrap();
    arena.as_volatile_slice().write_obj(job.len, 16).unwrap();
    arena.as_volatile_slice().write_obj(job.rounds, 24).unwrap();
    arena.as_volatile_slice().write_obj(job.avx2, 32).unwrap();

    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    vcpu.prefault().unwrap();
    let mut host_best = Duration::MAX;
    let mut guest_best = Duration::MAX;
    let mut host_hash = 0;
    let mut guest_hash = 0;
    for _ in 0..3 {
        let t = Instant::now();
        host_hash = copy_and_hash(base);
        host_best = host_best.min(t.elapsed());
        let t = Instant::now();
        // SAFETY: copy_and_hash touches only the arena and registers.
        guest_hash = unsafe { vcpu.call(copy_and_hash, base) }.unwrap();
        guest_best = guest_best.min(t.elapsed());
    }
    assert_eq!(guest_hash, host_hash);
    let mut plain = vec![0u8; LEN];
    src.copy_to(&mut plain[..]);
    let mut expect = 0;
    for _ in 0..8 {
        expect ^= hash_scalar(&plain);
    }
    assert_eq!(host_hash, expect, "AVX2 and scalar hashes agree");
    eprintln!(
        "copy+hash of 8 x 4 MiB ({}): host {:?}, guest {:?} (guest/host {:.3})",
        if avx2 { "AVX2" } else { "scalar" },
        host_best,
        guest_best,
        guest_best.as_secs_f64() / host_best.as_secs_f64()
    );
}

extern "C" fn write_hello(fd: u64) -> u64 {
    let msg = b"hello from guest ring 3\n";
    // SAFETY: msg is read-only data of the image, mapped.
    unsafe { libc::write(fd as i32, msg.as_ptr().cast(), msg.len()) as u64 }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this test opened.
    unsafe { libc::close(fd) };
}

#[test]
fn allowed_write_is_forwarded_to_the_host() {
    if !kvm() {
        return;
    }
    let (r, w) = pipe();
    // The libc wrappers read libc's writable data (cancellation state).
    let vm = image_vm(SyscallPolicy::with_write_fds([w]), true);
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    // SAFETY: write_hello writes read-only image bytes to the pipe.
    let n = unsafe { vcpu.call(write_hello, w as u64) }.unwrap();
    assert_eq!(n, 24);
    let mut got = [0u8; 24];
    // SAFETY: reads into a local buffer of that size.
    assert_eq!(unsafe { libc::read(r, got.as_mut_ptr().cast(), 24) }, 24);
    assert_eq!(&got, b"hello from guest ring 3\n");
    assert_eq!(vcpu.stats().syscalls.forwarded, 1);
    close(r);
    close(w);
}

extern "C" fn open_file(use_openat: u64) -> u64 {
    let path = c"/etc/hostname";
    // SAFETY: the path is read-only image data.
    let fd = unsafe {
        if use_openat != 0 {
            libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY)
        } else {
            libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY) as i32
        }
    };
    if fd >= 0 {
        return fd as u64;
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    (1 << 32) | errno as u64
}

#[test]
fn open_and_openat_are_denied_with_eperm_and_counted() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), true);
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    for openat in [0, 1] {
        // SAFETY: open_file only reads image data and sets errno (TLS).
        let r = unsafe { vcpu.call(open_file, openat) }.unwrap();
        assert_eq!(r, (1 << 32) | libc::EPERM as u64, "failed with EPERM");
    }
    let s = &vcpu.stats().syscalls;
    assert_eq!((s.denied, s.forwarded), (2, 0));
    assert_eq!(s.denied_by_nr.get(&(libc::SYS_open as u64)), Some(&1));
    assert_eq!(s.denied_by_nr.get(&(libc::SYS_openat as u64)), Some(&1));
}

extern "C" fn write_secret(secret: u64) -> u64 {
    // SAFETY: see write_hello; the buffer is outside the guest.
    unsafe { libc::syscall(libc::SYS_write, 2, secret as *const u8, 16) as u64 }
}

#[test]
fn a_forwarded_call_cannot_read_memory_outside_the_guest() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), true);
    let secret = Box::new(*b"control-plane key");
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    // SAFETY: the call fails with EFAULT before anything is written.
    let r = unsafe { vcpu.call(write_secret, secret.as_ptr() as u64) }.unwrap();
    assert_eq!(r as i64, -1);
    assert_eq!(vcpu.stats().syscalls.bad_pointer, 1);
}

extern "C" fn exit_42(_: u64) -> u64 {
    // SAFETY: in the guest, exit_group ends the run, not the process.
    unsafe { libc::syscall(libc::SYS_exit_group, 42) as u64 }
}

#[test]
fn exit_ends_the_run_not_the_process() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), true);
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    // SAFETY: exit_42 makes one system call.
    let r = unsafe { vcpu.call(exit_42, 0) };
    assert!(matches!(r, Err(RunError::Exited(42))), "{r:?}");
    // SAFETY: add_one touches only registers.
    assert_eq!(unsafe { vcpu.call(add_one, 1) }.unwrap(), 2);
}

#[test]
fn reading_a_secret_outside_the_mapping_is_reported() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let secret = Box::new(*b"control-plane secret key........");
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let addr = secret.as_ptr() as u64 + 8;
    // SAFETY: read_u64 only reads; outside the mapping it faults.
    let report = fault(unsafe { vcpu.call(read_u64, addr) });
    eprintln!("report: {report}");
    assert_eq!(
        report.kind,
        FaultKind::Exception {
            vector: 14,
            error_code: Some(4)
        },
        "a user-mode read of a page that is not present"
    );
    assert_eq!(report.address, Some(addr));
    assert_eq!(report.touch, Some(Touch::Read));
    assert_eq!(report.region, None);
    let code = report.code_region.expect("rip lies in the test's code");
    assert_eq!(code.access(), Access::Code);
    let f = read_u64 as *const () as u64;
    assert!(
        report.rip >= f && report.rip < f + 64,
        "rip {:#x} in read_u64",
        report.rip
    );
    assert_eq!(&secret[..], b"control-plane secret key........");
    // The vCPU is usable again.
    // SAFETY: add_one touches only registers.
    assert_eq!(unsafe { vcpu.call(add_one, 1) }.unwrap(), 2);
}

#[test]
fn writing_a_read_only_rx_pool_is_reported() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let rx = pages(4);
    rx.as_volatile_slice().write_obj(7u64, 8).unwrap();
    vm.map(region("rx pool 0", &rx, Access::ReadOnly)).unwrap();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let addr = rx.as_ptr() as u64 + 8;
    // SAFETY: reading the mapped pool is allowed.
    assert_eq!(unsafe { vcpu.call(read_u64, addr) }.unwrap(), 7);
    // SAFETY: the write faults in the guest; nothing is written.
    let report = fault(unsafe { vcpu.call(write_u64, addr) });
    eprintln!("report: {report}");
    assert_eq!(report.address, Some(addr));
    assert_eq!(report.touch, Some(Touch::Write));
    assert_eq!(report.region.as_ref().map(|r| r.name()), Some("rx pool 0"));
    assert!(report.to_string().contains("write of"), "{report}");
    assert_eq!(rx.as_volatile_slice().read_obj::<u64>(8).unwrap(), 7);
}

#[test]
fn writing_code_and_executing_data_are_reported() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let arena = pages(1);
    // `ret`: executable if the guest could run data.
    arena.as_volatile_slice().write_obj(0xc3u8, 0).unwrap();
    vm.map(region("arena", &arena, Access::ReadWrite)).unwrap();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let code = add_one as *const () as u64;
    // SAFETY: the write faults in the guest (code is read-only).
    let report = fault(unsafe { vcpu.call(write_u64, code) });
    assert_eq!(
        (report.touch, report.region.map(|r| r.access())),
        (Some(Touch::Write), Some(Access::Code))
    );
    // SAFETY: the arena holds one `ret`, which the guest may not execute;
    // the transmute only names it as a function for the guest's RIP.
    let data_fn =
        unsafe { std::mem::transmute::<*const u8, extern "C" fn(u64) -> u64>(arena.as_ptr()) };
    // SAFETY: the fetch faults in the guest.
    let report = fault(unsafe { vcpu.call(data_fn, 0) });
    eprintln!("report: {report}");
    assert_eq!(report.touch, Some(Touch::Execute));
    assert_eq!(report.rip, arena.as_ptr() as u64);
    assert_eq!(
        report.region.map(|r| r.name().to_string()),
        Some("arena".into())
    );
}

#[test]
fn page_tables_are_out_of_the_guests_reach() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let (tables, _) = vm.page_table_arena();
    // SAFETY: the read faults in the guest.
    let report = fault(unsafe { vcpu.call(read_u64, tables) });
    assert_eq!((report.address, report.region), (Some(tables), None));
}

thread_local! {
    static WORKER: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn spin_sum(n: u64) -> u64 {
    let mut acc = WORKER.with(Cell::get);
    for i in 0..n {
        acc = black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    acc
}

#[test]
fn two_vcpus_on_two_threads_compute_concurrently() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let barrier = Arc::new(Barrier::new(2));
    const N: u64 = 60_000_000;
    let workers: Vec<_> = (1..=2u64)
        .map(|k| {
            let vm = Arc::clone(&vm);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                WORKER.with(|w| w.set(k));
                let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
                vcpu.prefault().unwrap();
                barrier.wait();
                let t0 = Instant::now();
                // SAFETY: spin_sum reads a thread-local and computes.
                let got = unsafe { vcpu.call(spin_sum, N) }.unwrap();
                let t1 = Instant::now();
                WORKER.with(|w| w.set(k));
                (vcpu.id(), got, spin_sum(N), t0, t1)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (_, got, host, ..) in &results {
        assert_eq!(got, host, "each vCPU saw its own thread's TLS and stack");
    }
    assert_ne!(results[0].1, results[1].1);
    assert_ne!(results[0].0, results[1].0);
    let (a, b) = (&results[0], &results[1]);
    assert!(a.3 < b.4 && b.3 < a.4, "the two runs overlapped in time");
    eprintln!(
        "two vCPUs: {:?} and {:?}, overlapping",
        a.4 - a.3,
        b.4 - b.3
    );
}

extern "C" fn empty_call(x: u64) -> u64 {
    x
}

extern "C" fn forwarded_syscalls(n: u64) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    for _ in 0..n {
        // SAFETY: `ts` is on the guest stack, mapped writable.
        unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    }
    ts.tv_sec as u64
}

extern "C" fn denied_syscalls(n: u64) -> u64 {
    for _ in 0..n {
        // SAFETY: getuid is denied in the guest; no memory involved.
        unsafe { libc::syscall(libc::SYS_getuid) };
    }
    n
}

extern "C" fn vdso_clock(_: u64) -> u64 {
    let a = Instant::now();
    let b = Instant::now();
    (b - a).as_nanos() as u64 + 1
}

fn per_call(vcpu: &mut guest::Vcpu, f: extern "C" fn(u64) -> u64, arg: u64, n: u32) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..n {
        let t = Instant::now();
        // SAFETY: the functions measured touch only the stack, TLS and
        // image data.
        unsafe { vcpu.call(f, arg) }.unwrap();
        best = best.min(t.elapsed());
    }
    best
}

#[test]
fn costs_of_each_step_are_measured() {
    if !kvm() {
        return;
    }
    let t = Instant::now();
    let vm = Vm::new(VmConfig::default()).unwrap();
    let create = t.elapsed();
    let img = ProcessImage::current().unwrap();
    let t = Instant::now();
    vm.map_all(img.code_and_rodata.into_iter().chain(img.data))
        .unwrap();
    let map = t.elapsed();
    let mapped: u64 = vm.regions().iter().map(|r| r.len()).sum();
    let t = Instant::now();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let setup = t.elapsed();
    let t = Instant::now();
    // SAFETY: empty_call touches only registers.
    let first = unsafe { vcpu.call(empty_call, 1) };
    let first_call = t.elapsed();
    first.unwrap();
    let t = Instant::now();
    let pages = vcpu.prefault().unwrap();
    let prefault = t.elapsed();
    let call = per_call(&mut vcpu, empty_call, 1, 200);
    const N: u64 = 100;
    let fwd = per_call(&mut vcpu, forwarded_syscalls, N, 20);
    let denied = per_call(&mut vcpu, denied_syscalls, N, 20);
    let before = vcpu.stats().syscalls.forwarded;
    let vdso = per_call(&mut vcpu, vdso_clock, 0, 20);
    let vdso_syscalls = vcpu.stats().syscalls.forwarded - before;
    let per = |d: Duration| (d.saturating_sub(call)) / N as u32;
    eprintln!(
        "KVM costs: VM create {create:?} (in Vm::new {:?}); map image {map:?} ({} regions, {} KiB); \
         vCPU setup {setup:?} (memory {:?}, registers {:?}); first call {first_call:?}; \
         prefault {prefault:?} ({pages} pages); call round trip {call:?}; \
         syscall forwarded {:?}, denied {:?}; vDSO clock_gettime pair in guest {vdso:?} \
         ({vdso_syscalls} syscalls forwarded)",
        vm.created_in(),
        vm.regions().len(),
        mapped / 1024,
        vcpu.timings().memory,
        vcpu.timings().registers,
        per(fwd),
        per(denied),
    );
    assert_eq!(vcpu.stats().syscalls.denied, 20 * N);
}

#[test]
fn runtime_runs_a_closure_on_the_threads_vcpu() {
    if !kvm() {
        return;
    }
    let arena = pages(4);
    let rt = GuestRuntime::new(RuntimeConfig {
        regions: vec![region("heap arena", &arena, Access::ReadWrite)],
        ..RuntimeConfig::default()
    })
    .unwrap();
    WORKER.with(|w| w.set(5));
    let mut thread = rt.enter_thread().unwrap();
    assert!(thread.prefaulted_pages() > 0);
    let words = arena.as_ptr() as usize as u64;
    let base = 10u64;
    let job = move || {
        let p = words as *mut u64;
        for i in 0..512 {
            // SAFETY: the arena is mapped read-write in the guest.
            unsafe { p.add(i).write_volatile(i as u64) };
        }
        // SAFETY: as above.
        let s: u64 = (0..512).map(|i| unsafe { p.add(i).read_volatile() }).sum();
        s + base + WORKER.with(Cell::get)
    };
    // SAFETY: the closure touches the arena (mapped) and a thread-local,
    // and captures `base` by value.
    let sum = unsafe { thread.run(job) }.unwrap();
    assert_eq!(sum, 511 * 512 / 2 + 10 + 5);
    let big = [7u8; 512 * 1024];
    // SAFETY: never runs: the closure does not fit the guest stack.
    let r = unsafe { thread.run(move || big[0]) };
    assert!(matches!(r, Err(RunError::TooLarge(_))), "{r:?}");
    let local = 3u64;
    let borrowed = &local;
    // SAFETY: the borrow points at the host stack: the guest faults on it.
    let r = unsafe { thread.run(|| *borrowed) };
    assert!(matches!(r, Err(RunError::Fault(_))), "{r:?}");
    // SAFETY: as the first run.
    let again = unsafe { thread.run(move || base * 2) }.unwrap();
    assert_eq!(again, 20);
    let before = thread.vcpu().stats().clone();
    let clock_loop = || {
        let start = Instant::now();
        let mut turns = 0u64;
        while start.elapsed() < Duration::from_millis(20) {
            turns += 1;
        }
        turns
    };
    // SAFETY: the loop reads the clock through the vDSO (mapped).
    let turns = unsafe { thread.run(clock_loop) }.unwrap();
    let after = thread.vcpu().stats();
    assert!(turns > 1000, "{turns} clock reads in 20 ms");
    assert_eq!(after.exits - before.exits, 1, "only the return exits");
    assert_eq!(after.syscalls.forwarded, before.syscalls.forwarded);
}

#[test]
fn memory_mapped_while_the_vcpu_lives_becomes_reachable() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let arena = pages(2);
    let more = pages(2);
    more.as_volatile_slice().write_obj(99u64, 4096).unwrap();
    vm.map(region("heap arena", &arena, Access::ReadWrite))
        .unwrap();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    vcpu.prefault().unwrap();
    let addr = more.as_ptr() as u64 + 4096;
    // SAFETY: read_u64 only reads; before the mapping it faults.
    let report = fault(unsafe { vcpu.call(read_u64, addr) });
    assert_eq!((report.address, report.region), (Some(addr), None));
    vm.map(region("heap arena (grown)", &more, Access::ReadWrite))
        .unwrap();
    // SAFETY: as above; now mapped.
    assert_eq!(unsafe { vcpu.call(read_u64, addr) }.unwrap(), 99);
    // SAFETY: write_u64 writes the mapped page.
    unsafe { vcpu.call(write_u64, addr) }.unwrap();
    assert_eq!(
        more.as_volatile_slice().read_obj::<u64>(4096).unwrap(),
        0xdead_beef
    );
}

extern "C" fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    black_box(&mut frame);
    if depth == 0 {
        return u64::from(frame[0]);
    }
    recurse(black_box(depth - 1)) + u64::from(frame[depth as usize % 4096])
}

#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported() {
    if !kvm() {
        return;
    }
    // The frames are zeroed by glibc's memset, which reads libc's data.
    let vm = image_vm(SyscallPolicy::default(), true);
    let mut vcpu = vm
        .create_vcpu(VcpuConfig {
            stack_bytes: 64 * 1024,
            ..VcpuConfig::default()
        })
        .unwrap();
    // SAFETY: recurse uses only its stack.
    assert_eq!(unsafe { vcpu.call(recurse, 4) }.unwrap(), 0);
    // SAFETY: as above; 64 frames of 4 KiB overflow the 64 KiB stack.
    let report = fault(unsafe { vcpu.call(recurse, 64) });
    eprintln!("report: {report}");
    let (start, _) = vcpu.stack_range();
    let addr = report.address.unwrap();
    assert!(
        addr < start && addr >= start - 4096,
        "{addr:#x} in the guard page below {start:#x}"
    );
    assert_eq!(report.region, None);
    assert!(report.stack_overflow);
    assert!(report.to_string().contains("stack overflow"), "{report}");
}

extern "C" fn touch_all(arena: u64) -> u64 {
    // SAFETY: `arena` points at 8 MiB of mapped guest memory.
    unsafe {
        for page in 0..2048 {
            std::ptr::read_volatile((arena + page * 4096) as *const u8);
        }
    }
    2048
}

#[test]
fn prefaulting_removes_first_touch_costs() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let arena = pages(2048);
    let base = arena.as_ptr() as u64;
    vm.map(region("arena", &arena, Access::ReadWrite)).unwrap();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let time = |vcpu: &mut guest::Vcpu| {
        let t = Instant::now();
        // SAFETY: touch_all reads the mapped arena.
        unsafe { vcpu.call(touch_all, base) }.unwrap();
        t.elapsed()
    };
    let exits = vcpu.stats().exits;
    let first = time(&mut vcpu);
    let second = time(&mut vcpu);
    assert_eq!(
        vcpu.stats().exits - exits,
        2,
        "page faults never reach the VMM"
    );
    let arena2 = pages(2048);
    vm.map(region("arena 2", &arena2, Access::ReadWrite))
        .unwrap();
    let t = Instant::now();
    vcpu.prefault().unwrap();
    let prefault = t.elapsed();
    let base2 = arena2.as_ptr() as u64;
    let t = Instant::now();
    // SAFETY: as above.
    unsafe { vcpu.call(touch_all, base2) }.unwrap();
    let after_prefault = t.elapsed();
    eprintln!(
        "2048 pages: first touch {first:?}, again {second:?}; prefault of the VM {prefault:?}, \
         then first touch of a prefaulted arena {after_prefault:?}"
    );
}

#[test]
fn unmapped_memory_is_out_of_reach_and_can_be_mapped_again() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let pool = pages(4);
    pool.as_volatile_slice().write_obj(5u64, 0).unwrap();
    let addr = pool.as_ptr() as u64;
    vm.map(region("tx pool", &pool, Access::ReadWrite)).unwrap();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    vcpu.prefault().unwrap();
    // SAFETY: read_u64 reads the mapped pool.
    assert_eq!(unsafe { vcpu.call(read_u64, addr) }.unwrap(), 5);
    let gone = vm.unmap(addr, 4 * 4096).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(vm.region_at(addr), None);
    // SAFETY: as above; the read now faults.
    let report = fault(unsafe { vcpu.call(read_u64, addr) });
    assert_eq!((report.address, report.region), (Some(addr), None));
    vm.map(region("tx pool", &pool, Access::ReadOnly)).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { vcpu.call(read_u64, addr) }.unwrap(), 5);
    // SAFETY: the write faults: the pool came back read-only.
    let report = fault(unsafe { vcpu.call(write_u64, addr) });
    assert_eq!(report.touch, Some(Touch::Write));

    let stubs = vm
        .regions()
        .into_iter()
        .find(|r| r.name() == "guest stubs")
        .unwrap();
    assert!(matches!(
        vm.unmap(stubs.start(), stubs.len()),
        Err(VmError::RuntimePages { .. })
    ));
}

#[test]
fn a_finished_threads_vcpu_takes_its_stack_and_tls_out_of_the_vm() {
    if !kvm() {
        return;
    }
    let vm = image_vm(SyscallPolicy::default(), false);
    let before = vm.regions().len();
    let vm2 = Arc::clone(&vm);
    let (stack, tls) = std::thread::spawn(move || {
        let mut vcpu = vm2.create_vcpu(VcpuConfig::default()).unwrap();
        // SAFETY: add_one touches only registers.
        unsafe { vcpu.call(add_one, 1) }.unwrap();
        let tls = vm2
            .regions()
            .into_iter()
            .find(|r| r.name().ends_with(" TLS"))
            .unwrap();
        (vcpu.stack_range().0, tls.start())
    })
    .join()
    .unwrap();
    assert_eq!(vm.region_at(stack), None);
    assert_eq!(vm.region_at(tls), None);
    assert_eq!(vm.regions().len(), before);
}
