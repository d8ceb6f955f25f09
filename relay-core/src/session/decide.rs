//! What a leg does with one datagram, step by step: screen it (classified
//! once into a [`MediaDatagram`], the typed view every later step reads),
//! admit its source (latching policy, proofs), check its tag (`verify =
//! all`), accept it (latch, replay memory, quality), then route it
//! (blocking, destination, rate limits). Each step may drop it with its
//! reason.

use std::net::SocketAddr;
use std::time::Instant;

use super::spec::{LatchPolicy, Verify};
use super::stats::DropReason;
use super::{Component, Latched, Leg};
use crate::peer::PeerPolicy;
use crate::relay_port::RelayPort;
use crate::wire::rtcp::PlainReports;
use crate::wire::stun::{StunClass, StunMessage};
use crate::wire::{MediaDatagram, PacketClass};

/// The session's rules for its datagrams.
pub(super) struct Rules<'a> {
    /// How legs latch.
    pub latch: LatchPolicy,
    /// Which packets must carry a valid tag.
    pub verify: Verify,
    /// Whether the learning window is open.
    pub in_window: bool,
    /// Which addresses may be peers.
    pub policy: &'a PeerPolicy,
}

/// One datagram as it arrived on a leg.
pub(super) struct Arrival<'a> {
    /// When.
    pub now: Instant,
    /// On the leg's RTP or RTCP port.
    pub component: Component,
    /// From (canonical).
    pub src: SocketAddr,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// The source check's result: whether the source is new to the slot, its
/// rank, and whether the packet was verified on the way.
struct Admitted {
    new_source: bool,
    rank: u8,
    verified: bool,
}

/// Decides where a datagram that arrived on `leg` goes (the relay port to
/// send from and the destination), or why it is dropped.
pub(super) fn decide(
    leg: &mut Leg,
    other: &Leg,
    rules: &Rules<'_>,
    a: Arrival<'_>,
) -> Result<(RelayPort, SocketAddr), DropReason> {
    let datagram = screen(leg, rules, &a)?;
    let slot = leg.slot(a.component);
    let admitted = admit_source(leg, rules, &a, &datagram, slot)?;
    // verify = all: every SRTP/SRTCP packet must carry a valid tag.
    if rules.verify == Verify::All && !admitted.verified && !verify_tag(leg, &datagram) {
        return Err(DropReason::AuthFailed);
    }
    accept(leg, other, &a, &datagram, slot, &admitted);
    route(leg, other, &a, datagram.class())
}

/// Empty datagrams, refused sources and anything but media (the RFC 7983
/// classes with a plausible header) go no further.
fn screen<'a>(leg: &mut Leg, rules: &Rules<'_>, a: &Arrival<'a>) -> Result<MediaDatagram<'a>, DropReason> {
    if a.bytes.is_empty() {
        return Err(DropReason::Empty);
    }
    if !rules.policy.allows(a.src) {
        return Err(DropReason::SourcePolicy);
    }
    let datagram = MediaDatagram::parse(a.bytes).ok_or(DropReason::NotMedia)?;
    if datagram.class() == PacketClass::Rtcp {
        leg.stats.rtcp_packets_received += 1;
        leg.stats.rtcp_bytes_received += a.bytes.len() as u64;
    }
    Ok(datagram)
}

/// May this source send on this slot of the leg (and latch)?
fn admit_source(
    leg: &mut Leg,
    rules: &Rules<'_>,
    a: &Arrival<'_>,
    datagram: &MediaDatagram<'_>,
    slot: usize,
) -> Result<Admitted, DropReason> {
    let current = leg.remote[slot];
    if current.map(|c| c.addr) == Some(a.src) {
        return Ok(Admitted { new_source: false, rank: 0, verified: false });
    }
    let rank = leg.rank(slot, a.src);
    if leg.await_hint && leg.hint.is_none() {
        return Err(DropReason::NoHint);
    }
    // Never the relay itself — nor its RTCP neighbour, where the other
    // leg's RTCP would go (RTP port + 1).
    let rtcp_neighbour = (slot == 0 && leg.rtcp_port.is_some())
        .then(|| a.src.port().checked_add(1).map(|p| SocketAddr::new(a.src.ip(), p)))
        .flatten();
    if rules.policy.is_own(a.src) || rtcp_neighbour.is_some_and(|n| rules.policy.is_own(n)) {
        return Err(DropReason::RelayAddress);
    }
    let verified = match rules.latch {
        LatchPolicy::Open => false,
        LatchPolicy::Window => match current {
            None => false,
            // A source ranked above the holder (the hinted phone after a
            // stranger) takes the leg back at any time...
            Some(c) if rank > c.rank => false,
            // ...equal ranks may move only while the window is open.
            Some(c) if rules.in_window && rank == c.rank => false,
            Some(_) => return Err(DropReason::SourceMismatch),
        },
        LatchPolicy::Authenticated => authenticate(leg, a, datagram)?,
    };
    // Latching happens once every check has passed (`accept`).
    Ok(Admitted { new_source: true, rank, verified })
}

