//! Forwarding one client request: route, pick a member, rewrite headers, send,
//! retry on another member when that is safe, stream the answer back. The retry
//! rules (a POST is never sent twice once written), the timeouts and WebSocket
//! tunnels: `docs/proxy.md`, "Forwarding, retries and request timeouts";
//! the race of hedged connects (`connect_any`): "Hedged connects".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::access::record::{Hook, Record};
use crate::access::Term;
use crate::backend::{Backend, Upstream, POOL_IDLE_MAX, UNSAFE_REUSE_IDLE};
pub use crate::body::local;
use crate::body::RespBody;
use crate::config::{Limits, ServiceConfig};
use crate::conn::ConnState;
use crate::connect::{connect_any, Connected, Dial, Retry, Tries};
use crate::exchange::{closed_before_response, exchange, Outcome};
use crate::route::request_host;
use crate::state::{ServiceRt, Snapshot};
use crate::tunnel::tunnel;
use crate::upload::{ReqBody, Upload};

/// Facts about the client connection a request came on.
#[derive(Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// A plain listener with `redirect_https`.
    pub redirect_https: bool,
    /// Set per request on such a listener when a TLS listener has a
    /// certificate for the host: answer 308 to `https://` on this port.
    pub https_port: Option<u16>,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Handles one request against `snap`; never fails (errors become responses).
