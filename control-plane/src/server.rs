//! ixcpd's API server: the Unix socket, who may use it, and a
//! single-threaded `poll` loop serving many clients.
//!
//! # The socket
//!
//! [`Server::bind`] creates the socket's directory if needed, then looks
//! at the path: a socket that accepts a connection means another ixcpd is
//! running (refused: "ixcpd already running on …"); a socket that refuses
//! is stale, left by a daemon that died, and is replaced; anything else
//! (a file, a socket of another kind) is left alone and refused. The new
//! socket gets the configured mode and group. On drop the server removes
//! the socket, but only if the path still names the socket it created.
//!
//! # Who may connect
//!
//! Every connection's peer credentials are read with `SO_PEERCRED` and
//! `SO_PEERGROUPS`. Root, ixcpd's own user, and members of the socket
//! file's group are served; anyone else receives one `unauthorised` error
//! frame and is disconnected. The check holds even when the socket's mode
//! lets everyone connect.
//!
//! # The loop
//!
//! One thread polls the stop fd, the listener and every connection. A
//! connection is read only while it has no response waiting to be sent,
//! so a client that does not read its responses holds one response in
//! memory and no more, and never stalls others. A connection whose
//! request is answered later (a `launch` waiting for its program to
//! register) is not read either until that answer is queued. The
//! daemon's wake-up descriptors are polled too — pidfds of watched
//! processes, inotify on launched programs' output — and its deadlines
//! (stops, launches) bound the wait. Each readable connection gets at
//! most [`READ_BATCH`] requests per turn. A malformed frame is answered
//! with an error and counted; the connection goes on. A closed
//! connection that was a dataplane's lifeline releases that dataplane.
//! Descriptors sent with a request are refused (and closed) unless the
//! request is `reattach`, which may carry one.
//!
//! A lifeline also carries commands to its dataplane (queued like
//! responses, with their descriptors, and sent after the turn's requests
//! were served) and the dataplane's answers, which the server recognises
//! (see [`crate::proto`]) and hands to the daemon instead of answering
//! them; a malformed one is counted with the malformed frames. A `cores`
//! request that sent a command is answered when the dataplane answers,
//! like a `launch`.
//!
//! # State
//!
//! [`Server::bind`] starts the daemon from the state file beside the
//! socket (see [`crate::state`]) once it holds the socket, so two daemons
//! never read or write one state file. On drop, the state file and the
//! output directory are removed if no dataplane is left; otherwise they
//! stay for the next ixcpd, and the dataplanes keep running.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::daemon::{Caller, ConnId, Daemon};
use crate::proto::{
    self, ApiError, ErrorCode, Outcome, Request, ResponseFrame, MAX_FRAME, VERSION,
};
use crate::state::StateError;
use crate::sys::{self, Listener, PeerCred, SeqPacket};

/// Most clients served at once; more are told `busy` and disconnected.
pub const MAX_CLIENTS: usize = 256;
/// Most requests read from one connection per turn of the loop.
pub const READ_BATCH: usize = 16;
/// Listen backlog.
const BACKLOG: u32 = 128;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another ixcpd answers on the socket.
    #[error("ixcpd already running on {path:?} (stop it first, or use another --socket)")]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket ixcpd may replace.
    #[error("{path:?} exists and is {what}; refusing to replace it (remove it, or use another --socket)")]
    PathTaken {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// The books an earlier ixcpd left cannot be taken back.
    #[error(transparent)]
    State(#[from] StateError),
    /// A system call failed.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One frame waiting to be sent.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

#[derive(Debug)]
struct Conn {
    sock: SeqPacket,
    cred: PeerCred,
    outbox: VecDeque<Outgoing>,
    /// The id of a request whose answer the daemon deferred (`launch`);
    /// nothing more is read from the connection until it is sent.
    waiting: Option<u64>,
}

/// What happened to a connection during a turn.
#[derive(Debug, PartialEq, Eq)]
enum Status {
    Open,
    Closed,
}

/// The API server: the listening socket, the connections and the daemon
/// state they drive.
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    path: PathBuf,
    /// Device and inode of the socket file this server created.
    identity: (u64, u64),
    socket_gid: u32,
    own_uid: u32,
    daemon: Daemon,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    buf: Vec<u8>,
}

/// Checks what is at `path` and removes it if it is a stale socket.
fn clear_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_err("cannot inspect", path)(err)),
    };
    if !meta.file_type().is_socket() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a socket"
        };
        return Err(ServerError::PathTaken {
            path: path.to_owned(),
            what,
        });
    }
    match SeqPacket::connect(path, Some(Duration::from_secs(1))) {
        Ok(_) => Err(ServerError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
            log::warn!("replacing stale socket {path:?} (no daemon listens on it)");
            match fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    Err(io_err("cannot remove stale socket", path)(err))
                }
                _ => Ok(()),
            }
        }
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EPROTOTYPE) => Err(ServerError::PathTaken {
            path: path.to_owned(),
            what: "a socket of another kind, in use",
        }),
        // The socket exists and someone listens but could not take us
        // (EAGAIN: backlog full): a live daemon.
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(ServerError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(err) => Err(io_err("cannot probe existing socket", path)(err)),
    }
}

