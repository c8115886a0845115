//! Two [`TcpStack`]s wired through a seeded simulated network (loss,
//! duplication, reordering, delay) on a virtual clock, with an application
//! on each side that streams random-size messages both ways, checks every
//! received byte against the sender's pattern (so each byte must arrive
//! exactly once and in order), releases what it reads with `recv_done`,
//! and closes when done. A run ends when every connection on both sides
//! has reached CLOSED (TIME-WAIT included) in virtual time.
//!
//! Each node has two cores (two stacks with different secrets). Client
//! ports fall into flow groups; a node's `owner` table says which core
//! holds each group's connections, and its `nic` table where arriving
//! frames are steered. By default core 0 owns everything. A run can
//! schedule migrations: at a given time a node exports every connection
//! of a group from its core and imports it into the other; the NIC's
//! steering follows after a random lag, and frames that reach the old core
//! meanwhile come back from `input_steered` and are forwarded.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

use rand::{rngs::SmallRng, Rng, SeedableRng};

use super::*;
use crate::buf::{PktBuf, Pool};
use crate::net::IpSender;
use crate::time::Instant;
use crate::txbuf::TxBuf;

const IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2)];
const SERVER_PORT: u16 = 5000;
const CLIENT_BASE: u16 = 20000;
/// Period of the data pattern (prime, so it never lines up with segment
/// or message sizes).
const PLEN: usize = 65521;
const MAX_MSG: usize = 65536;
/// Cores per node.
const CORES: usize = 2;
/// Flow groups (client port modulo this).
const GROUPS: usize = 4;

/// Impairments of the simulated network.
#[derive(Debug, Clone, Copy)]
struct NetParams {
    loss: f64,
    dup: f64,
    /// Probability that a packet is held back by an extra delay.
    reorder: f64,
    delay: Duration,
    jitter: Duration,
}

struct Frame {
    at: Instant,
    id: u64,
    to: usize,
    bytes: Vec<u8>,
}

impl PartialEq for Frame {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for Frame {}
impl PartialOrd for Frame {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Frame {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.id).cmp(&(o.at, o.id))
    }
}

/// The IP layer of a node: captures TCP segments for the network.
#[derive(Default)]
struct Capture {
    frames: Vec<Vec<u8>>,
}

impl IpSender for Capture {
    fn send_tcp(
        &mut self,
        _src: Ipv4Addr,
        _dst: Ipv4Addr,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        let mut b = vec![0u8; l4_len];
        fill(&mut b);
        self.frames.push(b);
        true
    }
}

/// One direction-pair of a connection as one application sees it.
#[derive(Debug, Default)]
struct Flow {
    conn: Option<ConnId>,
    /// Sizes of the messages this side sends.
    msgs: Vec<usize>,
    msg: usize,
    msg_off: usize,
    /// Bytes accepted by `send` so far.
    sent: usize,
    /// Where this side's stream starts in the pattern.
    tx_start: usize,
    /// What the peer sends: total and pattern start.
    rx_total: usize,
    rx_start: usize,
    rx_got: usize,
    closed: bool,
    /// The core whose stack holds the connection.
    core: usize,
}

struct Node {
    /// Which node this is (0 connects, 1 listens).
    id: usize,
    stacks: Vec<TcpStack>,
    /// Per flow group: the core holding its connections.
    owner: [usize; GROUPS],
    /// Per flow group: the core the NIC steers its frames to.
    nic: [usize; GROUPS],
    pool: Pool,
    cap: Capture,
    ev: Vec<Vec<TcpEvent>>,
    flows: Vec<Flow>,
    /// RX buffers unavailable: frames dropped like on a NIC.
    rx_no_buffer: u64,
    /// A slow reader: received data is released only every so often.
    release_every: Option<Duration>,
    next_release: Instant,
    held: Vec<(usize, ConnId, PktBuf)>,
}

/// The flow group of a connection, from the client port.
fn group_of(node: usize, t: &FourTuple) -> usize {
    let port = if node == 0 {
        t.local.port()
    } else {
        t.remote.port()
    };
    usize::from(port) % GROUPS
}

