//! `ixctl`'s command line: clap parses the words, [`parse`] validates them in
//! one place into a plain [`Command`] that the rest of the program runs.
//!
//! Exit status (documented in `--help`): 0 success, 1 runtime failure
//! (including a benchmarked system that could not run), 2 usage error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use control_plane::client::default_socket_path;
use control_plane::config::{is_valid_name, Policy, NAME_RULE};
use control_plane::proto::{Isolation, LaunchArgs};

use crate::bench::kvs::{KvsParams, KvsSystem};
use crate::bench::{EchoParams, ECHO_BATCH};
use crate::load::WorkloadKind;

/// Exit status of a run that failed at run time.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a command line that could not be parsed or validated.
pub const EXIT_USAGE: u8 = 2;

/// Longest measured duration accepted, seconds.
pub const MAX_DURATION_SECS: f64 = 3600.0;
/// Longest warm-up accepted, seconds.
pub const MAX_WARMUP_SECS: f64 = 600.0;
/// Most connections accepted (each needs two file descriptors).
pub const MAX_CONNECTIONS: usize = 10_000;
/// Largest message accepted, bytes.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Largest RX batch bound accepted (libix's limit).
pub const MAX_BATCH: usize = 1024;

/// Most cores a dataplane may ask for.
pub const MAX_CORES: u32 = 128;

const AFTER_HELP: &str = "\
Examples:
  ixctl up
      start ixcpd with the built-in config (memif wire wire0 <-> wire0-peer)
  ixctl launch --name echo --cores 1 --port wire0 -- ix-echo server
      run the echo server as a dataplane on one core of port wire0
  ixctl status
      every dataplane, its state, pid and cpus (--json for a script)
  ixctl stats echo --watch
      echo's cores, redrawn every second with packet rates, until Ctrl-C
  ixctl bench echo
      ix and linux side by side: 16 connections, 64-byte messages, 5 s
  ixctl bench echo --system linux --connections 1 --duration 10 --json
      the Linux baseline alone, one connection, as JSON
  ixctl bench echo --nic dpdk
      adds the ix_dpdk row (our stack over a DPDK net_memif pair) beside ix
      (ixctl and ix-echo built with --features ix-tools/dpdk)
  ixctl bench kvs --quick
      the KVS benchmark: ix, linux and memcached under ETC load (< 2 min)

Socket: --socket, else $IX_SOCKET, else /run/ix/ixcpd.sock.
Exit status: 0 success, 1 runtime failure (ixcpd refused or is not running,
or a benchmarked system could not run; the report still shows the others),
2 usage error.
Log level: RUST_LOG=debug|info|warn (default warn).";

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "ixctl",
    version,
    about = "Operate the IX dataplane and benchmark it against the Linux kernel",
    after_help = AFTER_HELP
)]
struct Args {
    /// ixcpd's API socket [default: $IX_SOCKET, else /run/ix/ixcpd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    /// Start ixcpd in the background (built-in config unless --config)
    /// when none answers on the socket.
    Up {
        /// ixcpd config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The daemon and every dataplane.
    Status(JsonFlag),
    /// Every core, the packet memory and every port, and who holds them.
    Resources(JsonFlag),
    /// Start a program linked with libix as a dataplane and wait until it
    /// registered.
    #[command(
        after_help = "Example:\n  ixctl launch --name echo --cores 1 --port wire0 -- ix-echo server"
    )]
    Launch(LaunchCli),
    /// Stop a dataplane (SIGTERM, then SIGKILL) and free its resources.
    Stop(NameArg),
    /// A dataplane's cores as they published: packets, drops,
    /// connections, batch size, queue depth, idle time, loop time.
    #[command(
        after_help = "Examples:\n  ixctl stats echo\n  ixctl stats echo --watch --interval 0.5\n  \
                            ixctl stats echo --json"
    )]
    Stats(StatsCli),
    /// What ixcpd recorded about a dataplane, its output included.
    Logs {
        #[command(flatten)]
        name: NameArg,
        /// Only the latest N lines.
        #[arg(long, value_name = "N")]
        lines: Option<u32>,
    },
    /// Change a dataplane's core count.
    Cores {
        #[command(flatten)]
        name: NameArg,
        /// The new core count.
        #[arg(value_name = "N")]
        n: u32,
    },
    /// Benchmark our dataplane against the Linux kernel on the same workload.
    #[command(subcommand, after_help = AFTER_HELP)]
    Bench(BenchCommand),
}

