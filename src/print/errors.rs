//! The text of each [`OpsError`], with the command that resumes where there
//! is one (`docs/control.md`, "Exit status").

use std::path::Path;

use dynia_control::ops::{Busy, OpsError};

use super::{short, sync_cmd};

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
