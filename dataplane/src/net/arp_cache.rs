//! The ARP cache of one interface (RFC 826, with the timing advice of
//! RFC 1122 §2.3.2): IPv4 → MAC entries with a lifetime, and the frames
//! waiting while an address is being resolved.
//!
//! Everything has a fixed capacity chosen at construction, and nothing
//! allocates afterwards:
//! - Entries live in an open-addressing table (linear probing, backward
//!   shift deletion, at most half full) keyed by a seeded hash of the
//!   address. When it holds `capacity` entries, learning a new address
//!   evicts the entry that expires first (an expired one if there is any);
//!   static entries are never evicted.
//! - A dynamic entry lives `entry_lifetime` after it was last confirmed by
//!   an ARP packet from its owner. While it is used during the last
//!   `refresh_before` of its life, [`ArpCache::lookup`] asks the caller (at
//!   most once per `retransmit`) to send a unicast request to the known MAC
//!   (RFC 1122 §2.3.2.1 "unicast poll"), so that busy entries are
//!   refreshed without traffic stalling.
//! - A frame for an unresolved address waits in one FIFO shared by all
//!   addresses, at most `pending_per_ip` per address and `pending_total` in
//!   all (RFC 1122 §2.3.2.2 asks for at least one per address). Excess
//!   frames are dropped and counted. A request is retransmitted every
//!   `retransmit` (RFC 1122 asks for no more than one per second) up to
//!   `max_requests` in all; then the waiting frames are dropped and counted.
//!
//! Time is passed in; the cache never reads a clock.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::buf::PktBuf;
use crate::time::Instant;
use crate::wire::ethernet::EthernetAddress;

/// Sizes and timers of an [`ArpCache`]. Zero sizes and counts are raised
/// to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    /// Maximum number of entries (static and dynamic).
    pub capacity: usize,
    /// How long a dynamic entry is valid after it was learned or confirmed.
    pub entry_lifetime: Duration,
    /// How long before expiry a used entry starts being refreshed.
    pub refresh_before: Duration,
    /// Frames that may wait for one address.
    pub pending_per_ip: usize,
    /// Frames that may wait in all.
    pub pending_total: usize,
    /// Interval between requests for an unresolved address (and between
    /// refresh polls of an entry).
    pub retransmit: Duration,
    /// Requests sent for an address before its waiting frames are dropped.
    pub max_requests: u32,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            capacity: 1024,
            entry_lifetime: Duration::from_secs(60),
            refresh_before: Duration::from_secs(5),
            // Generous: a client opening many connections at once to a
            // new neighbour queues one SYN per connection (Linux keeps
            // 64 KiB of frames per unresolved neighbour).
            pending_per_ip: 1024,
            pending_total: 2048,
            retransmit: Duration::from_secs(1),
            max_requests: 3,
        }
    }
}

/// Counters and gauges of an [`ArpCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArpCacheStats {
    /// Entries held (including expired ones not yet reclaimed).
    pub entries: usize,
    /// Frames waiting for resolution.
    pub pending_frames: usize,
    /// Addresses being resolved.
    pub resolving: usize,
    /// Frames dropped because a pending queue was full.
    pub pending_dropped: u64,
    /// Frames dropped because their address did not resolve in time.
    pub timeout_dropped: u64,
    /// Resolutions abandoned after `max_requests` requests.
    pub resolutions_failed: u64,
    /// Entries evicted to make room for a new one.
    pub evictions: u64,
    /// New entries refused because the table was full of static entries.
    pub insert_refused: u64,
}

/// What [`ArpCache::lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A valid entry.
    Hit(EthernetAddress),
    /// A valid entry close to expiry: use it, and send a unicast request to
    /// it to refresh the entry.
    Refresh(EthernetAddress),
    /// No valid entry: queue the frame with [`ArpCache::enqueue`].
    Miss,
}

/// What [`ArpCache::enqueue`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued, and a resolution started: send a broadcast request now.
    SendRequest,
    /// Queued behind a resolution already under way.
    Waiting,
    /// Dropped (and counted): the queue for this address or the whole
    /// pending queue is full.
    Dropped,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ip: Ipv4Addr,
    mac: EthernetAddress,
    /// `None` for a static entry.
    expires: Option<Instant>,
    /// When the last refresh poll was asked for.
    refresh_sent: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Resolution {
    ip: Ipv4Addr,
    /// When the next request is due.
    next_request: Instant,
    /// Requests sent so far.
    requests: u32,
    /// Frames waiting in the pending queue.
    queued: usize,
}

