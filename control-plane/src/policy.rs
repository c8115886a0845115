//! The `load` core policy: when a running dataplane gets a core more or
//! one fewer, decided from what its cores publish in their stats page.
//!
//! This follows IX's control plane (OSDI'14 §4.4, and the ixcp policy it
//! shipped): every [`TICK`] the daemon reads each core's moving averages
//! (`dataplane::stats`: RX queue depth, idle fraction, full-poll
//! fraction; weight 1/8 per 10 ms interval, a ~75 ms time constant —
//! the *short-term* signal) and asks [`LoadState::decide`]:
//!
//! - **add a core** when the largest short-term queue average over the
//!   cores exceeds [`GROW_QUEUE_MILLI`] (32 frames, IX's threshold), or
//!   when some core's full-poll fraction exceeds [`GROW_FULL_PPM`], at
//!   least [`ADD_AFTER_ADD`] after the last addition and
//!   [`ADD_AFTER_REMOVE`] after the last removal. The full-poll rule is
//!   ours: a poll that returns the batch bound B (64) reports a depth of
//!   B although more may be queued, so the published queue average
//!   underestimates a saturated core; when half the polls hit the bound
//!   the true mean depth is at least B/2 = 32 — IX's threshold — whatever
//!   the average says.
//! - **remove a core** when the *long-term* mean queue — this module's
//!   own slower moving average (weight 1/[`LONG_EWMA_WEIGHT_INV`] per
//!   tick, a ~1.6 s time constant) of the mean over the cores — is below
//!   [`SHRINK_QUEUE_MILLI`] (8 frames, IX's) and the cores are mostly
//!   idle: the busy fraction summed over the cores, spread over one core
//!   fewer, stays at or below [`SHRINK_BUSY_PPM`] (the remaining cores
//!   would be at most half busy), at least [`REMOVE_AFTER_CHANGE`] after
//!   any change.
//!
//! Within bounds: never fewer than one core, never more than the caller's
//! `max` (the port's queues, and the cores free plus held). The function
//! is pure — state, samples and time in, a decision out — so the tests
//! below drive it with a synthetic clock; the daemon turns decisions into
//! resizes through the same path as `ixctl cores` and logs them.
//!
//! Deviations from IX: IX also used a queuing-delay signal and moved
//! flow groups between cores without changing their count; this policy
//! only changes the count (libix rebalances the flow groups), and the
//! numbers it reads are the dataplane's word about itself — a dataplane
//! that lies can only make ixcpd give it cores it is entitled to ask for
//! with `ixctl cores` anyway, bounded by what is free.

use std::time::{Duration, Instant};

/// How often the daemon samples dataplanes under the load policy.
pub const TICK: Duration = Duration::from_millis(100);
/// Add a core when some core's short-term queue average exceeds this
/// (1/1000 frame): 32 frames.
pub const GROW_QUEUE_MILLI: u64 = 32_000;
/// … or when some core's full-poll fraction exceeds this (ppm): half the
/// polls returned the batch bound.
pub const GROW_FULL_PPM: u64 = 500_000;
/// Remove a core when the long-term mean queue is below this (1/1000
/// frame): 8 frames.
pub const SHRINK_QUEUE_MILLI: u64 = 8_000;
/// … and the cores' busy time would load one core fewer at most this
/// much (ppm): half busy.
pub const SHRINK_BUSY_PPM: u64 = 500_000;
/// Least time between two additions.
pub const ADD_AFTER_ADD: Duration = Duration::from_millis(200);
/// Least time from a removal to an addition.
pub const ADD_AFTER_REMOVE: Duration = Duration::from_secs(2);
/// Least time from any change to a removal.
pub const REMOVE_AFTER_CHANGE: Duration = Duration::from_secs(4);
/// Inverse weight of the long-term queue average per tick (16 ticks of
/// 100 ms: a ~1.6 s time constant).
pub const LONG_EWMA_WEIGHT_INV: u64 = 16;

/// What one core published, as the policy reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreSample {
    /// Short-term average RX queue depth, 1/1000 frame.
    pub queue_milli: u64,
    /// Short-term average idle fraction, ppm (clamped to 1,000,000).
    pub idle_ppm: u64,
    /// Short-term average fraction of polls that hit the batch bound, ppm.
    pub full_ppm: u64,
}

/// What to do with a dataplane's core count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it.
    Stay,
    /// Grow to `to` cores (one more).
    Grow {
        /// The new count.
        to: u32,
        /// Why, for the dataplane's log.
        why: String,
    },
    /// Shrink to `to` cores (one fewer).
    Shrink {
        /// The new count.
        to: u32,
        /// Why, for the dataplane's log.
        why: String,
    },
}

/// One dataplane's policy state: the long-term average and when its core
/// count last changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadState {
    /// Long-term mean queue, 1/1000 frame; `None` before the first sample.
    long_queue_milli: Option<u64>,
    last_add: Option<Instant>,
    last_remove: Option<Instant>,
    /// The last change of either kind, or when the policy started.
    last_change: Instant,
}

