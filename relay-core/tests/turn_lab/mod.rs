//! The sans-IO TURN tests' shared lab: a server in virtual time with the
//! driver's side of it, and a client that writes requests as RFC 8656
//! clients do and reads answers with its own key.
#![allow(dead_code)] // each test crate uses its own part of it

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::peer::{OwnAddresses, OwnEndpoint, PeerPolicy};
use relay_core::quota::TenantQuotas;
use relay_core::turn::auth::{long_term_key_md5, NonceKey, RestSecrets};
use relay_core::turn::proto::*;
use relay_core::turn::*;
use relay_core::wire::stun::{StunClass, StunMessage, ATTR_USERNAME};
use relay_core::wire::stun_writer::{StunWriter, ATTR_ERROR_CODE};

pub const REALM: &str = "turn.example.net";
pub const SECRET: &[u8] = b"rest-secret";
pub const T0_UNIX: u64 = 1_800_000_000;
pub const RELAY_IP: &str = "203.0.113.10";
pub const RELAY_IP6: &str = "2001:db8::10";
pub const ADMIN: &str = "203.0.113.10:8080";

/// A server, its clock, and the driver's side of it.
pub struct Lab {
    pub server: TurnServer,
    pub t0: Instant,
    pub elapsed: Duration,
}

impl Lab {
    pub fn new() -> Self {
        Self::with(TurnLimits::default(), None)
    }

    pub fn with(limits: TurnLimits, quotas: Option<Arc<TenantQuotas>>) -> Self {
        Self::build(limits, quotas, None)
    }

    /// A server relaying IPv6 too (on [`RELAY_IP6`]): dual allocations.
    pub fn dual(quotas: Option<Arc<TenantQuotas>>) -> Self {
        Self::build(TurnLimits::default(), quotas, Some(RELAY_IP6.parse().expect("ip")))
    }

    pub fn build(limits: TurnLimits, quotas: Option<Arc<TenantQuotas>>, relay_ip6: Option<IpAddr>) -> Self {
        let relay_ip: IpAddr = RELAY_IP.parse().expect("ip");
        let own_ips = std::iter::once(relay_ip).chain(relay_ip6).collect();
        let own = OwnAddresses::new([OwnEndpoint::socket(ADMIN.parse().expect("addr"))], own_ips);
        let settings = TurnSettings {
            realms: vec![Realm {
                name: REALM.into(),
                tenant: "acme".into(),
                rest: RestSecrets::new(vec![SECRET.to_vec()]),
                users: vec![StaticUser::from_password("alice", REALM, "wonderland")],
                allow_peers: vec![PeerNet::parse("10.20.0.0/16").expect("net")],
            }],
            relay_v4: Some(RelayAddress { bind: relay_ip, advertised: relay_ip }),
            relay_v6: relay_ip6.map(|ip| RelayAddress { bind: ip, advertised: ip }),
            first_port: 20000,
            last_port: 20009,
            policy: PeerPolicy::default().with_own(own),
            limits,
        };
        let server = TurnServer::new(settings, NonceKey::new([7; 32]), quotas, 1).expect("valid settings");
        Self { server, t0: Instant::now(), elapsed: Duration::ZERO }
    }

    pub fn now(&self) -> TurnNow {
        TurnNow { instant: self.t0 + self.elapsed, unix_secs: T0_UNIX + self.elapsed.as_secs() }
    }

    pub fn advance(&mut self, d: Duration) {
        self.elapsed += d;
        self.server.handle_timeout(self.now().instant);
    }

    pub fn send(&mut self, client: ClientKey, bytes: &[u8]) -> ClientOutput {
        self.server.handle_client(self.now(), client, bytes)
    }

