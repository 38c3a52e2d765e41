//! The election's runtime: one thread with its own single-threaded Tokio
//! runtime (so proxy load cannot starve adverts) that runs the state
//! machine ([`crate::election`]) over a transport ([`crate::transport`]),
//! tracks whether the proxy can serve, runs hooks, and drives the
//! Reserved IP through the follower ([`crate::follower`]). The caller holds
//! an [`ElectionHandle`]. See `docs/election.md`.

mod alive;
mod follow;
mod handover;
mod realtime;
mod shell;
mod transitions;
mod view;

pub use crate::settings::{ElectionError, ElectionPeer, ElectionSettings, TransportKind};
pub use view::{ElectionView, PeerSeen};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::driver::Driver;
use crate::election::Election;
use crate::liveness::PeerLiveness;
use crate::metrics::ElectionMetrics;
use crate::transport::Opened;

/// Pending commands to the election thread.
const COMMANDS: usize = 16;

enum Command {
    Reconfigure(Box<ElectionSettings>),
    /// Resign (priority 0), hand over, release; answer when done.
    Shutdown(oneshot::Sender<()>),
}

/// Told of a member (by id) lost or heard again; runs on the election thread.
pub type OnLiveness = Box<dyn Fn(&str, PeerLiveness) + Send>;

/// What the election asks of, and tells, the proxy beside it.
pub struct ProxyLink {
    /// Polled for tracking: can this node's proxy serve?
    pub can_serve: Box<dyn Fn() -> bool + Send>,
    /// A member (by id) was lost or heard again (`dynia` transport only).
    /// Called on the election thread: it must not block.
    pub on_liveness: OnLiveness,
}

/// Handle to the running election.
pub struct ElectionHandle {
    view: Arc<ElectionView>,
    commands: mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ElectionHandle {
    /// Starts the election thread. `boot_epoch` must be higher than any
    /// earlier run's (the caller persists it); `proxy` is polled for
    /// tracking and told of lost members; the metrics go to `registry`.
    pub fn start(
        settings: ElectionSettings,
        boot_epoch: u64,
        driver: Driver,
        proxy: ProxyLink,
        registry: &Registry,
    ) -> Result<ElectionHandle, ElectionError> {
        let election = Election::new(settings.election_config())
            .map_err(|e| ElectionError::Config(e.to_string()))?;
        let opened = Opened::open(&settings)?;
        let metrics = ElectionMetrics::new(registry, settings.transport)?;
        crate::metrics::register_driver(registry, &driver)?;
        let view = Arc::new(ElectionView::new(
            settings.priority.get(),
            settings.peers.clone(),
        ));
        let (tx, rx) = mpsc::channel(COMMANDS);
        let v = view.clone();
        let thread = std::thread::Builder::new()
            .name("dynia-election".into())
            .spawn(move || {
                realtime::realtime(settings.rt_priority);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "election runtime failed to start");
                        return;
                    }
                };
                rt.block_on(async move {
                    let wire = match opened.into_wire(&settings, boot_epoch) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(error = %e, "election socket unusable");
                            return;
                        }
                    };
                    let shell = shell::Shell::new(settings, election, wire, driver, v, metrics);
                    shell.run(rx, proxy).await;
                });
            })
            .map_err(ElectionError::Thread)?;
        Ok(ElectionHandle {
            view,
            commands: tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The election's state as other threads read it.
    pub fn view(&self) -> &ElectionView {
        &self.view
    }

    /// Applies new settings (members, generation, priority); bounded wait.
    pub async fn reconfigure(&self, settings: ElectionSettings) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.commands.send(Command::Reconfigure(Box::new(settings))),
        )
        .await;
    }

    /// Resigns mastership and hands over, then stops the thread (bounded).
    pub async fn shutdown(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
