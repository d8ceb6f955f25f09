//! A TURN client over UDP (RFC 8656) with REST credentials, written from
//! the RFC for the HA tests: Allocate after its 401, signed requests,
//! ChannelData both ways.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use relay_core::turn::auth::{long_term_key_md5, RestSecrets};
use relay_core::turn::proto::*;
use relay_core::wire::stun::{StunClass, StunMessage, ATTR_USERNAME};
use relay_core::wire::stun_writer::{StunWriter, ATTR_ERROR_CODE};

/// A TURN client over UDP with REST credentials.
pub struct Client {
    /// Its socket.
    pub socket: UdpSocket,
    username: String,
    realm: String,
    key: [u8; 16],
    nonce: String,
    txid: u8,
    /// Where the last answer or ChannelData came from.
    last_source: std::cell::Cell<Option<SocketAddr>>,
}

impl Client {
    /// A client of `realm` with REST credentials for `user` under `secret`.
    pub fn new(secret: &[u8], realm: &str, user: &str) -> Self {
        Self::bound("127.0.0.1:0", secret, realm, user)
    }

    /// [`Client::new`] on a socket bound to `bind` (`[::1]:0` for IPv6).
    pub fn bound(bind: &str, secret: &[u8], realm: &str, user: &str) -> Self {
        let socket = UdpSocket::bind(bind).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        Self::with_socket(socket, secret, realm, user)
    }

    /// [`Client::new`] on `socket` (one made in another network
    /// namespace, say), its read timeout as set.
    pub fn with_socket(socket: UdpSocket, secret: &[u8], realm: &str, user: &str) -> Self {
        let (username, password) = RestSecrets::new(vec![secret.to_vec()])
            .issue(
                user,
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs(),
                Duration::from_secs(3600),
            )
            .expect("credentials");
        let key = long_term_key_md5(&username, realm, &password);
        Self {
            socket,
            username,
            realm: realm.to_string(),
            key,
            nonce: String::new(),
            txid: 0,
            last_source: Default::default(),
        }
    }

    /// A request of `method` (to `peer`), signed once a nonce is known.
    pub fn request(&mut self, method: Method, attrs: &[(u16, Vec<u8>)], peer: Option<SocketAddr>) -> Vec<u8> {
        self.txid += 1;
        let mut w = StunWriter::new(message_type(method, StunClass::Request), [self.txid; 12]);
        if let Some(p) = peer {
            w.xor_address(ATTR_XOR_PEER_ADDRESS, p);
        }
        for (kind, value) in attrs {
            w.attribute(*kind, value);
        }
        if !self.nonce.is_empty() {
            w.attribute(ATTR_USERNAME, self.username.as_bytes())
                .attribute(ATTR_REALM, self.realm.as_bytes())
                .attribute(ATTR_NONCE, self.nonce.as_bytes())
                .message_integrity(&self.key);
        }
        w.fingerprint();
        w.finish()
    }

    /// Sends a request to `server` and returns the answer's error code
    /// (`None`: success) and the answer.
    pub fn ask(
        &mut self,
        server: SocketAddr,
        method: Method,
        attrs: &[(u16, Vec<u8>)],
        peer: Option<SocketAddr>,
    ) -> (Option<u16>, Vec<u8>) {
        let req = self.request(method, attrs, peer);
        self.socket.send_to(&req, server).expect("send");
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).expect("an answer");
            let msg = StunMessage::parse(&buf[..n]).expect("stun");
            if msg.transaction_id() != [self.txid; 12] {
                continue; // data, or a late answer
            }
            self.last_source.set(Some(from));
            return (self.handle_answer(&buf[..n]), buf[..n].to_vec());
        }
    }

    /// Takes the answer to the last request (one that came some other way:
    /// a sans-IO server's reply): learns its nonce; returns its error code
    /// (`None`: success).
    pub fn handle_answer(&mut self, answer: &[u8]) -> Option<u16> {
        let msg = StunMessage::parse(answer).expect("stun");
        assert_eq!(msg.transaction_id(), [self.txid; 12], "the answer to the last request");
        if let Some(nonce) = msg.attribute(ATTR_NONCE) {
            self.nonce = String::from_utf8(nonce.value.to_vec()).expect("nonce");
        }
        msg.attribute(ATTR_ERROR_CODE).map(|a| u16::from(a.value[2]) * 100 + u16::from(a.value[3]))
    }

    /// A UDP allocation on `server` (with `extra` attributes, e.g.
    /// REQUESTED-ADDRESS-FAMILY): the 401 challenge, then the signed
    /// Allocate, which must succeed; returns the relayed address.
    pub fn allocate(&mut self, server: SocketAddr, extra: &[(u16, Vec<u8>)]) -> SocketAddr {
        let mut attrs = vec![(ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_UDP, 0, 0, 0])];
        attrs.extend_from_slice(extra);
        assert_eq!(self.ask(server, Method::Allocate, &attrs, None).0, Some(401), "challenged first");
        let (code, answer) = self.ask(server, Method::Allocate, &attrs, None);
        assert_eq!(code, None, "allocated");
        StunMessage::parse(&answer).expect("stun").xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed address")
    }

    /// Binds `channel` to `peer` on `server`; the ChannelBind must succeed.
    pub fn bind_channel(&mut self, server: SocketAddr, channel: u16, peer: SocketAddr) {
        let number = (ATTR_CHANNEL_NUMBER, [channel.to_be_bytes(), [0, 0]].concat());
        assert_eq!(self.ask(server, Method::ChannelBind, &[number], Some(peer)).0, None, "channel bound");
    }

    /// ChannelData to `server` on `channel`.
    pub fn channel_data(&self, server: SocketAddr, channel: u16, data: &[u8]) {
        let mut cd = ChannelData::header(channel, data.len()).to_vec();
        cd.extend_from_slice(data);
        self.socket.send_to(&cd, server).expect("send");
    }

    /// Where the last answer or ChannelData came from.
    pub fn last_source(&self) -> Option<SocketAddr> {
        self.last_source.get()
    }

    /// The next ChannelData's payload.
    pub fn recv_channel(&self) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let (n, from) = self.socket.recv_from(&mut buf).expect("channel data");
        self.last_source.set(Some(from));
        let cd = ChannelData::parse(&buf[..n]).expect("channel data");
        buf[4..4 + cd.len].to_vec()
    }
}
