//! Two-leg media sessions: latching, verification, limits, statistics.
//!
//! A session (crate-private `Session`) is pure state. The shard hands it a datagram with the time,
//! the leg and port it arrived on and its source; the session answers where to
//! send it or why to drop it.
#![forbid(unsafe_code)]

mod decide;
pub(crate) mod limits;
pub(crate) mod quality;
#[doc(hidden)] // replay-memory bounds, for the workspace's tests
pub mod replay;
pub(crate) mod spec;
pub(crate) mod state;
pub(crate) mod stats;

// What an embedder names is at the crate root (`relay_core::LegSpec`); what
// a sibling crate needs beyond that (resumable state for redundancy, the
// ceilings its configuration checks) is here, without the module layout.
pub use limits::LegLimits;
pub use quality::{MosSample, ReceptionQuality, StreamQuality, MAX_TRACKED_SSRCS};
pub use spec::{Ceilings, MAX_CLOCK_RATE, MAX_IDLE_TIMEOUT, MAX_LEARNING_WINDOW, MAX_MAX_DURATION};
pub use state::{LegState, ReplayState, SessionState};
pub use stats::DropCounters;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::offload::{OffloadRoute, OffloadStats};
use crate::peer::{self, PeerPolicy};
use crate::quota::QuotaPermit;
use crate::relay_port::RelayPort;
use crate::wire::srtp_auth::AuthVerifier;
use limits::TokenBucket;
use quality::QualityTracker;
use replay::{ProofBudget, ReplayGuard, StunReplay};
use spec::{LatchPolicy, LegSpec, LegUpdate, SessionDefaults, SessionSpec, SessionUpdate, Side, SrtpAuth, Verify};
use stats::{DropReason, LegStats};

/// Identifies a session across the whole relay: the shard that owns it (8
/// bits), the id space it was minted in (24 bits) and a serial within the
/// space (32 bits). A relay starts in a random id space and a cluster node
/// mints in the space of its lease epoch, so ids of different processes,
/// nodes and epochs never name the same session (a client holding an id
/// from before a restart or a takeover cannot reach another call with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    pub(crate) fn new(shard: u8, space: u32, serial: u32) -> Self {
        Self((u64::from(shard) << 56) | (u64::from(space & 0x00ff_ffff) << 32) | u64::from(serial))
    }
    /// The shard that owns the session.
    pub fn shard(self) -> u8 {
        (self.0 >> 56) as u8
    }
    /// The id space it was minted in.
    pub fn space(self) -> u32 {
        ((self.0 >> 32) & 0x00ff_ffff) as u32
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(SessionId)
    }
}

/// RTP or RTCP component of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// RTP (or everything, with rtcp-mux).
    Rtp,
    /// RTCP on its own port.
    Rtcp,
}

impl Component {
    pub(crate) fn index(self) -> usize {
        match self {
            Component::Rtp => 0,
            Component::Rtcp => 1,
        }
    }
}

/// What kind of refusal an [`InvalidSpec`] is (the admin API maps it to
/// its HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecErrorKind {
    /// A value outside its range or format.
    Invalid,
    /// A well-formed address the peer policy refuses (a relay address, a
    /// private network, metadata...).
    AddressRefused,
    /// A latching or verification mode without the credentials it needs.
    MissingCredentials,
}

/// An invalid session specification or update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session spec: {field}: {reason}")]
pub struct InvalidSpec {
    /// The field at fault (e.g. `endpoint.hint`).
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
    /// Which kind of refusal.
    pub kind: SpecErrorKind,
}

impl InvalidSpec {
    /// A value outside its range or format.
    pub fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason, kind: SpecErrorKind::Invalid }
    }
    /// An address the peer policy refuses.
    pub fn address_refused(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason, kind: SpecErrorKind::AddressRefused }
    }
    /// A mode without the credentials it needs.
    pub fn missing_credentials(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason, kind: SpecErrorKind::MissingCredentials }
    }
}

/// A latched remote address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Latched {
    addr: SocketAddr,
    rank: u8,
}

#[derive(Debug, Clone)]
struct LegAuth {
    keys: SrtpAuth,
    rtp: AuthVerifier,
    rtcp: AuthVerifier,
}

