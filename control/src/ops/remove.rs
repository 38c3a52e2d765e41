//! `dynia node remove ID`: drain and step down everywhere, wait for the
//! handover and for requests in flight (bounded), then the document without
//! it (`docs/control.md`, "Node workflows").

use std::time::Duration;

use super::error::Busy;
use super::plan;
use super::push::{statuses, wait_for};
use super::{change, Ctx, Event, OpsError, Progress, ELECTION_WAIT};
use crate::config::{Member, MemberState};

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
