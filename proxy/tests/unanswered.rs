//! A member whose port answers no SYN (as a blackholed port looks from the
//! proxy; here a listener whose accept queue is full, which needs no root):
//! requests do not wait on it for the connect timeout, its unanswered
//! connects count as passive failures even when nobody waits for them any
//! more, and its checks take it out within `fall` fast checks; a connect
//! that loses the race but succeeds later is no failure and goes to the pool.
//! Members on 127.0.0.x.

mod support;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::HOST;

use dynia_proxy::{Health, HealthConfig, Limits, Proxy};
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::{read_request, write_ok, Client};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A listening port that answers no SYN: `listen(0)`, never accepted, its
/// one queue slot taken. Linux drops SYNs to a full accept queue, so a
/// connect to it hangs until its timeout, like one to a blackholed port.
struct Unanswered {
    addr: SocketAddr,
    _listener: TcpListener,
    _filler: Vec<TcpStream>,
}

impl Unanswered {
    async fn start(ip: &str) -> Unanswered {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let listener = sock.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut filler = Vec::new();
        for _ in 0..8 {
            let probe = TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(300), probe).await {
                Ok(Ok(s)) => filler.push(s),
                Ok(Err(e)) => panic!("connect to the filling listener: {e}"),
                // A SYN went unanswered: the queue is full.
                Err(_) => {
                    return Unanswered {
                        addr,
                        _listener: listener,
                        _filler: filler,
                    }
                }
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    /// Starts accepting, which lets the SYNs resent from now on through,
    /// and answers every request `200` as member `id`. Returns the count of
    /// connections accepted (the filling one included).
    fn answer(self, id: &'static str) -> Arc<AtomicUsize> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let _filler = self._filler;
            while let Ok((mut s, _)) = self._listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while read_request(&mut s).await.is_some() {
                        if write_ok(&mut s, id, "ok").await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        accepted
    }
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

fn failures(registry: &prometheus::Registry, member: &str) -> f64 {
    metric_value(
        &dynia_proxy::metrics::render(registry),
        &format!("dynia_upstream_failures_total{{member=\"{member}\",service=\"web\"}}"),
    )
}

fn health_of(proxy: &Proxy, id: &str) -> Health {
    proxy.status()[0]
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.health)
        .unwrap()
}

#[tokio::test]
async fn unanswered_member_costs_no_failed_or_slow_get_and_leaves_within_fall_fast_checks() {
    let good = DemoUpstream::start("127.0.0.40:0".parse().unwrap(), "good")
        .await
        .unwrap();
    let hole = Unanswered::start("127.0.0.41").await;
    // SPEC's interval and fall; a check timeout short enough that `fall`
    // fast checks fit well inside one interval.
    let health = HealthConfig {
        timeout: Duration::from_millis(300),
        ..HealthConfig::default()
    };
    let fast = health.fastinter_or_default();
    let interval = health.interval;
    let fall = health.fall;
    let limits = Limits::default();
    assert_eq!(limits.connect_timeout, Duration::from_secs(2));
    let registry = prometheus::Registry::new();
    let members = [("good", good.addr), ("hole", hole.addr)];
    let started = Instant::now();
    let proxy = Proxy::start(support::active(&members, health.clone(), limits), &registry)
        .await
        .unwrap();
    let addr = proxy.listeners()[0].local;

    let mut client = Client::connect(addr).await.unwrap();
    let (mut failed, mut worst) = (0, Duration::ZERO);
    for _ in 0..50 {
        let t = Instant::now();
        match client.get(HOST, "/").await {
            Ok(a) if a.status == 200 && a.member() == Some("good") => {}
            _ => failed += 1,
        }
        worst = worst.max(t.elapsed());
    }
    let text = dynia_proxy::metrics::render(&registry);
    let hedges = metric_value(
        &text,
        "dynia_upstream_retries_total{reason=\"hedge\",service=\"web\"}",
    );
    println!("50 GETs: {failed} failed, worst {worst:?}, {hedges} hedged connects");
    assert_eq!(failed, 0, "requests failed with a member answering no SYN");
    assert!(
        hedges >= 1.0,
        "no connect was hedged: the test saw no slow connect"
    );
    // The hedge waits 50 ms (loopback connects are far under 12.5 ms); the
    // rest is a loaded test machine. Far under the 2 s connect timeout.
    assert!(
        worst < Duration::from_millis(500),
        "a request waited {worst:?} on the member answering no SYN"
    );

    // The abandoned connects (they lost to the good member) time out later
    // and are still counted.
    eventually_async(WAIT, || async { failures(&registry, "hole") >= 1.0 })
        .await
        .expect("the unanswered member's connect timeouts were not counted");

    let p = proxy.clone();
    eventually_async(WAIT, move || {
        let p = p.clone();
        async move { health_of(&p, "hole") == Health::Down }
    })
    .await
    .expect("the unanswered member never went DOWN");
    let down_after = started.elapsed();
    // First check within 500 ms, then `fall` checks of `timeout` each,
    // `fastinter` (±10%) apart; at `interval` they would take 2 × 5 s.
    let bound = Duration::from_millis(500)
        + (health.timeout + fast.mul_f64(1.1)) * fall
        + Duration::from_millis(500);
    println!("DOWN after {down_after:?} (fastinter {fast:?}, bound {bound:?})");
    assert!(
        down_after < bound && bound < interval,
        "DOWN after {down_after:?}, not within {fall} fast checks ({bound:?})"
    );
    assert_eq!(health_of(&proxy, "good"), Health::Up);
}

#[tokio::test]
async fn connect_abandoned_by_a_leaving_client_counts_as_a_passive_failure() {
    let hole = Unanswered::start("127.0.0.42").await;
    // Checks that cannot decide during the test: only requests count here.
    let health = HealthConfig {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(20),
        ..HealthConfig::default()
    };
    let limits = Limits {
        connect_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let registry = prometheus::Registry::new();
    let proxy = Proxy::start(
        support::active(&[("hole", hole.addr)], health, limits),
        &registry,
    )
    .await
    .unwrap();
    let addr = proxy.listeners()[0].local;

    // The client leaves while the proxy is still connecting.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // Nothing outside shows a connect in progress: give the proxy time to
    // read the head and start it (a connect lasts `connect_timeout`).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.connections(), 1);
    drop(s);
    let p = proxy.clone();
    eventually_async(WAIT, move || {
        let p = p.clone();
        async move { p.connections() == 0 }
    })
    .await
    .expect("the proxy never noticed the client leave");
    assert_eq!(
        failures(&registry, "hole"),
        0.0,
        "counted before its timeout"
    );

    eventually_async(WAIT, || async { failures(&registry, "hole") >= 1.0 })
        .await
        .expect("the abandoned connect was never counted");
    assert_eq!(failures(&registry, "hole"), 1.0);
}

#[tokio::test]
async fn hedged_connect_that_succeeds_late_is_no_failure_and_is_pooled() {
    let slow = Unanswered::start("127.0.0.43").await;
    let good = DemoUpstream::start("127.0.0.44:0".parse().unwrap(), "good")
        .await
        .unwrap();
    // One check of each member during the test, which cannot time out.
    let health = HealthConfig {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(20),
        ..HealthConfig::default()
    };
    let registry = prometheus::Registry::new();
    // The rotation starts with the first member: the slow one.
    let members = [("slow", slow.addr), ("good", good.addr)];
    let proxy = Proxy::start(
        support::active(&members, health, Limits::default()),
        &registry,
    )
    .await
    .unwrap();
    let mut client = Client::connect(proxy.listeners()[0].local).await.unwrap();
    let t = Instant::now();
    let a = client.get(HOST, "/").await.unwrap();
    assert_eq!((a.status, a.member()), (200, Some("good")));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // The slow member starts accepting; the proxy's connect, resent after
    // 1 s (within the 2 s connect timeout), and the check's get through.
    let accepted = slow.answer("slow");
    eventually_async(WAIT, || async { accepted.load(Ordering::SeqCst) >= 3 })
        .await
        .expect("the pending connects never got through");
    // The rotation goes on with the good member, then the slow one: on the
    // connection that lost the race, from the pool, not a new one.
    let a = client.get(HOST, "/").await.unwrap();
    assert_eq!((a.status, a.member()), (200, Some("good")));
    let a = client.get(HOST, "/").await.unwrap();
    assert_eq!((a.status, a.member()), (200, Some("slow")));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "the late connection was not pooled"
    );
    assert_eq!(
        failures(&registry, "slow"),
        0.0,
        "a late connect counted as failure"
    );
}

#[tokio::test]
async fn member_failing_its_first_checks_is_not_down_before_fall() {
    // An app still starting: its health path answers 503 for a while.
    let late = DemoUpstream::start("127.0.0.45:0".parse().unwrap(), "late")
        .await
        .unwrap();
    late.set_health(503);
    let health = HealthConfig {
        interval: Duration::from_secs(1), // fastinter 100 ms
        ..HealthConfig::default()
    };
    let fall = health.fall;
    let registry = prometheus::Registry::new();
    let proxy = Proxy::start(
        support::active(&[("late", late.addr)], health, Limits::default()),
        &registry,
    )
    .await
    .unwrap();
    let failed_checks = || {
        metric_value(
            &dynia_proxy::metrics::render(&registry),
            "dynia_health_checks_total{member=\"late\",result=\"failure\",service=\"web\"}",
        )
    };
    eventually_async(WAIT, || async { failed_checks() >= 1.0 })
        .await
        .expect("no check ran");
    assert_eq!(
        health_of(&proxy, "late"),
        Health::Unknown,
        "DOWN after one failed check"
    );
    // Still routable meanwhile.
    let mut client = Client::connect(proxy.listeners()[0].local).await.unwrap();
    let a = client.get(HOST, "/").await.unwrap();
    assert_eq!((a.status, a.member()), (200, Some("late")));

    late.set_health(200);
    let p = proxy.clone();
    eventually_async(WAIT, move || {
        let p = p.clone();
        async move {
            let h = health_of(&p, "late");
            assert_ne!(h, Health::Down, "DOWN before {fall} failed checks");
            h == Health::Up
        }
    })
    .await
    .expect("the member never came UP");
    assert!(failed_checks() < f64::from(fall));
}
