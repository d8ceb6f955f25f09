//! The active phase: the relay's changes pulled from its journal and
//! written to Redis in fenced, sealed batches, every session rewritten now
//! and then (counters), a full resynchronization after Redis lost data or
//! the queue overflowed; and stepping down when the lease is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use relay_core::session::SessionState;
use relay_core::SessionId;

use crate::calls::{call_id, Call};
use crate::keeper::{KeeperState, LeaseKeeper};
use crate::node::{ActiveEnd, Node, Role};
use crate::record::{ChangeNote, Version};
use crate::store::{Batch, Holder, StoreError, MAX_BATCH};
use crate::turn::{turn_id, Allocation};

/// Unchanged records rewritten per round at most (counters, a
/// resynchronization): rounds stay short, so a request waiting for one is
/// answered in about a Redis round trip however large the table.
const REFRESH_PER_ROUND: usize = 4 * MAX_BATCH;

/// Sessions exported at once for the counters pass.
const COUNTERS_PAGE: usize = 10_000;

/// What the active has yet to write.
#[derive(Default)]
struct Pending {
    /// Changes from the journals (`None`: ended), with when each was seen:
    /// all written in every round, before the round counts as done.
    sessions: BTreeMap<String, (Option<SessionState>, Instant)>,
    calls: BTreeMap<String, (Option<Call>, Instant)>,
    /// TURN allocations (each change carries the whole allocation: they
    /// are few and small, so they need no separate rewrites).
    turn: BTreeMap<String, (Option<Allocation>, Instant)>,
    /// Records rewritten as they are (counters, a resynchronization): a
    /// bounded share per round, after the changes.
    refresh_sessions: BTreeMap<String, SessionState>,
    refresh_calls: BTreeMap<String, Call>,
    /// A pass rewriting every session's counters, page by page: where the
    /// next page starts (`Some(None)`: at the beginning), or no pass.
    counters_pass: Option<Option<SessionId>>,
}

impl Pending {
    fn changed_session(&mut self, id: String, state: Option<SessionState>, now: Instant) {
        self.refresh_sessions.remove(&id);
        self.sessions.insert(id, (state, now));
    }

    fn changed_call(&mut self, id: String, call: Option<Call>, now: Instant) {
        self.refresh_calls.remove(&id);
        self.calls.insert(id, (call, now));
    }

    fn changed_turn(&mut self, id: String, allocation: Option<Allocation>, now: Instant) {
        self.turn.insert(id, (allocation, now));
    }

    /// Changes waiting.
    fn len(&self) -> usize {
        self.sessions.len() + self.calls.len() + self.turn.len()
    }

    /// Changes and rewrites waiting.
    fn depth(&self) -> usize {
        self.len() + self.refresh_sessions.len() + self.refresh_calls.len()
    }

    fn clear(&mut self) {
        *self = Pending::default();
    }

    fn oldest(&self) -> Duration {
        let s = self.sessions.values().map(|(_, t)| t.elapsed());
        let turn = self.turn.values().map(|(_, t)| t.elapsed());
        s.chain(self.calls.values().map(|(_, t)| t.elapsed())).chain(turn).max().unwrap_or_default()
    }
}

