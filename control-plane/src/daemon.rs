//! What ixcpd knows and does, independent of sockets: the resource books,
//! each dataplane's buffer pools, stats page and registration, a log per
//! dataplane, and the state file that lets a restarted ixcpd know its
//! dataplanes again. [`Daemon::handle`] turns one request into one reply;
//! the server feeds it requests and tells it when connections close.
//!
//! # Dataplane life
//!
//! `allocate` reserves cores, the port and memory, and creates one
//! buffer-pool memfd per core with its memory allocated up front, so a
//! budget that the machine cannot back fails now rather than at first
//! touch in the dataplane, and the dataplane's stats page (see
//! `dataplane::stats`). A process then sends `register` with the name: it
//! receives the allocation, its port settings, the pool memfds and the
//! stats page, and its connection becomes the dataplane's *lifeline*.
//! When the lifeline closes — the process exited, was killed, or crashed —
//! everything returns to the pool at once. The process is also watched
//! through a pidfd (see [`crate::process`]), which catches an exit when
//! something else inherited the lifeline, and is all there is while a
//! re-adopted dataplane has not reattached. `stop` releases an
//! unregistered allocation immediately; a registered one gets SIGTERM,
//! SIGKILL after [`STOP_GRACE`], and is released when it exits (or after
//! [`STOP_GIVE_UP`] if its lifeline stays open and no exit is seen).
//!
//! `launch` allocates the same way, then starts the program (see
//! [`crate::launch`]) and answers only when the program has registered:
//! with the time it took, or — when the program exits first or does not
//! register within [`LAUNCH_TIMEOUT`] — with an error quoting its last
//! lines of output, the allocation released. A launched program that
//! exits later releases its dataplane even if it never registered. Its
//! stdout and stderr go to the dataplane's log, served by `logs`.
//!
//! # Resizing a running dataplane
//!
//! `cores` on a registered dataplane goes through its lifeline: ixcpd
//! sends a `resize` command (see [`crate::proto`]) and answers the
//! caller only when the dataplane answers; the loop serves everyone else
//! meanwhile, and a second resize of the same dataplane is told `busy`.
//! A *grow* takes the cores, queues and memory in the books first and
//! makes the added cores' pools, which travel with the command; a
//! *shrink* proposes the smaller allocation ([`crate::resources::shrunk`])
//! and gives the cores back only once the dataplane confirms. An error
//! answer — or one ixcpd cannot read, logged as such — means the
//! dataplane still runs what it ran: a grow is rolled back (the old
//! redirection table restored exactly), a shrink changes nothing.
//!
//! No answer within [`COMMAND_TIMEOUT`]: the caller gets an error, but
//! ixcpd cannot know whether the dataplane acted, so it keeps the
//! *larger* of the two allocations in its books (the grown one, or the
//! unshrunk one) — never lending cores a dataplane might be running on
//! — and marks the dataplane's core count unknown: further resizes are
//! refused until a late answer settles it (as a timely one would) or the
//! dataplane exits (everything released, as always). A dataplane that
//! exits during a resize releases everything, and the caller is told.
//! The state file is written after every change of the books.
//!
//! Dataplanes under the `load` policy (`launch --policy load`, or the
//! config's default) are sampled every [`crate::policy::TICK`]: the
//! daemon reads their cores' records and lets [`crate::policy`] decide;
//! its decisions take the same resize path and are logged.
//!
//! `stats` reads the dataplane's stats page: what each core last
//! published. The dataplane writes that page; its numbers are passed on
//! as numbers, and a page that cannot be read is reported in the reply's
//! `note`, never an error of the daemon.
//!
//! A dataplane belongs to the uid that allocated it: only that uid and
//! root may register, reattach, stop or resize it. Anyone authorised may
//! read.
//!
//! # Restarts
//!
//! The books are written to the state file (see [`crate::state`]) after
//! every change. A starting daemon reads it back: a dataplane whose
//! registered process still runs (same pid *and* start time, same boot)
//! is re-adopted — its cores, port and memory taken again exactly as they
//! were, its state `running` — and waits for the process to `reattach`:
//! the dataplane's libix runtime notices its lifeline closed and
//! reconnects with backoff, sending its pid and its stats page; that
//! connection becomes the new lifeline. Its buffer pools stay where they
//! are, mapped by the dataplane; the daemon no longer holds them (it only
//! needs them to hand to a registrant, and this one registered). A
//! dataplane whose process died while no daemon ran is released on load,
//! with the last output of its program in its log. A program an earlier
//! daemon launched is watched through a pidfd, and its output files are
//! read from their start. An allocation nobody registered is restored
//! with fresh pools. A running dataplane whose holdings no longer fit the
//! config (a CPU or port removed) stops the daemon from starting
//! ([`StateError::Conflict`]): adopting part of it would hand the rest out
//! twice.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dataplane::stats::{self, StatsPage};

use crate::config::{Config, HugePages, Policy};
use crate::launch::{self, LaunchedChild, LogFiles, Spec, Stream};
use crate::policy::{self, CoreSample, Decision, LoadState};
use crate::process::{self, ProcessId, Watch};
use crate::proto::{
    self, AllocateArgs, ApiError, Command, CommandAnswer, CommandFrame, CoreStatsView, DaemonInfo,
    DataplaneInfo, DataplaneState, ErrorCode, Isolation, LaunchArgs, LaunchReply, LogLine,
    LogsReply, PoolFd, ReattachReply, Registration, Reply, Request, StatsFd, StatsReply,
    StatusReply, StopReply, VERSION,
};
use crate::resources::{self as res, AllocError, AllocRequest, Allocation, MemoryAsk, Resources};
use crate::state::{self, Files, Saved, SavedDataplane, StateError, STATE_VERSION};
use crate::sys::{self, PeerCred};
use crate::units::Bytes;

/// Time a stopping dataplane has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Time after SIGTERM when a dataplane whose lifeline is still open is
/// released anyway (its process is gone; something else holds the fd).
pub const STOP_GIVE_UP: Duration = Duration::from_secs(3);
/// Time a launched program has to register.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often processes without a pidfd (kernels before 5.3) are looked
/// up in `/proc` for their exit.
pub const PROC_POLL: Duration = Duration::from_millis(250);
/// How long a registered process's lifeline may stay open after its exit
/// was seen before the dataplane is released anyway (the lifeline closes
/// with the exit unless another process inherited it; the grace lets the
/// close be seen as what it is).
pub const LIFELINE_GRACE: Duration = Duration::from_millis(100);
/// Log lines kept per dataplane.
pub const LOG_LINES: usize = 128;
/// Longest log line kept, bytes.
pub const LOG_LINE_MAX: usize = 300;
/// Dataplane names whose logs are kept after they are gone.
pub const LOG_BOOKS: usize = 64;
/// Time a running dataplane has to answer a command on its lifeline.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Stats older than this (by the cores' heartbeat) are not acted on by
/// the load policy.
pub const POLICY_STALE: Duration = Duration::from_millis(500);

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

/// The process that registered a dataplane.
#[derive(Debug)]
struct Holder {
    /// Its lifeline; `None` after a restart until it reattaches.
    conn: Option<ConnId>,
    /// Pid and start time (start 0 when `/proc` had no entry for it).
    id: ProcessId,
    /// Its exit, when its identity could be read.
    watch: Option<Watch>,
    /// When its exit was seen while its lifeline was still open.
    exited_at: Option<Instant>,
    stopping: Option<Stopping>,
}

impl Holder {
    fn new(conn: Option<ConnId>, pid: u32) -> Holder {
        let id = ProcessId::of(pid);
        Holder {
            conn,
            id: id.unwrap_or(ProcessId { pid, start: 0 }),
            watch: id.map(Watch::new),
            exited_at: None,
            stopping: None,
        }
    }

    /// Sends `signal` to it, through its pidfd when it has one.
    fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        match &self.watch {
            Some(watch) => watch.signal(signal),
            None => sys::kill(self.id.pid, signal),
        }
    }
}

#[derive(Debug)]
struct Stopping {
    since: Instant,
    killed: bool,
}

#[derive(Debug)]
struct Dataplane {
    /// Pool memfds to hand to a registrant; empty for a re-adopted
    /// dataplane (its pools live on in its process).
    pools: Vec<OwnedFd>,
    /// Its stats page, once ixcpd has one.
    stats: Option<StatsPage>,
    /// Why there is no page, or what is wrong with it.
    stats_note: Option<String>,
    huge: bool,
    owner_uid: u32,
    since_unix_ms: u64,
    holder: Option<Holder>,
    /// The pid of the program `launch` started for it.
    launched: Option<u32>,
    /// Its core policy.
    policy: Policy,
    /// The load policy's state, once it sampled.
    load: Option<LoadState>,
    /// A resize sent on its lifeline and not answered yet.
    resize: Option<PendingResize>,
}

/// A `resize` command a running dataplane has not answered yet.
#[derive(Debug)]
struct PendingResize {
    cmd: u64,
    /// The connection whose `cores` waits for the outcome; `None` for
    /// the load policy (or once the caller was told of a timeout).
    origin: Option<ConnId>,
    /// What the dataplane ran before.
    before: Allocation,
    /// What it was asked to run.
    after: Allocation,
    /// The pools of added cores (a grow), kept until it confirms.
    pools: Vec<OwnedFd>,
    deadline: Instant,
    /// Past its deadline: the books hold the larger allocation and the
    /// core count is unknown until it answers.
    overdue: bool,
    /// Who asked, for the log.
    by: String,
}

impl PendingResize {
    fn grows(&self) -> bool {
        self.after.cores() > self.before.cores()
    }
}

/// A `launch` request waiting for its program to register.
#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    started: Instant,
    deadline: Instant,
}

/// A program ixcpd (or an earlier ixcpd) started, until its exit is seen.
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
    files: Files,
    /// inotify on the launched programs' output directory.
    log_watch: Option<OwnedFd>,
    /// The bytes the state file holds.
    saved: Vec<u8>,
    /// Commands for dataplanes' lifelines, with their descriptors.
    commands: Vec<(ConnId, Vec<u8>, Vec<OwnedFd>)>,
    next_cmd: u64,
    /// When the load policy next samples.
    next_policy: Option<Instant>,
    boot_id: String,
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
        AllocError::Short(_) | AllocError::CpuUnavailable { .. } => {
            ErrorCode::InsufficientResources
        }
        AllocError::BadName { .. }
        | AllocError::NoSuchPort { .. }
        | AllocError::ZeroCores
        | AllocError::BadBuffers { .. }
        | AllocError::MemoryTooSmall { .. }
        | AllocError::Inconsistent { .. } => ErrorCode::InvalidArgument,
    };
    ApiError::new(code, err.to_string())
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no dataplane named {name:?}"))
}

