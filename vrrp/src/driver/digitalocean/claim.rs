//! The claim: assign the Reserved IP here and see it land, bounded by total
//! time ([`RetryPolicy::max_total`]) rather than attempts.
//!
//! * a `422` of any wording reads the IP (as flipop does): it points here →
//!   success; it is locked (an action runs, seconds long) → wait the lock out
//!   by reading the IP, then assign again; otherwise the refusal is final;
//! * the action is polled; a `404` (not queryable yet) or a status other than
//!   `in-progress` / `completed` / `errored` falls back to reading the IP;
//! * `Retry-After` / `RateLimit-Reset` are honoured up to the bound (on 429
//!   and 5xx); other failures back off, jittered.

use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::api::{parse_json, Endpoint, Failure, Last};
use super::{DigitalOcean, IpState, HINT_REFUSED};
use crate::driver::{ClaimOutcome, DriverError, Holder};

/// The state of one claim.
struct Run {
    /// The droplet the IP is assigned to.
    droplet_id: u64,
    /// Whether that droplet is this one (a claim) or another (a hand-over).
    mine: bool,
    deadline: Instant,
    /// Failed requests so far (bounded by `max_attempts`).
    failed: u32,
    posts: u32,
    last: Last,
    next: Pause,
}

/// What to wait before the next assign.
enum Pause {
    /// Nothing (first try, or a lock was just waited out).
    None,
    /// The server asked for this.
    Server(Duration),
    /// A failure: back off.
    Backoff,
}

/// How one attempt ended.
enum Step {
    Done(ClaimOutcome),
    Fatal(DriverError),
    Again,
}

/// How polling an action ended.
enum ActionEnd {
    Completed,
    Errored,
    /// Not known from the action (404, unknown status, bounds): read the IP.
    Unsure(String),
}

impl Run {
    /// Whether the IP pointing at `holder` means the assign landed.
    fn landed(&self, holder: Holder) -> bool {
        match holder {
            Holder::Me => self.mine,
            Holder::Other { droplet_id, .. } => !self.mine && droplet_id == self.droplet_id,
            _ => false,
        }
    }

    fn failed(&mut self, f: Failure) {
        self.failed = self.failed.saturating_add(1);
        self.next = match self.last.note(f) {
            Some(w) => Pause::Server(w),
            None => Pause::Backoff,
        };
    }
}

impl DigitalOcean {
    /// Make the Reserved IP point at this droplet. Idempotent; bounded by
    /// [`super::RetryPolicy::max_total`] (waits included) and by
    /// [`super::RetryPolicy::max_attempts`] failed requests.
    pub async fn claim(&self) -> Result<ClaimOutcome, DriverError> {
        let droplet_id = self.droplet_id().await?;
        self.assign_to(droplet_id, true).await
    }

    /// Make the Reserved IP point at another droplet (`droplet_id`, the
    /// master: a late claim landed here after this node stepped down), with
    /// the claim's bounds and rules.
    pub async fn hand_to(&self, droplet_id: u64) -> Result<ClaimOutcome, DriverError> {
        // "Me" in the answers needs our own id.
        let me = self.droplet_id().await?;
        self.assign_to(droplet_id, droplet_id == me).await
    }

    async fn assign_to(&self, droplet_id: u64, mine: bool) -> Result<ClaimOutcome, DriverError> {
        let ip = self.inner.address;
        let started = Instant::now();
        let mut run = Run {
            droplet_id,
            mine,
            deadline: started + self.inner.retry.max_total,
            failed: 0,
            posts: 0,
            last: Last::default(),
            next: Pause::None,
        };
        while self.pause(&mut run).await {
            match self.attempt(&mut run).await {
                Step::Again => {}
                Step::Done(out) => {
                    let action_id = match out {
                        ClaimOutcome::Assigned { action_id } => action_id,
                        _ => 0,
                    };
                    tracing::info!(action_id, droplet_id, reserved_ip = %ip, elapsed_ms = started.elapsed().as_millis() as u64, posts = run.posts, outcome = ?out, "reserved ip assigned");
                    return Ok(out);
                }
                Step::Fatal(e) => {
                    tracing::error!(droplet_id, reserved_ip = %ip, error = %e, "reserved ip claim refused");
                    return Err(e);
                }
            }
        }
        let what = format!(
            "gave up claiming for droplet {droplet_id} after {} attempt(s) in {} ms",
            run.posts,
            started.elapsed().as_millis()
        );
        let e = run
            .last
            .into_error(format!("POST /v2/reserved_ips/{ip}/actions"), what);
        tracing::error!(droplet_id, reserved_ip = %ip, error = %e, "reserved ip claim failed");
        Err(e)
    }