impl Node {
    fn try_send(&mut self, k: usize, pattern: &Rc<[u8]>) {
        let f = &mut self.flows[k];
        let Some(conn) = f.conn else { return };
        while f.msg < f.msgs.len() && !f.closed {
            let left = f.msgs[f.msg] - f.msg_off;
            let pos = (f.tx_start + f.sent) % PLEN;
            let buf = TxBuf::from_rc(pattern.clone()).slice(pos, left);
            let n = self.stacks[f.core]
                .send(conn, &[buf])
                .expect("send on a live flow");
            f.sent += n;
            f.msg_off += n;
            if f.msg_off == f.msgs[f.msg] {
                f.msg += 1;
                f.msg_off = 0;
            }
            if n < left {
                break;
            }
        }
    }

    fn maybe_close(&mut self, k: usize) {
        let f = &mut self.flows[k];
        if let Some(conn) = f.conn {
            if !f.closed && f.msg == f.msgs.len() && f.rx_got == f.rx_total {
                self.stacks[f.core].close(conn).expect("close a live flow");
                f.closed = true;
            }
        }
    }

    /// A slow reader's turn: releases everything it holds.
    fn release_held(&mut self, now: Instant) {
        let Some(every) = self.release_every else {
            return;
        };
        if now < self.next_release {
            return;
        }
        self.next_release = now + every;
        for (core, conn, data) in self.held.drain(..) {
            // The connection may have been closed meanwhile.
            let _ = self.stacks[core].recv_done(conn, data.len());
        }
    }

    /// The application on `core`: reacts to every event, checking
    /// received bytes.
    fn run_app(&mut self, core: usize, pattern: &Rc<[u8]>) {
        while !self.ev[core].is_empty() {
            let batch = std::mem::take(&mut self.ev[core]);
            for e in batch {
                let k = match e {
                    TcpEvent::Knock { conn, tuple } => {
                        let k = usize::from(tuple.remote.port() - CLIENT_BASE);
                        self.flows[k].conn = Some(conn);
                        self.flows[k].core = core;
                        self.stacks[core]
                            .accept(conn, k as u64, &mut self.ev[core])
                            .expect("accept");
                        k
                    }
                    TcpEvent::Connected { cookie, result, .. } => {
                        result.unwrap_or_else(|e| panic!("flow {cookie}: connect failed: {e}"));
                        cookie as usize
                    }
                    TcpEvent::Recv { conn, cookie, data } => {
                        let k = cookie as usize;
                        let f = &mut self.flows[k];
                        assert_eq!(
                            (f.conn, f.core),
                            (Some(conn), core),
                            "flow {k}: event on a stale handle"
                        );
                        for (i, b) in data.data().iter().enumerate() {
                            let at = f.rx_got + i;
                            assert!(at < f.rx_total, "flow {k}: more bytes than sent");
                            let want = pattern[(f.rx_start + at) % PLEN];
                            assert_eq!(*b, want, "flow {k}: byte {at} wrong");
                        }
                        f.rx_got += data.len();
                        if self.release_every.is_some() {
                            self.held.push((core, conn, data));
                        } else {
                            self.stacks[core]
                                .recv_done(conn, data.len())
                                .expect("recv_done");
                        }
                        k
                    }
                    TcpEvent::Sent { cookie, .. } => cookie as usize,
                    TcpEvent::Dead {
                        cookie,
                        reason: DeadReason::PeerClosed,
                        ..
                    } => {
                        let f = &self.flows[cookie as usize];
                        assert_eq!(f.rx_got, f.rx_total, "flow {cookie}: FIN before all data");
                        cookie as usize
                    }
                    TcpEvent::Dead { cookie, reason, .. } => {
                        panic!("flow {cookie} died: {reason:?}")
                    }
                };
                self.try_send(k, pattern);
                self.maybe_close(k);
            }
        }
    }
}

/// Outcome of a run.
#[derive(Debug)]
struct Report {
    virtual_time: Duration,
    stats: [TcpStats; 2],
    frames: u64,
    lost: u64,
    duplicated: u64,
    rx_no_buffer: u64,
}

