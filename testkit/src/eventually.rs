//! Bounded waiting for an event: poll a condition until it holds or a time
//! limit passes. The one poll-until helper of tests, benches and `dynia demo`
//! (a sync form for threads and namespaces, an async form for tokio tests).
//! Bounded in time and in polls; see docs/testing.md.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two looks at the condition, unless told otherwise.
pub const POLL: Duration = Duration::from_millis(10);

/// The condition did not hold within `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {limit:?}")]
pub struct TimedOut {
    pub limit: Duration,
}

/// Polls `cond` every [`POLL`] until it holds: how long that took, or
/// [`TimedOut`] once `limit` has passed (the last look is at the limit).
pub fn eventually(limit: Duration, cond: impl FnMut() -> bool) -> Result<Duration, TimedOut> {
    eventually_every(limit, POLL, cond)
}

/// [`eventually`] with its own pause between looks.
pub fn eventually_every(
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, TimedOut> {
    let start = Instant::now();
    for _ in 0..max_polls(limit, every) {
        if cond() {
            return Ok(start.elapsed());
        }
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(TimedOut { limit });
        }
        std::thread::sleep(every.min(left));
    }
    Err(TimedOut { limit })
}

/// The async form of [`eventually`], for conditions that await (requests to
/// a daemon under test); sleeps on the tokio timer between looks.
pub async fn eventually_async<F, Fut>(limit: Duration, mut cond: F) -> Result<Duration, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    for _ in 0..max_polls(limit, POLL) {
        if cond().await {
            return Ok(start.elapsed());
        }
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(TimedOut { limit });
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
    Err(TimedOut { limit })
}

/// Most looks a wait of `limit` takes: one per pause, one at the start and
/// one at the limit (a slow condition only makes it fewer).
fn max_polls(limit: Duration, every: Duration) -> u128 {
    limit.as_millis() / every.as_millis().max(1) + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        let took = eventually(Duration::from_secs(5), || {
            n += 1;
            n == 3
        });
        assert!(took.unwrap() < Duration::from_secs(5));
        assert_eq!(n, 3);
    }

    #[test]
    fn times_out_within_the_limit_after_a_bounded_number_of_looks() {
        let limit = Duration::from_millis(50);
        let start = Instant::now();
        let mut n = 0u32;
        let r = eventually(limit, || {
            n += 1;
            false
        });
        assert_eq!(r, Err(TimedOut { limit }));
        assert!(start.elapsed() >= limit);
        assert!(start.elapsed() < limit + Duration::from_secs(1));
        assert!(n <= 7, "{n} looks");
    }

    #[tokio::test]
    async fn the_async_form_waits_on_the_tokio_timer() {
        let start = Instant::now();
        let r = eventually_async(Duration::from_millis(40), || async {
            start.elapsed() > Duration::from_millis(15)
        })
        .await;
        assert!(r.unwrap() >= Duration::from_millis(15));
        let limit = Duration::from_millis(30);
        let r = eventually_async(limit, || async { false }).await;
        assert_eq!(r, Err(TimedOut { limit }));
    }
}
