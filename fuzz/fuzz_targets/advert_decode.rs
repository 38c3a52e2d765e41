//! Fuzzes the `dynia` transport's receive path: decode + MAC + filter + replay.
//!
//! Random bytes almost never carry a valid MAC, so the target also re-MACs
//! the input under the fuzz key when the first byte is odd; that way the
//! field checks and the replay guard after the MAC are reached too.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use dynia_vrrp::advert::{
    decode, encode, Advert, AdvertKey, ClusterId, MemberSet, ReceiveFilter, SenderRole, ADVERT_LEN,
};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-key-fuzz-key-fuzz-key-fuzz!";

fn key() -> &'static AdvertKey {
    static K: OnceLock<AdvertKey> = OnceLock::new();
    K.get_or_init(|| AdvertKey::new(KEY).expect("fuzz key is long enough"))
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

fuzz_target!(|data: &[u8]| {
    let k = key();
    let _ = decode(data, k);

    let mut f = ReceiveFilter::new(
        k.clone(),
        ClusterId::from_name("fuzz"),
        51,
        ip(1),
        MemberSet::new([ip(1), ip(2), ip(3)]).expect("3 members"),
    );
    let _ = f.accept(data, None);
    let _ = f.accept(data, Some(ip(2)));

    // Structured path: build a valid advert from the bytes and check that
    // encode/decode round-trips whatever fields decode accepts.
    if data.len() >= 40 && data[0] & 1 == 1 {
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let a = Advert {
            vrid: data[1],
            cluster: ClusterId::from_name("fuzz"),
            sender: ip(data[2] % 4),
            priority: data[3] % 255,
            interval_ms: 10 + u32::from(u16::from_be_bytes([data[4], data[5]])) % 40_941,
            epoch: u64_at(8),
            seq: u64_at(16),
            generation: u64_at(24),
            config_hash: [data[6]; 32],
            role: [SenderRole::Master, SenderRole::Backup, SenderRole::Fault][usize::from(data[7] % 3)],
            holds: data[0] & 2 == 2,
        };
        let bytes: [u8; ADVERT_LEN] = encode(&a, k);
        assert_eq!(decode(&bytes, k), Ok(a));
        let _ = f.accept(&bytes, None);
        // A replay of the same bytes is never accepted twice.
        if f.accept(&bytes, None).is_ok() {
            panic!("replay accepted");
        }
    }
});
