//! How a forwarded datagram leaves compared with how it arrived, and the
//! one helper both datapaths apply it with, in place, just before the send.
//! Media leaves unchanged; TURN's ChannelData gets or loses a 4-byte
//! header. Receive buffers keep [`HEADROOM`] free bytes in front of every
//! datagram, so adding a header copies nothing.

use std::ops::Range;

/// Bytes every receive buffer keeps free in front of a datagram (a
/// ChannelData header is 4; a Data indication's is at most 48).
pub const HEADROOM: usize = 64;

/// What happens to a datagram's bytes on the way through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Sent as it arrived (media relaying).
    #[default]
    Unchanged,
    /// Sent behind this 4-byte header (a TURN ChannelData header: channel
    /// number and length).
    Prepend([u8; 4]),
    /// Sent without its first `n` bytes (a ChannelData header taken off).
    Strip(u16),
}

impl Framing {
    /// The bytes to send for the datagram at `buf[start..start + len]`,
    /// which has `start` bytes of headroom in front of it: a header is
    /// written into the headroom, a stripped one skipped. `None` when it
    /// cannot be applied (less headroom than the header, a strip longer
    /// than the datagram, a range outside `buf`): the caller counts it as
    /// a failed send.
    pub fn apply(self, buf: &mut [u8], start: usize, len: usize) -> Option<Range<usize>> {
        let end = start.checked_add(len).filter(|e| *e <= buf.len())?;
        match self {
            Framing::Unchanged => Some(start..end),
            Framing::Prepend(header) => {
                let at = start.checked_sub(header.len())?;
                buf[at..start].copy_from_slice(&header);
                Some(at..end)
            }
            Framing::Strip(n) => {
                let from = start + usize::from(n);
                (from <= end).then_some(from..end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_into_the_headroom_and_come_off_in_place() {
        let mut buf = vec![0u8; HEADROOM + 8];
        buf[HEADROOM..].copy_from_slice(b"payload!");
        assert_eq!(Framing::Unchanged.apply(&mut buf, HEADROOM, 8), Some(HEADROOM..HEADROOM + 8));
        let sent = Framing::Prepend([0x40, 0x00, 0x00, 0x08]).apply(&mut buf, HEADROOM, 8).expect("room");
        assert_eq!(&buf[sent], b"\x40\x00\x00\x08payload!");
        let sent = Framing::Strip(4).apply(&mut buf, HEADROOM - 4, 12).expect("long enough");
        assert_eq!(&buf[sent], b"payload!");
    }

    #[test]
    fn impossible_framings_are_refused_not_panicked() {
        let mut buf = vec![0u8; 16];
        assert_eq!(Framing::Prepend([1; 4]).apply(&mut buf, 3, 8), None, "3 bytes of headroom for 4");
        assert_eq!(Framing::Strip(9).apply(&mut buf, 0, 8), None);
        assert_eq!(Framing::Unchanged.apply(&mut buf, 10, 8), None, "past the buffer");
        assert_eq!(Framing::Unchanged.apply(&mut buf, usize::MAX, 8), None);
        assert_eq!(Framing::Strip(8).apply(&mut buf, 0, 8), Some(8..8), "an empty datagram is still one");
    }
}
