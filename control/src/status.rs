//! `/status.json`: the public, machine-readable view of a node (fields in docs/control.md),
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

/// A member whose last advert is older than this is lost even where the
/// election does not judge liveness (`vrrp3`, whose backups are silent).
/// With `dynia` the election's own judgement (`liveness`) comes sooner.
pub const LOST_AFTER_MS: u64 = 3000;

/// Fills [`Status::drift`] and [`Status::lost`] from the members' adverts.
pub fn with_drift(mut s: Status) -> Status {
    let others = || s.members.iter().filter(|m| m.id != s.node);
    let lost = |m: &MemberStatus| {
        m.liveness == "lost" || m.last_seen_ms.is_some_and(|t| t > LOST_AFTER_MS)
    };
    s.lost = others().filter(|m| lost(m)).map(|m| m.id.clone()).collect();
    s.drift = others()
        .filter(|m| !lost(m))
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

impl ServiceMemberStatus {
    /// The entry of member `m` of `service`, with its rates from `rates`.
    pub fn new(
        service: &str,
        m: &dynia_proxy::PoolMemberView,
        rates: &crate::rates::Rates,
    ) -> Self {
        let r = rates.of(service, &m.id, &m.counts);
        let (reason, at) = match &m.last_change {
            Some((why, at)) => (
                Some(why.clone()),
                Some(dynia_proxy::access::encode::rfc3339(*at)),
            ),
            None => (None, None),
        };
        ServiceMemberStatus {
            id: m.id.clone(),
            address: m.addr.to_string(),
            health: m.health.as_str().into(),
            state: m.state.as_str().into(),
            inflight: m.inflight,
            health_reason: reason,
            health_changed_at: at,
            requests_per_second: r.map(|r| r.requests_per_second),
            error_rate: r.map(|r| r.error_rate),
            p99_ms: r.and_then(|r| r.p99_ms),
        }
    }

    /// "12.0 req/s, 0.0% errors, p99 3.1 ms" (or "no figures yet").
    pub fn rates_text(&self) -> String {
        match (self.requests_per_second, self.error_rate) {
            (Some(rps), Some(err)) => format!(
                "{rps:.1} req/s, {:.1}% errors, p99 {}",
                err * 100.0,
                self.p99_ms.map_or("-".into(), |p| format!("{p:.1} ms"))
            ),
            _ => "no figures yet".into(),
        }
    }

    /// "down since 2026-12-04T03:47:59.123Z: status 500" (or just the health).
    pub fn health_text(&self) -> String {
        match (&self.health_changed_at, &self.health_reason) {
            (Some(at), Some(why)) => format!("{} since {at}: {why}", self.health),
            _ => self.health.clone(),
        }
    }
}

/// A member whose `/status.json` could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unreachable {
    pub id: String,
    pub error: String,
}

