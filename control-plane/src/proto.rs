//! The ixcpd API: JSON messages over a Unix `SOCK_SEQPACKET` socket.
//!
//! # Transport
//!
//! One request or response is one seqpacket message (a *frame*) of at most
//! [`MAX_FRAME`] bytes of UTF-8 JSON. Seqpacket keeps message boundaries
//! (no length prefix to get wrong), is reliable and ordered, detects
//! truncation (`MSG_TRUNC`), and carries file descriptors with the message
//! they belong to (`SCM_RIGHTS`) — the same transport memif uses for its
//! control channel. Requests on one connection are answered in order,
//! one response per request.
//!
//! # Messages
//!
//! A request is a JSON object with the protocol version `v` (this is
//! [`VERSION`] 1), a client-chosen `id` echoed in the response, and `op`
//! naming the request; the request's fields sit beside them:
//!
//! ```json
//! {"v":1,"id":7,"op":"allocate","name":"echo","cores":2,"port":"wire0"}
//! ```
//!
//! A response carries `v`, the `id` (null when the request was too broken
//! to have one) and either `ok` with a result tagged by `type`, or `error`
//! with a stable `code` and a message for people:
//!
//! ```json
//! {"v":1,"id":7,"ok":{"type":"allocated","name":"echo","port":"wire0","cpus":[0,1],…}}
//! {"v":1,"id":8,"error":{"code":"insufficient_resources",
//!   "message":"not enough cores: asked 3, free 1 (of 2)"}}
//! ```
//!
//! Requests ([`Request`]): `status`, `resources`, `allocate` {name, cores,
//! port, buffers_per_core?, memory? (bytes)}, `launch` {the same, plus
//! isolation?, policy?, program, args, cwd?}, answered once the program
//! registered (or failed to), `stop` {name}, `stats` {name},
//! `cores` {name, n}, `logs` {name, lines?}, `register` {name}: a
//! dataplane claiming its allocation at start-up, and `reattach` {name,
//! pid}: a running dataplane whose lifeline closed (ixcpd restarted)
//! restoring it. The `registered` reply carries one buffer-pool memfd per
//! core as `SCM_RIGHTS`, in the order of its `pools` list, then the stats
//! page's memfd (`stats.fd`); the registering connection then stays open
//! as the dataplane's lifeline (see the server). `reattach` is the one
//! request that may carry a descriptor: the dataplane's stats page, which
//! the restarted ixcpd did not have.
//!
//! # Commands to a running dataplane
//!
//! The lifeline also carries frames ixcpd sends *unasked*: commands to
//! the dataplane ([`CommandFrame`]). A command has `cmd` (ixcpd's id for
//! it) where a response has `id`, so a client tells the two apart; the
//! dataplane answers each with a [`CommandAnswer`] on the same
//! connection, echoing `cmd`, with either `ok` (its core count now) or
//! `error` (why not, for the dataplane's log). The one command of
//! version 1 is `resize`: the dataplane's new allocation (CPUs, the
//! redirection table after rebalancing; pools and memory per core are
//! unchanged) and, when it grows, one buffer-pool memfd per added core as
//! `SCM_RIGHTS`, listed in `pools` like the `registered` reply's:
//!
//! ```text
//! ← {"v":1,"cmd":3,"command":"resize","allocation":{"name":"echo",…,
//!    "cpus":[0,1,2],"reta":[0,1,2,0,…]},"pools":[{"queue":2,"fd":0,
//!    "bytes":8912896,"buffers":4096,"huge":false}]}  + 1 memfd
//! → {"v":1,"cmd":3,"ok":{"cores":3}}
//! ← {"v":1,"cmd":4,"command":"resize","allocation":{…,"cpus":[0]},"pools":[]}
//! → {"v":1,"cmd":4,"error":"cannot migrate flow group 7: timers pending"}
//! ```
//!
//! Both directions decode strictly ([`decode_command`],
//! [`decode_answer`]): unknown or missing fields, another version, both
//! or neither of `ok` and `error` are refused, and what ixcpd cannot
//! read from a dataplane counts as a failed command (logged), never a
//! crash. An answer takes no descriptors. Requests may still be sent on
//! the lifeline: a frame with `op` is a request, one without it on a
//! lifeline with a command outstanding is that command's answer.
//!
//! A frame that is too large, empty, cut short, not UTF-8, not JSON, not
//! an object, of another version, with an unknown `op`, an unknown field,
//! or a missing or mistyped one, or with descriptors a request does not
//! take, is answered with an error naming what is wrong; the connection
//! stays open.
//!
//! Compatibility: fields may be added to replies within version 1; clients
//! ignore fields they do not know, and error codes they do not know read as
//! [`ErrorCode::Unknown`]. Requests reject unknown fields, so a typo is an
//! error rather than a silently ignored option.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Policy, PortConfig};
use crate::resources::{Allocation, ResourcesView};
use dataplane::stats::CoreStats;

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;
/// Largest frame, request or response, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// How a launched dataplane is isolated from its application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Elastic threads run as vCPUs of a KVM guest.
    Kvm,
    /// Elastic threads run as plain threads of the application's process.
    Process,
}

/// Fields of `allocate`: what `ixctl launch` asks for, without the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateArgs {
    /// The dataplane's name.
    pub name: String,
    /// Cores wanted.
    pub cores: u32,
    /// The port wanted.
    pub port: String,
    /// Buffers per core (default 4096); not with `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffers_per_core: Option<u32>,
    /// Total packet memory in bytes, split over the cores; not with
    /// `buffers_per_core`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

