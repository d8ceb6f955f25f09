//! `offer` and `answer` carried out: read the request (every check before
//! anything is locked or allocated), take the call's slot, [`plan`] what
//! happens (sans-IO), then execute the plan — allocate the new sections'
//! sessions (one round trip each, keys and hints included), render the
//! SDP, update the existing sections — and store the call. A request that
//! fails keeps nothing: what it allocated is discarded on one path, and
//! the call's existing sessions are updated only once everything else has
//! succeeded.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use super::bencode::Value;
use super::options::Options;
use super::plan::{self, check_section, Now, Plan, Request, Settings, Step};
use super::{error, ok, sdp, unix_now, words, Call, CallSlot, NgEngine, SESSION_LIMIT};
use crate::relay::AllocatedSession;

impl NgEngine {
    /// An offer or answer; sets `created` when it created the call.
    pub(super) async fn offer_answer(&self, msg: &Value, offer: bool, created: &mut bool) -> Value {
        let now = Now { instant: Instant::now(), unix_secs: unix_now() };
        let req = match self.read_request(msg, offer) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let (slot, mut guard) = match self.take_slot(req.call_id, offer).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let is_new = guard.is_none();
        let settings =
            Settings { tenant: &self.config.tenant, authenticated_latching: self.config.authenticated_latching };
        let executed = match plan::plan(guard.as_ref(), &req, &settings, now) {
            Ok(plan) => self.execute(plan, req.sdp).await,
            Err(e) => Err(e),
        };
        match executed {
            Ok((call, sdp)) => {
                if is_new {
                    self.lock_table().total += 1;
                    *created = true;
                }
                *guard = Some(call);
                ok(vec![("sdp", Value::Bytes(sdp.into_bytes()))])
            }
            Err(e) => {
                if is_new {
                    self.lock_table().remove_if(req.call_id, &slot);
                }
                e
            }
        }
    }

    /// Carries `plan` out: the call as it now is and the rewritten SDP; on
    /// an error, every session the plan allocated is discarded again.
    async fn execute(&self, plan: Plan, sdp_text: &str) -> Result<(Call, String), Value> {
        let mut allocated: Vec<Option<AllocatedSession>> = vec![None; plan.sections.len()];
        let outcome = self.carry_out(&plan, sdp_text, &mut allocated).await;
        match outcome {
            Ok(sdp) => Ok((plan.into_call(allocated), sdp)),
            Err(e) => {
                for session in allocated.into_iter().flatten() {
                    let _ = self.handle.discard(session.id).await;
                }
                Err(e)
            }
        }
    }

    /// The plan's allocations (into `allocated`, by section), its SDP, then
    /// its updates.
    async fn carry_out(
        &self,
        plan: &Plan,
        sdp_text: &str,
        allocated: &mut [Option<AllocatedSession>],
    ) -> Result<String, Value> {
        for (k, section) in plan.sections.iter().enumerate() {
            if let Some(plan::Section { step: Step::Allocate { spec, .. }, .. }) = section {
                let session = self.handle.allocate((**spec).clone()).await;
                allocated[k] = Some(session.map_err(|e| super::allocation_error(k + 1, &e))?);
            }
        }
        let sdp = plan.rewrite(sdp_text, allocated, self.handle.advertised_ip())?;
        for (k, section) in plan.sections.iter().enumerate() {
            if let Some(plan::Section { step: Step::Update { entry, update }, .. }) = section {
                let id = plan.session_of(*entry);
                self.handle
                    .update(id, (**update).clone())
                    .await
                    .map_err(|e| error(format!("media section {}: {e}", k + 1)))?;
            }
        }
        Ok(sdp)
    }

    /// Every check of the request: ids, sizes, options, the SDP and each
    /// media section's plan.
    fn read_request<'a>(&self, msg: &'a Value, offer: bool) -> Result<Request<'a>, Value> {
        let limits = &self.config.limits;
        // rtpengine's checks, in its order and words.
        let sdp_text = match msg.get("sdp") {
            None => return Err(error(words::NO_SDP_BODY)),
            Some(v) => v.as_str().ok_or_else(|| error(format!("{}: not UTF-8", words::SDP_UNPARSABLE)))?,
        };
        let call_id = msg.get("call-id").and_then(Value::as_bytes).ok_or_else(|| error(words::NO_CALL_ID))?;
        let from_tag = msg.get("from-tag").and_then(Value::as_str).ok_or_else(|| error(words::NO_FROM_TAG))?;
        let to_tag = msg.get("to-tag").and_then(Value::as_str);
        if !offer && to_tag.is_none() {
            return Err(error(words::NO_TO_TAG));
        }
        if [call_id.len(), from_tag.len(), to_tag.map_or(0, str::len)].iter().any(|n| *n > limits.max_id_bytes) {
            return Err(error("call-id, from-tag and to-tag must be at most max_id_bytes"));
        }
        if sdp_text.len() > limits.max_sdp_bytes {
            return Err(error("SDP larger than max_sdp_bytes"));
        }
        let opts = Options::parse(msg).map_err(|e| error(e.0))?;
        let medias = sdp::parse(sdp_text).map_err(|e| error(format!("{}: {e}", words::SDP_UNPARSABLE)))?;
        if medias.len() > limits.max_media_per_call {
            return Err(error(format!("more than {} media sections (max_media_per_call)", limits.max_media_per_call)));
        }
        let interfaces = self.directions(&opts.direction);
        let mut checks = Vec::with_capacity(medias.len());
        for (k, m) in medias.iter().enumerate() {
            checks.push(check_section(&opts, m).map_err(|e| error(format!("media section {}: {e}", k + 1)))?);
        }
        Ok(Request { offer, call_id, sdp: sdp_text, from_tag, to_tag, opts, medias, checks, interfaces })
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
                    None if !offer => return Err(error(words::UNKNOWN_CALL_ID)),
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
}
