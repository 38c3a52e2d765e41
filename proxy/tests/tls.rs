//! TLS termination as a client sees it: real `curl` and `openssl s_client`,
//! certificates made here by rcgen (and `openssl` for RSA keys and the
//! PKCS#1/SEC1 forms), members on 127.0.0.x.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynia_proxy::{
    AdminState, CertificateFiles, HealthConfig, HostPattern, Limits, ListenerConfig, MemberConfig,
    Proxy, ProxyConfig, ServiceConfig,
};
use dynia_testkit::eventually_async;
use dynia_testkit::tls::*;
use dynia_testkit::upstream::DemoUpstream;
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
        eventually_async(WAIT, move || {
            let p = p.clone();
            async move { p.status()[0].members[0].health == dynia_proxy::Health::Up }
        })
        .await
        .expect("member UP");
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
    eventually_async(WAIT, || {
        let n = rig
            .metric("dynia_tls_handshakes_total{result=\"failure\"}")
            .unwrap_or(0.0);
        async move { n > failed_before }
    })
    .await
    .expect("the TLS 1.1 hello counted as a failed handshake");
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
    eventually_async(WAIT, move || {
        let o = o.clone();
        async move { o.load(Ordering::Relaxed) >= 100 }
    })
    .await
    .expect("load running");

    // Renewal as certbot does it: new files at the same paths, then reload.
    second.write(&rig.dir.0, "app");
    rig.proxy.apply(rig.config.clone()).unwrap();
    let before = ok.load(Ordering::Relaxed);
    let s = saw_second.clone();
    eventually_async(WAIT, move || {
        let s = s.clone();
        async move { s.load(Ordering::Relaxed) >= 20 }
    })
    .await
    .expect("load sees the new certificate");
    assert_eq!(rig.served_cert(HOST).await, second.der);
    let o = ok.clone();
    eventually_async(WAIT, move || {
        let o = o.clone();
        async move { o.load(Ordering::Relaxed) >= before + 100 }
    })
    .await
    .expect("more load after the swap");
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
        eventually_async(WAIT, || {
            let n = rig.metric(&series).unwrap_or(0.0);
            async move { n >= at_least }
        })
        .await
        .unwrap_or_else(|e| panic!("{e} waiting for {series}"));
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

    let a = dynia_testkit::web::get(rig.http, "app.example.com:8080", "/some/path?q=1&r=2")
        .await
        .unwrap();
    assert_eq!(a.status, 308);
    assert_eq!(
        a.headers["location"],
        format!("https://app.example.com:{https_port}/some/path?q=1&r=2")
    );
    assert!(!a.headers.contains_key("strict-transport-security"));

    // The health path goes through on plain HTTP.
    let a = dynia_testkit::web::get(rig.http, HOST, "/dynia-health")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.headers.contains_key("strict-transport-security"));
    // A host no certificate covers stays on plain HTTP.
    let a = dynia_testkit::web::get(rig.http, "x.example.com", "/")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, "member-0\n");
    // An unknown host is not redirected anywhere.
    let a = dynia_testkit::web::get(rig.http, "nope.example.org", "/")
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
    let r = curl_follow(&rig.ca_file, HOST, &[rig.http.port(), https_port], &plain).await;
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

