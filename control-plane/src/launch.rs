//! Programs ixcpd starts as dataplanes (`launch`): the child process, its
//! output, and how to tell it exited — also after an ixcpd restart, when
//! the program is no longer a child of the ixcpd that watches it.
//!
//! A launched program runs in its own process group (a terminal's Ctrl-C
//! to a foreground ixcpd does not reach it), with stdin on `/dev/null`
//! and the environment of ixcpd plus `IX_SOCKET` (the API socket) and
//! `IX_DATAPLANE` (the name to register as). When the caller is not
//! ixcpd's own user, the program runs as the caller's uid and gid
//! (supplementary groups dropped), so `launch` never runs a program with
//! more rights than its caller has.
//!
//! # Output
//!
//! Stdout and stderr go to two files ixcpd creates for it,
//! `<socket>.logs/NAME.stdout` and `NAME.stderr` (mode 0600; the program
//! gets descriptors opened for appending, so it needs no rights on the
//! directory). ixcpd reads them as they grow — woken by inotify on the
//! directory — line by line into the dataplane's log (`ixctl logs`), and
//! removes them once the program has exited and its last lines are read.
//! Files rather than pipes because a pipe ends with the ixcpd that reads
//! it: after an ixcpd restart, a program writing to a pipe whose reader
//! died gets `EPIPE` (and a Rust program panics in `println!`). Files
//! outlive ixcpd, so a restarted ixcpd picks up the output of the programs
//! it re-adopts from the start of their files, and nothing is lost in
//! between. A file is truncated once ixcpd has read past
//! [`LOG_FILE_MAX`] bytes; a line written between that last read and the
//! truncation is lost (the cost of not running a log daemon).
//!
//! # Exit
//!
//! Each program is watched through a pidfd ([`crate::process::Watch`]),
//! polled by the daemon's loop. For a program this ixcpd started, the
//! exit status comes from `waitpid`; a program an earlier ixcpd started
//! ([`LaunchedChild::adopt`]) is not this one's child, so its status is
//! unknown — only that it exited.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::config::{DATAPLANE_ENV, SOCKET_ENV};
use crate::process::{ProcessId, Watch};
use crate::sys;

/// Output lines a launched child keeps for error reports.
pub const TAIL_LINES: usize = 8;

/// Longest output line kept, bytes; longer lines are split.
pub const LINE_MAX: usize = 240;

/// Bytes ixcpd lets an output file reach before truncating it (after
/// reading everything in it).
pub const LOG_FILE_MAX: u64 = 1 << 20;

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program path is not absolute.
    #[error("program {program:?} is not an absolute path (ixctl resolves it against PATH)")]
    RelativeProgram {
        /// What was given.
        program: String,
    },
    /// Its output files could not be created.
    #[error("cannot create the output file {path:?}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
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

/// The output files of the program launched for a dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFiles {
    /// Its stdout.
    pub stdout: PathBuf,
    /// Its stderr.
    pub stderr: PathBuf,
}

impl LogFiles {
    /// The files of dataplane `name` in directory `dir`.
    pub fn of(dir: &Path, name: &str) -> LogFiles {
        LogFiles {
            stdout: dir.join(format!("{name}.stdout")),
            stderr: dir.join(format!("{name}.stderr")),
        }
    }