/// Fields of `launch`: `ixctl launch --name NAME --cores N --port P
/// [--isolation kvm|process] -- PROGRAM ARGS…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchArgs {
    /// The dataplane's name.
    pub name: String,
    /// Cores wanted.
    pub cores: u32,
    /// The port wanted.
    pub port: String,
    /// Buffers per core; not with `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffers_per_core: Option<u32>,
    /// Total packet memory in bytes; not with `buffers_per_core`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Isolation mode (default: process; `kvm` is refused until the KVM
    /// runtime exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Core policy (default: the daemon's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// The program linked with libix.
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Directory the program starts in (default `/`); `ixctl` sends its
    /// own, so relative paths in `args` mean what the operator meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A request, tagged by `op` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The daemon and every dataplane.
    Status,
    /// Every core, the memory budget and every port, and who holds them.
    Resources,
    /// Reserve resources under a name (the dataplane registers later).
    Allocate(AllocateArgs),
    /// Allocate and start a program as a dataplane.
    Launch(LaunchArgs),
    /// Stop a dataplane and return its resources.
    Stop {
        /// The dataplane.
        name: String,
    },
    /// A dataplane's statistics.
    Stats {
        /// The dataplane.
        name: String,
    },
    /// Change a dataplane's core count.
    Cores {
        /// The dataplane.
        name: String,
        /// The new core count.
        n: u32,
    },
    /// What ixcpd recorded about a dataplane.
    Logs {
        /// The dataplane.
        name: String,
        /// At most this many of the latest lines (default all kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<u32>,
    },
    /// A dataplane at start-up claiming its allocation.
    Register {
        /// The allocation's name.
        name: String,
    },
    /// A running dataplane restoring its lifeline after ixcpd restarted;
    /// may carry its stats page's memfd.
    Reattach {
        /// The dataplane's name.
        name: String,
        /// Its pid, which must be the connecting process's.
        pid: u32,
    },
}

/// The request names, for messages.
pub const OPS: &[&str] = &[
    "status",
    "resources",
    "allocate",
    "launch",
    "stop",
    "stats",
    "cores",
    "logs",
    "register",
    "reattach",
];

impl Request {
    /// The `op` of this request.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Resources => "resources",
            Request::Allocate(_) => "allocate",
            Request::Launch(_) => "launch",
            Request::Stop { .. } => "stop",
            Request::Stats { .. } => "stats",
            Request::Cores { .. } => "cores",
            Request::Logs { .. } => "logs",
            Request::Register { .. } => "register",
            Request::Reattach { .. } => "reattach",
        }
    }
}

/// A request with its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrame {
    /// Protocol version.
    pub v: u32,
    /// Client-chosen id, echoed in the response.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// Stable error codes; clients branch on these, people read the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame exceeds [`MAX_FRAME`].
    FrameTooLarge,
    /// The frame is empty.
    EmptyFrame,
    /// The frame is not UTF-8.
    BadUtf8,
    /// The frame ends inside a JSON value.
    Truncated,
    /// The frame is not JSON.
    BadJson,
    /// The JSON is not a valid request (not an object, a missing, unknown
    /// or mistyped field).
    BadRequest,
    /// `op` names no request.
    UnknownRequest,
    /// `v` is a version this daemon does not speak.
    UnsupportedVersion,
    /// The peer may not use the API.
    Unauthorised,
    /// The peer may not do this to that dataplane.
    PermissionDenied,
    /// No dataplane has that name.
    NotFound,
    /// The name is taken, or the dataplane is already registered.
    AlreadyExists,
    /// Not enough cores, queues or memory.
    InsufficientResources,
    /// A field's value is not acceptable.
    InvalidArgument,
    /// The request needs something this daemon cannot do yet.
    NotSupported,
    /// A launched program could not start, exited before registering, or
    /// did not register in time.
    LaunchFailed,
    /// Too many clients, or the dataplane is busy with another resize.
    Busy,
    /// A running dataplane refused a command, answered one in a way
    /// ixcpd cannot read, did not answer in time, or exited meanwhile.
    DataplaneFailed,
    /// ixcpd failed (an OS error).
    Internal,
    /// A code this client does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of error.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// The daemon in a `status` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// ixcpd's version.
    pub version: String,
    /// Protocol version.
    pub protocol: u32,
    /// ixcpd's pid.
    pub pid: u32,
    /// Milliseconds since ixcpd started.
    pub uptime_ms: u64,
    /// The API socket.
    pub socket: String,
    /// The default core policy.
    pub policy: Policy,
    /// Clients connected now.
    pub clients: u32,
    /// Requests answered since start.
    pub requests: u64,
    /// Frames refused as malformed since start.
    pub malformed: u64,
    /// Connections refused since start (unauthorised, or too many).
    pub refused: u64,
}

/// Where a dataplane is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneState {
    /// Resources reserved; no process has registered.
    Allocated,
    /// A process registered and holds its lifeline.
    Running,
    /// Asked to stop; resources return when its lifeline closes.
    Stopping,
}

/// One dataplane in a `status` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneInfo {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: DataplaneState,
    /// The registered process, when running or stopping.
    pub pid: Option<u32>,
    /// Its port.
    pub port: String,
    /// Its CPUs.
    pub cpus: Vec<u32>,
    /// Buffers per core.
    pub buffers_per_core: u32,
    /// Packet memory held, bytes.
    pub memory_bytes: u64,
    /// When it was allocated, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// Whether ixcpd holds its lifeline now: false for a dataplane a
    /// restarted ixcpd re-adopted until it reattaches (and for one that
    /// never registered).
    #[serde(default)]
    pub lifeline: bool,
    /// Its core policy (from a daemon without policies: none).
    #[serde(default = "no_policy")]
    pub policy: Policy,
}

fn no_policy() -> Policy {
    Policy::None
}

/// Reply to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon.
    pub daemon: DaemonInfo,
    /// Every dataplane, by name.
    pub dataplanes: Vec<DataplaneInfo>,
}

/// Reply to `stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReply {
    /// The dataplane.
    pub name: String,
    /// True when its resources are already back in the pool; false when
    /// its process was signalled and they return when it exits.
    pub released: bool,
    /// The process signalled, if any.
    pub pid: Option<u32>,
}

