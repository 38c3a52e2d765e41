//! The election between real `dynia` processes on loopback addresses:
//! one master, failover on SIGKILL, preemption, resign on SIGTERM, status,
//! and the DigitalOcean driver against the local API simulator.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dynia_testkit::daemon::*;
use dynia_testkit::dosim::DoSim;
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::get;

const WAIT: Duration = Duration::from_secs(15);
const IDS: [&str; 3] = ["north-fox", "east-owl", "south-elk"];
const DO_TOKEN: &str = "dop_v1_simulated_token_never_logged_7f3a";

struct Rig {
    nodes: Vec<ClusterNode>,
    daemons: Vec<Option<DaemonProcess>>,
    _apps: Vec<DemoUpstream>,
}

impl Rig {
    /// Three nodes on `net.2..4`; node 0 has the highest priority.
    async fn new(
        tag: &str,
        net: &str,
        extra: impl Fn(usize) -> String,
        members_extra: impl Fn(usize) -> String,
    ) -> Rig {
        let ips: Vec<String> = (2..5).map(|i| format!("{net}.{i}")).collect();
        let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let ports = common_ports(&ip_refs);
        let app_port = common_ports(&ip_refs).0;
        let mut apps = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            apps.push(
                DemoUpstream::start(format!("{ip}:{app_port}").parse().unwrap(), IDS[i])
                    .await
                    .unwrap(),
            );
        }
        let mut cluster = String::from(
            "generation = 1\ncluster = \"elect\"\n\n[election]\nadvert_interval = \"200ms\"\npreempt = true\n\n",
        );
        for (i, ip) in ips.iter().enumerate() {
            cluster.push_str(&format!(
                "[[member]]\nid = \"{}\"\nprivate_ip = \"{ip}\"\npriority = {}\n{}\n",
                IDS[i],
                150 - 10 * i,
                members_extra(i)
            ));
        }
        cluster.push_str(&format!(
            "[[service]]\nname = \"web\"\nhosts = [\"{HOST}\"]\nport = {app_port}\n\
             [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n"
        ));
        let nodes: Vec<ClusterNode> = (0..3)
            .map(|i| cluster_node(tag, IDS[i], &ips[i], &cluster, ports, &extra(i)))
            .collect();
        let mut daemons = Vec::new();
        for n in &nodes {
            daemons.push(Some(DaemonProcess::start(&n.files).await));
        }
        Rig {
            nodes,
            daemons,
            _apps: apps,
        }
    }

    fn admin(&self, i: usize) -> std::net::SocketAddr {
        self.nodes[i].files.admin_addr
    }

    async fn wait_role(&self, i: usize, want: &str) {
        let admin = self.admin(i);
        let what = format!("{} to be {want}", IDS[i]);
        eventually_async(WAIT, || async move { role(admin).await == want })
            .await
            .expect(&what);
    }

    async fn masters(&self) -> Vec<usize> {
        let mut m = Vec::new();
        for i in 0..3 {
            if self.daemons[i].is_some() && role(self.admin(i)).await == "master" {
                m.push(i);
            }
        }
        m
    }

    async fn restart(&mut self, i: usize) {
        self.daemons[i] = Some(DaemonProcess::start(&self.nodes[i].files).await);
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

#[tokio::test]
async fn one_master_failover_preempt_and_resign() {
    let mut rig = Rig::new("elect", "127.0.1", |_| String::new(), |_| String::new()).await;
    rig.wait_role(0, "master").await;
    rig.wait_role(1, "backup").await;
    rig.wait_role(2, "backup").await;
    assert_eq!(rig.masters().await, vec![0]);

    // Every node hears every other: roles, generation and last_seen in /status.json.
    let admin = rig.admin(0);
    eventually_async(WAIT, || async move {
        let s = status(admin).await;
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["id"] != "north-fox")
            .all(|m| {
                m["role"] == "backup"
                    && m["generation"] == 1
                    && m["last_seen_ms"].as_u64().is_some_and(|ms| ms < 3000)
            })
    })
    .await
    .expect("node 0 to hear both backups");
    let s = status(rig.admin(1)).await;
    let north = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "north-fox")
        .unwrap()
        .clone();
    assert_eq!(north["role"], "master", "{s}");

    // SIGKILL the master: the next priority takes over.
    let killed = Instant::now();
    rig.daemons[0] = None;
    rig.wait_role(1, "master").await;
    let took = killed.elapsed();
    assert_eq!(role(rig.admin(2)).await, "backup");
    eprintln!("failover after SIGKILL (loopback, 200ms adverts): {took:?}");

    // The old master returns with the highest priority: it preempts.
    rig.restart(0).await;
    rig.wait_role(0, "master").await;
    rig.wait_role(1, "backup").await;
    assert_eq!(rig.masters().await, vec![0]);

    // SIGTERM: resign first, the next priority takes over, exit 0.
    rig.daemons[0].as_ref().unwrap().signal(libc::SIGTERM);
    rig.wait_role(1, "master").await;
    let code = rig.daemons[0].as_mut().unwrap().wait_exit(WAIT).await;
    assert_eq!(code, Some(0));
    let m = metrics(rig.admin(1)).await;
    assert!(
        m.contains("dynia_election_state{state=\"master\"} 1"),
        "{m}"
    );
    assert!(m.contains("dynia_election_transitions_total"));
    assert!(!m.contains("dynia_election_adverts_dropped_total{reason=\"bad_mac\"} 1"));
}

