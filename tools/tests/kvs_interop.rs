//! `ixkvs --stack ix` on af_packet against real memcached clients, run in a
//! network namespace on the other end of a veth pair (`ix-testnet`):
//!
//! - pymemcache (Debian's `python3-pymemcache`, for `/usr/bin/python3`):
//!   `tests/interop/pymemcache_roundtrip.py` checks set/get/delete/add/
//!   replace/append/prepend/incr/decr/gets+cas/get_many/set_many/touch/
//!   stats/flush_all round trips with values up to 500 KiB, and exits
//!   non-zero listing every result that differed;
//! - memcslap (`libmemcached-tools`), text protocol: its `set`, `get` and
//!   `mget` tests, whose output must count every key as done and whose
//!   stderr must stay empty (memcslap exits 0 even when every request
//!   failed, so the exit status alone proves nothing); then a request of
//!   our own shows the server still serves.
//!
//! A missing tool, or no root for namespaces, prints `SKIPPED: <why>` and
//! returns. Namespaces, links and processes are removed on drop, also when
//! a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ix_testnet::TestNet;

const IXKVS: &str = env!("CARGO_BIN_EXE_ixkvs");
const PYTHON: &str = "/usr/bin/python3";
const MEMCSLAP: &str = "/usr/bin/memcslap";
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/pymemcache_roundtrip.py"
);
const PORT: u16 = 11211;

