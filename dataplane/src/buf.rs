//! Packet buffers: fixed-size slots in a per-queue pool carved from shared
//! memory, handed around as reference-counted [`PktBuf`] handles.
//!
//! A pool belongs to one elastic thread (it is `!Send`): reference counts
//! and the free list are plain cells, no atomics or locks. A handle holds
//! a raw pointer to its pool, not an `Rc`: the pool's `Rc` count is taken
//! once when a slot leaves the free list and given back when it returns,
//! so cloning and dropping handles touches only the slot's count. A buffer is
//! identified across processes by its descriptor `(pool id, index, offset,
//! len)`; inside the dataplane a [`PktBuf`] is such a descriptor plus a
//! handle that returns the slot to its pool when the last reference drops.
//!
//! Every slot is [`BUF_SIZE`] bytes: [`BUF_HEADROOM`] bytes of headroom for
//! headers to be prepended, then [`BUF_DATA`] bytes of data. A NIC backend
//! writes a received frame into a slot it owns exclusively (that write is
//! the "DMA"); from then on the bytes are only read, and views of them
//! ([`PktBuf::slice`]) travel up to the application without a copy.
//!
//! Aliasing rule this module enforces: `&mut` access to a slot's bytes is
//! only given out while the handle is the sole reference to the slot
//! ([`PktBuf::data_mut`] returns `None` otherwise), and shared `&[u8]`
//! access only while no `&mut` exists (the borrow of the handle guarantees
//! that). The memory is never writable by another process while a handle
//! exists: pools are mapped by peers only read-only, or not at all.

use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::rc::Rc;

use crate::mem::{MemError, SharedMem};

/// Headroom reserved in front of the data in every slot.
pub const BUF_HEADROOM: usize = 128;
/// Data capacity of a slot, after the headroom.
pub const BUF_DATA: usize = 2048;
/// Total size of a slot.
pub const BUF_SIZE: usize = BUF_HEADROOM + BUF_DATA;

/// Counters of a pool, for per-queue statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Slots in the pool.
    pub capacity: u32,
    /// Slots currently free.
    pub free: u32,
    /// Allocations refused because the pool was empty.
    pub exhausted: u64,
}

struct PoolInner {
    mem: SharedMem,
    /// Start of `mem` (cached: the hot path needs only this).
    base: NonNull<u8>,
    id: u16,
    capacity: u32,
    /// Stack of free slot indices: `free[..top]`.
    free: Box<[Cell<u32>]>,
    top: Cell<u32>,
    /// Handles per slot; 0 for a free slot.
    refs: Box<[Cell<u16>]>,
    exhausted: Cell<u64>,
}

impl PoolInner {
    /// The reference count of slot `idx`.
    #[inline]
    fn refs(&self, idx: u32) -> &Cell<u16> {
        debug_assert!(idx < self.capacity);
        // SAFETY: callers pass the index of a live handle, which came off
        // the free stack, whose entries are all below `capacity` (filled
        // with `0..capacity` in `from_mem`, pushed back only by handles);
        // `refs` has `capacity` elements.
        unsafe { self.refs.get_unchecked(idx as usize) }
    }

    /// Pops a free slot.
    #[inline]
    fn pop(&self) -> Option<u32> {
        let top = self.top.get().checked_sub(1)?;
        self.top.set(top);
        Some(self.free[top as usize].get())
    }

    /// Pushes a slot whose last handle dropped. The stack cannot be full:
    /// the slot was taken off it and is pushed back once.
    #[inline]
    fn push(&self, idx: u32) {
        let top = self.top.get();
        self.free[top as usize].set(idx);
        self.top.set(top + 1);
    }
}

/// A pool of fixed-size packet buffers in one shared memory region.
///
/// Cloning a `Pool` clones the handle, not the buffers.
#[derive(Clone)]
pub struct Pool {
    inner: Rc<PoolInner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("id", &self.inner.id)
            .field("capacity", &self.inner.capacity)
            .field("free", &self.inner.top.get())
            .finish()
    }
}

