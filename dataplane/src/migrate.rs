//! Flow groups, who owns them, and moving them between the cores of one
//! dataplane while traffic flows — IX's migration protocol.
//!
//! A port hashes each inbound flow (Toeplitz over source and destination
//! address and port, [`crate::rss`]) into one of N *flow groups*; its
//! redirection table (RETA) sends each group to a queue, and each queue
//! belongs to one core. [`FlowOwners`] is the dataplane's own copy of that
//! table, shared by its cores: which core owns each group, or that the
//! group is *moving* to a core. A core consults it only when a segment
//! matches none of its connections (a new flow, or one that is not its
//! own), so owning costs nothing on the fast path.
//!
//! # Moving groups from core A to core B
//!
//! The controller (libix's runtime, told by ixcpd or the load policy)
//! calls [`Shared::migrate`]:
//!
//! 1. every moving group is marked `Moving { to: B }` in [`FlowOwners`];
//! 2. the NIC's redirection table is rewritten (the caller's callback:
//!    memif's shared steering table, DPDK's RETA), so new packets of those
//!    groups arrive at B, which must not run them before the older ones
//!    still on their way through A:
//!    B holds every segment of a moving group — also one of a connection
//!    it already took over — until the move settles (one atomic load per
//!    turn tells a core whether any group is moving to it);
//! 3. A is sent [`Message::MigrateOut`] in its mailbox. Between two turns
//!    A asks the application for each affected connection's state
//!    ([`crate::elastic::Handler::migrate_out`]), exports the connections
//!    from its TCP stack ([`crate::tcp::TcpStack::export`]) and sends them
//!    to B ([`Message::Arrive`]). From then on a segment of those groups
//!    that reaches A matches nothing there and is forwarded to B
//!    ([`Message::Forward`]; a copy, this path is rare);
//! 4. once at least [`SETTLE_AFTER`] has passed since the hand-over and A
//!    has drained its RX queue once (a burst below the batch bound), A
//!    sends [`Message::Settled`] — IX's 1 ms timeout — and reports to the
//!    controller;
//! 5. B processes its mailbox in order: it imports the connections (and
//!    gives the application their state), runs the forwarded segments,
//!    then on `Settled` marks the groups its own and replays the segments
//!    it held, in arrival order. Forwarded segments left A before the held
//!    ones left the peer, so each flow's order is kept: no segment is
//!    lost or reordered by a move (a straggler the peer sent before the
//!    table changed and that reaches A after `Settled` is still forwarded,
//!    late, and TCP puts it in order).
//!
//! A segment of a group a core does not own is always forwarded to the
//! owner, also after the move settled: a straggler the peer sent long
//! before is delivered late rather than lost (TCP reorders it).
//!
//! # Deviations from IX
//!
//! IX finished a move at the first packet reaching the target or after
//! 1 ms. Here the *source* ends it, after 1 ms and one drained RX poll:
//! a packet at the target does not prove the source's queue is empty.
//! Held segments are bounded ([`MAX_HELD`]); beyond that they are dropped
//! and counted (TCP retransmits them). Connections move with copies of
//! their unacknowledged bytes (see [`crate::tcp::MovedConn`]).

use std::any::Any;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::SegQueue;

use crate::rss::{toeplitz, FlowTuple, RssConfig, RSS_KEY_LEN};
use crate::tcp::{FourTuple, MovedConn};

/// How long a source core forwards a moved group's segments before it
/// tells the target the move is settled (IX: 1 ms).
pub const SETTLE_AFTER: Duration = Duration::from_millis(1);

/// Most segments a target core holds for groups moving to it.
pub const MAX_HELD: usize = 4096;

/// Marks an owner entry as moving to the core in the low bits.
const MOVING: u16 = 0x8000;

/// Errors of a migration request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MigrateError {
    /// A group index beyond the table.
    #[error("flow group {group} does not exist (the table has {groups})")]
    NoSuchGroup {
        /// The group.
        group: u16,
        /// Groups in the table.
        groups: usize,
    },
    /// A core index beyond the dataplane's maximum.
    #[error("core {core} does not exist (at most {max} cores)")]
    NoSuchCore {
        /// The core.
        core: u16,
        /// The maximum.
        max: u16,
    },
    /// The group is still moving from an earlier request.
    #[error("flow group {0} is still moving")]
    StillMoving(u16),
    /// The NIC does not steer by the flow-group table.
    #[error("the port does not steer flows by a redirection table (no receive-side scaling): flow groups cannot move between its queues")]
    NotSteered,
    /// The NIC refused the new redirection table; nothing moved.
    #[error("the NIC refused the new redirection table")]
    NicRefused,
    /// A core did not report the hand-over in time.
    #[error("core {core} did not hand its flow groups over within {waited:?}")]
    Timeout {
        /// The source core.
        core: u16,
        /// How long the controller waited.
        waited: Duration,
    },
}

