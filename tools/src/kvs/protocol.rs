//! The memcached text protocol: an incremental, zero-copy request parser.
//!
//! Follows memcached's `protocol.txt` (text protocol: storage commands
//! `set`/`add`/`replace`/`append`/`prepend`/`cas`, retrieval `get`/`gets`,
//! `delete`, `incr`/`decr`, `touch`, `flush_all`, `stats`, `version`,
//! `verbosity`, `quit`) and, where the document is silent, what memcached
//! 1.6 answers on the wire: tokens are split on spaces only (runs of spaces
//! and leading spaces are ignored), a line ends at `\n` with one optional
//! `\r` before it, numbers are read as C's `strtoul`/`strtol` read them
//! (leading white space and a sign accepted, a 32-bit flags or exptime
//! that overflows is truncated, as memcached's `safe_strto*` helpers do), a
//! data block is exactly `<bytes>` bytes plus two that must be `\r\n`
//! (otherwise `CLIENT_ERROR bad data chunk`, and parsing resumes after those
//! bytes), and a trailing `noreply` silences every reply of its command,
//! errors included.
//!
//! Input arrives in pieces of any size ([`Parser::next`] takes whatever the
//! transport received). A command line that lies within one piece is parsed
//! in place: the [`Event`] borrows the caller's bytes. Only a line that spans
//! pieces is copied into the parser's line buffer, and data blocks are handed
//! out piece by piece ([`Event::Data`]) for the caller to copy straight into
//! the item being built.
//!
//! Where this parser deliberately differs from memcached:
//! - Keys with control characters (bytes below 0x21, or 0x7f) are refused
//!   with `CLIENT_ERROR bad command line format`, as `protocol.txt` requires;
//!   memcached accepts them.
//! - A command line longer than [`MAX_LINE`] bytes (other than `get`/`gets`)
//!   gets `CLIENT_ERROR line too long` and the connection is closed
//!   ([`Event::Close`]), whether or not its `\n` has arrived. memcached
//!   closes silently, and only when the `\n` is missing from its read
//!   buffer, so its behaviour depends on how the bytes were segmented; ours
//!   does not. This bounds the memory a connection can make us hold.
//! - `get`/`gets` lines have no length limit (memcached's have none: it
//!   grows its read buffer for them; memcslap's default multi-get is one
//!   line of 10,000 keys, about 400 KB). A line of up to [`MAX_GET_LINE`]
//!   bytes is held whole, as any line; a longer one is not: its keys are
//!   handed out as they arrive ([`Command::Get`] with `more` set), holding
//!   only a key cut by the end of a piece. An invalid key in such a line
//!   gets `CLIENT_ERROR bad command line format` after the values of the
//!   keys before it (and the rest of the line is skipped); memcached, which
//!   checks the whole line first, sends only the error.
//! - `stats` takes no argument (`stats <group>` answers `ERROR`).

use thiserror::Error;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 250;
/// Longest command line (without its `\n`), except `get`/`gets` lines.
pub const MAX_LINE: usize = 2048;
/// Longest `get`/`gets` line held whole (room for more than 1,000 keys of
/// 50 bytes); the keys of a longer one are handed out as they arrive.
pub const MAX_GET_LINE: usize = 64 * 1024;
/// Bytes an item is charged besides its key and value when its size is
/// checked against the item size limit (the reply header and bookkeeping).
pub const ITEM_OVERHEAD: usize = 64;

/// Most tokens any command other than `get`/`gets` takes.
const MAX_TOKENS: usize = 8;

/// An error reply the protocol defines. `Display` is the reply's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Unknown command, or a known one with the wrong number of tokens.
    #[error("ERROR")]
    UnknownCommand,
    /// A token is malformed (key too long, number unreadable, ...).
    #[error("CLIENT_ERROR bad command line format")]
    BadFormat,
    /// `delete` with a hold time other than 0.
    #[error("CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]")]
    DeleteUsage,
    /// `touch` or `flush_all` with an unreadable time.
    #[error("CLIENT_ERROR invalid exptime argument")]
    InvalidExptime,
    /// `incr`/`decr` with an unreadable delta.
    #[error("CLIENT_ERROR invalid numeric delta argument")]
    InvalidDelta,
    /// A data block not terminated by `\r\n` where its length says.
    #[error("CLIENT_ERROR bad data chunk")]
    BadDataChunk,
    /// A command line longer than the limit: the connection is closed.
    #[error("CLIENT_ERROR line too long")]
    LineTooLong,
    /// A value larger than the item size limit (its bytes are skipped).
    #[error("SERVER_ERROR object too large for cache")]
    TooLarge,
}

impl ProtocolError {
    /// The reply on the wire, `\r\n` included.
    pub fn reply(self) -> &'static [u8] {
        match self {
            ProtocolError::UnknownCommand => b"ERROR\r\n",
            ProtocolError::BadFormat => b"CLIENT_ERROR bad command line format\r\n",
            ProtocolError::DeleteUsage => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            }
            ProtocolError::InvalidExptime => b"CLIENT_ERROR invalid exptime argument\r\n",
            ProtocolError::InvalidDelta => b"CLIENT_ERROR invalid numeric delta argument\r\n",
            ProtocolError::BadDataChunk => b"CLIENT_ERROR bad data chunk\r\n",
            ProtocolError::LineTooLong => b"CLIENT_ERROR line too long\r\n",
            ProtocolError::TooLarge => b"SERVER_ERROR object too large for cache\r\n",
        }
    }
}

/// The storage commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Add the data after the present value.
    Append,
    /// Add the data before the present value.
    Prepend,
    /// Store only if the item is unchanged since the client's `gets`.
    Cas,
}

/// The line of a storage command; its data block follows as
/// [`Event::Data`] pieces and ends with [`Event::DataEnd`] (or a
/// [`ProtocolError::BadDataChunk`] error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHeader<'a> {
    /// Which storage command.
    pub op: StoreOp,
    /// The key (valid: 1..=250 bytes, no control characters).
    pub key: &'a [u8],
    /// Opaque client flags.
    pub flags: u32,
    /// Expiry as the client sent it: 0 never, up to 30 days relative
    /// seconds, beyond that an absolute Unix time, negative expired.
    pub exptime: i32,
    /// Length of the data block (without its `\r\n`).
    pub len: u32,
    /// The `cas` command's unique value (0 for the other commands).
    pub cas: u64,
    /// Send no reply.
    pub noreply: bool,
}

/// The keys of a `get`/`gets` line, all already checked to be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a>(&'a [u8]);

impl<'a> Keys<'a> {
    /// The keys in request order (duplicates included).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        KeyIter(self.0)
    }
}

/// The space-separated words of a slice, empty ones skipped (a command
/// line's tokens, a `get` line's keys).
struct KeyIter<'a>(&'a [u8]);

impl<'a> Iterator for KeyIter<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.0.iter().position(|&b| b != b' ')?;
        let rest = &self.0[start..];
        let end = find_byte(b' ', rest).unwrap_or(rest.len());
        self.0 = &rest[end..];
        Some(&rest[..end])
    }
}

