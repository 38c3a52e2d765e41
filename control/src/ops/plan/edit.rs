//! Document edits of the node workflows and what a status document says
//! about requests in flight; pure (`docs/control.md`, "Node workflows").

use super::PlanError;
use crate::config::{ClusterDoc, Member, MemberState};

/// The member `id` of `doc`, to edit.
pub fn member_mut<'a>(doc: &'a mut ClusterDoc, id: &str) -> Result<&'a mut Member, PlanError> {
    let ids: Vec<String> = doc.members.iter().map(|m| m.id.clone()).collect();
    doc.members
        .iter_mut()
        .find(|m| m.id == id)
        .ok_or_else(|| PlanError::NoMember { id: id.into(), ids })
}

/// `node add`: appends a member (its id given or generated, its priority
/// given or 10 below the lowest); returns its id.
pub fn add_member(
    doc: &mut ClusterDoc,
    mut m: Member,
    id: Option<String>,
    priority: Option<u8>,
) -> Result<String, PlanError> {
    let taken: Vec<&str> = doc.members.iter().map(|m| m.id.as_str()).collect();
    m.id = match id {
        Some(id) if taken.contains(&id.as_str()) => return Err(PlanError::IdTaken(id)),
        Some(id) if crate::names::check(&id).is_err() => {
            let why = crate::names::check(&id).unwrap_err();
            return Err(PlanError::BadId { id, why });
        }
        Some(id) => id,
        None => crate::names::generate(&taken).ok_or(PlanError::NoFreeId)?,
    };
    if let Some(o) = doc.members.iter().find(|o| o.private_ip == m.private_ip) {
        return Err(PlanError::IpTaken {
            ip: m.private_ip,
            id: o.id.clone(),
        });
    }
    let lowest = doc.members.iter().map(|m| m.priority).min().unwrap_or(160);
    m.priority = priority.unwrap_or(lowest.saturating_sub(10).max(1));
    m.state = MemberState::Active;
    let id = m.id.clone();
    doc.members.push(m);
    Ok(id)
}

/// `node make-active`: `id`'s priority one above every other member's.
pub fn make_top(doc: &mut ClusterDoc, id: &str) -> Result<(), PlanError> {
    let top = doc
        .members
        .iter()
        .filter(|m| m.id != id)
        .map(|m| m.priority)
        .max()
        .unwrap_or(0);
    if top >= 254 {
        return Err(PlanError::PriorityCeiling);
    }
    let m = member_mut(doc, id)?;
    if m.priority <= top {
        m.priority = top + 1;
    }
    Ok(())
}

/// `undeploy`: the document without service `name`.
pub fn remove_service(doc: &mut ClusterDoc, name: &str) -> Result<(), PlanError> {
    let before = doc.services.len();
    doc.services.retain(|s| s.name != name);
    if doc.services.len() == before {
        return Err(PlanError::NoService(name.into()));
    }
    Ok(())
}

/// Requests in flight to member `id` that a status document reports.
pub fn inflight_to(s: &crate::wire::Status, id: &str) -> usize {
    s.services
        .iter()
        .flat_map(|svc| svc.members.iter())
        .filter(|x| x.id == id)
        .map(|x| x.inflight)
        .sum()
}

/// Requests in flight through a node's proxy (to any member).
pub fn inflight_through(s: &crate::wire::Status) -> usize {
    s.services
        .iter()
        .flat_map(|svc| svc.members.iter())
        .map(|x| x.inflight)
        .sum()
}