/// `authenticated` latching: a new source proves itself (SRTP/SRTCP tag or
/// STUN integrity, fresh) within the leg's budget of failed proofs, or did
/// so with STUN moments ago (ICE). Returns whether this packet was verified.
fn authenticate(leg: &mut Leg, a: &Arrival<'_>, datagram: &MediaDatagram<'_>) -> Result<bool, DropReason> {
    if leg.is_proven(a.now, a.src) {
        return Ok(false);
    }
    if !leg.budget.may_try(a.now, a.src.ip()) {
        return Err(DropReason::ProofBackoff);
    }
    match prove(leg, datagram) {
        Proof::Valid => {
            leg.budget.handle_success(a.src.ip());
            if datagram.class() == PacketClass::Stun {
                leg.handle_stun_proof(a.now, a.src);
            }
            Ok(true)
        }
        Proof::Stale => Err(DropReason::Replay),
        Proof::Invalid { checked } => {
            if checked {
                leg.budget.handle_failure(a.now, a.src.ip());
            }
            Err(DropReason::Unauthenticated)
        }
    }
}

/// The source is accepted: latch it, and track indexes and quality (even
/// if the packet cannot be delivered yet).
fn accept(leg: &mut Leg, other: &Leg, a: &Arrival<'_>, datagram: &MediaDatagram<'_>, slot: usize, admitted: &Admitted) {
    if admitted.new_source {
        if leg.remote[slot].is_some() {
            leg.stats.relatches += 1;
        } else {
            leg.stats.latches += 1;
        }
        leg.remote[slot] = Some(Latched { addr: a.src, rank: admitted.rank });
    }
    if datagram.class() == PacketClass::Rtcp {
        leg.last_rtcp = Some(a.now);
    } else {
        leg.last_rtp = Some(a.now);
    }
    match datagram.class() {
        PacketClass::Rtp => {
            let Some(h) = datagram.rtp() else { return };
            leg.last_ssrc = Some(h.ssrc());
            if leg.auth.is_some() {
                leg.replay.record_srtp_seq(h.ssrc(), h.sequence());
            }
            if let Some(q) = leg.quality.as_mut() {
                q.handle_rtp(a.now, h.ssrc(), h.sequence(), h.timestamp());
            }
        }
        PacketClass::Rtcp => {
            let Some(h) = datagram.rtcp() else { return };
            if let Some(auth) = &leg.auth {
                if let Ok((_, index)) = h.srtcp_index(auth.rtcp.tag_len().bytes()) {
                    leg.replay.record_srtcp(h.ssrc(), index);
                }
            }
            // Report blocks of plain RTCP only (SRTCP's are encrypted).
            if let (Some(q), None) = (leg.quality.as_mut(), &leg.auth) {
                if let Ok(reports) = PlainReports::parse(h.bytes()) {
                    q.handle_rtcp(a.now, &reports, other.quality.as_deref());
                }
            }
        }
        PacketClass::Stun if !admitted.verified => {
            if let Some(m) = datagram.stun() {
                remember_consent(leg, a, &m);
            }
        }
        _ => {}
    }
}

/// Remembers the ids of *verified* STUN requests from the latched address,
/// so one captured there can never re-latch elsewhere (unverified requests
/// are never stored: they could flush nothing); a fresh consent check
/// renews the source's proof.
fn remember_consent(leg: &mut Leg, a: &Arrival<'_>, m: &StunMessage<'_>) {
    if let Some(key) = &leg.stun_key {
        if m.class() == StunClass::Request
            && m.verify_integrity(key)
            && leg.stun_replay.check_and_insert(m.transaction_id())
        {
            leg.handle_stun_proof(a.now, a.src);
        }
    }
}

