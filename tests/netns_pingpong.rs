//! Split brain with the DigitalOcean driver must not ping-pong the Reserved IP.
//!
//! Four `dynia run` nodes on 127.0.0.2-5 and the API simulator on 127.0.0.1,
//! all inside one network namespace this test creates, so iptables can cut
//! the election traffic between {node 0, node 3} and {node 1, node 2} while
//! every node still reaches the API (as droplets in a split VPC still reach
//! DigitalOcean's API). Node 0, the master, must find the IP on a live member
//! through the API and stop claiming, while staying master so that node 3,
//! on its side, does not elect another master that would claim in turn; and
//! this must hold for as long as the split lasts (the test waits 40 s). When
//! the holder's droplet stops, node 0 must take the IP back; when the split
//! heals, the highest priority takes it back once. Needs root; elsewhere it
//! skips.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use dynia_testkit::daemon::*;
use dynia_testkit::dosim::DoSim;
use dynia_testkit::eventually_async;
use dynia_testkit::netns::{in_netns, root_or_skip};

const TOKEN_DO: &str = "dop_v1_pingpong_simulated_token";
const IDS: [&str; 4] = ["quiet-heron", "rapid-otter", "solid-bison", "tidy-finch"];
const DROPLETS: [u64; 4] = [501, 502, 503, 504];

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("dynia-{}-{tag}", std::process::id());
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

/// How long a split is held in the quiet phase.
const SPLIT_FOR: Duration = Duration::from_secs(40);

fn run_in_netns<F: std::future::Future<Output = ()>>(
    tag: &str,
    f: impl FnOnce() -> F + Send + 'static,
) {
    let ns = Netns::new(tag);
    let name = ns.0.clone();
    in_netns(&name, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    });
}

#[test]
fn a_split_brain_does_not_ping_pong_the_reserved_ip() {
    if !root_or_skip("a_split_brain_does_not_ping_pong_the_reserved_ip") {
        return;
    }
    run_in_netns("pp", split_quiet_heal);
}

#[test]
fn the_other_side_takes_the_ip_when_the_holders_droplet_stops() {
    if !root_or_skip("the_other_side_takes_the_ip_when_the_holders_droplet_stops") {
        return;
    }
    run_in_netns("pw", split_then_holder_stops);
}

/// Four nodes (priorities 150/140/130/120, droplets 501-504) on
/// 127.0.0.2-5 and the simulator, with node 0 master and holding the IP.
struct Split {
    sim: DoSim,
    vip: IpAddr,
    nodes: Vec<ClusterNode>,
    daemons: Vec<Option<DaemonProcess>>,
    ports: (u16, u16, u16),
    _dir: TempDir,
}

const IPS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
/// The two sides of the split.
const SIDE_B: [usize; 2] = [0, 3];
const SIDE_A: [usize; 2] = [1, 2];

impl Split {
    async fn start() -> Split {
        let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN_DO)
            .await
            .unwrap();
        let vip: IpAddr = "203.0.113.20".parse().unwrap();
        for (i, d) in DROPLETS.iter().enumerate() {
            sim.add_droplet(*d, IPS[i].parse().unwrap());
        }
        sim.add_reserved_ip(vip, None);
        let ports = common_ports(&IPS);
        let dir = TempDir::new("pingpong");
        let token_file = dir.0.join("do.token");
        write_secret(&token_file, TOKEN_DO);
        let mut cluster = String::from("generation = 1\ncluster = \"pingpong\"\n\n");
        for i in 0..IPS.len() {
            cluster.push_str(&format!(
                "[[member]]\nid = \"{}\"\nprivate_ip = \"{}\"\npriority = {}\ndroplet_id = {}\n\n",
                IDS[i],
                IPS[i],
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
        let nodes: Vec<ClusterNode> = (0..IPS.len())
            .map(|i| cluster_node("pingpong", IDS[i], IPS[i], &cluster, ports, &extra))
            .collect();
        let mut daemons = Vec::new();
        for n in &nodes {
            daemons.push(Some(DaemonProcess::start(&n.files).await));
        }
        let s = Split {
            sim,
            vip,
            nodes,
            daemons,
            ports,
            _dir: dir,
        };
        eventually_async(Duration::from_secs(20), || async {
            s.roles().await == ["master", "backup", "backup", "backup"]
                && s.holder() == Some(DROPLETS[0])
        })
        .await
        .expect("node 0 master holding the IP");
        assert_eq!(s.assigns(), 1);
        s
    }

    async fn roles(&self) -> Vec<String> {
        let mut r = Vec::new();
        for n in &self.nodes {
            r.push(role(n.files.admin_addr).await);
        }
        r
    }

    async fn held(&self, i: usize) -> bool {
        status(self.nodes[i].files.admin_addr).await["reserved_ip"]["held"] == true
    }

    fn holder(&self) -> Option<u64> {
        self.sim.holder(self.vip)
    }

    /// Successful assign actions so far.
    fn assigns(&self) -> usize {
        self.sim
            .api_calls()
            .into_iter()
            .filter(|c| c.is_action_post() && c.status < 300)
            .count()
    }

    /// Nodes of side B hear nobody of side A and the other way round; all
    /// still reach the API.
    fn cut(&self, add: bool) {
        for b in SIDE_B {
            let others: Vec<&str> = SIDE_A.iter().map(|&a| IPS[a]).collect();
            cut(IPS[b], &others, self.ports.2, add);
        }
    }

    /// The split settles: node 0 stepped back from the IP (logged) but is
    /// still master for node 3; one master on side A holds the IP. Returns
    /// that master.
    async fn settled_split(&self) -> usize {
        let wait = Duration::from_secs(30);
        let holder_node = std::cell::Cell::new(usize::MAX);
        eventually_async(wait, || async {
            let r = self.roles().await;
            let a = match (r[1].as_str(), r[2].as_str()) {
                ("master", "backup") => 1,
                ("backup", "master") => 2,
                _ => return false,
            };
            holder_node.set(a);
            r[0] == "master"
                && r[3] == "backup"
                && self.holder() == Some(DROPLETS[a])
                && !self.held(0).await
                && self.held(a).await
        })
        .await
        .expect("one master per side, side A's holding the IP");
        assert!(
            self.log(0).contains("stepping back instead of re-claiming"),
            "{}",
            self.log(0)
        );
        let a = holder_node.get();
        // One truthful view: node 0 says whom it stepped back from, and
        // `dynia status` (which reads every member) says it in words.
        let st = status(self.nodes[0].files.admin_addr).await;
        assert_eq!(st["reserved_ip"]["stepped_back_from"], IDS[a], "{st}");
        let out = self.nodes[3].files.dynia(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "split brain: {} is master but cannot hear {}",
                IDS[0], IDS[a]
            )),
            "{text}"
        );
        a
    }

