//! I/O: the datapath backends that move bytes between sockets and a sans-IO
//! shard, zero-copy TCP pumping for tunnels, and thin system-call wrappers.
//!
//! Each shard runs on its own thread with its own sockets, poller and
//! buffers (thread-per-core, shared nothing). The control plane reaches a
//! shard only through its `Mailbox`: a bounded queue plus an eventfd wake-up.
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

#[cfg(any(feature = "control", feature = "turn"))]
pub(crate) mod accept;
#[cfg(feature = "batch-send")]
#[doc(hidden)] // the load generator's sender
pub mod batch_send;
// The fast path's loader and maps: selected with `BackendKind::Ebpf`,
// driven directly only by the workspace's tests.
#[cfg(feature = "ebpf")]
#[doc(hidden)]
pub mod ebpf;
#[cfg(feature = "engine")]
mod engine;
pub mod pktinfo;
#[cfg(feature = "engine")]
pub(crate) mod portable;
#[cfg(feature = "async")]
pub mod splice;
#[doc(hidden)] // system-call wrappers, for the workspace's tools
pub mod sys;
#[cfg(feature = "engine")]
#[doc(hidden)] // the io_uring backend (probe and internals), for the workspace's benches and tests
pub mod uring;

#[cfg(feature = "ebpf")]
pub use ebpf::Outcomes as FastPathOutcomes;
#[cfg(feature = "engine")]
pub use engine::*;
