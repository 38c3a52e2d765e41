//! Active health checks with HAProxy's `httpchk` semantics: one task per
//! (service, member), `fall`/`rise` counting as a pure function ([`Judge`])
//! tested without sockets; checks of a suspected member run every
//! `fastinter` ([`next_wait`]). `docs/proxy.md`, "Health checks".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Health, POOL_IDLE_MAX};
use crate::config::HealthConfig;

/// Bytes of a check answer's body that are read (and discarded) at most.
const MAX_CHECK_BODY: usize = 64 * 1024;
/// A passive failure never makes checks run more often than this.
const MIN_EARLY_CHECK_GAP: Duration = Duration::from_millis(100);

/// The rise/fall counter of one (service, member).
#[derive(Debug, Clone)]
pub struct Judge {
    state: Health,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Judge {
    pub fn new(state: Health, rise: u32, fall: u32) -> Judge {
        assert!(rise >= 1 && fall >= 1, "rise and fall are at least 1");
        Judge {
            state,
            streak: 0,
            rise,
            fall,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one check result; returns the new state when it changed. A
    /// member not judged yet (Unknown, routable) is UP at its first success
    /// and DOWN after `fall` consecutive failures, like an UP one: a member
    /// still starting when its first check runs is not taken out alone.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        let next = match (self.state, ok) {
            (Health::Unknown, true) => Some(Health::Up),
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                None
            }
            (Health::Unknown | Health::Up, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then_some(Health::Down)
            }
            (Health::Down, true) => {
                self.streak += 1;
                (self.streak >= self.rise).then_some(Health::Up)
            }
        };
        if let Some(s) = next {
            self.state = s;
            self.streak = 0;
        }
        next
    }

    /// Whether results contrary to the state have started and not decided
    /// yet: then checks run every `fastinter`.
    pub fn deciding(&self) -> bool {
        self.streak > 0
    }
}

/// The wait before the next regular check (before jitter): `fastinter` while
/// `judge` is deciding, else `interval`.
pub fn next_wait(judge: &Judge, cfg: &HealthConfig) -> Duration {
    match judge.deciding() {
        true => cfg.fastinter_or_default(),
        false => cfg.interval,
    }
}

/// Outcome of one check, with the reason kept for the log line.
#[derive(Debug)]
pub enum CheckResult {
    Pass(u16),
    Fail(String),
    /// Not run: this node is out of file descriptors.
    NotRun(String),
}

/// Runs one `GET path` against `backend` within `timeout`.
pub async fn check_once(backend: &Backend, cfg: &HealthConfig, timeout: Duration) -> CheckResult {
    match tokio::time::timeout(timeout, request(backend, &cfg.path)).await {
        Err(_) => CheckResult::Fail(format!("timeout after {timeout:?}")),
        Ok(Err(CheckError::Local(e))) => CheckResult::NotRun(e),
        Ok(Err(CheckError::Member(e))) => CheckResult::Fail(e),
        Ok(Ok(code)) if cfg.expect_status.contains(&code) => CheckResult::Pass(code),
        Ok(Ok(code)) => CheckResult::Fail(format!("status {code}")),
    }
}

enum CheckError {
    Local(String),
    Member(String),
}

impl From<String> for CheckError {
    fn from(e: String) -> CheckError {
        CheckError::Member(e)
    }
}

async fn request(backend: &Backend, path: &str) -> Result<u16, CheckError> {
    let stream = TcpStream::connect(backend.addr).await.map_err(|e| {
        let text = format!("connect: {e}");
        match crate::backend::is_out_of_descriptors(&e) {
            true => CheckError::Local(text),
            false => CheckError::Member(text),
        }
    })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, backend.addr.to_string())
        .header(hyper::header::USER_AGENT, "dynia-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let code = resp.status().as_u16();
    // Read a bounded amount so the member sees a clean exchange.
    let mut body = resp.into_body();
    let mut read = 0usize;
    while read < MAX_CHECK_BODY {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    conn.abort();
    Ok(code)
}

/// Spawns the checker of `backend`; it stops when `cancel` fires.
pub fn spawn_checker(backend: Arc<Backend>, cfg: HealthConfig, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut judge = Judge::new(backend.health(), cfg.rise, cfg.fall);
        // First check soon, spread so a fleet of checkers does not fire at once.
        let first = jitter(cfg.interval.min(Duration::from_millis(500)), 1.0);
        let mut wait = first;
        loop {
            let mut suspected = false;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = backend.check_now.notified() => {
                    suspected = true;
                    tokio::time::sleep(MIN_EARLY_CHECK_GAP).await;
                }
            }
            if cancel.is_cancelled() {
                return;
            }
            backend.pool.purge(POOL_IDLE_MAX);
            let began = std::time::Instant::now();
            let timeout = check_timeout(&cfg, suspected || judge.deciding());
            let result = check_once(&backend, &cfg, timeout).await;
            if let CheckResult::NotRun(why) = &result {
                tracing::debug!(service = %backend.service, member = %backend.member, reason = %why, "health check not run");
                wait = jitter(cfg.interval, 0.1);
                continue;
            }
            let ok = matches!(result, CheckResult::Pass(_));
            if ok {
                backend.liveness.check_passed();
            }
            (backend.metrics.check_duration).observe(began.elapsed().as_secs_f64());
            if ok {
                backend.metrics.checks_ok.inc();
            } else {
                backend.metrics.checks_failed.inc();
            }
            let before = judge.state();
            if let Some(now) = judge.observe(ok) {
                backend.set_health(now);
                let reason = match &result {
                    CheckResult::Pass(code) => format!("status {code}"),
                    CheckResult::Fail(why) | CheckResult::NotRun(why) => why.clone(),
                };
                backend.note_change(&reason);
                if now == Health::Down {
                    tracing::warn!(
                        service = %backend.service,
                        member = %backend.member,
                        addr = %backend.addr,
                        from = before.as_str(),
                        to = now.as_str(),
                        reason = %reason,
                        "member health changed"
                    );
                } else {
                    tracing::info!(
                        service = %backend.service,
                        member = %backend.member,
                        addr = %backend.addr,
                        from = before.as_str(),
                        to = now.as_str(),
                        reason = %reason,
                        "member health changed"
                    );
                }
            } else if backend.health() != judge.state() {
                backend.set_health(judge.state());
            }
            // Fast checks start every `fastinter` (a check's own time counts).
            let next = next_wait(&judge, &cfg);
            wait = match judge.deciding() {
                true => next.saturating_sub(began.elapsed()),
                false => jitter(next, 0.1),
            };
        }
    });
}

