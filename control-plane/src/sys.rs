//! The system calls the control plane needs that `std` does not wrap:
//! Unix `SOCK_SEQPACKET` sockets with file descriptors passed as
//! `SCM_RIGHTS` (unix(7)), peer credentials (`SO_PEERCRED`,
//! `SO_PEERGROUPS`), memfd buffer pools, `signalfd`, `poll`, pidfds
//! (pidfd_open(2): a process's exit as a pollable descriptor, signals
//! that cannot hit a reused pid), inotify, and the few process calls a
//! daemon makes. This is the crate's only `unsafe` code;
//! every function here returns owned, checked values.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Most file descriptors accepted with one received message; more are
/// closed by the kernel and the message is flagged
/// ([`Received::fds_truncated`]).
pub const MAX_FDS: usize = 32;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{path:?} cannot be a Unix socket address (1 to {} bytes, no NUL)",
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn seqpacket_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | flags,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket() and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The credentials of the process at the other end of a Unix socket, as
/// the kernel recorded them when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// What [`SeqPacket::recv`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The message's full length, even when it did not fit the buffer.
    pub len: usize,
    /// The message was longer than the buffer and was cut.
    pub truncated: bool,
    /// File descriptors were sent beyond [`MAX_FDS`]; the kernel closed them.
    pub fds_truncated: bool,
}

/// One end of a connected `SOCK_SEQPACKET` Unix socket: reliable, ordered
/// messages whose boundaries the kernel keeps.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

impl SeqPacket {
    /// Connects to the listening socket at `path`. With a timeout, the
    /// connect and every later send and receive give up after it
    /// (`WouldBlock`/`TimedOut`).
    pub fn connect(path: &Path, timeout: Option<Duration>) -> io::Result<SeqPacket> {
        let (addr, len) = sockaddr(path)?;
        let sock = SeqPacket {
            fd: seqpacket_socket(0)?,
        };
        sock.set_timeout(timeout)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that lives
        // across the call.
        cvt(unsafe {
            libc::connect(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        Ok(sock)
    }

    /// A connected pair, for a child process or a test.
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a writable array of two ints, as socketpair needs.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: both fds were just created and are owned by no one else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((SeqPacket { fd: a }, SeqPacket { fd: b }))
    }

    /// Wraps an already connected `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> SeqPacket {
        SeqPacket { fd }
    }

    /// The socket's descriptor (for `poll`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Switches non-blocking mode on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_raw_fd(), on)
    }

    /// Sets the send and receive timeouts (`None`: block forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(t) => libc::timeval {
                tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
                // A zero timeval means "forever": round a zero timeout up.
                tv_usec: if t.is_zero() {
                    1
                } else {
                    libc::suseconds_t::from(t.subsec_micros())
                },
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: `tv` is a valid timeval and the length says so.
            cvt(unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }

    /// Sends `data` as one message with `fds` attached (`SCM_RIGHTS`).
    ///
    /// Never raises `SIGPIPE`: a closed peer is `BrokenPipe`. On a
    /// non-blocking socket a full buffer is `WouldBlock` and nothing was
    /// sent.
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} fds in one message (at most {MAX_FDS})", fds.len()),
            ));
        }
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut control = [0u64; cmsg_words(MAX_FDS)];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let payload = (fds.len() * size_of::<RawFd>()) as libc::c_uint;
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `control`, which is at least
            // `space` bytes (cmsg_words(MAX_FDS) >= fds.len()) and aligned
            // for cmsghdr, so CMSG_FIRSTHDR returns a header inside it and
            // CMSG_DATA a payload of `payload` bytes inside it; the fds are
            // copied byte-wise, so the payload's alignment does not matter.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                let data = libc::CMSG_DATA(cmsg);
                for (i, fd) in fds.iter().enumerate() {
                    let raw = fd.as_raw_fd();
                    std::ptr::copy_nonoverlapping(
                        (&raw as *const RawFd).cast::<u8>(),
                        data.add(i * size_of::<RawFd>()),
                        size_of::<RawFd>(),
                    );
                }
            }
        }
        // SAFETY: `msg` points at `iov` (covering `data`) and at `control`,
        // both alive for the call; the kernel only reads them.
        let sent = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", data.len()),
            ));
        }
        Ok(())
    }

    /// Receives one message into `buf`, appending any file descriptors it
    /// carried to `fds` (owned, close-on-exec).
    ///
    /// `Ok` with `len == 0` is either an empty message or the peer having
    /// closed: tell them apart with [`SeqPacket::peer_closed`]. A message
    /// longer than `buf` is cut, its real length reported with
    /// `truncated`. On a non-blocking socket, nothing to read is
    /// `WouldBlock`; with a timeout, `WouldBlock` too.
    pub fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; cmsg_words(MAX_FDS)];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at `iov` (covering `buf`, writable) and at
        // `control`, both alive for the call and sized as declared.
        let n = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: after a successful recvmsg, msg_control/msg_controllen
        // describe the control messages the kernel wrote into `control`;
        // CMSG_FIRSTHDR/CMSG_NXTHDR stay within that range, and each
        // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 fds that the
        // kernel just installed in this process and that nothing else owns.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(cmsg);
                    for i in 0..bytes / size_of::<RawFd>() {
                        let mut raw: RawFd = -1;
                        std::ptr::copy_nonoverlapping(
                            data.add(i * size_of::<RawFd>()),
                            (&mut raw as *mut RawFd).cast::<u8>(),
                            size_of::<RawFd>(),
                        );
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Received {
            len: n as usize,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
            fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        })
    }

    /// Whether the peer has closed its end (no more messages will come).
    pub fn peer_closed(&self) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd; a zero timeout never blocks.
        cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
        Ok(pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
    }

    /// The peer's credentials (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` is a writable ucred and `len` its size.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok(PeerCred {
            pid: cred.pid as u32,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// The peer's supplementary groups at connect time (`SO_PEERGROUPS`).
    pub fn peer_groups(&self) -> io::Result<Vec<u32>> {
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
            // SAFETY: `groups` is a writable buffer of `len` bytes.
            let ret = unsafe {
                libc::getsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let count = len as usize / size_of::<libc::gid_t>();
            if ret == 0 {
                groups.truncate(count);
                return Ok(groups);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
                return Err(err);
            }
            groups.resize(count, 0);
        }
    }
}

/// Words of u64 control buffer for `n` fds in one SCM_RIGHTS message.
const fn cmsg_words(n: usize) -> usize {
    // CMSG_SPACE(n * 4) = 16-byte header + payload rounded up to 8.
    (16 + (n * size_of::<RawFd>()).div_ceil(8) * 8) / 8
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on an fd we own takes no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

/// A listening `SOCK_SEQPACKET` Unix socket, non-blocking.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds `path` (which must not exist) and listens.
    pub fn bind(path: &Path, backlog: u32) -> io::Result<Listener> {
        let (addr, len) = sockaddr(path)?;
        let fd = seqpacket_socket(libc::SOCK_NONBLOCK)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        // SAFETY: listen() takes no pointers.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog.min(4096) as libc::c_int) })?;
        Ok(Listener { fd })
    }

    /// The socket's descriptor (for `poll`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Accepts one pending connection as a non-blocking socket; `None`
    /// when none is pending.
    pub fn accept(&self) -> io::Result<Option<SeqPacket>> {
        // SAFETY: null address pointers ask accept4 not to report the
        // peer address; no memory is written.
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ if err.raw_os_error() == Some(libc::ECONNABORTED) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: `fd` was just returned by accept4 and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(SeqPacket { fd }))
    }
}

/// Creates a memfd of `len` bytes with its memory allocated up front
/// (`fallocate`), in hugepages when `huge`. Fails with `ENOSPC`/`ENOMEM`
/// when the memory is not there, rather than at first touch later.
pub fn memfd_pool(name: &str, len: u64, huge: bool) -> io::Result<OwnedFd> {
    let cname = CString::new(name.replace('\0', "?"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut flags = libc::MFD_CLOEXEC;
    if huge {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: `cname` is a NUL-terminated string alive across the call.
    let raw = cvt(unsafe { libc::memfd_create(cname.as_ptr(), flags) })?;
    // SAFETY: `raw` was just created and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pool too large"))?;
    // SAFETY: ftruncate and fallocate on a memfd we own take no pointers.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) })?;
    Ok(fd)
}

/// Waits for events on `fds` for up to `timeout_ms` (-1: forever).
/// An interrupted wait returns `Ok(0)`.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable slice of pollfd of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { libc::geteuid() }
}

/// The gid of the group named `name`, if the group database has it.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut grp = MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is
        // NUL-terminated, `grp` and `result` are writable, `buf` has the
        // length passed.
        let ret = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if ret == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: a non-null result points at `grp`, filled by getgrnam_r.
        return Ok(Some(unsafe { grp.assume_init() }.gr_gid));
    }
}

/// Puts any descriptor (a child's output pipe) in non-blocking mode.
pub fn set_fd_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL take no pointers; `fd` is open for the
    // duration of the borrow.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Makes `cmd`'s child start with no signal blocked: ixcpd blocks its stop
