//! `dynia demo`: the product on a fresh machine, without root or cloud access.
//!
//! It writes a node file and a cluster document into a temporary directory,
//! starts three built-in demo members on 127.0.0.2-4 and a dynia node in
//! front of them on 127.0.0.1, then shows round robin, a member failing its
//! health check and leaving the rotation, and coming back. Everything it
//! starts stops at the end (or on Ctrl-C with `--keep`), and the directory is
//! removed. Every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use dynia_proxy::demo::DemoUpstream;
use dynia_proxy::Health;

use crate::daemon::{load, Daemon};

const MEMBERS: [(&str, &str); 3] = [
    ("amber-fox", "127.0.0.2"),
    ("brisk-owl", "127.0.0.3"),
    ("calm-deer", "127.0.0.4"),
];
const WAIT: Duration = Duration::from_secs(15);

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo: {0}")]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("demo: {0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("demo: {0}")]
    Step(String),
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port(ip: &str) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

async fn start_members() -> Result<(Vec<DemoUpstream>, u16), DemoError> {
    for _ in 0..20 {
        let port = free_port(MEMBERS[0].1)?;
        let mut ups = Vec::new();
        for (id, ip) in MEMBERS {
            match DemoUpstream::start(SocketAddr::new(ip.parse().expect("literal"), port), id).await
            {
                Ok(u) => ups.push(u),
                Err(_) => break,
            }
        }
        if ups.len() == MEMBERS.len() {
            return Ok((ups, port));
        }
    }
    Err(DemoError::Step("no free port common to 127.0.0.2-4".into()))
}

fn write_files(dir: &Path, port: u16) -> Result<(PathBuf, SocketAddr, SocketAddr), DemoError> {
    let proxy: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")?));
    let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")?));
    let token: String = (0..32).map(|_| format!("{:x}", rand_nibble())).collect();
    let key: String = (0..64).map(|_| format!("{:x}", rand_nibble())).collect();
    crate::config::write_secret(&dir.join("admin.token"), token.as_bytes())
        .map_err(|e| DemoError::Step(e.to_string()))?;
    crate::config::write_secret(&dir.join("cluster.key"), key.as_bytes())
        .map_err(|e| DemoError::Step(e.to_string()))?;
    let node = format!(
        "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{dir}\"\nworker_threads = 1\n\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"{dir}/admin.token\"\n\n\
         [[listener]]\nname = \"http\"\nbind = \"{proxy}\"\n\n\
         [limits]\nshutdown_grace = \"2s\"\n\n\
         [election]\nkey_file = \"{dir}/cluster.key\"\n",
        id = MEMBERS[0].0,
        ip = MEMBERS[0].1,
        dir = dir.display(),
    );
    let mut cluster = String::from("generation = 1\ncluster = \"demo\"\n\n");
    for (i, (id, ip)) in MEMBERS.iter().enumerate() {
        cluster.push_str(&format!(
            "[[member]]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\npriority = {}\n\n",
            150 - 10 * i
        ));
    }
    cluster.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {port}\n\
         [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n"
    ));
    let node_path = dir.join("dynia.toml");
    std::fs::write(&node_path, node)?;
    std::fs::write(dir.join("cluster.toml"), cluster)?;
    Ok((node_path, proxy, admin))
}

fn rand_nibble() -> u8 {
    rand::random::<u8>() & 0xf
}

async fn fetch(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "demo.local")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
}

async fn show_requests(proxy: SocketAddr, n: usize) -> Result<Vec<String>, DemoError> {
    let mut who = Vec::new();
    for _ in 0..n {
        let (status, body) = fetch(proxy, "/").await.map_err(DemoError::Step)?;
        who.push(format!("{status} {body}"));
    }
    println!("  {}", who.join(" | "));
    Ok(who)
}

async fn wait_health(d: &Daemon, id: &str, want: Health) -> Result<(), DemoError> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let st = d.proxy().status();
        if st
            .iter()
            .flat_map(|s| &s.members)
            .any(|m| m.id == id && m.health == want)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(DemoError::Step(format!(
        "{id} did not turn {} within {WAIT:?}",
        want.as_str()
    )))
}

/// Runs the demo; with `keep`, serves until Ctrl-C after the walkthrough.
pub async fn run(keep: bool) -> Result<(), DemoError> {
    let dir = TempDir(std::env::temp_dir().join(format!("dynia-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let (ups, port) = start_members().await?;
    let (node_path, proxy, admin) = write_files(&dir.0, port)?;
    let loaded = load(&node_path)?;
    let admin_listener = crate::admin::bind(admin)?;
    let daemon = Daemon::start(&node_path, loaded).await?;
    tokio::spawn(crate::admin::serve(daemon.clone(), admin_listener));
    println!("dynia demo: a node proxying to three members on 127.0.0.2-4 port {port}");
    println!("  proxy   http://{proxy}/");
    println!("  status  http://{admin}/status   (and /status.json, /metrics)");
    for (id, _) in MEMBERS {
        wait_health(&daemon, id, Health::Up).await?;
    }
    println!("\n1. round robin over every member (6 requests):");
    show_requests(proxy, 6).await?;

    println!("\n2. brisk-owl's /dynia-health starts answering 500 ...");
    ups[1].set_health(500);
    wait_health(&daemon, "brisk-owl", Health::Down).await?;
    println!("   brisk-owl is DOWN after `fall` failed checks; requests avoid it:");
    let who = show_requests(proxy, 6).await?;
    if who.iter().any(|w| w.contains("brisk-owl")) {
        return Err(DemoError::Step("a DOWN member got a request".into()));
    }

    println!("\n3. brisk-owl recovers ...");
    ups[1].set_health(200);
    wait_health(&daemon, "brisk-owl", Health::Up).await?;
    println!("   brisk-owl is UP after `rise` good checks and back in the rotation:");
    show_requests(proxy, 6).await?;

    if keep {
        println!("\nserving until Ctrl-C (try: curl http://{proxy}/ ; open http://{admin}/status)");
        let _ = tokio::signal::ctrl_c().await;
    }
    println!("\nstopping: finishing requests in flight, then exiting");
    daemon.proxy().shutdown(Duration::from_secs(2)).await;
    for u in &ups {
        u.kill();
    }
    println!("demo done.");
    Ok(())
}
