//! A session's resumable state: what a relay with the same layout (same
//! interfaces, port ranges and worker count) needs to carry a session on
//! from where another left it — the same relay ports, the latched remote
//! addresses, the keys, the replay memory and the counters — so that media
//! keeps flowing with no new latch and no new SDP.
//!
//! Export and restore are sans-IO; the cluster layer moves states between
//! relays. Times are relative (`age`, `idle`, `learning_left`): instants do
//! not cross processes. Left out on purpose: quality figures (they restart),
//! sources proven by STUN and the STUN transaction memory (the next consent
//! check proves again), the proof budget and token-bucket levels (both
//! start full), kernel fast path routes (installed again from the next
//! packets).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::limits::LegLimits;
use super::quality::QualityTracker;
use super::replay::ReplayGuard;
use super::spec::{LatchPolicy, SessionDefaults, SrtpAuth, Verify};
use super::stats::LegStats;
use super::{instant_after, leg_auth, Latched, Leg, LegPorts, Session, SessionId};
use crate::peer;
use crate::quota::QuotaPermit;

/// Highest SRTP and SRTCP index seen from one SSRC (replay memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayState {
    /// The SSRC.
    pub ssrc: u32,
    /// Highest SRTP packet index accepted.
    pub srtp_highest: Option<u64>,
    /// Highest SRTCP index accepted.
    pub srtcp_highest: Option<u32>,
}

/// One leg's resumable state.
#[derive(Clone, PartialEq, Eq)]
pub struct LegState {
    /// The leg's relay ports (address index, RTP, RTCP).
    pub ports: LegPorts,
    /// Where signalling says the remote is.
    pub hint: Option<SocketAddr>,
    /// Latched RTP (or muxed) source.
    pub remote_rtp: Option<SocketAddr>,
    /// Latched RTCP source (a leg with an RTCP port).
    pub remote_rtcp: Option<SocketAddr>,
    /// SRTP authentication keys (secret).
    pub srtp_auth: Option<SrtpAuth>,
    /// STUN short-term password (secret).
    pub stun_password: Option<Vec<u8>>,
    /// The leg's effective limits.
    pub limits: LegLimits,
    /// Waiting for a hint before latching.
    pub await_hint: bool,
    /// The remote multiplexes RTCP on the RTP port.
    pub remote_mux: bool,
    /// The remote's RTCP port from `a=rtcp:`.
    pub rtcp_hint_port: Option<u16>,
    /// Media from the remote is dropped as `blocked`.
    pub blocked: bool,
    /// SSRC of the last accepted RTP packet.
    pub last_ssrc: Option<u32>,
    /// Replay memory of authenticated latching.
    pub replay: Vec<ReplayState>,
    /// Counters.
    pub stats: LegStats,
}

impl std::fmt::Debug for LegState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegState")
            .field("ports", &self.ports)
            .field("hint", &self.hint)
            .field("remote_rtp", &self.remote_rtp)
            .field("remote_rtcp", &self.remote_rtcp)
            .field("srtp_auth", &self.srtp_auth)
            .field("stun_password", &self.stun_password.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .field("blocked", &self.blocked)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A session's resumable state (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The session's id; restored under the same id (its shard and slot).
    pub id: SessionId,
    /// Tenant.
    pub tenant: String,
    /// Latching policy.
    pub latch: LatchPolicy,
    /// Verification option.
    pub verify: Verify,
    /// Learning window length.
    pub learning_window: Duration,
    /// What was left of the learning window when exported.
    pub learning_left: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Maximum duration.
    pub max_duration: Duration,
    /// The session's age when exported.
    pub age: Duration,
    /// Time since the last packet on either leg when exported.
    pub idle: Duration,
    /// RTP clock rate of quality collection, when on.
    pub quality_clock_rate: Option<u32>,
    /// The PBX leg.
    pub pbx: LegState,
    /// The endpoint leg.
    pub endpoint: LegState,
}

