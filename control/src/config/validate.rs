//! The rules a node file and a cluster document must follow beyond their
//! shape, and the rules that join the two.
//!
//! This module owns every semantic rule. Each rule names the key path it
//! concerns; `source` turns that into `file:line:column`. The validators never
//! stop at the first problem: an operator sees everything wrong with a file in
//! one run.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use dynia_proxy::HostPattern;

use super::cluster::{hsts_header, ClusterDoc, HealthChecks, Service, Transport};
use super::duration::{divides, Duration};
use super::node::{DriverKind, NodeFile, PrivateIp};
use super::source::{kp, KeyPath, Problems};

/// Most worker threads accepted; more is a typo, not a machine.
const MAX_WORKER_THREADS: u32 = 1024;
/// Members of one cluster: one VRRP-style election, every node probing
/// every member.
pub const MAX_MEMBERS: usize = 32;
/// hyper's smallest accepted header buffer.
const MIN_HEADER_BYTES: u64 = 8192;
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
const MAX_RETRIES: u32 = 10;
const MAX_FALL_RISE: u32 = 100;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The rules of the node file alone.
pub(crate) fn node_file(n: &NodeFile) -> Problems {
    let mut p = Problems::default();

    member_id(&mut p, kp!["node", "id"], &n.node.id);
    if n.node.worker_threads > MAX_WORKER_THREADS {
        p.push(
            kp!["node", "worker_threads"],
            format!(
                "worker_threads must be at most {MAX_WORKER_THREADS}, not {}; use 0 for one per CPU",
                n.node.worker_threads
            ),
        );
    }
    if n.node.state_dir.as_os_str().is_empty() {
        p.push(
            kp!["node", "state_dir"],
            "state_dir must not be empty; the default is \"/var/lib/dynia\"",
        );
    }
    if let Some(f) = &n.admin.token_file {
        non_empty_path(&mut p, kp!["admin", "token_file"], f);
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, l) in n.listeners.iter().enumerate() {
        if !is_simple_name(&l.name) {
            p.push(
                kp!["listener", i, "name"],
                format!(
                    "listener name {:?} must be 1 to 63 characters of a-z, 0-9, '-' or '_', like \"https\"",
                    l.name
                ),
            );
        }
        if let Some(first) = names.insert(l.name.as_str(), i) {
            p.push(
                kp!["listener", i, "name"],
                format!(
                    "listener name {:?} is already used by listener {} of this file; give each listener its own name",
                    l.name,
                    first + 1
                ),
            );
        }
        if let Some(first) = n.listeners[..i].iter().find(|o| overlaps(o.bind, l.bind)) {
            p.push(
                kp!["listener", i, "bind"],
                format!(
                    "bind {} overlaps listener {:?} at {}; give each listener its own address or port",
                    l.bind, first.name, first.bind
                ),
            );
        }
        if overlaps(l.bind, n.admin.listen) {
            p.push(
                kp!["listener", i, "bind"],
                format!(
                    "bind {} overlaps the admin listener at {}; move one of them to another port",
                    l.bind, n.admin.listen
                ),
            );
        }
        for (j, c) in l.certificates.iter().enumerate() {
            non_empty_path(
                &mut p,
                kp!["listener", i, "certificate", j, "cert"],
                &c.cert,
            );
            non_empty_path(&mut p, kp!["listener", i, "certificate", j, "key"], &c.key);
        }
    }

    let lim = &n.limits;
    let timeouts = [
        (
            "header_read_timeout",
            lim.header_read_timeout,
            ms(100),
            secs(600),
        ),
        ("idle_timeout", lim.idle_timeout, secs(1), secs(3600)),
        ("connect_timeout", lim.connect_timeout, ms(10), secs(60)),
        (
            "response_timeout",
            lim.response_timeout,
            ms(100),
            secs(3600),
        ),
        ("shutdown_grace", lim.shutdown_grace, ms(0), secs(3600)),
    ];
    for (key, value, min, max) in timeouts {
        within(&mut p, kp!["limits", key], key, value, min, max);
    }
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&lim.max_header_bytes) {
        p.push(
            kp!["limits", "max_header_bytes"],
            format!(
                "max_header_bytes must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} (1 MiB), not {}; the default is 65536",
                lim.max_header_bytes
            ),
        );
    }
    if lim.max_connections < 1 {
        p.push(
            kp!["limits", "max_connections"],
            "max_connections must be at least 1; the default is 10000",
        );
    }

    if let Some(f) = &n.election.key_file {
        non_empty_path(&mut p, kp!["election", "key_file"], f);
    }
    if n.election.port == 0 {
        p.push(
            kp!["election", "port"],
            "port must be between 1 and 65535; the default is 5405",
        );
    }
    if n.election.rt_priority > 99 {
        p.push(
            kp!["election", "rt_priority"],
            format!(
                "rt_priority {} is out of range: real-time priorities are 1 to 99 (0 = normal scheduling); the default is 10",
                n.election.rt_priority
            ),
        );
    }

    reserved_ip(&mut p, n);

    for (key, hook) in [
        ("on_master", &n.hooks.on_master),
        ("on_backup", &n.hooks.on_backup),
        ("on_fault", &n.hooks.on_fault),
    ] {
        if let Some(path) = hook {
            if !path.is_absolute() {
                p.push(
                    kp!["hooks", key],
                    format!(
                        "{key} must be an absolute path to an executable, like \"/etc/dynia/hooks/{}\", not {:?}",
                        key.replace('_', "-"),
                        path.display().to_string()
                    ),
                );
            }
        }
    }
    p
}

