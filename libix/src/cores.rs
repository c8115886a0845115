//! The elastic threads of a running dataplane: started with it, added and
//! removed while traffic flows.
//!
//! A dataplane's port is opened with as many queues as it may ever have
//! cores ([`crate::Config::max_cores`]); a core serves the queue of its
//! index. Resizing ([`crate::Dataplane::resize`], or ixcpd's command over
//! the lifeline) goes:
//!
//! - **grow**: start the new elastic threads (pinned, with their pools);
//!   they own no flow group yet, so they receive nothing;
//! - move flow groups to match the new redirection table (by default
//!   the fewest moves that balance the groups over the new core count):
//!   [`dataplane::migrate::Shared::migrate`] marks them moving, rewrites
//!   the NIC's table (memif's shared steering table, DPDK's RETA) and has
//!   each source core hand its connections over, IX's protocol with held
//!   and forwarded packets (see `dataplane::migrate`); wait until every
//!   source reported ([`MIGRATION_TIMEOUT`]);
//! - **shrink**: the cores above the new count own nothing now; they are
//!   told to retire, and the resize returns once their threads ended, so
//!   their CPUs and pools may be given away.
//!
//! One resize runs at a time; a dataplane that is stopping refuses them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use control_plane::resources::rebalance;
use dataplane::elastic::CoreCounters;
use dataplane::migrate::{Message, Shared};

use crate::runtime::{CoreReport, IxError, PoolMem};

/// After this long a resize whose flow groups still move logs a warning
/// (it keeps waiting: moves cannot be undone); a removed core's thread
/// that `join` holds is waited for this long.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// What a core's thread returns.
pub(crate) type CoreResult = Result<CoreReport, IxError>;

/// Starts the elastic thread of queue `q` on CPU `cpu` with `pool` (or a
/// pool of its own), which reports how far it got in `life`.
pub(crate) type SpawnCore = dyn Fn(
        u16,
        Option<usize>,
        Option<PoolMem>,
        Arc<CoreLife>,
    ) -> Result<JoinHandle<CoreResult>, IxError>
    + Send
    + Sync;

/// How far a core's thread got.
#[derive(Debug, Default)]
pub(crate) struct CoreLife {
    /// It runs its loop (its queue is open), so it reads its mailbox.
    pub(crate) looping: AtomicBool,
    /// It ended.
    pub(crate) exited: AtomicBool,
}

/// Rewrites the NIC's redirection table (flow group → queue).
pub(crate) type SetTable = dyn Fn(&[u16]) -> Result<(), IxError> + Send + Sync;

/// One started core.
struct Slot {
    /// Its thread, until someone joins it.
    thread: Option<JoinHandle<CoreResult>>,
    /// What the thread says of itself.
    life: Arc<CoreLife>,
}

struct State {
    /// Cores serving now (queues `0..active`).
    active: usize,
    /// Every core started, by queue (a removed core's slot is reused).
    slots: Vec<Option<Slot>>,
    /// What ended cores returned, in the order they were joined.
    finished: Vec<CoreResult>,
    /// `join` took every thread: no more resizes.
    closed: bool,
}

/// A dataplane's cores.
pub(crate) struct Cores {
    spawn: Box<SpawnCore>,
    set_table: Box<SetTable>,
    shared: Arc<Shared>,
    counters: Vec<Arc<CoreCounters>>,
    stop: Arc<AtomicBool>,
    /// The application moves its connections between cores
    /// ([`crate::App::MIGRATES`]).
    migrates: bool,
    state: Mutex<State>,
}

