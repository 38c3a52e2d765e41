//! Cluster-wide changes: the workflows behind `dynia node …`, `deploy`,
//! `undeploy`, `sync` and `rollback`.
//!
//! Every change reads the current document from the local daemon, builds the
//! next one (`generation + 1`) and sends it with the generation **and hash**
//! it was based on to **every** member, old and new (SPEC §6; seeds 000/001):
//! a member that has anything else refuses (409) and keeps it. Members are
//! reached at `member.admin` or, by default, `private_ip` with this node's
//! admin port, using this node's admin token (the same on every node).
//!
//! Members are sent to one at a time in document order. The first member
//! that answers is the commit point: if it refuses the compare-and-set, the
//! change stops there and nothing anywhere was changed — of two concurrent
//! changes based on the same generation, exactly one passes that member.
//! A member that cannot be reached or refuses later is reported; the command
//! exits non-zero and prints the `dynia sync` that resumes. The member catches
//! up by itself too (see [`crate::catchup`]) once it hears a newer generation.
//!
//! `sync` and `rollback` put one document on members that may differ: each
//! member is compare-and-set on the generation and hash read from it when
//! the command started, so a change that reaches a member after that read is
//! never overwritten unseen (that member refuses and is reported).
//!
//! # Generations in a rolling deploy
//!
//! `deploy` must change one node at a time, but catch-up spreads any higher
//! generation on its own. So a roll is done at one generation `P` (one above
//! the generation `G` every member has):
//! 0. *agree*: every member must have this node's document at `G` — or,
//!    left by a stopped roll of the same service, that content with the
//!    service. Anything else (a member ahead, behind or with other content)
//!    refuses the deploy, naming the members, and points at `dynia sync`: a
//!    deploy built from this node's document would overwrite it.
//! 1. *pin*: every member gets the content it has (with or without the
//!    service) as generation `P`, compare-and-set on what was read;
//! 2. *roll*: member by member, those without the service get it by a
//!    same-generation replace (compare-and-set on generation `P` **and** the
//!    pinned hash); the service must turn UP for each member within the
//!    bound (members that had it are only checked);
//! 3. on failure that member is replaced back to the content without the
//!    service and the roll stops.
//!
//! Catch-up only moves to a strictly higher generation, so a stopped roll
//! stays where it stopped: rolled members and the others share generation `P`
//! with two hashes, which `dynia status` shows as drift. The printed
//! `dynia deploy` resumes (rolled members keep serving the service
//! throughout; only the others are rolled), `dynia rollback` puts the content
//! before the deploy everywhere as `P + 1`, and `dynia sync` takes one
//! document (the highest generation, this node's on a tie) everywhere. A
//! deploy of a service every member already has changes nothing and only
//! checks that it is UP everywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::apply::ApplyRequest;
use crate::client::{AdminClient, ClientError};
use crate::config::{self, ClusterDoc, Health, Member, MemberState, NodeFile, Secret, Service};
use crate::status::Status;

/// Time for one call to a member.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `make-active` and `node remove` wait for the election.
const ELECTION_WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

/// What a command needs: the node file, the admin token, the local daemon.
pub struct Ctx {
    pub node_path: PathBuf,
    pub node: NodeFile,
    pub token: Option<Secret>,
    pub local: AdminClient,
}

