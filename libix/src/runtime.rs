//! Starting a dataplane: open the NIC port, spawn one pinned elastic thread
//! per core, each with its own buffer pool, queue pair, stack and
//! application instance; stop and join them.
//!
//! Two ways in:
//! - [`Dataplane::start`] with a [`Config`] the program builds itself (its
//!   own pools, any CPUs): tests, benchmarks, standalone use.
//! - [`Registered::register`] then [`Dataplane::start_registered`]: the
//!   program claims an allocation from ixcpd (`register` on its API
//!   socket, `$IX_SOCKET`, under the name `$IX_DATAPLANE` that `ixctl
//!   launch` sets) and runs with exactly what ixcpd gave it: its CPUs
//!   (one pinned elastic thread each), its port and addresses, one
//!   buffer pool per core mapped from the memfds ixcpd sent, and the
//!   stats page each core publishes its counters and moving averages in
//!   (`dataplane::stats`). The registering connection is the dataplane's
//!   *lifeline*: the [`Dataplane`] keeps it open until
//!   [`Dataplane::join`] returns, and ixcpd takes everything back when it
//!   closes — also when the process dies.
//!
//! # When ixcpd restarts
//!
//! A thread of the runtime (never an elastic thread) holds the lifeline
//! and waits on it. When ixcpd goes away — a crash, an upgrade — the
//! dataplane runs on; the thread reconnects to the same socket with
//! backoff ([`REATTACH_BACKOFF`], doubling to [`REATTACH_BACKOFF_MAX`]) and
//! sends `reattach` with the process's pid and its stats page. The new
//! ixcpd knows the dataplane from its state file, checks the pid (and the
//! process's start time) against its books, and the new connection is
//! the lifeline from then on. Pools and the stats page stay mapped;
//! nothing else changes. If the new ixcpd refuses — it does not know the
//! dataplane (its books were lost), or the dataplane is not this
//! process's — its cores and port may be handed to another dataplane, so
//! the runtime stops the dataplane and [`Dataplane::join`] returns
//! [`IxError::Disowned`] with ixcpd's reason.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use control_plane::client::{default_socket_path, Client, ClientError, DataplaneCommand};
use control_plane::config::{PortKind, DATAPLANE_ENV};
use control_plane::proto::{ErrorCode, PoolFd, Registration};
use dataplane::buf::{Pool, BUF_SIZE};
use dataplane::elastic::{CoreConfig, CoreCounters, ElasticThread, MigrationStats, DEFAULT_BATCH};
use dataplane::mem::SharedMem;
use dataplane::migrate::Shared;
use dataplane::net::iface::IfaceConfig;
use dataplane::nic::af_packet::{AfPacketConfig, AfPacketPort, AfPacketQueue};
#[cfg(feature = "dpdk")]
use dataplane::nic::dpdk::{DpdkPort, DpdkQueue, EalConfig, PortConfig};
use dataplane::nic::fault::{FaultConfig, FaultyQueue};
use dataplane::nic::memif::{MemifConfig, MemifPort, MemifQueue, MemifRole, Steering};
use dataplane::nic::{QueuePair, QueueStats};
use dataplane::rss::{RssConfig, DEFAULT_FLOW_GROUPS};
use dataplane::stats::{CoreWriter, StatsPage};
use dataplane::tcp::{TcpConfig, TcpStats};
use dataplane::wire::ethernet::EthernetAddress;

use crate::cores::{CoreLife, Cores};
use crate::{App, Dispatch};

