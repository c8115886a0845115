//! A small blocking client of the ixcpd API, for `ixctl` and for
//! dataplanes registering at start-up.
//!
//! ```no_run
//! use control_plane::client::{default_socket_path, Client};
//!
//! let mut ixcpd = Client::connect(&default_socket_path())?;
//! for dp in ixcpd.status()?.dataplanes {
//!     println!("{} {:?} on {} cpus {:?}", dp.name, dp.state, dp.port, dp.cpus);
//! }
//! # Ok::<(), control_plane::client::ClientError>(())
//! ```
//!
//! # Commands on a lifeline
//!
//! A dataplane's registering connection (its lifeline) also receives
//! commands from ixcpd ([`DataplaneCommand`]). The dataplane polls
//! [`Client::as_fd`]; when it turns readable it calls
//! [`Client::read_command`], which returns the next command, or `None`
//! when ixcpd closed the connection, and answers each command with
//! [`Client::answer_command`]. [`Client::closed`] keeps its meaning — it
//! never drops a command: one that arrives while it looks is kept for
//! `read_command` (check [`Client::has_command`] after it returns
//! false), as is one that arrives while a request waits for its answer.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{DEFAULT_SOCKET, SOCKET_ENV};
use crate::proto::{
    self, AllocateArgs, ApiError, Command, CommandAnswer, CommandFrame, LaunchArgs, LaunchReply,
    LogsReply, Outcome, PoolFd, ReattachReply, Registration, Reply, Request, RequestFrame,
    ResponseFrame, StatsReply, StatusReply, StopReply, MAX_FRAME, VERSION,
};
use crate::resources::{Allocation, ResourcesView};
use crate::sys::SeqPacket;

/// How long a request waits for its response unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The API socket to use: `$IX_SOCKET` when set, else `/run/ix/ixcpd.sock`.
pub fn default_socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Why a request did not get a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no ixcpd is running on {path:?} (start one with `ixctl up`, or set {SOCKET_ENV})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket's permissions keep this user out.
    #[error(
        "permission denied on {path:?}: ixcpd admits root, its own user and members of the \
         socket's group"
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to ixcpd at {path:?}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No response in time.
    #[error("ixcpd did not answer within {0:?}")]
    Timeout(Duration),
    /// ixcpd closed the connection without answering.
    #[error("ixcpd closed the connection")]
    Closed,
    /// Sending or receiving failed.
    #[error("cannot talk to ixcpd: {0}")]
    Io(#[source] io::Error),
    /// The response could not be understood.
    #[error("ixcpd sent a response this client cannot read: {0}")]
    Protocol(String),
    /// ixcpd answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl ClientError {
    /// The daemon's error, when it answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(err) => Some(err),
            _ => None,
        }
    }
}

/// A command ixcpd sent a running dataplane on its lifeline.
#[derive(Debug)]
pub enum DataplaneCommand {
    /// Run with `allocation` from now on (see [`proto::Command::Resize`]):
    /// `pools` are the added cores' buffer pools with their memfds, by
    /// queue (empty when shrinking). Answer with the core count reached.
    Resize {
        /// The whole new allocation.
        allocation: Allocation,
        /// Each added core's pool and its memfd.
        pools: Vec<(PoolFd, OwnedFd)>,
    },
}

/// A connection to ixcpd.
#[derive(Debug)]
pub struct Client {
    sock: SeqPacket,
    path: PathBuf,
    timeout: Duration,
    next_id: u64,
    buf: Vec<u8>,
    /// Commands received while looking for something else.
    commands: VecDeque<(CommandFrame, Vec<OwnedFd>)>,
}

macro_rules! expect_reply {
    ($reply:expr, $variant:ident, $name:literal) => {
        match $reply {
            Reply::$variant(inner) => Ok(inner),
            other => Err(ClientError::Protocol(format!(
                "expected a `{}` reply, got {:?}",
                $name,
                reply_type(&other)
            ))),
        }
    };
}

