//! systemd notifications (`sd_notify`, Type=notify): `READY=1` once
//! listening, `RELOADING=1` with `MONOTONIC_USEC` around every reload (so
//! `systemctl reload` waits for it), `STOPPING=1`, and a `STATUS=` line
//! (role, generation, members up) kept current by `process`, and
//! `WATCHDOG=1` pings that `process` sends only while both the proxy
//! runtime and the election thread prove alive ([`watchdog_ok`];
//! docs/packaging.md). Outside systemd (`NOTIFY_SOCKET` unset) every call
//! does nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

use crate::status::Status;

/// Set by [`stopping`]: later status lines are not sent.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with the status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` and `MONOTONIC_USEC=` now, as systemd wants them together.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    STOPPING.store(true, Ordering::Relaxed);
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `master, generation 7, 3/3 members up`: this node's role, the document's
/// generation, and the members it hears (itself included) of all.
pub fn status_line(s: &Status) -> String {
    let up = s
        .members
        .iter()
        .filter(|m| m.liveness == "self" || m.liveness == "heard")
        .filter(|m| !s.lost.contains(&m.id))
        .count();
    format!(
        "{}, generation {}, {up}/{} members up",
        s.role,
        s.generation,
        s.members.len()
    )
}

/// systemd's watchdog interval (`WatchdogSec=`), if any: `WATCHDOG_USEC`,
/// for this process when `WATCHDOG_PID` names it or is unset, as
/// libsystemd's `sd_watchdog_enabled` reads them (the `sd-notify` crate
/// insists on `WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = match std::env::var("WATCHDOG_PID") {
        Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    };
    (for_us && usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Whether to ping: the proxy runtime ran its heartbeat lately, and the
/// election loop went round lately (`None`: this node runs no election).
/// While stopping the election has resigned and stopped on purpose, so only
/// the proxy, still finishing requests, counts.
pub fn watchdog_ok(proxy_alive: bool, election_alive: Option<bool>) -> bool {
    let stopping = STOPPING.load(Ordering::Relaxed);
    proxy_alive && (stopping || election_alive.unwrap_or(true))
}

/// `WATCHDOG=1`.
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

/// `STATUS=` alone, unless [`stopping`] was sent (its line stays).
pub fn status(line: &str) {
    if !STOPPING.load(Ordering::Relaxed) {
        send(&[NotifyState::Status(line)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::MemberStatus;

    fn member(id: &str, liveness: &str) -> MemberStatus {
        MemberStatus {
            id: id.into(),
            private_ip: "10.0.0.1".into(),
            liveness: liveness.into(),
            priority: 1,
            state: "active".into(),
            role: "backup".into(),
            generation: None,
            last_seen_ms: None,
            config_hash: None,
        }
    }

    #[test]
    fn the_watchdog_is_pinged_only_when_both_runtimes_are_alive() {
        assert!(watchdog_ok(true, Some(true)));
        assert!(watchdog_ok(true, None), "no election: the proxy alone");
        assert!(!watchdog_ok(false, Some(true)), "proxy runtime stalled");
        assert!(!watchdog_ok(true, Some(false)), "election thread stalled");
        assert!(!watchdog_ok(false, None));
    }

    #[test]
    fn the_status_line_counts_members_heard_and_itself() {
        let s: Status = serde_json::from_value(serde_json::json!({
            "node": "lb1", "cluster": "c", "generation": 7, "config_hash": "h",
            "role": "master", "priority": 150,
            "reserved_ip": {"address": null, "held": false},
            "members": [], "services": [], "listeners": [],
            "version": "0", "uptime_seconds": 1, "lost": ["lb4"],
        }))
        .unwrap();
        let s = Status {
            members: vec![
                member("lb1", "self"),
                member("lb2", "heard"),
                member("lb3", "unknown"),
                member("lb4", "heard"),
                member("lb5", "lost"),
            ],
            ..s
        };
        assert_eq!(status_line(&s), "master, generation 7, 2/5 members up");
    }
}
