//! What the tests that drive ixcpd share: running `ixctl` against a
//! socket, and an ixcpd on a thread of the test process. Each test binary
//! uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

use control_plane::config::Config;
use control_plane::host::Host;
use control_plane::server::Server;
use serde_json::Value;

/// The `ixctl` binary under test.
pub const IXCTL: &str = env!("CARGO_BIN_EXE_ixctl");

/// Runs `ixctl --socket SOCKET ARGS…`.
pub fn ixctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(IXCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running ixctl")
}

/// Runs ixctl, expecting success; its stdout.
pub fn ixctl_ok(socket: &Path, args: &[&str]) -> String {
    let out = ixctl(socket, args);
    assert!(
        out.status.success(),
        "ixctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs ixctl with `--json`, expecting success; the parsed output.
pub fn ixctl_json(socket: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ixctl_ok(socket, &args)).unwrap()
}

/// An ixcpd on a thread, in its own temporary directory. Dropping it
/// kills the dataplanes it runs, then stops it.
pub struct Ixcpd {
    /// The directory holding its sockets.
    pub dir: tempfile::TempDir,
    /// Its API socket.
    pub socket: PathBuf,
    stop: Option<std::io::PipeWriter>,
    thread: Option<JoinHandle<()>>,
}

impl Ixcpd {
    /// Starts one with `cores = "all"`, 64 MiB of 4 KiB-page memory, its
    /// socket in a fresh directory, and the `[[ports]]` tables `ports`
    /// writes given that directory.
    pub fn start_with(prefix: &str, ports: impl FnOnce(&Path) -> String) -> Ixcpd {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let socket = dir.path().join("ixcpd.sock");
        let text = format!(
            "cores = \"all\"\nmemory = \"64 MiB\"\nhugepages = \"off\"\n\
             [api]\nsocket = {socket:?}\n{}",
            ports(dir.path())
        );
        let config = Config::from_toml(&text, &Host::probe()).unwrap();
        let mut server = Server::bind(config).unwrap();
        let (rd, wr) = std::io::pipe().unwrap();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            server.run(rd.as_fd()).unwrap();
        });
        Ixcpd {
            dir,
            socket,
            stop: Some(wr),
            thread: Some(thread),
        }
    }

    /// Runs ixctl against it.
    pub fn ixctl(&self, args: &[&str]) -> Output {
        ixctl(&self.socket, args)
    }

    /// Runs ixctl, expecting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ixctl_ok(&self.socket, args)
    }

    /// Runs ixctl with `--json`, expecting success; the parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        ixctl_json(&self.socket, args)
    }
}

impl Drop for Ixcpd {
    fn drop(&mut self) {
        // End every dataplane still running (they would outlive their
        // ixcpd by design), then the daemon.
        let status = Command::new(IXCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(["status", "--json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
        let pids = status
            .iter()
            .flat_map(|s| s["dataplanes"].as_array().into_iter().flatten())
            .filter_map(|d| d["pid"].as_i64());
        for pid in pids {
            // SAFETY: kill() takes no pointers; the pid is a dataplane this
            // daemon launched for the test.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.write_all(b"x");
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
