//! The relay ⇄ connector control protocol (issue #5, first part): framing
//! and message types, specified byte by byte in `docs/connector-protocol.md`.
//! The TLS listener, authentication and the connector library build on it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod frame;
pub mod messages;