/// Errors starting or running a dataplane.
#[derive(Debug, thiserror::Error)]
pub enum IxError {
    /// The configuration is inconsistent.
    #[error("invalid dataplane configuration: {0}")]
    Config(&'static str),
    /// The memif port could not be opened.
    #[error("memif port {path}: {source}")]
    Memif {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: dataplane::nic::memif::MemifError,
    },
    /// The af_packet port could not be opened.
    #[error("af_packet port {ifname}: {source}")]
    AfPacket {
        /// Interface name.
        ifname: String,
        /// Cause.
        source: dataplane::nic::af_packet::AfPacketError,
    },
    /// The DPDK port could not be opened or its queue claimed.
    #[cfg(feature = "dpdk")]
    #[error("DPDK: {0}")]
    Dpdk(#[from] dataplane::nic::dpdk::DpdkError),
    /// The fault-injection settings are invalid.
    #[error("fault injection: {0}")]
    Fault(#[from] dataplane::nic::fault::FaultError),
    /// A buffer pool could not be created.
    #[error("core {core}: cannot create its buffer pool: {source}")]
    Pool {
        /// Core index.
        core: u16,
        /// Cause.
        source: dataplane::mem::MemError,
    },
    /// An elastic thread could not be spawned.
    #[error("cannot spawn elastic thread: {0}")]
    Spawn(std::io::Error),
    /// An elastic thread panicked.
    #[error("elastic thread {0} panicked")]
    Panicked(u16),
    /// No dataplane name was given to register under.
    #[error("no dataplane name to register as: pass one, or set {DATAPLANE_ENV} (`ixctl launch` sets it)")]
    NoName,
    /// ixcpd refused the registration or could not be reached.
    #[error("cannot register {name:?} with ixcpd: {source}")]
    Register {
        /// The dataplane name.
        name: String,
        /// Cause.
        source: ClientError,
    },
    /// A buffer pool ixcpd sent is smaller than the buffers it lists.
    #[error("ixcpd's pool for queue {queue} has {bytes} bytes, too few for {buffers} buffers")]
    PoolTooSmall {
        /// The queue.
        queue: u16,
        /// Bytes of the memfd.
        bytes: u64,
        /// Buffers listed.
        buffers: u32,
    },
    /// A buffer pool ixcpd sent could not be mapped.
    #[error("cannot map ixcpd's pool for queue {queue}: {source}")]
    PoolMap {
        /// The queue.
        queue: u16,
        /// Cause.
        source: dataplane::mem::MemError,
    },
    /// ixcpd's registration does not fit this runtime.
    #[error("ixcpd's registration does not fit libix: {0}")]
    Mismatch(&'static str),
    /// The lifeline's thread could not be started.
    #[error("cannot start the thread that holds the lifeline to ixcpd: {0}")]
    Lifeline(std::io::Error),
    /// After an ixcpd restart, the new ixcpd refused to take the
    /// dataplane back, so it stopped (its resources may be someone
    /// else's now).
    #[error("dataplane {name} stopped: ixcpd refused to take it back after a restart: {reason}")]
    Disowned {
        /// The dataplane.
        name: String,
        /// ixcpd's answer.
        reason: String,
    },
    /// Adding or removing cores failed (see [`Dataplane::resize`]).
    #[error("cannot resize the dataplane: {0}")]
    Resize(String),
}

/// Which NIC the dataplane drives.
#[derive(Debug, Clone)]
pub enum NicConfig {
    /// A memif port (one queue pair per core).
    Memif(MemifConfig),
    /// An af_packet socket on a Linux interface (one core).
    AfPacket {
        /// Interface name, e.g. one end of a veth pair.
        ifname: String,
    },
    /// A DPDK port (one queue pair per core): the EAL is initialised with
    /// `eal` (once per process), the port opened with `port`, whose queue
    /// count, RSS table and MAC address the runtime sets from the
    /// configuration's cores and `mac`.
    #[cfg(feature = "dpdk")]
    Dpdk {
        /// EAL arguments.
        eal: EalConfig,
        /// The port.
        port: PortConfig,
    },
}

/// Everything a dataplane needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The NIC port.
    pub nic: NicConfig,
    /// Interface IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of the interface's subnet.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Interface MAC address.
    pub mac: EthernetAddress,
    /// CPUs to pin elastic threads to, one thread per entry; `None` entries
    /// run unpinned.
    pub cores: Vec<Option<usize>>,
    /// Queues the port is opened with, so many cores at most
    /// ([`Dataplane::resize`]); default the number of `cores`. Both ends of
    /// a memif wire between two dataplanes must agree on it.
    pub max_cores: Option<usize>,
    /// The first redirection table: flow group → core, one entry per flow
    /// group; default round-robin over the cores
    /// ([`dataplane::rss::DEFAULT_FLOW_GROUPS`] groups).
    pub reta: Option<Vec<u16>>,
    /// Upper bound of the adaptive RX batch.
    pub batch: usize,
    /// TCP parameters (per core).
    pub tcp: TcpConfig,
    /// Buffers in each core's pool.
    pub pool_buffers: u32,
    /// Back pools with hugepages when the kernel has them reserved.
    pub hugepages: bool,
    /// Neighbours known in advance (skips ARP resolution for them).
    pub static_arp: Vec<(Ipv4Addr, EthernetAddress)>,
    /// Faults to inject on each queue (tests only).
    pub faults: Option<FaultConfig>,
    /// How long a core waits for its port's link to come up.
    pub link_timeout: Duration,
}

impl Config {
    /// A one-core dataplane on a memif port in the master role (it creates
    /// the socket and waits for the peer).
    pub fn memif_master(socket: impl Into<PathBuf>, ip: Ipv4Addr) -> Config {
        Self::memif(socket, MemifRole::Master, ip)
    }

    /// A one-core dataplane on a memif port in the slave role (it connects
    /// to the peer's socket).
    pub fn memif_slave(socket: impl Into<PathBuf>, ip: Ipv4Addr) -> Config {
        Self::memif(socket, MemifRole::Slave, ip)
    }

    fn memif(socket: impl Into<PathBuf>, role: MemifRole, ip: Ipv4Addr) -> Config {
        let nic = NicConfig::Memif(MemifConfig {
            socket_path: socket.into(),
            role,
            id: 0,
            secret: None,
            name: format!("ix-{ip}"),
            queues: 1,
            log2_ring_size: 10,
            buffer_size: 2048,
            steering: Steering::None,
        });
        Self::with_nic(nic, ip)
    }

    /// A one-core dataplane on a DPDK port: `eal` starts DPDK (once per
    /// process), `port` names the device (see [`NicConfig::Dpdk`]).
    #[cfg(feature = "dpdk")]
    pub fn dpdk(eal: EalConfig, port: PortConfig, ip: Ipv4Addr) -> Config {
        Self::with_nic(NicConfig::Dpdk { eal, port }, ip)
    }

    /// A one-core dataplane on an af_packet socket bound to `ifname`.
    pub fn af_packet(ifname: impl Into<String>, ip: Ipv4Addr) -> Config {
        Self::with_nic(
            NicConfig::AfPacket {
                ifname: ifname.into(),
            },
            ip,
        )
    }

    fn with_nic(nic: NicConfig, ip: Ipv4Addr) -> Config {
        let o = ip.octets();
        Config {
            nic,
            ip,
            prefix_len: 24,
            gateway: None,
            // Locally administered unicast, derived from the address.
            mac: EthernetAddress([0x02, 0x49, o[0], o[1], o[2], o[3]]),
            cores: vec![None],
            max_cores: None,
            reta: None,
            batch: DEFAULT_BATCH,
            tcp: TcpConfig {
                // A dataplane's peers are a datacenter hop away (RTTs of
                // tens of µs): a 200 ms floor would turn every tail loss
                // into a 200 ms stall. 10 ms keeps a wide margin over
                // queueing delay while recovering 20× faster.
                rto_min: Duration::from_millis(10),
                ..TcpConfig::default()
            },
            pool_buffers: 16 * 1024,
            hugepages: true,
            static_arp: Vec::new(),
            faults: None,
            link_timeout: Duration::from_secs(30),
        }
    }

    fn validate(&self) -> Result<(), IxError> {
        if self.cores.is_empty() {
            return Err(IxError::Config("at least one core is needed"));
        }
        if self.cores.len() > 64 {
            return Err(IxError::Config("at most 64 cores per dataplane"));
        }
        if self.prefix_len > 32 {
            return Err(IxError::Config("prefix_len must be 0..=32"));
        }
        if self.batch == 0 || self.batch > 1024 {
            return Err(IxError::Config("batch must be 1..=1024"));
        }
        if self.pool_buffers < 64 {
            return Err(IxError::Config("pool_buffers must be at least 64"));
        }
        if matches!(self.nic, NicConfig::AfPacket { .. })
            && (self.cores.len() != 1 || self.max_cores.unwrap_or(1) != 1)
        {
            return Err(IxError::Config(
                "af_packet ports have one queue: use exactly one core",
            ));
        }
        if self
            .max_cores
            .is_some_and(|m| m < self.cores.len() || m > 64)
        {
            return Err(IxError::Config(
                "max_cores must be at least the number of cores, and at most 64",
            ));
        }
        if let Some(reta) = &self.reta {
            if reta.is_empty() || reta.iter().any(|&q| usize::from(q) >= self.cores.len()) {
                return Err(IxError::Config(
                    "every redirection table entry must name one of the cores",
                ));
            }
        }
        Ok(())
    }

    /// Queues the port is opened with.
    fn queues(&self) -> u16 {
        self.max_cores.unwrap_or(self.cores.len()) as u16
    }

    /// The first redirection table, with the default key.
    fn rss(&self) -> RssConfig {
        match &self.reta {
            Some(reta) => RssConfig {
                reta: reta.clone(),
                ..RssConfig::round_robin(1, 1)
            },
            None => RssConfig::round_robin(self.cores.len() as u16, DEFAULT_FLOW_GROUPS),
        }
    }
}

/// A buffer pool ixcpd handed over: its mapped memory and slot count.
/// `Pool` itself is `!Send`, so each elastic thread builds its pool from
/// this on its own thread.
pub(crate) struct PoolMem {
    mem: SharedMem,
    buffers: u32,
}

/// An allocation claimed from ixcpd, ready to start as a dataplane.
///
/// ```no_run
/// # use libix::{App, Conn, Cx, RxBuf};
/// # struct Echo;
/// # impl App for Echo {
/// #     fn recv(&mut self, _cx: &mut Cx, _conn: Conn, _data: RxBuf) {}
/// # }
/// // Under `ixctl launch`, IX_SOCKET and IX_DATAPLANE are set.
/// let mut reg = libix::Registered::register(None)?;
/// reg.config.tcp.max_conns = 4096; // tune the stack, not the resources
/// let dp = libix::Dataplane::start_registered(reg, |_core| Echo)?;
/// dp.join()?;
/// # Ok::<(), libix::IxError>(())
/// ```
pub struct Registered {
    /// The dataplane's configuration built from the registration. The
    /// stack's settings (`tcp`, `batch`, `static_arp`, `link_timeout`) are
    /// the program's to tune; `nic`, the addresses and `cores` are what
    /// ixcpd allocated and must stay as they are.
    pub config: Config,
    name: String,
    pools: Vec<PoolMem>,
    stats: Option<StatsPage>,
    socket: PathBuf,
    lifeline: Client,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("pools", &self.pools.len())
            .finish()
    }
}

impl Registered {
    /// Connects to ixcpd (`$IX_SOCKET`, else `/run/ix/ixcpd.sock`) and
    /// registers as `name`, or as `$IX_DATAPLANE` when `name` is `None`.
    pub fn register(name: Option<&str>) -> Result<Registered, IxError> {
        let name = match name {
            Some(n) => n.to_owned(),
            None => std::env::var(DATAPLANE_ENV)
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or(IxError::NoName)?,
        };
        Self::register_at(&default_socket_path(), &name)
    }

    /// Registers as `name` with the ixcpd listening on `socket`.
    pub fn register_at(socket: &Path, name: &str) -> Result<Registered, IxError> {
        let err = |source| IxError::Register {
            name: name.to_owned(),
            source,
        };
        let mut client = Client::connect(socket).map_err(err)?;
        let (registration, fds) = client.register(name).map_err(err)?;
        let (config, pools, stats) = from_registration(name, registration, fds)?;
        Ok(Registered {
            config,
            name: name.to_owned(),
            pools,
            stats,
            socket: socket.to_owned(),
            lifeline: client,
        })
    }

    /// The name registered under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Checks a registration and builds the dataplane's config, pools and
/// stats page (`None`, with a warning, when ixcpd sent none this runtime
/// can write: the dataplane runs without publishing to ixcpd).
fn from_registration(
    name: &str,
    reg: Registration,
    fds: Vec<OwnedFd>,
) -> Result<(Config, Vec<PoolMem>, Option<StatsPage>), IxError> {
    let cores = reg.allocation.cpus.len();
    if cores == 0 || reg.pools.len() != cores {
        return Err(IxError::Mismatch("one buffer pool per core expected"));
    }
    let queues = u16::try_from(cores).map_err(|_| IxError::Mismatch("too many cores"))?;
    if reg.allocation.reta.is_empty() || reg.allocation.reta.iter().any(|&q| q >= queues) {
        return Err(IxError::Mismatch(
            "the redirection table names queues the dataplane has no core for",
        ));
    }
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut pools = Vec::with_capacity(cores);
    for (i, p) in reg.pools.iter().enumerate() {
        if usize::from(p.queue) != i {
            return Err(IxError::Mismatch("pools are not listed in queue order"));
        }
        let fd = fds
            .get_mut(p.fd as usize)
            .and_then(Option::take)
            .ok_or(IxError::Mismatch(
                "a pool names a missing or reused descriptor",
            ))?;
        pools.push(map_pool(p, fd)?);
    }
    let stats = match &reg.stats {
        None => {
            log::warn!("{name}: ixcpd sent no stats page; the cores will not publish to it");
            None
        }
        Some(s) => {
            let fd = fds
                .get_mut(s.fd as usize)
                .and_then(Option::take)
                .ok_or(IxError::Mismatch(
                    "the stats page names a missing or reused descriptor",
                ))?;
            match StatsPage::open(fd, cores.max(s.cores as usize), true) {
                Ok(page) => Some(page),
                Err(err) => {
                    log::warn!("{name}: cannot use ixcpd's stats page ({err}); the cores will not publish to it");
                    None
                }
            }
        }
    };
    let port = &reg.port;
    let nic = match &port.kind {
        PortKind::Memif { socket, role, .. } => {
            let role = match role {
                control_plane::config::MemifRole::Master => MemifRole::Master,
                control_plane::config::MemifRole::Slave => MemifRole::Slave,
            };
            let mut memif_name = format!("ix-{name}");
            memif_name.truncate(31);
            NicConfig::Memif(MemifConfig {
                socket_path: socket.clone(),
                role,
                id: 0,
                secret: None,
                name: memif_name,
                queues,
                log2_ring_size: 10,
                buffer_size: 2048,
                steering: Steering::None,
            })
        }
        PortKind::AfPacket { interface, .. } => NicConfig::AfPacket {
            ifname: interface.clone(),
        },
        #[cfg(feature = "dpdk")]
        PortKind::Dpdk { device, vdev, .. } => dpdk_nic(name, device, vdev.as_deref(), &reg),
        #[cfg(not(feature = "dpdk"))]
        PortKind::Dpdk { .. } => {
            return Err(IxError::Mismatch(
                "the port is a DPDK device: build the program with libix's `dpdk` feature",
            ))
        }
    };
    let mut config = Config::with_nic(nic, port.ip);
    config.prefix_len = port.prefix;
    config.gateway = port.gateway;
    config.mac = EthernetAddress(port.mac.0);
    config.cores = reg
        .allocation
        .cpus
        .iter()
        .map(|&c| Some(c as usize))
        .collect();
    config.max_cores = Some(usize::from(port.kind.queues()).max(cores));
    config.reta = Some(reg.allocation.reta.clone());
    config.pool_buffers = reg.allocation.buffers_per_core;
    config.hugepages = reg.allocation.huge;
    Ok((config, pools, stats))
}

/// Maps a buffer pool ixcpd sent, after checking it holds the buffers it
/// lists.
fn map_pool(p: &PoolFd, fd: OwnedFd) -> Result<PoolMem, IxError> {
    let needed = u64::from(p.buffers) * BUF_SIZE as u64;
    if p.buffers == 0 || p.buffers == u32::MAX || p.bytes < needed {
        return Err(IxError::PoolTooSmall {
            queue: p.queue,
            bytes: p.bytes,
            buffers: p.buffers,
        });
    }
    let len = usize::try_from(p.bytes).map_err(|_| IxError::Mismatch("pool too large"))?;
    let mem = SharedMem::from_fd(fd, len, true).map_err(|source| IxError::PoolMap {
        queue: p.queue,
        source,
    })?;
    Ok(PoolMem {
        mem,
        buffers: p.buffers,
    })
}

/// The EAL and port of an ixcpd `dpdk` port: the EAL's lcore is the
/// dataplane's first CPU, its runtime files are named after the dataplane;
/// a virtual device runs without hugepages or PCI, a PCI device (bound to
/// vfio-pci) with hugepages, probed alone.
#[cfg(feature = "dpdk")]
fn dpdk_nic(name: &str, device: &str, vdev: Option<&str>, reg: &Registration) -> NicConfig {
    use dataplane::nic::dpdk::{EalDevice, EalMemory};
    let first_cpu = reg.allocation.cpus.first().copied().unwrap_or(0);
    let (memory, devices) = match vdev {
        Some(v) => (
            EalMemory::NoHuge { mb: 512 },
            vec![EalDevice::Vdev(v.into())],
        ),
        None => (
            EalMemory::Hugepages { mb: None },
            vec![EalDevice::Pci(device.into())],
        ),
    };
    let eal = EalConfig {
        lcores: first_cpu.to_string(),
        memory,
        file_prefix: Some(format!("ix-{name}")),
        runtime_files: false,
        pci: vdev.is_none(),
        devices,
        log_level: Some(4),
        extra: Vec::new(),
    };
    NicConfig::Dpdk {
        eal,
        port: PortConfig::new(device, 1),
    }
}

/// The queue pair of one core, whichever backend it is.
enum AnyQueue {
    Memif(MemifQueue),
    AfPacket(AfPacketQueue),
    FaultyMemif(FaultyQueue<MemifQueue>),
    FaultyAfPacket(FaultyQueue<AfPacketQueue>),
    #[cfg(feature = "dpdk")]
    Dpdk(DpdkQueue),
    #[cfg(feature = "dpdk")]
    FaultyDpdk(FaultyQueue<DpdkQueue>),
}

macro_rules! each_queue {
    ($self:ident, $q:ident => $e:expr) => {
        match $self {
            AnyQueue::Memif($q) => $e,
            AnyQueue::AfPacket($q) => $e,
            AnyQueue::FaultyMemif($q) => $e,
            AnyQueue::FaultyAfPacket($q) => $e,
            #[cfg(feature = "dpdk")]
            AnyQueue::Dpdk($q) => $e,
            #[cfg(feature = "dpdk")]
            AnyQueue::FaultyDpdk($q) => $e,
        }
    };
}

impl AnyQueue {
    /// Whether the port's link is up (frames sent now reach a peer).
    fn link_up(&mut self, port: &Port) -> bool {
        match (self, port) {
            (AnyQueue::Memif(q), _) => q.is_up(),
            (AnyQueue::FaultyMemif(q), _) => q.inner_mut().is_up(),
            #[cfg(feature = "dpdk")]
            (AnyQueue::Dpdk(_) | AnyQueue::FaultyDpdk(_), Port::Dpdk(p)) => p.link_up(),
            _ => true,
        }
    }
}

impl QueuePair for AnyQueue {
    #[inline]
    fn rx_burst(&mut self, out: &mut Vec<dataplane::buf::PktBuf>, max: usize) -> usize {
        each_queue!(self, q => q.rx_burst(out, max))
    }
    #[inline]
    fn tx_burst(&mut self, frames: &mut Vec<dataplane::buf::PktBuf>) -> usize {
        each_queue!(self, q => q.tx_burst(frames))
    }
    fn pool(&self) -> &Pool {
        each_queue!(self, q => q.pool())
    }
    fn stats(&self) -> QueueStats {
        each_queue!(self, q => q.stats())
    }
}

/// An opened port, shared by the cores.
enum Port {
    Memif(Arc<MemifPort>),
    AfPacket(String),
    #[cfg(feature = "dpdk")]
    Dpdk(DpdkPort),
}

impl Port {
    /// Whether the port steers incoming flows by the redirection table.
    fn steers(&self) -> bool {
        match self {
            Port::Memif(p) => matches!(p.config().steering, Steering::Rss(_)),
            Port::AfPacket(_) => false,
            #[cfg(feature = "dpdk")]
            Port::Dpdk(p) => p.rss_offloaded(),
        }
    }

    /// Rewrites the redirection table the port steers by (flow group →
    /// queue).
    fn set_table(&self, table: &[u16]) -> Result<(), IxError> {
        match self {
            Port::Memif(p) => p.set_rx_table(table).map_err(|source| IxError::Memif {
                path: p.config().socket_path.clone(),
                source,
            }),
            Port::AfPacket(ifname) => Err(IxError::Resize(format!(
                "af_packet port {ifname} has one queue: its flow groups cannot move"
            ))),
            #[cfg(feature = "dpdk")]
            Port::Dpdk(p) => {
                let moves: Vec<(usize, u16)> = table.iter().copied().enumerate().collect();
                Ok(p.update_flow_groups(&moves)?)
            }
        }
    }
}

/// What one core did, reported when the dataplane stops.
#[derive(Debug, Clone)]
pub struct CoreReport {
    /// Core index.
    pub core: u16,
    /// Frames received.
    pub rx_packets: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Mean adaptive batch size.
    pub mean_batch: f64,
    /// Turns with nothing to do.
    pub idle_loops: u64,
    /// NIC queue counters.
    pub queue: QueueStats,
    /// TCP counters.
    pub tcp: TcpStats,
    /// Flow-group migration counters (connections handed over and taken
    /// over, segments forwarded and held).
    pub migration: MigrationStats,
}

/// What the dataplane did, per core.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// One entry per core.
    pub cores: Vec<CoreReport>,
}

/// First wait before reconnecting to a restarted ixcpd.
pub const REATTACH_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between two attempts to reach a restarted ixcpd.
pub const REATTACH_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long one `reattach` waits for its answer.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The lifeline to ixcpd, held by a thread that restores it when ixcpd
/// restarts (see the module docs). Dropping it ends the thread and
/// closes the lifeline.
struct Lifeline {
    quit: Option<std::io::PipeWriter>,
    thread: Option<JoinHandle<()>>,
    disowned: Arc<Mutex<Option<String>>>,
    name: String,
}

/// What the lifeline's thread works with.
struct Supervisor {
    socket: PathBuf,
    name: String,
    stats: Option<OwnedFd>,
    stop: Arc<AtomicBool>,
    disowned: Arc<Mutex<Option<String>>>,
    /// The cores, for ixcpd's resize commands.
    cores: Arc<Cores>,
}

/// Waits until one of `fds` is readable or `timeout` passes; the index of
/// the first readable one.
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Option<usize> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    match control_plane::sys::poll(&mut pollfds, ms) {
        Ok(n) if n > 0 => pollfds.iter().position(|p| p.revents != 0),
        _ => None,
    }
}

impl Lifeline {
    fn start(reg_lifeline: Client, sup: Supervisor) -> Result<Lifeline, IxError> {
        let disowned = sup.disowned.clone();
        let name = sup.name.clone();
        let (quit_rd, quit_wr) = std::io::pipe().map_err(IxError::Lifeline)?;
        let thread = std::thread::Builder::new()
            .name("ix-lifeline".into())
            .spawn(move || sup.run(reg_lifeline, &quit_rd))
            .map_err(IxError::Lifeline)?;
        Ok(Lifeline {
            quit: Some(quit_wr),
            thread: Some(thread),
            disowned,
            name,
        })
    }

