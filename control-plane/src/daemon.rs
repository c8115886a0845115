//! What ixcpd knows and does, independent of sockets: the resource books,
//! each dataplane's buffer pools and registration, and a log per
//! dataplane. [`Daemon::handle`] turns one request into one reply; the
//! server feeds it requests and tells it when connections close.
//!
//! # Dataplane life
//!
//! `allocate` reserves cores, the port and memory, and creates one
//! buffer-pool memfd per core with its memory allocated up front, so a
//! budget that the machine cannot back fails now rather than at first
//! touch in the dataplane. A process then sends `register` with the name:
//! it receives the allocation, its port settings and the pool memfds, and
//! its connection becomes the dataplane's *lifeline*. When the lifeline
//! closes — the process exited, was killed, or crashed — everything
//! returns to the pool at once. `stop` releases an unregistered allocation
//! immediately; a registered one gets SIGTERM, SIGKILL after
//! [`STOP_GRACE`], and is released when its lifeline closes (or after
//! [`STOP_GIVE_UP`] if some other process inherited the lifeline).
//!
//! `launch` allocates the same way, then starts the program (see
//! [`crate::launch`]) and answers only when the program has registered:
//! with the time it took, or — when the program exits first or does not
//! register within [`LAUNCH_TIMEOUT`] — with an error quoting its last
//! lines of output, the allocation released. A launched program that
//! exits later releases its dataplane even if it never registered (its
//! exit is collected with `waitpid`, see [`Daemon::tick`]). Its stdout
//! and stderr go to the dataplane's log, served by `logs`.
//!
//! A dataplane belongs to the uid that allocated it: only that uid and
//! root may register, stop or resize it. Anyone authorised may read.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::config::{Config, HugePages, Policy};
use crate::launch::{self, LaunchedChild, Spec, Stream};
use crate::proto::{
    AllocateArgs, ApiError, DaemonInfo, DataplaneInfo, DataplaneState, ErrorCode, Isolation,
    LaunchArgs, LaunchReply, LogLine, LogsReply, PoolFd, Registration, Reply, Request, StatsReply,
    StatusReply, StopReply, VERSION,
};
use crate::resources::{AllocError, AllocRequest, Allocation, MemoryAsk, Resources};
use crate::sys::{self, PeerCred};
use crate::units::Bytes;

/// Time a stopping dataplane has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Time after SIGTERM when a dataplane whose lifeline is still open is
/// released anyway (its process is gone; something else holds the fd).
pub const STOP_GIVE_UP: Duration = Duration::from_secs(3);
/// Time a launched program has to register.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often exits are looked for once a launched program closed its
/// output (the usual sign that it is exiting).
pub const REAP_INTERVAL: Duration = Duration::from_millis(20);
/// Log lines kept per dataplane.
pub const LOG_LINES: usize = 128;
/// Longest log line kept, bytes.
pub const LOG_LINE_MAX: usize = 300;
/// Dataplane names whose logs are kept after they are gone.
pub const LOG_BOOKS: usize = 64;

/// Identifies one client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Who sent a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Its connection.
    pub conn: ConnId,
    /// Its credentials.
    pub cred: PeerCred,
}

/// Counters the server keeps, shown by `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Clients connected now.
    pub clients: u32,
    /// Requests answered.
    pub requests: u64,
    /// Frames refused as malformed.
    pub malformed: u64,
    /// Connections refused: unauthorised, or too many clients.
    pub refused: u64,
}

#[derive(Debug)]
struct Holder {
    conn: ConnId,
    pid: u32,
    stopping: Option<Stopping>,
}

#[derive(Debug)]
struct Stopping {
    since: Instant,
    killed: bool,
}

#[derive(Debug)]
struct Dataplane {
    pools: Vec<OwnedFd>,
    huge: bool,
    owner_uid: u32,
    since_unix_ms: u64,
    holder: Option<Holder>,
    /// The pid of the program `launch` started for it.
    launched: Option<u32>,
}

/// A `launch` request waiting for its program to register.
#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    started: Instant,
    deadline: Instant,
}

/// A program ixcpd started, until its exit is collected.
#[derive(Debug)]
struct Launch {
    name: String,
    child: LaunchedChild,
    waiter: Option<Waiter>,
}

#[derive(Debug, Default)]
struct LogBook {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

/// A reply and the file descriptors that travel with it.
#[derive(Debug)]
pub struct Answer {
    /// The result.
    pub outcome: Result<Reply, ApiError>,
    /// Descriptors to attach, in the order the reply lists them.
    pub fds: Vec<OwnedFd>,
}

impl From<Result<Reply, ApiError>> for Answer {
    fn from(outcome: Result<Reply, ApiError>) -> Answer {
        Answer {
            outcome,
            fds: Vec::new(),
        }
    }
}

/// The control plane's state.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    resources: Resources,
    dataplanes: BTreeMap<String, Dataplane>,
    logs: BTreeMap<String, LogBook>,
    log_order: VecDeque<String>,
    children: BTreeMap<u32, Launch>,
    finished: Vec<(ConnId, Answer)>,
    started: Instant,
    /// Counters the server updates.
    pub counters: Counters,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn alloc_error(err: AllocError) -> ApiError {
    let code = match &err {
        AllocError::NameInUse { .. } => ErrorCode::AlreadyExists,
        AllocError::NotFound { .. } => ErrorCode::NotFound,
        AllocError::Short(_) => ErrorCode::InsufficientResources,
        AllocError::BadName { .. }
        | AllocError::NoSuchPort { .. }
        | AllocError::ZeroCores
        | AllocError::BadBuffers { .. }
        | AllocError::MemoryTooSmall { .. } => ErrorCode::InvalidArgument,
    };
    ApiError::new(code, err.to_string())
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no dataplane named {name:?}"))
}

impl Daemon {
    /// A daemon giving out what `config` lists, nothing allocated.
    pub fn new(config: Config) -> Daemon {
        Daemon {
            resources: Resources::new(&config),
            config,
            dataplanes: BTreeMap::new(),
            logs: BTreeMap::new(),
            log_order: VecDeque::new(),
            children: BTreeMap::new(),
            finished: Vec::new(),
            started: Instant::now(),
            counters: Counters::default(),
        }
    }

