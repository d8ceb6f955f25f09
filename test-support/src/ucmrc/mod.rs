//! The harness shared by the binary's integration tests: start the real
//! `ucmrc` (or the one `UCMRC_BIN` names, to replay a test against another
//! build), talk HTTP and ng to it, SRTP calls, Prometheus scrapes.

pub mod kamailio;
pub mod sip;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use relay_core::srtp_keys::{derive_auth_keys, SrtpMasterKey};
use serde_json::Value;

use crate::packets::master;

/// The binary under test: this build's, unless `UCMRC_BIN` names another.
/// Cargo builds a package's binaries before its integration tests, beside
/// the test executables' `deps/` directory.
pub fn bin() -> String {
    std::env::var("UCMRC_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
        dir.join("ucmrc").to_str().expect("utf-8 path").to_string()
    })
}

/// The admin token of [`config`].
pub const TOKEN: &str = "test-token-0123456789";

/// [`TOKEN`]'s SHA-256 in hex, as the config stores it.
pub fn token_hash() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
}

/// A running `ucmrc relay`; killed on drop.
pub struct Relay {
    /// The process.
    pub child: Child,
    /// Its admin API.
    pub admin: SocketAddr,
    /// ng protocol (UDP, TCP) when enabled.
    pub ng: Option<(SocketAddr, SocketAddr)>,
    /// The connectors' control listener when configured.
    pub control: Option<SocketAddr>,
    /// Tunnel listeners by service, when configured.
    pub tunnels: Vec<(String, SocketAddr)>,
    /// TURN's listeners, when configured: scheme (`udp`, `tcp`, `tls`) and
    /// address.
    pub turn: Vec<(String, SocketAddr)>,
    /// Its stderr, line by line.
    pub stderr: mpsc::Receiver<String>,
    /// Its directory (config, state).
    pub dir: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temporary directory named after `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ucmrc-test-{tag}-{}-{}", std::process::id(), fastrand_u64()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A number that differs between calls (nanoseconds since the epoch).
pub fn fastrand_u64() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A config with the admin API on a kernel-chosen port and a token.
pub fn config(extra: &str) -> String {
    format!(
        "[relay]\nport_min = 20000\nport_max = 29999\nworkers = 1\n{extra}\n[ng]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_sha256 = \"{}\"\n",
        token_hash()
    )
}

/// Starts the binary with `config_text` (or none) and reads its banner.
pub fn start(config_text: Option<&str>) -> Relay {
    start_with(&[], config_text)
}

/// [`start`] through a command prefix (e.g. `ip netns exec NAME`).
pub fn start_with(prefix: &[&str], config_text: Option<&str>) -> Relay {
    let dir = temp_dir("relay");
    let mut cmd = match prefix.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("relay").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).env_remove("UCMRC_CONFIG");
    if let Some(text) = config_text {
        let path = dir.join("ucmrc.toml");
        std::fs::write(&path, text).expect("write config");
        cmd.args(["--config", path.to_str().expect("utf-8 path")]);
    }
    let mut child = cmd.spawn().expect("spawn ucmrc");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let Some(Ok(first)) = lines.next() else {
        let _ = child.wait();
        let mut errors = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            errors.push(line);
        }
        panic!("the relay printed no banner; its stderr:\n{}", errors.join("\n"));
    };
    let admin = first
        .split("admin API on http://")
        .nth(1)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {first:?}"));
    let (mut ng, mut control, mut tunnels) = (None, None, Vec::new());
    let mut turn: Vec<(String, SocketAddr)> = Vec::new();
    for _ in 0..6 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("ng protocol on udp:") {
            let (udp, tcp) = rest.split_once(" tcp:").expect("udp and tcp");
            ng = Some((udp.parse().expect("udp addr"), tcp.parse().expect("tcp addr")));
        }
        if let Some(rest) = line.strip_prefix("control channel on tls://") {
            control = Some(rest.split(' ').next().and_then(|a| a.parse().ok()).expect("control address"));
        }
        if let Some(rest) = line.strip_prefix("tunnels: ") {
            for item in rest.split(' ') {
                let (service, addr) = item.split_once("=tcp://").expect("service=tcp://addr");
                tunnels.push((service.to_string(), addr.parse().expect("tunnel address")));
            }
        }
        if let Some(rest) = line.strip_prefix("turn: ") {
            for word in rest.split(' ').take_while(|w| w.contains("://")) {
                let (scheme, addr) = word.split_once("://").expect("scheme://addr");
                turn.push((scheme.to_string(), addr.parse::<SocketAddr>().expect("turn address")));
            }
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Relay { child, admin, ng, control, tunnels, turn, stderr: rx, dir }
}

impl Relay {
    /// The relay's first TURN listener of `scheme` (`udp`, `tcp`, `tls`).
    pub fn turn_addr(&self, scheme: &str) -> SocketAddr {
        self.turn
            .iter()
            .find(|(s, _)| s == scheme)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no TURN {scheme} listener"))
    }
}

/// Where [`start`] wrote the relay's config.
pub fn config_path(r: &Relay) -> PathBuf {
    r.dir.join("ucmrc.toml")
}

/// A minimal HTTP/1.1 client: returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    if let Some(b) = body {
        req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len());
    } else {
        req += "\r\n";
    }
    s.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

/// The body of a chunked HTTP response.
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out += &rest[..n];
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Parses `body` as JSON; fails the test showing it if it is not.
pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Sends signal number `sig` to the relay (with kill(1): no `unsafe` here).
pub fn signal(r: &Relay, sig: i32) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(r.child.id().to_string()).status().expect("kill");
    assert!(status.success(), "kill -{sig}");
}

/// Whether the relay writes a stderr line containing `needle` within 10 s.
pub fn stderr_contains(r: &Relay, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = r.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            return true;
        }
    }
    false
}

/// SRTP endpoints for one call, with the relay-side auth keys.
pub struct Call {
    /// The PBX's socket.
    pub pbx: UdpSocket,
    /// The phone's socket.
    pub phone: UdpSocket,
    /// The PBX's sender.
    pub pbx_tx: srtp::Session,
    /// The phone's sender.
    pub phone_tx: srtp::Session,
    /// The PBX's receiver.
    pub pbx_rx: srtp::Session,
    /// The phone's receiver.
    pub phone_rx: srtp::Session,
    /// The relay address the PBX sends to.
    pub to_pbx_leg: SocketAddr,
    /// The relay address the phone sends to.
    pub to_endpoint_leg: SocketAddr,
    /// The next sequence number.
    pub seq: u16,
    /// The session's id.
    pub id: String,
}

/// The admin API's `srtp_auth` object for master key `m`.
pub fn auth_json(m: &[u8]) -> String {
    let k = derive_auth_keys(&SrtpMasterKey::from_concatenated(m).expect("master"));
    format!(r#"{{"rtp_key":"{}","rtcp_key":"{}"}}"#, hex::encode(k.srtp), hex::encode(k.srtcp))
}

/// A libsrtp session with `policy`, protecting (`outbound`) or unprotecting.
pub fn session(policy: srtp::StreamPolicy<'_>, outbound: bool) -> srtp::Session {
    if outbound {
        srtp::Session::with_outbound_template(policy).expect("srtp")
    } else {
        srtp::Session::with_inbound_template(policy).expect("srtp")
    }
}

impl Call {
    /// A session of `tenant` between fresh loopback sockets.
    pub fn allocate(r: &Relay, tenant: &str) -> Result<Call, (u16, String)> {
        let (pbx, phone) =
            (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
        Self::allocate_with(r, tenant, pbx, phone)
    }

    /// [`allocate`](Self::allocate) for a PBX and a phone socket of the caller's.
    pub fn allocate_with(r: &Relay, tenant: &str, pbx: UdpSocket, phone: UdpSocket) -> Result<Call, (u16, String)> {
        for s in [&pbx, &phone] {
            s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        }
        let (mp, me) = (master(1), master(2));
        let body = format!(
            r#"{{"tenant":"{tenant}","latch":"authenticated","quality":true,
                "pbx":{{"hint":"{}","srtp_auth":{}}},
                "endpoint":{{"hint":"{}","srtp_auth":{}}}}}"#,
            pbx.local_addr().expect("addr"),
            auth_json(&mp),
            phone.local_addr().expect("addr"),
            auth_json(&me)
        );
        let (status, text) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&body));
        if status != 201 {
            return Err((status, text));
        }
        let v = json(&text);
        let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
        fn pol(p: srtp::CryptoPolicy, k: &[u8]) -> srtp::StreamPolicy<'_> {
            srtp::StreamPolicy { rtp: p, rtcp: p, key: k, ..Default::default() }
        }
        let pol_p = pol(p, &mp);
        let pol_e = pol(p, &me);
        Ok(Call {
            pbx_tx: session(pol_p, true),
            phone_rx: session(pol_p, false),
            phone_tx: session(pol_e, true),
            pbx_rx: session(pol_e, false),
            pbx,
            phone,
            to_pbx_leg: v["pbx"]["rtp"].as_str().expect("pbx addr").parse().expect("addr"),
            to_endpoint_leg: v["endpoint"]["rtp"].as_str().expect("endpoint addr").parse().expect("addr"),
            seq: 1,
            id: v["id"].as_str().expect("id").to_string(),
        })
    }

    /// One SRTP packet each way; returns how many arrived authentic.
    pub fn exchange(&mut self) -> usize {
        let mut ok = 0;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let legs: [(bool, SocketAddr); 2] = [(true, self.to_endpoint_leg), (false, self.to_pbx_leg)];
        for (from_phone, to) in legs {
            let mut pkt = Vec::with_capacity(400);
            pkt.extend_from_slice(&[0x80, 0]);
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            pkt.extend_from_slice(&(if from_phone { 2u32 } else { 1u32 }).to_be_bytes());
            pkt.resize(172, 0xd5);
            let (tx, sock, rx_sock, rx) = if from_phone {
                (&mut self.phone_tx, &self.phone, &self.pbx, &mut self.pbx_rx)
            } else {
                (&mut self.pbx_tx, &self.pbx, &self.phone, &mut self.phone_rx)
            };
            tx.protect(&mut pkt).expect("protect");
            sock.send_to(&pkt, to).expect("send");
            let mut buf = vec![0u8; 2048];
            if let Ok(n) = rx_sock.recv(&mut buf) {
                let mut got = Vec::with_capacity(n + 160);
                got.extend_from_slice(&buf[..n]);
                assert_eq!(got, pkt, "the relay must not alter a byte");
                rx.unprotect(&mut got).expect("authentic SRTP");
                ok += 1;
            }
        }
        ok
    }
}

/// `GET /v1/cluster` of a relay.
pub fn cluster(r: &Relay) -> Value {
    let (status, body) = http(r.admin, "GET", "/v1/cluster", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// A relay's cluster role.
pub fn role(r: &Relay) -> String {
    cluster(r)["role"].as_str().unwrap_or("").to_string()
}

/// The newest write a cluster node made (active) or applied (standby), as
/// (epoch, sequence); (0, 0) for none.
pub fn last_write(r: &Relay) -> (u64, u64) {
    let v = &cluster(r)["last_write"];
    (v["epoch"].as_u64().unwrap_or(0), v["seq"].as_u64().unwrap_or(0))
}

/// Replication rounds an active cluster node completed: once two more than
/// seen have passed, every change made before is in Redis.
pub fn replication_rounds(r: &Relay) -> u64 {
    cluster(r)["replication_rounds"].as_u64().unwrap_or(0)
}

/// Scrapes /metrics and parses its OpenMetrics text strictly: every sample
/// after its family's TYPE, names of the relay's, `# EOF` last.
pub fn scrape(r: &Relay) -> std::collections::HashMap<String, f64> {
    let (status, text) = http(r.admin, "GET", "/metrics", Some(TOKEN), None);
    assert_eq!(status, 200);
    assert_eq!(text.lines().last(), Some("# EOF"), "OpenMetrics ends with # EOF");
    let mut out = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().expect("name");
            assert!(matches!(it.next(), Some("counter" | "gauge" | "histogram")), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().expect("name");
        assert!(
            (name.starts_with("ucmrc_") || name.starts_with("process_"))
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_total", "_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(typed.contains(name) || typed.contains(family), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        out.insert(series.to_string(), value);
    }
    out
}

/// One ng request over UDP; returns the reply without the cookie.
pub fn ng_udp(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    sock.send_to(msg, to).expect("send ng");
    let mut buf = vec![0u8; 65536];
    let n = sock.recv(&mut buf).expect("ng reply");
    buf.truncate(n);
    buf
}

/// A UDP socket on a kernel-chosen loopback port that waits at most 5 s.
pub fn loopback_udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s
}

/// ng requests in JSON over UDP (a JSON request gets a JSON reply).
pub struct NgJson {
    sock: UdpSocket,
    to: SocketAddr,
    sent: u32,
}

impl NgJson {
    /// A client of `r`'s ng UDP listener.
    pub fn new(r: &Relay) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        Self { sock, to: r.ng.expect("ng enabled").0, sent: 0 }
    }

    /// Sends one request (a fresh cookie) and returns the reply.
    pub fn call(&mut self, req: serde_json::Value) -> Value {
        self.sent += 1;
        let reply = ng_udp(&self.sock, self.to, format!("j{} {req}", self.sent).as_bytes());
        json(String::from_utf8(reply).expect("utf-8").split_once(' ').expect("cookie").1)
    }
}

/// `s` as a bencoded string.
pub fn bstr(s: &str) -> String {
    format!("{}:{s}", s.len())
}

/// The `sdp` value of a bencoded ng reply.
pub fn sdp_of(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply).to_string();
    let at = text.find("3:sdp").expect("sdp in reply") + 5;
    let (len, rest) = text[at..].split_once(':').expect("length");
    rest[..len.parse::<usize>().expect("len")].to_string()
}

