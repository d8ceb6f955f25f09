use super::*;
use relay_core::io::splice::PumpMode;

#[test]
fn embedded_defaults_are_loopback() {
    let c = Config::embedded();
    assert!(c.relay.bind_ip.is_loopback());
    assert!(c.file.admin.listen.ip().is_loopback());
}

#[test]
fn peer_defaults_are_safe_on_a_public_bind_and_risky_settings_warn() {
    let hash = "ab".repeat(32);
    let public = format!(
        "[relay]\nbind_ip = \"0.0.0.0\"\nadvertised_ip = \"203.0.113.10\"\n[admin]\ntoken_sha256 = \"{hash}\"\n"
    );
    let c = Config::parse("x.toml", &public).expect("valid");
    assert!(!c.relay.peer_policy.allow_loopback && !c.relay.peer_policy.allow_private, "closed by default");
    assert!(c.warnings().iter().all(|w| !w.contains("peers")), "{:?}", c.warnings());
    let risky = public.replace("[admin]", "allow_loopback_peers = true\nallow_private_peers = true\n[admin]");
    let w = Config::parse("x.toml", &risky).expect("valid").warnings();
    assert!(
        w.iter().any(|w| w.contains("allow_loopback_peers")) && w.iter().any(|w| w.contains("allow_private_peers"))
    );
    // A loopback lab relay may only reach loopback, and does by default.
    let lab = Config::parse("x.toml", "").expect("an empty file is the loopback lab");
    assert!(lab.relay.peer_policy.allow_loopback && !lab.relay.peer_policy.allow_private);
    assert!(lab.admin_token_sha256.is_none(), "tokenless admin on loopback");
    // Off loopback, the admin API needs a token; ng needs allow_from.
    let e = Config::parse("x.toml", "[admin]\nlisten = \"0.0.0.0:9180\"\n").expect_err("token");
    assert_eq!(e.key, "admin.token_sha256");
    let e = Config::parse("x.toml", "[ng]\nlisten = \"0.0.0.0:22222\"\n").expect_err("allow_from");
    assert_eq!((e.key.as_str(), e.line), ("ng.allow_from", None));
    let ok =
        Config::parse("x.toml", "[ng]\nlisten = \"0.0.0.0:22222\"\nallow_from = [\"10.0.0.0/24\", \"192.0.2.7\"]\n")
            .expect("valid");
    assert!(ok.ng.expect("ng").transport.allows("10.0.0.9".parse().expect("ip")));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = Config::parse("x.toml", "[relay]\nport_min = 30000\nprot_max = 5\n").expect_err("unknown key");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().contains("prot_max"), "{e}");
}

#[test]
fn bad_values_are_named_with_their_line() {
    let e =
        Config::parse("x.toml", "[admin]\nallow_unauthenticated = true\n[relay]\nport_min = 40000\nport_max = 30000\n")
            .expect_err("bad range");
    assert_eq!((e.key.as_str(), e.line), ("relay.port_min", Some(4)), "{e}");
    let e = Config::parse("x.toml", "[admin]\nallow_unauthenticated = true\n\n[sessions]\nlatch = \"sticky\"\n")
        .expect_err("bad latch");
    assert_eq!((e.key.as_str(), e.line), ("sessions.latch", Some(5)), "{e}");
    let e = Config::parse("x.toml", "[relay]\nport_min = \"x\"\n").expect_err("type");
    assert_eq!(e.line, Some(2), "{e}");
    let e = Config::parse("x.toml", "[admin]\nlisten = \"0.0.0.0:9180\"\nallow_unauthenticated = true\n")
        .expect_err("public");
    assert_eq!(e.key, "admin.allow_unauthenticated");
    let e = Config::parse("x.toml", "[admin]\ntoken_sha256 = \"secret-token-oops\"\n").expect_err("hash");
    assert!(!e.to_string().contains("secret-token-oops"), "secrets are masked: {e}");
}