impl Ctx {
    pub fn load(node_path: &Path) -> Result<Ctx, String> {
        let node = config::load_node_file(node_path).map_err(|e| e.to_string())?;
        let token = match &node.admin.token_file {
            Some(p) => Some(config::read_secret(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let local = AdminClient::new(node.admin.listen, token.clone()).with_timeout(CALL_TIMEOUT);
        Ok(Ctx {
            node_path: node_path.to_path_buf(),
            node,
            token,
            local,
        })
    }

    /// A client of `m`'s admin API (the local daemon for this node).
    pub fn client(&self, m: &Member) -> AdminClient {
        if m.id == self.node.node.id {
            return self.local.clone();
        }
        AdminClient::new(
            m.admin_addr(self.node.admin.listen.port()),
            self.token.clone(),
        )
        .with_timeout(CALL_TIMEOUT)
    }

    fn sync_cmd(&self) -> String {
        format!("dynia sync -c {}", self.node_path.display())
    }

    /// The local daemon's cluster document.
    pub async fn current(&self) -> Result<ClusterDoc, String> {
        let text = self.local.get_cluster().await.map_err(|e| e.to_string())?;
        config::parse_cluster_doc(&text, "local daemon's /v1/cluster").map_err(|e| e.to_string())
    }
}

/// How one member's base generation is chosen.
#[derive(Clone, Debug)]
pub enum Base {
    /// Compare-and-set on this generation and, when given, this hash: the
    /// member refuses if it has anything else than what the command read.
    Cas(u64, Option<String>),
    /// Whatever the member reports now: only a joining node, whose own
    /// one-member document nothing else depends on.
    Current,
    /// The member could not be read; nothing is sent to it.
    Unreachable(String),
}

/// One member's result.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: String,
    pub addr: String,
    pub ok: bool,
    pub result: String,
}

/// One member to send to.
pub struct Target {
    pub member: Member,
    pub base: Base,
    pub leave: bool,
}

/// Sends `doc` to every target in order. Returns the rows and whether the
/// change was refused at the commit point (then nothing was sent further).
pub async fn push(ctx: &Ctx, targets: &[Target], doc: &ClusterDoc) -> (Vec<Row>, bool) {
    let each: Vec<(Target, ClusterDoc)> = targets
        .iter()
        .map(|t| {
            (
                Target {
                    member: t.member.clone(),
                    base: t.base.clone(),
                    leave: t.leave,
                },
                doc.clone(),
            )
        })
        .collect();
    push_each(ctx, &each).await
}

/// [`push`] with a document for each target.
pub async fn push_each(ctx: &Ctx, targets: &[(Target, ClusterDoc)]) -> (Vec<Row>, bool) {
    let mut rows = Vec::new();
    let mut committed = false;
    for (i, (t, doc)) in targets.iter().enumerate() {
        let (text, hash) = (doc.to_toml(), doc.hash());
        let client = ctx.client(&t.member);
        let addr = client.addr().to_string();
        let row = |ok: bool, result: String| Row {
            id: t.member.id.clone(),
            addr: addr.clone(),
            ok,
            result,
        };
        let (base_generation, base_hash) = match &t.base {
            Base::Cas(g, h) => (*g, h.clone()),
            Base::Current => match client.status().await {
                Ok(s) => (s.generation, None),
                Err(e) => {
                    rows.push(row(false, format!("unreachable: {e}")));
                    continue;
                }
            },
            Base::Unreachable(e) => {
                rows.push(row(false, format!("unreachable: {e}")));
                continue;
            }
        };
        let req = ApplyRequest {
            base_generation,
            base_hash,
            document: text,
            leave: t.leave,
        };
        match client.put_cluster(&req).await {
            Ok(a) => {
                committed = true;
                let what = if a.leaving {
                    "removed; its daemon resigns and stops".to_string()
                } else if a.changed {
                    format!("applied generation {}", a.generation)
                } else {
                    format!("already at generation {}", a.generation)
                };
                rows.push(row(true, what));
            }
            Err(ClientError::Conflict {
                generation,
                config_hash,
                ..
            }) if generation == doc.generation && config_hash == hash => {
                committed = true;
                rows.push(row(true, format!("already at generation {generation}")));
            }
            Err(ClientError::Conflict {
                generation,
                config_hash,
                ..
            }) => {
                rows.push(row(
                    false,
                    format!(
                        "conflict: it is at generation {generation} (hash {}), the change was based on {base_generation}",
                        &config_hash[..12.min(config_hash.len())]
                    ),
                ));
                if !committed {
                    for (rest, _) in &targets[i + 1..] {
                        rows.push(Row {
                            id: rest.member.id.clone(),
                            addr: ctx.client(&rest.member).addr().to_string(),
                            ok: false,
                            result: "not sent (conflict at the commit point)".into(),
                        });
                    }
                    return (rows, true);
                }
            }
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
                rows.push(row(false, format!("unreachable: {e}")))
            }
            Err(e) => {
                committed = true;
                rows.push(row(false, format!("refused: {e}")))
            }
        }
    }
    (rows, false)
}

/// Prints the per-member table.
pub fn print_rows(rows: &[Row]) {
    println!("{:<22} {:<22} RESULT", "MEMBER", "ADMIN");
    for r in rows {
        println!(
            "{:<22} {:<22} {}{}",
            r.id,
            r.addr,
            if r.ok { "ok: " } else { "FAILED: " },
            r.result.replace('\n', " ")
        );
    }
}

/// Prints the table and the verdict; the exit status.
fn finish(ctx: &Ctx, what: &str, rows: &[Row], aborted: bool) -> u8 {
    print_rows(rows);
    if aborted {
        eprintln!(
            "dynia: {what} refused: the cluster changed since this command read it (another change won); nothing was changed. Check `dynia status -c {}` and run the command again.",
            ctx.node_path.display()
        );
        return crate::commands::FAILED;
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.id.as_str())
        .collect();
    if failed.is_empty() {
        println!("{what}: done on all {} members", rows.len());
        crate::commands::OK
    } else {
        eprintln!(
            "dynia: {what} is partial: {} of {} members did not take it ({}). They catch up by themselves when they hear a newer generation; to finish now, resume with:\n  {}",
            failed.len(),
            rows.len(),
            failed.join(", "),
            ctx.sync_cmd()
        );
        crate::commands::FAILED
    }
}

fn fail(msg: impl std::fmt::Display) -> u8 {
    eprintln!("dynia: {msg}");
    crate::commands::FAILED
}

/// Targets for a change from `cur` to `new`: every member of either, in
/// `new`'s order then the removed ones; members of `cur` compare-and-set on
/// `cur`'s generation and hash, new ones use their current generation.
fn targets(cur: &ClusterDoc, new: &ClusterDoc) -> Vec<Target> {
    let hash = cur.hash();
    let mut out: Vec<Target> = new
        .members
        .iter()
        .map(|m| Target {
            member: m.clone(),
            base: if cur.member(&m.id).is_some() {
                Base::Cas(cur.generation, Some(hash.clone()))
            } else {
                Base::Current
            },
            leave: false,
        })
        .collect();
    for m in &cur.members {
        if new.member(&m.id).is_none() {
            out.push(Target {
                member: m.clone(),
                base: Base::Cas(cur.generation, Some(hash.clone())),
                leave: true,
            });
        }
    }
    out
}

/// What a command read from one member: its generation and hash, or why not.
type Read = Result<(u64, String), String>;

/// Targets for putting `doc` on every member of `content` (= `doc`'s
/// members) and of `cur` (those not in `doc` leave), each compare-and-set on
/// the generation **and** hash the command read from it (`read`, by id):
/// a member changed by someone else since refuses, and nothing newer is
/// overwritten unseen. A member that could not be read gets nothing.
fn converge_targets(
    cur: &ClusterDoc,
    doc: &ClusterDoc,
    read: &BTreeMap<String, Read>,
) -> Vec<Target> {
    let base = |id: &str| match read.get(id) {
        Some(Ok((g, h))) => Base::Cas(*g, Some(h.clone())),
        Some(Err(e)) => Base::Unreachable(e.clone()),
        None => Base::Unreachable("not read".into()),
    };
    let mut out: Vec<Target> = doc
        .members
        .iter()
        .map(|m| Target {
            member: m.clone(),
            base: base(&m.id),
            leave: false,
        })
        .collect();
    for m in &cur.members {
        if doc.member(&m.id).is_none() {
            out.push(Target {
                member: m.clone(),
                base: base(&m.id),
                leave: true,
            });
        }
    }
    out
}

/// Builds `cur` + 1 with `edit` and sends it everywhere.
async fn change(
    ctx: &Ctx,
    what: &str,
    edit: impl FnOnce(&mut ClusterDoc) -> Result<(), String>,
) -> Result<(ClusterDoc, Vec<Row>, bool), String> {
    let cur = ctx.current().await?;
    let mut new = cur.clone();
    edit(&mut new)?;
    new.generation = cur.generation + 1;
    new.validate()
        .map_err(|e| format!("{what}: the new document would be invalid:\n{e}"))?;
    let (rows, aborted) = push(ctx, &targets(&cur, &new), &new).await;
    Ok((new, rows, aborted))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds")
}

fn run_change(
    node_path: &Path,
    what: &str,
    edit: impl FnOnce(&mut ClusterDoc) -> Result<(), String>,
) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(async {
        match change(&ctx, what, edit).await {
            Ok((_, rows, aborted)) => finish(&ctx, what, &rows, aborted),
            Err(e) => fail(e),
        }
    })
}

