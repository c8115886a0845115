//! `ixload`'s Linux transport against a real memcached on loopback: the
//! preload stores every key, GETs then all hit, nothing fails, and the
//! achieved rate matches the offered one; a short SLO search runs its
//! points in one session. Skipped (loudly) where memcached is missing.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ix_tools::load::{
    self, LoadParams, Popularity, SweepParams, Target, Transport, WorkloadKind, WorkloadSpec,
};

/// A memcached child process, killed on drop.
struct Memcached {
    child: Child,
    addr: SocketAddrV4,
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts memcached on an ephemeral loopback port, or says why not.
fn memcached() -> Option<Memcached> {
    let found = Command::new("which")
        .arg("memcached")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: memcached not installed (apt-get install -y memcached)");
        return None;
    }
    for _ in 0..5 {
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let child = Command::new("memcached")
            .args(["-l", "127.0.0.1", "-p", &port.to_string()])
            // No UDP, one worker thread, 64 MiB; `-u` only matters as root.
            .args(["-U", "0", "-t", "1", "-m", "64", "-u", "nobody"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached starts");
        let mut mc = Memcached { child, addr };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if TcpStream::connect(SocketAddr::V4(addr)).is_ok() {
                return Some(mc);
            }
            if mc.child.try_wait().unwrap().is_some() {
                break; // the port was taken meanwhile: try another
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("memcached did not start listening");
}

fn target(mc: &Memcached) -> Target {
    Target {
        transport: Transport::Linux,
        server: mc.addr,
        server_pid: Some(mc.child.id()),
        cpu: None,
    }
}

fn params(kind: WorkloadKind) -> LoadParams {
    LoadParams {
        workload: WorkloadSpec {
            keys: 10_000,
            ..WorkloadSpec::new(kind)
        },
        connections: 16,
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        ..LoadParams::default()
    }
}

#[test]
fn etc_point_against_memcached_hits_every_get_at_the_offered_rate() {
    let Some(mc) = memcached() else { return };
    let p = LoadParams {
        rate: 5_000.0,
        ..params(WorkloadKind::Etc)
    };
    let r = load::run_point(&target(&mc), &p).unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!((r.errors, r.misses, r.dropped), (0, 0, 0), "{r:?}");
    assert!(r.gets > 3_000 && r.hits == r.gets, "{r:?}");
    assert!(r.sets > 900, "{r:?}");
    let rel = (r.achieved_rps - 5_000.0).abs() / 5_000.0;
    assert!(rel < 0.1, "achieved {} of 5000/s", r.achieved_rps);
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.p99);
    assert!(r.server_cpu.is_some_and(|c| c > 0.0), "{r:?}");
    assert!(r.client_cpu.is_some());
}

#[test]
fn usr_points_with_zipf_keys_run_in_one_session() {
    let Some(mc) = memcached() else { return };
    let mut p = params(WorkloadKind::Usr);
    p.workload.popularity = Popularity::Zipf(0.99);
    p.duration = Duration::from_millis(500);
    let points = load::run_points(&target(&mc), &p, &[2_000.0, 6_000.0]).unwrap();
    assert_eq!(points.len(), 2);
    for r in &points {
        assert_eq!((r.errors, r.misses), (0, 0), "{r:?}");
        assert!(r.hits == r.gets && r.gets > 0);
        // 99 % GETs.
        assert!(r.sets * 20 < r.requests, "{r:?}");
        let rel = (r.achieved_rps - r.offered_rps).abs() / r.offered_rps;
        assert!(rel < 0.15, "{r:?}");
    }
}

#[test]
fn a_short_sweep_measures_each_rate_it_chooses() {
    let Some(mc) = memcached() else { return };
    let mut p = params(WorkloadKind::Etc);
    SweepParams::quick_timing(&mut p);
    p.duration = Duration::from_millis(500);
    let sweep = SweepParams {
        start_rps: 2_000.0,
        max_rps: 8_000.0,
        min_rps: 500.0,
        max_points: 3,
        ..SweepParams::quick()
    };
    let r = load::sweep(&target(&mc), &p, &sweep).unwrap();
    assert_eq!(r.points.len(), 3, "{r:?}");
    assert_eq!(r.points[0].offered_rps, 2_000.0);
    if let Some(best) = r.best_rps {
        assert!(r
            .points
            .iter()
            .any(|q| q.meets_slo && q.offered_rps == best));
    }
    assert!(r.points.iter().all(|q| q.errors == 0 && q.hits == q.gets));
}
