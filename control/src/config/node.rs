//! The node file, `/etc/dynia/dynia.toml`: what belongs to this node only
//! (`docs/control.md`, "Files") — identity, listeners and certificate paths, the admin address,
//! limits, paths of secrets, Reserved-IP driver settings and hooks.
//!
//! This module owns the typed shape of that file and its defaults. Every
//! section except `[node]` may be omitted; every key that has a default may be
//! omitted. Unknown keys are refused so a misspelling never silently falls
//! back to a default. The rules the values must follow live in `validate`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::Duration;

/// The whole node file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// `[node]`: this node's identity.
    pub node: Node,
    /// `[admin]`: the admin listener.
    #[serde(default)]
    pub admin: Admin,
    /// `[[listener]]`: the proxy's listeners.
    #[serde(default, rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// `[limits]`: timeouts and limits of the proxy.
    #[serde(default)]
    pub limits: NodeLimits,
    /// `[election]`: this node's side of the election.
    #[serde(default)]
    pub election: NodeElection,
    /// `[reserved_ip]`: how this node claims the Reserved IP.
    #[serde(default)]
    pub reserved_ip: ReservedIp,
    /// `[hooks]`: executables run on election state changes.
    #[serde(default)]
    pub hooks: Hooks,
    /// `[log]`: the daemon's log format and the access log.
    #[serde(default)]
    pub log: Log,
    /// The file this was parsed from, so that [`super::validate_pair`] can
    /// point at its lines. `Origin::default()` for a node file built in
    /// memory; never serialized, ignored by `==`.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a node file was parsed from: its path and text.
#[derive(Clone, Default)]
pub struct Origin(Option<Arc<OriginText>>);

struct OriginText {
    path: PathBuf,
    text: String,
}

impl Origin {
    pub(crate) fn new(path: &Path, text: &str) -> Self {
        Origin(Some(Arc::new(OriginText {
            path: path.to_path_buf(),
            text: text.to_owned(),
        })))
    }

    /// The file's path, when parsed from one.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref().map(|o| o.path.as_path())
    }

    pub(crate) fn text(&self) -> Option<&str> {
        self.0.as_deref().map(|o| o.text.as_str())
    }
}

impl PartialEq for Origin {
    /// Two node files are equal by their settings, wherever they came from.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(p) => write!(f, "Origin({})", p.display()),
            None => f.write_str("Origin(in memory)"),
        }
    }
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This node's member id in the cluster document (a DNS label: `lb1`, `misty-owl`).
    pub id: String,
    /// The private IP, or "auto" to read it from the metadata service.
    pub private_ip: PrivateIp,
    /// Where `cluster.toml` and `snapshots/` live. Default `/var/lib/dynia`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Proxy worker threads; 0 = one per CPU. Default 0.
    #[serde(default)]
    pub worker_threads: u32,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/dynia")
}

/// `node.private_ip`: an address, or `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrivateIp {
    /// Read it from the DigitalOcean metadata service at start.
    Auto,
    /// This address.
    Addr(IpAddr),
}

impl fmt::Display for PrivateIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateIp::Auto => f.write_str("auto"),
            PrivateIp::Addr(ip) => write!(f, "{ip}"),
        }
    }
}

impl FromStr for PrivateIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(PrivateIp::Auto);
        }
        s.parse().map(PrivateIp::Addr).map_err(|_| {
            format!(
                "invalid private_ip {s:?}: write an IP address such as \"10.10.0.11\", or \"auto\""
            )
        })
    }
}

impl Serialize for PrivateIp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PrivateIp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of `/metrics`, `/status`, `/status.json` and `/v1/…`. Default `127.0.0.1:9180`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The admin token's file (mode 0600), required by `/v1/…` calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

/// `[[listener]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// A name for logs and metrics, unique in the file.
    pub name: String,
    /// The socket address to bind, e.g. `0.0.0.0:443`.
    pub bind: SocketAddr,
    /// Answer 308 to https for every host that has a certificate. Default false.
    #[serde(default)]
    pub redirect_https: bool,
    /// `[[listener.certificate]]`: TLS certificates, chosen by SNI. None = plain HTTP.
    #[serde(default, rename = "certificate", skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
}

/// `[[listener.certificate]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[limits]`: every key has a safe default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeLimits {
    /// Time to read a request's headers. Default 10s.
    pub header_read_timeout: Duration,
    /// Idle keep-alive time of a client connection. Default 60s.
    pub idle_timeout: Duration,
    /// Time to connect to a member. Default 2s.
    pub connect_timeout: Duration,
    /// Time for a member's response headers. Default 30s.
    pub response_timeout: Duration,
    /// Largest request header block, in bytes. Default 65536.
    pub max_header_bytes: u64,
    /// Most client connections at once; excess is refused. Default 10000.
    pub max_connections: u64,
    /// Time to finish in-flight requests on SIGTERM. Default 30s.
    pub shutdown_grace: Duration,
}

