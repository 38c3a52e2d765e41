//! The swappable runtime state of the proxy: an immutable [`Snapshot`]
//! (routes, services, limits) requests load once through `ArcSwap`, and the
//! [`Registry`] of backends that keeps health, pools and round-robin position
//! across reloads. `docs/proxy.md`, "Snapshots and reloads".

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Health};
use crate::config::{AdminState, HealthConfig, Limits, ProxyConfig};
use crate::health::spawn_checker;
use crate::metrics::{ProxyMetrics, ServiceMetrics, NO_SERVICE};
use crate::route::Router;

/// What the data path reads for a request.
pub struct Snapshot {
    pub config: Arc<ProxyConfig>,
    pub router: Router,
    pub services: Vec<ServiceRt>,
    pub limits: Limits,
    /// Metrics of requests that matched no service.
    pub unrouted: Arc<ServiceMetrics>,
}

/// One service as the data path sees it.
pub struct ServiceRt {
    pub name: Arc<str>,
    pub retries: u32,
    /// Seconds announced in `Retry-After` when no member can take a request.
    pub retry_after: u64,
    pub members: Vec<MemberRt>,
    /// Round-robin position, shared by every snapshot of this service.
    rr: Arc<AtomicUsize>,
    pub metrics: Arc<ServiceMetrics>,
}

/// A member of a service's pool in this snapshot.
pub struct MemberRt {
    pub backend: Arc<Backend>,
    pub state: AdminState,
}

impl MemberRt {
    fn eligible(&self) -> bool {
        self.state == AdminState::Active
            && self.backend.health() != Health::Down
            && self.backend.liveness.routable()
    }
}

/// Members already tried by one request (pools are at most 64 members here).
#[derive(Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    fn is_empty(self) -> bool {
        self.0 == 0
    }
    fn has(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }
}

impl ServiceRt {
    /// Round robin over the members that are ACTIVE, not DOWN and not yet
    /// tried: the rotation counts eligible members only, so when one member is
    /// out the others share its load evenly (as HAProxy's `roundrobin` does);
    /// it moves once per request, not per member tried.
    pub fn pick(&self, tried: Tried) -> Option<(usize, &Arc<Backend>)> {
        let n = self.members.len();
        let eligible = |i: &usize| !tried.has(*i) && self.members[*i].eligible();
        let count = (0..n).filter(eligible).count();
        if count == 0 {
            return None;
        }
        // Only a request's first pick moves the rotation: were a retry or a
        // hedge to move it too, a request that tried a dead member first
        // would step the rotation twice, and with two members the next
        // request would try the dead one first again.
        let k = match tried.is_empty() {
            true => self.rr.fetch_add(1, Ordering::Relaxed),
            false => self.rr.load(Ordering::Relaxed),
        } % count;
        // Health may change between the two passes: fall back to the first.
        let i = (0..n)
            .filter(eligible)
            .nth(k)
            .or_else(|| (0..n).find(eligible))?;
        Some((i, &self.members[i].backend))
    }

    /// Whether [`ServiceRt::pick`] would find a member for `tried`.
    pub fn has_untried(&self, tried: Tried) -> bool {
        (0..self.members.len()).any(|i| !tried.has(i) && self.members[i].eligible())
    }
}

type Key = (Arc<str>, Arc<str>, SocketAddr);

struct Entry {
    backend: Arc<Backend>,
    /// Running checker and the settings it runs with; `None` in MAINT.
    checker: Option<(CancellationToken, HealthConfig)>,
}

/// Backends that exist across snapshots, keyed by (service, member, address).
pub struct Registry {
    entries: HashMap<Key, Entry>,
    metrics: ProxyMetrics,
    /// Per service: its metric handles and its round-robin position.
    services: HashMap<Arc<str>, (Arc<ServiceMetrics>, Arc<AtomicUsize>)>,
    unrouted: Arc<ServiceMetrics>,
}

impl Registry {
    pub fn new(metrics: ProxyMetrics) -> Registry {
        let unrouted = Arc::new(metrics.service(NO_SERVICE));
        Registry {
            entries: HashMap::new(),
            metrics,
            services: HashMap::new(),
            unrouted,
        }
    }

