//! `/status.json`: the public, machine-readable view of a node (SPEC §6),
//! and [`ClusterStatus`], the whole cluster as `dynia status` and the
//! `/status` page show it (every member's own `/status.json`, read at once).
//!
//! Scripts and the CLI read them, so field names are an interface: the ones
//! the spec lists are always present; more may be added, none renamed.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::wire::{
    ListenerStatus, MemberStatus, ReservedIpStatus, ServiceMemberStatus, ServiceStatus, Status,
};

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

/// A member whose `/status.json` could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unreachable {
    pub id: String,
    pub error: String,
}

/// The cluster in one view: this node's status document (every SPEC §6
/// field) in which each other member's `role`, `priority`, `generation` and
/// `config_hash` come from that member's own `/status.json`, read just now.
///
/// `drift` lists every member not confirmed to have this node's generation
/// and hash: those that answered with another, and those that did not
/// answer (their entry keeps the generation they last advertised to this
/// node, if any, and `role` "unknown"). `reserved_ip_holders` are the members
/// whose own status says they hold the Reserved IP (`reserved_ip.held`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    #[serde(flatten)]
    pub status: Status,
    pub unreachable: Vec<Unreachable>,
    pub reserved_ip_holders: Vec<String>,
    /// Masters in a split brain that stepped back from the Reserved IP:
    /// (that master, the holder it found).
    #[serde(default)]
    pub stepped_back: Vec<(String, String)>,
}

/// Asks every member in `peers` (id, client) for its `/status.json` at once
/// (each bounded by its client's timeout) and combines the answers with
/// this node's `local` status.
pub async fn gather(
    local: Status,
    peers: Vec<(String, crate::client::AdminClient)>,
) -> ClusterStatus {
    let (ids, clients): (Vec<String>, Vec<_>) = peers.into_iter().unzip();
    let answers = crate::client::statuses(clients).await;
    combine(
        local,
        ids.into_iter()
            .zip(answers.into_iter().map(|r| r.map_err(|e| e.to_string())))
            .collect(),
    )
}

/// [`gather`] without the I/O: `answers` are (member id, its status or why not).
pub fn combine(mut s: Status, answers: Vec<(String, Result<Status, String>)>) -> ClusterStatus {
    let mut holders = Vec::new();
    let mut stepped_back = Vec::new();
    if s.reserved_ip.held {
        holders.push(s.node.clone());
    }
    if let Some(h) = &s.reserved_ip.stepped_back_from {
        stepped_back.push((s.node.clone(), h.clone()));
    }
    let mut unreachable = Vec::new();
    for m in s.members.iter_mut().filter(|m| m.id != s.node) {
        let Some((_, answer)) = answers.iter().find(|(id, _)| *id == m.id) else {
            continue;
        };
        match answer {
            Ok(x) if x.node == m.id => {
                m.role = x.role.clone();
                m.priority = x.priority;
                m.generation = Some(x.generation);
                m.config_hash = Some(x.config_hash.clone());
                if x.reserved_ip.held {
                    holders.push(m.id.clone());
                }
                if let Some(h) = &x.reserved_ip.stepped_back_from {
                    stepped_back.push((m.id.clone(), h.clone()));
                }
            }
            Ok(x) => {
                m.role = "unknown".into();
                unreachable.push(Unreachable {
                    id: m.id.clone(),
                    error: format!("its admin address answers as node {:?}", x.node),
                });
            }
            Err(e) => {
                m.role = "unknown".into();
                unreachable.push(Unreachable {
                    id: m.id.clone(),
                    error: e.clone(),
                });
            }
        }
    }
    s.drift = s
        .members
        .iter()
        .filter(|m| m.id != s.node)
        .filter(|m| {
            unreachable.iter().any(|u| u.id == m.id)
                || m.generation != Some(s.generation)
                || m.config_hash.as_ref() != Some(&s.config_hash)
        })
        .map(|m| m.id.clone())
        .collect();
    ClusterStatus {
        status: s,
        unreachable,
        reserved_ip_holders: holders,
        stepped_back,
    }
}

impl ClusterStatus {
    /// Services UP / services listing member `id`, as this node sees them.
    pub fn services_up(&self, id: &str) -> (usize, usize) {
        self.status.services.iter().fold((0, 0), |(u, t), svc| {
            let h = svc.members.iter().find(|x| x.id == id);
            (
                u + usize::from(h.is_some_and(|h| h.health == "up")),
                t + usize::from(h.is_some()),
            )
        })
    }

