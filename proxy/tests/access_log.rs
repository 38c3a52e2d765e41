//! The access log against real members on 127.0.0.x: one line for a proxied
//! GET, a retried request, a 503, a client abort and a WebSocket tunnel, in
//! each of the three formats (`haproxy` in `option httplog` field order).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynia_proxy::access::{AccessLog, Format};
use dynia_proxy::{
    AdminState, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig, Proxy,
    ProxyConfig, ServiceConfig,
};
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::{get, read_request, RawMember};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// An in-memory sink the writer thread appends to.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

fn service(name: &str, host: &str, members: &[(&str, SocketAddr)]) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        hosts: vec![HostPattern::parse(host).unwrap()],
        retries: 2,
        // Slow checks: requests, not the checker, meet a dead member first.
        health: HealthConfig {
            interval: Duration::from_secs(30),
            ..HealthConfig::default()
        },
        hsts: None,
        members: members
            .iter()
            .map(|(id, addr)| MemberConfig {
                id: Arc::from(*id),
                addr: *addr,
                state: AdminState::Active,
            })
            .collect(),
    }
}

/// An address on which nothing listens (connect refused).
async fn dead_addr(ip: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    l.local_addr().unwrap()
}

/// A member that passes its health checks but resets every other request
/// without a byte of answer, as a crashing app would.
async fn resetting_member(bind: &str) -> RawMember {
    RawMember::start(bind, |mut s| async move {
        let Some(req) = read_request(&mut s).await else {
            return;
        };
        if req.path == "/dynia-health" {
            let _ = dynia_testkit::web::write_ok(&mut s, "resetter", "ok").await;
        } else {
            dynia_testkit::web::reset(s);
        }
    })
    .await
}

