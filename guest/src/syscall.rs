//! System calls made in the guest: an allow-list, checked arguments,
//! forwarding to the host kernel.
//!
//! A `syscall` in guest ring 3 jumps to LSTAR without leaving ring 3 on
//! this machine class (kvm_pvm); LSTAR points at a stub that stores to an
//! unbacked address, which exits to the VMM with the guest's registers
//! intact (Linux x86-64 ABI: number in RAX, arguments in RDI, RSI, RDX,
//! R10, R8, R9; RCX holds the return address, R11 the flags). The VMM
//! decides here, writes the result to RAX, and resumes at RCX.
//!
//! The guest's memory is the host's memory at the same addresses, so a
//! forwarded call could read or write anything the *host* can unless its
//! pointer arguments are checked: every pointer is checked against the
//! guest's regions (readable for what the kernel reads, writable for what
//! it writes) before the call runs. A call not on the list returns
//! `-EPERM` and is counted; a bad pointer returns `-EFAULT` and is counted
//! too. `exit` and `exit_group` are not forwarded (they would end the host
//! thread or process): they end the run and report the status.

use std::collections::BTreeMap;

use crate::region::{Need, RegionTable};
use crate::sys;

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;
const TIMESPEC_BYTES: u64 = 16;

/// What the guest may ask of the host kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallPolicy {
    write_fds: Vec<i32>,
}

impl Default for SyscallPolicy {
    /// `write` to stdout and stderr, `clock_gettime`, `futex`
    /// (wait/wake), `sched_yield`, `exit`, `exit_group`.
    fn default() -> Self {
        SyscallPolicy {
            write_fds: vec![1, 2],
        }
    }
}

impl SyscallPolicy {
    /// The default list with `write` allowed to exactly `fds`.
    pub fn with_write_fds(fds: impl IntoIterator<Item = i32>) -> Self {
        SyscallPolicy {
            write_fds: fds.into_iter().collect(),
        }
    }

    /// Descriptors the guest may `write` to.
    pub fn write_fds(&self) -> &[i32] {
        &self.write_fds
    }
}

/// The registers of a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyscallRequest {
    /// RAX: the number.
    pub nr: u64,
    /// RDI, RSI, RDX, R10, R8, R9.
    pub args: [u64; 6],
}

/// What the VMM does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Resume the guest with this value in RAX.
    Return(i64),
    /// End the run: the guest called `exit`/`exit_group` with this status.
    Exit(i32),
}

/// How requests went, per vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallStats {
    /// Calls run on the host.
    pub forwarded: u64,
    /// Calls refused with `-EPERM` (not on the list, or a descriptor or
    /// operation the list does not allow).
    pub denied: u64,
    /// Calls refused with `-EFAULT` (a pointer outside the guest's
    /// regions, or without the rights the call needs).
    pub bad_pointer: u64,
    /// Refusals by system call number.
    pub denied_by_nr: BTreeMap<u64, u64>,
}

/// The allow-list's decision on a request (made under the mapping lock,
/// carried out after it is released: a forwarded `futex` may block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Run it on the host.
    Forward,
    /// Refuse with `-EPERM`.
    Deny,
    /// Refuse with `-EFAULT`: a pointer argument is outside the guest's
    /// regions or lacks the rights the call needs.
    BadPointer,
    /// End the run with this status (`exit`, `exit_group`).
    Exit(i32),
}

fn n(nr: i64) -> u64 {
    nr as u64
}

