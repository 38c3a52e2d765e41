//! A stream wrapper that reports the client connection's activity to its
//! [`ConnState`] (bytes read, bytes written, writes blocked), for the
//! connection's timeouts.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::ConnState;

/// Wraps a client stream; every successful read or write touches the state.
pub(crate) struct ActivityIo<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S> ActivityIo<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>) -> Self {
        ActivityIo { inner, state }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let n = (buf.filled().len() - before) as u64;
            this.state.shared.metrics.received_bytes.inc_by(n);
            this.state.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        match r {
            Poll::Ready(Ok(n)) if n > 0 => this.state.on_write(n),
            Poll::Pending => this.state.on_write_blocked(),
            _ => {}
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match r {
            Poll::Ready(Ok(n)) if n > 0 => this.state.on_write(n),
            Poll::Pending => this.state.on_write_blocked(),
            _ => {}
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
