//! A faithful local simulator of the DigitalOcean API and droplet metadata
//! service (SPEC §10 "DigitalOcean simulator"), for the driver's tests,
//! `dynia demo` and the netns harness. Behind the cargo feature `simulator`.
//!
//! It owns a small world — droplets (id + private IP), Reserved IPs (holder,
//! lock) and actions — and serves, over real HTTP/1.1 on the address it is
//! given (port 0 is fine):
//! - `POST /v2/reserved_ips/{ip}/actions` `{"type":"assign","droplet_id":N}` or
//!   `{"type":"unassign"}` → `201 {"action":{…,"status":"in-progress"}}`; the
//!   action completes after a configurable delay, and the IP is locked
//!   meanwhile: another action answers `422 {"id":"unprocessable_entity",
//!   "message":"The reserved IP already has a pending event."}`.
//! - `GET /v2/reserved_ips/{ip}/actions/{id}` and `GET /v2/actions/{id}`.
//! - `GET /v2/reserved_ips/{ip}` → `{"reserved_ip":{"ip","droplet":{…}|null,"locked",…}}`.
//! - 401 for a wrong token, 404 for an unknown IP/action/path, 400 for a body
//!   that is not JSON; every answer carries `RateLimit-Limit`,
//!   `RateLimit-Remaining`, `RateLimit-Reset`.
//! - Assigning to the droplet that already holds the IP answers 422 "… is
//!   already assigned to this droplet" by default (what clients in the wild
//!   expect, see `driver::digitalocean`); [`SameDropletAssign::NewAction`]
//!   makes it an ordinary action instead, so both outcomes can be tested.
//!
//! Faults on demand ([`Fault`]): the next N answers 429 (with the rate-limit
//! headers and `Retry-After`), 5xx, 422 pending-event, slow answers, actions
//! that end `errored`; plus a fixed latency on every answer.
//!
//! The metadata service runs per droplet on its own port
//! ([`DoSim::metadata_for`]): `/metadata/v1/id`,
//! `/metadata/v1/interfaces/private/0/ipv4/address`, … as on a droplet.
//!
//! Every request (API and metadata) lands in a bounded call log
//! ([`DoSim::calls`]) with method, path, droplet id of an assign, status and
//! time, for tests to assert on. Dropping the simulator stops its servers.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Most bytes the simulator reads from a request body.
const MAX_BODY: usize = 64 * 1024;
/// Most entries kept in the call log (oldest dropped first).
const MAX_CALLS: usize = 10_000;
/// Most concurrent connections per server; more are closed at once.
const MAX_CONNS: usize = 256;
/// The simulated account's rate limit per window.
const RATE_LIMIT: u32 = 5_000;
/// The region every simulated resource lives in.
pub const SIM_REGION: &str = "fra1";

/// What assigning a Reserved IP to the droplet that already holds it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameDropletAssign {
    /// `422 {"id":"unprocessable_entity","message":"The reserved IP is already assigned to this droplet."}`.
    #[default]
    Unprocessable,
    /// An ordinary `201` action that completes as usual.
    NewAction,
}

/// A fault the simulator injects into the next API answer(s), in queue order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `429 too_many_requests` with `RateLimit-Remaining: 0`,
    /// `RateLimit-Reset` = now + `reset_after` (epoch seconds, rounded up)
    /// and, when `retry_after`, `Retry-After` in whole seconds.
    RateLimited {
        /// When the window resets, from the moment of the answer.
        reset_after: Duration,
        /// Also send `Retry-After` (the burst limiter does; the hourly one may not).
        retry_after: bool,
    },
    /// A server error with this status (500, 502, 503…).
    ServerError(u16),
    /// The next *action POST* answers 422 "… already has a pending event."
    /// (other requests pass it by).
    PendingEvent,
    /// The next answer is delayed this long, then served normally.
    Slow(Duration),
    /// The next action created ends `errored` (the IP does not move).
    ErroredAction,
    /// The next answer is `200` with a body that is not JSON.
    Garbage,
}

