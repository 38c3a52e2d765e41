//! What goes to the client ([`RespBody`], an enum so streaming needs no
//! boxing): a small local answer, or the member's stream carrying the guards
//! that give the upstream connection back to its pool and the member's
//! in-flight count back only after the last byte. What goes to a member is in
//! `upload`. Stalled members: `docs/proxy.md`, "Response bodies".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::backend::{Backend, InflightGuard, Upstream};

/// Why a response body sent to the client broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("member's body: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("member sent nothing for {0:?} mid-body")]
    Stalled(Duration),
}

/// A response body sent to the client.
pub struct RespBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// Given back to the member's pool once the body ended cleanly.
        conn: Option<(Upstream, Arc<Backend>)>,
        inflight: InflightGuard,
        stall: Option<Stall>,
    },
}

impl RespBody {
    pub fn full(bytes: impl Into<Bytes>) -> RespBody {
        RespBody(Kind::Full(Some(bytes.into())))
    }

    pub fn empty() -> RespBody {
        RespBody(Kind::Full(None))
    }

    /// The member's body; with `stall_limit`, it fails if no frame comes
    /// for that long.
    pub(crate) fn upstream(
        body: Incoming,
        conn: Option<(Upstream, Arc<Backend>)>,
        inflight: InflightGuard,
        stall_limit: Option<Duration>,
    ) -> RespBody {
        let mut b = RespBody(Kind::Upstream {
            body,
            conn,
            inflight,
            stall: stall_limit.map(Stall::new),
        });
        b.release_if_done();
        b
    }

    /// Counts a passive failure of the member this body comes from (its
    /// connection was cut because the member stalled).
    pub(crate) fn blame_member(&self) {
        if let Kind::Upstream { inflight, .. } = &self.0 {
            let backend = inflight.backend();
            tracing::debug!(service = %backend.service, member = %backend.member, "member stalled mid-body");
            backend.passive_failure();
        }
    }

    fn release_if_done(&mut self) {
        if let Kind::Upstream { body, conn, .. } = &mut self.0 {
            if body.is_end_stream() {
                if let Some((up, backend)) = conn.take() {
                    backend.pool.put(up);
                }
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream {
                body,
                conn,
                inflight,
                stall,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some((up, backend)) = conn.take() {
                        backend.pool.put(up);
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    conn.take();
                    inflight.backend().passive_failure();
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Some(Ok(f))) => {
                    if let Some(stall) = stall {
                        stall.progress();
                    }
                    this.release_if_done();
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Pending => {
                    let Some(stall) = stall else {
                        return Poll::Pending;
                    };
                    if !stall.poll_stalled(cx) {
                        return Poll::Pending;
                    }
                    // Not reusable: the member is mid-response.
                    conn.take();
                    let backend = inflight.backend();
                    tracing::debug!(service = %backend.service, member = %backend.member, "member stalled mid-body");
                    backend.passive_failure();
                    Poll::Ready(Some(Err(BodyError::Stalled(stall.limit))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// Inactivity timer of a body: armed (one allocation) only the first time
/// the body has to wait, moved only when it fires early.
struct Stall {
    limit: Duration,
    /// A frame passed since the last wait began.
    progressed: bool,
    /// When the current wait began.
    since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            progressed: true,
            since: None,
            timer: None,
        }
    }

    fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when the body has nothing to give: `true` once it has had
    /// nothing for `limit`.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.progressed || self.since.is_none() {
            self.progressed = false;
            self.since = Some(Instant::now());
        }
        let deadline = self.since.unwrap_or_else(Instant::now) + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        // Fired for an earlier wait: aim at this one.
        timer.as_mut().reset(deadline.into());
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A response made by the proxy itself.
pub fn local(status: http::StatusCode, text: &'static str) -> http::Response<RespBody> {
    let mut r = http::Response::new(RespBody::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
