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
//!   (one pinned elastic thread each), its port and addresses, and one
//!   buffer pool per core mapped from the memfds ixcpd sent. The
//!   registering connection is the dataplane's *lifeline*: the
//!   [`Dataplane`] keeps it open until [`Dataplane::join`] returns, and
//!   ixcpd takes everything back when it closes — also when the process
//!   dies.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use control_plane::client::{default_socket_path, Client, ClientError};
use control_plane::config::{PortKind, DATAPLANE_ENV};
use control_plane::proto::Registration;
use dataplane::buf::{Pool, BUF_SIZE};
use dataplane::elastic::{CoreConfig, CoreCounters, ElasticThread, DEFAULT_BATCH};
use dataplane::mem::SharedMem;
use dataplane::net::iface::IfaceConfig;
use dataplane::nic::af_packet::{AfPacketConfig, AfPacketPort, AfPacketQueue};
use dataplane::nic::fault::{FaultConfig, FaultyQueue};
use dataplane::nic::memif::{MemifConfig, MemifPort, MemifQueue, MemifRole, Steering};
use dataplane::nic::{QueuePair, QueueStats};
use dataplane::rss::{RssConfig, DEFAULT_FLOW_GROUPS};
use dataplane::tcp::{TcpConfig, TcpStats};
use dataplane::wire::ethernet::EthernetAddress;

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
        if matches!(self.nic, NicConfig::AfPacket { .. }) && self.cores.len() != 1 {
            return Err(IxError::Config(
                "af_packet ports have one queue: use exactly one core",
            ));
        }
        Ok(())
    }
}

/// A buffer pool ixcpd handed over: its mapped memory and slot count.
/// `Pool` itself is `!Send`, so each elastic thread builds its pool from
/// this on its own thread.
struct PoolMem {
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
    pub fn register_at(socket: &std::path::Path, name: &str) -> Result<Registered, IxError> {
        let err = |source| IxError::Register {
            name: name.to_owned(),
            source,
        };
        let mut client = Client::connect(socket).map_err(err)?;
        let (registration, fds) = client.register(name).map_err(err)?;
        let (config, pools) = from_registration(name, registration, fds)?;
        Ok(Registered {
            config,
            name: name.to_owned(),
            pools,
            lifeline: client,
        })
    }

    /// The name registered under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Checks a registration and builds the dataplane's config and pools.
fn from_registration(
    name: &str,
    reg: Registration,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<(Config, Vec<PoolMem>), IxError> {
    let cores = reg.allocation.cpus.len();
    if cores == 0 || reg.pools.len() != cores {
        return Err(IxError::Mismatch("one buffer pool per core expected"));
    }
    let queues = u16::try_from(cores).map_err(|_| IxError::Mismatch("too many cores"))?;
    if reg.allocation.reta != RssConfig::round_robin(queues, DEFAULT_FLOW_GROUPS).reta {
        return Err(IxError::Mismatch(
            "the redirection table is not the round-robin one libix steers by",
        ));
    }
    let mut fds: Vec<Option<std::os::fd::OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut pools = Vec::with_capacity(cores);
    for (i, p) in reg.pools.iter().enumerate() {
        if usize::from(p.queue) != i {
            return Err(IxError::Mismatch("pools are not listed in queue order"));
        }
        let needed = u64::from(p.buffers) * BUF_SIZE as u64;
        if p.buffers == 0 || p.buffers == u32::MAX || p.bytes < needed {
            return Err(IxError::PoolTooSmall {
                queue: p.queue,
                bytes: p.bytes,
                buffers: p.buffers,
            });
        }
        let fd = fds
            .get_mut(p.fd as usize)
            .and_then(Option::take)
            .ok_or(IxError::Mismatch(
                "a pool names a missing or reused descriptor",
            ))?;
        let len = usize::try_from(p.bytes).map_err(|_| IxError::Mismatch("pool too large"))?;
        let mem = SharedMem::from_fd(fd, len, true).map_err(|source| IxError::PoolMap {
            queue: p.queue,
            source,
        })?;
        pools.push(PoolMem {
            mem,
            buffers: p.buffers,
        });
    }
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
    config.pool_buffers = reg.allocation.buffers_per_core;
    config.hugepages = reg.allocation.huge;
    Ok((config, pools))
}

/// The queue pair of one core, whichever backend it is.
enum AnyQueue {
    Memif(MemifQueue),
    AfPacket(AfPacketQueue),
    FaultyMemif(FaultyQueue<MemifQueue>),
    FaultyAfPacket(FaultyQueue<AfPacketQueue>),
}

macro_rules! each_queue {
    ($self:ident, $q:ident => $e:expr) => {
        match $self {
            AnyQueue::Memif($q) => $e,
            AnyQueue::AfPacket($q) => $e,
            AnyQueue::FaultyMemif($q) => $e,
            AnyQueue::FaultyAfPacket($q) => $e,
        }
    };
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
}

/// What the dataplane did, per core.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// One entry per core.
    pub cores: Vec<CoreReport>,
}

/// A running dataplane.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<CoreReport, IxError>>>,
    counters: Vec<Arc<CoreCounters>>,
    /// The registration's connection to ixcpd, open while the cores run.
    lifeline: Option<Client>,
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
        Self::start_with(cfg, pools, None, factory)
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
        Self::start_with(reg.config, pools, Some(reg.lifeline), factory)
    }

    fn start_with<A, F>(
        cfg: Config,
        pools: Vec<Option<PoolMem>>,
        lifeline: Option<Client>,
        factory: F,
    ) -> Result<Dataplane, IxError>
    where
        A: App,
        F: Fn(u16) -> A + Send + Sync + 'static,
    {
        cfg.validate()?;
        let queues = cfg.cores.len() as u16;
        let port = match &cfg.nic {
            NicConfig::Memif(m) => {
                let mut m = m.clone();
                m.queues = queues;
                if queues > 1 && m.steering == Steering::None {
                    // Both ends are libix dataplanes with the same core
                    // count and the default redirection table: steer each
                    // frame to the queue the receiver's RSS picks, as a
                    // NIC would.
                    m.steering = Steering::Rss(RssConfig::round_robin(queues, DEFAULT_FLOW_GROUPS));
                }
                let port = MemifPort::open(m.clone()).map_err(|source| IxError::Memif {
                    path: m.socket_path.clone(),
                    source,
                })?;
                Port::Memif(Arc::new(port))
            }
            NicConfig::AfPacket { ifname } => Port::AfPacket(ifname.clone()),
        };
        let port = Arc::new(port);
        let factory = Arc::new(factory);
        let stop = Arc::new(AtomicBool::new(false));
        let rss = RssConfig::round_robin(queues, DEFAULT_FLOW_GROUPS);
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        for ((q, cpu), pool_mem) in cfg.cores.iter().copied().enumerate().zip(pools) {
            let q = q as u16;
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
            let ctr = Arc::new(CoreCounters::default());
            counters.push(ctr.clone());
            let (port, factory, stop) = (port.clone(), factory.clone(), stop.clone());
            let cfg = cfg.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ix-core-{q}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to_cpu(cpu);
                    }
                    run_core(&cfg, core_cfg, &port, pool_mem, ctr, &stop, factory(q))
                })
                .map_err(IxError::Spawn)?;
            threads.push(handle);
        }
        Ok(Dataplane {
            stop,
            threads,
            counters,
            lifeline,
        })
    }

    /// Live counters of each core.
    pub fn counters(&self) -> &[Arc<CoreCounters>] {
        &self.counters
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
    /// calls `Cx::stop`, or when [`Dataplane::stop`] is called).
    pub fn join(mut self) -> Result<RunReport, IxError> {
        let lifeline = self.lifeline.take();
        let mut report = RunReport::default();
        let mut first_err = None;
        for (q, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(r)) => report.cores.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(IxError::Panicked(q as u16));
                }
            }
        }
        // Every core has stopped: now ixcpd may take the resources back.
        drop(lifeline);
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

