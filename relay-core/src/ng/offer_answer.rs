//! `offer` and `answer` as a chain of named steps: read the request (every
//! check before anything is locked or allocated), take the call's slot,
//! then per media section work out the legs' inputs and rtcp-mux (pure),
//! allocate or update its session, and rewrite the SDP; a new call that
//! fails half-way keeps nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use super::bencode::Value;
use super::options::{Family, MuxOptions, Options};
use super::sdp::{self, IceRewrite, MediaRewrite};
use super::{
    error, is_private, leg_updates, ok, plan_media, sdes_auth, unix_now, Call, CallSlot, Media, MediaPlan,
    MuxNegotiation, NgEngine, SESSION_LIMIT,
};
use crate::relay::LegAddresses;
use crate::session::spec::{LatchPolicy, LegSpec, LegUpdate, SessionSpec, SrtpAuth};

/// An offer or answer as the request gives it, every part checked.
struct Request<'a> {
    offer: bool,
    call_id: &'a [u8],
    sdp: &'a str,
    from_tag: &'a str,
    to_tag: Option<&'a str>,
    opts: Options,
    medias: Vec<sdp::MediaInfo>,
    /// What each media section does (checked before anything is allocated).
    plans: Vec<MediaPlan>,
    /// The interfaces of the sender's leg and of the recipient's.
    interfaces: [u8; 2],
}

/// Which leg faces the party that sent this SDP (0: the pbx leg, the
/// original caller's) and which faces the other party.
#[derive(Clone, Copy)]
struct Sides {
    sender: usize,
    other: usize,
    sender_is_offerer: bool,
}

/// What the sender's SDP says about one media section, for the relay's
/// legs: where the sender is, and the keys that prove its packets.
struct LegInputs {
    hint: Option<SocketAddr>,
    /// Its SDES key (unless SDES is removed toward the other side, which
    /// then cannot use it).
    keys: Option<SrtpAuth>,
    /// Its ICE password, which signs the other side's checks.
    ice_pwd: Option<String>,
    /// RFC 3605: RTCP to the `a=rtcp:` port (0: the RTP port + 1).
    rtcp_port: Option<u16>,
}

/// rtcp-mux for one media section: what the rewritten SDP offers or
/// answers (with an RTCP fallback port or not), and what each leg's
/// remote does (`None`: unchanged).
struct MuxOutcome {
    sdp_mux: bool,
    rtcp_fallback: bool,
    sender_mux: Option<bool>,
    other_mux: Option<bool>,
}

impl NgEngine {
    /// An offer or answer; sets `created` when it created the call.
    pub(super) async fn offer_answer(&self, msg: &Value, offer: bool, created: &mut bool) -> Value {
        let req = match self.read_request(msg, offer) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let (slot, mut guard) = match self.take_slot(req.call_id, offer).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let existing = guard.clone();
        let is_new = existing.is_none();
        if !offer && is_new {
            return error("unknown call-id");
        }
        let mut call = existing.unwrap_or_else(|| Call::new(req.from_tag));
        let known_sections = call.media.len();
        let sides = call.begin(&req);
        let rewritten = match self.apply_media(&mut call, &req, sides).await {
            Ok((rewrites, sdp_addr)) => {
                let addr = sdp_addr.or(req.opts.media_address).unwrap_or_else(|| self.handle.advertised_ip());
                let rewrite = sdp::Rewrite { addr, media: rewrites, replace_origin: req.opts.replace_origin };
                sdp::rewrite(req.sdp, &rewrite).map_err(|e| error(e.to_string()))
            }
            Err(e) => Err(e),
        };
        let out = match rewritten {
            Ok(out) => out,
            Err(e) => {
                // What this request allocated goes: all of a new call, the
                // new sections of an existing one (which stays as it was).
                for media in call.media.drain(known_sections..) {
                    let _ = self.handle.discard(media.id).await;
                }
                if is_new {
                    self.lock_table().remove_if(req.call_id, &slot);
                }
                return e;
            }
        };
        if is_new {
            self.lock_table().total += 1;
            *created = true;
        }
        *guard = Some(call);
        ok(vec![("sdp", Value::Bytes(out.into_bytes()))])
    }

