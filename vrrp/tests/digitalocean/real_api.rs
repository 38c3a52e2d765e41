//! The driver with its production bounds against the simulator behaving as
//! the real API does: actions that take seconds and lock the IP, refusals
//! with unfamiliar wording, actions not queryable yet, unknown statuses,
//! long `Retry-After`s on 429 and 503, the per-token burst limit, echoed
//! tokens. Long waits run on tokio's paused clock (no real sleeping): the
//! times asserted and printed are the simulated ones.

use std::time::Duration;

use dynia_testkit::dosim::{Call, DoSim, Fault, SameDropletAssign};
use dynia_vrrp::driver::{ClaimOutcome, DigitalOcean, DigitalOceanConfig, ErrorKind, Secret};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::time::Instant;

use super::{driver, posts, statuses, Captured, ME, ME_PRIVATE, OTHER, OTHER_PRIVATE, RIP, TOKEN};

/// A simulator with production-like actions (`delay`).
async fn real_sim(delay: Duration) -> DoSim {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .expect("simulator starts");
    sim.add_droplet(ME, ME_PRIVATE);
    sim.add_droplet(OTHER, OTHER_PRIVATE);
    sim.add_reserved_ip(RIP, Some(OTHER));
    sim.set_action_delay(delay);
    sim
}

