//! The sans-IO half of `offer` and `answer`. From the checked request, the
//! call as it stands and the time, [`plan`] works out a [`Plan`]: the
//! sessions to allocate (each with its keys, hints and rtcp-mux, so one
//! round trip makes it whole), the updates of the sections the call
//! already has, the call's next state, and the SDP rewrite with the
//! relay's ports still open. Nothing here touches the relay or reads a
//! clock: `offer_answer` carries the plan out, and every decision is a
//! function of its inputs.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use base64::Engine as _;

use super::bencode::Value;
use super::options::{security, Family, IceMode, MuxOptions, Options, Security};
use super::sdp::{self, IceRewrite, MediaRewrite};
use super::{error, Call, Media, MuxNegotiation};
use crate::relay::{AllocatedSession, LegAddresses};
use crate::session::spec::{LatchPolicy, LegSpec, LegUpdate, SessionSpec, SessionUpdate, SrtpAuth};
use crate::srtp_keys::{derive_auth_keys, SrtpMasterKey};

/// The time a plan is made at.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    /// For the call's liveness.
    pub instant: Instant,
    /// For the call's creation time (reported by `query`, replicated).
    pub unix_secs: u64,
}

/// An offer or answer as the request gives it, every part checked.
pub(super) struct Request<'a> {
    pub offer: bool,
    pub call_id: &'a [u8],
    pub sdp: &'a str,
    pub from_tag: &'a str,
    pub to_tag: Option<&'a str>,
    pub opts: Options,
    pub medias: Vec<sdp::MediaInfo>,
    /// What each media section does (checked before anything is allocated).
    pub checks: Vec<SectionChecks>,
    /// The interfaces of the sender's leg and of the recipient's.
    pub interfaces: [u8; 2],
}

/// What the engine's configuration says to every plan.
pub(super) struct Settings<'a> {
    /// The tenant the call's sessions belong to.
    pub tenant: &'a str,
    /// Latch only on proven packets where both legs have keys.
    pub authenticated_latching: bool,
}

/// What an offer or answer will do.
#[derive(Debug)]
pub(super) struct Plan {
    /// The call once the plan is carried out, but for the sessions of new
    /// sections ([`Plan::into_call`] adds them).
    call: Call,
    /// Per SDP media section; `None` for a disabled one (port 0), which
    /// the rewrite leaves alone.
    pub sections: Vec<Option<Section>>,
    /// The SDP's recipient sends to the endpoint leg (the offerer sent it)
    /// or to the pbx leg.
    toward_endpoint: bool,
    media_address: Option<IpAddr>,
    family: Option<Family>,
    replace_origin: bool,
}

/// One enabled media section's part of the plan.
#[derive(Debug)]
pub(super) struct Section {
    /// What happens to its session.
    pub step: Step,
    /// Its rewrite, but for the relay's ports.
    rewrite: MediaRewrite,
    /// The rewrite names an RTCP port (no rtcp-mux only).
    rtcp_fallback: bool,
}

/// What happens to a section's session.
#[derive(Debug)]
pub(super) enum Step {
    /// A new session, allocated with everything it needs.
    Allocate {
        /// The allocation.
        spec: Box<SessionSpec>,
        /// Its entry in the call, once allocated.
        media: NewMedia,
    },
    /// The call's `entry`th media's session, updated.
    Update {
        /// Index into the call's media.
        entry: usize,
        /// The update.
        update: Box<SessionUpdate>,
    },
}

/// A new section's entry in the call, but for its session.
#[derive(Debug)]
pub(super) struct NewMedia {
    section: usize,
    kind: String,
    proto: String,
    mux: MuxNegotiation,
    remote_mux: [bool; 2],
    keyed: [bool; 2],
}

/// What an offer or answer does to one media section's SDP, checked before
/// anything is allocated.
#[derive(Debug, Clone)]
pub(super) struct SectionChecks {
    ice: IceRewrite,
    proto: Option<String>,
    strip_formats: Vec<String>,
    strip_crypto: bool,
    strip_dtls: bool,
}

