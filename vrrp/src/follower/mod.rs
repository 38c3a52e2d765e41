//! The Reserved-IP follower: what the driver is asked to do as the role
//! changes and time passes, pure (clock and results fed in).
//!
//! Fed the wish of the election ([`Want`]), the driver's answers and ticks,
//! it answers with [`FollowerOutput`]s for the async shell
//! (`runtime::follow`) to execute. The split-brain verdicts come from
//! [`crate::reconcile`]; the reasoning (claim again, yield, reassert gap,
//! keep-warm) is in `docs/election.md`, "The Reserved-IP follower".

use std::net::IpAddr;
use std::time::Duration;

use crate::driver::Holder;
use crate::election::{Election, Millis, Role};
use crate::reconcile::{self, HolderSeen, Observation, Verdict};

/// How often a master checks that the Reserved IP still points at it.
pub const RECONCILE: Duration = Duration::from_secs(5);
/// A master re-asserts the Reserved IP at most this often.
pub const REASSERT_MIN_GAP: Duration = Duration::from_secs(1);
/// A backup reads the holder this often (± 10 %): the token check and the
/// driver's warm state at a budget of at most 12 API calls an hour (the
/// pooled connection idles out after 90 s, so a failover may pay one TLS
/// handshake; docs/digitalocean.md, "API budget").
pub const WARM_EVERY: Duration = Duration::from_secs(360);
/// Heartbeat period of a `dynia` node that is not master.
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// After stepping down with a claim of its own in flight or done, a node
/// reads the holder this long after (the longest action DigitalOcean takes,
/// plus a request), then twice as long after each read
/// ([`LATE_READS`] reads: 15, 45 and 105 s after the step-down).
pub const LATE_FIRST: Duration = Duration::from_secs(15);
/// How many such reads (each may hand the address to the master).
pub const LATE_READS: u32 = 3;

/// What the election wants of the Reserved IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Not started, or resigned: leave it, keep the driver warm.
    Idle,
    /// Master: claim and reconcile.
    Hold,
    /// Not master: release where that means something, then idle.
    Release,
}

/// One event for the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerInput {
    /// The election's wish changed (every role transition sends one).
    Want(Want),
    /// Time passed; due at [`Follower::next_wake`].
    Tick,
    /// A master heard a lower-priority master (a healed split): re-announce.
    LowerMasterHeard,
    /// The [`FollowerOutput::Claim`] finished; `ok` when it succeeded.
    Claimed { ok: bool },
    /// The [`FollowerOutput::ReadHolder`] answer, resolved by [`resolve`];
    /// `None` when the holder could not be read.
    HolderRead(Option<HolderSeen>),
    /// The [`FollowerOutput::Warm`] read finished (whatever its result).
    Warmed,
    /// The [`FollowerOutput::Release`] finished (whatever its result).
    Released,
    /// The [`FollowerOutput::ProbeHolder`] answer: whether something
    /// accepted a connection behind the Reserved IP.
    Probed { serving: bool },
    /// The [`FollowerOutput::LateRead`] answer: the holder (`None` when it
    /// could not be read) and the master this node hears now, if any.
    LateRead {
        seen: Option<HolderSeen>,
        master: Option<IpAddr>,
    },
    /// The [`FollowerOutput::HandTo`] finished; `ok` when it succeeded.
    HandedTo { ok: bool },
}

/// What the shell does next; each driver call is answered by one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerOutput {
    /// Make the Reserved IP point here; answer [`FollowerInput::Claimed`].
    Claim,
    /// Read the holder for a check; answer [`FollowerInput::HolderRead`].
    ReadHolder,
    /// Read the holder to keep the API warm; answer [`FollowerInput::Warmed`].
    Warm { first: bool },
    /// Undo a claim; answer [`FollowerInput::Released`].
    Release,
    /// Drop the claim or check in flight (the role changed): never answered.
    Abandon,
    /// Whether this node now holds the Reserved IP (adverts, status, metric).
    SetHeld(bool),
    /// Master in a split brain: the holder it stepped back from, or none.
    SteppedBack(Option<IpAddr>),
    /// A claim succeeded: a master sends an advert now, so a predecessor
    /// handing over learns it at once.
    Announce,
    /// Yielded master: is the holder's service there, behind the Reserved
    /// IP? (one TCP connect, bounded); answer [`FollowerInput::Probed`].
    ProbeHolder,
    /// After a step-down: read the holder (did a late claim land here?);
    /// answer [`FollowerInput::LateRead`].
    LateRead,
    /// Make the Reserved IP point at this member (the master; a late claim
    /// landed here); answer [`FollowerInput::HandedTo`].
    HandTo { member: IpAddr },
}