/// Who owns a flow group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The core processes the group's flows.
    Core(u16),
    /// The group is moving to this core; it holds the group's new flows
    /// until the move settles.
    Moving {
        /// The target core.
        to: u16,
    },
}

impl Owner {
    fn decode(word: u16) -> Owner {
        if word & MOVING != 0 {
            Owner::Moving { to: word & !MOVING }
        } else {
            Owner::Core(word)
        }
    }

    /// The core whose table entry this is: the owner, or the target of a
    /// move.
    pub fn core(self) -> u16 {
        match self {
            Owner::Core(c) | Owner::Moving { to: c } => c,
        }
    }
}

/// The owner of every flow group, shared by a dataplane's cores.
#[derive(Debug)]
pub struct FlowOwners {
    key: [u8; RSS_KEY_LEN],
    owner: Box<[AtomicU16]>,
    /// The NIC steers by this table. When it does not (a device without
    /// receive-side scaling, whose queue *k* gets what the peer sends on
    /// its queue *k*), each core takes what arrives on its queue: every
    /// flow counts as the core's own, and groups cannot move.
    steered: bool,
}

impl FlowOwners {
    /// The table of `rss` (group → queue = core), with its key; `steered`:
    /// whether the NIC steers by it (see [`FlowOwners::is_steered`]).
    pub fn new(rss: &RssConfig, steered: bool) -> FlowOwners {
        FlowOwners {
            key: rss.key,
            owner: rss.reta.iter().map(|&q| AtomicU16::new(q)).collect(),
            steered,
        }
    }

    /// Whether the NIC steers flows by this table (so groups can move).
    pub fn is_steered(&self) -> bool {
        self.steered
    }

    /// Number of flow groups.
    pub fn groups(&self) -> usize {
        self.owner.len()
    }

    /// The flow group of inbound traffic of a connection (the peer is the
    /// source, as the NIC hashes it).
    pub fn group_of(&self, tuple: &FourTuple) -> usize {
        let inbound = FlowTuple {
            src_ip: tuple.remote.ip().octets(),
            dst_ip: tuple.local.ip().octets(),
            src_port: tuple.remote.port(),
            dst_port: tuple.local.port(),
        };
        toeplitz(&self.key, &inbound.hash_input()) as usize % self.owner.len()
    }

    /// The owner of group `group`.
    pub fn owner(&self, group: usize) -> Owner {
        Owner::decode(self.owner[group].load(Ordering::Acquire))
    }

    /// Whether `core` owns the connection's flow group outright (always,
    /// when the NIC does not steer by the table).
    #[inline]
    pub fn is_owned_by(&self, tuple: &FourTuple, core: u16) -> bool {
        !self.steered || self.owner(self.group_of(tuple)) == Owner::Core(core)
    }

    /// The table the NIC steers by: each group's owner, or the target of
    /// its move.
    pub fn table(&self) -> Vec<u16> {
        (0..self.groups()).map(|g| self.owner(g).core()).collect()
    }

    /// The groups `core` owns outright.
    pub fn groups_of(&self, core: u16) -> Vec<u16> {
        (0..self.groups())
            .filter(|&g| self.owner(g) == Owner::Core(core))
            .map(|g| g as u16)
            .collect()
    }

    fn set(&self, group: usize, owner: Owner) {
        let word = match owner {
            Owner::Core(c) => c,
            Owner::Moving { to } => to | MOVING,
        };
        self.owner[group].store(word, Ordering::Release);
    }
}

/// A connection on its way between cores, with its application state.
pub struct Arrival {
    /// The TCP connection.
    pub conn: MovedConn,
    /// What the application gave for it ([`crate::elastic::Handler::migrate_out`]).
    pub app: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrival")
            .field("tuple", &self.conn.tuple())
            .field("app", &self.app.is_some())
            .finish()
    }
}

/// What a source core reports once it handed groups over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOver {
    /// The source core.
    pub from: u16,
    /// The target core.
    pub to: u16,
    /// Groups moved.
    pub groups: usize,
    /// Connections exported.
    pub conns: usize,
}

