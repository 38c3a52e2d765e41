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
    let warm = f.next_wake().unwrap().0 - 6_100;
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
        vec![O::SteppedBack(Some(holder)), O::SetHeld(false)]
    );
    f.step(Millis(10_200), I::Tick);
    assert_eq!(
        f.step(Millis(10_300), I::HolderRead(Some(other(false)))),
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
