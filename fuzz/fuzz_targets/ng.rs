//! ng protocol parsing: bencode round trip and SDP parse/rewrite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::ng::{bencode, sdp};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        let again = bencode::decode(&v.encode()).expect("our own encoding decodes");
        assert_eq!(again, v);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(media) = sdp::parse(text) {
            let ice = if data.len() % 2 == 0 { sdp::IceRewrite::Remove } else { sdp::IceRewrite::RelayCandidates };
            let rw = sdp::Rewrite {
                addr: "203.0.113.1".parse().unwrap(),
                media: media
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        Some(sdp::MediaRewrite {
                            rtp: 30000 + 2 * i as u16,
                            rtcp: (i % 2 == 1).then_some(30001 + 2 * i as u16),
                            mux: i % 3 == 0,
                            ice,
                            proto: (i % 4 == 1).then(|| "RTP/AVPF".to_string()),
                            // Strip every other format, with their attributes.
                            strip_formats: m.formats.iter().step_by(2).cloned().collect(),
                            strip_crypto: data.len() % 5 == 0,
                            strip_dtls: data.len() % 7 == 0,
                        })
                    })
                    .collect(),
                replace_origin: data.len() % 3 == 0,
            };
            let out = sdp::rewrite(text, &rw).expect("a parsed SDP rewrites");
            let again = sdp::parse(&out).expect("the rewrite parses");
            assert_eq!(again.len(), media.len());
        }
    }
});
