//! The proxy's Prometheus metrics.
//!
//! Families are registered once in the daemon's registry; the data path only
//! touches handles resolved ahead (per service, per member), so counting a
//! request is an atomic add, never a label lookup under a lock. The series of
//! a service or member that left the configuration are removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Label used for requests that matched no service.
pub const NO_SERVICE: &str = "_unknown_host";

/// Metric families of the proxy.
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_up: IntGaugeVec,
    health_checks: IntCounterVec,
    upstream_failures: IntCounterVec,
    retries: IntCounterVec,
    pub connections_active: IntGauge,
    pub connections_refused: IntCounter,
    pub connections_total: IntCounter,
    member_requests: IntCounterVec,
    member_errors: IntCounterVec,
    member_latency: HistogramVec,
    check_duration: HistogramVec,
    /// Client-side bytes (headers, bodies, tunnels; TLS records on TLS listeners).
    pub received_bytes: IntCounter,
    pub sent_bytes: IntCounter,
    /// Access-log lines lost because the writer's queue was full.
    pub access_log_dropped: IntCounter,
}

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl ProxyMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<ProxyMetrics, prometheus::Error> {
        let m = ProxyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "dynia_requests_total",
                    "HTTP requests answered, by service and status code.",
                ),
                &["service", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "dynia_request_duration_seconds",
                    "Time from receiving a request head to sending the response head.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["service"],
            )?,
            upstream_up: IntGaugeVec::new(
                Opts::new(
                    "dynia_upstream_up",
                    "1 when the member passes its health check for the service.",
                ),
                &["service", "member"],
            )?,
            health_checks: IntCounterVec::new(
                Opts::new(
                    "dynia_health_checks_total",
                    "Active health checks run, by result.",
                ),
                &["service", "member", "result"],
            )?,
            upstream_failures: IntCounterVec::new(
                Opts::new(
                    "dynia_upstream_failures_total",
                    "Passive failures: connect errors, resets and timeouts talking to a member.",
                ),
                &["service", "member"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "dynia_upstream_retries_total",
                    "Requests sent again, by service and reason: `connect` (the member refused or timed out the connection, next member), `reset` (closed before any response byte, next member), `resend` (a pooled connection the member closed, same member), `hedge` (a connect slow enough that another member was tried alongside).",
                ),
                &["service", "reason"],
            )?,
            connections_active: IntGauge::new(
                "dynia_connections_active",
                "Client connections currently open.",
            )?,
            connections_refused: IntCounter::new(
                "dynia_connections_refused_total",
                "Client connections closed at once because max_connections was reached.",
            )?,
            connections_total: IntCounter::new(
                "dynia_connections_total",
                "Client connections accepted.",
            )?,
            member_requests: IntCounterVec::new(
                Opts::new(
                    "dynia_member_requests_total",
                    "Requests a member answered (a response head came back), by service and member.",
                ),
                &["service", "member"],
            )?,
            member_errors: IntCounterVec::new(
                Opts::new(
                    "dynia_member_errors_total",
                    "Requests to a member that failed: a 5xx answer, a reset, a timeout or a refused connection.",
                ),
                &["service", "member"],
            )?,
            member_latency: HistogramVec::new(
                HistogramOpts::new(
                    "dynia_member_response_seconds",
                    "Time from sending a request to a member to its response head.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["service", "member"],
            )?,
            check_duration: HistogramVec::new(
                HistogramOpts::new(
                    "dynia_health_check_duration_seconds",
                    "Time an active health check took, by service and member.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["service", "member"],
            )?,
            received_bytes: IntCounter::new(
                "dynia_client_received_bytes_total",
                "Bytes read from clients (every listener).",
            )?,
            sent_bytes: IntCounter::new(
                "dynia_client_sent_bytes_total",
                "Bytes written to clients (every listener).",
            )?,
            access_log_dropped: IntCounter::new(
                "dynia_access_log_dropped_total",
                "Access-log lines dropped because the writer's queue was full.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_up.clone()))?;
        registry.register(Box::new(m.health_checks.clone()))?;
        registry.register(Box::new(m.upstream_failures.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.connections_active.clone()))?;
        registry.register(Box::new(m.connections_refused.clone()))?;
        registry.register(Box::new(m.connections_total.clone()))?;
        registry.register(Box::new(m.member_requests.clone()))?;
        registry.register(Box::new(m.member_errors.clone()))?;
        registry.register(Box::new(m.member_latency.clone()))?;
        registry.register(Box::new(m.check_duration.clone()))?;
        registry.register(Box::new(m.received_bytes.clone()))?;
        registry.register(Box::new(m.sent_bytes.clone()))?;
        registry.register(Box::new(m.access_log_dropped.clone()))?;
        Ok(m)
    }

    /// Handles for one service (including the pseudo-service for unknown hosts).
    pub fn service(&self, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            requests: self.requests.clone(),
            durations: self.duration.clone(),
            retries_vec: self.retries.clone(),
            service: service.into(),
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.duration.with_label_values(&[service]),
            retries: RetryReasons {
                connect: self.retries.with_label_values(&[service, "connect"]),
                reset: self.retries.with_label_values(&[service, "reset"]),
                resend: self.retries.with_label_values(&[service, "resend"]),
                hedge: self.retries.with_label_values(&[service, "hedge"]),
                lost: self.retries.with_label_values(&[service, "lost"]),
            },
            forgotten: AtomicBool::new(false),
        }
    }

    /// Handles for one (service, member) pair.
    pub fn member(&self, service: &str, member: &str) -> MemberMetrics {
        MemberMetrics {
            up: self.upstream_up.with_label_values(&[service, member]),
            checks_ok: self
                .health_checks
                .with_label_values(&[service, member, "success"]),
            checks_failed: self
                .health_checks
                .with_label_values(&[service, member, "failure"]),
            failures: self.upstream_failures.with_label_values(&[service, member]),
            requests: self.member_requests.with_label_values(&[service, member]),
            errors: self.member_errors.with_label_values(&[service, member]),
            latency: self.member_latency.with_label_values(&[service, member]),
            check_duration: self.check_duration.with_label_values(&[service, member]),
        }
    }

    /// Drops the series of a pair that left the configuration.
    pub fn forget_member(&self, service: &str, member: &str) {
        let _ = self.upstream_up.remove_label_values(&[service, member]);
        let _ = self
            .upstream_failures
            .remove_label_values(&[service, member]);
        let _ = self.member_requests.remove_label_values(&[service, member]);
        let _ = self.member_errors.remove_label_values(&[service, member]);
        let _ = self.member_latency.remove_label_values(&[service, member]);
        let _ = self.check_duration.remove_label_values(&[service, member]);
        for r in ["success", "failure"] {
            let _ = self
                .health_checks
                .remove_label_values(&[service, member, r]);
        }
    }
}

