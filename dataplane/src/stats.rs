//! The per-core statistics page: what each elastic thread publishes about
//! itself, in memory shared between the dataplane (the only writer) and
//! the control plane (a reader). IX published the same kind of numbers
//! every 10 ms for its control plane's policy (IX OSDI'14, §4.3); here the
//! page also feeds `ixctl stats`.
//!
//! # Layout (version 1)
//!
//! A page is a memfd of [`page_len`]`(cores)` bytes: a [`HEADER_LEN`]-byte
//! header, then one [`RECORD_LEN`]-byte record per core, core `i` at byte
//! `HEADER_LEN + i * RECORD_LEN`. Every field is a little-endian `u64`
//! at an 8-byte aligned offset, read and written as an atomic (never as a
//! byte slice, since the other side may write at any moment). Bytes not
//! listed are reserved and zero.
//!
//! | header offset | field | value |
//! |---:|---|---|
//! | 0 | magic | [`MAGIC`], `"IXSTATS\0"` |
//! | 8 | version | [`VERSION`] |
//! | 16 | cores | records in the page |
//! | 24 | record_len | [`RECORD_LEN`] |
//! | 32 | interval_ns | the publication interval, [`PUBLISH_INTERVAL`] |
//! | 40 | ewma_weight_inv | 8: each interval weighs 1/8 in the averages |
//!
//! | record offset | field | meaning |
//! |---:|---|---|
//! | 0 | seq | seqlock: odd while the writer updates the record |
//! | 8 | heartbeat_ns | loop clock (`CLOCK_MONOTONIC`, ns) at the last publication |
//! | 16 | publishes | publications so far |
//! | 24 | rx_packets | frames received |
//! | 32 | tx_packets | frames transmitted |
//! | 40 | drops | frames dropped (NIC queue, Ethernet/IP layers) |
//! | 48 | connections | live TCP connections (TIME-WAIT included) |
//! | 56 | batches | loop turns that received at least one frame |
//! | 64 | turns | loop turns |
//! | 72 | idle_turns | turns with nothing to do |
//! | 80 | full_polls | RX polls that returned the batch bound B |
//! | 88 | events | events delivered to the application |
//! | 96 | batch_bound | B, the adaptive batch's bound |
//! | 104 | avg_batch_milli | moving average of the batch size, in 1/1000 frame |
//! | 112 | avg_queue_milli | moving average of the RX queue depth, in 1/1000 frame |
//! | 120 | avg_idle_ppm | moving average of the idle fraction, parts per million |
//! | 128 | avg_full_ppm | moving average of the full-poll fraction, ppm |
//! | 136 | avg_loop_ns | moving average of the loop time, ns per turn |
//!
//! # What the averages measure
//!
//! The elastic thread counts in plain local variables on every turn and
//! publishes once per interval: when [`PUBLISH_INTERVAL`] (10 ms, IX's
//! period) of loop clock has passed since the last publication, checked
//! against the clock the turn reads anyway. For each interval it computes
//! one sample of every quantity and folds it into an exponentially
//! weighted moving average, `avg ← avg + (sample − avg) / 8` (the first
//! sample initialises it): a sample weighs 1/8, the past 7/8, so the
//! average has a time constant of about 75 ms at 10 ms per interval, and
//! shows 95% of a step change after 22–23 intervals (~0.23 s). Each step
//! is rounded away from zero, so a steady sample is reached exactly.
//!
//! - *batch size*: frames per non-empty RX burst in the interval (0 when
//!   none arrived);
//! - *RX queue depth*: frames found in the RX queue per poll, over every
//!   poll of the interval. The thread cannot look into the ring without
//!   backend-specific code, but a burst takes everything that is there up
//!   to B, so the burst size *is* the depth at poll time when it is below
//!   B, and B is a lower bound when the burst hit it. The *full-poll
//!   fraction* says how often that happened: near 1 with a queue average
//!   near B means frames arrive faster than the core drains them (IX's
//!   signal to add a core);
//! - *idle fraction*: turns with nothing received, no events and nothing
//!   sent, over all turns;
//! - *loop time*: the interval's length over its turns.
//!
//! # Consistency
//!
//! A record is a seqlock with one writer: the writer makes `seq` odd,
//! stores the fields, and makes `seq` even again (release); a reader
//! retries until it reads the same even `seq` before and after the
//! fields. So a reader sees one publication, never a mix of two. A writer
//! that stopped in the middle leaves `seq` odd, and reads of that record
//! fail ([`StatsError::Unstable`]) rather than wait.
//!
//! # Trust
//!
//! The control plane creates the page and seals its size (`F_SEAL_SHRINK`,
//! `F_SEAL_GROW`), so a dataplane cannot shrink it under a reader's
//! mapping (a read past the end of a shrunk memfd raises `SIGBUS`);
//! [`StatsPage::open`] refuses a page without those seals. Everything in
//! the page is written by the dataplane and is just a number to a reader:
//! a dataplane can lie about itself, and only about itself.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mem::{MemError, SharedMem};

