//! What the `/v2` API answers once a request is let through: Reserved IPs
//! (`GET /v2/reserved_ips/{ip}`), actions (`GET …/actions/{id}`,
//! `GET /v2/actions/{id}`) and new assign/unassign actions, which lock the IP
//! (and the droplet) until they complete, with the real API's refusals.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::api::{api_error, json_response};
use super::clock::rfc3339;
use super::state::{ActionKind, ActionStatus, SimAction, SimReservedIp};
use super::{SameDropletAssign, World, SIM_REGION};

/// What an action POST asked for, for the call log.
#[derive(Debug, Default)]
pub(super) struct Routed {
    pub(super) action_type: Option<String>,
    pub(super) droplet_id: Option<u64>,
}

pub(super) fn route(
    w: &mut World,
    method: &Method,
    path: &str,
    body: Option<&Bytes>,
    force_error: bool,
    routed: &mut Routed,
) -> Response<Full<Bytes>> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, segs.as_slice()) {
        (&Method::GET, ["v2", "reserved_ips", ip]) => {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return not_found();
            };
            let Some(r) = w.ips.get(&ip) else {
                return not_found();
            };
            let droplet = r
                .holder
                .map(|d| droplet_json(d, w.droplets.get(&d).copied(), w.status_of(d)));
            json_response(
                StatusCode::OK,
                &json!({"reserved_ip": {
                    "ip": ip.to_string(),
                    "region": {"name": "Frankfurt 1", "slug": SIM_REGION, "available": true},
                    "droplet": droplet,
                    "locked": r.pending.is_some(),
                    "project_id": "00000000-0000-4000-8000-000000000000",
                }}),
            )
        }
        (&Method::GET, ["v2", "reserved_ips", ip, "actions", id]) => {
            let (Ok(ip), Ok(id)) = (ip.parse::<IpAddr>(), id.parse::<u64>()) else {
                return not_found();
            };
            match w.actions.get(&id) {
                Some(a) if a.ip == ip => action_answer(w, a),
                _ => not_found(),
            }
        }
        (&Method::GET, ["v2", "actions", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return not_found();
            };
            match w.actions.get(&id) {
                Some(a) => action_answer(w, a),
                None => not_found(),
            }
        }
        (&Method::POST, ["v2", "reserved_ips", ip, "actions"]) => {
            post_action(w, ip, body, force_error, routed)
        }
        _ => not_found(),
    }
}

/// An action's GET: 404 while it is not queryable yet (Terraform's provider
/// notes actions "not found" right after creation), else its JSON, with the
/// configured alias for `completed` (the API briefly answered `done`).
fn action_answer(w: &World, a: &SimAction) -> Response<Full<Bytes>> {
    if Instant::now().duration_since(a.created) < w.action_hidden_for {
        return not_found();
    }
    let mut v = action_json(a);
    if let (ActionStatus::Completed, Some(alias)) = (a.status, w.completed_alias) {
        v["action"]["status"] = Value::from(alias);
    }
    json_response(StatusCode::OK, &v)
}

/// `POST /v2/reserved_ips/{ip}/actions`: a new assign/unassign action, which
/// locks the IP until it completes, or the 4xx the real API answers.
fn post_action(
    w: &mut World,
    ip: &str,
    body: Option<&Bytes>,
    force_error: bool,
    routed: &mut Routed,
) -> Response<Full<Bytes>> {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return not_found();
    };
    let Some(body) = body else {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "request body too large",
        );
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "error parsing request body",
        );
    };
    let ty = v
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    routed.action_type = Some(ty.clone());
    let droplet = v.get("droplet_id").and_then(Value::as_u64);
    routed.droplet_id = droplet;
    let Some(rip) = w.ips.get(&ip).cloned() else {
        return not_found();
    };
    let kind = match (ty.as_str(), droplet) {
        ("assign", None) => return unprocessable("droplet_id is required for assign."),
        ("assign", Some(d)) if !w.droplets.contains_key(&d) => {
            return unprocessable("Droplet could not be found.")
        }
        ("assign", Some(d)) => ActionKind::Assign(d),
        ("unassign", _) => ActionKind::Unassign,
        _ => return unprocessable("type must be one of: assign, unassign."),
    };
    if let Some(why) = refusal(w, ip, &rip, kind) {
        return unprocessable(why);
    }
    let body = start_action(w, ip, kind, force_error);
    json_response(StatusCode::CREATED, &body)
}

