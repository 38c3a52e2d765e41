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

/// Facts of a client connection, copied into each of its requests' records.
#[derive(Debug)]
pub struct ConnFacts {
    pub listener: Arc<str>,
    pub tls: Option<TlsInfo>,
}

/// A record's texts keep at most this much capacity when it is reused.
const KEEP_CAPACITY: usize = 4096;

/// One line of the access log. Its texts are copies held in the record's own
/// strings, which keep their capacity when the record is reused (see
/// [`super::writer::AccessLog::begin`]): no allocation per request once
/// warm, and nothing shared with the connection (no reference counts touched
/// by the writer thread, no hold on hyper's read buffer).
#[derive(Debug)]
pub struct Record {
    /// When the request arrived (wall clock), set from `start` by the writer.
    pub time: SystemTime,
    pub start: Instant,
    pub client: SocketAddr,
    pub listener: String,
    /// The TLS version of the client connection, `None` for plain HTTP.
    pub tls: Option<&'static str>,
    /// Empty when the client sent no SNI.
    pub sni: String,
    /// The `Host` header (or the URI's authority), as received; empty if none.
    pub host: String,
    pub method: Method,
    /// The request target's path and query, as received.
    pub path: String,
    pub version: Version,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Empty until a service matched.
    pub service: String,
    /// Every member tried, in order, comma-separated; the last one answered
    /// if any did.
    pub tried: String,
    /// How many members `tried` lists, and where the last one starts.
    pub tried_count: u32,
    last_tried_at: usize,
    pub retries: u32,
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub total: Duration,
    /// Empty before the request was forwarded.
    pub request_id: String,
    pub term: Term,
    pub tunnel: bool,
    /// Client connections open when the request arrived.
    pub connections: usize,
}

impl Record {
    /// An empty record (its strings grow on first use and are kept).
    pub fn empty() -> Box<Record> {
        Box::new(Record {
            time: SystemTime::UNIX_EPOCH,
            start: Instant::now(),
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            listener: String::new(),
            tls: None,
            sni: String::new(),
            host: String::new(),
            method: Method::GET,
            path: String::new(),
            version: Version::HTTP_11,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            service: String::new(),
            tried: String::new(),
            tried_count: 0,
            last_tried_at: 0,
            retries: 0,
            connect: None,
            first_byte: None,
            total: Duration::ZERO,
            request_id: String::new(),
            term: Term::NORMAL,
            tunnel: false,
            connections: 0,
        })
    }

