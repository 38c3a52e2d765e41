//! Body types of the data path, as enums so streaming needs no boxing.
//!
//! [`ReqBody`] is what goes to a member: nothing (replayable, so retryable) or
//! the client's stream. [`RespBody`] is what goes to the client: a small local
//! answer, or the member's stream carrying the guards that return the upstream
//! connection to its pool and release the member's in-flight count only when
//! the last byte has passed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::{Backend, InflightGuard, Upstream};

/// A request body sent to a member.
pub enum ReqBody {
    Empty,
    Stream(Incoming),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream(b) => b.size_hint(),
        }
    }
}

/// A response body sent to the client.
pub struct RespBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// Given back to the member's pool once the body ended cleanly.
        conn: Option<(Upstream, Arc<Backend>)>,
        _inflight: InflightGuard,
    },
}

impl RespBody {
    pub fn full(bytes: impl Into<Bytes>) -> RespBody {
        RespBody(Kind::Full(Some(bytes.into())))
    }

    pub fn empty() -> RespBody {
        RespBody(Kind::Full(None))
    }

    pub(crate) fn upstream(
        body: Incoming,
        conn: Option<(Upstream, Arc<Backend>)>,
        inflight: InflightGuard,
    ) -> RespBody {
        let mut b = RespBody(Kind::Upstream {
            body,
            conn,
            _inflight: inflight,
        });
        b.release_if_done();
        b
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, conn, .. } => {
                let r = Pin::new(body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => {
                        if let Some((up, backend)) = conn.take() {
                            backend.pool.put(up);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        conn.take();
                    }
                    Poll::Ready(Some(Ok(_))) => this.release_if_done(),
                    Poll::Pending => {}
                }
                r
            }
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
