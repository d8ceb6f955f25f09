//! UCMRC redundancy and scale-out on Redis (see `docs/HA.md`).
//!
//! Redis is trusted for availability, never for integrity: every record
//! is sealed with the cluster key and never applied older than what a node
//! applied; a node that cannot renew its lease stops answering changes
//! before the lease can expire elsewhere; session ids are minted in the
//! lease epoch's id space, so no two nodes hand out the same id.
//!
//! - [`seal`]: authenticated encryption under the cluster key.
//! - [`record`]: the sealed records (sessions, calls, change notes), their
//!   formats and golden samples.
//! - [`store`]: keys, the lease and fenced-write scripts, reads.
//! - [`lease`]: when a standby may take the lease (sans-IO).
//! - `warm`: the standby's copy; versions only move forward (sans-IO).
//! - `gate`, `keeper`: whether the relay serves; the lease renewed on its
//!   own task and connection, and the gate closed before it can lapse.
//! - `commit`: allocations acknowledged once they are in Redis.
//! - `registrar`: the node's entry for scale-out, on a task of its own.
//! - [`node`] with `standby`, `takeover` and `active`: the node beside a
//!   relay.
#![forbid(unsafe_code)]

mod active;
mod calls;
mod commit;
mod gate;
mod keeper;
pub mod lease;
pub mod node;
pub mod record;
mod registrar;
pub mod seal;
mod standby;
pub mod store;
mod takeover;
mod turn;
mod warm;

pub use calls::CallEngine;
pub use node::{Cluster, ClusterConfig, ClusterStatus, ClusterView, Role, TakeoverReport};
pub use seal::{ClusterKey, Sealer};
pub use store::NodeInfo;
pub use turn::TurnEngine;
