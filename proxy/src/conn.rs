//! One client connection's state: its slot in `max_connections`, its phase
//! (head, busy, idle) and activity clock for the timeouts, its requests in
//! flight ([`InflightReq`]) and the response bodies that keep them counted
//! ([`Tracked`]). `server` accepts and serves, `io` reports bytes, `forward`
//! reads it; none of them owns it. See `docs/ARCHITECTURE.md`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access::record::Pending;
use crate::access::Term;
use crate::body::{BodyError, RespBody};
use crate::config::Limits;
use crate::Shared;

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
pub(crate) enum DeadlineVerdict {
    /// Idle too long: finish gracefully.
    Graceful,
    /// A head too slow, a client not reading, or nothing moving: close now.
    Close(&'static str),
}

impl ConnState {
    pub(crate) fn new(shared: Arc<Shared>) -> ConnState {
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

    /// The connection's `response_timeout`, for telling a stall on drop.
    pub(crate) fn set_response_timeout(&self, t: Duration) {
        self.response_timeout_ms
            .store(t.as_millis() as u64, Ordering::Relaxed);
    }

    /// ALPN said h2: bytes between requests are frames, not heads.
    pub(crate) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    pub(crate) fn begin_request(self: &Arc<Self>, h2: bool) -> InflightReq {
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
    pub(crate) fn check(
        &self,
        l: &Limits,
        graceful: bool,
        now: u64,
    ) -> Result<DeadlineVerdict, u64> {
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
                    return Ok(DeadlineVerdict::Close("client stopped reading"));
                }
                wait = wait.min(due - now);
            }
            let waiting = self.member_wait_ms.load(Ordering::Relaxed);
            if waiting != NOT_BLOCKED {
                let due = waiting.saturating_add(response);
                if now >= due {
                    return Ok(DeadlineVerdict::Close("member stalled mid-body"));
                }
                wait = wait.min(due - now);
            }
            let due = last.saturating_add(idle + response);
            if now >= due {
                return Ok(DeadlineVerdict::Close("no traffic with requests in flight"));
            }
            return Err(wait.min(due - now));
        }
        if self.phase.load(Ordering::Relaxed) == HEAD {
            let due = self
                .head_since_ms
                .load(Ordering::Relaxed)
                .saturating_add(header);
            if now >= due {
                return Ok(DeadlineVerdict::Close("request head not received in time"));
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
        Ok(DeadlineVerdict::Graceful)
    }

    /// Resolves with the first deadline that passes.
    pub(crate) async fn watch(&self, l: &Limits, graceful: bool) -> DeadlineVerdict {
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
    pub(crate) fn new(body: RespBody, req: InflightReq, mut log: Pending) -> Tracked {
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
