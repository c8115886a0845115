//! Test networks: a fresh network namespace holding a Linux stack, joined
//! by a veth pair to the root namespace, where a dataplane under test
//! opens the other end (with AF_PACKET) and speaks with its own MAC and
//! IP address.
//!
//! ```text
//!   root namespace                 namespace ixt-<prefix>-<pid>-<n>
//!   ┌────────────────────┐         ┌────────────────────────────┐
//!   │ dataplane          │  veth   │ Linux stack                │
//!   │ host_if (no IP) ◀──┼────────▶┼── ns_if  10.77.<k>.1/24    │
//!   │ speaks as 10.77.<k>.2        │ lo up, IPv6 off, offloads  │
//!   └────────────────────┘         │ off                        │
//!                                  └────────────────────────────┘
//! ```
//!
//! Everything is done with the `ip` command (iproute2) and, when present,
//! `ethtool`; both need root. [`TestNet::veth_pair`] prints
//! `SKIPPED: needs root for network namespaces` and returns `None` when
//! not root, so tests can skip visibly. Dropping a [`TestNet`] deletes the
//! veth pair and the namespace, also when a test panics.
//!
//! # Why offloads are turned off
//!
//! - **TX checksum on `ns_if`.** A veth advertises checksum offload, so
//!   the Linux stack hands it TCP/UDP packets with only the pseudo-header
//!   sum in the checksum field (`CHECKSUM_PARTIAL`), expecting hardware to
//!   finish it. No hardware ever does: the frame reaches our packet socket
//!   with a wrong checksum, flagged `TP_STATUS_CSUMNOTREADY`. `tx off`
//!   makes Linux compute real checksums.
//! - **TSO/GSO on `ns_if`, GRO on both ends.** Otherwise frames larger
//!   than the MTU (up to 64 KiB) pass through the veth and reach the
//!   packet socket unsegmented, or get merged before it sees them.
//! - **RX checksum on `ns_if`.** So that the namespace's stack verifies
//!   the checksums of the frames the dataplane sends, rather than trusting
//!   the device: a checksum bug in the dataplane shows up as a drop.
//!
//! Without `ethtool` a warning is printed and the offloads stay on.
//!
//! IPv6 is disabled on both ends before they come up, so no router
//! solicitations or duplicate-address probes appear in test traffic.

