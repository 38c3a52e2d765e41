//! The `digitalocean` Reserved-IP driver: moves a DigitalOcean Reserved IP to
//! this droplet through the public API, and tells who holds it now.
//!
//! Every request, claim and poll is bounded (timeouts, [`RetryPolicy`],
//! [`PollPolicy`], 64 KiB answers); the token stays in a [`Secret`] and is
//! scrubbed from anything logged. What the real API does, with sources:
//! docs/digitalocean.md.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use rand::Rng;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::http::{HttpAnswer, HttpClient, HttpFailure};
use super::{ClaimOutcome, DriverError, Holder, ReleaseOutcome, Secret};

/// The public API's base URL (node file `[reserved_ip] api_url`).
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";
/// The droplet metadata service (node file `[reserved_ip] metadata_url`).
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";

const UA: &str = concat!("dynia/", env!("CARGO_PKG_VERSION"));
/// Longest server-supplied text kept in an error or a log line.
const MAX_DETAIL_CHARS: usize = 200;

const HINT_TOKEN: &str = "check [reserved_ip] token_file: it must hold a valid DigitalOcean API token with write access to reserved IPs";
const HINT_ADDRESS: &str =
    "check [reserved_ip] address: the Reserved IP must exist in this DigitalOcean account";
const HINT_RETRY: &str = "the Reserved IP may still point elsewhere; dynia claims again at the next reconcile (check status.digitalocean.com and the API token)";
const HINT_REFUSED: &str =
    "the API refused the request; check [reserved_ip] address and droplet_id";
const HINT_METADATA: &str = "set [reserved_ip] droplet_id (and [node] private_ip) in the node file, or check that the metadata service is reachable from this droplet";
const HINT_NETWORK: &str = "check this node's route to the API (DNS, firewall, proxy); dynia claims again at the next reconcile";

/// Connect and whole-request timeouts, applied to every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (the TLS handshake counts toward `request`).
    pub connect: Duration,
    /// One request: connect, send, headers and body of the answer.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        }
    }
}

/// Bounds on retrying the API: attempts *and* total time, jittered
/// exponential backoff, and how long a server-requested wait may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts for one operation (≥ 1).
    pub max_attempts: u32,
    /// Most wall-clock time for one operation, waits and polls included.
    pub max_total: Duration,
    /// First backoff step; doubles each retry.
    pub base_backoff: Duration,
    /// Largest backoff step.
    pub max_backoff: Duration,
    /// Largest wait taken from `Retry-After` / `RateLimit-Reset`; a longer one
    /// is cut to this (the total bound still applies).
    pub max_server_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            max_total: Duration::from_secs(45),
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            max_server_wait: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The `n`-th backoff (n ≥ 1): half fixed, half random ("equal jitter").
    fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let half = exp / 2;
        let jitter_ms =
            rand::thread_rng().gen_range(0..=half.as_millis().min(u64::MAX as u128) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// A server-requested wait, never shortened, capped, plus a little jitter
    /// so nodes told the same reset time do not all return at once.
    fn server_wait(&self, wait: Duration) -> Duration {
        let wait = wait.min(self.max_server_wait);
        let spread = (wait / 10).min(Duration::from_millis(250));
        let jitter_ms = rand::thread_rng().gen_range(0..=spread.as_millis() as u64);
        wait + Duration::from_millis(jitter_ms)
    }
}

/// Bounds on polling an action until `completed` / `errored`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollPolicy {
    /// Pause before each poll.
    pub interval: Duration,
    /// Most polls of one action.
    pub max_polls: u32,
    /// Most time spent polling one action.
    pub max_total: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            interval: Duration::from_millis(500),
            max_polls: 60,
            max_total: Duration::from_secs(30),
        }
    }
}

/// Settings of the `digitalocean` driver (node file `[reserved_ip]`).
#[derive(Clone, Debug)]
pub struct DigitalOceanConfig {
    /// The Reserved IP (`address`).
    pub address: IpAddr,
    /// The API token (from `token_file`).
    pub token: Secret,
    /// This droplet's id (`droplet_id`); `None` = ask the metadata service.
    pub droplet_id: Option<u64>,
    /// API base URL (`api_url`), `http://` or `https://`.
    pub api_url: String,
    /// Metadata base URL (`metadata_url`).
    pub metadata_url: String,
    /// Timeouts of every call.
    pub timeouts: Timeouts,
    /// Retry bounds of claims and queries.
    pub retry: RetryPolicy,
    /// Polling bounds of actions.
    pub poll: PollPolicy,
    /// Longest time between background refreshes of the API host's addresses
    /// (the DNS TTL, when shorter, wins; never below 5 s).
    pub dns_refresh: Duration,
}

