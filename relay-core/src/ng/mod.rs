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
pub mod commands;
mod delayed;
mod offer_answer;
pub mod option_table;
pub(crate) mod options;
mod plan;
mod quality;
#[doc(hidden)] // SDP rewriting internals, for the fuzz targets
pub mod sdp;
pub(crate) mod state;
pub mod stats;

// A call's resumable state, for redundancy (relay-cluster replicates it).
pub use state::{decode_call_id, encode_call_id, CallChanges, CallState, MediaState};

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bencode::{dict, Value};
use tokio::sync::Mutex;

use crate::relay::{AllocatedSession, RelayHandle};
use crate::session::spec::SessionUpdate;
use crate::session::SessionId;
use commands::Handler;
use stats::NgStats;

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
    /// How long `delete` keeps a call's media flowing when the request
    /// gives no `delete-delay` (rtpengine's `delete-delay`; 0 = at once).
    pub delete_delay: Duration,
    /// Log call-ids hashed (they often carry a host address).
    pub redact_call_ids: bool,
    /// Remember which calls commands touched, for replication
    /// ([`NgEngine::call_changes`]); off: nothing is recorded.
    pub journal: bool,
}

/// Longest `delete-delay` honoured.
pub const MAX_DELETE_DELAY: Duration = Duration::from_secs(3600);

impl Default for NgConfig {
    fn default() -> Self {
        Self {
            tenant: "ng".into(),
            limits: NgLimits::default(),
            authenticated_latching: true,
            delete_delay: Duration::ZERO,
            redact_call_ids: false,
            journal: false,
        }
    }
}

/// rtcp-mux negotiation of one media section's current offer/answer.
#[derive(Debug, Clone, Copy, Default)]
struct MuxNegotiation {
    /// The offerer put `a=rtcp-mux` in its offer.
    offered_by_sender: bool,
    /// The relay offered rtcp-mux to the answerer.
    offered_on: bool,
    /// Only rtcp-mux was offered on (no RTCP fallback port).
    require: bool,
    /// What to answer the offerer regardless of the answerer (`accept`,
    /// `demux`: yes; `reject`: no); `None` follows the answerer.
    forced: Option<bool>,
}

#[derive(Debug, Clone)]
struct Media {
    id: SessionId,
    alloc: AllocatedSession,
    /// Its SDP media section (0-based; disabled sections have no entry).
    section: usize,
    kind: String,
    proto: String,
    /// Whether each leg's remote (pbx, endpoint) multiplexes RTCP.
    remote_mux: [bool; 2],
    mux: MuxNegotiation,
    /// Whether each leg (pbx, endpoint) has a key that can prove its source.
    keyed: [bool; 2],
    /// Whether media from each leg's remote is blocked.
    blocked: [bool; 2],
}

#[derive(Debug, Clone)]
struct Call {
    from_tag: String,
    to_tag: Option<String>,
    created: u64,
    media: Vec<Media>,
    /// `label` given by each party (by tag).
    labels: Vec<(String, String)>,
    /// When the call last had a live session (or was created).
    seen_alive: Instant,
}

impl Call {
    /// The leg facing the party with `tag` (0: pbx, the original caller's).
    fn leg_of(&self, tag: &str) -> Option<usize> {
        if tag == self.from_tag {
            Some(0)
        } else if self.to_tag.as_deref() == Some(tag) {
            Some(1)
        } else {
            None
        }
    }
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

/// One call's slot: locked for the whole of a command on that call (so
/// commands on one call run in order) while commands on other calls run
/// at the same time. `None` while an offer creates it.
type CallSlot = Arc<Mutex<Option<Call>>>;

/// The calls by call-id; the map's own lock is held only to look up,
/// insert or remove a slot, never across an await.
#[derive(Default)]
struct CallTable {
    calls: HashMap<Vec<u8>, CallSlot>,
    total: u64,
}

impl CallTable {
    /// Removes `call_id` if it still maps to `slot`.
    fn remove_if(&mut self, call_id: &[u8], slot: &CallSlot) {
        if self.calls.get(call_id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            self.calls.remove(call_id);
        }
    }
}

/// The ng protocol engine.
pub struct NgEngine {
    handle: RelayHandle,
    config: NgConfig,
    table: std::sync::Mutex<CallTable>,
    cache: std::sync::Mutex<ReplyCache>,
    stats: NgStats,
    started: Instant,
    /// Call-ids touched since the last [`NgEngine::call_changes`] (with
    /// [`NgConfig::journal`]); bounded by the call table's size plus
    /// `max_calls` ended ones.
    journal: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Whether an unknown `direction` was warned about already.
    warned_unknown_direction: std::sync::atomic::AtomicBool,
    /// Sessions of deleted calls waiting for their `delete-delay`.
    delayed: std::sync::Mutex<delayed::DelayedReleases>,
    /// Woken when a delayed release is added.
    timers_changed: tokio::sync::Notify,
}

impl std::fmt::Debug for NgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgEngine").field("config", &self.config).finish_non_exhaustive()
    }
}

