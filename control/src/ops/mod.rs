//! Cluster-wide changes: the workflows behind `dynia node …`, `deploy`,
//! `undeploy`, `sync` and `rollback`, in three layers: [`plan`] (pure:
//! targets, compare-and-set bases, document edits, the deploy's pin and roll
//! plan), [`push`] (the executor that talks to members) and [`outcome`]
//! (typed results). Nothing here prints: workflows report [`Event`]s and
//! return values or an [`OpsError`]; the `dynia` binary prints them and picks
//! the exit status. The protocol (commit point, generations of a rolling
//! deploy, catch-up): `docs/control.md`.

mod converge;
mod deploy;
mod error;
mod node;
pub mod outcome;
pub mod plan;
pub mod push;
mod remove;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::AdminClient;
use crate::config::{self, ClusterDoc, Member, NodeFile, SecretBytes};

pub use converge::{rollback, sync, Synced};
pub use deploy::{deploy, DeployArgs, Deployed};
pub use error::{Busy, OpsError};
pub use node::{
    make_active, node_add, node_list, node_state, undeploy, AddArgs, Added, ListedMember,
};
pub use outcome::{MemberOutcome, MemberReport, Report, Roll};
pub use remove::node_remove;

/// Time for one call to a member.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `make-active` and `node remove` wait for the election.
pub const ELECTION_WAIT: Duration = Duration::from_secs(20);

/// What a workflow tells while it runs, in order.
#[derive(Debug)]
pub enum Event<'a> {
    /// A change went to the members (`what` names it): one line each.
    Pushed { what: &'a str, report: &'a Report },
    /// `node remove`, step 1: drain and lowest priority everywhere.
    RemoveDrain { id: &'a str },
    /// `node remove`, step 2: hand over, then wait for requests in flight.
    RemoveWait { id: &'a str, timeout: Duration },
    /// `node remove`: `master` is master and holds the Reserved IP.
    RemoveMaster { master: &'a str },
    /// `node remove`: the leaving member does not answer (taken as stopped).
    RemoveSilent { id: &'a str, error: &'a str },
    /// `node remove`: nothing in flight to or through `id`.
    RemoveDrained { id: &'a str },
    /// `node remove`, step 3: the document without `id`.
    RemoveFinal { id: &'a str },
    /// `sync`: taking this document everywhere.
    SyncTaking { generation: u64, hash: &'a str },
    /// `rollback`: the content of `generation` becomes the next one.
    RollbackTaking { generation: u64 },
    /// `deploy`: every member has it already; only checking.
    DeployEverywhere { name: &'a str, generation: u64 },
    /// `deploy`, step 1: every member to `generation`, keeping its content.
    DeployPin { name: &'a str, generation: u64 },
    /// `deploy`, step 2: one member at a time.
    DeployRoll { name: &'a str, timeout: Duration },
}

/// Where a workflow reports its [`Event`]s.
pub type Progress<'p> = &'p mut dyn FnMut(Event<'_>);

/// What a command needs: the node file, the admin token, the local daemon.
pub struct Ctx {
    pub node_path: PathBuf,
    pub node: NodeFile,
    pub token: Option<SecretBytes>,
    pub local: AdminClient,
}

impl Ctx {
    pub fn load(node_path: &Path) -> Result<Ctx, OpsError> {
        let node = config::load_node_file(node_path).map_err(OpsError::Load)?;
        let token = match &node.admin.token_file {
            Some(p) => Some(config::read_secret(p).map_err(OpsError::Secret)?),
            None => None,
        };
        let local = AdminClient::new(node.admin.listen, token.clone()).with_timeout(CALL_TIMEOUT);
        Ok(Ctx {
            node_path: node_path.to_path_buf(),
            node,
            token,
            local,
        })
    }

    /// A client of `m`'s admin API (the local daemon for this node).
    pub fn client(&self, m: &Member) -> AdminClient {
        if m.id == self.node.node.id {
            return self.local.clone();
        }
        AdminClient::new(
            m.admin_addr(self.node.admin.listen.port()),
            self.token.clone(),
        )
        .with_timeout(CALL_TIMEOUT)
    }

    /// The local daemon's cluster document.
    pub async fn current(&self) -> Result<ClusterDoc, OpsError> {
        let text = self.local.get_cluster().await.map_err(OpsError::Local)?;
        config::parse_cluster_doc(&text, "local daemon's /v1/cluster").map_err(OpsError::Parse)
    }
}

/// Builds `cur` + 1 with `edit` and sends it to every member of either.
async fn change<T>(
    ctx: &Ctx,
    what: &str,
    progress: Progress<'_>,
    edit: impl FnOnce(&mut ClusterDoc) -> Result<T, plan::PlanError>,
) -> Result<(ClusterDoc, Report, T), OpsError> {
    let cur = ctx.current().await?;
    let mut new = cur.clone();
    let made = edit(&mut new)?;
    new.generation = cur.generation + 1;
    new.validate().map_err(|errors| OpsError::Invalid {
        what: what.into(),
        errors,
    })?;
    let report = push::push(ctx, &plan::targets(&cur, &new), &new).await;
    progress(Event::Pushed {
        what,
        report: &report,
    });
    Ok((new, report, made))
}
