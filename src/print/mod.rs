//! What the cluster-wide commands print: the per-member table, the verdict
//! of each change with the command that resumes it, progress lines, and
//! the text of each [`OpsError`]. The library returns values; this is the
//! only place that turns them into text (`docs/control.md`); the final
//! views are in `views`, error texts in `errors`.

use std::path::Path;

mod errors;
mod views;

use dynia_control::ops::{Event, MemberOutcome, MemberReport, OpsError, Report};

pub use errors::error_text;
pub use views::{added, members, plan, roll};

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