/// `(depth, subject)` of each certificate in s_client's "Certificate chain".
fn served_chain(s_client_out: &str) -> Vec<(u32, String)> {
    s_client_out
        .lines()
        .filter_map(|l| {
            let (depth, rest) = l.trim_start().split_once(' ')?;
            let subject = rest.strip_prefix("s:")?;
            Some((depth.parse().ok()?, subject.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_as_issuers_hand_them_out() {
    let root = Ca::new("dynia test root");
    let inter = root.intermediate("dynia test intermediate");
    // certbot: fullchain.pem = leaf + intermediate, privkey.pem in PKCS#8.
    let le = inter.issue(
        "le.example.com",
        &["le.example.com"],
        KeyKind::EcdsaPkcs8,
        Validity::Year,
    );
    // Cloudflare Origin CA: the leaf alone, signed by the Origin CA root
    // itself (no intermediate), subject `CN=CloudFlare Origin Certificate`,
    // the zone apex and its wildcard as names, RSA key in PKCS#8.
    let mut params = leaf_params(
        &["*.cf.example.com", "cf.example.com"],
        Validity::EndsIn(Duration::from_secs(15 * 365 * 86_400)),
    );
    for (t, v) in [
        (rcgen::DnType::OrganizationName, "CloudFlare, Inc."),
        (
            rcgen::DnType::OrganizationalUnitName,
            "CloudFlare Origin CA",
        ),
        (rcgen::DnType::CommonName, "CloudFlare Origin Certificate"),
    ] {
        params.distinguished_name.push(t, v);
    }
    let mut cf = root.sign(params, KeyKind::RsaPkcs8);
    cf.chain_pem = cf.cert_pem.clone();
    // Both files saved on Windows: CRLF line ends.
    let mut crlf = inter.issue(
        "crlf.example.com",
        &["crlf.example.com"],
        KeyKind::RsaPkcs1,
        Validity::Year,
    );
    crlf.chain_pem = crlf.chain_pem.replace('\n', "\r\n");
    crlf.key_pem = crlf.key_pem.replace('\n', "\r\n");
    assert!(crlf.chain_pem.contains("-----\r\n"));
    let rig = Rig::new(
        "issuers",
        root,
        &[
            ("le", le.clone()),
            ("cf", cf.clone()),
            ("crlf", crlf.clone()),
        ],
        Opts::default(),
    )
    .await;
    // HAProxy's `crt` file: certificate, intermediate and key in one PEM,
    // named as both `cert` and `key`; added by a reload.
    let combined = inter.issue(
        "combined.example.com",
        &["combined.example.com"],
        KeyKind::EcdsaSec1,
        Validity::Year,
    );
    let combined_file = rig.dir.0.join("combined.pem");
    write_atomic(
        &combined_file,
        &format!("{}{}", combined.chain_pem, combined.key_pem),
    );
    let mut config = rig.config.clone();
    config.listeners[0].certificates.push(CertificateFiles {
        cert: combined_file.clone(),
        key: combined_file.clone(),
    });
    rig.proxy.apply(config.clone()).unwrap();

    let inter_cn = "CN = dynia test intermediate";
    for (sni, leaf, chain) in [
        ("le.example.com", &le, vec!["CN = le.example.com", inter_cn]),
        (
            "www.cf.example.com",
            &cf,
            vec!["CN = CloudFlare Origin Certificate, O = \"CloudFlare, Inc.\", OU = CloudFlare Origin CA"],
        ),
        ("cf.example.com", &cf, vec![]),
        ("crlf.example.com", &crlf, vec!["CN = crlf.example.com", inter_cn]),
        (
            "combined.example.com",
            &combined,
            vec!["CN = combined.example.com", inter_cn],
        ),
    ] {
        // openssl, trusting the root only, must build the path from what
        // dynia sends: the leaf at depth 0, the intermediate at depth 1.
        let ca_file = rig.ca_file.display().to_string();
        let r = s_client(
            rig.https,
            Some(sni),
            &["-CAfile", &ca_file, "-verify_return_error", "-showcerts"],
        )
        .await;
        assert!(r.ok, "{sni}: s_client failed:\n{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("Verify return code: 0 (ok)"),
            "{sni}:\n{}",
            r.stdout
        );
        if !chain.is_empty() {
            let want: Vec<(u32, String)> = chain
                .iter()
                .enumerate()
                .map(|(i, s)| (i as u32, s.to_string()))
                .collect();
            assert_eq!(served_chain(&r.stdout), want, "{sni}:\n{}", r.stdout);
        }
        // curl trusting the root only gets the member's answer.
        let c = curl(rig.https, sni, "/", &rig.ca_file, &[]).await;
        assert!(c.ok, "{sni}: curl failed: {}", c.stderr);
        assert!(c.stdout.starts_with("member-0\n\n"), "{sni}: {}", c.stdout);
        // rustls (webpki) too, and it is this file's leaf.
        let r = https_get(rig.https, rig.ca.client(false, &[]), sni, "/")
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(r.status, 200, "{sni}");
        assert_eq!(r.cert, leaf.der, "{sni}");
    }

    // A chain in the wrong order (intermediate first): refused, saying so.
    let reversed = rig.dir.0.join("reversed.pem");
    write_atomic(&reversed, &format!("{}{}", inter.pem, le.cert_pem));
    // Only the intermediate, with the leaf's key: the first is a CA.
    let ca_only = rig.dir.0.join("ca-only.pem");
    write_atomic(&ca_only, &inter.pem);
    for (file, says) in [
        (&reversed, "belongs to certificate 2 of this file"),
        (&ca_only, "the first certificate is a CA certificate"),
    ] {
        let mut bad = config.clone();
        bad.listeners[0].certificates[0] = CertificateFiles {
            cert: file.clone(),
            key: rig.dir.0.join("le.key"),
        };
        let e = rig.proxy.apply(bad).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains(says), "{e}");
        assert!(e.contains("leaf) certificate must come first"), "{e}");
        assert!(!e.contains("does not belong"), "{e}");
    }
    // The old certificates still serve.
    let r = https_get(rig.https, rig.ca.client(false, &[]), "le.example.com", "/")
        .await
        .unwrap();
    assert_eq!(r.cert, le.der);
}

/// The `Reused`/`New` line of s_client for a TLS 1.2 session.
fn tls12_session(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("Reused, TLSv1.2") || l.starts_with("New, TLSv1.2"))
        .and_then(|l| l.split(',').next())
        .unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_sessions_resume_by_id_and_by_ticket_across_a_reload() {
    let ca = Ca::new("dynia test CA");
    let certs = one_cert(&ca, Validity::Year);
    let rig = Rig::new("resume12", ca, &certs, Opts::default()).await;
    for (how, extra) in [("session id", &["-no_ticket"][..]), ("ticket", &[][..])] {
        let session = |n: &str| rig.dir.0.join(format!("{n}.session")).display().to_string();
        let connect = |flag: &'static str, file: String| async move {
            let mut args = vec!["-tls1_2", flag, file.as_str()];
            args.extend_from_slice(extra);
            s_client(rig.https, Some(HOST), &args).await
        };
        let (before, after) = (session("before"), session("after"));
        let first = connect("-sess_out", before.clone()).await;
        assert_eq!(
            tls12_session(&first.stdout),
            "New",
            "{how}:\n{}",
            first.stdout
        );
        // What the server gave: a ticket, or only a session id to look up.
        let ticket = first.stdout.contains("TLS session ticket:");
        assert_eq!(ticket, how == "ticket", "{how}:\n{}", first.stdout);
        let r = connect("-sess_in", before.clone()).await;
        assert_eq!(tls12_session(&r.stdout), "Reused", "{how}:\n{}", r.stdout);

        // A session made before a reload resumes after it.
        let r = connect("-sess_out", after.clone()).await;
        assert_eq!(tls12_session(&r.stdout), "New", "{how}:\n{}", r.stdout);
        rig.proxy.apply(rig.config.clone()).unwrap();
        let r = connect("-sess_in", after.clone()).await;
        assert_eq!(
            tls12_session(&r.stdout),
            "Reused",
            "{how} after a reload:\n{}",
            r.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_by_server_preference_and_members_get_pooled_http11() {
    let ca = Ca::new("dynia test CA");
    let certs = one_cert(&ca, Validity::Year);
    let rig = Rig::new("h2pool", ca, &certs, Opts::default()).await;

    // A client listing http/1.1 before h2 still gets h2: the server's order.
    let client = rig.ca.client(false, &[b"http/1.1", b"h2"]);
    let mut h2 = H2Conn::connect(rig.https, client, HOST).await.unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));

    // Many requests on that one HTTP/2 connection: the member sees HTTP/1.1,
    // all on one pooled connection.
    let mut member_conns = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = h2.get(HOST, "/headers").await.unwrap();
        assert_eq!(r.status, 200);
        let first = r.body.lines().next().unwrap_or_default();
        assert!(first.ends_with(" HTTP/1.1"), "request {i}: {}", r.body);
        member_conns.insert(r.headers["x-demo-connection"].to_str().unwrap().to_owned());
    }
    assert_eq!(
        member_conns.len(),
        1,
        "20 sequential requests reached the member on connections {member_conns:?}"
    );

    // curl --http2 as well.
    let r = curl(rig.https, HOST, "/headers", &rig.ca_file, &["--http2"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.ends_with("\n2"), "{}", r.stdout);
    assert!(
        r.stdout.starts_with("GET /headers HTTP/1.1\n"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_goes_to_the_tls_listener_holding_the_certificate() {
    let ca = Ca::new("dynia test CA");
    let dir = TlsDir::new("redirect2");
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, &ca.root_pem).unwrap();
    let up = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "member-0")
        .await
        .unwrap();
    let a = ca.issue(
        "a-cert",
        &["a.example.com", "shared.example.com"],
        KeyKind::EcdsaPkcs8,
        Validity::Year,
    );
    let b = ca.issue(
        "b-cert",
        &["b.example.com", "*.wild.example.com", "shared.example.com"],
        KeyKind::EcdsaPkcs8,
        Validity::Year,
    );
    let (port_a, port_b) = (free_port(), free_port());
    let mut cfg = config(
        vec![files(a.write(&dir.0, "a"))],
        up.addr,
        None,
        Limits::default(),
        port_a,
    );
    cfg.listeners.push(ListenerConfig {
        name: "https-b".into(),
        bind: SocketAddr::from(([127, 0, 0, 1], port_b)),
        redirect_https: false,
        certificates: vec![files(b.write(&dir.0, "b"))],
    });
    let proxy = Proxy::start(cfg, &prometheus::Registry::new())
        .await
        .unwrap();
    let http = proxy
        .listeners()
        .iter()
        .find(|l| l.name == "http")
        .unwrap()
        .local;
    for (host, port) in [
        ("a.example.com", Some(port_a)),
        ("b.example.com", Some(port_b)),
        ("x.wild.example.com", Some(port_b)),
        // On both: the first TLS listener in the configuration.
        ("shared.example.com", Some(port_a)),
        ("none.example.com", None),
    ] {
        let r = dynia_testkit::web::get(http, host, "/p?q=1").await.unwrap();
        match port {
            Some(p) => {
                assert_eq!(r.status, 308, "{host}: {}", r.body);
                assert_eq!(
                    r.headers["location"],
                    format!("https://{host}:{p}/p?q=1"),
                    "{host}"
                );
            }
            None => assert_eq!(r.status, 200, "{host}: {}", r.body),
        }
    }
    // curl follows to the second listener and its certificate checks out.
    let url = format!("http://b.example.com:{}/", http.port());
    let r = curl_follow(&ca_file, "b.example.com", &[http.port(), port_b], &url).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("member-0\n\nhttps://b.example.com:{port_b}/")
    );
}

/// `curl -L URL` trusting `ca`, with `host` resolved to 127.0.0.1 on each of
/// `ports`: the body, then the URL it ended at.
async fn curl_follow(ca: &std::path::Path, host: &str, ports: &[u16], url: &str) -> Ran {
    let mut args: Vec<String> = ["-sS", "-L", "--max-time", "10", "--cacert"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(ca.display().to_string());
    for p in ports {
        args.push("--resolve".into());
        args.push(format!("{host}:{p}:127.0.0.1"));
    }
    args.extend([
        "-w".to_string(),
        "\n%{url_effective}".to_string(),
        url.to_string(),
    ]);
    run("curl", &args, b"").await
}
