//! What a caller asks for: session and leg specifications and updates.

use std::net::SocketAddr;
use std::time::Duration;

use super::limits::LegLimits;
use crate::wire::srtp_auth::{TagLen, AUTH_KEY_LEN};

/// One side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The PBX (customer site) leg.
    Pbx,
    /// The remote endpoint (phone, softphone, browser) leg.
    Endpoint,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Pbx => Side::Endpoint,
            Side::Endpoint => Side::Pbx,
        }
    }
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Pbx => "pbx",
            Side::Endpoint => "endpoint",
        }
    }
    pub(crate) fn index(self) -> usize {
        match self {
            Side::Pbx => 0,
            Side::Endpoint => 1,
        }
    }
}

crate::names::named! {
    /// How a leg learns (latches) its remote address.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum LatchPolicy {
        /// During a learning window after allocation or update, packets may
        /// (re)latch, ranked by the hint (exact address > same IP > other). After
        /// the window the source is strict. The first latch may happen at any time.
        #[default]
        Window => "window",
        /// A new source latches only with proof: an SRTP/SRTCP tag that verifies
        /// with the leg's authentication key and a packet index newer than any
        /// seen, or a STUN request whose MESSAGE-INTEGRITY verifies with the leg's
        /// password (and whose transaction id is new). Survives NAT rebinding and
        /// roaming securely at any time. Needs credentials on every leg.
        Authenticated => "authenticated",
        /// Every packet may re-latch (legacy, insecure; explicit opt-in only).
        Open => "open",
    }
}

crate::names::named! {
    /// Which packets must carry a valid SRTP/SRTCP tag.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum Verify {
        /// Only packets that try to latch (per the policy).
        #[default]
        Latch => "latch",
        /// Every SRTP/SRTCP packet of a leg with an authentication key (one HMAC
        /// per packet; anti-injection).
        All => "all",
    }
}

/// SRTP authentication keys for the packets a leg's remote *sends*.
///
/// Derive them from the SDES master key with
/// `srtp_keys::derive_auth_keys` (the `srtp-keys` feature). Only HMAC-SHA1
/// profiles can be verified by the relay (AEAD/GCM tags need the cipher key).
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpAuth {
    /// SRTP authentication key (KDF label 0x01).
    pub rtp_key: [u8; AUTH_KEY_LEN],
    /// SRTCP authentication key (KDF label 0x04).
    pub rtcp_key: [u8; AUTH_KEY_LEN],
    /// SRTP tag length (80 or 32 bits).
    pub rtp_tag: TagLen,
    /// SRTCP tag length (80 bits for both standard profiles).
    pub rtcp_tag: TagLen,
}

impl SrtpAuth {
    /// Keys for an `AES_CM_128_HMAC_SHA1_80` (or `AES_256_CM_HMAC_SHA1_80`) stream.
    #[cfg(feature = "srtp-keys")]
    pub fn sha1_80(keys: &crate::srtp_keys::AuthKeys) -> Self {
        Self { rtp_key: keys.srtp, rtcp_key: keys.srtcp, rtp_tag: TagLen::Bits80, rtcp_tag: TagLen::Bits80 }
    }
    /// Keys for an `AES_CM_128_HMAC_SHA1_32` stream (SRTCP keeps 80 bits).
    #[cfg(feature = "srtp-keys")]
    pub fn sha1_32(keys: &crate::srtp_keys::AuthKeys) -> Self {
        Self { rtp_key: keys.srtp, rtcp_key: keys.srtcp, rtp_tag: TagLen::Bits32, rtcp_tag: TagLen::Bits80 }
    }
}

impl std::fmt::Debug for SrtpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpAuth")
            .field("rtp_key", &"<redacted>")
            .field("rtcp_key", &"<redacted>")
            .field("rtp_tag", &self.rtp_tag)
            .field("rtcp_tag", &self.rtcp_tag)
            .finish()
    }
}

