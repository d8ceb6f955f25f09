//! Small async pieces shared by the control listener, the tunnel listeners
//! and the connector: waiting for a shutdown flag, dialling with a timeout,
//! and reading exactly one frame from a stream whose bytes after that frame
//! belong to someone else (tunnels). Accepting with a back-off is
//! `io::accept`'s (TURN's listeners use it too).

use tokio::sync::watch;

#[cfg(any(feature = "connector", feature = "tunnels"))]
use super::frame::FrameType;
#[cfg(any(feature = "connector", feature = "tunnels"))]
use super::messages::Message;

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// TCP connect within 5 s, with `TCP_NODELAY`.
#[cfg(feature = "connector")]
pub(crate) async fn dial(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<tokio::net::TcpStream> {
    let s = match tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Why [`read_single_frame`] returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(any(feature = "connector", feature = "tunnels"))]
pub(crate) enum SingleFrameError {
    /// The peer closed before sending a byte of the header.
    Closed,
    /// Anything else: a foreign header, another frame type, a payload over
    /// the limit or one that is not that message, a read error.
    Bad,
}

/// Reads exactly one frame of type `kind` with a payload of at most `max`
/// bytes — and not a byte more, since what follows is a tunnel's stream.
#[cfg(any(feature = "connector", feature = "tunnels"))]
pub(crate) async fn read_single_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    kind: FrameType,
    max: usize,
) -> Result<Message, SingleFrameError> {
    use super::frame::{FrameDecoder, HEADER_LEN};
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(SingleFrameError::Closed),
        Err(_) => return Err(SingleFrameError::Bad),
    }
    let mut d = FrameDecoder::new();
    d.handle_bytes(&header);
    // The decoder checks magic, version and type from the header alone.
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if d.poll_frame().is_err() || header[3] != kind as u8 || len > max {
        return Err(SingleFrameError::Bad);
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|_| SingleFrameError::Bad)?;
    d.handle_bytes(&payload);
    match d.poll_frame() {
        Ok(Some(f)) => Message::decode(&f).map_err(|_| SingleFrameError::Bad),
        _ => Err(SingleFrameError::Bad),
    }
}
