//! Making the run's allocations, pipelined: one thread keeps up to
//! `concurrency` allocations in flight (each one the challenge, the signed
//! Allocate, then a ChannelBind to its peer socket), starting the next as
//! soon as one finishes — so the rate measured is the server's, not a
//! blocking client's round trips. The sockets are opened before the
//! allocations are timed.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::io::sys::Epoll;
use relay_core::turn::auth::{long_term_key_md5, RestSecrets};
use relay_core::turn::proto::*;
use relay_core::wire::stun::{StunClass, StunMessage};
use relay_core::wire::stun_writer::StunWriter;

use super::{bind, error_code, release_all, signed, text, Allocation, Credentials, TurnOptions, CHANNEL};

/// A request unanswered this long is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Sends of one request before the run gives up.
const TRIES: u32 = 4;
/// The most allocations in flight at once.
const MAX_IN_FLIGHT: usize = 4096;

/// Where an allocation in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The unsigned Allocate, waiting for the 401 challenge.
    Challenge,
    /// The signed Allocate, waiting for the relayed address.
    Allocate,
    /// The ChannelBind to the peer socket.
    Bind,
}

/// One allocation in flight.
struct Pending {
    /// Its place in the run (user `load{index}`, stream numbers).
    index: usize,
    client: UdpSocket,
    peer: UdpSocket,
    stage: Stage,
    /// The request in flight (sent again unchanged on a timeout).
    request: Vec<u8>,
    sent_at: Instant,
    tries: u32,
    credentials: Option<Credentials>,
    relayed: Option<SocketAddr>,
}

impl Pending {
    /// Sends (or re-sends) the request in flight.
    fn send(&mut self, server: SocketAddr, now: Instant) -> Result<(), String> {
        self.tries += 1;
        self.sent_at = now;
        match self.client.send_to(&self.request, server) {
            Ok(_) => Ok(()),
            // A full send buffer is a lost datagram: the retry sends it again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(format!("send: {e}")),
        }
    }

    /// Takes the answer to the request in flight; returns whether the
    /// allocation is complete.
    fn handle_answer(&mut self, answer: &[u8], server: SocketAddr, secrets: &RestSecrets) -> Result<bool, String> {
        let msg = StunMessage::parse(answer).map_err(|e| e.to_string())?;
        match self.stage {
            Stage::Challenge => {
                let (Some(realm), Some(nonce)) = (text(&msg, ATTR_REALM), text(&msg, ATTR_NONCE)) else {
                    return Err("no challenge".into());
                };
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let user = format!("load{}", self.index);
                let (username, password) =
                    secrets.issue(&user, now, Duration::from_secs(3600)).ok_or("cannot issue")?;
                let c = Credentials { key: long_term_key_md5(&username, &realm, &password), username, realm, nonce };
                self.request = signed(Method::Allocate, txid(self.index, 1), &allocate_attributes(server), &c);
                self.credentials = Some(c);
                self.stage = Stage::Allocate;
                Ok(false)
            }
            Stage::Allocate => {
                if let Some(code) = error_code(&msg) {
                    return Err(format!("Allocate: {code}"));
                }
                self.relayed = Some(msg.xor_address(ATTR_XOR_RELAYED_ADDRESS).ok_or("no relayed address")?);
                let c = self.credentials.as_ref().ok_or("no credentials")?;
                self.request = channel_bind(&self.peer, c, txid(self.index, 2))?;
                self.stage = Stage::Bind;
                Ok(false)
            }
            Stage::Bind => {
                if let Some(code) = error_code(&msg) {
                    return Err(format!("ChannelBind: {code}"));
                }
                Ok(true)
            }
        }
    }

    /// The finished allocation.
    fn finish(self) -> Result<Allocation, String> {
        Ok(Allocation {
            client: Arc::new(self.client),
            peer: Arc::new(self.peer),
            relayed: self.relayed.ok_or("no relayed address")?,
            credentials: self.credentials.ok_or("no credentials")?,
        })
    }
}

/// An Allocate's attributes: UDP, and an IPv6 relayed address when the
/// server is reached over IPv6 (the default is IPv4).
fn allocate_attributes(server: SocketAddr) -> Vec<(u16, Vec<u8>)> {
    let mut attrs = vec![(ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_UDP, 0, 0, 0])];
    if server.is_ipv6() {
        attrs.push((ATTR_REQUESTED_ADDRESS_FAMILY, vec![0x02, 0, 0, 0]));
    }
    attrs
}

/// A transaction id unique in the run: the allocation's index, the step,
/// and random bytes.
fn txid(index: usize, step: u8) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&(index as u64).to_be_bytes());
    t[8] = step;
    t[9..].copy_from_slice(&fastrand::u32(..).to_be_bytes()[..3]);
    t
}

