//! The `dynia` subcommands other than the cluster-wide changes (those are
//! `dynia_control::ops`, printed by `print.rs`). Each returns the process exit
//! status and prints what a person needs: the result, or what went wrong and
//! what to do next.

use std::net::SocketAddr;
use std::path::Path;

use dynia_control::client::{AdminClient, ClientError};
use dynia_control::config::{self, ConfigErrors};
use dynia_control::status::ClusterStatus;

pub use crate::exit::{FAILED, OK, UNHEALTHY};
use crate::runtime;

fn print_config_errors(errors: &ConfigErrors) {
    for e in errors.errors() {
        eprintln!("{e}");
    }
}

/// `dynia run`.
pub fn run(node_path: &Path) -> u8 {
    match dynia_control::process::run(node_path) {
        Ok(()) => OK,
        Err(dynia_control::daemon::DaemonError::Config(errors)) => {
            print_config_errors(&errors);
            eprintln!(
                "dynia: not started; fix the configuration above, then `dynia check -c {}`",
                node_path.display()
            );
            FAILED
        }
        Err(e) => {
            eprintln!("dynia: {e}");
            FAILED
        }
    }
}

/// `dynia check`.
pub fn check(node_path: &Path) -> u8 {
    match dynia_control::loaded::load(node_path) {
        Ok(l) => {
            println!(
                "ok: node {} in cluster {} (generation {}, {} members, {} services, config hash {})",
                l.node.node.id,
                l.cluster.cluster,
                l.cluster.generation,
                l.cluster.members.len(),
                l.cluster.services.len(),
                &l.hash[..12.min(l.hash.len())]
            );
            OK
        }
        Err(errors) => {
            print_config_errors(&errors);
            FAILED
        }
    }
}

/// A client of the local daemon named by the node file.
fn local_client(node_path: &Path) -> Result<AdminClient, u8> {
    let node = config::load_node_file(node_path).map_err(|e| {
        print_config_errors(&e);
        FAILED
    })?;
    let token = match &node.admin.token_file {
        Some(p) => Some(config::read_secret(p).map_err(|e| {
            eprintln!("{e}");
            FAILED
        })?),
        None => None,
    };
    Ok(AdminClient::new(node.admin.listen, token))
}

/// `dynia reload`.
pub fn reload(node_path: &Path) -> u8 {
    let client = match local_client(node_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match runtime().block_on(client.reload()) {
        Ok(r) => {
            println!(
                "reloaded: generation {}, config hash {}",
                r.generation,
                &r.config_hash[..12.min(r.config_hash.len())]
            );
            OK
        }
        Err(ClientError::Refused { message, .. }) => {
            eprintln!("{message}");
            eprintln!("dynia: reload refused; the daemon keeps serving its previous configuration");
            FAILED
        }
        Err(e) => {
            eprintln!("dynia: {e}");
            crate::exit::of_client(&e)
        }
    }
}

/// How long `dynia status` waits for each member's `/status.json`.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `dynia status [--json]`: this node's status with every member's own
/// `/status.json`, read at once (bounded); unreachable members and drift
/// are marked. Exits [`UNHEALTHY`] when the cluster is (after printing it),
/// `exit::UNREACHABLE` when the local daemon does not answer.
pub fn status(node_path: &Path, json: bool) -> u8 {
    let ctx = match dynia_control::ops::Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dynia: {e}");
            return FAILED;
        }
    };
    let v = match runtime().block_on(gather(&ctx)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("dynia: {e}");
            return crate::exit::of_client(&e);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_status(&v, node_path);
    }
    let problems = v.problems();
    if problems.is_empty() {
        return OK;
    }
    eprintln!("dynia: the cluster is unhealthy: {}", problems.join("; "));
    UNHEALTHY
}

