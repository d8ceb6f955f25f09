//! The stored form of a session: JSON, versioned, with every secret
//! sealed ([`crate::seal`]). Reading a record is parsing input from a
//! shared store: every field is checked, and the relay checks the state
//! again when it restores it.

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::session::limits::LegLimits;
use relay_core::session::spec::SrtpAuth;
use relay_core::session::state::{LegState, ReplayState, SessionState};
use relay_core::session::stats::{DropCounters, DropReason, LegStats};
use relay_core::wire::srtp_auth::{TagLen, AUTH_KEY_LEN};
use relay_core::{LegPorts, SessionId};
use serde::{Deserialize, Serialize};

use crate::seal::{SealError, Sealer};

/// The record format version this code writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// Largest record accepted from the store (a session with two legs, 64
/// SSRCs each and its counters is well under 16 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Why a stored record was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("record too large")]
    TooLarge,
    /// Not JSON of the record's shape (the reason names the field).
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Written by a newer (or unknown) format version.
    #[error("record version {0} is not supported")]
    Version(u32),
    /// A sealed secret did not open.
    #[error("secrets: {0}")]
    Secrets(#[from] SealError),
}

/// Where a record was written: the writer's lease epoch and its sequence
/// number (later writes have higher `(epoch, seq)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Version {
    /// The writer's lease epoch.
    pub epoch: u64,
    /// The writer's batch sequence number.
    pub seq: u64,
}

#[derive(Serialize, Deserialize)]
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

#[derive(Serialize, Deserialize)]
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

#[derive(Serialize, Deserialize, Default)]
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

