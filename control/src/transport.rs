//! The election's wire: how adverts leave this node and how other members'
//! adverts arrive, for either transport of `[election] transport`.
//!
//! This module owns the election thread's socket and everything
//! transport-specific between it and the state machine. The shell
//! (`crate::election`) only sees [`Transport::send`] (to every other member)
//! and [`Transport::recv`] (one accepted advert, or why a datagram was
//! dropped, as a label for `dynia_election_adverts_dropped_total{reason}`).
//!
//! * `dynia` (the default): UDP unicast to every member's
//!   `private_ip:port`, HMAC-SHA256 under the cluster key, replay-protected,
//!   carrying the sender's role, cluster generation and config hash (backups
//!   send a heartbeat too). The receive path is `advert::ReceiveFilter`.
//! * `vrrp3`: RFC 5798 VRRPv3 packets (IP protocol 112, TTL 255) on a raw
//!   IPv4 socket, unicast to every member's `private_ip`, so a node can run
//!   beside keepalived nodes (`unicast_peer`) during a migration. VRRPv3 has
//!   **no authentication and no replay protection**: anything that can send
//!   IP protocol 112 to this node with a member's source address is believed.
//!   Only masters send (a VRRP backup is silent), and the packet carries no
//!   cluster generation, so catch-up from adverts and the peers' generation
//!   in `/status.json` are not available with it. Adverts carry the Reserved
//!   IP as the one virtual address (keepalived drops adverts whose address
//!   list differs from its `virtual_ipaddress`).
//!
//! The raw socket is read through tokio's `AsyncFd` on the election thread's
//! own single-threaded runtime, like the UDP socket: no extra thread, no
//! channel between threads, the same `select!` loop and shutdown as `dynia`,
//! and `recv` stays cancel-safe (bytes are only read once the fd is ready,
//! inside a synchronous closure).

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dynia_vrrp::advert::{
    encode, Advert, ClusterId, MemberSet, ReceiveFilter, SendCounter, SenderRole, ADVERT_LEN,
};
use dynia_vrrp::vrrp3::{self, ChecksumDst, Vrrp3Error};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::config::Transport as Kind;
use crate::election::{ElectionError, Settings};

/// Receive buffer: a `dynia` advert, or an IPv4 header (at most 60 bytes)
/// plus the longest VRRP message (1028 bytes). Longer datagrams are cut and
/// then dropped as `bad_length`.
const RECV_BUF: usize = 2048;
/// Longest a send waits for room in the socket; an advert that cannot go is
/// skipped (the next one follows an advert interval later).
const SEND_WAIT: Duration = Duration::from_millis(50);
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

/// An advert that passed its transport's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
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
pub enum Received {
    Heard(Heard),
    /// Dropped; `reason` is the metric label, `from` the source if known.
    Dropped {
        from: Option<IpAddr>,
        reason: &'static str,
    },
    /// The socket failed (the caller backs off briefly).
    Failed(io::Error),
}

/// The socket, opened before the election thread starts so that a taken
/// port or a missing privilege fails `dynia run` at once; made async on the
/// thread's runtime by [`Opened::into_transport`].
pub enum Opened {
    Dynia(std::net::UdpSocket),
    Vrrp3(Socket),
}

impl Opened {
    pub fn open(s: &Settings) -> Result<Opened, ElectionError> {
        match s.transport {
            Kind::Dynia => {
                if s.key.is_none() {
                    return Err(ElectionError::Config(
                        "no cluster key: set [election] key_file in the node file".into(),
                    ));
                }
                let bind = SocketAddr::new(s.local, s.port);
                let socket = std::net::UdpSocket::bind(bind)
                    .map_err(|source| ElectionError::Bind { addr: bind, source })?;
                socket
                    .set_nonblocking(true)
                    .map_err(|source| ElectionError::Bind { addr: bind, source })?;
                Ok(Opened::Dynia(socket))
            }
            Kind::Vrrp3 => {
                let local = vrrp3_addrs(s)?;
                let socket = open_raw(local)?;
                tracing::warn!(
                    addr = %local,
                    "election transport \"vrrp3\" is unauthenticated (RFC 5798 has no authentication or replay protection): any host that can send IP protocol 112 to this node with a member's address is believed; use it only to run beside keepalived during a migration"
                );
                Ok(Opened::Vrrp3(socket))
            }
        }
    }

