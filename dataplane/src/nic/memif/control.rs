//! The memif control channel's system interface: Unix `SOCK_SEQPACKET`
//! sockets (filesystem or abstract addresses), messages carrying one file
//! descriptor as `SCM_RIGHTS`, eventfds, and `poll`.
//!
//! This is one of the memif backend's two `unsafe` wrapper modules (the
//! other is `ring`): every system call lives here behind a safe function
//! that checks its result.
//!
//! Addresses: a socket path starting with `@` names an address in the
//! abstract namespace (the rest of the string, no trailing NUL, the
//! address length covering exactly the name — as DPDK's `net_memif` binds
//! with `socket-abstract=yes`, its default); any other path is a
//! filesystem socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::proto::MSG_SIZE;

/// Receive buffer size: larger than a message so that an oversized record
/// is seen as such rather than silently truncated to 128 bytes.
pub const RECV_BUF: usize = 256;
/// At most this many fds are accepted in one message (more is an error;
/// the extra fds are closed).
const MAX_FDS: usize = 4;

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket path does not fit a `sockaddr_un`.
    #[error("memif socket path {path:?} is too long ({len} bytes, at most 107)")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The peer closed the connection.
    #[error("the memif peer closed the control connection")]
    Closed,
    /// Nothing arrived before the deadline.
    #[error("timed out waiting for a memif control message")]
    Timeout,
    /// The stop fd became readable (shutdown or another request).
    #[error("interrupted by a local request")]
    Stopped,
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn os_err(op: &'static str) -> ControlError {
    ControlError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

fn cvt(rc: libc::c_int, op: &'static str) -> Result<libc::c_int, ControlError> {
    if rc < 0 {
        Err(os_err(op))
    } else {
        Ok(rc)
    }
}

/// Wraps a fresh fd returned by a system call.
fn owned(raw: RawFd, op: &'static str) -> Result<OwnedFd, ControlError> {
    if raw < 0 {
        return Err(os_err(op));
    }
    // SAFETY: `raw` was just returned by the kernel as a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A socket address for `path` (see the module docs for `@abstract`).
fn sockaddr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), ControlError> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    let base = std::mem::size_of::<libc::sa_family_t>();
    let too_long = || ControlError::PathTooLong {
        path: path.to_owned(),
        len: bytes.len(),
    };
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract: a leading NUL, then the name; the length covers it only.
        if name.len() + 1 > sun.sun_path.len() {
            return Err(too_long());
        }
        for (dst, &src) in sun.sun_path[1..].iter_mut().zip(name) {
            *dst = src as libc::c_char;
        }
        Ok((sun, (base + 1 + name.len()) as libc::socklen_t))
    } else {
        if bytes.len() + 1 > sun.sun_path.len() || bytes.contains(&0) {
            return Err(too_long());
        }
        for (dst, &src) in sun.sun_path.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        Ok((
            sun,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        ))
    }
}

fn is_abstract(path: &Path) -> bool {
    path.as_os_str().as_bytes().starts_with(b"@")
}

fn seqpacket_socket() -> Result<OwnedFd, ControlError> {
    // SAFETY: socket() takes no pointers.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    owned(raw, "socket(AF_UNIX, SOCK_SEQPACKET)")
}

fn connect_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<(), ControlError> {
    let (sun, len) = sockaddr(path)?;
    // SAFETY: `sun` is a valid sockaddr_un of at least `len` bytes that
    // outlives the call; `fd` is an open socket.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    cvt(rc, "connect").map(drop)
}

/// A connected seqpacket control socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

/// One received record and the fds that came with it.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the record (only `len` are meaningful).
    pub buf: [u8; RECV_BUF],
    /// Length of the record; more than [`MSG_SIZE`] when it was oversized
    /// (the kernel reports the true length with `MSG_TRUNC`).
    pub len: usize,
    /// Descriptors passed with it.
    pub fds: Vec<OwnedFd>,
    /// The sender passed more descriptors than fit (they were closed).
    pub fds_truncated: bool,
}

