//! Byte budgets, in virtual time (`now` passed in):
//!
//! - [`SourceBudget`]: what the server may answer strangers (sources with
//!   no allocation and no valid credentials yet) per source prefix. Every
//!   byte received from a prefix is credited to it, and a slow refill plus
//!   a small burst come on top, so a spoofed source gets at most as many
//!   bytes back as it sent, plus the burst — **no amplification**. The
//!   prefixes share a fixed table of buckets (hashed with a per-process key
//!   an attacker cannot aim at), so strangers cost no memory each.
//! - [`RateBucket`]: the bytes per second one allocation may relay.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// `now + d`, for durations a configuration or a replicated record
/// carries: one too far to represent is held ten years off (never
/// reached), so no value can overflow the clock and panic a thread.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    now.checked_add(d).or_else(|| now.checked_add(FAR)).unwrap_or(now)
}

/// A token bucket of bytes, which may lend what it holds to another path
/// ([`hand_over`](Self::hand_over)) and owe bytes relayed there beyond the
/// loan ([`charge`](Self::charge)).
#[derive(Debug, Clone, Copy)]
pub struct RateBucket {
    tokens: u64,
    /// Bytes charged beyond what it held: refills repay them first.
    owed: u64,
    /// Bytes handed to another path that its reports have not spent yet:
    /// what it relays is paid from them first (they were this bucket's).
    lent: u64,
    at: Option<Instant>,
}

impl RateBucket {
    /// A full bucket (the first `burst` bytes pass at once).
    pub fn full(burst: u64) -> Self {
        Self { tokens: burst, owed: 0, lent: 0, at: None }
    }

    /// Refills at `per_second` up to `burst` since the last call.
    fn refill(&mut self, now: Instant, per_second: u64, burst: u64) {
        let elapsed = match self.at {
            Some(at) => now.saturating_duration_since(at),
            None => Duration::ZERO,
        };
        self.at = Some(now);
        let gained = (elapsed.as_micros().min(u128::from(u32::MAX)) as u64).saturating_mul(per_second) / 1_000_000;
        let repaid = gained.min(self.owed);
        self.owed -= repaid;
        self.tokens = self.tokens.saturating_add(gained - repaid).min(burst);
    }

    /// Charges `bytes` that were relayed elsewhere under this budget (the
    /// kernel's share of one allocation, reported after the fact): paid
    /// from what was handed over to it first, then taken from what the
    /// bucket holds, the rest owed — later refills repay it before
    /// anything passes here. So traffic split between two paths gets one
    /// rate, not one each, and no byte is paid for twice.
    pub fn charge(&mut self, now: Instant, bytes: u64, per_second: u64, burst: u64) {
        self.refill(now, per_second, burst);
        let paid = bytes.min(self.lent);
        self.lent -= paid;
        let bytes = bytes - paid;
        let held = bytes.min(self.tokens);
        self.tokens -= held;
        self.owed = self.owed.saturating_add(bytes - held);
    }

    /// Takes `bytes` when the bucket holds them.
    pub fn take(&mut self, now: Instant, bytes: u64, per_second: u64, burst: u64) -> bool {
        self.refill(now, per_second, burst);
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }

    /// Takes `bytes` on a stream that cannot drop them: at once when the
    /// bucket holds them, else all it holds and the time to wait before
    /// the rest is paid for (nothing refills until then). A zero rate
    /// waits a second at a time.
    pub fn pace(&mut self, now: Instant, bytes: u64, per_second: u64, burst: u64) -> Duration {
        self.refill(now, per_second, burst);
        if self.tokens >= bytes {
            self.tokens -= bytes;
            return Duration::ZERO;
        }
        let owed = bytes - self.tokens;
        self.tokens = 0;
        let wait = match per_second {
            0 => Duration::from_secs(1),
            rate => Duration::from_micros(owed.saturating_mul(1_000_000) / rate),
        };
        self.at = Some(later(now, wait));
        wait
    }

