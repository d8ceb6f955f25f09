//! A session's record body: its resumable state with named fields, secrets
//! included (the whole body is sealed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use relay_core::session::limits::LegLimits;
use relay_core::session::spec::SrtpAuth;
use relay_core::session::state::{LegState, ReplayState, SessionState};
use relay_core::session::stats::{DropCounters, DropReason, LegStats};
use relay_core::wire::srtp_auth::{TagLen, AUTH_KEY_LEN};
use relay_core::{LegPorts, SessionId};
use serde::{Deserialize, Serialize};

use super::{v1, Codec, Ignored, Kind, Meta, RecordError, Version};

#[derive(Serialize, Deserialize)]
struct Stats {
    packets_received: u64,
    bytes_received: u64,
    rtcp_packets_received: u64,
    rtcp_bytes_received: u64,
    packets_forwarded: u64,
    bytes_forwarded: u64,
    latches: u64,
    relatches: u64,
    /// Drop counts by reason name (only the non-zero ones).
    drops: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct Replay {
    ssrc: u32,
    srtp_highest: Option<u64>,
    srtcp_highest: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct Srtp {
    /// Authentication keys, hex.
    rtp_key: String,
    rtcp_key: String,
    /// Tag lengths in bits (80 or 32).
    rtp_tag_bits: u8,
    rtcp_tag_bits: u8,
}

#[derive(Serialize, Deserialize)]
struct Leg {
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
    replay: Vec<Replay>,
    stats: Stats,
    srtp: Option<Srtp>,
    /// STUN short-term password, hex.
    stun_password: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    latch: String,
    verify: String,
    learning_window_ms: u64,
    learning_left_ms: u64,
    idle_timeout_ms: u64,
    max_duration_ms: u64,
    age_ms: u64,
    idle_ms: u64,
    quality_clock_rate: Option<u32>,
    pbx: Leg,
    endpoint: Leg,
}

/// A decoded session record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSession {
    /// The session, aged by the time since the write.
    pub state: SessionState,
    /// Which write it came from.
    pub version: Version,
    /// Names this reader did not know.
    pub ignored: Ignored,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn tag_bits(t: TagLen) -> u8 {
    match t {
        TagLen::Bits80 => 80,
        TagLen::Bits32 => 32,
    }
}

pub(super) fn tag_len(bits: u8) -> Result<TagLen, RecordError> {
    match bits {
        80 => Ok(TagLen::Bits80),
        32 => Ok(TagLen::Bits32),
        _ => Err(RecordError::Malformed("srtp tag length".into())),
    }
}

pub(super) fn auth_key(hex_key: &str) -> Result<[u8; AUTH_KEY_LEN], RecordError> {
    let bytes = hex::decode(hex_key).map_err(|_| RecordError::Malformed("srtp key".into()))?;
    bytes.try_into().map_err(|_| RecordError::Malformed("srtp key length".into()))
}

/// Drop counters from reason names; names this release does not know (a
/// newer writer's) are ignored and counted in `ignored`.
pub(super) fn drops_by_name<'a>(
    named: impl IntoIterator<Item = (&'a String, u64)>,
    ignored: &mut Ignored,
) -> DropCounters {
    let mut drops = DropCounters::default();
    for (name, n) in named {
        match DropReason::ALL.iter().copied().find(|r| r.as_str() == name) {
            Some(reason) => drops.add_n(reason, n),
            None => ignored.0 += 1,
        }
    }
    drops
}

fn encode_leg(l: &LegState) -> Leg {
    let s = &l.stats;
    Leg {
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
        replay: l
            .replay
            .iter()
            .map(|r| Replay { ssrc: r.ssrc, srtp_highest: r.srtp_highest, srtcp_highest: r.srtcp_highest })
            .collect(),
        stats: Stats {
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
        srtp: l.srtp_auth.as_ref().map(|a| Srtp {
            rtp_key: hex::encode(a.rtp_key),
            rtcp_key: hex::encode(a.rtcp_key),
            rtp_tag_bits: tag_bits(a.rtp_tag),
            rtcp_tag_bits: tag_bits(a.rtcp_tag),
        }),
        stun_password: l.stun_password.as_deref().map(hex::encode),
    }
}

fn decode_leg(l: Leg, side: &str, ignored: &mut Ignored) -> Result<LegState, RecordError> {
    let st = &l.stats;
    let srtp_auth = match &l.srtp {
        Some(k) => Some(SrtpAuth {
            rtp_key: auth_key(&k.rtp_key)?,
            rtcp_key: auth_key(&k.rtcp_key)?,
            rtp_tag: tag_len(k.rtp_tag_bits)?,
            rtcp_tag: tag_len(k.rtcp_tag_bits)?,
        }),
        None => None,
    };
    let stun_password = match &l.stun_password {
        Some(p) => Some(hex::decode(p).map_err(|_| RecordError::Malformed(format!("{side}.stun_password")))?),
        None => None,
    };
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
            .map(|r| ReplayState { ssrc: r.ssrc, srtp_highest: r.srtp_highest, srtcp_highest: r.srtcp_highest })
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
            drops: drops_by_name(st.drops.iter().map(|(k, n)| (k, *n)), ignored),
        },
    })
}