fn error(reason: impl Into<String>) -> Value {
    dict([("result", Value::str("error")), ("error-reason", Value::Bytes(reason.into().into_bytes()))])
}

/// rtpengine's answer when it holds its maximum of calls. Kamailio's and
/// OpenSIPS' rtpengine modules recognise this exact text and try the next
/// relay of the set.
pub const SESSION_LIMIT: &str = "Parallel session limit reached";

/// rtpengine's answer when no ports are free (recognised like
/// [`SESSION_LIMIT`] by the newer modules).
pub const OUT_OF_PORTS: &str = "Ran out of ports";

/// rtpengine's words for the refusals both relays make, so proxies' logs
/// and operators' alerts read the same. Where UCMRC knows more, its detail
/// follows the words after `": "`.
pub mod words {
    /// An offer or answer without `sdp`.
    pub const NO_SDP_BODY: &str = "No SDP body in message";
    /// A command about a call without `call-id`.
    pub const NO_CALL_ID: &str = "No call-id in message";
    /// An offer or answer without `from-tag`.
    pub const NO_FROM_TAG: &str = "No from-tag in message";
    /// An answer without `to-tag`.
    pub const NO_TO_TAG: &str = "No to-tag in message";
    /// `answer` or `query` for a call the relay does not have.
    pub const UNKNOWN_CALL_ID: &str = "Unknown call-id";
    /// `block media` / `unblock media` for a call the relay does not have
    /// (rtpengine spells it so there).
    pub const UNKNOWN_CALL_ID_BLOCK: &str = "Unknown call-ID";
    /// `block media` naming a tag the call does not have.
    pub const UNKNOWN_FROM_TAG: &str = "From-tag given, but no such tag exists";
    /// An SDP the relay cannot read (UCMRC adds the line and reason).
    pub const SDP_UNPARSABLE: &str = "Failed to parse SDP";
    /// A command neither relay knows.
    pub const UNRECOGNIZED_COMMAND: &str = "Unrecognized command";
    /// A `delete` (with `fatal`) for a call or tags the relay does not have.
    pub const NOT_FOUND: &str = "Call-ID not found or tags didn't match";
}

/// A capacity refusal: rtpengine's exact text (what a proxy's failover
/// matches) and UCMRC's typed code beside it (`error-code`).
fn capacity_error(reason: &'static str, code: crate::codes::ErrorCode) -> Value {
    dict([
        ("result", Value::str("error")),
        ("error-reason", Value::str(reason)),
        ("error-code", Value::str(code.as_str())),
    ])
}

/// An allocation's failure as the ng reply: capacity in rtpengine's words,
/// anything else with its media section named.
fn allocation_error(section: usize, e: &crate::relay::RelayError) -> Value {
    use crate::quota::QuotaKind;
    use crate::relay::RelayError;
    match e {
        RelayError::QuotaExceeded(q) if q.kind == QuotaKind::Sessions => capacity_error(SESSION_LIMIT, e.code()),
        RelayError::QuotaExceeded(_) | RelayError::PortsExhausted => capacity_error(OUT_OF_PORTS, e.code()),
        _ => error(format!("media section {section}: allocation failed: {e}")),
    }
}

fn ok(mut pairs: Vec<(&str, Value)>) -> Value {
    pairs.push(("result", Value::str("ok")));
    dict(pairs)
}

fn list_contains(msg: &Value, key: &str, name: &str) -> bool {
    msg.get(key)
        .map(|f| f.items().iter().any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(name))))
        .unwrap_or(false)
}

