//! DPDK backend (cargo feature `dpdk`): any DPDK ethdev — a NIC bound to
//! vfio-pci, or a virtual device such as `net_memif`, `net_ring`,
//! `net_tap`, `net_af_packet` — as [`QueuePair`]s, through the workspace's
//! `dpdk-sys` crate (DPDK ≥ 22.11).
//!
//! # Layers
//!
//! - [`Eal`]: DPDK's Environment Abstraction Layer, initialised once per
//!   process from an [`EalConfig`] (lcores, memory with or without
//!   hugepages, `--file-prefix`, runtime files or not, PCI or virtual devices,
//!   `--no-pci`). DPDK cannot initialise it twice; a second
//!   [`Eal::init`] with the same arguments returns the running one, with
//!   other arguments it is an error. Virtual devices can also be added
//!   later ([`Eal::attach`], `rte_dev_probe`). The EAL pins the thread
//!   that starts it to its first lcore; [`Eal::init`] restores that
//!   thread's CPU set afterwards, so that threads it spawns later (elastic
//!   threads, which pin themselves) do not all inherit one CPU.
//! - [`DpdkPort`]: one ethdev port, configured with one RX/TX queue pair
//!   per elastic thread and one mbuf pool (mempool) per queue, RSS with
//!   our Toeplitz key and redirection table ([`RssConfig`]) when the
//!   device hashes in hardware, started; [`DpdkPort::wait_link`] waits for
//!   the link, [`DpdkPort::update_flow_groups`] rewrites entries of the
//!   device's redirection table (`rte_eth_dev_rss_reta_update`, the call
//!   flow-group migration needs). Dropping the last handle stops and
//!   closes the port and frees its pools.
//! - [`DpdkQueue`]: one queue pair, claimed by one thread
//!   ([`DpdkPort::queue`]), implementing [`QueuePair`] with
//!   `rte_eth_rx_burst`/`rte_eth_tx_burst` over bursts of up to
//!   [`BURST`] mbufs.
//!
//! Control-path calls (attach, open, RETA updates, close) are serialised
//! by one process-wide lock: DPDK's ethdev control functions are not
//! thread-safe. The data path takes no lock: each queue is used by the one
//! thread that claimed it.
//!
//! Elastic threads are not EAL threads. The first queue opened on a thread
//! registers it as a DPDK lcore (`rte_thread_register`, undone when the
//! thread exits) so that mempool operations use the per-lcore cache; when
//! no lcore id is free the thread runs without a cache (correct, slower).
//! Registration rules out DPDK's multi-process mode, which we do not use.
//!
//! # One copy each way (the remaining gap)
//!
//! The stack works on [`PktBuf`]s of the queue's [`Pool`]; DPDK receives
//! into and transmits from `rte_mbuf`s of the queue's mempool. This
//! backend copies once each way: a received frame (all segments) from its
//! mbuf into a fresh slot of the pool, the mbuf freed at once; a frame to
//! send into a fresh mbuf, which the driver frees after transmission. It
//! is the same single copy as the memif and af_packet backends make, but
//! on a NIC whose DMA writes the mbuf it is one copy too many: the design
//! asks for none. The way to remove it is to make the two one memory: an
//! mbuf pool whose data buffers are the slots of our pool
//! (`rte_pktmbuf_pool_create_extbuf` over the pool's region registered
//! with `rte_extmem_register`; a slot is [`BUF_HEADROOM`] + [`BUF_DATA`]
//! bytes, exactly an mbuf's default headroom + data room), and a [`Pool`]
//! whose allocator is that mempool — `alloc` taking an mbuf, the last
//! [`PktBuf`] drop calling `rte_pktmbuf_free` — so that a received mbuf
//! becomes a [`PktBuf`] of its slot and a [`PktBuf`] to send is its
//! slot's mbuf. That changes `buf::Pool` (an external allocator behind
//! its free stack) and is not done here. The cost of the copy as measured
//! is in `dataplane/tests/dpdk_ring.rs` (`copy_cost_per_frame`).
//!
//! # Limits
//!
//! Frames longer than a slot's data area ([`BUF_DATA`], 2048 bytes)
//! cannot become one [`PktBuf`] and are dropped and counted, as are
//! frames to send that do not fit an mbuf's data room. A device without
//! hardware RSS (most virtual devices: `net_ring`, `net_memif`) delivers on
//! queue *k* what its peer sends on queue *k*; [`DpdkPort::rss_offloaded`]
//! says which case a port is in. A closed port cannot be opened again in
//! the same process (DPDK releases it), except a virtual device the port
//! attached itself ([`PortConfig::attach`]), which it also detaches.
//!
//! Nothing here panics on what a device or a peer does: errors are values
//! naming the port, the queue and the DPDK call, with a hint where one
//! helps ("port 0000:01:00.0: no such device — is it bound to vfio-pci?").

use std::cell::Cell;
use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The raw bindings (`dpdk-sys`), for what this module does not wrap.
pub use dpdk_sys as sys;

use crate::buf::{PktBuf, Pool, BUF_DATA, BUF_HEADROOM};
use crate::nic::{QueuePair, QueueStats};
use crate::rss::{RssConfig, RSS_KEY_LEN};
use crate::wire::ethernet::EthernetAddress;

/// Most mbufs passed to one `rte_eth_rx_burst`/`rte_eth_tx_burst` call.
pub const BURST: usize = 64;

/// DPDK's "no lcore" id.
const LCORE_ID_ANY: u32 = u32::MAX;

