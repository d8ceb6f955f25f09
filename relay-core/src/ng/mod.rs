//! rtpengine's *ng* control protocol, so Kamailio's and OpenSIPS's rtpengine
//! modules can drive UCMRC unchanged.
//!
//! A message is `COOKIE SP BENCODED-DICT`; the reply is `COOKIE SP DICT`.
//! [`NgEngine::handle_message`] takes one message and returns the reply;
//! transports (UDP, TCP) live in the binary. Replies are cached by cookie,
//! so a retransmitted request is answered without being executed twice.
//!
//! Mapping: one UCMRC session per media line of a call; the session's `pbx`
//! leg faces the offerer (`from-tag`), its `endpoint` leg the answerer
//! (`to-tag`). A re-offer or re-answer reuses the call's sessions (and ports)
//! and re-opens their learning window; `delete` releases them.
//!
//! Security: the answerer's leg latches nothing until the answer gives its
//! address (`no_hint` drops before that); once both SDPs carry keys — SDES
//! `a=crypto` with an HMAC-SHA1 suite, or ICE credentials (checks then run
//! through the relay, whose candidates replace the endpoints') — the
//! sessions switch to `authenticated` latching, so a stranger cannot take a
//! leg even before the real endpoint speaks. Every input is bounded
//! ([`NgLimits`]).
#![forbid(unsafe_code)]

#[doc(hidden)] // the wire format, for ucmrc's ng transport and the fuzz targets
pub mod bencode;
#[doc(hidden)] // SDP rewriting internals, for the fuzz targets
pub mod sdp;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bencode::{dict, Value};
use tokio::sync::Mutex;

use crate::relay::{AllocatedSession, RelayHandle};
use crate::session::spec::{LatchPolicy, LegSpec, LegUpdate, SessionSpec, SessionUpdate, SrtpAuth};
use crate::session::SessionId;
use crate::srtp_keys::{derive_auth_keys, SrtpMasterKey};
use sdp::IceRewrite;

/// How long a reply stays cached for retransmissions.
pub const REPLY_CACHE_TTL: Duration = Duration::from_secs(30);

/// Bounds on what one ng client can make the relay hold. Every field has a
/// production default; a request beyond a bound gets an `error` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgLimits {
    /// Largest message (UDP datagram or one TCP message), bytes.
    pub max_message_bytes: usize,
    /// Longest cookie, bytes.
    pub max_cookie_bytes: usize,
    /// Longest call-id, from-tag or to-tag, bytes.
    pub max_id_bytes: usize,
    /// Largest SDP body, bytes.
    pub max_sdp_bytes: usize,
    /// Most `m=` lines in one SDP (each takes a session and ports).
    pub max_media_per_call: usize,
    /// Most calls known at once.
    pub max_calls: usize,
    /// Replies cached for retransmissions, at most.
    pub max_cached_replies: usize,
    /// Bytes of cached replies (cookies included), at most.
    pub max_cache_bytes: usize,
    /// A call none of whose sessions is alive (never had media, or all
    /// ended by their timers) is forgotten after this long.
    pub orphan_call_ttl: Duration,
}

impl Default for NgLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 256 * 1024,
            max_cookie_bytes: 128,
            max_id_bytes: 256,
            max_sdp_bytes: 64 * 1024,
            max_media_per_call: 16,
            max_calls: 100_000,
            max_cached_replies: 10_000,
            max_cache_bytes: 16 << 20,
            orphan_call_ttl: Duration::from_secs(60),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct NgConfig {
    /// Tenant charged for ng sessions.
    pub tenant: String,
    /// Bounds on what requests can make the relay hold.
    pub limits: NgLimits,
    /// Switch a call's sessions to `authenticated` latching as soon as both
    /// SDPs give keys (SDES `a=crypto` with HMAC-SHA1, or ICE credentials);
    /// a request opts out with the flag `no-authenticated-latching`.
    pub authenticated_latching: bool,
}

impl Default for NgConfig {
    fn default() -> Self {
        Self { tenant: "ng".into(), limits: NgLimits::default(), authenticated_latching: true }
    }
}

#[derive(Debug, Clone)]
struct Media {
    id: SessionId,
    alloc: AllocatedSession,
    kind: String,
    proto: String,
    mux: bool,
    /// Whether each leg (pbx, endpoint) has a key that can prove its source.
    keyed: [bool; 2],
}

