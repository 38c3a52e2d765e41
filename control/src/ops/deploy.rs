//! `dynia deploy`: a rolling, health-gated deploy of one service at one
//! generation `P` (agree, pin, roll; a failing member is put back and the
//! roll stops). The plan is [`super::plan::DeployPlan`]; why one generation:
//! `docs/control.md`, "Rolling deploy".

use std::time::Duration;

use super::outcome::{MemberOutcome, MemberReport, Roll};
use super::plan::{at, diff, Agreed, DeployPlan};
use super::push::{gate, push_each, statuses};
use super::{Ctx, Event, OpsError, Progress};
use crate::client::ClientError;
use crate::config::{ClusterDoc, HealthChecks, Member, Service};
use crate::wire::ApplyRequest;

/// Arguments of `dynia deploy`.
#[derive(Debug, Clone)]
pub struct DeployArgs {
    pub name: String,
    pub hosts: Vec<String>,
    pub port: u16,
    pub health: Option<String>,
    pub plan: bool,
    pub timeout: Duration,
}

/// What `deploy` did.
#[derive(Debug, Clone)]
pub enum Deployed {
    /// `--plan`: the change to the document; nothing was changed.
    Plan { diff: String },
    /// The roll (it may have stopped: see [`Roll::stopped_at`]).
    Rolled(Roll),
}

fn service(a: &DeployArgs) -> Service {
    let mut health = HealthChecks::default();
    if let Some(p) = &a.health {
        health.path = p.clone();
    }
    Service {
        name: a.name.clone(),
        hosts: a.hosts.clone(),
        port: a.port,
        retries: 2,
        health,
        hsts: None,
    }
}

/// `dynia deploy`.
pub async fn deploy(ctx: &Ctx, a: &DeployArgs, p: Progress<'_>) -> Result<Deployed, OpsError> {
    let cur = ctx.current().await?;
    let plan = DeployPlan::new(&cur, service(a))?;
    let g = cur.generation;
    let next = at(&plan.new, g + 1);
    next.validate().map_err(|errors| OpsError::Invalid {
        what: format!("deploy {}", a.name),
        errors,
    })?;
    if a.plan {
        return Ok(Deployed::Plan {
            diff: diff(&cur.to_toml(), &next.to_toml()),
        });
    }
    let mut read = Vec::new();
    for (m, s) in statuses(ctx, &cur.members).await {
        match s {
            Ok(s) => read.push((s.generation, s.config_hash)),
            Err(error) => {
                return Err(OpsError::DeployUnreachable {
                    name: a.name.clone(),
                    id: m.id,
                    error,
                })
            }
        }
    }
    let agreed = plan
        .agree(&cur.members, &read)
        .map_err(|differs| OpsError::DeployDiffers {
            name: a.name.clone(),
            generation: g,
            hash: cur.hash(),
            differs,
        })?;
    let name = a.name.as_str();
    if agreed.everywhere {
        p(Event::DeployEverywhere {
            name,
            generation: g,
        });
    } else {
        p(Event::DeployPin {
            name,
            generation: agreed.generation,
        });
        let pins = plan.pins(&cur.members, &read, &agreed);
        let report = push_each(ctx, &pins).await;
        if !report.complete() {
            let what = format!("deploy {name} (step 1)");
            p(Event::Pushed {
                what: &what,
                report: &report,
            });
            return Err(OpsError::Stopped {
                aborted: report.aborted,
            });
        }
        p(Event::DeployRoll {
            name,
            timeout: a.timeout,
        });
    }
    Ok(Deployed::Rolled(
        roll(ctx, &plan, &cur.members, &agreed, a).await,
    ))
}

/// Step 2: member by member, those without the service get it by a
/// same-generation replace; each must report it UP within the bound, else
/// it is put back to the content without it and the roll stops.
async fn roll(
    ctx: &Ctx,
    plan: &DeployPlan,
    members: &[Member],
    agreed: &Agreed,
    a: &DeployArgs,
) -> Roll {
    let pg = agreed.generation;
    let (old_p, new_p) = (at(&plan.old, pg), at(&plan.new, pg));
    let mut out = Roll {
        members: Vec::new(),
        stopped_at: None,
        everywhere: agreed.everywhere,
        generation: pg,
    };
    for (m, has) in members.iter().zip(&agreed.has) {
        let outcome = if out.stopped_at.is_some() {
            MemberOutcome::NotReached
        } else {
            roll_one(ctx, m, *has, (&old_p, &new_p), agreed.everywhere, a).await
        };
        if !outcome.ok() && outcome != MemberOutcome::NotReached {
            out.stopped_at = Some(m.id.clone());
        }
        out.members.push(MemberReport {
            id: m.id.clone(),
            addr: ctx.client(m).addr(),
            outcome,
        });
    }
    out
}

async fn roll_one(
    ctx: &Ctx,
    m: &Member,
    has: bool,
    (old_p, new_p): (&ClusterDoc, &ClusterDoc),
    everywhere: bool,
    a: &DeployArgs,
) -> MemberOutcome {
    let client = ctx.client(m);
    let replace = |from: &ClusterDoc, to: &ClusterDoc| ApplyRequest {
        base_generation: from.generation,
        base_hash: Some(from.hash()),
        document: to.to_toml(),
        leave: false,
    };
    if !has {
        match client.put_cluster(&replace(old_p, new_p)).await {
            Ok(_) => {}
            // It caught the rolled content up from a member rolled before it.
            Err(ClientError::Conflict {
                generation,
                config_hash,
                ..
            }) if generation == new_p.generation && config_hash == new_p.hash() => {}
            Err(e) => {
                return MemberOutcome::NotApplied {
                    error: e.to_string(),
                }
            }
        }
    }
    let service = a.name.clone();
    let health = match gate(ctx, m, &a.name, a.timeout).await {
        Ok(()) if has => return MemberOutcome::AlreadyHad { service },
        Ok(()) => return MemberOutcome::Rolled { service },
        Err(last) => last,
    };
    // Nothing was changed by this run when every member had it: no rollback.
    let rollback = if everywhere {
        None
    } else {
        let back = client.put_cluster(&replace(new_p, old_p)).await;
        Some(back.map(|_| ()).map_err(|e| e.to_string()))
    };
    MemberOutcome::NotUp {
        service,
        timeout: a.timeout,
        health,
        rollback,
    }
}
