//! The `digitalocean` driver against the local simulator (`dosim`), over real
//! HTTP on 127.0.0.1: claims, idempotence, retries under 429 / 422 / 5xx /
//! slow answers, bounds, holder queries, metadata discovery, and that the
//! token never shows up in logs, errors or Debug output. `real_api`: the
//! API as it really behaves (seconds-long actions, locks, 404 polls, unknown
//! statuses, long `Retry-After`s, refusals) on tokio's paused clock;
//! `budget`: hours of steady state and the calls they cost.

mod budget;
mod late_claim;
mod real_api;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynia_testkit::dosim::{Call, CallTarget, DoSim, Fault, SameDropletAssign};
use dynia_vrrp::driver::{
    ClaimOutcome, DigitalOcean, DigitalOceanConfig, Driver, ErrorKind, Holder, PollPolicy,
    ReleaseOutcome, RetryPolicy, Secret, Timeouts,
};

pub(crate) const TOKEN: &str = "dop_v1_5ecret70ken0123456789abcdef";
pub(crate) const RIP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
pub(crate) const ME: u64 = 3_164_444;
pub(crate) const OTHER: u64 = 3_164_555;
pub(crate) const ME_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);
pub(crate) const OTHER_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 12);

pub(crate) async fn sim() -> DoSim {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .expect("simulator starts");
    sim.add_droplet(ME, ME_PRIVATE);
    sim.add_droplet(OTHER, OTHER_PRIVATE);
    sim.add_reserved_ip(RIP, None);
    sim.set_action_delay(Duration::from_millis(30));
    sim
}

/// Fast bounds so failures show in milliseconds, not the production seconds.
pub(crate) fn cfg(sim: &DoSim, droplet: u64) -> DigitalOceanConfig {
    let mut c = DigitalOceanConfig::new(RIP, Secret::new(TOKEN));
    c.api_url = sim.url();
    c.droplet_id = Some(droplet);
    // Discard port: nothing listens; metadata must not be needed here.
    c.metadata_url = "http://127.0.0.1:9".into();
    c.timeouts = Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(1),
    };
    c.retry = RetryPolicy {
        max_attempts: 8,
        max_total: Duration::from_secs(10),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(80),
        max_server_wait: Duration::from_secs(3),
    };
    c.poll = PollPolicy {
        interval: Duration::from_millis(10),
        max_polls: 100,
        max_total: Duration::from_secs(5),
        lock_interval: Duration::from_millis(20),
    };
    c
}

pub(crate) async fn driver(c: DigitalOceanConfig) -> DigitalOcean {
    DigitalOcean::new(c).await.expect("driver builds")
}

pub(crate) fn posts(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.is_action_post()).collect()
}

pub(crate) fn statuses(calls: &[&Call]) -> Vec<u16> {
    calls.iter().map(|c| c.status).collect()
}

#[tokio::test]
async fn claim_moves_the_ip_with_one_assign_and_polls() {
    let sim = sim().await;
    let d = driver(cfg(&sim, ME)).await;
    let out = d.claim().await.expect("claim succeeds");
    let ClaimOutcome::Assigned { action_id } = out else {
        panic!("expected Assigned, got {out:?}");
    };
    assert!(action_id > 0);
    assert_eq!(sim.holder(RIP), Some(ME));
    assert!(!sim.is_locked(RIP));

    let calls = sim.api_calls();
    let p = posts(&calls);
    assert_eq!(p.len(), 1, "exactly one assign: {calls:#?}");
    assert_eq!(p[0].droplet_id, Some(ME));
    assert_eq!(p[0].action_type.as_deref(), Some("assign"));
    assert_eq!(p[0].status, 201);
    let polls: Vec<&Call> = calls.iter().filter(|c| c.is_action_poll()).collect();
    assert!(!polls.is_empty(), "the action was polled");
    assert!(polls
        .iter()
        .all(|c| c.instant >= p[0].instant && c.status == 200));
    assert!(polls
        .iter()
        .all(|c| c.path == format!("/v2/reserved_ips/{RIP}/actions/{action_id}")));

    assert_eq!(d.holder().await.unwrap(), Holder::Me);
    assert_eq!(
        sim.connections_accepted(),
        1,
        "one warm keep-alive connection served the POST, the polls and the GET"
    );
    // Through the election's enum as well.
    let drv = Driver::from(d);
    assert_eq!(drv.name(), "digitalocean");
    assert_eq!(drv.holder().await.unwrap(), Holder::Me);
    assert_eq!(drv.release().await.unwrap(), ReleaseOutcome::NotApplicable);
}

