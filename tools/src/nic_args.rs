//! Where an application program's dataplane gets its resources: a memif
//! wire of its own (standalone), or ixcpd (registered). The command-line
//! flags and the start-up logic shared by `ix-echo`, `ixkvs` and the test
//! peers.
//!
//! ```text
//! PROGRAM --memif /tmp/wire.sock --ip 10.0.0.1 [--cpu 0] …   standalone
//! ixctl launch --name N --cores 1 --port wire0 -- PROGRAM …   registered
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;

use libix::{App, Config, Dataplane, IxError, Registered};

/// Flags choosing the dataplane's resources (flatten into a clap command).
#[derive(Debug, Clone, clap::Args)]
pub struct NicArgs {
    /// memif socket path (the server end creates it, the client end
    /// connects); without it, register with ixcpd instead.
    #[arg(long, requires = "ip")]
    pub memif: Option<PathBuf>,
    /// Our IPv4 address on the wire (with --memif).
    #[arg(long, requires = "memif")]
    pub ip: Option<Ipv4Addr>,
    /// CPU to pin the elastic thread to (with --memif).
    #[arg(long, requires = "memif")]
    pub cpu: Option<usize>,
    /// Register with ixcpd under this name [default: $IX_DATAPLANE].
    #[arg(long, value_name = "NAME", conflicts_with = "memif")]
    pub dataplane: Option<String>,
    /// Bound of the adaptive RX batch (IX's B) [default: libix's].
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
}

/// Which end of a standalone memif wire a program takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEnd {
    /// Creates the socket (servers).
    Master,
    /// Connects to it (clients).
    Slave,
}

/// Starts the dataplane standalone (`--memif`) or registered with ixcpd,
/// letting `tune` adjust the configuration either way. `program` names the
/// caller in the registration message on stderr.
pub fn start_dataplane<A, F>(
    program: &str,
    nic: NicArgs,
    end: WireEnd,
    tune: impl FnOnce(&mut Config),
    factory: F,
) -> Result<Dataplane, IxError>
where
    A: App,
    F: Fn(u16) -> A + Send + Sync + 'static,
{
    match (nic.memif, nic.ip) {
        (Some(memif), Some(ip)) => {
            let mut cfg = match end {
                WireEnd::Master => Config::memif_master(&memif, ip),
                WireEnd::Slave => Config::memif_slave(&memif, ip),
            };
            cfg.cores = vec![nic.cpu];
            if let Some(b) = nic.batch {
                cfg.batch = b;
            }
            tune(&mut cfg);
            Dataplane::start(cfg, factory)
        }
        _ => {
            let mut reg = Registered::register(nic.dataplane.as_deref())?;
            if let Some(b) = nic.batch {
                reg.config.batch = b;
            }
            tune(&mut reg.config);
            eprintln!(
                "{program}: registered as {} on cpus {:?}, {}/{}",
                reg.name(),
                reg.config.cores.iter().flatten().collect::<Vec<_>>(),
                reg.config.ip,
                reg.config.prefix_len
            );
            let dp = Dataplane::start_registered(reg, factory)?;
            // The port is open (a DPDK port started): peers may connect.
            eprintln!(
                "{program}: port open, {} cores starting",
                dp.counters().len()
            );
            Ok(dp)
        }
    }
}
