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
}

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
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
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
                    "Requests retried on another member.",
                ),
                &["service"],
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
            retries: self.retries.with_label_values(&[service]),
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
        }
    }

    /// Drops the series of a pair that left the configuration.
    pub fn forget_member(&self, service: &str, member: &str) {
        let _ = self.upstream_up.remove_label_values(&[service, member]);
        let _ = self
            .upstream_failures
            .remove_label_values(&[service, member]);
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
    pub retries: IntCounter,
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
        let _ = self.retries_vec.remove_label_values(&[&*self.service]);
    }
}

fn itoa_code(code: u16) -> String {
    code.to_string()
}

/// Per-(service, member) handles.
pub struct MemberMetrics {
    pub up: IntGauge,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
    pub failures: IntCounter,
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