    /// Removes both files (gone already is fine).
    pub fn remove(&self) {
        for path in [&self.stdout, &self.stderr] {
            if let Err(err) = std::fs::remove_file(path) {
                if err.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot remove {path:?}: {err}");
                }
            }
        }
    }
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
    /// Where its output goes.
    pub logs: &'a LogFiles,
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One output file, read as it grows and assembled into lines.
#[derive(Debug)]
struct LogTail {
    file: Option<File>,
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    fn open(path: &Path) -> LogTail {
        // Writable too, to truncate it once read.
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => Some(file),
            Err(err) => {
                log::warn!("cannot read {path:?}: {err}");
                None
            }
        };
        LogTail {
            file,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Reads what was added since the last call; complete lines go to
    /// `out`. A file past [`LOG_FILE_MAX`] is truncated once read.
    fn drain(&mut self, out: &mut Vec<String>) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let len = match file.metadata() {
            Ok(meta) => meta.len(),
            Err(_) => return,
        };
        if len < self.offset {
            // Truncated by someone else: start over.
            self.offset = 0;
        }
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = [0u8; 8192];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.offset += n as u64;
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
                Err(err) => {
                    log::debug!("reading a child's output failed: {err}");
                    break;
                }
            }
        }
        if self.offset >= LOG_FILE_MAX && file.set_len(0).is_ok() {
            self.offset = 0;
        }
    }

    /// Reads what is left, then the last line even without its newline.
    fn finish(&mut self, out: &mut Vec<String>) {
        self.drain(out);
        flush_line(&mut self.partial, out);
    }
}

/// Moves a non-empty partial line to `out`.
fn flush_line(partial: &mut Vec<u8>, out: &mut Vec<String>) {
    if !partial.is_empty() {
        out.push(String::from_utf8_lossy(partial).into_owned());
        partial.clear();
    }
}

/// How a launched program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Its status, from `waitpid` (it was this ixcpd's child).
    Status(ExitStatus),
    /// It exited, but it was an earlier ixcpd's child: no status.
    Unknown,
}

/// A program ixcpd started (this one, or an earlier one).
#[derive(Debug)]
pub struct LaunchedChild {
    id: ProcessId,
    /// `Some` when this ixcpd started it: `waitpid` reaps it.
    child: Option<Child>,
    watch: Watch,
    logs: LogFiles,
    stdout: LogTail,
    stderr: LogTail,
    tail: VecDeque<String>,
}

/// Creates `path` afresh: a new file, not the old one truncated, so that
/// a program still writing to an earlier file of that name (one that
/// outlived its dataplane) does not write into this one.
fn create_log(path: &Path) -> Result<(), LaunchError> {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != io::ErrorKind::NotFound {
            log::warn!("cannot remove the old {path:?}: {err}");
        }
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| LaunchError::LogFile {
            path: path.to_owned(),
            source,
        })
}

fn append_to(path: &Path) -> Result<File, LaunchError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| LaunchError::LogFile {
            path: path.to_owned(),
            source,
        })
}

impl LaunchedChild {
    /// Starts `spec.program`, its output in fresh (truncated) files.
    pub fn spawn(spec: &Spec<'_>) -> Result<LaunchedChild, LaunchError> {
        if !Path::new(spec.program).is_absolute() {
            return Err(LaunchError::RelativeProgram {
                program: spec.program.to_owned(),
            });
        }
        create_log(&spec.logs.stdout)?;
        create_log(&spec.logs.stderr)?;
        let stdout = append_to(&spec.logs.stdout)?;
        let stderr = append_to(&spec.logs.stderr)?;
        let mut cmd = Command::new(spec.program);
        cmd.args(spec.args)
            .current_dir(spec.cwd)
            .env(SOCKET_ENV, spec.socket)
            .env(DATAPLANE_ENV, spec.name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        sys::unblock_signals_on_exec(&mut cmd);
        if let Some((uid, gid)) = spec.identity {
            // std drops supplementary groups when root changes uid.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(|source| {
            spec.logs.remove();
            LaunchError::Spawn {
                program: spec.program.to_owned(),
                source,
            }
        })?;
        // Unreaped, the child keeps its /proc entry: its identity can be
        // read even if it already exited.
        let id = ProcessId::of(child.id()).unwrap_or(ProcessId {
            pid: child.id(),
            start: 0,
        });
        Ok(LaunchedChild::with(id, Some(child), spec.logs.clone()))
    }

