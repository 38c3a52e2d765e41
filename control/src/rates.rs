//! Requests per second, error rate and p99 response time of each (service,
//! member) over the last minute, for `/status.json`, the `/status` page and
//! `dynia status`. A task samples the proxy's counters every [`EVERY`]; a
//! status compares the counters now with the oldest sample kept (at most
//! [`WINDOW`] old). p99 interpolates within the histogram's bucket as
//! Prometheus's `histogram_quantile` does. See `docs/observability.md`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dynia_proxy::metrics::MemberCounts;
use dynia_proxy::PoolView;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// How far back a rate looks, at most.
pub const WINDOW: Duration = Duration::from_secs(60);

type Sample = (Instant, Vec<((String, String), MemberCounts)>);

/// The samples of the last minute.
#[derive(Default)]
pub struct Rates(Mutex<VecDeque<Sample>>);

/// One member's figures over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberRates {
    pub requests_per_second: f64,
    /// Errors / requests (0 when there were none).
    pub error_rate: f64,
    /// Milliseconds; `None` without requests in the window.
    pub p99_ms: Option<f64>,
}

impl Rates {
    /// Records the counters of every member now.
    pub fn sample(&self, services: &[PoolView], now: Instant) {
        let counts = services
            .iter()
            .flat_map(|s| {
                s.members
                    .iter()
                    .map(|m| ((s.name.clone(), m.id.clone()), m.counts.clone()))
            })
            .collect();
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((now, counts));
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            q.pop_front();
        }
    }

    /// `member`'s figures from the oldest sample to `now_counts`.
    pub fn of(
        &self,
        service: &str,
        member: &str,
        now_counts: &MemberCounts,
    ) -> Option<MemberRates> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (at, counts) = q.front()?;
        let base = counts
            .iter()
            .find(|((s, m), _)| s == service && m == member)
            .map(|(_, c)| c)?;
        let secs = at.elapsed().as_secs_f64();
        if secs < 0.5 {
            return None;
        }
        Some(between(base, now_counts, secs))
    }
}

/// Starts the task sampling `proxy` every [`EVERY`] (it ends with the
/// runtime). Must be called inside a Tokio runtime.
pub fn spawn_sampler(proxy: &dynia_proxy::Proxy) -> std::sync::Arc<Rates> {
    let rates = std::sync::Arc::new(Rates::default());
    let (r, p) = (rates.clone(), proxy.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            r.sample(&p.status(), Instant::now());
        }
    });
    rates
}

/// Figures from `a` to `b`, `secs` apart.
pub fn between(a: &MemberCounts, b: &MemberCounts, secs: f64) -> MemberRates {
    let requests = b.requests.saturating_sub(a.requests);
    let errors = b.errors.saturating_sub(a.errors);
    let attempts = requests.max(errors);
    MemberRates {
        requests_per_second: requests as f64 / secs,
        error_rate: if attempts == 0 {
            0.0
        } else {
            errors as f64 / attempts as f64
        },
        p99_ms: quantile(0.99, a, b).map(|s| s * 1000.0),
    }
}

/// The `q` quantile of the latency observed between `a` and `b`, seconds.
fn quantile(q: f64, a: &MemberCounts, b: &MemberCounts) -> Option<f64> {
    let delta: Vec<(f64, u64)> = b
        .latency
        .iter()
        .map(|(le, n)| {
            let before = a.latency.iter().find(|(l, _)| l == le).map_or(0, |x| x.1);
            (*le, n.saturating_sub(before))
        })
        .collect();
    let total = b.requests.saturating_sub(a.requests).max(delta.last()?.1);
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for (le, n) in &delta {
        if *n as f64 >= rank {
            let inside = (*n - below) as f64;
            let frac = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        (lower, below) = (*le, *n);
    }
    // Beyond the last bucket: its bound is the best we know.
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64, buckets: &[(f64, u64)]) -> MemberCounts {
        MemberCounts {
            requests,
            errors,
            latency: buckets.to_vec(),
        }
    }

    #[test]
    fn rates_and_p99_over_a_window() {
        let a = counts(100, 1, &[(0.01, 90), (0.1, 100)]);
        // 600 more requests in 60 s: 500 under 10 ms, 100 between 10 and 100 ms.
        let b = counts(700, 7, &[(0.01, 590), (0.1, 700)]);
        let r = between(&a, &b, 60.0);
        assert_eq!(r.requests_per_second, 10.0);
        assert_eq!(r.error_rate, 0.01);
        // Rank 594 of 600: 94 of the 100 in (10 ms, 100 ms].
        let p99 = r.p99_ms.unwrap();
        assert!((p99 - (10.0 + 90.0 * 0.94)).abs() < 1e-6, "{p99}");
        assert_eq!(between(&b, &b, 60.0).p99_ms, None);
    }
}