/// How long a source that proved itself with a verified, fresh STUN request
/// may latch with any media (ICE consent checks renew it every ~5 s).
pub const STUN_PROOF_LIFETIME: Duration = Duration::from_secs(30);
/// Proven sources remembered per leg (an ICE agent's candidates).
pub const MAX_PROVEN_SOURCES: usize = 4;

/// Longest STUN password accepted (ICE passwords are 22 to 256 characters).
pub const MAX_STUN_PASSWORD: usize = 256;

/// `t + d`, saturating far in the future instead of overflowing.
pub(crate) fn instant_after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(spec::MAX_MAX_DURATION)).unwrap_or(t)
}

/// One leg: its relay ports, what it latched to, its credentials and counters.
#[derive(Debug)]
pub(crate) struct Leg {
    /// The relay address of the leg's ports.
    pub(crate) addr: u16,
    pub(crate) rtp_port: u16,
    pub(crate) rtcp_port: Option<u16>,
    hint: Option<SocketAddr>,
    remote: [Option<Latched>; 2],
    /// Boxed: most legs have no keys, and an HMAC state is ~200 bytes.
    auth: Option<Box<LegAuth>>,
    stun_key: Option<Vec<u8>>,
    replay: ReplayGuard,
    stun_replay: StunReplay,
    budget: ProofBudget,
    /// Sources that proved themselves with a fresh, verified STUN request
    /// recently (an ICE agent checks from each of its candidates before
    /// media flows from the nominated one): media from them may re-latch.
    proven: Vec<(SocketAddr, Instant)>,
    await_hint: bool,
    /// The remote multiplexes RTCP on the RTP port although the leg has an
    /// RTCP port (always true in effect for a one-port leg).
    remote_mux: bool,
    /// The remote's RTCP port from signalling (`a=rtcp:`), when it is not
    /// the hint's port + 1.
    rtcp_hint_port: Option<u16>,
    /// Media from the remote is dropped as `blocked`.
    blocked: bool,
    /// Last accepted RTP (or other non-RTCP media) and RTCP datagram.
    last_rtp: Option<Instant>,
    last_rtcp: Option<Instant>,
    /// SSRC of the last accepted RTP packet.
    last_ssrc: Option<u32>,
    limits: LegLimits,
    pps: Option<TokenBucket>,
    bps: Option<TokenBucket>,
    pub(crate) stats: LegStats,
    /// Boxed: most sessions collect no quality figures.
    quality: Option<Box<QualityTracker>>,
}

impl Leg {
    fn new(
        spec: &LegSpec,
        ports: LegPorts,
        defaults: &SessionDefaults,
        quality: Option<Box<QualityTracker>>,
        now: Instant,
    ) -> Self {
        let mut leg = Self {
            addr: ports.addr,
            rtp_port: ports.rtp,
            rtcp_port: ports.rtcp,
            hint: spec.hint.map(peer::canonical),
            remote: [None, None],
            auth: spec.srtp_auth.as_ref().map(leg_auth),
            stun_key: spec.stun_password.clone(),
            replay: ReplayGuard::default(),
            stun_replay: StunReplay::default(),
            budget: ProofBudget::new(now),
            proven: Vec::new(),
            await_hint: spec.await_hint,
            remote_mux: spec.remote_rtcp_mux,
            rtcp_hint_port: spec.remote_rtcp_port.filter(|p| *p != 0),
            blocked: false,
            last_rtp: None,
            last_rtcp: None,
            last_ssrc: None,
            limits: LegLimits::default(),
            pps: None,
            bps: None,
            stats: LegStats::default(),
            quality,
        };
        leg.set_limits(effective_limits(spec.limits, defaults.limits), now);
        leg
    }

    fn set_limits(&mut self, limits: LegLimits, now: Instant) {
        self.limits = limits;
        self.pps = limits.max_pps.map(|r| TokenBucket::new(u64::from(r), now));
        self.bps = limits.max_bytes_per_sec.map(|r| TokenBucket::new(r, now));
    }

