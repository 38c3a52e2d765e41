//! The proxy against real members on 127.0.0.x: balancing, health, retries,
//! drain, limits, tunnels and streaming, as a user would check them.

mod support;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{one_service, HOST};

use dynia_proxy::{AdminState, Health, HealthConfig, HostPattern, Limits, Proxy};
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::{get, read_request, reset, write_ok, Client, RawMember};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn fast_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..HealthConfig::default()
    }
}

struct Rig {
    proxy: Proxy,
    addr: SocketAddr,
    ups: Vec<DemoUpstream>,
    registry: prometheus::Registry,
}

impl Rig {
    async fn new(n: usize, health: HealthConfig, limits: Limits) -> Rig {
        let mut ups = Vec::new();
        for i in 0..n {
            let bind: SocketAddr = format!("127.0.0.{}:0", i + 2).parse().unwrap();
            ups.push(
                DemoUpstream::start(bind, &format!("member-{i}"))
                    .await
                    .unwrap(),
            );
        }
        let members: Vec<_> = ups
            .iter()
            .map(|u| (&*u.id, u.addr, AdminState::Active))
            .collect();
        let registry = prometheus::Registry::new();
        let proxy = Proxy::start(one_service(&members, health, limits), &registry)
            .await
            .unwrap();
        let addr = proxy.listeners()[0].local;
        Rig {
            proxy,
            addr,
            ups,
            registry,
        }
    }

    fn members(&self, states: &[AdminState]) -> Vec<(&str, SocketAddr, AdminState)> {
        self.ups
            .iter()
            .zip(states)
            .map(|(u, s)| (&*u.id, u.addr, *s))
            .collect()
    }

    fn health_of(&self, id: &str) -> Health {
        self.proxy.status()[0]
            .members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.health)
            .unwrap()
    }

    async fn all_up(&self) {
        let p = self.proxy.clone();
        eventually_async(WAIT, move || {
            let p = p.clone();
            async move { p.status()[0].members.iter().all(|m| m.health == Health::Up) }
        })
        .await
        .expect("every member UP");
    }

    fn metrics(&self) -> String {
        dynia_proxy::metrics::render(&self.registry)
    }
}

fn count_by_member(answers: &[dynia_testkit::web::WebAnswer]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.member().unwrap_or("-").to_string()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn thirty_requests_spread_ten_each() {
    let rig = Rig::new(3, fast_health(), Limits::default()).await;
    rig.all_up().await;
    let mut c = Client::connect(rig.addr).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..30 {
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!(a.status, 200);
        answers.push(a);
    }
    let counts = count_by_member(&answers);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
}

#[tokio::test]
async fn failing_health_takes_member_out_after_fall_and_back_after_rise() {
    let rig = Rig::new(3, fast_health(), Limits::default()).await;
    rig.all_up().await;
    let sick = &rig.ups[1];
    sick.set_health(500);
    let p = rig.proxy.clone();
    let id = sick.id.to_string();
    eventually_async(WAIT, || {
        let (p, id) = (p.clone(), id.clone());
        async move {
            p.status()[0]
                .members
                .iter()
                .any(|m| m.id == id && m.health == Health::Down)
        }
    })
    .await
    .expect("member DOWN");
    let metrics = rig.metrics();
    let failures = metric_value(
        &metrics,
        &format!("dynia_health_checks_total{{member=\"{id}\",result=\"failure\",service=\"web\"}}"),
    );
    assert!(
        failures >= 3.0,
        "went DOWN after {failures} failed checks, fall is 3"
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!("dynia_upstream_up{{member=\"{id}\",service=\"web\"}}")
        ),
        0.0
    );
    let before = sick.hits();
    let mut c = Client::connect(rig.addr).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..20 {
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!(a.status, 200);
        assert_ne!(a.member(), Some(&*id));
        answers.push(a);
    }
    assert_eq!(sick.hits(), before);
    let counts = count_by_member(&answers);
    assert!(
        counts.values().all(|&n| n == 10),
        "the two healthy members share evenly: {counts:?}"
    );

    // Rise: it comes back only after `rise` (2) good checks in a row. The
    // success counter is bumped before the state changes, so whenever it
    // is seen UP, at least `rise` successes have been counted since it
    // went DOWN (were rise ignored, it would be seen UP after one).
    let successes = |m: &str| {
        metric_value(
            m,
            &format!(
                "dynia_health_checks_total{{member=\"{id}\",result=\"success\",service=\"web\"}}"
            ),
        )
    };
    let down_at = successes(&rig.metrics());
    sick.set_health(200);
    let start = std::time::Instant::now();
    loop {
        // Health first, then the counter: a success counted after the read
        // of the health can only make `seen` larger.
        let health = rig.health_of(&id);
        let seen = successes(&rig.metrics()) - down_at;
        if health == Health::Up {
            assert!(seen >= 2.0, "UP again after {seen} good checks, rise is 2");
            break;
        }
        assert!(start.elapsed() < WAIT, "member never UP again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(
        metric_value(
            &rig.metrics(),
            &format!("dynia_upstream_up{{member=\"{id}\",service=\"web\"}}")
        ),
        1.0
    );
    let mut seen = false;
    for _ in 0..6 {
        seen |= c.get(HOST, "/").await.unwrap().member() == Some(&*id);
    }
    assert!(seen, "the member that rose again gets requests");
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn killed_member_costs_no_failed_get() {
    // Slow checks: the retries, not the checker, must hide the dead member.
    let health = HealthConfig {
        interval: Duration::from_secs(30),
        ..HealthConfig::default()
    };
    let rig = Rig::new(3, health, Limits::default()).await;
    let addr = rig.addr;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            let mut failed = 0;
            for _ in 0..150 {
                match c.get(HOST, "/").await {
                    Ok(a) if a.status == 200 => {}
                    _ => failed += 1,
                }
            }
            failed
        }));
    }
    let victim = &rig.ups[2];
    let series = "dynia_upstream_failures_total{member=\"member-2\",service=\"web\"}";
    eventually_async(WAIT, || async { victim.hits() > 20 })
        .await
        .expect("some traffic on the victim");
    let failures_before = metric_value(&rig.metrics(), series);
    victim.kill();
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap();
    }
    assert_eq!(failed, 0, "GET requests failed after a member died");
    let failures = metric_value(&rig.metrics(), series) - failures_before;
    assert!(
        failures >= 1.0,
        "the dead member's failures were not counted"
    );
}

