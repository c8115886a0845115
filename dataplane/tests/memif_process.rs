//! memif between two processes: this test re-executes its own binary as
//! the peer (a slave that echoes every frame back), so the regions really
//! cross a process boundary as file descriptors.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dataplane::buf::Pool;
use dataplane::nic::memif::{MemifConfig, MemifPort, MemifRole};
use dataplane::nic::QueuePair;

const CHILD_ENV: &str = "IX_MEMIF_ECHO_CHILD_SOCKET";
const FRAMES: u64 = 50_000;

/// Kills and reaps the child, removes the directory, whatever happens.
struct Cleanup {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq) as u8).collect();
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v
}

/// The child: a slave that sends back whatever it receives (byte API, so
/// jumbo frames too) until the master goes away.
fn echo_child(sock: &str) {
    let port = MemifPort::open(MemifConfig {
        name: "echo-child".into(),
        ..MemifConfig::new(sock, MemifRole::Slave)
    })
    .unwrap();
    port.wait_connected(Duration::from_secs(20)).unwrap();
    let mut q = port.queue(0, Pool::new(1, 256, false).unwrap()).unwrap();
    while !q.is_up() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while q.is_up() && Instant::now() < deadline {
        if held.is_empty() {
            q.rx_burst_bytes(32, |f| held.push(f.to_vec()));
        }
        if !held.is_empty() {
            let refs: Vec<&[u8]> = held.iter().map(|f| &f[..]).collect();
            let n = q.tx_burst_bytes(&refs);
            held.drain(..n);
        }
    }
}

#[test]
fn two_processes_exchange_frames() {
    if let Ok(sock) = std::env::var(CHILD_ENV) {
        echo_child(&sock);
        return;
    }
    let dir = std::env::temp_dir().join(format!("ix-memif-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut guard = Cleanup {
        child: None,
        dir: dir.clone(),
    };
    let sock = dir.join("memif.sock");
    let master = MemifPort::open(MemifConfig::new(&sock, MemifRole::Master)).unwrap();
    guard.child = Some(
        Command::new(std::env::current_exe().unwrap())
            .args(["two_processes_exchange_frames", "--exact", "--nocapture"])
            .env(CHILD_ENV, &sock)
            .spawn()
            .unwrap(),
    );
    master.wait_connected(Duration::from_secs(30)).unwrap();
    let mut q = master.queue(0, Pool::new(2, 1024, false).unwrap()).unwrap();
    while !q.is_up() {
        std::thread::sleep(Duration::from_millis(1));
    }

    let sizes = [60usize, 64, 128, 1000, 1514, 2048, 2049, 9000];
    let frame_of = |seq: u64| pattern(seq, sizes[seq as usize % sizes.len()]);
    let (mut sent, mut got) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < FRAMES {
        assert!(Instant::now() < deadline, "echoed {got} of {FRAMES}");
        // Keep at most 256 frames in flight.
        if sent < FRAMES && sent - got < 256 {
            let burst: Vec<Vec<u8>> = (sent..(sent + 16).min(FRAMES)).map(frame_of).collect();
            let refs: Vec<&[u8]> = burst.iter().map(|f| &f[..]).collect();
            sent += q.tx_burst_bytes(&refs) as u64;
        }
        q.rx_burst_bytes(64, |f| {
            assert_eq!(f, &frame_of(got)[..], "echoed frame {got}");
            got += 1;
        });
    }
    assert_eq!(q.stats().tx_dropped, 0);
    assert_eq!(q.stats().rx_dropped, 0);
    drop(q);
    drop(master);
    // The child sees the link go down and exits by itself.
    let status = guard.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "echo child failed: {status}");
    guard.child = None;
}
