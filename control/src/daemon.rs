//! The daemon's state: the proxy, the election, the loaded files and the
//! control metrics, reloaded on SIGHUP, `/v1/reload` or an applied document;
//! the process around it (signals, sd_notify) is [`crate::process`] and
//! [`crate::notify`].
//!
//! Reload discipline (`docs/control.md`): parse and validate everything first; only a
//! configuration that passed every check reaches the proxy, in one store. An
//! invalid one changes nothing; it is logged, counted in
//! `dynia_config_reloads_total{result="failure"}` and returned to the caller
//! (`dynia reload` prints it and exits non-zero).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dynia_proxy::Proxy;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigErrors, NodeFile};
use crate::status::{
    ListenerStatus, MemberStatus, ReservedIpStatus, ServiceMemberStatus, ServiceStatus, Status,
};
use crate::wiring::proxy_config;
use dynia_vrrp::ElectionHandle;

/// What stops the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("proxy: {0}")]
    Proxy(#[from] dynia_proxy::ProxyError),
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Election(#[from] dynia_vrrp::ElectionError),
    #[error("reserved ip driver: {0}")]
    Driver(#[from] dynia_vrrp::driver::DriverError),
}

pub use crate::loaded::{load, Loaded};

/// Metrics of the control layer.
struct ControlMetrics {
    generation: IntGauge,
    reloads: IntCounterVec,
}

impl ControlMetrics {
    fn new(registry: &Registry) -> Result<ControlMetrics, prometheus::Error> {
        let generation = IntGauge::new(
            "dynia_config_generation",
            "Generation of the cluster document being served.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "dynia_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("dynia_build_info", "Build of the running dynia; always 1."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Both results exist from the start so rates work before the first failure.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        registry.register(Box::new(generation.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(build))?;
        Ok(ControlMetrics {
            generation,
            reloads,
        })
    }
}

/// A running node.
pub struct Daemon {
    node_path: PathBuf,
    proxy: Proxy,
    registry: Registry,
    metrics: ControlMetrics,
    loaded: Mutex<Arc<Loaded>>,
    reload_lock: tokio::sync::Mutex<()>,
    started: Instant,
    stop: CancellationToken,
    election: Option<ElectionHandle>,
    /// One cluster-document change at a time (compare-and-set in `apply::apply_document`).
    apply_lock: tokio::sync::Mutex<()>,
    /// Per-member rates over the last minute, for the status views.
    rates: Arc<crate::rates::Rates>,
}

pub use crate::wire::Reloaded;

impl Daemon {
    /// Starts the proxy on `loaded`. Must run inside the Tokio runtime.
    pub async fn start(node_path: &Path, loaded: Loaded) -> Result<Arc<Daemon>, DaemonError> {
        let registry = Registry::new();
        let metrics = ControlMetrics::new(&registry)?;
        crate::node_metrics::register(&registry, &loaded.cluster.cluster, &loaded.node.node.id)?;
        let proxy = Proxy::start(proxy_config(&loaded.node, &loaded.cluster), &registry).await?;
        if let Err(e) = crate::logging::set_access_log(&proxy, &loaded.node.log) {
            tracing::warn!(error = %e, "access log not started");
        }
        metrics.generation.set(loaded.cluster.generation as i64);
        let election = match crate::wiring::election_settings(&loaded)? {
            Some(settings) => {
                let driver = crate::wiring::driver(&loaded).await?;
                Some(ElectionHandle::start(
                    settings,
                    crate::election::boot_epoch(&loaded.node.node.state_dir),
                    driver,
                    proxy_link(&proxy),
                    &registry,
                )?)
            }
            None => None,
        };
        let rates = crate::rates::spawn_sampler(&proxy);
        Ok(Arc::new(Daemon {
            node_path: node_path.to_path_buf(),
            proxy,
            registry,
            metrics,
            loaded: Mutex::new(Arc::new(loaded)),
            reload_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            stop: CancellationToken::new(),
            election,
            apply_lock: tokio::sync::Mutex::new(()),
            rates,
        }))
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The configuration last loaded successfully.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the daemon to shut down (as SIGTERM does).
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// Re-reads both files; applies them only if everything is valid.
    /// systemd hears `RELOADING=1` before and `READY=1` after, either way.
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        crate::notify::reloading();
        let result = self.reload_files().await;
        crate::notify::ready(&crate::notify::status_line(&self.status()));
        result
    }

    async fn reload_files(&self) -> Result<Reloaded, ConfigErrors> {
        let result = load(&self.node_path).and_then(|new| {
            let old = self.loaded();
            warn_restart_only(&old.node, &new.node);
            self.proxy
                .apply(proxy_config(&new.node, &new.cluster))
                .map_err(|e| {
                    ConfigErrors::from(config::ConfigProblem::InDocument {
                        key: self.node_path.display().to_string(),
                        message: e.to_string(),
                    })
                })?;
            Ok(new)
        });
        match result {
            Ok(new) => {
                if new.node.log != self.loaded().node.log {
                    crate::logging::set_format(new.node.log.format);
                    if let Err(e) = crate::logging::set_access_log(&self.proxy, &new.node.log) {
                        tracing::warn!(error = %e, "access log not started");
                    }
                }
                if let (Some(e), Ok(Some(settings))) =
                    (&self.election, crate::wiring::election_settings(&new))
                {
                    e.reconfigure(settings).await;
                }
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.generation.set(new.cluster.generation as i64);
                let done = Reloaded {
                    generation: new.cluster.generation,
                    config_hash: new.hash.clone(),
                };
                tracing::info!(
                    generation = done.generation,
                    config_hash = %done.config_hash,
                    "configuration reloaded"
                );
                *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                Ok(done)
            }
            Err(errors) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                for e in errors.errors() {
                    tracing::warn!(error = %e, "reload refused; still serving the previous configuration");
                }
                Err(errors)
            }
        }
    }

    /// The `/status.json` document.
    pub fn status(&self) -> Status {
        let loaded = self.loaded();
        let me = loaded.cluster.member(&loaded.node.node.id);
        let proxy = self.proxy.status();
        let shared = self.election.as_ref().map(|e| e.view());
        let role = shared.map_or("init", |s| s.role().as_str()).to_string();
        crate::status::with_drift(Status {
            node: loaded.node.node.id.clone(),
            cluster: loaded.cluster.cluster.clone(),
            generation: loaded.cluster.generation,
            config_hash: loaded.hash.clone(),
            role: role.clone(),
            priority: shared.map_or(me.map_or(0, |m| m.priority), |s| s.priority()),
            reserved_ip: ReservedIpStatus {
                address: loaded.node.reserved_ip.address.map(|a| a.to_string()),
                held: shared
                    .is_some_and(|s| s.held() && s.role() == dynia_vrrp::election::Role::Master),
                stepped_back_from: shared.and_then(|s| s.stepped_back_from()).map(|ip| {
                    loaded
                        .cluster
                        .members
                        .iter()
                        .find(|m| m.private_ip == ip)
                        .map_or_else(|| ip.to_string(), |m| m.id.clone())
                }),
            },
            members: loaded
                .cluster
                .members
                .iter()
                .map(|m| {
                    let is_me = m.id == loaded.node.node.id;
                    let seen = match (is_me, shared) {
                        (false, Some(s)) => s.seen(m.private_ip),
                        _ => None,
                    };
                    let (peer_role, generation, last_seen_ms, priority) = match (&seen, is_me) {
                        (_, true) => (
                            role.clone(),
                            Some(loaded.cluster.generation),
                            Some(0),
                            shared.map_or(m.priority, |s| s.priority()),
                        ),
                        (Some(x), false) => (
                            x.role.as_str().to_string(),
                            x.generation,
                            Some(x.at.elapsed().as_millis() as u64),
                            x.priority,
                        ),
                        (None, false) => ("unknown".to_string(), None, None, m.priority),
                    };
                    MemberStatus {
                        id: m.id.clone(),
                        private_ip: m.private_ip.to_string(),
                        liveness: match (is_me, shared) {
                            (true, _) => "self".into(),
                            (false, Some(s)) => s.liveness(m.private_ip).as_str().into(),
                            (false, None) => "unknown".into(),
                        },
                        priority,
                        state: member_state(m.state).into(),
                        role: peer_role,
                        generation,
                        last_seen_ms,
                        config_hash: if is_me {
                            Some(loaded.hash.clone())
                        } else {
                            seen.as_ref()
                                .and_then(|x| x.config_hash)
                                .map(|h| crate::status::hex(&h))
                        },
                    }
                })
                .collect(),
            services: loaded
                .cluster
                .services
                .iter()
                .map(|s| {
                    let rt = proxy.iter().find(|p| p.name == s.name);
                    ServiceStatus {
                        name: s.name.clone(),
                        hosts: s.hosts.clone(),
                        port: s.port,
                        members: rt
                            .map(|rt| {
                                rt.members
                                    .iter()
                                    .map(|m| ServiceMemberStatus::new(&s.name, m, &self.rates))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect(),
            listeners: self
                .proxy
                .listeners()
                .into_iter()
                .map(|l| ListenerStatus {
                    name: l.name,
                    address: l.local.to_string(),
                    serving: l.serving,
                })
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            drift: Vec::new(),
            lost: Vec::new(),
            transitions: crate::logging::transitions(),
        })
    }
}

impl Daemon {
    /// The election, when this node runs one.
    pub fn election(&self) -> Option<&ElectionHandle> {
        self.election.as_ref()
    }

    /// Whether a shutdown was requested.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The lock that keeps cluster-document changes one at a time
    /// ([`crate::apply::apply_document`] holds it).
    pub(crate) fn apply_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.apply_lock
    }

    /// Resolves once a shutdown was requested.
    pub async fn stop_requested(&self) {
        self.stop.cancelled().await
    }
}

fn member_state(s: config::MemberState) -> &'static str {
    crate::wiring::admin_state(s).as_str()
}

/// Keys that only take effect at start: say so rather than ignore silently.
fn warn_restart_only(old: &NodeFile, new: &NodeFile) {
    if old.admin.listen != new.admin.listen {
        tracing::warn!(
            key = "admin.listen",
            "change takes effect at the next restart"
        );
    }
    if old.node.worker_threads != new.node.worker_threads {
        tracing::warn!(
            key = "node.worker_threads",
            "change takes effect at the next restart"
        );
    }
    if old.node.id != new.node.id {
        tracing::warn!(key = "node.id", "change takes effect at the next restart");
    }
}

/// The election's view of the proxy: tracking, and members it lost.
fn proxy_link(proxy: &Proxy) -> dynia_vrrp::runtime::ProxyLink {
    let (p, q) = (proxy.clone(), proxy.clone());
    dynia_vrrp::runtime::ProxyLink {
        can_serve: Box::new(move || p.can_serve()),
        on_liveness: Box::new(move |id, l| {
            q.set_member_lost(id, l == dynia_vrrp::liveness::PeerLiveness::Lost)
        }),
    }
}
