//! The `/v2` API server: authentication, the fault queue, latency, the
//! per-token rate limit (`ratelimit`) with its headers, the `Date` header
//! and the call log around each answer; what the answer is comes from
//! `actions`. Errors have the real API's shape.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::actions::{route, Routed};
use super::clock::http_date;
use super::faults::{take_faults, Injected};
use super::ratelimit::Verdict;
use super::{Call, CallTarget, SimShared, World, MAX_BODY};

pub(super) async fn api(s: &SimShared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let token = presented.strip_prefix("Bearer ").unwrap_or("").to_owned();
    let auth_ok = s.world().tokens.contains(&token);
    let is_action_post = method == Method::POST
        && path.starts_with("/v2/reserved_ips/")
        && path.ends_with("/actions");

    // Read the body (bounded) before anything else, as a server would.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Some(b.to_bytes()),
        Err(_) => None,
    };

    // Latency and slow-answer faults (outside the lock).
    let (delay, injected) = take_faults(s, is_action_post, &presented);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut w = s.world();
    let now = Instant::now();
    let clock = w.clock;
    let verdict = w.limits.check(&token, now, &clock);
    let mut routed = Routed::default();
    let mut resp = match (verdict.refused, injected) {
        (Some(retry_after), _) => rate_limited(retry_after),
        (None, Injected::Answer(r)) => r,
        (None, _) if !auth_ok => api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        ),
        (None, injected) => {
            let force_error = matches!(injected, Injected::ErroredAction);
            route(
                &mut w,
                &method,
                &path,
                body.as_ref(),
                force_error,
                &mut routed,
            )
        }
    };
    rate_headers(&mut resp, &verdict);
    date_header(&mut resp, &w);
    let status = resp.status().as_u16();
    let at = clock.wall(now);
    w.log(Call {
        service: CallTarget::Api,
        method: method.to_string(),
        path,
        action_type: routed.action_type,
        droplet_id: routed.droplet_id,
        status,
        at,
        instant: now,
    });
    drop(w);
    s.served.notify_waiters();
    resp
}

/// `RateLimit-*` on every answer; a `429` the fault queue made keeps its own.
fn rate_headers(resp: &mut Response<Full<Bytes>>, v: &Verdict) {
    let h = resp.headers_mut();
    if h.contains_key("ratelimit-limit") {
        return;
    }
    h.insert("ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(v.reset));
}

pub(super) fn date_header(resp: &mut Response<Full<Bytes>>, w: &World) {
    if let Ok(v) = HeaderValue::from_str(&http_date(w.clock.now_wall())) {
        resp.headers_mut().insert(http::header::DATE, v);
    }
}

/// A `429` of the limiter: `Retry-After` for the minute (burst) limit.
fn rate_limited(retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "API Rate limit exceeded.",
    );
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    raw_json_response(status, body.to_string())
}

pub(super) fn raw_json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

pub(super) fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The real API's error shape: `{"id":…,"message":…,"request_id":…}`.
pub(super) fn api_error(status: StatusCode, id: &str, message: &str) -> Response<Full<Bytes>> {
    let request_id = format!("{:08x}-sim", rand::random::<u32>());
    json_response(
        status,
        &json!({"id": id, "message": message, "request_id": request_id}),
    )
}
