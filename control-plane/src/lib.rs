//! ixcpd, the IX control plane (crate docs written below).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod host;
pub mod resources;
#[allow(unsafe_code)]
pub mod sys;
pub mod units;
