//! The KVS server on Linux sockets: the baseline the dataplane is measured
//! against, running the very same [`Session`] and store.
//!
//! One thread per core (`threads`), each pinned when CPUs are given, each
//! with its own epoll instance (level-triggered) and its own listening
//! socket bound to the same address with `SO_REUSEPORT`, so the kernel
//! spreads connections over threads by a hash of their addresses, as RSS
//! spreads them over elastic threads. Sockets are non-blocking with
//! `TCP_NODELAY`.
//!
//! A thread reads into one read buffer of its own, feeds the bytes to the
//! connection's session (which copies only what spans reads), and writes
//! the queued replies with `writev` straight from the stored items. When a
//! connection's replies pass [`super::session::BACKLOG_LIMIT`] the thread
//! keeps its unparsed input, stops reading it (the socket buffer fills and
//! TCP slows the client), and resumes once the replies have drained.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use libix::Instant;
use socket2::{Domain, Protocol, Socket, Type};

use super::clock::RelTime;
use super::session::Session;
use super::stats::{add, dec, inc};
use super::Kvs;
use crate::sys::{self, Epoll, Events, READABLE, WRITABLE};

/// Epoll token of the listening socket (connections use their slot).
const LISTENER: u64 = u64::MAX;
/// Bytes read per `read`.
const READ_BUF: usize = 64 * 1024;
/// Reads per connection per wake-up, at most (fairness).
const READS_PER_EVENT: usize = 4;
/// Replies per `writev`, at most.
const IOV_MAX: usize = 64;
/// Longest sleep in epoll before checking the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Pending connections per listening socket.
const BACKLOG: i32 = 1024;

/// Why the Linux server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// No thread was asked for.
    #[error("threads must be at least 1")]
    NoThreads,
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another server on that port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// An epoll call failed.
    #[error("epoll: {0}")]
    Epoll(io::Error),
    /// A server thread could not be spawned.
    #[error("cannot spawn a server thread: {0}")]
    Spawn(io::Error),
    /// A server thread panicked (a bug; the message is on stderr).
    #[error("server thread {0} panicked")]
    Panicked(usize),
}

/// How to run the Linux server.
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// Address to listen on (port 0: any free port, see
    /// [`LinuxServer::local_addr`]).
    pub listen: SocketAddr,
    /// Server threads.
    pub threads: usize,
    /// CPUs to pin thread `i` to (`cpus[i]`); threads beyond the list run
    /// unpinned.
    pub cpus: Vec<usize>,
}

/// A running Linux server.
#[derive(Debug)]
pub struct LinuxServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), LinuxError>>>,
}

fn listener(addr: SocketAddr) -> Result<TcpListener, LinuxError> {
    let err = |source| LinuxError::Bind { addr, source };
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(BACKLOG).map_err(err)?;
    Ok(s.into())
}

