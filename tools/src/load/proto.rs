//! The memcached text protocol, client side: encoding `get` and `set`
//! requests, and an incremental parser of the server's replies.
//!
//! Follows memcached's `doc/protocol.txt` ("Storage commands",
//! "Retrieval command"):
//!
//! ```text
//! get <key>\r\n                          → VALUE <key> <flags> <bytes>[ <cas>]\r\n
//!                                          <data>\r\n ... END\r\n
//! set <key> <flags> <exptime> <bytes>\r\n
//! <data>\r\n                             → STORED\r\n | NOT_STORED\r\n | ...
//! ```
//!
//! plus the error lines `ERROR`, `CLIENT_ERROR <msg>`, `SERVER_ERROR
//! <msg>`. The parser takes bytes in chunks of any size (a reply may be
//! split anywhere, several may arrive in one chunk) and never stores a
//! value's data, only counts it; a line longer than [`MAX_LINE`] bytes, an
//! unknown reply, a malformed `VALUE` line or data not followed by `\r\n`
//! is a [`ProtoError`] — never a panic. After an error the stream cannot
//! be re-synchronised: the caller drops the connection.

/// Longest reply line accepted (a `VALUE` line with a 250-byte key, flags,
/// length and CAS fits with room to spare).
pub const MAX_LINE: usize = 512;

/// Largest value a `VALUE` line may announce (memcached's item size limit
/// is 1 MiB by default, 1 GiB at most).
pub const MAX_VALUE: u32 = 1 << 30;

/// Appends `get <key>\r\n`.
pub fn encode_get(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// Appends `set <key> 0 0 <len>\r\n` (flags 0, no expiry); the caller
/// sends `len` data bytes and `\r\n` after it.
pub fn encode_set_header(key: &[u8], len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" 0 0 ");
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Malformed reply streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// No `\r\n` within [`MAX_LINE`] bytes.
    #[error("reply line longer than {MAX_LINE} bytes: not a memcached server?")]
    LineTooLong,
    /// A line ended in a bare `\n`.
    #[error("reply line not terminated by \\r\\n")]
    BareNewline,
    /// A line that is no memcached reply.
    #[error("unknown reply line: not a memcached text-protocol server?")]
    UnknownReply,
    /// A `VALUE` line without key, flags and length.
    #[error("malformed VALUE line")]
    BadValueLine,
    /// A value's data not followed by `\r\n`.
    #[error("value data not terminated by \\r\\n (wrong length announced?)")]
    BadDataEnd,
}

/// Kinds of error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `ERROR`: unknown command.
    Generic,
    /// `CLIENT_ERROR <msg>`.
    Client,
    /// `SERVER_ERROR <msg>`.
    Server,
}

/// One parsed reply element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A `VALUE` block, reported once its data and `\r\n` are consumed.
    Value {
        /// The key.
        key: &'a [u8],
        /// The flags.
        flags: u32,
        /// Data length.
        len: u32,
    },
    /// `END`: the end of a retrieval reply.
    End,
    /// `STORED`.
    Stored,
    /// `NOT_STORED`.
    NotStored,
    /// `EXISTS`.
    Exists,
    /// `NOT_FOUND`.
    NotFound,
    /// `DELETED`.
    Deleted,
    /// An error line.
    Error(ErrorKind),
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a line in `line[..line_len]`.
    Line,
    /// Skipping a value's data: `left` bytes of data then `\r\n` remain
    /// (`left` counts the two terminator bytes too). The key is
    /// `line[key_start..key_end]`.
    Data {
        left: u32,
        flags: u32,
        len: u32,
        key_start: u16,
        key_end: u16,
    },
    /// A previous error: nothing more is parsed.
    Broken(ProtoError),
}

/// Incremental reply parser for one connection.
#[derive(Debug)]
pub struct ReplyParser {
    line: [u8; MAX_LINE],
    line_len: usize,
    state: State,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser {
            line: [0; MAX_LINE],
            line_len: 0,
            state: State::Line,
        }
    }
}

