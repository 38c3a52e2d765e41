//! Failover benchmark: dynia vs keepalived on the same netns rig, same run
//! (`docs/targets.md`: "node loss" and "false failovers"; the rig: `docs/testing.md`).
//!
//! ```text
//! cargo build --release -p dynia --bin dynia
//! cargo run --release -p dynia-benches -- failover [--trials 20] [--soak 10m] [--smoke]
//! ```
//!
//! Needs root (namespaces, addresses, raw sockets); otherwise it says why and
//! exits 0. The rig is `dynia_testkit::netns`, the tests' own harness: three
//! node namespaces and a client namespace on one bridge, 10.99.X.0/24
//! addresses that exist nowhere else, so all traffic stays inside.
//!
//! Failover time: each trial builds a fresh rig, starts fresh processes,
//! waits until one master holds the VIP and the client gets 200s, then
//! SIGKILLs the master and measures from just before the kill to the end of
//! the first successful `GET /` on the VIP that started after the kill and
//! was answered by a new master. The trials of the three configurations are
//! interleaved (dynia, keepalived v2, keepalived v3, dynia, …) so that noise
//! from other work on the machine lands on all of them alike.
//!
//! False failovers: a dynia cluster whose master's proxy is saturated by wrk
//! from the client namespace for `--soak`; election transitions
//! (`dynia_election_transitions_total`) and roles (`/status.json`) of every
//! node before, during (every second) and after.
//!
//! Exit status: 0 when it ran (a report, targets met or not); 1 when a rig
//! does not come up (processes, roles, VIP, first answers) or a tool is
//! missing. Cleanup always runs: each rig's `Drop` SIGKILLs everything in its
//! namespaces and deletes them (also on error, panic and Ctrl-C, which makes
//! the harness unwind); every wait and loop is bounded in count and time.

mod client;
mod rigs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dynia_testkit::netns;

use crate::procs;
use rigs::{Config, RigCtx, SoakReport, Trial};

/// Failover target with default settings (`docs/targets.md`).
const TARGET: Duration = Duration::from_millis(600);

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Trials per configuration (default 20; 3 with --smoke).
    #[arg(long)]
    trials: Option<u32>,
    /// Length of the saturation soak of dynia ("10m", "90s"; default 10m, 20s with --smoke).
    #[arg(long, value_parser = crate::parse_secs)]
    soak: Option<Duration>,
    /// Quick run: 3 trials each, 20 s soak.
    #[arg(long)]
    smoke: bool,
    /// Length of the same soak of keepalived (VRRPv3, advert_int 0.2), whose
    /// VRRP process is not the one loaded (default 2m, 10s with --smoke).
    #[arg(long, value_parser = crate::parse_secs)]
    keepalived_soak: Option<Duration>,
    /// Skip the soaks.
    #[arg(long)]
    no_soak: bool,
    /// Skip keepalived (dynia trials only).
    #[arg(long)]
    no_keepalived: bool,
    /// wrk connections of the soak.
    #[arg(long, default_value_t = 200)]
    soak_connections: u32,
    /// The dynia binary (default: `dynia` next to this executable, i.e. target/release/dynia).
    #[arg(long)]
    dynia: Option<PathBuf>,
    #[arg(long, default_value = "keepalived")]
    keepalived: String,
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// `[election] rt_priority` of the dynia nodes (default: not set, i.e.
    /// the daemon's default 10; 0 = normal scheduling, to compare).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=99))]
    rt_priority: Option<u8>,
}

