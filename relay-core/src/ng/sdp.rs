//! Just enough SDP (RFC 4566) for a media relay: read each media line's
//! address, port, rtcp-mux and SDES keys, and rewrite addresses and ports to
//! the relay's while leaving every other line — and its line ending — as it
//! was.

use std::net::IpAddr;

/// One `m=` section as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Media type (`audio`, `video`, ...).
    pub kind: String,
    /// Port of the `m=` line (0 = disabled).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...).
    pub proto: String,
    /// Connection address (media-level `c=`, else session-level).
    pub addr: Option<IpAddr>,
    /// `a=rtcp:` port, if given.
    pub rtcp_port: Option<u16>,
    /// `a=rtcp-mux` present.
    pub rtcp_mux: bool,
    /// `a=crypto` lines (SDES), verbatim after `a=crypto:`.
    pub crypto: Vec<String>,
    /// ICE username fragment (media-level, else session-level).
    pub ice_ufrag: Option<String>,
    /// ICE password (media-level, else session-level).
    pub ice_pwd: Option<String>,
    /// Payload types (formats) of the `m=` line, in order.
    pub formats: Vec<String>,
    /// `a=rtpmap:` entries: (payload type, `encoding/rate[/channels]`).
    pub rtpmap: Vec<(String, String)>,
    /// DTLS-SRTP `a=fingerprint` present (media-level, else session-level).
    pub fingerprint: bool,
}

/// Most payload types in one `m=` line.
const MAX_FORMATS: usize = 64;

/// Why an SDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SDP at line {line}: {reason}")]
pub struct SdpError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Lines with their original terminators.
fn lines(sdp: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    sdp.split_inclusive('\n').enumerate().map(|(i, raw)| {
        let body = raw.strip_suffix("\r\n").or_else(|| raw.strip_suffix('\n')).unwrap_or(raw);
        (i + 1, body, &raw[body.len()..])
    })
}

fn parse_c(value: &str) -> Option<IpAddr> {
    // c=IN IP4 192.0.2.1  (a multicast TTL suffix "/127" is cut)
    let mut it = value.split_whitespace();
    let (_net, _fam, addr) = (it.next()?, it.next()?, it.next()?);
    addr.split('/').next()?.parse().ok()
}

/// Session-level attributes that media sections inherit.
#[derive(Default)]
struct SessionLevel {
    addr: Option<IpAddr>,
    ufrag: Option<String>,
    pwd: Option<String>,
    fingerprint: bool,
}

/// Reads every media section.
pub fn parse(sdp: &str) -> Result<Vec<MediaInfo>, SdpError> {
    let mut session = SessionLevel::default();
    let mut media: Vec<MediaInfo> = Vec::new();
    let mut saw_v = false;
    for (n, line, _) in lines(sdp) {
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(SdpError { line: n, reason: "expected <type>=<value>" });
        };
        match key {
            "v" => saw_v = true,
            "c" => {
                let addr = parse_c(value).ok_or(SdpError { line: n, reason: "bad c= line" })?;
                match media.last_mut() {
                    Some(m) => m.addr = Some(addr),
                    None => session.addr = Some(addr),
                }
            }
            "m" => media.push(media_line(value, &session).map_err(|reason| SdpError { line: n, reason })?),
            "a" => attribute(value, &mut session, media.last_mut()),
            _ => {}
        }
    }
    if !saw_v {
        return Err(SdpError { line: 1, reason: "no v= line" });
    }
    Ok(media)
}

