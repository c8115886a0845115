//! Benchmarks that compare our dataplane with the Linux kernel.
//!
//! Each benchmark runs the same application logic on every *system* (`ix`,
//! `linux`, later `ix_kvm`, `ix_dpdk`) and produces one
//! [`report::EchoResult`] per system; [`report::Report`] prints them side by
//! side with the ratio to Linux. The echo benchmark is a closed loop: every
//! connection has exactly one request of `message_size` bytes in flight,
//! waits for the whole echo, verifies it byte for byte and records the round
//! trip in an HdrHistogram.

pub mod ix_echo;
pub mod kvs;
pub mod linux_echo;
pub mod report;

use std::time::Duration;

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
    /// the default batch bound, server on core 0 and client on core 1.
    fn default() -> Self {
        EchoParams {
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            connections: 16,
            message_size: 64,
            batch: dataplane::elastic::DEFAULT_BATCH,
            server_core: 0,
            client_core: 1,
        }
    }
}
