//! TLS through the whole daemon: a real `dynia run` with `[[listener]]`
//! certificates and `redirect_https`, `hsts` in the cluster document,
//! certificates renewed and broken under `dynia reload`. Members on 127.0.0.x.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynia_testkit::daemon::{bin, HOST, TOKEN};
use dynia_testkit::daemon::{
    free_ports, health, metrics, write_secret, DaemonProcess, NodeFiles, TempDir,
};
use dynia_testkit::eventually_async;
use dynia_testkit::tls::{curl, https_get, Ca, HttpsConn, KeyKind, Leaf, Validity};
use dynia_testkit::upstream::DemoUpstream;

const WAIT: Duration = Duration::from_secs(15);
const HSTS: &str = "max-age=31536000; includeSubDomains";

/// A node `alpha-one` with an `https` listener serving `tls/site.pem` and a
/// plain `http` listener with `redirect_https`, one member on 127.0.0.2.
struct TlsNode {
    files: NodeFiles,
    https: SocketAddr,
    http: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    ca: Ca,
    ca_file: PathBuf,
}

impl TlsNode {
    fn new(tag: &str, ca: Ca, leaf: &Leaf, member_port: u16) -> TlsNode {
        let dir = TempDir::new(tag);
        let d = dir.0.display().to_string();
        let p = free_ports("127.0.0.1", 3);
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (https, http, admin) = (at(p[0]), at(p[1]), at(p[2]));
        std::fs::create_dir_all(dir.0.join("tls")).unwrap();
        let (cert, key) = leaf.write(&dir.0.join("tls"), "site");
        let ca_file = dir.0.join("ca.pem");
        std::fs::write(&ca_file, &ca.root_pem).unwrap();
        write_secret(&dir.0.join("admin.token"), TOKEN);
        write_secret(
            &dir.0.join("cluster.key"),
            "0123456789abcdef0123456789abcdef",
        );
        let node_file = dir.0.join("dynia.toml");
        std::fs::write(
            &node_file,
            format!(
                "[node]\nid = \"alpha-one\"\nprivate_ip = \"auto\"\nstate_dir = \"{d}\"\nworker_threads = 2\n\n\
                 [admin]\nlisten = \"{admin}\"\ntoken_file = \"{d}/admin.token\"\n\n\
                 [[listener]]\nname = \"http\"\nbind = \"{http}\"\nredirect_https = true\n\n\
                 [[listener]]\nname = \"https\"\nbind = \"{https}\"\n\
                 [[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n\
                 [election]\nkey_file = \"{d}/cluster.key\"\nport = {udp}\n",
                cert.display(),
                key.display(),
                // Its own election port: two of these may run at once.
                udp = dynia_testkit::daemon::free_udp_port("127.0.0.2"),
            ),
        )
        .unwrap();
        let cluster_file = dir.0.join("cluster.toml");
        std::fs::write(
            &cluster_file,
            format!(
                "generation = 1\ncluster = \"testing\"\n\n\
                 [[member]]\nid = \"alpha-one\"\nprivate_ip = \"127.0.0.2\"\npriority = 150\n\n\
                 [[service]]\nname = \"web\"\nhosts = [\"{HOST}\"]\nport = {member_port}\nhsts = \"{HSTS}\"\n\
                 [service.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n"
            ),
        )
        .unwrap();
        TlsNode {
            files: NodeFiles {
                dir,
                node_file,
                cluster_file,
                proxy_addr: http,
                admin_addr: admin,
            },
            https,
            http,
            cert,
            key,
            ca,
            ca_file,
        }
    }

