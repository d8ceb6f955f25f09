//! Opt-in stream quality from clear RTP headers (RFC 3550 A.1, A.8):
//! per-SSRC packets, loss, duplicates, reordering and interarrival jitter;
//! and from the report blocks of plain RTCP (§6.4): what each receiver
//! says it gets, round trips, and a MOS estimate as rtpengine computes it.
//! Never from payloads; SRTCP, whose reports are encrypted, is not read.

use std::time::{Duration, Instant};

use crate::wire::rtcp::{PlainReports, ReportBlock};

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

/// Sender reports remembered per leg, to time the receiver reports that
/// name them.
const SENDER_REPORTS: usize = 8;

/// A round trip longer than this is not believed (a stale or forged LSR).
const MAX_ROUND_TRIP: Duration = Duration::from_secs(10);

/// One receiver's reports are sampled at most this often (as rtpengine).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One sample of a receiver's reception, from one report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MosSample {
    /// Mean opinion score × 10 (10 to 45, rtpengine's scale and formula);
    /// 0 when it could not be estimated (a round trip is not known yet).
    pub mos: u8,
    /// Round trip between the two endpoints through the relay (the sum of
    /// both legs'), when both are known.
    pub round_trip: Option<Duration>,
    /// Round trip between the relay and the reporter.
    pub round_trip_leg: Option<Duration>,
    /// Interarrival jitter the reporter saw, milliseconds.
    pub jitter_ms: u32,
    /// Fraction of packets the reporter lost since its last report, percent.
    pub loss_percent: u8,
    /// How long before the snapshot it was reported.
    pub age: Duration,
}

/// What one receiver (an SSRC of this leg's remote) reported about the
/// media it gets, over the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceptionQuality {
    /// The reporter's SSRC.
    pub ssrc: u32,
    /// Samples taken (at most one a second).
    pub samples: u64,
    /// Samples with a MOS estimate.
    pub mos_samples: u64,
    /// Packets lost since the start, as last reported.
    pub cumulative_lost: i32,
    /// Averages over the samples with a MOS (`age`: zero).
    pub average: Option<MosSample>,
    /// The sample with the lowest MOS.
    pub lowest: Option<MosSample>,
    /// The sample with the highest MOS.
    pub highest: Option<MosSample>,
}

/// A sample as stored.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mos: u8,
    round_trip: Option<Duration>,
    round_trip_leg: Option<Duration>,
    jitter_ms: u32,
    loss_percent: u8,
    at: Instant,
}

/// Running figures of one reporter.
#[derive(Debug, Clone)]
struct Reporter {
    ssrc: u32,
    samples: u64,
    mos_samples: u64,
    cumulative_lost: i32,
    /// Sums over the samples with a MOS: mos, round trip (µs), leg round
    /// trip (µs), jitter, loss.
    sums: [u64; 5],
    lowest: Option<Sample>,
    highest: Option<Sample>,
    last_sample: Option<Instant>,
}

/// Tracks up to [`MAX_TRACKED_SSRCS`] streams and as many reporters of one
/// leg, and the leg's sender reports and round trip.
#[derive(Debug, Clone)]
pub struct QualityTracker {
    clock_rate: u32,
    epoch: Instant,
    streams: Vec<Stream>,
    /// Sender reports from this leg's remote: NTP middle bits, arrival.
    sender_reports: [Option<(u32, Instant)>; SENDER_REPORTS],
    next_sender_report: usize,
    /// Round trip between the relay and this leg's remote, last measured.
    round_trip_leg: Option<Duration>,
    reporters: Vec<Reporter>,
}