    /// Hands everything the bucket holds now to another holder (the
    /// kernel), leaving it empty: the budget moves, it is not doubled.
    /// It is lent: what that holder reports relaying is paid from it
    /// first. A new holder replaces the last (which ended: what it left
    /// unspent went with it).
    pub fn hand_over(&mut self, now: Instant, per_second: u64, burst: u64) -> u64 {
        self.refill(now, per_second, burst);
        self.lent = std::mem::take(&mut self.tokens);
        self.lent
    }

    /// Takes back `bytes` handed over that the other holder could not
    /// use (it never took them): no longer lent, held here again.
    pub fn take_back(&mut self, now: Instant, bytes: u64, per_second: u64, burst: u64) {
        self.lent = self.lent.saturating_sub(bytes);
        self.credit(now, bytes, per_second, burst);
    }

    /// Adds `bytes` (a debt first, then at most up to `burst`).
    pub fn credit(&mut self, now: Instant, bytes: u64, per_second: u64, burst: u64) {
        self.refill(now, per_second, burst);
        let repaid = bytes.min(self.owed);
        self.owed -= repaid;
        self.tokens = self.tokens.saturating_add(bytes - repaid).min(burst);
    }
}

/// Number of buckets strangers share.
const SOURCE_BUCKETS: usize = 4096;

/// Answer budgets for strangers, per source prefix (see the module docs).
#[derive(Debug)]
pub struct SourceBudget {
    buckets: Box<[RateBucket]>,
    hasher: RandomState,
    burst: u64,
    per_second: u64,
}

impl SourceBudget {
    /// Budgets of `burst` bytes refilled at `per_second`, on top of what
    /// each prefix sends.
    pub fn new(burst: u64, per_second: u64) -> Self {
        Self {
            buckets: vec![RateBucket::full(burst); SOURCE_BUCKETS].into_boxed_slice(),
            hasher: RandomState::new(),
            burst,
            per_second,
        }
    }

    /// Credits `received` bytes from `source` and says whether an answer of
    /// `answer` bytes may go back to it (taking them when so).
    pub fn admit(&mut self, source: IpAddr, received: usize, answer: usize, now: Instant) -> bool {
        let prefix = crate::peer::source_prefix(source);
        let i = (self.hasher.hash_one(prefix) % SOURCE_BUCKETS as u64) as usize;
        let (burst, per_second) = (self.burst, self.per_second);
        let bucket = &mut self.buckets[i];
        // Credit up to the burst plus this answer, so an answer as large
        // as the request it answers always fits in a bucket.
        let cap = burst.saturating_add(answer as u64);
        bucket.credit(now, received as u64, per_second, cap);
        bucket.take(now, answer as u64, per_second, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_charged_from_elsewhere_are_repaid_before_anything_passes() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (rate, burst) = (1_000, 1_000);
        let mut b = RateBucket::full(burst);
        // 2 500 bytes relayed elsewhere: the 1 000 held, 1 500 owed.
        b.charge(at(0), 2_500, rate, burst);
        assert!(!b.take(at(0), 1, rate, burst));
        // 1.5 s of refill repays the debt and no more.
        assert!(!b.take(at(1_499), 1, rate, burst), "still owing");
        assert!(b.take(at(1_600), 100, rate, burst), "repaid, then 100 bytes of refill");
        assert!(!b.take(at(1_600), 1, rate, burst));
        // A debt repaid does not raise the bucket past its burst later.
        assert!(b.take(at(10_000), 1_000, rate, burst));
        assert!(!b.take(at(10_000), 1, rate, burst));
    }

    #[test]
    fn what_a_handed_over_budget_paid_for_is_not_charged_again() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (rate, burst) = (1_000, 1_000);
        let mut b = RateBucket::full(burst);
        assert_eq!(b.hand_over(at(0), rate, burst), 1_000, "the whole burst goes");
        // The other path spends 600 of the 1 000 it was handed: nothing is
        // owed here, 100 ms of refill passes 100 bytes.
        b.charge(at(100), 600, rate, burst);
        assert!(b.take(at(100), 100, rate, burst), "the loan paid for it");
        assert!(!b.take(at(100), 1, rate, burst));
        // 700 more: 400 from the loan's rest, 300 owed.
        b.charge(at(100), 700, rate, burst);
        assert!(!b.take(at(399), 1, rate, burst), "still owing");
        assert!(b.take(at(500), 100, rate, burst), "repaid, then 100 bytes of refill");
        // What the other path could not take comes back and is lent no
        // more: its later reports are owed in full.
        let mut b = RateBucket::full(burst);
        let lent = b.hand_over(at(0), rate, burst);
        b.take_back(at(0), lent, rate, burst);
        assert!(b.take(at(0), 1_000, rate, burst), "held here again");
        b.charge(at(0), 500, rate, burst);
        assert!(!b.take(at(499), 1, rate, burst), "owed: the loan was returned");
    }

