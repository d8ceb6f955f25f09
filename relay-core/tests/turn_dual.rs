//! Dual allocations (ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §7.2) driven
//! without sockets, in virtual time: an IPv4 and an IPv6 relayed address
//! per Allocate, each peer reached from its family's socket (in the kernel
//! too), one family refreshed, deleted or expiring alone, the second
//! refused with its code, taken over on both ports.

mod turn_lab;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use relay_core::quota::{TenantLimit, TenantQuotas};
use relay_core::turn::proto::*;
use relay_core::turn::server::{PORT_RETRY_DELAY, REOPEN_EVERY};
use relay_core::turn::*;
use relay_core::wire::stun::{StunClass, StunMessage};
use relay_core::wire::stun_writer::StunWriter;
use turn_lab::*;

/// A dual allocation's two relayed addresses (IPv4 first) and sockets.
struct Dual {
    relayed4: SocketAddr,
    relayed6: SocketAddr,
    r4: RelayId,
    r6: RelayId,
}

/// Makes `c` a dual allocation.
fn allocate_dual(c: &mut Client, lab: &mut Lab) -> Dual {
    let answer = c.allocate(lab, &[dual_attr()]).expect("allocated");
    let [relayed4, relayed6] = relayed_addresses(&answer)[..] else { panic!("two addresses") };
    let r4 = RelayId { family: Family::V4, port: relayed4.port() };
    let r6 = RelayId { family: Family::V6, port: relayed6.port() };
    Dual { relayed4, relayed6, r4, r6 }
}

