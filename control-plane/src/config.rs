//! ixcpd's configuration: which CPUs, how much packet memory and which NIC
//! ports it may give out, and where its API socket lives.
//!
//! The file is TOML. Every key is optional except the ports:
//!
//! ```toml
//! cores = "0-1"          # or [0, 1], or "all" (the default: every online CPU)
//! memory = "256 MiB"     # packet-buffer budget: bytes, or KiB/MiB/GiB (default 256 MiB)
//! hugepages = "auto"     # auto | on | off (default auto)
//! policy = "none"        # default core policy for dataplanes: none | load
//!
//! [api]
//! socket = "/run/ix/ixcpd.sock"   # overridden by `ixcpd --socket` or $IX_SOCKET
//! mode = 0o660                    # or "0660"
//! group = "ix"                    # name or gid; members may use the API
//!
//! [[ports]]
//! name = "wire0"
//! kind = "memif"                  # memif | af_packet | dpdk
//! socket = "/run/ix/wire0.sock"   # memif control socket
//! role = "master"                 # master | slave
//! queues = 2                      # RX/TX queue pairs: the most cores a dataplane gets here
//! ip = "10.77.0.1/24"
//! mac = "02:49:0a:4d:00:01"       # optional: derived from the IP when absent
//! gateway = "10.77.0.254"         # optional
//!
//! [[ports]]
//! name = "veth0"
//! kind = "af_packet"
//! interface = "veth0"
//! queues = 1                      # default 1; more use a PACKET_FANOUT group
//! ip = "10.78.0.1/24"
//!
//! [[ports]]
//! name = "nic0"
//! kind = "dpdk"                   # a DPDK ethdev (dataplanes built with `dpdk`)
//! device = "0000:01:00.0"         # a PCI address (bound to vfio-pci) or a vdev's name
//! # vdev = "net_memif0,role=server,socket=/run/ix/m0.sock"  # creates a virtual device
//! queues = 2
//! ip = "10.79.0.1/24"
//! ```
//!
//! Validation happens in one place, [`Config::from_toml`], against a
//! [`Host`] (online CPUs, free hugepages). It reports every problem it
//! finds, each naming its key: `ports[1].ip: "10.0.0.300" is not an IPv4
//! address`, `cores: cpu 7 does not exist on this machine (0-1)`. Unknown
//! keys are errors too, so a typo never passes silently.
//!
//! Two memif ports may name the same socket only as the two ends of one
//! wire on this machine (one `master`, one `slave`); any other reuse of a
//! socket path, an IP, a MAC or an af_packet interface is refused.
//!
//! Where a MAC is not given it is derived as `02:49:a:b:c:d` from the port's
//! IPv4 address `a.b.c.d` (a locally administered unicast address, unique
//! because port IPs are).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::host::{Host, SMALL_PAGE};
use crate::resources::{BUF_SIZE, FLOW_GROUPS, MIN_POOL_BUFFERS};
use crate::units::{parse_size, round_up, Bytes, CpuList, MIB};

/// Where the API socket lives unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ix/ixcpd.sock";
/// Environment variable that overrides the configured socket path.
pub const SOCKET_ENV: &str = "IX_SOCKET";
/// Environment variable naming the dataplane a launched program registers
/// as (set by ixcpd's `launch`).
pub const DATAPLANE_ENV: &str = "IX_DATAPLANE";
/// Permission bits of the API socket unless configured otherwise.
pub const DEFAULT_MODE: u32 = 0o660;
/// Packet-memory budget unless configured otherwise.
pub const DEFAULT_MEMORY: u64 = 256 * MIB;
/// Longest socket path a `sockaddr_un` holds (108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Longest Linux interface name (`IFNAMSIZ` - 1).
pub const MAX_IFNAME: usize = 15;
/// Longest port or dataplane name.
pub const MAX_NAME: usize = 32;
/// Most queues a port may have: more than one per flow group is useless.
pub const MAX_QUEUES: u16 = FLOW_GROUPS as u16;

/// Whether packet buffers live in hugepages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HugePages {
    /// Hugepages when enough are free for the whole budget, else 4 KiB pages.
    Auto,
    /// Hugepages or refuse to start.
    On,
    /// Always 4 KiB pages.
    Off,
}

impl HugePages {
    fn name(self) -> &'static str {
        match self {
            HugePages::Auto => "auto",
            HugePages::On => "on",
            HugePages::Off => "off",
        }
    }
}

/// How a dataplane's core count changes with load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Cores change only when an operator says so (`ixctl cores`).
    None,
    /// Cores follow queue depth and idle time, with hysteresis.
    Load,
}

impl Policy {
    /// The name used in the config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Load => "load",
        }
    }
}

/// Which end of a memif wire a port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemifRole {
    /// Creates the control socket and the shared regions.
    Master,
    /// Connects to the master's socket.
    Slave,
}

impl MemifRole {
    /// The name used in the config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            MemifRole::Master => "master",
            MemifRole::Slave => "slave",
        }
    }
}

/// The NIC backend of a port and its backend-specific settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortKind {
    /// A shared-memory packet interface (DPDK/VPP memif).
    Memif {
        /// The memif control socket.
        socket: PathBuf,
        /// Which end of the wire this port is.
        role: MemifRole,
        /// RX/TX queue pairs.
        queues: u16,
    },
    /// A Linux interface through `AF_PACKET` rings.
    AfPacket {
        /// The Linux interface name.
        interface: String,
        /// RX/TX queue pairs (sockets in one fanout group).
        queues: u16,
    },
    /// A DPDK ethdev, driven by a dataplane built with the `dpdk` feature.
    Dpdk {
        /// The ethdev's name: a PCI address, or the virtual device's name.
        device: String,
        /// DPDK device arguments creating a virtual device named `device`
        /// (`net_memif0,role=server,socket=…`); `None` for a PCI device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vdev: Option<String>,
        /// RX/TX queue pairs.
        queues: u16,
    },
}

impl PortKind {
    /// The backend's name as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            PortKind::Memif { .. } => "memif",
            PortKind::AfPacket { .. } => "af_packet",
            PortKind::Dpdk { .. } => "dpdk",
        }
    }

    /// RX/TX queue pairs the port has.
    pub fn queues(&self) -> u16 {
        match self {
            PortKind::Memif { queues, .. }
            | PortKind::AfPacket { queues, .. }
            | PortKind::Dpdk { queues, .. } => *queues,
        }
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The locally administered address `02:49:a:b:c:d` for IPv4 `a.b.c.d`.
    pub fn derived_from(ip: Ipv4Addr) -> MacAddr {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x02, 0x49, a, b, c, d])
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (hex digits, either case).
    pub fn parse(text: &str) -> Option<MacAddr> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut out {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MacAddr::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a MAC address")))
    }
}

/// One NIC port ixcpd may hand to a dataplane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// The port's name, used by `ixctl launch --port`.
    pub name: String,
    /// Backend and its settings.
    #[serde(flatten)]
    pub kind: PortKind,
    /// The dataplane's IPv4 address on this port.
    pub ip: Ipv4Addr,
    /// Prefix length of the port's subnet.
    pub prefix: u8,
    /// The dataplane's MAC on this port.
    pub mac: MacAddr,
    /// Whether `mac` was derived from the IP rather than configured.
    pub mac_derived: bool,
    /// Next hop for destinations outside the subnet.
    pub gateway: Option<Ipv4Addr>,
}

/// The group allowed to use the API socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// The name as configured, when given by name.
    pub name: Option<String>,
    /// The numeric group id.
    pub gid: u32,
}

/// Where and how the API socket is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// Permission bits given to the socket file.
    pub mode: u32,
    /// Group given to the socket file; its members are authorised.
    pub group: Option<GroupConfig>,
}

/// The packet-memory budget and its page size, resolved against the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes of packet buffers ixcpd may hand out in total.
    pub budget: u64,
    /// The hugepage setting as configured.
    pub hugepages: HugePages,
    /// Whether buffer pools are made of hugepages (resolved from
    /// `hugepages` and the host's free hugepages).
    pub huge: bool,
    /// Page size pools are rounded to: the hugepage size when `huge`.
    pub page_size: u64,
}

impl MemoryConfig {
    /// The smallest budget that holds one buffer pool.
    pub fn minimum(page_size: u64) -> u64 {
        round_up(u64::from(MIN_POOL_BUFFERS) * BUF_SIZE, page_size)
    }
}

