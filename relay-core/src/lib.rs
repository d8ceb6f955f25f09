//! placeholder
#![deny(unsafe_code)]
pub mod quota;
pub mod session;
pub mod shard;
pub mod srtp_keys;
pub mod wire;
pub mod io;
pub mod relay;
