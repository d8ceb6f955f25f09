//! The options of an ng `offer`/`answer`, read once into typed values.
//!
//! rtpengine takes most options in two spellings, and Kamailio and OpenSIPS
//! use both: a dictionary key (`"rtcp-mux": ["demux"]`, `"SDES": ["off"]`,
//! `"codec": {"strip": ["PCMA"]}`, `"ICE": "remove"`) or an entry of the
//! `flags` list (`"rtcp-mux-demux"`, `"SDES-off"`, `"codec-strip-PCMA"`).
//! Both end up here. What UCMRC cannot do without decrypting, transcoding
//! or storing media is refused with a reason ([`Refusal`]) instead of being
//! accepted and silently ignored.

use std::net::IpAddr;

use super::bencode::Value;

/// What happens to ICE (`ICE: ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceMode {
    /// The endpoints' credentials pass end to end; their candidates are
    /// replaced by the relay's (checks run through the relay).
    Default,
    /// Every ICE attribute is removed.
    Remove,
    /// rtpengine's `force`/`force-relay`: the relay must be the only
    /// candidate. UCMRC's default already is, with the endpoints'
    /// credentials end to end; a media section without ICE is refused
    /// (adding ICE toward the recipient would need ICE termination).
    Force,
}

/// rtcp-mux options (RFC 5761), as rtpengine reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxOptions {
    /// Offer rtcp-mux to the recipient even if the sender did not.
    pub offer: bool,
    /// Offer only rtcp-mux (no RTCP fallback port), for WebRTC.
    pub require: bool,
    /// Accept the sender's rtcp-mux but do not offer it on.
    pub demux: bool,
    /// Accept the sender's rtcp-mux and offer it on.
    pub accept: bool,
    /// Refuse the sender's rtcp-mux (still offered on unless `demux`).
    pub reject: bool,
}

/// Codec manipulation that needs no transcoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecOptions {
    /// Codecs removed from the SDP (`all` for every codec). `mask` is the
    /// same for a relay that does not transcode.
    pub strip: Vec<String>,
    /// With `strip: all`: the codecs kept.
    pub except: Vec<String>,
}

/// One address family (`address family: IP4|IP6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Why a request was refused: UCMRC never decrypts, transcodes, records or
/// generates media.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The options of one offer or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// ICE handling.
    pub ice: IceMode,
    /// rtcp-mux handling.
    pub rtcp_mux: MuxOptions,
    /// Remove `a=crypto` (SDES) from the outgoing SDP.
    pub sdes_off: bool,
    /// Remove DTLS-SRTP (`a=fingerprint`, `a=setup`) from the outgoing SDP.
    pub dtls_off: bool,
    /// Rewrite `o=` too.
    pub replace_origin: bool,
    /// The address written into the outgoing SDP instead of the relay's
    /// advertised one (`media-address`).
    pub media_address: Option<IpAddr>,
    /// The family the recipient expects (`address family`).
    pub family: Option<Family>,
    /// The `m=` protocol toward the recipient (`transport-protocol`).
    pub transport: Option<String>,
    /// Codec changes.
    pub codec: CodecOptions,
    /// `received-from` address (the SIP source), used as the hint IP when
    /// the SDP carries a private address.
    pub received_from: Option<IpAddr>,
    /// Logical interfaces (`direction`): sender's first, recipient's second.
    pub direction: Vec<String>,
    /// A label for the sender's side (`label`), shown by `query`.
    pub label: Option<String>,
    /// Keep the call on `window` latching (`no-authenticated-latching`).
    pub no_authenticated_latching: bool,
}

/// Longest value accepted for a label, interface or codec name.
const MAX_NAME: usize = 64;
/// Most entries in one option list.
const MAX_LIST: usize = 32;

