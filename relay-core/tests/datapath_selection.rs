//! Backend selection when io_uring is blocked. The test re-runs itself in a
//! child process under a seccomp filter that makes `io_uring_setup`,
//! `io_uring_enter` and `io_uring_register` fail with EPERM, exactly as
//! Docker's default profile does. There, `auto` must fall back to the
//! portable backend (saying why) and still forward, and `uring` must refuse
//! to start. Also: the io_uring backend keeps relay sockets only in its
//! fixed-file tables, out of the descriptor table (RLIMIT_NOFILE bounds each
//! shard's table, not the relay).

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use relay_core::relay::StartError;
use relay_core::{BackendKind, LegSpec, Relay, RelayConfig, SessionSpec};

const TEST: &str = "auto_falls_back_and_uring_fails_loudly_when_io_uring_is_blocked";

#[test]
fn auto_falls_back_and_uring_fails_loudly_when_io_uring_is_blocked() {
    if std::env::var_os("UCMRC_SECCOMP_CHILD").is_some() {
        return under_seccomp();
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", TEST, "--nocapture", "--test-threads=1"]).env("UCMRC_SECCOMP_CHILD", "1");
    // SAFETY (test harness): the closure runs in the forked child before
    // exec and only makes two prctl/seccomp calls on stack data.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(block_io_uring);
    }
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("SECCOMP-CHILD-OK"), "child did not run the scenario:\n{stdout}");
    assert!(!stdout.contains("0 passed"), "child ran no test:\n{stdout}");
}

fn under_seccomp() {
    let config =
        |backend| RelayConfig { backend, port_min: 20000, port_max: 29999, workers: 1, ..RelayConfig::default() };
    match Relay::start(config(BackendKind::Uring)) {
        Err(StartError::Datapath(reason)) => assert!(reason.contains("io_uring"), "{reason}"),
        other => panic!("uring must fail loudly, got {other:?}"),
    }
    let relay = Relay::start(config(BackendKind::Auto)).expect("auto starts");
    let dp = relay.datapath();
    assert_eq!(dp.running, BackendKind::Portable);
    let reason = dp.fallback_reason.clone().expect("a reason");
    assert!(reason.contains("seccomp") || reason.contains("io_uring_disabled"), "{reason}");
    // And it forwards.
    let (pbx, phone) = (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
    pbx.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let s = relay
        .handle()
        .allocate(SessionSpec {
            tenant: "t".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    let pkt = [0x80u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 42];
    phone.send_to(&pkt, s.endpoint.rtp).expect("send");
    let mut buf = [0u8; 64];
    let n = pbx.recv(&mut buf).expect("forwarded on the portable backend");
    assert_eq!(&buf[..n], &pkt);
    println!("SECCOMP-CHILD-OK");
}

/// EPERM for the three io_uring calls (425/426/427 on every architecture).
fn block_io_uring() -> std::io::Result<()> {
    test_support::seccomp::deny_with_eperm(&[425, 426, 427])
}

/// With io_uring, relay ports cost no file descriptors: 3 000 sockets
/// forward while the process's descriptor count barely moves.
#[test]
fn uring_relay_sockets_live_outside_the_descriptor_table() {
    if let Err(reason) = relay_core::io::uring::probe() {
        assert!(std::env::var("UCMRC_ALLOW_NO_URING").is_ok_and(|v| v == "1"), "io_uring unavailable: {reason}");
        return;
    }
    let fds = || std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Uring,
        port_min: 16000,
        port_max: 19999,
        workers: 1,
        tenant_port_share_percent: 100,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    let h = relay.handle();
    let before = fds();
    let (pbx, phone) = (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
    let sessions: Vec<_> = (0..1500)
        .map(|_| {
            h.allocate(SessionSpec {
                tenant: "fd".into(),
                pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
                endpoint: LegSpec {
                    rtcp_mux: true,
                    hint: Some(phone.local_addr().expect("addr")),
                    ..LegSpec::default()
                },
                ..SessionSpec::default()
            })
            .wait()
            .expect("allocate")
        })
        .collect();
    let during = fds();
    assert!(during < before + 50, "3 000 relay sockets took {} descriptors", during - before);
    // And they forward: the last session, both ways.
    let last = sessions.last().expect("sessions");
    phone.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    pbx.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let pkt = [0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5, 1, 2, 3];
    let mut buf = [0u8; 64];
    pbx.send_to(&pkt, last.pbx.rtp).expect("send");
    assert_eq!(phone.recv(&mut buf).expect("forwarded"), pkt.len());
    phone.send_to(&pkt, last.endpoint.rtp).expect("send");
    assert_eq!(pbx.recv(&mut buf).expect("forwarded"), pkt.len());
}
