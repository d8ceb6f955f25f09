//! Opt-in stream quality from clear RTP headers only (RFC 3550 A.1, A.8):
//! per-SSRC packets, loss, duplicates, reordering and interarrival jitter.

use std::time::Instant;

/// SSRCs tracked per leg; further SSRCs replace the least recently seen.
pub const MAX_TRACKED_SSRCS: usize = 4;

/// Quality figures of one RTP stream (one SSRC) received on a leg.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamQuality {
    /// Synchronisation source.
    pub ssrc: u32,
    /// Distinct packets received.
    pub packets: u64,
    /// Packets expected from the sequence numbers minus those received (≥ 0).
    pub lost: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// RFC 3550 interarrival jitter in RTP timestamp units.
    pub jitter: f64,
    /// Jitter in milliseconds for the configured clock rate.
    pub jitter_ms: f64,
}

#[derive(Debug, Clone)]
struct Stream {
    ssrc: u32,
    base_ext: u64,
    max_ext: u64,
    seen: u128,
    packets: u64,
    duplicates: u64,
    reordered: u64,
    jitter: f64,
    last_transit: Option<f64>,
    last_seen: Instant,
}

/// Tracks up to [`MAX_TRACKED_SSRCS`] streams of one leg.
#[derive(Debug, Clone)]
pub struct QualityTracker {
    clock_rate: u32,
    epoch: Instant,
    streams: Vec<Stream>,
}

impl QualityTracker {
    /// A tracker using `clock_rate` (Hz) for jitter; `epoch` is any fixed instant.
    pub fn new(clock_rate: u32, epoch: Instant) -> Self {
        Self { clock_rate: clock_rate.max(1), epoch, streams: Vec::new() }
    }

    /// The RTP clock rate used for jitter (Hz).
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Records one RTP packet's header fields.
    pub fn handle_rtp(&mut self, now: Instant, ssrc: u32, seq: u16, timestamp: u32) {
        let arrival = now.saturating_duration_since(self.epoch).as_secs_f64() * f64::from(self.clock_rate);
        let idx = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                let fresh = Stream {
                    ssrc,
                    base_ext: u64::from(seq) + (1 << 16),
                    max_ext: u64::from(seq) + (1 << 16),
                    seen: 1,
                    packets: 1,
                    duplicates: 0,
                    reordered: 0,
                    jitter: 0.0,
                    last_transit: Some(arrival - f64::from(timestamp)),
                    last_seen: now,
                };
                if self.streams.len() < MAX_TRACKED_SSRCS {
                    self.streams.push(fresh);
                } else if let Some(oldest) = self.streams.iter_mut().min_by_key(|s| s.last_seen) {
                    *oldest = fresh;
                }
                return;
            }
        };
        let s = &mut self.streams[idx];
        s.last_seen = now;
        // Extend the sequence number relative to the highest seen.
        let max_seq = (s.max_ext & 0xffff) as u16;
        let delta = seq.wrapping_sub(max_seq) as i16;
        let ext = (s.max_ext as i64 + i64::from(delta)).max(0) as u64;
        if ext > s.max_ext {
            let shift = ext - s.max_ext;
            s.seen = if shift >= 128 { 0 } else { s.seen << shift };
            s.seen |= 1;
            s.max_ext = ext;
        } else {
            let back = s.max_ext - ext;
            if back < 128 && s.seen & (1u128 << back) != 0 {
                s.duplicates += 1;
                return;
            }
            if back < 128 {
                s.seen |= 1u128 << back;
            }
            if ext < s.base_ext {
                s.base_ext = ext;
            }
            s.reordered += 1;
        }
        s.packets += 1;
        let transit = arrival - f64::from(timestamp);
        if let Some(last) = s.last_transit {
            let d = (transit - last).abs();
            s.jitter += (d - s.jitter) / 16.0;
        }
        s.last_transit = Some(transit);
    }

    /// Current figures for each tracked stream.
    pub fn snapshot(&self) -> Vec<StreamQuality> {
        self.streams
            .iter()
            .map(|s| {
                let expected = s.max_ext - s.base_ext + 1;
                StreamQuality {
                    ssrc: s.ssrc,
                    packets: s.packets,
                    lost: expected.saturating_sub(s.packets),
                    duplicates: s.duplicates,
                    reordered: s.reordered,
                    jitter: s.jitter,
                    jitter_ms: s.jitter * 1000.0 / f64::from(self.clock_rate),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_loss_duplicates_reordering_and_jitter() {
        let t0 = Instant::now();
        let mut q = QualityTracker::new(8000, t0);
        // 20 ms packets, seq 65530.. across the wrap; lose 65534, duplicate 2, swap 4/5.
        let order: [u16; 11] = [65530, 65531, 65532, 65533, 65535, 0, 1, 2, 2, 5, 4];
        for (i, seq) in order.iter().enumerate() {
            let ts = u32::from(seq.wrapping_sub(65530)) * 160;
            q.handle_rtp(t0 + Duration::from_millis(20 * i as u64), 7, *seq, ts);
        }
        let s = q.snapshot()[0];
        assert_eq!(s.packets, 10);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.lost, 2, "65534 and 3 missing");
        assert!(s.jitter > 0.0);
    }

    #[test]
    fn perfect_stream_has_zero_jitter() {
        let t0 = Instant::now();
        let mut q = QualityTracker::new(8000, t0);
        for i in 0..100u16 {
            q.handle_rtp(t0 + Duration::from_millis(20 * u64::from(i)), 1, i, u32::from(i) * 160);
        }
        let s = q.snapshot()[0];
        assert_eq!((s.packets, s.lost, s.duplicates, s.reordered), (100, 0, 0, 0));
        assert!(s.jitter < 1e-6);
    }
}
