//! The `dynia` command's exit statuses, one per kind of result: one table,
//! [`HELP`], printed by `dynia --help` and copied in README.md ("Exit
//! status"; a test keeps them equal); `docs/control.md` explains them.

use dynia_control::client::ClientError;
use dynia_control::ops::{OpsError, Report};

/// Done, on every member.
pub const OK: u8 = 0;
/// Refused before anything was changed (invalid configuration or
/// arguments, an unknown member, a daemon's refusal), or failed.
pub const FAILED: u8 = 1;
/// A compare-and-set conflict: another change won, or members have another
/// document than this node; nothing was changed.
pub const CONFLICT: u8 = 3;
/// Partial: some members took the change and others did not, or a
/// workflow stopped midway; the printed command resumes.
pub const PARTIAL: u8 = 4;
/// A daemon that had to answer could not be reached; nothing was changed.
pub const UNREACHABLE: u8 = 5;
/// `dynia status` only: the cluster is unhealthy (a member unreachable or
/// lost, no master or several, drift, a split brain).
pub const UNHEALTHY: u8 = 6;

/// The help text's section: the exit-status table.
pub const HELP: &str = "\
Exit status:
  0  ok: done on every member (status: the cluster is healthy)
  1  refused or invalid (configuration, arguments, an unknown member, a daemon's refusal) or failed; nothing changed
  2  usage error (unknown flag, bad value)
  3  conflict: another change won, or members have different documents; nothing changed
  4  partial: some members took the change and others did not, or a workflow stopped midway; the printed command resumes
  5  unreachable: a daemon that had to answer could not be reached; nothing changed
  6  unhealthy (status): a member unreachable or lost, no master or several, drift, a split brain";

/// The status of a fan-out's report.
pub fn of_report(r: &Report) -> u8 {
    if r.aborted {
        CONFLICT
    } else if r.failed().is_empty() {
        OK
    } else {
        PARTIAL
    }
}

/// The status of a call to one daemon that failed.
pub fn of_client(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => UNREACHABLE,
        ClientError::Conflict { .. } => CONFLICT,
        _ => FAILED,
    }
}

/// The status of a workflow's error; `reported` is that of the last report.
pub fn of_error(e: &OpsError, reported: u8) -> u8 {
    match e {
        OpsError::Stopped { .. } | OpsError::RemovalStopped { .. } => reported,
        OpsError::Local(c) => of_client(c),
        OpsError::DeployUnreachable { .. } => UNREACHABLE,
        OpsError::DeployDiffers { .. } => CONFLICT,
        OpsError::NotMaster { .. } | OpsError::NoHandover { .. } | OpsError::StillBusy { .. } => {
            PARTIAL
        }
        _ => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's "Exit status" section holds the same table as `--help`.
    #[test]
    fn readme_has_the_help_table() {
        let readme = include_str!("../README.md");
        let table = HELP.strip_prefix("Exit status:\n").unwrap();
        assert!(
            readme.contains(&format!("```text\n{table}\n```")),
            "README.md's exit-status table differs from exit::HELP:\n{table}"
        );
    }
    use dynia_control::ops::{MemberOutcome, MemberReport};

    fn report(outcomes: Vec<MemberOutcome>, aborted: bool) -> Report {
        let members = outcomes
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| MemberReport {
                id: format!("m{i}"),
                addr: ([127, 0, 0, 1], 9180).into(),
                outcome,
            })
            .collect();
        Report { members, aborted }
    }

    #[test]
    fn a_report_maps_to_ok_conflict_or_partial() {
        let applied = || MemberOutcome::Applied { generation: 2 };
        let down = || MemberOutcome::Unreachable {
            error: "down".into(),
        };
        assert_eq!(of_report(&report(vec![applied(), applied()], false)), OK);
        assert_eq!(of_report(&report(vec![applied(), down()], false)), PARTIAL);
        let lost = vec![
            MemberOutcome::Conflict {
                generation: 3,
                config_hash: "ab".into(),
                based_on: 2,
            },
            MemberOutcome::NotSent,
        ];
        assert_eq!(of_report(&report(lost, true)), CONFLICT);
        let stopped = OpsError::Stopped { aborted: false };
        assert_eq!(of_error(&stopped, PARTIAL), PARTIAL, "as the report said");
        assert_eq!(of_error(&OpsError::NoEarlier, OK), FAILED);
    }
}
