//! Incremental validator for HTTP/1.1 chunked message bodies (RFC 9112 §7.1).
//!
//! The proxy forwards chunked bodies verbatim, but it must know where a body
//! ends (the next bytes belong to the next message) and it must refuse a
//! malformed chunk stream: if the proxy and the server disagreed on where a
//! body ends, an attacker could hide a second request inside the first one
//! ("request smuggling"). So the framing is checked strictly, byte by byte,
//! except for chunk data, which is skipped in bulk.
//!
//! The grammar accepted is:
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ BWS chunk-ext ] CRLF chunk-data CRLF
//! last-chunk     = 1*("0") [ BWS chunk-ext ] CRLF
//! chunk-size     = 1*16HEXDIG                 ; must fit in a u64
//! chunk-ext      = ";" *( any byte but CTLs, HTAB allowed )
//!                  ; a quoted-string in it must be closed before the CR
//! trailer-section = *( field-name ":" field-value CRLF )
//! ```
//!
//! The decoder never allocates: its whole state is a handful of integers.

use std::fmt;

/// Most hex digits accepted in a chunk size (16 digits fill a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

/// Most bytes allowed between the chunk size and the CR of its line
/// (whitespace plus extensions).
const MAX_EXTENSION_BYTES: usize = 4096;

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk size is missing, has a non-hex digit or more than 16 digits.
    BadSize,
    /// The chunk size does not fit in a `u64`.
    SizeOverflow,
    /// A chunk extension is too long or contains a control character.
    BadExtension,
    /// A line does not end in CRLF, or chunk data is not followed by CRLF.
    BadLineEnding,
    /// A trailer field line is malformed (bad name, control char, obs-fold).
    BadTrailer,
    /// The trailer fields are longer than the configured limit.
    TrailerTooLarge,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "bad chunk size",
            ChunkError::SizeOverflow => "chunk size overflow",
            ChunkError::BadExtension => "bad chunk extension",
            ChunkError::BadLineEnding => "bad line ending",
            ChunkError::BadTrailer => "bad trailer field",
            ChunkError::TrailerTooLarge => "trailer too large",
        })
    }
}

impl std::error::Error for ChunkError {}

/// Outcome of one [`ChunkedDecoder::scan`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// How many bytes at the start of the input belong to the body.
    pub used: usize,
    /// Whether the body ended within those bytes.
    pub done: bool,
}

/// Where the decoder is in the chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Reading the hex digits of a chunk size.
    Size,
    /// Reading whitespace after the chunk size; only `;` may follow.
    SizeWs,
    /// Reading a chunk extension, up to the CR of the size line.
    Ext,
    /// Saw the CR of a size line; expecting its LF.
    SizeLf,
    /// Inside chunk data, with this many bytes still to skip.
    Data { remaining: u64 },
    /// After chunk data; expecting its CR.
    DataCr,
    /// After chunk data and CR; expecting its LF.
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    /// Reading a trailer field name, up to the `:`.
    TrailerName,
    /// Reading a trailer field value, up to the CR.
    TrailerValue,
    /// Saw the CR of a trailer line; expecting its LF.
    TrailerLf,
    /// Saw the CR of the final empty line; expecting its LF.
    FinalLf,
    /// The body is complete; nothing more belongs to it.
    Done,
    /// The body was rejected with this error, which every later call repeats.
    Failed(ChunkError),
}

/// Where a chunk extension is with respect to a quoted-string (RFC 9110 §5.6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Outside,
    Inside,
    /// Inside, just after a backslash: the next byte is taken as is.
    Escaped,
}