impl Server {
    /// Creates the API socket named by `config.api` and a daemon giving out
    /// what `config` lists.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let path = config.api.socket.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(io_err("cannot create socket directory", dir))?;
                log::info!("created {dir:?}");
            }
        }
        clear_stale_socket(&path)?;
        let listener = Listener::bind(&path, BACKLOG).map_err(|err| match err.raw_os_error() {
            Some(libc::EADDRINUSE) => ServerError::AlreadyRunning { path: path.clone() },
            _ => io_err("cannot bind", &path)(err),
        })?;
        // From here on a failure must not leave our socket file behind.
        let cleanup = |err: ServerError| {
            let _ = fs::remove_file(&path);
            err
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(config.api.mode))
            .map_err(io_err("cannot set the mode of", &path))
            .map_err(cleanup)?;
        if let Some(group) = &config.api.group {
            std::os::unix::fs::chown(&path, None, Some(group.gid))
                .map_err(io_err("cannot set the group of", &path))
                .map_err(cleanup)?;
        }
        let meta = fs::symlink_metadata(&path)
            .map_err(io_err("cannot inspect", &path))
            .map_err(cleanup)?;
        let daemon = Daemon::new(config)
            .map_err(ServerError::State)
            .map_err(cleanup)?;
        log::info!(
            "listening on {path:?} (mode {:04o}, group {})",
            meta.mode() & 0o7777,
            meta.gid()
        );
        Ok(Server {
            listener,
            identity: (meta.dev(), meta.ino()),
            socket_gid: meta.gid(),
            own_uid: sys::euid(),
            path,
            daemon,
            conns: BTreeMap::new(),
            next_conn: 1,
            buf: vec![0; MAX_FRAME],
        })
    }

    /// The API socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The daemon state (for inspection).
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Serves until `stop` becomes readable (or its writer closes):
    /// a signalfd in `ixcpd`, a pipe in tests.
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Result<(), ServerError> {
        let mut pollfds: Vec<libc::pollfd> = Vec::new();
        let mut ids: Vec<ConnId> = Vec::new();
        loop {
            pollfds.clear();
            ids.clear();
            let entry = |fd: BorrowedFd<'_>, events| libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            };
            pollfds.push(entry(stop, libc::POLLIN));
            pollfds.push(entry(self.listener.as_fd(), libc::POLLIN));
            for (id, conn) in &self.conns {
                let events = if !conn.outbox.is_empty() {
                    libc::POLLOUT
                } else if conn.waiting.is_some() {
                    0
                } else {
                    libc::POLLIN
                };
                pollfds.push(entry(conn.sock.as_fd(), events));
                ids.push(*id);
            }
            let conns_end = pollfds.len();
            for fd in self.daemon.wake_fds() {
                pollfds.push(entry(fd, libc::POLLIN));
            }
            let timeout = self.daemon.next_deadline().map_or(-1, |deadline| {
                let wait = deadline.saturating_duration_since(Instant::now());
                // Round up so the deadline has passed when we wake.
                i32::try_from(wait.as_millis() + 1).unwrap_or(i32::MAX)
            });
            sys::poll(&mut pollfds, timeout).map_err(io_err("poll failed serving", &self.path))?;
            if pollfds[0].revents != 0 {
                log::info!("stopping: shutting down the API on {:?}", self.path);
                return Ok(());
            }
            for (pfd, id) in pollfds[2..conns_end].iter().zip(&ids) {
                if pfd.revents == 0 {
                    continue;
                }
                if self.serve_conn(*id, pfd.revents) == Status::Closed {
                    self.close(*id);
                }
            }
            // After the connections: a lifeline that closed is seen as
            // such before the pidfd of the same exit.
            self.daemon.tick(Instant::now());
            self.send_finished();
            if pollfds[1].revents != 0 {
                self.accept_all();
            }
        }
    }

    fn authorised(&self, sock: &SeqPacket, cred: &PeerCred) -> bool {
        if cred.uid == 0 || cred.uid == self.own_uid || cred.gid == self.socket_gid {
            return true;
        }
        match sock.peer_groups() {
            Ok(groups) => groups.contains(&self.socket_gid),
            Err(err) => {
                log::warn!("cannot read the groups of pid {}: {err}", cred.pid);
                false
            }
        }
    }

    /// Sends one connection-level error and lets the socket drop.
    fn refuse(&mut self, sock: SeqPacket, code: ErrorCode, message: String) {
        self.daemon.counters.refused += 1;
        let frame = ResponseFrame {
            v: VERSION,
            id: None,
            outcome: Outcome::Error(ApiError::new(code, message)),
        };
        if let Err(err) = sock.send(&proto::encode_response(&frame), &[]) {
            log::debug!("refused peer did not take its error: {err}");
        }
        // Closing with unread requests would reset the peer's connection
        // ahead of the error it should read first: discard what it sent.
        let mut fds = Vec::new();
        for _ in 0..READ_BATCH {
            if sock.recv(&mut self.buf, &mut fds).is_err() {
                break;
            }
        }
    }

    fn accept_all(&mut self) {
        for _ in 0..BACKLOG {
            let sock = match self.listener.accept() {
                Ok(Some(sock)) => sock,
                Ok(None) => return,
                Err(err) => {
                    // EMFILE and friends: log, and retry on the next turn.
                    log::error!("accept on {:?} failed: {err}", self.path);
                    return;
                }
            };
            let cred = match sock.peer_cred() {
                Ok(cred) => cred,
                Err(err) => {
                    log::warn!("cannot read peer credentials: {err}; disconnecting");
                    continue;
                }
            };
            if !self.authorised(&sock, &cred) {
                log::warn!(
                    "refused pid {} (uid {}, gid {}): not root, uid {}, or in group {}",
                    cred.pid,
                    cred.uid,
                    cred.gid,
                    self.own_uid,
                    self.socket_gid
                );
                let message = format!(
                    "unauthorised: uid {} may not use ixcpd (it admits root, uid {}, and members \
                     of group {}, the socket's group)",
                    cred.uid, self.own_uid, self.socket_gid
                );
                self.refuse(sock, ErrorCode::Unauthorised, message);
                continue;
            }
            if self.conns.len() >= MAX_CLIENTS {
                log::warn!("refused pid {}: {MAX_CLIENTS} clients already", cred.pid);
                let message =
                    format!("busy: ixcpd serves at most {MAX_CLIENTS} clients at once; try again");
                self.refuse(sock, ErrorCode::Busy, message);
                continue;
            }
            let id = ConnId(self.next_conn);
            self.next_conn += 1;
            log::debug!(
                "client {} connected: pid {} uid {}",
                id.0,
                cred.pid,
                cred.uid
            );
            self.conns.insert(
                id,
                Conn {
                    sock,
                    cred,
                    outbox: VecDeque::new(),
                    waiting: None,
                },
            );
            self.daemon.counters.clients = self.conns.len() as u32;
        }
    }

    /// Queues the answers the daemon finished (launches) on the
    /// connections that wait for them.
    fn send_finished(&mut self) {
        self.send_commands();
        for (id, answer) in self.daemon.take_finished() {
            let Some(conn) = self.conns.get_mut(&id) else {
                log::debug!("client {} left before its answer was ready", id.0);
                continue;
            };
            let Some(request_id) = conn.waiting.take() else {
                log::warn!("client {}: an answer nobody waits for; dropped", id.0);
                continue;
            };
            let outcome = match answer.outcome {
                Ok(reply) => Outcome::Ok(reply),
                Err(err) => Outcome::Error(err),
            };
            conn.outbox.push_back(Outgoing {
                bytes: proto::encode_response(&ResponseFrame {
                    v: VERSION,
                    id: Some(request_id),
                    outcome,
                }),
                fds: answer.fds,
            });
            if self.flush(id) == Status::Closed {
                self.close(id);
            }
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            log::debug!("client {} (pid {}) disconnected", id.0, conn.cred.pid);
        }
        self.daemon.counters.clients = self.conns.len() as u32;
        self.daemon.disconnected(id);
    }

    /// Handles readiness on one connection.
    fn serve_conn(&mut self, id: ConnId, revents: libc::c_short) -> Status {
        let hangup = revents & (libc::POLLHUP | libc::POLLERR) != 0;
        if hangup && self.conns.get(&id).is_some_and(|c| c.waiting.is_some()) {
            // Gone while its launch goes on; the launch itself continues.
            return Status::Closed;
        }
        let pending = self.conns.get(&id).is_some_and(|c| !c.outbox.is_empty());
        if pending && (revents & libc::POLLOUT != 0 || hangup) {
            if self.flush(id) == Status::Closed {
                return Status::Closed;
            }
            let still = self.conns.get(&id).is_some_and(|c| !c.outbox.is_empty());
            if hangup && still {
                // Gone without reading its answer.
                return Status::Closed;
            }
        }
        if revents & libc::POLLIN != 0 || hangup {
            return self.read(id);
        }
        Status::Open
    }

    /// Sends queued frames until the socket would block.
    fn flush(&mut self, id: ConnId) -> Status {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Status::Closed;
        };
        while let Some(out) = conn.outbox.front() {
            let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
            match conn.sock.send(&out.bytes, &fds) {
                Ok(()) => {
                    conn.outbox.pop_front();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::debug!("client {}: send failed: {err}", id.0);
                    return Status::Closed;
                }
            }
        }
        Status::Open
    }

    /// Reads and answers up to [`READ_BATCH`] requests, stopping as soon as
    /// an answer cannot be sent right away.
    fn read(&mut self, id: ConnId) -> Status {
        for _ in 0..READ_BATCH {
            let Some(conn) = self.conns.get_mut(&id) else {
                return Status::Closed;
            };
            if !conn.outbox.is_empty() || conn.waiting.is_some() {
                return Status::Open;
            }
            let mut fds = Vec::new();
            let got = match conn.sock.recv(&mut self.buf, &mut fds) {
                Ok(got) => got,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::debug!("client {}: receive failed: {err}", id.0);
                    return Status::Closed;
                }
            };
            if got.len == 0 && fds.is_empty() && conn.sock.peer_closed().unwrap_or(true) {
                return Status::Closed;
            }
            if self.lifeline_answer(id, got, fds.len()) {
                // Answers take no descriptors; any sent are closed here.
                drop(fds);
                continue;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return Status::Closed;
            };
            let caller = Caller {
                conn: id,
                cred: conn.cred,
            };
            let (request_id, response) = self.answer(&caller, got, fds);
            let Some(conn) = self.conns.get_mut(&id) else {
                return Status::Closed;
            };
            match response {
                Some(response) => conn.outbox.push_back(response),
                None => {
                    conn.waiting = request_id;
                    return Status::Open;
                }
            }
            if self.flush(id) == Status::Closed {
                return Status::Closed;
            }
        }
        Status::Open
    }

    /// If the frame just received on `id` is a dataplane's answer to a
    /// command — on a lifeline, a frame with `cmd`, or, while a command
    /// is outstanding, anything that is not a request — hands it to the
    /// daemon (a malformed one as the reason it is) and returns true.
    /// Answers get no response.
    fn lifeline_answer(&mut self, id: ConnId, got: sys::Received, fds: usize) -> bool {
        if !self.daemon.is_lifeline(id) {
            return false;
        }
        let awaited = self.daemon.awaits_answer(id);
        let decoded = if got.truncated || got.len > MAX_FRAME {
            if !awaited {
                return false;
            }
            Err(format!(
                "a frame of {} bytes exceeds the {MAX_FRAME}-byte limit",
                got.len
            ))
        } else {
            let bytes = &self.buf[..got.len];
            let answer = proto::has_key(bytes, "cmd") || (awaited && !proto::is_request(bytes));
            if !answer {
                return false;
            }
            proto::decode_answer(bytes)
        };
        let decoded = match decoded {
            Ok(_) if fds > 0 => Err(format!(
                "an answer takes no file descriptors ({fds} received and closed)"
            )),
            other => other,
        };
        if let Err(why) = &decoded {
            self.daemon.counters.malformed += 1;
            log::warn!("client {}: malformed answer on a lifeline: {why}", id.0);
        }
        self.daemon.command_answered(id, decoded);
        true
    }

    /// Queues the commands the daemon has for dataplanes on their
    /// lifelines.
    fn send_commands(&mut self) {
        for (id, bytes, fds) in self.daemon.take_commands() {
            let Some(conn) = self.conns.get_mut(&id) else {
                log::debug!("lifeline {} closed before its command was sent", id.0);
                continue;
            };
            conn.outbox.push_back(Outgoing { bytes, fds });
            if self.flush(id) == Status::Closed {
                self.close(id);
            }
        }
    }

    /// The request's id and the response to one received frame; no
    /// response when the daemon answers later.
    fn answer(
        &mut self,
        caller: &Caller,
        got: sys::Received,
        mut fds: Vec<OwnedFd>,
    ) -> (Option<u64>, Option<Outgoing>) {
        let decoded = if got.truncated || got.len > MAX_FRAME {
            Err(proto::DecodeError {
                id: None,
                error: proto::frame_too_large(got.len),
            })
        } else {
            proto::decode_request(&self.buf[..got.len])
        };
        let (id, outcome, reply_fds) = match decoded {
            Err(err) => {
                self.daemon.counters.malformed += 1;
                log::debug!(
                    "pid {}: malformed frame: {}",
                    caller.cred.pid,
                    err.error.message
                );
                (err.id, Outcome::Error(err.error), Vec::new())
            }
            Ok(frame) if got.fds_truncated || fds.len() > usize::from(takes_fd(&frame.request)) => {
                self.daemon.counters.malformed += 1;
                let error = ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "{}: {} ({} received and closed{})",
                        frame.request.op(),
                        if takes_fd(&frame.request) {
                            "takes at most one file descriptor (the stats page)"
                        } else {
                            "takes no file descriptors (only reattach does)"
                        },
                        fds.len(),
                        if got.fds_truncated {
                            ", more cut by the kernel"
                        } else {
                            ""
                        }
                    ),
                );
                (Some(frame.id), Outcome::Error(error), Vec::new())
            }
            Ok(frame) => {
                self.daemon.counters.requests += 1;
                log::debug!("pid {}: {}", caller.cred.pid, frame.request.op());
                let fds = std::mem::take(&mut fds);
                let Some(answer) =
                    self.daemon
                        .handle_with_fds(caller, frame.request, fds, Instant::now())
                else {
                    return (Some(frame.id), None);
                };
                let outcome = match answer.outcome {
                    Ok(reply) => Outcome::Ok(reply),
                    Err(err) => Outcome::Error(err),
                };
                (Some(frame.id), outcome, answer.fds)
            }
        };
        drop(fds);
        let bytes = proto::encode_response(&ResponseFrame {
            v: VERSION,
            id,
            outcome,
        });
        (
            id,
            Some(Outgoing {
                bytes,
                fds: reply_fds,
            }),
        )
    }
}