/// This node's status and every other member's own answer.
async fn gather(ctx: &dynia_control::ops::Ctx) -> Result<ClusterStatus, ClientError> {
    let local = ctx.local.status().await?;
    // Members and their admin addresses: the daemon's document, or the
    // file it loaded when the call is refused (no admin token here).
    let doc = match ctx.current().await {
        Ok(d) => Some(d),
        Err(_) => config::load_cluster_doc(config::cluster_doc_path(&ctx.node)).ok(),
    };
    let port = ctx.node.admin.listen.port();
    let peers = local
        .members
        .iter()
        .filter(|m| m.id != local.node)
        .filter_map(|m| {
            let addr = match doc.as_ref().and_then(|d| d.member(&m.id)) {
                Some(dm) => dm.admin_addr(port),
                None => SocketAddr::new(m.private_ip.parse().ok()?, port),
            };
            Some((
                m.id.clone(),
                AdminClient::new(addr, None).with_timeout(STATUS_TIMEOUT),
            ))
        })
        .collect();
    Ok(dynia_control::status::gather(local, peers).await)
}

/// The table and the lines under it.
fn print_status(v: &ClusterStatus, node_path: &Path) {
    let s = &v.status;
    println!(
        "cluster {}  generation {}  config {}  reserved ip {} held by {}",
        s.cluster,
        s.generation,
        &s.config_hash[..12.min(s.config_hash.len())],
        s.reserved_ip
            .address
            .as_deref()
            .unwrap_or("(none configured)"),
        v.holder_text()
    );
    println!(
        "{:<22} {:<8} {:<9} {:>8} {:<16} {:<7} {:>11} {:>9}  NOTE",
        "ID", "ROLE", "LIVENESS", "PRIORITY", "PRIVATE IP", "STATE", "GENERATION", "SERVICES"
    );
    for m in &s.members {
        print_member(v, m);
    }
    for line in v.service_lines().iter().chain(&v.lost_lines()) {
        println!("{line}");
    }
    for line in v.transition_lines() {
        println!("election: {line}");
    }
    if let Some(line) = v.drift_line(Some(node_path)) {
        println!("{line}");
    }
    for line in v.split_brain_lines() {
        println!("{line}");
    }
}

fn print_member(v: &ClusterStatus, m: &dynia_control::status::MemberStatus) {
    let s = &v.status;
    let (up, total) = v.services_up(&m.id);
    let me = if m.id == s.node { " (this)" } else { "" };
    let drift = if s.drift.contains(&m.id) { "*" } else { "" };
    let mut note = Vec::new();
    if let Some(e) = v.unreachable(&m.id) {
        note.push(format!("UNREACHABLE: {e}"));
    } else if !drift.is_empty() {
        note.push("drift".to_string());
    }
    if v.reserved_ip_holders.contains(&m.id) {
        note.push("holds the Reserved IP".to_string());
    }
    println!(
        "{:<22} {:<8} {:<9} {:>8} {:<16} {:<7} {:>11} {:>9}  {}",
        format!("{}{}", m.id, me),
        m.role,
        m.liveness,
        m.priority,
        m.private_ip,
        m.state,
        format!(
            "{}{drift}",
            m.generation.map_or("?".into(), |g| g.to_string())
        ),
        format!("{up}/{total}"),
        note.join("; ")
    );
}

pub use crate::cli::InitArgs;

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    dynia_control::status::hex(&b)
}

