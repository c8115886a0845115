//! The transport-independent generator: phases, arrivals, request
//! issue, reply matching and the per-point statistics.
//!
//! A transport owns the connections and calls, on one thread:
//! [`Engine::on_connected`] / [`Engine::on_conn_failed`] as connections
//! open or die, [`Engine::on_recv`] with the bytes each one receives (in
//! order), and [`Engine::poll`] as often as it can with the current time
//! and a [`Wire`] through which the engine sends. Time is passed in, so
//! the whole engine runs under a test's clock.
//!
//! Phases: connecting → preload (closed loop, every key SET once, at most
//! [`PRELOAD_DEPTH`] outstanding per connection) → points (warm-up,
//! measured window, drain; the next rate from the [`Planner`]) →
//! finished. Replies are matched in order against each connection's queue
//! of outstanding requests; a GET hit must carry the key asked for and
//! the value length that key was stored with.
//!
//! Issuing and completing requests allocates nothing: outstanding queues
//! and histograms are sized up front (a queue only grows if
//! `max_outstanding` exceeds its initial capacity). Only the edges of a
//! measured window (reading CPU times from procfs) and error paths
//! allocate.

use std::collections::VecDeque;
use std::ops::Range;

use dataplane::time::Instant;
use hdrhistogram::Histogram;

use super::cpu::CpuSample;
use super::proto::{ProtoError, Reply, ReplyParser};
use super::schedule::Poisson;
use super::workload::{mix64, KeyChooser, KeySpace, Rng};
use super::{Latency, LoadParams, PointResult, SendLag};
use super::{LoadError, Planner};

/// Preload SETs outstanding per connection.
pub const PRELOAD_DEPTH: usize = 16;

/// Initial capacity of each connection's outstanding queue.
const QUEUE_CAPACITY: usize = 1024;

/// Sends requests for the engine.
pub trait Wire {
    /// Whether connection `conn` can take another request now (its unsent
    /// backlog is below the transport's bound).
    fn can_send(&self, conn: usize) -> bool;
    /// Queues arena byte ranges on `conn`, in order. `false` if the
    /// connection failed (the engine then treats it as lost).
    fn send(&mut self, conn: usize, parts: &[Range<usize>]) -> bool;
}

/// Why a connection must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The reply stream is malformed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// A reply arrived with no request outstanding.
    #[error("reply without an outstanding request")]
    UnexpectedReply,
    /// A reply of the wrong kind for the request (e.g. STORED to a GET).
    #[error("reply does not match the request it answers")]
    Mismatch,
    /// A GET hit for another key than the one asked for.
    #[error("GET answered with a different key")]
    WrongKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
}

/// Which part of the session a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Preload,
    /// Point `id`; `measured` if scheduled inside its window.
    Point {
        id: u32,
        measured: bool,
    },
    /// Already accounted for (unanswered at a drain's end).
    Stale,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    scheduled: Instant,
    key: u32,
    op: Op,
    tag: Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Up,
    Down,
}

#[derive(Debug)]
struct Conn {
    state: ConnState,
    queue: VecDeque<Outstanding>,
    parser: ReplyParser,
    /// Length of a VALUE seen for the GET at the front, until its END.
    value: Option<u32>,
    preload_outstanding: usize,
}

/// Counters of the point being measured.
#[derive(Debug, Default)]
struct Counts {
    scheduled: u64,
    completed_in_window: u64,
    gets: u64,
    sets: u64,
    hits: u64,
    misses: u64,
    errors: u64,
    unanswered: u64,
    dropped: u64,
    /// Window requests issued and not yet answered or lost.
    outstanding: u64,
}

/// The point's counters and histograms (allocated once, reset per point).
#[derive(Debug)]
struct Acc {
    n: Counts,
    latency: Histogram<u64>,
    lag: Histogram<u64>,
}

impl Acc {
    fn new() -> Acc {
        let hist = || {
            Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("constant bounds 1 ns..60 s with 3 digits are valid")
        };
        Acc {
            n: Counts::default(),
            latency: hist(),
            lag: hist(),
        }
    }

