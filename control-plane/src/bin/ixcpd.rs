//! `ixcpd`: the IX control plane daemon. Reads and validates its config,
//! creates the API socket, takes back the books a previous ixcpd left
//! beside it, and serves until SIGTERM, SIGINT or SIGHUP, removing the
//! socket on the way out (its dataplanes keep running).

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use control_plane::config::{Config, SOCKET_ENV};
use control_plane::host::Host;
use control_plane::server::Server;
use control_plane::sys::{self, Forked};
use control_plane::units::Bytes;

const AFTER_HELP: &str = "\
Examples:
  ixcpd --config /etc/ix/ixcpd.toml
      validate the config, start in the background, log to ixcpd.log beside the socket
  ixcpd --foreground --socket /tmp/ix/ixcpd.sock
      the built-in config (every CPU, 256 MiB, one memif wire), sockets in /tmp/ix
  ixcpd --print-config > ixcpd.toml
      a config file to start from

Socket: --socket, else $IX_SOCKET, else the config's api.socket (/run/ix/ixcpd.sock).
Beside it: SOCKET.state, the books (rewritten on every change), and SOCKET.logs/,
launched programs' output. Stopping or killing ixcpd leaves its dataplanes running;
the next ixcpd on the same socket reads SOCKET.state, takes their resources back and
waits for them to reattach. It refuses to start on a state file it cannot read or
whose running dataplanes no longer fit the config (the error says what to do).
Exit status: 0 stopped by SIGTERM/SIGINT/SIGHUP, or started in the background;
1 runtime failure (such as another ixcpd on the socket); 2 usage or config error.
Log level: RUST_LOG=debug|info|warn (default info).";

/// `ixcpd`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "ixcpd",
    version,
    about = "The IX control plane: hands out cores, packet memory and NIC ports to dataplanes",
    after_help = AFTER_HELP
)]
struct Args {
    /// Config file (TOML); without it, the built-in config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// API socket (overrides $IX_SOCKET and the config's api.socket).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Stay in the foreground and log to stderr.
    #[arg(long)]
    foreground: bool,
    /// Log file when in the background [default: ixcpd.log beside the socket].
    #[arg(long, value_name = "FILE", conflicts_with = "foreground")]
    log_file: Option<PathBuf>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Validate the config and exit.
    #[arg(long, conflicts_with = "print_config")]
    check: bool,
}

/// How `ixcpd` failed, which decides the exit status.
enum Failure {
    /// Bad arguments or config: exit 2.
    Usage(anyhow::Error),
    /// Anything else: exit 1.
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(err)) => {
            eprintln!("ixcpd: {err:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("ixcpd: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// The config file (or the built-in config) with the socket override
/// applied: `--socket`, else `$IX_SOCKET`.
fn load_config(args: &Args) -> anyhow::Result<Config> {
    let host = Host::probe();
    let env_socket = std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let socket = match (&args.socket, env_socket) {
        (Some(path), _) => Some(("--socket", path.clone())),
        (None, Some(path)) => Some((SOCKET_ENV, path)),
        (None, None) => None,
    };
    let config = match &args.config {
        Some(file) => Config::load(file, &host).with_context(|| format!("config {file:?}"))?,
        None => {
            let dir = socket
                .as_ref()
                .and_then(|(_, path)| path.parent())
                .filter(|dir| dir.is_absolute())
                .unwrap_or(Path::new("/run/ix"));
            Config::builtin_in(dir, &host).context("built-in config")?
        }
    };
    Ok(match socket {
        Some((key, path)) => config.with_socket(&path, key)?,
        None => config,
    })
}

fn run(args: Args) -> Result<(), Failure> {
    // Block the stop signals first, while this is the only thread, so
    // that they arrive only through the fd the server polls.
    let signals = sys::signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .context("cannot set up signal handling")
        .map_err(Failure::Runtime)?;
    let config = load_config(&args).map_err(Failure::Usage)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if args.check {
        println!(
            "config OK: cores {:?}, {} of packet memory{}, ports {}, socket {:?}",
            config.cores,
            Bytes(config.memory.budget),
            if config.memory.huge {
                " in hugepages"
            } else {
                ""
            },
            config
                .ports
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            config.api.socket
        );
        return Ok(());
    }
    let socket = config.api.socket.clone();
    let log_file = args
        .log_file
        .clone()
        .unwrap_or_else(|| socket.parent().unwrap_or(Path::new("/")).join("ixcpd.log"));
    let mut server = Server::bind(config)
        .context("cannot start the API")
        .map_err(Failure::Runtime)?;
    if !args.foreground {
        daemonize(&log_file, &socket).map_err(Failure::Runtime)?;
    }
    log::info!(
        "ixcpd {} serving on {socket:?} as pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    server
        .run(signals.as_fd())
        .context("the API loop failed")
        .map_err(Failure::Runtime)?;
    match sys::read_signal(signals.as_fd()) {
        Ok(signal) => log::info!("stopped by signal {signal}"),
        Err(err) => log::warn!("stopped, but the signal could not be read: {err}"),
    }
    drop(server);
    Ok(())
}

/// Continues in a detached child with stdio on `/dev/null` and stderr
/// (the log) appended to `log_file`; the parent prints where the daemon
/// runs and exits 0 without running destructors, so the socket it bound
/// stays for the child.
fn daemonize(log_file: &Path, socket: &Path) -> anyhow::Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("cannot open log file {log_file:?}"))?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    // SAFETY: ixcpd has started no thread: argument parsing, logging set-up,
    // config validation and binding the socket all run on this one.
    #[allow(unsafe_code)]
    let forked = unsafe { sys::fork() }.context("cannot fork into the background")?;
    match forked {
        Forked::Parent(pid) => {
            println!("ixcpd running as pid {pid} on {socket:?} (log: {log_file:?})");
            std::process::exit(0);
        }
        Forked::Child => {
            sys::setsid().context("setsid")?;
            std::env::set_current_dir("/").context("chdir /")?;
            sys::redirect(null.as_fd(), 0).context("stdin to /dev/null")?;
            sys::redirect(null.as_fd(), 1).context("stdout to /dev/null")?;
            sys::redirect(log.as_fd(), 2).context("stderr to the log file")?;
            Ok(())
        }
    }
}
