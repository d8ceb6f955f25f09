//! Control-channel message bodies: one JSON object per frame. Receivers
//! ignore fields they do not know (newer peers may add some); a required
//! field missing or of the wrong type is a protocol error (`bad_message`).

use serde::{Deserialize, Serialize};

use super::frame::{Frame, FrameType};

/// `hello` (connector → relay): the first frame on a channel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the connector speaks (1).
    pub version: u32,
    /// Tenant id.
    pub tenant: String,
    /// The tenant's secret token (the relay stores only its hash).
    pub token: String,
    /// A stable id of this connector instance (for the second-connector policy).
    pub connector_id: String,
    /// Services the connector exposes (names from the relay's tunnel config).
    #[serde(default)]
    pub services: Vec<String>,
    /// Only ask for the relay's load: after authenticating, the relay
    /// answers `hello_result` with `load` and closes; nothing is registered
    /// (a connector given several relays picks the least loaded one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("tenant", &self.tenant)
            .field("token", &"<masked>")
            .field("connector_id", &self.connector_id)
            .field("services", &self.services)
            .field("probe", &self.probe)
            .finish()
    }
}

/// `hello_result` (relay → connector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    /// Whether the connector is authenticated.
    pub ok: bool,
    /// Error code when not ok (`bad_credentials`, `locked_out`, `replaced`, `duplicate`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Heartbeat interval the relay expects, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u32>,
    /// The relay's load, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<RelayLoad>,
}

/// A relay's load as `hello_result` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RelayLoad {
    /// Sessions it serves.
    pub sessions: u64,
    /// Relay ports in use.
    pub ports_in_use: u64,
    /// Relay ports it has.
    pub ports_total: u64,
}

impl RelayLoad {
    /// Ports in use per thousand (1000 when it has no ports).
    pub fn permille(&self) -> u64 {
        self.ports_in_use.saturating_mul(1000).checked_div(self.ports_total).unwrap_or(1000)
    }
}

/// `heartbeat` and `heartbeat_ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sequence number (the ack echoes it).
    pub seq: u64,
}

pub use crate::api::LegAddressReply;

/// `allocate` (connector → relay). `session` has the admin API's
/// `POST /v1/sessions` body shape (tenant implied by the channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocate {
    /// Echoed in the reply.
    pub request_id: u64,
    /// Session request.
    pub session: serde_json::Value,
}

/// `allocated`, `updated`, `released` (relay → connector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub request_id: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Session id (allocate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// PBX-leg addresses (allocate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pbx: Option<LegAddressReply>,
    /// Endpoint-leg addresses (allocate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<LegAddressReply>,
    /// Error code when not ok (same codes as the admin API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `update` (connector → relay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Echoed in the reply.
    pub request_id: u64,
    /// Session id.
    pub id: String,
    /// Changes (hints, keys, limits, latch, verify).
    pub update: serde_json::Value,
}

/// `release` (connector → relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Echoed in the reply.
    pub request_id: u64,
    /// Session id.
    pub id: String,
}

/// `open_stream` (relay → connector): dial the relay's data listener (the
/// control channel's host, port `data_port`), present `ticket` (single use,
/// short-lived) in an `attach` frame, connect `service` and pump bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenStream {
    /// Single-use ticket.
    pub ticket: String,
    /// Service name.
    pub service: String,
    /// The endpoint's address (for PROXY protocol v2 towards the PBX).
    pub client_addr: String,
    /// The relay address the endpoint connected to (PROXY v2 destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<String>,
    /// Port of the relay's data listener.
    #[serde(default)]
    pub data_port: u16,
    /// A *standby* stream: attach now and wait on the data connection for a
    /// `bind` frame naming the service (saves a dial when an endpoint comes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

impl std::fmt::Debug for OpenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStream")
            .field("ticket", &"<masked>")
            .field("service", &self.service)
            .field("client_addr", &self.client_addr)
            .field("relay_addr", &self.relay_addr)
            .field("data_port", &self.data_port)
            .field("standby", &self.standby)
            .finish()
    }
}

/// `attach` (connector → relay, on a data connection): the ticket.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// The `open_stream` ticket.
    pub ticket: String,
}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attach { ticket: <masked> }")
    }
}