/// A validated ixcpd configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// CPUs ixcpd may give out, ascending.
    pub cores: Vec<u32>,
    /// The packet-memory budget.
    pub memory: MemoryConfig,
    /// NIC ports, in config order.
    pub ports: Vec<PortConfig>,
    /// The API socket.
    pub api: ApiConfig,
    /// Default core policy for dataplanes.
    pub policy: Policy,
}

/// What is wrong with one key of a config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A required key is absent.
    #[error("missing (this key is required)")]
    Missing,
    /// A key the config does not know.
    #[error("unknown key (expected one of: {})", .allowed.join(", "))]
    UnknownKey {
        /// The keys allowed at this place.
        allowed: &'static [&'static str],
    },
    /// The value has the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the key takes.
        expected: &'static str,
        /// The TOML type given.
        found: &'static str,
    },
    /// A value outside a fixed set of words.
    #[error("{value:?} is not one of: {}", .allowed.join(", "))]
    NotOneOf {
        /// What was given.
        value: String,
        /// The accepted words.
        allowed: &'static [&'static str],
    },
    /// A CPU list that does not parse.
    #[error("{value:?} is not a CPU list (write \"all\", \"0-3,6\" or [0, 1])")]
    NotCpuList {
        /// What was given.
        value: String,
    },
    /// A CPU number this machine does not have.
    #[error("cpu {cpu} does not exist on this machine ({online})")]
    NoSuchCpu {
        /// The CPU asked for.
        cpu: u32,
        /// The CPUs that are online.
        online: CpuList,
    },
    /// A CPU listed twice.
    #[error("cpu {cpu} is listed twice")]
    DuplicateCpu {
        /// The CPU.
        cpu: u32,
    },
    /// An empty CPU list.
    #[error("no CPU to give out (list at least one)")]
    NoCores,
    /// A size that does not parse.
    #[error("{value:?} is not a size (write e.g. \"256 MiB\", \"1 GiB\" or a number of bytes)")]
    NotSize {
        /// What was given.
        value: String,
    },
    /// A memory budget below one buffer pool.
    #[error(
        "{} is too small (need at least {}: one pool of {MIN_POOL_BUFFERS} buffers of {BUF_SIZE} B)",
        Bytes(*.budget), Bytes(*.minimum)
    )]
    MemoryTooSmall {
        /// The configured budget.
        budget: u64,
        /// The smallest usable budget.
        minimum: u64,
    },
    /// `hugepages = "on"` without enough free hugepages.
    #[error(
        "\"on\" but {free} hugepages of {} are free and the memory budget needs {need} \
         (reserve them: echo {need} > /proc/sys/vm/nr_hugepages, or set hugepages = \"auto\")",
        Bytes(*.size)
    )]
    NotEnoughHugepages {
        /// Hugepages the budget needs.
        need: u64,
        /// Hugepages free.
        free: u64,
        /// Hugepage size.
        size: u64,
    },
    /// An IPv4 address that does not parse.
    #[error("{value:?} is not an IPv4 address")]
    NotIpv4 {
        /// What was given (the address part).
        value: String,
    },
    /// An address without `/prefix`.
    #[error("{value:?} has no prefix length (write e.g. \"{value}/24\")")]
    NoPrefix {
        /// What was given.
        value: String,
    },
    /// A prefix length outside 1..=32.
    #[error("prefix length {value:?} is not between 1 and 32")]
    BadPrefix {
        /// What was given after the slash.
        value: String,
    },
    /// An address that cannot be a host's own.
    #[error("{addr} cannot be used: {why}")]
    NotHostAddress {
        /// The address.
        addr: Ipv4Addr,
        /// Why not.
        why: &'static str,
    },
    /// A gateway outside the port's subnet.
    #[error("{gateway} is not inside the port's subnet {ip}/{prefix}")]
    GatewayOutsideSubnet {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The port's address.
        ip: Ipv4Addr,
        /// The port's prefix length.
        prefix: u8,
    },
    /// A MAC address that does not parse.
    #[error("{value:?} is not a MAC address (write e.g. \"02:00:00:00:00:01\")")]
    NotMac {
        /// What was given.
        value: String,
    },
    /// A MAC address a port cannot have.
    #[error("{mac} cannot be used: {why}")]
    BadMac {
        /// The address.
        mac: MacAddr,
        /// Why not.
        why: &'static str,
    },
    /// A port name, or an interface name, that is not usable.
    #[error("{value:?} is not a valid name: {rule}")]
    BadName {
        /// What was given.
        value: String,
        /// The naming rule.
        rule: &'static str,
    },
    /// A value another key already has.
    #[error("{value} is already used by {first}")]
    Duplicate {
        /// The value, as displayed.
        value: String,
        /// The key that has it first.
        first: String,
    },
    /// Both ends of a memif wire configured with the same role.
    #[error(
        "{socket:?} is already the {} end at {first}; the two ports of one memif wire \
         must be one master and one slave",
        .role.name()
    )]
    SameRole {
        /// The shared socket path.
        socket: PathBuf,
        /// The role both ports have.
        role: MemifRole,
        /// The key of the first port.
        first: String,
    },
    /// A third port on one memif socket.
    #[error("{socket:?} already joins {first} and {second}: a memif wire has two ends")]
    WireFull {
        /// The shared socket path.
        socket: PathBuf,
        /// The key of the first end.
        first: String,
        /// The key of the second end.
        second: String,
    },
    /// A queue count out of range.
    #[error("{value} queues: must be between 1 and {MAX_QUEUES}")]
    BadQueues {
        /// What was given.
        value: i64,
    },
    /// A socket path that cannot be bound.
    #[error("{path:?} cannot be a socket path: {why}")]
    BadSocketPath {
        /// What was given.
        path: String,
        /// Why not.
        why: &'static str,
    },
    /// A permission mode that does not parse or has bits beyond 0o777.
    #[error("{value} is not a permission mode (write e.g. 0o660 or \"0660\")")]
    BadMode {
        /// What was given.
        value: String,
    },
    /// A group name with no entry in the group database.
    #[error("no group named {name:?} on this machine")]
    NoSuchGroup {
        /// The name.
        name: String,
    },
    /// A group id out of range.
    #[error("{value} is not a group id")]
    BadGid {
        /// What was given.
        value: i64,
    },
    /// No ports configured.
    #[error("no port configured (add a [[ports]] table)")]
    NoPorts,
}

/// One problem found in a config, with the key it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct Invalid {
    /// The key, as a path: `ports[1].ip`, `api.mode`, `cores`.
    pub key: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The TOML is well formed but some keys are wrong.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Invalid>),
}

