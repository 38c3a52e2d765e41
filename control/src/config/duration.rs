//! Durations as written in dynia's TOML files: a whole number with a unit,
//! `"200ms"`, `"5s"`, `"1m"` or `"1h"`.
//!
//! This module owns the one text form of a duration, both ways, so that every
//! timeout and interval in the node file and the cluster document reads and
//! writes the same way. A bare number is refused on purpose: `timeout = 5`
//! could mean seconds or milliseconds, and guessing wrong is an outage.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The accepted forms, quoted in every parse error.
pub const ACCEPTED_FORMS: &str =
    "a whole number with a unit ms, s, m or h, as a string: \"200ms\", \"5s\", \"1m\", \"1h\"";

/// A duration with millisecond resolution, written `"200ms"`, `"5s"`, `"1m"` or `"1h"`.
///
/// It displays (and serializes) in the largest unit that represents it
/// exactly, so `"60s"` is written back as `"1m"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    millis: u64,
}

impl Duration {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }

    /// A duration of `secs` seconds (saturating at the largest representable value).
    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            millis: secs.saturating_mul(1000),
        }
    }

    /// The whole number of milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// The same duration as a [`std::time::Duration`].
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

impl From<std::time::Duration> for Duration {
    /// Whole milliseconds (sub-millisecond parts are dropped; saturating).
    fn from(d: std::time::Duration) -> Self {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.as_std()
    }
}

/// Why a duration string was refused; the message names the accepted forms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; use {ACCEPTED_FORMS}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            input: s.to_owned(),
            reason,
        };
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(digits_end);
        if number.is_empty() {
            return Err(fail("it does not start with a whole number"));
        }
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(fail("the unit is missing")),
            _ => return Err(fail("the unit is unknown")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| fail("the number is too large"))?;
        let millis = n
            .checked_mul(factor)
            .ok_or_else(|| fail("the number is too large"))?;
        Ok(Duration { millis })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis;
        if ms != 0 && divides(ms, 3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && divides(ms, 60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if divides(ms, 1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Whether `d` divides `n` (`u64::is_multiple_of` is newer than the
/// workspace's rust-version, 1.85).
#[allow(clippy::manual_is_multiple_of)]
pub(crate) const fn divides(n: u64, d: u64) -> bool {
    d != 0 && n % d == 0
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: ")?;
                f.write_str(ACCEPTED_FORMS)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!("200ms".parse(), Ok(Duration::from_millis(200)));
        assert_eq!("5s".parse(), Ok(Duration::from_secs(5)));
        assert_eq!("1m".parse(), Ok(Duration::from_secs(60)));
        assert_eq!("1h".parse(), Ok(Duration::from_secs(3600)));
        assert_eq!("0s".parse(), Ok(Duration::from_millis(0)));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        for bad in [
            "", "5", "s", "5 s", "5sec", "1.5s", "-1s", "5S", " 5s", "1d", "5s ",
        ] {
            let err = bad.parse::<Duration>().unwrap_err().to_string();
            assert!(
                err.contains("\"200ms\", \"5s\", \"1m\", \"1h\""),
                "{bad}: {err}"
            );
        }
        let err = "99999999999999999999h".parse::<Duration>().unwrap_err();
        assert!(err.to_string().contains("too large"));
        let err = "9999999999999999h".parse::<Duration>().unwrap_err();
        assert!(err.to_string().contains("too large"));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        for (ms, text) in [
            (0, "0s"),
            (200, "200ms"),
            (1500, "1500ms"),
            (5000, "5s"),
            (60_000, "1m"),
            (90_000, "90s"),
            (7_200_000, "2h"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse(), Ok(d));
        }
    }

    #[test]
    fn serde_both_ways() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            d: Duration,
        }
        let t: T = toml::from_str("d = \"200ms\"").unwrap();
        assert_eq!(t.d.as_std(), std::time::Duration::from_millis(200));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "d = \"200ms\"");
        let err = toml::from_str::<T>("d = 5").unwrap_err().to_string();
        assert!(err.contains("\"5s\""), "{err}");
    }
}
