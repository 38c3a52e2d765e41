//! The simulator's clock and timestamps as the API writes them: epoch
//! seconds (`RateLimit-Reset`), RFC 3339 in UTC (an action's `started_at`,
//! `completed_at`) and the HTTP `Date` header.
//!
//! Wall time is derived from tokio's clock ([`SimClock`]): on a paused
//! clock (`#[tokio::test(start_paused = true)]`) a 29 s `Retry-After` or an
//! hour-long rate window passes at once, and `Date` / `RateLimit-Reset`
//! stay consistent with each other, which is what a client computes waits
//! from.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Wall time as `base_wall` + tokio time elapsed since `base`.
#[derive(Clone, Copy, Debug)]
pub(super) struct SimClock {
    base: Instant,
    base_wall: SystemTime,
}

impl SimClock {
    pub(super) fn new() -> SimClock {
        SimClock {
            base: Instant::now(),
            base_wall: SystemTime::now(),
        }
    }

    /// The wall time at tokio instant `t`.
    pub(super) fn wall(&self, t: Instant) -> SystemTime {
        self.base_wall + t.saturating_duration_since(self.base)
    }

    pub(super) fn now_wall(&self) -> SystemTime {
        self.wall(Instant::now())
    }
}

/// Whole seconds of `d`, rounded up (a server never says "wait less").
pub(super) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub(super) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The civil date of an epoch day: (year, month, day).
fn civil(days: i64) -> (i64, i64, i64) {
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 in UTC, second precision ("2026-11-22T14:05:00Z").
pub(super) fn rfc3339(t: SystemTime) -> String {
    let secs = epoch_secs(t);
    let rem = secs % 86_400;
    let (y, m, d) = civil((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The HTTP `Date` header (IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT").
pub(super) fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = epoch_secs(t);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    pub(super) fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_356_300)),
            "2026-11-22T14:05:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}