/// Decides on `req` against `policy` and the guest's `regions`. Regions
/// are only ever added, so a pointer found valid stays valid.
pub(crate) fn decide(
    policy: &SyscallPolicy,
    regions: &RegionTable,
    req: &SyscallRequest,
) -> Decision {
    let a = req.args;
    let ok = |addr: u64, len: u64, need: Need| regions.allows(addr, len, need);
    match req.nr {
        nr if nr == n(libc::SYS_write) => {
            if !policy
                .write_fds
                .iter()
                .any(|&fd| i64::from(fd) == a[0] as i64)
            {
                Decision::Deny
            } else if !ok(a[1], a[2], Need::Read) {
                Decision::BadPointer
            } else {
                Decision::Forward
            }
        }
        nr if nr == n(libc::SYS_clock_gettime) => {
            if ok(a[1], TIMESPEC_BYTES, Need::Write) {
                Decision::Forward
            } else {
                Decision::BadPointer
            }
        }
        nr if nr == n(libc::SYS_futex) => {
            let op = a[1] & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
            let waits = op == FUTEX_WAIT || op == FUTEX_WAIT_BITSET;
            let wakes = op == FUTEX_WAKE || op == FUTEX_WAKE_BITSET;
            if !waits && !wakes {
                Decision::Deny
            } else if !ok(a[0], 4, Need::Write)
                || (waits && a[3] != 0 && !ok(a[3], TIMESPEC_BYTES, Need::Read))
            {
                Decision::BadPointer
            } else {
                Decision::Forward
            }
        }
        nr if nr == n(libc::SYS_sched_yield) => Decision::Forward,
        nr if nr == n(libc::SYS_exit) || nr == n(libc::SYS_exit_group) => {
            Decision::Exit(a[0] as i32)
        }
        _ => Decision::Deny,
    }
}