fn since(now: Instant, then: Option<Instant>) -> Option<Duration> {
    then.map(|t| now.saturating_duration_since(t))
}

impl LoadState {
    /// A dataplane whose policy starts at `now` (counted as a change: no
    /// removal in its first [`REMOVE_AFTER_CHANGE`]).
    pub fn new(now: Instant) -> LoadState {
        LoadState {
            long_queue_milli: None,
            last_add: None,
            last_remove: None,
            last_change: now,
        }
    }

    /// The long-term mean queue so far, 1/1000 frame.
    pub fn long_queue_milli(&self) -> Option<u64> {
        self.long_queue_milli
    }

    /// Folds one tick's `samples` (one per core the dataplane runs now)
    /// into the long-term average and decides, at `now`, within
    /// `1..=max` cores. No samples: [`Decision::Stay`].
    pub fn decide(&mut self, samples: &[CoreSample], now: Instant, max: u32) -> Decision {
        let n = samples.len() as u64;
        if n == 0 {
            return Decision::Stay;
        }
        let sum: u128 = samples.iter().map(|s| u128::from(s.queue_milli)).sum();
        let mean_queue = u64::try_from(sum / u128::from(n)).unwrap_or(u64::MAX);
        let long = match self.long_queue_milli {
            None => mean_queue,
            Some(avg) => {
                let inv = LONG_EWMA_WEIGHT_INV;
                // avg + (sample - avg)/inv, in integers, without overflow
                // for any published value.
                if mean_queue >= avg {
                    avg + (mean_queue - avg) / inv
                } else {
                    avg - (avg - mean_queue) / inv
                }
            }
        };
        self.long_queue_milli = Some(long);
        let cores = n as u32;
        let max_queue = samples.iter().map(|s| s.queue_milli).max().unwrap_or(0);
        let max_full = samples.iter().map(|s| s.full_ppm).max().unwrap_or(0);
        let may_add = cores < max
            && since(now, self.last_add).is_none_or(|d| d >= ADD_AFTER_ADD)
            && since(now, self.last_remove).is_none_or(|d| d >= ADD_AFTER_REMOVE);
        if may_add && (max_queue > GROW_QUEUE_MILLI || max_full > GROW_FULL_PPM) {
            let why = if max_queue > GROW_QUEUE_MILLI {
                format!(
                    "max queue average {} frames > {}",
                    milli(max_queue),
                    milli(GROW_QUEUE_MILLI)
                )
            } else {
                format!(
                    "a core hit the batch bound in {}% of its polls (> {}%)",
                    max_full / 10_000,
                    GROW_FULL_PPM / 10_000
                )
            };
            return Decision::Grow { to: cores + 1, why };
        }
        if cores > max {
            // Bounds shrank under it (cannot happen with the daemon's
            // bounds, which count what it holds): hold, never thrash.
            return Decision::Stay;
        }
        let busy: u64 = samples
            .iter()
            .map(|s| 1_000_000 - s.idle_ppm.min(1_000_000))
            .sum();
        let may_remove =
            cores > 1 && now.saturating_duration_since(self.last_change) >= REMOVE_AFTER_CHANGE;
        if may_remove && long < SHRINK_QUEUE_MILLI && busy / u64::from(cores - 1) <= SHRINK_BUSY_PPM
        {
            return Decision::Shrink {
                to: cores - 1,
                why: format!(
                    "long-term mean queue {} frames < {}, {}% busy over {} cores",
                    milli(long),
                    milli(SHRINK_QUEUE_MILLI),
                    busy / u64::from(cores) / 10_000,
                    cores
                ),
            };
        }
        Decision::Stay
    }

    /// Records that a decision was acted on at `now` (whether or not the
    /// resize then succeeded: a refused one waits out the same hold-down
    /// rather than being retried every tick).
    pub fn acted(&mut self, decision: &Decision, now: Instant) {
        match decision {
            Decision::Stay => return,
            Decision::Grow { .. } => self.last_add = Some(now),
            Decision::Shrink { .. } => self.last_remove = Some(now),
        }
        self.last_change = now;
    }
}