    /// New SRTP keys. Indexes seen under other keys say nothing about the
    /// new stream (a sender with new keys usually restarts its index), so
    /// they are forgotten — unless the keys are the same ones again, when
    /// forgetting would let captured packets replay.
    fn set_auth(&mut self, keys: &SrtpAuth) {
        if self.auth.as_ref().is_some_and(|a| a.keys == *keys) {
            return;
        }
        self.auth = Some(leg_auth(keys));
        self.replay = ReplayGuard::default();
    }

    /// A new STUN password; a different one starts a new id memory (requests
    /// signed with the old password no longer verify) and forgets the
    /// sources proven with the old one.
    fn set_stun_key(&mut self, password: &[u8]) {
        if self.stun_key.as_deref() == Some(password) {
            return;
        }
        self.stun_key = Some(password.to_vec());
        self.stun_replay = StunReplay::default();
        self.proven.clear();
    }

    /// Remembers that `src` proved itself with STUN at `now`.
    fn handle_stun_proof(&mut self, now: Instant, src: SocketAddr) {
        let until = instant_after(now, STUN_PROOF_LIFETIME);
        if let Some(e) = self.proven.iter_mut().find(|(a, _)| *a == src) {
            e.1 = until;
            return;
        }
        if self.proven.len() >= MAX_PROVEN_SOURCES {
            let oldest = (0..self.proven.len()).min_by_key(|&i| self.proven[i].1).unwrap_or(0);
            self.proven.swap_remove(oldest);
        }
        self.proven.push((src, until));
    }

    /// Whether `src` proved itself with STUN recently.
    fn is_proven(&self, now: Instant, src: SocketAddr) -> bool {
        self.proven.iter().any(|(a, until)| *a == src && now < *until)
    }

    /// The latch slot of a datagram that arrived on `component`'s port.
    fn slot(&self, component: Component) -> usize {
        if self.rtcp_port.is_some() {
            component.index()
        } else {
            0
        }
    }

    /// The slot a datagram of `component` goes out on toward this leg's
    /// remote: RTCP has its own only if the remote does not multiplex.
    fn out_slot(&self, component: Component) -> usize {
        if self.remote_mux {
            0
        } else {
            self.slot(component)
        }
    }

    /// The address the hint stands for on a slot (RTCP = RTP port + 1).
    fn hint_for(&self, slot: usize) -> Option<SocketAddr> {
        let h = self.hint?;
        if h.port() == 0 {
            return None;
        }
        let mut a = h;
        if slot == 1 {
            a.set_port(match self.rtcp_hint_port {
                Some(p) => p,
                None => h.port().checked_add(1)?,
            });
        }
        Some(a)
    }

    /// Hint rank of a source: 3 exact, 2 same IP, 1 other.
    fn rank(&self, slot: usize, src: SocketAddr) -> u8 {
        match self.hint {
            Some(h) if h.ip() == src.ip() => {
                if self.hint_for(slot) == Some(src) {
                    3
                } else {
                    2
                }
            }
            _ => 1,
        }
    }

    /// Where to send a packet destined to this leg's remote on `slot`.
    fn destination(&self, slot: usize) -> Option<SocketAddr> {
        if let Some(l) = self.remote[slot] {
            return Some(l.addr);
        }
        if slot == 1 {
            if let Some(rtp) = self.remote[0] {
                let mut a = rtp.addr;
                a.set_port(rtp.addr.port().checked_add(1)?);
                return Some(a);
            }
        }
        self.hint_for(slot)
    }

    fn out_port(&self, component: Component) -> RelayPort {
        let port = match (component, self.rtcp_port) {
            (Component::Rtcp, Some(p)) if !self.remote_mux => p,
            _ => self.rtp_port,
        };
        RelayPort::new(self.addr, port)
    }
}

/// A leg's limits: each field the spec sets overrides the default.
fn effective_limits(spec: Option<LegLimits>, defaults: LegLimits) -> LegLimits {
    let spec = spec.unwrap_or_default();
    LegLimits {
        max_pps: spec.max_pps.or(defaults.max_pps),
        max_bytes_per_sec: spec.max_bytes_per_sec.or(defaults.max_bytes_per_sec),
    }
}

fn leg_auth(a: &SrtpAuth) -> Box<LegAuth> {
    Box::new(LegAuth {
        keys: a.clone(),
        rtp: AuthVerifier::new(&a.rtp_key, a.rtp_tag),
        rtcp: AuthVerifier::new(&a.rtcp_key, a.rtcp_tag),
    })
}