    /// Every check of the request: ids, sizes, options, the SDP and each
    /// media section's plan.
    fn read_request<'a>(&self, msg: &'a Value, offer: bool) -> Result<Request<'a>, Value> {
        let limits = &self.config.limits;
        let (Some(call_id), Some(sdp_text), Some(from_tag)) = (
            msg.get("call-id").and_then(Value::as_bytes),
            msg.get("sdp").and_then(Value::as_str),
            msg.get("from-tag").and_then(Value::as_str),
        ) else {
            return Err(error("offer and answer need sdp, call-id and from-tag"));
        };
        let to_tag = msg.get("to-tag").and_then(Value::as_str);
        if !offer && to_tag.is_none() {
            return Err(error("answer needs to-tag"));
        }
        if [call_id.len(), from_tag.len(), to_tag.map_or(0, str::len)].iter().any(|n| *n > limits.max_id_bytes) {
            return Err(error("call-id, from-tag and to-tag must be at most max_id_bytes"));
        }
        if sdp_text.len() > limits.max_sdp_bytes {
            return Err(error("SDP larger than max_sdp_bytes"));
        }
        let opts = Options::parse(msg).map_err(|e| error(e.0))?;
        let medias = sdp::parse(sdp_text).map_err(|e| error(e.to_string()))?;
        if medias.len() > limits.max_media_per_call {
            return Err(error(format!("more than {} media sections (max_media_per_call)", limits.max_media_per_call)));
        }
        let interfaces = self.directions(&opts.direction);
        let mut plans = Vec::with_capacity(medias.len());
        for (k, m) in medias.iter().enumerate() {
            plans.push(plan_media(&opts, m).map_err(|e| error(format!("media section {}: {e}", k + 1)))?);
        }
        Ok(Request { offer, call_id, sdp: sdp_text, from_tag, to_tag, opts, medias, plans, interfaces })
    }

    /// The call's slot (an offer creates it), locked for this command. A
    /// slot removed while we waited (a failed offer, a delete) is stale:
    /// look again.
    async fn take_slot(
        &self,
        call_id: &[u8],
        offer: bool,
    ) -> Result<(CallSlot, tokio::sync::OwnedMutexGuard<Option<Call>>), Value> {
        for _ in 0..8 {
            let slot = {
                let mut table = self.lock_table();
                match table.calls.get(call_id) {
                    Some(s) => s.clone(),
                    None if !offer => return Err(error("unknown call-id")),
                    None if table.calls.len() >= self.config.limits.max_calls => {
                        return Err(super::capacity_error(SESSION_LIMIT, crate::codes::ErrorCode::QuotaExceeded))
                    }
                    None => {
                        let s: CallSlot = Arc::new(Mutex::new(None));
                        table.calls.insert(call_id.to_vec(), s.clone());
                        s
                    }
                }
            };
            let guard = slot.clone().lock_owned().await;
            if self.lock_table().calls.get(call_id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                return Ok((slot, guard));
            }
        }
        Err(error("the call changed under this request too often; retry"))
    }

    /// Each media section's session allocated (new) and updated, and its
    /// rewrite; the relay address the SDP names (one for the whole SDP).
    async fn apply_media(
        &self,
        call: &mut Call,
        req: &Request<'_>,
        sides: Sides,
    ) -> Result<(Vec<Option<MediaRewrite>>, Option<IpAddr>), Value> {
        let use_keys = self.config.authenticated_latching && !req.opts.no_authenticated_latching;
        let mut rewrites = Vec::with_capacity(req.medias.len());
        let mut sdp_addr: Option<IpAddr> = None;
        for (k, (m, plan)) in req.medias.iter().zip(&req.plans).enumerate() {
            if m.port == 0 {
                rewrites.push(None);
                continue;
            }
            let inputs = LegInputs::of(m, plan, &req.opts);
            let existing = call.media.get(k).map(|media| (media.mux, media.remote_mux, media.keyed));
            let (mut negotiation, mut remote_mux, mut keyed) = existing.unwrap_or_default();
            keyed[sides.sender] |= inputs.keys.is_some();
            keyed[sides.other] |= inputs.ice_pwd.is_some();
            let mux = negotiate_mux(req.offer, m.rtcp_mux, req.opts.rtcp_mux, sides, &mut negotiation, &mut remote_mux);
            let latch = (use_keys && keyed == [true, true]).then_some(LatchPolicy::Authenticated);
            // One round trip per section: a new one is allocated with
            // everything it needs; an existing one is updated (once the SDP's
            // address is known to be right).
            let toward_of =
                |media: &Media| if sides.sender_is_offerer { media.alloc.endpoint } else { media.alloc.pbx };
            let toward = if existing.is_some() {
                let media = &mut call.media[k];
                (media.mux, media.remote_mux, media.keyed) = (negotiation, remote_mux, keyed);
                let toward = toward_of(media);
                sdp_addr = Some(sdp_address(&req.opts, toward, sdp_addr)?);
                let mut update = leg_updates(sides.sender, inputs.sender_update(&mux), inputs.other_update(&mux));
                update.latch = latch;
                if let Err(e) = self.handle.update(media.id, update).await {
                    return Err(error(format!("media section {}: {e}", k + 1)));
                }
                toward
            } else {
                let fresh = NewMedia { inputs: &inputs, mux: &mux, latch, sides, interfaces: req.interfaces };
                let mut media = self.allocate_media(m, fresh, k).await?;
                (media.mux, media.remote_mux, media.keyed) = (negotiation, remote_mux, keyed);
                let toward = toward_of(&media);
                call.media.push(media);
                sdp_addr = Some(sdp_address(&req.opts, toward, sdp_addr)?);
                toward
            };
            // The rewritten SDP goes to the *other* party: it must send to
            // the leg facing the SDP's sender's peer.
            rewrites.push(Some(MediaRewrite {
                rtp: toward.rtp.port(),
                rtcp: if mux.rtcp_fallback { toward.rtcp.map(|a| a.port()) } else { None },
                mux: mux.sdp_mux,
                ice: plan.ice,
                proto: plan.proto.clone(),
                strip_formats: plan.strip_formats.clone(),
                strip_crypto: plan.strip_crypto,
                strip_dtls: plan.strip_dtls,
            }));
        }
        Ok((rewrites, sdp_addr))
    }

    /// A new media section's session, with everything the update of an
    /// existing one would set. Every leg gets an even/odd pair, as with
    /// rtpengine: a mux offer carries an RTCP fallback port that is really
    /// reserved, so an answerer without rtcp-mux still works.
    async fn allocate_media(&self, m: &sdp::MediaInfo, new: NewMedia<'_>, k: usize) -> Result<Media, Value> {
        let NewMedia { inputs, mux, latch, sides, interfaces } = new;
        let mut legs = [
            LegSpec::default(),
            // The answerer's address is unknown until its SDP: its leg
            // latches nothing before that.
            LegSpec { await_hint: true, ..LegSpec::default() },
        ];
        let sender = &mut legs[sides.sender];
        sender.hint = inputs.hint;
        sender.interface = interfaces[0];
        sender.srtp_auth = inputs.keys.clone();
        sender.remote_rtcp_port = inputs.rtcp_port;
        sender.remote_rtcp_mux = mux.sender_mux.unwrap_or(false);
        let other = &mut legs[sides.other];
        other.interface = interfaces[1];
        other.stun_password = inputs.ice_pwd.clone().map(String::into_bytes);
        other.remote_rtcp_mux = mux.other_mux.unwrap_or(false);
        let [pbx, endpoint] = legs;
        let spec = SessionSpec {
            tenant: self.config.tenant.clone(),
            pbx,
            endpoint,
            latch: Some(latch.unwrap_or(LatchPolicy::Window)),
            ..SessionSpec::default()
        };
        let alloc = self.handle.allocate(spec).await.map_err(|e| super::allocation_error(k + 1, &e))?;
        Ok(Media {
            id: alloc.id,
            alloc,
            kind: m.kind.clone(),
            proto: m.proto.clone(),
            remote_mux: [false; 2],
            mux: MuxNegotiation::default(),
            keyed: [false; 2],
            blocked: [false; 2],
        })
    }
}