/// An `m=` line's section, inheriting the session's attributes so far.
fn media_line(value: &str, session: &SessionLevel) -> Result<MediaInfo, &'static str> {
    // Single spaces, as RFC 4566 says, and as `rewrite` splits.
    let mut it = value.split(' ');
    let kind = it.next().ok_or("bad m= line")?;
    let port = it.next().and_then(|p| p.split('/').next()?.parse().ok()).ok_or("bad m= port")?;
    let proto = it.next().ok_or("bad m= proto")?;
    let formats: Vec<String> = it.filter(|f| !f.is_empty()).map(str::to_string).collect();
    if formats.len() > MAX_FORMATS {
        return Err("more than 64 formats");
    }
    Ok(MediaInfo {
        kind: kind.into(),
        port,
        proto: proto.into(),
        addr: session.addr,
        rtcp_port: None,
        rtcp_mux: false,
        crypto: Vec::new(),
        ice_ufrag: session.ufrag.clone(),
        ice_pwd: session.pwd.clone(),
        formats,
        rtpmap: Vec::new(),
        fingerprint: session.fingerprint,
    })
}

/// An `a=` line: ICE credentials and DTLS fingerprints at either level,
/// rtcp-mux, `a=rtcp`, SDES keys and rtpmaps in a media section.
fn attribute(value: &str, session: &mut SessionLevel, section: Option<&mut MediaInfo>) {
    let ufrag = value.strip_prefix("ice-ufrag:").map(|v| v.trim().to_string());
    let pwd = value.strip_prefix("ice-pwd:").map(|v| v.trim().to_string());
    let fingerprint = value.starts_with("fingerprint:");
    let Some(m) = section else {
        session.ufrag = ufrag.or(session.ufrag.take());
        session.pwd = pwd.or(session.pwd.take());
        session.fingerprint |= fingerprint;
        return;
    };
    m.ice_ufrag = ufrag.or(m.ice_ufrag.take());
    m.ice_pwd = pwd.or(m.ice_pwd.take());
    m.fingerprint |= fingerprint;
    if value == "rtcp-mux" {
        m.rtcp_mux = true;
    } else if let Some(r) = value.strip_prefix("rtcp:") {
        m.rtcp_port = r.split_whitespace().next().and_then(|p| p.parse().ok());
    } else if let Some(c) = value.strip_prefix("crypto:") {
        m.crypto.push(c.to_string());
    } else if let Some((pt, encoding)) = value.strip_prefix("rtpmap:").and_then(|r| r.split_once(' ')) {
        if m.rtpmap.len() < MAX_FORMATS {
            m.rtpmap.push((pt.to_string(), encoding.trim().to_string()));
        }
    }
}

/// What happens to ICE attributes of one media section. An endpoint's own
/// candidates never pass the relay, whatever the mode: they would let the
/// other side bypass it and reveal private addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceRewrite {
    /// Remove every ICE attribute (`ICE: remove`): plain RTP to `c=`/`m=`.
    Remove,
    /// Keep the endpoints' credentials end to end and replace their
    /// candidates with one host candidate per component on the relay's
    /// address: connectivity checks run through the relay, where their
    /// MESSAGE-INTEGRITY authenticates the latch.
    RelayCandidates,
}

/// How to rewrite one media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRewrite {
    /// Relay RTP port written into `m=`.
    pub rtp: u16,
    /// Relay RTCP port announced with `a=rtcp:` (RFC 3605); `None` writes
    /// no `a=rtcp:` line (rtcp-mux only).
    pub rtcp: Option<u16>,
    /// Whether `a=rtcp-mux` is in the output.
    pub mux: bool,
    /// ICE handling.
    pub ice: IceRewrite,
    /// New `m=` protocol.
    pub proto: Option<String>,
    /// Payload types removed (from `m=`, with their `a=rtpmap`, `a=fmtp`,
    /// `a=rtcp-fb` lines).
    pub strip_formats: Vec<String>,
    /// Remove `a=crypto` lines (`SDES: off`).
    pub strip_crypto: bool,
    /// Remove DTLS-SRTP attributes (`DTLS: off`).
    pub strip_dtls: bool,
}

/// How to rewrite an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The address written into `c=` (and `o=`, candidates).
    pub addr: IpAddr,
    /// One entry per media section, in order (`None` leaves a section alone).
    pub media: Vec<Option<MediaRewrite>>,
    /// Rewrite the `o=` address too (`replace: origin`).
    pub replace_origin: bool,
}