#[derive(Debug, clap::Args)]
struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct NameArg {
    /// The dataplane.
    #[arg(value_name = "NAME")]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct StatsCli {
    #[command(flatten)]
    name: NameArg,
    /// Redraw every interval, with packet rates, until Ctrl-C (with
    /// --json: one JSON object per line).
    #[arg(long)]
    watch: bool,
    /// Seconds between redraws with --watch (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
    interval: f64,
    /// Stop after N redraws with --watch.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct LaunchCli {
    /// The dataplane's name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Cores (elastic threads) it gets.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cores: u32,
    /// The port it gets.
    #[arg(long, value_name = "PORT")]
    port: String,
    /// Buffers per core [default: ixcpd's, 4096].
    #[arg(long, value_name = "N")]
    buffers: Option<u32>,
    /// Isolation of the dataplane from the application.
    #[arg(long, value_enum, default_value_t = IsolationArg::Process)]
    isolation: IsolationArg,
    /// Core policy: `load` adds and removes cores with the load
    /// [default: ixcpd's].
    #[arg(long, value_enum)]
    policy: Option<PolicyArg>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "APP ARGS")]
    program: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IsolationArg {
    Kvm,
    Process,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    None,
    Load,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Closed-loop TCP echo over loopback: RPC/s and round-trip percentiles
    /// per system, and the ratio to Linux.
    #[command(after_help = AFTER_HELP)]
    Echo(EchoArgs),
    /// Open-loop memcached workload (ETC or USR) against ixkvs on our
    /// dataplane, the same KVS on Linux sockets, and memcached: the highest
    /// rate within the p99 SLO per system, p50/p99 at a common rate, a CSV
    /// and an SVG plot.
    #[command(after_help = KVS_AFTER_HELP)]
    Kvs(KvsArgs),
}

const KVS_AFTER_HELP: &str = "\
Examples:
  ixctl bench kvs --quick
      ETC on ix, linux and memcached, quick sweep (< 2 minutes)
  ixctl bench kvs --workload usr --system ix,linux --json --out results/

Writes DIR/kvs-WORKLOAD.csv (every point) and DIR/kvs-WORKLOAD.svg (p99
latency against throughput). Exit status 1 when a system could not run.";

#[derive(Debug, clap::Args)]
struct KvsArgs {
    /// Workload: Facebook ETC (75% GET, 1 B–1 KiB values) or USR (99% GET,
    /// 2-byte values).
    #[arg(long, value_enum, default_value_t = WorkloadArg::Etc)]
    workload: WorkloadArg,
    /// Short points and a coarse search: the whole run in under 2 minutes.
    #[arg(long)]
    quick: bool,
    /// Connections of the load generator.
    #[arg(long, value_name = "N", default_value_t = 64)]
    connections: usize,
    /// The p99 latency objective, microseconds.
    #[arg(long, value_name = "US", default_value_t = 500)]
    slo_us: usize,
    /// Directory for the CSV and the plot.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    out: PathBuf,
    /// Print a JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Systems to run, in report order; repeat or separate with commas
    /// [default: ix,linux,memcached].
    #[arg(
        long = "system",
        value_name = "SYSTEM",
        value_enum,
        value_delimiter = ','
    )]
    systems: Vec<KvsSystemArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    Etc,
    Usr,
}

/// A system of `bench kvs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KvsSystemArg {
    /// ixkvs on our dataplane over memif.
    Ix,
    /// The same KVS on Linux sockets over loopback.
    Linux,
    /// Debian's memcached over loopback.
    Memcached,
}

#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Measured time, seconds (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    duration: f64,
    /// Time run before measuring starts, seconds (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, value_name = "N", default_value_t = 16)]
    connections: usize,
    /// Bytes per request (and per echo).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    message_size: usize,
    /// Bound of the adaptive RX batch of our client and server (IX's B;
    /// see the README for why the echo benchmark uses 8).
    #[arg(long, value_name = "B", default_value_t = ECHO_BATCH)]
    batch: usize,
    /// Print a JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Systems to run, in report order; repeat or separate with commas
    /// [default: ix,linux]. Built with `--features dpdk`, `ix_dpdk` adds our
    /// stack over a DPDK net_memif pair (`ix-echo` built alike).
    #[arg(
        long = "system",
        value_name = "SYSTEM",
        value_enum,
        value_delimiter = ','
    )]
    systems: Vec<System>,
    /// NIC backends of our stack's rows: `memif`, the native memif only
    /// (the `ix` row); `dpdk` adds the `ix_dpdk` row, the same over a DPDK
    /// net_memif pair, right after `ix` (needs ixctl and ix-echo built
    /// with `--features ix-tools/dpdk`).
    #[arg(long, value_name = "NIC", value_enum, default_value_t = NicArg::Memif)]
    nic: NicArg,
}

