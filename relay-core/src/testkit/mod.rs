//! Simulated endpoints for tools and tests: what a PBX or a phone does that
//! the relay itself never does (encrypting SRTP, holding throwaway TLS
//! certificates). Used by `ucmrc demo` and
//! `ucmrc-loadtest`; nothing in the relay's datapath depends on it.
#![forbid(unsafe_code)]

pub mod pki;
pub mod srtp;
