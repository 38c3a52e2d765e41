//! The `dynia` transport's advert: codec, MAC, replay guard, receive filter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dynia_vrrp::advert::*;
use dynia_vrrp::election::{AdvertIn, Input};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 10, 0, n))
}

fn key() -> AdvertKey {
    AdvertKey::new(KEY).unwrap()
}

fn sample(sender: IpAddr, epoch: u64, seq: u64) -> Advert {
    Advert {
        vrid: 51,
        cluster: ClusterId::from_name("myapp"),
        sender,
        priority: 150,
        interval_ms: 200,
        epoch,
        seq,
        generation: 7,
        config_hash: [0x9f; 32],
        role: SenderRole::Master,
        holds: false,
    }
}

fn filter() -> ReceiveFilter {
    ReceiveFilter::new(
        key(),
        ClusterId::from_name("myapp"),
        51,
        ip(11),
        MemberSet::new([ip(11), ip(12), ip(13)]).unwrap(),
    )
}

#[test]
fn round_trip_v4_and_v6() {
    let k = key();
    for sender in [
        ip(12),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12)),
    ] {
        let a = sample(sender, 1_763_820_000_000, 42);
        let b = encode(&a, &k);
        assert_eq!(b.len(), ADVERT_LEN);
        assert_eq!(&b[..4], b"DYNV");
        assert_eq!(b[4], 1);
        assert_eq!(decode(&b, &k), Ok(a));
        let held = Advert { holds: true, ..a };
        assert_eq!(decode(&encode(&held, &k), &k), Ok(held));
    }
    let a = sample(ip(12), 1, 2);
    assert_eq!(
        a.to_input(),
        Input::Advert(AdvertIn {
            from: ip(12),
            priority: 150,
            interval_ms: 200
        })
    );
}

#[test]
fn layout_is_fixed() {
    let b = encode(
        &sample(ip(12), 0x0102030405060708, 0x1112131415161718),
        &key(),
    );
    assert_eq!(b[5], 51); // vrid
    assert_eq!(b[6], 150); // priority
    assert_eq!(b[7], 4); // family
    assert_eq!(&b[8..12], &200u32.to_be_bytes());
    assert_eq!(&b[20..24], &[10, 10, 0, 12]);
    assert!(b[24..36].iter().all(|&x| x == 0));
    assert_eq!(&b[36..44], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        &b[44..52],
        &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
    );
    assert_eq!(&b[52..60], &7u64.to_be_bytes());
    assert_eq!(&b[60..92], &[0x9f; 32]);
    assert_eq!(b[92], 1); // role: master
    assert_eq!(b[93], 0); // flags: does not hold the Reserved IP
    let held = Advert {
        holds: true,
        ..sample(ip(12), 1, 1)
    };
    assert_eq!(encode(&held, &key())[93], 1);
}

#[test]
fn cluster_id_is_stable_and_distinct() {
    assert_eq!(ClusterId::from_name("myapp"), ClusterId::from_name("myapp"));
    assert_ne!(
        ClusterId::from_name("myapp"),
        ClusterId::from_name("myapp2")
    );
}

#[test]
fn key_too_short_and_redacted() {
    assert!(matches!(
        AdvertKey::new(b"short"),
        Err(KeyError::TooShort { len: 5 })
    ));
    let dbg = format!("{:?}", key());
    assert!(!dbg.contains("0123"), "{dbg}");
}

#[test]
fn forged_or_wrong_key_is_bad_mac() {
    let k = key();
    let b = encode(&sample(ip(12), 1, 1), &k);
    // Every single-bit flip in the body or the MAC is caught.
    for i in 5..ADVERT_LEN {
        let mut f = b;
        f[i] ^= 0x01;
        assert_eq!(decode(&f, &k), Err(AdvertError::BadMac), "byte {i}");
    }
    let other = AdvertKey::new(b"another key, 32 bytes long......").unwrap();
    assert_eq!(decode(&b, &other), Err(AdvertError::BadMac));
    assert_eq!(
        filter().accept(&encode(&sample(ip(12), 1, 1), &other), None),
        Err(DropReason::BadMac)
    );
}

