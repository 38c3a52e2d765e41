//! The proxy's own view of its configuration: plain, already-validated data.
//!
//! The control layer parses the node file and the cluster document (TOML, with
//! locations for errors) and hands the proxy one [`ProxyConfig`]. Keeping the
//! proxy free of file formats means it can be driven by tests, the demo and the
//! daemon alike, and that every value here is already known to be sane:
//! [`ProxyConfig::validate`] re-checks the invariants the data path relies on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything the data plane needs; swapped as a whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Monotonic counter of the cluster document this was built from.
    pub generation: u64,
    pub listeners: Vec<ListenerConfig>,
    pub limits: Limits,
    pub services: Vec<ServiceConfig>,
}

/// One listening socket: plain HTTP, or TLS when it has certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// Plain listeners only: answer `308` to `https://` for every host a TLS
    /// listener has a certificate for, except a service's health path. The
    /// port is the one of the first TLS listener (in this list's order) with
    /// a certificate for the host, omitted when 443.
    pub redirect_https: bool,
    /// TLS certificates chosen by SNI, the first for clients without SNI or
    /// with an unknown name. Empty = plain HTTP. Read at every start and apply.
    pub certificates: Vec<CertificateFiles>,
}

/// A certificate chain (leaf first, then intermediates) and its private key,
/// PEM files; `key` may be the same file as `cert` (a combined PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Timeouts and size limits; every one has a safe default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a complete request head within this time.
    pub header_read_timeout: Duration,
    /// A keep-alive client connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// From the end of the request body to the response head, and between
    /// response body frames (a member that stalls mid-body is cut).
    pub response_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            max_header_bytes: 65536,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A service: the hosts it answers for, and its pool of every member's `private_ip:port`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: Arc<str>,
    pub hosts: Vec<HostPattern>,
    pub retries: u32,
    pub health: HealthConfig,
    /// `Strict-Transport-Security` set on this service's answers over TLS.
    pub hsts: Option<http::HeaderValue>,
    /// One entry per cluster member, in cluster-document order.
    pub members: Vec<MemberConfig>,
}

/// A member endpoint of a service's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub state: AdminState,
}

/// Operator-set state of a member (cluster document `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// Receives requests when healthy.
    Active,
    /// Finishes what it has, gets no new requests, keeps being checked.
    Drain,
    /// Gets no requests and no health checks.
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// Active health check, with HAProxy's `httpchk` semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub path: String,
    pub expect_status: Vec<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that turn an UP member DOWN.
    pub fall: u32,
    /// Consecutive successes that turn a DOWN member UP.
    pub rise: u32,
    /// Time between checks while a member is suspected (a passive failure,
    /// or results contrary to its state that have not decided yet), as
    /// HAProxy's `fastinter`; `None` for [`HealthConfig::fastinter_or_default`].
    pub fastinter: Option<Duration>,
}

/// `fastinter` when not set: `interval / 10`, within these bounds (and never
/// more than `interval`).
pub const FASTINTER_MIN: Duration = Duration::from_millis(100);
pub const FASTINTER_MAX: Duration = Duration::from_millis(500);

impl HealthConfig {
    /// The time between checks of a suspected member: `fastinter` if set,
    /// else `interval / 10` within 100–500 ms, at most `interval`.
    pub fn fastinter_or_default(&self) -> Duration {
        self.fastinter.unwrap_or_else(|| {
            (self.interval / 10)
                .clamp(FASTINTER_MIN, FASTINTER_MAX)
                .min(self.interval)
        })
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/dynia-health".into(),
            expect_status: vec![200],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            fastinter: None,
        }
    }
}

/// A host a service answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `app.example.com` (stored lowercase).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored as `.example.com`).
    Suffix(String),
    /// `*`: every host not matched otherwise.
    Any,
}

impl HostPattern {
    /// Parses `name`, `*.suffix` or `*`; `None` for anything else.
    pub fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Some(HostPattern::Any);
        }
        let valid = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(rest) = s.strip_prefix("*.") {
            return valid(rest).then(|| HostPattern::Suffix(format!(".{rest}")));
        }
        valid(&s).then_some(HostPattern::Exact(s))
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// A violated invariant of a [`ProxyConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("listener `{0}` is defined twice")]
    DuplicateListener(String),
    #[error("service `{0}` is defined twice")]
    DuplicateService(String),
    #[error("host `{host}` is claimed by services `{first}` and `{second}`")]
    DuplicateHost {
        host: String,
        first: String,
        second: String,
    },
    #[error("service `{service}`: member `{member}` appears twice")]
    DuplicateMember { service: String, member: String },
    #[error("service `{service}`: {what}")]
    BadHealth { service: String, what: String },
    #[error("limits: {0}")]
    BadLimit(String),
    #[error("listener `{listener}`: {what}")]
    BadListener { listener: String, what: String },
}

