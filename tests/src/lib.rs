//! Helpers shared by the integration tests: spawning peer processes that
//! are killed when the test ends (even on panic), and per-test scratch
//! directories.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process killed and reaped on drop.
pub struct Peer {
    child: Option<Child>,
    name: String,
}

impl Peer {
    /// Spawns `cmd` with stdout piped and stderr inherited.
    pub fn spawn(name: &str, cmd: &mut Command) -> Peer {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Peer {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// Waits for the process to exit within `timeout` and returns its
    /// output; kills it and panics on timeout.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("not yet waited");
        let start = Instant::now();
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                return child.wait_with_output().expect("collect output");
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "{} did not finish within {timeout:?}; stdout: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates a fresh directory for test `name`.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ix-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// Path of an entry in the directory.
    pub fn path(&self, entry: &str) -> PathBuf {
        self.0.join(entry)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
