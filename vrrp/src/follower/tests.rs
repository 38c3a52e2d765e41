use super::*;
use FollowerInput as I;
use FollowerOutput as O;

fn started() -> Follower {
    let mut f = Follower::new(FollowerConfig::new(Duration::from_secs(3)), 7);
    assert_eq!(f.start(), vec![O::Warm { first: true }]);
    assert!(f.step(Millis(0), I::Warmed).is_empty());
    f
}

fn holding(f: &mut Follower, now: u64) {
    assert_eq!(f.step(Millis(now), I::Want(Want::Hold)), vec![O::Claim]);
    assert_eq!(
        f.step(Millis(now + 100), I::Claimed { ok: true }),
        vec![O::SetHeld(true), O::Announce]
    );
}

#[test]
fn a_wish_waits_for_the_first_read_of_the_holder() {
    let mut f = Follower::new(FollowerConfig::new(Duration::from_secs(3)), 7);
    f.start();
    assert!(f.step(Millis(5), I::Want(Want::Hold)).is_empty());
    assert_eq!(f.step(Millis(9), I::Warmed), vec![O::Claim]);
}

#[test]
fn a_role_change_abandons_the_claim_and_releases() {
    let mut f = started();
    assert_eq!(f.step(Millis(10), I::Want(Want::Hold)), vec![O::Claim]);
    assert_eq!(
        f.step(Millis(20), I::Want(Want::Release)),
        vec![O::Abandon, O::Release]
    );
    // A late answer to the abandoned claim changes nothing.
    assert!(f.step(Millis(30), I::Claimed { ok: true }).is_empty());
    assert!(f.step(Millis(40), I::Released).is_empty());
    assert!(!f.held());
}

#[test]
fn checks_every_reconcile_period_and_keeps_warm_as_backup() {
    let mut f = started();
    holding(&mut f, 0);
    assert_eq!(f.next_wake(), Some(Millis(5_100)));
    assert!(f.step(Millis(5_000), I::Tick).is_empty());
    assert_eq!(f.step(Millis(5_100), I::Tick), vec![O::ReadHolder]);
    assert!(f.step(Millis(5_200), I::HolderRead(None)).is_empty());
    assert_eq!(f.next_wake(), Some(Millis(10_200)));
    assert_eq!(
        f.step(Millis(6_000), I::Want(Want::Release)),
        vec![O::Release]
    );
    assert_eq!(f.step(Millis(6_100), I::Released), vec![O::SetHeld(false)]);
    // It claimed as master: first the reads after the step-down (below).
    late_read_at(&mut f, 21_100);
    f.step(
        Millis(21_100),
        I::LateRead {
            seen: None,
            master: None,
        },
    );
    late_read_at(&mut f, 51_100);
    f.step(
        Millis(51_100),
        I::LateRead {
            seen: None,
            master: None,
        },
    );
    late_read_at(&mut f, 111_100);
    f.step(
        Millis(111_100),
        I::LateRead {
            seen: None,
            master: None,
        },
    );
    let warm = f.next_wake().unwrap().0 - 111_100;
    // WARM_EVERY ± 10 %: at most 12 reads an hour.
    assert!((324_000..=396_000).contains(&warm), "{warm}");
}

#[test]
fn reasserts_at_most_once_a_gap() {
    let mut f = started();
    holding(&mut f, 0);
    assert!(f.step(Millis(500), I::LowerMasterHeard).is_empty());
    assert_eq!(f.step(Millis(1_100), I::LowerMasterHeard), vec![O::Claim]);
    // Heard again while the claim runs: the gap counts from its end.
    assert!(f.step(Millis(1_200), I::LowerMasterHeard).is_empty());
    assert_eq!(
        f.step(Millis(1_300), I::Claimed { ok: true }),
        vec![O::Announce]
    );
}

#[test]
fn yields_to_an_unheard_running_member_and_claims_once_it_stops() {
    let mut f = started();
    holding(&mut f, 0);
    let holder: IpAddr = "10.0.0.3".parse().unwrap();
    let other = |running| HolderSeen::Member {
        addr: holder,
        heard_ago: None,
        running: Some(running),
    };
    f.step(Millis(5_100), I::Tick);
    assert_eq!(
        f.step(Millis(5_200), I::HolderRead(Some(other(true)))),
        vec![
            O::SteppedBack(Some(holder)),
            O::SetHeld(false),
            O::ProbeHolder
        ]
    );
    // The holder serves behind the Reserved IP: a real split, keep yielding.
    assert!(f
        .step(Millis(5_300), I::Probed { serving: true })
        .is_empty());
    f.step(Millis(10_300), I::Tick);
    assert_eq!(
        f.step(Millis(10_400), I::HolderRead(Some(other(false)))),
        vec![O::SteppedBack(None), O::Claim]
    );
}

