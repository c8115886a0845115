//! The `linux` transport: the [engine](super::engine) over Linux TCP
//! sockets, on one thread (pinned with [`Target::cpu`]).
//!
//! Connections are opened with a timeout, then made non-blocking with
//! `TCP_NODELAY` and registered with epoll for reading. The loop reads
//! the clock, lets the engine issue what is due (requests are appended to
//! each connection's output buffer and written once per loop turn, so a
//! burst of due requests on one connection leaves in one `write`), then
//! polls epoll with a zero timeout and hands what it reads to the engine
//! stamped with the time the wait returned. Writability is only asked
//! for while a connection has unsent bytes. The thread busy-polls: it
//! uses a whole CPU, like the dataplane's elastic thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::os::fd::AsFd;
use std::time::Duration;

use dataplane::time::Instant;

use super::engine::{Engine, Wire};
use super::{LoadError, LoadParams, Planner, PointResult, Target};
use crate::sys::{self, Epoll, Events, READABLE, WRITABLE};

/// Unsent bytes per connection beyond which it takes no new request.
const OUT_LIMIT: usize = 1 << 20;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    /// Registered for writability.
    want_write: bool,
    /// Has bytes queued since the last flush.
    dirty: bool,
    alive: bool,
}

struct LinuxWire<'a> {
    conns: &'a mut [Conn],
    arena: &'a [u8],
    dirty: &'a mut Vec<usize>,
}

impl Wire for LinuxWire<'_> {
    fn can_send(&self, conn: usize) -> bool {
        let c = &self.conns[conn];
        c.alive && c.out.len() - c.written < OUT_LIMIT
    }

    fn send(&mut self, conn: usize, parts: &[Range<usize>]) -> bool {
        let c = &mut self.conns[conn];
        if !c.alive {
            return false;
        }
        if c.written == c.out.len() {
            c.out.clear();
            c.written = 0;
        }
        for r in parts {
            c.out.extend_from_slice(&self.arena[r.clone()]);
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(conn);
        }
        true
    }
}

/// Runs a session on a thread of its own and returns its points.
pub fn run(
    target: &Target,
    params: &LoadParams,
    planner: Box<dyn Planner>,
) -> Result<Vec<PointResult>, LoadError> {
    let target = target.clone();
    let params = params.clone();
    std::thread::Builder::new()
        .name("ixload-linux".into())
        .spawn(move || session(&target, &params, planner))
        .map_err(|source| LoadError::Io {
            what: "spawning the generator thread",
            source,
        })?
        .join()
        .map_err(|_| LoadError::NoResult)?
}

fn session(
    target: &Target,
    params: &LoadParams,
    planner: Box<dyn Planner>,
) -> Result<Vec<PointResult>, LoadError> {
    if let Some(cpu) = target.cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            log::warn!("cannot pin the generator to cpu {cpu}: {e}");
        }
    }
    sys::ensure_open_files(params.connections as u64 + 64).map_err(|source| LoadError::Io {
        what: "raising the open-file limit",
        source,
    })?;
    let mut engine = Engine::new(
        params,
        "linux",
        target.server,
        target.server_pid,
        planner,
        Instant::now(),
    )?;
    let epoll = Epoll::new().map_err(|source| LoadError::Io {
        what: "creating epoll",
        source,
    })?;
    let mut conns = Vec::with_capacity(params.connections);
    let addr = SocketAddr::V4(target.server);
    for i in 0..params.connections {
        let stream = TcpStream::connect_timeout(&addr, params.connect_timeout)
            .and_then(|s| {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                epoll.add(s.as_fd(), READABLE, i as u64)?;
                Ok(s)
            })
            .map_err(|source| LoadError::Connect {
                server: target.server,
                source,
            })?;
        conns.push(Conn {
            stream,
            out: Vec::with_capacity(64 * 1024),
            written: 0,
            want_write: false,
            dirty: false,
            alive: true,
        });
        engine.on_connected(i);
    }
    let arena = engine.arena().clone();
    let mut dirty = Vec::with_capacity(conns.len());
    let mut events = Events::with_capacity(conns.len().min(1024));
    let mut buf = vec![0u8; READ_CHUNK];
    while !engine.is_finished() {
        let now = Instant::now();
        engine.poll(
            now,
            &mut LinuxWire {
                conns: &mut conns,
                arena: &arena,
                dirty: &mut dirty,
            },
        );
        for i in dirty.drain(..) {
            conns[i].dirty = false;
            flush(&mut conns[i], i, &epoll, &mut engine);
        }
        let n = epoll
            .wait(&mut events, Duration::ZERO)
            .map_err(|source| LoadError::Io {
                what: "epoll_wait",
                source,
            })?;
        if n == 0 {
            continue;
        }
        let at = Instant::now();
        for ev in events.iter() {
            let i = ev.token as usize;
            let Some(c) = conns.get_mut(i) else {
                continue;
            };
            if !c.alive {
                continue;
            }
            if ev.writable {
                flush(c, i, &epoll, &mut engine);
            }
            if ev.readable || ev.closed {
                receive(c, i, &epoll, &mut engine, &mut buf, at);
            }
        }
    }
    // Orderly close: the server sees FIN on every connection.
    for c in &conns {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
    let outcome = engine.take_outcome();
    match outcome.error {
        Some(e) => Err(e),
        None => Ok(outcome.points),
    }
}