/// A child process, killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ixkvs --stack ix` on the root end of `net`'s veth pair, once it has
/// printed its "listening on" line.
fn ixkvs_on(net: &TestNet) -> Reaped {
    let mut child = Command::new(IXKVS)
        .args(["--stack", "ix", "--af-packet", net.host_if()])
        .args(["--ip", &net.dp_ip().to_string()])
        .args(["--prefix-len", &net.prefix_len().to_string()])
        .args(["--port", &PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ixkvs starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Reaped(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ixkvs announces itself");
    assert!(
        line.starts_with("ixkvs: listening on "),
        "unexpected first line {line:?}"
    );
    server
}

/// What a finished command printed.
struct Ran {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn show(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd`, killing it if it has not finished within `limit`.
fn run(mut cmd: Command, limit: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("piped stdout")));
    let err = collect(Box::new(child.stderr.take().expect("piped stderr")));
    let mut child = Reaped(child);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for the child") {
            break status.to_string();
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break format!("killed after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    let ok = status == "exit status: 0";
    Ran {
        ok,
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Whether `/usr/bin/python3` can import pymemcache.
fn have_pymemcache() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import pymemcache"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_missing(tool: &str) {
    eprintln!("SKIPPED: {tool} not installed (scripts/setup.sh installs it)");
}

#[test]
fn pymemcache_round_trips_through_ixkvs_on_af_packet() {
    if !have_pymemcache() {
        skip_missing("pymemcache for /usr/bin/python3 (python3-pymemcache)");
        return;
    }
    let Some(net) = TestNet::veth_pair("kvspy") else {
        return;
    };
    let _server = ixkvs_on(&net);
    let mut cmd = net.run_in_ns(PYTHON);
    cmd.args([SCRIPT, &net.dp_ip().to_string(), &PORT.to_string()]);
    let ran = run(cmd, Duration::from_secs(300));
    assert!(ran.ok, "the pymemcache script failed\n{}", ran.show());
    assert!(
        ran.stdout.contains("pymemcache: all ") && ran.stdout.contains(" checks passed"),
        "{}",
        ran.show()
    );
    eprint!("{}", ran.stdout);
}

/// One memcslap run: `test` (set, get or mget) by `threads` threads of
/// `keys` keys each, in the namespace, checked.
fn memcslap(net: &TestNet, test: &str, threads: usize, keys: usize, flush: bool) {
    let mut cmd = net.run_in_ns(MEMCSLAP);
    cmd.arg(format!("--servers={}:{PORT}", net.dp_ip()))
        .arg(format!("--concurrency={threads}"))
        .arg(format!("--execute-number={keys}"))
        .arg(format!("--test={test}"))
        // Makes memcslap report misses too, not only fatal errors.
        .arg("--verbose");
    if flush {
        cmd.arg("--flush");
    }
    let ran = run(cmd, Duration::from_secs(300));
    let what = format!("memcslap --test={test} -c {threads} -e {keys}");
    assert!(ran.ok, "{what} failed\n{}", ran.show());
    assert!(
        ran.stderr.trim().is_empty(),
        "{what} reported errors\n{}",
        ran.show()
    );
    let counts = memcslap_counts(&ran.stdout, test);
    assert_eq!(
        counts.run,
        Some(threads * keys),
        "{what}: not every key was done\n{}",
        ran.show()
    );
    if test != "set" {
        assert_eq!(
            counts.load,
            Some(keys),
            "{what}: not every key of the initial load was set\n{}",
            ran.show()
        );
    }
    if flush {
        assert!(
            ran.stdout.contains("Time to flush "),
            "{what}: no flush\n{}",
            ran.show()
        );
    }
    eprint!("{what}:\n{}", ran.stdout);
}

/// The key counts memcslap printed.
#[derive(Debug, PartialEq)]
struct SlapCounts {
    /// `Time to set N keys:` (the initial load of a get or mget test).
    load: Option<usize>,
    /// `Time to <test> N keys by T threads:` (keys done by the test).
    run: Option<usize>,
}

/// Reads memcslap's summary lines:
///
/// ```text
/// Time to set            1000 keys:                     0.076 seconds.
/// Time to get            4000 keys by    4 threads:     0.092 seconds.
/// ```
///
/// The counts are of requests that succeeded: memcslap prints them, not
/// an error count, and exits 0 whatever happened.
fn memcslap_counts(stdout: &str, test: &str) -> SlapCounts {
    let mut counts = SlapCounts {
        load: None,
        run: None,
    };
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["Time", "to", "set", n, "keys:", ..] => counts.load = n.parse().ok(),
            ["Time", "to", t, n, "keys", "by", _, "threads:", ..] if t == test => {
                counts.run = n.parse().ok();
            }
            _ => {}
        }
    }
    counts
}

/// Sends `req` and reads until the reply ends with `end`.
fn ask(stream: &mut TcpStream, req: &[u8], end: &[u8]) -> Vec<u8> {
    stream.write_all(req).expect("request sent");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(end) {
        let n = stream.read(&mut chunk).expect("reply arrives");
        assert!(
            n > 0,
            "server closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

#[test]
fn memcslap_runs_clean_against_ixkvs_on_af_packet() {
    if !Path::new(MEMCSLAP).is_file() {
        skip_missing("memcslap (libmemcached-tools)");
        return;
    }
    let Some(net) = TestNet::veth_pair("kvsslap") else {
        return;
    };
    let _server = ixkvs_on(&net);
    memcslap(&net, "set", 4, 2000, true);
    memcslap(&net, "get", 4, 2000, false);
    // memcslap's default load: one `get` line of 10,000 keys (~400 KB).
    memcslap(&net, "mget", 2, 10_000, false);

    let addr = SocketAddr::from((net.dp_ip(), PORT));
    let replies = net
        .spawn_in_ns(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .expect("connects after memcslap");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let set = ask(&mut s, b"set interop-check 7 0 5\r\nhello\r\n", b"\r\n");
            let get = ask(&mut s, b"get interop-check\r\n", b"END\r\n");
            (set, get)
        })
        .join()
        .expect("client thread")
        .expect("joined the namespace");
    assert_eq!(String::from_utf8_lossy(&replies.0), "STORED\r\n");
    assert_eq!(
        String::from_utf8_lossy(&replies.1),
        "VALUE interop-check 7 5\r\nhello\r\nEND\r\n"
    );
}

#[test]
fn memcslap_summary_lines_are_read() {
    let out = "Time to generate       1000 test keys:                0.002 seconds.\n\
               Time to set            1000 keys:                     0.074 seconds.\n\
               Time to start             4 threads:                  0.000 seconds.\n\
               --------------------------------------------------------------------\n\
               Time to mget           4000 keys by    4 threads:     0.010 seconds.\n";
    assert_eq!(
        memcslap_counts(out, "mget"),
        SlapCounts {
            load: Some(1000),
            run: Some(4000)
        }
    );
    assert_eq!(
        memcslap_counts(out, "get"),
        SlapCounts {
            load: Some(1000),
            run: None
        }
    );
    let failed = "Time to set               0 keys by    2 threads:     0.000 seconds.\n";
    assert_eq!(
        memcslap_counts(failed, "set"),
        SlapCounts {
            load: None,
            run: Some(0)
        }
    );
}