/// A check's timeout: `timeout`, or at most `fastinter` while the member is
/// suspected or being decided (as HAProxy's `inter` becomes `fastinter` in
/// a transition), so `fall` fast checks take `fall` × `fastinter`.
pub fn check_timeout(cfg: &HealthConfig, fast: bool) -> Duration {
    match fast {
        true => cfg.timeout.min(cfg.fastinter_or_default()),
        false => cfg.timeout,
    }
}

/// `base` scaled by a random factor in `[1 - spread, 1 + spread]` (`[0, 1]` for spread 1).
fn jitter(base: Duration, spread: f64) -> Duration {
    let f = if spread >= 1.0 {
        rand::thread_rng().gen_range(0.0..=1.0)
    } else {
        rand::thread_rng().gen_range(1.0 - spread..=1.0 + spread)
    };
    base.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (start state, results) → state after each result.
    fn run(start: Health, results: &str) -> Vec<Health> {
        let mut j = Judge::new(start, 2, 3);
        results
            .chars()
            .map(|c| {
                j.observe(c == '+');
                j.state()
            })
            .collect()
    }

    #[test]
    fn unknown_needs_fall_failures_and_one_success() {
        use Health::{Down as D, Unknown as U, Up as P};
        let table: &[(&str, &[Health])] = &[
            ("+", &[P]),
            ("-", &[U]),
            ("--", &[U, U]),
            ("---", &[U, U, D]),
            ("--+", &[U, U, P]),
            ("-+--", &[U, P, P, P]),
            ("--+---", &[U, U, P, P, P, D]),
            ("---++", &[U, U, D, D, P]),
        ];
        for (results, want) in table {
            assert_eq!(&run(U, results), want, "{results}");
        }
    }

    #[test]
    fn deciding_while_a_contrary_streak_runs() {
        // (start, results, deciding after the last one)
        for (start, results, want) in [
            (Health::Unknown, "", false),
            (Health::Unknown, "-", true),
            (Health::Unknown, "--", true),
            (Health::Unknown, "---", false), // DOWN now
            (Health::Unknown, "-+", false),  // UP now
            (Health::Up, "+", false),
            (Health::Up, "-", true),
            (Health::Up, "--+", false),
            (Health::Down, "-", false),
            (Health::Down, "+", true),
            (Health::Down, "++", false), // UP now
        ] {
            let mut j = Judge::new(start, 2, 3);
            for c in results.chars() {
                j.observe(c == '+');
            }
            assert_eq!(j.deciding(), want, "{start:?} {results}");
        }
    }

    #[test]
    fn fast_checks_while_deciding() {
        let cfg = HealthConfig::default(); // interval 5 s: fastinter 500 ms
        let mut j = Judge::new(Health::Up, 2, 3);
        assert_eq!(next_wait(&j, &cfg), Duration::from_secs(5));
        j.observe(false);
        assert_eq!(next_wait(&j, &cfg), Duration::from_millis(500));
        j.observe(false);
        j.observe(false);
        assert_eq!(j.state(), Health::Down);
        assert_eq!(next_wait(&j, &cfg), Duration::from_secs(5));
        j.observe(true);
        assert_eq!(next_wait(&j, &cfg), Duration::from_millis(500));
    }

    #[test]
    fn fall_then_rise() {
        let mut j = Judge::new(Health::Up, 2, 3);
        assert_eq!(j.observe(false), None);
        assert_eq!(j.observe(false), None);
        assert_eq!(j.observe(false), Some(Health::Down));
        assert_eq!(j.observe(true), None);
        assert_eq!(j.observe(true), Some(Health::Up));
    }

    #[test]
    fn streak_resets_on_contrary_result() {
        let mut j = Judge::new(Health::Up, 2, 3);
        j.observe(false);
        j.observe(false);
        j.observe(true);
        assert_eq!(j.observe(false), None);
        assert_eq!(j.observe(false), None);
        assert_eq!(j.observe(false), Some(Health::Down));
        j.observe(true);
        j.observe(false);
        assert_eq!(j.observe(true), None);
        assert_eq!(j.observe(true), Some(Health::Up));
    }

    #[test]
    fn jitter_bounds() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(5), 0.1);
            assert!(d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500));
        }
    }
}