/// Errors of the DPDK backend. Errno values are DPDK's (`rte_strerror`).
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// `rte_eal_init` failed.
    #[error("DPDK EAL initialisation failed ({}) with arguments `{args}`: check the lcores, memory (`--no-huge -m N` or reserved hugepages) and devices", strerror(*code))]
    EalInit {
        /// The arguments given.
        args: String,
        /// `rte_errno`.
        code: i32,
    },
    /// The EAL already runs in this process with other arguments.
    #[error("the DPDK EAL already runs in this process with `{running}`, asked for `{asked}`: DPDK allows one EAL per process — use the same EalConfig everywhere, or another process")]
    EalMismatch {
        /// Arguments of the running EAL.
        running: String,
        /// Arguments asked for.
        asked: String,
    },
    /// An earlier `rte_eal_init` in this process failed; DPDK cannot retry.
    #[error("an earlier DPDK EAL initialisation in this process failed ({}); DPDK cannot be initialised again — restart the process", strerror(*code))]
    EalFailedBefore {
        /// `rte_errno` of that attempt.
        code: i32,
    },
    /// An EAL argument or device name holds a NUL byte.
    #[error("DPDK argument {0:?} contains a NUL byte")]
    Nul(String),
    /// A device could not be attached after start-up.
    #[error("DPDK device `{devargs}`: cannot attach ({}): check the driver name and its arguments", strerror(*code))]
    Attach {
        /// The device string.
        devargs: String,
        /// Errno.
        code: i32,
    },
    /// No ethdev port has that name.
    #[error("port {name}: no such device — is it bound to vfio-pci (a PCI NIC), or given to the EAL as a --vdev / attached (a virtual device)?")]
    NoSuchPort {
        /// The port name.
        name: String,
    },
    /// A port-level DPDK call failed.
    #[error("port {name}: {call} failed ({})", strerror(*code))]
    Port {
        /// The port name.
        name: String,
        /// The DPDK function.
        call: &'static str,
        /// Errno.
        code: i32,
    },
    /// A queue-level DPDK call failed.
    #[error("port {name} queue {queue}: {call} failed ({})", strerror(*code))]
    Queue {
        /// The port name.
        name: String,
        /// The queue.
        queue: u16,
        /// The DPDK function.
        call: &'static str,
        /// Errno.
        code: i32,
    },
    /// The device has fewer queues than asked.
    #[error("port {name} ({driver}): asked for {asked} queue pairs, the device has at most {rx} RX and {tx} TX queues: use fewer cores")]
    TooManyQueues {
        /// The port name.
        name: String,
        /// Its driver.
        driver: String,
        /// Queue pairs asked for.
        asked: u16,
        /// The device's RX queues.
        rx: u16,
        /// The device's TX queues.
        tx: u16,
    },
    /// A queue's mbuf pool could not be created.
    #[error("port {name} queue {queue}: cannot create a pool of {mbufs} mbufs ({}): give the EAL more memory (`-m`, hugepages) or use fewer mbufs", strerror(*code))]
    Mempool {
        /// The port name.
        name: String,
        /// The queue.
        queue: u16,
        /// Mbufs asked for.
        mbufs: u32,
        /// `rte_errno`.
        code: i32,
    },
    /// The link stayed down.
    #[error("port {name}: link still down after {timeout:?}: is the cable (or the virtual device's peer) there?")]
    LinkDown {
        /// The port name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The queue index is out of range.
    #[error("port {name}: no queue {queue} (the port has {queues})")]
    NoSuchQueue {
        /// The port name.
        name: String,
        /// The queue asked for.
        queue: u16,
        /// Queues of the port.
        queues: u16,
    },
    /// Another handle already drives this queue.
    #[error("port {name}: queue {queue} is already in use (one thread per queue)")]
    QueueTaken {
        /// The port name.
        name: String,
        /// The queue.
        queue: u16,
    },
    /// RSS was asked of a port whose device does not hash in hardware.
    #[error(
        "port {name} ({driver}): the device has no RSS (hardware hashing): nothing to program"
    )]
    NoRss {
        /// The port name.
        name: String,
        /// Its driver.
        driver: String,
    },
    /// The device's RSS key is not a Toeplitz key of our length.
    #[error("port {name}: the device's RSS key has {device} bytes, ours {RSS_KEY_LEN}")]
    RssKeyLen {
        /// The port name.
        name: String,
        /// The device's key length.
        device: u8,
    },
    /// Our redirection table cannot be laid onto the device's.
    #[error("port {name}: a redirection table of {ours} flow groups does not divide the device's {device} entries")]
    RetaSize {
        /// The port name.
        name: String,
        /// Our flow groups.
        ours: usize,
        /// The device's RETA size.
        device: u16,
    },
    /// A redirection table entry is invalid.
    #[error("port {name}: flow group {group} → queue {queue}: the port has {groups} flow groups and {queues} queues")]
    RetaEntry {
        /// The port name.
        name: String,
        /// The flow group.
        group: usize,
        /// The queue named.
        queue: u16,
        /// Flow groups of the table.
        groups: usize,
        /// Queues of the port.
        queues: u16,
    },
}

/// DPDK's text for an errno value (its own codes included).
fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static string or to a
    // thread-local buffer it just filled, NUL-terminated in both cases;
    // it is copied before this thread calls DPDK again.
    unsafe { CStr::from_ptr(sys::rte_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// The calling thread's `rte_errno`.
fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer.
    unsafe { sys::ix_rte_errno() }
}

/// Serialises DPDK control-path calls (not thread-safe in DPDK).
static CONTROL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds [`CONTROL`] (a failed open drops a
    /// half-built port, whose clean-up takes the lock again).
    static HOLDS_CONTROL: Cell<bool> = const { Cell::new(false) };
}

/// The control lock, held until dropped; re-entrant on one thread.
struct Control(Option<MutexGuard<'static, ()>>);

impl Drop for Control {
    fn drop(&mut self) {
        if self.0.is_some() {
            HOLDS_CONTROL.with(|h| h.set(false));
        }
    }
}

fn control() -> Control {
    if HOLDS_CONTROL.with(Cell::get) {
        return Control(None);
    }
    // The guarded data is `()`: a panic elsewhere leaves nothing broken.
    let guard = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
    HOLDS_CONTROL.with(|h| h.set(true));
    Control(Some(guard))
}

/// EAL memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EalMemory {
    /// `--no-huge -m MB`: ordinary pages (no physical addresses: virtual
    /// devices only).
    NoHuge {
        /// Megabytes.
        mb: u32,
    },
    /// Hugepages (reserved and mounted by the administrator), `-m MB` when
    /// given.
    Hugepages {
        /// Megabytes to take, or DPDK's default.
        mb: Option<u32>,
    },
}

/// A device for the EAL to probe at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EalDevice {
    /// `--vdev=SPEC`, e.g. `net_memif0,role=server,socket=/tmp/m.sock`.
    Vdev(String),
    /// `-a ADDR[,args]`: a PCI device bound to vfio-pci (only these are
    /// probed once one is listed).
    Pci(String),
}

