//! UCMRC redundancy and scale-out on Redis (see `docs/HA.md`).
//!
//! - [`seal`]: secrets sealed with the cluster key before they reach Redis.
//! - [`record`]: the stored form of a session.
//! - [`store`]: keys, the lease and fenced-write scripts, reads.
//! - [`lease`]: when a standby may take the lease (sans-IO).
//! - `keeper`: the held lease renewed on its own task and connection.
//! - [`node`]: the node beside a relay: replication, warm copy, takeover.
#![forbid(unsafe_code)]

mod calls;
mod keeper;
pub mod lease;
pub mod node;
pub mod record;
pub mod seal;
pub mod store;

pub use calls::CallEngine;
pub use node::{Cluster, ClusterConfig, ClusterStatus, ClusterView, Role, TakeoverReport};
pub use seal::{ClusterKey, Sealer};
pub use store::NodeInfo;
