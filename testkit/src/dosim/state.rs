//! The simulated world: droplets (id, private IP, status), Reserved IPs
//! (holder, pending action), actions and the per-token rate limit, behind
//! one lock. Actions complete lazily: every access first settles those whose
//! delay has passed. Time is tokio's clock (`clock`), so a test on a paused
//! clock sees seconds-long actions and hour-long rate windows at once.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::clock::SimClock;
use super::ratelimit::RateLimits;
use super::{Call, Fault};

/// What assigning a Reserved IP to the droplet that already holds it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameDropletAssign {
    /// `422 {"id":"unprocessable_entity","message":"The reserved IP is already assigned to this droplet."}`.
    #[default]
    Unprocessable,
    /// An ordinary `201` action that completes as usual.
    NewAction,
    /// `422` with this message (the API's wording is not a contract: flipop
    /// notes the same 422 as for "the droplet already has a Reserved IP").
    Worded(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ActionKind {
    Assign(u64),
    Unassign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ActionStatus {
    InProgress,
    Completed,
    Errored,
}

#[derive(Clone, Debug)]
pub(super) struct SimAction {
    pub(super) id: u64,
    pub(super) ip: IpAddr,
    pub(super) kind: ActionKind,
    pub(super) status: ActionStatus,
    pub(super) will_error: bool,
    pub(super) started_at: SystemTime,
    pub(super) created: Instant,
    pub(super) done_at: Instant,
    pub(super) completed_at: Option<SystemTime>,
}

#[derive(Clone, Debug)]
pub(super) struct SimReservedIp {
    pub(super) holder: Option<u64>,
    pub(super) pending: Option<u64>,
    /// The holder before the last change, and when it changed (the
    /// metadata service may show the old one for a while).
    pub(super) previous: Option<u64>,
    pub(super) changed_at: Option<Instant>,
}

impl SimReservedIp {
    pub(super) fn new(holder: Option<u64>) -> SimReservedIp {
        SimReservedIp {
            holder,
            pending: None,
            previous: holder,
            changed_at: None,
        }
    }

    pub(super) fn set_holder(&mut self, holder: Option<u64>, now: Instant) {
        if holder != self.holder {
            self.previous = self.holder;
            self.holder = holder;
            self.changed_at = Some(now);
        }
    }

    /// The holder as a droplet's metadata service shows it, `lag` behind the API.
    pub(super) fn metadata_holder(&self, lag: Duration, now: Instant) -> Option<u64> {
        match self.changed_at {
            Some(t) if now.duration_since(t) < lag => self.previous,
            _ => self.holder,
        }
    }
}

pub(super) struct World {
    /// Tokens the API accepts (each has its own rate limit).
    pub(super) tokens: Vec<String>,
    pub(super) clock: SimClock,
    pub(super) limits: RateLimits,
    /// A new action answers 404 on its GET for this long (not queryable yet).
    pub(super) action_hidden_for: Duration,
    /// A completed action reports this status instead of `completed`.
    pub(super) completed_alias: Option<&'static str>,
    pub(super) droplets: BTreeMap<u64, Ipv4Addr>,
    /// Droplets whose `status` is not `active` (e.g. `off`).
    pub(super) droplet_status: BTreeMap<u64, &'static str>,
    pub(super) ips: BTreeMap<IpAddr, SimReservedIp>,
    pub(super) actions: BTreeMap<u64, SimAction>,
    pub(super) next_action: u64,
    pub(super) action_delay: Duration,
    /// When set, each action takes a random time in `action_delay..=max`.
    pub(super) action_delay_max: Option<Duration>,
    /// The metadata service shows holder changes this late.
    pub(super) metadata_lag: Duration,
    pub(super) same_droplet: SameDropletAssign,
    pub(super) faults: VecDeque<Fault>,
    pub(super) latency: Duration,
    pub(super) calls: VecDeque<Call>,
}

impl World {
    pub(super) fn status_of(&self, droplet: u64) -> &'static str {
        self.droplet_status
            .get(&droplet)
            .copied()
            .unwrap_or("active")
    }

    /// Finish every action whose time has come (lazily, on each access).
    pub(super) fn settle(&mut self, now: Instant) {
        for a in self.actions.values_mut() {
            if a.status != ActionStatus::InProgress || now < a.done_at {
                continue;
            }
            if a.will_error {
                a.status = ActionStatus::Errored;
            } else {
                a.status = ActionStatus::Completed;
                if let Some(r) = self.ips.get_mut(&a.ip) {
                    let holder = match a.kind {
                        ActionKind::Assign(d) => Some(d),
                        ActionKind::Unassign => None,
                    };
                    r.set_holder(holder, a.done_at);
                }
            }
            a.completed_at = Some(self.clock.wall(now));
            if let Some(r) = self.ips.get_mut(&a.ip) {
                if r.pending == Some(a.id) {
                    r.pending = None;
                }
            }
        }
    }
}

pub(super) struct SimShared {
    pub(super) world: Mutex<World>,
    /// TCP connections the API server accepted (keep-alive shows as few).
    pub(super) accepted: Arc<AtomicU64>,
    /// Woken after every API call is answered (see `DoSim::until_served`).
    pub(super) served: tokio::sync::Notify,
}

impl SimShared {
    pub(super) fn world(&self) -> MutexGuard<'_, World> {
        let mut g = self.world.lock().unwrap_or_else(|p| p.into_inner());
        g.settle(Instant::now());
        g
    }
}