/// EAL arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EalConfig {
    /// `-l`: the EAL's lcores (the initialising thread is the first).
    /// Elastic threads need not be among them.
    pub lcores: String,
    /// Memory.
    pub memory: EalMemory,
    /// `--file-prefix`: keeps this process's runtime files apart from
    /// other DPDK processes'.
    pub file_prefix: Option<String>,
    /// Runtime files for DPDK's multi-process mode and telemetry socket.
    /// `false` adds `--no-shconf --no-telemetry` (DPDK then leaves only an
    /// empty runtime directory behind); this backend needs neither.
    pub runtime_files: bool,
    /// `--no-pci` when false.
    pub pci: bool,
    /// Devices to probe at start-up.
    pub devices: Vec<EalDevice>,
    /// `--log-level`.
    pub log_level: Option<u32>,
    /// Further arguments, verbatim.
    pub extra: Vec<String>,
}

impl EalConfig {
    /// Virtual devices only: lcore 0, `--no-huge -m 512`, `--no-pci`, the
    /// given file prefix, no runtime files, only errors logged
    /// (`--log-level=4`).
    pub fn virtual_devices(file_prefix: &str) -> EalConfig {
        EalConfig {
            lcores: "0".into(),
            memory: EalMemory::NoHuge { mb: 512 },
            file_prefix: Some(file_prefix.into()),
            runtime_files: false,
            pci: false,
            devices: Vec::new(),
            log_level: Some(4),
            extra: Vec::new(),
        }
    }

    /// The argument vector, program name first.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["ix-dataplane".to_string(), "-l".into(), self.lcores.clone()];
        match self.memory {
            EalMemory::NoHuge { mb } => {
                a.extend(["--no-huge".into(), "-m".into(), mb.to_string()]);
            }
            EalMemory::Hugepages { mb: Some(mb) } => a.extend(["-m".into(), mb.to_string()]),
            EalMemory::Hugepages { mb: None } => {}
        }
        if let Some(p) = &self.file_prefix {
            a.push(format!("--file-prefix={p}"));
        }
        if !self.runtime_files {
            a.extend(["--no-shconf".into(), "--no-telemetry".into()]);
        }
        if !self.pci {
            a.push("--no-pci".into());
        }
        for d in &self.devices {
            match d {
                EalDevice::Vdev(v) => a.push(format!("--vdev={v}")),
                EalDevice::Pci(p) => a.extend(["-a".into(), p.clone()]),
            }
        }
        if let Some(l) = self.log_level {
            a.push(format!("--log-level={l}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// The initialised EAL of this process.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

/// The outcome of this process's one `rte_eal_init`.
enum EalState {
    Uninit,
    Running(&'static Eal),
    Failed(i32),
}

static EAL: Mutex<EalState> = Mutex::new(EalState::Uninit);

impl Eal {
    /// Initialises the EAL with `cfg`, or returns the running one if it
    /// was started with the same arguments.
    pub fn init(cfg: &EalConfig) -> Result<&'static Eal, DpdkError> {
        let args = cfg.args();
        let mut state = EAL.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            EalState::Running(eal) if eal.args == args => return Ok(eal),
            EalState::Running(eal) => {
                return Err(DpdkError::EalMismatch {
                    running: eal.args.join(" "),
                    asked: args.join(" "),
                })
            }
            EalState::Failed(code) => return Err(DpdkError::EalFailedBefore { code }),
            EalState::Uninit => {}
        }
        let cstrings = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::Nul(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        // The EAL may keep pointers into argv (and getopt permutes the
        // array): both live for the rest of the process.
        let cstrings: &'static [CString] = Box::leak(cstrings.into_boxed_slice());
        let argv: &'static mut [*mut c_char] = Box::leak(
            cstrings
                .iter()
                .map(|c| c.as_ptr().cast_mut())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let _ctl = control();
        let affinity = thread_affinity();
        // SAFETY: argv holds argc pointers to NUL-terminated strings that
        // are never freed; rte_eal_init runs once per process (guarded by
        // EAL's state under its lock).
        let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        // The EAL pins the calling thread to its first lcore; threads it
        // spawns later (elastic threads) would inherit that CPU. Elastic
        // threads pin themselves: give the caller its CPUs back.
        if let Some(set) = affinity {
            set_thread_affinity(&set);
        }
        if rc < 0 {
            let code = rte_errno();
            *state = EalState::Failed(code);
            return Err(DpdkError::EalInit {
                args: args.join(" "),
                code,
            });
        }
        let eal: &'static Eal = Box::leak(Box::new(Eal { args }));
        *state = EalState::Running(eal);
        Ok(eal)
    }

    /// The running EAL, if any.
    pub fn get() -> Option<&'static Eal> {
        match *EAL.lock().unwrap_or_else(|e| e.into_inner()) {
            EalState::Running(eal) => Some(eal),
            _ => None,
        }
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Probes a device after start-up (`rte_dev_probe`), e.g.
    /// `net_ring0` or `net_memif1,role=client,socket=/tmp/m.sock`.
    pub fn attach(&self, devargs: &str) -> Result<(), DpdkError> {
        let c = CString::new(devargs).map_err(|_| DpdkError::Nul(devargs.into()))?;
        let _ctl = control();
        // SAFETY: a NUL-terminated string; the EAL runs (self exists).
        let rc = unsafe { sys::rte_dev_probe(c.as_ptr()) };
        if rc < 0 {
            return Err(DpdkError::Attach {
                devargs: devargs.into(),
                code: -rc,
            });
        }
        Ok(())
    }

    /// Removes a virtual device attached with [`Eal::attach`] (its port
    /// must be closed). Errors are returned, not fatal: the device stays.
    pub fn detach_vdev(&self, name: &str) -> Result<(), DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::Nul(name.into()))?;
        let _ctl = control();
        detach_vdev_locked(name, &c)
    }
}

/// The calling thread's CPU set.
fn thread_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits (all-zero is valid); the call writes
    // at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Sets the calling thread's CPU set (failure only logged).
fn set_thread_affinity(set: &libc::cpu_set_t) {
    // SAFETY: reads size_of::<cpu_set_t>() bytes from a valid set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        log::warn!("dpdk: cannot restore the thread's CPUs after EAL start-up");
    }
}

fn detach_vdev_locked(name: &str, c: &CStr) -> Result<(), DpdkError> {
    // SAFETY: NUL-terminated strings; the caller holds the control lock.
    let rc = unsafe { sys::rte_eal_hotplug_remove(c"vdev".as_ptr(), c.as_ptr()) };
    if rc < 0 {
        return Err(DpdkError::Port {
            name: name.into(),
            call: "rte_eal_hotplug_remove",
            code: -rc,
        });
    }
    Ok(())
}

/// Makes the calling thread a DPDK lcore (once; undone at thread exit) so
/// that its mempool operations use a per-lcore cache.
fn register_thread() {
    struct Registered(Cell<bool>);
    impl Drop for Registered {
        fn drop(&mut self) {
            if self.0.get() {
                // SAFETY: this thread registered itself (below) and is
                // exiting; unregistering releases its lcore id.
                unsafe { sys::rte_thread_unregister() };
            }
        }
    }
    thread_local! {
        static REGISTERED: Registered = const { Registered(Cell::new(false)) };
    }
    // SAFETY: reads the calling thread's lcore id.
    if unsafe { sys::ix_rte_lcore_id() } != LCORE_ID_ANY {
        return; // an EAL thread, or registered already
    }
    let _ = REGISTERED.try_with(|r| {
        // SAFETY: the EAL is initialised (a port exists); registering
        // gives this thread a free lcore id, or leaves it without one.
        let rc = unsafe { sys::rte_thread_register() };
        // SAFETY: as above.
        let id = unsafe { sys::ix_rte_lcore_id() };
        if rc == 0 && id != LCORE_ID_ANY {
            r.0.set(true);
        } else {
            log::debug!("dpdk: thread runs without an lcore id (mempool cache off)");
        }
    });
}

/// How a port is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// The ethdev's name: a PCI address (`0000:01:00.0`) or a virtual
    /// device's name (`net_memif0`).
    pub name: String,
    /// A virtual device to attach before opening (`rte_dev_probe`
    /// arguments; its name must be `name`) and to detach when the port
    /// closes. `None` when the EAL probed the device.
    pub attach: Option<String>,
    /// RX/TX queue pairs: one per elastic thread.
    pub queues: u16,
    /// RX descriptors per queue (the device may adjust).
    pub rx_descriptors: u16,
    /// TX descriptors per queue (the device may adjust).
    pub tx_descriptors: u16,
    /// Mbufs in each queue's pool: at least the RX descriptors plus what
    /// TX keeps in flight.
    pub mbufs_per_queue: u32,
    /// Per-lcore mempool cache size.
    pub mbuf_cache: u32,
    /// RSS key and redirection table, programmed when the device hashes
    /// in hardware (see [`DpdkPort::rss_offloaded`]).
    pub rss: Option<RssConfig>,
    /// MAC address to give the port (`None`: keep the device's).
    pub mac: Option<EthernetAddress>,
    /// Receive every frame, whatever its destination address.
    pub promiscuous: bool,
}