/// Reply to `stats`: the control plane's view of one dataplane, and what
/// each of its cores last published in its stats page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// State and holdings.
    pub dataplane: DataplaneInfo,
    /// The full allocation, with its redirection table.
    pub allocation: Allocation,
    /// One entry per core whose record could be read, by core index.
    #[serde(default)]
    pub cores: Vec<CoreStatsView>,
    /// Why some or all cores are missing (no page yet, a record that
    /// would not hold still, a page whose header was overwritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// ixcpd's monotonic clock (ns, the clock dataplanes publish by) when
    /// it read the page.
    #[serde(default)]
    pub read_ns: u64,
}

/// What one core published (see `dataplane::stats` for the definitions).
/// Counters are totals since the core started; averages are fixed-point
/// integers with their unit in the name. The dataplane writes these
/// numbers: ixcpd passes them on, it does not vouch for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStatsView {
    /// Core index (= queue).
    pub core: u16,
    /// The CPU it was allocated.
    pub cpu: u32,
    /// Its loop clock at the publication, ns (`CLOCK_MONOTONIC`).
    pub heartbeat_ns: u64,
    /// Milliseconds since that publication by ixcpd's clock; `None`
    /// before the first, or for a heartbeat ahead of ixcpd's clock.
    pub age_ms: Option<u64>,
    /// Publications so far (one per 10 ms of loop).
    pub publishes: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Frames dropped.
    pub drops: u64,
    /// Live TCP connections.
    pub connections: u64,
    /// Turns that received frames.
    pub batches: u64,
    /// Loop turns.
    pub turns: u64,
    /// Turns with nothing to do.
    pub idle_turns: u64,
    /// RX polls that returned the batch bound.
    pub full_polls: u64,
    /// Events delivered to the application.
    pub events: u64,
    /// The batch bound B.
    pub batch_bound: u64,
    /// Moving average of the batch size, 1/1000 frame.
    pub avg_batch_milli: u64,
    /// Moving average of the RX queue depth, 1/1000 frame.
    pub avg_queue_milli: u64,
    /// Moving average of the idle fraction, parts per million.
    pub avg_idle_ppm: u64,
    /// Moving average of the fraction of polls that hit the bound, ppm.
    pub avg_full_ppm: u64,
    /// Moving average of the loop time, ns per turn.
    pub avg_loop_ns: u64,
}

impl CoreStatsView {
    /// The view of core `core` on `cpu` of what it published, read when
    /// ixcpd's monotonic clock said `now_ns`.
    pub fn new(core: u16, cpu: u32, s: &CoreStats, now_ns: u64) -> CoreStatsView {
        CoreStatsView {
            core,
            cpu,
            heartbeat_ns: s.heartbeat_ns,
            age_ms: (s.publishes > 0 && s.heartbeat_ns <= now_ns)
                .then(|| (now_ns - s.heartbeat_ns) / 1_000_000),
            publishes: s.publishes,
            rx_packets: s.rx_packets,
            tx_packets: s.tx_packets,
            drops: s.drops,
            connections: s.connections,
            batches: s.batches,
            turns: s.turns,
            idle_turns: s.idle_turns,
            full_polls: s.full_polls,
            events: s.events,
            batch_bound: s.batch_bound,
            avg_batch_milli: s.avg_batch_milli,
            avg_queue_milli: s.avg_queue_milli,
            avg_idle_ppm: s.avg_idle_ppm,
            avg_full_ppm: s.avg_full_ppm,
            avg_loop_ns: s.avg_loop_ns,
        }
    }
}

/// One line of a dataplane's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What happened.
    pub text: String,
}

/// Reply to `logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The dataplane.
    pub name: String,
    /// The latest lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Older lines no longer kept.
    pub dropped: u64,
}

/// Reply to `launch`: the program started and registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchReply {
    /// The dataplane, running.
    pub dataplane: DataplaneInfo,
    /// The process ixcpd started.
    pub pid: u32,
    /// Milliseconds from starting the program to its `register`.
    pub registered_ms: u64,
}

/// One buffer pool in a `registered` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFd {
    /// The queue (and core index) the pool belongs to.
    pub queue: u16,
    /// Index of its memfd among the fds received with the reply.
    pub fd: u32,
    /// Size of the memfd.
    pub bytes: u64,
    /// Buffers of [`crate::resources::BUF_SIZE`] bytes in it.
    pub buffers: u32,
    /// Whether it is hugepages.
    pub huge: bool,
}

/// The stats page in a `registered` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsFd {
    /// Index of its memfd among the fds received with the reply.
    pub fd: u32,
    /// Size of the memfd.
    pub bytes: u64,
    /// Records in it, one per core.
    pub cores: u32,
    /// Its layout version (`dataplane::stats::VERSION`).
    pub version: u64,
}

/// Reply to `register`: everything a dataplane needs to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// What it holds.
    pub allocation: Allocation,
    /// Its port's settings (backend, addresses).
    pub port: PortConfig,
    /// Its buffer pools; their memfds arrive with the reply.
    pub pools: Vec<PoolFd>,
    /// The page its cores publish their statistics in; its memfd arrives
    /// after the pools'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsFd>,
}

/// Reply to `reattach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReattachReply {
    /// The dataplane, its lifeline restored.
    pub dataplane: DataplaneInfo,
    /// Whether ixcpd could map the stats page sent with the request (a
    /// dataplane without one keeps running; `stats` then says why).
    pub stats: bool,
}

/// A successful result, tagged by `type` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// To `status`.
    Status(StatusReply),
    /// To `resources`.
    Resources(ResourcesView),
    /// To `allocate`.
    Allocated(Allocation),
    /// To `stop`.
    Stopped(StopReply),
    /// To `stats`.
    Stats(StatsReply),
    /// To `cores`.
    Resized(Allocation),
    /// To `logs`.
    Logs(LogsReply),
    /// To `register`; fds attached.
    Registered(Registration),
    /// To `launch`, once the program registered.
    Launched(LaunchReply),
    /// To `reattach`.
    Reattached(ReattachReply),
}

