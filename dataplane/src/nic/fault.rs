//! Fault injection: [`FaultyQueue`] wraps any [`QueuePair`] and drops,
//! duplicates, reorders and corrupts frames on receive, transmit or both,
//! at configured rates, from a seeded generator.
//!
//! For each frame passing a faulty direction the generator draws, in this
//! order: drop (the frame is gone), corrupt (one uniformly chosen bit of
//! the frame flips), duplicate (a copy follows the frame at once), reorder
//! (the frame is held back and released after 1 to
//! [`FaultConfig::reorder_distance`] later frames, or after
//! [`FaultConfig::reorder_polls`] calls to the queue if no traffic
//! follows). The same seed and the same sequence of calls and frames give
//! the same faults.
//!
//! Corruption never writes into a buffer someone else still references
//! (e.g. a TCP segment kept for retransmission): a shared frame is copied
//! into a fresh buffer of the queue's pool first, as are duplicates. When
//! the pool is empty the copy is skipped (and not counted).
//!
//! Frames the wrapper drops are counted in [`FaultStats`], not in the
//! inner queue's [`QueueStats`].

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::buf::{PktBuf, Pool};
use crate::nic::{QueuePair, QueueStats};

/// Most frames held back for reordering at once, per direction; beyond
/// that frames pass in order.
const MAX_HELD: usize = 64;
/// Most frames the TX side stages when the inner queue pushes back.
const MAX_STAGED: usize = 1024;

/// Which traffic the faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames returned by `rx_burst`.
    Rx,
    /// Frames given to `tx_burst`.
    Tx,
    /// Both.
    Both,
}

impl Direction {
    fn rx(self) -> bool {
        matches!(self, Direction::Rx | Direction::Both)
    }

    fn tx(self) -> bool {
        matches!(self, Direction::Tx | Direction::Both)
    }
}

/// Rates and seed of the injected faults. Rates are probabilities per
/// frame, in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back behind later frames.
    pub reorder: f64,
    /// Probability that one bit of a frame flips.
    pub corrupt: f64,
    /// Where the faults apply.
    pub direction: Direction,
    /// A held frame is released after at most this many later frames
    /// (the count is drawn uniformly from `1..=reorder_distance`).
    pub reorder_distance: u32,
    /// A held frame is released after this many calls to the queue even
    /// if no later frame passes.
    pub reorder_polls: u32,
}

impl Default for FaultConfig {
    /// No faults (a transparent wrapper), seed 0, both directions.
    fn default() -> Self {
        FaultConfig {
            seed: 0,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            direction: Direction::Both,
            reorder_distance: 3,
            reorder_polls: 4,
        }
    }
}

/// Errors from [`FaultyQueue::new`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    /// A rate is not a probability.
    #[error("fault rate {name} = {value} must be within [0, 1]")]
    BadRate {
        /// Which rate.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A reorder bound is zero.
    #[error("{name} must be at least 1")]
    ZeroBound {
        /// Which bound.
        name: &'static str,
    },
}

/// Counts of the faults injected in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounters {
    /// Frames that passed through the faulty direction.
    pub frames: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Frames held back and released later.
    pub reordered: u64,
    /// Frames with one bit flipped.
    pub corrupted: u64,
}

/// Fault counts per direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultStats {
    /// Faults on receive.
    pub rx: FaultCounters,
    /// Faults on transmit.
    pub tx: FaultCounters,
}

#[derive(Debug)]
struct Held {
    buf: PktBuf,
    frames_left: u32,
    polls_left: u32,
}

/// One direction's held frames and counters.
#[derive(Debug)]
struct Lane {
    held: Vec<Held>,
    counters: FaultCounters,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            held: Vec::with_capacity(MAX_HELD),
            counters: FaultCounters::default(),
        }
    }

    /// Releases, in hold order, the frames whose countdown `pick` brings
    /// to zero.
    fn release(&mut self, out: &mut Vec<PktBuf>, pick: fn(&mut Held) -> bool) {
        let mut i = 0;
        while i < self.held.len() {
            if pick(&mut self.held[i]) {
                out.push(self.held.remove(i).buf);
            } else {
                i += 1;
            }
        }
    }

    fn after_frame(held: &mut Held) -> bool {
        held.frames_left -= 1;
        held.frames_left == 0
    }

    fn after_poll(held: &mut Held) -> bool {
        held.polls_left -= 1;
        held.polls_left == 0
    }
}

