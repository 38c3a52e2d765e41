//! The API budget in steady state: the real pure follower of a master and
//! of a backup, executed as `runtime/follow.rs` does (reconcile reads with
//! `Driver::check`, keep-warm reads with `Driver::warm`), for two
//! simulated hours on tokio's paused clock, against the simulator's API and
//! the master's metadata service. Target (docs/digitalocean.md): master ≤ 60
//! API calls an hour, backup ≤ 12.

use std::time::Duration;

use dynia_testkit::dosim::DoSim;
use dynia_vrrp::driver::{DigitalOcean, Driver, Holder};
use dynia_vrrp::election::Millis;
use dynia_vrrp::follower::{self, Follower, FollowerConfig, FollowerInput, FollowerOutput, Want};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::time::Instant;

use super::{driver, Captured, ME, ME_PRIVATE, OTHER, OTHER_PRIVATE, RIP, TOKEN};

const HOUR: Duration = Duration::from_secs(3600);

/// One driver call the follower asked for, executed; the input it answers with.
async fn execute(d: &Driver, o: FollowerOutput) -> Option<FollowerInput> {
    Some(match o {
        FollowerOutput::Claim => FollowerInput::Claimed {
            ok: d.claim().await.is_ok(),
        },
        FollowerOutput::ReadHolder => {
            let seen = d
                .check()
                .await
                .ok()
                .map(|h: Holder| follower::resolve(h, |_| None, |_| None));
            FollowerInput::HolderRead(seen)
        }
        FollowerOutput::Warm { .. } => {
            let _ = d.warm().await;
            FollowerInput::Warmed
        }
        FollowerOutput::Release => {
            let _ = d.release().await;
            FollowerInput::Released
        }
        _ => return None,
    })
}

/// Runs a follower that wants `want` until `until`; samples `calls()` at
/// each whole hour from `t0`.
async fn shell(
    d: Driver,
    want: Want,
    t0: Instant,
    hours: u32,
    calls: impl Fn() -> u64,
) -> Vec<u64> {
    let mut f = Follower::new(FollowerConfig::new(Duration::from_secs(3)), 7);
    let now = || Millis(t0.elapsed().as_millis() as u64);
    let mut outs = f.start();
    let mut wished = false;
    let mut samples = vec![];
    while samples.len() < hours as usize {
        let mut input = None;
        for o in outs.drain(..) {
            if let Some(i) = execute(&d, o).await {
                input = Some(i);
            }
        }
        if t0.elapsed() >= HOUR * (samples.len() as u32 + 1) {
            samples.push(calls());
        }
        outs = match input {
            Some(i) => f.step(now(), i),
            None if !wished => {
                wished = true;
                f.step(now(), FollowerInput::Want(want))
            }
            None => {
                let wake = f.next_wake().expect("an idle follower has a next wake").0;
                tokio::time::sleep_until(t0 + Duration::from_millis(wake)).await;
                f.step(now(), FollowerInput::Tick)
            }
        };
    }
    samples
}

