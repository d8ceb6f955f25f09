//! Single-use, short-lived tickets that pair a connector's data connection
//! with the endpoint connection waiting for it. Sans-IO: time and
//! randomness come from the caller. Only SHA-256 hashes of tickets are
//! kept; redeemed and expired tickets are remembered for one more TTL so a
//! replay is reported as such (`reused`, `expired`) rather than `unknown`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// Never issued (or forgotten long ago).
    Unknown,
    /// Issued but presented after its TTL.
    Expired,
    /// Already redeemed.
    Reused,
}

impl TicketError {
    /// Stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketError::Unknown => "ticket_unknown",
            TicketError::Expired => "ticket_expired",
            TicketError::Reused => "ticket_reused",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Spent {
    Redeemed,
    Expired,
}

/// The ticket table.
#[derive(Debug)]
pub struct Tickets {
    ttl: Duration,
    max_pending: usize,
    pending: HashMap<[u8; 32], (Instant, u64)>,
    spent: HashMap<[u8; 32], (Instant, Spent)>,
    spent_order: VecDeque<[u8; 32]>,
    next_id: u64,
    /// Waiter ids of tickets expired since `handle_timeout` last returned them.
    expired_ids: Vec<u64>,
}

fn hash(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

fn encode(random: &[u8; 16]) -> String {
    // base64url without padding: 22 characters for 128 bits.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = String::with_capacity(22);
    for b in random {
        bits = (bits << 8) | u32::from(*b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

impl Tickets {
    /// Tickets valid for `ttl`; at most `max_pending` outstanding.
    pub fn new(ttl: Duration, max_pending: usize) -> Self {
        Self {
            ttl,
            max_pending,
            pending: HashMap::new(),
            spent: HashMap::new(),
            spent_order: VecDeque::new(),
            next_id: 1,
            expired_ids: Vec::new(),
        }
    }

    /// Issues a ticket from 128 random bits; returns it and the waiter id it
    /// redeems to. `None` when `max_pending` tickets are outstanding.
    pub fn issue(&mut self, now: Instant, random: [u8; 16]) -> Option<(String, u64)> {
        if self.pending.len() >= self.max_pending {
            self.expire(now);
        }
        if self.pending.len() >= self.max_pending {
            return None;
        }
        let ticket = encode(&random);
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(hash(&ticket), (now + self.ttl, id));
        Some((ticket, id))
    }

    /// Redeems a ticket once.
    pub fn redeem(&mut self, now: Instant, ticket: &str) -> Result<u64, TicketError> {
        let h = hash(ticket);
        if let Some((expires, id)) = self.pending.remove(&h) {
            if now >= expires {
                self.remember(now, h, Spent::Expired);
                return Err(TicketError::Expired);
            }
            self.remember(now, h, Spent::Redeemed);
            return Ok(id);
        }
        match self.spent.get(&h) {
            Some((_, Spent::Redeemed)) => Err(TicketError::Reused),
            Some((_, Spent::Expired)) => Err(TicketError::Expired),
            None => Err(TicketError::Unknown),
        }
    }

    /// Cancels a ticket whose endpoint went away (redeeming it later is `expired`).
    pub fn cancel(&mut self, now: Instant, ticket: &str) {
        let h = hash(ticket);
        if self.pending.remove(&h).is_some() {
            self.remember(now, h, Spent::Expired);
        }
    }

    fn remember(&mut self, now: Instant, h: [u8; 32], how: Spent) {
        if self.spent.insert(h, (now + self.ttl, how)).is_none() {
            self.spent_order.push_back(h);
        }
        while self.spent_order.len() > 2 * self.max_pending {
            if let Some(old) = self.spent_order.pop_front() {
                self.spent.remove(&old);
            }
        }
    }

    /// Expires pending tickets and forgets old spent ones; returns the
    /// waiter ids of every ticket that expired since the last call (their
    /// waiters can go).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<u64> {
        self.expire(now);
        std::mem::take(&mut self.expired_ids)
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<[u8; 32]> = self.pending.iter().filter(|(_, (exp, _))| now >= *exp).map(|(h, _)| *h).collect();
        for h in expired {
            if let Some((_, id)) = self.pending.remove(&h) {
                self.expired_ids.push(id);
            }
            self.remember(now, h, Spent::Expired);
        }
        while let Some(h) = self.spent_order.front().copied() {
            match self.spent.get(&h) {
                Some((forget_at, _)) if now < *forget_at => break,
                _ => {
                    self.spent_order.pop_front();
                    self.spent.remove(&h);
                }
            }
        }
    }

    /// Outstanding tickets.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_redeems_once_then_is_reused_and_late_ones_are_expired() {
        let mut t = Tickets::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let (a, id) = t.issue(t0, [1; 16]).expect("issued");
        assert_eq!(a.len(), 22);
        assert_eq!(t.redeem(t0 + Duration::from_secs(1), &a), Ok(id));
        assert_eq!(t.redeem(t0 + Duration::from_secs(2), &a), Err(TicketError::Reused));
        let (b, _) = t.issue(t0, [2; 16]).expect("issued");
        assert_eq!(t.redeem(t0 + Duration::from_secs(10), &b), Err(TicketError::Expired));
        let (c, _) = t.issue(t0, [3; 16]).expect("issued");
        t.handle_timeout(t0 + Duration::from_secs(11));
        assert_eq!(t.redeem(t0 + Duration::from_secs(12), &c), Err(TicketError::Expired));
        assert_eq!(t.redeem(t0, "AAAAAAAAAAAAAAAAAAAAAA"), Err(TicketError::Unknown));
        // Spent tickets are forgotten after another TTL (memory stays bounded).
        t.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(t.redeem(t0 + Duration::from_secs(60), &a), Err(TicketError::Unknown));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn outstanding_tickets_are_capped_and_cancel_frees_a_place() {
        let mut t = Tickets::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let (a, _) = t.issue(t0, [1; 16]).expect("1");
        t.issue(t0, [2; 16]).expect("2");
        assert!(t.issue(t0, [3; 16]).is_none());
        t.cancel(t0, &a);
        assert!(t.issue(t0, [4; 16]).is_some());
        assert_eq!(t.redeem(t0, &a), Err(TicketError::Expired));
        assert_ne!(encode(&[0; 16]), encode(&[1; 16]));
    }
}