impl Cores {
    /// Starts one core per entry of `cpus`, with `pools` (one per core, or
    /// none: each core makes its own).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        spawn: Box<SpawnCore>,
        set_table: Box<SetTable>,
        shared: Arc<Shared>,
        counters: Vec<Arc<CoreCounters>>,
        stop: Arc<AtomicBool>,
        migrates: bool,
        cpus: &[Option<usize>],
        pools: Vec<Option<PoolMem>>,
    ) -> Result<Cores, IxError> {
        let cores = Cores {
            spawn,
            set_table,
            shared,
            counters,
            stop,
            migrates,
            state: Mutex::new(State {
                active: 0,
                slots: Vec::new(),
                finished: Vec::new(),
                closed: false,
            }),
        };
        {
            let mut st = cores.lock();
            for (q, (cpu, pool)) in cpus.iter().zip(pools).enumerate() {
                cores.start_core(&mut st, q, *cpu, pool)?;
            }
            st.active = cpus.len();
        }
        Ok(cores)
    }

    /// A dataplane without cores, that refuses to grow (tests of the
    /// lifeline).
    #[cfg(test)]
    pub(crate) fn none(stop: Arc<AtomicBool>) -> Cores {
        use dataplane::rss::RssConfig;
        Cores {
            spawn: Box::new(|_, _, _, _| Err(IxError::Resize("no cores here".into()))),
            set_table: Box::new(|_| Ok(())),
            shared: Shared::new(&RssConfig::round_robin(1, 8), 1, true),
            counters: Vec::new(),
            stop,
            migrates: true,
            state: Mutex::new(State {
                active: 0,
                slots: Vec::new(),
                finished: Vec::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_core(
        &self,
        st: &mut State,
        q: usize,
        cpu: Option<usize>,
        pool: Option<PoolMem>,
    ) -> Result<(), IxError> {
        let life = Arc::new(CoreLife::default());
        let thread = (self.spawn)(q as u16, cpu, pool, life.clone())?;
        if st.slots.len() <= q {
            st.slots.resize_with(q + 1, || None);
        }
        st.slots[q] = Some(Slot {
            thread: Some(thread),
            life,
        });
        Ok(())
    }

    /// Cores serving now.
    pub(crate) fn active(&self) -> usize {
        self.lock().active
    }

    /// Live counters of every core the port could have (those above
    /// [`Cores::active`] are idle or were removed).
    pub(crate) fn counters(&self) -> &[Arc<CoreCounters>] {
        &self.counters
    }

    /// The flow groups' current owners (what the NIC steers by).
    pub(crate) fn table(&self) -> Vec<u16> {
        self.shared.owners.table()
    }

    /// Grows or shrinks to `cpus.len()` cores (see the module docs).
    /// `pools` are the added cores' pools, in order (or empty: they make
    /// their own); `table` the redirection table to reach (default: the
    /// fewest moves that balance the groups). Returns the core count.
    pub(crate) fn resize(
        &self,
        cpus: &[Option<usize>],
        pools: Vec<Option<PoolMem>>,
        table: Option<Vec<u16>>,
    ) -> Result<usize, IxError> {
        let mut st = self.lock();
        if st.closed || self.stop.load(Ordering::Relaxed) {
            return Err(IxError::Resize("the dataplane is stopping".into()));
        }
        if !self.migrates {
            return Err(IxError::Resize(
                "the application does not move its connections between cores \
                 (App::MIGRATES is false)"
                    .into(),
            ));
        }
        if !self.shared.owners.is_steered() {
            return Err(IxError::Resize(
                dataplane::migrate::MigrateError::NotSteered.to_string(),
            ));
        }
        let (old, new) = (st.active, cpus.len());
        let max = usize::from(self.shared.max_cores());
        if new == 0 || new > max {
            return Err(IxError::Resize(format!(
                "{new} cores asked: between 1 and {max} (the port's queues)"
            )));
        }
        let table = match table {
            Some(t) => t,
            None => {
                let mut t = self.shared.owners.table();
                rebalance(&mut t, new as u16);
                t
            }
        };
        let serving = |q: usize| {
            st.slots.get(q).and_then(Option::as_ref).is_some_and(|s| {
                s.life.looping.load(Ordering::Acquire) && !s.life.exited.load(Ordering::Acquire)
            })
        };
        if let Some(q) = (0..old).find(|&q| !serving(q)) {
            return Err(IxError::Resize(format!(
                "core {q} is not serving (still waiting for its port's link — is a peer on \
                 the wire? — or it ended)"
            )));
        }
        if table.len() != self.shared.owners.groups()
            || table.iter().any(|&q| usize::from(q) >= new)
        {
            return Err(IxError::Resize(format!(
                "the redirection table must have {} entries below {new}",
                self.shared.owners.groups()
            )));
        }
        let mut pools = pools.into_iter();
        for (q, &cpu) in cpus.iter().enumerate().skip(old) {
            if let Err(e) = self.start_core(&mut st, q, cpu, pools.next().flatten()) {
                self.retire(&mut st, old..q);
                return Err(e);
            }
        }
        st.active = new.max(old);
        let moves = self.shared.moves_to(&table);
        let mut nic_error = None;
        let migrated = self.shared.migrate(&moves, |t| match (self.set_table)(t) {
            Ok(()) => true,
            Err(e) => {
                nic_error = Some(e);
                false
            }
        });
        let mut reports = match (migrated, nic_error) {
            (_, Some(e)) => {
                self.retire(&mut st, old..new);
                st.active = old;
                return Err(e);
            }
            (Err(e), None) => {
                self.retire(&mut st, old..new);
                st.active = old;
                return Err(IxError::Resize(e.to_string()));
            }
            (Ok(pending), None) => pending,
        };
        // Once groups move there is no going back: wait until the sources
        // handed them over and the targets took them (a core just started
        // may still be opening its queue), however long a starved core
        // takes — or the dataplane stops.
        let began = std::time::Instant::now();
        let mut warned = false;
        loop {
            let sources_done = reports.wait(Duration::from_millis(50)).is_ok();
            if sources_done && self.shared.settled(&moves) {
                break;
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(IxError::Resize(
                    "the dataplane stopped while flow groups moved".into(),
                ));
            }
            if !warned && began.elapsed() > MIGRATION_TIMEOUT {
                warned = true;
                log::warn!(
                    "resize from {old} to {new} cores: flow groups still moving after \
                     {MIGRATION_TIMEOUT:?}"
                );
            }
        }
        let reports = reports.reports();
        self.retire(&mut st, new..old);
        st.active = new;
        let conns: usize = reports.iter().map(|r| r.conns).sum();
        log::info!(
            "resized from {old} to {new} cores: {} flow groups and {conns} connections moved",
            moves.len()
        );
        Ok(new)
    }

    /// Tells the cores of `queues` (which own no flow group) to leave
    /// their loops, and waits until their threads ended.
    fn retire(&self, st: &mut State, queues: std::ops::Range<usize>) {
        for q in queues.clone() {
            self.shared.post(q as u16, Message::Retire);
        }
        for q in queues {
            let Some(slot) = st.slots.get_mut(q).and_then(Option::take) else {
                continue;
            };
            match slot.thread {
                Some(t) => {
                    let r = t.join().unwrap_or(Err(IxError::Panicked(q as u16)));
                    st.finished.push(r);
                }
                // `join` holds the thread: wait for it to end there.
                None => {
                    let deadline = std::time::Instant::now() + MIGRATION_TIMEOUT;
                    while !slot.life.exited.load(Ordering::Acquire)
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    /// Joins every core's thread, those started later included, until
    /// none is left; then refuses resizes. Returns what they returned.
    pub(crate) fn join_all(&self) -> Vec<CoreResult> {
        loop {
            let next = {
                let mut st = self.lock();
                let next = st
                    .slots
                    .iter_mut()
                    .enumerate()
                    .find_map(|(q, s)| Some((q, s.as_mut()?.thread.take()?)));
                if next.is_none() {
                    st.closed = true;
                }
                next
            };
            let Some((q, thread)) = next else { break };
            let r = thread.join().unwrap_or(Err(IxError::Panicked(q as u16)));
            self.lock().finished.push(r);
        }
        std::mem::take(&mut self.lock().finished)
    }
}
