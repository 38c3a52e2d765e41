//! Why a workflow stopped, as a value: the binary prints it (adding the
//! command that resumes, where there is one) and maps it to an exit status
//! (`docs/control.md`, "Exit status").

use std::time::Duration;

use super::plan::{Differs, PlanError};
use crate::client::ClientError;
use crate::config::{ConfigErrors, ConfigProblem};

/// What is still in flight when `node remove` gives up waiting.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    /// `member` proxies `n` requests to the leaving member.
    To { member: String, n: usize },
    /// `member` does not answer (it may be proxying to the leaving member).
    Silent { member: String, error: String },
    /// The leaving member proxies `n` requests itself.
    Through { n: usize },
}

/// Why a workflow stopped.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The node file.
    #[error("{0}")]
    Load(ConfigErrors),
    /// The admin token file.
    #[error("{0}")]
    Secret(ConfigProblem),
    /// A call to the local daemon.
    #[error("{0}")]
    Local(ClientError),
    /// A document read from a daemon or a snapshot does not parse.
    #[error("{0}")]
    Parse(ConfigErrors),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{what}: the new document would be invalid:\n{errors}")]
    Invalid { what: String, errors: ConfigErrors },
    /// A change did not reach every member; its report says which.
    #[error("the change did not reach every member")]
    Stopped { aborted: bool },
    #[error("{id} has the highest priority but did not become master holding the Reserved IP within {waited:?} (is `preempt` off, its proxy unable to serve, or the Reserved-IP driver failing?)")]
    NotMaster { id: String, waited: Duration },
    #[error("{0} is this node; run `dynia node remove {0}` on another member (its daemon must stay up to finish the removal)")]
    RemoveSelf(String),
    #[error("no member {id:?}; its members are {}", .ids.join(", "))]
    RemoveUnknown { id: String, ids: Vec<String> },
    #[error("{0} is the only member; a cluster keeps at least one (stop dynia there instead)")]
    RemoveOnly(String),
    /// Step 1 of `node remove` did not reach every member.
    #[error("removal stopped before waiting for requests in flight")]
    RemovalStopped { id: String, aborted: bool },
    #[error("mastership did not move away from {id} to a member holding the Reserved IP within {waited:?}; it stays drained")]
    NoHandover { id: String, waited: Duration },
    #[error("after {waited:?}: {} in flight", .busy.len())]
    StillBusy {
        id: String,
        waited: Duration,
        busy: Vec<Busy>,
    },
    #[error("cannot read {id}'s newer document: {error}")]
    SourceUnreadable { id: String, error: String },
    #[error(
        "this node keeps no earlier generation to roll back to (`GET /v1/snapshots` is empty)"
    )]
    NoEarlier,
    #[error("{error}; kept generations: {kept:?}")]
    NoSnapshot { error: ClientError, kept: Vec<u64> },
    #[error("deploy {name} not started: member {id} is unreachable ({error}); bring it back (it catches up) or `dynia node remove {id}`, then deploy again")]
    DeployUnreachable {
        name: String,
        id: String,
        error: ClientError,
    },
    /// Members have another document than this node: a deploy from here
    /// would overwrite it.
    #[error("deploy {name} refused, nothing was changed: members differ")]
    DeployDiffers {
        name: String,
        generation: u64,
        hash: String,
        differs: Vec<Differs>,
    },
}
