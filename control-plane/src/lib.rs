//! ixcpd, the IX control plane: it owns the machine's networking resources
//! — cores, packet-buffer memory, NIC ports with their queues and flow
//! groups — and hands them to dataplanes, never the same one twice.
//!
//! # Layers
//!
//! - [`config`]: the TOML config, validated in one place against the
//!   [`host`] (online CPUs, free hugepages); every error names its key
//!   (`ports[1].ip: "10.0.0.300" is not an IPv4 address`). A built-in
//!   config (every CPU, 256 MiB, one memif wire) lets `ixctl up` start
//!   without a file.
//! - [`resources`]: the books. Cores, memory and ports are taken whole or
//!   not at all, and a refusal says what is short.
//! - [`proto`]: the API's messages and their encoding.
//! - [`daemon`]: requests in, replies out: allocations, their buffer-pool
//!   memfds and stats pages, registration of dataplane processes,
//!   launching programs as dataplanes, per-dataplane logs, re-adoption
//!   after a restart.
//! - [`policy`]: the `load` policy's decisions, a pure function of
//!   what the cores publish and the time.
//! - [`launch`]: a program ixcpd started: its environment, identity,
//!   output (in files that outlive ixcpd) and exit.
//! - [`process`]: processes named by pid *and* start time, watched
//!   through pidfds.
//! - [`state`]: the books on disk (`<socket>.state`), written atomically
//!   on every change, read back by a restarted ixcpd.
//! - [`server`]: the Unix socket, peer-credential checks and the
//!   single-threaded `poll` loop; [`client`]: the blocking client.
//! - [`sys`]: the only `unsafe` code: seqpacket sockets with `SCM_RIGHTS`,
//!   `SO_PEERCRED`, memfd, signalfd, poll, pidfd, inotify.
//!
//! # Allocation model
//!
//! A dataplane asks for a name, `n` cores, a port, and packet memory (as
//! buffers per core, default 4096, or a total). It gets the `n` lowest free
//! CPUs from the configured list, exclusively; the whole port (one port
//! has one IP and MAC, so it serves one dataplane) and its queues `0..n`,
//! core `i` serving queue `i`; the port's 128 flow groups (its RSS
//! redirection table) spread over those queues, group `g` on queue
//! `g mod n`; one buffer pool per core: a memfd of `buffers × 2176`
//! bytes rounded up to whole pages (2 MiB hugepages when the config
//! resolved to them), its memory allocated when the allocation is made;
//! and a stats page with a record for each core it could grow to (the
//! port's queues), kept across resizes, that the dataplane's cores
//! publish in and `stats` reads (layout in `dataplane::stats`).
//! Resizing to `m` cores takes or returns cores, queues and pools and
//! moves the fewest flow groups that rebalance the table. Nothing is
//! overcommitted: after any sequence of operations, free plus allocated
//! equals the total for every resource. See [`resources`].
//!
//! # Protocol
//!
//! JSON frames over a Unix `SOCK_SEQPACKET` socket (default
//! `/run/ix/ixcpd.sock`, or `$IX_SOCKET`): one message per request or
//! response, at most 64 KiB, file descriptors attached with `SCM_RIGHTS`.
//! Requests carry the protocol version `v`, an `id` the response echoes,
//! and an `op`; responses carry either `ok` (tagged by `type`) or `error`
//! (`code` and `message`). A session as `ixctl` and a dataplane would have
//! it (`→` sent to ixcpd, `←` received; long lists shortened):
//!
//! ```text
//! → {"v":1,"id":1,"op":"allocate","name":"echo","cores":2,"port":"wire0"}
//! ← {"v":1,"id":1,"ok":{"type":"allocated","name":"echo","port":"wire0",
//!    "cpus":[0,1],"buffers_per_core":4096,"pool_bytes":8912896,
//!    "page_size":4096,"huge":false,"reta":[0,1,0,1,…]}}
//! → {"v":1,"id":2,"op":"allocate","name":"kvs","cores":1,"port":"wire0"}
//! ← {"v":1,"id":2,"error":{"code":"insufficient_resources",
//!    "message":"not enough cores: asked 1, free 0 (of 2); port wire0: in use
//!    by echo (a port serves one dataplane)"}}
//!
//! (the echo dataplane starts and claims its allocation)
//! → {"v":1,"id":1,"op":"register","name":"echo"}
//! ← {"v":1,"id":1,"ok":{"type":"registered","allocation":{…},
//!    "port":{"name":"wire0","kind":"memif","socket":"/run/ix/wire0.sock",
//!    "role":"master","queues":2,"ip":"10.77.0.1","prefix":24,
//!    "mac":"02:49:0a:4d:00:01","mac_derived":true,"gateway":null},
//!    "pools":[{"queue":0,"fd":0,"bytes":8912896,"buffers":4096,"huge":false},
//!             {"queue":1,"fd":1,…}],
//!    "stats":{"fd":2,"bytes":576,"cores":2,"version":1}}}  + 3 memfds
//!
//! (ixcpd restarts; the dataplane's runtime reconnects)
//! → {"v":1,"id":1,"op":"reattach","name":"echo","pid":4242}  + its stats page
//! ← {"v":1,"id":1,"ok":{"type":"reattached","dataplane":{…,"lifeline":true},
//!    "stats":true}}
//!
//! → {"v":1,"id":2,"op":"stats","name":"echo"}
//! ← {"v":1,"id":2,"ok":{"type":"stats","dataplane":{…},"allocation":{…},
//!    "cores":[{"core":0,"cpu":0,"heartbeat_ns":…,"age_ms":4,"publishes":812,
//!     "rx_packets":1250113,"tx_packets":1250090,"drops":0,"connections":16,
//!     …,"avg_batch_milli":1520,"avg_queue_milli":1310,"avg_idle_ppm":412000,
//!     "avg_full_ppm":0,"avg_loop_ns":830},…],"read_ns":…}}
//! → {"v":1,"id":3,"op":"status"}
//! ← {"v":1,"id":3,"ok":{"type":"status","daemon":{…},"dataplanes":[
//!    {"name":"echo","state":"running","pid":4242,"port":"wire0",
//!     "cpus":[0,1],…}]}}
//! → {"v":1,"id":4,"op":"stauts"}
//! ← {"v":1,"id":4,"error":{"code":"unknown_request","message":
//!    "unknown request \"stauts\" (expected one of: status, resources, …)"}}
//! ```
//!
//! The registering connection is the dataplane's lifeline: when it closes
//! (exit, crash, `kill -9`) the dataplane's resources return to the pool.
//! When ixcpd itself stops or crashes, its dataplanes run on: the next
//! ixcpd reads the books back from the state file, takes their resources
//! again, and each dataplane reattaches (see [`daemon`] and [`state`]).
//! Malformed frames (too large, empty, cut short, not UTF-8, not JSON,
//! unknown request, missing or unknown field) are answered with an error
//! naming the problem, and the connection keeps serving. See [`proto`] for
//! every message and [`server`] for who may connect.
//!
//! # Running dataplanes
//!
//! A registered dataplane is resized over its lifeline: ixcpd sends a
//! `resize` command with the new allocation (and the added cores' pool
//! memfds) and the dataplane answers (see [`proto`] and [`daemon`]).
//! The [`policy`] module decides such resizes for dataplanes under the
//! `load` policy from what their cores publish.
//!
//! # Not yet here
//!
//! `launch` runs programs with process isolation only (`kvm` answers
//! `not_supported`).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod host;
pub mod launch;
pub mod policy;
pub mod process;
pub mod proto;
pub mod resources;
pub mod server;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
pub mod units;
