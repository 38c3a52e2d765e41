//! What the election runs on: [`ElectionSettings`] (rebuilt by the caller
//! from its configuration on every reload) and why it may not start
//! ([`ElectionError`]). A leaf: the transports, metrics and runtime read it.
//! See `docs/election.md`, "Settings and reloads".

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::advert::AdvertKey;
use crate::election::{heartbeat_every_ms, ElectionConfig, Priority};

/// The least a `dynia` node waits, beyond Master_Down_Interval, before it
/// takes over at start: members started "together" (a fleet booting, a
/// loaded machine) are seldom within a heartbeat of each other, and a node
/// that hears a higher one in that time leaves it the take-over. A node
/// that starts while a master runs hears its adverts and never waits.
pub const START_GRACE_MIN: Duration = Duration::from_secs(2);
use crate::hooks::ElectionHooks;

/// How adverts travel (see `docs/election.md`, "Transports").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// UDP unicast to every member, HMAC-SHA256 authenticated, with heartbeats.
    #[default]
    Dynia,
    /// RFC 5798 VRRPv3 (IP protocol 112), unauthenticated, keepalived interop.
    Vrrp3,
}

/// One other member as the election knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionPeer {
    pub id: String,
    pub addr: IpAddr,
    pub droplet_id: Option<u64>,
}

/// The probe port when the node has no listener.
pub const DEFAULT_PROBE_PORT: u16 = 80;

/// Everything the election needs; rebuilt from the files on reload.
#[derive(Clone)]
pub struct ElectionSettings {
    pub transport: TransportKind,
    pub local: IpAddr,
    /// UDP port of the `dynia` transport (unused by `vrrp3`).
    pub port: u16,
    /// SCHED_RR priority of the election thread; 0 = normal scheduling.
    pub rt_priority: u8,
    pub priority: Priority,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub vrid: u8,
    pub cluster: String,
    /// The cluster key; required by `dynia`, `None` with `vrrp3`.
    pub key: Option<AdvertKey>,
    /// Every member but this one.
    pub peers: Vec<ElectionPeer>,
    pub generation: u64,
    pub config_hash: [u8; 32],
    pub reserved_ip: Option<IpAddr>,
    /// The port a yielded master probes through the Reserved IP to tell a
    /// holder whose dynia is dead from a live one across a split (this
    /// node's first listener; [`DEFAULT_PROBE_PORT`] without one; 0: no
    /// probes). See `docs/election.md`, "Split-brain rules".
    pub probe_port: u16,
    pub hooks: ElectionHooks,
}

impl ElectionSettings {
    pub(crate) fn election_config(&self) -> ElectionConfig {
        let mut cfg = ElectionConfig::new(self.local, self.priority);
        cfg.advert_interval = self.advert_interval;
        cfg.preempt = self.preempt;
        cfg.preempt_delay = self.preempt_delay;
        if self.transport == TransportKind::Dynia {
            let advert = u32::try_from(self.advert_interval.as_millis()).unwrap_or(u32::MAX);
            let heartbeat = Duration::from_millis(heartbeat_every_ms(advert).into());
            cfg.start_grace = heartbeat.max(START_GRACE_MIN);
        }
        cfg
    }

    /// What only a restart changes: (interval, preempt, vrid, port, transport).
    pub(crate) fn restart_only(&self) -> (Duration, bool, u8, u16, TransportKind) {
        (
            self.advert_interval,
            self.preempt,
            self.vrid,
            self.port,
            self.transport,
        )
    }

    pub(crate) fn keep_restart_only(&mut self, from: &ElectionSettings) {
        self.advert_interval = from.advert_interval;
        self.preempt = from.preempt;
        self.vrid = from.vrid;
        self.port = from.port;
        self.transport = from.transport;
    }
}

/// Why the election could not start.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("election: cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("election: {0}")]
    Config(String),
    #[error("election: transport \"vrrp3\" needs a raw IP socket (protocol 112), which needs root or CAP_NET_RAW (e.g. AmbientCapabilities=CAP_NET_RAW in the unit): {0}")]
    RawSocketPermission(std::io::Error),
    #[error("election: cannot open the vrrp3 raw socket on {addr}: {source}")]
    RawSocket {
        addr: std::net::Ipv4Addr,
        source: std::io::Error,
    },
    #[error("election: cannot start its thread: {0}")]
    Thread(std::io::Error),
    #[error("election metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
