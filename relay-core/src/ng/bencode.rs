//! Bencode (BitTorrent encoding) as rtpengine's ng protocol uses it: byte
//! strings, integers, lists and dictionaries. The parser is bounded (depth
//! and size) and never panics.

use std::collections::BTreeMap;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `i42e`
    Int(i64),
    /// `4:spam`
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Value>),
    /// `d...e`, keys sorted (bencode requires it on output; input order is accepted).
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    /// The input ends in the middle of a value.
    #[error("truncated bencode")]
    Truncated,
    /// A byte that cannot start or continue a value here.
    #[error("invalid bencode at byte {0}")]
    Invalid(usize),
    /// Nested deeper than the limit.
    #[error("bencode nested too deeply")]
    TooDeep,
}

/// Maximum nesting depth accepted.
pub const MAX_DEPTH: usize = 32;

impl Value {
    /// A byte-string value from text.
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// The bytes of a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A byte string as UTF-8 text.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The integer, or a byte string holding digits.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(_) => self.as_str()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// Dictionary lookup by text key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// The list items (a single string counts as a one-item list).
    pub fn items(&self) -> Vec<&Value> {
        match self {
            Value::List(l) => l.iter().collect(),
            other => vec![other],
        }
    }

    /// Encodes to bencode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    out.extend_from_slice(k.len().to_string().as_bytes());
                    out.push(b':');
                    out.extend_from_slice(k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// Decodes one value from the start of `input`; returns it and the bytes used.
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), BencodeError> {
    let mut p = Parser { input, pos: 0 };
    let v = p.value(0)?;
    Ok((v, p.pos))
}

/// Decodes exactly one value (trailing whitespace allowed).
pub fn decode(input: &[u8]) -> Result<Value, BencodeError> {
    let (v, used) = decode_prefix(input)?;
    if input[used..].iter().all(|b| b.is_ascii_whitespace()) {
        Ok(v)
    } else {
        Err(BencodeError::Invalid(used))
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input.get(self.pos).copied().ok_or(BencodeError::Truncated)
    }

    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(BencodeError::TooDeep);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.number(b'e')?;
                Ok(Value::Int(n))
            }
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                while self.peek()? != b'e' {
                    let at = self.pos;
                    let Value::Bytes(k) = self.value(depth + 1)? else {
                        return Err(BencodeError::Invalid(at));
                    };
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                }
                self.pos += 1;
                Ok(Value::Dict(map))
            }
            b'0'..=b'9' => {
                let len = self.number(b':')?;
                let len = usize::try_from(len).map_err(|_| BencodeError::Invalid(self.pos))?;
                let end = self.pos.checked_add(len).ok_or(BencodeError::Invalid(self.pos))?;
                let bytes = self.input.get(self.pos..end).ok_or(BencodeError::Truncated)?;
                self.pos = end;
                Ok(Value::Bytes(bytes.to_vec()))
            }
            _ => Err(BencodeError::Invalid(self.pos)),
        }
    }

    /// Reads a decimal integer up to `end` (consumed).
    fn number(&mut self, end: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let mut n: i64 = 0;
        let mut negative = false;
        let mut digits = 0;
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'-' if self.pos - 1 == start && end == b'e' => negative = true,
                b'0'..=b'9' => {
                    digits += 1;
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(i64::from(b - b'0')))
                        .ok_or(BencodeError::Invalid(start))?;
                }
                b if b == end && digits > 0 => return Ok(if negative { -n } else { n }),
                _ => return Err(BencodeError::Invalid(self.pos - 1)),
            }
        }
    }
}

/// Builds a dictionary from `(key, value)` pairs.
pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Dict(pairs.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
}

/// Why a stream of ng messages cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A byte that cannot start or continue a message here.
    #[error("not an ng message (cookie, space, bencoded value)")]
    Invalid,
    /// The cookie is longer than allowed.
    #[error("cookie too long")]
    CookieTooLong,
    /// The message is longer than allowed, or nested too deeply.
    #[error("message too large")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    /// Before the cookie (whitespace between messages is skipped).
    Start,
    /// Inside the cookie, which ends at a space.
    Cookie,
    /// Where a value must start (or, inside a list or dict, `e` may end it).
    Value,
    /// Digits of an integer, up to `e`.
    Int,
    /// Digits of a string length, up to `:`.
    StrLen,
    /// The string's bytes.
    StrBody,
}

