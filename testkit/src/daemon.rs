//! Whole-daemon test fixtures: a node as a real `dynia run` process on its
//! own files (node file, cluster document, secrets), loopback clusters on
//! 127.0.0.x, `/status.json` and `/metrics` readers and admin calls.
//! The binary is found next to the test executable (see [`bin`]).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::eventually_async;
use crate::web::get;

/// The `dynia` binary under test: `$DYNIA_BIN` if set, else `dynia` in the
/// cargo target directory of the running test (`target/debug/deps/t-…` →
/// `target/debug/dynia`), which `cargo test` builds before the package's
/// integration tests run.
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DYNIA_BIN") {
            return p.to_string_lossy().into_owned();
        }
        let exe = std::env::current_exe().expect("current_exe");
        let mut dir = exe.parent().expect("test executable has a directory");
        if dir.ends_with("deps") {
            dir = dir.parent().expect("target profile directory");
        }
        let p = dir.join("dynia");
        assert!(
            p.exists(),
            "no dynia binary at {} (build it, or set DYNIA_BIN)",
            p.display()
        );
        p.to_string_lossy().into_owned()
    })
}

pub const HOST: &str = "app.example.com";
pub const TOKEN: &str = "test-admin-token-5e1f";

/// A free UDP port on `ip` (bound, then released).
pub fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port on `ip` (bound, then released).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` free ports of `ip`, all different (held open together while picked:
/// two `free_port` calls in a row may return the same port).
pub fn free_ports(ip: &str, n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "dynia-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Writes `bytes` to `path` with mode 0600.
pub fn write_secret(path: &Path, bytes: &str) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(bytes.as_bytes()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// `admin.token` ([`TOKEN`]) and `cluster.key` (a fixed test key) in `dir`.
pub fn write_node_secrets(dir: &Path) {
    write_secret(&dir.join("admin.token"), TOKEN);
    write_secret(&dir.join("cluster.key"), "0123456789abcdef0123456789abcdef");
}

/// A member of the cluster document: id, private IP, state.
#[derive(Clone)]
pub struct MemberSpec {
    pub id: String,
    pub ip: String,
    pub state: &'static str,
}

pub fn member(id: &str, ip: &str) -> MemberSpec {
    MemberSpec {
        id: id.into(),
        ip: ip.into(),
        state: "active",
    }
}

/// Renders a cluster document with one service `web` on `port`.
pub fn cluster_doc(
    generation: u64,
    members: &[MemberSpec],
    port: u16,
    extra_service: &str,
) -> String {
    let mut s = format!(
        "generation = {generation}\ncluster = \"testing\"\n\n[election]\nadvert_interval = \"200ms\"\n\n"
    );
    for (i, m) in members.iter().enumerate() {
        s.push_str(&format!(
            "[[member]]\nid = \"{}\"\nprivate_ip = \"{}\"\npriority = {}\nstate = \"{}\"\n\n",
            m.id,
            m.ip,
            150 - i,
            m.state
        ));
    }
    // Checks every 200 ms with a 200 ms timeout (the validator refuses a
    // timeout longer than the interval): on a loaded shared machine (debug
    // build, several test binaries at once) a 100 ms timeout was once missed
    // three times in a row by every member, which the test saw as 503s.
    s.push_str(&format!(
        "[[service]]\nname = \"web\"\nhosts = [\"{HOST}\"]\nport = {port}\nretries = 2\n\
         [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 3\nrise = 2\n\n{extra_service}"
    ));
    s
}

/// The files of one node.
pub struct NodeFiles {
    pub dir: TempDir,
    pub node_file: PathBuf,
    pub cluster_file: PathBuf,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl NodeFiles {
    /// Writes a node file for member `id` (listener and admin on free ports of
    /// 127.0.0.1) and the given cluster document.
    pub fn new(tag: &str, id: &str, cluster: &str, limits: &str) -> NodeFiles {
        let dir = TempDir::new(tag);
        let ports = free_ports("127.0.0.1", 2);
        let proxy_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], ports[1]));
        write_node_secrets(&dir.0);
        let node_file = dir.0.join("dynia.toml");
        let text = format!(
            "[node]\nid = \"{id}\"\nprivate_ip = \"auto\"\nstate_dir = \"{dir}\"\nworker_threads = 2\n\n\
             [admin]\nlisten = \"{admin_addr}\"\ntoken_file = \"{dir}/admin.token\"\n\n\
             [[listener]]\nname = \"http\"\nbind = \"{proxy_addr}\"\n\n\
             [limits]\n{limits}\n\n\
             [election]\nkey_file = \"{dir}/cluster.key\"\nport = {udp}\n",
            dir = dir.0.display(),
            udp = free_udp_port("127.0.0.1"),
        );
        fs::write(&node_file, text).unwrap();
        let cluster_file = dir.0.join("cluster.toml");
        fs::write(&cluster_file, cluster).unwrap();
        NodeFiles {
            dir,
            node_file,
            cluster_file,
            proxy_addr,
            admin_addr,
        }
    }

    /// Replaces the cluster document atomically (write + rename), as commands do.
    pub fn write_cluster(&self, text: &str) {
        let tmp = self.dir.0.join("cluster.toml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.cluster_file).unwrap();
    }

    /// Runs `dynia ARGS -c node_file` to completion.
    pub fn dynia(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("-c")
            .arg(&self.node_file)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }
}

/// A `dynia run` process; killed on drop.
pub struct DaemonProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts `dynia run` and waits until its admin listener answers.
    pub async fn start(files: &NodeFiles) -> DaemonProcess {
        Self::start_with_env(files, &[]).await
    }

    pub async fn start_with_env(files: &NodeFiles, env: &[(&str, &str)]) -> DaemonProcess {
        let log = files.dir.0.join("daemon.log");
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&files.node_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut d = DaemonProcess { child, log };
        let admin = files.admin_addr;
        let ready = eventually_async(Duration::from_secs(20), || {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("dynia run exited with {status}:\n{}", d.log_text());
            }
            async move { get(admin, "localhost", "/status.json").await.is_ok() }
        })
        .await;
        assert!(ready.is_ok(), "daemon not ready:\n{}", d.log_text());
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        let exited = eventually_async(limit, || {
            let status = self.child.try_wait().unwrap();
            code = status.and_then(|s| s.code());
            async move { status.is_some() }
        })
        .await;
        assert!(exited.is_ok(), "daemon did not exit within {limit:?}");
        code
    }

    /// A value from /proc/PID/status, in kB (VmRSS, VmHWM).
    pub fn proc_kb(&self, key: &str) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.trim_start_matches(':').trim().strip_suffix(" kB"))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/status.json` of the daemon at `admin`.
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    let a = get(admin, "localhost", "/status.json").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// Health of `member` in service `web` per `/status.json`.
pub async fn health(admin: SocketAddr, member: &str) -> String {
    let s = status(admin).await;
    s["services"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == member)
        .map(|m| m["health"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// `/metrics` text of the daemon at `admin`.
pub async fn metrics(admin: SocketAddr) -> String {
    let a = get(admin, "localhost", "/metrics").await.unwrap();
    assert_eq!(a.status, 200);
    a.body
}

/// One node of a loopback cluster: private IP `ip`, listener `ip:proxy_port`,
/// admin `ip:admin_port`, election on `ip:udp_port`, with `extra` appended to
/// the node file (e.g. a `[reserved_ip]` section).
pub struct ClusterNode {
    pub files: NodeFiles,
    pub id: String,
    pub ip: String,
}

pub fn cluster_node(
    tag: &str,
    id: &str,
    ip: &str,
    cluster: &str,
    ports: (u16, u16, u16),
    extra: &str,
) -> ClusterNode {
    let (proxy_port, admin_port, udp_port) = ports;
    let dir = TempDir::new(tag);
    let proxy_addr: SocketAddr = format!("{ip}:{proxy_port}").parse().unwrap();
    let admin_addr: SocketAddr = format!("{ip}:{admin_port}").parse().unwrap();
    write_node_secrets(&dir.0);
    let node_file = dir.0.join("dynia.toml");
    let text = format!(
        "[node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
         [admin]\nlisten = \"{admin_addr}\"\ntoken_file = \"{d}/admin.token\"\n\n\
         [[listener]]\nname = \"http\"\nbind = \"{proxy_addr}\"\n\n\
         [limits]\nshutdown_grace = \"5s\"\n\n\
         [election]\nkey_file = \"{d}/cluster.key\"\nport = {udp_port}\n\n{extra}",
        d = dir.0.display()
    );
    fs::write(&node_file, text).unwrap();
    let cluster_file = dir.0.join("cluster.toml");
    fs::write(&cluster_file, cluster).unwrap();
    ClusterNode {
        files: NodeFiles {
            dir,
            node_file,
            cluster_file,
            proxy_addr,
            admin_addr,
        },
        id: id.into(),
        ip: ip.into(),
    }
}

/// Ports free on every one of `ips`: (proxy, admin, udp).
pub fn common_ports(ips: &[&str]) -> (u16, u16, u16) {
    for _ in 0..50 {
        let p = free_port(ips[0]);
        let a = free_port(ips[0]);
        let u = free_udp_port(ips[0]);
        let ok = ips.iter().all(|ip| {
            TcpListener::bind((*ip, p)).is_ok()
                && TcpListener::bind((*ip, a)).is_ok()
                && std::net::UdpSocket::bind((*ip, u)).is_ok()
        });
        if ok && p != a {
            return (p, a, u);
        }
    }
    panic!("no common free ports on {ips:?}");
}

/// The `role` field of a node's /status.json ("" if unreachable).
pub async fn role(admin: SocketAddr) -> String {
    match get(admin, "localhost", "/status.json").await {
        Ok(a) if a.status == 200 => serde_json::from_str::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["role"].as_str().map(str::to_string))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// One admin call on a new connection (`Connection: close`): status and body.
pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // A peer may answer (and close) before reading an oversized body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

/// Runs `dynia ARGS -c node_file` on a blocking thread.
pub async fn dynia_async(node_file: &Path, args: &[&str]) -> Output {
    let node_file = node_file.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(&args)
            .arg("-c")
            .arg(&node_file)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Sets the soft RLIMIT_NOFILE of process `pid` (hard limit unchanged) and
/// returns the old soft limit: a daemon out of file descriptors, on demand.
pub fn set_nofile(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall on valid pointers.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}
