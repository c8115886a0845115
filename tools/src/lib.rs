//! Operator and benchmark tools for the IX dataplane.
//!
//! - [`cli`]: `ixctl`'s command line, parsed and validated into plain values.
//! - [`bench`](mod@bench): benchmarks that run the same application logic on our
//!   dataplane and on the Linux kernel and report both side by side.
//! - [`commands`]: runs a parsed command and writes its report.
//! - [`kvs`]: `ixkvs`, the memcached-compatible key-value server on libix
//!   and on Linux sockets.
//! - [`load`]: `ixload`, the open-loop memcached load generator (ETC/USR
//!   workloads, Poisson arrivals, SLO search) over libix or Linux sockets.
//! - [`nic_args`]: the flags and start-up shared by application programs
//!   (a memif wire of their own, or resources from ixcpd).
//! - [`sys`]: the few Linux system calls `std` lacks (epoll, CPU affinity,
//!   open-file limit); the only module with `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod commands;
pub mod echo;
pub mod kvs;
pub mod load;
pub mod nic_args;
#[allow(unsafe_code)]
pub mod sys;