/// `error` (either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Stable code (`bad_magic`, `unsupported_version`, `unknown_frame_type`,
    /// `frame_too_large`, `bad_message`, `not_authenticated`, `timeout`, ...).
    pub code: String,
    /// Human message.
    pub message: String,
    /// The request it answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
}

/// `bind` (relay → connector, on a standby data connection): the service
/// and endpoint of the tunnel whose bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Service name.
    pub service: String,
    /// The endpoint's address (for PROXY protocol v2 towards the PBX).
    pub client_addr: String,
    /// The relay address the endpoint connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<String>,
}

/// `turn_credentials` (connector → relay): short-lived TURN credentials
/// (the REST scheme's `expiry:user` and its password) for one of the PBX's
/// clients, in the channel tenant's realm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    /// Echoed in the reply.
    pub request_id: u64,
    /// Who the credentials are for (an extension, a device id): 1–64 of
    /// `A–Z a–z 0–9 . _ @ + -`; it shows in the relay's allocation listing.
    pub user: String,
    /// How long they stay valid; the relay's default when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
}

/// `turn_credentials_issued` (relay → connector).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentialsIssued {
    /// The request's id.
    pub request_id: u64,
    /// Whether credentials were issued.
    pub ok: bool,
    /// TURN username (`expiry:user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (a secret: hand it to the client only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The realm the relay will challenge with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Seconds until the username expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// The relay's TURN URIs (RFC 7065), ready for a WebRTC `iceServers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    /// Error code when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl std::fmt::Debug for TurnCredentialsIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredentialsIssued")
            .field("request_id", &self.request_id)
            .field("ok", &self.ok)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<masked>"))
            .field("realm", &self.realm)
            .field("ttl_secs", &self.ttl_secs)
            .field("uris", &self.uris)
            .field("code", &self.code)
            .field("message", &self.message)
            .finish()
    }
}

/// A decoded message of any type.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `hello`
    Hello(Hello),
    /// `hello_result`
    HelloResult(HelloResult),
    /// `heartbeat`
    Heartbeat(Heartbeat),
    /// `heartbeat_ack`
    HeartbeatAck(Heartbeat),
    /// `allocate`
    Allocate(Allocate),
    /// `allocated`
    Allocated(Reply),
    /// `update`
    Update(Update),
    /// `updated`
    Updated(Reply),
    /// `release`
    Release(Release),
    /// `released`
    Released(Reply),
    /// `open_stream`
    OpenStream(OpenStream),
    /// `error`
    Error(ErrorMessage),
    /// `attach`
    Attach(Attach),
    /// `bind`
    Bind(Bind),
    /// `turn_credentials`
    TurnCredentials(TurnCredentials),
    /// `turn_credentials_issued`
    TurnCredentialsIssued(TurnCredentialsIssued),
}

/// A payload that is not the message its frame type announces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {frame} message: {reason}")]
pub struct BadMessage {
    /// Frame type name.
    pub frame: &'static str,
    /// What serde said (never echoes values).
    pub reason: String,
}

fn parse<T: serde::de::DeserializeOwned>(f: &Frame) -> Result<T, BadMessage> {
    serde_json::from_slice(&f.payload).map_err(|e| BadMessage {
        frame: f.kind.as_str(),
        reason: format!("{:?} at column {}", e.classify(), e.column()),
    })
}

impl Message {
    /// Decodes a frame's payload according to its type.
    pub fn decode(f: &Frame) -> Result<Message, BadMessage> {
        Ok(match f.kind {
            FrameType::Hello => Message::Hello(parse(f)?),
            FrameType::HelloResult => Message::HelloResult(parse(f)?),
            FrameType::Heartbeat => Message::Heartbeat(parse(f)?),
            FrameType::HeartbeatAck => Message::HeartbeatAck(parse(f)?),
            FrameType::Allocate => Message::Allocate(parse(f)?),
            FrameType::Allocated => Message::Allocated(parse(f)?),
            FrameType::Update => Message::Update(parse(f)?),
            FrameType::Updated => Message::Updated(parse(f)?),
            FrameType::Release => Message::Release(parse(f)?),
            FrameType::Released => Message::Released(parse(f)?),
            FrameType::OpenStream => Message::OpenStream(parse(f)?),
            FrameType::Error => Message::Error(parse(f)?),
            FrameType::Attach => Message::Attach(parse(f)?),
            FrameType::Bind => Message::Bind(parse(f)?),
            FrameType::TurnCredentials => Message::TurnCredentials(parse(f)?),
            FrameType::TurnCredentialsIssued => Message::TurnCredentialsIssued(parse(f)?),
        })
    }