impl Received {
    /// The record's bytes (capped at the buffer for oversized records).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(RECV_BUF)]
    }
}

impl SeqPacket {
    /// Connects to a listening memif socket.
    pub fn connect(path: &Path) -> Result<SeqPacket, ControlError> {
        let fd = seqpacket_socket()?;
        connect_fd(fd.as_fd(), path)?;
        let s = SeqPacket { fd };
        s.set_send_timeout(Duration::from_secs(2))?;
        Ok(s)
    }

    /// A connected pair (for tests: a misbehaving peer on the other end).
    #[cfg(test)]
    pub fn pair() -> Result<(SeqPacket, SeqPacket), ControlError> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a writable array of two ints, as socketpair needs.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        cvt(rc, "socketpair")?;
        let a = SeqPacket {
            fd: owned(fds[0], "socketpair")?,
        };
        let b = SeqPacket {
            fd: owned(fds[1], "socketpair")?,
        };
        Ok((a, b))
    }

    fn set_send_timeout(&self, t: Duration) -> Result<(), ControlError> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(t.subsec_micros() as i32),
        };
        // SAFETY: `tv` is a valid timeval that outlives the call, and its
        // size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        cvt(rc, "setsockopt(SO_SNDTIMEO)").map(drop)
    }

    /// The socket's fd (for `poll`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends raw bytes as one record, with `fd` attached when given.
    pub fn send_raw(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), ControlError> {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // Control buffer for one int, aligned for cmsghdr.
        let mut ctl = [0u64; 4];
        // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        if let Some(fd) = fd {
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
            debug_assert!(space <= std::mem::size_of_val(&ctl));
            mh.msg_control = ctl.as_mut_ptr().cast();
            mh.msg_controllen = space as _;
            // SAFETY: msg_control points at `ctl`, which is large enough for
            // one cmsghdr carrying one int (checked above) and aligned for
            // it (u64 array), so CMSG_FIRSTHDR is non-null and the writes
            // stay inside `ctl`.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&mh);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
            }
        }
        // SAFETY: `mh` points at `iov` (over `bytes`) and `ctl`, all alive
        // for the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(os_err("sendmsg"));
        }
        if n as usize != bytes.len() {
            return Err(ControlError::Io {
                op: "sendmsg",
                source: io::Error::new(io::ErrorKind::WriteZero, "short seqpacket send"),
            });
        }
        Ok(())
    }

    /// Sends one control message.
    pub fn send(
        &self,
        msg: &[u8; MSG_SIZE],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ControlError> {
        self.send_raw(msg, fd)
    }

    /// Waits for and receives one record. Gives up at `deadline`
    /// ([`ControlError::Timeout`]) or when `stop` becomes readable
    /// ([`ControlError::Stopped`]); end of stream is [`ControlError::Closed`].
    pub fn recv(
        &self,
        deadline: Option<Instant>,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<Received, ControlError> {
        loop {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut fds = vec![self.fd.as_fd()];
            fds.extend(stop);
            let ready = poll_readable(&fds, timeout)?;
            if ready & 1 != 0 {
                return self.recv_now();
            }
            if ready & 2 != 0 {
                return Err(ControlError::Stopped);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ControlError::Timeout);
            }
        }
    }

    /// Receives one record that `poll` said is ready.
    fn recv_now(&self) -> Result<Received, ControlError> {
        let mut r = Received {
            buf: [0; RECV_BUF],
            len: 0,
            fds: Vec::new(),
            fds_truncated: false,
        };
        let mut iov = libc::iovec {
            iov_base: r.buf.as_mut_ptr().cast(),
            iov_len: RECV_BUF,
        };
        let mut ctl = [0u64; 8];
        // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&ctl) as _;
        // SAFETY: `mh` points at `iov` (over `r.buf`) and `ctl`, both
        // writable and alive for the call, with their true sizes.
        let n = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut mh,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ECONNRESET) {
                return Err(ControlError::Closed);
            }
            return Err(ControlError::Io {
                op: "recvmsg",
                source: e,
            });
        }
        // Collect every passed fd so none leaks, whatever else is wrong.
        // SAFETY: `mh` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR walk
        // only the `msg_controllen` bytes the kernel wrote into `ctl`, and
        // each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 fds
        // that the kernel installed for us and nothing else owns.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    for i in 0..payload / std::mem::size_of::<RawFd>() {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        r.fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        if mh.msg_flags & libc::MSG_CTRUNC != 0 || r.fds.len() > MAX_FDS {
            r.fds_truncated = true;
        }
        if n == 0 && r.fds.is_empty() {
            return Err(ControlError::Closed);
        }
        r.len = n as usize;
        Ok(r)
    }
}