/// Which leg faces the party that sent this SDP (0: the pbx leg, the
/// original caller's) and which faces the other party.
#[derive(Debug, Clone, Copy)]
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

/// The plan of `req` on `call` (`None`: the call is new), at `now`.
pub(super) fn plan(call: Option<&Call>, req: &Request<'_>, settings: &Settings<'_>, now: Now) -> Result<Plan, Value> {
    if !req.offer && call.is_none() {
        return Err(error(super::words::UNKNOWN_CALL_ID));
    }
    let mut next = call.cloned().unwrap_or_else(|| Call::new(req.from_tag, now));
    let sides = next.begin(req, now.instant);
    let mut sections = Vec::with_capacity(req.medias.len());
    for (k, m) in req.medias.iter().enumerate() {
        sections.push((m.port != 0).then(|| plan_section(&mut next, req, settings, sides, k)));
    }
    Ok(Plan {
        call: next,
        sections,
        toward_endpoint: sides.sender_is_offerer,
        media_address: req.opts.media_address,
        family: req.opts.family,
        replace_origin: req.opts.replace_origin,
    })
}

/// Section `k`: an update of the session the call has for it, or a new one.
fn plan_section(call: &mut Call, req: &Request<'_>, settings: &Settings<'_>, sides: Sides, k: usize) -> Section {
    let (m, checks) = (&req.medias[k], &req.checks[k]);
    let inputs = LegInputs::of(m, checks, &req.opts);
    let entry = call.media.iter().position(|media| media.section == k);
    let (mut negotiation, mut remote_mux, mut keyed) =
        entry.map(|e| (call.media[e].mux, call.media[e].remote_mux, call.media[e].keyed)).unwrap_or_default();
    keyed[sides.sender] |= inputs.keys.is_some();
    keyed[sides.other] |= inputs.ice_pwd.is_some();
    let mux = negotiate_mux(req.offer, m.rtcp_mux, req.opts.rtcp_mux, sides, &mut negotiation, &mut remote_mux);
    let use_keys = settings.authenticated_latching && !req.opts.no_authenticated_latching;
    let latch = (use_keys && keyed == [true, true]).then_some(LatchPolicy::Authenticated);
    let step = match entry {
        Some(entry) => {
            let media = &mut call.media[entry];
            (media.mux, media.remote_mux, media.keyed) = (negotiation, remote_mux, keyed);
            let mut update = leg_updates(sides.sender, inputs.sender_update(&mux), inputs.other_update(&mux));
            update.latch = latch;
            Step::Update { entry, update: Box::new(update) }
        }
        None => Step::Allocate {
            spec: Box::new(SessionSpec {
                clock_rate: clock_rate(m),
                ..new_session(&inputs, &mux, latch, sides, req.interfaces, settings.tenant)
            }),
            media: NewMedia {
                section: k,
                kind: m.kind.clone(),
                proto: m.proto.clone(),
                mux: negotiation,
                remote_mux,
                keyed,
            },
        },
    };
    let rewrite = MediaRewrite {
        rtp: 0,
        rtcp: None,
        mux: mux.sdp_mux,
        ice: checks.ice,
        proto: checks.proto.clone(),
        strip_formats: checks.strip_formats.clone(),
        strip_crypto: checks.strip_crypto,
        strip_dtls: checks.strip_dtls,
    };
    Section { step, rewrite, rtcp_fallback: mux.rtcp_fallback }
}

/// A new media section's session, with everything the update of an
/// existing one would set. Every leg gets an even/odd pair, as with
/// rtpengine: a mux offer carries an RTCP fallback port that is really
/// reserved, so an answerer without rtcp-mux still works.
fn new_session(
    inputs: &LegInputs,
    mux: &MuxOutcome,
    latch: Option<LatchPolicy>,
    sides: Sides,
    interfaces: [u8; 2],
    tenant: &str,
) -> SessionSpec {
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
    SessionSpec {
        tenant: tenant.to_string(),
        pbx,
        endpoint,
        latch: Some(latch.unwrap_or(LatchPolicy::Window)),
        ..SessionSpec::default()
    }
}

