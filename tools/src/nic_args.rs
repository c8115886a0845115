//! Where an application program's dataplane gets its resources: a memif
//! wire of its own (standalone), or ixcpd (registered). The command-line
//! flags and the start-up logic shared by `ix-echo`, `ixkvs` and the test
//! peers.
//!
//! ```text
//! PROGRAM --memif /tmp/wire.sock --ip 10.0.0.1 [--cpu 0] [--queues 2] …
//!                                                              standalone
//! PROGRAM --dpdk-vdev net_memif0,role=server,socket=/tmp/m.sock \
//!         --ip 10.0.0.1 [--cpu 0] …          standalone, DPDK (feature dpdk)
//! ixctl launch --name N --cores 1 --port wire0 -- PROGRAM …   registered
//! ```
//!
//! Once the port is open the program says so on stderr (`PROGRAM: port
//! open, …`): a peer that must not connect earlier (DPDK's memif client
//! tries once) can wait for it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use libix::{App, Config, Dataplane, IxError, Registered};

/// Flags choosing the dataplane's resources (flatten into a clap command).
#[derive(Debug, Clone, clap::Args)]
pub struct NicArgs {
    /// memif socket path (the server end creates it, the client end
    /// connects); without it, register with ixcpd instead.
    #[arg(long, requires = "ip", group = "wire")]
    pub memif: Option<PathBuf>,
    /// A DPDK virtual device to run on, as DPDK device arguments
    /// (`net_memif0,role=server,socket=/tmp/m.sock`): DPDK starts with it,
    /// without hugepages or PCI, instead of the native memif.
    #[cfg(feature = "dpdk")]
    #[arg(long, value_name = "DEVARGS", requires = "ip", group = "wire")]
    pub dpdk_vdev: Option<String>,
    /// Our IPv4 address on the wire (with --memif or --dpdk-vdev).
    #[arg(long, requires = "wire")]
    pub ip: Option<Ipv4Addr>,
    /// CPU to pin the elastic thread to (with --memif or --dpdk-vdev).
    #[arg(long, requires = "wire")]
    pub cpu: Option<usize>,
    /// Queues to open the memif wire with (with --memif): both ends must
    /// agree, so give the peer's — an ixcpd port's `queues` when the peer
    /// was launched by ixcpd (its cores may then grow up to that).
    #[arg(long, requires = "memif", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub queues: u16,
    /// Register with ixcpd under this name [default: $IX_DATAPLANE].
    #[arg(long, value_name = "NAME", conflicts_with = "wire")]
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
    #[cfg(feature = "dpdk")]
    if let (Some(devargs), Some(ip)) = (&nic.dpdk_vdev, nic.ip) {
        use dataplane::nic::dpdk::{EalConfig, PortConfig};
        let name = devargs.split(',').next().unwrap_or(devargs);
        let eal = EalConfig {
            lcores: nic.cpu.unwrap_or(0).to_string(),
            // No shared runtime files: processes may share the prefix.
            ..EalConfig::virtual_devices(program)
        };
        let mut port = PortConfig::new(name, 1);
        port.attach = Some(devargs.clone());
        let cfg = Config::dpdk(eal, port, ip);
        return standalone(program, cfg, &nic, tune, factory);
    }
    match (&nic.memif, nic.ip) {
        (Some(memif), Some(ip)) => {
            let cfg = match end {
                WireEnd::Master => Config::memif_master(memif, ip),
                WireEnd::Slave => Config::memif_slave(memif, ip),
            };
            standalone(program, cfg, &nic, tune, factory)
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
            port_open(program, &dp);
            Ok(dp)
        }
    }
}

/// Starts a standalone dataplane on one core (`--cpu`, else unpinned).
fn standalone<A, F>(
    program: &str,
    mut cfg: Config,
    nic: &NicArgs,
    tune: impl FnOnce(&mut Config),
    factory: F,
) -> Result<Dataplane, IxError>
where
    A: App,
    F: Fn(u16) -> A + Send + Sync + 'static,
{
    cfg.cores = vec![nic.cpu];
    cfg.max_cores = Some(usize::from(nic.queues));
    if let Some(b) = nic.batch {
        cfg.batch = b;
    }
    tune(&mut cfg);
    let dp = Dataplane::start(cfg, factory)?;
    port_open(program, &dp);
    Ok(dp)
}

/// Says on stderr that the port is open (a DPDK port started): peers may
/// connect.
fn port_open(program: &str, dp: &Dataplane) {
    let n = dp.cores();
    let noun = if n == 1 { "core" } else { "cores" };
    eprintln!("{program}: port open, {n} {noun} starting");
}