    /// Opens every port the server asks for; returns the deferred answers.
    pub fn open_relays(&mut self) -> Vec<(ClientKey, Vec<u8>)> {
        let mut answers = Vec::new();
        while let Some(c) = self.server.poll_command() {
            match c {
                Command::OpenRelay { relay, .. } | Command::ListenRelay { relay, .. } => {
                    self.server.handle_relay_opened(self.now(), relay, true)
                }
                Command::Send { client, message } => answers.push((client, message)),
                Command::CloseRelay { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        answers
    }

    pub fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }
}

pub fn udp(source: &str) -> ClientKey {
    ClientKey { transport: Transport::Udp, listener: 0, source: source.parse().expect("addr") }
}

/// A TURN client's view: credentials, the nonce it was given, its key.
pub struct Client {
    pub key: ClientKey,
    pub username: String,
    pub md5: [u8; 16],
    pub nonce: String,
    pub txid: u8,
}

impl Client {
    /// A REST client for `user`, valid for an hour from T0.
    pub fn rest(source: &str, user: &str) -> Self {
        let (username, password) =
            RestSecrets::new(vec![SECRET.to_vec()]).issue(user, T0_UNIX, Duration::from_secs(3600)).expect("issued");
        Self::with_password(source, &username, &password)
    }

    pub fn with_password(source: &str, username: &str, password: &str) -> Self {
        Self {
            key: udp(source),
            username: username.into(),
            md5: long_term_key_md5(username, REALM, password),
            nonce: String::new(),
            txid: 0,
        }
    }

    pub fn next_txid(&mut self) -> [u8; 12] {
        self.txid += 1;
        [self.txid; 12]
    }

    /// A request of `method` with `attrs`, signed unless `nonce` is empty.
    pub fn request(&mut self, method: Method, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let txid = self.next_txid();
        self.request_with(method, txid, attrs)
    }

    pub fn request_with(&self, method: Method, txid: [u8; 12], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut w = StunWriter::new(message_type(method, StunClass::Request), txid);
        for (kind, value) in attrs {
            w.attribute(*kind, value);
        }
        if !self.nonce.is_empty() {
            w.attribute(ATTR_USERNAME, self.username.as_bytes())
                .attribute(ATTR_REALM, REALM.as_bytes())
                .attribute(ATTR_NONCE, self.nonce.as_bytes())
                .message_integrity(&self.md5);
        }
        w.fingerprint();
        w.finish()
    }

    /// Allocates (401 first, then signed), answering the port opening.
    pub fn allocate(&mut self, lab: &mut Lab, extra: &[(u16, Vec<u8>)]) -> Result<Vec<u8>, u16> {
        if self.nonce.is_empty() {
            let first = self.request(Method::Allocate, &[udp_transport()]);
            let challenge = reply(lab.send(self.key, &first));
            assert_eq!(error_code(&challenge), Some(401));
            self.nonce = text(&challenge, ATTR_NONCE);
            assert_eq!(text(&challenge, ATTR_REALM), REALM);
        }
        let mut attrs = vec![udp_transport()];
        attrs.extend_from_slice(extra);
        let req = self.request(Method::Allocate, &attrs);
        match lab.send(self.key, &req) {
            ClientOutput::Pending => {
                let answers = lab.open_relays();
                assert_eq!(answers.len(), 1);
                assert_eq!(answers[0].0, self.key);
                let answer = answers[0].1.clone();
                assert!(StunMessage::parse(&answer).expect("stun").verify_integrity(&self.md5), "signed with our key");
                Ok(answer)
            }
            ClientOutput::Reply(r) => Err(error_code(&r).expect("an error")),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn relayed(&mut self, lab: &mut Lab) -> SocketAddr {
        let answer = self.allocate(lab, &[]).expect("allocated");
        StunMessage::parse(&answer).expect("stun").xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed")
    }

    /// A signed request's answer: its error code, or `None` on success.
    pub fn ask(&mut self, lab: &mut Lab, method: Method, attrs: &[(u16, Vec<u8>)]) -> Option<u16> {
        let req = self.request(method, attrs);
        let answer = reply(lab.send(self.key, &req));
        let msg = StunMessage::parse(&answer).expect("stun");
        assert!(msg.verify_integrity(&self.md5), "{method:?}: answers to signed requests are signed");
        error_code(&answer)
    }

    pub fn permit(&mut self, lab: &mut Lab, peer: SocketAddr) -> Option<u16> {
        let txid = self.next_txid();
        let mut w = StunWriter::new(message_type(Method::CreatePermission, StunClass::Request), txid);
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
        let value = peer_attr_value(&mut w);
        let req = self.request_with(Method::CreatePermission, txid, &[(ATTR_XOR_PEER_ADDRESS, value)]);
        let answer = reply(lab.send(self.key, &req));
        error_code(&answer)
    }

    pub fn bind(&mut self, lab: &mut Lab, channel: u16, peer: SocketAddr) -> Option<u16> {
        let txid = self.next_txid();
        let mut w = StunWriter::new(0, txid);
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
        let value = peer_attr_value(&mut w);
        let mut number = channel.to_be_bytes().to_vec();
        number.extend_from_slice(&[0, 0]);
        let req = self.request_with(
            Method::ChannelBind,
            txid,
            &[(ATTR_CHANNEL_NUMBER, number), (ATTR_XOR_PEER_ADDRESS, value)],
        );
        error_code(&reply(lab.send(self.key, &req)))
    }
}

/// The value of the one XOR-PEER-ADDRESS a writer holds.
pub fn peer_attr_value(w: &mut StunWriter) -> Vec<u8> {
    let bytes = w.clone().finish();
    StunMessage::parse(&bytes).expect("stun").attribute(ATTR_XOR_PEER_ADDRESS).expect("attr").value.to_vec()
}

pub fn udp_transport() -> (u16, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_UDP, 0, 0, 0])
}

pub fn reply(out: ClientOutput) -> Vec<u8> {
    match out {
        ClientOutput::Reply(r) => r,
        other => panic!("expected an answer, got {other:?}"),
    }
}

pub fn error_code(answer: &[u8]) -> Option<u16> {
    let msg = StunMessage::parse(answer).expect("stun");
    assert!(msg.verify_fingerprint(), "answers carry FINGERPRINT");
    let v = msg.attribute(ATTR_ERROR_CODE)?.value;
    Some(u16::from(v[2]) * 100 + u16::from(v[3]))
}

pub fn text(answer: &[u8], kind: u16) -> String {
    let msg = StunMessage::parse(answer).expect("stun");
    String::from_utf8(msg.attribute(kind).expect("attribute").value.to_vec()).expect("utf-8")
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

pub fn tcp(source: &str) -> ClientKey {
    ClientKey { transport: Transport::Tcp, listener: 1, source: source.parse().expect("addr") }
}

pub fn tcp_transport() -> (u16, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_TCP, 0, 0, 0])
}

/// The CONNECTION-ID of a message.
pub fn connection_id(message: &[u8]) -> u32 {
    let msg = StunMessage::parse(message).expect("stun");
    u32::from_be_bytes(msg.attribute(ATTR_CONNECTION_ID).expect("CONNECTION-ID").value.try_into().expect("4 bytes"))
}

impl Client {
    /// A TCP allocation (RFC 6062) over this client's TCP connection: its
    /// relayed address, after checking the port is opened listening.
    pub fn allocate_tcp(&mut self, lab: &mut Lab) -> SocketAddr {
        let first = self.request(Method::Allocate, &[tcp_transport()]);
        self.nonce = text(&reply(lab.send(self.key, &first)), ATTR_NONCE);
        let req = self.request(Method::Allocate, &[tcp_transport()]);
        assert_eq!(lab.send(self.key, &req), ClientOutput::Pending);
        let commands = lab.commands();
        let [Command::ListenRelay { relay, bind }] = commands[..] else { panic!("listen, not bind UDP: {commands:?}") };
        assert_eq!(bind, SocketAddr::new(RELAY_IP.parse().expect("ip"), relay.port));
        lab.server.handle_relay_opened(lab.now(), relay, true);
        let [Command::Send { client, ref message }] = lab.commands()[..] else { panic!("the answer") };
        assert_eq!(client, self.key);
        StunMessage::parse(message).expect("stun").xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed")
    }

