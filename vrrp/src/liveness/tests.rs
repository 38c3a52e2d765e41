use std::net::{IpAddr, Ipv4Addr};

use super::*;

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

fn at(ms: u64) -> Millis {
    Millis(ms)
}

/// Heard every `every` ms from 0 to `until` (inclusive), declaring `declared`.
fn heard_every(l: &mut Liveness, addr: IpAddr, every: u64, until: u64, declared: u32) {
    let mut t = 0;
    while t <= until {
        l.heard(at(t), addr, 150, declared);
        assert!(l.tick(at(t)).is_empty(), "lost while heard at {t}");
        t += every;
    }
}

#[test]
fn never_heard_is_unknown_and_never_lost() {
    let mut l = Liveness::default();
    assert_eq!(l.get(A), PeerLiveness::Unknown);
    assert!(l.tick(at(1_000_000)).is_empty());
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn first_heard_is_a_change_then_quiet() {
    let mut l = Liveness::default();
    let c = l.heard(at(0), A, 150, 200);
    assert_eq!(
        c,
        Some(LivenessChange {
            addr: A,
            now: PeerLiveness::Heard
        })
    );
    assert_eq!(l.heard(at(200), A, 150, 200), None);
    assert_eq!(l.get(A), PeerLiveness::Heard);
}

#[test]
fn a_backup_at_200ms_heartbeats_is_lost_within_a_second() {
    let mut l = Liveness::default();
    heard_every(&mut l, A, 200, 2_000, 200);
    // 3 × 200 + skew(150, 200) = 600 + 82 after the last heartbeat.
    let due = l.next_deadline().expect("a deadline");
    assert_eq!(due, at(2_000 + 682));
    assert!(l.tick(at(2_681)).is_empty());
    let lost = l.tick(at(2_682));
    assert_eq!(
        lost,
        vec![LivenessChange {
            addr: A,
            now: PeerLiveness::Lost
        }]
    );
    assert_eq!(l.get(A), PeerLiveness::Lost);
    assert!(l.tick(at(9_000)).is_empty(), "lost is reported once");
}

#[test]
fn a_master_at_100ms_adverts_is_lost_in_its_master_down_interval() {
    let mut l = Liveness::default();
    heard_every(&mut l, A, 100, 1_000, 100);
    assert_eq!(l.next_deadline(), Some(at(1_000 + 341)));
}

#[test]
fn an_older_node_heartbeating_every_second_is_not_lost() {
    // Declares its advert interval (100 ms) but sends once a second.
    let mut l = Liveness::default();
    heard_every(&mut l, A, 1_000, 10_000, 100);
    assert_eq!(l.get(A), PeerLiveness::Heard);
}

#[test]
fn one_late_heartbeat_widens_the_next_deadline_only() {
    let mut l = Liveness::default();
    heard_every(&mut l, A, 200, 1_000, 200);
    l.heard(at(1_500), A, 150, 200); // 500 ms gap
    assert_eq!(l.next_deadline(), Some(at(1_500 + 3 * 500 + 207)));
    l.heard(at(1_700), A, 150, 200);
    assert_eq!(l.next_deadline(), Some(at(1_700 + 682)));
}

#[test]
fn heard_again_after_lost_is_a_change() {
    let mut l = Liveness::default();
    heard_every(&mut l, A, 200, 400, 200);
    assert_eq!(l.tick(at(5_000)).len(), 1);
    let back = l.heard(at(6_000), A, 150, 200);
    assert_eq!(
        back,
        Some(LivenessChange {
            addr: A,
            now: PeerLiveness::Heard
        })
    );
}

#[test]
fn members_are_judged_apart_and_removed_ones_forgotten() {
    let mut l = Liveness::default();
    l.heard(at(0), A, 150, 200);
    l.heard(at(0), B, 100, 200);
    heard_every(&mut l, B, 200, 3_400, 200);
    // A's first message had no gap: judged at the slowest period, 3 s + skew.
    let lost = l.tick(at(3_414));
    assert_eq!(
        lost,
        vec![LivenessChange {
            addr: A,
            now: PeerLiveness::Lost
        }]
    );
    l.retain(&[B]);
    assert_eq!(l.get(A), PeerLiveness::Unknown);
    assert_eq!(l.get(B), PeerLiveness::Heard);
}