/// Incremental validator for one chunked body.
///
/// Feed it the bytes as they arrive with [`scan`](Self::scan); it reports how
/// many belong to the body and when the body is complete. Create a new
/// decoder for each message.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    /// Where we are in the body.
    state: Part,
    /// Value of the chunk size read so far on the current size line.
    size: u64,
    /// Hex digits read so far on the current size line.
    digits: u8,
    /// Whitespace and extension bytes read so far on the current size line.
    ext_len: usize,
    /// Whether the extension bytes so far left a quoted-string open. A size line can only
    /// end outside one, so this is `Outside` at the start of every line.
    quote: Quote,
    /// Bytes of trailer field lines read so far (the final CRLF excluded).
    trailer_len: usize,
    /// Limit for `trailer_len`.
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// Creates a decoder for a body whose trailer field lines may total at
    /// most `max_trailer_bytes` bytes (CRLFs included, final empty line not).
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: Part::Size,
            size: 0,
            digits: 0,
            ext_len: 0,
            quote: Quote::Outside,
            trailer_len: 0,
            max_trailer_bytes,
        }
    }

    /// Scans the start of `input`. `used` bytes of it belong to the body;
    /// when `done` the body's final CRLF was among them and `used` stops
    /// right after it.
    ///
    /// Until the body is done, every byte given is used (`used ==
    /// input.len()`), so the caller never has to keep bytes back. Once done,
    /// every call returns `Scan { used: 0, done: true }`.
    ///
    /// On error the body must be dropped (and the connection closed): the
    /// decoder stays failed and every later call returns the same error.
    pub fn scan(&mut self, input: &[u8]) -> Result<Scan, ChunkError> {
        if let Part::Failed(err) = self.state {
            return Err(err);
        }
        let mut used = 0;
        while used < input.len() && self.state != Part::Done {
            match self.step(&input[used..]) {
                Ok(n) => used += n,
                Err(err) => {
                    self.state = Part::Failed(err);
                    return Err(err);
                }
            }
        }
        Ok(Scan {
            used,
            done: self.is_done(),
        })
    }

    /// Whether the whole body, final CRLF included, has been scanned.
    pub fn is_done(&self) -> bool {
        self.state == Part::Done
    }

    /// Bytes of chunk data still to come in the current chunk (0 outside chunk data): they
    /// may pass unscanned (`pass_data`), the framing around them may not.
    pub fn data_left(&self) -> u64 {
        match self.state {
            Part::Data { remaining } => remaining,
            _ => 0,
        }
    }

    /// `n` bytes of chunk data passed without being scanned (at most `data_left`).
    pub fn pass_data(&mut self, n: u64) {
        if let Part::Data { remaining } = self.state {
            debug_assert!(n <= remaining);
            self.state = match remaining - n.min(remaining) {
                0 => Part::DataCr,
                left => Part::Data { remaining: left },
            };
        }
    }

    /// `scan`, for a reader that wants the data itself (a client de-chunking a stream): chunk
    /// data in `input` is appended to `data`, the framing around it is checked as `scan` does.
    pub fn decode(&mut self, input: &[u8], data: &mut Vec<u8>) -> Result<Scan, ChunkError> {
        let mut used = 0;
        while used < input.len() && !self.is_done() {
            let left = usize::try_from(self.data_left()).unwrap_or(usize::MAX);
            if left > 0 {
                let n = left.min(input.len() - used);
                data.extend_from_slice(&input[used..used + n]);
                self.pass_data(n as u64);
                used += n;
            } else {
                // One framing byte at a time, so that `scan` never skips data past us.
                used += self.scan(&input[used..used + 1])?.used;
            }
        }
        Ok(Scan {
            used,
            done: self.is_done(),
        })
    }

    /// Consumes the start of `input` (never empty) and returns how many
    /// bytes that was: a run of chunk data, or else a single byte.
    fn step(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let b = input[0];
        if self.in_trailer_line(b) {
            self.count_trailer_byte()?;
        }
        self.state = match self.state {
            Part::Data { remaining } => return Ok(self.skip_data(remaining, input)),
            Part::Size => self.on_size(b)?,
            Part::SizeWs => self.on_size_ws(b)?,
            Part::Ext => self.on_ext(b)?,
            Part::SizeLf => expect_lf(b, self.after_size_line())?,
            Part::DataCr => expect_cr(b, Part::DataLf)?,
            Part::DataLf => expect_lf(b, self.start_chunk())?,
            Part::TrailerStart => on_trailer_start(b)?,
            Part::TrailerName => on_trailer_name(b)?,
            Part::TrailerValue => on_trailer_value(b)?,
            Part::TrailerLf => expect_lf(b, Part::TrailerStart)?,
            Part::FinalLf => expect_lf(b, Part::Done)?,
            // `scan` never steps in these states; consume nothing.
            Part::Done | Part::Failed(_) => return Ok(0),
        };
        Ok(1)
    }

    /// Skips up to `remaining` bytes of chunk data in one go.
    fn skip_data(&mut self, remaining: u64, input: &[u8]) -> usize {
        let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
        let left = remaining - n as u64;
        self.state = if left == 0 {
            Part::DataCr
        } else {
            Part::Data { remaining: left }
        };
        n
    }

    /// Resets the size-line counters and returns the state for a new chunk.
    fn start_chunk(&mut self) -> Part {
        self.size = 0;
        self.digits = 0;
        self.ext_len = 0;
        Part::Size
    }

    /// Part after a complete size line: chunk data, or trailers after the
    /// last (zero-size) chunk.
    fn after_size_line(&self) -> Part {
        if self.size == 0 {
            Part::TrailerStart
        } else {
            Part::Data {
                remaining: self.size,
            }
        }
    }

    /// A byte of the chunk size, or the byte ending it.
    fn on_size(&mut self, b: u8) -> Result<Part, ChunkError> {
        if let Some(digit) = hex_value(b) {
            return self.push_digit(digit);
        }
        if self.digits == 0 {
            // Empty size, or something (even whitespace) before it.
            return Err(ChunkError::BadSize);
        }
        match b {
            b'\r' => Ok(Part::SizeLf),
            b'\n' => Err(ChunkError::BadLineEnding),
            b' ' | b'\t' => self.push_ext_byte(Part::SizeWs),
            b';' => self.push_ext_byte(Part::Ext),
            _ => Err(ChunkError::BadSize),
        }
    }

    /// Appends a hex digit to the chunk size.
    fn push_digit(&mut self, digit: u8) -> Result<Part, ChunkError> {
        let size = self
            .size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(digit)))
            .ok_or(ChunkError::SizeOverflow)?;
        if self.digits == MAX_SIZE_DIGITS {
            // Too many digits, even if they are leading zeros.
            return Err(ChunkError::BadSize);
        }
        self.size = size;
        self.digits += 1;
        Ok(Part::Size)
    }

    /// Whitespace after the size: tolerated only before a `;`.
    fn on_size_ws(&mut self, b: u8) -> Result<Part, ChunkError> {
        match b {
            b' ' | b'\t' => self.push_ext_byte(Part::SizeWs),
            b';' => self.push_ext_byte(Part::Ext),
            b'\n' => Err(ChunkError::BadLineEnding),
            _ => Err(ChunkError::BadSize),
        }
    }

    /// A byte of a chunk extension, or the CR ending the size line.
    fn on_ext(&mut self, b: u8) -> Result<Part, ChunkError> {
        match b {
            // A quoted-string holds no CR: one still open here is malformed, and a parser
            // that reads it on to its closing quote would end the size line elsewhere.
            b'\r' if self.quote != Quote::Outside => Err(ChunkError::BadExtension),
            b'\r' => Ok(Part::SizeLf),
            b'\n' => Err(ChunkError::BadLineEnding),
            _ if is_ctl(b) => Err(ChunkError::BadExtension),
            _ => {
                self.quote = match (self.quote, b) {
                    (Quote::Outside, b'"') => Quote::Inside,
                    (Quote::Inside, b'"') => Quote::Outside,
                    (Quote::Inside, b'\\') => Quote::Escaped,
                    (Quote::Escaped, _) => Quote::Inside,
                    (quote, _) => quote,
                };
                self.push_ext_byte(Part::Ext)
            }
        }
    }

    /// Counts one more extension byte against the per-line limit.
    fn push_ext_byte(&mut self, next: Part) -> Result<Part, ChunkError> {
        self.ext_len += 1;
        if self.ext_len > MAX_EXTENSION_BYTES {
            return Err(ChunkError::BadExtension);
        }
        Ok(next)
    }

    /// Whether `b` is part of a trailer field line (so counts toward the
    /// trailer limit). The final empty line does not count.
    fn in_trailer_line(&self, b: u8) -> bool {
        match self.state {
            Part::TrailerStart => b != b'\r',
            Part::TrailerName | Part::TrailerValue | Part::TrailerLf => true,
            _ => false,
        }
    }

    /// Counts one more trailer byte against the trailer limit.
    fn count_trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer_bytes {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(())
    }
}