/// `v` (1/1000) as a decimal with one digit after the point.
fn milli(v: u64) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(queue_milli: u64) -> CoreSample {
        CoreSample {
            queue_milli,
            idle_ppm: 0,
            full_ppm: 0,
        }
    }

    fn idle() -> CoreSample {
        CoreSample {
            queue_milli: 0,
            idle_ppm: 950_000,
            full_ppm: 0,
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_deep_queue_on_any_core_grows_by_one() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0);
        let d = s.decide(&[busy(1000), busy(33_000)], t0, 4);
        assert!(matches!(d, Decision::Grow { to: 3, .. }), "{d:?}");
        // At the threshold exactly: not above it.
        let mut s = LoadState::new(t0);
        assert_eq!(s.decide(&[busy(32_000)], t0, 4), Decision::Stay);
    }

    #[test]
    fn a_saturated_core_grows_even_when_its_queue_average_reads_low() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0);
        let saturated = CoreSample {
            queue_milli: 30_000,
            idle_ppm: 0,
            full_ppm: 600_000,
        };
        let d = s.decide(&[saturated], t0, 2);
        let Decision::Grow { to: 2, why } = d else {
            panic!("{d:?}")
        };
        assert!(why.contains("batch bound"), "{why}");
    }

    #[test]
    fn additions_are_spaced_by_200_ms() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0);
        let d = s.decide(&[busy(40_000)], t0, 8);
        s.acted(&d, t0);
        let two = [busy(40_000), busy(40_000)];
        assert_eq!(s.decide(&two, ms(t0, 100), 8), Decision::Stay);
        assert_eq!(s.decide(&two, ms(t0, 199), 8), Decision::Stay);
        assert!(matches!(
            s.decide(&two, ms(t0, 200), 8),
            Decision::Grow { to: 3, .. }
        ));
    }

    #[test]
    fn no_addition_within_2_s_of_a_removal() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0);
        s.acted(
            &Decision::Shrink {
                to: 1,
                why: String::new(),
            },
            t0,
        );
        assert_eq!(s.decide(&[busy(50_000)], ms(t0, 1999), 4), Decision::Stay);
        assert!(matches!(
            s.decide(&[busy(50_000)], ms(t0, 2000), 4),
            Decision::Grow { to: 2, .. }
        ));
    }

    #[test]
    fn idle_cores_shrink_after_4_s_without_change() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0);
        let cores = [idle(), idle(), idle()];
        for t in (0..4000).step_by(100) {
            assert_eq!(s.decide(&cores, ms(t0, t), 4), Decision::Stay, "at {t} ms");
        }
        let d = s.decide(&cores, ms(t0, 4000), 4);
        assert!(matches!(d, Decision::Shrink { to: 2, .. }), "{d:?}");
        s.acted(&d, ms(t0, 4000));
        // The next removal waits another 4 s after this change.
        let two = [idle(), idle()];
        assert_eq!(s.decide(&two, ms(t0, 7900), 4), Decision::Stay);
        assert!(matches!(
            s.decide(&two, ms(t0, 8000), 4),
            Decision::Shrink { to: 1, .. }
        ));
    }

    #[test]
    fn an_addition_also_holds_off_removal_for_4_s() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0 - Duration::from_secs(60));
        let d = s.decide(&[busy(40_000)], t0, 4);
        s.acted(&d, t0);
        assert_eq!(s.decide(&[idle(), idle()], ms(t0, 3999), 4), Decision::Stay);
    }

    #[test]
    fn busy_cores_with_short_queues_are_not_removed() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0 - Duration::from_secs(60));
        // Queues short but each core 60% busy: one fewer would be 90% busy.
        let working = CoreSample {
            queue_milli: 1000,
            idle_ppm: 400_000,
            full_ppm: 0,
        };
        assert_eq!(s.decide(&[working; 3], t0, 4), Decision::Stay);
    }

    #[test]
    fn the_long_term_average_remembers_a_burst() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0 - Duration::from_secs(60));
        // A tick of deep queues just under the grow bound (max 4 cores
        // held: no growth possible) lifts the long-term mean…
        s.decide(&[busy(31_000), busy(31_000)], t0, 2);
        // …so idle ticks right after do not shrink at once.
        assert_eq!(s.decide(&[idle(), idle()], ms(t0, 100), 2), Decision::Stay);
        let mut t = 100;
        let shrink_at = loop {
            t += 100;
            if let Decision::Shrink { .. } = s.decide(&[idle(), idle()], ms(t0, t), 2) {
                break t;
            }
            assert!(t < 10_000, "never shrank");
        };
        // 31 → below 8 frames at weight 1/16 takes ~22 ticks.
        assert!((1500..=3500).contains(&shrink_at), "{shrink_at}");
    }

    #[test]
    fn bounds_are_kept() {
        let t0 = Instant::now();
        let mut s = LoadState::new(t0 - Duration::from_secs(60));
        assert_eq!(s.decide(&[busy(90_000); 4], t0, 4), Decision::Stay);
        let mut s = LoadState::new(t0 - Duration::from_secs(60));
        assert_eq!(
            s.decide(&[idle()], t0, 4),
            Decision::Stay,
            "never below one"
        );
        assert_eq!(s.decide(&[], t0, 4), Decision::Stay);
        // Lies (idle above 100%, huge queues) are numbers, not panics.
        let lie = CoreSample {
            queue_milli: u64::MAX,
            idle_ppm: u64::MAX,
            full_ppm: u64::MAX,
        };
        let mut s = LoadState::new(t0);
        assert!(matches!(
            s.decide(&[lie], t0, 2),
            Decision::Grow { to: 2, .. }
        ));
    }
}