    fn reset(&mut self) {
        self.n = Counts::default();
        self.latency.reset();
        self.lag.reset();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Warmup,
    Measure,
    Drain,
}

#[derive(Debug)]
struct PointRun {
    id: u32,
    rate: f64,
    arrivals: Poisson,
    measure_from: Instant,
    measure_to: Instant,
    drain_until: Instant,
    stage: Stage,
    cpu_start: Option<CpuSample>,
    cpu_end: Option<CpuSample>,
}

#[derive(Debug)]
enum Phase {
    Connecting { deadline: Instant },
    Preload { next_key: u32, deadline: Instant },
    Point(PointRun),
    Finished,
}

/// What a session produced.
#[derive(Debug)]
pub struct Outcome {
    /// The points measured, in order.
    pub points: Vec<PointResult>,
    /// Keys the preload stored.
    pub preloaded: u64,
    /// Preload SETs that failed.
    pub preload_errors: u64,
    /// Connections that failed (at connect or later).
    pub failed_conns: usize,
    /// Why the session ended early, if it did.
    pub error: Option<LoadError>,
}

/// The generator.
pub struct Engine {
    params: LoadParams,
    transport: &'static str,
    server: std::net::SocketAddrV4,
    server_pid: Option<u32>,
    keys: KeySpace,
    chooser: KeyChooser,
    get_ratio: f64,
    rng: Rng,
    conns: Vec<Conn>,
    next_conn: usize,
    phase: Phase,
    planner: Box<dyn Planner>,
    acc: Acc,
    points: Vec<PointResult>,
    preloaded: u64,
    preload_errors: u64,
    failed_conns: usize,
    last_failure: String,
    error: Option<LoadError>,
}

impl Engine {
    /// An engine for `connections` connections that are about to open.
    pub fn new(
        params: &LoadParams,
        transport: &'static str,
        server: std::net::SocketAddrV4,
        server_pid: Option<u32>,
        planner: Box<dyn Planner>,
        now: Instant,
    ) -> Result<Engine, LoadError> {
        params.validate()?;
        let keys = KeySpace::build(&params.workload)?;
        let chooser = KeyChooser::new(keys.len(), params.workload.popularity);
        let conns = (0..params.connections)
            .map(|_| Conn {
                state: ConnState::Connecting,
                queue: VecDeque::with_capacity(QUEUE_CAPACITY.min(params.max_outstanding)),
                parser: ReplyParser::new(),
                value: None,
                preload_outstanding: 0,
            })
            .collect();
        Ok(Engine {
            transport,
            server,
            server_pid,
            chooser,
            get_ratio: params.workload.kind.get_ratio(),
            rng: Rng::new(mix64(params.workload.seed ^ 0x5eed)),
            conns,
            next_conn: 0,
            phase: Phase::Connecting {
                deadline: now + params.connect_timeout,
            },
            planner,
            acc: Acc::new(),
            points: Vec::new(),
            preloaded: 0,
            preload_errors: 0,
            failed_conns: 0,
            last_failure: String::new(),
            error: None,
            keys,
            params: params.clone(),
        })
    }

    /// The arena the [`Wire`]'s byte ranges point into.
    pub fn arena(&self) -> &std::rc::Rc<[u8]> {
        self.keys.arena()
    }

    /// Whether the session is over (the transport closes its connections).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Whether connection `conn` is still in use.
    pub fn is_up(&self, conn: usize) -> bool {
        self.conns
            .get(conn)
            .is_some_and(|c| c.state == ConnState::Up)
    }

    /// The session's result; call once finished.
    pub fn take_outcome(&mut self) -> Outcome {
        Outcome {
            points: std::mem::take(&mut self.points),
            preloaded: self.preloaded,
            preload_errors: self.preload_errors,
            failed_conns: self.failed_conns,
            error: self.error.take(),
        }
    }