impl NgEngine {
    /// An engine driving `handle`.
    pub fn new(handle: RelayHandle, config: NgConfig) -> Arc<Self> {
        Arc::new(Self {
            handle,
            config,
            table: std::sync::Mutex::new(CallTable::default()),
            cache: std::sync::Mutex::new(ReplyCache::default()),
            stats: NgStats::default(),
            started: Instant::now(),
            journal: std::sync::Mutex::new(std::collections::HashSet::new()),
            warned_unknown_direction: std::sync::atomic::AtomicBool::new(false),
            delayed: std::sync::Mutex::new(delayed::DelayedReleases::default()),
            timers_changed: tokio::sync::Notify::new(),
        })
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
        if let Some(reply) = self.lock_cache().get(now, cookie) {
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
        self.lock_cache().insert(now, cookie, &out, limits);
        out
    }

    /// Forgets calls with no live session for `orphan_call_ttl`: offers whose
    /// media are all disabled, calls whose sessions ended by their timers.
    /// Call it periodically (the `ucmrc` binary does, every few seconds).
    pub async fn sweep(&self) {
        let now = Instant::now();
        let ttl = self.config.limits.orphan_call_ttl;
        let slots: Vec<(Vec<u8>, CallSlot)> =
            self.lock_table().calls.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        for (call_id, slot) in slots {
            // A call busy with a command is alive enough: next sweep.
            let Ok(mut guard) = slot.try_lock() else { continue };
            let Some(call) = guard.as_mut() else { continue };
            let mut alive = false;
            for m in &call.media {
                if self.handle.session(m.id).await.is_ok() {
                    alive = true;
                    break;
                }
            }
            if alive {
                call.seen_alive = now;
            } else if now.saturating_duration_since(call.seen_alive) >= ttl {
                *guard = None;
                self.lock_table().remove_if(&call_id, &slot);
                self.touch(&call_id);
            }
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> &NgConfig {
        &self.config
    }

    /// Calls known now.
    pub async fn calls(&self) -> usize {
        self.lock_table().calls.len()
    }

    /// Records that a command touched `call_id` (with the journal on).
    fn touch(&self, call_id: &[u8]) {
        if !self.config.journal {
            return;
        }
        let mut j = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: past twice the call limit the puller gets everything
        // through its periodic full export anyway; keep the newest.
        if j.len() < self.config.limits.max_calls.saturating_mul(2) {
            j.insert(call_id.to_vec());
        }
    }

    /// The calls commands touched since the last call, as they are now
    /// (ended ones by call-id). Needs [`NgConfig::journal`].
    pub async fn call_changes(&self) -> state::CallChanges {
        let touched: Vec<Vec<u8>> =
            std::mem::take(&mut *self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
                .into_iter()
                .collect();
        let mut out = state::CallChanges::default();
        for call_id in touched {
            let slot = self.lock_table().calls.get(&call_id).cloned();
            let current = match slot {
                Some(slot) => slot.lock().await.as_ref().map(|c| c.export(&call_id)),
                None => None,
            };
            match current {
                Some(c) => out.changed.push(c),
                None => out.ended.push(state::encode_call_id(&call_id)),
            }
        }
        out
    }

    /// Every call's state.
    pub async fn export_calls(&self) -> Vec<state::CallState> {
        let slots: Vec<(Vec<u8>, CallSlot)> =
            self.lock_table().calls.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let mut out = Vec::with_capacity(slots.len());
        for (call_id, slot) in slots {
            if let Some(c) = slot.lock().await.as_ref() {
                out.push(c.export(&call_id));
            }
        }
        out
    }

    /// Takes calls over from their states (a standby becoming active after
    /// their sessions were restored). Calls already known are replaced;
    /// returns how many were taken. A state is input from a shared store:
    /// one whose call-id or session ids do not parse, or that names a
    /// session that is not live here with this engine's tenant (a call
    /// must never reach another tenant's media), is skipped and logged;
    /// the table's limit holds.
    pub async fn restore_calls(&self, calls: Vec<state::CallState>) -> usize {
        let now = Instant::now();
        let mut n = 0;
        for s in calls {
            let (Some(call_id), Some(call)) = (state::decode_call_id(&s.call_id), Call::restore(&s, now)) else {
                tracing::warn!("ng call not taken over: its call-id or a session id does not parse");
                continue;
            };
            let mut ours = true;
            for m in &call.media {
                ours &= self.handle.session(m.id).await.is_ok_and(|info| info.tenant == self.config.tenant);
            }
            if !ours {
                tracing::warn!(
                    call_id = %self.loggable_call_id(&call_id),
                    "ng call not taken over: it names a session that is not this engine's"
                );
                continue;
            }
            let mut table = self.lock_table();
            if !table.calls.contains_key(&call_id) && table.calls.len() >= self.config.limits.max_calls {
                continue;
            }
            table.calls.insert(call_id, Arc::new(Mutex::new(Some(call))));
            n += 1;
        }
        n
    }

    /// Forgets every call without touching their sessions (a node that lost
    /// the lease: the new active serves them).
    pub fn forget_calls(&self) {
        self.lock_table().calls.clear();
        self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, CallTable> {
        // A panic while holding it cannot leave the map half-changed.
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ReplyCache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot of `call_id`, locked; `None` if there is no such call.
    async fn lock_call(&self, call_id: &[u8]) -> Option<(CallSlot, tokio::sync::OwnedMutexGuard<Option<Call>>)> {
        let slot = self.lock_table().calls.get(call_id).cloned()?;
        let guard = slot.clone().lock_owned().await;
        guard.is_some().then_some((slot, guard))
    }

    /// Command counters and latency (for `statistics` and metrics).
    pub fn stats(&self) -> &NgStats {
        &self.stats
    }

    async fn command(&self, msg: &Value) -> Value {
        let started = Instant::now();
        let cmd = msg.get("command").and_then(Value::as_str).unwrap_or("");
        let command = commands::lookup(cmd);
        let reply = match command.map(|c| c.handler) {
            _ if cmd.is_empty() => error("missing command"),
            Some(Handler::Ping) => dict([("result", Value::str("pong"))]),
            Some(Handler::Offer) => self.offer_answer_committed(msg, true).await,
            Some(Handler::Answer) => self.offer_answer_committed(msg, false).await,
            Some(Handler::Delete) => self.delete(msg).await,
            Some(Handler::Query) => self.query(msg).await,
            Some(Handler::List) => self.list(msg).await,
            Some(Handler::Statistics) => self.statistics().await,
            Some(Handler::BlockMedia) => self.block(msg, true).await,
            Some(Handler::UnblockMedia) => self.block(msg, false).await,
            Some(Handler::Refused(why)) => error(format!("{cmd} is not supported: {why}")),
            None => error(format!("{}: {cmd:?}", words::UNRECOGNIZED_COMMAND)),
        };
        if command.is_some_and(|c| c.mutating) {
            if let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) {
                self.touch(call_id);
            }
        }
        if command.is_some_and(|c| c.mutating) {
            self.note_unknown_options(cmd, msg);
        }
        let ok = reply.get("result").and_then(Value::as_str) != Some("error");
        self.stats.record(commands::kind(cmd), ok, started.elapsed());
        if cmd == "offer" && !ok {
            self.stats.rejected_offers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let call_id = msg.get("call-id").and_then(Value::as_bytes).map(|c| self.loggable_call_id(c));
            let reason = reply.get("error-reason").or_else(|| reply.get("warning")).and_then(Value::as_str);
            let from_tag = msg.get("from-tag").and_then(Value::as_str);
            tracing::debug!(
                command = cmd,
                call_id = call_id.as_deref().unwrap_or("-"),
                from_tag = from_tag.unwrap_or("-"),
                result = if ok { "ok" } else { "error" },
                reason = reason.unwrap_or(""),
                micros = started.elapsed().as_micros() as u64,
                "ng command"
            );
        }
        reply
    }

    /// rtpengine's `direction`: the interfaces of the sender and of the
    /// recipient. A name this relay has no interface for means its first
    /// (default) interface, as with rtpengine: warned about once, counted
    /// each time.
    fn directions(&self, names: &[String]) -> [u8; 2] {
        let mut interfaces = [0u8; 2];
        for (i, name) in names.iter().take(2).enumerate() {
            match self.handle.interface(name) {
                Some(n) => interfaces[i] = n,
                None => {
                    self.stats.unknown_directions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !self.warned_unknown_direction.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            direction = %name.chars().take(64).collect::<String>(),
                            interfaces = %self.handle.interface_names().join(", "),
                            "ng: direction names no interface of this relay; using the default interface (warned once, counted in ucmrc_ng_unknown_directions_total)"
                        );
                    }
                }
            }
        }
        interfaces
    }

    /// Counts the keys and flags of `msg` that no option of the table uses
    /// (they have no effect) and names them at debug level (names only,
    /// never values).
    fn note_unknown_options(&self, cmd: &str, msg: &Value) {
        let unknown = option_table::unknown_options(msg);
        if unknown.is_empty() {
            return;
        }
        self.stats.unknown_options.fetch_add(unknown.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let names: Vec<String> = unknown.iter().take(16).map(|n| n.chars().take(64).collect()).collect();
            tracing::debug!(command = cmd, unknown = ?names, "ng: options no table row knows, without effect");
        }
    }

    /// A call-id for logs: as is, or a short hash when redacted.
    fn loggable_call_id(&self, call_id: &[u8]) -> String {
        if self.config.redact_call_ids {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            call_id.hash(&mut h);
            format!("#{:016x}", h.finish())
        } else {
            String::from_utf8_lossy(call_id).chars().take(64).collect()
        }
    }

    /// An offer or answer acknowledged only once its sessions and the call
    /// are durable ([`RelayHandle::commit`]: a cluster node's store has
    /// them); a call the offer created and that cannot be made durable is
    /// taken back.
    async fn offer_answer_committed(&self, msg: &Value, offer: bool) -> Value {
        let mut created = false;
        let reply = self.offer_answer(msg, offer, &mut created).await;
        if reply.get("result").and_then(Value::as_str) == Some("error") {
            return reply;
        }
        let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) else { return reply };
        // The call's changes are pulled under its lock: commit after it is
        // released, once the journal names the call.
        self.touch(call_id);
        match self.handle.commit().await {
            Ok(()) => reply,
            Err(e) => {
                if created {
                    self.take_back(call_id).await;
                }
                error(e.to_string())
            }
        }
    }

    /// Removes a call this engine created but could not make durable, with
    /// its sessions.
    async fn take_back(&self, call_id: &[u8]) {
        let Some((slot, mut guard)) = self.lock_call(call_id).await else { return };
        let call = guard.take();
        self.lock_table().remove_if(call_id, &slot);
        drop(guard);
        for m in call.into_iter().flat_map(|c| c.media) {
            let _ = self.handle.discard(m.id).await;
        }
        self.touch(call_id);
    }

    /// `delete`: the whole call, or — with a `from-tag` (and `to-tag`) that
    /// does not match this call's dialog — nothing, like rtpengine (a
    /// delete for another branch must not end this one).
    async fn delete(&self, msg: &Value) -> Value {
        use words::NOT_FOUND;
        let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) else {
            return error(words::NO_CALL_ID);
        };
        let delay = match msg.get("delete-delay").or_else(|| msg.get("delete delay")).and_then(Value::as_int) {
            Some(secs) => Duration::from_secs(secs.max(0).unsigned_abs()),
            None => self.config.delete_delay,
        }
        .min(MAX_DELETE_DELAY);
        let from_tag = msg.get("from-tag").and_then(Value::as_str);
        let to_tag = msg.get("to-tag").and_then(Value::as_str);
        let mut found = self.lock_call(call_id).await;
        let matches = found.as_ref().and_then(|(_, g)| g.as_ref()).is_some_and(|c| {
            from_tag.is_none_or(|t| c.leg_of(t).is_some())
                && to_tag.is_none_or(|t| c.to_tag.is_none() || c.leg_of(t).is_some())
        });
        let call = match found.as_mut() {
            Some((slot, guard)) if matches => {
                let call = guard.take();
                self.lock_table().remove_if(call_id, slot);
                call
            }
            _ => None,
        };
        drop(found);
        let Some(call) = call else {
            // rtpengine's answer: a repeated or late delete (Kamailio's
            // rtpengine_delete() after a failed call, a retransmitted BYE) is
            // not a failure unless the caller asks with the `fatal` flag.
            if list_contains(msg, "flags", "fatal") {
                return error(NOT_FOUND);
            }
            return ok(vec![("warning", Value::str(NOT_FOUND))]);
        };
        self.stats.deleted_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stats = self.call_stats(&call).await;
        let ids: Vec<SessionId> = call.media.iter().map(|m| m.id).collect();
        let now_ids = if delay.is_zero() {
            ids
        } else {
            // Bounded like the call table: beyond it, released at once.
            let cap = self.config.limits.max_calls.saturating_mul(self.config.limits.max_media_per_call);
            let at = crate::session::instant_after(Instant::now(), delay);
            let now_ids = self.lock_delayed().handle_delete(at, ids, cap);
            self.timers_changed.notify_one();
            now_ids
        };
        for id in now_ids {
            let _ = self.handle.release(id).await;
        }
        stats
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next: the
    /// first delayed release (`delete-delay`). The driver sleeps until then
    /// or until [`timers_changed`](Self::timers_changed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lock_delayed().poll_timeout()
    }

    /// Releases the sessions of deleted calls whose `delete-delay` is over
    /// at `now`.
    pub async fn handle_timeout(&self, now: Instant) {
        let due = self.lock_delayed().take_due(now);
        for id in due {
            let _ = self.handle.release(id).await;
        }
    }

    /// Resolves when a delete added a delayed release (the driver's sleep
    /// may need to end sooner).
    pub async fn timers_changed(&self) {
        self.timers_changed.notified().await;
    }

    fn lock_delayed(&self) -> std::sync::MutexGuard<'_, delayed::DelayedReleases> {
        self.delayed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `block media` / `unblock media`: drop (or forward again) what one
    /// party sends (`from-tag`), or everyone (no tag, or the `all` flag).
    /// Nothing is decrypted: blocked packets are dropped and counted.
    async fn block(&self, msg: &Value, blocked: bool) -> Value {
        let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) else {
            return error(words::NO_CALL_ID);
        };
        let Some((_slot, mut guard)) = self.lock_call(call_id).await else {
            return error(words::UNKNOWN_CALL_ID_BLOCK);
        };
        let Some(call) = guard.as_mut() else {
            return error(words::UNKNOWN_CALL_ID_BLOCK);
        };
        let legs: Vec<usize> = match msg.get("from-tag").and_then(Value::as_str) {
            Some(_) if list_contains(msg, "flags", "all") => vec![0, 1],
            Some(tag) => match call.leg_of(tag) {
                Some(l) => vec![l],
                None => return error(words::UNKNOWN_FROM_TAG),
            },
            None => vec![0, 1],
        };
        for media in &mut call.media {
            let mut update = SessionUpdate::default();
            for &l in &legs {
                media.blocked[l] = blocked;
                let leg = if l == 0 { &mut update.pbx } else { &mut update.endpoint };
                leg.blocked = Some(blocked);
            }
            if let Err(e) = self.handle.update(media.id, update).await {
                return error(e.to_string());
            }
        }
        ok(vec![])
    }

