//! One allocation's state (RFC 8656 §3): its client, relayed address,
//! credentials, lifetime, permissions and channels, each with its expiry
//! and cap. Expired entries are treated as absent and reused in place, so
//! nothing here needs a timer of its own.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::limits::RateBucket;
use super::proto::{ErrorCode, Family};
use crate::quota::QuotaPermit;

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client's 5-tuple as the server sees it: the listener it came in on
/// (the driver's index), its transport and its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// Transport.
    pub transport: Transport,
    /// The driver's listener index.
    pub listener: u16,
    /// The client's address (canonical).
    pub source: SocketAddr,
}

/// An allocation's relayed address by the socket that serves it: the
/// relayed port on the family's relay IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId {
    /// Family.
    pub family: super::proto::Family,
    /// Port.
    pub port: u16,
}

/// The key requests on an allocation are checked with (`Debug` hides it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKey {
    /// MESSAGE-INTEGRITY with the MD5 long-term key.
    Sha1([u8; 16]),
    /// MESSAGE-INTEGRITY-SHA256 with the SHA-256 long-term key (coturn's
    /// pairing of the two).
    Sha256([u8; 32]),
    /// MESSAGE-INTEGRITY-SHA256 with the MD5 long-term key: RFC 8489's
    /// key for a request that names no PASSWORD-ALGORITHM (§9.2.2).
    Sha256WithMd5Key([u8; 16]),
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntegrityKey::Sha1(_) => "Sha1(..)",
            IntegrityKey::Sha256(_) => "Sha256(..)",
            IntegrityKey::Sha256WithMd5Key(_) => "Sha256WithMd5Key(..)",
        })
    }
}

/// One permission: a peer IP and until when it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

/// One channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// Channel number.
    pub number: u16,
    /// Peer (canonical).
    pub peer: SocketAddr,
    /// Until when it holds.
    pub expires: Instant,
}

/// Why a channel cannot be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefusal {
    /// The number is bound to another peer, or the peer to another number.
    Conflict,
    /// The allocation holds as many channels as it may.
    Full,
}

/// A dual allocation's second relayed address (the other family's).
#[derive(Debug)]
pub struct SecondRelay {
    /// Its relayed socket.
    pub relay: RelayId,
    /// The relayed address clients are told.
    pub relayed: SocketAddr,
    /// When it expires unless refreshed (RFC 8656 §7.1: a Refresh naming
    /// one family refreshes that address alone).
    pub expires: Instant,
    /// Whether its socket is open.
    pub opened: bool,
    /// Ports tried for it so far that could not be opened.
    pub open_attempts: u8,
    /// Its share of the tenant's port quota (released when dropped).
    _quota: Option<QuotaPermit>,
}

impl SecondRelay {
    /// A second relayed address on `relay`, told as `relayed`, expiring at
    /// `expires`, holding `quota`.
    pub fn new(relay: RelayId, relayed: SocketAddr, expires: Instant, quota: Option<QuotaPermit>) -> Self {
        Self { relay, relayed, expires, opened: false, open_attempts: 0, _quota: quota }
    }
}