/// What a new media section's allocation carries.
struct NewMedia<'a> {
    inputs: &'a LegInputs,
    mux: &'a MuxOutcome,
    latch: Option<LatchPolicy>,
    sides: Sides,
    interfaces: [u8; 2],
}

impl Call {
    /// A call an offer from `from_tag` creates.
    fn new(from_tag: &str) -> Call {
        Call {
            from_tag: from_tag.into(),
            to_tag: None,
            created: unix_now(),
            media: Vec::new(),
            labels: Vec::new(),
            seen_alive: Instant::now(),
        }
    }

    /// Takes in what the request says about the dialog (the to-tag, a
    /// label); which leg faces the sender. An offer comes from the
    /// `from-tag` party, an answer from the other one.
    fn begin(&mut self, req: &Request<'_>) -> Sides {
        self.seen_alive = Instant::now();
        if let Some(t) = req.to_tag {
            self.to_tag = Some(t.into());
        }
        let sender_is_offerer = if req.offer { req.from_tag == self.from_tag } else { req.from_tag != self.from_tag };
        if let Some(label) = &req.opts.label {
            let tag = if req.offer { req.from_tag } else { req.to_tag.unwrap_or(req.from_tag) };
            self.labels.retain(|(t, _)| t != tag);
            if self.labels.len() < 2 {
                self.labels.push((tag.to_string(), label.clone()));
            }
        }
        let (sender, other) = if sender_is_offerer { (0, 1) } else { (1, 0) };
        Sides { sender, other, sender_is_offerer }
    }
}

