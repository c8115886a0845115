//! System interface of the AF_PACKET backend: the packet socket and its
//! options, the ring mapping it shares with the kernel, and the interface
//! ioctls. Every `unsafe` block of the backend lives here, behind methods
//! that check their own bounds.
//!
//! Layouts and option numbers are those of `<linux/if_packet.h>` and
//! `packet(7)`.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use libc::c_int;

/// `TPACKET_V2` of `enum tpacket_versions`.
pub(super) const TPACKET_V2: c_int = 1;
/// `TPACKET_V3` of `enum tpacket_versions`.
pub(super) const TPACKET_V3: c_int = 2;

/// `struct tpacket_req3` (`<linux/if_packet.h>`), the argument of
/// `PACKET_RX_RING`/`PACKET_TX_RING` under `TPACKET_V3`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TpacketReq3 {
    pub block_size: u32,
    pub block_nr: u32,
    pub frame_size: u32,
    pub frame_nr: u32,
    pub retire_blk_tov: u32,
    pub sizeof_priv: u32,
    pub feature_req_word: u32,
}

/// `struct tpacket_stats_v3`, read with `PACKET_STATISTICS`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TpacketStatsV3 {
    pub packets: u32,
    pub drops: u32,
    pub freeze_q_cnt: u32,
}