    /// Why member `id` is unreachable, if it is.
    pub fn unreachable(&self, id: &str) -> Option<&str> {
        self.unreachable
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.error.as_str())
    }

    /// "north-fox", "a and b", or "nobody".
    pub fn holder_text(&self) -> String {
        if self.reserved_ip_holders.is_empty() {
            "nobody".into()
        } else {
            self.reserved_ip_holders.join(" and ")
        }
    }

    /// One line per master that stepped back from the Reserved IP in a
    /// split brain.
    pub fn split_brain_lines(&self) -> Vec<String> {
        self.stepped_back
            .iter()
            .map(|(m, h)| {
                format!("split brain: {m} is master but cannot hear {h}, which holds the Reserved IP; {m} stepped back from it until {h} is heard again or stops")
            })
            .collect()
    }

    /// One line naming the members in drift and the command that fixes it;
    /// `None` when every member answered with this node's document.
    pub fn drift_line(&self, node_path: Option<&Path>) -> Option<String> {
        let s = &self.status;
        if s.drift.is_empty() {
            return None;
        }
        let short =
            |h: Option<&str>| h.map_or("?".to_string(), |h| h[..12.min(h.len())].to_string());
        let list: Vec<String> = s
            .members
            .iter()
            .filter(|m| s.drift.contains(&m.id))
            .map(|m| {
                let generation = m.generation.map_or("?".into(), |g| g.to_string());
                match self.unreachable(&m.id) {
                    Some(_) => format!(
                        "{} (unreachable; last advertised generation {generation})",
                        m.id
                    ),
                    None => format!(
                        "{} (generation {generation} hash {})",
                        m.id,
                        short(m.config_hash.as_deref())
                    ),
                }
            })
            .collect();
        Some(format!(
            "drift: {} differ from {} (generation {} hash {}); fix with `dynia sync{}`",
            list.join(", "),
            s.node,
            s.generation,
            short(Some(&s.config_hash)),
            node_path
                .map(|p| format!(" -c {}", p.display()))
                .unwrap_or_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, generation: u64, hash: &str, role: &str, held: bool) -> Status {
        Status {
            node: id.into(),
            cluster: "c".into(),
            generation,
            config_hash: hash.into(),
            role: role.into(),
            priority: 100,
            reserved_ip: ReservedIpStatus {
                stepped_back_from: None,
                address: Some("203.0.113.10".into()),
                held,
            },
            members: ["a-fox", "b-owl", "c-elk"]
                .iter()
                .map(|m| MemberStatus {
                    id: (*m).into(),
                    private_ip: "10.0.0.1".into(),
                    priority: 1,
                    state: "active".into(),
                    role: "backup".into(),
                    generation: Some(1),
                    last_seen_ms: Some(5),
                    config_hash: Some("old".into()),
                })
                .collect(),
            services: Vec::new(),
            listeners: Vec::new(),
            version: "0".into(),
            uptime_seconds: 1,
            drift: Vec::new(),
        }
    }

    #[test]
    fn members_own_answers_decide_drift_reachability_and_the_holder() {
        let local = node("a-fox", 2, "h2", "backup", false);
        let c = combine(
            local,
            vec![
                ("b-owl".into(), Ok(node("b-owl", 2, "h2", "master", true))),
                ("c-elk".into(), Err("connection refused".into())),
            ],
        );
        // The local view heard b-owl at generation 1, but b-owl says 2: in sync.
        assert_eq!(c.status.drift, vec!["c-elk".to_string()]);
        assert_eq!(c.status.members[1].role, "master");
        assert_eq!(c.status.members[2].role, "unknown");
        assert_eq!(c.reserved_ip_holders, vec!["b-owl".to_string()]);
        assert_eq!(c.unreachable("c-elk"), Some("connection refused"));
        let line = c.drift_line(None).unwrap();
        assert!(
            line.starts_with("drift: c-elk (unreachable; last advertised generation 1)"),
            "{line}"
        );
        // The JSON keeps every SPEC §6 field at the top level.
        let v = serde_json::to_value(&c).unwrap();
        for k in [
            "node",
            "cluster",
            "generation",
            "config_hash",
            "role",
            "priority",
            "reserved_ip",
            "members",
            "services",
            "drift",
            "unreachable",
            "reserved_ip_holders",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn another_hash_at_the_same_generation_is_drift() {
        let c = combine(
            node("a-fox", 2, "h2", "master", true),
            vec![
                (
                    "b-owl".into(),
                    Ok(node("b-owl", 2, "other", "backup", false)),
                ),
                (
                    "c-elk".into(),
                    Ok(node("wrong-id", 2, "h2", "backup", false)),
                ),
            ],
        );
        assert_eq!(
            c.status.drift,
            vec!["b-owl".to_string(), "c-elk".to_string()]
        );
        assert_eq!(c.reserved_ip_holders, vec!["a-fox".to_string()]);
        assert!(c.unreachable("c-elk").unwrap().contains("wrong-id"));
    }
}