fn tagged(stream: Stream, line: &str) -> String {
    let tag = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    format!("{tag}: {line}")
}

impl Daemon {
    /// A daemon giving out what `config` lists, its files beside the
    /// config's socket ([`Files::beside`]). Books an earlier daemon left
    /// in the state file are taken back (see the module docs); a state
    /// file that cannot be trusted or read, or whose running dataplanes no
    /// longer fit, is an error.
    pub fn new(config: Config) -> Result<Daemon, StateError> {
        let files = Files::beside(&config.api.socket);
        let mut daemon = Daemon {
            resources: Resources::new(&config),
            config,
            dataplanes: BTreeMap::new(),
            logs: BTreeMap::new(),
            log_order: VecDeque::new(),
            children: BTreeMap::new(),
            finished: Vec::new(),
            started: Instant::now(),
            files,
            log_watch: None,
            saved: Vec::new(),
            commands: Vec::new(),
            next_cmd: 1,
            next_policy: None,
            boot_id: process::boot_id(),
            counters: Counters::default(),
        };
        match state::load(&daemon.files.state)? {
            Some(saved) => {
                daemon.saved = state::encode(&saved);
                daemon.restore(saved)?;
            }
            None => daemon.saved = state::encode(&daemon.books()),
        }
        if daemon.files.logs.is_dir() {
            daemon.watch_logs();
        }
        daemon.persist();
        Ok(daemon)
    }