#[test]
fn control_and_tenant_credentials_are_validated_with_key_and_line() {
    let base = "[admin]\nallow_unauthenticated = true\n";
    let e = Config::parse("x.toml", &format!("{base}[tenants.acme]\nmax_sessions = 3\ntoken_sha256 = \"abc\"\n"))
        .expect_err("short hash");
    assert_eq!((e.key.as_str(), e.line), ("tenants.acme.token_sha256", Some(5)), "{e}");
    let hash = "ab".repeat(32);
    let c = Config::parse(
        "x.toml",
        &format!("{base}[tenants.acme]\ntoken_sha256 = \"{hash}\"\nservices = [\"sip-tls\"]\n[tenants.noauth]\n"),
    )
    .expect("valid");
    assert_eq!(c.tenant_credentials.len(), 1, "only tenants with a token can log in");
    assert_eq!(c.tenant_credentials[0].services, ["sip-tls"]);
    assert!(!format!("{c:?}").contains(&hash), "hashes are masked");
    let e = Config::parse("x.toml", &format!("{base}[control]\nlisten = \"127.0.0.1:0\"\n")).expect_err("no cert");
    assert_eq!(e.key, "control.cert");
    let e =
        Config::parse("x.toml", &format!("{base}[control]\ncert = \"a\"\nkey = \"b\"\nsecond_connector = \"both\"\n"))
            .expect_err("policy");
    assert_eq!((e.key.as_str(), e.line), ("control.second_connector", Some(6)), "{e}");
    let e = Config::parse("x.toml", &format!("{base}[control]\nheartbeat_secs = 0\n")).expect_err("zero");
    assert_eq!((e.key.as_str(), e.line), ("control.heartbeat_secs", Some(4)), "{e}");
}

