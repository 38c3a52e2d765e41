//! Client side: listening sockets, accepted connections and their limits.
//!
//! Each listener runs an accept loop. A connection over `max_connections` is
//! closed at once (counted, never queued). A connection holds its slot through
//! its [`ConnState`], which gives the slot back when dropped: when the
//! connection ends, panics, or, for a WebSocket, when the tunnel that took
//! over the socket ends. Accept errors (EMFILE, ENFILE) are retried every
//! 50 ms and recorded for `can_serve`.
//!
//! On a TLS listener the handshake comes first, bounded by
//! `header_read_timeout` (see `tls`), and the negotiated ALPN picks HTTP/2 or
//! HTTP/1.1. Connections are served by hyper (HTTP/1.1, and HTTP/2 by ALPN or
//! with prior knowledge) with the limits of the snapshot current when they
//! were accepted. The timeouts are enforced here, from the connection's
//! activity, not by hyper (hyper's HTTP/1 header timer also runs between
//! keep-alive requests and would cut every idle connection at
//! `header_read_timeout`; it does not cover the protocol sniffing read):
//! - a request head (the first one from the accept, later ones from their
//!   first byte) must be complete within `header_read_timeout`, else the
//!   connection is closed;
//! - a connection with no request in flight is asked to finish gracefully
//!   after `idle_timeout` without traffic;
//! - a response the client stops reading (a write blocked for
//!   `idle_timeout`), an HTTP/1 response whose member sends no body bytes for
//!   `response_timeout` (the response is cut; HTTP/2 streams have their own
//!   timer, see `body`), or a connection with requests in flight and no
//!   traffic for `idle_timeout + response_timeout`, is closed.
//!
//! Shutdown stops the accept loops, asks every connection to finish
//! gracefully, waits for them (and tunnels) within the grace period, then
//! cuts what is left.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::access::record::{ConnFacts, Pending, TlsInfo};
use crate::access::Term;
use crate::body::{BodyError, RespBody};
use crate::config::Limits;
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

/// Phases of a client connection, for its timeouts.
const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;
/// `write_blocked_ms` / `member_wait_ms` when nothing waits.
const NOT_BLOCKED: u64 = u64::MAX;

/// One client connection: its slot in `max_connections` and its activity,
/// for the timeouts. Shared by the connection task, its I/O wrapper, its
/// requests in flight and, after an upgrade, its tunnel; the last one to let
/// go gives the slot back.
pub(crate) struct ConnState {
    pub(crate) shared: Arc<Shared>,
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_active_ms: AtomicU64,
    /// When the request head being read began (phase `HEAD`).
    head_since_ms: AtomicU64,
    /// Since when a write to the client has been blocked, or `NOT_BLOCKED`.
    write_blocked_ms: AtomicU64,
    /// Since when the response body (HTTP/1) has waited on the member, or
    /// `NOT_BLOCKED`.
    member_wait_ms: AtomicU64,
    inflight: AtomicU32,
    phase: AtomicU8,
    /// HTTP/2: bytes between requests are frames (pings), not a new head.
    h2: AtomicBool,
    /// The connection's `response_timeout`, for telling a stall on drop.
    response_timeout_ms: AtomicU64,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.connections_active.dec();
    }
}

/// What the connection's deadlines ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Idle too long: finish gracefully.
    Graceful,
    /// A head too slow, a client not reading, or nothing moving: close now.
    Close(&'static str),
}

