//! Every option of `offer`, `answer`, `delete` and `block media` in one
//! table: its spellings (dictionary keys, Kamailio flags), whether UCMRC
//! honours, ignores or refuses it, and why. A request's keys and flags are
//! checked against it (what it does not know is logged at debug and
//! counted), and a test holds `docs/ng.md`'s option table to it, row for
//! row.

/// What UCMRC does with an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done as rtpengine does it.
    Honoured,
    /// Done within one security family (plain, SDES, DTLS).
    HonouredWithinAFamily,
    /// Accepted without effect, for a reason the table gives.
    Ignored,
    /// Answered with an error saying why (it would need the relay to
    /// decrypt, generate, inspect or store media).
    Refused,
}

impl Status {
    /// As `docs/ng.md` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Honoured => "honoured",
            Status::HonouredWithinAFamily => "honoured within a family",
            Status::Ignored => "ignored",
            Status::Refused => "refused",
        }
    }
}

/// One option (a row of the docs' table).
#[derive(Debug, Clone, Copy)]
pub struct OptionRow {
    /// The option as the docs name it.
    pub option: &'static str,
    /// What UCMRC does with it.
    pub status: Status,
    /// How, or why not.
    pub what: &'static str,
    /// Its dictionary keys.
    pub keys: &'static [&'static str],
    /// Its flags (`flags` list entries); one ending in `-` or `=` is a
    /// prefix (`codec-strip-PCMA`, `ICE=remove`).
    pub flags: &'static [&'static str],
}

