//! One bounded request to the API, how its answer is sorted (retry after a
//! wait, or give up), and the API budget: every call counted by endpoint and
//! status (`dynia_do_api_calls_total`), a warning when `RateLimit-Remaining`
//! runs low. Waits come from `Retry-After` (seconds or an HTTP date) or
//! `RateLimit-Reset` minus the server's own `Date`, so a skewed local clock
//! cannot stretch or cut them.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, DATE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;
use tokio::time::Instant;

use super::super::http::{HttpAnswer, HttpFailure};
use super::{
    config_bug, truncate, DigitalOcean, DriverError, HINT_ADDRESS, HINT_NETWORK, HINT_REFUSED,
    HINT_RETRY, HINT_TOKEN, UA,
};

/// The API endpoints the driver calls, as metric labels (no address, no id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `GET /v2/reserved_ips/{ip}`.
    GetIp,
    /// `POST /v2/reserved_ips/{ip}/actions`.
    PostAction,
    /// `GET /v2/reserved_ips/{ip}/actions/{id}`.
    GetAction,
}

impl Endpoint {
    const ALL: [Endpoint; 3] = [Endpoint::GetIp, Endpoint::PostAction, Endpoint::GetAction];

    fn label(self) -> &'static str {
        match self {
            Endpoint::GetIp => "get_reserved_ip",
            Endpoint::PostAction => "post_reserved_ip_action",
            Endpoint::GetAction => "get_reserved_ip_action",
        }
    }
}

/// Below this share of `RateLimit-Limit` left, warn (at most once a minute).
const LOW_REMAINING_SHARE: u32 = 10;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The call counter and the low-budget warning's memory.
pub(super) struct ApiBudget {
    calls: IntCounterVec,
    last_warn: Mutex<Option<Instant>>,
}

