//! `ixload`: an open-loop memcached load generator.
//!
//! Requests arrive as a Poisson process at a target rate ([`schedule`]),
//! each a GET or SET of a key from a Facebook workload, ETC or USR
//! ([`workload`]), spread round-robin over many connections (default 64)
//! that pipeline freely: a connection may have many requests outstanding
//! and replies come back in order. Latency is measured from each request's
//! *scheduled* time, so a server (or generator) that falls behind shows up
//! as latency and never silently slows the offered load (no coordinated
//! omission). Latencies go into an HdrHistogram (1 ns – 60 s, 3 digits).
//!
//! One *session* connects, preloads every key with a SET (closed loop,
//! before any measurement, so GETs hit), then runs one or more *points*:
//! a warm-up (not recorded, default 1 s), a measured window (default 5 s),
//! then a drain that waits (up to 2 s) for the window's replies. A
//! request scheduled in the window that is still unanswered when the
//! drain ends is recorded with the latency it had reached (a lower bound)
//! and counted as `unanswered`; its reply, if it comes, is ignored.
//! Points follow one another on the same connections; [`sweep`] chooses
//! each next rate from the results so far.
//!
//! The generator watches itself: the lag between a request's scheduled
//! time and the moment it was handed to the transport is recorded too.
//! If its p99 exceeds [`LoadParams::lag_bound`] (default 100 µs), or a
//! request could not be issued at all (every connection's backlog full),
//! the point says `generator_lagged: true` — the generator could not keep
//! its schedule, and the numbers describe the generator, not the server.
//!
//! Two transports run the same engine ([`engine`]):
//! - `ix` ([`ix_client`]): a libix application on one elastic thread, over
//!   a memif wire (this process is the memif slave). It sends from the
//!   [`libix::App::poll`] hook, which runs on every loop turn, so sends
//!   happen at the first turn at or after their scheduled time rather
//!   than at the 16 µs timer tick.
//! - `linux` ([`linux_client`]): non-blocking sockets and epoll on one
//!   thread (optionally pinned), busy-polling `epoll_wait(0)` between
//!   scheduled sends.
//!
//! CPU use ([`cpu`]): the generator thread's own CPU time over wall time in
//! the measured window, and with [`Target::server_pid`] the server
//! process's, so a reader sees whether either was saturated.
//!
//! # JSON shape (`ixload --json`)
//!
//! One object per line. A measured point:
//!
//! ```text
//! {"kind":"point","transport":"linux","workload":"etc","connections":64,
//!  "offered_rps":50000.0,"scheduled_rps":49871.2,"achieved_rps":49870.4,
//!  "warmup_s":1.0,"duration_s":5.0,
//!  "requests":249352,"gets":187011,"sets":62341,"hits":187011,"misses":0,
//!  "errors":0,"unanswered":0,"dropped":0,
//!  "latency_us":{"p50":41.2,"p90":60.1,"p99":95.3,"p999":180.2,"max":410.0,"mean":44.0},
//!  "generator_lagged":false,"send_lag_us":{"p50":0.4,"p99":3.1,"max":55.0},
//!  "lag_bound_us":100.0,"client_cpu":0.99,"server_cpu":0.41,
//!  "slo_us":500.0,"meets_slo":true}
//! ```
//!
//! `requests` counts the window's requests answered (latency samples);
//! `achieved_rps` is replies received during the window per second;
//! `client_cpu`/`server_cpu` are in cores (null when unknown). A sweep
//! prints its points, then one summary line:
//!
//! ```text
//! {"kind":"sweep","transport":"linux","workload":"etc","slo_us":500.0,
//!  "best_rps":182000.0,"best_achieved_rps":181430.5,"points":11}
//! ```
//!
//! (`best_rps` is the highest offered rate that met the SLO, null if none.)
//! Fields are only ever added to this shape, never renamed or removed.

pub mod cpu;
pub mod engine;
pub mod ix_client;
pub mod linux_client;
pub mod proto;
pub mod report;
pub mod schedule;
pub mod sweep;
pub mod workload;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use sweep::{sweep, SweepParams, SweepResult};
pub use workload::{Popularity, WorkloadKind, WorkloadSpec};

