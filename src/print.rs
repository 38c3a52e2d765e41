//! What the cluster-wide commands print: the per-member table, the verdict
//! of each change with the command that resumes it, progress lines, and
//! the text of each [`OpsError`]. The library returns values; this is the
//! only place that turns them into text (`docs/control.md`).

use std::path::Path;

use dynia_control::config::{self, MemberState};
use dynia_control::ops::{
    Added, Busy, DeployArgs, Event, ListedMember, MemberOutcome, MemberReport, OpsError, Report,
    Roll,
};

use crate::exit;

/// Prints a workflow's events; remembers the exit status of the last change.
pub struct Printer<'a> {
    pub node_path: &'a Path,
    pub code: u8,
}

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}

fn sync_cmd(node_path: &Path) -> String {
    format!("dynia sync -c {}", node_path.display())
}

impl Printer<'_> {
    pub fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Pushed { what, report } => self.code = self.finish(what, report),
            Event::RemoveDrain { id } => println!(
                "step 1/3: drain {id} on every member and give it the lowest priority"
            ),
            Event::RemoveWait { id, timeout } => println!(
                "step 2/3: hand mastership over if {id} has it, then wait (at most {timeout:?}) until no member has requests in flight to {id} and {id} has none in flight itself"
            ),
            Event::RemoveMaster { master } => {
                println!("  {master} is master and holds the Reserved IP")
            }
            Event::RemoveSilent { id, error } => println!(
                "  {id} does not answer ({error}): taken as stopped, so nothing is in flight through it"
            ),
            Event::RemoveDrained { id } => println!("  nothing in flight to or through {id}"),
            Event::RemoveFinal { id } => {
                println!("step 3/3: the document without {id}, to every member (it stops)")
            }
            Event::SyncTaking { generation, hash } => println!(
                "sync: taking generation {generation} (hash {}) to every member",
                short(hash)
            ),
            Event::RollbackTaking { generation } => println!(
                "rollback: the content of generation {generation} becomes the next generation on every member"
            ),
            Event::DeployEverywhere { name, generation } => println!(
                "deploy {name}: every member already has it (generation {generation}); checking that it is UP on each, nothing is changed"
            ),
            Event::DeployPin { name, generation } => println!(
                "deploy {name}: step 1: every member to generation {generation}, each keeping the content it has"
            ),
            Event::DeployRoll { name, timeout } => println!(
                "deploy {name}: step 2: one member at a time, each must report {name} UP within {timeout:?}"
            ),
        }
    }

    /// Prints the table and the verdict; the exit status.
    fn finish(&self, what: &str, report: &Report) -> u8 {
        rows(&report.members);
        let failed = report.failed();
        if report.aborted {
            eprintln!(
                "dynia: {what} refused: the cluster changed since this command read it (another change won); nothing was changed. Check `dynia status -c {}` and run the command again.",
                self.node_path.display()
            );
        } else if failed.is_empty() {
            println!("{what}: done on all {} members", report.members.len());
        } else {
            eprintln!(
                "dynia: {what} is partial: {} of {} members did not take it ({}). They catch up by themselves when they hear a newer generation; to finish now, resume with:\n  {}",
                failed.len(),
                report.members.len(),
                failed.join(", "),
                sync_cmd(self.node_path)
            );
        }
        exit::of_report(report)
    }

    /// Prints a workflow's error (with the command that resumes); the exit status.
    pub fn error(&self, e: &OpsError) -> u8 {
        if !matches!(e, OpsError::Stopped { .. }) {
            eprintln!("dynia: {}", error_text(e, self.node_path));
        }
        exit::of_error(e, self.code)
    }
}

