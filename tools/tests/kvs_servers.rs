//! `ixkvs` end to end: the same request script, with exact expected
//! replies, against
//! - `ixkvs --stack linux` over loopback TCP,
//! - real memcached (when installed), compared byte for byte with ixkvs,
//! - `ixkvs --stack ix` on af_packet, from a Linux TCP client in a network
//!   namespace,
//! - `ixkvs --stack ix` on memif with two cores, from a libix client
//!   dataplane in this process (many connections, values visible across
//!   connections and cores).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use libix::{App, Conn, Cx, Dead, RxBuf, TxBuf};
use support::Ixcpd;

mod support;

const IXKVS: &str = env!("CARGO_BIN_EXE_ixkvs");

/// A server process, killed when dropped.
struct Server {
    child: Child,
    /// What it printed after "listening on ".
    listening: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ixkvs` and waits for its "listening on" line.
fn ixkvs(args: &[&str]) -> Server {
    let mut child = Command::new(IXKVS)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ixkvs starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ixkvs announces itself");
    let listening = line
        .trim()
        .strip_prefix("ixkvs: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server { child, listening }
}

fn linux_server() -> (Server, SocketAddr) {
    let s = ixkvs(&[
        "--stack",
        "linux",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
    ]);
    let addr = s.listening.split(' ').next().unwrap().parse().unwrap();
    (s, addr)
}

/// A text-protocol client that fences each request with `version`, so it
/// knows where the replies end whatever they are.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    return Client {
                        stream,
                        buf: Vec::new(),
                    };
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect to {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to {addr}: {e}"),
            }
        }
    }

    /// Sends `req`, returns its replies (all bytes before the fence's
    /// `VERSION` line).
    fn ask(&mut self, req: &[u8]) -> Vec<u8> {
        self.stream.write_all(req).unwrap();
        self.stream.write_all(b"version\r\n").unwrap();
        let mut chunk = vec![0; 64 * 1024];
        loop {
            if self.buf.ends_with(b"\r\n") {
                let body = &self.buf[..self.buf.len() - 2];
                let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                if self.buf[line_start..].starts_with(b"VERSION ") {
                    let out = self.buf[..line_start].to_vec();
                    self.buf.clear();
                    return out;
                }
            }
            let n = self.stream.read(&mut chunk).expect("reply arrives");
            assert!(
                n > 0,
                "server closed; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn value_of(len: usize, seed: u8) -> Vec<u8> {
    // Every byte value, so values hold "\r\n" and NULs too.
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The request script and ixkvs's exact replies (a fresh server: cas
/// values count from 1).
fn script() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut s: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut step = |req: &[u8], rep: &[u8]| s.push((req.to_vec(), rep.to_vec()));
    step(b"set a 0 0 5\r\nhello\r\n", b"STORED\r\n");
    step(b"get a\r\n", b"VALUE a 0 5\r\nhello\r\nEND\r\n");
    step(
        b"get a nope a\r\n",
        b"VALUE a 0 5\r\nhello\r\nVALUE a 0 5\r\nhello\r\nEND\r\n",
    );
    step(b"gets a\r\n", b"VALUE a 0 5 1\r\nhello\r\nEND\r\n");
    step(b"add a 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    step(b"add b 3 0 1\r\ny\r\n", b"STORED\r\n");
    step(b"replace c 0 0 1\r\nz\r\n", b"NOT_STORED\r\n");
    step(b"replace b 4 0 2\r\nzz\r\n", b"STORED\r\n");
    step(b"append b 9 0 1\r\n>\r\n", b"STORED\r\n");
    step(b"prepend b 9 0 1\r\n<\r\n", b"STORED\r\n");
    step(b"append nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    step(b"gets b\r\n", b"VALUE b 4 4 5\r\n<zz>\r\nEND\r\n");
    step(b"cas a 7 0 1 1\r\nQ\r\n", b"STORED\r\n");
    step(b"cas a 0 0 1 1\r\nR\r\n", b"EXISTS\r\n");
    step(b"cas nope 0 0 1 1\r\nS\r\n", b"NOT_FOUND\r\n");
    step(b"gets a\r\n", b"VALUE a 7 1 6\r\nQ\r\nEND\r\n");
    step(b"set n 0 0 2\r\n10\r\n", b"STORED\r\n");
    step(b"decr n 1\r\n", b"9\r\n");
    step(b"gets n\r\n", b"VALUE n 0 2 8\r\n9 \r\nEND\r\n");
    step(b"incr n 18446744073709551615\r\n", b"8\r\n");
    step(
        b"incr n abc\r\n",
        b"CLIENT_ERROR invalid numeric delta argument\r\n",
    );
    step(
        b"decr n -1\r\n",
        b"CLIENT_ERROR invalid numeric delta argument\r\n",
    );
    step(
        b"incr a 1\r\n",
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    step(b"incr nope 1\r\n", b"NOT_FOUND\r\n");
    step(b"decr n 100\r\n", b"0\r\n");
    step(b"touch n 1000\r\n", b"TOUCHED\r\n");
    step(b"touch nope 1\r\n", b"NOT_FOUND\r\n");
    step(
        b"touch n x\r\n",
        b"CLIENT_ERROR invalid exptime argument\r\n",
    );
    step(b"delete a\r\n", b"DELETED\r\n");
    step(b"delete a\r\n", b"NOT_FOUND\r\n");
    step(b"delete b 0\r\n", b"DELETED\r\n");
    step(
        b"delete n 1\r\n",
        b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
    );
    step(
        b"set q 0 0 1 noreply\r\nA\r\nadd q 0 0 1 noreply\r\nB\r\nincr q 1 noreply\r\n\
          delete nope noreply\r\nincr q x noreply\r\nget q\r\n",
        b"VALUE q 0 1\r\nA\r\nEND\r\n",
    );
    step(b"bogus\r\n", b"ERROR\r\n");
    step(b"\r\n", b"ERROR\r\n");
    step(b"GET a\r\n", b"ERROR\r\n");
    step(b"get\r\n", b"ERROR\r\n");
    step(b"set x 0 0\r\n", b"ERROR\r\n");
    step(
        b"set x a 0 1\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
    );
    step(
        b"set x 0 0 -1\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
    );
    step(
        b"set x 0 0 3\r\nabcd\r\n",
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    );
    let long_key = format!("get a {} a\r\n", "k".repeat(251));
    step(
        long_key.as_bytes(),
        b"CLIENT_ERROR bad command line format\r\n",
    );
    step(b"set big 0 0 1\r\nA\r\n", b"STORED\r\n");
    let mut too_large = b"set big 0 0 2000000\r\n".to_vec();
    too_large.extend(value_of(2_000_000, 1));
    too_large.extend_from_slice(b"\r\nget big\r\n");
    step(
        &too_large,
        b"SERVER_ERROR object too large for cache\r\nEND\r\n",
    );
    step(b"set e 0 -1 1\r\nA\r\nget e\r\n", b"STORED\r\nEND\r\n");
    step(
        b"set f 0 4000000000 1\r\nA\r\nget f\r\n",
        b"STORED\r\nEND\r\n",
    );
    let v = value_of(512_000, 7);
    let mut set_v = b"set v 5 0 512000\r\n".to_vec();
    set_v.extend_from_slice(&v);
    set_v.extend_from_slice(b"\r\n");
    step(&set_v, b"STORED\r\n");
    let mut get_v = b"VALUE v 5 512000\r\n".to_vec();
    get_v.extend_from_slice(&v);
    get_v.extend_from_slice(b"\r\nEND\r\n");
    step(b"get v\r\n", &get_v);
    // 50 pipelined sets in one write, then one multi-get of them all.
    let (mut sets, mut stored, mut get, mut values) =
        (Vec::new(), Vec::new(), b"get".to_vec(), Vec::new());
    for i in 0..50 {
        let data = value_of(i * 37, i as u8);
        sets.extend_from_slice(format!("set p{i} {i} 0 {}\r\n", data.len()).as_bytes());
        sets.extend_from_slice(&data);
        sets.extend_from_slice(b"\r\n");
        stored.extend_from_slice(b"STORED\r\n");
        get.extend_from_slice(format!(" p{i}").as_bytes());
        values.extend_from_slice(format!("VALUE p{i} {i} {}\r\n", data.len()).as_bytes());
        values.extend_from_slice(&data);
        values.extend_from_slice(b"\r\n");
    }
    get.extend_from_slice(b"\r\n");
    values.extend_from_slice(b"END\r\n");
    step(&sets, &stored);
    step(&get, &values);
    step(b"verbosity 1\r\n", b"OK\r\n");
    step(b"flush_all\r\n", b"OK\r\n");
    step(b"get v n p1\r\n", b"END\r\n");
    step(
        b"set a 0 0 1\r\n1\r\ngets a\r\n",
        b"STORED\r\nVALUE a 0 1 67\r\n1\r\nEND\r\n",
    );
    s
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 300 {
        format!("{}... ({} bytes)", &s[..300], b.len())
    } else {
        s.into_owned()
    }
}

/// Where two replies first differ, with some context.
fn diff(expected: &[u8], got: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let from = at.saturating_sub(80);
    format!(
        "first difference at byte {at} (lengths {} and {}):\n  expected ...{}\n  got      ...{}",
        expected.len(),
        got.len(),
        show(&expected[from..(at + 80).min(expected.len())]),
        show(&got[from.min(got.len())..(at + 80).min(got.len())])
    )
}

/// Runs the script step by step on one connection, checking every reply.
fn run_script(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    for (i, (req, expected)) in script().iter().enumerate() {
        let got = c.ask(req);
        assert!(
            got == *expected,
            "step {i}: request {}\n{}",
            show(req),
            diff(expected, &got)
        );
    }
}

#[test]
fn linux_server_answers_the_script_exactly() {
    let (_server, addr) = linux_server();
    run_script(addr);
}

#[test]
fn linux_server_takes_requests_split_into_single_bytes() {
    let (_server, addr) = linux_server();
    let mut c = Client::connect(addr);
    c.stream.set_nodelay(true).unwrap();
    for &b in b"set k 1 0 3\r\nabc\r\nget k\r\n" {
        c.stream.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(c.ask(b""), b"STORED\r\nVALUE k 1 3\r\nabc\r\nEND\r\n");
}

#[test]
fn linux_server_closes_on_quit_and_on_a_line_too_long() {
    let (_server, addr) = linux_server();
    let mut c = Client::connect(addr);
    c.stream.write_all(b"get a\r\nquit\r\nget b\r\n").unwrap();
    let mut all = Vec::new();
    c.stream.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"END\r\n");

    let mut c = Client::connect(addr);
    c.stream.write_all(&[b'x'; 5000]).unwrap();
    let mut all = Vec::new();
    c.stream.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"CLIENT_ERROR line too long\r\n");
}

#[test]
fn linux_server_serves_many_connections_at_once_and_counts_them() {
    let (_server, addr) = linux_server();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..100 {
                    let req = format!("set k{t}-{i} {t} 0 4\r\n{i:04}\r\nget k{t}-{i}\r\n");
                    let expected = format!("STORED\r\nVALUE k{t}-{i} {t} 4\r\n{i:04}\r\nEND\r\n");
                    assert_eq!(show(&c.ask(req.as_bytes())), expected);
                }
                c
            })
        })
        .collect();
    let clients: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut c = Client::connect(addr);
    let stats = String::from_utf8(c.ask(b"stats\r\n")).unwrap();
    for line in [
        "STAT curr_items 800\r\n",
        "STAT cmd_set 800\r\n",
        "STAT get_hits 800\r\n",
        "STAT curr_connections 9\r\n",
        "STAT threads 2\r\n",
    ] {
        assert!(stats.contains(line), "{line:?} not in {stats}");
    }
    drop(clients);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn replies_match_real_memcached_byte_for_byte() {
    let Ok(path) = which("memcached") else {
        eprintln!("SKIPPED: memcached not installed");
        return;
    };
    let port = free_port();
    let mut cmd = Command::new(path);
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-t",
        "1",
        "-m",
        "64",
    ]);
    // memcached refuses to run as root without -u.
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let mut memcached = cmd.stdout(Stdio::null()).spawn().expect("memcached starts");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut memcached);
    let (_server, ours) = linux_server();
    let mut theirs = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut ours = Client::connect(ours);
    for (i, (req, _)) in script().iter().enumerate() {
        let a = theirs.ask(req);
        let b = ours.ask(req);
        assert!(
            a == b,
            "step {i}: request {}\nmemcached vs ixkvs: {}",
            show(req),
            diff(&a, &b)
        );
    }
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn ix_server_on_af_packet_answers_a_linux_client_in_a_namespace() {
    let Some(net) = ix_testnet::TestNet::veth_pair("kvs") else {
        return;
    };
    let ip = net.dp_ip().to_string();
    let prefix = net.prefix_len().to_string();
    let _server = ixkvs(&[
        "--stack",
        "ix",
        "--af-packet",
        net.host_if(),
        "--ip",
        &ip,
        "--prefix-len",
        &prefix,
    ]);
    let addr = SocketAddr::from((net.dp_ip(), 11211));
    net.spawn_in_ns(move || run_script(addr))
        .join()
        .expect("client thread")
        .expect("joined the namespace");
}

/// A libix client: runs its steps one after another, each on a new
/// connection, checking the whole reply of each.
struct StepClient {
    server: SocketAddrV4,
    steps: Vec<(Vec<u8>, Vec<u8>)>,
    next: usize,
    conn: Option<Conn>,
    unsent: Option<TxBuf>,
    got: Vec<u8>,
    results: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicBool>,
}

const POLL: u64 = 1;
const DEADLINE: u64 = 2;

impl StepClient {
    fn finish(&mut self, cx: &mut Cx, why: String) {
        self.results.lock().unwrap().push(why);
        self.done.store(true, Ordering::Relaxed);
        cx.stop();
    }

    fn start_step(&mut self, cx: &mut Cx) {
        if self.next == self.steps.len() {
            self.done.store(true, Ordering::Relaxed);
            cx.stop();
            return;
        }
        self.got.clear();
        match cx.connect(self.server) {
            Ok(c) => self.conn = Some(c),
            Err(e) => self.finish(cx, format!("step {}: connect: {e}", self.next)),
        }
    }

    fn push(&mut self, cx: &mut Cx) {
        let (Some(conn), Some(buf)) = (self.conn, self.unsent.as_mut()) else {
            return;
        };
        match cx.sendv(conn, std::slice::from_ref(buf)) {
            Ok(n) if n >= buf.len() => self.unsent = None,
            Ok(n) => buf.advance(n),
            Err(e) => {
                let why = format!("step {}: send: {e}", self.next);
                self.finish(cx, why);
            }
        }
    }
}

impl App for StepClient {
    fn start(&mut self, cx: &mut Cx) {
        cx.arm_timer(Duration::from_secs(120), DEADLINE).unwrap();
        if self.steps.is_empty() {
            cx.arm_timer(Duration::from_millis(10), POLL).unwrap();
        } else {
            self.start_step(cx);
        }
    }

    fn connected(&mut self, cx: &mut Cx, conn: Conn, result: Result<(), libix::ConnectError>) {
        if Some(conn) != self.conn {
            return;
        }
        match result {
            Ok(()) => {
                self.unsent = Some(TxBuf::from_vec(self.steps[self.next].0.clone()));
                self.push(cx);
            }
            Err(e) => {
                let why = format!("step {}: connect failed: {e:?}", self.next);
                self.finish(cx, why);
            }
        }
    }

    fn recv(&mut self, cx: &mut Cx, conn: Conn, data: RxBuf) {
        if Some(conn) != self.conn {
            return;
        }
        self.got.extend_from_slice(&data);
        let expected = &self.steps[self.next].1;
        if self.got.len() < expected.len() {
            return;
        }
        let verdict = if self.got == *expected {
            "ok".to_owned()
        } else {
            format!("step {}: {}", self.next, diff(expected, &self.got))
        };
        self.results.lock().unwrap().push(verdict);
        let _ = cx.close(conn);
        self.conn = None;
        self.next += 1;
        self.start_step(cx);
    }

    fn sent(&mut self, cx: &mut Cx, conn: Conn, _acked: usize) {
        if Some(conn) == self.conn {
            self.push(cx);
        }
    }

    fn dead(&mut self, cx: &mut Cx, conn: Conn, why: Dead) {
        if Some(conn) == self.conn {
            let why = format!("step {}: connection died: {why:?}", self.next);
            self.finish(cx, why);
        }
    }

    fn timer(&mut self, cx: &mut Cx, token: u64) {
        match token {
            POLL if self.done.load(Ordering::Relaxed) => cx.stop(),
            POLL => cx.arm_timer(Duration::from_millis(10), POLL).unwrap(),
            _ => {
                if !self.done.load(Ordering::Relaxed) {
                    let why = format!("step {}: timed out", self.next);
                    self.finish(cx, why);
                }
                cx.stop();
            }
        }
    }
}

#[test]
fn ix_server_on_memif_with_two_cores_serves_a_libix_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kvs.sock");
    let _server = ixkvs(&[
        "--stack",
        "ix",
        "--memif",
        sock.to_str().unwrap(),
        "--ip",
        "10.9.7.1",
        "--cores",
        "2",
    ]);
    // Step 0: the whole script pipelined on one connection. Then each
    // connection stores a value and reads the one the previous connection
    // stored: connections land on either server core (RSS), so values
    // cross cores.
    let script = script();
    let mut steps = vec![(
        script
            .iter()
            .flat_map(|(r, _)| r.clone())
            .collect::<Vec<u8>>(),
        script
            .iter()
            .flat_map(|(_, e)| e.clone())
            .collect::<Vec<u8>>(),
    )];
    for k in 0..12usize {
        let v = value_of(20_000 + k * 3000, k as u8);
        let mut req = format!("set c{k} {k} 0 {}\r\n", v.len()).into_bytes();
        req.extend_from_slice(&v);
        req.extend_from_slice(b"\r\n");
        let mut rep = b"STORED\r\n".to_vec();
        if k > 0 {
            let prev = value_of(20_000 + (k - 1) * 3000, (k - 1) as u8);
            req.extend_from_slice(format!("get c{}\r\n", k - 1).as_bytes());
            rep.extend_from_slice(
                format!("VALUE c{} {} {}\r\n", k - 1, k - 1, prev.len()).as_bytes(),
            );
            rep.extend_from_slice(&prev);
            rep.extend_from_slice(b"\r\nEND\r\n");
        }
        steps.push((req, rep));
    }
    let n_steps = steps.len();
    let results = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut cfg = libix::Config::memif_slave(&sock, "10.9.7.2".parse().unwrap());
    cfg.cores = vec![None, None];
    cfg.link_timeout = Duration::from_secs(30);
    let (r, d) = (results.clone(), done.clone());
    let dp = libix::Dataplane::start(cfg, move |core| StepClient {
        server: "10.9.7.1:11211".parse().unwrap(),
        steps: if core == 0 { steps.clone() } else { Vec::new() },
        next: 0,
        conn: None,
        unsent: None,
        got: Vec::new(),
        results: r.clone(),
        done: d.clone(),
    })
    .expect("client dataplane starts");
    dp.join().expect("client dataplane runs");
    let results = results.lock().unwrap();
    assert_eq!(results.len(), n_steps, "{results:#?}");
    for r in results.iter() {
        assert_eq!(r, "ok");
    }
}

/// An ixcpd on a thread of this process with one memif port, `wire0`
/// (master, 10.77.0.1); stops its dataplanes and itself when dropped.
fn start_ixcpd() -> Ixcpd {
    Ixcpd::start_with("ixkvs-", |dir| {
        let wire = dir.join("wire0.sock");
        format!(
            "[[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = {wire:?}\nrole = \"master\"\n\
             queues = 1\nip = \"10.77.0.1/24\"\n"
        )
    })
}

#[test]
fn ixkvs_launched_by_ixctl_runs_on_what_ixcpd_allocated() {
    let d = start_ixcpd();
    let out = d.ixctl(&[
        "launch", "--name", "kvs", "--cores", "1", "--port", "wire0", "--json", "--", IXKVS,
        "--stack", "ix",
    ]);
    assert!(
        out.status.success(),
        "launch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(launched["dataplane"]["state"], "running", "{launched}");

    let steps = vec![
        (
            b"set k 9 0 5\r\nhello\r\n".to_vec(),
            b"STORED\r\n".to_vec(),
        ),
        (
            b"get k\r\nincr k 1\r\n".to_vec(),
            b"VALUE k 9 5\r\nhello\r\nEND\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
                .to_vec(),
        ),
    ];
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = libix::Config::memif_slave(
        d.dir.path().join("wire0.sock"),
        "10.77.0.2".parse().unwrap(),
    );
    cfg.link_timeout = Duration::from_secs(30);
    let (r, done) = (results.clone(), Arc::new(AtomicBool::new(false)));
    let client = libix::Dataplane::start(cfg, move |_| StepClient {
        server: "10.77.0.1:11211".parse().unwrap(),
        steps: steps.clone(),
        next: 0,
        conn: None,
        unsent: None,
        got: Vec::new(),
        results: r.clone(),
        done: done.clone(),
    })
    .expect("client dataplane starts");
    client.join().expect("client dataplane runs");
    assert_eq!(*results.lock().unwrap(), ["ok", "ok"]);

    let logs = d.ixctl(&["logs", "kvs"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("ixkvs: listening on 10.77.0.1:11211 (ix, dataplane kvs of ixcpd"),
        "{logs}"
    );
}