    /// ixcpd's reason, when it refused to take the dataplane back.
    fn disowned(&self) -> Option<IxError> {
        let reason = self
            .disowned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some(IxError::Disowned {
            name: self.name.clone(),
            reason,
        })
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // Closing the pipe wakes the thread, which closes the lifeline.
        drop(self.quit.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Supervisor {
    /// Holds `lifeline` until `quit` turns readable (its writer closed),
    /// carrying out ixcpd's commands that arrive on it; restores it
    /// whenever ixcpd closes it.
    fn run(self, mut lifeline: Client, quit: &std::io::PipeReader) {
        loop {
            if !lifeline.has_command() {
                match wait_readable(&[lifeline.as_fd(), quit.as_fd()], None) {
                    Some(0) => {}
                    // Told to quit (or poll failed): the lifeline closes here.
                    _ => return,
                }
            }
            match lifeline.read_command() {
                Ok(Some((id, command))) => {
                    let result = self.obey(command);
                    if let Err(e) = lifeline.answer_command(id, result) {
                        log::warn!("{}: cannot answer ixcpd's command {id}: {e}", self.name);
                    }
                    continue;
                }
                Ok(None) | Err(ClientError::Closed | ClientError::Io(_)) => {}
                Err(e) => {
                    log::warn!("{}: unreadable command from ixcpd: {e}", self.name);
                    continue;
                }
            }
            log::warn!(
                "{}: ixcpd closed the lifeline (did it restart?); reconnecting to {:?}",
                self.name,
                self.socket
            );
            match self.reattach(quit) {
                Some(restored) => lifeline = restored,
                None => return,
            }
        }
    }

    /// Carries out one command: grows or shrinks the dataplane to ixcpd's
    /// new allocation (its CPUs in order, the pools of added cores, the
    /// redirection table to reach). The answer is the core count reached,
    /// or why not.
    fn obey(&self, command: DataplaneCommand) -> Result<u32, String> {
        let DataplaneCommand::Resize { allocation, pools } = command;
        let before = self.cores.active();
        let mut mapped = Vec::with_capacity(pools.len());
        for (i, (p, fd)) in pools.into_iter().enumerate() {
            if usize::from(p.queue) != before + i {
                return Err(format!(
                    "pool for queue {} where queue {} was due",
                    p.queue,
                    before + i
                ));
            }
            mapped.push(Some(map_pool(&p, fd).map_err(|e| e.to_string())?));
        }
        let cpus: Vec<Option<usize>> = allocation.cpus.iter().map(|&c| Some(c as usize)).collect();
        let result = self
            .cores
            .resize(&cpus, mapped, Some(allocation.reta))
            .map(|n| n as u32)
            .map_err(|e| e.to_string());
        match &result {
            Ok(n) => log::info!(
                "{}: resized by ixcpd from {before} to {n} cores (cpus {:?})",
                self.name,
                allocation.cpus
            ),
            Err(e) => log::warn!("{}: ixcpd's resize failed: {e}", self.name),
        }
        result
    }

    /// Reconnects with backoff until ixcpd takes the dataplane back
    /// (`Some`), refuses it (`None`, the dataplane stopped), or the
    /// runtime quits (`None`).
    fn reattach(&self, quit: &std::io::PipeReader) -> Option<Client> {
        let mut backoff = REATTACH_BACKOFF;
        let mut attempts = 0u32;
        loop {
            if wait_readable(&[quit.as_fd()], Some(backoff)).is_some() {
                return None;
            }
            attempts += 1;
            let attempt = Client::connect_with_timeout(&self.socket, REATTACH_TIMEOUT).and_then(
                |mut client| {
                    let stats = self.stats.as_ref().map(AsFd::as_fd);
                    client
                        .reattach(&self.name, std::process::id(), stats)
                        .map(|reply| (client, reply))
                },
            );
            match attempt {
                Ok((client, reply)) => {
                    log::warn!(
                        "{}: reattached to ixcpd after {attempts} attempts (stats page {})",
                        self.name,
                        if reply.stats { "taken" } else { "refused" }
                    );
                    return Some(client);
                }
                Err(ClientError::Api(err))
                    if !matches!(err.code, ErrorCode::Busy | ErrorCode::Internal) =>
                {
                    log::error!(
                        "{}: ixcpd refused to take the dataplane back ({err}); stopping it, since its cores and port may be given to another",
                        self.name
                    );
                    *self.disowned.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.message);
                    self.stop.store(true, Ordering::Relaxed);
                    return None;
                }
                Err(err) => {
                    log::debug!("{}: reattach attempt {attempts}: {err}", self.name);
                    backoff = (backoff * 2).min(REATTACH_BACKOFF_MAX);
                }
            }
        }
    }
}

/// A running dataplane.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    cores: Arc<Cores>,
    /// The connection to ixcpd, open while the cores run (registered
    /// dataplanes only).
    lifeline: Option<Lifeline>,
}

impl Dataplane {
    /// Opens the port and starts one elastic thread per configured core,
    /// each running its own `factory(core_index)` application.
    pub fn start<A, F>(cfg: Config, factory: F) -> Result<Dataplane, IxError>
    where
        A: App,
        F: Fn(u16) -> A + Send + Sync + 'static,
    {
        let pools = cfg.cores.iter().map(|_| None).collect();
        let stop = Arc::new(AtomicBool::new(false));
        Self::start_with(cfg, pools, None, stop, None, factory)
    }

