//! The `SSRC` dictionary of `query` and `delete`, in rtpengine's shape so
//! that a proxy's MOS variables (Kamailio's `mos_*_pv`, OpenSIPS's
//! `$rtpquery`) read it: per SSRC, what the relay saw of its RTP headers
//! and what that party's receiver reports (plain RTCP report blocks) said,
//! with rtpengine's MOS estimate. Present only with quality collection on
//! (`[sessions] quality`); never from payloads.

use std::collections::BTreeMap;

use super::bencode::{dict, Value};
use crate::session::{LegInfo, MosSample, ReceptionQuality, StreamQuality};

/// Every SSRC of a call's legs, as their figures come in.
#[derive(Default)]
pub(super) struct SsrcTable {
    entries: BTreeMap<u32, (Option<StreamQuality>, Option<ReceptionQuality>)>,
}

impl SsrcTable {
    /// The streams and reporters of one leg's remote.
    pub(super) fn add(&mut self, leg: &LegInfo) {
        for s in &leg.quality {
            self.entries.entry(s.ssrc).or_default().0 = Some(*s);
        }
        for r in &leg.reports {
            self.entries.entry(r.ssrc).or_default().1 = Some(*r);
        }
    }

    /// The dictionary, keyed by decimal SSRC; `now_unix` dates the samples.
    pub(super) fn value(&self, now_unix: u64) -> Value {
        let int = |n: u64| Value::Int(n.min(i64::MAX as u64) as i64);
        let sample = |s: &MosSample, at: Option<u64>, samples: Option<u64>| {
            let micros = |d: Option<std::time::Duration>| int(d.map_or(0, |d| d.as_micros() as u64));
            let mut pairs = vec![
                ("MOS", int(u64::from(s.mos))),
                ("round-trip time", micros(s.round_trip)),
                ("round-trip time leg", micros(s.round_trip_leg)),
                ("jitter", int(u64::from(s.jitter_ms))),
                ("packet loss", int(u64::from(s.loss_percent))),
            ];
            if let Some(at) = at {
                pairs.push(("reported at", int(at)));
            }
            if let Some(n) = samples {
                pairs.push(("samples", int(n)));
            }
            dict(pairs)
        };
        let reported_at = |s: &MosSample| now_unix.saturating_sub(s.age.as_secs());
        let entries = self.entries.iter().map(|(ssrc, (stream, reports))| {
            let mut pairs: Vec<(&str, Value)> = Vec::new();
            if let Some(s) = stream {
                pairs.push(("packets", int(s.packets)));
                // UCMRC's own: loss and jitter between the sender and the relay.
                pairs.push(("upstream loss", int(s.lost)));
                pairs.push(("upstream jitter", int(s.jitter_ms.round() as u64)));
            }
            if let Some(r) = reports {
                pairs.push(("cumulative loss", Value::Int(i64::from(r.cumulative_lost))));
                if let (Some(avg), Some(low), Some(high)) = (&r.average, &r.lowest, &r.highest) {
                    pairs.push(("average MOS", sample(avg, None, Some(r.mos_samples))));
                    pairs.push(("lowest MOS", sample(low, Some(reported_at(low)), None)));
                    pairs.push(("highest MOS", sample(high, Some(reported_at(high)), None)));
                }
            }
            (ssrc.to_string().into_bytes(), dict(pairs))
        });
        Value::Dict(entries.collect())
    }
}