    /// Connection `conn` is established.
    pub fn on_connected(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            if c.state == ConnState::Connecting {
                c.state = ConnState::Up;
            }
        }
    }

    /// Connection `conn` failed or closed: its outstanding requests are
    /// lost (counted as errors).
    pub fn on_conn_failed(&mut self, conn: usize, why: &str) {
        let current = self.current_point();
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state == ConnState::Down {
            return;
        }
        c.state = ConnState::Down;
        self.failed_conns += 1;
        self.last_failure = why.to_owned();
        log::debug!("connection {conn} lost: {why}");
        for req in c.queue.drain(..) {
            match req.tag {
                Tag::Preload => self.preload_errors += 1,
                Tag::Point { id, measured: true } if Some(id) == current => {
                    self.acc.n.errors += 1;
                    self.acc.n.outstanding -= 1;
                }
                _ => {}
            }
        }
        c.preload_outstanding = 0;
        if self.conns.iter().all(|c| c.state == ConnState::Down) {
            self.fail(LoadError::AllConnectionsFailed {
                server: self.server,
                connections: self.conns.len(),
                reason: self.last_failure.clone(),
            });
        }
    }

    fn current_point(&self) -> Option<u32> {
        match &self.phase {
            Phase::Point(p) => Some(p.id),
            _ => None,
        }
    }

    fn fail(&mut self, e: LoadError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.phase = Phase::Finished;
    }