    /// Starts the dataplane ixcpd allocated (see [`Registered`]): one
    /// elastic thread pinned to each allocated CPU, each with the buffer
    /// pool ixcpd sent for its queue. The registration stays open until
    /// [`Dataplane::join`] returns.
    pub fn start_registered<A, F>(reg: Registered, factory: F) -> Result<Dataplane, IxError>
    where
        A: App,
        F: Fn(u16) -> A + Send + Sync + 'static,
    {
        if reg.config.cores.len() != reg.pools.len() {
            return Err(IxError::Config(
                "the cores of a registered dataplane are ixcpd's: do not change them",
            ));
        }
        let pools = reg.pools.into_iter().map(Some).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stats_fd = match &reg.stats {
            Some(page) => Some(page.fd().try_clone_to_owned().map_err(IxError::Lifeline)?),
            None => None,
        };
        let mut dp = Self::start_with(
            reg.config,
            pools,
            reg.stats.map(Arc::new),
            stop.clone(),
            None,
            factory,
        )?;
        dp.lifeline = Some(Lifeline::start(
            reg.lifeline,
            Supervisor {
                socket: reg.socket,
                name: reg.name,
                stats: stats_fd,
                stop,
                disowned: Arc::default(),
                cores: dp.cores.clone(),
            },
        )?);
        Ok(dp)
    }

