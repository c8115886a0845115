//! The resources ixcpd hands out, and the bookkeeping that never gives the
//! same one to two dataplanes.
//!
//! # The allocation model
//!
//! - **Cores.** The CPUs listed in the config form a pool. A dataplane gets
//!   `n` of them exclusively (the lowest free ones) and pins one elastic
//!   thread to each.
//! - **Ports, queues and flow groups.** A port belongs to one dataplane at a
//!   time: the port has one IPv4/MAC identity, so splitting its traffic
//!   between unrelated applications would break ARP, ICMP and outbound
//!   connections (a NIC shared between dataplanes is several ports: SR-IOV
//!   virtual functions, or several memif wires). A dataplane with `n` cores
//!   gets the port's queues `0..n` (so `n` may not exceed the port's queue
//!   count); core `i` serves queue `i`. The port's RSS redirection table has
//!   [`FLOW_GROUPS`] entries, the *flow groups*; each maps to one of the
//!   dataplane's queues. A new allocation spreads them as IX did, group `g`
//!   on queue `g mod n`; a resize moves the fewest groups that leave every
//!   queue with `⌊128/n⌋` or `⌈128/n⌉` of them ([`rebalance`]), because
//!   every moved group is a migration in the running dataplane.
//! - **Memory.** Each core gets its own buffer pool: a memfd of
//!   `buffers × BUF_SIZE` bytes rounded up to the page size (2 MiB
//!   hugepages when the config resolved to them, else 4 KiB), and the
//!   rounding is given to the pool as extra buffers. Pools are charged
//!   against the configured budget.
//!
//! There is no overcommit: [`Resources::allocate`] and [`Resources::resize`]
//! either take everything asked for or change nothing and say what is short,
//! every shortage in one error: `not enough cores: asked 3, free 1 (of 2);
//! memory: asked 96 MiB, free 32 MiB of 128 MiB`. [`Resources::release`]
//! returns everything. For each resource, free + allocated == total after
//! any sequence of operations ([`Resources::check_invariants`], checked by a
//! property test).
//!
//! This module is pure bookkeeping; creating the pool memfds is the
//! daemon's job, after the bookkeeping said yes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{is_valid_name, Config, NAME_RULE};
use crate::units::{round_up, Bytes};

/// Bytes per packet buffer: 128 bytes of headroom and 2048 of data, as the
/// dataplane's `buf::BUF_SIZE`.
pub const BUF_SIZE: u64 = 2176;
/// Entries in a port's RSS redirection table.
pub const FLOW_GROUPS: usize = 128;
/// Fewest buffers in one pool: an RX ring's worth.
pub const MIN_POOL_BUFFERS: u32 = 512;
/// Most buffers in one pool (about 2.1 GiB).
pub const MAX_POOL_BUFFERS: u32 = 1 << 20;
/// Buffers per core when a request does not say.
pub const DEFAULT_BUFFERS_PER_CORE: u32 = 4096;

/// How much packet memory a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryAsk {
    /// [`DEFAULT_BUFFERS_PER_CORE`] buffers per core.
    Default,
    /// This many buffers per core (rounded up to fill whole pages).
    BuffersPerCore(u32),
    /// This many bytes in total, split evenly over the cores (each pool
    /// rounded down to whole pages).
    Total(u64),
}

/// What a dataplane asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocRequest {
    /// The dataplane's name, unique among allocations.
    pub name: String,
    /// Cores (and so queues and buffer pools) wanted.
    pub cores: u32,
    /// The port wanted.
    pub port: String,
    /// Packet memory wanted.
    pub memory: MemoryAsk,
}

/// Everything one dataplane holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The dataplane's name.
    pub name: String,
    /// The port it owns.
    pub port: String,
    /// Its CPUs, ascending; core `i` runs on `cpus[i]` and serves queue `i`
    /// with buffer pool `i`.
    pub cpus: Vec<u32>,
    /// Buffers in each core's pool.
    pub buffers_per_core: u32,
    /// Bytes of each core's pool (a whole number of pages).
    pub pool_bytes: u64,
    /// Page size of the pools.
    pub page_size: u64,
    /// Whether the pools are hugepages.
    pub huge: bool,
    /// The port's redirection table: flow group → queue, [`FLOW_GROUPS`]
    /// entries.
    pub reta: Vec<u16>,
}

impl Allocation {
    /// Number of cores (= queues = buffer pools).
    pub fn cores(&self) -> usize {
        self.cpus.len()
    }

    /// Packet memory held, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.pool_bytes * self.cpus.len() as u64
    }

    /// The flow groups steered to `queue`, ascending.
    pub fn flow_groups_of(&self, queue: u16) -> Vec<u16> {
        (0..FLOW_GROUPS as u16)
            .filter(|&g| self.reta[usize::from(g)] == queue)
            .collect()
    }
}

/// Something a request needs more of than is free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// Too few free cores.
    Cores {
        /// Cores asked for (beyond those held, for a resize).
        asked: u32,
        /// Cores free.
        free: u32,
        /// Cores ixcpd gives out.
        total: u32,
        /// Whether `asked` is in addition to cores already held.
        more: bool,
    },
    /// The port has fewer queues than cores asked for.
    Queues {
        /// The port.
        port: String,
        /// Queues asked for.
        asked: u32,
        /// Queues free on the port.
        free: u16,
    },
    /// The port belongs to another dataplane.
    PortBusy {
        /// The port.
        port: String,
        /// The dataplane that owns it.
        owner: String,
    },
    /// Too little free packet memory.
    Memory {
        /// Bytes asked for (beyond those held, for a resize).
        asked: u64,
        /// Bytes free.
        free: u64,
        /// The budget.
        total: u64,
        /// Whether `asked` is in addition to memory already held.
        more: bool,
    },
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let more = |m: bool| if m { " more" } else { "" };
        match self {
            Shortage::Cores {
                asked,
                free,
                total,
                more: m,
            } => write!(
                f,
                "not enough cores: asked {asked}{}, free {free} (of {total})",
                more(*m)
            ),
            Shortage::Queues { port, asked, free } => {
                write!(f, "port {port}: {asked} queues asked, {free} free")
            }
            Shortage::PortBusy { port, owner } => write!(
                f,
                "port {port}: in use by {owner} (a port serves one dataplane)"
            ),
            Shortage::Memory {
                asked,
                free,
                total,
                more: m,
            } => write!(
                f,
                "memory: asked {}{}, free {} of {}",
                Bytes(*asked),
                more(*m),
                Bytes(*free),
                Bytes(*total)
            ),
        }
    }
}

