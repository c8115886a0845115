//! Byte sizes and CPU lists as people write them: `"256 MiB"`, `"0-3,6"`.
//!
//! Sizes use binary units only (`B`, `KiB`, `MiB`, `GiB`): a config that
//! says `MB` is refused rather than guessed at. Formatting is exact: a size
//! that is not a whole number of the largest fitting unit falls back to the
//! next smaller one (`8704 KiB`, never a rounded `8.5 MiB`).

use std::fmt;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// A number of bytes that displays in the largest exact binary unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n >= unit && n.is_multiple_of(unit) {
                return write!(f, "{} {name}", n / unit);
            }
        }
        write!(f, "{n} B")
    }
}

/// Parses a size such as `"256 MiB"`, `"1GiB"`, `"4096"` or `"512 B"`.
///
/// Returns `None` for anything else, including decimal units (`MB`),
/// fractions and values that overflow `u64`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        _ => return None,
    };
    value.checked_mul(scale)
}

/// Rounds `n` up to a multiple of `to` (which must not be zero).
pub fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// A sorted set of CPU numbers, displayed as ranges (`0-3,6`) the way
/// `/sys/devices/system/cpu/online` writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuList(pub Vec<u32>);

impl CpuList {
    /// Parses the kernel's list format: comma-separated numbers and
    /// inclusive ranges (`"0-1"`, `"0,2-3"`). Returns `None` on anything
    /// else, on a range that runs backwards, or on an empty list.
    pub fn parse(text: &str) -> Option<CpuList> {
        let mut cpus = Vec::new();
        for part in text.trim().split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
                None => {
                    let n: u32 = part.parse().ok()?;
                    (n, n)
                }
            };
            if lo > hi || hi - lo > 65_535 {
                return None;
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        (!cpus.is_empty()).then_some(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                end += 1;
                i += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_display_uses_largest_exact_unit() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(2048).to_string(), "2 KiB");
        assert_eq!(Bytes(96 * MIB).to_string(), "96 MiB");
        assert_eq!(Bytes(4096 * 2176).to_string(), "8704 KiB");
        assert_eq!(Bytes(2 * GIB).to_string(), "2 GiB");
        assert_eq!(Bytes(2176).to_string(), "2176 B");
    }

    #[test]
    fn parse_size_accepts_binary_units_and_plain_bytes() {
        assert_eq!(parse_size("256 MiB"), Some(256 * MIB));
        assert_eq!(parse_size("1GiB"), Some(GIB));
        assert_eq!(parse_size(" 4096 "), Some(4096));
        assert_eq!(parse_size("7 KiB"), Some(7 * KIB));
        assert_eq!(parse_size("3 B"), Some(3));
    }

    #[test]
    fn parse_size_refuses_decimal_units_fractions_and_overflow() {
        for bad in [
            "",
            "MiB",
            "256 MB",
            "1.5 GiB",
            "-1",
            "99999999999999999999",
            "20000000000 GiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cpu_list_round_trips_kernel_format() {
        let list = CpuList::parse("0-3,6,8-9").unwrap();
        assert_eq!(list.0, vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(list.to_string(), "0-3,6,8-9");
        assert_eq!(CpuList::parse("1\n").unwrap().to_string(), "1");
    }

    #[test]
    fn cpu_list_refuses_garbage_and_backward_ranges() {
        for bad in ["", "a", "3-1", "1,,2", "0-99999999"] {
            assert_eq!(CpuList::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_up_to_page() {
        assert_eq!(round_up(1, 4096), 4096);
        assert_eq!(round_up(4096, 4096), 4096);
        assert_eq!(round_up(0, 4096), 0);
    }
}
