//! Format 1, read only: the records of releases before records were
//! authenticated as a whole (only their secrets were sealed; everything
//! else was plain JSON that anyone who can write to Redis could change).
//! A node reads them only when `accept_v1` is on, for the one hand-over of
//! a rolling upgrade from such a release (docs/HA.md, "Upgrading a pair").

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::session::limits::LegLimits;
use relay_core::session::spec::SrtpAuth;
use relay_core::session::state::{LegState, ReplayState, SessionState};
use relay_core::session::stats::LegStats;
use relay_core::{LegPorts, SessionId};
use serde::Deserialize;

use super::session::{auth_key, drops_by_name, tag_len};
use super::{DecodedSession, Ignored, RecordError, Version, MAX_RECORD_BYTES};
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

fn srtp_key(hex_key: Option<&String>) -> Result<[u8; 20], RecordError> {
    auth_key(hex_key.ok_or_else(|| RecordError::Malformed("srtp key".into()))?)
}

fn tag(bits: Option<u8>) -> Result<relay_core::wire::srtp_auth::TagLen, RecordError> {
    tag_len(bits.ok_or_else(|| RecordError::Malformed("srtp tag length".into()))?)
}

fn decode_leg(
    l: StoredLeg,
    sealer: &Sealer,
    group: &str,
    id: SessionId,
    side: &str,
    ignored: &mut Ignored,
) -> Result<LegState, RecordError> {
    let drops = drops_by_name(l.stats.drops.iter().map(|(k, n)| (k, *n)), ignored);
    let (mut srtp_auth, mut stun_password) = (None, None);
    if let Some(sealed) = &l.secrets {
        let plain = sealer.open(sealed, &secrets_aad(group, id, side))?;
        let s: StoredSecrets =
            serde_json::from_slice(&plain).map_err(|_| RecordError::Malformed(format!("{side}.secrets")))?;
        if s.srtp_rtp_key.is_some() {
            srtp_auth = Some(SrtpAuth {
                rtp_key: srtp_key(s.srtp_rtp_key.as_ref())?,
                rtcp_key: srtp_key(s.srtp_rtcp_key.as_ref())?,
                rtp_tag: tag(s.srtp_rtp_tag)?,
                rtcp_tag: tag(s.srtp_rtcp_tag)?,
            });
        }
        if let Some(p) = &s.stun_password {
            stun_password = Some(hex::decode(p).map_err(|_| RecordError::Malformed(format!("{side}.stun_password")))?);
        }
    }
    let st = &l.stats;
    Ok(LegState {
        ports: LegPorts { addr: l.addr, rtp: l.rtp, rtcp: l.rtcp },
        hint: l.hint,
        remote_rtp: l.remote_rtp,
        remote_rtcp: l.remote_rtcp,
        srtp_auth,
        stun_password,
        limits: LegLimits { max_pps: l.max_pps, max_bytes_per_sec: l.max_bytes_per_sec },
        await_hint: l.await_hint,
        remote_mux: l.remote_mux,
        rtcp_hint_port: l.rtcp_hint_port,
        blocked: l.blocked,
        last_ssrc: l.last_ssrc,
        replay: l
            .replay
            .iter()
            .map(|&(ssrc, srtp_highest, srtcp_highest)| ReplayState { ssrc, srtp_highest, srtcp_highest })
            .collect(),
        stats: LegStats {
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
    })
}

/// Decodes a format 1 record of group `group` stored under `stored_id`,
/// read at `now_unix_ms`.
pub(super) fn decode(
    record: &[u8],
    sealer: &Sealer,
    group: &str,
    stored_id: &str,
    now_unix_ms: u64,
) -> Result<DecodedSession, RecordError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let s: StoredSession = serde_json::from_slice(record).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if s.id != stored_id {
        return Err(RecordError::Misplaced("id"));
    }
    let id: SessionId = s.id.parse().map_err(|_| RecordError::Malformed("id".into()))?;
    let latch = s.latch.parse().map_err(|_| RecordError::Malformed("latch".into()))?;
    let verify = s.verify.parse().map_err(|_| RecordError::Malformed("verify".into()))?;
    let mut ignored = Ignored::default();
    let state = SessionState {
        id,
        tenant: s.tenant,
        latch,
        verify,
        learning_window: Duration::from_millis(s.learning_window_ms),
        learning_left: Duration::from_millis(s.learning_left_ms),
        idle_timeout: Duration::from_millis(s.idle_timeout_ms),
        max_duration: Duration::from_millis(s.max_duration_ms),
        age: Duration::from_millis(s.age_ms),
        idle: Duration::from_millis(s.idle_ms),
        quality_clock_rate: s.quality_clock_rate,
        pbx: decode_leg(s.pbx, sealer, group, id, "pbx", &mut ignored)?,
        endpoint: decode_leg(s.endpoint, sealer, group, id, "endpoint", &mut ignored)?,
    };
    let elapsed = Duration::from_millis(now_unix_ms.saturating_sub(s.written_unix_ms));
    Ok(DecodedSession { state: state.aged(elapsed), version: s.version, ignored })
}
