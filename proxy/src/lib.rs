//! dynia's data plane: the L7 proxy that replaces HAProxy on every node.
//!
//! [`Proxy`] owns the listeners, the swappable [`state::Snapshot`] the data path
//! reads, and the backends whose health survives reloads. Control calls
//! [`Proxy::start`] / [`Proxy::apply`] and reads [`Proxy::status`] and
//! [`Proxy::can_serve`] (docs/proxy.md, "Can this node serve?").

pub mod access;
pub mod backend;
pub mod body;
pub mod config;
mod conn;
mod connect;
mod exchange;
pub mod forward;
pub mod health;
pub mod hedge;
mod io;
pub mod liveness;
pub mod metrics;
pub mod route;
pub mod server;
pub mod state;
pub mod tls;
mod tunnel;
pub mod upload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backend::Health;
pub use config::{
    AdminState, CertificateFiles, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig,
    ProxyConfig, ServiceConfig,
};
pub use metrics::ProxyMetrics;

use state::{Registry, Snapshot};

/// Why the proxy could not start or take a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("listener `{listener}`: {source}")]
    Tls {
        listener: String,
        source: tls::TlsError,
    },
    #[error("TLS: {0}")]
    TlsSetup(#[from] tls::TlsError),
}

/// State shared by the accept loops, connections and the control handle.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) metrics: ProxyMetrics,
    /// Client connections holding a slot, tunnels included (see `server::ConnState`).
    pub(crate) connections: AtomicUsize,
    /// Every connection and tunnel task: shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Fired at shutdown: every connection finishes gracefully.
    pub(crate) stop: CancellationToken,
    /// Fired when `shutdown_grace` is over: whatever still runs is cut.
    pub(crate) kill: CancellationToken,
    /// Time base of the millisecond stamps below.
    epoch: Instant,
    /// Milliseconds since `epoch` when the heartbeat task last ran.
    heartbeat_ms: AtomicU64,
    /// Acceptors of the TLS listeners, swapped on apply.
    pub(crate) tls: tls::Tls,
    /// The access log, when the node file switches it on.
    pub(crate) access: arc_swap::ArcSwapOption<access::AccessLog>,
    registry: Mutex<Registry>,
    listeners: Mutex<Vec<Running>>,
    /// Members the election has lost (at most the cluster's 32): applied to
    /// the backends of every new snapshot too.
    lost_members: Mutex<Vec<String>>,
}

struct Running {
    name: Arc<str>,
    bind: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
    health: Arc<AcceptHealth>,
}

/// Marks member `id` lost or heard in every pool of `snap`; a change makes
/// its checker look at once.
fn mark_lost(snap: &Snapshot, id: &str, lost: bool) {
    for m in snap.services.iter().flat_map(|s| s.members.iter()) {
        if &*m.backend.member == id && m.backend.liveness.set_lost(lost) {
            if lost {
                m.backend.pool.purge(Duration::ZERO); // connections to a dead node
            }
            m.backend.suspect();
        }
    }
}

/// How often the heartbeat task stamps the time on the proxy runtime.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// A heartbeat older than this means the proxy runtime is stalled.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(1);
/// A listener whose accept has failed continuously for longer does not serve.
pub const ACCEPT_FAILING_LIMIT: Duration = Duration::from_secs(1);

/// Whether a listener's accept loop runs and accepts.
pub(crate) struct AcceptHealth {
    alive: AtomicBool,
    /// Milliseconds since the proxy's epoch when accept started failing, or
    /// `u64::MAX` while it works.
    failing_since_ms: AtomicU64,
}