/// Every option, in the docs' order.
pub const OPTIONS: [OptionRow; 34] = [
    OptionRow {
        option: r#"`call-id`, `from-tag`, `to-tag`, `sdp`"#,
        status: Status::Honoured,
        what: r#"identify the call and the sender; `to-tag` is required in an answer"#,
        keys: &["call-id", "from-tag", "to-tag", "sdp", "command", "flags"],
        flags: &[],
    },
    OptionRow {
        option: r#"`rtcp-mux` `offer`/`require`/`demux`/`accept`/`reject` (`rtcp-mux-…`)"#,
        status: Status::Honoured,
        what: r#"see *rtcp-mux* above"#,
        keys: &["rtcp-mux"],
        flags: &["rtcp-mux-"],
    },
    OptionRow {
        option: r#"`ICE` `remove` / `force` / `force-relay` / default (`ICE=…`)"#,
        status: Status::Honoured,
        what: r#"see *ICE* above"#,
        keys: &["ICE"],
        flags: &["ICE="],
    },
    OptionRow {
        option: r#"`ICE` `force` on a section without ICE"#,
        status: Status::Refused,
        what: r#"adding ICE needs ICE termination"#,
        keys: &[],
        flags: &[],
    },
    OptionRow {
        option: r#"`direction` (`direction=…`, `internal`, `external`)"#,
        status: Status::Honoured,
        what: r#"interfaces of the caller's and the callee's legs, see *Interfaces*"#,
        keys: &["direction"],
        flags: &["direction=", "internal", "external"],
    },
    OptionRow {
        option: r#"`media-address`"#,
        status: Status::Honoured,
        what: r#"the address written into the outgoing SDP instead of the leg's advertised one"#,
        keys: &["media-address", "media address"],
        flags: &[],
    },
    OptionRow {
        option: r#"`address family` (`address-family=IP4\|IP6`)"#,
        status: Status::Honoured,
        what: r#"the outgoing SDP's address must be of that family (an interface of that family via `direction`), else an error"#,
        keys: &["address family", "address-family"],
        flags: &["address-family="],
    },
    OptionRow {
        option: r#"`replace` `origin` (`replace-origin`)"#,
        status: Status::Honoured,
        what: r#"`o=` gets the relay's address"#,
        keys: &["replace"],
        flags: &["replace-origin"],
    },
    OptionRow {
        option: r#"`replace` `session-connection`"#,
        status: Status::Honoured,
        what: r#"always done: `c=` (session and media level) is always rewritten"#,
        keys: &[],
        flags: &["replace-session-connection"],
    },
    OptionRow {
        option: r#"`replace` `sdp-version`, `username`, `session-name`, `zero-address`, `force-increment-sdp-ver`"#,
        status: Status::Ignored,
        what: r#"the relay only changes addresses and ports, which are stable across re-offers: the endpoints' own version numbers stay right"#,
        keys: &[],
        flags: &[
            "replace-sdp-version",
            "replace-username",
            "replace-session-name",
            "replace-zero-address",
            "replace-force-increment-sdp-ver",
        ],
    },
    OptionRow {
        option: r#"`SDES` `off` (`SDES-off`)"#,
        status: Status::Honoured,
        what: r#"removes `a=crypto` toward the recipient; refused when nothing would key the SRTP (no DTLS fingerprint)"#,
        keys: &["SDES"],
        flags: &["SDES-off", "SDES-no"],
    },
    OptionRow {
        option: r#"other `SDES-…` parameters"#,
        status: Status::Ignored,
        what: r#"`a=crypto` lines pass unchanged: the endpoints negotiate their own SDES parameters"#,
        keys: &[],
        flags: &["SDES-"],
    },
    OptionRow {
        option: r#"`DTLS` `off`/`no` (`DTLS=off`)"#,
        status: Status::Honoured,
        what: r#"removes `a=fingerprint`/`a=setup`/`a=tls-id` and turns `UDP/TLS/RTP/SAVP(F)` into `RTP/SAVP(F)` when SDES keys remain; refused when none do"#,
        keys: &["DTLS"],
        flags: &["DTLS="],
    },
    OptionRow {
        option: r#"`DTLS` `passive`/`active`"#,
        status: Status::Ignored,
        what: r#"DTLS runs end to end; the endpoints choose their roles"#,
        keys: &[],
        flags: &[],
    },
    OptionRow {
        option: r#"`transport-protocol` (`RTP/AVP`, `RTP/SAVPF`, …, `AVPF`)"#,
        status: Status::HonouredWithinAFamily,
        what: r#"`RTP/AVP` ⇄ `RTP/AVPF` and `RTP/SAVP` ⇄ `RTP/SAVPF` rewrite the `m=` token"#,
        keys: &["transport-protocol"],
        flags: &[
            "RTP/AVP",
            "RTP/SAVP",
            "RTP/AVPF",
            "RTP/SAVPF",
            "UDP/TLS/RTP/SAVP",
            "UDP/TLS/RTP/SAVPF",
            "AVPF",
            "SAVPF",
        ],
    },
    OptionRow {
        option: r#"`transport-protocol` across plain / SDES / DTLS (`RTP`, `SRTP`, `DTLS` flags)"#,
        status: Status::Refused,
        what: r#"RTP ⇄ SRTP and SDES ⇄ DTLS-SRTP need encryption or decryption"#,
        keys: &[],
        flags: &["RTP", "SRTP", "DTLS"],
    },
    OptionRow {
        option: r#"`codec` `strip`, `mask`, `except` (`codec-strip-…`, `codec-mask-…`, `codec-except-…`)"#,
        status: Status::Honoured,
        what: r#"removes formats from `m=` with their `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` (by name, `name/rate`, payload type or `all`; `except` keeps what it names); refused when no format would remain. `mask` is `strip` for a relay that does not transcode"#,
        keys: &["codec"],
        flags: &["codec-strip-", "codec-mask-", "codec-except-"],
    },
    OptionRow {
        option: r#"`codec` `transcode`, `offer`, `set`, `accept`, `consume`"#,
        status: Status::Refused,
        what: r#"transcoding"#,
        keys: &[],
        flags: &["codec-transcode-", "codec-offer-", "codec-set-", "codec-accept-", "codec-consume-"],
    },
    OptionRow {
        option: r#"`ptime`, `ptime-reverse`, `repacketize`"#,
        status: Status::Refused,
        what: r#"repacketization needs the payload"#,
        keys: &["ptime", "ptime-reverse", "repacketize"],
        flags: &[],
    },
    OptionRow {
        option: r#"`record call` / `record-call` `yes\|on`"#,
        status: Status::Refused,
        what: r#"UCMRC never records media (`no`/`off` is accepted)"#,
        keys: &["record call", "record-call"],
        flags: &["record-call"],
    },
    OptionRow {
        option: r#"`T.38`"#,
        status: Status::Refused,
        what: r#"gatewaying needs the payload"#,
        keys: &["T.38", "T38"],
        flags: &["T.38"],
    },
    OptionRow {
        option: r#"`transcode`, `always-transcode`, `inject-DTMF`, `generate-RTCP`, `generate-mid` flags"#,
        status: Status::Refused,
        what: r#"the relay does not produce or change media"#,
        keys: &[],
        flags: &["transcode", "always-transcode", "inject-DTMF", "generate-RTCP", "generate-mid"],
    },
    OptionRow {
        option: r#"`media echo`, `DTMF-security`"#,
        status: Status::Refused,
        what: r#"each side's media goes to the other side only, payloads are not inspected"#,
        keys: &["media echo", "media-echo", "DTMF-security"],
        flags: &[],
    },
    OptionRow {
        option: r#"`received-from`"#,
        status: Status::Honoured,
        what: r#"the SIP source: used as the latching hint's IP when the SDP carries a private address"#,
        keys: &["received-from"],
        flags: &[],
    },
    OptionRow {
        option: r#"`label`"#,
        status: Status::Honoured,
        what: r#"kept for the sender's tag; `query` shows it"#,
        keys: &["label"],
        flags: &[],
    },
    OptionRow {
        option: r#"`no-authenticated-latching` flag"#,
        status: Status::Honoured,
        what: r#"see *Latching*"#,
        keys: &[],
        flags: &["no-authenticated-latching"],
    },
    OptionRow {
        option: r#"`delete-delay` (delete)"#,
        status: Status::Honoured,
        what: r#"seconds before the ports are released (at most 3 600)"#,
        keys: &["delete-delay", "delete delay"],
        flags: &[],
    },
    OptionRow {
        option: r#"`fatal` flag (delete)"#,
        status: Status::Honoured,
        what: r#"an unknown call is an error"#,
        keys: &[],
        flags: &["fatal"],
    },
    OptionRow {
        option: r#"`all` flag (block media)"#,
        status: Status::Honoured,
        what: r#"every party"#,
        keys: &[],
        flags: &["all"],
    },
    OptionRow {
        option: r#"`trust-address`, `symmetric`, `strict-source`, `port-latching` flags"#,
        status: Status::Ignored,
        what: r#"already how UCMRC latches: the SDP address is the hint, media goes back where it came from, and a latched leg moves only with proof (authenticated) or within the learning window"#,
        keys: &[],
        flags: &["trust-address", "symmetric", "strict-source", "port-latching"],
    },
    OptionRow {
        option: r#"`asymmetric`, `media-handover`, `SIP-source-address`"#,
        status: Status::Ignored,
        what: r#"UCMRC always latches symmetrically and never lets an unauthenticated source take over a leg; its latch policy decides (a weaker mode per request would reopen hijacking)"#,
        keys: &[],
        flags: &["asymmetric", "media-handover", "SIP-source-address"],
    },
    OptionRow {
        option: r#"`no-redis-update` flag"#,
        status: Status::Ignored,
        what: r#"with redundancy on, every acknowledged change of a call is in Redis before the answer (see `docs/HA.md`); a per-command opt-out would break that promise"#,
        keys: &[],
        flags: &["no-redis-update"],
    },
    OptionRow {
        option: r#"`unidirectional`, `loop-protect`, `pierce-NAT`, `original-sendrecv`, `reset`, `TOS`, `metadata`, `via-branch`, `to-tag` flag"#,
        status: Status::Ignored,
        what: r#"no effect on a relay that forwards each call's two sides as they are and records nothing; `TOS` is relay-wide; one dialog per call-id (forked branches share it)"#,
        keys: &["TOS", "metadata", "via-branch"],
        flags: &[
            "unidirectional",
            "loop-protect",
            "pierce-NAT",
            "original-sendrecv",
            "reset",
            "TOS=",
            "metadata=",
            "via-branch=",
            "to-tag",
        ],
    },
    OptionRow {
        option: r#"`xmlrpc-callback`, `supports`, `frequency`, `OSRTP`"#,
        status: Status::Ignored,
        what: r#"nothing UCMRC does depends on them; none changes what is forwarded (OSRTP's `a=crypto` on `RTP/AVP` passes end to end)"#,
        keys: &["xmlrpc-callback", "supports", "frequency"],
        flags: &["OSRTP", "OSRTP-"],
    },
];