#[test]
fn truncated_long_magic_version() {
    let k = key();
    let b = encode(&sample(ip(12), 1, 1), &k);
    for len in 0..ADVERT_LEN {
        assert!(
            matches!(decode(&b[..len], &k), Err(AdvertError::Truncated { .. })),
            "len {len}"
        );
    }
    let mut long = [0u8; ADVERT_LEN + 1];
    long[..ADVERT_LEN].copy_from_slice(&b);
    assert_eq!(
        decode(&long, &k),
        Err(AdvertError::BadLength {
            len: ADVERT_LEN + 1
        })
    );
    let mut m = b;
    m[0] = b'X';
    assert_eq!(decode(&m, &k), Err(AdvertError::BadMagic));
    let mut v = b;
    v[4] = 2;
    assert_eq!(decode(&v, &k), Err(AdvertError::UnsupportedVersion(2)));
    let mut f = filter();
    assert_eq!(f.accept(&b[..50], None), Err(DropReason::Truncated));
    assert_eq!(f.accept(&v, None), Err(DropReason::BadVersion));
    assert_eq!(f.accept(&m, None), Err(DropReason::BadMagic));
    assert_eq!(f.accept(&long, None), Err(DropReason::BadLength));
}

/// Re-MACs a body edited by hand, to reach the checks after the MAC.
fn remac(mut b: [u8; ADVERT_LEN], k: &[u8]) -> [u8; ADVERT_LEN] {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(k).unwrap();
    m.update(&b[..BODY_LEN]);
    b[BODY_LEN..].copy_from_slice(&m.finalize().into_bytes());
    b
}

#[test]
fn authenticated_but_malformed() {
    let k = key();
    let b = encode(&sample(ip(12), 1, 1), &k);
    let mut fam = b;
    fam[7] = 5;
    let mut pad = b;
    pad[30] = 1;
    let mut p255 = b;
    p255[6] = 255;
    let mut i0 = b;
    i0[8..12].copy_from_slice(&0u32.to_be_bytes());
    let mut ibig = b;
    ibig[8..12].copy_from_slice(&40_951u32.to_be_bytes());
    let mut flag = b;
    flag[93] = 0x02; // an unknown flag bit
    let mut rsv = b;
    rsv[95] = 1;
    for bad in [fam, pad, p255, i0, ibig, flag, rsv] {
        let bad = remac(bad, KEY);
        assert!(matches!(decode(&bad, &k), Err(AdvertError::Malformed(_))));
        assert_eq!(filter().accept(&bad, None), Err(DropReason::Malformed));
    }
}

#[test]
fn filter_accepts_members_and_drops_the_rest_with_reasons() {
    let k = key();
    let mut f = filter();
    assert_eq!(
        f.accept(&encode(&sample(ip(12), 5, 1), &k), Some(ip(12))),
        Ok(sample(ip(12), 5, 1))
    );
    // Non-member, even with the right key.
    assert_eq!(
        f.accept(&encode(&sample(ip(99), 5, 1), &k), None),
        Err(DropReason::NotMember)
    );
    // Our own advert (e.g. looped back).
    assert_eq!(
        f.accept(&encode(&sample(ip(11), 5, 1), &k), None),
        Err(DropReason::Own)
    );
    // Another cluster / VRID.
    let mut other = sample(ip(13), 5, 1);
    other.cluster = ClusterId::from_name("other");
    assert_eq!(
        f.accept(&encode(&other, &k), None),
        Err(DropReason::WrongCluster)
    );
    let mut other = sample(ip(13), 5, 1);
    other.vrid = 52;
    assert_eq!(
        f.accept(&encode(&other, &k), None),
        Err(DropReason::WrongVrid)
    );
    // UDP source differs from the authenticated sender.
    assert_eq!(
        f.accept(&encode(&sample(ip(13), 5, 1), &k), Some(ip(12))),
        Err(DropReason::SourceMismatch)
    );
    // None of the drops above consumed ip(13)'s sequence.
    assert_eq!(f.replay_guard().last(ip(13)), None);
    assert!(f.accept(&encode(&sample(ip(13), 5, 1), &k), None).is_ok());
}

