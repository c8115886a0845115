//! Operator and benchmark tools for the IX dataplane.
//!
//! - [`cli`]: `ixctl`'s command line, parsed and validated into plain values.
//! - [`bench`](mod@bench): benchmarks that run the same application logic on our
//!   dataplane and on the Linux kernel and report both side by side.
//! - [`commands`]: runs a parsed command and writes its report.
//! - [`load`]: `ixload`, the open-loop memcached load generator (ETC/USR
//!   workloads, Poisson arrivals, SLO search) over libix or Linux sockets.
//! - [`sys`]: the few Linux system calls `std` lacks (epoll, CPU affinity,
//!   open-file limit); the only module with `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod commands;
pub mod echo;
pub mod load;
#[allow(unsafe_code)]
pub mod sys;
