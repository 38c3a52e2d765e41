//! The `vrrp3` election transport on a real L2 network (docs/election.md):
//! `dynia run` nodes in their own network namespaces on one bridge, RFC 5798
//! packets (IP protocol 112) unicast between them, the `l2` driver moving a
//! VIP; and interop with a real keepalived (`vrrp_version 3`, `unicast_peer`)
//! as the other member. Needs root (namespaces, raw sockets); elsewhere it
//! skips and says why.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dynia_testkit::daemon::{bin, write_secret, TempDir};
use dynia_testkit::eventually;
use dynia_testkit::netns::{root_or_skip, run_bounded, NetnsCluster};

const PROXY_PORT: u16 = 8000;
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9180;
const VRID: u8 = 51;
/// Both sides advertise every 200 ms (keepalived `advert_int 0.2`):
/// Master_Down_Interval ≈ 0.6 s + skew.
const ADVERT_MS: u64 = 200;
const WAIT: Duration = Duration::from_secs(20);
/// How long a node must keep a role to count as "stays": many
/// Master_Down_Intervals.
const STAYS: Duration = Duration::from_secs(3);
/// Bound on a takeover after the master died: Master_Down_Interval (< 1 s)
/// plus claim, with room for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(5);

/// A cluster document for `members` (id, ip, priority), transport vrrp3.
fn cluster_doc(members: &[(&str, Ipv4Addr, u8)]) -> String {
    let mut doc = format!(
        "generation = 1\ncluster = \"vrrp3test\"\n\n[election]\ntransport = \"vrrp3\"\n\
         vrid = {VRID}\nadvert_interval = \"{ADVERT_MS}ms\"\n\n"
    );
    for (id, ip, prio) in members {
        doc.push_str(&format!(
            "[[member]]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\npriority = {prio}\n\n"
        ));
    }
    doc.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {APP_PORT}\n\
         [service.health]\ninterval = \"500ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 2\n"
    ));
    doc
}

/// Writes node `id`'s files under `dir` (no cluster key: vrrp3 has none);
/// returns the node file's path.
fn node_files(
    dir: &Path,
    id: &str,
    ip: Ipv4Addr,
    vip: Ipv4Addr,
    driver: &str,
    doc: &str,
) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    write_secret(&d.join("admin.token"), dynia_testkit::daemon::TOKEN);
    let reserved = match driver {
        "l2" => format!(
            "[reserved_ip]\ndriver = \"l2\"\naddress = \"{vip}\"\ninterface = \"eth0\"\nprefix = 24\n"
        ),
        _ => "[reserved_ip]\ndriver = \"none\"\n".to_string(),
    };
    let node = format!(
        "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
         [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken_file = \"{d}/admin.token\"\n\n\
         [[listener]]\nname = \"http\"\nbind = \"0.0.0.0:{PROXY_PORT}\"\n\n\
         [limits]\nshutdown_grace = \"1s\"\n\n{reserved}",
        d = d.display(),
    );
    let path = d.join("dynia.toml");
    std::fs::write(&path, node).unwrap();
    std::fs::write(d.join("cluster.toml"), doc).unwrap();
    path
}

