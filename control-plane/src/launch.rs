//! Programs ixcpd starts as dataplanes (`launch`): the child process, its
//! captured output, and how to tell it exited.
//!
//! A launched program runs in its own process group (a terminal's Ctrl-C
//! to a foreground ixcpd does not reach it), with stdin on `/dev/null`,
//! stdout and stderr on non-blocking pipes that the daemon's poll loop
//! drains line by line into the dataplane's log, and the environment of
//! ixcpd plus `IX_SOCKET` (the API socket) and `IX_DATAPLANE` (the name
//! to register as). When the caller is not ixcpd's own user, the program
//! runs as the caller's uid and gid (supplementary groups dropped), so
//! `launch` never runs a program with more rights than its caller has.
//!
//! Exits are found by `waitpid(WNOHANG)` ([`LaunchedChild::try_exit`]),
//! called by the daemon on every turn of the loop; the loop wakes when a
//! pipe closes (the usual sign of an exit) and then every
//! [`crate::daemon::REAP_INTERVAL`] until the exit is collected.
//!
//! Known limit: the pipes end when ixcpd exits; a dataplane that writes
//! to stdout afterwards gets `EPIPE`. Re-adopting running dataplanes
//! after an ixcpd restart is future work.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};

use crate::config::{DATAPLANE_ENV, SOCKET_ENV};
use crate::sys;

/// Output lines a launched child keeps for error reports.
pub const TAIL_LINES: usize = 8;

/// Longest output line kept, bytes; longer lines are split.
pub const LINE_MAX: usize = 240;

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program path is not absolute.
    #[error("program {program:?} is not an absolute path (ixctl resolves it against PATH)")]
    RelativeProgram {
        /// What was given.
        program: String,
    },
    /// `fork`/`exec` failed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
}

/// What to start and as whom.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The dataplane's name (`IX_DATAPLANE`).
    pub name: &'a str,
    /// The API socket (`IX_SOCKET`).
    pub socket: &'a Path,
    /// Absolute path of the program.
    pub program: &'a str,
    /// Its arguments.
    pub args: &'a [String],
    /// Its working directory.
    pub cwd: &'a Path,
    /// Uid and gid to run as, when not ixcpd's own.
    pub identity: Option<(u32, u32)>,
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One pipe, assembled into lines.
#[derive(Debug)]
struct LinePipe<R> {
    pipe: Option<R>,
    partial: Vec<u8>,
}

impl<R: Read + AsFd> LinePipe<R> {
    fn new(pipe: R) -> LinePipe<R> {
        if let Err(err) = sys::set_fd_nonblocking(pipe.as_fd()) {
            log::warn!("cannot make a child's pipe non-blocking: {err}");
        }
        LinePipe {
            pipe: Some(pipe),
            partial: Vec::new(),
        }
    }

    /// Reads what is there; complete lines go to `out`. At end of file the
    /// pipe is closed and a last partial line flushed.
    fn drain(&mut self, out: &mut Vec<String>) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    flush_line(&mut self.partial, out);
                    return;
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            flush_line(&mut self.partial, out);
                        } else {
                            self.partial.push(b);
                            if self.partial.len() >= LINE_MAX {
                                flush_line(&mut self.partial, out);
                            }
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    log::debug!("reading a child's output failed: {err}");
                    self.pipe = None;
                    flush_line(&mut self.partial, out);
                    return;
                }
            }
        }
    }
}

/// Moves a non-empty partial line to `out`.
fn flush_line(partial: &mut Vec<u8>, out: &mut Vec<String>) {
    if !partial.is_empty() {
        out.push(String::from_utf8_lossy(partial).into_owned());
        partial.clear();
    }
}

/// A program ixcpd started.
#[derive(Debug)]
pub struct LaunchedChild {
    child: Child,
    stdout: LinePipe<ChildStdout>,
    stderr: LinePipe<ChildStderr>,
    tail: VecDeque<String>,
}

