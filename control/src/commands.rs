//! The `dynia` subcommands. Each returns the process exit status and prints
//! what a person needs: the result, or what went wrong and what to do next.

use std::net::SocketAddr;
use std::path::Path;

use crate::client::{AdminClient, ClientError};
use crate::config::{self, ConfigErrors};

/// Exit status for success.
pub const OK: u8 = 0;
/// Exit status for a refusal or failure.
pub const FAILED: u8 = 1;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds")
}

fn print_config_errors(errors: &ConfigErrors) {
    for e in errors.errors() {
        eprintln!("{e}");
    }
}

/// `dynia run`.
pub fn run(node_path: &Path) -> u8 {
    match crate::daemon::run(node_path) {
        Ok(()) => OK,
        Err(crate::daemon::DaemonError::Config(errors)) => {
            print_config_errors(&errors);
            eprintln!(
                "dynia: not started; fix the configuration above, then `dynia check -c {}`",
                node_path.display()
            );
            FAILED
        }
        Err(e) => {
            eprintln!("dynia: {e}");
            FAILED
        }
    }
}

/// `dynia check`.
pub fn check(node_path: &Path) -> u8 {
    match crate::daemon::load(node_path) {
        Ok(l) => {
            println!(
                "ok: node {} in cluster {} (generation {}, {} members, {} services, config hash {})",
                l.node.node.id,
                l.cluster.cluster,
                l.cluster.generation,
                l.cluster.members.len(),
                l.cluster.services.len(),
                &l.hash[..12.min(l.hash.len())]
            );
            OK
        }
        Err(errors) => {
            print_config_errors(&errors);
            FAILED
        }
    }
}

/// A client of the local daemon named by the node file.
fn local_client(node_path: &Path) -> Result<AdminClient, u8> {
    let node = config::load_node_file(node_path).map_err(|e| {
        print_config_errors(&e);
        FAILED
    })?;
    let token = match &node.admin.token_file {
        Some(p) => Some(config::read_secret(p).map_err(|e| {
            eprintln!("{e}");
            FAILED
        })?),
        None => None,
    };
    Ok(AdminClient::new(node.admin.listen, token))
}

/// `dynia reload`.
pub fn reload(node_path: &Path) -> u8 {
    let client = match local_client(node_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match runtime().block_on(client.reload()) {
        Ok(r) => {
            println!(
                "reloaded: generation {}, config hash {}",
                r.generation,
                &r.config_hash[..12.min(r.config_hash.len())]
            );
            OK
        }
        Err(ClientError::Refused { message, .. }) => {
            eprintln!("{message}");
            eprintln!("dynia: reload refused; the daemon keeps serving its previous configuration");
            FAILED
        }
        Err(e) => {
            eprintln!("dynia: {e}");
            FAILED
        }
    }
}

/// `dynia status [--json]`.
pub fn status(node_path: &Path, json: bool) -> u8 {
    let client = match local_client(node_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let s = match runtime().block_on(client.status()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dynia: {e}");
            return FAILED;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return OK;
    }
    println!(
        "cluster {}  generation {}  config {}  reserved ip {}",
        s.cluster,
        s.generation,
        &s.config_hash[..12.min(s.config_hash.len())],
        s.reserved_ip.address.as_deref().unwrap_or("-")
    );
    println!(
        "{:<20} {:<8} {:>8} {:<16} {:<7} {:>10} {:>9}",
        "ID", "ROLE", "PRIORITY", "PRIVATE IP", "STATE", "GENERATION", "SERVICES"
    );
    for m in &s.members {
        let (up, total) = s.services.iter().fold((0, 0), |(u, t), svc| {
            let h = svc.members.iter().find(|x| x.id == m.id);
            (
                u + usize::from(h.is_some_and(|h| h.health == "up")),
                t + usize::from(h.is_some()),
            )
        });
        let me = if m.id == s.node { "*" } else { " " };
        println!(
            "{:<20} {:<8} {:>8} {:<16} {:<7} {:>10} {:>9}",
            format!("{}{}", m.id, me),
            m.role,
            m.priority,
            m.private_ip,
            m.state,
            m.generation.map_or("?".into(), |g| g.to_string()),
            format!("{up}/{total}")
        );
    }
    OK
}

/// `dynia upstream`: a demo application server until SIGTERM/SIGINT.
pub fn upstream(listen: SocketAddr, id: &str) -> u8 {
    runtime().block_on(async {
        let up = match dynia_proxy::demo::DemoUpstream::start(listen, id).await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("dynia upstream: cannot listen on {listen}: {e}");
                return FAILED;
            }
        };
        tracing::info!(id, addr = %up.addr, "demo upstream listening");
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dynia upstream: {e}");
                    return FAILED;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        up.kill();
        OK
    })
}

/// `dynia demo [--keep]`.
pub fn demo(keep: bool) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynia demo: cannot start the runtime: {e}");
            return FAILED;
        }
    };
    match rt.block_on(crate::demo::run(keep)) {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("{e}");
            FAILED
        }
    }
}