/// Attributes that carry an endpoint's addresses (replaced by the relay's).
const CANDIDATE_ATTRS: [&str; 3] = ["candidate", "end-of-candidates", "remote-candidates"];

const ICE_ATTRS: [&str; 8] = [
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "candidate",
    "end-of-candidates",
    "remote-candidates",
    "ice-mismatch",
];

/// DTLS-SRTP attributes (RFC 5763, 8842).
const DTLS_ATTRS: [&str; 3] = ["fingerprint", "setup", "tls-id"];

/// Attributes tied to one payload type (`a=rtpmap:96 ...`).
const FORMAT_ATTRS: [&str; 3] = ["rtpmap", "fmtp", "rtcp-fb"];

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

/// The relay's candidates for one media section (RFC 8839 syntax).
fn relay_candidates(addr: IpAddr, m: &MediaRewrite, eol: &str) -> String {
    let mut out = format!("a=candidate:ucmrc1 1 udp 2130706431 {addr} {} typ host{eol}", m.rtp);
    if let (Some(rtcp), false) = (m.rtcp, m.mux) {
        out.push_str(&format!("a=candidate:ucmrc1 2 udp 2130706430 {addr} {rtcp} typ host{eol}"));
    }
    out.push_str(&format!("a=end-of-candidates{eol}"));
    out
}

/// Static payload types by encoding name (RFC 3551), for codec options.
const STATIC_FORMATS: [(&str, &str); 8] = [
    ("0", "PCMU"),
    ("3", "GSM"),
    ("4", "G723"),
    ("8", "PCMA"),
    ("9", "G722"),
    ("13", "CN"),
    ("18", "G729"),
    ("34", "H263"),
];

/// Payload types of `m` whose codec matches one of `names` (an encoding
/// name like `PCMA`, `name/rate` like `opus/48000`, a payload type number,
/// or `all`).
pub fn matching_formats(m: &MediaInfo, names: &[String]) -> Vec<String> {
    m.formats
        .iter()
        .filter(|pt| {
            let encoding = m
                .rtpmap
                .iter()
                .find(|(p, _)| p == *pt)
                .map(|(_, e)| e.clone())
                .or_else(|| STATIC_FORMATS.iter().find(|(p, _)| p == pt).map(|(_, n)| (*n).to_string()));
            names.iter().any(|n| {
                n.eq_ignore_ascii_case("all")
                    || n == *pt
                    || encoding.as_deref().is_some_and(|e| {
                        let name = e.split('/').next().unwrap_or(e);
                        name.eq_ignore_ascii_case(n)
                            || e.eq_ignore_ascii_case(n)
                            || e.to_ascii_lowercase().starts_with(&format!("{}/", n.to_ascii_lowercase()))
                    })
            })
        })
        .cloned()
        .collect()
}

/// Writes media section `m`'s rewritten `m=` line (relay port, protocol,
/// formats kept) and its `a=rtcp:`/`a=rtcp-mux`; the relay's candidates to
/// write at the end of the section, when it keeps ICE.
fn rewrite_media_line(
    out: &mut String,
    value: &str,
    m: &MediaRewrite,
    info: Option<&MediaInfo>,
    addr: IpAddr,
    eol: &str,
) -> Option<String> {
    let mut parts: Vec<&str> = value.split(' ').collect();
    let port_text = m.rtp.to_string();
    if parts.len() > 1 {
        parts[1] = &port_text;
    }
    if let (Some(proto), true) = (&m.proto, parts.len() > 2) {
        parts[2] = proto;
    }
    let mut kept: Vec<&str> = parts.iter().take(3).copied().collect();
    kept.extend(parts.iter().skip(3).filter(|f| !m.strip_formats.iter().any(|s| s == *f)));
    out.push_str("m=");
    out.push_str(&kept.join(" "));
    out.push_str(eol);
    if let Some(r) = m.rtcp {
        out.push_str(&format!("a=rtcp:{r}{eol}"));
    }
    if m.mux {
        out.push_str(&format!("a=rtcp-mux{eol}"));
    }
    let has_ice = info.is_some_and(|i| i.ice_ufrag.is_some() && i.ice_pwd.is_some());
    (m.ice == IceRewrite::RelayCandidates && has_ice).then(|| relay_candidates(addr, m, eol))
}

