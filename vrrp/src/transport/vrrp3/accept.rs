//! Judging one raw IPv4 datagram as a VRRPv3 advert for this node: header,
//! TTL, protocol, membership, checksum (either unicast variant), VRID; each
//! drop with its metric label. See `docs/election.md`, "Transports".

use std::net::{IpAddr, Ipv4Addr};

use crate::advert::{MemberSet, SenderRole};
use crate::transport::AdvertHeard;
use crate::vrrp3::{self, ChecksumDst, Vrrp3Error};

/// RFC 5798 §5.1.1.3: sent with TTL 255, received only with TTL 255.
pub(crate) const VRRP_TTL: u8 = 255;
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
