//! What `node list`, `node add` and `deploy` print once they are done: the
//! member table, the steps on an added node, the plan and the roll's verdict.

use std::path::Path;

use dynia_control::config::{self, MemberState};
use dynia_control::ops::{Added, DeployArgs, ListedMember, Roll};

use super::{rows, why};
use crate::exit;

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