impl ConfigError {
    /// The problems found, when the config was readable TOML.
    pub fn problems(&self) -> &[Invalid] {
        match self {
            ConfigError::Invalid(list) => list,
            _ => &[],
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path, host: &Host) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, host)
    }

    /// Parses and validates config text against `host`.
    pub fn from_toml(text: &str, host: &Host) -> Result<Config, ConfigError> {
        let table: Table = text.parse().map_err(|err: toml::de::Error| {
            let (line, column) = err
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Syntax {
                line,
                column,
                message: err.message().trim().to_owned(),
            }
        })?;
        Config::from_table(&table, host)
    }

    /// Validates an already parsed TOML table against `host`.
    pub fn from_table(table: &Table, host: &Host) -> Result<Config, ConfigError> {
        let mut ck = Check::default();
        let config = validate(table, host, &mut ck);
        match config {
            Some(config) if ck.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(ck.problems)),
        }
    }

    /// The built-in config `ixctl up` runs with: every online CPU, a
    /// 256 MiB budget (hugepages when free), and one memif wire whose two
    /// ends, `wire0` (master, 10.77.0.1/24) and `wire0-peer` (slave,
    /// 10.77.0.2/24), have one queue per CPU; all sockets in `/run/ix`.
    pub fn builtin() -> Result<Config, ConfigError> {
        Config::builtin_in(Path::new("/run/ix"), &Host::probe())
    }

    /// [`Config::builtin`] with its sockets in `dir` and validated against
    /// `host`.
    pub fn builtin_in(dir: &Path, host: &Host) -> Result<Config, ConfigError> {
        let queues = i64::try_from(host.cpus.0.len().min(usize::from(MAX_QUEUES))).unwrap_or(1);
        let path = |file: &str| Value::String(dir.join(file).to_string_lossy().into_owned());
        let mut api = Table::new();
        api.insert("socket".into(), path("ixcpd.sock"));
        api.insert("mode".into(), Value::Integer(i64::from(DEFAULT_MODE)));
        let port = |name: &str, role: &str, ip: &str| {
            let mut t = Table::new();
            t.insert("name".into(), Value::String(name.into()));
            t.insert("kind".into(), Value::String("memif".into()));
            t.insert("socket".into(), path("wire0.sock"));
            t.insert("role".into(), Value::String(role.into()));
            t.insert("queues".into(), Value::Integer(queues));
            t.insert("ip".into(), Value::String(ip.into()));
            Value::Table(t)
        };
        let mut table = Table::new();
        table.insert("cores".into(), Value::String("all".into()));
        table.insert(
            "memory".into(),
            Value::String(Bytes(DEFAULT_MEMORY).to_string()),
        );
        table.insert("hugepages".into(), Value::String("auto".into()));
        table.insert("policy".into(), Value::String("none".into()));
        table.insert("api".into(), Value::Table(api));
        table.insert(
            "ports".into(),
            Value::Array(vec![
                port("wire0", "master", "10.77.0.1/24"),
                port("wire0-peer", "slave", "10.77.0.2/24"),
            ]),
        );
        Config::from_table(&table, host)
    }

    /// The config with its API socket moved to `path`, checked like
    /// `api.socket`; errors name `key` (`--socket`, `IX_SOCKET`).
    pub fn with_socket(mut self, path: &Path, key: &str) -> Result<Config, ConfigError> {
        let mut ck = Check::default();
        let text = path.to_string_lossy();
        match validate_socket_path(&text, key, &mut ck) {
            Some(socket) => {
                self.api.socket = socket;
                Ok(self)
            }
            None => Err(ConfigError::Invalid(ck.problems)),
        }
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// The config as TOML text that [`Config::from_toml`] reads back to an
    /// equal config on the same host (derived MACs are left out).
    pub fn to_toml(&self) -> String {
        let mut table = Table::new();
        table.insert(
            "cores".into(),
            Value::String(CpuList(self.cores.clone()).to_string()),
        );
        table.insert(
            "memory".into(),
            Value::String(Bytes(self.memory.budget).to_string()),
        );
        table.insert(
            "hugepages".into(),
            Value::String(self.memory.hugepages.name().into()),
        );
        table.insert("policy".into(), Value::String(self.policy.name().into()));
        let mut api = Table::new();
        api.insert(
            "socket".into(),
            Value::String(self.api.socket.to_string_lossy().into_owned()),
        );
        api.insert(
            "mode".into(),
            Value::String(format!("{:04o}", self.api.mode)),
        );
        if let Some(group) = &self.api.group {
            let value = match &group.name {
                Some(name) => Value::String(name.clone()),
                None => Value::Integer(i64::from(group.gid)),
            };
            api.insert("group".into(), value);
        }
        table.insert("api".into(), Value::Table(api));
        let ports = self.ports.iter().map(|port| {
            let mut t = Table::new();
            t.insert("name".into(), Value::String(port.name.clone()));
            t.insert("kind".into(), Value::String(port.kind.name().into()));
            match &port.kind {
                PortKind::Memif { socket, role, .. } => {
                    t.insert(
                        "socket".into(),
                        Value::String(socket.to_string_lossy().into_owned()),
                    );
                    t.insert("role".into(), Value::String(role.name().into()));
                }
                PortKind::AfPacket { interface, .. } => {
                    t.insert("interface".into(), Value::String(interface.clone()));
                }
                PortKind::Dpdk { device, vdev, .. } => {
                    t.insert("device".into(), Value::String(device.clone()));
                    if let Some(v) = vdev {
                        t.insert("vdev".into(), Value::String(v.clone()));
                    }
                }
            }
            t.insert(
                "queues".into(),
                Value::Integer(i64::from(port.kind.queues())),
            );
            t.insert(
                "ip".into(),
                Value::String(format!("{}/{}", port.ip, port.prefix)),
            );
            if !port.mac_derived {
                t.insert("mac".into(), Value::String(port.mac.to_string()));
            }
            if let Some(gw) = port.gateway {
                t.insert("gateway".into(), Value::String(gw.to_string()));
            }
            Value::Table(t)
        });
        table.insert("ports".into(), Value::Array(ports.collect()));
        table.to_string()
    }
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

/// Whether `name` is a usable port or dataplane name: 1 to [`MAX_NAME`]
/// ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The naming rule [`is_valid_name`] checks, for messages.
pub const NAME_RULE: &str =
    "use 1 to 32 letters, digits, '-', '_' or '.', starting with a letter or digit";

const TOP_KEYS: &[&str] = &["cores", "memory", "hugepages", "policy", "api", "ports"];
const API_KEYS: &[&str] = &["socket", "mode", "group"];
const MEMIF_KEYS: &[&str] = &[
    "name", "kind", "ip", "mac", "gateway", "socket", "role", "queues",
];
const AF_PACKET_KEYS: &[&str] = &[
    "name",
    "kind",
    "ip",
    "mac",
    "gateway",
    "interface",
    "queues",
];
const DPDK_KEYS: &[&str] = &[
    "name", "kind", "ip", "mac", "gateway", "device", "vdev", "queues",
];
const PORT_KINDS: &[&str] = &["memif", "af_packet", "dpdk"];
/// Longest DPDK device name or device-argument string.
pub const MAX_DPDK_DEVARGS: usize = 256;

/// Problems collected while validating.
#[derive(Default)]
struct Check {
    problems: Vec<Invalid>,
}

impl Check {
    fn report(&mut self, key: &str, problem: Problem) {
        self.problems.push(Invalid {
            key: key.to_owned(),
            problem,
        });
    }
}

/// A config value that is absent, present but unusable (already reported),
/// or usable.
enum Field<T> {
    Absent,
    Bad,
    Ok(T),
}

impl<T> Field<T> {
    /// The value, reporting `Missing` when absent.
    fn required(self, ck: &mut Check, key: &str) -> Option<T> {
        match self {
            Field::Absent => {
                ck.report(key, Problem::Missing);
                None
            }
            Field::Bad => None,
            Field::Ok(v) => Some(v),
        }
    }

    /// The value, or `default` when absent; `None` when unusable.
    fn or(self, default: T) -> Option<T> {
        match self {
            Field::Absent => Some(default),
            Field::Bad => None,
            Field::Ok(v) => Some(v),
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> Option<U>) -> Field<U> {
        match self {
            Field::Absent => Field::Absent,
            Field::Bad => Field::Bad,
            Field::Ok(v) => f(v).map_or(Field::Bad, Field::Ok),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A table being validated: reports unknown keys once, then hands out
/// typed fields that report their own type errors.
struct Section<'a> {
    table: &'a Table,
    path: String,
}

impl<'a> Section<'a> {
    fn new(
        table: &'a Table,
        path: String,
        allowed: &'static [&'static str],
        ck: &mut Check,
    ) -> Self {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                ck.report(&join(&path, key), Problem::UnknownKey { allowed });
            }
        }
        Section { table, path }
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn raw(&self, key: &str) -> Option<&'a Value> {
        self.table.get(key)
    }

    fn string(&self, key: &str, ck: &mut Check) -> Field<&'a str> {
        match self.table.get(key) {
            None => Field::Absent,
            Some(Value::String(s)) => Field::Ok(s),
            Some(other) => {
                ck.report(
                    &self.key(key),
                    Problem::WrongType {
                        expected: "a string",
                        found: type_name(other),
                    },
                );
                Field::Bad
            }
        }
    }

    fn choice<T: Copy>(
        &self,
        key: &str,
        allowed: &'static [&'static str],
        values: &[T],
        ck: &mut Check,
    ) -> Field<T> {
        let field = self.string(key, ck);
        let full = self.key(key);
        field.map(|s| match allowed.iter().position(|a| *a == s) {
            Some(i) => Some(values[i]),
            None => {
                ck.report(
                    &full,
                    Problem::NotOneOf {
                        value: s.to_owned(),
                        allowed,
                    },
                );
                None
            }
        })
    }
}

