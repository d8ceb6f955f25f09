//! The TLS ClientHello reader that routes tunnel connections by SNI
//! without terminating TLS.
//!
//! Correct where popular proxies are not: the hello may be split across TCP
//! segments *and* across several TLS records (reassembled here; HAProxy 2.6
//! misroutes the latter), may be large (post-quantum key shares make
//! hellos > 2 KiB), may carry no SNI. Bytes that are not TLS are refused
//! (nginx forwards them), so are hellos over the size limit, malformed
//! fields, duplicate extensions and more than one host name.
//!
//! Pure: [`inspect`] looks at the bytes received so far and answers "need
//! more", "here is the hello", or why it refuses. It never panics; the
//! fuzz target `client_hello` feeds it arbitrary bytes. The only allocation
//! is the reassembly buffer when the hello spans several records (bounded
//! by the size limit).
#![forbid(unsafe_code)]

/// TLS record content type `handshake`.
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Largest TLS plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
/// Extension `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `supported_versions` (RFC 8446).
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// application_layer_protocol_negotiation (RFC 7301).
const EXT_ALPN: u16 = 16;
/// The ALPN name of TURN (and STUN) over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";
/// Largest DNS name.
const MAX_NAME: usize = 253;

/// The default limit on a ClientHello (handshake message bytes): room for
/// post-quantum key shares and long extension lists, far below anything a
/// stranger could use to hold memory.
pub const DEFAULT_MAX_HELLO: usize = 16 * 1024;

/// Why a connection's first bytes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a TLS handshake record (plaintext, SSLv2, HTTP, ...).
    #[error("not TLS")]
    NotTls,
    /// A record header or length is invalid, or a non-handshake record came
    /// before the hello was complete.
    #[error("bad TLS record")]
    BadRecord,
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is not a ClientHello")]
    NotClientHello,
    /// The hello announces more bytes than the limit.
    #[error("ClientHello larger than the limit")]
    TooLarge,
    /// A ClientHello field is malformed.
    #[error("malformed ClientHello ({0})")]
    Malformed(&'static str),
    /// The server name is not a valid host name.
    #[error("invalid server name")]
    BadServerName,
}

impl HelloError {
    /// Stable reason label for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            HelloError::NotTls => "not_tls",
            HelloError::BadRecord | HelloError::NotClientHello | HelloError::Malformed(_) => "malformed_hello",
            HelloError::TooLarge => "oversize_hello",
            HelloError::BadServerName => "bad_sni",
        }
    }
}

/// What the hello says (only what routing needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The server name, lowercased, without a trailing dot; `None` when the
    /// client sent no SNI.
    pub server_name: Option<String>,
    /// Whether the client offers TLS 1.3 (`supported_versions`).
    pub offers_tls13: bool,
    /// Whether the client offers the ALPN protocol `stun.turn` (RFC 7443:
    /// TURN over TLS).
    pub offers_stun_turn: bool,
    /// Length of the ClientHello handshake message.
    pub hello_len: usize,
    /// TLS records the hello spanned.
    pub records: usize,
}

/// Inspects the bytes a client sent so far. `Ok(None)`: the hello is not
/// complete yet, read more (the caller bounds how long and how much:
/// `buf.len()` never needs to exceed `max_hello` plus 5 bytes of header per
/// record). For a connection read piece by piece, keep a [`HelloReader`]
/// instead: it resumes where it stopped.
pub fn inspect(buf: &[u8], max_hello: usize) -> Result<Option<ClientHelloInfo>, HelloError> {
    HelloReader::new(max_hello).feed(buf)
}

/// Reads a ClientHello from the bytes of a connection as they arrive,
/// resuming where it stopped: every record is taken once, however the
/// hello is split into TCP segments and TLS records (a hello cut into
/// one-byte records costs linear, not quadratic, time).
#[derive(Debug, Clone)]
pub struct HelloReader {
    max_hello: usize,
    /// Bytes of the connection consumed as whole records.
    pos: usize,
    records: usize,
    /// The handshake bytes of those records.
    handshake: Vec<u8>,
}

impl HelloReader {
    /// A reader refusing hellos over `max_hello` bytes.
    pub fn new(max_hello: usize) -> Self {
        Self { max_hello, pos: 0, records: 0, handshake: Vec::new() }
    }