impl QualityTracker {
    /// A tracker using `clock_rate` (Hz) for jitter; `epoch` is any fixed instant.
    pub fn new(clock_rate: u32, epoch: Instant) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            epoch,
            streams: Vec::new(),
            sender_reports: [None; SENDER_REPORTS],
            next_sender_report: 0,
            round_trip_leg: None,
            reporters: Vec::new(),
        }
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

    /// Records a plain RTCP datagram's reports, received from this leg's
    /// remote. `peer` is the other leg's tracker: the sender reports its
    /// remote sent, which this remote's report blocks name, and its own
    /// round trip. A report block about a stream sent `Δ` after the SR it
    /// names and `dlsr` after receiving it times this leg's round trip
    /// (`Δ − dlsr`, relay clock only); with the other leg's, the two make
    /// the end-to-end round trip a MOS needs.
    pub fn handle_rtcp(&mut self, now: Instant, reports: &PlainReports, peer: Option<&QualityTracker>) {
        if let Some(ntp) = reports.sender_report_ntp {
            self.sender_reports[self.next_sender_report] = Some((ntp, now));
            self.next_sender_report = (self.next_sender_report + 1) % SENDER_REPORTS;
        }
        for block in reports.blocks() {
            self.handle_report_block(now, reports.reporter, block, peer);
        }
    }

    fn handle_report_block(&mut self, now: Instant, reporter: u32, b: &ReportBlock, peer: Option<&QualityTracker>) {
        let leg = peer.and_then(|p| p.round_trip_since(now, b.lsr, b.dlsr));
        if leg.is_some() {
            self.round_trip_leg = leg;
        }
        let round_trip = leg.zip(peer.and_then(|p| p.round_trip_leg)).map(|(a, b)| a + b);
        let jitter_ms = (u64::from(b.jitter) * 1000 / u64::from(self.clock_rate)).min(u64::from(u32::MAX)) as u32;
        let loss_percent = (u32::from(b.fraction_lost) * 100 / 256) as u8;
        let mos = round_trip.map_or(0, |rt| mos_tenths(rt, jitter_ms, loss_percent));
        let sample = Sample { mos, round_trip, round_trip_leg: leg, jitter_ms, loss_percent, at: now };
        let r = self.reporter(reporter, now);
        r.cumulative_lost = b.cumulative_lost;
        if r.last_sample.is_some_and(|t| now.saturating_duration_since(t) < SAMPLE_INTERVAL) {
            return;
        }
        r.last_sample = Some(now);
        r.samples += 1;
        if mos == 0 {
            return;
        }
        r.mos_samples += 1;
        let micros = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
        for (sum, v) in r.sums.iter_mut().zip([
            u64::from(mos),
            micros(round_trip),
            micros(leg),
            u64::from(jitter_ms),
            u64::from(loss_percent),
        ]) {
            *sum = sum.saturating_add(v);
        }
        if r.lowest.is_none_or(|l| mos < l.mos) {
            r.lowest = Some(sample);
        }
        if r.highest.is_none_or(|h| mos > h.mos) {
            r.highest = Some(sample);
        }
    }

    /// The round trip to this leg's remote's SR named by `lsr`, received
    /// `dlsr` (1/65536 s) before the report: `None` without such an SR or
    /// when implausible.
    fn round_trip_since(&self, now: Instant, lsr: u32, dlsr: u32) -> Option<Duration> {
        if lsr == 0 {
            return None;
        }
        let (_, at) = self.sender_reports.iter().flatten().rev().find(|(ntp, _)| *ntp == lsr)?;
        let delay = Duration::from_micros(u64::from(dlsr) * 1_000_000 / 65_536);
        let rtt = now.saturating_duration_since(*at).checked_sub(delay)?;
        (!rtt.is_zero() && rtt <= MAX_ROUND_TRIP).then_some(rtt)
    }

    /// The reporter `ssrc`'s entry (a new one replaces the least recently
    /// sampled when all are taken).
    fn reporter(&mut self, ssrc: u32, now: Instant) -> &mut Reporter {
        let at = match self.reporters.iter().position(|r| r.ssrc == ssrc) {
            Some(i) => i,
            None => {
                let fresh = Reporter {
                    ssrc,
                    samples: 0,
                    mos_samples: 0,
                    cumulative_lost: 0,
                    sums: [0; 5],
                    lowest: None,
                    highest: None,
                    last_sample: None,
                };
                if self.reporters.len() < MAX_TRACKED_SSRCS {
                    self.reporters.push(fresh);
                    self.reporters.len() - 1
                } else {
                    let oldest = (0..self.reporters.len())
                        .min_by_key(|i| self.reporters[*i].last_sample.unwrap_or(now))
                        .unwrap_or(0);
                    self.reporters[oldest] = fresh;
                    oldest
                }
            }
        };
        &mut self.reporters[at]
    }

    /// What each receiver of this leg's remote reported, as of `now`.
    pub fn reports(&self, now: Instant) -> Vec<ReceptionQuality> {
        let public = |s: Sample| MosSample {
            mos: s.mos,
            round_trip: s.round_trip,
            round_trip_leg: s.round_trip_leg,
            jitter_ms: s.jitter_ms,
            loss_percent: s.loss_percent,
            age: now.saturating_duration_since(s.at),
        };
        self.reporters
            .iter()
            .map(|r| {
                let n = r.mos_samples.max(1);
                let average = (r.mos_samples > 0).then(|| MosSample {
                    mos: (r.sums[0] / n) as u8,
                    round_trip: Some(Duration::from_micros(r.sums[1] / n)),
                    round_trip_leg: Some(Duration::from_micros(r.sums[2] / n)),
                    jitter_ms: (r.sums[3] / n) as u32,
                    loss_percent: (r.sums[4] / n) as u8,
                    age: Duration::ZERO,
                });
                ReceptionQuality {
                    ssrc: r.ssrc,
                    samples: r.samples,
                    mos_samples: r.mos_samples,
                    cumulative_lost: r.cumulative_lost,
                    average,
                    lowest: r.lowest.map(public),
                    highest: r.highest.map(public),
                }
            })
            .collect()
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

/// rtpengine's MOS-CQ estimate (its `mos_calc`, after PingPlotter's
/// simplification of ITU-T G.107) × 10: 10 to 45, or 0 where the formula
/// gives less than 1.0.
fn mos_tenths(round_trip: Duration, jitter_ms: u32, loss_percent: u8) -> u8 {
    let effective = (round_trip.as_micros() / 1000) as f64 + f64::from(jitter_ms) * 2.0 + 10.0;
    let mut r = if effective < 160.0 { 93.2 - effective / 40.0 } else { 93.2 - (effective - 120.0) / 10.0 };
    r -= f64::from(loss_percent) * 2.5;
    if r < 0.0 {
        return 10;
    }
    let mos = 1.0 + 0.035 * r + 0.000_007 * r * (r - 60.0) * (100.0 - r);
    let tenths = (mos * 10.0).clamp(0.0, 50.0) as u8;
    if tenths < 10 {
        0
    } else {
        tenths
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

    /// A plain SR from `ssrc` whose NTP middle bits are `ntp`.
    fn sender_report(ssrc: u32, ntp: u32) -> PlainReports {
        let mut p = vec![0x80u8, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&(ntp >> 16).to_be_bytes());
        p.extend_from_slice(&(ntp << 16).to_be_bytes());
        p.extend_from_slice(&[0; 12]);
        PlainReports::parse(&p).expect("sr")
    }

    /// A plain RR from `from` about `about`.
    fn receiver_report(from: u32, about: u32, fraction: u8, jitter: u32, lsr: u32, dlsr: u32) -> PlainReports {
        let mut p = vec![0x81u8, 201, 0, 7];
        p.extend_from_slice(&from.to_be_bytes());
        p.extend_from_slice(&about.to_be_bytes());
        p.extend_from_slice(&[fraction, 0, 0, 3, 0, 0, 0, 9]);
        p.extend_from_slice(&jitter.to_be_bytes());
        p.extend_from_slice(&lsr.to_be_bytes());
        p.extend_from_slice(&dlsr.to_be_bytes());
        PlainReports::parse(&p).expect("rr")
    }

    #[test]
    fn mos_follows_rtpengines_formula() {
        // No delay, jitter or loss: r = 93.2 - 10/40.
        assert_eq!(mos_tenths(Duration::ZERO, 0, 0), 44);
        // 140 ms round trip, 5 ms jitter, 10 % loss: effective 160 ms.
        // r = 93.2 - 40/10 - 25 = 64.2; mos = 1 + 2.247 + 0.007*64.2*4.2*35.8/1000.
        assert_eq!(mos_tenths(Duration::from_millis(140), 5, 10), 33);
        assert_eq!(mos_tenths(Duration::from_secs(2), 100, 50), 10, "r below 0: the floor");
    }

    #[test]
    fn round_trips_of_both_legs_make_the_mos() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let (mut a, mut b) = (QualityTracker::new(8000, t0), QualityTracker::new(8000, t0));
        // A sends an SR at 0 ms; B reports on it at 162.5 ms having held it
        // 62.5 ms (4096/65536 s): the relay–B round trip is 100 ms. No MOS
        // yet (A's round trip is unknown).
        a.handle_rtcp(at(0), &sender_report(0xa, 0x1000_0000), None);
        b.handle_rtcp(at(162_500), &receiver_report(0xb, 0xa, 0, 0, 0x1000_0000, 4096), Some(&a));
        let r = b.reports(at(162_500))[0];
        assert_eq!((r.ssrc, r.samples, r.mos_samples, r.cumulative_lost), (0xb, 1, 0, 3));
        // B sends an SR at 200 ms; A reports on it at 271.25 ms having held
        // it 31.25 ms: relay–A is 40 ms, end to end 140 ms; 5 ms jitter (40
        // units at 8 kHz) and 10 % loss (26/256).
        b.handle_rtcp(at(200_000), &sender_report(0xb, 0x2000_0000), Some(&a));
        a.handle_rtcp(at(271_250), &receiver_report(0xa, 0xb, 26, 40, 0x2000_0000, 2048), Some(&b));
        let r = a.reports(at(1_271_250))[0];
        assert_eq!((r.ssrc, r.samples, r.mos_samples), (0xa, 1, 1));
        let low = r.lowest.expect("a sample");
        assert_eq!(low.round_trip_leg, Some(Duration::from_millis(40)));
        assert_eq!(low.round_trip, Some(Duration::from_millis(140)));
        assert_eq!((low.mos, low.jitter_ms, low.loss_percent, low.age), (33, 5, 10, Duration::from_secs(1)));
        assert_eq!(r.average.map(|s| s.mos), Some(33));
        // A report within a second of the last is not sampled again; one
        // naming an SR never seen times nothing.
        a.handle_rtcp(at(900_000), &receiver_report(0xa, 0xb, 0, 0, 0x2000_0000, 1), Some(&b));
        a.handle_rtcp(at(1_300_000), &receiver_report(0xa, 0xb, 0, 0, 0x7777_0000, 1), Some(&b));
        let r = a.reports(at(1_300_000))[0];
        assert_eq!((r.samples, r.mos_samples), (2, 1), "the unknown SR gives a sample without a MOS");
    }

    #[test]
    fn forged_report_blocks_are_bounded() {
        let t0 = Instant::now();
        let (mut a, mut b) = (QualityTracker::new(8000, t0), QualityTracker::new(8000, t0));
        a.handle_rtcp(t0, &sender_report(1, 5), None);
        // A DLSR longer than the time since the SR, or an SR ages ago.
        b.handle_rtcp(t0 + Duration::from_millis(10), &receiver_report(2, 1, 0, u32::MAX, 5, u32::MAX), Some(&a));
        b.handle_rtcp(t0 + Duration::from_secs(60), &receiver_report(2, 1, 0, 0, 5, 0), Some(&a));
        assert_eq!(b.reports(t0)[0].mos_samples, 0);
        // Many reporters: a fixed number kept.
        for ssrc in 0..100 {
            b.handle_rtcp(t0 + Duration::from_secs(u64::from(ssrc)), &receiver_report(ssrc, 1, 0, 0, 0, 0), None);
        }
        assert_eq!(b.reports(t0).len(), MAX_TRACKED_SSRCS);
    }
}