/// The production defaults (bounds, polls, waits), pointed at the simulator.
fn real_cfg(sim: &DoSim, droplet: u64) -> DigitalOceanConfig {
    let mut c = DigitalOceanConfig::new(RIP, Secret::new(TOKEN));
    c.api_url = sim.url();
    c.droplet_id = Some(droplet);
    c.metadata_url = "http://127.0.0.1:9".into();
    c
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

fn logs(buf: &Captured) -> String {
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

fn mine(calls: &[Call]) -> Vec<&Call> {
    posts(calls)
        .into_iter()
        .filter(|c| c.droplet_id == Some(ME))
        .collect()
}

/// Kill → IP on the new droplet, as the new master's claim sees it.
async fn failover_time(delay: Duration) -> Duration {
    let sim = real_sim(delay).await;
    let d = driver(real_cfg(&sim, ME)).await;
    let t0 = Instant::now();
    let out = d.claim().await.expect("claim succeeds");
    let took = t0.elapsed();
    assert!(matches!(out, ClaimOutcome::Assigned { .. }), "{out:?}");
    assert_eq!(sim.holder(RIP), Some(ME));
    assert_eq!(statuses(&posts(&sim.api_calls())), vec![201], "one assign");
    took
}

#[tokio::test(start_paused = true)]
async fn failover_claim_time_with_2_s_and_11_s_actions() {
    for secs in [2, 11] {
        let delay = Duration::from_secs(secs);
        let took = failover_time(delay).await;
        println!(
            "failover claim with {secs} s actions: {} ms (simulated clock)",
            took.as_millis()
        );
        // The action's own time plus at most one poll interval (500 ms) and the calls.
        assert!(
            took >= delay && took < delay + Duration::from_millis(700),
            "{took:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn claims_ride_out_actions_of_2_to_15_s() {
    for _ in 0..5 {
        let sim = real_sim(Duration::from_secs(2)).await;
        sim.set_action_delay_range(Duration::from_secs(2), Duration::from_secs(15));
        let d = driver(real_cfg(&sim, ME)).await;
        let t0 = Instant::now();
        assert!(matches!(
            d.claim().await.unwrap(),
            ClaimOutcome::Assigned { .. }
        ));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(15_700),
            "{took:?}"
        );
        assert_eq!(statuses(&posts(&sim.api_calls())), vec![201]);
        assert_eq!(sim.holder(RIP), Some(ME));
    }
}

#[tokio::test(start_paused = true)]
async fn with_11_s_actions_a_claim_waits_the_lock_out_then_succeeds_first_time() {
    let sim = real_sim(Duration::from_secs(11)).await;
    // The old master re-asserted just before it died: its 11 s action runs.
    let old = driver(real_cfg(&sim, OTHER)).await;
    sim.set_same_droplet_assign(SameDropletAssign::NewAction);
    let reassert = tokio::spawn(async move { old.claim().await });
    let locked = sim.until_served(Duration::from_secs(30), |s| s.is_locked(RIP));
    assert!(locked.await, "the first assign never locked the IP");
    let (buf, _g) = capture();
    let d = driver(real_cfg(&sim, ME)).await;
    let t0 = Instant::now();
    let out = d.claim().await.expect("the claim succeeds after the lock");
    let took = t0.elapsed();
    println!(
        "claim behind an 11 s lock, then an 11 s action: {} ms (simulated clock)",
        took.as_millis()
    );
    assert!(matches!(out, ClaimOutcome::Assigned { .. }), "{out:?}");
    assert_eq!(sim.holder(RIP), Some(ME));
    reassert
        .await
        .unwrap()
        .expect("the old master's action completed");
    let calls = sim.api_calls();
    // One refused POST while locked, then the first assign after the lock succeeds.
    assert_eq!(statuses(&mine(&calls)), vec![422, 201], "{calls:#?}");
    assert!(took < Duration::from_secs(24), "{took:?}");
    // The lock was waited out by reading the IP about once a second, not by re-posting.
    let ip_reads = calls
        .iter()
        .filter(|c| c.method == "GET" && c.path == format!("/v2/reserved_ips/{RIP}"))
        .count();
    assert!((5..=14).contains(&ip_reads), "{ip_reads} reads of the IP");
    let l = logs(&buf);
    assert!(l.contains("reserved ip lock cleared"), "{l}");
    assert!(!l.contains("ERROR"), "{l}");
}

#[tokio::test(start_paused = true)]
async fn an_unfamiliar_422_while_the_ip_is_ours_is_success_without_alarm() {
    let sim = real_sim(Duration::from_secs(2)).await;
    sim.set_holder(RIP, Some(ME));
    sim.set_same_droplet_assign(SameDropletAssign::Worded(
        "Droplet already has a Reserved IP assigned.",
    ));
    let (buf, _g) = capture();
    let d = driver(real_cfg(&sim, ME)).await;
    assert_eq!(d.claim().await.unwrap(), ClaimOutcome::AlreadyHeld);
    assert_eq!(statuses(&posts(&sim.api_calls())), vec![422]);
    let l = logs(&buf);
    assert!(!l.contains("WARN") && !l.contains("ERROR"), "no alarm: {l}");
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_29_is_retried_once_after_29_s() {
    let sim = real_sim(Duration::from_secs(2)).await;
    sim.push_fault(Fault::RateLimited {
        reset_after: Duration::from_secs(29),
        retry_after: true,
    });
    let d = driver(real_cfg(&sim, ME)).await;
    d.claim().await.expect("claim after the wait");
    let calls = sim.api_calls();
    let p = posts(&calls);
    assert_eq!(statuses(&p), vec![429, 201], "one retry, not two 429s");
    let gap = p[1].instant.duration_since(p[0].instant);
    assert!(
        gap >= Duration::from_secs(29) && gap < Duration::from_secs(30),
        "{gap:?}"
    );
    assert_eq!(sim.holder(RIP), Some(ME));
}

#[tokio::test(start_paused = true)]
async fn a_503_with_retry_after_is_honoured() {
    let sim = real_sim(Duration::from_secs(2)).await;
    sim.push_fault(Fault::Unavailable {
        retry_after: Duration::from_secs(7),
    });
    let d = driver(real_cfg(&sim, ME)).await;
    d.claim().await.expect("claim after the wait");
    let calls = sim.api_calls();
    let p = posts(&calls);
    assert_eq!(statuses(&p), vec![503, 201]);
    let gap = p[1].instant.duration_since(p[0].instant);
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_burst_limit_429_of_a_shared_token_is_waited_out_once() {
    let sim = real_sim(Duration::from_secs(2)).await;
    // Eight requests a minute per token; another tool on the same token
    // spent them 30 s before the failover.
    sim.set_rate_limits(5_000, 8);
    let tool = driver(real_cfg(&sim, OTHER)).await;
    for _ in 0..8 {
        tool.holder().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let d = driver(real_cfg(&sim, ME)).await;
    d.claim()
        .await
        .expect("claim completes once the minute window moves");
    let calls = sim.api_calls();
    let p = posts(&calls);
    assert_eq!(statuses(&p), vec![429, 201], "{calls:#?}");
    let gap = p[1].instant.duration_since(p[0].instant);
    // Retry-After from the limiter: until the oldest of the 8 leaves the window.
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(32),
        "{gap:?}"
    );
    assert_eq!(calls.iter().filter(|c| c.status == 429).count(), 1);
    assert_eq!(sim.holder(RIP), Some(ME));
}

#[tokio::test(start_paused = true)]
async fn an_action_not_queryable_yet_falls_back_to_the_ip() {
    let sim = real_sim(Duration::from_secs(2)).await;
    sim.set_action_hidden_for(Duration::from_secs(60));
    let d = driver(real_cfg(&sim, ME)).await;
    let t0 = Instant::now();
    let out = d.claim().await.expect("the IP says it landed");
    assert!(matches!(out, ClaimOutcome::Assigned { .. }));
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let calls = sim.api_calls();
    assert!(calls.iter().any(|c| c.is_action_poll() && c.status == 404));
    assert_eq!(statuses(&posts(&calls)), vec![201], "no second assign");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_action_status_falls_back_to_the_ip_at_once() {
    let sim = real_sim(Duration::from_secs(2)).await;
    sim.set_completed_status(Some("done"));
    let d = driver(real_cfg(&sim, ME)).await;
    let t0 = Instant::now();
    let out = d.claim().await.expect("done = landed, as the IP shows");
    assert!(matches!(out, ClaimOutcome::Assigned { .. }));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "not polled 30 s: {:?}",
        t0.elapsed()
    );
    assert_eq!(sim.holder(RIP), Some(ME));
}

#[tokio::test(start_paused = true)]
async fn refusals_that_are_not_ours_are_clear_errors() {
    let sim = real_sim(Duration::from_secs(2)).await;
    // Our droplet is not active.
    sim.set_droplet_status(ME, "off");
    let d = driver(real_cfg(&sim, ME)).await;
    let e = d.claim().await.expect_err("inactive droplet");
    assert_eq!((e.kind(), e.status()), (ErrorKind::Provider, Some(422)));
    assert!(e.to_string().contains("must be active"), "{e}");
    assert_eq!(statuses(&posts(&sim.api_calls())), vec![422], "no retry");
    sim.set_droplet_status(ME, "active");

    // Our droplet already holds another Reserved IP, whose assign is still
    // running: first the droplet's pending event (waited), then the refusal.
    let second = "203.0.113.99".parse().unwrap();
    sim.add_reserved_ip(second, None);
    let mut c2 = real_cfg(&sim, ME);
    c2.address = second;
    let other_ip = DigitalOcean::new(c2).await.unwrap();
    let bg = tokio::spawn(async move { other_ip.claim().await });
    let locked = sim.until_served(Duration::from_secs(30), |s| s.is_locked(second));
    assert!(locked.await, "the first assign never locked the IP");
    sim.clear_calls();
    let e = d.claim().await.expect_err("one Reserved IP per droplet");
    bg.await.unwrap().unwrap();
    assert!(e.to_string().contains("already has a reserved IP"), "{e}");
    let calls = sim.api_calls();
    let p: Vec<&Call> = mine(&calls)
        .into_iter()
        .filter(|c| c.path.contains("203.0.113.10"))
        .collect();
    assert_eq!(statuses(&p).first(), Some(&422));
    assert_eq!(sim.holder(RIP), Some(OTHER), "nothing moved");
}

#[tokio::test]
async fn plain_http_and_ipv6_are_refused_at_validation() {
    let mut c = DigitalOceanConfig::new(RIP, Secret::new(TOKEN));
    c.api_url = "http://api.digitalocean.com".into();
    let e = DigitalOcean::new(c.clone())
        .await
        .expect_err("clear text token");
    assert_eq!(e.kind(), ErrorKind::Config);
    let msg = e.to_string();
    assert!(
        msg.contains("api_url") && msg.contains("clear text"),
        "{msg}"
    );
    c.allow_plain_http = true;
    DigitalOcean::new(c.clone())
        .await
        .expect("explicitly allowed");
    c.api_url = "https://api.digitalocean.com".into();
    c.address = "2001:db8::10".parse().unwrap();
    let e = DigitalOcean::new(c).await.expect_err("reserved IPv6");
    let msg = e.to_string();
    assert!(msg.contains("IPv6") && msg.contains("address"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn an_echoed_escaped_token_reaches_no_log_error_or_metric() {
    let sim = real_sim(Duration::from_secs(2)).await;
    let (buf, _g) = capture();
    let d = driver(real_cfg(&sim, ME)).await;
    let registry = Registry::new();
    d.register_metrics(&registry).unwrap();
    sim.push_fault(Fault::EchoAuthorization);
    let e = d.claim().await.expect_err("400 echoing the header");
    sim.push_fault(Fault::EchoAuthorization);
    let e2 = d.holder().await.expect_err("on a read too");
    let mut text = vec![
        e.to_string(),
        format!("{e:?}"),
        e2.to_string(),
        format!("{e2:?}"),
    ];
    text.push(logs(&buf));
    let mut m = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut m)
        .unwrap();
    text.push(String::from_utf8(m).unwrap());
    assert!(
        text[0].contains("Authorization"),
        "the echo is kept, scrubbed: {}",
        text[0]
    );
    let escaped_start: String = TOKEN[..6]
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    for t in &text {
        assert!(
            !t.contains(TOKEN) && !t.contains("5ecret70ken"),
            "token in {t}"
        );
        assert!(!t.contains(&escaped_start), "escaped token in {t}");
    }
    assert!(text[0].contains("<redacted>"), "{}", text[0]);
}
