//! The `dynia` command: CLI parsing and wiring only. Each subcommand is
//! implemented in `dynia-control`; this file maps arguments onto it and turns
//! its result into an exit status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dynia_control::commands;

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
    /// Show dynia on this machine: a node and three demo members on loopback, no root needed.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    dynia_control::logging::init();
    let code = match cli.command {
        Command::Run => commands::run(&cli.config),
        Command::Check => commands::check(&cli.config),
        Command::Reload => commands::reload(&cli.config),
        Command::Status { json } => commands::status(&cli.config, json),
        Command::Demo { keep } => commands::demo(keep),
        Command::Upstream { listen, id } => commands::upstream(listen, &id),
    };
    ExitCode::from(code)
}