/// A message to a core, read between two turns of its loop.
#[derive(Debug)]
pub enum Message {
    /// Hand `groups` over to core `to` (the controller already marked them
    /// moving and rewrote the NIC's table); report on `done` once settled.
    MigrateOut {
        /// The groups.
        groups: Vec<u16>,
        /// The target core.
        to: u16,
        /// Where to report.
        done: mpsc::Sender<HandOver>,
    },
    /// Connections handed over by core `from`.
    Arrive {
        /// The source core.
        from: u16,
        /// The connections.
        conns: Vec<Arrival>,
    },
    /// A TCP segment (IPv4 payload) that reached another core.
    Forward {
        /// The peer's address.
        src: Ipv4Addr,
        /// Ours.
        dst: Ipv4Addr,
        /// The TCP header and payload.
        segment: Vec<u8>,
    },
    /// The source will send nothing more for these groups: they are the
    /// target's.
    Settled {
        /// The groups.
        groups: Vec<u16>,
    },
    /// Leave the loop after this turn (a core being removed, which owns
    /// no group any more).
    Retire,
}

/// What a dataplane's cores share: the flow-group owners and one mailbox
/// per core (up to the port's queue count).
#[derive(Debug)]
pub struct Shared {
    /// The owner of every flow group.
    pub owners: FlowOwners,
    mailboxes: Box<[SegQueue<Message>]>,
    signals: Box<[Signal]>,
}

/// What a core reads once per turn, on a cache line of its own: the
/// number of groups moving to it (low 32 bits) and a count of the
/// messages posted to it (high 32 bits, wrapping).
#[derive(Debug, Default)]
#[repr(align(64))]
struct Signal(AtomicU64);

/// One message posted, in a [`Signal`] word.
const POSTED: u64 = 1 << 32;

/// A core's view of its [`Signal`] at the start of a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Attention(u64);

impl Attention {
    /// Whether messages were posted since `seen` (an earlier view).
    #[inline]
    pub(crate) fn has_mail_since(self, seen: Attention) -> bool {
        self.0 >> 32 != seen.0 >> 32
    }

    /// Whether any flow group is moving to the core.
    #[inline]
    pub(crate) fn has_incoming(self) -> bool {
        self.0 as u32 != 0
    }
}

/// Hand-overs the controller waits for.
#[derive(Debug)]
pub struct Pending {
    sources: Vec<u16>,
    reports: mpsc::Receiver<HandOver>,
    got: Vec<HandOver>,
}

impl Pending {
    /// Waits until every source core reported, at most `timeout` (wait
    /// again after a timeout: the moves go on).
    pub fn wait(&mut self, timeout: Duration) -> Result<(), MigrateError> {
        let deadline = std::time::Instant::now() + timeout;
        while self.got.len() < self.sources.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(r) => self.got.push(r),
                Err(_) => {
                    let core = self
                        .sources
                        .iter()
                        .copied()
                        .find(|s| self.got.iter().all(|r| r.from != *s))
                        .unwrap_or_default();
                    return Err(MigrateError::Timeout {
                        core,
                        waited: timeout,
                    });
                }
            }
        }
        Ok(())
    }

    /// What the sources reported so far.
    pub fn reports(&self) -> &[HandOver] {
        &self.got
    }
}

impl Shared {
    /// The shared state of a dataplane whose port has `max_cores` queues
    /// and steers by `rss` (`steered`; see [`FlowOwners::is_steered`]).
    pub fn new(rss: &RssConfig, max_cores: u16, steered: bool) -> Arc<Shared> {
        let max = max_cores
            .max(1)
            .max(rss.reta.iter().max().map_or(0, |m| m + 1));
        Arc::new(Shared {
            owners: FlowOwners::new(rss, steered),
            mailboxes: (0..max).map(|_| SegQueue::new()).collect(),
            signals: (0..max).map(|_| Signal::default()).collect(),
        })
    }

    /// Most cores (one mailbox each).
    pub fn max_cores(&self) -> u16 {
        self.mailboxes.len() as u16
    }

    /// Posts `msg` to `core`'s mailbox (dropped if there is no such core).
    pub fn post(&self, core: u16, msg: Message) {
        let i = usize::from(core);
        if let (Some(m), Some(s)) = (self.mailboxes.get(i), self.signals.get(i)) {
            m.push(msg);
            s.0.fetch_add(POSTED, Ordering::Release);
        }
    }

    /// What `core` should look at this turn (one atomic load).
    #[inline]
    pub(crate) fn attention(&self, core: u16) -> Attention {
        Attention(
            self.signals
                .get(usize::from(core))
                .map_or(0, |s| s.0.load(Ordering::Acquire)),
        )
    }