/// An ARP cache with pending-resolution queues; see the module docs.
#[derive(Debug)]
pub struct ArpCache {
    cfg: ArpConfig,
    slots: Box<[Option<Entry>]>,
    /// log2 of the table length.
    bits: u32,
    seed: u32,
    len: usize,
    /// Bumped whenever an entry is added, changed or removed: lets a
    /// caller cache what [`ArpCache::stable_hit`] said about an address.
    generation: u64,
    resolutions: Vec<Resolution>,
    pending: VecDeque<(Ipv4Addr, PktBuf)>,
    stats: ArpCacheStats,
}

impl ArpCache {
    /// An empty cache with room for `cfg.capacity` entries and
    /// `cfg.pending_total` waiting frames, all allocated now.
    pub fn new(mut cfg: ArpConfig) -> ArpCache {
        cfg.capacity = cfg.capacity.max(1);
        cfg.pending_per_ip = cfg.pending_per_ip.max(1);
        cfg.pending_total = cfg.pending_total.max(1);
        cfg.max_requests = cfg.max_requests.max(1);
        let table_len = (cfg.capacity * 2).next_power_of_two();
        ArpCache {
            slots: vec![None; table_len].into_boxed_slice(),
            bits: table_len.trailing_zeros(),
            seed: rand::random(),
            len: 0,
            generation: 0,
            resolutions: Vec::with_capacity(cfg.pending_total),
            pending: VecDeque::with_capacity(cfg.pending_total),
            stats: ArpCacheStats::default(),
            cfg,
        }
    }

    /// The configuration in force (after raising zeros).
    pub fn config(&self) -> &ArpConfig {
        &self.cfg
    }

