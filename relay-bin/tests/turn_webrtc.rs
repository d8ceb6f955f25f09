//! A real WebRTC stack through ucmrc's TURN: two aiortc peers (PyPI, in the
//! venv `scripts/setup-webrtc.sh` makes; the test command runs it) with a
//! relay-only ICE policy open a data channel and exchange messages, every
//! byte checked, over UDP and over TLS on the tunnel listener shared with
//! SNI pass-through (the browser-behind-a-proxy case: `turns:` on 443).

use std::process::Command;

use test_support::ucmrc::*;

const SECRET: &str = "the-pbx-and-the-relay-share-this";

fn python() -> std::path::PathBuf {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/webrtc-venv/bin/python");
    let path = std::path::PathBuf::from(venv);
    assert!(path.exists(), "{venv} is missing: run scripts/setup-webrtc.sh (the test command does)");
    path
}

/// Runs the two peers against `url`; returns their JSON report (a failure
/// shows the relay's TURN and tunnel counters).
fn peers(r: &Relay, url: &str, env: &[(&str, &std::path::Path)], resolve: Option<&str>) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/turn_peers.py");
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(python()).args([script, url, SECRET]);
    if let Some(r) = resolve {
        cmd.args(["--resolve", r]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let text = metrics_text(r);
        let counters: Vec<&str> = text
            .lines()
            .filter(|l| (l.starts_with("ucmrc_turn") || l.starts_with("ucmrc_tunnel")) && !l.ends_with(" 0"))
            .collect();
        panic!("{url}: {stdout}\n{}\nrelay counters:\n{}", String::from_utf8_lossy(&out.stderr), counters.join("\n"));
    }
    json(stdout.lines().last().expect("a report"))
}

#[test]
fn webrtc_peers_with_a_relay_only_policy_talk_through_turn_over_udp_and_over_tls_on_443() {
    let dir = temp_dir("turn-webrtc");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let (_, ccert, ckey) = write_pki(&dir, "control");
    let (ca, tcert, tkey) = write_pki_for(&dir, "turn", "turn.relay.test");
    let r = start(Some(&config(&format!(
        "allow_loopback_peers = false\n\
         [control]\nlisten = \"127.0.0.1:0\"\ncert = {ccert:?}\nkey = {ckey:?}\n\
         [tunnels]\ndata_listen = \"127.0.0.1:0\"\ndomain_patterns = [\"{{tenant}}.relay.test\"]\n\
         [[tunnels.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"sip-tls\"\n\
         [turn]\nlisten = [\"127.0.0.1:0\"]\nport_min = 30000\nport_max = 30999\n\
         tls_cert = {tcert:?}\ntls_key = {tkey:?}\nserver_names = [\"turn.relay.test\"]\n\
         [[turn.realms]]\nname = \"turn.relay.test\"\ntenant = \"acme\"\nsecret_files = [{secret:?}]\n"
    ))));
    let udp = r.turn_addr("udp");
    let report = peers(&r, &format!("turn:{udp}?transport=udp"), &[], None);
    assert_eq!(report["callee_received"], true, "{report}");
    assert_eq!(report["caller_received"], true, "{report}");
    assert_eq!(report["offered_candidate_types"], serde_json::json!(["relay"]), "relay candidates only: {report}");
    let relayed = scrape(&r)["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"];
    assert!(relayed >= 40.0, "the data went through TURN: {relayed}");

    // turns: on the tunnel listener, by server name (the peers verify the
    // certificate against the test CA; the name resolves in their process).
    let shared = r.tunnels[0].1;
    let report = peers(
        &r,
        &format!("turns:turn.relay.test:{}?transport=tcp", shared.port()),
        &[("SSL_CERT_FILE", &ca)],
        Some(&format!("turn.relay.test={}", shared.ip())),
    );
    assert_eq!(
        (report["callee_received"].as_bool(), report["caller_received"].as_bool()),
        (Some(true), Some(true)),
        "{report}"
    );
    let m = scrape(&r);
    assert!(m["ucmrc_tunnel_handoffs_total"] >= 2.0, "both peers came in on the shared listener");
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"] >= relayed + 40.0);
    let _ = std::fs::remove_dir_all(dir);
}
