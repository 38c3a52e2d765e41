//! The `vrrp3` transport: RFC 5798 VRRPv3 packets (IP protocol 112, TTL 255)
//! on a raw IPv4 socket, unicast to every member, for running beside
//! keepalived. Unauthenticated; only masters send. See `docs/election.md`,
//! "Transports".

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{member_set, vip_list, Received, SEND_WAIT};
use crate::advert::MemberSet;
use crate::settings::{ElectionError, ElectionSettings};
use crate::vrrp3::{self, ChecksumDst};

pub(crate) use accept::VRRP_TTL;
pub use accept::{accept_vrrp3, Vrrp3Accepted, VRRP3_DROP_REASONS};

mod accept;

pub(crate) struct Vrrp3 {
    fd: AsyncFd<Socket>,
    local: Ipv4Addr,
    vrid: u8,
    members: MemberSet,
    /// What our adverts carry; others' are compared with it.
    vips: Vec<Ipv4Addr>,
    /// Peers whose adverts verify only with 224.0.0.18 in the checksum's
    /// pseudo-header (keepalived before 1.3.6, or `old_unicast_checksum`):
    /// they get ours the same way. At most one entry per member.
    old_checksum: HashSet<Ipv4Addr>,
    warned_addrs: bool,
    buf: Box<[u8]>,
}

/// Opens the raw socket (before the election thread starts, so a missing
/// privilege fails at once), warning that the transport is unauthenticated.
pub(crate) fn open(s: &ElectionSettings) -> Result<Socket, ElectionError> {
    let local = vrrp3_addrs(s)?;
    let socket = open_raw(local)?;
    tracing::warn!(
        addr = %local,
        "election transport \"vrrp3\" is unauthenticated (RFC 5798 has no authentication or replay protection): any host that can send IP protocol 112 to this node with a member's address is believed; use it only to run beside keepalived during a migration"
    );
    Ok(socket)
}

impl Vrrp3 {
    /// Must run inside the election thread's runtime.
    pub(crate) fn new(socket: Socket, s: &ElectionSettings, buf: usize) -> io::Result<Vrrp3> {
        let IpAddr::V4(local) = s.local else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "vrrp3 is IPv4 only",
            ));
        };
        Ok(Vrrp3 {
            // SAFETY: the `Socket` owns its fd and is moved into the
            // `AsyncFd`, which neither replaces nor closes it before dropping it.
            fd: unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?,
            local,
            vrid: s.vrid,
            members: member_set(s),
            vips: vip_list(s),
            old_checksum: HashSet::new(),
            warned_addrs: false,
            buf: vec![0; buf].into_boxed_slice(),
        })
    }

    /// New member list (cluster document applied).
    pub(crate) fn set_members(&mut self, s: &ElectionSettings) {
        self.members = member_set(s);
        self.vips = vip_list(s);
        let members = &self.members;
        self.old_checksum
            .retain(|a| members.contains(IpAddr::V4(*a)));
    }

    pub(crate) async fn send(&mut self, s: &ElectionSettings, priority: u8) {
        let addrs = vip_list(s);
        let cs = interval_cs(s.advert_interval);
        let mut out = [0u8; vrrp3::HEADER_LEN + 4];
        for p in &s.peers {
            let IpAddr::V4(peer) = p.addr else { continue };
            let pseudo_dst = if self.old_checksum.contains(&peer) {
                vrrp3::MULTICAST_V4
            } else {
                peer
            };
            let n = match vrrp3::encode(
                s.vrid, priority, cs, &addrs, self.local, pseudo_dst, &mut out,
            ) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "vrrp3 advert not encodable");
                    return;
                }
            };
            let to = SockAddr::from(SocketAddrV4::new(peer, 0));
            let sent = tokio::time::timeout(
                SEND_WAIT,
                self.fd
                    .async_io(Interest::WRITABLE, |sock| sock.send_to(&out[..n], &to)),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "vrrp3 advert not sent"),
                Err(_) => tracing::debug!(%peer, "vrrp3 advert not sent: socket full"),
            }
        }
    }

    pub(crate) async fn recv(&mut self) -> Received {
        let n = match self
            .fd
            .async_io(Interest::READABLE, |sock| {
                let mut r: &Socket = sock;
                r.read(&mut self.buf)
            })
            .await
        {
            Ok(n) => n,
            Err(e) => return Received::Failed(e),
        };
        match accept_vrrp3(
            &self.buf[..n],
            self.local,
            &self.members,
            self.vrid,
            &self.vips,
        ) {
            Err((from, reason)) => Received::Dropped { from, reason },
            Ok(a) => {
                if let IpAddr::V4(src) = a.heard.sender {
                    let old = a.checksum == ChecksumDst::Multicast;
                    if old && self.old_checksum.insert(src) {
                        tracing::info!(peer = %src, "vrrp3 peer uses the old unicast checksum (224.0.0.18 in the pseudo-header, keepalived before 1.3.6 or old_unicast_checksum); answering it the same way");
                    } else if !old && self.old_checksum.remove(&src) {
                        tracing::info!(peer = %src, "vrrp3 peer uses the RFC 5798 unicast checksum again");
                    }
                }
                if !a.addrs_match && !self.warned_addrs {
                    self.warned_addrs = true;
                    tracing::warn!(peer = %a.heard.sender, ours = ?self.vips, "a vrrp3 advert carries other virtual addresses than ours (the Reserved IP): keepalived drops adverts whose list differs from its virtual_ipaddress, so it will not hear this node; make them equal");
                }
                Received::Heard(a.heard)
            }
        }
    }
}

/// The local IPv4 address, after checking that every member has one.
fn vrrp3_addrs(s: &ElectionSettings) -> Result<Ipv4Addr, ElectionError> {
    let IpAddr::V4(local) = s.local else {
        return Err(ElectionError::Config(format!(
            "transport \"vrrp3\" is IPv4 only; this member's private_ip is {}",
            s.local
        )));
    };
    if let Some(p) = s.peers.iter().find(|p| !p.addr.is_ipv4()) {
        return Err(ElectionError::Config(format!(
            "transport \"vrrp3\" is IPv4 only; member {} has private_ip {}",
            p.id, p.addr
        )));
    }
    Ok(local)
}

/// A raw IPv4 socket for protocol 112, TTL 255, bound to `local` (its
/// source address, and the kernel then only delivers packets sent to it).
fn open_raw(local: Ipv4Addr) -> Result<Socket, ElectionError> {
    let raw = |source: io::Error| ElectionError::RawSocket {
        addr: local,
        source,
    };
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(vrrp3::IPPROTO_VRRP))),
    )
    .map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => ElectionError::RawSocketPermission(source),
        _ => raw(source),
    })?;
    socket.set_ttl(u32::from(VRRP_TTL)).map_err(raw)?;
    // "Internetwork control", as keepalived sends its adverts.
    let _ = socket.set_tos(0xc0);
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(local, 0)))
        .map_err(raw)?;
    socket.set_nonblocking(true).map_err(raw)?;
    Ok(socket)
}

/// The advert interval in centiseconds, within VRRPv3's 12 bits.
fn interval_cs(d: Duration) -> u16 {
    (d.as_millis() / 10).clamp(1, u128::from(vrrp3::MAX_ADVER_INT_CS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_in_centiseconds() {
        assert_eq!(interval_cs(Duration::from_millis(100)), 10);
        assert_eq!(interval_cs(Duration::from_millis(5)), 1);
        assert_eq!(interval_cs(Duration::from_secs(100)), 4095);
    }
}
