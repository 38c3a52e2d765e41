//! Unit tests for every RFC 5798 rule of `election`, on a fake clock.

use super::*;
use std::net::Ipv4Addr;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

fn prio(p: u8) -> Priority {
    Priority::new(p).unwrap()
}

fn cfg(addr: u8, p: u8) -> ElectionConfig {
    ElectionConfig::new(ip(addr), prio(p))
}

fn mk(c: ElectionConfig) -> Election {
    Election::new(c).unwrap()
}

fn adv(from: u8, priority: u8, interval_ms: u32) -> Input {
    Input::Advert(AdvertIn {
        from: ip(from),
        priority,
        interval_ms,
    })
}

fn t(ms: u64) -> Millis {
    Millis(ms)
}

fn acts(a: Actions) -> Vec<Action> {
    a.as_slice().to_vec()
}

/// Started at `at`, then master at its down deadline.
fn master_at(e: &mut Election, at: u64) -> u64 {
    e.step(t(at), Input::Start);
    let d = e.next_deadline().unwrap();
    let out = acts(e.step(d, Input::Tick));
    assert!(matches!(
        out[..],
        [Action::SendAdvert { .. }, Action::BecomeMaster { .. }]
    ));
    assert_eq!(e.role(), Role::Master);
    d.0
}

#[test]
fn formulas() {
    // (256-100)*200/256 = 121.875 -> 121
    assert_eq!(skew_time_ms(100, 200), 121);
    assert_eq!(master_down_interval_ms(100, 200), 721);
    assert_eq!(skew_time_ms(254, 1000), 7);
    assert_eq!(master_down_interval_ms(254, 1000), 3007);
    assert_eq!(skew_time_ms(1, 1000), 996);
    assert_eq!(master_down_interval_ms(1, 1000), 3996);
    // Higher priority -> shorter skew, strictly, at the default interval.
    for p in 1..254u8 {
        assert!(master_down_interval_ms(p + 1, 200) <= master_down_interval_ms(p, 200));
    }
    assert!(master_down_interval_ms(150, 200) < master_down_interval_ms(140, 200));
}

#[test]
fn start_backup_then_master_at_exactly_master_down_interval() {
    let mut e = mk(cfg(1, 100));
    assert_eq!(e.role(), Role::Init);
    assert_eq!(e.next_deadline(), None);
    assert_eq!(
        acts(e.step(t(1000), Input::Start)),
        vec![Action::BecomeBackup {
            reason: Reason::Started
        }]
    );
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.next_deadline(), Some(t(1721)));
    assert!(e.step(t(1720), Input::Tick).is_empty());
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(
        acts(e.step(t(1721), Input::Tick)),
        vec![
            Action::SendAdvert {
                priority: 100,
                interval_ms: 200
            },
            Action::BecomeMaster {
                reason: Reason::MasterDown
            }
        ]
    );
    assert_eq!(e.next_deadline(), Some(t(1921)));
    // A second Start is a no-op.
    assert!(e.step(t(1800), Input::Start).is_empty());
    assert_eq!(e.transitions(), 2);
}

#[test]
fn master_adverts_every_interval_exactly() {
    let mut e = mk(cfg(1, 100));
    let m = master_at(&mut e, 0);
    for k in 1..=50u64 {
        let due = m + 200 * k;
        assert!(e.step(t(due - 1), Input::Tick).is_empty());
        assert_eq!(
            acts(e.step(t(due), Input::Tick)),
            vec![Action::SendAdvert {
                priority: 100,
                interval_ms: 200
            }]
        );
        assert_eq!(e.next_deadline(), Some(t(due + 200)));
    }
    // A late tick re-arms from the late time (RFC: reset the timer).
    let due = e.next_deadline().unwrap();
    e.step(due.add_ms(50), Input::Tick);
    assert_eq!(e.next_deadline(), Some(due.add_ms(250)));
}

#[test]
fn skew_makes_higher_priority_take_over_first() {
    let mut hi = mk(cfg(1, 200));
    let mut lo = mk(cfg(2, 50));
    hi.step(t(0), Input::Start);
    lo.step(t(0), Input::Start);
    let (dh, dl) = (hi.next_deadline().unwrap(), lo.next_deadline().unwrap());
    assert_eq!(dh, t(600 + (56 * 200) / 256));
    assert_eq!(dl, t(600 + (206 * 200) / 256));
    assert!(dh < dl);
}