/// Errors of a load run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The workload could not be built.
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    /// Parameters out of range.
    #[error("invalid load parameters: {0}")]
    Params(&'static str),
    /// No connection to the server could be opened.
    #[error("cannot connect to {server}: {source} — is the server running?")]
    Connect {
        /// The server.
        server: SocketAddrV4,
        /// Cause.
        source: std::io::Error,
    },
    /// Every connection failed during the run.
    #[error("all {connections} connections to {server} failed ({reason})")]
    AllConnectionsFailed {
        /// The server.
        server: SocketAddrV4,
        /// How many there were.
        connections: usize,
        /// The last failure seen.
        reason: String,
    },
    /// The preload did not finish in time.
    #[error("preloading {keys} keys did not finish within {secs} s ({done} stored): server too slow or not answering")]
    PreloadTimeout {
        /// Keys to preload.
        keys: u32,
        /// Keys stored in time.
        done: u64,
        /// The limit.
        secs: u64,
    },
    /// A socket or epoll call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The libix dataplane failed.
    #[error("ix dataplane: {0}")]
    Dataplane(#[from] libix::IxError),
    /// The generator ended without a result (its thread panicked?).
    #[error("the load generator ended without a result")]
    NoResult,
}

/// How to reach the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A libix dataplane of our own on a memif wire (memif slave).
    Ix {
        /// The memif socket (the server's dataplane is the master).
        memif: PathBuf,
        /// Our IPv4 address on the wire.
        ip: Ipv4Addr,
        /// Queues of the wire: both ends must open it with the same
        /// number (under ixcpd, the ports' queue count).
        queues: u16,
    },
    /// Linux TCP sockets.
    Linux,
}

impl Transport {
    /// `ix` or `linux`.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Ix { .. } => "ix",
            Transport::Linux => "linux",
        }
    }
}

/// The system under load.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// How requests travel.
    pub transport: Transport,
    /// The server's address.
    pub server: SocketAddrV4,
    /// The server's process, to report its CPU use.
    pub server_pid: Option<u32>,
    /// CPU to pin the generator thread to.
    pub cpu: Option<usize>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadParams {
    /// Offered rate of a single point ([`run_point`]), requests/s.
    pub rate: f64,
    /// The workload.
    pub workload: WorkloadSpec,
    /// Connections (default 64).
    pub connections: usize,
    /// Unrecorded time before each measured window (default 1 s).
    pub warmup: Duration,
    /// Measured window (default 5 s).
    pub duration: Duration,
    /// SET every key once before the first point (default on).
    pub preload: bool,
    /// Latency objective on p99 (default 500 µs), for `meets_slo`.
    pub slo: Duration,
    /// Bound on the generator's own send lag (p99) before a point is
    /// marked `generator_lagged` (default 100 µs).
    pub lag_bound: Duration,
    /// Fraction of the offered rate that must be achieved for a point to
    /// meet the SLO (default 0.95).
    pub min_achieved: f64,
    /// Longest wait for a window's replies after it ends (default 2 s).
    pub drain_timeout: Duration,
    /// Longest wait for connections to open (default 10 s).
    pub connect_timeout: Duration,
    /// Longest preload (default 120 s).
    pub preload_timeout: Duration,
    /// Requests outstanding per connection beyond which it takes no more
    /// (default 4096); when every connection is there, requests are
    /// dropped and counted.
    pub max_outstanding: usize,
}

impl Default for LoadParams {
    fn default() -> Self {
        LoadParams {
            rate: 10_000.0,
            workload: WorkloadSpec::new(WorkloadKind::Etc),
            connections: 64,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            preload: true,
            slo: Duration::from_micros(500),
            lag_bound: Duration::from_micros(100),
            min_achieved: 0.95,
            drain_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            preload_timeout: Duration::from_secs(120),
            max_outstanding: 4096,
        }
    }
}

