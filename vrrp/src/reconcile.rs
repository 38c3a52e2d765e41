//! What a master does about who holds the Reserved IP, pure: claim again,
//! leave it, or (a split brain) yield while staying master. The follower
//! (`crate::follower`) gathers an [`Observation`] after each holder read and
//! acts on the [`Verdict`]; `tests/split_sim.rs` drives both. The rules and
//! why (no fire-and-forget, no ping-pong): `docs/election.md`, "Split-brain
//! rules".

use std::net::IpAddr;
use std::time::Duration;

/// Who holds the address, resolved against the cluster's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderSeen {
    /// It points at this node.
    Me,
    /// It points nowhere.
    Nobody,
    /// The driver cannot tell (`none`; `l2` cannot see other hosts).
    Unknown,
    /// It points at a machine that is not a member of the cluster.
    Outsider,
    /// It points at a member.
    Member {
        /// The member's election address.
        addr: IpAddr,
        /// How long ago we last heard that member (advert or heartbeat);
        /// `None`: never since this node started.
        heard_ago: Option<Duration>,
        /// The provider's view of that member's machine: `Some(true)` while
        /// running, `Some(false)` when stopped or gone, `None` unknown.
        running: Option<bool>,
    },
}

/// Everything the rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub seen: HolderSeen,
    /// A member heard within this window is reachable on the election
    /// channel. It must cover the slowest message a live member sends: a
    /// backup's heartbeat (1 s with the `dynia` transport), a few times over.
    pub heard_window: Duration,
    /// Whether a claim of ours succeeded since we last became master.
    pub claimed_since_master: bool,
    /// Probes in a row, while yielded to this holder, that found nothing
    /// serving behind the Reserved IP (a TCP connect to the holder's
    /// listener through the public network: the witness that crosses a VPC
    /// split). A successful probe resets it.
    pub unserved_probes: u32,
}

/// After this many probes in a row find nothing serving behind the Reserved
/// IP, the holder counts as gone (its droplet runs, its dynia does not).
pub const UNSERVED_PROBES: u32 = 3;

/// What the master does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Fine,
    /// Make the address point here again.
    Claim,
    /// Split brain: do not claim while this holds (stay master). Carries
    /// the holder's election address.
    Yield { holder: IpAddr },
}

impl Observation {
    fn hears(&self, heard_ago: Option<Duration>) -> bool {
        heard_ago.is_some_and(|d| d <= self.heard_window)
    }
}

/// The rules (`docs/election.md`, "Split-brain rules").
#[must_use]
pub fn decide(o: &Observation) -> Verdict {
    match o.seen {
        HolderSeen::Me | HolderSeen::Unknown => Verdict::Fine,
        HolderSeen::Nobody | HolderSeen::Outsider => Verdict::Claim,
        HolderSeen::Member {
            addr,
            heard_ago,
            running,
        } => {
            if o.hears(heard_ago)
                || running == Some(false)
                || !o.claimed_since_master
                || o.unserved_probes >= UNSERVED_PROBES
            {
                Verdict::Claim
            } else {
                Verdict::Yield { holder: addr }
            }
        }
    }
}

/// The backup's rule after stepping down with a claim of its own abandoned
/// or completed (`docs/election.md`, "Split-brain rules"): a late assign
/// may have landed here while another node is master, and with silent
/// backups (`vrrp3`) that master cannot hear us and yields. When a read of
/// the holder says the address points here and a master is heard, hand it
/// to that master (`Some(master)`); otherwise leave it.
#[must_use]
pub fn hand_to(seen: Option<HolderSeen>, master: Option<IpAddr>) -> Option<IpAddr> {
    match seen {
        Some(HolderSeen::Me) => master,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(3);

    fn member(heard_ago: Option<u64>, running: Option<bool>) -> HolderSeen {
        HolderSeen::Member {
            addr: "10.0.0.3".parse().unwrap(),
            heard_ago: heard_ago.map(Duration::from_millis),
            running,
        }
    }

    fn obs(seen: HolderSeen, claimed: bool) -> Observation {
        Observation {
            seen,
            heard_window: W,
            claimed_since_master: claimed,
            unserved_probes: 0,
        }
    }

    #[test]
    fn the_rules() {
        let holder = "10.0.0.3".parse().unwrap();
        assert_eq!(decide(&obs(HolderSeen::Me, true)), Verdict::Fine);
        assert_eq!(decide(&obs(HolderSeen::Unknown, false)), Verdict::Fine);
        assert_eq!(decide(&obs(HolderSeen::Nobody, true)), Verdict::Claim);
        assert_eq!(decide(&obs(HolderSeen::Outsider, true)), Verdict::Claim);
        // A member we hear: claim again (it knows we are master).
        assert_eq!(
            decide(&obs(member(Some(500), Some(true)), true)),
            Verdict::Claim
        );
        assert_eq!(
            decide(&obs(member(Some(3000), Some(true)), true)),
            Verdict::Claim
        );
        // Stopped machine: claim.
        assert_eq!(
            decide(&obs(member(None, Some(false)), true)),
            Verdict::Claim
        );
        // Our claim never succeeded: the address is where the last master left it.
        assert_eq!(
            decide(&obs(member(None, Some(true)), false)),
            Verdict::Claim
        );
        // Split: a running (or unknown) member we cannot hear took it after our claim.
        assert_eq!(
            decide(&obs(member(Some(3001), Some(true)), true)),
            Verdict::Yield { holder }
        );
        assert_eq!(
            decide(&obs(member(None, None), true)),
            Verdict::Yield { holder }
        );
    }

    #[test]
    fn a_holder_that_does_not_serve_counts_as_gone() {
        let holder = "10.0.0.3".parse().unwrap();
        let split = |n| Observation {
            unserved_probes: n,
            ..obs(member(None, Some(true)), true)
        };
        // Fewer than the limit: still a split (a probe may be lost).
        for n in 0..UNSERVED_PROBES {
            assert_eq!(decide(&split(n)), Verdict::Yield { holder });
        }
        // The holder's droplet runs but nothing serves behind the IP.
        assert_eq!(decide(&split(UNSERVED_PROBES)), Verdict::Claim);
        assert_eq!(decide(&split(UNSERVED_PROBES + 5)), Verdict::Claim);
    }

    #[test]
    fn a_backup_hands_a_late_claim_to_the_master_it_hears() {
        let m: IpAddr = "10.0.0.2".parse().unwrap();
        let table = [
            (Some(HolderSeen::Me), Some(m), Some(m)),
            // No master heard: nobody to hand it to (the election will
            // make this node master soon enough).
            (Some(HolderSeen::Me), None, None),
            (None, Some(m), None),
            (Some(HolderSeen::Nobody), Some(m), None),
            (Some(HolderSeen::Unknown), Some(m), None),
            (Some(HolderSeen::Outsider), Some(m), None),
            (Some(member(None, Some(true))), Some(m), None),
        ];
        for (seen, master, want) in table {
            assert_eq!(hand_to(seen, master), want, "{seen:?} {master:?}");
        }
    }
}
