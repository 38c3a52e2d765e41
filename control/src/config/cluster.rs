//! The cluster document, `/var/lib/dynia/cluster.toml`: what must be
//! identical on every node (`docs/control.md`, "Files") — the generation counter, members,
//! services and election timing.
//!
//! This module owns its typed shape, its defaults, its canonical TOML form
//! (`dynia` commands write it) and its hash, the drift check: the hash is over
//! the canonical form, so comments, whitespace, key order and spelled-out
//! defaults in a file do not change it. The rules the values must follow live
//! in `validate`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::duration::Duration;
use std::net::IpAddr;

/// The whole cluster document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterDoc {
    /// A counter, +1 on every change.
    pub generation: u64,
    /// The cluster's name.
    pub cluster: String,
    /// `[election]`: election timing, the same on every member.
    #[serde(default)]
    pub election: ClusterElection,
    /// `[[member]]`: every node of the cluster.
    #[serde(default, rename = "member", skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// `[[service]]`: what the proxy serves.
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

impl ClusterDoc {
    /// The canonical TOML text of this document: what `dynia` commands write
    /// and what [`ClusterDoc::hash`] hashes. Parsing it gives this document back.
    pub fn to_toml(&self) -> String {
        // Every field is a string, integer, bool, table or array of those, and
        // no Option is serialized as None: serializing cannot fail.
        toml::to_string(self).expect("a ClusterDoc always serializes to TOML")
    }

    /// Lowercase hex SHA-256 of [`ClusterDoc::to_toml`]: equal documents have
    /// equal hashes however their files are formatted.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_toml().as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        hex
    }

    /// The member with this id.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `election.transport`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP unicast to every member, HMAC-SHA256 authenticated. The default.
    #[default]
    Dynia,
    /// RFC 5798 VRRPv3 packets (IP protocol 112) unicast to every member,
    /// keepalived-compatible, for migrations. Unauthenticated, no cluster
    /// generation in adverts, needs CAP_NET_RAW; see docs/election.md, "Transports".
    Vrrp3,
}

/// `[election]` of the cluster document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterElection {
    /// `"dynia"` or `"vrrp3"`. Default `"dynia"`.
    pub transport: Transport,
    /// Virtual router id, 1..=255. Default 51.
    pub vrid: u8,
    /// Time between adverts. Default 100ms: Master_Down_Interval = 3 × 100ms + skew ≈ 0.35 s, inside the 0.6 s failover target (200ms cannot meet it: 0.6 s + skew).
    pub advert_interval: Duration,
    /// A higher-priority node takes over from a lower one. Default true.
    pub preempt: bool,
    /// Wait before preempting. Default 0s.
    pub preempt_delay: Duration,
}

impl Default for ClusterElection {
    fn default() -> Self {
        ClusterElection {
            transport: Transport::Dynia,
            vrid: 51,
            advert_interval: Duration::from_millis(100),
            preempt: true,
            preempt_delay: Duration::from_millis(0),
        }
    }
}

/// `member.state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Serves traffic. The default.
    #[default]
    Active,
    /// Finishes what it has, gets no new requests; still health-checked.
    Drain,
    /// Out of service; not health-checked.
    Maint,
}

/// `[[member]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// A DNS label: `lb1`, `misty-owl` (`crate::names::check`).
    pub id: String,
    /// Where the proxy and the election reach this member.
    pub private_ip: IpAddr,
    /// Election priority, 1..=254.
    pub priority: u8,
    /// The DigitalOcean droplet id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub droplet_id: Option<u64>,
    /// `"active"`, `"drain"` or `"maint"`. Default `"active"`.
    #[serde(default)]
    pub state: MemberState,
    /// Where other members and `dynia` commands reach this member's admin
    /// API. Default: `private_ip` with the admin port of the node that asks
    /// (every node of a cluster usually listens on the same admin port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<std::net::SocketAddr>,
}

impl Member {
    /// This member's admin address as seen by a node whose own admin
    /// listener is on `local_admin_port`.
    pub fn admin_addr(&self, local_admin_port: u16) -> std::net::SocketAddr {
        self.admin
            .unwrap_or_else(|| std::net::SocketAddr::new(self.private_ip, local_admin_port))
    }
}

/// `[[service]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique name, for commands, logs and metrics.
    pub name: String,
    /// Host patterns: an exact name, `*.suffix`, or `*`.
    pub hosts: Vec<String>,
    /// Port on every member's private IP.
    pub port: u16,
    /// Retries on another member after a connect failure. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `[service.health]`: the health check.
    #[serde(default)]
    pub health: HealthChecks,
    /// `Strict-Transport-Security` on this service's HTTPS answers (never on
    /// plain HTTP): the header value, `"max-age=31536000; includeSubDomains"`,
    /// or a duration, `"8760h"` meaning `"max-age=31536000"`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
}

impl Service {
    /// The `Strict-Transport-Security` value this service sends, if any
    /// (`None` too when `hsts` is invalid: validation reports that).
    pub fn hsts_header(&self) -> Option<String> {
        self.hsts.as_deref().and_then(|h| hsts_header(h).ok())
    }
}

/// `hsts` as a header value: a duration becomes `max-age=SECONDS`; otherwise
/// the value must be `max-age=N` with optional `includeSubDomains` and
/// `preload` directives (RFC 6797 §6.1), separated by `;`.
pub fn hsts_header(value: &str) -> Result<String, String> {
    if let Ok(d) = value.parse::<Duration>() {
        return Ok(format!("max-age={}", d.as_millis() / 1000));
    }
    let mut max_age = false;
    let mut seen: Vec<String> = Vec::new();
    for directive in value.split(';').map(str::trim) {
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim())),
            None => (directive.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return Err(format!("directive {name:?} appears twice"));
        }
        match (name.as_str(), arg) {
            ("max-age", Some(n)) => {
                let n = n.trim_matches('"');
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 10 {
                    return Err(format!("max-age must be a number of seconds, not {n:?}"));
                }
                max_age = true;
            }
            ("includesubdomains" | "preload", None) => {}
            ("", None) => return Err("it has an empty directive".into()),
            _ => {
                return Err(format!(
                    "{directive:?} is not max-age=SECONDS, includeSubDomains or preload"
                ))
            }
        }
        seen.push(name);
    }
    if !max_age {
        return Err("max-age=SECONDS is missing".into());
    }
    Ok(value.trim().to_owned())
}

fn default_retries() -> u32 {
    2
}

/// `[service.health]`: HAProxy semantics; every key has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthChecks {
    /// Path of the `GET`. Default `/dynia-health`.
    pub path: String,
    /// Statuses that count as up. Default `[200]`.
    pub expect_status: Vec<u16>,
    /// Time between checks. Default 5s.
    pub interval: Duration,
    /// Time for one check. Default 2s.
    pub timeout: Duration,
    /// Failed checks in a row that mark a member DOWN. Default 3.
    pub fall: u32,
    /// Passed checks in a row that mark a member UP. Default 2.
    pub rise: u32,
    /// Time between (and bound of) the checks of a suspected member.
    /// Default: `interval / 10` within 100 ms–500 ms, at most `interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fastinter: Option<Duration>,
}

impl Default for HealthChecks {
    /// The data plane's own defaults: one source of truth.
    fn default() -> Self {
        let p = dynia_proxy::HealthConfig::default();
        HealthChecks {
            path: p.path,
            expect_status: p.expect_status,
            interval: p.interval.into(),
            timeout: p.timeout.into(),
            fall: p.fall,
            rise: p.rise,
            fastinter: p.fastinter.map(Into::into),
        }
    }
}