impl PortConfig {
    /// `queues` queue pairs on the port `name`, 1024 descriptors each way,
    /// 4096 mbufs per queue, round-robin RSS over the default 128 flow
    /// groups, promiscuous.
    pub fn new(name: impl Into<String>, queues: u16) -> PortConfig {
        PortConfig {
            name: name.into(),
            attach: None,
            queues,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mbufs_per_queue: 4096,
            mbuf_cache: 256,
            rss: Some(RssConfig::round_robin(
                queues.max(1),
                crate::rss::DEFAULT_FLOW_GROUPS,
            )),
            mac: None,
            promiscuous: true,
        }
    }
}

/// Port counters (`rte_eth_stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Frames the device dropped for lack of RX descriptors.
    pub imissed: u64,
    /// Erroneous received frames.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A queue's mbuf pool.
struct Mempool(NonNull<sys::rte_mempool>);

/// What the port's handles and queues share.
struct PortShared {
    name: String,
    id: u16,
    driver: String,
    queues: u16,
    mac: EthernetAddress,
    /// Device RETA entries (0 when the device has no RSS).
    reta_size: u16,
    rss_offloaded: bool,
    /// The RSS key the device was configured with (DPDK reads it through a
    /// pointer during configuration).
    key: Box<[u8; RSS_KEY_LEN]>,
    /// Our flow-group table as last programmed.
    reta: Mutex<Vec<u16>>,
    pools: Vec<Mempool>,
    claimed: Vec<AtomicBool>,
    /// Set when the port was configured (then it must be closed).
    configured: bool,
    started: bool,
    /// The virtual device to detach after closing.
    detach: Option<CString>,
}

// SAFETY: the mempool pointers are only dereferenced by DPDK; a pool is
// used for allocation by the one thread that claimed its queue (and
// DPDK's default mempool ops are thread-safe in any case), and freed only
// in `Drop`, when no handle or queue remains. Everything else is plain
// data or synchronised (`Mutex`, atomics).
unsafe impl Send for PortShared {}
// SAFETY: see `Send`; shared access reads plain data, atomics and a mutex.
unsafe impl Sync for PortShared {}

impl Drop for PortShared {
    fn drop(&mut self) {
        let _ctl = control();
        if self.started {
            // SAFETY: the port is started and no queue handle remains (each
            // holds the `Arc` this drop ends).
            let rc = unsafe { sys::rte_eth_dev_stop(self.id) };
            if rc < 0 {
                log::warn!("port {}: rte_eth_dev_stop: {}", self.name, strerror(-rc));
            }
        }
        if self.configured {
            // SAFETY: stopped above (or never started); closing releases
            // its queues and the mbufs they hold, before the pools go.
            let rc = unsafe { sys::rte_eth_dev_close(self.id) };
            if rc < 0 {
                log::warn!("port {}: rte_eth_dev_close: {}", self.name, strerror(-rc));
            }
        }
        if let Some(dev) = &self.detach {
            if let Err(e) = detach_vdev_locked(&self.name, dev) {
                log::warn!("{e}");
            }
        }
        for p in &self.pools {
            // SAFETY: the pool was created by rte_pktmbuf_pool_create for
            // this port, whose queues are closed; nothing of ours holds an
            // mbuf of it (queues copy and free every mbuf within a call).
            unsafe { sys::rte_mempool_free(p.0.as_ptr()) };
        }
    }
}

/// Numbers mbuf pools uniquely within the process (DPDK names are global).
static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

