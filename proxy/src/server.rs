//! Client side: listening sockets, accept loops, and serving each accepted
//! connection (TLS first where configured, then HTTP/1.1 or HTTP/2 by hyper)
//! with the limits of the snapshot current at accept. The timeouts are enforced
//! from the connection's activity (see `conn`), not by hyper. Why, and what
//! each timeout cuts: `docs/proxy.md`, "Connections and their timeouts".

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::access::record::{ConnFacts, Pending, TlsInfo};
use crate::config::Limits;
use crate::conn::{ConnState, DeadlineVerdict, Tracked};
use crate::forward::{handle, ConnInfo};
use crate::io::ActivityIo;
use crate::{AcceptHealth, Shared};

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

/// Pause after a failed accept before looking again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `stop` fires.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    name: Arc<str>,
    stop: CancellationToken,
    health: &AcceptHealth,
) {
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match r {
            Ok((stream, peer)) => {
                if health.ok() {
                    tracing::info!(listener = %name, "accepting again");
                }
                admit(&shared, stream, peer, &name);
            }
            Err(e) => {
                if health.failed(shared.now_ms()) {
                    tracing::warn!(listener = %name, error = %e, "accept failing; retrying every 50 ms");
                }
                // EMFILE and friends: back off instead of spinning, then look
                // again without blocking, so that the streak ends as soon as a
                // descriptor can be had again, even with nobody waiting.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                    }
                    let now = std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx)));
                    match now.await {
                        Poll::Ready(Ok((stream, peer))) => {
                            if health.ok() {
                                tracing::info!(listener = %name, "accepting again");
                            }
                            admit(&shared, stream, peer, &name);
                            break;
                        }
                        Poll::Ready(Err(_)) => {}
                        Poll::Pending => {
                            if descriptor_available(&listener) {
                                if health.ok() {
                                    tracing::info!(listener = %name, "accepting again");
                                }
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Whether a new socket could be opened now (no EMFILE/ENFILE).
fn descriptor_available(listener: &TcpListener) -> bool {
    let domain = match listener.local_addr() {
        Ok(a) => Domain::for_address(a),
        Err(_) => Domain::IPV4,
    };
    Socket::new(domain, Type::STREAM, None).is_ok()
}

/// Serves `stream` unless `max_connections` are open already.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, name: &Arc<str>) {
    let max = shared.snapshot.load().limits.max_connections;
    if shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        shared.metrics.connections_refused.inc();
        drop(stream);
        return;
    }
    shared.metrics.connections_total.inc();
    shared.metrics.connections_active.inc();
    // From here the slot is given back by `ConnState`'s drop, whatever happens.
    let state = Arc::new(ConnState::new(shared.clone()));
    let s = shared.clone();
    let listener_name = name.clone();
    shared.tracker.spawn(async move {
        serve_connection(&s, stream, peer, &listener_name, state).await;
    });
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
    state: Arc<ConnState>,
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
    state.set_response_timeout(limits.response_timeout);
    let io = ActivityIo::new(stream, state.clone());
    let name: Arc<str> = listener.into();
    let Some(tls) = shared.tls.listener(listener) else {
        let facts = Arc::new(ConnFacts {
            listener: name,
            tls: None,
        });
        let info = ConnInfo {
            peer,
            tls: false,
            redirect_https,
            https_port: None,
        };
        return serve_http(shared, io, info, state, limits, Http::Auto, facts).await;
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
    let session = stream.get_ref().1;
    let facts = Arc::new(ConnFacts {
        listener: name,
        tls: Some(TlsInfo {
            version: tls_version(session.protocol_version()),
            sni: session.server_name().map(Into::into),
        }),
    });
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
    serve_http(shared, stream, info, state, limits, http, facts).await
}

fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}

async fn serve_http<I>(
    shared: &Arc<Shared>,
    io: I,
    info: ConnInfo,
    state: Arc<ConnState>,
    limits: Limits,
    http: Http,
    facts: Arc<ConnFacts>,
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
            info.https_port = crate::route::request_host(&req)
                .and_then(|h| svc_shared.tls.https_port_for(h.to_str().ok()?));
        }
        let guard = svc_state.begin_request(req.version() == http::Version::HTTP_2);
        let rec = svc_shared.access.load().as_ref().map(|log| {
            let open = svc_shared.connections.load(Ordering::Relaxed);
            log.begin(peer, &facts, &req, open)
        });
        let mut log = Pending::new(rec, &svc_shared);
        async move {
            let resp = handle(snap, req, info, guard.conn(), &mut log.rec).await;
            if let Some(r) = &mut log.rec {
                r.status = resp.status().as_u16();
            }
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::new(body, guard, log)))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header timer: `ConnState` enforces header_read_timeout and
    // idle_timeout (see the module comment).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    if let Http::H2 = http {
        state.set_h2();
        // ALPN said h2: no HTTP/1 sniffing (and no HTTP/1 upgrades) on this one.
        let builder = builder.http2_only();
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            shared,
            &state,
            &limits,
            peer,
        )
        .await;
    } else {
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            shared,
            &state,
            &limits,
            peer,
        )
        .await;
    }
}

/// Runs a client connection to its end: asks it to finish gracefully at
/// shutdown or once idle, drops it when a deadline passes or the shutdown
/// grace period is over.
async fn drive<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
    shared: &Shared,
    state: &ConnState,
    limits: &Limits,
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
            _ = shared.stop.cancelled(), if !graceful => {
                graceful_shutdown(conn.as_mut());
                graceful = true;
            }
            _ = shared.kill.cancelled() => return,
            v = state.watch(limits, graceful) => match v {
                DeadlineVerdict::Graceful => {
                    graceful_shutdown(conn.as_mut());
                    graceful = true;
                }
                DeadlineVerdict::Close(why) => {
                    tracing::debug!(%peer, reason = why, "client connection closed");
                    return;
                }
            },
        }
    }
}