/// A two-leg media session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) tenant: String,
    pub(crate) legs: [Leg; 2],
    latch: LatchPolicy,
    verify: Verify,
    window: Duration,
    window_end: Instant,
    pub(crate) created: Instant,
    pub(crate) last_activity: Instant,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_duration: Duration,
    /// Listed in the shard's change journal since the last pull.
    pub(crate) journaled: bool,
    _permit: Option<QuotaPermit>,
}

/// Relay ports given to one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegPorts {
    /// The relay address the ports are on ([`RelayPort::addr`](crate::relay_port::RelayPort::addr)).
    pub addr: u16,
    /// RTP port (or the only port with rtcp-mux).
    pub rtp: u16,
    /// RTCP port, without rtcp-mux.
    pub rtcp: Option<u16>,
}

/// Validates a spec against the policy and the bounds (before any port is
/// taken): every number has a range, every address is checked.
pub(crate) fn validate_spec(
    spec: &SessionSpec,
    defaults: &SessionDefaults,
    policy: &PeerPolicy,
) -> Result<(), InvalidSpec> {
    validate_tenant(&spec.tenant)?;
    validate_leg_fields(spec.pbx.hint, spec.pbx.stun_password.as_deref(), spec.pbx.limits, "pbx", defaults, policy)?;
    validate_leg_fields(
        spec.endpoint.hint,
        spec.endpoint.stun_password.as_deref(),
        spec.endpoint.limits,
        "endpoint",
        defaults,
        policy,
    )?;
    // An RTCP port is checked with the address it will go to.
    for (leg, side) in [(&spec.pbx, "pbx.remote_rtcp_port"), (&spec.endpoint, "endpoint.remote_rtcp_port")] {
        if let (Some(port), Some(hint)) = (leg.remote_rtcp_port.filter(|p| *p != 0), leg.hint) {
            validate_hint(SocketAddr::new(hint.ip(), port), policy)
                .map_err(|reason| InvalidSpec::address_refused(side, reason))?;
        }
    }
    let latch = spec.latch.unwrap_or(defaults.latch);
    let verify = spec.verify.unwrap_or(defaults.verify);
    check_credentials(
        latch,
        verify,
        [spec.pbx.srtp_auth.is_some(), spec.endpoint.srtp_auth.is_some()],
        [spec.pbx.stun_password.is_some(), spec.endpoint.stun_password.is_some()],
    )?;
    if spec.learning_window.is_some_and(|d| d > MAX_LEARNING_WINDOW) {
        return Err(InvalidSpec::invalid("learning_window", "must be at most 60 s"));
    }
    let ceilings = &defaults.ceilings;
    if let Some(d) = spec.idle_timeout {
        if d.is_zero() {
            return Err(InvalidSpec::invalid("idle_timeout", "must be positive"));
        }
        if d > ceilings.idle_timeout {
            return Err(InvalidSpec::invalid("idle_timeout", "above the relay's ceiling"));
        }
    }
    if let Some(d) = spec.max_duration {
        if d.is_zero() {
            return Err(InvalidSpec::invalid("max_duration", "must be positive"));
        }
        if d > ceilings.max_duration {
            return Err(InvalidSpec::invalid("max_duration", "above the relay's ceiling"));
        }
    }
    if spec.clock_rate.is_some_and(|r| r == 0 || r > MAX_CLOCK_RATE) {
        return Err(InvalidSpec::invalid("clock_rate", "must be 1 to 1000000 Hz"));
    }
    Ok(())
}

/// Tenant ids: 1 to 128 visible ASCII characters (no spaces, control
/// characters or NUL: they end up in logs, metrics labels and Redis keys).
pub(crate) fn validate_tenant(tenant: &str) -> Result<(), InvalidSpec> {
    if tenant.is_empty() || tenant.len() > 128 {
        return Err(InvalidSpec::invalid("tenant", "must be 1 to 128 bytes"));
    }
    if !tenant.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidSpec::invalid("tenant", "must be visible ASCII (no spaces or control characters)"));
    }
    Ok(())
}