#[tokio::test]
async fn claim_when_already_ours_succeeds_either_way_the_api_answers() {
    let sim = sim().await;
    sim.add_reserved_ip(RIP, Some(ME));
    let d = driver(cfg(&sim, ME)).await;

    // The API refuses with 422 "already assigned to this droplet".
    let out = d.claim().await.expect("422 already assigned = success");
    assert_eq!(out, ClaimOutcome::AlreadyHeld);
    assert_eq!(sim.holder(RIP), Some(ME));
    let calls = sim.api_calls();
    assert_eq!(statuses(&posts(&calls)), vec![422]);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.method == "GET" && c.path == format!("/v2/reserved_ips/{RIP}"))
            .count(),
        1,
        "the 422 is confirmed by reading the IP once"
    );

    // The API makes an ordinary action of it.
    sim.clear_calls();
    sim.set_same_droplet_assign(SameDropletAssign::NewAction);
    let out = d.claim().await.expect("a no-op action is success too");
    assert!(matches!(out, ClaimOutcome::Assigned { .. }), "{out:?}");
    assert_eq!(sim.holder(RIP), Some(ME));
    assert_eq!(statuses(&posts(&sim.api_calls())), vec![201]);
}

#[tokio::test]
async fn survives_429_pending_event_and_5xx_within_bounds() {
    let sim = sim().await;
    sim.push_fault(Fault::RateLimited {
        reset_after: Duration::from_millis(1_000),
        retry_after: true,
    });
    sim.push_fault(Fault::PendingEvent);
    sim.push_fault(Fault::ServerError(500));
    sim.push_fault(Fault::RateLimited {
        reset_after: Duration::from_millis(1_200),
        retry_after: false,
    });
    sim.push_fault(Fault::ServerError(503));
    let d = driver(cfg(&sim, ME)).await;

    let started = Instant::now();
    let out = d.claim().await.expect("claim survives the faults");
    assert!(matches!(out, ClaimOutcome::Assigned { .. }));
    assert_eq!(sim.holder(RIP), Some(ME));
    assert_eq!(sim.pending_faults(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    let calls = sim.api_calls();
    let p = posts(&calls);
    // The 422 made the driver read the IP (which met the 500).
    assert_eq!(statuses(&p), vec![429, 422, 429, 503, 201], "{calls:#?}");
    let after_422: Vec<(&str, u16)> = calls
        .iter()
        .skip_while(|c| c.status != 422)
        .take(2)
        .map(|c| (c.method.as_str(), c.status))
        .collect();
    assert_eq!(after_422, vec![("POST", 422), ("GET", 500)]);
    // Retry-After: 1 was honoured (the gap is at least one second)...
    assert!(
        p[1].instant.duration_since(p[0].instant) >= Duration::from_secs(1),
        "retried {:?} after Retry-After: 1",
        p[1].instant.duration_since(p[0].instant)
    );
    // ...and without Retry-After, RateLimit-Reset (epoch seconds, from the
    // server's Date) was.
    let gap = p[3].instant.duration_since(p[2].instant);
    assert!(
        gap + Duration::from_millis(5) >= Duration::from_millis(1_200),
        "retried {gap:?} after a reset 1.2 s ahead"
    );
    // Non-rate-limited retries used the short jittered backoff, not a long wait.
    assert!(p[2].instant.duration_since(p[1].instant) < Duration::from_millis(500));
}

#[tokio::test]
async fn retries_exhausted_is_a_clear_provider_error() {
    let sim = sim().await;
    sim.fail_next_server_error(50, 500);
    let mut c = cfg(&sim, ME);
    c.retry.max_attempts = 4;
    let d = driver(c).await;

    let started = Instant::now();
    let err = d.claim().await.expect_err("every answer is 500");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Provider);
    assert_eq!(err.status(), Some(500));
    let msg = err.to_string();
    assert!(
        msg.starts_with("provider error: POST /v2/reserved_ips/203.0.113.10/actions"),
        "{msg}"
    );
    assert!(msg.contains("after 4 attempt(s)"), "{msg}");
    assert!(msg.contains("500"), "{msg}");
    assert!(msg.contains("reconcile"), "says what happens next: {msg}");
    assert_eq!(posts(&sim.api_calls()).len(), 4);
    assert_eq!(sim.holder(RIP), None);
}

#[tokio::test]
async fn total_time_bound_beats_a_long_rate_limit_wait() {
    let sim = sim().await;
    sim.push_fault(Fault::RateLimited {
        reset_after: Duration::from_secs(3),
        retry_after: true,
    });
    let mut c = cfg(&sim, ME);
    c.retry.max_total = Duration::from_millis(500);
    let d = driver(c).await;
    let started = Instant::now();
    let err = d.claim().await.expect_err("cannot wait 3 s within 0.5 s");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up at once, not after sleeping"
    );
    assert_eq!(err.status(), Some(429));
    assert!(err.to_string().contains("budget"), "{err}");
    assert_eq!(posts(&sim.api_calls()).len(), 1);
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let sim = sim().await;
    sim.push_fault(Fault::Slow(Duration::from_secs(2)));
    let mut c = cfg(&sim, ME);
    c.timeouts.request = Duration::from_millis(300);
    let d = driver(c).await;
    let started = Instant::now();
    let out = d.claim().await.expect("second attempt succeeds");
    assert!(matches!(out, ClaimOutcome::Assigned { .. }));
    assert!(
        started.elapsed() < Duration::from_millis(1_900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.holder(RIP), Some(ME));
}

#[tokio::test]
async fn errored_action_is_retried_with_a_new_assign() {
    let sim = sim().await;
    sim.push_fault(Fault::ErroredAction);
    let d = driver(cfg(&sim, ME)).await;
    let out = d.claim().await.expect("second action completes");
    assert!(matches!(out, ClaimOutcome::Assigned { .. }));
    assert_eq!(statuses(&posts(&sim.api_calls())), vec![201, 201]);
    assert_eq!(sim.holder(RIP), Some(ME));
}

#[tokio::test]
async fn holder_reports_other_when_another_droplet_took_it() {
    let sim = sim().await;
    let me = driver(cfg(&sim, ME)).await;
    let other = driver(cfg(&sim, OTHER)).await;
    assert_eq!(me.holder().await.unwrap(), Holder::Nobody);
    me.claim().await.unwrap();
    assert_eq!(me.holder().await.unwrap(), Holder::Me);
    other.claim().await.unwrap();
    assert_eq!(sim.holder(RIP), Some(OTHER));
    assert_eq!(
        me.holder().await.unwrap(),
        Holder::Other {
            droplet_id: OTHER,
            running: Some(true)
        }
    );
    assert_eq!(other.holder().await.unwrap(), Holder::Me);
    // The droplet's status is the witness of a live holder.
    sim.set_droplet_status(OTHER, "off");
    assert_eq!(
        me.holder().await.unwrap(),
        Holder::Other {
            droplet_id: OTHER,
            running: Some(false)
        }
    );
    sim.set_droplet_status(OTHER, "active");
    sim.set_holder(RIP, None);
    assert_eq!(me.holder().await.unwrap(), Holder::Nobody);
}

#[tokio::test]
async fn a_claim_during_anothers_pending_action_waits_for_the_lock() {
    let sim = sim().await;
    sim.set_action_delay(Duration::from_millis(200));
    let me = driver(cfg(&sim, ME)).await;
    // Enough attempts that backoff alone (≥ 40 ms a step) outlasts the lock.
    let mut patient = cfg(&sim, OTHER);
    patient.retry.max_attempts = 30;
    let other = driver(patient).await;
    let first = tokio::spawn(async move { me.claim().await });
    // Wait (bounded) until the first action holds the lock.
    let t0 = Instant::now();
    while !sim.is_locked(RIP) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "first action never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = other
        .claim()
        .await
        .expect("second claim gets through after the lock");
    assert!(matches!(second, ClaimOutcome::Assigned { .. }));
    first.await.unwrap().expect("first claim completed");
    assert_eq!(sim.holder(RIP), Some(OTHER));
    let calls = sim.api_calls();
    let other_posts: Vec<&Call> = posts(&calls)
        .into_iter()
        .filter(|c| c.droplet_id == Some(OTHER))
        .collect();
    assert_eq!(
        other_posts.first().map(|c| c.status),
        Some(422),
        "{calls:#?}"
    );
    assert_eq!(other_posts.last().map(|c| c.status), Some(201));
}

#[tokio::test]
async fn metadata_discovers_droplet_id_and_private_ip() {
    let sim = sim().await;
    let md = sim.metadata_for(ME).await.unwrap();
    let mut c = cfg(&sim, ME);
    c.droplet_id = None;
    c.metadata_url = md.url();
    let d = driver(c).await;
    assert_eq!(d.droplet_id().await.unwrap(), ME);
    assert_eq!(d.private_ip().await.unwrap(), ME_PRIVATE);
    d.claim().await.unwrap();
    assert_eq!(d.holder().await.unwrap(), Holder::Me);
    assert_eq!(sim.holder(RIP), Some(ME));
    let id_reads = sim
        .calls()
        .iter()
        .filter(|c| {
            c.service == CallTarget::Metadata { droplet_id: ME } && c.path == "/metadata/v1/id"
        })
        .count();
    assert_eq!(id_reads, 1, "the droplet id is read once and kept");

    // The standalone client (for `[node] private_ip = "auto"`).
    let other_md = sim.metadata_for(OTHER).await.unwrap();
    let client =
        dynia_vrrp::driver::MetadataClient::new(&other_md.url(), Timeouts::default()).unwrap();
    assert_eq!(client.droplet_id().await.unwrap(), OTHER);
    assert_eq!(client.private_ipv4().await.unwrap(), OTHER_PRIVATE);
}

#[tokio::test]
async fn metadata_unreachable_is_a_bounded_network_error() {
    let sim = sim().await;
    let mut c = cfg(&sim, ME);
    c.droplet_id = None; // metadata_url points at a port nobody listens on
    let d = driver(c).await;
    let started = Instant::now();
    let err = d.claim().await.expect_err("no droplet id");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(
        err.to_string().contains("droplet_id"),
        "says what to set: {err}"
    );
    assert!(posts(&sim.api_calls()).is_empty());
}

#[tokio::test]
async fn wrong_token_is_a_clear_error_without_retries() {
    let sim = sim().await;
    let mut c = cfg(&sim, ME);
    let wrong = "dop_v1_wrongwrongwrongwrong000000";
    c.token = Secret::new(wrong);
    let d = driver(c).await;
    let started = Instant::now();
    let err = d.claim().await.expect_err("401");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Provider);
    assert_eq!(err.status(), Some(401));
    let msg = err.to_string();
    assert!(msg.contains("401"), "{msg}");
    assert!(msg.contains("token_file"), "says where to look: {msg}");
    assert!(!msg.contains(wrong) && !format!("{err:?}").contains(wrong));
    assert_eq!(
        statuses(&posts(&sim.api_calls())),
        vec![401],
        "no retry of a 401"
    );
    let err = d.holder().await.expect_err("401 on GET too");
    assert_eq!(err.status(), Some(401));
}