pub fn main(args: FailoverArgs) -> ExitCode {
    if let Some(why) = netns::skip_reason() {
        println!("failover benchmark skipped: {why}");
        return ExitCode::SUCCESS;
    }
    procs::install_signals();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynia-benches failover: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A tool from PATH, installed with apt-get (bounded) when missing.
fn tool(name: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = procs::which(name) {
        return Ok(p);
    }
    eprintln!("{name} not found: apt-get install -y {package}");
    let out = netns::run_bounded(
        &["apt-get", "install", "-y", package],
        Duration::from_secs(300),
    )
    .context("apt-get")?;
    if !out.status.success() {
        bail!(
            "{name} missing and `apt-get install -y {package}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    procs::which(name).with_context(|| format!("{name} still not on PATH"))
}

fn run(args: &FailoverArgs) -> Result<()> {
    let trials = args
        .trials
        .unwrap_or(if args.smoke { 3 } else { 20 })
        .max(1);
    let soak = if args.no_soak {
        None
    } else {
        Some(args.soak.unwrap_or(if args.smoke {
            Duration::from_secs(20)
        } else {
            Duration::from_secs(600)
        }))
    };
    let dynia = crate::dynia_path(args.dynia.as_deref());
    if !dynia.is_file() {
        bail!(
            "no dynia binary at {} (cargo build --release -p dynia --bin dynia)",
            dynia.display()
        );
    }
    tool("curl", "curl")?;
    let keepalived = if args.no_keepalived {
        None
    } else {
        Some(tool(&args.keepalived, "keepalived")?)
    };
    let wrk = match soak {
        Some(_) => Some(tool(&args.wrk, "wrk")?),
        None => None,
    };
    let tmp = std::env::temp_dir().join(format!("dynia-failbench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let ctx = RigCtx {
        dynia,
        keepalived,
        wrk,
        tmp: rigs::TmpDir(tmp),
        rt_priority: args.rt_priority,
    };
    let mut configs = vec![Config::Dynia];
    if ctx.keepalived.is_some() {
        configs.extend([Config::KeepalivedV2, Config::KeepalivedV3]);
        rigs::check_keepalived_config(&ctx)?;
    }

    if let Some(p) = args.rt_priority {
        println!("dynia nodes: [election] rt_priority = {p}");
    }
    println!(
        "failover benchmark: {trials} trials per configuration, interleaved; {}",
        match soak {
            Some(d) => format!("then a {}s saturation soak of dynia", d.as_secs()),
            None => "no soak".into(),
        }
    );
    println!(
        "client: one connection per GET / on VIP:8000 from the client namespace, connect timeout {} ms, {} ms pause after a failure",
        client::CONNECT_TIMEOUT.as_millis(),
        client::PAUSE_AFTER_FAILURE.as_millis()
    );
    let mut results: Vec<(Config, Vec<Trial>)> = configs.iter().map(|c| (*c, vec![])).collect();
    for k in 0..trials {
        for (cfg, out) in results.iter_mut() {
            procs::nap(Duration::ZERO)?;
            let t = rigs::failover_trial(&ctx, *cfg, k)
                .with_context(|| format!("{} trial {}", cfg.name(), k + 1))?;
            println!("  {:<40} trial {:>2}: {}", cfg.name(), k + 1, t.describe());
            out.push(t);
        }
    }

    let mut soaks = Vec::new();
    if let Some(d) = soak {
        soaks.push(rigs::soak(&ctx, d, args.soak_connections).context("dynia soak")?);
        if ctx.keepalived.is_some() {
            let d = args.keepalived_soak.unwrap_or(if args.smoke {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(120)
            });
            soaks.push(
                rigs::keepalived_soak(&ctx, d, args.soak_connections).context("keepalived soak")?,
            );
        }
    }

    report(&results, &soaks);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Nearest-rank percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

struct Stats {
    median: Duration,
    p90: Duration,
    max: Duration,
    min: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: median(&v),
        p90: pct(&v, 90.0),
        max: *v.last().expect("at least one trial"),
        min: v[0],
    }
}

fn report(results: &[(Config, Vec<Trial>)], soaks: &[SoakReport]) {
    println!();
    println!("== failover: SIGKILL of the master -> first 200 on the VIP from the new master ==");
    println!(
        "{:<40} {:>6} {:>9} {:>9} {:>9} {:>9} {:>16} {:>16}",
        "configuration",
        "trials",
        "median",
        "p90",
        "max",
        "min",
        "MDI (backup)",
        "failed req (med)"
    );
    let mut all: Vec<(Config, Stats)> = Vec::new();
    for (cfg, trials) in results {
        let s = stats(trials.iter().map(|t| t.recovery).collect());
        let mut failed: Vec<usize> = trials.iter().map(|t| t.failed).collect();
        failed.sort();
        println!(
            "{:<40} {:>6} {:>9} {:>9} {:>9} {:>9} {:>16} {:>16}",
            cfg.name(),
            trials.len(),
            ms(s.median),
            ms(s.p90),
            ms(s.max),
            ms(s.min),
            ms(cfg.master_down_interval(140)),
            failed[failed.len() / 2]
        );
        all.push((*cfg, s));
    }
    println!(
        "MDI: the Master_Down_Interval of the backup next in line (priority 140), 3 x advert + (256 - 140) x advert / 256;"
    );
    println!(
        "     its timer restarts at every advert, so from a kill at a random phase the takeover comes MDI - U(0, advert) later."
    );
    let dynia = all
        .iter()
        .find(|(c, _)| *c == Config::Dynia)
        .map(|(_, s)| s);
    if let Some(d) = dynia {
        println!();
        println!(
            "dynia target (docs/targets.md): <= {} with default settings: median {} {}, max {} {}",
            ms(TARGET),
            ms(d.median),
            if d.median <= TARGET { "ok" } else { "MISS" },
            ms(d.max),
            if d.max <= TARGET { "ok" } else { "MISS" },
        );
        for (cfg, s) in all.iter().filter(|(c, _)| *c != Config::Dynia) {
            println!(
                "ratio dynia / {}: median {:.2}, p90 {:.2}, max {:.2}",
                cfg.name(),
                d.median.as_secs_f64() / s.median.as_secs_f64(),
                d.p90.as_secs_f64() / s.p90.as_secs_f64(),
                d.max.as_secs_f64() / s.max.as_secs_f64()
            );
        }
        // Where dynia's time goes, from its own log (wall clock, µs).
        if let Some((_, trials)) = results.iter().find(|(c, _)| *c == Config::Dynia) {
            let phase = |f: &dyn Fn(&Trial) -> Option<Duration>| -> Option<Stats> {
                let v: Vec<Duration> = trials.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| stats(v))
            };
            let line = |name: &str, s: Option<Stats>| match s {
                Some(s) => println!(
                    "  {:<58} median {:>7}  p90 {:>7}  max {:>7}",
                    name,
                    ms(s.median),
                    ms(s.p90),
                    ms(s.max)
                ),
                None => println!("  {name:<58} (not found in the logs)"),
            };
            println!();
            println!("dynia breakdown (from the kill; new master's log timestamps):");
            line(
                "its Master_Down_Interval (3 x 100 ms + skew, from its log)",
                phase(&|t| t.phases.master_down),
            );
            line(
                "backup -> master (Master_Down_Interval expired)",
                phase(&|t| t.phases.master),
            );
            line(
                "VIP on eth0 + first gratuitous ARP sent",
                phase(&|t| t.phases.claimed),
            );
            line(
                "client's first 200 (after ARP update, connect, proxy)",
                phase(&|t| Some(t.recovery)),
            );
        }
    }
    if !soaks.is_empty() {
        println!();
        println!("== false failovers under saturation ==");
        for s in soaks {
            print!("{}", s.describe());
        }
    }
}
