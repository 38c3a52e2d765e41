//! `dynia demo`: the product on a fresh machine, without root or cloud access.
//!
//! Three `dynia run` processes on 127.0.0.2-4, each with a demo app, and a local
//! DigitalOcean API simulator: the Reserved IP lands on the master, requests go
//! round robin, the master is SIGKILLed and a backup takes over. Every wait is
//! bounded; everything started is stopped (on error too, by `Drop`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dynia_testkit::dosim::DoSim;
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;

const NODES: [(&str, &str, u64); 3] = [
    ("amber-fox", "127.0.0.2", 3164441),
    ("brisk-owl", "127.0.0.3", 3164442),
    ("calm-deer", "127.0.0.4", 3164443),
];
const RESERVED_IP: &str = "203.0.113.10";
const WAIT: Duration = Duration::from_secs(20);

/// `dynia demo [--keep]`: the walkthrough on a runtime of its own; what went
/// wrong goes to stderr as `demo: …`. The exit status: 0, or 1 on failure.
pub fn demo(keep: bool) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynia demo: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(keep)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo: {e:#}");
            1
        }
    }
}

/// `dynia upstream`: a demo application server until SIGTERM/SIGINT; exit
/// status 0, or 1 when it cannot listen.
pub fn upstream(listen: SocketAddr, id: &str) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynia upstream: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve_upstream(listen, id)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dynia upstream: {e:#}");
            1
        }
    }
}