#[derive(Debug, Clone)]
struct Call {
    from_tag: String,
    to_tag: Option<String>,
    created: u64,
    media: Vec<Media>,
    /// When the call last had a live session (or was created).
    seen_alive: Instant,
}

/// Replies kept for retransmitted requests, bounded in count and bytes.
#[derive(Default)]
struct ReplyCache {
    replies: HashMap<Vec<u8>, (Instant, Vec<u8>)>,
    order: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
}

impl ReplyCache {
    fn get(&self, now: Instant, cookie: &[u8]) -> Option<Vec<u8>> {
        let (at, reply) = self.replies.get(cookie)?;
        (now.saturating_duration_since(*at) < REPLY_CACHE_TTL).then(|| reply.clone())
    }

    fn insert(&mut self, now: Instant, cookie: &[u8], reply: &[u8], limits: &NgLimits) {
        let size = cookie.len() + reply.len();
        if size > limits.max_cache_bytes / 4 {
            return; // one reply never crowds out the others
        }
        if let Some((_, old)) = self.replies.insert(cookie.to_vec(), (now, reply.to_vec())) {
            self.bytes -= cookie.len() + old.len();
        } else {
            self.order.push_back((now, cookie.to_vec()));
        }
        self.bytes += size;
        while self.order.len() > limits.max_cached_replies
            || self.bytes > limits.max_cache_bytes
            || self.order.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= REPLY_CACHE_TTL)
        {
            let Some((_, c)) = self.order.pop_front() else { break };
            if let Some((_, r)) = self.replies.remove(&c) {
                self.bytes -= c.len() + r.len();
            }
        }
    }
}

#[derive(Default)]
struct State {
    calls: HashMap<Vec<u8>, Call>,
    cache: ReplyCache,
    calls_total: u64,
}

/// The ng protocol engine.
pub struct NgEngine {
    handle: RelayHandle,
    config: NgConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for NgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgEngine").field("config", &self.config).finish_non_exhaustive()
    }
}

fn error(reason: impl Into<String>) -> Value {
    dict([("result", Value::str("error")), ("error-reason", Value::Bytes(reason.into().into_bytes()))])
}

fn ok(mut pairs: Vec<(&str, Value)>) -> Value {
    pairs.push(("result", Value::str("ok")));
    dict(pairs)
}

fn flag(msg: &Value, name: &str) -> bool {
    msg.get("flags").map(|f| f.items().iter().any(|v| v.as_str() == Some(name))).unwrap_or(false)
}

fn list_contains(msg: &Value, key: &str, name: &str) -> bool {
    msg.get(key)
        .map(|f| f.items().iter().any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(name))))
        .unwrap_or(false)
}

/// SRTP auth keys from the first usable `a=crypto` line (SDES, RFC 4568).
fn sdes_auth(crypto: &[String]) -> Option<SrtpAuth> {
    for line in crypto {
        let mut it = line.split_whitespace();
        let (_tag, suite, params) = (it.next()?, it.next()?, it.next()?);
        let b64 = params.strip_prefix("inline:")?.split('|').next()?;
        let material = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let keys = derive_auth_keys(&SrtpMasterKey::from_concatenated(&material).ok()?);
        match suite {
            "AES_CM_128_HMAC_SHA1_80" | "AES_256_CM_HMAC_SHA1_80" => return Some(SrtpAuth::sha1_80(&keys)),
            "AES_CM_128_HMAC_SHA1_32" | "AES_256_CM_HMAC_SHA1_32" => return Some(SrtpAuth::sha1_32(&keys)),
            _ => continue,
        }
    }
    None
}

impl NgEngine {
    /// An engine driving `handle`.
    pub fn new(handle: RelayHandle, config: NgConfig) -> Arc<Self> {
        Arc::new(Self { handle, config, state: Mutex::new(State::default()) })
    }

