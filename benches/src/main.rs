//! dynia vs HAProxy, side by side, on this machine (`docs/targets.md`).
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo build --release --bin dynia
//! cargo run --release -p dynia-benches -- --duration 10s --connections 50
//! # or both steps at once:  benches/run.sh --duration 10s --connections 50
//! # CI, a few seconds:      benches/run.sh --smoke
//! ```
//!
//! It builds nothing itself: it runs `target/release/dynia` (next to its own
//! executable; `--dynia PATH` to override), `haproxy` and `wrk` from PATH.
//! It starts two upstreams (this executable, `upstream` mode) on 127.0.0.2 and
//! 127.0.0.3, HAProxy and dynia with equivalent configurations
//! (see `configs.rs`), then for each proxy: RSS after start, a warm-up, idle
//! RSS, and `--rounds` wrk runs, alternating the proxies. It prints the median
//! round of each and the dynia/HAProxy ratios against the targets, marking
//! MISS. Exit status: 0 when every measurement ran (targets missed or not);
//! 1 when a proxy failed to start or wrk saw errors or non-2xx/3xx answers.
//!
//! Cores: with two CPUs the proxy under test is pinned (taskset) to the first
//! and wrk plus the upstreams to the second; with three or more the upstreams
//! get a third; with one nothing is pinned. Every process it starts is killed
//! when it ends (also on error, panic and Ctrl-C); all traffic stays on
//! 127.0.0.0/8; every wait is bounded.
//!
//! `dynia-benches failover` is a second benchmark (root only): failover time
//! and false failovers, dynia vs keepalived on a netns cluster; see
//! `failover.rs` and benches/README.md.

mod configs;
mod failover;
mod https;
mod probe;
mod procs;
mod upstream;
mod wrk;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use configs::{BenchMember, BenchService, HOST};
use procs::{nap, Proc};
use wrk::WrkReport;

const MIB: f64 = 1024.0;
/// Idle memory target (`docs/targets.md`).
const IDLE_RSS_TARGET_MIB: f64 = 12.0;

#[derive(Parser)]
#[command(
    name = "dynia-benches",
    about = "dynia vs HAProxy: requests/s, p50/p99 latency and RSS, side by side",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Failover time and false failovers, dynia vs keepalived, on a netns
    /// cluster (root only; see benches/README.md).
    Failover(failover::FailoverArgs),
    /// Internal: serve the benchmark upstreams (`ADDR=ID`, repeatable).
    #[command(hide = true)]
    Upstream {
        #[arg(long = "listen", required = true)]
        listen: Vec<String>,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// wrk duration of each measured run (whole seconds: "10s", "1m").
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    duration: Duration,
    /// wrk keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Measured rounds; each round runs both proxies, alternating who goes first.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// wrk warm-up of each proxy before its idle RSS is taken.
    #[arg(long, default_value = "3s", value_parser = parse_secs)]
    warmup: Duration,
    /// CI mode: 1 s per proxy, 1 round, 1 s warm-up, no spec-shape RSS run.
    #[arg(long)]
    smoke: bool,
    /// Only this proxy (`haproxy` or `dynia`); default both.
    #[arg(long, value_parser = ["haproxy", "dynia"])]
    only: Option<String>,
    /// The dynia binary (default: `dynia` next to this executable, i.e. target/release/dynia).
    #[arg(long)]
    dynia: Option<PathBuf>,
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Keep the temporary directory (configs and logs) and print its path.
    #[arg(long)]
    keep_tmp: bool,
    /// HTTPS instead: keep-alive requests/s and full handshakes/s (src/https.rs).
    #[arg(long)]
    https: bool,
    /// With --https: an RSA-2048 certificate instead of ECDSA P-256.
    #[arg(long, requires = "https")]
    rsa: bool,
    /// The cost of the access log: dynia with it off and with it on
    /// (`haproxy` format, to a file), same run, instead of HAProxy.
    #[arg(long, conflicts_with_all = ["https", "only"])]
    access_log: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix('s') {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected whole seconds like 10s or 1m"))?;
    if n == 0 || n * mult > 3600 {
        return Err(format!("{s:?}: between 1s and 1h"));
    }
    Ok(Duration::from_secs(n * mult))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Failover(args)) = cli.cmd {
        return failover::main(args);
    }
    if let Some(Cmd::Upstream { listen }) = cli.cmd {
        let pairs: Result<Vec<(SocketAddr, String)>> = listen
            .iter()
            .map(|l| {
                let (a, id) = l.split_once('=').context("expected ADDR=ID")?;
                Ok((a.parse()?, id.to_string()))
            })
            .collect();
        return match pairs.and_then(upstream::serve) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    procs::install_signals();
    let mut args = cli.bench;
    if args.smoke {
        args.duration = Duration::from_secs(1);
        args.warmup = Duration::from_secs(1);
        args.rounds = 1;
    }
    match if args.https {
        https::run(&args)
    } else {
        run(&args)
    } {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dynia-benches: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Haproxy,
    Dynia,
    /// dynia with the access log on (`--access-log`).
    DyniaLog,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Dynia => "dynia",
            Kind::DyniaLog => "dynia+log",
        }
    }
}

