//! An item's bytes, laid out as the reply that serves it.
//!
//! A stored item is one immutable `Arc<[u8]>` shared by every core:
//!
//! ```text
//! <space><cas digits><padding>VALUE <key> <flags> <bytes>\r\n<data>\r\n
//!                             |------------ header ---------|
//! |-- cas field (21 bytes) --|------------------ get reply ------------|
//! ```
//!
//! A `get` hit is therefore one zero-copy slice of the item (plus the
//! final `END\r\n`), and a `gets` hit three slices: the header without its
//! `\r\n`, the cas field, and the rest. The `get` reply runs to the end of
//! the item, so it is the item's buffer with its front dropped: no second
//! reference is taken (and dropped) to cut it out. Nothing is formatted or copied per
//! request. The cas suffix is written once, when the store assigns the cas
//! value, while the item is still unshared; every change to an item builds
//! a new one (the bytes are immutable once stored, so a reply in flight
//! never sees them change).

use std::io::Write;
use std::sync::Arc;

use super::store::format_u64;

/// Room for " <cas>": a space and up to 20 digits.
const CAS_ROOM: usize = 21;

/// Where the `get` reply starts: after the cas field.
const MAIN: usize = CAS_ROOM;

/// An item's bytes and where its parts lie.
#[derive(Debug, Clone)]
pub struct Item {
    bytes: Arc<[u8]>,
    /// Key length.
    klen: u8,
    /// Header length, `\r\n` included.
    hdr: u32,
    /// Value length.
    dlen: u32,
    /// Digits of the cas value in the suffix.
    cas_digits: u8,
    flags: u32,
}

impl Item {
    /// An item for `key` (at most 255 bytes) with `flags` and a zeroed value
    /// of `len` bytes to fill through [`ItemBuilder::data_mut`].
    pub fn builder(key: &[u8], flags: u32, len: usize) -> ItemBuilder {
        let mut header = [0u8; 300];
        let mut w = &mut header[..];
        // Cannot fail: "VALUE " + 255 + 2 numbers of at most 10 and 20
        // digits + 4 separators fit in 300 bytes.
        // Numbers by hand: `write!` costs more than the rest of a store.
        let mut digits = [0u8; 20];
        let _ = w.write_all(b"VALUE ");
        let _ = w.write_all(key);
        let _ = w.write_all(b" ");
        let n = format_u64(u64::from(flags), &mut digits);
        let _ = w.write_all(&digits[..n]);
        let _ = w.write_all(b" ");
        let n = format_u64(len as u64, &mut digits);
        let _ = w.write_all(&digits[..n]);
        let _ = w.write_all(b"\r\n");
        let hdr = 300 - w.len();
        let total = hdr + len + 2 + CAS_ROOM;
        // One allocation, written in place (a collected `RepeatN` has an
        // exact length, so the `Arc` is allocated once at its final size).
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, total).collect();
        if let Some(b) = Arc::get_mut(&mut bytes) {
            b[MAIN..MAIN + hdr].copy_from_slice(&header[..hdr]);
            b[MAIN + hdr + len..].copy_from_slice(b"\r\n");
        }
        ItemBuilder {
            item: Item {
                bytes,
                klen: key.len().min(255) as u8,
                hdr: hdr as u32,
                dlen: len as u32,
                cas_digits: 1,
                flags,
            },
        }
    }

    /// The key.
    #[inline]
    pub fn key(&self) -> &[u8] {
        &self.bytes[MAIN + 6..MAIN + 6 + self.klen as usize]
    }

    /// The value.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let h = MAIN + self.hdr as usize;
        &self.bytes[h..h + self.dlen as usize]
    }

    /// The client flags.
    #[inline]
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The shared bytes (what a reply references).
    #[inline]
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The shared bytes, without another reference count increment.
    #[inline]
    pub fn into_bytes(self) -> Arc<[u8]> {
        self.bytes
    }

    /// Bytes of memory the item is charged for (its allocation).
    #[inline]
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// `(offset, len)` of the `get` reply: header, value, `\r\n`; it ends
    /// where the item does.
    #[inline]
    pub fn get_reply(&self) -> (usize, usize) {
        (MAIN, self.main_len())
    }

    /// `(offset, len)` of the three slices of the `gets` reply: header up
    /// to its `\r\n`, " <cas>", then `\r\n` value `\r\n`.
    #[inline]
    pub fn gets_reply(&self) -> [(usize, usize); 3] {
        let h = self.hdr as usize - 2;
        let main = self.main_len();
        [
            (MAIN, h),
            (0, 1 + self.cas_digits as usize),
            (MAIN + h, main - h),
        ]
    }

    #[inline]
    fn main_len(&self) -> usize {
        self.hdr as usize + self.dlen as usize + 2
    }
}

/// An item being built: still unshared, so its value and cas are writable.
#[derive(Debug)]
pub struct ItemBuilder {
    item: Item,
}

impl ItemBuilder {
    /// The value, to fill.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let h = MAIN + self.item.hdr as usize;
        let len = self.item.dlen as usize;
        match Arc::get_mut(&mut self.item.bytes) {
            Some(b) => &mut b[h..h + len],
            // The builder holds the only reference until `finish`.
            None => &mut [],
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        self.item.key()
    }

    /// The value as filled so far.
    pub fn data(&self) -> &[u8] {
        self.item.data()
    }

    /// The value length.
    pub fn len(&self) -> usize {
        self.item.dlen as usize
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.item.dlen == 0
    }

    /// Bytes the finished item will be charged for.
    pub fn size(&self) -> usize {
        self.item.size()
    }

    /// Writes the cas value and seals the item.
    pub fn finish(mut self, cas: u64) -> Item {
        let mut digits = [0u8; 20];
        let n = format_u64(cas, &mut digits);
        if let Some(b) = Arc::get_mut(&mut self.item.bytes) {
            b[0] = b' ';
            b[1..1 + n].copy_from_slice(&digits[..n]);
        }
        self.item.cas_digits = n as u8;
        self.item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(item: &Item, (off, len): (usize, usize)) -> &[u8] {
        &item.bytes()[off..off + len]
    }

    #[test]
    fn get_reply_is_one_slice_and_gets_three() {
        let mut b = Item::builder(b"key", 42, 5);
        b.data_mut().copy_from_slice(b"hello");
        let item = b.finish(12345);
        assert_eq!(item.key(), b"key");
        assert_eq!(item.data(), b"hello");
        assert_eq!(item.flags(), 42);
        assert_eq!(
            slice(&item, item.get_reply()),
            b"VALUE key 42 5\r\nhello\r\n"
        );
        let gets: Vec<u8> = item
            .gets_reply()
            .iter()
            .flat_map(|&r| slice(&item, r).to_vec())
            .collect();
        assert_eq!(gets, b"VALUE key 42 5 12345\r\nhello\r\n");
    }

    #[test]
    fn empty_values_and_extreme_numbers_fit() {
        let item = Item::builder(&[b'k'; 250], u32::MAX, 0).finish(u64::MAX);
        assert_eq!(item.data(), b"");
        let gets: Vec<u8> = item
            .gets_reply()
            .iter()
            .flat_map(|&r| slice(&item, r).to_vec())
            .collect();
        let expected = format!(
            "VALUE {} 4294967295 0 18446744073709551615\r\n\r\n",
            "k".repeat(250)
        );
        assert_eq!(gets, expected.as_bytes());
        assert_eq!(item.size(), expected.len());
    }
}
