//! A call's resumable state, for replication (`relay-cluster`): what a
//! standby's ng engine needs to answer `query`, `answer`, `delete` and
//! `block media` for calls the active created. Sessions travel separately
//! ([`crate::session::state`]); a call names its sessions by id.
//!
//! With [`NgConfig::journal`](super::NgConfig::journal) on, the engine
//! remembers which calls commands touched since the last
//! [`NgEngine::call_changes`](super::NgEngine::call_changes).

use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine as _;

use super::{Call, Media, MuxNegotiation};
use crate::relay::{AllocatedSession, LegAddresses};
use crate::session::SessionId;

/// One media section's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaState {
    /// The session carrying it (16 hex digits).
    pub session: String,
    /// Its SDP media section (0-based; a disabled section has no entry).
    pub section: usize,
    /// The PBX leg's relay RTP and RTCP addresses.
    pub pbx: (SocketAddr, Option<SocketAddr>),
    /// The endpoint leg's relay RTP and RTCP addresses.
    pub endpoint: (SocketAddr, Option<SocketAddr>),
    /// `m=` media type.
    pub kind: String,
    /// `m=` protocol.
    pub proto: String,
    /// Whether each leg's remote multiplexes RTCP.
    pub remote_mux: [bool; 2],
    /// rtcp-mux negotiation: offered by the sender, offered on, required,
    /// forced answer.
    pub mux: (bool, bool, bool, Option<bool>),
    /// Whether each leg has a key that proves its source.
    pub keyed: [bool; 2],
    /// Whether each leg's media is blocked.
    pub blocked: [bool; 2],
}

/// One call's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallState {
    /// The call-id, base64 (call-ids are bytes).
    pub call_id: String,
    /// The offerer's tag.
    pub from_tag: String,
    /// The answerer's tag, once answered.
    pub to_tag: Option<String>,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Media sections.
    pub media: Vec<MediaState>,
    /// Labels by tag.
    pub labels: Vec<(String, String)>,
}

/// What changed in the call table since the last pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallChanges {
    /// Calls that changed, as they are now.
    pub changed: Vec<CallState>,
    /// Call-ids (base64) of calls that ended.
    pub ended: Vec<String>,
}

/// A call-id as it is stored.
pub fn encode_call_id(call_id: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(call_id)
}

/// A stored call-id back to bytes.
pub fn decode_call_id(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

impl Call {
    pub(super) fn export(&self, call_id: &[u8]) -> CallState {
        CallState {
            call_id: encode_call_id(call_id),
            from_tag: self.from_tag.clone(),
            to_tag: self.to_tag.clone(),
            created: self.created,
            media: self
                .media
                .iter()
                .map(|m| MediaState {
                    session: m.id.to_string(),
                    section: m.section,
                    pbx: (m.alloc.pbx.rtp, m.alloc.pbx.rtcp),
                    endpoint: (m.alloc.endpoint.rtp, m.alloc.endpoint.rtcp),
                    kind: m.kind.clone(),
                    proto: m.proto.clone(),
                    remote_mux: m.remote_mux,
                    mux: (m.mux.offered_by_sender, m.mux.offered_on, m.mux.require, m.mux.forced),
                    keyed: m.keyed,
                    blocked: m.blocked,
                })
                .collect(),
            labels: self.labels.clone(),
        }
    }

    /// A call from its state; `None` if a session id does not parse.
    pub(super) fn restore(s: &CallState, now: Instant) -> Option<Call> {
        let mut media = Vec::with_capacity(s.media.len());
        for m in &s.media {
            let id: SessionId = m.session.parse().ok()?;
            media.push(Media {
                id,
                section: m.section,
                alloc: AllocatedSession {
                    id,
                    pbx: LegAddresses { rtp: m.pbx.0, rtcp: m.pbx.1 },
                    endpoint: LegAddresses { rtp: m.endpoint.0, rtcp: m.endpoint.1 },
                },
                kind: m.kind.clone(),
                proto: m.proto.clone(),
                remote_mux: m.remote_mux,
                mux: MuxNegotiation {
                    offered_by_sender: m.mux.0,
                    offered_on: m.mux.1,
                    require: m.mux.2,
                    forced: m.mux.3,
                },
                keyed: m.keyed,
                blocked: m.blocked,
            });
        }
        Some(Call {
            from_tag: s.from_tag.clone(),
            to_tag: s.to_tag.clone(),
            created: s.created,
            media,
            labels: s.labels.clone(),
            seen_alive: now,
        })
    }
}
