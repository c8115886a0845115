//! Resizing running dataplanes through their lifelines, against an
//! in-process ixcpd and fake dataplanes: one built on the client library
//! (answers ok, refuses, stays silent, or dies when a command comes, and
//! publishes chosen load in its stats page), and one speaking raw frames
//! to send answers ixcpd cannot read.

use std::fs::File;
use std::io::PipeWriter;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use control_plane::client::{Client, ClientError, DataplaneCommand};
use control_plane::config::Config;
use control_plane::daemon::COMMAND_TIMEOUT;
use control_plane::host::Host;
use control_plane::proto::{
    self, AllocateArgs, ErrorCode, PoolFd, Reply, Request, RequestFrame, ResponseFrame, VERSION,
};
use control_plane::resources::Allocation;
use control_plane::server::Server;
use control_plane::sys::SeqPacket;
use control_plane::units::{CpuList, MIB};
use dataplane::stats::{CoreStats, StatsPage};

/// An ixcpd serving on its own thread; stopped and joined on drop.
struct Site {
    path: PathBuf,
    stop: Option<PipeWriter>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Site {
    /// Four CPUs, one memif port of four queues, `policy` the default.
    fn start(policy: &str) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("ixcpd-resize")
            .tempdir()
            .unwrap();
        let path = dir.path().join("ixcpd.sock");
        let host = Host {
            cpus: CpuList(vec![0, 1, 2, 3]),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        };
        let text = format!(
            "memory = \"64 MiB\"\nhugepages = \"off\"\npolicy = \"{policy}\"\n[api]\nsocket = {path:?}\n\
             [[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = {:?}\nrole = \"master\"\n\
             queues = 4\nip = \"10.0.0.1/24\"\n",
            dir.path().join("wire0.sock")
        );
        let mut server = Server::bind(Config::from_toml(&text, &host).unwrap()).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let thread = std::thread::spawn(move || server.run(reader.as_fd()).unwrap());
        Site {
            path,
            stop: Some(writer),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.path).unwrap()
    }

    fn allocate(&self, name: &str, cores: u32) -> Allocation {
        self.client()
            .allocate(AllocateArgs {
                name: name.into(),
                cores,
                port: "wire0".into(),
                buffers_per_core: Some(512),
                memory: None,
            })
            .unwrap()
    }

    /// The CPUs `name` holds by `resources`, and how many are free.
    fn held(&self, name: &str) -> (Vec<u32>, usize) {
        let r = self.client().resources().unwrap();
        let held = r
            .cores
            .iter()
            .filter(|c| c.owner.as_deref() == Some(name))
            .map(|c| c.cpu)
            .collect();
        (held, r.cores.iter().filter(|c| c.owner.is_none()).count())
    }

