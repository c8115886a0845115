//! The `ix` transport: the [engine](super::engine) as a libix
//! application on one elastic thread of our own dataplane, the memif slave
//! of a wire whose master is the server's dataplane.
//!
//! Timing: libix timers tick every 16 µs, too coarse for Poisson gaps of a
//! few microseconds, so the engine runs from [`App::poll`], which the
//! elastic loop calls on every turn (idle turns included) with the turn's
//! time. A request leaves in the TX burst of the first turn at or after
//! its scheduled time; replies are stamped with the time of the turn that
//! received them.
//!
//! Requests are slices of the engine's pre-encoded arena
//! ([`TxBuf::slice`]: a reference-count increment, no copy, no
//! allocation). What the send window does not take waits in a
//! per-connection backlog, pushed again on [`App::sent`] and, for a
//! connection refused for lack of TCP queue space (which no `sent` of its
//! own may follow), on every turn until it drains.
//!
//! When the engine finishes, every connection is closed in order and the
//! core lingers (at most [`LINGER`]) until the close handshakes complete,
//! so the server sees FIN, not a reset, and its next client can reuse the
//! ports.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libix::{App, Config, Conn, ConnectError, Cx, Dataplane, Dead, Instant, RxBuf, TxBuf};

use super::engine::{Engine, Wire};
use super::{LoadError, LoadParams, Planner, PointResult, Target};

/// Unsent bytes per connection beyond which it takes no new request.
const BACKLOG_LIMIT: usize = 256 * 1024;

/// Longest wait for close handshakes after the session.
pub const LINGER: Duration = Duration::from_secs(3);

type Sink = Arc<Mutex<Option<Result<Vec<PointResult>, LoadError>>>>;

#[derive(Default)]
struct IxConn {
    conn: Option<Conn>,
    backlog: VecDeque<TxBuf>,
    backlog_bytes: usize,
    /// Listed in `blocked` (retried every turn).
    blocked: bool,
}

/// The generator as a libix application.
pub struct IxLoad {
    params: LoadParams,
    server: SocketAddrV4,
    server_pid: Option<u32>,
    planner: Option<Box<dyn Planner>>,
    engine: Option<Engine>,
    arena: Option<TxBuf>,
    conns: Vec<IxConn>,
    /// `Conn::index()` → slot in `conns`.
    by_index: Vec<usize>,
    blocked: Vec<usize>,
    closing_since: Option<Instant>,
    sink: Sink,
}

impl IxLoad {
    fn new(
        params: LoadParams,
        target: &Target,
        planner: Option<Box<dyn Planner>>,
        sink: Sink,
    ) -> IxLoad {
        IxLoad {
            server: target.server,
            server_pid: target.server_pid,
            planner,
            engine: None,
            arena: None,
            conns: Vec::new(),
            by_index: Vec::new(),
            blocked: Vec::new(),
            closing_since: None,
            sink,
            params,
        }
    }

    fn slot(&self, conn: Conn) -> Option<usize> {
        let i = *self.by_index.get(conn.index())?;
        (self.conns.get(i)?.conn == Some(conn)).then_some(i)
    }

    fn store(&self, result: Result<Vec<PointResult>, LoadError>) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if sink.is_none() {
            *sink = Some(result);
        }
    }

    /// Gives connection `i` up after an error of ours (abort) or the
    /// server's.
    fn lose(&mut self, cx: &mut Cx, i: usize, why: &str, abort: bool) {
        if let Some(conn) = self.conns[i].conn.take() {
            if abort {
                let _ = cx.abort(conn);
            }
        }
        self.conns[i].backlog.clear();
        self.conns[i].backlog_bytes = 0;
        if let Some(e) = &mut self.engine {
            e.on_conn_failed(i, why);
        }
    }

    fn finish(&mut self, cx: &mut Cx) {
        let Some(engine) = &mut self.engine else {
            return;
        };
        let outcome = engine.take_outcome();
        self.store(match outcome.error {
            Some(e) => Err(e),
            None => Ok(outcome.points),
        });
        for c in &mut self.conns {
            if let Some(conn) = c.conn.take() {
                let _ = cx.close(conn);
            }
        }
        self.closing_since = Some(cx.now());
    }
}

/// Sends the backlog of `c` as far as the window allows.
fn push(cx: &mut Cx, c: &mut IxConn) -> Result<(), libix::CallError> {
    let Some(conn) = c.conn else {
        return Ok(());
    };
    if c.backlog.is_empty() {
        return Ok(());
    }
    let mut taken = cx.sendv(conn, c.backlog.make_contiguous())?;
    c.backlog_bytes -= taken;
    while let Some(front) = c.backlog.front_mut() {
        if taken >= front.len() {
            taken -= front.len();
            c.backlog.pop_front();
        } else {
            front.advance(taken);
            break;
        }
    }
    Ok(())
}

struct IxWire<'a, 'b> {
    cx: &'a mut Cx<'b>,
    conns: &'a mut [IxConn],
    arena: &'a TxBuf,
    blocked: &'a mut Vec<usize>,
}

impl Wire for IxWire<'_, '_> {
    fn can_send(&self, conn: usize) -> bool {
        let c = &self.conns[conn];
        c.conn.is_some() && c.backlog_bytes < BACKLOG_LIMIT
    }