/// `"IXSTATS\0"` as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IXSTATS\0");
/// The layout version this module reads and writes.
pub const VERSION: u64 = 1;
/// Bytes of the page header.
pub const HEADER_LEN: usize = 64;
/// Bytes of one core's record.
pub const RECORD_LEN: usize = 256;
/// Most records in one page.
pub const MAX_CORES: usize = 128;
/// How often an elastic thread publishes (of its loop clock).
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(10);
/// The averages weigh each new sample `1 / EWMA_WEIGHT_INV`.
pub const EWMA_WEIGHT_INV: u64 = 8;

/// Byte offsets of the header's fields.
pub mod header {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::VERSION`].
    pub const VERSION: usize = 8;
    /// Records in the page.
    pub const CORES: usize = 16;
    /// [`super::RECORD_LEN`].
    pub const RECORD_LEN: usize = 24;
    /// [`super::PUBLISH_INTERVAL`] in nanoseconds.
    pub const INTERVAL_NS: usize = 32;
    /// [`super::EWMA_WEIGHT_INV`].
    pub const EWMA_WEIGHT_INV: usize = 40;
}

/// Byte offsets of a record's fields (see the module docs for meanings).
pub mod field {
    /// Seqlock sequence number.
    pub const SEQ: usize = 0;
    /// Loop clock at the last publication, ns.
    pub const HEARTBEAT_NS: usize = 8;
    /// Publications so far.
    pub const PUBLISHES: usize = 16;
    /// Frames received.
    pub const RX_PACKETS: usize = 24;
    /// Frames transmitted.
    pub const TX_PACKETS: usize = 32;
    /// Frames dropped.
    pub const DROPS: usize = 40;
    /// Live TCP connections.
    pub const CONNECTIONS: usize = 48;
    /// Turns that received frames.
    pub const BATCHES: usize = 56;
    /// Loop turns.
    pub const TURNS: usize = 64;
    /// Idle turns.
    pub const IDLE_TURNS: usize = 72;
    /// Polls that hit the batch bound.
    pub const FULL_POLLS: usize = 80;
    /// Events delivered.
    pub const EVENTS: usize = 88;
    /// The batch bound B.
    pub const BATCH_BOUND: usize = 96;
    /// Average batch size, milli-frames.
    pub const AVG_BATCH_MILLI: usize = 104;
    /// Average RX queue depth, milli-frames.
    pub const AVG_QUEUE_MILLI: usize = 112;
    /// Average idle fraction, ppm.
    pub const AVG_IDLE_PPM: usize = 120;
    /// Average full-poll fraction, ppm.
    pub const AVG_FULL_PPM: usize = 128;
    /// Average loop time, ns.
    pub const AVG_LOOP_NS: usize = 136;
}

/// Words of a record in use (`seq` and the fields after it).
pub const FIELDS: usize = field::AVG_LOOP_NS / 8 + 1;
const _: () = assert!(FIELDS * 8 <= RECORD_LEN && HEADER_LEN.is_multiple_of(8));

/// Bytes of a page with `cores` records.
pub const fn page_len(cores: usize) -> usize {
    HEADER_LEN + cores * RECORD_LEN
}

/// Why a page could not be made, opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A page holds 1 to [`MAX_CORES`] records.
    #[error("a stats page holds 1 to {MAX_CORES} cores, not {0}")]
    Cores(usize),
    /// Creating or mapping the memfd failed.
    #[error("stats page: {0}")]
    Mem(#[from] MemError),
    /// An OS call on the page's descriptor failed.
    #[error("stats page: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The descriptor is smaller than the page.
    #[error("stats page of {got} bytes, {need} needed for {cores} cores")]
    TooSmall {
        /// Bytes of the descriptor.
        got: u64,
        /// Bytes needed.
        need: usize,
        /// Cores expected.
        cores: usize,
    },
    /// The memfd's size is not sealed, so a reader's mapping could be cut.
    #[error("stats page is not sealed against shrinking (seals {seals:#x}); only pages ixcpd made are read")]
    NotSealed {
        /// The seals it has.
        seals: u32,
    },
    /// A header field does not hold what this layout expects.
    #[error("stats page header: {what} is {got:#x}, expected {expected:#x} (overwritten, or another layout version)")]
    Header {
        /// The field.
        what: &'static str,
        /// Its value.
        got: u64,
        /// The value expected.
        expected: u64,
    },
    /// No core with that index in the page.
    #[error("core {core} is not in a stats page of {cores} cores")]
    NoCore {
        /// The index asked for.
        core: usize,
        /// Records in the page.
        cores: usize,
    },
    /// The page is mapped read-only.
    #[error("stats page is mapped read-only; it has no writers")]
    ReadOnly,
    /// The record kept changing (or its writer stopped mid-update).
    #[error("core {core}'s record did not hold still to be read (its writer is mid-update or stopped during one)")]
    Unstable {
        /// The core.
        core: usize,
    },
}

/// One publication of one core: every field of a record but `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Loop clock at the publication (`CLOCK_MONOTONIC`), ns.
    pub heartbeat_ns: u64,
    /// Publications so far.
    pub publishes: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Frames dropped.
    pub drops: u64,
    /// Live TCP connections.
    pub connections: u64,
    /// Turns that received at least one frame.
    pub batches: u64,
    /// Loop turns.
    pub turns: u64,
    /// Turns with nothing to do.
    pub idle_turns: u64,
    /// RX polls that returned the batch bound.
    pub full_polls: u64,
    /// Events delivered to the application.
    pub events: u64,
    /// The batch bound B.
    pub batch_bound: u64,
    /// Moving average of the batch size, milli-frames.
    pub avg_batch_milli: u64,
    /// Moving average of the RX queue depth, milli-frames.
    pub avg_queue_milli: u64,
    /// Moving average of the idle fraction, ppm.
    pub avg_idle_ppm: u64,
    /// Moving average of the full-poll fraction, ppm.
    pub avg_full_ppm: u64,
    /// Moving average of the loop time, ns.
    pub avg_loop_ns: u64,
}

