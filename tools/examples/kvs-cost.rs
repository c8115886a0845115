//! The KVS server's cost per request, transport aside: drives
//! [`Session::feed`] (parse, store, queue the replies) and
//! [`Session::consume`] (what a transport does once it has sent them) with
//! a fixed, seeded ETC or USR request stream against a store that holds
//! every key, on one thread.
//!
//! `scripts/kvs-cost.sh` runs it under callgrind, collecting only inside
//! [`measure`], and divides by the request count: instructions per request,
//! repeatable whatever else the machine is doing. Run directly, it prints
//! what it did (and the wall-clock time, for what that is worth):
//!
//! ```text
//! cargo run --release -p ix-tools --example kvs-cost -- etc 200000
//! ```
//!
//! The stream is the load generator's ([`ix_tools::load::workload`]): 100,000
//! keys of the workload's sizes, uniform popularity, 75 % (ETC) or 99 %
//! (USR) GET, the rest SET of the key's value size; each request is fed as
//! one piece, as a request arriving alone in a TCP segment is. The store is
//! sized as `ixctl bench kvs` sizes it (256 MiB), so every GET hits.

use std::ops::Range;
use std::time::Instant;

use ix_tools::kvs::session::Session;
use ix_tools::kvs::stats::add;
use ix_tools::kvs::store::StoreConfig;
use ix_tools::kvs::Kvs;
use ix_tools::load::workload::{KeySpace, Rng};
use ix_tools::load::{WorkloadKind, WorkloadSpec};

/// The relative time every request runs at.
const NOW: u32 = 10;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = match args.next().as_deref() {
        Some("etc") => WorkloadKind::Etc,
        Some("usr") => WorkloadKind::Usr,
        _ => usage(),
    };
    let count: usize = match args.next().map(|n| n.parse()) {
        None => 200_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => usage(),
    };

    let spec = WorkloadSpec::new(kind);
    let keys = KeySpace::build(&spec).expect("the default workload is valid");
    let kvs = Kvs::new(
        StoreConfig {
            limit_bytes: 256 << 20,
            ..StoreConfig::default()
        },
        1,
    );
    let mut session = Session::new(kvs.store().item_max());

    // Every key stored once, so every GET hits.
    let fill = encode(&keys, (0..keys.len()).map(|i| (i, true)));
    fill_store(&mut session, &kvs, &fill);
    let stored = kvs.store().stats();
    assert_eq!(stored.curr_items, u64::from(keys.len()), "every key stored");
    assert_eq!(stored.evictions, 0, "the store holds every key");

    let mut rng = Rng::new(spec.seed);
    let get_ratio = kind.get_ratio();
    let ops = (0..count).map(|_| {
        let key = rng.below(keys.len());
        (key, rng.unit() >= get_ratio)
    });
    let stream = encode(&keys, ops.collect::<Vec<_>>().into_iter());

    let start = Instant::now();
    let (replied, misses) = measure(&mut session, &kvs, &stream);
    let elapsed = start.elapsed();
    assert_eq!(misses, 0, "every GET hits");
    println!(
        "workload: {}, requests: {count}, reply bytes: {replied}, wall: {:.0} ns/request",
        kind.name(),
        elapsed.as_nanos() as f64 / count as f64
    );
}

fn usage() -> ! {
    eprintln!("usage: kvs-cost etc|usr [REQUESTS]");
    std::process::exit(2);
}

/// Requests laid end to end, and where each one lies.
struct Stream {
    bytes: Vec<u8>,
    requests: Vec<Range<usize>>,
}

/// Encodes `(key, is_set)` requests of `keys` into one buffer.
fn encode(keys: &KeySpace, ops: impl Iterator<Item = (u32, bool)>) -> Stream {
    let arena = keys.arena();
    let mut bytes = Vec::new();
    let mut requests = Vec::new();
    for (key, set) in ops {
        let start = bytes.len();
        if set {
            for part in keys.set_request(key) {
                bytes.extend_from_slice(&arena[part]);
            }
        } else {
            bytes.extend_from_slice(&arena[keys.get_request(key)]);
        }
        requests.push(start..bytes.len());
    }
    Stream { bytes, requests }
}

/// The fill, outside the measured function.
#[inline(never)]
fn fill_store(session: &mut Session, kvs: &Kvs, stream: &Stream) {
    run(session, kvs, stream);
}

/// The measured requests: callgrind collects only inside this function.
#[inline(never)]
fn measure(session: &mut Session, kvs: &Kvs, stream: &Stream) -> (usize, u64) {
    run(session, kvs, stream)
}

/// Feeds every request as one piece and takes all its replies, as a
/// transport does; returns the reply bytes and the `get` misses.
#[inline(always)]
fn run(session: &mut Session, kvs: &Kvs, stream: &Stream) -> (usize, u64) {
    let mut replied = 0;
    for r in &stream.requests {
        let piece = &stream.bytes[r.clone()];
        let used = session.feed(piece, kvs, 0, NOW);
        debug_assert_eq!(used, piece.len());
        let n = session.reply_bytes();
        session.consume(n);
        add(&kvs.worker(0).bytes_written, n as u64);
        replied += n;
    }
    let misses = kvs
        .worker(0)
        .get_misses
        .load(std::sync::atomic::Ordering::Relaxed);
    (replied, misses)
}