impl Codec {
    /// The sealed record of `state`, written as `version`.
    pub fn encode_session(&self, state: &SessionState, version: Version) -> String {
        let body = Body {
            latch: state.latch.as_str().to_string(),
            verify: state.verify.as_str().to_string(),
            learning_window_ms: ms(state.learning_window),
            learning_left_ms: ms(state.learning_left),
            idle_timeout_ms: ms(state.idle_timeout),
            max_duration_ms: ms(state.max_duration),
            age_ms: ms(state.age),
            idle_ms: ms(state.idle),
            quality_clock_rate: state.quality_clock_rate,
            pbx: encode_leg(&state.pbx),
            endpoint: encode_leg(&state.endpoint),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        self.seal(Kind::Session, &state.id.to_string(), &state.tenant, version, &json)
    }

    /// Opens the session record stored under `id`, read at `now_unix_ms`.
    pub fn decode_session(&self, record: &[u8], id: &str, now_unix_ms: u64) -> Result<DecodedSession, RecordError> {
        if Codec::is_v1(record) {
            if !self.accept_v1 {
                return Err(RecordError::Unauthenticated);
            }
            return v1::decode(record, &self.sealer, &self.group, id, now_unix_ms);
        }
        let (meta, body) = self.open(record, Kind::Session, Some(id))?;
        let Meta { id, tenant, version, written_unix_ms } = meta;
        let b: Body = serde_json::from_slice(&body).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let mut ignored = Ignored::default();
        let state = SessionState {
            id: id.parse::<SessionId>().map_err(|_| RecordError::Malformed("id".into()))?,
            tenant,
            latch: b.latch.parse().map_err(|_| RecordError::Malformed("latch".into()))?,
            verify: b.verify.parse().map_err(|_| RecordError::Malformed("verify".into()))?,
            learning_window: Duration::from_millis(b.learning_window_ms),
            learning_left: Duration::from_millis(b.learning_left_ms),
            idle_timeout: Duration::from_millis(b.idle_timeout_ms),
            max_duration: Duration::from_millis(b.max_duration_ms),
            age: Duration::from_millis(b.age_ms),
            idle: Duration::from_millis(b.idle_ms),
            quality_clock_rate: b.quality_clock_rate,
            pbx: decode_leg(b.pbx, "pbx", &mut ignored)?,
            endpoint: decode_leg(b.endpoint, "endpoint", &mut ignored)?,
        };
        let elapsed = Duration::from_millis(now_unix_ms.saturating_sub(written_unix_ms));
        Ok(DecodedSession { state: state.aged(elapsed), version, ignored })
    }
}