    /// Bytes received on `conn` at `now`. On `Err` the engine has given
    /// the connection up; the transport should close it.
    pub fn on_recv(&mut self, conn: usize, data: &[u8], now: Instant) -> Result<(), ConnError> {
        let Some(c) = self.conns.get_mut(conn) else {
            return Ok(());
        };
        if c.state != ConnState::Up {
            return Ok(());
        }
        let (window, current) = match &self.phase {
            Phase::Point(p) => ((p.measure_from, p.measure_to), Some(p.id)),
            _ => ((Instant::ZERO, Instant::ZERO), None),
        };
        let mut done = Done {
            keys: &self.keys,
            acc: &mut self.acc,
            preloaded: &mut self.preloaded,
            preload_errors: &mut self.preload_errors,
            window,
            current,
            now,
        };
        let Conn {
            queue,
            parser,
            value,
            preload_outstanding,
            ..
        } = c;
        let result = parser.feed(data, |reply| {
            done.reply(reply, queue, value, preload_outstanding)
        });
        if let Err(e) = result {
            self.on_conn_failed(conn, &e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Advances the session to `now`: phase changes, due requests.
    pub fn poll<W: Wire>(&mut self, now: Instant, wire: &mut W) {
        match &mut self.phase {
            Phase::Finished => {}
            Phase::Connecting { deadline } => {
                let deadline = *deadline;
                let pending = self.conns.iter().any(|c| c.state == ConnState::Connecting);
                if pending && now < deadline {
                    return;
                }
                for i in 0..self.conns.len() {
                    if self.conns[i].state == ConnState::Connecting {
                        self.on_conn_failed(i, "connect timed out");
                    }
                }
                if self.is_finished() {
                    return;
                }
                if self.params.preload {
                    self.phase = Phase::Preload {
                        next_key: 0,
                        deadline: now + self.params.preload_timeout,
                    };
                } else {
                    self.next_point(now);
                }
            }
            Phase::Preload { next_key, deadline } => {
                let deadline = *deadline;
                let mut key = *next_key;
                self.preload(&mut key, wire);
                let Phase::Preload { next_key, .. } = &mut self.phase else {
                    return; // every connection failed
                };
                *next_key = key;
                let outstanding = self.conns.iter().any(|c| c.preload_outstanding > 0);
                if key >= self.keys.len() && !outstanding {
                    if self.preload_errors > 0 {
                        log::warn!("{} preload SETs failed", self.preload_errors);
                    }
                    self.next_point(now);
                } else if now >= deadline {
                    self.fail(LoadError::PreloadTimeout {
                        keys: self.keys.len(),
                        done: self.preloaded,
                        secs: self.params.preload_timeout.as_secs(),
                    });
                }
            }
            Phase::Point(_) => self.poll_point(now, wire),
        }
    }

    /// Issues preload SETs from `*key` on while connections have room.
    fn preload<W: Wire>(&mut self, key: &mut u32, wire: &mut W) {
        let n = self.conns.len();
        let mut idle_rounds = 0;
        while *key < self.keys.len() && idle_rounds < n {
            let i = self.next_conn;
            self.next_conn = (self.next_conn + 1) % n;
            let c = &self.conns[i];
            if c.state != ConnState::Up
                || c.preload_outstanding >= PRELOAD_DEPTH
                || !wire.can_send(i)
            {
                idle_rounds += 1;
                continue;
            }
            idle_rounds = 0;
            let parts = self.keys.set_request(*key);
            if !wire.send(i, &parts) {
                self.on_conn_failed(i, "send failed");
                continue;
            }
            let c = &mut self.conns[i];
            c.queue.push_back(Outstanding {
                scheduled: Instant::ZERO,
                key: *key,
                op: Op::Set,
                tag: Tag::Preload,
            });
            c.preload_outstanding += 1;
            *key += 1;
        }
    }

    /// Starts the next point, or finishes.
    fn next_point(&mut self, now: Instant) {
        let Some(rate) = self.planner.next_rate(&self.points) else {
            self.phase = Phase::Finished;
            return;
        };
        let id = self.points.len() as u32;
        let measure_from = now + self.params.warmup;
        let measure_to = measure_from + self.params.duration;
        self.acc.reset();
        self.phase = Phase::Point(PointRun {
            id,
            rate,
            arrivals: Poisson::new(now, rate, mix64(self.params.workload.seed) ^ u64::from(id)),
            measure_from,
            measure_to,
            drain_until: measure_to + self.params.drain_timeout,
            stage: Stage::Warmup,
            cpu_start: None,
            cpu_end: None,
        });
        self.poll_stage(now);
    }

    /// Moves the point's stage along with time (and samples CPU at the
    /// window's edges).
    fn poll_stage(&mut self, now: Instant) {
        let Phase::Point(p) = &mut self.phase else {
            return;
        };
        if p.stage == Stage::Warmup && now >= p.measure_from {
            p.stage = Stage::Measure;
            p.cpu_start = Some(CpuSample::take(self.server_pid));
        }
        if p.stage == Stage::Measure && now >= p.measure_to {
            p.stage = Stage::Drain;
            p.cpu_end = Some(CpuSample::take(self.server_pid));
        }
    }

    fn poll_point<W: Wire>(&mut self, now: Instant, wire: &mut W) {
        self.poll_stage(now);
        let Phase::Point(p) = &mut self.phase else {
            return;
        };
        let (id, measure_from, measure_to) = (p.id, p.measure_from, p.measure_to);
        loop {
            let Phase::Point(p) = &mut self.phase else {
                return;
            };
            let at = p.arrivals.next_at();
            if at > now || at >= measure_to {
                break;
            }
            p.arrivals.advance();
            let measured = at >= measure_from;
            self.issue(id, at, measured, now, wire);
        }
        let Phase::Point(p) = &self.phase else {
            return;
        };
        if p.stage != Stage::Drain {
            return;
        }
        if self.acc.n.outstanding == 0 || now >= p.drain_until {
            self.finish_point(now);
            self.next_point(now);
        }
    }

    /// Sends one scheduled request.
    fn issue<W: Wire>(&mut self, id: u32, at: Instant, measured: bool, now: Instant, wire: &mut W) {
        let key = self.chooser.choose(&mut self.rng);
        let op = if self.rng.unit() < self.get_ratio {
            Op::Get
        } else {
            Op::Set
        };
        if measured {
            self.acc.n.scheduled += 1;
            let lag = now.saturating_since(at).as_nanos() as u64;
            self.acc.lag.saturating_record(lag.max(1));
        }
        let n = self.conns.len();
        for _ in 0..n {
            let i = self.next_conn;
            self.next_conn = (self.next_conn + 1) % n;
            let c = &self.conns[i];
            if c.state != ConnState::Up
                || c.queue.len() >= self.params.max_outstanding
                || !wire.can_send(i)
            {
                continue;
            }
            let sent = match op {
                Op::Get => wire.send(i, std::slice::from_ref(&self.keys.get_request(key))),
                Op::Set => wire.send(i, &self.keys.set_request(key)),
            };
            if !sent {
                self.on_conn_failed(i, "send failed");
                if measured {
                    self.acc.n.errors += 1;
                }
                return;
            }
            self.conns[i].queue.push_back(Outstanding {
                scheduled: at,
                key,
                op,
                tag: Tag::Point { id, measured },
            });
            if measured {
                self.acc.n.outstanding += 1;
            }
            return;
        }
        if measured {
            self.acc.n.dropped += 1;
        }
    }

    /// Records the current point's result.
    fn finish_point(&mut self, now: Instant) {
        let Phase::Point(p) = &self.phase else {
            return;
        };
        let id = p.id;
        // Requests of the window still unanswered: record the latency
        // they have reached, and ignore their replies from now on.
        for c in &mut self.conns {
            for r in c.queue.iter_mut() {
                if r.tag == (Tag::Point { id, measured: true }) {
                    let waited = now.saturating_since(r.scheduled).as_nanos() as u64;
                    self.acc.latency.saturating_record(waited.max(1));
                    self.acc.n.unanswered += 1;
                    self.acc.n.outstanding -= 1;
                    r.tag = Tag::Stale;
                }
            }
        }
        let p = match &self.phase {
            Phase::Point(p) => p,
            _ => return,
        };
        let (client_cpu, server_cpu) = match (&p.cpu_start, &p.cpu_end) {
            (Some(a), Some(b)) => a.usage_until(b),
            _ => (None, None),
        };
        let secs = self.params.duration.as_secs_f64();
        let a = &self.acc;
        let us = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e3
            }
        };
        let latency = Latency {
            p50: us(&a.latency, 0.5),
            p90: us(&a.latency, 0.9),
            p99: us(&a.latency, 0.99),
            p999: us(&a.latency, 0.999),
            max: a.latency.max() as f64 / 1e3,
            mean: a.latency.mean() / 1e3,
        };
        let send_lag = SendLag {
            p50: us(&a.lag, 0.5),
            p99: us(&a.lag, 0.99),
            max: a.lag.max() as f64 / 1e3,
        };
        let lag_bound_us = self.params.lag_bound.as_secs_f64() * 1e6;
        let generator_lagged = a.n.dropped > 0 || send_lag.p99 > lag_bound_us;
        let achieved_rps = a.n.completed_in_window as f64 / secs;
        let slo_us = self.params.slo.as_secs_f64() * 1e6;
        let meets_slo = latency.p99 <= slo_us
            && achieved_rps >= self.params.min_achieved * p.rate
            && a.n.errors == 0
            && !generator_lagged;
        self.points.push(PointResult {
            kind: "point",
            transport: self.transport,
            workload: self.params.workload.kind.name(),
            connections: self.conns.len(),
            offered_rps: p.rate,
            scheduled_rps: a.n.scheduled as f64 / secs,
            achieved_rps,
            warmup_s: self.params.warmup.as_secs_f64(),
            duration_s: secs,
            requests: a.n.gets + a.n.sets,
            gets: a.n.gets,
            sets: a.n.sets,
            hits: a.n.hits,
            misses: a.n.misses,
            errors: a.n.errors,
            unanswered: a.n.unanswered,
            dropped: a.n.dropped,
            latency_us: latency,
            generator_lagged,
            send_lag_us: send_lag,
            lag_bound_us,
            client_cpu,
            server_cpu,
            slo_us,
            meets_slo,
        });
    }
}

/// Completes requests as their replies are parsed.
struct Done<'a> {
    keys: &'a KeySpace,
    acc: &'a mut Acc,
    preloaded: &'a mut u64,
    preload_errors: &'a mut u64,
    window: (Instant, Instant),
    current: Option<u32>,
    now: Instant,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Hit,
    Miss,
    Stored,
    Failed,
}

