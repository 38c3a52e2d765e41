//! What goes to a member: [`ReqBody`] is nothing (replayable, so
//! retryable), the client's stream, or a small body sent once already and sent
//! again. The stream reports its progress to an [`Upload`], so the forwarder
//! times the response from the end of the upload and knows whether a stalled
//! upload waits on the client or on the member; on a pooled connection it
//! keeps the frames it sent (up to [`REPLAY_MAX`] bytes, reference-counted,
//! no copy) in case the member closed that connection as the request went out.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Bytes of request body kept to send again on a new connection, at most.
pub const REPLAY_MAX: usize = 64 * 1024;

/// A request body sent to a member.
pub enum ReqBody {
    Empty,
    Stream {
        body: Incoming,
        upload: Arc<Upload>,
    },
    /// A body sent once already, whole, going out again.
    Replay(std::collections::VecDeque<Bytes>),
}

impl ReqBody {
    /// The client's body, reporting to a new [`Upload`].
    pub(crate) fn stream(body: Incoming) -> ReqBody {
        ReqBody::Stream {
            body,
            upload: Arc::new(Upload::new()),
        }
    }

    pub(crate) fn upload(&self) -> Option<Arc<Upload>> {
        match self {
            ReqBody::Stream { upload, .. } => Some(upload.clone()),
            ReqBody::Empty | ReqBody::Replay(_) => None,
        }
    }
}

/// Where an upload stands, as the member's connection pulls the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadState {
    /// Pulling frames; if nothing is pulled, the member does not read.
    Sending,
    /// The client has not sent the next bytes yet.
    WaitingClient,
    /// The whole body went out.
    Done,
}

/// Progress of one request body, shared between the body and the forwarder.
pub struct Upload {
    start: Instant,
    /// Milliseconds since `start` of the last frame (or of the end).
    last_ms: AtomicU64,
    state: AtomicU8,
    /// Body bytes pulled from the client so far.
    bytes: AtomicU64,
    /// The frames sent and their size while they are kept for a resend;
    /// `None` when not asked for, or past [`REPLAY_MAX`], or with trailers.
    replay: Mutex<Option<(Vec<Bytes>, usize)>>,
}

impl Upload {
    fn new() -> Upload {
        Upload {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            state: AtomicU8::new(0),
            bytes: AtomicU64::new(0),
            replay: Mutex::new(None),
        }
    }

    /// Keeps the frames from now on, so that the whole body can be sent
    /// again if it stays under [`REPLAY_MAX`]. Call before the first frame.
    pub(crate) fn keep_for_replay(&self) {
        *lock(&self.replay) = Some((Vec::new(), 0));
    }

    /// The whole body as sent, if it was kept and has ended.
    pub(crate) fn take_replay(&self) -> Option<std::collections::VecDeque<Bytes>> {
        if self.get().0 != UploadState::Done {
            return None;
        }
        lock(&self.replay).take().map(|(frames, _)| frames.into())
    }

    /// Body bytes pulled from the client so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn record(&self, frame: &Frame<Bytes>) {
        if let Some(d) = frame.data_ref() {
            self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        let mut kept = lock(&self.replay);
        let Some((frames, size)) = kept.as_mut() else {
            return;
        };
        match frame.data_ref() {
            Some(d) if *size + d.len() <= REPLAY_MAX => {
                *size += d.len();
                frames.push(d.clone());
            }
            _ => *kept = None, // too big, or trailers: not kept
        }
    }

    fn set(&self, state: UploadState, stamp: bool) {
        if stamp {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The state and the instant of the last progress.
    pub(crate) fn get(&self) -> (UploadState, Instant) {
        let state = match self.state.load(Ordering::Relaxed) {
            0 => UploadState::Sending,
            1 => UploadState::WaitingClient,
            _ => UploadState::Done,
        };
        let ms = self.last_ms.load(Ordering::Relaxed);
        (state, self.start + Duration::from_millis(ms))
    }
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
            ReqBody::Stream { body, upload } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        upload.record(f);
                        let state = match body.is_end_stream() {
                            true => UploadState::Done,
                            false => UploadState::Sending,
                        };
                        upload.set(state, true);
                    }
                    Poll::Ready(None) => upload.set(UploadState::Done, true),
                    Poll::Ready(Some(Err(_))) => {}
                    Poll::Pending => upload.set(UploadState::WaitingClient, false),
                }
                r
            }
            ReqBody::Replay(frames) => Poll::Ready(frames.pop_front().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { body, .. } => body.is_end_stream(),
            ReqBody::Replay(frames) => frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { body, .. } => body.size_hint(),
            ReqBody::Replay(frames) => {
                SizeHint::with_exact(frames.iter().map(|b| b.len() as u64).sum())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