impl DigitalOceanConfig {
    /// Defaults for everything but the address and the token.
    pub fn new(address: IpAddr, token: Secret) -> Self {
        DigitalOceanConfig {
            address,
            token,
            droplet_id: None,
            api_url: DEFAULT_API_URL.to_owned(),
            metadata_url: DEFAULT_METADATA_URL.to_owned(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            poll: PollPolicy::default(),
            dns_refresh: Duration::from_secs(60),
        }
    }
}

/// A parsed base URL: `http(s)://authority` plus an optional path prefix.
#[derive(Clone, Debug)]
struct BaseUrl {
    /// "https://api.digitalocean.com" (no trailing slash; prefix included).
    base: String,
    host: String,
}

impl BaseUrl {
    fn parse(what: &'static str, url: &str) -> Result<Self, DriverError> {
        let bad = |why: &str| DriverError::Config {
            what: format!("[reserved_ip] {what} {url:?} {why}"),
            hint: "write it as http://host[:port] or https://host[:port]",
        };
        let uri: Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(bad("must start with http:// or https://")),
        }
        let auth = uri.authority().ok_or_else(|| bad("has no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        Ok(BaseUrl {
            base: url.trim_end_matches('/').to_owned(),
            host: auth.host().to_owned(),
        })
    }

    fn uri(&self, path: &str) -> Result<Uri, DriverError> {
        format!("{}{}", self.base, path)
            .parse()
            .map_err(|_| DriverError::Config {
                what: format!("cannot form a URL from {:?} and {path:?}", self.base),
                hint: "check [reserved_ip] api_url, metadata_url and address",
            })
    }
}

/// Client of the droplet metadata service (droplet id, private IP).
#[derive(Clone)]
pub struct MetadataClient {
    http: HttpClient,
    base: BaseUrl,
    timeouts: Timeouts,
}

impl fmt::Debug for MetadataClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataClient")
            .field("url", &self.base.base)
            .finish()
    }
}

/// Attempts per metadata read (the service is local; failures are quick).
const METADATA_ATTEMPTS: u32 = 3;

impl MetadataClient {
    /// A client of the metadata service at `url` (e.g. [`DEFAULT_METADATA_URL`]).
    pub fn new(url: &str, timeouts: Timeouts) -> Result<Self, DriverError> {
        let http = HttpClient::new(timeouts.connect).map_err(|e| DriverError::Config {
            what: e,
            hint: "this is a bug in dynia's TLS setup; please report it",
        })?;
        Self::with_client(http, url, timeouts)
    }

    fn with_client(http: HttpClient, url: &str, timeouts: Timeouts) -> Result<Self, DriverError> {
        Ok(MetadataClient {
            http,
            base: BaseUrl::parse("metadata_url", url)?,
            timeouts,
        })
    }