/// Whether an `a=` line (its `value` after `a=`) passes: an endpoint's own
/// candidates never do; ICE and DTLS attributes not where they are
/// removed (a session-level one when any section removes them); in a
/// rewritten section, not `rtcp`/`rtcp-mux` (written after `m=`), not a
/// stripped `crypto`, not a stripped format's attributes.
fn keeps_attribute(value: &str, in_media: bool, current: Option<&MediaRewrite>, rw: &Rewrite) -> bool {
    let (name, rest) = value.split_once(':').unwrap_or((value, ""));
    if CANDIDATE_ATTRS.contains(&name) {
        return false;
    }
    let applies = |f: fn(&MediaRewrite) -> bool| match in_media {
        true => current.is_some_and(f),
        false => rw.media.iter().flatten().any(f),
    };
    if ICE_ATTRS.contains(&name) && applies(|m| m.ice == IceRewrite::Remove) {
        return false;
    }
    if DTLS_ATTRS.contains(&name) && applies(|m| m.strip_dtls) {
        return false;
    }
    let Some(m) = current else { return true };
    if name == "rtcp" || name == "rtcp-mux" || (name == "crypto" && m.strip_crypto) {
        return false;
    }
    if FORMAT_ATTRS.contains(&name) {
        let pt = rest.split([' ', '/']).next().unwrap_or("");
        return !m.strip_formats.iter().any(|s| s == pt);
    }
    true
}

