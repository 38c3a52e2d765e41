//! A faithful local simulator of the DigitalOcean API (Reserved IPs and
//! their actions) and of the droplet metadata service, over real HTTP/1.1,
//! with faults on demand and a call log tests assert on; for the driver's
//! tests, `dynia demo` and the netns harness. What it answers and why:
//! docs/testing.md "The DigitalOcean simulator". Parts: `state` (the world),
//! `api` and `actions` (the `/v2` server), `faults` (the injection queue),
//! `metadata` (per-droplet servers), `calls` (the log), `clock` (tokio-based
//! wall time and timestamps), `ratelimit` (the per-token windows).

mod actions;
mod api;
mod calls;
mod clock;
mod faults;
mod metadata;
mod ratelimit;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use calls::{Call, CallTarget};
pub use faults::Fault;
pub use metadata::MetadataServer;
pub use ratelimit::{PER_HOUR, PER_MINUTE};
pub use state::SameDropletAssign;
use state::{SimReservedIp, SimShared, World};

/// Most bytes the simulator reads from a request body.
const MAX_BODY: usize = 64 * 1024;
/// Most entries kept in the call log (oldest dropped first).
const MAX_CALLS: usize = 10_000;
/// Most concurrent connections per server; more are closed at once.
const MAX_CONNS: usize = 256;
/// How long an action stays `in-progress` unless set otherwise: the real
/// API's take seconds (the OpenAPI example assign ran 11 s).
pub const DEFAULT_ACTION_DELAY: Duration = Duration::from_secs(2);
/// The region every simulated resource lives in.
pub const SIM_REGION: &str = "fra1";

/// The running simulator. Dropping it stops the API and metadata servers.
pub struct DoSim {
    shared: Arc<SimShared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for DoSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for DoSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DoSim {
    /// Start the API server on `bind` (e.g. `127.0.0.1:0`), accepting `token`.
    pub async fn start(bind: SocketAddr, token: &str) -> io::Result<DoSim> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(SimShared {
            world: Mutex::new(World {
                tokens: vec![token.to_owned()],
                clock: clock::SimClock::new(),
                limits: ratelimit::RateLimits::default(),
                action_hidden_for: Duration::ZERO,
                completed_alias: None,
                droplets: BTreeMap::new(),
                droplet_status: BTreeMap::new(),
                ips: BTreeMap::new(),
                actions: BTreeMap::new(),
                next_action: 2_000_000_001,
                action_delay: DEFAULT_ACTION_DELAY,
                action_delay_max: None,
                metadata_lag: Duration::ZERO,
                same_droplet: SameDropletAssign::default(),
                faults: VecDeque::new(),
                latency: Duration::ZERO,
                calls: VecDeque::new(),
            }),
            accepted: Arc::new(AtomicU64::new(0)),
            served: tokio::sync::Notify::new(),
        });
        let s = shared.clone();
        let server = spawn_server(listener, shared.accepted.clone(), move |req| {
            let s = s.clone();
            async move { api::api(&s, req).await }
        });
        Ok(DoSim {
            shared,
            addr,
            server,
        })
    }

    /// Base URL to use as `api_url`, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Add (or replace) a droplet.
    pub fn add_droplet(&self, id: u64, private_ip: Ipv4Addr) {
        self.shared.world().droplets.insert(id, private_ip);
    }

    /// Set a droplet's `status` as the API reports it: `active` (the
    /// default), `off` (powered off), `new`, `archive`.
    pub fn set_droplet_status(&self, id: u64, status: &'static str) {
        let mut w = self.shared.world();
        if status == "active" {
            w.droplet_status.remove(&id);
        } else {
            w.droplet_status.insert(id, status);
        }
    }

    /// Add (or replace) a Reserved IP, held by `holder` or by nobody.
    pub fn add_reserved_ip(&self, ip: IpAddr, holder: Option<u64>) {
        self.shared
            .world()
            .ips
            .insert(ip, SimReservedIp::new(holder));
    }

    /// Who holds `ip` now (`None`: nobody, or no such IP).
    pub fn holder(&self, ip: IpAddr) -> Option<u64> {
        self.shared.world().ips.get(&ip).and_then(|r| r.holder)
    }

    /// Move `ip` out of band (as if another node or a person had done it).
    pub fn set_holder(&self, ip: IpAddr, holder: Option<u64>) {
        if let Some(r) = self.shared.world().ips.get_mut(&ip) {
            r.set_holder(holder, tokio::time::Instant::now());
        }
    }

    /// True while an action on `ip` is in progress.
    /// Waits until `cond` holds, looking again after each API call the
    /// simulator answers (the calls are what change it); `false` after
    /// `limit` (tokio's clock, so a paused test clock runs it forward).
    pub async fn until_served(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&DoSim) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = self.shared.served.notified();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, next).await.is_err() {
                return cond(self);
            }
        }
    }

    pub fn is_locked(&self, ip: IpAddr) -> bool {
        self.shared
            .world()
            .ips
            .get(&ip)
            .is_some_and(|r| r.pending.is_some())
    }

    /// How long new actions stay `in-progress` (default
    /// [`DEFAULT_ACTION_DELAY`]; real ones take seconds, up to ~15).
    pub fn set_action_delay(&self, d: Duration) {
        let mut w = self.shared.world();
        w.action_delay = d;
        w.action_delay_max = None;
    }

    /// Each new action takes a random time between `min` and `max`.
    pub fn set_action_delay_range(&self, min: Duration, max: Duration) {
        let mut w = self.shared.world();
        w.action_delay = min;
        w.action_delay_max = Some(max.max(min));
    }

    /// The metadata services show a holder change `lag` after the API does
    /// (default zero; how late the real one is, nobody documents).
    pub fn set_metadata_lag(&self, lag: Duration) {
        self.shared.world().metadata_lag = lag;
    }

    /// A new action's GET answers 404 for this long (default zero).
    pub fn set_action_hidden_for(&self, d: Duration) {
        self.shared.world().action_hidden_for = d;
    }

    /// Completed actions report `status` instead of `completed` (e.g.
    /// `done`, as the API briefly did); `None` restores `completed`.
    pub fn set_completed_status(&self, status: Option<&'static str>) {
        self.shared.world().completed_alias = status;
    }

    /// Accept another token (another cluster, Terraform…): its own rate limit.
    pub fn add_token(&self, token: &str) {
        self.shared.world().tokens.push(token.to_owned());
    }

    /// The per-token limits (default [`PER_HOUR`] and [`PER_MINUTE`]).
    pub fn set_rate_limits(&self, per_hour: u32, per_minute: u32) {
        let mut w = self.shared.world();
        w.limits.per_hour = per_hour;
        w.limits.per_minute = per_minute;
    }

    /// Requests `token` made in the last hour (what `RateLimit-Remaining` counts).
    pub fn rate_limit_used(&self, token: &str) -> usize {
        self.shared
            .world()
            .limits
            .used(token, tokio::time::Instant::now())
    }

    /// What assigning to the current holder answers (default 422).
    pub fn set_same_droplet_assign(&self, mode: SameDropletAssign) {
        self.shared.world().same_droplet = mode;
    }
}

/// Accept loop: HTTP/1.1, bounded connections; aborting the task closes all.
fn spawn_server<F, Fut>(
    listener: TcpListener,
    accepted: Arc<AtomicU64>,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((stream, _)) = r else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    if conns.len() >= MAX_CONNS {
                        drop(stream);
                        continue;
                    }
                    let h = handler.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let h = h.clone();
                            async move { Ok::<_, Infallible>(h(req).await) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}