/// `bench echo --nic`: which NIC backends our stack's rows use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NicArg {
    /// The native memif (the `ix` row).
    Memif,
    /// The native memif and DPDK (the `ix` and `ix_dpdk` rows).
    Dpdk,
}

/// A system a benchmark can run on; its name is the report row and JSON key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// Our dataplane (libix echo apps over memif).
    Ix,
    /// The Linux kernel's TCP over loopback.
    Linux,
    /// Our dataplane over a DPDK `net_memif` pair (built with `dpdk`).
    #[cfg(feature = "dpdk")]
    #[value(name = "ix_dpdk")]
    IxDpdk,
}

impl System {
    /// The row name and JSON key.
    pub fn name(self) -> &'static str {
        match self {
            System::Ix => "ix",
            System::Linux => "linux",
            #[cfg(feature = "dpdk")]
            System::IxDpdk => "ix_dpdk",
        }
    }
}

/// A validated command, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `ixctl bench echo`.
    BenchEcho(BenchEcho),
    /// `ixctl bench kvs`.
    BenchKvs(BenchKvs),
    /// A request to ixcpd (or `up`).
    Ctl(Ctl),
}

/// A command that talks to ixcpd.
#[derive(Clone, Debug, PartialEq)]
pub struct Ctl {
    /// The API socket.
    pub socket: PathBuf,
    /// JSON output instead of text.
    pub json: bool,
    /// What to do.
    pub op: CtlOp,
}

/// What a [`Ctl`] command does.
#[derive(Clone, Debug, PartialEq)]
pub enum CtlOp {
    /// Start ixcpd unless one answers; `--socket` passed on when given.
    Up {
        /// Config file.
        config: Option<PathBuf>,
        /// Whether the socket was chosen (flag or environment) rather
        /// than the default.
        socket_given: bool,
    },
    /// `status`.
    Status,
    /// `resources`.
    Resources,
    /// `launch`, with the program resolved to an absolute path.
    Launch(LaunchArgs),
    /// `stop NAME`.
    Stop(String),
    /// `stats NAME [--watch]`.
    Stats {
        /// The dataplane.
        name: String,
        /// Redraw every so often (`--watch`), or print once (`None`).
        watch: Option<Watch>,
    },
    /// `logs NAME [--lines N]`.
    Logs(String, Option<u32>),
    /// `cores NAME N`.
    Cores(String, u32),
}

/// How `ixctl stats --watch` repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Time between two reads.
    pub interval: Duration,
    /// Stop after this many reads (`None`: until interrupted).
    pub count: Option<u64>,
}

/// Shortest `--interval` accepted, seconds.
pub const MIN_INTERVAL_SECS: f64 = 0.01;

/// What `ixctl bench echo` runs and how it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchEcho {
    /// The benchmark's parameters, the same for every system.
    pub params: EchoParams,
    /// Systems to run, in report order, without duplicates.
    pub systems: Vec<System>,
    /// JSON output instead of the table.
    pub json: bool,
}

/// A validated `bench kvs`.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchKvs {
    /// The benchmark's parameters.
    pub params: KvsParams,
    /// Systems to run, in report order, without duplicates.
    pub systems: Vec<KvsSystem>,
    /// JSON output instead of the table.
    pub json: bool,
}

