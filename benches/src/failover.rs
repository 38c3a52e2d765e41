mod client;
mod loss;
mod rigs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dynia_testkit::netns;

use crate::procs;
use loss::{LossTrial, Lost, Stack};
use rigs::{RigCtx, SoakReport};

/// Master lost: first answer within this (issue 13; moonshot 300 ms).
const TARGET: Duration = Duration::from_millis(600);

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Trials per stack and case (default 20; 3 with --smoke).
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
    /// Skip the seeds' stack (HAProxy + keepalived): dynia trials only.
    #[arg(long)]
    no_keepalived: bool,
    /// Only this case (`master` or `backup`); default both.
    #[arg(long, value_parser = ["master", "backup"])]
    only: Option<String>,
    /// wrk connections of the soak.
    #[arg(long, default_value_t = 200)]
    soak_connections: u32,
    /// The dynia binary (default: `dynia` next to this executable, i.e. target/release/dynia).
    #[arg(long)]
    dynia: Option<PathBuf>,
    #[arg(long, default_value = "keepalived")]
    keepalived: String,
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
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
    let ctx = context(args, soak.is_some())?;
    let stacks: Vec<Stack> = match ctx.keepalived {
        Some(_) => vec![Stack::Dynia, Stack::Seeds],
        None => vec![Stack::Dynia],
    };
    let cases: Vec<Lost> = match args.only.as_deref() {
        Some("master") => vec![Lost::Master],
        Some("backup") => vec![Lost::Backup],
        _ => vec![Lost::Master, Lost::Backup],
    };
    if let Some(p) = args.rt_priority {
        println!("dynia nodes: [election] rt_priority = {p}");
    }
    println!(
        "node-loss benchmark: {trials} trials per stack and case, interleaved; {}",
        match soak {
            Some(d) => format!("then a {}s saturation soak of dynia", d.as_secs()),
            None => "no soak".into(),
        }
    );
    println!(
        "client: GET / on VIP:8000 from the client namespace every {} ms, {} ms each, a fresh connection each; counts over {} s from the loss, latencies over {} s from the first answer",
        loss::EVERY.as_millis(),
        loss::CLIENT_TIMEOUT.as_millis(),
        loss::OBSERVE.as_secs(),
        loss::WATCH.as_secs()
    );
    let mut results: Vec<(Stack, Lost, Vec<LossTrial>)> = Vec::new();
    for lost in &cases {
        for stack in &stacks {
            results.push((*stack, *lost, vec![]));
        }
    }
    for k in 0..trials {
        for (stack, lost, out) in results.iter_mut() {
            procs::nap(Duration::ZERO)?;
            let t = loss::loss_trial(&ctx, *stack, *lost, k)
                .with_context(|| format!("{} {} trial {}", stack.name(), lost.name(), k + 1))?;
            println!(
                "  {:<30} {} ({}) trial {:>2}: {}",
                stack.name(),
                lost.name(),
                loss::lost_id(*lost),
                k + 1,
                t.describe()
            );
            for f in &t.first_failures {
                println!("      failed {f}");
            }
            out.push(t);
        }
    }
    let soaks = run_soaks(args, &ctx, soak)?;
    report(&results, &soaks);
    Ok(())
}

/// Binaries and tools, the temporary directory, configurations checked.
fn context(args: &FailoverArgs, soak: bool) -> Result<RigCtx> {
    let dynia = crate::dynia_path(args.dynia.as_deref());
    if !dynia.is_file() {
        bail!(
            "no dynia binary at {} (cargo build --release -p dynia --bin dynia)",
            dynia.display()
        );
    }
    tool("curl", "curl")?;
    let (keepalived, haproxy) = if args.no_keepalived {
        (None, None)
    } else {
        (
            Some(tool(&args.keepalived, "keepalived")?),
            Some(tool(&args.haproxy, "haproxy")?),
        )
    };
    let wrk = match soak {
        true => Some(tool(&args.wrk, "wrk")?),
        false => None,
    };
    let tmp = std::env::temp_dir().join(format!("dynia-failbench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let ctx = RigCtx {
        dynia,
        keepalived,
        haproxy,
        wrk,
        tmp: rigs::TmpDir(tmp),
        rt_priority: args.rt_priority,
    };
    if ctx.keepalived.is_some() {
        rigs::check_keepalived_config(&ctx)?;
        rigs::check_haproxy_config(&ctx)?;
    }
    Ok(ctx)
}

fn run_soaks(args: &FailoverArgs, ctx: &RigCtx, soak: Option<Duration>) -> Result<Vec<SoakReport>> {
    let mut soaks = Vec::new();
    let Some(d) = soak else {
        return Ok(soaks);
    };
    soaks.push(rigs::soak(ctx, d, args.soak_connections).context("dynia soak")?);
    if ctx.keepalived.is_some() {
        let d = args.keepalived_soak.unwrap_or(if args.smoke {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(120)
        });
        soaks
            .push(rigs::keepalived_soak(ctx, d, args.soak_connections).context("keepalived soak")?);
    }
    Ok(soaks)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

struct Stats {
    median: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: median(&v),
        max: v.last().copied().unwrap_or_default(),
    }
}

/// `median / max` of durations, in ms.
fn dur_cell(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{:.0} / {:.0} ms",
        median(&v).as_secs_f64() * 1000.0,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    )
}