impl ReplyParser {
    /// A parser at the start of a reply stream.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Whether the parser is between replies (no partial line or value).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Line) && self.line_len == 0
    }

    /// Feeds `data`, calling `on_reply` for every complete reply element
    /// in order. `on_reply` may refuse one (its error is returned and the
    /// parser stops there). A malformed stream returns `Err` and every
    /// later call returns the same error.
    pub fn feed<E: From<ProtoError>>(
        &mut self,
        mut data: &[u8],
        mut on_reply: impl FnMut(Reply<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            match self.state {
                State::Broken(e) => return Err(e.into()),
                State::Line => {
                    let room = MAX_LINE - self.line_len;
                    match data.iter().position(|&b| b == b'\n') {
                        Some(nl) if nl < room => {
                            self.line[self.line_len..self.line_len + nl]
                                .copy_from_slice(&data[..nl]);
                            let len = self.line_len + nl;
                            self.line_len = 0;
                            data = &data[nl + 1..];
                            if len == 0 || self.line[len - 1] != b'\r' {
                                return Err(self.fail(ProtoError::BareNewline).into());
                            }
                            match self.parse_line(len - 1) {
                                Ok(Some(reply)) => on_reply(reply)?,
                                Ok(None) => {}
                                Err(e) => return Err(self.fail(e).into()),
                            }
                        }
                        _ if data.len() < room => {
                            self.line[self.line_len..self.line_len + data.len()]
                                .copy_from_slice(data);
                            self.line_len += data.len();
                            data = &[];
                        }
                        _ => return Err(self.fail(ProtoError::LineTooLong).into()),
                    }
                }
                State::Data {
                    left,
                    flags,
                    len,
                    key_start,
                    key_end,
                } => {
                    let left_us = left as usize;
                    let take = left_us.min(data.len());
                    // The final "\r\n" sits at chunk offsets left-2 and
                    // left-1; check whichever of them this chunk holds.
                    let cr_ok = left_us < 2 || left_us - 2 >= take || data[left_us - 2] == b'\r';
                    let lf_ok = left_us > take || data[left_us - 1] == b'\n';
                    if !(cr_ok && lf_ok) {
                        return Err(self.fail(ProtoError::BadDataEnd).into());
                    }
                    data = &data[take..];
                    let left = left - take as u32;
                    if left == 0 {
                        self.state = State::Line;
                        let key = &self.line[key_start as usize..key_end as usize];
                        on_reply(Reply::Value { key, flags, len })?;
                    } else {
                        self.state = State::Data {
                            left,
                            flags,
                            len,
                            key_start,
                            key_end,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: ProtoError) -> ProtoError {
        self.state = State::Broken(e);
        e
    }

    /// Parses `line[..len]` (without `\r\n`). A `VALUE` line switches to
    /// the data state and yields nothing yet.
    fn parse_line(&mut self, len: usize) -> Result<Option<Reply<'static>>, ProtoError> {
        let line = &self.line[..len];
        let reply = match line {
            b"END" => Reply::End,
            b"STORED" => Reply::Stored,
            b"NOT_STORED" => Reply::NotStored,
            b"EXISTS" => Reply::Exists,
            b"NOT_FOUND" => Reply::NotFound,
            b"DELETED" => Reply::Deleted,
            b"ERROR" => Reply::Error(ErrorKind::Generic),
            _ if line.starts_with(b"CLIENT_ERROR") => Reply::Error(ErrorKind::Client),
            _ if line.starts_with(b"SERVER_ERROR") => Reply::Error(ErrorKind::Server),
            _ if line.starts_with(b"VALUE ") => {
                let mut fields = line[6..].split(|&b| b == b' ');
                let key = fields.next().filter(|k| !k.is_empty());
                let flags = fields.next().and_then(parse_u32);
                let bytes = fields.next().and_then(parse_u32);
                let cas_ok = match fields.next() {
                    None => true,
                    Some(cas) => parse_u64(cas).is_some() && fields.next().is_none(),
                };
                let (Some(key), Some(flags), Some(len), true) = (key, flags, bytes, cas_ok) else {
                    return Err(ProtoError::BadValueLine);
                };
                if len > MAX_VALUE {
                    return Err(ProtoError::BadValueLine);
                }
                let key_start = 6;
                let key_end = key_start + key.len();
                self.state = State::Data {
                    left: len + 2,
                    flags,
                    len,
                    key_start: key_start as u16,
                    key_end: key_end as u16,
                };
                return Ok(None);
            }
            _ => return Err(ProtoError::UnknownReply),
        };
        Ok(Some(reply))
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of a reply, for comparing sequences.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Value(Vec<u8>, u32, u32),
        Other(String),
    }

    fn collect(parser: &mut ReplyParser, chunks: &[&[u8]]) -> Result<Vec<Owned>, ProtoError> {
        let mut out = Vec::new();
        for c in chunks {
            parser.feed(c, |r| {
                out.push(match r {
                    Reply::Value { key, flags, len } => Owned::Value(key.to_vec(), flags, len),
                    other => Owned::Other(format!("{other:?}")),
                });
                Ok::<(), ProtoError>(())
            })?;
        }
        Ok(out)
    }

    const STREAM: &[u8] = b"VALUE 0042 7 5\r\nhello\r\nEND\r\nEND\r\nSTORED\r\n\
VALUE k 0 0 1\r\n\r\nEND\r\nNOT_STORED\r\nSERVER_ERROR out of memory\r\nERROR\r\n\
VALUE abc 1 2\r\n\r\n\r\nEND\r\n";

    fn expected() -> Vec<Owned> {
        vec![
            Owned::Value(b"0042".to_vec(), 7, 5),
            Owned::Other("End".into()),
            Owned::Other("End".into()),
            Owned::Other("Stored".into()),
            Owned::Value(b"k".to_vec(), 0, 0),
            Owned::Other("End".into()),
            Owned::Other("NotStored".into()),
            Owned::Other("Error(Server)".into()),
            Owned::Other("Error(Generic)".into()),
            // Data that itself is "\r\n" is counted, not taken for the end.
            Owned::Value(b"abc".to_vec(), 1, 2),
            Owned::Other("End".into()),
        ]
    }

    #[test]
    fn pipelined_replies_in_one_chunk_parse_in_order() {
        let mut p = ReplyParser::new();
        assert_eq!(collect(&mut p, &[STREAM]).unwrap(), expected());
        assert!(p.is_idle());
    }

    #[test]
    fn a_split_at_every_byte_gives_the_same_replies() {
        for cut in 0..=STREAM.len() {
            let mut p = ReplyParser::new();
            let got = collect(&mut p, &[&STREAM[..cut], &STREAM[cut..]]).unwrap();
            assert_eq!(got, expected(), "cut at {cut}");
        }
        let mut p = ReplyParser::new();
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(collect(&mut p, &bytes).unwrap(), expected());
    }

    #[test]
    fn value_line_with_cas_is_accepted() {
        let mut p = ReplyParser::new();
        let got = collect(&mut p, &[b"VALUE k 3 2 99\r\nab\r\nEND\r\n"]).unwrap();
        assert_eq!(got[0], Owned::Value(b"k".to_vec(), 3, 2));
    }

    #[test]
    fn garbage_is_an_error_and_stays_one() {
        let cases: &[(&[u8], ProtoError)] = &[
            (b"HELLO\r\n", ProtoError::UnknownReply),
            (b"END\n", ProtoError::BareNewline),
            (b"\n", ProtoError::BareNewline),
            (b"VALUE\r\n", ProtoError::UnknownReply),
            (b"VALUE k\r\n", ProtoError::BadValueLine),
            (b"VALUE k 0\r\n", ProtoError::BadValueLine),
            (b"VALUE k x 1\r\n", ProtoError::BadValueLine),
            (b"VALUE k 0 -1\r\n", ProtoError::BadValueLine),
            (b"VALUE k 0 99999999999\r\n", ProtoError::BadValueLine),
            (b"VALUE k 0 1 2 3\r\n", ProtoError::BadValueLine),
            (b"VALUE  0 1\r\n", ProtoError::BadValueLine),
            (b"VALUE k 0 2\r\nabcEND\r\n", ProtoError::BadDataEnd),
            (b"VALUE k 0 2\r\nab\rX", ProtoError::BadDataEnd),
        ];
        for (input, want) in cases {
            let mut p = ReplyParser::new();
            assert_eq!(collect(&mut p, &[input]), Err(*want), "{input:?}");
            assert_eq!(collect(&mut p, &[b"END\r\n"]), Err(*want));
        }
        let mut p = ReplyParser::new();
        let long = vec![b'A'; MAX_LINE + 1];
        assert_eq!(collect(&mut p, &[&long]), Err(ProtoError::LineTooLong));
        // A long line arriving in pieces is refused too.
        let mut p = ReplyParser::new();
        let piece = [b'A'; 100];
        let pieces: Vec<&[u8]> = (0..6).map(|_| &piece[..]).collect();
        assert_eq!(collect(&mut p, &pieces), Err(ProtoError::LineTooLong));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::load::workload::Rng::new(11);
        let alphabet = b"VALUE END\r\n0123 STORED";
        for _ in 0..2_000 {
            let len = rng.below(64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u32) as usize])
                .collect();
            let mut p = ReplyParser::new();
            let _ = collect(&mut p, &[&bytes]);
        }
    }

    #[test]
    fn a_callback_error_stops_the_feed() {
        #[derive(Debug, PartialEq)]
        enum E {
            Proto,
            Refused,
        }
        impl From<ProtoError> for E {
            fn from(_: ProtoError) -> E {
                E::Proto
            }
        }
        let mut p = ReplyParser::new();
        let mut seen = 0;
        let r = p.feed(b"END\r\nEND\r\n", |_| {
            seen += 1;
            Err(E::Refused)
        });
        assert_eq!((r, seen), (Err(E::Refused), 1));
    }

    #[test]
    fn requests_are_encoded_per_the_protocol() {
        let mut out = Vec::new();
        encode_get(b"k1", &mut out);
        encode_set_header(b"k1", 12, &mut out);
        assert_eq!(out, b"get k1\r\nset k1 0 0 12\r\n");
    }
}