    async fn query(&self, msg: &Value) -> Value {
        let Some(call_id) = msg.get("call-id").and_then(Value::as_bytes) else {
            return error(words::NO_CALL_ID);
        };
        let call = match self.lock_call(call_id).await {
            Some((_, guard)) => guard.clone(),
            None => None,
        };
        match call {
            Some(c) => self.call_stats(&c).await,
            None => error(words::UNKNOWN_CALL_ID),
        }
    }

    /// rtpengine-shaped statistics of one call: per tag, per media, one
    /// stream for RTP and one for RTCP.
    async fn call_stats(&self, call: &Call) -> Value {
        let view = StatsView { advertised: self.handle.advertised_ip(), now_unix: unix_now() };
        let mut totals = Totals::default();
        let mut per_tag: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
        let mut ssrcs = quality::SsrcTable::default();
        for m in &call.media {
            let Ok(info) = self.handle.session(m.id).await else { continue };
            for (i, leg) in [&info.pbx, &info.endpoint].into_iter().enumerate() {
                totals.add(&leg.stats);
                ssrcs.add(leg);
                per_tag[i].push(view.media_entry(m.section, m, leg));
            }
        }
        let [offerer, answerer] = per_tag;
        let tag_entry = |tag: &str, medias: Vec<Value>| {
            let mut pairs = vec![("tag", Value::Bytes(tag.as_bytes().to_vec())), ("medias", Value::List(medias))];
            if let Some((_, l)) = call.labels.iter().find(|(t, _)| t == tag) {
                pairs.push(("label", Value::Bytes(l.clone().into_bytes())));
            }
            (tag.as_bytes().to_vec(), dict(pairs))
        };
        let mut tags = vec![tag_entry(&call.from_tag, offerer)];
        if let Some(t) = &call.to_tag {
            tags.push(tag_entry(t, answerer));
        }
        ok(vec![
            ("created", Value::Int(call.created as i64)),
            ("last signal", Value::Int(call.created as i64)),
            ("SSRC", ssrcs.value(view.now_unix)),
            ("totals", totals.value()),
            ("tags", Value::Dict(tags.into_iter().collect())),
        ])
    }

