//! Benchmarks that compare our dataplane with the Linux kernel.
//!
//! Each benchmark runs the same application logic on every *system* (`ix`,
//! `linux`, `ix_dpdk` with the `dpdk` feature, later `ix_kvm`) and produces one
//! [`report::EchoResult`] per system; [`report::Report`] prints them side by
//! side with the ratio to Linux. The echo benchmark is a closed loop: every
//! connection has exactly one request of `message_size` bytes in flight,
//! waits for the whole echo, verifies it byte for byte and records the round
//! trip in an HdrHistogram.

pub mod embedded;
pub mod ix_echo;
pub mod kvs;
pub mod linux_echo;
pub mod report;

use std::time::Duration;

/// The RX batch bound our echo client and server run with (the
/// dataplane's own default is IX's 64).
///
/// Two run-to-completion loops facing each other over a shared-memory
/// wire in a closed loop form a convoy: with up to 64 frames per turn, a
/// core takes all of the replies that are in, handles them, and only then
/// transmits the next requests, while the other core waits; the two cores
/// take turns instead of working at once. Smaller turns let the peer start
/// on the first replies while the rest are handled. Measured on the 2-core
/// test machine with 16 connections: B = 64 gives 1.2–1.6 M RPC/s, B = 8
/// 2.3–2.7 M RPC/s; at 256 connections B = 64 does slightly better (2.2 M
/// against 1.9 M). `--batch` chooses another bound; the report header
/// prints the one used.
pub const ECHO_BATCH: usize = 8;

/// What one echo benchmark run does; the same for every system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoParams {
    /// How long requests are measured (after the warm-up).
    pub duration: Duration,
    /// How long the connections run before measuring starts; its round trips
    /// are not recorded.
    pub warmup: Duration,
    /// Number of concurrent connections, each with one request in flight.
    pub connections: usize,
    /// Bytes per request; the echo has the same size.
    pub message_size: usize,
    /// Bound of the adaptive RX batch of our client and server.
    pub batch: usize,
    /// CPU the server thread is pinned to.
    pub server_core: usize,
    /// CPU the client thread is pinned to.
    pub client_core: usize,
}

impl Default for EchoParams {
    /// 5 s measured after 1 s of warm-up, 16 connections, 64-byte messages,
    /// [`ECHO_BATCH`], server on core 0 and client on core 1.
    fn default() -> Self {
        EchoParams {
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            connections: 16,
            message_size: 64,
            batch: ECHO_BATCH,
            server_core: 0,
            client_core: 1,
        }
    }
}
