//! A small HTTP application server that stands in for a member's app.
//!
//! `dynia demo` runs three of them behind its loopback cluster, and tests run
//! them (in process, or as `dynia upstream` processes they can kill) to see
//! where requests go. It answers:
//! - `GET /dynia-health`: the status set by `POST /_demo/health/{code}` (200 at start);
//! - `GET /slow/{ms}`: its id after `ms` milliseconds (at most 10 minutes);
//! - `GET /bytes/{n}`: `n` bytes streamed in 64 KiB chunks (at most 4 GiB);
//! - `POST|PUT /upload`: reads the body and answers how many bytes it had;
//! - `GET /headers`: the request head as received: the request line with the
//!   HTTP version, then one `name: value` a line; header `x-demo-connection`
//!   says which TCP connection (1, 2, ... in accept order) carried it;
//! - anything else: its id and a newline, with header `x-dynia-member: id`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type DemoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const CHUNK: usize = 64 * 1024;
const MAX_SLOW_MS: u64 = 600_000;
const MAX_BYTES: u64 = 4 << 30;

/// A listener with `SO_REUSEADDR`, as the proxy's own, so a `dynia upstream`
/// restarted on the same port binds at once.
fn bind_reusable(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// A running demo application server.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    pub id: Arc<str>,
    state: Arc<State>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

struct State {
    id: Arc<str>,
    health: AtomicU16,
    hits: AtomicU64,
    connections: AtomicU64,
}

impl DemoUpstream {
    /// Binds `bind` (port 0 picks one) and serves until [`kill`](Self::kill).
    pub async fn start(bind: SocketAddr, id: &str) -> std::io::Result<DemoUpstream> {
        let listener = bind_reusable(bind)?;
        let addr = listener.local_addr()?;
        let id: Arc<str> = id.into();
        let state = Arc::new(State {
            id: id.clone(),
            health: AtomicU16::new(200),
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (s, st, tr) = (state.clone(), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((stream, _)) => stream,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(20)).await; continue; }
                    },
                };
                let _ = stream.set_nodelay(true);
                let conn = s.connections.fetch_add(1, Ordering::Relaxed) + 1;
                let (s2, st2) = (s.clone(), st.clone());
                tr.spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s2.clone();
                        async move { Ok::<_, Infallible>(answer(&s, conn, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        // Killed: drop the connection mid-flight, like a dead process.
                        _ = st2.cancelled() => {}
                    }
                });
            }
        });
        Ok(DemoUpstream {
            addr,
            id,
            state,
            stop,
            tracker,
        })
    }

    /// Sets the status `/dynia-health` answers.
    pub fn set_health(&self, code: u16) {
        self.state.health.store(code, Ordering::Relaxed);
    }

    /// Requests served, health checks excluded.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far (health checks included).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Stops at once: closes the listener and every open connection.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    /// Waits until every connection task has ended after [`kill`](Self::kill).
    pub async fn wait_stopped(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn text(status: StatusCode, body: String) -> Response<DemoBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r
}

async fn answer(s: &State, conn: u64, req: Request<Incoming>) -> Response<DemoBody> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segs.as_slice()) {
        (&Method::GET, ["dynia-health"]) => {
            let code = s.health.load(Ordering::Relaxed);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, format!("{} {}\n", s.id, code))
        }
        (&Method::POST | &Method::PUT, ["_demo", "health", code]) => match code.parse::<u16>() {
            Ok(c) if (100..600).contains(&c) => {
                s.health.store(c, Ordering::Relaxed);
                text(StatusCode::OK, format!("health of {} is now {c}\n", s.id))
            }
            _ => text(StatusCode::BAD_REQUEST, "status must be 100..599\n".into()),
        },
        (&Method::GET, ["slow", ms]) => {
            s.hits.fetch_add(1, Ordering::Relaxed);
            let ms = ms.parse::<u64>().unwrap_or(0).min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            member(s, format!("{}\n", s.id))
        }
        (&Method::GET, ["bytes", n]) => {
            s.hits.fetch_add(1, Ordering::Relaxed);
            let n = n.parse::<u64>().unwrap_or(0).min(MAX_BYTES);
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let stream = futures_lite_stream(n, chunk);
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
            r
        }
        (&Method::POST | &Method::PUT, ["upload"]) => {
            s.hits.fetch_add(1, Ordering::Relaxed);
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("body error: {e}\n")),
                }
            }
            member(s, format!("{total}\n"))
        }
        (&Method::GET, ["headers"]) => {
            s.hits.fetch_add(1, Ordering::Relaxed);
            let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                out.push_str(&format!(
                    "{}: {}\n",
                    k,
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
            let mut r = member(s, out);
            r.headers_mut()
                .insert("x-demo-connection", http::HeaderValue::from(conn));
            r
        }
        _ => {
            s.hits.fetch_add(1, Ordering::Relaxed);
            member(s, format!("{}\n", s.id))
        }
    }
}

fn member(s: &State, body: String) -> Response<DemoBody> {
    let mut r = text(StatusCode::OK, body);
    if let Ok(v) = http::HeaderValue::from_str(&s.id) {
        r.headers_mut().insert("x-dynia-member", v);
    }
    r
}

/// A stream of `n` bytes made of clones of `chunk` (no copying).
fn futures_lite_stream(
    n: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    struct Chunks {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let take = self.left.min(self.chunk.len() as u64) as usize;
            self.left -= take as u64;
            let b = self.chunk.slice(..take);
            std::task::Poll::Ready(Some(Ok(Frame::data(b))))
        }
    }
    Chunks { left: n, chunk }
}