    async fn list(&self, msg: &Value) -> Value {
        let limit = msg.get("limit").and_then(Value::as_int).unwrap_or(32).clamp(1, 10_000) as usize;
        let calls: Vec<Value> = self.lock_table().calls.keys().take(limit).map(|k| Value::Bytes(k.clone())).collect();
        ok(vec![("calls", Value::List(calls))])
    }

    /// rtpengine's `statistics`: current and total figures, control
    /// statistics per command, and UCMRC's drops by reason.
    async fn statistics(&self) -> Value {
        let (own, total) = {
            let table = self.lock_table();
            (table.calls.len(), table.total)
        };
        let c = self.handle.counters().await.map(|c| c.total).unwrap_or_default();
        let s = self.stats.snapshot();
        let int = |n: u64| Value::Int(n.min(i64::MAX as u64) as i64);
        let drops: Vec<(&str, Value)> = c.drops.iter().map(|(r, n)| (r.as_str(), int(n))).collect();
        let mut control: Vec<(String, Value)> = (0..commands::KINDS)
            .map(|k| (format!("total{}count", commands::kind_label(k).replace(' ', "")), int(s.count(k))))
            .collect();
        control.push(("errorcount".into(), int(s.errors())));
        let control = Value::Dict(control.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect());
        let avg_micros = if s.total > 0 { (s.sum_seconds * 1e6 / s.total as f64) as u64 } else { 0 };
        ok(vec![(
            "statistics",
            dict([
                (
                    "currentstatistics",
                    dict([
                        ("sessionsown", int(own as u64)),
                        ("sessionsforeign", Value::Int(0)),
                        ("sessionstotal", int(own as u64)),
                        ("transcodedmedia", Value::Int(0)),
                        ("mediasessions", int(c.sessions_active)),
                        ("portsinuse", int(c.ports_in_use)),
                        ("portsfree", int(c.ports_total.saturating_sub(c.ports_in_use))),
                    ]),
                ),
                (
                    "totalstatistics",
                    dict([
                        ("uptime", int(self.started.elapsed().as_secs())),
                        ("managedsessions", int(total)),
                        ("rejectedsessions", int(s.rejected_offers)),
                        ("timeoutsessions", int(c.sessions_expired_idle)),
                        ("finaltimeoutsessions", int(c.sessions_expired_max_duration)),
                        ("regularterminatedsessions", int(s.deleted_calls)),
                        ("forcedterminatedsessions", Value::Int(0)),
                        ("relayedpackets", int(c.packets_forwarded)),
                        ("relayedbytes", int(c.bytes_forwarded)),
                        ("relayedpacketerrors", int(c.drops.total())),
                        ("packetsreceived", int(c.packets_received)),
                        ("bytesreceived", int(c.bytes_received)),
                        ("latches", int(c.latches)),
                        ("relatches", int(c.relatches)),
                        ("allocationsrefused", int(c.allocations_refused)),
                        ("senderrors", int(c.send_errors)),
                        ("droppedbyreason", dict(drops)),
                        // Kept for clients of the previous names.
                        ("packetsrelayed", int(c.packets_forwarded)),
                        ("bytesrelayed", int(c.bytes_forwarded)),
                        ("packetsdropped", int(c.drops.total())),
                    ]),
                ),
                (
                    "controlstatistics",
                    dict([
                        ("proxies", Value::List(Vec::new())),
                        ("totalcommands", int(s.total)),
                        ("averagecommandmicros", int(avg_micros)),
                        ("commands", control),
                    ]),
                ),
            ]),
        )])
    }
}