impl CoreStats {
    /// The fields in record order (after `seq`).
    fn to_words(self) -> [u64; FIELDS - 1] {
        [
            self.heartbeat_ns,
            self.publishes,
            self.rx_packets,
            self.tx_packets,
            self.drops,
            self.connections,
            self.batches,
            self.turns,
            self.idle_turns,
            self.full_polls,
            self.events,
            self.batch_bound,
            self.avg_batch_milli,
            self.avg_queue_milli,
            self.avg_idle_ppm,
            self.avg_full_ppm,
            self.avg_loop_ns,
        ]
    }

    fn from_words(w: [u64; FIELDS - 1]) -> CoreStats {
        CoreStats {
            heartbeat_ns: w[0],
            publishes: w[1],
            rx_packets: w[2],
            tx_packets: w[3],
            drops: w[4],
            connections: w[5],
            batches: w[6],
            turns: w[7],
            idle_turns: w[8],
            full_polls: w[9],
            events: w[10],
            batch_bound: w[11],
            avg_batch_milli: w[12],
            avg_queue_milli: w[13],
            avg_idle_ppm: w[14],
            avg_full_ppm: w[15],
            avg_loop_ns: w[16],
        }
    }

    /// Mean frames per non-empty burst over the thread's life.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.rx_packets as f64 / self.batches as f64
        }
    }
}

/// Stores `stats` into a record's words under its seqlock. One writer per
/// record: two would garble each other's fields (never memory safety).
pub(crate) fn write_record(words: &[AtomicU64; FIELDS], stats: &CoreStats) {
    // Odd while writing; already odd only if a writer died mid-update.
    let odd = words[0].load(Ordering::Relaxed) | 1;
    words[0].store(odd, Ordering::Relaxed);
    // The odd `seq` is visible before any field of the new publication.
    fence(Ordering::Release);
    for (word, value) in words[1..].iter().zip(stats.to_words()) {
        word.store(value, Ordering::Relaxed);
    }
    words[0].store(odd.wrapping_add(1), Ordering::Release);
}

