//! A fake socket table for sans-IO shard tests, benches and fuzz targets:
//! it records which relay ports a shard holds open and can refuse binds.

use std::collections::BTreeSet;
use std::io;

use relay_core::shard::{PortClose, PortSockets, RelayPort};

/// Records which relay ports a shard has open; can refuse some binds.
#[derive(Debug, Default)]
pub struct FakeSockets {
    /// Ports open now.
    pub open: BTreeSet<RelayPort>,
    /// Port numbers that fail to bind (on every address).
    pub refuse: BTreeSet<u16>,
    /// Every successful open so far.
    pub opened_total: usize,
    /// Answer `Closing` (like io_uring with an armed receive).
    pub defer_close: bool,
}

impl PortSockets for FakeSockets {
    fn open(&mut self, port: RelayPort) -> io::Result<()> {
        if self.refuse.contains(&port.port) {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        assert!(self.open.insert(port), "port {port:?} opened twice");
        self.opened_total += 1;
        Ok(())
    }
    fn close(&mut self, port: RelayPort) -> PortClose {
        assert!(self.open.remove(&port), "port {port:?} closed but not open");
        if self.defer_close {
            PortClose::Closing
        } else {
            PortClose::Closed
        }
    }
}
