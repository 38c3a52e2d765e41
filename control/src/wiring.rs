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
    AdminState, CertificateFiles, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig,
    ProxyConfig, ServiceConfig,
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
            redirect_https: l.redirect_https,
            // Paths only: the proxy reads the files at every start and apply,
            // so a reload picks up renewed certificates.
            certificates: l
                .certificates
                .iter()
                .map(|c| CertificateFiles {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                })
                .collect(),
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
                fastinter: s.health.fastinter.map(|d| d.as_std()),
            },
            // Validation already refused values that are not header values.
            hsts: s
                .hsts_header()
                .and_then(|h| http::HeaderValue::try_from(h).ok()),
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

/// The election's settings for this node. A single-member cluster runs the
/// election too: it becomes master after `Master_Down_Interval` and holds the
/// Reserved IP, so adding a second node later changes nothing here.
pub fn election_settings(
    loaded: &crate::loaded::Loaded,
) -> Result<Option<dynia_vrrp::ElectionSettings>, dynia_vrrp::ElectionError> {
    use crate::config::Transport;
    use dynia_vrrp::advert::AdvertKey;
    use dynia_vrrp::election::Priority;
    use dynia_vrrp::hooks::ElectionHooks;
    use dynia_vrrp::{ElectionError, ElectionPeer, ElectionSettings, TransportKind};
    let (node, cluster) = (&loaded.node, &loaded.cluster);
    let Some(me) = cluster.member(&node.node.id) else {
        return Err(ElectionError::Config(format!(
            "node {} is not a member of the cluster document",
            node.node.id
        )));
    };
    let transport = cluster.election.transport;
    // `vrrp3` has no authentication: no key, even if one is configured.
    let key = match (&loaded.cluster_key, transport) {
        (_, Transport::Vrrp3) => None,
        (Some(k), Transport::Dynia) => Some(
            AdvertKey::new(k.expose_bytes()).map_err(|e| ElectionError::Config(e.to_string()))?,
        ),
        (None, Transport::Dynia) => {
            return Err(ElectionError::Config(
                "no cluster key: set [election] key_file in the node file".into(),
            ))
        }
    };
    let priority = Priority::new(me.priority).ok_or_else(|| {
        ElectionError::Config(format!("priority {} is not in 1..=254", me.priority))
    })?;
    let mut config_hash = [0u8; 32];
    for (i, b) in config_hash.iter_mut().enumerate() {
        *b = loaded
            .hash
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    Ok(Some(ElectionSettings {
        transport: match transport {
            Transport::Dynia => TransportKind::Dynia,
            Transport::Vrrp3 => TransportKind::Vrrp3,
        },
        local: me.private_ip,
        port: node.election.port,
        rt_priority: node.election.rt_priority,
        priority,
        advert_interval: cluster.election.advert_interval.as_std(),
        preempt: cluster.election.preempt,
        preempt_delay: cluster.election.preempt_delay.as_std(),
        vrid: cluster.election.vrid,
        cluster: cluster.cluster.clone(),
        key,
        peers: cluster
            .members
            .iter()
            .filter(|m| m.id != me.id)
            .map(|m| ElectionPeer {
                id: m.id.clone(),
                addr: m.private_ip,
                droplet_id: m.droplet_id,
            })
            .collect(),
        generation: cluster.generation,
        config_hash,
        reserved_ip: node.reserved_ip.address,
        probe_port: node
            .listeners
            .first()
            .map_or(dynia_vrrp::settings::DEFAULT_PROBE_PORT, |l| l.bind.port()),
        hooks: ElectionHooks {
            on_master: node.hooks.on_master.clone(),
            on_backup: node.hooks.on_backup.clone(),
            on_fault: node.hooks.on_fault.clone(),
        },
    }))
}

/// The Reserved-IP driver the node file asks for.
pub async fn driver(
    loaded: &crate::loaded::Loaded,
) -> Result<dynia_vrrp::driver::Driver, dynia_vrrp::driver::DriverError> {
    use crate::config::DriverKind as Kind;
    use dynia_vrrp::driver::{
        DigitalOcean, DigitalOceanConfig, Driver, DriverError, L2Config, NoneDriver, Secret, L2,
    };
    let r = &loaded.node.reserved_ip;
    match r.driver {
        Kind::None => Ok(Driver::None(NoneDriver)),
        Kind::DigitalOcean => {
            let (Some(address), Some(token_file)) = (r.address, &r.token_file) else {
                return Err(DriverError::Config {
                    what:
                        "driver \"digitalocean\" needs `address` and `token_file` in [reserved_ip]"
                            .into(),
                    hint: "see deploy/examples/dynia.toml",
                });
            };
            let token =
                crate::config::read_secret(token_file).map_err(|e| DriverError::Config {
                    what: e.to_string(),
                    hint: "the token file must exist and have mode 0600",
                })?;
            let token = Secret::new(String::from_utf8_lossy(token.expose_bytes()).into_owned());
            let mut cfg = DigitalOceanConfig::new(address, token);
            cfg.droplet_id = r.droplet_id.or_else(|| {
                loaded
                    .cluster
                    .member(&loaded.node.node.id)
                    .and_then(|m| m.droplet_id)
            });
            cfg.api_url = r.api_url.clone();
            cfg.metadata_url = r.metadata_url.clone();
            cfg.allow_plain_http = r.allow_plain_http;
            Ok(Driver::DigitalOcean(DigitalOcean::new(cfg).await?))
        }
        Kind::L2 => {
            let (Some(address), Some(interface)) = (r.address, &r.interface) else {
                return Err(DriverError::Config {
                    what: "driver \"l2\" needs `address` and `interface` in [reserved_ip]".into(),
                    hint: "see deploy/examples/dynia.toml",
                });
            };
            let prefix = r.prefix_len().unwrap_or(32);
            Ok(Driver::L2(L2::new(L2Config::new(
                interface.clone(),
                address,
                prefix,
            ))?))
        }
    }
}