/// A response's result or error.
// One outcome exists per request in flight, briefly: boxing the larger
// variant would buy nothing but an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request succeeded.
    Ok(Reply),
    /// It did not.
    Error(ApiError),
}

/// A response with its envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// Protocol version.
    pub v: u32,
    /// The request's id; null when the request had none readable.
    pub id: Option<u64>,
    /// Result or error.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Encodes a request frame: `v`, `id`, `op`, then the request's fields.
pub fn encode_request(frame: &RequestFrame) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        v: u32,
        id: u64,
        #[serde(flatten)]
        request: &'a Request,
    }
    serde_json::to_vec(&Envelope {
        v: frame.v,
        id: frame.id,
        request: &frame.request,
    })
    .expect("requests always serialise")
}

/// Why a request frame could not be decoded, with the id to answer to
/// when one was readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The request's id, if it could be read.
    pub id: Option<u64>,
    /// The error to answer with.
    pub error: ApiError,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// The error for a frame of `len` bytes, over [`MAX_FRAME`].
pub fn frame_too_large(len: usize) -> ApiError {
    ApiError::new(
        ErrorCode::FrameTooLarge,
        format!("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes"),
    )
}

/// Decodes a request frame, naming what is wrong if it is not one.
pub fn decode_request(bytes: &[u8]) -> Result<RequestFrame, DecodeError> {
    let fail = |id, code, message: String| DecodeError {
        id,
        error: ApiError::new(code, message),
    };
    if bytes.len() > MAX_FRAME {
        return Err(DecodeError {
            id: None,
            error: frame_too_large(bytes.len()),
        });
    }
    if bytes.is_empty() {
        return Err(fail(
            None,
            ErrorCode::EmptyFrame,
            "empty frame (expected a JSON request)".into(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(
            None,
            ErrorCode::BadUtf8,
            format!(
                "frame is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let (code, what) = if e.is_eof() {
            (
                ErrorCode::Truncated,
                "frame ends inside a JSON value (was it cut short?)",
            )
        } else {
            (ErrorCode::BadJson, "frame is not JSON")
        };
        fail(
            None,
            code,
            format!(
                "{what}: {} at line {} column {}",
                strip_position(&e),
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(fail(
            None,
            ErrorCode::BadRequest,
            format!("a request is a JSON object, got {}", json_type(&value)),
        ));
    };
    let id = match map.remove("id") {
        None => {
            return Err(fail(
                None,
                ErrorCode::BadRequest,
                "missing field `id` (a number echoed in the response)".into(),
            ))
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            fail(
                None,
                ErrorCode::BadRequest,
                format!(
                    "field `id` must be a non-negative integer, got {}",
                    json_type(&v)
                ),
            )
        })?,
    };
    let v = match map.remove("v") {
        None => {
            return Err(fail(
                Some(id),
                ErrorCode::BadRequest,
                format!("missing field `v` (the protocol version; this ixcpd speaks {VERSION})"),
            ))
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            fail(
                Some(id),
                ErrorCode::BadRequest,
                format!("field `v` must be an integer, got {}", json_type(&v)),
            )
        })?,
    };
    if v != u64::from(VERSION) {
        return Err(fail(
            Some(id),
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} is not supported (this ixcpd speaks {VERSION})"),
        ));
    }
    let op = match map.get("op") {
        None => {
            return Err(fail(
                Some(id),
                ErrorCode::BadRequest,
                format!("missing field `op` (one of: {})", OPS.join(", ")),
            ))
        }
        Some(Value::String(op)) => op.clone(),
        Some(other) => {
            return Err(fail(
                Some(id),
                ErrorCode::BadRequest,
                format!("field `op` must be a string, got {}", json_type(other)),
            ))
        }
    };
    if !OPS.contains(&op.as_str()) {
        return Err(fail(
            Some(id),
            ErrorCode::UnknownRequest,
            format!(
                "unknown request {op:?} (expected one of: {})",
                OPS.join(", ")
            ),
        ));
    }
    if matches!(op.as_str(), "status" | "resources") {
        if let Some(extra) = map.keys().find(|k| *k != "op") {
            return Err(fail(
                Some(id),
                ErrorCode::BadRequest,
                format!("{op}: unknown field `{extra}` ({op} takes no fields)"),
            ));
        }
    }
    let request: Request = serde_json::from_value(Value::Object(map)).map_err(|e| {
        fail(
            Some(id),
            ErrorCode::BadRequest,
            format!("{op}: {}", strip_position(&e)),
        )
    })?;
    Ok(RequestFrame {
        v: VERSION,
        id,
        request,
    })
}

/// Encodes a response frame; one that would exceed [`MAX_FRAME`] is
/// replaced by an `internal` error saying so.
pub fn encode_response(frame: &ResponseFrame) -> Vec<u8> {
    let bytes = serde_json::to_vec(frame).expect("responses always serialise");
    if bytes.len() <= MAX_FRAME {
        return bytes;
    }
    let error = ResponseFrame {
        v: VERSION,
        id: frame.id,
        outcome: Outcome::Error(ApiError::new(
            ErrorCode::Internal,
            format!(
                "the response of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
                bytes.len()
            ),
        )),
    };
    serde_json::to_vec(&error).expect("responses always serialise")
}

/// Decodes a response frame (client side).
pub fn decode_response(bytes: &[u8]) -> Result<ResponseFrame, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// A command ixcpd sends a registered dataplane on its lifeline, tagged
/// by `command` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Run with `allocation` from now on: start threads for added cores
    /// (their pools' memfds come with the frame, listed in `pools`), stop
    /// those of removed ones, and steer flow groups by its `reta`.
    Resize {
        /// The whole new allocation.
        allocation: Allocation,
        /// The pools of added cores (none when shrinking), indexing the
        /// descriptors that come with the frame.
        pools: Vec<PoolFd>,
    },
}

impl Command {
    /// The `command` of this command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Resize { .. } => "resize",
        }
    }
}