#[test]
fn a_dual_allocation_relays_each_family_from_its_own_address() {
    let mut lab = Lab::dual(None);
    let mut c = Client::rest("198.51.100.90:5000", "dual");
    let first = c.request(Method::Allocate, &[udp_transport()]);
    c.nonce = text(&reply(lab.send(c.key, &first)), ATTR_NONCE);
    let req = c.request(Method::Allocate, &[udp_transport(), dual_attr()]);
    assert_eq!(lab.send(c.key, &req), ClientOutput::Pending);
    let commands = lab.commands();
    let [Command::OpenRelay { relay: r4, bind: b4 }, Command::OpenRelay { relay: r6, bind: b6 }] = commands[..] else {
        panic!("{commands:?}")
    };
    assert_eq!((r4.family, r6.family), (Family::V4, Family::V6));
    assert_eq!((b4.ip(), b6.ip()), (RELAY_IP.parse::<IpAddr>().expect("ip"), RELAY_IP6.parse::<IpAddr>().expect("ip")));
    // Answered once both sockets are open, not before.
    lab.server.handle_relay_opened(lab.now(), r4, true);
    assert!(lab.commands().is_empty(), "the IPv6 socket is still opening");
    assert_eq!(lab.send(c.key, &req), ClientOutput::Pending, "a retransmission waits too");
    lab.server.handle_relay_opened(lab.now(), r6, true);
    let commands = lab.commands();
    let [Command::Send { message, .. }] = &commands[..] else { panic!("{commands:?}") };
    assert!(StunMessage::parse(message).expect("stun").verify_integrity(&c.md5));
    assert_eq!(relayed_addresses(message), vec![b4, b6], "both relayed addresses, IPv4 first");
    assert_eq!(address_error(message, ATTR_ADDRESS_ERROR_CODE), None);
    assert_eq!(reply(lab.send(c.key, &req)), *message, "a retransmission gets the same answer");

    // Each peer is reached from the relayed address of its family, and
    // answers through it.
    let (peer4, peer6) = (addr("192.0.2.70:7000"), addr("[2a00:1450::70]:7000"));
    assert_eq!(c.permit(&mut lab, peer4), None);
    assert_eq!(c.permit(&mut lab, peer6), None);
    assert_eq!(c.bind(&mut lab, 0x4006, peer6), None);
    let mut cd = ChannelData::header(0x4006, 4).to_vec();
    cd.extend_from_slice(b"six!");
    let ClientOutput::Relay { relay, peer, payload } = lab.send(c.key, &cd) else { panic!("relayed") };
    assert_eq!((relay, peer, &cd[payload]), (r6, peer6, &b"six!"[..]));
    let ind = {
        let txid = c.next_txid();
        let mut w = StunWriter::new(message_type(Method::Send, StunClass::Indication), txid);
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer4).attribute(ATTR_DATA, b"four");
        w.finish()
    };
    let ClientOutput::Relay { relay, peer, payload } = lab.send(c.key, &ind) else { panic!("relayed") };
    assert_eq!((relay, peer, &ind[payload]), (r4, peer4, &b"four"[..]));
    let PeerOutput::Channel { client, header } = lab.server.handle_peer(lab.now(), r6, peer6, b"back") else {
        panic!("channel")
    };
    assert_eq!((client, header), (c.key, ChannelData::header(0x4006, 4)));
    let PeerOutput::Indication { client, .. } = lab.server.handle_peer(lab.now(), r4, peer4, b"back") else {
        panic!("indication")
    };
    assert_eq!(client, c.key);
    // A peer of a family the allocation lacks, on a single-family one: 443.
    let mut one = Client::rest("198.51.100.91:5000", "one");
    one.relayed(&mut lab);
    assert_eq!(one.permit(&mut lab, peer6), Some(443));

    // A Refresh of lifetime zero naming IPv6 deletes that address alone.
    let refresh6 = [(ATTR_LIFETIME, vec![0, 0, 0, 0]), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])];
    assert_eq!(c.ask(&mut lab, Method::Refresh, &refresh6), None);
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay: r6 }]);
    assert_eq!(lab.send(c.key, &cd), ClientOutput::Drop(TurnDrop::NoChannel), "its channels went with it");
    assert_eq!(lab.server.handle_peer(lab.now(), r6, peer6, b"late"), PeerOutput::Drop(TurnDrop::NoAllocation));
    assert_eq!(c.permit(&mut lab, peer6), Some(443));
    assert!(matches!(lab.send(c.key, &ind), ClientOutput::Relay { relay, .. } if relay == r4), "IPv4 goes on");
    // Naming it again: it is gone, 443.
    assert_eq!(c.ask(&mut lab, Method::Refresh, &refresh6), Some(443));

    // Deleting the IPv4 side of another dual allocation: it goes on on IPv6.
    let mut d = Client::rest("198.51.100.92:5000", "dual-2");
    let answer = d.allocate(&mut lab, &[dual_attr()]).expect("allocated");
    let [d4, d6] = relayed_addresses(&answer)[..] else { panic!("two addresses") };
    let (d4, d6) = (RelayId { family: Family::V4, port: d4.port() }, RelayId { family: Family::V6, port: d6.port() });
    assert_eq!(d.permit(&mut lab, peer6), None);
    let refresh4 = [(ATTR_LIFETIME, vec![0, 0, 0, 0]), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0])];
    assert_eq!(d.ask(&mut lab, Method::Refresh, &refresh4), None);
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay: d4 }]);
    assert_eq!(lab.server.handle_peer(lab.now(), d4, peer4, b"late"), PeerOutput::Drop(TurnDrop::NoAllocation));
    assert!(matches!(lab.server.handle_peer(lab.now(), d6, peer6, b"on"), PeerOutput::Indication { .. }));
    assert_eq!(d.permit(&mut lab, peer4), Some(443));
    assert_eq!(d.ask(&mut lab, Method::Refresh, &[]), None, "refreshed as an IPv6 allocation");
    // Deleting it all closes what is left; its ports come back.
    assert_eq!(d.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]), None);
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay: d6 }]);
    assert_eq!(c.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]), None);
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay: r4 }]);
    assert_eq!(lab.server.allocations().count(), 1, "only the single-family one");
    lab.advance(Duration::from_secs(3));
    // Ten ports of each family: two IPv6-only allocations and eight dual
    // ones leave one IPv4 port and no IPv6 one beside the single-family
    // IPv4 allocation.
    for i in 0..2 {
        let mut v6 = Client::rest(&format!("198.51.100.93:{}", 5000 + i), &format!("v6-{i}"));
        let answer = v6.allocate(&mut lab, &[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])]).expect("allocated");
        assert!(relayed_addresses(&answer)[0].is_ipv6());
    }
    for i in 0..8 {
        let mut e = Client::rest(&format!("198.51.100.93:{}", 6000 + i), &format!("e{i}"));
        let answer = e.allocate(&mut lab, &[dual_attr()]).unwrap_or_else(|code| panic!("allocation {i}: {code}"));
        assert_eq!(relayed_addresses(&answer).len(), 2, "allocation {i}");
    }
    // The next gets IPv4 only: no IPv6 port is free, said in the answer.
    let mut f = Client::rest("198.51.100.94:6000", "f");
    let answer = f.allocate(&mut lab, &[dual_attr()]).expect("allocated");
    assert_eq!(relayed_addresses(&answer).len(), 1);
    assert_eq!(address_error(&answer, ATTR_ADDRESS_ERROR_CODE), Some((2, 508)));
}

