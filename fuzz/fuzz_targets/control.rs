//! Control-channel frames: the decoder fed arbitrary bytes in arbitrary
//! chunks, and every complete frame's message decoded and re-encoded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::control::frame::{FrameDecoder, MAX_PAYLOAD};
use relay_core::control::messages::Message;

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new();
    let chunk = 1 + usize::from(data.first().copied().unwrap_or(0) % 17);
    for part in data.chunks(chunk) {
        d.handle_bytes(part);
        loop {
            match d.poll_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD);
                    if let Ok(m) = Message::decode(&f) {
                        let again = Message::decode(&m.encode()).expect("our encoding decodes");
                        assert_eq!(again, m);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= 8 + MAX_PAYLOAD + chunk);
    }
});