/// The follower's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerConfig {
    pub reconcile: Duration,
    pub reassert_gap: Duration,
    pub warm_every: Duration,
    /// A member heard within this window is reachable (see [`heard_window`]).
    pub heard_window: Duration,
    /// Whether a yielded master probes the holder's service through the
    /// Reserved IP ([`FollowerOutput::ProbeHolder`]).
    pub probe: bool,
    /// The first read after a step-down ([`LATE_FIRST`]); doubles after each.
    pub late_first: Duration,
    /// How many reads after a step-down ([`LATE_READS`]; 0: none).
    pub late_reads: u32,
}

impl FollowerConfig {
    pub fn new(heard_window: Duration) -> FollowerConfig {
        FollowerConfig {
            reconcile: RECONCILE,
            reassert_gap: REASSERT_MIN_GAP,
            warm_every: WARM_EVERY,
            heard_window,
            probe: true,
            late_first: LATE_FIRST,
            late_reads: LATE_READS,
        }
    }
}

/// The driver call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Claim,
    Check,
    Warm,
    Release,
    Probe,
    Late,
    Hand,
}

/// Reads still due after a step-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Late {
    left: u32,
    gap: Duration,
}

/// The follower; see the module docs.
#[derive(Debug, Clone)]
pub struct Follower {
    cfg: FollowerConfig,
    want: Want,
    /// Whether `want` has been acted on (a warm-up or release in flight
    /// defers it; a claim or check is abandoned instead).
    entered: bool,
    busy: Option<Busy>,
    next: Option<Millis>,
    /// A claim of ours succeeded since we last became master.
    claimed: bool,
    last_claim: Option<Millis>,
    /// Split brain: the holder we stepped back from (we stay master).
    yielded_to: Option<IpAddr>,
    reassert_pending: bool,
    held: bool,
    stepped_back: Option<IpAddr>,
    /// Probes in a row that found nothing serving behind the Reserved IP
    /// while yielded to `yielded_to`.
    unserved: u32,
    /// The holder last yielded to, for re-deciding after a probe.
    last_seen: Option<HolderSeen>,
    /// We claimed from this holder because it did not serve; if it takes the
    /// address back, its dynia lives and the probes are not to be trusted
    /// (`probes_off`) for the rest of this mastership.
    probe_claimed_from: Option<IpAddr>,
    /// The claim in flight is one from this holder because it did not serve
    /// (it becomes `probe_claimed_from` when it succeeds).
    probe_claim: Option<IpAddr>,
    probes_off: bool,
    /// A claim was asked for since we last became master.
    claim_issued: bool,
    late: Option<Late>,
    rng: u64,
    out: Vec<FollowerOutput>,
}

mod late;
mod machine;
#[cfg(test)]
mod tests;

/// The driver's answer resolved against the members: `member` maps a
/// droplet id to a member's election address, `heard_ago` says how long ago
/// that member was last heard.
pub fn resolve(
    holder: Holder,
    member: impl Fn(u64) -> Option<IpAddr>,
    heard_ago: impl Fn(IpAddr) -> Option<Duration>,
) -> HolderSeen {
    match holder {
        Holder::Me => HolderSeen::Me,
        Holder::Nobody => HolderSeen::Nobody,
        Holder::Unknown => HolderSeen::Unknown,
        Holder::Other {
            droplet_id,
            running,
        } => match member(droplet_id) {
            None => HolderSeen::Outsider,
            Some(addr) => HolderSeen::Member {
                addr,
                heard_ago: heard_ago(addr),
                running,
            },
        },
    }
}

/// A member heard within this window is reachable on the election channel:
/// three of the slowest messages a live member sends (a backup's heartbeat
/// with `dynia`; with `vrrp3`, whose backups are silent, a master's advert),
/// and never less than two Master_Down_Intervals.
pub fn heard_window(
    master_down: Duration,
    heartbeats: bool,
    advert_interval: Duration,
) -> Duration {
    let slowest = if heartbeats {
        HEARTBEAT
    } else {
        advert_interval
    };
    (slowest * 3).max(master_down * 2)
}

/// Whether an advert of `priority` from a master, just fed to `e`, means
/// re-announcing the Reserved IP: we are master and it is a lower master (a
/// healed split), as keepalived re-sends gratuitous ARP on
/// `vrrp_garp_lower_prio_repeat`.
pub fn lower_master_heard(e: &Election, priority: u8) -> bool {
    e.role() == Role::Master && priority > 0 && priority < e.priority().get()
}
