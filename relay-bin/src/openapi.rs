//! The OpenAPI document of the admin API, as this relay serves it.
//!
//! `openapi.json` (the file) states the shipped defaults and both
//! authentication modes; [`document`] adapts it to the running relay —
//! its ceilings, its default latching and verification, and whether it
//! has a token — so that a tool generating requests from the document (for
//! example Schemathesis) sees exactly what the server enforces.

use relay_core::{LatchPolicy, SessionDefaults, Verify};
use serde_json::{json, Value};

/// The document as shipped (shipped defaults, both authentication modes).
pub const TEMPLATE: &str = include_str!("openapi.json");

/// The document for a relay with these session defaults and ceilings,
/// with (`tokenless = false`) or without a bearer token.
pub fn document(defaults: &SessionDefaults, tokenless: bool) -> Value {
    let mut doc: Value = serde_json::from_str(TEMPLATE).unwrap_or_else(|_| json!({}));
    let c = &defaults.ceilings;
    let set = |doc: &mut Value, pointer: &str, v: Value| {
        if let Some(slot) = doc.pointer_mut(pointer) {
            *slot = v;
        }
    };
    set(&mut doc, "/components/schemas/MaxPps/maximum", json!(c.max_pps.unwrap_or(u32::MAX)));
    set(&mut doc, "/components/schemas/MaxBytesPerSec/maximum", json!(c.max_bytes_per_sec.unwrap_or(u64::MAX)));
    set(
        &mut doc,
        "/components/schemas/SessionRequest/properties/idle_timeout_secs/maximum",
        json!(c.idle_timeout.as_secs()),
    );
    set(
        &mut doc,
        "/components/schemas/SessionRequest/properties/max_duration_secs/maximum",
        json!(c.max_duration.as_secs()),
    );
    // A request that leaves latch (verify) out gets the relay's default: when
    // that default needs credentials, leaving it out no longer suffices.
    let absent = |field: &str| json!({ "not": { "required": [field] } });
    for (i, field, needs_keys) in
        [(0, "latch", defaults.latch == LatchPolicy::Authenticated), (1, "verify", defaults.verify == Verify::All)]
    {
        if needs_keys {
            let pointer = format!("/components/schemas/SessionRequest/allOf/{i}/anyOf");
            if let Some(Value::Array(alternatives)) = doc.pointer_mut(&pointer) {
                alternatives.retain(|a| *a != absent(field));
            }
        }
    }
    doc["security"] = if tokenless { json!([{}]) } else { json!([{ "bearer": [] }]) };
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_states_the_shipped_defaults() {
        let template: Value = serde_json::from_str(TEMPLATE).expect("valid JSON");
        let mut served = document(&SessionDefaults::default(), false);
        served["security"] = template["security"].clone();
        assert_eq!(served, template, "openapi.json must state the shipped ceilings and defaults");
    }

    #[test]
    fn the_error_codes_are_exactly_the_admin_apis() {
        let template: Value = serde_json::from_str(TEMPLATE).expect("valid JSON");
        let listed: Vec<&str> = template["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort_unstable();
        let mut codes: Vec<&str> =
            relay_core::codes::ErrorCode::ALL.iter().filter(|c| c.on_admin_api()).map(|c| c.as_str()).collect();
        codes.sort_unstable();
        assert_eq!(listed_sorted, codes, "openapi.json's Error.code enum must list every admin API code");
    }

    #[test]
    fn the_named_settings_are_exactly_the_cores() {
        let template: Value = serde_json::from_str(TEMPLATE).expect("valid JSON");
        let schemas = &template["components"]["schemas"];
        for schema in ["SessionRequest", "UpdateRequest", "Session"] {
            for (field, names) in [("latch", LatchPolicy::NAMES), ("verify", Verify::NAMES)] {
                assert_eq!(schemas[schema]["properties"][field]["enum"], json!(names), "{schema}.{field}");
            }
        }
    }

    #[test]
    fn the_served_document_follows_the_relay() {
        let mut d = SessionDefaults { latch: LatchPolicy::Authenticated, ..SessionDefaults::default() };
        d.ceilings.max_pps = Some(77);
        let doc = document(&d, true);
        assert_eq!(doc["components"]["schemas"]["MaxPps"]["maximum"], 77);
        assert_eq!(doc["security"], json!([{}]));
        let latch_rule = &doc["components"]["schemas"]["SessionRequest"]["allOf"][0]["anyOf"];
        assert_eq!(latch_rule.as_array().map(Vec::len), Some(2), "leaving latch out needs keys now");
        assert_eq!(document(&SessionDefaults::default(), false)["security"], json!([{ "bearer": [] }]));
    }
}