fn reserved_ip(p: &mut Problems, n: &NodeFile) {
    let r = &n.reserved_ip;
    let driver_name = match r.driver {
        DriverKind::DigitalOcean => "digitalocean",
        DriverKind::L2 => "l2",
        DriverKind::None => "none",
    };
    let needs = |p: &mut Problems, key: &str, example: &str| {
        p.push(
            kp!["reserved_ip", key],
            format!(
                "driver \"{driver_name}\" needs `{key}` in [reserved_ip]; add e.g. `{key} = {example}`"
            ),
        );
    };
    match r.driver {
        DriverKind::DigitalOcean => {
            if r.address.is_none() {
                needs(p, "address", "\"203.0.113.10\"");
            }
            match &r.token_file {
                None => needs(p, "token_file", "\"/etc/dynia/do.token\""),
                Some(f) => non_empty_path(p, kp!["reserved_ip", "token_file"], f),
            }
            if r.address.is_some_and(|a| a.is_ipv6()) {
                p.push(
                    kp!["reserved_ip", "address"],
                    "a reserved IPv6 address is not supported by the digitalocean driver (it lives at other API endpoints); use the droplet's reserved IPv4".to_string(),
                );
            }
            if plain_http_off_loopback(&r.api_url) && !r.allow_plain_http {
                p.push(
                    kp!["reserved_ip", "api_url"],
                    format!("{:?} is plain http to a host that is not loopback: the API token would cross the network in clear; use https, or set `allow_plain_http = true`", r.api_url),
                );
            }
        }
        DriverKind::L2 => {
            if r.address.is_none() {
                needs(p, "address", "\"10.10.0.100\"");
            }
            match r.interface.as_deref() {
                None => needs(p, "interface", "\"eth1\""),
                Some(i) if !is_interface_name(i) => p.push(
                    kp!["reserved_ip", "interface"],
                    format!("interface {i:?} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)"),
                ),
                Some(_) => {}
            }
        }
        DriverKind::None => {}
    }
    if let Some(prefix) = r.prefix {
        let max = match r.address {
            Some(IpAddr::V6(_)) => 128,
            _ => 32,
        };
        if prefix < 1 || prefix > max {
            p.push(
                kp!["reserved_ip", "prefix"],
                format!("prefix must be between 1 and {max} for this address, not {prefix}"),
            );
        }
    }
    for (key, url) in [("api_url", &r.api_url), ("metadata_url", &r.metadata_url)] {
        if !is_http_url(url) {
            p.push(
                kp!["reserved_ip", key],
                format!("{key} must be an http:// or https:// URL with a host, not {url:?}"),
            );
        }
    }
}

