//! What a new operator tripped over, each as a test against the
//! real binary: ids of shards that do not exist, signals during a drain,
//! `check-config` (into a closed pipe, its TOML output, the failures that
//! would only show at run time), log filters, and HTTP edge cases.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::poll::{exit_status, wait_for};
use test_support::ucmrc::*;

fn write_config(tag: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(tag);
    let path = dir.join("ucmrc.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(bin()).args(["check-config", path.to_str().expect("utf-8")]).output().expect("run check-config")
}

/// A raw HTTP exchange: (status, headers, body).
fn raw_http(r: &Relay, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(r.admin).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn ids_of_shards_that_do_not_exist_are_unknown_sessions_not_a_stopped_relay() {
    let r = start(Some(&config("").replace("workers = 1", "workers = 2")));
    for id in ["02ffffff00000001", "ff00000000000001", "FF00000000000001"] {
        for (method, body) in [("GET", None), ("DELETE", None), ("PATCH", Some("{}"))] {
            let (status, text) = http(r.admin, method, &format!("/v1/sessions/{id}"), Some(TOKEN), body);
            assert_eq!(status, 404, "{method} {id}: {text}");
            assert_eq!(json(&text)["code"], "unknown_session");
        }
    }
    let m = scrape(&r);
    let server_errors: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("ucmrc_admin_requests_total") && k.contains("server_error"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(server_errors, 0.0, "no false alert");
}

#[test]
fn sigint_or_a_second_sigterm_during_a_drain_exits_at_once_and_says_so() {
    for (second, said) in [(2, "SIGINT during the drain"), (15, "second SIGTERM during the drain")] {
        let mut r = start(Some(&config("drain_timeout_secs = 300")));
        let _call = Call::allocate(&r, "acme").expect("a call keeps the drain waiting");
        signal(&r, 15);
        wait_for("draining", || http(r.admin, "GET", "/readyz", None, None).0 == 503);
        signal(&r, second);
        let status = exit_status(&mut r.child, "the relay's exit");
        assert!(status.success(), "{status}");
        assert!(stderr_contains(&r, said), "the log says why it stopped draining");
    }
}

#[test]
fn check_config_into_a_closed_pipe_exits_quietly() {
    let (dir, path) = write_config("pipe", &config(""));
    // The reading end is gone before check-config writes (`| head -0`).
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(bin())
        .args(["check-config", path.to_str().expect("utf-8")])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{}: {err}", out.status);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_prints_the_effective_config_as_toml_with_secrets_masked() {
    let tenant_hash = "cd".repeat(32);
    let text = format!(
        "{}[tenants.acme]\ntoken_sha256 = \"{tenant_hash}\"\n",
        config("bind_ip = \"0.0.0.0\"\nadvertised_ip = \"203.0.113.10\"\nallow_private_peers = true")
    );
    let (dir, path) = write_config("effective", &text);
    let out = check_config(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).expect("utf-8");
    let effective: toml::Table = toml::from_str(&shown).expect("the output is TOML (comments aside)");
    assert_eq!(effective["relay"]["allow_loopback_peers"].as_bool(), Some(false), "defaults are filled in");
    assert_eq!(effective["sessions"]["idle_timeout_secs"].as_integer(), Some(60));
    assert_eq!(effective["admin"]["token_sha256"].as_str(), Some("<masked>"));
    assert!(!shown.contains(&token_hash()) && !shown.contains(&tenant_hash), "no secret is printed");
    assert!(shown.contains("# warning: relay.allow_private_peers"), "{shown}");
    assert!(!shown.contains("RelaySection"), "no Rust Debug dump");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_catches_what_would_fail_at_run_time() {
    let cases = [
        // ng and the admin API on the same address.
        (
            config("")
                .replace("[ng]\nlisten = \"127.0.0.1:0\"", "[ng]\nlisten = \"127.0.0.1:19555\"")
                .replace("[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \"127.0.0.1:19555\""),
            "admin.listen",
        ),
        // ng's UDP port inside the media range on the same IP.
        (config("").replace("[ng]\nlisten = \"127.0.0.1:0\"", "[ng]\nlisten = \"127.0.0.1:20500\""), "ng.listen"),
        // A CPU that does not exist.
        (config("pin_cpus = [0, 1023]"), "relay.pin_cpus"),
        // Not an IP, not a number in range: said in an operator's words.
        (config("").replace("port_max = 29999", "port_max = 70000"), "relay.port_max"),
    ];
    for (text, key) in cases {
        let (dir, path) = write_config("runtime", &text);
        let out = check_config(&path);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains(key), "names {key}: {err}");
        assert!(!err.contains("u16") && !err.contains("- :"), "operator wording: {err}");
        let _ = std::fs::remove_dir_all(dir);
    }
    // Ports below 1024 without root or CAP_NET_BIND_SERVICE (as the `ucmrc` user of the unit).
    let (dir, path) = write_config("privileged", &config("").replace("port_min = 20000", "port_min = 500"));
    for p in [&dir, &path] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    let program = if is_root() { "setpriv".to_string() } else { bin() };
    let mut cmd = Command::new(program);
    if is_root() {
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]).arg(bin());
    }
    let out = cmd.args(["check-config", path.to_str().expect("utf-8")]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("relay.port_min") && err.contains("CAP_NET_BIND_SERVICE"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    // A missing file: a clear sentence, no "-" key.
    let out = Command::new(bin()).args(["check-config", "/nonexistent/ucmrc.toml"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the file") && !err.contains(": -:"), "{err}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn a_log_level_that_would_silence_the_relay_is_refused_at_start() {
    let (dir, path) = write_config("log", &format!("{}[log]\nlevel = \"verbose\"\n", config("")));
    let mut child = Command::new(bin())
        .args(["relay", "--config", path.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let status = exit_status(&mut child, "the relay's refusal of a log level that would silence it");
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("log.level"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http_edge_cases_get_json_errors_with_the_right_status() {
    let r = start(Some(&config("")));
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // 405 with a JSON body and an Allow header.
    let (status, head, body) = raw_http(
        &r,
        format!("PUT /v1/sessions HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 405);
    assert!(head.contains("allow: "), "{head}");
    assert_eq!(json(&body)["code"], "method_not_allowed");
    // 413 for a 3 MB body.
    let big = format!(r#"{{"tenant":"{}"}}"#, "a".repeat(3 << 20));
    let (status, _, body) = raw_http(
        &r,
        format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    );
    assert_eq!((status, json(&body)["code"].as_str()), (413, Some("body_too_large")));
    // 415 for a body that is not JSON.
    let (status, _, body) = raw_http(
        &r,
        format!("POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            .as_bytes(),
    );
    assert_eq!((status, json(&body)["code"].as_str()), (415, Some("unsupported_media_type")));
    // Tenant names with control characters.
    for tenant in ["a\\nb", "nul\\u0000", "with space", ""] {
        let (status, body) =
            http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&format!(r#"{{"tenant":"{tenant}"}}"#)));
        assert_eq!(status, 400, "{tenant:?}: {body}");
    }
    // The document served is this relay's: its ceilings, its token mode.
    let (_, doc) = http(r.admin, "GET", "/v1/openapi.json", Some(TOKEN), None);
    let doc = json(&doc);
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    assert_eq!(doc["components"]["schemas"]["MaxPps"]["maximum"], 10000);
}
