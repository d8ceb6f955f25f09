//! Replay memory of authenticated re-latching: the highest SRTP/SRTCP index
//! per SSRC, the STUN transaction ids already used, and the budget of failed
//! proofs.
//!
//! Nothing here is ever evicted by traffic: an attacker who sends many
//! SSRCs, many requests or many guesses cannot make the relay forget what a
//! captured packet would need to be refused. Memory is bounded instead by a
//! capacity; past it the relay refuses proofs it can no longer check
//! (`replay`) rather than forgetting. New keys or a new STUN password start
//! a new memory (what was captured under the old ones no longer verifies).

use std::time::{Duration, Instant};

use crate::wire::srtp_auth::estimate_index;

/// SSRCs tracked per leg (a WebRTC bundle with simulcast and RTX uses a
/// dozen or two). Past this, unknown SSRCs cannot prove a re-latch.
pub const MAX_REPLAY_SSRCS: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    ssrc: u32,
    srtp_highest: Option<u64>,
    srtcp_highest: Option<u32>,
}

/// Highest SRTP index and SRTCP index seen per SSRC.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    entries: Vec<Entry>,
}

impl ReplayGuard {
    /// Every SSRC's highest indexes (for [`super::state`]).
    pub fn export(&self) -> Vec<super::state::ReplayState> {
        self.entries
            .iter()
            .map(|e| super::state::ReplayState {
                ssrc: e.ssrc,
                srtp_highest: e.srtp_highest,
                srtcp_highest: e.srtcp_highest,
            })
            .collect()
    }

    /// A guard that remembers `states` (at most [`MAX_REPLAY_SSRCS`]).
    pub fn restore(states: &[super::state::ReplayState]) -> Self {
        let entries = states
            .iter()
            .take(MAX_REPLAY_SSRCS)
            .map(|r| Entry { ssrc: r.ssrc, srtp_highest: r.srtp_highest, srtcp_highest: r.srtcp_highest })
            .collect();
        Self { entries }
    }

    fn find(&self, ssrc: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.ssrc == ssrc)
    }

    /// The entry of `ssrc`, created if there is room.
    fn entry(&mut self, ssrc: u32) -> Option<&mut Entry> {
        match self.entries.iter().position(|e| e.ssrc == ssrc) {
            Some(p) => Some(&mut self.entries[p]),
            None if self.entries.len() < MAX_REPLAY_SSRCS => {
                self.entries.push(Entry { ssrc, ..Entry::default() });
                self.entries.last_mut()
            }
            None => None,
        }
    }

    /// Whether the table is full (unknown SSRCs are no longer fresh).
    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_REPLAY_SSRCS
    }

    /// SSRCs tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Candidate SRTP indexes for `seq`, most likely first (the RFC 3711
    /// estimate, then one rollover either side). Unknown SSRCs start at ROC 0.
    pub fn srtp_candidates(&self, ssrc: u32, seq: u16) -> [Option<u64>; 3] {
        let highest = self.find(ssrc).and_then(|e| e.srtp_highest);
        match highest.and_then(|h| estimate_index(h, seq)) {
            Some(i) => [Some(i), i.checked_add(1 << 16), i.checked_sub(1 << 16)],
            None => [Some(u64::from(seq)), Some(u64::from(seq) + (1 << 16)), None],
        }
    }

    /// Whether an SRTP index is newer than every index seen for the SSRC.
    /// An SSRC never seen is fresh only while the table has room to
    /// remember it.
    pub fn srtp_is_fresh(&self, ssrc: u32, index: u64) -> bool {
        match self.find(ssrc) {
            Some(e) => e.srtp_highest.is_none_or(|h| index > h),
            None => !self.is_full(),
        }
    }

    /// Whether an SRTCP index is newer than every index seen for the SSRC.
    pub fn srtcp_is_fresh(&self, ssrc: u32, index: u32) -> bool {
        match self.find(ssrc) {
            Some(e) => e.srtcp_highest.is_none_or(|h| index > h),
            None => !self.is_full(),
        }
    }

    /// Records an accepted SRTP packet by sequence number (index estimated).
    pub fn record_srtp_seq(&mut self, ssrc: u32, seq: u16) {
        let Some(e) = self.entry(ssrc) else { return };
        let index = match e.srtp_highest {
            Some(h) => estimate_index(h, seq),
            None => Some(u64::from(seq)),
        };
        if let Some(i) = index {
            if e.srtp_highest.is_none_or(|h| i > h) {
                e.srtp_highest = Some(i);
            }
        }
    }

    /// Records an accepted SRTP packet whose full index is known.
    pub fn record_srtp_index(&mut self, ssrc: u32, index: u64) {
        let Some(e) = self.entry(ssrc) else { return };
        if e.srtp_highest.is_none_or(|h| index > h) {
            e.srtp_highest = Some(index);
        }
    }

    /// Records an accepted SRTCP packet's index.
    pub fn record_srtcp(&mut self, ssrc: u32, index: u32) {
        let Some(e) = self.entry(ssrc) else { return };
        if e.srtcp_highest.is_none_or(|h| index > h) {
            e.srtcp_highest = Some(index);
        }
    }
}

