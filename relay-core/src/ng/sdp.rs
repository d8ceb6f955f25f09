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
}

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

/// Reads every media section.
pub fn parse(sdp: &str) -> Result<Vec<MediaInfo>, SdpError> {
    let mut session_addr = None;
    let (mut session_ufrag, mut session_pwd) = (None, None);
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
                    None => session_addr = Some(addr),
                }
            }
            "m" => {
                // Single spaces, as RFC 4566 says, and as `rewrite` splits.
                let mut it = value.split(' ');
                let kind = it.next().ok_or(SdpError { line: n, reason: "bad m= line" })?;
                let port = it
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .ok_or(SdpError { line: n, reason: "bad m= port" })?;
                let proto = it.next().ok_or(SdpError { line: n, reason: "bad m= proto" })?;
                media.push(MediaInfo {
                    kind: kind.into(),
                    port,
                    proto: proto.into(),
                    addr: session_addr,
                    rtcp_port: None,
                    rtcp_mux: false,
                    crypto: Vec::new(),
                    ice_ufrag: session_ufrag.clone(),
                    ice_pwd: session_pwd.clone(),
                });
            }
            "a" => {
                let ufrag = value.strip_prefix("ice-ufrag:").map(|v| v.trim().to_string());
                let pwd = value.strip_prefix("ice-pwd:").map(|v| v.trim().to_string());
                match media.last_mut() {
                    None => {
                        session_ufrag = ufrag.or(session_ufrag);
                        session_pwd = pwd.or(session_pwd);
                    }
                    Some(m) => {
                        m.ice_ufrag = ufrag.or(m.ice_ufrag.take());
                        m.ice_pwd = pwd.or(m.ice_pwd.take());
                    }
                }
                if let Some(m) = media.last_mut() {
                    if value == "rtcp-mux" {
                        m.rtcp_mux = true;
                    } else if let Some(r) = value.strip_prefix("rtcp:") {
                        m.rtcp_port = r.split_whitespace().next().and_then(|p| p.parse().ok());
                    } else if let Some(c) = value.strip_prefix("crypto:") {
                        m.crypto.push(c.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_v {
        return Err(SdpError { line: 1, reason: "no v= line" });
    }
    Ok(media)
}

/// New ports for one media section (`None` leaves a section alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaPorts {
    /// Relay RTP port.
    pub rtp: u16,
    /// Relay RTCP port (`None` with rtcp-mux).
    pub rtcp: Option<u16>,
}

/// What happens to ICE attributes. An endpoint's own candidates never pass
/// the relay: they would let the other side bypass it and reveal private
/// addresses.
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

/// How to rewrite an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The relay's advertised address.
    pub addr: IpAddr,
    /// Ports per media section, in order.
    pub media: Vec<Option<MediaPorts>>,
    /// What happens to ICE attributes.
    pub ice: IceRewrite,
    /// Rewrite the `o=` address too (`replace: origin`).
    pub replace_origin: bool,
    /// Replace the transport protocol of every media line.
    pub proto: Option<String>,
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

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

/// The relay's candidates for one media section (RFC 8839 syntax).
fn relay_candidates(addr: IpAddr, p: MediaPorts, eol: &str) -> String {
    let mut out = format!("a=candidate:ucmrc1 1 udp 2130706431 {addr} {} typ host{eol}", p.rtp);
    if let Some(rtcp) = p.rtcp {
        out.push_str(&format!("a=candidate:ucmrc1 2 udp 2130706430 {addr} {rtcp} typ host{eol}"));
    }
    out.push_str(&format!("a=end-of-candidates{eol}"));
    out
}

/// Rewrites `c=`, `m=` ports, `a=rtcp:` (inserted when RTCP has its own
/// port), optionally `o=`, and ICE attributes; everything else is unchanged.
pub fn rewrite(sdp: &str, rw: &Rewrite) -> Result<String, SdpError> {
    let infos = parse(sdp)?;
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut index: Option<usize> = None;
    // The relay's candidates, written at the end of their media section.
    let mut pending: Option<String> = None;
    let fam = family(rw.addr);
    for (_, line, eol) in lines(sdp) {
        let ports = index.and_then(|i| rw.media.get(i).copied().flatten());
        if let Some((key, value)) = line.split_once('=') {
            match key {
                "m" => {
                    if let Some(c) = pending.take() {
                        out.push_str(&c);
                    }
                    index = Some(index.map_or(0, |i| i + 1));
                    let info = index.and_then(|i| infos.get(i));
                    let ports = index.and_then(|i| rw.media.get(i).copied().flatten());
                    let mut parts: Vec<&str> = value.split(' ').collect();
                    let disabled = parts.get(1).is_some_and(|p| *p == "0");
                    let port_text;
                    let mut insert_rtcp = None;
                    if let (Some(p), false) = (ports, disabled) {
                        port_text = p.rtp.to_string();
                        if parts.len() > 1 {
                            parts[1] = &port_text;
                        }
                        if let (Some(proto), true) = (&rw.proto, parts.len() > 2) {
                            parts[2] = proto;
                        }
                        // Without rtcp-mux, announce the RTCP port (RFC 3605)
                        // unless the section has an a=rtcp line to rewrite.
                        let has_rtcp_line = info.is_some_and(|m| m.rtcp_port.is_some());
                        insert_rtcp = p.rtcp.filter(|_| !has_rtcp_line);
                        let has_ice = info.is_some_and(|m| m.ice_ufrag.is_some() && m.ice_pwd.is_some());
                        if rw.ice == IceRewrite::RelayCandidates && has_ice {
                            pending = Some(relay_candidates(rw.addr, p, eol));
                        }
                    }
                    out.push_str("m=");
                    out.push_str(&parts.join(" "));
                    out.push_str(eol);
                    if let Some(r) = insert_rtcp {
                        out.push_str(&format!("a=rtcp:{r}{eol}"));
                    }
                    continue;
                }
                "c" if index.is_none() || ports.is_some() => {
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
                "a" => {
                    let name = value.split(':').next().unwrap_or("");
                    // An endpoint's own candidates never pass, whatever the mode.
                    if CANDIDATE_ATTRS.contains(&name) {
                        continue;
                    }
                    if rw.ice == IceRewrite::Remove && ICE_ATTRS.contains(&name) {
                        continue;
                    }
                    if let (Some(p), Some(_)) = (ports, value.strip_prefix("rtcp:")) {
                        let port = p.rtcp.unwrap_or(p.rtp);
                        out.push_str(&format!("a=rtcp:{port} IN {fam} {}{eol}", rw.addr));
                        continue;
                    }
                }
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

    fn ports(rtp: u16, rtcp: Option<u16>) -> Option<MediaPorts> {
        Some(MediaPorts { rtp, rtcp })
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
        let relay: IpAddr = "203.0.113.1".parse().expect("ip");
        let cases: Vec<(&str, Rewrite, String)> = vec![
            // Multi m-line, CRLF, SDES passes unchanged, ICE removed, a=rtcp inserted and updated.
            (
                OFFER,
                Rewrite { addr: relay, media: vec![ports(30000, Some(30001)), ports(30002, Some(30003))], ice: IceRewrite::Remove, replace_origin: false, proto: None },
                "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVP 0 8\r\na=rtcp:30001\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r\n\
m=video 30002 RTP/AVP 96\r\nc=IN IP4 203.0.113.1\r\na=rtcp:30003 IN IP4 203.0.113.1\r\na=rtpmap:96 VP8/90000\r\n"
                    .into(),
            ),
            // rtcp-mux, LF endings, ICE credentials kept end to end with the
            // endpoint's candidates replaced by the relay's, origin replaced.
            (
                "v=0\no=- 1 1 IN IP4 192.168.1.2\ns=-\nc=IN IP4 192.168.1.2\nt=0 0\nm=audio 4000 RTP/AVP 0\na=rtcp-mux\na=ice-ufrag:x\na=ice-pwd:pppppppppppppppppppppp\na=candidate:1 1 udp 2130706431 192.168.1.2 4000 typ host\na=candidate:2 1 udp 1694498815 198.51.100.9 61000 typ srflx raddr 192.168.1.2 rport 4000\na=end-of-candidates\n",
                Rewrite { addr: relay, media: vec![ports(31000, None)], ice: IceRewrite::RelayCandidates, replace_origin: true, proto: None },
                "v=0\no=- 1 1 IN IP4 203.0.113.1\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\nm=audio 31000 RTP/AVP 0\na=rtcp-mux\na=ice-ufrag:x\na=ice-pwd:pppppppppppppppppppppp\na=candidate:ucmrc1 1 udp 2130706431 203.0.113.1 31000 typ host\na=end-of-candidates\n".into(),
            ),
            // The same with separate RTCP: a candidate per component, placed
            // at the end of its own section, before the next one.
            (
                "v=0\ns=-\nc=IN IP4 192.168.1.2\nt=0 0\na=ice-ufrag:s\na=ice-pwd:qqqqqqqqqqqqqqqqqqqqqq\nm=audio 4000 RTP/AVP 0\na=candidate:1 1 udp 1 192.168.1.2 4000 typ host\na=candidate:1 2 udp 1 192.168.1.2 4001 typ host\nm=video 0 RTP/AVP 96\na=candidate:1 1 udp 1 192.168.1.2 4002 typ host\n",
                Rewrite { addr: relay, media: vec![ports(31000, Some(31001)), None], ice: IceRewrite::RelayCandidates, replace_origin: false, proto: None },
                "v=0\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\na=ice-ufrag:s\na=ice-pwd:qqqqqqqqqqqqqqqqqqqqqq\nm=audio 31000 RTP/AVP 0\na=rtcp:31001\na=candidate:ucmrc1 1 udp 2130706431 203.0.113.1 31000 typ host\na=candidate:ucmrc1 2 udp 2130706430 203.0.113.1 31001 typ host\na=end-of-candidates\nm=video 0 RTP/AVP 96\n".into(),
            ),
            // IPv6 relay address, disabled media untouched, protocol rewritten.
            (
                "v=0\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n",
                Rewrite { addr: "2001:db8::1".parse().expect("ip"), media: vec![ports(32000, None), ports(32002, None)], ice: IceRewrite::RelayCandidates, replace_origin: false, proto: Some("RTP/SAVP".into()) },
                "v=0\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\nm=audio 32000 RTP/SAVP 0\r\nm=video 0 RTP/AVP 96\r\n".into(),
            ),
        ];
        for (input, rw, expected) in cases {
            assert_eq!(rewrite(input, &rw).expect("rewrite"), expected);
        }
    }
}
