//! The relay ⇄ connector control protocol (issue #5): framing and message
//! types specified byte by byte in `docs/connector-protocol.md`, the
//! authenticator, TLS settings, and the relay-side listener ([`server`]).
//! The connector side is [`crate::connector`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod caps;
pub mod frame;
pub mod messages;
pub mod server;
pub(crate) mod stream;
pub mod tls;
