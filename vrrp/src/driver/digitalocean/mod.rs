//! The `digitalocean` Reserved-IP driver: moves a DigitalOcean Reserved IP to
//! this droplet through the public API, and tells who holds it now.
//!
//! Parts: this module (settings, validation, holder reads, the
//! metadata-first check), `claim` (the assign, bounded by total time),
//! `api` (one bounded request, how answers are sorted, the call metric and
//! the rate-limit warning), `metadata` (the droplet metadata service). Every
//! wait is bounded; the token stays in a [`Secret`] and is scrubbed from
//! anything kept. What the real API does, with sources, and the API budget:
//! docs/digitalocean.md.

mod api;
mod claim;
mod metadata;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Uri};
use prometheus::Registry;
use rand::Rng;
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::http::HttpClient;
use super::{DriverError, Holder, ReleaseOutcome, Secret};
use api::{ApiBudget, Endpoint, Failure, Last};
pub use metadata::MetadataClient;

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

/// The shortest poll interval accepted (settings below are raised to it).
const MIN_POLL: Duration = Duration::from_millis(10);
/// How long the metadata service is not asked again after it failed to answer.
const METADATA_BACKOFF: Duration = Duration::from_secs(300);

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

/// Bounds on one claim or holder read: its total time first (a lock held by
/// a seconds-long action is waited out within it, a `Retry-After` honoured up
/// to it), then how many failed requests it may make; jittered exponential
/// backoff between failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most failed requests (5xx, 429, network, errored actions) of one
    /// operation (≥ 1). Waiting out a lock is not a failure.
    pub max_attempts: u32,
    /// Most wall-clock time for one operation, waits and polls included.
    pub max_total: Duration,
    /// First backoff step; doubles each retry.
    pub base_backoff: Duration,
    /// Largest backoff step.
    pub max_backoff: Duration,
    /// Largest wait taken from `Retry-After` / `RateLimit-Reset`; a longer
    /// one gives up at once (the total bound applies too).
    pub max_server_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_total: Duration::from_secs(60),
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            max_server_wait: Duration::from_secs(45),
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

    /// A server-requested wait, never shortened, plus a little jitter so
    /// nodes told the same reset time do not all return at once; `None`
    /// when it is longer than [`RetryPolicy::max_server_wait`].
    fn server_wait(&self, wait: Duration) -> Option<Duration> {
        if wait > self.max_server_wait {
            return None;
        }
        let spread = (wait / 10).min(Duration::from_millis(250));
        let jitter_ms = rand::thread_rng().gen_range(0..=spread.as_millis() as u64);
        Some(wait + Duration::from_millis(jitter_ms))
    }
}

/// Bounds on polling an action until `completed` / `errored`, and on
/// polling the Reserved IP until its lock clears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollPolicy {
    /// Pause before each poll of an action.
    pub interval: Duration,
    /// Most polls of one action.
    pub max_polls: u32,
    /// Most time spent polling one action.
    pub max_total: Duration,
    /// Pause between reads of a locked Reserved IP (another action runs).
    pub lock_interval: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            interval: Duration::from_millis(500),
            max_polls: 120,
            max_total: Duration::from_secs(30),
            lock_interval: Duration::from_secs(1),
        }
    }
}

