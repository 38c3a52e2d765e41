//! Turns the two files into what the data plane runs on.
//!
//! The first lesson of the seeds: a service's pool is built from the FULL
//! member list of the cluster document — every member's `private_ip:port`,
//! this node included — never a filtered one. DRAIN and MAINT members stay in
//! the pool with their state, so the proxy can finish their requests and
//! report them.

use std::net::SocketAddr;
use std::sync::Arc;

use dynia_proxy::{
    AdminState, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig, ProxyConfig,
    ServiceConfig,
};

use crate::config::{ClusterDoc, MemberState, NodeFile};

/// The proxy configuration for this node.
pub fn proxy_config(node: &NodeFile, cluster: &ClusterDoc) -> ProxyConfig {
    let l = &node.limits;
    let limits = Limits {
        header_read_timeout: l.header_read_timeout.as_std(),
        idle_timeout: l.idle_timeout.as_std(),
        connect_timeout: l.connect_timeout.as_std(),
        response_timeout: l.response_timeout.as_std(),
        max_header_bytes: l.max_header_bytes as usize,
        max_connections: l.max_connections as usize,
        shutdown_grace: l.shutdown_grace.as_std(),
    };
    let listeners = node
        .listeners
        .iter()
        .map(|l| ListenerConfig {
            name: l.name.clone(),
            bind: l.bind,
        })
        .collect();
    let services = cluster
        .services
        .iter()
        .map(|s| ServiceConfig {
            name: Arc::from(s.name.as_str()),
            // Validation already refused patterns that do not parse.
            hosts: s
                .hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h))
                .collect(),
            retries: s.retries,
            health: HealthConfig {
                path: s.health.path.clone(),
                expect_status: s.health.expect_status.clone(),
                interval: s.health.interval.as_std(),
                timeout: s.health.timeout.as_std(),
                fall: s.health.fall,
                rise: s.health.rise,
            },
            members: cluster
                .members
                .iter()
                .map(|m| MemberConfig {
                    id: Arc::from(m.id.as_str()),
                    addr: SocketAddr::new(m.private_ip, s.port),
                    state: admin_state(m.state),
                })
                .collect(),
        })
        .collect();
    ProxyConfig {
        generation: cluster.generation,
        listeners,
        limits,
        services,
    }
}

pub fn admin_state(s: MemberState) -> AdminState {
    match s {
        MemberState::Active => AdminState::Active,
        MemberState::Drain => AdminState::Drain,
        MemberState::Maint => AdminState::Maint,
    }
}