/// The cluster in one view: this node's status document (every public
/// field) in which each other member's `role`, `priority`, `generation` and
/// `config_hash` come from that member's own `/status.json`, read just now.
///
/// `drift` lists the members that answered with another generation or hash:
/// two reachable members with different documents, which `dynia sync`
/// fixes. Members that did not answer are `unreachable` (their entry keeps
/// the generation they last advertised to this node, if any, and `role`
/// "unknown"), never drift: a dead node is not fixed by a sync. `reserved_ip_holders` are the members
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
        .filter(|m| !unreachable.iter().any(|u| u.id == m.id))
        .filter(|m| {
            m.generation != Some(s.generation) || m.config_hash.as_ref() != Some(&s.config_hash)
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

    /// One line per (service, member): health with its reason and since
    /// when, in-flight requests and the last minute's figures.
    pub fn service_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for svc in &self.status.services {
            for m in &svc.members {
                out.push(format!(
                    "service {} member {}: {}; {} in flight; {}",
                    svc.name,
                    m.id,
                    m.health_text(),
                    m.inflight,
                    m.rates_text()
                ));
            }
        }
        out
    }

    /// This node's last election transitions, newest first.
    pub fn transition_lines(&self) -> Vec<String> {
        self.status
            .transitions
            .iter()
            .rev()
            .map(|t| format!("{} became {}: {}", t.at, t.role, t.reason))
            .collect()
    }

    /// One line per unreachable member: lost, with why and when last heard;
    /// no advice to sync (a sync cannot reach it).
    pub fn lost_lines(&self) -> Vec<String> {
        self.unreachable
            .iter()
            .map(|u| {
                let seen = self
                    .status
                    .members
                    .iter()
                    .find(|m| m.id == u.id)
                    .and_then(|m| m.last_seen_ms)
                    .map_or("never heard".into(), |ms| {
                        format!("last heard {:.1} s ago", ms as f64 / 1000.0)
                    });
                format!("lost: {} is unreachable ({}; {seen})", u.id, u.error)
            })
            .collect()
    }

    /// Why the cluster is unhealthy, one reason each; empty when it is
    /// healthy: every member answered and is heard, exactly one master,
    /// no drift, no split brain. `dynia status` exits non-zero on any.
    pub fn problems(&self) -> Vec<String> {
        let s = &self.status;
        let mut out: Vec<String> = self
            .unreachable
            .iter()
            .map(|u| format!("{} is unreachable", u.id))
            .collect();
        for id in s.lost.iter().filter(|id| self.unreachable(id).is_none()) {
            out.push(format!("{id} is lost (this node no longer hears it)"));
        }
        let masters: Vec<&str> = s
            .members
            .iter()
            .filter(|m| {
                if m.id == s.node {
                    s.role == "master"
                } else {
                    m.role == "master"
                }
            })
            .map(|m| m.id.as_str())
            .collect();
        match masters.len() {
            0 => out.push("no member is master".into()),
            1 => {}
            _ => out.push(format!("several masters: {}", masters.join(", "))),
        }
        if !s.drift.is_empty() {
            out.push(format!(
                "drift: the document differs on {}",
                s.drift.join(", ")
            ));
        }
        for (m, h) in &self.stepped_back {
            out.push(format!("split brain: {m} cannot hear {h}"));
        }
        out
    }

    /// One line naming the reachable members in drift and the command that
    /// fixes it; `None` when every member that answered has this node's
    /// document.
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
                format!(
                    "{} (generation {generation} hash {})",
                    m.id,
                    short(m.config_hash.as_deref())
                )
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
                    liveness: "heard".into(),
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
            lost: Vec::new(),
            transitions: Vec::new(),
        }
    }

    #[test]
    fn a_member_not_heard_lately_is_lost_not_drift() {
        let mut s = node("a-fox", 2, "h2", "master", true);
        s.members[1].last_seen_ms = Some(LOST_AFTER_MS + 1); // b-owl: gen 1, silent
        s.members[2].last_seen_ms = Some(10); // c-elk: gen 1, heard just now
        let s = with_drift(s);
        assert_eq!(s.lost, vec!["b-owl".to_string()]);
        assert_eq!(s.drift, vec!["c-elk".to_string()]);
    }

    #[test]
    fn a_member_the_election_lost_is_lost_at_once() {
        let mut s = node("a-fox", 2, "h2", "master", true);
        s.members[1].liveness = "lost".into(); // b-owl, heard 5 ms ago
        let s = with_drift(s);
        assert_eq!(s.lost, vec!["b-owl".to_string()]);
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
        // The local view heard b-owl at generation 1, but b-owl says 2: in
        // sync. c-elk does not answer: lost, not drift (a sync cannot fix it).
        assert!(c.status.drift.is_empty());
        assert_eq!(c.status.members[1].role, "master");
        assert_eq!(c.status.members[2].role, "unknown");
        assert_eq!(c.reserved_ip_holders, vec!["b-owl".to_string()]);
        assert_eq!(c.unreachable("c-elk"), Some("connection refused"));
        assert_eq!(c.drift_line(None), None);
        let lost = c.lost_lines();
        assert_eq!(lost.len(), 1);
        assert!(
            lost[0].starts_with("lost: c-elk is unreachable (connection refused"),
            "{lost:?}"
        );
        assert!(!lost[0].contains("sync"));
        // The JSON keeps every public field at the top level.
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
    fn problems_name_unreachable_lost_masterless_and_drift() {
        let ok = |id: &str, role: &str| Ok(node(id, 2, "h2", role, false));
        let healthy = combine(
            node("a-fox", 2, "h2", "master", true),
            vec![
                ("b-owl".into(), ok("b-owl", "backup")),
                ("c-elk".into(), ok("c-elk", "backup")),
            ],
        );
        assert_eq!(healthy.problems(), Vec::<String>::new());
        let mut local = node("a-fox", 2, "h2", "backup", false);
        local.lost = vec!["b-owl".into()];
        let sick = combine(
            local,
            vec![
                ("b-owl".into(), ok("b-owl", "backup")),
                ("c-elk".into(), Err("connection refused".into())),
            ],
        );
        assert_eq!(
            sick.problems(),
            vec![
                "c-elk is unreachable".to_string(),
                "b-owl is lost (this node no longer hears it)".into(),
                "no member is master".into(),
            ]
        );
        let two = combine(
            node("a-fox", 2, "h2", "master", true),
            vec![
                (
                    "b-owl".into(),
                    Ok(node("b-owl", 2, "other", "master", false)),
                ),
                ("c-elk".into(), ok("c-elk", "backup")),
            ],
        );
        assert_eq!(
            two.problems(),
            vec![
                "several masters: a-fox, b-owl".to_string(),
                "drift: the document differs on b-owl".into()
            ]
        );
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
        // c-elk's address answers as another node: unreachable, not drift.
        assert_eq!(c.status.drift, vec!["b-owl".to_string()]);
        assert_eq!(c.reserved_ip_holders, vec!["a-fox".to_string()]);
        assert!(c.unreachable("c-elk").unwrap().contains("wrong-id"));
    }
}