#[test]
fn dual_requests_are_refused_or_narrowed_with_their_codes() {
    // No IPv6 relay address: IPv4 granted, 440 for IPv6 — at the draft's
    // code point for a request that used it (coturn's clients).
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.95:5000", "draft");
    let answer = c.allocate(&mut lab, &[(ATTR_ADDITIONAL_ADDRESS_FAMILY_DRAFT, vec![2, 0, 0, 0])]).expect("allocated");
    assert_eq!(relayed_addresses(&answer).len(), 1);
    assert_eq!(address_error(&answer, ATTR_ADDRESS_ERROR_CODE_DRAFT), Some((2, 440)));
    assert_eq!(address_error(&answer, ATTR_ADDRESS_ERROR_CODE), None);

    let quotas = Arc::new(TenantQuotas::new(TenantLimit { sessions: None, ports: Some(1) }));
    let mut lab = Lab::dual(Some(quotas));
    // The draft's code point asks for a dual allocation too.
    let mut d = Client::rest("198.51.100.96:5000", "draft-dual");
    // A port reserved for a pair of dual allocations is not defined: 400,
    // as coturn.
    assert_eq!(d.allocate(&mut lab, &[dual_attr(), (ATTR_EVEN_PORT, vec![0x80])]), Err(400));
    // ADDITIONAL-ADDRESS-FAMILY naming IPv4: 400.
    assert_eq!(d.allocate(&mut lab, &[(ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![1, 0, 0, 0])]), Err(400));
    // The tenant's quota holds one port: the second family is refused 486.
    let answer = d.allocate(&mut lab, &[(ATTR_ADDITIONAL_ADDRESS_FAMILY_DRAFT, vec![2, 0, 0, 0])]).expect("allocated");
    assert_eq!(relayed_addresses(&answer).len(), 1);
    assert_eq!(address_error(&answer, ATTR_ADDRESS_ERROR_CODE_DRAFT), Some((2, 486)));
    assert_eq!(d.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])]), None);
    lab.commands();
    lab.advance(Duration::from_secs(3));
    // EVEN-PORT without a reservation: the IPv4 port is even (coturn's
    // client asks for it so).
    let quotas = Arc::new(TenantQuotas::new(TenantLimit { sessions: None, ports: Some(2) }));
    let mut lab = Lab::dual(Some(quotas));
    let mut even = Client::rest("198.51.100.96:5001", "even");
    let answer = even.allocate(&mut lab, &[dual_attr(), (ATTR_EVEN_PORT, vec![0])]).expect("allocated");
    let [v4, v6] = relayed_addresses(&answer)[..] else { panic!("two addresses") };
    assert!(v4.port() % 2 == 0 && v6.is_ipv6(), "{v4} {v6}");

    // A second socket that cannot be opened is exchanged for another
    // port, then given up: IPv4 only, 508 for IPv6.
    let quotas = Arc::new(TenantQuotas::new(TenantLimit { sessions: None, ports: Some(2) }));
    let mut lab = Lab::dual(Some(quotas));
    let mut e = Client::rest("198.51.100.97:5000", "unlucky");
    let first = e.request(Method::Allocate, &[udp_transport()]);
    e.nonce = text(&reply(lab.send(e.key, &first)), ATTR_NONCE);
    let req = e.request(Method::Allocate, &[udp_transport(), dual_attr()]);
    assert_eq!(lab.send(e.key, &req), ClientOutput::Pending);
    let mut answers = Vec::new();
    let mut failed_v6 = Vec::new();
    for _ in 0..10 {
        for command in lab.commands() {
            match command {
                Command::OpenRelay { relay, .. } if relay.family == Family::V6 => {
                    failed_v6.push(relay);
                    lab.server.handle_relay_opened(lab.now(), relay, false);
                }
                Command::OpenRelay { relay, .. } => lab.server.handle_relay_opened(lab.now(), relay, true),
                Command::Send { message, .. } => answers.push(message),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(failed_v6.len(), 3, "three ports tried: {failed_v6:?}");
    let [answer] = &answers[..] else { panic!("{answers:?}") };
    assert_eq!(relayed_addresses(answer).len(), 1);
    assert_eq!(address_error(answer, ATTR_ADDRESS_ERROR_CODE), Some((2, 508)));
    // Its quota share went with it: a second allocation still fits.
    let mut f = Client::rest("198.51.100.98:5000", "next");
    assert!(f.allocate(&mut lab, &[]).is_ok());
}

#[test]
fn a_dual_allocation_is_taken_over_on_both_of_its_ports() {
    let mut a = Lab::dual(None);
    let mut c = Client::rest("198.51.100.99:5000", "dual-ha");
    let Dual { relayed4, relayed6, r4, r6 } = allocate_dual(&mut c, &mut a);
    let peer6 = addr("[2a00:1450::71]:7000");
    assert_eq!(c.bind(&mut a, 0x4007, peer6), None);
    let [state] = &a.server.export(a.now().instant)[..] else { panic!("one allocation") };
    assert_eq!(
        state.second,
        Some(replica::SecondState { relay: r6, relayed: relayed6, lifetime: Duration::from_secs(600) })
    );

    let mut b = Lab::dual(None);
    b.server.restore(b.now().instant, state.clone()).expect("restored");
    assert_eq!(
        b.commands(),
        vec![Command::OpenRelay { relay: r4, bind: relayed4 }, Command::OpenRelay { relay: r6, bind: relayed6 }]
    );
    b.server.handle_relay_opened(b.now(), r4, true);
    b.server.handle_relay_opened(b.now(), r6, true);
    assert!(b.commands().is_empty(), "nobody waits for an answer");
    let PeerOutput::Channel { client, .. } = b.server.handle_peer(b.now(), r6, peer6, b"same address") else {
        panic!("relayed on the IPv6 side")
    };
    assert_eq!(client, c.key);
    let mut cd = ChannelData::header(0x4007, 2).to_vec();
    cd.extend_from_slice(b"ok\0\0");
    assert!(matches!(b.send(c.key, &cd), ClientOutput::Relay { relay, .. } if relay == r6));
    // A record naming the same family twice is refused.
    let mut twice = state.clone();
    twice.second = Some(replica::SecondState {
        relay: RelayId { family: Family::V4, port: r4.port + 1 },
        relayed: relayed4,
        lifetime: Duration::from_secs(600),
    });
    twice.client = udp("198.51.100.99:5001");
    assert_eq!(Lab::dual(None).server.restore(b.now().instant, twice), Err(replica::RestoreRefusal::PortUnavailable));
}

#[test]
fn a_dual_allocation_s_channels_reach_the_kernel_from_their_family_s_socket_and_leave_with_it() {
    let mut lab = Lab::dual(None);
    lab.server.enable_offload(lab.now().instant);
    // An IPv6 client: its IPv4 peers are relayed from the first socket, its
    // IPv6 peers from the second.
    let mut c = Client::rest("[2001:db8:5::1]:5000", "dual-kernel");
    let Dual { r4, r6, .. } = allocate_dual(&mut c, &mut lab);
    let (peer4, peer6) = (addr("192.0.2.72:7000"), addr("[2a00:1450::72]:7000"));
    assert_eq!(c.bind(&mut lab, 0x4004, peer4), None);
    assert_eq!(c.bind(&mut lab, 0x4006, peer6), None);
    let announced = |lab: &mut Lab| -> Vec<_> {
        lab.commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::OffloadChannel(o) => Some((o.channel, o.relay, o.socket, o.budget.is_some())),
                _ => None,
            })
            .collect()
    };
    // The IPv6 channel goes to the kernel from the IPv6 socket, under the
    // allocation's key (one budget); the IPv4 one stays in userspace (the
    // kernel does not translate between families), never announced.
    assert_eq!(announced(&mut lab), vec![(0x4006, r4, r6, true)]);
    let mut cd = ChannelData::header(0x4004, 4).to_vec();
    cd.extend_from_slice(b"four");
    // (The budget went to the kernel; userspace's refills at the rate.)
    lab.advance(Duration::from_secs(1));
    assert!(matches!(lab.send(c.key, &cd), ClientOutput::Relay { relay, .. } if relay == r4), "relayed in userspace");
    // Requests do not announce it again and again.
    assert_eq!(c.permit(&mut lab, peer4), None);
    assert_eq!(announced(&mut lab), vec![]);
    // Deleting the IPv4 side makes the IPv6 socket the allocation's key:
    // every route withdrawn at once, the IPv6 channel announced again
    // under its new key with the budget.
    let refresh4 = [(ATTR_LIFETIME, vec![0, 0, 0, 0]), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0])];
    assert_eq!(c.ask(&mut lab, Method::Refresh, &refresh4), None);
    let commands = lab.commands();
    let [Command::EndOffload { relay: ended }, Command::CloseRelay { relay: closed }, Command::OffloadChannel(o)] =
        &commands[..]
    else {
        panic!("{commands:?}")
    };
    assert_eq!((*ended, *closed), (r4, r4));
    assert_eq!((o.channel, o.relay, o.socket, o.peer), (0x4006, r6, r6, peer6));
    assert!(o.budget.is_some(), "the budget goes to the kernel again");
}

