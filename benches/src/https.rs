//! dynia vs HAProxy over HTTPS (`--https`): keep-alive requests/s and full
//! TLS handshakes per second, side by side (issue 5).
//!
//! One certificate for both proxies, made per run with the `openssl` CLI
//! (ECDSA P-256 by default, RSA-2048 with `--rsa`; SAN `bench.test`). HAProxy
//! gets the HTTP benchmark's configuration with `bind ... ssl crt
//! combined.pem alpn h2,http/1.1` and `X-Forwarded-Proto https`; dynia the
//! same node file with a `[[listener.certificate]]` on its listener. Both
//! keep one worker thread and the same two upstreams.
//!
//! Two measurements per proxy and round, alternating which proxy goes first:
//!
//! 1. keep-alive: `wrk -t1 -c50 --latency -H 'Host: bench.test' https://...`
//!    (50 handshakes at the start, then requests on open connections);
//! 2. full handshakes: an in-process rustls client (ring) with session
//!    resumption disabled opens a new TCP + TLS connection per request
//!    (`GET /`, `Connection: close`, read to the end), from
//!    [`HS_CLIENTS`] threads pinned to the wrk core. Every connection is
//!    checked to be a full handshake (`HandshakeKind::Full`), and for dynia
//!    the count is compared with `dynia_tls_handshakes_total` before/after.
//!    The client does not verify the certificate or the handshake signature
//!    (a load generator; the server still signs every handshake); it records
//!    the negotiated version, cipher suite, key exchange group and signature
//!    scheme.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};

use crate::configs::{self, BenchMember, BenchService, HOST};
use crate::procs::{self, nap, Proc};
use crate::wrk::{self, WrkReport};
use crate::{BenchArgs, Kind, Pinning, TmpDir};

/// HAProxy's TLS 1.3 suites and groups, in the order dynia (rustls 0.23 with
/// *ring*, defaults) offers them; TLS 1.2 stays enabled on both, as in dynia.
const TLS13_SUITES: &str =
    "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
const CURVES: &str = "X25519:P-256:P-384";

/// Concurrent connections of the handshake client (one blocking thread each).
pub const HS_CLIENTS: usize = 16;

/// A proxy under test over HTTPS.
struct Target {
    kind: Kind,
    proc: Proc,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    ka: Vec<KaRun>,
    hs: Vec<HsRun>,
    negotiated: String,
    /// What an OpenSSL client (wrk's library) negotiates: `openssl s_client -brief`.
    openssl_negotiated: String,
}

#[derive(Clone)]
struct KaRun {
    round: u32,
    wrk: WrkReport,
    proxy_cpu: f64,
    cores: Vec<(usize, f64)>,
    tls_handshakes: Option<u64>,
}

#[derive(Clone)]
struct HsRun {
    round: u32,
    /// Completed connections (full handshake + 200 answer) per second.
    rate: f64,
    conns: u64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// Connections that were not a full handshake (must be 0).
    not_full: u64,
    proxy_cpu: f64,
    cores: Vec<(usize, f64)>,
    /// dynia only: `dynia_tls_handshakes_total{result="success"}` delta.
    tls_handshakes: Option<u64>,
}