/// Why the command line was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// clap could not parse the words, or help/version was asked for (see
    /// [`UsageError::is_help`]).
    #[error("{}", first_line(.0))]
    Parse(#[from] clap::Error),
    /// A duration is not a number of seconds in the accepted range.
    #[error("--{flag} must be between {min} and {max} seconds, got {value}")]
    Seconds {
        /// The option, without dashes.
        flag: &'static str,
        /// What was given.
        value: f64,
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
    },
    /// A dataplane name breaks the naming rule.
    #[error("dataplane name {0:?} is not valid: {NAME_RULE}")]
    BadName(String),
    /// The program to launch was not found.
    #[error("{program}: not found{}", if *.in_path { " in PATH" } else { "" })]
    NoProgram {
        /// What was given.
        program: String,
        /// Whether PATH was searched.
        in_path: bool,
    },
    /// The working directory cannot be read.
    #[error("cannot read the current directory: {0}")]
    Cwd(String),
    /// `--nic dpdk` asked of an ixctl built without DPDK.
    #[error("--nic dpdk: this ixctl was built without DPDK — rebuild with `cargo build --release --features ix-tools/dpdk`")]
    NoDpdk,
    /// A count is outside the accepted range.
    #[error("--{flag} must be between {min} and {max}, got {value}")]
    Count {
        /// The option, without dashes.
        flag: &'static str,
        /// What was given.
        value: usize,
        /// Smallest accepted.
        min: usize,
        /// Largest accepted.
        max: usize,
    },
}

impl UsageError {
    /// True when the user asked for help or the version: print
    /// [`UsageError::full_text`] to stdout and exit 0.
    pub fn is_help(&self) -> bool {
        matches!(self, UsageError::Parse(err) if matches!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        ))
    }

    /// True when clap shows help because a subcommand is missing: print
    /// [`UsageError::full_text`] to stderr and exit with [`EXIT_USAGE`].
    pub fn is_missing_subcommand(&self) -> bool {
        matches!(self, UsageError::Parse(err) if err.kind()
            == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
    }

    /// The complete text clap would print (help, version or error with usage).
    pub fn full_text(&self) -> String {
        match self {
            UsageError::Parse(err) => err.render().to_string(),
            other => other.to_string(),
        }
    }
}

/// The first line of a clap error without its `error: ` prefix, plus a
/// pointer to `--help`: usage errors are printed on one line.
fn first_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    // Indented lines continue the message (the missing arguments).
    for more in lines.take_while(|l| l.starts_with(' ')) {
        line.push(' ');
        line.push_str(more.trim());
    }
    format!("{line} (try 'ixctl --help')")
}

/// Parses and validates `ixctl`'s arguments (the first item is the program
/// name).
pub fn parse<I, T>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    let socket_given = args.socket.is_some()
        || std::env::var_os(control_plane::config::SOCKET_ENV).is_some_and(|v| !v.is_empty());
    let socket = args.socket.unwrap_or_else(default_socket_path);
    let ctl = |json, op| Ok(Command::Ctl(Ctl { socket, json, op }));
    match args.command {
        TopCommand::Bench(BenchCommand::Echo(echo)) => Ok(Command::BenchEcho(validate_echo(echo)?)),
        TopCommand::Bench(BenchCommand::Kvs(kvs)) => Ok(Command::BenchKvs(validate_kvs(kvs)?)),
        TopCommand::Up { config } => ctl(
            false,
            CtlOp::Up {
                config,
                socket_given,
            },
        ),
        TopCommand::Status(j) => ctl(j.json, CtlOp::Status),
        TopCommand::Resources(j) => ctl(j.json, CtlOp::Resources),
        TopCommand::Launch(l) => {
            let json = l.json;
            ctl(json, CtlOp::Launch(validate_launch(l)?))
        }
        TopCommand::Stop(n) => ctl(n.json, CtlOp::Stop(valid_name(n.name)?)),
        TopCommand::Stats(s) => {
            let name = valid_name(s.name.name)?;
            let watch = if s.watch {
                Some(Watch {
                    interval: seconds(
                        "interval",
                        s.interval,
                        MIN_INTERVAL_SECS,
                        MAX_DURATION_SECS,
                    )?,
                    count: s.count,
                })
            } else {
                None
            };
            ctl(s.name.json, CtlOp::Stats { name, watch })
        }
        TopCommand::Logs { name, lines } => {
            ctl(name.json, CtlOp::Logs(valid_name(name.name)?, lines))
        }
        TopCommand::Cores { name, n } => {
            let n = count("cores", n as usize, 1, MAX_CORES as usize)? as u32;
            ctl(name.json, CtlOp::Cores(valid_name(name.name)?, n))
        }
    }
}

fn valid_name(name: String) -> Result<String, UsageError> {
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(UsageError::BadName(name))
    }
}

