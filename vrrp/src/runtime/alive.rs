//! The shell's side of liveness and of the start-up rule: every advert and
//! heartbeat heard feeds [`crate::liveness`]; changes reach the view, the
//! metric, the log and the proxy. See docs/election.md, "Liveness".

use std::time::Duration;

use super::shell::Shell;
use crate::advert::SenderRole;
use crate::election::{heartbeat_every_ms, Input, PeerIn};
use crate::liveness::{LivenessChange, PeerLiveness};
use crate::transport::AdvertHeard;

impl Shell {
    /// How often this node heartbeats while not master.
    pub(super) fn heartbeat_every(&self) -> Duration {
        let advert = u32::try_from(self.settings.advert_interval.as_millis()).unwrap_or(u32::MAX);
        Duration::from_millis(heartbeat_every_ms(advert).into())
    }

    /// Until the election's or the liveness tracker's next deadline.
    pub(super) fn next_wake(&self) -> Duration {
        let next = match (self.election.next_deadline(), self.liveness.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|d| Duration::from_millis(d.0.saturating_sub(self.now().0)))
            .unwrap_or(Duration::from_secs(3600))
    }

    pub(super) async fn peer_heard(&mut self, h: &AdvertHeard) {
        if !self.wire.heartbeats() {
            return; // vrrp3: backups are silent, so silence proves nothing
        }
        let now = self.now();
        if let Some(c) = self
            .liveness
            .heard(now, h.sender, h.priority, h.interval_ms)
        {
            self.liveness_changed(c);
        }
        if h.role != SenderRole::Master {
            let serving = h.role == SenderRole::Backup;
            let input = Input::PeerHeard(PeerIn {
                from: h.sender,
                priority: h.priority,
                serving,
            });
            let a = self.election.step(now, input);
            self.apply(a.as_slice()).await;
        }
    }

    pub(super) fn liveness_tick(&mut self) {
        for c in self.liveness.tick(self.now()) {
            self.liveness_changed(c);
        }
    }

    fn liveness_changed(&mut self, c: LivenessChange) {
        let members = self.view.members();
        let Some(peer) = members.iter().find(|p| p.addr == c.addr) else {
            return; // the transport only accepts members; a reload raced it
        };
        self.view.set_liveness(c.addr, c.now);
        let lost = c.now == PeerLiveness::Lost;
        self.metrics
            .lost
            .with_label_values(&[&peer.id])
            .set(i64::from(lost));
        if lost {
            tracing::warn!(member = %peer.id, addr = %c.addr, "member lost: not heard within its down interval");
        } else {
            tracing::info!(member = %peer.id, addr = %c.addr, "member heard");
        }
        (self.on_liveness)(&peer.id, c.now);
    }
}
