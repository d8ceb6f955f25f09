//! Golden records of every format, and what a Redis writer can do to a
//! record: each edit is refused.
//!
//! The golden files are sealed under [`golden_codec`]'s key. They are
//! written by the release that introduced their format and never again:
//! `UCMRC_WRITE_GOLDEN=1 cargo test -p relay-cluster golden` writes those
//! of the current format (then commit them only when a new format starts).
//! The TURN record's golden file is `turn.rs`'s (feature `turn`).

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::session::DropCounters;
use relay_core::session::{LegState, ReplayState, SessionState};
use relay_core::wire::srtp_auth::TagLen;
use relay_core::LegLimits;
use relay_core::{DropReason, LegStats};
use relay_core::{LatchPolicy, SrtpAuth, Verify};
use relay_core::{LegPorts, SessionId};

use super::*;
use crate::seal::{ClusterKey, Sealer};

const GOLDEN_ID: &str = "0100000200000001";

fn golden_codec() -> Codec {
    Codec::new(Sealer::new(ClusterKey::new(&[0x42; 32]), Vec::new()), "golden")
}

/// The state the golden session records hold: every field set to
/// something that is not its default.
fn golden_state() -> SessionState {
    let mut drops = DropCounters::default();
    drops.add_n(DropReason::Unauthenticated, 3);
    drops.add_n(DropReason::Replay, 2);
    let leg = |n: u8, port: u16| LegState {
        ports: LegPorts { addr: 0, rtp: port, rtcp: Some(port + 1) },
        hint: Some(SocketAddr::from(([198, 51, 100, n], 4000 + u16::from(n)))),
        remote_rtp: Some(SocketAddr::from(([198, 51, 100, n], 4000 + u16::from(n)))),
        remote_rtcp: Some(SocketAddr::from(([198, 51, 100, n], 4001 + u16::from(n)))),
        srtp_auth: Some(SrtpAuth {
            rtp_key: [n; 20],
            rtcp_key: [n + 1; 20],
            rtp_tag: TagLen::Bits80,
            rtcp_tag: TagLen::Bits32,
        }),
        stun_password: Some(format!("stun-password-{n}").into_bytes()),
        limits: LegLimits { max_pps: Some(100 + u32::from(n)), max_bytes_per_sec: Some(64_000) },
        await_hint: n == 2,
        remote_mux: n == 1,
        rtcp_hint_port: Some(5000 + u16::from(n)),
        blocked: n == 2,
        last_ssrc: Some(0x1000 + u32::from(n)),
        replay: vec![ReplayState { ssrc: 0x1000 + u32::from(n), srtp_highest: Some(70_000), srtcp_highest: Some(12) }],
        stats: LegStats {
            packets_received: 1000 + u64::from(n),
            bytes_received: 172_000,
            rtcp_packets_received: 10,
            rtcp_bytes_received: 800,
            packets_forwarded: 995,
            bytes_forwarded: 171_000,
            latches: 1,
            relatches: u64::from(n),
            drops,
        },
    };
    SessionState {
        id: SessionId(0x0100_0002_0000_0001),
        tenant: "acme".into(),
        latch: LatchPolicy::Authenticated,
        verify: Verify::All,
        learning_window: Duration::from_secs(3),
        learning_left: Duration::ZERO,
        idle_timeout: Duration::from_secs(60),
        max_duration: Duration::from_secs(4 * 3600),
        age: Duration::from_secs(95),
        idle: Duration::from_millis(20),
        quality_clock_rate: Some(8000),
        pbx: leg(1, 30_000),
        endpoint: leg(2, 30_002),
    }
}

/// `decoded` is `golden_state()` aged by some time since it was written.
fn assert_golden(decoded: &SessionState) {
    let want = golden_state();
    let aged = decoded.age.saturating_sub(want.age);
    assert_eq!(decoded, &want.aged(aged), "the golden state, aged by {aged:?}");
}