    /// This droplet's id (`GET /metadata/v1/id`).
    pub async fn droplet_id(&self) -> Result<u64, DriverError> {
        let path = "/metadata/v1/id";
        let text = self.get_text(path).await?;
        text.parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| DriverError::Provider {
                endpoint: format!("GET {path}"),
                status: Some(200),
                detail: format!("not a droplet id: {:?}", truncate(&text)),
                hint: HINT_METADATA,
            })
    }

    /// This droplet's private IPv4 (`GET /metadata/v1/interfaces/private/0/ipv4/address`).
    pub async fn private_ipv4(&self) -> Result<Ipv4Addr, DriverError> {
        let path = "/metadata/v1/interfaces/private/0/ipv4/address";
        let text = self.get_text(path).await?;
        text.parse::<Ipv4Addr>().map_err(|_| DriverError::Provider {
            endpoint: format!("GET {path}"),
            status: Some(200),
            detail: format!("not an IPv4 address: {:?}", truncate(&text)),
            hint: HINT_METADATA,
        })
    }

    async fn get_text(&self, path: &str) -> Result<String, DriverError> {
        let endpoint = format!("GET {path}");
        let uri = self.base.uri(path)?;
        let mut last = String::new();
        for attempt in 1..=METADATA_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            let req = Request::builder()
                .method(Method::GET)
                .uri(uri.clone())
                .header(USER_AGENT, UA)
                .body(Full::new(Bytes::new()))
                .map_err(|e| config_bug(&endpoint, e))?;
            match self.http.send(req, self.timeouts.request).await {
                Ok(a) if a.status == StatusCode::OK => {
                    return Ok(String::from_utf8_lossy(&a.body).trim().to_owned());
                }
                Ok(a) if a.status.is_server_error() => {
                    last = format!("answered {}", a.status);
                }
                Ok(a) => {
                    return Err(DriverError::Provider {
                        endpoint,
                        status: Some(a.status.as_u16()),
                        detail: format!("answered {}", a.status),
                        hint: HINT_METADATA,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(DriverError::Network {
            endpoint: format!("metadata service {endpoint}"),
            detail: format!("no answer after {METADATA_ATTEMPTS} attempts: {last}"),
            hint: HINT_METADATA,
        })
    }
}

/// The `digitalocean` driver. Cheap to clone: clones share one warm client.
#[derive(Clone)]
pub struct DigitalOcean {
    inner: Arc<Inner>,
}

struct Inner {
    address: IpAddr,
    /// Kept only to scrub server text; never formatted.
    token: Secret,
    /// `Bearer …`, marked sensitive.
    auth: HeaderValue,
    api: BaseUrl,
    http: HttpClient,
    metadata: MetadataClient,
    droplet_id: OnceCell<u64>,
    timeouts: Timeouts,
    retry: RetryPolicy,
    poll: PollPolicy,
}

impl fmt::Debug for DigitalOcean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOcean")
            .field("address", &self.inner.address)
            .field("api_url", &self.inner.api.base)
            .field("droplet_id", &self.inner.droplet_id.get())
            .field("token", &self.inner.token)
            .finish()
    }
}

/// How one API attempt ended, when it did not succeed.
enum Failure {
    /// Worth another attempt, after `wait` if the server asked for one.
    Retry {
        status: Option<u16>,
        reason: String,
        wait: Option<Duration>,
        network: bool,
    },
    /// No point retrying.
    Fatal(DriverError),
}

/// What the assign POST returned.
enum Posted {
    Action(u64),
    AlreadyAssigned,
}

/// How polling an action ended.
enum ActionEnd {
    Completed,
    Errored,
    /// Still unknown when the polling bounds ran out.
    Undecided(String),
}

impl DigitalOcean {
    /// Build the driver: validates the settings, builds the warm client and
    /// resolves the API host ahead (in the background from then on). Does not
    /// contact the API. Must run inside a tokio runtime.
    pub async fn new(cfg: DigitalOceanConfig) -> Result<Self, DriverError> {
        if cfg.token.expose().len() < 8 {
            return Err(DriverError::Config {
                what: "the DigitalOcean API token is empty or too short".into(),
                hint: HINT_TOKEN,
            });
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", cfg.token.expose())).map_err(|_| {
                DriverError::Config {
                    what:
                        "the DigitalOcean API token contains characters an HTTP header cannot carry"
                            .into(),
                    hint: HINT_TOKEN,
                }
            })?;
        auth.set_sensitive(true);
        let api = BaseUrl::parse("api_url", &cfg.api_url)?;
        let http = HttpClient::new(cfg.timeouts.connect).map_err(|e| DriverError::Config {
            what: e,
            hint: "this is a bug in dynia's TLS setup; please report it",
        })?;
        let metadata =
            MetadataClient::with_client(http.clone(), &cfg.metadata_url, cfg.timeouts.clone())?;
        http.pin_host(&api.host, cfg.dns_refresh).await;
        let droplet_id = OnceCell::new();
        if let Some(id) = cfg.droplet_id {
            let _ = droplet_id.set(id);
        }
        let mut retry = cfg.retry;
        retry.max_attempts = retry.max_attempts.max(1);
        let mut poll = cfg.poll;
        poll.max_polls = poll.max_polls.max(1);
        Ok(DigitalOcean {
            inner: Arc::new(Inner {
                address: cfg.address,
                token: cfg.token,
                auth,
                api,
                http,
                metadata,
                droplet_id,
                timeouts: cfg.timeouts,
                retry,
                poll,
            }),
        })
    }

    /// The Reserved IP this driver moves.
    pub fn address(&self) -> IpAddr {
        self.inner.address
    }

    /// The metadata client this driver uses (shares the warm client).
    pub fn metadata(&self) -> &MetadataClient {
        &self.inner.metadata
    }

    /// This droplet's id: configured, or read once from the metadata service.
    pub async fn droplet_id(&self) -> Result<u64, DriverError> {
        self.inner
            .droplet_id
            .get_or_try_init(|| async {
                let id = self.inner.metadata.droplet_id().await?;
                tracing::info!(droplet_id = id, "droplet id read from the metadata service");
                Ok(id)
            })
            .await
            .copied()
    }

    /// This droplet's private IPv4, from the metadata service.
    pub async fn private_ip(&self) -> Result<Ipv4Addr, DriverError> {
        self.inner.metadata.private_ipv4().await
    }

    /// Releasing means nothing on DigitalOcean: the next MASTER's assign moves
    /// the address in one step; an unassign first would only widen the gap
    /// (and an unassigned Reserved IP is billed).
    pub async fn release(&self) -> Result<ReleaseOutcome, DriverError> {
        Ok(ReleaseOutcome::NotApplicable)
    }

    /// Make the Reserved IP point at this droplet. Idempotent; bounded by the
    /// retry policy in attempts and total time.
    pub async fn claim(&self) -> Result<ClaimOutcome, DriverError> {
        let droplet_id = self.droplet_id().await?;
        let ip = self.inner.address;
        let policy = &self.inner.retry;
        let started = Instant::now();
        let deadline = started + policy.max_total;
        let endpoint = format!("POST /v2/reserved_ips/{ip}/actions");
        let mut last_status: Option<u16> = None;
        let mut last_reason = String::from("no attempt made");
        let mut last_network = false;
        let mut server_wait: Option<Duration> = None;
        let mut attempts = 0u32;

        for attempt in 1..=policy.max_attempts {
            if attempt > 1 {
                let wait = match server_wait.take() {
                    Some(w) => policy.server_wait(w),
                    None => policy.backoff(attempt - 1),
                };
                if Instant::now() + wait >= deadline {
                    last_reason = format!(
                        "{last_reason} (next wait of {} ms would pass the {} ms budget)",
                        wait.as_millis(),
                        policy.max_total.as_millis()
                    );
                    break;
                }
                tracing::warn!(attempt, droplet_id, reserved_ip = %ip, status = last_status.unwrap_or(0), wait_ms = wait.as_millis() as u64, reason = %last_reason, "reserved ip claim retrying");
                tokio::time::sleep(wait).await;
            }
            attempts = attempt;
            let posted = match self.post_assign(droplet_id).await {
                Ok(p) => p,
                Err(Failure::Fatal(e)) => {
                    tracing::error!(droplet_id, reserved_ip = %ip, error = %e, "reserved ip claim refused");
                    return Err(e);
                }
                Err(Failure::Retry {
                    status,
                    reason,
                    wait,
                    network,
                }) => {
                    last_status = status;
                    last_reason = reason;
                    last_network = network;
                    server_wait = wait;
                    continue;
                }
            };
            match posted {
                Posted::AlreadyAssigned => match self.holder_once().await {
                    Ok(Holder::Me) => {
                        tracing::info!(droplet_id, reserved_ip = %ip, "reserved ip already assigned here");
                        return Ok(ClaimOutcome::AlreadyHeld);
                    }
                    Ok(other) => {
                        last_status = Some(422);
                        last_reason = format!(
                            "API said already assigned, but the Reserved IP points at {other}"
                        );
                        last_network = false;
                    }
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(f) => {
                        (last_status, last_reason, last_network, server_wait) = failure_parts(f);
                    }
                },
                Posted::Action(action_id) => match self.wait_action(action_id, deadline).await {
                    ActionEnd::Completed => {
                        tracing::info!(action_id, droplet_id, reserved_ip = %ip, elapsed_ms = started.elapsed().as_millis() as u64, attempts = attempt, "reserved ip assigned");
                        return Ok(ClaimOutcome::Assigned { action_id });
                    }
                    ActionEnd::Errored => {
                        last_status = Some(200);
                        last_reason = format!("action {action_id} ended errored");
                        last_network = false;
                    }
                    ActionEnd::Undecided(why) => {
                        // The action may still land: believe the IP's own state.
                        if let Ok(Holder::Me) = self.holder_once().await {
                            tracing::info!(action_id, droplet_id, reserved_ip = %ip, elapsed_ms = started.elapsed().as_millis() as u64, "reserved ip assigned (seen on the ip; action status unknown)");
                            return Ok(ClaimOutcome::Assigned { action_id });
                        }
                        last_reason = format!("action {action_id}: {why}");
                        last_network = false;
                    }
                },
            }
        }
        let detail = format!(
            "gave up claiming for droplet {droplet_id} after {attempts} attempt(s) in {} ms; last: {last_reason}",
            started.elapsed().as_millis()
        );
        tracing::error!(droplet_id, reserved_ip = %ip, attempts, status = last_status.unwrap_or(0), detail = %detail, "reserved ip claim failed");
        if last_network {
            Err(DriverError::Network {
                endpoint,
                detail,
                hint: HINT_NETWORK,
            })
        } else {
            Err(DriverError::Provider {
                endpoint,
                status: last_status,
                detail,
                hint: HINT_RETRY,
            })
        }
    }

    /// Who the Reserved IP points at (`GET /v2/reserved_ips/{ip}`), with
    /// bounded retries on 429 / 5xx / network failures.
    pub async fn holder(&self) -> Result<Holder, DriverError> {
        // "Me" needs our own id: configured, or discovered once.
        self.droplet_id().await?;
        let policy = &self.inner.retry;
        let started = Instant::now();
        let deadline = started + policy.max_total;
        let endpoint = format!("GET /v2/reserved_ips/{}", self.inner.address);
        let mut last = (None, String::new(), false, None);
        for attempt in 1..=policy.max_attempts {
            if attempt > 1 {
                let wait = match last.3.take() {
                    Some(w) => policy.server_wait(w),
                    None => policy.backoff(attempt - 1),
                };
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            match self.holder_once().await {
                Ok(h) => return Ok(h),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(f) => last = failure_parts(f),
            }
        }
        let detail = format!(
            "no usable answer in {} ms: {}",
            started.elapsed().as_millis(),
            last.1
        );
        if last.2 {
            Err(DriverError::Network {
                endpoint,
                detail,
                hint: HINT_NETWORK,
            })
        } else {
            Err(DriverError::Provider {
                endpoint,
                status: last.0,
                detail,
                hint: HINT_RETRY,
            })
        }
    }

    // ---- one attempt each ------------------------------------------------

    async fn post_assign(&self, droplet_id: u64) -> Result<Posted, Failure> {
        let path = format!("/v2/reserved_ips/{}/actions", self.inner.address);
        let body = serde_json::json!({"type": "assign", "droplet_id": droplet_id}).to_string();
        let a = self.call(Method::POST, &path, Some(body)).await?;
        let endpoint = format!("POST {path}");
        match a.status.as_u16() {
            200..=299 => {
                let v = parse_json(&endpoint, &a.body)?;
                let id = v
                    .pointer("/action/id")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| malformed(&endpoint, a.status, "no action.id in the answer"))?;
                // Some answers are already final; an errored one is retried.
                match v.pointer("/action/status").and_then(Value::as_str) {
                    Some("errored") => Err(Failure::Retry {
                        status: Some(a.status.as_u16()),
                        reason: format!("action {id} errored at once"),
                        wait: None,
                        network: false,
                    }),
                    _ => Ok(Posted::Action(id)),
                }
            }
            422 => {
                let msg = self.error_message(&a.body);
                let lower = msg.to_ascii_lowercase();
                if lower.contains("already assigned") {
                    Ok(Posted::AlreadyAssigned)
                } else if lower.contains("pending event")
                    || lower.contains("locked")
                    || lower.contains("in progress")
                {
                    Err(Failure::Retry {
                        status: Some(422),
                        reason: format!("422 {msg:?}"),
                        wait: None,
                        network: false,
                    })
                } else {
                    Err(Failure::Fatal(DriverError::Provider {
                        endpoint,
                        status: Some(422),
                        detail: format!("422 Unprocessable Entity: {msg:?}"),
                        hint: HINT_REFUSED,
                    }))
                }
            }
            _ => Err(self.classify(&endpoint, &a)),
        }
    }

    /// Poll the action until it is final or the poll bounds / `deadline` run out.
    async fn wait_action(&self, action_id: u64, deadline: Instant) -> ActionEnd {
        let poll = &self.inner.poll;
        let until = deadline.min(Instant::now() + poll.max_total);
        let path = format!(
            "/v2/reserved_ips/{}/actions/{action_id}",
            self.inner.address
        );
        let endpoint = format!("GET {path}");
        let mut wait = poll.interval;
        let mut last = String::from("still in-progress");
        for n in 1..=poll.max_polls {
            if Instant::now() + wait >= until {
                return ActionEnd::Undecided(format!(
                    "{last} when the polling budget ran out after {} poll(s)",
                    n - 1
                ));
            }
            tokio::time::sleep(wait).await;
            wait = poll.interval;
            let answer = match self.call(Method::GET, &path, None).await {
                Ok(a) => a,
                Err(f) => {
                    last = failure_reason(&f);
                    continue;
                }
            };
            if !answer.status.is_success() {
                match self.classify(&endpoint, &answer) {
                    Failure::Retry {
                        reason, wait: w, ..
                    } => {
                        if let Some(w) = w {
                            wait = self.inner.retry.server_wait(w).max(poll.interval);
                        }
                        last = reason;
                        continue;
                    }
                    Failure::Fatal(e) => return ActionEnd::Undecided(e.to_string()),
                }
            }
            let status = parse_json(&endpoint, &answer.body).ok().and_then(|v| {
                v.pointer("/action/status")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            match status.as_deref() {
                Some("completed") => return ActionEnd::Completed,
                Some("errored") => return ActionEnd::Errored,
                Some(s) => {
                    tracing::debug!(
                        action_id,
                        poll = n,
                        status = s,
                        "reserved ip action pending"
                    );
                    last = format!("status {s:?}");
                }
                None => last = "malformed action answer".into(),
            }
        }
        ActionEnd::Undecided(format!("{last} after {} poll(s)", poll.max_polls))
    }

    async fn holder_once(&self) -> Result<Holder, Failure> {
        let path = format!("/v2/reserved_ips/{}", self.inner.address);
        let endpoint = format!("GET {path}");
        let a = self.call(Method::GET, &path, None).await?;
        if !a.status.is_success() {
            return Err(self.classify(&endpoint, &a));
        }
        let v = parse_json(&endpoint, &a.body)?;
        let rip = v
            .get("reserved_ip")
            .filter(|r| r.is_object())
            .ok_or_else(|| malformed(&endpoint, a.status, "no reserved_ip object in the answer"))?;
        match rip.get("droplet") {
            None | Some(Value::Null) => Ok(Holder::Nobody),
            Some(d) => {
                let id = d.get("id").and_then(Value::as_u64).ok_or_else(|| {
                    malformed(&endpoint, a.status, "reserved_ip.droplet has no numeric id")
                })?;
                let me = self.inner.droplet_id.get().copied();
                // The whole droplet object comes with the answer; its
                // `status` is new|active|off|archive (DigitalOcean API,
                // droplet object): the witness of a live holder.
                let running = match d.get("status").and_then(Value::as_str) {
                    Some("active" | "new") => Some(true),
                    Some("off" | "archive") => Some(false),
                    _ => None,
                };
                Ok(if Some(id) == me {
                    Holder::Me
                } else {
                    Holder::Other {
                        droplet_id: id,
                        running,
                    }
                })
            }
        }
    }

    /// One bounded request to the API.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<HttpAnswer, Failure> {
        let endpoint = format!("{method} {path}");
        let uri = self.inner.api.uri(path).map_err(Failure::Fatal)?;
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(USER_AGENT, UA);
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Fatal(config_bug(&endpoint, e)))?;
        self.inner
            .http
            .send(req, self.inner.timeouts.request)
            .await
            .map_err(|e| {
                let too_large = matches!(e, HttpFailure::TooLarge);
                Failure::Retry {
                    status: None,
                    reason: format!("{endpoint}: {}", self.inner.token.scrub(&e.to_string())),
                    wait: None,
                    network: !too_large,
                }
            })
    }

    /// Sort a non-success answer (other than a claim's 422) into retry or fatal.
    fn classify(&self, endpoint: &str, a: &HttpAnswer) -> Failure {
        let code = a.status.as_u16();
        let msg = self.error_message(&a.body);
        let said = if msg.is_empty() {
            String::new()
        } else {
            format!(" ({msg:?})")
        };
        let fatal = |hint: &'static str| {
            Failure::Fatal(DriverError::Provider {
                endpoint: endpoint.to_owned(),
                status: Some(code),
                detail: format!("answered {}{said}", a.status),
                hint,
            })
        };
        match code {
            401 | 403 => fatal(HINT_TOKEN),
            404 => fatal(HINT_ADDRESS),
            429 => Failure::Retry {
                status: Some(429),
                reason: format!("429 rate limited{said}"),
                wait: rate_limit_wait(&a.headers, SystemTime::now()),
                network: false,
            },
            408 | 500..=599 => Failure::Retry {
                status: Some(code),
                reason: format!("answered {}{said}", a.status),
                wait: None,
                network: false,
            },
            _ => fatal(HINT_REFUSED),
        }
    }

    /// The `message` of a DigitalOcean error body, bounded and token-scrubbed.
    fn error_message(&self, body: &[u8]) -> String {
        let raw = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        truncate(&self.inner.token.scrub(raw.trim()))
    }
}