/// An open, started DPDK port. Cloning shares it; the last handle (and
/// the last [`DpdkQueue`]) closes it.
#[derive(Clone)]
pub struct DpdkPort {
    shared: Arc<PortShared>,
}

impl fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkPort")
            .field("name", &self.shared.name)
            .field("id", &self.shared.id)
            .field("driver", &self.shared.driver)
            .field("queues", &self.shared.queues)
            .field("rss_offloaded", &self.shared.rss_offloaded)
            .finish()
    }
}

impl DpdkPort {
    /// Attaches (if asked), configures and starts a port: queue pairs, a
    /// mempool per queue, RSS when the device has it, MAC and promiscuous
    /// mode. Does not wait for the link ([`DpdkPort::wait_link`]).
    pub fn open(eal: &Eal, cfg: &PortConfig) -> Result<DpdkPort, DpdkError> {
        let cname =
            CString::new(cfg.name.as_str()).map_err(|_| DpdkError::Nul(cfg.name.clone()))?;
        if let Some(devargs) = &cfg.attach {
            eal.attach(devargs)?;
        }
        let _ctl = control();
        let name = cfg.name.clone();
        let port_err = |call, rc: i32| DpdkError::Port {
            name: name.clone(),
            call,
            code: -rc,
        };
        let mut id = 0u16;
        // SAFETY: a NUL-terminated name and a valid out-pointer.
        if unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) } != 0 {
            if cfg.attach.is_some() {
                // Do not leave behind the device we attached.
                let _ = detach_vdev_locked(&cfg.name, &cname);
            }
            return Err(DpdkError::NoSuchPort { name });
        }
        let mut shared = PortShared {
            name: name.clone(),
            id,
            driver: String::new(),
            queues: cfg.queues,
            mac: EthernetAddress([0; 6]),
            reta_size: 0,
            rss_offloaded: false,
            key: Box::new(cfg.rss.as_ref().map_or([0; RSS_KEY_LEN], |r| r.key)),
            reta: Mutex::new(cfg.rss.as_ref().map(|r| r.reta.clone()).unwrap_or_default()),
            pools: Vec::new(),
            claimed: (0..cfg.queues).map(|_| AtomicBool::new(false)).collect(),
            configured: false,
            started: false,
            detach: cfg.attach.as_ref().map(|_| cname.clone()),
        };

        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: a valid port id and out-pointer.
        let rc = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
        if rc != 0 {
            return Err(port_err("rte_eth_dev_info_get", rc));
        }
        if !info.driver_name.is_null() {
            // SAFETY: the driver's name, a static NUL-terminated string.
            shared.driver = unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned();
        }
        if cfg.queues == 0 || cfg.queues > info.max_rx_queues || cfg.queues > info.max_tx_queues {
            return Err(DpdkError::TooManyQueues {
                name,
                driver: shared.driver.clone(),
                asked: cfg.queues,
                rx: info.max_rx_queues,
                tx: info.max_tx_queues,
            });
        }

        let mut conf = sys::rte_eth_conf::default();
        // SAFETY: returns a constant.
        let hf = unsafe { sys::ix_rte_eth_rss_ip_tcp_udp() } & info.flow_type_rss_offloads;
        if let Some(rss) = &cfg.rss {
            if hf != 0 && info.reta_size > 0 {
                if info.hash_key_size != 0 && usize::from(info.hash_key_size) != RSS_KEY_LEN {
                    return Err(DpdkError::RssKeyLen {
                        name,
                        device: info.hash_key_size,
                    });
                }
                check_reta(&name, &rss.reta, cfg.queues, info.reta_size)?;
                conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
                conf.rx_adv_conf.rss_conf.rss_key = shared.key.as_mut_ptr();
                conf.rx_adv_conf.rss_conf.rss_key_len = RSS_KEY_LEN as u8;
                conf.rx_adv_conf.rss_conf.rss_hf = hf;
                shared.rss_offloaded = true;
                shared.reta_size = info.reta_size;
            } else if cfg.queues > 1 {
                log::info!(
                    "port {name} ({}): no hardware RSS; queue k receives what the peer sends on its queue k",
                    shared.driver
                );
            }
        }
        // SAFETY: valid port id; `conf` outlives the call and its key
        // pointer (into `shared.key`, boxed) outlives the port.
        let rc = unsafe { sys::rte_eth_dev_configure(id, cfg.queues, cfg.queues, &conf) };
        if rc != 0 {
            return Err(port_err("rte_eth_dev_configure", rc));
        }
        shared.configured = true;
        let (mut rxd, mut txd) = (cfg.rx_descriptors, cfg.tx_descriptors);
        // SAFETY: valid port id and out-pointers.
        let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rxd, &mut txd) };
        if rc != 0 {
            return Err(port_err("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        // SAFETY: valid port id.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 {
            sys::SOCKET_ID_ANY
        } else {
            socket
        };
        for q in 0..cfg.queues {
            let seq = POOL_SEQ.fetch_add(1, Ordering::Relaxed);
            let pool_name = CString::new(format!("ix{seq}p{id}q{q}")).expect("no NUL in digits");
            let cache = cfg.mbuf_cache.min(cfg.mbufs_per_queue / 2).min(512);
            // SAFETY: a NUL-terminated name unique in the process; sizes
            // within DPDK's limits (cache ≤ 512 and ≤ half the pool).
            let mp = unsafe {
                sys::rte_pktmbuf_pool_create(
                    pool_name.as_ptr(),
                    cfg.mbufs_per_queue,
                    cache,
                    0,
                    sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                    socket,
                )
            };
            let Some(mp) = NonNull::new(mp) else {
                return Err(DpdkError::Mempool {
                    name,
                    queue: q,
                    mbufs: cfg.mbufs_per_queue,
                    code: rte_errno(),
                });
            };
            shared.pools.push(Mempool(mp));
            let queue_err = |call, rc: i32| DpdkError::Queue {
                name: name.clone(),
                queue: q,
                call,
                code: -rc,
            };
            // SAFETY: configured port, queue index below the configured
            // count, a live mempool that outlives the queue (freed after
            // close), default queue configuration (NULL).
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(
                    id,
                    q,
                    rxd,
                    socket as u32,
                    std::ptr::null(),
                    mp.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(queue_err("rte_eth_rx_queue_setup", rc));
            }
            // SAFETY: as above, default TX configuration.
            let rc =
                unsafe { sys::rte_eth_tx_queue_setup(id, q, txd, socket as u32, std::ptr::null()) };
            if rc != 0 {
                return Err(queue_err("rte_eth_tx_queue_setup", rc));
            }
        }
        if let Some(mac) = cfg.mac {
            let mut addr = sys::rte_ether_addr { addr_bytes: mac.0 };
            // SAFETY: valid port id and address.
            let rc = unsafe { sys::rte_eth_dev_default_mac_addr_set(id, &mut addr) };
            if rc != 0 && !cfg.promiscuous {
                return Err(port_err("rte_eth_dev_default_mac_addr_set", rc));
            }
        }
        if cfg.promiscuous {
            // SAFETY: valid port id. Devices that cannot (or need not)
            // filter answer -ENOTSUP; they pass everything anyway.
            let rc = unsafe { sys::rte_eth_promiscuous_enable(id) };
            if rc != 0 && rc != -libc::ENOTSUP {
                return Err(port_err("rte_eth_promiscuous_enable", rc));
            }
        }
        // SAFETY: a configured port with every queue set up.
        let rc = unsafe { sys::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(port_err("rte_eth_dev_start", rc));
        }
        shared.started = true;
        if shared.rss_offloaded {
            // Some drivers take the key only here, not from the
            // configuration; those that take it only there say ENOTSUP.
            // Newer DPDK releases add fields: leave them zero.
            #[allow(clippy::needless_update)]
            let mut rss_conf = sys::rte_eth_rss_conf {
                rss_key: shared.key.as_mut_ptr(),
                rss_key_len: RSS_KEY_LEN as u8,
                rss_hf: hf,
                ..Default::default()
            };
            // SAFETY: a started port; the key holds rss_key_len bytes and
            // outlives the call.
            let rc = unsafe { sys::rte_eth_dev_rss_hash_update(id, &mut rss_conf) };
            if rc != 0 && rc != -libc::ENOTSUP {
                return Err(port_err("rte_eth_dev_rss_hash_update", rc));
            }
            let reta = shared
                .reta
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            program_reta(&shared, &reta, None)?;
        }
        let mut addr = sys::rte_ether_addr::default();
        // SAFETY: valid port id and out-pointer.
        let rc = unsafe { sys::rte_eth_macaddr_get(id, &mut addr) };
        if rc != 0 {
            return Err(port_err("rte_eth_macaddr_get", rc));
        }
        shared.mac = EthernetAddress(addr.addr_bytes);
        Ok(DpdkPort {
            shared: Arc::new(shared),
        })
    }

    /// The port's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// DPDK's port id.
    pub fn port_id(&self) -> u16 {
        self.shared.id
    }

    /// The device's driver (e.g. `net_memif`).
    pub fn driver(&self) -> &str {
        &self.shared.driver
    }

    /// Number of queue pairs.
    pub fn queues(&self) -> u16 {
        self.shared.queues
    }

    /// The port's MAC address.
    pub fn mac(&self) -> EthernetAddress {
        self.shared.mac
    }

    /// Whether the device hashes with our key and redirection table (else
    /// queue *k* receives what the peer puts on queue *k*).
    pub fn rss_offloaded(&self) -> bool {
        self.shared.rss_offloaded
    }

    /// Whether the link is up.
    pub fn link_up(&self) -> bool {
        // SAFETY: a started port's id.
        unsafe { sys::ix_rte_eth_link_up(self.shared.id) == 1 }
    }

    /// Waits until the link is up (checked every millisecond).
    pub fn wait_link(&self, timeout: Duration) -> Result<(), DpdkError> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.link_up() {
            if std::time::Instant::now() >= deadline {
                return Err(DpdkError::LinkDown {
                    name: self.shared.name.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Claims queue pair `q` for the calling thread, receiving into
    /// `pool`. The thread becomes a DPDK lcore if it was none.
    pub fn queue(&self, q: u16, pool: Pool) -> Result<DpdkQueue, DpdkError> {
        let s = &self.shared;
        let Some(flag) = s.claimed.get(usize::from(q)) else {
            return Err(DpdkError::NoSuchQueue {
                name: s.name.clone(),
                queue: q,
                queues: s.queues,
            });
        };
        if flag.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::QueueTaken {
                name: s.name.clone(),
                queue: q,
            });
        }
        register_thread();
        Ok(DpdkQueue {
            port_id: s.id,
            queue: q,
            mempool: s.pools[usize::from(q)].0,
            pool,
            mbufs: Box::new([std::ptr::null_mut(); BURST]),
            frame_of: Box::new([0; BURST]),
            stats: QueueStats::default(),
            shared: self.shared.clone(),
        })
    }

    /// The flow-group table as last programmed (our groups, not the
    /// device's entries).
    pub fn flow_groups(&self) -> Vec<u16> {
        self.shared
            .reta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Moves flow groups to queues: `(group, queue)` pairs, written into
    /// the device's redirection table (`rte_eth_dev_rss_reta_update`, only
    /// the entries of those groups). The step of a flow-group migration
    /// that redirects the hardware.
    pub fn update_flow_groups(&self, moves: &[(usize, u16)]) -> Result<(), DpdkError> {
        let s = &self.shared;
        if !s.rss_offloaded {
            return Err(DpdkError::NoRss {
                name: s.name.clone(),
                driver: s.driver.clone(),
            });
        }
        let _ctl = control();
        let mut reta = s.reta.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = reta.clone();
        for &(group, queue) in moves {
            if group >= next.len() || queue >= s.queues {
                return Err(DpdkError::RetaEntry {
                    name: s.name.clone(),
                    group,
                    queue,
                    groups: next.len(),
                    queues: s.queues,
                });
            }
            next[group] = queue;
        }
        let groups: Vec<usize> = moves.iter().map(|m| m.0).collect();
        program_reta(s, &next, Some(&groups))?;
        *reta = next;
        Ok(())
    }

    /// The device's redirection table as it reports it
    /// (`rte_eth_dev_rss_reta_query`), one queue per device entry.
    pub fn device_reta(&self) -> Result<Vec<u16>, DpdkError> {
        let s = &self.shared;
        if !s.rss_offloaded {
            return Err(DpdkError::NoRss {
                name: s.name.clone(),
                driver: s.driver.clone(),
            });
        }
        let size = usize::from(s.reta_size);
        let group = sys::RTE_ETH_RETA_GROUP_SIZE as usize;
        let mut conf: Vec<sys::rte_eth_rss_reta_entry64> = (0..size.div_ceil(group))
            .map(|g| sys::rte_eth_rss_reta_entry64 {
                mask: group_mask(size - g * group),
                reta: [0; sys::RTE_ETH_RETA_GROUP_SIZE as usize],
            })
            .collect();
        let _ctl = control();
        // SAFETY: `conf` holds reta_size entries in groups of 64, as the
        // call expects for this port's RETA size.
        let rc = unsafe { sys::rte_eth_dev_rss_reta_query(s.id, conf.as_mut_ptr(), s.reta_size) };
        if rc != 0 {
            return Err(DpdkError::Port {
                name: s.name.clone(),
                call: "rte_eth_dev_rss_reta_query",
                code: -rc,
            });
        }
        Ok((0..size).map(|i| conf[i / group].reta[i % group]).collect())
    }

    /// The RSS key the device hashes with (`rte_eth_dev_rss_hash_conf_get`).
    pub fn device_rss_key(&self) -> Result<[u8; RSS_KEY_LEN], DpdkError> {
        let s = &self.shared;
        let mut key = [0u8; RSS_KEY_LEN];
        let mut conf = sys::rte_eth_rss_conf {
            rss_key: key.as_mut_ptr(),
            rss_key_len: RSS_KEY_LEN as u8,
            ..Default::default()
        };
        let _ctl = control();
        // SAFETY: the key buffer holds rss_key_len bytes and outlives the
        // call.
        let rc = unsafe { sys::rte_eth_dev_rss_hash_conf_get(s.id, &mut conf) };
        if rc != 0 {
            return Err(DpdkError::Port {
                name: s.name.clone(),
                call: "rte_eth_dev_rss_hash_conf_get",
                code: -rc,
            });
        }
        Ok(key)
    }

    /// The device's counters.
    pub fn port_stats(&self) -> Result<PortStats, DpdkError> {
        let mut st = sys::rte_eth_stats::default();
        // SAFETY: valid port id and out-pointer.
        let rc = unsafe { sys::rte_eth_stats_get(self.shared.id, &mut st) };
        if rc != 0 {
            return Err(DpdkError::Port {
                name: self.shared.name.clone(),
                call: "rte_eth_stats_get",
                code: -rc,
            });
        }
        Ok(PortStats {
            ipackets: st.ipackets,
            opackets: st.opackets,
            ibytes: st.ibytes,
            obytes: st.obytes,
            imissed: st.imissed,
            ierrors: st.ierrors,
            oerrors: st.oerrors,
            rx_nombuf: st.rx_nombuf,
        })
    }
}

/// The mask of a RETA group with `left` entries remaining (all 64 bits
/// when at least 64 remain).
fn group_mask(left: usize) -> u64 {
    if left >= 64 {
        u64::MAX
    } else {
        (1u64 << left) - 1
    }
}

/// Checks that our table fits the port and lays onto the device's.
fn check_reta(name: &str, reta: &[u16], queues: u16, device: u16) -> Result<(), DpdkError> {
    if reta.is_empty() || usize::from(device) % reta.len() != 0 {
        return Err(DpdkError::RetaSize {
            name: name.into(),
            ours: reta.len(),
            device,
        });
    }
    if let Some((group, &queue)) = reta.iter().enumerate().find(|(_, &q)| q >= queues) {
        return Err(DpdkError::RetaEntry {
            name: name.into(),
            group,
            queue,
            groups: reta.len(),
            queues,
        });
    }
    Ok(())
}

/// Writes our flow-group table into the device's RETA: device entry `i`
/// is flow group `i mod groups` (the device indexes by the hash's low
/// bits, we by the hash modulo the group count, which divides the device's
/// size: the same group either way). Only the entries of `only` when
/// given. The caller holds the control lock.
fn program_reta(s: &PortShared, reta: &[u16], only: Option<&[usize]>) -> Result<(), DpdkError> {
    check_reta(&s.name, reta, s.queues, s.reta_size)?;
    let size = usize::from(s.reta_size);
    let group = sys::RTE_ETH_RETA_GROUP_SIZE as usize;
    let mut conf: Vec<sys::rte_eth_rss_reta_entry64> = (0..size.div_ceil(group))
        .map(|_| sys::rte_eth_rss_reta_entry64 {
            mask: 0,
            reta: [0; sys::RTE_ETH_RETA_GROUP_SIZE as usize],
        })
        .collect();
    for i in 0..size {
        let g = i % reta.len();
        if only.is_some_and(|o| !o.contains(&g)) {
            continue;
        }
        let e = &mut conf[i / group];
        e.mask |= 1 << (i % group);
        e.reta[i % group] = reta[g];
    }
    // SAFETY: `conf` holds reta_size entries in groups of 64 with masks
    // naming the entries to write, all queue indices below the port's
    // queue count (checked).
    let rc = unsafe { sys::rte_eth_dev_rss_reta_update(s.id, conf.as_mut_ptr(), s.reta_size) };
    if rc != 0 {
        return Err(DpdkError::Port {
            name: s.name.clone(),
            call: "rte_eth_dev_rss_reta_update",
            code: -rc,
        });
    }
    Ok(())
}

/// One RX/TX queue pair of a [`DpdkPort`], driven by the thread that
/// claimed it (`!Send`, like its [`Pool`]).
pub struct DpdkQueue {
    port_id: u16,
    queue: u16,
    mempool: NonNull<sys::rte_mempool>,
    pool: Pool,
    /// Mbufs of the burst in progress.
    mbufs: Box<[*mut sys::rte_mbuf; BURST]>,
    /// On TX: index (in the caller's vector) of the frame in each mbuf.
    frame_of: Box<[usize; BURST]>,
    stats: QueueStats,
    /// Keeps the port (and the mempool) open.
    shared: Arc<PortShared>,
}

impl fmt::Debug for DpdkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkQueue")
            .field("port", &self.shared.name)
            .field("queue", &self.queue)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        self.shared.claimed[usize::from(self.queue)].store(false, Ordering::Release);
    }
}

impl DpdkQueue {
    /// The queue's index.
    pub fn id(&self) -> u16 {
        self.queue
    }

    /// The port's name.
    pub fn port_name(&self) -> &str {
        &self.shared.name
    }

    /// Copies the frame in mbuf chain `m` into a fresh slot of the pool.
    /// `None` when it does not fit a slot or the pool is empty.
    fn copy_in(&self, m: *mut sys::rte_mbuf) -> Option<PktBuf> {
        // SAFETY: `m` is the head of a chain rx_burst just handed us.
        let total = unsafe { sys::ix_rte_pktmbuf_pkt_len(m) } as usize;
        if total > BUF_DATA {
            return None;
        }
        let mut buf = self.pool.alloc()?;
        let mut seg = m;
        while !seg.is_null() {
            // SAFETY: `seg` is a segment of a received chain, which is ours
            // until freed (the device no longer writes it); its data area
            // holds data_len bytes at mtod; the slice lives only for the
            // copy.
            let bytes = unsafe {
                let len = usize::from(sys::ix_rte_pktmbuf_data_len(seg));
                std::slice::from_raw_parts(sys::ix_rte_pktmbuf_mtod(seg).cast::<u8>(), len)
            };
            if !buf.extend_from_slice(bytes) {
                return None; // segments longer than pkt_len said
            }
            // SAFETY: as above.
            seg = unsafe { sys::ix_rte_pktmbuf_next(seg) };
        }
        Some(buf)
    }

    /// Takes mbufs for up to `want` frames; how many it got.
    fn alloc_mbufs(&mut self, want: usize) -> usize {
        // SAFETY: `mbufs` has room for BURST ≥ want pointers; the mempool
        // lives as long as the port.
        let rc = unsafe {
            sys::ix_rte_pktmbuf_alloc_bulk(
                self.mempool.as_ptr(),
                self.mbufs.as_mut_ptr(),
                want as u32,
            )
        };
        if rc == 0 {
            return want;
        }
        // Not `want` left (mbufs in flight in the TX ring): take what there is.
        let mut got = 0;
        while got < want {
            // SAFETY: as above.
            let m = unsafe { sys::ix_rte_pktmbuf_alloc(self.mempool.as_ptr()) };
            if m.is_null() {
                break;
            }
            self.mbufs[got] = m;
            got += 1;
        }
        got
    }
}

impl QueuePair for DpdkQueue {
    fn rx_burst(&mut self, out: &mut Vec<PktBuf>, max: usize) -> usize {
        let mut total = 0;
        while total < max {
            let want = (max - total).min(BURST) as u16;
            // SAFETY: our claimed queue of a started port; `mbufs` has room
            // for BURST ≥ want pointers.
            let n = usize::from(unsafe {
                sys::ix_rte_eth_rx_burst(self.port_id, self.queue, self.mbufs.as_mut_ptr(), want)
            });
            for i in 0..n {
                let m = self.mbufs[i];
                match self.copy_in(m) {
                    Some(buf) => {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += buf.len() as u64;
                        out.push(buf);
                        total += 1;
                    }
                    None => self.stats.rx_dropped += 1,
                }
            }
            if n > 0 {
                // SAFETY: the first n entries are the chains just received,
                // each freed exactly once, here.
                unsafe { sys::rte_pktmbuf_free_bulk(self.mbufs.as_mut_ptr(), n as u32) };
            }
            if n < usize::from(want) {
                break;
            }
        }
        total
    }

    fn tx_burst(&mut self, frames: &mut Vec<PktBuf>) -> usize {
        let mut done = 0; // frames taken: sent, or dropped as unsendable
        while done < frames.len() {
            let chunk = (frames.len() - done).min(BURST);
            let got = self.alloc_mbufs(chunk);
            if got == 0 {
                break; // every mbuf is in flight: try again next turn
            }
            // One mbuf per frame. A frame that fits no mbuf is skipped (its
            // mbuf goes to the next frame) and dropped once it is taken.
            let (mut filled, mut next, mut unsendable) = (0, done, 0);
            let mut unsendable_at = [0usize; BURST];
            while filled < got && next < done + chunk {
                let data = frames[next].data();
                let m = self.mbufs[filled];
                let dst = match u16::try_from(data.len()) {
                    // SAFETY: `m` is a fresh, empty mbuf of ours; append
                    // returns room for `len` bytes in its data area, or NULL
                    // (changing nothing) when it has less.
                    Ok(len) => unsafe { sys::ix_rte_pktmbuf_append(m, len) },
                    Err(_) => std::ptr::null_mut(),
                };
                if dst.is_null() {
                    unsendable_at[unsendable] = next;
                    unsendable += 1;
                    next += 1;
                    continue;
                }
                // SAFETY: `dst` has data.len() writable bytes in the mbuf,
                // which nothing else references; the source is our slot.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst.cast::<u8>(), data.len())
                };
                self.frame_of[filled] = next;
                filled += 1;
                next += 1;
            }
            let sent = if filled == 0 {
                0
            } else {
                // SAFETY: our claimed queue; the first `filled` mbufs hold
                // whole frames and pass to the driver, which frees them.
                usize::from(unsafe {
                    sys::ix_rte_eth_tx_burst(
                        self.port_id,
                        self.queue,
                        self.mbufs.as_mut_ptr(),
                        filled as u16,
                    )
                })
            };
            for i in 0..sent {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += frames[self.frame_of[i]].len() as u64;
            }
            if got > sent {
                // SAFETY: mbufs sent..got are still ours (not sent, or not
                // filled), each freed once, here.
                unsafe {
                    sys::rte_pktmbuf_free_bulk(
                        self.mbufs.as_mut_ptr().add(sent),
                        (got - sent) as u32,
                    )
                };
            }
            // Taken: everything before the first frame the driver refused.
            let taken_end = if sent < filled {
                self.frame_of[sent]
            } else {
                next
            };
            let dropped = unsendable_at[..unsendable]
                .iter()
                .filter(|&&i| i < taken_end)
                .count();
            self.stats.tx_dropped += dropped as u64;
            done = taken_end;
            if sent < filled {
                break; // the TX ring is full
            }
        }
        frames.drain(..done);
        done
    }

    fn pool(&self) -> &Pool {
        &self.pool
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

/// The slot layout matches an mbuf's default headroom, which the zero-copy
/// design in the module docs relies on.
const _: () = assert!(BUF_HEADROOM == sys::RTE_PKTMBUF_HEADROOM as usize);