    /// The config it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The resource books.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    fn log(&mut self, name: &str, text: String) {
        log::info!("{name}: {text}");
        if !self.logs.contains_key(name) {
            self.log_order.push_back(name.to_owned());
            while self.log_order.len() > LOG_BOOKS {
                // Forget the oldest book of a dataplane that is gone.
                let Some(i) = self
                    .log_order
                    .iter()
                    .position(|n| !self.dataplanes.contains_key(n))
                else {
                    break;
                };
                if let Some(old) = self.log_order.remove(i) {
                    self.logs.remove(&old);
                }
            }
        }
        let book = self.logs.entry(name.to_owned()).or_default();
        let mut text = text;
        if text.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        book.lines.push_back(LogLine {
            unix_ms: unix_ms(),
            text,
        });
        if book.lines.len() > LOG_LINES {
            book.lines.pop_front();
            book.dropped += 1;
        }
    }

    fn info(&self, allocation: &Allocation) -> DataplaneInfo {
        let dp = self.dataplanes.get(&allocation.name);
        let holder = dp.and_then(|d| d.holder.as_ref());
        DataplaneInfo {
            name: allocation.name.clone(),
            state: match holder {
                None => DataplaneState::Allocated,
                Some(h) if h.stopping.is_some() => DataplaneState::Stopping,
                Some(_) => DataplaneState::Running,
            },
            pid: holder.map(|h| h.pid),
            port: allocation.port.clone(),
            cpus: allocation.cpus.clone(),
            buffers_per_core: allocation.buffers_per_core,
            memory_bytes: allocation.memory_bytes(),
            since_unix_ms: dp.map_or(0, |d| d.since_unix_ms),
        }
    }

    /// Answers one request from `caller` at time `now`. `None` means the
    /// answer comes later, from [`Daemon::take_finished`] (a `launch`
    /// waiting for its program to register); the caller's connection
    /// should send nothing else until then.
    pub fn handle(&mut self, caller: &Caller, request: Request, now: Instant) -> Option<Answer> {
        let answer = match request {
            Request::Status => Ok(Reply::Status(self.status())).into(),
            Request::Resources => Ok(Reply::Resources(self.resources.view())).into(),
            Request::Allocate(args) => self.allocate(caller, args).map(Reply::Allocated).into(),
            Request::Launch(args) => match self.launch(caller, args, now) {
                Ok(()) => return None,
                Err(err) => Err(err).into(),
            },
            Request::Stop { name } => self.stop(caller, &name, now).map(Reply::Stopped).into(),
            Request::Stats { name } => self.stats(&name).map(Reply::Stats).into(),
            Request::Cores { name, n } => self.cores(caller, &name, n).map(Reply::Resized).into(),
            Request::Logs { name, lines } => self.logs(&name, lines).map(Reply::Logs).into(),
            Request::Register { name } => match self.register(caller, &name, now) {
                Ok((registration, fds)) => Answer {
                    outcome: Ok(Reply::Registered(registration)),
                    fds,
                },
                Err(err) => Err(err).into(),
            },
        };
        Some(answer)
    }

    /// Answers that became ready since the last call, each for the
    /// connection whose request [`Daemon::handle`] deferred.
    pub fn take_finished(&mut self) -> Vec<(ConnId, Answer)> {
        std::mem::take(&mut self.finished)
    }

