//! The protocol document matches the code: every ```frame block of
//! docs/connector-protocol.md decodes to a message of its frame type, and
//! re-encoding that message gives the same bytes.

use relay_core::api::{SessionRequest, UpdateRequest};
use relay_core::control::frame::FrameDecoder;
use relay_core::control::messages::Message;

#[test]
fn every_example_in_the_protocol_doc_decodes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/connector-protocol.md")).expect("doc");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```frame") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push(' ');
                b.push_str(l);
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 15, "examples found: {}", blocks.len());
    for block in blocks {
        let bytes: Vec<u8> = block.split_whitespace().map(|h| u8::from_str_radix(h, 16).expect("hex byte")).collect();
        let mut d = FrameDecoder::new();
        d.handle_bytes(&bytes);
        let frame = d.poll_frame().expect("valid frame").expect("complete frame");
        assert_eq!(d.buffered(), 0, "one frame per example");
        let msg = Message::decode(&frame).unwrap_or_else(|e| panic!("{e} in {block}"));
        assert_eq!(msg.encode().encode(), bytes, "canonical encoding of {:?}", frame.kind);
        // Request bodies are what the relay accepts.
        match msg {
            Message::Allocate(a) => {
                let req: SessionRequest = serde_json::from_value(a.session).expect("allocate body");
                req.to_spec_for_channel("acme").expect("valid session request");
            }
            Message::Update(u) => {
                let req: UpdateRequest = serde_json::from_value(u.update).expect("update body");
                req.to_update().expect("valid update");
            }
            _ => {}
        }
    }
}

/// Every code the control channel can send is documented, in backquotes.
#[test]
fn every_channel_error_code_is_in_the_protocol_doc() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/connector-protocol.md")).expect("doc");
    let missing: Vec<&str> = relay_core::codes::ErrorCode::ALL
        .iter()
        .filter(|c| c.on_control_channel())
        .map(|c| c.as_str())
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "docs/connector-protocol.md does not document {missing:?}");
}