impl Plan {
    /// The rewritten SDP, given the sessions allocated for new sections
    /// (by SDP section). The rewritten SDP goes to the *other* party: it
    /// must send to the leg facing the SDP's sender's peer.
    pub(super) fn rewrite(
        &self,
        sdp_text: &str,
        allocated: &[Option<AllocatedSession>],
        advertised: IpAddr,
    ) -> Result<String, Value> {
        let mut addr = None;
        let mut media = Vec::with_capacity(self.sections.len());
        for (k, section) in self.sections.iter().enumerate() {
            let Some(section) = section else {
                media.push(None);
                continue;
            };
            let session = match &section.step {
                Step::Update { entry, .. } => Some(&self.call.media[*entry].alloc),
                Step::Allocate { .. } => allocated.get(k).and_then(Option::as_ref),
            };
            let Some(session) = session else { return Err(error("internal: a new section has no session")) };
            let toward = if self.toward_endpoint { session.endpoint } else { session.pbx };
            addr = Some(self.sdp_address(toward, addr)?);
            let rtcp = if section.rtcp_fallback { toward.rtcp.map(|a| a.port()) } else { None };
            media.push(Some(MediaRewrite { rtp: toward.rtp.port(), rtcp, ..section.rewrite.clone() }));
        }
        let rewrite = sdp::Rewrite {
            addr: addr.or(self.media_address).unwrap_or(advertised),
            media,
            replace_origin: self.replace_origin,
        };
        sdp::rewrite(sdp_text, &rewrite).map_err(|e| error(e.to_string()))
    }

    /// The address written into the SDP: rtpengine's `media-address`, or
    /// the advertised address of the leg the recipient sends to; of the
    /// family asked for, and the same for every media section.
    fn sdp_address(&self, toward: LegAddresses, so_far: Option<IpAddr>) -> Result<IpAddr, Value> {
        let addr = self.media_address.unwrap_or(toward.rtp.ip());
        if let (Some(Family::V6), IpAddr::V4(_)) | (Some(Family::V4), IpAddr::V6(_)) = (self.family, addr) {
            return Err(error(format!(
                "address family {} asked for, but the relay's media address {addr} is not (use an interface of that family: direction)",
                if self.family == Some(Family::V6) { "IP6" } else { "IP4" }
            )));
        }
        if so_far.is_some_and(|a| a != addr) {
            return Err(error("the media sections would need different relay addresses (one interface per call side)"));
        }
        Ok(addr)
    }

    /// The session the call's `entry`th media has.
    pub(super) fn session_of(&self, entry: usize) -> crate::session::SessionId {
        self.call.media[entry].id
    }

    /// The call as it is once carried out, with the sessions allocated for
    /// new sections (by SDP section).
    pub(super) fn into_call(self, allocated: Vec<Option<AllocatedSession>>) -> Call {
        let mut call = self.call;
        for (section, session) in self.sections.into_iter().zip(allocated) {
            if let (Some(Section { step: Step::Allocate { media, .. }, .. }), Some(alloc)) = (section, session) {
                call.media.push(media.into_media(alloc));
            }
        }
        call
    }
}

impl NewMedia {
    fn into_media(self, alloc: AllocatedSession) -> Media {
        Media {
            id: alloc.id,
            alloc,
            section: self.section,
            kind: self.kind,
            proto: self.proto,
            remote_mux: self.remote_mux,
            mux: self.mux,
            keyed: self.keyed,
            blocked: [false; 2],
        }
    }
}

impl Call {
    /// A call an offer from `from_tag` creates.
    fn new(from_tag: &str, now: Now) -> Call {
        Call {
            from_tag: from_tag.into(),
            to_tag: None,
            created: now.unix_secs,
            media: Vec::new(),
            labels: Vec::new(),
            seen_alive: now.instant,
        }
    }