/// Why the API refuses `kind` on `rip` (address `ip`) as it is now, if it
/// does: a pending event on the IP or on the droplet, the IP already there,
/// a droplet that is not active or already holds another Reserved IP.
fn refusal(w: &World, ip: IpAddr, rip: &SimReservedIp, kind: ActionKind) -> Option<&'static str> {
    if rip.pending.is_some() {
        return Some("The reserved IP already has a pending event.");
    }
    let ActionKind::Assign(d) = kind else {
        return rip
            .holder
            .is_none()
            .then_some("The reserved IP is not assigned to a droplet.");
    };
    let droplet_busy = w.actions.values().any(|a| {
        a.status == ActionStatus::InProgress
            && (a.kind == ActionKind::Assign(d)
                || w.ips.get(&a.ip).and_then(|r| r.holder) == Some(d))
    });
    if droplet_busy {
        return Some("The droplet already has a pending event.");
    }
    if rip.holder == Some(d) {
        return match w.same_droplet {
            SameDropletAssign::Unprocessable => {
                Some("The reserved IP is already assigned to this droplet.")
            }
            SameDropletAssign::Worded(m) => Some(m),
            SameDropletAssign::NewAction => None,
        };
    }
    if w.status_of(d) != "active" {
        return Some("The droplet must be active to assign a reserved IP.");
    }
    if w.ips.iter().any(|(o, r)| *o != ip && r.holder == Some(d)) {
        return Some("The droplet already has a reserved IP assigned.");
    }
    None
}

/// A new in-progress action on `ip`, which locks it until it completes;
/// the action's JSON.
fn start_action(w: &mut World, ip: IpAddr, kind: ActionKind, will_error: bool) -> Value {
    let id = w.next_action;
    w.next_action += 1;
    let a = SimAction {
        id,
        ip,
        kind,
        status: ActionStatus::InProgress,
        will_error,
        started_at: w.clock.now_wall(),
        created: Instant::now(),
        done_at: Instant::now() + action_time(w),
        completed_at: None,
    };
    let body = action_json(&a);
    w.actions.insert(id, a);
    if let Some(r) = w.ips.get_mut(&ip) {
        r.pending = Some(id);
    }
    body
}

/// How long a new action runs.
fn action_time(w: &World) -> Duration {
    match w.action_delay_max {
        Some(max) if max > w.action_delay => {
            let span = (max - w.action_delay).as_millis() as u64;
            w.action_delay + Duration::from_millis(rand::random::<u64>() % (span + 1))
        }
        _ => w.action_delay,
    }
}

fn unprocessable(message: &str) -> Response<Full<Bytes>> {
    api_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_entity",
        message,
    )
}

fn not_found() -> Response<Full<Bytes>> {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

fn action_json(a: &SimAction) -> Value {
    let (ty, status) = (
        match a.kind {
            ActionKind::Assign(_) => "assign_ip",
            ActionKind::Unassign => "unassign_ip",
        },
        match a.status {
            ActionStatus::InProgress => "in-progress",
            ActionStatus::Completed => "completed",
            ActionStatus::Errored => "errored",
        },
    );
    let resource_id = match a.ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(_) => 0,
    };
    json!({"action": {
        "id": a.id,
        "status": status,
        "type": ty,
        "started_at": rfc3339(a.started_at),
        "completed_at": a.completed_at.map(rfc3339),
        "resource_id": resource_id,
        "resource_type": "reserved_ip",
        "region": {"name": "Frankfurt 1", "slug": SIM_REGION, "available": true},
        "region_slug": SIM_REGION,
    }})
}

fn droplet_json(id: u64, private_ip: Option<Ipv4Addr>, status: &str) -> Value {
    let mut v4 = vec![];
    if let Some(ip) = private_ip {
        v4.push(
            json!({"ip_address": ip.to_string(), "netmask": "255.255.240.0", "type": "private"}),
        );
    }
    json!({"id": id, "name": format!("droplet-{id}"), "status": status,
           "networks": {"v4": v4, "v6": []}, "region": {"slug": SIM_REGION}})
}
