//! Per-SSRC highest packet index, for the SRTP rollover estimate and the
//! replay guard of authenticated re-latching.

use crate::wire::srtp_auth::estimate_index;

/// SSRCs remembered per leg.
pub const MAX_REPLAY_SSRCS: usize = 8;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    ssrc: u32,
    srtp_highest: Option<u64>,
    srtcp_highest: Option<u32>,
    used: u64,
}

/// Highest SRTP index and SRTCP index seen per SSRC.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    entries: Vec<Entry>,
    clock: u64,
}

impl ReplayGuard {
    fn entry(&mut self, ssrc: u32) -> &mut Entry {
        self.clock += 1;
        let clock = self.clock;
        let pos = match self.entries.iter().position(|e| e.ssrc == ssrc) {
            Some(p) => p,
            None if self.entries.len() < MAX_REPLAY_SSRCS => {
                self.entries.push(Entry { ssrc, ..Entry::default() });
                self.entries.len() - 1
            }
            None => {
                let (p, _) =
                    self.entries.iter().enumerate().min_by_key(|(_, e)| e.used).unwrap_or((0, &Entry::default()));
                self.entries[p] = Entry { ssrc, ..Entry::default() };
                p
            }
        };
        let e = &mut self.entries[pos];
        e.used = clock;
        e
    }

    /// Candidate SRTP indexes for `seq`, most likely first (the RFC 3711
    /// estimate, then one rollover either side). Unknown SSRCs start at ROC 0.
    pub fn srtp_candidates(&self, ssrc: u32, seq: u16) -> [Option<u64>; 3] {
        let highest = self.entries.iter().find(|e| e.ssrc == ssrc).and_then(|e| e.srtp_highest);
        match highest.and_then(|h| estimate_index(h, seq)) {
            Some(i) => [Some(i), i.checked_add(1 << 16), i.checked_sub(1 << 16)],
            None => [Some(u64::from(seq)), Some(u64::from(seq) + (1 << 16)), None],
        }
    }

    /// Whether an SRTP index is newer than every index seen for the SSRC.
    pub fn srtp_is_fresh(&self, ssrc: u32, index: u64) -> bool {
        match self.entries.iter().find(|e| e.ssrc == ssrc).and_then(|e| e.srtp_highest) {
            Some(h) => index > h,
            None => true,
        }
    }

    /// Whether an SRTCP index is newer than every index seen for the SSRC.
    pub fn srtcp_is_fresh(&self, ssrc: u32, index: u32) -> bool {
        match self.entries.iter().find(|e| e.ssrc == ssrc).and_then(|e| e.srtcp_highest) {
            Some(h) => index > h,
            None => true,
        }
    }

    /// Records an accepted SRTP packet by sequence number (index estimated).
    pub fn record_srtp_seq(&mut self, ssrc: u32, seq: u16) {
        let e = self.entry(ssrc);
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
        let e = self.entry(ssrc);
        if e.srtp_highest.is_none_or(|h| index > h) {
            e.srtp_highest = Some(index);
        }
    }

    /// Records an accepted SRTCP packet's index.
    pub fn record_srtcp(&mut self, ssrc: u32, index: u32) {
        let e = self.entry(ssrc);
        if e.srtcp_highest.is_none_or(|h| index > h) {
            e.srtcp_highest = Some(index);
        }
    }
}

/// Recently seen STUN transaction ids, to refuse replayed requests.
#[derive(Debug, Clone, Default)]
pub struct StunReplay {
    ids: Vec<[u8; 12]>,
    next: usize,
}

/// STUN transaction ids remembered per leg.
pub const STUN_IDS_REMEMBERED: usize = 64;

impl StunReplay {
    /// Returns `true` if `id` was seen before; otherwise remembers it.
    pub fn check_and_insert(&mut self, id: &[u8]) -> bool {
        let Ok(id) = <[u8; 12]>::try_from(id) else {
            return true;
        };
        if self.ids.contains(&id) {
            return true;
        }
        if self.ids.len() < STUN_IDS_REMEMBERED {
            self.ids.push(id);
        } else {
            self.ids[self.next] = id;
            self.next = (self.next + 1) % STUN_IDS_REMEMBERED;
        }
        false
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
    fn stun_ids_are_remembered() {
        let mut r = StunReplay::default();
        assert!(!r.check_and_insert(&[1; 12]));
        assert!(r.check_and_insert(&[1; 12]));
        assert!(r.check_and_insert(&[1; 3]), "malformed ids count as seen");
    }
}