/// A queue pair that injects faults into another (see the module docs).
#[derive(Debug)]
pub struct FaultyQueue<Q: QueuePair> {
    inner: Q,
    cfg: FaultConfig,
    rng: SmallRng,
    rx: Lane,
    tx: Lane,
    /// Received frames not yet returned (bursts can grow by duplicates
    /// and released frames beyond the caller's `max`).
    rx_ready: Vec<PktBuf>,
    rx_scratch: Vec<PktBuf>,
    /// Frames accepted for transmit, waiting for the inner queue.
    tx_staged: Vec<PktBuf>,
}

/// Copies `buf` into a fresh buffer of `pool`.
fn copy_of(buf: &PktBuf, pool: &Pool) -> Option<PktBuf> {
    let mut copy = pool.alloc()?;
    copy.extend_from_slice(buf.data()).then_some(copy)
}

/// Applies the configured faults to one frame, pushing what comes out.
fn inject(
    rng: &mut SmallRng,
    cfg: &FaultConfig,
    lane: &mut Lane,
    pool: &Pool,
    mut buf: PktBuf,
    out: &mut Vec<PktBuf>,
) {
    lane.counters.frames += 1;
    let draw_drop: f64 = rng.gen();
    let draw_corrupt: f64 = rng.gen();
    let draw_dup: f64 = rng.gen();
    let draw_reorder: f64 = rng.gen();
    if draw_drop < cfg.drop {
        lane.counters.dropped += 1;
        lane.release(out, Lane::after_frame);
        return;
    }
    if draw_corrupt < cfg.corrupt && !buf.is_empty() {
        if !buf.is_unique() {
            if let Some(copy) = copy_of(&buf, pool) {
                buf = copy;
            }
        }
        if let Some(bytes) = buf.data_mut() {
            let bit = rng.gen_range(0..bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            lane.counters.corrupted += 1;
        }
    }
    let dup = if draw_dup < cfg.duplicate {
        copy_of(&buf, pool)
    } else {
        None
    };
    if draw_reorder < cfg.reorder && lane.held.len() < MAX_HELD {
        let frames_left = rng.gen_range(1..=cfg.reorder_distance);
        lane.release(out, Lane::after_frame);
        lane.held.push(Held {
            buf,
            frames_left,
            polls_left: cfg.reorder_polls,
        });
        lane.counters.reordered += 1;
    } else {
        out.push(buf);
        lane.release(out, Lane::after_frame);
    }
    if let Some(copy) = dup {
        out.push(copy);
        lane.counters.duplicated += 1;
    }
}

impl<Q: QueuePair> FaultyQueue<Q> {
    /// Wraps `inner`.
    pub fn new(inner: Q, cfg: FaultConfig) -> Result<FaultyQueue<Q>, FaultError> {
        for (name, value) in [
            ("drop", cfg.drop),
            ("duplicate", cfg.duplicate),
            ("reorder", cfg.reorder),
            ("corrupt", cfg.corrupt),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultError::BadRate { name, value });
            }
        }
        if cfg.reorder_distance == 0 {
            return Err(FaultError::ZeroBound {
                name: "reorder_distance",
            });
        }
        if cfg.reorder_polls == 0 {
            return Err(FaultError::ZeroBound {
                name: "reorder_polls",
            });
        }
        Ok(FaultyQueue {
            inner,
            rng: SmallRng::seed_from_u64(cfg.seed),
            cfg,
            rx: Lane::new(),
            tx: Lane::new(),
            rx_ready: Vec::with_capacity(2 * MAX_HELD),
            rx_scratch: Vec::with_capacity(2 * MAX_HELD),
            tx_staged: Vec::with_capacity(2 * MAX_HELD),
        })
    }

    /// Faults injected so far.
    pub fn fault_stats(&self) -> FaultStats {
        FaultStats {
            rx: self.rx.counters,
            tx: self.tx.counters,
        }
    }

    /// Frames currently held back for reordering (RX, TX).
    pub fn held(&self) -> (usize, usize) {
        (self.rx.held.len(), self.tx.held.len())
    }

    /// The wrapped queue.
    pub fn inner(&self) -> &Q {
        &self.inner
    }

    /// The wrapped queue, mutably.
    pub fn inner_mut(&mut self) -> &mut Q {
        &mut self.inner
    }

    /// Unwraps the queue; frames held or staged are dropped.
    pub fn into_inner(self) -> Q {
        self.inner
    }

    /// One call to the queue: ages held frames and pushes staged TX.
    fn poll(&mut self) {
        self.rx.release(&mut self.rx_ready, Lane::after_poll);
        self.tx.release(&mut self.tx_staged, Lane::after_poll);
        if !self.tx_staged.is_empty() {
            self.inner.tx_burst(&mut self.tx_staged);
        }
    }
}

