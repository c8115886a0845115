//! A per-core hierarchical timer wheel (Varghese & Lauck, "Hashed and
//! hierarchical timing wheels", SOSP'87), shaped after IX's: three levels of
//! 256 slots.
//!
//! | level | slot width (one tick of the level) | span of the level |
//! |-------|------------------------------------|-------------------|
//! | 0     | 2^14 ns ≈ 16.4 µs                  | ≈ 4.2 ms          |
//! | 1     | 2^22 ns ≈ 4.2 ms                   | ≈ 1.07 s          |
//! | 2     | 2^30 ns ≈ 1.07 s                   | ≈ 275 s           |
//!
//! IX uses 16 µs / 4 ms / 1 s; we round to powers of two so that every
//! conversion is a shift. A timer further away than the span of level 2 is
//! parked in level 2 and re-filed each time its slot cascades, so any
//! deadline works.
//!
//! Guarantees: a timer never fires before its deadline (deadlines are
//! rounded *up* to a level-0 tick) and fires on the first [`TimerWheel::advance`]
//! whose `now` is at or past that tick, i.e. at most one level-0 tick
//! (16.4 µs) late with respect to `now`. Entries live in a fixed-capacity
//! slab allocated in [`TimerWheel::new`]; [`TimerWheel::schedule`] and
//! [`TimerWheel::cancel`] are O(1) (doubly linked slot lists, generation
//! numbers in [`TimerId`] so a stale id cancels nothing) and never allocate.
//! [`TimerWheel::advance`] visits only ticks with work (occupancy bitmaps), so
//! a large jump in time costs time proportional to the timers, not to the
//! ticks skipped.

use std::num::NonZeroU32;

use thiserror::Error;

use crate::time::Instant;

/// log2 of the level-0 tick in nanoseconds.
const TICK_SHIFT: u32 = 14;
/// log2 of the slots per level.
const SLOT_BITS: u32 = 8;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const LEVELS: usize = 3;
/// List index of the "due" list: timers scheduled at or before the current
/// tick, fired by the next `advance`.
const DUE: u16 = (LEVELS * SLOTS) as u16;
/// List index of an entry on the free list.
const FREE: u16 = u16::MAX;
const NIL: u32 = u32::MAX;

/// Errors of the timer wheel.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// Every entry of the slab is in use.
    #[error("timer wheel full ({capacity} timers): raise its capacity or cancel timers")]
    Full {
        /// The wheel's capacity.
        capacity: usize,
    },
}

/// Handle of a scheduled timer, valid until it fires or is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    idx: u32,
    gen: NonZeroU32,
}

struct Entry<T> {
    /// Deadline in level-0 ticks (rounded up).
    deadline: u64,
    token: Option<T>,
    next: u32,
    prev: u32,
    gen: NonZeroU32,
    list: u16,
}

/// A hierarchical timer wheel of `T` tokens (see the module docs).
pub struct TimerWheel<T: Copy> {
    entries: Vec<Entry<T>>,
    /// Heads of the 3 × 256 slot lists plus the due list.
    heads: Vec<u32>,
    occupied: [[u64; SLOTS / 64]; LEVELS],
    /// Every tick up to and including `cur` has been processed.
    cur: u64,
    free: u32,
    len: usize,
}

impl<T: Copy> std::fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("capacity", &self.entries.len())
            .field("len", &self.len)
            .field("cur_tick", &self.cur)
            .finish()
    }
}

#[inline]
fn tick_floor(t: Instant) -> u64 {
    t.as_nanos() >> TICK_SHIFT
}

#[inline]
fn tick_ceil(t: Instant) -> u64 {
    t.as_nanos().div_ceil(1 << TICK_SHIFT)
}

#[inline]
fn tick_instant(tick: u64) -> Instant {
    Instant::from_nanos(tick.saturating_mul(1 << TICK_SHIFT))
}

