//! The item store shared by every core of the server.
//!
//! Keys are spread over N shards by a keyed hash; each shard is a `Mutex`
//! over an open-addressing table of slot indices, a slab of entries, and
//! an LRU list threaded through the slab. One hash per operation picks
//! both the shard (bits 32 and up) and the bucket in it.
//!
//! The hash is foldhash (its `fast` variant, as hashbrown's default), not
//! std's SipHash-1-3: keys come from the network, so the hasher is seeded
//! at random per process (and per store), and a client that does not know
//! the seed cannot aim collisions at one bucket. foldhash is built to be
//! fast on short keys and "minimally DoS resistant" with a random seed,
//! not cryptographically strong as SipHash is: a client able to observe
//! timing over many requests is a risk we accept for the ~200 instructions
//! per request it saves (`scripts/kvs-cost.sh`). A lock is held for
//! one lookup or update and never across a reply: a hit hands out a clone
//! of the item's `Arc` (see [`super::item`]), which the transport
//! references until the peer has the bytes.
//!
//! Memory: each shard gets an equal part of the limit (`-m`), and the shard
//! count is chosen so that a part holds at least two items of the largest
//! size. An item is charged its allocation plus [`ENTRY_OVERHEAD`]. Storing
//! past the limit evicts from the LRU tail (counted in `evictions`;
//! expired items found there are `reclaimed` instead), so a full store
//! degrades, never fails, unless one item alone exceeds a shard's part
//! (`SERVER_ERROR out of memory storing object`).
//!
//! LRU order is memcached's, not exact: a hit (or `touch`, or a failed
//! `add`) moves an item to the head only if it was last moved there more
//! than [`BUMP_INTERVAL`] (60 s, memcached's `ITEM_UPDATE_INTERVAL`) ago.
//! A hot item is therefore re-linked at most once a minute, and a hit
//! writes nothing but the item's own entry, instead of its neighbours' and
//! the old head's (cache lines that another core may hold).
//!
//! Expiry is lazy: an item found expired (or flushed by `flush_all`) on
//! access is removed then; each store also reclaims up to two expired
//! items from the LRU tail.
//!
//! Semantics follow memcached 1.6: one global cas counter, starting at 1
//! and taken by every successful store and by an immediate `flush_all`
//! (`touch` keeps the cas), so `gets` shows memcached's numbers; `add` of
//! a present key bumps it in the LRU; `incr`/`decr` rewrite the value in
//! place when the result is not longer, padding with spaces (memcached's
//! visible quirk), else grow it; `append`/`prepend` keep flags and expiry
//! and fail with `NOT_STORED` past the item size limit.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;

use super::clock::RelTime;
use super::item::{Item, ItemBuilder};
use super::protocol::{parse_counter, StoreOp};

/// Bytes an entry costs besides its item's allocation (slab slot, table
/// slot, `Arc` header).
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Option<Entry>>() + 5 + 16;

const NIL: u32 = u32::MAX;

/// Most shards.
const MAX_SHARDS: usize = 64;

/// Seconds an item stays where it is in the LRU after it was last moved
/// to the head (memcached's `ITEM_UPDATE_INTERVAL`).
pub const BUMP_INTERVAL: RelTime = 60;

/// Expired items a store reclaims from the LRU tail, at most.
const RECLAIM_PER_STORE: usize = 2;

/// How the store is sized.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Memory for items, in bytes (memcached's `-m`).
    pub limit_bytes: usize,
    /// Largest item, in bytes (memcached's `-I`).
    pub item_max: usize,
    /// Shards; 0 chooses from the limit.
    pub shards: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            limit_bytes: 64 << 20,
            item_max: 1 << 20,
            shards: 0,
        }
    }
}

/// Outcome of a storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: the condition of `add`/`replace`/`append`/`prepend`
    /// failed.
    NotStored,
    /// `EXISTS`: `cas` found the item changed.
    Exists,
    /// `NOT_FOUND`: `cas` found no item.
    NotFound,
    /// The item alone is larger than a shard's memory.
    NoMemory,
}

/// Outcome of `incr`/`decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithResult {
    /// The new value.
    Value(u64),
    /// No such key.
    NotFound,
    /// The value is not a decimal number.
    NonNumeric,
    /// The new item does not fit in memory.
    NoMemory,
}

