//! Which kernel routes are installed, per session, leg and slot, and
//! whether fresh counters were asked for: the shard's bookkeeping of the
//! fast path. Sessions only say which route a forwarded datagram would
//! establish ([`Session::offload_route`](crate::session::Session)); they
//! keep no kernel state. Empty unless the relay offloads.

use std::collections::HashMap;
use std::time::Instant;

use crate::offload::{OffloadRoute, Offloaded};
use crate::relay_port::RelayPort;
use crate::session::SessionId;

/// One session's routes (leg, then slot) and its pending refresh.
#[derive(Debug, Default)]
struct SessionRoutes {
    routes: [[Option<Offloaded>; 2]; 2],
    /// When fresh counters were asked for before the session may expire.
    refresh_asked: Option<Instant>,
}

impl SessionRoutes {
    /// The relay sockets of its routes.
    fn locals(&self) -> Vec<RelayPort> {
        self.routes.iter().flatten().flatten().map(|o| o.route.local).collect()
    }
}

/// The routes the kernel holds.
#[derive(Debug, Default)]
pub(super) struct OffloadTable {
    sessions: HashMap<SessionId, SessionRoutes>,
}

impl OffloadTable {
    /// Records `route` for `id`'s leg `side`, slot `slot`; `false` when
    /// exactly this route is installed already (nothing to ask the kernel).
    pub(super) fn install(&mut self, id: SessionId, side: usize, slot: usize, route: OffloadRoute) -> bool {
        let held = &mut self.sessions.entry(id).or_default().routes[side][slot];
        if held.is_some_and(|o| o.route == route) {
            return false;
        }
        *held = Some(Offloaded::new(route));
        true
    }

    /// Takes the routes of `id`'s leg `side`, with their side and slot.
    pub(super) fn take_leg(&mut self, id: SessionId, side: usize) -> Vec<(usize, usize, Offloaded)> {
        let Some(s) = self.sessions.get_mut(&id) else { return Vec::new() };
        let out =
            s.routes[side].iter_mut().enumerate().filter_map(|(slot, r)| r.take().map(|r| (side, slot, r))).collect();
        if s.routes.iter().flatten().all(Option::is_none) {
            self.sessions.remove(&id);
        }
        out
    }

    /// Takes every route of `id` (both legs), with their side and slot.
    pub(super) fn take(&mut self, id: SessionId) -> Vec<(usize, usize, Offloaded)> {
        let Some(s) = self.sessions.remove(&id) else { return Vec::new() };
        let mut out = Vec::new();
        for (side, slots) in s.routes.into_iter().enumerate() {
            out.extend(slots.into_iter().enumerate().filter_map(|(slot, r)| r.map(|r| (side, slot, r))));
        }
        out
    }

    /// The relay sockets of `id`'s routes.
    pub(super) fn locals(&self, id: SessionId) -> Vec<RelayPort> {
        self.sessions.get(&id).map_or_else(Vec::new, SessionRoutes::locals)
    }

    /// The route of `id`'s leg `side`, slot `slot`, if installed.
    pub(super) fn get_mut(&mut self, id: SessionId, side: usize, slot: usize) -> Option<&mut Offloaded> {
        self.sessions.get_mut(&id)?.routes[side][slot].as_mut()
    }

    /// Before `id` may expire: the relay sockets whose counters to ask for,
    /// once (`None`: it has no routes, or they were asked for already).
    pub(super) fn ask_refresh(&mut self, id: SessionId, now: Instant) -> Option<Vec<RelayPort>> {
        let s = self.sessions.get_mut(&id)?;
        if s.refresh_asked.is_some() {
            return None;
        }
        let locals = s.locals();
        if locals.is_empty() {
            return None;
        }
        s.refresh_asked = Some(now);
        Some(locals)
    }

    /// `id` has been active since: a later expiry asks again.
    pub(super) fn refreshed(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.refresh_asked = None;
        }
    }
}