fn member_mut<'a>(doc: &'a mut ClusterDoc, id: &str) -> Result<&'a mut Member, String> {
    let ids: Vec<String> = doc.members.iter().map(|m| m.id.clone()).collect();
    doc.members.iter_mut().find(|m| m.id == id).ok_or_else(|| {
        format!(
            "no member {id:?} in the cluster; its members are {}",
            ids.join(", ")
        )
    })
}

/// `dynia node list`.
pub fn node_list(node_path: &Path) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(async {
        let doc = match ctx.current().await {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        println!(
            "{:<22} {:<16} {:>8} {:<7} ADMIN",
            "ID", "PRIVATE IP", "PRIORITY", "STATE"
        );
        for m in &doc.members {
            println!(
                "{:<22} {:<16} {:>8} {:<7} {}",
                m.id,
                m.private_ip,
                m.priority,
                state_name(m.state),
                ctx.client(m).addr()
            );
        }
        crate::commands::OK
    })
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Active => "active",
        MemberState::Drain => "drain",
        MemberState::Maint => "maint",
    }
}

/// Arguments of `dynia node add`.
pub struct AddArgs {
    pub id: Option<String>,
    pub private_ip: std::net::IpAddr,
    pub priority: Option<u8>,
    pub admin: Option<std::net::SocketAddr>,
    pub droplet_id: Option<u64>,
}

