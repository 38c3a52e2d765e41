//! The `dynia` daemon as an operator runs it: real processes, real files,
//! real signals, members on 127.0.0.x.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynia_testkit::daemon::*;
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::{get, Client};

const WAIT: Duration = Duration::from_secs(15);

/// Three demo members on 127.0.0.2-4, all on one port (a service's port is
/// the same on every member's private IP).
async fn members3() -> (Vec<DemoUpstream>, u16) {
    for _ in 0..20 {
        let port = free_port("127.0.0.2");
        let mut ups = Vec::new();
        for (i, id) in ["alpha-one", "brave-two", "calm-three"].iter().enumerate() {
            let addr = format!("127.0.0.{}:{port}", i + 2).parse().unwrap();
            match DemoUpstream::start(addr, id).await {
                Ok(u) => ups.push(u),
                Err(_) => break,
            }
        }
        if ups.len() == 3 {
            return (ups, port);
        }
    }
    panic!("no common free port on 127.0.0.2-4");
}

fn specs() -> Vec<MemberSpec> {
    vec![
        member("alpha-one", "127.0.0.2"),
        member("brave-two", "127.0.0.3"),
        member("calm-three", "127.0.0.4"),
    ]
}

#[tokio::test]
async fn status_json_and_metrics_follow_member_health() {
    let (ups, port) = members3().await;
    let files = NodeFiles::new(
        "health",
        "alpha-one",
        &cluster_doc(7, &specs(), port, ""),
        "",
    );
    let _d = DaemonProcess::start(&files).await;
    let admin = files.admin_addr;
    for id in ["alpha-one", "brave-two", "calm-three"] {
        eventually_async(WAIT, || async move { health(admin, id).await == "up" })
            .await
            .expect("members UP");
    }
    let s = status(admin).await;
    assert_eq!(s["node"], "alpha-one");
    assert_eq!(s["cluster"], "testing");
    assert_eq!(s["generation"], 7);
    assert_eq!(s["config_hash"].as_str().unwrap().len(), 64);
    assert_eq!(s["members"].as_array().unwrap().len(), 3);
    assert_eq!(s["services"][0]["name"], "web");
    assert_eq!(s["services"][0]["port"], port);
    // The pool is every member, this node included (the seeds' first lesson).
    assert_eq!(s["services"][0]["members"].as_array().unwrap().len(), 3);

    ups[1].set_health(500);
    eventually_async(WAIT, || async move {
        health(admin, "brave-two").await == "down"
    })
    .await
    .expect("brave-two DOWN in /status.json");
    let m = metrics(admin).await;
    assert!(
        m.contains("dynia_upstream_up{member=\"brave-two\",service=\"web\"} 0"),
        "{m}"
    );
    assert!(m.contains("dynia_upstream_up{member=\"alpha-one\",service=\"web\"} 1"));
    let mut c = Client::connect(files.proxy_addr).await.unwrap();
    for _ in 0..9 {
        let a = c.get(HOST, "/").await.unwrap();
        assert_eq!(a.status, 200);
        assert_ne!(a.member(), Some("brave-two"));
    }
    ups[1].set_health(200);
    eventually_async(
        WAIT,
        || async move { health(admin, "brave-two").await == "up" },
    )
    .await
    .expect("brave-two UP again");
}