fn validate(table: &Table, host: &Host, ck: &mut Check) -> Option<Config> {
    let top = Section::new(table, String::new(), TOP_KEYS, ck);
    let cores = validate_cores(top.raw("cores"), host, ck);
    let memory = validate_memory(&top, host, ck);
    let policy = top
        .choice(
            "policy",
            &["none", "load"],
            &[Policy::None, Policy::Load],
            ck,
        )
        .or(Policy::None);
    let api = match top.raw("api") {
        None => Some(ApiConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            mode: DEFAULT_MODE,
            group: None,
        }),
        Some(Value::Table(t)) => validate_api(t, ck),
        Some(other) => {
            ck.report(
                "api",
                Problem::WrongType {
                    expected: "a table",
                    found: type_name(other),
                },
            );
            None
        }
    };
    let ports = validate_ports(top.raw("ports"), ck);
    Some(Config {
        cores: cores?,
        memory: memory?,
        ports: ports?,
        api: api?,
        policy: policy?,
    })
}

fn validate_cores(value: Option<&Value>, host: &Host, ck: &mut Check) -> Option<Vec<u32>> {
    let before = ck.problems.len();
    let listed: Vec<i64> = match value {
        None => return Some(host.cpus.0.clone()),
        Some(Value::String(s)) if s.trim() == "all" => return Some(host.cpus.0.clone()),
        Some(Value::String(s)) => match CpuList::parse(s) {
            Some(list) => list.0.into_iter().map(i64::from).collect(),
            None => {
                ck.report("cores", Problem::NotCpuList { value: s.clone() });
                return None;
            }
        },
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Integer(n) => out.push(*n),
                    other => ck.report(
                        &format!("cores[{i}]"),
                        Problem::WrongType {
                            expected: "a CPU number",
                            found: type_name(other),
                        },
                    ),
                }
            }
            out
        }
        Some(other) => {
            ck.report(
                "cores",
                Problem::WrongType {
                    expected: "a CPU list (\"all\", \"0-3\" or [0, 1])",
                    found: type_name(other),
                },
            );
            return None;
        }
    };
    let mut cores: Vec<u32> = Vec::new();
    for n in listed {
        match u32::try_from(n) {
            Ok(cpu) if host.cpus.0.contains(&cpu) => {
                if cores.contains(&cpu) {
                    ck.report("cores", Problem::DuplicateCpu { cpu });
                } else {
                    cores.push(cpu);
                }
            }
            _ => ck.report(
                "cores",
                Problem::NoSuchCpu {
                    cpu: u32::try_from(n).unwrap_or(u32::MAX),
                    online: host.cpus.clone(),
                },
            ),
        }
    }
    if cores.is_empty() && ck.problems.len() == before {
        ck.report("cores", Problem::NoCores);
    }
    cores.sort_unstable();
    (ck.problems.len() == before).then_some(cores)
}

fn validate_memory(top: &Section<'_>, host: &Host, ck: &mut Check) -> Option<MemoryConfig> {
    let budget = match top.raw("memory") {
        None => Some(DEFAULT_MEMORY),
        Some(Value::Integer(n)) => match u64::try_from(*n) {
            Ok(n) => Some(n),
            Err(_) => {
                ck.report(
                    "memory",
                    Problem::NotSize {
                        value: n.to_string(),
                    },
                );
                None
            }
        },
        Some(Value::String(s)) => {
            let size = parse_size(s);
            if size.is_none() {
                ck.report("memory", Problem::NotSize { value: s.clone() });
            }
            size
        }
        Some(other) => {
            ck.report(
                "memory",
                Problem::WrongType {
                    expected: "a size (\"256 MiB\" or bytes)",
                    found: type_name(other),
                },
            );
            None
        }
    };
    let hugepages = top
        .choice(
            "hugepages",
            &["auto", "on", "off"],
            &[HugePages::Auto, HugePages::On, HugePages::Off],
            ck,
        )
        .or(HugePages::Auto);
    let (budget, hugepages) = (budget?, hugepages?);
    let enough_huge = host.hugepages_free > 0 && host.hugepage_bytes_free() >= budget;
    let huge = match hugepages {
        HugePages::Off => false,
        HugePages::Auto => enough_huge,
        HugePages::On => {
            if !enough_huge {
                ck.report(
                    "hugepages",
                    Problem::NotEnoughHugepages {
                        need: budget.div_ceil(host.hugepage_size),
                        free: host.hugepages_free,
                        size: host.hugepage_size,
                    },
                );
                return None;
            }
            true
        }
    };
    let page_size = if huge { host.hugepage_size } else { SMALL_PAGE };
    let minimum = MemoryConfig::minimum(page_size);
    if budget < minimum {
        ck.report("memory", Problem::MemoryTooSmall { budget, minimum });
        return None;
    }
    Some(MemoryConfig {
        budget,
        hugepages,
        huge,
        page_size,
    })
}

fn validate_socket_path(text: &str, key: &str, ck: &mut Check) -> Option<PathBuf> {
    let why = if !text.starts_with('/') {
        Some("it must be absolute")
    } else if text.len() > MAX_SOCKET_PATH {
        Some("it is longer than the 107 bytes a Unix socket address holds")
    } else if text.contains('\0') {
        Some("it contains a NUL byte")
    } else if text.ends_with('/') {
        Some("it names a directory")
    } else {
        None
    };
    match why {
        Some(why) => {
            ck.report(
                key,
                Problem::BadSocketPath {
                    path: text.to_owned(),
                    why,
                },
            );
            None
        }
        None => Some(PathBuf::from(text)),
    }
}

fn validate_api(table: &Table, ck: &mut Check) -> Option<ApiConfig> {
    let api = Section::new(table, "api".into(), API_KEYS, ck);
    let socket = api
        .string("socket", ck)
        .map(|s| validate_socket_path(s, "api.socket", ck))
        .or(PathBuf::from(DEFAULT_SOCKET));
    let mode = match api.raw("mode") {
        None => Some(DEFAULT_MODE),
        Some(Value::Integer(n)) => parse_mode_int(*n, ck),
        Some(Value::String(s)) => {
            let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777 && !s.is_empty());
            if mode.is_none() {
                ck.report(
                    "api.mode",
                    Problem::BadMode {
                        value: format!("{s:?}"),
                    },
                );
            }
            mode
        }
        Some(other) => {
            ck.report(
                "api.mode",
                Problem::WrongType {
                    expected: "a permission mode (0o660 or \"0660\")",
                    found: type_name(other),
                },
            );
            None
        }
    };
    let group = match api.raw("group") {
        None => Some(None),
        Some(Value::String(name)) => match crate::sys::group_id(name) {
            Ok(Some(gid)) => Some(Some(GroupConfig {
                name: Some(name.clone()),
                gid,
            })),
            _ => {
                ck.report("api.group", Problem::NoSuchGroup { name: name.clone() });
                None
            }
        },
        Some(Value::Integer(n)) => match u32::try_from(*n) {
            Ok(gid) if gid != u32::MAX => Some(Some(GroupConfig { name: None, gid })),
            _ => {
                ck.report("api.group", Problem::BadGid { value: *n });
                None
            }
        },
        Some(other) => {
            ck.report(
                "api.group",
                Problem::WrongType {
                    expected: "a group name or gid",
                    found: type_name(other),
                },
            );
            None
        }
    };
    Some(ApiConfig {
        socket: socket?,
        mode: mode?,
        group: group?,
    })
}

fn parse_mode_int(n: i64, ck: &mut Check) -> Option<u32> {
    match u32::try_from(n) {
        Ok(mode) if mode <= 0o777 => Some(mode),
        _ => {
            ck.report(
                "api.mode",
                Problem::BadMode {
                    value: format!("{n:#o}"),
                },
            );
            None
        }
    }
}

fn validate_ports(value: Option<&Value>, ck: &mut Check) -> Option<Vec<PortConfig>> {
    let items = match value {
        None => {
            ck.report("ports", Problem::NoPorts);
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            ck.report(
                "ports",
                Problem::WrongType {
                    expected: "an array of tables ([[ports]])",
                    found: type_name(other),
                },
            );
            return None;
        }
    };
    if items.is_empty() {
        ck.report("ports", Problem::NoPorts);
        return None;
    }
    let before = ck.problems.len();
    let mut ports = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("ports[{i}]");
        match item {
            Value::Table(t) => {
                if let Some(port) = validate_port(t, path, ck) {
                    ports.push((i, port));
                }
            }
            other => ck.report(
                &path,
                Problem::WrongType {
                    expected: "a table",
                    found: type_name(other),
                },
            ),
        }
    }
    check_port_conflicts(&ports, ck);
    (ck.problems.len() == before).then(|| ports.into_iter().map(|(_, p)| p).collect())
}