    fn start_with<A, F>(
        cfg: Config,
        pools: Vec<Option<PoolMem>>,
        page: Option<Arc<StatsPage>>,
        stop: Arc<AtomicBool>,
        lifeline: Option<Lifeline>,
        factory: F,
    ) -> Result<Dataplane, IxError>
    where
        A: App,
        F: Fn(u16) -> A + Send + Sync + 'static,
    {
        cfg.validate()?;
        let queues = cfg.queues();
        let rss = cfg.rss();
        let port = match &cfg.nic {
            NicConfig::Memif(m) => {
                let mut m = m.clone();
                m.queues = queues;
                if queues > 1 && m.steering == Steering::None {
                    // Both ends are libix dataplanes: steer each frame to
                    // the queue the receiver's redirection table picks, as
                    // a NIC would; each end publishes its own table in the
                    // wire's shared memory, and rewrites it when flow
                    // groups move.
                    m.steering = Steering::Rss(rss.clone());
                }
                let port = MemifPort::open(m.clone()).map_err(|source| IxError::Memif {
                    path: m.socket_path.clone(),
                    source,
                })?;
                Port::Memif(Arc::new(port))
            }
            NicConfig::AfPacket { ifname } => Port::AfPacket(ifname.clone()),
            #[cfg(feature = "dpdk")]
            NicConfig::Dpdk { eal, port } => {
                let eal = dataplane::nic::dpdk::Eal::init(eal)?;
                // One queue pair per possible core, hashed (where the
                // device can) with the table the cores steer by.
                let port = PortConfig {
                    queues,
                    rss: Some(rss.clone()),
                    mac: Some(cfg.mac),
                    ..port.clone()
                };
                Port::Dpdk(DpdkPort::open(eal, &port)?)
            }
        };
        let port = Arc::new(port);
        // Only a port that steers by the table lets flow groups move; on
        // one that does not (a DPDK device without RSS), each core takes
        // what its queue gets, as the peer sent it.
        let steered = queues == 1 || port.steers();
        let shared = Shared::new(&rss, queues, steered);
        let counters: Vec<Arc<CoreCounters>> = (0..queues).map(|_| Arc::default()).collect();
        let (opened_tx, opened_rx) = mpsc::channel();
        // Cores started with the dataplane say when their queue is open;
        // cores added later do not (nobody waits for them).
        let opened = Arc::new(Mutex::new(Some(opened_tx)));
        let spawn = {
            let (cfg, port, shared, counters) =
                (cfg.clone(), port.clone(), shared.clone(), counters.clone());
            let (factory, stop, opened) = (Arc::new(factory), stop.clone(), opened.clone());
            move |q: u16, cpu: Option<usize>, pool_mem: Option<PoolMem>, life: Arc<CoreLife>| {
                let core_cfg = CoreConfig {
                    queue: q,
                    rss: rss.clone(),
                    iface: IfaceConfig {
                        mac: cfg.mac,
                        ip: cfg.ip,
                        prefix_len: cfg.prefix_len,
                        gateway: cfg.gateway,
                        mtu: 1500,
                    },
                    tcp: cfg.tcp.clone(),
                    batch: cfg.batch,
                    app_timers: 4096,
                };
                let publish = Publish {
                    counters: counters[usize::from(q)].clone(),
                    page: page.as_ref().and_then(|p| p.writer(usize::from(q)).ok()),
                };
                let opened = opened.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (cfg, port, shared) = (cfg.clone(), port.clone(), shared.clone());
                let (factory, stop) = (factory.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("ix-core-{q}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            pin_to_cpu(cpu);
                        }
                        let r = run_core(
                            &cfg,
                            core_cfg,
                            &port,
                            pool_mem,
                            publish,
                            Signals {
                                stop: &stop,
                                opened,
                                shared,
                                life: &life,
                            },
                            factory(q),
                        );
                        life.exited.store(true, Ordering::Release);
                        r
                    })
                    .map_err(IxError::Spawn)
            }
        };
        let set_table = {
            let port = port.clone();
            move |table: &[u16]| port.set_table(table)
        };
        let cores = Cores::start(
            Box::new(spawn),
            Box::new(set_table),
            shared,
            counters,
            stop.clone(),
            A::MIGRATES,
            &cfg.cores,
            pools,
        )?;
        drop(opened.lock().unwrap_or_else(|e| e.into_inner()).take());
        if matches!(cfg.nic, NicConfig::AfPacket { .. }) {
            // An af_packet queue opens at once (no peer to wait for): return
            // only when every core can answer, so a program that says it is
            // serving is. A core that fails stops waiting here (its sender
            // is dropped) and reports at `join`.
            for _ in 0..cfg.cores.len() {
                if opened_rx.recv_timeout(cfg.link_timeout).is_err() {
                    break;
                }
            }
        }
        Ok(Dataplane {
            stop,
            cores: Arc::new(cores),
            lifeline,
        })
    }