#[test]
fn backup_higher_or_equal_advert_resets_timer_and_learns_interval() {
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    // Higher priority, 1 s interval: MDI = 3000 + 156*1000/256 = 3609.
    assert!(e.step(t(500), adv(2, 150, 1000)).is_empty());
    assert_eq!(e.master_adver_interval_ms(), 1000);
    assert_eq!(e.next_deadline(), Some(t(500 + 3609)));
    // Equal priority from a lower address still resets (priority >= local).
    e.step(t(1500), adv(0, 100, 1000));
    assert_eq!(e.next_deadline(), Some(t(1500 + 3609)));
    assert!(e.step(t(1500 + 3608), Input::Tick).is_empty());
    assert_eq!(e.role(), Role::Backup);
    let out = acts(e.step(t(1500 + 3609), Input::Tick));
    assert_eq!(out.len(), 2);
    assert_eq!(e.role(), Role::Master);
    // As master it advertises at its own interval, not the learned one.
    assert_eq!(e.next_deadline(), Some(t(1500 + 3609 + 200)));
}

#[test]
fn backup_priority_zero_sets_timer_to_skew() {
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    e.step(t(100), adv(2, 200, 200));
    assert_eq!(e.heard().unwrap().addr, ip(2));
    assert!(e.step(t(5000), adv(2, 0, 200)).is_empty());
    assert_eq!(e.heard(), None);
    assert_eq!(e.next_deadline(), Some(t(5000 + 121)));
    assert!(e.step(t(5120), Input::Tick).is_empty());
    let out = acts(e.step(t(5121), Input::Tick));
    assert_eq!(
        out[1],
        Action::BecomeMaster {
            reason: Reason::MasterDown
        }
    );
}

#[test]
fn preempt_lower_master_is_ignored_and_taken_over() {
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    // A lower master advertising every 200 ms: its adverts do not reset us.
    let mut now = 100;
    while now < 721 {
        assert!(e.step(t(now), adv(2, 90, 200)).is_empty());
        assert_eq!(e.next_deadline(), Some(t(721)));
        now += 200;
    }
    let out = acts(e.step(t(721), Input::Tick));
    assert_eq!(
        out,
        vec![
            Action::SendAdvert {
                priority: 100,
                interval_ms: 200
            },
            Action::BecomeMaster {
                reason: Reason::MasterDown
            }
        ]
    );
}

#[test]
fn no_preempt_lower_master_is_accepted() {
    let mut c = cfg(1, 100);
    c.preempt = false;
    let mut e = mk(c);
    e.step(t(0), Input::Start);
    for k in 0..100u64 {
        let now = 100 + 200 * k;
        assert!(e.step(t(now), Input::Tick).is_empty());
        e.step(t(now), adv(2, 90, 200));
        assert_eq!(e.next_deadline(), Some(t(now + 721)));
    }
    assert_eq!(e.role(), Role::Backup);
    assert_eq!(e.transitions(), 1);
}

#[test]
fn preempt_delay_waits_before_preempting_a_lower_master() {
    let mut c = cfg(1, 100);
    c.preempt_delay = Duration::from_millis(2000);
    let mut e = mk(c);
    e.step(t(0), Input::Start);
    // Lower master's adverts at 100, 300, ..., first seen at 100. Accepted
    // while now - 100 < 2000 (the last at 1900), discarded from 2100 on.
    let mut now = 100;
    loop {
        if let Some(d) = e.next_deadline() {
            if d.0 <= now {
                break;
            }
        }
        e.step(t(now), adv(2, 90, 200));
        now += 200;
    }
    assert_eq!(e.next_deadline(), Some(t(1900 + 721)));
    assert!(e.step(t(2620), Input::Tick).is_empty());
    assert_eq!(e.role(), Role::Backup);
    e.step(t(2621), Input::Tick);
    assert_eq!(e.role(), Role::Master);
    // The window starts again after a higher master was seen in between.
    let mut e = mk({
        let mut c = cfg(1, 100);
        c.preempt_delay = Duration::from_millis(2000);
        c
    });
    e.step(t(0), Input::Start);
    e.step(t(100), adv(2, 90, 200)); // lower seen since 100
    e.step(t(1000), adv(3, 120, 200)); // a higher one: episode reset
    e.step(t(2500), adv(2, 90, 200)); // lower seen since 2500: accepted
    assert_eq!(e.next_deadline(), Some(t(2500 + 721)));
}