#[tokio::test]
async fn promtool_accepts_metrics() {
    let (_ups, port) = members3().await;
    let files = NodeFiles::new(
        "promtool",
        "alpha-one",
        &cluster_doc(1, &specs(), port, ""),
        "",
    );
    let _d = DaemonProcess::start(&files).await;
    // Traffic of several codes so every family has samples.
    let _ = get(files.proxy_addr, HOST, "/").await.unwrap();
    let _ = get(files.proxy_addr, "unknown.example.org", "/")
        .await
        .unwrap();
    let text = metrics(files.admin_addr).await;
    for family in [
        "dynia_requests_total",
        "dynia_request_duration_seconds_bucket",
        "dynia_upstream_up",
        "dynia_health_checks_total",
        "dynia_connections_active",
        "dynia_config_generation",
        "dynia_config_reloads_total",
        "dynia_build_info",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    let Some(promtool) = which("promtool") else {
        panic!("promtool not installed: apt-get install prometheus (CI installs it)");
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request() {
    let (_ups, port) = members3().await;
    let all = specs();
    let two = vec![all[0].clone(), all[1].clone()];
    let files = NodeFiles::new("reloads", "alpha-one", &cluster_doc(1, &all, port, ""), "");
    let d = DaemonProcess::start(&files).await;
    let proxy = files.proxy_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut c = Client::connect(proxy).await.unwrap();
            // Bounded: at most 200k requests per client, and stopped by the test.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(HOST, "/").await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failures.push(format!("status {}", a.status)),
                    Err(e) => {
                        failures.push(e);
                        c = Client::connect(proxy).await.unwrap();
                    }
                }
            }
            failures
        }));
    }
    for i in 0..20u64 {
        let members = if i % 2 == 0 { &two } else { &all };
        files.write_cluster(&cluster_doc(2 + i, members, port, ""));
        let before = ok.load(Ordering::Relaxed);
        if i % 2 == 0 {
            let out = files.dynia(&["reload"]);
            assert!(
                out.status.success(),
                "reload {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            d.signal(libc::SIGHUP);
            let admin = files.admin_addr;
            let want = 2 + i;
            eventually_async(
                WAIT,
                || async move { status(admin).await["generation"] == want },
            )
            .await
            .expect("SIGHUP reload applied");
        }
        // Let traffic flow on each configuration before the next swap.
        eventually_async(WAIT, || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) >= before + 20 }
        })
        .await
        .expect("requests served after reload");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 400);
    let s = status(files.admin_addr).await;
    assert_eq!(s["generation"], 21);
    assert_eq!(s["services"][0]["members"].as_array().unwrap().len(), 3);
    let m = metrics(files.admin_addr).await;
    assert!(
        m.contains("dynia_config_reloads_total{result=\"success\"} 20"),
        "{m}"
    );
}

