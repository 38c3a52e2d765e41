//! A paced client, as a user's traffic looks during a node loss: one `GET /`
//! every `every` (open loop: a slow answer never delays the next request),
//! each on a fresh connection with a whole-request timeout, from a network
//! namespace; and the figures of a loss as that client lived through it
//! ([`LossFigures`]). Used by `tests/netns_nodeloss.rs` and the failover
//! benchmark alike; bounded in requests and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::in_netns;

/// Longest a load runs, whatever its caller does.
const MAX_RUN: Duration = Duration::from_secs(600);

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct PacedSample {
    pub start: Instant,
    pub latency: Duration,
    /// A `200` within the timeout.
    pub ok: bool,
    /// The body of a 200, trimmed (the demo app's member id); else the error.
    pub detail: String,
}

impl PacedSample {
    pub fn end(&self) -> Instant {
        self.start + self.latency
    }

    /// `+120 ms (1001 ms): timeout: connect`: when it was sent after `t0`,
    /// how long it took, and what came back.
    pub fn describe(&self, t0: Instant) -> String {
        format!(
            "+{:.0} ms ({:.0} ms): {}",
            self.start.saturating_duration_since(t0).as_secs_f64() * 1000.0,
            self.latency.as_secs_f64() * 1000.0,
            self.detail
        )
    }
}

/// The requests sent from `t0` on that failed, in order.
pub fn failed_from(samples: &[PacedSample], t0: Instant) -> impl Iterator<Item = &PacedSample> {
    samples.iter().filter(move |s| s.start >= t0 && !s.ok)
}

/// A running paced client; stops on [`finish`](Self::finish) or drop.
pub struct PacedLoad {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<PacedSample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacedLoad {
    /// Starts `GET /` on `addr` from namespace `ns`, one every `every`,
    /// each given `timeout` in all (connect, send, answer).
    pub fn start(ns: &str, addr: SocketAddr, every: Duration, timeout: Duration) -> PacedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::with_capacity(4096)));
        let (st, sa, ns) = (stop.clone(), samples.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || pace(&st, &sa, addr, every, timeout));
        });
        PacedLoad {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Every finished request so far, by start time.
    pub fn samples(&self) -> Vec<PacedSample> {
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by_key(|s| s.start);
        v
    }

    /// The last `n` finished requests all succeeded.
    pub fn stable(&self, n: usize) -> bool {
        let s = self.samples();
        s.len() >= n && s[s.len() - n..].iter().all(|x| x.ok)
    }

    /// The first success among requests started at or after `t0`.
    pub fn first_ok_after(&self, t0: Instant) -> Option<PacedSample> {
        self.samples().into_iter().find(|x| x.start >= t0 && x.ok)
    }

    /// Stops sending, waits for the requests in flight, returns every sample.
    pub fn finish(mut self) -> Vec<PacedSample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for PacedLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sending loop (runs inside the namespace; request threads inherit it).
fn pace(
    stop: &AtomicBool,
    out: &Arc<Mutex<Vec<PacedSample>>>,
    addr: SocketAddr,
    every: Duration,
    timeout: Duration,
) {
    let begun = Instant::now();
    let max = (MAX_RUN.as_nanos() / every.as_nanos().max(1)) as u32;
    let mut inflight: Vec<std::thread::JoinHandle<()>> = Vec::new();
    for k in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let out = out.clone();
        inflight.retain(|h| !h.is_finished());
        inflight.push(std::thread::spawn(move || {
            let start = Instant::now();
            let answer = get_once(addr, timeout);
            let latency = start.elapsed();
            let (ok, detail) = match answer {
                Ok(body) => (true, body),
                Err(e) => (false, e),
            };
            out.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(PacedSample {
                    start,
                    latency,
                    ok,
                    detail,
                });
        }));
        let next = begun + every * (k + 1);
        if let Some(rest) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
    }
    for h in inflight {
        let _ = h.join();
    }
}

fn left(deadline: Instant) -> Result<Duration, String> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err("timeout".into()),
    }
}

/// `GET /` on a fresh connection, all within `timeout`: the trimmed body of
/// a 200, or what went wrong.
fn get_once(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        WouldBlock | TimedOut => "timeout: connect".to_string(),
        _ => format!("connect: {e}"),
    })?;
    s.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: paced\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while buf.len() < 1 << 20 {
        s.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => {
                return Err("timeout: no answer".into())
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no answer")?;
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(body.trim().to_string()),
        Some(st) => Err(format!("status {st}")),
        None => Err("no status".into()),
    }
}