/// Upper bound on retries per request, whatever the config says.
pub const MAX_RETRIES: u32 = 10;
/// hyper refuses read buffers smaller than this.
pub const MIN_HEADER_BYTES: usize = 8192;

impl ProxyConfig {
    /// Checks what the data path assumes; the control layer has already given
    /// the user located errors, so these only guard programmatic callers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for l in &self.listeners {
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::DuplicateListener(l.name.clone()));
            }
            if l.redirect_https && !l.certificates.is_empty() {
                return Err(ConfigError::BadListener {
                    listener: l.name.clone(),
                    what: "redirect_https is for plain listeners; this one has certificates".into(),
                });
            }
        }
        let l = &self.limits;
        if l.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::BadLimit(format!(
                "max_header_bytes must be at least {MIN_HEADER_BYTES}"
            )));
        }
        if l.max_connections == 0 {
            return Err(ConfigError::BadLimit(
                "max_connections must be at least 1".into(),
            ));
        }
        for (what, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("idle_timeout", l.idle_timeout),
            ("connect_timeout", l.connect_timeout),
            ("response_timeout", l.response_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::BadLimit(format!("{what} must be more than 0")));
            }
        }
        let mut services = HashSet::new();
        let mut hosts: std::collections::HashMap<&HostPattern, &str> = Default::default();
        for s in &self.services {
            if !services.insert(&*s.name) {
                return Err(ConfigError::DuplicateService(s.name.to_string()));
            }
            for h in &s.hosts {
                if let Some(first) = hosts.insert(h, &s.name) {
                    return Err(ConfigError::DuplicateHost {
                        host: h.to_string(),
                        first: first.to_string(),
                        second: s.name.to_string(),
                    });
                }
            }
            let mut members = HashSet::new();
            for m in &s.members {
                if !members.insert(&*m.id) {
                    return Err(ConfigError::DuplicateMember {
                        service: s.name.to_string(),
                        member: m.id.to_string(),
                    });
                }
            }
            let h = &s.health;
            let bad = |what: &str| ConfigError::BadHealth {
                service: s.name.to_string(),
                what: what.to_string(),
            };
            if h.fall == 0 || h.rise == 0 {
                return Err(bad("fall and rise must be at least 1"));
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                return Err(bad("interval and timeout must be more than 0"));
            }
            if let Some(f) = h.fastinter {
                if f.is_zero() || f > h.interval {
                    return Err(bad("fastinter must be more than 0 and at most interval"));
                }
            }
            if !h.path.starts_with('/') {
                return Err(bad("health path must start with `/`"));
            }
            if h.expect_status.is_empty() {
                return Err(bad("expect_status must list at least one status"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("*"), Some(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("App.Example.com"),
            Some(HostPattern::Exact("app.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Some(HostPattern::Suffix(".example.com".into()))
        );
        for bad in ["", "*.", "a..b", "a b", "*x.com", "x.*.com", "a/b"] {
            assert_eq!(HostPattern::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fastinter_default_table() {
        let ms = Duration::from_millis;
        // (interval, fastinter set, effective)
        for (interval, set, want) in [
            (ms(5000), None, ms(500)),
            (ms(2000), None, ms(200)),
            (ms(30_000), None, ms(500)),
            (ms(500), None, ms(100)),
            (ms(50), None, ms(50)), // never more than interval
            (ms(5000), Some(ms(250)), ms(250)),
        ] {
            let h = HealthConfig {
                interval,
                fastinter: set,
                ..HealthConfig::default()
            };
            assert_eq!(h.fastinter_or_default(), want, "{interval:?} {set:?}");
        }
    }

    #[test]
    fn fastinter_is_validated() {
        let ms = Duration::from_millis;
        let with = |fastinter| ProxyConfig {
            services: vec![ServiceConfig {
                name: "web".into(),
                hosts: Vec::new(),
                retries: 2,
                health: HealthConfig {
                    fastinter,
                    ..HealthConfig::default()
                },
                hsts: None,
                members: Vec::new(),
            }],
            generation: 1,
            listeners: Vec::new(),
            limits: Limits::default(),
        };
        assert_eq!(with(None).validate(), Ok(()));
        assert_eq!(with(Some(ms(5000))).validate(), Ok(()));
        for bad in [ms(0), ms(5001)] {
            assert!(
                matches!(
                    with(Some(bad)).validate(),
                    Err(ConfigError::BadHealth { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
