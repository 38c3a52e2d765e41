//! The warm HTTP(S) client the cloud drivers share, and its pinned DNS.
//!
//! Keep-alive pool, rustls with webpki roots, API host resolved ahead and
//! refreshed ([`PinnedResolver`]); every call bounded (connect, whole request,
//! [`MAX_ANSWER_BYTES`]). Why: docs/digitalocean.md, "The warm client".

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The most bytes read from any answer (API or metadata). Real answers are
/// a few KiB; anything bigger is refused, not buffered.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How long idle pooled connections are kept warm.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Bounds on the background DNS refresh period (the record's TTL is clamped to these).
const DNS_REFRESH_MIN: Duration = Duration::from_secs(5);
/// Retry period after a failed background lookup.
const DNS_RETRY: Duration = Duration::from_secs(5);

/// An answer, fully read (bounded).
#[derive(Debug)]
pub(crate) struct HttpAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request produced no answer.
#[derive(Debug)]
pub(crate) enum HttpFailure {
    /// The whole request (connect, headers, body) did not finish in time.
    Timeout(Duration),
    /// The answer's body exceeded [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// Connect refused/reset, DNS failure, TLS failure, protocol error.
    Transport(String),
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpFailure::Timeout(d) => write!(f, "no complete answer within {} ms", d.as_millis()),
            HttpFailure::TooLarge => write!(f, "answer larger than {MAX_ANSWER_BYTES} bytes"),
            HttpFailure::Transport(s) => f.write_str(s),
        }
    }
}

type Connector = HttpsConnector<HttpConnector<PinnedResolver>>;

/// One shared, warm client. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    resolver: PinnedResolver,
}

impl HttpClient {
    /// Build the client (no I/O happens here).
    pub fn new(connect_timeout: Duration) -> Result<Self, String> {
        let resolver = PinnedResolver::default();
        let mut http = HttpConnector::new_with_resolver(resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        // An explicit provider: no reliance on a process-wide default, which
        // another crate in the binary might set differently.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(4)
            .build(https);
        Ok(HttpClient { client, resolver })
    }

    /// Resolve `host` now and keep it fresh in the background, so requests to
    /// it never wait on DNS. Does nothing for IP literals. Never fails: on a
    /// failed lookup the background task retries and requests fall back to a
    /// lookup of their own.
    pub async fn pin_host(&self, host: &str, refresh_max: Duration) {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            return;
        }
        self.resolver.pin(host.to_owned(), refresh_max).await;
    }

    /// Send one request and read its answer, all within `timeout`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<HttpAnswer, HttpFailure> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpFailure::Transport(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpFailure::TooLarge
                    } else {
                        HttpFailure::Transport(format!("reading the answer: {e}"))
                    }
                })?
                .to_bytes();
            Ok(HttpAnswer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpFailure::Timeout(timeout)),
        }
    }
}

/// "client error (Connect): tcp connect error: Connection refused (os error 111)".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    let mut depth = 0;
    while let Some(s) = src {
        if depth >= 6 {
            break;
        }
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
        depth += 1;
    }
    out
}

/// A hyper-util resolver that answers the pinned host from memory and
/// anything else with a fresh hickory lookup.
#[derive(Clone, Default)]
pub(crate) struct PinnedResolver {
    state: Arc<PinState>,
}

#[derive(Default)]
struct PinState {
    pinned: Mutex<Option<Pinned>>,
    /// Built on first use; `None` when the system resolver config is unusable
    /// (then we fall back to the OS resolver through tokio).
    hickory: OnceLock<Option<TokioResolver>>,
}

struct Pinned {
    host: String,
    addrs: Vec<IpAddr>,
}

impl PinState {
    fn hickory(&self) -> Option<&TokioResolver> {
        self.hickory
            .get_or_init(|| match TokioResolver::builder_tokio() {
                Ok(b) => Some(b.build()),
                Err(e) => {
                    tracing::warn!(error = %e, "system DNS config unusable; using the OS resolver");
                    None
                }
            })
            .as_ref()
    }

    /// Look `host` up; returns the addresses and how long they may be kept.
    async fn lookup(&self, host: &str) -> io::Result<(Vec<IpAddr>, Option<Duration>)> {
        if let Some(r) = self.hickory() {
            let l = r
                .lookup_ip(host)
                .await
                .map_err(|e| io::Error::other(format!("DNS lookup of {host} failed: {e}")))?;
            let ttl = l.valid_until().saturating_duration_since(Instant::now());
            let addrs: Vec<IpAddr> = l.iter().collect();
            if addrs.is_empty() {
                return Err(io::Error::other(format!("DNS: no address for {host}")));
            }
            Ok((addrs, Some(ttl)))
        } else {
            let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
                .await?
                .map(|sa| sa.ip())
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::other(format!("DNS: no address for {host}")));
            }
            Ok((addrs, None))
        }
    }

    fn cached(&self, host: &str) -> Option<Vec<IpAddr>> {
        let g = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|p| p.host.eq_ignore_ascii_case(host) && !p.addrs.is_empty())
            .map(|p| p.addrs.clone())
    }

    fn store(&self, host: &str, addrs: Vec<IpAddr>) {
        let mut g = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(Pinned {
            host: host.to_owned(),
            addrs,
        });
    }
}

impl PinnedResolver {
    async fn pin(&self, host: String, refresh_max: Duration) {
        let refresh_max = refresh_max.max(DNS_REFRESH_MIN);
        let first = match self.state.lookup(&host).await {
            Ok((addrs, ttl)) => {
                tracing::debug!(host = %host, addrs = ?addrs, "api host resolved ahead");
                self.state.store(&host, addrs);
                clamp_ttl(ttl, refresh_max)
            }
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "resolving the api host ahead failed; will retry");
                DNS_RETRY
            }
        };
        let weak: Weak<PinState> = Arc::downgrade(&self.state);
        tokio::spawn(async move {
            let mut wait = first;
            loop {
                tokio::time::sleep(wait).await;
                let Some(state) = weak.upgrade() else { return };
                wait = match state.lookup(&host).await {
                    Ok((addrs, ttl)) => {
                        state.store(&host, addrs);
                        clamp_ttl(ttl, refresh_max)
                    }
                    Err(e) => {
                        // Keep the old addresses: stale beats none during a failover.
                        tracing::warn!(host = %host, error = %e, "refreshing the api host's addresses failed; keeping the previous ones");
                        DNS_RETRY
                    }
                };
            }
        });
    }
}

fn clamp_ttl(ttl: Option<Duration>, max: Duration) -> Duration {
    ttl.unwrap_or(max).clamp(DNS_REFRESH_MIN, max)
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for PinnedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let to_sockets = |addrs: Vec<IpAddr>| {
            // Port 0: hyper-util's connector sets the URL's port afterwards.
            addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter()
        };
        if let Some(addrs) = self.state.cached(name.as_str()) {
            return Box::pin(std::future::ready(Ok(to_sockets(addrs))));
        }
        let state = self.state.clone();
        Box::pin(async move {
            let (addrs, _) = state.lookup(name.as_str()).await?;
            Ok(to_sockets(addrs))
        })
    }
}