/// `conn` is the client connection it came on; `rec` its access-log record
/// when the log is on.
pub(crate) async fn handle(
    snap: Arc<Snapshot>,
    req: Request<Incoming>,
    info: ConnInfo,
    conn: &Arc<ConnState>,
    rec: &mut Option<Box<Record>>,
) -> Response<RespBody> {
    let started = Instant::now();
    let host = request_host(&req);
    let host_str = host.as_ref().and_then(|h| h.to_str().ok());
    let Some(idx) = host_str.and_then(|h| snap.router.route(h)) else {
        snap.unrouted.count(404);
        rec.end(Term::LOCAL);
        return local(StatusCode::NOT_FOUND, "no service for this host\n");
    };
    let svc = &snap.services[idx];
    let cfg = &snap.config.services[idx];
    rec.service(&svc.name);
    let mut resp = match info.https_port.filter(|_| !info.tls) {
        Some(port) => match redirect_https(port, cfg, &req, host_str) {
            Some(r) => {
                rec.end(Term::LOCAL);
                r
            }
            None => forward(&snap, svc, req, host, info, conn, rec).await,
        },
        None => forward(&snap, svc, req, host, info, conn, rec).await,
    };
    if let (true, Some(hsts)) = (info.tls, &cfg.hsts) {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    svc.metrics.count(resp.status().as_u16());
    svc.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The `308` to `https://` for a request on a `redirect_https` listener, or
/// `None` for the service's health path (health checkers often speak plain
/// HTTP), which is forwarded as usual.
fn redirect_https(
    https_port: u16,
    svc: &ServiceConfig,
    req: &Request<Incoming>,
    host: Option<&str>,
) -> Option<Response<RespBody>> {
    let path = req.uri().path();
    let pq = req.uri().path_and_query().map_or(path, |p| p.as_str());
    if path == svc.health.path || pq == svc.health.path {
        return None;
    }
    let name = crate::route::strip_port(host.unwrap_or_default());
    let valid = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    if !valid {
        return Some(local(StatusCode::BAD_REQUEST, "bad host\n"));
    }
    let port = match https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let pq = if pq.starts_with('/') { pq } else { "/" };
    let location = format!("https://{name}{port}{pq}");
    let Ok(location) = HeaderValue::from_str(&location) else {
        return Some(local(StatusCode::BAD_REQUEST, "bad request target\n"));
    };
    let mut r = local(StatusCode::PERMANENT_REDIRECT, "moved to https\n");
    r.headers_mut().insert(header::LOCATION, location);
    Some(r)
}

async fn forward(
    snap: &Snapshot,
    svc: &ServiceRt,
    req: Request<Incoming>,
    host: Option<HeaderValue>,
    info: ConnInfo,
    client: &Arc<ConnState>,
    rec: &mut Option<Box<Record>>,
) -> Response<RespBody> {
    let (mut parts, body) = req.into_parts();
    let upgrade = is_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    prepare_request(&mut parts, host.as_ref(), info, upgrade);
    rec.request_id(parts.headers.get(&X_REQUEST_ID));

    // A request without a body can be sent again as it is.
    let body = if body_is_empty(&parts.headers, &body) {
        ReqBody::Empty
    } else {
        ReqBody::stream(body)
    };
    let upload = body.upload();
    let upload_bytes = upload.clone();
    let mut rec = Uploaded(rec, upload_bytes);
    let rec = &mut rec;
    let twice_ok = may_send_twice(&parts);
    let replayable = matches!(body, ReqBody::Empty) && twice_ok;
    let mut msg = Msg { parts, body };
    let max_idle = if twice_ok {
        POOL_IDLE_MAX
    } else {
        UNSAFE_REUSE_IDLE
    };
    let limits = snap.limits;
    let dial = Dial {
        timeout: limits.connect_timeout,
        upgrades: upgrade,
        max_idle,
    };
    let mut tries = Tries::new(1 + svc.retries);
    let mut last_error = StatusCode::SERVICE_UNAVAILABLE;

    // Ends: every turn tries at least one more member, and `tries` is bounded.
    loop {
        let Some(Connected {
            backend,
            mut up,
            reused,
        }) = connect_any(svc, &mut tries, dial, rec.0).await
        else {
            break;
        };
        rec.0.connected(&backend.member);
        let last_try = tries.left == 0;
        let keep_parts = replayable && !last_try;
        let inflight = backend.start_request();
        // A pooled connection may turn out closed (see `send_on_member`).
        let resend_written = reused && twice_ok;
        if resend_written {
            if let Some(u) = &upload {
                u.keep_for_replay();
            }
        }
        let sent_at = Instant::now();
        let resend = Resend {
            fresh_left: reused,
            written: resend_written,
            keep_parts,
        };
        let outcome = send_on_member(svc, &backend, &mut up, &mut msg, resend, &limits).await;
        match outcome {
            Outcome::Response(mut resp) => {
                rec.0.first_byte();
                rec.0.end(Term::NORMAL); // an earlier attempt's failure was retried
                let m = &backend.metrics;
                m.requests.inc();
                m.latency.observe(sent_at.elapsed().as_secs_f64());
                if resp.status().is_server_error() {
                    m.errors.inc();
                }
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let log = rec.0.take();
                    return tunnel(resp, client_upgrade, backend.clone(), client, &limits, log);
                }
                let reusable = !upgrade;
                strip_hop_by_hop(resp.headers_mut());
                let (rparts, rbody) = resp.into_parts();
                let conn = reusable.then(|| (up, backend.clone()));
                // HTTP/1: the connection's watcher bounds a stall mid-body.
                let stall = client.is_h2().then_some(limits.response_timeout);
                let body = RespBody::upstream(rbody, conn, inflight, stall);
                return Response::from_parts(rparts, body);
            }
            Outcome::NotSent(_) => {
                // Nothing reached the member: like a connect failure.
                backend.passive_failure();
                tries.why = Retry::Connect;
                continue;
            }
            Outcome::Failed(e) if e.is_user() => {
                // The client's body broke off: neither the member's fault nor
                // worth an answer anyone reads.
                tracing::debug!(service = %svc.name, member = %backend.member, error = %e, "client request body failed");
                rec.0.end(Term::CLIENT_REQUEST_ABORT);
                return local(StatusCode::BAD_REQUEST, "request body failed\n");
            }
            Outcome::Failed(e) => {
                tracing::warn!(service = %svc.name, member = %backend.member, error = %e, "upstream request failed");
                backend.passive_failure();
                rec.0.end(Term::MEMBER_ERROR_HEAD);
                last_error = StatusCode::BAD_GATEWAY;
                tries.why = Retry::Reset;
                if !keep_parts {
                    break;
                }
            }
            Outcome::MemberLost => {
                // Only asked for when the request may go again (`keep_parts`).
                tracing::warn!(service = %svc.name, member = %backend.member, "member lost while its answer was awaited; trying another");
                rec.0.end(Term::MEMBER_ERROR_HEAD);
                last_error = StatusCode::BAD_GATEWAY;
                tries.why = Retry::Lost;
            }
            Outcome::Stalled => {
                // As `MemberLost`; the member's checks look at once.
                tracing::warn!(service = %svc.name, member = %backend.member, "member acknowledged none of the request on a kept-alive connection; trying another");
                backend.passive_failure();
                rec.0.end(Term::MEMBER_ERROR_HEAD);
                last_error = StatusCode::BAD_GATEWAY;
                tries.why = Retry::Reset;
            }
            Outcome::MemberTimeout => {
                tracing::warn!(service = %svc.name, member = %backend.member, "upstream response timed out");
                backend.passive_failure();
                rec.0.end(Term::MEMBER_TIMEOUT_HEAD);
                // A slow member is not retried: the request may be running there.
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream response timed out\n");
            }
            Outcome::ClientTimeout => {
                tracing::debug!(service = %svc.name, member = %backend.member, "client stopped sending its request body");
                rec.0.end(Term::CLIENT_TIMEOUT);
                return local(StatusCode::REQUEST_TIMEOUT, "request body timed out\n");
            }
        }
    }
    // No member could be reached (or none was available): like HAProxy, 503.
    if last_error == StatusCode::SERVICE_UNAVAILABLE {
        rec.0.end(Term::NO_MEMBER);
        let mut r = local(StatusCode::SERVICE_UNAVAILABLE, "no member available\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(svc.retry_after));
        return r;
    }
    local(last_error, "upstream failed\n")
}

/// The request between tries: its head (empty once it went without being
/// kept) and what is left of its body.
struct Msg {
    parts: Parts,
    body: ReqBody,
}

/// Whether a request may go again on a new connection to the same member.
#[derive(Clone, Copy)]
struct Resend {
    /// The connection was pooled and no new one was made yet.
    fresh_left: bool,
    /// Pooled and the request may be sent twice: even once written.
    written: bool,
    /// The head is kept for another member.
    keep_parts: bool,
}

/// Sends `msg` on `up` to `backend`. The member may close a pooled connection
/// just as the request goes out. Hyper gives a request back unsent when it
/// noticed in time: then it goes once more, on a new connection to the same
/// member. Otherwise it was written but nothing came back: it goes again the
/// same way if it may be sent twice (parts kept, body empty or kept whole up
/// to REPLAY_MAX).
async fn send_on_member(
    svc: &ServiceRt,
    backend: &Backend,
    up: &mut Upstream,
    msg: &mut Msg,
    resend: Resend,
    limits: &Limits,
) -> Outcome {
    let Resend {
        mut fresh_left,
        written: resend_written,
        keep_parts,
    } = resend;
    loop {
        let this_body = std::mem::replace(&mut msg.body, ReqBody::Empty);
        let sent_upload = this_body.upload();
        let keep = keep_parts || (fresh_left && resend_written);
        let request = if keep {
            Request::from_parts(clone_parts(&msg.parts), this_body)
        } else {
            Request::from_parts(std::mem::replace(&mut msg.parts, empty_parts()), this_body)
        };
        let lost = keep_parts.then(|| backend.liveness.lost());
        let stall = (keep_parts && fresh_left).then(|| up.fd());
        let result = exchange(up, request, sent_upload.as_deref(), limits, lost, stall).await;
        let again = match result {
            Outcome::NotSent(req) => {
                let (p, b) = req.into_parts();
                if !keep {
                    msg.parts = p;
                }
                msg.body = b;
                if !fresh_left {
                    return Outcome::NotSent(Request::new(ReqBody::Empty));
                }
                "pooled connection closed before the request went out"
            }
            Outcome::Failed(e) if fresh_left && resend_written && closed_before_response(&e) => {
                match sent_upload {
                    None => {} // no body: `msg.body` is still empty
                    Some(u) => match u.take_replay() {
                        Some(frames) => msg.body = ReqBody::Replay(frames),
                        None => return Outcome::Failed(e),
                    },
                }
                "pooled connection closed by the member before any response"
            }
            other => return other,
        };
        fresh_left = false;
        svc.metrics.retries.resend.inc();
        tracing::debug!(service = %svc.name, member = %backend.member, why = again, "sending again on a new connection");
        match backend.connect(limits.connect_timeout, false).await {
            Ok(u) => *up = u,
            Err(e) => {
                tracing::debug!(service = %svc.name, member = %backend.member, error = %e, "upstream connect failed");
                return Outcome::NotSent(Request::new(ReqBody::Empty));
            }
        }
    }
}

/// The record with the upload whose bytes it gets when `forward` returns.
struct Uploaded<'a>(&'a mut Option<Box<Record>>, Option<Arc<Upload>>);

impl Drop for Uploaded<'_> {
    fn drop(&mut self) {
        if let Some(u) = &self.1 {
            self.0.bytes_in(u.bytes());
        }
    }
}