impl Pool {
    /// Creates a pool of `count` slots with id `id`, in hugepages if
    /// `prefer_huge` and the kernel has them, else in 4 KiB pages.
    pub fn new(id: u16, count: u32, prefer_huge: bool) -> Result<Pool, MemError> {
        let len = count as usize * BUF_SIZE;
        let mem = SharedMem::create(&format!("ix-pool-{id}"), len, prefer_huge)?;
        Ok(Self::from_mem(id, mem, count))
    }

    /// Builds a pool over an existing writable region holding `count` slots.
    ///
    /// Panics if the region is too small or read-only.
    pub fn from_mem(id: u16, mem: SharedMem, count: u32) -> Pool {
        assert!(mem.is_writable(), "a pool needs a writable region");
        assert!(mem.len() >= count as usize * BUF_SIZE, "region too small");
        assert!(count > 0 && count < u32::MAX, "pool size out of range");
        // Lowest indices on top of the stack: allocation order is 0, 1, 2…
        let free = (0..count).rev().map(Cell::new).collect();
        let refs = (0..count).map(|_| Cell::new(0)).collect();
        let base = NonNull::new(mem.as_ptr()).expect("a mapping is never at address 0");
        Pool {
            inner: Rc::new(PoolInner {
                mem,
                base,
                id,
                capacity: count,
                free,
                top: Cell::new(count),
                refs,
                exhausted: Cell::new(0),
            }),
        }
    }

    /// Takes a free slot, with the data window empty and positioned after
    /// the headroom. `None` when the pool is exhausted (counted).
    #[inline]
    pub fn alloc(&self) -> Option<PktBuf> {
        let Some(idx) = self.inner.pop() else {
            self.inner.exhausted.set(self.inner.exhausted.get() + 1);
            return None;
        };
        self.inner.refs(idx).set(1);
        // The slot's share of the pool: one strong count while it is out,
        // given back by the drop of its last handle.
        let pool = Rc::into_raw(self.inner.clone());
        Some(PktBuf {
            // SAFETY: `Rc::into_raw` never returns null.
            pool: unsafe { NonNull::new_unchecked(pool.cast_mut()) },
            idx,
            off: BUF_HEADROOM as u16,
            len: 0,
        })
    }

    /// This pool's id (carried in descriptors).
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity
    }

    /// Number of free slots.
    pub fn available(&self) -> u32 {
        self.inner.top.get()
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            capacity: self.inner.capacity,
            free: self.available(),
            exhausted: self.inner.exhausted.get(),
        }
    }

    /// The backing region (to pass its fd to a peer that maps it read-only).
    pub fn mem(&self) -> &SharedMem {
        &self.inner.mem
    }

    /// Whether `buf` belongs to this pool.
    pub fn owns(&self, buf: &PktBuf) -> bool {
        std::ptr::eq(Rc::as_ptr(&self.inner), buf.pool.as_ptr())
    }
}

/// A reference-counted handle to a window `[off, off+len)` of one slot.
///
/// Cloning shares the slot (no copy); the slot returns to its pool when the
/// last handle drops. Handles are `!Send`: a buffer stays on its core.
pub struct PktBuf {
    /// The pool, kept alive by the strong count the slot holds while its
    /// reference count is non-zero (see [`Pool::alloc`]).
    pool: NonNull<PoolInner>,
    idx: u32,
    off: u16,
    len: u16,
}

