//! The rigs on the netns cluster (dynia; keepalived alone or with HAProxy on
//! every node, the seeds' stack) and the saturation soak.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::client::{self, Load};
use crate::procs::{self, nap};
use dynia_testkit::eventually;
use dynia_testkit::netns::{self, in_netns, NetnsCluster};

const PROXY_PORT: u16 = 8000;
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9180;
const IDS: [&str; 3] = ["alder-lynx", "birch-mole", "cedar-wren"];
const PRIORITIES: [u32; 3] = [150, 140, 130];
/// Bound of every "wait until the rig is up" step.
const UP_WAIT: Duration = Duration::from_secs(30);
/// Successes in a row that make the client side "stable".
const STABLE_RUN: usize = 20;

/// The harness's temporary directory, removed at the end.
pub struct TmpDir(pub PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct RigCtx {
    pub dynia: PathBuf,
    pub keepalived: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
    pub tmp: TmpDir,
    /// `[election] rt_priority` for the dynia nodes; `None` = their default.
    pub rt_priority: Option<u8>,
}

/// The election under test: dynia's own, or keepalived (VRRPv3, 0.2 s).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    Dynia,
    KeepalivedV3,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Dynia => "dynia (default advert 100ms, l2)",
            Config::KeepalivedV3 => "keepalived VRRPv3 advert_int 0.2",
        }
    }

    pub fn advert(self) -> Duration {
        match self {
            Config::Dynia => Duration::from_millis(100),
            Config::KeepalivedV3 => Duration::from_millis(200),
        }
    }

    /// RFC 5798 §6.1: 3 × advert + (256 − priority) × advert / 256.
    /// `priority` is the backup's.
    pub fn master_down_interval(self, priority: u32) -> Duration {
        let a = self.advert();
        a * 3 + a * (256 - priority) / 256
    }
}

/// The health checks of a dynia rig's service.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Health {
    /// No `[service.health]`: the defaults (5 s, 2 s, fall 3, rise 2).
    Defaults,
    /// Every 500 ms (the soak, where the apps stay up).
    Fast,
}

/// Times from the kill, per the new master's log (dynia only).
#[derive(Default, Clone)]
pub struct Phases {
    /// "election state changed role=master".
    pub master: Option<Duration>,
    /// "l2: address on interface, first gratuitous ARP sent".
    pub claimed: Option<Duration>,
    /// The new master's Master_Down_Interval ("election started … master_down_ms").
    pub master_down: Option<Duration>,
}

impl Phases {
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.master {
            let _ = write!(s, "master at {:.0} ms", m.as_secs_f64() * 1000.0);
        }
        if let Some(c) = self.claimed {
            let _ = write!(s, ", VIP+GARP at {:.0} ms", c.as_secs_f64() * 1000.0);
        }
        s
    }
}

/// A uniformly random duration in `[0, max)` (std's randomly keyed hasher).
pub fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let frac = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(frac)
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `2026-11-22T15:04:33.123456Z` (tracing's default timestamp) as Unix seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

/// The log file of the process spawned in `ns` whose log contains `marker`.
fn find_log(c: &NetnsCluster, ns: &str, marker: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}-");
    let mut found = None;
    for e in std::fs::read_dir(c.log_dir()).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains(marker) {
                found = Some(e.path());
            }
        }
    }
    found
}

/// Log lines of `path` stamped within `[t0, t1]` (Unix seconds) that hold
/// one of `needles`, as `(seconds after t0, text after the timestamp)`.
fn log_lines_between(path: &Path, t0: f64, t1: f64, needles: &[&str]) -> Vec<(f64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            let t = parse_rfc3339(ts)?;
            (t0..=t1)
                .contains(&t)
                .then(|| (t - t0, rest.trim().to_string()))
        })
        .collect()
}

/// Time from `t0` (Unix seconds) to the first log line after it holding
/// every one of `needles`.
fn log_time_after(path: &Path, t0: f64, needles: &[&str]) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| parse_rfc3339(l.split_whitespace().next()?))
        .find(|&t| t >= t0)
        .map(|t| Duration::from_secs_f64(t - t0))
}

pub fn dump_logs(c: &NetnsCluster) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(c.log_dir()) {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let _ = writeln!(s, "--- {}:\n{}", p.display(), procs::tail(&p, 15));
        }
    }
    s
}

/// Nodes whose eth0 carries `vip`.
fn holders(c: &NetnsCluster, vip: Ipv4Addr) -> Vec<usize> {
    let want = format!(" {vip}/");
    (0..c.len())
        .filter(|&i| {
            let out = c.exec(
                c.ns_name(i),
                &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
            );
            String::from_utf8_lossy(&out.stdout).contains(&want)
        })
        .collect()
}