/// rtcp-mux (RFC 5761), rtpengine's way, for one media section whose
/// negotiation so far is `n` and whose remotes' multiplexing is
/// `remote_mux` (pbx, endpoint). An offer records what was offered on
/// (`require`: the recipient multiplexes from the start); an answer settles
/// what each remote does.
fn negotiate_mux(
    offer: bool,
    sdp_mux: bool,
    opts: MuxOptions,
    sides: Sides,
    n: &mut MuxNegotiation,
    remote_mux: &mut [bool; 2],
) -> MuxOutcome {
    if offer {
        *n = MuxNegotiation {
            offered_by_sender: sdp_mux,
            offered_on: (sdp_mux && !opts.demux) || opts.offer || opts.require,
            require: opts.require,
            forced: if !sdp_mux {
                None
            } else if opts.reject {
                Some(false)
            } else if opts.demux || opts.accept {
                Some(true)
            } else {
                None
            },
        };
        if n.require {
            remote_mux[sides.other] = true;
        }
        MuxOutcome {
            sdp_mux: n.offered_on,
            rtcp_fallback: !n.require,
            sender_mux: None,
            other_mux: n.require.then_some(true),
        }
    } else {
        let answerer_mux = (sdp_mux && n.offered_on) || n.require;
        let to_offerer = n.offered_by_sender && n.forced.unwrap_or(answerer_mux);
        remote_mux[sides.sender] = answerer_mux;
        remote_mux[sides.other] = to_offerer;
        MuxOutcome {
            sdp_mux: to_offerer,
            rtcp_fallback: !to_offerer,
            sender_mux: Some(answerer_mux),
            other_mux: Some(to_offerer),
        }
    }
}

impl LegInputs {
    /// The update of the leg facing the sender (an existing section).
    fn sender_update(&self, mux: &MuxOutcome) -> LegUpdate {
        LegUpdate {
            hint: self.hint,
            srtp_auth: self.keys.clone(),
            rtcp_port: self.rtcp_port,
            rtcp_mux: mux.sender_mux,
            ..LegUpdate::default()
        }
    }

    /// The update of the other leg (an existing section).
    fn other_update(&self, mux: &MuxOutcome) -> LegUpdate {
        LegUpdate {
            stun_password: self.ice_pwd.clone().map(String::into_bytes),
            rtcp_mux: mux.other_mux,
            ..LegUpdate::default()
        }
    }

    fn of(m: &sdp::MediaInfo, plan: &MediaPlan, opts: &Options) -> LegInputs {
        // A private SDP address behind a public SIP source: the source's IP.
        let ip = m.addr.map(|ip| match (opts.received_from, ip) {
            (Some(rf), ip) if is_private(ip) && !is_private(rf) => rf,
            _ => ip,
        });
        // c=0.0.0.0 (hold, RFC 2543) names no address: keep the last one.
        let hint = ip.filter(|ip| !ip.is_unspecified()).map(|ip| SocketAddr::new(ip, m.port));
        let keys = if plan.strip_crypto { None } else { sdes_auth(&m.crypto) };
        let ice_pwd = match plan.ice {
            IceRewrite::RelayCandidates => {
                m.ice_pwd.clone().filter(|p| !p.is_empty() && p.len() <= 256 && p.bytes().all(|b| b.is_ascii_graphic()))
            }
            IceRewrite::Remove => None,
        };
        LegInputs { hint, keys, ice_pwd, rtcp_port: Some(m.rtcp_port.unwrap_or(0)) }
    }
}

/// The address written into the SDP: rtpengine's `media-address`, or the
/// advertised address of the leg the recipient sends to; of the family
/// asked for, and the same for every media section.
fn sdp_address(opts: &Options, toward: LegAddresses, so_far: Option<IpAddr>) -> Result<IpAddr, Value> {
    let addr = opts.media_address.unwrap_or(toward.rtp.ip());
    if let (Some(Family::V6), IpAddr::V4(_)) | (Some(Family::V4), IpAddr::V6(_)) = (opts.family, addr) {
        return Err(error(format!(
            "address family {} asked for, but the relay's media address {addr} is not (use an interface of that family: direction)",
            if opts.family == Some(Family::V6) { "IP6" } else { "IP4" }
        )));
    }
    if so_far.is_some_and(|a| a != addr) {
        return Err(error("the media sections would need different relay addresses (one interface per call side)"));
    }
    Ok(addr)
}
