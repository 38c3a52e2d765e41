//! Client of a daemon's admin API, used by the `dynia` commands.
//!
//! Every call has a timeout and reads a bounded answer; errors say which
//! address could not be reached and what the daemon answered.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::SecretBytes;
use crate::wire::{Applied, ApplyRequest, ConflictBody, ErrorBody, KeptDocument, Reloaded, Status};

/// Largest answer read from a daemon.
const MAX_ANSWER: usize = 8 << 20;

/// Why a call to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the dynia daemon at {addr}: {why} (is `dynia run` running with this node file?)")]
    Unreachable { addr: SocketAddr, why: String },
    #[error("the daemon at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{message}")]
    Conflict {
        generation: u64,
        config_hash: String,
        message: String,
    },
    #[error("{message}")]
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("unexpected answer from {addr}: {why}")]
    BadAnswer { addr: SocketAddr, why: String },
}

/// Talks to one daemon's admin listener.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<SecretBytes>,
    timeout: Duration,
}

impl AdminClient {
    /// A client of `addr`; an unspecified address (0.0.0.0) means this host.
    pub fn new(addr: SocketAddr, token: Option<SecretBytes>) -> AdminClient {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        AdminClient {
            addr,
            token,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one call; a non-2xx answer becomes [`ClientError::Refused`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr,
                timeout: self.timeout,
            }),
        }
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let unreachable = |why: String| ClientError::Unreachable {
            addr: self.addr,
            why,
        };
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.token {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(t.expose_bytes());
            let mut hv =
                header::HeaderValue::from_bytes(&v).map_err(|_| ClientError::BadAnswer {
                    addr: self.addr,
                    why: "the admin token has characters a header cannot carry".into(),
                })?;
            hv.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, hv);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::BadAnswer {
                addr: self.addr,
                why: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ClientError::BadAnswer {
                addr: self.addr,
                why: e.to_string(),
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(refusal(status, &bytes))
    }

    /// `GET /status.json`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        let b = self.call(Method::GET, "/status.json", Bytes::new()).await?;
        serde_json::from_slice(&b).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: format!("status.json: {e}"),
        })
    }

    /// `POST /v1/reload`.
    pub async fn reload(&self) -> Result<Reloaded, ClientError> {
        let b = self.call(Method::POST, "/v1/reload", Bytes::new()).await?;
        serde_json::from_slice(&b).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: format!("reload answer: {e}"),
        })
    }
}

impl AdminClient {
    /// `GET /v1/cluster`: the cluster document as TOML text.
    pub async fn get_cluster(&self) -> Result<String, ClientError> {
        let b = self.call(Method::GET, "/v1/cluster", Bytes::new()).await?;
        String::from_utf8(b.to_vec()).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: e.to_string(),
        })
    }

    /// `PUT /v1/cluster`.
    pub async fn put_cluster(&self, req: &ApplyRequest) -> Result<Applied, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: e.to_string(),
        })?;
        let b = self
            .call(Method::PUT, "/v1/cluster", Bytes::from(body))
            .await?;
        serde_json::from_slice(&b).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: format!("PUT /v1/cluster answer: {e}"),
        })
    }

    /// `GET /v1/snapshots/{generation}`: a kept previous document.
    pub async fn snapshot(&self, generation: u64) -> Result<String, ClientError> {
        let b = self
            .call(
                Method::GET,
                &format!("/v1/snapshots/{generation}"),
                Bytes::new(),
            )
            .await?;
        String::from_utf8(b.to_vec()).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: e.to_string(),
        })
    }

    /// `GET /v1/snapshots`: kept snapshots, newest first.
    pub async fn snapshots(&self) -> Result<Vec<KeptDocument>, ClientError> {
        let b = self
            .call(Method::GET, "/v1/snapshots", Bytes::new())
            .await?;
        serde_json::from_slice(&b).map_err(|e| ClientError::BadAnswer {
            addr: self.addr,
            why: format!("snapshots: {e}"),
        })
    }
}

/// Every client's `GET /status.json` at once (each bounded by its client's
/// timeout); the answers in the order of `clients`.
pub async fn statuses(clients: Vec<AdminClient>) -> Vec<Result<Status, ClientError>> {
    let mut set = tokio::task::JoinSet::new();
    let n = clients.len();
    for (i, c) in clients.into_iter().enumerate() {
        set.spawn(async move { (i, c.status().await) });
    }
    let mut out: Vec<Option<Result<Status, ClientError>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, r)) = joined {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(ClientError::BadAnswer {
                    addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                    why: "the status call panicked".into(),
                })
            })
        })
        .collect()
}

fn refusal(status: StatusCode, body: &[u8]) -> ClientError {
    if status == StatusCode::CONFLICT {
        if let Ok(c) = serde_json::from_slice::<ConflictBody>(body) {
            return ClientError::Conflict {
                generation: c.generation,
                config_hash: c.config_hash,
                message: c.message,
            };
        }
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Refused {
            status: status.as_u16(),
            kind: e.error,
            message: e.message,
        },
        Err(_) => ClientError::Refused {
            status: status.as_u16(),
            kind: "http".into(),
            message: format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ),
        },
    }
}