    /// The config it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The resource books.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Where it keeps its files.
    pub fn files(&self) -> &Files {
        &self.files
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
            pid: holder.map(|h| h.id.pid),
            port: allocation.port.clone(),
            cpus: allocation.cpus.clone(),
            buffers_per_core: allocation.buffers_per_core,
            memory_bytes: allocation.memory_bytes(),
            since_unix_ms: dp.map_or(0, |d| d.since_unix_ms),
            lifeline: holder.is_some_and(|h| h.conn.is_some()),
            policy: dp.map_or(self.config.policy, |d| d.policy),
        }
    }

    /// Answers one request from `caller` at time `now`. `None` means the
    /// answer comes later, from [`Daemon::take_finished`] (a `launch`
    /// waiting for its program to register); the caller's connection
    /// should send nothing else until then.
    pub fn handle(&mut self, caller: &Caller, request: Request, now: Instant) -> Option<Answer> {
        self.handle_with_fds(caller, request, Vec::new(), now)
    }

    /// [`Daemon::handle`] for a request that came with descriptors (only
    /// `reattach` takes one: the dataplane's stats page; the server
    /// refuses them on any other request).
    pub fn handle_with_fds(
        &mut self,
        caller: &Caller,
        request: Request,
        fds: Vec<OwnedFd>,
        now: Instant,
    ) -> Option<Answer> {
        let answer = match request {
            Request::Status => Ok(Reply::Status(self.status())).into(),
            Request::Resources => Ok(Reply::Resources(self.resources.view())).into(),
            Request::Allocate(args) => self.allocate(caller, args).map(Reply::Allocated).into(),
            Request::Launch(args) => match self.launch(caller, args, now) {
                Ok(()) => {
                    self.persist();
                    return None;
                }
                Err(err) => Err(err).into(),
            },
            Request::Stop { name } => self.stop(caller, &name, now).map(Reply::Stopped).into(),
            Request::Stats { name } => self.stats(&name).map(Reply::Stats).into(),
            Request::Cores { name, n } => match self.cores(caller, &name, n, now) {
                Ok(None) => {
                    self.persist();
                    return None;
                }
                Ok(Some(allocation)) => Ok(Reply::Resized(allocation)).into(),
                Err(err) => Err(err).into(),
            },
            Request::Logs { name, lines } => self.logs(&name, lines).map(Reply::Logs).into(),
            Request::Register { name } => match self.register(caller, &name, now) {
                Ok((registration, fds)) => Answer {
                    outcome: Ok(Reply::Registered(registration)),
                    fds,
                },
                Err(err) => Err(err).into(),
            },
            Request::Reattach { name, pid } => self
                .reattach(caller, &name, pid, fds)
                .map(Reply::Reattached)
                .into(),
        };
        self.persist();
        Some(answer)
    }

    /// Answers that became ready since the last call, each for the
    /// connection whose request [`Daemon::handle`] deferred.
    pub fn take_finished(&mut self) -> Vec<(ConnId, Answer)> {
        std::mem::take(&mut self.finished)
    }

    /// Commands to send since the last call: each an encoded frame for a
    /// dataplane's lifeline and the descriptors that go with it.
    pub fn take_commands(&mut self) -> Vec<(ConnId, Vec<u8>, Vec<OwnedFd>)> {
        std::mem::take(&mut self.commands)
    }

    /// Whether `conn` is a registered dataplane's lifeline.
    pub fn is_lifeline(&self, conn: ConnId) -> bool {
        self.lifeline_of(conn).is_some()
    }

    /// Whether the dataplane whose lifeline is `conn` owes an answer to a
    /// command.
    pub fn awaits_answer(&self, conn: ConnId) -> bool {
        self.lifeline_of(conn)
            .and_then(|name| self.dataplanes.get(name))
            .is_some_and(|dp| dp.resize.is_some())
    }

    fn lifeline_of(&self, conn: ConnId) -> Option<&str> {
        self.dataplanes.iter().find_map(|(name, dp)| {
            dp.holder
                .as_ref()
                .filter(|h| h.conn == Some(conn))
                .map(|_| name.as_str())
        })
    }

    /// An answer (or what was meant as one: `Err` says why it could not
    /// be read) arrived on lifeline `conn`: settles the outstanding
    /// command. An answer nothing waits for is logged and dropped.
    pub fn command_answered(&mut self, conn: ConnId, answer: Result<CommandAnswer, String>) {
        let Some(name) = self.lifeline_of(conn).map(str::to_owned) else {
            log::warn!(
                "client {}: an answer on a connection that is no lifeline; dropped",
                conn.0
            );
            return;
        };
        let Some(pending) = self.dataplanes.get(&name).and_then(|dp| dp.resize.as_ref()) else {
            let what = match &answer {
                Ok(a) => format!("an answer to command {} with none outstanding", a.cmd),
                Err(why) => format!("a frame that is neither request nor answer ({why})"),
            };
            self.log(&name, format!("dropped {what}"));
            return;
        };
        let cmd = pending.cmd;
        let outcome = match answer {
            Ok(a) if a.cmd != cmd => Err(format!(
                "malformed answer: it answers command {} but command {cmd} is outstanding",
                a.cmd
            )),
            Ok(CommandAnswer {
                result: Ok(cores), ..
            }) if cores as usize != pending.after.cores() => Err(format!(
                "malformed answer: ok with {cores} cores, but {} were asked",
                pending.after.cores()
            )),
            Ok(CommandAnswer { result: Ok(_), .. }) => Ok(()),
            Ok(CommandAnswer {
                result: Err(why), ..
            }) => Err(format!("the dataplane refused: {why}")),
            Err(why) => Err(format!("malformed answer: {why}")),
        };
        self.settle(&name, outcome);
        self.persist();
    }

    /// Ends `name`'s outstanding resize: `Ok` — it runs the new
    /// allocation; `Err(why)` — it still runs the old one.
    fn settle(&mut self, name: &str, outcome: Result<(), String>) {
        let Some(dp) = self.dataplanes.get_mut(name) else {
            return;
        };
        let Some(pending) = dp.resize.take() else {
            return;
        };
        let (from, to) = (pending.before.cores(), pending.after.cores());
        let late = if pending.overdue { " (late)" } else { "" };
        let result = match outcome {
            Ok(()) => {
                let settled = if pending.grows() {
                    dp.pools.extend(pending.pools);
                    Ok(pending.after.clone())
                } else {
                    dp.pools.truncate(to);
                    self.resources
                        .resize(name, to as u32)
                        .map_err(|e| e.to_string())
                };
                match settled {
                    Ok(after) => {
                        debug_assert_eq!(after, pending.after);
                        self.log(
                            name,
                            format!(
                                "resized{late} from {from} to {to} cores (asked by {}): cpus {:?}",
                                pending.by, after.cpus
                            ),
                        );
                        Ok(after)
                    }
                    Err(why) => {
                        log::error!("{name}: the books refused a confirmed shrink: {why}");
                        Err(ApiError::new(ErrorCode::Internal, why))
                    }
                }
            }
            Err(why) => {
                if pending.grows() {
                    if let Err(err) = self.resources.restore(&pending.before) {
                        log::error!("{name}: cannot roll the books back: {err}");
                    }
                }
                self.log(
                    name,
                    format!(
                        "resize{late} from {from} to {to} cores (asked by {}) failed: {why}; it keeps cpus {:?}",
                        pending.by, pending.before.cpus
                    ),
                );
                Err(ApiError::new(
                    ErrorCode::DataplaneFailed,
                    format!("{name}: resize to {to} cores failed: {why}"),
                ))
            }
        };
        if let Some(conn) = pending.origin {
            self.finished
                .push((conn, result.map(Reply::Resized).into()));
        }
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
    }

    /// Descriptors to poll: readable when a watched process exits (its
    /// pidfd) or a launched program wrote output (inotify). Call
    /// [`Daemon::tick`] when one is.
    pub fn wake_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds: Vec<BorrowedFd<'_>> = self.log_watch.iter().map(AsFd::as_fd).collect();
        fds.extend(self.children.values().filter_map(|l| l.child.fd()));
        // A holder whose exit was seen already waits out its grace as a
        // deadline; its readable pidfd would only spin the loop.
        fds.extend(self.dataplanes.values().filter_map(|dp| {
            let holder = dp.holder.as_ref().filter(|h| h.exited_at.is_none())?;
            holder.watch.as_ref()?.fd()
        }));
        fds
    }

    /// Creates the output directory of launched programs (0700) and
    /// watches it.
    fn ensure_log_dir(&mut self) -> Result<(), ApiError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.files.logs.clone();
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|err| {
                    ApiError::new(
                        ErrorCode::Internal,
                        format!("cannot create the output directory {dir:?}: {err}"),
                    )
                })?;
        }
        if self.log_watch.is_none() {
            self.watch_logs();
        }
        Ok(())
    }

    fn watch_logs(&mut self) {
        match sys::inotify_dir(&self.files.logs) {
            Ok(fd) => self.log_watch = Some(fd),
            Err(err) => log::warn!(
                "cannot watch {:?} ({err}): launched programs' output is read when the loop \
                 wakes for other reasons",
                self.files.logs
            ),
        }
    }

    fn launch(&mut self, caller: &Caller, args: LaunchArgs, now: Instant) -> Result<(), ApiError> {
        if args.isolation == Some(Isolation::Kvm) {
            return Err(ApiError::new(
                ErrorCode::NotSupported,
                "not_supported: kvm isolation is not built yet (launch with --isolation process)",
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
        self.ensure_log_dir()?;
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
        let policy = args.policy.unwrap_or(self.config.policy);
        if let Some(dp) = self.dataplanes.get_mut(&name) {
            dp.policy = policy;
        }
        let identity =
            (caller.cred.uid != sys::euid()).then_some((caller.cred.uid, caller.cred.gid));
        let spawned = LaunchedChild::spawn(&Spec {
            name: &name,
            socket: &self.config.api.socket,
            program: &args.program,
            args: &args.args,
            cwd: Path::new(&cwd),
            identity,
            logs: &LogFiles::of(&self.files.logs, &name),
        });
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                let message = err.to_string();
                self.release(&name, &format!("launch failed: {message}"));
                let code = match err {
                    launch::LaunchError::RelativeProgram { .. } => ErrorCode::InvalidArgument,
                    launch::LaunchError::Spawn { .. } => ErrorCode::LaunchFailed,
                    launch::LaunchError::LogFile { .. } => ErrorCode::Internal,
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

    /// Releases `name` if the program `pid` started for it holds it
    /// without a lifeline (it never registered, or has not reattached
    /// since a restart); a dataplane of the same name made later, one
    /// registered by another process, and one whose lifeline is open (its
    /// close releases it, see [`Daemon::disconnected`]) are left alone.
    /// Returns whether it released.
    fn release_launched(&mut self, name: &str, pid: u32, why: &str) -> bool {
        let Some(dp) = self.dataplanes.get(name) else {
            return false;
        };
        let ours = dp.launched == Some(pid)
            && dp
                .holder
                .as_ref()
                .is_none_or(|h| h.id.pid == pid && h.conn.is_none());
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
            let exit = launch.child.try_exit();
            let late = launch.waiter.as_ref().is_some_and(|w| now >= w.deadline);
            // After an exit everything it wrote is in its files.
            let lines = match exit {
                Some(_) => launch.child.read_last_output(),
                None => launch.child.read_output(),
            };
            for (stream, line) in lines {
                self.log(&name, tagged(stream, &line));
            }
            let launch = self.children.get_mut(&pid).expect("present above");
            if let Some(exit) = exit {
                let what = format!("exited ({})", launch::describe(exit));
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
                if let Some(done) = self.children.remove(&pid) {
                    done.child.remove_logs();
                }
            } else if late {
                launch.child.kill();
                let waiter = launch.waiter.take().expect("late implies a waiter");
                let what = format!("did not register within {LAUNCH_TIMEOUT:?} (killed)");
                self.fail_launch(pid, waiter, &name, what);
            }
        }
    }

    /// Releases the dataplanes whose registered process exited without
    /// its lifeline closing: re-adopted ones that had not reattached (at
    /// once), and ones whose lifeline another process inherited (after
    /// [`LIFELINE_GRACE`]).
    fn service_holders(&mut self, now: Instant) {
        let mut gone = Vec::new();
        for (name, dp) in &mut self.dataplanes {
            let Some(holder) = dp.holder.as_mut() else {
                continue;
            };
            if !holder.watch.as_ref().is_some_and(Watch::exited) {
                continue;
            }
            let pid = holder.id.pid;
            if holder.conn.is_none() {
                gone.push((
                    name.clone(),
                    format!("pid {pid} exited before it reattached (seen by its pidfd)"),
                ));
            } else {
                let since = *holder.exited_at.get_or_insert(now);
                if now.saturating_duration_since(since) >= LIFELINE_GRACE {
                    gone.push((
                        name.clone(),
                        format!(
                            "pid {pid} exited, but its lifeline is still open (another process holds it)"
                        ),
                    ));
                }
            }
        }
        for (name, why) in gone {
            self.release(&name, &why);
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
        let capacity = self.capacity(&allocation);
        let made = self
            .make_pools(&allocation, 0)
            .and_then(|(pools, huge)| Ok((pools, huge, make_stats(&allocation, capacity)?)));
        let (pools, huge, page) = match made {
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
                stats: Some(page),
                stats_note: None,
                huge,
                owner_uid: caller.cred.uid,
                since_unix_ms: unix_ms(),
                holder: None,
                launched: None,
                policy: self.config.policy,
                load: None,
                resize: None,
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

    /// The most cores `allocation`'s dataplane could run: its port's
    /// queues (what its stats page is sized for).
    fn capacity(&self, allocation: &Allocation) -> usize {
        self.config
            .port(&allocation.port)
            .map_or(allocation.cores(), |p| usize::from(p.kind.queues()))
            .clamp(allocation.cores().max(1), stats::MAX_CORES)
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
            let pending = self.dataplanes.remove(name).and_then(|dp| dp.resize);
            if let Some(PendingResize {
                origin: Some(conn),
                after,
                ..
            }) = pending
            {
                self.finished.push((
                    conn,
                    Err(ApiError::new(
                        ErrorCode::DataplaneFailed,
                        format!(
                            "{name}: resize to {} cores did not finish: {why}",
                            after.cores()
                        ),
                    ))
                    .into(),
                ));
            }
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
                if let Some(l) = self.children.get_mut(&pid) {
                    l.child.kill();
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
        let pid = holder.id.pid;
        if holder.stopping.is_none() {
            holder.stopping = Some(Stopping {
                since: now,
                killed: false,
            });
            let sent = holder.signal(libc::SIGTERM);
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
        let dp = self.dataplanes.get(name).ok_or_else(|| not_found(name))?;
        let now = dataplane::time::Instant::now().as_nanos();
        let mut cores = Vec::new();
        let mut notes = Vec::new();
        if dp.holder.is_none() {
            notes.push("no process has registered: nothing publishes yet".to_owned());
        }
        match &dp.stats {
            None => notes.push(
                dp.stats_note
                    .clone()
                    .unwrap_or_else(|| "no stats page".to_owned()),
            ),
            Some(page) => match page.check_header() {
                Err(err) => notes.push(err.to_string()),
                Ok(()) => {
                    for (i, &cpu) in allocation.cpus.iter().enumerate() {
                        match page.read(i) {
                            Ok(s) => cores.push(CoreStatsView::new(i as u16, cpu, &s, now)),
                            Err(err) => notes.push(err.to_string()),
                        }
                    }
                }
            },
        }
        Ok(StatsReply {
            dataplane: self.info(allocation),
            allocation: allocation.clone(),
            cores,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            read_ns: now,
        })
    }

    /// `cores`: resizes `name` to `n` cores. `Ok(None)`: a resize command
    /// went to the running dataplane, the answer comes later (see the
    /// module docs).
    fn cores(
        &mut self,
        caller: &Caller,
        name: &str,
        n: u32,
        now: Instant,
    ) -> Result<Option<Allocation>, ApiError> {
        self.may_manage(caller, name, "resize")?;
        let dp = self.dataplanes.get(name).ok_or_else(|| not_found(name))?;
        let by = format!("uid {}", caller.cred.uid);
        if dp.holder.is_some() {
            return self.resize_running(name, n, Some(caller.conn), by, now);
        }
        let before = self
            .resources
            .get(name)
            .ok_or_else(|| not_found(name))?
            .cores();
        let after = self.resources.resize(name, n).map_err(alloc_error)?;
        let made = if after.cores() > before {
            self.make_pools(&after, before).map(|(pools, _)| pools)
        } else {
            Ok(Vec::new())
        };
        let mut pools = match made {
            Ok(made) => made,
            Err(err) => {
                self.resources
                    .resize(name, before as u32)
                    .expect("going back to what was held always fits");
                return Err(err);
            }
        };
        let dp = self.dataplanes.get_mut(name).expect("checked above");
        dp.pools.truncate(after.cores());
        dp.pools.append(&mut pools);
        self.log(
            name,
            format!(
                "resized by {by} from {before} to {} cores: cpus {:?}",
                after.cores(),
                after.cpus
            ),
        );
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
        Ok(Some(after))
    }

    /// Sends a running dataplane a `resize` to `n` cores, taking the
    /// added cores first when it grows; `Ok(None)` when the command went
    /// out, `Ok(Some)` when nothing changes. `origin` waits for the
    /// outcome; `by` says who asked, for the log.
    fn resize_running(
        &mut self,
        name: &str,
        n: u32,
        origin: Option<ConnId>,
        by: String,
        now: Instant,
    ) -> Result<Option<Allocation>, ApiError> {
        let before = self
            .resources
            .get(name)
            .ok_or_else(|| not_found(name))?
            .clone();
        let dp = self.dataplanes.get(name).ok_or_else(|| not_found(name))?;
        let holder = dp.holder.as_ref().expect("a running dataplane");
        if let Some(pending) = &dp.resize {
            let message = if pending.overdue {
                format!(
                    "{name} did not answer resize command {} (to {} cores) within {COMMAND_TIMEOUT:?}: its core count is unknown, and it keeps cpus {:?} until it answers or exits",
                    pending.cmd,
                    pending.after.cores(),
                    self.resources.get(name).map(|a| a.cpus.clone()).unwrap_or_default()
                )
            } else {
                format!(
                    "{name} is being resized from {} to {} cores (asked by {}); try again when it answered",
                    pending.before.cores(),
                    pending.after.cores(),
                    pending.by
                )
            };
            return Err(ApiError::new(ErrorCode::Busy, message));
        }
        if holder.stopping.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("{name} is stopping; it cannot be resized"),
            ));
        }
        let Some(conn) = holder.conn else {
            return Err(ApiError::new(
                ErrorCode::Busy,
                format!(
                    "{name} (pid {}) has not reattached since ixcpd restarted: there is no lifeline to send the resize on yet; try again in a moment",
                    holder.id.pid
                ),
            ));
        };
        if n == 0 {
            return Err(alloc_error(AllocError::ZeroCores));
        }
        let from = before.cores();
        if n as usize == from {
            return Ok(Some(before));
        }
        let (after, pools) = if n as usize > from {
            let after = self.resources.resize(name, n).map_err(alloc_error)?;
            match self.make_pools(&after, from) {
                Ok((pools, _)) => (after, pools),
                Err(err) => {
                    self.resources
                        .restore(&before)
                        .expect("restoring what was held always fits");
                    return Err(err);
                }
            }
        } else {
            (res::shrunk(&before, n), Vec::new())
        };
        let huge = self.dataplanes[name].huge;
        let listed: Vec<PoolFd> = (from..after.cores())
            .enumerate()
            .map(|(i, queue)| PoolFd {
                queue: queue as u16,
                fd: i as u32,
                bytes: after.pool_bytes,
                buffers: after.buffers_per_core,
                huge,
            })
            .collect();
        let dups = pools
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<Result<Vec<_>, _>>();
        let dups = match dups {
            Ok(dups) => dups,
            Err(err) => {
                if after.cores() > from {
                    self.resources
                        .restore(&before)
                        .expect("restoring what was held always fits");
                }
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("cannot duplicate pool fds: {err}"),
                ));
            }
        };
        let cmd = self.next_cmd;
        self.next_cmd += 1;
        let frame = proto::encode_command(&CommandFrame {
            v: VERSION,
            cmd,
            command: Command::Resize {
                allocation: after.clone(),
                pools: listed,
            },
        });
        self.commands.push((conn, frame, dups));
        self.log(
            name,
            format!(
                "resize from {from} to {} cores asked by {by}: sent command {cmd} (cpus {:?})",
                after.cores(),
                after.cpus
            ),
        );
        let dp = self.dataplanes.get_mut(name).expect("checked above");
        dp.resize = Some(PendingResize {
            cmd,
            origin,
            before,
            after,
            pools,
            deadline: now + COMMAND_TIMEOUT,
            overdue: false,
            by,
        });
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
        Ok(None)
    }

    /// Resizes past their deadline: their callers are told, and the
    /// dataplanes' core counts marked unknown (the books keep the larger
    /// allocation; see the module docs).
    fn service_resizes(&mut self, now: Instant) {
        let mut late = Vec::new();
        for (name, dp) in &mut self.dataplanes {
            let Some(pending) = dp.resize.as_mut() else {
                continue;
            };
            if pending.overdue || now < pending.deadline {
                continue;
            }
            pending.overdue = true;
            late.push((
                name.clone(),
                pending.cmd,
                pending.origin.take(),
                pending.after.cores(),
            ));
        }
        for (name, cmd, origin, to) in late {
            let held = self
                .resources
                .get(&name)
                .map(|a| a.cpus.clone())
                .unwrap_or_default();
            self.log(
                &name,
                format!(
                    "no answer to resize command {cmd} (to {to} cores) within {COMMAND_TIMEOUT:?}: core count unknown; it keeps cpus {held:?} until it answers or exits"
                ),
            );
            if let Some(conn) = origin {
                self.finished.push((
                    conn,
                    Err(ApiError::new(
                        ErrorCode::DataplaneFailed,
                        format!(
                            "{name} did not answer the resize to {to} cores within {COMMAND_TIMEOUT:?}; it keeps cpus {held:?} until it answers or exits"
                        ),
                    ))
                    .into(),
                ));
            }
        }
    }

    /// Samples the dataplanes under the load policy and acts on its
    /// decisions, every [`policy::TICK`].
    fn service_policy(&mut self, now: Instant) {
        let under_load = self.dataplanes.values().any(|dp| dp.policy == Policy::Load);
        if !under_load {
            self.next_policy = None;
            return;
        }
        match self.next_policy {
            Some(at) if now < at => return,
            _ => self.next_policy = Some(now + policy::TICK),
        }
        let clock = dataplane::time::Instant::now().as_nanos();
        let free = self.resources.free_cores().len();
        let mut decisions = Vec::new();
        for (name, dp) in &mut self.dataplanes {
            let running = dp
                .holder
                .as_ref()
                .is_some_and(|h| h.conn.is_some() && h.stopping.is_none());
            if dp.policy != Policy::Load || !running || dp.resize.is_some() {
                continue;
            }
            let Some(allocation) = self.resources.get(name) else {
                continue;
            };
            let Some(samples) = dp
                .stats
                .as_ref()
                .and_then(|p| samples(p, allocation, clock))
            else {
                continue;
            };
            let queues = self
                .config
                .port(&allocation.port)
                .map_or(allocation.cores(), |p| usize::from(p.kind.queues()));
            let max = queues.min(free + allocation.cores()) as u32;
            let load = dp.load.get_or_insert_with(|| LoadState::new(now));
            let decision = load.decide(&samples, now, max);
            if decision != Decision::Stay {
                load.acted(&decision, now);
                decisions.push((name.clone(), decision));
            }
        }
        for (name, decision) in decisions {
            let (to, why) = match decision {
                Decision::Grow { to, why } | Decision::Shrink { to, why } => (to, why),
                Decision::Stay => continue,
            };
            self.log(&name, format!("load policy: {why}: resizing to {to} cores"));
            let by = "the load policy".to_owned();
            if let Err(err) = self.resize_running(&name, to, None, by, now) {
                self.log(
                    &name,
                    format!("load policy: resize to {to} cores refused: {err}"),
                );
            }
        }
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
                format!("{name} is already registered by pid {}", holder.id.pid),
            ));
        }
        let dup_err = |err: std::io::Error| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot duplicate pool fds: {err}"),
            )
        };
        let mut fds = dp
            .pools
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(dup_err)?;
        let pools = (0..allocation.cores())
            .map(|i| PoolFd {
                queue: i as u16,
                fd: i as u32,
                bytes: allocation.pool_bytes,
                buffers: allocation.buffers_per_core,
                huge: dp.huge,
            })
            .collect();
        let stats = match &dp.stats {
            Some(page) => {
                fds.push(page.fd().try_clone_to_owned().map_err(dup_err)?);
                Some(StatsFd {
                    fd: allocation.cores() as u32,
                    bytes: stats::page_len(page.cores()) as u64,
                    cores: page.cores() as u32,
                    version: stats::VERSION,
                })
            }
            None => None,
        };
        dp.holder = Some(Holder::new(Some(caller.conn), caller.cred.pid));
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
                stats,
            },
            fds,
        ))
    }

    /// `reattach`: the process that registered `name` gives a restarted
    /// daemon its lifeline back (and its stats page, in `fds`).
    fn reattach(
        &mut self,
        caller: &Caller,
        name: &str,
        pid: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<ReattachReply, ApiError> {
        self.may_manage(caller, name, "reattach as")?;
        if pid != caller.cred.pid {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "reattach: pid {pid} is not the caller (the socket says pid {})",
                    caller.cred.pid
                ),
            ));
        }
        let allocation = self.resources.get(name).ok_or_else(|| not_found(name))?;
        let (cores, capacity) = (allocation.cores(), self.capacity(allocation));
        let dp = self
            .dataplanes
            .get_mut(name)
            .ok_or_else(|| not_found(name))?;
        let Some(holder) = dp.holder.as_mut() else {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("{name} is not registered: `register` claims an allocation, `reattach` restores a registered dataplane's lifeline"),
            ));
        };
        if holder.id.pid != pid {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("{name} is registered by pid {}, not {pid}", holder.id.pid),
            ));
        }
        let now_id = ProcessId::of(pid);
        if holder.id.start == 0 || now_id != Some(holder.id) {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "pid {pid} is not the process that registered {name} (it started at another \
                     time: the pid was reused)"
                ),
            ));
        }
        if holder.conn.is_some() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("{name}'s lifeline is open: pid {pid} is attached already"),
            ));
        }
        holder.conn = Some(caller.conn);
        if holder.watch.is_none() {
            holder.watch = Some(Watch::new(holder.id));
        }
        // A page made for growth maps whole; one an older ixcpd sized for
        // the cores held maps as that.
        let opened = fds.into_iter().next().map(|fd| {
            let spare = fd.try_clone();
            StatsPage::open(fd, capacity, false).or_else(|err| match spare {
                Ok(spare) if capacity > cores => StatsPage::open(spare, cores, false),
                _ => Err(err),
            })
        });
        let stats = match opened {
            Some(page) => match page {
                Ok(page) => {
                    dp.stats = Some(page);
                    dp.stats_note = None;
                    true
                }
                Err(err) => {
                    dp.stats_note = Some(format!("the stats page sent with reattach: {err}"));
                    false
                }
            },
            None => {
                dp.stats_note = Some("reattached without its stats page".to_owned());
                false
            }
        };
        let note = dp.stats_note.clone();
        self.log(
            name,
            format!(
                "reattached by pid {pid}: lifeline restored{}",
                note.map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        );
        let allocation = self.resources.get(name).expect("checked above");
        Ok(ReattachReply {
            dataplane: self.info(allocation),
            stats,
        })
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
                    .filter(|h| h.conn == Some(conn))
                    .map(|h| (name.clone(), h.id.pid))
            })
            .collect();
        for (name, pid) in gone {
            self.release(&name, &format!("pid {pid} exited (lifeline closed)"));
        }
        self.persist();
    }

    /// Collects launched programs' output and exits, notices registered
    /// processes that exited without their lifeline closing, fails
    /// launches that did not register in time, and escalates stops that
    /// take too long: SIGKILL after [`STOP_GRACE`], release after
    /// [`STOP_GIVE_UP`]. The server calls it on every turn of its loop,
    /// after serving the connections (so that a lifeline's close is seen
    /// as such before the pidfd of the same exit).
    pub fn tick(&mut self, now: Instant) {
        if let Some(watch) = &self.log_watch {
            sys::drain(watch.as_fd());
        }
        self.service_children(now);
        self.service_holders(now);
        self.service_resizes(now);
        self.service_policy(now);
        let mut kill = Vec::new();
        let mut give_up = Vec::new();
        for (name, dp) in &mut self.dataplanes {
            let Some(holder) = dp.holder.as_mut() else {
                continue;
            };
            let pid = holder.id.pid;
            let Some(stopping) = holder.stopping.as_mut() else {
                continue;
            };
            let waited = now.saturating_duration_since(stopping.since);
            if waited >= STOP_GIVE_UP {
                give_up.push((name.clone(), pid));
            } else if waited >= STOP_GRACE && !stopping.killed {
                stopping.killed = true;
                kill.push(name.clone());
            }
        }
        for name in kill {
            let Some(holder) = self.dataplanes.get(&name).and_then(|d| d.holder.as_ref()) else {
                continue;
            };
            let pid = holder.id.pid;
            let text = match holder.signal(libc::SIGKILL) {
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
        self.persist();
    }

    /// When [`Daemon::tick`] next has something to do. Exits and output
    /// are not deadlines: poll [`Daemon::wake_fds`] for them (processes
    /// without a pidfd are looked at every [`PROC_POLL`]).
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
        let blind = self.children.values().any(|l| l.child.fd().is_none())
            || self.dataplanes.values().any(|dp| {
                dp.holder
                    .as_ref()
                    .and_then(|h| h.watch.as_ref())
                    .is_some_and(|w| w.fd().is_none())
            });
        let polling = blind.then(|| Instant::now() + PROC_POLL);
        let graces = self
            .dataplanes
            .values()
            .filter_map(|dp| dp.holder.as_ref()?.exited_at)
            .map(|t| t + LIFELINE_GRACE);
        let resizes = self
            .dataplanes
            .values()
            .filter_map(|dp| dp.resize.as_ref().filter(|r| !r.overdue))
            .map(|r| r.deadline);
        let policy = self
            .dataplanes
            .values()
            .any(|dp| dp.policy == Policy::Load)
            .then(|| self.next_policy.unwrap_or_else(Instant::now));
        stops
            .chain(launches)
            .chain(polling)
            .chain(graces)
            .chain(resizes)
            .chain(policy)
            .min()
    }

    /// The books as the state file holds them.
    fn books(&self) -> Saved {
        Saved {
            version: STATE_VERSION,
            boot_id: self.boot_id.clone(),
            ixcpd_pid: std::process::id(),
            dataplanes: self
                .resources
                .allocations()
                .filter_map(|a| {
                    let dp = self.dataplanes.get(&a.name)?;
                    Some(SavedDataplane {
                        allocation: a.clone(),
                        owner_uid: dp.owner_uid,
                        since_unix_ms: dp.since_unix_ms,
                        huge: dp.huge,
                        holder: dp.holder.as_ref().map(|h| h.id),
                        launched: dp
                            .launched
                            .and_then(|pid| self.children.get(&pid))
                            .map(|l| l.child.id()),
                        policy: Some(dp.policy),
                    })
                })
                .collect(),
        }
    }

    /// Writes the books to the state file if they changed since the last
    /// write. A failed write is logged and tried again at the next change.
    fn persist(&mut self) {
        let bytes = state::encode(&self.books());
        if bytes == self.saved {
            return;
        }
        match state::save(&self.files.state, &bytes) {
            Ok(()) => self.saved = bytes,
            Err(err) => log::error!(
                "cannot write the state file {:?}: {err}; an ixcpd started after this one would \
                 not know the dataplanes changed since",
                self.files.state
            ),
        }
    }

    /// Removes the state file and the output directory when no dataplane
    /// is left (a clean shutdown); with dataplanes running they stay, for
    /// the next ixcpd.
    pub fn tidy_up_if_idle(&mut self) {
        if !self.dataplanes.is_empty() {
            return;
        }
        for result in [
            std::fs::remove_file(&self.files.state),
            std::fs::remove_dir(&self.files.logs),
        ] {
            if let Err(err) = result {
                if err.kind() != std::io::ErrorKind::NotFound {
                    log::debug!("tidying up: {err}");
                }
            }
        }
    }

    /// Takes the books an earlier daemon wrote back (see the module docs).
    fn restore(&mut self, saved: Saved) -> Result<(), StateError> {
        let same_boot = !saved.boot_id.is_empty() && saved.boot_id == self.boot_id;
        if !same_boot {
            log::warn!(
                "state file {:?} is from another boot: no process it lists can still run",
                self.files.state
            );
        }
        let alive = |p: Option<ProcessId>| p.filter(|p| same_boot && p.is_running());
        for entry in saved.dataplanes {
            let name = entry.allocation.name.clone();
            let holder = alive(entry.holder);
            let launched = alive(entry.launched);
            let logs = LogFiles::of(&self.files.logs, &name);
            if let Some(gone) = entry.launched.filter(|_| launched.is_none()) {
                // Whatever it wrote until it exited.
                let mut child = LaunchedChild::adopt(gone, logs.clone());
                for (stream, line) in child.read_last_output() {
                    self.log(&name, tagged(stream, &line));
                }
                child.remove_logs();
            }
            let held = |a: &Allocation| {
                format!(
                    "cpus {:?}, port {}, {}",
                    a.cpus,
                    a.port,
                    Bytes(a.memory_bytes())
                )
            };
            let gone_pid = match (entry.holder, holder, entry.launched, launched) {
                (Some(h), None, _, _) => Some(h.pid),
                (None, _, Some(l), None) => Some(l.pid),
                _ => None,
            };
            if let Some(pid) = gone_pid {
                self.log(
                    &name,
                    format!(
                        "pid {pid} exited while no ixcpd ran: released {}",
                        held(&entry.allocation)
                    ),
                );
                continue;
            }
            if let Err(err) = self.resources.adopt(&entry.allocation) {
                if let Some(h) = holder {
                    return Err(StateError::Conflict {
                        path: self.files.state.clone(),
                        name,
                        pid: h.pid,
                        reason: err.to_string(),
                    });
                }
                self.log(&name, format!("not restored after a restart: {err}"));
                continue;
            }
            let (pools, stats, stats_note, huge) = if holder.is_some() {
                let note = "ixcpd restarted: the stats page returns when the dataplane reattaches";
                (Vec::new(), None, Some(note.to_owned()), entry.huge)
            } else {
                let capacity = self.capacity(&entry.allocation);
                let made = self.make_pools(&entry.allocation, 0).and_then(|(p, h)| {
                    Ok((p, Some(make_stats(&entry.allocation, capacity)?), None, h))
                });
                match made {
                    Ok(made) => made,
                    Err(err) => {
                        self.resources
                            .release(&name)
                            .expect("the allocation just adopted exists");
                        self.log(&name, format!("not restored after a restart: {err}"));
                        continue;
                    }
                }
            };
            self.dataplanes.insert(
                name.clone(),
                Dataplane {
                    pools,
                    stats,
                    stats_note,
                    huge,
                    owner_uid: entry.owner_uid,
                    since_unix_ms: entry.since_unix_ms,
                    holder: holder.map(|id| Holder {
                        conn: None,
                        id,
                        watch: Some(Watch::new(id)),
                        exited_at: None,
                        stopping: None,
                    }),
                    launched: launched.map(|l| l.pid),
                    policy: entry.policy.unwrap_or(self.config.policy),
                    load: None,
                    resize: None,
                },
            );
            if let Some(l) = launched {
                self.children.insert(
                    l.pid,
                    Launch {
                        name: name.clone(),
                        child: LaunchedChild::adopt(l, logs),
                        waiter: None,
                    },
                );
            }
            let what = match holder {
                Some(h) => format!(
                    "re-adopted after an ixcpd restart: pid {} runs on {}; waiting for it to reattach",
                    h.pid,
                    held(&entry.allocation)
                ),
                None => format!(
                    "allocation restored after an ixcpd restart ({}; nothing registered)",
                    held(&entry.allocation)
                ),
            };
            self.log(&name, what);
        }
        debug_assert_eq!(self.resources.check_invariants(), Ok(()));
        Ok(())
    }
}