impl Done<'_> {
    fn reply(
        &mut self,
        reply: Reply<'_>,
        queue: &mut VecDeque<Outstanding>,
        value: &mut Option<u32>,
        preload_outstanding: &mut usize,
    ) -> Result<(), ConnError> {
        let front = *queue.front().ok_or(ConnError::UnexpectedReply)?;
        let answer = match (reply, front.op) {
            (Reply::Value { key, len, .. }, Op::Get) => {
                if value.is_some() {
                    return Err(ConnError::Mismatch);
                }
                if key != self.keys.key(front.key) {
                    return Err(ConnError::WrongKey);
                }
                *value = Some(len);
                return Ok(());
            }
            (Reply::End, Op::Get) => match value.take() {
                Some(len) if len as usize == self.keys.value_len(front.key) => Answer::Hit,
                Some(_) => Answer::Failed,
                None => Answer::Miss,
            },
            (Reply::Stored, Op::Set) => Answer::Stored,
            (Reply::NotStored | Reply::Exists | Reply::NotFound, Op::Set) => Answer::Failed,
            (Reply::Error(_), _) => {
                *value = None;
                Answer::Failed
            }
            _ => return Err(ConnError::Mismatch),
        };
        queue.pop_front();
        match front.tag {
            Tag::Preload => {
                *preload_outstanding = preload_outstanding.saturating_sub(1);
                if answer == Answer::Stored {
                    *self.preloaded += 1;
                } else {
                    *self.preload_errors += 1;
                }
            }
            Tag::Point { id, measured } if Some(id) == self.current => {
                let (from, to) = self.window;
                if self.now >= from && self.now < to {
                    self.acc.n.completed_in_window += 1;
                }
                if measured {
                    self.acc.n.outstanding -= 1;
                    self.record(front, answer);
                }
            }
            Tag::Point { .. } | Tag::Stale => {}
        }
        Ok(())
    }

    fn record(&mut self, req: Outstanding, answer: Answer) {
        let a = &mut *self.acc;
        match answer {
            Answer::Failed => {
                a.n.errors += 1;
                return;
            }
            Answer::Hit => {
                a.n.gets += 1;
                a.n.hits += 1;
            }
            Answer::Miss => {
                a.n.gets += 1;
                a.n.misses += 1;
            }
            Answer::Stored => a.n.sets += 1,
        }
        let ns = self.now.saturating_since(req.scheduled).as_nanos() as u64;
        a.latency.saturating_record(ns.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Rates, WorkloadKind, WorkloadSpec};
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Duration;

    /// A memcached that answers each request `delay` after it was sent,
    /// in order per connection, unless `mute` (then never).
    struct FakeServer {
        arena: std::rc::Rc<[u8]>,
        delay: Duration,
        mute: bool,
        /// Answer GETs with this key instead of the one asked for.
        wrong_key: bool,
        lens: HashMap<Vec<u8>, usize>,
        pending: VecDeque<(Instant, usize, Vec<u8>)>,
        now: Instant,
        sets: u64,
    }

    impl Wire for FakeServer {
        fn can_send(&self, _conn: usize) -> bool {
            true
        }
        fn send(&mut self, conn: usize, parts: &[Range<usize>]) -> bool {
            let req: Vec<u8> = parts
                .iter()
                .flat_map(|r| self.arena[r.clone()].iter().copied())
                .collect();
            let line_end = req.iter().position(|&b| b == b'\r').unwrap();
            let words: Vec<&[u8]> = req[..line_end].split(|&b| b == b' ').collect();
            let reply = match words.as_slice() {
                [b"get", key] => match self.lens.get(*key) {
                    Some(&n) => {
                        let key: &[u8] = if self.wrong_key { b"nope" } else { key };
                        let mut r = b"VALUE ".to_vec();
                        r.extend_from_slice(key);
                        r.extend_from_slice(format!(" 0 {n}\r\n").as_bytes());
                        r.extend(std::iter::repeat_n(b'v', n));
                        r.extend_from_slice(b"\r\nEND\r\n");
                        r
                    }
                    None => b"END\r\n".to_vec(),
                },
                [b"set", key, _, _, n] => {
                    let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
                    assert_eq!(req.len(), line_end + 2 + n + 2, "whole SET sent");
                    self.lens.insert(key.to_vec(), n);
                    self.sets += 1;
                    b"STORED\r\n".to_vec()
                }
                other => panic!("unexpected request {other:?}"),
            };
            if !self.mute {
                self.pending.push_back((self.now + self.delay, conn, reply));
            }
            true
        }
    }

    fn params(keys: u32) -> LoadParams {
        LoadParams {
            workload: WorkloadSpec {
                keys,
                ..WorkloadSpec::new(WorkloadKind::Etc)
            },
            connections: 4,
            warmup: Duration::from_millis(10),
            duration: Duration::from_millis(100),
            drain_timeout: Duration::from_millis(20),
            ..LoadParams::default()
        }
    }

    /// Runs a session on a simulated clock advancing `step` per poll.
    fn simulate(
        params: &LoadParams,
        rates: Vec<f64>,
        step: Duration,
        tweak: impl FnOnce(&mut FakeServer),
    ) -> (Outcome, FakeServer) {
        let t0 = Instant::from_millis(1_000);
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 11211);
        let mut e = Engine::new(params, "sim", server, None, Box::new(Rates(rates)), t0).unwrap();
        let mut s = FakeServer {
            arena: e.arena().clone(),
            delay: Duration::from_micros(30),
            mute: false,
            wrong_key: false,
            lens: HashMap::new(),
            pending: VecDeque::new(),
            now: t0,
            sets: 0,
        };
        for i in 0..params.connections {
            e.on_connected(i);
        }
        let mut now = t0;
        let mut preload_muted = false;
        let mut want_mute = false;
        tweak(&mut s);
        if s.mute {
            // Mute only after the preload: the preload must finish.
            s.mute = false;
            want_mute = true;
        }
        for _ in 0..10_000_000 {
            if e.is_finished() {
                break;
            }
            s.now = now;
            if want_mute && !preload_muted && matches!(e.phase, Phase::Point(_)) {
                s.mute = true;
                preload_muted = true;
            }
            e.poll(now, &mut s);
            while s.pending.front().is_some_and(|(due, _, _)| *due <= now) {
                let (_, conn, reply) = s.pending.pop_front().unwrap();
                if e.is_up(conn) {
                    let _ = e.on_recv(conn, &reply, now);
                }
            }
            now = now + step;
        }
        assert!(e.is_finished(), "the session ended");
        (e.take_outcome(), s)
    }

    #[test]
    fn preload_sets_every_key_once_then_gets_hit() {
        let p = params(300);
        let (out, server) = simulate(&p, vec![20_000.0], Duration::from_micros(1), |_| {});
        assert!(out.error.is_none());
        assert_eq!((out.preloaded, out.preload_errors), (300, 0));
        assert_eq!(server.lens.len(), 300);
        let pt = &out.points[0];
        assert!(
            pt.gets > 1000 && pt.hits == pt.gets && pt.misses == 0,
            "{pt:?}"
        );
        // The warm-up's SETs reached the server too, uncounted.
        assert!(server.sets > 300 + pt.sets);
        assert_eq!((pt.errors, pt.unanswered, pt.dropped), (0, 0, 0));
        // 25 % SETs in ETC.
        let set_share = pt.sets as f64 / pt.requests as f64;
        assert!((set_share - 0.25).abs() < 0.03, "{set_share}");
    }

    #[test]
    fn latency_is_counted_from_the_scheduled_time_not_the_send() {
        let p = params(100);
        // Polled every microsecond: sends are at most 1 µs late, latency
        // is the server's 30 µs.
        let (fine, _) = simulate(&p, vec![20_000.0], Duration::from_micros(1), |_| {});
        let f = &fine.points[0];
        assert!((f.latency_us.p50 - 30.0).abs() <= 1.5, "{f:?}");
        assert!(f.send_lag_us.max <= 1.1);
        assert!(!f.generator_lagged && f.meets_slo);
        assert!((f.achieved_rps - 20_000.0).abs() / 20_000.0 < 0.1);
        // Polled every 200 µs: a request waits up to 200 µs to be sent
        // (100 µs on average) and that wait is in its latency.
        let (coarse, _) = simulate(&p, vec![20_000.0], Duration::from_micros(200), |_| {});
        let c = &coarse.points[0];
        assert!(c.latency_us.p50 > 100.0, "{c:?}");
        assert!(c.latency_us.max >= 200.0);
        assert!(c.send_lag_us.p99 > 150.0);
        assert!(c.generator_lagged, "p99 lag above the 100 µs bound");
        assert!(!c.meets_slo);
    }

    #[test]
    fn unanswered_requests_are_counted_with_the_time_they_waited() {
        let p = params(50);
        let (out, _) = simulate(&p, vec![10_000.0], Duration::from_micros(5), |s| {
            s.mute = true
        });
        let pt = &out.points[0];
        assert!(pt.unanswered > 800, "{pt:?}");
        assert_eq!(pt.requests, 0);
        assert_eq!(pt.achieved_rps, 0.0);
        // Waited at least the drain (20 ms) and at most window + drain.
        assert!(pt.latency_us.p50 >= 20_000.0 && pt.latency_us.max <= 121_000.0);
        assert!(!pt.meets_slo);
    }

    #[test]
    fn several_points_run_back_to_back_at_their_rates() {
        let p = params(100);
        let (out, _) = simulate(
            &p,
            vec![5_000.0, 40_000.0],
            Duration::from_micros(1),
            |_| {},
        );
        let rates: Vec<f64> = out.points.iter().map(|p| p.offered_rps).collect();
        assert_eq!(rates, [5_000.0, 40_000.0]);
        for pt in &out.points {
            let rel = (pt.scheduled_rps - pt.offered_rps).abs() / pt.offered_rps;
            assert!(rel < 0.15, "{pt:?}");
            assert!((pt.achieved_rps - pt.offered_rps).abs() / pt.offered_rps < 0.15);
        }
    }

    #[test]
    fn a_get_answered_with_another_key_drops_the_connection() {
        let p = params(20);
        let (out, _) = simulate(&p, vec![5_000.0], Duration::from_micros(2), |s| {
            s.wrong_key = true
        });
        assert!(matches!(
            out.error,
            Some(LoadError::AllConnectionsFailed { connections: 4, .. })
        ));
        assert_eq!(out.failed_conns, 4);
    }

    #[test]
    fn a_full_transport_drops_requests_and_flags_the_generator() {
        struct Full;
        impl Wire for Full {
            fn can_send(&self, _: usize) -> bool {
                false
            }
            fn send(&mut self, _: usize, _: &[Range<usize>]) -> bool {
                unreachable!("can_send said no")
            }
        }
        let mut p = params(10);
        p.preload = false;
        let t0 = Instant::from_millis(5);
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let mut e =
            Engine::new(&p, "sim", server, None, Box::new(Rates(vec![10_000.0])), t0).unwrap();
        for i in 0..4 {
            e.on_connected(i);
        }
        let mut now = t0;
        while !e.is_finished() {
            e.poll(now, &mut Full);
            now = now + Duration::from_micros(10);
        }
        let out = e.take_outcome();
        let pt = &out.points[0];
        assert!(
            pt.dropped > 800 && pt.generator_lagged && !pt.meets_slo,
            "{pt:?}"
        );
    }
}