/// signals (they arrive through a signalfd), and a blocked mask survives
/// `fork` and `exec`, so a launched program would otherwise ignore the
/// SIGTERM of `ixctl stop`.
pub fn unblock_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls sigemptyset and sigprocmask, both async-signal-safe, on a set
    // on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = MaybeUninit::<libc::sigset_t>::uninit();
            cvt(libc::sigemptyset(set.as_mut_ptr()))?;
            cvt(libc::sigprocmask(
                libc::SIG_SETMASK,
                set.as_ptr(),
                std::ptr::null_mut(),
            ))?;
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    // SAFETY: kill() takes no pointers; a positive pid names one process.
    cvt(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// A pidfd for process `pid` (pidfd_open(2)): readable once the process
/// has exited, whether or not it is a child of this one.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    // SAFETY: pidfd_open takes a pid and flags, no pointers; the result is
    // checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process a pidfd names (never to a process that
/// reused its pid).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo asks for the same information kill() sends; no
    // other pointer is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is readable (or hung up) right now, without waiting.
pub fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    Ok(poll(&mut pfd, 0)? > 0 && pfd[0].revents != 0)
}

/// A non-blocking inotify instance watching directory `dir` for files
/// written to (`IN_MODIFY`) or closed after writing.
pub fn inotify_dir(dir: &Path) -> io::Result<OwnedFd> {
    let cpath = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: inotify_init1 takes flags only; the result is checked.
    let raw = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    // SAFETY: `raw` was just created and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `cpath` is a NUL-terminated string alive across the call.
    cvt(unsafe {
        libc::inotify_add_watch(
            fd.as_raw_fd(),
            cpath.as_ptr(),
            libc::IN_MODIFY | libc::IN_CLOSE_WRITE,
        )
    })?;
    Ok(fd)
}

/// Reads and discards what a non-blocking descriptor holds (inotify
/// events whose only message is "look again").
pub fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
    }
}

/// Blocks `signals` for this thread (and threads it starts later) and
/// returns a `signalfd` that becomes readable when one arrives.
///
/// Call it in `main` before any other thread exists, so that the signals
/// are blocked everywhere and only the fd reports them.
pub fn signal_fd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset and
    // pthread_sigmask read/write only that set; signalfd reads it.
    unsafe {
        cvt(libc::sigemptyset(set.as_mut_ptr()))?;
        for &sig in signals {
            cvt(libc::sigaddset(set.as_mut_ptr(), sig))?;
        }
        let ret = libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        let fd = cvt(libc::signalfd(-1, set.as_ptr(), libc::SFD_CLOEXEC))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads one pending signal number from a [`signal_fd`].
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of exactly `size` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short signalfd read",
        ));
    }
    // SAFETY: the kernel filled all `size` bytes of the plain-data struct.
    Ok(unsafe { info.assume_init() }.ssi_signo)
}

/// What [`fork`] returned in this process.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(u32),
    /// In the child.
    Child,
}

/// Forks the process.
///
/// # Safety
///
/// The process must be single-threaded: in the child, only the calling
/// thread exists, and a lock (the allocator's, a logger's) held by another
/// thread at the fork would never be released.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid as u32)
    })
}

/// Starts a new session (detaches from the controlling terminal).
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Makes `target` (0, 1 or 2) refer to the same file as `fd`.
pub fn redirect(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes no pointers; replacing a standard descriptor is
    // what the caller asked for.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    Ok(())
}

/// Test support: a client run in a forked child under another identity.
#[cfg(test)]
pub mod child {
    use super::*;
    use std::io::Read;

    /// Held while forking, and by tests that must not have a descriptor
    /// of theirs duplicated into a child at that moment.
    pub static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Who the child becomes before connecting.
    pub struct Identity {
        /// User id.
        pub uid: u32,
        /// Primary group id.
        pub gid: u32,
        /// Supplementary groups.
        pub groups: Vec<u32>,
    }

    /// What the child saw: the errno of the step that failed (0 if none)
    /// and the bytes of the one message it received.
    #[derive(Debug)]
    pub struct Outcome {
        /// 0, or the errno of setuid/socket/connect/send/recv.
        pub errno: i32,
        /// The reply received.
        pub reply: Vec<u8>,
    }