/// Why an allocation, release or resize was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The dataplane name breaks the naming rule.
    #[error("dataplane name {name:?} is not valid: {NAME_RULE}")]
    BadName {
        /// The name given.
        name: String,
    },
    /// Another allocation has this name.
    #[error("name {name} already in use (stop it first, or pick another name)")]
    NameInUse {
        /// The name.
        name: String,
    },
    /// No allocation has this name.
    #[error("no dataplane named {name:?}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The config has no such port.
    #[error("no port named {port:?} (ports: {})", .known.join(", "))]
    NoSuchPort {
        /// The name given.
        port: String,
        /// The configured ports.
        known: Vec<String>,
    },
    /// Zero cores asked for.
    #[error("a dataplane needs at least one core")]
    ZeroCores,
    /// A buffer count outside the accepted range.
    #[error("{asked} buffers per core: must be between {MIN_POOL_BUFFERS} and {MAX_POOL_BUFFERS}")]
    BadBuffers {
        /// Buffers asked for.
        asked: u32,
    },
    /// A memory total too small for one pool per core.
    #[error(
        "memory: {} over {cores} cores is less than one pool of {MIN_POOL_BUFFERS} buffers ({}) per core",
        Bytes(*.memory), Bytes(*.pool_min)
    )]
    MemoryTooSmall {
        /// Bytes asked for.
        memory: u64,
        /// Cores asked for.
        cores: u32,
        /// Smallest pool.
        pool_min: u64,
    },
    /// Not enough of one or more resources.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Short(Vec<Shortage>),
    /// An allocation to adopt holds a CPU that is not free.
    #[error("cpu {cpu} is {}", match .owner {
        Some(owner) => format!("held by {owner}"),
        None => "not one the config gives out".to_owned(),
    })]
    CpuUnavailable {
        /// The CPU.
        cpu: u32,
        /// Who holds it; `None` when the config does not list it.
        owner: Option<String>,
    },
    /// An allocation to adopt is not one these books could have made.
    #[error("its allocation is inconsistent: {what}")]
    Inconsistent {
        /// What is wrong.
        what: String,
    },
}

/// Free and total counts of the resource pool, for `ixctl resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesView {
    /// Every core ixcpd gives out and who holds it.
    pub cores: Vec<CoreView>,
    /// The packet-memory budget.
    pub memory: MemoryView,
    /// Every port and who holds it.
    pub ports: Vec<PortView>,
}

/// One core in [`ResourcesView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreView {
    /// The CPU number.
    pub cpu: u32,
    /// The dataplane holding it.
    pub owner: Option<String>,
}

/// The memory budget in [`ResourcesView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryView {
    /// Bytes ixcpd gives out.
    pub budget: u64,
    /// Bytes held by dataplanes.
    pub used: u64,
    /// Page size pools are rounded to.
    pub page_size: u64,
    /// Whether pools are hugepages.
    pub huge: bool,
}

/// One port in [`ResourcesView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// The port's name.
    pub name: String,
    /// Its backend (`memif`, `af_packet`).
    pub kind: String,
    /// Queues it has.
    pub queues: u16,
    /// The dataplane holding it.
    pub owner: Option<String>,
}

#[derive(Clone, Debug)]
struct PortSlot {
    name: String,
    kind: &'static str,
    queues: u16,
    owner: Option<String>,
}

/// The pool of cores, memory and ports, and who holds what.
#[derive(Clone, Debug)]
pub struct Resources {
    cores: Vec<(u32, Option<String>)>,
    budget: u64,
    used: u64,
    page_size: u64,
    huge: bool,
    ports: Vec<PortSlot>,
    allocations: BTreeMap<String, Allocation>,
}

impl Resources {
    /// Everything in `config`, all free.
    pub fn new(config: &Config) -> Resources {
        Resources {
            cores: config.cores.iter().map(|&cpu| (cpu, None)).collect(),
            budget: config.memory.budget,
            used: 0,
            page_size: config.memory.page_size,
            huge: config.memory.huge,
            ports: config
                .ports
                .iter()
                .map(|p| PortSlot {
                    name: p.name.clone(),
                    kind: p.kind.name(),
                    queues: p.kind.queues(),
                    owner: None,
                })
                .collect(),
            allocations: BTreeMap::new(),
        }
    }

    /// The allocation named `name`.
    pub fn get(&self, name: &str) -> Option<&Allocation> {
        self.allocations.get(name)
    }

    /// All allocations, by name.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// CPUs not held by any dataplane, ascending.
    pub fn free_cores(&self) -> Vec<u32> {
        self.cores
            .iter()
            .filter(|(_, owner)| owner.is_none())
            .map(|(cpu, _)| *cpu)
            .collect()
    }

    /// Bytes of the budget not held by any dataplane.
    pub fn free_memory(&self) -> u64 {
        self.budget - self.used
    }

    /// A snapshot for `ixctl resources`.
    pub fn view(&self) -> ResourcesView {
        ResourcesView {
            cores: self
                .cores
                .iter()
                .map(|(cpu, owner)| CoreView {
                    cpu: *cpu,
                    owner: owner.clone(),
                })
                .collect(),
            memory: MemoryView {
                budget: self.budget,
                used: self.used,
                page_size: self.page_size,
                huge: self.huge,
            },
            ports: self
                .ports
                .iter()
                .map(|p| PortView {
                    name: p.name.clone(),
                    kind: p.kind.to_owned(),
                    queues: p.queues,
                    owner: p.owner.clone(),
                })
                .collect(),
        }
    }

