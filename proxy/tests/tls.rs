//! TLS termination as a client sees it: real `curl` and `openssl s_client`,
//! certificates made here by rcgen (and `openssl` for RSA keys and the
//! PKCS#1/SEC1 forms), members on 127.0.0.x.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynia_proxy::demo::DemoUpstream;
use dynia_proxy::{
    AdminState, CertificateFiles, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig,
    Proxy, ProxyConfig, ServiceConfig,
};
use support::wait_until;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "app.example.com";
const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn files(p: (PathBuf, PathBuf)) -> CertificateFiles {
    CertificateFiles {
        cert: p.0,
        key: p.1,
    }
}

/// A TLS listener `https` (and a plain `http` one with `redirect_https`) in
/// front of one demo member.
struct Rig {
    proxy: Proxy,
    registry: prometheus::Registry,
    config: ProxyConfig,
    https: SocketAddr,
    http: SocketAddr,
    ca: Ca,
    ca_file: PathBuf,
    dir: TlsDir,
    _up: DemoUpstream,
}

#[derive(Default)]
struct Opts {
    hsts: Option<&'static str>,
    limits: Limits,
    https_port: u16,
}

fn config(
    certs: Vec<CertificateFiles>,
    member: SocketAddr,
    hsts: Option<&str>,
    limits: Limits,
    https_port: u16,
) -> ProxyConfig {
    ProxyConfig {
        generation: 1,
        listeners: vec![
            ListenerConfig {
                name: "https".into(),
                bind: SocketAddr::from(([127, 0, 0, 1], https_port)),
                redirect_https: false,
                certificates: certs,
            },
            ListenerConfig {
                name: "http".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                redirect_https: true,
                certificates: Vec::new(),
            },
        ],
        limits,
        services: vec![ServiceConfig {
            name: "web".into(),
            hosts: vec![
                HostPattern::parse(HOST).unwrap(),
                HostPattern::parse("*.example.com").unwrap(),
            ],
            retries: 2,
            health: HealthConfig {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                ..HealthConfig::default()
            },
            hsts: hsts.map(|h| http::HeaderValue::from_str(h).unwrap()),
            members: vec![MemberConfig {
                id: Arc::from("member-0"),
                addr: member,
                state: AdminState::Active,
            }],
        }],
    }
}

impl Rig {
    /// `certs`: (file name, leaf) in listener order.
    async fn new(tag: &str, ca: Ca, certs: &[(&str, Leaf)], opts: Opts) -> Rig {
        let dir = TlsDir::new(tag);
        let ca_file = dir.0.join("ca.pem");
        std::fs::write(&ca_file, &ca.root_pem).unwrap();
        let certs = certs
            .iter()
            .map(|(name, leaf)| files(leaf.write(&dir.0, name)))
            .collect();
        let up = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "member-0")
            .await
            .unwrap();
        let config = config(certs, up.addr, opts.hsts, opts.limits, opts.https_port);
        let registry = prometheus::Registry::new();
        let proxy = Proxy::start(config.clone(), &registry).await.unwrap();
        let find = |n: &str| {
            proxy
                .listeners()
                .iter()
                .find(|l| l.name == n)
                .unwrap()
                .local
        };
        let (https, http) = (find("https"), find("http"));
        let p = proxy.clone();
        wait_until(WAIT, "member UP", move || {
            let p = p.clone();
            async move { p.status()[0].members[0].health == dynia_proxy::Health::Up }
        })
        .await;
        Rig {
            proxy,
            registry,
            config,
            https,
            http,
            ca,
            ca_file,
            dir,
            _up: up,
        }
    }

    fn metrics(&self) -> String {
        dynia_proxy::metrics::render(&self.registry)
    }

    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// The leaf a fresh, non-resumed connection with SNI `name` is served.
    async fn served_cert(&self, name: &str) -> Vec<u8> {
        let r = https_get(self.https, self.ca.client(false, &[]), name, "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.cert
    }
}