/// First byte of a trailer line: a field name, or the CR of the final line.
fn on_trailer_start(b: u8) -> Result<Part, ChunkError> {
    match b {
        b'\r' => Ok(Part::FinalLf),
        b'\n' => Err(ChunkError::BadLineEnding),
        // A line starting with whitespace is an obs-fold continuation.
        _ if is_token(b) => Ok(Part::TrailerName),
        _ => Err(ChunkError::BadTrailer),
    }
}

/// A byte of a trailer field name, or the `:` ending it.
fn on_trailer_name(b: u8) -> Result<Part, ChunkError> {
    match b {
        b':' => Ok(Part::TrailerValue),
        b'\n' => Err(ChunkError::BadLineEnding),
        _ if is_token(b) => Ok(Part::TrailerName),
        _ => Err(ChunkError::BadTrailer),
    }
}

/// A byte of a trailer field value, or the CR ending the line.
fn on_trailer_value(b: u8) -> Result<Part, ChunkError> {
    match b {
        b'\r' => Ok(Part::TrailerLf),
        b'\n' => Err(ChunkError::BadLineEnding),
        _ if is_ctl(b) => Err(ChunkError::BadTrailer),
        _ => Ok(Part::TrailerValue),
    }
}

/// Moves to `next` if `b` is the CR of a required CRLF.
fn expect_cr(b: u8, next: Part) -> Result<Part, ChunkError> {
    if b == b'\r' {
        Ok(next)
    } else {
        Err(ChunkError::BadLineEnding)
    }
}