#[test]
fn each_family_of_a_dual_allocation_has_its_own_lifetime() {
    let mut lab = Lab::dual(None);
    let mut c = Client::rest("198.51.100.101:5000", "lifetimes");
    let Dual { r4, r6, .. } = allocate_dual(&mut c, &mut lab);
    let (peer4, peer6) = (addr("192.0.2.73:7000"), addr("[2a00:1450::73]:7000"));
    assert_eq!(c.permit(&mut lab, peer4), None);
    assert_eq!(c.permit(&mut lab, peer6), None);
    // Only the IPv6 address is refreshed, for an hour.
    let hour = 3600u32.to_be_bytes().to_vec();
    let refresh6 = [(ATTR_LIFETIME, hour.clone()), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])];
    assert_eq!(c.ask(&mut lab, Method::Refresh, &refresh6), None);
    assert!(lab.commands().is_empty());
    // Ten minutes on the IPv4 address runs out alone.
    lab.advance(Duration::from_secs(601));
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay: r4 }]);
    assert_eq!(lab.server.handle_peer(lab.now(), r4, peer4, b"x"), PeerOutput::Drop(TurnDrop::NoAllocation));
    assert_eq!(c.permit(&mut lab, peer6), None, "the IPv6 side serves on");
    assert!(matches!(lab.server.handle_peer(lab.now(), r6, peer6, b"on"), PeerOutput::Indication { .. }));
    assert_eq!(c.ask(&mut lab, Method::Refresh, &[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0])]), Some(443));
    assert_eq!(lab.server.stats().expired, 0, "the allocation has not ended");
    // Then the hour runs out on IPv6 too: the allocation ends.
    lab.advance(Duration::from_secs(3000));
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay: r6 }]);
    assert_eq!((lab.server.allocations().count(), lab.server.stats().expired), (0, 1));

    // A Refresh naming no family refreshes both (a fresh server: the REST
    // credentials above are past their hour).
    let mut lab = Lab::dual(None);
    let mut d = Client::rest("198.51.100.101:5001", "both");
    let answer = d.allocate(&mut lab, &[dual_attr()]).expect("allocated");
    assert_eq!(relayed_addresses(&answer).len(), 2);
    assert_eq!(d.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, hour)]), None);
    lab.advance(Duration::from_secs(601));
    assert!(lab.commands().is_empty(), "neither side expired");
    // A record whose first address ran out while it waited goes on with
    // its second as its first.
    let [state] = &lab.server.export(lab.now().instant)[..] else { panic!("one allocation") };
    let mut short = state.clone();
    short.lifetime = Duration::from_secs(100);
    let aged = short.aged(Duration::from_secs(200));
    assert_eq!((aged.relay.family, aged.second, aged.relayed.is_ipv6()), (Family::V6, None, true));
}