/// One leg of a session to allocate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LegSpec {
    /// One port for RTP and RTCP (RFC 5761). Otherwise an even/odd pair.
    pub rtcp_mux: bool,
    /// Where the remote says it is (SDP `c=`/`m=`): ranks latching sources
    /// and, when it has a port, is the destination until the leg latches.
    /// A port of 0 means "this IP, any port".
    pub hint: Option<SocketAddr>,
    /// Authentication keys of the SRTP the remote sends (SDES).
    pub srtp_auth: Option<SrtpAuth>,
    /// Short-term ICE password that verifies MESSAGE-INTEGRITY of STUN
    /// requests *sent by* this leg's remote (the other side's `a=ice-pwd`).
    pub stun_password: Option<Vec<u8>>,
    /// Rate limits for packets from this leg: each `Some` field overrides
    /// the relay default (a `None` field keeps the default). Refused above
    /// the relay's [`Ceilings`].
    pub limits: Option<LegLimits>,
    /// Latch nothing on this leg until it has a hint: the remote's address
    /// is not known from signalling yet (e.g. the answerer before the SDP
    /// answer). Packets are dropped as `no_hint` until an update gives one.
    pub await_hint: bool,
    /// The relay interface the leg's ports are on: an index into the
    /// relay's interfaces ([`crate::RelayConfig::interfaces`] order; 0 is
    /// the first, the only one of a relay without named interfaces). The
    /// two legs of a session may sit on different interfaces (LAN ⇄
    /// internet). [`crate::RelayHandle::interface`] finds one by name.
    pub interface: u8,
    /// The remote multiplexes RTCP on its RTP port (rtcp-mux negotiated
    /// in signalling) though the leg has an RTCP port of its own: RTCP to
    /// it leaves from the RTP port. What [`LegUpdate::rtcp_mux`] sets later.
    pub remote_rtcp_mux: bool,
    /// The remote's RTCP port (RFC 3605 `a=rtcp:`), when it is not the RTP
    /// port + 1 (`None` or 0: RTP port + 1). What [`LegUpdate::rtcp_port`]
    /// sets later.
    pub remote_rtcp_port: Option<u16>,
}

impl std::fmt::Debug for LegSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegSpec")
            .field("rtcp_mux", &self.rtcp_mux)
            .field("hint", &self.hint)
            .field("srtp_auth", &self.srtp_auth)
            .field("stun_password", &self.stun_password.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .field("await_hint", &self.await_hint)
            .field("interface", &self.interface)
            .field("remote_rtcp_mux", &self.remote_rtcp_mux)
            .field("remote_rtcp_port", &self.remote_rtcp_port)
            .finish()
    }
}

/// A media session to allocate. Unset options take the relay's defaults.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    /// Tenant the session belongs to (quota accounting).
    pub tenant: String,
    /// The PBX leg.
    pub pbx: LegSpec,
    /// The endpoint leg.
    pub endpoint: LegSpec,
    /// Latching policy.
    pub latch: Option<LatchPolicy>,
    /// Verification option.
    pub verify: Option<Verify>,
    /// Learning window for [`LatchPolicy::Window`].
    pub learning_window: Option<Duration>,
    /// End the session after this long without a packet on either leg.
    pub idle_timeout: Option<Duration>,
    /// End the session after this long regardless.
    pub max_duration: Option<Duration>,
    /// Collect RTP quality figures.
    pub quality: Option<bool>,
    /// RTP clock rate for jitter (Hz); default 8000.
    pub clock_rate: Option<u32>,
}

/// Changes to one leg. `None` fields keep their value.
#[derive(Debug, Clone, Default)]
pub struct LegUpdate {
    /// New hint.
    pub hint: Option<SocketAddr>,
    /// New SRTP authentication keys (e.g. after a re-INVITE or DTLS).
    pub srtp_auth: Option<SrtpAuth>,
    /// New STUN password.
    pub stun_password: Option<Vec<u8>>,
    /// New limits.
    pub limits: Option<LegLimits>,
    /// Whether the remote multiplexes RTCP on the RTP port (RFC 5761),
    /// for a leg that has an RTCP port of its own: RTCP for it then leaves
    /// from the RTP port to its RTP address. (A leg allocated with
    /// [`LegSpec::rtcp_mux`] has one port and always multiplexes.)
    pub rtcp_mux: Option<bool>,
    /// Drop (and count as `blocked`) every packet this leg's remote sends,
    /// or forward them again (`Some(false)`).
    pub blocked: Option<bool>,
    /// The remote's RTCP port when it is not the hint's port + 1 (SDP
    /// `a=rtcp:`, RFC 3605): where RTCP goes until the RTCP port latches.
    pub rtcp_port: Option<u16>,
}

