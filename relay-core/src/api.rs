//! JSON request shapes shared by every control surface: the admin HTTP API
//! (`POST /v1/sessions`, `PATCH /v1/sessions/{id}`) and the connector's
//! control channel (`allocate`, `update`). One parser, one set of error
//! codes, so a session request means the same thing wherever it arrives.
//!
//! Parsing never echoes secret values in errors, and `Debug` masks keys.
#![forbid(unsafe_code)]

#[cfg(feature = "engine")]
use std::net::IpAddr;
use std::net::SocketAddr;
#[cfg(feature = "engine")]
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;

use crate::srtp_keys::{derive_auth_keys, SrtpMasterKey};
#[cfg(feature = "engine")]
use crate::wire::srtp_auth::TagLen;
#[cfg(feature = "engine")]
use crate::{AllocatedSession, LegLimits, LegSpec, LegUpdate, SessionSpec, SessionUpdate, SrtpAuth};

/// A request that names a field it cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// Stable code (`invalid_field`, `invalid_id`, `forbidden_tenant`, ...).
    pub code: ErrorCode,
    /// Human message naming the field (never its secret value).
    pub message: String,
}

impl FieldError {
    fn invalid(message: String) -> Self {
        Self { code: ErrorCode::InvalidField, message }
    }
}

/// An optional field of a request takes a value or is left out; `null` is
/// refused like any other wrong type (the OpenAPI document allows no
/// `null`: what the document refuses, the parser refuses).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Deserializes `T` from a JSON object only: serde's derive also takes an
/// array of the fields in their order, which the document never allows.
pub fn object<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct OnlyMaps<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OnlyMaps<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(OnlyMaps(std::marker::PhantomData))
}

/// [`object`] for an optional field ([`present`]: `null` refused).
fn present_object<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    object(d).map(Some)
}

/// A request body that must be a JSON object (see [`object`]), for the
/// top level of the admin API's bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Object)
    }
}

/// SRTP authentication keys of one leg, hex (never the master key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrtpAuthKeys {
    /// SRTP authentication key, 40 hex digits.
    pub rtp_key: String,
    /// SRTCP authentication key, 40 hex digits.
    pub rtcp_key: String,
    /// SRTP tag length: 80 (default) or 32.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub tag_bits: Option<u16>,
}

impl std::fmt::Debug for SrtpAuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpAuthKeys").field("keys", &"<masked>").field("tag_bits", &self.tag_bits).finish()
    }
}

impl SrtpAuthKeys {
    /// The authentication keys for SRTP sent with this SDES master key and
    /// salt (`AES_CM_128_HMAC_SHA1_80`, or `_32` with `tag_bits = 32`). Only
    /// the derived authentication keys leave this function: the relay can
    /// check packets but never decrypt them.
    pub fn from_master(key: &[u8], salt: &[u8], tag_bits: u16) -> Result<Self, FieldError> {
        let master = SrtpMasterKey::new(key, salt).map_err(|e| FieldError::invalid(format!("srtp master key: {e}")))?;
        if tag_bits != 80 && tag_bits != 32 {
            return Err(FieldError::invalid(format!("tag_bits: {tag_bits} is not 80 or 32")));
        }
        let keys = derive_auth_keys(&master);
        Ok(Self {
            rtp_key: crate::wire::hex_lower(&keys.srtp),
            rtcp_key: crate::wire::hex_lower(&keys.srtcp),
            tag_bits: Some(tag_bits),
        })
    }

    #[cfg(feature = "engine")]
    fn to_spec(&self, side: &str) -> Result<SrtpAuth, FieldError> {
        let rtp_tag = match self.tag_bits.unwrap_or(80) {
            80 => TagLen::Bits80,
            32 => TagLen::Bits32,
            other => return Err(FieldError::invalid(format!("{side}.srtp_auth.tag_bits: {other} is not 80 or 32"))),
        };
        Ok(SrtpAuth {
            rtp_key: key20(&self.rtp_key, side, "rtp_key")?,
            rtcp_key: key20(&self.rtcp_key, side, "rtcp_key")?,
            rtp_tag,
            rtcp_tag: TagLen::Bits80,
        })
    }
}