#[tokio::test]
async fn invalid_reload_changes_nothing_and_says_where() {
    let (_ups, port) = members3().await;
    let files = NodeFiles::new(
        "badreload",
        "alpha-one",
        &cluster_doc(3, &specs(), port, ""),
        "",
    );
    let d = DaemonProcess::start(&files).await;
    let good_hash = status(files.admin_addr).await["config_hash"].clone();
    // A misspelt key on line 5.
    let bad = cluster_doc(4, &specs(), port, "").replacen(
        "[election]\n",
        "[election]\nadvert_intervall = \"1s\"\n",
        1,
    );
    assert_eq!(bad.lines().nth(4), Some("advert_intervall = \"1s\""));
    files.write_cluster(&bad);
    let out = files.dynia(&["reload"]);
    assert!(
        !out.status.success(),
        "reload of an invalid document must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:5:1:", files.cluster_file.display());
    assert!(err.contains(&want), "stderr lacks {want}:\n{err}");
    assert!(err.contains("advert_interval"), "no suggestion in:\n{err}");
    // Still serving the old configuration.
    let s = status(files.admin_addr).await;
    assert_eq!(s["generation"], 3);
    assert_eq!(s["config_hash"], good_hash);
    assert_eq!(get(files.proxy_addr, HOST, "/").await.unwrap().status, 200);
    // SIGHUP with the same bad file: logged and counted, daemon unharmed.
    d.signal(libc::SIGHUP);
    let admin = files.admin_addr;
    eventually_async(WAIT, || async move {
        metrics(admin)
            .await
            .contains("dynia_config_reloads_total{result=\"failure\"} 2")
    })
    .await
    .expect("failed reload counted");
    assert!(d.log_text().contains("reload refused"), "{}", d.log_text());
    assert_eq!(get(files.proxy_addr, HOST, "/").await.unwrap().status, 200);
    // A wrong token is refused and changes nothing.
    let a = dynia_testkit::web::get(files.admin_addr, "localhost", "/v1/reload")
        .await
        .unwrap();
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn check_lists_every_problem_with_file_line_column() {
    let files = NodeFiles::new(
        "check",
        "alpha-one",
        &cluster_doc(1, &specs(), 8080, ""),
        "",
    );
    let out = files.dynia(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: node alpha-one"));
    let bad = cluster_doc(1, &specs(), 8080, "")
        .replace("priority = 149", "priority = 0")
        .replace("port = 8080", "port = 0");
    files.write_cluster(&bad);
    let out = files.dynia(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let prefix = files.cluster_file.display().to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 2, "both problems, each located:\n{err}");
    for l in &lines {
        let rest = &l[prefix.len()..];
        let mut parts = rest.splitn(4, ':');
        assert_eq!(parts.next(), Some(""));
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{l}");
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{l}");
    }
}

#[tokio::test]
async fn sigterm_refuses_new_connections_finishes_inflight_request_then_exits_zero() {
    let (_ups, port) = members3().await;
    let files = NodeFiles::new(
        "sigterm",
        "alpha-one",
        &cluster_doc(1, &specs(), port, ""),
        "",
    );
    let mut d = DaemonProcess::start(&files).await;
    let proxy = files.proxy_addr;
    let admin = files.admin_addr;
    for id in ["alpha-one", "brave-two", "calm-three"] {
        eventually_async(WAIT, || async move { health(admin, id).await == "up" })
            .await
            .expect("members UP");
    }
    // Long enough to outlast the election's handover wait (at most 5 s)
    // that precedes closing the listeners.
    let slow = tokio::spawn(async move { get(proxy, HOST, "/slow/9000").await });
    eventually_async(WAIT, || async move {
        status(admin).await["services"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["inflight"] == 1)
    })
    .await
    .expect("slow request in flight");
    d.signal(libc::SIGTERM);
    // During the grace period: new connections refused, the request runs on.
    eventually_async(WAIT, || async move {
        tokio::net::TcpStream::connect(proxy).await.is_err()
    })
    .await
    .expect("new connections refused");
    assert!(
        !slow.is_finished(),
        "the listener closed only after the in-flight request ended"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon exited before its request in flight finished"
    );
    let a = slow.await.unwrap().unwrap();
    assert_eq!(a.status, 200, "in-flight request cut by SIGTERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// `/status.json` over an already open connection (`c`), for when the
/// daemon cannot accept new ones.
async fn status_on(c: &mut Client) -> serde_json::Value {
    let a = c.get("localhost", "/status.json").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

#[tokio::test]
async fn out_of_descriptors_the_listener_does_not_serve_and_the_node_goes_fault_until_they_return()
{
    let (_ups, port) = members3().await;
    let files = NodeFiles::new(
        "nofile",
        "alpha-one",
        &cluster_doc(1, &specs(), port, ""),
        "",
    );
    let d = DaemonProcess::start(&files).await;
    let admin = files.admin_addr;
    for id in ["alpha-one", "brave-two", "calm-three"] {
        eventually_async(WAIT, || async move { health(admin, id).await == "up" })
            .await
            .expect("members UP");
    }
    eventually_async(WAIT, || async move { role(admin).await == "master" })
        .await
        .expect("master");
    // Opened before the shortage: the admin listener cannot accept either.
    let mut watch = Client::connect(admin).await.unwrap();
    let s = status_on(&mut watch).await;
    assert_eq!(s["listeners"][0]["serving"], true);
    // A handful of descriptors to spare, then clients that take them all.
    let old = set_nofile(d.pid(), open_fds(d.pid()) + 4);
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(
            tokio::net::TcpStream::connect(files.proxy_addr)
                .await
                .unwrap(),
        );
    }
    let t = std::time::Instant::now();
    let mut seen = serde_json::Value::Null;
    let mut not_serving = false;
    while t.elapsed() < WAIT {
        seen = status_on(&mut watch).await;
        if seen["listeners"][0]["serving"] == false {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_serving, "accept failing, yet serving: {seen}");
    eprintln!("not serving after {:?} of accept failures", t.elapsed());
    let mut fault = false;
    while t.elapsed() < WAIT {
        if status_on(&mut watch).await["role"] == "fault" {
            fault = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fault, "a node whose listener cannot accept stayed master");
    assert!(d.log_text().contains("accept failing"), "{}", d.log_text());
    // Members are not blamed for this node's shortage.
    let s = status_on(&mut watch).await;
    for m in s["services"][0]["members"].as_array().unwrap() {
        assert_eq!(m["health"], "up", "{m}");
    }
    // Descriptors back: serving again, and master again (highest priority).
    drop(clients);
    set_nofile(d.pid(), old);
    let t = std::time::Instant::now();
    loop {
        let s = status_on(&mut watch).await;
        if s["listeners"][0]["serving"] == true && s["role"] == "master" {
            break;
        }
        assert!(t.elapsed() < WAIT, "never serving again: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(files.proxy_addr, HOST, "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn systemd_readiness_reload_and_status_are_notified() {
    let (_ups, port) = members3().await;
    let files = NodeFiles::new(
        "notify",
        "alpha-one",
        &cluster_doc(1, &specs(), port, ""),
        "",
    );
    let sock_path = files.dir.0.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _d = DaemonProcess::start_with_env(
        &files,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .await;
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no sd_notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let msg = recv();
    assert!(msg.contains("READY=1"), "{msg}");
    // The STATUS= line: role, generation, members up (itself at least).
    let status_line = msg
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {msg}"));
    assert!(
        status_line.contains(", generation 1, ") && status_line.ends_with("/3 members up"),
        "{status_line}"
    );
    // READY means the proxy listener accepts.
    assert_eq!(get(files.proxy_addr, HOST, "/").await.unwrap().status, 200);

    // The unit's ExecReload= command: RELOADING=1 with MONOTONIC_USEC, then
    // READY=1; it exits 0 on a good configuration and 1 on a refused one.
    let exec_reload = || {
        let unit = include_str!("../deploy/systemd/dynia.service");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecReload="))
            .expect("the unit has ExecReload=");
        let line = line
            .replace("/usr/bin/dynia", bin())
            .replace("/etc/dynia/dynia.toml", files.node_file.to_str().unwrap());
        let mut words = line.split_whitespace();
        std::process::Command::new(words.next().unwrap())
            .args(words)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    // The next message with `what`; STATUS= updates may come between.
    let next_with = |what: &str| loop {
        let msg = recv();
        if msg.lines().any(|l| l == what) {
            return msg;
        }
    };
    let out = exec_reload();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reloading = next_with("RELOADING=1");
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading}"));
    let now = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    };
    let usec: u64 = usec.parse().unwrap();
    assert!(
        usec <= now && now - usec < 20_000_000,
        "{usec} vs now {now}"
    );
    next_with("READY=1");
    // A refused configuration: the command fails (so `systemctl reload`
    // does), and systemd still hears READY=1 (the old one keeps serving).
    files.write_cluster("generation = 2\nnot toml at all [\n");
    let out = exec_reload();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reload refused"),
        "{out:?}"
    );
    next_with("RELOADING=1");
    next_with("READY=1");
    assert_eq!(get(files.proxy_addr, HOST, "/").await.unwrap().status, 200);
    // WatchdogSec= (here 0.4 s): pinged, the proxy runtime and the election
    // thread both alive.
    let t = std::time::Instant::now();
    next_with("WATCHDOG=1");
    next_with("WATCHDOG=1");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn streaming_100_megabytes_keeps_memory_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_ups, port) = members3().await;
    let files = NodeFiles::new(
        "stream",
        "alpha-one",
        &cluster_doc(1, &specs(), port, ""),
        "",
    );
    let d = DaemonProcess::start(&files).await;
    let n: u64 = 100 * 1024 * 1024;
    let mut s = tokio::net::TcpStream::connect(files.proxy_addr)
        .await
        .unwrap();
    s.write_all(
        format!("GET /bytes/{n} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = s.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    assert!(total > n, "download truncated at {total}");
    let mut s = tokio::net::TcpStream::connect(files.proxy_addr)
        .await
        .unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'z'; 1024 * 1024];
    for _ in 0..100 {
        s.write_all(&chunk).await.unwrap();
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.trim_end().ends_with(&n.to_string()), "{text}");
    let peak_kb = d.proc_kb("VmHWM");
    assert!(
        peak_kb < 64 * 1024,
        "peak RSS {peak_kb} kB while streaming 2 x 100 MB"
    );
}

#[tokio::test]
async fn check_refuses_a_missing_certificate_naming_the_file() {
    let files = NodeFiles::new(
        "checkcert",
        "alpha-one",
        &cluster_doc(1, &specs(), 8080, ""),
        "",
    );
    let cert = files.dir.0.join("tls/origin.pem");
    let key = files.dir.0.join("tls/origin.key");
    let mut text = std::fs::read_to_string(&files.node_file).unwrap();
    // Another address than the plain listener's: a port picked now could be
    // the one it was given (the file is only checked, nothing binds).
    let https = format!("127.0.0.3:{}", free_port("127.0.0.3"));
    text = text.replacen(
        "[limits]",
        &format!(
            "[[listener]]\nname = \"https\"\nbind = \"{https}\"\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n[limits]",
            cert.display(),
            key.display()
        ),
        1,
    );
    std::fs::write(&files.node_file, text).unwrap();
    let out = files.dynia(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert!(err.contains("listener `https`"), "{err}");
}