/// Changes to a session; any update re-opens the learning window.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// PBX-leg changes.
    pub pbx: LegUpdate,
    /// Endpoint-leg changes.
    pub endpoint: LegUpdate,
    /// New latching policy.
    pub latch: Option<LatchPolicy>,
    /// New verification option.
    pub verify: Option<Verify>,
}

/// Longest learning window anyone may ask for (a long window is open latching).
pub const MAX_LEARNING_WINDOW: Duration = Duration::from_secs(60);
/// Longest idle timeout anyone may configure.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest maximum duration anyone may configure.
pub const MAX_MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Highest RTP clock rate accepted (Hz).
pub const MAX_CLOCK_RATE: u32 = 1_000_000;

/// Operator ceilings: what a request may ask for at most. A request above a
/// ceiling is refused (not clamped), naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// Highest per-leg packet rate a request may set (`None`: no ceiling).
    pub max_pps: Option<u32>,
    /// Highest per-leg byte rate a request may set (`None`: no ceiling).
    pub max_bytes_per_sec: Option<u64>,
    /// Longest idle timeout a request may set.
    pub idle_timeout: Duration,
    /// Longest maximum duration a request may set.
    pub max_duration: Duration,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            max_pps: Some(10_000),
            max_bytes_per_sec: Some(12_500_000),
            idle_timeout: Duration::from_secs(3600),
            max_duration: Duration::from_secs(24 * 3600),
        }
    }
}

/// Relay-wide defaults for sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDefaults {
    /// Default latching policy.
    pub latch: LatchPolicy,
    /// Default verification option.
    pub verify: Verify,
    /// Learning window (default 3 s).
    pub learning_window: Duration,
    /// Idle timeout (default 60 s).
    pub idle_timeout: Duration,
    /// Maximum duration (default 12 h).
    pub max_duration: Duration,
    /// Per-leg limits (default 1 000 pps, 2 MB/s).
    pub limits: LegLimits,
    /// Quality collection (default off).
    pub quality: bool,
    /// What requests may ask for at most.
    pub ceilings: Ceilings,
}

impl SessionDefaults {
    /// Checks every default and ceiling against the hard bounds.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |field: &'static str, reason: &str| Err(InvalidConfig { field, reason: reason.into() });
        let c = &self.ceilings;
        if self.learning_window > MAX_LEARNING_WINDOW {
            return bad("defaults.learning_window", "must be at most 60 s");
        }
        if c.idle_timeout.is_zero() || c.idle_timeout > MAX_IDLE_TIMEOUT {
            return bad("ceilings.idle_timeout", "must be 1 s to 7 days");
        }
        if c.max_duration.is_zero() || c.max_duration > MAX_MAX_DURATION {
            return bad("ceilings.max_duration", "must be 1 s to 30 days");
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > c.idle_timeout {
            return bad("defaults.idle_timeout", "must be positive and at most its ceiling");
        }
        if self.max_duration.is_zero() || self.max_duration > c.max_duration {
            return bad("defaults.max_duration", "must be positive and at most its ceiling");
        }
        if c.max_pps == Some(0) || c.max_bytes_per_sec == Some(0) {
            return bad("ceilings.max_pps", "rate ceilings must be at least 1");
        }
        if let (Some(v), Some(c)) = (self.limits.max_pps, c.max_pps) {
            if v > c || v == 0 {
                return bad("defaults.limits.max_pps", "must be 1 to its ceiling");
            }
        }
        if let (Some(v), Some(c)) = (self.limits.max_bytes_per_sec, c.max_bytes_per_sec) {
            if v > c || v == 0 {
                return bad("defaults.limits.max_bytes_per_sec", "must be 1 to its ceiling");
            }
        }
        Ok(())
    }
}

impl Default for SessionDefaults {
    fn default() -> Self {
        Self {
            latch: LatchPolicy::Window,
            verify: Verify::Latch,
            learning_window: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            max_duration: Duration::from_secs(12 * 3600),
            limits: LegLimits { max_pps: Some(1000), max_bytes_per_sec: Some(2_000_000) },
            quality: false,
            ceilings: Ceilings::default(),
        }
    }
}

/// A configuration value the relay cannot start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relay config: {field}: {reason}")]
pub struct InvalidConfig {
    /// Offending field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}