    /// Live counters of each core the port could have: the first
    /// [`Dataplane::cores`] serve now, the others are idle (never started,
    /// or removed — their last counts stay).
    pub fn counters(&self) -> &[Arc<CoreCounters>] {
        self.cores.counters()
    }

    /// Cores serving now.
    pub fn cores(&self) -> usize {
        self.cores.active()
    }

    /// The redirection table: each flow group's core.
    pub fn flow_groups(&self) -> Vec<u16> {
        self.cores.table()
    }

    /// Grows or shrinks the running dataplane to `cpus.len()` cores (up to
    /// [`Config::max_cores`]), the added ones pinned to their CPUs (`None`:
    /// unpinned), moving flow groups — and their connections — between
    /// cores while traffic flows, so that the groups end up balanced with
    /// the fewest moves. Returns once the moves settled and removed cores'
    /// threads ended. Connections and bytes in flight are kept (see
    /// `dataplane::migrate`); applications keep per-connection state
    /// across the move with [`App::migrate_out`] / [`App::migrate_in`],
    /// and a dataplane whose application does not ([`App::MIGRATES`]) is
    /// not resized.
    pub fn resize(&self, cpus: &[Option<usize>]) -> Result<usize, IxError> {
        self.cores.resize(cpus, Vec::new(), None)
    }

