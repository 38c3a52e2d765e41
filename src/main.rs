//! The `dynia` command: CLI parsing and wiring only. Each subcommand is
//! implemented in `dynia-control`; this file maps arguments onto it and turns
//! its result into an exit status. `demo` and `upstream` live in `demo.rs`
//! (they run test fixtures from `dynia-testkit`).

mod demo;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dynia_control::config::MemberState;
use dynia_control::ops;

mod commands;
mod exit;
mod print;

/// One daemon per node replacing HAProxy + keepalived, and the command that steers the cluster.
#[derive(Parser)]
#[command(name = "dynia", version, about, after_help = exit::HELP)]
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
        /// This node's member id, a DNS label (`lb1`); default: a generated two-word id.
        #[arg(long, value_parser = parse_member_id)]
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
        /// Its member id, a DNS label (`lb2`); default: a generated two-word id.
        #[arg(long, value_parser = parse_member_id)]
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

fn parse_member_id(s: &str) -> Result<String, String> {
    dynia_control::names::check(s)
        .map(|()| s.to_string())
        .map_err(|why| format!("{why}; {}", dynia_control::names::RULE))
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
        Command::Node { command } => node(&cli.config, command),
        Command::Deploy {
            name,
            hosts,
            port,
            health,
            plan,
            timeout,
        } => deploy(
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
        Command::Undeploy { name } => op(&cli.config, |ctx, p| {
            block(ops::undeploy(ctx, &name, p)).map(|()| exit::OK)
        }),
        Command::Sync => op(&cli.config, |ctx, p| {
            match block(ops::sync(ctx, p))? {
                ops::Synced::Already { generation, hash } => {
                    println!(
                        "in sync: every member has generation {generation} (hash {})",
                        &hash[..12.min(hash.len())]
                    );
                }
                ops::Synced::Pushed => {}
            }
            Ok(exit::OK)
        }),
        Command::Rollback { to } => op(&cli.config, |ctx, p| {
            block(ops::rollback(ctx, to, p)).map(|()| exit::OK)
        }),
        Command::Demo { keep } => demo::demo(keep),
        Command::Upstream { listen, id } => demo::upstream(listen, &id),
    };
    ExitCode::from(code)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds")
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// Runs one cluster-wide workflow: loads the node file, prints its events
/// and its error; the exit status is the worse of the last change's and
/// the one `f` returns.
fn op(
    node_path: &Path,
    f: impl FnOnce(&ops::Ctx, ops::Progress<'_>) -> Result<u8, ops::OpsError>,
) -> u8 {
    let mut printer = print::Printer {
        node_path,
        code: exit::OK,
    };
    let ctx = match ops::Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return printer.error(&e),
    };
    let result = f(&ctx, &mut |e| printer.event(e));
    match result {
        Ok(code) => printer.code.max(code),
        Err(e) => printer.error(&e),
    }
}

fn node(node_path: &Path, command: NodeCommand) -> u8 {
    match command {
        NodeCommand::List => op(node_path, |ctx, _| {
            print::members(&block(ops::node_list(ctx))?);
            Ok(exit::OK)
        }),
        NodeCommand::Add {
            ip,
            id,
            priority,
            admin,
            droplet_id,
        } => {
            let a = ops::AddArgs {
                id,
                private_ip: ip,
                priority,
                admin,
                droplet_id,
            };
            op(node_path, |ctx, p| {
                if let Some(added) = block(ops::node_add(ctx, a, p))? {
                    print::added(ctx, &added);
                }
                Ok(exit::OK)
            })
        }
        NodeCommand::Remove { id, drain_timeout } => op(node_path, |ctx, p| {
            block(ops::node_remove(ctx, &id, drain_timeout, p)).map(|()| exit::OK)
        }),
        NodeCommand::Drain { id } => op(node_path, |ctx, p| {
            block(ops::node_state(ctx, &id, MemberState::Drain, p)).map(|()| exit::OK)
        }),
        NodeCommand::Undrain { id } => op(node_path, |ctx, p| {
            block(ops::node_state(ctx, &id, MemberState::Active, p)).map(|()| exit::OK)
        }),
        NodeCommand::MakeActive { id } => op(node_path, |ctx, p| {
            block(ops::make_active(ctx, &id, p))?;
            println!("{id} is master and holds the Reserved IP");
            Ok(exit::OK)
        }),
    }
}

fn deploy(node_path: &Path, a: ops::DeployArgs) -> u8 {
    op(node_path, |ctx, p| {
        Ok(match block(ops::deploy(ctx, &a, p))? {
            ops::Deployed::Plan { diff } => {
                print::plan(&a.name, &diff);
                exit::OK
            }
            ops::Deployed::Rolled(r) => print::roll(node_path, &a, &r),
        })
    })
}