impl AcceptHealth {
    fn new() -> AcceptHealth {
        AcceptHealth {
            alive: AtomicBool::new(true),
            failing_since_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Records a failed accept; `true` when this starts a failing streak.
    pub(crate) fn failed(&self, now_ms: u64) -> bool {
        self.failing_since_ms
            .compare_exchange(u64::MAX, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Records that accepting works; `true` when this ends a failing streak.
    pub(crate) fn ok(&self) -> bool {
        self.failing_since_ms.load(Ordering::Relaxed) != u64::MAX
            && self.failing_since_ms.swap(u64::MAX, Ordering::Relaxed) != u64::MAX
    }

    fn serving(&self, now_ms: u64) -> bool {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        self.alive.load(Ordering::Relaxed)
            && (since == u64::MAX
                || now_ms.saturating_sub(since) <= ACCEPT_FAILING_LIMIT.as_millis() as u64)
    }
}

impl Shared {
    /// Milliseconds since the proxy started (monotonic).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the heartbeat task ran recently, i.e. the runtime runs tasks.
    fn runtime_alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
            <= HEARTBEAT_STALE.as_millis() as u64
    }
}

/// Handle to a running proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

/// One listener as it runs.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub name: String,
    pub local: SocketAddr,
    pub serving: bool,
}

/// A service's pool as the proxy sees it now.
#[derive(Debug, Clone)]
pub struct PoolView {
    pub name: String,
    pub hosts: Vec<String>,
    pub members: Vec<PoolMemberView>,
}

/// One member of a service's pool.
#[derive(Debug, Clone)]
pub struct PoolMemberView {
    pub id: String,
    pub addr: SocketAddr,
    pub health: Health,
    pub state: AdminState,
    pub inflight: usize,
    /// Why and when the health last changed (none since start).
    pub last_change: Option<(String, std::time::SystemTime)>,
    /// Counters since start, for rates over a window (see `metrics`).
    pub counts: metrics::MemberCounts,
}

impl Proxy {
    /// Validates `config`, binds its listeners and starts serving and checking.
    /// Must be called inside a Tokio runtime.
    pub async fn start(
        config: ProxyConfig,
        registry: &prometheus::Registry,
    ) -> Result<Proxy, ProxyError> {
        config.validate()?;
        let metrics = ProxyMetrics::new(registry)?;
        let tls = tls::Tls::new(registry)?;
        let prepared = tls.prepare(&config)?;
        let mut reg = Registry::new(metrics.clone());
        let listeners = config.listeners.clone();
        let bound = bind_all(&listeners)?;
        tls.store(prepared);
        let snapshot = reg.build(config);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            connections: AtomicUsize::new(0),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
            epoch: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            tls,
            access: arc_swap::ArcSwapOption::empty(),
            registry: Mutex::new(reg),
            listeners: Mutex::new(Vec::new()),
            lost_members: Mutex::new(Vec::new()),
        });
        let proxy = Proxy { shared };
        for (l, tcp) in listeners.iter().zip(bound) {
            proxy.run_listener(l, tcp);
        }
        tokio::spawn(check_expiry(proxy.shared.clone()));
        tokio::spawn(heartbeat(proxy.shared.clone()));
        Ok(proxy)
    }

    fn run_listener(&self, l: &ListenerConfig, tcp: tokio::net::TcpListener) {
        let local = tcp.local_addr().unwrap_or(l.bind);
        let stop = CancellationToken::new();
        let health = Arc::new(AcceptHealth::new());
        let name: Arc<str> = l.name.as_str().into();
        tracing::info!(listener = %name, addr = %local, "listening");
        let (s, n, st, h) = (
            self.shared.clone(),
            name.clone(),
            stop.clone(),
            health.clone(),
        );
        tokio::spawn(async move {
            server::accept_loop(s, tcp, n, st, &h).await;
            h.alive.store(false, Ordering::Relaxed);
        });
        lock(&self.shared.listeners).push(Running {
            name,
            bind: l.bind,
            local,
            stop,
            health,
        });
    }

    /// Hot swap: validates `config`, binds new listeners, then stores the new
    /// snapshot in one step. On any error nothing changes.
    pub fn apply(&self, config: ProxyConfig) -> Result<(), ProxyError> {
        config.validate()?;
        // Certificates are read first: a bad one changes nothing.
        let prepared = self.shared.tls.prepare(&config)?;
        let running: Vec<(Arc<str>, SocketAddr)> = lock(&self.shared.listeners)
            .iter()
            .map(|r| (r.name.clone(), r.bind))
            .collect();
        let new: Vec<ListenerConfig> = config
            .listeners
            .iter()
            .filter(|l| !running.iter().any(|(n, b)| **n == *l.name && *b == l.bind))
            .cloned()
            .collect();
        // Stop listeners that go away or move before binding their successors,
        // so a listener can change its address to one it frees.
        let removed: Vec<Running> = {
            let mut all = lock(&self.shared.listeners);
            let (gone, keep): (Vec<_>, Vec<_>) = all.drain(..).partition(|r| {
                !config
                    .listeners
                    .iter()
                    .any(|l| *l.name == *r.name && l.bind == r.bind)
            });
            *all = keep;
            gone
        };
        let bound = match bind_all(&new) {
            Ok(b) => b,
            Err(e) => {
                // Put the old listeners back untouched: nothing changes.
                lock(&self.shared.listeners).extend(removed);
                return Err(e);
            }
        };
        for r in &removed {
            r.stop.cancel();
            tracing::info!(listener = %r.name, addr = %r.local, "listener closed");
        }
        let snapshot = lock(&self.shared.registry).build(config);
        for id in lock(&self.shared.lost_members).iter() {
            mark_lost(&snapshot, id, true);
        }
        self.shared.tls.store(prepared);
        self.shared.snapshot.store(Arc::new(snapshot));
        for (l, tcp) in new.iter().zip(bound) {
            self.run_listener(l, tcp);
        }
        Ok(())
    }

