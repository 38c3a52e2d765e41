//! The API's rate limit as DigitalOcean documents it: *per token*, 5,000
//! requests an hour and 250 a minute, each request counting for one full
//! hour after it was made (no fixed window), `RateLimit-Reset` the epoch
//! second the *oldest* counted request expires; over either limit a `429`
//! (the minute limit's with `Retry-After`). Answers that are 429 do not
//! count. Source: the OpenAPI description's "Rate Limit" section and
//! `shared/headers.yml` (docs/digitalocean.md).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::clock::{ceil_secs, epoch_secs, SimClock};

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// The default limits (OpenAPI description, "Rate Limit").
pub const PER_HOUR: u32 = 5_000;
/// The default burst limit.
pub const PER_MINUTE: u32 = 250;

/// The per-token windows.
#[derive(Debug)]
pub(super) struct RateLimits {
    pub(super) per_hour: u32,
    pub(super) per_minute: u32,
    /// Request times of the last hour, per token (oldest first).
    seen: BTreeMap<String, VecDeque<Instant>>,
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) limit: u32,
    pub(super) remaining: u32,
    /// Epoch seconds at which the oldest counted request expires.
    pub(super) reset: u64,
    /// Refused: `Some(retry_after)` for the minute limit, `Some(None)` for the hour.
    pub(super) refused: Option<Option<u64>>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_hour: PER_HOUR,
            per_minute: PER_MINUTE,
            seen: BTreeMap::new(),
        }
    }
}

impl RateLimits {
    /// Counts a request of `token` at `now` unless it is over a limit.
    pub(super) fn check(&mut self, token: &str, now: Instant, clock: &SimClock) -> Verdict {
        let q = self.seen.entry(token.to_owned()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            q.pop_front();
        }
        let in_minute = q
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < MINUTE)
            .count() as u32;
        let expiry = |t: Instant| epoch_secs(clock.wall(t + HOUR)) + 1;
        let hour_full = q.len() as u32 >= self.per_hour;
        let minute_full = in_minute >= self.per_minute;
        let refused = if hour_full {
            Some(None)
        } else if minute_full {
            // The oldest request of the last minute leaves the minute window at:
            let oldest = q[q.len() - in_minute as usize];
            Some(Some(
                ceil_secs((oldest + MINUTE).duration_since(now)).max(1),
            ))
        } else {
            q.push_back(now);
            None
        };
        let reset = q
            .front()
            .map(|t| expiry(*t))
            .unwrap_or_else(|| epoch_secs(clock.wall(now + HOUR)));
        Verdict {
            limit: self.per_hour,
            remaining: self.per_hour.saturating_sub(q.len() as u32),
            reset,
            refused,
        }
    }

    /// Requests counted for `token` in the hour before `now`.
    pub(super) fn used(&self, token: &str, now: Instant) -> usize {
        self.seen.get(token).map_or(0, |q| {
            q.iter().filter(|t| now.duration_since(**t) < HOUR).count()
        })
    }
}
