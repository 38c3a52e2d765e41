//! What the election loop does with the state machine's actions: adverts,
//! transitions (the follower's wish, hooks, state metrics) and reloads.
//! See `docs/election.md`, "The election thread" and "Settings and reloads".

use super::shell::Shell;
use super::ElectionSettings;
use crate::advert::SenderRole;
use crate::election::{Action, Input, Reason, Role};
use crate::follower::Want;

impl Shell {
    pub(super) async fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match *a {
                Action::SendAdvert { priority, .. } => {
                    self.send(priority, SenderRole::Master).await
                }
                Action::BecomeMaster { reason } => {
                    self.transition(Role::Master, reason, Want::Hold)
                }
                Action::BecomeBackup { reason } => {
                    self.transition(Role::Backup, reason, Want::Release)
                }
                Action::EnterFault { reason } => {
                    self.transition(Role::Fault, reason, Want::Release)
                }
                Action::Stop => {}
            }
        }
        let role = self.election.role();
        if role != self.view.role() {
            self.view.set_role(role);
            self.metrics.set_role(role);
        }
        self.metrics.priority.set(self.effective_priority());
    }

    /// The priority this node takes part with: 0 while it cannot serve
    /// (tracking) or after it resigned.
    fn effective_priority(&self) -> i64 {
        let e = &self.election;
        if e.can_serve() && e.role() != Role::Init {
            i64::from(e.priority().get())
        } else {
            0
        }
    }

    fn transition(&mut self, role: Role, reason: Reason, want: Want) {
        self.metrics.transitions.inc();
        // Gaps are measured within one stretch of being backup.
        self.last_master_advert = None;
        self.view.set_role(role);
        self.metrics.set_role(role);
        let priority = self.election.priority().get();
        tracing::info!(role = role.as_str(), reason = %reason, priority, "election state changed");
        self.want.send_replace(want);
        self.settings
            .hooks
            .run(role, self.settings.reserved_ip, priority);
    }

    pub(super) async fn reconfigure(&mut self, mut s: ElectionSettings) {
        self.wire.set_members(&s);
        if s.priority != self.settings.priority {
            let a = self
                .election
                .step(self.now(), Input::SetPriority(s.priority));
            self.apply(a.as_slice()).await;
            self.view.set_priority(s.priority.get());
        }
        if s.restart_only() != self.settings.restart_only() {
            tracing::warn!(
                "election timing, vrid, port or transport changed: takes effect at the next restart"
            );
        }
        s.keep_restart_only(&self.settings);
        self.settings = s;
        self.view.set_members(&self.settings.peers);
        let addrs: Vec<_> = self.settings.peers.iter().map(|p| p.addr).collect();
        self.liveness.retain(&addrs);
    }
}
