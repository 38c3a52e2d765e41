//! `dynia node list|add|drain|undrain|make-active|remove` and `undeploy`:
//! a document edit ([`super::plan`]) sent to every member, and for
//! make-active and remove the bounded waits on the election and on requests
//! in flight (`docs/control.md`, "Node workflows").

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::Busy;
use super::plan::{self, PlanError};
use super::push::{statuses, wait_for};
use super::{change, Ctx, Event, OpsError, Progress, ELECTION_WAIT};
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

/// `dynia node remove ID`: drain everywhere (and priority 1, so another
/// member takes mastership over), wait until another member is master and
/// holds the Reserved IP, then until no member has requests in flight to it
/// and it has none in flight itself, then the document without it; the
/// removed node gets that document too and stops.
pub async fn node_remove(
    ctx: &Ctx,
    id: &str,
    drain_timeout: Duration,
    p: Progress<'_>,
) -> Result<(), OpsError> {
    if id == ctx.node.node.id {
        return Err(OpsError::RemoveSelf(id.into()));
    }
    let cur = ctx.current().await?;
    let Some(leaving) = cur.member(id).cloned() else {
        let ids = cur.members.iter().map(|m| m.id.clone()).collect();
        return Err(OpsError::RemoveUnknown { id: id.into(), ids });
    };
    if cur.members.len() == 1 {
        return Err(OpsError::RemoveOnly(id.into()));
    }
    p(Event::RemoveDrain { id });
    let step1 = format!("node remove {id} (drain)");
    let (d1, report, ()) = change(ctx, &step1, &mut |e| drain_event(e, id, p), |doc| {
        let m = plan::member_mut(doc, id)?;
        m.state = MemberState::Drain;
        m.priority = 1;
        Ok(())
    })
    .await?;
    let report = report.excuse_unreachable(id);
    if !report.complete() {
        return Err(OpsError::RemovalStopped {
            id: id.into(),
            aborted: report.aborted,
        });
    }
    p(Event::RemoveWait {
        id,
        timeout: drain_timeout,
    });
    let others: Vec<Member> = d1.members.iter().filter(|m| m.id != id).cloned().collect();
    let master = hand_over(ctx, &leaving, &others).await?;
    p(Event::RemoveMaster { master: &master });
    drain(ctx, &leaving, &others, drain_timeout, p).await?;
    p(Event::RemoveDrained { id });
    p(Event::RemoveFinal { id });
    let step3 = format!("node remove {id}");
    let (_, report, ()) = change(ctx, &step3, &mut |e| drain_event(e, id, p), |doc| {
        doc.members.retain(|m| m.id != id);
        Ok(())
    })
    .await?;
    let report = report.excuse_unreachable(id);
    if !report.complete() {
        return Err(OpsError::Stopped {
            aborted: report.aborted,
        });
    }
    Ok(())
}

/// Forwards a removal step's events with the leaving member excused.
fn drain_event(e: Event<'_>, id: &str, p: &mut dyn FnMut(Event<'_>)) {
    match e {
        Event::Pushed { what, report } => {
            let report = report.clone().excuse_unreachable(id);
            p(Event::Pushed {
                what,
                report: &report,
            })
        }
        e => p(e),
    }
}

/// Waits until `leaving` is not master and another member is, holding the
/// Reserved IP; that member's id.
async fn hand_over(ctx: &Ctx, leaving: &Member, others: &[Member]) -> Result<String, OpsError> {
    let master = std::cell::RefCell::new(None::<String>);
    let handed_over = wait_for(ELECTION_WAIT, || async {
        let still = ctx
            .client(leaving)
            .status()
            .await
            .is_ok_and(|s| s.role == "master");
        let holder = statuses(ctx, others).await.into_iter().find_map(|(m, s)| {
            s.is_ok_and(|s| s.role == "master" && s.reserved_ip.held)
                .then_some(m.id)
        });
        *master.borrow_mut() = holder.clone();
        !still && holder.is_some()
    })
    .await;
    master
        .into_inner()
        .filter(|_| handed_over)
        .ok_or_else(|| OpsError::NoHandover {
            id: leaving.id.clone(),
            waited: ELECTION_WAIT,
        })
}

/// Waits (at most `limit`) until no member has requests in flight to
/// `leaving` and it has none in flight through its proxy.
async fn drain(
    ctx: &Ctx,
    leaving: &Member,
    others: &[Member],
    limit: Duration,
    p: Progress<'_>,
) -> Result<(), OpsError> {
    let id = leaving.id.as_str();
    let busy = std::cell::RefCell::new(Vec::<Busy>::new());
    let silent = std::cell::RefCell::new(None::<String>);
    let drained = wait_for(limit, || async {
        let mut now = Vec::new();
        for (m, s) in statuses(ctx, others).await {
            match s {
                Ok(s) => match plan::inflight_to(&s, id) {
                    0 => {}
                    n => now.push(Busy::To { member: m.id, n }),
                },
                Err(e) => now.push(Busy::Silent {
                    member: m.id,
                    error: e.to_string(),
                }),
            }
        }
        match ctx.client(leaving).status().await {
            Ok(s) => match plan::inflight_through(&s) {
                0 => {}
                n => now.push(Busy::Through { n }),
            },
            Err(e) => {
                silent.borrow_mut().get_or_insert(e.to_string());
            }
        }
        let done = now.is_empty();
        *busy.borrow_mut() = now;
        done
    })
    .await;
    // The original said so once, as soon as it first failed to answer.
    if let Some(error) = silent.into_inner() {
        p(Event::RemoveSilent { id, error: &error });
    }
    if drained {
        return Ok(());
    }
    Err(OpsError::StillBusy {
        id: id.into(),
        waited: limit,
        busy: busy.into_inner(),
    })
}
