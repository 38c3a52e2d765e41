//! Node loss without failed requests (issue 13, "Must show"): three `dynia
//! run` nodes with the `l2` driver and the default health settings, a client
//! sending `GET /` on the VIP every 20 ms with a 1 s timeout, and the ways a
//! member goes away: node lost (daemon and app SIGKILLed, link down), app
//! stopped, app port blackholed; plus simultaneous cluster starts. Root only
//! (netns); each test prints what it measured. Tests run one at a time.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dynia_testkit::daemon::{bin, write_secret, TempDir};
use dynia_testkit::eventually;
use dynia_testkit::netns::{in_netns, root_or_skip, NetnsCluster};
use dynia_testkit::paced::{LossFigures, PacedLoad, PacedSample};

const PROXY_PORT: u16 = 8000;
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9180;
const IDS: [&str; 3] = ["alder-lynx", "birch-mole", "cedar-wren"];
const PRIORITIES: [u32; 3] = [150, 140, 130];
const WAIT: Duration = Duration::from_secs(30);
/// The client: one request every 20 ms (50/s), 1 s for each.
const EVERY: Duration = Duration::from_millis(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after the loss (or the first answer) the client is watched:
/// long enough for today's checks (every 5 s) to have looked twice.
const WATCH: Duration = Duration::from_secs(10);
/// Master lost: the VIP answers within this (issue 13).
const FIRST_ANSWER_LIMIT: Duration = Duration::from_millis(600);
/// Blackholed member: out of rotation within `fall` fast checks.
const LEAVE_ROTATION_LIMIT: Duration = Duration::from_millis(2500);
/// The hedge delay in the bound on a request's wait: a request's normal
/// time + 2 × the member's normal connect + this + [`SCHED_SLACK`].
const HEDGE_ALLOWANCE: Duration = Duration::from_millis(200);
/// "About" in that bound: scheduling noise of a debug build on a busy CI box.
const SCHED_SLACK: Duration = Duration::from_millis(50);

/// The tests measure latencies: one at a time, never side by side.
static SERIAL: Mutex<()> = Mutex::new(());

struct Rig {
    c: NetnsCluster,
    files: Vec<PathBuf>,
    vip: Ipv4Addr,
    apps: Vec<Option<std::process::Child>>,
    _dir: TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for a in self.apps.iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// The cluster document: default election, one service over the three
/// apps with no `[service.health]` (its defaults: 5 s, 2 s, fall 3, rise 2).
fn cluster_doc(c: &NetnsCluster) -> String {
    let mut doc = String::from("generation = 1\ncluster = \"nodeloss\"\n\n");
    for (i, id) in IDS.iter().enumerate() {
        doc.push_str(&format!(
            "[[member]]\nid = \"{id}\"\nprivate_ip = \"{}\"\npriority = {}\n\n",
            c.node_ip(i),
            PRIORITIES[i]
        ));
    }
    doc.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {APP_PORT}\n"
    ));
    doc
}