#[test]
fn master_steps_down_for_higher_priority() {
    let mut e = mk(cfg(5, 100));
    let m = master_at(&mut e, 0);
    let out = acts(e.step(t(m + 10), adv(6, 101, 1000)));
    assert_eq!(
        out,
        vec![Action::BecomeBackup {
            reason: Reason::PreemptedBy {
                from: ip(6),
                priority: 101
            }
        }]
    );
    assert_eq!(e.role(), Role::Backup);
    // Learned interval 1000: MDI = 3609.
    assert_eq!(e.next_deadline(), Some(t(m + 10 + 3609)));
}

#[test]
fn equal_priority_higher_address_wins() {
    // From a higher address: step down.
    let mut e = mk(cfg(5, 100));
    let m = master_at(&mut e, 0);
    let out = acts(e.step(t(m + 1), adv(6, 100, 200)));
    assert!(matches!(out[..], [Action::BecomeBackup { .. }]));
    // From a lower address: stay and answer at once.
    let mut e = mk(cfg(5, 100));
    let m = master_at(&mut e, 0);
    let out = acts(e.step(t(m + 1), adv(4, 100, 200)));
    assert_eq!(
        out,
        vec![Action::SendAdvert {
            priority: 100,
            interval_ms: 200
        }]
    );
    assert_eq!(e.role(), Role::Master);
    assert_eq!(e.next_deadline(), Some(t(m + 1 + 200)));
    // Address comparison is numeric, not textual: 10.0.0.10 > 10.0.0.9.
    assert!(addr_greater(ip(10), ip(9)));
    assert!(addr_greater(
        "10.0.1.0".parse().unwrap(),
        "10.0.0.255".parse().unwrap()
    ));
}

#[test]
fn master_answers_lower_and_resigning_adverts_at_once() {
    let mut e = mk(cfg(5, 100));
    let m = master_at(&mut e, 0);
    for (i, p) in [99u8, 1, 0].into_iter().enumerate() {
        let now = m + 10 + i as u64;
        let out = acts(e.step(t(now), adv(9, p, 200)));
        assert_eq!(
            out,
            vec![Action::SendAdvert {
                priority: 100,
                interval_ms: 200
            }]
        );
        assert_eq!(e.role(), Role::Master);
        assert_eq!(e.next_deadline(), Some(t(now + 200)));
    }
}

#[test]
fn shutdown_resigns_with_priority_zero() {
    let mut e = mk(cfg(1, 100));
    let m = master_at(&mut e, 0);
    assert_eq!(
        acts(e.step(t(m + 5), Input::Shutdown)),
        vec![
            Action::SendAdvert {
                priority: 0,
                interval_ms: 200
            },
            Action::Stop
        ]
    );
    assert_eq!(e.role(), Role::Init);
    assert_eq!(e.next_deadline(), None);
    assert!(e.step(t(m + 6), Input::Shutdown).is_empty());
    // Restart works.
    e.step(t(m + 10), Input::Start);
    assert_eq!(e.role(), Role::Backup);
    // A backup just stops.
    assert_eq!(acts(e.step(t(m + 20), Input::Shutdown)), vec![Action::Stop]);
}