/// `dynia node add`.
pub fn node_add(node_path: &Path, a: AddArgs) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(async {
        let mut new_id = String::new();
        let r = change(&ctx, "node add", |doc| {
            let taken: Vec<&str> = doc.members.iter().map(|m| m.id.as_str()).collect();
            let id = match a.id {
                Some(id) if taken.contains(&id.as_str()) => {
                    return Err(format!("member id {id:?} is taken; pick another or leave --id out"))
                }
                Some(id) => id,
                None => crate::names::generate(&taken).ok_or("no free two-word id left")?,
            };
            if let Some(m) = doc.members.iter().find(|m| m.private_ip == a.private_ip) {
                return Err(format!("{} is already the private IP of member {}", a.private_ip, m.id));
            }
            let lowest = doc.members.iter().map(|m| m.priority).min().unwrap_or(160);
            doc.members.push(Member {
                id: id.clone(),
                private_ip: a.private_ip,
                priority: a.priority.unwrap_or(lowest.saturating_sub(10).max(1)),
                droplet_id: a.droplet_id,
                state: MemberState::Active,
                admin: a.admin,
            });
            new_id = id;
            Ok(())
        })
        .await;
        match r {
            Ok((doc, rows, aborted)) => {
                let code = finish(&ctx, "node add", &rows, aborted);
                if !aborted {
                    let token = ctx.node.admin.token_file.as_ref().map(|p| p.display().to_string());
                    let key = ctx.node.election.key_file.as_ref().map(|p| p.display().to_string());
                    println!(
                        "member {new_id} ({}) is in generation {}. On that node, if dynia is not running there yet:\n  \
                         1. copy the admin token {} and the cluster key {} from this node (same bytes, mode 0600; they are the same on every node);\n  \
                         2. write its node file with [node] id = \"{new_id}\", private_ip = \"{}\";\n  \
                         3. copy this node's {} to its state_dir/cluster.toml and start dynia (`systemctl start dynia`); it catches up from then on.",
                        a.private_ip,
                        doc.generation,
                        token.as_deref().unwrap_or("(no [admin] token_file set)"),
                        key.as_deref().unwrap_or("(no [election] key_file set)"),
                        a.private_ip,
                        config::cluster_doc_path(&ctx.node).display(),
                    );
                }
                code
            }
            Err(e) => fail(e),
        }
    })
}

/// `dynia node drain|undrain ID`.
pub fn node_state(node_path: &Path, id: &str, state: MemberState) -> u8 {
    let what = format!(
        "node {} {id}",
        if state == MemberState::Drain {
            "drain"
        } else {
            "undrain"
        }
    );
    run_change(node_path, &what, |doc| {
        member_mut(doc, id)?.state = state;
        Ok(())
    })
}

/// `dynia undeploy NAME`.
pub fn undeploy(node_path: &Path, name: &str) -> u8 {
    run_change(node_path, &format!("undeploy {name}"), |doc| {
        let before = doc.services.len();
        doc.services.retain(|s| s.name != name);
        if doc.services.len() == before {
            return Err(format!(
                "there is no service {name:?}; `dynia status` lists them"
            ));
        }
        Ok(())
    })
}

async fn status_of(ctx: &Ctx, m: &Member) -> Result<Status, ClientError> {
    ctx.client(m).status().await
}

async fn wait_for<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `dynia node make-active ID`: a planned handover. The member's priority
/// becomes one above every other member's (the election preempts on
/// reload); waits until it reports MASTER.
pub fn make_active(node_path: &Path, id: &str) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(async {
        let what = format!("node make-active {id}");
        let r = change(&ctx, &what, |doc| {
            let top = doc
                .members
                .iter()
                .filter(|m| m.id != id)
                .map(|m| m.priority)
                .max()
                .unwrap_or(0);
            if top >= 254 {
                return Err("another member has priority 254; lower it first".into());
            }
            let m = member_mut(doc, id)?;
            if m.priority <= top {
                m.priority = top + 1;
            }
            Ok(())
        })
        .await;
        let (doc, rows, aborted) = match r {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        let code = finish(&ctx, &what, &rows, aborted);
        if code != crate::commands::OK {
            return code;
        }
        let Some(m) = doc.member(id).cloned() else {
            return fail("member vanished");
        };
        let ok = wait_for(ELECTION_WAIT, || {
            let m = m.clone();
            let ctx = &ctx;
            async move {
                status_of(ctx, &m)
                    .await
                    .is_ok_and(|s| s.role == "master" && s.reserved_ip.held)
            }
        })
        .await;
        if ok {
            println!("{id} is master and holds the Reserved IP");
            crate::commands::OK
        } else {
            fail(format!(
                "{id} has the highest priority but did not become master holding the Reserved IP within {ELECTION_WAIT:?} (is `preempt` off, its proxy unable to serve, or the Reserved-IP driver failing?); see `dynia status -c {}` and its log",
                ctx.node_path.display()
            ))
        }
    })
}

