//! The command line's definition: every subcommand and flag with its help
//! text and an example (`after_help`), the exit-status table in `--help`.
//! `dynia completions` and `dynia man` generate from this same definition
//! (`gen.rs`), so shell completions and man pages cannot drift from it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::exit;

/// One daemon per node replacing HAProxy + keepalived, and the command that steers the cluster.
#[derive(Parser)]
#[command(name = "dynia", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// The node file, e.g. `-c /etc/dynia/dynia.toml`.
    #[arg(short, long, global = true, default_value = "/etc/dynia/dynia.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    #[command(after_help = "Example:\n  dynia run -c /etc/dynia/dynia.toml")]
    Run,
    /// Validate the node file and the cluster document; print every problem as file:line:column.
    #[command(
        after_help = "Example:\n  dynia check -c /etc/dynia/dynia.toml && systemctl reload dynia"
    )]
    Check,
    /// Ask the running daemon to re-read both files; exits 1 if it refused them.
    #[command(after_help = "Example:\n  dynia reload     # what `systemctl reload dynia` runs")]
    Reload,
    /// Show the cluster, from every member's own /status.json; exits 6 when it is unhealthy.
    #[command(
        after_help = "Unhealthy (exit 6): a member unreachable or lost, no master or several, drift (members with different documents), a split brain. A member's service being DOWN is shown, not counted.\n\nExamples:\n  dynia status\n  dynia status --json | jq .unreachable"
    )]
    Status {
        /// Print the cluster view as JSON (this node's /status.json with every member's answer), e.g. `--json`.
        #[arg(long)]
        json: bool,
    },
    /// Write a first node file, secrets (mode 0600) and cluster document for a one-node cluster.
    #[command(
        after_help = "Example:\n  sudo dynia init --cluster web --id lb1 --private-ip 10.0.0.2 --admin-listen 10.0.0.2:9180 --user dynia"
    )]
    Init(InitArgs),
    /// Members: list, add, remove, drain, undrain, make-active.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Add a service to every member, rolling one node at a time, health-gated.
    #[command(
        after_help = "Examples:\n  dynia deploy app --host app.example.com --port 8080\n  dynia deploy app --host '*.example.com' --host example.com --port 8080 --health /healthz --plan"
    )]
    Deploy(DeployArgs),
    /// Remove a service from every member.
    #[command(after_help = "Example:\n  dynia undeploy app")]
    Undeploy {
        /// The service's name, e.g. `app`.
        name: String,
    },
    /// Bring every member to the newest cluster document.
    #[command(after_help = "Example:\n  dynia sync")]
    Sync,
    /// Put an earlier generation's content on every member (default: the previous one).
    #[command(after_help = "Examples:\n  dynia rollback\n  dynia rollback --to 7")]
    Rollback {
        /// The generation whose content to restore (one this node keeps a snapshot of), e.g. `--to 7`.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Show dynia on this machine: three nodes on 127.0.0.2-4 with a simulated Reserved IP, round robin and a failover; no root needed.
    #[command(after_help = "Examples:\n  dynia demo\n  dynia demo --keep")]
    Demo {
        /// Keep serving after the walkthrough, until Ctrl-C, e.g. `--keep`.
        #[arg(long)]
        keep: bool,
    },
    /// Print a shell completion script to standard output.
    #[command(
        after_help = "Examples:\n  dynia completions bash > /etc/bash_completion.d/dynia\n  dynia completions zsh > \"${fpath[1]}/_dynia\"\n  dynia completions fish > ~/.config/fish/completions/dynia.fish"
    )]
    Completions {
        /// The shell, e.g. `bash`.
        shell: clap_complete::Shell,
    },
    /// Write man pages (dynia.1 and one per subcommand) into DIR; the package build runs it.
    #[command(hide = true, after_help = "Example:\n  dynia man target/man")]
    Man {
        /// The directory to write into (created if missing), e.g. `target/man`.
        dir: PathBuf,
    },
    /// Run a small demo application server (what `dynia demo` puts behind the proxy).
    #[command(hide = true)]
    Upstream {
        /// The address to listen on, e.g. `--listen 127.0.0.2:8080`.
        #[arg(long)]
        listen: SocketAddr,
        /// The member id it answers with, e.g. `--id lb1`.
        #[arg(long)]
        id: String,
    },
}

