//! TCP and TLS clients: messages framed by their own length fields,
//! read until the client closes, breaks the framing or idles without
//! an allocation; written from a bounded queue.

use super::peer_tcp::splice;
use super::udp::handle_client_message;
use super::*;

/// The length of the message at the start of `buf` on a stream: a STUN
/// message by its header, ChannelData by its header padded to four bytes
/// (RFC 8656 §12.5). `Ok(None)`: more bytes needed; `Err`: neither.
fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let Some(header) = buf.get(..CHANNEL_HEADER_LEN) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] & 0xc0 {
        0x00 => Ok(Some(HEADER_LEN + len)),
        0x40 => Ok(Some((CHANNEL_HEADER_LEN + len).div_ceil(4) * 4)),
        _ => Err(()),
    }
}

/// Reads framed messages from a stream client until it closes, breaks the
/// framing, or holds no allocation for [`STREAM_IDLE`].
pub(super) async fn read_stream<R: AsyncRead + Unpin>(
    shared: &Arc<Mutex<Shared>>,
    udp: &Listeners,
    mut reader: R,
    key: ClientKey,
    mut buf: Vec<u8>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut idle_since = Instant::now();
    loop {
        while let Ok(Some(len)) = stream_frame_len(&buf) {
            if buf.len() < len {
                break;
            }
            let bound = handle_client_message(shared, udp, key, &buf[..len], None);
            buf.drain(..len);
            if let Some(connection) = bound {
                // What follows the ConnectionBind is the peer's already.
                splice(shared, reader, key, connection, buf).await;
                return;
            }
        }
        if stream_frame_len(&buf).is_err() {
            return;
        }
        let deadline = idle_since + STREAM_IDLE;
        match tokio::time::timeout_at(deadline.into(), reader.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            // Quiet for a while: fine while it holds an allocation.
            Err(_) if lock(shared).server.has_allocation(key) => idle_since = Instant::now(),
            Err(_) => return,
        }
    }
}

pub(super) async fn write_stream<W: AsyncWrite + Unpin>(mut writer: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(message) = rx.recv().await {
        if writer.write_all(&message).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames_are_cut_by_their_length_fields() {
        // A STUN header announcing 8 bytes of attributes: 28 in all.
        let mut stun = vec![0x00, 0x03, 0x00, 0x08];
        stun.extend_from_slice(&[0; 16]);
        assert_eq!(stream_frame_len(&stun), Ok(Some(28)));
        // ChannelData of 5 bytes: 9, padded to 12 on a stream.
        assert_eq!(stream_frame_len(&[0x40, 0x01, 0x00, 0x05]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0x01, 0x00, 0x04]), Ok(Some(8)));
        assert_eq!(stream_frame_len(&[0x40, 0x01]), Ok(None));
        // Bytes starting with the bits 10 or 11 (RTP, say) break the framing.
        assert_eq!(stream_frame_len(&[0x80, 0x00, 0x00, 0x01]), Err(()));
        assert_eq!(stream_frame_len(&[0xc0, 0x00, 0x00, 0x01]), Err(()));
    }
}