/// A complete command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`gets <key>*`, or some of its keys.
    Get {
        /// The keys.
        keys: Keys<'a>,
        /// `gets`: replies carry the cas unique value.
        cas: bool,
        /// More keys of the same line follow in later events (a line longer
        /// than [`MAX_GET_LINE`], handed out as it arrives): the reply's
        /// `END` waits for the event where this is false.
        more: bool,
    },
    /// A storage command; its data follows.
    Store(StoreHeader<'a>),
    /// `delete <key> [0] [noreply]`.
    Delete {
        /// The key.
        key: &'a [u8],
        /// Send no reply.
        noreply: bool,
    },
    /// `incr`/`decr <key> <delta> [noreply]`.
    Arith {
        /// The key.
        key: &'a [u8],
        /// The amount.
        delta: u64,
        /// `incr` (wraps at 2^64) or `decr` (stops at 0).
        incr: bool,
        /// Send no reply.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        /// The key.
        key: &'a [u8],
        /// The new expiry, as in [`StoreHeader::exptime`].
        exptime: i32,
        /// Send no reply.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`.
    FlushAll {
        /// Seconds until the flush takes effect (0 or negative: now).
        delay: i32,
        /// Send no reply.
        noreply: bool,
    },
    /// `stats`.
    Stats,
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]` (accepted, has no effect).
    Verbosity {
        /// Send no reply.
        noreply: bool,
    },
    /// `quit`: close the connection.
    Quit,
}

/// What the parser found next in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A command line.
    Command(Command<'a>),
    /// The next piece of the data block of the last [`Command::Store`].
    Data(&'a [u8]),
    /// The data block is complete and correctly terminated.
    DataEnd,
    /// Reply with `error` unless `noreply`. After
    /// [`ProtocolError::BadDataChunk`] the pending store is abandoned.
    Error {
        /// The error reply.
        error: ProtocolError,
        /// The command asked for no reply.
        noreply: bool,
    },
    /// A storage command's value exceeds the item size limit: reply
    /// [`ProtocolError::TooLarge`] unless `noreply`; its data block is
    /// skipped. memcached also drops the key's old value for `set`.
    TooLarge {
        /// The storage command.
        op: StoreOp,
        /// Its key.
        key: &'a [u8],
        /// Send no reply.
        noreply: bool,
    },
    /// Reply with the error, then close the connection; the parser ignores
    /// all further input.
    Close(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a command line.
    Line,
    /// Reading the value bytes of a data block.
    Data { left: u32, noreply: bool },
    /// Reading the two terminator bytes of a data block.
    Tail { seen: u8, ok: bool, noreply: bool },
    /// Skipping the data block of a refused storage command.
    Swallow { left: u64 },
    /// Reading the keys of a `get`/`gets` line longer than
    /// [`MAX_GET_LINE`]: `line` holds the start of a key that the end of a
    /// piece cut off (right after the switch, the keys read so far). `any`:
    /// a key was handed out; `bad`: one was invalid, skip to the line end.
    GetKeys { cas: bool, any: bool, bad: bool },
    /// The connection is done (quit, or a fatal error).
    Closed,
}

/// The incremental parser of one connection's requests.
#[derive(Debug)]
pub struct Parser {
    state: State,
    /// A command line that spans input pieces, reassembled (bounded by
    /// [`MAX_GET_LINE`]); in [`State::GetKeys`], a key cut in two.
    line: Vec<u8>,
    /// The first `line_used` bytes of `line` were handed out in the last
    /// event: remove them on the next call.
    line_used: usize,
    item_max: usize,
}

impl Parser {
    /// A parser refusing items larger than `item_max` bytes (value + key +
    /// [`ITEM_OVERHEAD`]).
    pub fn new(item_max: usize) -> Parser {
        Parser {
            state: State::Line,
            line: Vec::new(),
            line_used: 0,
            item_max,
        }
    }

    /// Whether the connection is done (after `quit` or [`Event::Close`]).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the parser is between commands (not inside a data block or
    /// a partial line): a good place to pause reading.
    pub fn at_command_boundary(&self) -> bool {
        self.state == State::Line && self.line.is_empty()
    }

    /// Whether the caller may stop feeding here for a while (to let
    /// replies drain): between commands, or between the keys of a `get`
    /// line too long to hold whole.
    pub fn can_pause(&self) -> bool {
        self.at_command_boundary() || matches!(self.state, State::GetKeys { .. })
    }

    /// Takes bytes from the front of `input` and returns the next event, or
    /// `None` once `input` is used up (a partial line is kept for the next
    /// call). Never panics, whatever the bytes.
    pub fn next<'a, 'b: 'a>(&'a mut self, input: &mut &'b [u8]) -> Option<Event<'a>> {
        if self.line_used > 0 {
            self.line.drain(..self.line_used.min(self.line.len()));
            self.line_used = 0;
        }
        loop {
            match self.state {
                State::Closed => {
                    *input = &[];
                    return None;
                }
                State::Line => {
                    if input.is_empty() {
                        return None;
                    }
                    let nl = find_byte(b'\n', input);
                    let head = &input[..nl.unwrap_or(input.len())];
                    let len = self.line.len() + head.len();
                    // Every line may be `MAX_LINE` long: only a longer one
                    // needs its command word looked at.
                    if len > MAX_LINE && len > line_limit(&self.line, head) {
                        if let Some((keys_at, cas)) = get_prefix(&self.line, head) {
                            self.start_get_keys(input, keys_at, cas);
                            continue;
                        }
                        self.line = Vec::new();
                        self.state = State::Closed;
                        *input = &[];
                        return Some(Event::Close(ProtocolError::LineTooLong));
                    }
                    let Some(nl) = nl else {
                        self.line.extend_from_slice(input);
                        *input = &[];
                        return None;
                    };
                    let (head, rest) = input.split_at(nl);
                    *input = &rest[1..];
                    let line: &'a [u8] = if self.line.is_empty() {
                        head
                    } else {
                        self.line.extend_from_slice(head);
                        self.line_used = self.line.len();
                        &self.line
                    };
                    let (event, next) = parse_line(strip_cr(line), self.item_max);
                    self.state = next;
                    return Some(event);
                }
                State::Data { left: 0, noreply } => {
                    self.state = State::Tail {
                        seen: 0,
                        ok: true,
                        noreply,
                    };
                }
                State::Data { left, noreply } => {
                    if input.is_empty() {
                        return None;
                    }
                    let n = input.len().min(left as usize);
                    let (data, rest) = input.split_at(n);
                    *input = rest;
                    self.state = State::Data {
                        left: left - n as u32,
                        noreply,
                    };
                    return Some(Event::Data(data));
                }
                State::Tail {
                    mut seen,
                    mut ok,
                    noreply,
                } => {
                    while seen < 2 {
                        let Some((&b, rest)) = input.split_first() else {
                            self.state = State::Tail { seen, ok, noreply };
                            return None;
                        };
                        *input = rest;
                        ok &= b == if seen == 0 { b'\r' } else { b'\n' };
                        seen += 1;
                    }
                    self.state = State::Line;
                    return Some(if ok {
                        Event::DataEnd
                    } else {
                        Event::Error {
                            error: ProtocolError::BadDataChunk,
                            noreply,
                        }
                    });
                }
                State::Swallow { left } => {
                    if input.is_empty() {
                        return None;
                    }
                    let n = (input.len() as u64).min(left);
                    *input = &input[n as usize..];
                    self.state = if n == left {
                        State::Line
                    } else {
                        State::Swallow { left: left - n }
                    };
                }
                State::GetKeys { cas, any, bad } => {
                    if input.is_empty() {
                        return None;
                    }
                    let nl = input.iter().position(|&b| b == b'\n');
                    if bad {
                        let Some(nl) = nl else {
                            *input = &[];
                            return None;
                        };
                        *input = &input[nl + 1..];
                        self.state = State::Line;
                        return Some(Event::Error {
                            error: ProtocolError::BadFormat,
                            noreply: false,
                        });
                    }
                    if let Some(space) = self.line.iter().rposition(|&b| b == b' ') {
                        // Just switched: the keys of the part held so far.
                        if !Keys(&self.line[..space]).iter().all(valid_key) {
                            self.fail_get_keys(cas);
                            continue;
                        }
                        if Keys(&self.line[..space]).iter().next().is_none() {
                            self.line.drain(..=space);
                            continue;
                        }
                        self.line_used = space + 1;
                        self.state = State::GetKeys {
                            cas,
                            any: true,
                            bad,
                        };
                        return Some(Event::Command(Command::Get {
                            keys: Keys(&self.line[..space]),
                            cas,
                            more: true,
                        }));
                    }
                    if !self.line.is_empty() {
                        // The rest of a key cut by the end of a piece.
                        let end = input
                            .iter()
                            .position(|&b| b == b' ' || b == b'\n')
                            .unwrap_or(input.len());
                        // A valid key, and maybe the `\r` of the line end.
                        if self.line.len() + end > MAX_KEY_LEN + 1 {
                            self.fail_get_keys(cas);
                            continue;
                        }
                        self.line.extend_from_slice(&input[..end]);
                        *input = &input[end..];
                        // No space or line end yet: the key goes on.
                        let &after = input.first()?;
                        let key_len = if after == b'\n' {
                            strip_cr(&self.line).len()
                        } else {
                            self.line.len()
                        };
                        if key_len == 0 {
                            // Only the `\r` of the line end, after a space.
                            self.line.clear();
                            continue;
                        }
                        if !valid_key(&self.line[..key_len]) {
                            self.fail_get_keys(cas);
                            continue;
                        }
                        self.line_used = self.line.len();
                        self.state = State::GetKeys {
                            cas,
                            any: true,
                            bad,
                        };
                        return Some(Event::Command(Command::Get {
                            keys: Keys(&self.line[..key_len]),
                            cas,
                            more: true,
                        }));
                    }
                    let Some(nl) = nl else {
                        // Complete keys up to the last space; the rest of
                        // the piece starts a key.
                        let (keys, tail) = match input.iter().rposition(|&b| b == b' ') {
                            Some(space) => (&input[..space], &input[space + 1..]),
                            None => (&input[..0], *input),
                        };
                        *input = &[];
                        if tail.len() > MAX_KEY_LEN + 1 || !Keys(keys).iter().all(valid_key) {
                            self.fail_get_keys(cas);
                            continue;
                        }
                        self.line.extend_from_slice(tail);
                        // Nothing to hand out unless a key is complete.
                        Keys(keys).iter().next()?;
                        self.state = State::GetKeys {
                            cas,
                            any: true,
                            bad,
                        };
                        return Some(Event::Command(Command::Get {
                            keys: Keys(keys),
                            cas,
                            more: true,
                        }));
                    };
                    let keys = Keys(strip_cr(&input[..nl]));
                    *input = &input[nl + 1..];
                    self.state = State::Line;
                    if !keys.iter().all(valid_key) {
                        return Some(Event::Error {
                            error: ProtocolError::BadFormat,
                            noreply: false,
                        });
                    }
                    if !any && keys.iter().next().is_none() {
                        return Some(Event::Error {
                            error: ProtocolError::UnknownCommand,
                            noreply: false,
                        });
                    }
                    return Some(Event::Command(Command::Get {
                        keys,
                        cas,
                        more: false,
                    }));
                }
            }
        }
    }

    /// Switches to handing out the keys of a `get`/`gets` line as they
    /// arrive: the line so far is `line` then `input`, and its keys start
    /// `keys_at` bytes into it.
    fn start_get_keys(&mut self, input: &mut &[u8], keys_at: usize, cas: bool) {
        if keys_at <= self.line.len() {
            self.line.drain(..keys_at);
        } else {
            let skip = keys_at - self.line.len();
            self.line.clear();
            *input = input.get(skip..).unwrap_or(&[]);
        }
        self.state = State::GetKeys {
            cas,
            any: false,
            bad: false,
        };
    }

    /// An invalid key in a `get` line handed out as it arrives: skip to
    /// the end of the line, then answer with an error.
    fn fail_get_keys(&mut self, cas: bool) {
        self.line.clear();
        self.state = State::GetKeys {
            cas,
            any: true,
            bad: true,
        };
    }
}

/// Whether the line beginning with `a` then `b` is a `get`/`gets` line:
/// where its keys start (just after the command word), and whether it is
/// `gets`.
fn get_prefix(a: &[u8], b: &[u8]) -> Option<(usize, bool)> {
    let spaces = a.iter().chain(b).take_while(|&&c| c == b' ').count();
    let mut head = [0u8; 5];
    let mut n = 0;
    for &c in a.iter().chain(b).skip(spaces).take(head.len()) {
        head[n] = c;
        n += 1;
    }
    if head[..n].starts_with(b"get ") {
        Some((spaces + 3, false))
    } else if head[..n].starts_with(b"gets ") {
        Some((spaces + 4, true))
    } else {
        None
    }
}

/// The length limit of the line beginning with `a` then `b` held whole:
/// `get`/`gets` lines may be longer than the others.
fn line_limit(a: &[u8], b: &[u8]) -> usize {
    if get_prefix(a, b).is_some() {
        MAX_GET_LINE
    } else {
        MAX_LINE
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    }
}

/// Whether `key` may be stored: 1..=250 bytes, no control characters or
/// spaces.
pub fn valid_key(key: &[u8]) -> bool {
    let (words, tail) = key.as_chunks::<8>();
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && words
            .iter()
            .all(|w| !has_separator_or_control(u64::from_le_bytes(*w)))
        && tail.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn error(error: ProtocolError, noreply: bool) -> (Event<'static>, State) {
    (Event::Error { error, noreply }, State::Line)
}

fn command(c: Command<'_>) -> (Event<'_>, State) {
    (Event::Command(c), State::Line)
}

/// Parses one command line (without its line end).
fn parse_line(line: &[u8], item_max: usize) -> (Event<'_>, State) {
    // The command word first: `get` lines (most requests) and the commands
    // without arguments need no tokenizing.
    let Some(start) = line.iter().position(|&b| b != b' ') else {
        return error(ProtocolError::UnknownCommand, false);
    };
    let rest = &line[start..];
    let cmd_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    match &rest[..cmd_end] {
        b"get" => return parse_get(&rest[cmd_end..], false),
        b"gets" => return parse_get(&rest[cmd_end..], true),
        b"version" => return command(Command::Version),
        b"quit" => return (Event::Command(Command::Quit), State::Closed),
        _ => {}
    }
    let mut toks: [&[u8]; MAX_TOKENS] = [&[]; MAX_TOKENS];
    let mut n = 0;
    let mut too_many = false;
    for t in KeyIter(line) {
        if n == MAX_TOKENS {
            too_many = true;
            break;
        }
        toks[n] = t;
        n += 1;
    }
    if n == 0 {
        return error(ProtocolError::UnknownCommand, false);
    }
    let cmd = toks[0];
    if too_many {
        return error(ProtocolError::UnknownCommand, false);
    }
    let toks = &toks[..n];
    // memcached's set_noreply_maybe: the last token decides.
    let noreply = n > 1 && toks[n - 1] == b"noreply";
    match cmd {
        b"set" => parse_store(StoreOp::Set, toks, noreply, item_max),
        b"add" => parse_store(StoreOp::Add, toks, noreply, item_max),
        b"replace" => parse_store(StoreOp::Replace, toks, noreply, item_max),
        b"append" => parse_store(StoreOp::Append, toks, noreply, item_max),
        b"prepend" => parse_store(StoreOp::Prepend, toks, noreply, item_max),
        b"cas" => parse_store(StoreOp::Cas, toks, noreply, item_max),
        b"delete" => parse_delete(toks, noreply),
        b"incr" | b"decr" => {
            if !(3..=4).contains(&n) {
                return error(ProtocolError::UnknownCommand, false);
            }
            if !valid_key(toks[1]) {
                return error(ProtocolError::BadFormat, noreply);
            }
            match safe_strtoull(toks[2]) {
                Some(delta) => command(Command::Arith {
                    key: toks[1],
                    delta,
                    incr: cmd == b"incr",
                    noreply,
                }),
                None => error(ProtocolError::InvalidDelta, noreply),
            }
        }
        b"touch" => {
            if !(3..=4).contains(&n) {
                return error(ProtocolError::UnknownCommand, false);
            }
            if !valid_key(toks[1]) {
                return error(ProtocolError::BadFormat, noreply);
            }
            match safe_strtol(toks[2]) {
                Some(exptime) => command(Command::Touch {
                    key: toks[1],
                    exptime,
                    noreply,
                }),
                None => error(ProtocolError::InvalidExptime, noreply),
            }
        }
        b"flush_all" => {
            if n > 3 {
                return error(ProtocolError::UnknownCommand, false);
            }
            let delay = if n == if noreply { 2 } else { 1 } {
                0
            } else {
                match safe_strtol(toks[1]) {
                    Some(d) => d,
                    None => return error(ProtocolError::InvalidExptime, noreply),
                }
            };
            command(Command::FlushAll { delay, noreply })
        }
        b"verbosity" if (2..=3).contains(&n) => command(Command::Verbosity { noreply }),
        b"stats" if n == 1 => command(Command::Stats),
        _ => error(ProtocolError::UnknownCommand, false),
    }
}

/// Parses the keys of a `get`/`gets` line (what follows the command word).
fn parse_get(keys: &[u8], cas: bool) -> (Event<'_>, State) {
    // One pass over the bytes: every key valid (as `valid_key` checks), at
    // least one. Eight bytes at a time while they hold only key characters.
    let mut key_len = 0;
    let mut any = false;
    let first = keys.iter().position(|&b| b != b' ').unwrap_or(keys.len());
    let (words, tail) = keys[first..].as_chunks::<8>();
    for word in words {
        if !has_separator_or_control(u64::from_le_bytes(*word)) {
            key_len += 8;
            any = true;
            if key_len > MAX_KEY_LEN {
                return error(ProtocolError::BadFormat, false);
            }
            continue;
        }
        for &b in word {
            if !key_byte(b, &mut key_len, &mut any) {
                return error(ProtocolError::BadFormat, false);
            }
        }
    }
    for &b in tail {
        if !key_byte(b, &mut key_len, &mut any) {
            return error(ProtocolError::BadFormat, false);
        }
    }
    if !any {
        return error(ProtocolError::UnknownCommand, false);
    }
    command(Command::Get {
        keys: Keys(keys),
        cas,
        more: false,
    })
}

const ONES: u64 = u64::from_le_bytes([1; 8]);
const TOPS: u64 = u64::from_le_bytes([0x80; 8]);

/// The index of the first `needle` in `haystack`, eight bytes at a time
/// (request lines are short: this beats a vectorized search's set-up).
#[inline]
fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    let pattern = ONES * u64::from(needle);
    let (words, tail) = haystack.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        // A byte equal to the needle is zero here; the lowest byte whose
        // top bit is then set is exactly the first zero byte.
        let w = u64::from_le_bytes(*word) ^ pattern;
        let zero = w.wrapping_sub(ONES) & !w & TOPS;
        if zero != 0 {
            return Some(i * 8 + (zero.trailing_zeros() / 8) as usize);
        }
    }
    let at = words.len() * 8;
    tail.iter().position(|&b| b == needle).map(|i| at + i)
}

/// Whether any byte of the 8 in `w` is a space, a control character or
/// DEL (SWAR: a byte below 0x21, or one equal to 0x7f, borrows into its top
/// bit; the test is exact as to whether any byte matches).
#[inline]
fn has_separator_or_control(w: u64) -> bool {
    let below = w.wrapping_sub(ONES * 0x21) & !w & TOPS;
    let del = w ^ (ONES * 0x7f);
    let del = del.wrapping_sub(ONES) & !del & TOPS;
    below | del != 0
}

/// One byte of a `get` line's keys: a space ends a key; false if the byte
/// makes the key invalid.
#[inline]
fn key_byte(b: u8, key_len: &mut usize, any: &mut bool) -> bool {
    if b == b' ' {
        *key_len = 0;
        true
    } else if b < b' ' || b == 0x7f || *key_len == MAX_KEY_LEN {
        false
    } else {
        *key_len += 1;
        *any = true;
        true
    }
}

fn parse_store<'a>(
    op: StoreOp,
    toks: &[&'a [u8]],
    noreply: bool,
    item_max: usize,
) -> (Event<'a>, State) {
    let base = if op == StoreOp::Cas { 6 } else { 5 };
    if toks.len() != base && toks.len() != base + 1 {
        return error(ProtocolError::UnknownCommand, false);
    }
    let key = toks[1];
    if !valid_key(key) {
        return error(ProtocolError::BadFormat, noreply);
    }
    let (Some(flags), Some(exptime), Some(vlen)) = (
        safe_strtoul(toks[2]),
        safe_strtol(toks[3]),
        safe_strtol(toks[4]),
    ) else {
        return error(ProtocolError::BadFormat, noreply);
    };
    let cas = if op == StoreOp::Cas {
        match safe_strtoull(toks[5]) {
            Some(c) => c,
            None => return error(ProtocolError::BadFormat, noreply),
        }
    } else {
        0
    };
    if !(0..=i32::MAX - 2).contains(&vlen) {
        return error(ProtocolError::BadFormat, noreply);
    }
    let len = vlen as u32;
    if len as usize + key.len() + ITEM_OVERHEAD > item_max {
        return (
            Event::TooLarge { op, key, noreply },
            State::Swallow {
                left: u64::from(len) + 2,
            },
        );
    }
    (
        Event::Command(Command::Store(StoreHeader {
            op,
            key,
            flags,
            exptime,
            len,
            cas,
            noreply,
        })),
        State::Data { left: len, noreply },
    )
}

fn parse_delete<'a>(toks: &[&'a [u8]], noreply: bool) -> (Event<'a>, State) {
    let n = toks.len();
    if !(2..=4).contains(&n) {
        return error(ProtocolError::UnknownCommand, false);
    }
    if n > 2 {
        let hold_is_zero = toks[2] == b"0";
        let valid = (n == 3 && (hold_is_zero || noreply)) || (n == 4 && hold_is_zero && noreply);
        if !valid {
            return error(ProtocolError::DeleteUsage, noreply);
        }
    }
    if !valid_key(toks[1]) {
        return error(ProtocolError::BadFormat, noreply);
    }
    command(Command::Delete {
        key: toks[1],
        noreply,
    })
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// C's `strtoull` on a token or value: skips leading white space, takes an
/// optional sign and at least one digit. Returns the value (negated modulo
/// 2^64 after a `-`, as C does) and whether there was a `-`; `None` when
/// there is no digit, the magnitude overflows 64 bits, or the digits are
/// followed by anything but white space or a NUL.
fn c_strtoull(s: &[u8]) -> Option<(u64, bool)> {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add(u64::from(s[i] - b'0'))?;
        i += 1;
    }
    if i == start || (i < s.len() && !is_c_space(s[i]) && s[i] != 0) {
        return None;
    }
    Some((if neg { v.wrapping_neg() } else { v }, neg))
}

/// memcached's `safe_strtoull`: as [`c_strtoull`], refusing a negative
/// number unless its negation is small (C's quirk: `-0` is 0).
pub fn safe_strtoull(s: &[u8]) -> Option<u64> {
    let (v, neg) = c_strtoull(s)?;
    if neg && (v as i64) < 0 {
        return None;
    }
    Some(v)
}

/// memcached's `safe_strtoul` into a 32-bit value: read as 64 bits, then
/// truncated (so 4294967296 reads as 0, as memcached stores it).
fn safe_strtoul(s: &[u8]) -> Option<u32> {
    safe_strtoull(s).map(|v| v as u32)
}

/// memcached's `safe_strtol` into a 32-bit value: C's `strtol` (64-bit
/// range), then truncated.
fn safe_strtol(s: &[u8]) -> Option<i32> {
    let (v, neg) = c_strtoull(s)?;
    let magnitude = if neg { v.wrapping_neg() } else { v };
    let value: i64 = if neg {
        if magnitude > 1 << 63 {
            return None;
        }
        (magnitude as i64).wrapping_neg()
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some(value as i32)
}

/// Parses a stored value as `incr`/`decr` do (memcached reads it with
/// `safe_strtoull`; the value is followed by `\r\n` in its memory).
pub fn parse_counter(value: &[u8]) -> Option<u64> {
    safe_strtoull(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024 * 1024;

    /// Every event, with borrowed bytes turned into owned ones, and data
    /// pieces merged.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Get(Vec<Vec<u8>>, bool),
        Store(StoreOp, Vec<u8>, u32, i32, u32, u64, bool),
        Data(Vec<u8>),
        DataEnd,
        Other(String),
        Error(ProtocolError, bool),
        TooLarge(StoreOp, Vec<u8>, bool),
        Close(ProtocolError),
    }

    /// Appends `e` to `out`. `get_open`: the last event was a `get` with
    /// more keys to come, which this one's keys join.
    fn own(e: Event<'_>, out: &mut Vec<Owned>, get_open: &mut bool) {
        let o = match e {
            Event::Command(Command::Get { keys, cas, more }) => {
                let keys = keys.iter().map(<[u8]>::to_vec);
                let open = std::mem::replace(get_open, more);
                if let (true, Some(Owned::Get(prev, _))) = (open, out.last_mut()) {
                    prev.extend(keys);
                    return;
                }
                Owned::Get(keys.collect(), cas)
            }
            Event::Command(Command::Store(h)) => Owned::Store(
                h.op,
                h.key.to_vec(),
                h.flags,
                h.exptime,
                h.len,
                h.cas,
                h.noreply,
            ),
            Event::Command(c) => Owned::Other(format!("{c:?}")),
            Event::Data(d) => {
                if let Some(Owned::Data(prev)) = out.last_mut() {
                    prev.extend_from_slice(d);
                    return;
                }
                Owned::Data(d.to_vec())
            }
            Event::DataEnd => Owned::DataEnd,
            Event::Error { error, noreply } => Owned::Error(error, noreply),
            Event::TooLarge { op, key, noreply } => Owned::TooLarge(op, key.to_vec(), noreply),
            Event::Close(e) => Owned::Close(e),
        };
        out.push(o);
    }

    fn parse_pieces(pieces: &[&[u8]]) -> Vec<Owned> {
        let mut p = Parser::new(MAX);
        let mut out = Vec::new();
        let mut get_open = false;
        for piece in pieces {
            let mut input = *piece;
            while let Some(e) = p.next(&mut input) {
                own(e, &mut out, &mut get_open);
            }
            assert!(input.is_empty(), "the parser leaves no input behind");
        }
        out
    }

    fn parse(bytes: &[u8]) -> Vec<Owned> {
        parse_pieces(&[bytes])
    }

    fn err(e: ProtocolError) -> Owned {
        Owned::Error(e, false)
    }

    #[test]
    fn get_and_multi_get_list_their_keys() {
        assert_eq!(
            parse(b"get a\r\ngets  b  c d \r\n"),
            vec![
                Owned::Get(vec![b"a".to_vec()], false),
                Owned::Get(vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()], true),
            ]
        );
    }

    #[test]
    fn lines_may_end_with_a_bare_newline_and_start_with_spaces() {
        assert_eq!(
            parse(b"  get a\nversion\n"),
            vec![
                Owned::Get(vec![b"a".to_vec()], false),
                Owned::Other("Version".into())
            ]
        );
    }

    #[test]
    fn get_without_keys_and_unknown_commands_are_errors() {
        use ProtocolError::UnknownCommand as U;
        assert_eq!(
            parse(b"get\r\ngets   \r\nGET a\r\nbogus\r\n\r\n \r\n"),
            vec![err(U), err(U), err(U), err(U), err(U), err(U)]
        );
    }

    #[test]
    fn storage_commands_carry_their_fields_then_the_data() {
        assert_eq!(
            parse(b"set k 5 100 3\r\nabc\r\ncas k 1 0 2 77 noreply\r\nxy\r\n"),
            vec![
                Owned::Store(StoreOp::Set, b"k".to_vec(), 5, 100, 3, 0, false),
                Owned::Data(b"abc".to_vec()),
                Owned::DataEnd,
                Owned::Store(StoreOp::Cas, b"k".to_vec(), 1, 0, 2, 77, true),
                Owned::Data(b"xy".to_vec()),
                Owned::DataEnd,
            ]
        );
        for (name, op) in [
            ("add", StoreOp::Add),
            ("replace", StoreOp::Replace),
            ("append", StoreOp::Append),
            ("prepend", StoreOp::Prepend),
        ] {
            let line = format!("{name} key 0 -1 0\r\n\r\n");
            assert_eq!(
                parse(line.as_bytes()),
                vec![
                    Owned::Store(op, b"key".to_vec(), 0, -1, 0, 0, false),
                    Owned::DataEnd
                ]
            );
        }
    }

    #[test]
    fn data_blocks_may_contain_line_ends_and_any_bytes() {
        assert_eq!(
            parse(b"set k 0 0 6\r\n\r\n\0\xff\r\n\r\n"),
            vec![
                Owned::Store(StoreOp::Set, b"k".to_vec(), 0, 0, 6, 0, false),
                Owned::Data(b"\r\n\0\xff\r\n".to_vec()),
                Owned::DataEnd,
            ]
        );
    }

    #[test]
    fn a_data_block_not_ending_in_crlf_is_a_bad_chunk_and_parsing_resumes_after_it() {
        // memcached reads exactly <bytes>+2 bytes, then checks the last two.
        assert_eq!(
            parse(b"set x 0 0 3\r\nabcd\r\nget x\r\n"),
            vec![
                Owned::Store(StoreOp::Set, b"x".to_vec(), 0, 0, 3, 0, false),
                Owned::Data(b"abc".to_vec()),
                err(ProtocolError::BadDataChunk),
                err(ProtocolError::UnknownCommand),
                Owned::Get(vec![b"x".to_vec()], false),
            ]
        );
        assert_eq!(
            parse(b"set x 0 0 1 noreply\r\n12\r\n")[2],
            Owned::Error(ProtocolError::BadDataChunk, true)
        );
    }

    #[test]
    fn storage_lines_with_bad_tokens_are_refused_without_reading_data() {
        use ProtocolError::{BadFormat as B, UnknownCommand as U};
        assert_eq!(
            parse(
                b"set x\r\nset x 0 0\r\nset x a 0 1\r\nset x 0 0 -1\r\nset x -1 0 1\r\n\
                  set x 0 0 1 noreply extra\r\ncas x 0 0 1\r\ncas x 0 0 1 abc\r\n"
            ),
            vec![
                err(U),
                err(U),
                err(B),
                err(B),
                err(B),
                err(U),
                err(U),
                err(B)
            ]
        );
        let long = format!("set {} 0 0 1\r\n", "k".repeat(251));
        assert_eq!(parse(long.as_bytes()), vec![err(B)]);
        assert_eq!(
            parse(b"set k 0 0 noreply\r\n"),
            vec![Owned::Error(B, true)],
            "noreply is the last token, so the error is silent"
        );
    }

    #[test]
    fn numbers_are_read_as_memcached_reads_them() {
        // Flags overflowing 32 bits are truncated; signs are accepted.
        assert_eq!(
            parse(b"set k 4294967296 +5 1\r\nA\r\n")[0],
            Owned::Store(StoreOp::Set, b"k".to_vec(), 0, 5, 1, 0, false)
        );
        // An exptime beyond i32 wraps negative (expired), as memcached's does.
        assert_eq!(
            parse(b"set k 0 4000000000 1\r\nA\r\n")[0],
            Owned::Store(StoreOp::Set, b"k".to_vec(), 0, -294967296, 1, 0, false)
        );
        assert_eq!(safe_strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(safe_strtoull(b"18446744073709551616"), None);
        assert_eq!(safe_strtoull(b"-1"), None);
        assert_eq!(safe_strtoull(b"-0"), Some(0));
        assert_eq!(safe_strtoull(b"+7"), Some(7));
        assert_eq!(safe_strtoull(b"5a"), None);
        assert_eq!(safe_strtoull(b""), None);
        assert_eq!(safe_strtoull(b"-"), None);
        assert_eq!(safe_strtol(b"-9223372036854775808"), Some(0));
        assert_eq!(safe_strtol(b"9223372036854775808"), None);
        assert_eq!(safe_strtol(b"-2"), Some(-2));
        assert_eq!(parse_counter(b" 5"), Some(5));
        assert_eq!(parse_counter(b"5\t"), Some(5));
        assert_eq!(parse_counter(b"9 "), Some(9));
        assert_eq!(parse_counter(b"5\0x"), Some(5));
        assert_eq!(parse_counter(b"-12"), None);
        assert_eq!(parse_counter(b"abc"), None);
        assert_eq!(parse_counter(b""), None);
    }

    #[test]
    fn too_large_values_are_skipped_whole() {
        let mut req = b"set big 0 0 2000000\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 2_000_000));
        req.extend_from_slice(b"\r\nget big\r\n");
        assert_eq!(
            parse(&req),
            vec![
                Owned::TooLarge(StoreOp::Set, b"big".to_vec(), false),
                Owned::Get(vec![b"big".to_vec()], false)
            ]
        );
        // The limit counts the key and the overhead too.
        let fits = MAX - ITEM_OVERHEAD - 1;
        assert!(matches!(
            parse(format!("set k 0 0 {fits}\r\n").as_bytes())[0],
            Owned::Store(..)
        ));
        assert!(matches!(
            parse(format!("set k 0 0 {}\r\n", fits + 1).as_bytes())[0],
            Owned::TooLarge(..)
        ));
    }

    #[test]
    fn delete_accepts_only_a_zero_hold_time() {
        use ProtocolError::{DeleteUsage as D, UnknownCommand as U};
        let out = parse(
            b"delete a\r\ndelete a 0\r\ndelete a noreply\r\ndelete a 0 noreply\r\n\
              delete a 1\r\ndelete\r\ndelete a b c d\r\n",
        );
        assert_eq!(
            out[..4],
            [
                Owned::Other("Delete { key: [97], noreply: false }".into()),
                Owned::Other("Delete { key: [97], noreply: false }".into()),
                Owned::Other("Delete { key: [97], noreply: true }".into()),
                Owned::Other("Delete { key: [97], noreply: true }".into()),
            ]
        );
        assert_eq!(out[4..], [err(D), err(U), err(U)]);
    }

    #[test]
    fn incr_decr_touch_flush_verbosity_and_their_errors() {
        use ProtocolError::*;
        let out = parse(
            b"incr a 5\r\ndecr a 1 noreply\r\nincr a -1\r\nincr a\r\nincr b abc noreply\r\n\
              touch a 10\r\ntouch a x\r\ntouch a\r\nflush_all\r\nflush_all 10\r\n\
              flush_all noreply\r\nflush_all x\r\nflush_all 0 noreply\r\nverbosity 1\r\n\
              verbosity\r\nstats\r\nstats items\r\nquit\r\nget a\r\n",
        );
        assert_eq!(
            out,
            vec![
                Owned::Other("Arith { key: [97], delta: 5, incr: true, noreply: false }".into()),
                Owned::Other("Arith { key: [97], delta: 1, incr: false, noreply: true }".into()),
                err(InvalidDelta),
                err(UnknownCommand),
                Owned::Error(InvalidDelta, true),
                Owned::Other("Touch { key: [97], exptime: 10, noreply: false }".into()),
                err(InvalidExptime),
                err(UnknownCommand),
                Owned::Other("FlushAll { delay: 0, noreply: false }".into()),
                Owned::Other("FlushAll { delay: 10, noreply: false }".into()),
                Owned::Other("FlushAll { delay: 0, noreply: true }".into()),
                err(InvalidExptime),
                Owned::Other("FlushAll { delay: 0, noreply: true }".into()),
                Owned::Other("Verbosity { noreply: false }".into()),
                err(UnknownCommand),
                Owned::Other("Stats".into()),
                err(UnknownCommand),
                Owned::Other("Quit".into()),
            ],
            "nothing after quit is parsed"
        );
    }

    #[test]
    fn the_word_at_a_time_byte_search_finds_the_first_match() {
        let mut hay = [b'a'; 40];
        for len in 0..hay.len() {
            assert_eq!(find_byte(b'\n', &hay[..len]), None);
        }
        for first in 0..hay.len() {
            hay = [b'a'; 40];
            hay[first] = b'\n';
            // Bytes that borrow in the subtraction (0x00, 0x01 after the
            // xor) right after the match must not move it.
            if first + 1 < hay.len() {
                hay[first + 1] = b'\n' ^ 1;
            }
            hay[hay.len() - 1] = b'\n';
            for len in first + 1..=hay.len() {
                assert_eq!(
                    find_byte(b'\n', &hay[..len]),
                    Some(first),
                    "at {first} of {len}"
                );
            }
            assert_eq!(find_byte(0x8a, &hay), None, "a top-bit twin is no match");
        }
    }

    #[test]
    fn the_word_at_a_time_key_checks_agree_with_a_byte_by_byte_check() {
        // protocol.txt: no control characters or whitespace, 1..=250 bytes.
        let reference = |k: &[u8]| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.iter().all(|&b| b > b' ' && b != 0x7f)
        };
        // Every byte value but the line end at every position of a word,
        // in a `get` line and alone; then key lengths around the limit.
        for b in (0..=255u8).filter(|&b| b != b'\n') {
            for at in 0..8 {
                let mut key = *b"abcdefghijklmnop";
                key[at + 3] = b;
                let line = [b"get ".as_slice(), &key].concat();
                let got = parse(&[line.as_slice(), b"\r\n"].concat());
                let keys: Vec<&[u8]> = key
                    .split(|&c| c == b' ')
                    .filter(|k| !k.is_empty())
                    .collect();
                let expected = if keys.iter().all(|k| reference(k)) {
                    vec![Owned::Get(keys.iter().map(|k| k.to_vec()).collect(), false)]
                } else {
                    vec![err(ProtocolError::BadFormat)]
                };
                assert_eq!(got, expected, "byte {b:#x} at {at}");
                assert_eq!(valid_key(&key), reference(&key), "byte {b:#x} at {at}");
            }
        }
        for len in 240..260 {
            let key = "k".repeat(len);
            let line = format!("get {key}\r\n");
            let ok = parse(line.as_bytes()) != vec![err(ProtocolError::BadFormat)];
            assert_eq!(ok, len <= MAX_KEY_LEN, "key of {len} bytes");
            assert_eq!(valid_key(key.as_bytes()), len <= MAX_KEY_LEN);
        }
        assert!(!valid_key(b""));
    }

    #[test]
    fn keys_too_long_or_with_control_characters_are_refused() {
        use ProtocolError::BadFormat as B;
        let ok = format!("get {}\r\n", "k".repeat(250));
        assert!(matches!(parse(ok.as_bytes())[0], Owned::Get(..)));
        let long = format!("get a {} b\r\n", "k".repeat(251));
        assert_eq!(parse(long.as_bytes()), vec![err(B)]);
        assert_eq!(
            parse(b"get a\x01b\r\nget a\tb\r\nget a\r\r\ndelete a\x7f\r\n"),
            vec![err(B), err(B), err(B), err(B)]
        );
    }

    #[test]
    fn a_line_too_long_closes_the_connection_whether_or_not_it_ended() {
        let mut p = Parser::new(MAX);
        let junk = vec![b'x'; 1500];
        let mut input = &junk[..];
        assert_eq!(p.next(&mut input), None);
        let mut input = &junk[..];
        assert_eq!(
            p.next(&mut input),
            Some(Event::Close(ProtocolError::LineTooLong))
        );
        assert!(p.is_closed());
        let mut input: &[u8] = b"get a\r\n";
        assert_eq!(p.next(&mut input), None, "nothing more is parsed");
        assert!(input.is_empty());

        let mut long = vec![b'x'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), vec![Owned::Close(ProtocolError::LineTooLong)]);
    }

    #[test]
    fn a_long_multi_get_is_held_whole_up_to_its_own_limit() {
        let mut line = b"get".to_vec();
        for _ in 0..3000 {
            line.extend_from_slice(b" a");
        }
        let (head, tail) = line.split_at(2500);
        let mut p = Parser::new(MAX);
        let mut input = head;
        assert_eq!(p.next(&mut input), None);
        let mut input = tail;
        assert_eq!(p.next(&mut input), None);
        let mut input: &[u8] = b"\r\n";
        let Some(Event::Command(Command::Get { keys, more, .. })) = p.next(&mut input) else {
            panic!("one get event")
        };
        assert_eq!((keys.iter().count(), more), (3000, false));
    }

    /// The keys of a multi-get line `keys` long, of 20 to 59 bytes each,
    /// like memcslap's (`get k1 k2 ...`, without the line end).
    fn memcslap_mget(keys: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let names: Vec<Vec<u8>> = (0..keys)
            .map(|i| format!("{i:0w$}", w = 20 + i * 7 % 40).into_bytes())
            .collect();
        let mut line = b"get".to_vec();
        for k in &names {
            line.push(b' ');
            line.extend_from_slice(k);
        }
        (line, names)
    }

    /// Regression: memcslap's default `mget` is one line of 10,000 keys
    /// (about 400 KB), which memcached serves; ixkvs closed the connection
    /// with `CLIENT_ERROR line too long`.
    #[test]
    fn a_multi_get_longer_than_the_line_limit_hands_out_its_keys_as_they_arrive() {
        let (mut line, names) = memcslap_mget(10_000);
        assert!(line.len() > 4 * MAX_GET_LINE);
        line.extend_from_slice(b"\r\nget last\r\n");
        let expected = vec![
            Owned::Get(names.clone(), false),
            Owned::Get(vec![b"last".to_vec()], false),
        ];
        // As TCP segments, as reads of a Linux socket, and whole.
        for size in [1448, 65536, line.len()] {
            let pieces: Vec<&[u8]> = line.chunks(size).collect();
            assert_eq!(parse_pieces(&pieces), expected, "pieces of {size}");
        }
        // gets too; the line held so far may end anywhere in a key.
        let (mut line, names) = memcslap_mget(3000);
        line.insert(3, b's');
        line.extend_from_slice(b"\r\n");
        for size in [997, 4096, 70_001] {
            let pieces: Vec<&[u8]> = line.chunks(size).collect();
            assert_eq!(
                parse_pieces(&pieces),
                vec![Owned::Get(names.clone(), true)],
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn a_long_get_line_split_at_every_offset_gives_the_same_keys() {
        let (line, names) = memcslap_mget(2000);
        let mut line = line;
        // Its last key ends with the `\r` of the line end in one piece and
        // the `\n` in the next at one of the offsets.
        line.extend_from_slice(b"\r\nversion\r\n");
        let expected = vec![Owned::Get(names, false), Owned::Other("Version".into())];
        for i in (MAX_GET_LINE - 300..line.len())
            .step_by(7)
            .chain([line.len() - 11])
        {
            let (a, b) = line.split_at(i);
            let (a, c) = a.split_at(MAX_GET_LINE - 400);
            assert_eq!(parse_pieces(&[a, c, b]), expected, "split at {i}");
        }
    }

    #[test]
    fn a_long_get_line_may_end_in_spaces_with_its_line_end_cut_anywhere() {
        let (mut line, names) = memcslap_mget(3000);
        line.extend_from_slice(b"  \r\n");
        let n = line.len();
        for (a, b) in [
            (n - 4, n - 1),
            (n - 3, n - 1),
            (n - 2, n - 1),
            (n - 3, n - 2),
        ] {
            let pieces = [&line[..a], &line[a..b], &line[b..]];
            assert_eq!(
                parse_pieces(&pieces),
                vec![Owned::Get(names.clone(), false)],
                "cut at {a} and {b}"
            );
        }
    }

    #[test]
    fn a_long_get_line_events_come_before_its_end_and_hold_only_a_cut_key() {
        let (line, names) = memcslap_mget(5000);
        let mut p = Parser::new(MAX);
        let mut keys_seen = 0;
        for piece in line.chunks(1000) {
            let mut input = piece;
            while let Some(e) = p.next(&mut input) {
                let Event::Command(Command::Get { keys, more, .. }) = e else {
                    panic!("{e:?}")
                };
                assert!(more, "the line has not ended");
                keys_seen += keys.iter().count();
            }
            if keys_seen > 0 {
                assert!(p.line.len() <= MAX_KEY_LEN + 1, "{}", p.line.len());
                assert!(p.can_pause());
                assert!(!p.at_command_boundary());
            }
        }
        assert!(keys_seen > 4000 && keys_seen < names.len());
        let mut input: &[u8] = b"\r\n";
        let mut rest = 0;
        while let Some(e) = p.next(&mut input) {
            let Event::Command(Command::Get { keys, .. }) = e else {
                panic!("{e:?}")
            };
            rest += keys.iter().count();
        }
        assert_eq!(keys_seen + rest, names.len());
        assert!(p.at_command_boundary());
    }

    #[test]
    fn a_bad_key_in_a_long_get_line_is_an_error_after_the_keys_before_it() {
        use ProtocolError::{BadFormat as B, UnknownCommand as U};
        let (line, names) = memcslap_mget(4000);
        for bad in [&b"k\x01"[..], &[b'k'; 251][..]] {
            let mut req = line.clone();
            req.push(b' ');
            req.extend_from_slice(bad);
            req.extend_from_slice(b" more keys\r\nget a\r\n");
            let pieces: Vec<&[u8]> = req.chunks(1448).collect();
            let out = parse_pieces(&pieces);
            let [Owned::Get(keys, false), Owned::Error(B, false), Owned::Get(a, false)] = &out[..]
            else {
                panic!("{out:?}")
            };
            assert!(keys.len() <= names.len() && keys[..] == names[..keys.len()]);
            assert_eq!(a, &[b"a".to_vec()]);
        }
        // A key too long cut across pieces, and one at the switch.
        let mut req = line.clone();
        req.extend_from_slice(b" ");
        req.extend(std::iter::repeat_n(b'z', 5000));
        req.extend_from_slice(b"\r\n");
        for size in [100, 1448, 100_000] {
            let pieces: Vec<&[u8]> = req.chunks(size).collect();
            let out = parse_pieces(&pieces);
            assert_eq!(out.last(), Some(&err(B)), "pieces of {size}: {out:?}");
        }
        // No key at all, only spaces.
        let mut req = b"get".to_vec();
        req.extend(std::iter::repeat_n(b' ', MAX_GET_LINE + 10));
        req.extend_from_slice(b"\r\n");
        let pieces: Vec<&[u8]> = req.chunks(1448).collect();
        assert_eq!(parse_pieces(&pieces), vec![err(U)]);
    }

    #[test]
    fn the_line_buffer_stays_bounded_under_an_endless_get_line() {
        let mut p = Parser::new(MAX);
        let (line, _) = memcslap_mget(300);
        p.next(&mut &b"get"[..]);
        for _ in 0..100 {
            let mut input = &line[3..];
            while p.next(&mut input).is_some() {}
            assert!(p.line.capacity() <= 2 * MAX_GET_LINE);
        }
        assert!(!p.is_closed());
        assert!(p.line.len() <= MAX_KEY_LEN + 1);
    }

    #[test]
    fn the_line_buffer_stays_bounded_under_endless_garbage() {
        let mut p = Parser::new(MAX);
        let junk = [b'z'; 997];
        for _ in 0..100 {
            let mut input = &junk[..];
            while p.next(&mut input).is_some() {}
            assert!(p.line.capacity() <= 2 * MAX_GET_LINE);
        }
        assert!(p.is_closed());
    }

    const SCRIPT: &[u8] = b"set a 1 0 5\r\nhello\r\nget a b\r\ngets a\r\nappend a 0 0 2\r\n!!\r\n\
        incr n 3\r\ndelete a\r\nset x 0 0 3\r\nabcd\r\nbogus\r\ntouch a 5 noreply\r\n\
        cas a 0 0 1 9\r\nZ\r\nset e 0 0 0\r\n\r\nflush_all\r\nversion\r\nquit\r\n";

    #[test]
    fn splitting_the_input_at_every_offset_gives_the_same_events() {
        let whole = parse(SCRIPT);
        assert_eq!(whole.len(), 24, "{whole:?}");
        for i in 0..=SCRIPT.len() {
            let (a, b) = SCRIPT.split_at(i);
            assert_eq!(parse_pieces(&[a, b]), whole, "split at {i}");
        }
    }

    #[test]
    fn byte_at_a_time_input_gives_the_same_events() {
        let pieces: Vec<&[u8]> = SCRIPT.chunks(1).collect();
        assert_eq!(parse_pieces(&pieces), parse(SCRIPT));
    }

    #[test]
    fn lines_within_one_piece_are_not_copied() {
        let mut p = Parser::new(MAX);
        let input_bytes = b"get abc\r\n".to_vec();
        let mut input = &input_bytes[..];
        let Some(Event::Command(Command::Get { keys, .. })) = p.next(&mut input) else {
            panic!()
        };
        let key = keys.iter().next().unwrap();
        assert!(std::ptr::eq(key.as_ptr(), input_bytes[4..].as_ptr()));
        assert_eq!(p.line.capacity(), 0);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_and_leave_no_input(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20)
        ) {
            let mut p = Parser::new(4096);
            for c in &chunks {
                let mut input = &c[..];
                while p.next(&mut input).is_some() {}
                proptest::prop_assert!(input.is_empty());
                proptest::prop_assert!(p.line.len() <= MAX_GET_LINE);
            }
        }

        #[test]
        fn long_get_lines_give_their_keys_however_they_are_split(
            keys in proptest::collection::vec(
                (1usize..=MAX_KEY_LEN, 1usize..4, 0u16..20_000),
                300..1200,
            ),
            trailing_spaces in 0usize..3,
            cuts in proptest::collection::vec(0usize..300_000, 0..6),
        ) {
            // Now and then a bad key: too long, a control character, a
            // `\r` inside.
            let names: Vec<Vec<u8>> = keys
                .iter()
                .enumerate()
                .map(|(i, &(n, _, bad))| {
                    let mut k = vec![b'a' + (i % 26) as u8; n];
                    match bad {
                        0 => k.resize(MAX_KEY_LEN + 1, b'z'),
                        1 => k[n / 2] = 0x01,
                        2 => k[n - 1] = b'\r',
                        _ => {}
                    }
                    k
                })
                .collect();
            let mut line = b"gets".to_vec();
            for (k, &(_, spaces, _)) in names.iter().zip(&keys) {
                line.extend(std::iter::repeat_n(b' ', spaces));
                line.extend_from_slice(k);
            }
            line.extend(std::iter::repeat_n(b' ', trailing_spaces));
            line.extend_from_slice(b"\r\nget next\r\n");
            let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(line.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([line.len()]) {
                pieces.push(&line[at..c]);
                at = c;
            }
            let out = parse_pieces(&pieces);
            let next = Owned::Get(vec![b"next".to_vec()], false);
            match names.iter().position(|k| !valid_key(k)) {
                None => proptest::prop_assert_eq!(out, vec![Owned::Get(names, true), next]),
                Some(first_bad) => {
                    // The keys before the bad one, or some of them, then
                    // the error; the next line is parsed as usual.
                    let (got, tail) = match &out[..] {
                        [Owned::Get(got, true), tail @ ..] => (&got[..], tail),
                        tail => (&[][..], tail),
                    };
                    proptest::prop_assert!(got.len() <= first_bad);
                    proptest::prop_assert_eq!(got, &names[..got.len()]);
                    proptest::prop_assert_eq!(tail, &[err(ProtocolError::BadFormat), next][..]);
                }
            }
        }

        #[test]
        fn random_protocol_like_text_never_panics(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "get", "gets", "set", "cas", "add", "incr", "decr", "delete", "touch", "flush_all",
                "noreply", "0", "1", "-1", "5", "99999999999", "k", " ", "\r\n", "\n", "\r", "abc",
                "stats", "verbosity", "append", "prepend", "replace", "quit", "version",
            ]), 0..200),
            split in 0usize..2000,
        ) {
            let text: String = words.concat();
            let bytes = text.as_bytes();
            let cut = split.min(bytes.len());
            let whole = parse(bytes);
            let (a, b) = bytes.split_at(cut);
            proptest::prop_assert_eq!(parse_pieces(&[a, b]), whole);
        }
    }
}