impl Rig {
    /// Namespaces, files and apps (listening); no daemon yet.
    fn new(tag: &str) -> Rig {
        let mut c = NetnsCluster::new(3);
        let vip = c.addr(100);
        let dir = TempDir::new(tag);
        let cluster = cluster_doc(&c);
        let (mut files, mut apps) = (Vec::new(), Vec::new());
        for (i, id) in IDS.iter().enumerate() {
            let d = dir.0.join(id);
            std::fs::create_dir_all(&d).unwrap();
            write_secret(&d.join("admin.token"), dynia_testkit::daemon::TOKEN);
            write_secret(&d.join("cluster.key"), "0123456789abcdef0123456789abcdef");
            let node = format!(
                "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
                 [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken_file = \"{d}/admin.token\"\n\n\
                 [[listener]]\nname = \"http\"\nbind = \"0.0.0.0:{PROXY_PORT}\"\n\n\
                 [election]\nkey_file = \"{d}/cluster.key\"\n\n\
                 [reserved_ip]\ndriver = \"l2\"\naddress = \"{vip}\"\ninterface = \"eth0\"\nprefix = 24\n",
                ip = c.node_ip(i),
                d = d.display(),
            );
            let path = d.join("dynia.toml");
            std::fs::write(&path, node).unwrap();
            std::fs::write(d.join("cluster.toml"), &cluster).unwrap();
            files.push(path);
            let ns = c.ns_name(i).to_string();
            let listen = format!("{}:{APP_PORT}", c.node_ip(i));
            apps.push(Some(c.spawn(
                &ns,
                &[bin(), "upstream", "--listen", &listen, "--id", id],
            )));
        }
        let rig = Rig {
            c,
            files,
            vip,
            apps,
            _dir: dir,
        };
        for (i, id) in IDS.iter().enumerate() {
            let a = SocketAddr::from((rig.c.node_ip(i), APP_PORT));
            let up = eventually(WAIT, || connect_time(rig.c.client_ns(), a).is_some());
            assert!(up.is_ok(), "app of {id} not listening");
        }
        rig
    }

    /// All three daemons started at once.
    fn start_all(&mut self) {
        for i in 0..3 {
            let f = self.files[i].display().to_string();
            self.c.spawn_node(i, &[bin(), "run", "-c", &f]);
        }
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        self.c.status_json(i, ADMIN_PORT)
    }

    fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| s["role"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Member `id`'s health in node `i`'s view of service `web`.
    fn health(&self, i: usize, id: &str) -> String {
        self.status(i)
            .and_then(|s| {
                s["services"][0]["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == id)
                    .and_then(|m| m["health"].as_str().map(str::to_string))
            })
            .unwrap_or_default()
    }

    /// Roles that node `i` has entered with their reasons, oldest first
    /// (its `/status.json` transitions).
    fn roles_entered(&self, i: usize) -> Vec<(String, String)> {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        self.status(i)
            .and_then(|s| {
                Some(
                    s["transitions"]
                        .as_array()?
                        .iter()
                        .map(|t| (text(&t["role"]), text(&t["reason"])))
                        .collect(),
                )
            })
            .unwrap_or_default()
    }

    fn holders(&self) -> Vec<usize> {
        let want = format!(" {}/", self.vip);
        (0..3)
            .filter(|&i| {
                let out = self.c.exec(
                    self.c.ns_name(i),
                    &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                );
                String::from_utf8_lossy(&out.stdout).contains(&want)
            })
            .collect()
    }

    /// Node 0 master holding the VIP, the others backups, every member up
    /// in the master's pool.
    fn wait_settled(&self) {
        let ok = eventually(WAIT, || {
            self.role(0) == "master"
                && self.role(1) == "backup"
                && self.role(2) == "backup"
                && self.holders() == vec![0]
                && IDS.iter().all(|id| self.health(0, id) == "up")
        });
        assert!(
            ok.is_ok(),
            "cluster not settled: roles {:?}, VIP on {:?}, health {:?}; logs in {}",
            (0..3).map(|i| self.role(i)).collect::<Vec<_>>(),
            self.holders(),
            IDS.map(|id| self.health(0, id)),
            self.c.log_dir().display()
        );
    }

    /// The paced client on the VIP, once it answers steadily.
    fn steady_load(&self) -> PacedLoad {
        let addr = SocketAddr::from((self.vip, PROXY_PORT));
        let load = PacedLoad::start(self.c.client_ns(), addr, EVERY, CLIENT_TIMEOUT);
        assert!(
            eventually(WAIT, || load.stable(25)).is_ok(),
            "the VIP does not answer steadily: {:?}",
            load.samples().last()
        );
        load
    }
}

/// A settled rig, or `None` when the test skips (not root).
fn settled_rig(test: &str) -> Option<Rig> {
    if !root_or_skip(test) {
        return None;
    }
    let mut rig = Rig::new(test);
    rig.start_all();
    rig.wait_settled();
    Some(rig)
}

/// TCP connect time to `addr` from namespace `ns` (`None`: no connection in 1 s).
fn connect_time(ns: &str, addr: SocketAddr) -> Option<Duration> {
    in_netns(ns, move || {
        let t = Instant::now();
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        Some(t.elapsed())
    })
}

/// Lets the client run `WATCH` past `t0` (and past the first answer after
/// it), then stops it: the figures of the event at `t0`.
fn watch(load: PacedLoad, t0: Instant) -> (LossFigures, Vec<PacedSample>) {
    let _ = eventually(WAIT, || load.first_ok_after(t0).is_some());
    let from = load.first_ok_after(t0).map_or(t0, |f| f.start);
    let end = from + WATCH;
    if let Some(rest) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    let samples = load.finish();
    (LossFigures::of(&samples, t0, WATCH), samples)
}

/// The failed requests after `t0`, one line each, the first few (for the
/// failure message).
fn failures(samples: &[PacedSample], t0: Instant) -> String {
    let failed: Vec<&PacedSample> = dynia_testkit::paced::failed_from(samples, t0).collect();
    let mut lines: Vec<String> = failed.iter().take(8).map(|s| s.describe(t0)).collect();
    if failed.len() > lines.len() {
        lines.push(format!("… {} more", failed.len() - lines.len()));
    }
    lines.join("\n  ")
}

/// Time from `t0` until member `id` is down in node 0's pool (bounded).
fn out_of_rotation(rig: &Rig, id: &str, t0: Instant) -> Option<Duration> {
    eventually(Duration::from_secs(25), || rig.health(0, id) == "down")
        .ok()
        .map(|_| t0.elapsed())
}

#[test]
fn losing_a_backup_node_fails_no_request() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut rig) = settled_rig("nodeloss-backup") else {
        return;
    };
    let load = rig.steady_load();
    let t0 = rig.c.lose(1);
    let (f, samples) = watch(load, t0);
    println!("backup {} lost: {}", IDS[1], f.describe());
    assert_eq!(
        f.failed,
        0,
        "requests failed through the master after losing a backup:\n  {}",
        failures(&samples, t0)
    );
}

#[test]
fn losing_the_master_node_answers_fast_and_fails_nothing_after() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut rig) = settled_rig("nodeloss-master") else {
        return;
    };
    let load = rig.steady_load();
    let t0 = rig.c.lose(0);
    let (f, samples) = watch(load, t0);
    let new_master: Vec<&str> = (1..3)
        .filter(|&i| rig.role(i) == "master")
        .map(|i| IDS[i])
        .collect();
    println!(
        "master {} lost: {}; new master {new_master:?}",
        IDS[0],
        f.describe()
    );
    let first = f.first_answer.expect("the VIP never answered again");
    let fails = failures(&samples, t0 + first);
    assert!(
        first <= FIRST_ANSWER_LIMIT,
        "first answer {first:?} after losing the master (limit {FIRST_ANSWER_LIMIT:?})"
    );
    assert_eq!(
        f.failed_after_first, 0,
        "requests failed after the first answer:\n  {fails}"
    );
}

