//! TURN (RFC 8656) for browsers and Wave clients, on the relay's engine.
//!
//! - [`auth`]: long-term credentials — the TURN REST scheme's shared
//!   secrets, the long-term keys MESSAGE-INTEGRITY and
//!   MESSAGE-INTEGRITY-SHA256 are keyed with, nonces that expire and cost no
//!   memory per stranger;
//! - [`server`]: the server itself, sans-IO (requests, allocations,
//!   permissions, channels, relaying decisions, lifetimes; TCP allocations
//!   and their peer connections in [`connections`]), with
//!   [`settings`], per-allocation state in [`allocation`], byte budgets in
//!   [`limits`], counters in [`stats`] and the wire vocabulary in [`proto`];
//! - [`replica`]: allocations as a cluster replicates them (export, a
//!   journal of changes, the takeover's restore);
//! - [`service`]: the server on UDP, TCP and TLS sockets (tokio), and
//!   (feature `tunnels`) `handoff`: TURN on the tunnel listeners' port 443;
//! - (feature `control`) `credentials`: short-lived credentials a PBX's
//!   connector asks for on its control channel.
#![forbid(unsafe_code)]

pub mod allocation;
mod answer;
pub mod auth;
pub mod connections;
#[cfg(feature = "control")]
pub mod credentials;
#[cfg(feature = "tunnels")]
pub mod handoff;
pub mod limits;
pub mod offload;
mod prefixed;
pub mod proto;
pub mod replica;
mod requests;
pub mod server;
pub mod service;
pub mod settings;
pub mod stats;

pub use allocation::{ClientKey, RelayId, Transport};
pub use server::{ClientOutput, Command, PeerOutput, TurnNow, TurnServer, TurnSettingsError};
pub use settings::{PeerNet, Realm, RelayAddress, StaticUser, TurnLimits, TurnSettings};
pub use stats::{TurnDrop, TurnStats};
