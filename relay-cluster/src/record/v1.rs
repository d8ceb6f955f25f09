//! Format 1, read only: the records of releases before records were
//! authenticated as a whole (only their secrets were sealed; everything
//! else was plain JSON that anyone who can write to Redis could change).
//! A node reads them only when `accept_v1` is on, for the one hand-over of
//! a rolling upgrade from such a release (docs/HA.md, "Upgrading a pair").

use std::collections::BTreeMap;
use std::net::SocketAddr;

use relay_core::SessionId;
use serde::Deserialize;

use super::session::{Body, Leg, Replay, Srtp, Stats};
use super::{Meta, RecordError, Version, MAX_RECORD_BYTES};
use crate::seal::Sealer;

#[derive(Deserialize)]
struct StoredStats {
    packets_received: u64,
    bytes_received: u64,
    rtcp_packets_received: u64,
    rtcp_bytes_received: u64,
    packets_forwarded: u64,
    bytes_forwarded: u64,
    latches: u64,
    relatches: u64,
    /// Drop counts by reason name (only the non-zero ones).
    drops: Vec<(String, u64)>,
}

#[derive(Deserialize)]
struct StoredLeg {
    addr: u16,
    rtp: u16,
    rtcp: Option<u16>,
    hint: Option<SocketAddr>,
    remote_rtp: Option<SocketAddr>,
    remote_rtcp: Option<SocketAddr>,
    max_pps: Option<u32>,
    max_bytes_per_sec: Option<u64>,
    await_hint: bool,
    remote_mux: bool,
    rtcp_hint_port: Option<u16>,
    blocked: bool,
    last_ssrc: Option<u32>,
    /// `[ssrc, highest SRTP index, highest SRTCP index]`.
    replay: Vec<(u32, Option<u64>, Option<u32>)>,
    stats: StoredStats,
    /// Sealed [`StoredSecrets`], when the leg has any.
    secrets: Option<String>,
}

#[derive(Deserialize, Default)]
struct StoredSecrets {
    /// SRTP and SRTCP authentication keys, hex.
    srtp_rtp_key: Option<String>,
    srtp_rtcp_key: Option<String>,
    /// Tag lengths in bits (80 or 32).
    srtp_rtp_tag: Option<u8>,
    srtp_rtcp_tag: Option<u8>,
    /// STUN password, hex.
    stun_password: Option<String>,
}

#[derive(Deserialize)]
struct StoredSession {
    id: String,
    version: Version,
    tenant: String,
    latch: String,
    verify: String,
    learning_window_ms: u64,
    learning_left_ms: u64,
    idle_timeout_ms: u64,
    max_duration_ms: u64,
    age_ms: u64,
    idle_ms: u64,
    quality_clock_rate: Option<u32>,
    /// Unix time of the write (ms): the reader ages the state by the time
    /// since.
    written_unix_ms: u64,
    pbx: StoredLeg,
    endpoint: StoredLeg,
}

/// The associated data binding a leg's secrets to their place.
fn secrets_aad(group: &str, id: SessionId, side: &str) -> Vec<u8> {
    format!("ucmrc-session-secrets/v1\0{group}\0{id}\0{side}").into_bytes()
}

fn required<T>(field: Option<T>, what: &str) -> Result<T, RecordError> {
    field.ok_or_else(|| RecordError::Malformed(what.into()))
}

/// Format 2's leg for a format 1 leg, its secrets opened.
fn translate_leg(l: StoredLeg, sealer: &Sealer, group: &str, id: SessionId, side: &str) -> Result<Leg, RecordError> {
    let (mut srtp, mut stun_password) = (None, None);
    if let Some(sealed) = &l.secrets {
        let plain = sealer.open(sealed, &secrets_aad(group, id, side))?;
        let s: StoredSecrets =
            serde_json::from_slice(&plain).map_err(|_| RecordError::Malformed(format!("{side}.secrets")))?;
        if let Some(rtp_key) = s.srtp_rtp_key {
            srtp = Some(Srtp {
                rtp_key,
                rtcp_key: required(s.srtp_rtcp_key, "srtp key")?,
                rtp_tag_bits: required(s.srtp_rtp_tag, "srtp tag length")?,
                rtcp_tag_bits: required(s.srtp_rtcp_tag, "srtp tag length")?,
            });
        }
        stun_password = s.stun_password;
    }
    let st = l.stats;
    // Format 1 kept drops as a list of pairs: a name listed twice adds up.
    let mut drops = BTreeMap::<String, u64>::new();
    for (name, n) in st.drops {
        let total = drops.entry(name).or_default();
        *total = total.saturating_add(n);
    }
    Ok(Leg {
        addr: l.addr,
        rtp: l.rtp,
        rtcp: l.rtcp,
        hint: l.hint,
        remote_rtp: l.remote_rtp,
        remote_rtcp: l.remote_rtcp,
        max_pps: l.max_pps,
        max_bytes_per_sec: l.max_bytes_per_sec,
        await_hint: l.await_hint,
        remote_mux: l.remote_mux,
        rtcp_hint_port: l.rtcp_hint_port,
        blocked: l.blocked,
        last_ssrc: l.last_ssrc,
        replay: l
            .replay
            .into_iter()
            .map(|(ssrc, srtp_highest, srtcp_highest)| Replay { ssrc, srtp_highest, srtcp_highest })
            .collect(),
        stats: Stats {
            packets_received: st.packets_received,
            bytes_received: st.bytes_received,
            rtcp_packets_received: st.rtcp_packets_received,
            rtcp_bytes_received: st.rtcp_bytes_received,
            packets_forwarded: st.packets_forwarded,
            bytes_forwarded: st.bytes_forwarded,
            latches: st.latches,
            relatches: st.relatches,
            drops,
        },
        srtp,
        stun_password,
    })
}

/// Reads a format 1 record of group `group` stored under `stored_id` as
/// format 2's envelope fields and body (its secrets opened): from there it
/// is decoded as a format 2 record is.
pub(super) fn translate(
    record: &[u8],
    sealer: &Sealer,
    group: &str,
    stored_id: &str,
) -> Result<(Meta, Body), RecordError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let s: StoredSession = serde_json::from_slice(record).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if s.id != stored_id {
        return Err(RecordError::Misplaced("id"));
    }
    let id: SessionId = s.id.parse().map_err(|_| RecordError::Malformed("id".into()))?;
    let body = Body {
        latch: s.latch,
        verify: s.verify,
        learning_window_ms: s.learning_window_ms,
        learning_left_ms: s.learning_left_ms,
        idle_timeout_ms: s.idle_timeout_ms,
        max_duration_ms: s.max_duration_ms,
        age_ms: s.age_ms,
        idle_ms: s.idle_ms,
        quality_clock_rate: s.quality_clock_rate,
        pbx: translate_leg(s.pbx, sealer, group, id, "pbx")?,
        endpoint: translate_leg(s.endpoint, sealer, group, id, "endpoint")?,
    };
    let meta = Meta { id: s.id, tenant: s.tenant, version: s.version, written_unix_ms: s.written_unix_ms };
    Ok((meta, body))
}
