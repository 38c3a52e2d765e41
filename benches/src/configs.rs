//! The equivalent HAProxy configuration and dynia node file + cluster document.
//!
//! Both proxies get the same shape: one HTTP listener on 127.0.0.1, one
//! service `web` for host `bench.test` (other hosts: 404), round robin over the
//! same two upstreams, HTTP health check `GET /dynia-health` (expect 200) every
//! 5 s, timeout 2 s, fall 3, rise 2, 2 retries on another member, connect
//! timeout 2 s, client/server timeouts 30 s, keep-alive on both sides, one
//! worker thread, and the forwarding headers dynia adds (X-Forwarded-For,
//! -Proto, -Host, X-Request-Id when absent).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Host name the benchmarked service answers for; wrk sends it.
pub const HOST: &str = "bench.test";
pub const HEALTH_PATH: &str = "/dynia-health";

/// An upstream (a cluster member): id and private IP. All share one port.
#[derive(Clone, Debug)]
pub struct BenchMember {
    pub id: String,
    pub ip: Ipv4Addr,
}

/// A service: name, host, port on every member.
#[derive(Clone, Debug)]
pub struct BenchService {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// HAProxy 2.6 configuration equivalent to [`dynia_files`].
///
/// `http-reuse always`: dynia keeps one keep-alive pool per member that any
/// request may use, which is what `always` does; `safe` (the default) would
/// send the first request of every client connection over a connection of its
/// own. With these upstreams (which never close an idle connection) `always`
/// carries no risk, and it is the setting that favours HAProxy here.
pub fn haproxy_cfg(listen: SocketAddr, members: &[BenchMember], svc: &BenchService) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "\
global
    nbthread 1
    maxconn 4096
    # no `log` line: neither proxy logs requests in this benchmark

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout check 2s
    maxconn 4096
    retries 2
    option redispatch 1

frontend fe_bench
    bind {listen}
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
    option forwardfor
    http-request deny deny_status 404 unless {{ req.hdr(host),field(1,:) -m str {host} }}
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Request-Id %[unique-id] unless {{ req.hdr(x-request-id) -m found }}
    default_backend be_{name}

backend be_{name}
    balance roundrobin
    option httpchk GET {HEALTH_PATH}
    http-check expect status 200
",
        host = svc.host,
        name = svc.name,
    );
    for m in members {
        let _ = writeln!(
            s,
            "    server {} {}:{} check inter 5s fall 3 rise 2",
            m.id, m.ip, svc.port
        );
    }
    s
}

/// Paths of a dynia instance's files.
pub struct DyniaFiles {
    pub node_file: PathBuf,
}

/// Writes the node file, the cluster document (`{state_dir}/cluster.toml`),
/// the admin token and the cluster key (mode 0600) under `dir`.
///
/// The node is the first member; the other members' pools are served by the
/// benchmark's upstreams. `election_port` keeps the UDP transport of the
/// daemon off the default port (another dynia on the machine may use it);
/// adverts go to the members' loopback addresses only.
pub fn dynia_files(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    election_port: u16,
    members: &[BenchMember],
    services: &[BenchService],
) -> Result<DyniaFiles> {
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir)?;
    let token = dir.join("admin.token");
    write_secret(&token, &random_hex(32)?)?;
    let key = dir.join("cluster.key");
    write_secret(&key, &random_hex(32)?)?;

    let me = &members[0];
    let node = format!(
        r#"# dynia node file written by dynia-benches
[node]
id = "{id}"
private_ip = "{ip}"
state_dir = "{state}"
worker_threads = 1

[admin]
listen = "{admin}"
token_file = "{token}"

[[listener]]
name = "http"
bind = "{listen}"

[limits]
header_read_timeout = "10s"
idle_timeout = "60s"
connect_timeout = "2s"
response_timeout = "30s"
max_header_bytes = 65536
max_connections = 4096
shutdown_grace = "2s"

[election]
key_file = "{key}"
port = {election_port}

[reserved_ip]
driver = "none"
"#,
        id = me.id,
        ip = me.ip,
        state = state_dir.display(),
        token = token.display(),
        key = key.display(),
    );
    let node_file = dir.join("dynia.toml");
    std::fs::write(&node_file, node)?;

    let mut cluster = String::from(
        r#"# dynia cluster document written by dynia-benches
generation = 1
cluster = "bench"

[election]
transport = "dynia"
vrid = 51
advert_interval = "200ms"
preempt = true
preempt_delay = "0s"
"#,
    );
    for (i, m) in members.iter().enumerate() {
        let _ = write!(
            cluster,
            "\n[[member]]\nid = \"{}\"\nprivate_ip = \"{}\"\npriority = {}\n",
            m.id,
            m.ip,
            150 - 10 * i
        );
    }
    for s in services {
        let _ = write!(
            cluster,
            r#"
[[service]]
name = "{name}"
hosts = ["{host}"]
port = {port}
retries = 2
[service.health]
path = "{HEALTH_PATH}"
expect_status = [200]
interval = "5s"
timeout = "2s"
fall = 3
rise = 2
"#,
            name = s.name,
            host = s.host,
            port = s.port,
        );
    }
    std::fs::write(state_dir.join("cluster.toml"), cluster)?;
    Ok(DyniaFiles { node_file })
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, format!("{text}\n"))
        .with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Switches the access log on in a node file written by [`dynia_files`]
/// (`haproxy` format, appended to `file`).
pub fn access_log_on(files: &DyniaFiles, file: &Path) -> Result<()> {
    let mut text = std::fs::read_to_string(&files.node_file)?;
    text.push_str(&format!(
        "\n[log]\naccess = \"haproxy\"\naccess_file = \"{}\"\n",
        file.display()
    ));
    std::fs::write(&files.node_file, text)?;
    Ok(())
}