/// Which server a logged call reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The API (`/v2/…`).
    Api,
    /// The metadata service of this droplet.
    Metadata {
        /// The droplet whose metadata server answered.
        droplet_id: u64,
    },
}

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// API or metadata.
    pub service: Service,
    /// `GET`, `POST`…
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// For action POSTs: the action type asked for (`assign`, `unassign`).
    pub action_type: Option<String>,
    /// For assigns: the droplet asked for.
    pub droplet_id: Option<u64>,
    /// The status answered.
    pub status: u16,
    /// Wall-clock time the answer was decided (compare with `RateLimit-Reset`).
    pub at: SystemTime,
    /// Monotonic time the answer was decided.
    pub instant: Instant,
}

impl Call {
    /// True for `POST /v2/reserved_ips/{ip}/actions`.
    pub fn is_action_post(&self) -> bool {
        self.method == "POST"
            && self.path.starts_with("/v2/reserved_ips/")
            && self.path.ends_with("/actions")
    }

    /// True for a GET of an action.
    pub fn is_action_poll(&self) -> bool {
        self.method == "GET"
            && (self.path.starts_with("/v2/actions/") || self.path.contains("/actions/"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionKind {
    Assign(u64),
    Unassign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionStatus {
    InProgress,
    Completed,
    Errored,
}

#[derive(Clone, Debug)]
struct Action {
    id: u64,
    ip: IpAddr,
    kind: ActionKind,
    status: ActionStatus,
    will_error: bool,
    started_at: SystemTime,
    done_at: Instant,
    completed_at: Option<SystemTime>,
}

#[derive(Clone, Debug)]
struct ReservedIp {
    holder: Option<u64>,
    pending: Option<u64>,
}

struct World {
    token: String,
    droplets: BTreeMap<u64, Ipv4Addr>,
    /// Droplets whose `status` is not `active` (e.g. `off`).
    droplet_status: BTreeMap<u64, &'static str>,
    ips: BTreeMap<IpAddr, ReservedIp>,
    actions: BTreeMap<u64, Action>,
    next_action: u64,
    action_delay: Duration,
    same_droplet: SameDropletAssign,
    faults: VecDeque<Fault>,
    latency: Duration,
    calls: VecDeque<Call>,
    remaining: u32,
}

impl World {
    fn status_of(&self, droplet: u64) -> &'static str {
        self.droplet_status
            .get(&droplet)
            .copied()
            .unwrap_or("active")
    }

    /// Finish every action whose time has come (lazily, on each access).
    fn settle(&mut self, now: Instant) {
        for a in self.actions.values_mut() {
            if a.status != ActionStatus::InProgress || now < a.done_at {
                continue;
            }
            if a.will_error {
                a.status = ActionStatus::Errored;
            } else {
                a.status = ActionStatus::Completed;
                if let Some(r) = self.ips.get_mut(&a.ip) {
                    r.holder = match a.kind {
                        ActionKind::Assign(d) => Some(d),
                        ActionKind::Unassign => None,
                    };
                }
            }
            a.completed_at = Some(SystemTime::now());
            if let Some(r) = self.ips.get_mut(&a.ip) {
                if r.pending == Some(a.id) {
                    r.pending = None;
                }
            }
        }
    }

    fn log(&mut self, call: Call) {
        if self.calls.len() >= MAX_CALLS {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }
}

struct Shared {
    world: Mutex<World>,
    /// TCP connections the API server accepted (keep-alive shows as few).
    accepted: Arc<AtomicU64>,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        let mut g = self.world.lock().unwrap_or_else(|p| p.into_inner());
        g.settle(Instant::now());
        g
    }
}

/// The running simulator. Dropping it stops the API and metadata servers.
pub struct DoSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

/// A running metadata server for one droplet (see [`DoSim::metadata_for`]).
/// Dropping it stops the server.
pub struct MetadataServer {
    addr: SocketAddr,
    droplet_id: u64,
    server: JoinHandle<()>,
}

impl MetadataServer {
    /// Base URL to use as `metadata_url`, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The droplet this server speaks for.
    pub fn droplet_id(&self) -> u64 {
        self.droplet_id
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.server.abort();
    }
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
        let shared = Arc::new(Shared {
            world: Mutex::new(World {
                token: token.to_owned(),
                droplets: BTreeMap::new(),
                droplet_status: BTreeMap::new(),
                ips: BTreeMap::new(),
                actions: BTreeMap::new(),
                next_action: 2_000_000_001,
                action_delay: Duration::from_millis(50),
                same_droplet: SameDropletAssign::default(),
                faults: VecDeque::new(),
                latency: Duration::ZERO,
                calls: VecDeque::new(),
                remaining: RATE_LIMIT,
            }),
            accepted: Arc::new(AtomicU64::new(0)),
        });
        let s = shared.clone();
        let server = spawn_server(listener, shared.accepted.clone(), move |req| {
            let s = s.clone();
            async move { api(&s, req).await }
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
        self.shared.world().ips.insert(
            ip,
            ReservedIp {
                holder,
                pending: None,
            },
        );
    }

    /// Who holds `ip` now (`None`: nobody, or no such IP).
    pub fn holder(&self, ip: IpAddr) -> Option<u64> {
        self.shared.world().ips.get(&ip).and_then(|r| r.holder)
    }

    /// Move `ip` out of band (as if another node or a person had done it).
    pub fn set_holder(&self, ip: IpAddr, holder: Option<u64>) {
        if let Some(r) = self.shared.world().ips.get_mut(&ip) {
            r.holder = holder;
        }
    }

    /// True while an action on `ip` is in progress.
    pub fn is_locked(&self, ip: IpAddr) -> bool {
        self.shared
            .world()
            .ips
            .get(&ip)
            .is_some_and(|r| r.pending.is_some())
    }

    /// How long new actions stay `in-progress` (default 50 ms).
    pub fn set_action_delay(&self, d: Duration) {
        self.shared.world().action_delay = d;
    }

    /// What assigning to the current holder answers (default 422).
    pub fn set_same_droplet_assign(&self, mode: SameDropletAssign) {
        self.shared.world().same_droplet = mode;
    }

    /// A latency added to every API answer.
    pub fn set_latency(&self, d: Duration) {
        self.shared.world().latency = d;
    }

    /// Queue a fault for the next API answer(s).
    pub fn push_fault(&self, f: Fault) {
        self.shared.world().faults.push_back(f);
    }

    /// The next `n` API answers are 429 with `RateLimit-Reset` `reset_after` ahead
    /// and `Retry-After`.
    pub fn fail_next_rate_limited(&self, n: usize, reset_after: Duration) {
        for _ in 0..n {
            self.push_fault(Fault::RateLimited {
                reset_after,
                retry_after: true,
            });
        }
    }

    /// The next `n` API answers are `status` (5xx).
    pub fn fail_next_server_error(&self, n: usize, status: u16) {
        for _ in 0..n {
            self.push_fault(Fault::ServerError(status));
        }
    }

    /// The next `n` action POSTs are 422 "pending event".
    pub fn fail_next_pending_event(&self, n: usize) {
        for _ in 0..n {
            self.push_fault(Fault::PendingEvent);
        }
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.shared.world().faults.len()
    }

    /// Every call so far (API and metadata), oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.world().calls.iter().cloned().collect()
    }

    /// API calls only.
    pub fn api_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.service == Service::Api)
            .collect()
    }

    /// TCP connections the API server has accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Forget the call log.
    pub fn clear_calls(&self) {
        self.shared.world().calls.clear();
    }

    /// Start a metadata server for `droplet_id` on its own port on the API's
    /// IP (the droplet must have been added). Its calls land in this log.
    pub async fn metadata_for(&self, droplet_id: u64) -> io::Result<MetadataServer> {
        if !self.shared.world().droplets.contains_key(&droplet_id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no droplet {droplet_id} in the simulator"),
            ));
        }
        let listener = TcpListener::bind(SocketAddr::new(self.addr.ip(), 0)).await?;
        let addr = listener.local_addr()?;
        let s = self.shared.clone();
        let server = spawn_server(listener, Arc::new(AtomicU64::new(0)), move |req| {
            let s = s.clone();
            async move { metadata(&s, droplet_id, req) }
        });
        Ok(MetadataServer {
            addr,
            droplet_id,
            server,
        })
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

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 in UTC, second precision ("2026-11-22T14:05:00Z").
fn rfc3339(t: SystemTime) -> String {
    let secs = epoch_secs(t);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The real API's error shape: `{"id":…,"message":…,"request_id":…}`.
fn api_error(status: StatusCode, id: &str, message: &str) -> Response<Full<Bytes>> {
    let request_id = format!("{:08x}-sim", rand::random::<u32>());
    json_response(
        status,
        &json!({"id": id, "message": message, "request_id": request_id}),
    )
}

fn action_json(a: &Action) -> Value {
    let (ty, status) = (
        match a.kind {
            ActionKind::Assign(_) => "assign_ip",
            ActionKind::Unassign => "unassign_ip",
        },
        match a.status {
            ActionStatus::InProgress => "in-progress",
            ActionStatus::Completed => "completed",
            ActionStatus::Errored => "errored",
        },
    );
    let resource_id = match a.ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(_) => 0,
    };
    json!({"action": {
        "id": a.id,
        "status": status,
        "type": ty,
        "started_at": rfc3339(a.started_at),
        "completed_at": a.completed_at.map(rfc3339),
        "resource_id": resource_id,
        "resource_type": "reserved_ip",
        "region": {"name": "Frankfurt 1", "slug": SIM_REGION, "available": true},
        "region_slug": SIM_REGION,
    }})
}

fn droplet_json(id: u64, private_ip: Option<Ipv4Addr>, status: &str) -> Value {
    let mut v4 = vec![];
    if let Some(ip) = private_ip {
        v4.push(
            json!({"ip_address": ip.to_string(), "netmask": "255.255.240.0", "type": "private"}),
        );
    }
    json!({"id": id, "name": format!("droplet-{id}"), "status": status,
           "networks": {"v4": v4, "v6": []}, "region": {"slug": SIM_REGION}})
}

/// Pre-routing outcome of the fault queue.
enum Injected {
    None,
    Answer(Response<Full<Bytes>>, u16),
    ErroredAction,
}

async fn api(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let auth_ok = {
        let w = s.world();
        let want = format!("Bearer {}", w.token);
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == want)
    };
    let is_action_post = method == Method::POST
        && path.starts_with("/v2/reserved_ips/")
        && path.ends_with("/actions");

    // Read the body (bounded) before anything else, as a server would.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Some(b.to_bytes()),
        Err(_) => None,
    };