fn reply_type(reply: &Reply) -> &'static str {
    match reply {
        Reply::Status(_) => "status",
        Reply::Resources(_) => "resources",
        Reply::Allocated(_) => "allocated",
        Reply::Stopped(_) => "stopped",
        Reply::Stats(_) => "stats",
        Reply::Resized(_) => "resized",
        Reply::Logs(_) => "logs",
        Reply::Registered(_) => "registered",
        Reply::Launched(_) => "launched",
        Reply::Reattached(_) => "reattached",
    }
}

impl Client {
    /// Connects to ixcpd at `path` with [`DEFAULT_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Client::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects to ixcpd at `path`; each request waits up to `timeout`.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let sock = SeqPacket::connect(path, Some(timeout)).map_err(|source| {
            let path = path.to_owned();
            match source.raw_os_error() {
                Some(libc::ENOENT | libc::ECONNREFUSED) => ClientError::NotRunning { path },
                Some(libc::EACCES | libc::EPERM) => ClientError::PermissionDenied { path },
                _ => ClientError::Connect { path, source },
            }
        })?;
        Ok(Client {
            sock,
            path: path.to_owned(),
            timeout,
            next_id: 1,
            buf: vec![0; MAX_FRAME],
            commands: VecDeque::new(),
        })
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection's descriptor, to poll: on a lifeline it turns
    /// readable when ixcpd sends a command or closes the connection.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// For when [`Client::as_fd`] polled readable with no request out:
    /// whether ixcpd closed the connection. A command that arrived is kept
    /// for [`Client::read_command`] (and `false` returned); anything else
    /// ixcpd sent unasked is read and dropped, so that it cannot keep the
    /// descriptor readable. A lifeline that takes commands should call
    /// [`Client::read_command`] instead, which also tells a close.
    pub fn closed(&mut self) -> bool {
        let mut fds = Vec::new();
        match self.sock.recv(&mut self.buf, &mut fds) {
            Ok(got) if got.len == 0 && fds.is_empty() => self.sock.peer_closed().unwrap_or(true),
            Ok(got) => {
                if !self.keep_command(got, fds) {
                    log::debug!("ixcpd sent {} bytes unasked; dropped", got.len);
                }
                false
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }

    /// Whether a command is waiting for [`Client::read_command`] (one that
    /// arrived during [`Client::closed`] or a request): the descriptor
    /// does not turn readable for it again.
    pub fn has_command(&self) -> bool {
        !self.commands.is_empty()
    }

    /// Whether the frame just received into the buffer is a command (it
    /// has `cmd`, where responses have `id`).
    fn is_command(&self, got: crate::sys::Received) -> bool {
        if got.truncated || got.len > self.buf.len() {
            return false;
        }
        let bytes = &self.buf[..got.len];
        proto::has_key(bytes, "cmd") && !proto::has_key(bytes, "id")
    }

    /// If the frame just received into the buffer is a command, keeps it
    /// (with its descriptors) and returns true. A command this client
    /// cannot read is answered with an error at once, when its `cmd` is
    /// readable, so that ixcpd does not wait for it.
    fn keep_command(&mut self, got: crate::sys::Received, fds: Vec<OwnedFd>) -> bool {
        if !self.is_command(got) {
            return false;
        }
        let bytes = &self.buf[..got.len];
        match proto::decode_command(bytes) {
            Ok(frame) => self.commands.push_back((frame, fds)),
            Err(why) => {
                let bytes = bytes.to_vec();
                self.refuse_command(&bytes, why);
            }
        }
        true
    }

    fn refuse_command(&mut self, bytes: &[u8], why: String) {
        log::warn!("ixcpd sent a command this client cannot read: {why}");
        let cmd = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("cmd")?.as_u64());
        if let Some(cmd) = cmd {
            let answer = proto::encode_answer(&CommandAnswer {
                cmd,
                result: Err(format!("cannot read the command: {why}")),
            });
            if let Err(err) = self.sock.send(&answer, &[]) {
                log::warn!("cannot refuse command {cmd}: {err}");
            }
        }
    }

    /// Reads the next command ixcpd sent on this (lifeline) connection:
    /// call it when [`Client::as_fd`] is readable, or while
    /// [`Client::has_command`]. `Ok(None)` when ixcpd closed the
    /// connection; [`ClientError::Timeout`] when nothing came within this
    /// client's timeout. A command whose descriptors do not match its
    /// `pools` is answered with an error here and reported as
    /// [`ClientError::Protocol`]; answer every command returned with
    /// [`Client::answer_command`].
    pub fn read_command(&mut self) -> Result<Option<(u64, DataplaneCommand)>, ClientError> {
        loop {
            if let Some((frame, fds)) = self.commands.pop_front() {
                return self.command_of(frame, fds).map(Some);
            }
            let mut fds = Vec::new();
            let got = match self.sock.recv(&mut self.buf, &mut fds) {
                Ok(got) => got,
                Err(err) => {
                    return match err.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            Err(ClientError::Timeout(self.timeout))
                        }
                        io::ErrorKind::ConnectionReset => Ok(None),
                        _ => Err(ClientError::Io(err)),
                    }
                }
            };
            if got.len == 0 && fds.is_empty() && self.sock.peer_closed().unwrap_or(true) {
                return Ok(None);
            }
            if !self.keep_command(got, fds) {
                log::debug!("ixcpd sent {} bytes that are no command; dropped", got.len);
            }
        }
    }

    /// Pairs a command's pools with the descriptors that came with it.
    fn command_of(
        &mut self,
        frame: CommandFrame,
        fds: Vec<OwnedFd>,
    ) -> Result<(u64, DataplaneCommand), ClientError> {
        let cmd = frame.cmd;
        let Command::Resize { allocation, pools } = frame.command;
        let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let count = slots.len();
        let mut paired = Vec::with_capacity(pools.len());
        for pool in pools {
            match slots.get_mut(pool.fd as usize).and_then(Option::take) {
                Some(fd) => paired.push((pool, fd)),
                None => {
                    let why = format!(
                        "resize lists pool fd {} but {count} descriptors arrived (or it is listed twice)",
                        pool.fd
                    );
                    self.answer_command(cmd, Err(why.clone()))?;
                    return Err(ClientError::Protocol(why));
                }
            }
        }
        if paired.len() != count {
            let why = format!(
                "resize lists {} pools but {count} descriptors arrived",
                paired.len()
            );
            self.answer_command(cmd, Err(why.clone()))?;
            return Err(ClientError::Protocol(why));
        }
        Ok((
            cmd,
            DataplaneCommand::Resize {
                allocation,
                pools: paired,
            },
        ))
    }

    /// Answers command `id`: `Ok(cores now)`, or `Err(why)` (ixcpd logs
    /// it and undoes what it did for the command).
    pub fn answer_command(
        &mut self,
        id: u64,
        result: Result<u32, String>,
    ) -> Result<(), ClientError> {
        let bytes = proto::encode_answer(&CommandAnswer { cmd: id, result });
        self.sock.send(&bytes, &[]).map_err(|err| match err.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => ClientError::Io(err),
        })
    }

    /// Sends `request` and waits for its response; file descriptors that
    /// come with it are returned in order.
    pub fn call_with_fds(
        &mut self,
        request: Request,
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_sending_fds(request, &[])
    }

    /// Sends `request` with `send` attached and waits for its response;
    /// file descriptors that come with it are returned in order.
    pub fn call_sending_fds(
        &mut self,
        request: Request,
        send: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = proto::encode_request(&RequestFrame {
            v: VERSION,
            id,
            request,
        });
        if let Err(err) = self.sock.send(&bytes, send) {
            return Err(match err.kind() {
                // The daemon hung up, perhaps after saying why: read it.
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    match self.receive(id) {
                        Err(ClientError::Io(_)) => ClientError::Closed,
                        Err(other) => other,
                        Ok(_) => ClientError::Closed,
                    }
                }
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    ClientError::Timeout(self.timeout)
                }
                _ => ClientError::Io(err),
            });
        }
        self.receive(id)
    }

    fn receive(&mut self, id: u64) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        loop {
            let mut fds = Vec::new();
            let mut got = self.sock.recv(&mut self.buf, &mut fds);
            if matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset) {
                // The daemon closed while our request was unread; the reset
                // is reported once, ahead of any answer it queued before.
                got = self.sock.recv(&mut self.buf, &mut fds);
            }
            let got = got.map_err(|err| match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    ClientError::Timeout(self.timeout)
                }
                io::ErrorKind::ConnectionReset => ClientError::Closed,
                _ => ClientError::Io(err),
            })?;
            if got.len == 0 {
                return Err(ClientError::Closed);
            }
            if got.truncated {
                return Err(ClientError::Protocol(format!(
                    "a response of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
                    got.len
                )));
            }
            if self.is_command(got) {
                self.keep_command(got, std::mem::take(&mut fds));
                // A command, for `read_command`; the answer is still due.
                continue;
            }
            let frame: ResponseFrame = proto::decode_response(&self.buf[..got.len])
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            match (frame.id, frame.outcome) {
                (Some(got_id), Outcome::Ok(reply)) if got_id == id => return Ok((reply, fds)),
                (Some(got_id), Outcome::Error(err)) if got_id == id => return Err(err.into()),
                // An error about the connection itself (unauthorised, busy).
                (None, Outcome::Error(err)) => return Err(err.into()),
                // A late answer to an earlier request that timed out.
                _ => continue,
            }
        }
    }

    /// Sends `request` and waits for its response; descriptors that come
    /// with it are closed.
    pub fn call(&mut self, request: Request) -> Result<Reply, ClientError> {
        self.call_with_fds(request).map(|(reply, _)| reply)
    }

    /// `status`: the daemon and every dataplane.
    pub fn status(&mut self) -> Result<StatusReply, ClientError> {
        expect_reply!(self.call(Request::Status)?, Status, "status")
    }

    /// `resources`: every core, the memory budget and every port.
    pub fn resources(&mut self) -> Result<ResourcesView, ClientError> {
        expect_reply!(self.call(Request::Resources)?, Resources, "resources")
    }

    /// `allocate`: reserves resources under a name.
    pub fn allocate(&mut self, args: AllocateArgs) -> Result<Allocation, ClientError> {
        expect_reply!(self.call(Request::Allocate(args))?, Allocated, "allocated")
    }

    /// `launch`: allocates and starts a program as a dataplane, and waits
    /// until it registered (up to the daemon's launch timeout, 5 s, plus
    /// this client's timeout).
    pub fn launch(&mut self, args: LaunchArgs) -> Result<LaunchReply, ClientError> {
        let reply = self.call_waiting(Request::Launch(args), crate::daemon::LAUNCH_TIMEOUT);
        expect_reply!(reply?, Launched, "launched")
    }

    /// [`Client::call`] for a request the daemon answers only after
    /// waiting up to `extra` for something else: this client's timeout
    /// is lengthened by `extra` for it.
    fn call_waiting(&mut self, request: Request, extra: Duration) -> Result<Reply, ClientError> {
        let normal = self.timeout;
        let longer = normal + extra;
        self.sock
            .set_timeout(Some(longer))
            .map_err(ClientError::Io)?;
        self.timeout = longer;
        let reply = self.call(request);
        self.timeout = normal;
        self.sock
            .set_timeout(Some(normal))
            .map_err(ClientError::Io)?;
        reply
    }

    /// `stop`: stops a dataplane and returns its resources.
    pub fn stop(&mut self, name: &str) -> Result<StopReply, ClientError> {
        let name = name.to_owned();
        expect_reply!(self.call(Request::Stop { name })?, Stopped, "stopped")
    }

    /// `stats`: one dataplane's state and holdings.
    pub fn stats(&mut self, name: &str) -> Result<StatsReply, ClientError> {
        let name = name.to_owned();
        expect_reply!(self.call(Request::Stats { name })?, Stats, "stats")
    }

    /// `cores`: changes a dataplane's core count; for a running one,
    /// once it has answered ixcpd's command (up to the daemon's command
    /// timeout, 5 s, plus this client's timeout).
    pub fn cores(&mut self, name: &str, n: u32) -> Result<Allocation, ClientError> {
        let name = name.to_owned();
        let reply = self.call_waiting(Request::Cores { name, n }, crate::daemon::COMMAND_TIMEOUT);
        expect_reply!(reply?, Resized, "resized")
    }

    /// `logs`: what ixcpd recorded about a dataplane, the latest `lines`.
    pub fn logs(&mut self, name: &str, lines: Option<u32>) -> Result<LogsReply, ClientError> {
        let name = name.to_owned();
        expect_reply!(self.call(Request::Logs { name, lines })?, Logs, "logs")
    }

    /// `register`: claims the allocation `name` for this process. Returns
    /// the registration and the descriptors it lists: one buffer-pool
    /// memfd per core (`registration.pools[i].fd`), then the stats page
    /// (`registration.stats`). Keep this client open: closing it tells
    /// ixcpd the dataplane is gone and its resources are released.
    pub fn register(&mut self, name: &str) -> Result<(Registration, Vec<OwnedFd>), ClientError> {
        let name = name.to_owned();
        let (reply, fds) = self.call_with_fds(Request::Register { name })?;
        let registration = expect_reply!(reply, Registered, "registered")?;
        let listed = registration.pools.len() + usize::from(registration.stats.is_some());
        let mut indices = registration
            .pools
            .iter()
            .map(|p| p.fd)
            .chain(registration.stats.as_ref().map(|s| s.fd));
        if fds.len() != listed || indices.any(|fd| fd as usize >= fds.len()) {
            return Err(ClientError::Protocol(format!(
                "registration lists {listed} descriptors but {} arrived",
                fds.len()
            )));
        }
        Ok((registration, fds))
    }

    /// `reattach`: after ixcpd restarted, makes this connection the
    /// lifeline of dataplane `name` again, registered earlier by this
    /// process (`pid`), handing over its stats page.
    pub fn reattach(
        &mut self,
        name: &str,
        pid: u32,
        stats: Option<BorrowedFd<'_>>,
    ) -> Result<ReattachReply, ClientError> {
        let name = name.to_owned();
        let fds: Vec<BorrowedFd<'_>> = stats.into_iter().collect();
        let (reply, _) = self.call_sending_fds(Request::Reattach { name, pid }, &fds)?;
        expect_reply!(reply, Reattached, "reattached")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_socket_says_how_to_start_ixcpd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = Client::connect(&path).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
        assert!(err.to_string().contains("ixctl up"), "{err}");
    }

    #[test]
    fn socket_path_comes_from_the_environment() {
        // Only this test touches IX_SOCKET in this process.
        std::env::set_var(SOCKET_ENV, "/tmp/elsewhere.sock");
        assert_eq!(default_socket_path(), PathBuf::from("/tmp/elsewhere.sock"));
        std::env::set_var(SOCKET_ENV, "");
        assert_eq!(default_socket_path(), PathBuf::from(DEFAULT_SOCKET));
        std::env::remove_var(SOCKET_ENV);
        assert_eq!(default_socket_path(), PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn a_closed_connection_is_told_from_an_unasked_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let listener = crate::sys::Listener::bind(&path, 4).unwrap();
        let mut client = Client::connect_with_timeout(&path, Duration::from_millis(50)).unwrap();
        let server = loop {
            if let Some(sock) = listener.accept().unwrap() {
                break sock;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        server.send(b"{}", &[]).unwrap();
        assert!(!client.closed(), "a message is not a close");
        drop(server);
        assert!(client.closed());
    }

    fn resize_frame(cmd: u64, pools: Vec<PoolFd>) -> Vec<u8> {
        proto::encode_command(&CommandFrame {
            v: VERSION,
            cmd,
            command: Command::Resize {
                allocation: Allocation {
                    name: "echo".into(),
                    port: "wire0".into(),
                    cpus: vec![0, 1],
                    buffers_per_core: 512,
                    pool_bytes: 4096,
                    page_size: 4096,
                    huge: false,
                    reta: (0..128).map(|g| g % 2).collect(),
                },
                pools,
            },
        })
    }

    fn pool(queue: u16, fd: u32) -> PoolFd {
        PoolFd {
            queue,
            fd,
            bytes: 4096,
            buffers: 1,
            huge: false,
        }
    }

    /// A connected client and the daemon's end.
    fn pair(dir: &Path) -> (Client, SeqPacket) {
        let path = dir.join("d.sock");
        let listener = crate::sys::Listener::bind(&path, 4).unwrap();
        let client = Client::connect_with_timeout(&path, Duration::from_millis(200)).unwrap();
        loop {
            if let Some(sock) = listener.accept().unwrap() {
                return (client, sock);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn commands_are_read_with_their_pools_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, server) = pair(dir.path());
        let memfd = crate::sys::memfd_pool("ix-client-test", 4096, false).unwrap();
        server
            .send(
                &resize_frame(7, vec![pool(1, 0)]),
                &[std::os::fd::AsFd::as_fd(&memfd)],
            )
            .unwrap();
        // `closed` keeps the command for `read_command`.
        assert!(!client.closed());
        assert!(client.has_command());
        let (id, DataplaneCommand::Resize { allocation, pools }) =
            client.read_command().unwrap().unwrap();
        assert_eq!((id, allocation.cpus.len(), pools.len()), (7, 2, 1));
        assert_eq!(pools[0].0.queue, 1);
        let len = std::fs::File::from(pools.into_iter().next().unwrap().1)
            .metadata()
            .unwrap()
            .len();
        assert_eq!(len, 4096);
        client.answer_command(7, Ok(2)).unwrap();
        let mut buf = vec![0; MAX_FRAME];
        let got = server.recv(&mut buf, &mut Vec::new()).unwrap();
        let answer = proto::decode_answer(&buf[..got.len]).unwrap();
        assert_eq!(
            answer,
            CommandAnswer {
                cmd: 7,
                result: Ok(2)
            }
        );
        // A command that arrives while a request waits is kept too.
        server.send(&resize_frame(8, vec![]), &[]).unwrap();
        let reply = ResponseFrame {
            v: VERSION,
            id: Some(1),
            outcome: Outcome::Error(ApiError::new(proto::ErrorCode::NotFound, "no")),
        };
        server.send(&proto::encode_response(&reply), &[]).unwrap();
        let err = client.stop("x").unwrap_err();
        assert_eq!(err.api().unwrap().message, "no");
        assert!(client.has_command());
        assert_eq!(client.read_command().unwrap().unwrap().0, 8);
        // Nothing more: a timeout; then the close.
        assert!(matches!(
            client.read_command(),
            Err(ClientError::Timeout(_))
        ));
        drop(server);
        assert!(client.read_command().unwrap().is_none());
    }

    #[test]
    fn a_command_whose_descriptors_do_not_match_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, server) = pair(dir.path());
        server
            .send(&resize_frame(3, vec![pool(1, 0), pool(2, 1)]), &[])
            .unwrap();
        let err = client.read_command().unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
        let mut buf = vec![0; MAX_FRAME];
        let got = server.recv(&mut buf, &mut Vec::new()).unwrap();
        let answer = proto::decode_answer(&buf[..got.len]).unwrap();
        assert_eq!(answer.cmd, 3);
        assert!(answer.result.unwrap_err().contains("descriptors"));
        // One it cannot read at all is refused too, when its id is readable.
        server
            .send(br#"{"v":1,"cmd":4,"command":"reboot"}"#, &[])
            .unwrap();
        assert!(matches!(
            client.read_command(),
            Err(ClientError::Timeout(_))
        ));
        let got = server.recv(&mut buf, &mut Vec::new()).unwrap();
        let answer = proto::decode_answer(&buf[..got.len]).unwrap();
        assert_eq!(answer.cmd, 4);
        assert!(answer.result.unwrap_err().contains("reboot"));
    }

    #[test]
    fn a_silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = crate::sys::Listener::bind(&path, 4).unwrap();
        let mut client = Client::connect_with_timeout(&path, Duration::from_millis(50)).unwrap();
        let err = client.status().unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        drop(listener);
    }

    #[test]
    fn a_reply_of_the_wrong_type_is_a_protocol_error() {
        let err = expect_reply!(
            Reply::Resized(crate::resources::Allocation {
                name: "a".into(),
                port: "p".into(),
                cpus: vec![0],
                buffers_per_core: 512,
                pool_bytes: 4096,
                page_size: 4096,
                huge: false,
                reta: vec![0; 128],
            }),
            Status,
            "status"
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ixcpd sent a response this client cannot read: expected a `status` reply, got \"resized\""
        );
    }
}
