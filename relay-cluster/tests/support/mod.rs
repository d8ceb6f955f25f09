//! Test support: a real `redis-server` per test (`redis_server`), a proxy
//! in front of it that delays or cuts (`fault_proxy`), nodes beside relays
//! (`nodes`), ng commands to an engine (`ng`) and the real SRTP endpoints
//! of relay-core's test helpers (`core`).
#![allow(dead_code)]

// Its `control` helpers are behind relay-core feature names.
#[allow(unexpected_cfgs)]
#[path = "../../../relay-core/tests/support/mod.rs"]
pub mod core;

pub mod fault_proxy;
pub mod ng;
pub mod nodes;
mod redis_server;
pub use redis_server::RedisServer;

impl RedisServer {
    /// A plain client connection for checks.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url()).expect("url").get_connection().expect("connect")
    }
}