/// A node loss as the paced client lived through it; times from the loss.
/// Counts are over every request sent after the loss (the caller decides how
/// long the client runs); latencies over `window` after the first answer.
#[derive(Clone, Debug)]
pub struct LossFigures {
    /// Requests sent after the loss.
    pub requests: usize,
    /// To the end of the first 200 among requests started after the loss.
    pub first_answer: Option<Duration>,
    /// To the start of the last request that failed (every later one
    /// succeeded); `None` when none failed.
    pub last_failure: Option<Duration>,
    /// Requests started after the loss that failed.
    pub failed: usize,
    /// Of those, the ones started after the first answer's request.
    pub failed_after_first: usize,
    /// Worst latency of the requests started in `window` after the first
    /// answer's request (a failed one counts with the time it took).
    pub worst_after_first: Duration,
    /// Median latency of those requests.
    pub median_after_first: Duration,
}

impl LossFigures {
    /// Figures of `samples` for a loss at `t0`: counts over every request
    /// sent from `t0` on, latencies over those sent in `window` from the
    /// first answer's request.
    pub fn of(samples: &[PacedSample], t0: Instant, window: Duration) -> LossFigures {
        let mut after: Vec<&PacedSample> = samples.iter().filter(|s| s.start >= t0).collect();
        after.sort_by_key(|s| s.start);
        let first = after.iter().find(|s| s.ok).copied();
        let failed: Vec<&&PacedSample> = after.iter().filter(|s| !s.ok).collect();
        let mut later: Vec<Duration> = first
            .map(|f| {
                after
                    .iter()
                    .filter(|s| s.start >= f.start && s.start <= f.start + window)
                    .map(|s| s.latency)
                    .collect()
            })
            .unwrap_or_default();
        later.sort();
        LossFigures {
            requests: after.len(),
            first_answer: first.map(|f| f.end() - t0),
            last_failure: failed.last().map(|s| s.start - t0),
            failed: failed.len(),
            failed_after_first: first
                .map_or(0, |f| failed.iter().filter(|s| s.start > f.start).count()),
            worst_after_first: later.last().copied().unwrap_or_default(),
            median_after_first: later.get(later.len() / 2).copied().unwrap_or_default(),
        }
    }

    /// One line: every figure, in milliseconds.
    pub fn describe(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1000.0)
            })
        };
        format!(
            "first answer {}, last failure {}, failed {} ({} after the first answer), worst latency after it {} (median {}), {} requests",
            ms(self.first_answer),
            ms(self.last_failure),
            self.failed,
            self.failed_after_first,
            ms(Some(self.worst_after_first)),
            ms(Some(self.median_after_first)),
            self.requests
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t0: Instant, at_ms: u64, lat_ms: u64, ok: bool) -> PacedSample {
        PacedSample {
            start: t0 + Duration::from_millis(at_ms),
            latency: Duration::from_millis(lat_ms),
            ok,
            detail: String::new(),
        }
    }

    #[test]
    fn figures_of_a_loss() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let v = vec![
            s(t0 - Duration::from_millis(500), 0, 900, false), // before the loss: not counted
            s(t0, 0, 1000, false),
            s(t0, 20, 1000, false),
            s(t0, 400, 5, true), // first answer at 405 ms
            s(t0, 420, 1000, false),
            s(t0, 440, 2, true),
            s(t0, 20_000, 1500, false), // counted; its latency is past the window
        ];
        let f = LossFigures::of(&v, t0, Duration::from_secs(10));
        assert_eq!(f.first_answer, Some(Duration::from_millis(405)));
        assert_eq!(f.failed, 4);
        assert_eq!(f.failed_after_first, 2);
        assert_eq!(f.last_failure, Some(Duration::from_millis(20_000)));
        assert_eq!(f.worst_after_first, Duration::from_millis(1000));
        assert_eq!(f.requests, 6);
    }

    #[test]
    fn nothing_answered() {
        let t0 = Instant::now();
        let f = LossFigures::of(&[s(t0, 0, 1000, false)], t0, Duration::from_secs(10));
        assert_eq!(f.first_answer, None);
        assert_eq!(f.failed_after_first, 0);
        assert_eq!(f.failed, 1);
    }
}