/// Whether `request` may come with a descriptor.
fn takes_fd(request: &Request) -> bool {
    matches!(request, Request::Reattach { .. })
}

impl Drop for Server {
    fn drop(&mut self) {
        self.daemon.tidy_up_if_idle();
        // Remove the socket only if it is still the one we created: a
        // newer daemon may have replaced it.
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(err) = fs::remove_file(&self.path) {
                    log::warn!("cannot remove {:?}: {err}", self.path);
                } else {
                    log::info!("removed {:?}", self.path);
                }
            }
            _ => log::debug!("{:?} is no longer ours; left in place", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, ClientError};
    use crate::host::Host;
    use crate::proto::{encode_request, AllocateArgs, DataplaneState, Request, RequestFrame};
    use crate::sys::child::{self, Identity};
    use crate::units::{CpuList, MIB};
    use std::fs::File;
    use std::io::PipeWriter;
    use std::thread::JoinHandle;

    /// A server running on its own thread; stopped and joined on drop.
    struct Running {
        path: PathBuf,
        stop: Option<PipeWriter>,
        thread: Option<JoinHandle<Server>>,
        dir: Option<tempfile::TempDir>,
    }

    impl Running {
        fn client(&self) -> Client {
            Client::connect(&self.path).unwrap()
        }