fn endpoint_value(addr: Option<SocketAddr>) -> Value {
    match addr {
        Some(a) => dict([
            ("family", Value::str(if a.is_ipv4() { "IPv4" } else { "IPv6" })),
            ("address", Value::Bytes(a.ip().to_string().into_bytes())),
            ("port", Value::Int(i64::from(a.port()))),
        ]),
        None => dict([]),
    }
}

/// A call's packets, bytes and errors over every leg (rtpengine's `totals`).
#[derive(Default)]
struct Totals {
    rtp_packets: u64,
    rtp_bytes: u64,
    rtcp_packets: u64,
    rtcp_bytes: u64,
    errors: u64,
}

impl Totals {
    fn add(&mut self, s: &crate::session::stats::LegStats) {
        self.rtp_packets += s.packets_received - s.rtcp_packets_received;
        self.rtp_bytes += s.bytes_received - s.rtcp_bytes_received;
        self.rtcp_packets += s.rtcp_packets_received;
        self.rtcp_bytes += s.rtcp_bytes_received;
        self.errors += s.drops.total();
    }

    fn value(&self) -> Value {
        let totals = |p: u64, b: u64, e: u64| {
            dict([("packets", Value::Int(p as i64)), ("bytes", Value::Int(b as i64)), ("errors", Value::Int(e as i64))])
        };
        dict([
            ("RTP", totals(self.rtp_packets, self.rtp_bytes, self.errors)),
            ("RTCP", totals(self.rtcp_packets, self.rtcp_bytes, 0)),
        ])
    }
}

