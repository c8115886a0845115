//! Counters of the `stats` command.
//!
//! Command counters live per worker (an elastic thread, or a Linux server
//! thread), each in its own cache line and written only by its worker, so
//! counting costs no shared-line traffic and no locked instruction; `stats`
//! sums them over all workers. Store-wide numbers (items, bytes, evictions)
//! come from [`super::store::Store::stats`]. The reply uses memcached's
//! names, in memcached's order.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::clock::RelTime;
use super::Kvs;

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreStats {
    /// Open connections.
    pub curr_connections: AtomicU64,
    /// Connections ever accepted.
    pub total_connections: AtomicU64,
    /// Keys looked up by `get`/`gets`.
    pub cmd_get: AtomicU64,
    /// Storage commands whose data arrived.
    pub cmd_set: AtomicU64,
    /// `flush_all` commands.
    pub cmd_flush: AtomicU64,
    /// `touch` commands.
    pub cmd_touch: AtomicU64,
    /// Keys found by `get`/`gets`.
    pub get_hits: AtomicU64,
    /// Keys not found by `get`/`gets`.
    pub get_misses: AtomicU64,
    /// `delete` of an absent key.
    pub delete_misses: AtomicU64,
    /// `delete` of a present key.
    pub delete_hits: AtomicU64,
    /// `incr` of an absent key.
    pub incr_misses: AtomicU64,
    /// `incr` done.
    pub incr_hits: AtomicU64,
    /// `decr` of an absent key.
    pub decr_misses: AtomicU64,
    /// `decr` done.
    pub decr_hits: AtomicU64,
    /// `cas` of an absent key.
    pub cas_misses: AtomicU64,
    /// `cas` stored.
    pub cas_hits: AtomicU64,
    /// `cas` refused: the item had changed.
    pub cas_badval: AtomicU64,
    /// `touch` of a present key.
    pub touch_hits: AtomicU64,
    /// `touch` of an absent key.
    pub touch_misses: AtomicU64,
    /// Request bytes parsed.
    pub bytes_read: AtomicU64,
    /// Reply bytes handed to the transport.
    pub bytes_written: AtomicU64,
}

/// Adds `n` to a counter only its own worker writes: a plain load and
/// store, no read-modify-write instruction.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Adds one to a counter only its own worker writes.
#[inline]
pub fn inc(counter: &AtomicU64) {
    add(counter, 1);
}

/// Subtracts one from a counter only its own worker writes.
#[inline]
pub fn dec(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_sub(1),
        Ordering::Relaxed,
    );
}

/// The `stats` reply at `now`: `STAT <name> <value>\r\n` lines, then `END`.
pub fn report(kvs: &Kvs, now: RelTime) -> Vec<u8> {
    let sum = |f: fn(&CoreStats) -> &AtomicU64| -> u64 {
        kvs.workers()
            .iter()
            .map(|w| f(w).load(Ordering::Relaxed))
            .sum()
    };
    let store = kvs.store().stats();
    let clock = kvs.clock();
    let lines: [(&str, u64); 33] = [
        ("pid", u64::from(std::process::id())),
        ("uptime", clock.uptime(now)),
        ("time", clock.unix(now).max(0) as u64),
        ("version", 0),
        ("pointer_size", usize::BITS as u64),
        ("curr_connections", sum(|w| &w.curr_connections)),
        ("total_connections", sum(|w| &w.total_connections)),
        ("cmd_get", sum(|w| &w.cmd_get)),
        ("cmd_set", sum(|w| &w.cmd_set)),
        ("cmd_flush", sum(|w| &w.cmd_flush)),
        ("cmd_touch", sum(|w| &w.cmd_touch)),
        ("get_hits", sum(|w| &w.get_hits)),
        ("get_misses", sum(|w| &w.get_misses)),
        ("delete_misses", sum(|w| &w.delete_misses)),
        ("delete_hits", sum(|w| &w.delete_hits)),
        ("incr_misses", sum(|w| &w.incr_misses)),
        ("incr_hits", sum(|w| &w.incr_hits)),
        ("decr_misses", sum(|w| &w.decr_misses)),
        ("decr_hits", sum(|w| &w.decr_hits)),
        ("cas_misses", sum(|w| &w.cas_misses)),
        ("cas_hits", sum(|w| &w.cas_hits)),
        ("cas_badval", sum(|w| &w.cas_badval)),
        ("touch_hits", sum(|w| &w.touch_hits)),
        ("touch_misses", sum(|w| &w.touch_misses)),
        ("bytes_read", sum(|w| &w.bytes_read)),
        ("bytes_written", sum(|w| &w.bytes_written)),
        ("limit_maxbytes", store.limit_maxbytes),
        ("threads", kvs.workers().len() as u64),
        ("bytes", store.bytes),
        ("curr_items", store.curr_items),
        ("total_items", store.total_items),
        ("evictions", store.evictions),
        ("reclaimed", store.reclaimed),
    ];
    let mut out = Vec::with_capacity(1024);
    for (name, value) in lines {
        // Writing to a Vec cannot fail.
        let _ = if name == "version" {
            write!(out, "STAT version {}\r\n", super::VERSION)
        } else {
            write!(out, "STAT {name} {value}\r\n")
        };
    }
    out.extend_from_slice(b"END\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::store::StoreConfig;

    #[test]
    fn report_sums_workers_and_ends_with_end() {
        let kvs = Kvs::new(StoreConfig::default(), 2);
        inc(&kvs.worker(0).get_hits);
        add(&kvs.worker(1).get_hits, 4);
        inc(&kvs.worker(1).curr_connections);
        dec(&kvs.worker(1).curr_connections);
        dec(&kvs.worker(1).curr_connections);
        let text = String::from_utf8(report(&kvs, 12)).unwrap();
        assert!(text.contains("STAT get_hits 5\r\n"), "{text}");
        assert!(text.contains("STAT curr_connections 0\r\n"), "{text}");
        assert!(text.contains("STAT uptime 10\r\n"), "{text}");
        assert!(text.contains(&format!("STAT pid {}\r\n", std::process::id())));
        assert!(text.contains("STAT limit_maxbytes 67108864\r\n"));
        assert!(text.contains("STAT threads 2\r\n"));
        assert!(text.ends_with("STAT reclaimed 0\r\nEND\r\n"));
        assert!(text
            .lines()
            .all(|l| l == "END" || l.starts_with("STAT ") && l.split(' ').count() == 3));
    }
}
