//! [`TxBuf`]: an owned, immutable, reference-counted byte buffer that an
//! application hands to `sendv`. TCP keeps a clone until the peer has
//! acknowledged the bytes, so the memory stays alive without `unsafe` and
//! without copying it into a socket buffer.
//!
//! A `TxBuf` is a window over one of: a static slice, a heap buffer shared
//! by `Rc` (the application's memory), a heap buffer shared by `Arc` (memory
//! the application shares between cores, e.g. a key-value store's values),
//! or a packet buffer (e.g. received data echoed back zero-copy). Cloning and slicing never copy bytes.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use crate::buf::PktBuf;

#[derive(Clone)]
enum Backing {
    Static(&'static [u8]),
    Heap(Rc<[u8]>),
    Shared(Arc<[u8]>),
    Packet(PktBuf),
}

/// An immutable, cheaply clonable window of bytes to transmit.
#[derive(Clone)]
pub struct TxBuf {
    backing: Backing,
    off: u32,
    len: u32,
}

impl fmt::Debug for TxBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.backing {
            Backing::Static(_) => "static",
            Backing::Heap(_) => "heap",
            Backing::Shared(_) => "shared",
            Backing::Packet(_) => "packet",
        };
        f.debug_struct("TxBuf")
            .field("backing", &kind)
            .field("len", &self.len)
            .finish()
    }
}

impl TxBuf {
    /// A buffer over static bytes (no allocation, no reference count).
    pub fn from_static(bytes: &'static [u8]) -> TxBuf {
        TxBuf {
            off: 0,
            len: u32::try_from(bytes.len()).expect("TxBuf larger than 4 GiB"),
            backing: Backing::Static(bytes),
        }
    }

    /// A buffer over shared heap bytes (clone the `Rc` to keep your own
    /// reference: the bytes are immutable either way).
    pub fn from_rc(bytes: Rc<[u8]>) -> TxBuf {
        TxBuf {
            off: 0,
            len: u32::try_from(bytes.len()).expect("TxBuf larger than 4 GiB"),
            backing: Backing::Heap(bytes),
        }
    }

    /// A buffer over heap bytes shared between threads (the `Arc` keeps
    /// them alive until the peer has acknowledged them).
    pub fn from_arc(bytes: Arc<[u8]>) -> TxBuf {
        TxBuf {
            off: 0,
            len: u32::try_from(bytes.len()).expect("TxBuf larger than 4 GiB"),
            backing: Backing::Shared(bytes),
        }
    }

    /// A buffer taking ownership of `bytes` (one allocation to move them
    /// behind an `Rc`).
    pub fn from_vec(bytes: Vec<u8>) -> TxBuf {
        TxBuf::from_rc(Rc::from(bytes))
    }

    /// A buffer over the window of a packet buffer (no copy).
    pub fn from_packet(pkt: PktBuf) -> TxBuf {
        TxBuf {
            off: 0,
            len: pkt.len() as u32,
            backing: Backing::Packet(pkt),
        }
    }

    /// Number of bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        let all: &[u8] = match &self.backing {
            Backing::Static(s) => s,
            Backing::Heap(h) => h,
            Backing::Shared(h) => h,
            Backing::Packet(p) => p.data(),
        };
        &all[self.off as usize..(self.off + self.len) as usize]
    }

    /// A buffer over `[start, start+len)` of this one, sharing the bytes.
    ///
    /// Panics if the range is outside the buffer.
    #[inline]
    pub fn slice(&self, start: usize, len: usize) -> TxBuf {
        assert!(start + len <= self.len as usize, "slice outside the TxBuf");
        TxBuf {
            backing: self.backing.clone(),
            off: self.off + start as u32,
            len: len as u32,
        }
    }

    /// Drops the first `n` bytes. Panics if `n > len`.
    #[inline]
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len as usize, "advance past the TxBuf");
        self.off += n as u32;
        self.len -= n as u32;
    }
}

impl AsRef<[u8]> for TxBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<&'static [u8]> for TxBuf {
    fn from(b: &'static [u8]) -> TxBuf {
        TxBuf::from_static(b)
    }
}

impl From<Vec<u8>> for TxBuf {
    fn from(b: Vec<u8>) -> TxBuf {
        TxBuf::from_vec(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::Pool;

    #[test]
    fn slices_share_and_advance() {
        let mut t = TxBuf::from_vec(b"hello world".to_vec());
        let w = t.slice(6, 5);
        assert_eq!(w.as_slice(), b"world");
        t.advance(6);
        assert_eq!(t.as_slice(), b"world");
        assert_eq!(TxBuf::from_static(b"abc").slice(1, 1).as_slice(), b"b");
    }

    #[test]
    fn arc_backed_holds_a_reference_until_dropped() {
        let value: Arc<[u8]> = Arc::from(&b"stored value"[..]);
        let t = TxBuf::from_arc(value.clone()).slice(7, 5);
        assert_eq!(t.as_slice(), b"value");
        assert_eq!(Arc::strong_count(&value), 2);
        drop(t);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn packet_backed_keeps_slot_alive() {
        let pool = Pool::new(1, 1, false).unwrap();
        let mut p = pool.alloc().unwrap();
        assert!(p.extend_from_slice(b"echo"));
        let t = TxBuf::from_packet(p);
        assert_eq!(pool.available(), 0);
        assert_eq!(t.slice(1, 2).as_slice(), b"ch");
        drop(t);
        assert_eq!(pool.available(), 1);
    }
}