/// `dynia node remove ID`: drain everywhere (and priority 1, so another
/// member takes mastership over), wait until another member is master and
/// holds the Reserved IP, then until no member has requests in flight to it
/// and it has none in flight itself (it proxied them while it was master),
/// then the document without it; the removed node gets that document too and
/// stops.
pub fn node_remove(node_path: &Path, id: &str, drain_timeout: Duration) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if id == ctx.node.node.id {
        return fail(format!(
            "{id} is this node; run `dynia node remove {id}` on another member (its daemon must stay up to finish the removal)"
        ));
    }
    rt().block_on(async {
        let cur = match ctx.current().await {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let Some(leaving) = cur.member(id).cloned() else {
            let ids: Vec<&str> = cur.members.iter().map(|m| m.id.as_str()).collect();
            return fail(format!("no member {id:?}; its members are {}", ids.join(", ")));
        };
        if cur.members.len() == 1 {
            return fail(format!("{id} is the only member; a cluster keeps at least one (stop dynia there instead)"));
        }
        let again = format!("dynia node remove {id} -c {}", ctx.node_path.display());
        // 1. Drain (and step down) everywhere.
        let step1 = format!("node remove {id} (drain)");
        println!("step 1/3: drain {id} on every member and give it the lowest priority");
        let (d1, rows, aborted) = match change(&ctx, &step1, |doc| {
            let m = member_mut(doc, id)?;
            m.state = MemberState::Drain;
            m.priority = 1;
            Ok(())
        })
        .await
        {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        let rows = excuse_unreachable(rows, id);
        let code = finish(&ctx, &step1, &rows, aborted);
        if code != crate::commands::OK {
            eprintln!("dynia: removal stopped before waiting for requests in flight; run `{again}` again");
            return code;
        }
        // 2. Mastership away from it, then nothing in flight to or through it.
        println!("step 2/3: hand mastership over if {id} has it, then wait (at most {drain_timeout:?}) until no member has requests in flight to {id} and {id} has none in flight itself");
        let others: Vec<Member> = d1.members.iter().filter(|m| m.id != id).cloned().collect();
        let master = std::cell::RefCell::new(None::<String>);
        let handed_over = wait_for(ELECTION_WAIT, || {
            let (ctx, others, leaving, master) = (&ctx, &others, &leaving, &master);
            async move {
                let still = status_of(ctx, leaving).await.is_ok_and(|s| s.role == "master");
                let all = statuses(ctx, others).await;
                let holder = all.iter().find_map(|(m, s)| {
                    s.as_ref()
                        .is_ok_and(|s| s.role == "master" && s.reserved_ip.held)
                        .then(|| m.id.clone())
                });
                *master.borrow_mut() = holder.clone();
                !still && holder.is_some()
            }
        })
        .await;
        let Some(master) = master.into_inner().filter(|_| handed_over) else {
            return fail(format!(
                "mastership did not move away from {id} to a member holding the Reserved IP within {ELECTION_WAIT:?}; it stays drained. Run `dynia node make-active ID` for another member, then `{again}`"
            ));
        };
        println!("  {master} is master and holds the Reserved IP");
        let busy = std::cell::RefCell::new(Vec::<String>::new());
        let dead_said = std::cell::Cell::new(false);
        let drained = wait_for(drain_timeout, || {
            let (ctx, others, leaving, busy, dead_said) = (&ctx, &others, &leaving, &busy, &dead_said);
            async move {
                let mut now = Vec::new();
                for (m, s) in statuses(ctx, others).await {
                    match s {
                        Ok(s) => {
                            let n: usize = s
                                .services
                                .iter()
                                .flat_map(|svc| svc.members.iter())
                                .filter(|x| x.id == id)
                                .map(|x| x.inflight)
                                .sum();
                            if n > 0 {
                                now.push(format!("{} has {n} in flight to {id}", m.id));
                            }
                        }
                        // It may be proxying requests to the leaving member.
                        Err(e) => now.push(format!("{} does not answer ({e})", m.id)),
                    }
                }
                match status_of(ctx, leaving).await {
                    Ok(s) => {
                        let n: usize = s
                            .services
                            .iter()
                            .flat_map(|svc| svc.members.iter())
                            .map(|x| x.inflight)
                            .sum();
                        if n > 0 {
                            now.push(format!("{id} has {n} in flight through its proxy"));
                        }
                    }
                    Err(e) => {
                        if !dead_said.replace(true) {
                            println!("  {id} does not answer ({e}): taken as stopped, so nothing is in flight through it");
                        }
                    }
                }
                let done = now.is_empty();
                *busy.borrow_mut() = now;
                done
            }
        })
        .await;
        if !drained {
            return fail(format!(
                "after {drain_timeout:?}: {}. {id} stays drained (gets no new requests) and in the cluster. Run `{again}` again, or with a longer --drain-timeout",
                busy.into_inner().join("; ")
            ));
        }
        println!("  nothing in flight to or through {id}");
        // 3. The document without it, to every member including it.
        let step3 = format!("node remove {id}");
        println!("step 3/3: the document without {id}, to every member (it stops)");
        match change(&ctx, &step3, |doc| {
            doc.members.retain(|m| m.id != id);
            Ok(())
        })
        .await
        {
            Ok((_, rows, aborted)) => {
                let rows = excuse_unreachable(rows, id);
                finish(&ctx, &step3, &rows, aborted)
            }
            Err(e) => fail(e),
        }
    })
}

/// A member being removed that cannot be reached (a dead node) does not
/// stop its removal: nothing can be in flight on a node that is gone, and it
/// gets no traffic from the others once they drop it. Its row says so.
fn excuse_unreachable(rows: Vec<Row>, id: &str) -> Vec<Row> {
    rows.into_iter()
        .map(|mut r| {
            if r.id == id && !r.ok && r.result.starts_with("unreachable") {
                r.ok = true;
                r.result = format!(
                    "{}; removed without it (if it comes back, stop dynia there)",
                    r.result
                );
            }
            r
        })
        .collect()
}

/// Every member's status (or why not), in `members` order, read at once.
async fn statuses(ctx: &Ctx, members: &[Member]) -> Vec<(Member, Result<Status, ClientError>)> {
    let clients = members.iter().map(|m| ctx.client(m)).collect();
    members
        .iter()
        .cloned()
        .zip(crate::client::statuses(clients).await)
        .collect()
}

/// Sends `content` at generation `max(all) + 1` to every member of `content`
/// and of `cur` (those not in `content` leave), each compare-and-set on the
/// generation and hash read from it in `read` (members not in it are read
/// now).
async fn converge(
    ctx: &Ctx,
    cur: &ClusterDoc,
    content: &ClusterDoc,
    what: &str,
    read: Vec<(Member, Result<Status, ClientError>)>,
) -> u8 {
    let mut seen: BTreeMap<String, Read> = read
        .into_iter()
        .map(|(m, s)| {
            (
                m.id,
                s.map(|s| (s.generation, s.config_hash))
                    .map_err(|e| e.to_string()),
            )
        })
        .collect();
    let missing: Vec<Member> = content
        .members
        .iter()
        .chain(cur.members.iter())
        .filter(|m| !seen.contains_key(&m.id))
        .cloned()
        .collect();
    for (m, s) in statuses(ctx, &missing).await {
        seen.insert(
            m.id,
            s.map(|s| (s.generation, s.config_hash))
                .map_err(|e| e.to_string()),
        );
    }
    let top = seen
        .values()
        .flatten()
        .map(|(g, _)| *g)
        .fold(cur.generation.max(content.generation), u64::max);
    let mut doc = content.clone();
    doc.generation = top + 1;
    let (rows, aborted) = push(ctx, &converge_targets(cur, &doc, &seen), &doc).await;
    finish(ctx, what, &rows, aborted)
}

/// `dynia sync`: every member takes the newest document (highest
/// generation; this node's on a tie), as one generation above all.
pub fn sync(node_path: &Path) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(async {
        let cur = match ctx.current().await {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let all = statuses(&ctx, &cur.members).await;
        let mine = cur.hash();
        if all.iter().all(|(_, s)| {
            s.as_ref()
                .is_ok_and(|s| s.generation == cur.generation && s.config_hash == mine)
        }) {
            println!(
                "in sync: every member has generation {} (hash {})",
                cur.generation,
                &mine[..12]
            );
            return crate::commands::OK;
        }
        // The source: the highest generation; this node on a tie.
        let mut source = cur.clone();
        for (m, s) in &all {
            if let Ok(s) = s {
                if s.generation > source.generation {
                    match ctx
                        .client(m)
                        .get_cluster()
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|t| {
                            config::parse_cluster_doc(&t, format!("{}:/v1/cluster", m.id))
                                .map_err(|e| e.to_string())
                        }) {
                        Ok(d) => source = d,
                        Err(e) => {
                            return fail(format!("cannot read {}'s newer document: {e}", m.id))
                        }
                    }
                }
            }
        }
        println!(
            "sync: taking generation {} (hash {}) to every member",
            source.generation,
            &source.hash()[..12]
        );
        converge(&ctx, &cur, &source, "sync", all).await
    })
}