    #[test]
    fn a_paced_stream_waits_exactly_for_what_it_owes() {
        let t0 = Instant::now();
        let mut b = RateBucket::full(1000);
        assert_eq!(b.pace(t0, 600, 1000, 1000), Duration::ZERO, "within the burst");
        // 400 left: 1 000 bytes owe 600, paid at 1 000/s.
        assert_eq!(b.pace(t0, 1000, 1000, 1000), Duration::from_millis(600));
        // Nothing refills during the wait: right after it, the next 500
        // bytes owe all of themselves.
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!(b.pace(t1, 500, 1000, 1000), Duration::from_millis(500));
        // Over a long run the rate holds: 10 000 bytes in 100-byte
        // writes take 10 s less the burst's second.
        let mut b = RateBucket::full(1000);
        let mut now = t0;
        for _ in 0..100 {
            now += b.pace(now, 100, 1000, 1000);
        }
        assert_eq!(now - t0, Duration::from_secs(9));
        assert_eq!(RateBucket::full(0).pace(t0, 1, 0, 0), Duration::from_secs(1), "no rate: wait and try again");
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = RateBucket::full(1000);
        assert!(b.take(t0, 1000, 100, 1000));
        assert!(!b.take(t0, 1, 100, 1000));
        assert!(b.take(t0 + Duration::from_secs(1), 100, 100, 1000));
        assert!(!b.take(t0 + Duration::from_secs(1), 1, 100, 1000));
        // A long pause refills to the burst, not beyond.
        assert!(!b.take(t0 + Duration::from_secs(100), 1001, 100, 1000));
        assert!(b.take(t0 + Duration::from_secs(100), 1000, 100, 1000));
    }

    #[test]
    fn a_flood_gets_back_at_most_what_it_sent_plus_the_burst() {
        let t0 = Instant::now();
        let mut budget = SourceBudget::new(2000, 1000);
        let victim: IpAddr = "198.51.100.7".parse().expect("ip");
        let (mut sent, mut answered) = (0u64, 0u64);
        // 100 000 requests of 28 bytes in 10 virtual seconds, each asking
        // for a 116-byte answer.
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            sent += 28;
            if budget.admit(victim, 28, 116, now) {
                answered += 116;
            }
        }
        assert!(answered <= sent + 2000 + 10 * 1000, "{answered} out for {sent} in");
        assert!(answered * 10 >= sent * 9, "legitimate repeats are still answered: {answered} for {sent}");
        // Another /64 of the same IPv6 subscriber shares the budget; the
        // next /64 has its own.
        let mut budget = SourceBudget::new(200, 0);
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2::2".parse().expect("ip");
        assert!(budget.admit(a, 0, 200, t0));
        assert!(!budget.admit(b, 0, 200, t0));
    }
}