/// The leg fields a spec and an update share.
pub(crate) fn validate_leg_fields(
    hint: Option<SocketAddr>,
    stun_password: Option<&[u8]>,
    limits: Option<LegLimits>,
    side: &'static str,
    defaults: &SessionDefaults,
    policy: &PeerPolicy,
) -> Result<(), InvalidSpec> {
    let field = |name: &'static str| match (side, name) {
        ("pbx", "hint") => "pbx.hint",
        ("pbx", "stun_password") => "pbx.stun_password",
        ("pbx", "max_pps") => "pbx.max_pps",
        ("pbx", _) => "pbx.max_bytes_per_sec",
        (_, "hint") => "endpoint.hint",
        (_, "stun_password") => "endpoint.stun_password",
        (_, "max_pps") => "endpoint.max_pps",
        _ => "endpoint.max_bytes_per_sec",
    };
    if let Some(h) = hint {
        validate_hint(h, policy).map_err(|reason| InvalidSpec::address_refused(field("hint"), reason))?;
    }
    match stun_password {
        Some(p) if p.is_empty() || p.len() > MAX_STUN_PASSWORD || !p.iter().all(u8::is_ascii_graphic) => {
            return Err(InvalidSpec::invalid(
                field("stun_password"),
                "must be 1 to 256 visible ASCII characters (ICE passwords are)",
            ))
        }
        _ => {}
    }
    if let Some(l) = limits {
        check_limits(l, &defaults.ceilings).map_err(|(which, reason)| InvalidSpec::invalid(field(which), reason))?;
    }
    Ok(())
}

/// A hint must be an allowed peer and never the relay itself (its RTCP
/// neighbour, port + 1, included). Port 0 means "this IP, any port".
fn validate_hint(h: SocketAddr, policy: &PeerPolicy) -> Result<(), &'static str> {
    let h = peer::canonical(h);
    let mut probe = h;
    if probe.port() == 0 {
        probe.set_port(9);
    }
    if !policy.allows(probe) {
        return Err("address refused by the peer policy");
    }
    if h.port() != 0 {
        let rtcp = h.port().checked_add(1).map(|p| SocketAddr::new(h.ip(), p));
        if policy.is_own(h) || rtcp.is_some_and(|a| policy.is_own(a)) {
            return Err("address is one of the relay's own (media ports or listeners)");
        }
    }
    Ok(())
}

fn check_limits(l: LegLimits, ceilings: &Ceilings) -> Result<(), (&'static str, &'static str)> {
    if let Some(pps) = l.max_pps {
        if pps == 0 {
            return Err(("max_pps", "must be at least 1"));
        }
        if ceilings.max_pps.is_some_and(|c| pps > c) {
            return Err(("max_pps", "above the relay's ceiling"));
        }
    }
    if let Some(bps) = l.max_bytes_per_sec {
        if bps == 0 {
            return Err(("max_bytes_per_sec", "must be at least 1"));
        }
        if ceilings.max_bytes_per_sec.is_some_and(|c| bps > c) {
            return Err(("max_bytes_per_sec", "above the relay's ceiling"));
        }
    }
    Ok(())
}

