//! Shared memory regions: memfd-backed mappings that can be passed to another
//! process (a memif peer, a guest, the control plane) as a file descriptor.
//!
//! Hugepages are used when the kernel has them reserved (`MFD_HUGETLB`,
//! 2 MiB pages); otherwise the region falls back to ordinary 4 KiB pages.
//! This module is one of the few places with `unsafe`: it owns the `mmap`
//! and hands out raw pointers that the buffer pool and the NIC backends
//! turn into bounded accesses.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Size of a huge page when `MFD_HUGETLB` is used.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
/// Size of an ordinary page.
pub const PAGE_SIZE: usize = 4096;

/// Errors from creating or mapping a shared region.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// `memfd_create` failed.
    #[error("memfd_create({name}) failed: {source}")]
    Create {
        /// Name given to the memfd.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Sizing the memfd failed (out of memory, or no hugepages left).
    #[error("cannot size shared region to {len} bytes: {source}")]
    Truncate {
        /// Requested size.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// `mmap` failed.
    #[error("cannot map {len} bytes of shared memory: {source}")]
    Map {
        /// Requested size.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The requested length was zero.
    #[error("a shared region cannot be empty")]
    Empty,
}

/// A mapped shared memory region backed by a file descriptor.
///
/// The mapping lives as long as this value; the fd can be duplicated and
/// sent to another process, which maps the same pages.
#[derive(Debug)]
pub struct SharedMem {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
    writable: bool,
}

// SAFETY: the region is plain memory owned by this value; the raw pointer is
// only dereferenced through accessors whose callers uphold the aliasing rules
// documented on them. Moving the owner to another thread is sound.
unsafe impl Send for SharedMem {}
// SAFETY: `&SharedMem` only exposes the pointer and length; every access to
// the bytes goes through `unsafe` accessors with their own contracts.
unsafe impl Sync for SharedMem {}

fn round_up(len: usize, to: usize) -> usize {
    len.div_ceil(to) * to
}

impl SharedMem {
    /// Creates a new anonymous shared region of at least `len` bytes.
    ///
    /// With `prefer_huge`, tries 2 MiB hugepages first and silently falls
    /// back to 4 KiB pages when none are reserved. The region is zeroed.
    pub fn create(name: &str, len: usize, prefer_huge: bool) -> Result<Self, MemError> {
        if len == 0 {
            return Err(MemError::Empty);
        }
        if prefer_huge {
            if let Ok(mem) = Self::create_with(name, round_up(len, HUGE_PAGE_SIZE), true) {
                return Ok(mem);
            }
        }
        Self::create_with(name, round_up(len, PAGE_SIZE), false)
    }

    fn create_with(name: &str, len: usize, huge: bool) -> Result<Self, MemError> {
        let cname = CString::new(name.replace('\0', "?")).expect("NUL bytes were replaced");
        let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        if huge {
            flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB;
        }
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the
        // call; memfd_create has no other memory-safety preconditions.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(MemError::Create {
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is a valid open memfd; ftruncate only changes its size.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(MemError::Truncate {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        // A hugetlb mapping reserves its pages at mmap time, so an empty
        // hugepage pool fails here (and we fall back) rather than raising
        // SIGBUS on first touch later.
        let mut mem = Self::map(fd, len, true)?;
        mem.huge = huge;
        Ok(mem)
    }

    /// Maps an existing region received from a peer.
    pub fn from_fd(fd: OwnedFd, len: usize, writable: bool) -> Result<Self, MemError> {
        if len == 0 {
            return Err(MemError::Empty);
        }
        Self::map(fd, len, writable)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool) -> Result<Self, MemError> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at a kernel-chosen address cannot alias any
        // existing Rust object; `fd` is valid for the duration of the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemError::Map {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(SharedMem {
            fd,
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns NULL on success"),
            len,
            huge: false,
            writable,
        })
    }

    /// Start of the mapping.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty region cannot be created.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the region is backed by hugepages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    /// Whether the region is mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The file descriptor backing the region (to pass to a peer).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Copies `dst.len()` bytes from offset `off` of the region.
    ///
    /// Panics if the range is outside the region. Safe even when a peer
    /// writes concurrently: the copy is of whatever bytes are there.
    pub fn read_at(&self, off: usize, dst: &mut [u8]) {
        assert!(off
            .checked_add(dst.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range is inside the mapping (checked above), `dst` is a
        // distinct Rust allocation, and a byte copy has no validity
        // requirements on the source bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
    }

    /// Copies `src` into the region at offset `off`.
    ///
    /// Panics if the range is outside the region or the region is read-only.
    pub fn write_at(&self, off: usize, src: &[u8]) {
        assert!(self.writable, "write to a read-only shared region");
        assert!(off
            .checked_add(src.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range is inside a writable mapping (checked above) and
        // `src` is a Rust slice that cannot overlap memory we hand out
        // mutably: callers of this region never create `&mut` over it.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(off), src.len()) };
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map`, and
        // no reference into it outlives `self` (accessors borrow `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_rounds_up_and_zeroes() {
        let mem = SharedMem::create("ix-test", 100, false).unwrap();
        assert_eq!(mem.len(), PAGE_SIZE);
        let mut buf = [0xa5u8; 16];
        mem.read_at(0, &mut buf);
        assert_eq!(buf, [0u8; 16]);
    }

    #[test]
    fn write_then_read_through_second_mapping() {
        let mem = SharedMem::create("ix-test", PAGE_SIZE, false).unwrap();
        mem.write_at(10, b"hello");
        let dup = mem.fd().try_clone_to_owned().unwrap();
        let peer = SharedMem::from_fd(dup, PAGE_SIZE, false).unwrap();
        let mut out = [0u8; 5];
        peer.read_at(10, &mut out);
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn empty_region_is_refused() {
        assert!(matches!(
            SharedMem::create("ix-test", 0, false),
            Err(MemError::Empty)
        ));
    }

    #[test]
    #[should_panic]
    fn read_past_end_panics() {
        let mem = SharedMem::create("ix-test", PAGE_SIZE, false).unwrap();
        let mut buf = [0u8; 8];
        mem.read_at(PAGE_SIZE - 4, &mut buf);
    }
}