/// Store-wide counters, summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Items stored now.
    pub curr_items: u64,
    /// Items ever stored.
    pub total_items: u64,
    /// Bytes charged for the items stored now.
    pub bytes: u64,
    /// The memory limit.
    pub limit_maxbytes: u64,
    /// Live items removed to make room.
    pub evictions: u64,
    /// Expired items removed (on access or from the LRU tail).
    pub reclaimed: u64,
}

/// One item in a shard.
#[derive(Debug)]
pub struct Entry {
    item: Item,
    hash: u64,
    cas: u64,
    /// Expiry (0: never).
    exptime: RelTime,
    /// When it was last stored (for delayed `flush_all`).
    time: RelTime,
    /// When it was last moved to the LRU head.
    bumped: RelTime,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
struct Shard {
    table: HashTable<u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    bytes: usize,
    limit: usize,
    items: u64,
    total_items: u64,
    evictions: u64,
    reclaimed: u64,
}

/// Validity rules applied on access.
#[derive(Clone, Copy)]
struct Now {
    now: RelTime,
    /// memcached's `oldest_live`: items stored at or before it are gone
    /// once it has passed (0: no flush pending).
    oldest_live: RelTime,
}

impl Now {
    fn valid(&self, e: &Entry) -> bool {
        let expired = e.exptime != 0 && e.exptime <= self.now;
        let flushed =
            self.oldest_live != 0 && self.oldest_live <= self.now && e.time <= self.oldest_live;
        !expired && !flushed
    }
}

impl Shard {
    fn new(limit: usize) -> Shard {
        Shard {
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            limit,
            items: 0,
            total_items: 0,
            evictions: 0,
            reclaimed: 0,
        }
    }

    #[inline]
    fn entry(&self, i: u32) -> Option<&Entry> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    #[inline]
    fn entry_mut(&mut self, i: u32) -> Option<&mut Entry> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// The slot of a valid item for `key`; an invalid one found is removed.
    fn lookup(&mut self, hash: u64, key: &[u8], now: Now) -> Option<u32> {
        let slots = &self.slots;
        let i = *self.table.find(hash, |&i| {
            slots[i as usize]
                .as_ref()
                .is_some_and(|e| e.item.key() == key)
        })?;
        if self.entry(i).is_some_and(|e| now.valid(e)) {
            return Some(i);
        }
        self.unlink(i);
        self.reclaimed += 1;
        None
    }