/// The rules of the cluster document alone.
pub(crate) fn cluster_doc(d: &ClusterDoc) -> Problems {
    let mut p = Problems::default();

    if !is_cluster_name(&d.cluster) {
        p.push(
            kp!["cluster"],
            format!(
                "cluster name {:?} must be 1 to 63 characters of a-z, A-Z, 0-9, '-', '_' or '.', like \"myapp\"",
                d.cluster
            ),
        );
    }

    let e = &d.election;
    if e.vrid == 0 {
        p.push(
            kp!["election", "vrid"],
            "vrid must be between 1 and 255; the default is 51",
        );
    }
    within(
        &mut p,
        kp!["election", "advert_interval"],
        "advert_interval",
        e.advert_interval,
        ms(10),
        secs(40),
    );
    if e.transport == Transport::Vrrp3 && !divides(e.advert_interval.as_millis(), 10) {
        p.push(
            kp!["election", "advert_interval"],
            format!(
                "with transport \"vrrp3\" advert_interval must be a multiple of 10ms (VRRPv3 counts centiseconds), not {}",
                e.advert_interval
            ),
        );
    }
    within(
        &mut p,
        kp!["election", "preempt_delay"],
        "preempt_delay",
        e.preempt_delay,
        ms(0),
        secs(3600),
    );

    if d.members.is_empty() {
        p.push(
            kp!["member"],
            "the cluster has no [[member]]; every cluster has at least the node that runs `dynia init`",
        );
    }
    if d.members.len() > MAX_MEMBERS {
        p.push(
            kp!["member", MAX_MEMBERS, "id"],
            format!(
                "the cluster has {} members; at most {MAX_MEMBERS} are supported (one election, every node checks every member): remove this one and those after it",
                d.members.len()
            ),
        );
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<IpAddr, &str> = HashMap::new();
    for (i, m) in d.members.iter().enumerate() {
        member_id(&mut p, kp!["member", i, "id"], &m.id);
        if ids.insert(m.id.as_str(), i).is_some() {
            p.push(
                kp!["member", i, "id"],
                format!(
                    "member id {:?} is used twice; member ids must be unique",
                    m.id
                ),
            );
        }
        if let Some(other) = ips.insert(m.private_ip, m.id.as_str()) {
            p.push(
                kp!["member", i, "private_ip"],
                format!(
                    "private_ip {} is already the address of member {other:?}; every member has its own",
                    m.private_ip
                ),
            );
        }
        if m.private_ip.is_unspecified() || m.private_ip.is_multicast() {
            p.push(
                kp!["member", i, "private_ip"],
                format!(
                    "private_ip {} is not a host address; write the member's private IP",
                    m.private_ip
                ),
            );
        }
        if !(1..=254).contains(&m.priority) {
            p.push(
                kp!["member", i, "priority"],
                format!(
                    "priority must be between 1 and 254, not {} (0 and 255 are reserved by VRRP)",
                    m.priority
                ),
            );
        }
        if let Some(a) = m.admin {
            if a.ip().is_unspecified() || a.ip().is_multicast() || a.port() == 0 {
                p.push(
                    kp!["member", i, "admin"],
                    format!(
                        "admin {a} is not an address other members can reach; write the member's admin ip:port, like \"10.10.0.12:9180\", or leave it out for private_ip and this node's admin port"
                    ),
                );
            }
        }
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut hosts: HashMap<&str, usize> = HashMap::new();
    for (i, s) in d.services.iter().enumerate() {
        if !is_simple_name(&s.name) {
            p.push(
                kp!["service", i, "name"],
                format!(
                    "service name {:?} must be 1 to 63 characters of a-z, 0-9, '-' or '_', like \"web\"",
                    s.name
                ),
            );
        }
        if names.insert(s.name.as_str(), i).is_some() {
            p.push(
                kp!["service", i, "name"],
                format!(
                    "service name {:?} is used twice; service names must be unique",
                    s.name
                ),
            );
        }
        service(&mut p, i, s, &mut hosts, &d.services);
    }
    p
}

fn service<'a>(
    p: &mut Problems,
    i: usize,
    s: &'a Service,
    hosts: &mut HashMap<&'a str, usize>,
    all: &[Service],
) {
    if s.hosts.is_empty() {
        p.push(
            kp!["service", i, "hosts"],
            "hosts is empty; list at least one host pattern: an exact name, \"*.suffix\" or \"*\"",
        );
    }
    for (j, h) in s.hosts.iter().enumerate() {
        if let Err(why) = host_pattern(h) {
            p.push(kp!["service", i, "hosts", j], why);
            continue;
        }
        if let Some(owner) = hosts.insert(h.as_str(), i) {
            let whose = if owner == i {
                "this service".to_owned()
            } else {
                let name = all.get(owner).map_or("", |o| o.name.as_str());
                format!("service {name:?}")
            };
            p.push(
                kp!["service", i, "hosts", j],
                format!("host {h:?} is already served by {whose}; a host pattern belongs to one service"),
            );
        }
    }
    if s.port == 0 {
        p.push(
            kp!["service", i, "port"],
            "port must be between 1 and 65535",
        );
    }
    if s.retries > MAX_RETRIES {
        p.push(
            kp!["service", i, "retries"],
            format!(
                "retries must be at most {MAX_RETRIES}, not {}; the default is 2",
                s.retries
            ),
        );
    }
    health(p, i, &s.health);
    if let Some(h) = &s.hsts {
        if let Err(why) = hsts_header(h) {
            p.push(
                kp!["service", i, "hsts"],
                format!(
                    "hsts {h:?} is invalid: {why}; write a header value like \"max-age=31536000; includeSubDomains\" or a duration like \"8760h\""
                ),
            );
        }
    }
}

fn health(p: &mut Problems, i: usize, h: &HealthChecks) {
    if !h.path.starts_with('/') || h.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.push(
            kp!["service", i, "health", "path"],
            format!(
                "health path {:?} must start with '/' and contain no spaces, like \"/dynia-health\"",
                h.path
            ),
        );
    }
    if h.expect_status.is_empty() {
        p.push(
            kp!["service", i, "health", "expect_status"],
            "expect_status is empty; list the statuses that mean up, e.g. [200]",
        );
    }
    for (j, status) in h.expect_status.iter().enumerate() {
        if !(100..=599).contains(status) {
            p.push(
                kp!["service", i, "health", "expect_status", j],
                format!("expected status {status} is not an HTTP status; use 100 to 599"),
            );
        }
    }
    within(
        p,
        kp!["service", i, "health", "interval"],
        "interval",
        h.interval,
        ms(100),
        secs(3600),
    );
    within(
        p,
        kp!["service", i, "health", "timeout"],
        "timeout",
        h.timeout,
        ms(10),
        secs(60),
    );
    // Only when both are sane, or the interval's own error says it all.
    if h.timeout > h.interval && h.interval >= ms(100) && h.timeout >= ms(10) {
        p.push(
            kp!["service", i, "health", "timeout"],
            format!(
                "timeout {} is longer than interval {}; checks would pile up: set timeout at most the interval",
                h.timeout, h.interval
            ),
        );
    }
    if let Some(fast) = h.fastinter {
        within(
            p,
            kp!["service", i, "health", "fastinter"],
            "fastinter",
            fast,
            ms(10),
            secs(3600),
        );
        if fast > h.interval && fast >= ms(10) && h.interval >= ms(100) {
            p.push(
                kp!["service", i, "health", "fastinter"],
                format!(
                    "fastinter {fast} is longer than interval {}; set it at most the interval",
                    h.interval
                ),
            );
        }
    }
    for (key, value) in [("fall", h.fall), ("rise", h.rise)] {
        if !(1..=MAX_FALL_RISE).contains(&value) {
            p.push(
                kp!["service", i, "health", key],
                format!("{key} must be between 1 and {MAX_FALL_RISE}, not {value}"),
            );
        }
    }
}

