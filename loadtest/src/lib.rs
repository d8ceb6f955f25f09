//! `ucmrc-loadtest`: load that performance engineers can trust, through a
//! UCMRC relay. `media` sends real SRTP (RustCrypto) on a global schedule
//! and verifies every packet with libsrtp, so corruption is counted apart
//! from loss; `tunnel` drives TLS connections through SNI-routed tunnels;
//! see `src/main.rs` for the command line.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod dtls;
pub mod media;
pub mod pace;
pub mod packet;
pub mod sessions;
pub mod stats;
pub mod target;
pub mod tunnel;
pub mod turn;
