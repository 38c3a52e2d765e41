//! Split brain with the DigitalOcean driver must not ping-pong the Reserved IP.
//!
//! Three `dynia run` nodes on 127.0.0.2-4 and the API simulator on 127.0.0.1,
//! all inside one network namespace this test creates, so iptables can cut
//! the election traffic of the master while every node still reaches the
//! API (as droplets in a split VPC still reach DigitalOcean's API). The
//! isolated master must find the IP on a live member through the API and
//! step back instead of claiming it again. Needs root; elsewhere it skips.

#[allow(unused_imports)]
mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use dynia_vrrp::dosim::DoSim;
use support::netns::{in_netns, root_or_skip};
use support::*;

const TOKEN_DO: &str = "dop_v1_pingpong_simulated_token";
const IDS: [&str; 3] = ["quiet-heron", "rapid-otter", "solid-bison"];
const DROPLETS: [u64; 3] = [501, 502, 503];

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("dynia-{}-pp", std::process::id());
        // A leftover from a crashed run with the same pid, if any (usually
        // none, so its "cannot remove" complaint is not shown).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn iptables(args: &[&str]) {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .expect("iptables (CI installs it)");
    assert!(
        out.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops election datagrams between `a` and every other node, both ways.
fn cut(a: &str, others: &[&str], port: u16, add: bool) {
    let op = if add { "-A" } else { "-D" };
    let p = port.to_string();
    for o in others {
        for (src, dst) in [(a, *o), (*o, a)] {
            iptables(&[
                op, "INPUT", "-p", "udp", "-s", src, "-d", dst, "--dport", &p, "-j", "DROP",
            ]);
        }
    }
}

#[test]
fn isolated_master_steps_back_instead_of_reclaiming() {
    if !root_or_skip("isolated_master_steps_back_instead_of_reclaiming") {
        return;
    }
    let ns = Netns::new();
    let name = ns.0.clone();
    in_netns(&name, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario());
    });
}

async fn scenario() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN_DO)
        .await
        .unwrap();
    let vip: IpAddr = "203.0.113.20".parse().unwrap();
    for (i, d) in DROPLETS.iter().enumerate() {
        sim.add_droplet(*d, format!("127.0.0.{}", i + 2).parse().unwrap());
    }
    sim.add_reserved_ip(vip, None);
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let ports = common_ports(&ips);
    let dir = TempDir::new("pingpong");
    let token_file = dir.0.join("do.token");
    write_secret(&token_file, TOKEN_DO);
    let mut cluster = String::from("generation = 1\ncluster = \"pingpong\"\n\n");
    for i in 0..3 {
        cluster.push_str(&format!(
            "[[member]]\nid = \"{}\"\nprivate_ip = \"{}\"\npriority = {}\ndroplet_id = {}\n\n",
            IDS[i],
            ips[i],
            150 - 10 * i,
            DROPLETS[i]
        ));
    }
    let url = sim.url();
    let extra = format!(
        "[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"{vip}\"\ntoken_file = \"{}\"\n\
         api_url = \"{url}\"\nmetadata_url = \"{url}\"\n",
        token_file.display()
    );
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|i| cluster_node("pingpong", IDS[i], ips[i], &cluster, ports, &extra))
        .collect();
    let mut daemons = Vec::new();
    for n in &nodes {
        daemons.push(Daemon::start(&n.files).await);
    }
    let admin = |i: usize| nodes[i].files.admin_addr;
    let wait = Duration::from_secs(20);
    wait_until(wait, "node 0 master holding the IP", || async {
        role(admin(0)).await == "master" && sim.holder(vip) == Some(DROPLETS[0])
    })
    .await;
    let assigns = || {
        sim.api_calls()
            .into_iter()
            .filter(|c| c.is_action_post() && c.status < 300)
            .count()
    };
    assert_eq!(assigns(), 1);

    // Split: node 0 hears nobody and nobody hears node 0; all still reach the API.
    cut(ips[0], &ips[1..], ports.2, true);
    wait_until(wait, "node 1 to take over", || async {
        role(admin(1)).await == "master" && sim.holder(vip) == Some(DROPLETS[1])
    })
    .await;
    // Node 0's reconcile finds the IP on a live member and steps back.
    wait_until(wait, "the isolated master to step back", || async {
        role(admin(0)).await == "backup"
    })
    .await;
    assert!(daemons[0]
        .log_text()
        .contains("stepping back instead of re-claiming"));
    // And stays out: no further assign for a while (well past the reconcile period).
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(7) {
        assert_eq!(assigns(), 2, "the Reserved IP ping-pongs during the split");
        assert_eq!(sim.holder(vip), Some(DROPLETS[1]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Heal: node 0 hears node 1 again and, with the higher priority, takes the IP back once.
    cut(ips[0], &ips[1..], ports.2, false);
    wait_until(wait, "one master after heal", || async {
        role(admin(0)).await == "master"
            && role(admin(1)).await == "backup"
            && sim.holder(vip) == Some(DROPLETS[0])
    })
    .await;
    let settled = assigns();
    assert_eq!(
        settled, 3,
        "after heal: one assign back to the highest priority"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        assigns(),
        settled,
        "assigns continue after the cluster settled"
    );
    let logs: String = daemons.iter().map(|d| d.log_text()).collect();
    assert!(!logs.contains(TOKEN_DO));
}
