//! The election's Prometheus metrics (`dynia_election_*`, `dynia_reserved_ip_*`),
//! registered on the caller's registry; what each means is listed in
//! `docs/election.md`, "Metrics".

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::advert::DropReason;
use crate::driver::Driver;
use crate::election::Role;
use crate::settings::TransportKind;
use crate::transport::VRRP3_DROP_REASONS;

/// Buckets of `dynia_election_advert_gap_seconds`: around the default
/// 100 ms interval up to well past any Master_Down_Interval.
const GAP_BUCKETS: [f64; 11] = [0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0, 5.0];
const STATES: [&str; 4] = ["init", "backup", "master", "fault"];

/// Election metrics.
#[derive(Clone)]
pub(crate) struct ElectionMetrics {
    state: IntGaugeVec,
    pub transitions: IntCounter,
    pub claims: IntCounterVec,
    pub received: IntCounter,
    pub dropped: IntCounterVec,
    pub sent: IntCounter,
    pub gap: Histogram,
    pub held: IntGauge,
    pub priority: IntGauge,
    /// `dynia_election_member_lost{member}`.
    pub lost: IntGaugeVec,
}

impl ElectionMetrics {
    pub fn new(
        registry: &Registry,
        transport: TransportKind,
    ) -> Result<ElectionMetrics, prometheus::Error> {
        let m = ElectionMetrics {
            state: IntGaugeVec::new(
                Opts::new("dynia_election_state", "1 for this node's current election state."),
                &["state"],
            )?,
            transitions: IntCounter::new(
                "dynia_election_transitions_total",
                "Election state changes of this node.",
            )?,
            claims: IntCounterVec::new(
                Opts::new("dynia_reserved_ip_claims_total", "Reserved IP claims, by result."),
                &["result"],
            )?,
            received: IntCounter::new(
                "dynia_election_adverts_received_total",
                "Adverts accepted from members.",
            )?,
            dropped: IntCounterVec::new(
                Opts::new("dynia_election_adverts_dropped_total", "Datagrams dropped, by reason."),
                &["reason"],
            )?,
            sent: IntCounter::new("dynia_election_adverts_sent_total", "Adverts and heartbeats sent.")?,
            gap: Histogram::with_opts(
                HistogramOpts::new(
                    "dynia_election_advert_gap_seconds",
                    "Time between consecutive adverts heard from the same master (how close a backup came to its Master_Down_Interval).",
                )
                .buckets(GAP_BUCKETS.to_vec()),
            )?,
            held: IntGauge::new(
                "dynia_reserved_ip_held",
                "1 when this node's driver believes it holds the Reserved IP, else 0.",
            )?,
            priority: IntGauge::new(
                "dynia_election_priority",
                "The priority this node takes part with now: its member priority, 0 while tracking says it cannot serve or after it resigned.",
            )?,
            lost: IntGaugeVec::new(
                Opts::new(
                    "dynia_election_member_lost",
                    "1 while this node has not heard the member within its down interval (no request goes to it), else 0.",
                ),
                &["member"],
            )?,
        };
        m.preregister(transport);
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.claims.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.gap.clone()))?;
        registry.register(Box::new(m.held.clone()))?;
        registry.register(Box::new(m.priority.clone()))?;
        registry.register(Box::new(m.lost.clone()))?;
        Ok(m)
    }

    /// Every label value exists from the start (a rate over a series that
    /// appears late misses its first increments).
    fn preregister(&self, transport: TransportKind) {
        self.set_role(Role::Init);
        for r in ["success", "failure"] {
            self.claims.with_label_values(&[r]);
        }
        for r in DropReason::ALL {
            self.dropped.with_label_values(&[r.as_str()]);
        }
        if transport == TransportKind::Vrrp3 {
            for r in VRRP3_DROP_REASONS {
                self.dropped.with_label_values(&[r]);
            }
        }
    }

    pub fn set_role(&self, r: Role) {
        for s in STATES {
            self.state
                .with_label_values(&[s])
                .set(i64::from(s == r.as_str()));
        }
    }
}

/// The driver's own metrics beside the election's: DigitalOcean's
/// `dynia_do_api_calls_total{endpoint,status}` (docs/digitalocean.md, "API budget").
pub(crate) fn register_driver(
    registry: &Registry,
    driver: &Driver,
) -> Result<(), prometheus::Error> {
    match driver {
        Driver::DigitalOcean(d) => d.register_metrics(registry),
        _ => Ok(()),
    }
}