    // Latency and slow-answer faults (outside the lock).
    let mut delay = s.world().latency;
    let mut injected = Injected::None;
    loop {
        let f = {
            let mut w = s.world();
            match w.faults.front() {
                Some(Fault::PendingEvent) if !is_action_post => None,
                Some(Fault::ErroredAction) if !is_action_post => None,
                Some(_) => w.faults.pop_front(),
                None => None,
            }
        };
        match f {
            Some(Fault::Slow(d)) => {
                delay += d;
                continue;
            }
            Some(Fault::RateLimited {
                reset_after,
                retry_after,
            }) => {
                let reset = SystemTime::now() + reset_after;
                // Round up: the window resets at a whole epoch second.
                let reset_epoch = epoch_secs(reset)
                    + u64::from(
                        reset
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.subsec_nanos() > 0)
                            .unwrap_or(false),
                    );
                let mut r = api_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "API Rate limit exceeded.",
                );
                let h = r.headers_mut();
                h.insert("ratelimit-limit", HeaderValue::from(RATE_LIMIT));
                h.insert("ratelimit-remaining", HeaderValue::from(0u32));
                h.insert("ratelimit-reset", HeaderValue::from(reset_epoch));
                if retry_after {
                    let secs = reset_after.as_secs() + u64::from(reset_after.subsec_nanos() > 0);
                    h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                }
                injected = Injected::Answer(r, 429);
            }
            Some(Fault::ServerError(code)) => {
                let st = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                injected = Injected::Answer(
                    api_error(st, "server_error", "Unexpected server-side error"),
                    st.as_u16(),
                );
            }
            Some(Fault::PendingEvent) => {
                injected = Injected::Answer(
                    api_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        "The reserved IP already has a pending event.",
                    ),
                    422,
                );
            }
            Some(Fault::ErroredAction) => injected = Injected::ErroredAction,
            Some(Fault::Garbage) => {
                injected =
                    Injected::Answer(text_response(StatusCode::OK, "<html>not json{".into()), 200);
            }
            None => {}
        }
        break;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut w = s.world();
    let mut assign_droplet = None;
    let mut action_type = None;
    let (mut resp, status) = match injected {
        Injected::Answer(r, st) => (r, st),
        _ if !auth_ok => (
            api_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unable to authenticate you",
            ),
            401,
        ),
        _ => {
            let force_error = matches!(injected, Injected::ErroredAction);
            let r = route(
                &mut w,
                &method,
                &path,
                body.as_ref(),
                force_error,
                &mut action_type,
                &mut assign_droplet,
            );
            let st = r.status().as_u16();
            (r, st)
        }
    };
    if status != 429 {
        w.remaining = w.remaining.saturating_sub(1);
        let h = resp.headers_mut();
        h.insert("ratelimit-limit", HeaderValue::from(RATE_LIMIT));
        h.insert("ratelimit-remaining", HeaderValue::from(w.remaining));
        h.insert(
            "ratelimit-reset",
            HeaderValue::from(epoch_secs(SystemTime::now()) + 60),
        );
    }
    w.log(Call {
        service: Service::Api,
        method: method.to_string(),
        path,
        action_type,
        droplet_id: assign_droplet,
        status,
        at: SystemTime::now(),
        instant: Instant::now(),
    });
    resp
}

