//! An ixcpd run inside the benchmark process, with the built-in config
//! (every CPU, one memif wire `wire0` ↔ `wire0-peer`) and its sockets in a
//! private directory: the benchmark launches its dataplanes through it, as
//! an operator would with `ixctl up` and `ixctl launch`.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use control_plane::client::Client;
use control_plane::config::{Config, PortConfig};
use control_plane::daemon::STOP_GRACE;
use control_plane::host::Host;
use control_plane::proto::{DataplaneState, LaunchArgs, LaunchReply};
use control_plane::server::Server;

/// A running in-process ixcpd. Dropping it stops its dataplanes and the
/// daemon, and removes its directory.
pub struct EmbeddedIxcpd {
    dir: tempfile::TempDir,
    config: Config,
    stop: Option<std::io::PipeWriter>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Dataplanes launched: name and pid.
    launched: Vec<(String, u32)>,
}

impl EmbeddedIxcpd {
    /// Starts the daemon on the built-in config.
    pub fn start() -> anyhow::Result<EmbeddedIxcpd> {
        let dir = tempfile::Builder::new()
            .prefix("ixctl-ixcpd-")
            .tempdir()
            .context("cannot create a directory for the embedded ixcpd")?;
        let config = Config::builtin_in(dir.path(), &Host::probe())
            .context("the built-in ixcpd config does not fit this machine")?;
        let mut server = Server::bind(config.clone()).context("starting the embedded ixcpd")?;
        let (rd, wr) = std::io::pipe().context("creating ixcpd's stop pipe")?;
        let thread = std::thread::Builder::new()
            .name("ixcpd".into())
            .spawn(move || server.run(rd.as_fd()).context("the embedded ixcpd failed"))
            .context("starting the embedded ixcpd's thread")?;
        Ok(EmbeddedIxcpd {
            dir,
            config,
            stop: Some(wr),
            thread: Some(thread),
            launched: Vec::new(),
        })
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.config.api.socket
    }

    /// The port named `name` of its config.
    pub fn port(&self, name: &str) -> anyhow::Result<&PortConfig> {
        self.config
            .port(name)
            .with_context(|| format!("the built-in config has no port {name}"))
    }

    /// Launches `program args…` as dataplane `name` with one core on
    /// `port`, and waits until it registered.
    pub fn launch(
        &mut self,
        name: &str,
        port: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<LaunchReply> {
        let mut client =
            Client::connect(self.socket()).context("connecting to the embedded ixcpd")?;
        let reply = client
            .launch(LaunchArgs {
                name: name.into(),
                cores: 1,
                port: port.into(),
                buffers_per_core: None,
                memory: None,
                isolation: None,
                policy: None,
                program: program.to_string_lossy().into_owned(),
                args: args.to_vec(),
                cwd: None,
            })
            .with_context(|| format!("launching {} as dataplane {name}", program.display()))?;
        self.launched.push((name.into(), reply.pid));
        Ok(reply)
    }

    /// Fails unless dataplane `name` is still running.
    pub fn check_running(&self, name: &str) -> anyhow::Result<()> {
        let mut client =
            Client::connect(self.socket()).context("connecting to the embedded ixcpd")?;
        let status = client.status().context("asking the embedded ixcpd")?;
        match status.dataplanes.iter().find(|d| d.name == name) {
            Some(d) if d.state == DataplaneState::Running => Ok(()),
            Some(d) => bail!("dataplane {name} is {:?}", d.state),
            None => bail!(
                "dataplane {name} exited during the run (see its log in {})",
                self.dir.path().display()
            ),
        }
    }
}

impl Drop for EmbeddedIxcpd {
    fn drop(&mut self) {
        // Dataplanes outlive their ixcpd by design (a restarted one
        // re-adopts them): stop each, wait for ixcpd to see it gone, and
        // kill what is left before the daemon ends.
        let mut left: Vec<u32> = self.launched.iter().map(|(_, pid)| *pid).collect();
        if let Ok(mut client) = Client::connect(self.socket()) {
            for (name, _) in &self.launched {
                let _ = client.stop(name);
            }
            let deadline = std::time::Instant::now() + STOP_GRACE + Duration::from_secs(1);
            while !left.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                if let Ok(status) = client.status() {
                    left.retain(|pid| status.dataplanes.iter().any(|d| d.pid == Some(*pid)));
                }
            }
        }
        for pid in left {
            if let Err(e) = crate::sys::kill_process(pid) {
                log::warn!("killing dataplane process {pid}: {e}");
            }
        }
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.write_all(b"x");
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("{e:#}"),
                Err(_) => log::warn!("the embedded ixcpd's thread panicked"),
            }
        }
    }
}
