//! The `/v2` API server: authentication, the fault queue, latency, the
//! rate-limit headers and the call log around each answer; what the answer
//! is comes from `actions`. Errors have the real API's shape.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::actions::route;
use super::clock::epoch_secs;
use super::faults::{take_faults, Injected};
use super::{Call, CallTarget, SimShared, MAX_BODY, RATE_LIMIT};

pub(super) async fn api(s: &SimShared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let auth_ok = {
        let w = s.world();
        let want = format!("Bearer {}", w.token);
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == want)
    };
    let is_action_post = method == Method::POST
        && path.starts_with("/v2/reserved_ips/")
        && path.ends_with("/actions");

    // Read the body (bounded) before anything else, as a server would.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Some(b.to_bytes()),
        Err(_) => None,
    };

    // Latency and slow-answer faults (outside the lock).
    let (delay, injected) = take_faults(s, is_action_post);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut w = s.world();
    let mut assign_droplet = None;
    let mut action_type = None;
    let (mut resp, status) = match injected {
        Injected::Answer(r, st) => (r, st),
        _ if !auth_ok => (
            api_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unable to authenticate you",
            ),
            401,
        ),
        _ => {
            let force_error = matches!(injected, Injected::ErroredAction);
            let r = route(
                &mut w,
                &method,
                &path,
                body.as_ref(),
                force_error,
                &mut action_type,
                &mut assign_droplet,
            );
            let st = r.status().as_u16();
            (r, st)
        }
    };
    if status != 429 {
        w.remaining = w.remaining.saturating_sub(1);
        let h = resp.headers_mut();
        h.insert("ratelimit-limit", HeaderValue::from(RATE_LIMIT));
        h.insert("ratelimit-remaining", HeaderValue::from(w.remaining));
        h.insert(
            "ratelimit-reset",
            HeaderValue::from(epoch_secs(SystemTime::now()) + 60),
        );
    }
    w.log(Call {
        service: CallTarget::Api,
        method: method.to_string(),
        path,
        action_type,
        droplet_id: assign_droplet,
        status,
        at: SystemTime::now(),
        instant: Instant::now(),
    });
    resp
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
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
