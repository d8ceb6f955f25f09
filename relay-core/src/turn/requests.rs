//! Requests: authentication with long-term credentials (RFC 8489 §9.2),
//! then Allocate, Refresh, CreatePermission and ChannelBind (RFC 8656
//! §7–§12). Every refusal is an error response with the RFC's code; only
//! what a stranger is answered is held to its prefix's budget.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::allocation::{Allocation, BindRefusal, ClientKey, IntegrityKey, RelayId, SecondRelay, Transport};
use super::answer::{challenge, Answer};
use super::auth::{long_term_key_md5, long_term_key_sha256, NonceCheck, MAX_USERNAME};
use super::limits::{later, RateBucket};
use super::proto::*;
use super::server::{ClientOutput, Command, Reservation, TurnNow, TurnServer};
use crate::wire::stun::{StunMessage, ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_USERNAME};
use crate::wire::stun_writer::ATTR_XOR_MAPPED_ADDRESS;

/// A request whose credentials verified.
pub(super) struct Authenticated {
    realm: usize,
    username: String,
    key: IntegrityKey,
}

/// A handled request: its answer now, or when its relayed port is open,
/// or what the driver is to do (a ConnectionBind's stream joined).
enum Handled {
    Reply(Vec<u8>),
    Pending,
    Output(ClientOutput),
}

/// Most attribute types listed in one UNKNOWN-ATTRIBUTES.
const MAX_UNKNOWN_LISTED: usize = 16;

fn txid_of(msg: &StunMessage<'_>) -> [u8; 12] {
    std::array::from_fn(|i| msg.transaction_id()[i])
}

fn text<'a>(msg: &StunMessage<'a>, kind: u16) -> Option<&'a str> {
    msg.attribute(kind).and_then(|a| std::str::from_utf8(a.value).ok())
}

impl TurnServer {
    pub(super) fn handle_request(
        &mut self,
        now: TurnNow,
        client: ClientKey,
        method: Method,
        msg: StunMessage<'_>,
    ) -> ClientOutput {
        let txid = txid_of(&msg);
        let unknown: Vec<u16> = msg
            .attributes()
            .map(|a| a.kind)
            .filter(|k| *k < 0x8000 && !KNOWN_REQUIRED.contains(k))
            .take(MAX_UNKNOWN_LISTED)
            .collect();
        if !unknown.is_empty() {
            let mut a = Answer::error(method, txid, ErrorCode::UnknownAttribute, None);
            let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
            a.writer().attribute(ATTR_UNKNOWN_ATTRIBUTES, &list);
            return self.unauthenticated(
                now.instant,
                client,
                &msg,
                method,
                Some(ErrorCode::UnknownAttribute),
                a.finish(),
            );
        }
        if method == Method::Binding {
            let mut a = Answer::success(Method::Binding, txid, None);
            a.writer().xor_address(ATTR_XOR_MAPPED_ADDRESS, client.source);
            return self.unauthenticated(now.instant, client, &msg, method, None, a.finish());
        }
        let auth = match self.authenticate(now, client, method, &msg) {
            Ok(auth) => auth,
            Err(out) => return out,
        };
        let key = auth.key;
        let handled = match method {
            Method::Allocate => self.allocate(now.instant, client, &msg, auth),
            Method::Refresh => self.refresh(now.instant, client, &msg, key),
            Method::CreatePermission => self.create_permission(now.instant, client, &msg, key),
            Method::ChannelBind => self.channel_bind(now.instant, client, &msg, key),
            Method::Connect => self.connect(now.instant, client, &msg, txid).map(Handled::Output),
            Method::ConnectionBind => {
                self.connection_bind(client, &msg, txid, auth.realm, &auth.username, key).map(Handled::Output)
            }
            _ => Err(ErrorCode::BadRequest),
        };
        match handled {
            Ok(Handled::Reply(message)) => {
                self.stats.answered(method, None);
                // Lifetimes, permissions and channels are replicated.
                if let Some(relay) = self.by_client.get(&client).copied() {
                    self.journal_changed(relay);
                    // And the kernel's routes follow their deadlines.
                    self.offload_channels(now.instant, relay);
                }
                ClientOutput::Reply(message)
            }
            Ok(Handled::Pending) => ClientOutput::Pending,
            Ok(Handled::Output(out)) => out,
            Err(code) => {
                self.stats.answered(method, Some(code));
                ClientOutput::Reply(Answer::error(method, txid, code, Some(key)).finish())
            }
        }
    }