#[tokio::test]
async fn malformed_answers_are_provider_errors_naming_the_endpoint() {
    let sim = sim().await;
    for _ in 0..10 {
        sim.push_fault(Fault::Garbage);
    }
    let mut c = cfg(&sim, ME);
    c.retry.max_attempts = 3;
    let d = driver(c).await;
    let err = d.holder().await.expect_err("garbage");
    assert_eq!(err.kind(), ErrorKind::Provider);
    let msg = err.to_string();
    assert!(msg.contains("GET /v2/reserved_ips/203.0.113.10"), "{msg}");
    assert!(msg.contains("malformed JSON"), "{msg}");
}

#[tokio::test]
async fn a_host_name_api_url_is_resolved_ahead_and_works() {
    let sim = sim().await;
    let mut c = cfg(&sim, ME);
    c.api_url = format!("http://localhost:{}", sim.addr().port());
    let d = driver(c).await;
    d.claim().await.expect("claim through a host name");
    assert_eq!(sim.holder(RIP), Some(ME));
}

#[tokio::test]
async fn bad_settings_are_config_errors() {
    let mut c = DigitalOceanConfig::new(RIP, Secret::new("zq7"));
    let err = DigitalOcean::new(c.clone()).await.expect_err("short token");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!err.to_string().contains("zq7"));
    c.token = Secret::new("dop_v1_has\nnewline_inside_it");
    let err = DigitalOcean::new(c.clone())
        .await
        .expect_err("header-unsafe token");
    assert!(!err.to_string().contains("newline_inside_it"), "{err}");
    c.token = Secret::new(TOKEN);
    c.api_url = "ftp://example.com".into();
    let err = DigitalOcean::new(c).await.expect_err("bad scheme");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("api_url"), "{err}");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_token_never_appears_in_logs_errors_or_debug() {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = sim().await;
    let c = cfg(&sim, ME);
    let mut seen: Vec<String> = vec![format!("{c:?}"), format!("{:?}", c.token)];
    let d = driver(c.clone()).await;
    seen.push(format!("{d:?}"));

    // Success after retries (logs warnings with reasons).
    sim.push_fault(Fault::RateLimited {
        reset_after: Duration::from_millis(10),
        retry_after: false,
    });
    sim.push_fault(Fault::PendingEvent);
    sim.push_fault(Fault::ServerError(502));
    d.claim().await.unwrap();
    // Exhausted retries.
    sim.fail_next_server_error(20, 500);
    let mut short = c.clone();
    short.retry.max_attempts = 2;
    let e = driver(short).await.claim().await.unwrap_err();
    seen.push(e.to_string());
    seen.push(format!("{e:?}"));
    // Wrong token: the error must not carry the *right* token nor the wrong one.
    let mut wrong = c.clone();
    let wrong_token = "dop_v1_someothertoken_zzzzzzzzzz";
    wrong.token = Secret::new(wrong_token);
    let e = driver(wrong).await.claim().await.unwrap_err();
    seen.push(e.to_string());
    seen.push(format!("{e:?}"));
    // Network failure.
    let mut dead = c.clone();
    dead.api_url = "http://127.0.0.1:9".into();
    dead.retry.max_attempts = 2;
    let e = driver(dead).await.claim().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    seen.push(e.to_string());
    seen.push(format!("{e:?}"));

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("reserved ip assigned"),
        "capture works: {logs}"
    );
    assert!(logs.contains("reserved ip claim retrying"), "{logs}");
    assert!(logs.contains("action_id="), "key=value fields: {logs}");
    assert!(!logs.contains(TOKEN), "token in logs:\n{logs}");
    assert!(!logs.contains(wrong_token), "token in logs:\n{logs}");
    assert!(!logs.contains("5ecret70ken"), "part of the token in logs");
    for s in &seen {
        assert!(
            !s.contains(TOKEN) && !s.contains(wrong_token) && !s.contains("5ecret70ken"),
            "token in {s}"
        );
    }
    assert!(seen[0].contains("<redacted>"), "{}", seen[0]);
}