#[test]
fn tracking_failure_leaves_master_and_comes_back_as_backup() {
    let mut e = mk(cfg(1, 100));
    let m = master_at(&mut e, 0);
    assert!(e
        .step(t(m + 1), Input::Tracking { can_serve: true })
        .is_empty());
    assert_eq!(
        acts(e.step(t(m + 2), Input::Tracking { can_serve: false })),
        vec![
            Action::SendAdvert {
                priority: 0,
                interval_ms: 200
            },
            Action::EnterFault {
                reason: Reason::TrackingFailed
            }
        ]
    );
    assert_eq!(e.role(), Role::Fault);
    assert_eq!(e.next_deadline(), None);
    // In Fault: adverts are noted for status, nothing else.
    assert!(e.step(t(m + 3), adv(2, 50, 200)).is_empty());
    assert_eq!(e.heard().unwrap().addr, ip(2));
    assert!(e.step(t(m + 100_000), Input::Tick).is_empty());
    assert_eq!(e.role(), Role::Fault);
    assert_eq!(
        acts(e.step(t(m + 200_000), Input::Tracking { can_serve: true })),
        vec![Action::BecomeBackup {
            reason: Reason::TrackingRecovered
        }]
    );
    assert_eq!(e.next_deadline(), Some(t(m + 200_000 + 721)));
    // Backup -> Fault directly, no advert.
    assert_eq!(
        acts(e.step(t(m + 200_001), Input::Tracking { can_serve: false })),
        vec![Action::EnterFault {
            reason: Reason::TrackingFailed
        }]
    );
}

#[test]
fn start_while_cannot_serve_is_fault() {
    let mut e = mk(cfg(1, 100));
    assert!(e
        .step(t(0), Input::Tracking { can_serve: false })
        .is_empty());
    assert_eq!(
        acts(e.step(t(1), Input::Start)),
        vec![Action::EnterFault {
            reason: Reason::Started
        }]
    );
    assert_eq!(e.role(), Role::Fault);
}

#[test]
fn set_priority_on_master_advertises_at_once() {
    let mut e = mk(cfg(1, 100));
    let m = master_at(&mut e, 0);
    assert_eq!(
        acts(e.step(t(m + 7), Input::SetPriority(prio(10)))),
        vec![Action::SendAdvert {
            priority: 10,
            interval_ms: 200
        }]
    );
    assert!(e.step(t(m + 8), Input::SetPriority(prio(10))).is_empty());
    // On a backup it changes the skew used from the next reset.
    let mut b = mk(cfg(2, 100));
    b.step(t(0), Input::Start);
    b.step(t(0), Input::SetPriority(prio(254)));
    b.step(t(10), adv(3, 254, 200));
    assert_eq!(b.next_deadline(), Some(t(10 + 600 + 1)));
}

#[test]
fn own_adverts_init_and_time_going_backwards() {
    let mut e = mk(cfg(1, 100));
    assert!(e.step(t(0), adv(2, 200, 200)).is_empty()); // Init ignores
    e.step(t(1000), Input::Start);
    assert!(e.step(t(1001), adv(1, 200, 200)).is_empty()); // our own
    assert_eq!(e.next_deadline(), Some(t(1721)));
    // An earlier `now` counts as the latest one seen.
    e.step(t(5), adv(2, 200, 200));
    assert_eq!(e.next_deadline(), Some(t(1001 + 721)));
    // Absurd intervals from the wire are clamped.
    e.step(t(1002), adv(2, 200, 0));
    assert_eq!(e.master_adver_interval_ms(), MIN_ADVERT_INTERVAL_MS);
    e.step(t(1003), adv(2, 200, u32::MAX));
    assert_eq!(e.master_adver_interval_ms(), MAX_ADVERT_INTERVAL_MS);
    // Far-future deadlines saturate rather than wrap.
    let mut e = mk(cfg(1, 100));
    e.step(t(u64::MAX - 5), Input::Start);
    assert_eq!(e.next_deadline(), Some(t(u64::MAX)));
}

#[test]
fn config_bounds() {
    assert_eq!(Priority::new(0), None);
    assert_eq!(Priority::new(255), None);
    assert_eq!(Priority::new(1).map(Priority::get), Some(1));
    let mut c = cfg(1, 100);
    c.advert_interval = Duration::from_millis(5);
    assert!(matches!(
        Election::new(c.clone()),
        Err(ElectionConfigError::AdvertInterval { ms: 5 })
    ));
    c.advert_interval = Duration::from_secs(41);
    assert!(Election::new(c.clone()).is_err());
    c.advert_interval = Duration::from_millis(200);
    c.preempt_delay = Duration::from_secs(3601);
    assert!(matches!(
        Election::new(c.clone()),
        Err(ElectionConfigError::PreemptDelay { .. })
    ));
    let c = ElectionConfig::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), prio(1));
    assert_eq!(
        Election::new(c).unwrap_err(),
        ElectionConfigError::UnspecifiedAddress
    );
    // Error messages say what to do.
    let msg = ElectionConfigError::AdvertInterval { ms: 5 }.to_string();
    assert!(msg.contains("advert_interval") && msg.contains("10ms"));
}