fn open_queue(
    cfg: &Config,
    port: &Port,
    q: u16,
    pool: Pool,
    stop: &AtomicBool,
) -> Result<AnyQueue, IxError> {
    let queue = match port {
        Port::Memif(p) => {
            let deadline = std::time::Instant::now() + cfg.link_timeout;
            while !p.is_connected() {
                if stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                    break;
                }
                let _ = p.wait_connected(Duration::from_millis(50));
            }
            let memif_err = |source| IxError::Memif {
                path: match &cfg.nic {
                    NicConfig::Memif(m) => m.socket_path.clone(),
                    NicConfig::AfPacket { .. } => PathBuf::new(),
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
    };
    Ok(queue)
}

fn run_core<A: App>(
    cfg: &Config,
    core_cfg: CoreConfig,
    port: &Port,
    pool_mem: Option<PoolMem>,
    counters: Arc<CoreCounters>,
    stop: &AtomicBool,
    app: A,
) -> Result<CoreReport, IxError> {
    let q = core_cfg.queue;
    let pool = match pool_mem {
        Some(p) => Pool::from_mem(q, p.mem, p.buffers),
        None => Pool::new(q, cfg.pool_buffers, cfg.hugepages)
            .map_err(|source| IxError::Pool { core: q, source })?,
    };
    let queue = open_queue(cfg, port, q, pool, stop)?;
    let mut thread = ElasticThread::new(core_cfg, queue, counters.clone());
    for (ip, mac) in &cfg.static_arp {
        thread.core().add_static_arp(*ip, *mac);
    }
    let mut handler = Dispatch(app);
    // The loop publishes once more as it ends: the counters are final.
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
        let (cfg, pools) =
            from_registration("echo", registration(2, 64, bytes), memfds(2, bytes)).unwrap();
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

    #[test]
    fn inconsistent_registrations_are_refused() {
        let bytes = 64 * BUF_SIZE as u64;
        let small = from_registration("e", registration(1, 65, bytes), memfds(1, bytes));
        assert!(matches!(small, Err(IxError::PoolTooSmall { queue: 0, .. })));
        let missing = from_registration("e", registration(2, 64, bytes), memfds(1, bytes));
        assert!(matches!(missing, Err(IxError::Mismatch(_))));
        let mut reta = registration(2, 64, bytes);
        reta.allocation.reta[0] = 1;
        let moved = from_registration("e", reta, memfds(2, bytes));
        assert!(matches!(moved, Err(IxError::Mismatch(_))));
    }
}