    /// Whether `core` has mail (for tests).
    #[cfg(test)]
    fn has_mail(&self, core: u16) -> bool {
        self.mailboxes
            .get(usize::from(core))
            .is_some_and(|m| !m.is_empty())
    }

    /// Whether any flow group is moving to `core`.
    pub fn has_incoming(&self, core: u16) -> bool {
        self.attention(core).has_incoming()
    }

    fn add_incoming(&self, core: u16, n: usize) {
        self.signals[usize::from(core)]
            .0
            .fetch_add(n as u64, Ordering::AcqRel);
    }

    fn sub_incoming(&self, core: u16, n: usize) {
        self.signals[usize::from(core)]
            .0
            .fetch_sub(n as u64, Ordering::AcqRel);
    }

    pub(crate) fn take_mail(&self, core: u16) -> Option<Message> {
        self.mailboxes.get(usize::from(core))?.pop()
    }

    /// Starts moving each `(group, to)` of `moves` away from its owner:
    /// marks them moving, calls `update_nic` with the table the NIC must
    /// steer by from now on, then asks each source core to hand its groups
    /// over. Groups already on their target are skipped. When `update_nic`
    /// returns false the marks are undone and nothing moves. Wait for the
    /// hand-overs with [`Pending::wait`].
    pub fn migrate(
        &self,
        moves: &[(u16, u16)],
        update_nic: impl FnOnce(&[u16]) -> bool,
    ) -> Result<Pending, MigrateError> {
        if !self.owners.is_steered() && !moves.is_empty() {
            return Err(MigrateError::NotSteered);
        }
        let groups = self.owners.groups();
        let mut by_pair: Vec<((u16, u16), Vec<u16>)> = Vec::new();
        for &(g, to) in moves {
            if usize::from(g) >= groups {
                return Err(MigrateError::NoSuchGroup { group: g, groups });
            }
            if to >= self.max_cores() {
                return Err(MigrateError::NoSuchCore {
                    core: to,
                    max: self.max_cores(),
                });
            }
            let from = match self.owners.owner(usize::from(g)) {
                Owner::Core(c) => c,
                Owner::Moving { .. } => return Err(MigrateError::StillMoving(g)),
            };
            if from == to || by_pair.iter().any(|(_, l)| l.contains(&g)) {
                continue;
            }
            match by_pair.iter_mut().find(|(p, _)| *p == (from, to)) {
                Some((_, list)) => list.push(g),
                None => by_pair.push(((from, to), vec![g])),
            }
        }
        for ((_, to), list) in &by_pair {
            self.add_incoming(*to, list.len());
            for &g in list {
                self.owners.set(usize::from(g), Owner::Moving { to: *to });
            }
        }
        if !update_nic(&self.owners.table()) {
            for ((from, to), list) in &by_pair {
                for &g in list {
                    self.owners.set(usize::from(g), Owner::Core(*from));
                }
                self.sub_incoming(*to, list.len());
            }
            return Err(MigrateError::NicRefused);
        }
        let (done, reports) = mpsc::channel();
        let mut sources = Vec::with_capacity(by_pair.len());
        for ((from, to), list) in by_pair {
            sources.push(from);
            self.post(
                from,
                Message::MigrateOut {
                    groups: list,
                    to,
                    done: done.clone(),
                },
            );
        }
        Ok(Pending {
            sources,
            reports,
            got: Vec::new(),
        })
    }

    /// Marks `groups` owned by `core` (the target, when it settles a move).
    pub(crate) fn settle(&self, groups: &[u16], core: u16) {
        let mut settled = 0;
        for &g in groups {
            if usize::from(g) < self.owners.groups()
                && self.owners.owner(usize::from(g)) == (Owner::Moving { to: core })
            {
                self.owners.set(usize::from(g), Owner::Core(core));
                settled += 1;
            }
        }
        if usize::from(core) < self.signals.len() {
            self.sub_incoming(core, settled);
        }
    }

    /// Whether every `(group, to)` of `moves` is owned by its target (the
    /// target processed the source's `Settled`).
    pub fn settled(&self, moves: &[(u16, u16)]) -> bool {
        moves.iter().all(|&(g, to)| {
            usize::from(g) >= self.owners.groups()
                || self.owners.owner(usize::from(g)) == Owner::Core(to)
        })
    }

    /// Moves for a new table: `(group, new core)` for each group whose
    /// owner differs from `table`.
    pub fn moves_to(&self, table: &[u16]) -> Vec<(u16, u16)> {
        table
            .iter()
            .enumerate()
            .filter(|&(g, &q)| g < self.owners.groups() && self.owners.owner(g).core() != q)
            .map(|(g, &q)| (g as u16, q))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn tuple(port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
        }
    }