    fn detach(&mut self, i: u32) {
        let Some(e) = self.entry(i) else { return };
        let (prev, next) = (e.prev, e.next);
        match self.entry_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.entry_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn attach_head(&mut self, i: u32) {
        let old = self.head;
        if let Some(e) = self.entry_mut(i) {
            e.prev = NIL;
            e.next = old;
        }
        match self.entry_mut(old) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    /// Moves slot `i` to the LRU head at relative time `now`, unless it
    /// was moved there within the last [`BUMP_INTERVAL`].
    fn bump(&mut self, i: u32, now: RelTime) {
        let Some(e) = self.entry_mut(i) else { return };
        if e.bumped.saturating_add(BUMP_INTERVAL) >= now {
            return;
        }
        e.bumped = now;
        if self.head != i {
            self.detach(i);
            self.attach_head(i);
        }
    }

    /// Removes the item in slot `i` entirely.
    fn unlink(&mut self, i: u32) {
        self.detach(i);
        let Some(e) = self.slots.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        if let Ok(found) = self.table.find_entry(e.hash, |&j| j == i) {
            found.remove();
        }
        self.free.push(i);
        self.bytes -= e.item.size() + ENTRY_OVERHEAD;
        self.items -= 1;
    }

    fn insert(&mut self, entry: Entry) {
        let hash = entry.hash;
        self.bytes += entry.item.size() + ENTRY_OVERHEAD;
        self.items += 1;
        self.total_items += 1;
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.table.insert_unique(hash, i, |&j| {
            slots[j as usize].as_ref().map_or(0, |e| e.hash)
        });
        self.attach_head(i);
    }

    /// Reclaims expired items from the LRU tail, then evicts until `need`
    /// more bytes fit. False if they cannot fit even in an empty shard.
    fn make_room(&mut self, need: usize, now: Now) -> bool {
        if need > self.limit {
            return false;
        }
        for _ in 0..RECLAIM_PER_STORE {
            match self.entry(self.tail) {
                Some(e) if !now.valid(e) => {
                    self.unlink(self.tail);
                    self.reclaimed += 1;
                }
                _ => break,
            }
        }
        while self.bytes + need > self.limit {
            let Some(e) = self.entry(self.tail) else {
                break;
            };
            if now.valid(e) {
                self.evictions += 1;
            } else {
                self.reclaimed += 1;
            }
            self.unlink(self.tail);
        }
        true
    }

    fn clear(&mut self) {
        self.table.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.bytes = 0;
        self.items = 0;
    }
}

/// The sharded item store.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    /// The last cas value handed out.
    cas: AtomicU64,
    oldest_live: AtomicU32,
    limit: usize,
    item_max: usize,
}

impl Store {
    /// An empty store.
    pub fn new(cfg: StoreConfig) -> Store {
        let limit = cfg.limit_bytes.max(1);
        let shards = if cfg.shards == 0 {
            let fit = limit / (2 * cfg.item_max.max(1));
            let n = fit.clamp(1, MAX_SHARDS);
            // Round down to a power of two.
            1 << (usize::BITS - 1 - n.leading_zeros())
        } else {
            cfg.shards.min(MAX_SHARDS)
        };
        Store {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(limit / shards)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            cas: AtomicU64::new(0),
            oldest_live: AtomicU32::new(0),
            limit,
            item_max: cfg.item_max,
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The largest item accepted, in bytes.
    pub fn item_max(&self) -> usize {
        self.item_max
    }

    fn now(&self, now: RelTime) -> Now {
        Now {
            now,
            oldest_live: self.oldest_live.load(Ordering::Relaxed),
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let i = (hash >> 32) as usize % self.shards.len();
        // A poisoned shard (a panic while it was locked) is still
        // consistent at every point where a panic could occur: keep serving.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn next_cas(&self) -> u64 {
        self.cas.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The valid item for `key`, bumped in the LRU.
    pub fn get(&self, key: &[u8], now: RelTime) -> Option<Item> {
        let hash = self.hash(key);
        let now = self.now(now);
        let mut s = self.shard(hash);
        let i = s.lookup(hash, key, now)?;
        s.bump(i, now.now);
        s.entry(i).map(|e| e.item.clone())
    }

    /// Runs a storage command whose value is in `new` (for `append` and
    /// `prepend`, the bytes to add); `exptime` is relative (see
    /// [`super::clock::Clock::expiry`]), `cas` is the `cas` command's
    /// unique value.
    pub fn store(
        &self,
        op: StoreOp,
        new: ItemBuilder,
        exptime: RelTime,
        cas: u64,
        now: RelTime,
    ) -> StoreResult {
        let hash = self.hash(new.key());
        let now = self.now(now);
        let mut s = self.shard(hash);
        let existing = s.lookup(hash, new.key(), now);
        let (builder, exptime) = match (op, existing) {
            (StoreOp::Set, _) | (StoreOp::Add, None) | (StoreOp::Replace, Some(_)) => {
                (new, exptime)
            }
            (StoreOp::Add, Some(i)) => {
                s.bump(i, now.now);
                return StoreResult::NotStored;
            }
            (StoreOp::Replace | StoreOp::Append | StoreOp::Prepend, None) => {
                return StoreResult::NotStored
            }
            (StoreOp::Cas, None) => return StoreResult::NotFound,
            (StoreOp::Cas, Some(i)) => {
                if s.entry(i).is_some_and(|e| e.cas != cas) {
                    return StoreResult::Exists;
                }
                (new, exptime)
            }
            (StoreOp::Append | StoreOp::Prepend, Some(i)) => {
                let Some(old) = s.entry(i) else {
                    return StoreResult::NotStored;
                };
                let (a, b) = if op == StoreOp::Append {
                    (old.item.data(), new.data())
                } else {
                    (new.data(), old.item.data())
                };
                let len = a.len() + b.len();
                if len + new.key().len() + super::protocol::ITEM_OVERHEAD > self.item_max {
                    return StoreResult::NotStored;
                }
                let mut joined = Item::builder(new.key(), old.item.flags(), len);
                let data = joined.data_mut();
                data[..a.len()].copy_from_slice(a);
                data[a.len()..].copy_from_slice(b);
                (joined, old.exptime)
            }
        };
        let need = builder.size() + ENTRY_OVERHEAD;
        if let Some(i) = existing {
            s.unlink(i);
        }
        if !s.make_room(need, now) {
            return StoreResult::NoMemory;
        }
        let cas = self.next_cas();
        s.insert(Entry {
            item: builder.finish(cas),
            hash,
            cas,
            exptime,
            time: now.now,
            bumped: now.now,
            prev: NIL,
            next: NIL,
        });
        StoreResult::Stored
    }

    /// Removes `key`; false if there was no valid item.
    pub fn delete(&self, key: &[u8], now: RelTime) -> bool {
        let hash = self.hash(key);
        let now = self.now(now);
        let mut s = self.shard(hash);
        match s.lookup(hash, key, now) {
            Some(i) => {
                s.unlink(i);
                true
            }
            None => false,
        }
    }

    /// Drops the item for `key` whatever its state (memcached does so when
    /// a `set` fails, so that a stale value does not survive it).
    pub fn discard(&self, key: &[u8]) {
        let hash = self.hash(key);
        let mut s = self.shard(hash);
        let slots = &s.slots;
        let found = s
            .table
            .find(hash, |&i| {
                slots[i as usize]
                    .as_ref()
                    .is_some_and(|e| e.item.key() == key)
            })
            .copied();
        if let Some(i) = found {
            s.unlink(i);
        }
    }

    /// Sets the expiry of `key`; false if there was no valid item.
    pub fn touch(&self, key: &[u8], exptime: RelTime, now: RelTime) -> bool {
        let hash = self.hash(key);
        let now = self.now(now);
        let mut s = self.shard(hash);
        let Some(i) = s.lookup(hash, key, now) else {
            return false;
        };
        if let Some(e) = s.entry_mut(i) {
            e.exptime = exptime;
        }
        s.bump(i, now.now);
        true
    }

    /// `incr` (wrapping at 2^64) or `decr` (stopping at 0) by `delta`.
    pub fn arith(&self, key: &[u8], incr: bool, delta: u64, now: RelTime) -> ArithResult {
        let hash = self.hash(key);
        let now = self.now(now);
        let mut s = self.shard(hash);
        let Some(i) = s.lookup(hash, key, now) else {
            return ArithResult::NotFound;
        };
        let Some(old) = s.entry(i) else {
            return ArithResult::NotFound;
        };
        let Some(value) = parse_counter(old.item.data()) else {
            return ArithResult::NonNumeric;
        };
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        let mut digits = [0u8; 20];
        let n = format_u64(value, &mut digits);
        let len = old.item.data().len().max(n);
        let mut b = Item::builder(key, old.item.flags(), len);
        let data = b.data_mut();
        data[..n].copy_from_slice(&digits[..n]);
        data[n..].fill(b' ');
        let exptime = old.exptime;
        let need = b.size() + ENTRY_OVERHEAD;
        s.unlink(i);
        if !s.make_room(need, now) {
            return ArithResult::NoMemory;
        }
        let cas = self.next_cas();
        s.insert(Entry {
            item: b.finish(cas),
            hash,
            cas,
            exptime,
            time: now.now,
            bumped: now.now,
            prev: NIL,
            next: NIL,
        });
        ArithResult::Value(value)
    }

    /// `flush_all`: with `at` 0 (no delay) every item goes now; otherwise
    /// items stored up to relative time `at` become invalid from then on
    /// (memcached's `oldest_live = realtime(delay) - 1`).
    pub fn flush(&self, at: RelTime) {
        if at == 0 {
            // memcached marks an immediate flush with a cas value
            // (`oldest_cas`), so the next item's cas is one higher.
            self.next_cas();
            self.oldest_live.store(0, Ordering::Relaxed);
            for s in self.shards.iter() {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
            }
        } else {
            self.oldest_live
                .store(at.saturating_sub(1).max(1), Ordering::Relaxed);
        }
    }

    /// The counters, summed over the shards.
    pub fn stats(&self) -> StoreStats {
        let mut t = StoreStats {
            limit_maxbytes: self.limit as u64,
            ..StoreStats::default()
        };
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            t.curr_items += s.items;
            t.total_items += s.total_items;
            t.bytes += s.bytes as u64;
            t.evictions += s.evictions;
            t.reclaimed += s.reclaimed;
        }
        t
    }
}

/// Writes `v` in decimal at the front of `out`; returns the digit count.
pub fn format_u64(mut v: u64, out: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[19 - n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out[..n].copy_from_slice(&tmp[20 - n..]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn builder(key: &str, flags: u32, value: &str) -> ItemBuilder {
        let mut b = Item::builder(key.as_bytes(), flags, value.len());
        b.data_mut().copy_from_slice(value.as_bytes());
        b
    }

    fn set(s: &Store, key: &str, value: &str, now: RelTime) -> StoreResult {
        s.store(StoreOp::Set, builder(key, 0, value), 0, 0, now)
    }

    fn value(s: &Store, key: &str, now: RelTime) -> Option<String> {
        s.get(key.as_bytes(), now)
            .map(|i| String::from_utf8(i.data().to_vec()).unwrap())
    }

    fn store() -> Store {
        Store::new(StoreConfig::default())
    }

    #[test]
    fn set_get_delete_round_trip() {
        let s = store();
        assert_eq!(set(&s, "a", "1", 10), StoreResult::Stored);
        assert_eq!(value(&s, "a", 10).as_deref(), Some("1"));
        assert!(s.delete(b"a", 10));
        assert!(!s.delete(b"a", 10));
        assert_eq!(value(&s, "a", 10), None);
        let st = s.stats();
        assert_eq!((st.curr_items, st.total_items, st.bytes), (0, 1, 0));
    }

    #[test]
    fn add_replace_append_prepend_follow_their_conditions() {
        let s = store();
        let op = |op, k, v| s.store(op, builder(k, 7, v), 0, 0, 10);
        assert_eq!(op(StoreOp::Replace, "k", "x"), StoreResult::NotStored);
        assert_eq!(op(StoreOp::Append, "k", "x"), StoreResult::NotStored);
        assert_eq!(op(StoreOp::Add, "k", "b"), StoreResult::Stored);
        assert_eq!(op(StoreOp::Add, "k", "z"), StoreResult::NotStored);
        assert_eq!(op(StoreOp::Replace, "k", "B"), StoreResult::Stored);
        assert_eq!(
            s.store(StoreOp::Append, builder("k", 99, "c"), 500, 0, 10),
            StoreResult::Stored
        );
        assert_eq!(op(StoreOp::Prepend, "k", "a"), StoreResult::Stored);
        let item = s.get(b"k", 10).unwrap();
        assert_eq!(item.data(), b"aBc");
        assert_eq!(item.flags(), 7, "append/prepend keep the flags");
    }

    #[test]
    fn cas_checks_the_unique_value_and_every_store_takes_a_new_one() {
        let s = store();
        assert_eq!(
            s.store(StoreOp::Cas, builder("k", 0, "x"), 0, 1, 10),
            StoreResult::NotFound
        );
        set(&s, "k", "v1", 10);
        let cas_of = |s: &Store| {
            let item = s.get(b"k", 10).unwrap();
            let [_, (off, len), _] = item.gets_reply();
            String::from_utf8(item.bytes()[off + 1..off + len].to_vec())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(cas_of(&s), 1);
        assert_eq!(
            s.store(StoreOp::Cas, builder("k", 0, "v2"), 0, 5, 10),
            StoreResult::Exists
        );
        assert_eq!(
            s.store(StoreOp::Cas, builder("k", 0, "v2"), 0, 1, 10),
            StoreResult::Stored
        );
        assert_eq!(cas_of(&s), 2);
        assert!(s.touch(b"k", 0, 10));
        assert_eq!(cas_of(&s), 2, "touch keeps the cas");
        s.arith(b"k", true, 1, 10);
        assert_eq!(
            s.store(StoreOp::Add, builder("k", 0, "x"), 0, 0, 10),
            StoreResult::NotStored
        );
        set(&s, "k", "3", 10);
        assert_eq!(cas_of(&s), 3, "a failed add takes no cas");
    }

    #[test]
    fn items_expire_lazily_and_touch_moves_the_expiry() {
        let s = store();
        s.store(StoreOp::Set, builder("t", 0, "v"), 12, 0, 10);
        s.store(StoreOp::Set, builder("gone", 0, "v"), 1, 0, 10);
        assert_eq!(value(&s, "gone", 10), None, "expiry 1 is the past");
        assert_eq!(value(&s, "t", 11).as_deref(), Some("v"));
        assert_eq!(value(&s, "t", 12), None);
        s.store(StoreOp::Set, builder("t", 0, "v"), 12, 0, 10);
        assert!(s.touch(b"t", 20, 11));
        assert_eq!(value(&s, "t", 19).as_deref(), Some("v"));
        assert!(!s.touch(b"t", 0, 20));
        assert_eq!(s.stats().curr_items, 0);
        assert_eq!(s.stats().reclaimed, 3);
    }

    #[test]
    fn delayed_flush_invalidates_older_items_when_due() {
        let s = store();
        set(&s, "old", "1", 10);
        s.flush(20);
        assert_eq!(value(&s, "old", 18).as_deref(), Some("1"));
        assert_eq!(value(&s, "old", 19), None);
        set(&s, "new", "2", 25);
        assert_eq!(value(&s, "new", 25).as_deref(), Some("2"));
        s.flush(0);
        assert_eq!(value(&s, "new", 25), None);
        assert_eq!(s.stats().bytes, 0);
    }

    #[test]
    fn incr_wraps_decr_floors_and_the_value_keeps_its_length() {
        let s = store();
        set(&s, "n", "10", 10);
        assert_eq!(s.arith(b"n", false, 1, 10), ArithResult::Value(9));
        assert_eq!(value(&s, "n", 10).as_deref(), Some("9 "));
        assert_eq!(s.arith(b"n", true, 100, 10), ArithResult::Value(109));
        assert_eq!(value(&s, "n", 10).as_deref(), Some("109"));
        assert_eq!(s.arith(b"n", false, 1000, 10), ArithResult::Value(0));
        assert_eq!(value(&s, "n", 10).as_deref(), Some("0  "));
        set(&s, "m", "18446744073709551615", 10);
        assert_eq!(s.arith(b"m", true, 2, 10), ArithResult::Value(1));
        assert_eq!(value(&s, "m", 10).as_deref(), Some("1                   "));
        set(&s, "x", "abc", 10);
        assert_eq!(s.arith(b"x", true, 1, 10), ArithResult::NonNumeric);
        set(&s, "e", "", 10);
        assert_eq!(s.arith(b"e", true, 1, 10), ArithResult::NonNumeric);
        assert_eq!(s.arith(b"zz", true, 1, 10), ArithResult::NotFound);
        s.store(StoreOp::Set, builder("f", 33, " 5"), 30, 0, 10);
        assert_eq!(s.arith(b"f", true, 1, 10), ArithResult::Value(6));
        let f = s.get(b"f", 10).unwrap();
        assert_eq!((f.data(), f.flags()), (&b"6 "[..], 33));
        assert_eq!(value(&s, "f", 30), None, "incr keeps the expiry");
    }

    #[test]
    fn the_limit_evicts_least_recently_used_items_first() {
        let item_size = builder("k000", 0, &"x".repeat(1000)).size() + ENTRY_OVERHEAD;
        let s = Store::new(StoreConfig {
            limit_bytes: 10 * item_size,
            item_max: 2000,
            shards: 1,
        });
        for i in 0..10 {
            set(&s, &format!("k{i:03}"), &"x".repeat(1000), 10);
        }
        assert_eq!(s.stats().evictions, 0);
        assert!(
            s.get(b"k000", 10 + BUMP_INTERVAL + 1).is_some(),
            "k000 is now the most recent"
        );
        set(&s, "k010", &"x".repeat(1000), 10);
        assert!(s.get(b"k001", 10).is_none(), "k001 was the least recent");
        assert!(s.get(b"k000", 10).is_some());
        let st = s.stats();
        assert_eq!((st.evictions, st.curr_items), (1, 10));
        assert!(st.bytes <= st.limit_maxbytes);
        for i in 0..1000 {
            set(&s, &format!("n{i:03}"), &"y".repeat(1000), 10);
            assert!(s.stats().bytes <= st.limit_maxbytes);
        }
        assert_eq!(s.stats().curr_items, 10);
    }

    #[test]
    fn an_item_moved_to_the_lru_head_stays_put_for_the_bump_interval() {
        let item_size = builder("k0", 0, &"x".repeat(1000)).size() + ENTRY_OVERHEAD;
        let s = Store::new(StoreConfig {
            limit_bytes: 3 * item_size,
            item_max: 2000,
            shards: 1,
        });
        for k in ["k0", "k1", "k2"] {
            set(&s, k, &"x".repeat(1000), 10);
        }
        // Within the interval a hit leaves the order (k0 oldest) as it is.
        assert!(s.get(b"k0", 10 + BUMP_INTERVAL).is_some());
        set(&s, "k3", &"x".repeat(1000), 10 + BUMP_INTERVAL);
        assert!(value(&s, "k0", 10 + BUMP_INTERVAL).is_none(), "k0 evicted");
        // Past it, a hit moves the item to the head: k1 goes next, not k2.
        assert!(s.get(b"k2", 11 + BUMP_INTERVAL).is_some());
        set(&s, "k4", &"x".repeat(1000), 11 + BUMP_INTERVAL);
        assert!(value(&s, "k1", 11 + BUMP_INTERVAL).is_none(), "k1 evicted");
        assert!(value(&s, "k2", 11 + BUMP_INTERVAL).is_some(), "k2 kept");
    }

    #[test]
    fn expired_items_at_the_tail_are_reclaimed_not_evicted() {
        let item_size = builder("k0", 0, &"x".repeat(1000)).size() + ENTRY_OVERHEAD;
        let s = Store::new(StoreConfig {
            limit_bytes: 3 * item_size,
            item_max: 2000,
            shards: 1,
        });
        s.store(StoreOp::Set, builder("k0", 0, &"x".repeat(1000)), 11, 0, 10);
        set(&s, "k1", &"x".repeat(1000), 10);
        set(&s, "k2", &"x".repeat(1000), 10);
        set(&s, "k3", &"x".repeat(1000), 20);
        let st = s.stats();
        assert_eq!((st.evictions, st.reclaimed, st.curr_items), (0, 1, 3));
    }

    #[test]
    fn an_item_larger_than_a_shard_is_refused_not_fatal() {
        let s = Store::new(StoreConfig {
            limit_bytes: 1000,
            item_max: 1 << 20,
            shards: 0,
        });
        assert_eq!(s.shards(), 1);
        assert_eq!(set(&s, "big", &"x".repeat(5000), 10), StoreResult::NoMemory);
        assert_eq!(set(&s, "small", "x", 10), StoreResult::Stored);
    }

    #[test]
    fn shard_count_gives_each_shard_two_of_the_largest_items() {
        let s = Store::new(StoreConfig::default());
        assert_eq!(s.shards(), 32);
        let s = Store::new(StoreConfig {
            limit_bytes: 1 << 30,
            ..StoreConfig::default()
        });
        assert_eq!(s.shards(), MAX_SHARDS);
    }

    #[test]
    fn discard_drops_even_an_expired_item() {
        let s = store();
        s.store(StoreOp::Set, builder("k", 0, "v"), 11, 0, 10);
        s.discard(b"k");
        assert_eq!(s.stats().curr_items, 0);
    }

    #[test]
    fn concurrent_threads_see_each_others_items_and_lose_no_increment() {
        let s = Arc::new(store());
        set(&s, "counter", "0", 10);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let key = format!("t{t}-{i}");
                        assert_eq!(set(&s, &key, &key, 10), StoreResult::Stored);
                        assert!(matches!(
                            s.arith(b"counter", true, 1, 10),
                            ArithResult::Value(_)
                        ));
                        let other = format!("t{}-{}", (t + 1) % 4, i / 2);
                        if let Some(v) = value(&s, &other, 10) {
                            assert_eq!(v, other);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(value(&s, "counter", 10).as_deref(), Some("8000"));
        assert_eq!(s.stats().curr_items, 8001);
        for t in 0..4 {
            assert_eq!(
                value(&s, &format!("t{t}-1999"), 10),
                Some(format!("t{t}-1999"))
            );
        }
    }

    #[test]
    fn format_u64_writes_decimal() {
        let mut d = [0u8; 20];
        let n = format_u64(0, &mut d);
        assert_eq!(&d[..n], b"0");
        let n = format_u64(u64::MAX, &mut d);
        assert_eq!(&d[..n], b"18446744073709551615");
    }
}
