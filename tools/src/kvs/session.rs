//! One client connection, independent of the transport.
//!
//! The transport hands [`Session::feed`] the bytes it received (an `RxBuf`
//! on the dataplane, a read buffer on Linux); the session parses them,
//! runs each command on the shared store, and queues the replies as
//! [`TxBuf`]s: a `get` hit is a slice of the item's shared bytes, fixed
//! replies are static, and only numbers (`incr`) and `stats` are formatted
//! into fresh memory. The transport sends [`Session::replies`] and reports
//! what it took with [`Session::consume`].
//!
//! Backpressure: once the queued replies reach [`BACKLOG_LIMIT`] bytes,
//! `feed` stops at the next command boundary (or between the keys of a
//! `get` line too long to hold whole) and returns how much it used;
//! the transport keeps the rest (on the dataplane it keeps the `RxBuf`
//! itself, which keeps the receive window closed) and feeds it again when
//! the replies have drained. A client that pipelines requests without
//! reading replies therefore stalls itself instead of growing our memory;
//! so does one that sends a multi-get line of many thousand keys without
//! reading (memcached would read the whole line and queue every reply).

use libix::TxBuf;

use super::clock::RelTime;
use super::item::{Item, ItemBuilder};
use super::protocol::{Command, Event, Parser, ProtocolError, StoreOp};
use super::stats::{add, inc, CoreStats};
use super::store::{format_u64, ArithResult, StoreResult};
use super::Kvs;

/// Queued reply bytes beyond which a session reads no further requests.
pub const BACKLOG_LIMIT: usize = 256 * 1024;

const END: &[u8] = b"END\r\n";

/// A storage command waiting for the rest of its data block.
#[derive(Debug)]
struct Pending {
    builder: ItemBuilder,
    filled: usize,
    op: StoreOp,
    exptime: RelTime,
    cas: u64,
    noreply: bool,
}

/// Replies queued for the transport, and the connection's command state.
#[derive(Debug, Default)]
struct Output {
    out: Vec<TxBuf>,
    out_bytes: usize,
    pending: Option<Pending>,
    close: bool,
}

/// A session on its way to another core (the connection's flow group
/// migrates): the parser's state as it is, the queued replies copied.
#[derive(Debug)]
pub struct MovedSession {
    parser: Parser,
    pending: Option<Pending>,
    close: bool,
    replies: Vec<u8>,
}

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    parser: Parser,
    state: Output,
}

impl Session {
    /// A session for a server whose store accepts items up to `item_max`
    /// bytes.
    pub fn new(item_max: usize) -> Session {
        Session {
            parser: Parser::new(item_max),
            state: Output::default(),
        }
    }

    /// Parses and runs the requests in `input` at relative time `now`,
    /// counting in worker `worker`'s counters. Returns how many bytes it
    /// used: all of them, unless the reply backlog reached
    /// [`BACKLOG_LIMIT`] (feed the rest once [`Session::is_blocked`] is
    /// false). Bytes after `quit` or a fatal error are used and ignored.
    pub fn feed(&mut self, input: &[u8], kvs: &Kvs, worker: usize, now: RelTime) -> usize {
        let stats = kvs.worker(worker);
        let mut rest = input;
        while !rest.is_empty() {
            if self.state.out_bytes >= BACKLOG_LIMIT && self.parser.can_pause() {
                break;
            }
            let Some(event) = self.parser.next(&mut rest) else {
                break;
            };
            self.state.handle(event, kvs, stats, now);
        }
        let used = input.len() - rest.len();
        add(&stats.bytes_read, used as u64);
        used
    }

    /// Replies not yet taken by the transport, in order.
    pub fn replies(&self) -> &[TxBuf] {
        &self.state.out
    }

    /// Bytes of the replies not yet taken.
    pub fn reply_bytes(&self) -> usize {
        self.state.out_bytes
    }

    /// The transport took the first `n` bytes of [`Session::replies`].
    pub fn consume(&mut self, mut n: usize) {
        if n >= self.state.out_bytes {
            self.state.out.clear();
            self.state.out_bytes = 0;
            return;
        }
        let out = &mut self.state.out;
        n = n.min(self.state.out_bytes);
        self.state.out_bytes -= n;
        let mut done = 0;
        for buf in out.iter_mut() {
            if n >= buf.len() {
                n -= buf.len();
                done += 1;
            } else {
                buf.advance(n);
                break;
            }
        }
        out.drain(..done);
    }

