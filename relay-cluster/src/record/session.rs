//! A session's record body: its resumable state with named fields, secrets
//! included (the whole body is sealed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use relay_core::session::DropCounters;
use relay_core::session::{LegState, ReplayState, SessionState};
use relay_core::wire::srtp_auth::{TagLen, AUTH_KEY_LEN};
use relay_core::LegLimits;
use relay_core::SrtpAuth;
use relay_core::{DropReason, LegStats};
use relay_core::{LegPorts, SessionId};
use serde::{Deserialize, Serialize};

use super::{v1, Codec, Ignored, Kind, Meta, RecordError, Version};

/// A leg's counters as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct Stats {
    pub(super) packets_received: u64,
    pub(super) bytes_received: u64,
    pub(super) rtcp_packets_received: u64,
    pub(super) rtcp_bytes_received: u64,
    pub(super) packets_forwarded: u64,
    pub(super) bytes_forwarded: u64,
    pub(super) latches: u64,
    pub(super) relatches: u64,
    /// Drop counts by reason name (only the non-zero ones).
    pub(super) drops: BTreeMap<String, u64>,
}

/// Replay memory of one SSRC as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct Replay {
    pub(super) ssrc: u32,
    pub(super) srtp_highest: Option<u64>,
    pub(super) srtcp_highest: Option<u32>,
}

/// A leg's SRTP authentication keys as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct Srtp {
    /// Authentication keys, hex.
    pub(super) rtp_key: String,
    pub(super) rtcp_key: String,
    /// Tag lengths in bits (80 or 32).
    pub(super) rtp_tag_bits: u8,
    pub(super) rtcp_tag_bits: u8,
}

/// One leg as stored (format 1 legs are translated to it).
#[derive(Serialize, Deserialize)]
pub(super) struct Leg {
    pub(super) addr: u16,
    pub(super) rtp: u16,
    pub(super) rtcp: Option<u16>,
    pub(super) hint: Option<SocketAddr>,
    pub(super) remote_rtp: Option<SocketAddr>,
    pub(super) remote_rtcp: Option<SocketAddr>,
    pub(super) max_pps: Option<u32>,
    pub(super) max_bytes_per_sec: Option<u64>,
    pub(super) await_hint: bool,
    pub(super) remote_mux: bool,
    pub(super) rtcp_hint_port: Option<u16>,
    pub(super) blocked: bool,
    pub(super) last_ssrc: Option<u32>,
    pub(super) replay: Vec<Replay>,
    pub(super) stats: Stats,
    pub(super) srtp: Option<Srtp>,
    /// STUN short-term password, hex.
    pub(super) stun_password: Option<String>,
}

/// The sealed body of a session record (format 1 records are translated
/// to it, then decoded the same way).
#[derive(Serialize, Deserialize)]
pub(super) struct Body {
    pub(super) latch: String,
    pub(super) verify: String,
    pub(super) learning_window_ms: u64,
    pub(super) learning_left_ms: u64,
    pub(super) idle_timeout_ms: u64,
    pub(super) max_duration_ms: u64,
    pub(super) age_ms: u64,
    pub(super) idle_ms: u64,
    pub(super) quality_clock_rate: Option<u32>,
    pub(super) pbx: Leg,
    pub(super) endpoint: Leg,
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

fn tag_bits(t: TagLen) -> u8 {
    match t {
        TagLen::Bits80 => 80,
        TagLen::Bits32 => 32,
    }
}

fn tag_len(bits: u8) -> Result<TagLen, RecordError> {
    match bits {
        80 => Ok(TagLen::Bits80),
        32 => Ok(TagLen::Bits32),
        _ => Err(RecordError::Malformed("srtp tag length".into())),
    }
}

fn auth_key(hex_key: &str) -> Result<[u8; AUTH_KEY_LEN], RecordError> {
    let bytes = hex::decode(hex_key).map_err(|_| RecordError::Malformed("srtp key".into()))?;
    bytes.try_into().map_err(|_| RecordError::Malformed("srtp key length".into()))
}

/// Drop counters from reason names; names this release does not know (a
/// newer writer's) are ignored and counted in `ignored`.
fn drops_by_name<'a>(named: impl IntoIterator<Item = (&'a String, u64)>, ignored: &mut Ignored) -> DropCounters {
    let mut drops = DropCounters::default();
    for (name, n) in named {
        match name.parse::<DropReason>().ok() {
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
        let (meta, b) = match self.open(record, Kind::Session, Some(id)) {
            Ok((meta, body)) => {
                (meta, serde_json::from_slice::<Body>(&body).map_err(|e| RecordError::Malformed(e.to_string()))?)
            }
            Err(RecordError::Malformed(_)) if Codec::is_v1(record) => {
                if !self.accept_v1 {
                    return Err(RecordError::Unauthenticated);
                }
                v1::translate(record, &self.sealer, &self.group, id)?
            }
            Err(e) => return Err(e),
        };
        let Meta { id, tenant, version, written_unix_ms } = meta;
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
