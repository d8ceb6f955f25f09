//! TURN sharing the tunnel listeners (port 443): a ClientHello naming one
//! of the relay's TURN server names or offering ALPN `stun.turn` (RFC
//! 7443) is terminated here for TURN over TLS; a connection that starts
//! with a STUN header is TURN over TCP. Every other connection passes
//! through to its PBX as before.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::allocation::Transport;
use super::service::TurnService;
use crate::tunnel::server::Handoff;
use crate::wire::client_hello::{ClientHelloInfo, ALPN_STUN_TURN};

/// The TURN side of a shared listener (see the module docs).
pub struct TurnHandoff {
    service: TurnService,
    /// TLS for TURN (absent: only TURN over TCP is taken).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Server names that mean TURN (lowercase, no trailing dot).
    names: Vec<String>,
    /// The listener index its clients carry.
    index: u16,
}

impl std::fmt::Debug for TurnHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnHandoff").field("tls", &self.tls.is_some()).field("names", &self.names).finish()
    }
}

impl TurnHandoff {
    /// A hand-off to `service`: TLS terminated with `tls` (its ALPN set to
    /// `stun.turn`) for ClientHellos naming one of `names` or offering
    /// `stun.turn`; clients carry listener index `index`.
    pub fn new(service: TurnService, tls: Option<Arc<rustls::ServerConfig>>, names: Vec<String>, index: u16) -> Self {
        let tls = tls.map(|config| {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let names = names.into_iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()).collect();
        Self { service, tls, names, index }
    }
}

impl Handoff for TurnHandoff {
    fn claims_tls(&self, hello: &ClientHelloInfo) -> bool {
        self.tls.is_some()
            && (hello.offers_stun_turn || hello.server_name.as_ref().is_some_and(|n| self.names.contains(n)))
    }

    fn take_tls(&self, tcp: TcpStream, peer: SocketAddr, read: Vec<u8>) {
        if let Some(acceptor) = &self.tls {
            self.service.accept_tls(acceptor.clone(), tcp, peer, read, self.index);
        }
    }

    fn take_stun(&self, tcp: TcpStream, peer: SocketAddr, read: Vec<u8>) {
        self.service.serve_stream(tcp, Transport::Tcp, self.index, peer, read);
    }
}