/// A command with its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandFrame {
    /// Protocol version.
    pub v: u32,
    /// ixcpd's id for the command, echoed in the answer.
    pub cmd: u64,
    /// The command.
    pub command: Command,
}

/// A dataplane's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandAnswer {
    /// The command answered.
    pub cmd: u64,
    /// Its core count after the command, or why it failed.
    pub result: Result<u32, String>,
}

/// The `ok` of an answer.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerOk {
    cores: u32,
}

/// An answer as it is on the wire.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerWire {
    v: u32,
    cmd: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<AnswerOk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Encodes a command frame: `v`, `cmd`, `command`, then its fields.
pub fn encode_command(frame: &CommandFrame) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        v: u32,
        cmd: u64,
        #[serde(flatten)]
        command: &'a Command,
    }
    serde_json::to_vec(&Envelope {
        v: frame.v,
        cmd: frame.cmd,
        command: &frame.command,
    })
    .expect("commands always serialise")
}

/// Decodes a command frame (dataplane side), strictly: the reason when
/// it is not one this version knows.
pub fn decode_command(bytes: &[u8]) -> Result<CommandFrame, String> {
    let mut map = json_object(bytes, "command")?;
    let v = take_u64(&mut map, "v")?;
    let cmd = take_u64(&mut map, "cmd")?;
    if v != u64::from(VERSION) {
        return Err(format!(
            "command {cmd}: protocol version {v} is not supported (this side speaks {VERSION})"
        ));
    }
    let command: Command = serde_json::from_value(Value::Object(map))
        .map_err(|e| format!("command {cmd}: {}", strip_position(&e)))?;
    Ok(CommandFrame {
        v: VERSION,
        cmd,
        command,
    })
}

/// Encodes a dataplane's answer: `{"v":1,"cmd":N,"ok":{"cores":C}}` or
/// `{"v":1,"cmd":N,"error":"…"}`.
pub fn encode_answer(answer: &CommandAnswer) -> Vec<u8> {
    let (ok, error) = match &answer.result {
        Ok(cores) => (Some(AnswerOk { cores: *cores }), None),
        Err(why) => (None, Some(why.clone())),
    };
    serde_json::to_vec(&AnswerWire {
        v: VERSION,
        cmd: answer.cmd,
        ok,
        error,
    })
    .expect("answers always serialise")
}

/// Decodes a dataplane's answer (ixcpd side), strictly: the reason when
/// the frame is not a well-formed answer of this version.
pub fn decode_answer(bytes: &[u8]) -> Result<CommandAnswer, String> {
    let map = json_object(bytes, "answer")?;
    let wire: AnswerWire = serde_json::from_value(Value::Object(map))
        .map_err(|e| format!("answer: {}", strip_position(&e)))?;
    if wire.v != VERSION {
        return Err(format!(
            "answer to command {}: protocol version {} is not supported (ixcpd speaks {VERSION})",
            wire.cmd, wire.v
        ));
    }
    let result = match (wire.ok, wire.error) {
        (Some(ok), None) => Ok(ok.cores),
        (None, Some(why)) => Err(why),
        (Some(_), Some(_)) => {
            return Err(format!(
                "answer to command {}: both `ok` and `error`",
                wire.cmd
            ))
        }
        (None, None) => {
            return Err(format!(
                "answer to command {}: neither `ok` nor `error`",
                wire.cmd
            ))
        }
    };
    Ok(CommandAnswer {
        cmd: wire.cmd,
        result,
    })
}

/// Whether a frame reads as a request (a JSON object with `op`): on a
/// lifeline, what is not one is an answer to a command.
pub fn is_request(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .is_ok_and(|v| v.as_object().is_some_and(|m| m.contains_key("op")))
}

/// Whether a frame carries `key` at its top level (a JSON object).
pub fn has_key(bytes: &[u8], key: &str) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .is_ok_and(|v| v.as_object().is_some_and(|m| m.contains_key(key)))
}

/// The frame as a JSON object, or why it is not one.
fn json_object(bytes: &[u8], what: &str) -> Result<serde_json::Map<String, Value>, String> {
    if bytes.len() > MAX_FRAME {
        return Err(format!(
            "{what} of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
            bytes.len()
        ));
    }
    if bytes.is_empty() {
        return Err(format!("empty frame (expected an {what})"));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            format!("{what} is cut short: {}", strip_position(&e))
        } else {
            format!("{what} is not JSON: {}", strip_position(&e))
        }
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "an {what} is a JSON object, got {}",
            json_type(&other)
        )),
    }
}