    fn logs(&self, name: &str) -> Vec<String> {
        let logs = self.client().logs(name, None).unwrap();
        logs.lines.into_iter().map(|l| l.text).collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the fake dataplane does with the next command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Obey,
    Refuse,
    Silent,
    Die,
}

/// A command the fake received: the allocation, and each added pool
/// with the size of the memfd that came with it.
#[derive(Debug)]
struct Seen {
    allocation: Allocation,
    pools: Vec<(PoolFd, u64)>,
}

/// Load the fake publishes on each of its cores.
#[derive(Clone, Copy, Debug)]
struct Load {
    queue_milli: u64,
    idle_ppm: u64,
}

/// A dataplane registered with the client library, serving commands on
/// its lifeline from a thread.
struct Fake {
    behaviour: Arc<Mutex<Behaviour>>,
    load: Arc<Mutex<Option<Load>>>,
    seen: Receiver<Seen>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn register(site: &Site, name: &str) -> Fake {
        let mut lifeline = site.client();
        let (reg, mut fds) = lifeline.register(name).unwrap();
        let stats = reg.stats.expect("a stats page");
        let page_fd: OwnedFd = fds.remove(stats.fd as usize);
        let page = StatsPage::open(page_fd, stats.cores as usize, true).unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour::Obey));
        let load = Arc::new(Mutex::new(None::<Load>));
        let (seen_tx, seen) = mpsc::channel();
        let (stop, stopped) = mpsc::channel();
        let thread = {
            let behaviour = behaviour.clone();
            let load = load.clone();
            let mut cores = reg.allocation.cores();
            std::thread::spawn(move || {
                let mut publishes = 0;
                while stopped.try_recv() == Err(mpsc::TryRecvError::Empty) {
                    if let Some(l) = *load.lock().unwrap() {
                        publishes += 1;
                        let now = dataplane::time::Instant::now().as_nanos();
                        for core in 0..cores {
                            page.writer(core).unwrap().publish(&CoreStats {
                                heartbeat_ns: now,
                                publishes,
                                avg_queue_milli: l.queue_milli,
                                avg_idle_ppm: l.idle_ppm,
                                ..CoreStats::default()
                            });
                        }
                    }
                    if !lifeline.has_command() && !readable(&lifeline, 10) {
                        continue;
                    }
                    let (id, command) = match lifeline.read_command() {
                        Ok(Some(got)) => got,
                        Ok(None) => return,
                        Err(ClientError::Timeout(_)) => continue,
                        Err(err) => panic!("fake dataplane: {err}"),
                    };
                    let DataplaneCommand::Resize { allocation, pools } = command;
                    let pools = pools
                        .into_iter()
                        .map(|(p, fd)| (p, File::from(fd).metadata().unwrap().len()))
                        .collect();
                    let n = allocation.cores();
                    seen_tx.send(Seen { allocation, pools }).unwrap();
                    match *behaviour.lock().unwrap() {
                        Behaviour::Obey => {
                            cores = n;
                            lifeline.answer_command(id, Ok(n as u32)).unwrap();
                        }
                        Behaviour::Refuse => lifeline
                            .answer_command(id, Err("cannot start an elastic thread".into()))
                            .unwrap(),
                        Behaviour::Silent => {}
                        Behaviour::Die => return,
                    }
                }
            })
        };
        Fake {
            behaviour,
            load,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn publish(&self, load: Load) {
        *self.load.lock().unwrap() = Some(load);
    }

    fn next(&self, within: Duration) -> Seen {
        self.seen.recv_timeout(within).expect("a command")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn readable(client: &Client, timeout_ms: i32) -> bool {
    let mut fds = [libc::pollfd {
        fd: client.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    control_plane::sys::poll(&mut fds, timeout_ms).unwrap() > 0
}

fn api_code(err: &ClientError) -> ErrorCode {
    err.api()
        .unwrap_or_else(|| panic!("not an API error: {err}"))
        .code
}

#[test]
fn a_running_dataplane_grows_and_shrinks_through_its_lifeline() {
    let site = Site::start("none");
    let before = site.allocate("echo", 1);
    let fake = Fake::register(&site, "echo");
    let grown = site.client().cores("echo", 3).unwrap();
    assert_eq!(grown.cpus, vec![0, 1, 2]);
    let seen = fake.next(Duration::from_secs(1));
    assert_eq!(seen.allocation, grown);
    let queues: Vec<u16> = seen.pools.iter().map(|(p, _)| p.queue).collect();
    assert_eq!(queues, vec![1, 2], "one pool per added core");
    for (pool, len) in &seen.pools {
        assert_eq!(*len, pool.bytes);
        assert_eq!(pool.bytes, before.pool_bytes);
    }
    assert_eq!(site.held("echo"), (vec![0, 1, 2], 1));
    let stats = site.client().stats("echo").unwrap();
    assert_eq!(stats.allocation.cpus, vec![0, 1, 2]);
    assert_eq!(
        stats.cores.len(),
        3,
        "the page kept, read for the cores held"
    );

    let shrunk = site.client().cores("echo", 1).unwrap();
    assert_eq!(shrunk.cpus, vec![0]);
    let seen = fake.next(Duration::from_secs(1));
    assert!(seen.pools.is_empty());
    assert_eq!(seen.allocation, shrunk);
    assert_eq!(site.held("echo"), (vec![0], 3));
    let logs = site.logs("echo");
    assert!(
        logs.iter().any(|l| l.contains("resized from 3 to 1 cores")),
        "{logs:?}"
    );
}

#[test]
fn a_refused_resize_is_rolled_back_and_a_concurrent_one_is_busy() {
    let site = Site::start("none");
    site.allocate("echo", 1);
    let fake = Fake::register(&site, "echo");
    fake.set(Behaviour::Refuse);
    let err = site.client().cores("echo", 2).unwrap_err();
    assert_eq!(api_code(&err), ErrorCode::DataplaneFailed, "{err}");
    assert!(
        err.to_string().contains("cannot start an elastic thread"),
        "{err}"
    );
    assert_eq!(site.held("echo"), (vec![0], 3));
    // The refused command was seen; the next one seen is the silent one.
    fake.next(Duration::from_secs(1));

    // A silent dataplane: the resize waits; others are served, and a
    // second resize of it is busy.
    fake.set(Behaviour::Silent);
    let path = site.path.clone();
    let started = Instant::now();
    let waiting = std::thread::spawn(move || Client::connect(&path).unwrap().cores("echo", 3));
    fake.next(Duration::from_secs(4));
    let t = Instant::now();
    site.client().status().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "status waited");
    let busy = site.client().cores("echo", 2).unwrap_err();
    assert_eq!(api_code(&busy), ErrorCode::Busy, "{busy}");
    let timed_out = waiting.join().unwrap().unwrap_err();
    assert!(started.elapsed() >= COMMAND_TIMEOUT);
    assert_eq!(api_code(&timed_out), ErrorCode::DataplaneFailed);
    assert!(
        timed_out.to_string().contains("did not answer"),
        "{timed_out}"
    );
    // Not knowing, ixcpd keeps the grown allocation in its books.
    assert_eq!(site.held("echo"), (vec![0, 1, 2], 1));
    // Its exit releases everything.
    drop(fake);
    wait_until("release", || site.held("echo") == (vec![], 4));
}

#[test]
fn a_dataplane_that_dies_mid_resize_releases_everything() {
    let site = Site::start("none");
    site.allocate("echo", 2);
    let fake = Fake::register(&site, "echo");
    fake.set(Behaviour::Die);
    let err = site.client().cores("echo", 4).unwrap_err();
    assert_eq!(api_code(&err), ErrorCode::DataplaneFailed, "{err}");
    assert!(err.to_string().contains("lifeline closed"), "{err}");
    assert_eq!(site.held("echo"), (vec![], 4));
    drop(fake);
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Registers `name` over a raw socket: the lifeline, and the first
/// command's frame once a `cores` call (on another thread) sent it.
fn raw_register(path: &Path, name: &str) -> SeqPacket {
    let sock = SeqPacket::connect(path, Some(Duration::from_secs(5))).unwrap();
    let request = proto::encode_request(&RequestFrame {
        v: VERSION,
        id: 1,
        request: Request::Register { name: name.into() },
    });
    sock.send(&request, &[]).unwrap();
    let mut buf = vec![0; proto::MAX_FRAME];
    let mut fds = Vec::new();
    let got = sock.recv(&mut buf, &mut fds).unwrap();
    let frame: ResponseFrame = proto::decode_response(&buf[..got.len]).unwrap();
    assert!(matches!(
        frame.outcome,
        proto::Outcome::Ok(Reply::Registered(_))
    ));
    sock
}

#[test]
fn malformed_answers_fail_the_resize_and_the_daemon_stays_up() {
    let site = Site::start("none");
    site.allocate("echo", 1);
    let lifeline = raw_register(&site.path, "echo");
    let mut buf = vec![0; proto::MAX_FRAME];
    let garbage: [&[u8]; 4] = [
        b"\xff\xfe not even UTF-8",
        br#"{"v":1,"cmd":CMD,"ok":{"cores":2},"error":"both"}"#,
        br#"{"v":1,"cmd":CMD,"ok":{"cores":"two"}}"#,
        br#"{"v":9,"cmd":CMD,"ok":{"cores":2}}"#,
    ];
    for bad in garbage {
        let path = site.path.clone();
        let caller = std::thread::spawn(move || Client::connect(&path).unwrap().cores("echo", 2));
        let mut fds = Vec::new();
        let got = lifeline.recv(&mut buf, &mut fds).unwrap();
        let command = proto::decode_command(&buf[..got.len]).unwrap();
        assert_eq!(fds.len(), 1);
        let text = String::from_utf8_lossy(bad).replace("CMD", &command.cmd.to_string());
        let bytes = if bad.starts_with(b"\xff") {
            bad.to_vec()
        } else {
            text.into_bytes()
        };
        lifeline.send(&bytes, &[]).unwrap();
        let err = caller.join().unwrap().unwrap_err();
        assert_eq!(api_code(&err), ErrorCode::DataplaneFailed, "{err}");
        assert!(err.to_string().contains("malformed answer"), "{err}");
        assert_eq!(site.held("echo"), (vec![0], 3), "rolled back");
    }
    let status = site.client().status().unwrap();
    assert!(status.daemon.malformed >= 4);
    let logs = site.logs("echo");
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("malformed answer"))
            .count(),
        4,
        "{logs:?}"
    );
    // A well-formed answer still works on the same lifeline.
    let path = site.path.clone();
    let caller = std::thread::spawn(move || Client::connect(&path).unwrap().cores("echo", 2));
    let mut fds = Vec::new();
    let got = lifeline.recv(&mut buf, &mut fds).unwrap();
    let command = proto::decode_command(&buf[..got.len]).unwrap();
    let answer = proto::encode_answer(&proto::CommandAnswer {
        cmd: command.cmd,
        result: Ok(2),
    });
    lifeline.send(&answer, &[]).unwrap();
    assert_eq!(caller.join().unwrap().unwrap().cpus, vec![0, 1]);
}

#[test]
fn the_load_policy_grows_a_queueing_dataplane_and_shrinks_it_when_idle() {
    let site = Site::start("load");
    site.allocate("kvs", 1);
    let fake = Fake::register(&site, "kvs");
    let status = site.client().status().unwrap();
    assert_eq!(
        status.dataplanes[0].policy,
        control_plane::config::Policy::Load
    );
    // Deep queues: a core is added within a few ticks.
    fake.publish(Load {
        queue_milli: 40_000,
        idle_ppm: 0,
    });
    let grown_at = Instant::now();
    let seen = fake.next(Duration::from_secs(2));
    assert_eq!(seen.allocation.cpus, vec![0, 1]);
    assert_eq!(seen.pools.len(), 1);
    // Idle from now: one core is taken back once 4 s passed since the
    // addition and the long-term queue average fell below 8 frames.
    fake.publish(Load {
        queue_milli: 0,
        idle_ppm: 990_000,
    });
    let mut shrink = None;
    while shrink.is_none() {
        let seen = fake.next(Duration::from_secs(8));
        if seen.allocation.cores() < 2 {
            shrink = Some(seen);
        }
    }
    assert!(grown_at.elapsed() >= Duration::from_secs(4));
    assert_eq!(shrink.unwrap().allocation.cpus, vec![0]);
    wait_until("the books to follow", || site.held("kvs") == (vec![0], 3));
    let logs = site.logs("kvs");
    assert!(
        logs.iter()
            .any(|l| l.starts_with("load policy: max queue average")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.starts_with("load policy: long-term mean queue")),
        "{logs:?}"
    );
}