    /// Takes over the watch of a program an earlier ixcpd launched, and
    /// reads its output files from their start.
    pub fn adopt(id: ProcessId, logs: LogFiles) -> LaunchedChild {
        LaunchedChild::with(id, None, logs)
    }

    fn with(id: ProcessId, child: Option<Child>, logs: LogFiles) -> LaunchedChild {
        LaunchedChild {
            id,
            child,
            watch: Watch::new(id),
            stdout: LogTail::open(&logs.stdout),
            stderr: LogTail::open(&logs.stderr),
            logs,
            tail: VecDeque::new(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// Its pid and start time.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// Its output files.
    pub fn logs(&self) -> &LogFiles {
        &self.logs
    }

    /// The pidfd to poll for its exit (`None`: ask [`Self::try_exit`]
    /// now and then).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.watch.fd()
    }

    /// Reads the output written since the last call: complete lines, each
    /// with its stream. The latest [`TAIL_LINES`] are also kept for
    /// [`Self::tail`].
    pub fn read_output(&mut self) -> Vec<(Stream, String)> {
        self.collect(false)
    }

    /// Reads the rest of the output, last partial lines included; for
    /// when the program has exited.
    pub fn read_last_output(&mut self) -> Vec<(Stream, String)> {
        self.collect(true)
    }

    fn collect(&mut self, last: bool) -> Vec<(Stream, String)> {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        for (stream, tail) in [
            (Stream::Stdout, &mut self.stdout),
            (Stream::Stderr, &mut self.stderr),
        ] {
            if last {
                tail.finish(&mut lines);
            } else {
                tail.drain(&mut lines);
            }
            out.extend(lines.drain(..).map(|l| (stream, l)));
        }
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

    /// How it ended, if it has (reaps it when it is this ixcpd's child).
    pub fn try_exit(&mut self) -> Option<Exit> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(status) => status.map(Exit::Status),
                Err(err) => {
                    log::warn!("waitpid({}) failed: {err}", self.id.pid);
                    None
                }
            },
            None => self.watch.exited().then_some(Exit::Unknown),
        }
    }

    /// Removes its output files, unless they are no longer its own (a
    /// program launched later under the same name made new ones).
    pub fn remove_logs(&self) {
        for (path, tail) in [
            (&self.logs.stdout, &self.stdout),
            (&self.logs.stderr, &self.stderr),
        ] {
            let Some(file) = &tail.file else {
                continue;
            };
            let same = match (file.metadata(), std::fs::metadata(path)) {
                (Ok(ours), Ok(there)) => (ours.dev(), ours.ino()) == (there.dev(), there.ino()),
                _ => false,
            };
            if same {
                if let Err(err) = std::fs::remove_file(path) {
                    log::warn!("cannot remove {path:?}: {err}");
                }
            }
        }
    }

    /// Sends SIGKILL (harmless if it already exited).
    pub fn kill(&mut self) {
        let sent = match &mut self.child {
            Some(child) => child.kill(),
            None => self.watch.signal(libc::SIGKILL),
        };
        if let Err(err) = sent {
            log::debug!("SIGKILL to {} failed: {err}", self.id.pid);
        }
    }
}