fn validate_port(table: &Table, path: String, ck: &mut Check) -> Option<PortConfig> {
    let kind_name = match table.get("kind") {
        Some(Value::String(k)) => Some(k.as_str()),
        _ => None,
    };
    let allowed = match kind_name {
        Some("af_packet") => AF_PACKET_KEYS,
        Some("dpdk") => DPDK_KEYS,
        _ => MEMIF_KEYS,
    };
    let port = Section::new(table, path, allowed, ck);
    let name = port.string("name", ck).map(|n| {
        if is_valid_name(n) {
            Some(n.to_owned())
        } else {
            ck.report(
                &port.key("name"),
                Problem::BadName {
                    value: n.to_owned(),
                    rule: NAME_RULE,
                },
            );
            None
        }
    });
    let name = name.required(ck, &port.key("name"));
    let kind = match port.string("kind", ck).required(ck, &port.key("kind")) {
        Some("memif") => validate_memif(&port, ck),
        Some("af_packet") => validate_af_packet(&port, ck),
        Some("dpdk") => validate_dpdk(&port, ck),
        Some(other) => {
            ck.report(
                &port.key("kind"),
                Problem::NotOneOf {
                    value: other.to_owned(),
                    allowed: PORT_KINDS,
                },
            );
            None
        }
        None => None,
    };
    let ip_key = port.key("ip");
    let address = port
        .string("ip", ck)
        .map(|s| parse_address(s, &ip_key, ck))
        .required(ck, &ip_key);
    let mac_key = port.key("mac");
    let mac = port.string("mac", ck).map(|s| match MacAddr::parse(s) {
        Some(mac) if mac.0[0] & 1 == 1 => {
            ck.report(
                &mac_key,
                Problem::BadMac {
                    mac,
                    why: "it is a multicast address",
                },
            );
            None
        }
        Some(mac) if mac.0 == [0; 6] => {
            ck.report(
                &mac_key,
                Problem::BadMac {
                    mac,
                    why: "it is all zeros",
                },
            );
            None
        }
        Some(mac) => Some(mac),
        None => {
            ck.report(
                &mac_key,
                Problem::NotMac {
                    value: s.to_owned(),
                },
            );
            None
        }
    });
    let gw_key = port.key("gateway");
    let gateway = port.string("gateway", ck).map(|s| {
        let gw = s.parse::<Ipv4Addr>().ok();
        if gw.is_none() {
            ck.report(
                &gw_key,
                Problem::NotIpv4 {
                    value: s.to_owned(),
                },
            );
        }
        gw
    });
    let (ip, prefix) = address?;
    let gateway = match gateway {
        Field::Absent => None,
        Field::Bad => return None,
        Field::Ok(gw) => {
            check_gateway(gw, ip, prefix, &gw_key, ck)?;
            Some(gw)
        }
    };
    let (mac, mac_derived) = match mac {
        Field::Absent => (MacAddr::derived_from(ip), true),
        Field::Bad => return None,
        Field::Ok(mac) => (mac, false),
    };
    Some(PortConfig {
        name: name?,
        kind: kind?,
        ip,
        prefix,
        mac,
        mac_derived,
        gateway,
    })
}

fn validate_queues(port: &Section<'_>, ck: &mut Check) -> Option<u16> {
    let key = port.key("queues");
    match port.raw("queues") {
        None => Some(1),
        Some(Value::Integer(n)) => match u16::try_from(*n) {
            Ok(q) if (1..=MAX_QUEUES).contains(&q) => Some(q),
            _ => {
                ck.report(&key, Problem::BadQueues { value: *n });
                None
            }
        },
        Some(other) => {
            ck.report(
                &key,
                Problem::WrongType {
                    expected: "an integer",
                    found: type_name(other),
                },
            );
            None
        }
    }
}

fn validate_memif(port: &Section<'_>, ck: &mut Check) -> Option<PortKind> {
    let socket_key = port.key("socket");
    let socket = port
        .string("socket", ck)
        .map(|s| validate_socket_path(s, &socket_key, ck))
        .required(ck, &socket_key);
    let role = port
        .choice(
            "role",
            &["master", "slave"],
            &[MemifRole::Master, MemifRole::Slave],
            ck,
        )
        .required(ck, &port.key("role"));
    let queues = validate_queues(port, ck);
    Some(PortKind::Memif {
        socket: socket?,
        role: role?,
        queues: queues?,
    })
}

fn validate_af_packet(port: &Section<'_>, ck: &mut Check) -> Option<PortKind> {
    let key = port.key("interface");
    let interface = port
        .string("interface", ck)
        .map(|s| {
            let ok = !s.is_empty()
                && s.len() <= MAX_IFNAME
                && s != "."
                && s != ".."
                && !s.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
            if ok {
                Some(s.to_owned())
            } else {
                ck.report(
                    &key,
                    Problem::BadName {
                        value: s.to_owned(),
                        rule: "a Linux interface name has 1 to 15 bytes and no '/', ':' or spaces",
                    },
                );
                None
            }
        })
        .required(ck, &key);
    let queues = validate_queues(port, ck);
    Some(PortKind::AfPacket {
        interface: interface?,
        queues: queues?,
    })
}

/// Whether `s` looks like a PCI address: `[domain:]bus:device.function`
/// in hex (`0000:01:00.0`, `01:00.0`).
fn is_pci_address(s: &str) -> bool {
    let Some((rest, function)) = s.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let hex = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let widths: &[usize] = match parts.len() {
        2 => &[2, 2],
        3 => &[4, 2, 2],
        _ => return false,
    };
    parts.iter().zip(widths).all(|(p, &w)| hex(p, w)) && hex(function, 1)
}

fn validate_dpdk(port: &Section<'_>, ck: &mut Check) -> Option<PortKind> {
    const DEVICE_RULE: &str =
        "a DPDK device name has 1 to 256 letters, digits, '_', '-', ':' or '.'";
    let key = port.key("device");
    let device = port
        .string("device", ck)
        .map(|s| {
            let ok = !s.is_empty()
                && s.len() <= MAX_DPDK_DEVARGS
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'));
            if ok {
                Some(s.to_owned())
            } else {
                ck.report(
                    &key,
                    Problem::BadName {
                        value: s.to_owned(),
                        rule: DEVICE_RULE,
                    },
                );
                None
            }
        })
        .required(ck, &key);
    let vdev_key = port.key("vdev");
    let vdev = port.string("vdev", ck).map(|s| {
        let ok = s.len() <= MAX_DPDK_DEVARGS
            && !s.contains(|c: char| c.is_whitespace() || c.is_control());
        if ok {
            Some(s.to_owned())
        } else {
            ck.report(
                &vdev_key,
                Problem::BadName {
                    value: s.to_owned(),
                    rule: "DPDK device arguments have at most 256 bytes and no spaces",
                },
            );
            None
        }
    });
    let queues = validate_queues(port, ck);
    let device = device?;
    let vdev = match vdev {
        Field::Absent => None,
        Field::Bad => return None,
        Field::Ok(v) => Some(v),
    };
    match &vdev {
        Some(v) if v.split(',').next() != Some(device.as_str()) => {
            ck.report(
                &vdev_key,
                Problem::BadName {
                    value: v.clone(),
                    rule: "a vdev's name (before the first ',') must be the port's device",
                },
            );
            return None;
        }
        None if !is_pci_address(&device) => {
            ck.report(
                &key,
                Problem::BadName {
                    value: device,
                    rule: "without `vdev`, the device must be a PCI address such as 0000:01:00.0",
                },
            );
            return None;
        }
        _ => {}
    }
    Some(PortKind::Dpdk {
        device,
        vdev,
        queues: queues?,
    })
}

fn subnet_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Parses `a.b.c.d/p` into a host address and prefix length.
fn parse_address(text: &str, key: &str, ck: &mut Check) -> Option<(Ipv4Addr, u8)> {
    let Some((addr, prefix)) = text.split_once('/') else {
        if text.parse::<Ipv4Addr>().is_ok() {
            ck.report(
                key,
                Problem::NoPrefix {
                    value: text.to_owned(),
                },
            );
        } else {
            ck.report(
                key,
                Problem::NotIpv4 {
                    value: text.to_owned(),
                },
            );
        }
        return None;
    };
    let Ok(ip) = addr.trim().parse::<Ipv4Addr>() else {
        ck.report(
            key,
            Problem::NotIpv4 {
                value: addr.to_owned(),
            },
        );
        return None;
    };
    let prefix = match prefix.trim().parse::<u8>() {
        Ok(p) if (1..=32).contains(&p) => p,
        _ => {
            ck.report(
                key,
                Problem::BadPrefix {
                    value: prefix.to_owned(),
                },
            );
            return None;
        }
    };
    if let Some(why) = host_address_problem(ip, prefix) {
        ck.report(key, Problem::NotHostAddress { addr: ip, why });
        return None;
    }
    Some((ip, prefix))
}