#[tokio::test]
async fn forged_and_replayed_adverts_change_nothing() {
    let rig = Rig::new("forge", "127.0.2", |_| String::new(), |_| String::new()).await;
    rig.wait_role(0, "master").await;
    rig.wait_role(1, "backup").await;
    let port = {
        let text = std::fs::read_to_string(&rig.nodes[1].files.node_file).unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("port = ")
                    .map(|p| p.trim().parse::<u16>().unwrap())
            })
            .unwrap()
    };
    // A forged advert claiming priority 254 from node 2's address, wrong key.
    let key = dynia_vrrp::advert::AdvertKey::new(b"not-the-cluster-key-at-all").unwrap();
    let forged = dynia_vrrp::advert::Advert {
        vrid: 51,
        cluster: dynia_vrrp::advert::ClusterId::from_name("elect"),
        sender: "127.0.2.4".parse::<IpAddr>().unwrap(),
        priority: 254,
        interval_ms: 200,
        epoch: u64::MAX / 2,
        seq: 1,
        generation: 99,
        config_hash: [0; 32],
        role: dynia_vrrp::advert::SenderRole::Master,
        holds: true,
    };
    let bytes = dynia_vrrp::advert::encode(&forged, &key);
    let sock = std::net::UdpSocket::bind("127.0.2.4:0").unwrap();
    let transitions_before = metric_value(
        &metrics(rig.admin(0)).await,
        "dynia_election_transitions_total",
    );
    // To a backup (it would take over at once if believed) and to the master
    // (it would step down to a priority-254 master if believed).
    for to in ["127.0.2.3", "127.0.2.2"] {
        for _ in 0..20 {
            sock.send_to(&bytes, (to, port)).unwrap();
            sock.send_to(&bytes[..60], (to, port)).unwrap();
            sock.send_to(b"garbage", (to, port)).unwrap();
        }
    }
    // Validly signed adverts that are replays: one from an old boot of node 2,
    // and one with node 2's *current* boot epoch (its state dir records it)
    // and a sequence number it used long ago, as a captured packet would be.
    let real_key = dynia_vrrp::advert::AdvertKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
    let old_boot = dynia_vrrp::advert::Advert { epoch: 1, ..forged };
    let epoch_file = rig.nodes[2].files.dir.0.join("election.epoch");
    let current: u64 = std::fs::read_to_string(&epoch_file)
        .unwrap_or_else(|e| panic!("{}: {e}", epoch_file.display()))
        .trim()
        .parse()
        .unwrap();
    let captured = dynia_vrrp::advert::Advert {
        epoch: current,
        seq: 1,
        ..forged
    };
    let old_boot_bytes = dynia_vrrp::advert::encode(&old_boot, &real_key);
    let captured_bytes = dynia_vrrp::advert::encode(&captured, &real_key);
    // Node 2 has sent more than one advert since it started (heartbeats).
    let admin2 = rig.admin(2);
    eventually_async(WAIT, || async move {
        metric_value(&metrics(admin2).await, "dynia_election_adverts_sent_total") >= 3.0
    })
    .await
    .expect("node 2 to have sent a few adverts");
    for to in ["127.0.2.3", "127.0.2.2"] {
        for _ in 0..5 {
            sock.send_to(&old_boot_bytes, (to, port)).unwrap();
            sock.send_to(&captured_bytes, (to, port)).unwrap();
        }
    }
    for i in [0, 1] {
        let admin = rig.admin(i);
        eventually_async(WAIT, || async move {
            let m = metrics(admin).await;
            m.contains("dynia_election_adverts_dropped_total{reason=\"bad_mac\"} 20")
                && m.contains("dynia_election_adverts_dropped_total{reason=\"replay_old_epoch\"} 5")
                && m.contains("dynia_election_adverts_dropped_total{reason=\"replay_old_seq\"} 5")
        })
        .await
        .unwrap_or_else(|e| {
            panic!("{e} waiting for node {i} to count the forged and replayed adverts as dropped")
        });
    }
    assert_eq!(
        rig.masters().await,
        vec![0],
        "a forged or replayed advert moved mastership"
    );
    assert_eq!(role(rig.admin(1)).await, "backup");
    let m = metrics(rig.admin(0)).await;
    assert_eq!(
        metric_value(&m, "dynia_election_transitions_total"),
        transitions_before,
        "the master changed state: {m}"
    );
}

