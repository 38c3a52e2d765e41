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

use super::{member_set, vip_list, AdvertHeard, Received, SEND_WAIT};
use crate::advert::{MemberSet, SenderRole};
use crate::runtime::{ElectionError, ElectionSettings};
use crate::vrrp3::{self, ChecksumDst, Vrrp3Error};

/// RFC 5798 §5.1.1.3: sent with TTL 255, received only with TTL 255.
const VRRP_TTL: u8 = 255;
/// IPv4 header without options.
const IPV4_MIN_HEADER: usize = 20;

/// Drop reasons only the `vrrp3` path produces (pre-registered as labels).
pub const VRRP3_DROP_REASONS: [&str; 5] = [
    "bad_ttl",
    "bad_checksum",
    "bad_ip_header",
    "not_vrrp",
    "bad_type",
];

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

/// What [`accept_vrrp3`] found in an acceptable packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Vrrp3Accepted {
    pub heard: AdvertHeard,
    pub checksum: ChecksumDst,
    /// Whether the packet's address list equals ours (keepalived requires it).
    pub addrs_match: bool,
}

/// Judges one raw IPv4 datagram (header included) as a VRRPv3 advert for
/// `vrid` sent to `local`: IPv4 header sane, TTL 255, protocol 112, source
/// a member other than us, VRRP message valid (either unicast checksum
/// variant), VRID ours. Never panics. `Err` carries the source if known and
/// the drop label.
pub fn accept_vrrp3(
    pkt: &[u8],
    local: Ipv4Addr,
    members: &MemberSet,
    vrid: u8,
    want_addrs: &[Ipv4Addr],
) -> Result<Vrrp3Accepted, (Option<IpAddr>, &'static str)> {
    if pkt.len() < IPV4_MIN_HEADER {
        return Err((None, "truncated"));
    }
    if pkt[0] >> 4 != 4 {
        return Err((None, "bad_ip_header"));
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER || ihl > pkt.len() {
        return Err((None, "bad_ip_header"));
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let from = Some(IpAddr::V4(src));
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if total != pkt.len() {
        return Err((from, "bad_length"));
    }
    if pkt[9] != vrrp3::IPPROTO_VRRP {
        return Err((from, "not_vrrp"));
    }
    if pkt[8] != VRRP_TTL {
        return Err((from, "bad_ttl"));
    }
    if src == local {
        return Err((from, "own"));
    }
    if !members.contains(IpAddr::V4(src)) {
        return Err((from, "not_member"));
    }
    let (p, checksum) = vrrp3::decode_unicast(&pkt[ihl..], src, dst).map_err(|e| {
        let reason = match e {
            Vrrp3Error::Truncated { .. } => "truncated",
            Vrrp3Error::TrailingBytes { .. } => "bad_length",
            Vrrp3Error::BadVersion(_) => "bad_version",
            Vrrp3Error::BadType(_) => "bad_type",
            Vrrp3Error::BadChecksum => "bad_checksum",
            _ => "malformed",
        };
        (from, reason)
    })?;
    if p.vrid != vrid {
        return Err((from, "wrong_vrid"));
    }
    Ok(Vrrp3Accepted {
        heard: AdvertHeard {
            sender: IpAddr::V4(src),
            priority: p.priority,
            interval_ms: p.interval_ms(),
            role: SenderRole::Master,
            generation: None,
            config_hash: None,
            holds: None,
        },
        checksum,
        addrs_match: p.addrs().eq(want_addrs.iter().copied()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn members() -> MemberSet {
        MemberSet::new([IpAddr::V4(LOCAL), IpAddr::V4(PEER)]).unwrap()
    }

    /// An IPv4 datagram as a raw socket hands it over, with a VRRP message
    /// encoded with `pseudo_dst` in the checksum.
    fn packet(src: Ipv4Addr, ttl: u8, vrid: u8, pseudo_dst: Ipv4Addr) -> Vec<u8> {
        let mut msg = [0u8; vrrp3::MAX_LEN];
        let n = vrrp3::encode(vrid, 120, 20, &[VIP], src, pseudo_dst, &mut msg).unwrap();
        let total = (IPV4_MIN_HEADER + n) as u16;
        let mut p = vec![0x45, 0xc0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, ttl, vrrp3::IPPROTO_VRRP, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&LOCAL.octets());
        p.extend_from_slice(&msg[..n]);
        p
    }

    fn reason(pkt: &[u8]) -> &'static str {
        accept_vrrp3(pkt, LOCAL, &members(), 51, &[VIP])
            .unwrap_err()
            .1
    }

    #[test]
    fn accepts_a_member_advert_with_either_checksum() {
        let a = accept_vrrp3(&packet(PEER, 255, 51, LOCAL), LOCAL, &members(), 51, &[VIP]).unwrap();
        assert_eq!(a.heard.sender, IpAddr::V4(PEER));
        assert_eq!((a.heard.priority, a.heard.interval_ms), (120, 200));
        assert_eq!(a.heard.role, SenderRole::Master);
        assert_eq!(a.heard.generation, None);
        assert_eq!(a.checksum, ChecksumDst::Actual);
        assert!(a.addrs_match);
        let pkt = packet(PEER, 255, 51, vrrp3::MULTICAST_V4);
        let a = accept_vrrp3(&pkt, LOCAL, &members(), 51, &[]).unwrap();
        assert_eq!(a.checksum, ChecksumDst::Multicast);
        assert!(!a.addrs_match);
    }

    #[test]
    fn drops_with_a_reason() {
        assert_eq!(reason(&packet(PEER, 64, 51, LOCAL)), "bad_ttl");
        assert_eq!(reason(&packet(PEER, 255, 52, LOCAL)), "wrong_vrid");
        let stranger = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(reason(&packet(stranger, 255, 51, LOCAL)), "not_member");
        assert_eq!(reason(&packet(LOCAL, 255, 51, LOCAL)), "own");
        let mut bad = packet(PEER, 255, 51, LOCAL);
        bad[IPV4_MIN_HEADER + 2] ^= 1; // priority
        assert_eq!(reason(&bad), "bad_checksum");
        let mut proto = packet(PEER, 255, 51, LOCAL);
        proto[9] = 17;
        assert_eq!(reason(&proto), "not_vrrp");
        let mut ihl = packet(PEER, 255, 51, LOCAL);
        ihl[0] = 0x44;
        assert_eq!(reason(&ihl), "bad_ip_header");
        let full = packet(PEER, 255, 51, LOCAL);
        assert_eq!(reason(&full[..full.len() - 1]), "bad_length");
        assert_eq!(reason(&full[..10]), "truncated");
    }

    #[test]
    fn random_datagrams_never_panic() {
        let members = members();
        let base = packet(PEER, 255, 51, LOCAL);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut buf = [0u8; 96];
        for i in 0..100_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 96) as usize;
            if i % 2 == 0 {
                // Mutate a valid packet: gets past the early checks.
                let n = base.len().min(len);
                buf[..n].copy_from_slice(&base[..n]);
                buf[(x as usize >> 8) % 96] = (x >> 16) as u8;
            } else {
                for b in buf.iter_mut().take(len) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            let _ = accept_vrrp3(&buf[..len], LOCAL, &members, 51, &[VIP]);
        }
    }

    #[test]
    fn interval_in_centiseconds() {
        assert_eq!(interval_cs(Duration::from_millis(100)), 10);
        assert_eq!(interval_cs(Duration::from_millis(5)), 1);
        assert_eq!(interval_cs(Duration::from_secs(100)), 4095);
    }

    #[test]
    fn permission_error_names_the_capability() {
        let e =
            ElectionError::RawSocketPermission(io::Error::from(io::ErrorKind::PermissionDenied));
        let text = e.to_string();
        assert!(
            text.contains("CAP_NET_RAW") && text.contains("vrrp3"),
            "{text}"
        );
    }
}