/// Per-service handles; status-code counters are created on first use.
pub struct ServiceMetrics {
    requests: IntCounterVec,
    durations: HistogramVec,
    retries_vec: IntCounterVec,
    service: Box<str>,
    by_code: Box<[OnceLock<IntCounter>]>,
    pub duration: Histogram,
    pub retries: RetryReasons,
    /// The service left the configuration: its series are gone, and requests
    /// still finishing on an old snapshot must not bring them back.
    forgotten: AtomicBool,
}

impl ServiceMetrics {
    /// Counts one answered request.
    pub fn count(&self, code: u16) {
        let code = code.clamp(100, 599);
        let idx = usize::from(code - 100);
        self.by_code[idx]
            .get_or_init(|| {
                if self.forgotten.load(Ordering::Relaxed) {
                    // A valid constant name: creating it cannot fail.
                    return IntCounter::new("dynia_detached", "not exported")
                        .expect("valid metric name");
                }
                self.requests
                    .with_label_values(&[&*self.service, itoa_code(code).as_str()])
            })
            .inc();
    }

    /// Removes this service's series (it left the configuration).
    pub fn forget(&self) {
        self.forgotten.store(true, Ordering::Relaxed);
        for (i, c) in self.by_code.iter().enumerate() {
            if c.get().is_some() {
                let code = itoa_code(100 + i as u16);
                let _ = self.requests.remove_label_values(&[&*self.service, &code]);
            }
        }
        let _ = self.durations.remove_label_values(&[&*self.service]);
        for reason in ["connect", "reset", "resend", "hedge", "lost"] {
            let _ = self
                .retries_vec
                .remove_label_values(&[&*self.service, reason]);
        }
    }
}

fn itoa_code(code: u16) -> String {
    code.to_string()
}

/// A member's counters at one instant: answered requests, errors, and the
/// response-time histogram as (upper bound in seconds, cumulative count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberCounts {
    pub requests: u64,
    pub errors: u64,
    pub latency: Vec<(f64, u64)>,
}

impl MemberMetrics {
    /// The counters now.
    pub fn counts(&self) -> MemberCounts {
        use prometheus::core::Metric;
        let m = self.latency.metric();
        let latency = m
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        MemberCounts {
            requests: self.requests.get(),
            errors: self.errors.get(),
            latency,
        }
    }
}

/// A service's retry counters, one per reason.
pub struct RetryReasons {
    pub connect: IntCounter,
    pub reset: IntCounter,
    pub resend: IntCounter,
    pub hedge: IntCounter,
    pub lost: IntCounter,
}

/// Per-(service, member) handles.
pub struct MemberMetrics {
    pub up: IntGauge,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
    pub failures: IntCounter,
    pub requests: IntCounter,
    pub errors: IntCounter,
    pub latency: Histogram,
    pub check_duration: Histogram,
}

/// Renders `registry` in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::with_capacity(16 * 1024);
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode(&registry.gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