    /// `dynia reload`, off the async runtime.
    async fn reload(&self) -> std::process::Output {
        let node_file = self.files.node_file.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(["reload", "-c"])
                .arg(node_file)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// The leaf a fresh, non-resumed connection is served.
    async fn served_cert(&self) -> Vec<u8> {
        let r = https_get(self.https, self.ca.client(false, &[]), HOST, "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.cert
    }
}

async fn member() -> (DemoUpstream, u16) {
    let up = DemoUpstream::start("127.0.0.2:0".parse().unwrap(), "alpha-one")
        .await
        .unwrap();
    let port = up.addr.port();
    (up, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_h2_redirects_and_renews_certificates_under_load() {
    let (_up, port) = member().await;
    let ca = Ca::new("dynia test CA");
    // Ends in 5 days: served, with a warning and the metric.
    let first = ca.issue(
        HOST,
        &[HOST],
        KeyKind::EcdsaPkcs8,
        Validity::EndsIn(Duration::from_secs(5 * 86_400)),
    );
    let node = TlsNode::new("tlsd", ca, &first, port);
    let d = DaemonProcess::start(&node.files).await;
    let admin = node.files.admin_addr;
    eventually_async(
        WAIT,
        || async move { health(admin, "alpha-one").await == "up" },
    )
    .await
    .expect("member UP");

    // HTTP/2 by ALPN through the daemon, HSTS from the cluster document.
    let r = curl(
        node.https,
        HOST,
        "/",
        &node.ca_file,
        &["--http2", "-D", "-"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.ends_with("alpha-one\n\n2"), "{}", r.stdout);
    let lower = r.stdout.to_ascii_lowercase();
    assert!(
        lower.contains(&format!(
            "strict-transport-security: {}",
            HSTS.to_ascii_lowercase()
        )),
        "{}",
        r.stdout
    );
    // Plain HTTP: 308 to https, except the health path; no HSTS there.
    let a = dynia_testkit::web::get(node.http, HOST, "/a/b?c=d")
        .await
        .unwrap();
    assert_eq!(a.status, 308);
    assert_eq!(
        a.headers["location"],
        format!("https://{HOST}:{}/a/b?c=d", node.https.port())
    );
    let a = dynia_testkit::web::get(node.http, HOST, "/dynia-health")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key("strict-transport-security"));

    // Close to expiry: logged and measured.
    assert!(
        d.log_text().contains("certificate expires soon"),
        "{}",
        d.log_text()
    );
    let m = metrics(admin).await;
    let series = format!(
        "dynia_tls_certificate_expiry_seconds{{name=\"https:{}\"}} ",
        node.cert.display()
    );
    let left: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} missing:\n{m}"))
        .parse()
        .unwrap();
    assert!(left > 4.9 * 86_400.0 && left <= 5.0 * 86_400.0, "{left}");
    let p = dynia_testkit::tls::run(
        "promtool",
        &["check".into(), "metrics".into()],
        m.as_bytes(),
    )
    .await;
    assert!(p.ok, "promtool check metrics:\n{}{}", p.stdout, p.stderr);

    // Renewal under continuous HTTPS load: new files, `dynia reload`.
    let second = node
        .ca
        .issue(HOST, &[HOST], KeyKind::RsaPkcs8, Validity::Year);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let saw_second = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..2 {
        let (stop, ok, saw) = (stop.clone(), ok.clone(), saw_second.clone());
        let (addr, cfg, second_der) = (node.https, node.ca.client(false, &[]), second.der.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut kept: Option<HttpsConn> = None;
            let mut errors = Vec::new();
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                // Task 0 keeps its connection; task 1 connects for every request.
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
                        if r.cert == second_der {
                            saw.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => errors.push(format!("status {}", r.status)),
                    Err(e) => errors.push(e),
                }
            }
            errors
        }));
    }
    let o = ok.clone();
    eventually_async(WAIT, move || {
        let o = o.clone();
        async move { o.load(Ordering::Relaxed) >= 50 }
    })
    .await
    .expect("load running");
    second.write(node.cert.parent().unwrap(), "site");
    let out = node.reload().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = ok.load(Ordering::Relaxed);
    let s = saw_second.clone();
    eventually_async(WAIT, move || {
        let s = s.clone();
        async move { s.load(Ordering::Relaxed) >= 10 }
    })
    .await
    .expect("new connections see the new certificate");
    let o = ok.clone();
    eventually_async(WAIT, move || {
        let o = o.clone();
        async move { o.load(Ordering::Relaxed) >= before + 50 }
    })
    .await
    .expect("load after the reload");
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert_eq!(node.served_cert().await, second.der);

    // A key that does not fit: `dynia reload` fails naming the files, the
    // renewed certificate keeps serving.
    let stranger = node
        .ca
        .issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    std::fs::write(&node.key, &stranger.key_pem).unwrap();
    let out = node.reload().await;
    assert!(!out.status.success(), "reload with a foreign key succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&node.key.display().to_string()), "{err}");
    assert!(err.contains(&node.cert.display().to_string()), "{err}");
    assert_eq!(node.served_cert().await, second.der);
    // A missing file: same.
    std::fs::write(&node.key, &second.key_pem).unwrap();
    std::fs::remove_file(&node.cert).unwrap();
    let out = node.reload().await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&node.cert.display().to_string()), "{err}");
    assert_eq!(node.served_cert().await, second.der);
    assert!(metrics(admin)
        .await
        .contains("dynia_config_reloads_total{result=\"failure\"} 2"));
}

