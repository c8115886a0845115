//! The IX dataplane: packet buffers in shared memory, NIC queue pairs, a
//! TCP/IP stack, and the run-to-completion elastic thread that ties them to
//! an application's event handlers.
//!
//! See `docs/ARCHITECTURE.md` at the repository root for the data path.

pub mod buf;
pub mod elastic;
pub mod mem;
pub mod migrate;
pub mod net;
pub mod nic;
pub mod rss;
pub mod stats;
pub mod tcp;
pub mod time;
pub mod timer;
pub mod txbuf;
pub mod wire;