/// How long a 429 asks us to wait: `Retry-After` (seconds) first, else
/// `RateLimit-Reset` (epoch seconds) minus now.
pub(crate) fn rate_limit_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if let Some(secs) = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_secs(secs));
    }
    let reset = num("ratelimit-reset")?;
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(reset))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn failure_parts(f: Failure) -> (Option<u16>, String, bool, Option<Duration>) {
    match f {
        Failure::Retry {
            status,
            reason,
            wait,
            network,
        } => (status, reason, network, wait),
        Failure::Fatal(e) => (e.status(), e.to_string(), false, None),
    }
}

fn failure_reason(f: &Failure) -> String {
    match f {
        Failure::Retry { reason, .. } => reason.clone(),
        Failure::Fatal(e) => e.to_string(),
    }
}

fn parse_json(endpoint: &str, body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::Retry {
        status: None,
        reason: format!("{endpoint}: malformed JSON in the answer ({e})"),
        wait: None,
        network: false,
    })
}

fn malformed(endpoint: &str, status: StatusCode, what: &str) -> Failure {
    Failure::Retry {
        status: Some(status.as_u16()),
        reason: format!("{endpoint}: {what}"),
        wait: None,
        network: false,
    }
}

fn config_bug(endpoint: &str, e: http::Error) -> DriverError {
    DriverError::Config {
        what: format!("cannot build the request {endpoint}: {e}"),
        hint: "check [reserved_ip] api_url and address",
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_DETAIL_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_DETAIL_CHARS).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_over_reset() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut h = HeaderMap::new();
        h.insert("ratelimit-reset", HeaderValue::from_static("1005"));
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(5)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(2)));
        let past = UNIX_EPOCH + Duration::from_secs(2_000);
        h.remove(RETRY_AFTER);
        assert_eq!(rate_limit_wait(&h, past), Some(Duration::ZERO));
        assert_eq!(rate_limit_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy::default();
        for n in 1..40 {
            let b = p.backoff(n);
            assert!(b <= p.max_backoff, "{b:?}");
            let exp = p
                .base_backoff
                .saturating_mul(1 << (n - 1).min(16))
                .min(p.max_backoff);
            assert!(b >= exp / 2);
        }
        assert!(p.server_wait(Duration::from_secs(3)) >= Duration::from_secs(3));
        assert!(
            p.server_wait(Duration::from_secs(3600))
                <= p.max_server_wait + Duration::from_millis(250)
        );
    }

    #[test]
    fn base_url_rules() {
        assert!(BaseUrl::parse("api_url", "https://api.digitalocean.com/").is_ok());
        assert!(BaseUrl::parse("api_url", "http://127.0.0.1:8080").is_ok());
        assert!(BaseUrl::parse("api_url", "ftp://x").is_err());
        assert!(BaseUrl::parse("api_url", "https://user:pw@x").is_err());
        assert!(BaseUrl::parse("api_url", "nonsense url").is_err());
        let b = BaseUrl::parse("api_url", "https://api.example.com/").unwrap();
        assert_eq!(
            b.uri("/v2/x").unwrap().to_string(),
            "https://api.example.com/v2/x"
        );
        assert_eq!(b.host, "api.example.com");
    }
}