/// Why `ip` cannot be a host's address in a `/prefix` subnet, if it cannot.
fn host_address_problem(ip: Ipv4Addr, prefix: u8) -> Option<&'static str> {
    let mask = subnet_mask(prefix);
    let bits = u32::from(ip);
    if ip.is_unspecified() {
        Some("it is the unspecified address")
    } else if ip.is_loopback() {
        Some("it is a loopback address")
    } else if ip.is_multicast() {
        Some("it is a multicast address")
    } else if ip.is_broadcast() {
        Some("it is the broadcast address")
    } else if prefix <= 30 && bits & !mask == 0 {
        Some("it is the subnet's network address")
    } else if prefix <= 30 && bits & !mask == !mask {
        Some("it is the subnet's broadcast address")
    } else {
        None
    }
}

fn check_gateway(gw: Ipv4Addr, ip: Ipv4Addr, prefix: u8, key: &str, ck: &mut Check) -> Option<()> {
    let mask = subnet_mask(prefix);
    if u32::from(gw) & mask != u32::from(ip) & mask {
        ck.report(
            key,
            Problem::GatewayOutsideSubnet {
                gateway: gw,
                ip,
                prefix,
            },
        );
        return None;
    }
    let why = if gw == ip {
        Some("it is the port's own address")
    } else {
        host_address_problem(gw, prefix)
    };
    if let Some(why) = why {
        ck.report(key, Problem::NotHostAddress { addr: gw, why });
        return None;
    }
    Some(())
}