#[test]
fn replay_old_seq_old_epoch_and_reboot() {
    let k = key();
    let mut f = filter();
    let s = |e, q| encode(&sample(ip(12), e, q), &k);
    assert!(f.accept(&s(10, 5), None).is_ok());
    assert_eq!(f.accept(&s(10, 5), None), Err(DropReason::ReplayOldSeq)); // exact replay
    assert_eq!(f.accept(&s(10, 4), None), Err(DropReason::ReplayOldSeq)); // older / reordered
    assert!(f.accept(&s(10, 6), None).is_ok());
    assert!(f.accept(&s(10, 100), None).is_ok()); // gaps are fine (losses)
    assert_eq!(f.accept(&s(9, 1000), None), Err(DropReason::ReplayOldEpoch)); // previous boot
    assert!(f.accept(&s(11, 1), None).is_ok()); // reboot: new epoch, seq restarts
    assert_eq!(f.accept(&s(10, 101), None), Err(DropReason::ReplayOldEpoch));
    assert_eq!(f.replay_guard().last(ip(12)), Some((11, 1)));
    // Other senders are independent.
    assert!(f.accept(&encode(&sample(ip(13), 1, 1), &k), None).is_ok());
    // Removing a member forgets it and then drops it.
    f.set_members(MemberSet::new([ip(11), ip(13)]).unwrap());
    assert_eq!(f.replay_guard().last(ip(12)), None);
    assert_eq!(f.accept(&s(12, 1), None), Err(DropReason::NotMember));
    assert_eq!(f.replay_guard().len(), 1);
}

#[test]
fn replay_guard_is_bounded() {
    let mut g = ReplayGuard::new();
    for i in 0..MAX_TRACKED_SENDERS {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
        assert_eq!(g.check_and_record(a, 1, 1), ReplayVerdict::Fresh);
    }
    assert_eq!(g.len(), MAX_TRACKED_SENDERS);
    let new = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(g.check_and_record(new, 1, 1), ReplayVerdict::TableFull);
    assert_eq!(g.len(), MAX_TRACKED_SENDERS);
    // Known senders still work.
    let a0 = IpAddr::V4(Ipv4Addr::from(0x0a00_0000));
    assert_eq!(g.check_and_record(a0, 1, 2), ReplayVerdict::Fresh);
    assert!(
        MemberSet::new((0..=MAX_MEMBERS as u32).map(|i| IpAddr::V4(Ipv4Addr::from(i)))).is_err()
    );
}

#[test]
fn send_counter() {
    let mut c = SendCounter::new(77);
    assert_eq!(c.advance(), (77, 1));
    assert_eq!(c.advance(), (77, 2));
    assert_eq!(c.epoch(), 77);
}

#[test]
fn drop_reason_labels_unique() {
    let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), DropReason::ALL.len());
}

#[test]
fn random_bytes_never_panic() {
    let k = key();
    let mut f = filter();
    let valid = encode(&sample(ip(12), 1, 1), &k);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = [0u8; 200];
    for i in 0..50_000u32 {
        let len = (next() % 200) as usize;
        for b in buf.iter_mut().take(len) {
            *b = next() as u8;
        }
        if i % 2 == 0 {
            // Mutate a valid advert instead: more paths reached.
            buf[..ADVERT_LEN].copy_from_slice(&valid);
            let n = 1 + next() % 4;
            for _ in 0..n {
                let at = (next() % ADVERT_LEN as u64) as usize;
                buf[at] = next() as u8;
            }
            let len = if next() % 4 == 0 {
                (next() % 200) as usize
            } else {
                ADVERT_LEN
            };
            let _ = decode(&buf[..len], &k);
            let _ = f.accept(&buf[..len], None);
        } else {
            let _ = decode(&buf[..len], &k);
            let _ = f.accept(&buf[..len], Some(ip(12)));
        }
    }
}
