//! What an operator reads, from a real `dynia run`: log lines with their
//! journald priority, the daemon's JSON lines, and the access log switched
//! on in the node file.

use std::time::Duration;

use dynia_testkit::daemon::*;
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::{get, Client};

const WAIT: Duration = Duration::from_secs(20);

/// A node `alpha-one` whose service has a live member (127.0.0.2) and a dead
/// one (`brave-two`, 127.0.0.3, nothing listening); `log` is its `[log]`.
async fn node_with_a_dead_member(tag: &str, log: &str) -> (NodeFiles, DemoUpstream) {
    let port = free_port("127.0.0.2");
    let up = DemoUpstream::start(format!("127.0.0.2:{port}").parse().unwrap(), "alpha-one")
        .await
        .unwrap();
    let specs = [
        member("alpha-one", "127.0.0.2"),
        member("brave-two", "127.0.0.3"),
    ];
    // `[log]` follows the (empty) `[limits]` table of the node file.
    let files = NodeFiles::new(tag, "alpha-one", &cluster_doc(1, &specs, port, ""), log);
    (files, up)
}

#[tokio::test]
async fn under_journald_a_warn_line_carries_priority_4_and_access_lines_are_written() {
    let dir = TempDir::new("access");
    let access = dir.0.join("access.log");
    let log = format!(
        "\n[log]\naccess = \"haproxy\"\naccess_file = \"{}\"\n",
        access.display()
    );
    let (files, _up) = node_with_a_dead_member("journal", &log).await;
    let d = DaemonProcess::start_with_env(&files, &[("JOURNAL_STREAM", "8:12345")]).await;
    let admin = files.admin_addr;
    eventually_async(WAIT, || async move {
        health(admin, "brave-two").await == "down"
    })
    .await
    .expect("brave-two DOWN");
    let text = d.log_text();
    let warn = text
        .lines()
        .find(|l| l.contains("member health changed") && l.contains("brave-two"))
        .unwrap_or_else(|| panic!("no DOWN line:\n{text}"));
    assert!(warn.starts_with("<4>"), "WARN without priority 4: {warn}");
    assert!(
        warn.contains("WARN") && warn.contains("to=\"down\""),
        "{warn}"
    );
    let info = text.lines().find(|l| l.contains("listening")).unwrap();
    assert!(info.starts_with("<6>"), "INFO without priority 6: {info}");
    assert!(
        text.lines().all(|l| l.starts_with('<')),
        "every line has a priority:\n{text}"
    );

    let a = get(files.proxy_addr, HOST, "/hello").await.unwrap();
    assert_eq!(a.status, 200);
    let path = access.clone();
    eventually_async(WAIT, || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move { text.contains("\"GET /hello HTTP/1.1\"") }
    })
    .await
    .expect("the access-log line");
    let text = std::fs::read_to_string(&access).unwrap();
    let line = text.lines().find(|l| l.contains("/hello")).unwrap();
    assert!(line.contains(" http web/alpha-one "), "{line}");
    assert!(line.contains(" 200 "), "{line}");
    assert!(line.contains(" - - ---- "), "{line}");
}

#[tokio::test]
async fn json_format_writes_one_object_per_line() {
    let (files, _up) = node_with_a_dead_member("jsonlog", "\n[log]\nformat = \"json\"\n").await;
    let d = DaemonProcess::start(&files).await;
    let admin = files.admin_addr;
    eventually_async(WAIT, || async move {
        health(admin, "brave-two").await == "down"
    })
    .await
    .expect("brave-two DOWN");
    let text = d.log_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|v| v["time"].is_string() && v["level"].is_string()));
    let down = lines
        .iter()
        .find(|v| v["message"] == "member health changed" && v["member"] == "brave-two")
        .unwrap_or_else(|| panic!("no DOWN line:\n{text}"));
    assert_eq!(down["level"], "WARN");
    assert_eq!(down["to"], "down");
    assert_eq!(down["service"], "web");
}

#[tokio::test]
async fn status_shows_health_reasons_rates_and_election_transitions() {
    let (files, _up) = node_with_a_dead_member("statusrates", "").await;
    let _d = DaemonProcess::start(&files).await;
    let admin = files.admin_addr;
    eventually_async(WAIT, || async move {
        health(admin, "brave-two").await == "down"
    })
    .await
    .expect("brave-two DOWN");
    let mut c = Client::connect(files.proxy_addr).await.unwrap();
    for _ in 0..20 {
        assert_eq!(c.get(HOST, "/").await.unwrap().status, 200);
    }
    // The sampler's first sample is at start: figures once it is 0.5 s old.
    eventually_async(WAIT, || async move {
        let s = status(admin).await;
        s["services"][0]["members"][0]["requests_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    })
    .await
    .expect("rates for alpha-one");
    let s = status(admin).await;
    let members = s["services"][0]["members"].as_array().unwrap();
    let alpha = members.iter().find(|m| m["id"] == "alpha-one").unwrap();
    let brave = members.iter().find(|m| m["id"] == "brave-two").unwrap();
    assert_eq!(alpha["error_rate"], 0.0, "{alpha}");
    assert!(alpha["p99_ms"].as_f64().unwrap() > 0.0, "{alpha}");
    assert_eq!(alpha["inflight"], 0, "{alpha}");
    assert!(
        brave["health_reason"].as_str().unwrap().contains("refused"),
        "{brave}"
    );
    assert!(
        brave["health_changed_at"].as_str().unwrap().ends_with('Z'),
        "{brave}"
    );
    let transitions = s["transitions"].as_array().unwrap();
    let last = transitions
        .last()
        .unwrap_or_else(|| panic!("no transitions: {s}"));
    assert_eq!(last["role"], s["role"], "{s}");
    assert!(!last["reason"].as_str().unwrap().is_empty(), "{s}");

    let out = files.dynia(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // brave-two's daemon is not running: the cluster is unhealthy (exit 6),
    // after the whole view is printed.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{text}{err}");
    assert!(
        err.contains("the cluster is unhealthy: brave-two is unreachable"),
        "{err}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("service web member brave-two: down since") && l.contains("refused")
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("service web member alpha-one: up") && l.contains("req/s")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("election: ")), "{text}");
    let page = get(admin, "localhost", "/status").await.unwrap().body;
    assert!(
        page.contains("id=\"transitions\"") && page.contains("req/s"),
        "{page}"
    );
}
