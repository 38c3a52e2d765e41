//! The droplet metadata service: this droplet's id, private IP, and whether
//! a Reserved IPv4 points here (`/metadata/v1/reserved_ip/ipv4/active`,
//! `…/ip_address`) — the free answer that spares the API during steady state.
//! Plain `http` on a link-local address and no token: nothing to leak.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use http::header::USER_AGENT;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use super::super::http::HttpClient;
use super::{config_bug, truncate, BaseUrl, Timeouts, HINT_METADATA, UA};
use crate::driver::DriverError;

/// Client of the droplet metadata service (droplet id, private IP, Reserved IP).
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

/// Attempts per metadata read at start (the service is local; failures are quick).
const METADATA_ATTEMPTS: u32 = 3;
/// Longest wait for one Reserved-IP read during reconcile: the API is the
/// fallback, so a slow metadata service must not delay the check.
const RESERVED_READ_TIMEOUT: Duration = Duration::from_secs(1);

impl MetadataClient {
    /// A client of the metadata service at `url` (e.g. [`super::DEFAULT_METADATA_URL`]).
    pub fn new(url: &str, timeouts: Timeouts) -> Result<Self, DriverError> {
        let http = HttpClient::new(timeouts.connect).map_err(|e| DriverError::Config {
            what: e,
            hint: "this is a bug in dynia's TLS setup; please report it",
        })?;
        Self::with_client(http, url, timeouts)
    }

    pub(super) fn with_client(
        http: HttpClient,
        url: &str,
        timeouts: Timeouts,
    ) -> Result<Self, DriverError> {
        Ok(MetadataClient {
            http,
            base: BaseUrl::parse("metadata_url", url, true)?,
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
            .ok_or_else(|| bad_answer(path, format!("not a droplet id: {:?}", truncate(&text))))
    }

    /// This droplet's private IPv4 (`GET /metadata/v1/interfaces/private/0/ipv4/address`).
    pub async fn private_ipv4(&self) -> Result<Ipv4Addr, DriverError> {
        let path = "/metadata/v1/interfaces/private/0/ipv4/address";
        let text = self.get_text(path).await?;
        text.parse::<Ipv4Addr>()
            .map_err(|_| bad_answer(path, format!("not an IPv4 address: {:?}", truncate(&text))))
    }

    /// The Reserved IPv4 pointing at this droplet, if any
    /// (`/metadata/v1/reserved_ip/ipv4/active`, then `…/ip_address`). One
    /// short attempt each: the caller falls back to the API.
    pub async fn reserved_ipv4(&self) -> Result<Option<Ipv4Addr>, DriverError> {
        let path = "/metadata/v1/reserved_ip/ipv4/active";
        let timeout = RESERVED_READ_TIMEOUT.min(self.timeouts.request);
        match self.get_once(path, timeout).await?.as_str() {
            "true" => {}
            "false" => return Ok(None),
            other => {
                return Err(bad_answer(
                    path,
                    format!("not true|false: {:?}", truncate(other)),
                ))
            }
        }
        let path = "/metadata/v1/reserved_ip/ipv4/ip_address";
        let text = self.get_once(path, timeout).await?;
        text.parse::<Ipv4Addr>()
            .map(Some)
            .map_err(|_| bad_answer(path, format!("not an IPv4 address: {:?}", truncate(&text))))
    }

    /// One GET, its 200 body trimmed.
    async fn get_once(&self, path: &str, timeout: Duration) -> Result<String, DriverError> {
        let endpoint = format!("GET {path}");
        let req = Request::builder()
            .method(Method::GET)
            .uri(self.base.uri(path)?)
            .header(USER_AGENT, UA)
            .body(Full::new(Bytes::new()))
            .map_err(|e| config_bug(&endpoint, e))?;
        match self.http.send(req, timeout).await {
            Ok(a) if a.status == StatusCode::OK => {
                Ok(String::from_utf8_lossy(&a.body).trim().to_owned())
            }
            Ok(a) if a.status.is_server_error() => Err(DriverError::Network {
                endpoint: format!("metadata service {endpoint}"),
                detail: format!("answered {}", a.status),
                hint: HINT_METADATA,
            }),
            Ok(a) => Err(DriverError::Provider {
                endpoint,
                status: Some(a.status.as_u16()),
                detail: format!("answered {}", a.status),
                hint: HINT_METADATA,
            }),
            Err(e) => Err(DriverError::Network {
                endpoint: format!("metadata service {endpoint}"),
                detail: e.to_string(),
                hint: HINT_METADATA,
            }),
        }
    }

    /// A GET with a few quick retries on 5xx and network failures.
    async fn get_text(&self, path: &str) -> Result<String, DriverError> {
        let mut last = String::new();
        for attempt in 1..=METADATA_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            match self.get_once(path, self.timeouts.request).await {
                Ok(t) => return Ok(t),
                Err(e @ DriverError::Provider { .. }) | Err(e @ DriverError::Config { .. }) => {
                    return Err(e)
                }
                Err(DriverError::Network { detail, .. }) => last = detail,
            }
        }
        Err(DriverError::Network {
            endpoint: format!("metadata service GET {path}"),
            detail: format!("no answer after {METADATA_ATTEMPTS} attempts: {last}"),
            hint: HINT_METADATA,
        })
    }
}

fn bad_answer(path: &str, detail: String) -> DriverError {
    DriverError::Provider {
        endpoint: format!("GET {path}"),
        status: Some(200),
        detail,
        hint: HINT_METADATA,
    }
}