struct Rig {
    c: NetnsCluster,
    vip: Ipv4Addr,
    apps: Vec<Child>,
    dir: TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for a in &mut self.apps {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

impl Rig {
    fn new(tag: &str, nodes: usize) -> Rig {
        let mut c = NetnsCluster::new(nodes);
        let vip = c.addr(100);
        let dir = TempDir::new(tag);
        // Every namespace runs an upstream, so every dynia node's proxy can
        // serve (tracking) whoever its peers are.
        let apps = (0..nodes)
            .map(|i| {
                let ns = c.ns_name(i).to_string();
                let listen = format!("{}:{APP_PORT}", c.node_ip(i));
                c.spawn(
                    &ns,
                    &[
                        bin(),
                        "upstream",
                        "--listen",
                        &listen,
                        "--id",
                        &format!("n{i}"),
                    ],
                )
            })
            .collect();
        Rig { c, vip, apps, dir }
    }

    fn start_dynia(&mut self, i: usize, file: &Path) {
        let f = file.display().to_string();
        self.c.spawn_node(i, &[bin(), "run", "-c", &f]);
    }

    fn get(&self, i: usize, path: &str) -> Option<String> {
        let ns = self.c.client_ns().to_string();
        self.c
            .get_from(
                &ns,
                self.c.node_ip(i),
                ADMIN_PORT,
                path,
                Duration::from_secs(1),
            )
            .ok()
            .filter(|a| a.status == 200)
            .map(|a| a.body)
    }

    fn role(&self, i: usize) -> String {
        self.get(i, "/status.json")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|s| s["role"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// A counter of node `i`'s `/metrics` (the line starting with `series`).
    fn metric(&self, i: usize, series: &str) -> Option<f64> {
        let text = self.get(i, "/metrics")?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    fn wait_role(&self, i: usize, want: &str, limit: Duration) {
        assert!(
            eventually(limit, || self.role(i) == want).is_ok(),
            "node {i} never became {want} within {limit:?} (is {:?}); logs in {}",
            self.role(i),
            self.c.log_dir().display()
        );
    }

    /// Whether node `i`'s eth0 carries the VIP.
    fn holds(&self, i: usize) -> bool {
        let out = self.c.exec(
            self.c.ns_name(i),
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        String::from_utf8_lossy(&out.stdout).contains(&format!(" {}/", self.vip))
    }

    fn holders(&self) -> Vec<usize> {
        (0..self.c.len()).filter(|&i| self.holds(i)).collect()
    }

    /// Polls for `limit`: `cond` must hold at every poll (a role that
    /// stays, not a role reached). Panics with `what` at the first miss.
    fn holds_throughout(&self, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            assert!(cond(), "{what} (logs in {})", self.c.log_dir().display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_of(&self, ns: &str) -> String {
        let mut text = String::new();
        if let Ok(rd) = std::fs::read_dir(self.c.log_dir()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(ns) {
                    text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        text
    }
}

#[test]
fn two_dynia_nodes_over_vrrp3_elect_one_and_fail_over() {
    if !root_or_skip("vrrp3-dynia") {
        return;
    }
    let mut rig = Rig::new("vrrp3-dynia", 2);
    let doc = cluster_doc(&[
        ("alder-lynx", rig.c.node_ip(0), 150),
        ("birch-mole", rig.c.node_ip(1), 140),
    ]);
    let files: Vec<PathBuf> = [("alder-lynx", 0), ("birch-mole", 1)]
        .iter()
        .map(|(id, i)| node_files(&rig.dir.0, id, rig.c.node_ip(*i), rig.vip, "l2", &doc))
        .collect();
    rig.start_dynia(0, &files[0]);
    rig.start_dynia(1, &files[1]);
    rig.wait_role(0, "master", WAIT);
    rig.wait_role(1, "backup", WAIT);
    assert!(
        eventually(WAIT, || rig.holders() == vec![0]).is_ok(),
        "VIP not on node 0 alone: {:?}",
        rig.holders()
    );
    // The backup hears the master's VRRP adverts (that is why it stays backup).
    let heard = "dynia_election_adverts_received_total";
    assert!(
        eventually(WAIT, || rig.metric(1, heard).is_some_and(|n| n >= 5.0)).is_ok(),
        "backup heard no vrrp3 adverts: {:?}",
        rig.metric(1, heard)
    );
    rig.holds_throughout(STAYS, "node 1 left backup while node 0 is master", || {
        rig.role(1) == "backup" && !rig.holds(1)
    });
    let bad = "dynia_election_adverts_dropped_total{reason=\"bad_checksum\"}";
    assert_eq!(
        rig.metric(1, bad),
        Some(0.0),
        "checksum drops between dynia nodes"
    );

    let t0 = Instant::now();
    rig.c.kill(0);
    rig.wait_role(1, "master", TAKEOVER);
    // SIGKILL leaves node 0's address behind; a dead machine's goes with it.
    let ns0 = rig.c.ns_name(0).to_string();
    rig.c.exec(
        &ns0,
        &[
            "ip",
            "addr",
            "del",
            &format!("{}/24", rig.vip),
            "dev",
            "eth0",
        ],
    );
    assert!(
        eventually(TAKEOVER, || rig.holders() == vec![1]).is_ok(),
        "VIP not on node 1 alone after the master died: {:?}",
        rig.holders()
    );
    eprintln!(
        "vrrp3: node 1 master and holding the VIP {:?} after SIGKILL",
        t0.elapsed()
    );
}

/// A keepalived (VRRP only) in a node's namespace, foreground, with its own
/// pid files; killed on drop.
struct Keepalived {
    child: Option<Child>,
    vrrp_pid: PathBuf,
}

impl Keepalived {
    fn start(rig: &mut Rig, i: usize, peer: Ipv4Addr, priority: u8, run: u32) -> Keepalived {
        let dir = rig.dir.0.join(format!("keepalived-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n    router_id dynia_vrrp3_test\n    vrrp_version 3\n}}\n\n\
                 vrrp_instance VI_TEST {{\n    state BACKUP\n    interface eth0\n\
                 \x20   virtual_router_id {VRID}\n    priority {priority}\n    advert_int 0.{tenths}\n\
                 \x20   unicast_src_ip {me}\n    unicast_peer {{\n        {peer}\n    }}\n\
                 \x20   virtual_ipaddress {{\n        {vip}/24 dev eth0\n    }}\n}}\n",
                tenths = ADVERT_MS / 100,
                me = rig.c.node_ip(i),
                vip = rig.vip,
            ),
        )
        .unwrap();
        let pid = dir.join("keepalived.pid");
        let vrrp_pid = dir.join("vrrp.pid");
        let ns = rig.c.ns_name(i).to_string();
        let (c, p, r) = (
            conf.display().to_string(),
            pid.display().to_string(),
            vrrp_pid.display().to_string(),
        );
        let child = rig.c.spawn(
            &ns,
            &[
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                &c,
                "-p",
                &p,
                "-r",
                &r,
            ],
        );
        Keepalived {
            child: Some(child),
            vrrp_pid,
        }
    }

    /// Dies like a crashed machine: no resignation advert. The VRRP child
    /// is SIGKILLed while the parent is stopped (so it cannot respawn it;
    /// and a dying parent would make the child resign on its way out), then
    /// the parent.
    fn crash(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let parent = child.id() as i32;
        // SAFETY: kill(2) on our own child and on the pid it wrote.
        unsafe { libc::kill(parent, libc::SIGSTOP) };
        if let Some(vrrp) = std::fs::read_to_string(&self.vrrp_pid)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            unsafe { libc::kill(vrrp, libc::SIGKILL) };
            let _ = eventually(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{vrrp}")).exists()
                    || std::fs::read_to_string(format!("/proc/{vrrp}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            })
            .is_ok();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The VRRP child keepalived wrote to its pid file is running.
fn keepalived_up(k: &Keepalived) -> bool {
    std::fs::read_to_string(&k.vrrp_pid)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

#[test]
fn dynia_and_keepalived_elect_by_priority_in_both_directions() {
    if !root_or_skip("vrrp3-keepalived") {
        return;
    }
    match run_bounded(&["keepalived", "--version"], Duration::from_secs(5)) {
        Ok(o) if o.status.success() || !o.stderr.is_empty() => {}
        _ => {
            eprintln!("skip vrrp3-keepalived: needs keepalived (apt-get install keepalived)");
            return;
        }
    }
    let mut rig = Rig::new("vrrp3-ka", 2);
    let (dy, ka) = (0usize, 1usize);
    let (dy_ip, ka_ip) = (rig.c.node_ip(dy), rig.c.node_ip(ka));
    // keepalived's node is a member too: vrrp3 only believes members.
    let doc = cluster_doc(&[("dynia-node", dy_ip, 100), ("keepalived-node", ka_ip, 150)]);
    let file = node_files(&rig.dir.0, "dynia-node", dy_ip, rig.vip, "l2", &doc);

    // 1. keepalived (150) is master; dynia (100) joins and stays backup.
    let mut k = Keepalived::start(&mut rig, ka, dy_ip, 150, 1);
    assert!(
        eventually(WAIT, || rig.holders() == vec![ka]).is_ok(),
        "keepalived never took the VIP: {:?}; logs in {}",
        rig.holders(),
        rig.c.log_dir().display()
    );
    rig.start_dynia(dy, &file);
    rig.wait_role(dy, "backup", WAIT);
    let heard = "dynia_election_adverts_received_total";
    assert!(
        eventually(WAIT, || rig.metric(dy, heard).is_some_and(|n| n >= 5.0)).is_ok(),
        "dynia heard no adverts from keepalived: {:?}",
        rig.metric(dy, heard)
    );
    rig.holds_throughout(
        STAYS,
        "dynia left backup or took the VIP beside a higher keepalived",
        || rig.role(dy) == "backup" && !rig.holds(dy) && keepalived_up(&k),
    );

    // 2. keepalived dies: dynia takes over within a bound and holds the VIP.
    let t0 = Instant::now();
    k.crash();
    let ns = rig.c.ns_name(ka).to_string();
    rig.c.exec(
        &ns,
        &[
            "ip",
            "addr",
            "del",
            &format!("{}/24", rig.vip),
            "dev",
            "eth0",
        ],
    );
    rig.wait_role(dy, "master", TAKEOVER);
    assert!(
        eventually(TAKEOVER, || rig.holders() == vec![dy]).is_ok(),
        "VIP not on dynia alone: {:?}",
        rig.holders()
    );
    eprintln!(
        "vrrp3: dynia master and holding the VIP {:?} after keepalived died",
        t0.elapsed()
    );

    // 3. keepalived back with a LOWER priority: it hears dynia's adverts
    //    (our packets pass its checks: checksum, address list) and stays
    //    backup, so dynia keeps the VIP.
    let masters_before = rig.log_of(&ns).matches("Entering MASTER STATE").count();
    let k_low = Keepalived::start(&mut rig, ka, dy_ip, 50, 2);
    assert!(
        eventually(WAIT, || keepalived_up(&k_low)).is_ok(),
        "keepalived did not start"
    );
    rig.holds_throughout(STAYS, "a lower keepalived took the VIP from dynia", || {
        rig.holders() == vec![dy] && rig.role(dy) == "master"
    });
    let ka_log = rig.log_of(&ns);
    assert_eq!(
        ka_log.matches("Entering MASTER STATE").count(),
        masters_before,
        "keepalived (priority 50) should only have been BACKUP:\n{ka_log}"
    );
    drop(k_low);

    // 4. keepalived back with a HIGHER priority (preempt is keepalived's
    //    default): dynia goes back to backup and lets the VIP go.
    let _k_high = Keepalived::start(&mut rig, ka, dy_ip, 150, 3);
    rig.wait_role(dy, "backup", WAIT);
    assert!(
        eventually(WAIT, || rig.holders() == vec![ka]).is_ok(),
        "VIP not on keepalived alone after it preempted: {:?}",
        rig.holders()
    );

    // Which unicast checksum keepalived used: every advert verified, and
    // never with 224.0.0.18 in the pseudo-header (the pre-1.3.6 variant).
    let bad = "dynia_election_adverts_dropped_total{reason=\"bad_checksum\"}";
    assert_eq!(
        rig.metric(dy, bad),
        Some(0.0),
        "adverts dropped for their checksum"
    );
    let dy_log = rig.log_of(rig.c.ns_name(dy));
    assert!(
        !dy_log.contains("old unicast checksum"),
        "keepalived used the old unicast checksum"
    );
    let ka_log = rig.log_of(&ns);
    assert!(
        !ka_log.contains("Invalid VRRPv3 checksum") && !ka_log.contains("checksum to old version"),
        "keepalived complained about our checksum:\n{ka_log}"
    );
}

#[test]
fn vrrp3_without_cap_net_raw_refuses_to_start_and_says_why() {
    if !root_or_skip("vrrp3-nocap") {
        return;
    }
    if Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("skip vrrp3-nocap: needs setpriv (util-linux) to drop CAP_NET_RAW");
        return;
    }
    let rig = Rig::new("vrrp3-nocap", 1);
    let ip = rig.c.node_ip(0);
    let doc = cluster_doc(&[("alder-lynx", ip, 100)]);
    // Driver `none`: only the election's raw socket needs CAP_NET_RAW.
    let file = node_files(&rig.dir.0, "alder-lynx", ip, rig.vip, "none", &doc);
    let f = file.display().to_string();
    let out = rig.c.exec_timeout(
        rig.c.ns_name(0),
        &[
            "setpriv",
            "--bounding-set=-net_raw",
            "--inh-caps=-net_raw",
            bin(),
            "run",
            "-c",
            &f,
        ],
        Duration::from_secs(15),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "started without CAP_NET_RAW:\n{text}"
    );
    assert!(
        text.contains("CAP_NET_RAW") && text.contains("vrrp3") && !text.contains("killed after"),
        "no clear error:\n{text}"
    );
}
