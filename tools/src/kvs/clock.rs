//! Server time as memcached keeps it: whole seconds since the server
//! started ([`RelTime`]), derived from the monotonic clock the caller has
//! already read (`Cx::now()` on the dataplane, once per batch on Linux), so
//! requests cost no clock reads.
//!
//! Expiry times follow `protocol.txt`: 0 never expires, up to 30 days
//! (2,592,000 s) is relative to now, beyond that an absolute Unix time, and
//! a negative time has already expired. As in memcached, relative time
//! starts at 2 so that 1 can mean "already expired".

use std::time::{SystemTime, UNIX_EPOCH};

use libix::Instant;

/// Seconds since the server started, plus 2 (0 means "never").
pub type RelTime = u32;

/// Longest relative expiry; larger values are absolute Unix times.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// Relative time at start-up.
const START: u64 = 2;

/// The server's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono_start: Instant,
    /// Unix time at relative time 0 (memcached's `process_started`).
    process_started: i64,
}

impl Clock {
    /// A clock started now.
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Clock::starting_at(Instant::now(), unix)
    }

    /// A clock whose start is monotonic time `mono` and Unix time `unix`
    /// (tests choose both).
    pub fn starting_at(mono: Instant, unix: i64) -> Clock {
        Clock {
            mono_start: mono,
            process_started: unix - START as i64,
        }
    }

    /// The relative time at monotonic time `now`.
    #[inline]
    pub fn rel(&self, now: Instant) -> RelTime {
        let secs = now.saturating_since(self.mono_start).as_secs() + START;
        secs.min(u64::from(u32::MAX)) as RelTime
    }

    /// Seconds since start-up at `now`.
    pub fn uptime(&self, now: RelTime) -> u64 {
        u64::from(now).saturating_sub(START)
    }

    /// Unix time at `now`.
    pub fn unix(&self, now: RelTime) -> i64 {
        self.process_started + i64::from(now)
    }

    /// The relative expiry of a client's `exptime` at `now` (memcached's
    /// `realtime`): 0 for never, 1 (the past) for an expired time.
    pub fn expiry(&self, exptime: i32, now: RelTime) -> RelTime {
        let exptime = i64::from(exptime);
        if exptime == 0 {
            0
        } else if exptime < 0 {
            1
        } else if exptime > REALTIME_MAXDELTA {
            if exptime <= self.process_started {
                1
            } else {
                (exptime - self.process_started).min(i64::from(u32::MAX)) as RelTime
            }
        } else {
            (exptime + i64::from(now)).min(i64::from(u32::MAX)) as RelTime
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIX: i64 = 1_700_000_000;

    fn clock() -> Clock {
        Clock::starting_at(Instant::from_millis(5_000), UNIX)
    }

    #[test]
    fn relative_time_counts_whole_seconds_from_two() {
        let c = clock();
        assert_eq!(c.rel(Instant::from_millis(5_000)), 2);
        assert_eq!(c.rel(Instant::from_millis(5_999)), 2);
        assert_eq!(c.rel(Instant::from_millis(15_000)), 12);
        assert_eq!(c.rel(Instant::ZERO), 2, "a time before start is start");
        assert_eq!(c.uptime(12), 10);
        assert_eq!(c.unix(12), UNIX + 10);
    }

    #[test]
    fn expiry_is_relative_up_to_thirty_days_then_absolute() {
        let c = clock();
        assert_eq!(c.expiry(0, 10), 0);
        assert_eq!(c.expiry(-1, 10), 1);
        assert_eq!(c.expiry(100, 10), 110);
        assert_eq!(c.expiry(REALTIME_MAXDELTA as i32, 10), 2_592_010);
        assert_eq!(c.expiry(REALTIME_MAXDELTA as i32 + 1, 10), 1, "1970: past");
        assert_eq!(c.expiry((UNIX + 100) as i32, 10), 102);
        assert_eq!(c.expiry((UNIX - 2) as i32, 10), 1);
    }
}
