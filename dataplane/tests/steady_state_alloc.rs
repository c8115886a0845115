//! The hot path does not allocate: after a warm-up, an echo exchange over
//! an in-process wire runs thousands of loop turns on both elastic threads
//! with zero heap allocations, counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dataplane::buf::Pool;
use dataplane::elastic::{AppEvent, Core, CoreConfig, ElasticThread, Handler, DEFAULT_BATCH};
use dataplane::net::iface::IfaceConfig;
use dataplane::nic::pipe;
use dataplane::rss::RssConfig;
use dataplane::tcp::{ConnId, TcpConfig};
use dataplane::txbuf::TxBuf;
use dataplane::wire::ethernet::EthernetAddress;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the
// counter is a side effect with no bearing on the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const REQUEST: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CONNS: usize = 16;

fn cfg(ip: Ipv4Addr, last: u8) -> CoreConfig {
    CoreConfig {
        queue: 0,
        rss: RssConfig::round_robin(1, 16),
        iface: IfaceConfig {
            mac: EthernetAddress([2, 0, 0, 0, 1, last]),
            ip,
            prefix_len: 24,
            gateway: None,
            mtu: 1500,
        },
        tcp: TcpConfig::default(),
        batch: DEFAULT_BATCH,
        app_timers: 64,
    }
}

/// Echo server: replies with the received buffer itself.
struct Echo;

impl Handler for Echo {
    fn start(&mut self, core: &mut Core) {
        core.listen(7).unwrap();
    }
    fn handle(&mut self, core: &mut Core, events: &mut Vec<AppEvent>) {
        for ev in events.drain(..) {
            match ev {
                AppEvent::Knock { conn, .. } => core.accept(conn).unwrap(),
                AppEvent::Recv { data } => {
                    let n = core.sendv(data.conn(), &[data.to_tx()]).unwrap();
                    assert_eq!(n, data.data().len());
                }
                _ => {}
            }
        }
    }
}

/// Client: one 64-byte request in flight per connection.
struct Client {
    conns: Vec<ConnId>,
    pending: Vec<usize>,
    round_trips: u64,
}

impl Handler for Client {
    fn start(&mut self, core: &mut Core) {
        for _ in 0..CONNS {
            self.conns
                .push(core.connect(SocketAddrV4::new(SERVER, 7)).unwrap());
            self.pending.push(0);
        }
    }
    fn handle(&mut self, core: &mut Core, events: &mut Vec<AppEvent>) {
        for ev in events.drain(..) {
            match ev {
                AppEvent::Connected { conn, result } => {
                    result.unwrap();
                    core.sendv(conn, &[TxBuf::from_static(REQUEST)]).unwrap();
                }
                AppEvent::Recv { data } => {
                    let i = self.conns.iter().position(|c| *c == data.conn()).unwrap();
                    self.pending[i] += data.data().len();
                    if self.pending[i] == REQUEST.len() {
                        self.pending[i] = 0;
                        self.round_trips += 1;
                        core.sendv(data.conn(), &[TxBuf::from_static(REQUEST)])
                            .unwrap();
                    }
                }
                _ => {}
            }
        }
    }
}

#[test]
fn echo_loop_turns_allocate_nothing_in_steady_state() {
    let (a, b) = pipe::pair(
        Pool::new(1, 4096, false).unwrap(),
        Pool::new(2, 4096, false).unwrap(),
        1024,
    );
    let mut server = ElasticThread::new(cfg(SERVER, 1), a, Arc::default());
    let mut client = ElasticThread::new(cfg(CLIENT, 2), b, Arc::default());
    let mut echo = Echo;
    let mut load = Client {
        conns: Vec::new(),
        pending: Vec::new(),
        round_trips: 0,
    };
    echo.start(server.core());
    load.start(client.core());
    for _ in 0..5_000 {
        server.turn(&mut echo);
        client.turn(&mut load);
    }
    let warm = load.round_trips;
    assert!(warm > 100, "warm-up made no progress: {warm} round trips");

    // The counter sees allocations (so a zero below means something).
    COUNTING.store(true, Ordering::Relaxed);
    drop(std::hint::black_box(vec![0u8; 64]));
    assert_eq!(ALLOCS.swap(0, Ordering::Relaxed), 1);

    for _ in 0..20_000 {
        server.turn(&mut echo);
        client.turn(&mut load);
    }
    COUNTING.store(false, Ordering::Relaxed);
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let measured = load.round_trips - warm;
    eprintln!(
        "{measured} round trips, {allocs} heap allocations ({} round trips in all)",
        load.round_trips
    );
    assert!(measured > 1_000, "only {measured} round trips measured");
    assert_eq!(allocs, 0, "the hot path allocated");
}
