//! CPU time from procfs: the generator's own thread and, optionally, the
//! server process, so a result shows whether either was saturated.
//!
//! `/proc/<pid>/stat` and `/proc/thread-self/stat` (proc(5)) give user and
//! system time (fields 14 and 15) in clock ticks; the tick rate is the
//! `AT_CLKTCK` entry of the auxiliary vector (`/proc/self/auxv`), the
//! value `sysconf(_SC_CLK_TCK)` reports, read here without `unsafe`.
//! Ticks are 10 ms at the usual 100 Hz: over a 5 s window that is 0.2 %.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// Errors reading CPU time.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The stat file could not be read (no such process?).
    #[error("cannot read {path}: {source} — is the process running?")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The stat file did not have the expected fields.
    #[error("{path}: unexpected format")]
    Format {
        /// The file.
        path: String,
    },
}

/// `AT_CLKTCK` in the auxiliary vector.
const AT_CLKTCK: u64 = 17;

/// Clock ticks per second of procfs CPU times.
pub fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| clktck_from_auxv(&auxv))
            .unwrap_or(100)
    })
}

/// Finds `AT_CLKTCK` in a native-endian 64-bit auxiliary vector.
fn clktck_from_auxv(auxv: &[u8]) -> Option<u64> {
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == AT_CLKTCK && value > 0).then_some(value)
    })
}

/// User + system time from the text of a `stat` file.
fn parse_stat(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces
    // and parentheses itself: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time (user + system) of the process or thread whose stat file is
/// `path`.
pub fn cpu_time(path: &Path) -> Result<Duration, CpuError> {
    let name = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CpuError::Read {
        path: name(),
        source,
    })?;
    let ticks = parse_stat(&text).ok_or_else(|| CpuError::Format { path: name() })?;
    let per_sec = ticks_per_second();
    Ok(Duration::from_nanos(
        (u128::from(ticks) * 1_000_000_000 / u128::from(per_sec)) as u64,
    ))
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Result<Duration, CpuError> {
    cpu_time(Path::new("/proc/thread-self/stat"))
}

/// CPU time of process `pid` (all its threads).
pub fn process_cpu(pid: u32) -> Result<Duration, CpuError> {
    cpu_time(Path::new(&format!("/proc/{pid}/stat")))
}

/// A reading of both clocks at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    wall: std::time::Instant,
    own: Option<Duration>,
    server: Option<Duration>,
}

impl CpuSample {
    /// Reads the calling thread's CPU time and, given `server`, that
    /// process's. A clock that cannot be read is left out.
    pub fn take(server: Option<u32>) -> CpuSample {
        CpuSample {
            wall: std::time::Instant::now(),
            own: thread_cpu().ok(),
            server: server.and_then(|pid| process_cpu(pid).ok()),
        }
    }

    /// CPU used between `self` and a `later` sample, in cores (CPU time
    /// over wall time): `(own, server)`.
    pub fn usage_until(&self, later: &CpuSample) -> (Option<f64>, Option<f64>) {
        let wall = later
            .wall
            .saturating_duration_since(self.wall)
            .as_secs_f64();
        let rate = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some(b.saturating_sub(a).as_secs_f64() / wall),
            _ => None,
        };
        (rate(self.own, later.own), rate(self.server, later.server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_skips_a_command_name_with_spaces_and_parens() {
        let line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_stat(line), Some(281));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn auxv_lookup_finds_clktck() {
        let mut auxv = Vec::new();
        for (k, v) in [(6u64, 4096u64), (AT_CLKTCK, 250), (0, 0)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(clktck_from_auxv(&auxv), Some(250));
        assert_eq!(clktck_from_auxv(&auxv[..16]), None);
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn a_busy_thread_is_measured_at_no_more_than_one_core() {
        let pid = std::process::id();
        let before = CpuSample::take(Some(pid));
        let t0 = thread_cpu().unwrap();
        let start = std::time::Instant::now();
        // Spin until this thread has been charged 100 ms (however busy
        // the box is), bounded in wall time.
        while thread_cpu().unwrap() - t0 < Duration::from_millis(100)
            && start.elapsed() < Duration::from_secs(20)
        {
            let mut x = 0u64;
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let after = CpuSample::take(Some(pid));
        let (own, process) = before.usage_until(&after);
        let own = own.expect("own thread's CPU time is readable");
        // One thread uses at most one core (plus a tick of rounding).
        assert!(own > 0.0 && own <= 1.15, "own {own}");
        assert!(process.unwrap() >= own * 0.9);
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(matches!(process_cpu(u32::MAX), Err(CpuError::Read { .. })));
    }
}