#[cfg(feature = "engine")]
fn key20(hex_key: &str, side: &str, field: &str) -> Result<[u8; 20], FieldError> {
    let s = hex_key.trim().as_bytes();
    let mut out = [0u8; 20];
    let ok = s.len() == 40
        && s.chunks(2).zip(out.iter_mut()).all(|(pair, o)| {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => {
                    *o = (h * 16 + l) as u8;
                    true
                }
                _ => false,
            }
        });
    if ok {
        Ok(out)
    } else {
        Err(FieldError::invalid(format!("{side}.srtp_auth.{field}: expected 40 hex digits (a 20-byte HMAC-SHA1 key)")))
    }
}

#[cfg(feature = "engine")]
fn parse_hint(h: &str, side: &str) -> Result<SocketAddr, FieldError> {
    h.parse::<SocketAddr>()
        .or_else(|_| h.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| FieldError::invalid(format!("{side}.hint: {h:?} is not an IP or IP:port")))
}

#[cfg(feature = "engine")]
fn limits(max_pps: Option<u32>, max_bytes_per_sec: Option<u64>) -> Option<LegLimits> {
    (max_pps.is_some() || max_bytes_per_sec.is_some()).then_some(LegLimits { max_pps, max_bytes_per_sec })
}

/// One leg of a [`SessionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegRequest {
    /// One port for RTP and RTCP (default true).
    pub rtcp_mux: bool,
    /// Where the remote says it is: `IP:port` or `IP`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// SRTP authentication keys of what this leg's remote sends.
    #[serde(default, deserialize_with = "present_object", skip_serializing_if = "Option::is_none")]
    pub srtp_auth: Option<SrtpAuthKeys>,
    /// ICE password that verifies STUN from this leg's remote.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub stun_password: Option<String>,
    /// Packet-rate limit.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_pps: Option<u32>,
    /// Byte-rate limit.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// Latch nothing until a hint arrives (by an update): the remote's
    /// address is not known from signalling yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub await_hint: bool,
}

impl Default for LegRequest {
    fn default() -> Self {
        Self {
            rtcp_mux: true,
            hint: None,
            srtp_auth: None,
            stun_password: None,
            max_pps: None,
            max_bytes_per_sec: None,
            await_hint: false,
        }
    }
}

#[cfg(feature = "engine")]
/// The leg fields a create and an update share, validated (`side` names
/// them in errors).
fn leg_fields(
    side: &str,
    hint: Option<&str>,
    srtp_auth: Option<&SrtpAuthKeys>,
    stun_password: Option<&String>,
    max_pps: Option<u32>,
    max_bytes_per_sec: Option<u64>,
) -> Result<LegUpdate, FieldError> {
    Ok(LegUpdate {
        hint: hint.map(|h| parse_hint(h, side)).transpose()?,
        srtp_auth: srtp_auth.map(|a| a.to_spec(side)).transpose()?,
        stun_password: stun_password.cloned().map(String::into_bytes),
        limits: limits(max_pps, max_bytes_per_sec),
        ..LegUpdate::default()
    })
}

#[cfg(feature = "engine")]
impl LegRequest {
    fn to_spec(&self, side: &str) -> Result<LegSpec, FieldError> {
        let f = leg_fields(
            side,
            self.hint.as_deref(),
            self.srtp_auth.as_ref(),
            self.stun_password.as_ref(),
            self.max_pps,
            self.max_bytes_per_sec,
        )?;
        Ok(LegSpec {
            rtcp_mux: self.rtcp_mux,
            hint: f.hint,
            srtp_auth: f.srtp_auth,
            stun_password: f.stun_password,
            limits: f.limits,
            await_hint: self.await_hint,
            ..LegSpec::default()
        })
    }
}