#[tokio::test(start_paused = true)]
async fn two_hours_of_steady_state_stay_within_the_budget() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .unwrap();
    sim.add_droplet(ME, ME_PRIVATE);
    sim.add_droplet(OTHER, OTHER_PRIVATE);
    sim.add_reserved_ip(RIP, Some(ME));
    let md = sim.metadata_for(ME).await.unwrap();
    let mut mc = super::cfg(&sim, ME);
    mc.metadata_url = md.url();
    let master: DigitalOcean = driver(mc).await;
    let backup: DigitalOcean = driver(super::cfg(&sim, OTHER)).await;
    let registry = Registry::new();
    master.register_metrics(&registry).unwrap();

    let t0 = Instant::now();
    let (m, b) = (master.clone(), backup.clone());
    let (ms, bs) = tokio::join!(
        shell(Driver::from(master.clone()), Want::Hold, t0, 2, move || m
            .api_calls()),
        shell(Driver::from(backup.clone()), Want::Idle, t0, 2, move || b
            .api_calls()),
    );
    let master_hourly = [ms[0], ms[1] - ms[0]];
    let backup_hourly = [bs[0], bs[1] - bs[0]];
    println!("API calls per hour: master {master_hourly:?}, backup {backup_hourly:?} (hour 1 includes start-up)");
    println!(
        "token's hourly usage, both nodes: {} of 5000",
        sim.rate_limit_used(TOKEN)
    );
    for h in master_hourly {
        assert!(h <= 60, "master {master_hourly:?}");
    }
    for h in backup_hourly {
        assert!(h <= 12, "backup {backup_hourly:?}");
    }
    // The master still hears the API: a move under it is seen within verify_every.
    assert!(master_hourly[1] >= 20, "{master_hourly:?}");
    assert_eq!(sim.holder(RIP), Some(ME));
    assert_eq!(
        (ms[1] + bs[1]) as usize,
        sim.api_calls().len(),
        "the drivers' counters agree with the simulator"
    );
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("dynia_do_api_calls_total{endpoint=\"get_reserved_ip\",status=\"200\"}"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_move_under_the_master_is_seen_through_metadata_at_once() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .unwrap();
    sim.add_droplet(ME, ME_PRIVATE);
    sim.add_droplet(OTHER, OTHER_PRIVATE);
    sim.add_reserved_ip(RIP, Some(ME));
    let md = sim.metadata_for(ME).await.unwrap();
    let mut mc = super::cfg(&sim, ME);
    mc.metadata_url = md.url();
    let d = Driver::from(driver(mc).await);
    assert_eq!(d.check().await.unwrap(), Holder::Me, "first check: the API");
    let before = sim.api_calls().len();
    assert_eq!(d.check().await.unwrap(), Holder::Me, "then metadata alone");
    assert_eq!(sim.api_calls().len(), before);
    sim.set_holder(RIP, Some(OTHER));
    assert!(matches!(
        d.check().await.unwrap(),
        Holder::Other {
            droplet_id: OTHER,
            ..
        }
    ));
    assert_eq!(
        sim.api_calls().len(),
        before + 1,
        "metadata said no: the API was asked"
    );
    // Metadata gone: the API answers, and metadata is left alone for a while.
    drop(md);
    sim.set_holder(RIP, Some(ME));
    assert_eq!(d.check().await.unwrap(), Holder::Me);
}

#[tokio::test(start_paused = true)]
async fn a_low_rate_limit_remaining_is_warned_about_once_a_minute() {
    let sim = super::sim().await;
    sim.set_rate_limits(20, 250);
    let buf = Captured::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _g = tracing::subscriber::set_default(sub);
    let d = driver(super::cfg(&sim, ME)).await;
    for _ in 0..19 {
        d.holder().await.unwrap();
    }
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let warns = logs.matches("rate limit nearly used up").count();
    assert_eq!(warns, 1, "{logs}");
    assert!(
        logs.contains("remaining=1") && logs.contains("limit=20"),
        "{logs}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lagging_metadata_service_delays_noticing_a_move_by_at_most_verify_every() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .unwrap();
    sim.add_droplet(ME, ME_PRIVATE);
    sim.add_droplet(OTHER, OTHER_PRIVATE);
    sim.add_reserved_ip(RIP, Some(ME));
    sim.set_metadata_lag(Duration::from_secs(600));
    let md = sim.metadata_for(ME).await.unwrap();
    let mut mc = super::cfg(&sim, ME);
    mc.metadata_url = md.url();
    let verify_every = mc.verify_every;
    let d = Driver::from(driver(mc).await);
    assert_eq!(d.check().await.unwrap(), Holder::Me);
    // Someone moves it; metadata keeps saying "here" for ten minutes.
    sim.set_holder(RIP, Some(OTHER));
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(follower::RECONCILE).await;
        if d.check().await.unwrap() != Holder::Me {
            break;
        }
        assert!(
            t0.elapsed() <= verify_every + follower::RECONCILE,
            "{:?}",
            t0.elapsed()
        );
    }
    println!(
        "move seen after {} s despite a 10 min metadata lag",
        t0.elapsed().as_secs()
    );
    assert!(t0.elapsed() <= verify_every + follower::RECONCILE);
}