/// Whether the member may get this request twice: an idempotent method, or
/// an `Idempotency-Key` header the member promises to honour.
fn may_send_twice(p: &Parts) -> bool {
    is_idempotent(&p.method) || p.headers.contains_key(&IDEMPOTENCY_KEY)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn body_is_empty(headers: &HeaderMap, body: &Incoming) -> bool {
    use http_body::Body;
    if body.is_end_stream() {
        return true;
    }
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    !chunked && len.unwrap_or(0) == 0 && body.size_hint().exact() == Some(0)
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        h.remove(n);
    }
}

/// Rewrites a client request into the one a member receives.
fn prepare_request(parts: &mut Parts, host: Option<&HeaderValue>, info: ConnInfo, upgrade: bool) {
    let upgrade_value = if upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = upgrade_value {
        parts.headers.insert(header::UPGRADE, v);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // Origin-form target, HTTP/1.1 to the member whatever the client spoke.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Ok(u) = pq.parse::<Uri>() {
            parts.uri = u;
        }
    }
    parts.version = Version::HTTP_11;
    if let Some(h) = host {
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, h.clone());
        }
        parts.headers.insert(&X_FORWARDED_HOST, h.clone());
    }
    let ip = info.peer.ip().to_string();
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert(&X_FORWARDED_FOR, v);
    }
    parts.headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if info.tls { "https" } else { "http" }),
    );
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts.headers.insert(&X_REQUEST_ID, request_id());
    }
}

fn clone_parts(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

fn empty_parts() -> Parts {
    Request::new(()).into_parts().0
}

/// A unique id: 64 random bits fixed at start, then a counter, as 32 hex digits.
fn request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    let hex = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        let v = if i < 16 { prefix } else { n };
        let shift = 60 - 4 * (i % 16);
        *b = hex[((v >> shift) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_including_connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn xff_appends_and_proto_set() {
        let mut parts = empty_parts();
        parts
            .headers
            .insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        parts.uri = "http://app.example.com/x?y=1".parse().unwrap();
        let info = ConnInfo {
            peer: "192.0.2.7:5555".parse().unwrap(),
            tls: false,
            redirect_https: false,
            https_port: None,
        };
        let host = HeaderValue::from_static("app.example.com");
        prepare_request(&mut parts, Some(&host), info, false);
        assert_eq!(parts.headers[&X_FORWARDED_FOR], "203.0.113.1, 192.0.2.7");
        assert_eq!(parts.headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(parts.headers[&X_FORWARDED_HOST], "app.example.com");
        assert_eq!(parts.headers[header::HOST], "app.example.com");
        assert_eq!(parts.uri, "/x?y=1");
        assert!(parts.headers.contains_key(&X_REQUEST_ID));
    }
}