/// What `query` and `delete` report of one leg: its media entry with an
/// RTP and an RTCP stream, as rtpengine shapes them.
struct StatsView {
    advertised: IpAddr,
    now_unix: u64,
}

impl StatsView {
    /// Media section `k` as leg `leg` sees it.
    fn media_entry(&self, k: usize, m: &Media, leg: &crate::session::LegInfo) -> Value {
        let s = &leg.stats;
        let rtcp_remote = if leg.remote_rtcp_mux { leg.remote_rtp } else { leg.remote_rtcp };
        let rtcp_port = if leg.remote_rtcp_mux { leg.ports.rtp } else { leg.ports.rtcp.unwrap_or(leg.ports.rtp) };
        let rtp = Stream {
            port: leg.ports.rtp,
            remote: leg.remote_rtp,
            packets: s.packets_received - s.rtcp_packets_received,
            bytes: s.bytes_received - s.rtcp_bytes_received,
            last_ago: leg.last_rtp_ago,
            rtcp: false,
        };
        let rtcp = Stream {
            port: rtcp_port,
            remote: rtcp_remote,
            packets: s.rtcp_packets_received,
            bytes: s.rtcp_bytes_received,
            last_ago: leg.last_rtcp_ago,
            rtcp: true,
        };
        dict([
            ("index", Value::Int(k as i64 + 1)),
            ("type", Value::Bytes(m.kind.clone().into_bytes())),
            ("protocol", Value::Bytes(m.proto.clone().into_bytes())),
            ("rtcp-mux", Value::str(if leg.remote_rtcp_mux { "yes" } else { "no" })),
            ("streams", Value::List(vec![self.stream_entry(leg, &rtp), self.stream_entry(leg, &rtcp)])),
        ])
    }

