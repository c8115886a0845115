//! `dpdk-testpmd` as a test peer: started in the background with one
//! `net_memif` port, killed and its files removed on drop (also when the
//! test fails). Shared by the memif interop tests and the DPDK backend's.
//!
//! testpmd runs on two lcores without hugepages or PCI, with
//! `--stats-period` (without it a non-interactive testpmd exits at end of
//! input). It busy-polls: hold [`SERIAL`] while one runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One testpmd at a time per test binary.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The installed `dpdk-testpmd`, if any.
pub fn testpmd_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("dpdk-testpmd"))
        .find(|p| p.is_file())
}

/// The directory of testpmd `tag`'s socket and logs, emptied and created
/// (call it before starting a peer that must listen first).
pub fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(prefix(tag));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The EAL file prefix of testpmd `tag` (also its directory's name).
fn prefix(tag: &str) -> String {
    format!("ixtestpmd{}{tag}", std::process::id())
}

/// How testpmd runs.
pub struct Spec<'a> {
    /// Names the run (directory, file prefix).
    pub tag: &'a str,
    /// memif role of testpmd's port: `server` or `client`.
    pub role: &'a str,
    /// testpmd's `--forward-mode` (`io`, `macswap`…).
    pub forward: &'a str,
    /// Queues of the port.
    pub queues: u16,
    /// An abstract socket name instead of `memif.sock` in the directory.
    pub abstract_socket: Option<&'a str>,
}

/// A running testpmd.
pub struct Testpmd {
    child: Child,
    dir: PathBuf,
    prefix: String,
}

impl Testpmd {
    /// Starts testpmd (its directory is created unless [`workdir`] did).
    pub fn start(bin: &Path, spec: &Spec<'_>) -> Testpmd {
        let prefix = prefix(spec.tag);
        let dir = std::env::temp_dir().join(&prefix);
        if !dir.is_dir() {
            workdir(spec.tag);
        }
        let socket = match spec.abstract_socket {
            Some(name) => format!("socket={name}"),
            None => format!(
                "socket={},socket-abstract=no",
                dir.join("memif.sock").display()
            ),
        };
        let vdev = format!(
            "net_memif0,role={},{socket},id=0,bsize=2048,rsize=10",
            spec.role
        );
        let child = Command::new(bin)
            .args([
                "-l",
                "0-1",
                "--no-huge",
                "-m",
                "512",
                "--no-pci",
                &format!("--file-prefix={prefix}"),
                &format!("--vdev={vdev}"),
                "--",
                &format!("--forward-mode={}", spec.forward),
                "--port-topology=loop",
                "--nb-cores=1",
                "--total-num-mbufs=16384",
                &format!("--rxq={}", spec.queues),
                &format!("--txq={}", spec.queues),
                "--stats-period",
                "1",
                "--auto-start",
            ])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("out.log")).unwrap())
            .stderr(File::create(dir.join("err.log")).unwrap())
            .spawn()
            .unwrap();
        Testpmd { child, dir, prefix }
    }

    /// The socket path of a testpmd started without an abstract name.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("memif.sock")
    }

    /// How testpmd ended, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The end of testpmd's output, for failure messages.
    pub fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        format!(
            "--- testpmd stdout\n{}\n--- stderr\n{}",
            tail(read("out.log")),
            tail(read("err.log"))
        )
    }

    /// Waits until testpmd forwards (it printed its first statistics),
    /// failing fast if it died.
    pub fn wait_started(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                panic!("testpmd exited early ({status}):\n{}", self.output());
            }
            let out = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
            if out.contains("Port statistics") || out.contains("Press enter to exit") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "testpmd did not start:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}
