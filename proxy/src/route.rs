//! Host routing: which service answers a request's `Host`.
//!
//! Exact names win over `*.suffix` patterns (longest suffix first), which win
//! over `*`. Built once per configuration; a lookup allocates nothing for the
//! usual lowercase host.

use std::collections::HashMap;

use http::{header, HeaderValue, Request};
use hyper::body::Incoming;

use crate::config::HostPattern;

/// Maps a host to an index into the configuration's service list.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, usize>,
    /// `(".example.com", service)`, longest suffix first.
    suffixes: Vec<(Box<str>, usize)>,
    any: Option<usize>,
}

impl Router {
    /// Builds the table from `(patterns, service index)` pairs.
    pub fn new<'a>(services: impl IntoIterator<Item = (&'a [HostPattern], usize)>) -> Router {
        let mut r = Router::default();
        for (patterns, idx) in services {
            for p in patterns {
                match p {
                    HostPattern::Exact(h) => {
                        r.exact.entry(h.as_str().into()).or_insert(idx);
                    }
                    HostPattern::Suffix(s) => r.suffixes.push((s.as_str().into(), idx)),
                    HostPattern::Any => {
                        r.any.get_or_insert(idx);
                    }
                }
            }
        }
        r.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        r
    }

    /// The service for `host` (a `Host` header value, possibly with a port).
    pub fn route(&self, host: &str) -> Option<usize> {
        let name = strip_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.route_lower(&name.to_ascii_lowercase())
        } else {
            self.route_lower(name)
        }
    }

    fn route_lower(&self, name: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        for (suffix, i) in &self.suffixes {
            if name.len() > suffix.len() && name.ends_with(&**suffix) {
                return Some(*i);
            }
        }
        self.any
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// The request's host: the `Host` header (a cheap clone of the received
/// bytes), else the URI authority (HTTP/2).
pub(crate) fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(h.clone());
    }
    req.uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_before_suffix_before_any() {
        let a = [p("app.example.com")];
        let b = [p("*.example.com")];
        let c = [p("*.deep.example.com")];
        let d = [p("*")];
        let r = Router::new([(&a[..], 0), (&b[..], 1), (&c[..], 2), (&d[..], 3)]);
        assert_eq!(r.route("app.example.com"), Some(0));
        assert_eq!(r.route("APP.example.com:8080"), Some(0));
        assert_eq!(r.route("app.example.com."), Some(0));
        assert_eq!(r.route("x.example.com"), Some(1));
        assert_eq!(r.route("x.deep.example.com"), Some(2));
        assert_eq!(r.route("example.com"), Some(3));
        assert_eq!(r.route("other.org"), Some(3));
    }

    #[test]
    fn unknown_without_wildcard() {
        let a = [p("app.example.com")];
        let r = Router::new([(&a[..], 0)]);
        assert_eq!(r.route("nope.example.com"), None);
        assert_eq!(r.route(""), None);
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("h:abc"), "h:abc");
    }
}
