//! One (service, member) endpoint: its health, its in-flight count and its
//! pool of kept-alive HTTP/1.1 connections.
//!
//! A `Backend` outlives configuration swaps for as long as its
//! (service, member, address) still exists, which is how health state survives
//! reloads. Everything the data path reads here is an atomic; the idle pool is
//! a bounded lock-free queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::hedge::ConnectEwma;
use crate::liveness::MemberLiveness;
use crate::metrics::MemberMetrics;
use crate::upload::ReqBody;

/// Idle upstream connections kept per backend.
pub const POOL_CAPACITY: usize = 256;
/// An idle upstream connection older than this is closed rather than reused.
pub const POOL_IDLE_MAX: Duration = Duration::from_secs(30);
/// A request that must not be sent twice (see `forward`) only takes a pooled
/// connection idle for less than this: members close idle keep-alive
/// connections after 2 s (gunicorn) to 75 s (nginx), and a request written
/// as that close crosses it cannot be told from one the member received and
/// then failed on, so it is not sent again. Well under the shortest common
/// keep-alive, such a crossing becomes rare.
pub const UNSAFE_REUSE_IDLE: Duration = Duration::from_millis(500);

/// Health of a member for one service, as the checker last judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet (or in MAINT): routable, passive failures still retry.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Up => 1,
            Health::Down => 2,
        }
    }
}

/// A member endpoint of one service.
pub struct Backend {
    pub service: Arc<str>,
    pub member: Arc<str>,
    pub addr: SocketAddr,
    health: AtomicU8,
    inflight: AtomicUsize,
    pub pool: ConnPool,
    pub metrics: MemberMetrics,
    /// Woken by a passive failure or [`Backend::suspect`] so the checker
    /// looks at once.
    pub check_now: Notify,
    /// Whether the election hears the member (see [`MemberLiveness`]).
    pub liveness: MemberLiveness,
    /// Average time of this member's successful connects (hedging, `hedge`).
    pub connect_ewma: ConnectEwma,
    /// The reason and time of the last health change, for the status page.
    last_change: std::sync::Mutex<Option<(String, std::time::SystemTime)>>,
}

impl Backend {
    pub fn new(
        service: Arc<str>,
        member: Arc<str>,
        addr: SocketAddr,
        metrics: MemberMetrics,
    ) -> Backend {
        Backend {
            service,
            member,
            addr,
            health: AtomicU8::new(Health::Unknown.to_u8()),
            inflight: AtomicUsize::new(0),
            pool: ConnPool::new(),
            metrics,
            check_now: Notify::new(),
            liveness: MemberLiveness::default(),
            connect_ewma: ConnectEwma::default(),
            last_change: std::sync::Mutex::new(None),
        }
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Records why the health just changed (the checker's reason).
    pub(crate) fn note_change(&self, reason: &str) {
        let now = std::time::SystemTime::now();
        *self.last_change.lock().unwrap_or_else(|p| p.into_inner()) = Some((reason.into(), now));
    }

    /// The reason and time of the last health change, if any.
    pub fn last_change(&self) -> Option<(String, std::time::SystemTime)> {
        self.last_change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_health(&self, h: Health) {
        self.health.store(h.to_u8(), Ordering::Relaxed);
        self.metrics.up.set(i64::from(h == Health::Up));
    }

    /// Requests to this member whose response has not fully passed yet.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    /// Records a connect error, reset or timeout seen by a request (an
    /// abandoned connect included, see `forward`), and suspects the member.
    pub(crate) fn passive_failure(&self) {
        self.metrics.failures.inc();
        self.metrics.errors.inc();
        self.suspect();
    }

    /// Makes the checker look at this member at once, then every `fastinter`
    /// until its checks decide (DOWN after `fall` failures, or a clean
    /// streak): for anything that suspects the member without a request
    /// failing, such as the election no longer hearing its node. Cheap and
    /// idempotent: calls while a check is pending are one wake-up.
    pub fn suspect(&self) {
        self.check_now.notify_one();
    }

    /// A pooled connection idle for less than `max_idle` that is still
    /// usable, if any. The member may close it just as a request goes out,
    /// which the forwarder handles (see `forward`).
    pub(crate) async fn pooled(&self, max_idle: Duration) -> Option<Upstream> {
        // `take` skips connections already seen closed or idle too long;
        // `ready` waits for the connection task to have finished the previous
        // exchange (it fails if the member closed the connection meanwhile).
        // Bounded by the pool's capacity.
        while let Some(mut up) = self.pool.take(max_idle) {
            if up.sender.ready().await.is_ok() {
                return Some(up);
            }
        }
        None
    }

    /// Opens a new HTTP/1.1 connection; `upgrades` keeps it usable for a tunnel.
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
        upgrades: bool,
    ) -> Result<Upstream, ConnectError> {
        let began = Instant::now();
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => {
                self.connect_ewma.observe(began.elapsed());
                s
            }
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Err(_) => return Err(ConnectError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let addr = self.addr;
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        }
        Ok(Upstream {
            sender,
            since: Instant::now(),
            fd,
        })
    }
}

/// Why a connection to a member could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
}

impl ConnectError {
    /// This node ran out of file descriptors: not the member's fault.
    pub fn is_local(&self) -> bool {
        matches!(self, ConnectError::Io(e) if is_out_of_descriptors(e))
    }
}

/// EMFILE or ENFILE: the process or the system has no descriptor left.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// An HTTP/1.1 connection to a member, ready for one request.
pub struct Upstream {
    pub(crate) sender: http1::SendRequest<ReqBody>,
    since: Instant,
    /// The socket's descriptor, owned by the connection task: only read
    /// (see [`Upstream::unacked`]) while the connection is open.
    fd: std::os::fd::RawFd,
}

impl Upstream {
    /// The socket, for [`unacked`] while a request is outstanding on it.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.fd
    }
}

