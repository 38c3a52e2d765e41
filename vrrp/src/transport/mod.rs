//! The election's wire: how adverts leave this node and how other members'
//! adverts arrive. The shell only sees `Wire::send` (to every other
//! member) and `Wire::recv` (one accepted advert, or why a datagram was
//! dropped, as a label of `dynia_election_adverts_dropped_total{reason}`).
//! `dynia` is the default, `vrrp3` keepalived interop; both are read on
//! the election thread's own runtime (no extra thread, `recv` cancel-safe).
//! See `docs/election.md`, "Transports".

pub(crate) mod dynia;
pub(crate) mod vrrp3;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::advert::{MemberSet, SenderRole};
use crate::settings::{ElectionError, ElectionSettings, TransportKind};

pub use vrrp3::{accept_vrrp3, Vrrp3Accepted, VRRP3_DROP_REASONS};

/// Receive buffer: a `dynia` advert, or an IPv4 header (at most 60 bytes)
/// plus the longest VRRP message (1028 bytes). Longer datagrams are cut and
/// then dropped as `bad_length`.
const RECV_BUF: usize = 2048;
/// Longest a send waits for room in the socket; an advert that cannot go is
/// skipped (the next one follows an advert interval later).
const SEND_WAIT: Duration = Duration::from_millis(50);

/// An advert that passed its transport's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdvertHeard {
    pub sender: IpAddr,
    pub priority: u8,
    pub interval_ms: u32,
    /// Always `Master` with `vrrp3` (only masters send).
    pub role: SenderRole,
    /// `None` with `vrrp3`.
    pub generation: Option<u64>,
    /// `None` with `vrrp3`.
    pub config_hash: Option<[u8; 32]>,
    /// The sender says its claim of the Reserved IP is done; `None` with
    /// `vrrp3` (which cannot say it).
    pub holds: Option<bool>,
}

/// One receive.
#[derive(Debug)]
pub(crate) enum Received {
    Heard(AdvertHeard),
    /// Dropped; `reason` is the metric label, `from` the source if known.
    Dropped {
        from: Option<IpAddr>,
        reason: &'static str,
    },
    /// The socket failed (the caller backs off briefly).
    Failed(io::Error),
}

/// The socket, opened before the election thread starts so that a taken
/// port or a missing privilege fails at once; made async on the thread's
/// runtime by [`Opened::into_wire`].
pub(crate) enum Opened {
    Dynia(std::net::UdpSocket),
    Vrrp3(socket2::Socket),
}

impl Opened {
    pub fn open(s: &ElectionSettings) -> Result<Opened, ElectionError> {
        Ok(match s.transport {
            TransportKind::Dynia => Opened::Dynia(dynia::open(s)?),
            TransportKind::Vrrp3 => Opened::Vrrp3(vrrp3::open(s)?),
        })
    }

    /// Must run inside the election thread's runtime.
    pub fn into_wire(self, s: &ElectionSettings, boot_epoch: u64) -> io::Result<Wire> {
        Ok(match self {
            Opened::Dynia(socket) => {
                Wire::Dynia(dynia::Dynia::new(socket, s, boot_epoch, RECV_BUF)?)
            }
            Opened::Vrrp3(socket) => Wire::Vrrp3(vrrp3::Vrrp3::new(socket, s, RECV_BUF)?),
        })
    }
}

/// Every member's address, this node's included.
pub(crate) fn member_set(s: &ElectionSettings) -> MemberSet {
    let addrs = s
        .peers
        .iter()
        .map(|p| p.addr)
        .chain(std::iter::once(s.local));
    MemberSet::new(addrs)
        .unwrap_or_else(|_| MemberSet::new(std::iter::once(s.local)).expect("one member fits"))
}

/// The virtual addresses our adverts carry: the Reserved IP, if IPv4.
fn vip_list(s: &ElectionSettings) -> Vec<Ipv4Addr> {
    match s.reserved_ip {
        Some(IpAddr::V4(a)) => vec![a],
        _ => Vec::new(),
    }
}

/// The election's open transport.
pub(crate) enum Wire {
    Dynia(dynia::Dynia),
    Vrrp3(vrrp3::Vrrp3),
}

impl Wire {
    /// Whether backups send heartbeats (`dynia`); a VRRP backup is silent,
    /// and keepalived would take any advert for a master's.
    pub fn heartbeats(&self) -> bool {
        matches!(self, Wire::Dynia(_))
    }

    /// New member list (cluster document applied).
    pub fn set_members(&mut self, s: &ElectionSettings) {
        match self {
            Wire::Dynia(d) => d.set_members(s),
            Wire::Vrrp3(v) => v.set_members(s),
        }
    }

    /// Sends an advert with `priority` and `role` (and, with `dynia`,
    /// whether this node holds the Reserved IP) to every other member;
    /// `false` if nothing was meant to go (a `vrrp3` non-master).
    pub async fn send(
        &mut self,
        s: &ElectionSettings,
        priority: u8,
        role: SenderRole,
        holds: bool,
    ) -> bool {
        match self {
            Wire::Dynia(d) => d.send(s, priority, role, holds).await,
            Wire::Vrrp3(v) => {
                if role != SenderRole::Master {
                    return false;
                }
                v.send(s, priority).await;
                true
            }
        }
    }

    /// Waits for the next datagram and judges it. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        match self {
            Wire::Dynia(d) => d.recv().await,
            Wire::Vrrp3(v) => v.recv().await,
        }
    }
}