#[test]
fn a_node_stepping_down_while_taken_over_ports_are_still_held_gives_the_ports_back() {
    let mut a = Lab::dual(None);
    let mut c = Client::rest("198.51.100.102:5000", "flapping");
    let Dual { relayed4, relayed6, r4, r6 } = allocate_dual(&mut c, &mut a);
    let [state] = &a.server.export(a.now().instant)[..] else { panic!("one allocation") };
    let reopen =
        vec![Command::OpenRelay { relay: r4, bind: relayed4 }, Command::OpenRelay { relay: r6, bind: relayed6 }];

    // A partition flaps: this node takes over, the old one still holds
    // both ports, and this one steps down before its next try.
    let mut b = Lab::dual(None);
    b.server.restore(b.now().instant, state.clone()).expect("restored");
    assert_eq!(b.commands(), reopen);
    b.server.handle_relay_opened(b.now(), r4, false);
    b.server.handle_relay_opened(b.now(), r6, false);
    b.server.forget_all(b.now().instant);
    b.advance(REOPEN_EVERY);
    assert!(b.commands().is_empty(), "nothing is opened for allocations gone");
    // Both ports come back to the pool (after the wait of a port that
    // could not be opened): the next takeover gets them. They were kept
    // out for ever, and the next takeover of the allocation refused.
    b.advance(PORT_RETRY_DELAY);
    b.server.restore(b.now().instant, state.clone().aged(PORT_RETRY_DELAY)).expect("its ports are free again");
    assert_eq!(b.commands(), reopen);
}