impl<Q: QueuePair> QueuePair for FaultyQueue<Q> {
    fn rx_burst(&mut self, out: &mut Vec<PktBuf>, max: usize) -> usize {
        self.poll();
        if !self.cfg.direction.rx() {
            return self.inner.rx_burst(out, max);
        }
        let room = max.saturating_sub(self.rx_ready.len());
        if room > 0 {
            let mut scratch = std::mem::take(&mut self.rx_scratch);
            self.inner.rx_burst(&mut scratch, room);
            let pool = self.inner.pool();
            for buf in scratch.drain(..) {
                inject(
                    &mut self.rng,
                    &self.cfg,
                    &mut self.rx,
                    pool,
                    buf,
                    &mut self.rx_ready,
                );
            }
            self.rx_scratch = scratch;
        }
        let n = max.min(self.rx_ready.len());
        out.extend(self.rx_ready.drain(..n));
        n
    }

    fn tx_burst(&mut self, frames: &mut Vec<PktBuf>) -> usize {
        self.poll();
        if !self.cfg.direction.tx() {
            return self.inner.tx_burst(frames);
        }
        let n = frames
            .len()
            .min(MAX_STAGED.saturating_sub(self.tx_staged.len()));
        let pool = self.inner.pool();
        for buf in frames.drain(..n) {
            inject(
                &mut self.rng,
                &self.cfg,
                &mut self.tx,
                pool,
                buf,
                &mut self.tx_staged,
            );
        }
        if !self.tx_staged.is_empty() {
            self.inner.tx_burst(&mut self.tx_staged);
        }
        n
    }

    fn pool(&self) -> &Pool {
        self.inner.pool()
    }

    fn stats(&self) -> QueueStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nic::pipe::{self, PipeQueue};

    const N: u64 = 100_000;
    const LEN: usize = 64;

    /// The frame with sequence number `seq`: the number, then a pattern
    /// derived from it.
    fn payload(seq: u64) -> [u8; LEN] {
        let mut p = [0u8; LEN];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        for (i, b) in p[8..].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        p
    }

    fn seq_of(frame: &[u8]) -> u64 {
        u64::from_le_bytes(frame[..8].try_into().unwrap())
    }

    fn link(cfg: FaultConfig) -> (PipeQueue, FaultyQueue<PipeQueue>) {
        let pa = Pool::new(1, 256, false).unwrap();
        let pb = Pool::new(2, 1024, false).unwrap();
        let (a, b) = pipe::pair(pa, pb, 512);
        (a, FaultyQueue::new(b, cfg).unwrap())
    }

    /// Sends `n` numbered frames from `a` through the faulty receiver in
    /// bursts of 32, then polls until the receiver is idle; returns every
    /// frame received, in order.
    fn run_rx(cfg: FaultConfig, n: u64) -> (Vec<[u8; LEN]>, FaultyQueue<PipeQueue>) {
        let (mut a, mut b) = link(cfg);
        let mut got = Vec::with_capacity(n as usize * 2);
        let mut rx = Vec::new();
        let mut seq = 0;
        let mut drain = |b: &mut FaultyQueue<PipeQueue>, rx: &mut Vec<PktBuf>| {
            while b.rx_burst(rx, 32) > 0 {
                for f in rx.drain(..) {
                    got.push(f.data().try_into().unwrap());
                }
            }
        };
        while seq < n {
            let mut tx = Vec::new();
            while tx.len() < 32 && seq < n {
                let mut f = a.pool().alloc().unwrap();
                assert!(f.extend_from_slice(&payload(seq)));
                tx.push(f);
                seq += 1;
            }
            a.tx_burst(&mut tx);
            drain(&mut b, &mut rx);
        }
        for _ in 0..16 {
            drain(&mut b, &mut rx);
        }
        assert_eq!(b.held(), (0, 0), "held frames are released when idle");
        assert_eq!(
            b.inner().stats().rx_dropped,
            0,
            "the pipe itself lost nothing"
        );
        (got, b)
    }

