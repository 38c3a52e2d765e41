//! The `dynia` command: wiring only. The command line is defined in
//! `cli.rs`; each subcommand is implemented in `dynia-control`; this file
//! maps arguments onto it and turns its result into an exit status
//! (`exit.rs`). `demo` and `upstream` live in `demo.rs` (they run test
//! fixtures from `dynia-testkit`); completions and man pages in `gen.rs`.

mod cli;
mod commands;
mod demo;
mod exit;
mod gen;
mod print;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use dynia_control::config::MemberState;
use dynia_control::ops;

use cli::{Cli, Command, NodeCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    dynia_control::logging::init();
    let code = match cli.command {
        Command::Run => commands::run(&cli.config),
        Command::Check => commands::check(&cli.config),
        Command::Reload => commands::reload(&cli.config),
        Command::Status { json } => commands::status(&cli.config, json),
        Command::Init(a) => commands::init(&cli.config, a),
        Command::Node { command } => node(&cli.config, command),
        Command::Deploy(a) => deploy(
            &cli.config,
            ops::DeployArgs {
                name: a.name,
                hosts: a.hosts,
                port: a.port,
                health: a.health,
                plan: a.plan,
                timeout: a.timeout,
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
        Command::Completions { shell } => gen::completions(shell),
        Command::Man { dir } => gen::man(&dir),
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