/// One allocation.
#[derive(Debug)]
pub struct Allocation {
    /// Its client.
    pub client: ClientKey,
    /// Its relayed socket.
    pub relay: RelayId,
    /// The relayed address clients are told.
    pub relayed: SocketAddr,
    /// Realm index in the settings.
    pub realm: usize,
    /// Username of its credentials.
    pub username: String,
    /// The key its requests are checked with.
    pub key: IntegrityKey,
    /// When its first relayed address expires unless refreshed (a dual
    /// allocation's second has its own).
    pub expires: Instant,
    /// The Allocate transaction it answers (a retransmission gets the same
    /// answer).
    pub allocate_txid: [u8; 12],
    /// Whether its relayed socket is open (until then it is answered
    /// nothing and relays nothing).
    pub opened: bool,
    /// RESERVATION-TOKEN its Allocate answer carries (EVEN-PORT with R).
    pub reservation_token: Option<u64>,
    /// Its second relayed address, of the other family (a dual
    /// allocation: ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §7.2).
    pub second: Option<SecondRelay>,
    /// Why the second family its Allocate asked for was not granted
    /// (answered in ADDRESS-ERROR-CODE).
    pub second_refused: Option<ErrorCode>,
    /// Whether its Allocate named the second family at the draft's code
    /// point (coturn's clients): the answer's ADDRESS-ERROR-CODE uses the
    /// draft's too.
    pub draft_code_points: bool,
    /// Whether any free port will do (not an EVEN-PORT or reserved one):
    /// then a port that cannot be opened is exchanged for another.
    pub any_port: bool,
    /// Ports tried for it so far that could not be opened.
    pub open_attempts: u8,
    /// A TCP allocation (RFC 6062): a listening socket on the relayed
    /// address, peer connections instead of datagrams.
    pub tcp: bool,
    /// Its peer connections (TCP allocations), dialing, waiting or bound.
    pub connections: usize,
    /// Taken over from another node (its port reopened; no client waits
    /// for an answer).
    pub restored: bool,
    /// Bytes it may relay.
    pub rate: RateBucket,
    /// Datagrams and bytes relayed client → peer.
    pub to_peer: (u64, u64),
    /// Datagrams and bytes relayed peer → client.
    pub to_client: (u64, u64),
    /// Whether its channels went to the kernel (its byte budget with them).
    pub offloaded: bool,
    /// The route last announced to the kernel for each channel: (number,
    /// peer, deadline).
    pub(crate) announced: Vec<(u16, SocketAddr, Instant)>,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// Its share of the tenant's port quota (released when dropped).
    _quota: Option<QuotaPermit>,
}