#[tokio::test]
async fn all_members_down_answers_503_with_retry_after_promptly() {
    let rig = Rig::new(2, fast_health(), Limits::default()).await;
    rig.all_up().await;
    for u in &rig.ups {
        u.set_health(503);
    }
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move {
            p.status()[0]
                .members
                .iter()
                .all(|m| m.health == Health::Down)
        }
    })
    .await
    .expect("all DOWN");
    let a = tokio::time::timeout(Duration::from_secs(5), get(rig.addr, HOST, "/"))
        .await
        .expect("a 503 must not hang")
        .unwrap();
    assert_eq!(a.status, 503);
    assert!(a.headers.contains_key("retry-after"));

    // Dead members (connection refused) before any check knew it: 503 as well.
    let rig = Rig::new(
        2,
        HealthConfig {
            interval: Duration::from_secs(30),
            ..HealthConfig::default()
        },
        Limits::default(),
    )
    .await;
    for u in &rig.ups {
        u.kill();
        u.wait_stopped().await;
    }
    let a = tokio::time::timeout(Duration::from_secs(5), get(rig.addr, HOST, "/"))
        .await
        .expect("a 503 must not hang")
        .unwrap();
    assert_eq!(a.status, 503);
    assert!(a.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn drained_member_finishes_its_request_and_gets_no_new_ones() {
    let rig = Rig::new(3, fast_health(), Limits::default()).await;
    rig.all_up().await;
    // Find the member a slow request lands on.
    let addr = rig.addr;
    let slow = tokio::spawn(async move { get(addr, HOST, "/slow/1500").await });
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.status()[0].members.iter().any(|m| m.inflight == 1) }
    })
    .await
    .expect("slow request in flight");
    let busy = rig.proxy.status()[0]
        .members
        .iter()
        .position(|m| m.inflight == 1)
        .unwrap();
    let mut states = [AdminState::Active; 3];
    states[busy] = AdminState::Drain;
    rig.proxy
        .apply(one_service(
            &rig.members(&states),
            fast_health(),
            Limits::default(),
        ))
        .unwrap();
    let drained = rig.ups[busy].id.to_string();
    let mut c = Client::connect(rig.addr).await.unwrap();
    for _ in 0..20 {
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!(a.status, 200);
        assert_ne!(
            a.member(),
            Some(&*drained),
            "a DRAIN member got a new request"
        );
    }
    let a = slow.await.unwrap().unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.member(), Some(&*drained));
    assert_eq!(rig.health_of(&drained), Health::Up, "DRAIN keeps checking");
}

#[tokio::test]
async fn unknown_host_is_404_and_headers_are_forwarded() {
    let rig = Rig::new(1, fast_health(), Limits::default()).await;
    let a = get(rig.addr, "nobody.example.org", "/").await.unwrap();
    assert_eq!(a.status, 404);
    let a = get(rig.addr, HOST, "/headers").await.unwrap();
    assert_eq!(a.status, 200);
    let body = a.body.to_ascii_lowercase();
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        body.contains(&format!("x-forwarded-host: {HOST}")),
        "{body}"
    );
    assert!(body.contains("x-request-id: "), "{body}");
}