/// Marks a connection dead and tells the engine.
fn lose(c: &mut Conn, i: usize, epoll: &Epoll, engine: &mut Engine, why: &str) {
    if c.alive {
        c.alive = false;
        let _ = epoll.delete(c.stream.as_fd());
        engine.on_conn_failed(i, why);
    }
}

/// Writes what the connection has queued; asks for writability if the
/// socket is full, stops asking once it drained.
fn flush(c: &mut Conn, i: usize, epoll: &Epoll, engine: &mut Engine) {
    while c.written < c.out.len() {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return lose(c, i, epoll, engine, "write returned 0"),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return lose(c, i, epoll, engine, &e.to_string()),
        }
    }
    let pending = c.written < c.out.len();
    if pending != c.want_write {
        let interest = if pending {
            READABLE | WRITABLE
        } else {
            READABLE
        };
        if let Err(e) = epoll.modify(c.stream.as_fd(), interest, i as u64) {
            return lose(c, i, epoll, engine, &e.to_string());
        }
        c.want_write = pending;
    }
    if !pending {
        c.out.clear();
        c.written = 0;
    }
}

/// Reads what is there and hands it to the engine.
fn receive(
    c: &mut Conn,
    i: usize,
    epoll: &Epoll,
    engine: &mut Engine,
    buf: &mut [u8],
    at: Instant,
) {
    loop {
        match c.stream.read(buf) {
            Ok(0) => return lose(c, i, epoll, engine, "server closed the connection"),
            Ok(n) => {
                if let Err(e) = engine.on_recv(i, &buf[..n], at) {
                    c.alive = false;
                    let _ = epoll.delete(c.stream.as_fd());
                    log::warn!("connection {i}: {e}; dropped");
                    return;
                }
                if n < buf.len() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return lose(c, i, epoll, engine, &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Rates, Transport, WorkloadKind, WorkloadSpec};
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

    /// A tiny memcached on a thread: SET stores the value length, GET
    /// answers it; `corrupt` answers every GET with garbage instead.
    fn server(corrupt: bool) -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let store = Store::default();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let store = store.clone();
                std::thread::spawn(move || serve(stream, &store, corrupt));
            }
        });
        addr
    }

    /// Value lengths by key, shared by the server's connections.
    type Store = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

    fn serve(stream: TcpStream, store: &Store, corrupt: bool) {
        use std::io::BufRead;
        let mut reader = io::BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let reply = match words.as_slice() {
                ["get", key] if corrupt => {
                    let _ = key;
                    "HELLO\r\n".to_string()
                }
                ["get", key] => match store.lock().unwrap().get(*key).copied() {
                    Some(n) => format!("VALUE {key} 0 {n}\r\n{}\r\nEND\r\n", "v".repeat(n)),
                    None => "END\r\n".into(),
                },
                ["set", key, _, _, n] => {
                    let n: usize = n.parse().unwrap();
                    let mut data = vec![0; n + 2];
                    reader.read_exact(&mut data).unwrap();
                    store.lock().unwrap().insert(key.to_string(), n);
                    "STORED\r\n".into()
                }
                _ => "ERROR\r\n".into(),
            };
            if out.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn params() -> LoadParams {
        LoadParams {
            workload: WorkloadSpec {
                keys: 500,
                ..WorkloadSpec::new(WorkloadKind::Etc)
            },
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            // Thread-per-connection test server on a shared box.
            lag_bound: Duration::from_millis(50),
            ..LoadParams::default()
        }
    }

    fn target(addr: SocketAddrV4) -> Target {
        Target {
            transport: Transport::Linux,
            server: addr,
            server_pid: None,
            cpu: None,
        }
    }

    #[test]
    fn points_against_a_small_server_all_hit_after_the_preload() {
        let addr = server(false);
        let points = run(
            &target(addr),
            &params(),
            Box::new(Rates(vec![500.0, 1_000.0])),
        )
        .unwrap();
        assert_eq!(points.len(), 2);
        for p in &points {
            assert_eq!((p.errors, p.misses, p.dropped), (0, 0, 0), "{p:?}");
            assert!(p.gets > 0 && p.hits == p.gets);
            assert!(p.sets > 0);
            assert!(p.latency_us.p50 > 0.0);
            assert!(p.client_cpu.is_some());
        }
        let rel = (points[1].achieved_rps - 1_000.0).abs() / 1_000.0;
        assert!(rel < 0.25, "achieved {}", points[1].achieved_rps);
    }

    #[test]
    fn a_server_sending_garbage_fails_every_connection() {
        let addr = server(true);
        let mut p = params();
        p.preload = false;
        let err = run(&target(addr), &p, Box::new(Rates(vec![2_000.0]))).unwrap_err();
        assert!(
            matches!(err, LoadError::AllConnectionsFailed { connections: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn no_server_is_a_connect_error() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        drop(listener);
        let err = run(&target(addr), &params(), Box::new(Rates(vec![1.0]))).unwrap_err();
        assert!(matches!(err, LoadError::Connect { .. }), "{err}");
    }
}