    fn send(&mut self, conn: usize, parts: &[Range<usize>]) -> bool {
        let c = &mut self.conns[conn];
        let Some(handle) = c.conn else {
            return false;
        };
        let piece = |r: &Range<usize>| self.arena.slice(r.start, r.len());
        let bufs = match parts {
            [a] => [piece(a), TxBuf::from_static(b"")],
            [a, b] => [piece(a), piece(b)],
            _ => return false,
        };
        let bufs = &bufs[..parts.len()];
        let total: usize = bufs.iter().map(TxBuf::len).sum();
        let mut taken = 0;
        if c.backlog.is_empty() {
            match self.cx.sendv(handle, bufs) {
                Ok(n) => taken = n,
                Err(e) => {
                    log::debug!("send on {handle:?} failed: {e}");
                    return false;
                }
            }
        }
        if taken == total {
            return true;
        }
        for b in bufs {
            if taken >= b.len() {
                taken -= b.len();
                continue;
            }
            let mut rest = b.clone();
            rest.advance(taken);
            taken = 0;
            c.backlog_bytes += rest.len();
            c.backlog.push_back(rest);
        }
        if !c.blocked {
            c.blocked = true;
            self.blocked.push(conn);
        }
        true
    }
}

impl App for IxLoad {
    fn start(&mut self, cx: &mut Cx) {
        let Some(planner) = self.planner.take() else {
            self.store(Err(LoadError::NoResult));
            cx.stop();
            return;
        };
        let engine = match Engine::new(
            &self.params,
            "ix",
            self.server,
            self.server_pid,
            planner,
            cx.now(),
        ) {
            Ok(e) => e,
            Err(e) => {
                self.store(Err(e));
                cx.stop();
                return;
            }
        };
        self.arena = Some(TxBuf::from_rc(engine.arena().clone()));
        self.engine = Some(engine);
        self.blocked.reserve(self.params.connections);
        for i in 0..self.params.connections {
            let mut c = IxConn {
                backlog: VecDeque::with_capacity(64),
                ..IxConn::default()
            };
            match cx.connect(self.server) {
                Ok(conn) => {
                    if self.by_index.len() <= conn.index() {
                        self.by_index.resize(conn.index() + 1, usize::MAX);
                    }
                    self.by_index[conn.index()] = i;
                    c.conn = Some(conn);
                    self.conns.push(c);
                }
                Err(e) => {
                    self.conns.push(c);
                    if let Some(engine) = &mut self.engine {
                        engine.on_conn_failed(i, &format!("connect: {e}"));
                    }
                }
            }
        }
    }

    fn connected(&mut self, cx: &mut Cx, conn: Conn, result: Result<(), ConnectError>) {
        let Some(i) = self.slot(conn) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(e) = &mut self.engine {
                    e.on_connected(i);
                }
            }
            Err(e) => {
                self.conns[i].conn = None;
                self.lose(cx, i, &format!("connect: {e:?}"), false);
            }
        }
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        let Some(i) = self.slot(conn) else {
            return;
        };
        let Some(engine) = &mut self.engine else {
            return;
        };
        if let Err(e) = engine.on_recv(i, &data, cx.now()) {
            log::warn!("connection {i}: {e}; dropped");
            self.lose(cx, i, &e.to_string(), true);
        }
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        let Some(i) = self.slot(conn) else {
            return;
        };
        if push(cx, &mut self.conns[i]).is_err() {
            self.lose(cx, i, "send failed", true);
        }
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        let Some(i) = self.slot(conn) else {
            return;
        };
        let peer_closed = matches!(why, Dead::PeerClosed);
        if peer_closed {
            // Our side is still open: close it so the handshake completes.
            let _ = cx.close(conn);
        }
        self.conns[i].conn = None;
        self.lose(cx, i, &format!("{why:?}"), false);
    }

    fn poll(&mut self, cx: &mut Cx) {
        let now = cx.now();
        if let Some(since) = self.closing_since {
            if cx.unfinished_connections() == 0 || now - since >= LINGER {
                cx.stop();
            }
            return;
        }
        let (Some(engine), Some(arena)) = (&mut self.engine, &self.arena) else {
            return;
        };
        engine.poll(
            now,
            &mut IxWire {
                cx,
                conns: &mut self.conns,
                arena,
                blocked: &mut self.blocked,
            },
        );
        let mut k = 0;
        while k < self.blocked.len() {
            let i = self.blocked[k];
            if push(cx, &mut self.conns[i]).is_err() {
                self.lose(cx, i, "send failed", true);
            }
            let c = &mut self.conns[i];
            if c.backlog.is_empty() {
                c.blocked = false;
                self.blocked.swap_remove(k);
            } else {
                k += 1;
            }
        }
        if self.engine.as_ref().is_some_and(Engine::is_finished) {
            self.finish(cx);
        }
    }
}

/// Runs a session on a one-core libix dataplane over the memif wire at
/// `memif` (as the slave, opened with `queues` queues), with `ip` as our
/// address.
pub fn run(
    target: &Target,
    memif: &Path,
    ip: Ipv4Addr,
    queues: u16,
    params: &LoadParams,
    planner: Box<dyn Planner>,
) -> Result<Vec<PointResult>, LoadError> {
    let mut cfg = Config::memif_slave(memif, ip);
    cfg.cores = vec![target.cpu];
    cfg.max_cores = Some(usize::from(queues.max(1)));
    cfg.link_timeout = params.connect_timeout;
    cfg.tcp.max_conns = cfg.tcp.max_conns.max(2 * params.connections + 64);
    let sink: Sink = Arc::default();
    let planner = Arc::new(Mutex::new(Some(planner)));
    let (params, target2, sink2) = (params.clone(), target.clone(), sink.clone());
    let dp = Dataplane::start(cfg, move |_core| {
        let planner = planner.lock().unwrap_or_else(|e| e.into_inner()).take();
        IxLoad::new(params.clone(), &target2, planner, sink2.clone())
    })?;
    dp.join()?;
    let result = sink.lock().unwrap_or_else(|e| e.into_inner()).take();
    result.unwrap_or(Err(LoadError::NoResult))
}