impl Allocation {
    /// A new allocation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: ClientKey,
        relay: RelayId,
        relayed: SocketAddr,
        realm: usize,
        username: String,
        key: IntegrityKey,
        expires: Instant,
        allocate_txid: [u8; 12],
        rate: RateBucket,
        quota: Option<QuotaPermit>,
    ) -> Self {
        Self {
            client,
            relay,
            relayed,
            realm,
            username,
            key,
            expires,
            allocate_txid,
            opened: false,
            reservation_token: None,
            second: None,
            second_refused: None,
            draft_code_points: false,
            any_port: false,
            open_attempts: 0,
            tcp: false,
            connections: 0,
            restored: false,
            rate,
            to_peer: (0, 0),
            to_client: (0, 0),
            offloaded: false,
            announced: Vec::new(),
            permissions: Vec::new(),
            channels: Vec::new(),
            _quota: quota,
        }
    }

    /// The relayed socket that reaches peers of `family`: its first one's,
    /// or its second one's once open.
    pub fn relay_for(&self, family: Family) -> Option<RelayId> {
        if self.relay.family == family {
            return Some(self.relay);
        }
        self.second.as_ref().filter(|s| s.opened && s.relay.family == family).map(|s| s.relay)
    }

    /// Until when its relayed address of `family` holds.
    pub fn expires_for(&self, family: Family) -> Instant {
        match &self.second {
            Some(second) if second.relay.family == family => second.expires,
            _ => self.expires,
        }
    }

    /// Until when any of its relayed addresses holds.
    pub fn last_expiry(&self) -> Instant {
        self.second.as_ref().map_or(self.expires, |s| s.expires.max(self.expires))
    }

    /// One family of a dual allocation was deleted: the permissions and
    /// channels of its peers go with it (RFC 8656 §7.1: the other
    /// family's stay), and its routes are forgotten.
    pub fn forget_family(&mut self, family: Family) {
        let other = |ip: IpAddr| Family::of_ip(ip) != family;
        self.permissions.retain(|p| other(p.ip));
        self.channels.retain(|c| other(c.peer.ip()));
        self.announced.retain(|(_, peer, _)| other(peer.ip()));
    }

    /// Its first relayed address went and `second` is its first now: the
    /// second's share of the tenant's quota is the one it holds.
    pub fn take_quota_of(&mut self, second: SecondRelay) {
        self._quota = second._quota;
    }

    /// Whether every relayed socket it waits for is open: then its
    /// Allocate is answered.
    pub fn ready(&self) -> bool {
        self.opened && self.second.as_ref().is_none_or(|s| s.opened)
    }

    /// Whether a permission for `ip` holds at `now`.
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes permissions for `ips` until `expires`: all or
    /// none (`false` when they would exceed `cap` live permissions).
    pub fn permit(&mut self, ips: &[IpAddr], now: Instant, expires: Instant, cap: usize) -> bool {
        self.permissions.retain(|p| p.expires > now);
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| !ips[..*i].contains(ip) && !self.permissions.iter().any(|p| p.ip == **ip))
            .count();
        if self.permissions.len() + new > cap {
            return false;
        }
        for ip in ips {
            match self.permissions.iter_mut().find(|p| p.ip == *ip) {
                Some(p) => p.expires = expires,
                None => self.permissions.push(Permission { ip: *ip, expires }),
            }
        }
        true
    }

    /// The live permissions at `now`: each peer IP and until when.
    pub fn permissions(&self, now: Instant) -> impl Iterator<Item = (IpAddr, Instant)> + '_ {
        self.permissions.iter().filter(move |p| p.expires > now).map(|p| (p.ip, p.expires))
    }

    /// Number of live permissions at `now`.
    pub fn permission_count(&self, now: Instant) -> usize {
        self.permissions.iter().filter(|p| p.expires > now).count()
    }

    /// Binds `number` to `peer` until `expires`, or refreshes the binding.
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
        expires: Instant,
        cap: usize,
    ) -> Result<(), BindRefusal> {
        // RFC 8656 §12: a number or peer stays reserved for 5 minutes after
        // its binding expires; keeping expired entries until their slot is
        // needed, and refusing conflicts with them, honours that.
        let quarantine = std::time::Duration::from_secs(300);
        let live_or_quarantined = |c: &Channel| c.expires.checked_add(quarantine).is_none_or(|end| end > now);
        if let Some(c) = self.channels.iter_mut().find(|c| c.number == number && c.peer == peer) {
            c.expires = expires;
            return Ok(());
        }
        // Every entry holding the number or the peer counts, not only the
        // first: one past its quarantine must not hide another that is not
        // (a peer on two channels, or a number on two peers, would follow).
        if self.channels.iter().any(|c| (c.number == number || c.peer == peer) && live_or_quarantined(c)) {
            return Err(BindRefusal::Conflict);
        }
        self.channels.retain(|c| c.number != number && c.peer != peer && live_or_quarantined(c));
        if self.channels.len() >= cap {
            return Err(BindRefusal::Full);
        }
        self.channels.push(Channel { number, peer, expires });
        Ok(())
    }

    /// The peer a live channel `number` is bound to.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels.iter().find(|c| c.number == number && c.expires > now).map(|c| c.peer)
    }

    /// The live channel bound to `peer`.
    pub fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels.iter().find(|c| c.peer == peer && c.expires > now).map(|c| c.number)
    }

    /// The live channels at `now`.
    pub fn channels(&self, now: Instant) -> impl Iterator<Item = &Channel> {
        self.channels.iter().filter(move |c| c.expires > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::turn::proto::Family;

    fn allocation(now: Instant) -> Allocation {
        let source: SocketAddr = "198.51.100.1:5000".parse().expect("addr");
        Allocation::new(
            ClientKey { transport: Transport::Udp, listener: 0, source },
            RelayId { family: Family::V4, port: 20000 },
            "203.0.113.1:20000".parse().expect("addr"),
            0,
            "user".into(),
            IntegrityKey::Sha1([0; 16]),
            now + Duration::from_secs(600),
            [0; 12],
            RateBucket::full(1000),
            None,
        )
    }

    #[test]
    fn permissions_expire_refresh_and_are_capped_all_or_none() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let t5 = t0 + Duration::from_secs(300);
        assert!(a.permit(&[ip("192.0.2.1"), ip("192.0.2.2")], t0, t5, 3));
        assert!(a.permits(ip("192.0.2.1"), t0) && !a.permits(ip("192.0.2.3"), t0));
        assert!(!a.permit(&[ip("192.0.2.3"), ip("192.0.2.4")], t0, t5, 3), "would exceed the cap");
        assert!(!a.permits(ip("192.0.2.3"), t0), "all or none");
        assert!(a.permit(&[ip("192.0.2.3"), ip("192.0.2.3"), ip("192.0.2.1")], t0, t5, 3), "repeats count once");
        assert!(!a.permits(ip("192.0.2.1"), t5), "expired");
        assert!(a.permit(&[ip("192.0.2.9")], t5, t5 + Duration::from_secs(300), 3), "expired ones free their place");
        assert_eq!(a.permission_count(t5), 1);
    }

    #[test]
    fn channels_conflict_refresh_quarantine_and_cap() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let p1: SocketAddr = "192.0.2.1:1000".parse().expect("addr");
        let p2: SocketAddr = "192.0.2.2:1000".parse().expect("addr");
        let t10 = t0 + Duration::from_secs(600);
        assert_eq!(a.bind_channel(0x4000, p1, t0, t10, 2), Ok(()));
        assert_eq!(a.bind_channel(0x4000, p2, t0, t10, 2), Err(BindRefusal::Conflict));
        assert_eq!(a.bind_channel(0x4001, p1, t0, t10, 2), Err(BindRefusal::Conflict));
        assert_eq!(a.bind_channel(0x4000, p1, t0, t10 + Duration::from_secs(1), 2), Ok(()), "refresh");
        assert_eq!(a.channel_peer(0x4000, t0), Some(p1));
        assert_eq!(a.channel_of(p1, t0), Some(0x4000));
        assert_eq!(a.bind_channel(0x4001, p2, t0, t10, 2), Ok(()));
        let p3: SocketAddr = "192.0.2.3:1000".parse().expect("addr");
        assert_eq!(a.bind_channel(0x4002, p3, t0, t10, 2), Err(BindRefusal::Full));
        // Expired but quarantined: the number still cannot move to p3.
        let later = t10 + Duration::from_secs(2);
        assert_eq!(a.channel_peer(0x4000, later), None);
        assert_eq!(a.bind_channel(0x4000, p3, later, later + Duration::from_secs(600), 3), Err(BindRefusal::Conflict));
        // After the quarantine it can.
        let after = t10 + Duration::from_secs(302);
        assert_eq!(a.bind_channel(0x4000, p3, after, after + Duration::from_secs(600), 3), Ok(()));
        assert_eq!(a.channels(after).count(), 1);
    }

    #[test]
    fn a_binding_past_quarantine_never_hides_one_that_is_not() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let (pa, pb) = ("192.0.2.1:1000".parse().expect("addr"), "192.0.2.2:1000".parse().expect("addr"));
        // 0x4000 → A expires early; 0x4001 → B later.
        assert_eq!(a.bind_channel(0x4000, pa, t0, t0 + Duration::from_secs(10), 4), Ok(()));
        assert_eq!(a.bind_channel(0x4001, pb, t0, t0 + Duration::from_secs(600), 4), Ok(()));
        // A's binding is past its quarantine, B's is live: binding B's peer
        // to A's old number would put B on two channels.
        let t = t0 + Duration::from_secs(400);
        assert_eq!(a.bind_channel(0x4000, pb, t, t + Duration::from_secs(600), 4), Err(BindRefusal::Conflict));
        // And A's peer on B's live number is refused too.
        assert_eq!(a.bind_channel(0x4001, pa, t, t + Duration::from_secs(600), 4), Err(BindRefusal::Conflict));
        // A's old number to a new peer is fine: the old entry goes.
        let pc: SocketAddr = "192.0.2.3:1000".parse().expect("addr");
        assert_eq!(a.bind_channel(0x4000, pc, t, t + Duration::from_secs(600), 4), Ok(()));
        let live: Vec<(u16, SocketAddr)> = a.channels(t).map(|c| (c.number, c.peer)).collect();
        assert_eq!(live, vec![(0x4001, pb), (0x4000, pc)]);
    }
}