/// `GET path` on node `i`'s admin listener, from the client namespace.
fn admin_get(c: &NetnsCluster, i: usize, path: &str) -> Option<String> {
    let addr = SocketAddr::from((c.node_ip(i), ADMIN_PORT));
    let path = path.to_string();
    in_netns(c.client_ns(), move || {
        client::get(
            addr,
            &path,
            Duration::from_millis(500),
            Duration::from_secs(1),
            true,
        )
    })
    .and_then(|(st, body)| (st == 200).then_some(body))
}

pub fn role(c: &NetnsCluster, i: usize) -> String {
    admin_get(c, i, "/status.json")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["role"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn transitions(c: &NetnsCluster, i: usize) -> Option<f64> {
    let text = admin_get(c, i, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with("dynia_election_transitions_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// The rig's cluster document sets no `[election]`: the default 100 ms.
const DEFAULT_ADVERT_S: f64 = 0.1;

/// `dynia_election_advert_gap_seconds` buckets: (le, cumulative count),
/// `+Inf` last.
fn gap_buckets(c: &NetnsCluster, i: usize) -> Option<Vec<(f64, f64)>> {
    let text = admin_get(c, i, "/metrics")?;
    let mut out = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("dynia_election_advert_gap_seconds_bucket{le=\"") else {
            continue;
        };
        let (le, tail) = rest.split_once('"')?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        out.push((le, tail.split_whitespace().last()?.parse().ok()?));
    }
    (!out.is_empty()).then_some(out)
}

/// One line on the gaps between a master's adverts as a node heard them
/// during the soak (after - before): how many, how many longer than 1.5x,
/// 2x and 3x the interval, and the bucket the longest fell in.
fn gap_line(
    before: Option<&[(f64, f64)]>,
    after: Option<&[(f64, f64)]>,
    interval_s: f64,
) -> String {
    let (Some(b), Some(a)) = (before, after) else {
        return "advert gaps: ?".into();
    };
    if a.len() != b.len() {
        return "advert gaps: ?".into();
    }
    let d: Vec<(f64, f64)> = a.iter().zip(b).map(|(x, y)| (x.0, x.1 - y.1)).collect();
    let total = d.last().map_or(0.0, |x| x.1);
    if total == 0.0 {
        return "advert gaps: none heard (master)".into();
    }
    let over = |t: f64| -> f64 {
        let at_most = d
            .iter()
            .filter(|x| x.0 <= t + 1e-9)
            .map(|x| x.1)
            .fold(0.0, f64::max);
        total - at_most
    };
    let mut lo = 0.0;
    let mut longest = String::new();
    for (le, cum) in &d {
        if *cum >= total {
            longest = if le.is_finite() {
                format!("{lo:.3}-{le:.3} s")
            } else {
                format!("> {lo:.3} s")
            };
            break;
        }
        lo = *le;
    }
    format!(
        "advert gaps heard: {total}, > {:.0} ms: {}, > {:.0} ms: {}, > {:.0} ms: {}, longest in {longest}",
        1.5 * interval_s * 1000.0,
        over(1.5 * interval_s),
        2.0 * interval_s * 1000.0,
        over(2.0 * interval_s),
        3.0 * interval_s * 1000.0,
        over(3.0 * interval_s),
    )
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The dynia rig's cluster document: no `[election]` table at all (advert
/// 100 ms, preempt on), one service over the three apps.
fn dynia_cluster_doc(c: &NetnsCluster, health: Health) -> String {
    let mut cluster = String::from("generation = 1\ncluster = \"failbench\"\n\n");
    for (i, (id, prio)) in IDS.iter().zip(PRIORITIES).enumerate() {
        let _ = write!(
            cluster,
            "[[member]]\nid = \"{id}\"\nprivate_ip = \"{}\"\npriority = {prio}\n\n",
            c.node_ip(i),
        );
    }
    let _ = write!(
        cluster,
        "[[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {APP_PORT}\n"
    );
    if health == Health::Fast {
        cluster.push_str(
            "[service.health]\ninterval = \"500ms\"\ntimeout = \"500ms\"\nfall = 3\nrise = 2\n",
        );
    }
    cluster
}

/// A running dynia cluster: 3 `dynia run` nodes (l2 driver) each with a demo
/// app on `node_ip:8080`; node 0 is master, the VIP answers.
pub struct DyniaRig {
    pub c: NetnsCluster,
    pub vip: Ipv4Addr,
    pub pids: Vec<u32>,
    apps: Vec<Child>,
}

impl Drop for DyniaRig {
    fn drop(&mut self) {
        for a in &mut self.apps {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Then `c` drops: SIGKILL of everything in its namespaces, namespaces deleted.
    }
}

impl DyniaRig {
    pub fn up(ctx: &RigCtx, tag: &str, health: Health) -> Result<DyniaRig> {
        let mut c = NetnsCluster::new(3);
        let vip = c.addr(100);
        let dir = ctx.tmp.0.join(tag);
        let cluster = dynia_cluster_doc(&c, health);
        let bin = ctx.dynia.display().to_string();
        let mut files = Vec::new();
        let mut apps = Vec::new();
        for (i, id) in IDS.iter().enumerate() {
            let d = dir.join(id);
            std::fs::create_dir_all(&d)?;
            write_secret(&d.join("admin.token"), "failbench-admin-token-0123")?;
            write_secret(&d.join("cluster.key"), "0123456789abcdef0123456789abcdef")?;
            let node = format!(
                "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
                 [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken_file = \"{d}/admin.token\"\n\n\
                 [[listener]]\nname = \"http\"\nbind = \"0.0.0.0:{PROXY_PORT}\"\n\n\
                 [election]\nkey_file = \"{d}/cluster.key\"\n{rt}\n\
                 [reserved_ip]\ndriver = \"l2\"\naddress = \"{vip}\"\ninterface = \"eth0\"\nprefix = 24\n",
                ip = c.node_ip(i),
                d = d.display(),
                rt = ctx
                    .rt_priority
                    .map(|p| format!("rt_priority = {p}\n"))
                    .unwrap_or_default(),
            );
            let path = d.join("dynia.toml");
            std::fs::write(&path, node)?;
            std::fs::write(d.join("cluster.toml"), &cluster)?;
            files.push(path.display().to_string());
            let ns = c.ns_name(i).to_string();
            let listen = format!("{}:{APP_PORT}", c.node_ip(i));
            apps.push(c.spawn(&ns, &[&bin, "upstream", "--listen", &listen, "--id", id]));
        }
        // Apps listening before the daemons start: their first check passes.
        apps_listening(&c, APP_PORT)?;
        let mut pids = Vec::new();
        for (i, f) in files.iter().enumerate() {
            pids.push(c.spawn_node(i, &[&bin, "run", "-c", f]));
        }
        let rig = DyniaRig { c, vip, pids, apps };
        let c = &rig.c;
        let ok = eventually(UP_WAIT, || {
            !procs::interrupted()
                && role(c, 0) == "master"
                && role(c, 1) == "backup"
                && role(c, 2) == "backup"
                && holders(c, vip) == vec![0]
                && all_up(c, 0)
        })
        .is_ok();
        if procs::interrupted() {
            bail!("interrupted");
        }
        if !ok {
            bail!(
                "dynia rig not up within {UP_WAIT:?}: roles {:?}, VIP on {:?}\n{}",
                (0..3).map(|i| role(c, i)).collect::<Vec<_>>(),
                holders(c, vip),
                dump_logs(c)
            );
        }
        Ok(rig)
    }
}

/// Every member up in service `web` as node `i` sees it (`/status.json`).
fn all_up(c: &NetnsCluster, i: usize) -> bool {
    admin_get(c, i, "/status.json")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let m = v["services"][0]["members"].as_array()?.clone();
            Some(m.len() == IDS.len() && m.iter().all(|m| m["health"] == "up"))
        })
        .unwrap_or(false)
}

/// Waits until every node's app accepts connections on `port`.
fn apps_listening(c: &NetnsCluster, port: u16) -> Result<()> {
    for (i, id) in IDS.iter().enumerate().take(c.len()) {
        let addr = SocketAddr::from((c.node_ip(i), port));
        let ok = eventually(UP_WAIT, || {
            in_netns(c.client_ns(), move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
        });
        if ok.is_err() {
            bail!("the app of {id} does not listen on {addr}");
        }
    }
    Ok(())
}

/// A running keepalived cluster; node 0 holds the VIP. Each node namespace
/// has keepalived (VRRP only) and either an HTTP server on 0.0.0.0:8000 or
/// (the seeds' stack) HAProxy there over the three apps on `node_ip:8080`.
pub struct KeepalivedRig {
    pub c: NetnsCluster,
    pub vip: Ipv4Addr,
    vrrp_pidfiles: Vec<PathBuf>,
    apps: Vec<Option<Child>>,
}

impl Drop for KeepalivedRig {
    fn drop(&mut self) {
        for a in self.apps.iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// keepalived.conf for node `i` of a rig whose addresses are `ips`.
///
/// Keywords as documented in keepalived.conf(5) of the Debian package
/// (keepalived 2.2.7, `man 5 keepalived.conf`; also
/// <https://manpages.ubuntu.com/manpages/bionic/man5/keepalived.conf.5.html>):
/// - `global_defs { vrrp_version <2 or 3> }` (default 2);
/// - `vrrp_instance { state MASTER|BACKUP; interface; virtual_router_id;
///   priority; advert_int (seconds, "e.g. 0.92"); unicast_src_ip;
///   unicast_peer { <IPADDR> … }; virtual_ipaddress { <IP>/<MASK> dev <IF> } }`.
///   `unicast_peer` "sends adverts to the following list of ip addresses
///   using unicast" instead of the multicast group.
/// - `state MASTER` with priority < 255 "will wait between 3 and 4 advert
///   intervals before it can transition" (so start-up takes ~3.5 adverts).
/// - Master down: "3 * advert_int + skew_time. Skew_time is defined by
///   RFC3768 and RFC5798" (the `preempt_delay` paragraph).
/// - `nopreempt` is not set: preemption on, as in dynia's default.
///
/// Sub-second `advert_int` is VRRPv3 only (VRRPv2 counts whole seconds), hence
/// `vrrp_version 3` with `advert_int 0.2`. Gratuitous ARP settings are left
/// at their defaults (`vrrp_garp_master_repeat` 5, `vrrp_garp_master_delay` 5).
fn keepalived_conf(i: usize, ips: &[Ipv4Addr], vip: Ipv4Addr) -> String {
    let (version, advert) = (3, "0.2");
    let peers: String = ips
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, ip)| format!("        {ip}\n"))
        .collect();
    format!(
        "! dynia failover benchmark, node {i}\n\
         global_defs {{\n    router_id failbench-n{i}\n    vrrp_version {version}\n}}\n\n\
         vrrp_instance VI_1 {{\n    state {state}\n    interface eth0\n    virtual_router_id 51\n    \
         priority {prio}\n    advert_int {advert}\n    unicast_src_ip {src}\n    unicast_peer {{\n{peers}    }}\n    \
         virtual_ipaddress {{\n        {vip}/24 dev eth0\n    }}\n}}\n",
        state = if i == 0 { "MASTER" } else { "BACKUP" },
        prio = PRIORITIES[i],
        src = ips[i],
    )
}

/// haproxy.cfg of the seeds' stack: HAProxy 2.6 on every node, round robin
/// over the three apps, `check inter 5s fall 3 rise 2`, `option redispatch`,
/// `retries 2`, `timeout connect 2s`; `timeout check 2s` so that a check has
/// the 2 s of dynia's default `[service.health] timeout` (without it HAProxy
/// would give a check the whole `inter`).
fn haproxy_conf(ips: &[Ipv4Addr]) -> String {
    let mut s = format!(
        "global\n    nbthread 1\n    maxconn 2000\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout check 2s\n    retries 2\n    option redispatch\n\n\
         frontend fe\n    bind 0.0.0.0:{PROXY_PORT}\n    default_backend web\n\n\
         backend web\n    balance roundrobin\n    option httpchk GET /dynia-health\n    \
         http-check expect status 200\n"
    );
    for (id, ip) in IDS.iter().zip(ips) {
        let _ = writeln!(
            s,
            "    server {id} {ip}:{APP_PORT} check inter 5s fall 3 rise 2"
        );
    }
    s
}

/// `haproxy -c` on the seeds' configuration before any trial.
pub fn check_haproxy_config(ctx: &RigCtx) -> Result<()> {
    let ha = ctx.haproxy.as_ref().context("no haproxy")?;
    let ips: Vec<Ipv4Addr> = (0..3).map(|i| Ipv4Addr::new(10, 99, 1, 10 + i)).collect();
    let path = ctx.tmp.0.join("check-haproxy.cfg");
    std::fs::write(&path, haproxy_conf(&ips))?;
    let p = path.display().to_string();
    let out = netns::run_bounded(
        &[&ha.display().to_string(), "-c", "-f", &p],
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!(
            "haproxy -c -f {p}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `keepalived --config-test` on the configuration before any trial.
pub fn check_keepalived_config(ctx: &RigCtx) -> Result<()> {
    let ka = ctx.keepalived.as_ref().context("no keepalived")?;
    let ips: Vec<Ipv4Addr> = (0..3).map(|i| Ipv4Addr::new(10, 99, 1, 10 + i)).collect();
    {
        let path = ctx.tmp.0.join("check-keepalived.conf");
        std::fs::write(
            &path,
            keepalived_conf(0, &ips, Ipv4Addr::new(10, 99, 1, 100)),
        )?;
        let ka = ka.display().to_string();
        let p = path.display().to_string();
        let out = netns::run_bounded(&[&ka, "-t", "-f", &p], Duration::from_secs(10))?;
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        // The interface does not exist in the root namespace: that is expected.
        let fatal: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("doesn't exist") && !l.contains("Non-existent interface"))
            .filter(|l| l.contains("rror") || l.contains("nknown keyword"))
            .collect();
        if !fatal.is_empty() {
            bail!("keepalived -t on {}: {}", path.display(), fatal.join("\n"));
        }
    }
    Ok(())
}

/// The HTTP side of a keepalived rig: the apps on port 8000, or (`haproxy`)
/// the apps on `node_ip:8080` and HAProxy on port 8000 of every node.
fn http_servers(
    c: &mut NetnsCluster,
    ctx: &RigCtx,
    dir: &Path,
    haproxy: bool,
) -> Result<Vec<Option<Child>>> {
    let bin = ctx.dynia.display().to_string();
    let ips: Vec<Ipv4Addr> = (0..3).map(|i| c.node_ip(i)).collect();
    let mut apps = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
        let ns = c.ns_name(i).to_string();
        let listen = match haproxy {
            true => format!("{}:{APP_PORT}", ips[i]),
            false => format!("0.0.0.0:{PROXY_PORT}"),
        };
        apps.push(Some(
            c.spawn(&ns, &[&bin, "upstream", "--listen", &listen, "--id", id]),
        ));
    }
    if haproxy {
        apps_listening(c, APP_PORT)?;
        let ha = ctx.haproxy.as_ref().context("no haproxy")?;
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, haproxy_conf(&ips))?;
        for i in 0..3 {
            let ns = c.ns_name(i).to_string();
            let (ha, conf) = (ha.display().to_string(), conf.display().to_string());
            apps.push(Some(c.spawn(&ns, &[&ha, "-db", "-f", &conf])));
        }
    }
    Ok(apps)
}

impl KeepalivedRig {
    /// With `haproxy`, the seeds' stack; else an HTTP server on port 8000.
    pub fn up(ctx: &RigCtx, tag: &str, haproxy: bool) -> Result<KeepalivedRig> {
        let cfg = Config::KeepalivedV3;
        let ka = ctx
            .keepalived
            .as_ref()
            .context("no keepalived")?
            .display()
            .to_string();
        let mut c = NetnsCluster::new(3);
        let vip = c.addr(100);
        let dir = ctx.tmp.0.join(tag);
        std::fs::create_dir_all(&dir)?;
        let ips: Vec<Ipv4Addr> = (0..3).map(|i| c.node_ip(i)).collect();
        let apps = http_servers(&mut c, ctx, &dir, haproxy)?;
        let mut vrrp_pidfiles = Vec::new();
        let started = Instant::now();
        for i in 0..3 {
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(&conf, keepalived_conf(i, &ips, vip))?;
            let pid = dir.join(format!("n{i}.pid"));
            let vpid = dir.join(format!("n{i}.vrrp.pid"));
            // -n --dont-fork, -l --log-console, -D --log-detail, -P --vrrp,
            // -G --no-syslog (keep the host's syslog clean), unique pid files
            // per node (-p parent, -r VRRP child): `keepalived --help` (2.2.7).
            c.spawn_node(
                i,
                &[
                    &ka,
                    "-n",
                    "-l",
                    "-D",
                    "-P",
                    "-G",
                    "-f",
                    &conf.display().to_string(),
                    "-p",
                    &pid.display().to_string(),
                    "-r",
                    &vpid.display().to_string(),
                ],
            );
            vrrp_pidfiles.push(vpid);
        }
        let rig = KeepalivedRig {
            c,
            vip,
            vrrp_pidfiles,
            apps,
        };
        let c = &rig.c;
        let ok = eventually(UP_WAIT, || {
            !procs::interrupted() && holders(c, vip) == vec![0]
        })
        .is_ok();
        if procs::interrupted() {
            bail!("interrupted");
        }
        if !ok {
            bail!(
                "keepalived rig not up within {UP_WAIT:?}: VIP on {:?}\n{}",
                holders(c, vip),
                dump_logs(c)
            );
        }
        // Backups must have settled (their first Master_Down timer has run
        // out while hearing the master) before the master is killed.
        let settle = cfg.master_down_interval(PRIORITIES[2]) + cfg.advert() * 2;
        if let Some(rest) = settle.checked_sub(started.elapsed()) {
            nap(rest)?;
        }
        if holders(c, vip) != vec![0] {
            bail!(
                "keepalived rig unstable: VIP on {:?}\n{}",
                holders(c, vip),
                dump_logs(c)
            );
        }
        Ok(rig)
    }

    pub fn vrrp_child_pid(&self, i: usize) -> Option<i32> {
        std::fs::read_to_string(&self.vrrp_pidfiles[i])
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

pub fn wait_client_stable(c: &NetnsCluster, load: &Load, id: Option<&str>) -> Result<()> {
    let ok = eventually(UP_WAIT, || {
        procs::interrupted() || load.stable(STABLE_RUN, id)
    })
    .is_ok();
    if procs::interrupted() {
        bail!("interrupted");
    }
    if !ok {
        bail!(
            "the VIP does not answer steadily{}\n{}",
            id.map(|i| format!(" from {i}")).unwrap_or_default(),
            dump_logs(c)
        );
    }
    Ok(())
}

/// Times in the log of node `j` (the new master) from `w0` (Unix seconds).
pub fn dynia_phases(c: &NetnsCluster, j: usize, w0: f64) -> Phases {
    let mut phases = Phases::default();
    let Some(log) = find_log(c, c.ns_name(j), "election started") else {
        return phases;
    };
    phases.master = log_time_after(&log, w0, &["election state changed", "role=\"master\""])
        .or_else(|| log_time_after(&log, w0, &["election state changed", "role=master"]));
    phases.claimed = log_time_after(&log, w0, &["first gratuitous ARP sent"]);
    phases.master_down = std::fs::read_to_string(&log)
        .ok()
        .and_then(|t| {
            let at = t.find("master_down_ms=")? + "master_down_ms=".len();
            let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .map(Duration::from_millis);
    phases
}

/// Figures of one saturation soak.
pub struct SoakReport {
    pub what: String,
    pub duration: Duration,
    pub connections: u32,
    pub wrk: Option<crate::wrk::WrkReport>,
    pub wrk_raw: String,
    /// One line per node: role/state before and after, transition counters.
    pub node_lines: Vec<String>,
    /// Election transitions during the soak, all nodes (None: not readable).
    pub transitions: Option<f64>,
    /// Changes seen by the once-a-second polls.
    pub changes: Vec<String>,
    pub polls: u32,
    pub holders_after: Vec<usize>,
    pub master_cpu: Option<f64>,
    pub cores: Vec<(usize, f64)>,
    /// Election transitions that are failovers: a node entering or leaving
    /// the master role during the soak (None: not known, e.g. keepalived
    /// whose count above already is of MASTER/BACKUP entries).
    pub false_failovers: Option<usize>,
    /// The nodes' own log lines of election and health events during the
    /// soak (`+seconds node: line`), at most [`EVENT_LINES`].
    pub events: Vec<String>,
    /// Such lines beyond [`EVENT_LINES`], not shown.
    pub events_left_off: usize,
}

/// Log lines of events shown per soak.
const EVENT_LINES: usize = 40;

impl SoakReport {
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} s, wrk -t1 -c{} --timeout 2s against VIP:8000 from the client namespace",
            self.what,
            self.duration.as_secs(),
            self.connections
        );
        match &self.wrk {
            Some(w) => {
                let _ = writeln!(
                    s,
                    "  requests {} ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, socket errors {}, non-2xx/3xx {}",
                    w.requests,
                    w.rps,
                    w.p50.as_secs_f64() * 1000.0,
                    w.p99.as_secs_f64() * 1000.0,
                    w.socket_errors,
                    w.bad_status
                );
            }
            None => {
                let _ = writeln!(s, "  wrk output not understood:\n{}", self.wrk_raw);
            }
        }
        if let Some(cpu) = self.master_cpu {
            let _ = writeln!(s, "  master's process CPU: {cpu:.0}% of one core");
        }
        let _ = writeln!(
            s,
            "  machine: {}",
            self.cores
                .iter()
                .map(|(c, p)| format!("cpu{c} {p:.0}% busy"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for l in &self.node_lines {
            let _ = writeln!(s, "  {l}");
        }
        let ok = self.transitions == Some(0.0) && self.changes.is_empty();
        let _ = writeln!(
            s,
            "  election transitions during the soak: {} (target 0) {}",
            self.transitions.map_or("?".to_string(), |t| format!("{t}")),
            if ok { "ok" } else { "MISS" }
        );
        if let Some(f) = self.false_failovers {
            let _ = writeln!(
                s,
                "  of them failovers (a node entering or leaving master): {f} (target 0) {}",
                if f == 0 { "ok" } else { "MISS" }
            );
        }
        let _ = writeln!(
            s,
            "  polls (every 1 s): {}, changes seen: {}",
            self.polls,
            self.changes.len()
        );
        if !self.events.is_empty() || self.events_left_off > 0 {
            let _ = writeln!(
                s,
                "  election/health events in the nodes' logs during the soak ({} not shown):",
                self.events_left_off
            );
            for e in &self.events {
                let _ = writeln!(s, "    {e}");
            }
        }
        for c in &self.changes {
            let _ = writeln!(s, "    {c}");
        }
        let _ = writeln!(s, "  VIP holders after the soak: {:?}", self.holders_after);
        s
    }
}

/// What [`soak_loop`] saw: how long wrk ran, each CPU's busy share (%) over
/// that time, and the number of polls.
struct SoakRun {
    elapsed: Duration,
    cores: Vec<(usize, f64)>,
    polls: u32,
}

/// Waits for the wrk child (bounded: its duration + 60 s), calling `poll`
/// with the seconds elapsed once a second.
fn soak_loop(wrk: &mut Child, duration: Duration, mut poll: impl FnMut(f64)) -> Result<SoakRun> {
    let started = Instant::now();
    let jiffies0 = procs::cpu_jiffies();
    let deadline = started + duration + Duration::from_secs(60);
    let mut polls = 0u32;
    let mut interrupted = false;
    for _ in 0..duration.as_secs() + 70 {
        if procs::interrupted() {
            interrupted = true;
            break;
        }
        if matches!(wrk.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
            break;
        }
        let tick = Instant::now();
        poll(started.elapsed().as_secs_f64());
        polls += 1;
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let elapsed = started.elapsed();
    let cores = procs::cpu_busy(&jiffies0, &procs::cpu_jiffies());
    if !matches!(wrk.try_wait(), Ok(Some(_))) {
        let _ = wrk.kill();
    }
    let _ = wrk.wait();
    if interrupted {
        bail!("interrupted");
    }
    Ok(SoakRun {
        elapsed,
        cores,
        polls,
    })
}

fn spawn_wrk(
    c: &mut NetnsCluster,
    ctx: &RigCtx,
    vip: Ipv4Addr,
    duration: Duration,
    connections: u32,
) -> Result<Child> {
    let wrk = ctx.wrk.as_ref().context("no wrk")?.display().to_string();
    let url = format!("http://{vip}:{PROXY_PORT}/");
    let secs = format!("{}s", duration.as_secs());
    let conns = connections.to_string();
    let ns = c.client_ns().to_string();
    Ok(c.spawn(
        &ns,
        &[
            &wrk,
            "-t1",
            "-c",
            &conns,
            "-d",
            &secs,
            "--timeout",
            "2s",
            "--latency",
            &url,
        ],
    ))
}

fn wrk_output(c: &NetnsCluster) -> String {
    find_log(c, c.client_ns(), "Requests/sec")
        .or_else(|| find_log(c, c.client_ns(), "Running"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// dynia under saturation: transitions and roles of every node.
pub fn soak(ctx: &RigCtx, duration: Duration, connections: u32) -> Result<SoakReport> {
    println!(
        "soak: {} s of wrk -c{connections} on the dynia master's proxy…",
        duration.as_secs()
    );
    let mut rig = DyniaRig::up(ctx, "soak", Health::Fast)?;
    {
        let load = Load::start(rig.c.client_ns(), SocketAddr::from((rig.vip, PROXY_PORT)));
        wait_client_stable(&rig.c, &load, None)?;
    }
    let n = rig.c.len();
    let before: Vec<Option<f64>> = (0..n).map(|i| transitions(&rig.c, i)).collect();
    let gaps_before: Vec<Option<Vec<(f64, f64)>>> =
        (0..n).map(|i| gap_buckets(&rig.c, i)).collect();
    let roles_before: Vec<String> = (0..n).map(|i| role(&rig.c, i)).collect();
    let master_pid = rig.pids[0];
    let cpu0 = procs::cpu_time(master_pid);
    let w_start = unix_now();
    let mut wrk = spawn_wrk(&mut rig.c, ctx, rig.vip, duration, connections)?;
    let mut last = roles_before.clone();
    let mut changes = Vec::new();
    let c = &rig.c;
    let SoakRun {
        elapsed,
        cores,
        polls,
    } = soak_loop(&mut wrk, duration, |t| {
        for (i, was) in last.iter_mut().enumerate() {
            let r = role(c, i);
            if r != *was {
                changes.push(format!("at {t:.1} s: {} {was} -> {r}", IDS[i]));
                *was = r;
            }
        }
    })?;
    let cpu1 = procs::cpu_time(master_pid);
    let w_end = unix_now();
    // What the nodes themselves logged during the soak: role changes (with
    // their reason), tracking and member health changes.
    let mut events = Vec::new();
    let mut false_failovers = 0usize;
    for i in 0..n {
        let Some(log) = find_log(c, c.ns_name(i), "election started") else {
            continue;
        };
        for (t, line) in log_lines_between(
            &log,
            w_start,
            w_end,
            &[
                "election state changed",
                "proxy tracking changed",
                "member health changed",
            ],
        ) {
            if line.contains("election state changed")
                && (line.contains("role=\"master\"") || roles_before[i] == "master")
            {
                false_failovers += 1;
            }
            events.push((t, format!("+{t:.1} s {}: {line}", IDS[i])));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let events_left_off = events.len().saturating_sub(EVENT_LINES);
    let events: Vec<String> = events.into_iter().take(EVENT_LINES).map(|e| e.1).collect();
    let wrk_raw = wrk_output(c);
    let after: Vec<Option<f64>> = (0..n).map(|i| transitions(c, i)).collect();
    let gaps_after: Vec<Option<Vec<(f64, f64)>>> = (0..n).map(|i| gap_buckets(c, i)).collect();
    let roles_after: Vec<String> = (0..n).map(|i| role(c, i)).collect();
    let mut total = Some(0.0);
    let node_lines = (0..n)
        .map(|i| {
            let d = match (before[i], after[i]) {
                (Some(b), Some(a)) => a - b,
                _ => {
                    total = None;
                    f64::NAN
                }
            };
            total = total.map(|t| t + d);
            format!(
                "{}: role {} -> {}, dynia_election_transitions_total {} -> {} (+{d}); {}",
                IDS[i],
                roles_before[i],
                roles_after[i],
                before[i].map_or("?".into(), |v| v.to_string()),
                after[i].map_or("?".into(), |v| v.to_string()),
                gap_line(
                    gaps_before[i].as_deref(),
                    gaps_after[i].as_deref(),
                    DEFAULT_ADVERT_S
                ),
            )
        })
        .collect();
    Ok(SoakReport {
        what: "dynia".into(),
        duration: elapsed,
        connections,
        wrk: crate::wrk::parse(&wrk_raw).ok(),
        wrk_raw,
        node_lines,
        transitions: total,
        changes,
        polls,
        holders_after: holders(c, rig.vip),
        master_cpu: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64() / elapsed.as_secs_f64() * 100.0),
            _ => None,
        },
        cores,
        false_failovers: Some(false_failovers),
        events,
        events_left_off,
    })
}

/// "Entering … STATE" lines of node `i`'s keepalived log.
fn keepalived_states(c: &NetnsCluster, i: usize) -> Vec<String> {
    find_log(c, c.ns_name(i), "Keepalived")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let at = l.find("Entering ")?;
            Some(l[at + "Entering ".len()..].replace(" STATE", ""))
        })
        .collect()
}

/// keepalived (VRRPv3, advert_int 0.2) while its master's HTTP server is
/// saturated: state changes from its log, VIP holders polled every second.
pub fn keepalived_soak(ctx: &RigCtx, duration: Duration, connections: u32) -> Result<SoakReport> {
    let cfg = Config::KeepalivedV3;
    println!(
        "soak: {} s of wrk -c{connections} on the {} master's HTTP server…",
        duration.as_secs(),
        cfg.name()
    );
    let mut rig = KeepalivedRig::up(ctx, "ka-soak", false)?;
    {
        let load = Load::start(rig.c.client_ns(), SocketAddr::from((rig.vip, PROXY_PORT)));
        wait_client_stable(&rig.c, &load, Some(IDS[0]))?;
    }
    let n = rig.c.len();
    let before: Vec<Vec<String>> = (0..n).map(|i| keepalived_states(&rig.c, i)).collect();
    let vrrp_pid = rig.vrrp_child_pid(0).context("no VRRP child pid")? as u32;
    let cpu0 = procs::cpu_time(vrrp_pid);
    let mut wrk = spawn_wrk(&mut rig.c, ctx, rig.vip, duration, connections)?;
    let mut last = vec![0usize];
    let mut changes = Vec::new();
    let (c, vip) = (&rig.c, rig.vip);
    let SoakRun {
        elapsed,
        cores,
        polls,
    } = soak_loop(&mut wrk, duration, |t| {
        let h = holders(c, vip);
        if h != last {
            changes.push(format!("at {t:.1} s: VIP on {last:?} -> {h:?}"));
            last = h;
        }
    })?;
    let cpu1 = procs::cpu_time(vrrp_pid);
    let wrk_raw = wrk_output(c);
    let after: Vec<Vec<String>> = (0..n).map(|i| keepalived_states(c, i)).collect();
    let mut total = 0.0;
    let node_lines = (0..n)
        .map(|i| {
            let new: Vec<String> = after[i].iter().skip(before[i].len()).cloned().collect();
            total += new.len() as f64;
            format!(
                "{}: states logged before {:?}, during the soak {:?}",
                IDS[i], before[i], new
            )
        })
        .collect();
    Ok(SoakReport {
        what: format!("{} (the master's VRRP process CPU below)", cfg.name()),
        duration: elapsed,
        connections,
        wrk: crate::wrk::parse(&wrk_raw).ok(),
        wrk_raw,
        node_lines,
        transitions: Some(total),
        changes,
        polls,
        holders_after: holders(c, rig.vip),
        master_cpu: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64() / elapsed.as_secs_f64() * 100.0),
            _ => None,
        },
        cores,
        false_failovers: None,
        events: Vec::new(),
        events_left_off: 0,
    })
}