    /// Whether `observed` is within 5 standard deviations of `n * p`.
    fn near(observed: u64, n: u64, p: f64) -> bool {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        (observed as f64 - mean).abs() <= 5.0 * sd + 1.0
    }

    #[test]
    fn zero_rates_are_transparent() {
        let (got, b) = run_rx(FaultConfig::default(), 10_000);
        assert_eq!(got.len(), 10_000);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f, &payload(i as u64));
        }
        let c = b.fault_stats().rx;
        assert_eq!(c.frames, 10_000);
        assert_eq!(c.dropped + c.duplicated + c.reordered + c.corrupted, 0);
    }

    #[test]
    fn drop_rate_is_honoured() {
        let cfg = FaultConfig {
            seed: 1,
            drop: 0.1,
            ..FaultConfig::default()
        };
        let (got, b) = run_rx(cfg, N);
        let dropped = b.fault_stats().rx.dropped;
        assert!(near(dropped, N, 0.1), "dropped {dropped} of {N}");
        assert_eq!(got.len() as u64, N - dropped);
        assert!(
            got.windows(2).all(|w| seq_of(&w[0]) < seq_of(&w[1])),
            "order kept"
        );
    }

    #[test]
    fn duplicate_rate_is_honoured() {
        let cfg = FaultConfig {
            seed: 2,
            duplicate: 0.05,
            ..FaultConfig::default()
        };
        let (got, b) = run_rx(cfg, N);
        let dups = b.fault_stats().rx.duplicated;
        assert!(near(dups, N, 0.05), "duplicated {dups} of {N}");
        assert_eq!(got.len() as u64, N + dups);
        let twice = got.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert_eq!(twice, dups, "each copy follows its original");
    }

    #[test]
    fn reorder_never_loses_frames() {
        let cfg = FaultConfig {
            seed: 3,
            reorder: 0.2,
            ..FaultConfig::default()
        };
        let (got, b) = run_rx(cfg, N);
        let reordered = b.fault_stats().rx.reordered;
        assert!(near(reordered, N, 0.2), "reordered {reordered} of {N}");
        let mut seqs: Vec<u64> = got.iter().map(|f| seq_of(f)).collect();
        let out_of_place = seqs
            .iter()
            .enumerate()
            .filter(|&(i, &s)| s != i as u64)
            .count();
        assert!(out_of_place > 0, "some frames arrive late");
        seqs.sort_unstable();
        assert!(seqs.iter().copied().eq(0..N), "every frame exactly once");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f, &payload(seq_of(f)), "frame {i} intact");
        }
    }

    #[test]
    fn corrupt_flips_exactly_one_bit() {
        let cfg = FaultConfig {
            seed: 4,
            corrupt: 0.02,
            ..FaultConfig::default()
        };
        let (got, b) = run_rx(cfg, N);
        let corrupted = b.fault_stats().rx.corrupted;
        assert!(near(corrupted, N, 0.02), "corrupted {corrupted} of {N}");
        assert_eq!(got.len() as u64, N);
        let mut changed = 0;
        for (i, f) in got.iter().enumerate() {
            let bits: u32 = f
                .iter()
                .zip(payload(i as u64).iter())
                .map(|(x, y)| (x ^ y).count_ones())
                .sum();
            assert!(bits <= 1, "frame {i} has {bits} flipped bits");
            changed += u64::from(bits);
        }
        assert_eq!(changed, corrupted);
    }

    #[test]
    fn same_seed_gives_same_faults_and_another_seed_differs() {
        let cfg = |seed| FaultConfig {
            seed,
            drop: 0.05,
            duplicate: 0.05,
            reorder: 0.1,
            corrupt: 0.05,
            ..FaultConfig::default()
        };
        let (first, s1) = run_rx(cfg(7), 5_000);
        let (second, s2) = run_rx(cfg(7), 5_000);
        let (other, _) = run_rx(cfg(8), 5_000);
        assert_eq!(first, second);
        assert_eq!(s1.fault_stats(), s2.fault_stats());
        assert_ne!(first, other);
    }

    #[test]
    fn held_frame_is_released_without_further_traffic() {
        let cfg = FaultConfig {
            seed: 5,
            reorder: 1.0,
            reorder_polls: 3,
            ..FaultConfig::default()
        };
        let (mut a, mut b) = link(cfg);
        let mut f = a.pool().alloc().unwrap();
        assert!(f.extend_from_slice(&payload(9)));
        a.tx_burst(&mut vec![f]);
        let mut rx = Vec::new();
        assert_eq!(b.rx_burst(&mut rx, 8), 0, "held back");
        assert_eq!(b.held(), (1, 0));
        assert_eq!(b.rx_burst(&mut rx, 8), 0);
        assert_eq!(b.rx_burst(&mut rx, 8), 0);
        assert_eq!(
            b.rx_burst(&mut rx, 8),
            1,
            "released on the third later poll"
        );
        assert_eq!(rx[0].data(), payload(9));
    }

    #[test]
    fn rx_burst_never_exceeds_max() {
        let cfg = FaultConfig {
            seed: 6,
            duplicate: 1.0,
            ..FaultConfig::default()
        };
        let (mut a, mut b) = link(cfg);
        let mut tx: Vec<_> = (0..8)
            .map(|i| {
                let mut f = a.pool().alloc().unwrap();
                assert!(f.extend_from_slice(&payload(i)));
                f
            })
            .collect();
        a.tx_burst(&mut tx);
        let mut rx = Vec::new();
        let mut total = 0;
        loop {
            let n = b.rx_burst(&mut rx, 5);
            assert!(n <= 5);
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 16);
    }

    #[test]
    fn tx_faults_apply_on_transmit_only() {
        let cfg = FaultConfig {
            seed: 7,
            drop: 1.0,
            direction: Direction::Tx,
            ..FaultConfig::default()
        };
        let (mut a, b) = link(FaultConfig::default());
        let mut b = FaultyQueue::new(b.into_inner(), cfg).unwrap();
        let mut tx: Vec<_> = (0..4)
            .map(|i| {
                let mut f = b.pool().alloc().unwrap();
                assert!(f.extend_from_slice(&payload(i)));
                f
            })
            .collect();
        assert_eq!(b.tx_burst(&mut tx), 4);
        let mut rx = Vec::new();
        assert_eq!(a.rx_burst(&mut rx, 8), 0, "all lost on the way out");
        assert_eq!(b.fault_stats().tx.dropped, 4);

        let mut f = a.pool().alloc().unwrap();
        assert!(f.extend_from_slice(&payload(1)));
        a.tx_burst(&mut vec![f]);
        assert_eq!(b.rx_burst(&mut rx, 8), 1, "receive is untouched");
        assert_eq!(b.fault_stats().rx, FaultCounters::default());
    }

    #[test]
    fn tx_corruption_leaves_the_senders_copy_alone() {
        let cfg = FaultConfig {
            seed: 8,
            corrupt: 1.0,
            direction: Direction::Tx,
            ..FaultConfig::default()
        };
        let (mut a, b) = link(FaultConfig::default());
        let mut b = FaultyQueue::new(b.into_inner(), cfg).unwrap();
        let mut f = b.pool().alloc().unwrap();
        assert!(f.extend_from_slice(&payload(3)));
        let kept = f.clone();
        b.tx_burst(&mut vec![f]);
        assert_eq!(kept.data(), payload(3), "retransmission copy intact");
        let mut rx = Vec::new();
        assert_eq!(a.rx_burst(&mut rx, 8), 1);
        assert_ne!(rx[0].data(), payload(3));
        assert_eq!(b.fault_stats().tx.corrupted, 1);
    }

    #[test]
    fn bad_rates_are_refused() {
        let (_, b) = link(FaultConfig::default());
        let cfg = FaultConfig {
            drop: 1.5,
            ..FaultConfig::default()
        };
        assert_eq!(
            FaultyQueue::new(b.into_inner(), cfg).unwrap_err(),
            FaultError::BadRate {
                name: "drop",
                value: 1.5
            }
        );
    }
}
