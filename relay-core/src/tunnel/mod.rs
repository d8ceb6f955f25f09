//! TLS pass-through tunnels routed by SNI: endpoints reach the
//! PBX's SIP-over-TLS and HTTPS services through the relay, which reads only
//! the ClientHello's server name and never holds a key.
//!
//! - `route`: SNI → tenant (explicit names, `{tenant}.domain` patterns,
//!   a default tenant for hellos without SNI).
//! - `tickets`: single-use, short-lived tickets pairing a connector's data
//!   connection with the waiting endpoint.
//! - [`proxy`]: the PROXY protocol v2 header the connector can send to the PBX.
//! - `server`: the tunnel and data listeners (tokio), splicing bytes with
//!   `io::splice` (`route` and `server` need the `tunnels` feature).
#![forbid(unsafe_code)]

#[doc(hidden)] // the PROXY v2 header, for the workspace's tests
pub mod proxy;
#[cfg(feature = "tunnels")]
pub mod route;
#[cfg(feature = "tunnels")]
pub mod server;
#[cfg(feature = "tunnels")]
pub(crate) mod tickets;