#[test]
fn a_new_mastership_starts_without_a_successful_claim() {
    let mut f = started();
    holding(&mut f, 0);
    f.step(Millis(1_000), I::Want(Want::Release));
    f.step(Millis(1_100), I::Released);
    // Master again, and this claim fails: the address is where the last
    // master left it, not a split brain.
    f.step(Millis(2_000), I::Want(Want::Hold));
    assert!(f.step(Millis(2_100), I::Claimed { ok: false }).is_empty());
    f.step(Millis(7_100), I::Tick);
    let seen = HolderSeen::Member {
        addr: "10.0.0.3".parse().unwrap(),
        heard_ago: None,
        running: Some(true),
    };
    assert_eq!(
        f.step(Millis(7_200), I::HolderRead(Some(seen))),
        vec![O::Claim]
    );
}

fn yielded(f: &mut Follower, holder: IpAddr, now: u64) -> Vec<O> {
    let seen = HolderSeen::Member {
        addr: holder,
        heard_ago: None,
        running: Some(true),
    };
    assert_eq!(f.step(Millis(now), I::Tick), vec![O::ReadHolder]);
    f.step(Millis(now + 10), I::HolderRead(Some(seen)))
}

#[test]
fn a_holder_that_does_not_serve_three_times_in_a_row_is_claimed_from() {
    let mut f = started();
    holding(&mut f, 0);
    let holder: IpAddr = "10.0.0.3".parse().unwrap();
    let mut t = f.next_wake().unwrap().0;
    let probe = |f: &mut Follower, t: &mut u64, serving: bool| {
        let outs = yielded(f, holder, *t);
        assert_eq!(outs.last(), Some(&O::ProbeHolder), "{outs:?}");
        let outs = f.step(Millis(*t + 20), I::Probed { serving });
        *t = f.next_wake().map_or(*t, |w| w.0);
        outs
    };
    // Two failures, then a success: the count starts again.
    assert!(probe(&mut f, &mut t, false).is_empty());
    assert!(probe(&mut f, &mut t, false).is_empty());
    assert!(probe(&mut f, &mut t, true).is_empty());
    assert!(probe(&mut f, &mut t, false).is_empty());
    assert!(probe(&mut f, &mut t, false).is_empty());
    // The third failure in a row: the holder's dynia is dead; claim.
    assert_eq!(
        probe(&mut f, &mut t, false),
        vec![O::SteppedBack(None), O::Claim]
    );
    assert_eq!(
        f.step(Millis(t + 100), I::Claimed { ok: true }),
        vec![O::SetHeld(true), O::Announce]
    );
    // The holder takes it back: its dynia lives (the probes were wrong,
    // e.g. a firewall): yield, and no more probes in this mastership.
    let t = f.next_wake().unwrap().0;
    assert_eq!(
        yielded(&mut f, holder, t),
        vec![O::SteppedBack(Some(holder)), O::SetHeld(false)]
    );
    let t = f.next_wake().unwrap().0;
    assert!(yielded(&mut f, holder, t).is_empty());
}

#[test]
fn a_role_change_abandons_a_probe() {
    let mut f = started();
    holding(&mut f, 0);
    let holder: IpAddr = "10.0.0.3".parse().unwrap();
    let t = f.next_wake().unwrap().0;
    assert_eq!(yielded(&mut f, holder, t).last(), Some(&O::ProbeHolder));
    assert_eq!(
        f.step(Millis(t + 50), I::Want(Want::Release)),
        vec![O::Abandon, O::Release]
    );
    assert!(f
        .step(Millis(t + 60), I::Probed { serving: false })
        .is_empty());
}

fn late_read_at(f: &mut Follower, at: u64) {
    assert_eq!(f.next_wake(), Some(Millis(at)));
    assert!(f.step(Millis(at - 1), I::Tick).is_empty());
    assert_eq!(f.step(Millis(at), I::Tick), vec![O::LateRead]);
}