    /// The output pipes of launched programs, to poll for readability.
    pub fn child_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.children.values().flat_map(|l| l.child.fds()).collect()
    }

    fn launch(&mut self, caller: &Caller, args: LaunchArgs, now: Instant) -> Result<(), ApiError> {
        if args.isolation == Some(Isolation::Kvm) {
            return Err(ApiError::new(
                ErrorCode::NotSupported,
                "not_supported: kvm isolation is not built yet (launch with --isolation process)",
            ));
        }
        if args.policy == Some(Policy::Load) {
            return Err(ApiError::new(
                ErrorCode::NotSupported,
                "the load policy is not built yet (launch without --policy, resize with `ixctl cores`)",
            ));
        }
        if !Path::new(&args.program).is_absolute() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "program {:?} is not an absolute path (ixctl resolves it against PATH)",
                    args.program
                ),
            ));
        }
        let cwd = args.cwd.clone().unwrap_or_else(|| "/".to_owned());
        if !Path::new(&cwd).is_absolute() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("cwd {cwd:?} is not an absolute path"),
            ));
        }
        let allocation = self.allocate(
            caller,
            AllocateArgs {
                name: args.name,
                cores: args.cores,
                port: args.port,
                buffers_per_core: args.buffers_per_core,
                memory: args.memory,
            },
        )?;
        let name = allocation.name;
        let identity =
            (caller.cred.uid != sys::euid()).then_some((caller.cred.uid, caller.cred.gid));
        let spawned = LaunchedChild::spawn(&Spec {
            name: &name,
            socket: &self.config.api.socket,
            program: &args.program,
            args: &args.args,
            cwd: Path::new(&cwd),
            identity,
        });
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                let message = err.to_string();
                self.release(&name, &format!("launch failed: {message}"));
                let code = match err {
                    launch::LaunchError::RelativeProgram { .. } => ErrorCode::InvalidArgument,
                    launch::LaunchError::Spawn { .. } => ErrorCode::LaunchFailed,
                };
                return Err(ApiError::new(code, message));
            }
        };
        let pid = child.pid();
        if let Some(dp) = self.dataplanes.get_mut(&name) {
            dp.launched = Some(pid);
        }
        self.log(
            &name,
            format!(
                "launched {} {} as pid {pid} (isolation process, in {cwd})",
                args.program,
                args.args.join(" ")
            ),
        );
        self.children.insert(
            pid,
            Launch {
                name,
                child,
                waiter: Some(Waiter {
                    conn: caller.conn,
                    started: now,
                    deadline: now + LAUNCH_TIMEOUT,
                }),
            },
        );
        Ok(())
    }

    /// Answers the `launch` waiting on `pid` with an error, and releases
    /// the dataplane if that program still holds it.
    fn fail_launch(&mut self, pid: u32, waiter: Waiter, name: &str, what: String) {
        let tail: Vec<String> = self
            .children
            .get(&pid)
            .map(|l| l.child.tail().map(str::to_owned).collect())
            .unwrap_or_default();
        let output = if tail.is_empty() {
            "no output".to_owned()
        } else {
            format!("last output: {}", tail.join(" | "))
        };
        let message = format!("{name}: pid {pid} {what}; {output}");
        if !self.release_launched(name, pid, &what) {
            self.log(name, format!("pid {pid} {what}"));
        }
        self.finished.push((
            waiter.conn,
            Err(ApiError::new(ErrorCode::LaunchFailed, message)).into(),
        ));
    }

    /// Releases `name` if the program `pid` started for it holds it (or
    /// nobody registered); a dataplane of the same name made later, or
    /// one registered by another process, is left alone.
    /// Returns whether it released.
    fn release_launched(&mut self, name: &str, pid: u32, why: &str) -> bool {
        let Some(dp) = self.dataplanes.get(name) else {
            return false;
        };
        let ours = dp.launched == Some(pid) && dp.holder.as_ref().is_none_or(|h| h.pid == pid);
        if ours {
            self.release(name, &format!("pid {pid} {why}"));
        }
        ours
    }

    /// Moves launched programs' output into their logs, fails launches
    /// past their deadline, and collects exits.
    fn service_children(&mut self, now: Instant) {
        let pids: Vec<u32> = self.children.keys().copied().collect();
        for pid in pids {
            let Some(launch) = self.children.get_mut(&pid) else {
                continue;
            };
            let name = launch.name.clone();
            let lines = launch.child.read_output();
            let status = launch.child.try_exit();
            let late = launch.waiter.as_ref().is_some_and(|w| now >= w.deadline);
            let lines = match status {
                // Whatever it wrote before exiting is in the pipe now.
                Some(_) => lines
                    .into_iter()
                    .chain(launch.child.read_output())
                    .collect(),
                None => lines,
            };
            for (stream, line) in lines {
                let tag = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                self.log(&name, format!("{tag}: {line}"));
            }
            let launch = self.children.get_mut(&pid).expect("present above");
            if let Some(status) = status {
                let what = format!("exited ({})", launch::describe(status));
                match launch.waiter.take() {
                    Some(waiter) => {
                        self.fail_launch(pid, waiter, &name, format!("{what} before registering"))
                    }
                    None => {
                        if !self.release_launched(&name, pid, &what) {
                            self.log(&name, format!("pid {pid} {what}"));
                        }
                    }
                }
                self.children.remove(&pid);
            } else if late {
                launch.child.kill();
                let waiter = launch.waiter.take().expect("late implies a waiter");
                let what = format!("did not register within {LAUNCH_TIMEOUT:?} (killed)");
                self.fail_launch(pid, waiter, &name, what);
            }
        }
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            daemon: DaemonInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: VERSION,
                pid: std::process::id(),
                uptime_ms: self.started.elapsed().as_millis() as u64,
                socket: self.config.api.socket.to_string_lossy().into_owned(),
                policy: self.config.policy,
                clients: self.counters.clients,
                requests: self.counters.requests,
                malformed: self.counters.malformed,
                refused: self.counters.refused,
            },
            dataplanes: self.resources.allocations().map(|a| self.info(a)).collect(),
        }
    }

    fn allocate(&mut self, caller: &Caller, args: AllocateArgs) -> Result<Allocation, ApiError> {
        let memory = match (args.buffers_per_core, args.memory) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "give buffers_per_core or memory, not both",
                ))
            }
            (Some(b), None) => MemoryAsk::BuffersPerCore(b),
            (None, Some(m)) => MemoryAsk::Total(m),
            (None, None) => MemoryAsk::Default,
        };
        let request = AllocRequest {
            name: args.name,
            cores: args.cores,
            port: args.port,
            memory,
        };
        let allocation = self.resources.allocate(&request).map_err(alloc_error)?;
        let (pools, huge) = match self.make_pools(&allocation, 0) {
            Ok(made) => made,
            Err(err) => {
                self.resources
                    .release(&allocation.name)
                    .expect("the allocation just made exists");
                return Err(err);
            }
        };
        self.dataplanes.insert(
            allocation.name.clone(),
            Dataplane {
                pools,
                huge,
                owner_uid: caller.cred.uid,
                since_unix_ms: unix_ms(),
                holder: None,
                launched: None,
            },
        );
        self.log(
            &allocation.name,
            format!(
                "allocated by uid {} (pid {}): cpus {:?} on port {}, {} pools of {} buffers ({}){}",
                caller.cred.uid,
                caller.cred.pid,
                allocation.cpus,
                allocation.port,
                allocation.cores(),
                allocation.buffers_per_core,
                Bytes(allocation.pool_bytes),
                if huge { " in hugepages" } else { "" }
            ),
        );
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
        Ok(allocation)
    }

    /// Creates the pool memfds of cores `from..` of `allocation`. With
    /// `hugepages = "auto"`, falls back to 4 KiB pages when hugepages ran
    /// out since start-up (the books, rounded to 2 MiB, still cover it).
    fn make_pools(
        &self,
        allocation: &Allocation,
        from: usize,
    ) -> Result<(Vec<OwnedFd>, bool), ApiError> {
        let mut huge = allocation.huge;
        let mut pools = Vec::new();
        for i in from..allocation.cores() {
            let name = format!("ix-{}-pool{i}", allocation.name);
            let made = match sys::memfd_pool(&name, allocation.pool_bytes, huge) {
                Err(err) if huge && self.config.memory.hugepages == HugePages::Auto => {
                    log::warn!("{name}: no hugepages left ({err}); using 4 KiB pages");
                    huge = false;
                    sys::memfd_pool(&name, allocation.pool_bytes, false)
                }
                other => other,
            };
            match made {
                Ok(fd) => pools.push(fd),
                Err(err) => {
                    return Err(ApiError::new(
                        ErrorCode::InsufficientResources,
                        format!(
                            "memory: cannot reserve pool {i} of {} for {}{}: {err}",
                            Bytes(allocation.pool_bytes),
                            allocation.name,
                            if huge { " in hugepages" } else { "" }
                        ),
                    ))
                }
            }
        }
        Ok((pools, huge))
    }

    fn may_manage(&self, caller: &Caller, name: &str, what: &str) -> Result<(), ApiError> {
        let dp = self.dataplanes.get(name).ok_or_else(|| not_found(name))?;
        if caller.cred.uid == 0 || caller.cred.uid == dp.owner_uid {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "uid {} may not {what} {name}: it belongs to uid {} (or ask root)",
                    caller.cred.uid, dp.owner_uid
                ),
            ))
        }
    }

    fn release(&mut self, name: &str, why: &str) {
        if let Ok(allocation) = self.resources.release(name) {
            self.dataplanes.remove(name);
            self.log(
                name,
                format!(
                    "{why}: released cpus {:?}, port {}, {}",
                    allocation.cpus,
                    allocation.port,
                    Bytes(allocation.memory_bytes())
                ),
            );
        }
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
    }

    fn stop(&mut self, caller: &Caller, name: &str, now: Instant) -> Result<StopReply, ApiError> {
        self.may_manage(caller, name, "stop")?;
        let dp = self
            .dataplanes
            .get_mut(name)
            .ok_or_else(|| not_found(name))?;
        let Some(holder) = dp.holder.as_mut() else {
            let launched = dp.launched;
            if let Some(pid) = launched {
                // Started but not registered yet: end the program too.
                if let Err(err) = sys::kill(pid, libc::SIGKILL) {
                    log::debug!("SIGKILL to pid {pid} failed: {err}");
                }
                let waiter = self.children.get_mut(&pid).and_then(|l| l.waiter.take());
                if let Some(waiter) = waiter {
                    let what = format!("was stopped by uid {} before registering", caller.cred.uid);
                    self.fail_launch(pid, waiter, name, what);
                }
            }
            self.release(name, &format!("stopped by uid {}", caller.cred.uid));
            return Ok(StopReply {
                name: name.to_owned(),
                released: true,
                pid: launched,
            });
        };
        let pid = holder.pid;
        if holder.stopping.is_none() {
            holder.stopping = Some(Stopping {
                since: now,
                killed: false,
            });
            let sent = sys::kill(pid, libc::SIGTERM);
            self.log(
                name,
                match sent {
                    Ok(()) => format!(
                        "stop asked by uid {}: sent SIGTERM to pid {pid}",
                        caller.cred.uid
                    ),
                    Err(err) => format!(
                        "stop asked by uid {}: SIGTERM to pid {pid} failed: {err}",
                        caller.cred.uid
                    ),
                },
            );
        }
        Ok(StopReply {
            name: name.to_owned(),
            released: false,
            pid: Some(pid),
        })
    }

    fn stats(&self, name: &str) -> Result<StatsReply, ApiError> {
        let allocation = self.resources.get(name).ok_or_else(|| not_found(name))?;
        Ok(StatsReply {
            dataplane: self.info(allocation),
            allocation: allocation.clone(),
        })
    }

    fn cores(&mut self, caller: &Caller, name: &str, n: u32) -> Result<Allocation, ApiError> {
        self.may_manage(caller, name, "resize")?;
        let dp = self.dataplanes.get(name).ok_or_else(|| not_found(name))?;
        if let Some(holder) = &dp.holder {
            return Err(ApiError::new(
                ErrorCode::NotSupported,
                format!(
                    "{name} is running (pid {}): resizing a running dataplane needs flow-group \
                     migration, which this ixcpd cannot do yet; stop it, resize, and start it again",
                    holder.pid
                ),
            ));
        }
        let before = self
            .resources
            .get(name)
            .ok_or_else(|| not_found(name))?
            .cores();
        let after = self.resources.resize(name, n).map_err(alloc_error)?;
        if after.cores() > before {
            match self.make_pools(&after, before) {
                Ok((mut pools, _)) => {
                    let dp = self.dataplanes.get_mut(name).expect("checked above");
                    dp.pools.append(&mut pools);
                }
                Err(err) => {
                    self.resources
                        .resize(name, before as u32)
                        .expect("shrinking back to what was held always fits");
                    return Err(err);
                }
            }
        } else {
            let dp = self.dataplanes.get_mut(name).expect("checked above");
            dp.pools.truncate(after.cores());
        }
        self.log(
            name,
            format!(
                "resized by uid {} from {before} to {} cores: cpus {:?}",
                caller.cred.uid,
                after.cores(),
                after.cpus
            ),
        );
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
        Ok(after)
    }

    fn logs(&self, name: &str, lines: Option<u32>) -> Result<LogsReply, ApiError> {
        let book = self.logs.get(name).ok_or_else(|| not_found(name))?;
        let keep = lines.map_or(book.lines.len(), |n| (n as usize).min(book.lines.len()));
        let skip = book.lines.len() - keep;
        Ok(LogsReply {
            name: name.to_owned(),
            lines: book.lines.iter().skip(skip).cloned().collect(),
            dropped: book.dropped + skip as u64,
        })
    }

    fn register(
        &mut self,
        caller: &Caller,
        name: &str,
        now: Instant,
    ) -> Result<(Registration, Vec<OwnedFd>), ApiError> {
        self.may_manage(caller, name, "register as")?;
        let allocation = self
            .resources
            .get(name)
            .ok_or_else(|| not_found(name))?
            .clone();
        let port = self
            .config
            .port(&allocation.port)
            .expect("allocations name configured ports")
            .clone();
        let dp = self
            .dataplanes
            .get_mut(name)
            .ok_or_else(|| not_found(name))?;
        if let Some(holder) = &dp.holder {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("{name} is already registered by pid {}", holder.pid),
            ));
        }
        let fds = dp
            .pools
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("cannot duplicate pool fds: {err}"),
                )
            })?;
        let pools = (0..allocation.cores())
            .map(|i| PoolFd {
                queue: i as u16,
                fd: i as u32,
                bytes: allocation.pool_bytes,
                buffers: allocation.buffers_per_core,
                huge: dp.huge,
            })
            .collect();
        dp.holder = Some(Holder {
            conn: caller.conn,
            pid: caller.cred.pid,
            stopping: None,
        });
        let launched = dp.launched;
        self.log(
            name,
            format!(
                "registered by pid {} (uid {})",
                caller.cred.pid, caller.cred.uid
            ),
        );
        let waiter = launched
            .and_then(|pid| self.children.get_mut(&pid))
            .and_then(|l| l.waiter.take());
        if let (Some(waiter), Some(pid)) = (waiter, launched) {
            let registered_ms = now.saturating_duration_since(waiter.started).as_millis() as u64;
            self.log(
                name,
                format!("launch complete: registered {registered_ms} ms after start"),
            );
            let reply = LaunchReply {
                dataplane: self.info(&allocation),
                pid,
                registered_ms,
            };
            self.finished
                .push((waiter.conn, Ok(Reply::Launched(reply)).into()));
        }
        Ok((
            Registration {
                allocation,
                port,
                pools,
            },
            fds,
        ))
    }

    /// A connection closed: a dataplane whose lifeline it was is gone, and
    /// its resources return to the pool.
    pub fn disconnected(&mut self, conn: ConnId) {
        let gone: Vec<(String, u32)> = self
            .dataplanes
            .iter()
            .filter_map(|(name, dp)| {
                dp.holder
                    .as_ref()
                    .filter(|h| h.conn == conn)
                    .map(|h| (name.clone(), h.pid))
            })
            .collect();
        for (name, pid) in gone {
            self.release(&name, &format!("pid {pid} exited (lifeline closed)"));
        }
    }

    /// Collects launched programs' output and exits, fails launches that
    /// did not register in time, and escalates stops that take too long:
    /// SIGKILL after [`STOP_GRACE`], release after [`STOP_GIVE_UP`].
    pub fn tick(&mut self, now: Instant) {
        self.service_children(now);
        let mut kill = Vec::new();
        let mut give_up = Vec::new();
        for (name, dp) in &mut self.dataplanes {
            let Some(holder) = dp.holder.as_mut() else {
                continue;
            };
            let Some(stopping) = holder.stopping.as_mut() else {
                continue;
            };
            let waited = now.saturating_duration_since(stopping.since);
            if waited >= STOP_GIVE_UP {
                give_up.push((name.clone(), holder.pid));
            } else if waited >= STOP_GRACE && !stopping.killed {
                stopping.killed = true;
                kill.push((name.clone(), holder.pid));
            }
        }
        for (name, pid) in kill {
            let text = match sys::kill(pid, libc::SIGKILL) {
                Ok(()) => {
                    format!("pid {pid} still running {STOP_GRACE:?} after SIGTERM: sent SIGKILL")
                }
                Err(err) => format!("SIGKILL to pid {pid} failed: {err}"),
            };
            self.log(&name, text);
        }
        for (name, pid) in give_up {
            self.release(
                &name,
                &format!("lifeline of pid {pid} still open {STOP_GIVE_UP:?} after SIGTERM; releasing anyway"),
            );
        }
    }

    /// When [`Daemon::tick`] next has something to do. Output of launched
    /// programs is not a deadline: poll [`Daemon::child_fds`] for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        let stops = self
            .dataplanes
            .values()
            .filter_map(|dp| dp.holder.as_ref()?.stopping.as_ref())
            .map(|s| {
                if s.killed {
                    s.since + STOP_GIVE_UP
                } else {
                    s.since + STOP_GRACE
                }
            });
        let launches = self
            .children
            .values()
            .filter_map(|l| l.waiter.as_ref().map(|w| w.deadline));
        let exiting = self
            .children
            .values()
            .any(|l| l.child.output_closed())
            .then(|| Instant::now() + REAP_INTERVAL);
        stops.chain(launches).chain(exiting).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::units::{CpuList, MIB};
    use std::fs::File;

    fn daemon(memory: &str) -> Daemon {
        let host = Host {
            cpus: CpuList(vec![0, 1]),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        };
        let text = format!(
            "memory = \"{memory}\"\n[[ports]]\nname = \"wire0\"\nkind = \"memif\"\n\
             socket = \"/tmp/ix-daemon-test.sock\"\nrole = \"master\"\nqueues = 2\nip = \"10.0.0.1/24\"\n"
        );
        Daemon::new(Config::from_toml(&text, &host).unwrap())
    }

    fn caller(conn: u64, uid: u32) -> Caller {
        Caller {
            conn: ConnId(conn),
            cred: PeerCred {
                pid: std::process::id(),
                uid,
                gid: uid,
            },
        }
    }

    fn alloc(name: &str, cores: u32) -> Request {
        Request::Allocate(AllocateArgs {
            name: name.into(),
            cores,
            port: "wire0".into(),
            buffers_per_core: Some(512),
            memory: None,
        })
    }

    fn ok(answer: Option<Answer>) -> Reply {
        answer
            .expect("answered at once")
            .outcome
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(answer: Option<Answer>) -> ApiError {
        answer
            .expect("answered at once")
            .outcome
            .expect_err("request should fail")
    }

    #[test]
    fn allocate_creates_one_sized_pool_per_core() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        let Reply::Allocated(a) = ok(d.handle(&caller(1, 0), alloc("echo", 2), now)) else {
            panic!()
        };
        let dp = &d.dataplanes["echo"];
        assert_eq!(dp.pools.len(), 2);
        for fd in &dp.pools {
            let len = File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .len();
            assert_eq!(len, a.pool_bytes);
        }
    }

    #[test]
    fn over_allocation_is_refused_with_what_is_short() {
        let mut d = daemon("64 MiB");
        let e = err(d.handle(&caller(1, 0), alloc("echo", 3), Instant::now()));
        assert_eq!(e.code, ErrorCode::InsufficientResources);
        assert_eq!(
            e.message,
            "not enough cores: asked 3, free 2 (of 2); port wire0: 3 queues asked, 2 free"
        );
        let both = Request::Allocate(AllocateArgs {
            name: "x".into(),
            cores: 1,
            port: "wire0".into(),
            buffers_per_core: Some(512),
            memory: Some(1 << 20),
        });
        assert_eq!(
            err(d.handle(&caller(1, 0), both, Instant::now())).code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn register_hands_out_pools_once_and_lifeline_close_releases() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        ok(d.handle(&caller(1, 0), alloc("echo", 2), now));
        let answer = d
            .handle(
                &caller(2, 0),
                Request::Register {
                    name: "echo".into(),
                },
                now,
            )
            .expect("answered at once");
        assert_eq!(answer.fds.len(), 2);
        let Reply::Registered(reg) = answer.outcome.unwrap() else {
            panic!()
        };
        assert_eq!(reg.pools.len(), 2);
        assert_eq!(reg.port.name, "wire0");
        let again = err(d.handle(
            &caller(3, 0),
            Request::Register {
                name: "echo".into(),
            },
            now,
        ));
        assert_eq!(again.code, ErrorCode::AlreadyExists);
        let Reply::Status(s) = ok(d.handle(&caller(1, 0), Request::Status, now)) else {
            panic!()
        };
        assert_eq!(s.dataplanes[0].state, DataplaneState::Running);
        d.disconnected(ConnId(1));
        assert_eq!(
            d.resources.free_cores().len(),
            0,
            "only the lifeline matters"
        );
        d.disconnected(ConnId(2));
        assert_eq!(d.resources.free_cores().len(), 2);
        assert!(d.dataplanes.is_empty());
        let Reply::Logs(logs) = ok(d.handle(
            &caller(1, 0),
            Request::Logs {
                name: "echo".into(),
                lines: None,
            },
            now,
        )) else {
            panic!()
        };
        let texts: Vec<&str> = logs.lines.iter().map(|l| l.text.as_str()).collect();
        assert!(texts[0].starts_with("allocated by uid 0"), "{texts:?}");
        assert!(texts[1].starts_with("registered by pid"), "{texts:?}");
        assert!(texts[2].contains("lifeline closed"), "{texts:?}");
    }

    #[test]
    fn other_uids_may_read_but_not_manage() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        ok(d.handle(&caller(1, 1000), alloc("echo", 1), now));
        for request in [
            Request::Stop {
                name: "echo".into(),
            },
            Request::Cores {
                name: "echo".into(),
                n: 2,
            },
            Request::Register {
                name: "echo".into(),
            },
        ] {
            let e = err(d.handle(&caller(2, 1001), request, now));
            assert_eq!(e.code, ErrorCode::PermissionDenied);
            assert!(e.message.contains("belongs to uid 1000"), "{}", e.message);
        }
        ok(d.handle(
            &caller(2, 1001),
            Request::Stats {
                name: "echo".into(),
            },
            now,
        ));
        ok(d.handle(
            &caller(3, 0),
            Request::Cores {
                name: "echo".into(),
                n: 2,
            },
            now,
        ));
        ok(d.handle(
            &caller(1, 1000),
            Request::Stop {
                name: "echo".into(),
            },
            now,
        ));
        assert_eq!(d.resources.free_cores().len(), 2);
    }

    #[test]
    fn resize_adds_and_drops_pools_and_refuses_running_dataplanes() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        ok(d.handle(&caller(1, 0), alloc("echo", 1), now));
        let Reply::Resized(a) = ok(d.handle(
            &caller(1, 0),
            Request::Cores {
                name: "echo".into(),
                n: 2,
            },
            now,
        )) else {
            panic!()
        };
        assert_eq!(a.cpus, vec![0, 1]);
        assert_eq!(d.dataplanes["echo"].pools.len(), 2);
        ok(d.handle(
            &caller(1, 0),
            Request::Cores {
                name: "echo".into(),
                n: 1,
            },
            now,
        ));
        assert_eq!(d.dataplanes["echo"].pools.len(), 1);
        ok(d.handle(
            &caller(2, 0),
            Request::Register {
                name: "echo".into(),
            },
            now,
        ));
        let e = err(d.handle(
            &caller(1, 0),
            Request::Cores {
                name: "echo".into(),
                n: 2,
            },
            now,
        ));
        assert_eq!(e.code, ErrorCode::NotSupported);
    }

    #[test]
    fn stop_of_unknown_is_answered() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        assert_eq!(
            err(d.handle(&caller(1, 0), Request::Stop { name: "x".into() }, now)).code,
            ErrorCode::NotFound
        );
        assert_eq!(
            err(d.handle(
                &caller(1, 0),
                Request::Logs {
                    name: "x".into(),
                    lines: None
                },
                now
            ))
            .code,
            ErrorCode::NotFound
        );
    }

    fn launch(name: &str, program: &str, args: &[&str]) -> Request {
        Request::Launch(LaunchArgs {
            name: name.into(),
            cores: 1,
            port: "wire0".into(),
            buffers_per_core: Some(512),
            memory: None,
            isolation: None,
            policy: None,
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
        })
    }

    /// Ticks until a deferred answer is ready (real time: children run).
    fn finished(d: &mut Daemon) -> (ConnId, Answer) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            d.tick(Instant::now());
            if let Some(done) = d.take_finished().pop() {
                return done;
            }
            assert!(Instant::now() < deadline, "no answer");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn launch_refuses_kvm_relative_programs_and_what_does_not_fit() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        let Request::Launch(mut kvm) = launch("x", "/bin/true", &[]) else {
            unreachable!()
        };
        kvm.isolation = Some(Isolation::Kvm);
        let e = err(d.handle(&caller(1, 0), Request::Launch(kvm), now));
        assert_eq!(e.code, ErrorCode::NotSupported);
        assert!(e.message.contains("kvm isolation is not built yet"), "{e}");
        let e = err(d.handle(&caller(1, 0), launch("x", "true", &[]), now));
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        let e = err(d.handle(&caller(1, 0), launch("x", "/no/such/program", &[]), now));
        assert_eq!(e.code, ErrorCode::LaunchFailed);
        assert!(e.message.contains("/no/such/program"), "{e}");
        let Request::Launch(mut big) = launch("x", "/bin/true", &[]) else {
            unreachable!()
        };
        big.cores = 3;
        let e = err(d.handle(&caller(1, 0), Request::Launch(big), now));
        assert_eq!(e.code, ErrorCode::InsufficientResources);
        assert_eq!(d.resources.free_cores().len(), 2);
        assert!(d.children.is_empty());
    }

    #[test]
    fn a_program_that_exits_before_registering_fails_its_launch_with_its_output() {
        let mut d = daemon("64 MiB");
        let script = "echo starting $IX_DATAPLANE; echo no port >&2; exit 3";
        assert!(d
            .handle(
                &caller(7, 0),
                launch("echo", "/bin/sh", &["-c", script]),
                Instant::now()
            )
            .is_none());
        assert_eq!(d.resources.free_cores().len(), 1);
        let (conn, answer) = finished(&mut d);
        assert_eq!(conn, ConnId(7));
        let e = answer.outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::LaunchFailed);
        assert!(
            e.message
                .contains("exited (exit code 3) before registering")
                && e.message.contains("last output: starting echo | no port"),
            "{e}"
        );
        assert_eq!(d.resources.free_cores().len(), 2);
        assert!(d.children.is_empty() && d.dataplanes.is_empty());
        let Reply::Logs(logs) = ok(d.handle(
            &caller(1, 0),
            Request::Logs {
                name: "echo".into(),
                lines: None,
            },
            Instant::now(),
        )) else {
            panic!()
        };
        let texts: Vec<&str> = logs.lines.iter().map(|l| l.text.as_str()).collect();
        assert!(texts.contains(&"stdout: starting echo"), "{texts:?}");
        assert!(texts.contains(&"stderr: no port"), "{texts:?}");
    }

    #[test]
    fn a_program_that_does_not_register_in_time_is_killed_and_released() {
        let mut d = daemon("64 MiB");
        let t0 = Instant::now();
        assert!(d
            .handle(&caller(7, 0), launch("echo", "/bin/sleep", &["30"]), t0)
            .is_none());
        assert_eq!(d.next_deadline(), Some(t0 + LAUNCH_TIMEOUT));
        d.tick(t0 + LAUNCH_TIMEOUT);
        let (_, answer) = d.take_finished().pop().expect("failed at the deadline");
        let e = answer.outcome.unwrap_err();
        assert!(
            e.message.contains("did not register within 5s (killed)"),
            "{e}"
        );
        assert_eq!(d.resources.free_cores().len(), 2);
        // The killed child is reaped on a later tick.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.children.is_empty() {
            assert!(Instant::now() < deadline, "child not reaped");
            std::thread::sleep(Duration::from_millis(5));
            d.tick(Instant::now());
        }
    }

    #[test]
    fn registering_completes_the_launch_and_a_launched_exit_releases() {
        let mut d = daemon("64 MiB");
        let t0 = Instant::now();
        assert!(d
            .handle(&caller(7, 0), launch("echo", "/bin/sleep", &["30"]), t0)
            .is_none());
        let pid = *d.children.keys().next().unwrap();
        // The program would register itself; here the test registers on
        // its behalf, 30 ms later.
        let reg = Caller {
            conn: ConnId(8),
            cred: PeerCred {
                pid,
                uid: 0,
                gid: 0,
            },
        };
        let registered = d
            .handle(
                &reg,
                Request::Register {
                    name: "echo".into(),
                },
                t0 + Duration::from_millis(30),
            )
            .expect("answered at once");
        assert_eq!(registered.fds.len(), 1);
        let (conn, answer) = d.take_finished().pop().expect("launch answered");
        assert_eq!(conn, ConnId(7));
        let Ok(Reply::Launched(l)) = answer.outcome else {
            panic!("{:?}", answer.outcome)
        };
        assert_eq!((l.pid, l.registered_ms), (pid, 30));
        assert_eq!(l.dataplane.state, DataplaneState::Running);
        assert_eq!(l.dataplane.pid, Some(pid));
        // The program dies; its exit releases the dataplane even before
        // the lifeline (held here by nobody) would.
        d.children.get_mut(&pid).unwrap().child.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.children.is_empty() {
            assert!(Instant::now() < deadline, "child not reaped");
            std::thread::sleep(Duration::from_millis(5));
            d.tick(Instant::now());
        }
        assert_eq!(d.resources.free_cores().len(), 2);
        d.disconnected(ConnId(8));
        assert_eq!(d.resources.free_cores().len(), 2);
    }

    #[test]
    fn stopping_escalates_to_release_when_the_lifeline_never_closes() {
        let mut d = daemon("64 MiB");
        let t0 = Instant::now();
        ok(d.handle(&caller(1, 0), alloc("echo", 1), t0));
        // Registered with a pid that cannot exist, so the signals fail
        // harmlessly and only the timeouts act.
        let ghost = Caller {
            conn: ConnId(2),
            cred: PeerCred {
                pid: i32::MAX as u32,
                uid: 0,
                gid: 0,
            },
        };
        ok(d.handle(
            &ghost,
            Request::Register {
                name: "echo".into(),
            },
            t0,
        ));
        let Reply::Stopped(s) = ok(d.handle(
            &caller(1, 0),
            Request::Stop {
                name: "echo".into(),
            },
            t0,
        )) else {
            panic!()
        };
        assert!(!s.released);
        assert_eq!(d.next_deadline(), Some(t0 + STOP_GRACE));
        d.tick(t0 + STOP_GRACE);
        assert_eq!(d.next_deadline(), Some(t0 + STOP_GIVE_UP));
        assert_eq!(d.resources.free_cores().len(), 1);
        d.tick(t0 + STOP_GIVE_UP);
        assert_eq!(d.resources.free_cores().len(), 2);
        assert_eq!(d.next_deadline(), None);
        let Reply::Logs(logs) = ok(d.handle(
            &caller(1, 0),
            Request::Logs {
                name: "echo".into(),
                lines: Some(2),
            },
            t0,
        )) else {
            panic!()
        };
        assert_eq!(logs.lines.len(), 2);
        assert!(
            logs.lines[1].text.contains("releasing anyway"),
            "{:?}",
            logs.lines
        );
        assert_eq!(logs.dropped, 3);
    }

    #[test]
    fn hugepage_pools_are_made_of_hugepages() {
        let host = Host::probe();
        if host.hugepages_free < 4 {
            eprintln!(
                "SKIPPED: hugepage_pools_are_made_of_hugepages needs 4 free hugepages, {} free \
                 (echo 64 > /proc/sys/vm/nr_hugepages)",
                host.hugepages_free
            );
            return;
        }
        let text = "memory = \"8 MiB\"\nhugepages = \"on\"\n[[ports]]\nname = \"wire0\"\n\
                    kind = \"memif\"\nsocket = \"/tmp/ix-huge-test.sock\"\nrole = \"master\"\n\
                    queues = 8\nip = \"10.0.0.1/24\"\n";
        let mut d = Daemon::new(Config::from_toml(text, &host).unwrap());
        let now = Instant::now();
        let Reply::Allocated(a) = ok(d.handle(&caller(1, 0), alloc("huge", 1), now)) else {
            panic!()
        };
        assert!(a.huge);
        assert_eq!(a.pool_bytes, 2 * MIB);
        // Pools beyond the budget are refused by the books before any
        // hugepage is touched.
        let e = err(d.handle(
            &caller(1, 0),
            Request::Cores {
                name: "huge".into(),
                n: 5,
            },
            now,
        ));
        assert_eq!(e.code, ErrorCode::InsufficientResources);
        assert!(
            e.message
                .contains("memory: asked 8 MiB more, free 6 MiB of 8 MiB"),
            "{}",
            e.message
        );
        let answer = d
            .handle(
                &caller(2, 0),
                Request::Register {
                    name: "huge".into(),
                },
                now,
            )
            .expect("answered at once");
        let Ok(Reply::Registered(reg)) = &answer.outcome else {
            panic!("{:?}", answer.outcome)
        };
        assert!(reg.pools[0].huge);
        let file = File::from(answer.fds.into_iter().next().unwrap());
        assert_eq!(file.metadata().unwrap().len(), 2 * MIB);
    }

    #[test]
    fn log_books_are_bounded() {
        let mut d = daemon("64 MiB");
        for i in 0..LOG_LINES + 10 {
            d.log("a", format!("line {i} {}", "x".repeat(LOG_LINE_MAX)));
        }
        let book = &d.logs["a"];
        assert_eq!(book.lines.len(), LOG_LINES);
        assert_eq!(book.dropped, 10);
        assert!(book.lines.iter().all(|l| l.text.len() <= LOG_LINE_MAX));
        for i in 0..LOG_BOOKS + 5 {
            d.log(&format!("n{i}"), "x".into());
        }
        assert_eq!(d.logs.len(), LOG_BOOKS);
        let reply = LogsReply {
            name: "a".into(),
            lines: vec![
                LogLine {
                    unix_ms: u64::MAX,
                    text: "é".repeat(LOG_LINE_MAX / 2)
                };
                LOG_LINES
            ],
            dropped: 0,
        };
        let bytes = serde_json::to_vec(&reply).unwrap();
        assert!(
            bytes.len() < crate::proto::MAX_FRAME,
            "a full log fits one frame: {}",
            bytes.len()
        );
    }
}