/// The rules that join a node file to the cluster document.
pub(crate) fn pair(n: &NodeFile, d: &ClusterDoc) -> Problems {
    let mut p = Problems::default();
    match d.member(&n.node.id) {
        None => {
            let ids: Vec<&str> = d.members.iter().map(|m| m.id.as_str()).collect();
            let known = if ids.is_empty() {
                "it has none".to_owned()
            } else {
                format!("its members are {}", ids.join(", "))
            };
            p.push(
                kp!["node", "id"],
                format!(
                    "node id {:?} is not a member of cluster {:?} ({known}); fix the id, or add this node with `dynia node add`",
                    n.node.id, d.cluster
                ),
            );
        }
        Some(m) => {
            if let PrivateIp::Addr(ip) = n.node.private_ip {
                if ip != m.private_ip {
                    p.push(
                        kp!["node", "private_ip"],
                        format!(
                            "private_ip {ip} differs from {}, the private_ip of member {:?} in the cluster document; make them agree",
                            m.private_ip, m.id
                        ),
                    );
                }
            }
        }
    }
    // A service port this node's proxy itself listens on sends every request
    // back into the proxy.
    if let Some(m) = d.member(&n.node.id) {
        for (i, l) in n.listeners.iter().enumerate() {
            let upstream = SocketAddr::new(m.private_ip, l.bind.port());
            if let Some(s) = d.services.iter().find(|s| s.port == l.bind.port()) {
                if overlaps(l.bind, upstream) {
                    p.push(
                        kp!["listener", i, "bind"],
                        format!(
                            "listener {:?} binds {}, which takes in service {:?}'s upstream {upstream} on this node: \
                             requests would loop back into dynia; bind another port or change the service's port",
                            l.name, l.bind, s.name
                        ),
                    );
                }
            }
        }
    }
    if d.election.transport == Transport::Dynia && n.election.key_file.is_none() {
        p.push(
            kp!["election", "key_file"],
            "the cluster's election transport is \"dynia\", which needs the cluster key: add `key_file = \"/etc/dynia/cluster.key\"` to [election]",
        );
    }
    p
}

