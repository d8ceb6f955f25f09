//! TURN (RFC 8656) for browsers and Wave clients, built in steps on the
//! relay's engine. So far: its long-term credentials ([`auth`]) — the TURN
//! REST scheme's shared secrets, the long-term keys MESSAGE-INTEGRITY and
//! MESSAGE-INTEGRITY-SHA256 are keyed with, and nonces that expire and cost
//! no memory per stranger. No listener answers TURN yet.
#![forbid(unsafe_code)]

pub mod auth;