    fn log(&self, i: usize) -> String {
        self.daemons[i]
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..IPS.len()).map(|i| self.log(i)).collect()
    }
}

async fn split_quiet_heal() {
    let s = Split::start().await;
    s.cut(true);
    let a = s.settled_split().await;
    // Right at the split node 0 may still count side A's new master as heard
    // for a moment and claim once more; the other side then steps back.
    let after_split = s.assigns();
    assert!(
        (2..=3).contains(&after_split),
        "{after_split} assigns to settle one split\n{}",
        s.logs()
    );
    // And nothing moves while the split lasts: no assign, the same masters
    // (node 3 never takes over from the silent-to-A node 0).
    let quiet = Instant::now();
    let want_roles: Vec<String> = (0..4)
        .map(|i| if i == 0 || i == a { "master" } else { "backup" }.to_string())
        .collect();
    while quiet.elapsed() < SPLIT_FOR {
        assert_eq!(
            s.assigns(),
            after_split,
            "the Reserved IP ping-pongs during the split ({:?} in)\n{}",
            quiet.elapsed(),
            s.logs()
        );
        assert_eq!(s.holder(), Some(DROPLETS[a]));
        assert_eq!(s.roles().await, want_roles, "{}", s.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Heal: node 0 hears side A's master again and, with the highest
    // priority, takes the IP back once.
    s.cut(false);
    eventually_async(Duration::from_secs(20), || async {
        s.roles().await == ["master", "backup", "backup", "backup"]
            && s.holder() == Some(DROPLETS[0])
            && s.held(0).await
    })
    .await
    .expect("one master after heal");
    let st = status(s.nodes[0].files.admin_addr).await;
    assert!(st["reserved_ip"].get("stepped_back_from").is_none(), "{st}");
    let settled = s.assigns();
    assert_eq!(
        settled,
        after_split + 1,
        "after heal: one assign back to the highest priority"
    );
    // A few reconcile periods (5 s each) without any further move.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(11) {
        assert_eq!(
            s.assigns(),
            settled,
            "assigns continue after the cluster settled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!s.logs().contains(TOKEN_DO));
}

async fn split_then_holder_stops() {
    let mut s = Split::start().await;
    s.cut(true);
    let a = s.settled_split().await;
    let before = s.assigns();
    // Side A goes down and the API reports the holder's droplet as off:
    // node 0, still master on side B, takes the IP back at its next check.
    s.daemons[1] = None;
    s.daemons[2] = None;
    s.sim.set_droplet_status(DROPLETS[a], "off");
    eventually_async(Duration::from_secs(20), || async {
        s.holder() == Some(DROPLETS[0]) && s.held(0).await
    })
    .await
    .expect("node 0 to take the IP back");
    assert!(s.log(0).contains("the split brain is over"), "{}", s.log(0));
    assert_eq!(s.assigns(), before + 1);
    assert_eq!(role(s.nodes[3].files.admin_addr).await, "backup");
}