/// A media session to allocate (`POST /v1/sessions`, control `allocate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// Tenant. Required on the admin API; on a control channel the channel's
    /// tenant is implied and any other value is refused.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The PBX leg.
    #[serde(default, deserialize_with = "object")]
    pub pbx: LegRequest,
    /// The endpoint leg.
    #[serde(default, deserialize_with = "object")]
    pub endpoint: LegRequest,
    /// `window`, `authenticated` or `open`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub latch: Option<String>,
    /// `latch` or `all`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// Learning window, milliseconds.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub learning_window_ms: Option<u64>,
    /// Idle timeout, seconds.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Maximum duration, seconds.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// Collect RTP quality figures.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub quality: Option<bool>,
    /// RTP clock rate (Hz) for jitter.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub clock_rate: Option<u32>,
}

/// A named setting of a request (`latch`, `verify`), parsed by the core's
/// one parser.
#[cfg(feature = "engine")]
fn parse_named<T>(field: &str, v: Option<&str>) -> Result<Option<T>, FieldError>
where
    T: std::str::FromStr<Err = crate::names::UnknownName>,
{
    v.map(|v| v.parse().map_err(|e| FieldError::invalid(format!("{field}: {e}")))).transpose()
}

impl SessionRequest {
    /// Authenticated latching on both legs in one call: each leg gets the
    /// authentication keys of the SRTP its remote sends, and `latch` becomes
    /// `authenticated` (a source must prove it holds the key before it can
    /// take over a leg).
    pub fn with_srtp_auth(mut self, pbx_sends: SrtpAuthKeys, endpoint_sends: SrtpAuthKeys) -> Self {
        self.pbx.srtp_auth = Some(pbx_sends);
        self.endpoint.srtp_auth = Some(endpoint_sends);
        self.latch = Some("authenticated".into());
        self
    }

    #[cfg(feature = "engine")]
    /// Validates the request into a [`SessionSpec`] for `tenant`.
    pub fn to_spec(&self, tenant: &str) -> Result<SessionSpec, FieldError> {
        Ok(SessionSpec {
            tenant: tenant.to_string(),
            pbx: self.pbx.to_spec("pbx")?,
            endpoint: self.endpoint.to_spec("endpoint")?,
            latch: parse_named("latch", self.latch.as_deref())?,
            verify: parse_named("verify", self.verify.as_deref())?,
            learning_window: self.learning_window_ms.map(Duration::from_millis),
            idle_timeout: self.idle_timeout_secs.map(Duration::from_secs),
            max_duration: self.max_duration_secs.map(Duration::from_secs),
            quality: self.quality,
            clock_rate: self.clock_rate,
        })
    }

    #[cfg(feature = "engine")]
    /// The spec for a request arriving on `channel_tenant`'s control
    /// channel: a `tenant` field, if present, must name the same tenant.
    pub fn to_spec_for_channel(&self, channel_tenant: &str) -> Result<SessionSpec, FieldError> {
        match &self.tenant {
            Some(t) if t != channel_tenant => Err(FieldError {
                code: ErrorCode::ForbiddenTenant,
                message: "a connector may only allocate sessions for its own tenant".into(),
            }),
            _ => self.to_spec(channel_tenant),
        }
    }
}

/// Changes to one leg (`None` keeps the value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegUpdateRequest {
    /// New hint.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// New SRTP authentication keys (re-INVITE, DTLS keying).
    #[serde(default, deserialize_with = "present_object", skip_serializing_if = "Option::is_none")]
    pub srtp_auth: Option<SrtpAuthKeys>,
    /// New STUN password.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub stun_password: Option<String>,
    /// New packet-rate limit.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_pps: Option<u32>,
    /// New byte-rate limit.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
}