    /// Looks at `buf`, every byte the client sent so far (the same buffer,
    /// grown, on each call). `Ok(None)`: not complete yet.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Option<ClientHelloInfo>, HelloError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != HANDSHAKE {
            return Err(HelloError::NotTls);
        }
        loop {
            let Some(header) = buf.get(self.pos..self.pos + 5) else { return Ok(None) };
            let version_ok = header[1] == 3 && header[2] <= 4;
            if header[0] != HANDSHAKE || !version_ok {
                return Err(if self.pos == 0 { HelloError::NotTls } else { HelloError::BadRecord });
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len == 0 || len > MAX_RECORD {
                return Err(HelloError::BadRecord);
            }
            let Some(fragment) = buf.get(self.pos + 5..self.pos + 5 + len) else {
                // Refuse early what the partial record already shows.
                let partial = &buf[self.pos + 5..];
                let so_far = &self.handshake;
                let mut have = Vec::with_capacity(8);
                have.extend_from_slice(&so_far[..so_far.len().min(8)]);
                have.extend_from_slice(&partial[..partial.len().min(8 - have.len().min(8))]);
                check_header(&have, self.max_hello)?;
                return Ok(None);
            };
            self.records += 1;
            self.pos += 5 + len;
            self.handshake.extend_from_slice(fragment);
            let Some(total) = check_header(&self.handshake, self.max_hello)? else { continue };
            if self.handshake.len() >= total {
                let mut info = parse_body(&self.handshake[4..total])?;
                info.hello_len = total;
                info.records = self.records;
                return Ok(Some(info));
            }
        }
    }
}

/// Checks the handshake header once 4 bytes are there: `Some(total)`.
fn check_header(handshake: &[u8], max_hello: usize) -> Result<Option<usize>, HelloError> {
    if let Some(&t) = handshake.first() {
        if t != CLIENT_HELLO {
            return Err(HelloError::NotClientHello);
        }
    }
    let Some(h) = handshake.get(..4) else { return Ok(None) };
    let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
    if len + 4 > max_hello {
        return Err(HelloError::TooLarge);
    }
    if len < 2 + 32 + 1 + 2 + 1 {
        return Err(HelloError::Malformed("too short"));
    }
    Ok(Some(len + 4))
}