    #[test]
    fn owners_start_as_the_redirection_table_and_hash_like_the_nic() {
        let rss = RssConfig::round_robin(2, 128);
        let shared = Shared::new(&rss, 4, true);
        assert_eq!(shared.max_cores(), 4);
        assert_eq!(shared.owners.table(), rss.reta);
        for port in 1000..1100 {
            let t = tuple(port);
            let inbound = FlowTuple {
                src_ip: t.remote.ip().octets(),
                dst_ip: t.local.ip().octets(),
                src_port: t.remote.port(),
                dst_port: t.local.port(),
            };
            assert_eq!(shared.owners.group_of(&t), rss.flow_group(&inbound));
            assert!(shared.owners.is_owned_by(&t, rss.queue_for(&inbound)));
        }
    }

    #[test]
    fn migrate_marks_groups_moving_rewrites_the_table_and_asks_the_sources() {
        let shared = Shared::new(&RssConfig::round_robin(2, 8), 3, true);
        let mut nic = Vec::new();
        let pending = shared
            .migrate(&[(0, 2), (1, 2), (3, 1), (2, 0)], |t| {
                nic = t.to_vec();
                true
            })
            .unwrap();
        // group 3 is already core 1's; group 2 moves 0 → 0: nothing
        assert_eq!(nic, vec![2, 2, 0, 1, 0, 1, 0, 1]);
        assert_eq!(shared.owners.owner(0), Owner::Moving { to: 2 });
        assert_eq!(shared.owners.owner(1), Owner::Moving { to: 2 });
        assert_eq!(shared.owners.owner(2), Owner::Core(0));
        let Some(Message::MigrateOut { groups, to, done }) = shared.take_mail(0) else {
            panic!("core 0 gets a hand-over request");
        };
        assert_eq!((groups, to), (vec![0], 2));
        let Some(Message::MigrateOut { groups, .. }) = shared.take_mail(1) else {
            panic!("core 1 gets a hand-over request");
        };
        assert_eq!(groups, vec![1]);
        assert!(!shared.has_mail(2));
        assert!(shared.has_incoming(2) && !shared.has_incoming(1));
        // a second move of a moving group is refused
        assert_eq!(
            shared.migrate(&[(0, 1)], |_| true).unwrap_err(),
            MigrateError::StillMoving(0)
        );
        done.send(HandOver {
            from: 0,
            to: 2,
            groups: 1,
            conns: 0,
        })
        .unwrap();
        // core 1 never reports
        let mut pending = pending;
        assert!(matches!(
            pending.wait(Duration::from_millis(20)),
            Err(MigrateError::Timeout { core: 1, .. })
        ));
        assert_eq!(pending.reports().len(), 1);
        shared.settle(&[0, 1], 2);
        assert_eq!(shared.owners.groups_of(2), vec![0, 1]);
        assert!(!shared.has_incoming(2), "nothing moves to core 2 any more");
        // settling again (a duplicate) changes nothing
        shared.settle(&[0, 1], 2);
        assert!(!shared.has_incoming(2));
    }

    #[test]
    fn bad_moves_are_refused_before_anything_changes() {
        let shared = Shared::new(&RssConfig::round_robin(1, 4), 2, true);
        let before = shared.owners.table();
        assert_eq!(
            shared.migrate(&[(0, 1), (9, 1)], |_| true).unwrap_err(),
            MigrateError::NoSuchGroup {
                group: 9,
                groups: 4
            }
        );
        assert_eq!(
            shared.migrate(&[(0, 5)], |_| true).unwrap_err(),
            MigrateError::NoSuchCore { core: 5, max: 2 }
        );
        assert_eq!(shared.owners.table(), before);
        assert_eq!(
            shared.migrate(&[(0, 1)], |_| false).unwrap_err(),
            MigrateError::NicRefused
        );
        assert_eq!(shared.owners.table(), before);
        assert!(!shared.has_mail(0));
        assert_eq!(shared.moves_to(&[1, 0, 1, 0]), vec![(0, 1), (2, 1)]);
        let unsteered = Shared::new(&RssConfig::round_robin(2, 4), 2, false);
        assert!(
            unsteered.owners.is_owned_by(&tuple(1), 0)
                && unsteered.owners.is_owned_by(&tuple(1), 1)
        );
        assert_eq!(
            unsteered.migrate(&[(0, 1)], |_| true).unwrap_err(),
            MigrateError::NotSteered
        );
    }
}
