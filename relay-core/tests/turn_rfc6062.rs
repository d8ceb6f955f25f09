//! TCP allocations (RFC 6062) driven without sockets, in virtual time:
//! Connect, ConnectionAttempt and ConnectionBind as clients write them,
//! held to the same peer policy and caps as UDP allocations.

mod turn_lab;

use std::time::Duration;

use relay_core::turn::proto::*;
use relay_core::turn::*;
use relay_core::wire::stun::{StunClass, StunMessage};
use relay_core::wire::stun_writer::StunWriter;
use turn_lab::*;

#[test]
fn tcp_allocations_connect_bind_and_relay_held_to_the_policy() {
    let mut lab = Lab::with(TurnLimits { connections_per_allocation: 3, ..TurnLimits::default() }, None);
    let mut c = Client::rest("198.51.100.70:5000", "tcp-a");
    c.key = tcp("198.51.100.70:5000");
    let relayed = c.allocate_tcp(&mut lab);
    let peer = addr("192.0.2.10:7000");
    // No permission yet, then every internal and own address: 403.
    assert_eq!(c.connect(&mut lab, peer), Err(403));
    for forbidden in ["127.0.0.1:22", "[::ffff:169.254.169.254]:80", "10.21.0.1:5060"] {
        assert_eq!(c.permit(&mut lab, addr(forbidden)), Some(403), "{forbidden}");
        assert_eq!(c.connect(&mut lab, addr(forbidden)), Err(403), "{forbidden}");
    }
    // The relay's own IP may be permitted (other clients' relayed
    // addresses live there), but a port that is not relayed may not be
    // dialled.
    assert_eq!(c.permit(&mut lab, addr(ADMIN)), None);
    assert_eq!(c.connect(&mut lab, addr(ADMIN)), Err(403));
    assert_eq!(c.permit(&mut lab, peer), None);
    // Connect: dialled from the relayed address; answered once connected.
    let (id, bind) = c.connect(&mut lab, peer).expect("dialing");
    assert_eq!(bind.port(), relayed.port(), "dialled from the relayed address");
    assert_eq!(c.connect(&mut lab, peer), Err(446), "one connection per peer");
    lab.server.handle_dialed(lab.now(), id, true);
    let [Command::Send { client, ref message }] = lab.commands()[..] else { panic!("the Connect answer") };
    assert_eq!(client, c.key);
    assert!(StunMessage::parse(message).expect("stun").verify_integrity(&c.md5));
    assert_eq!(error_code(message), None);
    assert_eq!(connection_id(message), id);
    // ConnectionBind: not on UDP, not on the control connection, not with
    // another user's credentials, not for an unknown id.
    let data = tcp("198.51.100.70:5001");
    let out = c.connection_bind(&mut lab, udp("198.51.100.70:5002"), id);
    assert_eq!(error_code(&reply(out)), Some(400), "over UDP");
    assert_eq!(error_code(&reply(c.connection_bind(&mut lab, c.key, id))), Some(400), "on the control connection");
    let mut mallory = Client::rest("198.51.100.70:6000", "mallory");
    mallory.key = tcp("198.51.100.70:6000");
    mallory.nonce = c.nonce.clone();
    assert_eq!(error_code(&reply(mallory.connection_bind(&mut lab, data, id))), Some(400), "another user");
    assert_eq!(error_code(&reply(c.connection_bind(&mut lab, data, id ^ 1))), Some(400), "unknown id");
    // The right one joins the data connection to the peer's.
    let ClientOutput::Bind { connection, reply: answer } = c.connection_bind(&mut lab, data, id) else {
        panic!("bound")
    };
    assert_eq!(connection, id);
    assert!(StunMessage::parse(&answer).expect("stun").verify_integrity(&c.md5));
    assert_eq!(error_code(&answer), None);
    assert_eq!(error_code(&reply(c.connection_bind(&mut lab, tcp("198.51.100.70:5003"), id))), Some(400), "once");
    // Bytes are counted, and paced at the allocation's rate past its burst.
    let now = lab.now().instant;
    assert_eq!(lab.server.handle_tcp_relayed(now, id, true, 1000), Duration::ZERO);
    assert_eq!(lab.server.handle_tcp_relayed(now, id, false, 700), Duration::ZERO);
    let over = lab.server.handle_tcp_relayed(now, id, true, 2_000_000);
    assert!(over > Duration::from_millis(800), "{over:?}: 2 MB at 2 MB/s past the burst waits");
    assert_eq!((lab.server.stats().to_peer_bytes, lab.server.stats().to_client_bytes), (2_001_000, 700));
    // No channels and no Send indications on a TCP allocation.
    assert_eq!(c.bind(&mut lab, 0x4000, peer), Some(400));
    let mut send = StunWriter::new(message_type(Method::Send, StunClass::Indication), [1; 12]);
    send.xor_address(ATTR_XOR_PEER_ADDRESS, peer).attribute(ATTR_DATA, b"x");
    assert_eq!(lab.send(c.key, &send.finish()), ClientOutput::Drop(TurnDrop::UnexpectedMessage));
    // A dial that fails: 447.
    let (failed, _) = c.connect(&mut lab, addr("192.0.2.10:7001")).expect("dialing");
    lab.server.handle_dialed(lab.now(), failed, false);
    let [Command::Send { ref message, .. }] = lab.commands()[..] else { panic!("the Connect answer") };
    assert_eq!(error_code(message), Some(447));
    // A peer dialling in: without a permission closed at once; with one,
    // the client is told (ConnectionAttempt) and it waits for a bind.
    let relay = RelayId { family: Family::V4, port: relayed.port() };
    let before = lab.server.stats().drops(TurnDrop::NoPermission);
    assert_eq!(lab.server.handle_peer_connection(lab.now(), relay, addr("198.51.100.99:4000")), None);
    assert_eq!(lab.server.stats().drops(TurnDrop::NoPermission), before + 1);
    let incoming = lab.server.handle_peer_connection(lab.now(), relay, addr("192.0.2.10:9000")).expect("kept");
    let [Command::Send { client, ref message }] = lab.commands()[..] else { panic!("ConnectionAttempt") };
    let msg = StunMessage::parse(message).expect("stun");
    assert_eq!((client, msg.method(), msg.class()), (c.key, Method::ConnectionAttempt as u16, StunClass::Indication));
    assert_eq!(msg.xor_address(ATTR_XOR_PEER_ADDRESS), Some(addr("192.0.2.10:9000")));
    assert_eq!(connection_id(message), incoming);
    // Three connections is the cap: a fourth peer is refused.
    lab.server.handle_peer_connection(lab.now(), relay, addr("192.0.2.10:9001")).expect("third");
    lab.commands();
    assert_eq!(lab.server.handle_peer_connection(lab.now(), relay, addr("192.0.2.10:9002")), None);
    assert_eq!(lab.server.stats().drops(TurnDrop::ConnectionLimit), 1);
    // Unbound for 30 s: both waiting connections are closed.
    lab.advance(Duration::from_secs(31));
    let mut closed: Vec<Command> = lab.commands();
    closed.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed.contains(&Command::CloseConnection { connection: incoming }));
    assert_eq!(lab.server.stats().connections_unbound, 2);
    assert_eq!(lab.server.connections().count(), 1, "the bound one stays");
    // The data connection closing forgets its connection; deleting the
    // allocation closes what is left and its listening port.
    lab.server.handle_client_closed(lab.now().instant, data);
    assert_eq!(lab.server.connections().count(), 0);
    lab.server.handle_peer_connection(lab.now(), relay, addr("192.0.2.10:9003")).expect("another");
    lab.commands();
    assert_eq!(c.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, vec![0; 4])]), None);
    let commands = lab.commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(matches!(commands[0], Command::CloseConnection { .. }));
    assert_eq!(commands[1], Command::CloseRelay { relay });
    assert_eq!(lab.server.connections().count(), 0);
    // A TCP allocation takes no EVEN-PORT, RESERVATION-TOKEN or
    // DONT-FRAGMENT.
    let mut d = Client::rest("198.51.100.71:5000", "tcp-b");
    d.key = tcp("198.51.100.71:5000");
    d.nonce = {
        let first = d.request(Method::Allocate, &[tcp_transport()]);
        text(&reply(lab.send(d.key, &first)), ATTR_NONCE)
    };
    for extra in [(ATTR_EVEN_PORT, vec![0]), (ATTR_RESERVATION_TOKEN, vec![0; 8]), (ATTR_DONT_FRAGMENT, vec![])] {
        let req = d.request(Method::Allocate, &[tcp_transport(), extra.clone()]);
        assert_eq!(error_code(&reply(lab.send(d.key, &req))), Some(400), "{extra:?}");
    }
}