impl ApiBudget {
    pub(super) fn new() -> ApiBudget {
        let calls = IntCounterVec::new(
            Opts::new(
                "dynia_do_api_calls_total",
                "DigitalOcean API calls of the reserved-IP driver, by endpoint and status (HTTP code, or network)",
            ),
            &["endpoint", "status"],
        )
        .expect("static metric definition is valid");
        for e in Endpoint::ALL {
            calls.with_label_values(&[e.label(), "200"]);
        }
        ApiBudget {
            calls,
            last_warn: Mutex::new(None),
        }
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        match registry.register(Box::new(self.calls.clone())) {
            Err(prometheus::Error::AlreadyReg) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn total(&self) -> u64 {
        use prometheus::core::Collector;
        self.calls
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    fn count(&self, e: Endpoint, status: &str) {
        self.calls.with_label_values(&[e.label(), status]).inc();
    }

    /// Warns when the token's hourly budget is nearly spent (another
    /// cluster or tool may share the token).
    fn observe(&self, headers: &HeaderMap) {
        let (Some(limit), Some(remaining)) = (
            header_u64(headers, "ratelimit-limit"),
            header_u64(headers, "ratelimit-remaining"),
        ) else {
            return;
        };
        if remaining * u64::from(LOW_REMAINING_SHARE) >= limit {
            return;
        }
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        let reset_in_s = reset_wait(headers, SystemTime::now()).map(|d| d.as_secs());
        tracing::warn!(
            remaining,
            limit,
            reset_in_s,
            "digitalocean api rate limit nearly used up; is the token shared with another cluster or tool? a failover may meet 429"
        );
    }
}

/// How one API attempt ended, when it did not succeed.
pub(super) enum Failure {
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

/// The last retryable failure of an operation, for its final error.
#[derive(Debug, Default)]
pub(super) struct Last {
    pub(super) status: Option<u16>,
    pub(super) reason: String,
    pub(super) network: bool,
}

impl Last {
    /// Keeps `f`'s story; returns the wait the server asked for.
    pub(super) fn note(&mut self, f: Failure) -> Option<Duration> {
        match f {
            Failure::Retry {
                status,
                reason,
                wait,
                network,
            } => {
                *self = Last {
                    status,
                    reason,
                    network,
                };
                wait
            }
            Failure::Fatal(e) => {
                *self = Last {
                    status: e.status(),
                    reason: e.to_string(),
                    network: false,
                };
                None
            }
        }
    }

    pub(super) fn set(&mut self, status: Option<u16>, reason: String) {
        *self = Last {
            status,
            reason,
            network: false,
        };
    }

    pub(super) fn into_error(self, endpoint: String, what: String) -> DriverError {
        let detail = format!("{what}: {}", self.reason);
        if self.network {
            DriverError::Network {
                endpoint,
                detail,
                hint: HINT_NETWORK,
            }
        } else {
            DriverError::Provider {
                endpoint,
                status: self.status,
                detail,
                hint: HINT_RETRY,
            }
        }
    }
}

impl DigitalOcean {
    /// One bounded request to the API, counted.
    pub(super) async fn call(
        &self,
        ep: Endpoint,
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
        let budget = &self.inner.budget;
        match self.inner.http.send(req, self.inner.timeouts.request).await {
            Ok(a) => {
                budget.count(ep, a.status.as_str());
                budget.observe(&a.headers);
                Ok(a)
            }
            Err(e) => {
                budget.count(ep, "network");
                Err(Failure::Retry {
                    status: None,
                    reason: format!("{endpoint}: {}", self.inner.token.scrub(&e.to_string())),
                    wait: None,
                    network: !matches!(e, HttpFailure::TooLarge),
                })
            }
        }
    }

    /// Sort a non-success answer (other than a claim's 422) into retry or fatal.
    pub(super) fn classify(&self, endpoint: &str, a: &HttpAnswer) -> Failure {
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
        let retry = |reason: String, wait: Option<Duration>| Failure::Retry {
            status: Some(code),
            reason,
            wait,
            network: false,
        };
        match code {
            401 | 403 => fatal(HINT_TOKEN),
            404 => fatal(HINT_ADDRESS),
            429 => retry(
                format!("429 rate limited{said}"),
                rate_limit_wait(&a.headers, SystemTime::now()),
            ),
            408 | 500..=599 => retry(
                format!("answered {}{said}", a.status),
                retry_after(&a.headers, SystemTime::now()),
            ),
            _ => fatal(HINT_REFUSED),
        }
    }

    /// The `message` of a DigitalOcean error body, bounded and token-scrubbed.
    pub(super) fn error_message(&self, body: &[u8]) -> String {
        let raw = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        truncate(&self.inner.token.scrub(raw.trim()))
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// The server's clock: its `Date` header, else ours.
fn server_now(headers: &HeaderMap, local: SystemTime) -> SystemTime {
    headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .unwrap_or(local)
}

/// `Retry-After`: delta seconds, or an HTTP date (relative to `Date`).
pub(crate) fn retry_after(headers: &HeaderMap, local: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(server_now(headers, local))
            .unwrap_or(Duration::ZERO),
    )
}

/// `RateLimit-Reset` (epoch seconds) minus the server's `Date`.
fn reset_wait(headers: &HeaderMap, local: SystemTime) -> Option<Duration> {
    let at =
        UNIX_EPOCH.checked_add(Duration::from_secs(header_u64(headers, "ratelimit-reset")?))?;
    Some(
        at.duration_since(server_now(headers, local))
            .unwrap_or(Duration::ZERO),
    )
}

/// How long a 429 asks us to wait: `Retry-After` first, else `RateLimit-Reset`.
pub(crate) fn rate_limit_wait(headers: &HeaderMap, local: SystemTime) -> Option<Duration> {
    retry_after(headers, local).or_else(|| reset_wait(headers, local))
}

pub(super) fn parse_json(endpoint: &str, body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::Retry {
        status: None,
        reason: format!("{endpoint}: malformed JSON in the answer ({e})"),
        wait: None,
        network: false,
    })
}

pub(super) fn malformed(endpoint: &str, status: StatusCode, what: &str) -> Failure {
    Failure::Retry {
        status: Some(status.as_u16()),
        reason: format!("{endpoint}: {what}"),
        wait: None,
        network: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_after_wins_over_reset_and_date_is_the_servers() {
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
        // The server's Date, not our (skewed) clock, is what the reset is from.
        h.insert(
            DATE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:16:35 GMT"),
        );
        assert_eq!(rate_limit_wait(&h, past), Some(Duration::from_secs(10)));
        // Retry-After as an HTTP date.
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:17:04 GMT"),
        );
        assert_eq!(retry_after(&h, past), Some(Duration::from_secs(29)));
    }
}
