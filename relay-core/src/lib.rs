//! # relay-core: the UCMRC media relay engine
//!
//! `relay_core` forwards SRTP, SRTCP, DTLS and STUN between a PBX behind NAT
//! and its remote endpoints through a public relay, **without decrypting,
//! storing or inspecting payloads**. A Rust service embeds it; the `ucmrc`
//! binary wraps it for operators.
//!
//! ## Features
//!
//! A plain dependency is the media engine (`default = ["engine"]`): no TLS,
//! no JSON, no tokio runtime. The rest is opt-in, so an embedder pays only
//! for what it uses (a test holds this table, and `docs/relay-core.md`'s,
//! to `Cargo.toml`):
//!
//! | feature | adds |
//! |---|---|
//! | `engine` (default) | `Relay`, `RelayHandle`, `session`, `shard`, the `io` datapaths, `quota` |
//! | `srtp-keys` | `srtp_keys`: SRTP/SRTCP auth keys from SDES master keys |
//! | `serde` | the named settings ([`names`]) as their names |
//! | `api` | `api`: the JSON session requests of the admin API and the control channel |
//! | `tls` | `tls`: rustls settings, reloadable certificates, pinning |
//! | `control` | `control::server`: the relay's TLS listener for connectors |
//! | `connector` | `connector`: the PBX-side client (no shard, no io_uring) |
//! | `tunnels` | `tunnel::server`: TLS pass-through routed by SNI |
//! | `ng` | `ng`: rtpengine's ng protocol for Kamailio/OpenSIPS |
//! | `testkit` | throwaway certificates and an SRTP sender (demos, tests) |
//! | `batch-send` | io_uring `SENDMSG` batches (the load generator) |
//! | `async` | tokio's runtime parts the network services use |
//! | `ebpf` | `io::ebpf`: the kernel fast path (a tc program and its loader) behind `BackendKind::Ebpf` |
//! | `turn` | `turn`: TURN, built in steps — so far its long-term credentials (REST secrets, keys, nonces) |
//! | `__fault-injection` | tests only: lets a test make a shard thread panic |
//!
//! Examples (`relay-core/examples/`): `embed_in_tokio` (allocate, forward,
//! read counters, drain), `drive_a_shard` (the sans-IO shard on your own
//! sockets) and `pbx_connector` (a connector beside a PBX).
//!
//! ## Architecture
//!
//! - [`wire`]: pure, allocation-free, never-panicking views of RTP, RTCP,
//!   STUN and the SRTP/SRTCP authentication tag.
//! - `session`: a two-leg session (PBX leg, endpoint leg) and its latching
//!   policies (`window`, `authenticated`, `open`), `verify = all`, token
//!   buckets, timeouts, counters and optional RTP quality; [`peer`]: which
//!   addresses may be peers.
//! - `shard`: the sans-IO state machine owning one slice of the port range:
//!   `handle_datagram(now, local_port, src, bytes) -> Verdict`,
//!   `handle_command`, `poll_timeout`/`handle_timeout`. No clock, no socket.
//! - [`io`]: the only `unsafe` code; backends that move bytes for a shard on
//!   its own thread (io_uring, and the portable epoll + `recvmmsg`/`sendmmsg`).
//! - `relay`: configuration, shard threads and the cloneable `RelayHandle`
//!   used from tokio (`.await`) or plain threads (`.wait()`).
//! - `control` and `connector`: the authenticated TLS control channel
//!   between the relay and a connector beside the PBX; `tunnel`: TLS
//!   pass-through tunnels routed by SNI, spliced without a userspace copy.
//! - [`codes`]: every stable error code, one enum.
//!
//! ## Example: forward a packet between two loopback "endpoints"
//!
//! ```
//! use std::net::UdpSocket;
//! use relay_core::{LegSpec, Relay, RelayConfig, SessionSpec};
//!
//! let relay = Relay::start(RelayConfig {
//!     port_min: 21000,
//!     port_max: 21999,
//!     workers: 1,
//!     ..RelayConfig::default() // loopback only
//! })?;
//! let relay_handle = relay.handle();
//!
//! let pbx = UdpSocket::bind("127.0.0.1:0")?;
//! let phone = UdpSocket::bind("127.0.0.1:0")?;
//! let session = relay_handle
//!     .allocate(SessionSpec {
//!         tenant: "acme".into(),
//!         // The PBX told us where it listens: media can flow to it at once.
//!         pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr()?), ..LegSpec::default() },
//!         endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
//!         ..SessionSpec::default()
//!     })
//!     .wait()?;
//!
//! // The phone sends to the address the PBX put into its SDP...
//! let rtp = [0x80, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0xca, 0xfe, 0xba, 0xbe, 1, 2, 3];
//! phone.send_to(&rtp, session.endpoint.rtp)?;
//! // ...and the PBX receives it, byte for byte, from its own relay port.
//! let mut buf = [0u8; 1500];
//! let (n, from) = pbx.recv_from(&mut buf)?;
//! assert_eq!(&buf[..n], &rtp);
//! assert_eq!(from, session.pbx.rtp);
//!
//! let info = relay_handle.release(session.id).wait()?;
//! assert_eq!(info.endpoint.stats.packets_forwarded, 1);
//! relay.shutdown(std::time::Duration::ZERO);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "api")]
pub mod api;
pub mod codes;
#[cfg(feature = "connector")]
pub mod connector;
#[cfg(any(feature = "control", feature = "connector"))]
pub mod control;
pub mod framing;
pub mod io;
pub mod names;
#[cfg(feature = "ng")]
pub mod ng;
#[cfg(feature = "engine")]
#[doc(hidden)] // kernel-route decisions, for the datapaths and their tests
pub mod offload;
pub mod peer;
#[cfg(feature = "engine")]
pub mod quota;
#[cfg(feature = "engine")]
pub mod relay;
#[cfg(feature = "engine")]
pub mod relay_port;
#[cfg(feature = "engine")]
pub mod session;
#[cfg(feature = "engine")]
pub mod shard;
#[cfg(feature = "srtp-keys")]
pub mod srtp_keys;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(any(feature = "tunnels", feature = "connector"))]
pub mod tunnel;
#[cfg(feature = "turn")]
pub mod turn;
pub mod wire;