#[test]
fn two_nodes_converge_on_the_higher_address_at_equal_priority() {
    // Both start together; both time out together (same skew); both become
    // master; each one's advert reaches the other; the lower address yields.
    let mut a = mk(cfg(1, 100));
    let mut b = mk(cfg(2, 100));
    a.step(t(0), Input::Start);
    b.step(t(0), Input::Start);
    let oa = acts(a.step(t(721), Input::Tick));
    let ob = acts(b.step(t(721), Input::Tick));
    assert_eq!((a.role(), b.role()), (Role::Master, Role::Master));
    let pa = match oa[0] {
        Action::SendAdvert { priority, .. } => priority,
        _ => unreachable!(),
    };
    let pb = match ob[0] {
        Action::SendAdvert { priority, .. } => priority,
        _ => unreachable!(),
    };
    b.step(t(722), adv(1, pa, 200));
    a.step(t(722), adv(2, pb, 200));
    assert_eq!((a.role(), b.role()), (Role::Backup, Role::Master));
}

// ---- the first master at start (start.rs) ------------------------------------

fn peer(from: u8, priority: u8, serving: bool) -> Input {
    Input::PeerHeard(PeerIn {
        from: ip(from),
        priority,
        serving,
    })
}

#[test]
fn the_first_down_timer_waits_one_heartbeat_more() {
    let mut e = mk(ElectionConfig {
        start_grace: Duration::from_millis(400),
        ..cfg(1, 100)
    });
    e.step(t(0), Input::Start);
    // 721 (master down at 200 ms) + 400 (heartbeat at 200 ms adverts).
    assert_eq!(e.next_deadline(), Some(t(721 + 400)));
}

#[test]
fn a_backup_heard_above_us_at_start_becomes_master_first() {
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    e.step(t(50), peer(2, 150, true));
    let d = e.next_deadline().unwrap();
    e.step(t(d.0 - 100), peer(2, 150, true));
    assert!(acts(e.step(d, Input::Tick)).is_empty(), "deferred");
    assert_eq!(e.role(), Role::Backup);
    // Then its advert arrives: we follow it; no second master ever.
    assert!(acts(e.step(t(d.0 + 100), adv(2, 150, 200))).is_empty());
    assert_eq!(e.role(), Role::Backup);
}

#[test]
fn a_higher_member_in_fault_or_silent_is_not_waited_for() {
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    e.step(t(50), peer(2, 150, true));
    e.step(t(60), peer(2, 150, false));
    let d = e.next_deadline().unwrap();
    e.step(d, Input::Tick);
    assert_eq!(e.role(), Role::Master, "a member in fault cannot serve");

    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    e.step(t(0), peer(2, 150, true));
    e.step(t(1_200), Input::Tick); // deferred once: heard 1.2 s ago at most
    e.step(t(1_200), peer(2, 150, true));
    let d = e.next_deadline().unwrap();
    e.step(d, Input::Tick);
    assert_eq!(e.role(), Role::Backup, "heard 0.7 s ago: still waited for");
    let d = e.next_deadline().unwrap();
    e.step(d, Input::Tick);
    e.step(e.next_deadline().unwrap(), Input::Tick);
    assert_eq!(
        e.role(),
        Role::Master,
        "silent for 3 heartbeats: not waited for"
    );
}

#[test]
fn lower_members_and_the_end_of_the_window_do_not_defer() {
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    e.step(t(50), peer(3, 90, true));
    let d = e.next_deadline().unwrap();
    e.step(d, Input::Tick);
    assert_eq!(e.role(), Role::Master);

    // A higher member still only heard as backup after the window: take over.
    let mut e = mk(cfg(1, 100));
    e.step(t(0), Input::Start);
    let mut now = 0;
    while e.role() == Role::Backup && now < 20_000 {
        now += 100;
        e.step(t(now), peer(2, 150, true));
        e.step(t(now), Input::Tick);
    }
    assert_eq!(e.role(), Role::Master);
    assert!(
        (start::START_WINDOW_MS..=start::START_WINDOW_MS + 800).contains(&now),
        "{now}"
    );
}