#[test]
fn a_taken_over_second_address_still_waiting_for_its_port_is_waited_for_when_it_becomes_the_first() {
    let mut a = Lab::dual(None);
    let mut c = Client::rest("198.51.100.103:5000", "promoted");
    let Dual { relayed6, r4, r6, .. } = allocate_dual(&mut c, &mut a);
    let peer6 = addr("[2a00:1450::74]:7000");
    assert_eq!(c.permit(&mut a, peer6), None);
    let [state] = &a.server.export(a.now().instant)[..] else { panic!("one allocation") };
    // The IPv4 address has a second left, the IPv6 one ten minutes.
    let mut state = state.clone();
    state.lifetime = Duration::from_secs(1);

    let mut b = Lab::dual(None);
    b.server.restore(b.now().instant, state).expect("restored");
    b.commands();
    b.server.handle_relay_opened(b.now(), r4, true);
    // The IPv6 port is still held by the old node while the IPv4 address
    // runs out: the IPv6 one becomes the allocation's first.
    b.server.handle_relay_opened(b.now(), r6, false);
    for _ in 0..10 {
        b.advance(REOPEN_EVERY);
        for command in b.commands() {
            match command {
                Command::OpenRelay { relay, .. } if relay == r6 => b.server.handle_relay_opened(b.now(), r6, false),
                Command::CloseRelay { relay } if relay == r4 => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(b.server.handle_peer(b.now(), r4, peer6, b"x"), PeerOutput::Drop(TurnDrop::NoAllocation));
    // Not relayed from a socket that is not open; tried again, and once
    // open it serves. (It was taken as open, and never tried again.)
    assert_eq!(b.server.handle_peer(b.now(), r6, peer6, b"x"), PeerOutput::Drop(TurnDrop::NoAllocation));
    b.advance(REOPEN_EVERY);
    assert_eq!(b.commands(), vec![Command::OpenRelay { relay: r6, bind: relayed6 }]);
    b.server.handle_relay_opened(b.now(), r6, true);
    let PeerOutput::Indication { client, .. } = b.server.handle_peer(b.now(), r6, peer6, b"on") else {
        panic!("the IPv6 address serves")
    };
    assert_eq!(client, c.key);
}