/// Arguments of `dynia init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// The cluster's name, e.g. `--cluster web`.
    #[arg(long)]
    pub cluster: String,
    /// This node's private IP, e.g. `--private-ip 10.0.0.2`.
    #[arg(long)]
    pub private_ip: IpAddr,
    /// This node's member id, a DNS label, e.g. `--id lb1`; default: a generated two-word id.
    #[arg(long, value_parser = parse_member_id)]
    pub id: Option<String>,
    /// This node's election priority (1-254, higher wins), e.g. `--priority 200`.
    #[arg(long, default_value_t = 150)]
    pub priority: u8,
    /// The admin listener; bind the private IP so members reach each other, e.g. `--admin-listen 10.0.0.2:9180`.
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub admin_listen: SocketAddr,
    /// The proxy's HTTP listener, e.g. `--listen 0.0.0.0:8080`.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub listen: SocketAddr,
    /// Where the cluster document and its snapshots live, e.g. `--state-dir /var/lib/dynia`.
    #[arg(long, default_value = "/var/lib/dynia")]
    pub state_dir: PathBuf,
    /// Replace existing files, e.g. `--force`.
    #[arg(long)]
    pub force: bool,
    /// Give the files it writes to this user, the one the daemon runs as (the package's unit: `User=dynia`), e.g. `--user dynia`.
    #[arg(long)]
    pub user: Option<String>,
}

/// Arguments of `dynia deploy`.
#[derive(clap::Args)]
pub struct DeployArgs {
    /// The service's name, e.g. `app`.
    pub name: String,
    /// Host pattern (exact, *.suffix or *); repeat for several, e.g. `--host app.example.com`.
    #[arg(long = "host", required = true)]
    pub hosts: Vec<String>,
    /// Port on every member's private IP, e.g. `--port 8080`.
    #[arg(long)]
    pub port: u16,
    /// Health check path (default /dynia-health), e.g. `--health /healthz`.
    #[arg(long)]
    pub health: Option<String>,
    /// Print the change to the cluster document and change nothing, e.g. `--plan`.
    #[arg(long)]
    pub plan: bool,
    /// How long each member may take to report the service UP, e.g. `--timeout 1m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// The members of the cluster document.
    #[command(after_help = "Example:\n  dynia node list")]
    List,
    /// Add a member; every member (and the new one) gets the new document.
    #[command(
        after_help = "Examples:\n  dynia node add --ip 10.0.0.3\n  dynia node add --ip 10.0.0.3 --id lb2 --priority 140 --droplet-id 412345678"
    )]
    Add {
        /// The new member's private IP, e.g. `--ip 10.0.0.3`.
        #[arg(long)]
        ip: IpAddr,
        /// Its member id, a DNS label, e.g. `--id lb2`; default: a generated two-word id.
        #[arg(long, value_parser = parse_member_id)]
        id: Option<String>,
        /// Its election priority (1-254); default: 10 below the lowest member's, e.g. `--priority 140`.
        #[arg(long)]
        priority: Option<u8>,
        /// Its admin address, when not private_ip with this node's admin port, e.g. `--admin 10.0.0.3:9180`.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Its DigitalOcean droplet id (for the digitalocean driver), e.g. `--droplet-id 412345678`.
        #[arg(long)]
        droplet_id: Option<u64>,
    },
    /// Drain a member everywhere, wait for its requests, hand over mastership, remove it.
    #[command(after_help = "Example:\n  dynia node remove lb2 --drain-timeout 2m")]
    Remove {
        /// The member's id, e.g. `lb2`.
        id: String,
        /// How long to wait for requests to and through it to finish, e.g. `--drain-timeout 2m`.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// Stop sending new requests to a member (on every node).
    #[command(after_help = "Example:\n  dynia node drain lb2")]
    Drain {
        /// The member's id, e.g. `lb2`.
        id: String,
    },
    /// Send requests to a drained member again.
    #[command(after_help = "Example:\n  dynia node undrain lb2")]
    Undrain {
        /// The member's id, e.g. `lb2`.
        id: String,
    },
    /// Planned handover: make this member the master.
    #[command(after_help = "Example:\n  dynia node make-active lb2")]
    MakeActive {
        /// The member's id, e.g. `lb2`.
        id: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<dynia_control::config::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn parse_member_id(s: &str) -> Result<String, String> {
    dynia_control::names::check(s)
        .map(|()| s.to_string())
        .map_err(|why| format!("{why}; {}", dynia_control::names::RULE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and positional argument of every (sub)command has help
    /// text with an example, and every visible subcommand an example.
    #[test]
    fn every_argument_has_help_with_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                if !help.contains("e.g. `") {
                    missing.push(format!("{path} {id}: {help:?}"));
                }
            }
            let leaf = cmd.get_subcommands().next().is_none();
            if leaf && !cmd.is_hide_set() && cmd.get_after_help().is_none() {
                missing.push(format!("{path}: no example"));
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "dynia", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
