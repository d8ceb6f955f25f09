//! What a cluster node reads from Redis: arbitrary bytes as a session
//! record, an ng call record, a TURN allocation record or a change note
//! are refused without a panic;
//! and arbitrary bodies sealed with the node's own key (what only a holder
//! of the cluster key could write) reach the body parsers, which refuse
//! or read them without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_cluster::record::{Codec, Kind, Version};
use relay_cluster::{ClusterKey, Sealer};

const SESSION_ID: &str = "0100000200000001";
const CALL_ID: &str = "Y2FsbA==";
const TURN_ID: &str = "v4-30001";

fuzz_target!(|data: &[u8]| {
    let codec = Codec::new(Sealer::new(ClusterKey::new(&[7; 32]), Vec::new()), "fuzz").accept_v1(true);
    let Some((&mode, rest)) = data.split_first() else { return };
    let version = Version { epoch: 1, seq: 1 };
    match mode % 5 {
        0 => {
            let _ = codec.decode_session(rest, SESSION_ID, 0);
            let _ = codec.decode_call(rest, CALL_ID);
            let _ = codec.decode_turn(rest, TURN_ID);
            let _ = codec.decode_note(rest);
        }
        4 => {
            let record = codec.seal_body(Kind::Turn, TURN_ID, "acme", version, rest);
            if let Ok(d) = codec.decode_turn(record.as_bytes(), TURN_ID) {
                assert_eq!((d.state.id().as_str(), d.state.tenant.as_str()), (TURN_ID, "acme"));
            }
        }
        1 => {
            let record = codec.seal_body(Kind::Session, SESSION_ID, "acme", version, rest);
            if let Ok(d) = codec.decode_session(record.as_bytes(), SESSION_ID, u64::MAX) {
                assert_eq!(d.state.id.to_string(), SESSION_ID);
                assert_eq!(d.state.tenant, "acme");
            }
        }
        2 => {
            let record = codec.seal_body(Kind::Call, CALL_ID, "ng", version, rest);
            if let Ok(d) = codec.decode_call(record.as_bytes(), CALL_ID) {
                assert_eq!(d.state.call_id, CALL_ID);
            }
        }
        _ => {
            let note = codec.seal_body(Kind::Note, "", "", version, rest);
            if let Ok((_, v)) = codec.decode_note(note.as_bytes()) {
                assert_eq!(v, version);
            }
        }
    }
});