/// Where it goes. RTCP is RTCP whichever port it came in on (a multiplexing
/// remote sends it on the RTP port); everything else keeps its component
/// (STUN for ICE component 2, say). Rate limits apply last, only to packets
/// that passed the source checks, so spoofed floods cannot starve the
/// genuine stream.
fn route(
    leg: &mut Leg,
    other: &Leg,
    a: &Arrival<'_>,
    class: PacketClass,
) -> Result<(RelayPort, SocketAddr), DropReason> {
    if leg.blocked {
        return Err(DropReason::Blocked);
    }
    let out_component = if class == PacketClass::Rtcp { Component::Rtcp } else { a.component };
    let to = other.destination(other.out_slot(out_component)).ok_or(DropReason::NoDestination)?;
    let via = other.out_port(out_component);
    if let Some(b) = leg.pps.as_mut() {
        if !b.try_take(a.now, 1) {
            return Err(DropReason::RateLimited);
        }
    }
    if let Some(b) = leg.bps.as_mut() {
        if !b.try_take(a.now, a.bytes.len() as u64) {
            return Err(DropReason::ByteRateLimited);
        }
    }
    Ok((via, to))
}

/// Outcome of checking a packet's proof of origin.
enum Proof {
    Valid,
    Stale,
    /// No valid proof; `checked` when an HMAC was computed (a guess that
    /// costs the leg's budget).
    Invalid {
        checked: bool,
    },
}

/// Checks whether a packet from a new source proves it belongs to the leg.
fn prove(leg: &mut Leg, datagram: &MediaDatagram<'_>) -> Proof {
    const UNCHECKED: Proof = Proof::Invalid { checked: false };
    const CHECKED: Proof = Proof::Invalid { checked: true };
    match datagram.class() {
        PacketClass::Rtp => {
            let (Some(auth), Some(h)) = (&leg.auth, datagram.rtp()) else {
                return UNCHECKED;
            };
            for index in leg.replay.srtp_candidates(h.ssrc(), h.sequence()).into_iter().flatten() {
                if auth.rtp.verify_srtp_header(&h, (index >> 16) as u32) {
                    if !leg.replay.srtp_is_fresh(h.ssrc(), index) {
                        return Proof::Stale;
                    }
                    leg.replay.record_srtp_index(h.ssrc(), index);
                    return Proof::Valid;
                }
            }
            CHECKED
        }
        PacketClass::Rtcp => {
            let (Some(auth), Some(h)) = (&leg.auth, datagram.rtcp()) else {
                return UNCHECKED;
            };
            let Some(index) = auth.rtcp.verify_srtcp_header(&h) else {
                return CHECKED;
            };
            if !leg.replay.srtcp_is_fresh(h.ssrc(), index) {
                return Proof::Stale;
            }
            leg.replay.record_srtcp(h.ssrc(), index);
            Proof::Valid
        }
        PacketClass::Stun => {
            let (Some(key), Some(m)) = (&leg.stun_key, datagram.stun()) else {
                return UNCHECKED;
            };
            if m.class() != StunClass::Request {
                return UNCHECKED;
            }
            if !m.verify_integrity(key) {
                return CHECKED;
            }
            if !leg.stun_replay.check_and_insert(m.transaction_id()) {
                return Proof::Stale;
            }
            Proof::Valid
        }
        _ => UNCHECKED,
    }
}

/// `verify = all` check of a packet from the latched source: SRTP and
/// SRTCP must carry a valid tag (anything else, or a leg without keys,
/// passes).
fn verify_tag(leg: &mut Leg, datagram: &MediaDatagram<'_>) -> bool {
    let Some(auth) = &leg.auth else {
        return true;
    };
    match datagram.class() {
        PacketClass::Rtp => datagram.rtp().is_some_and(|h| {
            let candidates = leg.replay.srtp_candidates(h.ssrc(), h.sequence());
            candidates.into_iter().flatten().any(|i| auth.rtp.verify_srtp_header(&h, (i >> 16) as u32))
        }),
        PacketClass::Rtcp => datagram.rtcp().is_some_and(|h| auth.rtcp.verify_srtcp_header(&h).is_some()),
        _ => true,
    }
}