/// Spins before yielding, and yields before giving up, when a record is
/// being written.
const READ_SPINS: u32 = 64;
const READ_YIELDS: u32 = 16;

/// Reads a record: `Some` with one whole publication, `None` when the
/// writer kept it busy (or stopped mid-update).
pub(crate) fn read_record(words: &[AtomicU64; FIELDS]) -> Option<CoreStats> {
    for attempt in 0..READ_SPINS + READ_YIELDS {
        let before = words[0].load(Ordering::Acquire);
        if before & 1 == 0 {
            let mut values = [0u64; FIELDS - 1];
            for (value, word) in values.iter_mut().zip(&words[1..]) {
                *value = word.load(Ordering::Relaxed);
            }
            // The field loads happen before the second look at `seq`.
            fence(Ordering::Acquire);
            if words[0].load(Ordering::Relaxed) == before {
                return Some(CoreStats::from_words(values));
            }
        }
        if attempt < READ_SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    None
}

/// A record's words, whoever holds them.
fn record_words(stats: &CoreStats) -> [u64; FIELDS] {
    let mut words = [0u64; FIELDS];
    words[1..].copy_from_slice(&stats.to_words());
    words
}

/// `avg + (sample − avg) / 8`, the step rounded away from zero so that a
/// steady sample is reached exactly (integer averages would otherwise
/// stop up to 7 units short).
pub fn ewma(avg: u64, sample: u64) -> u64 {
    if sample >= avg {
        avg + (sample - avg).div_ceil(EWMA_WEIGHT_INV)
    } else {
        avg - (avg - sample).div_ceil(EWMA_WEIGHT_INV)
    }
}

/// What happened on a core during one publication interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interval {
    /// Its length, ns.
    pub elapsed_ns: u64,
    /// Loop turns in it.
    pub turns: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Turns that received frames.
    pub batches: u64,
    /// Turns with nothing to do.
    pub idle_turns: u64,
    /// Polls that hit the batch bound.
    pub full_polls: u64,
}

/// The moving averages of one core (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Averages {
    /// Batch size, milli-frames.
    pub batch_milli: u64,
    /// RX queue depth, milli-frames.
    pub queue_milli: u64,
    /// Idle fraction, ppm.
    pub idle_ppm: u64,
    /// Full-poll fraction, ppm.
    pub full_ppm: u64,
    /// Loop time, ns per turn.
    pub loop_ns: u64,
    /// Whether a sample has been folded in.
    primed: bool,
}

impl Averages {
    /// Folds one interval's samples in; an interval without turns has
    /// nothing to say and changes nothing.
    pub fn fold(&mut self, i: &Interval) {
        if i.turns == 0 {
            return;
        }
        let per_turn = |x: u64, scale: u64| {
            (u128::from(x) * u128::from(scale) / u128::from(i.turns)).min(u128::from(u64::MAX))
                as u64
        };
        let batch = if i.batches == 0 {
            0
        } else {
            (u128::from(i.rx_packets) * 1000 / u128::from(i.batches)).min(u128::from(u64::MAX))
                as u64
        };
        let samples = [
            (&mut self.batch_milli, batch),
            (&mut self.queue_milli, per_turn(i.rx_packets, 1000)),
            (&mut self.idle_ppm, per_turn(i.idle_turns, 1_000_000)),
            (&mut self.full_ppm, per_turn(i.full_polls, 1_000_000)),
            (&mut self.loop_ns, i.elapsed_ns / i.turns),
        ];
        for (avg, sample) in samples {
            *avg = if self.primed {
                ewma(*avg, sample)
            } else {
                sample
            };
        }
        self.primed = true;
    }
}

/// A stats page mapped in this process: the control plane's view, or the
/// dataplane's (whose elastic threads get [`CoreWriter`]s).
#[derive(Debug, Clone)]
pub struct StatsPage {
    mem: Arc<SharedMem>,
    cores: usize,
}