/// STUN transaction ids of *verified* requests (MESSAGE-INTEGRITY checked)
/// since the leg's STUN password was set.
///
/// A request captured anywhere and replayed later can never move the leg:
/// its id stays remembered however much traffic follows, because only
/// verified requests are stored (no stranger can flush the memory) and
/// nothing is evicted. When [`STUN_IDS_REMEMBERED`] ids are stored (an ICE
/// consent check every 5 s for ~5.7 hours), STUN can no longer prove a
/// re-latch until a new password arrives; SRTP proofs still can.
#[derive(Debug, Clone, Default)]
pub struct StunReplay {
    /// First 8 bytes of each id (ids are 96 random bits), sorted.
    ids: Vec<u64>,
}

/// Verified STUN transaction ids remembered per leg and password.
pub const STUN_IDS_REMEMBERED: usize = 4096;

fn fingerprint(id: &[u8]) -> Option<u64> {
    let id: [u8; 12] = id.try_into().ok()?;
    let mut first = [0u8; 8];
    first.copy_from_slice(&id[..8]);
    Some(u64::from_le_bytes(first))
}

impl StunReplay {
    /// Whether a verified request with transaction `id` may prove a
    /// re-latch: never seen, and memory left to remember it. Remembers it.
    pub fn check_and_insert(&mut self, id: &[u8]) -> bool {
        let Some(f) = fingerprint(id) else { return false };
        match self.ids.binary_search(&f) {
            Ok(_) => false,
            Err(_) if self.ids.len() >= STUN_IDS_REMEMBERED => false,
            Err(pos) => {
                self.ids.insert(pos, f);
                true
            }
        }
    }