#[test]
fn tunnels_are_validated_with_key_and_line() {
    let dir = std::env::temp_dir().join(format!("ucmrc-cfg-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let c = relay_core::testkit::pki::issue("relay.test").expect("cert");
    std::fs::write(dir.join("c.pem"), c.cert_pem).expect("cert");
    std::fs::write(dir.join("k.pem"), c.key_pem).expect("key");
    let base = "[admin]\nallow_unauthenticated = true\n";
    let control = "[control]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let listener = "[[tunnels.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"sip-tls\"\n";
    let e = Config::parse_in("x.toml", &format!("{base}[tunnels]\n{listener}"), Some(&dir)).expect_err("no control");
    assert_eq!(e.key, "tunnels");
    let text = format!("{base}{control}[tunnels]\ndomain_patterns = [\"relay.example\"]\n{listener}");
    let e = Config::parse_in("x.toml", &text, Some(&dir)).expect_err("pattern");
    assert_eq!((e.key.as_str(), e.line), ("tunnels.domain_patterns", Some(7)), "{e}");
    let e = Config::parse_in("x.toml", &format!("{base}{control}[tunnels]\n"), Some(&dir)).expect_err("listeners");
    assert_eq!(e.key, "tunnels.listeners");
    let text = format!(
            "{base}{control}[tunnels]\ndomain_patterns = [\"{{tenant}}.relay.example\"]\nsplice = false\n{listener}[tenants.acme]\nmax_tunnel_connections = 3\n"
        );
    let c = Config::parse_in("x.toml", &text, Some(&dir)).expect("valid");
    let t = c.tunnels.expect("tunnels");
    assert_eq!(t.router.route(Some("acme.relay.example")), Ok("acme".into()));
    assert_eq!(t.config.pump, PumpMode::Copy);
    assert_eq!(t.tenant_limits["acme"], 3);
    assert_eq!(t.listeners[0].1, "sip-tls");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn devices_and_missing_files_are_refused_not_read_forever() {
    let e = Config::load(Path::new("/dev/zero")).expect_err("device");
    assert!(e.message.contains("not a regular file"), "{e}");
    let e = Config::parse(
        "x.toml",
        "[admin]\nallow_unauthenticated = true\n[control]\ncert = \"/dev/zero\"\nkey = \"/dev/zero\"\n",
    )
    .expect_err("device cert");
    assert_eq!((e.key.as_str(), e.line), ("control.cert", Some(4)), "{e}");
}

/// Every `key = value` of the example file (commented out or not), by section.
fn example_values() -> Vec<(String, String, toml::Value, bool)> {
    let text = include_str!("../../../docs/ucmrc.example.toml");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let (body, commented) = match line.trim().strip_prefix('#') {
            Some(rest) => (rest.trim(), true),
            None => (line.trim(), false),
        };
        if body.starts_with('[') {
            section = body.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        if let Ok(t) = toml::from_str::<toml::Table>(body) {
            for (k, v) in t {
                out.push((section.clone(), k, v, commented));
            }
        }
    }
    out
}

#[test]
fn the_example_file_states_every_default_exactly() {
    let defaults: toml::Table = toml::Table::try_from(FileConfig::default()).expect("serializes");
    let mut sections: Vec<(String, toml::Table)> = defaults
        .iter()
        .filter_map(|(k, v)| v.as_table().map(|t| (k.clone(), t.clone())))
        .filter(|(k, _)| k != "tenants")
        .collect();
    sections.push(("control".into(), toml::Table::try_from(ControlSection::default()).expect("control")));
    sections.push(("tunnels".into(), toml::Table::try_from(TunnelsSection::default()).expect("tunnels")));
    let example = example_values();
    let mut wrong = Vec::new();
    for (section, table) in &sections {
        for (key, default) in table {
            if default.as_str() == Some("") {
                continue; // required, no default (control.cert, control.key)
            }
            let written: Vec<&toml::Value> =
                example.iter().filter(|(s, k, _, _)| s == section && k == key).map(|(_, _, v, _)| v).collect();
            if written.is_empty() {
                wrong.push(format!("{section}.{key} is not mentioned (default {default})"));
            }
            for v in written.into_iter().filter(|v| *v != default) {
                wrong.push(format!("{section}.{key} = {v}, the default is {default}"));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/ucmrc.example.toml must state every default:\n{}", wrong.join("\n"));
    // Keys without a fixed default (they depend on other keys) are shown commented out.
    for key in ["advertised_ip", "allow_loopback_peers"] {
        assert!(example.iter().any(|(s, k, _, c)| s == "relay" && k == key && *c), "relay.{key}");
    }
    assert!(example.iter().any(|(s, k, _, c)| s == "admin" && k == "allow_unauthenticated" && *c));
    // And the file itself is a valid configuration.
    Config::parse("ucmrc.example.toml", include_str!("../../../docs/ucmrc.example.toml")).expect("valid");
}

#[test]
fn log_filters_that_would_silence_the_relay_are_refused() {
    for good in ["info", "DEBUG", "ucmrc=debug,info", "relay_core=trace, warn", "off"] {
        assert!(valid_log_filter(good), "{good}");
    }
    for bad in ["verbose", "nonsense", "info,", "ucmrc=loud", "=info", ""] {
        assert!(!valid_log_filter(bad), "{bad}");
    }
    let e = Config::parse("x.toml", "[log]\nlevel = \"verbose\"\n").expect_err("refused");
    assert_eq!((e.key.as_str(), e.line), ("log.level", Some(2)), "{e}");
}

#[test]
fn a_non_ascii_log_filter_is_refused_not_a_panic() {
    // Found by the config fuzz target: this level made tracing-subscriber panic.
    let text = "[admin]\nallow_unauthenticated = true\n[log]\nlevel = \"1111,\u{3000}11=\"\n";
    let e = Config::parse("x.toml", text).expect_err("refused");
    assert_eq!((e.key.as_str(), e.line), ("log.level", Some(4)), "{e}");
}

#[test]
fn interfaces_and_ng_delay_are_validated_with_key_and_line() {
    let e = Config::parse("x.toml", "[ng]\ndelete_delay_secs = 3601\n").expect_err("too long");
    assert_eq!((e.key.as_str(), e.line), ("ng.delete_delay_secs", Some(2)), "{e}");
    let e = Config::parse("x.toml", "[[interfaces]]\nname = \"lan\"\naddresses = [\"10.0.0.1!x\"]\n").expect_err("bad");
    assert_eq!((e.key.as_str(), e.line), ("interfaces.addresses", Some(3)), "{e}");
    let two = "[[interfaces]]\nname = \"a\"\naddresses = [\"127.0.0.2\"]\n[[interfaces]]\nname = \"a\"\naddresses = [\"127.0.0.3\"]\n";
    let e = Config::parse("x.toml", two).expect_err("same name");
    assert!(e.to_string().contains("two interfaces are named \"a\""), "{e}");
    let overlap = "[[interfaces]]\nname = \"a\"\naddresses = [\"127.0.0.2\"]\n[[interfaces]]\nname = \"b\"\naddresses = [\"127.0.0.2\"]\nport_min = 15000\nport_max = 25000\n";
    let e = Config::parse("x.toml", overlap).expect_err("overlap");
    assert!(e.to_string().contains("both use ports"), "{e}");
    let e =
        Config::parse("x.toml", "[[interfaces]]\nname = \"w\"\naddresses = [\"0.0.0.0!203.0.113.5\", \"127.0.0.3\"]\n")
            .expect_err("a wildcard overlaps every address");
    assert!(e.to_string().contains("wildcard"), "{e}");
    let ok = Config::parse(
        "x.toml",
        "[[interfaces]]\nname = \"wan\"\naddresses = [\"192.0.2.9!203.0.113.5\", \"198.51.100.3\"]\n",
    )
    .expect("valid");
    assert_eq!(ok.relay.ports_total(), 20_000, "two addresses of 10 000 ports");
    assert!(!ok.relay.peer_policy.allow_loopback, "a public address: no loopback peers by default");
}

#[test]
fn cluster_settings_are_validated_with_key_and_line_and_turn_on_replication() {
    let dir = std::env::temp_dir().join(format!("ucmrc-cluster-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("cluster.key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).expect("key");
    let pw = dir.join("redis.pw");
    std::fs::write(&pw, "s3cret/pw\n").expect("password");
    let base = |extra: &str| {
        format!(
            "[cluster]\nredis_url = \"redis://ha@10.0.0.5:6379/0\"\nnode_id = \"relay-a\"\nkey_file = \"{}\"\n{extra}",
            key.display()
        )
    };
    let c = Config::parse("x.toml", &base(&format!("redis_password_file = \"{}\"\nrole = \"active\"\n", pw.display())))
        .expect("valid");
    let cl = c.cluster.as_ref().expect("cluster");
    assert!(cl.config.eager && cl.config.group == "default");
    assert_eq!(cl.config.redis_url, "redis://ha:s3cret%2Fpw@10.0.0.5:6379/0", "password percent-encoded into the URL");
    assert!(c.relay.journal && c.relay.sockets.freebind, "replication and IP_FREEBIND follow [cluster]");
    assert!(c.ng.as_ref().expect("ng").engine.journal, "ng calls are replicated");
    assert!(!format!("{c:?}").contains("s3cret"), "the password never shows");
    assert!(cl.config.wait_for_replication && !cl.config.accept_v1_records && cl.config.stepdown_hook.is_none());
    assert_eq!(cl.config.effective_redis_timeout(), cl.config.lease_ttl, "derived from the lease");
    assert!(c.warnings().iter().all(|w| !w.contains("cluster.")), "{:?}", c.warnings());
    let tuned = Config::parse(
        "x.toml",
        &base(
            "redis_timeout_ms = 250
wait_for_replication = false
accept_v1_records = true
stepdown_hook = [\"/bin/true\", \"down\"]\n",
        ),
    )
    .expect("valid");
    let cl = tuned.cluster.as_ref().expect("cluster");
    assert_eq!(cl.config.effective_redis_timeout(), std::time::Duration::from_millis(250));
    assert!(!cl.config.wait_for_replication && cl.config.accept_v1_records);
    assert_eq!(cl.config.stepdown_hook.as_deref(), Some(&["/bin/true".to_string(), "down".to_string()][..]));
    let w = tuned.warnings();
    assert!(w.iter().any(|w| w.contains("cluster.accept_v1_records")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("cluster.wait_for_replication")), "{w:?}");
    // Without [cluster]: a single node pays nothing.
    let single = Config::parse("x.toml", "").expect("valid");
    assert!(!single.relay.journal && !single.relay.sockets.freebind && single.cluster.is_none());
    for (text, key_name, line) in [
        (base("role = \"leader\"\n"), "cluster.role", Some(5)),
        (base("lease_ttl_ms = 50\n"), "cluster.lease_ttl_ms", Some(5)),
        (base("redis_timeout_ms = 5\n"), "cluster.redis_timeout_ms", Some(5)),
        (base("node_id = \"\"\n").replace("node_id = \"relay-a\"\n", ""), "cluster.node_id", Some(4)),
        (base("").replace("redis://ha@", "redis://ha:pw@"), "cluster.redis_url", Some(2)),
        (base("").replace("redis://", "http://"), "cluster.redis_url", Some(2)),
        (base("").replace(&key.display().to_string(), "/nonexistent/key"), "cluster.key_file", Some(4)),
    ] {
        let e = Config::parse("x.toml", &text).expect_err(key_name);
        assert_eq!((e.key.as_str(), e.line), (key_name, line), "{e}");
    }
    std::fs::write(&key, "not hex").expect("key");
    let e = Config::parse("x.toml", &base("")).expect_err("bad key");
    assert_eq!(e.key, "cluster.key_file");
    assert!(!e.to_string().contains("not hex"), "key material never echoed: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ng_alone_may_hold_the_whole_port_range_and_mixed_use_keeps_shares() {
    let ports =
        |c: &Config, tenant: &str| c.tenant_limits().into_iter().find(|(t, _)| t == tenant).map(|(_, l)| l.ports);
    let alone = Config::parse("x.toml", "[relay]\nport_min = 20000\nport_max = 20099\n").expect("valid");
    assert_eq!(ports(&alone, "ng"), Some(None), "ng alone: no share limit");
    let mixed =
        Config::parse("x.toml", "[relay]\nport_min = 20000\nport_max = 20099\n[tenants.acme]\nmax_sessions = 10\n")
            .expect("valid");
    assert_eq!(ports(&mixed, "ng"), None, "with other tenants, ng has the default share");
    let capped =
        Config::parse("x.toml", "[relay]\nport_min = 20000\nport_max = 20099\n[tenants.ng]\nport_share_percent = 30\n")
            .expect("valid");
    assert_eq!(ports(&capped, "ng"), Some(Some(30)), "an explicit share holds");
    let off = Config::parse("x.toml", "[ng]\nenabled = false\n").expect("valid");
    assert_eq!(ports(&off, "ng"), None);
}

#[test]
fn turn_sections_are_checked_key_by_key_and_risky_ones_warn() {
    let dir = std::env::temp_dir().join(format!("ucmrc-turn-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "a-secret-long-enough-0001\n").expect("write");
    let short = dir.join("short");
    std::fs::write(&short, "short\n").expect("write");
    let realm = |secret: &std::path::Path, extra: &str| {
        format!("[[turn.realms]]\nname = \"turn.example\"\ntenant = \"acme\"\nsecret_files = [{secret:?}]\n{extra}")
    };
    let good = format!("[turn]\nport_min = 30000\nport_max = 30099\n{}", realm(&secret, ""));
    let c = Config::parse("x.toml", &good).expect("valid");
    let t = c.turn.as_ref().expect("turn");
    assert_eq!(t.ports, (30000, 30099));
    assert_eq!(t.relay_v4.map(|r| r.bind), Some(c.relay.bind_ip), "relayed on the media address by default");
    assert!(c.warnings().iter().all(|w| !w.contains("turn")), "{:?}", c.warnings());
    let uris = good.replace("[turn]\n", "[turn]\nuris = [\"turns:turn.example.net:443?transport=tcp\"]\n");
    let c = Config::parse("x.toml", &uris).expect("valid");
    assert_eq!(c.turn.expect("turn").uris, ["turns:turn.example.net:443?transport=tcp"]);
    for (text, key, line) in [
        (good.replace("port_min = 30000", "port_min = 15000"), "turn.port_min", Some(2)),
        (
            format!("[turn]\nport_min = 30000\nport_max = 30099\n{}", realm(&short, "")),
            "turn.realms.secret_files",
            Some(7),
        ),
        (
            format!(
                "[turn]\nport_min = 30000\nport_max = 30099\n{}",
                realm(&secret, "allow_peers = [\"10.0.0.0/40\"]\n")
            ),
            "turn.realms.allow_peers",
            Some(8),
        ),
        ("[turn]\nport_min = 30000\nport_max = 30099\n".to_string(), "turn.realms", None),
        (good.replace("[turn]\n", "[turn]\nlisten = []\n"), "turn.listen", Some(2)),
        (good.replace("[turn]\n", "[turn]\nuris = [\"http://relay.example\"]\n"), "turn.uris", Some(2)),
        (good.replace("[turn]\n", "[turn]\nuris = [\"turn:relay example:3478\"]\n"), "turn.uris", Some(2)),
    ] {
        let e = Config::parse("x.toml", &text).expect_err(&text);
        assert_eq!((e.key.as_str(), e.line), (key, line), "{text}: {e}");
    }
    let wide =
        format!("[turn]\nport_min = 30000\nport_max = 30099\n{}", realm(&secret, "allow_peers = [\"10.0.0.0/8\"]\n"));
    let w = Config::parse("x.toml", &wide).expect("valid").warnings();
    assert!(w.iter().any(|w| w.contains("10.0.0.0/8")), "{w:?}");
    let _ = std::fs::remove_dir_all(dir);
}