/// Whether two TCP binds would take the same port on some address.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn within(
    p: &mut Problems,
    path: KeyPath,
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) {
    if value < min || value > max {
        p.push(
            path,
            format!("{key} must be between {min} and {max}, not {value}"),
        );
    }
}

fn non_empty_path(p: &mut Problems, path: KeyPath, value: &std::path::Path) {
    if value.as_os_str().is_empty() {
        p.push(path, "the path is empty; write the file's path");
    }
}

/// Member ids: a DNS label ([`crate::names::check`]), `lb1` or `misty-owl`.
fn member_id(p: &mut Problems, path: KeyPath, id: &str) {
    if let Err(why) = crate::names::check(id) {
        p.push(
            path,
            format!("member id {id:?} is invalid: {why}; {}", crate::names::RULE),
        );
    }
}

fn is_simple_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_cluster_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            !host.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// A host pattern: parsed by the proxy's [`HostPattern`] (the one parser),
/// and written in its canonical form (lowercase, no spaces); the error
/// says what is wrong with it.
fn host_pattern(h: &str) -> Result<HostPattern, String> {
    if let Some(parsed) = HostPattern::parse(h).filter(|p| p.to_string() == h) {
        return Ok(parsed);
    }
    let (name, wildcard) = match h.strip_prefix("*.") {
        Some(suffix) => (suffix, true),
        None => (h, false),
    };
    let why = if h.bytes().any(|b| b.is_ascii_uppercase()) {
        "use lowercase"
    } else if name.contains('*') {
        "'*' may only stand alone or start the pattern as \"*.\""
    } else if name.contains(':') {
        "a host pattern has no port; the listener decides the port"
    } else {
        "it is not a DNS name"
    };
    Err(format!(
        "host pattern {h:?} is invalid: {why}; write an exact name (\"app.example.com\"), {} or \"*\"",
        if wildcard { "a \"*.suffix\" with a valid suffix" } else { "\"*.suffix\"" }
    ))
}

/// `http://HOST…` where HOST is not a loopback address or `localhost`.
fn plain_http_off_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        for good in [
            "*",
            "app.example.com",
            "*.app.example.com",
            "localhost",
            "a_b.example",
        ] {
            assert!(host_pattern(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "*.",
            "**",
            "a.*.com",
            "App.example.com",
            "app.example.com:80",
            "-a.com",
            "a..com",
            "app.example.com.",
            "*example.com",
            "a b",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hsts_values() {
        for (good, want) in [
            ("max-age=31536000", "max-age=31536000"),
            (
                "max-age=63072000; includeSubDomains; preload",
                "max-age=63072000; includeSubDomains; preload",
            ),
            ("8760h", "max-age=31536000"),
            ("0s", "max-age=0"),
        ] {
            assert_eq!(hsts_header(good).as_deref(), Ok(want), "{good}");
        }
        for bad in [
            "",
            "includeSubDomains",
            "max-age=",
            "max-age=1y",
            "max-age=1; max-age=2",
            "max-age=1; secure",
            "max-age=1;; preload",
            "365d",
        ] {
            assert!(hsts_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert!(is_http_url("https://api.digitalocean.com"));
        assert!(is_http_url("http://127.0.0.1:8080/x"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("api.digitalocean.com"));
    }
}