impl SessionState {
    /// The same state `elapsed` later (time spent in transit or storage):
    /// older, longer idle, less of the learning window left.
    pub fn aged(mut self, elapsed: Duration) -> Self {
        self.age = self.age.saturating_add(elapsed);
        self.idle = self.idle.saturating_add(elapsed);
        self.learning_left = self.learning_left.saturating_sub(elapsed);
        self
    }

    /// Both legs, PBX first.
    pub fn legs(&self) -> [&LegState; 2] {
        [&self.pbx, &self.endpoint]
    }

    /// Relay ports the session holds (address index, port).
    pub fn relay_ports(&self) -> Vec<(u16, u16)> {
        self.legs()
            .iter()
            .flat_map(|l| std::iter::once(l.ports.rtp).chain(l.ports.rtcp).map(|p| (l.ports.addr, p)))
            .collect()
    }
}

impl Leg {
    fn export(&self) -> LegState {
        LegState {
            ports: LegPorts { addr: self.addr, rtp: self.rtp_port, rtcp: self.rtcp_port },
            hint: self.hint,
            remote_rtp: self.remote[0].map(|l| l.addr),
            remote_rtcp: self.remote[1].map(|l| l.addr),
            srtp_auth: self.auth.as_ref().map(|a| a.keys.clone()),
            stun_password: self.stun_key.clone(),
            limits: self.limits,
            await_hint: self.await_hint,
            remote_mux: self.remote_mux,
            rtcp_hint_port: self.rtcp_hint_port,
            blocked: self.blocked,
            last_ssrc: self.last_ssrc,
            replay: self.replay.export(),
            stats: self.stats,
        }
    }

    fn restore(s: &LegState, quality: Option<Box<QualityTracker>>, now: Instant) -> Self {
        let mut leg = Self {
            addr: s.ports.addr,
            rtp_port: s.ports.rtp,
            rtcp_port: s.ports.rtcp,
            hint: s.hint.map(peer::canonical),
            remote: [None, None],
            auth: s.srtp_auth.as_ref().map(leg_auth),
            stun_key: s.stun_password.clone(),
            replay: ReplayGuard::restore(&s.replay),
            stun_replay: Default::default(),
            budget: super::replay::ProofBudget::new(now),
            proven: Vec::new(),
            await_hint: s.await_hint,
            remote_mux: s.remote_mux,
            rtcp_hint_port: s.rtcp_hint_port,
            blocked: s.blocked,
            last_rtp: None,
            last_rtcp: None,
            last_ssrc: s.last_ssrc,
            limits: LegLimits::default(),
            pps: None,
            bps: None,
            stats: s.stats,
            quality,
        };
        // Ranked as when they latched: by the hint.
        for (slot, addr) in [(0, s.remote_rtp), (1, s.remote_rtcp.filter(|_| s.ports.rtcp.is_some()))] {
            if let Some(addr) = addr.map(peer::canonical) {
                leg.remote[slot] = Some(Latched { addr, rank: leg.rank(slot, addr) });
            }
        }
        leg.set_limits(s.limits, now);
        leg
    }
}

impl Session {
    /// The session's resumable state at `now`.
    pub(crate) fn export(&self, now: Instant) -> SessionState {
        SessionState {
            id: self.id,
            tenant: self.tenant.clone(),
            latch: self.latch,
            verify: self.verify,
            learning_window: self.window,
            learning_left: self.window_end.saturating_duration_since(now),
            idle_timeout: self.idle_timeout,
            max_duration: self.max_duration,
            age: now.saturating_duration_since(self.created),
            idle: now.saturating_duration_since(self.last_activity),
            quality_clock_rate: self.legs[0].quality.as_ref().map(|q| q.clock_rate()),
            pbx: self.legs[0].export(),
            endpoint: self.legs[1].export(),
        }
    }