    /// Whether the reply backlog is too large to read more requests.
    pub fn is_blocked(&self) -> bool {
        self.state.out_bytes >= BACKLOG_LIMIT
    }

    /// Whether the connection should be closed once its replies are sent
    /// (after `quit`, or a line too long).
    pub fn wants_close(&self) -> bool {
        self.state.close
    }

    /// Whether a request is partly received (a line or a data block): a
    /// peer that closes now has cut it short.
    pub fn mid_request(&self) -> bool {
        !self.parser.at_command_boundary()
    }

    /// The session in a form that may cross to another thread: replies
    /// (slices of shared items, or memory of this core) are copied.
    pub fn into_moved(self) -> MovedSession {
        let mut replies = Vec::with_capacity(self.state.out_bytes);
        for buf in &self.state.out {
            replies.extend_from_slice(buf.as_slice());
        }
        MovedSession {
            parser: self.parser,
            pending: self.state.pending,
            close: self.state.close,
            replies,
        }
    }

    /// The session a [`MovedSession`] was, on this core.
    pub fn from_moved(moved: MovedSession) -> Session {
        let out_bytes = moved.replies.len();
        let out = if moved.replies.is_empty() {
            Vec::new()
        } else {
            vec![TxBuf::from_vec(moved.replies)]
        };
        Session {
            parser: moved.parser,
            state: Output {
                out,
                out_bytes,
                pending: moved.pending,
                close: moved.close,
            },
        }
    }
}

impl Output {
    #[inline]
    fn push(&mut self, buf: TxBuf) {
        self.out_bytes += buf.len();
        self.out.push(buf);
    }

    #[inline]
    fn reply(&mut self, text: &'static [u8], noreply: bool) {
        if !noreply {
            self.push(TxBuf::from_static(text));
        }
    }

    fn push_item(&mut self, item: Item, cas: bool) {
        if cas {
            let parts = item.gets_reply();
            let bytes = TxBuf::from_arc(item.into_bytes());
            for (off, len) in parts {
                self.push(bytes.slice(off, len));
            }
        } else {
            // The reply is the item's tail: drop the front of the one
            // reference the store handed out.
            let (off, len) = item.get_reply();
            let mut buf = TxBuf::from_arc(item.into_bytes());
            if off + len == buf.len() {
                buf.advance(off);
            } else {
                buf = buf.slice(off, len);
            }
            self.push(buf);
        }
    }