    /// Builds the snapshot for `config`, starting, restarting and stopping
    /// health checkers as needed. Must run inside the Tokio runtime.
    pub fn build(&mut self, config: ProxyConfig) -> Snapshot {
        let mut keep: HashMap<Key, ()> = HashMap::new();
        let mut services = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            let (metrics, rr) = self
                .services
                .entry(svc.name.clone())
                .or_insert_with(|| {
                    let m = Arc::new(self.metrics.service(&svc.name));
                    (m, Arc::new(AtomicUsize::new(0)))
                })
                .clone();
            let mut members = Vec::with_capacity(svc.members.len());
            for m in &svc.members {
                let key: Key = (svc.name.clone(), m.id.clone(), m.addr);
                keep.insert(key.clone(), ());
                let entry = self.entries.entry(key).or_insert_with(|| Entry {
                    backend: Arc::new(Backend::new(
                        svc.name.clone(),
                        m.id.clone(),
                        m.addr,
                        self.metrics.member(&svc.name, &m.id),
                    )),
                    checker: None,
                });
                let wanted = (m.state != AdminState::Maint).then(|| svc.health.clone());
                let same = match (&entry.checker, &wanted) {
                    (Some((_, have)), Some(want)) => have == want,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    if let Some((cancel, _)) = entry.checker.take() {
                        cancel.cancel();
                    }
                    if let Some(cfg) = wanted {
                        let cancel = CancellationToken::new();
                        spawn_checker(entry.backend.clone(), cfg.clone(), cancel.clone());
                        entry.checker = Some((cancel, cfg));
                    }
                }
                members.push(MemberRt {
                    backend: entry.backend.clone(),
                    state: m.state,
                });
            }
            let retry_after = svc.health.interval.as_secs().clamp(1, 60);
            services.push(ServiceRt {
                name: svc.name.clone(),
                retries: svc.retries.min(crate::config::MAX_RETRIES),
                retry_after,
                members,
                rr,
                metrics,
            });
        }
        // A member that only changed address keeps its series (the new
        // backend's handles are the same series).
        let named: HashSet<(&str, &str)> = keep.keys().map(|k| (&*k.0, &*k.1)).collect();
        let metrics = &self.metrics;
        self.entries.retain(|key, entry| {
            if keep.contains_key(key) {
                return true;
            }
            if let Some((cancel, _)) = entry.checker.take() {
                cancel.cancel();
            }
            entry.backend.pool.clear();
            if !named.contains(&(&*key.0, &*key.1)) {
                metrics.forget_member(&key.0, &key.1);
            }
            tracing::info!(service = %key.0, member = %key.1, addr = %key.2, "member left the pool");
            false
        });
        self.services.retain(|name, (m, _)| {
            let kept = config.services.iter().any(|s| &s.name == name);
            if !kept {
                m.forget();
            }
            kept
        });
        let router = Router::new(
            config
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| (&s.hosts[..], i)),
        );
        Snapshot {
            limits: config.limits,
            config: Arc::new(config),
            router,
            services,
            unrouted: self.unrouted.clone(),
        }
    }

    /// Stops every checker (shutdown).
    pub fn stop(&mut self) {
        for e in self.entries.values_mut() {
            if let Some((cancel, _)) = e.checker.take() {
                cancel.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(n: usize) -> ServiceRt {
        let metrics = ProxyMetrics::new(&prometheus::Registry::new()).unwrap();
        let members = (0..n)
            .map(|i| MemberRt {
                backend: Arc::new(Backend::new(
                    "web".into(),
                    format!("m{i}").into(),
                    format!("127.0.0.{}:80", i + 2).parse().unwrap(),
                    metrics.member("web", &format!("m{i}")),
                )),
                state: AdminState::Active,
            })
            .collect();
        ServiceRt {
            name: "web".into(),
            retries: 2,
            retry_after: 1,
            members,
            rr: Arc::new(AtomicUsize::new(0)),
            metrics: Arc::new(metrics.service("web")),
        }
    }

    /// Each request tries the rotation's member first, then the next ones.
    #[test]
    fn rotation_moves_once_per_request_whatever_it_tried() {
        for n in [2, 3] {
            let svc = service(n);
            let mut firsts = Vec::new();
            for _ in 0..2 * n {
                let mut tried = Tried::default();
                let (first, _) = svc.pick(tried).unwrap();
                tried.add(first);
                // A retry or a hedge to every other member.
                while let Some((i, _)) = svc.pick(tried) {
                    assert_ne!(i, first);
                    tried.add(i);
                }
                assert!(!svc.has_untried(tried));
                firsts.push(first);
            }
            let want: Vec<usize> = (0..2 * n).map(|k| k % n).collect();
            assert_eq!(firsts, want, "{n} members");
        }
    }
}