struct Sim {
    now: Instant,
    nodes: [Node; 2],
    net: BinaryHeap<Reverse<Frame>>,
    params: NetParams,
    rng: SmallRng,
    next_id: u64,
    pattern: Rc<[u8]>,
    frames: u64,
    lost: u64,
    duplicated: u64,
    /// Scheduled migrations (time, node, group), latest first.
    migrations: Vec<(Instant, usize, usize)>,
    /// NIC steering updates not yet applied (time, node, group, core).
    steering: Vec<(Instant, usize, usize, usize)>,
    /// Connections moved between cores.
    moved: u64,
    /// Frames that reached the wrong core and were forwarded.
    forwarded: u64,
}

/// Message sizes for one direction of each flow.
type Plan = Vec<[Vec<usize>; 2]>;

impl Sim {
    /// Node 0 connects to node 1 once per entry of `plan`; entry `[a, b]`
    /// lists the messages node 0 sends (`a`) and node 1 sends (`b`).
    fn new(seed: u64, params: NetParams, cfg: TcpConfig, pool_slots: u32, plan: &Plan) -> Sim {
        let mut rng = SmallRng::seed_from_u64(seed);
        let base: Vec<u8> = (0..PLEN).map(|_| rng.gen()).collect();
        let pattern: Rc<[u8]> = (0..PLEN + MAX_MSG).map(|i| base[i % PLEN]).collect();
        let now = Instant::from_millis(10_000);
        let mk_node = |id: usize, rng: &mut SmallRng| Node {
            id,
            stacks: (0..CORES)
                .map(|_| TcpStack::new(cfg.clone(), now, rng.gen()))
                .collect(),
            owner: [0; GROUPS],
            nic: [0; GROUPS],
            pool: Pool::new(10 + id as u16, pool_slots, false).unwrap(),
            cap: Capture::default(),
            ev: (0..CORES).map(|_| Vec::new()).collect(),
            flows: Vec::new(),
            rx_no_buffer: 0,
            release_every: None,
            next_release: now,
            held: Vec::new(),
        };
        let mut nodes = [mk_node(0, &mut rng), mk_node(1, &mut rng)];
        for s in &mut nodes[1].stacks {
            s.listen(SERVER_PORT).unwrap();
        }
        for (k, [a, b]) in plan.iter().enumerate() {
            let start = |d: usize| (k * 7919 + d * 104_729) % PLEN;
            let (ta, tb) = (a.iter().sum(), b.iter().sum());
            nodes[0].flows.push(Flow {
                msgs: a.clone(),
                tx_start: start(0),
                rx_total: tb,
                rx_start: start(1),
                ..Flow::default()
            });
            nodes[1].flows.push(Flow {
                msgs: b.clone(),
                tx_start: start(1),
                rx_total: ta,
                rx_start: start(0),
                ..Flow::default()
            });
            let tuple = FourTuple {
                local: SocketAddrV4::new(IPS[0], CLIENT_BASE + k as u16),
                remote: SocketAddrV4::new(IPS[1], SERVER_PORT),
            };
            let conn = nodes[0].stacks[0].connect(now, tuple, k as u64).unwrap();
            nodes[0].flows[k].conn = Some(conn);
        }
        let mut sim = Sim {
            now,
            nodes,
            net: BinaryHeap::new(),
            params,
            rng,
            next_id: 0,
            pattern,
            frames: 0,
            lost: 0,
            duplicated: 0,
            migrations: Vec::new(),
            steering: Vec::new(),
            moved: 0,
            forwarded: 0,
        };
        sim.flush_all();
        sim
    }

    fn enqueue(&mut self, to: usize, bytes: Vec<u8>) {
        let p = self.params;
        let mut delay = p.delay + p.jitter.mul_f64(self.rng.gen::<f64>());
        if self.rng.gen_bool(p.reorder) {
            delay += p.delay * 4 + p.jitter.mul_f64(4.0 * self.rng.gen::<f64>());
        }
        self.next_id += 1;
        self.net.push(Reverse(Frame {
            at: self.now + delay,
            id: self.next_id,
            to,
            bytes,
        }));
    }

    /// Schedules `count` migrations at random times before `within` from
    /// now, each of a random group of a random node to its other core.
    fn schedule_migrations(&mut self, count: usize, within: Duration) {
        for _ in 0..count {
            let at = self.now + within.mul_f64(self.rng.gen::<f64>());
            let node = self.rng.gen_range(0..2);
            let group = self.rng.gen_range(0..GROUPS);
            self.migrations.push((at, node, group));
        }
        self.migrations.sort_by_key(|m| Reverse(m.0));
    }