/// Reports names, IPs, MACs, interfaces and memif sockets used twice.
fn check_port_conflicts(ports: &[(usize, PortConfig)], ck: &mut Check) {
    for (n, (i, port)) in ports.iter().enumerate() {
        let earlier = &ports[..n];
        let first_with = |same: &dyn Fn(&PortConfig) -> bool| {
            earlier.iter().find(|(_, p)| same(p)).map(|(j, _)| *j)
        };
        if let Some(j) = first_with(&|p| p.name == port.name) {
            ck.report(
                &format!("ports[{i}].name"),
                Problem::Duplicate {
                    value: format!("{:?}", port.name),
                    first: format!("ports[{j}].name"),
                },
            );
        }
        if let Some(j) = first_with(&|p| p.ip == port.ip) {
            ck.report(
                &format!("ports[{i}].ip"),
                Problem::Duplicate {
                    value: port.ip.to_string(),
                    first: format!("ports[{j}].ip"),
                },
            );
        }
        let same_ip = first_with(&|p| p.ip == port.ip).is_some();
        if let Some(j) =
            first_with(&|p| p.mac == port.mac).filter(|_| !(port.mac_derived && same_ip))
        {
            let key = if port.mac_derived { "ip" } else { "mac" };
            ck.report(
                &format!("ports[{i}].mac"),
                Problem::Duplicate {
                    value: format!("MAC {}", port.mac),
                    first: format!("ports[{j}].{key}"),
                },
            );
        }
        match &port.kind {
            PortKind::Dpdk { device, .. } => {
                let same = |p: &PortConfig| matches!(&p.kind, PortKind::Dpdk { device: other, .. } if other == device);
                if let Some(j) = first_with(&same) {
                    ck.report(
                        &format!("ports[{i}].device"),
                        Problem::Duplicate {
                            value: format!("DPDK device {device:?}"),
                            first: format!("ports[{j}].device"),
                        },
                    );
                }
            }
            PortKind::AfPacket { interface, .. } => {
                let same = |p: &PortConfig| matches!(&p.kind, PortKind::AfPacket { interface: other, .. } if other == interface);
                if let Some(j) = first_with(&same) {
                    ck.report(
                        &format!("ports[{i}].interface"),
                        Problem::Duplicate {
                            value: format!("interface {interface:?}"),
                            first: format!("ports[{j}].interface"),
                        },
                    );
                }
            }
            PortKind::Memif { socket, role, .. } => {
                let ends: Vec<(usize, MemifRole)> = earlier
                    .iter()
                    .filter_map(|(j, p)| match &p.kind {
                        PortKind::Memif {
                            socket: s, role: r, ..
                        } if s == socket => Some((*j, *r)),
                        _ => None,
                    })
                    .collect();
                let key = format!("ports[{i}].socket");
                match ends.as_slice() {
                    [] => {}
                    [(j, r)] if r == role => ck.report(
                        &key,
                        Problem::SameRole {
                            socket: socket.clone(),
                            role: *role,
                            first: format!("ports[{j}]"),
                        },
                    ),
                    [_] => {}
                    [(a, _), (b, _), ..] => ck.report(
                        &key,
                        Problem::WireFull {
                            socket: socket.clone(),
                            first: format!("ports[{a}]"),
                            second: format!("ports[{b}]"),
                        },
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpus: CpuList(vec![0, 1]),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        }
    }

    const PORT: &str = r#"
[[ports]]
name = "wire0"
kind = "memif"
socket = "/run/ix/wire0.sock"
role = "master"
queues = 2
ip = "10.77.0.1/24"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &host())
    }

    /// Asserts that `text` is refused with exactly one problem on `key`
    /// whose message contains `needle`.
    fn refused(text: &str, key: &str, needle: &str) {
        let err = parse(text).expect_err("config should be refused");
        let problems = err.problems();
        assert_eq!(problems.len(), 1, "{err}");
        assert_eq!(problems[0].key, key, "{err}");
        let shown = problems[0].to_string();
        assert!(
            shown.starts_with(&format!("{key}: ")),
            "message does not start with the key: {shown}"
        );
        assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = parse(PORT).unwrap();
        assert_eq!(config.cores, vec![0, 1]);
        assert_eq!(config.memory.budget, DEFAULT_MEMORY);
        assert_eq!(config.memory.hugepages, HugePages::Auto);
        assert!(!config.memory.huge, "no hugepages free on this host");
        assert_eq!(config.memory.page_size, SMALL_PAGE);
        assert_eq!(config.api.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(config.api.mode, 0o660);
        assert_eq!(config.api.group, None);
        assert_eq!(config.policy, Policy::None);
        let port = &config.ports[0];
        assert_eq!(port.ip, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(port.prefix, 24);
        assert_eq!(port.mac.to_string(), "02:49:0a:4d:00:01");
        assert!(port.mac_derived);
        assert_eq!(port.kind.queues(), 2);
    }

    #[test]
    fn full_config_is_read() {
        let text = r#"
cores = [1]
memory = "64 MiB"
hugepages = "off"
policy = "load"
[api]
socket = "/tmp/ix/api.sock"
mode = 0o600
group = "root"
[[ports]]
name = "veth0"
kind = "af_packet"
interface = "veth0"
ip = "10.78.0.1/16"
mac = "02:00:00:00:00:01"
gateway = "10.78.255.254"
"#;
        let config = parse(text).unwrap();
        assert_eq!(config.cores, vec![1]);
        assert_eq!(config.memory.budget, 64 * MIB);
        assert_eq!(config.policy, Policy::Load);
        assert_eq!(config.api.mode, 0o600);
        assert_eq!(
            config.api.group,
            Some(GroupConfig {
                name: Some("root".into()),
                gid: 0
            })
        );
        let port = &config.ports[0];
        assert_eq!(
            port.kind,
            PortKind::AfPacket {
                interface: "veth0".into(),
                queues: 1
            }
        );
        assert!(!port.mac_derived);
        assert_eq!(port.gateway, Some(Ipv4Addr::new(10, 78, 255, 254)));
    }

    #[test]
    fn cores_accept_list_string_and_all() {
        assert_eq!(
            parse(&format!("cores = \"0-1\"\n{PORT}")).unwrap().cores,
            [0, 1]
        );
        assert_eq!(
            parse(&format!("cores = \"all\"\n{PORT}")).unwrap().cores,
            [0, 1]
        );
        assert_eq!(
            parse(&format!("cores = [1, 0]\n{PORT}")).unwrap().cores,
            [0, 1]
        );
    }

    #[test]
    fn missing_cpu_is_named_with_the_online_list() {
        refused(
            &format!("cores = [0, 7]\n{PORT}"),
            "cores",
            "cpu 7 does not exist on this machine (0-1)",
        );
    }

    #[test]
    fn bad_cores_are_refused() {
        refused(
            &format!("cores = [1, 1]\n{PORT}"),
            "cores",
            "cpu 1 is listed twice",
        );
        refused(
            &format!("cores = []\n{PORT}"),
            "cores",
            "no CPU to give out",
        );
        refused(
            &format!("cores = \"zero\"\n{PORT}"),
            "cores",
            "is not a CPU list",
        );
        refused(&format!("cores = [-1]\n{PORT}"), "cores", "does not exist");
        refused(
            &format!("cores = [\"0\"]\n{PORT}"),
            "cores[0]",
            "expected a CPU number",
        );
        refused(&format!("cores = 1\n{PORT}"), "cores", "found an integer");
    }

    #[test]
    fn memory_too_small_names_the_minimum() {
        refused(
            &format!("memory = \"0 MiB\"\n{PORT}"),
            "memory",
            "0 B is too small (need at least 1088 KiB: one pool of 512 buffers of 2176 B)",
        );
    }

    #[test]
    fn memory_sizes_and_mistakes() {
        assert_eq!(
            parse(&format!("memory = 1048576000\n{PORT}"))
                .unwrap()
                .memory
                .budget,
            1_048_576_000
        );
        refused(
            &format!("memory = \"256 MB\"\n{PORT}"),
            "memory",
            "\"256 MB\" is not a size",
        );
        refused(&format!("memory = -5\n{PORT}"), "memory", "is not a size");
        refused(&format!("memory = 1.5\n{PORT}"), "memory", "found a float");
    }

    #[test]
    fn hugepages_on_without_free_pages_says_how_to_reserve() {
        refused(
            &format!("hugepages = \"on\"\n{PORT}"),
            "hugepages",
            "echo 128 > /proc/sys/vm/nr_hugepages",
        );
        refused(
            &format!("hugepages = \"yes\"\n{PORT}"),
            "hugepages",
            "not one of: auto, on, off",
        );
    }

    #[test]
    fn hugepages_are_used_when_free_and_round_the_minimum() {
        let mut h = host();
        h.hugepages_free = 128;
        let config = Config::from_toml(&format!("hugepages = \"on\"\n{PORT}"), &h).unwrap();
        assert!(config.memory.huge);
        assert_eq!(config.memory.page_size, 2 * MIB);
        let auto = Config::from_toml(PORT, &h).unwrap();
        assert!(auto.memory.huge, "auto uses hugepages when the budget fits");
        let small = Config::from_toml(&format!("memory = \"1 MiB\"\n{PORT}"), &h).unwrap_err();
        assert!(small.to_string().contains("need at least 2 MiB"), "{small}");
        let big = Config::from_toml(&format!("memory = \"1 GiB\"\n{PORT}"), &h).unwrap();
        assert!(
            !big.memory.huge,
            "auto falls back when the budget does not fit"
        );
    }

    #[test]
    fn bad_ip_is_named_with_its_port_index() {
        let text = format!(
            "{PORT}\n[[ports]]\nname = \"b\"\nkind = \"af_packet\"\ninterface = \"veth0\"\nip = \"10.0.0.300/24\"\n"
        );
        refused(
            &text,
            "ports[1].ip",
            "\"10.0.0.300\" is not an IPv4 address",
        );
    }

    #[test]
    fn ip_forms_that_are_refused() {
        let with_ip = |ip: &str| PORT.replace("10.77.0.1/24", ip);
        refused(
            &with_ip("10.0.0.1"),
            "ports[0].ip",
            "has no prefix length (write e.g. \"10.0.0.1/24\")",
        );
        refused(
            &with_ip("10.0.0.1/33"),
            "ports[0].ip",
            "prefix length \"33\"",
        );
        refused(&with_ip("10.0.0.0/24"), "ports[0].ip", "network address");
        refused(
            &with_ip("10.0.0.255/24"),
            "ports[0].ip",
            "broadcast address",
        );
        refused(&with_ip("127.0.0.1/8"), "ports[0].ip", "loopback");
        refused(&with_ip("224.0.0.1/24"), "ports[0].ip", "multicast");
        refused(
            &with_ip("nonsense"),
            "ports[0].ip",
            "is not an IPv4 address",
        );
        assert!(parse(&with_ip("10.0.0.7/32")).is_ok());
    }

    #[test]
    fn gateway_must_be_a_neighbour() {
        let with_gw = |gw: &str| format!("{PORT}gateway = \"{gw}\"\n");
        assert!(parse(&with_gw("10.77.0.254")).is_ok());
        refused(
            &with_gw("10.78.0.1"),
            "ports[0].gateway",
            "not inside the port's subnet 10.77.0.1/24",
        );
        refused(
            &with_gw("10.77.0.1"),
            "ports[0].gateway",
            "port's own address",
        );
        refused(
            &with_gw("10.77.0.300"),
            "ports[0].gateway",
            "not an IPv4 address",
        );
    }

    #[test]
    fn mac_mistakes_are_refused() {
        let with_mac = |mac: &str| format!("{PORT}mac = \"{mac}\"\n");
        refused(
            &with_mac("02:00:00:00:00"),
            "ports[0].mac",
            "is not a MAC address",
        );
        refused(&with_mac("01:00:5e:00:00:01"), "ports[0].mac", "multicast");
        refused(&with_mac("00:00:00:00:00:00"), "ports[0].mac", "all zeros");
        let config = parse(&with_mac("02:AB:cd:00:00:01")).unwrap();
        assert_eq!(config.ports[0].mac.to_string(), "02:ab:cd:00:00:01");
    }

    #[test]
    fn duplicate_port_name_ip_and_interface_are_refused() {
        let second = |name: &str, ip: &str, iface: &str| {
            format!("{PORT}\n[[ports]]\nname = \"{name}\"\nkind = \"af_packet\"\ninterface = \"{iface}\"\nip = \"{ip}\"\n")
        };
        refused(
            &second("wire0", "10.9.0.1/24", "v0"),
            "ports[1].name",
            "\"wire0\" is already used by ports[0].name",
        );
        refused(
            &second("b", "10.77.0.1/24", "v0"),
            "ports[1].ip",
            "10.77.0.1 is already used by ports[0].ip",
        );
        let two = format!(
            "{}\n[[ports]]\nname = \"c\"\nkind = \"af_packet\"\ninterface = \"v0\"\nip = \"10.9.0.2/24\"\n",
            second("b", "10.9.0.1/24", "v0")
        );
        refused(
            &two,
            "ports[2].interface",
            "interface \"v0\" is already used by ports[1].interface",
        );
    }

    #[test]
    fn memif_socket_may_join_one_master_and_one_slave() {
        let end = |name: &str, role: &str, ip: &str| {
            format!("\n[[ports]]\nname = \"{name}\"\nkind = \"memif\"\nsocket = \"/run/ix/wire0.sock\"\nrole = \"{role}\"\nip = \"{ip}\"\n")
        };
        let wire = format!("{PORT}{}", end("peer", "slave", "10.77.0.2/24"));
        assert_eq!(parse(&wire).unwrap().ports.len(), 2);
        refused(
            &format!("{PORT}{}", end("peer", "master", "10.77.0.2/24")),
            "ports[1].socket",
            "already the master end at ports[0]",
        );
        refused(
            &format!("{wire}{}", end("third", "slave", "10.77.0.3/24")),
            "ports[2].socket",
            "already joins ports[0] and ports[1]",
        );
    }

    #[test]
    fn port_fields_are_checked() {
        refused(
            &PORT.replace("\"wire0\"", "\"bad name\""),
            "ports[0].name",
            "is not a valid name",
        );
        refused(
            &PORT.replace("queues = 2", "queues = 0"),
            "ports[0].queues",
            "0 queues: must be between 1 and 128",
        );
        refused(
            &PORT.replace("queues = 2", "queues = 1000"),
            "ports[0].queues",
            "1000 queues",
        );
        refused(
            &PORT.replace("\"master\"", "\"boss\""),
            "ports[0].role",
            "\"boss\" is not one of: master, slave",
        );
        refused(
            &PORT.replace("\"memif\"", "\"tap\""),
            "ports[0].kind",
            "is not one of: memif, af_packet, dpdk",
        );
        refused(
            &PORT.replace("/run/ix/wire0.sock", "wire0.sock"),
            "ports[0].socket",
            "must be absolute",
        );
        refused(
            &PORT.replace("role = \"master\"\n", ""),
            "ports[0].role",
            "missing",
        );
        refused(
            &format!("{PORT}sockt = \"/x\"\n"),
            "ports[0].sockt",
            "unknown key (expected one of: name, kind",
        );
        let long = format!("/{}", "a".repeat(120));
        refused(
            &PORT.replace("/run/ix/wire0.sock", &long),
            "ports[0].socket",
            "longer than the 107 bytes",
        );
    }

    #[test]
    fn ports_are_required() {
        refused("", "ports", "no port configured");
        refused("ports = []", "ports", "no port configured");
        refused("ports = 3", "ports", "expected an array of tables");
    }

    #[test]
    fn api_section_is_checked() {
        refused(
            &format!("[api]\nmode = \"rw\"\n{PORT}"),
            "api.mode",
            "\"rw\" is not a permission mode",
        );
        refused(
            &format!("[api]\nmode = 0o1777\n{PORT}"),
            "api.mode",
            "0o1777 is not a permission mode",
        );
        refused(
            &format!("[api]\ngroup = \"no-such-group-ix\"\n{PORT}"),
            "api.group",
            "no group named \"no-such-group-ix\"",
        );
        refused(
            &format!("[api]\ngroup = -2\n{PORT}"),
            "api.group",
            "-2 is not a group id",
        );
        refused(
            &format!("[api]\nsocket = \"rel.sock\"\n{PORT}"),
            "api.socket",
            "must be absolute",
        );
        refused(
            &format!("[api]\nport = 1\n{PORT}"),
            "api.port",
            "unknown key",
        );
        assert_eq!(
            parse(&format!("[api]\nmode = \"0600\"\ngroup = 4242\n{PORT}"))
                .unwrap()
                .api
                .mode,
            0o600
        );
    }

    #[test]
    fn unknown_top_level_key_and_policy_are_refused() {
        refused(
            &format!("core = 1\n{PORT}"),
            "core",
            "unknown key (expected one of: cores, memory",
        );
        refused(
            &format!("policy = \"fast\"\n{PORT}"),
            "policy",
            "\"fast\" is not one of: none, load",
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "cores = [9]\nmemory = \"x\"\n{}",
            PORT.replace("10.77.0.1/24", "1.2.3/8")
        );
        let err = parse(&text).unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["cores", "memory", "ports[0].ip"]);
        assert_eq!(err.to_string().matches("; ").count(), 2);
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = parse("cores = [0\nmemory = 1").unwrap_err();
        match err {
            ConfigError::Syntax { line, .. } => assert!(line >= 1),
            other => panic!("expected a syntax error, got {other}"),
        }
        let err = parse("a = 1\nb = = 2\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err}");
    }

    #[test]
    fn builtin_config_is_valid_and_round_trips_through_toml() {
        let dir = Path::new("/tmp/ix-builtin-test");
        let config = Config::builtin_in(dir, &host()).unwrap();
        assert_eq!(config.cores, vec![0, 1]);
        assert_eq!(config.ports.len(), 2);
        assert_eq!(config.ports[0].kind.queues(), 2);
        assert_eq!(config.api.socket, dir.join("ixcpd.sock"));
        let text = config.to_toml();
        assert_eq!(Config::from_toml(&text, &host()).unwrap(), config, "{text}");
    }

    const DPDK_PORTS: &str = r#"
[[ports]]
name = "nic0"
kind = "dpdk"
device = "0000:01:00.0"
queues = 2
ip = "10.79.0.1/24"
[[ports]]
name = "wire1"
kind = "dpdk"
device = "net_memif1"
vdev = "net_memif1,role=server,socket=/run/ix/m1.sock,socket-abstract=no"
ip = "10.79.1.1/24"
"#;

    #[test]
    fn dpdk_ports_are_read_and_round_trip_through_toml() {
        let config = parse(DPDK_PORTS).unwrap();
        assert_eq!(
            config.ports[0].kind,
            PortKind::Dpdk {
                device: "0000:01:00.0".into(),
                vdev: None,
                queues: 2
            }
        );
        assert_eq!(config.ports[0].kind.name(), "dpdk");
        let PortKind::Dpdk { vdev, queues, .. } = &config.ports[1].kind else {
            panic!("a dpdk port: {:?}", config.ports[1].kind);
        };
        assert_eq!(
            (vdev.as_deref().map(|v| &v[..11]), *queues),
            (Some("net_memif1,"), 1)
        );
        let text = config.to_toml();
        assert_eq!(Config::from_toml(&text, &host()).unwrap(), config, "{text}");
    }

    #[test]
    fn dpdk_ports_are_checked() {
        let first = &DPDK_PORTS[..DPDK_PORTS.find("[[ports]]\nname = \"wire1\"").unwrap()];
        refused(
            &first.replace("0000:01:00.0", "net_ring0"),
            "ports[0].device",
            "without `vdev`, the device must be a PCI address",
        );
        refused(
            &first.replace("0000:01:00.0", "eth 0"),
            "ports[0].device",
            "a DPDK device name has",
        );
        refused(
            &DPDK_PORTS.replace("vdev = \"net_memif1,", "vdev = \"net_memif2,"),
            "ports[1].vdev",
            "must be the port's device",
        );
        refused(
            &first.replace("device = \"0000:01:00.0\"\n", ""),
            "ports[0].device",
            "missing",
        );
        refused(
            &format!("{first}socket = \"/x\"\n"),
            "ports[0].socket",
            "unknown key (expected one of: name, kind, ip, mac, gateway, device, vdev, queues)",
        );
        let twice = DPDK_PORTS.replace("net_memif1", "0000:01:00.0").replace(
            "vdev = \"0000:01:00.0,role=server,socket=/run/ix/m1.sock,socket-abstract=no\"\n",
            "",
        );
        refused(&twice, "ports[1].device", "DPDK device \"0000:01:00.0\"");
        for pci in ["01:00.0", "0000:af:1f.7"] {
            assert!(parse(&first.replace("0000:01:00.0", pci)).is_ok(), "{pci}");
        }
    }

    #[test]
    fn socket_override_is_checked_and_named() {
        let config = parse(PORT).unwrap();
        let moved = config
            .clone()
            .with_socket(Path::new("/tmp/x.sock"), "--socket")
            .unwrap();
        assert_eq!(moved.api.socket, PathBuf::from("/tmp/x.sock"));
        let err = config
            .with_socket(Path::new("x.sock"), "IX_SOCKET")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "IX_SOCKET: \"x.sock\" cannot be a socket path: it must be absolute"
        );
    }

    #[test]
    fn builtin_on_this_machine_is_valid() {
        let config = Config::builtin().unwrap();
        assert_eq!(config.cores, Host::probe().cpus.0);
        assert_eq!(config.api.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn example_in_the_module_docs_is_valid() {
        let source = include_str!("config.rs");
        let start = source.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + source[start..].find("//! ```\n").unwrap();
        let text: String = source[start..end]
            .lines()
            .map(|l| l.strip_prefix("//!").unwrap().trim_start_matches(' '))
            .map(|l| l.replace("group = \"ix\"", "group = \"root\""))
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.cores, vec![0, 1]);
        assert_eq!(config.ports.len(), 3);
        assert_eq!(config.ports[1].kind.name(), "af_packet");
        assert_eq!(config.ports[2].kind.name(), "dpdk");
    }

    #[test]
    fn name_rule() {
        for good in ["a", "echo", "wire0-peer", "x_1.2", &"n".repeat(32)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "é", &"n".repeat(33)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn mac_parse_round_trip() {
        let mac = MacAddr::parse("02:49:0a:4d:00:01").unwrap();
        assert_eq!(mac.to_string(), "02:49:0a:4d:00:01");
        assert_eq!(MacAddr::parse("02:49:0a:4d:00:01:00"), None);
        assert_eq!(MacAddr::parse("2:49:0a:4d:00:01"), None);
        assert_eq!(MacAddr::parse("zz:49:0a:4d:00:01"), None);
    }
}