impl fmt::Debug for PktBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PktBuf")
            .field("pool", &self.inner().id)
            .field("idx", &self.idx)
            .field("off", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

impl Clone for PktBuf {
    #[inline]
    fn clone(&self) -> Self {
        let r = self.inner().refs(self.idx);
        r.set(
            r.get()
                .checked_add(1)
                .expect("buffer reference count overflow"),
        );
        PktBuf {
            pool: self.pool,
            idx: self.idx,
            off: self.off,
            len: self.len,
        }
    }
}

impl Drop for PktBuf {
    #[inline]
    fn drop(&mut self) {
        let inner = self.inner();
        let r = inner.refs(self.idx);
        let n = r.get() - 1;
        r.set(n);
        if n == 0 {
            inner.push(self.idx);
            // SAFETY: the pointer came from `Rc::into_raw` in `Pool::alloc`
            // when this slot left the free stack, and that strong count is
            // given back exactly once, here, as the slot returns (its last
            // handle drops). `inner` is not used afterwards.
            unsafe { Rc::decrement_strong_count(self.pool.as_ptr().cast_const()) };
        }
    }
}

impl PktBuf {
    /// The pool this handle's slot belongs to.
    #[inline]
    fn inner(&self) -> &PoolInner {
        // SAFETY: the slot holds a strong count of the pool's `Rc` while
        // its reference count is non-zero, which it is while this handle
        // exists (see `Pool::alloc` and `Drop`), so the pointee is alive;
        // only shared references to it are ever made (its mutable state is
        // in cells), and it is `!Sync` like the handle, so no other thread
        // touches it.
        unsafe { self.pool.as_ref() }
    }

    #[inline]
    fn slot_ptr(&self) -> *mut u8 {
        // SAFETY: idx < capacity and the region holds capacity * BUF_SIZE
        // bytes (checked in `Pool::from_mem`), so the offset stays inside
        // the mapping.
        unsafe { self.inner().base.as_ptr().add(self.idx as usize * BUF_SIZE) }
    }

    /// The bytes of the window.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: off + len <= BUF_SIZE is an invariant of every constructor
        // and setter; the slot is inside the mapping; no `&mut` to the slot
        // exists while `self` is borrowed shared (`data_mut` needs `&mut
        // self` and a unique reference count), and no other process writes
        // a pool region (see the module docs).
        unsafe {
            std::slice::from_raw_parts(self.slot_ptr().add(self.off as usize), self.len as usize)
        }
    }

    /// Mutable bytes of the window, only while this is the sole handle.
    #[inline]
    pub fn data_mut(&mut self) -> Option<&mut [u8]> {
        if !self.is_unique() {
            return None;
        }
        // SAFETY: as in `data`, and the reference count is 1, so no other
        // handle (and hence no other slice) to this slot exists; `&mut self`
        // prevents a second slice through this handle.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.slot_ptr().add(self.off as usize),
                self.len as usize,
            )
        })
    }

    /// Whether this handle is the only reference to its slot.
    #[inline]
    pub fn is_unique(&self) -> bool {
        self.inner().refs(self.idx).get() == 1
    }

    /// Offset of the window within the slot.
    #[inline]
    pub fn offset(&self) -> usize {
        self.off as usize
    }

    /// Length of the window.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the window is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of the slot in its pool.
    #[inline]
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// Id of the owning pool.
    #[inline]
    pub fn pool_id(&self) -> u16 {
        self.inner().id
    }

    /// Bytes of headroom in front of the window.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.off as usize
    }

    /// Bytes of room after the window.
    #[inline]
    pub fn tailroom(&self) -> usize {
        BUF_SIZE - self.off as usize - self.len as usize
    }

    /// Sets the window to `[off, off+len)` of the slot.
    ///
    /// Panics if the window does not fit the slot.
    #[inline]
    pub fn set_window(&mut self, off: usize, len: usize) {
        assert!(off + len <= BUF_SIZE, "window {off}+{len} outside the slot");
        self.off = off as u16;
        self.len = len as u16;
    }

    /// Grows the window at the front by `n` bytes (into the headroom).
    /// Returns false, leaving the window alone, if there is not enough.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> bool {
        if n > self.headroom() {
            return false;
        }
        self.off -= n as u16;
        self.len += n as u16;
        true
    }

    /// Grows the window at the back by `n` bytes. Returns false, leaving
    /// the window alone, if there is not enough tailroom.
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.len += n as u16;
        true
    }

    /// Drops `n` bytes from the front of the window (e.g. a parsed header).
    ///
    /// Panics if `n > len`.
    #[inline]
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len as usize, "advance past the window");
        self.off += n as u16;
        self.len -= n as u16;
    }

    /// Shortens the window to `len` bytes. Panics if it would grow.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        assert!(len <= self.len as usize, "truncate cannot grow a window");
        self.len = len as u16;
    }

    /// A new handle on the sub-window `[start, start+len)` of this window,
    /// sharing the slot (no copy).
    ///
    /// Panics if the range is outside the window.
    #[inline]
    pub fn slice(&self, start: usize, len: usize) -> PktBuf {
        assert!(start + len <= self.len as usize, "slice outside the window");
        let mut b = self.clone();
        b.off += start as u16;
        b.len = len as u16;
        b
    }

    /// Copies `src` to the end of the window. Returns false if it does not
    /// fit or the slot is shared.
    #[inline]
    pub fn extend_from_slice(&mut self, src: &[u8]) -> bool {
        let old = self.len as usize;
        if !self.is_unique() || !self.append(src.len()) {
            return false;
        }
        self.data_mut().expect("checked unique")[old..].copy_from_slice(src);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u32) -> Pool {
        Pool::new(7, n, false).unwrap()
    }

    #[test]
    fn alloc_until_empty_then_counts_exhaustion() {
        let p = pool(3);
        let bufs: Vec<_> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(p.available(), 0);
        assert!(p.alloc().is_none());
        assert_eq!(p.stats().exhausted, 1);
        drop(bufs);
        assert_eq!(p.available(), 3);
    }

    #[test]
    fn slot_returns_only_after_last_clone() {
        let p = pool(1);
        let mut b = p.alloc().unwrap();
        assert!(b.extend_from_slice(b"abcdef"));
        let view = b.slice(2, 3);
        assert_eq!(view.data(), b"cde");
        drop(b);
        assert_eq!(p.available(), 0, "the view still holds the slot");
        drop(view);
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn buffers_outlive_the_last_pool_handle() {
        let p = pool(2);
        let mut b = p.alloc().unwrap();
        assert!(b.extend_from_slice(b"still here"));
        let c = b.slice(0, 5);
        let weak = Rc::downgrade(&p.inner);
        drop(p);
        drop(b);
        assert_eq!(c.data(), b"still");
        assert_eq!(c.pool_id(), 7);
        drop(c);
        assert!(weak.upgrade().is_none(), "the last slot frees the pool");
    }

    #[test]
    fn outstanding_slots_hold_the_pool_once_each() {
        let p = pool(4);
        let a = p.alloc().unwrap();
        let views: Vec<_> = (0..5).map(|_| a.clone()).collect();
        let b = p.alloc().unwrap();
        assert_eq!(Rc::strong_count(&p.inner), 3, "the handle and two slots");
        drop((a, views));
        assert_eq!(Rc::strong_count(&p.inner), 2);
        drop(b);
        assert_eq!(Rc::strong_count(&p.inner), 1);
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn shared_slot_is_read_only() {
        let p = pool(1);
        let mut b = p.alloc().unwrap();
        assert!(b.extend_from_slice(b"xy"));
        let c = b.clone();
        assert!(b.data_mut().is_none());
        assert!(!b.extend_from_slice(b"z"));
        drop(c);
        assert!(b.data_mut().is_some());
    }

    #[test]
    fn headroom_prepend_and_advance() {
        let p = pool(1);
        let mut b = p.alloc().unwrap();
        assert_eq!(b.headroom(), BUF_HEADROOM);
        assert_eq!(b.tailroom(), BUF_DATA);
        assert!(b.extend_from_slice(b"payload"));
        assert!(b.prepend(4));
        b.data_mut().unwrap()[..4].copy_from_slice(b"hdr:");
        assert_eq!(b.data(), b"hdr:payload");
        b.advance(4);
        assert_eq!(b.data(), b"payload");
        assert!(!b.prepend(BUF_HEADROOM + 1));
        assert!(!b.append(BUF_DATA));
    }

    #[test]
    fn slots_do_not_overlap() {
        let p = pool(4);
        let mut bufs: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert!(b.append(BUF_DATA));
            b.data_mut().unwrap().fill(i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.data().iter().all(|&x| x == i as u8));
        }
    }
}