    /// Waits before the next attempt; false when the bounds forbid one.
    async fn pause(&self, run: &mut Run) -> bool {
        let policy = &self.inner.retry;
        if run.failed >= policy.max_attempts {
            return false;
        }
        let wait = match std::mem::replace(&mut run.next, Pause::Backoff) {
            Pause::None => Some(Duration::ZERO),
            Pause::Backoff => Some(policy.backoff(run.failed)),
            Pause::Server(w) => policy.server_wait(w),
        };
        let fits = wait.filter(|w| Instant::now() + *w < run.deadline);
        let Some(wait) = fits else {
            let asked = wait.map_or("longer than max_server_wait".into(), |w| {
                format!("{} ms", w.as_millis())
            });
            run.last.reason = format!(
                "{} (the next wait, {asked}, would pass the {} ms budget)",
                run.last.reason,
                policy.max_total.as_millis()
            );
            return false;
        };
        if !wait.is_zero() {
            tracing::warn!(droplet_id = run.droplet_id, reserved_ip = %self.inner.address, status = run.last.status.unwrap_or(0), wait_ms = wait.as_millis() as u64, reason = %run.last.reason, "reserved ip claim retrying");
            tokio::time::sleep(wait).await;
        }
        true
    }

    /// One assign and what follows it.
    async fn attempt(&self, run: &mut Run) -> Step {
        run.posts += 1;
        match self.post_assign(run.droplet_id).await {
            Ok(Ok(action_id)) => self.follow_action(run, action_id).await,
            Ok(Err(message)) => self.refused(run, message).await,
            Err(Failure::Fatal(e)) => Step::Fatal(e),
            Err(f) => {
                run.failed(f);
                Step::Again
            }
        }
    }

