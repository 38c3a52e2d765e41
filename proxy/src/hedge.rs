//! Hedged connects: when to try a second member alongside a connect that is
//! slow, and the moving average of a member's connect times it is based on.
//! Pure, tested without sockets. `docs/proxy.md`, "Hedged connects".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a member's average connect time is taken to be before its first one.
pub const EWMA_START: Duration = Duration::from_millis(10);
/// A connect is slow once it has taken this many times the member's average.
pub const HEDGE_FACTOR: u32 = 4;
/// Never hedge sooner than this: a member's connect time varies by this much
/// under load, and an early hedge only doubles the connects.
pub const HEDGE_MIN: Duration = Duration::from_millis(50);
/// Weight of a new sample: 1/8, as TCP's smoothed round-trip time (RFC 6298).
const EWMA_SHIFT: u32 = 3;

/// After how long a pending connect gets a second one to another member
/// alongside: `HEDGE_FACTOR` × the member's average connect time, at least
/// `HEDGE_MIN`. `None` when no other member can be tried, or when the delay
/// reaches `connect_timeout` (the connect has failed by then anyway).
pub fn hedge_delay(
    ewma: Duration,
    connect_timeout: Duration,
    others_available: bool,
) -> Option<Duration> {
    if !others_available {
        return None;
    }
    let delay = ewma.saturating_mul(HEDGE_FACTOR).max(HEDGE_MIN);
    (delay < connect_timeout).then_some(delay)
}

/// Exponentially weighted moving average of a member's successful connect
/// times, in microseconds; one atomic, no lock.
#[derive(Debug)]
pub struct ConnectEwma(AtomicU64);

impl Default for ConnectEwma {
    fn default() -> Self {
        ConnectEwma(AtomicU64::new(micros(EWMA_START)))
    }
}

impl ConnectEwma {
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    /// Folds in one successful connect that took `took`.
    pub fn observe(&self, took: Duration) {
        let sample = micros(took);
        // A lost race between two updates only drops one sample's weight.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(next_ewma(old, sample))
            });
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `old + (sample - old) / 8`, in integers.
fn next_ewma(old: u64, sample: u64) -> u64 {
    if sample >= old {
        old + ((sample - old) >> EWMA_SHIFT)
    } else {
        old - ((old - sample) >> EWMA_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delay_table() {
        let two_s = Duration::from_secs(2);
        // (ewma, connect_timeout, others available, expected delay)
        let table = [
            (MS(10), two_s, true, Some(MS(50))), // 40 ms raised to the floor
            (Duration::from_micros(80), two_s, true, Some(MS(50))), // loopback
            (MS(20), two_s, true, Some(MS(80))), // 4 × average
            (MS(300), two_s, true, Some(MS(1200))), // a far member
            (MS(500), two_s, true, None),        // reaches the timeout
            (MS(900), two_s, true, None),        // beyond it
            (MS(10), two_s, false, None),        // nobody else to try
            (MS(10), MS(50), true, None),        // timeout at the floor
            (MS(10), MS(40), true, None),        // timeout under the floor
            (Duration::MAX, two_s, true, None),  // no overflow
        ];
        for (ewma, timeout, others, want) in table {
            assert_eq!(
                hedge_delay(ewma, timeout, others),
                want,
                "ewma {ewma:?} timeout {timeout:?} others {others}"
            );
        }
    }

    #[test]
    fn ewma_starts_at_start_value_and_follows_samples() {
        let e = ConnectEwma::default();
        assert_eq!(e.get(), EWMA_START);
        e.observe(MS(18));
        assert_eq!(e.get(), MS(11)); // 10 + 8/8
        for _ in 0..100 {
            e.observe(Duration::from_micros(100));
        }
        assert!(e.get() < Duration::from_micros(110), "{:?}", e.get());
        for _ in 0..100 {
            e.observe(MS(40));
        }
        assert!(e.get() > MS(39), "{:?}", e.get());
    }

    #[test]
    fn ewma_step_table() {
        // (old, sample, new) in microseconds
        for (old, sample, new) in [
            (10_000, 10_000, 10_000),
            (10_000, 18_000, 11_000),
            (10_000, 2_000, 9_000),
            (0, 7, 0), // a step under 1 µs is lost: fine at this scale
            (0, u64::MAX, u64::MAX >> 3),
            (u64::MAX, 0, u64::MAX - (u64::MAX >> 3)),
        ] {
            assert_eq!(next_ewma(old, sample), new, "{old} {sample}");
        }
    }
}