async fn serve_upstream(listen: SocketAddr, id: &str) -> Result<()> {
    let up = DemoUpstream::start(listen, id)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(id, addr = %up.addr, "demo upstream listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    up.kill();
    Ok(())
}

fn step(s: impl Into<String>) -> anyhow::Error {
    anyhow!(s.into())
}

/// Child processes and the directory, cleaned up whatever happens.
struct Cleanup {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_tcp(ip: &str) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// (app, proxy, admin, election) ports free on every node address.
fn ports() -> Result<[u16; 4]> {
    for _ in 0..50 {
        let mut p = [0u16; 4];
        for (i, slot) in p.iter_mut().enumerate() {
            *slot = if i == 3 {
                std::net::UdpSocket::bind((NODES[0].1, 0))?
                    .local_addr()?
                    .port()
            } else {
                free_tcp(NODES[0].1)?
            };
        }
        let distinct = p[0] != p[1] && p[1] != p[2] && p[0] != p[2];
        let all_free = NODES.iter().all(|(_, ip, _)| {
            p[..3]
                .iter()
                .all(|port| std::net::TcpListener::bind((*ip, *port)).is_ok())
                && std::net::UdpSocket::bind((*ip, p[3])).is_ok()
        });
        if distinct && all_free {
            return Ok(p);
        }
    }
    Err(step("no ports free on all of 127.0.0.2-4"))
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
        .collect()
}

fn write_secret(path: &Path, value: &str) -> Result<()> {
    dynia_control::config::write_secret(path, value.as_bytes()).map_err(|e| step(e.to_string()))
}

/// Writes the three nodes' files; returns each node's node-file path.
fn write_files(dir: &Path, p: [u16; 4], api: &str, do_token: &str) -> Result<Vec<PathBuf>> {
    let key = random_hex(64);
    let mut cluster = String::from(
        "# written by `dynia demo`\ngeneration = 1\ncluster = \"demo\"\n\n[election]\nadvert_interval = \"100ms\"\n\n",
    );
    for (i, (id, ip, droplet)) in NODES.iter().enumerate() {
        cluster.push_str(&format!(
            "[[member]]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\npriority = {}\ndroplet_id = {droplet}\n\n",
            150 - 10 * i
        ));
    }
    cluster.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {}\n\
         [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n",
        p[0]
    ));
    let mut files = Vec::new();
    for (id, ip, _) in NODES {
        let d = dir.join(id);
        std::fs::create_dir_all(&d)?;
        write_secret(&d.join("admin.token"), &random_hex(32))?;
        write_secret(&d.join("cluster.key"), &key)?;
        write_secret(&d.join("do.token"), do_token)?;
        let node = format!(
            "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
             [admin]\nlisten = \"{ip}:{admin}\"\ntoken_file = \"{d}/admin.token\"\n\n\
             [[listener]]\nname = \"http\"\nbind = \"{ip}:{proxy}\"\n\n\
             [limits]\nshutdown_grace = \"2s\"\n\n\
             [election]\nkey_file = \"{d}/cluster.key\"\nport = {udp}\n\n\
             [reserved_ip]\ndriver = \"digitalocean\"\naddress = \"{RESERVED_IP}\"\ntoken_file = \"{d}/do.token\"\n\
             api_url = \"{api}\"\nmetadata_url = \"{api}\"\n",
            d = d.display(),
            proxy = p[1],
            admin = p[2],
            udp = p[3],
        );
        let path = d.join("dynia.toml");
        std::fs::write(&path, node)?;
        std::fs::write(d.join("cluster.toml"), &cluster)?;
        files.push(path);
    }
    Ok(files)
}

/// `GET path` with `Host: demo.local` on a new connection, bounded: status
/// and trimmed body.
async fn fetch(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let a = tokio::time::timeout(
        Duration::from_secs(7),
        dynia_testkit::web::get(addr, "demo.local", path),
    )
    .await
    .map_err(|_| "timed out".to_string())??;
    Ok((a.status, a.body.trim().to_string()))
}

/// Waits (bounded by `WAIT`) until `cond` holds; how long it took.
async fn wait_for<F, Fut>(what: &str, cond: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_async(WAIT, cond)
        .await
        .map_err(|_| step(format!("{what} did not happen within {WAIT:?}")))
}

async fn status_field(admin: SocketAddr, field: &str) -> Option<serde_json::Value> {
    let (code, body) = fetch(admin, "/status.json").await.ok()?;
    if code != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .map(|v| v[field].clone())
}

/// Whether `pred` holds for the members of the first service per the
/// `/status.json` at `admin` (false when it cannot be read).
async fn members_are(admin: SocketAddr, pred: impl Fn(&[serde_json::Value]) -> bool) -> bool {
    status_field(admin, "services")
        .await
        .and_then(|s| s[0]["members"].as_array().map(|m| pred(m)))
        .unwrap_or(false)
}

/// The node whose droplet holds the Reserved IP, per the (simulated) API.
fn holder(sim: &DoSim, ip: IpAddr) -> Option<usize> {
    let d = sim.holder(ip)?;
    NODES.iter().position(|n| n.2 == d)
}

async fn requests_via(proxy: SocketAddr, n: usize) -> Result<String> {
    let mut who = Vec::new();
    for _ in 0..n {
        let (status, body) = fetch(proxy, "/").await.map_err(step)?;
        who.push(format!("{status} {body}"));
    }
    Ok(who.join(" | "))
}

/// Runs the demo; with `keep`, serves until Ctrl-C after the walkthrough.
pub async fn run(keep: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("dynia-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut c = Cluster::start(&dir).await?;
    let m = c.first_master().await?;
    let n = c.failover(m).await?;
    if keep {
        println!(
            "\nserving until Ctrl-C: curl http://{}/ ; open http://{}/status",
            c.proxy(n),
            c.admin(n)
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    c.stop().await?;
    println!("demo done (logs were in {}; removed).", dir.display());
    Ok(())
}

/// The running demo: the node processes (and the directory), the apps and
/// the simulated API; dropping it stops everything.
struct Cluster {
    apps: Vec<DemoUpstream>,
    sim: DoSim,
    vip: IpAddr,
    /// (app, proxy, admin, election) ports, the same on every node.
    ports: [u16; 4],
    cleanup: Cleanup,
}

impl Cluster {
    fn proxy(&self, i: usize) -> SocketAddr {
        SocketAddr::new(NODES[i].1.parse().expect("literal"), self.ports[1])
    }

    fn admin(&self, i: usize) -> SocketAddr {
        SocketAddr::new(NODES[i].1.parse().expect("literal"), self.ports[2])
    }

    /// The simulator, the three apps and the three `dynia run` processes in
    /// `dir`, until every node answers.
    async fn start(dir: &Path) -> Result<Cluster> {
        let exe = std::env::current_exe()?;
        let mut cleanup = Cleanup {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        let p = ports()?;
        let do_token = format!("demo-{}", random_hex(24));
        let sim = DoSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), &do_token).await?;
        let vip: IpAddr = RESERVED_IP.parse().expect("literal");
        for (_, ip, droplet) in NODES {
            sim.add_droplet(droplet, ip.parse().expect("literal"));
        }
        sim.add_reserved_ip(vip, None);
        sim.set_action_delay(Duration::from_millis(150));
        let mut apps = Vec::new();
        for (id, ip, _) in NODES {
            let app = SocketAddr::new(ip.parse().expect("literal"), p[0]);
            apps.push(DemoUpstream::start(app, id).await?);
        }
        let files = write_files(dir, p, &sim.url(), &do_token)?;
        println!("dynia demo: a three-node cluster on loopback");
        for (i, (id, ip, droplet)) in NODES.iter().enumerate() {
            let child = Command::new(&exe)
                .arg("run")
                .arg("-c")
                .arg(&files[i])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("{id}.log")))?)
                .spawn()?;
            cleanup.children.push(Some(child));
            println!(
                "  {id:<10} private IP {ip}  proxy :{}  admin http://{ip}:{}/status  droplet {droplet}  priority {}",
                p[1],
                p[2],
                150 - 10 * i
            );
        }
        let c = Cluster {
            apps,
            sim,
            vip,
            ports: p,
            cleanup,
        };
        for i in 0..NODES.len() {
            let a = c.admin(i);
            wait_for("every node to start", || async move {
                status_field(a, "role").await.is_some()
            })
            .await?;
        }
        println!(
            "  Reserved IP {RESERVED_IP}: held by the simulated DigitalOcean API at {}",
            c.sim.url()
        );
        Ok(c)
    }

    /// Steps 1 and 2: the first master takes the Reserved IP and balances
    /// over every member. Returns the master.
    async fn first_master(&self) -> Result<usize> {
        let (sim, vip) = (&self.sim, self.vip);
        let first = wait_for("a master to hold the Reserved IP", || async move {
            holder(sim, vip).is_some()
        })
        .await?;
        let m = holder(sim, vip).ok_or_else(|| step("no holder"))?;
        println!(
            "\n1. the election made {} master; it assigned the Reserved IP to its droplet ({} ms after start)",
            NODES[m].0,
            first.as_millis()
        );
        for i in 0..NODES.len() {
            let a = self.admin(i);
            wait_for("every member to be healthy", || async move {
                members_are(a, |ms| ms.iter().all(|x| x["health"] == "up")).await
            })
            .await?;
        }
        println!(
            "\n2. requests to the Reserved IP reach {}, which balances over every member:",
            NODES[m].0
        );
        println!("  {}", requests_via(self.proxy(m), 6).await?);
        Ok(m)
    }

    /// Step 3: SIGKILL of master `m`; a backup takes the Reserved IP over
    /// and serves, and `m`'s member goes DOWN. Returns the new master.
    async fn failover(&mut self, m: usize) -> Result<usize> {
        println!("\n3. SIGKILL {} (its app dies with it) ...", NODES[m].0);
        let killed = Instant::now();
        if let Some(c) = self.cleanup.children[m].as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cleanup.children[m] = None;
        self.apps[m].kill();
        let (sim, vip) = (&self.sim, self.vip);
        wait_for("another node to take the Reserved IP", || async move {
            holder(sim, vip).is_some_and(|h| h != m)
        })
        .await?;
        let n = holder(sim, vip).ok_or_else(|| step("no holder"))?;
        let proxy = self.proxy(n);
        wait_for("the new master to serve", || async move {
            fetch(proxy, "/").await.is_ok_and(|(s, _)| s == 200)
        })
        .await?;
        println!(
            "   {} became master and the Reserved IP points at it: serving {} ms after the kill",
            NODES[n].0,
            killed.elapsed().as_millis()
        );
        let (down, admin) = (NODES[m].0, self.admin(n));
        wait_for("the dead member to be marked DOWN", || async move {
            members_are(admin, |ms| {
                ms.iter().any(|x| x["id"] == down && x["health"] == "down")
            })
            .await
        })
        .await?;
        println!("   its member is DOWN in every pool; requests go to the two that remain:");
        println!("  {}", requests_via(proxy, 6).await?);
        let assigns = sim
            .api_calls()
            .iter()
            .filter(|c| c.is_action_post() && c.status < 300)
            .count();
        println!(
            "   assign calls to the API so far: {assigns} (one per mastership change, no ping-pong)"
        );
        Ok(n)
    }

    /// SIGTERM to every node, then (bounded) until each has exited; one
    /// still running is SIGKILLed by `Cleanup`. Then the apps stop.
    async fn stop(&mut self) -> Result<()> {
        println!("\nstopping the cluster (SIGTERM: resign, finish requests, exit) ...");
        for c in self.cleanup.children.iter_mut().flatten() {
            unsafe_sigterm(c);
        }
        let start = Instant::now();
        for c in self.cleanup.children.iter_mut() {
            let Some(child) = c else { continue };
            let left = WAIT.saturating_sub(start.elapsed());
            let mut failed = None;
            let exited = eventually_async(left, || {
                let done = child.try_wait().map_err(|e| failed = Some(e));
                async move { !matches!(done, Ok(None)) }
            })
            .await;
            if let Some(e) = failed {
                return Err(e.into());
            }
            if exited.is_ok() {
                // Exited by itself.
                *c = None;
            }
        }
        for a in &self.apps {
            a.kill();
        }
        Ok(())
    }
}

fn unsafe_sigterm(child: &Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}
