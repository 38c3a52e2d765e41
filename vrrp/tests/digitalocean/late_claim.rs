//! `vrrp3` with `digitalocean`: a claim whose assign was in flight when its
//! node stepped down lands later, on a backup the master cannot hear (vrrp3
//! backups are silent). The backup's pure follower reads the holder after
//! the step-down and hands the address to the master it hears
//! (`Driver::hand_to`), executed here as `runtime/follow.rs` does, against
//! the simulator with 11 s actions on tokio's paused clock.

use std::net::IpAddr;
use std::time::Duration;

use dynia_testkit::dosim::DoSim;
use dynia_vrrp::driver::{Driver, Holder};
use dynia_vrrp::election::Millis;
use dynia_vrrp::follower::{self, Follower, FollowerConfig, FollowerInput, FollowerOutput, Want};
use tokio::time::Instant;

use super::{driver, posts, ME, ME_PRIVATE, OTHER, OTHER_PRIVATE, RIP, TOKEN};

/// The master's election address (the member with droplet `OTHER`).
const MASTER: IpAddr = IpAddr::V4(OTHER_PRIVATE);

fn cfg(sim: &DoSim, droplet: u64) -> dynia_vrrp::driver::DigitalOceanConfig {
    let mut c = super::cfg(sim, droplet);
    // Production bounds: an 11 s action is waited out within a claim.
    c.retry = Default::default();
    c.poll = Default::default();
    c
}

/// One follower output of the backup, executed; the input it answers with.
async fn execute(d: &Driver, o: FollowerOutput) -> Option<FollowerInput> {
    let member = |id| (id == OTHER).then_some(MASTER);
    Some(match o {
        FollowerOutput::LateRead => FollowerInput::LateRead {
            seen: d
                .holder()
                .await
                .ok()
                .map(|h: Holder| follower::resolve(h, member, |_| None)),
            // It hears the master's adverts.
            master: Some(MASTER),
        },
        FollowerOutput::HandTo { member } => {
            assert_eq!(member, MASTER);
            FollowerInput::HandedTo {
                ok: d.hand_to(OTHER).await.is_ok(),
            }
        }
        FollowerOutput::Warm { .. } => FollowerInput::Warmed,
        FollowerOutput::Release => FollowerInput::Released,
        _ => return None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_late_claim_on_a_backup_is_handed_to_the_master() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .unwrap();
    sim.add_droplet(ME, ME_PRIVATE);
    sim.add_droplet(OTHER, OTHER_PRIVATE);
    // The master's claim succeeded: the IP points at it.
    sim.add_reserved_ip(RIP, Some(OTHER));
    sim.set_action_delay(Duration::from_secs(11));
    let me = Driver::from(driver(cfg(&sim, ME)).await);
    let master = Driver::from(driver(cfg(&sim, OTHER)).await);

    // This node was master a moment: its assign is posted...
    let t0 = Instant::now();
    let now = || Millis(t0.elapsed().as_millis() as u64);
    let mut f = Follower::new(FollowerConfig::new(Duration::from_secs(3)), 7);
    f.start();
    f.step(now(), FollowerInput::Warmed);
    assert_eq!(
        f.step(now(), FollowerInput::Want(Want::Hold)),
        vec![FollowerOutput::Claim]
    );
    let d = me.clone();
    let claim = tokio::spawn(async move { d.claim().await });
    let posted = sim.until_served(Duration::from_secs(30), |s| {
        !posts(&s.api_calls()).is_empty()
    });
    assert!(posted.await, "the claim's POST never went out");
    // ...and it steps down (a higher master is heard): the claim is
    // abandoned, but the assign runs on at the API.
    claim.abort();
    let stepped_down = t0.elapsed();
    let outs = f.step(now(), FollowerInput::Want(Want::Release));
    assert_eq!(outs, vec![FollowerOutput::Abandon, FollowerOutput::Release]);
    // DigitalOcean has nothing to release.
    let mut outs = f.step(now(), FollowerInput::Released);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        sim.holder(RIP),
        Some(ME),
        "the late assign landed on the backup"
    );
    // The master cannot hear this silent backup: it reads a running member
    // it does not hear, after its own claim succeeded: it yields.
    assert!(matches!(
        master.check().await.unwrap(),
        Holder::Other {
            droplet_id: ME,
            running: Some(true)
        }
    ));

    // The backup's follower runs until the IP is back on the master (its
    // reads after the step-down: 15, 45, 105 s).
    let mut handed_at = None;
    while t0.elapsed() < Duration::from_secs(200) {
        let mut input = None;
        for o in outs.drain(..) {
            let hand = matches!(o, FollowerOutput::HandTo { .. });
            if let Some(i) = execute(&me, o).await {
                input = Some(i);
            }
            if hand {
                handed_at.get_or_insert(t0.elapsed() - stepped_down);
            }
        }
        outs = match input {
            Some(i) => f.step(now(), i),
            None => {
                let wake = f.next_wake().expect("an idle follower wakes").0;
                tokio::time::sleep_until(t0 + Duration::from_millis(wake)).await;
                f.step(now(), FollowerInput::Tick)
            }
        };
    }
    let handed_at = handed_at.expect("the backup handed the IP over");
    println!(
        "late claim handed to the master {} ms after the step-down (11 s actions)",
        handed_at.as_millis()
    );
    assert!(handed_at < Duration::from_secs(30), "{handed_at:?}");
    assert_eq!(sim.holder(RIP), Some(OTHER), "the IP ends on the master");
    assert_eq!(master.check().await.unwrap(), Holder::Me);
    // One hand-over, no ping-pong: the later reads find it on the master.
    let to_master = posts(&sim.api_calls())
        .into_iter()
        .filter(|c| c.droplet_id == Some(OTHER))
        .count();
    assert_eq!(to_master, 1);
}