/// Bytes written on socket `fd` that the peer's TCP stack has not
/// acknowledged (`SIOCOUTQ`); `None` if the call fails. A slow app's kernel
/// acknowledges a request within a delayed-ACK time (at most 200 ms on
/// Linux); a blackholed or dead member's never does. Only called while a
/// request is outstanding on the connection, so the connection task still
/// owns `fd`.
pub(crate) fn unacked(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `n` is one.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then_some(usize::try_from(n).unwrap_or(0))
}

/// Bounded, lock-free pool of idle connections to one member.
pub struct ConnPool {
    idle: ArrayQueue<Upstream>,
}

impl ConnPool {
    fn new() -> ConnPool {
        ConnPool {
            idle: ArrayQueue::new(POOL_CAPACITY),
        }
    }

    /// Returns a connection whose previous exchange completed.
    pub(crate) fn put(&self, mut up: Upstream) {
        if up.sender.is_closed() {
            return;
        }
        up.since = Instant::now();
        let _ = self.idle.push(up);
    }

    fn take(&self, max_idle: Duration) -> Option<Upstream> {
        let max_idle = max_idle.min(POOL_IDLE_MAX);
        while let Some(up) = self.idle.pop() {
            if !up.sender.is_closed() && up.since.elapsed() < max_idle {
                return Some(up);
            }
        }
        None
    }

    /// Closes idle connections unused for `max_idle` or closed by the
    /// member, so that memory and members' sockets are given back when traffic
    /// stops (HAProxy purges idle server connections likewise, see
    /// `pool-purge-delay`). Bounded: looks at each connection at most once.
    pub fn purge(&self, max_idle: Duration) -> usize {
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            let Some(up) = self.idle.pop() else { break };
            if up.sender.is_closed() || up.since.elapsed() >= max_idle {
                closed += 1;
            } else if self.idle.push(up).is_err() {
                closed += 1; // refilled meanwhile: the newer ones stay
            }
        }
        closed
    }

    /// Closes every idle connection (the member left the configuration).
    pub fn clear(&self) {
        while self.idle.pop().is_some() {}
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// Counts a request against a member until dropped.
pub struct InflightGuard(Arc<Backend>);

impl InflightGuard {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream connection over an in-memory pipe; the other end is returned
    /// so the test decides when the "member" hangs up.
    async fn upstream() -> (Upstream, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (sender, conn) = http1::handshake::<_, ReqBody>(TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(conn);
        let up = Upstream {
            sender,
            since: Instant::now(),
            fd: -1,
        };
        (up, theirs)
    }

    #[tokio::test]
    async fn purge_closes_expired_and_hung_up_connections_only() {
        let pool = ConnPool::new();
        let (a, _a_peer) = upstream().await;
        let (b, b_peer) = upstream().await;
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.purge(Duration::from_secs(3600)), 0);
        assert_eq!(pool.idle(), 2);

        // The member closes one connection: the next purge drops it.
        drop(b_peer);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.purge(Duration::from_secs(3600)) == 0 {
            assert!(Instant::now() < deadline, "hang-up never noticed");
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle(), 1);

        // Everything idle longer than the bound goes.
        assert_eq!(pool.purge(Duration::ZERO), 1);
        assert_eq!(pool.idle(), 0);
    }
}