fn route(
    w: &mut World,
    method: &Method,
    path: &str,
    body: Option<&Bytes>,
    force_error: bool,
    action_type: &mut Option<String>,
    assign_droplet: &mut Option<u64>,
) -> Response<Full<Bytes>> {
    let not_found = || {
        api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "The resource you were accessing could not be found.",
        )
    };
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, segs.as_slice()) {
        (&Method::GET, ["v2", "reserved_ips", ip]) => {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return not_found();
            };
            let Some(r) = w.ips.get(&ip) else {
                return not_found();
            };
            let droplet = r
                .holder
                .map(|d| droplet_json(d, w.droplets.get(&d).copied(), w.status_of(d)));
            json_response(
                StatusCode::OK,
                &json!({"reserved_ip": {
                    "ip": ip.to_string(),
                    "region": {"name": "Frankfurt 1", "slug": SIM_REGION, "available": true},
                    "droplet": droplet,
                    "locked": r.pending.is_some(),
                    "project_id": "00000000-0000-4000-8000-000000000000",
                }}),
            )
        }
        (&Method::GET, ["v2", "reserved_ips", ip, "actions", id]) => {
            let (Ok(ip), Ok(id)) = (ip.parse::<IpAddr>(), id.parse::<u64>()) else {
                return not_found();
            };
            match w.actions.get(&id) {
                Some(a) if a.ip == ip => json_response(StatusCode::OK, &action_json(a)),
                _ => not_found(),
            }
        }
        (&Method::GET, ["v2", "actions", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return not_found();
            };
            match w.actions.get(&id) {
                Some(a) => json_response(StatusCode::OK, &action_json(a)),
                None => not_found(),
            }
        }
        (&Method::POST, ["v2", "reserved_ips", ip, "actions"]) => {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return not_found();
            };
            let Some(body) = body else {
                return api_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "request body too large",
                );
            };
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "error parsing request body",
                );
            };
            let ty = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            *action_type = Some(ty.clone());
            let droplet = v.get("droplet_id").and_then(Value::as_u64);
            *assign_droplet = droplet;
            let Some(rip) = w.ips.get(&ip).cloned() else {
                return not_found();
            };
            let kind = match ty.as_str() {
                "assign" => {
                    let Some(d) = droplet else {
                        return api_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "unprocessable_entity",
                            "droplet_id is required for assign.",
                        );
                    };
                    if !w.droplets.contains_key(&d) {
                        return api_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "unprocessable_entity",
                            "Droplet could not be found.",
                        );
                    }
                    ActionKind::Assign(d)
                }
                "unassign" => ActionKind::Unassign,
                _ => {
                    return api_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        "type must be one of: assign, unassign.",
                    );
                }
            };
            if rip.pending.is_some() {
                return api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    "The reserved IP already has a pending event.",
                );
            }
            match kind {
                ActionKind::Assign(d)
                    if rip.holder == Some(d)
                        && w.same_droplet == SameDropletAssign::Unprocessable =>
                {
                    return api_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        "The reserved IP is already assigned to this droplet.",
                    );
                }
                ActionKind::Unassign if rip.holder.is_none() => {
                    return api_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        "The reserved IP is not assigned to a droplet.",
                    );
                }
                _ => {}
            }
            let id = w.next_action;
            w.next_action += 1;
            let a = Action {
                id,
                ip,
                kind,
                status: ActionStatus::InProgress,
                will_error: force_error,
                started_at: SystemTime::now(),
                done_at: Instant::now() + w.action_delay,
                completed_at: None,
            };
            let body = action_json(&a);
            w.actions.insert(id, a);
            if let Some(r) = w.ips.get_mut(&ip) {
                r.pending = Some(id);
            }
            json_response(StatusCode::CREATED, &body)
        }
        _ => not_found(),
    }
}

