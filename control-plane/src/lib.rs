//! ixcpd, the IX control plane (crate docs written below).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod host;
pub mod proto;
pub mod resources;
pub mod server;
#[allow(unsafe_code)]
pub mod sys;
pub mod units;
