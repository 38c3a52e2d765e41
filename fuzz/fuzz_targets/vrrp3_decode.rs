//! Fuzzes the RFC 5798 VRRPv3 decoder; accepted packets must re-encode to
//! the same bytes (modulo the reserved bits, ignored on reception, and the
//! checksum's two representations of zero).
#![no_main]

use std::net::Ipv4Addr;

use dynia_vrrp::vrrp3::{decode, decode_unicast, encode, MAX_LEN, MULTICAST_V4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = Ipv4Addr::new(10, 0, 0, 1);
    let _ = decode_unicast(data, src, Ipv4Addr::new(10, 0, 0, 2));
    for dst in [MULTICAST_V4, Ipv4Addr::new(10, 0, 0, 2)] {
        let Ok(p) = decode(data, src, dst) else {
            continue;
        };
        let addrs: Vec<Ipv4Addr> = p.addrs().collect();
        assert_eq!(addrs.len(), p.addr_count());
        let mut out = [0u8; MAX_LEN];
        let n = encode(
            p.vrid,
            p.priority,
            p.max_adver_int_cs,
            &addrs,
            src,
            dst,
            &mut out,
        )
        .expect("a decoded packet re-encodes");
        assert_eq!(n, data.len());
        // Same bytes except the reserved bits (ignored) and the checksum
        // (one's complement has two zeros: 0x0000 and 0xffff both verify).
        assert_eq!(&out[..4], &data[..4]);
        assert_eq!(out[4] & 0x0f, data[4] & 0x0f);
        assert_eq!(out[5], data[5]);
        assert_eq!(&out[8..n], &data[8..]);
    }
});
