//! The standby phase: a warm copy of the group's sessions and calls kept by
//! subscription, the lease watched, and the lease taken when the active
//! stops renewing it. Everything read from Redis is input: records are
//! opened with the cluster key ([`crate::record`]) and applied only if not
//! older than what was applied ([`crate::warm`]).

use std::collections::HashSet;
use std::time::Instant;

use futures_util::StreamExt as _;

use crate::lease::Observation;
use crate::node::{Node, Role};
use crate::record::{unix_ms_now, Kind, RecordError, Version};
use crate::store::{Holder, StoreError};
use crate::warm::WarmCopy;

/// What the standby phase hands the takeover.
pub(crate) struct Taken {
    /// The lease this node holds now.
    pub holder: Holder,
    /// When the request that took it was sent (its validity counts from
    /// there).
    pub taken_at: Instant,
    /// The copy to resume from, caught up with the last write.
    pub warm: WarmCopy,
    /// Whether catching up needed a full read.
    pub reloaded: bool,
}

impl Node {
    /// Standby: warm copy from Redis, lease watched; returns once this node
    /// holds the lease (with the warm copy caught up to the last write), or
    /// `None` when stopped.
    pub(crate) async fn standby(&mut self) -> Option<Taken> {
        let mut warm = WarmCopy::default();
        let mut sub: Option<redis::aio::PubSubStream> = None;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.clone();
        loop {
            if self.stopping().is_some() {
                return None;
            }
            if sub.is_none() {
                sub = self.subscribe(&mut warm).await;
                self.update(|s| {
                    if matches!(s.role, Role::Starting | Role::Active | Role::Fenced) {
                        s.role = Role::Standby;
                    }
                    s.warm_sessions = warm.sessions.len();
                    s.warm_calls = warm.calls.len();
                });
            }
            tokio::select! {
                msg = async { match sub.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                    match msg {
                        Some(m) => self.apply_note(&mut warm, m.get_payload_bytes()).await,
                        None => sub = None,
                    }
                }
                _ = poll.tick() => {
                    if let Some((holder, taken_at, head)) = self.look_at_lease().await {
                        let reloaded = self.catch_up(&mut warm, sub.as_mut(), head).await;
                        return Some(Taken { holder, taken_at, warm, reloaded });
                    }
                }
                _ = stop.changed() => {}
            }
        }
    }

    /// Subscribes to the change notes, then loads everything (nothing
    /// written in between is missed); `None` if Redis did not answer.
    async fn subscribe(&mut self, warm: &mut WarmCopy) -> Option<redis::aio::PubSubStream> {
        // Bounded: a Redis that accepts connections but does not answer
        // must not stop the lease watch.
        let timeout = self.config.effective_redis_timeout().saturating_mul(4);
        let subscribed = tokio::time::timeout(timeout, self.store.subscribe()).await;
        match subscribed.unwrap_or(Err(StoreError::Timeout)) {
            Ok(ps) => {
                let sub = ps.into_on_message();
                self.reload(warm).await.ok().map(|()| sub)
            }
            Err(e) => {
                self.redis_result::<()>(&Err(e));
                None
            }
        }
    }

    /// One look at the lease; takes it when the watch says so. Returns the
    /// lease taken, when the request was sent, and the last write's
    /// version.
    async fn look_at_lease(&mut self) -> Option<(Holder, Instant, Option<Version>)> {
        let obs = match self.lease_store.observe().await {
            Ok(v) => {
                if let Some(h) = &v.holder {
                    self.saw_epoch(h.epoch);
                }
                self.saw_epoch(v.epoch.unwrap_or(0));
                self.update(|s| {
                    s.redis_up = true;
                    s.holder = v.holder.clone();
                });
                Observation::Seen(v)
            }
            Err(e) => {
                self.redis_result::<()>(&Err(e));
                Observation::Unreachable
            }
        };
        if !self.watch.handle_observation(Instant::now(), &obs) {
            return None;
        }
        let sent = Instant::now();
        let r = self.lease_store.take_over(&self.config.node_id, self.config.lease_ttl, self.highest_epoch).await;
        self.redis_result(&r);
        let (holder, head) = r.ok().flatten()?;
        self.saw_epoch(holder.epoch);
        Some((holder, sent, head))
    }