/// `dynia_tls_certificate_expiry_seconds` of `cert` on listener `https`.
async fn expiry_seconds(admin: SocketAddr, cert: &Path) -> f64 {
    let m = metrics(admin).await;
    let series = format!(
        "dynia_tls_certificate_expiry_seconds{{name=\"https:{}\"}} ",
        cert.display()
    );
    m.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} missing:\n{m}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warning_only_within_14_days_and_a_not_yet_valid_certificate_is_served_with_a_warning(
) {
    const DAY: f64 = 86_400.0;
    const SOON: &str = "certificate expires soon";
    const NOT_YET: &str = "certificate not valid yet";
    let (_up, port) = member().await;
    let ca = Ca::new("dynia test CA");
    let year = ca.issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    let node = TlsNode::new("tlsexpiry", ca, &year, port);
    let d = DaemonProcess::start(&node.files).await;
    let admin = node.files.admin_addr;
    eventually_async(
        WAIT,
        || async move { health(admin, "alpha-one").await == "up" },
    )
    .await
    .expect("member UP");

    // A year left: served, measured, and no warning (the check runs as the
    // certificates are loaded, before the listener serves).
    assert_eq!(node.served_cert().await, year.der);
    let left = expiry_seconds(admin, &node.cert).await;
    assert!((364.9 * DAY..=365.0 * DAY).contains(&left), "{left}");
    let log = d.log_text();
    assert!(log.contains("listening listener=https"), "{log}");
    assert!(!log.contains(SOON) && !log.contains(NOT_YET), "{log}");

    // Thirteen days left: the reload warns, naming the file, and the metric
    // says so.
    let soon = node.ca.issue(
        HOST,
        &[HOST],
        KeyKind::EcdsaPkcs8,
        Validity::EndsIn(Duration::from_secs(13 * 86_400)),
    );
    soon.write(node.cert.parent().unwrap(), "site");
    let out = node.reload().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.served_cert().await, soon.der);
    let cert = node.cert.display().to_string();
    eventually_async(WAIT, || {
        let log = d.log_text();
        let cert = cert.clone();
        async move { log.lines().any(|l| l.contains(SOON) && l.contains(&cert)) }
    })
    .await
    .expect("the expiry warning");
    let left = expiry_seconds(admin, &node.cert).await;
    assert!((12.9 * DAY..=13.0 * DAY).contains(&left), "{left}");

    // notBefore tomorrow: loaded and served (as HAProxy does), with a
    // warning; a client that checks dates refuses it.
    let future = node
        .ca
        .issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::NotYetValid);
    future.write(node.cert.parent().unwrap(), "site");
    let out = node.reload().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually_async(WAIT, || {
        let log = d.log_text();
        let cert = cert.clone();
        async move {
            log.lines()
                .any(|l| l.contains(NOT_YET) && l.contains(&cert))
        }
    })
    .await
    .expect("the not-yet-valid warning");
    let r = dynia_testkit::tls::s_client(node.https, Some(HOST), &[]).await;
    let compact = |s: &str| s.split_whitespace().collect::<String>();
    assert!(
        compact(&r.stdout).contains(&compact(&future.cert_pem)),
        "not the new certificate:\n{}",
        r.stdout
    );
    let e = https_get(node.https, node.ca.client(false, &[]), HOST, "/")
        .await
        .expect_err("a rustls client accepted a certificate not valid yet");
    assert!(e.contains("certificate not valid yet"), "{e}");
}

/// Runs `dynia run` expecting it to exit; returns (code, stderr).
fn run_expecting_exit(node_file: &Path, limit: Duration) -> (Option<i32>, String) {
    let log = node_file.with_file_name("run.log");
    let mut child = Command::new(bin())
        .args(["run", "-c"])
        .arg(node_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dynia run still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_refuses_to_start_with_a_bad_certificate() {
    let (_up, port) = member().await;
    let ca = Ca::new("dynia test CA");
    let expired = ca.issue(HOST, &[HOST], KeyKind::EcdsaSec1, Validity::Expired);
    let node = TlsNode::new("tlsbad", ca, &expired, port);
    let node_file = node.files.node_file.clone();
    let (code, err) = tokio::task::spawn_blocking(move || run_expecting_exit(&node_file, WAIT))
        .await
        .unwrap();
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&node.cert.display().to_string()), "{err}");
    assert!(err.contains("expired"), "{err}");

    std::fs::remove_file(&node.cert).unwrap();
    let node_file = node.files.node_file.clone();
    let (code, err) = tokio::task::spawn_blocking(move || run_expecting_exit(&node_file, WAIT))
        .await
        .unwrap();
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&node.cert.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
}
