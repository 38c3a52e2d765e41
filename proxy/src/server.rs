//! Client side: listening sockets, accepted connections and their limits.
//!
//! Each listener runs an accept loop. A connection over `max_connections` is
//! closed at once (counted, never queued). On a TLS listener the handshake
//! comes first, bounded by `header_read_timeout` (see `tls`), and the
//! negotiated ALPN picks HTTP/2 or HTTP/1.1. Connections are served by hyper
//! (HTTP/1.1, and HTTP/2 by ALPN or with prior knowledge) with the header read
//! timeout and size limit of the snapshot current when they were accepted; an idle
//! keep-alive connection is closed after `idle_timeout`. Shutdown stops the
//! accept loops, asks every connection to finish gracefully and waits for
//! them within a grace period.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::forward::{handle, ConnInfo};
use crate::io::ActivityIo;
use crate::Shared;

/// Backlog of every listening socket.
const BACKLOG: i32 = 1024;

/// Binds a listening socket with `SO_REUSEADDR`, ready for Tokio.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts on `listener` until `stop` fires.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    name: Arc<str>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let max = shared.snapshot.load().limits.max_connections;
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            shared.metrics.connections_refused.inc();
            drop(stream);
            continue;
        }
        shared.metrics.connections_total.inc();
        shared.metrics.connections_active.inc();
        let s = shared.clone();
        let listener_name = name.clone();
        shared.tracker.spawn(async move {
            serve_connection(&s, stream, peer, &listener_name).await;
            s.connections.fetch_sub(1, Ordering::AcqRel);
            s.metrics.connections_active.dec();
        });
    }
}

/// Per-connection activity, for the idle timeout.
pub(crate) struct ConnState {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    pub(crate) last_active_ms: AtomicU64,
    inflight: AtomicU32,
}

impl ConnState {
    pub(crate) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }
}

struct InflightReq(Arc<ConnState>);
impl Drop for InflightReq {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Which HTTP the client side speaks on a connection.
#[derive(Clone, Copy)]
enum Http {
    /// HTTP/1.1, or HTTP/2 with prior knowledge (plain; TLS without ALPN or
    /// with `http/1.1`, where upgrades such as WebSocket must work).
    Auto,
    /// ALPN `h2`.
    H2,
}

async fn serve_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: &str,
) {
    let _ = stream.set_nodelay(true);
    let (limits, redirect_https) = {
        let snap = shared.snapshot.load();
        let redirect = snap
            .config
            .listeners
            .iter()
            .any(|l| l.name == listener && l.redirect_https);
        (snap.limits, redirect)
    };
    let state = Arc::new(ConnState {
        start: Instant::now(),
        last_active_ms: AtomicU64::new(0),
        inflight: AtomicU32::new(0),
    });
    let io = ActivityIo::new(stream, state.clone());
    let Some(tls) = shared.tls.listener(listener) else {
        let info = ConnInfo {
            peer,
            tls: false,
            redirect_https,
            https_port: None,
        };
        return serve_http(shared, io, info, state, limits, Http::Auto).await;
    };
    let handshake = shared
        .tls
        .handshake(&tls, io, limits.header_read_timeout, peer);
    let stream = tokio::select! {
        s = handshake => match s {
            Some(s) => s,
            None => return,
        },
        _ = shared.stop.cancelled() => return,
    };
    drop(tls);
    let http = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Http::H2,
        _ => Http::Auto,
    };
    let info = ConnInfo {
        peer,
        tls: true,
        redirect_https: false,
        https_port: None,
    };
    serve_http(shared, stream, info, state, limits, http).await
}

async fn serve_http<I>(
    shared: &Arc<Shared>,
    io: I,
    info: ConnInfo,
    state: Arc<ConnState>,
    limits: crate::config::Limits,
    http: Http,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let io = TokioIo::new(io);
    let svc_shared = shared.clone();
    let svc_state = state.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let snap = svc_shared.snapshot.load_full();
        let mut info = info;
        if info.redirect_https {
            // Only hosts some certificate here covers go to https.
            info.https_port = crate::forward::request_host(&req)
                .and_then(|h| svc_shared.tls.https_port_for(h.to_str().ok()?));
        }
        svc_state.inflight.fetch_add(1, Ordering::Relaxed);
        let guard = InflightReq(svc_state.clone());
        async move {
            let resp = handle(snap, req, info).await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let stop = shared.stop.clone();
    let idle = limits.idle_timeout;
    if let Http::H2 = http {
        // ALPN said h2: no HTTP/1 sniffing (and no HTTP/1 upgrades) on this one.
        let builder = builder.http2_only();
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        drive(conn, |c| c.graceful_shutdown(), &stop, &state, idle, peer).await;
    } else {
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        drive(conn, |c| c.graceful_shutdown(), &stop, &state, idle, peer).await;
    }
}

/// Runs a client connection to its end, asking it to finish gracefully at
/// shutdown or once idle.
async fn drive<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
    stop: &CancellationToken,
    state: &ConnState,
    idle: Duration,
    peer: SocketAddr,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut graceful = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !graceful => {
                graceful_shutdown(conn.as_mut());
                graceful = true;
            }
            _ = idle_expired(state, idle), if !graceful => {
                graceful_shutdown(conn.as_mut());
                graceful = true;
            }
        }
    }
}

/// Resolves once the connection has had no traffic and no request for `idle`.
async fn idle_expired(state: &ConnState, idle: Duration) {
    loop {
        let last = Duration::from_millis(state.last_active_ms.load(Ordering::Relaxed));
        let since = state.start.elapsed().saturating_sub(last);
        if since >= idle && state.inflight.load(Ordering::Relaxed) == 0 {
            return;
        }
        let wait = if since >= idle { idle } else { idle - since };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}