/// An exit for people: `exit code 3`, `killed by signal 9`.
pub fn describe(exit: Exit) -> String {
    match exit {
        Exit::Status(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => status.to_string(),
        },
        Exit::Unknown => "status unknown: an earlier ixcpd started it".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn spawn_in(dir: &Path, script: &str) -> LaunchedChild {
        let args = vec!["-c".to_owned(), script.to_owned()];
        LaunchedChild::spawn(&Spec {
            name: "t",
            socket: Path::new("/tmp/none.sock"),
            program: "/bin/sh",
            args: &args,
            cwd: Path::new("/"),
            identity: None,
            logs: &LogFiles::of(dir, "t"),
        })
        .unwrap()
    }

    fn wait_exit(child: &mut LaunchedChild) -> (Exit, Vec<(Stream, String)>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        loop {
            lines.extend(child.read_output());
            if let Some(exit) = child.try_exit() {
                lines.extend(child.read_last_output());
                return (exit, lines);
            }
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn output_is_captured_by_line_and_stream_with_the_environment_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_in(
            dir.path(),
            "echo \"$IX_DATAPLANE $IX_SOCKET\"; pwd; echo oops >&2; printf tail; exit 3",
        );
        let (exit, lines) = wait_exit(&mut child);
        assert_eq!(describe(exit), "exit code 3");
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
        assert_eq!(child.tail().count(), 4);
        child.remove_logs();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn children_start_with_no_signal_blocked() {
        let _blocked = sys::signal_fd(&[libc::SIGUSR2]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_in(dir.path(), "grep SigBlk /proc/self/status");
        let (_, lines) = wait_exit(&mut child);
        assert_eq!(
            lines,
            [(Stream::Stdout, "SigBlk:\t0000000000000000".to_owned())]
        );
    }

    #[test]
    fn long_lines_are_split_and_the_tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_in(
            dir.path(),
            "head -c 1000 /dev/zero | tr '\\0' x; echo; seq 1 20",
        );
        let (_, lines) = wait_exit(&mut child);
        assert!(lines.iter().all(|(_, l)| l.len() <= LINE_MAX));
        assert_eq!(lines.iter().filter(|(_, l)| l.starts_with('x')).count(), 5);
        let tail: Vec<&str> = child.tail().collect();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last(), Some(&"20"));
    }

    #[test]
    fn killed_children_report_the_signal_and_relative_programs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_in(dir.path(), "sleep 30");
        assert!(child.fd().is_some(), "watched through a pidfd");
        child.kill();
        let (exit, _) = wait_exit(&mut child);
        assert_eq!(describe(exit), "killed by signal 9");
        let err = LaunchedChild::spawn(&Spec {
            name: "t",
            socket: Path::new("/tmp/none.sock"),
            program: "sh",
            args: &[],
            cwd: Path::new("/"),
            identity: None,
            logs: &LogFiles::of(dir.path(), "t"),
        })
        .unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
    }

    #[test]
    fn an_adopted_program_is_read_from_the_start_and_its_exit_seen() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::of(dir.path(), "t");
        // A program "an earlier ixcpd" started: here a child of the test,
        // which the adopting side does not reap.
        let mut first = spawn_in(dir.path(), "echo before; sleep 30");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&logs.stdout).unwrap().len() == 0 {
            assert!(Instant::now() < deadline, "no output");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut adopted = LaunchedChild::adopt(first.id(), logs.clone());
        assert_eq!(adopted.read_output(), [(Stream::Stdout, "before".into())]);
        assert_eq!(adopted.try_exit(), None);
        adopted.kill();
        // Seen through the pidfd while still a zombie its parent reaps.
        let (exit, _) = wait_exit(&mut adopted);
        assert_eq!(exit, Exit::Unknown);
        assert_eq!(
            describe(exit),
            "status unknown: an earlier ixcpd started it"
        );
        let (status, _) = wait_exit(&mut first);
        assert_eq!(describe(status), "killed by signal 9");
    }

    #[test]
    fn a_file_read_past_the_limit_is_truncated_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let line = vec![b'y'; 99];
        for _ in 0..(LOG_FILE_MAX / 100 + 1) {
            writer.write_all(&line).unwrap();
            writer.write_all(b"\n").unwrap();
        }
        let mut tail = LogTail::open(&path);
        let mut out = Vec::new();
        tail.drain(&mut out);
        assert_eq!(out.len() as u64, LOG_FILE_MAX / 100 + 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "truncated");
        // The writer appends at the new end; nothing after is lost.
        writer.write_all(b"after\npart").unwrap();
        out.clear();
        tail.drain(&mut out);
        assert_eq!(out, ["after"]);
        tail.finish(&mut out);
        assert_eq!(out, ["after", "part"]);
    }
}