    /// Bytes of one pool and the buffers it holds, for `ask` over `cores`.
    fn pool_size(&self, ask: MemoryAsk, cores: u32) -> Result<(u64, u32), AllocError> {
        let fill = |bytes: u64| {
            let buffers = u32::try_from(bytes / BUF_SIZE).unwrap_or(u32::MAX);
            (bytes, buffers.min(MAX_POOL_BUFFERS))
        };
        match ask {
            MemoryAsk::Default => Ok(fill(round_up(
                u64::from(DEFAULT_BUFFERS_PER_CORE) * BUF_SIZE,
                self.page_size,
            ))),
            MemoryAsk::BuffersPerCore(asked) => {
                if !(MIN_POOL_BUFFERS..=MAX_POOL_BUFFERS).contains(&asked) {
                    return Err(AllocError::BadBuffers { asked });
                }
                Ok(fill(round_up(u64::from(asked) * BUF_SIZE, self.page_size)))
            }
            MemoryAsk::Total(memory) => {
                let per_core = memory / u64::from(cores.max(1));
                let bytes = (per_core / self.page_size * self.page_size).min(round_up(
                    u64::from(MAX_POOL_BUFFERS) * BUF_SIZE,
                    self.page_size,
                ));
                if bytes / BUF_SIZE < u64::from(MIN_POOL_BUFFERS) {
                    return Err(AllocError::MemoryTooSmall {
                        memory,
                        cores,
                        pool_min: round_up(u64::from(MIN_POOL_BUFFERS) * BUF_SIZE, self.page_size),
                    });
                }
                Ok(fill(bytes))
            }
        }
    }

    fn port_index(&self, port: &str) -> Result<usize, AllocError> {
        self.ports
            .iter()
            .position(|p| p.name == port)
            .ok_or_else(|| AllocError::NoSuchPort {
                port: port.to_owned(),
                known: self.ports.iter().map(|p| p.name.clone()).collect(),
            })
    }

    /// Shortages of taking `extra` more cores and `bytes` more memory, and
    /// `queues` queues in total on port `port`, for a dataplane that holds
    /// the port already when `holder` is its name.
    fn shortages(
        &self,
        extra: u32,
        bytes: u64,
        port: usize,
        queues: u32,
        more: bool,
    ) -> Vec<Shortage> {
        let mut short = Vec::new();
        let free = self.free_cores().len() as u32;
        if extra > free {
            short.push(Shortage::Cores {
                asked: extra,
                free,
                total: self.cores.len() as u32,
                more,
            });
        }
        let slot = &self.ports[port];
        match &slot.owner {
            Some(owner) if !more => short.push(Shortage::PortBusy {
                port: slot.name.clone(),
                owner: owner.clone(),
            }),
            _ if queues > u32::from(slot.queues) => short.push(Shortage::Queues {
                port: slot.name.clone(),
                asked: queues,
                free: slot.queues,
            }),
            _ => {}
        }
        if bytes > self.free_memory() {
            short.push(Shortage::Memory {
                asked: bytes,
                free: self.free_memory(),
                total: self.budget,
                more,
            });
        }
        short
    }

    /// Takes what `request` asks for, or nothing.
    pub fn allocate(&mut self, request: &AllocRequest) -> Result<Allocation, AllocError> {
        if !is_valid_name(&request.name) {
            return Err(AllocError::BadName {
                name: request.name.clone(),
            });
        }
        if self.allocations.contains_key(&request.name) {
            return Err(AllocError::NameInUse {
                name: request.name.clone(),
            });
        }
        let port = self.port_index(&request.port)?;
        if request.cores == 0 {
            return Err(AllocError::ZeroCores);
        }
        let (pool_bytes, buffers) = self.pool_size(request.memory, request.cores)?;
        let bytes = pool_bytes.saturating_mul(u64::from(request.cores));
        let short = self.shortages(request.cores, bytes, port, request.cores, false);
        if !short.is_empty() {
            return Err(AllocError::Short(short));
        }
        let n = request.cores as usize;
        let mut cpus = Vec::with_capacity(n);
        for (cpu, owner) in self.cores.iter_mut().filter(|(_, o)| o.is_none()).take(n) {
            *owner = Some(request.name.clone());
            cpus.push(*cpu);
        }
        self.ports[port].owner = Some(request.name.clone());
        self.used += bytes;
        let allocation = Allocation {
            name: request.name.clone(),
            port: request.port.clone(),
            cpus,
            buffers_per_core: buffers,
            pool_bytes,
            page_size: self.page_size,
            huge: self.huge,
            reta: (0..FLOW_GROUPS).map(|g| (g % n) as u16).collect(),
        };
        self.allocations
            .insert(request.name.clone(), allocation.clone());
        Ok(allocation)
    }

    /// Returns everything `name` holds to the pool.
    pub fn release(&mut self, name: &str) -> Result<Allocation, AllocError> {
        let allocation = self
            .allocations
            .remove(name)
            .ok_or_else(|| AllocError::NotFound {
                name: name.to_owned(),
            })?;
        for (_, owner) in &mut self.cores {
            if owner.as_deref() == Some(name) {
                *owner = None;
            }
        }
        for port in &mut self.ports {
            if port.owner.as_deref() == Some(name) {
                port.owner = None;
            }
        }
        self.used -= allocation.memory_bytes();
        Ok(allocation)
    }