    /// Fills `self` (an empty or reused record) for a request whose head
    /// just arrived.
    pub fn fill<B>(
        &mut self,
        client: SocketAddr,
        conn: &ConnFacts,
        req: &http::Request<B>,
        connections: usize,
    ) {
        self.reset();
        // `time` is set by the writer from `start` (one wall-clock read per
        // batch instead of one per request).
        self.start = Instant::now();
        self.client = client;
        self.listener.push_str(&conn.listener);
        if let Some(t) = &conn.tls {
            self.tls = Some(t.version);
            self.sni.push_str(t.sni.as_deref().unwrap_or(""));
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .map(|h| h.to_str().ok());
        let host = host.unwrap_or_else(|| req.uri().authority().map(|a| a.as_str()));
        self.host.push_str(host.unwrap_or(""));
        self.method = req.method().clone();
        let uri = req.uri();
        self.path.push_str(
            uri.path_and_query()
                .map_or_else(|| uri.path(), |p| p.as_str()),
        );
        self.version = req.version();
        self.connections = connections;
    }

    /// Clears every field, keeping the strings' capacity (up to a bound).
    pub fn reset(&mut self) {
        for s in [
            &mut self.listener,
            &mut self.sni,
            &mut self.host,
            &mut self.path,
            &mut self.service,
            &mut self.tried,
            &mut self.request_id,
        ] {
            s.clear();
            s.shrink_to(KEEP_CAPACITY);
        }
        self.tls = None;
        self.status = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.tried_count = 0;
        self.last_tried_at = 0;
        self.retries = 0;
        self.connect = None;
        self.first_byte = None;
        self.total = Duration::ZERO;
        self.term = Term::NORMAL;
        self.tunnel = false;
    }

    /// The request target's path and query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The host as text (`-` if none or not visible ASCII).
    pub fn host(&self) -> &str {
        or_dash(&self.host)
    }

    /// The request id as text (empty before the request was forwarded).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The service matched, if any.
    pub fn service(&self) -> Option<&str> {
        (!self.service.is_empty()).then_some(self.service.as_str())
    }

    /// The member that answered (the last one tried), if a response came.
    pub fn member(&self) -> Option<&str> {
        self.first_byte
            .and((self.tried_count > 0).then(|| &self.tried[self.last_tried_at..]))
    }

    /// Moves the last `member` entry of `tried` to its end (a hedged
    /// connect won by a member tried earlier). No allocation.
    fn move_to_end(&mut self, member: &str) {
        if self.tried_count < 2 || &self.tried[self.last_tried_at..] == member {
            return;
        }
        let mut found = None;
        let mut at = 0;
        for entry in self.tried.split(',') {
            if entry == member {
                found = Some(at);
            }
            at += entry.len() + 1;
        }
        let Some(start) = found else { return };
        // `start` is not the last entry: remove it with its comma.
        self.tried
            .replace_range(start..start + member.len() + 1, "");
        self.tried_count -= 1;
        self.last_tried_at = self.tried.rfind(',').map_or(0, |c| c + 1);
        self.push_tried(member);
    }

    fn push_tried(&mut self, member: &str) {
        if self.tried_count > 0 {
            self.tried.push(',');
        }
        self.last_tried_at = self.tried.len();
        self.tried.push_str(member);
        self.tried_count += 1;
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
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
            r.service.clear();
            r.service.push_str(name);
        }
    }
    fn trying(&mut self, member: &Arc<str>, retry: bool) {
        if let Some(r) = self {
            r.push_tried(member);
            r.retries += u32::from(retry);
        }
    }
    fn connected(&mut self, member: &Arc<str>) {
        if let Some(r) = self {
            r.move_to_end(member);
            r.connect = Some(r.start.elapsed());
        }
    }
    fn first_byte(&mut self) {
        if let Some(r) = self {
            r.first_byte = Some(r.start.elapsed());
        }
    }
    fn request_id(&mut self, id: Option<&http::HeaderValue>) {
        if let (Some(r), Some(id)) = (self, id.and_then(|v| v.to_str().ok())) {
            r.request_id.clear();
            r.request_id.push_str(id);
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

#[cfg(test)]
mod tried_tests {
    use super::*;

    fn tried(names: &[&str]) -> Box<Record> {
        let mut r = Record::empty();
        for n in names {
            r.push_tried(n);
        }
        r
    }

    #[test]
    fn the_member_that_connected_moves_to_the_end() {
        let mut r = tried(&["a", "bb", "c"]);
        r.move_to_end("bb");
        assert_eq!(r.tried, "a,c,bb");
        r.first_byte = Some(Duration::ZERO);
        assert_eq!(r.member(), Some("bb"));
        r.move_to_end("a");
        assert_eq!(r.tried, "c,bb,a");
        assert_eq!(r.member(), Some("a"));
        r.move_to_end("a");
        r.move_to_end("zz");
        assert_eq!((r.tried.as_str(), r.tried_count), ("c,bb,a", 3));
        let mut one = tried(&["solo"]);
        one.move_to_end("solo");
        assert_eq!(one.tried, "solo");
    }

    #[test]
    fn a_reused_record_starts_empty() {
        let mut r = tried(&["a", "b"]);
        r.service.push_str("web");
        r.reset();
        assert_eq!(
            (r.tried.as_str(), r.tried_count, r.service()),
            ("", 0, None)
        );
        r.first_byte = Some(Duration::ZERO);
        assert_eq!(r.member(), None);
    }
}
