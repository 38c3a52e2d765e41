//! Member liveness: when this node last heard each member (a master's advert
//! or a backup's heartbeat), judged against that member's own down interval.
//! Pure: the shell feeds [`Liveness::heard`] and [`Liveness::tick`] with a
//! clock. Why and how the proxy uses it: docs/election.md, "Liveness".

use std::collections::HashMap;
use std::net::IpAddr;

use crate::election::{master_down_interval_ms, Millis, MIN_ADVERT_INTERVAL_MS};

/// The slowest period a member is judged by, in ms (a heartbeat of a node
/// older than the fast heartbeats, and a first message with no gap yet).
pub const SLOWEST_PERIOD_MS: u32 = 1_000;

/// What this node knows of one member's election traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerLiveness {
    /// Not heard since this node started: judged by its health checks alone.
    Unknown,
    /// Heard within its down interval.
    Heard,
    /// Silent for longer than its down interval.
    Lost,
}

impl PeerLiveness {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerLiveness::Unknown => "unknown",
            PeerLiveness::Heard => "heard",
            PeerLiveness::Lost => "lost",
        }
    }
}

/// One member's liveness changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessChange {
    pub addr: IpAddr,
    pub now: PeerLiveness,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    last: Millis,
    /// The period it is judged by: the larger of what it declares and the
    /// last gap seen, never above [`SLOWEST_PERIOD_MS`].
    period_ms: u32,
    priority: u8,
    lost: bool,
}

impl Peer {
    fn deadline(&self) -> Millis {
        self.last.add_ms(master_down_interval_ms(
            self.priority.max(1),
            self.period_ms,
        ))
    }
}

/// Every member's liveness (at most the cluster's 32 members).
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    peers: HashMap<IpAddr, Peer>,
}

impl Liveness {
    /// `addr` was heard at `now`, declaring `interval_ms` as its period.
    pub fn heard(
        &mut self,
        now: Millis,
        addr: IpAddr,
        priority: u8,
        interval_ms: u32,
    ) -> Option<LivenessChange> {
        let declared = interval_ms.clamp(MIN_ADVERT_INTERVAL_MS, SLOWEST_PERIOD_MS);
        let (period_ms, was_lost, known) = match self.peers.get(&addr) {
            Some(p) => {
                let gap = u32::try_from(now.ms_since(p.last)).unwrap_or(u32::MAX);
                (declared.max(gap).min(SLOWEST_PERIOD_MS), p.lost, true)
            }
            None => (SLOWEST_PERIOD_MS, false, false),
        };
        let peer = Peer {
            last: now,
            period_ms,
            priority,
            lost: false,
        };
        self.peers.insert(addr, peer);
        (was_lost || !known).then_some(LivenessChange {
            addr,
            now: PeerLiveness::Heard,
        })
    }

    /// Members whose down interval has passed by `now` become lost.
    pub fn tick(&mut self, now: Millis) -> Vec<LivenessChange> {
        let mut out = Vec::new();
        for (addr, p) in &mut self.peers {
            if !p.lost && now >= p.deadline() {
                p.lost = true;
                out.push(LivenessChange {
                    addr: *addr,
                    now: PeerLiveness::Lost,
                });
            }
        }
        out
    }

    /// When [`Liveness::tick`] must run next.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.peers
            .values()
            .filter(|p| !p.lost)
            .map(Peer::deadline)
            .min()
    }

    pub fn get(&self, addr: IpAddr) -> PeerLiveness {
        match self.peers.get(&addr) {
            None => PeerLiveness::Unknown,
            Some(p) if p.lost => PeerLiveness::Lost,
            Some(_) => PeerLiveness::Heard,
        }
    }

    /// Forgets members no longer in the cluster.
    pub fn retain(&mut self, members: &[IpAddr]) {
        self.peers.retain(|a, _| members.contains(a));
    }
}

#[cfg(test)]
mod tests;