/// The port of the first `m=audio` line.
pub fn sdp_port(sdp: &str) -> u16 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .expect("m= port")
}

/// A CA, and a certificate for `relay.test` it signed, written to `dir`.
pub fn write_pki(dir: &std::path::Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    write_pki_for(dir, tag, "relay.test")
}

/// A CA, and a certificate for `name` it signed, written to `dir`:
/// (CA, certificate, key).
pub fn write_pki_for(dir: &std::path::Path, tag: &str, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let pki = relay_core::testkit::pki::issue(name).expect("test certificates");
    let paths = (dir.join(format!("{tag}-ca.pem")), dir.join(format!("{tag}.crt")), dir.join(format!("{tag}.key")));
    std::fs::write(&paths.0, pki.ca_pem).expect("ca");
    std::fs::write(&paths.1, pki.cert_pem).expect("cert");
    std::fs::write(&paths.2, pki.key_pem).expect("key");
    (paths.0, paths.1, paths.2)
}

/// The /metrics text as served.
pub fn metrics_text(r: &Relay) -> String {
    let (status, text) = http(r.admin, "GET", "/metrics", Some(TOKEN), None);
    assert_eq!(status, 200, "{text}");
    text
}

/// Runs Prometheus' own linter (`promtool check metrics`, Debian's
/// `prometheus` package) over `text` and fails the test on any problem it
/// reports. promtool 2.42 reads the classic text format, where a counter's
/// family is named with its `_total`; OpenMetrics names the family without
/// it, so promtool reports each counter's `_total` series as having no help.
/// Exactly that report is accepted, and only for a family the text declares
/// as a counter with a help text.
pub fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup-debian.sh installs it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for problem in report.lines().filter(|l| !l.trim().is_empty()) {
                let family = problem
                    .strip_suffix(" no help text")
                    .and_then(|series| series.strip_suffix("_total"))
                    .unwrap_or_else(|| panic!("promtool: {problem}"));
                assert!(
                    text.contains(&format!("# TYPE {family} counter\n")) && text.contains(&format!("# HELP {family} ")),
                    "promtool: {problem} (and {family} is no counter with help)"
                );
            }
        }
        _ => panic!("promtool could not read the metrics: {report}"),
    }
}

/// A running `ucmrc connect` (the PBX side), killed on drop unless
/// stopped first.
pub struct Connector {
    /// The process.
    pub child: Child,
    /// Its local API (`local_api` in its config), as its banner names it.
    pub local_api: Option<SocketAddr>,
}

impl Connector {
    /// Starts `ucmrc connect --config config` and waits (30 s at most)
    /// until it reports its control channel connected.
    pub fn start(config: &std::path::Path) -> Self {
        let child = Command::new(bin())
            .args(["connect", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ucmrc connect");
        // Owned at once: dropped (killed and waited for) on any failure.
        let mut connector = Self { child, local_api: None };
        let stdout = connector.child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("ucmrc connect reports its channel");
            if let Some(rest) = line.strip_prefix("local API on http://") {
                connector.local_api = rest.split(' ').next().and_then(|a| a.parse::<SocketAddr>().ok());
            }
            if line.starts_with("connected to") {
                return connector;
            }
        }
    }

    /// Stops it with SIGTERM (kill(1)) and returns whether it exited
    /// cleanly.
    pub fn stop(mut self) -> bool {
        let sent = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        sent.is_ok_and(|s| s.success()) && self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
