//! `ixkvs`: a memcached-compatible key-value server, on the IX dataplane
//! and on Linux sockets, with one shared core so that a benchmark of the
//! two measures the network stack and nothing else.
//!
//! Layers, each its own module:
//! - [`protocol`]: the memcached text protocol, an incremental zero-copy
//!   parser (request pieces of any size, pipelining, bounded memory).
//! - [`item`]: an item's bytes, laid out as the `get` reply that serves it.
//! - [`store`]: the sharded store shared by all cores (LRU eviction under a
//!   memory limit, lazy expiry, cas).
//! - [`clock`]: memcached's notion of time, from a clock read per batch.
//! - [`stats`]: per-worker counters and the `stats` reply.
//! - [`session`]: one connection: feeds received bytes to the parser, runs
//!   the commands on the store, queues zero-copy replies, and applies
//!   backpressure when replies pile up.
//! - [`ix_server`]: the session as a [`libix::App`], one instance per
//!   elastic thread.
//! - [`linux_server`]: the same session over epoll and non-blocking
//!   sockets, one thread per core.
//!
//! [`Kvs`] is what both servers share: the store, the clock, the
//! per-worker counters.
//!
//! # Starting a server
//!
//! ```no_run
//! use ix_tools::kvs::linux_server::{LinuxOptions, LinuxServer};
//! use ix_tools::kvs::store::StoreConfig;
//! use ix_tools::kvs::{ix_server, Kvs};
//!
//! // The baseline: Linux sockets, two threads, any free port.
//! let kvs = Kvs::shared(StoreConfig::default(), 2);
//! let opts = LinuxOptions { listen: "127.0.0.1:0".parse()?, threads: 2, cpus: vec![] };
//! let linux = LinuxServer::start(kvs, &opts)?;
//! println!("linux kvs on {}", linux.local_addr());
//! linux.stop();
//! linux.join()?;
//!
//! // The dataplane: two elastic threads on a memif wire (this end is the
//! // master; the load generator connects as the slave with two cores).
//! let mut cfg = libix::Config::memif_master("/tmp/kvs.sock", "10.0.0.1".parse()?);
//! cfg.cores = vec![Some(0), Some(1)];
//! let kvs = Kvs::shared(StoreConfig::default(), cfg.cores.len());
//! let dp = ix_server::start(cfg, kvs, ix_tools::kvs::DEFAULT_PORT)?;
//! dp.stop();
//! dp.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The `ixkvs` binary wraps both (`--stack ix|linux`) and also runs as a
//! dataplane launched by `ixctl launch`.

use std::sync::Arc;

use libix::Instant;

pub mod clock;
pub mod item;
pub mod ix_server;
pub mod linux_server;
pub mod protocol;
pub mod session;
pub mod stats;
pub mod store;

use clock::{Clock, RelTime};
use stats::CoreStats;
use store::{Store, StoreConfig};

/// The version `version` and `stats` report.
pub const VERSION: &str = concat!("ixkvs-", env!("CARGO_PKG_VERSION"));

/// The default TCP port (memcached's).
pub const DEFAULT_PORT: u16 = 11211;

/// The state every worker of a server shares.
#[derive(Debug)]
pub struct Kvs {
    store: Store,
    clock: Clock,
    workers: Box<[CoreStats]>,
}

impl Kvs {
    /// A server with an empty store and `workers` sets of counters (one per
    /// elastic thread or server thread; at least one).
    pub fn new(cfg: StoreConfig, workers: usize) -> Kvs {
        Kvs {
            store: Store::new(cfg),
            clock: Clock::new(),
            workers: (0..workers.max(1)).map(|_| CoreStats::default()).collect(),
        }
    }

    /// [`Kvs::new`] behind an `Arc`, ready to share between workers.
    pub fn shared(cfg: StoreConfig, workers: usize) -> Arc<Kvs> {
        Arc::new(Kvs::new(cfg, workers))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Every worker's counters.
    pub fn workers(&self) -> &[CoreStats] {
        &self.workers
    }

    /// Worker `i`'s counters (indices wrap around).
    pub fn worker(&self, i: usize) -> &CoreStats {
        &self.workers[i % self.workers.len()]
    }

    /// The relative time at monotonic time `now`.
    #[inline]
    pub fn now(&self, now: Instant) -> RelTime {
        self.clock.rel(now)
    }
}
