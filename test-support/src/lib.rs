//! UCMRC's test fixtures, in one crate that every test, bench and fuzz
//! target uses as a dev-dependency (never published). Each part is behind
//! the feature named in `Cargo.toml`, so a crate pays only for what its
//! tests use; relay-core forwards its own features here, so a test run of
//! relay-core with one feature builds relay-core with that feature alone.
//!
//! - [`poll`]: waiting on a condition (the only sleeps tests need);
//! - [`packets`], [`stun`]: RTP, RTCP and STUN as endpoints send them;
//! - `keys`: relay-side SRTP authentication keys (`engine` + `srtp-keys`);
//! - `sockets`: the fake socket table of sans-IO shard tests (`engine`);
//! - `srtp`: real SRTP endpoints and paced calls (`media`);
//! - `control`: a relay with its control listener, and connector settings
//!   (`control` + `connector` + `testkit`);
//! - `redis_server`, `fault_proxy`: a real redis-server and a proxy that
//!   delays or cuts the path to it (`redis`);
//! - `cluster`: cluster nodes beside relays (`cluster`);
//! - `turn_client`: a TURN client over UDP (`turn`);
//! - `ucmrc`: the `ucmrc` binary under test, and Kamailio (`ucmrc`);
//! - [`netns`], [`seccomp`]: network namespaces and syscall filters.

pub mod frames;
pub mod netns;
pub mod packets;
pub mod poll;
pub mod seccomp;
pub mod stun;

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(all(feature = "control", feature = "connector", feature = "testkit"))]
pub mod control;
#[cfg(feature = "redis")]
pub mod fault_proxy;
#[cfg(all(feature = "engine", feature = "srtp-keys"))]
pub mod keys;
#[cfg(feature = "redis")]
pub mod redis_server;
#[cfg(feature = "engine")]
pub mod sockets;
#[cfg(feature = "media")]
pub mod srtp;
#[cfg(feature = "turn")]
pub mod turn_client;
#[cfg(feature = "ucmrc")]
pub mod ucmrc;

/// Parses a socket address written in a test.
pub fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().expect("socket address")
}