    /// Takes exactly what `allocation` lists — its CPUs, port and memory —
    /// as an earlier ixcpd gave it out (re-adoption after a restart), or
    /// nothing, saying what no longer fits (the config changed, or
    /// something else took it).
    pub fn adopt(&mut self, allocation: &Allocation) -> Result<(), AllocError> {
        let name = &allocation.name;
        if !is_valid_name(name) {
            return Err(AllocError::BadName { name: name.clone() });
        }
        if self.allocations.contains_key(name) {
            return Err(AllocError::NameInUse { name: name.clone() });
        }
        let port = self.port_index(&allocation.port)?;
        let n = allocation.cpus.len();
        let inconsistent = |what: String| Err(AllocError::Inconsistent { what });
        if n == 0 {
            return Err(AllocError::ZeroCores);
        }
        let mut sorted = allocation.cpus.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != n {
            return inconsistent(format!("cpus {:?} repeat", allocation.cpus));
        }
        for &cpu in &allocation.cpus {
            match self.cores.iter().find(|(c, _)| *c == cpu) {
                Some((_, None)) => {}
                Some((_, Some(owner))) => {
                    return Err(AllocError::CpuUnavailable {
                        cpu,
                        owner: Some(owner.clone()),
                    })
                }
                None => return Err(AllocError::CpuUnavailable { cpu, owner: None }),
            }
        }
        if !allocation.pool_bytes.is_multiple_of(self.page_size) {
            return inconsistent(format!(
                "pools of {} are not whole pages of {} (did the hugepage setting change?)",
                allocation.pool_bytes, self.page_size
            ));
        }
        if allocation.pool_bytes / BUF_SIZE < u64::from(allocation.buffers_per_core) {
            return inconsistent(format!(
                "pools of {} bytes cannot hold {} buffers",
                allocation.pool_bytes, allocation.buffers_per_core
            ));
        }
        check_reta(&allocation.reta, n).map_err(|what| AllocError::Inconsistent { what })?;
        let bytes = allocation.pool_bytes.saturating_mul(n as u64);
        let short = self.shortages(0, bytes, port, n as u32, false);
        if !short.is_empty() {
            return Err(AllocError::Short(short));
        }
        for (cpu, owner) in &mut self.cores {
            if allocation.cpus.contains(cpu) {
                *owner = Some(name.clone());
            }
        }
        self.ports[port].owner = Some(name.clone());
        self.used += bytes;
        self.allocations.insert(name.clone(), allocation.clone());
        Ok(())
    }

    /// Grows or shrinks `name` to `cores` cores, with as many queues and
    /// pools, moving the fewest flow groups; or changes nothing.
    ///
    /// Shrinking gives back the highest-numbered cores (and their queues
    /// and pools).
    pub fn resize(&mut self, name: &str, cores: u32) -> Result<Allocation, AllocError> {
        let current = self
            .allocations
            .get(name)
            .ok_or_else(|| AllocError::NotFound {
                name: name.to_owned(),
            })?;
        if cores == 0 {
            return Err(AllocError::ZeroCores);
        }
        let mut next = current.clone();
        let held = current.cpus.len();
        let want = cores as usize;
        if want > held {
            let extra = cores - held as u32;
            let bytes = next.pool_bytes.saturating_mul(u64::from(extra));
            let port = self.port_index(&next.port)?;
            let short = self.shortages(extra, bytes, port, cores, true);
            if !short.is_empty() {
                return Err(AllocError::Short(short));
            }
            for (cpu, owner) in self
                .cores
                .iter_mut()
                .filter(|(_, o)| o.is_none())
                .take(want - held)
            {
                *owner = Some(name.to_owned());
                next.cpus.push(*cpu);
            }
            self.used += bytes;
        } else {
            for cpu in next.cpus.drain(want..) {
                if let Some((_, owner)) = self.cores.iter_mut().find(|(c, _)| *c == cpu) {
                    *owner = None;
                }
            }
            self.used -= next.pool_bytes * (held - want) as u64;
        }
        rebalance(&mut next.reta, cores as u16);
        self.allocations.insert(name.to_owned(), next.clone());
        Ok(next)
    }

    /// Puts back `previous`, an allocation `name` held before it grew
    /// (its CPUs a prefix of those held now, its redirection table the
    /// one the dataplane still uses): returns the added cores, their
    /// queues and memory, and restores the table exactly — a resize back
    /// would rebalance it into another table.
    pub fn restore(&mut self, previous: &Allocation) -> Result<Allocation, AllocError> {
        let name = &previous.name;
        let current = self
            .allocations
            .get(name)
            .ok_or_else(|| AllocError::NotFound { name: name.clone() })?;
        let n = previous.cpus.len();
        let same_shape = current.port == previous.port
            && current.pool_bytes == previous.pool_bytes
            && current.buffers_per_core == previous.buffers_per_core
            && n > 0
            && n <= current.cpus.len()
            && current.cpus[..n] == previous.cpus[..];
        if !same_shape {
            return Err(AllocError::Inconsistent {
                what: format!(
                    "{name}: cannot restore cpus {:?}: it holds {:?}",
                    previous.cpus, current.cpus
                ),
            });
        }
        check_reta(&previous.reta, n).map_err(|what| AllocError::Inconsistent { what })?;
        self.resize(name, n as u32)?;
        let restored = self.allocations.get_mut(name).expect("resized above");
        restored.reta.clone_from(&previous.reta);
        Ok(restored.clone())
    }