#[tokio::test]
async fn oversized_header_is_431() {
    let limits = Limits {
        max_header_bytes: 8192,
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test]
async fn slow_header_client_is_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.exa")
        .await
        .unwrap();
    // The proxy must close the connection on its own.
    let mut buf = vec![0u8; 1024];
    let mut total = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow client was not cut off");
    let text = String::from_utf8_lossy(&total);
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn excess_connections_are_refused_without_harm() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut a = Client::connect(rig.addr).await.unwrap();
    let mut b = Client::connect(rig.addr).await.unwrap();
    assert_eq!(a.get(HOST, "/").await.unwrap().status, 200);
    assert_eq!(b.get(HOST, "/").await.unwrap().status, 200);
    let third = match Client::connect(rig.addr).await {
        Ok(mut c) => c.get(HOST, "/").await.is_err(),
        Err(_) => true,
    };
    assert!(
        third,
        "a third connection over max_connections=2 was served"
    );
    assert!(metric_value(&rig.metrics(), "dynia_connections_refused_total") >= 1.0);
    // The first two still work, and once one leaves a new one is served.
    assert_eq!(a.get(HOST, "/").await.unwrap().status, 200);
    drop(b);
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.connections() < 2 }
    })
    .await
    .expect("a connection slot to free");
    assert_eq!(get(rig.addr, HOST, "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let member = ws_echo_member("127.0.0.5:0").await;
    let px = Plain::start(
        &[("ws-one", member, AdminState::Active)],
        slow_health(),
        Limits::default(),
    )
    .await;
    let mut ws = ws_connect(px.addr).await.unwrap();
    for i in 0..5 {
        assert!(ws_echo(&mut ws, &format!("hello {i}")).await);
    }
}

#[tokio::test]
async fn hundred_megabytes_stream_both_ways() {
    let rig = Rig::new(1, fast_health(), Limits::default()).await;
    // Download.
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    let n: u64 = 100 * 1024 * 1024;
    s.write_all(
        format!("GET /bytes/{n} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = s.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    assert!(total > n && total < n + 1024, "got {total} bytes");

    // Upload, chunked, written piece by piece.
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'y'; 1024 * 1024];
    for _ in 0..100 {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.trim_end().ends_with(&n.to_string()), "{text}");
}

#[tokio::test]
async fn reload_keeps_health_of_remaining_members_and_stops_removed_ones() {
    let rig = Rig::new(3, fast_health(), Limits::default()).await;
    rig.all_up().await;
    rig.ups[0].set_health(500);
    let down = rig.ups[0].id.to_string();
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let (p, down) = (p.clone(), down.clone());
        async move {
            p.status()[0]
                .members
                .iter()
                .any(|m| m.id == down && m.health == Health::Down)
        }
    })
    .await
    .expect("member-0 DOWN");
    // Drop member-2; member-0 must still be DOWN right after the swap.
    let members = rig.members(&[AdminState::Active; 3]);
    rig.proxy
        .apply(one_service(&members[..2], fast_health(), Limits::default()))
        .unwrap();
    let st = rig.proxy.status();
    assert_eq!(st[0].members.len(), 2);
    assert_eq!(st[0].members[0].health, Health::Down);
    assert_eq!(st[0].members[1].health, Health::Up);
    let removed = rig.ups[2].hits();
    let mut c = Client::connect(rig.addr).await.unwrap();
    for _ in 0..10 {
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!(a.member(), Some("member-1"));
    }
    assert_eq!(rig.ups[2].hits(), removed);
    assert!(!rig.metrics().contains("member=\"member-2\""));
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now idle: the proxy must close the connection by itself.
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection was not closed: {closed:?} {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.connections() == 0 }
    })
    .await
    .expect("the connection to be released");
}