        /// Stops the server and returns it (still bound until dropped),
        /// with the directory its socket is in.
        fn stop(mut self) -> (Server, tempfile::TempDir) {
            drop(self.stop.take());
            let server = self.thread.take().unwrap().join().unwrap();
            (server, self.dir.take().unwrap())
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn config_text(socket: &Path, extra_api: &str) -> String {
        format!(
            "cores = [0, 1]\nmemory = \"32 MiB\"\nhugepages = \"off\"\n[api]\nsocket = {socket:?}\n{extra_api}\n\
             [[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = \"/tmp/ix-test-wire0.sock\"\n\
             role = \"master\"\nqueues = 2\nip = \"10.0.0.1/24\"\n"
        )
    }

    fn host() -> Host {
        Host {
            cpus: CpuList(vec![0, 1]),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        }
    }

    /// A temporary directory other users can traverse (for the tests that
    /// connect under another uid).
    fn open_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("ixcpd-test")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Whether this process may fork children under other uids (root);
    /// says SKIPPED on stderr when not.
    fn can_change_identity(test: &str) -> bool {
        let root = sys::euid() == 0;
        if !root {
            eprintln!("SKIPPED: {test} runs a client as uid 65534, which needs root");
        }
        root
    }

    fn start_with(extra_api: &str) -> Running {
        let dir = open_dir();
        let path = dir.path().join("ixcpd.sock");
        let config = Config::from_toml(&config_text(&path, extra_api), &host()).unwrap();
        let mut server = Server::bind(config).unwrap();
        let (rd, wr) = std::io::pipe().unwrap();
        let thread = std::thread::spawn(move || {
            server.run(rd.as_fd()).unwrap();
            server
        });
        Running {
            path,
            stop: Some(wr),
            thread: Some(thread),
            dir: Some(dir),
        }
    }

    fn start() -> Running {
        start_with("")
    }

    fn alloc(name: &str, cores: u32) -> AllocateArgs {
        AllocateArgs {
            name: name.into(),
            cores,
            port: "wire0".into(),
            buffers_per_core: Some(512),
            memory: None,
        }
    }

    fn frame(request: Request) -> Vec<u8> {
        encode_request(&RequestFrame {
            v: VERSION,
            id: 77,
            request,
        })
    }

    /// Sends raw bytes (and fds) on `sock` and decodes the one response.
    fn raw_call(sock: &SeqPacket, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> ResponseFrame {
        sock.send(bytes, fds).unwrap();
        let mut buf = vec![0u8; MAX_FRAME];
        let got = sock.recv(&mut buf, &mut Vec::new()).unwrap();
        proto::decode_response(&buf[..got.len]).unwrap()
    }

    fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn status_is_served_and_socket_has_the_configured_mode() {
        let running = start_with("mode = 0o600");
        let status = running.client().status().unwrap();
        assert_eq!(status.daemon.pid, std::process::id());
        assert_eq!(status.daemon.protocol, VERSION);
        assert_eq!(status.daemon.clients, 1);
        assert!(status.dataplanes.is_empty());
        let mode = fs::metadata(&running.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn socket_gets_the_configured_group() {
        let running = start_with("group = 4242");
        assert_eq!(fs::metadata(&running.path).unwrap().gid(), 4242);
        running.client().status().unwrap();
    }

    #[test]
    fn allocate_then_register_passes_one_pool_memfd_per_core() {
        let running = start();
        let mut ctl = running.client();
        let allocation = ctl.allocate(alloc("echo", 2)).unwrap();
        assert_eq!(allocation.cpus, vec![0, 1]);
        let mut dataplane = running.client();
        let (registration, fds) = dataplane.register("echo").unwrap();
        assert_eq!(registration.allocation, allocation);
        assert_eq!(registration.port.name, "wire0");
        assert_eq!(fds.len(), 3, "a pool per core, then the stats page");
        let mut fds = fds.into_iter();
        for (pool, fd) in registration.pools.iter().zip(fds.by_ref()) {
            let file = File::from(fd);
            assert_eq!(file.metadata().unwrap().len(), pool.bytes);
            assert_eq!(pool.bytes, allocation.pool_bytes);
        }
        let stats = registration.stats.expect("a stats page");
        let page = File::from(fds.next().unwrap());
        assert_eq!(
            page.metadata().unwrap().len(),
            stats.bytes.next_multiple_of(4096)
        );
        let status = ctl.status().unwrap();
        assert_eq!(status.dataplanes[0].state, DataplaneState::Running);
        assert_eq!(status.dataplanes[0].pid, Some(std::process::id()));
        // Closing the lifeline returns everything.
        drop(dataplane);
        wait_until(
            "release after lifeline close",
            Duration::from_secs(1),
            || ctl.status().unwrap().dataplanes.is_empty(),
        );
        assert_eq!(ctl.resources().unwrap().memory.used, 0);
    }

    #[test]
    fn over_allocation_is_refused_with_a_clear_error() {
        let running = start();
        let mut ctl = running.client();
        ctl.allocate(alloc("a", 1)).unwrap();
        let err = ctl.allocate(alloc("b", 2)).unwrap_err();
        let api = err.api().expect("an API error");
        assert_eq!(api.code, ErrorCode::InsufficientResources);
        assert_eq!(
            api.message,
            "not enough cores: asked 2, free 1 (of 2); port wire0: in use by a (a port serves one dataplane)"
        );
        let err = ctl
            .allocate(AllocateArgs {
                memory: None,
                buffers_per_core: Some(1 << 19),
                ..alloc("c", 1)
            })
            .unwrap_err();
        assert!(
            err.to_string().starts_with("port wire0: in use by a"),
            "{err}"
        );
        ctl.stop("a").unwrap();
        let err = ctl
            .allocate(AllocateArgs {
                buffers_per_core: Some(1 << 19),
                ..alloc("c", 2)
            })
            .unwrap_err();
        assert!(err.to_string().starts_with("memory: asked "), "{err}");
    }

    #[test]
    fn malformed_frames_are_answered_and_the_connection_keeps_serving() {
        let running = start();
        let sock = SeqPacket::connect(&running.path, Some(Duration::from_secs(5))).unwrap();
        let pool = sys::memfd_pool("ix-test", 4096, false).unwrap();
        let status = frame(Request::Status);
        let oversize = vec![b'{'; MAX_FRAME + 100];
        let cases: Vec<(&str, Vec<u8>, Vec<BorrowedFd<'_>>, ErrorCode)> = vec![
            ("oversize", oversize, vec![], ErrorCode::FrameTooLarge),
            ("empty", vec![], vec![], ErrorCode::EmptyFrame),
            (
                "truncated",
                status[..status.len() - 3].to_vec(),
                vec![],
                ErrorCode::Truncated,
            ),
            (
                "non-UTF-8",
                b"{\"v\":1,\"id\":1,\"op\":\"\xc3\x28\"}".to_vec(),
                vec![],
                ErrorCode::BadUtf8,
            ),
            (
                "non-JSON",
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                vec![],
                ErrorCode::BadJson,
            ),
            (
                "unknown request",
                br#"{"v":1,"id":3,"op":"reboot"}"#.to_vec(),
                vec![],
                ErrorCode::UnknownRequest,
            ),
            (
                "missing field",
                br#"{"v":1,"id":4,"op":"cores","name":"x"}"#.to_vec(),
                vec![],
                ErrorCode::BadRequest,
            ),
            (
                "wrong version",
                br#"{"v":9,"id":5,"op":"status"}"#.to_vec(),
                vec![],
                ErrorCode::UnsupportedVersion,
            ),
            (
                "fds attached",
                status.clone(),
                vec![pool.as_fd()],
                ErrorCode::BadRequest,
            ),
            (
                "reattach with two fds",
                frame(Request::Reattach {
                    name: "x".into(),
                    pid: std::process::id(),
                }),
                vec![pool.as_fd(), pool.as_fd()],
                ErrorCode::BadRequest,
            ),
            (
                "reattach of nothing",
                frame(Request::Reattach {
                    name: "x".into(),
                    pid: std::process::id(),
                }),
                vec![pool.as_fd()],
                ErrorCode::NotFound,
            ),
            (
                "reattach without its pid",
                br#"{"v":1,"id":6,"op":"reattach","name":"x"}"#.to_vec(),
                vec![],
                ErrorCode::BadRequest,
            ),
        ];
        // Refused before the daemon sees them, as malformed; the
        // reattach of an unknown name is a well-formed request.
        let count = cases.len() as u64 - 1;
        for (what, bytes, fds, code) in cases {
            let response = raw_call(&sock, &bytes, &fds);
            match response.outcome {
                Outcome::Error(err) => {
                    assert_eq!(err.code, code, "{what}: {}", err.message);
                    assert!(!err.message.is_empty());
                }
                Outcome::Ok(reply) => panic!("{what}: answered {reply:?}"),
            }
            // The same connection still serves a good request...
            let ok = raw_call(&sock, &status, &[]);
            assert_eq!(ok.id, Some(77), "{what}");
            assert!(
                matches!(ok.outcome, Outcome::Ok(_)),
                "{what}: {:?}",
                ok.outcome
            );
            // ...and so does a second client.
            running.client().status().unwrap();
        }
        let status = running.client().status().unwrap();
        assert_eq!(status.daemon.malformed, count);
    }

    #[test]
    fn a_client_that_never_reads_does_not_stall_others() {
        let running = start();
        let flooder = SeqPacket::connect(&running.path, None).unwrap();
        flooder.set_nonblocking(true).unwrap();
        let status = frame(Request::Status);
        let mut sent = 0;
        while sent < 10_000 {
            match flooder.send(&status, &[]) {
                Ok(()) => sent += 1,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("{err}"),
            }
        }
        assert!(sent > 10, "only {sent} requests fit");
        for _ in 0..5 {
            running.client().status().unwrap();
        }
        drop(flooder);
        let mut ctl = running.client();
        wait_until("the flooder to be dropped", Duration::from_secs(1), || {
            ctl.status().unwrap().daemon.clients == 1
        });
    }

    #[test]
    fn unauthorised_peer_is_refused_and_disconnected() {
        if !can_change_identity("unauthorised_peer_is_refused_and_disconnected") {
            return;
        }
        // Mode 0666 lets anyone connect, so the credential check is what
        // refuses uid 65534.
        let running = start_with("mode = 0o666");
        let nobody = Identity {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let kid = child::spawn(&running.path, Some(&nobody), &frame(Request::Status), false);
        assert_eq!(kid.outcome.errno, 0, "the child could connect");
        let response = proto::decode_response(&kid.outcome.reply).unwrap();
        assert_eq!(response.id, None);
        let Outcome::Error(err) = response.outcome else {
            panic!("nobody was served: {response:?}")
        };
        assert_eq!(err.code, ErrorCode::Unauthorised);
        assert!(
            err.message.contains("uid 65534 may not use ixcpd"),
            "{}",
            err.message
        );
        let status = running.client().status().unwrap();
        assert_eq!(status.daemon.refused, 1);
        assert_eq!(status.daemon.clients, 1, "the refused peer is not kept");
    }

    #[test]
    fn member_of_the_socket_group_is_served() {
        if !can_change_identity("member_of_the_socket_group_is_served") {
            return;
        }
        let running = start_with("mode = 0o660\ngroup = 4242");
        let member = Identity {
            uid: 65534,
            gid: 65534,
            groups: vec![4242],
        };
        let kid = child::spawn(&running.path, Some(&member), &frame(Request::Status), false);
        assert_eq!(kid.outcome.errno, 0);
        let response = proto::decode_response(&kid.outcome.reply).unwrap();
        assert!(matches!(response.outcome, Outcome::Ok(_)), "{response:?}");
    }

    #[test]
    fn socket_mode_keeps_other_users_from_connecting() {
        if !can_change_identity("socket_mode_keeps_other_users_from_connecting") {
            return;
        }
        let running = start_with("mode = 0o660");
        let nobody = Identity {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let kid = child::spawn(&running.path, Some(&nobody), &frame(Request::Status), false);
        assert_eq!(kid.outcome.errno, libc::EACCES);
    }

    #[test]
    fn killed_dataplane_releases_its_resources_within_a_second() {
        let running = start();
        let mut ctl = running.client();
        ctl.allocate(alloc("victim", 2)).unwrap();
        let kid = child::spawn(
            &running.path,
            None,
            &frame(Request::Register {
                name: "victim".into(),
            }),
            true,
        );
        let response = proto::decode_response(&kid.outcome.reply).unwrap();
        assert!(matches!(response.outcome, Outcome::Ok(_)), "{response:?}");
        let status = ctl.status().unwrap();
        assert_eq!(status.dataplanes[0].pid, Some(kid.pid));
        sys::kill(kid.pid, libc::SIGKILL).unwrap();
        let killed = Instant::now();
        wait_until("release after kill -9", Duration::from_secs(1), || {
            ctl.resources()
                .unwrap()
                .cores
                .iter()
                .all(|c| c.owner.is_none())
        });
        assert!(killed.elapsed() < Duration::from_secs(1));
        let logs = ctl.logs("victim", None).unwrap();
        assert!(
            logs.lines.last().unwrap().text.contains("lifeline closed"),
            "{logs:?}"
        );
    }

    #[test]
    fn stop_terminates_a_registered_dataplane_then_releases() {
        let running = start();
        let mut ctl = running.client();
        ctl.allocate(alloc("echo", 1)).unwrap();
        let kid = child::spawn(
            &running.path,
            None,
            &frame(Request::Register {
                name: "echo".into(),
            }),
            true,
        );
        let reply = ctl.stop("echo").unwrap();
        assert_eq!((reply.released, reply.pid), (false, Some(kid.pid)));
        assert!(
            child::exited_within(kid.pid, Duration::from_secs(2)),
            "SIGTERM ends the child"
        );
        wait_until("release after stop", Duration::from_secs(1), || {
            ctl.status().unwrap().dataplanes.is_empty()
        });
        let err = ctl.stop("echo").unwrap_err();
        assert_eq!(err.api().unwrap().code, ErrorCode::NotFound);
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = open_dir();
        let path = dir.path().join("ixcpd.sock");
        // No child may inherit the dead listener while we probe it.
        let _serial = child::FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        drop(Listener::bind(&path, 1).unwrap());
        assert!(path.exists(), "a dead daemon's socket stays behind");
        let config = Config::from_toml(&config_text(&path, ""), &host()).unwrap();
        let server = Server::bind(config).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn live_daemon_is_detected() {
        let running = start();
        let config = Config::from_toml(&config_text(&running.path, ""), &host()).unwrap();
        let err = Server::bind(config).unwrap_err();
        assert!(matches!(err, ServerError::AlreadyRunning { .. }), "{err}");
        assert!(
            err.to_string().starts_with("ixcpd already running on"),
            "{err}"
        );
        running.client().status().unwrap();
    }

    #[test]
    fn other_files_are_not_replaced() {
        let dir = open_dir();
        let path = dir.path().join("ixcpd.sock");
        fs::write(&path, "precious").unwrap();
        let config = Config::from_toml(&config_text(&path, ""), &host()).unwrap();
        let err = Server::bind(config).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not a socket; refusing to replace it"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn socket_directory_is_created() {
        let dir = open_dir();
        let path = dir.path().join("run/ix/ixcpd.sock");
        let config = Config::from_toml(&config_text(&path, ""), &host()).unwrap();
        let server = Server::bind(config).unwrap();
        assert!(path.exists());
        drop(server);
    }

    #[test]
    fn shutdown_removes_the_socket_but_not_a_newer_one() {
        let running = start();
        let path = running.path.clone();
        let (server, _dir) = running.stop();
        assert!(path.exists(), "still bound until dropped");
        // A newer daemon took the path over.
        fs::remove_file(&path).unwrap();
        let newer = Listener::bind(&path, 1).unwrap();
        drop(server);
        assert!(path.exists(), "the newer socket is left alone");
        drop(newer);
    }

    #[test]
    fn stopping_the_loop_removes_the_socket() {
        let running = start();
        let path = running.path.clone();
        let (server, _dir) = running.stop();
        drop(server);
        assert!(!path.exists());
        let err = Client::connect(&path).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    }

    #[test]
    fn a_restarted_server_knows_the_books_and_a_clean_one_leaves_no_state() {
        let running = start();
        running.client().allocate(alloc("kept", 1)).unwrap();
        let path = running.path.clone();
        let (server, dir) = running.stop();
        let state = server.daemon().files().state.clone();
        drop(server);
        assert!(
            state.exists(),
            "books with an allocation stay for the next daemon"
        );
        let config = Config::from_toml(&config_text(&path, ""), &host()).unwrap();
        let mut again = Server::bind(config).unwrap();
        let (rd, wr) = std::io::pipe().unwrap();
        let thread = std::thread::spawn(move || {
            again.run(rd.as_fd()).unwrap();
            again
        });
        let mut ctl = Client::connect(&path).unwrap();
        let status = ctl.status().unwrap();
        assert_eq!(status.dataplanes.len(), 1);
        assert_eq!(status.dataplanes[0].name, "kept");
        assert_eq!(status.dataplanes[0].state, DataplaneState::Allocated);
        ctl.stop("kept").unwrap();
        drop(ctl);
        drop(wr);
        drop(thread.join().unwrap());
        assert!(!state.exists(), "no dataplane left: no state file");
        drop(dir);
    }

    #[test]
    fn too_many_clients_are_told_busy() {
        let running = start();
        let mut clients: Vec<Client> = (0..MAX_CLIENTS).map(|_| running.client()).collect();
        // Make sure the server has accepted them all.
        clients.last_mut().unwrap().status().unwrap();
        let err = running.client().status().unwrap_err();
        assert_eq!(err.api().map(|e| e.code), Some(ErrorCode::Busy), "{err}");
        clients.pop();
        wait_until("a free slot", Duration::from_secs(1), || {
            Client::connect(&running.path)
                .and_then(|mut c| c.status())
                .is_ok()
        });
    }
}