    /// Encodes the message as a frame.
    pub fn encode(&self) -> Frame {
        fn json<T: Serialize>(kind: FrameType, v: &T) -> Frame {
            // Serializing these plain structs cannot fail.
            Frame::new(kind, serde_json::to_vec(v).unwrap_or_default())
        }
        match self {
            Message::Hello(m) => json(FrameType::Hello, m),
            Message::HelloResult(m) => json(FrameType::HelloResult, m),
            Message::Heartbeat(m) => json(FrameType::Heartbeat, m),
            Message::HeartbeatAck(m) => json(FrameType::HeartbeatAck, m),
            Message::Allocate(m) => json(FrameType::Allocate, m),
            Message::Allocated(m) => json(FrameType::Allocated, m),
            Message::Update(m) => json(FrameType::Update, m),
            Message::Updated(m) => json(FrameType::Updated, m),
            Message::Release(m) => json(FrameType::Release, m),
            Message::Released(m) => json(FrameType::Released, m),
            Message::OpenStream(m) => json(FrameType::OpenStream, m),
            Message::Error(m) => json(FrameType::Error, m),
            Message::Attach(m) => json(FrameType::Attach, m),
            Message::Bind(m) => json(FrameType::Bind, m),
            Message::TurnCredentials(m) => json(FrameType::TurnCredentials, m),
            Message::TurnCredentialsIssued(m) => json(FrameType::TurnCredentialsIssued, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_payloads_are_refused() {
        let msgs = [
            Message::Hello(Hello {
                version: 1,
                tenant: "acme".into(),
                token: "s3cret".into(),
                connector_id: "pbx-1".into(),
                services: vec!["sip-tls".into()],
                probe: false,
            }),
            Message::HelloResult(HelloResult {
                ok: true,
                code: None,
                message: None,
                heartbeat_secs: Some(10),
                load: Some(RelayLoad { sessions: 2, ports_in_use: 4, ports_total: 100 }),
            }),
            Message::Heartbeat(Heartbeat { seq: 7 }),
            Message::Release(Release { request_id: 3, id: "0100000000000001".into() }),
            Message::Error(ErrorMessage { code: "bad_message".into(), message: "x".into(), request_id: None }),
            Message::TurnCredentials(TurnCredentials { request_id: 4, user: "ext-201".into(), lifetime_secs: None }),
            Message::TurnCredentialsIssued(TurnCredentialsIssued {
                request_id: 4,
                ok: true,
                username: Some("1765000000:ext-201".into()),
                password: Some("pw-secret".into()),
                realm: Some("turn.acme".into()),
                ttl_secs: Some(3600),
                uris: vec!["turn:198.51.100.7:3478?transport=udp".into()],
                code: None,
                message: None,
            }),
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()), Ok(m.clone()));
        }
        let bad = Frame::new(FrameType::Heartbeat, br#"{"seq":"one"}"#.to_vec());
        assert!(Message::decode(&bad).is_err());
        let bad = Frame::new(FrameType::Hello, b"not json".to_vec());
        let e = Message::decode(&bad).expect_err("refused");
        assert!(!format!("{e}").contains("not json"));
        // Unknown fields are ignored (forward compatibility).
        let newer = Frame::new(FrameType::Heartbeat, br#"{"seq":1,"extra":true}"#.to_vec());
        assert_eq!(Message::decode(&newer), Ok(Message::Heartbeat(Heartbeat { seq: 1 })));
        assert!(!format!(
            "{:?}",
            Hello {
                version: 1,
                tenant: "t".into(),
                token: "s3cret".into(),
                connector_id: "c".into(),
                services: vec![],
                probe: false,
            }
        )
        .contains("s3cret"));
        let issued = TurnCredentialsIssued {
            request_id: 1,
            ok: true,
            username: None,
            password: Some("pw-secret".into()),
            realm: None,
            ttl_secs: None,
            uris: vec![],
            code: None,
            message: None,
        };
        assert!(!format!("{issued:?}").contains("pw-secret"));
    }
}