/// The one place `launch` options are checked: the name, the counts, and
/// the program resolved as a shell would (a path with `/` against the
/// current directory, else the first executable of that name in `PATH`).
fn validate_launch(l: LaunchCli) -> Result<LaunchArgs, UsageError> {
    let name = valid_name(l.name)?;
    let cores = count("cores", l.cores as usize, 1, MAX_CORES as usize)? as u32;
    let cwd = std::env::current_dir().map_err(|e| UsageError::Cwd(e.to_string()))?;
    let mut words = l.program.into_iter();
    let program = words.next().unwrap_or_default();
    let resolved = resolve_program(&program, &cwd).ok_or_else(|| UsageError::NoProgram {
        in_path: !program.contains('/'),
        program: program.clone(),
    })?;
    Ok(LaunchArgs {
        name,
        cores,
        port: l.port,
        buffers_per_core: l.buffers,
        memory: None,
        isolation: Some(match l.isolation {
            IsolationArg::Kvm => Isolation::Kvm,
            IsolationArg::Process => Isolation::Process,
        }),
        policy: l.policy.map(|p| match p {
            PolicyArg::None => Policy::None,
            PolicyArg::Load => Policy::Load,
        }),
        program: resolved.to_string_lossy().into_owned(),
        args: words.collect(),
        cwd: Some(cwd.to_string_lossy().into_owned()),
    })
}

/// The executable `program` names: a path (relative to `cwd`) when it
/// contains a `/`, else the first match in `PATH`.
pub(crate) fn resolve_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        // Joined and with `.` components dropped: `./x` is `cwd/x`.
        let path: PathBuf = cwd.join(program).components().collect();
        return executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| executable(p))
}

