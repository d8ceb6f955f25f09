//! The relay ⇄ connector control protocol: framing and message
//! types specified byte by byte in `docs/connector-protocol.md`, the
//! authenticator and the relay-side listener (`server`, the `control`
//! feature) with the TURN credentials it hands out (`turn_credentials`). The connector side is the `connector` module (its feature).
#![forbid(unsafe_code)]

#[cfg(feature = "control")]
pub mod auth;
#[cfg(feature = "control")]
pub(crate) mod caps;
pub mod frame;
pub(crate) mod heartbeat;
pub mod messages;
#[cfg(feature = "control")]
pub(crate) mod registry;
#[cfg(feature = "control")]
pub mod server;
pub(crate) mod stream;
pub mod turn_credentials;