    /// Must run inside the election thread's runtime.
    pub fn into_transport(self, s: &Settings) -> io::Result<Transport> {
        Ok(match self {
            Opened::Dynia(socket) => {
                let epoch = boot_epoch(s.epoch_file.as_deref());
                let key = s
                    .key
                    .clone()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no cluster key"))?;
                Transport::Dynia(Dynia {
                    socket: UdpSocket::from_std(socket)?,
                    filter: ReceiveFilter::new(
                        key,
                        ClusterId::from_name(&s.cluster),
                        s.vrid,
                        s.local,
                        member_set(s),
                    ),
                    counter: SendCounter::new(epoch),
                    buf: vec![0; RECV_BUF].into_boxed_slice(),
                })
            }
            Opened::Vrrp3(socket) => {
                let IpAddr::V4(local) = s.local else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "vrrp3 is IPv4 only",
                    ));
                };
                Transport::Vrrp3(Vrrp3 {
                    // SAFETY: the `Socket` owns its fd and is moved into
                    // the `AsyncFd`, which neither replaces nor closes it
                    // before dropping it.
                    fd: unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?,
                    local,
                    vrid: s.vrid,
                    members: member_set(s),
                    vips: vip_list(s),
                    old_checksum: HashSet::new(),
                    warned_addrs: false,
                    buf: vec![0; RECV_BUF].into_boxed_slice(),
                })
            }
        })
    }
}