/// The one place `bench echo` options are checked and turned into values.
fn validate_echo(args: EchoArgs) -> Result<BenchEcho, UsageError> {
    let duration = seconds("duration", args.duration, 0.001, MAX_DURATION_SECS)?;
    let warmup = seconds("warmup", args.warmup, 0.0, MAX_WARMUP_SECS)?;
    let connections = count("connections", args.connections, 1, MAX_CONNECTIONS)?;
    let message_size = count("message-size", args.message_size, 1, MAX_MESSAGE_SIZE)?;
    let batch = count("batch", args.batch, 1, MAX_BATCH)?;
    let mut systems: Vec<System> = Vec::new();
    for system in args.systems {
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    if systems.is_empty() {
        systems = vec![System::Ix, System::Linux];
    }
    if args.nic == NicArg::Dpdk {
        with_dpdk_row(&mut systems)?;
    }
    Ok(BenchEcho {
        params: EchoParams {
            duration,
            warmup,
            connections,
            message_size,
            batch,
            ..EchoParams::default()
        },
        systems,
        json: args.json,
    })
}

/// `--nic dpdk`: the `ix_dpdk` row right after `ix` (at the end when `ix`
/// is not asked for), unless it is there already.
#[cfg(feature = "dpdk")]
fn with_dpdk_row(systems: &mut Vec<System>) -> Result<(), UsageError> {
    if !systems.contains(&System::IxDpdk) {
        let at = systems
            .iter()
            .position(|&s| s == System::Ix)
            .map_or(systems.len(), |i| i + 1);
        systems.insert(at, System::IxDpdk);
    }
    Ok(())
}

/// `--nic dpdk` without the `dpdk` feature: there is no `ix_dpdk` row.
#[cfg(not(feature = "dpdk"))]
fn with_dpdk_row(_systems: &mut Vec<System>) -> Result<(), UsageError> {
    Err(UsageError::NoDpdk)
}

/// The one place `bench kvs` options are checked and turned into values.
fn validate_kvs(args: KvsArgs) -> Result<BenchKvs, UsageError> {
    let connections = count("connections", args.connections, 1, MAX_CONNECTIONS)?;
    let slo_us = count("slo-us", args.slo_us, 1, 10_000_000)?;
    let slo = Duration::from_micros(slo_us as u64);
    let mut systems: Vec<KvsSystem> = Vec::new();
    for system in args.systems {
        let system = match system {
            KvsSystemArg::Ix => KvsSystem::Ix,
            KvsSystemArg::Linux => KvsSystem::Linux,
            KvsSystemArg::Memcached => KvsSystem::Memcached,
        };
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    if systems.is_empty() {
        systems = vec![KvsSystem::Ix, KvsSystem::Linux, KvsSystem::Memcached];
    }
    Ok(BenchKvs {
        params: KvsParams {
            workload: match args.workload {
                WorkloadArg::Etc => WorkloadKind::Etc,
                WorkloadArg::Usr => WorkloadKind::Usr,
            },
            quick: args.quick,
            connections,
            slo,
            out_dir: args.out,
            ..KvsParams::default()
        },
        systems,
        json: args.json,
    })
}

fn seconds(flag: &'static str, value: f64, min: f64, max: f64) -> Result<Duration, UsageError> {
    // NaN fails both comparisons' negation: `!(NaN >= min)` is true.
    if !(value >= min && value <= max) {
        return Err(UsageError::Seconds {
            flag,
            value,
            min,
            max,
        });
    }
    Ok(Duration::from_secs_f64(value))
}

fn count(flag: &'static str, value: usize, min: usize, max: usize) -> Result<usize, UsageError> {
    if !(min..=max).contains(&value) {
        return Err(UsageError::Count {
            flag,
            value,
            min,
            max,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(args: &[&str]) -> Result<BenchEcho, UsageError> {
        let argv = ["ixctl", "bench", "echo"].iter().chain(args);
        parse(argv.copied()).map(|c| match c {
            Command::BenchEcho(echo) => echo,
            other => panic!("{other:?}"),
        })
    }

    fn kvs(args: &[&str]) -> Result<BenchKvs, UsageError> {
        let argv = ["ixctl", "bench", "kvs"].iter().chain(args);
        parse(argv.copied()).map(|c| match c {
            Command::BenchKvs(kvs) => kvs,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn bench_kvs_defaults_run_etc_on_all_three_systems() {
        let k = kvs(&[]).unwrap();
        assert_eq!(k.params.workload, WorkloadKind::Etc);
        assert_eq!(k.params.slo, Duration::from_micros(500));
        assert_eq!(k.params.connections, 64);
        assert!(!k.params.quick && !k.json);
        assert_eq!(
            k.systems,
            [KvsSystem::Ix, KvsSystem::Linux, KvsSystem::Memcached]
        );
    }

    #[test]
    fn bench_kvs_options_are_taken_and_checked() {
        let k = kvs(&[
            "--workload",
            "usr",
            "--quick",
            "--json",
            "--out",
            "r",
            "--slo-us",
            "200",
            "--system",
            "memcached,ix,memcached",
        ])
        .unwrap();
        assert_eq!(k.params.workload, WorkloadKind::Usr);
        assert!(k.params.quick && k.json);
        assert_eq!(k.params.out_dir, PathBuf::from("r"));
        assert_eq!(k.params.slo, Duration::from_micros(200));
        assert_eq!(k.systems, [KvsSystem::Memcached, KvsSystem::Ix]);
        assert_eq!(
            kvs(&["--slo-us", "0"]).unwrap_err().to_string(),
            "--slo-us must be between 1 and 10000000, got 0"
        );
        assert!(kvs(&["--workload", "tao"])
            .unwrap_err()
            .to_string()
            .contains("invalid value 'tao'"));
    }

    fn ctl(args: &[&str]) -> Result<Ctl, UsageError> {
        parse(["ixctl"].iter().chain(args).copied()).map(|c| match c {
            Command::Ctl(ctl) => ctl,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn launch_resolves_the_program_and_keeps_its_arguments() {
        let c = ctl(&[
            "--socket",
            "/tmp/x.sock",
            "launch",
            "--name",
            "echo",
            "--port",
            "wire0",
            "--",
            "sh",
            "-c",
            "--name",
        ])
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        let CtlOp::Launch(l) = c.op else { panic!() };
        assert_eq!(
            (l.name.as_str(), l.cores, l.port.as_str()),
            ("echo", 1, "wire0")
        );
        assert!(
            l.program.ends_with("/sh") && l.program.starts_with('/'),
            "{}",
            l.program
        );
        assert_eq!(l.args, ["-c", "--name"]);
        assert_eq!(l.isolation, Some(Isolation::Process));
        assert_eq!(l.policy, None, "the daemon's default");
        assert!(l.cwd.is_some());
        let c = ctl(&[
            "launch", "--name", "kvs", "--port", "wire0", "--policy", "load", "--", "sh",
        ])
        .unwrap();
        let CtlOp::Launch(l) = c.op else { panic!() };
        assert_eq!(l.policy, Some(Policy::Load));
    }

    #[test]
    fn launch_errors_name_the_problem() {
        let err = |args: &[&str]| ctl(args).unwrap_err().to_string();
        assert_eq!(
            err(&[
                "launch",
                "--name",
                "e",
                "--port",
                "p",
                "--",
                "no-such-program-ix"
            ]),
            "no-such-program-ix: not found in PATH"
        );
        assert!(err(&["launch", "--name", "a b", "--port", "p", "--", "sh"])
            .starts_with("dataplane name \"a b\" is not valid"));
        assert_eq!(
            err(&["launch", "--name", "e", "--cores", "0", "--port", "p", "--", "sh"]),
            "--cores must be between 1 and 128, got 0"
        );
        assert!(err(&["launch", "--name", "e", "--port", "p"]).contains("APP ARGS"));
        assert!(err(&["cores", "e", "0"]).contains("--cores must be between 1"));
    }

    #[test]
    fn ctl_commands_parse_with_json() {
        assert_eq!(ctl(&["status", "--json"]).unwrap().op, CtlOp::Status);
        assert!(ctl(&["resources", "--json"]).unwrap().json);
        assert_eq!(
            ctl(&["logs", "echo", "--lines", "5"]).unwrap().op,
            CtlOp::Logs("echo".into(), Some(5))
        );
        assert_eq!(
            ctl(&["cores", "echo", "2"]).unwrap().op,
            CtlOp::Cores("echo".into(), 2)
        );
        assert_eq!(
            ctl(&["stop", "echo"]).unwrap().op,
            CtlOp::Stop("echo".into())
        );
    }

    #[test]
    fn stats_watches_at_the_interval_asked_or_once() {
        assert_eq!(
            ctl(&["stats", "echo"]).unwrap().op,
            CtlOp::Stats {
                name: "echo".into(),
                watch: None
            }
        );
        let c = ctl(&["stats", "echo", "--watch", "--json"]).unwrap();
        assert!(c.json);
        assert_eq!(
            c.op,
            CtlOp::Stats {
                name: "echo".into(),
                watch: Some(Watch {
                    interval: Duration::from_secs(1),
                    count: None
                })
            }
        );
        let c = ctl(&[
            "stats",
            "echo",
            "--watch",
            "--interval",
            "0.25",
            "--count",
            "3",
        ])
        .unwrap();
        let CtlOp::Stats { watch, .. } = c.op else {
            panic!()
        };
        assert_eq!(
            watch,
            Some(Watch {
                interval: Duration::from_millis(250),
                count: Some(3)
            })
        );
        let err = |args: &[&str]| ctl(args).unwrap_err().to_string();
        assert_eq!(
            err(&["stats", "echo", "--watch", "--interval", "0"]),
            "--interval must be between 0.01 and 3600 seconds, got 0"
        );
        assert!(err(&["stats", "echo", "--interval", "2"]).contains("--watch"));
        assert!(err(&["stats", "echo", "--count", "2"]).contains("--watch"));
        assert!(err(&["stats", "a b"]).starts_with("dataplane name \"a b\" is not valid"));
    }

    fn message(args: &[&str]) -> String {
        echo(args).unwrap_err().to_string()
    }

    #[test]
    fn bench_echo_defaults_match_the_documented_ones() {
        let e = echo(&[]).unwrap();
        assert_eq!(e.params.duration, Duration::from_secs(5));
        assert_eq!(e.params.warmup, Duration::from_secs(1));
        assert_eq!(e.params.connections, 16);
        assert_eq!(e.params.message_size, 64);
        assert_eq!(e.params.batch, ECHO_BATCH);
        assert_eq!((e.params.server_core, e.params.client_core), (0, 1));
        assert_eq!(e.systems, [System::Ix, System::Linux]);
        assert!(!e.json);
    }

    #[test]
    fn bench_echo_takes_every_option() {
        let e = echo(&[
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--connections",
            "1",
            "--message-size",
            "1024",
            "--json",
            "--system",
            "linux",
        ])
        .unwrap();
        assert_eq!(e.params.duration, Duration::from_millis(500));
        assert_eq!(e.params.warmup, Duration::ZERO);
        assert_eq!((e.params.connections, e.params.message_size), (1, 1024));
        assert_eq!(e.systems, [System::Linux]);
        assert!(e.json);
    }

    #[test]
    fn nic_memif_is_the_default_and_adds_no_row() {
        let e = echo(&["--nic", "memif"]).unwrap();
        assert_eq!(e.systems, [System::Ix, System::Linux]);
        assert_eq!(e, echo(&[]).unwrap());
        let text = message(&["--nic", "tap"]);
        assert!(
            text.contains("invalid value 'tap'") && text.contains("--nic <NIC>"),
            "{text}"
        );
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn nic_dpdk_puts_the_dpdk_row_right_after_ix() {
        let rows = |args: &[&str]| echo(args).unwrap().systems;
        assert_eq!(
            rows(&["--nic", "dpdk"]),
            [System::Ix, System::IxDpdk, System::Linux]
        );
        assert_eq!(
            rows(&["--system", "linux,ix", "--nic", "dpdk"]),
            [System::Linux, System::Ix, System::IxDpdk]
        );
        assert_eq!(
            rows(&["--system", "linux", "--nic", "dpdk"]),
            [System::Linux, System::IxDpdk]
        );
        assert_eq!(
            rows(&["--system", "ix_dpdk,ix", "--nic", "dpdk"]),
            [System::IxDpdk, System::Ix]
        );
        // The row can still be chosen on its own.
        assert_eq!(rows(&["--system", "ix_dpdk"]), [System::IxDpdk]);
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn nic_dpdk_without_the_feature_says_how_to_build() {
        let err = echo(&["--nic", "dpdk"]).unwrap_err();
        assert!(!err.is_help());
        let text = err.to_string();
        assert!(text.contains("--features ix-tools/dpdk"), "{text}");
        assert!(!text.contains('\n'), "{text:?}");
    }

    #[test]
    fn systems_keep_order_and_drop_duplicates() {
        let e = echo(&["--system", "linux,ix", "--system", "linux"]).unwrap();
        assert_eq!(e.systems, [System::Linux, System::Ix]);
    }

    #[test]
    fn out_of_range_values_name_the_option_and_the_range() {
        assert_eq!(
            message(&["--duration", "0"]),
            "--duration must be between 0.001 and 3600 seconds, got 0"
        );
        assert_eq!(
            message(&["--warmup=-1"]),
            "--warmup must be between 0 and 600 seconds, got -1"
        );
        assert_eq!(
            message(&["--batch", "0"]),
            "--batch must be between 1 and 1024, got 0"
        );
        assert_eq!(
            message(&["--connections", "0"]),
            "--connections must be between 1 and 10000, got 0"
        );
        assert_eq!(
            message(&["--message-size", "0"]),
            "--message-size must be between 1 and 16777216, got 0"
        );
        assert!(message(&["--duration", "NaN"]).starts_with("--duration must be between"));
        assert!(message(&["--duration", "inf"]).starts_with("--duration must be between"));
    }

    #[test]
    fn unparsable_values_give_one_line_naming_the_option() {
        for (args, needle) in [
            (&["--connections", "many"][..], "--connections <N>"),
            (&["--duration", "5s"][..], "--duration <SECS>"),
            (&["--system", "bsd"][..], "--system <SYSTEM>"),
            (&["--frobnicate"][..], "--frobnicate"),
        ] {
            let err = echo(args).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
            assert!(text.ends_with("(try 'ixctl --help')"), "{text}");
            assert!(
                !text.contains('\n') && !text.starts_with("error:"),
                "{text:?}"
            );
            assert!(!err.is_help());
        }
    }

    #[test]
    fn help_is_not_an_error_and_shows_an_example() {
        for argv in [
            &["ixctl", "--help"][..],
            &["ixctl", "bench", "echo", "--help"][..],
        ] {
            let err = parse(argv.iter().copied()).unwrap_err();
            assert!(err.is_help());
            assert!(
                err.full_text().contains("ixctl bench echo --system linux"),
                "{argv:?}"
            );
        }
        let err = parse(["ixctl", "--version"]).unwrap_err();
        assert!(err.is_help());
    }

    #[test]
    fn missing_subcommand_is_a_usage_error_with_help() {
        let err = parse(["ixctl"]).unwrap_err();
        assert!(err.is_missing_subcommand() && !err.is_help());
        assert!(err.full_text().contains("bench"));
    }
}
