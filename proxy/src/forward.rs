//! Forwarding one client request: route, pick a member, rewrite headers, send,
//! retry on another member when that is safe, stream the answer back.
//!
//! Retry rules (SPEC §4): a connect failure never sent anything, so it is
//! always retried; a reset or close before any response byte is retried when
//! the request is idempotent and had no body (so it can be sent again as is).
//! Every failure counts as a passive failure of that member.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::backend::Backend;
use crate::body::{ReqBody, RespBody};
use crate::config::ServiceConfig;
use crate::state::{ServiceRt, Snapshot, Tried};

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
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Handles one request against `snap`; never fails (errors become responses).
pub async fn handle(
    snap: Arc<Snapshot>,
    req: Request<Incoming>,
    info: ConnInfo,
) -> Response<RespBody> {
    let started = Instant::now();
    let host = request_host(&req);
    let host_str = host.as_ref().and_then(|h| h.to_str().ok());
    let Some(idx) = host_str.and_then(|h| snap.router.route(h)) else {
        snap.unrouted.count(404);
        return local(StatusCode::NOT_FOUND, "no service for this host\n");
    };
    let svc = &snap.services[idx];
    let cfg = &snap.config.services[idx];
    let mut resp = match info.https_port.filter(|_| !info.tls) {
        Some(port) => match redirect_https(port, cfg, &req, host_str) {
            Some(r) => r,
            None => forward(&snap, svc, req, host, info).await,
        },
        None => forward(&snap, svc, req, host, info).await,
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

/// The request's host: the `Host` header (a cheap clone of the received
/// bytes), else the URI authority (HTTP/2).
pub(crate) fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(h.clone());
    }
    req.uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

async fn forward(
    snap: &Snapshot,
    svc: &ServiceRt,
    req: Request<Incoming>,
    host: Option<HeaderValue>,
    info: ConnInfo,
) -> Response<RespBody> {
    let (mut parts, body) = req.into_parts();
    let upgrade = is_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    prepare_request(&mut parts, host.as_ref(), info, upgrade);

    // A request without a body can be sent again as it is.
    let mut body = if body_is_empty(&parts.headers, &body) {
        ReqBody::Empty
    } else {
        ReqBody::Stream(body)
    };
    let replayable = matches!(body, ReqBody::Empty) && is_idempotent(&parts.method);
    let attempts = 1 + svc.retries;
    let limits = snap.limits;
    let mut tried = Tried::default();
    let mut last_error = StatusCode::SERVICE_UNAVAILABLE;

    for attempt in 0..attempts {
        let Some((i, backend)) = svc.pick(tried) else {
            break;
        };
        tried.add(i);
        if attempt > 0 {
            svc.metrics.retries.inc();
        }
        let conn = if upgrade {
            backend
                .connect(limits.connect_timeout, true)
                .await
                .map(|c| (c, false))
        } else {
            backend.connection(limits.connect_timeout).await
        };
        let (mut up, _reused) = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(service = %svc.name, member = %backend.member, error = %e, "upstream connect failed");
                backend.passive_failure();
                continue; // nothing was sent: always safe to retry
            }
        };
        let last_try = attempt + 1 == attempts;
        let this_body = std::mem::replace(&mut body, ReqBody::Empty);
        let keep_parts = replayable && !last_try;
        let request = if keep_parts {
            Request::from_parts(clone_parts(&parts), this_body)
        } else {
            Request::from_parts(std::mem::replace(&mut parts, empty_parts()), this_body)
        };
        let inflight = backend.start_request();
        let sent =
            tokio::time::timeout(limits.response_timeout, up.sender.send_request(request)).await;
        match sent {
            Ok(Ok(mut resp)) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return tunnel(resp, client_upgrade, backend.clone());
                }
                let reusable = !upgrade;
                strip_hop_by_hop(resp.headers_mut());
                let (rparts, rbody) = resp.into_parts();
                let conn = reusable.then(|| (up, backend.clone()));
                return Response::from_parts(rparts, RespBody::upstream(rbody, conn, inflight));
            }
            Ok(Err(e)) => {
                tracing::debug!(service = %svc.name, member = %backend.member, error = %e, "upstream request failed");
                backend.passive_failure();
                last_error = StatusCode::BAD_GATEWAY;
                if !keep_parts {
                    break;
                }
            }
            Err(_) => {
                tracing::debug!(service = %svc.name, member = %backend.member, "upstream response timed out");
                backend.passive_failure();
                // A slow member is not retried: the request may be running there.
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream response timed out\n");
            }
        }
    }
    // No member could be reached (or none was available): like HAProxy, 503.
    if last_error == StatusCode::SERVICE_UNAVAILABLE {
        let mut r = local(StatusCode::SERVICE_UNAVAILABLE, "no member available\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(svc.retry_after));
        return r;
    }
    local(last_error, "upstream failed\n")
}

/// Joins a client's upgraded connection with the member's after a 101.
fn tunnel(
    mut resp: Response<Incoming>,
    client: Option<hyper::upgrade::OnUpgrade>,
    backend: Arc<Backend>,
) -> Response<RespBody> {
    let Some(client) = client else {
        return local(StatusCode::BAD_GATEWAY, "upgrade not possible\n");
    };
    let upstream = hyper::upgrade::on(&mut resp);
    let inflight = backend.start_request();
    tokio::spawn(async move {
        let _inflight = inflight;
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(member = %backend.member, error = %e, "tunnel ended");
                }
            }
            Err(e) => tracing::debug!(member = %backend.member, error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, RespBody::empty())
}

/// A response made by the proxy itself.
pub fn local(status: StatusCode, text: &'static str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
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