/// Changes to a session (`PATCH /v1/sessions/{id}`, control `update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateRequest {
    /// PBX-leg changes.
    #[serde(deserialize_with = "object")]
    pub pbx: LegUpdateRequest,
    /// Endpoint-leg changes.
    #[serde(deserialize_with = "object")]
    pub endpoint: LegUpdateRequest,
    /// New latching policy.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub latch: Option<String>,
    /// New verification option.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

impl UpdateRequest {
    /// Switches a running session to authenticated latching with these keys.
    pub fn srtp_auth(pbx_sends: SrtpAuthKeys, endpoint_sends: SrtpAuthKeys) -> Self {
        Self {
            pbx: LegUpdateRequest { srtp_auth: Some(pbx_sends), ..LegUpdateRequest::default() },
            endpoint: LegUpdateRequest { srtp_auth: Some(endpoint_sends), ..LegUpdateRequest::default() },
            latch: Some("authenticated".into()),
            verify: None,
        }
    }

    #[cfg(feature = "engine")]
    /// Validates the request into a [`SessionUpdate`].
    pub fn to_update(&self) -> Result<SessionUpdate, FieldError> {
        let leg = |l: &LegUpdateRequest, side: &str| {
            leg_fields(
                side,
                l.hint.as_deref(),
                l.srtp_auth.as_ref(),
                l.stun_password.as_ref(),
                l.max_pps,
                l.max_bytes_per_sec,
            )
        };
        Ok(SessionUpdate {
            pbx: leg(&self.pbx, "pbx")?,
            endpoint: leg(&self.endpoint, "endpoint")?,
            latch: parse_named("latch", self.latch.as_deref())?,
            verify: parse_named("verify", self.verify.as_deref())?,
        })
    }
}

/// Relay addresses of one leg in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegAddressReply {
    /// RTP (and RTCP with rtcp-mux).
    pub rtp: String,
    /// RTCP without rtcp-mux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtcp: Option<String>,
}

impl LegAddressReply {
    #[cfg(feature = "engine")]
    /// The addresses of an allocated leg.
    pub fn of(l: crate::LegAddresses) -> Self {
        Self { rtp: l.rtp.to_string(), rtcp: l.rtcp.map(|a| a.to_string()) }
    }

    /// The RTP address as a socket address (`None` if the relay sent
    /// something else).
    pub fn rtp_socket_addr(&self) -> Option<SocketAddr> {
        self.rtp.parse().ok()
    }
}

/// The reply to an allocation: what goes into SDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationReply {
    /// Session id (16 hex digits).
    pub id: String,
    /// Where the PBX sends.
    pub pbx: LegAddressReply,
    /// Where the endpoint sends.
    pub endpoint: LegAddressReply,
}

impl AllocationReply {
    #[cfg(feature = "engine")]
    /// The reply for an allocated session.
    pub fn of(a: &AllocatedSession) -> Self {
        Self { id: a.id.to_string(), pbx: LegAddressReply::of(a.pbx), endpoint: LegAddressReply::of(a.endpoint) }
    }
}

#[cfg(feature = "engine")]
/// Parses a session id (16 hex digits).
pub fn parse_session_id(id: &str) -> Result<crate::SessionId, FieldError> {
    let bad = || FieldError { code: ErrorCode::InvalidId, message: "session ids are 16 hex digits".into() };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    id.parse().map_err(|_| bad())
}

#[cfg(all(test, feature = "engine"))]
mod tests {
    use super::*;
    use crate::LatchPolicy;