impl ConnState {
    fn new(shared: Arc<Shared>) -> ConnState {
        ConnState {
            shared,
            start: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(NOT_BLOCKED),
            member_wait_ms: AtomicU64::new(NOT_BLOCKED),
            inflight: AtomicU32::new(0),
            phase: AtomicU8::new(HEAD),
            h2: AtomicBool::new(false),
            response_timeout_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether the client speaks HTTP/2 on this connection.
    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Bytes came from the client: on an idle HTTP/1 connection they begin
    /// the next request head.
    pub(crate) fn on_read(&self) {
        let now = self.now_ms();
        self.last_active_ms.store(now, Ordering::Relaxed);
        if self.phase.load(Ordering::Relaxed) == IDLE && !self.h2.load(Ordering::Relaxed) {
            self.head_since_ms.store(now, Ordering::Relaxed);
            self.phase.store(HEAD, Ordering::Relaxed);
        }
    }

    /// `n` bytes went to the client.
    pub(crate) fn on_write(&self, n: usize) {
        self.shared.metrics.sent_bytes.inc_by(n as u64);
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
        if self.write_blocked_ms.load(Ordering::Relaxed) != NOT_BLOCKED {
            self.write_blocked_ms.store(NOT_BLOCKED, Ordering::Relaxed);
        }
    }

    /// A write to the client could not proceed (its receive window is full).
    pub(crate) fn on_write_blocked(&self) {
        if self.write_blocked_ms.load(Ordering::Relaxed) == NOT_BLOCKED {
            self.write_blocked_ms
                .store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn begin_request(self: &Arc<Self>, h2: bool) -> InflightReq {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
        if h2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        InflightReq(self.clone())
    }

    /// The deadline due now, or how long to wait before looking again.
    /// `graceful`: a graceful finish was asked already (only `Close` counts).
    ///
    /// No wait is longer than the shortest of the two client timeouts: a
    /// phase that begins later (idle after a response, a head after idling,
    /// a blocked write) has its deadline at least that far from its start, so
    /// looking again by then is never late.
    fn check(&self, l: &Limits, graceful: bool, now: u64) -> Result<Verdict, u64> {
        let ms = |d: Duration| d.as_millis() as u64;
        let (idle, header) = (ms(l.idle_timeout), ms(l.header_read_timeout));
        let response = ms(l.response_timeout);
        let cap = idle.min(header).min(response).max(1);
        let last = self.last_active_ms.load(Ordering::Relaxed);
        if self.inflight.load(Ordering::Relaxed) > 0 {
            let mut wait = cap;
            let blocked = self.write_blocked_ms.load(Ordering::Relaxed);
            if blocked != NOT_BLOCKED {
                let due = blocked.saturating_add(idle);
                if now >= due {
                    return Ok(Verdict::Close("client stopped reading"));
                }
                wait = wait.min(due - now);
            }
            let waiting = self.member_wait_ms.load(Ordering::Relaxed);
            if waiting != NOT_BLOCKED {
                let due = waiting.saturating_add(response);
                if now >= due {
                    return Ok(Verdict::Close("member stalled mid-body"));
                }
                wait = wait.min(due - now);
            }
            let due = last.saturating_add(idle + response);
            if now >= due {
                return Ok(Verdict::Close("no traffic with requests in flight"));
            }
            return Err(wait.min(due - now));
        }
        if self.phase.load(Ordering::Relaxed) == HEAD {
            let due = self
                .head_since_ms
                .load(Ordering::Relaxed)
                .saturating_add(header);
            if now >= due {
                return Ok(Verdict::Close("request head not received in time"));
            }
            return Err((due - now).min(cap));
        }
        let due = last.saturating_add(idle);
        if now < due {
            return Err((due - now).min(cap));
        }
        if graceful {
            return Err(cap); // asked already; hyper closes it
        }
        Ok(Verdict::Graceful)
    }

    /// Resolves with the first deadline that passes.
    async fn watch(&self, l: &Limits, graceful: bool) -> Verdict {
        loop {
            match self.check(l, graceful, self.now_ms()) {
                Ok(v) => return v,
                Err(wait) => tokio::time::sleep(Duration::from_millis(wait)).await,
            }
        }
    }

    /// Resolves once no byte has moved for `idle` (for tunnels).
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.last_active_ms.load(Ordering::Relaxed);
            let since = self.now_ms().saturating_sub(last);
            let idle_ms = idle.as_millis() as u64;
            if since >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis((idle_ms - since).max(10))).await;
        }
    }
}

/// A request in flight on a connection, until its response body has ended.
pub(crate) struct InflightReq(Arc<ConnState>);

impl InflightReq {
    pub(crate) fn conn(&self) -> &Arc<ConnState> {
        &self.0
    }
}

impl Drop for InflightReq {
    fn drop(&mut self) {
        let s = &self.0;
        s.last_active_ms.store(s.now_ms(), Ordering::Relaxed);
        if s.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
            s.phase.store(IDLE, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as in flight on the
/// connection until its last byte was handed to hyper (or it is dropped),
/// and on HTTP/1 tells the connection's watcher when it waits on the member.
pub(crate) struct Tracked {
    body: RespBody,
    req: InflightReq,
    /// The access-log record, sent when this body is dropped.
    log: Pending,
    /// Watched by the connection (HTTP/1: one response at a time).
    watched: bool,
}

impl Tracked {
    fn new(body: RespBody, req: InflightReq, mut log: Pending) -> Tracked {
        let watched = !req.0.is_h2();
        log.done = body.is_end_stream();
        Tracked {
            body,
            req,
            log,
            watched,
        }
    }

    /// Notes a frame for the access log: bytes, the end, or why it broke off.
    fn log_frame(&mut self, r: &Poll<Option<Result<Frame<Bytes>, BodyError>>>) {
        if self.log.rec.is_none() {
            return;
        }
        match r {
            Poll::Ready(Some(Ok(f))) => {
                self.log.sent(f.data_ref().map_or(0, |d| d.len()));
                self.log.done = self.body.is_end_stream();
            }
            Poll::Ready(None) => self.log.done = true,
            Poll::Ready(Some(Err(e))) => {
                let term = match e {
                    BodyError::Stalled(_) => Term::MEMBER_TIMEOUT_DATA,
                    BodyError::Upstream(_) => Term::MEMBER_ERROR_DATA,
                };
                crate::access::record::Hook::end(&mut self.log.rec, term);
            }
            Poll::Pending => {}
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        this.log_frame(&r);
        if this.watched {
            let conn = &this.req.0;
            let waiting = conn.member_wait_ms.load(Ordering::Relaxed) != NOT_BLOCKED;
            match (&r, waiting) {
                (Poll::Pending, false) => {
                    conn.member_wait_ms.store(conn.now_ms(), Ordering::Relaxed)
                }
                (Poll::Ready(_), true) => conn.member_wait_ms.store(NOT_BLOCKED, Ordering::Relaxed),
                _ => {}
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.watched {
            return;
        }
        let conn = &self.req.0;
        let since = conn.member_wait_ms.swap(NOT_BLOCKED, Ordering::Relaxed);
        let limit = conn.response_timeout_ms.load(Ordering::Relaxed);
        if since != NOT_BLOCKED && conn.now_ms().saturating_sub(since) >= limit {
            // Cut by the watcher because the member stalled.
            self.body.blame_member();
            crate::access::record::Hook::end(&mut self.log.rec, Term::MEMBER_TIMEOUT_DATA);
        }
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
    state.response_timeout_ms.store(
        limits.response_timeout.as_millis() as u64,
        Ordering::Relaxed,
    );
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
            info.https_port = crate::forward::request_host(&req)
                .and_then(|h| svc_shared.tls.https_port_for(h.to_str().ok()?));
        }
        let guard = svc_state.begin_request(req.version() == http::Version::HTTP_2);
        let rec = svc_shared.access.load().is_some().then(|| {
            let open = svc_shared.connections.load(Ordering::Relaxed);
            crate::access::Record::begin(peer, facts.clone(), &req, open)
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
        state.h2.store(true, Ordering::Relaxed);
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
                Verdict::Graceful => {
                    graceful_shutdown(conn.as_mut());
                    graceful = true;
                }
                Verdict::Close(why) => {
                    tracing::debug!(%peer, reason = why, "client connection closed");
                    return;
                }
            },
        }
    }
}
