//! Open-loop arrivals: a Poisson process at a target rate.
//!
//! Inter-arrival gaps are exponential with mean 1/rate, drawn by
//! inversion (−ln U / rate) from a seeded generator, and accumulated in
//! floating-point nanoseconds from the schedule's start so rounding never
//! drifts the mean rate. The schedule is a pure function of (start, rate,
//! seed): it does not depend on when the generator gets around to sending,
//! which is what makes the load open-loop — a late send is recorded as
//! latency from its *scheduled* time, never as a later arrival.

use std::time::Duration;

use dataplane::time::Instant;

use super::workload::Rng;

/// A Poisson arrival schedule.
#[derive(Debug, Clone)]
pub struct Poisson {
    start: Instant,
    /// Mean gap in nanoseconds; infinite for rate 0.
    mean_gap_ns: f64,
    /// Offset of the next arrival from `start`, nanoseconds.
    next_ns: f64,
    rng: Rng,
}

impl Poisson {
    /// Arrivals at `rate` per second from `start` (the first arrival one
    /// gap after it). A rate of zero (or less) never arrives.
    pub fn new(start: Instant, rate: f64, seed: u64) -> Poisson {
        let mean_gap_ns = if rate > 0.0 {
            1e9 / rate
        } else {
            f64::INFINITY
        };
        let mut p = Poisson {
            start,
            mean_gap_ns,
            next_ns: 0.0,
            rng: Rng::new(seed),
        };
        p.next_ns = p.gap();
        p
    }

    #[inline]
    fn gap(&mut self) -> f64 {
        -self.rng.unit().ln() * self.mean_gap_ns
    }

    /// When the next arrival is due (saturating far in the future).
    #[inline]
    pub fn next_at(&self) -> Instant {
        let ns = self.next_ns.min(u64::MAX as f64 / 2.0) as u64;
        Instant::from_nanos(self.start.as_nanos().saturating_add(ns))
    }

    /// Moves to the following arrival.
    #[inline]
    pub fn advance(&mut self) {
        self.next_ns += self.gap();
    }

    /// Takes the next arrival if it is due at or before `now`.
    #[inline]
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        let at = self.next_at();
        if at <= now {
            self.advance();
            Some(at)
        } else {
            None
        }
    }

    /// The mean gap.
    pub fn mean_gap(&self) -> Duration {
        Duration::from_secs_f64((self.mean_gap_ns / 1e9).min(1e9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(rate: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut p = Poisson::new(Instant::from_millis(5), rate, seed);
        let mut last = Instant::from_millis(5);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let at = p.next_at();
            out.push((at.as_nanos() - last.as_nanos()) as f64);
            last = at;
            p.advance();
        }
        out
    }

    #[test]
    fn arrivals_have_the_target_mean_rate_and_exponential_cv() {
        let rate = 250_000.0;
        let g = gaps(rate, 200_000, 3);
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / g.len() as f64;
        let cv = var.sqrt() / mean;
        assert!(
            (mean - 4_000.0).abs() / 4_000.0 < 0.01,
            "mean gap {mean} ns"
        );
        assert!((cv - 1.0).abs() < 0.02, "cv {cv}");
        // Memorylessness, checked on one point of the CDF: P(gap > mean)
        // = e^-1.
        let over = g.iter().filter(|&&x| x > 4_000.0).count() as f64 / g.len() as f64;
        assert!((over - (-1.0f64).exp()).abs() < 0.005, "{over}");
    }

    #[test]
    fn count_in_a_window_matches_rate_times_length() {
        let start = Instant::from_millis(1);
        let mut p = Poisson::new(start, 100_000.0, 9);
        let end = start + Duration::from_secs(2);
        let mut n = 0u64;
        while p.take_due(end).is_some() {
            n += 1;
        }
        // 200,000 expected; Poisson standard deviation ≈ 447.
        assert!((n as f64 - 200_000.0).abs() < 2_000.0, "{n}");
        assert!(p.next_at() > end);
    }

    #[test]
    fn schedule_is_reproducible_and_independent_of_polling() {
        let start = Instant::from_millis(1);
        let mut a = Poisson::new(start, 50_000.0, 4);
        let mut b = Poisson::new(start, 50_000.0, 4);
        // `a` is polled finely, `b` once late: same arrival times.
        let mut from_a = Vec::new();
        let mut t = start;
        while from_a.len() < 100 {
            t = t + Duration::from_micros(1);
            while let Some(at) = a.take_due(t) {
                from_a.push(at);
            }
        }
        let mut from_b = Vec::new();
        while let Some(at) = b.take_due(t) {
            from_b.push(at);
        }
        assert_eq!(from_a, from_b);
        assert!(from_a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn zero_rate_never_arrives() {
        let mut p = Poisson::new(Instant::from_millis(1), 0.0, 1);
        assert!(p.take_due(Instant::from_millis(1_000_000)).is_none());
    }
}
