//! Loopback forwarding through a real relay, per backend: 64 sessions, one
//! 200-byte packet each way per session per iteration, all received before
//! the next iteration. Measures relay + kernel cost per forwarded packet on
//! one machine (latency-bound: compare backends in the same run).

use std::net::UdpSocket;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay_core::{BackendKind, LegLimits, LegSpec, Relay, RelayConfig, SessionDefaults, SessionSpec};

const SESSIONS: usize = 64;

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("loopback_forward");
    g.throughput(Throughput::Elements(2 * SESSIONS as u64));
    for backend in [BackendKind::Portable, BackendKind::Uring] {
        if backend == BackendKind::Uring && relay_core::io::uring::probe().is_err() {
            eprintln!("io_uring unavailable: skipping the uring forwarding bench");
            continue;
        }
        let relay = Relay::start(RelayConfig {
            backend,
            port_min: 22000,
            port_max: 22999,
            workers: 1,
            defaults: SessionDefaults { limits: LegLimits::default(), ..SessionDefaults::default() },
            ..RelayConfig::default()
        })
        .expect("relay");
        let h = relay.handle();
        let (a, b) = (UdpSocket::bind("127.0.0.1:0").expect("a"), UdpSocket::bind("127.0.0.1:0").expect("b"));
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        }
        let sessions: Vec<_> = (0..SESSIONS)
            .map(|_| {
                h.allocate(SessionSpec {
                    tenant: "bench".into(),
                    pbx: LegSpec { rtcp_mux: true, hint: Some(b.local_addr().expect("b")), ..LegSpec::default() },
                    endpoint: LegSpec { rtcp_mux: true, hint: Some(a.local_addr().expect("a")), ..LegSpec::default() },
                    ..SessionSpec::default()
                })
                .wait()
                .expect("allocate")
            })
            .collect();
        let pkt = ucmrc_benches::rtp_packet(1, 1);
        let mut buf = [0u8; 2048];
        g.bench_function(backend.as_str(), |bench| {
            bench.iter(|| {
                for s in &sessions {
                    a.send_to(&pkt, s.endpoint.rtp).expect("send");
                    b.send_to(&pkt, s.pbx.rtp).expect("send");
                }
                for _ in 0..SESSIONS {
                    a.recv(&mut buf).expect("recv a");
                    b.recv(&mut buf).expect("recv b");
                }
            })
        });
        drop(relay);
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