    /// Moves every connection of `group` on `node` to the node's other
    /// core; the NIC follows after a random lag.
    fn migrate(&mut self, node: usize, group: usize) {
        let now = self.now;
        let n = &mut self.nodes[node];
        let from = n.owner[group];
        let to = (from + 1) % CORES;
        let mut all = Vec::new();
        n.stacks[from].connections(&mut all);
        for (id, tuple) in all {
            if group_of(node, &tuple) != group {
                continue;
            }
            let m = n.stacks[from]
                .export(now, id)
                .expect("export a live connection");
            let new = match n.stacks[to].import(now, m, &n.pool) {
                Ok(new) => new,
                Err((e, m)) => panic!("import of {:?} failed: {e}", m.tuple()),
            };
            self.moved += 1;
            for f in &mut n.flows {
                if f.core == from && f.conn == Some(id) {
                    f.conn = Some(new);
                    f.core = to;
                }
            }
            // Delivered, unreleased bytes count as released: drop them.
            n.held.retain(|(c, h, _)| (*c, *h) != (from, id));
        }
        n.owner[group] = to;
        let lag = (self.params.delay * 3).mul_f64(self.rng.gen::<f64>());
        self.steering.push((now + lag, node, group, to));
    }

    /// Runs the migrations and steering updates that are due.
    fn migrate_due(&mut self) {
        while self.migrations.last().is_some_and(|m| m.0 <= self.now) {
            let (_, node, group) = self.migrations.pop().unwrap();
            self.migrate(node, group);
        }
        let now = self.now;
        let nodes = &mut self.nodes;
        self.steering.retain(|&(at, node, group, core)| {
            if at > now {
                return true;
            }
            nodes[node].nic[group] = core;
            false
        });
    }

    /// Hands a frame to the core the NIC steers it to; a frame for a
    /// flow group that core no longer owns comes back and is forwarded to
    /// the owner.
    fn deliver(&mut self, to: usize, b: PktBuf) {
        let now = self.now;
        let n = &mut self.nodes[to];
        let bytes = b.data();
        let (sport, dport) = (
            u16::from_be_bytes([bytes[0], bytes[1]]),
            u16::from_be_bytes([bytes[2], bytes[3]]),
        );
        let client_port = if to == 0 { dport } else { sport };
        let mut core = n.nic[usize::from(client_port) % GROUPS];
        let mut seg = Some(b);
        for _ in 0..CORES {
            let Some(b) = seg.take() else { break };
            let owner = &n.owner;
            let id = n.id;
            seg = n.stacks[core].input_steered(
                now,
                IPS[1 - to],
                IPS[to],
                b,
                &mut n.cap,
                &mut n.ev[core],
                |t: &FourTuple| owner[group_of(id, t)] == core,
            );
            if seg.is_some() {
                self.forwarded += 1;
                core = (core + 1) % CORES;
            }
        }
        assert!(seg.is_none(), "a frame no core owns");
    }

    fn flush_all(&mut self) {
        for i in 0..2 {
            let n = &mut self.nodes[i];
            for s in &mut n.stacks {
                s.flush(self.now, &mut n.cap);
            }
            let frames = std::mem::take(&mut self.nodes[i].cap.frames);
            for f in frames {
                self.frames += 1;
                if self.rng.gen_bool(self.params.loss) {
                    self.lost += 1;
                    continue;
                }
                if self.rng.gen_bool(self.params.dup) {
                    self.duplicated += 1;
                    self.enqueue(1 - i, f.clone());
                }
                self.enqueue(1 - i, f);
            }
        }
    }

