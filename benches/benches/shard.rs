//! The sans-IO shard: `handle_datagram` on established sessions at 1 k and
//! 32 k sessions (64 k ports: one IP's whole port space), the latch
//! decision per policy, and the timer wheel.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use relay_core::shard::timer::TimerWheel;
use relay_core::srtp_keys::{derive_auth_keys, SrtpMasterKey};
use relay_core::{LatchPolicy, SrtpAuth, Verify};
use ucmrc_benches::{established_shard, rtp_packet};

fn handle_datagram(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_handle_datagram");
    g.throughput(Throughput::Elements(1));
    for sessions in [1_000usize, 32_000] {
        let (mut shard, _s, legs, t0) = established_shard(sessions, LatchPolicy::Window, Verify::Latch, None);
        let pkt = rtp_packet(1, 1);
        let mut rng = fastrand::Rng::with_seed(3);
        // Visit sessions in random order, as real traffic does (cache misses included).
        let order: Vec<usize> = (0..65_536).map(|_| rng.usize(..sessions)).collect();
        let mut i = 0;
        let now = t0 + Duration::from_millis(10);
        g.bench_function(format!("window_established_{sessions}_sessions"), |b| {
            b.iter(|| {
                let (port, src, _, _) = legs[order[i & 0xffff]];
                i += 1;
                black_box(shard.handle_datagram(now, port, src, black_box(&pkt)))
            })
        });
    }
    g.finish();
}

fn latch_decision(c: &mut Criterion) {
    let master: Vec<u8> = (1..=30).collect();
    let keys = derive_auth_keys(&SrtpMasterKey::from_concatenated(&master).expect("master"));
    let auth = SrtpAuth::sha1_80(&keys);
    let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    let mut tx = srtp::Session::with_outbound_template(srtp::StreamPolicy {
        rtp: p,
        rtcp: p,
        key: &master,
        ..Default::default()
    })
    .expect("srtp");
    let mut g = c.benchmark_group("latch_decision");
    g.throughput(Throughput::Elements(1));

    // Strict source, from the latched address: the common case.
    let (mut shard, _s, legs, t0) = established_shard(100, LatchPolicy::Window, Verify::Latch, None);
    let now = t0 + Duration::from_secs(10);
    let pkt = rtp_packet(1, 1);
    g.bench_function("window_latched_source", |b| b.iter(|| shard.handle_datagram(now, legs[0].0, legs[0].1, &pkt)));
    // A stranger after the window: refused without any crypto.
    let stranger = "192.0.2.1:9".parse().expect("addr");
    g.bench_function("window_stranger_refused", |b| b.iter(|| shard.handle_datagram(now, legs[0].0, stranger, &pkt)));

    // verify = all: one HMAC-SHA1 per packet.
    let (mut shard, _s, legs, t0) = established_shard(100, LatchPolicy::Window, Verify::All, Some(auth.clone()));
    let mut srtp_pkt = rtp_packet(9, 1);
    srtp_pkt.truncate(172);
    tx.protect(&mut srtp_pkt).expect("protect");
    g.bench_function("verify_all_srtp_182B", |b| b.iter(|| shard.handle_datagram(t0, legs[0].0, legs[0].1, &srtp_pkt)));

    // authenticated: a forged packet from a new source costs up to 3 HMACs.
    let (mut shard, _s, legs, t0) = established_shard(100, LatchPolicy::Authenticated, Verify::Latch, Some(auth));
    let mut forged = srtp_pkt.clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    g.bench_function("authenticated_forged_refused", |b| {
        b.iter(|| shard.handle_datagram(t0, legs[0].0, stranger, &forged))
    });
    g.finish();
}

fn timer_wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("schedule_and_expire_10k", |b| {
        b.iter_batched(
            || {
                let t0 = std::time::Instant::now();
                (TimerWheel::new(t0, Duration::from_millis(100), 1024), t0, Vec::with_capacity(10_000))
            },
            |(mut w, t0, mut out)| {
                for k in 0..10_000u64 {
                    w.schedule(t0 + Duration::from_millis(k * 7 % 60_000), k);
                }
                let mut t = t0;
                while !w.is_empty() {
                    t += Duration::from_millis(100);
                    w.expire(t, &mut out);
                }
                black_box(out.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, handle_datagram, latch_decision, timer_wheel);
criterion_main!(benches);
