//! Failover on a real L2 network: three `dynia run` nodes in their own
//! network namespaces on one bridge, the `l2` driver moving a VIP with
//! gratuitous ARP, and a client namespace requesting the VIP continuously.
//! Needs root (namespaces, addresses, raw sockets); elsewhere it skips.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynia_testkit::daemon::{bin, set_nofile, write_secret, TempDir};
use dynia_testkit::eventually;
use dynia_testkit::netns::{in_netns, root_or_skip, NetnsCluster};

const PROXY_PORT: u16 = 8000;
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9180;
const IDS: [&str; 3] = ["alder-lynx", "birch-mole", "cedar-wren"];
const WAIT: Duration = Duration::from_secs(20);

struct Rig {
    c: NetnsCluster,
    files: Vec<PathBuf>,
    vip: Ipv4Addr,
    apps: Vec<std::process::Child>,
    _dir: TempDir,
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
    fn new(tag: &str, preempt: bool) -> Rig {
        let mut c = NetnsCluster::new(3);
        let vip = c.addr(100);
        let dir = TempDir::new(tag);
        let mut cluster =
            format!("generation = 1\ncluster = \"l2test\"\n\n[election]\npreempt = {preempt}\n\n");
        for (i, id) in IDS.iter().enumerate() {
            cluster.push_str(&format!(
                "[[member]]\nid = \"{}\"\nprivate_ip = \"{}\"\npriority = {}\n\n",
                id,
                c.node_ip(i),
                150 - 10 * i
            ));
        }
        cluster.push_str(&format!(
            "[[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {APP_PORT}\n\
             [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n"
        ));
        let mut files = Vec::new();
        let mut apps = Vec::new();
        for (i, id) in IDS.iter().enumerate() {
            let d = dir.0.join(id);
            std::fs::create_dir_all(&d).unwrap();
            write_secret(&d.join("admin.token"), dynia_testkit::daemon::TOKEN);
            write_secret(&d.join("cluster.key"), "0123456789abcdef0123456789abcdef");
            let node = format!(
                "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
                 [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken_file = \"{d}/admin.token\"\n\n\
                 [[listener]]\nname = \"http\"\nbind = \"0.0.0.0:{PROXY_PORT}\"\n\n\
                 [limits]\nshutdown_grace = \"5s\"\n\n\
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
            apps.push(c.spawn(&ns, &[bin(), "upstream", "--listen", &listen, "--id", id]));
        }
        let mut rig = Rig {
            c,
            files,
            vip,
            apps,
            _dir: dir,
        };
        // Node 0 first: with `preempt = false` whoever is master first stays.
        rig.start(0);
        rig.wait_role(0, "master");
        rig.start(1);
        rig.start(2);
        rig
    }

    fn start(&mut self, i: usize) {
        let f = self.files[i].display().to_string();
        self.c.spawn_node(i, &[bin(), "run", "-c", &f]);
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        self.c.status_json(i, ADMIN_PORT)
    }

    fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| s["role"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn wait_role(&self, i: usize, want: &str) {
        assert!(
            eventually(WAIT, || self.role(i) == want).is_ok(),
            "{} never became {want} (is {:?}); logs in {}",
            IDS[i],
            self.role(i),
            self.c.log_dir().display()
        );
    }

    /// Nodes whose eth0 carries the VIP.
    fn holders(&self) -> Vec<usize> {
        (0..3)
            .filter(|&i| {
                let out = self.c.exec(
                    self.c.ns_name(i),
                    &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                );
                String::from_utf8_lossy(&out.stdout).contains(&format!("{}/", self.vip))
            })
            .collect()
    }

    fn vip_answers(&self) -> bool {
        self.c
            .client_get(self.vip, PROXY_PORT, "/")
            .is_ok_and(|a| a.status == 200)
    }

    fn pid(&mut self, i: usize) -> i32 {
        assert!(self.c.is_running(i));
        // spawn_node's child is `ip netns exec`, which execs dynia in place.
        let out = self.c.exec(
            self.c.ns_name(i),
            &[
                "pgrep",
                "-f",
                &format!("run -c {}", self.files[i].display()),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// One request's outcome, as the client saw it.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    ok: bool,
}

/// A client in the client namespace sending `GET /` to the VIP back to back,
/// one connection per request; bounded in count and time.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ns: &str, vip: Ipv4Addr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (st, sa, ns) = (stop.clone(), samples.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let addr = SocketAddr::from((vip, PROXY_PORT));
                let start = Instant::now();
                for _ in 0..200_000 {
                    if st.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(120) {
                        return;
                    }
                    let ok = one_request(addr);
                    sa.lock().unwrap().push(Sample {
                        at: Instant::now(),
                        ok,
                    });
                    if !ok {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        });
        Load {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn one_request(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::with_capacity(512);
    let _ = s.take(64 * 1024).read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// Time from `t0` to the first success after the last failure following it.
fn recovery(samples: &[Sample], t0: Instant) -> Duration {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= t0).collect();
    let last_fail = after.iter().rposition(|s| !s.ok);
    let first_ok = match last_fail {
        Some(k) => after[k + 1..].iter().find(|s| s.ok),
        None => after.iter().find(|s| s.ok),
    };
    first_ok.map_or(Duration::MAX, |s| s.at - t0)
}

fn start_rig(tag: &str, preempt: bool) -> Option<Rig> {
    if !root_or_skip(tag) {
        return None;
    }
    let rig = Rig::new(tag, preempt);
    rig.wait_role(0, "master");
    // Every other node is backup *and has heard node 0 as master*: with
    // preempt off, a node that started late and heard nobody yet would
    // otherwise take mastership from whoever's timer ran out first, which
    // is RFC-correct but not the start these tests assume.
    for (i, id) in IDS.iter().enumerate().skip(1) {
        assert!(
            eventually(WAIT, || {
                rig.role(i) == "backup"
                    && rig.status(i).is_some_and(|s| {
                        s["members"].as_array().is_some_and(|ms| {
                            ms.iter().any(|m| {
                                m["id"] == IDS[0]
                                    && m["role"] == "master"
                                    && m["last_seen_ms"].as_u64().is_some_and(|t| t < 1000)
                            })
                        })
                    })
            })
            .is_ok(),
            "{id} never heard {} as master; logs in {}",
            IDS[0],
            rig.c.log_dir().display()
        );
    }
    assert!(
        eventually(WAIT, || rig.holders() == vec![0]).is_ok(),
        "VIP not on node 0 alone: {:?}",
        rig.holders()
    );
    assert!(
        eventually(WAIT, || rig.vip_answers()).is_ok(),
        "VIP does not answer"
    );
    Some(rig)
}

#[test]
fn sigkill_of_master_moves_the_vip_to_the_next_priority() {
    let Some(mut rig) = start_rig("l2-kill", true) else {
        return;
    };
    rig.wait_role(1, "backup");
    let load = Load::start(rig.c.client_ns(), rig.vip);
    assert!(eventually(WAIT, || load.count() > 20).is_ok());
    let t0 = Instant::now();
    rig.c.kill(0);
    rig.wait_role(1, "master");
    assert_eq!(rig.role(2), "backup");
    let t1 = Instant::now();
    assert!(eventually(WAIT, || load.samples().iter().any(|s| s.ok && s.at > t1)).is_ok());
    let samples = load.finish();
    let took = recovery(&samples, t0);
    eprintln!("failover: VIP answered from the new master {took:?} after SIGKILL of the master");
    assert!(took < WAIT, "the VIP never answered again");
    // The new master holds the VIP (the dead node's kernel may still carry it).
    assert!(rig.holders().contains(&1));
}

#[test]
fn sigterm_of_master_hands_over_without_a_failed_request() {
    let Some(mut rig) = start_rig("l2-term", true) else {
        return;
    };
    rig.wait_role(1, "backup");
    let load = Load::start(rig.c.client_ns(), rig.vip);
    assert!(eventually(WAIT, || load.count() > 20).is_ok());
    let pid = rig.pid(0);
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    rig.wait_role(1, "master");
    assert!(
        eventually(WAIT, || !rig.c.is_running(0)).is_ok(),
        "old master did not exit"
    );
    let t1 = Instant::now();
    assert!(
        eventually(WAIT, || load.samples().iter().filter(|s| s.at > t1).count()
            > 50)
        .is_ok()
    );
    let samples = load.finish();
    let failed = samples.iter().filter(|s| !s.ok).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across a planned handover",
        samples.len()
    );
    assert_eq!(rig.holders(), vec![1]);
    // It let go because its successor said it holds the VIP, not on a timer.
    let ns = rig.c.ns_name(0).to_string();
    let mut logs = String::new();
    for e in std::fs::read_dir(rig.c.log_dir()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("{ns}-")) {
            logs.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    assert!(
        logs.contains("successor holds the reserved ip; letting go"),
        "the old master's log does not show the handover:\n{logs}"
    );
}

#[test]
fn returning_master_preempts_and_one_node_holds_the_vip() {
    let Some(mut rig) = start_rig("l2-preempt", true) else {
        return;
    };
    rig.c.kill(0);
    rig.wait_role(1, "master");
    rig.start(0);
    rig.wait_role(0, "master");
    rig.wait_role(1, "backup");
    assert!(
        eventually(WAIT, || rig.holders() == vec![0]).is_ok(),
        "holders: {:?}",
        rig.holders()
    );
    assert!(eventually(WAIT, || rig.vip_answers()).is_ok());
}

#[test]
fn without_preempt_the_returning_master_stays_backup() {
    let Some(mut rig) = start_rig("l2-nopre", false) else {
        return;
    };
    rig.c.kill(0);
    rig.wait_role(1, "master");
    rig.start(0);
    rig.wait_role(0, "backup");
    // Give it several Master_Down_Intervals to misbehave.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(rig.role(1), "master");
        assert_ne!(rig.role(0), "master");
    }
    assert_eq!(rig.holders(), vec![1]);
}

#[test]
fn partition_and_heal_leave_exactly_one_holder() {
    let Some(rig) = start_rig("l2-split", true) else {
        return;
    };
    rig.c.partition(0);
    rig.wait_role(1, "master");
    // The other side has lost node 0, and only node 0: its pools skip it.
    let liveness = |of: usize| {
        let s = rig.status(1)?;
        let ip = rig.c.node_ip(of).to_string();
        let m = s["members"]
            .as_array()?
            .iter()
            .find(|m| m["private_ip"] == ip.as_str())?;
        m["liveness"].as_str().map(str::to_string)
    };
    assert!(
        eventually(WAIT, || liveness(0).as_deref() == Some("lost")).is_ok(),
        "node 1 does not count node 0 lost: {:?}",
        liveness(0)
    );
    assert_eq!(
        liveness(2).as_deref(),
        Some("heard"),
        "node 2 seen from node 1"
    );
    // Both sides hold the VIP while split: unavoidable on L2, and harmless
    // as the partitioned side is unreachable.
    rig.c.heal(0);
    assert!(
        eventually(WAIT, || rig.holders() == vec![0] && rig.role(1) == "backup").is_ok(),
        "after heal: holders {:?}, node 1 {}",
        rig.holders(),
        rig.role(1)
    );
    // The client's ARP cache follows the re-announced VIP.
    assert!(
        eventually(WAIT, || rig.vip_answers()).is_ok(),
        "VIP does not answer after heal"
    );
    let load = Load::start(rig.c.client_ns(), rig.vip);
    assert!(eventually(WAIT, || load.count() > 30).is_ok());
    let samples = load.finish();
    assert!(samples.iter().all(|s| s.ok), "requests failed after heal");
}

#[test]
fn master_whose_proxy_cannot_serve_gives_up_mastership() {
    let Some(rig) = start_rig("l2-track", true) else {
        return;
    };
    // The master's proxy loses every member: its health checks are rejected.
    let ns0 = rig.c.ns_name(0).to_string();
    let port = APP_PORT.to_string();
    let out = rig.c.exec(
        &ns0,
        &[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", &port, "-j", "REJECT",
        ],
    );
    assert!(
        out.status.success(),
        "iptables failed (apt-get install iptables; CI installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rig.wait_role(0, "fault");
    rig.wait_role(1, "master");
    assert!(
        eventually(WAIT, || rig.holders() == vec![1]).is_ok(),
        "holders: {:?}",
        rig.holders()
    );
    assert!(eventually(WAIT, || rig.vip_answers()).is_ok());
    // Repaired: it serves again and, with the highest priority, takes back over.
    let out = rig.c.exec(
        &ns0,
        &[
            "iptables", "-D", "OUTPUT", "-p", "tcp", "--dport", &port, "-j", "REJECT",
        ],
    );
    assert!(out.status.success());
    rig.wait_role(0, "master");
    assert!(
        eventually(WAIT, || rig.holders() == vec![0]).is_ok(),
        "holders: {:?}",
        rig.holders()
    );
}

#[test]
fn master_whose_proxy_listener_breaks_gives_up_mastership() {
    let Some(mut rig) = start_rig("l2-listener", true) else {
        return;
    };
    // Break the master's listener: a few descriptors to spare, then clients
    // that take them all, so that accept fails (EMFILE) with more waiting.
    let pid = rig.pid(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let old = set_nofile(pid, fds + 4);
    let target = SocketAddr::from((rig.c.node_ip(0), PROXY_PORT));
    let clients: Vec<TcpStream> = in_netns(rig.c.client_ns(), move || {
        (0..64)
            .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok())
            .collect()
    });
    assert!(clients.len() > 8, "only {} connections", clients.len());
    let broken = Instant::now();
    rig.wait_role(1, "master");
    eprintln!(
        "mastership moved {:?} after the master's listener broke",
        broken.elapsed()
    );
    assert!(
        eventually(WAIT, || rig.holders().contains(&1)).is_ok(),
        "holders: {:?}",
        rig.holders()
    );
    assert!(eventually(WAIT, || rig.vip_answers()).is_ok());
    let ns = rig.c.ns_name(0).to_string();
    let logs = || {
        let mut text = String::new();
        for e in std::fs::read_dir(rig.c.log_dir()).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(&format!("{ns}-")) {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        text
    };
    let text = logs();
    assert!(
        text.contains("accept failing") && text.contains("can_serve=false"),
        "the old master's log does not show why it let go:\n{text}"
    );
    // Descriptors back: it serves again and, with the highest priority, takes over.
    drop(clients);
    set_nofile(pid, old);
    rig.wait_role(0, "master");
    assert!(
        eventually(WAIT, || rig.holders() == vec![0]).is_ok(),
        "holders: {:?}",
        rig.holders()
    );
    assert!(eventually(WAIT, || rig.vip_answers()).is_ok());
}
