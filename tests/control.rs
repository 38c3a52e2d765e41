//! The control plane between real `dynia` processes on loopback addresses:
//! the admin API's refusals, `node add` reaching every member (seeds 000 and
//! 001 as regressions), concurrent changes, catch-up after a node was down,
//! `rollback`, `sync`, drift in `status` and on the HTML page (headless
//! Chromium), rolling `deploy` stopping on an unhealthy member, and
//! `node remove` draining a long request and handing over mastership.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use dynia_proxy::demo::DemoUpstream;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const IDS: [&str; 4] = ["north-fox", "east-owl", "south-elk", "west-yak"];

struct Rig {
    nodes: Vec<ClusterNode>,
    daemons: Vec<Option<Daemon>>,
    apps: Vec<DemoUpstream>,
    app_port: u16,
}

fn doc(generation: u64, members: &[(usize, &str)], app_port: u16) -> String {
    let mut s = format!(
        "generation = {generation}\ncluster = \"ctl\"\n\n[election]\nadvert_interval = \"200ms\"\n\n"
    );
    for (i, ip) in members {
        s.push_str(&format!(
            "[[member]]\nid = \"{}\"\nprivate_ip = \"{ip}\"\npriority = {}\n\n",
            IDS[*i],
            150 - 10 * i
        ));
    }
    s.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"{HOST}\"]\nport = {app_port}\n\
         [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\n"
    ));
    s
}

