//! What this machine offers: online CPUs and free hugepages.
//!
//! Config validation checks a config against a [`Host`] value rather than
//! reading `/sys` and `/proc` itself, so tests can validate against any
//! machine shape and the daemon probes the real one once with
//! [`Host::probe`].

use std::fs;

use crate::units::{CpuList, KIB};

/// The ordinary page size of x86-64 Linux.
pub const SMALL_PAGE: u64 = 4096;

/// The machine resources config validation is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// CPUs that are online.
    pub cpus: CpuList,
    /// Size of the default hugepage (`Hugepagesize` in `/proc/meminfo`).
    pub hugepage_size: u64,
    /// Hugepages reserved and not yet in use (`HugePages_Free`).
    pub hugepages_free: u64,
}

impl Host {
    /// Reads the online CPUs from `/sys/devices/system/cpu/online` and the
    /// hugepage counters from `/proc/meminfo`.
    ///
    /// Falls back to `0..available_parallelism` CPUs and no hugepages when
    /// those files cannot be read (a container without `/sys`).
    pub fn probe() -> Host {
        let cpus = fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|text| CpuList::parse(&text))
            .unwrap_or_else(|| {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                CpuList((0..n as u32).collect())
            });
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let (hugepage_size, hugepages_free) = parse_meminfo(&meminfo);
        Host {
            cpus,
            hugepage_size,
            hugepages_free,
        }
    }

    /// Bytes of hugepage memory free right now.
    pub fn hugepage_bytes_free(&self) -> u64 {
        self.hugepage_size.saturating_mul(self.hugepages_free)
    }
}

/// Extracts `(Hugepagesize in bytes, HugePages_Free)` from `/proc/meminfo`
/// text; a missing line counts as 2 MiB pages and none free.
fn parse_meminfo(text: &str) -> (u64, u64) {
    let mut size = 2048 * KIB;
    let mut free = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<u64>().ok()),
        ) {
            (Some("Hugepagesize:"), Some(kb)) if kb > 0 => size = kb * KIB,
            (Some("HugePages_Free:"), Some(n)) => free = n,
            _ => {}
        }
    }
    (size, free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_hugepage_lines_are_read() {
        let text = "MemTotal: 100 kB\nHugePages_Total: 8\nHugePages_Free:  5\n\
                    Hugepagesize:    2048 kB\n";
        assert_eq!(parse_meminfo(text), (2 << 20, 5));
    }

    #[test]
    fn meminfo_without_hugepage_lines_means_none_free() {
        assert_eq!(parse_meminfo("garbage\n"), (2 << 20, 0));
    }

    #[test]
    fn probe_finds_at_least_one_cpu() {
        let host = Host::probe();
        assert!(!host.cpus.0.is_empty());
        assert!(host.hugepage_size >= SMALL_PAGE);
    }
}