#[tokio::test]
async fn slow_member_answer_is_504_after_response_timeout_and_not_retried() {
    let limits = Limits {
        response_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let rig = Rig::new(2, fast_health(), limits).await;
    rig.all_up().await;
    let before: u64 = rig.ups.iter().map(|u| u.hits()).sum();
    let a = tokio::time::timeout(Duration::from_secs(10), get(rig.addr, HOST, "/slow/3000"))
        .await
        .expect("504 must come after response_timeout, not the member's 3 s")
        .unwrap();
    assert_eq!(a.status, 504);
    let after: u64 = rig.ups.iter().map(|u| u.hits()).sum();
    assert_eq!(
        after - before,
        1,
        "a timed-out request must not be sent to a second member"
    );
}

#[tokio::test]
async fn removed_member_finishes_its_inflight_request() {
    let rig = Rig::new(3, fast_health(), Limits::default()).await;
    rig.all_up().await;
    let addr = rig.addr;
    let slow = tokio::spawn(async move { get(addr, HOST, "/slow/1000").await });
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.status()[0].members.iter().any(|m| m.inflight == 1) }
    })
    .await
    .expect("slow request in flight");
    let busy = rig.proxy.status()[0]
        .members
        .iter()
        .position(|m| m.inflight == 1)
        .unwrap();
    let keep: Vec<_> = rig
        .members(&[AdminState::Active; 3])
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != busy)
        .map(|(_, m)| m)
        .collect();
    rig.proxy
        .apply(one_service(&keep, fast_health(), Limits::default()))
        .unwrap();
    let gone = rig.ups[busy].id.to_string();
    let mut c = Client::connect(rig.addr).await.unwrap();
    for _ in 0..10 {
        assert_ne!(c.get(HOST, "/").await.unwrap().member(), Some(&*gone));
    }
    let a = slow.await.unwrap().unwrap();
    assert_eq!(a.status, 200, "the removed member's request was cut");
    assert_eq!(a.member(), Some(&*gone));
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let health = HealthConfig {
        interval: Duration::from_secs(30),
        ..HealthConfig::default()
    };
    let rig = Rig::new(1, health, Limits::default()).await;
    let member = &rig.ups[0];
    // Let the first health check connect, then count from here.
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.status()[0].members[0].health == Health::Up }
    })
    .await
    .expect("first check");
    let before = member.connections();
    let mut c = Client::connect(rig.addr).await.unwrap();
    for _ in 0..200 {
        assert_eq!(c.get(HOST, "/").await.unwrap().status, 200);
    }
    let opened = member.connections() - before;
    assert!(
        opened <= 2,
        "200 sequential requests opened {opened} upstream connections"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    use http_body_util::{BodyExt, Empty};
    let rig = Rig::new(2, fast_health(), Limits::default()).await;
    let stream = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let req = http::Request::get(format!("http://{HOST}/"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        seen.insert(
            resp.headers()["x-dynia-member"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        let _ = resp.into_body().collect().await.unwrap();
    }
    assert_eq!(seen.len(), 2, "h2 requests are balanced too");
}

// ---------------------------------------------------------------------------
// Helpers for the tests below: a proxy in front of any members, WebSocket
// clients and members, hand-written members that misbehave.

/// Checks that take their time: requests, not the checker, meet a member first.
fn slow_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_secs(30),
        ..HealthConfig::default()
    }
}

/// A proxy in front of the given members.
struct Plain {
    proxy: Proxy,
    addr: SocketAddr,
    registry: prometheus::Registry,
}

impl Plain {
    async fn start(
        members: &[(&str, SocketAddr, AdminState)],
        health: HealthConfig,
        limits: Limits,
    ) -> Plain {
        let registry = prometheus::Registry::new();
        let proxy = Proxy::start(one_service(members, health, limits), &registry)
            .await
            .unwrap();
        let addr = proxy.listeners()[0].local;
        Plain {
            proxy,
            addr,
            registry,
        }
    }

    fn metrics(&self) -> String {
        dynia_proxy::metrics::render(&self.registry)
    }

    fn failures(&self, member: &str) -> f64 {
        metric_value(
            &self.metrics(),
            &format!("dynia_upstream_failures_total{{member=\"{member}\",service=\"web\"}}"),
        )
    }

    async fn connections_drop_to(&self, n: usize, what: &str) {
        let p = self.proxy.clone();
        eventually_async(WAIT, move || {
            let p = p.clone();
            async move { p.connections() == n }
        })
        .await
        .expect(what);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A real WebSocket echo server (no timeouts of its own).
async fn ws_echo_member(bind: &str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

async fn ws_connect(proxy: SocketAddr) -> Result<Ws, String> {
    let stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let url = format!("ws://{HOST}/chat");
    let (ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// Sends `text` and tells whether it came back (within 5 s).
async fn ws_echo(ws: &mut Ws, text: &str) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) => m.into_text().is_ok_and(|t| t.as_str() == text),
        _ => false,
    }
}

/// Reads until the proxy closes the connection (or `limit`); returns what
/// was read and whether it was closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// A member that answers health checks and then runs `other` for any
/// other request (the connection and the request it read).
async fn raw_member<F, Fut>(bind: &str, id: &'static str, other: F) -> RawMember
where
    F: Fn(TcpStream, dynia_testkit::web::RawRequest) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send + 'static,
{
    RawMember::start(bind, move |mut s| {
        let other = other.clone();
        async move {
            // Bounded: a member connection serves at most 10k requests.
            for _ in 0..10_000 {
                let Some(req) = read_request(&mut s).await else {
                    return;
                };
                if req.path == "/dynia-health" {
                    let _ = write_ok(&mut s, id, "ok").await;
                    return;
                }
                match other(s, req).await {
                    Some(back) => s = back,
                    None => return,
                }
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// WebSocket tunnels: slots, idle timeout, shutdown.

#[tokio::test]
async fn websockets_hold_their_connection_slots() {
    let member = ws_echo_member("127.0.0.5:0").await;
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let px = Plain::start(
        &[("ws-one", member, AdminState::Active)],
        slow_health(),
        limits,
    )
    .await;
    let mut a = ws_connect(px.addr).await.unwrap();
    let mut b = ws_connect(px.addr).await.unwrap();
    assert!(ws_echo(&mut a, "a").await && ws_echo(&mut b, "b").await);
    assert_eq!(px.proxy.connections(), 2, "each open tunnel holds a slot");
    assert_eq!(metric_value(&px.metrics(), "dynia_connections_active"), 2.0);
    let third = tokio::time::timeout(WAIT, ws_connect(px.addr))
        .await
        .expect("an excess connection must be refused promptly");
    assert!(
        third.is_err(),
        "a third WebSocket over max_connections=2 was served"
    );
    assert!(metric_value(&px.metrics(), "dynia_connections_refused_total") >= 1.0);
    // The open tunnels are unharmed; a closed one gives its slot back.
    assert!(ws_echo(&mut a, "still here").await);
    a.close(None).await.unwrap();
    drop(a);
    let p = px.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.connections() < 2 }
    })
    .await
    .expect("the closed tunnel's slot to free");
    let mut c = ws_connect(px.addr).await.unwrap();
    assert!(ws_echo(&mut c, "c").await);
    assert!(ws_echo(&mut b, "b again").await);
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_idle_timeout_and_traffic_keeps_it() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let member = ws_echo_member("127.0.0.5:0").await;
    let idle = Duration::from_millis(400);
    let limits = Limits {
        idle_timeout: idle,
        ..Limits::default()
    };
    let px = Plain::start(
        &[("ws-one", member, AdminState::Active)],
        slow_health(),
        limits,
    )
    .await;
    let mut ws = ws_connect(px.addr).await.unwrap();
    // Traffic every 150 ms for twice the idle timeout keeps it open.
    let busy = Instant::now();
    loop {
        assert!(ws_echo(&mut ws, "tick").await, "a busy tunnel was closed");
        if busy.elapsed() >= idle * 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Silence: the proxy ends the tunnel by itself.
    let quiet = Instant::now();
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an idle tunnel was never closed");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    assert!(
        quiet.elapsed() >= idle - Duration::from_millis(50),
        "closed after {:?}, idle_timeout is {idle:?}",
        quiet.elapsed()
    );
    px.connections_drop_to(0, "the tunnel's slot to free").await;
}

#[tokio::test]
async fn shutdown_waits_for_a_tunnel_within_the_grace_period_then_cuts_it() {
    use futures_util::StreamExt;
    let member = ws_echo_member("127.0.0.5:0").await;
    let px = Plain::start(
        &[("ws-one", member, AdminState::Active)],
        slow_health(),
        Limits::default(),
    )
    .await;
    let mut ws = ws_connect(px.addr).await.unwrap();
    let p = px.proxy.clone();
    let grace = Duration::from_millis(2500);
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { p.shutdown(grace).await });
    // Within the grace period: no new connections, the tunnel still works.
    let addr = px.addr;
    eventually_async(
        WAIT,
        || async move { TcpStream::connect(addr).await.is_err() },
    )
    .await
    .expect("new connections refused");
    assert!(
        ws_echo(&mut ws, "during the grace period").await,
        "the tunnel was cut before the grace period ended"
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the tunnel"
    );
    let finished_in_time = shutdown.await.unwrap();
    assert!(!finished_in_time, "shutdown says the open tunnel finished");
    assert!(started.elapsed() >= grace);
    // Then it is cut.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the tunnel outlived the grace period");
    assert!(!matches!(end, Some(Ok(ref m)) if m.is_text()), "{end:?}");
}

// ---------------------------------------------------------------------------
// Client timeouts.

#[tokio::test]
async fn silent_client_is_closed_after_header_read_timeout() {
    let header = Duration::from_millis(300);
    let limits = Limits {
        header_read_timeout: header,
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = TcpStream::connect(rig.addr).await.unwrap();
    let t = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a client that sent nothing was not closed after header_read_timeout"
    );
    assert!(got.is_empty());
    assert!(
        t.elapsed() >= header - Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.connections() == 0 }
    })
    .await
    .expect("the slot to free");
}

#[tokio::test]
async fn keep_alive_connection_lives_until_idle_timeout_not_header_timeout() {
    let idle = Duration::from_millis(1200);
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: idle,
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    assert!(closed, "the idle connection was never closed");
    assert!(
        t.elapsed() >= idle - Duration::from_millis(100),
        "idle keep-alive connection closed after {:?}; idle_timeout is {idle:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn slow_head_on_a_kept_alive_connection_is_cut_by_header_read_timeout() {
    let header = Duration::from_millis(300);
    let limits = Limits {
        header_read_timeout: header,
        idle_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The next head starts and never ends.
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let t = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a slow second head was not cut off");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(t.elapsed() >= header - Duration::from_millis(50));
}

// ---------------------------------------------------------------------------
// Stalls mid-body.

#[tokio::test]
async fn member_stalling_mid_body_is_cut_after_response_timeout() {
    let member = raw_member("127.0.0.6:0", "staller", |mut s, _req| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            .await;
        let _ = s.write_all(&[b'x'; 500]).await;
        // Half the body, then nothing (the test ends it by dropping the member).
        tokio::time::sleep(Duration::from_secs(600)).await;
        None
    })
    .await;
    let limits = Limits {
        response_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let px = Plain::start(
        &[("staller", member.addr, AdminState::Active)],
        slow_health(),
        limits,
    )
    .await;
    let mut s = TcpStream::connect(px.addr).await.unwrap();
    s.write_all(format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the client still waits on a stalled member");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = got.len() - text.find("\r\n\r\n").unwrap() - 4;
    assert!(body < 1000, "a truncated body must not look complete");
    px.connections_drop_to(0, "the slot to free").await;
    assert!(
        px.failures("staller") >= 1.0,
        "the stall is a passive failure"
    );

    // HTTP/2 (prior knowledge): the stream is cut, not the connection.
    use http_body_util::{BodyExt, Empty};
    let stream = TcpStream::connect(px.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}/big"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("an HTTP/2 stream still waits on a stalled member");
    assert!(body.is_err(), "a truncated stream must end in an error");
    assert!(px.failures("staller") >= 2.0);
    let req = http::Request::get(format!("http://{HOST}/dynia-health"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await;
    assert!(
        resp.is_ok_and(|r| r.status() == 200),
        "the HTTP/2 connection was cut too"
    );
}

#[tokio::test]
async fn client_that_stops_reading_is_closed_after_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = TcpStream::connect(rig.addr).await.unwrap();
    // A gigabyte asked for, never read.
    s.write_all(format!("GET /bytes/1073741824 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.connections() == 0 }
    })
    .await
    .expect("the stuck connection to be closed");
    assert_eq!(
        rig.proxy.status()[0].members[0].inflight,
        0,
        "the member's request is released"
    );
}

// ---------------------------------------------------------------------------
// Uploads and the response timeout.

#[tokio::test]
async fn slow_upload_is_not_cut_by_response_timeout() {
    let limits = Limits {
        response_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    // 10 chunks 100 ms apart: the upload lasts three times response_timeout.
    let chunk = vec![b'u'; 1024];
    for _ in 0..10 {
        s.write_all(b"400\r\n").await.unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.trim_end().ends_with("10240"), "{text}");
}

#[tokio::test]
async fn client_stalling_mid_upload_gets_408_and_the_member_is_not_blamed() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    };
    let rig = Rig::new(1, fast_health(), limits).await;
    let mut s = TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    let failures = metric_value(
        &rig.metrics(),
        "dynia_upstream_failures_total{member=\"member-0\",service=\"web\"}",
    );
    assert_eq!(failures, 0.0, "a slow client is not the member's failure");
}

// ---------------------------------------------------------------------------
// Pooled connections the member closes.

/// A member that closes a kept-alive connection after 100 ms without a
/// request: `on_time` sends its FIN then; otherwise the close crosses the
/// next request (it resets the connection as that request arrives, which
/// is what a client sees when the member's close and its request cross).
async fn closing_member(bind: &str, on_time: bool) -> RawMember {
    const KEEP_ALIVE: Duration = Duration::from_millis(100);
    RawMember::start(bind, move |mut s| async move {
        let mut last = Instant::now();
        for _ in 0..10_000 {
            match tokio::time::timeout(KEEP_ALIVE, s.readable()).await {
                Err(_) if on_time => return, // FIN at the deadline
                Err(_) => {
                    if s.readable().await.is_err() {
                        return;
                    }
                }
                Ok(Err(_)) => return,
                Ok(Ok(())) => {}
            }
            if !on_time && last.elapsed() > KEEP_ALIVE {
                reset(s);
                return;
            }
            let Some(req) = read_request(&mut s).await else {
                return;
            };
            let body = format!("{} {}", req.method, req.body.len());
            if write_ok(&mut s, "closer", &body).await.is_err() {
                return;
            }
            last = Instant::now();
        }
    })
    .await
}

/// Requests that meet a member's keep-alive close. A close that the proxy
/// sees in time (`on_time`) costs nothing, whatever the method. A close that
/// crosses a request already written: requests that may be sent twice (GET,
/// or a POST with `Idempotency-Key`) go again on a new connection; a plain
/// POST only takes pooled connections idle for less than 500 ms, so one
/// spaced further apart gets a new connection and never meets the close.
#[tokio::test]
async fn requests_on_pooled_connections_the_member_closed_all_succeed() {
    type Case = (
        &'static str,
        bool,
        http::Method,
        &'static [(&'static str, &'static str)],
        u64,
        usize,
    );
    let cases: [Case; 4] = [
        ("127.0.0.7:0", true, http::Method::POST, &[], 130, 12),
        ("127.0.0.8:0", false, http::Method::GET, &[], 130, 12),
        (
            "127.0.0.10:0",
            false,
            http::Method::POST,
            &[("idempotency-key", "k-1")],
            130,
            12,
        ),
        ("127.0.0.11:0", false, http::Method::POST, &[], 600, 6),
    ];
    for (bind, on_time, method, headers, gap_ms, n) in cases {
        let member = closing_member(bind, on_time).await;
        let px = Plain::start(
            &[("closer", member.addr, AdminState::Active)],
            slow_health(),
            Limits::default(),
        )
        .await;
        let what = format!(
            "{method} {headers:?} every {gap_ms} ms, member closing {}",
            if on_time {
                "on time"
            } else {
                "as the request arrives"
            }
        );
        let mut c = Client::connect(px.addr).await.unwrap();
        for i in 0..n {
            let body = format!("request number {i}");
            let a = c
                .send_with(
                    method.clone(),
                    HOST,
                    "/orders",
                    headers,
                    body.clone().into(),
                )
                .await
                .unwrap();
            assert_eq!(
                (a.status, a.body.as_str()),
                (200, format!("{method} {}", body.len()).as_str()),
                "request {i}: {what}"
            );
            // Past the member's keep-alive (100 ms): its connection is gone.
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        }
        assert!(
            member.connections.load(Ordering::Relaxed) >= n,
            "the pooled connections were not closed by the member: the test tests nothing ({what})"
        );
    }
}

/// A POST on a pooled connection that the member reads and then drops
/// without an answer (it may have acted on it) is not sent again: 502, and
/// the member got it once. A GET in the same spot is sent again.
#[tokio::test]
async fn a_written_post_is_never_sent_twice() {
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    // Answers the first request of each connection; reads the second, counts
    // it, and resets the connection without answering.
    let member = RawMember::start("127.0.0.12:0", move |mut s| {
        let seen = seen.clone();
        async move {
            let Some(first) = read_request(&mut s).await else {
                return;
            };
            let _ = write_ok(&mut s, "dropper", &format!("{} first", first.method)).await;
            let Some(second) = read_request(&mut s).await else {
                return;
            };
            if second.method == "POST" {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            reset(s);
        }
    })
    .await;
    let px = Plain::start(
        &[("dropper", member.addr, AdminState::Active)],
        slow_health(),
        Limits::default(),
    )
    .await;
    let mut c = Client::connect(px.addr).await.unwrap();
    let a = c.get(HOST, "/warm").await.unwrap();
    assert_eq!(a.status, 200);
    // The pooled connection (idle a few ms) takes the POST; the member drops it.
    let a = c
        .send(http::Method::POST, HOST, "/orders", "pay 10 EUR".into())
        .await
        .unwrap();
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the POST reached the member twice"
    );
    // A GET in the same spot goes again on a new connection.
    let a = c.get(HOST, "/warm").await.unwrap();
    assert_eq!(a.status, 200);
    let a = c.get(HOST, "/again").await.unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "GET first"));
}

// ---------------------------------------------------------------------------
// Retries and failures.

/// An address whose SYNs go unanswered: a listener (backlog 0) whose accept
/// queue is full, so Linux drops further SYNs. Keep the returned sockets.
fn blackhole(ip: &str) -> (SocketAddr, socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "SYNs to a full accept queue are answered on this kernel: no blackhole to test with"
    );
    (addr, sock, fill)
}

#[tokio::test]
async fn connect_timeout_moves_on_and_a_post_after_a_connect_failure_is_retried() {
    let (hole, _listener, _queued) = blackhole("127.0.0.9");
    let good = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "good")
        .await
        .unwrap();
    let limits = Limits {
        connect_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    // Checks too slow to judge the silent member first.
    let health = HealthConfig {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(20),
        ..HealthConfig::default()
    };
    let px = Plain::start(
        &[
            ("hole", hole, AdminState::Active),
            ("good", good.addr, AdminState::Active),
        ],
        health,
        limits,
    )
    .await;
    let mut c = Client::connect(px.addr).await.unwrap();
    for i in 0..4 {
        let t = Instant::now();
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!((a.status, a.member()), (200, Some("good")));
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "GET {i} took {:?} with connect_timeout 200 ms",
            t.elapsed()
        );
        let body = format!("payload number {i}");
        let a = c
            .send(http::Method::POST, HOST, "/upload", body.clone().into())
            .await
            .unwrap();
        assert_eq!(a.status, 200, "a POST is retried after a connect failure");
        assert!(a.body.trim_end().ends_with(&body.len().to_string()));
    }
    // Every other request tries the silent member first (the rotation moves
    // once per request); a hedged connect that lost still times out and is
    // counted then, up to `connect_timeout` after its request ended.
    eventually_async(WAIT, || async { px.failures("hole") >= 4.0 })
        .await
        .expect("connect timeouts are passive failures");
}

#[tokio::test]
async fn maint_member_gets_no_checks_and_no_requests() {
    let a = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "member-0")
        .await
        .unwrap();
    let b = DemoUpstream::start("127.0.0.3:0".parse().unwrap(), "member-1")
        .await
        .unwrap();
    let px = Plain::start(
        &[
            ("member-0", a.addr, AdminState::Active),
            ("member-1", b.addr, AdminState::Maint),
        ],
        fast_health(),
        Limits::default(),
    )
    .await;
    // The active member's checks are the clock: five rounds.
    let checks =
        "dynia_health_checks_total{member=\"member-0\",result=\"success\",service=\"web\"}";
    eventually_async(WAIT, || async {
        metric_value(&px.metrics(), checks) >= 5.0
    })
    .await
    .expect("five checks of the active member");
    assert_eq!(b.connections(), 0, "a MAINT member was checked");
    let mut c = Client::connect(px.addr).await.unwrap();
    for _ in 0..10 {
        assert_eq!(c.get(HOST, "/").await.unwrap().member(), Some("member-0"));
    }
    assert_eq!(
        (b.hits(), b.connections()),
        (0, 0),
        "a MAINT member got traffic"
    );
    let st = px.proxy.status();
    assert_eq!(st[0].members[1].state, AdminState::Maint);
    assert_eq!(st[0].members[1].health, Health::Unknown);
}

/// A member that reads each request whole, then resets the connection
/// without a byte of answer. Counts the requests it read.
async fn resetting_member(bind: &str, seen: Arc<AtomicUsize>) -> RawMember {
    raw_member(bind, "resetter", move |s, _req| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::Relaxed);
            reset(s);
            None
        }
    })
    .await
}