#[test]
fn an_app_that_stops_fails_no_request() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut rig) = settled_rig("nodeloss-appstop") else {
        return;
    };
    let load = rig.steady_load();
    let t0 = Instant::now();
    if let Some(mut app) = rig.apps[2].take() {
        let _ = app.kill();
        let _ = app.wait();
    }
    let gone = out_of_rotation(&rig, IDS[2], t0);
    let (f, samples) = watch(load, t0);
    println!(
        "app of {} stopped (connection refused): {}; down in the master's pool after {gone:?}",
        IDS[2],
        f.describe(),
    );
    assert_eq!(
        f.failed,
        0,
        "requests failed after an app stopped:\n  {}",
        failures(&samples, t0)
    );
}

/// `iptables` in node `i`'s namespace; panics with its stderr on failure.
fn iptables(rig: &Rig, i: usize, args: &[&str]) {
    let mut argv = vec!["iptables"];
    argv.extend_from_slice(args);
    let out = rig.c.exec(rig.c.ns_name(i), &argv);
    assert!(
        out.status.success(),
        "iptables {args:?} (apt-get install iptables): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_blackholed_member_delays_no_request_and_leaves_rotation() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(rig) = settled_rig("nodeloss-blackhole") else {
        return;
    };
    // The member's normal connect time, from the master's namespace.
    let app = SocketAddr::from((rig.c.node_ip(2), APP_PORT));
    let mut connects: Vec<Duration> = (0..20)
        .filter_map(|_| connect_time(rig.c.ns_name(0), app))
        .collect();
    connects.sort();
    let normal = connects[connects.len() / 2];
    let load = rig.steady_load();
    let mut steady: Vec<Duration> = load.samples().iter().map(|s| s.latency).collect();
    steady.sort();
    let request = steady[steady.len() / 2];
    let bound = request + normal * 2 + HEDGE_ALLOWANCE + SCHED_SLACK;
    let t0 = Instant::now();
    let port = APP_PORT.to_string();
    iptables(
        &rig,
        2,
        &["-I", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
    );
    let left = out_of_rotation(&rig, IDS[2], t0);
    let (f, samples) = watch(load, t0);
    let worst = samples
        .iter()
        .filter(|s| s.start >= t0)
        .map(|s| s.latency)
        .max()
        .unwrap_or_default();
    println!(
        "app port of {} blackholed: worst wait {worst:?} (bound {bound:?} = request {request:?} + 2 x connect {normal:?} + {HEDGE_ALLOWANCE:?} + {SCHED_SLACK:?}); {}; out of rotation after {left:?} (limit {LEAVE_ROTATION_LIMIT:?})",
        IDS[2],
        f.describe()
    );
    assert!(
        worst <= bound,
        "a request waited {worst:?} (bound {bound:?}):\n  {}",
        failures(&samples, t0)
    );
    let left = left.expect("the blackholed member never left rotation");
    assert!(
        left <= LEAVE_ROTATION_LIMIT,
        "left rotation after {left:?} (limit {LEAVE_ROTATION_LIMIT:?})"
    );
}

/// Removes the VIP wherever a killed master left it.
fn drop_vip(rig: &Rig) {
    let vip = format!("{}/24", rig.vip);
    for i in rig.holders() {
        rig.c.exec(
            rig.c.ns_name(i),
            &["ip", "addr", "del", &vip, "dev", "eth0"],
        );
    }
}

#[test]
fn simultaneous_starts_make_the_highest_priority_the_only_master() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !root_or_skip("simultaneous_starts_make_the_highest_priority_the_only_master") {
        return;
    }
    let mut rig = Rig::new("nodeloss-starts");
    let mut bad = Vec::new();
    for k in 1..=10 {
        drop_vip(&rig);
        let t = Instant::now();
        rig.start_all();
        rig.wait_settled();
        let settled = t.elapsed();
        let entered: Vec<Vec<(String, String)>> = (0..3).map(|i| rig.roles_entered(i)).collect();
        let roles: Vec<Vec<&str>> = entered
            .iter()
            .map(|t| t.iter().map(|(r, _)| r.as_str()).collect())
            .collect();
        println!("start {k}: settled after {settled:?}; roles entered {roles:?}");
        let was_master = |i: usize| roles[i].contains(&"master");
        if was_master(1) || was_master(2) || !was_master(0) {
            bad.push(format!("start {k}: {entered:?}"));
        }
        for i in 0..3 {
            rig.c.kill(i);
        }
    }
    assert!(
        bad.is_empty(),
        "a node other than {} (priority 150) was master:\n{}",
        IDS[0],
        bad.join("\n")
    );
}