fn metadata(s: &Shared, droplet_id: u64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut w = s.world();
    let path = req.uri().path().to_owned();
    let private = w.droplets.get(&droplet_id).copied();
    let holds = w.ips.values().any(|r| r.holder == Some(droplet_id));
    let held_ip = w
        .ips
        .iter()
        .find(|(_, r)| r.holder == Some(droplet_id))
        .map(|(ip, _)| ip.to_string());
    let resp = if req.method() != Method::GET {
        text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        )
    } else {
        match path.as_str() {
            "/metadata/v1/id" => text_response(StatusCode::OK, droplet_id.to_string()),
            "/metadata/v1/hostname" => text_response(StatusCode::OK, format!("droplet-{droplet_id}")),
            "/metadata/v1/region" => text_response(StatusCode::OK, SIM_REGION.into()),
            "/metadata/v1/interfaces/private/0/ipv4/address" => match private {
                Some(ip) => text_response(StatusCode::OK, ip.to_string()),
                None => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            "/metadata/v1/reserved_ip/ipv4/active" => text_response(StatusCode::OK, holds.to_string()),
            "/metadata/v1/reserved_ip/ipv4/ip_address" => match held_ip {
                Some(ip) => text_response(StatusCode::OK, ip),
                None => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            "/metadata/v1/" | "/metadata/v1" => text_response(
                StatusCode::OK,
                "id\nhostname\nuser-data\nvendor-data\npublic-keys\nregion\ninterfaces/\ndns/\nfloating_ip/\nreserved_ip/\ntags/\nfeatures/\n".into(),
            ),
            _ => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    };
    let status = resp.status().as_u16();
    w.log(Call {
        service: Service::Metadata { droplet_id },
        method: req.method().to_string(),
        path,
        action_type: None,
        droplet_id: None,
        status,
        at: SystemTime::now(),
        instant: Instant::now(),
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_356_300)),
            "2026-11-22T14:05:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