    /// `POST …/actions`: `Ok(Ok(id))` an action, `Ok(Err(message))` a 422.
    async fn post_assign(&self, droplet_id: u64) -> Result<Result<u64, String>, Failure> {
        let path = format!("/v2/reserved_ips/{}/actions", self.inner.address);
        let body = serde_json::json!({"type": "assign", "droplet_id": droplet_id}).to_string();
        let endpoint = format!("POST {path}");
        let a = self
            .call(Endpoint::PostAction, Method::POST, &path, Some(body))
            .await?;
        if a.status.as_u16() == 422 {
            return Ok(Err(self.error_message(&a.body)));
        }
        if !a.status.is_success() {
            return Err(self.classify(&endpoint, &a));
        }
        let v = parse_json(&endpoint, &a.body)?;
        let id = v
            .pointer("/action/id")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                super::api::malformed(&endpoint, a.status, "no action.id in the answer")
            })?;
        // Some answers are already final; an errored one is retried.
        match v.pointer("/action/status").and_then(Value::as_str) {
            Some("errored") => Err(Failure::Retry {
                status: Some(a.status.as_u16()),
                reason: format!("action {id} errored at once"),
                wait: None,
                network: false,
            }),
            _ => Ok(Ok(id)),
        }
    }

    /// A 422, whatever its words: the IP itself says what it means.
    async fn refused(&self, run: &mut Run, message: String) -> Step {
        let state = match self.read_ip().await {
            Ok(s) => s,
            Err(Failure::Fatal(e)) => return Step::Fatal(e),
            Err(f) => {
                run.failed(f);
                return Step::Again;
            }
        };
        let pending = message.to_ascii_lowercase().contains("pending");
        match state {
            IpState {
                holder,
                locked: false,
            } if run.landed(holder) => Step::Done(ClaimOutcome::AlreadyHeld),
            IpState { locked: true, .. } => self.after_lock(run, None).await,
            _ if pending => {
                // The droplet (not the IP) has an action in flight.
                run.last.set(Some(422), format!("422 {message:?}"));
                run.next = Pause::Server(self.inner.poll.lock_interval);
                Step::Again
            }
            IpState { holder, .. } => Step::Fatal(DriverError::Provider {
                endpoint: format!("POST /v2/reserved_ips/{}/actions", self.inner.address),
                status: Some(422),
                detail: format!("422 Unprocessable Entity: {message:?} (the Reserved IP points at {holder}, not locked)"),
                hint: HINT_REFUSED,
            }),
        }
    }

    /// Our action's fate, from the action or else from the IP.
    async fn follow_action(&self, run: &mut Run, action_id: u64) -> Step {
        let why = match self.wait_action(action_id, run.deadline).await {
            ActionEnd::Completed => return Step::Done(ClaimOutcome::Assigned { action_id }),
            ActionEnd::Errored => {
                run.failed(Failure::Retry {
                    status: Some(200),
                    reason: format!("action {action_id} ended errored"),
                    wait: None,
                    network: false,
                });
                return Step::Again;
            }
            ActionEnd::Unsure(why) => why,
        };
        tracing::debug!(action_id, reason = %why, "reserved ip action status unknown; reading the ip");
        match self.read_ip().await {
            Ok(IpState {
                holder,
                locked: false,
            }) if run.landed(holder) => Step::Done(ClaimOutcome::Assigned { action_id }),
            Ok(IpState { locked: true, .. }) => self.after_lock(run, Some(action_id)).await,
            Ok(s) => {
                run.last.set(
                    None,
                    format!("action {action_id}: {why}; the IP points at {}", s.holder),
                );
                run.failed = run.failed.saturating_add(1);
                Step::Again
            }
            Err(Failure::Fatal(e)) => Step::Fatal(e),
            Err(f) => {
                run.failed(f);
                Step::Again
            }
        }
    }

    /// Waits the lock out; done when the IP then points here.
    async fn after_lock(&self, run: &mut Run, action_id: Option<u64>) -> Step {
        match self.wait_unlocked(run).await {
            Some(h) if run.landed(h) => Step::Done(match action_id {
                Some(action_id) => ClaimOutcome::Assigned { action_id },
                None => ClaimOutcome::AlreadyHeld,
            }),
            Some(_) => {
                run.next = Pause::None;
                Step::Again
            }
            None => Step::Again,
        }
    }

    /// Reads the IP until it is unlocked (its holder then) or the claim's
    /// bound is near (`None`, with `run.last` saying why).
    async fn wait_unlocked(&self, run: &mut Run) -> Option<Holder> {
        let interval = self.inner.poll.lock_interval;
        let since = Instant::now();
        loop {
            if Instant::now() + interval >= run.deadline {
                run.last.set(
                    Some(422),
                    format!(
                        "the Reserved IP stayed locked for {} ms",
                        since.elapsed().as_millis()
                    ),
                );
                run.failed = u32::MAX;
                return None;
            }
            tokio::time::sleep(interval).await;
            match self.read_ip().await {
                Ok(IpState {
                    locked: false,
                    holder,
                }) => {
                    tracing::info!(droplet_id = run.droplet_id, waited_ms = since.elapsed().as_millis() as u64, holder = %holder, "reserved ip lock cleared");
                    return Some(holder);
                }
                Ok(_) => {}
                Err(Failure::Retry { wait: Some(w), .. }) if Instant::now() + w < run.deadline => {
                    tokio::time::sleep(w).await
                }
                Err(f) => {
                    run.failed(f);
                    return None;
                }
            }
        }
    }

    /// Polls the action until it is final or the poll bounds / `deadline` run out.
    async fn wait_action(&self, action_id: u64, deadline: Instant) -> ActionEnd {
        let poll = &self.inner.poll;
        let until = deadline.min(Instant::now() + poll.max_total);
        let path = format!(
            "/v2/reserved_ips/{}/actions/{action_id}",
            self.inner.address
        );
        let endpoint = format!("GET {path}");
        let mut wait = poll.interval;
        for n in 1..=poll.max_polls {
            if Instant::now() + wait >= until {
                return ActionEnd::Unsure(format!("still in-progress after {} poll(s)", n - 1));
            }
            tokio::time::sleep(wait).await;
            wait = poll.interval;
            let answer = match self
                .call(Endpoint::GetAction, Method::GET, &path, None)
                .await
            {
                Ok(a) if a.status.as_u16() == 404 => {
                    return ActionEnd::Unsure("the action is not queryable (404)".into())
                }
                Ok(a) if a.status.is_success() => a,
                Ok(a) => match self.classify(&endpoint, &a) {
                    Failure::Retry { wait: w, .. } => {
                        wait = w.unwrap_or(poll.interval).max(poll.interval);
                        continue;
                    }
                    Failure::Fatal(e) => return ActionEnd::Unsure(e.to_string()),
                },
                Err(_) => continue,
            };
            let status = parse_json(&endpoint, &answer.body).ok().and_then(|v| {
                v.pointer("/action/status")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            match status.as_deref() {
                Some("completed") => return ActionEnd::Completed,
                Some("errored") => return ActionEnd::Errored,
                Some("in-progress") => {
                    tracing::debug!(action_id, poll = n, "reserved ip action in progress")
                }
                other => return ActionEnd::Unsure(format!("unknown action status {other:?}")),
            }
        }
        ActionEnd::Unsure(format!(
            "still in-progress after {} poll(s)",
            poll.max_polls
        ))
    }
}
