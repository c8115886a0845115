//! Thin, checked wrappers over the Linux system calls the benchmark tools use
//! and `std` does not offer: epoll(7), sched_setaffinity(2) and the
//! RLIMIT_NOFILE pair getrlimit(2)/setrlimit(2).
//!
//! This is the only module of the crate allowed to use `unsafe`; every block
//! states which invariants the callee needs and why they hold. Each call's
//! return value is checked and turned into an [`std::io::Error`] carrying
//! `errno`, so callers add context with `anyhow` and never see raw codes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Interest in readability (`EPOLLIN`), for [`Epoll::add`] and [`Epoll::modify`].
pub const READABLE: u32 = libc::EPOLLIN as u32;
/// Interest in writability (`EPOLLOUT`), for [`Epoll::add`] and [`Epoll::modify`].
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;

/// An epoll instance (level-triggered registrations), closed on drop.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// One readiness report from [`Epoll::wait`], copied out of the kernel's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The token given when the file descriptor was registered.
    pub token: u64,
    /// Data (or EOF) can be read without blocking.
    pub readable: bool,
    /// Data can be written without blocking.
    pub writable: bool,
    /// The peer hung up or the socket has a pending error (`EPOLLHUP`/`EPOLLERR`).
    pub closed: bool,
}

/// A pre-allocated array the kernel fills in [`Epoll::wait`]; reused every turn
/// so waiting allocates nothing.
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    /// An array for up to `capacity` events per wait (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Events {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            len: 0,
        }
    }

    /// The events reported by the last [`Epoll::wait`].
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.buf[..self.len].iter().map(|raw| {
            // `epoll_event` is packed on x86_64: copy the fields out by value.
            let bits = raw.events;
            let token = raw.u64;
            Event {
                token,
                readable: bits & libc::EPOLLIN as u32 != 0,
                writable: bits & libc::EPOLLOUT as u32 != 0,
                closed: bits & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0,
            }
        })
    }
}

impl Epoll {
    /// Creates an epoll instance with close-on-exec set.
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; EPOLL_CLOEXEC is a valid flag.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: BorrowedFd<'_>,
        interest: u32,
        token: u64,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest,
            u64: token,
        };
        // SAFETY: both descriptors are open (owned by `self` and borrowed for
        // the call); `event` is a valid, initialised epoll_event that lives
        // across the call (the kernel only reads it, and ignores it for DEL).
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Registers `fd` with `interest` ([`READABLE`] | [`WRITABLE`]); events for
    /// it carry `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    /// Changes the interest (and token) of a registered `fd`.
    pub fn modify(&self, fd: BorrowedFd<'_>, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    /// Removes `fd` from the interest list.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (rounded up to whole milliseconds) for events and
    /// stores them in `events`; returns how many arrived. An interrupted wait
    /// (`EINTR`) reports zero events.
    pub fn wait(&self, events: &mut Events, timeout: Duration) -> io::Result<usize> {
        let millis = timeout
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        let capacity = events.buf.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: the pointer and `capacity` describe `events.buf`, an
        // initialised array of epoll_event that stays borrowed mutably for the
        // call; the kernel writes at most `capacity` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.buf.as_mut_ptr(),
                capacity,
                millis,
            )
        };
        if n < 0 {
            events.len = 0;
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        events.len = n as usize;
        Ok(events.len)
    }
}

/// Pins the calling thread to CPU `core` (sched_setaffinity(2) on thread 0,
/// i.e. the caller).
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    pin_thread(0, core)
}

/// Pins every thread of process `pid` to CPU `core` (each task listed in
/// /proc/PID/task); for servers started as child processes.
pub fn pin_process(pid: u32, core: usize) -> io::Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let name = entry?.file_name();
        let Some(tid) = name.to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        pin_thread(tid, core)?;
    }
    Ok(())
}

/// Pins thread `tid` (0: the caller) to CPU `core`.
fn pin_thread(tid: libc::pid_t, core: usize) -> io::Result<()> {
    // A cpu_set_t holds CPU_SETSIZE bits; CPU_SET does not bounds-check.
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "core {core} is beyond the {} CPUs a cpu_set_t can name",
                libc::CPU_SETSIZE
            ),
        ));
    }
    // SAFETY: cpu_set_t is a plain array of integers; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core < CPU_SETSIZE` (checked above), so the bit index is inside
    // `set`, which is a valid, exclusively borrowed cpu_set_t.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `tid` is 0 (the caller) or a thread id; the pointer and size
    // describe `set`, which outlives the call and is only read by the kernel.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGKILL to process `pid` (which need not be our child); a process
/// that is already gone is not an error.
pub fn kill_process(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes no pointers; any pid value is safe to pass.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Makes sure this process may open at least `needed` file descriptors,
/// raising the soft RLIMIT_NOFILE up to the hard limit if that is required.
/// Returns the soft limit now in force; fails with `InvalidInput` when even
/// the hard limit is lower than `needed`.
pub fn ensure_open_files(needed: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit the kernel writes into; it outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    if limit.rlim_max < needed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "need {needed} open files but the hard limit is {}: raise it (`ulimit -Hn`) or use fewer connections",
                limit.rlim_max
            ),
        ));
    }
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit the kernel only reads; it outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn epoll_reports_readable_with_token_then_nothing_after_delete() {
        let epoll = Epoll::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        epoll.add(b.as_fd(), READABLE, 42).unwrap();
        let mut events = Events::with_capacity(4);
        assert_eq!(epoll.wait(&mut events, Duration::ZERO).unwrap(), 0);

        a.write_all(b"x").unwrap();
        assert_eq!(epoll.wait(&mut events, Duration::from_secs(1)).unwrap(), 1);
        let ev = events.iter().next().unwrap();
        assert_eq!(ev.token, 42);
        assert!(ev.readable && !ev.writable && !ev.closed);

        epoll.delete(b.as_fd()).unwrap();
        assert_eq!(epoll.wait(&mut events, Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn epoll_modify_switches_interest_and_token() {
        let epoll = Epoll::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        epoll.add(a.as_fd(), READABLE, 1).unwrap();
        let mut events = Events::with_capacity(4);
        assert_eq!(epoll.wait(&mut events, Duration::ZERO).unwrap(), 0);
        epoll.modify(a.as_fd(), WRITABLE, 7).unwrap();
        assert_eq!(epoll.wait(&mut events, Duration::ZERO).unwrap(), 1);
        let ev = events.iter().next().unwrap();
        assert_eq!((ev.token, ev.writable), (7, true));
    }

    #[test]
    fn epoll_reports_hangup_when_peer_closes() {
        let epoll = Epoll::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        epoll.add(b.as_fd(), READABLE, 3).unwrap();
        drop(a);
        let mut events = Events::with_capacity(1);
        assert_eq!(epoll.wait(&mut events, Duration::from_secs(1)).unwrap(), 1);
        assert!(events.iter().next().unwrap().closed);
    }

    #[test]
    fn pin_rejects_core_beyond_cpu_set() {
        let err = pin_current_thread(libc::CPU_SETSIZE as usize).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn pin_to_core_zero_succeeds_in_a_fresh_thread() {
        std::thread::spawn(|| pin_current_thread(0).unwrap())
            .join()
            .unwrap();
    }

    #[test]
    fn ensure_open_files_accepts_a_small_need_and_rejects_an_impossible_one() {
        assert!(ensure_open_files(16).unwrap() >= 16);
        let err = ensure_open_files(u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("hard limit"));
    }
}
