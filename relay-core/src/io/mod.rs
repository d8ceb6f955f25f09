//! I/O: the datapath backends that move bytes between sockets and a sans-IO
//! shard, zero-copy TCP pumping for tunnels, and thin system-call wrappers.
//!
//! Each shard runs on its own thread with its own sockets, poller and
//! buffers (thread-per-core, shared nothing). The control plane reaches a
//! shard only through its `Mailbox`: a bounded queue plus an eventfd wake-up.
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

#[cfg(feature = "batch-send")]
pub mod batch_send;
#[cfg(feature = "engine")]
mod engine;
#[cfg(feature = "engine")]
pub mod portable;
#[cfg(feature = "async")]
pub mod splice;
pub mod sys;
#[cfg(feature = "engine")]
pub mod uring;

#[cfg(feature = "engine")]
pub use engine::*;