fn one_cert(ca: &Ca, validity: Validity) -> Vec<(&'static str, Leaf)> {
    vec![(
        "app",
        ca.issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, validity),
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_negotiates_h2_by_alpn_and_members_see_https() {
    let ca = Ca::new("dynia test CA");
    let certs = one_cert(&ca, Validity::EndsIn(Duration::from_secs(5 * 86_400)));
    let rig = Rig::new("h2", ca, &certs, Opts::default()).await;

    let r = curl(rig.https, HOST, "/", &rig.ca_file, &["--http2"]).await;
    assert!(r.ok, "curl failed: {}", r.stderr);
    let (body, version) = r.stdout.rsplit_once('\n').unwrap();
    assert_eq!(
        version, "2",
        "curl --http2 did not get HTTP/2:\n{}",
        r.stdout
    );
    assert_eq!(body.trim(), "member-0");

    // Members still get HTTP/1.1, told the client came over https.
    let r = curl(rig.https, HOST, "/headers", &rig.ca_file, &["--http2"]).await;
    assert!(r.ok, "{}", r.stderr);
    let lower = r.stdout.to_ascii_lowercase();
    assert!(lower.contains("x-forwarded-proto: https"), "{}", r.stdout);

    let r = curl(rig.https, HOST, "/", &rig.ca_file, &["--http1.1"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.ends_with("\n1.1"), "{}", r.stdout);

    // ALPN as offered by a client that prefers HTTP/1.1 only.
    let r = https_get(rig.https, rig.ca.client(true, &[b"http/1.1"]), HOST, "/")
        .await
        .unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.status, 200);
    // Session resumption: a second connection of the same client resumes.
    let client = rig.ca.client(true, &[]);
    let first = https_get(rig.https, client.clone(), HOST, "/")
        .await
        .unwrap();
    assert!(!first.resumed);
    let second = https_get(rig.https, client, HOST, "/").await.unwrap();
    assert!(second.resumed, "session not resumed");
    assert_eq!(second.status, 200);

    // Seconds to notAfter, for a certificate ending in 5 days.
    let series = format!(
        "dynia_tls_certificate_expiry_seconds{{name=\"https:{}\"}}",
        rig.dir.0.join("app.pem").display()
    );
    let left = rig
        .metric(&series)
        .unwrap_or_else(|| panic!("{}", rig.metrics()));
    assert!(
        (5.0 * 86_400.0 - 120.0..=5.0 * 86_400.0).contains(&left),
        "{left}"
    );
    assert!(
        rig.metric("dynia_tls_handshakes_total{result=\"success\"}")
            .unwrap()
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_first_and_tls11_is_refused() {
    let ca = Ca::new("dynia test CA");
    // The wildcard comes before the exact name: exact must still win.
    let certs = vec![
        (
            "default",
            ca.issue(
                "default-cert",
                &["default.test"],
                KeyKind::EcdsaPkcs8,
                Validity::Year,
            ),
        ),
        (
            "wildcard",
            ca.issue(
                "wildcard-cert",
                &["*.example.com"],
                KeyKind::EcdsaSec1,
                Validity::Year,
            ),
        ),
        (
            "exact",
            ca.issue("exact-cert", &[HOST], KeyKind::RsaPkcs1, Validity::Year),
        ),
        (
            "other",
            ca.issue(
                "other-cert",
                &["other.example.net"],
                KeyKind::RsaPkcs8,
                Validity::Year,
            ),
        ),
    ];
    let rig = Rig::new("sni", ca, &certs, Opts::default()).await;

    for (sni, want) in [
        (Some(HOST), "exact-cert"),
        (Some("x.example.com"), "wildcard-cert"),
        (Some("other.example.net"), "other-cert"),
        (Some("a.b.example.com"), "default-cert"),
        (Some("unknown.test"), "default-cert"),
        (None, "default-cert"),
    ] {
        let r = s_client(rig.https, sni, &[]).await;
        let cn = subject_cn(&r.stdout);
        assert_eq!(
            cn.as_deref(),
            Some(want),
            "SNI {sni:?}:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    // Every key form serves a working handshake and request.
    for name in [HOST, "x.example.com", "other.example.net", "default.test"] {
        let r = https_get(rig.https, rig.ca.client(false, &[]), name, "/").await;
        let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
        let routed = name.ends_with(".example.com");
        assert_eq!(r.status, if routed { 200 } else { 404 }, "{name}");
    }

    for version in ["-tls1_2", "-tls1_3"] {
        let r = s_client(rig.https, Some(HOST), &[version]).await;
        assert!(r.ok, "{version} refused:\n{}\n{}", r.stdout, r.stderr);
        assert_eq!(subject_cn(&r.stdout).as_deref(), Some("exact-cert"));
    }
    // SECLEVEL=0 so that OpenSSL 3 really sends a TLS 1.1 hello.
    let failed_before = rig
        .metric("dynia_tls_handshakes_total{result=\"failure\"}")
        .unwrap_or(0.0);
    let r = s_client(
        rig.https,
        Some(HOST),
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    )
    .await;
    assert!(!r.ok, "TLS 1.1 was accepted:\n{}", r.stdout);
    assert_eq!(subject_cn(&r.stdout), None, "{}", r.stdout);
    assert!(r.stderr.contains("SSL alert number"), "{}", r.stderr);
    // The server saw and refused it (counted right after it answered).
    wait_until(
        WAIT,
        "the TLS 1.1 hello counted as a failed handshake",
        || {
            let n = rig
                .metric("dynia_tls_handshakes_total{result=\"failure\"}")
                .unwrap_or(0.0);
            async move { n > failed_before }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_naming_the_file_and_the_old_one_keeps_serving() {
    let ca = Ca::new("dynia test CA");
    let good = ca.issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    let rig = Rig::new("bad", ca, &[("app", good.clone())], Opts::default()).await;
    let dir = &rig.dir.0;
    let member = rig.config.services[0].members[0].addr;

    let other = rig
        .ca
        .issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    let expired = rig
        .ca
        .issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Expired);
    let (exp_cert, exp_key) = expired.write(dir, "expired");
    let (other_cert, _) = other.write(dir, "other");
    let (_, good_key) = (dir.join("app.pem"), dir.join("app.key"));
    let garbage = dir.join("garbage.key");
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.join("missing.pem");

    let cases: Vec<(&str, CertificateFiles, Vec<&PathBuf>, &str)> = vec![
        (
            "missing",
            CertificateFiles {
                cert: missing.clone(),
                key: good_key.clone(),
            },
            vec![&missing],
            "cannot read",
        ),
        (
            "expired",
            CertificateFiles {
                cert: exp_cert.clone(),
                key: exp_key.clone(),
            },
            vec![&exp_cert],
            "expired",
        ),
        (
            "mismatch",
            CertificateFiles {
                cert: other_cert.clone(),
                key: good_key.clone(),
            },
            vec![&other_cert, &good_key],
            "does not belong",
        ),
        (
            "garbage key",
            CertificateFiles {
                cert: other_cert.clone(),
                key: garbage.clone(),
            },
            vec![&garbage],
            "private key",
        ),
        (
            "empty cert",
            CertificateFiles {
                cert: empty.clone(),
                key: good_key.clone(),
            },
            vec![&empty],
            "CERTIFICATE",
        ),
    ];
    for (what, files, named, says) in cases {
        let cfg = config(vec![files], member, None, Limits::default(), 0);
        // At start: refused.
        let e = Proxy::start(cfg.clone(), &prometheus::Registry::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: started"))
            .to_string();
        for p in &named {
            assert!(e.contains(&p.display().to_string()), "{what}: {e}");
        }
        assert!(e.contains(says), "{what}: {e}");
        // On apply: refused, and the old certificate still serves.
        let e = rig.proxy.apply(cfg).unwrap_err().to_string();
        assert!(e.contains(&named[0].display().to_string()), "{what}: {e}");
        assert_eq!(rig.served_cert(HOST).await, good.der, "{what}");
    }
    assert_eq!(
        rig.proxy.config().listeners[0].certificates[0].cert,
        dir.join("app.pem")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swap_under_https_load_has_zero_failures() {
    let ca = Ca::new("dynia test CA");
    let first = ca.issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    let rig = Rig::new("swap", ca, &[("app", first.clone())], Opts::default()).await;
    let second = rig
        .ca
        .issue(HOST, &[HOST], KeyKind::RsaPkcs8, Validity::Year);
    assert_eq!(rig.served_cert(HOST).await, first.der);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let saw_second = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Task 0 keeps one connection; task 1 connects every time and resumes
    // sessions (which carry no certificate); task 2 makes full handshakes.
    for t in 0..3 {
        let (stop, ok, failed, saw) =
            (stop.clone(), ok.clone(), failed.clone(), saw_second.clone());
        let (addr, cfg, second_der) = (rig.https, rig.ca.client(t != 2, &[]), second.der.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut kept: Option<HttpsConn> = None;
            let mut errors = Vec::new();
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let r = if t == 0 {
                    if kept.is_none() {
                        kept = HttpsConn::connect(addr, cfg.clone(), HOST).await.ok();
                    }
                    match kept.as_mut() {
                        Some(c) => c.get(HOST, "/").await,
                        None => Err("connect failed".into()),
                    }
                } else {
                    https_get(addr, cfg.clone(), HOST, "/").await
                };
                match r {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if t == 2 && r.cert == second_der {
                            saw.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("status {}", r.status));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e);
                    }
                }
            }
            errors
        }));
    }
    let o = ok.clone();
    wait_until(WAIT, "load running", move || {
        let o = o.clone();
        async move { o.load(Ordering::Relaxed) >= 100 }
    })
    .await;

    // Renewal as certbot does it: new files at the same paths, then reload.
    second.write(&rig.dir.0, "app");
    rig.proxy.apply(rig.config.clone()).unwrap();
    let before = ok.load(Ordering::Relaxed);
    let s = saw_second.clone();
    wait_until(WAIT, "load sees the new certificate", move || {
        let s = s.clone();
        async move { s.load(Ordering::Relaxed) >= 20 }
    })
    .await;
    assert_eq!(rig.served_cert(HOST).await, second.der);
    let o = ok.clone();
    wait_until(WAIT, "more load after the swap", move || {
        let o = o.clone();
        async move { o.load(Ordering::Relaxed) >= before + 100 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failures: {errors:?}");
    assert!(ok.load(Ordering::Relaxed) >= before + 100);
}

/// A handshake record of 512 bytes announced, a ClientHello header, then
/// nothing more: the server waits for the rest.
const TRUNCATED_HELLO: [u8; 13] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x11, 0x22,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_client_hello_do_not_disturb_others() {
    const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
    const SILENT: usize = 50;
    const TRUNCATED: usize = 10;
    // Each ordinary request must finish well within the time the stalled
    // handshakes are held: were handshakes served one at a time, the first
    // request would wait behind the stalled ones for HANDSHAKE_LIMIT.
    const REQUEST_LIMIT: Duration = Duration::from_secs(2);
    let ca = Ca::new("dynia test CA");
    let certs = one_cert(&ca, Validity::Year);
    let limits = Limits {
        header_read_timeout: HANDSHAKE_LIMIT,
        ..Limits::default()
    };
    let opts = Opts {
        limits,
        ..Opts::default()
    };
    let rig = Rig::new("garbage", ca, &certs, opts).await;

    // Plain HTTP and random bytes at a TLS port: refused at once.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"[..],
        &[0xffu8; 64][..],
    ] {
        let mut c = TcpStream::connect(rig.https).await.unwrap();
        c.write_all(junk).await.unwrap();
        let closed = read_to_close(&mut c, Instant::now(), Duration::from_secs(8)).await;
        assert!(closed < Duration::from_millis(1500), "{closed:?}");
    }

    // Clients that say nothing, and ClientHellos cut short, all held open at
    // once; each watched for the server's close from the moment it connected.
    let mut held = Vec::new();
    for i in 0..SILENT + TRUNCATED {
        let mut c = TcpStream::connect(rig.https).await.unwrap();
        let opened = Instant::now();
        let truncated = i >= SILENT;
        if truncated {
            c.write_all(&TRUNCATED_HELLO).await.unwrap();
        }
        held.push((
            truncated,
            tokio::spawn(async move {
                read_to_close(&mut c, opened, HANDSHAKE_LIMIT + Duration::from_secs(5)).await
            }),
        ));
    }
    let all_held = Instant::now();

    // Meanwhile: ordinary HTTPS requests, four clients at a time, each
    // request with its own deadline.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, cfg) = (rig.https, rig.ca.client(false, &[]));
        clients.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..5 {
                let t = Instant::now();
                let r =
                    tokio::time::timeout(REQUEST_LIMIT, https_get(addr, cfg.clone(), HOST, "/"))
                        .await
                        .unwrap_or_else(|_| panic!("a request took over {REQUEST_LIMIT:?}"))
                        .unwrap();
                assert_eq!(r.status, 200);
                slowest = slowest.max(t.elapsed());
            }
            slowest
        }));
    }
    let mut slowest = Duration::ZERO;
    for c in clients {
        slowest = slowest.max(c.await.unwrap());
    }
    // The stalled handshakes were all still open while those were served.
    let served_in = all_held.elapsed();
    assert!(
        held.iter().all(|(_, t)| !t.is_finished()),
        "a stalled connection was closed before its handshake timeout"
    );
    assert!(served_in < HANDSHAKE_LIMIT, "{served_in:?}");

    // And each is closed once its handshake timeout has passed.
    for (truncated, t) in held {
        let closed = t.await.unwrap();
        assert!(
            closed >= HANDSHAKE_LIMIT - Duration::from_millis(100)
                && closed < HANDSHAKE_LIMIT + Duration::from_secs(2),
            "{}: closed {closed:?} after connecting",
            if truncated { "truncated" } else { "silent" }
        );
    }
    eprintln!(
        "20 requests beside {} stalled handshakes: slowest {slowest:?}, all in {served_in:?}",
        SILENT + TRUNCATED
    );
    // Counted (a failed handshake may be counted just after its close).
    for (result, at_least) in [("timeout", (SILENT + TRUNCATED) as f64), ("failure", 2.0)] {
        let series = format!("dynia_tls_handshakes_total{{result=\"{result}\"}}");
        wait_until(WAIT, &series.clone(), || {
            let n = rig.metric(&series).unwrap_or(0.0);
            async move { n >= at_least }
        })
        .await;
    }
    // And the listener still serves.
    assert_eq!(rig.served_cert(HOST).await.len(), certs[0].1.der.len());
}

/// Reads until the server closes; returns how long after `since` that was
/// (panics `limit` after `since`).
async fn read_to_close(c: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(since.elapsed()), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue, // e.g. a TLS alert before the close
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_spares_the_health_path_and_hsts_is_https_only() {
    let ca = Ca::new("dynia test CA");
    let certs = one_cert(&ca, Validity::Year);
    let https_port = free_port();
    let opts = Opts {
        hsts: Some("max-age=31536000; includeSubDomains"),
        https_port,
        ..Opts::default()
    };
    let rig = Rig::new("redirect", ca, &certs, opts).await;

    let a = support::get(rig.http, "app.example.com:8080", "/some/path?q=1&r=2")
        .await
        .unwrap();
    assert_eq!(a.status, 308);
    assert_eq!(
        a.headers["location"],
        format!("https://app.example.com:{https_port}/some/path?q=1&r=2")
    );
    assert!(!a.headers.contains_key("strict-transport-security"));

    // The health path goes through on plain HTTP.
    let a = support::get(rig.http, HOST, "/dynia-health").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.headers.contains_key("strict-transport-security"));
    // A host no certificate covers stays on plain HTTP.
    let a = support::get(rig.http, "x.example.com", "/").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, "member-0\n");
    // An unknown host is not redirected anywhere.
    let a = support::get(rig.http, "nope.example.org", "/")
        .await
        .unwrap();
    assert_eq!(a.status, 404);

    // Following the redirect: HTTPS answers carry HSTS.
    let r = https_get(rig.https, rig.ca.client(false, &[]), HOST, "/some/path?q=1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let r = curl(rig.https, HOST, "/", &rig.ca_file, &["--http2", "-D", "-"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000; includesubdomains"),
        "{}",
        r.stdout
    );
    // curl follows the 308 from plain HTTP to HTTPS.
    let plain = format!("http://{HOST}:{}/", rig.http.port());
    let args: Vec<String> = [
        "-sS",
        "-L",
        "--max-time",
        "10",
        "--cacert",
        &rig.ca_file.display().to_string(),
        "--resolve",
        &format!("{HOST}:{}:127.0.0.1", rig.http.port()),
        "--resolve",
        &format!("{HOST}:{https_port}:127.0.0.1"),
        "-w",
        "\n%{url_effective}",
        &plain,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = run("curl", &args, b"").await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("member-0\n\nhttps://{HOST}:{https_port}/")
    );
}

#[tokio::test]
async fn redirect_https_on_a_tls_listener_is_refused() {
    let mut cfg = config(
        vec![CertificateFiles {
            cert: "/nonexistent.pem".into(),
            key: "/nonexistent.key".into(),
        }],
        "127.0.0.2:1".parse().unwrap(),
        None,
        Limits::default(),
        0,
    );
    cfg.listeners[0].redirect_https = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("redirect_https"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws_listener = tokio::net::TcpListener::bind("127.0.0.5:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = ws_listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    let ca = Ca::new("dynia test CA");
    let dir = TlsDir::new("wss");
    let leaf = ca.issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    let mut cfg = config(
        vec![files(leaf.write(&dir.0, "app"))],
        ws_addr,
        None,
        Limits::default(),
        0,
    );
    // The echo server has no health path: check too rarely to matter.
    cfg.services[0].health.interval = Duration::from_secs(30);
    let proxy = Proxy::start(cfg, &prometheus::Registry::new())
        .await
        .unwrap();
    let https = proxy.listeners()[0].local;
    let tcp = TcpStream::connect(https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client(false, &[b"http/1.1"]))
        .connect(HOST.try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{HOST}/chat"), tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
    }
}
