//! What the proxy's integration tests share: one plain listener on
//! 127.0.0.1 and one service `web` for [`HOST`] over the given members.

use std::net::SocketAddr;
use std::sync::Arc;

use dynia_proxy::{
    AdminState, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig, ProxyConfig,
    ServiceConfig,
};

pub const HOST: &str = "app.example.com";

/// Members as (id, address, state).
pub fn one_service(
    members: &[(&str, SocketAddr, AdminState)],
    health: HealthConfig,
    limits: Limits,
) -> ProxyConfig {
    ProxyConfig {
        generation: 1,
        listeners: vec![ListenerConfig {
            name: "http".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            redirect_https: false,
            certificates: Vec::new(),
        }],
        limits,
        services: vec![ServiceConfig {
            name: "web".into(),
            hosts: vec![HostPattern::parse(HOST).unwrap()],
            retries: 2,
            health,
            hsts: None,
            members: members
                .iter()
                .map(|(id, addr, state)| MemberConfig {
                    id: Arc::from(*id),
                    addr: *addr,
                    state: *state,
                })
                .collect(),
        }],
    }
}

/// [`one_service`] with every member active.
#[allow(dead_code)] // not every test file uses it
pub fn active(members: &[(&str, SocketAddr)], health: HealthConfig, limits: Limits) -> ProxyConfig {
    let m: Vec<_> = members
        .iter()
        .map(|(id, a)| (*id, *a, AdminState::Active))
        .collect();
    one_service(&m, health, limits)
}
