//! `/status.json`: the public, machine-readable view of a node (SPEC §6).
//!
//! Scripts and the CLI read it, so field names are an interface: the ones the
//! spec lists are always present; more may be added, none renamed.

use serde::{Deserialize, Serialize};

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub cluster: String,
    pub generation: u64,
    pub config_hash: String,
    /// `master|backup|fault|init`.
    pub role: String,
    pub priority: u8,
    pub reserved_ip: ReservedIpStatus,
    pub members: Vec<MemberStatus>,
    pub services: Vec<ServiceStatus>,
    pub listeners: Vec<ListenerStatus>,
    pub version: String,
    pub uptime_seconds: u64,
    /// Ids of members whose cluster document (generation or hash, as last
    /// advertised) differs from this node's; empty when in sync. A member
    /// never heard from is not counted (its `generation` is `null`).
    #[serde(default)]
    pub drift: Vec<String>,
}

/// Fills [`Status::drift`] from the members' advertised generations and hashes.
pub fn with_drift(mut s: Status) -> Status {
    s.drift = s
        .members
        .iter()
        .filter(|m| m.id != s.node)
        .filter(|m| {
            m.generation.is_some_and(|g| g != s.generation)
                || m.config_hash.as_ref().is_some_and(|h| *h != s.config_hash)
        })
        .map(|m| m.id.clone())
        .collect();
    s
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReservedIpStatus {
    pub address: Option<String>,
    pub held: bool,
}

/// A cluster member as this node knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub id: String,
    pub private_ip: String,
    pub priority: u8,
    /// `active|drain|maint`.
    pub state: String,
    /// `master|backup|fault|init|unknown`.
    pub role: String,
    /// The member's cluster-document generation, when known.
    pub generation: Option<u64>,
    /// Milliseconds since this node last heard the member; `None` if never.
    pub last_seen_ms: Option<u64>,
    /// The member's cluster-document hash (advertised), when known.
    #[serde(default)]
    pub config_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub hosts: Vec<String>,
    pub port: u16,
    pub members: Vec<ServiceMemberStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceMemberStatus {
    pub id: String,
    pub address: String,
    /// `up|down|unknown`.
    pub health: String,
    pub state: String,
    pub inflight: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    pub serving: bool,
}
