//! Faults on demand: a queue of answers the API gives instead of (or before)
//! its real one — rate limits, server errors (with or without
//! `Retry-After`), pending events, slow or garbage answers, actions that end
//! `errored`, an error echoing the `Authorization` header — and a fixed
//! latency.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::api::{api_error, raw_json_response, text_response};
use super::clock::{ceil_secs, epoch_secs, SimClock};
use super::{DoSim, SimShared};

/// A fault the simulator injects into the next API answer(s), in queue order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `429 too_many_requests` with `RateLimit-Remaining: 0`,
    /// `RateLimit-Reset` = now + `reset_after` (epoch seconds, rounded up)
    /// and, when `retry_after`, `Retry-After` in whole seconds.
    RateLimited {
        /// When the window resets, from the moment of the answer.
        reset_after: Duration,
        /// Also send `Retry-After` (the burst limiter does; the hourly one may not).
        retry_after: bool,
    },
    /// A server error with this status (500, 502, 503…).
    ServerError(u16),
    /// The next *action POST* answers 422 "… already has a pending event."
    /// (other requests pass it by).
    PendingEvent,
    /// The next answer is delayed this long, then served normally.
    Slow(Duration),
    /// The next action created ends `errored` (the IP does not move).
    ErroredAction,
    /// The next answer is `200` with a body that is not JSON.
    Garbage,
    /// `503 service_unavailable` with `Retry-After` in whole seconds.
    Unavailable {
        /// What `Retry-After` says.
        retry_after: Duration,
    },
    /// `400` whose message quotes the request's `Authorization` header,
    /// JSON-escaped character by character (`\u0064\u006f…`), as a careless
    /// proxy or server might: the client must not log it back.
    EchoAuthorization,
}

/// Pre-routing outcome of the fault queue.
pub(super) enum Injected {
    None,
    Answer(Response<Full<Bytes>>),
    ErroredAction,
}

impl DoSim {
    /// A latency added to every API answer.
    pub fn set_latency(&self, d: Duration) {
        self.shared.world().latency = d;
    }

    /// Queue a fault for the next API answer(s).
    pub fn push_fault(&self, f: Fault) {
        self.shared.world().faults.push_back(f);
    }

    /// The next `n` API answers are 429 with `RateLimit-Reset` `reset_after` ahead
    /// and `Retry-After`.
    pub fn fail_next_rate_limited(&self, n: usize, reset_after: Duration) {
        for _ in 0..n {
            self.push_fault(Fault::RateLimited {
                reset_after,
                retry_after: true,
            });
        }
    }

    /// The next `n` API answers are `status` (5xx).
    pub fn fail_next_server_error(&self, n: usize, status: u16) {
        for _ in 0..n {
            self.push_fault(Fault::ServerError(status));
        }
    }

    /// The next `n` action POSTs are 422 "pending event".
    pub fn fail_next_pending_event(&self, n: usize) {
        for _ in 0..n {
            self.push_fault(Fault::PendingEvent);
        }
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.shared.world().faults.len()
    }
}

/// Pops the faults that apply to this request: the delay to add (latency and
/// `Slow` faults) and what to answer instead, if anything. `PendingEvent`
/// and `ErroredAction` wait for the next action POST.
pub(super) fn take_faults(
    s: &SimShared,
    is_action_post: bool,
    authorization: &str,
) -> (Duration, Injected) {
    let (mut delay, clock, limit) = {
        let w = s.world();
        (w.latency, w.clock, w.limits.per_hour)
    };
    loop {
        let f = {
            let mut w = s.world();
            match w.faults.front() {
                Some(Fault::PendingEvent) if !is_action_post => None,
                Some(Fault::ErroredAction) if !is_action_post => None,
                Some(_) => w.faults.pop_front(),
                None => None,
            }
        };
        let injected = match f {
            Some(Fault::Slow(d)) => {
                delay += d;
                continue;
            }
            Some(Fault::ErroredAction) => Injected::ErroredAction,
            Some(f) => Injected::Answer(answer(f, &clock, limit, authorization)),
            None => Injected::None,
        };
        return (delay, injected);
    }
}

/// The answer a fault gives instead of the real one.
fn answer(f: Fault, clock: &SimClock, limit: u32, authorization: &str) -> Response<Full<Bytes>> {
    match f {
        Fault::RateLimited {
            reset_after,
            retry_after,
        } => rate_limited(clock, limit, reset_after, retry_after),
        Fault::ServerError(code) => {
            let st = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            api_error(st, "server_error", "Unexpected server-side error")
        }
        Fault::Unavailable { retry_after } => {
            let mut r = api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The service is temporarily unavailable.",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(retry_after)),
            );
            r
        }
        Fault::PendingEvent => api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "The reserved IP already has a pending event.",
        ),
        Fault::Garbage => text_response(StatusCode::OK, "<html>not json{".into()),
        Fault::EchoAuthorization => {
            let escaped: String = authorization
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect();
            raw_json_response(
                StatusCode::BAD_REQUEST,
                format!(
                    r#"{{"id":"bad_request","message":"invalid header Authorization: {escaped}","request_id":"echo-sim"}}"#
                ),
            )
        }
        Fault::Slow(_) | Fault::ErroredAction => text_response(StatusCode::OK, String::new()),
    }
}

/// A `429` as the real API sends it: the rate-limit headers with the reset
/// rounded up to a whole epoch second, and `Retry-After` when asked.
fn rate_limited(
    clock: &SimClock,
    limit: u32,
    reset_after: Duration,
    retry_after: bool,
) -> Response<Full<Bytes>> {
    let reset = clock.now_wall() + reset_after;
    // Round up: the window resets at a whole epoch second.
    let reset_epoch = epoch_secs(reset)
        + u64::from(
            reset
                .duration_since(std::time::UNIX_EPOCH)
                .is_ok_and(|d| d.subsec_nanos() > 0),
        );
    let mut r = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "API Rate limit exceeded.",
    );
    let h = r.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(limit));
    h.insert("ratelimit-remaining", HeaderValue::from(0u32));
    h.insert("ratelimit-reset", HeaderValue::from(reset_epoch));
    if retry_after {
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(reset_after)),
        );
    }
    r
}
