//! The relay ⇄ connector control protocol (issue #5): framing and message
//! types specified byte by byte in `docs/connector-protocol.md`, the
//! authenticator, TLS settings, and the relay-side listener ([`server`]).
//! The connector side is [`crate::connector`].
#![forbid(unsafe_code)]

#[cfg(feature = "control")]
pub mod auth;
#[cfg(feature = "control")]
pub mod caps;
pub mod frame;
pub mod heartbeat;
pub mod messages;
#[cfg(feature = "control")]
pub mod registry;
#[cfg(feature = "control")]
pub mod server;
pub(crate) mod stream;
/// TLS settings (moved to [`crate::tls`]; kept here for existing paths).
pub use crate::tls;