    fn done(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.flows.iter().all(|f| f.closed)
                && n.stacks.iter().all(|s| s.conn_count() == 0)
                && n.held.is_empty()
        })
    }

    fn run(&mut self, limit: Duration) -> Report {
        let start = self.now;
        while !self.done() {
            let next = [
                self.net.peek().map(|f| f.0.at),
                self.migrations.last().map(|m| m.0),
                self.steering.iter().map(|s| s.0).min(),
                self.nodes[0]
                    .release_every
                    .map(|_| self.nodes[0].next_release),
                self.nodes[1]
                    .release_every
                    .map(|_| self.nodes[1].next_release),
            ]
            .into_iter()
            .chain(
                self.nodes
                    .iter()
                    .flat_map(|n| n.stacks.iter().map(|s| s.next_deadline())),
            )
            .flatten()
            .min()
            .expect("nothing left to happen but the run is not done");
            self.now = self.now.max(next);
            assert!(
                self.now - start < limit,
                "no completion after {limit:?}: {:?}",
                self.progress()
            );
            self.migrate_due();
            while self.net.peek().is_some_and(|f| f.0.at <= self.now) {
                let Reverse(f) = self.net.pop().unwrap();
                let n = &mut self.nodes[f.to];
                let Some(mut b) = n.pool.alloc() else {
                    n.rx_no_buffer += 1;
                    continue;
                };
                assert!(b.extend_from_slice(&f.bytes));
                self.deliver(f.to, b);
            }
            for n in &mut self.nodes {
                for core in 0..CORES {
                    n.stacks[core].poll(self.now, &mut n.cap, &mut n.ev[core]);
                    n.run_app(core, &self.pattern);
                }
                n.release_held(self.now);
            }
            self.flush_all();
        }
        for n in &self.nodes {
            for (k, f) in n.flows.iter().enumerate() {
                assert_eq!(f.rx_got, f.rx_total, "flow {k}");
                assert_eq!(f.sent, f.msgs.iter().sum::<usize>(), "flow {k}");
            }
            for s in &n.stacks {
                let st = s.stats();
                assert_eq!((st.tx_queue_used, st.rx_queue_used), (0, 0), "leak");
                assert_eq!(st.half_open, 0);
            }
        }
        Report {
            virtual_time: self.now - start,
            stats: [
                self.nodes[0].stacks[0].stats(),
                self.nodes[1].stacks[0].stats(),
            ],
            frames: self.frames,
            lost: self.lost,
            duplicated: self.duplicated,
            rx_no_buffer: self.nodes[0].rx_no_buffer + self.nodes[1].rx_no_buffer,
        }
    }

    fn progress(&self) -> Vec<(usize, usize, usize, bool, Option<&'static str>)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.flows
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !f.closed)
                    .map(|(k, f)| {
                        (
                            k,
                            f.rx_got,
                            f.rx_total,
                            f.closed,
                            f.conn.and_then(|c| n.stacks[f.core].state_of(c)),
                        )
                    })
            })
            .take(8)
            .collect()
    }
}

fn sim_config() -> TcpConfig {
    TcpConfig {
        max_conns: 512,
        recv_buffer: 64 * 1024,
        tx_queue_entries: 512 * 8,
        rx_queue_entries: 16 * 1024,
        rto_min: Duration::from_millis(5),
        rto_initial: Duration::from_millis(50),
        time_wait: Duration::from_millis(100),
        fin_wait_2_timeout: Duration::from_secs(10),
        max_retries: 15,
        max_syn_retries: 10,
        ..TcpConfig::default()
    }
}

fn random_messages(rng: &mut SmallRng) -> Vec<usize> {
    (0..rng.gen_range(1..=3))
        .map(|_| rng.gen_range(1..=MAX_MSG))
        .collect()
}

#[test]
fn many_connections_exchange_every_byte_once_under_loss_dup_and_reordering() {
    let mut rng = SmallRng::seed_from_u64(7);
    let plan: Plan = (0..200)
        .map(|_| [random_messages(&mut rng), random_messages(&mut rng)])
        .collect();
    let total: usize = plan.iter().flatten().flatten().sum();
    let params = NetParams {
        loss: 0.05,
        dup: 0.02,
        reorder: 0.05,
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(30),
    };
    let wall = std::time::Instant::now();
    let r = Sim::new(1, params, sim_config(), 16 * 1024, &plan).run(Duration::from_secs(600));
    eprintln!(
        "200 connections, {total} bytes: {:?} virtual, {:?} wall; {} frames, {} lost, {} duplicated, {} no-buffer",
        r.virtual_time,
        wall.elapsed(),
        r.frames,
        r.lost,
        r.duplicated,
        r.rx_no_buffer
    );
    eprintln!("client {:?}\nserver {:?}", r.stats[0], r.stats[1]);
    // The impairments were exercised, and the recovery paths with them.
    assert!(r.lost > 100 && r.duplicated > 40);
    let both = |f: fn(&TcpStats) -> u64| f(&r.stats[0]) + f(&r.stats[1]);
    assert!(both(|s| s.fast_retransmits) > 0);
    assert!(both(|s| s.rto_timeouts) > 0);
    assert!(both(|s| s.duplicate_segments) > 0);
    assert_eq!(both(|s| s.conns_opened), 400);
    assert_eq!(both(|s| s.dropped_bad_checksum + s.dropped_malformed), 0);
}

