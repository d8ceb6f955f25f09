//! Wire parsing: demux, RTP header, STUN with MESSAGE-INTEGRITY, SRTP tag.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay_core::srtp_keys::{derive_auth_keys, SrtpMasterKey};
use relay_core::wire::rtp::RtpHeader;
use relay_core::wire::srtp_auth::{AuthVerifier, TagLen};
use relay_core::wire::stun::StunMessage;
use relay_core::wire::{classify, rtcp::RtcpHeader};

fn srtp_packet(master: &[u8]) -> Vec<u8> {
    let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    let mut s = srtp::Session::with_outbound_template(srtp::StreamPolicy {
        rtp: p,
        rtcp: p,
        key: master,
        ..Default::default()
    })
    .expect("srtp");
    let mut pkt = ucmrc_benches::rtp_packet(7, 1000);
    pkt.truncate(172);
    s.protect(&mut pkt).expect("protect");
    pkt
}

/// RFC 5769 §2.1 sample request.
const STUN: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65,
    0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51,
    0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20,
    0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2,
    0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

fn wire(c: &mut Criterion) {
    let master: Vec<u8> = (1..=30).collect();
    let pkt = srtp_packet(&master);
    let keys = derive_auth_keys(&SrtpMasterKey::from_concatenated(&master).expect("master"));
    let verifier = AuthVerifier::new(&keys.srtp, TagLen::Bits80);
    let rtcp = [0x80u8, 201, 0, 1, 0, 0, 0, 7];

    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify", |b| b.iter(|| classify(black_box(&pkt))));
    g.bench_function("rtp_header_parse", |b| b.iter(|| RtpHeader::parse(black_box(&pkt)).map(|h| h.ssrc())));
    g.bench_function("rtcp_header_parse", |b| b.iter(|| RtcpHeader::parse(black_box(&rtcp)).map(|h| h.ssrc())));
    g.bench_function("stun_parse_verify_integrity", |b| {
        b.iter(|| StunMessage::parse(black_box(&STUN)).map(|m| m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt")))
    });
    g.bench_function("stun_parse_verify_fingerprint", |b| {
        b.iter(|| StunMessage::parse(black_box(&STUN)).map(|m| m.verify_fingerprint()))
    });
    g.bench_function("srtp_verify_hmac_sha1_80_182B", |b| b.iter(|| verifier.verify_srtp(black_box(&pkt), 0)));
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