    /// Remembers the id of a verified request from the latched address.
    pub fn remember(&mut self, id: &[u8]) {
        let _ = self.check_and_insert(id);
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A token bucket of failed proofs with an exponential back-off once empty.
#[derive(Debug, Clone)]
struct FailureBucket {
    /// Failures that may still happen now, in thousandths.
    milli_tokens: u64,
    burst: u32,
    rate: u32,
    last: Instant,
    backoff_until: Option<Instant>,
    next_backoff: Duration,
}

impl FailureBucket {
    fn new(now: Instant, burst: u32, rate: u32) -> Self {
        Self {
            milli_tokens: u64::from(burst) * 1000,
            burst,
            rate,
            last: now,
            backoff_until: None,
            next_backoff: PROOF_FIRST_BACKOFF,
        }
    }

    fn may_try(&self, now: Instant) -> bool {
        self.backoff_until.is_none_or(|t| now >= t)
    }

    fn handle_failure(&mut self, now: Instant) {
        if now > self.last {
            let ms = u64::try_from(now.duration_since(self.last).as_millis()).unwrap_or(u64::MAX);
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(ms.saturating_mul(u64::from(self.rate)))
                .min(u64::from(self.burst) * 1000);
            self.last = now;
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return;
        }
        self.backoff_until = now.checked_add(self.next_backoff);
        self.next_backoff = (self.next_backoff * 2).min(PROOF_MAX_BACKOFF);
    }

    fn handle_success(&mut self) {
        self.backoff_until = None;
        self.next_backoff = PROOF_FIRST_BACKOFF;
    }
}

/// Failed proofs one source (an IPv4 address or an IPv6 /64) may make at
/// once before it backs off.
pub const SOURCE_PROOF_BURST: u32 = 16;
/// Failed proofs per second one source may make in the long run.
pub const SOURCE_PROOF_RATE: u32 = 2;
/// Failed proofs a leg absorbs at once from all sources together.
pub const LEG_PROOF_BURST: u32 = 512;
/// Failed proofs per second a leg absorbs in the long run from all sources.
pub const LEG_PROOF_RATE: u32 = 64;
/// Failing sources tracked per leg (more rotate through; the leg-wide
/// budget bounds them together).
pub const TRACKED_FAILING_SOURCES: usize = 8;
/// First back-off once a budget is spent; doubles each time, up to
/// [`PROOF_MAX_BACKOFF`], and resets after a valid proof.
pub const PROOF_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
pub const PROOF_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A leg's budget of failed proofs (SRTP/SRTCP tags and STUN integrity that
/// did not verify): per source, and for the whole leg.
///
/// Guessing a 32-bit SRTP tag needs ~2³¹ tries: at [`SOURCE_PROOF_RATE`] per
/// source that takes decades, at [`LEG_PROOF_RATE`] from any number of
/// sources about a year — longer than any call — and the relay never spends
/// more than that many HMACs per second per leg on strangers. A source that
/// spent its budget is refused without any HMAC (`proof_backoff`) while it
/// backs off; other sources — the real endpoint roaming — are not, unless
/// many sources together spend the leg's budget. The latched source is never
/// affected.
#[derive(Debug, Clone)]
pub struct ProofBudget {
    leg: FailureBucket,
    sources: Vec<(std::net::IpAddr, FailureBucket)>,
}

impl ProofBudget {
    /// A full budget.
    pub fn new(now: Instant) -> Self {
        Self { leg: FailureBucket::new(now, LEG_PROOF_BURST, LEG_PROOF_RATE), sources: Vec::new() }
    }

    /// Whether `source` may try a proof now.
    pub fn may_try(&self, now: Instant, source: std::net::IpAddr) -> bool {
        let prefix = crate::peer::source_prefix(source);
        self.leg.may_try(now) && self.sources.iter().find(|(p, _)| *p == prefix).is_none_or(|(_, b)| b.may_try(now))
    }

    /// Counts one failed proof from `source`.
    pub fn handle_failure(&mut self, now: Instant, source: std::net::IpAddr) {
        let prefix = crate::peer::source_prefix(source);
        self.leg.handle_failure(now);
        let pos = match self.sources.iter().position(|(p, _)| *p == prefix) {
            Some(p) => p,
            None => {
                if self.sources.len() >= TRACKED_FAILING_SOURCES {
                    // Forget the source that is not backing off and failed longest ago.
                    let oldest = (0..self.sources.len())
                        .min_by_key(|&i| (self.sources[i].1.backoff_until.is_some(), self.sources[i].1.last))
                        .unwrap_or(0);
                    self.sources.swap_remove(oldest);
                }
                self.sources.push((prefix, FailureBucket::new(now, SOURCE_PROOF_BURST, SOURCE_PROOF_RATE)));
                self.sources.len() - 1
            }
        };
        self.sources[pos].1.handle_failure(now);
    }

    /// A valid proof from `source`: its back-off (and the leg's) start again
    /// from the first step.
    pub fn handle_success(&mut self, source: std::net::IpAddr) {
        let prefix = crate::peer::source_prefix(source);
        self.leg.handle_success();
        self.sources.retain(|(p, _)| *p != prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_rollover_and_freshness() {
        let mut g = ReplayGuard::default();
        for seq in [65533u16, 65534, 65535, 0, 1] {
            g.record_srtp_seq(9, seq);
        }
        assert!(!g.srtp_is_fresh(9, 65536 + 1));
        assert!(g.srtp_is_fresh(9, 65536 + 2));
        assert_eq!(g.srtp_candidates(9, 2)[0], Some(65536 + 2));
        assert!(g.srtp_is_fresh(10, 0), "unknown SSRC");
        g.record_srtcp(9, 5);
        assert!(!g.srtcp_is_fresh(9, 5));
        assert!(g.srtcp_is_fresh(9, 6));
    }

    #[test]
    fn many_ssrcs_never_evict_what_was_seen() {
        let mut g = ReplayGuard::default();
        g.record_srtp_seq(1, 500);
        for ssrc in 2..1000 {
            g.record_srtp_seq(ssrc, 7);
        }
        assert_eq!(g.len(), MAX_REPLAY_SSRCS);
        assert!(!g.srtp_is_fresh(1, 500), "the first SSRC is still remembered");
        assert!(!g.srtp_is_fresh(5000, 1), "a full table makes unknown SSRCs stale, not fresh");
        assert!(!g.srtcp_is_fresh(5000, 1));
    }

    #[test]
    fn stun_ids_are_remembered_and_never_flushed() {
        let mut r = StunReplay::default();
        assert!(r.check_and_insert(&[1; 12]));
        assert!(!r.check_and_insert(&[1; 12]));
        assert!(!r.check_and_insert(&[1; 3]), "malformed ids never prove");
        for i in 0..(STUN_IDS_REMEMBERED as u32 * 2) {
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[4] = 0xee;
            r.remember(&id);
        }
        assert!(!r.check_and_insert(&[1; 12]), "still remembered after thousands of newer ids");
        assert!(!r.check_and_insert(&[2; 12]), "full: STUN can no longer prove a re-latch");
    }

    #[test]
    fn the_proof_budget_backs_off_per_source_and_doubles() {
        let t0 = Instant::now();
        let attacker: std::net::IpAddr = "192.0.2.66".parse().expect("ip");
        let same_64: std::net::IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64_other: std::net::IpAddr = "2001:db8:1:2::99".parse().expect("ip");
        let phone: std::net::IpAddr = "198.51.100.7".parse().expect("ip");
        let mut b = ProofBudget::new(t0);
        for _ in 0..SOURCE_PROOF_BURST {
            assert!(b.may_try(t0, attacker));
            b.handle_failure(t0, attacker);
        }
        assert!(b.may_try(t0, attacker), "the burst is spent, not yet exceeded");
        b.handle_failure(t0, attacker);
        assert!(!b.may_try(t0, attacker));
        assert!(b.may_try(t0, phone), "another source is not affected");
        assert!(!b.may_try(t0 + Duration::from_millis(999), attacker));
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.may_try(t1, attacker));
        // 2 tokens came back in that second; the third failure doubles the back-off.
        for _ in 0..3 {
            b.handle_failure(t1, attacker);
        }
        assert!(!b.may_try(t1 + Duration::from_millis(1999), attacker));
        assert!(b.may_try(t1 + Duration::from_secs(2), attacker));
        b.handle_success(attacker);
        assert!(b.may_try(t1, attacker));
        // An IPv6 /64 is one source.
        for _ in 0..=SOURCE_PROOF_BURST {
            b.handle_failure(t0, same_64);
        }
        assert!(!b.may_try(t0, same_64_other));
    }

    #[test]
    fn many_sources_together_spend_the_leg_budget() {
        let t0 = Instant::now();
        let mut b = ProofBudget::new(t0);
        let phone: std::net::IpAddr = "198.51.100.7".parse().expect("ip");
        for i in 0..=LEG_PROOF_BURST {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.handle_failure(t0, ip);
        }
        assert!(!b.may_try(t0, phone), "the leg backs off once many sources spent its budget");
        assert!(b.sources.len() <= TRACKED_FAILING_SOURCES);
        assert!(b.may_try(t0 + PROOF_FIRST_BACKOFF, phone));
    }
}