/// What one member's line says.
pub fn outcome_text(o: &MemberOutcome) -> String {
    match o {
        MemberOutcome::Applied { generation } => format!("applied generation {generation}"),
        MemberOutcome::AlreadyAt { generation } => format!("already at generation {generation}"),
        MemberOutcome::Leaving => "removed; its daemon resigns and stops".into(),
        MemberOutcome::Conflict {
            generation,
            config_hash,
            based_on,
        } => format!(
            "conflict: it is at generation {generation} (hash {}), the change was based on {based_on}",
            short(config_hash)
        ),
        MemberOutcome::NotSent => "not sent (conflict at the commit point)".into(),
        MemberOutcome::Refused { error } => format!("refused: {error}"),
        MemberOutcome::Unreachable { error } => format!("unreachable: {error}"),
        MemberOutcome::RemovedUnreachable { error } => format!(
            "unreachable: {error}; removed without it (if it comes back, stop dynia there)"
        ),
        MemberOutcome::AlreadyHad { service } => format!("already had {service}: UP"),
        MemberOutcome::Rolled { service } => format!("rolled: {service} UP"),
        MemberOutcome::NotReached => "not reached (the roll stopped)".into(),
        MemberOutcome::NotApplied { .. } | MemberOutcome::NotUp { rollback: None, .. } => {
            why(o)
        }
        MemberOutcome::NotUp {
            rollback: Some(Ok(())),
            ..
        } => format!("{}; rolled back", why(o)),
        MemberOutcome::NotUp {
            rollback: Some(Err(e)),
            ..
        } => format!("{}; rolling back FAILED too: {e}", why(o)),
    }
}

/// Why a roll stopped at a member (its line without the rollback).
fn why(o: &MemberOutcome) -> String {
    match o {
        MemberOutcome::NotApplied { error } => format!("not applied: {error}"),
        MemberOutcome::NotUp {
            service,
            timeout,
            health,
            ..
        } => format!("{service} did not turn UP within {timeout:?} (health {health})"),
        o => outcome_text(o),
    }
}

/// The per-member table.
pub fn rows(members: &[MemberReport]) {
    println!("{:<22} {:<22} RESULT", "MEMBER", "ADMIN");
    for r in members {
        println!(
            "{:<22} {:<22} {}{}",
            r.id,
            r.addr.to_string(),
            if r.outcome.ok() { "ok: " } else { "FAILED: " },
            outcome_text(&r.outcome).replace('\n', " ")
        );
    }
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Active => "active",
        MemberState::Drain => "drain",
        MemberState::Maint => "maint",
    }
}

/// `dynia node list`.
pub fn members(list: &[ListedMember]) {
    println!(
        "{:<22} {:<16} {:>8} {:<7} ADMIN",
        "ID", "PRIVATE IP", "PRIORITY", "STATE"
    );
    for l in list {
        let m = &l.member;
        println!(
            "{:<22} {:<16} {:>8} {:<7} {}",
            m.id,
            m.private_ip.to_string(),
            m.priority,
            state_name(m.state),
            l.admin
        );
    }
}

/// What to do on the node `node add` added.
pub fn added(ctx: &dynia_control::ops::Ctx, a: &Added) {
    let token = ctx
        .node
        .admin
        .token_file
        .as_ref()
        .map(|p| p.display().to_string());
    let key = ctx
        .node
        .election
        .key_file
        .as_ref()
        .map(|p| p.display().to_string());
    println!(
        "member {id} ({ip}) is in generation {g}. On that node, if dynia is not running there yet:\n  \
         1. copy the admin token {} and the cluster key {} from this node (same bytes, mode 0600; they are the same on every node);\n  \
         2. write its node file with [node] id = \"{id}\", private_ip = \"{ip}\";\n  \
         3. copy this node's {} to its state_dir/cluster.toml and start dynia (`systemctl start dynia`); it catches up from then on.",
        token.as_deref().unwrap_or("(no [admin] token_file set)"),
        key.as_deref().unwrap_or("(no [election] key_file set)"),
        config::cluster_doc_path(&ctx.node).display(),
        id = a.id,
        ip = a.private_ip,
        g = a.generation,
    );
}

fn busy_text(id: &str, b: &Busy) -> String {
    match b {
        Busy::To { member, n } => format!("{member} has {n} in flight to {id}"),
        Busy::Silent { member, error } => format!("{member} does not answer ({error})"),
        Busy::Through { n } => format!("{id} has {n} in flight through its proxy"),
    }
}