impl LaunchedChild {
    /// Starts `spec.program`.
    pub fn spawn(spec: &Spec<'_>) -> Result<LaunchedChild, LaunchError> {
        if !Path::new(spec.program).is_absolute() {
            return Err(LaunchError::RelativeProgram {
                program: spec.program.to_owned(),
            });
        }
        let mut cmd = Command::new(spec.program);
        cmd.args(spec.args)
            .current_dir(spec.cwd)
            .env(SOCKET_ENV, spec.socket)
            .env(DATAPLANE_ENV, spec.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        sys::unblock_signals_on_exec(&mut cmd);
        if let Some((uid, gid)) = spec.identity {
            // std drops supplementary groups when root changes uid.
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: spec.program.to_owned(),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        Ok(LaunchedChild {
            child,
            stdout: LinePipe::new(stdout),
            stderr: LinePipe::new(stderr),
            tail: VecDeque::new(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Descriptors to poll for output (those still open).
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        let mut fds = Vec::with_capacity(2);
        if let Some(p) = &self.stdout.pipe {
            fds.push(p.as_fd());
        }
        if let Some(p) = &self.stderr.pipe {
            fds.push(p.as_fd());
        }
        fds
    }

    /// True when both pipes reached end of file (it has probably exited).
    pub fn output_closed(&self) -> bool {
        self.stdout.pipe.is_none() && self.stderr.pipe.is_none()
    }

    /// Reads the output that is there: complete lines, each with its
    /// stream. The latest [`TAIL_LINES`] are also kept for [`Self::tail`].
    pub fn read_output(&mut self) -> Vec<(Stream, String)> {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        self.stdout.drain(&mut lines);
        out.extend(lines.drain(..).map(|l| (Stream::Stdout, l)));
        self.stderr.drain(&mut lines);
        out.extend(lines.drain(..).map(|l| (Stream::Stderr, l)));
        for (_, line) in &out {
            self.tail.push_back(line.clone());
            if self.tail.len() > TAIL_LINES {
                self.tail.pop_front();
            }
        }
        out
    }

    /// The latest output lines, oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }

    /// Its exit status, if it has exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(status) => status,
            Err(err) => {
                log::warn!("waitpid({}) failed: {err}", self.child.id());
                None
            }
        }
    }

    /// Sends SIGKILL (harmless if it already exited).
    pub fn kill(&mut self) {
        if let Err(err) = self.child.kill() {
            log::debug!("SIGKILL to {} failed: {err}", self.child.id());
        }
    }
}

/// An exit status for people: `exit code 3`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spawn(script: &str) -> LaunchedChild {
        let args = vec!["-c".to_owned(), script.to_owned()];
        LaunchedChild::spawn(&Spec {
            name: "t",
            socket: Path::new("/tmp/none.sock"),
            program: "/bin/sh",
            args: &args,
            cwd: Path::new("/"),
            identity: None,
        })
        .unwrap()
    }

    fn wait_exit(child: &mut LaunchedChild) -> (ExitStatus, Vec<(Stream, String)>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        loop {
            lines.extend(child.read_output());
            if let Some(status) = child.try_exit() {
                lines.extend(child.read_output());
                return (status, lines);
            }
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn output_is_captured_by_line_and_stream_with_the_environment_set() {
        let mut child =
            spawn("echo \"$IX_DATAPLANE $IX_SOCKET\"; pwd; echo oops >&2; printf tail; exit 3");
        let (status, lines) = wait_exit(&mut child);
        assert_eq!(describe(status), "exit code 3");
        assert!(
            lines.contains(&(Stream::Stdout, "t /tmp/none.sock".into())),
            "{lines:?}"
        );
        assert!(lines.contains(&(Stream::Stdout, "/".into())), "{lines:?}");
        assert!(
            lines.contains(&(Stream::Stderr, "oops".into())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&(Stream::Stdout, "tail".into())),
            "{lines:?}"
        );
        assert!(child.output_closed());
        assert_eq!(child.tail().count(), 4);
    }

    #[test]
    fn children_start_with_no_signal_blocked() {
        let _blocked = sys::signal_fd(&[libc::SIGUSR2]).unwrap();
        let mut child = spawn("grep SigBlk /proc/self/status");
        let (_, lines) = wait_exit(&mut child);
        assert_eq!(
            lines,
            [(Stream::Stdout, "SigBlk:\t0000000000000000".to_owned())]
        );
    }

    #[test]
    fn long_lines_are_split_and_the_tail_is_bounded() {
        let mut child = spawn("head -c 1000 /dev/zero | tr '\\0' x; echo; seq 1 20");
        let (_, lines) = wait_exit(&mut child);
        assert!(lines.iter().all(|(_, l)| l.len() <= LINE_MAX));
        assert_eq!(lines.iter().filter(|(_, l)| l.starts_with('x')).count(), 5);
        let tail: Vec<&str> = child.tail().collect();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last(), Some(&"20"));
    }

    #[test]
    fn killed_children_report_the_signal_and_relative_programs_are_refused() {
        let mut child = spawn("sleep 30");
        child.kill();
        let (status, _) = wait_exit(&mut child);
        assert_eq!(describe(status), "killed by signal 9");
        let err = LaunchedChild::spawn(&Spec {
            name: "t",
            socket: Path::new("/tmp/none.sock"),
            program: "sh",
            args: &[],
            cwd: Path::new("/"),
            identity: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
    }
}