    /// A forked client process; killed and reaped on drop.
    pub struct Child {
        /// Its pid.
        pub pid: u32,
        /// What it reported.
        pub outcome: Outcome,
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = kill(self.pid, libc::SIGKILL);
            // SAFETY: waitpid on our own child, status not wanted.
            unsafe { libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0) };
        }
    }

    /// Forks a child that optionally changes identity, connects to `path`,
    /// sends `request`, receives one message, reports through a pipe, and
    /// then either exits (`hold == false`) or waits to be killed, keeping
    /// its connection open.
    ///
    /// The child runs only system calls on memory prepared before the
    /// fork (no allocation, no locks), so forking a multi-threaded test
    /// process is sound.
    pub fn spawn(path: &Path, identity: Option<&Identity>, request: &[u8], hold: bool) -> Child {
        let (addr, addr_len) = sockaddr(path).unwrap();
        let (rd, wr) = std::io::pipe().unwrap();
        let groups: Vec<libc::gid_t> = identity.map(|i| i.groups.clone()).unwrap_or_default();
        let _serial = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut reply = vec![0u8; 70 * 1024];
        let reply_ptr = reply.as_mut_ptr();
        let reply_cap = reply.len();
        // SAFETY: the child below only makes async-signal-safe system calls
        // on buffers allocated before the fork, then _exits or pauses.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: raw system calls on memory prepared before the fork.
            unsafe {
                // Drop every inherited descriptor but the report pipe, so
                // this child keeps no other test's connection alive.
                let keep = wr.as_raw_fd() as libc::c_uint;
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    keep - 1,
                    0 as libc::c_uint,
                );
                libc::syscall(
                    libc::SYS_close_range,
                    keep + 1,
                    libc::c_uint::MAX,
                    0 as libc::c_uint,
                );
                let report = |errno: i32, len: usize| {
                    let header = [errno.to_ne_bytes(), (len as i32).to_ne_bytes()];
                    libc::write(wr.as_raw_fd(), header.as_ptr().cast(), 8);
                    libc::write(wr.as_raw_fd(), reply_ptr.cast(), len);
                };
                let errno = || *libc::__errno_location();
                if let Some(id) = identity {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setgid(id.gid) != 0
                        || libc::setuid(id.uid) != 0
                    {
                        report(errno(), 0);
                        libc::_exit(1);
                    }
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
                if fd < 0
                    || libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), addr_len) != 0
                {
                    report(errno(), 0);
                    libc::_exit(1);
                }
                // A send may fail if the daemon already hung up; its reply
                // is still readable.
                libc::send(
                    fd,
                    request.as_ptr().cast(),
                    request.len(),
                    libc::MSG_NOSIGNAL,
                );
                let mut n = libc::recv(fd, reply_ptr.cast(), reply_cap, 0);
                if n < 0 && errno() == libc::ECONNRESET {
                    // The reset is reported once, ahead of queued data.
                    n = libc::recv(fd, reply_ptr.cast(), reply_cap, 0);
                }
                if n < 0 {
                    report(errno(), 0);
                    libc::_exit(1);
                }
                report(0, n as usize);
                if hold {
                    loop {
                        libc::pause();
                    }
                }
                libc::_exit(0);
            }
        }
        drop(wr);
        let mut rd = rd;
        let mut header = [0u8; 8];
        rd.read_exact(&mut header).expect("child reports");
        let errno = i32::from_ne_bytes(header[..4].try_into().unwrap());
        let len = i32::from_ne_bytes(header[4..].try_into().unwrap()) as usize;
        reply.truncate(len);
        rd.read_exact(&mut reply).expect("child reports its reply");
        Child {
            pid: pid as u32,
            outcome: Outcome { errno, reply },
        }
    }

    /// Whether process `pid` has exited (reaping it if so), waiting up to
    /// `timeout`.
    pub fn exited_within(pid: u32, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // SAFETY: waitpid on our own child, status not wanted.
            let r =
                unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            if r == pid as libc::pid_t || r < 0 {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsFd;

    #[test]
    fn seqpacket_keeps_message_boundaries() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(b"one", &[]).unwrap();
        a.send(b"second", &[]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let r = b.recv(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..r.len], b"one");
        let r = b.recv(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..r.len], b"second");
        assert!(fds.is_empty());
    }

    #[test]
    fn oversize_message_reports_real_length_and_truncation() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(&[7u8; 1000], &[]).unwrap();
        a.send(b"next", &[]).unwrap();
        let mut buf = [0u8; 100];
        let mut fds = Vec::new();
        let r = b.recv(&mut buf, &mut fds).unwrap();
        assert_eq!(r.len, 1000);
        assert!(r.truncated);
        let r = b.recv(&mut buf, &mut fds).unwrap();
        assert_eq!((&buf[..r.len], r.truncated), (&b"next"[..], false));
    }

    #[test]
    fn empty_message_is_told_apart_from_close() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(b"", &[]).unwrap();
        let mut buf = [0u8; 16];
        let r = b.recv(&mut buf, &mut Vec::new()).unwrap();
        assert_eq!(r.len, 0);
        assert!(!b.peer_closed().unwrap());
        drop(a);
        let r = b.recv(&mut buf, &mut Vec::new()).unwrap();
        assert_eq!(r.len, 0);
        assert!(b.peer_closed().unwrap());
    }

    #[test]
    fn memfd_passes_with_scm_rights_and_shares_its_bytes() {
        let (a, b) = SeqPacket::pair().unwrap();
        let pool = memfd_pool("ix-test-pool", 8192, false).unwrap();
        let mut file = File::from(pool.try_clone().unwrap());
        file.write_all(b"packet memory").unwrap();
        a.send(b"pool", &[std::os::fd::AsFd::as_fd(&pool)]).unwrap();
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let r = b.recv(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..r.len], b"pool");
        assert_eq!(fds.len(), 1);
        let mut received = File::from(fds.pop().unwrap());
        assert_eq!(received.metadata().unwrap().len(), 8192);
        received.seek(SeekFrom::Start(0)).unwrap();
        let mut text = [0u8; 13];
        received.read_exact(&mut text).unwrap();
        assert_eq!(&text, b"packet memory");
    }

    #[test]
    fn several_fds_arrive_in_order() {
        let (a, b) = SeqPacket::pair().unwrap();
        let pools: Vec<OwnedFd> = (0..3)
            .map(|i| memfd_pool("ix-test", 4096 * (i + 1), false).unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = pools.iter().map(std::os::fd::AsFd::as_fd).collect();
        a.send(b"x", &borrowed).unwrap();
        let mut fds = Vec::new();
        b.recv(&mut [0u8; 4], &mut fds).unwrap();
        let sizes: Vec<u64> = fds
            .into_iter()
            .map(|fd| File::from(fd).metadata().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![4096, 8192, 12288]);
    }

    #[test]
    fn too_many_fds_are_refused_before_sending() {
        let (a, _b) = SeqPacket::pair().unwrap();
        let pool = memfd_pool("ix-test", 4096, false).unwrap();
        let many = vec![std::os::fd::AsFd::as_fd(&pool); MAX_FDS + 1];
        let err = a.send(b"x", &many).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn peer_credentials_are_ours_on_a_pair() {
        let (a, _b) = SeqPacket::pair().unwrap();
        let cred = a.peer_cred().unwrap();
        assert_eq!(cred.pid, std::process::id());
        assert_eq!(cred.uid, euid());
        a.peer_groups().unwrap();
    }

    #[test]
    fn receive_timeout_gives_would_block() {
        let (a, _b) = SeqPacket::pair().unwrap();
        a.set_timeout(Some(Duration::from_millis(20))).unwrap();
        let err = a.recv(&mut [0u8; 4], &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn socket_path_too_long_is_refused() {
        let long = format!("/tmp/{}", "x".repeat(200));
        let err = SeqPacket::connect(Path::new(&long), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn group_lookup() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-for-ix").unwrap(), None);
    }

    #[test]
    fn a_pidfd_becomes_readable_when_its_process_exits_and_signals_it() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id()).unwrap();
        assert!(!readable_now(pidfd.as_fd()).unwrap());
        pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(readable_now(pidfd.as_fd()).unwrap());
        assert!(pidfd_open(0).is_err());
    }

    #[test]
    fn inotify_reports_writes_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let watch = inotify_dir(dir.path()).unwrap();
        assert!(!readable_now(watch.as_fd()).unwrap());
        std::fs::write(dir.path().join("out"), b"line\n").unwrap();
        assert!(readable_now(watch.as_fd()).unwrap());
        drain(watch.as_fd());
        assert!(!readable_now(watch.as_fd()).unwrap());
    }

    #[test]
    fn hugepage_pool_fails_cleanly_without_hugepages() {
        let free = crate::host::Host::probe().hugepages_free;
        match memfd_pool("ix-test-huge", 2 << 20, true) {
            Ok(fd) => {
                assert!(free > 0, "a hugepage pool was created with none free");
                assert_eq!(File::from(fd).metadata().unwrap().len(), 2 << 20);
            }
            Err(err) => {
                assert_eq!(free, 0, "hugepages free but pool failed: {err}");
                eprintln!("hugepage pool refused as expected: {err}");
            }
        }
    }
}