impl Node {
    /// Active: replicates while `keeper` renews the lease; returns when the
    /// lease is lost or the node is asked to stop.
    pub(crate) async fn active(&mut self, holder: &Holder, mut keeper: LeaseKeeper) -> ActiveEnd {
        let mut pending = Pending::default();
        let mut resync = true;
        let mut seen = KeeperState { redis_up: true, ..KeeperState::default() };
        let mut flush = tokio::time::interval(self.config.flush_interval);
        let mut counters = tokio::time::interval(self.config.counters_interval);
        let mut attach = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut flush, &mut counters, &mut attach] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut stop = self.stop.clone();
        let commits = self.commits.clone();
        loop {
            tokio::select! {
                st = keeper.changed() => {
                    let failed = st.failures - seen.failures;
                    self.update(|s| {
                        s.redis_up = st.redis_up;
                        s.redis_errors += failed;
                    });
                    if st.reacquired > seen.reacquired {
                        tracing::warn!(epoch = holder.epoch, "lease re-acquired after redis lost it: resynchronizing");
                        resync = true;
                    }
                    seen = st;
                    if st.lost {
                        return ActiveEnd::Lost;
                    }
                }
                _ = flush.tick() => {
                    if let Err(StoreError::Fenced) = self.flush(holder, &mut pending, &mut resync).await {
                        return ActiveEnd::Lost;
                    }
                }
                // A request waits to be acknowledged: write now.
                _ = commits.wanted() => {
                    if let Err(StoreError::Fenced) = self.flush(holder, &mut pending, &mut resync).await {
                        return ActiveEnd::Lost;
                    }
                }
                // Every session's counters, a page per round from now on.
                _ = counters.tick() => {
                    pending.counters_pass.get_or_insert(None);
                }
                // The kernel fast path follows the service address here
                // (a hook may move it after the takeover).
                _ = attach.tick() => {
                    self.relay.attach_fast_path();
                }
                _ = stop.changed() => break,
            }
        }
        let hand_over = self.stopping().unwrap_or(false);
        let _ = self.flush(holder, &mut pending, &mut resync).await;
        self.gate.set_ready(false);
        self.commits.end();
        // No renewal may follow the release (it would take the lease back).
        keeper.stop().await;
        if hand_over {
            let r = self.store.release(holder).await;
            self.redis_result(&r);
        }
        ActiveEnd::Stop
    }

    /// Pulls the relay's (and the ng engine's) changes and writes them,
    /// then a share of the rewrites: one replication round.
    async fn flush(&mut self, holder: &Holder, pending: &mut Pending, resync: &mut bool) -> Result<(), StoreError> {
        let round = self.commits.round_begins();
        let now = Instant::now();
        loop {
            let Ok(c) = self.relay.changes(10_000).await else { break };
            for s in c.changed {
                pending.changed_session(s.id.to_string(), Some(s), now);
            }
            for id in c.ended {
                pending.changed_session(id.to_string(), None, now);
            }
            *resync |= c.overflowed;
            if !c.more {
                break;
            }
        }
        let (set, ended) = self.calls.pull().await;
        for c in set {
            pending.changed_call(call_id(&c).to_string(), Some(c), now);
        }
        for id in ended {
            pending.changed_call(id, None, now);
        }
        let (set, ended) = self.turn.pull();
        for a in set {
            pending.changed_turn(turn_id(&a), Some(a), now);
        }
        for id in ended {
            pending.changed_turn(id, None, now);
        }
        if pending.len() > self.config.max_pending {
            tracing::warn!(queued = pending.len(), "replication queue full: a full resynchronization follows");
            pending.clear();
            *resync = true;
        }
        let mut r = Ok(());
        if *resync {
            r = self.resync(pending).await;
        }
        if r.is_ok() {
            r = self.write_changes(holder, pending).await;
        }
        self.redis_result(&r);
        if r.is_ok() {
            self.commits.round_done(round);
            if *resync {
                *resync = false;
                self.update(|s| s.resyncs += 1);
            }
            if pending.refresh_sessions.len() < REFRESH_PER_ROUND {
                self.next_counters_page(pending).await;
            }
            let rewritten = self.write_refresh(holder, pending).await;
            self.redis_result(&rewritten);
            r = rewritten;
        }
        let (lag, depth, done) = (pending.oldest(), pending.depth(), r.is_ok());
        self.update(|s| {
            s.queue_depth = depth;
            s.replication_lag = lag;
            s.replication_rounds += u64::from(done);
        });
        r
    }

    /// Writes every pending change in batches, oldest ids first.
    async fn write_changes(&mut self, holder: &Holder, pending: &mut Pending) -> Result<(), StoreError> {
        while pending.len() > 0 {
            let ids: Vec<String> = pending.sessions.keys().take(MAX_BATCH).cloned().collect();
            let call_ids: Vec<String> =
                pending.calls.keys().take(MAX_BATCH.saturating_sub(ids.len())).cloned().collect();
            let turn_ids: Vec<String> =
                pending.turn.keys().take(MAX_BATCH.saturating_sub(ids.len() + call_ids.len())).cloned().collect();
            let mut batch = Batch::default();
            let version = Version { epoch: holder.epoch, seq: self.seq + 1 };
            for id in &ids {
                match &pending.sessions[id].0 {
                    Some(s) => batch.set.push((id.clone(), self.codec.encode_session(s, version))),
                    None => batch.del.push(id.clone()),
                }
            }
            for id in &call_ids {
                match &pending.calls[id].0 {
                    Some(c) => batch.calls_set.push((id.clone(), self.encode_call(c, version))),
                    None => batch.calls_del.push(id.clone()),
                }
            }
            for id in &turn_ids {
                match &pending.turn[id].0 {
                    Some(a) => batch.turn_set.push((id.clone(), self.encode_turn(a, version))),
                    None => batch.turn_del.push(id.clone()),
                }
            }
            self.write(holder, &batch, version).await?;
            for id in ids {
                pending.sessions.remove(&id);
            }
            for id in call_ids {
                pending.calls.remove(&id);
            }
            for id in turn_ids {
                pending.turn.remove(&id);
            }
        }
        Ok(())
    }

    /// Rewrites up to [`REFRESH_PER_ROUND`] unchanged records.
    async fn write_refresh(&mut self, holder: &Holder, pending: &mut Pending) -> Result<(), StoreError> {
        let mut left = REFRESH_PER_ROUND;
        while left > 0 && pending.refresh_sessions.len() + pending.refresh_calls.len() > 0 {
            let n = left.min(MAX_BATCH);
            let ids: Vec<String> = pending.refresh_sessions.keys().take(n).cloned().collect();
            let call_ids: Vec<String> = pending.refresh_calls.keys().take(n - ids.len()).cloned().collect();
            let version = Version { epoch: holder.epoch, seq: self.seq + 1 };
            let batch = Batch {
                set: ids
                    .iter()
                    .map(|id| (id.clone(), self.codec.encode_session(&pending.refresh_sessions[id], version)))
                    .collect(),
                calls_set: call_ids
                    .iter()
                    .map(|id| (id.clone(), self.encode_call(&pending.refresh_calls[id], version)))
                    .collect(),
                ..Batch::default()
            };
            self.write(holder, &batch, version).await?;
            for id in &ids {
                pending.refresh_sessions.remove(id);
            }
            for id in &call_ids {
                pending.refresh_calls.remove(id);
            }
            left -= ids.len() + call_ids.len();
        }
        Ok(())
    }

    #[cfg(feature = "ng")]
    fn encode_call(&self, c: &Call, version: Version) -> String {
        self.codec.encode_call(c, &self.call_tenant, version)
    }

    #[cfg(not(feature = "ng"))]
    fn encode_call(&self, c: &Call, _version: Version) -> String {
        match *c {}
    }

    #[cfg(feature = "turn")]
    fn encode_turn(&self, a: &Allocation, version: Version) -> String {
        self.codec.encode_turn(a, version)
    }

    #[cfg(not(feature = "turn"))]
    fn encode_turn(&self, a: &Allocation, _version: Version) -> String {
        match *a {}
    }

    /// One fenced write with its sealed change note, as `version` (the
    /// next sequence number).
    async fn write(&mut self, holder: &Holder, batch: &Batch, version: Version) -> Result<(), StoreError> {
        let ids = |pairs: &[(String, String)]| pairs.iter().map(|(id, _)| id.clone()).collect();
        let note = ChangeNote {
            set: ids(&batch.set),
            del: batch.del.clone(),
            calls_set: ids(&batch.calls_set),
            calls_del: batch.calls_del.clone(),
            turn_set: ids(&batch.turn_set),
            turn_del: batch.turn_del.clone(),
        };
        let sealed = self.codec.encode_note(&note, version);
        self.store.write(holder, batch, &sealed, version).await?;
        self.seq = version.seq;
        self.update(|s| s.last_write = Some(version));
        Ok(())
    }

    /// Queues the next page of the counters pass to be rewritten (those
    /// with a change pending are written with it).
    async fn next_counters_page(&self, pending: &mut Pending) {
        let Some(after) = pending.counters_pass else { return };
        let Ok(page) = self.relay.export(after, COUNTERS_PAGE).await else {
            pending.counters_pass = None; // the relay stopped: nothing to rewrite
            return;
        };
        for s in page.states {
            let id = s.id.to_string();
            if !pending.sessions.contains_key(&id) {
                pending.refresh_sessions.insert(id, s);
            }
        }
        pending.counters_pass = page.next.map(Some);
    }

    /// Queues every session and call this node has, as they are now, to be
    /// rewritten (those with a change pending are written with it).
    async fn queue_everything(&self, pending: &mut Pending) {
        pending.counters_pass = Some(None);
        while pending.counters_pass.is_some() {
            self.next_counters_page(pending).await;
        }
        for c in self.calls.export().await {
            let id = call_id(&c).to_string();
            if !pending.calls.contains_key(&id) {
                pending.refresh_calls.insert(id, c);
            }
        }
    }

    /// A full resynchronization: every session and call this node has is
    /// queued to be rewritten, and every other record in Redis (ended while
    /// Redis was away, not resumed in a takeover, or not ours) deleted with
    /// the changes.
    async fn resync(&mut self, pending: &mut Pending) -> Result<(), StoreError> {
        pending.refresh_sessions.clear();
        pending.refresh_calls.clear();
        self.queue_everything(pending).await;
        let now = Instant::now();
        let live = |p: &Pending, id: &String| p.sessions.contains_key(id) || p.refresh_sessions.contains_key(id);
        for id in self.store.ids().await? {
            if !live(pending, &id) {
                pending.changed_session(id, None, now);
            }
        }
        let live_call = |p: &Pending, id: &String| p.calls.contains_key(id) || p.refresh_calls.contains_key(id);
        for id in self.store.call_ids().await? {
            if !live_call(pending, &id) {
                pending.changed_call(id, None, now);
            }
        }
        // TURN allocations: every one rewritten, every other deleted.
        for a in self.turn.export() {
            let id = turn_id(&a);
            pending.turn.entry(id).or_insert((Some(a), now));
        }
        for id in self.store.turn_ids().await? {
            if !pending.turn.contains_key(&id) {
                pending.changed_turn(id, None, now);
            }
        }
        Ok(())
    }

    /// After losing the lease: stop serving every session (the new active
    /// serves them now) without replicating their end, and run the
    /// step-down hook (e.g. to give the service address up).
    pub(crate) async fn step_down(&mut self) {
        self.gate.set_ready(false);
        self.commits.end();
        let mut ids = Vec::new();
        let mut after = None;
        while let Ok(page) = self.relay.list(after, 10_000).await {
            ids.extend(page.sessions.iter().map(|s| s.id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        for id in ids {
            let _ = self.relay.discard(id).await;
        }
        // Their ends are not ours to write.
        while self.relay.changes(usize::MAX).await.is_ok_and(|c| c.more) {}
        self.calls.forget();
        self.turn.forget();
        self.watch.reset();
        let epoch = self.status.borrow().epoch.unwrap_or(0);
        if let Some(hook) = self.config.stepdown_hook.clone() {
            self.run_hook("stepdown", &hook, epoch);
        }
        self.update(|s| {
            s.role = Role::Standby;
            s.epoch = None;
            s.demotions += 1;
            s.queue_depth = 0;
        });
    }
}