    /// Handles one message (`cookie SP bencode`, or JSON) and returns the reply.
    pub async fn handle_message(&self, msg: &[u8]) -> Vec<u8> {
        let limits = &self.config.limits;
        let Some(space) = msg.iter().position(|b| *b == b' ') else {
            return [b"? ".as_slice(), &error("message must be: cookie, space, bencoded dictionary").encode()].concat();
        };
        let (cookie, body) = (&msg[..space], &msg[space + 1..]);
        if cookie.is_empty() || cookie.len() > limits.max_cookie_bytes {
            return [b"? ".as_slice(), &error("cookie must be 1 to max_cookie_bytes bytes").encode()].concat();
        }
        let now = Instant::now();
        if let Some(reply) = self.state.lock().await.cache.get(now, cookie) {
            return reply;
        }
        let json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let request = if msg.len() > limits.max_message_bytes {
            Err("message larger than max_message_bytes".to_string())
        } else if json {
            serde_json::from_slice::<serde_json::Value>(body)
                .map_err(|e| format!("malformed JSON: {e}"))
                .map(|j| from_json(&j))
        } else {
            bencode::decode(body).map_err(|e| format!("malformed bencode: {e}"))
        };
        let reply = match request {
            Ok(v @ Value::Dict(_)) => self.command(&v).await,
            Ok(_) => error("the message must be a dictionary"),
            Err(e) => error(e),
        };
        let encoded = if json { to_json(&reply).to_string().into_bytes() } else { reply.encode() };
        let out = [cookie, b" ", &encoded].concat();
        self.state.lock().await.cache.insert(now, cookie, &out, limits);
        out
    }