#[test]
fn ten_megabytes_at_one_percent_loss() {
    let plan: Plan = vec![[vec![MAX_MSG; 10 * 1024 * 1024 / MAX_MSG], vec![100]]];
    let params = NetParams {
        loss: 0.01,
        dup: 0.0,
        reorder: 0.01,
        delay: Duration::from_micros(100),
        jitter: Duration::from_micros(20),
    };
    let cfg = TcpConfig {
        recv_buffer: 256 * 1024,
        send_buffer: 256 * 1024,
        ..sim_config()
    };
    let wall = std::time::Instant::now();
    let r = Sim::new(2, params, cfg, 4096, &plan).run(Duration::from_secs(600));
    let secs = r.virtual_time.as_secs_f64();
    eprintln!(
        "10 MiB: {:?} virtual ({:.0} Mbit/s), {:?} wall; {} frames, {} lost",
        r.virtual_time,
        10.0 * 8.0 * 1.048_576 / secs,
        wall.elapsed(),
        r.frames,
        r.lost
    );
    eprintln!("sender {:?}", r.stats[0]);
    assert!(r.lost > 50);
    assert!(r.stats[0].fast_retransmits > 0);
    assert_eq!(r.stats[1].bytes_in, 10 * 1024 * 1024);
}

#[test]
fn lossless_network_needs_no_retransmission() {
    let mut rng = SmallRng::seed_from_u64(3);
    let plan: Plan = (0..20)
        .map(|_| [random_messages(&mut rng), random_messages(&mut rng)])
        .collect();
    let params = NetParams {
        loss: 0.0,
        dup: 0.0,
        reorder: 0.0,
        delay: Duration::from_micros(50),
        jitter: Duration::ZERO,
    };
    let r = Sim::new(3, params, sim_config(), 4096, &plan).run(Duration::from_secs(60));
    for s in &r.stats {
        assert_eq!(s.retransmits, 0, "{s:?}");
        assert_eq!(s.rto_timeouts, 0, "{s:?}");
        assert_eq!(s.dropped_out_of_window, 0, "{s:?}");
    }
}

#[test]
fn slow_readers_close_the_window_and_probes_reopen_it_under_loss() {
    let mut rng = SmallRng::seed_from_u64(11);
    let plan: Plan = (0..20)
        .map(|_| [random_messages(&mut rng), random_messages(&mut rng)])
        .collect();
    let params = NetParams {
        loss: 0.03,
        dup: 0.01,
        reorder: 0.03,
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(30),
    };
    let cfg = TcpConfig {
        recv_buffer: 8 * 1024,
        ..sim_config()
    };
    let mut sim = Sim::new(5, params, cfg, 4096, &plan);
    for n in &mut sim.nodes {
        n.release_every = Some(Duration::from_millis(20));
    }
    let r = sim.run(Duration::from_secs(600));
    eprintln!(
        "slow readers: {:?} virtual; {} frames, {} lost",
        r.virtual_time, r.frames, r.lost
    );
    eprintln!("client {:?}\nserver {:?}", r.stats[0], r.stats[1]);
    let both = |f: fn(&TcpStats) -> u64| f(&r.stats[0]) + f(&r.stats[1]);
    assert!(
        both(|s| s.window_probes) > 0,
        "windows closed and were probed"
    );
}

