//! WebSocket (and other `Upgrade`) tunnels: after a member's 101, the
//! client's upgraded connection and the member's are joined until either
//! side closes, nothing moves for `idle_timeout`, or shutdown cuts it.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access::counted::Counted;
use crate::access::record::{Hook, Record};
use crate::access::Term;
use crate::backend::Backend;
use crate::body::{local, RespBody};
use crate::config::Limits;
use crate::conn::ConnState;

/// Joins a client's upgraded connection with the member's after a 101. The
/// tunnel runs on the proxy's task tracker, holding the client connection's
/// slot (its I/O keeps the `ConnState`), until either side closes, nothing
/// moves for `idle_timeout`, or the shutdown grace period ends.
pub(crate) fn tunnel(
    mut resp: Response<Incoming>,
    client: Option<hyper::upgrade::OnUpgrade>,
    backend: Arc<Backend>,
    conn: &Arc<ConnState>,
    limits: &Limits,
    mut rec: Option<Box<Record>>,
) -> Response<RespBody> {
    let Some(client) = client else {
        rec.end(Term::MEMBER_ERROR_HEAD);
        if let Some(mut r) = rec {
            r.status = 502;
            r.first_byte = None;
            crate::access::writer::finish(&conn.shared, r);
        }
        return local(StatusCode::BAD_GATEWAY, "upgrade not possible\n");
    };
    if let Some(r) = &mut rec {
        r.status = 101;
        r.tunnel = true;
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let inflight = backend.start_request();
    let idle: Duration = limits.idle_timeout;
    let state = conn.clone();
    conn.shared.tracker.spawn(async move {
        let _inflight = inflight;
        let term = run_tunnel(client, upstream, &backend, &state, idle, &mut rec).await;
        if let Some(mut r) = rec {
            r.term = term;
            crate::access::writer::finish(&state.shared, r);
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, RespBody::empty())
}

/// Runs a tunnel to its end; tells how it ended and counts its bytes.
pub(crate) async fn run_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    backend: &Backend,
    state: &ConnState,
    idle: Duration,
    rec: &mut Option<Box<Record>>,
) -> Term {
    let joined = tokio::select! {
        j = async { tokio::try_join!(client, upstream) } => j,
        _ = state.shared.kill.cancelled() => return Term::KILLED,
        _ = tokio::time::sleep(idle) => {
            tracing::debug!(member = %backend.member, "upgrade never completed");
            return Term::TUNNEL_IDLE;
        }
    };
    let (c, u) = match joined {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(member = %backend.member, error = %e, "upgrade failed");
            return Term::MEMBER_ERROR_DATA;
        }
    };
    let mut c = Counted::new(TokioIo::new(c));
    let mut u = TokioIo::new(u);
    let term = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
            Ok(_) => Term::NORMAL,
            Err(e) => {
                tracing::debug!(member = %backend.member, error = %e, "tunnel ended");
                Term::MEMBER_ERROR_DATA
            }
        },
        _ = state.idle_for(idle) => {
            tracing::debug!(member = %backend.member, idle = ?idle, "tunnel idle; closed");
            Term::TUNNEL_IDLE
        }
        _ = state.shared.kill.cancelled() => {
            tracing::debug!(member = %backend.member, "tunnel cut: shutdown grace period over");
            Term::KILLED
        }
    };
    if let Some(r) = rec {
        r.bytes_in += c.read;
        r.bytes_out += c.written;
    }
    term
}
