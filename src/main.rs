//! The `dynia` command: CLI parsing and wiring only. Each subcommand is
//! implemented in `dynia-control`; this file maps arguments onto it and turns
//! its result into an exit status. `demo` and `upstream` live in `demo.rs`
//! (they run test fixtures from `dynia-testkit`).

mod demo;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dynia_control::config::MemberState;
use dynia_control::{commands, ops};

/// One daemon per node replacing HAProxy + keepalived, and the command that steers the cluster.
#[derive(Parser)]
#[command(name = "dynia", version, about)]
struct Cli {
    /// The node file.
    #[arg(short, long, global = true, default_value = "/etc/dynia/dynia.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Run,
    /// Validate the node file and the cluster document; print every problem as file:line:column.
    Check,
    /// Ask the running daemon to re-read both files; exits non-zero if it refused them.
    Reload,
    /// Show this node's view of the cluster.
    Status {
        /// Print /status.json as it is.
        #[arg(long)]
        json: bool,
    },
    /// Write a first node file, secrets (mode 0600) and cluster document for a one-node cluster.
    Init {
        /// The cluster's name.
        #[arg(long)]
        cluster: String,
        /// This node's private IP.
        #[arg(long)]
        private_ip: IpAddr,
        /// This node's member id; default: a generated two-word id.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 150)]
        priority: u8,
        /// The admin listener (bind the private IP so members reach each other).
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin_listen: SocketAddr,
        /// The proxy's HTTP listener.
        #[arg(long, default_value = "0.0.0.0:80")]
        listen: SocketAddr,
        #[arg(long, default_value = "/var/lib/dynia")]
        state_dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Members: list, add, remove, drain, undrain, make-active.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Add a service to every member, rolling one node at a time, health-gated.
    Deploy {
        name: String,
        /// Host pattern (exact, *.suffix or *); repeat for several.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Port on every member's private IP.
        #[arg(long)]
        port: u16,
        /// Health check path (default /dynia-health).
        #[arg(long)]
        health: Option<String>,
        /// Print the change to the cluster document and change nothing.
        #[arg(long)]
        plan: bool,
        /// How long each member may take to report the service UP.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Remove a service from every member.
    Undeploy { name: String },
    /// Bring every member to the newest cluster document.
    Sync,
    /// Put an earlier generation's content on every member (default: the previous one).
    Rollback {
        #[arg(long)]
        to: Option<u64>,
    },
    /// Show dynia on this machine: three nodes on 127.0.0.2-4 with a simulated Reserved IP, round robin and a failover; no root needed.
    Demo {
        /// Keep serving after the walkthrough, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Run a small demo application server (what `dynia demo` puts behind the proxy).
    #[command(hide = true)]
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// The members of the cluster document.
    List,
    /// Add a member; every member (and the new one) gets the new document.
    Add {
        /// The new member's private IP.
        #[arg(long)]
        ip: IpAddr,
        /// Its two-word id; default: generated.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        priority: Option<u8>,
        /// Its admin address, when not private_ip with this node's admin port.
        #[arg(long)]
        admin: Option<SocketAddr>,
        #[arg(long)]
        droplet_id: Option<u64>,
    },
    /// Drain a member everywhere, wait for its requests, hand over mastership, remove it.
    Remove {
        id: String,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// Stop sending new requests to a member (on every node).
    Drain { id: String },
    /// Send requests to a drained member again.
    Undrain { id: String },
    /// Planned handover: make this member the master.
    MakeActive { id: String },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<dynia_control::config::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dynia_control::logging::init();
    let code = match cli.command {
        Command::Run => commands::run(&cli.config),
        Command::Check => commands::check(&cli.config),
        Command::Reload => commands::reload(&cli.config),
        Command::Status { json } => commands::status(&cli.config, json),
        Command::Init {
            cluster,
            private_ip,
            id,
            priority,
            admin_listen,
            listen,
            state_dir,
            force,
        } => commands::init(
            &cli.config,
            commands::InitArgs {
                cluster,
                private_ip,
                id,
                priority,
                admin_listen,
                listen,
                state_dir,
                force,
            },
        ),
        Command::Node { command } => match command {
            NodeCommand::List => ops::node_list(&cli.config),
            NodeCommand::Add {
                ip,
                id,
                priority,
                admin,
                droplet_id,
            } => ops::node_add(
                &cli.config,
                ops::AddArgs {
                    id,
                    private_ip: ip,
                    priority,
                    admin,
                    droplet_id,
                },
            ),
            NodeCommand::Remove { id, drain_timeout } => {
                ops::node_remove(&cli.config, &id, drain_timeout)
            }
            NodeCommand::Drain { id } => ops::node_state(&cli.config, &id, MemberState::Drain),
            NodeCommand::Undrain { id } => ops::node_state(&cli.config, &id, MemberState::Active),
            NodeCommand::MakeActive { id } => ops::make_active(&cli.config, &id),
        },
        Command::Deploy {
            name,
            hosts,
            port,
            health,
            plan,
            timeout,
        } => ops::deploy(
            &cli.config,
            ops::DeployArgs {
                name,
                hosts,
                port,
                health,
                plan,
                timeout,
            },
        ),
        Command::Undeploy { name } => ops::undeploy(&cli.config, &name),
        Command::Sync => ops::sync(&cli.config),
        Command::Rollback { to } => ops::rollback(&cli.config, to),
        Command::Demo { keep } => demo::demo(keep),
        Command::Upstream { listen, id } => demo::upstream(listen, &id),
    };
    ExitCode::from(code)
}
