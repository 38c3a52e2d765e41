//! The pure half of every workflow: which members get what, based on
//! which generation and hash, and how the document changes. No I/O, so
//! every rule is unit-tested here without daemons. Why these rules (the
//! commit point, pin and roll at one generation): `docs/control.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::{ClusterDoc, Member, MemberState, Service};

/// Why a change cannot be built from the current document; nothing is sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("no member {id:?} in the cluster; its members are {}", .ids.join(", "))]
    NoMember { id: String, ids: Vec<String> },
    #[error("member id {0:?} is taken; pick another or leave --id out")]
    IdTaken(String),
    #[error("no free two-word id left")]
    NoFreeId,
    #[error("{ip} is already the private IP of member {id}")]
    IpTaken { ip: std::net::IpAddr, id: String },
    #[error("another member has priority 254; lower it first")]
    PriorityCeiling,
    #[error("there is no service {0:?}; `dynia status` lists them")]
    NoService(String),
    #[error("service {name:?} exists with other settings (hosts {hosts:?}, port {port}); `dynia undeploy {name}` first")]
    ServiceDiffers {
        name: String,
        hosts: Vec<String>,
        port: u16,
    },
}

/// How one member's base generation is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Base {
    /// Compare-and-set on this generation and, when given, this hash: the
    /// member refuses if it has anything else than what the command read.
    Cas(u64, Option<String>),
    /// Whatever the member reports now: only a joining node, whose own
    /// one-member document nothing else depends on.
    Current,
    /// The member could not be read; nothing is sent to it.
    Unreachable(String),
}

/// One member to send to.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub member: Member,
    pub base: Base,
    pub leave: bool,
}

/// What a command read from one member: its generation and hash, or why not.
pub type Read = Result<(u64, String), String>;

/// Members of `new` (with `base_of`) then those of `cur` missing from `new`
/// (leaving, with `gone_base`).
fn fan_out(
    cur: &ClusterDoc,
    new: &ClusterDoc,
    base_of: impl Fn(&Member) -> Base,
    gone_base: impl Fn(&Member) -> Base,
) -> Vec<Target> {
    let staying = new.members.iter().map(|m| Target {
        member: m.clone(),
        base: base_of(m),
        leave: false,
    });
    let gone = cur
        .members
        .iter()
        .filter(|m| new.member(&m.id).is_none())
        .map(|m| Target {
            member: m.clone(),
            base: gone_base(m),
            leave: true,
        });
    staying.chain(gone).collect()
}

/// Targets for a change from `cur` to `new`: every member of either, in
/// `new`'s order then the removed ones; members of `cur` compare-and-set on
/// `cur`'s generation and hash, new ones use their current generation.
pub fn targets(cur: &ClusterDoc, new: &ClusterDoc) -> Vec<Target> {
    let cas = Base::Cas(cur.generation, Some(cur.hash()));
    fan_out(
        cur,
        new,
        |m| match cur.member(&m.id) {
            Some(_) => cas.clone(),
            None => Base::Current,
        },
        |_| cas.clone(),
    )
}

/// Targets for putting `doc` on every member of `doc` and of `cur` (those
/// not in `doc` leave), each compare-and-set on the generation **and** hash
/// the command read from it (`read`, by id): a member changed by someone
/// else since refuses. A member that could not be read gets nothing.
pub fn converge_targets(
    cur: &ClusterDoc,
    doc: &ClusterDoc,
    read: &BTreeMap<String, Read>,
) -> Vec<Target> {
    let base = |m: &Member| match read.get(&m.id) {
        Some(Ok((g, h))) => Base::Cas(*g, Some(h.clone())),
        Some(Err(e)) => Base::Unreachable(e.clone()),
        None => Base::Unreachable("not read".into()),
    };
    fan_out(cur, doc, base, base)
}

/// The generation `sync`/`rollback` put everywhere: one above every
/// generation read and both documents'.
pub fn converge_generation(
    cur: &ClusterDoc,
    content: &ClusterDoc,
    read: &BTreeMap<String, Read>,
) -> u64 {
    read.values()
        .flatten()
        .map(|(g, _)| *g)
        .fold(cur.generation.max(content.generation), u64::max)
        + 1
}

/// `doc` at another generation: the same content.
pub fn at(doc: &ClusterDoc, generation: u64) -> ClusterDoc {
    let mut d = doc.clone();
    d.generation = generation;
    d
}

/// The member `id` of `doc`, to edit.
pub fn member_mut<'a>(doc: &'a mut ClusterDoc, id: &str) -> Result<&'a mut Member, PlanError> {
    let ids: Vec<String> = doc.members.iter().map(|m| m.id.clone()).collect();
    doc.members
        .iter_mut()
        .find(|m| m.id == id)
        .ok_or_else(|| PlanError::NoMember { id: id.into(), ids })
}

/// `node add`: appends a member (its id given or generated, its priority
/// given or 10 below the lowest); returns its id.
pub fn add_member(
    doc: &mut ClusterDoc,
    mut m: Member,
    id: Option<String>,
    priority: Option<u8>,
) -> Result<String, PlanError> {
    let taken: Vec<&str> = doc.members.iter().map(|m| m.id.as_str()).collect();
    m.id = match id {
        Some(id) if taken.contains(&id.as_str()) => return Err(PlanError::IdTaken(id)),
        Some(id) => id,
        None => crate::names::generate(&taken).ok_or(PlanError::NoFreeId)?,
    };
    if let Some(o) = doc.members.iter().find(|o| o.private_ip == m.private_ip) {
        return Err(PlanError::IpTaken {
            ip: m.private_ip,
            id: o.id.clone(),
        });
    }
    let lowest = doc.members.iter().map(|m| m.priority).min().unwrap_or(160);
    m.priority = priority.unwrap_or(lowest.saturating_sub(10).max(1));
    m.state = MemberState::Active;
    let id = m.id.clone();
    doc.members.push(m);
    Ok(id)
}

/// `node make-active`: `id`'s priority one above every other member's.
pub fn make_top(doc: &mut ClusterDoc, id: &str) -> Result<(), PlanError> {
    let top = doc
        .members
        .iter()
        .filter(|m| m.id != id)
        .map(|m| m.priority)
        .max()
        .unwrap_or(0);
    if top >= 254 {
        return Err(PlanError::PriorityCeiling);
    }
    let m = member_mut(doc, id)?;
    if m.priority <= top {
        m.priority = top + 1;
    }
    Ok(())
}

/// `undeploy`: the document without service `name`.
pub fn remove_service(doc: &mut ClusterDoc, name: &str) -> Result<(), PlanError> {
    let before = doc.services.len();
    doc.services.retain(|s| s.name != name);
    if doc.services.len() == before {
        return Err(PlanError::NoService(name.into()));
    }
    Ok(())
}

/// A line diff of two texts (`-` removed, `+` added, ` ` kept).
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

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

/// Requests in flight to member `id` that a status document reports.
pub fn inflight_to(s: &crate::wire::Status, id: &str) -> usize {
    s.services
        .iter()
        .flat_map(|svc| svc.members.iter())
        .filter(|x| x.id == id)
        .map(|x| x.inflight)
        .sum()
}

/// Requests in flight through a node's proxy (to any member).
pub fn inflight_through(s: &crate::wire::Status) -> usize {
    s.services
        .iter()
        .flat_map(|svc| svc.members.iter())
        .map(|x| x.inflight)
        .sum()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