/// `dynia init`: the node file at `node_path`, its secrets beside it (admin
/// token, cluster key; mode 0600) and a first cluster document (generation 1,
/// this node its only member) in `state_dir`.
pub fn init(node_path: &Path, a: InitArgs) -> u8 {
    let doc_path = a.state_dir.join("cluster.toml");
    if !a.force {
        for p in [node_path, doc_path.as_path()] {
            if p.exists() {
                eprintln!(
                    "dynia init: {} exists; nothing written (pass --force to replace it, or -c PATH for another node file)",
                    p.display()
                );
                return FAILED;
            }
        }
    }
    let owner = match a.user.as_deref().map(lookup_user).transpose() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dynia init: {e}; nothing written");
            return FAILED;
        }
    };
    let dir = node_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let id = match a.id {
        Some(id) => id,
        None => dynia_control::names::generate(&[]).unwrap_or_else(|| "misty-owl".into()),
    };
    let token_path = dir.join("admin.token");
    let key_path = dir.join("cluster.key");
    let node_text = format!(
        "# {node} — what belongs to this node only (written by `dynia init`).\n\
         [node]\nid = \"{id}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{state}\"\n\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"{token}\"\n\n\
         [[listener]]\nname = \"http\"\nbind = \"{listen}\"\n\n\
         [election]\nkey_file = \"{key}\"\n\n\
         [reserved_ip]\ndriver = \"none\"\n",
        node = node_path.display(),
        ip = a.private_ip,
        state = a.state_dir.display(),
        admin = a.admin_listen,
        token = token_path.display(),
        listen = a.listen,
        key = key_path.display(),
    );
    let node = match config::parse_node_file(&node_text, node_path) {
        Ok(n) => n,
        Err(e) => {
            print_config_errors(&e);
            return FAILED;
        }
    };
    let doc = config::ClusterDoc {
        generation: 1,
        cluster: a.cluster.clone(),
        election: Default::default(),
        members: vec![config::Member {
            id: id.clone(),
            private_ip: a.private_ip,
            priority: a.priority,
            droplet_id: None,
            state: config::MemberState::Active,
            admin: None,
        }],
        services: Vec::new(),
    };
    if let Err(e) = doc
        .validate()
        .and_then(|_| config::validate_pair(&node, &doc))
    {
        print_config_errors(&e);
        return FAILED;
    }
    let files = InitFiles {
        dir: &dir,
        state_dir: &a.state_dir,
        token: &token_path,
        key: &key_path,
        node: (node_path, &node_text),
        doc: (&doc_path, &doc.to_toml()),
    };
    if let Err(e) = files.write().and_then(|()| match owner {
        Some(o) => files.give_to(o),
        None => Ok(()),
    }) {
        eprintln!("dynia init: {e}");
        return FAILED;
    }
    println!(
        "initialised member {id} of cluster {} (generation 1)\n  node file   {}\n  cluster doc {}\n  admin token {} (mode 0600; the same on every node)\n  cluster key {} (mode 0600; the same on every node)\nnext: `dynia run -c {}` (or `systemctl start dynia`), then `dynia deploy NAME --host H --port P` and `dynia node add --ip IP`",
        a.cluster,
        node_path.display(),
        doc_path.display(),
        token_path.display(),
        key_path.display(),
        node_path.display()
    );
    OK
}

/// What `dynia init` writes.
struct InitFiles<'a> {
    dir: &'a Path,
    state_dir: &'a Path,
    token: &'a Path,
    key: &'a Path,
    node: (&'a Path, &'a str),
    doc: (&'a Path, &'a str),
}

impl InitFiles<'_> {
    fn write(&self) -> Result<(), String> {
        fn at(p: &Path) -> impl Fn(std::io::Error) -> String + '_ {
            move |e| format!("{}: {e}", p.display())
        }
        std::fs::create_dir_all(self.dir).map_err(at(self.dir))?;
        std::fs::create_dir_all(self.state_dir).map_err(at(self.state_dir))?;
        config::write_secret(self.token, random_hex(32).as_bytes()).map_err(|e| e.to_string())?;
        config::write_secret(self.key, random_hex(32).as_bytes()).map_err(|e| e.to_string())?;
        dynia_control::store::atomic_write(self.node.0, self.node.1.as_bytes())
            .map_err(at(self.node.0))?;
        dynia_control::store::atomic_write(self.doc.0, self.doc.1.as_bytes())
            .map_err(at(self.doc.0))?;
        Ok(())
    }

    /// `--user`: the daemon (the unit's `User=`) must read the secrets
    /// (0600) and write the state directory.
    fn give_to(&self, (uid, gid): (u32, u32)) -> Result<(), String> {
        for p in [
            self.token,
            self.key,
            self.node.0,
            self.state_dir,
            self.doc.0,
        ] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
        Ok(())
    }
}

/// The uid and gid of user `name`.
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("no user {name:?}"))?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to
    // static storage (or null), read at once on this thread.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(format!(
            "no user {name:?} (the package creates `dynia`; leave --user out to keep the files root's)"
        ));
    }
    // SAFETY: non-null, just returned by getpwnam.
    let pw = unsafe { &*pw };
    Ok((pw.pw_uid, pw.pw_gid))
}
