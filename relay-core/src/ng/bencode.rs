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
}