    /// Counters and gauges.
    pub fn stats(&self) -> ArpCacheStats {
        ArpCacheStats {
            entries: self.len,
            pending_frames: self.pending.len(),
            resolving: self.resolutions.len(),
            ..self.stats
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn home(&self, ip: Ipv4Addr) -> usize {
        // Fibonacci hashing of the seeded address; the top `bits` bits.
        let h = (u32::from(ip) ^ self.seed).wrapping_mul(0x9e37_79b9);
        (u64::from(h) << self.bits >> 32) as usize
    }

    /// The slot holding `ip`, if any. Terminates because the table is at
    /// most half full.
    #[inline]
    fn find(&self, ip: Ipv4Addr) -> Option<usize> {
        let mut i = self.home(ip);
        loop {
            match &self.slots[i] {
                None => return None,
                Some(e) if e.ip == ip => return Some(i),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
    }

    /// Empties slot `i`, shifting later members of its probe run back so
    /// that every entry stays reachable from its home slot.
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some(e) = self.slots[j] else { break };
            let k = self.home(e.ip);
            // The entry at j may fill the hole at i unless its home lies
            // cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.slots[i] = Some(e);
                i = j;
            }
        }
        self.slots[i] = None;
        self.len -= 1;
        self.generation += 1;
    }

    /// Puts a new entry (whose address is absent) into the table, evicting
    /// one first if the table is at capacity. Returns false if every entry
    /// is static.
    fn insert_new(&mut self, entry: Entry) -> bool {
        if self.len >= self.cfg.capacity {
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, (*s)?.expires?)))
                .min_by_key(|&(_, expires)| expires);
            let Some((i, _)) = victim else {
                self.stats.insert_refused += 1;
                return false;
            };
            self.remove_at(i);
            self.stats.evictions += 1;
        }
        let mut i = self.home(entry.ip);
        while self.slots[i].is_some() {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = Some(entry);
        self.len += 1;
        self.generation += 1;
        true
    }

    /// The MAC for `ip` if a valid entry exists, without side effects.
    pub fn get(&self, ip: Ipv4Addr, now: Instant) -> Option<EthernetAddress> {
        let e = self.slots[self.find(ip)?]?;
        match e.expires {
            Some(t) if now >= t => None,
            _ => Some(e.mac),
        }
    }

    /// Changes whenever an entry is added, changed or removed (never
    /// repeats).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The MAC of `ip` and the instant until which [`lookup`](Self::lookup)
    /// of `ip` is a plain [`Lookup::Hit`] of that MAC with no side effect,
    /// as long as [`generation`](Self::generation) does not change: the
    /// end of the entry's life minus `refresh_before` (static entries: the
    /// end of time). `None` if there is no entry or that instant is not
    /// after `now`. Lets a sender cache the next hop's MAC.
    pub fn stable_hit(&self, ip: Ipv4Addr, now: Instant) -> Option<(EthernetAddress, Instant)> {
        let e = self.slots[self.find(ip)?]?;
        let until = match e.expires {
            None => Instant::from_nanos(u64::MAX),
            Some(t) => {
                let before = u64::try_from(self.cfg.refresh_before.as_nanos()).unwrap_or(u64::MAX);
                Instant::from_nanos(t.as_nanos().saturating_sub(before))
            }
        };
        (now < until).then_some((e.mac, until))
    }

    /// Looks up the next hop `ip` for a frame about to be sent: reclaims
    /// an expired entry, and asks for a refresh poll when a used entry is
    /// close to expiry.
    pub fn lookup(&mut self, ip: Ipv4Addr, now: Instant) -> Lookup {
        let Some(i) = self.find(ip) else {
            return Lookup::Miss;
        };
        let retransmit = self.cfg.retransmit;
        let refresh_before = self.cfg.refresh_before;
        let Some(e) = self.slots[i].as_mut() else {
            return Lookup::Miss;
        };
        let Some(expires) = e.expires else {
            return Lookup::Hit(e.mac);
        };
        if now >= expires {
            self.remove_at(i);
            return Lookup::Miss;
        }
        let poll_due = match e.refresh_sent {
            Some(t) => now >= t + retransmit,
            None => true,
        };
        let refresh_due = now + refresh_before >= expires && poll_due;
        if refresh_due {
            e.refresh_sent = Some(now);
            Lookup::Refresh(e.mac)
        } else {
            Lookup::Hit(e.mac)
        }
    }

    /// Refreshes the entry for `ip` with `mac` if one exists (RFC 826's
    /// "merge" step). Static entries are left alone. Returns whether an
    /// entry exists.
    pub fn update(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> bool {
        let Some(i) = self.find(ip) else {
            return false;
        };
        let lifetime = self.cfg.entry_lifetime;
        if let Some(e) = self.slots[i].as_mut() {
            if e.expires.is_some() {
                *e = Entry {
                    ip,
                    mac,
                    expires: Some(now + lifetime),
                    refresh_sent: None,
                };
                self.generation += 1;
            }
        }
        true
    }

    /// Learns or refreshes a dynamic entry for `ip`. Returns false only if
    /// the table is full of static entries.
    pub fn insert(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> bool {
        self.update(ip, mac, now)
            || self.insert_new(Entry {
                ip,
                mac,
                expires: Some(now + self.cfg.entry_lifetime),
                refresh_sent: None,
            })
    }

    /// Adds or replaces a static entry, which never expires and is never
    /// evicted. Returns false if the table is full of static entries.
    pub fn add_static(&mut self, ip: Ipv4Addr, mac: EthernetAddress) -> bool {
        let entry = Entry {
            ip,
            mac,
            expires: None,
            refresh_sent: None,
        };
        match self.find(ip) {
            Some(i) => {
                self.slots[i] = Some(entry);
                self.generation += 1;
                true
            }
            None => self.insert_new(entry),
        }
    }

    /// Removes the entry for `ip`, static or not. Returns whether there was
    /// one.
    pub fn remove(&mut self, ip: Ipv4Addr) -> bool {
        match self.find(ip) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Queues `frame` until `ip` is resolved; see [`Enqueued`].
    pub fn enqueue(&mut self, ip: Ipv4Addr, frame: PktBuf, now: Instant) -> Enqueued {
        if self.pending.len() >= self.cfg.pending_total {
            self.stats.pending_dropped += 1;
            return Enqueued::Dropped;
        }
        match self.resolutions.iter_mut().find(|r| r.ip == ip) {
            Some(r) if r.queued >= self.cfg.pending_per_ip => {
                self.stats.pending_dropped += 1;
                Enqueued::Dropped
            }
            Some(r) => {
                r.queued += 1;
                self.pending.push_back((ip, frame));
                Enqueued::Waiting
            }
            None => {
                // Fewer resolutions than waiting frames, so within capacity.
                self.resolutions.push(Resolution {
                    ip,
                    next_request: now + self.cfg.retransmit,
                    requests: 1,
                    queued: 1,
                });
                self.pending.push_back((ip, frame));
                Enqueued::SendRequest
            }
        }
    }

    /// Whether `ip` is being resolved.
    pub fn is_resolving(&self, ip: Ipv4Addr) -> bool {
        self.resolutions.iter().any(|r| r.ip == ip)
    }

    /// Ends the resolution of `ip` and hands its waiting frames to `out`,
    /// in the order they were queued. Frames for other addresses keep
    /// their order.
    pub fn take_pending(&mut self, ip: Ipv4Addr, out: impl FnMut(PktBuf)) {
        let Some(pos) = self.resolutions.iter().position(|r| r.ip == ip) else {
            return;
        };
        self.resolutions.swap_remove(pos);
        self.extract(ip, out);
    }

    /// Removes the frames for `ip` from the pending FIFO, passing them to
    /// `out` in order; a single rotation, so no allocation.
    fn extract(&mut self, ip: Ipv4Addr, mut out: impl FnMut(PktBuf)) {
        for _ in 0..self.pending.len() {
            let Some((a, frame)) = self.pending.pop_front() else {
                break;
            };
            if a == ip {
                out(frame);
            } else {
                self.pending.push_back((a, frame));
            }
        }
    }

    /// Advances the resolutions to `now`: calls `request` for every address
    /// whose request is due for retransmission, and drops (counting them)
    /// the frames of addresses that got `max_requests` requests and no
    /// answer within `retransmit` of the last.
    pub fn poll(&mut self, now: Instant, mut request: impl FnMut(Ipv4Addr)) {
        let mut i = 0;
        while i < self.resolutions.len() {
            let r = &mut self.resolutions[i];
            if now < r.next_request {
                i += 1;
            } else if r.requests >= self.cfg.max_requests {
                let (ip, queued) = (r.ip, r.queued);
                self.resolutions.swap_remove(i);
                self.extract(ip, drop);
                self.stats.timeout_dropped += queued as u64;
                self.stats.resolutions_failed += 1;
            } else {
                r.requests += 1;
                r.next_request = now + self.cfg.retransmit;
                request(r.ip);
                i += 1;
            }
        }
    }

    /// The earliest time [`poll`](Self::poll) has work to do, if any.
    pub fn poll_at(&self) -> Option<Instant> {
        self.resolutions.iter().map(|r| r.next_request).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::Pool;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn mac(last: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, last])
    }

    fn secs(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    fn frame(pool: &Pool, tag: u8) -> PktBuf {
        let mut b = pool.alloc().unwrap();
        assert!(b.extend_from_slice(&[tag]));
        b
    }

    fn small() -> ArpConfig {
        ArpConfig {
            capacity: 4,
            pending_per_ip: 2,
            pending_total: 3,
            ..ArpConfig::default()
        }
    }

    #[test]
    fn learned_entry_is_found_until_it_expires() {
        let mut c = ArpCache::new(ArpConfig::default());
        assert_eq!(c.lookup(ip(1), secs(0)), Lookup::Miss);
        assert!(c.insert(ip(1), mac(1), secs(0)));
        assert_eq!(c.lookup(ip(1), secs(10)), Lookup::Hit(mac(1)));
        assert_eq!(c.get(ip(1), secs(59)), Some(mac(1)));
        assert_eq!(c.get(ip(1), secs(60)), None);
        assert_eq!(c.lookup(ip(1), secs(60)), Lookup::Miss);
        assert_eq!(c.stats().entries, 0, "expired entry reclaimed on lookup");
    }

    #[test]
    fn used_entry_near_expiry_asks_for_one_refresh_per_interval() {
        let mut c = ArpCache::new(ArpConfig::default());
        c.insert(ip(1), mac(1), secs(0));
        assert_eq!(c.lookup(ip(1), secs(54)), Lookup::Hit(mac(1)));
        assert_eq!(c.lookup(ip(1), secs(55)), Lookup::Refresh(mac(1)));
        assert_eq!(
            c.lookup(ip(1), secs(55) + Duration::from_millis(500)),
            Lookup::Hit(mac(1))
        );
        assert_eq!(c.lookup(ip(1), secs(56)), Lookup::Refresh(mac(1)));
        // The reply to the poll confirms the entry for a new lifetime.
        assert!(c.update(ip(1), mac(1), secs(56)));
        assert_eq!(c.lookup(ip(1), secs(100)), Lookup::Hit(mac(1)));
        assert_eq!(c.get(ip(1), secs(116)), None);
    }

    #[test]
    fn stable_hit_covers_exactly_the_side_effect_free_hits() {
        let mut c = ArpCache::new(ArpConfig::default());
        assert_eq!(c.stable_hit(ip(1), secs(0)), None);
        let g0 = c.generation();
        c.insert(ip(1), mac(1), secs(0));
        assert_ne!(c.generation(), g0);
        let (m, until) = c.stable_hit(ip(1), secs(0)).unwrap();
        assert_eq!((m, until), (mac(1), secs(55)));
        // Every lookup before `until` is a plain hit; at `until` the
        // refresh starts.
        assert_eq!(
            c.lookup(ip(1), Instant::from_nanos(until.as_nanos() - 1)),
            Lookup::Hit(mac(1))
        );
        assert_eq!(c.stable_hit(ip(1), secs(55)), None);
        let g1 = c.generation();
        assert!(c.update(ip(1), mac(2), secs(10)));
        assert_ne!(c.generation(), g1, "a changed entry changes the generation");
        assert_eq!(c.stable_hit(ip(1), secs(10)), Some((mac(2), secs(65))));
        let g2 = c.generation();
        assert!(c.add_static(ip(2), mac(3)));
        assert_ne!(c.generation(), g2);
        assert_eq!(
            c.stable_hit(ip(2), secs(1_000_000)),
            Some((mac(3), Instant::from_nanos(u64::MAX)))
        );
        let g3 = c.generation();
        assert!(c.remove(ip(1)));
        assert_ne!(c.generation(), g3);
    }

    #[test]
    fn update_only_touches_existing_dynamic_entries() {
        let mut c = ArpCache::new(ArpConfig::default());
        assert!(!c.update(ip(1), mac(1), secs(0)));
        assert_eq!(c.get(ip(1), secs(0)), None);
        c.insert(ip(1), mac(1), secs(0));
        assert!(c.update(ip(1), mac(9), secs(1)));
        assert_eq!(c.get(ip(1), secs(1)), Some(mac(9)));
        c.add_static(ip(2), mac(2));
        assert!(c.update(ip(2), mac(8), secs(1)));
        assert_eq!(c.get(ip(2), secs(1)), Some(mac(2)), "static entry kept");
    }

    #[test]
    fn static_entries_never_expire_nor_get_evicted() {
        let mut c = ArpCache::new(small());
        for i in 0..4 {
            assert!(c.add_static(ip(i), mac(i)));
        }
        assert!(!c.insert(ip(9), mac(9), secs(0)));
        assert_eq!(c.stats().insert_refused, 1);
        assert_eq!(c.lookup(ip(3), secs(1_000_000)), Lookup::Hit(mac(3)));
        assert!(c.remove(ip(3)));
        assert!(!c.remove(ip(3)));
        assert!(c.insert(ip(9), mac(9), secs(0)));
    }

    #[test]
    fn full_table_evicts_the_entry_expiring_first() {
        let mut c = ArpCache::new(small());
        c.add_static(ip(100), mac(100));
        for i in 1..=3 {
            c.insert(ip(i), mac(i), secs(u64::from(i)));
        }
        c.insert(ip(1), mac(1), secs(10)); // refreshed: now expires last
        c.insert(ip(4), mac(4), secs(11));
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.stats().entries, 4);
        assert_eq!(c.get(ip(2), secs(11)), None, "oldest evicted");
        for i in [1, 3, 4, 100] {
            assert!(c.get(ip(i), secs(11)).is_some(), "{i}");
        }
    }

    #[test]
    fn table_stays_consistent_under_churn() {
        // Many inserts and removals through a small table exercise the
        // backward-shift deletion across wrap-around.
        let mut c = ArpCache::new(ArpConfig {
            capacity: 8,
            ..ArpConfig::default()
        });
        let mut model = std::collections::HashMap::new();
        let mut x: u32 = 12345;
        for step in 0..5000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let a = Ipv4Addr::from((x >> 20) & 0x1f);
            if x & 1 == 0 && model.len() < 8 {
                let m = EthernetAddress([2, 0, 0, 0, (step >> 8) as u8, step as u8]);
                assert!(c.add_static(a, m));
                model.insert(a, m);
            } else {
                assert_eq!(c.remove(a), model.remove(&a).is_some());
            }
            assert_eq!(c.stats().entries, model.len());
            for (&k, &v) in &model {
                assert_eq!(c.get(k, secs(0)), Some(v));
            }
        }
    }

    #[test]
    fn frames_wait_and_come_out_in_order() {
        let pool = Pool::new(1, 8, false).unwrap();
        let mut c = ArpCache::new(small());
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 1), secs(0)),
            Enqueued::SendRequest
        );
        assert_eq!(
            c.enqueue(ip(2), frame(&pool, 2), secs(0)),
            Enqueued::SendRequest
        );
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 3), secs(0)),
            Enqueued::Waiting
        );
        assert!(c.is_resolving(ip(1)));
        let mut out = Vec::new();
        c.take_pending(ip(1), |f| out.push(f.data()[0]));
        assert_eq!(out, [1, 3]);
        assert!(!c.is_resolving(ip(1)));
        assert_eq!(c.stats().pending_frames, 1);
        out.clear();
        c.take_pending(ip(2), |f| out.push(f.data()[0]));
        assert_eq!(out, [2]);
        assert_eq!(pool.available(), 8, "every frame handed back");
    }

    #[test]
    fn pending_queues_are_bounded_per_address_and_in_total() {
        let pool = Pool::new(1, 8, false).unwrap();
        let mut c = ArpCache::new(small());
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 1), secs(0)),
            Enqueued::SendRequest
        );
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 2), secs(0)),
            Enqueued::Waiting
        );
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 3), secs(0)),
            Enqueued::Dropped
        );
        assert_eq!(
            c.enqueue(ip(2), frame(&pool, 4), secs(0)),
            Enqueued::SendRequest
        );
        assert_eq!(
            c.enqueue(ip(3), frame(&pool, 5), secs(0)),
            Enqueued::Dropped
        );
        let s = c.stats();
        assert_eq!(
            (s.pending_frames, s.pending_dropped, s.resolving),
            (3, 2, 2)
        );
        assert_eq!(pool.available(), 5, "dropped frames returned to the pool");
    }

    #[test]
    fn requests_are_retransmitted_then_frames_dropped() {
        let pool = Pool::new(1, 8, false).unwrap();
        let mut c = ArpCache::new(ArpConfig::default());
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 1), secs(0)),
            Enqueued::SendRequest
        );
        assert_eq!(
            c.enqueue(ip(1), frame(&pool, 2), secs(0)),
            Enqueued::Waiting
        );
        assert_eq!(c.poll_at(), Some(secs(1)));
        let mut sent = Vec::new();
        c.poll(Instant::from_millis(999), |a| sent.push(a));
        assert!(sent.is_empty());
        c.poll(secs(1), |a| sent.push(a));
        c.poll(secs(2), |a| sent.push(a));
        assert_eq!(sent, [ip(1), ip(1)], "requests 2 and 3");
        assert_eq!(c.stats().pending_frames, 2);
        c.poll(secs(3), |a| sent.push(a));
        assert_eq!(sent.len(), 2, "no fourth request");
        let s = c.stats();
        assert_eq!(
            (s.pending_frames, s.timeout_dropped, s.resolutions_failed),
            (0, 2, 1)
        );
        assert_eq!(c.poll_at(), None);
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn zero_sizes_are_raised_to_one() {
        let c = ArpCache::new(ArpConfig {
            capacity: 0,
            pending_per_ip: 0,
            pending_total: 0,
            max_requests: 0,
            ..ArpConfig::default()
        });
        let cfg = c.config();
        assert_eq!(
            (
                cfg.capacity,
                cfg.pending_per_ip,
                cfg.pending_total,
                cfg.max_requests
            ),
            (1, 1, 1, 1)
        );
    }
}
