//! What a cluster-wide change did on each member, as values: the binary
//! turns them into the per-member table and the exit status. The meaning of
//! each outcome (commit point, conflict, catch-up): `docs/control.md`.

use std::net::SocketAddr;
use std::time::Duration;

/// One member's outcome of a fan-out or of a rolling deploy.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberOutcome {
    /// It took the document (a higher generation, or a same-generation replace).
    Applied { generation: u64 },
    /// It had exactly this document already.
    AlreadyAt { generation: u64 },
    /// It took the document without itself; its daemon resigns and stops.
    Leaving,
    /// It refused the compare-and-set: it has `generation`/`config_hash`,
    /// the change was based on `based_on`.
    Conflict {
        generation: u64,
        config_hash: String,
        based_on: u64,
    },
    /// Not sent: the change lost at the commit point, nothing was changed.
    NotSent,
    /// It answered with an error other than a conflict (invalid there, ...).
    Refused { error: String },
    /// It could not be reached (or did not answer in time).
    Unreachable { error: String },
    /// The member being removed could not be reached; removed without it.
    RemovedUnreachable { error: String },
    /// Deploy: it had the service already and it is UP there.
    AlreadyHad { service: String },
    /// Deploy: it got the service and the service turned UP there.
    Rolled { service: String },
    /// Deploy: the same-generation replace was not applied.
    NotApplied { error: String },
    /// Deploy: the service did not turn UP in time (last health seen);
    /// `rollback` is `None` when nothing was changed on it, else whether
    /// putting the content without the service back worked.
    NotUp {
        service: String,
        timeout: Duration,
        health: String,
        rollback: Option<Result<(), String>>,
    },
    /// Deploy: not reached, the roll stopped at an earlier member.
    NotReached,
}

impl MemberOutcome {
    /// Whether the member ended where the change wanted it.
    pub fn ok(&self) -> bool {
        matches!(
            self,
            MemberOutcome::Applied { .. }
                | MemberOutcome::AlreadyAt { .. }
                | MemberOutcome::Leaving
                | MemberOutcome::RemovedUnreachable { .. }
                | MemberOutcome::AlreadyHad { .. }
                | MemberOutcome::Rolled { .. }
        )
    }
}

/// One member's line.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberReport {
    pub id: String,
    pub addr: SocketAddr,
    pub outcome: MemberOutcome,
}

/// A fan-out's result: one line per member, in the order sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub members: Vec<MemberReport>,
    /// Refused at the commit point: nothing was changed anywhere.
    pub aborted: bool,
}

impl Report {
    /// Ids of the members that did not take the change.
    pub fn failed(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| !m.outcome.ok())
            .map(|m| m.id.as_str())
            .collect()
    }

    /// Every member took it.
    pub fn complete(&self) -> bool {
        !self.aborted && self.failed().is_empty()
    }

    /// A member being removed that cannot be reached (a dead node) does not
    /// stop its removal: nothing can be in flight on a node that is gone,
    /// and it gets no traffic from the others once they drop it.
    pub fn excuse_unreachable(mut self, id: &str) -> Report {
        for m in self.members.iter_mut().filter(|m| m.id == id) {
            if let MemberOutcome::Unreachable { error } = &m.outcome {
                m.outcome = MemberOutcome::RemovedUnreachable {
                    error: error.clone(),
                };
            }
        }
        self
    }
}

/// The result of the roll step of a deploy.
#[derive(Clone, Debug, PartialEq)]
pub struct Roll {
    pub members: Vec<MemberReport>,
    /// The member the roll stopped at.
    pub stopped_at: Option<String>,
    /// Every member had the service before: only checked, nothing changed.
    pub everywhere: bool,
    /// The generation every member is at (`P`).
    pub generation: u64,
}
