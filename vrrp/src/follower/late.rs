//! After a step-down: did a claim of ours land late, here, while another
//! node is master? With silent backups (`vrrp3`) that master cannot hear us
//! and yields, so nobody would move the address; this node hands it over
//! ([`crate::reconcile::hand_to`]). See `docs/election.md`, "Split-brain
//! rules".

use super::*;

impl Follower {
    /// Leaving master (or never having been): schedule the late reads when
    /// a claim was asked for during the mastership that ends.
    pub(super) fn after_step_down(&mut self) {
        if std::mem::take(&mut self.claim_issued) && self.cfg.late_reads > 0 {
            self.late = Some(Late {
                left: self.cfg.late_reads,
                gap: self.cfg.late_first,
            });
        }
    }

    /// A late read's answer: hand the address to the master we hear when it
    /// points here; the next read (if any) comes twice as late.
    pub(super) fn late_read(
        &mut self,
        now: Millis,
        seen: Option<HolderSeen>,
        master: Option<IpAddr>,
    ) {
        if self.busy != Some(Busy::Late) {
            return;
        }
        self.late = self.late.and_then(|l| {
            (l.left > 1).then(|| Late {
                left: l.left - 1,
                gap: l.gap.saturating_mul(2),
            })
        });
        let Some(member) = reconcile::hand_to(seen, master).filter(|_| self.want != Want::Hold)
        else {
            return self.done(now, Busy::Late);
        };
        tracing::warn!(%member, "the reserved ip points here but this node is not master (a claim landed late); handing it to the master");
        self.busy = Some(Busy::Hand);
        self.out.push(FollowerOutput::HandTo { member });
    }
}