#[test]
fn after_a_step_down_a_late_claim_here_is_handed_to_the_master() {
    let mut f = started();
    let master: IpAddr = "10.0.0.2".parse().unwrap();
    // Master, claim in flight, demoted: the POST may still land.
    assert_eq!(f.step(Millis(0), I::Want(Want::Hold)), vec![O::Claim]);
    assert_eq!(
        f.step(Millis(100), I::Want(Want::Release)),
        vec![O::Abandon, O::Release]
    );
    f.step(Millis(200), I::Released);
    // 15 s on: the address points here and a master is heard: hand it over.
    late_read_at(&mut f, 15_200);
    assert_eq!(
        f.step(
            Millis(15_300),
            I::LateRead {
                seen: Some(HolderSeen::Me),
                master: Some(master)
            }
        ),
        vec![O::HandTo { member: master }]
    );
    assert!(f.step(Millis(16_000), I::HandedTo { ok: false }).is_empty());
    // The hand failed: the next read (30 s later) tries again.
    late_read_at(&mut f, 46_000);
    assert_eq!(
        f.step(
            Millis(46_100),
            I::LateRead {
                seen: Some(HolderSeen::Me),
                master: Some(master)
            }
        ),
        vec![O::HandTo { member: master }]
    );
    f.step(Millis(47_000), I::HandedTo { ok: true });
    // The third and last read (60 s later) finds it on the master.
    late_read_at(&mut f, 107_000);
    let on_master = HolderSeen::Member {
        addr: master,
        heard_ago: Some(Duration::from_millis(100)),
        running: Some(true),
    };
    assert!(f
        .step(
            Millis(107_100),
            I::LateRead {
                seen: Some(on_master),
                master: Some(master)
            }
        )
        .is_empty());
    // Then only keep-warm reads.
    let warm = f.next_wake().unwrap().0 - 107_100;
    assert!((324_000..=396_000).contains(&warm), "{warm}");
}

#[test]
fn no_late_reads_without_a_claim_and_none_while_master() {
    let mut f = started();
    // Backup from the start: never claimed, nothing to check.
    f.step(Millis(0), I::Want(Want::Release));
    f.step(Millis(10), I::Released);
    assert!(f.next_wake().unwrap().0 > 300_000);
    // Master, then backup: the late read; master again before the hand
    // finishes: the hand is abandoned.
    holding(&mut f, 1_000);
    f.step(Millis(2_000), I::Want(Want::Release));
    f.step(Millis(2_100), I::Released);
    late_read_at(&mut f, 17_100);
    let master: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(
        f.step(
            Millis(17_200),
            I::LateRead {
                seen: Some(HolderSeen::Me),
                master: Some(master)
            }
        ),
        vec![O::HandTo { member: master }]
    );
    assert_eq!(
        f.step(Millis(17_300), I::Want(Want::Hold)),
        vec![O::Abandon, O::Claim]
    );
    assert!(f.step(Millis(17_400), I::HandedTo { ok: true }).is_empty());
    // A read that finds it here with no master heard does nothing.
    f.step(Millis(17_500), I::Claimed { ok: true });
    f.step(Millis(18_000), I::Want(Want::Release));
    f.step(Millis(18_100), I::Released);
    late_read_at(&mut f, 33_100);
    assert!(f
        .step(
            Millis(33_200),
            I::LateRead {
                seen: Some(HolderSeen::Me),
                master: None
            }
        )
        .is_empty());
}

#[test]
fn a_failed_claim_from_a_holder_that_does_not_serve_is_retried() {
    let mut f = started();
    holding(&mut f, 0);
    let holder: IpAddr = "10.0.0.3".parse().unwrap();
    let mut t = 0;
    for _ in 0..3 {
        t = f.next_wake().unwrap().0;
        assert_eq!(yielded(&mut f, holder, t).last(), Some(&O::ProbeHolder));
        f.step(Millis(t + 20), I::Probed { serving: false });
    }
    // The claim fails (the API): the next check claims again at once, and
    // the holder is not taken for one that came back.
    assert!(f.step(Millis(t + 100), I::Claimed { ok: false }).is_empty());
    let t = f.next_wake().unwrap().0;
    assert_eq!(yielded(&mut f, holder, t), vec![O::Claim]);
    f.step(Millis(t + 100), I::Claimed { ok: true });
    // Now it came back (took the address): no more probes.
    let t = f.next_wake().unwrap().0;
    assert_eq!(
        yielded(&mut f, holder, t),
        vec![O::SteppedBack(Some(holder)), O::SetHeld(false)]
    );
}
