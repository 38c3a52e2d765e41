//! [`ElectionView`]: the election's state as other threads read it (admin
//! API, status, catch-up), written only by the election thread.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::advert::SenderRole;
use crate::election::Role;
use crate::liveness::PeerLiveness;
use crate::settings::ElectionPeer;

/// What one peer last told us.
#[derive(Debug, Clone)]
pub struct PeerSeen {
    pub role: SenderRole,
    pub priority: u8,
    /// `None` with `vrrp3` (its adverts carry no generation).
    pub generation: Option<u64>,
    pub config_hash: Option<[u8; 32]>,
    pub at: Instant,
}

/// State readable from other threads.
pub struct ElectionView {
    role: AtomicU8,
    priority: AtomicU8,
    held: AtomicBool,
    /// Master in a split brain: the holder it stepped back from.
    stepped_back_from: Mutex<Option<IpAddr>>,
    peers: Mutex<HashMap<IpAddr, PeerSeen>>,
    liveness: Mutex<HashMap<IpAddr, PeerLiveness>>,
    /// The other members as the cluster document lists them now (the
    /// follower maps a holder's droplet id to a member with it).
    members: Mutex<Arc<Vec<ElectionPeer>>>,
    /// When the view was made; [`ElectionView::beat`] stamps are relative to it.
    epoch: Instant,
    /// Milliseconds since `epoch` when the election loop last went round
    /// (its tracking tick, at least every 200 ms); `u64::MAX`: never.
    beat_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ElectionView {
    pub(crate) fn new(priority: u8, members: Vec<ElectionPeer>) -> ElectionView {
        ElectionView {
            role: AtomicU8::new(0),
            priority: AtomicU8::new(priority),
            held: AtomicBool::new(false),
            stepped_back_from: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            liveness: Mutex::new(HashMap::new()),
            members: Mutex::new(Arc::new(members)),
            epoch: Instant::now(),
            beat_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// The election loop went round (called on the election thread).
    pub(crate) fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the election loop went round within `stale`: the election
    /// thread and its runtime run (systemd's watchdog pings need it).
    pub fn loop_alive(&self, stale: Duration) -> bool {
        let beat = self.beat_ms.load(Ordering::Relaxed);
        beat != u64::MAX
            && (self.epoch.elapsed().as_millis() as u64).saturating_sub(beat)
                <= stale.as_millis() as u64
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            1 => Role::Backup,
            2 => Role::Master,
            3 => Role::Fault,
            _ => Role::Init,
        }
    }

    pub(crate) fn set_role(&self, r: Role) {
        let v = match r {
            Role::Init => 0,
            Role::Backup => 1,
            Role::Master => 2,
            Role::Fault => 3,
        };
        self.role.store(v, Ordering::Relaxed);
    }

    /// The configured priority (the member's, as last reloaded).
    pub fn priority(&self) -> u8 {
        self.priority.load(Ordering::Relaxed)
    }

    pub(crate) fn set_priority(&self, p: u8) {
        self.priority.store(p, Ordering::Relaxed);
    }

    /// Whether the driver last succeeded in making the Reserved IP point here.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    /// While master in a split brain: the holder we stepped back from.
    pub fn stepped_back_from(&self) -> Option<IpAddr> {
        if self.role() != Role::Master {
            return None;
        }
        *lock(&self.stepped_back_from)
    }

    pub(crate) fn set_stepped_back_from(&self, holder: Option<IpAddr>) {
        *lock(&self.stepped_back_from) = holder;
    }

    /// What the member at `addr` last told us, if anything.
    pub fn seen(&self, addr: IpAddr) -> Option<PeerSeen> {
        lock(&self.peers).get(&addr).cloned()
    }

    pub(crate) fn record(&self, addr: IpAddr, seen: PeerSeen) {
        lock(&self.peers).insert(addr, seen);
    }

    /// Whether this node hears the member at `addr` (`unknown` with `vrrp3`,
    /// whose backups are silent, and before it was ever heard).
    pub fn liveness(&self, addr: IpAddr) -> PeerLiveness {
        let l = lock(&self.liveness);
        l.get(&addr).copied().unwrap_or(PeerLiveness::Unknown)
    }

    pub(crate) fn set_liveness(&self, addr: IpAddr, l: PeerLiveness) {
        lock(&self.liveness).insert(addr, l);
    }

    pub(crate) fn members(&self) -> Arc<Vec<ElectionPeer>> {
        lock(&self.members).clone()
    }

    /// New member list: forgets peers no longer in it.
    pub(crate) fn set_members(&self, members: &[ElectionPeer]) {
        lock(&self.peers).retain(|a, _| members.iter().any(|p| p.addr == *a));
        lock(&self.liveness).retain(|a, _| members.iter().any(|p| p.addr == *a));
        *lock(&self.members) = Arc::new(members.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_is_alive_only_after_a_recent_beat() {
        let v = ElectionView::new(100, Vec::new());
        assert!(!v.loop_alive(Duration::from_secs(1)), "never went round");
        v.beat();
        assert!(v.loop_alive(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!v.loop_alive(Duration::ZERO), "a stale beat");
    }
}
