//! The proxy against real members on 127.0.0.x: balancing, health, retries,
//! drain, limits, tunnels and streaming, as a user would check them.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dynia_proxy::demo::DemoUpstream;
use dynia_proxy::{
    AdminState, Health, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig, Proxy,
    ProxyConfig, ServiceConfig,
};
use support::{get, wait_until, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "app.example.com";
const WAIT: Duration = Duration::from_secs(10);

fn fast_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..HealthConfig::default()
    }
}

fn config(
    members: &[(&str, SocketAddr, AdminState)],
    health: HealthConfig,
    limits: Limits,
) -> ProxyConfig {
    ProxyConfig {
        generation: 1,
        listeners: vec![ListenerConfig {
            name: "http".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
        }],
        limits,
        services: vec![ServiceConfig {
            name: "web".into(),
            hosts: vec![HostPattern::parse(HOST).unwrap()],
            retries: 2,
            health,
            members: members
                .iter()
                .map(|(id, addr, state)| MemberConfig {
                    id: Arc::from(*id),
                    addr: *addr,
                    state: *state,
                })
                .collect(),
        }],
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
        let proxy = Proxy::start(config(&members, health, limits), &registry)
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
        wait_until(WAIT, "every member UP", move || {
            let p = p.clone();
            async move { p.status()[0].members.iter().all(|m| m.health == Health::Up) }
        })
        .await;
    }

    fn metrics(&self) -> String {
        dynia_proxy::metrics::render(&self.registry)
    }
}

fn count_by_member(answers: &[support::Answer]) -> HashMap<String, usize> {
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
    wait_until(WAIT, "member DOWN", || {
        let (p, id) = (p.clone(), id.clone());
        async move {
            p.status()[0]
                .members
                .iter()
                .any(|m| m.id == id && m.health == Health::Down)
        }
    })
    .await;
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

    sick.set_health(200);
    wait_until(WAIT, "member UP again", || {
        let (p, id) = (p.clone(), id.clone());
        async move {
            p.status()[0]
                .members
                .iter()
                .any(|m| m.id == id && m.health == Health::Up)
        }
    })
    .await;
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
    wait_until(WAIT, "some traffic on the victim", || async {
        victim.hits() > 20
    })
    .await;
    victim.kill();
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap();
    }
    assert_eq!(failed, 0, "GET requests failed after a member died");
    let m = rig.metrics();
    assert!(m.contains("dynia_upstream_failures_total{member=\"member-2\",service=\"web\"}"));
}

#[tokio::test]
async fn all_members_down_answers_503_with_retry_after_promptly() {
    let rig = Rig::new(2, fast_health(), Limits::default()).await;
    rig.all_up().await;
    for u in &rig.ups {
        u.set_health(503);
    }
    let p = rig.proxy.clone();
    wait_until(WAIT, "all DOWN", || {
        let p = p.clone();
        async move {
            p.status()[0]
                .members
                .iter()
                .all(|m| m.health == Health::Down)
        }
    })
    .await;
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
    wait_until(WAIT, "slow request in flight", || {
        let p = p.clone();
        async move { p.status()[0].members.iter().any(|m| m.inflight == 1) }
    })
    .await;
    let busy = rig.proxy.status()[0]
        .members
        .iter()
        .position(|m| m.inflight == 1)
        .unwrap();
    let mut states = [AdminState::Active; 3];
    states[busy] = AdminState::Drain;
    rig.proxy
        .apply(config(
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
    wait_until(WAIT, "a connection slot to free", || {
        let p = p.clone();
        async move { p.connections() < 2 }
    })
    .await;
    assert_eq!(get(rig.addr, HOST, "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A real WebSocket echo server as the member.
    let ws_listener = tokio::net::TcpListener::bind("127.0.0.5:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = ws_listener.accept().await {
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
    let registry = prometheus::Registry::new();
    let health = HealthConfig {
        interval: Duration::from_secs(30),
        ..HealthConfig::default()
    };
    let proxy = Proxy::start(
        config(
            &[("ws-one", ws_addr, AdminState::Active)],
            health,
            Limits::default(),
        ),
        &registry,
    )
    .await
    .unwrap();
    let addr = proxy.listeners()[0].local;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{HOST}/chat");
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
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
    wait_until(WAIT, "member-0 DOWN", || {
        let (p, down) = (p.clone(), down.clone());
        async move {
            p.status()[0]
                .members
                .iter()
                .any(|m| m.id == down && m.health == Health::Down)
        }
    })
    .await;
    // Drop member-2; member-0 must still be DOWN right after the swap.
    let members = rig.members(&[AdminState::Active; 3]);
    rig.proxy
        .apply(config(&members[..2], fast_health(), Limits::default()))
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
        "idle connection was not closed"
    );
    let p = rig.proxy.clone();
    wait_until(WAIT, "the connection to be released", || {
        let p = p.clone();
        async move { p.connections() == 0 }
    })
    .await;
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
    wait_until(WAIT, "slow request in flight", || {
        let p = p.clone();
        async move { p.status()[0].members.iter().any(|m| m.inflight == 1) }
    })
    .await;
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
        .apply(config(&keep, fast_health(), Limits::default()))
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
    wait_until(WAIT, "first check", || {
        let p = p.clone();
        async move { p.status()[0].members[0].health == Health::Up }
    })
    .await;
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