fn per_cpu(rate: f64, cpu_pct: f64) -> f64 {
    rate / (cpu_pct / 100.0)
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let kinds: Vec<Kind> = match args.only.as_deref() {
        Some("haproxy") => vec![Kind::Haproxy],
        Some("dynia") => vec![Kind::Dynia],
        _ => vec![Kind::Haproxy, Kind::Dynia],
    };
    let wrk_bin = procs::which(&args.wrk)
        .with_context(|| format!("`{}` not found; apt-get install -y wrk", args.wrk))?;
    let haproxy_bin = procs::which(&args.haproxy)
        .with_context(|| format!("`{}` not found; apt-get install -y haproxy", args.haproxy))?;
    let openssl_bin =
        procs::which("openssl").context("`openssl` not found; apt-get install -y openssl")?;
    let dynia_bin = crate::dynia_path(args.dynia.as_deref());
    if kinds.contains(&Kind::Dynia) && !dynia_bin.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release --bin dynia`, or pass --dynia PATH",
            dynia_bin.display()
        );
    }
    let self_exe = std::env::current_exe().context("current_exe")?;

    let cpus = procs::allowed_cpus();
    let pin = if args.no_pin || procs::which("taskset").is_none() || cpus.len() < 2 {
        Pinning {
            proxy: None,
            wrk: None,
            upstream: None,
        }
    } else {
        Pinning {
            proxy: Some(cpus[0]),
            wrk: Some(cpus[1]),
            upstream: Some(*cpus.get(2).unwrap_or(&cpus[1])),
        }
    };

    let tmp = TmpDir {
        path: std::env::temp_dir().join(format!(
            "dynia-bench-https-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )),
        keep: args.keep_tmp,
    };
    std::fs::create_dir_all(&tmp.path)?;

    // The certificate, shared by both proxies.
    let cert = make_cert(&openssl_bin, &tmp.path, args.rsa)?;

    let ip = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    let member_ips: Vec<IpAddr> = (2..=3).map(|d| IpAddr::V4(ip(d))).collect();
    let web_port = crate::probe::free_port(&member_ips, &[])?;
    let lo = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let mut taken = vec![web_port];
    let mut next_local = || -> Result<SocketAddr> {
        let p = crate::probe::free_port(&lo, &taken)?;
        taken.push(p);
        Ok(SocketAddr::new(lo[0], p))
    };
    let haproxy_listen = next_local()?;
    let dynia_listen = next_local()?;
    let dynia_admin = next_local()?;

    let members: Vec<BenchMember> = ["bench-one", "bench-two"]
        .iter()
        .zip(2u8..)
        .map(|(id, d)| BenchMember {
            id: id.to_string(),
            ip: ip(d),
        })
        .collect();
    let web = BenchService {
        name: "web".into(),
        host: HOST.into(),
        port: web_port,
    };

    println!("dynia vs HAProxy over HTTPS (issue 5)");
    println!(
        "machine: nproc={} ({}), {}",
        cpus.len(),
        crate::cpu_model(),
        pin.describe()
    );
    println!("load average at start: {}", crate::loadavg());
    println!(
        "haproxy: {}",
        crate::tool_version(&haproxy_bin, "-v", &tmp.path)
    );
    println!(
        "openssl: {}",
        crate::tool_version(&openssl_bin, "version", &tmp.path)
    );
    println!(
        "certificate: {} self-signed, SAN DNS:{HOST} (openssl req -x509)",
        if args.rsa { "RSA-2048" } else { "ECDSA P-256" }
    );
    println!(
        "keep-alive: wrk -t1 -c{} -d{}s --latency -H 'Host: {HOST}' https://…/",
        args.connections,
        args.duration.as_secs()
    );
    println!(
        "handshakes: rustls client, resumption disabled, {HS_CLIENTS} concurrent connections, \
         one GET per connection (Connection: close), {}s",
        args.duration.as_secs()
    );
    println!(
        "{} round(s) alternating, warm-up {}s{}",
        args.rounds,
        args.warmup.as_secs(),
        if args.smoke { " [smoke]" } else { "" }
    );
    println!();

    // Upstreams.
    let mut cmd = crate::pinned(pin.upstream, &self_exe);
    cmd.arg("upstream");
    for m in &members {
        cmd.arg("--listen")
            .arg(format!("{}:{}={}", m.ip, web_port, m.id));
    }
    let mut upstreams = Proc::spawn("upstreams", cmd, &tmp.path.join("upstreams.log"))?;
    for m in &members {
        let addr = SocketAddr::new(IpAddr::V4(m.ip), web_port);
        crate::probe::wait_until(
            &format!("upstream {}", m.id),
            Duration::from_secs(10),
            || upstreams.ensure_running(),
            || Ok(crate::probe::get(addr, HOST, "/dynia-health")?.0 == 200),
        )?;
    }

    let client = Client::new()?;

    // The proxies.
    let mut targets: Vec<Target> = Vec::new();
    for &kind in &kinds {
        let t = match kind {
            Kind::Haproxy => {
                let cfg = tmp.path.join("haproxy.cfg");
                std::fs::write(
                    &cfg,
                    haproxy_https_cfg(haproxy_listen, &members, &web, &cert.combined)?,
                )?;
                crate::check_haproxy_cfg(&haproxy_bin, &cfg, &tmp.path)?;
                let mut cmd = crate::pinned(pin.proxy, &haproxy_bin);
                cmd.arg("-db").arg("-f").arg(&cfg);
                let p = Proc::spawn("haproxy", cmd, &tmp.path.join("haproxy.log"))?;
                start(kind, p, haproxy_listen, None, &members, &client)?
            }
            Kind::Dynia | Kind::DyniaLog => {
                let dir = tmp.path.join("dynia");
                let files = configs::dynia_files(
                    &dir,
                    dynia_listen,
                    dynia_admin,
                    crate::free_udp_port(ip(2))?,
                    &members,
                    std::slice::from_ref(&web),
                )?;
                add_certificate(&files.node_file, dynia_listen, &cert.cert, &cert.key)?;
                let mut cmd = crate::pinned(pin.proxy, &dynia_bin);
                cmd.arg("run").arg("-c").arg(&files.node_file);
                let p = Proc::spawn("dynia", cmd, &tmp.path.join("dynia.log"))?;
                start(kind, p, dynia_listen, Some(dynia_admin), &members, &client)?
            }
        };
        let mut t = t;
        t.openssl_negotiated = openssl_negotiated(&openssl_bin, t.listen, &tmp.path, t.kind.name());
        eprintln!(
            "{}: openssl s_client: {}",
            t.kind.name(),
            t.openssl_negotiated
        );
        targets.push(t);
    }

    // Warm-up: both measurements, short.
    for t in &mut targets {
        let _ = keep_alive(args, &wrk_bin, &pin, t, args.warmup, &tmp.path, 0)?;
        let _ = handshakes(&client, &pin, t, args.warmup, 0)?;
    }

    for round in 1..=args.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let t = &mut targets[i];
            nap(Duration::from_millis(500))?;
            let k = keep_alive(args, &wrk_bin, &pin, t, args.duration, &tmp.path, round)?;
            eprintln!(
                "round {round} {:<8} keep-alive {:>9.0} req/s  p50 {:>8}  p99 {:>8}  errors {}  proxy cpu {:.0}%  cores {}",
                t.kind.name(),
                k.wrk.rps,
                crate::fmt_dur(k.wrk.p50),
                crate::fmt_dur(k.wrk.p99),
                k.wrk.errors(),
                k.proxy_cpu,
                crate::fmt_cores(&k.cores)
            );
            t.ka.push(k);
            nap(Duration::from_millis(500))?;
            let h = handshakes(&client, &pin, t, args.duration, round)?;
            eprintln!(
                "round {round} {:<8} handshakes {:>9.0} /s     p50 {:>8}  p99 {:>8}  errors {}  not full {}  proxy cpu {:.0}%  cores {}",
                t.kind.name(),
                h.rate,
                crate::fmt_dur(h.p50),
                crate::fmt_dur(h.p99),
                h.errors,
                h.not_full,
                h.proxy_cpu,
                crate::fmt_cores(&h.cores)
            );
            t.hs.push(h);
        }
    }

    upstreams.ensure_running()?;
    for t in &mut targets {
        t.proc.ensure_running()?;
    }
    report(args, &targets);
    // wrk socket errors, non-2xx/3xx answers, failed or resumed handshakes.
    let errors: u64 = targets
        .iter()
        .map(|t| {
            t.ka.iter().map(|r| r.wrk.errors()).sum::<u64>()
                + t.hs.iter().map(|r| r.errors + r.not_full).sum::<u64>()
        })
        .sum();
    println!("load average at end: {}", crate::loadavg());
    println!("total time: {:.0}s", started.elapsed().as_secs_f64());
    drop(targets);
    drop(upstreams);
    drop(tmp);
    // A report: missed ratios are not a failure, errors are (as for HTTP).
    if errors > 0 {
        eprintln!("dynia-benches: {errors} error(s) during the measurements (see above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// cert + key, for HAProxy's `crt`.
    combined: PathBuf,
}

/// A self-signed certificate for `bench.test`, valid 2 days.
fn make_cert(openssl: &Path, dir: &Path, rsa: bool) -> Result<CertFiles> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut cmd = Command::new(openssl);
    cmd.args(["req", "-x509", "-nodes", "-days", "2", "-newkey"]);
    if rsa {
        cmd.arg("rsa:2048");
    } else {
        cmd.args(["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    }
    cmd.arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={HOST}")])
        .args(["-addext", &format!("subjectAltName=DNS:{HOST}")]);
    let log = dir.join("openssl.log");
    let mut p = Proc::spawn("openssl req", cmd, &log)?;
    let st = p.wait_for(Duration::from_secs(30))?;
    if !st.success() || !cert.is_file() || !key.is_file() {
        bail!("openssl req failed:\n{}", procs::tail(&log, 20));
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let combined = dir.join("combined.pem");
    let mut both = std::fs::read_to_string(&cert)?;
    both.push_str(&std::fs::read_to_string(&key)?);
    std::fs::write(&combined, both)?;
    std::fs::set_permissions(
        &combined,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(CertFiles {
        cert,
        key,
        combined,
    })
}

/// The HTTP benchmark's HAProxy configuration, terminating TLS on the bind.
fn haproxy_https_cfg(
    listen: SocketAddr,
    members: &[BenchMember],
    svc: &BenchService,
    combined: &Path,
) -> Result<String> {
    let plain = configs::haproxy_cfg(listen, members, svc);
    let bind = format!("    bind {listen}\n");
    let proto = "X-Forwarded-Proto http\n";
    if !plain.contains(&bind) || !plain.contains(proto) {
        bail!("configs::haproxy_cfg changed shape; update https.rs");
    }
    Ok(plain
        .replace(
            &bind,
            &format!(
                "    bind {listen} ssl crt {} alpn h2,http/1.1 ciphersuites {TLS13_SUITES} curves {CURVES}\n",
                combined.display()
            ),
        )
        .replace(proto, "X-Forwarded-Proto https\n"))
}

/// Puts the certificate on the node file's only listener.
fn add_certificate(node_file: &Path, listen: SocketAddr, cert: &Path, key: &Path) -> Result<()> {
    let text = std::fs::read_to_string(node_file)?;
    let bind = format!("bind = \"{listen}\"\n");
    if !text.contains(&bind) {
        bail!("configs::dynia_files changed shape; update https.rs");
    }
    let text = text.replace(
        &bind,
        &format!(
            "{bind}[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(node_file, text)?;
    Ok(())
}

/// Waits until every member answered through the proxy over HTTPS.
fn start(
    kind: Kind,
    mut proc: Proc,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    members: &[BenchMember],
    client: &Client,
) -> Result<Target> {
    let name = proc.name.clone();
    if let Some(admin) = admin {
        crate::probe::wait_until(
            &format!("{name} admin listener {admin}"),
            Duration::from_secs(20),
            || proc.ensure_running(),
            || Ok(crate::probe::get(admin, "localhost", "/metrics")?.0 == 200),
        )?;
    }
    let want: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let mut seen: Vec<String> = Vec::new();
    let mut last = String::new();
    let mut negotiated = String::new();
    let took = crate::probe::wait_until(
        &format!("{name} on https://{listen} (every member answering through it)"),
        Duration::from_secs(30),
        || proc.ensure_running(),
        || {
            let a = client.get(listen, Duration::from_secs(2))?;
            last = format!("{} {}", a.status, a.body.trim());
            negotiated = a.negotiated.clone();
            if a.status == 200 && !seen.contains(&a.body.trim().to_string()) {
                seen.push(a.body.trim().to_string());
            }
            Ok(want.iter().all(|id| seen.iter().any(|s| s == id)))
        },
    )
    .with_context(|| format!("last answer: {last}; seen: {seen:?}"))?;
    eprintln!(
        "{name}: every member answers through https://{listen} after {took:.1?}; {negotiated}"
    );
    Ok(Target {
        kind,
        proc,
        listen,
        admin,
        ka: Vec::new(),
        hs: Vec::new(),
        negotiated,
        openssl_negotiated: String::new(),
    })
}

/// `openssl s_client -brief` once (stdin is /dev/null, so it exits after the
/// handshake): protocol, suite, key exchange and signature an OpenSSL client
/// with default settings, as wrk uses, gets.
fn openssl_negotiated(openssl: &Path, listen: SocketAddr, tmp: &Path, name: &str) -> String {
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-brief", "-servername", HOST, "-connect"])
        .arg(listen.to_string());
    let log = tmp.join(format!("s_client-{name}.log"));
    let Ok(mut p) = Proc::spawn("openssl s_client", cmd, &log) else {
        return "?".into();
    };
    if p.wait_for(Duration::from_secs(10)).is_err() {
        p.stop();
        return "? (openssl s_client timed out)".into();
    }
    let text = procs::tail(&log, 40);
    let pick = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{}, {}, key exchange {}, signature {} {}",
        pick("Protocol version:"),
        pick("Ciphersuite:"),
        pick("Server Temp Key:"),
        pick("Signature type:"),
        pick("Hash used:")
    )
}

/// `dynia_tls_handshakes_total{result="success"}` from the admin listener.
fn dynia_handshakes(admin: Option<SocketAddr>) -> Option<u64> {
    let (status, body) = crate::probe::get(admin?, "localhost", "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|l| {
        l.strip_prefix("dynia_tls_handshakes_total{result=\"success\"}")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    })
}

fn keep_alive(
    args: &BenchArgs,
    wrk_bin: &Path,
    pin: &Pinning,
    t: &mut Target,
    duration: Duration,
    tmp: &Path,
    round: u32,
) -> Result<KaRun> {
    t.proc.ensure_running()?;
    let pid = t.proc.pid();
    let mut cmd = crate::pinned(pin.wrk, wrk_bin);
    cmd.arg("-t1")
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Host: {HOST}"))
        .arg(format!("https://{}/", t.listen));
    let log = tmp.join(format!("wrk-https-{}-{round}.log", t.kind.name()));
    let hs0 = dynia_handshakes(t.admin);
    let cpu0 = procs::cpu_time(pid);
    let cores0 = procs::cpu_jiffies();
    let t0 = Instant::now();
    let mut w = Proc::spawn("wrk", cmd, &log)?;
    let deadline = duration + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = w.exited() {
            break st;
        }
        if t0.elapsed() > deadline {
            w.stop();
            bail!(
                "wrk still running after {deadline:?}; see {}",
                log.display()
            );
        }
        if let Err(e) = t.proc.ensure_running() {
            w.stop();
            return Err(e.context(format!("{} died under load", t.kind.name())));
        }
        nap(Duration::from_millis(100))?;
    };
    let wall = t0.elapsed().as_secs_f64();
    let proxy_cpu = cpu_pct(cpu0, procs::cpu_time(pid), wall);
    let cores = procs::cpu_busy(&cores0, &procs::cpu_jiffies());
    let hs1 = dynia_handshakes(t.admin);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}):\n{out}");
    }
    Ok(KaRun {
        round,
        wrk: wrk::parse(&out)?,
        proxy_cpu,
        cores,
        tls_handshakes: hs0.zip(hs1).map(|(a, b)| b.saturating_sub(a)),
    })
}

fn cpu_pct(a: Option<Duration>, b: Option<Duration>, wall: f64) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => 100.0 * b.saturating_sub(a).as_secs_f64() / wall,
        _ => f64::NAN,
    }
}

/// [`HS_CLIENTS`] threads, each opening one connection after another for
/// `duration`: connect, full handshake, GET, read to the end, close.
fn handshakes(
    client: &Client,
    pin: &Pinning,
    t: &mut Target,
    duration: Duration,
    round: u32,
) -> Result<HsRun> {
    t.proc.ensure_running()?;
    let pid = t.proc.pid();
    let hs0 = dynia_handshakes(t.admin);
    let cpu0 = procs::cpu_time(pid);
    let cores0 = procs::cpu_jiffies();
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let end = t0 + duration;
    let addr = t.listen;
    struct Tally {
        lat_us: Vec<u32>,
        errors: u64,
        not_full: u64,
        first_error: Option<String>,
    }
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..HS_CLIENTS)
            .map(|_| {
                let stop = &stop;
                s.spawn(move || {
                    if let Some(cpu) = pin.wrk {
                        pin_thread(cpu);
                    }
                    let mut tally = Tally {
                        lat_us: Vec::with_capacity(1 << 14),
                        errors: 0,
                        not_full: 0,
                        first_error: None,
                    };
                    // Bounded: by the deadline, and at most 10^7 connections.
                    for _ in 0..10_000_000u32 {
                        if Instant::now() >= end || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let c0 = Instant::now();
                        match client.get(addr, Duration::from_secs(5)) {
                            Ok(a) if a.status == 200 => {
                                if a.kind != Some(HandshakeKind::Full) {
                                    tally.not_full += 1;
                                }
                                tally
                                    .lat_us
                                    .push(c0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            }
                            Ok(a) => {
                                tally.errors += 1;
                                tally
                                    .first_error
                                    .get_or_insert_with(|| format!("status {}", a.status));
                            }
                            Err(e) => {
                                tally.errors += 1;
                                tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        // Watch the proxy and the user while the clients run (bounded).
        while Instant::now() < end && !procs::interrupted() {
            if t.proc.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("handshake client thread panicked"))
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let proxy_cpu = cpu_pct(cpu0, procs::cpu_time(pid), wall);
    let cores = procs::cpu_busy(&cores0, &procs::cpu_jiffies());
    t.proc
        .ensure_running()
        .with_context(|| format!("{} died under handshake load", t.kind.name()))?;
    if procs::interrupted() {
        bail!("interrupted");
    }
    let hs1 = dynia_handshakes(t.admin);
    let mut lat: Vec<u32> = tallies.iter().flat_map(|t| t.lat_us.clone()).collect();
    lat.sort_unstable();
    let q = |p: f64| {
        if lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        Duration::from_micros(lat[i] as u64)
    };
    let errors = tallies.iter().map(|t| t.errors).sum();
    if let Some(e) = tallies.iter().find_map(|t| t.first_error.clone()) {
        eprintln!(
            "{}: handshake client: {errors} error(s), first: {e}",
            t.kind.name()
        );
    }
    Ok(HsRun {
        round,
        rate: lat.len() as f64 / wall,
        conns: lat.len() as u64,
        p50: q(0.50),
        p99: q(0.99),
        errors,
        not_full: tallies.iter().map(|t| t.not_full).sum(),
        proxy_cpu,
        cores,
        tls_handshakes: hs0.zip(hs1).map(|(a, b)| b.saturating_sub(a)),
    })
}

fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A blocking HTTPS/1.1 client without session resumption.
struct Client {
    config: Arc<ClientConfig>,
    verifier: Arc<NoVerify>,
}

struct Answer {
    status: u16,
    body: String,
    kind: Option<HandshakeKind>,
    negotiated: String,
}

impl Client {
    fn new() -> Result<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(NoVerify {
            schemes: provider
                .signature_verification_algorithms
                .supported_schemes(),
            seen: Mutex::new(None),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            config: Arc::new(config),
            verifier,
        })
    }

    /// One connection, one `GET /`, read to the end.
    fn get(&self, addr: SocketAddr, timeout: Duration) -> Result<Answer> {
        assert!(addr.ip().is_loopback(), "traffic only to 127.0.0.0/8");
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let name = ServerName::try_from(HOST)?.to_owned();
        let conn = rustls::ClientConnection::new(self.config.clone(), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nUser-Agent: dynia-benches\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        // Bounded: at most 64 KiB, each read bounded by the timeout.
        while buf.len() < 1 << 16 {
            match tls.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // Closed without close_notify: the answer is complete anyway.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
                Err(e) => return Err(e.into()),
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP response from {addr}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        let c = &tls.conn;
        let negotiated = format!(
            "{:?}, {:?}, {}, signature {}",
            c.protocol_version(),
            c.negotiated_cipher_suite().map(|s| s.suite()),
            c.negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_else(|| "?".into()),
            self.verifier
                .seen
                .lock()
                .ok()
                .and_then(|s| *s)
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "?".into())
        );
        Ok(Answer {
            status,
            body,
            kind: c.handshake_kind(),
            negotiated,
        })
    }
}

/// Accepts any certificate and signature (load generator), and remembers the
/// signature scheme the server used.
#[derive(Debug)]
struct NoVerify {
    schemes: Vec<SignatureScheme>,
    seen: Mutex<Option<SignatureScheme>>,
}

impl NoVerify {
    fn saw(&self, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(d.scheme);
        }
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.saw(dss)
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.saw(dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len().saturating_sub(1) / 2).cloned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

fn opt(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn report(args: &BenchArgs, targets: &[Target]) {
    let fd = crate::fmt_dur;
    println!();
    println!("negotiated, handshake client (rustls):");
    for t in targets {
        println!("  {:<8} {}", t.kind.name(), t.negotiated);
    }
    println!("negotiated, openssl s_client (OpenSSL defaults, as wrk):");
    for t in targets {
        println!("  {:<8} {}", t.kind.name(), t.openssl_negotiated);
    }
    println!();
    println!(
        "median round of {} ({} s each): keep-alive = wrk {} connections; handshakes = {HS_CLIENTS} clients, new full TLS handshake per request",
        args.rounds,
        args.duration.as_secs(),
        args.connections
    );
    println!(
        "{:<8} {:>11} {:>8} {:>8} {:>6} {:>10} | {:>12} {:>8} {:>8} {:>6} {:>10} {:>7}",
        "proxy",
        "KA req/s",
        "p50",
        "p99",
        "CPU",
        "req/CPU-s",
        "handshakes/s",
        "p50",
        "p99",
        "CPU",
        "hs/CPU-s",
        "errors"
    );
    let mut med: Vec<(Kind, KaRun, HsRun)> = Vec::new();
    for t in targets {
        let (Some(k), Some(h)) = (
            median_by(&t.ka, |r| r.wrk.rps),
            median_by(&t.hs, |r| r.rate),
        ) else {
            continue;
        };
        let errors: u64 = t.ka.iter().map(|r| r.wrk.errors()).sum::<u64>()
            + t.hs.iter().map(|r| r.errors + r.not_full).sum::<u64>();
        println!(
            "{:<8} {:>11.0} {:>8} {:>8} {:>5.0}% {:>10.0} | {:>12.0} {:>8} {:>8} {:>5.0}% {:>10.0} {:>7}",
            t.kind.name(),
            k.wrk.rps,
            fd(k.wrk.p50),
            fd(k.wrk.p99),
            k.proxy_cpu,
            per_cpu(k.wrk.rps, k.proxy_cpu),
            h.rate,
            fd(h.p50),
            fd(h.p99),
            h.proxy_cpu,
            per_cpu(h.rate, h.proxy_cpu),
            if errors > 0 {
                format!("{errors} ERR")
            } else {
                "0".into()
            }
        );
        med.push((t.kind, k, h));
    }
    println!();
    println!("every round:");
    for t in targets {
        for k in &t.ka {
            println!(
                "  round {} {:<8} keep-alive {:>9.0} req/s  p50 {:>8}  p99 {:>8}  {} requests  socket errors {}  non-2xx/3xx {}  proxy cpu {:.0}%  TLS handshakes (dynia metric) {}  cores {}",
                k.round,
                t.kind.name(),
                k.wrk.rps,
                fd(k.wrk.p50),
                fd(k.wrk.p99),
                k.wrk.requests,
                k.wrk.socket_errors,
                k.wrk.bad_status,
                k.proxy_cpu,
                opt(k.tls_handshakes),
                crate::fmt_cores(&k.cores)
            );
        }
        for h in &t.hs {
            println!(
                "  round {} {:<8} handshakes {:>9.0} /s     p50 {:>8}  p99 {:>8}  {} connections  errors {}  not full {}  proxy cpu {:.0}%  TLS handshakes (dynia metric) {}  cores {}",
                h.round,
                t.kind.name(),
                h.rate,
                fd(h.p50),
                fd(h.p99),
                h.conns,
                h.errors,
                h.not_full,
                h.proxy_cpu,
                opt(h.tls_handshakes),
                crate::fmt_cores(&h.cores)
            );
        }
    }
    println!();
    let get = |k: Kind| med.iter().find(|(kind, _, _)| *kind == k);
    let (Some((_, hk, hh)), Some((_, dk, dh))) = (get(Kind::Haproxy), get(Kind::Dynia)) else {
        println!("ratios: n/a (only one proxy ran)");
        return;
    };
    if dh.proxy_cpu < 90.0 || hh.proxy_cpu < 90.0 {
        println!(
            "note: a proxy used < 90% of its core during the handshake runs: the client \
             (same core as wrk and the upstreams) or neighbours limited the rate; \
             compare handshakes per CPU-second"
        );
    }
    println!("dynia/haproxy (median rounds):");
    println!(
        "  keep-alive requests/s   = {:.3}   p99 = {:.3}   per CPU-second = {:.3}",
        dk.wrk.rps / hk.wrk.rps,
        dk.wrk.p99.as_secs_f64() / hk.wrk.p99.as_secs_f64(),
        per_cpu(dk.wrk.rps, dk.proxy_cpu) / per_cpu(hk.wrk.rps, hk.proxy_cpu)
    );
    println!(
        "  full handshakes/s       = {:.3}   p99 = {:.3}   per CPU-second = {:.3}",
        dh.rate / hh.rate,
        dh.p99.as_secs_f64() / hh.p99.as_secs_f64(),
        per_cpu(dh.rate, dh.proxy_cpu) / per_cpu(hh.rate, hh.proxy_cpu)
    );
    // Within each round (back to back, same neighbours).
    let (Some(h), Some(d)) = (
        targets.iter().find(|t| t.kind == Kind::Haproxy),
        targets.iter().find(|t| t.kind == Kind::Dynia),
    ) else {
        return;
    };
    let mut ka = Vec::new();
    let mut hs = Vec::new();
    for (hr, dr) in h.ka.iter().zip(&d.ka) {
        ka.push(dr.wrk.rps / hr.wrk.rps);
    }
    for (hr, dr) in h.hs.iter().zip(&d.hs) {
        hs.push(dr.rate / hr.rate);
    }
    let each = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("dynia/haproxy within each round:");
    println!(
        "  keep-alive requests/s   [{}]  median {:.3}",
        each(&ka),
        median(ka.clone())
    );
    println!(
        "  full handshakes/s       [{}]  median {:.3}",
        each(&hs),
        median(hs.clone())
    );
    if let Some(bad) =
        d.hs.iter()
            .find(|r| r.tls_handshakes.is_some_and(|n| n < r.conns))
    {
        println!(
            "WARNING: round {}: dynia counted {} handshakes for {} connections",
            bad.round,
            opt(bad.tls_handshakes),
            bad.conns
        );
    }
}
