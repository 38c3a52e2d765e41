//! The `on_master` / `on_backup` / `on_fault` hooks: executables run after
//! each transition with `<state> <address> <priority>`, bounded in time,
//! beside any driver (see `docs/election.md`, "Hooks").

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::election::Role;

/// Longest a hook may run; it is killed then.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Executables run after transitions.
#[derive(Clone, Debug, Default)]
pub struct ElectionHooks {
    pub on_master: Option<PathBuf>,
    pub on_backup: Option<PathBuf>,
    pub on_fault: Option<PathBuf>,
}

impl ElectionHooks {
    fn for_role(&self, role: Role) -> Option<PathBuf> {
        match role {
            Role::Master => self.on_master.clone(),
            Role::Backup => self.on_backup.clone(),
            Role::Fault => self.on_fault.clone(),
            Role::Init => None,
        }
    }

    /// Runs the hook for `role` (if any) on the current runtime, bounded.
    pub(crate) fn run(&self, role: Role, address: Option<IpAddr>, priority: u8) {
        let Some(path) = self.for_role(role) else {
            return;
        };
        let address = address.map(|a| a.to_string()).unwrap_or_default();
        let state = role.as_str().to_string();
        tokio::spawn(async move {
            let child = tokio::process::Command::new(&path)
                .arg(&state)
                .arg(&address)
                .arg(priority.to_string())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn();
            let mut c = match child {
                Ok(c) => c,
                Err(e) => {
                    return tracing::warn!(hook = %path.display(), error = %e, "hook could not start")
                }
            };
            match tokio::time::timeout(HOOK_TIMEOUT, c.wait()).await {
                Ok(Ok(status)) if status.success() => {
                    tracing::info!(hook = %path.display(), state, "hook ran")
                }
                Ok(Ok(status)) => tracing::warn!(hook = %path.display(), %status, "hook failed"),
                Ok(Err(e)) => tracing::warn!(hook = %path.display(), error = %e, "hook failed"),
                Err(_) => {
                    let _ = c.kill().await;
                    tracing::warn!(hook = %path.display(), timeout = ?HOOK_TIMEOUT, "hook timed out and was killed");
                }
            }
        });
    }
}