/// Circular search of a 256-bit map: the distance `k` in `1..=256` from
/// `from` of the first set bit at `(from + k) % 256`.
fn next_set(bits: &[u64; SLOTS / 64], from: u64) -> Option<u64> {
    let start = ((from + 1) & SLOT_MASK) as usize;
    // Two passes over the words cover the wrap-around.
    for step in 0..=SLOTS / 64 {
        let w = (start / 64 + step) % (SLOTS / 64);
        let mut word = bits[w];
        if step == 0 {
            word &= !0u64 << (start % 64);
        } else if step == SLOTS / 64 {
            word &= !(!0u64 << (start % 64));
        }
        if word != 0 {
            let slot = (w * 64) as u64 + u64::from(word.trailing_zeros());
            let dist = (slot + SLOTS as u64 - (start as u64)) & SLOT_MASK;
            return Some(dist + 1);
        }
    }
    None
}

impl<T: Copy> TimerWheel<T> {
    /// An empty wheel whose clock starts at `now`, with room for `capacity`
    /// timers (allocated here, once).
    pub fn new(now: Instant, capacity: usize) -> Self {
        assert!(capacity < NIL as usize, "timer wheel capacity too large");
        let entries = (0..capacity)
            .map(|i| Entry {
                deadline: 0,
                token: None,
                next: if i + 1 < capacity { i as u32 + 1 } else { NIL },
                prev: NIL,
                gen: NonZeroU32::MIN,
                list: FREE,
            })
            .collect();
        TimerWheel {
            entries,
            heads: vec![NIL; LEVELS * SLOTS + 1],
            occupied: [[0; SLOTS / 64]; LEVELS],
            cur: tick_floor(now),
            free: if capacity > 0 { 0 } else { NIL },
            len: 0,
        }
    }

    /// Maximum number of pending timers.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `token` to fire at `deadline` (a deadline in the past
    /// fires on the next [`advance`](Self::advance)).
    pub fn schedule(&mut self, deadline: Instant, token: T) -> Result<TimerId, TimerError> {
        let idx = self.free;
        if idx == NIL {
            return Err(TimerError::Full {
                capacity: self.entries.len(),
            });
        }
        let e = &mut self.entries[idx as usize];
        self.free = e.next;
        e.deadline = tick_ceil(deadline);
        e.token = Some(token);
        let gen = e.gen;
        self.len += 1;
        self.file(idx);
        Ok(TimerId { idx, gen })
    }