impl Rig {
    /// `total` nodes on `net.2..`; the first `in_cluster` share one document,
    /// the others each run a one-member cluster of their own (a fresh node).
    async fn new(tag: &str, net: &str, in_cluster: usize, total: usize) -> Rig {
        let ips: Vec<String> = (0..total).map(|i| format!("{net}.{}", i + 2)).collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let ports = common_ports(&refs);
        let app_port = common_ports(&refs).0;
        let mut apps = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            apps.push(
                DemoUpstream::start(format!("{ip}:{app_port}").parse().unwrap(), IDS[i])
                    .await
                    .unwrap(),
            );
        }
        let shared: Vec<(usize, &str)> = (0..in_cluster).map(|i| (i, refs[i])).collect();
        let nodes: Vec<ClusterNode> = (0..total)
            .map(|i| {
                let d = if i < in_cluster {
                    doc(1, &shared, app_port)
                } else {
                    doc(1, &[(i, refs[i])], app_port)
                };
                cluster_node(tag, IDS[i], &ips[i], &d, ports, "")
            })
            .collect();
        let mut daemons = Vec::new();
        for n in &nodes {
            daemons.push(Some(Daemon::start(&n.files).await));
        }
        Rig {
            nodes,
            daemons,
            apps,
            app_port,
        }
    }

    fn admin(&self, i: usize) -> std::net::SocketAddr {
        self.nodes[i].files.admin_addr
    }

    async fn cli(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let o = dynia_async(&self.nodes[i].files.node_file, args).await;
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    async fn generation(&self, i: usize) -> u64 {
        status(self.admin(i)).await["generation"].as_u64().unwrap()
    }

    fn logs(&self) -> String {
        self.daemons
            .iter()
            .flatten()
            .map(|d| d.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn service_members(s: &serde_json::Value, name: &str) -> Vec<String> {
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .map(|x| {
            x["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn admin_api_refuses_bad_calls_and_applies_a_document() {
    let rig = Rig::new("ctl-api", "127.0.3", 1, 1).await;
    let admin = rig.admin(0);
    let good = doc(2, &[(0, "127.0.3.2")], rig.app_port).replace("rise = 1", "rise = 2");
    let body = serde_json::json!({"base_generation": 1, "document": good}).to_string();

    for token in [None, Some("wrong-token")] {
        let (code, text) = admin_call(admin, "PUT", "/v1/cluster", token, body.as_bytes()).await;
        assert_eq!(code, 401, "{text}");
        let e: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"], "auth");
        assert!(!text.contains(TOKEN));
        let (code, _) = admin_call(admin, "GET", "/v1/cluster", token, b"").await;
        assert_eq!(code, 401);
    }
    let (code, text) = admin_call(admin, "PUT", "/v1/cluster", Some(TOKEN), b"{not json").await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("base_generation"), "{text}");
    let huge = vec![b'x'; 2 << 20];
    let (code, _) = admin_call(admin, "PUT", "/v1/cluster", Some(TOKEN), &huge).await;
    assert_eq!(code, 400);
    let bad = serde_json::json!({"base_generation": 1, "document": "generation = 2\ncluster = \"ctl\"\n[[member]]\nid = \"north-fox\"\nprivate_ip = \"127.0.3.2\"\npriority = 999\n"}).to_string();
    let (code, text) = admin_call(admin, "PUT", "/v1/cluster", Some(TOKEN), bad.as_bytes()).await;
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("document:6:"),
        "located error expected: {text}"
    );
    let stale = serde_json::json!({"base_generation": 7, "document": good}).to_string();
    let (code, text) = admin_call(admin, "PUT", "/v1/cluster", Some(TOKEN), stale.as_bytes()).await;
    assert_eq!(code, 409, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["generation"],
        1
    );
    // Nothing changed, the daemon still serves.
    assert_eq!(rig.generation(0).await, 1);
    assert!(!rig.nodes[0].files.dir.0.join("snapshots").exists());

    let (code, text) = admin_call(admin, "PUT", "/v1/cluster", Some(TOKEN), body.as_bytes()).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(rig.generation(0).await, 2);
    let snaps: Vec<_> = std::fs::read_dir(rig.nodes[0].files.dir.0.join("snapshots"))
        .unwrap()
        .collect();
    assert_eq!(snaps.len(), 1);
    let (code, text) = admin_call(admin, "GET", "/v1/snapshots/1", Some(TOKEN), b"").await;
    assert_eq!(code, 200);
    assert!(text.contains("generation = 1"), "{text}");
    // Sending the same document again is a success that changes nothing.
    let (code, text) = admin_call(admin, "PUT", "/v1/cluster", Some(TOKEN), body.as_bytes()).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"changed\": false"), "{text}");
    assert!(!rig.logs().contains(TOKEN));
}

#[tokio::test]
async fn node_add_reaches_every_member_and_concurrent_adds_conflict() {
    let rig = Rig::new("ctl-add", "127.0.4", 2, 4).await;
    // Two adds at once, from two different nodes: one wins, the other is refused.
    let (a, b) = tokio::join!(
        rig.cli(0, &["node", "add", "--ip", "127.0.4.4", "--id", IDS[2]]),
        rig.cli(1, &["node", "add", "--ip", "127.0.4.5", "--id", IDS[3]]),
    );
    let winners = [&a, &b].iter().filter(|r| r.0 == 0).count();
    assert_eq!(
        winners,
        1,
        "exactly one add must win:\nA {a:?}\nB {b:?}\n{}",
        rig.logs()
    );
    let (won, lost, new_node, lost_node) = if a.0 == 0 {
        (&a, &b, 2, 3)
    } else {
        (&b, &a, 3, 2)
    };
    assert!(
        lost.2.contains("refused") && lost.2.contains("nothing was changed"),
        "{lost:?}"
    );
    assert!(won.1.contains("done on all 3 members"), "{won:?}");
    // Every member lists all 3 members in every pool; the loser touched nothing.
    let members: Vec<usize> = vec![0, 1, new_node];
    for &i in &members {
        let admin = rig.admin(i);
        wait_until(WAIT, "3 members in every pool, all up", || async move {
            let s = status(admin).await;
            s["members"].as_array().unwrap().len() == 3
                && service_members(&s, "web").len() == 3
                && s["services"][0]["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|m| m["health"] == "up")
        })
        .await;
    }
    let s = status(rig.admin(lost_node)).await;
    assert_eq!(s["members"].as_array().unwrap().len(), 1);
    assert_eq!(s["generation"], 1);
    // Requests through any node reach all three members.
    for &i in &members {
        let mut seen = HashSet::new();
        let mut c = Client::connect(rig.nodes[i].files.proxy_addr)
            .await
            .unwrap();
        for _ in 0..30 {
            let a = c.get(HOST, "/").await.unwrap();
            assert_eq!(a.status, 200);
            seen.insert(a.member().unwrap().to_string());
        }
        let want: HashSet<String> = members.iter().map(|&m| IDS[m].to_string()).collect();
        assert_eq!(seen, want, "through node {i}");
    }
}

#[tokio::test]
async fn a_node_down_during_a_change_catches_up_and_rollback_restores() {
    let mut rig = Rig::new("ctl-down", "127.0.5", 3, 3).await;
    rig.daemons[2] = None; // killed
    let (code, out, err) = rig.cli(0, &["node", "drain", IDS[1]]).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains(IDS[2]) && out.contains("unreachable"), "{out}");
    assert!(
        err.contains("partial") && err.contains("dynia sync -c "),
        "{err}"
    );
    assert_eq!(rig.generation(0).await, 2);
    assert_eq!(rig.generation(1).await, 2);
    // It returns and catches up by itself.
    rig.daemons[2] = Some(Daemon::start(&rig.nodes[2].files).await);
    let admin = rig.admin(2);
    wait_until(WAIT, "node 2 to catch up", || async move {
        let s = status(admin).await;
        s["generation"] == 2 && s["members"][1]["state"] == "drain"
    })
    .await;
    let (code, out, err) = rig.cli(0, &["sync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("in sync"), "{out}");
    // Rollback: generation 1's content as generation 3, everywhere.
    let (code, out, err) = rig.cli(0, &["rollback"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for i in 0..3 {
        let s = status(rig.admin(i)).await;
        assert_eq!(s["generation"], 3, "node {i}");
        assert_eq!(s["members"][1]["state"], "active", "node {i}");
    }
}

fn chromium_dom(url: &str) -> Option<String> {
    let profile = TempDir::new("chromium");
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // Bounded: a Chromium that hangs is killed after 60 s (the test then fails on the empty DOM).
    let pid = out.id();
    let watchdog = std::thread::spawn(move || {
        for _ in 0..600 {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: kill(2) with signal 0 only probes whether the process still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        // SAFETY: plain kill(2) of the child we spawned.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = out.wait_with_output().ok()?;
    let _ = watchdog.join();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn deploy_rolls_health_gated_stops_on_an_unhealthy_member_and_sync_converges() {
    let rig = Rig::new("ctl-deploy", "127.0.6", 3, 3).await;
    let ips = ["127.0.6.2", "127.0.6.3", "127.0.6.4"];
    let api_port = common_ports(&ips).0;
    let mut api = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        api.push(
            DemoUpstream::start(format!("{ip}:{api_port}").parse().unwrap(), IDS[i])
                .await
                .unwrap(),
        );
    }
    api[2].set_health(500);
    let port = api_port.to_string();
    let args = [
        "deploy",
        "api",
        "--host",
        "api.example.com",
        "--port",
        &port,
        "--timeout",
        "4s",
    ];
    let mut plan = args.to_vec();
    plan.push("--plan");
    let (code, out, err) = rig.cli(0, &plan).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("+ name = \"api\""), "{out}");
    for i in 0..3 {
        assert_eq!(rig.generation(i).await, 1, "--plan changes nothing");
    }

    let (code, out, err) = rig.cli(0, &args).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("stopped at member {}", IDS[2]))
            && err.contains("dynia rollback -c")
            && err.contains("dynia deploy api"),
        "{err}"
    );
    assert!(out.contains("rolled back"), "{out}");
    for i in 0..3 {
        let s = status(rig.admin(i)).await;
        assert_eq!(s["generation"], 2, "node {i}");
        assert_eq!(
            service_members(&s, "api").len(),
            if i < 2 { 3 } else { 0 },
            "node {i}"
        );
    }
    // Drift: same generation, two documents; in status, --json and the page.
    let admin = rig.admin(0);
    wait_until(WAIT, "drift to show", || async move {
        status(admin).await["drift"] == serde_json::json!([IDS[2]])
    })
    .await;
    let (_, out, _) = rig.cli(0, &["status"]).await;
    assert!(
        out.contains("drift:") && out.contains("dynia sync"),
        "{out}"
    );
    let dom = chromium_dom(&format!("http://{admin}/status"))
        .expect("chromium must be installed (apt-get install -y chromium)");
    assert!(dom.contains("id=\"drift\""), "{dom}");
    assert!(dom.contains(&format!("drift: {}", IDS[2])), "{dom}");
    assert!(dom.contains(IDS[0]) && dom.contains("Service api"), "{dom}");

    // sync converges: this node's document everywhere.
    let (code, out, err) = rig.cli(0, &["sync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for i in 0..3 {
        let s = status(rig.admin(i)).await;
        assert_eq!(s["generation"], 3, "node {i}");
        assert_eq!(service_members(&s, "api").len(), 3, "node {i}");
    }
    wait_until(WAIT, "drift to clear", || async move {
        status(admin).await["drift"] == serde_json::json!([])
    })
    .await;
}

#[tokio::test]
async fn node_remove_drains_a_long_request_and_hands_over_mastership() {
    let rig = Rig::new("ctl-remove", "127.0.7", 3, 3).await;
    let admin0 = rig.admin(0);
    wait_until(WAIT, "node 0 master", || async move {
        role(admin0).await == "master"
    })
    .await;
    for i in 0..3 {
        let a = rig.admin(i);
        wait_until(WAIT, "all up", || async move {
            let s = status(a).await;
            s["services"][0]["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["health"] == "up")
        })
        .await;
    }
    // Long requests through node 1: round robin puts one on every member.
    let proxy = rig.nodes[1].files.proxy_addr;
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(proxy, HOST, "/slow/2500").await }))
        .collect();
    let admin1 = rig.admin(1);
    wait_until(WAIT, "a request in flight to node 0", || async move {
        status(admin1).await["services"][0]["members"][0]["inflight"] == 1
    })
    .await;
    let (code, out, err) = rig.cli(1, &["node", "remove", IDS[0]]).await;
    for s in slow {
        let a = s.await.unwrap().unwrap();
        assert_eq!(a.status, 200, "long request must complete: {a:?}");
    }
    assert_eq!(code, 0, "{out}{err}\n{}", rig.logs());
    let master = role(rig.admin(1)).await == "master" || role(rig.admin(2)).await == "master";
    assert!(master, "a remaining member is master");
    for i in 1..3 {
        let s = status(rig.admin(i)).await;
        assert_eq!(s["members"].as_array().unwrap().len(), 2, "node {i}");
        assert_eq!(service_members(&s, "web").len(), 2, "node {i}");
    }
    let before = rig.apps[0].hits();
    for i in 1..3 {
        let mut c = Client::connect(rig.nodes[i].files.proxy_addr)
            .await
            .unwrap();
        for _ in 0..10 {
            assert_eq!(c.get(HOST, "/").await.unwrap().status, 200);
        }
    }
    assert_eq!(
        rig.apps[0].hits(),
        before,
        "no node routes to the removed member"
    );
}

#[tokio::test]
async fn init_writes_a_node_that_checks_and_runs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("ctl-init");
    let node_file = dir.0.join("etc/dynia.toml");
    let state = dir.0.join("state");
    let ports = common_ports(&["127.0.8.2"]);
    let out = std::process::Command::new(BIN)
        .args(["init", "--cluster", "fresh", "--private-ip", "127.0.8.2"])
        .arg("--admin-listen")
        .arg(format!("127.0.8.2:{}", ports.1))
        .arg("--listen")
        .arg(format!("127.0.8.2:{}", ports.0))
        .arg("--state-dir")
        .arg(&state)
        .arg("-c")
        .arg(&node_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for secret in ["admin.token", "cluster.key"] {
        let meta = std::fs::metadata(dir.0.join("etc").join(secret)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{secret}");
    }
    let doc = std::fs::read_to_string(state.join("cluster.toml")).unwrap();
    assert!(doc.contains("generation = 1"), "{doc}");
    let token = std::fs::read_to_string(dir.0.join("etc/admin.token")).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(&token), "the token is never printed");
    // Again: refused, nothing overwritten.
    let again = std::process::Command::new(BIN)
        .args([
            "init",
            "--cluster",
            "fresh",
            "--private-ip",
            "127.0.8.2",
            "-c",
        ])
        .arg(&node_file)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let check = std::process::Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&node_file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[tokio::test]
async fn make_active_hands_over_without_failed_requests() {
    let rig = Rig::new("ctl-active", "127.0.9", 3, 3).await;
    let admin0 = rig.admin(0);
    wait_until(WAIT, "node 0 master", || async move {
        role(admin0).await == "master"
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let proxy = rig.nodes[0].files.proxy_addr;
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut c = Client::connect(proxy).await.unwrap();
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match c.get(HOST, "/").await {
                    Ok(a) if a.status == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    let (code, out, err) = rig.cli(0, &["node", "make-active", IDS[2]]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{} is master", IDS[2])), "{out}");
    let admin0 = rig.admin(0);
    wait_until(WAIT, "old master to step back", || async move {
        role(admin0).await == "backup"
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

#[tokio::test]
async fn node_remove_of_a_dead_member_finishes_on_the_others() {
    let mut rig = Rig::new("ctl-dead", "127.0.10", 3, 3).await;
    rig.daemons[2] = None; // the node is gone for good
    let (code, out, err) = rig.cli(0, &["node", "remove", IDS[2]]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed without it"), "{out}");
    for i in 0..2 {
        let s = status(rig.admin(i)).await;
        assert_eq!(s["members"].as_array().unwrap().len(), 2, "node {i}");
        assert_eq!(service_members(&s, "web").len(), 2, "node {i}");
    }
}