    /// A session resumed from `state` at `now` (the caller has validated
    /// the state and taken its ports). Instants before the process started
    /// are clamped to it.
    pub(crate) fn restore(state: &SessionState, permit: Option<QuotaPermit>, now: Instant) -> Self {
        let back = |d: Duration| now.checked_sub(d).unwrap_or(now);
        let q = || state.quality_clock_rate.map(|c| Box::new(QualityTracker::new(c, now)));
        Self {
            id: state.id,
            tenant: state.tenant.clone(),
            legs: [Leg::restore(&state.pbx, q(), now), Leg::restore(&state.endpoint, q(), now)],
            latch: state.latch,
            verify: state.verify,
            window: state.learning_window,
            window_end: instant_after(now, state.learning_left.min(state.learning_window)),
            created: back(state.age),
            last_activity: back(state.idle),
            idle_timeout: state.idle_timeout,
            max_duration: state.max_duration,
            journaled: false,
            _permit: permit,
        }
    }
}

/// Checks a state against the bounds a spec would be held to (a state read
/// from a shared store is input like any other).
pub(crate) fn validate_state(
    s: &SessionState,
    defaults: &SessionDefaults,
    policy: &crate::PeerPolicy,
) -> Result<(), super::InvalidSpec> {
    use super::InvalidSpec;
    super::validate_tenant(&s.tenant)?;
    if s.learning_window > super::spec::MAX_LEARNING_WINDOW {
        return Err(InvalidSpec::invalid("learning_window", "must be at most 60 s"));
    }
    let c = &defaults.ceilings;
    if s.idle_timeout.is_zero() || s.idle_timeout > c.idle_timeout {
        return Err(InvalidSpec::invalid("idle_timeout", "must be positive and at most the relay's ceiling"));
    }
    if s.max_duration.is_zero() || s.max_duration > c.max_duration {
        return Err(InvalidSpec::invalid("max_duration", "must be positive and at most the relay's ceiling"));
    }
    if s.quality_clock_rate.is_some_and(|r| r == 0 || r > super::spec::MAX_CLOCK_RATE) {
        return Err(InvalidSpec::invalid("clock_rate", "must be 1 to 1000000 Hz"));
    }
    for (l, side) in [(&s.pbx, "pbx"), (&s.endpoint, "endpoint")] {
        super::validate_leg_fields(l.hint, l.stun_password.as_deref(), Some(l.limits), side, defaults, policy)?;
        // Where media will be sent without a new latch: held to the peer
        // policy like any source (a forged record must not aim the relay at
        // metadata services, private networks or the relay itself).
        for a in [l.remote_rtp, l.remote_rtcp].into_iter().flatten() {
            if !policy.allows_peer(crate::peer::canonical(a)) {
                return Err(InvalidSpec::address_refused(side, "latched address refused by the peer policy"));
            }
        }
        if let (Some(port), Some(h)) = (l.rtcp_hint_port.filter(|p| *p != 0), l.hint) {
            if !policy.allows_peer(crate::peer::canonical(SocketAddr::new(h.ip(), port))) {
                return Err(InvalidSpec::address_refused(side, "RTCP address refused by the peer policy"));
            }
        }
        if l.replay.len() > super::replay::MAX_REPLAY_SSRCS {
            return Err(InvalidSpec::invalid(side, "too many SSRCs in the replay memory"));
        }
        if l.ports.rtcp.is_some_and(|p| Some(p) != l.ports.rtp.checked_add(1))
            || l.ports.rtcp.is_some() && l.ports.rtp % 2 != 0
        {
            return Err(InvalidSpec::invalid(side, "an RTCP port is the RTP port + 1, on an even RTP port"));
        }
    }
    super::check_credentials(
        s.latch,
        s.verify,
        [s.pbx.srtp_auth.is_some(), s.endpoint.srtp_auth.is_some()],
        [s.pbx.stun_password.is_some(), s.endpoint.stun_password.is_some()],
    )?;
    Ok(())
}