    /// Cancels a pending timer. Returns false (and does nothing) if it
    /// already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        let Some(e) = self.entries.get(id.idx as usize) else {
            return false;
        };
        if e.gen != id.gen || e.list == FREE {
            return false;
        }
        self.unlink(id.idx);
        self.release(id.idx);
        true
    }

    /// Whether `id` is still pending (neither fired nor cancelled).
    pub fn is_pending(&self, id: TimerId) -> bool {
        self.entries
            .get(id.idx as usize)
            .is_some_and(|e| e.gen == id.gen && e.list != FREE)
    }

    /// Fires, by calling `fire` with its token, every timer whose deadline
    /// is at or before `now`, and moves the wheel's clock to `now`. Returns
    /// the number of timers fired. Timers fire in deadline order up to the
    /// granularity of a level-0 tick.
    pub fn advance(&mut self, now: Instant, mut fire: impl FnMut(T)) -> usize {
        let target = tick_floor(now);
        let mut fired = self.fire_list(DUE as usize, &mut fire);
        if target <= self.cur {
            // Still in the current tick: every pending timer is filed in a
            // later tick (deadlines up to `cur` go to the due list).
            return fired;
        }
        while self.len > 0 {
            let Some(next) = self.next_tick() else { break };
            if next > target {
                break;
            }
            self.cur = next;
            if next & ((1 << (2 * SLOT_BITS)) - 1) == 0 {
                self.cascade(2, (next >> (2 * SLOT_BITS)) & SLOT_MASK);
            }
            if next & SLOT_MASK == 0 {
                self.cascade(1, (next >> SLOT_BITS) & SLOT_MASK);
            }
            fired += self.fire_list((next & SLOT_MASK) as usize, &mut fire);
            fired += self.fire_list(DUE as usize, &mut fire);
        }
        if target > self.cur {
            self.cur = target;
        }
        fired
    }

    /// When [`advance`](Self::advance) next has work: `None` if no timer is
    /// pending. The value is never later than the earliest deadline rounded
    /// up to a level-0 tick, so sleeping until then misses nothing; it may
    /// be earlier (a higher level's slot cascading), after which this is to
    /// be asked again.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.heads[DUE as usize] != NIL {
            return Some(tick_instant(self.cur));
        }
        self.next_tick().map(tick_instant)
    }

    /// The next tick after `cur` at which a level-0 slot fires or a higher
    /// slot cascades.
    fn next_tick(&self) -> Option<u64> {
        let mut best: Option<u64> = None;
        for level in 0..LEVELS {
            let shift = SLOT_BITS * level as u32;
            let pos = self.cur >> shift;
            if let Some(k) = next_set(&self.occupied[level], pos & SLOT_MASK) {
                let tick = (pos + k) << shift;
                best = Some(best.map_or(tick, |b| b.min(tick)));
            }
        }
        best
    }

    /// Puts entry `idx` (not on any list) in the list its deadline calls
    /// for, relative to the current tick.
    fn file(&mut self, idx: u32) {
        let d = self.entries[idx as usize].deadline;
        let list = if d <= self.cur {
            DUE as usize
        } else {
            let delta = d - self.cur;
            if delta < 1 << SLOT_BITS {
                (d & SLOT_MASK) as usize
            } else if delta < 1 << (2 * SLOT_BITS) {
                SLOTS + ((d >> SLOT_BITS) & SLOT_MASK) as usize
            } else {
                // Beyond level 2's span: park in the last slot it reaches,
                // to be re-filed when that slot cascades.
                let d = d.min(self.cur + (1 << (3 * SLOT_BITS)) - 1);
                2 * SLOTS + ((d >> (2 * SLOT_BITS)) & SLOT_MASK) as usize
            }
        };
        let head = self.heads[list];
        {
            let e = &mut self.entries[idx as usize];
            e.list = list as u16;
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            self.entries[head as usize].prev = idx;
        }
        self.heads[list] = idx;
        if list < DUE as usize {
            self.occupied[list / SLOTS][(list % SLOTS) / 64] |= 1 << (list % 64);
        }
    }

    /// Removes entry `idx` from its list.
    fn unlink(&mut self, idx: u32) {
        let (list, prev, next) = {
            let e = &self.entries[idx as usize];
            (e.list as usize, e.prev, e.next)
        };
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.heads[list] = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[list] == NIL && list < DUE as usize {
            self.occupied[list / SLOTS][(list % SLOTS) / 64] &= !(1 << (list % 64));
        }
    }

    /// Returns entry `idx` (already unlinked) to the free list.
    fn release(&mut self, idx: u32) -> Option<T> {
        let free = self.free;
        let e = &mut self.entries[idx as usize];
        e.list = FREE;
        e.gen = e.gen.checked_add(1).unwrap_or(NonZeroU32::MIN);
        e.next = free;
        e.prev = NIL;
        self.free = idx;
        self.len -= 1;
        e.token.take()
    }

    /// Detaches a whole list, returning its first entry.
    fn take_list(&mut self, list: usize) -> u32 {
        let head = std::mem::replace(&mut self.heads[list], NIL);
        if list < DUE as usize {
            self.occupied[list / SLOTS][(list % SLOTS) / 64] &= !(1 << (list % 64));
        }
        head
    }

    fn fire_list(&mut self, list: usize, fire: &mut impl FnMut(T)) -> usize {
        let mut idx = self.take_list(list);
        let mut n = 0;
        while idx != NIL {
            let next = self.entries[idx as usize].next;
            if let Some(token) = self.release(idx) {
                fire(token);
                n += 1;
            }
            idx = next;
        }
        n
    }

    fn cascade(&mut self, level: usize, slot: u64) {
        let mut idx = self.take_list(level * SLOTS + slot as usize);
        while idx != NIL {
            let next = self.entries[idx as usize].next;
            self.file(idx);
            idx = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TICK: u64 = 1 << TICK_SHIFT;

    fn collect(w: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut v = Vec::new();
        w.advance(now, |t| v.push(t));
        v
    }

    #[test]
    fn timers_fire_in_deadline_order_never_early() {
        let start = Instant::from_millis(10);
        let mut w = TimerWheel::new(start, 64);
        let delays_us = [900u64, 50, 3000, 17, 250_000, 40, 1_500_000, 4_100];
        for (i, d) in delays_us.iter().enumerate() {
            w.schedule(start + Duration::from_micros(*d), i as u32)
                .unwrap();
        }
        let mut order = Vec::new();
        let mut now = start;
        while !w.is_empty() {
            now = now + Duration::from_micros(7);
            w.advance(now, |t| {
                let deadline = start + Duration::from_micros(delays_us[t as usize]);
                assert!(now >= deadline, "timer {t} fired early");
                assert!(
                    (now - deadline).as_nanos() as u64 <= TICK + 7_000,
                    "timer {t} fired {:?} late",
                    now - deadline
                );
                order.push(t);
            });
        }
        assert_eq!(order, vec![3, 5, 1, 0, 2, 7, 4, 6]);
    }

    #[test]
    fn cancelled_timer_does_not_fire_and_stale_id_is_ignored() {
        let start = Instant::ZERO;
        let mut w = TimerWheel::new(start, 4);
        let a = w.schedule(Instant::from_millis(1), 1).unwrap();
        let b = w.schedule(Instant::from_millis(2), 2).unwrap();
        assert!(w.is_pending(a));
        assert!(w.cancel(a));
        assert!(!w.is_pending(a));
        assert!(!w.cancel(a), "second cancel is a no-op");
        assert_eq!(w.len(), 1);
        // The slot of `a` is reused; the old id must not cancel the new timer.
        let c = w.schedule(Instant::from_millis(3), 3).unwrap();
        assert!(!w.cancel(a));
        assert_eq!(collect(&mut w, Instant::from_millis(5)), vec![2, 3]);
        assert!(!w.cancel(b), "fired timers cannot be cancelled");
        assert!(!w.cancel(c));
        assert!(w.is_empty());
    }

    #[test]
    fn far_future_timers_cascade_down_levels() {
        let start = Instant::from_nanos(123_456_789);
        let mut w = TimerWheel::new(start, 16);
        // One per level and one beyond level 2's span (~275 s).
        let delays = [
            Duration::from_millis(3),
            Duration::from_millis(700),
            Duration::from_secs(100),
            Duration::from_secs(1000),
        ];
        for (i, d) in delays.iter().enumerate() {
            w.schedule(start + *d, i as u32).unwrap();
        }
        let mut fired = Vec::new();
        let mut now = start;
        // Step in 1 ms increments to the end, checking precision.
        while now < start + Duration::from_secs(1001) {
            now = now + Duration::from_millis(1);
            w.advance(now, |t| {
                let deadline = start + delays[t as usize];
                assert!(now >= deadline);
                assert!(now - deadline < Duration::from_millis(1) + Duration::from_nanos(TICK));
                fired.push(t);
            });
        }
        assert_eq!(fired, vec![0, 1, 2, 3]);
    }

    #[test]
    fn large_time_jump_fires_everything_due_and_keeps_the_rest() {
        let start = Instant::ZERO;
        let mut w = TimerWheel::new(start, 1000);
        for i in 0..1000u32 {
            w.schedule(start + Duration::from_millis(u64::from(i) * 997), i)
                .unwrap();
        }
        // Jump 600 s at once: timers up to 600 s fire, in order.
        let fired = collect(&mut w, Instant::from_millis(600_000));
        let due: Vec<u32> = (0..1000)
            .filter(|i| u64::from(*i) * 997 <= 600_000)
            .collect();
        assert_eq!(fired, due);
        assert_eq!(w.len(), 1000 - due.len());
        // The rest fires exactly when due.
        let next = w.next_deadline().unwrap();
        assert!(next <= Instant::from_millis(602 * 997));
        let rest = collect(&mut w, Instant::from_millis(2_000_000));
        assert_eq!(rest.len(), 1000 - due.len());
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn past_deadline_fires_on_next_advance_without_time_moving() {
        let now = Instant::from_millis(50);
        let mut w = TimerWheel::new(now, 2);
        w.schedule(Instant::from_millis(10), 7).unwrap();
        assert_eq!(w.next_deadline(), Some(tick_instant(tick_floor(now))));
        assert_eq!(collect(&mut w, now), vec![7]);
    }

    #[test]
    fn full_wheel_refuses_then_accepts_after_cancel() {
        let mut w = TimerWheel::new(Instant::ZERO, 2);
        let a = w.schedule(Instant::from_millis(1), 1).unwrap();
        w.schedule(Instant::from_millis(1), 2).unwrap();
        assert_eq!(
            w.schedule(Instant::from_millis(1), 3),
            Err(TimerError::Full { capacity: 2 })
        );
        assert!(w.cancel(a));
        w.schedule(Instant::from_millis(1), 3).unwrap();
        let mut fired = collect(&mut w, Instant::from_millis(2));
        fired.sort_unstable();
        assert_eq!(fired, vec![2, 3]);
    }

    #[test]
    fn next_deadline_is_a_safe_wakeup_time() {
        let start = Instant::from_millis(1);
        let mut w = TimerWheel::new(start, 8);
        let deadline = start + Duration::from_millis(2500);
        w.schedule(deadline, 1).unwrap();
        // Sleeping until next_deadline repeatedly reaches the timer without
        // ever passing its deadline by more than one tick.
        let mut now = start;
        let mut fired = false;
        for _ in 0..10 {
            let wake = w.next_deadline().unwrap();
            assert!(wake <= tick_instant(tick_ceil(deadline)));
            now = wake.max(now);
            if w.advance(now, |_| {}) == 1 {
                fired = true;
                break;
            }
        }
        assert!(fired);
        assert!(now >= deadline && now - deadline <= Duration::from_nanos(TICK));
    }

    #[test]
    fn randomized_against_a_sorted_model() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(42);
        let start = Instant::from_nanos(rng.gen_range(0..1 << 40));
        let mut w = TimerWheel::new(start, 512);
        let mut model: Vec<(Instant, u32, TimerId)> = Vec::new();
        let mut now = start;
        for step in 0..20_000u32 {
            match rng.gen_range(0..10) {
                0..=4 => {
                    let d = match rng.gen_range(0..3) {
                        0 => Duration::from_nanos(rng.gen_range(0..5_000_000)),
                        1 => Duration::from_nanos(rng.gen_range(0..2_000_000_000)),
                        _ => Duration::from_secs(rng.gen_range(0..600)),
                    };
                    if let Ok(id) = w.schedule(now + d, step) {
                        model.push((now + d, step, id));
                    } else {
                        assert_eq!(model.len(), 512);
                    }
                }
                5 if !model.is_empty() => {
                    let (_, _, id) = model.swap_remove(rng.gen_range(0..model.len()));
                    assert!(w.cancel(id));
                }
                _ => {
                    now = now + Duration::from_nanos(rng.gen_range(0..50_000_000));
                    let mut fired = Vec::new();
                    w.advance(now, |t| fired.push(t));
                    let mut expect: Vec<u32> = model
                        .iter()
                        .filter(|(d, _, _)| tick_ceil(*d) <= tick_floor(now))
                        .map(|(_, t, _)| *t)
                        .collect();
                    model.retain(|(d, _, _)| tick_ceil(*d) > tick_floor(now));
                    fired.sort_unstable();
                    expect.sort_unstable();
                    assert_eq!(fired, expect, "step {step}");
                }
            }
            assert_eq!(w.len(), model.len());
        }
    }
}