    fn stream_entry(&self, leg: &crate::session::LegInfo, st: &Stream) -> Value {
        let mut flags = vec![Value::str(if st.rtcp { "RTCP" } else { "RTP" })];
        if leg.remote_rtcp_mux {
            flags.push(Value::str("RTCP-mux"));
        }
        if leg.blocked {
            flags.push(Value::str("blocked"));
        }
        let advertised_endpoint = leg.hint.map(|h| {
            if st.rtcp && !leg.remote_rtcp_mux {
                SocketAddr::new(h.ip(), h.port().saturating_add(1))
            } else {
                h
            }
        });
        let last_packet = st.last_ago.map_or(0, |a| self.now_unix.saturating_sub(a.as_secs())) as i64;
        let errors = if st.rtcp { 0 } else { leg.stats.drops.total() as i64 };
        let mut pairs = vec![
            ("local port", Value::Int(i64::from(st.port))),
            ("local address", Value::Bytes(self.advertised.to_string().into_bytes())),
            ("endpoint", endpoint_value(st.remote)),
            ("advertised endpoint", endpoint_value(advertised_endpoint)),
            ("last packet", Value::Int(last_packet)),
            ("flags", Value::List(flags)),
            (
                "stats",
                dict([
                    ("packets", Value::Int(st.packets as i64)),
                    ("bytes", Value::Int(st.bytes as i64)),
                    ("errors", Value::Int(errors)),
                ]),
            ),
        ];
        if let (false, Some(ssrc)) = (st.rtcp, leg.last_ssrc) {
            pairs.push(("SSRC", Value::Int(i64::from(ssrc))));
        }
        dict(pairs)
    }
}

/// One stream (RTP or RTCP) of a leg.
struct Stream {
    port: u16,
    remote: Option<SocketAddr>,
    packets: u64,
    bytes: u64,
    last_ago: Option<Duration>,
    rtcp: bool,
}

/// A JSON request as the equivalent bencode value (numbers become integers,
/// booleans `yes`/`no`, null an empty string).
pub(crate) fn from_json(j: &serde_json::Value) -> Value {
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

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(engine: &NgEngine, call_id: &str) -> Value {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let msg = dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("a")),
            ("sdp", Value::str(sdp)),
        ]);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        // A cookie of its own per request: a repeated one is answered from the cache.
        let reply = rt.block_on(engine.handle_message(&[call_id.as_bytes(), b" ", &msg.encode()].concat()));
        bencode::decode(&reply[call_id.len() + 1..]).expect("bencode")
    }

    fn reason_and_code(v: &Value) -> (&str, &str) {
        let get = |k| v.get(k).and_then(Value::as_str).unwrap_or("");
        (get("error-reason"), get("error-code"))
    }

    /// A full relay answers in rtpengine's exact words, which Kamailio and
    /// OpenSIPS match to try the next relay of a set; UCMRC's code beside.
    #[test]
    fn capacity_refusals_use_rtpengines_exact_words() {
        let relay = crate::Relay::start(crate::RelayConfig {
            port_min: 23000,
            port_max: 23007,
            workers: 1,
            tenant_port_share_percent: 100,
            ..crate::RelayConfig::default()
        })
        .expect("relay");
        let calls = |max_calls| {
            NgEngine::new(
                relay.handle(),
                NgConfig { limits: NgLimits { max_calls, ..NgLimits::default() }, ..NgConfig::default() },
            )
        };
        // One call at most: the second is over the engine's limit.
        let one = calls(1);
        assert_eq!(offer(&one, "first").get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(reason_and_code(&offer(&one, "second")), (SESSION_LIMIT, "quota_exceeded"));
        // Eight ports, four a call (an even/odd pair per leg): the range
        // (here the tenant's share of it, all of it) is full after two calls.
        let many = calls(100);
        assert_eq!(offer(&many, "third").get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(reason_and_code(&offer(&many, "fourth")), (OUT_OF_PORTS, "quota_exceeded"));
        // The shards' own ports running out reads the same.
        let exhausted = allocation_error(1, &crate::relay::RelayError::PortsExhausted);
        assert_eq!(reason_and_code(&exhausted), (OUT_OF_PORTS, "ports_exhausted"));
    }
}