#[test]
fn every_seed_completes_under_heavy_impairment() {
    // Many small runs with different seeds and harsher, varied settings:
    // a cheap way to reach rare interleavings (lost FINs, lost SYN-ACKs,
    // losses in recovery, duplicated RSTs after close).
    for seed in 0..12u64 {
        let mut rng = SmallRng::seed_from_u64(100 + seed);
        let plan: Plan = (0..12)
            .map(|_| [random_messages(&mut rng), random_messages(&mut rng)])
            .collect();
        let params = NetParams {
            loss: 0.05 + 0.1 * rng.gen::<f64>(),
            dup: 0.05 * rng.gen::<f64>(),
            reorder: 0.2 * rng.gen::<f64>(),
            delay: Duration::from_micros(rng.gen_range(10..500)),
            jitter: Duration::from_micros(rng.gen_range(0..500)),
        };
        let cfg = TcpConfig {
            recv_buffer: rng.gen_range(4..=64) * 1024,
            send_buffer: rng.gen_range(4..=64) * 1024,
            window_scale: rng.gen_range(0..=8),
            mss: rng.gen_range(200..=1460),
            ..sim_config()
        };
        let mut sim = Sim::new(seed, params, cfg, 4096, &plan);
        if seed % 3 == 0 {
            sim.nodes[1].release_every = Some(Duration::from_millis(3));
        }
        let r = sim.run(Duration::from_secs(3600));
        eprintln!(
            "seed {seed}: {params:?}: {:?} virtual, {} frames, {} lost",
            r.virtual_time, r.frames, r.lost
        );
    }
}

#[test]
fn connections_migrating_between_cores_mid_transfer_lose_no_byte() {
    // Bulk transfers both ways while flow groups move back and forth
    // between the two cores of either node (each move exports every
    // connection of the group and imports it into the other core's stack,
    // which has another secret), under loss, duplication and reordering.
    let (mut moved, mut forwarded) = (0, 0);
    for seed in 0..6u64 {
        let mut rng = SmallRng::seed_from_u64(200 + seed);
        let plan: Plan = (0..8)
            .map(|_| {
                let mut bulk = || vec![MAX_MSG; rng.gen_range(2..=4)];
                [bulk(), bulk()]
            })
            .collect();
        let params = NetParams {
            loss: 0.02 + 0.05 * rng.gen::<f64>(),
            dup: 0.03 * rng.gen::<f64>(),
            reorder: 0.1 * rng.gen::<f64>(),
            delay: Duration::from_micros(rng.gen_range(20..200)),
            jitter: Duration::from_micros(rng.gen_range(0..200)),
        };
        let cfg = TcpConfig {
            recv_buffer: rng.gen_range(8..=64) * 1024,
            send_buffer: rng.gen_range(8..=64) * 1024,
            ..sim_config()
        };
        let mut sim = Sim::new(seed, params, cfg, 4096, &plan);
        if seed % 2 == 1 {
            // A slow reader: migrations find delivered, unreleased bytes
            // and closed windows.
            sim.nodes[1].release_every = Some(Duration::from_millis(2));
        }
        // Early moves catch handshakes, later ones bulk data and closes.
        sim.schedule_migrations(4, Duration::from_millis(2));
        sim.schedule_migrations(12, Duration::from_millis(150));
        let r = sim.run(Duration::from_secs(3600));
        let stats: Vec<TcpStats> = sim
            .nodes
            .iter()
            .flat_map(|n| n.stacks.iter().map(|s| s.stats()))
            .collect();
        let sum = |f: fn(&TcpStats) -> u64| stats.iter().map(f).sum::<u64>();
        eprintln!(
            "seed {seed}: {params:?}: {:?} virtual, {} frames, {} lost, {} connections moved, {} frames forwarded, {} out-of-order segments dropped by moves",
            r.virtual_time,
            r.frames,
            r.lost,
            sim.moved,
            sim.forwarded,
            sum(|s| s.migrate_ooo_dropped)
        );
        assert_eq!(sum(|s| s.conns_exported), sim.moved);
        assert_eq!(sum(|s| s.conns_imported), sim.moved);
        assert_eq!(sum(|s| s.steered_away), sim.forwarded);
        assert_eq!(sum(|s| s.conns_opened), 16, "no connection was reopened");
        // No connection was reset; the only RSTs answer late duplicates
        // that reach a connection already closed.
        assert_eq!(sum(|s| s.rst_received), 0);
        assert_eq!(sum(|s| s.rst_sent), sum(|s| s.dropped_no_listener));
        moved += sim.moved;
        forwarded += sim.forwarded;
    }
    assert!(moved > 50, "connections moved: {moved}");
    assert!(
        forwarded > 0,
        "frames reached a core that had given their group away"
    );
}