/// A proxy under test, running.
struct Target {
    kind: Kind,
    proc: Proc,
    listen: SocketAddr,
    rss_start_kib: u64,
    rss_idle_kib: u64,
    runs: Vec<Run>,
}

/// One measured wrk run.
#[derive(Clone)]
struct Run {
    round: u32,
    wrk: WrkReport,
    rss_load_kib: u64,
    proxy_cpu: f64,
    upstream_cpu: f64,
    cores: Vec<(usize, f64)>,
}

impl Run {
    /// Requests served per second of CPU the proxy used: less sensitive than
    /// requests/s to other work taking the proxy's core.
    fn per_cpu_second(&self) -> f64 {
        self.wrk.rps / (self.proxy_cpu / 100.0)
    }
}

/// Where each party runs (`taskset -c`), if pinned.
struct Pinning {
    proxy: Option<usize>,
    wrk: Option<usize>,
    upstream: Option<usize>,
}

impl Pinning {
    fn describe(&self) -> String {
        match (self.proxy, self.wrk, self.upstream) {
            (Some(p), Some(w), Some(u)) => {
                format!("proxy on cpu{p}, wrk on cpu{w}, upstreams on cpu{u} (taskset)")
            }
            _ => "not pinned".into(),
        }
    }
}

/// Removes the temporary directory last (it is declared before any process).
struct TmpDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn pinned(cpu: Option<usize>, program: &Path) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn run(args: &BenchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let kinds: Vec<Kind> = match args.only.as_deref() {
        _ if args.access_log => vec![Kind::Dynia, Kind::DyniaLog],
        Some("haproxy") => vec![Kind::Haproxy],
        Some("dynia") => vec![Kind::Dynia],
        _ => vec![Kind::Haproxy, Kind::Dynia],
    };
    let want_dynia = kinds.contains(&Kind::Dynia);

    // Tools.
    let wrk_bin = procs::which(&args.wrk)
        .with_context(|| format!("`{}` not found; apt-get install -y wrk", args.wrk))?;
    let haproxy_bin = procs::which(&args.haproxy)
        .with_context(|| format!("`{}` not found; apt-get install -y haproxy", args.haproxy))?;
    let dynia_bin = dynia_path(args.dynia.as_deref());
    if want_dynia && !dynia_bin.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release --bin dynia` \
             (benches/run.sh does both), or pass --dynia PATH",
            dynia_bin.display()
        );
    }
    let self_exe = std::env::current_exe().context("current_exe")?;

    // CPUs.
    let cpus = procs::allowed_cpus();
    let have_taskset = procs::which("taskset").is_some();
    let pin = if args.no_pin || !have_taskset || cpus.len() < 2 {
        Pinning {
            proxy: None,
            wrk: None,
            upstream: None,
        }
    } else {
        Pinning {
            proxy: Some(cpus[0]),
            wrk: Some(cpus[1]),
            upstream: Some(*cpus.get(2).unwrap_or(&cpus[1])),
        }
    };

    let tmp = TmpDir {
        path: std::env::temp_dir().join(format!(
            "dynia-bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )),
        keep: args.keep_tmp,
    };
    std::fs::create_dir_all(&tmp.path)?;

    // Addresses: members on 127.0.0.2-4 share one port per service.
    let ip = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    let member_ips: Vec<IpAddr> = (2..=4).map(|d| IpAddr::V4(ip(d))).collect();
    let web_port = probe::free_port(&member_ips, &[])?;
    let api_port = probe::free_port(&member_ips, &[web_port])?;
    let lo = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let mut taken = vec![web_port, api_port];
    let mut next_local = || -> Result<SocketAddr> {
        let p = probe::free_port(&lo, &taken)?;
        taken.push(p);
        Ok(SocketAddr::new(lo[0], p))
    };
    let haproxy_listen = next_local()?;
    let dynia_listen = next_local()?;
    let dynia_admin = next_local()?;
    let spec_listen = next_local()?;
    let spec_admin = next_local()?;
    let log_listen = next_local()?;
    let log_admin = next_local()?;

    let names = ["bench-one", "bench-two", "bench-three"];
    let members3: Vec<BenchMember> = names
        .iter()
        .zip(2u8..)
        .map(|(id, d)| BenchMember {
            id: id.to_string(),
            ip: ip(d),
        })
        .collect();
    let members2 = &members3[..2];
    let web = BenchService {
        name: "web".into(),
        host: HOST.into(),
        port: web_port,
    };
    let api = BenchService {
        name: "api".into(),
        host: format!("api.{HOST}"),
        port: api_port,
    };

    println!("dynia vs HAProxy (targets: docs/targets.md)");
    println!(
        "machine: nproc={} ({}), {}",
        cpus.len(),
        cpu_model(),
        pin.describe()
    );
    println!("load average at start: {}", loadavg());
    println!("haproxy: {}", tool_version(&haproxy_bin, "-v", &tmp.path));
    if want_dynia {
        println!("dynia: {}", dynia_bin.display());
    }
    println!(
        "wrk -t1 -c{} -d{}s --latency, Host: {HOST}, {} round(s) alternating, warm-up {}s{}",
        args.connections,
        args.duration.as_secs(),
        args.rounds,
        args.warmup.as_secs(),
        if args.smoke { " [smoke]" } else { "" }
    );
    println!();

    // Upstreams: one process serves every member address of both services.
    let mut cmd = pinned(pin.upstream, &self_exe);
    cmd.arg("upstream");
    for m in &members3 {
        cmd.arg("--listen")
            .arg(format!("{}:{}={}", m.ip, web_port, m.id));
        cmd.arg("--listen")
            .arg(format!("{}:{}={}-api", m.ip, api_port, m.id));
    }
    let mut upstreams = Proc::spawn("upstreams", cmd, &tmp.path.join("upstreams.log"))?;
    for m in &members3 {
        let addr = SocketAddr::new(IpAddr::V4(m.ip), web_port);
        probe::wait_until(
            &format!("upstream {}", m.id),
            Duration::from_secs(10),
            || upstreams.ensure_running(),
            || Ok(probe::get(addr, HOST, "/dynia-health")?.0 == 200),
        )?;
    }
    let upstream_pid = upstreams.pid();

    // The proxies.
    let mut targets: Vec<Target> = Vec::new();
    for &kind in &kinds {
        let t = match kind {
            Kind::Haproxy => {
                let cfg = tmp.path.join("haproxy.cfg");
                std::fs::write(&cfg, configs::haproxy_cfg(haproxy_listen, members2, &web))?;
                check_haproxy_cfg(&haproxy_bin, &cfg, &tmp.path)?;
                let mut cmd = pinned(pin.proxy, &haproxy_bin);
                cmd.arg("-db").arg("-f").arg(&cfg);
                let p = Proc::spawn("haproxy", cmd, &tmp.path.join("haproxy.log"))?;
                start_target(kind, p, haproxy_listen, None, members2)?
            }
            Kind::Dynia => {
                let dir = tmp.path.join("dynia");
                let files = configs::dynia_files(
                    &dir,
                    dynia_listen,
                    dynia_admin,
                    free_udp_port(ip(2))?,
                    members2,
                    std::slice::from_ref(&web),
                )?;
                let mut cmd = pinned(pin.proxy, &dynia_bin);
                cmd.arg("run").arg("-c").arg(&files.node_file);
                let p = Proc::spawn("dynia", cmd, &tmp.path.join("dynia.log"))?;
                start_target(kind, p, dynia_listen, Some(dynia_admin), members2)?
            }
            Kind::DyniaLog => {
                let dir = tmp.path.join("dynia-log");
                let files = configs::dynia_files(
                    &dir,
                    log_listen,
                    log_admin,
                    free_udp_port(ip(2))?,
                    members2,
                    std::slice::from_ref(&web),
                )?;
                configs::access_log_on(&files, &dir.join("access.log"))?;
                let mut cmd = pinned(pin.proxy, &dynia_bin);
                cmd.arg("run").arg("-c").arg(&files.node_file);
                let p = Proc::spawn("dynia+log", cmd, &tmp.path.join("dynia-log.log"))?;
                start_target(kind, p, log_listen, Some(log_admin), members2)?
            }
        };
        targets.push(t);
    }

    // Warm-up, then idle RSS.
    for t in &mut targets {
        let _ = run_wrk(
            args,
            &wrk_bin,
            &pin,
            t,
            args.warmup,
            &tmp.path,
            upstream_pid,
            0,
        )?;
        nap(Duration::from_secs(1))?;
        t.proc.ensure_running()?;
        t.rss_idle_kib = procs::rss_kib(t.proc.pid())?;
    }

    // Measured rounds, alternating who goes first.
    for round in 1..=args.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            nap(Duration::from_millis(500))?;
            let t = &mut targets[i];
            let r = run_wrk(
                args,
                &wrk_bin,
                &pin,
                t,
                args.duration,
                &tmp.path,
                upstream_pid,
                round,
            )?;
            eprintln!(
                "round {round} {:<8} {:>10.0} req/s  p50 {:>8}  p99 {:>8}  errors {}  proxy cpu {:.0}%  upstreams cpu {:.0}%  cores {}",
                t.kind.name(),
                r.wrk.rps,
                fmt_dur(r.wrk.p50),
                fmt_dur(r.wrk.p99),
                r.wrk.errors(),
                r.proxy_cpu,
                r.upstream_cpu,
                fmt_cores(&r.cores)
            );
            t.runs.push(r);
        }
    }

    // Idle memory (docs/targets.md): a dynia with 2 services and 3 members, after start.
    let mut spec_rss: Option<u64> = None;
    if want_dynia && !args.smoke && !args.access_log {
        let dir = tmp.path.join("dynia-spec");
        let files = configs::dynia_files(
            &dir,
            spec_listen,
            spec_admin,
            free_udp_port(ip(2))?,
            &members3,
            &[web.clone(), api.clone()],
        )?;
        let mut cmd = pinned(pin.proxy, &dynia_bin);
        cmd.arg("run").arg("-c").arg(&files.node_file);
        let p = Proc::spawn(
            "dynia (2 services, 3 members)",
            cmd,
            &tmp.path.join("dynia-spec.log"),
        )?;
        let mut t = start_target(Kind::Dynia, p, spec_listen, Some(spec_admin), &members3)?;
        nap(Duration::from_secs(2))?;
        t.proc.ensure_running()?;
        spec_rss = Some(procs::rss_kib(t.proc.pid())?);
        t.proc.stop();
    }

    upstreams.ensure_running()?;
    let ok = report(args, &targets, spec_rss);
    println!("load average at end: {}", loadavg());
    println!("total time: {:.0}s", started.elapsed().as_secs_f64());
    drop(targets);
    drop(upstreams);
    drop(tmp);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Waits for a started proxy to answer with every member, records RSS.
fn start_target(
    kind: Kind,
    mut proc: Proc,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    members: &[BenchMember],
) -> Result<Target> {
    let name = proc.name.clone();
    if let Some(admin) = admin {
        let took = probe::wait_until(
            &format!("{name} admin listener {admin}"),
            Duration::from_secs(20),
            || proc.ensure_running(),
            || Ok(probe::get(admin, "localhost", "/metrics")?.0 == 200),
        )?;
        eprintln!("{name}: admin answers /metrics after {took:.1?}");
    }
    // Round robin: every member must have answered through the proxy. The
    // limit leaves room for `rise 2` at `interval 5s` if members start DOWN.
    let want: BTreeSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut last = String::new();
    let took = probe::wait_until(
        &format!("{name} on {listen} (every member answering through it)"),
        Duration::from_secs(30),
        || proc.ensure_running(),
        || {
            let (status, body) = probe::get(listen, HOST, "/")?;
            last = format!("{status} {}", body.trim());
            if status == 200 {
                seen.insert(body.trim().to_string());
            }
            Ok(want.iter().all(|id| seen.contains(*id)))
        },
    )
    .with_context(|| format!("last answer: {last}; seen: {seen:?}"))?;
    eprintln!("{name}: every member answers through {listen} after {took:.1?}");
    let rss_start_kib = procs::rss_kib(proc.pid())?;
    Ok(Target {
        kind,
        proc,
        listen,
        rss_start_kib,
        rss_idle_kib: 0,
        runs: Vec::new(),
    })
}

#[allow(clippy::too_many_arguments)]
fn run_wrk(
    args: &BenchArgs,
    wrk_bin: &Path,
    pin: &Pinning,
    t: &mut Target,
    duration: Duration,
    tmp: &Path,
    upstream_pid: u32,
    round: u32,
) -> Result<Run> {
    t.proc.ensure_running()?;
    let pid = t.proc.pid();
    let mut cmd = pinned(pin.wrk, wrk_bin);
    cmd.arg("-t1")
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Host: {HOST}"))
        .arg(format!("http://{}/", t.listen));
    let log = tmp.join(format!("wrk-{}-{round}.log", t.kind.name()));
    let cpu0 = procs::cpu_time(pid);
    let up0 = procs::cpu_time(upstream_pid);
    let cores0 = procs::cpu_jiffies();
    let t0 = Instant::now();
    let mut w = Proc::spawn("wrk", cmd, &log)?;
    let mut rss_max = 0;
    // Bounded: wrk ends after `duration`; give it 20 s more, then fail.
    let deadline = duration + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = w.exited() {
            break st;
        }
        if t0.elapsed() > deadline {
            w.stop();
            bail!(
                "wrk still running after {deadline:?}; see {}",
                log.display()
            );
        }
        if let Err(e) = t.proc.ensure_running() {
            w.stop();
            return Err(e.context(format!("{} died under load", t.kind.name())));
        }
        if let Ok(kib) = procs::rss_kib(pid) {
            rss_max = rss_max.max(kib);
        }
        nap(Duration::from_millis(200))?;
    };
    let wall = t0.elapsed().as_secs_f64();
    let pct = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => 100.0 * b.saturating_sub(a).as_secs_f64() / wall,
        _ => f64::NAN,
    };
    let proxy_cpu = pct(cpu0, procs::cpu_time(pid));
    let upstream_cpu = pct(up0, procs::cpu_time(upstream_pid));
    let cores = procs::cpu_busy(&cores0, &procs::cpu_jiffies());
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}):\n{out}");
    }
    let wrk = wrk::parse(&out)?;
    Ok(Run {
        round,
        wrk,
        rss_load_kib: rss_max,
        proxy_cpu,
        upstream_cpu,
        cores,
    })
}

/// Prints the table and the ratios; false if any run saw errors.
fn report(args: &BenchArgs, targets: &[Target], spec_rss: Option<u64>) -> bool {
    let mut ok = true;
    println!();
    println!(
        "median round by requests/s of {} ({} s each, {} connections):",
        args.rounds,
        args.duration.as_secs(),
        args.connections
    );
    println!(
        "{:<8} {:>11} {:>9} {:>9} {:>11} {:>10} {:>10} {:>9} {:>10} {:>7}",
        "proxy",
        "requests/s",
        "p50",
        "p99",
        "RSS start",
        "idle RSS",
        "RSS load",
        "proxy CPU",
        "req/CPU-s",
        "errors"
    );
    let mut medians: Vec<(Kind, Run, &Target)> = Vec::new();
    for t in targets {
        let mut runs = t.runs.clone();
        runs.sort_by(|a, b| a.wrk.rps.total_cmp(&b.wrk.rps));
        let errors: u64 = t.runs.iter().map(|r| r.wrk.errors()).sum();
        if errors > 0 {
            ok = false;
        }
        let Some(m) = runs.get(runs.len().saturating_sub(1) / 2).cloned() else {
            continue;
        };
        println!(
            "{:<8} {:>11.0} {:>9} {:>9} {:>11} {:>10} {:>10} {:>8.0}% {:>10.0} {:>7}",
            t.kind.name(),
            m.wrk.rps,
            fmt_dur(m.wrk.p50),
            fmt_dur(m.wrk.p99),
            fmt_mib(t.rss_start_kib),
            fmt_mib(t.rss_idle_kib),
            fmt_mib(m.rss_load_kib),
            m.proxy_cpu,
            m.per_cpu_second(),
            if errors > 0 {
                format!("{errors} ERR")
            } else {
                "0".into()
            }
        );
        medians.push((t.kind, m, t));
    }
    println!();
    println!("every round:");
    for t in targets {
        for r in &t.runs {
            println!(
                "  round {} {:<8} {:>10.0} req/s  p50 {:>8}  p99 {:>8}  {} requests  socket errors {}  non-2xx/3xx {}  proxy cpu {:.0}% ({:.0} req/CPU-s)  upstreams cpu {:.0}%  cores {}",
                r.round,
                t.kind.name(),
                r.wrk.rps,
                fmt_dur(r.wrk.p50),
                fmt_dur(r.wrk.p99),
                r.wrk.requests,
                r.wrk.socket_errors,
                r.wrk.bad_status,
                r.proxy_cpu,
                r.per_cpu_second(),
                r.upstream_cpu,
                fmt_cores(&r.cores)
            );
        }
    }
    println!();
    let get = |k: Kind| medians.iter().find(|(kind, _, _)| *kind == k);
    if let (Some((_, h, _)), Some((_, d, _))) = (get(Kind::Haproxy), get(Kind::Dynia)) {
        let rps = d.wrk.rps / h.wrk.rps;
        let p99 = d.wrk.p99.as_secs_f64() / h.wrk.p99.as_secs_f64();
        println!(
            "requests/s  dynia/haproxy = {rps:.3}  (target >= 1.0)  {}",
            mark(rps >= 1.0)
        );
        println!(
            "p99         dynia/haproxy = {p99:.3}  (target <= 1.0)  {}",
            mark(p99 <= 1.0)
        );
        paired_ratios(targets);
    } else {
        println!("ratios: n/a (only one proxy ran)");
    }
    if let (Some((_, off, _)), Some((_, on, _))) = (get(Kind::Dynia), get(Kind::DyniaLog)) {
        access_log_ratios(targets, off, on);
    }
    if let Some((_, _, t)) = get(Kind::Dynia) {
        let idle = t.rss_idle_kib as f64 / MIB;
        println!(
            "idle RSS    dynia = {idle:.1} MiB after start + warm-up, this config (1 service, 2 members)  (target <= {IDLE_RSS_TARGET_MIB} MiB)  {}",
            mark(idle <= IDLE_RSS_TARGET_MIB)
        );
    }
    if let Some(kib) = spec_rss {
        let mib = kib as f64 / MIB;
        println!(
            "idle RSS    dynia = {mib:.1} MiB after start, 2 services, 3 members  (target <= {IDLE_RSS_TARGET_MIB} MiB)  {}",
            mark(mib <= IDLE_RSS_TARGET_MIB)
        );
    }
    if !ok {
        println!(
            "ERRORS: wrk saw socket errors or non-2xx/3xx answers; the figures above are not valid"
        );
    }
    ok
}

/// The access log's cost: requests per proxy CPU-second with the log on
/// over off, for the median rounds and for each round's back-to-back pair.
fn access_log_ratios(targets: &[Target], off: &Run, on: &Run) {
    let ratio = on.per_cpu_second() / off.per_cpu_second();
    println!(
        "req/CPU-s   dynia+log/dynia = {ratio:.3}  ({:.0} vs {:.0}; target >= 0.95)  {}",
        on.per_cpu_second(),
        off.per_cpu_second(),
        mark(ratio >= 0.95)
    );
    let find = |k: Kind| targets.iter().find(|t| t.kind == k);
    let (Some(a), Some(b)) = (find(Kind::Dynia), find(Kind::DyniaLog)) else {
        return;
    };
    let mut pairs: Vec<f64> = a
        .runs
        .iter()
        .filter_map(|r| {
            let l = b.runs.iter().find(|x| x.round == r.round)?;
            Some(l.per_cpu_second() / r.per_cpu_second())
        })
        .collect();
    pairs.sort_by(f64::total_cmp);
    let list: Vec<String> = pairs.iter().map(|p| format!("{p:.3}")).collect();
    if let Some(m) = pairs.get(pairs.len().saturating_sub(1) / 2) {
        println!(
            "req/CPU-s   dynia+log/dynia per round: {} (median {m:.3})",
            list.join(" ")
        );
    }
}

/// Ratios of the two runs of each round (back to back, so under the same
/// neighbours), and their medians: a check on the median-round figures when
/// the machine is shared.
fn paired_ratios(targets: &[Target]) {
    let find = |k: Kind| targets.iter().find(|t| t.kind == k);
    let (Some(h), Some(d)) = (find(Kind::Haproxy), find(Kind::Dynia)) else {
        return;
    };
    let mut rps = Vec::new();
    let mut p99 = Vec::new();
    let mut eff = Vec::new();
    for hr in &h.runs {
        if let Some(dr) = d.runs.iter().find(|r| r.round == hr.round) {
            rps.push(dr.wrk.rps / hr.wrk.rps);
            p99.push(dr.wrk.p99.as_secs_f64() / hr.wrk.p99.as_secs_f64());
            eff.push(dr.per_cpu_second() / hr.per_cpu_second());
        }
    }
    let show = |name: &str, v: &mut Vec<f64>| {
        let each: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
        v.sort_by(f64::total_cmp);
        let med = v
            .get(v.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "  {name:<24} per round [{}]  median {med:.3}",
            each.join(", ")
        );
    };
    println!("dynia/haproxy within each round:");
    show("requests/s", &mut rps);
    show("p99", &mut p99);
    show("requests per CPU-second", &mut eff);
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0}us")
    } else {
        format!("{:.2}ms", us / 1000.0)
    }
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / MIB)
}

fn fmt_cores(c: &[(usize, f64)]) -> String {
    c.iter()
        .map(|(cpu, pct)| format!("cpu{cpu} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn dynia_path(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join("dynia");
        if p.is_file() {
            return p;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/dynia")
}

/// `haproxy -c`: a configuration error is reported before anything runs.
fn check_haproxy_cfg(bin: &Path, cfg: &Path, tmp: &Path) -> Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg("-f").arg(cfg);
    let log = tmp.join("haproxy-check.log");
    let mut p = Proc::spawn("haproxy -c", cmd, &log)?;
    let st = p.wait_for(Duration::from_secs(10))?;
    if !st.success() {
        bail!(
            "haproxy refused {}:\n{}",
            cfg.display(),
            procs::tail(&log, 20)
        );
    }
    Ok(())
}

/// First line of `bin flag`, bounded in time.
fn tool_version(bin: &Path, flag: &str, tmp: &Path) -> String {
    let mut cmd = Command::new(bin);
    cmd.arg(flag);
    let log = tmp.join("version.log");
    let Ok(mut p) = Proc::spawn("version", cmd, &log) else {
        return "?".into();
    };
    let _ = p.wait_for(Duration::from_secs(5));
    procs::tail(&log, 100)
        .lines()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn free_udp_port(ip: Ipv4Addr) -> Result<u16> {
    let s = UdpSocket::bind((ip, 0))?;
    Ok(s.local_addr()?.port())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
