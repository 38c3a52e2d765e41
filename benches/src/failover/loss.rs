//! Node-loss trials: a node lost the way a droplet is lost (link down, then
//! daemon and app SIGKILLed: `NetnsCluster::lose`), the master or a backup,
//! as a paced client on the VIP lives through it (`dynia_testkit::paced`):
//! one `GET /` every 20 ms, 1 s each. dynia with the default health
//! settings, and the seeds' stack (HAProxy + keepalived) on the same rig.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dynia_testkit::eventually;
use dynia_testkit::netns::NetnsCluster;
use dynia_testkit::paced::{LossFigures, PacedLoad, PacedSample};

use super::rigs::{self, Config, DyniaRig, Health, KeepalivedRig, Phases, RigCtx};
use crate::procs::{self, nap};

/// The paced client: one request every 20 ms (50/s), 1 s for each.
pub const EVERY: Duration = Duration::from_millis(20);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Latencies: of the requests sent this long from the first answer's.
pub const WATCH: Duration = Duration::from_secs(10);
/// The client runs this long after the loss (or `WATCH` past the first
/// answer, if later): long enough for the default checks (every 5 s, 2 s
/// each, fall 3) to have taken a dead member out on either stack.
pub const OBSERVE: Duration = Duration::from_secs(30);
const PROXY_PORT: u16 = 8000;
/// Bound of the wait for the first answer after the loss.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// Successes in a row (half a second) before the loss.
const STEADY: usize = 25;
const IDS: [&str; 3] = ["alder-lynx", "birch-mole", "cedar-wren"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stack {
    Dynia,
    /// HAProxy on every node plus keepalived VRRPv3 at 0.2 s.
    Seeds,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Dynia => "dynia (defaults, l2)",
            Stack::Seeds => "HAProxy + keepalived v3 0.2s",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lost {
    Master,
    Backup,
}

impl Lost {
    pub fn name(self) -> &'static str {
        match self {
            Lost::Master => "master lost",
            Lost::Backup => "backup lost",
        }
    }

    /// The node lost: 0 (priority 150, the master) or 1 (140, a backup).
    fn node(self) -> usize {
        match self {
            Lost::Master => 0,
            Lost::Backup => 1,
        }
    }
}

pub struct LossTrial {
    pub figures: LossFigures,
    /// dynia, master lost: the new master's log times.
    pub phases: Option<Phases>,
    /// When the node was lost (Unix seconds, for the logs' timestamps).
    pub lost_at: f64,
    /// The first failures after the loss (`+ms (ms): what`), at most 3.
    pub first_failures: Vec<String>,
}

impl LossTrial {
    pub fn describe(&self) -> String {
        let mut s = self.figures.describe();
        if let Some(p) = &self.phases {
            s.push_str(&format!("; {}", p.describe()));
        }
        s
    }
}

pub fn loss_trial(ctx: &RigCtx, stack: Stack, lost: Lost, k: u32) -> Result<LossTrial> {
    let tag = format!("{stack:?}-{lost:?}-{k}");
    match stack {
        Stack::Dynia => {
            let mut rig = DyniaRig::up(ctx, &tag, Health::Defaults)?;
            let vip = rig.vip;
            let mut t = run_loss(&mut rig.c, vip, lost, Config::Dynia.advert())?;
            if lost == Lost::Master {
                let new = (1..3).find(|&i| rigs::role(&rig.c, i) == "master");
                t.phases = new.map(|j| rigs::dynia_phases(&rig.c, j, t.lost_at));
            }
            Ok(t)
        }
        Stack::Seeds => {
            let mut rig = KeepalivedRig::up(ctx, &tag, true)?;
            let vip = rig.vip;
            run_loss(&mut rig.c, vip, lost, Config::KeepalivedV3.advert())
        }
    }
}

/// The client steady on the VIP, the loss at a random phase of the adverts,
/// then the client watched for [`OBSERVE`].
fn run_loss(
    c: &mut NetnsCluster,
    vip: std::net::Ipv4Addr,
    lost: Lost,
    advert: Duration,
) -> Result<LossTrial> {
    let addr = SocketAddr::from((vip, PROXY_PORT));
    let load = PacedLoad::start(c.client_ns(), addr, EVERY, CLIENT_TIMEOUT);
    let steady = eventually(Duration::from_secs(30), || {
        procs::interrupted() || load.stable(STEADY)
    });
    if procs::interrupted() {
        bail!("interrupted");
    }
    if steady.is_err() {
        bail!(
            "the VIP does not answer steadily: {:?}\n{}",
            load.samples().last(),
            rigs::dump_logs(c)
        );
    }
    // A random phase within one advert: the backups' timers restart at
    // every advert, so the phase decides up to one interval of the result.
    nap(Duration::from_millis(300) + rigs::jitter(advert))?;
    let t0 = c.lose(lost.node());
    let lost_at = rigs::unix_now() - t0.elapsed().as_secs_f64();
    let _ = eventually(RECOVERY_WAIT, || {
        procs::interrupted() || load.first_ok_after(t0).is_some()
    });
    let first = load
        .first_ok_after(t0)
        .with_context(|| format!("the VIP did not answer within {RECOVERY_WAIT:?} of the loss"))?;
    let end = (first.start + WATCH).max(t0 + OBSERVE);
    if let Some(rest) = end.checked_duration_since(Instant::now()) {
        nap(rest)?;
    }
    let samples = load.finish();
    Ok(LossTrial {
        figures: LossFigures::of(&samples, t0, WATCH),
        phases: None,
        lost_at,
        first_failures: first_failures(&samples, t0),
    })
}

fn first_failures(samples: &[PacedSample], t0: Instant) -> Vec<String> {
    dynia_testkit::paced::failed_from(samples, t0)
        .take(3)
        .map(|s| s.describe(t0))
        .collect()
}

/// The member ids, for the report.
pub fn lost_id(lost: Lost) -> &'static str {
    IDS[lost.node()]
}
