//! Processes ixcpd watches: a dataplane that registered, a program it
//! launched. A pid alone does not name a process for long — after an exit
//! the kernel may hand the number to a new one — so ixcpd names a process
//! by its pid *and its start time* (field 22 of `/proc/PID/stat`, clock
//! ticks since boot), the pair it also writes to its state file, and
//! watches it through a pidfd, which refers to that one process: it
//! becomes readable when the process exits (child or not), and signals
//! sent through it cannot reach a process that reused the pid.
//!
//! Where `pidfd_open` is missing (Linux before 5.3), [`Watch`] falls back
//! to reading `/proc/PID/stat` again, which the daemon does every
//! [`crate::daemon::PROC_POLL`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::sys;

/// A process, by pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Its pid.
    pub pid: u32,
    /// When it started: clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

/// What `/proc/PID/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Its state letter (`R`, `S`, `D`, `Z` for a zombie, `X` dead, …).
    pub state: char,
    /// Start time, clock ticks since boot.
    pub start: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting to be reaped, or
    /// being torn down).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may hold anything, spaces and `)` included, so fields
/// are counted from the *last* `)`. `None` for text that is not one.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // Fields 3 (state) to 22 (starttime) follow the command name.
    let state = fields.next()?;
    let mut chars = state.chars();
    let state = chars.next().filter(|_| chars.next().is_none())?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Reads `/proc/PID/stat`; `None` when there is no such process.
pub fn stat(pid: u32) -> Option<Stat> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): start times only
/// mean something within one boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl ProcessId {
    /// The process with this pid now, if there is one (a zombie too).
    pub fn of(pid: u32) -> Option<ProcessId> {
        stat(pid).map(|s| ProcessId {
            pid,
            start: s.start,
        })
    }

    /// Whether this very process still runs: its pid exists, started at
    /// the same time, and has not exited.
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && !s.exited())
    }
}

/// A process being watched for its exit.
#[derive(Debug)]
pub struct Watch {
    id: ProcessId,
    pidfd: Option<OwnedFd>,
}

impl Watch {
    /// Watches `id`. The pidfd is opened after `id` was read, so the start
    /// time is checked once more: a pidfd opened on a process that reused
    /// the pid in between would watch the wrong one, and is not kept.
    pub fn new(id: ProcessId) -> Watch {
        let pidfd = match sys::pidfd_open(id.pid) {
            Ok(fd) if stat(id.pid).is_some_and(|s| s.start == id.start) => Some(fd),
            Ok(_) => None,
            Err(err) => {
                if err.raw_os_error() != Some(libc::ESRCH) {
                    log::warn!("pidfd_open({}) failed: {err}; polling /proc", id.pid);
                }
                None
            }
        };
        Watch { id, pidfd }
    }

    /// The process watched.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// The pidfd to poll for the exit; `None` means [`Watch::exited`] must
    /// be asked now and then.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Whether the process has exited.
    pub fn exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => sys::readable_now(fd.as_fd()).unwrap_or(false),
            None => !self.id.is_running(),
        }
    }

    /// Sends `signal` to the process, never to another that took its pid.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
            None if self.id.is_running() => sys::kill(self.id.pid, signal),
            None => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "4242 (ix) echo (x)) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 3 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start: 987654
            })
        );
        let zombie = "7 (sh) Z 1 7 7 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(parse_stat(zombie).unwrap().exited());
    }

    #[test]
    fn truncated_or_corrupt_stat_lines_are_refused() {
        let full = "1 (init) S 0 1 1 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 12 0 0";
        // Cut anywhere before the start time (field 22): nothing to read.
        let field_22 = full.find(" 12 ").unwrap();
        for cut in 0..=field_22 {
            assert_eq!(parse_stat(&full[..cut]), None, "{:?}", &full[..cut]);
        }
        assert_eq!(parse_stat("1 init S 0"), None);
        assert_eq!(
            parse_stat("1 (init) SS 0 1 1 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 12"),
            None
        );
        assert_eq!(
            parse_stat("1 (init) S 0 1 1 0 -1 4 0 0 0 0 0 0 0 0 20 0 1 0 -12"),
            None
        );
    }

    #[test]
    fn this_process_is_running_and_a_reused_pid_is_not_it() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_running());
        let other = ProcessId {
            start: me.start + 1,
            ..me
        };
        assert!(!other.is_running(), "same pid, another start time");
        assert!(ProcessId::of(0).is_none());
        assert!(!boot_id().is_empty());
    }

    #[test]
    fn a_watch_sees_a_child_exit_and_signals_only_its_process() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        let watch = Watch::new(id);
        assert!(watch.fd().is_some());
        assert!(!watch.exited());
        watch.signal(libc::SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(watch.exited());
        assert!(!id.is_running());
        // A watch on a process that is not the one recorded has no pidfd
        // and reports it gone.
        let stale = Watch::new(ProcessId {
            pid: std::process::id(),
            start: 1,
        });
        assert!(stale.fd().is_none() && stale.exited());
        assert!(stale.signal(0).is_err());
    }
}