/// A proxy over a member that resets every request it reads (counted in
/// the first value) and a good demo member, in that round-robin order.
async fn resetter_and_good() -> (Arc<AtomicUsize>, RawMember, DemoUpstream, Plain) {
    let seen = Arc::new(AtomicUsize::new(0));
    let bad = resetting_member("127.0.0.10:0", seen.clone()).await;
    let good = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "good")
        .await
        .unwrap();
    let px = Plain::start(
        &[
            ("resetter", bad.addr, AdminState::Active),
            ("good", good.addr, AdminState::Active),
        ],
        slow_health(),
        Limits::default(),
    )
    .await;
    (seen, bad, good, px)
}

#[tokio::test]
async fn post_whose_body_was_sent_is_not_retried_after_a_reset() {
    let (seen, _bad, good, px) = resetter_and_good().await;
    // Round robin starts at the first member: the first POST meets the reset.
    let mut statuses = Vec::new();
    for i in 0..2 {
        let a = Client::connect(px.addr)
            .await
            .unwrap()
            .send(
                http::Method::POST,
                HOST,
                "/upload",
                format!("order {i}").into(),
            )
            .await
            .unwrap();
        statuses.push(a.status);
    }
    assert_eq!(statuses, [502, 200]);
    assert_eq!(
        seen.load(Ordering::Relaxed),
        1,
        "the resetting member read one POST"
    );
    assert_eq!(
        good.hits(),
        1,
        "the POST the member reset was sent again to another member"
    );
    assert!(px.failures("resetter") >= 1.0);
}