    /// Takes in what the request says about the dialog (the to-tag, a
    /// label); which leg faces the sender. An offer comes from the
    /// `from-tag` party, an answer from the other one.
    fn begin(&mut self, req: &Request<'_>, now: Instant) -> Sides {
        self.seen_alive = now;
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

    fn of(m: &sdp::MediaInfo, checks: &SectionChecks, opts: &Options) -> LegInputs {
        // A private SDP address behind a public SIP source: the source's IP.
        let ip = m.addr.map(|ip| match (opts.received_from, ip) {
            (Some(rf), ip) if is_private(ip) && !is_private(rf) => rf,
            _ => ip,
        });
        // c=0.0.0.0 (hold, RFC 2543) names no address: keep the last one.
        let hint = ip.filter(|ip| !ip.is_unspecified()).map(|ip| SocketAddr::new(ip, m.port));
        let keys = if checks.strip_crypto { None } else { sdes_auth(&m.crypto) };
        let ice_pwd = match checks.ice {
            IceRewrite::RelayCandidates => {
                m.ice_pwd.clone().filter(|p| !p.is_empty() && p.len() <= 256 && p.bytes().all(|b| b.is_ascii_graphic()))
            }
            IceRewrite::Remove => None,
        };
        LegInputs { hint, keys, ice_pwd, rtcp_port: Some(m.rtcp_port.unwrap_or(0)) }
    }
}

/// Checks one media section, refusing what would break the call: a change
/// between plain RTP, SDES-SRTP and DTLS-SRTP needs the relay to decrypt.
pub(super) fn check_section(opts: &Options, m: &sdp::MediaInfo) -> Result<SectionChecks, String> {
    let mut proto = opts.transport.clone();
    let current = security(&m.proto);
    let mut effective = current;
    let strip_dtls = opts.dtls_off && (m.fingerprint || current == Security::Dtls);
    if opts.dtls_off && current == Security::Dtls {
        if m.crypto.is_empty() {
            return Err(format!("DTLS: off would leave this {} section without keys", m.proto));
        }
        // SDES remains: the same SRTP, keyed in the SDP.
        effective = Security::Srtp;
        if proto.is_none() {
            proto = Some(m.proto.trim_start_matches("UDP/TLS/").to_string());
        }
    }
    let strip_crypto = opts.sdes_off && !m.crypto.is_empty();
    if strip_crypto && effective == Security::Srtp && !m.fingerprint {
        return Err(format!("SDES: off would leave this {} section without keys", m.proto));
    }
    if let Some(t) = &proto {
        let target = security(t);
        if current != Security::Other && target != effective {
            return Err(format!(
                "transport-protocol {t} on a {} section needs SRTP encryption or decryption: UCMRC relays media without decrypting it",
                m.proto
            ));
        }
    }
    let mut strip_formats = sdp::matching_formats(m, &opts.codec.strip);
    let keep = sdp::matching_formats(m, &opts.codec.except);
    strip_formats.retain(|f| !keep.contains(f));
    if !m.formats.is_empty() && m.port != 0 && strip_formats.len() == m.formats.len() {
        return Err("the codec options leave no codec (UCMRC does not transcode)".into());
    }
    let ice = match opts.ice {
        IceMode::Remove => IceRewrite::Remove,
        IceMode::Default => IceRewrite::RelayCandidates,
        IceMode::Force if m.ice_ufrag.is_some() && m.ice_pwd.is_some() => IceRewrite::RelayCandidates,
        IceMode::Force => {
            return Err("ICE: force on a section without ICE would need the relay to terminate ICE, which UCMRC does not (the relay is already the only candidate wherever the endpoints use ICE)".into())
        }
    };
    Ok(SectionChecks { ice, proto, strip_formats, strip_crypto, strip_dtls })
}

/// The RTP clock rate of a section's first format (for jitter in
/// milliseconds): its `a=rtpmap` rate, or 8 kHz (every static audio
/// payload type but a few rarely used; the session's default).
fn clock_rate(m: &sdp::MediaInfo) -> Option<u32> {
    let first = m.formats.first()?;
    let (_, encoding) = m.rtpmap.iter().find(|(pt, _)| pt == first)?;
    encoding.split('/').nth(1)?.parse().ok().filter(|r| (1..=crate::session::spec::MAX_CLOCK_RATE).contains(r))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ng::bencode::dict;
    use crate::session::SessionId;

    const AT: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
    const SDES: &str = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    /// A request as `read_request` builds it, from a message's pairs.
    fn request<'a>(
        offer: bool,
        from_tag: &'a str,
        to_tag: Option<&'a str>,
        sdp: &'a str,
        extra: Vec<(&str, Value)>,
    ) -> Request<'a> {
        let opts = Options::parse(&dict(extra)).expect("options");
        let medias = sdp::parse(sdp).expect("sdp");
        let checks = medias.iter().map(|m| check_section(&opts, m).expect("checks")).collect();
        Request { offer, call_id: b"c", sdp, from_tag, to_tag, opts, medias, checks, interfaces: [0, 0] }
    }

    fn reason(v: &Value) -> &str {
        v.get("error-reason").and_then(Value::as_str).unwrap_or("")
    }

    fn now() -> Now {
        Now { instant: Instant::now(), unix_secs: 1_800_000_000 }
    }

    const SETTINGS: Settings<'static> = Settings { tenant: "ng", authenticated_latching: true };

    /// What the relay would allocate: the pbx leg on `.10`, the endpoint leg on `ip`.
    fn session(id: u64, port: u16, endpoint_ip: [u8; 4]) -> AllocatedSession {
        let at = |ip: [u8; 4], p: u16| SocketAddr::from((ip, p));
        AllocatedSession {
            id: SessionId(id),
            pbx: LegAddresses { rtp: at([198, 51, 100, 10], port), rtcp: Some(at([198, 51, 100, 10], port + 1)) },
            endpoint: LegAddresses { rtp: at(endpoint_ip, port + 2), rtcp: Some(at(endpoint_ip, port + 3)) },
        }
    }

    #[test]
    fn a_new_offer_allocates_each_enabled_section_whole_in_one_step() {
        let sdp = format!("{AT}m=audio 0 RTP/AVP 0\r\nm=audio 4000 RTP/SAVP 0\r\n{SDES}a=rtcp:4009\r\n");
        let req = request(true, "a", None, &sdp, vec![]);
        let plan = plan(None, &req, &SETTINGS, now()).expect("plan");
        assert!(plan.sections[0].is_none(), "a disabled section gets nothing");
        let Some(Section { step: Step::Allocate { spec, media }, .. }) = &plan.sections[1] else {
            panic!("an allocation: {:?}", plan.sections[1])
        };
        // Everything the update would have set travels with the allocation.
        assert_eq!(spec.pbx.hint, Some("192.0.2.1:4000".parse().expect("addr")));
        assert!(spec.pbx.srtp_auth.is_some(), "the offerer's SDES key proves its packets");
        assert_eq!(spec.pbx.remote_rtcp_port, Some(4009));
        assert!(spec.endpoint.await_hint && spec.endpoint.hint.is_none());
        assert_eq!(spec.latch, Some(LatchPolicy::Window), "one side keyed is not enough to latch on proof");
        assert_eq!((spec.tenant.as_str(), media.section), ("ng", 1));
        assert_eq!(spec.clock_rate, None, "PCMU without a=rtpmap: the 8 kHz default");
        // The call is new, of this time, with the new section still to add.
        let call = plan.into_call(vec![None, Some(session(7, 20_000, [198, 51, 100, 10]))]);
        assert_eq!((call.created, call.media.len(), call.media[0].section), (1_800_000_000, 1, 1));
    }

    #[test]
    fn a_sections_clock_rate_is_its_first_formats() {
        let sdp = format!("{AT}m=video 4002 RTP/AVP 96 97\r\na=rtpmap:97 H264/90000\r\na=rtpmap:96 VP8/90000\r\n");
        let req = request(true, "a", None, &sdp, vec![]);
        let plan = plan(None, &req, &SETTINGS, now()).expect("plan");
        let Some(Section { step: Step::Allocate { spec, .. }, .. }) = &plan.sections[0] else { panic!("allocation") };
        assert_eq!(spec.clock_rate, Some(90_000));
    }

    #[test]
    fn an_answer_updates_the_offers_session_and_settles_rtcp_mux() {
        let offer_sdp = format!("{AT}m=audio 4000 RTP/SAVP 0\r\n{SDES}a=rtcp-mux\r\n");
        let offer = request(true, "a", None, &offer_sdp, vec![]);
        let offered = plan(None, &offer, &SETTINGS, now()).expect("offer plan");
        let call = offered.into_call(vec![Some(session(7, 20_000, [198, 51, 100, 10]))]);
        let answer_sdp =
            format!("{AT}m=audio 5000 RTP/SAVP 0\r\n{SDES}a=rtcp-mux\r\n").replace("192.0.2.1", "192.0.2.2");
        let answer = request(false, "a", Some("b"), &answer_sdp, vec![]);
        let answered = plan(Some(&call), &answer, &SETTINGS, now()).expect("answer plan");
        let Some(Section { step: Step::Update { entry: 0, update }, .. }) = &answered.sections[0] else {
            panic!("an update of the offer's session: {:?}", answered.sections[0])
        };
        assert_eq!(update.endpoint.hint, Some("192.0.2.2:5000".parse().expect("addr")), "the answerer's leg learns it");
        assert_eq!((update.endpoint.rtcp_mux, update.pbx.rtcp_mux), (Some(true), Some(true)), "both multiplex");
        assert_eq!(update.latch, Some(LatchPolicy::Authenticated), "both sides keyed: latch on proof");
        // The answer goes to the offerer, who sends to the pbx leg, muxed.
        let out = answered.rewrite(&answer_sdp, &[None], "203.0.113.1".parse().expect("ip")).expect("rewrite");
        assert!(
            out.contains("m=audio 20000 RTP/SAVP 0") && out.contains("a=rtcp-mux") && !out.contains("a=rtcp:"),
            "{out}"
        );
        assert!(out.contains("c=IN IP4 198.51.100.10"), "{out}");
        // An answer to a call that does not exist plans nothing.
        assert!(plan(None, &answer, &SETTINGS, now()).is_err());
    }

    #[test]
    fn a_reoffer_needing_two_relay_addresses_is_refused_before_anything_changes() {
        // The call has a section whose endpoint leg is on another address.
        let two = format!("{AT}m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\n");
        let offer = request(true, "a", None, &two, vec![]);
        let call = plan(None, &offer, &SETTINGS, now()).expect("plan").into_call(vec![
            Some(session(1, 20_000, [198, 51, 100, 10])),
            Some(session(2, 20_004, [198, 51, 100, 11])),
        ]);
        let again = plan(Some(&call), &offer, &SETTINGS, now()).expect("re-offer plan");
        assert!(again.sections.iter().flatten().all(|s| matches!(s.step, Step::Update { .. })));
        let refused = again.rewrite(&two, &[None, None], "203.0.113.1".parse().expect("ip")).expect_err("refused");
        assert!(reason(&refused).contains("different relay addresses"), "{}", reason(&refused));
    }

    #[test]
    fn the_family_asked_for_must_be_the_relays() {
        let sdp = format!("{AT}m=audio 4000 RTP/AVP 0\r\n");
        let req = request(true, "a", None, &sdp, vec![("address family", Value::str("IP6"))]);
        let plan = plan(None, &req, &SETTINGS, now()).expect("plan");
        let refused =
            plan.rewrite(&sdp, &[Some(session(1, 20_000, [198, 51, 100, 10]))], "203.0.113.1".parse().expect("ip"));
        let refused = refused.expect_err("refused");
        assert!(reason(&refused).contains("address family IP6"), "{}", reason(&refused));
    }
}