impl LinuxServer {
    /// Binds the listening sockets and starts the threads, serving `kvs`
    /// (which should have `opts.threads` workers).
    pub fn start(kvs: Arc<Kvs>, opts: &LinuxOptions) -> Result<LinuxServer, LinuxError> {
        if opts.threads == 0 {
            return Err(LinuxError::NoThreads);
        }
        let first = listener(opts.listen)?;
        let addr = first.local_addr().map_err(|source| LinuxError::Bind {
            addr: opts.listen,
            source,
        })?;
        let mut listeners = vec![first];
        for _ in 1..opts.threads {
            listeners.push(listener(addr)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let (kvs, stop) = (kvs.clone(), stop.clone());
            let cpu = opts.cpus.get(i).copied();
            let t = std::thread::Builder::new()
                .name(format!("kvs-linux-{i}"))
                .spawn(move || Worker::new(l, kvs, i)?.run(cpu, &stop))
                .map_err(LinuxError::Spawn)?;
            threads.push(t);
        }
        Ok(LinuxServer {
            addr,
            stop,
            threads,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks every thread to stop (within [`POLL`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A flag that stops the server when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for every thread to stop.
    pub fn join(self) -> Result<(), LinuxError> {
        let mut first = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            let r = t.join().unwrap_or(Err(LinuxError::Panicked(i)));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// One connection of a server thread.
struct Connection {
    stream: TcpStream,
    session: Session,
    /// Input read but not parsed (backpressure).
    stash: Vec<u8>,
    peer_closed: bool,
    /// The epoll interest registered now.
    interest: u32,
}

/// A server thread.
struct Worker {
    listener: TcpListener,
    kvs: Arc<Kvs>,
    index: usize,
    epoll: Epoll,
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    buf: Vec<u8>,
}

impl Worker {
    fn new(listener: TcpListener, kvs: Arc<Kvs>, index: usize) -> Result<Worker, LinuxError> {
        let epoll = Epoll::new().map_err(LinuxError::Epoll)?;
        epoll
            .add(listener.as_fd(), READABLE, LISTENER)
            .map_err(LinuxError::Epoll)?;
        Ok(Worker {
            listener,
            kvs,
            index,
            epoll,
            conns: Vec::new(),
            free: Vec::new(),
            buf: vec![0; READ_BUF],
        })
    }

    fn run(mut self, cpu: Option<usize>, stop: &AtomicBool) -> Result<(), LinuxError> {
        if let Some(cpu) = cpu {
            if let Err(e) = sys::pin_current_thread(cpu) {
                log::warn!("kvs thread {}: cannot pin to cpu {cpu}: {e}", self.index);
            }
        }
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::Relaxed) {
            self.epoll
                .wait(&mut events, POLL)
                .map_err(LinuxError::Epoll)?;
            let now = self.kvs.now(Instant::now());
            for ev in events.iter() {
                if ev.token == LISTENER {
                    self.accept();
                } else {
                    self.serve(ev.token as usize, now);
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: leave the rest in the backlog.
                    log::warn!("kvs thread {}: accept: {e}", self.index);
                    return;
                }
            };
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true))
            {
                log::debug!("kvs: cannot set up an accepted socket: {e}");
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = self.epoll.add(stream.as_fd(), READABLE, slot as u64) {
                log::warn!("kvs: cannot watch an accepted socket: {e}");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Connection {
                stream,
                session: Session::new(self.kvs.store().item_max()),
                stash: Vec::new(),
                peer_closed: false,
                interest: READABLE,
            });
            let stats = self.kvs.worker(self.index);
            inc(&stats.curr_connections);
            inc(&stats.total_connections);
        }
    }

    fn serve(&mut self, slot: usize, now: RelTime) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        let (kvs, w) = (&*self.kvs, self.index);
        let ok = read(c, &mut self.buf, kvs, w, now) && write(c, kvs, w, now);
        let replies_out = c.session.replies().is_empty();
        let done = !ok
            || (replies_out && (c.session.wants_close() || (c.peer_closed && c.stash.is_empty())));
        if done {
            let _ = self.epoll.delete(c.stream.as_fd());
            self.conns[slot] = None;
            self.free.push(slot);
            dec(&self.kvs.worker(self.index).curr_connections);
            return;
        }
        let mut interest = 0;
        if !c.peer_closed
            && !c.session.wants_close()
            && c.stash.is_empty()
            && !c.session.is_blocked()
        {
            interest |= READABLE;
        }
        if !replies_out {
            interest |= WRITABLE;
        }
        if interest != c.interest {
            c.interest = interest;
            if let Err(e) = self.epoll.modify(c.stream.as_fd(), interest, slot as u64) {
                log::warn!("kvs: epoll modify: {e}");
            }
        }
    }
}

/// Reads what the socket has (unless the connection is blocked) and feeds
/// it to the session. False if the connection failed.
fn read(c: &mut Connection, buf: &mut [u8], kvs: &Kvs, w: usize, now: RelTime) -> bool {
    for _ in 0..READS_PER_EVENT {
        if c.peer_closed || !c.stash.is_empty() || c.session.is_blocked() {
            return true;
        }
        match (&c.stream).read(buf) {
            Ok(0) => c.peer_closed = true,
            Ok(n) => {
                let used = c.session.feed(&buf[..n], kvs, w, now);
                c.stash.extend_from_slice(&buf[used..n]);
                if n < buf.len() {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("kvs: read: {e}");
                return false;
            }
        }
    }
    true
}

/// Writes queued replies until the socket is full, feeding stashed input
/// whenever the backlog drains. False if the connection failed.
fn write(c: &mut Connection, kvs: &Kvs, w: usize, now: RelTime) -> bool {
    loop {
        if !c.stash.is_empty() && !c.session.is_blocked() {
            let used = c.session.feed(&c.stash, kvs, w, now);
            c.stash.drain(..used);
        }
        let replies = c.session.replies();
        if replies.is_empty() {
            return true;
        }
        let mut iov = [IoSlice::new(&[]); IOV_MAX];
        let n = replies.len().min(IOV_MAX);
        for (slot, r) in iov.iter_mut().zip(replies) {
            *slot = IoSlice::new(r.as_slice());
        }
        let total: usize = iov[..n].iter().map(|s| s.len()).sum();
        match (&c.stream).write_vectored(&iov[..n]) {
            Ok(written) => {
                c.session.consume(written);
                add(&kvs.worker(w).bytes_written, written as u64);
                if written < total {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("kvs: write: {e}");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::store::StoreConfig;
    use std::io::BufRead;

    fn server(threads: usize) -> (LinuxServer, Arc<Kvs>) {
        let kvs = Kvs::shared(StoreConfig::default(), threads);
        let s = LinuxServer::start(
            kvs.clone(),
            &LinuxOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                threads,
                cpus: Vec::new(),
            },
        )
        .unwrap();
        (s, kvs)
    }

    fn line(r: &mut impl BufRead) -> String {
        let mut s = String::new();
        r.read_line(&mut s).unwrap();
        s
    }

    #[test]
    fn two_threads_share_one_store() {
        let (s, kvs) = server(2);
        let mut clients: Vec<_> = (0..8)
            .map(|_| {
                let c = TcpStream::connect(s.local_addr()).unwrap();
                (c.try_clone().unwrap(), io::BufReader::new(c))
            })
            .collect();
        for (i, (w, r)) in clients.iter_mut().enumerate() {
            write!(w, "set k{i} 0 0 1\r\n{i}\r\n").unwrap();
            assert_eq!(line(r), "STORED\r\n");
        }
        for (i, (w, r)) in clients.iter_mut().enumerate() {
            let j = (i + 3) % 8;
            write!(w, "get k{j}\r\n").unwrap();
            assert_eq!(line(r), format!("VALUE k{j} 0 1\r\n"));
            assert_eq!(line(r), format!("{j}\r\n"));
            assert_eq!(line(r), "END\r\n");
        }
        drop(clients);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while kvs
            .workers()
            .iter()
            .map(|w| w.curr_connections.load(Ordering::Relaxed))
            .sum::<u64>()
            > 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "connections not closed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s.stop();
        s.join().unwrap();
    }

    #[test]
    fn a_client_that_never_reads_is_held_back_not_buffered() {
        let (s, kvs) = server(1);
        let mut c = TcpStream::connect(s.local_addr()).unwrap();
        let value = vec![b'v'; 500 * 1024];
        write!(c, "set big 0 0 {}\r\n", value.len()).unwrap();
        c.write_all(&value).unwrap();
        c.write_all(b"\r\n").unwrap();
        let mut r = io::BufReader::new(c.try_clone().unwrap());
        assert_eq!(line(&mut r), "STORED\r\n");
        // Pipeline many gets without reading: the server must stop reading
        // instead of queueing hundreds of megabytes of replies.
        c.set_nonblocking(true).unwrap();
        let gets = b"get big\r\n".repeat(1000);
        let mut sent = 0;
        let start = std::time::Instant::now();
        while sent < gets.len() && start.elapsed() < Duration::from_secs(2) {
            match c.write(&gets[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        let parsed = kvs.worker(0).cmd_get.load(Ordering::Relaxed);
        assert!(
            parsed < 1000,
            "the server parsed {parsed} gets without sending"
        );
        // Now read everything: all 1000 replies arrive.
        c.set_nonblocking(false).unwrap();
        let mut rest = gets[sent..].to_vec();
        let writer = {
            let mut c = c.try_clone().unwrap();
            std::thread::spawn(move || c.write_all(&std::mem::take(&mut rest)))
        };
        let per_reply = format!("VALUE big 0 {}\r\n", value.len()).len() + value.len() + 2 + 5;
        let mut got = 0usize;
        let mut chunk = vec![0; 1 << 16];
        while got < 1000 * per_reply {
            let n = r.read(&mut chunk).unwrap();
            assert!(n > 0);
            got += n;
        }
        writer.join().unwrap().unwrap();
        assert_eq!(got, 1000 * per_reply);
        s.stop();
        s.join().unwrap();
    }
}