/// The signed ChannelBind of `CHANNEL` to `peer`'s address.
fn channel_bind(peer: &UdpSocket, c: &Credentials, txid: [u8; 12]) -> Result<Vec<u8>, String> {
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    // The attribute's value is XORed with this request's transaction id.
    let mut req = StunWriter::new(message_type(Method::ChannelBind, StunClass::Request), txid);
    req.xor_address(ATTR_XOR_PEER_ADDRESS, peer_addr);
    let written = req.finish();
    let peer_value = StunMessage::parse(&written)
        .ok()
        .and_then(|m| m.attribute(ATTR_XOR_PEER_ADDRESS).map(|a| a.value.to_vec()))
        .ok_or("peer address")?;
    let attrs =
        [(ATTR_CHANNEL_NUMBER, vec![(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0]), (ATTR_XOR_PEER_ADDRESS, peer_value)];
    Ok(signed(Method::ChannelBind, txid, &attrs, c))
}

/// The client and peer sockets of every allocation of the run, opened
/// before the allocations are timed (opening them is the generator's
/// work, not the server's).
pub(super) fn open_sockets(opts: &TurnOptions) -> Result<Vec<(UdpSocket, UdpSocket)>, String> {
    (0..opts.allocations)
        .map(|_| {
            let (client, peer) = (bind(opts.server)?, bind(opts.server)?);
            client.set_nonblocking(true).map_err(|e| e.to_string())?;
            peer.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok((client, peer))
        })
        .collect()
}

/// Starts allocation `index` on its sockets: the unsigned Allocate.
fn start(
    index: usize,
    (client, peer): (UdpSocket, UdpSocket),
    server: SocketAddr,
    now: Instant,
) -> Result<Pending, String> {
    let mut first = StunWriter::new(message_type(Method::Allocate, StunClass::Request), txid(index, 0));
    for (kind, value) in allocate_attributes(server) {
        first.attribute(kind, &value);
    }
    let mut p = Pending {
        index,
        client,
        peer,
        stage: Stage::Challenge,
        request: first.finish(),
        sent_at: now,
        tries: 0,
        credentials: None,
        relayed: None,
    };
    p.send(server, now)?;
    Ok(p)
}

/// Makes an allocation on each pair of `sockets` with up to
/// `opts.concurrency` in flight; on a failure, deletes those made and says
/// why.
pub(super) fn allocate_all(
    opts: &TurnOptions,
    sockets: Vec<(UdpSocket, UdpSocket)>,
) -> Result<Vec<Allocation>, String> {
    let secrets = RestSecrets::new(vec![opts.secret.as_bytes().to_vec()]);
    let mut made: Vec<Option<Allocation>> = (0..sockets.len()).map(|_| None).collect();
    let mut slots: Vec<Option<Pending>> = (0..opts.concurrency.clamp(1, MAX_IN_FLIGHT)).map(|_| None).collect();
    let result = drive(opts, &secrets, sockets, &mut slots, &mut made);
    let mut made: Vec<Allocation> = made.into_iter().flatten().collect();
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            let complete = made.len();
            // Leave nothing behind for the next run, not even an allocation
            // whose ChannelBind was still in flight.
            made.extend(slots.into_iter().flatten().filter(|p| p.relayed.is_some()).filter_map(|p| p.finish().ok()));
            release_all(opts.server, &made, opts.concurrency);
            Err(format!("{e} (after {complete} allocations)"))
        }
    }
}

/// The event loop: fills the slots, takes answers, re-sends on timeouts.
fn drive(
    opts: &TurnOptions,
    secrets: &RestSecrets,
    sockets: Vec<(UdpSocket, UdpSocket)>,
    slots: &mut [Option<Pending>],
    made: &mut [Option<Allocation>],
) -> Result<(), String> {
    let epoll = Epoll::new().map_err(|e| e.to_string())?;
    let mut sockets = sockets.into_iter();
    let mut next = 0;
    let mut finished = 0;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; slots.len()];
    let mut buf = vec![0u8; 2048];
    let mut last_sweep = Instant::now();
    while finished < made.len() {
        let now = Instant::now();
        for (slot, pending) in slots.iter_mut().enumerate() {
            if pending.is_none() && next < made.len() {
                let pair = sockets.next().ok_or("a socket pair per allocation")?;
                let p = start(next, pair, opts.server, now)?;
                epoll.add(p.client.as_raw_fd(), slot as u64).map_err(|e| e.to_string())?;
                *pending = Some(p);
                next += 1;
            }
        }
        let ready = epoll.wait(&mut events, 20).map_err(|e| e.to_string())?;
        for ev in &events[..ready] {
            let slot = ev.u64 as usize;
            let Some(p) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            let mut complete = false;
            while let Ok((n, from)) = p.client.recv_from(&mut buf) {
                // Only the answer to the request in flight moves it on.
                if from != opts.server || n < 20 || buf[8..20] != p.request[8..20] {
                    continue;
                }
                complete = p.handle_answer(&buf[..n], opts.server, secrets)?;
                if complete {
                    break;
                }
                p.tries = 0;
                p.send(opts.server, Instant::now())?;
            }
            if complete {
                let p = slots[slot].take().ok_or("slot")?;
                epoll.delete(p.client.as_raw_fd()).map_err(|e| e.to_string())?;
                let index = p.index;
                made[index] = Some(p.finish()?);
                finished += 1;
            }
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= Duration::from_millis(50) {
            last_sweep = now;
            for p in slots.iter_mut().flatten() {
                if now.duration_since(p.sent_at) >= RETRY_AFTER {
                    if p.tries >= TRIES {
                        return Err(format!("no answer to allocation {}'s {:?}", p.index, p.stage));
                    }
                    p.send(opts.server, now)?;
                }
            }
        }
    }
    Ok(())
}