impl LoadParams {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.workload.validate()?;
        if self.connections == 0 || self.connections > 60_000 {
            return Err(LoadError::Params("connections must be 1..=60000"));
        }
        if self.duration.is_zero() {
            return Err(LoadError::Params("the measured duration must be positive"));
        }
        if !(self.min_achieved > 0.0 && self.min_achieved <= 1.0) {
            return Err(LoadError::Params("min_achieved must be in (0, 1]"));
        }
        if self.max_outstanding == 0 {
            return Err(LoadError::Params("max_outstanding must be positive"));
        }
        Ok(())
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The generator's own lateness, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct SendLag {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// One measured point. See the module docs for its JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointResult {
    /// Always `"point"`.
    pub kind: &'static str,
    /// `ix` or `linux`.
    pub transport: &'static str,
    /// `etc` or `usr`.
    pub workload: &'static str,
    /// Connections used.
    pub connections: usize,
    /// Target rate, requests/s.
    pub offered_rps: f64,
    /// Arrivals the Poisson schedule placed in the window, per second.
    pub scheduled_rps: f64,
    /// Replies received during the window, per second.
    pub achieved_rps: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Window requests answered (latency samples, unanswered excluded).
    pub requests: u64,
    /// Of those, GETs.
    pub gets: u64,
    /// Of those, SETs.
    pub sets: u64,
    /// GETs that found their key.
    pub hits: u64,
    /// GETs that did not.
    pub misses: u64,
    /// Error replies, wrong values, requests lost with a connection.
    pub errors: u64,
    /// Window requests still unanswered at the end of the drain.
    pub unanswered: u64,
    /// Window requests the generator could not issue at all.
    pub dropped: u64,
    /// Latency from scheduled send to reply.
    pub latency_us: Latency,
    /// The generator could not keep its schedule.
    pub generator_lagged: bool,
    /// Scheduled-to-issued delay.
    pub send_lag_us: SendLag,
    /// The bound `generator_lagged` compares the lag's p99 with.
    pub lag_bound_us: f64,
    /// Generator thread CPU over the window, cores.
    pub client_cpu: Option<f64>,
    /// Server process CPU over the window, cores.
    pub server_cpu: Option<f64>,
    /// The p99 objective.
    pub slo_us: f64,
    /// p99 ≤ SLO, achieved ≥ `min_achieved` × offered, no errors, and
    /// the generator kept its schedule.
    pub meets_slo: bool,
}

/// Chooses the rate of each next point from the points measured so far.
pub trait Planner: Send {
    /// The next rate, or `None` to end the session.
    fn next_rate(&mut self, done: &[PointResult]) -> Option<f64>;
}

/// A fixed list of rates.
#[derive(Debug, Clone)]
pub struct Rates(pub Vec<f64>);

impl Planner for Rates {
    fn next_rate(&mut self, done: &[PointResult]) -> Option<f64> {
        self.0.get(done.len()).copied()
    }
}

/// Runs one session: connect, preload, then points at the rates
/// `planner` chooses, on the transport of `target`.
pub fn run_session(
    target: &Target,
    params: &LoadParams,
    planner: Box<dyn Planner>,
) -> Result<Vec<PointResult>, LoadError> {
    params.validate()?;
    match &target.transport {
        Transport::Ix { memif, ip, queues } => {
            ix_client::run(target, memif, *ip, *queues, params, planner)
        }
        Transport::Linux => linux_client::run(target, params, planner),
    }
}

/// Measures one point at `params.rate`.
pub fn run_point(target: &Target, params: &LoadParams) -> Result<PointResult, LoadError> {
    run_points(target, params, &[params.rate])?
        .pop()
        .ok_or(LoadError::NoResult)
}

/// Measures a point at each of `rates`, in order, in one session (one
/// preload).
pub fn run_points(
    target: &Target,
    params: &LoadParams,
    rates: &[f64],
) -> Result<Vec<PointResult>, LoadError> {
    run_session(target, params, Box::new(Rates(rates.to_vec())))
}