/// `median / max` of counts.
fn count_cell(mut v: Vec<usize>) -> String {
    v.sort();
    format!("{} / {}", v[v.len() / 2], v.last().copied().unwrap_or(0))
}

fn report(results: &[(Stack, Lost, Vec<LossTrial>)], soaks: &[SoakReport]) {
    println!();
    println!("== node loss (link down + SIGKILL of daemon and app), as the paced client saw it: median / max ==");
    println!(
        "{:<30} {:<12} {:>6} {:>17} {:>17} {:>13} {:>11} {:>17}",
        "stack",
        "case",
        "trials",
        "first answer",
        "last failure",
        "failed after",
        "failed all",
        "worst latency"
    );
    for (stack, lost, trials) in results {
        let f: Vec<_> = trials.iter().map(|t| &t.figures).collect();
        println!(
            "{:<30} {:<12} {:>6} {:>17} {:>17} {:>13} {:>11} {:>17}",
            stack.name(),
            lost.name(),
            trials.len(),
            dur_cell(f.iter().filter_map(|f| f.first_answer).collect()),
            dur_cell(
                f.iter()
                    .map(|f| f.last_failure.unwrap_or_default())
                    .collect()
            ),
            count_cell(f.iter().map(|f| f.failed_after_first).collect()),
            count_cell(f.iter().map(|f| f.failed).collect()),
            dur_cell(f.iter().map(|f| f.worst_after_first).collect()),
        );
    }
    println!(
        "first answer: loss -> end of the first 200 of a request sent after it; last failure: loss -> start of the last"
    );
    println!(
        "request that failed (0: none failed; counts over the {} s from the loss); failed after: requests sent after the",
        loss::OBSERVE.as_secs()
    );
    println!(
        "first answer's that failed; worst latency: of the requests sent in the {} s from the first answer's (a failed one",
        loss::WATCH.as_secs()
    );
    println!("counts its 1 s).");
    targets(results);
    if !soaks.is_empty() {
        println!();
        println!("== false failovers under saturation ==");
        for s in soaks {
            print!("{}", s.describe());
        }
    }
}

/// Issue 13's targets for dynia, and where its master-loss time goes.
fn targets(results: &[(Stack, Lost, Vec<LossTrial>)]) {
    println!();
    for (_, lost, trials) in results.iter().filter(|r| r.0 == Stack::Dynia) {
        let f: Vec<_> = trials.iter().map(|t| &t.figures).collect();
        let after = f.iter().map(|f| f.failed_after_first).max().unwrap_or(0);
        let all = f.iter().map(|f| f.failed).max().unwrap_or(0);
        println!(
            "dynia, {}: failed after the first answer, max {after} (target 0) {}; failed at all, max {all}",
            lost.name(),
            if after == 0 { "ok" } else { "MISS" }
        );
        if *lost != Lost::Master {
            continue;
        }
        let firsts: Vec<Duration> = f.iter().filter_map(|f| f.first_answer).collect();
        let s = stats(firsts);
        println!(
            "dynia, master lost: first answer median {} {}, max {} {} (target <= {}, moonshot 300 ms)",
            ms(s.median),
            if s.median <= TARGET { "ok" } else { "MISS" },
            ms(s.max),
            if s.max <= TARGET { "ok" } else { "MISS" },
            ms(TARGET)
        );
        let phase = |name: &str, v: Vec<Duration>| match v.is_empty() {
            true => println!("  {name:<52} (not found in the logs)"),
            false => println!("  {name:<52} {}", dur_cell(v)),
        };
        let ph: Vec<_> = trials.iter().filter_map(|t| t.phases.as_ref()).collect();
        phase(
            "new master's log: backup -> master",
            ph.iter().filter_map(|p| p.master).collect(),
        );
        phase(
            "new master's log: VIP on eth0 + first gratuitous ARP",
            ph.iter().filter_map(|p| p.claimed).collect(),
        );
    }
}