#[tokio::test]
async fn member_resetting_without_an_answer_costs_no_failed_get() {
    let (seen, _bad, _good, px) = resetter_and_good().await;
    let mut c = Client::connect(px.addr).await.unwrap();
    for i in 0..10 {
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!((a.status, a.member()), (200, Some("good")), "GET {i}");
    }
    assert!(seen.load(Ordering::Relaxed) >= 1, "no GET met the reset");
    assert!(px.failures("resetter") >= 1.0);
}

#[tokio::test]
async fn x_request_id_sent_by_the_client_is_kept() {
    let rig = Rig::new(1, fast_health(), Limits::default()).await;
    let mut c = Client::connect(rig.addr).await.unwrap();
    let a = c
        .send_with(
            http::Method::GET,
            HOST,
            "/headers",
            &[("x-request-id", "trace-4711")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    let body = a.body.to_ascii_lowercase();
    assert_eq!(body.matches("x-request-id:").count(), 1, "{body}");
    assert!(body.contains("x-request-id: trace-4711"), "{body}");
}

// ---------------------------------------------------------------------------
// Tracking: a stalled proxy runtime cannot serve.

#[test]
fn stalled_proxy_runtime_cannot_serve() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut cfg = one_service(&[], fast_health(), Limits::default());
            cfg.services.clear();
            let proxy = Proxy::start(cfg, &prometheus::Registry::new())
                .await
                .unwrap();
            tx.send((proxy.clone(), tokio::runtime::Handle::current()))
                .unwrap();
            let _ = done_rx.await;
            proxy.shutdown(Duration::from_secs(1)).await;
        });
    });
    let (proxy, handle) = rx.recv().unwrap();
    let poll = |want: bool, limit: Duration| {
        let t = Instant::now();
        while proxy.can_serve() != want {
            assert!(t.elapsed() < limit, "can_serve never became {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
        t.elapsed()
    };
    poll(true, WAIT);
    // The proxy's only runtime thread is kept busy for 2.5 s.
    handle.spawn(async { std::thread::sleep(Duration::from_millis(2500)) });
    let took = poll(false, Duration::from_millis(2400));
    eprintln!("stall noticed after {took:?}");
    assert!(!proxy.listeners()[0].serving);
    poll(true, WAIT);
    let _ = done_tx.send(());
    runtime.join().unwrap();
}

// ---------------------------------------------------------------------------
// Reloads: round robin goes on; removed services leave the metrics.

#[tokio::test]
async fn round_robin_goes_on_across_reloads() {
    let rig = Rig::new(3, fast_health(), Limits::default()).await;
    rig.all_up().await;
    let members = rig.members(&[AdminState::Active; 3]);
    let mut c = Client::connect(rig.addr).await.unwrap();
    let mut answers = Vec::new();
    for i in 0..30 {
        answers.push(c.get(HOST, "/").await.unwrap());
        let mut cfg = one_service(&members, fast_health(), Limits::default());
        cfg.generation = 2 + i;
        rig.proxy.apply(cfg).unwrap();
    }
    let counts = count_by_member(&answers);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 10),
        "a request after every reload: {counts:?}"
    );
}

