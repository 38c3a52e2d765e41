//! Running wrk and reading its report.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What one wrk run reported.
#[derive(Debug, Clone, Default)]
pub struct WrkReport {
    pub requests: u64,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
    /// "Non-2xx or 3xx responses".
    pub bad_status: u64,
}

impl WrkReport {
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.bad_status
    }
}

/// Parses wrk 4's text output (run with `--latency`).
pub fn parse(out: &str) -> Result<WrkReport> {
    let mut r = WrkReport::default();
    let (mut have_rps, mut have_p50, mut have_p99) = (false, false, false);
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("parse Requests/sec")?;
            have_rps = true;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50 = parse_time(v.trim())?;
            have_p50 = true;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99 = parse_time(v.trim())?;
            have_p99 = true;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    r.socket_errors += n.parse::<u64>().context("parse socket errors")?;
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.bad_status = v.trim().parse().context("parse non-2xx count")?;
        } else if line.contains(" requests in ") {
            if let Some(n) = line.split_whitespace().next() {
                r.requests = n.parse().unwrap_or(0);
            }
        }
    }
    if !(have_rps && have_p50 && have_p99) {
        bail!("wrk output lacks Requests/sec or the latency distribution:\n{out}");
    }
    Ok(r)
}

/// wrk's time format: a number and one of us, ms, s, m, h.
fn parse_time(s: &str) -> Result<Duration> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("time without unit: {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.trim().parse().with_context(|| format!("time {s:?}"))?;
    let secs = match unit.trim() {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        other => bail!("unknown time unit {other:?} in {s:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:19080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   620.17us  108.23us   4.29ms   88.79%
    Req/Sec    80.80k     3.16k   85.38k    81.00%
  Latency Distribution
     50%  600.00us
     75%  647.00us
     90%  710.00us
     99%    1.01ms
  804111 requests in 10.00s, 96.62MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  80409.66
Transfer/sec:      9.66MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 804111);
        assert!((r.rps - 80409.66).abs() < 1e-6);
        assert_eq!(r.p50, Duration::from_micros(600));
        assert_eq!(r.p99, Duration::from_micros(1010));
        assert_eq!(r.socket_errors, 3);
        assert_eq!(r.bad_status, 12);
        assert_eq!(r.errors(), 15);
    }

    #[test]
    fn refuses_truncated_output() {
        assert!(parse("Running 1s test @ x\n").is_err());
    }
}