/// Carries out `decision` for `req`, counting the outcome in `stats`.
pub(crate) fn carry_out(
    req: &SyscallRequest,
    decision: Decision,
    stats: &mut SyscallStats,
) -> Verdict {
    match decision {
        Decision::Forward => {
            stats.forwarded += 1;
            // SAFETY: `Forward` comes only from `decide` (crate-private),
            // for a number on the allow-list whose every
            // pointer argument was checked to lie in guest regions
            // with the rights the call needs (write reads `count` bytes at
            // `buf`; clock_gettime writes a timespec; futex reads/compares
            // the word at `uaddr` and reads an optional timespec). None of
            // these calls changes mappings or descriptors.
            Verdict::Return(unsafe { sys::raw_syscall(req.nr as i64, req.args) })
        }
        Decision::Deny => {
            stats.denied += 1;
            *stats.denied_by_nr.entry(req.nr).or_default() += 1;
            Verdict::Return(-i64::from(libc::EPERM))
        }
        Decision::BadPointer => {
            stats.bad_pointer += 1;
            *stats.denied_by_nr.entry(req.nr).or_default() += 1;
            Verdict::Return(-i64::from(libc::EFAULT))
        }
        Decision::Exit(status) => Verdict::Exit(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Access, Region};

    fn handle(
        policy: &SyscallPolicy,
        regions: &RegionTable,
        req: &SyscallRequest,
        stats: &mut SyscallStats,
    ) -> Verdict {
        carry_out(req, decide(policy, regions, req), stats)
    }

    fn req(nr: i64, args: [u64; 6]) -> SyscallRequest {
        SyscallRequest {
            nr: nr as u64,
            args,
        }
    }

    /// A table holding one page-aligned buffer of ours, read-write, and
    /// one read-only page after it.
    struct Fixture {
        buf: Vec<u8>,
        table: RegionTable,
        rw: u64,
        ro: u64,
    }

    fn fixture() -> Fixture {
        let buf = vec![0u8; 4 * 4096];
        let rw = (buf.as_ptr() as u64).next_multiple_of(4096);
        let mut table = RegionTable::new();
        table.insert(Region::new("rw", rw, 4096, Access::ReadWrite).unwrap());
        table.insert(Region::new("ro", rw + 4096, 4096, Access::ReadOnly).unwrap());
        Fixture {
            buf,
            table,
            rw,
            ro: rw + 4096,
        }
    }

    #[test]
    fn write_to_an_allowed_fd_is_forwarded() {
        let f = fixture();
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the buffer lies inside `f.buf`, alive for the test.
        unsafe { std::ptr::copy_nonoverlapping(b"hey".as_ptr(), f.ro as *mut u8, 3) };
        let policy = SyscallPolicy::with_write_fds([fds[1]]);
        let mut stats = SyscallStats::default();
        let v = handle(
            &policy,
            &f.table,
            &req(libc::SYS_write, [fds[1] as u64, f.ro, 3, 0, 0, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(3));
        let mut got = [0u8; 3];
        // SAFETY: reads into a local array of the given length.
        assert_eq!(unsafe { libc::read(fds[0], got.as_mut_ptr().cast(), 3) }, 3);
        assert_eq!(&got, b"hey");
        assert_eq!(stats.forwarded, 1);
        // SAFETY: closing the descriptors pipe() gave us.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        drop(f.buf);
    }

    #[test]
    fn write_to_another_fd_is_denied_and_counted() {
        let f = fixture();
        let mut stats = SyscallStats::default();
        let v = handle(
            &SyscallPolicy::default(),
            &f.table,
            &req(libc::SYS_write, [7, f.rw, 1, 0, 0, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(-i64::from(libc::EPERM)));
        assert_eq!(stats.denied, 1);
        assert_eq!(stats.denied_by_nr.get(&(libc::SYS_write as u64)), Some(&1));
    }

    #[test]
    fn write_of_memory_outside_the_guest_is_refused() {
        let f = fixture();
        let secret = [0x5au8; 64];
        let mut stats = SyscallStats::default();
        for (buf, len) in [
            (secret.as_ptr() as u64, 64),
            (f.ro + 4000, 200),
            (u64::MAX - 8, 64),
        ] {
            let v = handle(
                &SyscallPolicy::default(),
                &f.table,
                &req(libc::SYS_write, [2, buf, len, 0, 0, 0]),
                &mut stats,
            );
            assert_eq!(v, Verdict::Return(-i64::from(libc::EFAULT)));
        }
        assert_eq!(stats.bad_pointer, 3);
        assert_eq!(stats.forwarded, 0);
    }

    #[test]
    fn clock_gettime_needs_a_writable_timespec() {
        let f = fixture();
        let mut stats = SyscallStats::default();
        let p = SyscallPolicy::default();
        let mono = libc::CLOCK_MONOTONIC as u64;
        let v = handle(
            &p,
            &f.table,
            &req(libc::SYS_clock_gettime, [mono, f.rw, 0, 0, 0, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(0));
        let v = handle(
            &p,
            &f.table,
            &req(libc::SYS_clock_gettime, [mono, f.ro, 0, 0, 0, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(-i64::from(libc::EFAULT)));
        assert_eq!((stats.forwarded, stats.bad_pointer), (1, 1));
    }

    #[test]
    fn futex_allows_wait_and_wake_only() {
        let f = fixture();
        let mut stats = SyscallStats::default();
        let p = SyscallPolicy::default();
        let wake = FUTEX_WAKE | FUTEX_PRIVATE_FLAG;
        let v = handle(
            &p,
            &f.table,
            &req(libc::SYS_futex, [f.rw, wake, 1, 0, 0, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(0));
        // FUTEX_WAIT on a word whose value differs returns EAGAIN at once.
        let v = handle(
            &p,
            &f.table,
            &req(libc::SYS_futex, [f.rw, FUTEX_WAIT, 1, 0, 0, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(-i64::from(libc::EAGAIN)));
        let requeue = 3;
        let v = handle(
            &p,
            &f.table,
            &req(libc::SYS_futex, [f.rw, requeue, 1, 0, f.rw, 0]),
            &mut stats,
        );
        assert_eq!(v, Verdict::Return(-i64::from(libc::EPERM)));
        assert_eq!((stats.forwarded, stats.denied), (2, 1));
    }

    #[test]
    fn open_and_openat_are_denied() {
        let f = fixture();
        let mut stats = SyscallStats::default();
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_kill,
        ] {
            let v = handle(
                &SyscallPolicy::default(),
                &f.table,
                &req(nr, [f.rw, 0, 0, 0, 0, 0]),
                &mut stats,
            );
            assert_eq!(v, Verdict::Return(-i64::from(libc::EPERM)));
        }
        assert_eq!(stats.denied, 4);
        assert_eq!(stats.denied_by_nr.len(), 4);
    }

    #[test]
    fn exit_ends_the_run_instead_of_the_thread() {
        let f = fixture();
        let mut stats = SyscallStats::default();
        for nr in [libc::SYS_exit, libc::SYS_exit_group] {
            let v = handle(
                &SyscallPolicy::default(),
                &f.table,
                &req(nr, [42, 0, 0, 0, 0, 0]),
                &mut stats,
            );
            assert_eq!(v, Verdict::Exit(42));
        }
        assert_eq!(stats.forwarded, 0);
    }
}