fn golden(name: &str) -> String {
    let path = format!("{}/src/record/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
}

#[test]
fn golden_records_of_the_current_format_decode_to_their_state() {
    let codec = golden_codec();
    if std::env::var_os("UCMRC_WRITE_GOLDEN").is_some() {
        let dir = format!("{}/src/record/golden", env!("CARGO_MANIFEST_DIR"));
        let v = Version { epoch: 7, seq: 42 };
        let session = codec.encode_session(&golden_state(), v);
        std::fs::write(format!("{dir}/session-v{FORMAT}.json"), format!("{session}\n")).expect("write");
        #[cfg(feature = "ng")]
        {
            let call = codec.encode_call(&golden_call(), "ng", v);
            std::fs::write(format!("{dir}/call-v{FORMAT}.json"), format!("{call}\n")).expect("write");
        }
    }
    let d = codec.decode_session(golden("session-v2.json").as_bytes(), GOLDEN_ID, unix_ms_now()).expect("decodes");
    assert_golden(&d.state);
    assert_eq!((d.version, d.ignored), (Version { epoch: 7, seq: 42 }, Ignored(0)));
}

#[test]
fn format_1_records_are_read_only_when_accepted_for_an_upgrade() {
    let record = golden("session-v1.json");
    let refused = golden_codec().decode_session(record.as_bytes(), GOLDEN_ID, 0);
    assert_eq!(refused, Err(RecordError::Unauthenticated));
    let codec = golden_codec().accept_v1(true);
    let d = codec.decode_session(record.as_bytes(), GOLDEN_ID, unix_ms_now()).expect("decodes");
    assert_golden(&d.state);
    assert_eq!(d.version, Version { epoch: 7, seq: 41 });
    // Still only under its own id, and its secrets only in its place.
    assert_eq!(codec.decode_session(record.as_bytes(), "0100000200000002", 0), Err(RecordError::Misplaced("id")));
    let elsewhere = Codec::new(Sealer::new(ClusterKey::new(&[0x42; 32]), Vec::new()), "other").accept_v1(true);
    assert!(matches!(elsewhere.decode_session(record.as_bytes(), GOLDEN_ID, 0), Err(RecordError::Seal(_))));
}

/// Format 1 listed drops as pairs: a name listed twice (no release wrote
/// one, a Redis writer can) adds up, saturating, and never overflows.
#[test]
fn a_format_1_drop_listed_twice_adds_up_without_overflow() {
    let record = golden("session-v1.json").replacen(
        r#""drops":[["unauthenticated",3],"#,
        &format!(r#""drops":[["unauthenticated",{}],["unauthenticated",3],"#, u64::MAX),
        1,
    );
    assert!(record.contains(&u64::MAX.to_string()), "the golden record lists its drops as expected");
    let d = golden_codec().accept_v1(true).decode_session(record.as_bytes(), GOLDEN_ID, 0).expect("decodes");
    assert_eq!(d.state.pbx.stats.drops.get(DropReason::Unauthenticated), u64::MAX);
    assert_eq!(d.state.pbx.stats.drops.get(DropReason::Replay), 2);
}

/// What a Redis writer can change in an envelope — its id, kind, tenant,
/// version, time, format, key id, or one bit of the sealed body — and
/// copying it to another id or group: each is refused.
#[test]
fn every_edit_of_a_record_is_refused() {
    let codec = golden_codec();
    let record = codec.encode_session(&golden_state(), Version { epoch: 3, seq: 9 });
    assert!(codec.decode_session(record.as_bytes(), GOLDEN_ID, 0).is_ok());
    let env: serde_json::Value = serde_json::from_str(&record).expect("json");
    let edit = |field: &str, value: serde_json::Value| {
        let mut e = env.clone();
        e[field] = value;
        e.to_string()
    };
    let edits = [
        ("id", edit("id", "0100000200000002".into())),
        ("tenant", edit("tenant", "other-tenant".into())),
        ("epoch", edit("epoch", 4.into())),
        ("seq", edit("seq", 1.into())),
        ("written", edit("written_unix_ms", 0.into())),
        ("compat", edit("compat", 1.into())),
        ("v", edit("v", 3.into())),
    ];
    for (what, forged) in &edits {
        let id = if *what == "id" { "0100000200000002" } else { GOLDEN_ID };
        let r = codec.decode_session(forged.as_bytes(), id, 0);
        assert!(matches!(r, Err(RecordError::Seal(_))), "{what}: {r:?}");
    }
    // The body, bit by bit at its start, middle and end; the key id.
    let sealed = env["sealed"].as_str().expect("sealed");
    let (key, b64) = sealed.split_once('.').expect("format");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).expect("base64");
    for i in [0, raw.len() / 2, raw.len() - 1] {
        let mut t = raw.clone();
        t[i] ^= 0x10;
        let forged =
            edit("sealed", format!("{key}.{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(&t)).into());
        assert!(matches!(codec.decode_session(forged.as_bytes(), GOLDEN_ID, 0), Err(RecordError::Seal(_))), "bit {i}");
    }
    let forged = edit("sealed", format!("00000000.{b64}").into());
    assert!(matches!(codec.decode_session(forged.as_bytes(), GOLDEN_ID, 0), Err(RecordError::Seal(_))));
    // Stored under another id, read as another kind, or in another group.
    assert_eq!(codec.decode_session(record.as_bytes(), "0100000200000002", 0), Err(RecordError::Misplaced("id")));
    assert_eq!(codec.decode_note(record.as_bytes()).err(), Some(RecordError::Misplaced("kind")));
    let other = Codec::new(Sealer::new(ClusterKey::new(&[0x42; 32]), Vec::new()), "other");
    assert!(matches!(other.decode_session(record.as_bytes(), GOLDEN_ID, 0), Err(RecordError::Seal(_))));
    let stranger = Codec::new(Sealer::new(ClusterKey::new(&[0x43; 32]), Vec::new()), "golden");
    assert!(matches!(
        stranger.decode_session(record.as_bytes(), GOLDEN_ID, 0),
        Err(RecordError::Seal(crate::seal::SealError::UnknownKey(_)))
    ));
    // A record written with format 1's shape (plain fields) is not read.
    assert_eq!(
        codec.decode_session(golden("session-v1.json").as_bytes(), GOLDEN_ID, 0),
        Err(RecordError::Unauthenticated)
    );
    // Nothing secret or addressable in clear.
    for clear in ["198.51.100", "stun-password", &hex::encode([1u8; 20]), "authenticated"] {
        assert!(!record.contains(clear), "{clear} in {record}");
    }
}

/// A newer release's record: a format this reader does not know but that
/// says it can be read by it (`compat`), with fields and a drop reason it
/// has never heard of — read, the unknown names ignored and counted. One
/// that needs a newer reader is refused by name.
#[test]
fn a_newer_writers_record_is_read_and_its_unknown_names_counted() {
    let codec = golden_codec();
    let record = codec.encode_session(&golden_state(), Version { epoch: 3, seq: 9 });
    let (_, body) = codec.open(record.as_bytes(), Kind::Session, Some(GOLDEN_ID)).expect("opens");
    let mut body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    body["pbx"]["stats"]["drops"]["a_reason_from_the_future"] = 7.into();
    body["pbx"]["a_field_from_the_future"] = "x".into();
    body["another"] = serde_json::json!({"nested": true});
    let newer = |v: u32, compat: u32| {
        let mut env = Envelope {
            v,
            compat,
            kind: "session".into(),
            id: GOLDEN_ID.into(),
            tenant: "acme".into(),
            epoch: 3,
            seq: 10,
            written_unix_ms: unix_ms_now(),
            sealed: String::new(),
        };
        env.sealed = codec.sealer.seal(body.to_string().as_bytes(), &env.aad("golden", &codec.sealer.current_key_id()));
        serde_json::to_string(&env).expect("json")
    };
    let d = codec.decode_session(newer(FORMAT + 1, FORMAT).as_bytes(), GOLDEN_ID, unix_ms_now()).expect("reads");
    assert_eq!(d.ignored, Ignored(1), "the unknown drop reason");
    assert_golden(&d.state);
    let r = codec.decode_session(newer(FORMAT + 1, FORMAT + 1).as_bytes(), GOLDEN_ID, 0);
    assert_eq!(r, Err(RecordError::TooNew(FORMAT + 1)));
}

#[test]
fn change_notes_are_sealed_and_carry_their_version() {
    let codec = golden_codec();
    let note =
        ChangeNote { set: vec![GOLDEN_ID.into()], del: vec!["0100000200000009".into()], ..ChangeNote::default() };
    let sealed = codec.encode_note(&note, Version { epoch: 2, seq: 5 });
    assert!(!sealed.contains(GOLDEN_ID), "{sealed}");
    assert_eq!(codec.decode_note(sealed.as_bytes()), Ok((note, Version { epoch: 2, seq: 5 })));
    // A forged note (plain JSON, as format 1 published) or a relabelled one.
    let plain = r#"{"epoch":9,"seq":1,"set":[],"del":["0100000200000001"]}"#;
    assert!(codec.decode_note(plain.as_bytes()).is_err());
    let mut env: serde_json::Value = serde_json::from_str(&sealed).expect("json");
    env["seq"] = 6.into();
    assert!(matches!(codec.decode_note(env.to_string().as_bytes()), Err(RecordError::Seal(_))));
}

#[cfg(feature = "ng")]
fn golden_call() -> relay_core::ng::CallState {
    use relay_core::ng::{CallState, MediaState};
    let a = |p: u16| SocketAddr::from(([192, 0, 2, 10], p));
    CallState {
        call_id: "Z29sZGVuLWNhbGw=".into(),
        from_tag: "caller".into(),
        to_tag: Some("callee".into()),
        created: 1_796_563_592,
        media: vec![MediaState {
            session: GOLDEN_ID.into(),
            section: 0,
            pbx: (a(30_000), Some(a(30_001))),
            endpoint: (a(30_002), None),
            kind: "audio".into(),
            proto: "RTP/SAVP".into(),
            remote_mux: [true, false],
            mux: (true, true, false, None),
            keyed: [true, false],
            blocked: [false, true],
        }],
        labels: vec![("caller".into(), "alice".into())],
    }
}

#[cfg(feature = "ng")]
#[test]
fn golden_call_records_decode_and_edits_are_refused() {
    let codec = golden_codec();
    let id = "Z29sZGVuLWNhbGw=";
    let d = codec.decode_call(golden("call-v2.json").as_bytes(), id).expect("decodes");
    assert_eq!((d.state, d.tenant.as_str(), d.version), (golden_call(), "ng", Version { epoch: 7, seq: 42 }));
    // Format 1: only when accepted, and with no tenant of its own.
    let v1 = golden("call-v1.json");
    assert_eq!(codec.decode_call(v1.as_bytes(), id), Err(RecordError::Unauthenticated));
    let d = golden_codec().accept_v1(true).decode_call(v1.as_bytes(), id).expect("decodes");
    assert_eq!((d.state, d.tenant.as_str()), (golden_call(), ""));
    // A call moved to another call-id or tenant does not open.
    let record = codec.encode_call(&golden_call(), "ng", Version { epoch: 1, seq: 1 });
    assert_eq!(codec.decode_call(record.as_bytes(), "b3RoZXI="), Err(RecordError::Misplaced("id")));
    let mut env: serde_json::Value = serde_json::from_str(&record).expect("json");
    env["tenant"] = "acme".into();
    assert!(matches!(codec.decode_call(env.to_string().as_bytes(), id), Err(RecordError::Seal(_))));
}