fn seals_of(fd: BorrowedFd<'_>) -> Result<u32, StatsError> {
    // SAFETY: F_GET_SEALS takes no pointer; `fd` is open for the borrow.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(StatsError::Io {
            what: "reading its seals (is it a memfd?)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(seals as u32)
}

const SIZE_SEALS: u32 = (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) as u32;

impl StatsPage {
    /// Creates a zeroed page of `cores` records with its header written
    /// and its size sealed (the control plane's job).
    pub fn create(name: &str, cores: usize) -> Result<StatsPage, StatsError> {
        if cores == 0 || cores > MAX_CORES {
            return Err(StatsError::Cores(cores));
        }
        let mem = SharedMem::create(name, page_len(cores), false)?;
        let seals = (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) as libc::c_int;
        // SAFETY: F_ADD_SEALS takes an int, no pointer; the fd is open.
        if unsafe { libc::fcntl(mem.fd().as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(StatsError::Io {
                what: "sealing its size",
                source: std::io::Error::last_os_error(),
            });
        }
        let page = StatsPage {
            mem: Arc::new(mem),
            cores,
        };
        for (off, value) in [
            (header::MAGIC, MAGIC),
            (header::VERSION, VERSION),
            (header::CORES, cores as u64),
            (header::RECORD_LEN, RECORD_LEN as u64),
            (header::INTERVAL_NS, PUBLISH_INTERVAL.as_nanos() as u64),
            (header::EWMA_WEIGHT_INV, EWMA_WEIGHT_INV),
        ] {
            page.word(off).store(value, Ordering::Relaxed);
        }
        Ok(page)
    }

    /// Maps the first `cores` records of a page received as `fd`:
    /// writable for the dataplane, read-only for a reader. The page may
    /// have room for more cores than that (ixcpd sizes it for the most
    /// cores the dataplane could grow to, and keeps it across resizes).
    /// Refuses a descriptor that is too small, not size-sealed, or whose
    /// header is not this layout's or holds fewer records.
    pub fn open(fd: OwnedFd, cores: usize, writable: bool) -> Result<StatsPage, StatsError> {
        if cores == 0 || cores > MAX_CORES {
            return Err(StatsError::Cores(cores));
        }
        let seals = seals_of(fd.as_fd())?;
        if seals & SIZE_SEALS != SIZE_SEALS {
            return Err(StatsError::NotSealed { seals });
        }
        let file = std::fs::File::from(fd);
        let got = file
            .metadata()
            .map_err(|source| StatsError::Io {
                what: "reading its size",
                source,
            })?
            .len();
        let need = page_len(cores);
        if got < need as u64 {
            return Err(StatsError::TooSmall { got, need, cores });
        }
        let mem = SharedMem::from_fd(OwnedFd::from(file), need, writable)?;
        let page = StatsPage {
            mem: Arc::new(mem),
            cores,
        };
        page.check_header()?;
        Ok(page)
    }

    /// Records in the page.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The memfd (to send to the other side).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    /// Checks the header still says what it said when the page was made:
    /// this layout, with room for at least the records mapped here.
    pub fn check_header(&self) -> Result<(), StatsError> {
        for (what, off, expected) in [
            ("magic", header::MAGIC, MAGIC),
            ("version", header::VERSION, VERSION),
            ("cores", header::CORES, self.cores as u64),
            ("record_len", header::RECORD_LEN, RECORD_LEN as u64),
        ] {
            let got = self.word(off).load(Ordering::Relaxed);
            let fits = if what == "cores" {
                (expected..=MAX_CORES as u64).contains(&got)
            } else {
                got == expected
            };
            if !fits {
                return Err(StatsError::Header {
                    what,
                    got,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Reads core `core`'s latest publication (all zero before the first).
    pub fn read(&self, core: usize) -> Result<CoreStats, StatsError> {
        read_record(self.record(core)?).ok_or(StatsError::Unstable { core })
    }

    /// The writer of core `core`'s record. Give each record one writer.
    pub fn writer(&self, core: usize) -> Result<CoreWriter, StatsError> {
        if !self.mem.is_writable() {
            return Err(StatsError::ReadOnly);
        }
        self.record(core)?;
        Ok(CoreWriter {
            page: self.clone(),
            core,
        })
    }

    /// The atomic word at byte `off` of the page.
    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.mem.len(),
            "offset {off}"
        );
        // SAFETY: the word is inside the mapping (asserted) and 8-byte
        // aligned (the mapping is page-aligned, `off` a multiple of 8);
        // the mapping lives as long as `self.mem`, which the returned
        // reference borrows. `AtomicU64` has `u64`'s layout and every bit
        // pattern is a valid `u64`; the memory is only ever accessed
        // through atomics here, and the other process's writes are
        // outside this program (a peer can change values, not validity).
        // The size is sealed, so the mapping cannot lose its backing.
        // On x86-64 an atomic load is a plain load, valid on a read-only
        // mapping.
        unsafe { &*self.mem.as_ptr().add(off).cast::<AtomicU64>() }
    }

    /// The words of core `core`'s record.
    fn record(&self, core: usize) -> Result<&[AtomicU64; FIELDS], StatsError> {
        if core >= self.cores {
            return Err(StatsError::NoCore {
                core,
                cores: self.cores,
            });
        }
        let off = HEADER_LEN + core * RECORD_LEN;
        assert!(off + FIELDS * 8 <= self.mem.len());
        // SAFETY: as for `word`: `FIELDS` consecutive aligned words inside
        // the mapping (asserted), borrowed no longer than `self.mem`;
        // `[AtomicU64; N]` has the layout of `N` consecutive `u64`s.
        Ok(unsafe { &*self.mem.as_ptr().add(off).cast::<[AtomicU64; FIELDS]>() })
    }
}

/// The writer of one core's record in a [`StatsPage`]; keeps the mapping
/// alive. Moves to the elastic thread that publishes.
#[derive(Debug)]
pub struct CoreWriter {
    page: StatsPage,
    core: usize,
}

impl CoreWriter {
    /// Publishes `stats` (no allocation, no system call, no locked
    /// instruction: stores and a fence).
    pub fn publish(&self, stats: &CoreStats) {
        let words = self.page.record(self.core).expect("checked at creation");
        write_record(words, stats);
    }

    /// The core whose record this writes.
    pub fn core(&self) -> usize {
        self.core
    }
}

/// A process-local record with the same seqlock: what the elastic thread
/// also publishes to when no control plane gave it a page.
#[derive(Debug, Default)]
pub struct LocalRecord {
    words: [AtomicU64; FIELDS],
}

impl LocalRecord {
    /// Publishes `stats`.
    pub fn publish(&self, stats: &CoreStats) {
        write_record(&self.words, stats);
    }

    /// The latest publication. Within one process the writer may be
    /// descheduled mid-update; after the bounded retries the fields are
    /// read as they are (each whole, perhaps from two publications).
    pub fn read(&self) -> CoreStats {
        read_record(&self.words).unwrap_or_else(|| {
            let mut values = [0u64; FIELDS - 1];
            for (value, word) in values.iter_mut().zip(&self.words[1..]) {
                *value = word.load(Ordering::Relaxed);
            }
            CoreStats::from_words(values)
        })
    }
}

impl From<&CoreStats> for LocalRecord {
    fn from(stats: &CoreStats) -> LocalRecord {
        LocalRecord {
            words: record_words(stats).map(AtomicU64::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CoreStats {
        CoreStats::from_words(std::array::from_fn(|i| (i as u64 + 1) * 0x0101_0101_0101))
    }

    #[test]
    fn offsets_match_the_documented_layout() {
        let offsets = [
            field::SEQ,
            field::HEARTBEAT_NS,
            field::PUBLISHES,
            field::RX_PACKETS,
            field::TX_PACKETS,
            field::DROPS,
            field::CONNECTIONS,
            field::BATCHES,
            field::TURNS,
            field::IDLE_TURNS,
            field::FULL_POLLS,
            field::EVENTS,
            field::BATCH_BOUND,
            field::AVG_BATCH_MILLI,
            field::AVG_QUEUE_MILLI,
            field::AVG_IDLE_PPM,
            field::AVG_FULL_PPM,
            field::AVG_LOOP_NS,
        ];
        assert_eq!(offsets.len(), FIELDS);
        for (i, off) in offsets.into_iter().enumerate() {
            assert_eq!(off, i * 8, "field {i}");
        }
        assert_eq!(MAGIC.to_le_bytes(), *b"IXSTATS\0");
        assert_eq!(page_len(2), 64 + 512);
    }

    #[test]
    fn a_publication_round_trips_through_a_second_mapping_byte_for_byte() {
        let page = StatsPage::create("ix-stats-test", 2).unwrap();
        let dup = page.fd().try_clone_to_owned().unwrap();
        let reader = StatsPage::open(dup, 2, false).unwrap();
        assert_eq!(reader.read(1).unwrap(), CoreStats::default());
        let stats = sample();
        page.writer(1).unwrap().publish(&stats);
        assert_eq!(reader.read(1).unwrap(), stats);
        assert_eq!(reader.read(0).unwrap(), CoreStats::default());
        // The bytes are where the table says, little-endian.
        let mut raw = [0u8; 8];
        page.mem
            .read_at(HEADER_LEN + RECORD_LEN + field::RX_PACKETS, &mut raw);
        assert_eq!(u64::from_le_bytes(raw), stats.rx_packets);
        page.mem
            .read_at(HEADER_LEN + RECORD_LEN + field::SEQ, &mut raw);
        assert_eq!(u64::from_le_bytes(raw), 2, "one publication: seq 0 → 1 → 2");
        page.mem.read_at(header::INTERVAL_NS, &mut raw);
        assert_eq!(u64::from_le_bytes(raw), 10_000_000);
    }

    #[test]
    fn a_record_left_mid_update_is_unstable_not_waited_for() {
        let page = StatsPage::create("ix-stats-test", 1).unwrap();
        page.writer(0).unwrap().publish(&sample());
        page.record(0).unwrap()[0].store(7, Ordering::Relaxed);
        assert!(matches!(
            page.read(0),
            Err(StatsError::Unstable { core: 0 })
        ));
        // The next publication repairs it.
        page.writer(0).unwrap().publish(&sample());
        assert_eq!(page.read(0).unwrap(), sample());
    }

    #[test]
    fn pages_that_are_not_ours_are_refused() {
        // Not sealed: an ordinary memfd of the right size.
        let plain = SharedMem::create("ix-stats-test", page_len(1), false).unwrap();
        let err = StatsPage::open(plain.fd().try_clone_to_owned().unwrap(), 1, false).unwrap_err();
        assert!(matches!(err, StatsError::NotSealed { .. }), "{err}");
        // Not a memfd at all.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let err = StatsPage::open(OwnedFd::from(file), 1, false).unwrap_err();
        assert!(matches!(err, StatsError::Io { .. }), "{err}");
        // Too small for the cores expected (one 4 KiB page holds 15).
        let page = StatsPage::create("ix-stats-test", 1).unwrap();
        let err = StatsPage::open(page.fd().try_clone_to_owned().unwrap(), 20, false).unwrap_err();
        assert!(
            matches!(err, StatsError::TooSmall { cores: 20, .. }),
            "{err}"
        );
        // A page with room for more cores than mapped is fine.
        let roomy = StatsPage::create("ix-stats-test", 4).unwrap();
        let first = StatsPage::open(roomy.fd().try_clone_to_owned().unwrap(), 2, false).unwrap();
        assert_eq!(first.cores(), 2);
        // Large enough, but made for fewer cores.
        let err = StatsPage::open(page.fd().try_clone_to_owned().unwrap(), 3, false).unwrap_err();
        assert!(
            matches!(
                err,
                StatsError::Header {
                    what: "cores",
                    got: 1,
                    expected: 3
                }
            ),
            "{err}"
        );
        // A scribbled header.
        page.word(header::VERSION).store(9, Ordering::Relaxed);
        let err = StatsPage::open(page.fd().try_clone_to_owned().unwrap(), 1, false).unwrap_err();
        assert!(
            matches!(
                err,
                StatsError::Header {
                    what: "version",
                    got: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            page.read(1),
            Err(StatsError::NoCore { core: 1, cores: 1 })
        ));
        assert!(matches!(
            StatsPage::create("x", 0),
            Err(StatsError::Cores(0))
        ));
    }

    #[test]
    fn the_size_of_a_page_cannot_change() {
        let page = StatsPage::create("ix-stats-test", 1).unwrap();
        // SAFETY: ftruncate takes no pointer; the fd is open.
        let rc = unsafe { libc::ftruncate(page.fd().as_raw_fd(), 0) };
        assert_eq!(rc, -1, "a sealed memfd refuses to shrink");
        let reader = StatsPage::open(page.fd().try_clone_to_owned().unwrap(), 1, false).unwrap();
        assert!(matches!(reader.writer(0), Err(StatsError::ReadOnly)));
    }

    #[test]
    fn concurrent_reads_never_see_a_mix_of_two_publications() {
        let page = StatsPage::create("ix-stats-test", 1).unwrap();
        let writer = page.writer(0).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                writer.publish(&CoreStats::from_words([n; FIELDS - 1]));
            }
        });
        let mut seen = 0;
        for _ in 0..20_000 {
            if let Ok(s) = page.read(0) {
                let words = s.to_words();
                assert!(words.iter().all(|&w| w == words[0]), "torn: {words:?}");
                seen += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert!(seen > 0);
    }

    #[test]
    fn ewma_weighs_a_sample_one_eighth_and_converges_to_it() {
        assert_eq!(ewma(0, 800), 100);
        assert_eq!(ewma(800, 0), 700);
        assert_eq!(ewma(5, 5), 5);
        assert_eq!(ewma(u64::MAX, u64::MAX), u64::MAX);
        let mut avg = 0;
        let mut steps = 0;
        while avg < 950 {
            avg = ewma(avg, 1000);
            steps += 1;
        }
        // 95% of a step after 22 or 23 intervals, as documented.
        assert!((22..=23).contains(&steps), "{steps}");
        for _ in 0..200 {
            avg = ewma(avg, 1000);
        }
        assert_eq!(avg, 1000);
    }

    #[test]
    fn averages_start_at_the_first_sample_then_move_an_eighth() {
        let mut a = Averages::default();
        let busy = Interval {
            elapsed_ns: 10_000_000,
            turns: 1000,
            rx_packets: 16_000,
            batches: 500,
            idle_turns: 250,
            full_polls: 100,
        };
        a.fold(&busy);
        assert_eq!(
            (
                a.batch_milli,
                a.queue_milli,
                a.idle_ppm,
                a.full_ppm,
                a.loop_ns
            ),
            (32_000, 16_000, 250_000, 100_000, 10_000)
        );
        let idle = Interval {
            elapsed_ns: 10_000_000,
            turns: 100_000,
            idle_turns: 100_000,
            ..Interval::default()
        };
        a.fold(&idle);
        assert_eq!(
            (
                a.batch_milli,
                a.queue_milli,
                a.idle_ppm,
                a.full_ppm,
                a.loop_ns
            ),
            (28_000, 14_000, 343_750, 87_500, 8_762)
        );
        let before = a;
        a.fold(&Interval::default());
        assert_eq!(a, before, "an interval without turns changes nothing");
    }

    proptest::proptest! {
        /// Whatever a dataplane writes into its page, a reader gets
        /// numbers or an error, never a panic.
        #[test]
        fn reading_arbitrary_page_contents_never_panics(
            words in proptest::collection::vec(proptest::prelude::any::<u64>(), page_len(3) / 8),
            keep_header in proptest::prelude::any::<bool>(),
        ) {
            let page = StatsPage::create("ix-stats-prop", 3).unwrap();
            let skip = if keep_header { HEADER_LEN / 8 } else { 0 };
            for (i, w) in words.iter().enumerate().skip(skip) {
                page.word(i * 8).store(*w, Ordering::Relaxed);
            }
            let reader = StatsPage::open(page.fd().try_clone_to_owned().unwrap(), 3, false);
            if let Ok(reader) = reader {
                for core in 0..4 {
                    let _ = reader.read(core);
                }
            }
            for core in 0..3 {
                if let Ok(s) = page.read(core) {
                    let _ = s.mean_batch();
                }
            }
        }
    }

    #[test]
    fn a_local_record_reads_back_what_was_published() {
        let record = LocalRecord::default();
        assert_eq!(record.read(), CoreStats::default());
        record.publish(&sample());
        assert_eq!(record.read(), sample());
        assert_eq!(LocalRecord::from(&sample()).read(), sample());
        assert_eq!(
            sample().mean_batch(),
            sample().rx_packets as f64 / sample().batches as f64
        );
    }
}
