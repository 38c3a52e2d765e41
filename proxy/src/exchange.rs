//! One request on one upstream connection: send it, wait for the response
//! head within the timeouts, and give up early when the member is lost or
//! never acknowledged the request (docs/proxy.md, "Requests a member never
//! received").

use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::futures::Notified;

use crate::backend::Upstream;
use crate::config::Limits;
use crate::upload::{ReqBody, Upload, UploadState};

/// Whether `e` means the member's connection ended before any response byte
/// (closed or reset), rather than a bad answer, a timeout or the client.
pub(crate) fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// How one request on one upstream connection ended.
pub(crate) enum Outcome {
    Response(Response<Incoming>),
    /// The connection closed before the request was written: it comes back.
    NotSent(Request<ReqBody>),
    Failed(hyper::Error),
    /// No response head within `response_timeout` of the end of the upload,
    /// or the member took no upload bytes for that long.
    MemberTimeout,
    /// The client sent no upload bytes for `idle_timeout`.
    ClientTimeout,
    /// The election lost the member while its response head was awaited
    /// (only asked for when the request may go to another member).
    MemberLost,
    /// On a reused connection, the member's TCP stack acknowledged none of
    /// the request within [`STALL_AFTER`]: it is dead or blackholed (only
    /// asked for when the request may go to another member).
    Stalled,
}

/// How long a request written on a reused connection may stay
/// unacknowledged by the member's TCP stack: above Linux's largest delayed
/// ACK (200 ms), so a slow app is never taken for a dead one.
pub const STALL_AFTER: Duration = Duration::from_millis(210);

/// Sends `req` on `up` and waits for the response head, timing the member
/// from the end of the request body; with `lost`, gives up when the election
/// loses the member (a keep-alive connection to a dead node never answers).
pub(crate) async fn exchange(
    up: &mut Upstream,
    req: Request<ReqBody>,
    upload: Option<&Upload>,
    limits: &Limits,
    lost: Option<Notified<'_>>,
    stall: Option<std::os::fd::RawFd>,
) -> Outcome {
    let Some(lost) = lost else {
        return exchange_timed(up, req, upload, limits).await;
    };
    let stalled = async move {
        match stall {
            Some(fd) => {
                tokio::time::sleep(STALL_AFTER).await;
                if crate::backend::unacked(fd).unwrap_or(0) == 0 {
                    std::future::pending::<()>().await; // the member has it
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        o = exchange_timed(up, req, upload, limits) => o,
        _ = lost => Outcome::MemberLost,
        _ = stalled => Outcome::Stalled,
    }
}

pub(crate) async fn exchange_timed(
    up: &mut Upstream,
    req: Request<ReqBody>,
    upload: Option<&Upload>,
    limits: &Limits,
) -> Outcome {
    let sent = up.sender.try_send_request(req);
    let outcome = |r: Result<Response<Incoming>, hyper::client::conn::TrySendError<_>>| match r {
        Ok(resp) => Outcome::Response(resp),
        Err(mut e) => match e.take_message() {
            Some(req) => Outcome::NotSent(req),
            None => Outcome::Failed(e.into_error()),
        },
    };
    let Some(upload) = upload else {
        return match tokio::time::timeout(limits.response_timeout, sent).await {
            Ok(r) => outcome(r),
            Err(_) => Outcome::MemberTimeout,
        };
    };
    tokio::pin!(sent);
    // The upload's state may change while waiting, and the deadline with it;
    // a new deadline is at least the shorter timeout away from the change,
    // so looking again that often is never late. Each wake-up either ends
    // the wait or finds the deadline moved by progress of the upload.
    let cap = limits.idle_timeout.min(limits.response_timeout);
    loop {
        let (deadline, late) = upload_deadline(upload, limits);
        let now = Instant::now();
        if now >= deadline {
            return late;
        }
        let wake = deadline.min(now + cap);
        tokio::select! {
            r = &mut sent => return outcome(r),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// When an upload in progress is late, and whose fault that is.
pub(crate) fn upload_deadline(upload: &Upload, limits: &Limits) -> (Instant, Outcome) {
    let (state, last) = upload.get();
    match state {
        UploadState::WaitingClient => (last + limits.idle_timeout, Outcome::ClientTimeout),
        UploadState::Sending | UploadState::Done => {
            (last + limits.response_timeout, Outcome::MemberTimeout)
        }
    }
}
