//! An ng call's record body: named fields, versioned with the envelope
//! (not the engine's in-memory type, which may change freely).

use std::net::SocketAddr;

use relay_core::ng::{CallState, MediaState};
use serde::{Deserialize, Serialize};

use super::{Codec, Kind, RecordError, Version, MAX_RECORD_BYTES};

/// A leg's relay addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Addrs {
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
}

/// A pair of flags, one per leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PerLeg {
    pbx: bool,
    endpoint: bool,
}

impl From<[bool; 2]> for PerLeg {
    fn from([pbx, endpoint]: [bool; 2]) -> Self {
        Self { pbx, endpoint }
    }
}

impl From<PerLeg> for [bool; 2] {
    fn from(p: PerLeg) -> Self {
        [p.pbx, p.endpoint]
    }
}

/// rtcp-mux negotiation of one media section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Mux {
    offered_by_sender: bool,
    offered_on: bool,
    require: bool,
    forced: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Media {
    session: String,
    /// The SDP media section; absent in records written before it was
    /// kept, whose sections are their positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    section: Option<usize>,
    pbx: Addrs,
    endpoint: Addrs,
    kind: String,
    proto: String,
    remote_mux: PerLeg,
    mux: Mux,
    keyed: PerLeg,
    blocked: PerLeg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Label {
    tag: String,
    label: String,
}

/// The stored form of an ng call (the record body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCall {
    from_tag: String,
    to_tag: Option<String>,
    created_unix_secs: u64,
    media: Vec<Media>,
    labels: Vec<Label>,
}

impl StoredCall {
    fn from_state(c: &CallState) -> Self {
        Self {
            from_tag: c.from_tag.clone(),
            to_tag: c.to_tag.clone(),
            created_unix_secs: c.created,
            media: c
                .media
                .iter()
                .map(|m| Media {
                    session: m.session.clone(),
                    section: Some(m.section),
                    pbx: Addrs { rtp: m.pbx.0, rtcp: m.pbx.1 },
                    endpoint: Addrs { rtp: m.endpoint.0, rtcp: m.endpoint.1 },
                    kind: m.kind.clone(),
                    proto: m.proto.clone(),
                    remote_mux: m.remote_mux.into(),
                    mux: Mux { offered_by_sender: m.mux.0, offered_on: m.mux.1, require: m.mux.2, forced: m.mux.3 },
                    keyed: m.keyed.into(),
                    blocked: m.blocked.into(),
                })
                .collect(),
            labels: c.labels.iter().map(|(tag, label)| Label { tag: tag.clone(), label: label.clone() }).collect(),
        }
    }

    fn into_state(self, call_id: String) -> CallState {
        CallState {
            call_id,
            from_tag: self.from_tag,
            to_tag: self.to_tag,
            created: self.created_unix_secs,
            media: self
                .media
                .into_iter()
                .enumerate()
                .map(|(k, m)| MediaState {
                    session: m.session,
                    section: m.section.unwrap_or(k),
                    pbx: (m.pbx.rtp, m.pbx.rtcp),
                    endpoint: (m.endpoint.rtp, m.endpoint.rtcp),
                    kind: m.kind,
                    proto: m.proto,
                    remote_mux: m.remote_mux.into(),
                    mux: (m.mux.offered_by_sender, m.mux.offered_on, m.mux.require, m.mux.forced),
                    keyed: m.keyed.into(),
                    blocked: m.blocked.into(),
                })
                .collect(),
            labels: self.labels.into_iter().map(|l| (l.tag, l.label)).collect(),
        }
    }
}

/// A decoded call record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCall {
    /// The call.
    pub state: CallState,
    /// The tenant its sessions must belong to.
    pub tenant: String,
    /// Which write it came from.
    pub version: Version,
}

/// Format 1's call record: the engine's type as it was serialized then
/// (positional tuples).
#[derive(Deserialize)]
struct V1Call {
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    created: u64,
    media: Vec<V1Media>,
    labels: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct V1Media {
    session: String,
    pbx: (SocketAddr, Option<SocketAddr>),
    endpoint: (SocketAddr, Option<SocketAddr>),
    kind: String,
    proto: String,
    remote_mux: [bool; 2],
    mux: (bool, bool, bool, Option<bool>),
    keyed: [bool; 2],
    blocked: [bool; 2],
}

impl Codec {
    /// The sealed record of call `call`, whose sessions belong to `tenant`,
    /// written as `version`.
    pub fn encode_call(&self, call: &CallState, tenant: &str, version: Version) -> String {
        let body = serde_json::to_vec(&StoredCall::from_state(call)).unwrap_or_default();
        self.seal(Kind::Call, &call.call_id, tenant, version, &body)
    }

    /// Opens the call record stored under `call_id` (base64).
    pub fn decode_call(&self, record: &[u8], call_id: &str) -> Result<DecodedCall, RecordError> {
        let (meta, body) = match self.open(record, Kind::Call, Some(call_id)) {
            Err(RecordError::Malformed(_)) if Codec::is_v1_call(record) => return self.decode_v1_call(record, call_id),
            opened => opened?,
        };
        let stored: StoredCall = serde_json::from_slice(&body).map_err(|e| RecordError::Malformed(e.to_string()))?;
        Ok(DecodedCall { state: stored.into_state(meta.id), tenant: meta.tenant, version: meta.version })
    }

    /// Whether `record` is a format 1 call (the engine's plain JSON: no
    /// envelope, a `call_id` field). Asked only of a record no envelope
    /// could be read from.
    fn is_v1_call(record: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Head {
            #[allow(dead_code)]
            call_id: String,
        }
        serde_json::from_slice::<Head>(record).is_ok()
    }

    fn decode_v1_call(&self, record: &[u8], call_id: &str) -> Result<DecodedCall, RecordError> {
        if !self.accept_v1 {
            return Err(RecordError::Unauthenticated);
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge);
        }
        let c: V1Call = serde_json::from_slice(record).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if c.call_id != call_id {
            return Err(RecordError::Misplaced("id"));
        }
        let state = CallState {
            call_id: c.call_id,
            from_tag: c.from_tag,
            to_tag: c.to_tag,
            created: c.created,
            media: c
                .media
                .into_iter()
                .enumerate()
                .map(|(k, m)| MediaState {
                    session: m.session,
                    section: k,
                    pbx: m.pbx,
                    endpoint: m.endpoint,
                    kind: m.kind,
                    proto: m.proto,
                    remote_mux: m.remote_mux,
                    mux: m.mux,
                    keyed: m.keyed,
                    blocked: m.blocked,
                })
                .collect(),
            labels: c.labels,
        };
        // Format 1 did not record a tenant: the engine's own is checked
        // against each session when the call is restored.
        Ok(DecodedCall { state, tenant: String::new(), version: Version::default() })
    }
}