/// The local IPv4 address, after checking that every member has one.
fn vrrp3_addrs(s: &Settings) -> Result<Ipv4Addr, ElectionError> {
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

/// Every member's address, this node's included.
pub fn member_set(s: &Settings) -> MemberSet {
    let addrs = s
        .peers
        .iter()
        .map(|p| p.addr)
        .chain(std::iter::once(s.local));
    MemberSet::new(addrs)
        .unwrap_or_else(|_| MemberSet::new(std::iter::once(s.local)).expect("one member fits"))
}

/// The election's transport.
pub enum Transport {
    Dynia(Dynia),
    Vrrp3(Vrrp3),
}

pub struct Dynia {
    socket: UdpSocket,
    filter: ReceiveFilter,
    counter: SendCounter,
    buf: Box<[u8]>,
}

pub struct Vrrp3 {
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

impl Transport {
    /// Whether backups send heartbeats (`dynia`); a VRRP backup is silent,
    /// and keepalived would take any advert for a master's.
    pub fn heartbeats(&self) -> bool {
        matches!(self, Transport::Dynia(_))
    }

    /// New member list (cluster document applied).
    pub fn set_members(&mut self, s: &Settings) {
        match self {
            Transport::Dynia(d) => d.filter.set_members(member_set(s)),
            Transport::Vrrp3(v) => {
                v.members = member_set(s);
                v.vips = vip_list(s);
                let members = &v.members;
                v.old_checksum.retain(|a| members.contains(IpAddr::V4(*a)));
            }
        }
    }

    /// Sends an advert with `priority` and `role` (and, with `dynia`,
    /// whether this node holds the Reserved IP) to every other member;
    /// `false` if nothing was meant to go (a `vrrp3` non-master).
    pub async fn send(
        &mut self,
        s: &Settings,
        priority: u8,
        role: SenderRole,
        holds: bool,
    ) -> bool {
        match self {
            Transport::Dynia(d) => {
                let Some(key) = &s.key else { return false };
                let (epoch, seq) = d.counter.advance();
                let a = Advert {
                    vrid: s.vrid,
                    cluster: ClusterId::from_name(&s.cluster),
                    sender: s.local,
                    priority,
                    interval_ms: s.advert_interval.as_millis() as u32,
                    epoch,
                    seq,
                    generation: s.generation,
                    config_hash: s.config_hash,
                    role,
                    holds,
                };
                let bytes: [u8; ADVERT_LEN] = encode(&a, key);
                for p in &s.peers {
                    let _ = d
                        .socket
                        .send_to(&bytes, SocketAddr::new(p.addr, s.port))
                        .await;
                }
                true
            }
            Transport::Vrrp3(v) => {
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
            Transport::Dynia(d) => {
                let (n, from) = match d.socket.recv_from(&mut d.buf).await {
                    Ok(x) => x,
                    Err(e) => return Received::Failed(e),
                };
                match d.filter.accept(&d.buf[..n], Some(from.ip())) {
                    Ok(a) => Received::Heard(Heard {
                        sender: a.sender,
                        priority: a.priority,
                        interval_ms: a.interval_ms,
                        role: a.role,
                        generation: Some(a.generation),
                        config_hash: Some(a.config_hash),
                        holds: Some(a.holds),
                    }),
                    Err(r) => Received::Dropped {
                        from: Some(from.ip()),
                        reason: r.as_str(),
                    },
                }
            }
            Transport::Vrrp3(v) => v.recv().await,
        }
    }
}

impl Vrrp3 {
    async fn send(&mut self, s: &Settings, priority: u8) {
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

    async fn recv(&mut self) -> Received {
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

/// The virtual addresses our adverts carry: the Reserved IP, if IPv4.
fn vip_list(s: &Settings) -> Vec<Ipv4Addr> {
    match s.reserved_ip {
        Some(IpAddr::V4(a)) => vec![a],
        _ => Vec::new(),
    }
}

/// The advert interval in centiseconds, within VRRPv3's 12 bits.
fn interval_cs(d: Duration) -> u16 {
    (d.as_millis() / 10).clamp(1, u128::from(vrrp3::MAX_ADVER_INT_CS)) as u16
}

/// What [`accept_vrrp3`] found in an acceptable packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Vrrp3Accepted {
    pub heard: Heard,
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
        heard: Heard {
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

/// The boot epoch of this run's adverts: the wall clock in milliseconds, but
/// always above the epoch of the previous run, which `file` keeps. Peers
/// drop adverts whose (epoch, sequence) does not grow (replay protection),
/// so a restart after the clock stepped back (no RTC, NTP correction) must
/// still pick a higher epoch, or its adverts are dropped for good and it
/// becomes a second master. Without a file (or if it cannot be written: a
/// warning) the wall clock alone decides.
pub(crate) fn boot_epoch(file: Option<&std::path::Path>) -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1);
    let Some(file) = file else { return wall };
    let last = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let epoch = match last {
        Some(l) if l >= wall => {
            tracing::warn!(
                last = l,
                wall,
                "the wall clock is behind the previous run's advert epoch; using the previous one + 1"
            );
            l.saturating_add(1)
        }
        _ => wall,
    };
    if let Err(e) = write_epoch(file, epoch) {
        tracing::warn!(file = %file.display(), error = %e, "cannot record the advert epoch; a restart after the clock steps back could be taken for a replay");
    }
    epoch
}

/// Writes `epoch` to `file` atomically (temporary file, fsync, rename).
fn write_epoch(file: &std::path::Path, epoch: u64) -> io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn epoch_grows_across_runs_even_when_the_clock_is_behind() {
        let dir = std::env::temp_dir().join(format!("dynia-epoch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("election.epoch");
        let _ = std::fs::remove_file(&f);
        let a = boot_epoch(Some(&f));
        let b = boot_epoch(Some(&f));
        assert!(b > a, "{b} > {a}");
        // A previous run far in the future (the clock has since stepped back).
        let future = a + 86_400_000;
        std::fs::write(&f, format!("{future}\n")).unwrap();
        assert_eq!(boot_epoch(Some(&f)), future + 1);
        assert_eq!(
            std::fs::read_to_string(&f).unwrap().trim(),
            (future + 1).to_string()
        );
        // Garbage in the file: the wall clock, and the file is repaired.
        std::fs::write(&f, "not a number").unwrap();
        let c = boot_epoch(Some(&f));
        assert!(c >= a);
        assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), c.to_string());
        // No file configured: the wall clock.
        assert!(boot_epoch(None) >= a);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