    /// Switches the access log on (`Some`) or off (`None`), at once for new
    /// requests. See [`access`].
    pub fn set_access_log(&self, log: Option<access::AccessLog>) {
        self.shared.access.store(log.map(Arc::new));
    }

    /// The proxy's metric handles (for the access log's drop counter).
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.shared.metrics
    }

    /// The configuration currently served.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.shared.snapshot.load().config.clone()
    }

    /// Listeners with the address each is bound to. `serving` is false for a
    /// listener whose accept loop stopped or has been failing for over
    /// [`ACCEPT_FAILING_LIMIT`], and for every listener while the proxy
    /// runtime is stalled.
    pub fn listeners(&self) -> Vec<ListenerView> {
        let now = self.shared.now_ms();
        let runtime = self.shared.runtime_alive(now);
        lock(&self.shared.listeners)
            .iter()
            .map(|r| ListenerView {
                name: r.name.to_string(),
                local: r.local,
                serving: runtime && r.health.serving(now),
            })
            .collect()
    }

    /// Every service's pool with health, admin state and in-flight counts.
    pub fn status(&self) -> Vec<PoolView> {
        let snap = self.shared.snapshot.load();
        snap.services
            .iter()
            .zip(&snap.config.services)
            .map(|(rt, cfg)| PoolView {
                name: rt.name.to_string(),
                hosts: cfg.hosts.iter().map(|h| h.to_string()).collect(),
                members: rt
                    .members
                    .iter()
                    .map(|m| PoolMemberView {
                        id: m.backend.member.to_string(),
                        addr: m.backend.addr,
                        health: m.backend.health(),
                        state: m.state,
                        inflight: m.backend.inflight(),
                        last_change: m.backend.last_change(),
                        counts: m.backend.metrics.counts(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Whether the proxy runtime runs tasks: its heartbeat task stamped the
    /// time within [`HEARTBEAT_STALE`]. Callable from any thread.
    pub fn runtime_alive(&self) -> bool {
        self.shared.runtime_alive(self.shared.now_ms())
    }

    /// Whether this node's proxy can serve: its runtime runs tasks (recent
    /// heartbeat), every listener is accepting (see [`Proxy::listeners`]), and,
    /// if any service is configured, at least one service has a member not DOWN.
    /// Callable from any thread; never blocks on the proxy runtime.
    pub fn can_serve(&self) -> bool {
        let now = self.shared.now_ms();
        if !self.shared.runtime_alive(now) {
            return false;
        }
        let listening = lock(&self.shared.listeners)
            .iter()
            .all(|r| r.health.serving(now));
        let snap = self.shared.snapshot.load();
        let some_member = snap.services.is_empty()
            || snap.services.iter().any(|s| {
                s.members.iter().any(|m| {
                    m.state != AdminState::Maint
                        && m.backend.health() != Health::Down
                        && m.backend.liveness.routable()
                })
            });
        listening && some_member
    }

    /// The election lost member `id` (`true`) or hears it again (`false`):
    /// every pool skips it at once; heard again, it waits for a passing check.
    /// Cheap and non-blocking (the election thread calls it).
    pub fn set_member_lost(&self, id: &str, lost: bool) {
        {
            let mut ids = lock(&self.shared.lost_members);
            ids.retain(|m| m != id);
            if lost {
                ids.push(id.to_string());
            }
        }
        mark_lost(&self.shared.snapshot.load(), id, lost);
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets connections and WebSocket tunnels finish within
    /// `grace`, then cuts whatever still runs and stops checks. Returns
    /// whether everything finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        for r in lock(&self.shared.listeners).drain(..) {
            r.stop.cancel();
        }
        self.shared.stop.cancel();
        self.shared.tracker.close();
        let done = tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok();
        self.shared.kill.cancel();
        lock(&self.shared.registry).stop();
        done
    }
}

/// Warns every [`tls::EXPIRY_CHECK_EVERY`] about certificates close to expiry
/// (each load warns too), until shutdown.
async fn check_expiry(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(tls::EXPIRY_CHECK_EVERY);
    tick.tick().await; // the first tick is now: the load just warned
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => shared.tls.check_expiry(),
        }
    }
}

/// Stamps the time on the proxy runtime every [`HEARTBEAT_EVERY`] until
/// shutdown, so that [`Proxy::can_serve`] notices a stalled runtime.
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => shared.heartbeat_ms.store(shared.now_ms(), Ordering::Relaxed),
        }
    }
}

fn bind_all(listeners: &[ListenerConfig]) -> Result<Vec<tokio::net::TcpListener>, ProxyError> {
    listeners
        .iter()
        .map(|l| {
            server::bind(l.bind).map_err(|source| ProxyError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })
        })
        .collect()
}

/// Locks a mutex of the control path, recovering from a poisoned one.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