/// A member that answers a long body slowly (10 bytes every 50 ms, at most
/// 10 s), so that a client can go away in the middle.
async fn slow_body_member(bind: &str) -> RawMember {
    RawMember::start(bind, |mut s| async move {
        let Some(_) = read_request(&mut s).await else {
            return;
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..200 {
            if s.write_all(b"0123456789").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A real WebSocket echo server that also passes health checks (so that
/// a check running first cannot take it out).
async fn ws_echo_member(bind: &str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 64];
                let n = s.peek(&mut head).await.unwrap_or(0);
                if head[..n].starts_with(b"GET /dynia-health") {
                    let _ = read_request(&mut s).await;
                    let _ = dynia_testkit::web::write_ok(&mut s, "echo", "ok").await;
                    return;
                }
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

/// Runs the five cases through a proxy logging in `format`; returns the
/// lines, keyed by the case's path.
async fn five_cases(format: Format) -> HashMap<&'static str, String> {
    let good = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "good")
        .await
        .unwrap();
    let dead = dead_addr("127.0.0.3").await;
    let resetter = resetting_member("127.0.0.6:0").await;
    let slow = slow_body_member("127.0.0.4:0").await;
    let ws = ws_echo_member("127.0.0.5:0").await;
    let config = ProxyConfig {
        generation: 1,
        listeners: vec![ListenerConfig {
            name: "http".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            redirect_https: false,
            certificates: Vec::new(),
        }],
        limits: Limits::default(),
        services: vec![
            service(
                "web",
                "web.test",
                &[("resetter", resetter.addr), ("good", good.addr)],
            ),
            service("plain", "plain.test", &[("good", good.addr)]),
            service("gone", "gone.test", &[("dead", dead)]),
            service("slow", "slow.test", &[("slow", slow.addr)]),
            service("ws", "ws.test", &[("echo", ws)]),
        ],
    };
    let registry = prometheus::Registry::new();
    let proxy = Proxy::start(config, &registry).await.unwrap();
    let sink = Sink::default();
    let dropped = proxy.metrics().access_log_dropped.clone();
    let log = AccessLog::start(format, Box::new(sink.clone()), dropped).unwrap();
    proxy.set_access_log(Some(log));
    let addr = proxy.listeners()[0].local;

    // A retried GET: round robin starts at `resetter` (reset), then `good`.
    let a = get(addr, "web.test", "/retry").await.unwrap();
    assert_eq!(a.status, 200);
    // A plain GET.
    let a = get(addr, "plain.test", "/get?x=1").await.unwrap();
    assert_eq!(a.status, 200);
    // No member can be reached: 503.
    let a = get(addr, "gone.test", "/unavailable").await.unwrap();
    assert_eq!(a.status, 503);
    // The client goes away in the middle of the body.
    client_abort(addr).await;
    // A WebSocket tunnel: one echo, then the client closes.
    websocket(addr).await;

    let paths = ["/retry", "/get?x=1", "/unavailable", "/abort", "/ws"];
    let s = sink.clone();
    eventually_async(WAIT, move || {
        let n = s.lines().len();
        async move { n >= paths.len() }
    })
    .await
    .expect("five access-log lines");
    let lines = sink.lines();
    assert_eq!(lines.len(), paths.len(), "{lines:#?}");
    paths
        .iter()
        .map(|p| {
            let needle = match format {
                Format::Haproxy => format!(" {p} HTTP/1.1\""),
                Format::Json => format!("\"path\":\"{p}\""),
                Format::Logfmt => format!("path={p} "),
            };
            let quoted = format!("path=\"{p}\" ");
            let line = lines
                .iter()
                .find(|l| l.contains(&needle) || l.contains(&quoted));
            (
                *p,
                line.unwrap_or_else(|| panic!("no line for {p}: {lines:#?}"))
                    .clone(),
            )
        })
        .collect()
}

async fn client_abort(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /abort HTTP/1.1\r\nhost: slow.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
}

async fn websocket(addr: SocketAddr) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert_eq!(
        back.unwrap().unwrap().into_text().unwrap().as_str(),
        "hello"
    );
    ws.close(None).await.unwrap();
    // Read to the end so the close handshake completes both ways.
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
}

/// What every format must say about each case: (field, value) pairs.
fn expected(path: &str) -> Vec<(&'static str, &'static str)> {
    match path {
        "/get?x=1" => vec![
            ("status", "200"),
            ("service", "plain"),
            ("member", "good"),
            ("tried", "good"),
            ("retries", "0"),
            ("term", "--"),
        ],
        "/retry" => vec![
            ("status", "200"),
            ("service", "web"),
            ("member", "good"),
            ("tried", "resetter,good"),
            ("retries", "1"),
            ("term", "--"),
        ],
        "/unavailable" => vec![
            ("status", "503"),
            ("service", "gone"),
            ("member", "-"),
            ("term", "SC"),
        ],
        "/abort" => vec![("status", "200"), ("member", "slow"), ("term", "CD")],
        "/ws" => vec![
            ("status", "101"),
            ("member", "echo"),
            ("tunnel", "true"),
            ("term", "--"),
        ],
        _ => unreachable!(),
    }
}

fn logfmt_fields(line: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap();
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.insert(key, value);
        rest = next;
    }
    out
}

#[tokio::test]
async fn logfmt_lines_for_every_case() {
    let lines = five_cases(Format::Logfmt).await;
    for (path, line) in &lines {
        let f = logfmt_fields(line);
        for (k, v) in expected(path) {
            assert_eq!(f.get(k).map(String::as_str), Some(v), "{k} in {line}");
        }
        for k in [
            "time",
            "client",
            "listener",
            "host",
            "method",
            "proto",
            "request_id",
        ] {
            assert!(f.contains_key(k), "{k} missing in {line}");
        }
        assert_eq!(f["listener"], "http");
        assert!(f["client"].starts_with("127.0.0.1:"), "{line}");
        assert_eq!(f["request_id"].len(), 32, "{line}");
    }
    let ws = logfmt_fields(&lines["/ws"]);
    assert!(
        ws["bytes_in"].parse::<u64>().unwrap() > 0,
        "{}",
        lines["/ws"]
    );
    assert!(
        ws["bytes_out"].parse::<u64>().unwrap() > 0,
        "{}",
        lines["/ws"]
    );
    let abort = logfmt_fields(&lines["/abort"]);
    assert!(abort["bytes_out"].parse::<u64>().unwrap() < 100_000);
}

#[tokio::test]
async fn json_lines_for_every_case() {
    let lines = five_cases(Format::Json).await;
    for (path, line) in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (k, want) in expected(path) {
            let got = match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(got, want, "{k} in {line}");
        }
        assert_eq!(v["method"], "GET");
        assert_eq!(v["proto"], "HTTP/1.1");
        assert!(v["total_ms"].as_f64().unwrap() >= 0.0);
    }
    let retry: serde_json::Value = serde_json::from_str(&lines["/retry"]).unwrap();
    assert!(retry["connect_ms"].as_f64().unwrap() >= 0.0);
    assert!(retry["first_byte_ms"].as_f64().unwrap() >= retry["connect_ms"].as_f64().unwrap());
}

/// Splits an httplog line into its fields in `option httplog` order:
/// client, date, frontend, backend/server, timers, status, bytes, request
/// cookie, response cookie, termination state, connection counts, queues,
/// request line.
fn httplog_fields(line: &str) -> Vec<String> {
    let (head, request) = line.split_once(" \"").unwrap();
    let mut f: Vec<String> = head.split(' ').map(str::to_owned).collect();
    f.push(request.trim_end_matches('"').to_owned());
    f
}

#[tokio::test]
async fn haproxy_lines_follow_httplog_field_order() {
    let lines = five_cases(Format::Haproxy).await;
    for (path, line) in &lines {
        let f = httplog_fields(line);
        assert_eq!(f.len(), 13, "{line}");
        assert!(f[0].starts_with("127.0.0.1:"), "%ci:%cp in {line}");
        assert!(
            f[1].starts_with('[') && f[1].ends_with(']'),
            "%tr in {line}"
        );
        assert_eq!(f[1].len(), "[04/Dec/2026:03:47:59.123]".len(), "{line}");
        assert_eq!(f[2], "http", "%ft in {line}");
        let timers: Vec<&str> = f[4].split('/').collect();
        assert_eq!(timers.len(), 5, "%TR/%Tw/%Tc/%Tr/%Ta in {line}");
        assert!(timers.iter().all(|t| t.parse::<i64>().is_ok()), "{line}");
        assert!(f[6].parse::<u64>().is_ok(), "%B in {line}");
        assert_eq!(
            (f[7].as_str(), f[8].as_str()),
            ("-", "-"),
            "%CC %CS in {line}"
        );
        assert_eq!(f[9].len(), 4, "%tsc in {line}");
        assert_eq!(f[10].split('/').count(), 5, "%ac/%fc/%bc/%sc/%rc in {line}");
        assert_eq!(f[11], "0/0", "%sq/%bq in {line}");
        assert_eq!(f[12], format!("GET {path} HTTP/1.1"), "%r in {line}");
        let want: HashMap<_, _> = expected(path).into_iter().collect();
        assert_eq!(f[5], want["status"], "%ST in {line}");
        assert_eq!(&f[9][..2], want["term"], "{line}");
        let server = match want["member"] {
            "-" => "<NOSRV>",
            m => m,
        };
        assert!(f[3].ends_with(&format!("/{server}")), "%b/%s in {line}");
    }
    let retry = httplog_fields(&lines["/retry"]);
    assert_eq!(retry[3], "web/good");
    assert!(
        retry[10].ends_with("/+1"),
        "redispatched retry: {}",
        lines["/retry"]
    );
    let unavailable = httplog_fields(&lines["/unavailable"]);
    assert_eq!(unavailable[3], "gone/<NOSRV>");
    assert!(
        unavailable[4].contains("/-1/-1/"),
        "no connect: {}",
        lines["/unavailable"]
    );
}