#[derive(Serialize, Deserialize)]
struct StoredSession {
    v: u32,
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

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The associated data binding a leg's secrets to their place.
fn secrets_aad(group: &str, id: SessionId, side: &str) -> Vec<u8> {
    format!("ucmrc-session-secrets/v1\0{group}\0{id}\0{side}").into_bytes()
}

fn tag_bits(t: TagLen) -> u8 {
    match t {
        TagLen::Bits80 => 80,
        TagLen::Bits32 => 32,
    }
}

fn tag_len(bits: Option<u8>) -> Result<TagLen, RecordError> {
    match bits {
        Some(80) => Ok(TagLen::Bits80),
        Some(32) => Ok(TagLen::Bits32),
        _ => Err(RecordError::Malformed("srtp tag length".into())),
    }
}

fn encode_leg(l: &LegState, sealer: &Sealer, group: &str, id: SessionId, side: &str) -> StoredLeg {
    let s = &l.stats;
    let secrets = (l.srtp_auth.is_some() || l.stun_password.is_some()).then(|| {
        let plain = StoredSecrets {
            srtp_rtp_key: l.srtp_auth.as_ref().map(|a| hex::encode(a.rtp_key)),
            srtp_rtcp_key: l.srtp_auth.as_ref().map(|a| hex::encode(a.rtcp_key)),
            srtp_rtp_tag: l.srtp_auth.as_ref().map(|a| tag_bits(a.rtp_tag)),
            srtp_rtcp_tag: l.srtp_auth.as_ref().map(|a| tag_bits(a.rtcp_tag)),
            stun_password: l.stun_password.as_deref().map(hex::encode),
        };
        let json = serde_json::to_vec(&plain).unwrap_or_default();
        sealer.seal(&json, &secrets_aad(group, id, side))
    });
    StoredLeg {
        addr: l.ports.addr,
        rtp: l.ports.rtp,
        rtcp: l.ports.rtcp,
        hint: l.hint,
        remote_rtp: l.remote_rtp,
        remote_rtcp: l.remote_rtcp,
        max_pps: l.limits.max_pps,
        max_bytes_per_sec: l.limits.max_bytes_per_sec,
        await_hint: l.await_hint,
        remote_mux: l.remote_mux,
        rtcp_hint_port: l.rtcp_hint_port,
        blocked: l.blocked,
        last_ssrc: l.last_ssrc,
        replay: l.replay.iter().map(|r| (r.ssrc, r.srtp_highest, r.srtcp_highest)).collect(),
        stats: StoredStats {
            packets_received: s.packets_received,
            bytes_received: s.bytes_received,
            rtcp_packets_received: s.rtcp_packets_received,
            rtcp_bytes_received: s.rtcp_bytes_received,
            packets_forwarded: s.packets_forwarded,
            bytes_forwarded: s.bytes_forwarded,
            latches: s.latches,
            relatches: s.relatches,
            drops: s.drops.iter().filter(|(_, n)| *n > 0).map(|(r, n)| (r.as_str().to_string(), n)).collect(),
        },
        secrets,
    }
}

fn decode_key(hex_key: Option<&String>) -> Result<[u8; AUTH_KEY_LEN], RecordError> {
    let bytes = hex::decode(hex_key.ok_or_else(|| RecordError::Malformed("srtp key".into()))?)
        .map_err(|_| RecordError::Malformed("srtp key".into()))?;
    bytes.try_into().map_err(|_| RecordError::Malformed("srtp key length".into()))
}

fn decode_leg(l: StoredLeg, sealer: &Sealer, group: &str, id: SessionId, side: &str) -> Result<LegState, RecordError> {
    let mut drops = DropCounters::default();
    for (name, n) in &l.stats.drops {
        let reason = DropReason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| RecordError::Malformed(format!("{side}.stats.drops: unknown reason")))?;
        drops.add_n(reason, *n);
    }
    let (mut srtp_auth, mut stun_password) = (None, None);
    if let Some(sealed) = &l.secrets {
        let plain = sealer.open(sealed, &secrets_aad(group, id, side))?;
        let s: StoredSecrets =
            serde_json::from_slice(&plain).map_err(|_| RecordError::Malformed(format!("{side}.secrets")))?;
        if s.srtp_rtp_key.is_some() {
            srtp_auth = Some(SrtpAuth {
                rtp_key: decode_key(s.srtp_rtp_key.as_ref())?,
                rtcp_key: decode_key(s.srtp_rtcp_key.as_ref())?,
                rtp_tag: tag_len(s.srtp_rtp_tag)?,
                rtcp_tag: tag_len(s.srtp_rtcp_tag)?,
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

/// Encodes a session for the store of cluster group `group`.
pub fn encode(state: &SessionState, version: Version, sealer: &Sealer, group: &str) -> String {
    let id = state.id;
    let stored = StoredSession {
        v: RECORD_VERSION,
        id: id.to_string(),
        version,
        tenant: state.tenant.clone(),
        latch: state.latch.as_str().to_string(),
        verify: state.verify.as_str().to_string(),
        learning_window_ms: ms(state.learning_window),
        learning_left_ms: ms(state.learning_left),
        idle_timeout_ms: ms(state.idle_timeout),
        max_duration_ms: ms(state.max_duration),
        age_ms: ms(state.age),
        idle_ms: ms(state.idle),
        quality_clock_rate: state.quality_clock_rate,
        written_unix_ms: unix_ms_now(),
        pbx: encode_leg(&state.pbx, sealer, group, id, "pbx"),
        endpoint: encode_leg(&state.endpoint, sealer, group, id, "endpoint"),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

/// A decoded record: the state aged by the time since it was written, and
/// the write's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The session, aged to now.
    pub state: SessionState,
    /// Which write it came from.
    pub version: Version,
}

/// Decodes a record of group `group` read at `now_unix_ms`.
pub fn decode(record: &[u8], sealer: &Sealer, group: &str, now_unix_ms: u64) -> Result<Decoded, RecordError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let s: StoredSession = serde_json::from_slice(record).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if s.v != RECORD_VERSION {
        return Err(RecordError::Version(s.v));
    }
    let id: SessionId = s.id.parse().map_err(|_| RecordError::Malformed("id".into()))?;
    let latch = s.latch.parse().map_err(|_| RecordError::Malformed("latch".into()))?;
    let verify = s.verify.parse().map_err(|_| RecordError::Malformed("verify".into()))?;
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
        pbx: decode_leg(s.pbx, sealer, group, id, "pbx")?,
        endpoint: decode_leg(s.endpoint, sealer, group, id, "endpoint")?,
    };
    let elapsed = Duration::from_millis(now_unix_ms.saturating_sub(s.written_unix_ms));
    Ok(Decoded { state: state.aged(elapsed), version: s.version })
}

/// The version of a record without opening its secrets (cheap ordering of
/// updates).
pub fn version_of(record: &[u8]) -> Option<Version> {
    #[derive(Deserialize)]
    struct Head {
        version: Version,
    }
    serde_json::from_slice::<Head>(record).ok().map(|h| h.version)
}