#[cfg(feature = "engine")]
pub use io::{BackendKind, SocketOptions};
pub use peer::PeerPolicy;
#[cfg(feature = "engine")]
pub use relay::{
    AllocatedSession, CommitBarrier, CommitFuture, InterfaceAddress, InterfaceConfig, LegAddresses, Pending, Relay,
    RelayConfig, RelayCounters, RelayError, RelayHandle, SessionPage,
};
#[cfg(feature = "engine")]
pub use session::spec::{
    LatchPolicy, LegSpec, LegUpdate, SessionDefaults, SessionSpec, SessionUpdate, Side, SrtpAuth, Verify,
};
#[cfg(feature = "engine")]
pub use session::stats::{DropReason, LegStats, ShardCounters};
#[cfg(feature = "engine")]
pub use session::LegLimits;
#[cfg(feature = "engine")]
pub use session::{LegInfo, LegPorts, SessionId, SessionInfo};

#[cfg(test)]
mod feature_table_tests {
    use std::collections::BTreeSet;

    /// The features `Cargo.toml` declares (but `default`).
    fn declared() -> BTreeSet<&'static str> {
        let manifest = include_str!("../Cargo.toml");
        let section = manifest.split("\n[features]\n").nth(1).expect("a [features] section");
        let section = section.split("\n[").next().expect("its lines");
        section
            .lines()
            .filter_map(|l| l.split_once(" = [").map(|(name, _)| name))
            .filter(|name| !name.starts_with('#') && *name != "default")
            .collect()
    }

    /// The first column of every row of the table whose header is `header`.
    fn rows<'a>(text: &'a str, prefix: &str, header: &str) -> BTreeSet<&'a str> {
        let lines: Vec<&str> = text.lines().map(|l| l.strip_prefix(prefix).unwrap_or(l)).collect();
        let start = lines.iter().position(|l| l.starts_with(header)).expect("the feature table");
        lines[start + 2..]
            .iter()
            .take_while(|l| l.starts_with("| `"))
            .map(|l| l[3..].split('`').next().expect("a feature name"))
            .collect()
    }

    #[test]
    fn the_feature_tables_list_every_feature_and_no_other() {
        let features = declared();
        assert!(features.contains("engine") && features.contains("ebpf"), "{features:?}");
        let crate_docs = rows(include_str!("lib.rs"), "//! ", "| feature | adds |");
        assert_eq!(crate_docs, features, "relay-core/src/lib.rs's feature table");
        let guide = rows(include_str!("../../docs/relay-core.md"), "", "| feature | what it adds | pulls in |");
        assert_eq!(guide, features, "docs/relay-core.md's feature table");
    }
}