    /// Asks every core to stop after its current turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A flag that stops the dataplane when set (e.g. from a signal
    /// handler thread).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops the dataplane `after` from now (a timer thread sets the stop
    /// flag), for programs that run for a fixed time.
    pub fn stop_after(&self, after: Duration) {
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            stop.store(true, Ordering::Relaxed);
        });
    }

    /// Waits for every core to finish (each stops when its application
    /// calls `Cx::stop`, or when [`Dataplane::stop`] is called), then
    /// closes the lifeline. [`IxError::Disowned`] when the dataplane
    /// stopped because a restarted ixcpd would not take it back.
    pub fn join(mut self) -> Result<RunReport, IxError> {
        let lifeline = self.lifeline.take();
        let mut report = RunReport::default();
        let mut first_err = None;
        for r in self.cores.join_all() {
            match r {
                Ok(r) => report.cores.push(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        report.cores.sort_by_key(|c| c.core);
        // Every core has stopped: now ixcpd may take the resources back.
        let disowned = lifeline.as_ref().and_then(Lifeline::disowned);
        drop(lifeline);
        match first_err.or(disowned) {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// Opens core `q`'s queue pair on `port` (the link may still be down: see
/// [`AnyQueue::link_up`]).
fn open_queue(cfg: &Config, port: &Port, q: u16, pool: Pool) -> Result<AnyQueue, IxError> {
    let queue = match port {
        Port::Memif(p) => {
            let memif_err = |source| IxError::Memif {
                path: match &cfg.nic {
                    NicConfig::Memif(m) => m.socket_path.clone(),
                    _ => PathBuf::new(),
                },
                source,
            };
            let mq = p.queue(q, pool).map_err(memif_err)?;
            match cfg.faults.clone() {
                Some(f) => AnyQueue::FaultyMemif(FaultyQueue::new(mq, f)?),
                None => AnyQueue::Memif(mq),
            }
        }
        Port::AfPacket(ifname) => {
            let aq =
                AfPacketPort::open(ifname, &AfPacketConfig::default(), pool).map_err(|source| {
                    IxError::AfPacket {
                        ifname: ifname.clone(),
                        source,
                    }
                })?;
            match cfg.faults.clone() {
                Some(f) => AnyQueue::FaultyAfPacket(FaultyQueue::new(aq, f)?),
                None => AnyQueue::AfPacket(aq),
            }
        }
        #[cfg(feature = "dpdk")]
        Port::Dpdk(p) => {
            let dq = p.queue(q, pool)?;
            match cfg.faults.clone() {
                Some(f) => AnyQueue::FaultyDpdk(FaultyQueue::new(dq, f)?),
                None => AnyQueue::Dpdk(dq),
            }
        }
    };
    Ok(queue)
}

/// Where one core publishes: its process-local counters, and its record
/// of ixcpd's stats page when registered.
struct Publish {
    counters: Arc<CoreCounters>,
    page: Option<CoreWriter>,
}

/// How a core talks to the thread that started it: the stop flag it
/// watches, and the channel on which it says its queue is open.
struct Signals<'a> {
    stop: &'a AtomicBool,
    opened: Option<mpsc::Sender<()>>,
    shared: Arc<Shared>,
    /// Where the core says it runs its loop.
    life: &'a CoreLife,
}

fn run_core<A: App>(
    cfg: &Config,
    core_cfg: CoreConfig,
    port: &Port,
    pool_mem: Option<PoolMem>,
    publish: Publish,
    signals: Signals<'_>,
    app: A,
) -> Result<CoreReport, IxError> {
    let Signals {
        stop,
        opened,
        shared,
        life,
    } = signals;
    let Publish { counters, page } = publish;
    let q = core_cfg.queue;
    let pool = match pool_mem {
        Some(p) => Pool::from_mem(q, p.mem, p.buffers),
        None => Pool::new(q, cfg.pool_buffers, cfg.hugepages)
            .map_err(|source| IxError::Pool { core: q, source })?,
    };
    let queue = open_queue(cfg, port, q, pool)?;
    if let Some(opened) = opened {
        // The receiver may have stopped waiting; nothing to do then.
        let _ = opened.send(());
    }
    let mut thread = ElasticThread::with_shared(core_cfg, queue, counters.clone(), shared);
    if let Some(writer) = page {
        thread.attach_stats(writer);
    }
    for (ip, mac) in &cfg.static_arp {
        thread.core().add_static_arp(*ip, *mac);
    }
    let mut handler = Dispatch(app);
    // The loop publishes once more as it ends: the counters are final.
    // The core serves its mailbox from here on, while it waits for the
    // link (no peer on the wire yet) and then in its loop.
    life.looping.store(true, Ordering::Release);
    thread.wait_for_link(&mut handler, stop, cfg.link_timeout, |q| q.link_up(port));
    thread.run(&mut handler, stop);
    let last = counters.snapshot();
    Ok(CoreReport {
        core: q,
        rx_packets: last.rx_packets,
        tx_packets: last.tx_packets,
        mean_batch: last.mean_batch(),
        idle_loops: last.idle_turns,
        queue: thread.queue_stats(),
        tcp: thread.core().tcp_stats(),
        migration: thread.migration_stats(),
    })
}

/// Pins the calling thread to one CPU. Failure (e.g. the CPU is not in the
/// process's allowed set) is logged, not fatal: the loop still runs.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `set` is a plain bitmask on our stack, zeroed then set with
    // the libc macros; sched_setaffinity reads exactly size_of::<cpu_set_t>
    // bytes from it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        log::warn!(
            "cannot pin elastic thread to cpu {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_plane::config::{MacAddr, PortConfig};
    use control_plane::proto::PoolFd;
    use control_plane::resources::Allocation;

    fn registration(cores: usize, buffers: u32, bytes: u64) -> Registration {
        Registration {
            allocation: Allocation {
                name: "echo".into(),
                port: "wire0".into(),
                cpus: (0..cores as u32).collect(),
                buffers_per_core: buffers,
                pool_bytes: bytes,
                page_size: 4096,
                huge: false,
                reta: (0..128).map(|g| (g % cores) as u16).collect(),
            },
            port: PortConfig {
                name: "wire0".into(),
                kind: PortKind::Memif {
                    socket: "/tmp/w.sock".into(),
                    role: control_plane::config::MemifRole::Slave,
                    queues: 2,
                },
                ip: Ipv4Addr::new(10, 77, 0, 2),
                prefix: 24,
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                mac_derived: false,
                gateway: Some(Ipv4Addr::new(10, 77, 0, 254)),
            },
            pools: (0..cores)
                .map(|i| PoolFd {
                    queue: i as u16,
                    fd: i as u32,
                    bytes,
                    buffers,
                    huge: false,
                })
                .collect(),
            stats: None,
        }
    }

    fn memfds(n: usize, bytes: u64) -> Vec<std::os::fd::OwnedFd> {
        (0..n)
            .map(|_| {
                let mem = SharedMem::create("ix-reg-test", bytes as usize, false).unwrap();
                mem.fd().try_clone_to_owned().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_registration_becomes_pinned_cores_the_port_and_mapped_pools() {
        let bytes = 64 * BUF_SIZE as u64;
        let (cfg, pools, stats) =
            from_registration("echo", registration(2, 64, bytes), memfds(2, bytes)).unwrap();
        assert!(stats.is_none(), "no page sent, none used");
        assert_eq!(cfg.cores, [Some(0), Some(1)]);
        assert_eq!((cfg.ip, cfg.prefix_len), (Ipv4Addr::new(10, 77, 0, 2), 24));
        assert_eq!(cfg.gateway, Some(Ipv4Addr::new(10, 77, 0, 254)));
        assert_eq!(cfg.mac, EthernetAddress([2, 0, 0, 0, 0, 9]));
        let NicConfig::Memif(m) = &cfg.nic else {
            panic!("{:?}", cfg.nic)
        };
        assert_eq!((m.role, m.queues), (MemifRole::Slave, 2));
        assert_eq!(pools.len(), 2);
        assert!(pools
            .iter()
            .all(|p| p.buffers == 64 && p.mem.len() >= bytes as usize));
    }

    /// A registration for ixcpd's `dpdk` port `net_memif3` (a vdev).
    fn dpdk_registration(cores: usize, bytes: u64) -> Registration {
        let mut reg = registration(cores, 64, bytes);
        reg.port.kind = PortKind::Dpdk {
            device: "net_memif3".into(),
            vdev: Some("net_memif3,role=server,socket=/tmp/m3.sock".into()),
            queues: 2,
        };
        reg
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn a_dpdk_port_becomes_an_eal_on_the_first_cpu_and_its_device() {
        use dataplane::nic::dpdk::{EalDevice, EalMemory};
        let bytes = 64 * BUF_SIZE as u64;
        let reg = dpdk_registration(2, bytes);
        let (cfg, _, _) = from_registration("echo", reg, memfds(2, bytes)).unwrap();
        let NicConfig::Dpdk { eal, port } = &cfg.nic else {
            panic!("{:?}", cfg.nic)
        };
        assert_eq!(eal.lcores, "0");
        assert_eq!(eal.memory, EalMemory::NoHuge { mb: 512 });
        assert_eq!(eal.file_prefix.as_deref(), Some("ix-echo"));
        assert!(!eal.pci);
        assert_eq!(
            eal.devices,
            [EalDevice::Vdev(
                "net_memif3,role=server,socket=/tmp/m3.sock".into()
            )]
        );
        assert_eq!(port.name, "net_memif3");
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn a_dpdk_port_needs_the_dpdk_feature() {
        let bytes = 64 * BUF_SIZE as u64;
        let reg = dpdk_registration(1, bytes);
        let Err(err) = from_registration("echo", reg, memfds(1, bytes)) else {
            panic!("a dpdk port accepted without the dpdk feature");
        };
        assert!(err.to_string().contains("`dpdk` feature"), "{err}");
    }

    #[test]
    fn inconsistent_registrations_are_refused() {
        let bytes = 64 * BUF_SIZE as u64;
        let small = from_registration("e", registration(1, 65, bytes), memfds(1, bytes));
        assert!(matches!(small, Err(IxError::PoolTooSmall { queue: 0, .. })));
        let missing = from_registration("e", registration(2, 64, bytes), memfds(1, bytes));
        assert!(matches!(missing, Err(IxError::Mismatch(_))));
        let mut reta = registration(2, 64, bytes);
        reta.allocation.reta[0] = 2;
        let beyond = from_registration("e", reta, memfds(2, bytes));
        assert!(matches!(beyond, Err(IxError::Mismatch(_))));
    }

    #[test]
    fn a_registration_keeps_ixcpds_redirection_table_and_port_queues() {
        let bytes = 64 * BUF_SIZE as u64;
        let mut reg = registration(1, 64, bytes);
        reg.allocation.reta[0] = 0;
        let (cfg, _, _) = from_registration("e", reg.clone(), memfds(1, bytes)).unwrap();
        assert_eq!(cfg.reta.as_ref(), Some(&reg.allocation.reta));
        assert_eq!(
            cfg.max_cores,
            Some(usize::from(reg.port.kind.queues())),
            "the port is opened with all its queues, so cores can be added"
        );
    }

    #[test]
    fn the_stats_page_of_a_registration_is_mapped_for_writing_or_done_without() {
        let bytes = 64 * BUF_SIZE as u64;
        let with_page = |fd: OwnedFd| {
            let mut reg = registration(2, 64, bytes);
            reg.stats = Some(control_plane::proto::StatsFd {
                fd: 2,
                bytes: dataplane::stats::page_len(2) as u64,
                cores: 2,
                version: dataplane::stats::VERSION,
            });
            let mut fds = memfds(2, bytes);
            fds.push(fd);
            from_registration("echo", reg, fds).unwrap().2
        };
        let ixcpd = StatsPage::create("ix-reg-test", 2).unwrap();
        let page = with_page(ixcpd.fd().try_clone_to_owned().unwrap()).expect("mapped");
        let stats = dataplane::stats::CoreStats {
            rx_packets: 5,
            ..Default::default()
        };
        page.writer(1).unwrap().publish(&stats);
        assert_eq!(ixcpd.read(1).unwrap(), stats);
        // A page that is not one (unsealed): the dataplane runs without.
        let plain = memfds(1, 4096).pop().unwrap();
        assert!(with_page(plain).is_none());
    }

    /// An ixcpd on a thread of this test, on `socket`.
    struct Ixcpd {
        stop: Option<std::io::PipeWriter>,
        thread: Option<JoinHandle<()>>,
    }

    impl Ixcpd {
        fn start(socket: &Path) -> Ixcpd {
            let text = format!(
                "cores = [0]\nmemory = \"16 MiB\"\nhugepages = \"off\"\n[api]\nsocket = {socket:?}\n\
                 [[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = \"/tmp/ix-lifeline-test.sock\"\n\
                 role = \"master\"\nqueues = 1\nip = \"10.0.0.1/24\"\n"
            );
            let host = control_plane::host::Host {
                cpus: control_plane::units::CpuList(vec![0]),
                hugepage_size: 2 << 20,
                hugepages_free: 0,
            };
            let config = control_plane::config::Config::from_toml(&text, &host).unwrap();
            let mut server = control_plane::server::Server::bind(config).unwrap();
            let (rd, wr) = std::io::pipe().unwrap();
            let thread = std::thread::spawn(move || server.run(rd.as_fd()).unwrap());
            Ixcpd {
                stop: Some(wr),
                thread: Some(thread),
            }
        }
    }

    impl Drop for Ixcpd {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status(socket: &Path) -> Option<control_plane::proto::DataplaneInfo> {
        Client::connect(socket)
            .and_then(|mut c| c.status())
            .ok()?
            .dataplanes
            .pop()
    }

    /// Registers "echo" on the ixcpd at `socket` and starts the lifeline's
    /// thread (without elastic threads: the lifeline is all this tests).
    fn registered(socket: &Path) -> (Lifeline, Arc<AtomicBool>) {
        let mut ctl = Client::connect(socket).unwrap();
        ctl.allocate(control_plane::proto::AllocateArgs {
            name: "echo".into(),
            cores: 1,
            port: "wire0".into(),
            buffers_per_core: Some(512),
            memory: None,
        })
        .unwrap();
        let reg = Registered::register_at(socket, "echo").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = reg
            .stats
            .as_ref()
            .map(|p| p.fd().try_clone_to_owned().unwrap());
        let lifeline = Lifeline::start(
            reg.lifeline,
            Supervisor {
                socket: reg.socket,
                name: reg.name,
                stats,
                stop: stop.clone(),
                disowned: Arc::default(),
                cores: Arc::new(crate::cores::Cores::none(stop.clone())),
            },
        )
        .unwrap();
        (lifeline, stop)
    }

    #[test]
    fn the_lifeline_is_restored_when_ixcpd_restarts_and_closes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ixcpd.sock");
        let first = Ixcpd::start(&socket);
        let (lifeline, stop) = registered(&socket);
        assert!(status(&socket).unwrap().lifeline);
        drop(first);
        let _second = Ixcpd::start(&socket);
        wait_for("the dataplane reattached", || {
            status(&socket).is_some_and(|d| d.lifeline)
        });
        let mut ctl = Client::connect(&socket).unwrap();
        assert!(
            ctl.stats("echo").unwrap().note.is_none(),
            "its page came along"
        );
        assert!(!stop.load(Ordering::Relaxed));
        assert!(lifeline.disowned().is_none());
        drop(lifeline);
        wait_for("released when the lifeline closed", || {
            status(&socket).is_none()
        });
    }

    #[test]
    fn a_dataplane_the_new_ixcpd_does_not_know_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ixcpd.sock");
        let first = Ixcpd::start(&socket);
        let (lifeline, stop) = registered(&socket);
        drop(first);
        // Its books are lost.
        std::fs::remove_file(dir.path().join("ixcpd.sock.state")).unwrap();
        let _second = Ixcpd::start(&socket);
        wait_for("the dataplane told to stop", || {
            stop.load(Ordering::Relaxed)
        });
        let err = lifeline.disowned().expect("disowned");
        assert!(
            err.to_string().contains("no dataplane named \"echo\""),
            "{err}"
        );
    }
}
