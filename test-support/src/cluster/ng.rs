//! ng commands sent straight to an engine, as Kamailio's module would.

use relay_core::ng::bencode::{dict, Value};
use relay_core::ng::NgEngine;

/// One ng command (each with its own cookie: the engine answers a repeated
/// cookie from its cache).
pub async fn ng(engine: &NgEngine, pairs: Vec<(&str, Value)>) -> Value {
    static COOKIE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let cookie = COOKIE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let msg = [format!("c{cookie} ").into_bytes(), dict(pairs).encode()].concat();
    let reply = engine.handle_message(&msg).await;
    let space = reply.iter().position(|b| *b == b' ').expect("cookie");
    relay_core::ng::bencode::decode(&reply[space + 1..]).expect("bencode")
}

/// A reply's `result` ("" when it has none).
pub fn result(v: &Value) -> &str {
    v.get("result").and_then(Value::as_str).unwrap_or("")
}