/// Removes `key` from `map` as a non-negative integer.
fn take_u64(map: &mut serde_json::Map<String, Value>, key: &str) -> Result<u64, String> {
    match map.remove(key) {
        None => Err(format!("missing field `{key}`")),
        Some(v) => v.as_u64().ok_or_else(|| {
            format!(
                "field `{key}` must be a non-negative integer, got {}",
                json_type(&v)
            )
        }),
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MacAddr, MemifRole, PortKind};
    use crate::resources::{CoreView, MemoryView, PortView, FLOW_GROUPS};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn frame(request: Request) -> RequestFrame {
        RequestFrame {
            v: VERSION,
            id: 42,
            request,
        }
    }

    fn allocation() -> Allocation {
        Allocation {
            name: "echo".into(),
            port: "wire0".into(),
            cpus: vec![0, 1],
            buffers_per_core: 4096,
            pool_bytes: 4096 * 2176,
            page_size: 4096,
            huge: false,
            reta: (0..FLOW_GROUPS).map(|g| (g % 2) as u16).collect(),
        }
    }

    fn every_request() -> Vec<Request> {
        let alloc = AllocateArgs {
            name: "echo".into(),
            cores: 2,
            port: "wire0".into(),
            buffers_per_core: Some(8192),
            memory: None,
        };
        vec![
            Request::Status,
            Request::Resources,
            Request::Allocate(alloc),
            Request::Launch(LaunchArgs {
                name: "echo".into(),
                cores: 1,
                port: "wire0".into(),
                buffers_per_core: None,
                memory: Some(1 << 24),
                isolation: Some(Isolation::Kvm),
                policy: Some(Policy::Load),
                program: "/usr/bin/echo-server".into(),
                args: vec!["--port".into(), "7".into()],
                cwd: Some("/srv".into()),
            }),
            Request::Stop {
                name: "echo".into(),
            },
            Request::Stats {
                name: "echo".into(),
            },
            Request::Cores {
                name: "echo".into(),
                n: 3,
            },
            Request::Logs {
                name: "echo".into(),
                lines: Some(10),
            },
            Request::Logs {
                name: "echo".into(),
                lines: None,
            },
            Request::Register {
                name: "echo".into(),
            },
            Request::Reattach {
                name: "echo".into(),
                pid: 4242,
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for request in every_request() {
            let bytes = encode_request(&frame(request.clone()));
            let decoded = decode_request(&bytes).unwrap_or_else(|e| panic!("{request:?}: {e}"));
            assert_eq!(decoded, frame(request));
        }
    }

    #[test]
    fn request_wire_shape_is_flat() {
        let bytes = encode_request(&frame(Request::Cores {
            name: "echo".into(),
            n: 3,
        }));
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"id":42,"op":"cores","name":"echo","n":3}"#
        );
        let bytes = encode_request(&frame(Request::Status));
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"id":42,"op":"status"}"#
        );
    }

    #[test]
    fn every_reply_round_trips() {
        let info = DataplaneInfo {
            name: "echo".into(),
            state: DataplaneState::Running,
            pid: Some(99),
            port: "wire0".into(),
            cpus: vec![0, 1],
            buffers_per_core: 4096,
            memory_bytes: 1 << 24,
            since_unix_ms: 1_700_000_000_000,
            lifeline: true,
            policy: Policy::Load,
        };
        let port = PortConfig {
            name: "wire0".into(),
            kind: PortKind::Memif {
                socket: "/run/ix/wire0.sock".into(),
                role: MemifRole::Master,
                queues: 2,
            },
            ip: Ipv4Addr::new(10, 77, 0, 1),
            prefix: 24,
            mac: MacAddr::derived_from(Ipv4Addr::new(10, 77, 0, 1)),
            mac_derived: true,
            gateway: None,
        };
        let replies = vec![
            Reply::Status(StatusReply {
                daemon: DaemonInfo {
                    version: "0.1.0".into(),
                    protocol: VERSION,
                    pid: 1,
                    uptime_ms: 5,
                    socket: "/run/ix/ixcpd.sock".into(),
                    policy: Policy::None,
                    clients: 1,
                    requests: 2,
                    malformed: 3,
                    refused: 4,
                },
                dataplanes: vec![info.clone()],
            }),
            Reply::Resources(ResourcesView {
                cores: vec![CoreView {
                    cpu: 0,
                    owner: Some("echo".into()),
                }],
                memory: MemoryView {
                    budget: 1 << 28,
                    used: 1 << 24,
                    page_size: 4096,
                    huge: false,
                },
                ports: vec![PortView {
                    name: "wire0".into(),
                    kind: "memif".into(),
                    queues: 2,
                    owner: None,
                }],
            }),
            Reply::Allocated(allocation()),
            Reply::Stopped(StopReply {
                name: "echo".into(),
                released: false,
                pid: Some(99),
            }),
            Reply::Stats(StatsReply {
                dataplane: info.clone(),
                allocation: allocation(),
                cores: vec![CoreStatsView {
                    core: 1,
                    cpu: 3,
                    age_ms: Some(4),
                    rx_packets: 1000,
                    avg_batch_milli: 1500,
                    ..CoreStatsView::default()
                }],
                note: Some("core 0's record did not hold still".into()),
                read_ns: 77,
            }),
            Reply::Reattached(ReattachReply {
                dataplane: info,
                stats: true,
            }),
            Reply::Resized(allocation()),
            Reply::Logs(LogsReply {
                name: "echo".into(),
                lines: vec![LogLine {
                    unix_ms: 1,
                    text: "allocated".into(),
                }],
                dropped: 0,
            }),
            Reply::Registered(Registration {
                allocation: allocation(),
                port,
                pools: vec![PoolFd {
                    queue: 0,
                    fd: 0,
                    bytes: 4096 * 2176,
                    buffers: 4096,
                    huge: false,
                }],
                stats: Some(StatsFd {
                    fd: 1,
                    bytes: 4096,
                    cores: 1,
                    version: 1,
                }),
            }),
        ];
        for reply in replies {
            let frame = ResponseFrame {
                v: VERSION,
                id: Some(3),
                outcome: Outcome::Ok(reply),
            };
            let bytes = encode_response(&frame);
            assert_eq!(decode_response(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn a_core_view_ages_its_heartbeat_without_trusting_it() {
        let published = CoreStats {
            heartbeat_ns: 5_000_000,
            publishes: 1,
            rx_packets: 9,
            avg_idle_ppm: 2_000_000,
            ..CoreStats::default()
        };
        let v = CoreStatsView::new(0, 2, &published, 12_500_000);
        assert_eq!((v.core, v.cpu, v.age_ms, v.rx_packets), (0, 2, Some(7), 9));
        // A lie is passed on as the number it is, never a panic.
        assert_eq!(v.avg_idle_ppm, 2_000_000);
        // A heartbeat from the future, or none yet, has no age.
        assert_eq!(CoreStatsView::new(0, 2, &published, 1).age_ms, None);
        let never = CoreStats::default();
        assert_eq!(CoreStatsView::new(0, 2, &never, 1 << 40).age_ms, None);
        let far = CoreStats {
            heartbeat_ns: 0,
            publishes: u64::MAX,
            ..CoreStats::default()
        };
        assert_eq!(
            CoreStatsView::new(0, 2, &far, u64::MAX).age_ms,
            Some(u64::MAX / 1_000_000)
        );
    }

    #[test]
    fn error_response_wire_shape() {
        let frame = ResponseFrame {
            v: VERSION,
            id: None,
            outcome: Outcome::Error(ApiError::new(ErrorCode::BadJson, "frame is not JSON")),
        };
        let text = String::from_utf8(encode_response(&frame)).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"id":null,"error":{"code":"bad_json","message":"frame is not JSON"}}"#
        );
        assert_eq!(decode_response(text.as_bytes()).unwrap(), frame);
    }

    #[test]
    fn unknown_error_code_from_a_newer_daemon_is_read_as_unknown() {
        let text = r#"{"v":1,"id":1,"error":{"code":"quota_exceeded","message":"m"},"extra":1}"#;
        let frame = decode_response(text.as_bytes()).unwrap();
        assert_eq!(
            frame.outcome,
            Outcome::Error(ApiError::new(ErrorCode::Unknown, "m"))
        );
    }

    /// Decodes `text` and returns the error code, id and message.
    fn refused(bytes: &[u8]) -> (ErrorCode, Option<u64>, String) {
        let err = decode_request(bytes).expect_err("frame should be refused");
        (err.error.code, err.id, err.error.message)
    }

    #[test]
    fn malformed_frames_are_named() {
        let cases: &[(&[u8], ErrorCode, Option<u64>, &str)] = &[
            (b"", ErrorCode::EmptyFrame, None, "empty frame"),
            (b"{\"v\":1,\"id\":1,\"op\":\"sta\xfftus\"}", ErrorCode::BadUtf8, None, "invalid byte at offset 23"),
            (b"{\"v\":1,\"id\":1,\"op\":\"sta", ErrorCode::Truncated, None, "ends inside a JSON value"),
            (b"{\"v\":1,", ErrorCode::Truncated, None, "cut short"),
            (b"status please", ErrorCode::BadJson, None, "frame is not JSON"),
            (b"{\"v\":1}}", ErrorCode::BadJson, None, "trailing characters"),
            (b"[1,2]", ErrorCode::BadRequest, None, "a request is a JSON object, got an array"),
            (b"{\"v\":1,\"op\":\"status\"}", ErrorCode::BadRequest, None, "missing field `id`"),
            (b"{\"v\":1,\"id\":-1,\"op\":\"status\"}", ErrorCode::BadRequest, None, "`id` must be a non-negative integer"),
            (b"{\"id\":5,\"op\":\"status\"}", ErrorCode::BadRequest, Some(5), "missing field `v`"),
            (b"{\"v\":\"1\",\"id\":5,\"op\":\"status\"}", ErrorCode::BadRequest, Some(5), "`v` must be an integer"),
            (b"{\"v\":2,\"id\":5,\"op\":\"status\"}", ErrorCode::UnsupportedVersion, Some(5), "version 2 is not supported (this ixcpd speaks 1)"),
            (b"{\"v\":1,\"id\":5}", ErrorCode::BadRequest, Some(5), "missing field `op` (one of: status, resources"),
            (b"{\"v\":1,\"id\":5,\"op\":7}", ErrorCode::BadRequest, Some(5), "`op` must be a string"),
            (b"{\"v\":1,\"id\":5,\"op\":\"stauts\"}", ErrorCode::UnknownRequest, Some(5), "unknown request \"stauts\""),
            (b"{\"v\":1,\"id\":5,\"op\":\"stop\"}", ErrorCode::BadRequest, Some(5), "stop: missing field `name`"),
            (b"{\"v\":1,\"id\":5,\"op\":\"allocate\",\"name\":\"e\",\"port\":\"w\"}", ErrorCode::BadRequest, Some(5), "allocate: missing field `cores`"),
            (b"{\"v\":1,\"id\":5,\"op\":\"cores\",\"name\":\"e\",\"n\":\"two\"}", ErrorCode::BadRequest, Some(5), "cores: invalid type: string \"two\", expected u32"),
            (b"{\"v\":1,\"id\":5,\"op\":\"allocate\",\"name\":\"e\",\"cores\":1,\"port\":\"w\",\"core\":2}", ErrorCode::BadRequest, Some(5), "unknown field `core`"),
            (b"{\"v\":1,\"id\":5,\"op\":\"stop\",\"name\":\"e\",\"force\":true}", ErrorCode::BadRequest, Some(5), "unknown field `force`"),
            (b"{\"v\":1,\"id\":5,\"op\":\"reattach\",\"name\":\"e\"}", ErrorCode::BadRequest, Some(5), "reattach: missing field `pid`"),
            (b"{\"v\":1,\"id\":5,\"op\":\"reattach\",\"name\":\"e\",\"pid\":-4}", ErrorCode::BadRequest, Some(5), "reattach: invalid value: integer `-4`, expected u32"),
            (b"{\"v\":1,\"id\":5,\"op\":\"reattach\",\"pid\":4,\"name\":[]}", ErrorCode::BadRequest, Some(5), "reattach: invalid type: sequence, expected a string"),
        ];
        for (bytes, code, id, needle) in cases {
            let (got_code, got_id, message) = refused(bytes);
            let shown = String::from_utf8_lossy(bytes);
            assert_eq!(got_code, *code, "{shown}: {message}");
            assert_eq!(got_id, *id, "{shown}: {message}");
            assert!(
                message.contains(needle),
                "{shown}: {message:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn unit_requests_reject_extra_fields() {
        let (code, _, message) = refused(br#"{"v":1,"id":5,"op":"status","verbose":true}"#);
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        assert!(message.contains("verbose"), "{message}");
    }

    #[test]
    fn oversize_frame_is_refused_with_its_size() {
        let big = vec![b' '; MAX_FRAME + 1];
        let (code, id, message) = refused(&big);
        assert_eq!((code, id), (ErrorCode::FrameTooLarge, None));
        assert_eq!(
            message,
            "frame of 65537 bytes exceeds the limit of 65536 bytes"
        );
    }

    #[test]
    fn oversize_response_becomes_an_internal_error() {
        let frame = ResponseFrame {
            v: VERSION,
            id: Some(9),
            outcome: Outcome::Ok(Reply::Logs(LogsReply {
                name: "x".into(),
                lines: vec![
                    LogLine {
                        unix_ms: 0,
                        text: "y".repeat(1000),
                    };
                    100
                ],
                dropped: 0,
            })),
        };
        let bytes = encode_response(&frame);
        assert!(bytes.len() <= MAX_FRAME);
        let decoded = decode_response(&bytes).unwrap();
        assert_eq!(decoded.id, Some(9));
        assert!(matches!(
            decoded.outcome,
            Outcome::Error(ApiError {
                code: ErrorCode::Internal,
                ..
            })
        ));
    }

    fn resize(cmd: u64) -> CommandFrame {
        CommandFrame {
            v: VERSION,
            cmd,
            command: Command::Resize {
                allocation: allocation(),
                pools: vec![PoolFd {
                    queue: 1,
                    fd: 0,
                    bytes: 4096 * 2176,
                    buffers: 4096,
                    huge: false,
                }],
            },
        }
    }

    #[test]
    fn commands_round_trip_and_are_told_from_responses() {
        let bytes = encode_command(&resize(3));
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"cmd":3,"command":"resize","allocation":{"#),
            "{text}"
        );
        assert_eq!(decode_command(&bytes).unwrap(), resize(3));
        assert!(!is_request(&bytes));
        assert!(has_key(&bytes, "cmd") && !has_key(&bytes, "id"));
        assert!(decode_response(&bytes).is_err(), "not a response");
    }

    #[test]
    fn answers_round_trip_with_their_wire_shape() {
        let ok = CommandAnswer {
            cmd: 3,
            result: Ok(2),
        };
        let bytes = encode_answer(&ok);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"cmd":3,"ok":{"cores":2}}"#
        );
        assert_eq!(decode_answer(&bytes).unwrap(), ok);
        let failed = CommandAnswer {
            cmd: 4,
            result: Err("no thread".into()),
        };
        let bytes = encode_answer(&failed);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"cmd":4,"error":"no thread"}"#
        );
        assert_eq!(decode_answer(&bytes).unwrap(), failed);
        assert!(!is_request(&bytes));
    }

    #[test]
    fn malformed_answers_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty frame"),
            (b"{\"v\":1,\"cmd\":3,\"ok\":{\"cor", "cut short"),
            (b"ok", "not JSON"),
            (b"[3]", "got an array"),
            (b"{\"v\":1,\"ok\":{\"cores\":2}}", "missing field `cmd`"),
            (
                b"{\"v\":2,\"cmd\":3,\"ok\":{\"cores\":2}}",
                "version 2 is not supported",
            ),
            (b"{\"v\":1,\"cmd\":3}", "neither `ok` nor `error`"),
            (
                b"{\"v\":1,\"cmd\":3,\"ok\":{\"cores\":2},\"error\":\"x\"}",
                "both",
            ),
            (
                b"{\"v\":1,\"cmd\":3,\"ok\":{\"cores\":-2}}",
                "invalid value",
            ),
            (
                b"{\"v\":1,\"cmd\":3,\"ok\":{\"cores\":2,\"extra\":1}}",
                "unknown field `extra`",
            ),
            (
                b"{\"v\":1,\"cmd\":3,\"ok\":{\"cores\":2},\"x\":1}",
                "unknown field `x`",
            ),
            (b"{\"v\":1,\"cmd\":\"3\",\"error\":\"e\"}", "invalid type"),
        ];
        for (bytes, needle) in cases {
            let err = decode_answer(bytes).expect_err("should be refused");
            assert!(
                err.contains(needle),
                "{}: {err:?} lacks {needle:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn malformed_commands_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"{\"v\":1,\"cmd\":3,\"command\":\"reboot\"}",
                "unknown variant `reboot`",
            ),
            (
                b"{\"v\":1,\"cmd\":3,\"command\":\"resize\",\"pools\":[]}",
                "missing field `allocation`",
            ),
            (b"{\"v\":3,\"cmd\":3,\"command\":\"resize\"}", "version 3"),
            (b"{\"cmd\":3,\"command\":\"resize\"}", "missing field `v`"),
        ];
        for (bytes, needle) in cases {
            let err = decode_command(bytes).expect_err("should be refused");
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        let mut extra: Value = serde_json::from_slice(&encode_command(&resize(1))).unwrap();
        extra["force"] = Value::Bool(true);
        let err = decode_command(&serde_json::to_vec(&extra).unwrap()).unwrap_err();
        assert!(err.contains("unknown field `force`"), "{err}");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(&bytes);
            let _ = decode_answer(&bytes);
            let _ = decode_command(&bytes);
        }

        #[test]
        fn every_prefix_of_a_request_is_refused_as_cut_or_wrong(cut in 0usize..60) {
            let bytes = encode_request(&frame(Request::Allocate(AllocateArgs {
                name: "echo".into(),
                cores: 2,
                port: "wire0".into(),
                buffers_per_core: None,
                memory: None,
            })));
            let cut = cut.min(bytes.len() - 1);
            let err = decode_request(&bytes[..cut]).unwrap_err();
            prop_assert!(matches!(err.error.code, ErrorCode::Truncated | ErrorCode::EmptyFrame | ErrorCode::BadJson),
                "{:?}", err);
        }

        #[test]
        fn names_with_any_characters_round_trip(name in ".{0,40}", n in any::<u32>(), id in any::<u64>()) {
            let f = RequestFrame { v: VERSION, id, request: Request::Cores { name, n } };
            prop_assert_eq!(decode_request(&encode_request(&f)).unwrap(), f);
        }
    }
}