/// A listening seqpacket socket. A filesystem socket file is removed when
/// the listener drops.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl Listener {
    /// Binds and listens at `path`. A stale filesystem socket (one nobody
    /// accepts on) is replaced; a live one is an `EADDRINUSE` error.
    pub fn bind(path: &Path) -> Result<Listener, ControlError> {
        let fd = seqpacket_socket()?;
        let (sun, len) = sockaddr(path)?;
        if !is_abstract(path) && path.exists() {
            let probe = seqpacket_socket()?;
            match connect_fd(probe.as_fd(), path) {
                Ok(()) => {
                    return Err(ControlError::Io {
                        op: "bind",
                        source: io::Error::from_raw_os_error(libc::EADDRINUSE),
                    })
                }
                Err(_) => {
                    // Nobody listens there: a stale socket file, replace it.
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        // SAFETY: `sun` is a valid sockaddr_un of at least `len` bytes that
        // outlives the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sun as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        cvt(rc, "bind")?;
        let l = Listener {
            fd,
            path: (!is_abstract(path)).then(|| path.to_owned()),
        };
        // SAFETY: listen() takes no pointers.
        cvt(unsafe { libc::listen(l.fd.as_raw_fd(), 4) }, "listen")?;
        Ok(l)
    }

    /// The listening fd (for `poll`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Accepts one pending connection (call after `poll` says readable).
    pub fn accept(&self) -> Result<SeqPacket, ControlError> {
        // SAFETY: null address pointers are allowed: the peer address is
        // not wanted.
        let raw = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        let s = SeqPacket {
            fd: owned(raw, "accept")?,
        };
        s.set_send_timeout(Duration::from_secs(2))?;
        Ok(s)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Polls `fds` for readability (or hang-up/error); returns a bit mask of
/// the ready ones (bit i for `fds[i]`, at most 32 fds). `None` waits
/// forever; an interrupted wait returns 0.
pub fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<u32, ControlError> {
    assert!(fds.len() <= 32, "poll_readable takes at most 32 fds");
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        // Round up so a short timeout does not become a busy 0 ms loop.
        i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
    });
    // SAFETY: `p` is a valid array of `p.len()` pollfd structs.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if rc < 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(os_err("poll"));
    }
    let mut mask = 0;
    for (i, pfd) in p.iter().enumerate() {
        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

/// A non-blocking eventfd (ring interrupts, and waking the control thread).
pub fn eventfd() -> Result<OwnedFd, ControlError> {
    // SAFETY: eventfd() takes no pointers.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    owned(raw, "eventfd")
}

/// Adds 1 to an eventfd (a full counter is ignored: the reader is awake
/// anyway).
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; a failure (EAGAIN on a
    // saturated counter, or a peer's bad fd) needs no handling: the signal
    // is advisory.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd's counter to zero.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (counter
    // already zero) is fine.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// Size in bytes of the file behind `fd`.
pub fn fd_size(fd: BorrowedFd<'_>) -> Result<u64, ControlError> {
    // SAFETY: stat is plain old data; zeroed is a valid value to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable and the right size for fstat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, "fstat")?;
    Ok(st.st_size as u64)
}

/// Forbids shrinking a memfd (`F_SEAL_SHRINK`), so a peer that maps it can
/// never fault on a truncated mapping. Fails on memfds created without
/// sealing (hugetlb ones).
pub fn seal_shrink(fd: BorrowedFd<'_>) -> Result<(), ControlError> {
    // SAFETY: fcntl with an int argument takes no pointers.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    cvt(rc, "fcntl(F_ADD_SEALS)").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn tmp_sock(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ix-memif-ctl-{}-{tag}.sock", std::process::id()))
    }

    #[test]
    fn record_and_fd_cross_a_socketpair() {
        let (a, b) = SeqPacket::pair().unwrap();
        let f = tempfile_with(b"hello fd");
        let msg = [7u8; MSG_SIZE];
        a.send(&msg, Some(f.as_fd())).unwrap();
        let r = b
            .recv(Some(Instant::now() + Duration::from_secs(1)), None)
            .unwrap();
        assert_eq!(r.bytes(), &msg[..]);
        assert_eq!(r.fds.len(), 1);
        let mut got = std::fs::File::from(r.fds.into_iter().next().unwrap());
        let mut s = String::new();
        got.rewind().unwrap();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello fd");
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("ix-memif-ctl-{}-file", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn oversized_record_reports_its_true_length() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send_raw(&[1u8; 300], None).unwrap();
        let r = b.recv(None, None).unwrap();
        assert_eq!(r.len, 300);
        assert_eq!(r.bytes().len(), RECV_BUF);
    }

    #[test]
    fn closed_peer_and_timeout_and_stop_are_distinct() {
        let (a, b) = SeqPacket::pair().unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            b.recv(Some(t0 + Duration::from_millis(20)), None),
            Err(ControlError::Timeout)
        ));
        let stop = eventfd().unwrap();
        eventfd_signal(stop.as_fd());
        assert!(matches!(
            b.recv(None, Some(stop.as_fd())),
            Err(ControlError::Stopped)
        ));
        eventfd_drain(stop.as_fd());
        drop(a);
        assert!(matches!(b.recv(None, None), Err(ControlError::Closed)));
    }

    #[test]
    fn filesystem_listener_accepts_and_removes_its_file() {
        let path = tmp_sock("fs");
        let l = Listener::bind(&path).unwrap();
        assert!(path.exists());
        let c = SeqPacket::connect(&path).unwrap();
        let s = l.accept().unwrap();
        c.send(&[3u8; MSG_SIZE], None).unwrap();
        assert_eq!(s.recv(None, None).unwrap().len, MSG_SIZE);
        // A live listener is not replaced.
        assert!(Listener::bind(&path).is_err());
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_file_is_replaced() {
        let path = tmp_sock("stale");
        // A dropped std listener leaves its socket file behind, unserved.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l2 = Listener::bind(&path).unwrap();
        drop(l2);
        assert!(!path.exists());
    }

    #[test]
    fn abstract_listener_leaves_no_file() {
        let name = format!("@ix-memif-ctl-{}", std::process::id());
        let l = Listener::bind(Path::new(&name)).unwrap();
        let c = SeqPacket::connect(Path::new(&name)).unwrap();
        let s = l.accept().unwrap();
        s.send(&[9u8; MSG_SIZE], None).unwrap();
        assert_eq!(c.recv(None, None).unwrap().buf[0], 9);
    }

    #[test]
    fn overlong_path_is_refused() {
        let long = PathBuf::from("/tmp/".to_owned() + &"x".repeat(200));
        assert!(matches!(
            Listener::bind(&long),
            Err(ControlError::PathTooLong { .. })
        ));
    }

    #[test]
    fn fd_size_and_seal() {
        let f = tempfile_with(&[0u8; 100]);
        assert_eq!(fd_size(f.as_fd()).unwrap(), 100);
        // A plain file cannot be sealed; the error is reported, not ignored.
        assert!(seal_shrink(f.as_fd()).is_err());
    }
}
