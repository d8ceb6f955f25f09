//! Just enough SIP (RFC 3261) over UDP for the Kamailio tests: a user agent
//! that sends INVITE/ACK/BYE through a proxy and answers them, and an SDP
//! reader for what the relay wrote.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// One SIP message.
#[derive(Debug, Clone)]
pub struct SipMessage {
    /// Request line or status line.
    pub first: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl SipMessage {
    /// Parses a datagram.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let first = lines.next()?.to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Self { first, headers, body: body.to_string() })
    }

    /// A request.
    pub fn request(method: &str, uri: &str, headers: Vec<(String, String)>, body: &str) -> Self {
        Self { first: format!("{method} {uri} SIP/2.0"), headers, body: body.to_string() }
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every header named `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.first.strip_prefix("SIP/2.0 ")?.split(' ').next()?.parse().ok()
    }

    /// Method of a request.
    pub fn method(&self) -> Option<&str> {
        (!self.first.starts_with("SIP/2.0")).then(|| self.first.split(' ').next()).flatten()
    }

    /// The CSeq method.
    pub fn cseq_method(&self) -> String {
        self.header("CSeq").and_then(|c| c.split(' ').nth(1)).unwrap_or("").to_string()
    }

    /// Encodes with a correct Content-Length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (n, v) in &self.headers {
            if !n.eq_ignore_ascii_case("Content-Length") {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        if !self.body.is_empty() {
            out.push_str("Content-Type: application/sdp\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{}", self.body.len(), self.body));
        out.into_bytes()
    }

    /// A response to this request: Via, From, To (with `to_tag`), Call-ID,
    /// CSeq and Record-Route copied, as a UAS does.
    pub fn response(
        &self,
        code: u16,
        reason: &str,
        to_tag: &str,
        contact: &str,
        extra: Vec<(String, String)>,
        body: &str,
    ) -> Self {
        let mut headers: Vec<(String, String)> = Vec::new();
        for name in ["Via", "Record-Route"] {
            for v in self.all(name) {
                headers.push((name.into(), v));
            }
        }
        headers.push(("From".into(), self.header("From").unwrap_or("").into()));
        let to = self.header("To").unwrap_or("").to_string();
        headers.push(("To".into(), if to.contains(";tag=") { to } else { format!("{to};tag={to_tag}") }));
        headers.push(("Call-ID".into(), self.header("Call-ID").unwrap_or("").into()));
        headers.push(("CSeq".into(), self.header("CSeq").unwrap_or("").into()));
        headers.push(("Contact".into(), contact.into()));
        headers.extend(extra);
        Self { first: format!("SIP/2.0 {code} {reason}"), headers, body: body.to_string() }
    }
}

/// A SIP endpoint on a UDP socket.
pub struct SipSocket {
    /// The socket.
    pub sock: UdpSocket,
    /// Its address.
    pub addr: SocketAddr,
}

impl SipSocket {
    /// Binds a kernel-chosen loopback port.
    pub fn bind() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sip");
        let addr = sock.local_addr().expect("addr");
        Self { sock, addr }
    }

    /// Uses `sock` (bound by the caller: another address, a namespace).
    pub fn from_socket(sock: UdpSocket) -> Self {
        let addr = sock.local_addr().expect("addr");
        Self { sock, addr }
    }

    /// Sends a message.
    pub fn send(&self, m: &SipMessage, to: SocketAddr) {
        self.sock.send_to(&m.encode(), to).expect("send sip");
    }

    /// Waits up to `timeout` for a message `accept` takes (others, like
    /// `100 Trying` or retransmissions, are skipped); returns it and its source.
    pub fn expect(
        &self,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&SipMessage) -> bool,
    ) -> (SipMessage, SocketAddr) {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} within {timeout:?}");
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if let Some(m) = SipMessage::parse(&buf[..n]) {
                    if accept(&m) {
                        return (m, from);
                    }
                }
            }
        }
    }
}

/// One media section of an SDP as a UA reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpMedia {
    /// `m=` port.
    pub port: u16,
    /// `m=` protocol.
    pub proto: String,
    /// Payload types.
    pub formats: Vec<String>,
    /// `a=rtcp:` port.
    pub rtcp: Option<u16>,
    /// `a=rtcp-mux` present.
    pub mux: bool,
    /// `a=crypto` inline keys (base64).
    pub crypto: Vec<String>,
    /// `a=candidate` lines.
    pub candidates: Vec<String>,
    /// `a=ice-ufrag`.
    pub ufrag: Option<String>,
    /// Direction attribute (`sendrecv` if none).
    pub direction: String,
}

/// An SDP as a UA reads it: connection address and media sections.
#[derive(Debug, Clone)]
pub struct SdpView {
    /// Session-level `c=` address (media-level ones are checked equal).
    pub addr: std::net::IpAddr,
    /// `o=` line.
    pub origin: String,
    /// Media sections.
    pub media: Vec<SdpMedia>,
}

impl SdpView {
    /// Reads an SDP body.
    pub fn parse(sdp: &str) -> Self {
        let mut addr = None;
        let mut origin = String::new();
        let mut media: Vec<SdpMedia> = Vec::new();
        for line in sdp.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(c) = line.strip_prefix("c=IN ") {
                let a: std::net::IpAddr = c.split(' ').nth(1).expect("c= address").parse().expect("c= ip");
                if let Some(prev) = addr {
                    assert_eq!(prev, a, "media-level c= differs from the session's");
                }
                addr = Some(a);
            } else if let Some(o) = line.strip_prefix("o=") {
                origin = o.to_string();
            } else if let Some(m) = line.strip_prefix("m=") {
                let parts: Vec<&str> = m.split(' ').collect();
                media.push(SdpMedia {
                    port: parts[1].parse().expect("m= port"),
                    proto: parts[2].to_string(),
                    formats: parts[3..].iter().map(|s| s.to_string()).collect(),
                    rtcp: None,
                    mux: false,
                    crypto: Vec::new(),
                    candidates: Vec::new(),
                    ufrag: None,
                    direction: "sendrecv".into(),
                });
            } else if let (Some(a), Some(m)) = (line.strip_prefix("a="), media.last_mut()) {
                if a == "rtcp-mux" {
                    m.mux = true;
                } else if let Some(r) = a.strip_prefix("rtcp:") {
                    m.rtcp = r.split(' ').next().and_then(|p| p.parse().ok());
                } else if let Some(c) = a.strip_prefix("crypto:") {
                    let key = c.split("inline:").nth(1).expect("inline key").split('|').next().expect("key");
                    m.crypto.push(key.to_string());
                } else if let Some(c) = a.strip_prefix("candidate:") {
                    m.candidates.push(c.to_string());
                } else if let Some(u) = a.strip_prefix("ice-ufrag:") {
                    m.ufrag = Some(u.to_string());
                } else if ["sendrecv", "sendonly", "recvonly", "inactive"].contains(&a) {
                    m.direction = a.to_string();
                }
            }
        }
        Self { addr: addr.expect("a c= line"), origin, media }
    }
}
