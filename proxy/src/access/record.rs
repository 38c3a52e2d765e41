//! One access-log record and the hooks the request path calls to fill it.
//!
//! The hooks are methods on `Option<Box<Record>>` so that the request path
//! calls them unconditionally and they cost a branch when the log is off.
//! The termination state is HAProxy's two letters: who ended the exchange
//! (`-` normally, `C` client, `S` member, `s` member timeout, `c` client
//! timeout, `L` answered locally, `K` cut at shutdown) and in which phase (`R`
//! request, `C` connect, `H` waiting for the response head, `D` data, `-`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Version};

/// HAProxy's two-letter termination state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term(pub [u8; 2]);

impl Term {
    pub const NORMAL: Term = Term(*b"--");
    pub const CLIENT_ABORT: Term = Term(*b"CD");
    pub const CLIENT_REQUEST_ABORT: Term = Term(*b"CR");
    pub const CLIENT_TIMEOUT: Term = Term(*b"cR");
    pub const TUNNEL_IDLE: Term = Term(*b"cD");
    pub const NO_MEMBER: Term = Term(*b"SC");
    pub const MEMBER_ERROR_HEAD: Term = Term(*b"SH");
    pub const MEMBER_ERROR_DATA: Term = Term(*b"SD");
    pub const MEMBER_TIMEOUT_HEAD: Term = Term(*b"sH");
    pub const MEMBER_TIMEOUT_DATA: Term = Term(*b"sD");
    pub const LOCAL: Term = Term(*b"LR");
    pub const KILLED: Term = Term(*b"KD");

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

/// TLS facts of the client connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: &'static str,
    pub sni: Option<Box<str>>,
}

/// Facts of a client connection shared by its requests' records.
#[derive(Debug)]
pub struct ConnFacts {
    pub listener: Arc<str>,
    pub tls: Option<TlsInfo>,
}

/// One line of the access log.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    pub start: Instant,
    pub client: SocketAddr,
    pub conn: Arc<ConnFacts>,
    /// The `Host` header (or the URI's authority), as received.
    pub host: Option<http::HeaderValue>,
    pub method: Method,
    /// The request target as received (a cheap clone of hyper's bytes).
    pub uri: http::Uri,
    pub version: Version,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub service: Option<Arc<str>>,
    /// Every member tried, in order; the last one answered if any did.
    pub tried: Vec<Arc<str>>,
    pub retries: u32,
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub total: Duration,
    pub request_id: Option<http::HeaderValue>,
    pub term: Term,
    pub tunnel: bool,
    /// Client connections open when the request arrived.
    pub connections: usize,
}

impl Record {
    /// A record for a request whose head just arrived.
    pub fn begin(
        client: SocketAddr,
        conn: Arc<ConnFacts>,
        req: &http::Request<hyper::body::Incoming>,
        connections: usize,
    ) -> Box<Record> {
        let host = crate::route::request_host(req);
        Box::new(Record {
            time: SystemTime::now(),
            start: Instant::now(),
            client,
            conn,
            host,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            service: None,
            tried: Vec::new(),
            retries: 0,
            connect: None,
            first_byte: None,
            total: Duration::ZERO,
            request_id: None,
            term: Term::NORMAL,
            tunnel: false,
            connections,
        })
    }

    /// The request target's path and query.
    pub fn path(&self) -> &str {
        self.uri
            .path_and_query()
            .map_or_else(|| self.uri.path(), |p| p.as_str())
    }

    /// The host as text (`-` if none or not visible ASCII).
    pub fn host(&self) -> &str {
        self.host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-")
    }

    /// The request id as text (empty before the request was forwarded).
    pub fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    }

    /// The member that answered (the last one tried), if a response came.
    pub fn member(&self) -> Option<&str> {
        self.first_byte.and(self.tried.last().map(|m| &**m))
    }
}

/// Hooks of the request path; each is a no-op when the log is off.
pub(crate) trait Hook {
    fn service(&mut self, name: &Arc<str>);
    fn trying(&mut self, member: &Arc<str>, retry: bool);
    /// A connection to `member` is ready; with hedged connects it may not be
    /// the last one tried, so it moves to the end of `tried`.
    fn connected(&mut self, member: &Arc<str>);
    fn first_byte(&mut self);
    fn request_id(&mut self, id: Option<&http::HeaderValue>);
    fn bytes_in(&mut self, n: u64);
    fn end(&mut self, term: Term);
}

impl Hook for Option<Box<Record>> {
    fn service(&mut self, name: &Arc<str>) {
        if let Some(r) = self {
            r.service = Some(name.clone());
        }
    }
    fn trying(&mut self, member: &Arc<str>, retry: bool) {
        if let Some(r) = self {
            r.tried.push(member.clone());
            r.retries += u32::from(retry);
        }
    }
    fn connected(&mut self, member: &Arc<str>) {
        if let Some(r) = self {
            if let Some(at) = r.tried.iter().rposition(|m| m == member) {
                let m = r.tried.remove(at);
                r.tried.push(m);
            }
            r.connect = Some(r.start.elapsed());
        }
    }
    fn first_byte(&mut self) {
        if let Some(r) = self {
            r.first_byte = Some(r.start.elapsed());
        }
    }
    fn request_id(&mut self, id: Option<&http::HeaderValue>) {
        if let (Some(r), Some(id)) = (self, id) {
            r.request_id = Some(id.clone());
        }
    }
    fn bytes_in(&mut self, n: u64) {
        if let Some(r) = self {
            r.bytes_in = n;
        }
    }
    fn end(&mut self, term: Term) {
        if let Some(r) = self {
            r.term = term;
        }
    }
}

/// A request's record from its head to the end of its response body; sent
/// when dropped, so that a client that goes away mid-way still gets a line
/// (`CH` before the response head, `CD` during the body).
pub(crate) struct Pending {
    pub(crate) rec: Option<Box<Record>>,
    /// Only while there is a record: nothing is cloned when the log is off.
    shared: Option<Arc<crate::Shared>>,
    /// The response body has ended (or there is none).
    pub(crate) done: bool,
}

impl Pending {
    pub(crate) fn new(rec: Option<Box<Record>>, shared: &Arc<crate::Shared>) -> Pending {
        Pending {
            shared: rec.as_ref().map(|_| shared.clone()),
            rec,
            done: false,
        }
    }

    /// Counts response body bytes sent to the client.
    pub(crate) fn sent(&mut self, n: usize) {
        if let Some(r) = &mut self.rec {
            r.bytes_out += n as u64;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (Some(mut r), Some(shared)) = (self.rec.take(), self.shared.take()) else {
            return;
        };
        if r.term == Term::NORMAL {
            if r.status == 0 {
                r.term = Term(*b"CH");
            } else if !self.done {
                r.term = Term::CLIENT_ABORT;
            }
        }
        super::writer::finish(&shared, r);
    }
}