#![deny(unsafe_code)]
// The one exception is `setns(2)` in `TestNet::spawn_in_ns`.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Distinguishes the networks of one process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long to wait for the root-side interface to report carrier.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors from setting up a test network.
#[derive(Debug, thiserror::Error)]
pub enum TestNetError {
    /// Namespaces need root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`).
    #[error("needs root for network namespaces")]
    NotRoot,
    /// A required program is not installed.
    #[error("needs `{program}` ({package}) — install it")]
    MissingTool {
        /// The program.
        program: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command's output could not be understood.
    #[error("`{command}` printed {output:?}, expected {expected}")]
    Parse {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The link did not come up.
    #[error("interface {ifname} did not come up within {timeout:?}")]
    LinkTimeout {
        /// The interface.
        ifname: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A namespace with a Linux stack, reachable through a veth pair (see the
/// crate docs). Deleted on drop.
#[derive(Debug)]
pub struct TestNet {
    ns: String,
    host_if: String,
    ns_if: String,
    subnet: u8,
    ns_mac: [u8; 6],
}

/// A MAC address printed as `aa:bb:cc:dd:ee:ff`.
struct Mac<'a>(&'a [u8; 6]);

impl fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd`, returning its output if it exits successfully.
fn run(mut cmd: Command) -> Result<Output, TestNetError> {
    let command = command_line(&cmd);
    let out = cmd.output().map_err(|source| TestNetError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(TestNetError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Whether `program` can be started (`program --version`-style probe).
fn have(program: &str, probe: &str) -> bool {
    Command::new(program)
        .arg(probe)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the effective user is root, from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Keeps only `[a-z0-9]` of a prefix, at most 12 characters.
fn sanitize(prefix: &str) -> String {
    let s: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    if s.is_empty() {
        "net".to_owned()
    } else {
        s
    }
}

impl TestNet {
    /// Creates a test network named after `name_prefix`, or prints
    /// `SKIPPED: <reason>` to stderr and returns `None` when not root or
    /// `ip` is missing.
    ///
    /// Panics if set-up fails for another reason (the test cannot run).
    pub fn veth_pair(name_prefix: &str) -> Option<TestNet> {
        match TestNet::try_veth_pair(name_prefix) {
            Ok(net) => Some(net),
            Err(e @ (TestNetError::NotRoot | TestNetError::MissingTool { .. })) => {
                eprintln!("SKIPPED: {e}");
                None
            }
            Err(e) => panic!("setting up the test network failed: {e}"),
        }
    }

    /// Creates a test network named after `name_prefix`.
    pub fn try_veth_pair(name_prefix: &str) -> Result<TestNet, TestNetError> {
        if !is_root() {
            return Err(TestNetError::NotRoot);
        }
        if !have("ip", "-V") {
            return Err(TestNetError::MissingTool {
                program: "ip",
                package: "iproute2",
            });
        }
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut net = TestNet {
            ns: format!("ixt-{}-{pid}-{n}", sanitize(name_prefix)),
            // Interface names have at most 15 bytes: "ixh" + 6 + "x" + 4.
            host_if: format!("ixh{:x}x{:x}", pid & 0xff_ffff, n & 0xffff),
            ns_if: format!("ixn{:x}x{:x}", pid & 0xff_ffff, n & 0xffff),
            subnet: (n % 250) as u8 + 1,
            ns_mac: [0; 6],
        };
        // A namespace or link left by an earlier process with our pid
        // (killed before it could clean up) is stale: remove it.
        if run(ip(&["netns", "add", &net.ns])).is_err() {
            let _ = run(ip(&["netns", "del", &net.ns]));
            run(ip(&["netns", "add", &net.ns]))?;
        }
        // From here on, dropping `net` cleans up whatever was created.
        let _ = run(ip(&["link", "del", &net.host_if]));
        run(ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.ns_if,
            "netns",
            &net.ns,
        ]))?;
        net.configure()?;
        Ok(net)
    }

    fn configure(&mut self) -> Result<(), TestNetError> {
        let host_v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.host_if);
        if Path::new(&host_v6).exists() {
            std::fs::write(&host_v6, "1").map_err(|source| TestNetError::Spawn {
                command: format!("echo 1 > {host_v6}"),
                source,
            })?;
        }
        if Path::new("/proc/sys/net/ipv6").exists() {
            let mut cmd = self.run_in_ns("sh");
            cmd.args([
                "-c",
                "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done",
            ]);
            run(cmd)?;
        }
        if have("ethtool", "--version") {
            let mut cmd = self.run_in_ns("ethtool");
            cmd.args(["-K", &self.ns_if]);
            cmd.args([
                "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ]);
            run(cmd)?;
            let mut cmd = Command::new("ethtool");
            cmd.args(["-K", &self.host_if]);
            cmd.args([
                "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ]);
            run(cmd)?;
        } else {
            eprintln!(
                "warning: ethtool not found: {} keeps checksum offload on, so TCP/UDP \
                 frames from the namespace carry partial checksums",
                self.ns_if
            );
        }
        let addr = format!("{}/24", self.ns_ip());
        run(ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &addr,
            "dev",
            &self.ns_if,
        ]))?;
        run(ip(&["-n", &self.ns, "link", "set", "lo", "up"]))?;
        run(ip(&["-n", &self.ns, "link", "set", &self.ns_if, "up"]))?;
        run(ip(&["link", "set", &self.host_if, "up"]))?;

        let mut cat = self.run_in_ns("cat");
        cat.arg(format!("/sys/class/net/{}/address", self.ns_if));
        let command = command_line(&cat);
        let out = String::from_utf8_lossy(&run(cat)?.stdout).into_owned();
        self.ns_mac = parse_mac(&out).ok_or(TestNetError::Parse {
            command,
            output: out,
            expected: "a MAC address",
        })?;

        let operstate = format!("/sys/class/net/{}/operstate", self.host_if);
        let start = Instant::now();
        while std::fs::read_to_string(&operstate).map_or(true, |s| s.trim() != "up") {
            if start.elapsed() > LINK_UP_TIMEOUT {
                return Err(TestNetError::LinkTimeout {
                    ifname: self.host_if.clone(),
                    timeout: LINK_UP_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The root-side veth end, for the dataplane to open.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The namespace-side veth end.
    pub fn ns_if(&self) -> &str {
        &self.ns_if
    }

    /// The namespace stack's address, `10.77.<k>.1`.
    pub fn ns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The address the dataplane should use, `10.77.<k>.2` (on no
    /// interface: the dataplane answers for it itself).
    pub fn dp_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2)
    }

    /// The prefix length of the test subnet.
    pub fn prefix_len(&self) -> u8 {
        24
    }

    /// The MAC address of the namespace-side veth end.
    pub fn ns_mac(&self) -> [u8; 6] {
        self.ns_mac
    }

    /// A command running `program` inside the namespace
    /// (`ip netns exec <ns> <program>`); add arguments and run it.
    pub fn run_in_ns(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]);
        cmd
    }

    /// Runs `f` on a new thread that has joined the namespace (`setns(2)`
    /// on that thread only), e.g. to open a packet socket on
    /// [`ns_if`](Self::ns_if) and generate traffic from the namespace's
    /// side. The thread returns the error if it cannot join.
    pub fn spawn_in_ns<F, T>(&self, f: F) -> std::thread::JoinHandle<io::Result<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            join_netns(&ns)?;
            Ok(f())
        })
    }

    /// Adds a permanent neighbour entry in the namespace, so its stack
    /// sends to `addr` without asking by ARP first.
    pub fn add_neighbor(&self, addr: Ipv4Addr, mac: [u8; 6]) -> Result<(), TestNetError> {
        run(ip(&[
            "-n",
            &self.ns,
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &Mac(&mac).to_string(),
            "dev",
            &self.ns_if,
            "nud",
            "permanent",
        ]))?;
        Ok(())
    }

    /// A counter of the namespace-side interface, e.g. `rx_packets`
    /// (`/sys/class/net/<ns_if>/statistics/<name>` inside the namespace).
    pub fn ns_counter(&self, name: &str) -> Result<u64, TestNetError> {
        let mut cat = self.run_in_ns("cat");
        cat.arg(format!("/sys/class/net/{}/statistics/{name}", self.ns_if));
        let command = command_line(&cat);
        let out = String::from_utf8_lossy(&run(cat)?.stdout).into_owned();
        out.trim().parse().map_err(|_| TestNetError::Parse {
            command,
            output: out,
            expected: "a decimal counter",
        })
    }
}

/// Moves the calling thread into the network namespace `ns` refers to.
#[allow(unsafe_code)]
fn join_netns(ns: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns takes a valid open descriptor (borrowed from `ns` for
    // the call) and a flag; it changes only this thread's network
    // namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting one veth end deletes its peer; do it before the
        // namespace, whose teardown (and the veth's with it) is otherwise
        // asynchronous.
        if Path::new("/sys/class/net").join(&self.host_if).exists() {
            if let Err(e) = run(ip(&["link", "del", &self.host_if])) {
                eprintln!("warning: test network cleanup: {e}");
            }
        }
        if let Err(e) = run(ip(&["netns", "del", &self.ns])) {
            eprintln!("warning: test network cleanup: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> String {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    }

    #[test]
    fn names_fit_interface_limits() {
        let pid = 4_194_304u32;
        let n = u32::MAX;
        let name = format!("ixh{:x}x{:x}", pid & 0xff_ffff, n & 0xffff);
        assert!(name.len() <= 15, "{name}");
        assert_eq!(sanitize("Echo Test!"), "echotest");
        assert_eq!(sanitize("--"), "net");
    }

    #[test]
    fn mac_parses_and_prints() {
        let mac = parse_mac("0a:1b:2c:3d:4e:5f\n").unwrap();
        assert_eq!(mac, [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(Mac(&mac).to_string(), "0a:1b:2c:3d:4e:5f");
        assert_eq!(parse_mac("0a:1b:2c:3d:4e"), None);
        assert_eq!(parse_mac("0a:1b:2c:3d:4e:5f:60"), None);
        assert_eq!(parse_mac("zz:1b:2c:3d:4e:5f"), None);
    }

    #[test]
    fn network_is_created_configured_and_removed() {
        let Some(net) = TestNet::veth_pair("selftest") else {
            return;
        };
        let ns = net.namespace().to_owned();
        let host_if = net.host_if().to_owned();
        assert!(namespaces().contains(&ns));
        assert!(Path::new("/sys/class/net").join(&host_if).exists());
        assert_ne!(net.ns_mac(), [0; 6]);

        let out = run({
            let mut c = net.run_in_ns("ip");
            c.args(["-4", "-o", "addr", "show", "dev", net.ns_if()]);
            c
        })
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("{}/24", net.ns_ip())), "{text}");
        assert!(net.ns_counter("rx_packets").is_ok());
        net.add_neighbor(net.dp_ip(), [2, 0, 0, 0, 0, 1]).unwrap();
        let dev = net
            .spawn_in_ns(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
            .join()
            .unwrap()
            .unwrap();
        assert!(
            dev.contains(net.ns_if()),
            "the thread sees the namespace: {dev}"
        );
        assert!(!dev.contains(net.host_if()), "{dev}");

        drop(net);
        assert!(!namespaces().contains(&ns), "namespace removed");
        assert!(
            !Path::new("/sys/class/net").join(&host_if).exists(),
            "veth removed"
        );
    }

    #[test]
    fn cleanup_happens_on_panic() {
        if !is_root() {
            eprintln!("SKIPPED: needs root for network namespaces");
            return;
        }
        let caught = std::panic::catch_unwind(|| {
            let net = TestNet::veth_pair("panics").expect("root was checked");
            panic!("{}", net.namespace());
        });
        let ns = *caught.unwrap_err().downcast::<String>().unwrap();
        assert!(!namespaces().contains(&ns));
    }
}