pub(crate) fn check_credentials(
    latch: LatchPolicy,
    verify: Verify,
    auth: [bool; 2],
    stun: [bool; 2],
) -> Result<(), InvalidSpec> {
    if latch == LatchPolicy::Authenticated {
        for (i, field) in [(0, "pbx.srtp_auth"), (1, "endpoint.srtp_auth")] {
            if !auth[i] && !stun[i] {
                return Err(InvalidSpec::missing_credentials(
                    field,
                    "authenticated latching needs SRTP auth keys or a STUN password on every leg",
                ));
            }
        }
    }
    if verify == Verify::All && !auth[0] && !auth[1] {
        return Err(InvalidSpec::missing_credentials(
            "verify",
            "verify = all needs SRTP auth keys on at least one leg",
        ));
    }
    Ok(())
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: SessionId,
        spec: &SessionSpec,
        ports: [LegPorts; 2],
        defaults: &SessionDefaults,
        permit: Option<QuotaPermit>,
        now: Instant,
    ) -> Self {
        let quality = spec.quality.unwrap_or(defaults.quality);
        let clock = spec.clock_rate.unwrap_or(8000);
        let q = || quality.then(|| Box::new(QualityTracker::new(clock, now)));
        let window = spec.learning_window.unwrap_or(defaults.learning_window);
        Self {
            id,
            tenant: spec.tenant.clone(),
            legs: [
                Leg::new(&spec.pbx, ports[0], defaults, q(), now),
                Leg::new(&spec.endpoint, ports[1], defaults, q(), now),
            ],
            latch: spec.latch.unwrap_or(defaults.latch),
            verify: spec.verify.unwrap_or(defaults.verify),
            window,
            window_end: instant_after(now, window),
            created: now,
            last_activity: now,
            idle_timeout: spec.idle_timeout.unwrap_or(defaults.idle_timeout),
            max_duration: spec.max_duration.unwrap_or(defaults.max_duration),
            journaled: false,
            _permit: permit,
        }
    }

    /// The instant at which the session ends unless traffic moves it.
    pub(crate) fn deadline(&self) -> Instant {
        instant_after(self.last_activity, self.idle_timeout).min(instant_after(self.created, self.max_duration))
    }

    pub(crate) fn ports(&self, side: Side) -> LegPorts {
        let l = &self.legs[side.index()];
        LegPorts { addr: l.addr, rtp: l.rtp_port, rtcp: l.rtcp_port }
    }

    /// Applies an update and re-opens the learning window.
    pub(crate) fn update(
        &mut self,
        now: Instant,
        u: &SessionUpdate,
        defaults: &SessionDefaults,
        policy: &PeerPolicy,
    ) -> Result<(), InvalidSpec> {
        let latch = u.latch.unwrap_or(self.latch);
        let verify = u.verify.unwrap_or(self.verify);
        for (lu, side) in [(&u.pbx, "pbx"), (&u.endpoint, "endpoint")] {
            validate_leg_fields(lu.hint, lu.stun_password.as_deref(), lu.limits, side, defaults, policy)?;
        }
        // An RTCP port is checked with the address it will go to.
        for (i, lu, side) in [(0, &u.pbx, "pbx.rtcp_port"), (1, &u.endpoint, "endpoint.rtcp_port")] {
            let ip = lu.hint.map(|h| h.ip()).or(self.legs[i].hint.map(|h| h.ip()));
            if let (Some(port), Some(ip)) = (lu.rtcp_port.filter(|p| *p != 0), ip) {
                validate_hint(SocketAddr::new(ip, port), policy)
                    .map_err(|reason| InvalidSpec::address_refused(side, reason))?;
            }
        }
        let has_auth = |i: usize, lu: &LegUpdate| lu.srtp_auth.is_some() || self.legs[i].auth.is_some();
        let has_stun = |i: usize, lu: &LegUpdate| lu.stun_password.is_some() || self.legs[i].stun_key.is_some();
        check_credentials(
            latch,
            verify,
            [has_auth(0, &u.pbx), has_auth(1, &u.endpoint)],
            [has_stun(0, &u.pbx), has_stun(1, &u.endpoint)],
        )?;
        for (i, lu) in [(0, &u.pbx), (1, &u.endpoint)] {
            let leg = &mut self.legs[i];
            if let Some(h) = lu.hint {
                leg.hint = Some(peer::canonical(h));
            }
            if let Some(a) = &lu.srtp_auth {
                leg.set_auth(a);
            }
            if let Some(p) = &lu.stun_password {
                leg.set_stun_key(p);
            }
            if let Some(m) = lu.rtcp_mux {
                leg.remote_mux = m;
            }
            if let Some(p) = lu.rtcp_port {
                leg.rtcp_hint_port = (p != 0).then_some(p);
            }
            if let Some(b) = lu.blocked {
                leg.blocked = b;
            }
            if let Some(l) = lu.limits {
                let current = leg.limits;
                leg.set_limits(effective_limits(Some(l), current), now);
            }
        }
        self.latch = latch;
        self.verify = verify;
        self.window_end = instant_after(now, self.window);
        Ok(())
    }

    /// Decides what to do with a datagram that arrived on `side`'s
    /// `component` port from `src` (already canonical).
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        side: Side,
        component: Component,
        src: SocketAddr,
        bytes: &[u8],
        policy: &PeerPolicy,
    ) -> Result<(RelayPort, SocketAddr), DropReason> {
        let (latch, verify, in_window) = (self.latch, self.verify, now < self.window_end);
        let [a, b] = &mut self.legs;
        let (leg, other) = if side == Side::Pbx { (a, b) } else { (b, a) };
        leg.stats.packets_received += 1;
        leg.stats.bytes_received += bytes.len() as u64;
        let rules = decide::Rules { latch, verify, in_window, policy };
        let verdict = decide::decide(leg, other, &rules, decide::Arrival { now, component, src, bytes });
        match verdict {
            Ok(_) => {
                leg.stats.packets_forwarded += 1;
                leg.stats.bytes_forwarded += bytes.len() as u64;
                self.last_activity = now;
            }
            Err(reason) => leg.stats.drops.add(reason),
        }
        verdict
    }

    /// The kernel route a forwarded datagram establishes (with the leg's
    /// slot it belongs to), if it may be offloaded: RTP/RTCP from the leg's
    /// latched source, on a leg that is not blocked and not `verify = all`.
    /// Whether it is installed already is the shard's to know.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offload_route(
        &mut self,
        side: Side,
        component: Component,
        local: RelayPort,
        src: SocketAddr,
        bytes: &[u8],
        via: RelayPort,
        to: SocketAddr,
    ) -> Option<(usize, OffloadRoute)> {
        if self.verify == Verify::All || !matches!(bytes.first(), Some(128..=191)) {
            return None;
        }
        let [a, b] = &mut self.legs;
        let (leg, other) = if side == Side::Pbx { (a, b) } else { (b, a) };
        let slot = leg.slot(component);
        if leg.blocked || leg.remote[slot].map(|r| r.addr) != Some(src) {
            return None;
        }
        // Each class the kernel forwards must go exactly where userspace
        // sends it: RTP keeps its component, RTCP goes to the other leg's
        // RTCP destination (elsewhere, when one side multiplexes and the
        // other does not). A keyed leg's RTCP stays in userspace, whose
        // replay memory needs every SRTCP index.
        let goes = |c: Component| Some((other.out_port(c), other.destination(other.out_slot(c))?));
        let rtp = goes(component) == Some((via, to));
        let rtcp = leg.auth.is_none() && goes(Component::Rtcp) == Some((via, to));
        if !rtp && !rtcp {
            return None;
        }
        let route = OffloadRoute {
            local,
            from: src,
            via,
            to,
            max_pps: leg.limits.max_pps,
            max_bytes_per_sec: leg.limits.max_bytes_per_sec,
            rtp,
            rtcp,
        };
        Some((slot, route))
    }

    /// Whether `src` would be a new source for `side`'s `component` on a
    /// leg whose latching needs a fresh proof checked against the replay
    /// memory (`authenticated`, with SRTP keys): that memory must first
    /// hold what the kernel forwarded meanwhile.
    /// (A source in proof back-off is refused by userspace anyway: it
    /// cannot make the kernel's routes churn.)
    pub(crate) fn needs_kernel_state(&self, now: Instant, side: Side, component: Component, src: SocketAddr) -> bool {
        let leg = &self.legs[side.index()];
        self.latch == LatchPolicy::Authenticated
            && leg.auth.is_some()
            && leg.remote[leg.slot(component)].map(|r| r.addr) != Some(src)
            && leg.budget.may_try(now, src.ip())
    }

    /// The slot (0: RTP or muxed, 1: RTCP) `component` uses on `side`'s leg.
    pub(crate) fn slot_of(&self, side: Side, component: Component) -> usize {
        self.legs[side.index()].slot(component)
    }

    /// Accounts what the kernel forwarded for `side` (already a delta).
    pub(crate) fn handle_offloaded(&mut self, now: Instant, side: Side, d: &OffloadStats) {
        let leg = &mut self.legs[side.index()];
        leg.stats.packets_received += d.packets + d.rate_limited;
        leg.stats.packets_forwarded += d.packets;
        leg.stats.bytes_received += d.bytes;
        leg.stats.bytes_forwarded += d.bytes;
        leg.stats.drops.add_n(DropReason::RateLimited, d.rate_limited);
        // What the kernel forwarded is as seen: a captured copy of it is a
        // replay, not a fresh proof.
        if let Some((ssrc, seq)) = d.last_rtp {
            leg.last_ssrc = Some(ssrc);
            if leg.auth.is_some() {
                leg.replay.record_srtp_seq(ssrc, seq);
            }
        }
        if let Some(ago) = d.last_ago.filter(|_| d.packets > 0) {
            let at = now.checked_sub(ago).unwrap_or(now);
            if at > self.last_activity {
                self.last_activity = at;
            }
            if leg.last_rtp.is_none_or(|t| t < at) {
                leg.last_rtp = Some(at);
            }
        }
    }

    /// Read-only view for queries.
    pub(crate) fn info(&self, now: Instant) -> SessionInfo {
        let leg_info = |side: Side| {
            let l = &self.legs[side.index()];
            LegInfo {
                side,
                ports: LegPorts { addr: l.addr, rtp: l.rtp_port, rtcp: l.rtcp_port },
                hint: l.hint,
                remote_rtp: l.remote[0].map(|r| r.addr),
                remote_rtcp: if l.rtcp_port.is_some() { l.remote[1].map(|r| r.addr) } else { None },
                stats: l.stats,
                quality: l.quality.as_ref().map(|q| q.snapshot()).unwrap_or_default(),
                reports: l.quality.as_ref().map(|q| q.reports(now)).unwrap_or_default(),
                has_srtp_auth: l.auth.is_some(),
                has_stun_password: l.stun_key.is_some(),
                remote_rtcp_mux: l.rtcp_port.is_none() || l.remote_mux,
                blocked: l.blocked,
                last_rtp_ago: l.last_rtp.map(|t| now.saturating_duration_since(t)),
                last_rtcp_ago: l.last_rtcp.map(|t| now.saturating_duration_since(t)),
                last_ssrc: l.last_ssrc,
            }
        };
        SessionInfo {
            id: self.id,
            tenant: self.tenant.clone(),
            latch: self.latch,
            verify: self.verify,
            age: now.saturating_duration_since(self.created),
            idle: now.saturating_duration_since(self.last_activity),
            learning: now < self.window_end,
            pbx: leg_info(Side::Pbx),
            endpoint: leg_info(Side::Endpoint),
        }
    }
}

