//! One relay socket's name: a port on one of the relay's addresses. A leaf
//! of the engine's modules (sessions, shards and the datapaths all name
//! relay sockets; it depends on none of them).

/// One relay socket: a port on one of the relay's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayPort {
    /// The address: an index into the relay's addresses
    /// ([`ShardConfig::addresses`](crate::shard::ShardConfig::addresses),
    /// the same order in every shard).
    pub addr: u16,
    /// The port.
    pub port: u16,
}

impl RelayPort {
    /// `port` on address `addr`.
    pub const fn new(addr: u16, port: u16) -> Self {
        Self { addr, port }
    }
}

/// A port on the first address (the common one-address relay).
impl From<u16> for RelayPort {
    fn from(port: u16) -> Self {
        Self { addr: 0, port }
    }
}