/// What the load policy reads of `allocation`'s cores in `page` at
/// `clock` (ns): `None` unless every core has published within
/// [`POLICY_STALE`] (a core that has not started, or stopped publishing,
/// gives nothing to act on).
fn samples(page: &StatsPage, allocation: &Allocation, clock: u64) -> Option<Vec<CoreSample>> {
    page.check_header().ok()?;
    (0..allocation.cores())
        .map(|core| {
            let s = page.read(core).ok()?;
            let fresh = s.publishes > 0
                && s.heartbeat_ns <= clock
                && clock - s.heartbeat_ns <= POLICY_STALE.as_nanos() as u64;
            fresh.then_some(CoreSample {
                queue_milli: s.avg_queue_milli,
                idle_ppm: s.avg_idle_ppm,
                full_ppm: s.avg_full_ppm,
            })
        })
        .collect()
}

/// A fresh stats page for `allocation`, with room for `capacity` cores
/// (what it could grow to: the page is kept across resizes, as the
/// running dataplane keeps writing the page it mapped).
fn make_stats(allocation: &Allocation, capacity: usize) -> Result<StatsPage, ApiError> {
    StatsPage::create(&format!("ix-{}-stats", allocation.name), capacity).map_err(|err| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot create the stats page of {}: {err}", allocation.name),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::units::{CpuList, MIB};
    use std::fs::File;
    use std::ops::{Deref, DerefMut};

    /// A daemon whose files (socket path, state, output) are in a
    /// temporary directory removed after it.
    #[derive(Debug)]
    struct TestDaemon {
        daemon: Daemon,
        dir: tempfile::TempDir,
    }

    impl Deref for TestDaemon {
        type Target = Daemon;
        fn deref(&self) -> &Daemon {
            &self.daemon
        }
    }

    impl DerefMut for TestDaemon {
        fn deref_mut(&mut self) -> &mut Daemon {
            &mut self.daemon
        }
    }

    fn config_in(dir: &Path, memory: &str) -> Config {
        let host = Host {
            cpus: CpuList(vec![0, 1]),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        };
        let text = format!(
            "memory = \"{memory}\"\n[api]\nsocket = {:?}\n[[ports]]\nname = \"wire0\"\nkind = \"memif\"\n\
             socket = \"/tmp/ix-daemon-test.sock\"\nrole = \"master\"\nqueues = 2\nip = \"10.0.0.1/24\"\n",
            dir.join("ixcpd.sock")
        );
        Config::from_toml(&text, &host).unwrap()
    }

    fn daemon(memory: &str) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::new(config_in(dir.path(), memory)).unwrap();
        TestDaemon { daemon, dir }
    }

    impl TestDaemon {
        /// Ends this daemon as a crash would (its state file stays) and
        /// starts another on the same files.
        fn restart(self) -> Result<TestDaemon, StateError> {
            let TestDaemon { daemon, dir } = self;
            let memory = daemon.config.memory.budget;
            drop(daemon);
            let daemon = Daemon::new(config_in(dir.path(), &format!("{memory} B")))?;
            Ok(TestDaemon { daemon, dir })
        }
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
        assert_eq!(answer.fds.len(), 3, "two pools and the stats page");
        let Reply::Registered(reg) = answer.outcome.unwrap() else {
            panic!()
        };
        assert_eq!(reg.pools.len(), 2);
        let page = reg.stats.expect("a stats page");
        assert_eq!((page.fd, page.cores, page.version), (2, 2, stats::VERSION));
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
    fn resize_of_an_unregistered_allocation_adds_and_drops_pools_at_once() {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        ok(d.handle(&caller(1, 0), alloc("echo", 1), now));
        let Reply::Resized(a) = ok(d.handle(&caller(1, 0), cores("echo", 2), now)) else {
            panic!()
        };
        assert_eq!(a.cpus, vec![0, 1]);
        assert_eq!(d.dataplanes["echo"].pools.len(), 2);
        ok(d.handle(&caller(1, 0), cores("echo", 1), now));
        assert_eq!(d.dataplanes["echo"].pools.len(), 1);
        assert!(d.take_commands().is_empty(), "nothing runs: no command");
    }

    fn cores(name: &str, n: u32) -> Request {
        Request::Cores {
            name: name.into(),
            n,
        }
    }

    /// A daemon with `echo` allocated with one core and registered on
    /// connection 2 (its lifeline).
    fn running_echo() -> TestDaemon {
        let mut d = daemon("64 MiB");
        let now = Instant::now();
        ok(d.handle(&caller(1, 0), alloc("echo", 1), now));
        let register = Request::Register {
            name: "echo".into(),
        };
        let answer = d.handle(&caller(2, 0), register, now).unwrap();
        let Ok(Reply::Registered(reg)) = answer.outcome else {
            panic!("registration failed")
        };
        assert_eq!(
            reg.stats.unwrap().cores,
            2,
            "the page has room for the port's 2 queues"
        );
        d
    }

    /// The one command sent since the last call: (lifeline, frame, fds).
    fn command(d: &mut Daemon) -> (ConnId, CommandFrame, Vec<OwnedFd>) {
        let mut sent = d.take_commands();
        assert_eq!(sent.len(), 1, "one command");
        let (conn, bytes, fds) = sent.pop().unwrap();
        (conn, proto::decode_command(&bytes).unwrap(), fds)
    }

    fn answer(d: &mut Daemon, cmd: u64, result: Result<u32, String>) {
        d.command_answered(ConnId(2), Ok(CommandAnswer { cmd, result }));
    }

    fn saved_cpus(d: &Daemon) -> Vec<u32> {
        let saved = state::load(&d.files.state).unwrap().unwrap();
        saved.dataplanes[0].allocation.cpus.clone()
    }

    #[test]
    fn growing_a_running_dataplane_takes_cores_first_and_answers_when_it_confirms() {
        let mut d = running_echo();
        let now = Instant::now();
        let before = d.resources.get("echo").unwrap().clone();
        assert!(
            d.handle(&caller(1, 0), cores("echo", 2), now).is_none(),
            "deferred"
        );
        let (conn, frame, fds) = command(&mut d);
        assert_eq!(conn, ConnId(2), "sent on the lifeline");
        let Command::Resize { allocation, pools } = frame.command;
        assert_eq!(allocation.cpus, vec![0, 1]);
        assert_eq!(pools.len(), 1);
        assert_eq!((pools[0].queue, pools[0].fd), (1, 0));
        assert_eq!(fds.len(), 1, "the added core's pool memfd");
        let len = File::from(fds.into_iter().next().unwrap())
            .metadata()
            .unwrap()
            .len();
        assert_eq!(len, allocation.pool_bytes);
        // The books hold the new core while the dataplane acts, and so
        // does the state file.
        assert!(d.resources.free_cores().is_empty());
        assert_eq!(saved_cpus(&d), vec![0, 1]);
        // Meanwhile others are served, and a second resize is busy.
        ok(d.handle(&caller(3, 0), Request::Status, now));
        let e = err(d.handle(&caller(3, 0), cores("echo", 1), now));
        assert_eq!(e.code, ErrorCode::Busy, "{e}");
        assert!(d.take_finished().is_empty());
        answer(&mut d, frame.cmd, Ok(2));
        let (to, done) = d.take_finished().pop().expect("the caller is answered");
        assert_eq!(to, ConnId(1));
        let Ok(Reply::Resized(a)) = done.outcome else {
            panic!("{:?}", done.outcome)
        };
        assert_eq!(a, allocation);
        assert_eq!(d.dataplanes["echo"].pools.len(), 2);
        assert_ne!(a.reta, before.reta);
        let logs = d.logs("echo", None).unwrap();
        assert!(
            logs.lines.iter().any(|l| l
                .text
                .contains("resized from 1 to 2 cores (asked by uid 0)")),
            "{logs:?}"
        );
    }

    #[test]
    fn a_refused_grow_is_rolled_back_exactly() {
        let mut d = running_echo();
        let now = Instant::now();
        let before = d.resources.get("echo").unwrap().clone();
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        let (_, frame, _) = command(&mut d);
        answer(&mut d, frame.cmd, Err("no thread for cpu 1".into()));
        let (_, done) = d.take_finished().pop().unwrap();
        let e = done.outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::DataplaneFailed);
        assert!(e.message.contains("no thread for cpu 1"), "{e}");
        assert_eq!(
            d.resources.get("echo").unwrap(),
            &before,
            "reta and cpus as before"
        );
        assert_eq!(d.resources.free_cores(), vec![1]);
        assert_eq!(d.dataplanes["echo"].pools.len(), 1);
        assert_eq!(saved_cpus(&d), vec![0]);
        d.resources.check_invariants().unwrap();
    }

    #[test]
    fn a_malformed_answer_fails_the_resize_and_is_logged() {
        let mut d = running_echo();
        let now = Instant::now();
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        let (_, frame, _) = command(&mut d);
        d.command_answered(ConnId(2), Err("answer: missing field `cmd`".into()));
        let (_, done) = d.take_finished().pop().unwrap();
        assert_eq!(done.outcome.unwrap_err().code, ErrorCode::DataplaneFailed);
        assert_eq!(d.resources.free_cores(), vec![1]);
        // An ok for another command, or with another core count, is no
        // confirmation either.
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        let (_, second, _) = command(&mut d);
        assert_ne!(second.cmd, frame.cmd);
        answer(&mut d, frame.cmd, Ok(2));
        assert!(d.take_finished().pop().unwrap().1.outcome.is_err());
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        let (_, third, _) = command(&mut d);
        answer(&mut d, third.cmd, Ok(7));
        assert!(d.take_finished().pop().unwrap().1.outcome.is_err());
        assert_eq!(d.resources.free_cores(), vec![1]);
        let logs = d.logs("echo", None).unwrap();
        let malformed = logs
            .lines
            .iter()
            .filter(|l| l.text.contains("malformed answer"))
            .count();
        assert_eq!(malformed, 3, "{logs:?}");
        // An answer with nothing outstanding is dropped, with a line.
        answer(&mut d, third.cmd, Ok(2));
        assert!(d.take_finished().is_empty());
    }

    #[test]
    fn a_shrink_gives_cores_back_only_when_the_dataplane_confirms() {
        let mut d = running_echo();
        let now = Instant::now();
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        let (_, grow, _) = command(&mut d);
        answer(&mut d, grow.cmd, Ok(2));
        d.take_finished();
        assert!(d.handle(&caller(1, 0), cores("echo", 1), now).is_none());
        let (_, frame, fds) = command(&mut d);
        assert!(fds.is_empty());
        let Command::Resize { allocation, pools } = frame.command;
        assert!(pools.is_empty());
        assert_eq!(allocation.cpus, vec![0]);
        assert!(allocation.reta.iter().all(|&q| q == 0));
        assert!(
            d.resources.free_cores().is_empty(),
            "still held while it acts"
        );
        answer(&mut d, frame.cmd, Ok(1));
        let Ok(Reply::Resized(a)) = d.take_finished().pop().unwrap().1.outcome else {
            panic!()
        };
        assert_eq!(&a, d.resources.get("echo").unwrap());
        assert_eq!(d.resources.free_cores(), vec![1]);
        assert_eq!(d.dataplanes["echo"].pools.len(), 1);
        assert_eq!(saved_cpus(&d), vec![0]);
        // A refused shrink changes nothing.
        assert_eq!(
            err(d.handle(&caller(1, 0), cores("echo", 0), now)).code,
            ErrorCode::InvalidArgument
        );
        let Reply::Resized(same) = ok(d.handle(&caller(1, 0), cores("echo", 1), now)) else {
            panic!()
        };
        assert_eq!(same.cpus, vec![0], "the same count needs no command");
        assert!(d.take_commands().is_empty());
    }

    #[test]
    fn an_unanswered_resize_times_out_keeping_the_larger_allocation() {
        let mut d = running_echo();
        let now = Instant::now();
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        let (_, frame, _) = command(&mut d);
        d.tick(now + COMMAND_TIMEOUT - Duration::from_millis(1));
        assert!(d.take_finished().is_empty());
        assert_eq!(d.next_deadline(), Some(now + COMMAND_TIMEOUT));
        d.tick(now + COMMAND_TIMEOUT);
        let (to, done) = d.take_finished().pop().expect("the caller is told");
        assert_eq!(to, ConnId(1));
        let e = done.outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::DataplaneFailed);
        assert!(e.message.contains("did not answer"), "{e}");
        // Its cores are not lent while it may run on them.
        assert!(d.resources.free_cores().is_empty());
        let busy = err(d.handle(&caller(1, 0), cores("echo", 1), now));
        assert_eq!(busy.code, ErrorCode::Busy);
        assert!(busy.message.contains("core count is unknown"), "{busy}");
        // A late refusal settles it: the grow is rolled back, nobody waits.
        answer(&mut d, frame.cmd, Err("too late".into()));
        assert!(d.take_finished().is_empty());
        assert_eq!(d.resources.free_cores(), vec![1]);
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
    }

    #[test]
    fn a_dataplane_that_exits_mid_resize_releases_everything_and_the_caller_is_told() {
        let mut d = running_echo();
        let now = Instant::now();
        assert!(d.handle(&caller(1, 0), cores("echo", 2), now).is_none());
        command(&mut d);
        d.disconnected(ConnId(2));
        let (to, done) = d.take_finished().pop().unwrap();
        assert_eq!(to, ConnId(1));
        let e = done.outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::DataplaneFailed);
        assert!(e.message.contains("lifeline closed"), "{e}");
        assert_eq!(d.resources.free_cores(), vec![0, 1]);
        assert!(state::load(&d.files.state)
            .unwrap()
            .unwrap()
            .dataplanes
            .is_empty());
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
        assert_eq!(registered.fds.len(), 2);
        let (conn, answer) = d.take_finished().pop().expect("launch answered");
        assert_eq!(conn, ConnId(7));
        let Ok(Reply::Launched(l)) = answer.outcome else {
            panic!("{:?}", answer.outcome)
        };
        assert_eq!((l.pid, l.registered_ms), (pid, 30));
        assert_eq!(l.dataplane.state, DataplaneState::Running);
        assert_eq!(l.dataplane.pid, Some(pid));
        // The program dies. Its lifeline would close with it; here nobody
        // holds it, so the exit releases the dataplane after the grace.
        d.children.get_mut(&pid).unwrap().child.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.children.is_empty() || d.resources.free_cores().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "child not reaped or not released"
            );
            if d.dataplanes
                .values()
                .any(|dp| dp.holder.as_ref().is_some_and(|h| h.exited_at.is_some()))
            {
                let inotify = usize::from(d.log_watch.is_some());
                assert_eq!(
                    d.wake_fds().len(),
                    inotify,
                    "a seen exit is not polled again"
                );
                assert!(d.next_deadline().is_some(), "its grace is a deadline");
            }
            std::thread::sleep(Duration::from_millis(5));
            d.tick(Instant::now());
        }
        let texts = log_texts(&mut d, "echo");
        assert!(
            texts
                .iter()
                .any(|t| t.ends_with("exited (killed by signal 9)")),
            "{texts:?}"
        );
        assert!(
            texts.last().unwrap().contains("its lifeline is still open"),
            "{texts:?}"
        );
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
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "memory = \"8 MiB\"\nhugepages = \"on\"\n[api]\nsocket = {:?}\n[[ports]]\n\
             name = \"wire0\"\nkind = \"memif\"\nsocket = \"/tmp/ix-huge-test.sock\"\n\
             role = \"master\"\nqueues = 8\nip = \"10.0.0.1/24\"\n",
            dir.path().join("ixcpd.sock")
        );
        let mut d = Daemon::new(Config::from_toml(&text, &host).unwrap()).unwrap();
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

    fn register_as(d: &mut Daemon, conn: u64, name: &str) -> (Registration, Vec<OwnedFd>) {
        let answer = d
            .handle(
                &caller(conn, 0),
                Request::Register { name: name.into() },
                Instant::now(),
            )
            .expect("answered at once");
        let Ok(Reply::Registered(reg)) = answer.outcome else {
            panic!("{:?}", answer.outcome)
        };
        (reg, answer.fds)
    }

    fn stats_of(d: &mut Daemon, name: &str) -> StatsReply {
        let Reply::Stats(s) = ok(d.handle(
            &caller(1, 0),
            Request::Stats { name: name.into() },
            Instant::now(),
        )) else {
            panic!()
        };
        s
    }

    fn log_texts(d: &mut Daemon, name: &str) -> Vec<String> {
        let Reply::Logs(logs) = ok(d.handle(
            &caller(1, 0),
            Request::Logs {
                name: name.into(),
                lines: None,
            },
            Instant::now(),
        )) else {
            panic!()
        };
        logs.lines.into_iter().map(|l| l.text).collect()
    }

    fn reattach(d: &mut Daemon, conn: u64, name: &str, fds: Vec<OwnedFd>) -> Answer {
        d.handle_with_fds(
            &caller(conn, 0),
            Request::Reattach {
                name: name.into(),
                pid: std::process::id(),
            },
            fds,
            Instant::now(),
        )
        .expect("answered at once")
    }

    #[test]
    fn stats_reads_what_each_core_published_and_reports_a_broken_page() {
        let mut d = daemon("64 MiB");
        ok(d.handle(&caller(1, 0), alloc("echo", 2), Instant::now()));
        let before = stats_of(&mut d, "echo");
        assert_eq!(before.cores.len(), 2);
        assert!(before.note.unwrap().contains("nothing publishes yet"));
        assert_eq!(before.cores[0].age_ms, None);
        let (reg, mut fds) = register_as(&mut d, 2, "echo");
        // The dataplane's side: map the page and publish on core 1.
        let info = reg.stats.unwrap();
        let page = StatsPage::open(fds.remove(info.fd as usize), 2, true).unwrap();
        let published = stats::CoreStats {
            heartbeat_ns: dataplane::time::Instant::now().as_nanos(),
            publishes: 3,
            rx_packets: 1234,
            avg_batch_milli: 1500,
            ..stats::CoreStats::default()
        };
        page.writer(1).unwrap().publish(&published);
        let s = stats_of(&mut d, "echo");
        assert_eq!(s.note, None);
        assert_eq!((s.cores[1].core, s.cores[1].cpu), (1, 1));
        assert_eq!(s.cores[1].rx_packets, 1234);
        assert_eq!(s.cores[1].avg_batch_milli, 1500);
        assert!(s.cores[1].age_ms.is_some_and(|a| a < 1000));
        assert!(s.read_ns >= published.heartbeat_ns);
        assert_eq!(s.cores[0].publishes, 0);
        // A dataplane that scribbles over the header gets a note, not an
        // error, and the daemon goes on.
        let header = StatsPage::open(page.fd().try_clone_to_owned().unwrap(), 2, true).unwrap();
        drop(header);
        let raw = File::from(page.fd().try_clone_to_owned().unwrap());
        std::os::unix::fs::FileExt::write_at(&raw, &[0xff; 8], 0).unwrap();
        let s = stats_of(&mut d, "echo");
        assert!(s.cores.is_empty());
        assert!(s.note.unwrap().contains("magic"), "names the field");
        ok(d.handle(&caller(1, 0), Request::Status, Instant::now()));
    }

    #[test]
    fn the_state_file_follows_every_change() {
        let mut d = daemon("64 MiB");
        let path = d.files().state.clone();
        assert!(!path.exists(), "nothing to write yet");
        ok(d.handle(&caller(1, 0), alloc("echo", 1), Instant::now()));
        let saved = state::load(&path).unwrap().unwrap();
        assert_eq!(saved.dataplanes.len(), 1);
        assert_eq!(saved.dataplanes[0].holder, None);
        register_as(&mut d, 2, "echo");
        let saved = state::load(&path).unwrap().unwrap();
        let me = ProcessId::of(std::process::id()).unwrap();
        assert_eq!(saved.dataplanes[0].holder, Some(me));
        d.disconnected(ConnId(2));
        assert!(state::load(&path).unwrap().unwrap().dataplanes.is_empty());
        d.tidy_up_if_idle();
        assert!(!path.exists());
    }

    fn alloc_on(name: &str, port: &str) -> Request {
        Request::Allocate(AllocateArgs {
            name: name.into(),
            cores: 1,
            port: port.into(),
            buffers_per_core: Some(512),
            memory: None,
        })
    }

    #[test]
    fn a_restart_readopts_running_dataplanes_and_restores_allocations() {
        let mut d = two_port_daemon();
        ok(d.handle(&caller(1, 1000), alloc_on("echo", "a"), Instant::now()));
        ok(d.handle(&caller(1, 0), alloc_on("idle", "b"), Instant::now()));
        let (_, fds) = register_as(&mut d, 2, "echo");
        let page = fds.last().unwrap().try_clone().unwrap();
        let used = d.resources().view().memory.used;
        // ixcpd dies; the dataplane (this process) runs on.
        let mut d = restart_with_ports(d).unwrap();
        let Reply::Status(s) = ok(d.handle(&caller(1, 0), Request::Status, Instant::now())) else {
            panic!()
        };
        let echo = s.dataplanes.iter().find(|x| x.name == "echo").unwrap();
        assert_eq!(echo.state, DataplaneState::Running);
        assert_eq!(echo.pid, Some(std::process::id()));
        assert!(!echo.lifeline, "not reattached yet");
        let idle = s.dataplanes.iter().find(|x| x.name == "idle").unwrap();
        assert_eq!(idle.state, DataplaneState::Allocated);
        assert_eq!(d.resources().view().memory.used, used);
        assert!(d.resources().free_cores().is_empty());
        assert!(log_texts(&mut d, "echo")[0].starts_with("re-adopted after an ixcpd restart"));
        assert!(stats_of(&mut d, "echo")
            .note
            .unwrap()
            .contains("returns when the dataplane reattaches"));
        // The restored allocation got fresh pools to hand out.
        let (reg, fds) = register_as(&mut d, 3, "idle");
        assert_eq!(fds.len(), reg.pools.len() + 1);
        // The owner (uid 1000) may not be impersonated by another uid.
        let e = err(d.handle_with_fds(
            &caller(9, 1001),
            Request::Reattach {
                name: "echo".into(),
                pid: std::process::id(),
            },
            Vec::new(),
            Instant::now(),
        ));
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        // The process reattaches with its page: the new lifeline counts.
        let answer = reattach(&mut d, 4, "echo", vec![page]);
        let Ok(Reply::Reattached(r)) = answer.outcome else {
            panic!("{:?}", answer.outcome)
        };
        assert!(r.stats && r.dataplane.lifeline);
        assert_eq!(stats_of(&mut d, "echo").note, None);
        let again = reattach(&mut d, 5, "echo", Vec::new()).outcome.unwrap_err();
        assert_eq!(again.code, ErrorCode::AlreadyExists);
        d.disconnected(ConnId(4));
        assert_eq!(d.resources().free_cores(), [0]);
        assert!(log_texts(&mut d, "echo")
            .last()
            .unwrap()
            .contains("lifeline closed"));
    }

    #[test]
    fn reattach_is_refused_to_other_processes_and_unregistered_names() {
        let mut d = daemon("64 MiB");
        ok(d.handle(&caller(1, 0), alloc("echo", 1), Instant::now()));
        let e = reattach(&mut d, 2, "echo", Vec::new()).outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("is not registered"), "{e}");
        let e = reattach(&mut d, 2, "nope", Vec::new()).outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = err(d.handle(
            &caller(2, 0),
            Request::Reattach {
                name: "echo".into(),
                pid: 1,
            },
            Instant::now(),
        ));
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("pid 1 is not the caller"), "{e}");
        register_as(&mut d, 3, "echo");
        let e = reattach(&mut d, 4, "echo", Vec::new()).outcome.unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists, "the lifeline is open");
        // A pid that is not the registrant's.
        let mut d = d.restart().unwrap();
        assert!(d.dataplanes["echo"].holder.is_some());
        let other = Caller {
            conn: ConnId(5),
            cred: PeerCred {
                pid: 1,
                uid: 0,
                gid: 0,
            },
        };
        let e = err(d.handle(
            &other,
            Request::Reattach {
                name: "echo".into(),
                pid: 1,
            },
            Instant::now(),
        ));
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("registered by pid"), "{e}");
        // A page that is not one: the lifeline is restored all the same.
        let file = File::open("/proc/self/stat").unwrap();
        let answer = reattach(&mut d, 6, "echo", vec![OwnedFd::from(file)]);
        let Ok(Reply::Reattached(r)) = answer.outcome else {
            panic!("{:?}", answer.outcome)
        };
        assert!(!r.stats && r.dataplane.lifeline);
        let note = stats_of(&mut d, "echo").note.unwrap();
        assert!(note.contains("the stats page sent with reattach"), "{note}");
    }

    /// Writes a state file as an earlier daemon would have.
    fn write_state(d: &TestDaemon, entries: Vec<SavedDataplane>, boot_id: String) {
        let saved = Saved {
            version: STATE_VERSION,
            boot_id,
            ixcpd_pid: 1,
            dataplanes: entries,
        };
        state::save(&d.files().state, &state::encode(&saved)).unwrap();
    }

    fn entry(name: &str, cpu: u32, port: &str, holder: Option<ProcessId>) -> SavedDataplane {
        SavedDataplane {
            allocation: Allocation {
                name: name.into(),
                port: port.into(),
                cpus: vec![cpu],
                buffers_per_core: 512,
                pool_bytes: round_up_page(512 * 2176),
                page_size: 4096,
                huge: false,
                reta: vec![0; crate::resources::FLOW_GROUPS],
            },
            owner_uid: 0,
            since_unix_ms: 1,
            huge: false,
            holder,
            launched: None,
            policy: None,
        }
    }

    fn round_up_page(n: u64) -> u64 {
        n.div_ceil(4096) * 4096
    }

    /// A config with two ports, for two dataplanes.
    fn two_port_daemon() -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let host = Host {
            cpus: CpuList(vec![0, 1]),
            hugepage_size: 2 * MIB,
            hugepages_free: 0,
        };
        let text = format!(
            "memory = \"64 MiB\"\n[api]\nsocket = {:?}\n\
             [[ports]]\nname = \"a\"\nkind = \"memif\"\nsocket = \"/tmp/ix-a.sock\"\n\
             role = \"master\"\nqueues = 1\nip = \"10.0.0.1/24\"\n\
             [[ports]]\nname = \"b\"\nkind = \"memif\"\nsocket = \"/tmp/ix-b.sock\"\n\
             role = \"master\"\nqueues = 1\nip = \"10.0.1.1/24\"\n",
            dir.path().join("ixcpd.sock")
        );
        let config = Config::from_toml(&text, &host).unwrap();
        TestDaemon {
            daemon: Daemon::new(config.clone()).unwrap(),
            dir,
        }
    }

    fn restart_with_ports(d: TestDaemon) -> Result<TestDaemon, StateError> {
        let config = d.daemon.config.clone();
        let TestDaemon { daemon, dir } = d;
        drop(daemon);
        Ok(TestDaemon {
            daemon: Daemon::new(config)?,
            dir,
        })
    }

    #[test]
    fn loading_releases_dead_and_reused_pids_and_keeps_the_living() {
        let d = two_port_daemon();
        let me = ProcessId::of(std::process::id()).unwrap();
        let mut dead = std::process::Command::new("/bin/true").spawn().unwrap();
        let dead_id = ProcessId::of(dead.id()).unwrap();
        dead.wait().unwrap();
        let reused = ProcessId {
            start: me.start.wrapping_sub(1),
            ..me
        };
        write_state(
            &d,
            vec![
                entry("alive", 0, "a", Some(me)),
                entry("dead", 1, "b", Some(dead_id)),
            ],
            process::boot_id(),
        );
        let mut d = restart_with_ports(d).unwrap();
        assert_eq!(d.resources().free_cores(), [1]);
        assert!(d.dataplanes["alive"].holder.is_some());
        assert!(!d.dataplanes.contains_key("dead"));
        let texts = log_texts(&mut d, "dead");
        assert!(
            texts[0].contains("exited while no ixcpd ran: released cpus [1]"),
            "{texts:?}"
        );
        // The state file now says what was kept.
        let saved = state::load(&d.files().state).unwrap().unwrap();
        assert_eq!(saved.dataplanes.len(), 1);
        // The same pid with another start time is another process.
        write_state(
            &d,
            vec![entry("alive", 0, "a", Some(reused))],
            process::boot_id(),
        );
        let d = restart_with_ports(d).unwrap();
        assert!(d.dataplanes.is_empty() && d.resources().free_cores().len() == 2);
        // So is every process of another boot.
        write_state(
            &d,
            vec![entry("alive", 0, "a", Some(me))],
            "another-boot".into(),
        );
        let d = restart_with_ports(d).unwrap();
        assert!(d.dataplanes.is_empty());
    }

    #[test]
    fn a_readopted_dataplane_that_dies_before_reattaching_is_released_by_its_pidfd() {
        let d = two_port_daemon();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        write_state(
            &d,
            vec![entry("echo", 0, "a", Some(id))],
            process::boot_id(),
        );
        let mut d = restart_with_ports(d).unwrap();
        assert_eq!(d.wake_fds().len(), 1, "its pidfd is polled");
        assert_eq!(d.next_deadline(), None, "no polling needed");
        d.tick(Instant::now());
        assert!(d.dataplanes.contains_key("echo"));
        child.kill().unwrap();
        child.wait().unwrap();
        d.tick(Instant::now());
        assert!(d.dataplanes.is_empty());
        let texts = log_texts(&mut d, "echo");
        assert!(
            texts
                .last()
                .unwrap()
                .contains("exited before it reattached (seen by its pidfd)"),
            "{texts:?}"
        );
    }

    #[test]
    fn a_corrupt_or_conflicting_state_file_stops_the_start_with_what_to_do() {
        let d = two_port_daemon();
        let path = d.files().state.clone();
        std::fs::write(&path, b"{\"version\":1,\"dataplanes\":[{\"allocation\"").unwrap();
        let err = Daemon::new(d.config().clone()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("move the file away"), "{err}");
        assert!(path.exists(), "left for the operator");
        // A running dataplane on a CPU the config no longer lists.
        let d = two_port_daemon();
        let me = ProcessId::of(std::process::id()).unwrap();
        write_state(
            &d,
            vec![entry("echo", 7, "a", Some(me))],
            process::boot_id(),
        );
        let err = restart_with_ports(d).unwrap_err();
        assert!(matches!(err, StateError::Conflict { .. }), "{err}");
        assert!(
            err.to_string().contains("dataplane echo (pid")
                && err
                    .to_string()
                    .contains("cpu 7 is not one the config gives out"),
            "{err}"
        );
        // Nothing running on it: dropped with a note instead.
        let d = two_port_daemon();
        write_state(&d, vec![entry("idle", 7, "a", None)], process::boot_id());
        let mut d = restart_with_ports(d).unwrap();
        assert!(d.dataplanes.is_empty());
        assert!(log_texts(&mut d, "idle")[0].contains("not restored after a restart: cpu 7"));
    }

    #[test]
    fn a_launched_program_outlives_a_restart_with_its_output() {
        let mut d = daemon("64 MiB");
        let script = "echo first; sleep 30";
        assert!(d
            .handle(
                &caller(7, 0),
                launch("echo", "/bin/sh", &["-c", script]),
                Instant::now()
            )
            .is_none());
        let pid = *d.children.keys().next().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log_texts(&mut d, "echo")
            .iter()
            .any(|t| t == "stdout: first")
        {
            assert!(Instant::now() < deadline, "no output");
            std::thread::sleep(Duration::from_millis(5));
            d.tick(Instant::now());
        }
        let mut d = d.restart().unwrap();
        assert_eq!(d.children.keys().copied().collect::<Vec<_>>(), [pid]);
        d.tick(Instant::now());
        let texts = log_texts(&mut d, "echo");
        assert!(
            texts.contains(&"stdout: first".to_owned()),
            "read again from the file: {texts:?}"
        );
        // Not registered, so `stop` ends it at once; its exit is seen.
        let Reply::Stopped(s) = ok(d.handle(
            &caller(1, 0),
            Request::Stop {
                name: "echo".into(),
            },
            Instant::now(),
        )) else {
            panic!()
        };
        assert!(s.released);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.children.is_empty() {
            assert!(Instant::now() < deadline, "exit not seen");
            std::thread::sleep(Duration::from_millis(5));
            d.tick(Instant::now());
        }
        assert!(log_texts(&mut d, "echo")
            .iter()
            .any(|t| t.contains("status unknown: an earlier ixcpd started it")));
        assert_eq!(
            std::fs::read_dir(&d.files().logs).unwrap().count(),
            0,
            "files removed"
        );
        // The sh process was the first daemon's child: reap it here.
        assert!(crate::sys::child::exited_within(
            pid,
            Duration::from_secs(1)
        ));
    }
}