    /// Forgets calls with no live session for `orphan_call_ttl`: offers whose
    /// media are all disabled, calls whose sessions ended by their timers.
    /// Call it periodically (the `ucmrc` binary does, every few seconds).
    pub async fn sweep(&self) {
        let now = Instant::now();
        let ttl = self.config.limits.orphan_call_ttl;
        let calls: Vec<(Vec<u8>, Vec<SessionId>, Instant)> = {
            let st = self.state.lock().await;
            st.calls.iter().map(|(k, c)| (k.clone(), c.media.iter().map(|m| m.id).collect(), c.seen_alive)).collect()
        };
        for (call_id, ids, seen) in calls {
            let mut alive = false;
            for id in ids {
                if self.handle.session(id).await.is_ok() {
                    alive = true;
                    break;
                }
            }
            let mut st = self.state.lock().await;
            if alive {
                if let Some(c) = st.calls.get_mut(&call_id) {
                    c.seen_alive = now;
                }
            } else if now.saturating_duration_since(seen) >= ttl {
                // Only if nothing touched it meanwhile (a re-offer updates `seen_alive`).
                if st.calls.get(&call_id).is_some_and(|c| c.seen_alive == seen) {
                    st.calls.remove(&call_id);
                }
            }
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> &NgConfig {
        &self.config
    }

    /// Calls known now.
    pub async fn calls(&self) -> usize {
        self.state.lock().await.calls.len()
    }

    async fn command(&self, msg: &Value) -> Value {
        let Some(cmd) = msg.get("command").and_then(Value::as_str) else {
            return error("missing command");
        };
        match cmd {
            "ping" => dict([("result", Value::str("pong"))]),
            "offer" => self.offer_answer(msg, true).await,
            "answer" => self.offer_answer(msg, false).await,
            "delete" => self.delete(msg).await,
            "query" => self.query(msg).await,
            "list" => self.list(msg).await,
            "statistics" => self.statistics().await,
            other => error(format!("unknown command {other:?}")),
        }
    }

    async fn offer_answer(&self, msg: &Value, offer: bool) -> Value {
        let limits = &self.config.limits;
        let (Some(call_id), Some(sdp_text), Some(from_tag)) = (
            msg.get("call-id").and_then(Value::as_bytes),
            msg.get("sdp").and_then(Value::as_str),
            msg.get("from-tag").and_then(Value::as_str),
        ) else {
            return error("offer and answer need sdp, call-id and from-tag");
        };
        let to_tag = msg.get("to-tag").and_then(Value::as_str);
        if !offer && to_tag.is_none() {
            return error("answer needs to-tag");
        }
        if [call_id.len(), from_tag.len(), to_tag.map_or(0, str::len)].iter().any(|n| *n > limits.max_id_bytes) {
            return error("call-id, from-tag and to-tag must be at most max_id_bytes");
        }
        if sdp_text.len() > limits.max_sdp_bytes {
            return error("SDP larger than max_sdp_bytes");
        }
        let medias = match sdp::parse(sdp_text) {
            Ok(m) => m,
            Err(e) => return error(e.to_string()),
        };
        if medias.len() > limits.max_media_per_call {
            return error(format!("more than {} media sections (max_media_per_call)", limits.max_media_per_call));
        }
        let override_ip = msg.get("media-address").and_then(Value::as_str).and_then(|a| a.parse::<IpAddr>().ok());
        let received_from = msg
            .get("received-from")
            .map(|r| r.items())
            .and_then(|items| items.get(1).and_then(|v| v.as_str()).and_then(|a| a.parse::<IpAddr>().ok()));
        let ice = if list_contains(msg, "ICE", "remove") { IceRewrite::Remove } else { IceRewrite::RelayCandidates };
        let use_keys = self.config.authenticated_latching && !flag(msg, "no-authenticated-latching");
        let mut st = self.state.lock().await;
        let existing = st.calls.get(call_id).cloned();
        if !offer && existing.is_none() {
            return error("unknown call-id");
        }
        if existing.is_none() && st.calls.len() >= limits.max_calls {
            return error("too many calls (max_calls)");
        }
        let mut call = existing.unwrap_or(Call {
            from_tag: from_tag.into(),
            to_tag: None,
            created: unix_now(),
            media: Vec::new(),
            seen_alive: Instant::now(),
        });
        call.seen_alive = Instant::now();
        if let Some(t) = to_tag {
            call.to_tag = Some(t.into());
        }
        // Which party sent this SDP: an offer comes from the `from-tag`
        // party, an answer from the other one. The original caller's side is
        // the session's pbx leg.
        let sender_is_offerer = if offer { from_tag == call.from_tag } else { from_tag != call.from_tag };
        let (sender, other) = if sender_is_offerer { (0, 1) } else { (1, 0) };
        let mut ports = Vec::with_capacity(medias.len());
        for (k, m) in medias.iter().enumerate() {
            if m.port == 0 {
                ports.push(None);
                continue;
            }
            let ip = override_ip.or(m.addr).map(|ip| match (received_from, ip) {
                (Some(rf), ip) if is_private(ip) && !is_private(rf) => rf,
                _ => ip,
            });
            // c=0.0.0.0 (hold, RFC 2543) names no address: keep the last one.
            let hint = ip.filter(|ip| !ip.is_unspecified()).map(|ip| SocketAddr::new(ip, m.port));
            // Keys that prove the *sender's* packets: its SDES key, and its ICE
            // password, which signs the other side's connectivity checks.
            let keys = sdes_auth(&m.crypto);
            let ice_pwd = match ice {
                IceRewrite::RelayCandidates => m
                    .ice_pwd
                    .clone()
                    .filter(|p| !p.is_empty() && p.len() <= 256 && p.bytes().all(|b| b.is_ascii_graphic())),
                IceRewrite::Remove => None,
            };
            let sender_update = LegUpdate { hint, srtp_auth: keys.clone(), ..LegUpdate::default() };
            let other_update =
                LegUpdate { stun_password: ice_pwd.clone().map(String::into_bytes), ..LegUpdate::default() };
            let media = match call.media.get_mut(k) {
                Some(existing) => {
                    existing.keyed[sender] |= keys.is_some();
                    existing.keyed[other] |= ice_pwd.is_some();
                    let mut update = leg_updates(sender, sender_update, other_update);
                    if use_keys && existing.keyed == [true, true] {
                        update.latch = Some(LatchPolicy::Authenticated);
                    }
                    if let Err(e) = self.handle.update(existing.id, update).await {
                        return error(format!("media section {}: {e}", k + 1));
                    }
                    existing.clone()
                }
                None => {
                    let mux = m.rtcp_mux && !flag(msg, "rtcp-mux-demux");
                    let mut legs = [
                        LegSpec { rtcp_mux: mux, ..LegSpec::default() },
                        // The answerer's address is unknown until its SDP:
                        // its leg latches nothing before that.
                        LegSpec { rtcp_mux: mux, await_hint: true, ..LegSpec::default() },
                    ];
                    legs[sender].hint = hint;
                    legs[sender].srtp_auth = keys.clone();
                    legs[other].stun_password = ice_pwd.clone().map(String::into_bytes);
                    let [pbx, endpoint] = legs;
                    let spec = SessionSpec {
                        tenant: self.config.tenant.clone(),
                        pbx,
                        endpoint,
                        latch: Some(LatchPolicy::Window),
                        ..SessionSpec::default()
                    };
                    match self.handle.allocate(spec).await {
                        Ok(alloc) => {
                            let mut keyed = [false; 2];
                            keyed[sender] = keys.is_some();
                            keyed[other] = ice_pwd.is_some();
                            let media =
                                Media { id: alloc.id, alloc, kind: m.kind.clone(), proto: m.proto.clone(), mux, keyed };
                            call.media.push(media.clone());
                            media
                        }
                        Err(e) => {
                            if !st.calls.contains_key(call_id) {
                                for old in call.media.drain(..) {
                                    let _ = self.handle.release(old.id).await;
                                }
                            }
                            return error(format!("media section {}: allocation failed: {e}", k + 1));
                        }
                    }
                }
            };
            // The rewritten SDP goes to the *other* party: it must send to the
            // leg facing the SDP's sender's peer.
            let toward = if sender_is_offerer { media.alloc.endpoint } else { media.alloc.pbx };
            ports.push(Some(sdp::MediaPorts { rtp: toward.rtp.port(), rtcp: toward.rtcp.map(|a| a.port()) }));
        }
        let rewrite = sdp::Rewrite {
            addr: self.handle.advertised_ip(),
            media: ports,
            ice,
            replace_origin: list_contains(msg, "replace", "origin"),
            proto: msg.get("transport-protocol").and_then(Value::as_str).map(str::to_string),
        };
        let out = match sdp::rewrite(sdp_text, &rewrite) {
            Ok(s) => s,
            Err(e) => return error(e.to_string()),
        };
        if offer && !st.calls.contains_key(call_id) {
            st.calls_total += 1;
        }
        st.calls.insert(call_id.to_vec(), call);
        ok(vec![("sdp", Value::Bytes(out.into_bytes()))])
    }

    async fn delete(&self, msg: &Value) -> Value {
        let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) else {
            return error("delete needs call-id");
        };
        let delay = msg.get("delete delay").or_else(|| msg.get("delete-delay")).and_then(Value::as_int).unwrap_or(0);
        let mut st = self.state.lock().await;
        let Some(call) = st.calls.remove(call_id) else {
            // rtpengine's answer: a repeated or late delete (Kamailio's
            // rtpengine_delete() after a failed call, a retransmitted BYE) is
            // not a failure unless the caller asks with the `fatal` flag.
            const NOT_FOUND: &str = "Call-ID not found or tags didn't match";
            if list_contains(msg, "flags", "fatal") {
                return error(NOT_FOUND);
            }
            return ok(vec![("warning", Value::Bytes(NOT_FOUND.as_bytes().to_vec()))]);
        };
        drop(st);
        let stats = self.call_stats(&call).await;
        let ids: Vec<SessionId> = call.media.iter().map(|m| m.id).collect();
        let handle = self.handle.clone();
        if delay > 0 {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(delay.unsigned_abs().min(3600))).await;
                for id in ids {
                    let _ = handle.release(id).await;
                }
            });
        } else {
            for id in ids {
                let _ = handle.release(id).await;
            }
        }
        stats
    }

    async fn query(&self, msg: &Value) -> Value {
        let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) else {
            return error("query needs call-id");
        };
        let call = self.state.lock().await.calls.get(call_id).cloned();
        match call {
            Some(c) => self.call_stats(&c).await,
            None => error("unknown call-id"),
        }
    }

    /// rtpengine-shaped statistics of one call.
    async fn call_stats(&self, call: &Call) -> Value {
        let (mut rtp_p, mut rtp_b, mut errors) = (0u64, 0u64, 0u64);
        let mut offerer_medias = Vec::new();
        let mut answerer_medias = Vec::new();
        for (k, m) in call.media.iter().enumerate() {
            let Ok(info) = self.handle.session(m.id).await else { continue };
            for (leg, list) in [(&info.pbx, &mut offerer_medias), (&info.endpoint, &mut answerer_medias)] {
                rtp_p += leg.stats.packets_received;
                rtp_b += leg.stats.bytes_received;
                errors += leg.stats.drops.total();
                let endpoint = match leg.remote_rtp {
                    Some(a) => dict([
                        ("family", Value::str(if a.is_ipv4() { "IPv4" } else { "IPv6" })),
                        ("address", Value::Bytes(a.ip().to_string().into_bytes())),
                        ("port", Value::Int(i64::from(a.port()))),
                    ]),
                    None => dict([]),
                };
                let stream = dict([
                    ("local port", Value::Int(i64::from(leg.ports.rtp))),
                    ("endpoint", endpoint),
                    (
                        "stats",
                        dict([
                            ("packets", Value::Int(leg.stats.packets_received as i64)),
                            ("bytes", Value::Int(leg.stats.bytes_received as i64)),
                            ("errors", Value::Int(leg.stats.drops.total() as i64)),
                        ]),
                    ),
                ]);
                list.push(dict([
                    ("index", Value::Int(k as i64 + 1)),
                    ("type", Value::Bytes(m.kind.clone().into_bytes())),
                    ("protocol", Value::Bytes(m.proto.clone().into_bytes())),
                    ("rtcp-mux", Value::str(if m.mux { "yes" } else { "no" })),
                    ("streams", Value::List(vec![stream])),
                ]));
            }
        }
        let mut tags = vec![(
            call.from_tag.clone(),
            dict([("tag", Value::Bytes(call.from_tag.clone().into_bytes())), ("medias", Value::List(offerer_medias))]),
        )];
        if let Some(t) = &call.to_tag {
            tags.push((
                t.clone(),
                dict([("tag", Value::Bytes(t.clone().into_bytes())), ("medias", Value::List(answerer_medias))]),
            ));
        }
        let tags = Value::Dict(tags.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect());
        ok(vec![
            ("created", Value::Int(call.created as i64)),
            (
                "totals",
                dict([(
                    "RTP",
                    dict([
                        ("packets", Value::Int(rtp_p as i64)),
                        ("bytes", Value::Int(rtp_b as i64)),
                        ("errors", Value::Int(errors as i64)),
                    ]),
                )]),
            ),
            ("tags", tags),
        ])
    }

    async fn list(&self, msg: &Value) -> Value {
        let limit = msg.get("limit").and_then(Value::as_int).unwrap_or(32).clamp(1, 10_000) as usize;
        let st = self.state.lock().await;
        let calls: Vec<Value> = st.calls.keys().take(limit).map(|k| Value::Bytes(k.clone())).collect();
        ok(vec![("calls", Value::List(calls))])
    }

    async fn statistics(&self) -> Value {
        let (own, total) = {
            let st = self.state.lock().await;
            (st.calls.len(), st.calls_total)
        };
        let counters = self.handle.counters().await.map(|c| c.total).unwrap_or_default();
        ok(vec![(
            "statistics",
            dict([
                (
                    "currentstatistics",
                    dict([
                        ("sessionsown", Value::Int(own as i64)),
                        ("sessionsforeign", Value::Int(0)),
                        ("sessionstotal", Value::Int(own as i64)),
                        ("transcodedmedia", Value::Int(0)),
                    ]),
                ),
                (
                    "totalstatistics",
                    dict([
                        ("managedsessions", Value::Int(total as i64)),
                        ("packetsrelayed", Value::Int(counters.packets_forwarded as i64)),
                        ("bytesrelayed", Value::Int(counters.bytes_forwarded as i64)),
                        ("packetsdropped", Value::Int(counters.drops.total() as i64)),
                    ]),
                ),
            ]),
        )])
    }
}

