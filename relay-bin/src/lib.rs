//! The `ucmrc` binary's building blocks: configuration (relay and
//! connector), the admin HTTP API, Prometheus metrics, the daemon (signals,
//! reload, drain), the ng transports and the demo. `src/main.rs` is the
//! command line on top. A library so that the fuzz targets can drive the
//! configuration parsers.

pub mod admin;
pub mod config;
pub mod connect;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod metrics;
pub mod ng;
pub mod openapi;