    /// A Connect: `Err(code)` when refused at once, else the Dial command.
    pub fn connect(&mut self, lab: &mut Lab, peer: SocketAddr) -> Result<(u32, SocketAddr), u16> {
        let txid = self.next_txid();
        let mut w = StunWriter::new(0, txid);
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
        let value = peer_attr_value(&mut w);
        let req = self.request_with(Method::Connect, txid, &[(ATTR_XOR_PEER_ADDRESS, value)]);
        match lab.send(self.key, &req) {
            ClientOutput::Pending => match lab.commands()[..] {
                [Command::Dial { connection, bind, peer: dialled }] => {
                    assert_eq!(dialled, peer);
                    Ok((connection, bind))
                }
                ref other => panic!("{other:?}"),
            },
            out => Err(error_code(&reply(out)).expect("an error")),
        }
    }

    /// A ConnectionBind for `id` sent on `data` with this client's
    /// credentials (and nonce).
    pub fn connection_bind(&mut self, lab: &mut Lab, data: ClientKey, id: u32) -> ClientOutput {
        let req = self.request(Method::ConnectionBind, &[(ATTR_CONNECTION_ID, id.to_be_bytes().to_vec())]);
        lab.send(data, &req)
    }
}

/// The relayed addresses an Allocate answer gives, in order.
pub fn relayed_addresses(answer: &[u8]) -> Vec<SocketAddr> {
    let msg = StunMessage::parse(answer).expect("stun");
    let attrs: Vec<_> = msg.attributes().filter(|a| a.kind == ATTR_XOR_RELAYED_ADDRESS).collect();
    attrs.iter().map(|a| msg.xor_address_value(a.value).expect("address")).collect()
}

/// ADDRESS-ERROR-CODE's family and code, at `kind`.
pub fn address_error(answer: &[u8], kind: u16) -> Option<(u8, u16)> {
    let msg = StunMessage::parse(answer).expect("stun");
    let v = msg.attribute(kind)?.value;
    Some((v[0], u16::from(v[2]) * 100 + u16::from(v[3])))
}

pub const DUAL: (u16, [u8; 4]) = (ATTR_ADDITIONAL_ADDRESS_FAMILY, [2, 0, 0, 0]);

pub fn dual_attr() -> (u16, Vec<u8>) {
    (DUAL.0, DUAL.1.to_vec())
}