    /// Checks that the books balance: every core, port and byte is either
    /// free or held by exactly the allocation that lists it, and every
    /// redirection table is complete and balanced. Returns what is wrong.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held_cores = 0;
        let mut held_bytes = 0;
        for (name, a) in &self.allocations {
            if &a.name != name {
                return Err(format!("allocation {} filed under {name}", a.name));
            }
            if a.cpus.is_empty() {
                return Err(format!("{name} holds no core"));
            }
            for cpu in &a.cpus {
                match self.cores.iter().find(|(c, _)| c == cpu) {
                    Some((_, Some(owner))) if owner == name => {}
                    other => return Err(format!("{name} lists cpu {cpu}, pool has {other:?}")),
                }
            }
            held_cores += a.cpus.len();
            held_bytes += a.memory_bytes();
            let port = self
                .ports
                .iter()
                .find(|p| p.name == a.port)
                .ok_or_else(|| format!("{name} holds unknown port {}", a.port))?;
            if port.owner.as_deref() != Some(name.as_str()) {
                return Err(format!(
                    "{name} holds port {} owned by {:?}",
                    a.port, port.owner
                ));
            }
            if a.cpus.len() > usize::from(port.queues) {
                return Err(format!(
                    "{name} has more cores than port {} has queues",
                    a.port
                ));
            }
            if !a.pool_bytes.is_multiple_of(self.page_size)
                || a.pool_bytes / BUF_SIZE < u64::from(a.buffers_per_core)
            {
                return Err(format!(
                    "{name} has a pool of {} for {} buffers",
                    a.pool_bytes, a.buffers_per_core
                ));
            }
            check_reta(&a.reta, a.cpus.len()).map_err(|e| format!("{name}: {e}"))?;
        }
        let owned = self.cores.iter().filter(|(_, o)| o.is_some()).count();
        if owned != held_cores {
            return Err(format!(
                "{owned} cores owned, allocations list {held_cores}"
            ));
        }
        if owned + self.free_cores().len() != self.cores.len() {
            return Err("free + allocated cores != total".into());
        }
        if held_bytes != self.used || self.used > self.budget {
            return Err(format!(
                "memory used {} but allocations hold {held_bytes} (budget {})",
                self.used, self.budget
            ));
        }
        for port in &self.ports {
            if let Some(owner) = &port.owner {
                match self.allocations.get(owner) {
                    Some(a) if a.port == port.name => {}
                    _ => {
                        return Err(format!(
                            "port {} owned by {owner}, which does not hold it",
                            port.name
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// What [`Resources::resize`] would make of `current` at `cores` cores,
/// computed without touching the books: the allocation ixcpd proposes to
/// a running dataplane before it shrinks (the books change only once the
/// dataplane confirms). For `cores` below what is held it is exactly
/// what `resize` returns from the same books.
pub fn shrunk(current: &Allocation, cores: u32) -> Allocation {
    let mut next = current.clone();
    next.cpus.truncate(cores as usize);
    rebalance(&mut next.reta, cores as u16);
    next
}

/// Checks that `reta` has [`FLOW_GROUPS`] entries, all below `queues`, and
/// that every queue has ⌊128/n⌋ or ⌈128/n⌉ flow groups.
fn check_reta(reta: &[u16], queues: usize) -> Result<(), String> {
    if reta.len() != FLOW_GROUPS {
        return Err(format!("redirection table has {} entries", reta.len()));
    }
    let mut counts = vec![0usize; queues];
    for (g, &q) in reta.iter().enumerate() {
        *counts
            .get_mut(usize::from(q))
            .ok_or_else(|| format!("flow group {g} on queue {q} of {queues}"))? += 1;
    }
    let (lo, hi) = (FLOW_GROUPS / queues, FLOW_GROUPS.div_ceil(queues));
    match counts.iter().position(|&c| c < lo || c > hi) {
        Some(q) => Err(format!(
            "queue {q} has {} flow groups, not {lo}..={hi}",
            counts[q]
        )),
        None => Ok(()),
    }
}

/// Re-spreads the flow groups of `reta` over queues `0..queues`, moving
/// the fewest groups: groups on queues that no longer exist, and the excess
/// of queues above their share, go to queues below theirs. Afterwards every
/// queue has ⌊len/queues⌋ or ⌈len/queues⌉ groups; the queues that keep the
/// larger share are the ones that already had the most. Returns how many
/// groups moved.
pub fn rebalance(reta: &mut [u16], queues: u16) -> usize {
    let n = usize::from(queues.max(1));
    let mut counts = vec![0usize; n];
    for &q in reta.iter() {
        if let Some(c) = counts.get_mut(usize::from(q)) {
            *c += 1;
        }
    }
    let base = reta.len() / n;
    let mut target = vec![base; n];
    let mut by_count: Vec<usize> = (0..n).collect();
    by_count.sort_by_key(|&q| (std::cmp::Reverse(counts[q]), q));
    for &q in by_count.iter().take(reta.len() % n) {
        target[q] += 1;
    }
    // Groups to move: those on removed queues, then each queue's excess
    // (its highest-numbered groups).
    let mut kept = vec![0usize; n];
    let mut movable = Vec::new();
    for (g, &q) in reta.iter().enumerate() {
        let q = usize::from(q);
        if q < n && kept[q] < target[q] {
            kept[q] += 1;
        } else {
            movable.push(g);
        }
    }
    let moved = movable.len();
    let mut groups = movable.into_iter();
    for q in 0..n {
        while kept[q] < target[q] {
            let g = groups
                .next()
                .expect("movable groups fill every deficit exactly");
            reta[g] = q as u16;
            kept[q] += 1;
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::units::{CpuList, MIB};
    use proptest::prelude::*;

    fn config(cpus: &[u32], memory: &str, queues: u16) -> Config {
        let host = Host {
            cpus: CpuList(cpus.to_vec()),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        };
        let text = format!(
            r#"
memory = "{memory}"
[[ports]]
name = "wire0"
kind = "memif"
socket = "/run/ix/w0.sock"
role = "master"
queues = {queues}
ip = "10.0.0.1/24"
[[ports]]
name = "wire1"
kind = "memif"
socket = "/run/ix/w1.sock"
role = "master"
queues = 1
ip = "10.0.1.1/24"
"#
        );
        Config::from_toml(&text, &host).unwrap()
    }

    fn ask(name: &str, cores: u32, port: &str, memory: MemoryAsk) -> AllocRequest {
        AllocRequest {
            name: name.into(),
            cores,
            port: port.into(),
            memory,
        }
    }

    #[test]
    fn adopting_takes_exactly_what_an_earlier_daemon_gave_or_nothing() {
        let cfg = config(&[0, 1, 2, 3], "64 MiB", 4);
        let mut earlier = Resources::new(&cfg);
        earlier
            .allocate(&ask("a", 1, "wire1", MemoryAsk::BuffersPerCore(512)))
            .unwrap();
        let b = earlier
            .allocate(&ask("b", 2, "wire0", MemoryAsk::BuffersPerCore(1024)))
            .unwrap();
        assert_eq!(b.cpus, [1, 2]);
        // A new daemon adopts b alone: it gets cpus 1 and 2, not 0 and 1.
        let mut books = Resources::new(&cfg);
        books.adopt(&b).unwrap();
        assert_eq!(books.get("b"), Some(&b));
        assert_eq!(books.free_cores(), [0, 3]);
        assert_eq!(books.free_memory(), 64 * MIB - b.memory_bytes());
        assert_eq!(books.check_invariants(), Ok(()));
        let again = books.adopt(&b).unwrap_err();
        assert!(matches!(again, AllocError::NameInUse { .. }), "{again}");
        // What no longer fits is refused, and the books do not move.
        let before = books.view();
        let mut moved = b.clone();
        moved.name = "c".into();
        let err = books.adopt(&moved).unwrap_err();
        assert_eq!(err.to_string(), "cpu 1 is held by b");
        moved.cpus = vec![7, 3];
        let err = books.adopt(&moved).unwrap_err();
        assert_eq!(err.to_string(), "cpu 7 is not one the config gives out");
        moved.cpus = vec![3, 3];
        assert!(matches!(
            books.adopt(&moved),
            Err(AllocError::Inconsistent { .. })
        ));
        moved.cpus = vec![0, 3];
        let err = books.adopt(&moved).unwrap_err();
        assert!(err.to_string().contains("port wire0: in use by b"), "{err}");
        moved.port = "wire1".into();
        let err = books.adopt(&moved).unwrap_err();
        assert!(
            err.to_string()
                .contains("port wire1: 2 queues asked, 1 free"),
            "{err}"
        );
        moved.port = "wire9".into();
        assert!(matches!(
            books.adopt(&moved),
            Err(AllocError::NoSuchPort { .. })
        ));
        let mut torn = b.clone();
        torn.name = "d".into();
        torn.cpus = vec![0, 3];
        torn.reta[0] = 5;
        let err = books.adopt(&torn).unwrap_err();
        assert!(
            err.to_string().contains("flow group 0 on queue 5 of 2"),
            "{err}"
        );
        torn.reta = b.reta.clone();
        torn.pool_bytes += 1;
        assert!(err.to_string().contains("inconsistent"), "{err}");
        let err = books.adopt(&torn).unwrap_err();
        assert!(err.to_string().contains("not whole pages"), "{err}");
        assert_eq!(books.view(), before);
        assert_eq!(books.check_invariants(), Ok(()));
        // Memory beyond the budget (a config with less of it).
        let small = config(&[0, 1, 2, 3], "2 MiB", 4);
        let err = Resources::new(&small).adopt(&b).unwrap_err();
        assert!(err.to_string().starts_with("memory: asked"), "{err}");
    }

    #[test]
    fn allocation_takes_lowest_cores_queues_and_spreads_flow_groups() {
        let mut res = Resources::new(&config(&[0, 1, 2, 3], "128 MiB", 4));
        let a = res
            .allocate(&ask("echo", 3, "wire0", MemoryAsk::Default))
            .unwrap();
        assert_eq!(a.cpus, vec![0, 1, 2]);
        assert_eq!(
            a.pool_bytes,
            4096 * BUF_SIZE,
            "4 KiB pages: 4096 buffers fill pages exactly"
        );
        assert_eq!(a.buffers_per_core, 4096);
        assert_eq!(a.memory_bytes(), 3 * 4096 * BUF_SIZE);
        assert_eq!(a.reta[..6], [0, 1, 2, 0, 1, 2]);
        assert_eq!(a.flow_groups_of(2).len(), 42);
        assert_eq!(a.flow_groups_of(0).len(), 43);
        assert_eq!(res.free_cores(), vec![3]);
        assert_eq!(res.free_memory(), 128 * MIB - a.memory_bytes());
        res.check_invariants().unwrap();
    }

    #[test]
    fn not_enough_cores_says_how_many_are_free() {
        let mut res = Resources::new(&config(&[0, 1], "128 MiB", 4));
        res.allocate(&ask("a", 1, "wire1", MemoryAsk::Default))
            .unwrap();
        let err = res
            .allocate(&ask("b", 3, "wire0", MemoryAsk::Default))
            .unwrap_err();
        assert_eq!(err.to_string(), "not enough cores: asked 3, free 1 (of 2)");
    }

    #[test]
    fn too_many_queues_names_the_port() {
        let mut res = Resources::new(&config(&[0, 1, 2, 3], "128 MiB", 4));
        let err = res
            .allocate(&ask("a", 4, "wire1", MemoryAsk::Default))
            .unwrap_err();
        assert_eq!(err.to_string(), "port wire1: 4 queues asked, 1 free");
    }

    #[test]
    fn memory_shortage_says_asked_free_and_total() {
        let mut res = Resources::new(&config(&[0, 1, 2, 3], "128 MiB", 4));
        res.allocate(&ask("a", 1, "wire1", MemoryAsk::Total(96 * MIB)))
            .unwrap();
        let err = res
            .allocate(&ask("b", 2, "wire0", MemoryAsk::Total(96 * MIB)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory: asked 96 MiB, free 32 MiB of 128 MiB"
        );
    }

    #[test]
    fn every_shortage_is_reported_at_once_and_nothing_changes() {
        let mut res = Resources::new(&config(&[0, 1], "16 MiB", 2));
        res.allocate(&ask("a", 1, "wire0", MemoryAsk::Default))
            .unwrap();
        let before = res.view();
        let err = res
            .allocate(&ask("b", 2, "wire0", MemoryAsk::Total(32 * MIB)))
            .unwrap_err();
        let AllocError::Short(list) = &err else {
            panic!("{err}")
        };
        assert_eq!(list.len(), 3, "{err}");
        assert!(err.to_string().contains("port wire0: in use by a"), "{err}");
        assert_eq!(res.view(), before);
    }

    #[test]
    fn names_are_unique_and_checked() {
        let mut res = Resources::new(&config(&[0, 1], "128 MiB", 2));
        res.allocate(&ask("echo", 1, "wire0", MemoryAsk::Default))
            .unwrap();
        let err = res
            .allocate(&ask("echo", 1, "wire1", MemoryAsk::Default))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "name echo already in use (stop it first, or pick another name)"
        );
        let err = res
            .allocate(&ask("a b", 1, "wire1", MemoryAsk::Default))
            .unwrap_err();
        assert!(matches!(err, AllocError::BadName { .. }), "{err}");
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut res = Resources::new(&config(&[0, 1], "128 MiB", 2));
        let err = res
            .allocate(&ask("a", 1, "wire9", MemoryAsk::Default))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no port named \"wire9\" (ports: wire0, wire1)"
        );
        let err = res
            .allocate(&ask("a", 0, "wire0", MemoryAsk::Default))
            .unwrap_err();
        assert_eq!(err, AllocError::ZeroCores);
        let err = res
            .allocate(&ask("a", 1, "wire0", MemoryAsk::BuffersPerCore(10)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "10 buffers per core: must be between 512 and 1048576"
        );
        let err = res
            .allocate(&ask("a", 2, "wire0", MemoryAsk::Total(MIB)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory: 1 MiB over 2 cores is less than one pool of 512 buffers (1088 KiB) per core"
        );
        res.check_invariants().unwrap();
        assert_eq!(res.free_cores().len(), 2);
    }

    #[test]
    fn total_memory_is_split_and_rounded_down_to_pages() {
        let mut res = Resources::new(&config(&[0, 1], "128 MiB", 2));
        let a = res
            .allocate(&ask("a", 2, "wire0", MemoryAsk::Total(10 * MIB + 1)))
            .unwrap();
        assert_eq!(a.pool_bytes, 5 * MIB);
        assert_eq!(a.buffers_per_core, (5 * MIB / BUF_SIZE) as u32);
        assert!(a.memory_bytes() <= 10 * MIB + 1);
    }

    #[test]
    fn hugepage_pools_round_up_to_2_mib_and_fill_with_buffers() {
        let mut cfg = config(&[0, 1], "128 MiB", 2);
        cfg.memory.huge = true;
        cfg.memory.page_size = 2 * MIB;
        let mut res = Resources::new(&cfg);
        let a = res
            .allocate(&ask("a", 1, "wire0", MemoryAsk::BuffersPerCore(4096)))
            .unwrap();
        assert_eq!(a.pool_bytes, 10 * MIB);
        assert_eq!(a.buffers_per_core, (10 * MIB / BUF_SIZE) as u32);
        assert!(a.huge);
    }

    #[test]
    fn release_returns_everything() {
        let mut res = Resources::new(&config(&[0, 1], "128 MiB", 2));
        let empty = res.view();
        res.allocate(&ask("a", 2, "wire0", MemoryAsk::Default))
            .unwrap();
        let released = res.release("a").unwrap();
        assert_eq!(released.cpus, vec![0, 1]);
        assert_eq!(res.view(), empty);
        assert_eq!(
            res.release("a").unwrap_err().to_string(),
            "no dataplane named \"a\""
        );
        res.allocate(&ask("a", 2, "wire0", MemoryAsk::Default))
            .unwrap();
    }

    #[test]
    fn resize_grows_and_shrinks_with_fewest_moves() {
        let mut res = Resources::new(&config(&[0, 1, 2, 3], "128 MiB", 4));
        let a = res
            .allocate(&ask("a", 2, "wire0", MemoryAsk::Default))
            .unwrap();
        let grown = res.resize("a", 4).unwrap();
        assert_eq!(grown.cpus, vec![0, 1, 2, 3]);
        assert_eq!(grown.memory_bytes(), 2 * a.memory_bytes());
        let moved = a
            .reta
            .iter()
            .zip(&grown.reta)
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(moved, 64, "half the groups move to the two new queues");
        for q in 0..4 {
            assert_eq!(grown.flow_groups_of(q).len(), 32);
        }
        let shrunk = res.resize("a", 1).unwrap();
        assert_eq!(shrunk.cpus, vec![0]);
        assert!(shrunk.reta.iter().all(|&q| q == 0));
        assert_eq!(res.free_cores(), vec![1, 2, 3]);
        res.check_invariants().unwrap();
    }

    #[test]
    fn shrunk_previews_resize_and_restore_undoes_a_grow_exactly() {
        let mut res = Resources::new(&config(&[0, 1, 2, 3], "128 MiB", 4));
        let a = res
            .allocate(&ask("a", 3, "wire0", MemoryAsk::Default))
            .unwrap();
        let preview = shrunk(&a, 2);
        assert_eq!(res.get("a"), Some(&a), "a preview leaves the books alone");
        assert_eq!(res.resize("a", 2).unwrap(), preview);
        let before = res.get("a").unwrap().clone();
        let used = res.free_memory();
        let grown = res.resize("a", 4).unwrap();
        assert_eq!(grown.cpus, vec![0, 1, 2, 3]);
        // Resizing back would rebalance into another table; restore puts
        // the old one back.
        let restored = res.restore(&before).unwrap();
        assert_eq!(restored, before);
        assert_eq!(res.get("a"), Some(&before));
        assert_eq!(res.free_cores(), vec![2, 3]);
        assert_eq!(res.free_memory(), used);
        res.check_invariants().unwrap();
        // Only a prefix of what is held can be restored.
        let mut other = before.clone();
        other.cpus = vec![1, 3];
        assert!(matches!(
            res.restore(&other),
            Err(AllocError::Inconsistent { .. })
        ));
        let mut bad_reta = before.clone();
        bad_reta.reta[0] = 9;
        assert!(res.restore(&bad_reta).is_err());
        res.check_invariants().unwrap();
    }

    #[test]
    fn resize_refuses_what_does_not_fit() {
        let mut res = Resources::new(&config(&[0, 1, 2], "128 MiB", 2));
        res.allocate(&ask("a", 1, "wire0", MemoryAsk::Default))
            .unwrap();
        res.allocate(&ask("b", 1, "wire1", MemoryAsk::Default))
            .unwrap();
        let err = res.resize("a", 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not enough cores: asked 2 more, free 1 (of 3); port wire0: 3 queues asked, 2 free"
        );
        let err = res.resize("b", 2).unwrap_err();
        assert_eq!(err.to_string(), "port wire1: 2 queues asked, 1 free");
        assert_eq!(res.resize("a", 0).unwrap_err(), AllocError::ZeroCores);
        assert!(matches!(
            res.resize("zz", 1),
            Err(AllocError::NotFound { .. })
        ));
        res.check_invariants().unwrap();
    }

    #[test]
    fn resize_memory_shortage_counts_only_the_new_pools() {
        let mut res = Resources::new(&config(&[0, 1], "16 MiB", 2));
        res.allocate(&ask("a", 1, "wire0", MemoryAsk::Total(12 * MIB)))
            .unwrap();
        let err = res.resize("a", 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory: asked 12 MiB more, free 4 MiB of 16 MiB"
        );
    }

    #[test]
    fn rebalance_from_one_to_three_queues() {
        let mut reta = vec![0u16; FLOW_GROUPS];
        let moved = rebalance(&mut reta, 3);
        assert_eq!(moved, 85);
        check_reta(&reta, 3).unwrap();
    }

    fn reta_strategy() -> impl Strategy<Value = (Vec<u16>, u16)> {
        (1u16..=16).prop_flat_map(|n| {
            let balanced: Vec<u16> = (0..FLOW_GROUPS)
                .map(|g| (g % usize::from(n)) as u16)
                .collect();
            (Just(balanced).prop_shuffle(), 1u16..=16)
        })
    }

    proptest! {
        #[test]
        fn rebalance_balances_with_fewest_moves((reta, n) in reta_strategy()) {
            let before = reta.clone();
            let old_n = usize::from(*before.iter().max().unwrap()) + 1;
            let mut after = reta;
            let moved = rebalance(&mut after, n);
            prop_assert!(check_reta(&after, usize::from(n)).is_ok());
            prop_assert_eq!(moved, before.iter().zip(&after).filter(|(a, b)| a != b).count());
            // The fewest moves possible: every group not kept in place, where
            // each surviving queue keeps at most its share and the larger
            // shares go to the fullest queues.
            let n = usize::from(n);
            let mut counts = vec![0usize; old_n.max(n)];
            for &q in &before { counts[usize::from(q)] += 1; }
            let mut surviving: Vec<usize> = counts[..n].to_vec();
            surviving.sort_unstable_by(|a, b| b.cmp(a));
            let kept: usize = surviving.iter().enumerate()
                .map(|(i, &c)| c.min(FLOW_GROUPS / n + usize::from(i < FLOW_GROUPS % n)))
                .sum();
            prop_assert_eq!(moved, FLOW_GROUPS - kept);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate {
            name: usize,
            cores: u32,
            port: usize,
            memory: MemoryAsk,
        },
        Release {
            name: usize,
        },
        Resize {
            name: usize,
            cores: u32,
        },
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let memory = prop_oneof![
            Just(MemoryAsk::Default),
            (0u32..9000).prop_map(MemoryAsk::BuffersPerCore),
            (0u64..(40 * MIB)).prop_map(MemoryAsk::Total),
        ];
        prop_oneof![
            (0usize..4, 0u32..5, 0usize..3, memory).prop_map(|(name, cores, port, memory)| {
                Op::Allocate {
                    name,
                    cores,
                    port,
                    memory,
                }
            }),
            (0usize..4).prop_map(|name| Op::Release { name }),
            (0usize..4, 0u32..6).prop_map(|(name, cores)| Op::Resize { name, cores }),
        ]
    }

    proptest! {
        #[test]
        fn books_balance_after_any_sequence(ops in proptest::collection::vec(op_strategy(), 1..40)) {
            let names = ["a", "b", "c", "d"];
            let ports = ["wire0", "wire1", "nope"];
            let mut res = Resources::new(&config(&[0, 1, 2, 3], "48 MiB", 3));
            for op in ops {
                let before = res.view();
                let result = match &op {
                    Op::Allocate { name, cores, port, memory } => res
                        .allocate(&ask(names[*name], *cores, ports[*port], *memory))
                        .map(|a| {
                            // What was taken was free before.
                            for cpu in &a.cpus {
                                assert!(before.cores.iter().any(|c| c.cpu == *cpu && c.owner.is_none()));
                            }
                            assert!(a.memory_bytes() <= before.memory.budget - before.memory.used);
                        }),
                    Op::Release { name } => res.release(names[*name]).map(|_| ()),
                    Op::Resize { name, cores } => res.resize(names[*name], *cores).map(|_| ()),
                };
                if result.is_err() {
                    prop_assert_eq!(&res.view(), &before, "a refused {:?} changed the books", op);
                }
                if let Err(e) = res.check_invariants() {
                    return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
                }
                let view = res.view();
                prop_assert!(view.memory.used <= view.memory.budget);
            }
            for name in names {
                let _ = res.release(name);
            }
            prop_assert_eq!(res.free_cores().len(), 4);
            prop_assert_eq!(res.free_memory(), 48 * MIB);
        }
    }
}