    /// An answer to a request that proved no credentials: counted, and
    /// sent when the client has an allocation or its prefix's budget
    /// allows.
    fn unauthenticated(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &StunMessage<'_>,
        method: Method,
        code: Option<ErrorCode>,
        message: Vec<u8>,
    ) -> ClientOutput {
        self.stats.answered(method, code);
        if self.by_client.contains_key(&client) {
            return ClientOutput::Reply(message);
        }
        self.answer_stranger(now, client, msg.bytes().len(), message)
    }

    /// A 401 or 438 with the realm and a fresh nonce.
    fn challenge(
        &mut self,
        now: TurnNow,
        client: ClientKey,
        msg: &StunMessage<'_>,
        method: Method,
        code: ErrorCode,
        realm: usize,
    ) -> ClientOutput {
        let nonce = self.nonces.issue(client.source.ip(), now.unix_secs, self.settings.limits.nonce_lifetime);
        let message = challenge(method, txid_of(msg), code, &self.settings.realms[realm].name, &nonce);
        self.unauthenticated(now.instant, client, msg, method, Some(code), message)
    }

    fn authenticate(
        &mut self,
        now: TurnNow,
        client: ClientKey,
        method: Method,
        msg: &StunMessage<'_>,
    ) -> Result<Authenticated, ClientOutput> {
        let sha256 = msg.attribute(ATTR_MESSAGE_INTEGRITY_SHA256).is_some();
        if !sha256 && msg.attribute(ATTR_MESSAGE_INTEGRITY).is_none() {
            return Err(self.challenge(now, client, msg, method, ErrorCode::Unauthorized, 0));
        }
        let (Some(username), Some(realm_name), Some(nonce)) =
            (text(msg, ATTR_USERNAME), text(msg, ATTR_REALM), text(msg, ATTR_NONCE))
        else {
            let message = Answer::error(method, txid_of(msg), ErrorCode::BadRequest, None).finish();
            return Err(self.unauthenticated(now.instant, client, msg, method, Some(ErrorCode::BadRequest), message));
        };
        let Some(realm) = self.settings.realms.iter().position(|r| r.name == realm_name) else {
            return Err(self.challenge(now, client, msg, method, ErrorCode::Unauthorized, 0));
        };
        match self.nonces.check(nonce, client.source.ip(), now.unix_secs) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(self.challenge(now, client, msg, method, ErrorCode::StaleNonce, realm)),
            NonceCheck::Invalid => {
                return Err(self.challenge(now, client, msg, method, ErrorCode::Unauthorized, realm))
            }
        }
        if let Some(alloc) = self.by_client.get(&client).and_then(|r| self.allocations.get(r)) {
            // Requests on an allocation use the credentials that made it.
            if alloc.realm != realm || alloc.username != username {
                let message = Answer::error(method, txid_of(msg), ErrorCode::WrongCredentials, None).finish();
                return Err(self.unauthenticated(
                    now.instant,
                    client,
                    msg,
                    method,
                    Some(ErrorCode::WrongCredentials),
                    message,
                ));
            }
            let key = alloc.key;
            return match verifies(msg, &key) {
                true => Ok(Authenticated { realm, username: username.to_owned(), key }),
                false => Err(self.challenge(now, client, msg, method, ErrorCode::Unauthorized, realm)),
            };
        }
        let verified = (username.len() <= MAX_USERNAME)
            .then(|| self.keys(realm, username, now.unix_secs, sha256).into_iter().find(|k| verifies(msg, k)))
            .flatten();
        match verified {
            Some(key) => Ok(Authenticated { realm, username: username.to_owned(), key }),
            None => Err(self.challenge(now, client, msg, method, ErrorCode::Unauthorized, realm)),
        }
    }

    /// The keys `username` may hold in `realm` at `unix`: a static user's,
    /// and one per REST secret while its expiry is ahead. For
    /// MESSAGE-INTEGRITY-SHA256 both long-term keys are candidates: the
    /// MD5 one (RFC 8489 §9.2.2, no PASSWORD-ALGORITHM named) and the
    /// SHA-256 one (coturn's clients).
    fn keys(&self, realm: usize, username: &str, unix: u64, sha256: bool) -> Vec<IntegrityKey> {
        let r = &self.settings.realms[realm];
        let mut keys = Vec::new();
        let mut push = |md5: [u8; 16], sha: Option<[u8; 32]>| match sha256 {
            true => keys.extend(sha.map(IntegrityKey::Sha256).into_iter().chain([IntegrityKey::Sha256WithMd5Key(md5)])),
            false => keys.push(IntegrityKey::Sha1(md5)),
        };
        for u in r.users.iter().filter(|u| u.username == username) {
            push(u.key_md5, u.key_sha256);
        }
        if let Ok(passwords) = r.rest.passwords(username, unix) {
            for pw in passwords.iter() {
                push(long_term_key_md5(username, &r.name, pw), Some(long_term_key_sha256(username, &r.name, pw)));
            }
        }
        keys
    }

    /// The lifetime a request asks for, bounded (RFC 8656 §7.2, §7.3):
    /// zero stays zero, less than the default gets the default, more than
    /// the maximum gets the maximum.
    fn desired_lifetime(&self, msg: &StunMessage<'_>) -> Duration {
        let limits = self.settings.limits;
        let requested = msg
            .attribute(ATTR_LIFETIME)
            .and_then(|a| <[u8; 4]>::try_from(a.value).ok())
            .map(|v| Duration::from_secs(u64::from(u32::from_be_bytes(v))));
        match requested {
            Some(Duration::ZERO) => Duration::ZERO,
            Some(d) => d.min(limits.max_lifetime).max(limits.default_lifetime),
            None => limits.default_lifetime,
        }
    }

    fn allocate(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &StunMessage<'_>,
        auth: Authenticated,
    ) -> Result<Handled, ErrorCode> {
        let txid = txid_of(msg);
        if let Some(relay) = self.by_client.get(&client).copied() {
            let alloc = &self.allocations[&relay];
            return match (alloc.allocate_txid == txid, alloc.ready()) {
                // A retransmission: the same answer again.
                (true, true) => Ok(Handled::Reply(self.allocate_success(now, relay))),
                (true, false) => Ok(Handled::Pending),
                (false, _) => Err(ErrorCode::AllocationMismatch),
            };
        }
        let transport = msg.attribute(ATTR_REQUESTED_TRANSPORT).ok_or(ErrorCode::BadRequest)?;
        if transport.value.len() != 4 {
            return Err(ErrorCode::BadRequest);
        }
        // TCP allocations (RFC 6062 §5.1) are made over TCP or TLS only,
        // without EVEN-PORT, RESERVATION-TOKEN or DONT-FRAGMENT.
        let tcp = match transport.value[0] {
            TRANSPORT_UDP => false,
            TRANSPORT_TCP if client.transport != Transport::Udp => true,
            TRANSPORT_TCP => return Err(ErrorCode::BadRequest),
            _ => return Err(ErrorCode::UnsupportedTransport),
        };
        let even = msg.attribute(ATTR_EVEN_PORT);
        let token = msg.attribute(ATTR_RESERVATION_TOKEN);
        if tcp && (even.is_some() || token.is_some() || msg.attribute(ATTR_DONT_FRAGMENT).is_some()) {
            return Err(ErrorCode::BadRequest);
        }
        let requested = msg.attribute(ATTR_REQUESTED_ADDRESS_FAMILY);
        // RFC 8656's code point, or the draft's that coturn's clients use.
        let (additional, draft_code_points) = match msg.attribute(ATTR_ADDITIONAL_ADDRESS_FAMILY) {
            Some(a) => (Some(a), false),
            None => (msg.attribute(ATTR_ADDITIONAL_ADDRESS_FAMILY_DRAFT), true),
        };
        if token.is_some() && (even.is_some() || requested.is_some() || additional.is_some())
            || requested.is_some() && additional.is_some()
            // A dual allocation's EVEN-PORT is its IPv4 port's; a second
            // port reserved for a pair of them is not defined (coturn
            // refuses it the same way).
            || even.is_some_and(|e| e.value.first().is_some_and(|b| b & 0x80 != 0)) && additional.is_some()
        {
            return Err(ErrorCode::BadRequest);
        }
        let family = match requested {
            Some(a) => Family::from_attribute(a.value).ok_or(ErrorCode::AddressFamilyNotSupported)?,
            None => Family::V4,
        };
        // A dual allocation: IPv4 first, IPv6 second (RFC 8656 §7.2).
        let wants_second = match additional {
            Some(a) if Family::from_attribute(a.value) == Some(Family::V6) => true,
            Some(_) => return Err(ErrorCode::BadRequest),
            None => false,
        };
        let user = (auth.realm, auth.username.clone());
        if self.per_user.get(&user).copied().unwrap_or(0) >= self.settings.limits.allocations_per_user {
            return Err(ErrorCode::AllocationQuotaReached);
        }
        let quota = self.take_quota(auth.realm)?;
        let (relay, reservation_token) = match token {
            Some(t) => {
                let t = <[u8; 8]>::try_from(t.value).map_err(|_| ErrorCode::BadRequest)?;
                let reserved =
                    self.reservations.remove(&u64::from_be_bytes(t)).ok_or(ErrorCode::InsufficientCapacity)?;
                (reserved.relay, None)
            }
            None => {
                let reserve = even.and_then(|e| e.value.first()).is_some_and(|b| b & 0x80 != 0);
                self.take_port(now, family, even.is_some(), reserve, auth.realm)?
            }
        };
        let address = match relay.family {
            Family::V4 => self.settings.relay_v4,
            Family::V6 => self.settings.relay_v6,
        }
        .ok_or(ErrorCode::AddressFamilyNotSupported)?;
        let lifetime = self.desired_lifetime(msg).max(self.settings.limits.default_lifetime);
        let expires = now.checked_add(lifetime).ok_or(ErrorCode::BadRequest)?;
        let mut alloc = Allocation::new(
            client,
            relay,
            SocketAddr::new(address.advertised, relay.port),
            auth.realm,
            auth.username,
            auth.key,
            expires,
            txid,
            RateBucket::full(self.settings.limits.burst_bytes),
            quota,
        );
        alloc.reservation_token = reservation_token;
        alloc.draft_code_points = draft_code_points;
        let mut second_bind = None;
        if wants_second {
            // TCP allocations (RFC 6062) keep one family.
            let second = if tcp {
                Err(ErrorCode::AddressFamilyNotSupported)
            } else {
                self.take_second(now, expires, auth.realm)
            };
            match second {
                Ok((second, bind)) => {
                    self.second_relays.insert(second.relay, relay);
                    self.expiries.push(std::cmp::Reverse((expires, second.relay)));
                    second_bind = Some((second.relay, bind));
                    alloc.second = Some(second);
                }
                Err(code) => alloc.second_refused = Some(code),
            }
        }
        // A port picked at random may be retried elsewhere if it cannot be
        // opened; an even one or a reserved one may not.
        alloc.any_port = token.is_none() && even.is_none();
        alloc.tcp = tcp;
        self.allocations.insert(relay, alloc);
        self.by_client.insert(client, relay);
        *self.per_user.entry(user).or_default() += 1;
        self.expiries.push(std::cmp::Reverse((expires, relay)));
        let bind = SocketAddr::new(address.bind, relay.port);
        self.commands.push_back(match tcp {
            true => Command::ListenRelay { relay, bind },
            false => Command::OpenRelay { relay, bind },
        });
        if let Some((relay, bind)) = second_bind {
            self.commands.push_back(Command::OpenRelay { relay, bind });
        }
        Ok(Handled::Pending)
    }

    /// A dual allocation's IPv6 relayed address until `expires`, on a port
    /// of its own that holds a port of the tenant's quota too; where to
    /// bind it. Its error is what the answer's ADDRESS-ERROR-CODE says.
    fn take_second(
        &mut self,
        now: Instant,
        expires: Instant,
        realm: usize,
    ) -> Result<(SecondRelay, SocketAddr), ErrorCode> {
        let address = self.settings.relay_v6.ok_or(ErrorCode::AddressFamilyNotSupported)?;
        let quota = self.take_quota(realm)?;
        let (relay, _) = self.take_port(now, Family::V6, false, false, realm)?;
        let second = SecondRelay::new(relay, SocketAddr::new(address.advertised, relay.port), expires, quota);
        Ok((second, SocketAddr::new(address.bind, relay.port)))
    }

    /// One port of the realm's tenant quota, when quotas are kept.
    fn take_quota(&self, realm: usize) -> Result<Option<crate::quota::QuotaPermit>, ErrorCode> {
        match &self.quotas {
            Some(q) => q
                .acquire(&self.settings.realms[realm].tenant, 1)
                .map(Some)
                .map_err(|_| ErrorCode::AllocationQuotaReached),
            None => Ok(None),
        }
    }

    /// A free port of `family`: any, or an even one (keeping the odd one
    /// after it under a new reservation token when `reserve`).
    fn take_port(
        &mut self,
        now: Instant,
        family: Family,
        even: bool,
        reserve: bool,
        realm: usize,
    ) -> Result<(RelayId, Option<u64>), ErrorCode> {
        // The reserved port counts against the tenant's quota too.
        let reservation_quota = if reserve { Some(self.take_quota(realm)?) } else { None };
        let pool = match family {
            Family::V4 => &mut self.ports_v4,
            Family::V6 => &mut self.ports_v6,
        };
        if pool.len() == 0 {
            return Err(ErrorCode::AddressFamilyNotSupported);
        }
        if !even {
            let port = pool.take_single(&mut self.rng).ok_or(ErrorCode::InsufficientCapacity)?;
            return Ok((RelayId { family, port }, None));
        }
        let port = pool.take_pair(&mut self.rng).ok_or(ErrorCode::InsufficientCapacity)?;
        let odd = RelayId { family, port: port + 1 };
        let Some(quota) = reservation_quota else {
            pool.release(odd.port);
            return Ok((RelayId { family, port }, None));
        };
        let token = self.rng.u64(..);
        let expires = later(now, self.settings.limits.reservation_lifetime);
        self.reservations.insert(token, Reservation { relay: odd, expires, _quota: quota });
        Ok((RelayId { family, port }, Some(token)))
    }

    /// The success answer to an allocation's Allocate.
    pub(super) fn allocate_success(&self, now: Instant, relay: RelayId) -> Vec<u8> {
        let a = &self.allocations[&relay];
        let mut answer = Answer::success(Method::Allocate, a.allocate_txid, Some(a.key));
        let remaining = a.expires.saturating_duration_since(now).as_secs().min(u64::from(u32::MAX)) as u32;
        let w = answer.writer();
        w.xor_address(ATTR_XOR_RELAYED_ADDRESS, a.relayed)
            .attribute(ATTR_LIFETIME, &remaining.to_be_bytes())
            .xor_address(ATTR_XOR_MAPPED_ADDRESS, a.client.source);
        if let Some(token) = a.reservation_token {
            w.attribute(ATTR_RESERVATION_TOKEN, &token.to_be_bytes());
        }
        if let Some(second) = &a.second {
            w.xor_address(ATTR_XOR_RELAYED_ADDRESS, second.relayed);
        }
        if let Some(code) = a.second_refused {
            let mut value = vec![Family::V6.code(), 0, (code.number() / 100) as u8, (code.number() % 100) as u8];
            value.extend_from_slice(code.reason().as_bytes());
            let kind = if a.draft_code_points { ATTR_ADDRESS_ERROR_CODE_DRAFT } else { ATTR_ADDRESS_ERROR_CODE };
            w.attribute(kind, &value);
        }
        answer.finish()
    }

    /// The opened allocation of `client`, or 437.
    pub(super) fn opened(&self, client: ClientKey) -> Result<RelayId, ErrorCode> {
        self.by_client
            .get(&client)
            .copied()
            .filter(|r| self.allocations.get(r).is_some_and(Allocation::ready))
            .ok_or(ErrorCode::AllocationMismatch)
    }

    fn refresh(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &StunMessage<'_>,
        key: IntegrityKey,
    ) -> Result<Handled, ErrorCode> {
        let relay = self.opened(client)?;
        // A family names one relayed address of the allocation (443 for
        // one it lacks): a dual allocation's is refreshed, or deleted by a
        // lifetime of zero, alone (RFC 8656 §7.1); without one, both are.
        let family = match msg.attribute(ATTR_REQUESTED_ADDRESS_FAMILY) {
            Some(a) => {
                let family = Family::from_attribute(a.value);
                match family.and_then(|f| self.allocations[&relay].relay_for(f)) {
                    Some(_) => family,
                    None => return Err(ErrorCode::PeerAddressFamilyMismatch),
                }
            }
            None => None,
        };
        let lifetime = self.desired_lifetime(msg);
        let dual = self.allocations[&relay].second.is_some();
        match family {
            Some(family) if lifetime.is_zero() && dual => self.drop_family(now, relay, family),
            _ if lifetime.is_zero() => self.forget(now, relay),
            _ => {
                let expires = now.checked_add(lifetime).ok_or(ErrorCode::BadRequest)?;
                let mut refreshed = Vec::with_capacity(2);
                if let Some(alloc) = self.allocations.get_mut(&relay) {
                    let first = alloc.relay.family;
                    if family.is_none_or(|f| f == first) {
                        alloc.expires = expires;
                        refreshed.push(alloc.relay);
                    }
                    if let Some(second) = alloc.second.as_mut().filter(|s| family.is_none_or(|f| f == s.relay.family)) {
                        second.expires = expires;
                        refreshed.push(second.relay);
                    }
                }
                // A shorter lifetime than before ends on time.
                for relay in refreshed {
                    self.schedule_expiry(expires, relay);
                }
            }
        }
        let mut answer = Answer::success(Method::Refresh, txid_of(msg), Some(key));
        answer.writer().attribute(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        Ok(Handled::Reply(answer.finish()))
    }

    fn create_permission(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &StunMessage<'_>,
        key: IntegrityKey,
    ) -> Result<Handled, ErrorCode> {
        let relay = self.opened(client)?;
        let realm = self.allocations[&relay].realm;
        let mut ips: Vec<IpAddr> = Vec::new();
        for attr in msg.attributes().filter(|a| a.kind == ATTR_XOR_PEER_ADDRESS) {
            let peer = crate::peer::canonical(msg.xor_address_value(attr.value).ok_or(ErrorCode::BadRequest)?);
            if self.allocations[&relay].relay_for(Family::of(peer)).is_none() {
                return Err(ErrorCode::PeerAddressFamilyMismatch);
            }
            if !self.ip_allowed(realm, peer.ip()) {
                return Err(ErrorCode::Forbidden);
            }
            ips.push(peer.ip());
        }
        if ips.is_empty() {
            return Err(ErrorCode::BadRequest);
        }
        let limits = self.settings.limits;
        let expires = later(now, limits.permission_lifetime);
        let alloc = self.allocations.get_mut(&relay).ok_or(ErrorCode::AllocationMismatch)?;
        if !alloc.permit(&ips, now, expires, limits.permissions_per_allocation) {
            return Err(ErrorCode::InsufficientCapacity);
        }
        Ok(Handled::Reply(Answer::success(Method::CreatePermission, txid_of(msg), Some(key)).finish()))
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &StunMessage<'_>,
        key: IntegrityKey,
    ) -> Result<Handled, ErrorCode> {
        let relay = self.opened(client)?;
        if self.allocations[&relay].tcp {
            // A TCP allocation has no channels (RFC 6062 §4).
            return Err(ErrorCode::BadRequest);
        }
        let realm = self.allocations[&relay].realm;
        let number = msg
            .attribute(ATTR_CHANNEL_NUMBER)
            .and_then(|a| <[u8; 4]>::try_from(a.value).ok())
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .filter(|n| CHANNEL_NUMBERS.contains(n))
            .ok_or(ErrorCode::BadRequest)?;
        let peer = crate::peer::canonical(msg.xor_address(ATTR_XOR_PEER_ADDRESS).ok_or(ErrorCode::BadRequest)?);
        if self.allocations[&relay].relay_for(Family::of(peer)).is_none() {
            return Err(ErrorCode::PeerAddressFamilyMismatch);
        }
        if !self.peer_allowed(realm, peer) {
            return Err(ErrorCode::Forbidden);
        }
        let limits = self.settings.limits;
        let alloc = self.allocations.get_mut(&relay).ok_or(ErrorCode::AllocationMismatch)?;
        // Both or neither: room for the permission is checked first.
        if !alloc.permits(peer.ip(), now) && alloc.permission_count(now) >= limits.permissions_per_allocation {
            return Err(ErrorCode::InsufficientCapacity);
        }
        alloc
            .bind_channel(number, peer, now, later(now, limits.channel_lifetime), limits.channels_per_allocation)
            .map_err(|refusal| match refusal {
                BindRefusal::Conflict => ErrorCode::BadRequest,
                BindRefusal::Full => ErrorCode::InsufficientCapacity,
            })?;
        alloc.permit(&[peer.ip()], now, later(now, limits.permission_lifetime), limits.permissions_per_allocation);
        Ok(Handled::Reply(Answer::success(Method::ChannelBind, txid_of(msg), Some(key)).finish()))
    }
}

/// Whether `msg`'s integrity verifies with `key` (the attribute of the
/// key's algorithm).
fn verifies(msg: &StunMessage<'_>, key: &IntegrityKey) -> bool {
    match key {
        IntegrityKey::Sha1(k) => msg.verify_integrity(k),
        IntegrityKey::Sha256(k) => msg.verify_integrity_sha256(k),
        IntegrityKey::Sha256WithMd5Key(k) => msg.verify_integrity_sha256(k),
    }
}