/// Whether `key` is a dictionary key some option uses.
pub fn known_key(key: &str) -> bool {
    OPTIONS.iter().any(|o| o.keys.contains(&key))
}

/// Whether `flag` is a flag some option uses (case-insensitive).
pub fn known_flag(flag: &str) -> bool {
    OPTIONS.iter().flat_map(|o| o.flags).any(|f| {
        if f.ends_with('-') || f.ends_with('=') {
            flag.len() > f.len() && flag.get(..f.len()).is_some_and(|head| head.eq_ignore_ascii_case(f))
        } else {
            flag.eq_ignore_ascii_case(f)
        }
    })
}

/// The keys and flags of `msg` that no option uses.
pub fn unknown_options(msg: &super::bencode::Value) -> Vec<String> {
    let super::bencode::Value::Dict(pairs) = msg else { return Vec::new() };
    let mut out: Vec<String> =
        pairs.keys().map(|k| String::from_utf8_lossy(k).into_owned()).filter(|k| !known_key(k)).collect();
    let flags = msg.get("flags").map(|f| f.items()).unwrap_or_default();
    out.extend(flags.iter().filter_map(|f| f.as_str()).filter(|f| !known_flag(f)).map(str::to_string));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ng.md's option table is this table, row for row.
    #[test]
    fn docs_show_exactly_this_table() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ng.md")).expect("docs/ng.md");
        let section = doc.split("## Offer and answer options").nth(1).expect("the options section");
        let documented: Vec<&str> =
            section.lines().skip_while(|l| !l.starts_with("|---")).skip(1).take_while(|l| l.starts_with('|')).collect();
        let ours: Vec<String> =
            OPTIONS.iter().map(|o| format!("| {} | {} | {} |", o.option, o.status.as_str(), o.what)).collect();
        assert_eq!(documented, ours, "docs/ng.md's option table and ng::option_table::OPTIONS differ");
    }

    #[test]
    fn kamailios_spellings_are_known_and_strangers_are_not() {
        for flag in ["trust-address", "replace-origin", "ICE=remove", "codec-strip-PCMA", "rtcp-mux-demux", "SDES-off"]
        {
            assert!(known_flag(flag), "{flag}");
        }
        for flag in ["no-such-flag", "codec-strip-", "ICE="] {
            assert!(!known_flag(flag), "{flag}");
        }
        assert!(known_key("received-from") && known_key("delete-delay") && !known_key("no such key"));
        let msg = super::super::bencode::dict([
            ("command", super::super::bencode::Value::str("offer")),
            ("frobnicate", super::super::bencode::Value::str("yes")),
            (
                "flags",
                super::super::bencode::Value::List(vec![
                    super::super::bencode::Value::str("trust-address"),
                    super::super::bencode::Value::str("wobble"),
                ]),
            ),
        ]);
        assert_eq!(unknown_options(&msg), ["frobnicate", "wobble"]);
    }
}