    fn handle(&mut self, event: Event<'_>, kvs: &Kvs, stats: &CoreStats, now: RelTime) {
        match event {
            Event::Command(c) => self.command(c, kvs, stats, now),
            Event::Data(d) => {
                if let Some(p) = &mut self.pending {
                    let dst = p.builder.data_mut();
                    let end = (p.filled + d.len()).min(dst.len());
                    dst[p.filled..end].copy_from_slice(&d[..end - p.filled]);
                    p.filled = end;
                }
            }
            Event::DataEnd => {
                let Some(p) = self.pending.take() else { return };
                inc(&stats.cmd_set);
                let result = kvs.store().store(p.op, p.builder, p.exptime, p.cas, now);
                if p.op == StoreOp::Cas {
                    inc(match result {
                        StoreResult::Stored => &stats.cas_hits,
                        StoreResult::Exists => &stats.cas_badval,
                        _ => &stats.cas_misses,
                    });
                }
                let text: &'static [u8] = match result {
                    StoreResult::Stored => b"STORED\r\n",
                    StoreResult::NotStored => b"NOT_STORED\r\n",
                    StoreResult::Exists => b"EXISTS\r\n",
                    StoreResult::NotFound => b"NOT_FOUND\r\n",
                    StoreResult::NoMemory => b"SERVER_ERROR out of memory storing object\r\n",
                };
                self.reply(text, p.noreply);
            }
            Event::Error { error, noreply } => {
                if error == ProtocolError::BadDataChunk && self.pending.take().is_some() {
                    inc(&stats.cmd_set);
                }
                self.reply(error.reply(), noreply);
            }
            Event::TooLarge { op, key, noreply } => {
                if op == StoreOp::Set {
                    kvs.store().discard(key);
                }
                self.reply(ProtocolError::TooLarge.reply(), noreply);
            }
            Event::Close(error) => {
                self.pending = None;
                self.reply(error.reply(), false);
                self.close = true;
            }
        }
    }

    fn command(&mut self, c: Command<'_>, kvs: &Kvs, stats: &CoreStats, now: RelTime) {
        let store = kvs.store();
        match c {
            Command::Get { keys, cas, more } => {
                for key in keys.iter() {
                    inc(&stats.cmd_get);
                    match store.get(key, now) {
                        Some(item) => {
                            inc(&stats.get_hits);
                            self.push_item(item, cas);
                        }
                        None => inc(&stats.get_misses),
                    }
                }
                if !more {
                    self.reply(END, false);
                }
            }
            Command::Store(h) => {
                self.pending = Some(Pending {
                    builder: Item::builder(h.key, h.flags, h.len as usize),
                    filled: 0,
                    op: h.op,
                    exptime: kvs.clock().expiry(h.exptime, now),
                    cas: h.cas,
                    noreply: h.noreply,
                });
            }
            Command::Delete { key, noreply } => {
                if store.delete(key, now) {
                    inc(&stats.delete_hits);
                    self.reply(b"DELETED\r\n", noreply);
                } else {
                    inc(&stats.delete_misses);
                    self.reply(b"NOT_FOUND\r\n", noreply);
                }
            }
            Command::Arith {
                key,
                delta,
                incr,
                noreply,
            } => {
                let (hits, misses) = if incr {
                    (&stats.incr_hits, &stats.incr_misses)
                } else {
                    (&stats.decr_hits, &stats.decr_misses)
                };
                match store.arith(key, incr, delta, now) {
                    ArithResult::Value(v) => {
                        inc(hits);
                        if !noreply {
                            let mut digits = [0u8; 20];
                            let n = format_u64(v, &mut digits);
                            let mut text = Vec::with_capacity(n + 2);
                            text.extend_from_slice(&digits[..n]);
                            text.extend_from_slice(b"\r\n");
                            self.push(TxBuf::from_vec(text));
                        }
                    }
                    ArithResult::NotFound => {
                        inc(misses);
                        self.reply(b"NOT_FOUND\r\n", noreply);
                    }
                    ArithResult::NonNumeric => self.reply(
                        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
                        noreply,
                    ),
                    ArithResult::NoMemory => self.reply(b"SERVER_ERROR out of memory\r\n", noreply),
                }
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                inc(&stats.cmd_touch);
                if store.touch(key, kvs.clock().expiry(exptime, now), now) {
                    inc(&stats.touch_hits);
                    self.reply(b"TOUCHED\r\n", noreply);
                } else {
                    inc(&stats.touch_misses);
                    self.reply(b"NOT_FOUND\r\n", noreply);
                }
            }
            Command::FlushAll { delay, noreply } => {
                inc(&stats.cmd_flush);
                let at = if delay > 0 {
                    kvs.clock().expiry(delay, now)
                } else {
                    0
                };
                store.flush(at);
                self.reply(b"OK\r\n", noreply);
            }
            Command::Stats => self.push(TxBuf::from_vec(super::stats::report(kvs, now))),
            Command::Version => {
                let text = concat!("VERSION ixkvs-", env!("CARGO_PKG_VERSION"), "\r\n");
                self.reply(text.as_bytes(), false);
            }
            Command::Verbosity { noreply } => self.reply(b"OK\r\n", noreply),
            Command::Quit => self.close = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::protocol::MAX_GET_LINE;
    use crate::kvs::store::StoreConfig;

    fn kvs() -> Kvs {
        Kvs::new(StoreConfig::default(), 1)
    }

    /// Feeds `input` and returns every reply byte.
    fn run(s: &mut Session, kvs: &Kvs, input: &[u8]) -> Vec<u8> {
        assert_eq!(s.feed(input, kvs, 0, 10), input.len());
        drain(s)
    }

    fn drain(s: &mut Session) -> Vec<u8> {
        let out: Vec<u8> = s
            .replies()
            .iter()
            .flat_map(|b| b.as_slice().to_vec())
            .collect();
        s.consume(out.len());
        assert_eq!(s.reply_bytes(), 0);
        out
    }

    fn talk(input: &[u8]) -> String {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        String::from_utf8(run(&mut s, &kvs, input)).unwrap()
    }

    #[test]
    fn set_get_gets_and_multi_get() {
        assert_eq!(
            talk(b"set a 5 0 2\r\nhi\r\nset b 0 0 0\r\n\r\nget a b c\r\ngets a\r\n"),
            "STORED\r\nSTORED\r\nVALUE a 5 2\r\nhi\r\nVALUE b 0 0\r\n\r\nEND\r\n\
             VALUE a 5 2 1\r\nhi\r\nEND\r\n"
        );
    }

    #[test]
    fn every_storage_reply() {
        assert_eq!(
            talk(
                b"add k 0 0 1\r\na\r\nadd k 0 0 1\r\nb\r\nreplace x 0 0 1\r\nc\r\n\
                  append k 0 0 1\r\nz\r\nprepend k 0 0 1\r\ny\r\ncas k 0 0 1 99\r\nq\r\n\
                  cas k 0 0 1 3\r\nr\r\ncas nope 0 0 1 1\r\ns\r\nget k\r\n"
            ),
            "STORED\r\nNOT_STORED\r\nNOT_STORED\r\nSTORED\r\nSTORED\r\nEXISTS\r\nSTORED\r\n\
             NOT_FOUND\r\nVALUE k 0 1\r\nr\r\nEND\r\n"
        );
    }

    #[test]
    fn delete_incr_decr_touch_flush_version_verbosity() {
        let text = talk(
            b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nget n\r\nincr nope 1\r\n\
              set s 0 0 1\r\nx\r\nincr s 1\r\ndelete n\r\ndelete n\r\ntouch s 100\r\n\
              touch n 1\r\nverbosity 1\r\nflush_all\r\nget s\r\nversion\r\n",
        );
        assert_eq!(
            text,
            format!(
                "STORED\r\n15\r\n0\r\nVALUE n 0 2\r\n0 \r\nEND\r\nNOT_FOUND\r\nSTORED\r\n\
                 CLIENT_ERROR cannot increment or decrement non-numeric value\r\nDELETED\r\n\
                 NOT_FOUND\r\nTOUCHED\r\nNOT_FOUND\r\nOK\r\nOK\r\nEND\r\nVERSION {}\r\n",
                crate::kvs::VERSION
            )
        );
    }

    #[test]
    fn noreply_silences_successes_and_errors() {
        assert_eq!(
            talk(
                b"set a 0 0 1 noreply\r\n1\r\nincr a 1 noreply\r\nincr a x noreply\r\n\
                  set q 0 0 1 noreply\r\n12\r\nflush_all noreply\r\nset a 0 0 1 noreply\r\n2\r\n\
                  delete zz noreply\r\ntouch a 1 noreply\r\nget a\r\n"
            ),
            // The bad chunk consumed "12\r", leaving "\n": an empty line.
            "ERROR\r\nVALUE a 0 1\r\n2\r\nEND\r\n"
        );
    }

    #[test]
    fn error_replies_match_memcached() {
        let mut big = b"set a 0 0 1\r\nA\r\nset a 0 0 2000000\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 2_000_000));
        big.extend_from_slice(b"\r\nget a\r\nbogus\r\nset x 0 0 3\r\nabcd\r\ndelete a 1\r\n");
        assert_eq!(
            talk(&big),
            "STORED\r\nSERVER_ERROR object too large for cache\r\nEND\r\nERROR\r\n\
             CLIENT_ERROR bad data chunk\r\nERROR\r\n\
             CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
        );
    }

    #[test]
    fn quit_closes_after_earlier_replies() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        let out = run(&mut s, &kvs, b"get a\r\nquit\r\nget b\r\n");
        assert_eq!(out, b"END\r\n");
        assert!(s.wants_close());
    }

    #[test]
    fn garbage_gets_an_error_then_the_connection_closes() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        let out = run(&mut s, &kvs, &[b'x'; 5000]);
        assert_eq!(out, b"CLIENT_ERROR line too long\r\n");
        assert!(s.wants_close());
    }

    #[test]
    fn get_hits_reference_the_stored_bytes_without_copying() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        run(&mut s, &kvs, b"set k 0 0 3\r\nabc\r\n");
        s.feed(b"get k\r\n", &kvs, 0, 10);
        let item = kvs.store().get(b"k", 10).unwrap();
        let first = &s.replies()[0];
        let (off, _) = item.get_reply();
        assert!(std::ptr::eq(
            first.as_slice().as_ptr(),
            item.bytes()[off..].as_ptr()
        ));
        assert_eq!(s.replies().len(), 2, "one slice for the item, one for END");
    }

    #[test]
    fn a_request_split_at_every_byte_gives_the_same_replies() {
        let script: &[u8] = b"set a 1 0 5\r\nhello\r\nget a\r\nincr n 1\r\nset n 0 0 1\r\n7\r\n\
            incr n 1\r\ngets a\r\nappend a 0 0 1\r\n!\r\nget a n\r\ndelete a\r\n";
        let whole = talk(script);
        for i in 0..=script.len() {
            let kvs = kvs();
            let mut s = Session::new(1 << 20);
            let mut out = run(&mut s, &kvs, &script[..i]);
            out.extend(run(&mut s, &kvs, &script[i..]));
            assert_eq!(String::from_utf8(out).unwrap(), whole, "split at {i}");
        }
    }

    #[test]
    fn a_session_moved_to_another_thread_mid_request_gives_the_same_replies() {
        let script: &[u8] = b"set a 1 0 5\r\nhello\r\nget a\r\nincr n 1\r\nset n 0 0 1\r\n7\r\n\
            incr n 1\r\ngets a\r\nappend a 0 0 1\r\n!\r\nget a n\r\ndelete a\r\n";
        let whole = talk(script);
        for i in 0..=script.len() {
            let kvs = std::sync::Arc::new(kvs());
            let mut s = Session::new(1 << 20);
            // Replies of the first part stay queued and travel with it.
            assert_eq!(s.feed(&script[..i], &kvs, 0, 10), i);
            let moved = s.into_moved();
            let (k, rest) = (kvs.clone(), script[i..].to_vec());
            let out = std::thread::spawn(move || {
                let mut s = Session::from_moved(moved);
                run(&mut s, &k, &rest)
            })
            .join()
            .unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), whole, "moved at {i}");
        }
    }

    #[test]
    fn a_full_backlog_stops_reading_at_a_command_boundary() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        let mut set = b"set big 0 0 100000\r\n".to_vec();
        set.extend(std::iter::repeat_n(b'v', 100_000));
        set.extend_from_slice(b"\r\n");
        run(&mut s, &kvs, &set);
        let gets = b"get big\r\n".repeat(10);
        let used = s.feed(&gets, &kvs, 0, 10);
        assert_eq!(used, 3 * 9, "three replies of 100 KB pass the limit");
        assert!(s.is_blocked());
        assert_eq!(
            s.feed(&gets[used..], &kvs, 0, 10),
            0,
            "blocked: nothing read"
        );
        s.consume(s.reply_bytes());
        assert!(!s.is_blocked());
        assert_eq!(s.feed(&gets[used..], &kvs, 0, 10), 3 * 9);
    }

    /// Regression: memcslap's default `mget`, one `get` line of 10,000
    /// keys (about 400 KB), closed the connection with `CLIENT_ERROR line
    /// too long`; memcached answers it.
    #[test]
    fn a_multi_get_of_ten_thousand_keys_gets_every_value_and_one_end() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        let key = |i: usize| format!("memcslap-like-key-{i:030}");
        let mut sets = Vec::new();
        for i in (0..10_000).step_by(3) {
            sets.extend_from_slice(
                format!("set {} {i} 0 3\r\n{:03}\r\n", key(i), i % 1000).as_bytes(),
            );
        }
        run(&mut s, &kvs, &sets);
        let mut get = b"get".to_vec();
        let mut expected = Vec::new();
        for i in 0..10_000 {
            get.extend_from_slice(format!(" {}", key(i)).as_bytes());
            if i % 3 == 0 {
                expected.extend_from_slice(
                    format!("VALUE {} {i} 3\r\n{:03}\r\n", key(i), i % 1000).as_bytes(),
                );
            }
        }
        get.extend_from_slice(b"\r\nversion\r\n");
        expected
            .extend_from_slice(format!("END\r\nVERSION {}\r\n", crate::kvs::VERSION).as_bytes());
        let mut out = Vec::new();
        for piece in get.chunks(1448) {
            out.extend(run(&mut s, &kvs, piece));
        }
        assert!(out == expected, "{}", String::from_utf8_lossy(&out[..200]));
        assert!(!s.wants_close());
    }

    #[test]
    fn a_full_backlog_pauses_a_long_multi_get_between_its_keys() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        let mut set = b"set big 0 0 100000\r\n".to_vec();
        set.extend(std::iter::repeat_n(b'v', 100_000));
        set.extend_from_slice(b"\r\n");
        run(&mut s, &kvs, &set);
        let mut get = b"get".to_vec();
        for _ in 0..20_000 {
            get.extend_from_slice(b" big");
        }
        get.extend_from_slice(b"\r\n");
        // The first piece passes the line limit: its keys are handed out,
        // and their replies fill the backlog.
        let (first, rest) = get.split_at(MAX_GET_LINE + 20);
        assert_eq!(s.feed(first, &kvs, 0, 10), first.len());
        assert!(s.is_blocked());
        assert_eq!(s.feed(rest, &kvs, 0, 10), 0, "paused inside the line");
        assert!(s.mid_request());
        let mut out = drain(&mut s).len();
        assert_eq!(s.feed(rest, &kvs, 0, 10), rest.len());
        out += drain(&mut s).len();
        let value = 100_000 + "VALUE big 0 100000\r\n\r\n".len();
        assert_eq!(out, 20_000 * value + END.len());
    }

    #[test]
    fn stats_counts_commands() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        run(
            &mut s,
            &kvs,
            b"set a 0 0 1\r\n1\r\nget a b\r\ndelete b\r\ncas a 0 0 1 999\r\n2\r\n",
        );
        let text = String::from_utf8(run(&mut s, &kvs, b"stats\r\n")).unwrap();
        for line in [
            "STAT cmd_get 2",
            "STAT get_hits 1",
            "STAT get_misses 1",
            "STAT cmd_set 2",
            "STAT delete_misses 1",
            "STAT cas_badval 1",
            "STAT curr_items 1",
        ] {
            assert!(text.contains(&format!("{line}\r\n")), "{line} in {text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_requests_never_panic_and_replies_stay_bounded(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "get ", "gets ", "set ", "add ", "append ", "cas ", "incr ", "decr ", "delete ",
                "touch ", "flush_all", "stats", "k ", "k2 ", "0 ", "1 ", "3 ", "-1 ", "99 ",
                "noreply", "abc", "\r\n", "\n", " ", "\x01",
            ]), 0..300),
            cut in 0usize..4000,
        ) {
            let text = words.concat();
            let bytes = text.as_bytes();
            let kvs = kvs();
            let mut s = Session::new(1 << 20);
            let (a, b) = bytes.split_at(cut.min(bytes.len()));
            for piece in [a, b] {
                let used = s.feed(piece, &kvs, 0, 10);
                proptest::prop_assert!(used == piece.len() || s.is_blocked());
                drain(&mut s);
            }
            proptest::prop_assert!(kvs.store().stats().bytes <= kvs.store().stats().limit_maxbytes);
        }
    }

    #[test]
    fn consume_advances_through_partial_buffers() {
        let kvs = kvs();
        let mut s = Session::new(1 << 20);
        s.feed(b"get a\r\nget b\r\n", &kvs, 0, 10);
        s.consume(3);
        assert_eq!(s.replies()[0].as_slice(), b"\r\n");
        assert_eq!(s.reply_bytes(), 7);
        s.consume(100);
        assert!(s.replies().is_empty());
    }
}