/// Moves to `next` if `b` is the LF completing a CRLF.
fn expect_lf(b: u8, next: Part) -> Result<Part, ChunkError> {
    if b == b'\n' {
        Ok(next)
    } else {
        Err(ChunkError::BadLineEnding)
    }
}

/// Value of a hex digit (either case), if `b` is one.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Control characters forbidden in extensions and field values (HTAB is
/// allowed).
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// RFC 9110 `tchar`: the characters allowed in a field name.
pub fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Trailer limit used by the tests unless they test the limit itself.
    const MAX_TRAILER: usize = 1024;

    #[test]
    fn decode_gives_the_data_at_every_split_and_stops_at_the_end() {
        let body = b"3\r\nabc\r\n2;x=\"1\"\r\nde\r\n0\r\nT: v\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            let mut decoder = ChunkedDecoder::new(MAX_TRAILER);
            let mut data = Vec::new();
            let first = decoder.decode(&body[..split], &mut data).unwrap();
            let second = decoder.decode(&body[first.used..], &mut data).unwrap();
            assert_eq!(data, b"abcde", "split at {split}");
            assert_eq!((first.used + second.used, second.done), (end, true));
        }
        let mut data = Vec::new();
        let bad = ChunkedDecoder::new(MAX_TRAILER).decode(b"3\r\nabcX", &mut data);
        assert_eq!(bad, Err(ChunkError::BadLineEnding));
    }

    /// Scans `input` in one call with a fresh decoder.
    fn scan_whole(input: &[u8]) -> Result<Scan, ChunkError> {
        ChunkedDecoder::new(MAX_TRAILER).scan(input)
    }

    /// Feeds `input` cut at `cuts` (sorted offsets) the way the proxy does:
    /// unused bytes are kept and re-fed in front of the next piece.
    /// Returns the total used and the state after each piece.
    fn scan_split(input: &[u8], cuts: &[usize]) -> (Result<Scan, ChunkError>, Vec<bool>) {
        let mut dec = ChunkedDecoder::new(MAX_TRAILER);
        let mut pending: Vec<u8> = Vec::new();
        let mut used = 0;
        let mut done_after = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([input.len()]) {
            pending.extend_from_slice(&input[start..end]);
            start = end;
            match dec.scan(&pending) {
                Ok(scan) => {
                    used += scan.used;
                    pending.drain(..scan.used);
                    done_after.push(scan.done);
                }
                Err(err) => return (Err(err), done_after),
            }
        }
        let done = dec.is_done();
        (Ok(Scan { used, done }), done_after)
    }

    #[test]
    fn valid_bodies() {
        let cases: &[(&str, &[u8])] = &[
            ("empty body", b"0\r\n\r\n"),
            ("single chunk", b"5\r\nhello\r\n0\r\n\r\n"),
            (
                "several chunks",
                b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
            ),
            ("data holding CRLF", b"4\r\n\r\n\r\n\r\n0\r\n\r\n"),
            ("extension", b"5;name=value\r\nhello\r\n0\r\n\r\n"),
            (
                "extensions",
                b"5;a;b=\"q s\";c=1\r\nhello\r\n0;last\r\n\r\n",
            ),
            ("BWS before extension", b"5 \t ;a=1\r\nhello\r\n0\r\n\r\n"),
            ("HTAB in extension", b"5;a=\tb\r\nhello\r\n0\r\n\r\n"),
            (
                "quoted-string with an escaped quote and a semicolon",
                b"5;a=\"x\\\";y\"\r\nhello\r\n0\r\n\r\n",
            ),
            ("trailer", b"5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n"),
            ("trailers", b"0\r\nA: 1\r\nB-c:\t2 3\r\nD:\r\n\r\n"),
            ("uppercase hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
            (
                "lowercase hex",
                b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
            ),
            ("leading zeros", b"0005\r\nhello\r\n0000\r\n\r\n"),
            ("16 digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
        ];
        for (name, body) in cases {
            let result = scan_whole(body);
            let expected = Ok(Scan {
                used: body.len(),
                done: true,
            });
            assert_eq!(result, expected, "{name}");
        }
    }

    #[test]
    fn invalid_bodies() {
        use ChunkError::*;
        let long_ext = [b"1;".as_slice(), &[b'x'; 4096], b"\r\n"].concat();
        let cases: &[(&str, &[u8], ChunkError)] = &[
            (
                "bare LF in size line",
                b"5\nhello\r\n0\r\n\r\n",
                BadLineEnding,
            ),
            ("bare LF after extension", b"5;a\nhello\r\n", BadLineEnding),
            (
                "bare LF after data",
                b"5\r\nhello\n0\r\n\r\n",
                BadLineEnding,
            ),
            ("bare LF in trailer", b"0\r\nA: 1\n\r\n", BadLineEnding),
            ("bare LF as final line", b"0\r\n\n", BadLineEnding),
            ("CR not followed by LF", b"5\r\rhello\r\n", BadLineEnding),
            (
                "CR then X after data",
                b"5\r\nhello\rX0\r\n\r\n",
                BadLineEnding,
            ),
            ("CR not followed by LF at end", b"0\r\n\r\r", BadLineEnding),
            (
                "missing CRLF after data",
                b"5\r\nhelloX\r\n0\r\n\r\n",
                BadLineEnding,
            ),
            (
                "data longer than size",
                b"3\r\nhello\r\n0\r\n\r\n",
                BadLineEnding,
            ),
            ("non-hex size", b"g\r\n", BadSize),
            ("non-hex after digits", b"5g\r\nhello\r\n", BadSize),
            ("0x prefix", b"0x5\r\nhello\r\n", BadSize),
            ("empty size", b"\r\nhello\r\n", BadSize),
            ("empty size before extension", b";a\r\n", BadSize),
            ("17 digits", b"00000000000000005\r\nhello\r\n", BadSize),
            ("overflow", b"ffffffffffffffffff\r\n", SizeOverflow),
            (
                "overflow at 17th digit",
                b"10000000000000000\r\n",
                SizeOverflow,
            ),
            ("space before size", b" 5\r\nhello\r\n", BadSize),
            ("whitespace not before ;", b"5 \r\nhello\r\n", BadSize),
            (
                "control char in extension",
                b"5;a=\x01\r\nhello\r\n",
                BadExtension,
            ),
            ("DEL in extension", b"5;a=\x7f\r\nhello\r\n", BadExtension),
            ("extension too long", &long_ext, BadExtension),
            (
                "quoted-string open at the CRLF",
                b"2;a=\"\r\nxx\r\n0\r\n\r\n\"\r\n",
                BadExtension,
            ),
            (
                "quoted-string whose closing quote is escaped",
                b"5;a=\"x\\\"\r\nhello\r\n",
                BadExtension,
            ),
            ("obs-fold trailer", b"0\r\nA: 1\r\n  2\r\n\r\n", BadTrailer),
            (
                "trailer starting with tab",
                b"0\r\n\tA: 1\r\n\r\n",
                BadTrailer,
            ),
            ("trailer without colon", b"0\r\nA\r\n\r\n", BadTrailer),
            ("empty trailer name", b"0\r\n: 1\r\n\r\n", BadTrailer),
            ("space in trailer name", b"0\r\nA B: 1\r\n\r\n", BadTrailer),
            (
                "control char in trailer",
                b"0\r\nA: \x00\r\n\r\n",
                BadTrailer,
            ),
        ];
        for (name, body, err) in cases {
            assert_eq!(scan_whole(body), Err(*err), "{name}");
        }
    }

    #[test]
    fn extension_limit_is_inclusive() {
        // ";" plus 4095 bytes is exactly 4096 extension bytes: accepted.
        let ext = [b"1;".as_slice(), &[b'x'; 4095], b"\r\nz\r\n0\r\n\r\n"].concat();
        let expected = Ok(Scan {
            used: ext.len(),
            done: true,
        });
        assert_eq!(scan_whole(&ext), expected);
    }

    #[test]
    fn trailer_limit() {
        // "A: 1\r\n" is 6 bytes; the final empty line does not count.
        let body = b"0\r\nA: 1\r\n\r\n";
        let fits = ChunkedDecoder::new(6).scan(body);
        assert_eq!(
            fits,
            Ok(Scan {
                used: body.len(),
                done: true
            })
        );
        let too_big = ChunkedDecoder::new(5).scan(body);
        assert_eq!(too_big, Err(ChunkError::TrailerTooLarge));
        // No trailer at all is fine even with a zero limit.
        let bare = ChunkedDecoder::new(0).scan(b"0\r\n\r\n");
        assert_eq!(
            bare,
            Ok(Scan {
                used: 5,
                done: true
            })
        );
    }

    #[test]
    fn bytes_after_end_are_not_used() {
        let body = b"5\r\nhello\r\n0\r\nX: y\r\n\r\n";
        let stream = [body.as_slice(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        let mut dec = ChunkedDecoder::new(MAX_TRAILER);
        let scan = dec.scan(&stream);
        let expected = Ok(Scan {
            used: body.len(),
            done: true,
        });
        assert_eq!(scan, expected);
        assert!(dec.is_done());
        // Once done, nothing more is used.
        let rest = dec.scan(&stream[body.len()..]);
        assert_eq!(
            rest,
            Ok(Scan {
                used: 0,
                done: true
            })
        );
    }

    #[test]
    fn partial_input_is_all_used() {
        let mut dec = ChunkedDecoder::new(MAX_TRAILER);
        assert_eq!(
            dec.scan(b""),
            Ok(Scan {
                used: 0,
                done: false
            })
        );
        assert_eq!(
            dec.scan(b"5\r"),
            Ok(Scan {
                used: 2,
                done: false
            })
        );
        assert_eq!(
            dec.scan(b"\nhel"),
            Ok(Scan {
                used: 4,
                done: false
            })
        );
        assert_eq!(
            dec.scan(b"lo\r\n0\r\n\r"),
            Ok(Scan {
                used: 8,
                done: false
            })
        );
        assert!(!dec.is_done());
        assert_eq!(
            dec.scan(b"\nGET"),
            Ok(Scan {
                used: 1,
                done: true
            })
        );
    }

    #[test]
    fn huge_chunk_is_skipped_without_looping() {
        // 16 hex digits of size: the decoder must not loop per data byte.
        let mut dec = ChunkedDecoder::new(MAX_TRAILER);
        let scan = dec.scan(b"7fffffffffffffff\r\nabc");
        assert_eq!(
            scan,
            Ok(Scan {
                used: 21,
                done: false
            })
        );
    }

    #[test]
    fn error_is_sticky() {
        let mut dec = ChunkedDecoder::new(MAX_TRAILER);
        assert_eq!(dec.scan(b"5\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(dec.scan(b"0\r\n\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(dec.scan(b""), Err(ChunkError::BadLineEnding));
        assert!(!dec.is_done());
    }

    #[test]
    fn error_messages() {
        assert_eq!(ChunkError::BadSize.to_string(), "bad chunk size");
        assert_eq!(ChunkError::TrailerTooLarge.to_string(), "trailer too large");
    }

    /// One generated chunk: its data, its size's leading zeros, whether the
    /// size is in uppercase hex, and its extensions (BWS and `;` included).
    type GenChunk = (Vec<u8>, usize, bool, Option<String>);

    /// Encodes generated chunks and trailers as a chunked body.
    fn encode(
        chunks: &[GenChunk],
        last_ext: &Option<String>,
        trailers: &[(String, String)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for (data, zeros, upper, ext) in chunks {
            let size = if *upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            out.extend("0".repeat(*zeros).bytes());
            out.extend(size.bytes());
            push_ext(&mut out, ext);
            out.extend(b"\r\n");
            out.extend(data);
            out.extend(b"\r\n");
        }
        out.push(b'0');
        push_ext(&mut out, last_ext);
        out.extend(b"\r\n");
        for (name, value) in trailers {
            out.extend(format!("{name}:{value}\r\n").bytes());
        }
        out.extend(b"\r\n");
        out
    }

    fn push_ext(out: &mut Vec<u8>, ext: &Option<String>) {
        if let Some(ext) = ext {
            out.extend(ext.bytes());
        }
    }

    fn chunk() -> impl Strategy<Value = GenChunk> {
        (
            prop::collection::vec(any::<u8>(), 1..64),
            0usize..4,
            any::<bool>(),
            // Values without '"': a random quote would leave a quoted-string open.
            prop::option::of("[ \t]{0,2}(;[a-z]{1,5}(=[!#-~ \t]{0,8})?){1,3}"),
        )
    }

    fn trailer() -> impl Strategy<Value = (String, String)> {
        ("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}", "[ -~\t]{0,16}")
    }

    /// A valid chunked body.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(chunk(), 0..6),
            prop::option::of(";[a-z]{1,5}(=[a-z0-9]{0,5})?"),
            prop::collection::vec(trailer(), 0..4),
        )
            .prop_map(|(chunks, last_ext, trailers)| encode(&chunks, &last_ext, &trailers))
    }

    /// Scans `input` the way the zero-copy relay does: chunk data passes unscanned
    /// (`pass_data`, at most `step` bytes at a time, as a pipe takes it), and only the framing
    /// around it is scanned, a byte at a time.
    fn scan_passing_data(input: &[u8], step: usize) -> Result<Scan, ChunkError> {
        let mut dec = ChunkedDecoder::new(MAX_TRAILER);
        let mut used = 0;
        while used < input.len() && !dec.is_done() {
            let left = usize::try_from(dec.data_left()).unwrap_or(usize::MAX);
            if left > 0 {
                let n = left.min(step).min(input.len() - used);
                dec.pass_data(n as u64);
                used += n;
            } else {
                used += dec.scan(&input[used..used + 1])?.used;
            }
        }
        Ok(Scan {
            used,
            done: dec.is_done(),
        })
    }

    /// Sorted cut offsets into a buffer of length `len`.
    fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.iter().map(|c| c % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        #[test]
        fn split_valid_body_ends_exactly(
            body in body(),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let stream = [body.as_slice(), b"GET / HTTP/1.1\r\n\r\n"].concat();
            let cuts = cuts(stream.len(), &raw_cuts);
            let (result, done_after) = scan_split(&stream, &cuts);
            prop_assert_eq!(result, Ok(Scan { used: body.len(), done: true }));
            prop_assert_eq!(scan_whole(&stream), result);
            // `done` first shows up on the piece that holds the body's last byte.
            let ends: Vec<usize> = cuts.iter().copied().chain([stream.len()]).collect();
            for (end, done) in ends.iter().zip(&done_after) {
                prop_assert_eq!(*done, *end >= body.len());
            }
        }

        #[test]
        fn split_never_changes_the_result(
            body in body(),
            flip in any::<(usize, u8)>(),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            // Corrupt one byte to exercise the error paths too.
            let mut stream = body;
            let at = flip.0 % stream.len();
            stream[at] = flip.1;
            let (split, _) = scan_split(&stream, &cuts(stream.len(), &raw_cuts));
            prop_assert_eq!(split, scan_whole(&stream));
        }

        #[test]
        fn passing_chunk_data_unscanned_changes_nothing(
            body in body(),
            flip in any::<(usize, u8)>(),
            step in 1usize..64,
        ) {
            // A valid body followed by the next message, then the same with one byte corrupted:
            // the framing is checked as strictly when the data is spliced past it.
            let stream = [body.as_slice(), b"GET / HTTP/1.1\r\n\r\n"].concat();
            prop_assert_eq!(scan_passing_data(&stream, step), scan_whole(&stream));
            let mut corrupt = body;
            let at = flip.0 % corrupt.len();
            corrupt[at] = flip.1;
            prop_assert_eq!(scan_passing_data(&corrupt, step), scan_whole(&corrupt));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = scan_whole(&bytes);
            let (split, _) = scan_split(&bytes, &cuts(bytes.len(), &raw_cuts));
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn framing_like_bytes_never_panic(
            bytes in prop::collection::vec(
                prop::sample::select(b"0123456789abcdefABCDEFxX;= \t\r\n:\x01".to_vec()),
                0..256,
            ),
        ) {
            let whole = scan_whole(&bytes);
            if let Ok(scan) = whole {
                prop_assert!(scan.used <= bytes.len());
                prop_assert!(scan.done || scan.used == bytes.len());
            }
        }
    }
}