/// Rewrites `c=`, `m=` (port, protocol, formats), `a=rtcp:` and
/// `a=rtcp-mux` (written right after `m=`), optionally `o=`, ICE, SDES and
/// DTLS attributes and the attributes of stripped formats; every other line
/// and every line ending is unchanged.
pub fn rewrite(sdp: &str, rw: &Rewrite) -> Result<String, SdpError> {
    let infos = parse(sdp)?;
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut index: Option<usize> = None;
    // The relay's candidates, written at the end of their media section.
    let mut pending: Option<String> = None;
    let fam = family(rw.addr);
    for (_, line, eol) in lines(sdp) {
        let current = index.and_then(|i| rw.media.get(i).and_then(Option::as_ref));
        if let Some((key, value)) = line.split_once('=') {
            match key {
                "m" => {
                    if let Some(c) = pending.take() {
                        out.push_str(&c);
                    }
                    index = Some(index.map_or(0, |i| i + 1));
                    let info = index.and_then(|i| infos.get(i));
                    let media = index.and_then(|i| rw.media.get(i).and_then(Option::as_ref));
                    let disabled = value.split(' ').nth(1).is_some_and(|p| p == "0");
                    match (media, disabled) {
                        (Some(m), false) => pending = rewrite_media_line(&mut out, value, m, info, rw.addr, eol),
                        _ => {
                            out.push_str(line);
                            out.push_str(eol);
                        }
                    }
                    continue;
                }
                "c" if index.is_none() || current.is_some() => {
                    out.push_str(&format!("c=IN {fam} {}{eol}", rw.addr));
                    continue;
                }
                "o" if rw.replace_origin => {
                    let mut parts: Vec<String> = value.split(' ').map(str::to_string).collect();
                    if parts.len() >= 6 {
                        parts[4] = fam.to_string();
                        parts[5] = rw.addr.to_string();
                    }
                    out.push_str(&format!("o={}{eol}", parts.join(" ")));
                    continue;
                }
                "a" if !keeps_attribute(value, index.is_some(), current, rw) => continue,
                _ => {}
            }
        }
        out.push_str(line);
        out.push_str(eol);
    }
    if let Some(c) = pending.take() {
        out.push_str(&c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
m=audio 49170 RTP/SAVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:secretpassword\r\na=candidate:1 1 UDP 2130706431 10.0.0.5 49170 typ host\r\n\
m=video 51372 RTP/AVP 96\r\nc=IN IP4 10.0.0.6\r\na=rtcp:51373\r\na=rtpmap:96 VP8/90000\r\n";

    fn media(rtp: u16, rtcp: Option<u16>, mux: bool, ice: IceRewrite) -> Option<MediaRewrite> {
        Some(MediaRewrite {
            rtp,
            rtcp,
            mux,
            ice,
            proto: None,
            strip_formats: Vec::new(),
            strip_crypto: false,
            strip_dtls: false,
        })
    }

    #[test]
    fn parses_media_sections() {
        let m = parse(OFFER).expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].kind.as_str(), m[0].port, m[0].addr), ("audio", 49170, Some("10.0.0.5".parse().expect("ip"))));
        assert_eq!(m[0].crypto.len(), 1);
        assert_eq!((m[0].ice_ufrag.as_deref(), m[0].ice_pwd.as_deref()), (Some("abcd"), Some("secretpassword")));
        assert_eq!(m[1].ice_ufrag, None);
        assert_eq!((m[1].port, m[1].addr, m[1].rtcp_port), (51372, Some("10.0.0.6".parse().expect("ip")), Some(51373)));
        assert!(parse("garbage").is_err());
        assert!(parse("v=0\nm=audio x RTP/AVP 0\n").is_err());
        // Found by the ng fuzz target: a stray CR inside the m= line.
        assert!(parse("v=0\r\nm=audio 0\r3:x\r\n").is_err());
    }

    /// Table: (input, rewrite, expected output).
    #[test]
    fn rewrites_addresses_ports_rtcp_and_ice_only() {
        use IceRewrite::{RelayCandidates, Remove};
        let relay: IpAddr = "203.0.113.1".parse().expect("ip");
        let rw =
            |media: Vec<Option<MediaRewrite>>, replace_origin: bool| Rewrite { addr: relay, media, replace_origin };
        let cases: Vec<(&str, Rewrite, String)> = vec![
            // Multi m-line, CRLF, SDES passes unchanged, ICE removed, a=rtcp inserted and updated.
            (
                OFFER,
                rw(vec![media(30000, Some(30001), false, Remove), media(30002, Some(30003), false, Remove)], false),
                "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0 8\r\na=rtcp:30001\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r\n\
m=video 30002 RTP/AVP 96\r\na=rtcp:30003\r\nc=IN IP4 203.0.113.1\r\na=rtpmap:96 VP8/90000\r\n"
                    .into(),
            ),
            // rtcp-mux offered with the RTCP fallback port, LF endings, ICE
            // credentials kept end to end with the endpoint's candidates
            // replaced by the relay's (one component: mux), origin replaced.
            (
                "v=0\no=- 1 1 IN IP4 192.168.1.2\ns=-\nc=IN IP4 192.168.1.2\nt=0 0\nm=audio 4000 RTP/AVP 0\na=rtcp-mux\na=ice-ufrag:x\na=ice-pwd:pppppppppppppppppppppp\na=candidate:1 1 udp 2130706431 192.168.1.2 4000 typ host\na=candidate:2 1 udp 1694498815 198.51.100.9 61000 typ srflx raddr 192.168.1.2 rport 4000\na=end-of-candidates\n",
                rw(vec![media(31000, Some(31001), true, RelayCandidates)], true),
                "v=0\no=- 1 1 IN IP4 203.0.113.1\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\nm=audio 31000 RTP/AVP 0\na=rtcp:31001\na=rtcp-mux\na=ice-ufrag:x\na=ice-pwd:pppppppppppppppppppppp\na=candidate:ucmrc1 1 udp 2130706431 203.0.113.1 31000 typ host\na=end-of-candidates\n".into(),
            ),
            // Separate RTCP: a candidate per component, placed at the end of
            // its own section, before the next one; mux declined (removed).
            (
                "v=0\ns=-\nc=IN IP4 192.168.1.2\nt=0 0\na=ice-ufrag:s\na=ice-pwd:qqqqqqqqqqqqqqqqqqqqqq\nm=audio 4000 RTP/AVP 0\na=rtcp-mux\na=candidate:1 1 udp 1 192.168.1.2 4000 typ host\na=candidate:1 2 udp 1 192.168.1.2 4001 typ host\nm=video 0 RTP/AVP 96\na=candidate:1 1 udp 1 192.168.1.2 4002 typ host\n",
                rw(vec![media(31000, Some(31001), false, RelayCandidates), None], false),
                "v=0\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\na=ice-ufrag:s\na=ice-pwd:qqqqqqqqqqqqqqqqqqqqqq\nm=audio 31000 RTP/AVP 0\na=rtcp:31001\na=candidate:ucmrc1 1 udp 2130706431 203.0.113.1 31000 typ host\na=candidate:ucmrc1 2 udp 2130706430 203.0.113.1 31001 typ host\na=end-of-candidates\nm=video 0 RTP/AVP 96\n".into(),
            ),
            // IPv6 relay address, rtcp-mux required (no fallback), disabled
            // media untouched, protocol rewritten.
            (
                "v=0\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n",
                Rewrite {
                    addr: "2001:db8::1".parse().expect("ip"),
                    media: vec![
                        Some(MediaRewrite { proto: Some("RTP/AVPF".into()), ..media(32000, None, true, RelayCandidates).expect("some") }),
                        media(32002, None, true, RelayCandidates),
                    ],
                    replace_origin: false,
                },
                "v=0\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\nm=audio 32000 RTP/AVPF 0\r\na=rtcp-mux\r\nm=video 0 RTP/AVP 96\r\n".into(),
            ),
        ];
        for (input, rw, expected) in cases {
            assert_eq!(rewrite(input, &rw).expect("rewrite"), expected);
        }
    }

    /// Codec strip, SDES off and DTLS off only remove lines.
    #[test]
    fn strips_formats_crypto_and_dtls_with_their_attributes() {
        let sdp = "v=0\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\na=fingerprint:sha-256 AB:CD\r\n\
m=audio 4000 UDP/TLS/RTP/SAVPF 111 0 8 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\na=rtcp-fb:111 transport-cc\r\n\
a=rtpmap:101 telephone-event/8000\r\na=setup:actpass\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let info = &parse(sdp).expect("valid")[0];
        assert!(info.fingerprint);
        assert_eq!(info.formats, ["111", "0", "8", "101"]);
        assert_eq!(matching_formats(info, &["OPUS".into(), "PCMA".into()]), ["111", "8"]);
        assert_eq!(matching_formats(info, &["all".into()]).len(), 4);
        assert_eq!(matching_formats(info, &["telephone-event/8000".into()]), ["101"]);
        let rw = Rewrite {
            addr: "203.0.113.1".parse().expect("ip"),
            media: vec![Some(MediaRewrite {
                proto: Some("RTP/SAVPF".into()),
                strip_formats: vec!["111".into(), "8".into()],
                strip_crypto: false,
                strip_dtls: true,
                ..media(30000, Some(30001), false, IceRewrite::Remove).expect("some")
            })],
            replace_origin: false,
        };
        assert_eq!(
            rewrite(sdp, &rw).expect("rewrite"),
            "v=0\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 30000 RTP/SAVPF 0 101\r\na=rtcp:30001\r\n\
a=rtpmap:101 telephone-event/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
        );
    }
}