/// An `AF_PACKET`, `SOCK_RAW` socket.
#[derive(Debug)]
pub(super) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket with protocol 0, so that nothing is queued on it
    /// before the rings exist and [`bind`](Self::bind) names the protocol
    /// and interface.
    pub fn new() -> io::Result<PacketSocket> {
        // SAFETY: socket(2) takes plain integers and has no memory
        // preconditions.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(PacketSocket { fd })
    }

    fn setsockopt<T>(&self, level: c_int, opt: c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a live, initialized `T` of exactly the
        // length passed; the kernel only reads it during the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets an integer `SOL_PACKET` option.
    pub fn set_packet_int(&self, opt: c_int, value: c_int) -> io::Result<()> {
        self.setsockopt(libc::SOL_PACKET, opt, &value)
    }

    /// Sets up a ring (`PACKET_RX_RING` or `PACKET_TX_RING`).
    pub fn set_ring(&self, opt: c_int, req: &TpacketReq3) -> io::Result<()> {
        self.setsockopt(libc::SOL_PACKET, opt, req)
    }

    /// Adds a `PACKET_MR_PROMISC` membership on `ifindex`: the interface
    /// is promiscuous while the socket is open.
    pub fn add_promisc(&self, ifindex: u32) -> io::Result<()> {
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as c_int,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        self.setsockopt(libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
    }

    /// Joins the fanout group `arg` (`id | mode << 16`, see `packet(7)`).
    pub fn set_fanout(&self, arg: u32) -> io::Result<()> {
        self.setsockopt(libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)
    }

    /// Reads back `PACKET_FANOUT`: `id | type << 16 | flags << 24`.
    pub fn fanout(&self) -> io::Result<u32> {
        let mut val: u32 = 0;
        let mut len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: `val` and `len` are live and writable, `len` holds the
        // size of `val`; the kernel writes at most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                (&mut val as *mut u32).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(val)
    }

    /// Reads and resets the kernel's receive counters.
    pub fn statistics(&self) -> io::Result<TpacketStatsV3> {
        let mut st = TpacketStatsV3::default();
        let mut len = size_of::<TpacketStatsV3>() as libc::socklen_t;
        // SAFETY: `st` is a live, writable `repr(C)` struct matching
        // `struct tpacket_stats_v3`, and `len` holds its size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut TpacketStatsV3).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }

    /// Binds to `ifindex` for all protocols (`ETH_P_ALL`).
    pub fn bind(&self, ifindex: u32) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as c_int;
        // SAFETY: `sll` is a live sockaddr_ll and the length passed is its
        // size; the kernel only reads it.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Asks the kernel to transmit every TX-ring frame marked
    /// `TP_STATUS_SEND_REQUEST`, without waiting.
    pub fn kick(&self) -> io::Result<usize> {
        // SAFETY: a zero-length send with NULL buffer and address is the
        // documented TX-ring trigger; the kernel reads no user memory
        // through these arguments.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Maps `len` bytes of the socket's rings (RX ring first, then TX).
    pub fn map_rings(&self, len: usize) -> io::Result<RingMap> {
        // SAFETY: a fresh shared mapping at a kernel-chosen address aliases
        // no Rust object; the descriptor is valid for the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RingMap {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns NULL on success"),
            len,
        })
    }
}

/// What `SIOCGIF*` ioctls report about an interface.
#[derive(Debug, Clone, Copy)]
pub(super) struct IfInfo {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub flags: u32,
}

/// Reads MAC, MTU and flags of interface `name` through `SIOCGIFHWADDR`,
/// `SIOCGIFMTU` and `SIOCGIFFLAGS` on an ordinary UDP socket (these need
/// no privilege).
pub(super) fn if_info(name: &CStr) -> io::Result<IfInfo> {
    // SAFETY: socket(2) takes plain integers and has no memory
    // preconditions.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let hw = ifreq(&sock, name, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR fills the `ifru_hwaddr` member of the union.
    let sa = unsafe { hw.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = src as u8;
    }
    let mtu = ifreq(&sock, name, libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU fills the `ifru_mtu` member of the union.
    let mtu = unsafe { mtu.ifr_ifru.ifru_mtu }.max(0) as u32;
    let flags = ifreq(&sock, name, libc::SIOCGIFFLAGS)?;
    // SAFETY: SIOCGIFFLAGS fills the `ifru_flags` member of the union.
    let flags = unsafe { flags.ifr_ifru.ifru_flags } as u16 as u32;
    Ok(IfInfo { mac, mtu, flags })
}

fn ifreq(sock: &OwnedFd, name: &CStr, request: libc::c_ulong) -> io::Result<libc::ifreq> {
    let bytes = name.to_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: ifreq is plain data (a name and a union of plain data);
    // all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a live, writable ifreq with a NUL-terminated name
    // (zeroed tail, length checked above); the SIOCGIF* requests used here
    // write only inside the struct.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

/// The interface index of `name`, or `ENODEV`.
pub(super) fn if_index(name: &CStr) -> io::Result<u32> {
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(idx)
}

/// A mapping shared with the kernel (the packet rings).
///
/// The kernel writes ring memory concurrently with us, so this type never
/// hands out references into it: status words are accessed atomically,
/// other fields by volatile reads and writes or byte copies at offsets.
/// Every accessor checks that the range lies inside the mapping and
/// panics otherwise (a bug in the caller, who validates offsets taken from
/// the ring before using them).
#[derive(Debug)]
pub(super) struct RingMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl RingMap {
    /// An anonymous mapping of `len` bytes, standing in for a ring in tests
    /// of the ring walkers.
    #[cfg(test)]
    pub fn anonymous(len: usize) -> RingMap {
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "anonymous mmap failed");
        RingMap {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns NULL on success"),
            len,
        }
    }

    #[inline]
    fn at(&self, off: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len) && off.is_multiple_of(align),
            "ring access {off}+{size} outside the mapping or misaligned"
        );
        // SAFETY: `off + size <= len` (checked above), so the pointer stays
        // inside the mapping.
        unsafe { self.ptr.as_ptr().add(off) }
    }

    /// Loads the `u32` status word at `off` with acquire ordering: reads of
    /// the frame after it see what the kernel wrote before setting it.
    #[inline]
    pub fn load_acquire_u32(&self, off: usize) -> u32 {
        let p = self.at(off, 4, 4).cast::<u32>();
        // SAFETY: `p` is 4-aligned and inside the mapping (checked in `at`)
        // and the mapping lives as long as `self`; the kernel also accesses
        // the word as a 32-bit value, so an atomic view of it is sound.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Acquire)
    }

    /// Stores the `u32` status word at `off` with release ordering: the
    /// kernel sees our writes to the frame before the new status.
    #[inline]
    pub fn store_release_u32(&self, off: usize, value: u32) {
        let p = self.at(off, 4, 4).cast::<u32>();
        // SAFETY: as in `load_acquire_u32`.
        unsafe { AtomicU32::from_ptr(p) }.store(value, Ordering::Release)
    }

    /// Reads the `u32` at `off`.
    #[inline]
    pub fn read_u32(&self, off: usize) -> u32 {
        let p = self.at(off, 4, 4).cast::<u32>();
        // SAFETY: aligned and inside the mapping (checked in `at`); a
        // volatile read of plain data has no validity requirement.
        unsafe { p.read_volatile() }
    }

    /// Reads the `u16` at `off`.
    #[inline]
    pub fn read_u16(&self, off: usize) -> u16 {
        let p = self.at(off, 2, 2).cast::<u16>();
        // SAFETY: as in `read_u32`.
        unsafe { p.read_volatile() }
    }

    /// Reads the byte at `off`.
    #[inline]
    pub fn read_u8(&self, off: usize) -> u8 {
        let p = self.at(off, 1, 1);
        // SAFETY: as in `read_u32`.
        unsafe { p.read_volatile() }
    }

    /// Writes the `u32` at `off`.
    #[inline]
    pub fn write_u32(&self, off: usize, value: u32) {
        let p = self.at(off, 4, 4).cast::<u32>();
        // SAFETY: aligned and inside the writable mapping (checked in `at`).
        unsafe { p.write_volatile(value) }
    }

    /// Copies `dst.len()` bytes from offset `off` of the ring.
    #[inline]
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) {
        let p = self.at(off, dst.len(), 1);
        // SAFETY: the source range is inside the mapping (checked in `at`)
        // and `dst` is a distinct Rust allocation; a byte copy has no
        // validity requirement on the source, which the kernel does not
        // write while the block is handed to user space.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into the ring at offset `off`.
    #[inline]
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        let p = self.at(off, src.len(), 1);
        // SAFETY: the destination range is inside the writable mapping
        // (checked in `at`); `src` is a Rust slice, which cannot overlap a
        // mapping we never hand out references into.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly one mapping made by this type and
        // no pointer into it outlives `self` (accessors copy).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
