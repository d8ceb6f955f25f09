//! The active phase: the relay's changes pulled from its journal and
//! written to Redis in fenced, sealed batches, every session rewritten now
//! and then (counters), a full resynchronization after Redis lost data or
//! the queue overflowed; and stepping down when the lease is lost.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use relay_core::session::state::SessionState;
use relay_core::SessionId;

use crate::calls::{call_id, Call};
use crate::keeper::{KeeperState, LeaseKeeper};
use crate::node::{ActiveEnd, Node, Role};
use crate::record::{ChangeNote, Version};
use crate::store::{Batch, Holder, StoreError, MAX_BATCH};

/// What the active has yet to write: sessions and calls (`None`: ended),
/// with when each change was seen.
#[derive(Default)]
struct Pending {
    sessions: BTreeMap<SessionId, (Option<SessionState>, Instant)>,
    calls: BTreeMap<String, (Option<Call>, Instant)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.sessions.len() + self.calls.len()
    }
    fn clear(&mut self) {
        self.sessions.clear();
        self.calls.clear();
    }
    fn oldest(&self) -> Duration {
        let s = self.sessions.values().map(|(_, t)| t.elapsed());
        s.chain(self.calls.values().map(|(_, t)| t.elapsed())).max().unwrap_or_default()
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
        let mut register = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut flush, &mut counters, &mut register] {
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
                _ = counters.tick() => self.queue_everything(&mut pending).await,
                _ = register.tick() => {
                    self.relay.attach_fast_path();
                    self.register(Role::Active).await;
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

    /// Pulls the relay's (and the ng engine's) changes and writes what is
    /// pending: one replication round.
    async fn flush(&mut self, holder: &Holder, pending: &mut Pending, resync: &mut bool) -> Result<(), StoreError> {
        let round = self.commits.round_begins();
        let now = Instant::now();
        loop {
            let Ok(c) = self.relay.changes(10_000).await else { break };
            for s in c.changed {
                pending.sessions.insert(s.id, (Some(s), now));
            }
            for id in c.ended {
                pending.sessions.insert(id, (None, now));
            }
            *resync |= c.overflowed;
            if !c.more {
                break;
            }
        }
        let (set, ended) = self.calls.pull().await;
        for c in set {
            pending.calls.insert(call_id(&c).to_string(), (Some(c), now));
        }
        for id in ended {
            pending.calls.insert(id, (None, now));
        }
        if pending.len() > self.config.max_pending {
            tracing::warn!(queued = pending.len(), "replication queue full: a full resynchronization follows");
            pending.clear();
            *resync = true;
        }
        let r = if *resync { self.resync(holder, pending).await } else { self.write_pending(holder, pending).await };
        self.redis_result(&r);
        if r.is_ok() {
            self.commits.round_done(round);
            if *resync {
                *resync = false;
                self.update(|s| s.resyncs += 1);
            }
        }
        let (lag, depth, done) = (pending.oldest(), pending.len(), r.is_ok());
        self.update(|s| {
            s.queue_depth = depth;
            s.replication_lag = lag;
            s.replication_rounds += u64::from(done);
        });
        r
    }

    /// Writes the pending changes in batches, oldest ids first.
    async fn write_pending(&mut self, holder: &Holder, pending: &mut Pending) -> Result<(), StoreError> {
        while pending.len() > 0 {
            let ids: Vec<SessionId> = pending.sessions.keys().take(MAX_BATCH).copied().collect();
            let call_ids: Vec<String> =
                pending.calls.keys().take(MAX_BATCH.saturating_sub(ids.len())).cloned().collect();
            let mut batch = Batch::default();
            let version = Version { epoch: holder.epoch, seq: self.seq + 1 };
            for id in &ids {
                match &pending.sessions[id].0 {
                    Some(s) => batch.set.push((id.to_string(), self.codec.encode_session(s, version))),
                    None => batch.del.push(id.to_string()),
                }
            }
            for id in &call_ids {
                match &pending.calls[id].0 {
                    Some(c) => batch.calls_set.push((id.clone(), self.encode_call(c, version))),
                    None => batch.calls_del.push(id.clone()),
                }
            }
            self.write(holder, &batch, version).await?;
            for id in ids {
                pending.sessions.remove(&id);
            }
            for id in call_ids {
                pending.calls.remove(&id);
            }
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

    /// One fenced write with its sealed change note, as `version` (the
    /// next sequence number).
    async fn write(&mut self, holder: &Holder, batch: &Batch, version: Version) -> Result<(), StoreError> {
        let ids = |pairs: &[(String, String)]| pairs.iter().map(|(id, _)| id.clone()).collect();
        let note = ChangeNote {
            set: ids(&batch.set),
            del: batch.del.clone(),
            calls_set: ids(&batch.calls_set),
            calls_del: batch.calls_del.clone(),
        };
        let sealed = self.codec.encode_note(&note, version);
        self.store.write(holder, batch, &sealed, version).await?;
        self.seq = version.seq;
        self.update(|s| s.last_write = Some(version));
        Ok(())
    }

    /// Queues every session and call this node has, as they are now, for
    /// writing (counters refreshed, or a full resynchronization).
    async fn queue_everything(&self, pending: &mut Pending) {
        let now = Instant::now();
        let mut after = None;
        while let Ok(page) = self.relay.export(after, 10_000).await {
            for s in page.states {
                pending.sessions.insert(s.id, (Some(s), now));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        for c in self.calls.export().await {
            pending.calls.insert(call_id(&c).to_string(), (Some(c), now));
        }
    }

    /// Writes every session and call this node has and deletes every
    /// other record.
    async fn resync(&mut self, holder: &Holder, pending: &mut Pending) -> Result<(), StoreError> {
        pending.clear();
        self.queue_everything(pending).await;
        let live: HashSet<String> =
            pending.sessions.keys().map(|id| id.to_string()).chain(pending.calls.keys().cloned()).collect();
        self.write_pending(holder, pending).await?;
        let stale: Vec<String> = self.store.ids().await?.into_iter().filter(|id| !live.contains(id)).collect();
        let stale_calls: Vec<String> =
            self.store.call_ids().await?.into_iter().filter(|id| !live.contains(id)).collect();
        for chunk in stale.chunks(MAX_BATCH) {
            let v = Version { epoch: holder.epoch, seq: self.seq + 1 };
            self.write(holder, &Batch { del: chunk.to_vec(), ..Batch::default() }, v).await?;
        }
        for chunk in stale_calls.chunks(MAX_BATCH) {
            let v = Version { epoch: holder.epoch, seq: self.seq + 1 };
            self.write(holder, &Batch { calls_del: chunk.to_vec(), ..Batch::default() }, v).await?;
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