    #[test]
    fn a_request_becomes_a_spec_and_bad_fields_are_named() {
        let r: SessionRequest = serde_json::from_str(
            r#"{"tenant":"acme","pbx":{"hint":"10.0.0.5:4000","max_pps":80},"endpoint":{"rtcp_mux":false,"hint":"192.0.2.1"},"latch":"open"}"#,
        )
        .expect("parse");
        let spec = r.to_spec("acme").expect("valid");
        assert_eq!(spec.pbx.hint, Some("10.0.0.5:4000".parse().expect("addr")));
        assert_eq!(spec.pbx.limits, Some(LegLimits { max_pps: Some(80), max_bytes_per_sec: None }));
        assert_eq!(spec.endpoint.hint, Some("192.0.2.1:0".parse().expect("addr")));
        assert!(spec.pbx.rtcp_mux && !spec.endpoint.rtcp_mux);
        assert_eq!(spec.latch, Some(LatchPolicy::Open));

        let bad = SessionRequest { latch: Some("sometimes".into()), ..SessionRequest::default() };
        assert!(bad.to_spec("acme").expect_err("refused").message.starts_with("latch:"));
        let secret = "zz".repeat(20);
        let bad = SessionRequest {
            endpoint: LegRequest {
                srtp_auth: Some(SrtpAuthKeys { rtp_key: secret.clone(), rtcp_key: secret.clone(), tag_bits: None }),
                ..LegRequest::default()
            },
            ..SessionRequest::default()
        };
        let e = bad.to_spec("acme").expect_err("refused");
        assert!(e.message.starts_with("endpoint.srtp_auth.rtp_key") && !e.message.contains(&secret));
        assert!(serde_json::from_str::<SessionRequest>(r#"{"pbx":{"bogus":1}}"#).is_err());
    }

    #[test]
    fn channel_requests_cannot_name_another_tenant() {
        let own = SessionRequest { tenant: Some("acme".into()), ..SessionRequest::default() };
        assert_eq!(own.to_spec_for_channel("acme").expect("own tenant").tenant, "acme");
        let implied = SessionRequest::default();
        assert_eq!(implied.to_spec_for_channel("acme").expect("implied").tenant, "acme");
        let other = SessionRequest { tenant: Some("globex".into()), ..SessionRequest::default() };
        assert_eq!(other.to_spec_for_channel("acme").expect_err("refused").code, ErrorCode::ForbiddenTenant);
    }

    #[test]
    fn the_srtp_helper_derives_the_rfc3711_auth_keys_and_switches_latching() {
        // RFC 3711 B.3 test vector.
        let key = [0xE1, 0xF9, 0x7A, 0x0D, 0x3E, 0x01, 0x8B, 0xE0, 0xD6, 0x4F, 0xA3, 0x2C, 0x06, 0xDE, 0x41, 0x39];
        let salt = [0x0E, 0xC6, 0x75, 0xAD, 0x49, 0x8A, 0xFE, 0xEB, 0xB6, 0x96, 0x0B, 0x3A, 0xAB, 0xE6];
        let k = SrtpAuthKeys::from_master(&key, &salt, 80).expect("keys");
        assert_eq!(k.rtp_key, "cebe321f6ff7716b6fd4ab49af256a156d38baa4");
        let req = SessionRequest::default().with_srtp_auth(k.clone(), k.clone());
        let spec = req.to_spec("acme").expect("valid");
        assert_eq!(spec.latch, Some(LatchPolicy::Authenticated));
        assert_eq!(spec.pbx.srtp_auth.expect("keys").rtp_key[0], 0xce);
        assert!(!format!("{k:?}").contains("cebe"));
        let upd = UpdateRequest::srtp_auth(k.clone(), k).to_update().expect("valid");
        assert_eq!(upd.latch, Some(LatchPolicy::Authenticated));
        assert!(SrtpAuthKeys::from_master(&key, &salt, 64).is_err());
        assert!(SrtpAuthKeys::from_master(&key[..3], &salt, 80).is_err());
    }

    #[test]
    fn session_ids_are_sixteen_hex_digits() {
        assert!(parse_session_id("0100000000000001").is_ok());
        for bad in ["", "01", "+100000000000001", "010000000000000g", "01000000000000011"] {
            assert_eq!(parse_session_id(bad).expect_err(bad).code, ErrorCode::InvalidId);
        }
    }
}