/// `dynia rollback [--to GEN]`: the content of an earlier generation (by
/// default the newest kept one below the current generation) becomes the
/// next generation on every member.
pub fn rollback(node_path: &Path, to: Option<u64>) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(async {
        let cur = match ctx.current().await {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let snaps = match ctx.local.snapshots().await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let want = match to {
            Some(g) => g,
            None => match snaps.iter().map(|s| s.generation).filter(|g| *g < cur.generation).max() {
                Some(g) => g,
                None => return fail("this node keeps no earlier generation to roll back to (`GET /v1/snapshots` is empty)"),
            },
        };
        let text = match ctx.local.snapshot(want).await {
            Ok(t) => t,
            Err(e) => return fail(format!("{e}; kept generations: {:?}", snaps.iter().map(|s| s.generation).collect::<Vec<_>>())),
        };
        let content = match config::parse_cluster_doc(&text, format!("snapshot {want}")) {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        println!("rollback: the content of generation {want} becomes the next generation on every member");
        let all = statuses(&ctx, &cur.members).await;
        converge(&ctx, &cur, &content, &format!("rollback to {want}"), all).await
    })
}

/// Arguments of `dynia deploy`.
pub struct DeployArgs {
    pub name: String,
    pub hosts: Vec<String>,
    pub port: u16,
    pub health: Option<String>,
    pub plan: bool,
    pub timeout: Duration,
}

/// A line diff of two texts (`-` removed, `+` added, ` ` kept).
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

/// `dynia deploy`: see the module documentation for the generations.
pub fn deploy(node_path: &Path, a: DeployArgs) -> u8 {
    let ctx = match Ctx::load(node_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    rt().block_on(deploy_async(&ctx, a))
}

/// `doc` at another generation: the same content.
fn at(doc: &ClusterDoc, generation: u64) -> ClusterDoc {
    let mut d = doc.clone();
    d.generation = generation;
    d
}

/// The health of `service` for member `id` as `client`'s daemon sees it.
async fn service_health(client: &AdminClient, service: &str, id: &str) -> String {
    client
        .status()
        .await
        .ok()
        .and_then(|s| {
            s.services
                .iter()
                .find(|s| s.name == service)
                .and_then(|s| s.members.iter().find(|x| x.id == id))
                .map(|x| x.health.clone())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Waits (at most `limit`) for `service` to turn UP for member `m` on its own
/// daemon; `Err` carries the last health seen.
async fn gate(ctx: &Ctx, m: &Member, service: &str, limit: Duration) -> Result<(), String> {
    let client = ctx.client(m);
    let last = std::cell::RefCell::new(String::from("unknown"));
    let up = wait_for(limit, || {
        let (client, last) = (&client, &last);
        async move {
            let h = service_health(client, service, &m.id).await;
            let up = h == "up";
            *last.borrow_mut() = h;
            up
        }
    })
    .await;
    if up {
        Ok(())
    } else {
        Err(last.into_inner())
    }
}

async fn deploy_async(ctx: &Ctx, a: DeployArgs) -> u8 {
    let cur = match ctx.current().await {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let mut health = Health::default();
    if let Some(p) = &a.health {
        health.path = p.clone();
    }
    let service = Service {
        name: a.name.clone(),
        hosts: a.hosts.clone(),
        port: a.port,
        retries: 2,
        health,
        hsts: None,
    };
    let g = cur.generation;
    // `old`: this node's document without the service; `new`: with it. A
    // service already here (the same settings) stays as it is: deploying it
    // again resumes a stopped roll or re-checks a finished one.
    let mut old = cur.clone();
    let new = match cur.services.iter().find(|s| s.name == a.name) {
        Some(existing) => {
            if existing.hosts != service.hosts
                || existing.port != service.port
                || existing.health.path != service.health.path
            {
                return fail(format!(
                    "service {:?} exists with other settings (hosts {:?}, port {}); `dynia undeploy {}` first",
                    a.name, existing.hosts, existing.port, a.name
                ));
            }
            old.services.retain(|s| s.name != a.name);
            cur.clone()
        }
        None => {
            let mut n = cur.clone();
            n.services.push(service);
            n
        }
    };
    if let Err(e) = at(&new, g + 1).validate() {
        return fail(format!(
            "deploy {}: the new document would be invalid:\n{e}",
            a.name
        ));
    }
    if a.plan {
        println!(
            "plan: deploy {} (nothing is changed)\n{}",
            a.name,
            diff(&cur.to_toml(), &at(&new, g + 1).to_toml())
        );
        return crate::commands::OK;
    }
    // Every member must be reachable (a roll that cannot reach a node stops
    // anyway) and have this node's document: the content before the deploy
    // or, left by a stopped roll of this same service, the content with it.
    // Anything else is work this node has not seen, which a deploy built
    // from this node's document would overwrite.
    let all = statuses(ctx, &cur.members).await;
    let (old_hash, new_hash) = (at(&old, g).hash(), at(&new, g).hash());
    let mut other = Vec::new();
    let mut has = Vec::new();
    for (m, s) in &all {
        match s {
            Ok(s) => {
                if s.generation != g || (s.config_hash != old_hash && s.config_hash != new_hash) {
                    other.push(format!(
                        "{} (generation {}, hash {})",
                        m.id,
                        s.generation,
                        &s.config_hash[..12.min(s.config_hash.len())]
                    ));
                }
                has.push(s.config_hash == new_hash);
            }
            Err(e) => {
                return fail(format!(
                    "deploy {} not started: member {} is unreachable ({e}); bring it back (it catches up) or `dynia node remove {}`, then deploy again",
                    a.name, m.id, m.id
                ))
            }
        }
    }
    if !other.is_empty() {
        return fail(format!(
            "deploy {} refused, nothing was changed: {} {} not have this node's cluster document (generation {g}, hash {}), so a deploy from here would replace work this node has not seen. \
             Bring every member to one document first with\n  {}\n(it takes the newest generation everywhere; `dynia status` shows who differs), then deploy again.",
            a.name,
            other.join(", "),
            if other.len() == 1 { "does" } else { "do" },
            &cur.hash()[..12],
            ctx.sync_cmd()
        ));
    }
    let everywhere = has.iter().all(|h| *h);
    let p = if everywhere { g } else { g + 1 };
    if everywhere {
        println!(
            "deploy {}: every member already has it (generation {g}); checking that it is UP on each, nothing is changed",
            a.name
        );
    } else {
        // 1. Pin: every member keeps the content it has (with or without the
        // service), as generation P, compare-and-set on what was read.
        println!(
            "deploy {}: step 1: every member to generation {p}, each keeping the content it has",
            a.name
        );
        let pins: Vec<(Target, ClusterDoc)> = all
            .iter()
            .zip(&has)
            .map(|((m, s), has)| {
                let s = s.as_ref().expect("unreachable members returned above");
                (
                    Target {
                        member: m.clone(),
                        base: Base::Cas(s.generation, Some(s.config_hash.clone())),
                        leave: false,
                    },
                    at(if *has { &new } else { &old }, p),
                )
            })
            .collect();
        let (rows, aborted) = push_each(ctx, &pins).await;
        if aborted || rows.iter().any(|r| !r.ok) {
            return finish(ctx, &format!("deploy {} (step 1)", a.name), &rows, aborted);
        }
        println!(
            "deploy {}: step 2: one member at a time, each must report {} UP within {:?}",
            a.name, a.name, a.timeout
        );
    }
    // 2. Roll, one member at a time, gated on the service turning UP there.
    let (old_p, new_p) = (at(&old, p), at(&new, p));
    let mut rows: Vec<Row> = Vec::new();
    let mut stopped: Option<(String, String)> = None;
    for ((m, _), has) in all.iter().zip(&has) {
        let client = ctx.client(m);
        let row = |ok: bool, result: String| Row {
            id: m.id.clone(),
            addr: client.addr().to_string(),
            ok,
            result,
        };
        if stopped.is_some() {
            rows.push(row(false, "not reached (the roll stopped)".into()));
            continue;
        }
        if !*has {
            let put = client
                .put_cluster(&ApplyRequest {
                    base_generation: p,
                    base_hash: Some(old_p.hash()),
                    document: new_p.to_toml(),
                    leave: false,
                })
                .await;
            if let Err(e) = put {
                let why = format!("not applied: {e}");
                rows.push(row(false, why.clone()));
                stopped = Some((m.id.clone(), why));
                continue;
            }
        }
        let last = match gate(ctx, m, &a.name, a.timeout).await {
            Ok(()) => {
                rows.push(row(
                    true,
                    if *has {
                        format!("already had {}: UP", a.name)
                    } else {
                        format!("rolled: {} UP", a.name)
                    },
                ));
                continue;
            }
            Err(last) => last,
        };
        let why = format!(
            "{} did not turn UP within {:?} (health {last})",
            a.name, a.timeout
        );
        if everywhere {
            // Nothing was changed by this run: report, do not roll back.
            rows.push(row(false, why.clone()));
            stopped = Some((m.id.clone(), why));
            continue;
        }
        let back = client
            .put_cluster(&ApplyRequest {
                base_generation: p,
                base_hash: Some(new_p.hash()),
                document: old_p.to_toml(),
                leave: false,
            })
            .await;
        let result = match back {
            Ok(_) => format!("{why}; rolled back"),
            Err(e) => format!("{why}; rolling back FAILED too: {e}"),
        };
        rows.push(row(false, result));
        stopped = Some((m.id.clone(), why));
    }
    print_rows(&rows);
    let c = ctx.node_path.display();
    let again = format!(
        "dynia deploy {name} {hosts} --port {port}{health} --timeout {timeout} -c {c}",
        name = a.name,
        hosts = a
            .hosts
            .iter()
            .map(|h| format!("--host {h}"))
            .collect::<Vec<_>>()
            .join(" "),
        port = a.port,
        health = a
            .health
            .as_ref()
            .map(|h| format!(" --health {h}"))
            .unwrap_or_default(),
        timeout = config::Duration::from(a.timeout),
    );
    match stopped {
        None => {
            println!(
                "deploy {}: {} all {} members (generation {p})",
                a.name,
                if everywhere { "UP on" } else { "rolled to" },
                rows.len()
            );
            crate::commands::OK
        }
        Some((id, why)) if everywhere => {
            eprintln!(
                "dynia: deploy {name}: every member has it, but on {id}: {why}. Nothing was changed. Fix the service on {id}, then check again with\n  {again}\nor remove it everywhere with\n  dynia undeploy {name} -c {c}",
                name = a.name
            );
            crate::commands::FAILED
        }
        Some((id, why)) => {
            let rolled: Vec<&str> = rows
                .iter()
                .filter(|r| r.ok)
                .map(|r| r.id.as_str())
                .collect();
            eprintln!(
                "dynia: deploy {name} stopped at member {id}: {why}. Rolled: [{}]; {id} was rolled back; later members were not touched. \
                 The cluster shows drift (generation {p}, two documents) until you either fix the service on {id} and resume with\n  \
                 {again}\nor undo the deploy everywhere with\n  dynia rollback -c {c}",
                rolled.join(", "),
                name = a.name,
            );
            crate::commands::FAILED
        }
    }
}
