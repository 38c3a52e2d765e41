//! The executor: sends documents to members one at a time, reads their
//! status documents at once, waits (bounded) for what a workflow needs.
//! The first member that answers is the commit point (`docs/control.md`).

use std::time::{Duration, Instant};

use super::outcome::{MemberOutcome, MemberReport, Report};
use super::plan::{Base, Target};
use super::Ctx;
use crate::client::ClientError;
use crate::config::{ClusterDoc, Member};
use crate::wire::{ApplyRequest, Status};

const POLL: Duration = Duration::from_millis(100);

/// Sends `doc` to every target in order.
pub async fn push(ctx: &Ctx, targets: &[Target], doc: &ClusterDoc) -> Report {
    let each: Vec<(Target, ClusterDoc)> =
        targets.iter().map(|t| (t.clone(), doc.clone())).collect();
    push_each(ctx, &each).await
}

/// [`push`] with a document for each target. A conflict before any member
/// took the change aborts it: nothing is sent further.
pub async fn push_each(ctx: &Ctx, targets: &[(Target, ClusterDoc)]) -> Report {
    let mut report = Report::default();
    let mut committed = false;
    for (i, (t, doc)) in targets.iter().enumerate() {
        let outcome = caught_up(send(ctx, t, doc).await, committed, targets);
        committed |= !matches!(
            outcome,
            MemberOutcome::Conflict { .. } | MemberOutcome::Unreachable { .. }
        );
        let conflict = matches!(outcome, MemberOutcome::Conflict { .. });
        report.members.push(line(ctx, &t.member, outcome));
        if conflict && !committed {
            for (rest, _) in &targets[i + 1..] {
                report
                    .members
                    .push(line(ctx, &rest.member, MemberOutcome::NotSent));
            }
            report.aborted = true;
            return report;
        }
    }
    report
}

/// A member that, after the commit point, already holds one of this push's
/// documents caught it up from a member this push changed (catch-up spreads
/// a higher generation by itself): it has what was meant, not a conflict.
fn caught_up(
    outcome: MemberOutcome,
    committed: bool,
    targets: &[(Target, ClusterDoc)],
) -> MemberOutcome {
    match outcome {
        MemberOutcome::Conflict {
            generation,
            ref config_hash,
            ..
        } if committed
            && targets
                .iter()
                .any(|(_, d)| d.generation == generation && d.hash() == *config_hash) =>
        {
            MemberOutcome::AlreadyAt { generation }
        }
        other => other,
    }
}

fn line(ctx: &Ctx, m: &Member, outcome: MemberOutcome) -> MemberReport {
    MemberReport {
        id: m.id.clone(),
        addr: ctx.client(m).addr(),
        outcome,
    }
}

/// One `PUT /v1/cluster` and what came of it.
async fn send(ctx: &Ctx, t: &Target, doc: &ClusterDoc) -> MemberOutcome {
    let client = ctx.client(&t.member);
    let unreachable = |e: &dyn std::fmt::Display| MemberOutcome::Unreachable {
        error: e.to_string(),
    };
    let (base_generation, base_hash) = match &t.base {
        Base::Cas(g, h) => (*g, h.clone()),
        Base::Current => match client.status().await {
            Ok(s) => (s.generation, None),
            Err(e) => return unreachable(&e),
        },
        Base::Unreachable(e) => return unreachable(e),
    };
    let req = ApplyRequest {
        base_generation,
        base_hash,
        document: doc.to_toml(),
        leave: t.leave,
    };
    match client.put_cluster(&req).await {
        Ok(a) if a.leaving => MemberOutcome::Leaving,
        Ok(a) if a.changed => MemberOutcome::Applied {
            generation: a.generation,
        },
        Ok(a) => MemberOutcome::AlreadyAt {
            generation: a.generation,
        },
        Err(ClientError::Conflict {
            generation,
            config_hash,
            ..
        }) if generation == doc.generation && config_hash == doc.hash() => {
            MemberOutcome::AlreadyAt { generation }
        }
        Err(ClientError::Conflict {
            generation,
            config_hash,
            ..
        }) => MemberOutcome::Conflict {
            generation,
            config_hash,
            based_on: base_generation,
        },
        Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => unreachable(&e),
        Err(e) => MemberOutcome::Refused {
            error: e.to_string(),
        },
    }
}

/// Every member's status (or why not), in `members` order, read at once.
pub async fn statuses(ctx: &Ctx, members: &[Member]) -> Vec<(Member, Result<Status, ClientError>)> {
    let clients = members.iter().map(|m| ctx.client(m)).collect();
    members
        .iter()
        .cloned()
        .zip(crate::client::statuses(clients).await)
        .collect()
}

/// Calls `f` every 100 ms until it is true or `limit` passed.
pub async fn wait_for<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (at most `limit`) for `service` to turn UP for member `m` on its
/// own daemon; `Err` carries the last health seen.
pub async fn gate(ctx: &Ctx, m: &Member, service: &str, limit: Duration) -> Result<(), String> {
    let client = ctx.client(m);
    let last = std::cell::RefCell::new(String::from("unknown"));
    let up = wait_for(limit, || {
        let (client, last) = (&client, &last);
        async move {
            let h = client
                .status()
                .await
                .ok()
                .and_then(|s| {
                    let svc = s.services.into_iter().find(|s| s.name == service)?;
                    let x = svc.members.into_iter().find(|x| x.id == m.id)?;
                    Some(x.health)
                })
                .unwrap_or_else(|| "unknown".into());
            let up = h == "up";
            *last.borrow_mut() = h;
            up
        }
    })
    .await;
    if up {
        Ok(())
    } else {
        Err(last.into_inner())
    }
}