/// The entries of a list option (a single string counts as one entry).
fn list(msg: &Value, key: &str) -> Vec<String> {
    match msg.get(key) {
        Some(Value::List(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(v) => v.as_str().map(|s| vec![s.to_string()]).unwrap_or_default(),
        None => Vec::new(),
    }
}

fn has(items: &[String], name: &str) -> bool {
    items.iter().any(|i| i.eq_ignore_ascii_case(name))
}

/// The `m=` protocol families: plain RTP, SDES-keyed SRTP, DTLS-SRTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// RTP/AVP, RTP/AVPF.
    Plain,
    /// RTP/SAVP, RTP/SAVPF.
    Srtp,
    /// UDP/TLS/RTP/SAVP, UDP/TLS/RTP/SAVPF.
    Dtls,
    /// Anything else (UDPTL for T.38, ...): passed as is.
    Other,
}

/// Which family an `m=` protocol belongs to.
pub fn security(proto: &str) -> Security {
    match proto.to_ascii_uppercase().as_str() {
        "RTP/AVP" | "RTP/AVPF" => Security::Plain,
        "RTP/SAVP" | "RTP/SAVPF" => Security::Srtp,
        "UDP/TLS/RTP/SAVP" | "UDP/TLS/RTP/SAVPF" => Security::Dtls,
        _ => Security::Other,
    }
}

const NO_DECRYPT: &str = "UCMRC relays media without decrypting it";

/// The request's `flags` list, bounded.
struct Flags(Vec<String>);

impl Flags {
    fn of(msg: &Value) -> Result<Flags, Refusal> {
        let flags = list(msg, "flags");
        if flags.iter().any(|f| f.len() > MAX_NAME * 2) {
            return Err(Refusal("a flag is longer than 128 bytes".into()));
        }
        if flags.len() > MAX_LIST * 4 {
            return Err(Refusal("more than 128 flags".into()));
        }
        Ok(Flags(flags))
    }

    /// Prefixed flags: `rtcp-mux-demux`, `replace-origin`, `SDES-off`,
    /// `codec-strip-PCMA`, `direction=...` arrive in the flags list too;
    /// what follows `prefix` (case-insensitive) in each.
    fn prefixed(&self, prefix: &str) -> Vec<String> {
        self.0
            .iter()
            // `get`: a flag is network input, its bytes need not fall on a
            // character boundary at the prefix's length.
            .filter_map(|f| match (f.get(..prefix.len()), f.get(prefix.len()..)) {
                (Some(head), Some(rest)) if !rest.is_empty() && head.eq_ignore_ascii_case(prefix) => {
                    Some(rest.to_string())
                }
                _ => None,
            })
            .collect()
    }
}

impl Options {
    /// Reads the options of `msg`, refusing what UCMRC cannot honour.
    pub fn parse(msg: &Value) -> Result<Self, Refusal> {
        let flags = Flags::of(msg)?;
        let prefixed = |prefix: &str| flags.prefixed(prefix);
        let rtcp_mux = Self::mux_options(msg, &flags)?;
        let ice = Self::ice_mode(msg, &flags)?;
        let mut sdes = list(msg, "SDES");
        sdes.extend(prefixed("SDES-"));
        let sdes_off = has(&sdes, "off") || has(&sdes, "no");
        let dtls = msg.get("DTLS").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let dtls_off = matches!(dtls.as_deref(), Some("off" | "no" | "disable")) || has(&prefixed("DTLS="), "off");
        let mut replace = list(msg, "replace");
        replace.extend(prefixed("replace-"));
        // `c=` (session and media level) is always rewritten.
        let replace_origin = has(&replace, "origin");
        let (media_address, family) = Self::addressing(msg)?;
        let transport = msg.get("transport-protocol").and_then(Value::as_str).map(str::to_string);
        if let Some(t) = &transport {
            if security(t) == Security::Other {
                return Err(Refusal(format!("unknown transport-protocol {t:?}")));
            }
        }
        let codec = Self::codec_options(msg, &prefixed)?;
        Self::refuse_media_changes(msg, &flags)?;
        let received_from = msg
            .get("received-from")
            .map(|r| r.items())
            .and_then(|items| items.get(1).and_then(|v| v.as_str()).and_then(|a| a.parse::<IpAddr>().ok()));
        let mut direction = list(msg, "direction");
        direction.extend(flags.0.iter().filter(|f| *f == "internal" || *f == "external").cloned());
        let label = msg.get("label").and_then(Value::as_str).map(str::to_string);
        if label.as_ref().is_some_and(|l| l.len() > MAX_NAME) || direction.iter().any(|d| d.len() > MAX_NAME) {
            return Err(Refusal("label and direction names must be at most 64 bytes".into()));
        }
        Ok(Self {
            ice,
            rtcp_mux,
            sdes_off,
            dtls_off,
            replace_origin,
            media_address,
            family,
            transport,
            codec,
            received_from,
            direction,
            label,
            no_authenticated_latching: has(&flags.0, "no-authenticated-latching"),
        })
    }

    /// `rtcp-mux` (a list, or `rtcp-mux-…` flags).
    fn mux_options(msg: &Value, flags: &Flags) -> Result<MuxOptions, Refusal> {
        let mut items = list(msg, "rtcp-mux");
        items.extend(flags.prefixed("rtcp-mux-"));
        const KNOWN: [&str; 5] = ["offer", "require", "demux", "accept", "reject"];
        if let Some(other) = items.iter().find(|i| !KNOWN.iter().any(|k| i.eq_ignore_ascii_case(k))) {
            return Err(Refusal(format!("unknown rtcp-mux option {other:?}")));
        }
        Ok(MuxOptions {
            offer: has(&items, "offer"),
            require: has(&items, "require"),
            demux: has(&items, "demux"),
            accept: has(&items, "accept"),
            reject: has(&items, "reject"),
        })
    }

    /// `ICE` (or `ICE=…` flags); the last one given counts.
    fn ice_mode(msg: &Value, flags: &Flags) -> Result<IceMode, Refusal> {
        let mut items = list(msg, "ICE");
        items.extend(flags.prefixed("ICE="));
        match items.last().map(|s| s.to_ascii_lowercase()) {
            None => Ok(IceMode::Default),
            Some(s) if s == "remove" => Ok(IceMode::Remove),
            Some(s) if s == "default" || s == "optional" || s.is_empty() => Ok(IceMode::Default),
            Some(s) if s == "force" || s == "force-relay" => Ok(IceMode::Force),
            Some(s) => Err(Refusal(format!("unknown ICE option {s:?}"))),
        }
    }

    /// `media-address` and `address family`.
    fn addressing(msg: &Value) -> Result<(Option<IpAddr>, Option<Family>), Refusal> {
        let media_address = match msg.get("media-address").or_else(|| msg.get("media address")) {
            Some(v) => Some(
                v.as_str()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .ok_or_else(|| Refusal("media-address must be an IP address".into()))?,
            ),
            None => None,
        };
        let family = match msg.get("address family").or_else(|| msg.get("address-family")).and_then(Value::as_str) {
            None => None,
            Some(f) if f.eq_ignore_ascii_case("IP4") => Some(Family::V4),
            Some(f) if f.eq_ignore_ascii_case("IP6") => Some(Family::V6),
            Some(f) => return Err(Refusal(format!("address family must be IP4 or IP6, not {f:?}"))),
        };
        Ok((media_address, family))
    }

    /// Media manipulation that would need decryption, transcoding or
    /// storage is refused, saying why.
    fn refuse_media_changes(msg: &Value, flags: &Flags) -> Result<(), Refusal> {
        let refuse = |what: &str, why: &str| Err(Refusal(format!("{what} is not supported: {why}")));
        if msg.get("ptime").is_some() || msg.get("ptime-reverse").is_some() || msg.get("repacketize").is_some() {
            return refuse("ptime (repacketization)", NO_DECRYPT);
        }
        let record = msg.get("record call").or_else(|| msg.get("record-call")).and_then(Value::as_str);
        if record.is_some_and(|r| matches!(r.to_ascii_lowercase().as_str(), "yes" | "on" | "true"))
            || has(&flags.0, "record-call")
        {
            return refuse("record-call", "UCMRC never records or stores media");
        }
        if msg.get("T.38").is_some() || msg.get("T38").is_some() || !flags.prefixed("T.38").is_empty() {
            return refuse("T.38 gateway", NO_DECRYPT);
        }
        if msg.get("media echo").is_some() || msg.get("media-echo").is_some() {
            return refuse("media echo", "UCMRC forwards each side's media to the other side only");
        }
        if msg.get("DTMF-security").is_some() {
            return refuse("DTMF-security", "UCMRC does not inspect payloads (block media works)");
        }
        for f in ["transcode", "always-transcode", "inject-DTMF", "generate-mid", "generate-RTCP"] {
            if has(&flags.0, f) {
                return refuse(f, NO_DECRYPT);
            }
        }
        Ok(())
    }

    fn codec_options(msg: &Value, prefixed: &dyn Fn(&str) -> Vec<String>) -> Result<CodecOptions, Refusal> {
        let codec = msg.get("codec");
        let sub = |k: &str| -> Vec<String> {
            let mut v = codec.map(|c| list(c, k)).unwrap_or_default();
            v.extend(prefixed(&format!("codec-{k}-")));
            v.extend(prefixed(&format!("codec-{k}=")));
            v
        };
        for op in ["transcode", "offer", "set", "accept", "consume"] {
            if !sub(op).is_empty() {
                return Err(Refusal(format!(
                    "codec {op} is not supported: {NO_DECRYPT} (strip, mask and except work: they only edit the SDP)"
                )));
            }
        }
        let mut strip = sub("strip");
        strip.extend(sub("mask"));
        let except = sub("except");
        if strip.len() + except.len() > MAX_LIST || strip.iter().chain(&except).any(|c| c.len() > MAX_NAME) {
            return Err(Refusal("codec lists take at most 32 names of at most 64 bytes".into()));
        }
        Ok(CodecOptions { strip, except })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(request: serde_json::Value) -> Result<Options, Refusal> {
        Options::parse(&crate::ng::from_json(&request))
    }

    #[test]
    fn dictionary_and_flag_spellings_mean_the_same() {
        let dict_form = parse(json!({
            "rtcp-mux": ["demux"], "SDES": ["off"], "DTLS": "off", "replace": ["origin"], "codec": {"strip": ["PCMA"]}
        }))
        .expect("ok");
        let flag_form =
            parse(json!({"flags": ["rtcp-mux-demux", "SDES-off", "DTLS=off", "replace-origin", "codec-strip-PCMA"]}))
                .expect("ok");
        for o in [&dict_form, &flag_form] {
            assert!(o.rtcp_mux.demux && o.sdes_off && o.dtls_off && o.replace_origin, "{o:?}");
            assert!(!o.rtcp_mux.offer && !o.rtcp_mux.accept && !o.rtcp_mux.reject && !o.rtcp_mux.require);
            assert_eq!(o.codec.strip, vec!["PCMA".to_string()]);
        }
    }

    #[test]
    fn what_needs_decryption_or_storage_is_refused_with_a_reason() {
        for (req, needle) in [
            (json!({"ptime": 30}), "ptime"),
            (json!({"record call": "yes"}), "never records"),
            (json!({"codec": {"transcode": ["opus"]}}), "codec transcode"),
            (json!({"flags": ["codec-transcode-opus"]}), "codec transcode"),
            (json!({"ICE": "force-all"}), "unknown ICE option"),
            (json!({"T.38": ["decode"]}), "T.38"),
            (json!({"rtcp-mux": ["nope"]}), "unknown rtcp-mux"),
            (json!({"transport-protocol": "UDPTL"}), "unknown transport-protocol"),
            (json!({"media-address": "none"}), "IP address"),
            (json!({"address family": "IPX"}), "IP4 or IP6"),
            (json!({"media echo": "forward"}), "media echo"),
            (json!({"DTMF-security": "drop"}), "DTMF-security"),
        ] {
            let e = parse(req.clone()).expect_err(&req.to_string());
            assert!(e.0.contains(needle), "{req}: {e}");
        }
        assert!(parse(json!({"record call": "no"})).is_ok(), "record call: no is harmless");
    }

    #[test]
    fn kamailio_lists_and_values_are_read() {
        let o = parse(json!({
            "ICE": "remove", "direction": ["internal", "external"], "address family": "IP6",
            "label": "caller", "media-address": "192.0.2.7",
            "received-from": ["IP4", "198.51.100.1"], "rtcp-mux": ["offer", "accept"]
        }))
        .expect("ok");
        assert_eq!(o.ice, IceMode::Remove);
        assert_eq!(o.direction, vec!["internal".to_string(), "external".to_string()]);
        assert_eq!((o.family, o.label.as_deref()), (Some(Family::V6), Some("caller")));
        assert_eq!(o.media_address, Some("192.0.2.7".parse().expect("ip")));
        assert_eq!(o.received_from, Some("198.51.100.1".parse().expect("ip")));
        assert!(o.rtcp_mux.offer && o.rtcp_mux.accept);
        // Multi-byte flags never split inside a character.
        assert!(parse(json!({"flags": ["ICé", "rtcp-mé", "é"]})).is_ok());
    }
}
