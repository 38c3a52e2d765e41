//! The pure half of every workflow: which members get what, based on
//! which generation and hash ([`targets`], [`converge_targets`]), how the
//! document changes (`edit`), the deploy's pin and roll plan (`deploy`) and
//! the `--plan` diff. No I/O, so every rule is unit-tested without daemons.
//! Why these rules (the commit point, one generation per roll):
//! `docs/control.md`.

mod deploy;
mod diff;
mod edit;

use std::collections::BTreeMap;

use crate::config::{ClusterDoc, Member};

pub use deploy::{Agreed, DeployPlan, Differs};
pub use diff::diff;
pub use edit::{add_member, inflight_through, inflight_to, make_top, member_mut, remove_service};

/// Why a change cannot be built from the current document; nothing is sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("no member {id:?} in the cluster; its members are {}", .ids.join(", "))]
    NoMember { id: String, ids: Vec<String> },
    #[error("member id {0:?} is taken; pick another or leave --id out")]
    IdTaken(String),
    #[error("--id {id:?} is invalid: {why}; {}", crate::names::RULE)]
    BadId { id: String, why: &'static str },
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

#[cfg(test)]
mod tests;