/// Settings of the `digitalocean` driver (node file `[reserved_ip]`).
#[derive(Clone, Debug)]
pub struct DigitalOceanConfig {
    /// The Reserved IP (`address`); IPv4 only (see [`DigitalOcean::new`]).
    pub address: IpAddr,
    /// The API token (from `token_file`).
    pub token: Secret,
    /// This droplet's id (`droplet_id`); `None` = ask the metadata service.
    pub droplet_id: Option<u64>,
    /// API base URL (`api_url`): `https://`, or `http://` to a loopback host.
    pub api_url: String,
    /// Allow `http://` to a host that is not loopback (the token would
    /// travel in clear text); off by default.
    pub allow_plain_http: bool,
    /// Metadata base URL (`metadata_url`).
    pub metadata_url: String,
    /// Timeouts of every call.
    pub timeouts: Timeouts,
    /// Retry bounds of claims and queries.
    pub retry: RetryPolicy,
    /// Polling bounds of actions and locks.
    pub poll: PollPolicy,
    /// While the metadata service says the Reserved IP points here, a
    /// [`DigitalOcean::check`] still reads it from the API this often.
    pub verify_every: Duration,
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
            allow_plain_http: false,
            metadata_url: DEFAULT_METADATA_URL.to_owned(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            poll: PollPolicy::default(),
            verify_every: Duration::from_secs(120),
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
    /// `plain_ok`: `http://` is fine for any host (no secret goes there).
    fn parse(what: &'static str, url: &str, plain_ok: bool) -> Result<Self, DriverError> {
        let bad = |why: &str| DriverError::Config {
            what: format!("[reserved_ip] {what} {url:?} {why}"),
            hint: "write it as https://host[:port] (http:// only to 127.0.0.1, ::1 or localhost)",
        };
        let uri: Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        let auth = uri.authority().ok_or_else(|| bad("has no host"))?;
        let host = auth.host().to_owned();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if plain_ok || is_loopback(&host) => {}
            Some("http") => return Err(bad(
                "uses plain http:// to a host that is not loopback: the API token would travel in clear text (use https://)",
            )),
            _ => return Err(bad("must start with https:// (or http:// to a loopback host)")),
        }
        if auth.as_str().contains('@') {
            return Err(bad("must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        Ok(BaseUrl {
            base: url.trim_end_matches('/').to_owned(),
            host,
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

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    verify_every: Duration,
    budget: ApiBudget,
    /// When the API last said who holds the IP; when metadata last failed.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    api_read: Option<Instant>,
    metadata_failed: Option<Instant>,
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

/// What `GET /v2/reserved_ips/{ip}` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpState {
    holder: Holder,
    /// An action runs on the IP; new ones are refused until it ends.
    locked: bool,
}

impl DigitalOcean {
    /// Build the driver: validates the settings, builds the warm client and
    /// resolves the API host ahead (in the background from then on). Does not
    /// contact the API. Must run inside a tokio runtime.
    ///
    /// A reserved IPv6 is refused: DigitalOcean serves it from other
    /// endpoints (`/v2/reserved_ipv6/…`) with other semantics (the droplet
    /// configures the address itself), which this driver does not speak.
    pub async fn new(cfg: DigitalOceanConfig) -> Result<Self, DriverError> {
        if cfg.address.is_ipv6() {
            return Err(DriverError::Config {
                what: format!("[reserved_ip] address {} is IPv6: the digitalocean driver moves reserved IPv4 addresses only (reserved IPv6 lives at /v2/reserved_ipv6 and is not supported)", cfg.address),
                hint: "use a reserved IPv4 address, or the l2 driver for an address you route yourself",
            });
        }
        let auth = bearer(&cfg.token)?;
        let api = BaseUrl::parse("api_url", &cfg.api_url, cfg.allow_plain_http)?;
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
        // Every loop waits at least this long per turn: no busy polling.
        poll.interval = poll.interval.max(MIN_POLL);
        poll.lock_interval = poll.lock_interval.max(MIN_POLL);
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
                verify_every: cfg.verify_every,
                budget: ApiBudget::new(),
                seen: Mutex::new(Seen::default()),
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

    /// Registers `dynia_do_api_calls_total{endpoint,status}` on `registry`
    /// (a second registration of the same driver is a no-op).
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        self.inner.budget.register(registry)
    }

    /// API calls this driver made so far (every answer or failure counted once).
    pub fn api_calls(&self) -> u64 {
        self.inner.budget.total()
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

    /// The master's reconcile read, metadata first: when the droplet's
    /// metadata service says this Reserved IP points here, that is the answer
    /// (no API call), except every [`DigitalOceanConfig::verify_every`], when
    /// the API confirms it. When metadata says it is not here, or cannot
    /// answer, the API is asked ([`DigitalOcean::holder`]).
    pub async fn check(&self) -> Result<Holder, DriverError> {
        let (verify_due, metadata_ok) = {
            let seen = self.seen();
            let now = Instant::now();
            (
                seen.api_read
                    .is_none_or(|t| now.duration_since(t) >= self.inner.verify_every),
                seen.metadata_failed
                    .is_none_or(|t| now.duration_since(t) >= METADATA_BACKOFF),
            )
        };
        if !verify_due && metadata_ok {
            match self.inner.metadata.reserved_ipv4().await {
                Ok(Some(ip)) if IpAddr::V4(ip) == self.inner.address => return Ok(Holder::Me),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, backoff_s = METADATA_BACKOFF.as_secs(), "metadata service cannot say where the reserved ip points; asking the api");
                    self.seen().metadata_failed = Some(Instant::now());
                }
            }
        }
        self.holder().await
    }

    /// Who the Reserved IP points at (`GET /v2/reserved_ips/{ip}`), with
    /// retries on 429 / 5xx / network failures bounded by the retry policy.
    pub async fn holder(&self) -> Result<Holder, DriverError> {
        // "Me" needs our own id: configured, or discovered once.
        self.droplet_id().await?;
        let policy = &self.inner.retry;
        let started = Instant::now();
        let deadline = started + policy.max_total;
        let mut last = Last::default();
        let mut wait: Option<Duration> = None;
        for attempt in 1..=policy.max_attempts {
            if attempt > 1 {
                let pause = match wait.take() {
                    Some(w) => policy.server_wait(w),
                    None => Some(policy.backoff(attempt - 1)),
                };
                match pause {
                    Some(p) if Instant::now() + p < deadline => tokio::time::sleep(p).await,
                    _ => break,
                }
            }
            match self.read_ip().await {
                Ok(s) => return Ok(s.holder),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(f) => wait = last.note(f),
            }
        }
        let endpoint = format!("GET /v2/reserved_ips/{}", self.inner.address);
        Err(last.into_error(
            endpoint,
            format!("no usable answer in {} ms", started.elapsed().as_millis()),
        ))
    }

    /// One read of the holder, no retry: the keep-warm read.
    pub async fn warm(&self) -> Result<Holder, DriverError> {
        self.droplet_id().await?;
        match self.read_ip().await {
            Ok(s) => Ok(s.holder),
            Err(Failure::Fatal(e)) => Err(e),
            Err(f) => {
                let mut last = Last::default();
                last.note(f);
                let endpoint = format!("GET /v2/reserved_ips/{}", self.inner.address);
                Err(last.into_error(endpoint, "one attempt (keep-warm)".into()))
            }
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One read of the Reserved IP: its holder and whether it is locked.
    async fn read_ip(&self) -> Result<IpState, Failure> {
        let path = format!("/v2/reserved_ips/{}", self.inner.address);
        let endpoint = format!("GET {path}");
        let a = self.call(Endpoint::GetIp, Method::GET, &path, None).await?;
        if !a.status.is_success() {
            return Err(self.classify(&endpoint, &a));
        }
        let v = api::parse_json(&endpoint, &a.body)?;
        let rip = v
            .get("reserved_ip")
            .filter(|r| r.is_object())
            .ok_or_else(|| {
                api::malformed(&endpoint, a.status, "no reserved_ip object in the answer")
            })?;
        let locked = rip.get("locked").and_then(Value::as_bool).unwrap_or(false);
        let holder = match rip.get("droplet") {
            None | Some(Value::Null) => Holder::Nobody,
            Some(d) => self.holder_of(d).ok_or_else(|| {
                api::malformed(&endpoint, a.status, "reserved_ip.droplet has no numeric id")
            })?,
        };
        self.seen().api_read = Some(Instant::now());
        Ok(IpState { holder, locked })
    }

    /// The holder a `reserved_ip.droplet` object names.
    fn holder_of(&self, d: &Value) -> Option<Holder> {
        let id = d.get("id").and_then(Value::as_u64)?;
        // The whole droplet object comes with the answer; its `status` is
        // new|active|off|archive (DigitalOcean API, droplet object): the
        // witness of a live holder.
        let running = match d.get("status").and_then(Value::as_str) {
            Some("active" | "new") => Some(true),
            Some("off" | "archive") => Some(false),
            _ => None,
        };
        Some(if Some(id) == self.inner.droplet_id.get().copied() {
            Holder::Me
        } else {
            Holder::Other {
                droplet_id: id,
                running,
            }
        })
    }
}

/// The `Authorization` value, marked sensitive, from a token that can be one.
fn bearer(token: &Secret) -> Result<HeaderValue, DriverError> {
    if token.expose().len() < 8 {
        return Err(DriverError::Config {
            what: "the DigitalOcean API token is empty or too short".into(),
            hint: HINT_TOKEN,
        });
    }
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        DriverError::Config {
            what: "the DigitalOcean API token contains characters an HTTP header cannot carry"
                .into(),
            hint: HINT_TOKEN,
        }
    })?;
    auth.set_sensitive(true);
    Ok(auth)
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
        let w = p.server_wait(Duration::from_secs(3)).unwrap();
        assert!(w >= Duration::from_secs(3) && w <= Duration::from_millis(3_250));
        assert!(p.server_wait(Duration::from_secs(29)).is_some());
        assert_eq!(p.server_wait(Duration::from_secs(3600)), None);
    }

    #[test]
    fn base_url_rules() {
        assert!(BaseUrl::parse("api_url", "https://api.digitalocean.com/", false).is_ok());
        assert!(BaseUrl::parse("api_url", "http://127.0.0.1:8080", false).is_ok());
        assert!(BaseUrl::parse("api_url", "http://[::1]:8080", false).is_ok());
        assert!(BaseUrl::parse("api_url", "http://localhost:8080", false).is_ok());
        let e = BaseUrl::parse("api_url", "http://api.digitalocean.com", false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("api_url") && msg.contains("clear text"),
            "{msg}"
        );
        assert!(BaseUrl::parse("api_url", "http://10.0.0.5:80", false).is_err());
        assert!(BaseUrl::parse("api_url", "http://10.0.0.5:80", true).is_ok());
        assert!(BaseUrl::parse("api_url", "ftp://x", false).is_err());
        assert!(BaseUrl::parse("api_url", "https://user:pw@x", false).is_err());
        assert!(BaseUrl::parse("api_url", "nonsense url", false).is_err());
        let b = BaseUrl::parse("api_url", "https://api.example.com/", false).unwrap();
        assert_eq!(
            b.uri("/v2/x").unwrap().to_string(),
            "https://api.example.com/v2/x"
        );
        assert_eq!(b.host, "api.example.com");
    }
}