impl Default for NodeLimits {
    /// The data plane's own defaults: one source of truth.
    fn default() -> Self {
        let p = dynia_proxy::Limits::default();
        NodeLimits {
            header_read_timeout: p.header_read_timeout.into(),
            idle_timeout: p.idle_timeout.into(),
            connect_timeout: p.connect_timeout.into(),
            response_timeout: p.response_timeout.into(),
            max_header_bytes: p.max_header_bytes as u64,
            max_connections: p.max_connections as u64,
            shutdown_grace: p.shutdown_grace.into(),
        }
    }
}

/// `[election]` of the node file: this node's side of the election.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeElection {
    /// The cluster key's file (mode 0600), HMAC-SHA256 key of the `dynia`
    /// transport; required when the cluster document's transport is `dynia`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// UDP port of the `dynia` transport. Default 5405.
    #[serde(default = "default_election_port")]
    pub port: u16,
    /// Real-time priority (SCHED_RR, 1..=99) of the election thread, so a
    /// saturated machine cannot delay adverts past the backups'
    /// Master_Down_Interval (keepalived's `vrrp_rt_priority`); 0 = normal
    /// scheduling. Needs CAP_SYS_NICE; without it the thread runs at normal
    /// priority and says so in the log. Default 10.
    #[serde(default = "default_rt_priority")]
    pub rt_priority: u8,
}

fn default_election_port() -> u16 {
    5405
}

fn default_rt_priority() -> u8 {
    10
}

impl Default for NodeElection {
    fn default() -> Self {
        NodeElection {
            key_file: None,
            port: default_election_port(),
            rt_priority: default_rt_priority(),
        }
    }
}

/// `reserved_ip.driver`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// The DigitalOcean API assigns the Reserved IP.
    #[serde(rename = "digitalocean")]
    DigitalOcean,
    /// The address is added to an interface and announced by gratuitous ARP.
    L2,
    /// No Reserved IP (hooks may still act). The default.
    #[default]
    None,
}

/// `[reserved_ip]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedIp {
    /// `"digitalocean"`, `"l2"` or `"none"`. Default `"none"`.
    #[serde(default)]
    pub driver: DriverKind,
    /// The Reserved IP; required by `digitalocean` and `l2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// The DigitalOcean API token's file (mode 0600); `digitalocean` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// This droplet's id; default: from the metadata service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub droplet_id: Option<u64>,
    /// Default `https://api.digitalocean.com`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Default `http://169.254.169.254`.
    #[serde(default = "default_metadata_url")]
    pub metadata_url: String,
    /// The interface that gets the address; `l2` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Prefix length of the address on the interface; `l2` only. Default: 32
    /// for IPv4, 128 for IPv6 (see [`ReservedIp::prefix_len`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// Allow a plain `http://` `api_url` on a host that is not loopback (the
    /// token would cross the network in clear); `digitalocean` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http: bool,
}

fn default_api_url() -> String {
    "https://api.digitalocean.com".to_owned()
}

fn default_metadata_url() -> String {
    "http://169.254.169.254".to_owned()
}

impl Default for ReservedIp {
    fn default() -> Self {
        ReservedIp {
            driver: DriverKind::None,
            address: None,
            token_file: None,
            droplet_id: None,
            api_url: default_api_url(),
            metadata_url: default_metadata_url(),
            interface: None,
            prefix: None,
            allow_plain_http: false,
        }
    }
}

impl ReservedIp {
    /// The prefix length to use for `l2`: `prefix`, else a host route for the
    /// address's family. `None` without an address.
    pub fn prefix_len(&self) -> Option<u8> {
        match (self.prefix, self.address) {
            (Some(p), _) => Some(p),
            (None, Some(IpAddr::V4(_))) => Some(32),
            (None, Some(IpAddr::V6(_))) => Some(128),
            (None, None) => None,
        }
    }
}

/// `[hooks]`: executables run with arguments `<state> <address> <priority>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run on becoming MASTER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_master: Option<PathBuf>,
    /// Run on becoming BACKUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_backup: Option<PathBuf>,
    /// Run on entering FAULT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_fault: Option<PathBuf>,
}

/// `[log]`: how the daemon logs (see `docs/observability.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// The daemon's own lines on stderr: `text` (key=value) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// One line per request or tunnel: `off` (default), `logfmt`, `json` or
    /// `haproxy` (HAProxy's httplog layout).
    #[serde(default)]
    pub access: AccessFormat,
    /// Where access-log lines go (appended); default stdout (the journal
    /// under systemd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_file: Option<PathBuf>,
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log] access`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    #[default]
    Off,
    Logfmt,
    Json,
    Haproxy,
}
