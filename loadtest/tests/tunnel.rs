//! `ucmrc-loadtest tunnel` for a few seconds: TLS connections complete end
//! to end through the relay's tunnels, and the report is consistent.

use std::time::Duration;

use loadtest::tunnel::{run, TunnelOptions};

#[test]
fn tls_connections_flow_through_the_tunnels_and_the_report_is_consistent() {
    let r = run(&TunnelOptions {
        connections: 3,
        duration: Duration::from_secs(2),
        bulk_mib: 16,
        ..TunnelOptions::default()
    })
    .expect("tunnel load");
    assert!(r.handshakes >= 10, "{r:?}");
    assert_eq!(r.failures, 0, "{r:?}");
    assert!(r.handshake_rate > 0.0);
    assert!(r.ttfb_p50_us > 0 && r.ttfb_p50_us <= r.ttfb_p99_us);
    let direct = r.direct_ttfb_p50_us.expect("direct measured");
    assert_eq!(r.added_ttfb_p50_us, Some(r.ttfb_p50_us as i64 - direct as i64));
    assert!(r.bulk_mib_s.is_some_and(|b| b > 0.0), "every bulk byte arrived: {r:?}");
    assert!(r.direct_bulk_mib_s.is_some());
    assert!(r.relay_cpu_ms_per_gib.is_some_and(|c| c > 0.0));
    let json = serde_json::to_value(&r).expect("json");
    for f in ["handshakes", "handshake_rate", "ttfb_p50_us", "ttfb_p99_us", "bulk_mib_s", "relay_cpu_ms_per_gib"] {
        assert!(json.get(f).is_some(), "{f}");
    }
}