#[tokio::test]
async fn digitalocean_driver_moves_the_reserved_ip_once_per_failover() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), DO_TOKEN)
        .await
        .unwrap();
    let vip: IpAddr = "203.0.113.10".parse().unwrap();
    for (i, id) in [101u64, 102, 103].iter().enumerate() {
        sim.add_droplet(*id, format!("127.0.3.{}", i + 2).parse().unwrap());
    }
    sim.add_reserved_ip(vip, None);
    sim.set_action_delay(Duration::from_millis(100));
    let url = sim.url();
    let token_dir = TempDir::new("do-token");
    let token_file = token_dir.0.join("do.token");
    write_secret(&token_file, DO_TOKEN);
    let tf = token_file.display().to_string();
    let mut rig = Rig::new(
        "do",
        "127.0.3",
        move |_| {
            format!(
                "[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"{vip}\"\ntoken_file = \"{tf}\"\n\
                 api_url = \"{url}\"\nmetadata_url = \"{url}\"\n"
            )
        },
        |i| format!("droplet_id = {}\n", 101 + i),
    )
    .await;
    rig.wait_role(0, "master").await;
    eventually_async(WAIT, || async { sim.holder(vip) == Some(101) })
        .await
        .expect("the simulator to show the IP on droplet 101");
    let admin = rig.admin(0);
    eventually_async(WAIT, || async move {
        status(admin).await["reserved_ip"]["held"] == true
    })
    .await
    .expect("status to say the IP is held");

    rig.daemons[0] = None;
    rig.wait_role(1, "master").await;
    eventually_async(WAIT, || async { sim.holder(vip) == Some(102) })
        .await
        .expect("the simulator to show the IP on droplet 102");
    let assigns: Vec<_> = sim
        .api_calls()
        .into_iter()
        .filter(|c| c.is_action_post() && c.status < 300)
        .map(|c| c.droplet_id)
        .collect();
    assert_eq!(
        assigns,
        vec![Some(101), Some(102)],
        "one assign per failover"
    );
    let d1 = rig.daemons[1].as_ref().unwrap();
    eventually_async(WAIT, || async {
        d1.log_text().contains("reserved ip claimed")
    })
    .await
    .expect("the new master to log its claim");
    let m1 = metrics(rig.admin(1)).await;
    assert_eq!(
        metric_value(&m1, "dynia_reserved_ip_claims_total{result=\"success\"}"),
        1.0,
        "{m1}"
    );
    assert_eq!(
        metric_value(&m1, "dynia_reserved_ip_claims_total{result=\"failure\"}"),
        0.0
    );
    let admin1 = rig.admin(1);
    eventually_async(WAIT, || async move {
        metric_value(&metrics(admin1).await, "dynia_reserved_ip_held") == 1.0
    })
    .await
    .expect("the new master's held gauge to be 1");
    let m2 = metrics(rig.admin(2)).await;
    assert!(m2.contains("\ndynia_reserved_ip_held 0\n"), "{m2}");
    let m1 = metrics(admin1).await;
    assert_eq!(metric_value(&m1, "dynia_election_priority"), 140.0, "{m1}");
    assert_eq!(metric_value(&m2, "dynia_election_priority"), 130.0, "{m2}");
    let logs = rig.logs();
    assert!(!logs.contains(DO_TOKEN), "the API token reached a log line");
    for i in 1..3 {
        let s = get(rig.admin(i), "localhost", "/status.json")
            .await
            .unwrap()
            .body;
        let m = metrics(rig.admin(i)).await;
        assert!(!s.contains(DO_TOKEN) && !m.contains(DO_TOKEN));
    }
}