/// A JSON request as the equivalent bencode value (numbers become integers,
/// booleans `yes`/`no`, null an empty string).
fn from_json(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::str(""),
        J::Bool(b) => Value::str(if *b { "yes" } else { "no" }),
        J::Number(n) => n.as_i64().map(Value::Int).unwrap_or_else(|| Value::Bytes(n.to_string().into_bytes())),
        J::String(s) => Value::Bytes(s.clone().into_bytes()),
        J::Array(a) => Value::List(a.iter().map(from_json).collect()),
        J::Object(o) => Value::Dict(o.iter().map(|(k, v)| (k.clone().into_bytes(), from_json(v))).collect()),
    }
}

/// A reply for a JSON request.
fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Int(i) => J::from(*i),
        Value::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Value::List(l) => J::Array(l.iter().map(to_json).collect()),
        Value::Dict(d) => {
            J::Object(d.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), to_json(v))).collect())
        }
    }
}

/// An update of the leg facing the SDP's sender (index `sender`: 0 the pbx
/// leg, the original caller's; 1 the endpoint leg) and of the other leg.
fn leg_updates(sender: usize, sender_leg: LegUpdate, other_leg: LegUpdate) -> SessionUpdate {
    if sender == 0 {
        SessionUpdate { pbx: sender_leg, endpoint: other_leg, ..SessionUpdate::default() }
    } else {
        SessionUpdate { pbx: other_leg, endpoint: sender_leg, ..SessionUpdate::default() }
    }
}

fn is_private(ip: IpAddr) -> bool {
    matches!(crate::peer::classify(ip), crate::peer::AddressClass::Private)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