/// A leg as seen by a query.
#[derive(Debug, Clone, PartialEq)]
pub struct LegInfo {
    /// Which side.
    pub side: Side,
    /// Its relay ports.
    pub ports: LegPorts,
    /// Its hint.
    pub hint: Option<SocketAddr>,
    /// Latched remote for RTP (or both with rtcp-mux).
    pub remote_rtp: Option<SocketAddr>,
    /// Latched remote for RTCP, without rtcp-mux.
    pub remote_rtcp: Option<SocketAddr>,
    /// Counters of packets received from this leg's remote.
    pub stats: LegStats,
    /// Per-SSRC quality, when enabled.
    pub quality: Vec<StreamQuality>,
    /// What the remote's receivers reported (plain RTCP), when enabled.
    pub reports: Vec<ReceptionQuality>,
    /// Whether SRTP authentication keys are set.
    pub has_srtp_auth: bool,
    /// Whether a STUN password is set.
    pub has_stun_password: bool,
    /// Whether RTCP to and from the remote shares the RTP port.
    pub remote_rtcp_mux: bool,
    /// Whether media from the remote is blocked.
    pub blocked: bool,
    /// Time since the last accepted non-RTCP datagram (RTP, STUN, DTLS).
    pub last_rtp_ago: Option<Duration>,
    /// Time since the last accepted RTCP datagram.
    pub last_rtcp_ago: Option<Duration>,
    /// SSRC of the last accepted RTP packet.
    pub last_ssrc: Option<u32>,
}

/// A session as seen by a query.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Id.
    pub id: SessionId,
    /// Tenant.
    pub tenant: String,
    /// Latching policy.
    pub latch: LatchPolicy,
    /// Verification option.
    pub verify: Verify,
    /// Time since allocation.
    pub age: Duration,
    /// Time since the last accepted packet.
    pub idle: Duration,
    /// Whether the learning window is open.
    pub learning: bool,
    /// The PBX leg.
    pub pbx: LegInfo,
    /// The endpoint leg.
    pub endpoint: LegInfo,
}