/// A new master whose claim fails (the API answers 500 for a while) finds
/// the Reserved IP still on the dead old master: that is not a split brain
/// (its own claim never succeeded), so it claims again instead of stepping
/// back, and the IP lands on it once the API recovers.
#[tokio::test]
async fn a_failed_claim_is_retried_not_taken_for_a_split() {
    let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), DO_TOKEN)
        .await
        .unwrap();
    let vip: IpAddr = "203.0.113.11".parse().unwrap();
    for (i, id) in [111u64, 112, 113].iter().enumerate() {
        sim.add_droplet(*id, format!("127.0.8.{}", i + 2).parse().unwrap());
    }
    sim.add_reserved_ip(vip, None);
    let url = sim.url();
    let token_dir = TempDir::new("do-fail");
    let token_file = token_dir.0.join("do.token");
    write_secret(&token_file, DO_TOKEN);
    let tf = token_file.display().to_string();
    let mut rig = Rig::new(
        "dofail",
        "127.0.8",
        move |_| {
            format!(
                "[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"{vip}\"\ntoken_file = \"{tf}\"\n\
                 api_url = \"{url}\"\nmetadata_url = \"{url}\"\n"
            )
        },
        |i| format!("droplet_id = {}\n", 111 + i),
    )
    .await;
    rig.wait_role(0, "master").await;
    eventually_async(WAIT, || async { sim.holder(vip) == Some(111) })
        .await
        .expect("the IP on droplet 111");
    // Enough 500s for the next claim's every attempt and the first
    // reconcile's reads (6 attempts each by default).
    sim.fail_next_server_error(12, 500);
    rig.daemons[0] = None;
    rig.wait_role(1, "master").await;
    let admin1 = rig.admin(1);
    eventually_async(WAIT, || async move {
        metric_value(
            &metrics(admin1).await,
            "dynia_reserved_ip_claims_total{result=\"failure\"}",
        ) >= 1.0
    })
    .await
    .expect("the new master's first claim to fail");
    eventually_async(Duration::from_secs(45), || async {
        sim.holder(vip) == Some(112)
    })
    .await
    .expect("the IP on droplet 112 once the API answers again");
    let log = rig.daemons[1].as_ref().unwrap().log_text();
    assert!(
        !log.contains("stepping back"),
        "the new master took its own failed claim for a split brain:\n{log}"
    );
    assert!(log.contains("claiming it again"), "{log}");
    assert_eq!(rig.masters().await, vec![1]);
    let m = metrics(admin1).await;
    assert_eq!(
        metric_value(&m, "dynia_election_transitions_total"),
        2.0,
        "node 1 went backup → master only: {m}"
    );
}

#[tokio::test]
async fn hooks_run_with_state_address_and_priority() {
    let dir = TempDir::new("hooks");
    let out = dir.0.join("hook.out");
    let hook = dir.0.join("on-state");
    std::fs::write(
        &hook,
        // The hook's own scheduling policy too (field 41 of /proc/PID/stat,
        // 0 = SCHED_OTHER): the election thread may be real-time, the hooks
        // it starts must not be.
        format!(
            "#!/bin/sh\necho \"$1 $2 $3 policy=$(cut -d' ' -f41 /proc/$$/stat)\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = hook.display().to_string();
    let rig = Rig::new(
        "hooks",
        "127.0.5",
        move |_| {
            format!(
                "[reserved_ip]\naddress = \"203.0.113.77\"\n\n[hooks]\non_master = \"{h}\"\non_backup = \"{h}\"\n"
            )
        },
        |_| String::new(),
    )
    .await;
    rig.wait_role(0, "master").await;
    let out2 = out.clone();
    eventually_async(WAIT, || {
        let out = out2.clone();
        async move {
            std::fs::read_to_string(&out)
                .is_ok_and(|t| t.lines().any(|l| l.starts_with("master 203.0.113.77 150 ")))
        }
    })
    .await
    .expect("the master hook to run");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "backup 203.0.113.77 140 policy=0"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "master 203.0.113.77 150 policy=0"),
        "a hook inherited the election thread's real-time policy: {text}"
    );
}

/// The value of an unlabelled sample in Prometheus text (0 when absent).
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// (policy, rt_priority) of the daemon's `dynia-election` thread, from
/// /proc/PID/task/TID/stat (fields 41 and 40; SCHED_RR = 2).
fn election_thread_sched(pid: i32) -> (u32, u32) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "dynia-election" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised comm start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        return (f[41 - 3].parse().unwrap(), f[40 - 3].parse().unwrap());
    }
    panic!("no dynia-election thread in process {pid}");
}

