//! Debian's `prometheus` scraping a live three-node cluster on loopback
//! (127.0.13.2-4, Reserved IP on the DigitalOcean simulator, a TLS listener
//! on one node): every query of `deploy/grafana/dynia.json` and every alert
//! rule of `deploy/prometheus/dynia.rules.yml` parses and evaluates, and
//! returns series (for a rule: every metric it reads has series), through
//! Prometheus's HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dynia_testkit::daemon::*;
use dynia_testkit::dosim::DoSim;
use dynia_testkit::eventually_async;
use dynia_testkit::tls::{Ca, KeyKind, Validity};
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::get;

const WAIT: Duration = Duration::from_secs(30);
const IDS: [&str; 3] = ["north-fox", "east-owl", "south-elk"];
const DO_TOKEN: &str = "dop_v1_simulated_token_never_logged_7f3a";
/// Metrics a query may read before any node exports them (none today: every
/// dashboard query must return series).
const PENDING: [&str; 0] = [];

/// `prometheus` as a child process; killed on drop.
struct Prom {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(dir: &Path, targets: &[SocketAddr]) -> Prom {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("deploy/prometheus/dynia.rules.yml");
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: dynia\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            list.join(", ")
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus not installed: apt-get install prometheus (CI installs it)");
    Prom { child, addr }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query: `Err` with Prometheus's error, or the result's series.
async fn query(prom: SocketAddr, q: &str) -> Result<Vec<serde_json::Value>, String> {
    let path = format!("/api/v1/query?query={}", encode(q));
    let a = get(prom, "localhost", &path).await?;
    let v: serde_json::Value = serde_json::from_str(&a.body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("dynia_") || t.starts_with("process_") || *t == "up")
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Three nodes with the election, the simulator's Reserved IP, a TLS
/// listener on node 0, and a member app on each.
struct Cluster {
    // Dropped first: the daemons stop before their files go.
    daemons: Vec<DaemonProcess>,
    nodes: Vec<ClusterNode>,
    _apps: Vec<DemoUpstream>,
}

async fn cluster(dir: &TempDir, sim: &DoSim) -> Cluster {
    let ips: Vec<String> = (2..5).map(|i| format!("127.0.13.{i}")).collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let ports = common_ports(&refs);
    let app_port = common_ports(&refs).0;
    let tls_port = common_ports(&refs).0;
    let mut apps = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let addr = format!("{ip}:{app_port}").parse().unwrap();
        apps.push(DemoUpstream::start(addr, IDS[i]).await.unwrap());
        sim.add_droplet(101 + i as u64, ip.parse().unwrap());
    }
    let vip: std::net::IpAddr = "203.0.113.10".parse().unwrap();
    sim.add_reserved_ip(vip, None);
    let token = dir.0.join("do.token");
    write_secret(&token, DO_TOKEN);
    let leaf = Ca::new("dynia test CA").issue(HOST, &[HOST], KeyKind::EcdsaPkcs8, Validity::Year);
    let (cert, key) = leaf.write(&dir.0, "site");
    let mut cluster = String::from(
        "generation = 1\ncluster = \"scraped\"\n\n[election]\nadvert_interval = \"200ms\"\n\n",
    );
    for (i, ip) in ips.iter().enumerate() {
        cluster.push_str(&format!(
            "[[member]]\nid = \"{}\"\nprivate_ip = \"{ip}\"\npriority = {}\ndroplet_id = {}\n\n",
            IDS[i],
            150 - 10 * i,
            101 + i
        ));
    }
    cluster.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"{HOST}\"]\nport = {app_port}\n\
         [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n"
    ));
    let url = sim.url();
    let mut daemons = Vec::new();
    let mut nodes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let mut extra = format!(
            "[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"{vip}\"\ntoken_file = \"{}\"\n\
             api_url = \"{url}\"\nmetadata_url = \"{url}\"\n\n",
            token.display()
        );
        if i == 0 {
            extra.push_str(&format!(
                "[[listener]]\nname = \"https\"\nbind = \"{ip}:{tls_port}\"\n\
                 [[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        let node = cluster_node("prom", IDS[i], ip, &cluster, ports, &extra);
        daemons.push(DaemonProcess::start(&node.files).await);
        nodes.push(node);
    }
    Cluster {
        daemons,
        nodes,
        _apps: apps,
    }
}

#[tokio::test]
async fn prometheus_evaluates_every_dashboard_query_and_alert_rule_with_series() {
    let dir = TempDir::new("prometheus");
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), DO_TOKEN)
        .await
        .unwrap();
    let c = cluster(&dir, &sim).await;
    assert_eq!(c.daemons.len(), 3);
    let admins: Vec<SocketAddr> = c.nodes.iter().map(|n| n.files.admin_addr).collect();
    let admin0 = admins[0];
    eventually_async(WAIT, || async move {
        status(admin0).await["reserved_ip"]["held"] == true
    })
    .await
    .expect("a master holding the Reserved IP");
    let prom = start_prometheus(&dir.0, &admins);
    let p = prom.addr;
    eventually_async(WAIT, || async move {
        query(p, "sum(up{job=\"dynia\"})")
            .await
            .ok()
            .and_then(|r| r.first().map(|s| s["value"][1] == "3"))
            .unwrap_or(false)
    })
    .await
    .expect("Prometheus to scrape the three nodes");
    // Traffic on every node, and a few seconds of samples for rate() windows.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for n in &c.nodes {
            let a = get(n.files.proxy_addr, HOST, "/").await.unwrap();
            assert_eq!(a.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_metrics: String = {
        let mut t = String::new();
        for a in &admins {
            t.push_str(&metrics(*a).await);
        }
        t
    };
    let pending = |names: &[String]| {
        names
            .iter()
            .any(|n| PENDING.contains(&n.as_str()) && !all_metrics.contains(n.as_str()))
    };

    // The dashboard: every query returns series.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/dynia.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push((
                panel["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut failures = Vec::new();
    for (title, expr) in &exprs {
        if pending(&metric_names(expr)) {
            eprintln!("skipped until the election's metrics are merged: {title}: {expr}");
            continue;
        }
        match query(p, expr).await {
            Ok(r) if !r.is_empty() => {}
            Ok(_) => failures.push(format!("{title}: no series: {expr}")),
            Err(e) => failures.push(format!("{title}: {e}: {expr}")),
        }
    }

    // The rules: loaded, evaluated without error, and every metric read has series.
    let a = get(p, "localhost", "/api/v1/rules").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let rules: Vec<serde_json::Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(rules.len(), 12, "{v}");
    for r in &rules {
        let (name, expr) = (r["name"].as_str().unwrap(), r["query"].as_str().unwrap());
        if r["health"] != "ok" {
            failures.push(format!(
                "rule {name}: health {} {}",
                r["health"], r["lastError"]
            ));
        }
        if let Err(e) = query(p, expr).await {
            failures.push(format!("rule {name}: {e}"));
        }
        for m in metric_names(expr) {
            match query(p, &format!("count({m})")).await {
                Ok(r) if !r.is_empty() => {}
                other => failures.push(format!("rule {name}: no series of {m}: {other:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(prometheus log: {})",
        failures.join("\n"),
        std::fs::read_to_string(dir.0.join("prometheus.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