#[tokio::test]
async fn removed_service_leaves_the_metrics() {
    let rig = Rig::new(1, fast_health(), Limits::default()).await;
    rig.all_up().await;
    let members = rig.members(&[AdminState::Active]);
    let mut two = one_service(&members, fast_health(), Limits::default());
    let mut api = two.services[0].clone();
    api.name = "api".into();
    api.hosts = vec![HostPattern::parse("api.example.com").unwrap()];
    two.services.push(api);
    two.generation = 2;
    rig.proxy.apply(two).unwrap();
    let p = rig.proxy.clone();
    eventually_async(WAIT, || {
        let p = p.clone();
        async move { p.status()[1].members[0].health == Health::Up }
    })
    .await
    .expect("api member UP");
    assert_eq!(
        get(rig.addr, "api.example.com", "/").await.unwrap().status,
        200
    );
    assert_eq!(get(rig.addr, HOST, "/").await.unwrap().status, 200);
    assert!(rig.metrics().contains("service=\"api\""));
    let mut one = one_service(&members, fast_health(), Limits::default());
    one.generation = 3;
    rig.proxy.apply(one).unwrap();
    let m = rig.metrics();
    assert!(!m.contains("service=\"api\""), "{m}");
    assert!(
        m.contains("dynia_requests_total{code=\"200\",service=\"web\"} 1"),
        "the remaining service keeps its series: {m}"
    );
    assert!(
        m.contains("dynia_upstream_up{member=\"member-0\",service=\"web\"} 1"),
        "{m}"
    );
}
