//! Versioned, length-prefixed frames.
//!
//! ```text
//!  0      1      2         3        4                8
//! +------+------+---------+--------+----------------+----------------
//! | 'U'  | 'C'  | version | type   | length (u32 BE) | payload ...
//! +------+------+---------+--------+----------------+----------------
//! ```
//! The payload is a UTF-8 JSON object (see [`messages`](super::messages)).
//! A frame with a wrong magic, an unknown version or type, or a payload
//! over [`MAX_PAYLOAD`] is a protocol error: the peer sends an `error`
//! frame with the reason and closes the channel.

/// Frame magic.
pub const MAGIC: [u8; 2] = *b"UC";
/// Protocol version spoken by this implementation.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 8;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Connector → relay: authenticate (`Hello`).
    Hello = 1,
    /// Relay → connector: authentication result (`HelloResult`).
    HelloResult = 2,
    /// Either way: liveness (`Heartbeat`).
    Heartbeat = 3,
    /// Either way: answer to a heartbeat (`Heartbeat`, same `seq`).
    HeartbeatAck = 4,
    /// Connector → relay: allocate a media session.
    Allocate = 5,
    /// Relay → connector: allocation result.
    Allocated = 6,
    /// Connector → relay: update a session.
    Update = 7,
    /// Relay → connector: update result.
    Updated = 8,
    /// Connector → relay: release a session.
    Release = 9,
    /// Relay → connector: release result.
    Released = 10,
    /// Relay → connector: open a data connection for a tunnel (ticket).
    OpenStream = 11,
    /// Either way: an error; fatal ones are followed by closing the channel.
    Error = 12,
    /// Connector → relay, first frame on a *data* connection: the ticket of
    /// an `open_stream`; the tunnel's bytes follow.
    Attach = 13,
    /// Relay → connector, on a *standby* data connection: which service
    /// the endpoint wants; the tunnel's bytes follow.
    Bind = 14,
    /// Connector → relay: short-lived TURN credentials for a client.
    TurnCredentials = 15,
    /// Relay → connector: the credentials (or why not).
    TurnCredentialsIssued = 16,
}

impl FrameType {
    /// Every type, in code order.
    pub const ALL: [FrameType; 16] = [
        FrameType::Hello,
        FrameType::HelloResult,
        FrameType::Heartbeat,
        FrameType::HeartbeatAck,
        FrameType::Allocate,
        FrameType::Allocated,
        FrameType::Update,
        FrameType::Updated,
        FrameType::Release,
        FrameType::Released,
        FrameType::OpenStream,
        FrameType::Error,
        FrameType::Attach,
        FrameType::Bind,
        FrameType::TurnCredentials,
        FrameType::TurnCredentialsIssued,
    ];

    /// The type with this code.
    pub fn from_code(code: u8) -> Option<FrameType> {
        FrameType::ALL.iter().copied().find(|t| *t as u8 == code)
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::Hello => "hello",
            FrameType::HelloResult => "hello_result",
            FrameType::Heartbeat => "heartbeat",
            FrameType::HeartbeatAck => "heartbeat_ack",
            FrameType::Allocate => "allocate",
            FrameType::Allocated => "allocated",
            FrameType::Update => "update",
            FrameType::Updated => "updated",
            FrameType::Release => "release",
            FrameType::Released => "released",
            FrameType::OpenStream => "open_stream",
            FrameType::Error => "error",
            FrameType::Attach => "attach",
            FrameType::Bind => "bind",
            FrameType::TurnCredentials => "turn_credentials",
            FrameType::TurnCredentialsIssued => "turn_credentials_issued",
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// Its payload (a JSON object).
    pub payload: Vec<u8>,
}

/// Why a byte stream is not a valid frame sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not `UC`.
    #[error("bad magic")]
    BadMagic,
    /// A version this implementation does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u32),
}

impl FrameError {
    /// Stable error code for the `error` frame sent before closing.
    pub fn code(self) -> crate::codes::ErrorCode {
        use crate::codes::ErrorCode;
        match self {
            FrameError::BadMagic => ErrorCode::BadMagic,
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownType(_) => ErrorCode::UnknownFrameType,
            FrameError::TooLarge(_) => ErrorCode::FrameTooLarge,
        }
    }
}

impl Frame {
    /// A frame with a payload.
    pub fn new(kind: FrameType, payload: impl Into<Vec<u8>>) -> Self {
        Self { kind, payload: payload.into() }
    }

    /// Encodes the frame (header + payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Sans-IO frame decoder: feed bytes with [`handle_bytes`](Self::handle_bytes),
/// take frames with [`poll_frame`](Self::poll_frame). The header is checked as
/// soon as it arrives, so an oversize or foreign stream is refused before its
/// payload is buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// (sticky) protocol error.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let checked = self.check_header();
        if let Err(e) = checked {
            self.failed = Some(e);
            self.buf.clear();
            return Err(e);
        }
        let Some((kind, len)) = checked.ok().flatten() else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { kind, payload }))
    }

    fn check_header(&self) -> Result<Option<(FrameType, usize)>, FrameError> {
        let b = &self.buf;
        if !b.is_empty() && b[0] != MAGIC[0] || b.len() >= 2 && b[1] != MAGIC[1] {
            return Err(FrameError::BadMagic);
        }
        if b.len() >= 3 && b[2] != VERSION {
            return Err(FrameError::UnsupportedVersion(b[2]));
        }
        if b.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = FrameType::from_code(b[3]).ok_or(FrameError::UnknownType(b[3]))?;
        let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        if len as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        Ok(Some((kind, len as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let frames = [
            Frame::new(FrameType::Hello, br#"{"version":1,"tenant":"acme","token":"t"}"#.to_vec()),
            Frame::new(FrameType::Heartbeat, br#"{"seq":1}"#.to_vec()),
            Frame::new(FrameType::Error, Vec::new()),
        ];
        let stream: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &stream {
            d.handle_bytes(std::slice::from_ref(b));
            while let Some(f) = d.poll_frame().expect("valid stream") {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn refuses_foreign_streams_early() {
        let cases: [(&[u8], FrameError); 5] = [
            (b"GET / HTTP/1.1\r\n", FrameError::BadMagic),
            (b"\x16\x03\x01", FrameError::BadMagic),
            (b"UC\x02", FrameError::UnsupportedVersion(2)),
            (b"UC\x01\x63\x00\x00\x00\x00", FrameError::UnknownType(0x63)),
            (b"UC\x01\x01\x00\x01\x00\x01", FrameError::TooLarge(65537)),
        ];
        for (bytes, err) in cases {
            let mut d = FrameDecoder::new();
            d.handle_bytes(bytes);
            assert_eq!(d.poll_frame(), Err(err), "{bytes:?}");
            d.handle_bytes(b"UC\x01\x03\x00\x00\x00\x00");
            assert_eq!(d.poll_frame(), Err(err), "errors are sticky");
        }
    }
}
