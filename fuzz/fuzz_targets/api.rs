//! Session request bodies as the admin API (`POST /v1/sessions`,
//! `PATCH /v1/sessions/{id}`) and the control channel (`allocate`,
//! `update`) parse them: arbitrary JSON never panics, and a request that
//! validates survives a serialize/parse round trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::api::{parse_session_id, SessionRequest, UpdateRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<SessionRequest>(data) {
        let channel = req.to_spec_for_channel("acme");
        if let Some(t) = req.tenant.as_deref() {
            let admin = req.to_spec(t);
            if t == "acme" {
                assert_eq!(admin.is_ok(), channel.is_ok());
            }
        }
        let again: SessionRequest = serde_json::from_slice(&serde_json::to_vec(&req).expect("encodes")).expect("decodes");
        assert_eq!(again, req);
    }
    if let Ok(upd) = serde_json::from_slice::<UpdateRequest>(data) {
        let _ = upd.to_update();
        let again: UpdateRequest = serde_json::from_slice(&serde_json::to_vec(&upd).expect("encodes")).expect("decodes");
        assert_eq!(again, upd);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = parse_session_id(s) {
            assert_eq!(id.to_string(), s.to_ascii_lowercase());
        }
    }
});
