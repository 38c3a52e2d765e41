//! The daemon process: the runtime (sized by `node.worker_threads`), the
//! admin listener and catch-up tasks, signals (SIGHUP reloads, SIGTERM and
//! SIGINT stop gracefully) and systemd readiness (`sd_notify`, in
//! [`crate::notify`]). The state it
//! runs is [`crate::daemon::Daemon`]; the shutdown order: `docs/control.md`.

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::daemon::{Daemon, DaemonError};
use crate::loaded::{load, Loaded};

/// Runs the daemon until SIGTERM/SIGINT: builds the runtime with the node's
/// worker threads, serves, reloads on SIGHUP.
pub fn run(node_path: &Path) -> Result<(), DaemonError> {
    let loaded = load(node_path)?;
    crate::logging::set_format(loaded.node.log.format);
    // One worker: a current-thread runtime. Every task then runs on one event
    // loop that drains all ready sockets before writing, as HAProxy's does;
    // the multi-thread scheduler instead runs a woken upstream task at once,
    // so each request's write went out before the next read, waking peers
    // once per request (benches/README.md has the measurements). More
    // workers: the multi-thread runtime.
    let mut builder = match loaded.node.node.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n as usize);
            }
            b
        }
    };
    builder.enable_all().thread_name("dynia-worker");
    let runtime = builder.build().map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(node_path, loaded))
}

async fn serve(node_path: &Path, loaded: Loaded) -> Result<(), DaemonError> {
    let admin_addr = loaded.node.admin.listen;
    let grace = loaded.node.limits.shutdown_grace.as_std();
    let admin = crate::admin::bind(admin_addr).map_err(|source| DaemonError::Admin {
        addr: admin_addr,
        source,
    })?;
    if crate::catchup::removed_while_away(&loaded).await {
        return Ok(());
    }
    let daemon = Daemon::start(node_path, loaded).await?;
    let admin_local = admin.local_addr().unwrap_or(admin_addr);
    tokio::spawn(crate::admin::serve(daemon.clone(), admin));
    tokio::spawn(crate::catchup::run(daemon.clone()));
    tokio::spawn(status_loop(daemon.clone()));
    let (mut hup, mut term, mut int) = (
        signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?,
        signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?,
        signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?,
    );
    let loaded = daemon.loaded();
    tracing::info!(
        node = %loaded.node.node.id,
        cluster = %loaded.cluster.cluster,
        generation = loaded.cluster.generation,
        admin = %admin_local,
        listeners = ?daemon.proxy().listeners().iter().map(|l| l.local.to_string()).collect::<Vec<_>>(),
        "dynia started"
    );
    crate::notify::ready(&crate::notify::status_line(&daemon.status()));
    if let Some(every) = crate::notify::watchdog_interval() {
        start_watchdog(daemon.clone(), every);
    }
    loop {
        tokio::select! {
            // Daemon::reload tells systemd RELOADING=1 … READY=1 itself.
            _ = hup.recv() => { let _ = daemon.reload().await; }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = daemon.stop_requested() => break,
        }
    }
    crate::notify::stopping();
    if let Some(e) = daemon.election() {
        // Resign first (priority 0) and hand the Reserved IP over while still serving.
        e.shutdown(Duration::from_secs(5)).await;
    }
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing requests in flight");
    let clean = daemon.proxy().shutdown(grace).await;
    if clean {
        tracing::info!("stopped");
    } else {
        tracing::warn!("stopped with requests still in flight after shutdown_grace");
    }
    Ok(())
}

/// How often the `STATUS=` line is recomputed (sent only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Keeps systemd's `STATUS=` line current (role, generation, members up).
async fn status_loop(daemon: std::sync::Arc<Daemon>) {
    let mut last = crate::notify::status_line(&daemon.status());
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = daemon.stop_requested() => return,
        }
        let line = crate::notify::status_line(&daemon.status());
        if line != last {
            crate::notify::status(&line);
            last = line;
        }
    }
}

/// How old a proxy heartbeat or election beat may be for a watchdog ping.
const ALIVE_WITHIN: Duration = Duration::from_secs(1);

/// Pings systemd's watchdog four times per interval from a thread of its
/// own, each time only if the proxy runtime and the election thread both
/// proved alive within [`ALIVE_WITHIN`]; a stall longer than the interval
/// gets the process killed and restarted (`Restart=on-failure`).
fn start_watchdog(daemon: std::sync::Arc<Daemon>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("dynia-watchdog".into())
        .spawn(move || {
            let mut was_ok = true;
            loop {
                std::thread::sleep(every / 4);
                let proxy = daemon.proxy().runtime_alive();
                let election = daemon.election().map(|e| e.view().loop_alive(ALIVE_WITHIN));
                let ok = crate::notify::watchdog_ok(proxy, election);
                if ok {
                    crate::notify::watchdog_ping();
                } else if was_ok {
                    tracing::error!(proxy_alive = proxy, election_alive = ?election, "watchdog ping withheld: a runtime is stalled");
                }
                was_ok = ok;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "watchdog thread not started; systemd will restart dynia");
    }
}