/// An error's text, with the command that resumes where there is one.
pub fn error_text(e: &OpsError, node_path: &Path) -> String {
    let c = node_path.display();
    let again = |id: &str| format!("dynia node remove {id} -c {c}");
    match e {
        OpsError::NotMaster { .. } => format!("{e}; see `dynia status -c {c}` and its log"),
        OpsError::RemovalStopped { id, .. } => format!(
            "removal stopped before waiting for requests in flight; run `{}` again",
            again(id)
        ),
        OpsError::NoHandover { id, .. } => format!(
            "{e}. Run `dynia node make-active ID` for another member, then `{}`",
            again(id)
        ),
        OpsError::StillBusy { id, waited, busy } => format!(
            "after {waited:?}: {}. {id} stays drained (gets no new requests) and in the cluster. Run `{}` again, or with a longer --drain-timeout",
            busy.iter().map(|b| busy_text(id, b)).collect::<Vec<_>>().join("; "),
            again(id)
        ),
        OpsError::DeployDiffers {
            name,
            generation,
            hash,
            differs,
        } => {
            let who: Vec<String> = differs
                .iter()
                .map(|d| format!("{} (generation {}, hash {})", d.id, d.generation, short(&d.config_hash)))
                .collect();
            format!(
                "deploy {name} refused, nothing was changed: {} {} not have this node's cluster document (generation {generation}, hash {}), so a deploy from here would replace work this node has not seen. \
                 Bring every member to one document first with\n  {}\n(it takes the newest generation everywhere; `dynia status` shows who differs), then deploy again.",
                who.join(", "),
                if who.len() == 1 { "does" } else { "do" },
                short(hash),
                sync_cmd(node_path)
            )
        }
        e => e.to_string(),
    }
}

/// `dynia deploy --plan`.
pub fn plan(name: &str, diff: &str) {
    println!("plan: deploy {name} (nothing is changed)\n{diff}");
}

/// The roll's table and verdict; the exit status.
pub fn roll(node_path: &Path, a: &DeployArgs, r: &Roll) -> u8 {
    rows(&r.members);
    let c = node_path.display();
    let again = format!(
        "dynia deploy {name} {hosts} --port {port}{health} --timeout {timeout} -c {c}",
        name = a.name,
        hosts = a
            .hosts
            .iter()
            .map(|h| format!("--host {h}"))
            .collect::<Vec<_>>()
            .join(" "),
        port = a.port,
        health = a
            .health
            .as_ref()
            .map(|h| format!(" --health {h}"))
            .unwrap_or_default(),
        timeout = config::Duration::from(a.timeout),
    );
    let name = &a.name;
    let p = r.generation;
    let Some(id) = &r.stopped_at else {
        println!(
            "deploy {name}: {} all {} members (generation {p})",
            if r.everywhere { "UP on" } else { "rolled to" },
            r.members.len()
        );
        return exit::OK;
    };
    let why = r
        .members
        .iter()
        .find(|m| &m.id == id)
        .map(|m| why(&m.outcome))
        .unwrap_or_default();
    if r.everywhere {
        eprintln!(
            "dynia: deploy {name}: every member has it, but on {id}: {why}. Nothing was changed. Fix the service on {id}, then check again with\n  {again}\nor remove it everywhere with\n  dynia undeploy {name} -c {c}"
        );
        return exit::FAILED;
    }
    let rolled: Vec<&str> = r
        .members
        .iter()
        .filter(|m| m.outcome.ok())
        .map(|m| m.id.as_str())
        .collect();
    eprintln!(
        "dynia: deploy {name} stopped at member {id}: {why}. Rolled: [{}]; {id} was rolled back; later members were not touched. \
         The cluster shows drift (generation {p}, two documents) until you either fix the service on {id} and resume with\n  \
         {again}\nor undo the deploy everywhere with\n  dynia rollback -c {c}",
        rolled.join(", "),
    );
    exit::PARTIAL
}
