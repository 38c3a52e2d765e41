//! The admin API's wire types: the JSON bodies of `/status.json` and the
//! `/v1/...` calls, shared by the daemon (which answers) and the client
//! (which asks). Depends on nothing else in the crate. Field names are an
//! interface: none renamed, more may be added. The calls and their bodies:
//! `docs/control.md`.

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
    /// Ids of members heard lately whose cluster document (generation or
    /// hash, as last advertised) differs from this node's; empty when in
    /// sync. A member never heard from, or lost, is not drift.
    #[serde(default)]
    pub drift: Vec<String>,
    /// Ids of members heard from once but not for over [`LOST_AFTER_MS`]
    /// (down or cut off): shown as lost, never as drift.
    #[serde(default)]
    pub lost: Vec<String>,
    /// This node's last election transitions with their reasons, oldest first.
    #[serde(default)]
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReservedIpStatus {
    pub address: Option<String>,
    pub held: bool,
    /// A master in a split brain: the member it found holding the Reserved
    /// IP, which it cannot hear, and so stopped claiming from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepped_back_from: Option<String>,
}

/// A cluster member as this node knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub id: String,
    pub private_ip: String,
    /// `heard|lost|unknown` (this node hears the member's adverts or
    /// heartbeats within its down interval; `unknown` before the first one or
    /// with `vrrp3`), `self` for this node. A lost member gets no requests.
    #[serde(default)]
    pub liveness: String,
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
    /// Why the health last changed (the check's finding), and when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_changed_at: Option<String>,
    /// Over the last minute (see `rates`); absent until a minute's samples exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    pub serving: bool,
}

/// One election state change of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// RFC 3339, UTC.
    pub at: String,
    pub role: String,
    pub reason: String,
}

/// Body of `PUT /v1/cluster`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub base_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_hash: Option<String>,
    /// The cluster document as TOML text.
    pub document: String,
    /// This node is being removed: accept a document without it, then stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leave: bool,
}

/// Answer of a successful `PUT /v1/cluster`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Applied {
    pub generation: u64,
    pub config_hash: String,
    /// False when this node already had exactly this document.
    pub changed: bool,
    /// True when this node left the cluster and is stopping.
    #[serde(default)]
    pub leaving: bool,
}

/// Result of a successful reload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reloaded {
    pub generation: u64,
    pub config_hash: String,
}

/// One kept previous document.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct KeptDocument {
    pub generation: u64,
    pub config_hash: String,
    /// Milliseconds since the Unix epoch when it was replaced.
    pub replaced_at_ms: u64,
}

/// Body of every non-2xx answer: `{"error": kind, "message": text}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// `auth|config|conflict|not_found|state|internal|...`.
    pub error: String,
    pub message: String,
}

/// Body of a 409 answer to `PUT /v1/cluster`: the member's own generation
/// and hash, so the caller sees what it has instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConflictBody {
    /// Always `"conflict"`.
    pub error: String,
    pub message: String,
    pub generation: u64,
    pub config_hash: String,
}
