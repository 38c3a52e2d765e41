//! The `l2` driver's public checks that need no privileges: the exact
//! gratuitous ARP frames, the settings' checks, a missing interface named.
//! The netns tests (root) are in `vrrp/src/driver/l2/tests.rs`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use dynia_vrrp::driver::l2::{garp_frame, GarpKind};
use dynia_vrrp::driver::{ErrorKind, L2Config, L2};
use pnet_datalink::MacAddr;
use pnet_packet::arp::{ArpOperations, ArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
use pnet_packet::Packet;

const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 100);

#[test]
fn garp_request_bytes() {
    let f = garp_frame(MAC, VIP, GarpKind::Request);
    assert_eq!(f.len(), 60);
    #[rustfmt::skip]
    let want: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet dst: broadcast
        0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // Ethernet src: interface MAC
        0x08, 0x06,                         // EtherType ARP
        0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet/IPv4, hlen 6, plen 4
        0x00, 0x01,                         // op: request
        0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // sender MAC
        10, 99, 7, 100,                     // sender IP = VIP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // target MAC (keepalived's form)
        10, 99, 7, 100,                     // target IP = VIP
    ];
    assert_eq!(&f[..42], &want[..]);
    assert!(f[42..].iter().all(|b| *b == 0), "padding is zero");
}

#[test]
fn garp_reply_bytes() {
    let f = garp_frame(MAC, VIP, GarpKind::Reply);
    let eth = EthernetPacket::new(&f).unwrap();
    assert_eq!(eth.get_destination(), MacAddr::broadcast());
    assert_eq!(eth.get_source(), MacAddr::from(MAC));
    assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
    let arp = ArpPacket::new(eth.payload()).unwrap();
    assert_eq!(arp.get_operation(), ArpOperations::Reply);
    assert_eq!(arp.get_sender_hw_addr(), MacAddr::from(MAC));
    assert_eq!(arp.get_target_hw_addr(), MacAddr::from(MAC), "tha == sha");
    assert_eq!(arp.get_sender_proto_addr(), VIP);
    assert_eq!(arp.get_target_proto_addr(), VIP);
}

#[test]
fn config_checks() {
    let ok = L2Config::new("eth1", IpAddr::V4(VIP), 24);
    assert_eq!(ok.garp_count, 3);
    assert_eq!(ok.garp_interval, Duration::from_millis(100));
    let d = L2::new(ok.clone()).unwrap();
    assert_eq!(d.address(), VIP);
    assert_eq!(d.interface(), "eth1");

    let err = |c: L2Config| L2::new(c).unwrap_err().to_string();
    let e = err(L2Config::new("eth1", "2001:db8::1".parse().unwrap(), 64));
    assert!(e.contains("IPv6") && e.contains("2001:db8::1"), "{e}");
    let e = err(L2Config::new("a-very-long-interface", IpAddr::V4(VIP), 24));
    assert!(e.contains("a-very-long-interface"), "{e}");
    let e = err(L2Config::new("eth1", IpAddr::V4(VIP), 33));
    assert!(e.contains("prefix 33"), "{e}");
    let e = err(L2Config::new("eth1", "127.0.0.1".parse().unwrap(), 8));
    assert!(e.contains("127.0.0.1"), "{e}");
    let mut c = ok.clone();
    c.garp_count = 1000;
    assert!(err(c).contains("garp_count"));
    let mut c = ok;
    c.garp_interval = Duration::from_secs(60);
    assert!(err(c).contains("garp_interval"));
}

/// A missing interface is a config error that names it (works unprivileged:
/// RTM_GETLINK needs no capability).
#[test]
fn missing_interface_is_named() {
    let d = L2::new(L2Config::new("dyn-nosuch0", IpAddr::V4(VIP), 24)).unwrap();
    let e = d.holder_blocking().unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("dyn-nosuch0") && s.contains("does not exist"),
        "{s}"
    );
    assert_eq!(e.kind(), ErrorKind::Config);
}
