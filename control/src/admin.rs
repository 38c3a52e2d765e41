//! The admin listener: `/metrics`, `/status.json`, `/status` (the cluster
//! view of `dynia status`: it reads every member's `/status.json`, bounded)
//! and the `/v1/…` control calls.
//!
//! `/v1/…` requires the admin token as a bearer token, compared in constant
//! time; request bodies are bounded. Every refusal is a JSON object
//! `{"error": kind, "message": text}` with a status that says what went wrong.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::daemon::Daemon;

/// Largest request body a control call accepts.
pub const MAX_BODY: usize = 1 << 20;
/// Admin connections served at once; more wait in the kernel's backlog.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Binds the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    dynia_proxy::server::bind(addr)
}

/// Serves the admin API until the process ends.
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(route(&d, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// A JSON error answer.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Resp {
    let body = crate::wire::ErrorBody {
        error: kind.into(),
        message: message.into(),
    };
    respond(
        status,
        "application/json",
        serde_json::to_string(&body).unwrap_or_default(),
    )
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec_pretty(value) {
        Ok(b) => respond(status, "application/json", b),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn route(d: &Daemon, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            dynia_proxy::metrics::render(d.registry()),
        ),
        (Method::GET, "/status.json") => json(StatusCode::OK, &d.status()),
        (Method::GET, "/status") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::page::render(&cluster_view(d).await),
        ),
        (_, p) if p.starts_with("/v1/") => {
            if let Some(refusal) = authorize(d, &req) {
                return refusal;
            }
            let method = req.method().clone();
            let Some(body) = read_body(req).await else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "request",
                    &format!("request body unreadable or larger than {MAX_BODY} bytes"),
                );
            };
            control(d, method, p, body).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

async fn control(d: &Daemon, method: Method, path: &str, body: Bytes) -> Resp {
    match (method, path) {
        (Method::PUT, "/v1/cluster") => put_cluster(d, &body).await,
        (Method::GET, "/v1/snapshots") => {
            let loaded = d.loaded();
            let list: Vec<_> = crate::store::Store::new(&loaded.node.node.state_dir)
                .list()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            json(StatusCode::OK, &list)
        }
        (Method::GET, p) if p.starts_with("/v1/snapshots/") => {
            let Ok(generation) = p["/v1/snapshots/".len()..].parse::<u64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "request",
                    "the snapshot is named by its generation: /v1/snapshots/7",
                );
            };
            let loaded = d.loaded();
            match crate::store::Store::new(&loaded.node.node.state_dir).read_snapshot(generation)
            {
                Some(text) => respond(StatusCode::OK, "application/toml", text),
                None => error(
                    StatusCode::NOT_FOUND,
                    "state",
                    &format!(
                        "this node keeps no snapshot of generation {generation}; `GET /v1/snapshots` lists the ones it has"
                    ),
                ),
            }
        }
        (Method::POST, "/v1/reload") => match d.reload().await {
            Ok(done) => json(StatusCode::OK, &done),
            Err(errors) => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "config",
                &errors.to_string(),
            ),
        },
        (Method::GET, "/v1/cluster") => {
            let loaded = d.loaded();
            respond(StatusCode::OK, "application/toml", loaded.cluster.to_toml())
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such control call"),
    }
}

/// `PUT /v1/cluster` with `{"base_generation": N, "document": "<toml>"}`
/// (plus optional `base_hash` and `leave`): see [`crate::apply`].
async fn put_cluster(d: &Daemon, body: &[u8]) -> Resp {
    let req: crate::apply::ApplyRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request",
                &format!(
                    "the body must be JSON {{\"base_generation\": N, \"document\": \"<cluster.toml text>\"}}: {e}"
                ),
            )
        }
    };
    use crate::apply::ApplyError;
    match crate::apply::apply_document(d, req).await {
        Ok(done) => json(StatusCode::OK, &done),
        Err(e @ ApplyError::Conflict { .. }) => {
            let ApplyError::Conflict {
                generation,
                ref config_hash,
                ..
            } = e
            else {
                unreachable!()
            };
            json(
                StatusCode::CONFLICT,
                &crate::wire::ConflictBody {
                    error: "conflict".into(),
                    message: e.to_string(),
                    generation,
                    config_hash: config_hash.clone(),
                },
            )
        }
        Err(e @ (ApplyError::Invalid(_) | ApplyError::Generation(_))) => {
            error(StatusCode::BAD_REQUEST, "config", &e.to_string())
        }
        Err(e @ ApplyError::Write(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "state", &e.to_string())
        }
    }
}

/// How long the `/status` page waits for each member's `/status.json`.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// This node's status with every other member's own `/status.json` (public,
/// no token), read at once: what `dynia status` shows.
async fn cluster_view(d: &Daemon) -> crate::status::ClusterStatus {
    let loaded = d.loaded();
    let port = loaded.node.admin.listen.port();
    let peers = loaded
        .cluster
        .members
        .iter()
        .filter(|m| m.id != loaded.node.node.id)
        .map(|m| {
            (
                m.id.clone(),
                crate::client::AdminClient::new(m.admin_addr(port), None)
                    .with_timeout(PEER_STATUS_TIMEOUT),
            )
        })
        .collect();
    crate::status::gather(d.status(), peers).await
}

/// `None` when the request carries the admin token, else the refusal.
fn authorize(d: &Daemon, req: &Request<Incoming>) -> Option<Resp> {
    let loaded = d.loaded();
    let Some(token) = &loaded.admin_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "auth",
            "this node has no admin token: set [admin] token_file in the node file",
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(token.expose_bytes())) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "auth", "wrong admin token")),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "auth",
            "missing `Authorization: Bearer <admin token>`",
        )),
    }
}

async fn read_body(req: Request<Incoming>) -> Option<Bytes> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}
