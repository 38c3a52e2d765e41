//! `dynia node list|add|drain|undrain|make-active` and `undeploy`: a
//! document edit ([`super::plan`]) sent to every member, and for make-active
//! the bounded wait on the election (`docs/control.md`, "Node workflows").
//! `node remove` is [`super::remove`].

use std::net::{IpAddr, SocketAddr};

use super::plan::{self, PlanError};
use super::push::wait_for;
use super::{change, Ctx, OpsError, Progress, ELECTION_WAIT};
use crate::config::{Member, MemberState};

/// A member as `node list` shows it.
#[derive(Debug, Clone)]
pub struct ListedMember {
    pub member: Member,
    pub admin: SocketAddr,
}

/// `dynia node list`.
pub async fn node_list(ctx: &Ctx) -> Result<Vec<ListedMember>, OpsError> {
    let doc = ctx.current().await?;
    Ok(doc
        .members
        .iter()
        .map(|m| ListedMember {
            member: m.clone(),
            admin: ctx.client(m).addr(),
        })
        .collect())
}

/// Arguments of `dynia node add`.
pub struct AddArgs {
    pub id: Option<String>,
    pub private_ip: IpAddr,
    pub priority: Option<u8>,
    pub admin: Option<SocketAddr>,
    pub droplet_id: Option<u64>,
}

/// A member added (the change may still be partial: see the report).
#[derive(Debug, Clone)]
pub struct Added {
    pub id: String,
    pub private_ip: IpAddr,
    pub generation: u64,
}

/// `dynia node add`; `None` when the change lost at the commit point.
pub async fn node_add(ctx: &Ctx, a: AddArgs, p: Progress<'_>) -> Result<Option<Added>, OpsError> {
    let m = Member {
        id: String::new(),
        private_ip: a.private_ip,
        priority: 0,
        droplet_id: a.droplet_id,
        state: MemberState::Active,
        admin: a.admin,
    };
    let (doc, report, id) = change(ctx, "node add", p, |doc| {
        plan::add_member(doc, m, a.id, a.priority)
    })
    .await?;
    Ok((!report.aborted).then_some(Added {
        id,
        private_ip: a.private_ip,
        generation: doc.generation,
    }))
}

/// `node drain ID` or `node undrain ID` (`what` of the change).
pub fn state_what(id: &str, state: MemberState) -> String {
    let verb = if state == MemberState::Drain {
        "drain"
    } else {
        "undrain"
    };
    format!("node {verb} {id}")
}

/// `dynia node drain|undrain ID`.
pub async fn node_state(
    ctx: &Ctx,
    id: &str,
    state: MemberState,
    p: Progress<'_>,
) -> Result<(), OpsError> {
    change(ctx, &state_what(id, state), p, |doc| {
        plan::member_mut(doc, id)?.state = state;
        Ok(())
    })
    .await
    .map(|_| ())
}

/// `dynia undeploy NAME`.
pub async fn undeploy(ctx: &Ctx, name: &str, p: Progress<'_>) -> Result<(), OpsError> {
    let what = format!("undeploy {name}");
    change(ctx, &what, p, |doc| plan::remove_service(doc, name))
        .await
        .map(|_| ())
}

/// `dynia node make-active ID`: a planned handover. The member's priority
/// becomes one above every other member's (the election preempts on
/// reload); waits until it reports MASTER holding the Reserved IP.
pub async fn make_active(ctx: &Ctx, id: &str, p: Progress<'_>) -> Result<(), OpsError> {
    let what = format!("node make-active {id}");
    let (doc, report, ()) = change(ctx, &what, p, |doc| plan::make_top(doc, id)).await?;
    if !report.complete() {
        return Err(OpsError::Stopped {
            aborted: report.aborted,
        });
    }
    let m = doc.member(id).cloned().ok_or_else(|| PlanError::NoMember {
        id: id.into(),
        ids: Vec::new(),
    })?;
    let client = ctx.client(&m);
    let master = wait_for(ELECTION_WAIT, || async {
        client
            .status()
            .await
            .is_ok_and(|s| s.role == "master" && s.reserved_ip.held)
    })
    .await;
    if !master {
        return Err(OpsError::NotMaster {
            id: id.into(),
            waited: ELECTION_WAIT,
        });
    }
    Ok(())
}