#[tokio::test]
async fn election_thread_is_real_time_unless_turned_off() {
    // Node 0: `rt_priority = 0` (lands in the node file's [election] table);
    // nodes 1 and 2: the default, 10.
    let rig = Rig::new(
        "rtprio",
        "127.0.8",
        |i| {
            if i == 0 {
                "rt_priority = 0\n".into()
            } else {
                String::new()
            }
        },
        |_| String::new(),
    )
    .await;
    rig.wait_role(0, "master").await;
    let pid = |i: usize| rig.daemons[i].as_ref().unwrap().pid();
    assert_eq!(election_thread_sched(pid(0)), (0, 0), "rt_priority = 0");
    let log1 = rig.daemons[1].as_ref().unwrap().log_text();
    let refused = log1.contains("real-time scheduling refused");
    if unsafe { libc::geteuid() } == 0 {
        assert!(!refused, "refused as root:\n{log1}");
    }
    for i in [1, 2] {
        let got = election_thread_sched(pid(i));
        if refused {
            // Not root and no RLIMIT_RTPRIO: normal priority, and it says so.
            assert_eq!(got, (0, 0));
        } else {
            assert_eq!(got, (2, 10), "node {i}: SCHED_RR at priority 10");
        }
    }
    // Backups measure the gaps between the master's adverts; the master
    // hears no master and measures none.
    let backup = rig.admin(1);
    eventually_async(WAIT, || async move {
        metric_value(
            &metrics(backup).await,
            "dynia_election_advert_gap_seconds_count",
        ) >= 5.0
    })
    .await
    .expect("east-owl to measure advert gaps");
    assert_eq!(
        metric_value(
            &metrics(rig.admin(0)).await,
            "dynia_election_advert_gap_seconds_count"
        ),
        0.0
    );
    // The proxy's threads stay at normal priority.
    let main = std::fs::read_to_string(format!("/proc/{}/stat", pid(1))).unwrap();
    let rest = &main[main.rfind(')').unwrap() + 2..];
    assert_eq!(rest.split(' ').nth(41 - 3), Some("0"), "main thread policy");
}

/// The liveness of member `id` in the `/status.json` of node `admin`.
async fn liveness_of(admin: std::net::SocketAddr, id: &str) -> String {
    let s = status(admin).await;
    let m = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id);
    m.and_then(|m| m["liveness"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Which members answer `n` requests through node `i`'s proxy (failures: `None`).
async fn answers_through(rig: &Rig, i: usize, n: usize) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let a = get(rig.nodes[i].files.proxy_addr, HOST, "/").await;
        out.push(a.ok().and_then(|a| a.member().map(str::to_string)));
    }
    out
}

#[tokio::test]
async fn a_member_the_election_lost_gets_no_requests_until_heard_and_checked() {
    let mut rig = Rig::new("alive", "127.0.7", |_| String::new(), |_| String::new()).await;
    rig.wait_role(0, "master").await;
    let (a0, a1) = (rig.admin(0), rig.admin(1));
    for admin in [a0, a1] {
        eventually_async(WAIT, || async move {
            liveness_of(admin, "south-elk").await == "heard"
        })
        .await
        .expect("south-elk heard");
    }
    // Its daemon dies; its app (in this process) still answers checks, so
    // only the election can tell the others to stop choosing it.
    let killed = Instant::now();
    rig.daemons[2] = None;
    for admin in [a0, a1] {
        eventually_async(WAIT, || async move {
            liveness_of(admin, "south-elk").await == "lost"
        })
        .await
        .expect("south-elk lost");
    }
    let lost_after = killed.elapsed();
    eprintln!("backup lost after {lost_after:?} (200 ms adverts: heartbeats every 400 ms)");
    assert!(lost_after < Duration::from_secs(3), "{lost_after:?}");
    let m = metrics(a0).await;
    assert!(
        m.contains("dynia_election_member_lost{member=\"south-elk\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("dynia_election_member_lost{member=\"east-owl\"} 0"),
        "{m}"
    );
    for i in [0, 1] {
        let got = answers_through(&rig, i, 12).await;
        assert!(
            got.iter().all(|m| m.is_some()),
            "through {}: {got:?}",
            IDS[i]
        );
        assert!(
            !got.iter().any(|m| m.as_deref() == Some("south-elk")),
            "{got:?}"
        );
    }
    // Back: heard again, then a passing check, then chosen again.
    rig.restart(2).await;
    eventually_async(WAIT, || async {
        let got = answers_through(&rig, 0, 6).await;
        got.iter().any(|m| m.as_deref() == Some("south-elk"))
    })
    .await
    .expect("south-elk chosen again");
    assert_eq!(liveness_of(a0, "south-elk").await, "heard");
}