/// A cursor over a byte slice that refuses to read past its end.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.b.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHelloInfo, HelloError> {
    let mut r = Reader { b: body };
    let legacy_version = r.u16("legacy_version")?;
    if legacy_version >> 8 != 3 {
        return Err(HelloError::Malformed("legacy_version"));
    }
    r.take(32, "random")?;
    if r.vec8("session_id")?.len() > 32 {
        return Err(HelloError::Malformed("session_id"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites"));
    }
    if r.vec8("compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("compression_methods"));
    }
    let mut info =
        ClientHelloInfo { server_name: None, offers_tls13: false, offers_stun_turn: false, hello_len: 0, records: 0 };
    if r.b.is_empty() {
        return Ok(info); // no extensions (old clients)
    }
    let mut exts = Reader { b: r.vec16("extensions")? };
    if !r.b.is_empty() {
        return Err(HelloError::Malformed("trailing bytes"));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !exts.b.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if seen.contains(&kind) {
            return Err(HelloError::Malformed("duplicate extension"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => info.server_name = parse_server_name(data)?,
            EXT_SUPPORTED_VERSIONS => {
                let mut v = Reader { b: data };
                let list = v.vec8("supported_versions")?;
                if list.len() % 2 != 0 || !v.b.is_empty() {
                    return Err(HelloError::Malformed("supported_versions"));
                }
                info.offers_tls13 = list.chunks(2).any(|p| p == [3, 4]);
            }
            EXT_ALPN => info.offers_stun_turn = offers_protocol(data, ALPN_STUN_TURN)?,
            _ => {}
        }
    }
    Ok(info)
}

/// Whether an ALPN extension's protocol list names `protocol`.
fn offers_protocol(data: &[u8], protocol: &[u8]) -> Result<bool, HelloError> {
    let mut r = Reader { b: data };
    let mut list = Reader { b: r.vec16("protocol_name_list")? };
    if !r.b.is_empty() || list.b.is_empty() {
        return Err(HelloError::Malformed("alpn"));
    }
    let mut found = false;
    while !list.b.is_empty() {
        let name = list.vec8("protocol_name")?;
        if name.is_empty() {
            return Err(HelloError::Malformed("alpn"));
        }
        found |= name == protocol;
    }
    Ok(found)
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { b: data };
    let mut list = Reader { b: r.vec16("server_name_list")? };
    if !r.b.is_empty() {
        return Err(HelloError::Malformed("server_name"));
    }
    let mut host: Option<String> = None;
    while !list.b.is_empty() {
        let name_type = list.u8("name_type")?;
        let name = list.vec16("host_name")?;
        if name_type != 0 {
            continue; // unknown name types are skipped (RFC 6066 §3)
        }
        if host.is_some() {
            return Err(HelloError::BadServerName); // one host_name at most
        }
        host = Some(valid_host_name(name)?);
    }
    Ok(host)
}

fn valid_host_name(name: &[u8]) -> Result<String, HelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        && !name.starts_with(b".")
        && !name.windows(2).any(|w| w == b"..");
    if !ok {
        return Err(HelloError::BadServerName);
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// Builds a ClientHello (tests, benches, the load generator): `sni`,
/// padded with an extension of `padding` bytes (post-quantum-sized hellos),
/// split into TLS records of at most `record_size` bytes of handshake data.
pub fn build_client_hello(sni: Option<&str>, padding: usize, record_size: usize) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[1, 0]);
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let entry_len = 3 + n.len();
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
        exts.extend_from_slice(n);
    }
    exts.extend_from_slice(&EXT_SUPPORTED_VERSIONS.to_be_bytes());
    exts.extend_from_slice(&[0, 3, 2, 3, 4]);
    if padding > 0 {
        exts.extend_from_slice(&21u16.to_be_bytes()); // padding extension
        exts.extend_from_slice(&(padding as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0u8, padding));
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![CLIENT_HELLO, (body.len() >> 16) as u8, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in hs.chunks(record_size.clamp(1, MAX_RECORD)) {
        out.extend_from_slice(&[HANDSHAKE, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn alpn_lists_are_read_strictly_for_stun_turn() {
        let list = |names: &[&[u8]]| {
            let mut inner = Vec::new();
            for n in names {
                inner.push(n.len() as u8);
                inner.extend_from_slice(n);
            }
            let mut v = (inner.len() as u16).to_be_bytes().to_vec();
            v.extend(inner);
            v
        };
        assert_eq!(super::offers_protocol(&list(&[b"h2", b"stun.turn"]), ALPN_STUN_TURN), Ok(true));
        assert_eq!(super::offers_protocol(&list(&[b"h2", b"http/1.1"]), ALPN_STUN_TURN), Ok(false));
        assert_eq!(super::offers_protocol(&list(&[b"stun.turnx"]), ALPN_STUN_TURN), Ok(false));
        assert!(super::offers_protocol(&list(&[]), ALPN_STUN_TURN).is_err(), "an empty list");
        assert!(super::offers_protocol(&list(&[b""]), ALPN_STUN_TURN).is_err(), "an empty name");
        let mut cut = list(&[b"stun.turn"]);
        cut.pop();
        assert!(super::offers_protocol(&cut, ALPN_STUN_TURN).is_err(), "a name past the end");
    }

    #[test]
    fn a_reader_fed_byte_by_byte_sees_what_a_whole_buffer_shows() {
        for record in [1usize, 5, 300, 16384] {
            let hello = build_client_hello(Some("acme.relay.test"), 700, record);
            let whole = inspect(&hello, DEFAULT_MAX_HELLO).expect("valid").expect("complete");
            let mut reader = HelloReader::new(DEFAULT_MAX_HELLO);
            let mut got = None;
            for n in 1..=hello.len() {
                match reader.feed(&hello[..n]).expect("valid so far") {
                    Some(info) => {
                        assert_eq!(n, hello.len(), "complete only at the last byte");
                        got = Some(info);
                    }
                    None => assert!(n < hello.len()),
                }
            }
            assert_eq!(got, Some(whole), "records of {record} bytes");
            assert_eq!(reader.pos, hello.len(), "every record consumed once");
        }
    }

    use super::*;

    fn sni(buf: &[u8]) -> Result<Option<ClientHelloInfo>, HelloError> {
        inspect(buf, DEFAULT_MAX_HELLO)
    }

    #[test]
    fn reads_sni_from_one_record_and_waits_for_more_at_every_split_point() {
        let hello = build_client_hello(Some("Acme.Relay.Example."), 0, 16384);
        let info = sni(&hello).expect("valid").expect("complete");
        assert_eq!(info.server_name.as_deref(), Some("acme.relay.example"));
        assert!(info.offers_tls13);
        assert_eq!(info.records, 1);
        for cut in 0..hello.len() {
            assert_eq!(sni(&hello[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn reassembles_hellos_split_across_records_including_large_post_quantum_ones() {
        for (padding, record) in [(0, 1), (0, 7), (0, 50), (3000, 512), (9000, 4096), (12000, 16384)] {
            let hello = build_client_hello(Some("pbx.acme.example"), padding, record);
            let info = sni(&hello).expect("valid").expect("complete");
            assert_eq!(info.server_name.as_deref(), Some("pbx.acme.example"), "padding {padding} record {record}");
            assert!(info.hello_len > padding);
            assert_eq!(info.records, info.hello_len.div_ceil(record));
            for cut in [1, 5, 6, hello.len() / 2, hello.len() - 1] {
                assert_eq!(sni(&hello[..cut]), Ok(None), "cut {cut} of {}", hello.len());
            }
        }
    }

    #[test]
    #[cfg(feature = "tls")]
    fn reads_the_hello_of_a_real_rustls_client_split_anywhere() {
        let trust = crate::tls::ClientTrust::Pinned([0; 32]);
        let cfg = crate::tls::client_config(&trust).expect("config");
        let name = rustls::pki_types::ServerName::try_from("pbx.acme.example").expect("name");
        let mut conn = rustls::ClientConnection::new(cfg, name).expect("client");
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).expect("hello");
        let info = sni(&wire).expect("valid").expect("complete");
        assert_eq!(info.server_name.as_deref(), Some("pbx.acme.example"));
        assert!(info.offers_tls13);
        for cut in 0..wire.len() {
            assert_eq!(sni(&wire[..cut]), Ok(None));
        }
    }

    #[test]
    fn no_sni_is_reported_not_refused() {
        let info = sni(&build_client_hello(None, 0, 100)).expect("valid").expect("complete");
        assert_eq!(info.server_name, None);
    }

    #[test]
    fn refuses_plaintext_oversize_malformed_and_odd_names() {
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(sni(&[0x80, 0x2e, 0x01]), Err(HelloError::NotTls), "SSLv2 hello");
        assert_eq!(sni(&[0x16, 0x02, 0x00, 0, 5]), Err(HelloError::NotTls), "not version 3.x");
        assert_eq!(sni(&[0x16, 0x03, 0x01, 0, 0]), Err(HelloError::BadRecord), "empty record");
        assert_eq!(sni(&[0x16, 0x03, 0x01, 0x40, 0x01]), Err(HelloError::BadRecord), "record over 2^14");
        assert_eq!(sni(&[0x16, 0x03, 0x01, 0, 4, 2, 0, 0, 0]), Err(HelloError::NotClientHello));
        // Oversize is refused from the header alone, before the bytes arrive.
        let big = build_client_hello(Some("a.example"), 20000, 16384);
        assert_eq!(sni(&big[..9]), Err(HelloError::TooLarge));
        assert_eq!(inspect(&build_client_hello(Some("a.example"), 600, 100), 512), Err(HelloError::TooLarge));
        // A non-handshake record in the middle of a split hello.
        let mut split = build_client_hello(Some("a.example"), 0, 20);
        split[25] = 0x17;
        assert_eq!(sni(&split), Err(HelloError::BadRecord));
        for bad in ["", "a..b", ".a", "a b", "ü.example", &"a".repeat(254)] {
            let h = build_client_hello(Some(bad), 0, 16384);
            assert_eq!(sni(&h), Err(HelloError::BadServerName), "{bad:?}");
        }
        // Corrupt lengths inside the body are malformed, never a panic.
        let good = build_client_hello(Some("a.example"), 0, 16384);
        for i in 9..good.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut b = good.clone();
                b[i] = v;
                let _ = sni(&b);
            }
        }
    }

    /// A one-record hello with exactly these extension bytes.
    fn hello_with_extensions(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn duplicate_extensions_and_two_host_names_are_refused() {
        let versions = [0, 43, 0, 3, 2, 3, 4];
        assert!(sni(&hello_with_extensions(&versions)).expect("one copy is fine").is_some());
        let twice: Vec<u8> = versions.iter().chain(versions.iter()).copied().collect();
        assert_eq!(sni(&hello_with_extensions(&twice)), Err(HelloError::Malformed("duplicate extension")));
        // server_name with two host_name entries ("a.x", "b.x").
        let names = [0, 0, 0, 14, 0, 12, 0, 0, 3, b'a', b'.', b'x', 0, 0, 3, b'b', b'.', b'x'];
        assert_eq!(sni(&hello_with_extensions(&names)), Err(HelloError::BadServerName));
        // An unknown name type is skipped; the host name still routes.
        let mixed = [0, 0, 0, 14, 0, 12, 9, 0, 3, b'z', b'z', b'z', 0, 0, 3, b'b', b'.', b'x'];
        let info = sni(&hello_with_extensions(&mixed)).expect("valid").expect("complete");
        assert_eq!(info.server_name.as_deref(), Some("b.x"));
        // Extension data running past the block is malformed.
        assert_eq!(sni(&hello_with_extensions(&[0, 43, 0, 9, 2])), Err(HelloError::Malformed("extension data")));
    }
}