    /// After taking the lease (nobody else can write now): makes sure the
    /// warm copy holds the last write — from notes already on their way,
    /// or else by reading everything again. Returns whether it read
    /// everything.
    async fn catch_up(
        &mut self,
        warm: &mut WarmCopy,
        mut sub: Option<&mut redis::aio::PubSubStream>,
        head: Option<Version>,
    ) -> bool {
        let behind = |w: &WarmCopy| head.is_some_and(|h| w.last.is_none_or(|l| l < h));
        let deadline = Instant::now() + self.config.lease_ttl / 4;
        while behind(warm) {
            let Some(s) = sub.as_deref_mut() else { break };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.next()).await {
                Ok(Some(m)) => self.apply_note(warm, m.get_payload_bytes()).await,
                _ => break,
            }
        }
        if !behind(warm) {
            return false;
        }
        tracing::warn!(?head, last = ?warm.last, "warm copy behind the last write: reading everything");
        let _ = self.reload(warm).await;
        warm.last = warm.last.max(head);
        true
    }

    /// Reads every record again into the warm copy. A record older than the
    /// version already applied of it (or than its deletion) is refused;
    /// one that does not open is refused and counted.
    pub(crate) async fn reload(&mut self, warm: &mut WarmCopy) -> Result<(), ()> {
        let head = self.store.head().await;
        self.redis_result(&head);
        let head = head.map_err(|_| ())?;
        let r = self.store.load_all().await;
        self.redis_result(&r);
        let sessions = r.map_err(|_| ())?;
        let r = self.store.load_calls().await;
        self.redis_result(&r);
        let calls = r.map_err(|_| ())?;
        let r = self.store.load_turn().await;
        self.redis_result(&r);
        let turn = r.map_err(|_| ())?;
        let mut next = WarmCopy { last: head, ..WarmCopy::default() };
        let (now, now_ms) = (Instant::now(), unix_ms_now());
        let mut tally = Tally::default();
        for (id, bytes) in sessions {
            self.apply_session(&mut next, &mut tally, &id, &bytes, now, now_ms);
        }
        for (id, bytes) in calls {
            self.apply_call(&mut next, &mut tally, &id, &bytes);
        }
        for (id, bytes) in turn {
            self.apply_turn(&mut next, &mut tally, &id, &bytes, now, now_ms);
        }
        // Kept from before: what Redis now holds an older version of.
        for (id, kept) in warm.sessions.drain() {
            if tally.kept_sessions.contains(&id) {
                next.sessions.insert(id, kept);
            }
        }
        for (id, kept) in warm.calls.drain() {
            if tally.kept_calls.contains(&id) {
                next.calls.insert(id, kept);
            }
        }
        for (id, kept) in warm.turn.drain() {
            if tally.kept_turn.contains(&id) {
                next.turn.insert(id, kept);
            }
        }
        *warm = next;
        self.finish(warm, tally, head);
        Ok(())
    }

    /// Applies one change note: reads the records it names.
    async fn apply_note(&mut self, warm: &mut WarmCopy, payload: &[u8]) {
        let (note, v) = match self.codec.decode_note(payload) {
            Ok(n) => n,
            Err(e) => {
                self.bad.report("note", "-", &e);
                self.update(|s| s.bad_records += 1);
                return;
            }
        };
        self.saw_epoch(v.epoch);
        if warm.last.is_some_and(|l| v <= l) {
            // Already applied (a full read overtook it), or replayed: the
            // records it names carry their own versions anyway.
            return;
        }
        let gap = warm.last.is_some_and(|l| l.epoch == v.epoch && v.seq != l.seq + 1);
        if gap {
            let _ = self.reload(warm).await;
            return;
        }
        warm.last = Some(v);
        let sessions = self.store.get_many(&note.set).await;
        self.redis_result(&sessions);
        let calls = self.store.get_calls(&note.calls_set).await;
        self.redis_result(&calls);
        let turn = self.store.get_turn(&note.turn_set).await;
        self.redis_result(&turn);
        let (Ok(sessions), Ok(calls), Ok(turn)) = (sessions, calls, turn) else {
            let _ = self.reload(warm).await;
            return;
        };
        let (now, now_ms) = (Instant::now(), unix_ms_now());
        let mut tally = Tally::default();
        // A record gone since was deleted: its deletion note follows.
        for (id, rec) in note.set.iter().zip(sessions) {
            if let Some(bytes) = rec {
                self.apply_session(warm, &mut tally, id, &bytes, now, now_ms);
            }
        }
        for (id, rec) in note.calls_set.iter().zip(calls) {
            if let Some(bytes) = rec {
                self.apply_call(warm, &mut tally, id, &bytes);
            }
        }
        for (id, rec) in note.turn_set.iter().zip(turn) {
            if let Some(bytes) = rec {
                self.apply_turn(warm, &mut tally, id, &bytes, now, now_ms);
            }
        }
        for id in &note.del {
            if self.sessions_applied.delete(id, v) {
                warm.sessions.remove(id);
            } else {
                tally.rollbacks += 1;
            }
        }
        for id in &note.calls_del {
            if self.calls_applied.delete(id, v) {
                warm.calls.remove(id);
            } else {
                tally.rollbacks += 1;
            }
        }
        for id in &note.turn_del {
            if self.turn_applied.delete(id, v) {
                warm.turn.remove(id);
            } else {
                tally.rollbacks += 1;
            }
        }
        self.finish(warm, tally, Some(v));
    }

    /// Whether a decoded record of `kind` may go into the warm copy: a
    /// version newer than what was applied of `id` is admitted; an older
    /// one is a rollback (the copy keeps its own); one that did not open
    /// is counted and logged once per id. One rule for every kind.
    fn admit<T>(
        &mut self,
        kind: Kind,
        tally: &mut Tally,
        id: &str,
        decoded: Result<(Version, T), RecordError>,
    ) -> Option<T> {
        let (version, state) = match decoded {
            Ok(d) => d,
            Err(e) => {
                tally.bad += 1;
                self.bad.report(kind.as_str(), id, &e);
                return None;
            }
        };
        self.saw_epoch(version.epoch);
        let (applied, kept) = match kind {
            Kind::Call => (&mut self.calls_applied, &mut tally.kept_calls),
            Kind::Turn => (&mut self.turn_applied, &mut tally.kept_turn),
            Kind::Session | Kind::Note => (&mut self.sessions_applied, &mut tally.kept_sessions),
        };
        if applied.admit(id, version) {
            return Some(state);
        }
        tally.rollbacks += 1;
        kept.insert(id.to_string());
        None
    }

    /// Opens one session record into `warm` if it may be applied.
    fn apply_session(
        &mut self,
        warm: &mut WarmCopy,
        tally: &mut Tally,
        id: &str,
        bytes: &[u8],
        now: Instant,
        now_ms: u64,
    ) {
        let decoded = self.codec.decode_session(bytes, id, now_ms).map(|d| {
            tally.ignored += d.ignored.0;
            (d.version, d.state)
        });
        if let Some(state) = self.admit(Kind::Session, tally, id, decoded) {
            warm.sessions.insert(id.to_string(), (state, now));
        }
    }

    /// Opens one call record into `warm` if it may be applied (a record
    /// of another tenant than the engine's calls is misplaced).
    #[cfg(feature = "ng")]
    fn apply_call(&mut self, warm: &mut WarmCopy, tally: &mut Tally, id: &str, bytes: &[u8]) {
        let decoded = self.codec.decode_call(bytes, id).and_then(|d| {
            // Format 1 named no tenant: the engine checks every session's.
            if d.tenant != self.call_tenant && !d.tenant.is_empty() {
                return Err(RecordError::Misplaced("tenant"));
            }
            Ok((d.version, d.state))
        });
        if let Some(state) = self.admit(Kind::Call, tally, id, decoded) {
            warm.calls.insert(id.to_string(), state);
        }
    }

    /// Without `ng` there are no calls to read: every call record is
    /// ignored.
    #[cfg(not(feature = "ng"))]
    fn apply_call(&mut self, _warm: &mut WarmCopy, _tally: &mut Tally, _id: &str, _bytes: &[u8]) {}

    /// Opens one TURN allocation record into `warm` if it may be applied
    /// (aged by the time since it was written).
    #[cfg(feature = "turn")]
    fn apply_turn(
        &mut self,
        warm: &mut WarmCopy,
        tally: &mut Tally,
        id: &str,
        bytes: &[u8],
        now: Instant,
        now_ms: u64,
    ) {
        let decoded = self.codec.decode_turn(bytes, id).map(|d| {
            let since = std::time::Duration::from_millis(now_ms.saturating_sub(d.written_unix_ms));
            (d.version, d.state.aged(since))
        });
        if let Some(state) = self.admit(Kind::Turn, tally, id, decoded) {
            warm.turn.insert(id.to_string(), (state, now));
        }
    }

    /// Without `turn` there are no allocations to read: every TURN record
    /// is ignored.
    #[cfg(not(feature = "turn"))]
    fn apply_turn(&mut self, _: &mut WarmCopy, _: &mut Tally, _: &str, _: &[u8], _: Instant, _: u64) {}

    fn finish(&self, warm: &WarmCopy, tally: Tally, applied: Option<Version>) {
        self.update(|s| {
            s.bad_records += tally.bad;
            s.rollbacks_refused += tally.rollbacks;
            s.ignored_names += tally.ignored;
            s.warm_sessions = warm.sessions.len();
            s.warm_calls = warm.calls.len();
            s.warm_turn = warm.turn.len();
            if applied.is_some() {
                s.last_write = applied;
            }
        });
    }
}

/// What reading a batch of records found.
#[derive(Default)]
struct Tally {
    bad: u64,
    rollbacks: u64,
    ignored: u64,
    /// Ids whose older record in Redis was refused: the copy keeps its own.
    kept_sessions: HashSet<String>,
    kept_calls: HashSet<String>,
    kept_turn: HashSet<String>,
}
