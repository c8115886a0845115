//! The `ixcpd` binary end to end: starts, serves, stops on a signal and
//! cleans up; refuses bad configs and a second daemon with the right exit
//! codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use control_plane::client::Client;
use control_plane::config::{Config, SOCKET_ENV};
use control_plane::host::Host;

const IXCPD: &str = env!("CARGO_BIN_EXE_ixcpd");

fn dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ixcpd-bin")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write_config(dir: &Path) -> PathBuf {
    let file = dir.join("ixcpd.toml");
    fs::write(
        &file,
        format!(
            "memory = \"16 MiB\"\nhugepages = \"off\"\n[api]\nsocket = {:?}\n\
             [[ports]]\nname = \"wire0\"\nkind = \"memif\"\nsocket = {:?}\nrole = \"master\"\n\
             ip = \"10.0.0.1/24\"\n",
            dir.join("from-config.sock"),
            dir.join("wire0.sock")
        ),
    )
    .unwrap();
    file
}

fn ixcpd(args: &[&str]) -> Command {
    let mut cmd = Command::new(IXCPD);
    cmd.args(args)
        .env_remove(SOCKET_ENV)
        .env("RUST_LOG", "info");
    cmd
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    control_plane::sys::kill(pid, sig).unwrap();
}

/// Waits for `child` to exit and returns its output.
fn finish(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = control_plane::sys::kill(pid, libc::SIGKILL);
            panic!("ixcpd did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    waiter.join().unwrap()
}

#[test]
fn foreground_daemon_serves_status_and_stops_on_sigterm() {
    let dir = dir();
    let config = write_config(dir.path());
    let socket = dir.path().join("api.sock");
    let child = ixcpd(&[
        "--config",
        config.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--foreground",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for("the socket", Duration::from_secs(5), || socket.exists());
    let status = Client::connect(&socket).unwrap().status().unwrap();
    assert_eq!(status.daemon.pid, child.id());
    assert_eq!(status.daemon.socket, socket.to_str().unwrap());
    assert!(
        !dir.path().join("from-config.sock").exists(),
        "--socket wins over the config"
    );
    signal(child.id(), libc::SIGTERM);
    let out = finish(child, Duration::from_secs(5));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {log}", out.status);
    assert!(!socket.exists(), "the socket is removed on SIGTERM");
    assert!(log.contains("stopped by signal 15"), "{log}");
    assert!(log.contains("removed"), "{log}");
}

#[test]
fn sigint_stops_too_and_ix_socket_is_honoured() {
    let dir = dir();
    let config = write_config(dir.path());
    let socket = dir.path().join("env.sock");
    let child = ixcpd(&["--config", config.to_str().unwrap(), "--foreground"])
        .env(SOCKET_ENV, &socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the socket", Duration::from_secs(5), || socket.exists());
    Client::connect(&socket).unwrap().status().unwrap();
    signal(child.id(), libc::SIGINT);
    let out = finish(child, Duration::from_secs(5));
    assert!(out.status.success(), "{:?}", out.status);
    assert!(!socket.exists());
}

#[test]
fn background_daemon_returns_when_ready_and_logs_to_its_file() {
    let dir = dir();
    let config = write_config(dir.path());
    let socket = dir.path().join("bg.sock");
    let log = dir.path().join("bg.log");
    let out = ixcpd(&[
        "--config",
        config.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("ixcpd running as pid "), "{said}");
    // The socket is ready as soon as the launcher returns.
    let status = Client::connect(&socket).unwrap().status().unwrap();
    let pid = status.daemon.pid;
    assert!(said.contains(&format!("pid {pid} ")), "{said}");
    signal(pid, libc::SIGTERM);
    wait_for("the daemon to exit", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    wait_for("the socket to go", Duration::from_secs(1), || {
        !socket.exists()
    });
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving on"), "{text}");
    assert!(text.contains("stopped by signal 15"), "{text}");
}

#[test]
fn config_errors_exit_2_naming_the_key() {
    let dir = dir();
    let file = dir.path().join("bad.toml");
    fs::write(&file, "cores = [0, 4096]\n[[ports]]\nname = \"w\"\nkind = \"memif\"\nsocket = \"/tmp/w.sock\"\nrole = \"master\"\nip = \"10.0.0.300/24\"\n").unwrap();
    let out = ixcpd(&["--config", file.to_str().unwrap(), "--foreground"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cores: cpu 4096 does not exist on this machine"),
        "{err}"
    );
    assert!(
        err.contains("ports[0].ip: \"10.0.0.300\" is not an IPv4 address"),
        "{err}"
    );
    let out = ixcpd(&["--socket", "relative.sock", "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--socket: \"relative.sock\" cannot be a socket path"));
    let out = ixcpd(&["--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn second_daemon_on_the_same_socket_exits_1() {
    let dir = dir();
    let config = write_config(dir.path());
    let socket = dir.path().join("one.sock");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--foreground",
    ];
    let first = ixcpd(&args).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the socket", Duration::from_secs(5), || socket.exists());
    let out = ixcpd(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ixcpd already running on"), "{err}");
    Client::connect(&socket).unwrap().status().unwrap();
    signal(first.id(), libc::SIGTERM);
    assert!(finish(first, Duration::from_secs(5)).status.success());
}

#[test]
fn builtin_config_runs_without_a_file_and_prints_as_toml() {
    let dir = dir();
    let socket = dir.path().join("ixcpd.sock");
    let out = ixcpd(&["--socket", socket.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let config = Config::from_toml(&text, &Host::probe()).unwrap();
    assert_eq!(config.api.socket, socket);
    assert_eq!(config.ports[0].name, "wire0");
    let child = ixcpd(&["--socket", socket.to_str().unwrap(), "--foreground"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the socket", Duration::from_secs(5), || socket.exists());
    let resources = Client::connect(&socket).unwrap().resources().unwrap();
    let ports: Vec<&str> = resources.ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ports, ["wire0", "wire0-peer"]);
    assert_eq!(resources.cores.len(), Host::probe().cpus.0.len());
    signal(child.id(), libc::SIGTERM);
    assert!(finish(child, Duration::from_secs(5)).status.success());
    let out = ixcpd(&["--socket", socket.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("config OK: cores"),
        "{out:?}"
    );
}
