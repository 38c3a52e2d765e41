//! The netns cluster: network namespaces joined by a bridge, one namespace per
//! node, one client namespace, with faults (kill, lose, pause, partition, heal) and a
//! cleanup that always runs, on panic too. Layout, addresses and cleanup rules:
//! docs/testing.md, "The netns cluster".

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// First component of every name this harness creates.
pub const NAME_PREFIX: &str = "dynia-";
/// The node's (and the client's) interface on the bridge, inside its namespace.
pub const NODE_IF: &str = "eth0";
/// Host part of the client's address.
pub const CLIENT_HOST: u8 = 200;
/// Default bound of [`NetnsCluster::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// Why netns tests cannot run here, if they cannot: not root, or no `ip`.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    skip_reason_for(unsafe { libc::geteuid() })
}

/// [`skip_reason`] for a given effective uid (testable without changing uid).
pub fn skip_reason_for(euid: u32) -> Option<String> {
    if euid != 0 {
        return Some(format!(
            "needs root (euid is {euid}): network namespaces, bridges and raw sockets need CAP_SYS_ADMIN/CAP_NET_ADMIN/CAP_NET_RAW; CI runs as root"
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("needs `ip` from iproute2 (apt-get install iproute2)".into()),
    }
}

/// `true` when the test may go on; otherwise prints why `test` skips.
/// With `DYNIA_REQUIRE_ROOT_TESTS=1` (set by `.ci/run`, which runs as
/// root) a test that would skip fails instead, so CI cannot go green
/// without having run them.
pub fn root_or_skip(test: &str) -> bool {
    match skip_reason() {
        None => true,
        Some(why) => {
            assert!(
                std::env::var_os("DYNIA_REQUIRE_ROOT_TESTS").is_none_or(|v| v != "1"),
                "{test} must run here (DYNIA_REQUIRE_ROOT_TESTS=1) but cannot: {why}"
            );
            eprintln!("skip {test}: {why}");
            false
        }
    }
}

/// An HTTP answer seen by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// Runs `argv` (no shell) with a time bound; on timeout kills it and says so
/// in the returned stderr. Output is read on helper threads (no pipe stalls).
pub fn run_bounded(argv: &[&str], timeout: Duration) -> io::Result<Output> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = t_out.join().unwrap_or_default();
    let mut stderr = t_err.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[killed after {timeout:?}: {argv:?}]").as_bytes());
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `ip ARGS…` (bounded); panics with its stderr when it fails.
pub fn ip(args: &[&str]) -> String {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let out = run_bounded(&argv, EXEC_TIMEOUT).expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of all network namespaces (`ip netns list`, ids stripped).
pub fn netns_list() -> Vec<String> {
    let out = run_bounded(&["ip", "netns", "list"], EXEC_TIMEOUT).expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// What is left of a cluster whose prefix is `prefix`: its namespaces, and
/// any interface in the root namespace whose name or alias mentions it
/// (there should never be one). Empty after a cluster is dropped.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(|n| format!("netns {n}"))
        .collect();
    let links = run_bounded(&["ip", "-o", "link", "show"], EXEC_TIMEOUT).expect("ip link");
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        if l.contains(prefix) {
            left.push(format!("link {l}"));
        }
    }
    left
}

/// SIGKILLs every process in namespace `ns` (`ip netns pids`). Never panics.
fn kill_all_in(ns: &str) {
    let Ok(out) = run_bounded(&["ip", "netns", "pids", ns], EXEC_TIMEOUT) else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain kill(2) on a pid that `ip netns pids` reported.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// SIGKILLs every process in namespace `ns`, then deletes it; `true` if
/// this call deleted it. Never panics.
fn destroy_netns(ns: &str) -> bool {
    kill_all_in(ns);
    matches!(run_bounded(&["ip", "netns", "del", ns], EXEC_TIMEOUT), Ok(o) if o.status.success())
}

/// Removes namespaces of earlier runs whose process is gone
/// (`dynia-<pid>-<n>-…` with `<pid>` dead). Live runs are left alone.
pub fn remove_stale() -> Vec<String> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        if destroy_netns(&ns) {
            removed.push(ns);
        }
    }
    removed
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`
/// (`setns(CLONE_NEWNET)` affects that thread only; threads it starts, e.g.
/// a tokio runtime's, inherit it). Panics in `f` propagate.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let joined = std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; changes only this thread's namespace.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// One netns cluster. See the module doc.
pub struct NetnsCluster {
    prefix: String,
    subnet: u8,
    switch: String,
    nodes: Vec<String>,
    client: String,
    /// Each node's main process (from [`NetnsCluster::spawn_node`]).
    procs: Vec<Option<Child>>,
    /// Logs of spawned processes; removed on drop unless the test failed.
    log_dir: PathBuf,
    spawned: u32,
}

impl NetnsCluster {
    /// Builds a cluster of `n_nodes` nodes plus a client. Panics (with the
    /// failing command) if the host cannot; call [`root_or_skip`] first.
    pub fn new(n_nodes: usize) -> NetnsCluster {
        assert!(
            (1..=32).contains(&n_nodes),
            "1..=32 nodes (a cluster has 1-32 members)"
        );
        let stale = remove_stale();
        if !stale.is_empty() {
            eprintln!("netns: removed stale namespaces of dead runs: {stale:?}");
        }
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("{NAME_PREFIX}{pid}-{n}");
        // 10.99.X.0/24 with X from pid and counter: distinct across clusters
        // of one run (and usually across runs), though the namespaces keep
        // them apart anyway.
        let subnet = ((pid.wrapping_mul(7).wrapping_add(n)) % 250 + 1) as u8;
        let log_dir = std::env::temp_dir().join(format!("{prefix}-logs"));
        let _ = fs::create_dir_all(&log_dir);
        let c = NetnsCluster {
            switch: format!("{prefix}-sw"),
            nodes: (0..n_nodes).map(|i| format!("{prefix}-n{i}")).collect(),
            client: format!("{prefix}-c"),
            prefix,
            subnet,
            procs: (0..n_nodes).map(|_| None).collect(),
            log_dir,
            spawned: 0,
        };
        // From here on, Drop cleans up whatever part was built.
        let sw = c.switch.clone();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        let members: Vec<(String, String, u8)> = c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns.clone(), format!("v{i}"), 10 + i as u8))
            .chain(std::iter::once((
                c.client.clone(),
                "vc".to_owned(),
                CLIENT_HOST,
            )))
            .collect();
        for (ns, port, host) in members {
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", NODE_IF, "netns",
                &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "link", "set", NODE_IF, "up"]);
            let addr = format!("{}/24", c.addr(host));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", NODE_IF]);
        }
        c
    }

    /// `dynia-<pid>-<n>`: every namespace of this cluster starts with it and `-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `X` of 10.99.X.0/24.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// 10.99.X.`host`: any address on the cluster's subnet (e.g. a VIP).
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.subnet, host)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has 1..=32 nodes (see [`NetnsCluster::new`]).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s address, 10.99.X.(10+i).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.nodes.len(), "no node {i}");
        self.addr(10 + i as u8)
    }

    /// The client's address, 10.99.X.200.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.addr(CLIENT_HOST)
    }

    /// Node `i`'s namespace.
    pub fn ns_name(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// The client's namespace.
    pub fn client_ns(&self) -> &str {
        &self.client
    }

    /// The switch's namespace (holds `br0` and the `v<i>`/`vc` ports).
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Node `i`'s MAC address on the bridge (its `eth0`).
    pub fn mac(&self, i: usize) -> String {
        let out = ip(&["-n", &self.nodes[i], "-o", "link", "show", NODE_IF]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {out:?}"))
            .to_owned()
    }

    /// The MAC that namespace `ns` has in its neighbour table for `ip`, and
    /// the entry's state, e.g. `("aa:bb:…", "REACHABLE")`; `None` if no entry.
    pub fn neigh(&self, ns: &str, addr: Ipv4Addr) -> Option<(String, String)> {
        let out = ip(&["-n", ns, "neigh", "show", &addr.to_string(), "dev", NODE_IF]);
        let line = out.lines().next()?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let mac = words
            .iter()
            .position(|w| *w == "lladdr")
            .and_then(|p| words.get(p + 1))?;
        Some((mac.to_string(), words.last()?.to_string()))
    }

    /// Runs `argv` in namespace `ns` (`ip netns exec`, no shell) and waits
    /// at most [`EXEC_TIMEOUT`].
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Output {
        self.exec_timeout(ns, argv, EXEC_TIMEOUT)
    }

    /// [`NetnsCluster::exec`] with its own bound; a command still running
    /// then is killed (its stderr says so).
    pub fn exec_timeout(&self, ns: &str, argv: &[&str], timeout: Duration) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        run_bounded(&full, timeout).unwrap_or_else(|e| panic!("run {full:?}: {e}"))
    }

    /// Starts `argv` in namespace `ns`; stdout and stderr go to a log file
    /// (see [`NetnsCluster::log_dir`]). The caller owns the child; the
    /// cluster still kills it on drop (it kills everything in its namespaces).
    pub fn spawn(&mut self, ns: &str, argv: &[&str]) -> Child {
        self.spawned += 1;
        let log = self.log_dir.join(format!("{ns}-{}.log", self.spawned));
        let file = File::create(&log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let file2 = file.try_clone().expect("dup log fd");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns}: {e}"))
    }

    /// Starts node `i`'s main process (the one [`kill`](Self::kill),
    /// [`pause`](Self::pause) and [`resume`](Self::resume) act on). Replaces
    /// (and kills) an earlier one. Returns its pid.
    pub fn spawn_node(&mut self, i: usize, argv: &[&str]) -> u32 {
        self.kill(i);
        let ns = self.nodes[i].clone();
        let child = self.spawn(&ns, argv);
        let pid = child.id();
        self.procs[i] = Some(child);
        pid
    }

    /// Where spawned processes' logs go.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.log_dir
    }

    /// Whether node `i`'s main process is alive (paused counts as alive).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.procs[i].as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs node `i`'s main process and reaps it (no-op if none).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            // Resume first: a stopped process dies on SIGKILL anyway, but
            // this keeps the order of events obvious in logs.
            // It may have exited (and been reaped) already: ignore errors.
            // SAFETY: kill(2) on our own child's pid.
            let _ = unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOPs node `i`'s main process (it keeps its sockets; peers see silence).
    pub fn pause(&mut self, i: usize) {
        let pid = self.node_pid(i);
        self.signal_pid(pid, libc::SIGSTOP);
    }

    /// SIGCONTs node `i`'s main process.
    pub fn resume(&mut self, i: usize) {
        let pid = self.node_pid(i);
        self.signal_pid(pid, libc::SIGCONT);
    }

    fn node_pid(&mut self, i: usize) -> u32 {
        assert!(self.is_running(i), "node {i} has no running process");
        self.procs[i].as_ref().expect("running").id()
    }

    fn signal_pid(&self, pid: u32, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid (not yet reaped).
        let rc = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    /// Loses node `i` the way a droplet is lost: its `eth0` and its switch
    /// port go down first (so nothing it sends while dying, not even a RST,
    /// reaches anyone), then every process in its namespace (daemon, app,
    /// anything else) is SIGKILLed and its main process reaped. Returns the
    /// moment it was cut off (its links down: the loss, as others see it).
    /// Not undone: the node stays lost.
    pub fn lose(&mut self, i: usize) -> Instant {
        ip(&["-n", &self.nodes[i], "link", "set", NODE_IF, "down"]);
        let cut = Instant::now();
        ip(&["-n", &self.switch, "link", "set", &format!("v{i}"), "down"]);
        kill_all_in(&self.nodes[i]);
        self.kill(i);
        cut
    }

    /// Cuts node `i` off the bridge: its switch port goes down, so nothing
    /// gets in or out (its own `eth0` loses carrier).
    pub fn partition(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("v{i}"), "down"]);
    }

    /// Undoes [`partition`](Self::partition).
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("v{i}"), "up"]);
    }

    /// `GET http://addr:port/path` from the client namespace with curl, 1 s
    /// bound (`--noproxy '*'`: never through a proxy from the environment).
    /// `Err` carries curl's exit code and message when no answer came.
    pub fn client_get(&self, addr: Ipv4Addr, port: u16, path: &str) -> Result<HttpAnswer, String> {
        self.get_from(&self.client, addr, port, path, Duration::from_secs(1))
    }

    /// Node `i`'s `/status.json` (admin on `port`), read from the client
    /// namespace within 1 s; `None` if it does not answer or is not JSON.
    pub fn status_json(&self, i: usize, port: u16) -> Option<serde_json::Value> {
        let a = self
            .get_from(
                self.client_ns(),
                self.node_ip(i),
                port,
                "/status.json",
                Duration::from_secs(1),
            )
            .ok()?;
        serde_json::from_str(&a.body).ok()
    }

    /// Like [`client_get`](Self::client_get) from any namespace, with a bound.
    pub fn get_from(
        &self,
        ns: &str,
        addr: Ipv4Addr,
        port: u16,
        path: &str,
        limit: Duration,
    ) -> Result<HttpAnswer, String> {
        let url = format!("http://{addr}:{port}{path}");
        let secs = format!("{:.3}", limit.as_secs_f64());
        let out = self.exec_timeout(
            ns,
            &[
                "curl",
                "-s",
                "-S",
                "--noproxy",
                "*",
                "-m",
                &secs,
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &url,
            ],
            limit + Duration::from_secs(2),
        );
        if !out.status.success() {
            return Err(format!(
                "GET {url} from {ns}: curl {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = code
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("GET {url}: no status in {text:?}"))?;
        Ok(HttpAnswer {
            status,
            body: body.to_owned(),
        })
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        for ns in self
            .nodes
            .iter()
            .chain([&self.client, &self.switch])
            .collect::<Vec<_>>()
        {
            let _ = destroy_netns(ns);
        }
        if std::thread::panicking() {
            eprintln!(
                "netns: test failed; logs of spawned processes kept in {}",
                self.log_dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}