/// Finds where each `cookie SP bencoded-value` message ends in a byte
/// stream (ng over TCP), resuming where it stopped: every byte is looked
/// at once, however the stream is split into reads — a message that
/// arrives a byte at a time costs linear, not quadratic, time.
#[derive(Debug, Clone)]
pub struct MessageFramer {
    max_cookie: usize,
    max_message: usize,
    /// Bytes of the buffer already scanned.
    pos: usize,
    /// Where the current message starts (after leading whitespace).
    start: usize,
    state: FrameState,
    depth: usize,
    /// Digits or bytes left in the current token.
    count: u64,
    /// Bytes looked at since the framer was made (each once).
    examined: u64,
}

impl MessageFramer {
    /// A framer refusing cookies over `max_cookie` bytes and messages over
    /// `max_message` bytes.
    pub fn new(max_cookie: usize, max_message: usize) -> Self {
        Self { max_cookie, max_message, pos: 0, start: 0, state: FrameState::Start, depth: 0, count: 0, examined: 0 }
    }

    /// Bytes looked at so far, over every message: each byte of the stream
    /// once, however it was split into reads.
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    /// Scans `buf` (the bytes received so far, starting with the current
    /// message) from where the last call stopped. Returns the range of the
    /// first complete message; the caller removes `..range.end` from `buf`
    /// and calls again for the next one.
    pub fn next_message(&mut self, buf: &[u8]) -> Result<Option<std::ops::Range<usize>>, FrameError> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            self.examined += 1;
            if self.state != FrameState::Start && self.pos - self.start > self.max_message {
                return Err(FrameError::TooLarge);
            }
            let complete = match self.state {
                FrameState::Start => self.handle_start(b),
                FrameState::Cookie => self.handle_cookie(b)?,
                FrameState::Value => self.handle_value(b)?,
                FrameState::Int => self.handle_int(b)?,
                FrameState::StrLen => self.handle_str_len(b)?,
                FrameState::StrBody => self.skip_str_body(buf)?,
            };
            if complete {
                return Ok(Some(self.finish()));
            }
        }
        Ok(None)
    }

    /// Leading whitespace, then the cookie's first byte. Never completes.
    fn handle_start(&mut self, b: u8) -> bool {
        if !b.is_ascii_whitespace() {
            self.start = self.pos - 1;
            self.count = 1;
            self.state = FrameState::Cookie;
        }
        false
    }

    /// The cookie, up to its space.
    fn handle_cookie(&mut self, b: u8) -> Result<bool, FrameError> {
        if b == b' ' {
            self.state = FrameState::Value;
        } else {
            self.count += 1;
            if self.count > self.max_cookie as u64 {
                return Err(FrameError::CookieTooLong);
            }
        }
        Ok(false)
    }

    /// The first byte of a value, or the end of a dictionary or list.
    fn handle_value(&mut self, b: u8) -> Result<bool, FrameError> {
        match b {
            b'd' | b'l' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(FrameError::TooLarge);
                }
                Ok(false)
            }
            b'e' if self.depth > 0 => {
                self.depth -= 1;
                Ok(self.depth == 0)
            }
            b'i' => {
                self.count = 0;
                self.state = FrameState::Int;
                Ok(false)
            }
            b'0'..=b'9' => {
                self.count = u64::from(b - b'0');
                self.state = FrameState::StrLen;
                Ok(false)
            }
            _ => Err(FrameError::Invalid),
        }
    }

    /// An integer's digits (at most 20) up to its `e`.
    fn handle_int(&mut self, b: u8) -> Result<bool, FrameError> {
        match b {
            b'-' | b'0'..=b'9' if self.count < 20 => {
                self.count += 1;
                Ok(false)
            }
            b'e' if self.count > 0 => Ok(self.value_ended()),
            _ => Err(FrameError::Invalid),
        }
    }

    /// A string's length up to its `:`.
    fn handle_str_len(&mut self, b: u8) -> Result<bool, FrameError> {
        match b {
            b'0'..=b'9' => {
                self.count = self.count * 10 + u64::from(b - b'0');
                if self.count > self.max_message as u64 {
                    return Err(FrameError::TooLarge);
                }
                Ok(false)
            }
            b':' if self.count == 0 => Ok(self.value_ended()),
            b':' => {
                self.state = FrameState::StrBody;
                Ok(false)
            }
            _ => Err(FrameError::Invalid),
        }
    }

    /// The rest of a string's bytes, skipped at once (one was taken).
    fn skip_str_body(&mut self, buf: &[u8]) -> Result<bool, FrameError> {
        let take = (self.count - 1).min((buf.len() - self.pos) as u64) as usize;
        self.pos += take;
        self.examined += take as u64;
        self.count -= 1 + take as u64;
        if self.pos - self.start > self.max_message {
            return Err(FrameError::TooLarge);
        }
        Ok(self.count == 0 && self.value_ended())
    }

    /// A value ended: the message is complete if it was the top level.
    fn value_ended(&mut self) -> bool {
        self.state = FrameState::Value;
        self.depth == 0
    }

    /// Ends the current message: returns its range and starts over.
    fn finish(&mut self) -> std::ops::Range<usize> {
        let range = self.start..self.pos;
        let examined = self.examined;
        *self = Self::new(self.max_cookie, self.max_message);
        self.examined = examined;
        range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = dict([
            ("command", Value::str("offer")),
            ("flags", Value::List(vec![Value::str("trust-address"), Value::str("symmetric")])),
            ("n", Value::Int(-42)),
            ("nested", dict([("x", Value::List(vec![]))])),
        ]);
        let enc = v.encode();
        assert_eq!(decode(&enc), Ok(v));
        assert_eq!(decode(b"d7:command4:pinge").expect("ping").get("command").and_then(Value::as_str), Some("ping"));
        assert_eq!(Value::Int(0).encode(), b"i0e");
    }

    #[test]
    fn rejects_malformed_input_without_panicking() {
        for bad in [
            &b""[..],
            b"d",
            b"i12",
            b"ie",
            b"i-e",
            b"5:abc",
            b"x",
            b"d3:keyi1e",
            b"di1ei2ee",
            b"99999999999999999999:x",
            b"l",
            b"d1:a",
            b"i--1e",
            b"i9223372036854775808e",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = [b"l".repeat(100), b"e".repeat(100)].concat();
        assert_eq!(decode(&deep), Err(BencodeError::TooDeep));
        assert!(decode(b"i1e trailing").is_err());
    }

    /// Feeds `stream` in pieces of `step` bytes; returns the messages framed.
    fn frame(stream: &[u8], step: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut f = MessageFramer::new(64, 4096);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for chunk in stream.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(r) = f.next_message(&buf)? {
                out.push(buf[r.clone()].to_vec());
                buf.drain(..r.end);
            }
        }
        Ok(out)
    }

    #[test]
    fn the_framer_finds_messages_however_the_stream_is_split() {
        let a = b"c1 d7:command4:pinge".to_vec();
        let b = b"c2 d7:command5:offer5:flagsl3:abc0:e3:sdp10:v=0\r\ns=-\r\ne".to_vec();
        let c = b"c3 i-42e".to_vec();
        let stream = [&b"\r\n"[..], &a, b"\n ", &b, &c, b"c4 0:"].concat();
        for step in [1, 2, 3, 7, 64, 4096] {
            let got = frame(&stream, step).expect("frames");
            assert_eq!(got, vec![a.clone(), b.clone(), c.clone(), b"c4 0:".to_vec()], "step {step}");
            for m in &got[..3] {
                let space = m.iter().position(|x| *x == b' ').expect("cookie");
                assert!(decode(&m[space + 1..]).is_ok(), "a framed message decodes");
            }
        }
        assert_eq!(frame(b"c1 x", 1), Err(FrameError::Invalid));
        assert_eq!(frame(&[b"c".repeat(65), b" i1e".to_vec()].concat(), 5), Err(FrameError::CookieTooLong));
        assert_eq!(frame(b"c 99999:abc", 2), Err(FrameError::TooLarge));
        assert_eq!(frame(&[b"c ".to_vec(), b"l".repeat(40)].concat(), 3), Err(FrameError::TooLarge));
        let long = [b"c 5000:".to_vec(), vec![b'x'; 5000]].concat();
        assert_eq!(frame(&long, 100), Err(FrameError::TooLarge));
    }

    #[test]
    fn the_framer_looks_at_each_byte_once() {
        // A 100 KB string sent a byte at a time: scanning restarts where it stopped.
        let mut f = MessageFramer::new(64, 1 << 20);
        let msg = [b"k 100000:".to_vec(), vec![b'y'; 100_000]].concat();
        let mut buf = Vec::new();
        let mut found = None;
        for b in &msg {
            buf.push(*b);
            if let Some(r) = f.next_message(&buf).expect("ok") {
                found = Some(r);
            }
        }
        assert_eq!(found, Some(0..msg.len()));
        assert_eq!(f.bytes_examined(), msg.len() as u64, "linear: {} calls, each byte examined once", msg.len());
    }
}
