//! The rolling deploy's plan: the documents without and with the service,
//! the agree check and the pins at generation `P` (`docs/control.md`,
//! "Rolling deploy: generations").

use super::{at, Base, PlanError, Target};
use crate::config::{ClusterDoc, Member, Service};

/// A rolling deploy of one service from this node's document `cur`
/// (generation `G`): `old` is the content without it, `new` with it.
#[derive(Clone, Debug)]
pub struct DeployPlan {
    pub old: ClusterDoc,
    pub new: ClusterDoc,
    pub generation: u64,
}

/// A member whose document is neither of the deploy's two: it refuses.
#[derive(Clone, Debug, PartialEq)]
pub struct Differs {
    pub id: String,
    pub generation: u64,
    pub config_hash: String,
}

/// What every member has: the service (`has`, in member order) or not.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreed {
    pub has: Vec<bool>,
    /// Every member has it: only check, change nothing (`P` = `G`).
    pub everywhere: bool,
    /// The generation of the roll: `G + 1`, or `G` when `everywhere`.
    pub generation: u64,
}

impl DeployPlan {
    /// A service already in `cur` with the same settings stays as it is
    /// (deploying again resumes a stopped roll or re-checks a finished one).
    pub fn new(cur: &ClusterDoc, service: Service) -> Result<DeployPlan, PlanError> {
        let mut old = cur.clone();
        let new = match cur.services.iter().find(|s| s.name == service.name) {
            Some(e) => {
                if e.hosts != service.hosts
                    || e.port != service.port
                    || e.health.path != service.health.path
                {
                    return Err(PlanError::ServiceDiffers {
                        name: service.name,
                        hosts: e.hosts.clone(),
                        port: e.port,
                    });
                }
                old.services.retain(|s| s.name != service.name);
                cur.clone()
            }
            None => {
                let mut n = cur.clone();
                n.services.push(service);
                n
            }
        };
        Ok(DeployPlan {
            old,
            new,
            generation: cur.generation,
        })
    }

    /// Step 0: every member must have `old` or `new` at `G`; `read` is what
    /// each of `members` reported, in order. Err: the members that differ.
    pub fn agree(
        &self,
        members: &[Member],
        read: &[(u64, String)],
    ) -> Result<Agreed, Vec<Differs>> {
        let g = self.generation;
        let (old_hash, new_hash) = (at(&self.old, g).hash(), at(&self.new, g).hash());
        let differs: Vec<Differs> = members
            .iter()
            .zip(read)
            .filter(|(_, (mg, h))| *mg != g || (*h != old_hash && *h != new_hash))
            .map(|(m, (mg, h))| Differs {
                id: m.id.clone(),
                generation: *mg,
                config_hash: h.clone(),
            })
            .collect();
        if !differs.is_empty() {
            return Err(differs);
        }
        let has: Vec<bool> = read.iter().map(|(_, h)| *h == new_hash).collect();
        let everywhere = has.iter().all(|h| *h);
        Ok(Agreed {
            everywhere,
            generation: if everywhere { g } else { g + 1 },
            has,
        })
    }

    /// Step 1: every member keeps the content it has, as generation `P`,
    /// compare-and-set on what was read from it.
    pub fn pins(
        &self,
        members: &[Member],
        read: &[(u64, String)],
        a: &Agreed,
    ) -> Vec<(Target, ClusterDoc)> {
        members
            .iter()
            .zip(read)
            .zip(&a.has)
            .map(|((m, (g, h)), has)| {
                let target = Target {
                    member: m.clone(),
                    base: Base::Cas(*g, Some(h.clone())),
                    leave: false,
                };
                (
                    target,
                    at(if *has { &self.new } else { &self.old }, a.generation),
                )
            })
            .collect()
    }
}
