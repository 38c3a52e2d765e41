//! The `vrrp3` transport's receive filter on raw datagrams: members'
//! adverts with either unicast checksum are accepted, everything else is
//! dropped with its metric label, random bytes never panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use dynia_vrrp::advert::{MemberSet, SenderRole};
use dynia_vrrp::transport::accept_vrrp3;
use dynia_vrrp::vrrp3::{self, ChecksumDst};
use dynia_vrrp::ElectionError;

/// IPv4 header without options.
const IPV4_MIN_HEADER: usize = 20;

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
fn permission_error_names_the_capability() {
    let e = ElectionError::RawSocketPermission(io::Error::from(io::ErrorKind::PermissionDenied));
    let text = e.to_string();
    assert!(
        text.contains("CAP_NET_RAW") && text.contains("vrrp3"),
        "{text}"
    );
}
