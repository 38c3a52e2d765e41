//! Deterministic simulation of the Reserved IP through split brains: the
//! real election state machine (`election`), the real Reserved-IP follower
//! (`follower`, which applies `reconcile::decide`) of 3–5 nodes, with a
//! simulated DigitalOcean API (assigns that land after a delay, even when
//! the claimer has moved on; claims that fail), backups' heartbeats, and a
//! split of the election channel into two sides that both still reach the
//! API. Only the I/O is simulated: what the runtime's shell does with the
//! follower's outputs (`vrrp/src/runtime/follow.rs`) is done here on the
//! simulated clock. See `docs/election.md`, "How it is tested".
//!
//! A third of the seeds run `vrrp3` (backups silent: a master hears only
//! masters). A yielded master's probe through the Reserved IP answers
//! whether the holder's process lives (its proxy listens whatever its role).
//!
//! Each seed: all nodes up → one master holding the IP; a split lasting
//! 60–240 s; sometimes the side holding the IP dies (processes gone,
//! droplets off) halfway, or (3b) one backup alone on the minority side
//! takes the IP and then its dynia dies (droplet running); then the split
//! heals (the dead dynia restarts), and with `vrrp3` sometimes every losing
//! master's assign lands late, after it stepped down. Checked:
//!
//! 1. **No ping-pong**: once a split has settled, no assign until it heals,
//!    and each side with a live node has exactly one master (a side whose
//!    master stepped back from the IP does not elect another one that would
//!    claim in turn). Settling takes at most 3 assigns.
//! 2. **Witness**: when the holder's side dies, the other side's master
//!    holds the IP within two reconcile periods plus a claim.
//! 3. **Dead dynia**: when the holder's dynia dies, a serving master holds
//!    the IP within three probes, two reconcile periods and a claim, and it
//!    stays there until the heal (no ping-pong).
//! 4. **Heal**: one master, holding the IP (the highest priority with
//!    preempt) and the only node that believes it holds it, and no assign
//!    afterwards.
//!
//! A failure prints the seed; rerun one with `SIM_SEED=n`.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use dynia_vrrp::driver::Holder;
use dynia_vrrp::election::{
    Action, AdvertIn, Election, ElectionConfig, Input, Millis, Priority, Role,
};
use dynia_vrrp::follower::{
    self, Follower, FollowerConfig, FollowerInput, FollowerOutput, Want, HEARTBEAT, LATE_FIRST,
    RECONCILE,
};
use dynia_vrrp::reconcile::UNSERVED_PROBES;

mod support;
use support::rng::Rng;

const TICK: u64 = 5;
const RECONCILE_MS: u64 = RECONCILE.as_millis() as u64;
const HEARTBEAT_MS: u64 = HEARTBEAT.as_millis() as u64;
const LATE_FIRST_MS: u64 = LATE_FIRST.as_millis() as u64;
/// The simulated droplet id of node `i` is `DROPLET + i`.
const DROPLET: u64 = 1000;

/// A claim at the simulated API: its POST goes out at `post_at`, the assign
/// lands at `done_at`.
#[derive(Clone, Copy, Debug)]
struct Claim {
    post_at: u64,
    done_at: u64,
    posted: bool,
    /// The API refuses it (5xx past the retries): nothing is posted, the
    /// node learns at `done_at`.
    fails: bool,
    /// False once the follower abandoned it (role change, crash): nobody
    /// waits for it, but a posted assign still lands.
    wanted: bool,
    /// The droplet it assigns to (the claimer's own, or the master's for a
    /// hand-over), and whether it is a hand-over.
    to: usize,
    hand: bool,
}

struct Node {
    e: Election,
    f: Follower,
    addr: IpAddr,
    priority: u8,
    alive: bool,
    claims: Vec<Claim>,
    next_heartbeat: u64,
    heard: Vec<Option<u64>>,
    /// The master last heard (an advert) and when.
    master_heard: Option<(usize, u64)>,
}

enum Msg {
    Advert { priority: u8, interval_ms: u32 },
    Heartbeat,
}

struct Sim {
    seed: u64,
    now: u64,
    rng: Rng,
    nodes: Vec<Node>,
    /// (arrival, to, from, msg)
    wire: VecDeque<(u64, usize, usize, Msg)>,
    max_delay: u64,
    /// Side of each node while split (`None`: one network).
    side: Option<Vec<u8>>,
    holder: Option<usize>,
    running: Vec<bool>,
    /// Every assign that landed: (time, droplet).
    assigns: Vec<(u64, usize)>,
    claim_ms: (u64, u64),
    interval_ms: u32,
    preempt: bool,
    /// Chance that a claim fails at the API (percent).
    fail_percent: u64,
    /// The follower's heard window (the runtime's rule for `dynia`).
    heard_window: Duration,
    /// After the heal: when each node, as master, first heard a lower master.
    heard_lower: Option<Vec<Option<u64>>>,
    /// `dynia` (backups send heartbeats) or `vrrp3` (backups are silent).
    heartbeats: bool,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
        let n = rng.range(3, 5) as usize;
        let interval_ms = [100u32, 100, 200, 1000][rng.range(0, 3) as usize];
        let preempt = !rng.chance(250);
        let heartbeats = !rng.chance(333);
        let mut prios: Vec<u8> = Vec::new();
        while prios.len() < n {
            let p = rng.range(1, 254) as u8;
            if !prios.contains(&p) {
                prios.push(p);
            }
        }
        let interval = Duration::from_millis(u64::from(interval_ms));
        let mut heard_window = Duration::ZERO;
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8));
                let mut cfg = ElectionConfig::new(addr, Priority::new(prios[i]).unwrap());
                cfg.advert_interval = interval;
                cfg.preempt = preempt;
                let e = Election::new(cfg).unwrap();
                let mdi = Duration::from_millis(e.master_down_interval_ms());
                let hw = follower::heard_window(mdi, heartbeats, interval);
                heard_window = heard_window.max(hw);
                Node {
                    f: Follower::new(FollowerConfig::new(hw), seed ^ i as u64),
                    e,
                    addr,
                    priority: prios[i],
                    alive: true,
                    claims: Vec::new(),
                    next_heartbeat: 0,
                    heard: vec![None; n],
                    master_heard: None,
                }
            })
            .collect();
        let max_delay = rng.range(1, u64::from(interval_ms) / 4);
        let lo = rng.range(20, 400);
        let claim_ms = (lo, lo + rng.range(0, 3_000));
        let fail_percent = [0, 0, 10, 30][rng.range(0, 3) as usize];
        Sim {
            seed,
            now: 0,
            rng,
            nodes,
            wire: VecDeque::new(),
            max_delay,
            side: None,
            holder: None,
            running: vec![true; n],
            assigns: Vec::new(),
            claim_ms,
            interval_ms,
            preempt,
            fail_percent,
            heard_window,
            heard_lower: None,
            heartbeats,
        }
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.side.as_ref().is_none_or(|s| s[a] == s[b])
    }

    fn send(&mut self, from: usize, msg: impl Fn() -> Msg) {
        for to in 0..self.nodes.len() {
            if to != from && self.linked(from, to) {
                let at = self.now + self.rng.range(1, self.max_delay);
                self.wire.push_back((at, to, from, msg()));
            }
        }
    }

    fn send_advert(&mut self, i: usize, priority: u8) {
        let interval_ms = self.interval_ms;
        self.send(i, || Msg::Advert {
            priority,
            interval_ms,
        });
    }

    /// An assign of node `i` to droplet `to` (its own: a claim).
    fn start_claim(&mut self, i: usize, to: usize) {
        let total = self.rng.range(self.claim_ms.0, self.claim_ms.1);
        let post = self.rng.range(1, total.min(300));
        let fails = self.rng.chance(10 * self.fail_percent);
        let now = self.now;
        self.nodes[i].claims.push(Claim {
            post_at: now + post,
            done_at: now + total,
            posted: false,
            fails,
            wanted: true,
            to,
            hand: to != i,
        });
    }

    /// Whether something serves behind the Reserved IP (a probe's answer):
    /// the holder's process lives (its proxy listens whatever its role).
    fn serving(&self) -> bool {
        self.holder.is_some_and(|h| self.nodes[h].alive)
    }

    /// The master node `i` hears now, as the runtime's shell finds it.
    fn master_heard(&self, i: usize) -> Option<IpAddr> {
        let window = self.heard_window.as_millis() as u64;
        self.nodes[i]
            .master_heard
            .filter(|&(_, t)| self.now - t <= window)
            .map(|(j, _)| self.nodes[j].addr)
    }

    /// The node stops waiting for its claim (the follower abandoned it, or
    /// the process died): an unposted claim never goes out, a posted assign
    /// still lands.
    fn abandon_claim(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.claims.retain(|c| c.posted || !c.wanted);
        n.claims.iter_mut().for_each(|c| c.wanted = false);
    }

    /// What the driver of node `i` reads, resolved as the runtime does.
    fn holder_seen(&self, i: usize) -> dynia_vrrp::reconcile::HolderSeen {
        let holder = match self.holder {
            Some(h) if h == i => Holder::Me,
            None => Holder::Nobody,
            Some(h) => Holder::Other {
                droplet_id: DROPLET + h as u64,
                running: Some(self.running[h]),
            },
        };
        let now = self.now;
        let node = &self.nodes[i];
        follower::resolve(
            holder,
            |id| {
                let j = id.checked_sub(DROPLET)? as usize;
                (j != i).then(|| self.nodes.get(j).map(|n| n.addr))?
            },
            |addr| {
                let j = self.nodes.iter().position(|n| n.addr == addr)?;
                node.heard[j].map(|t| Duration::from_millis(now - t))
            },
        )
    }

    /// Feeds the follower of node `i`, executing its outputs as the
    /// runtime's shell does (driver calls on the simulated API).
    fn feed(&mut self, i: usize, input: FollowerInput) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let outs = self.nodes[i].f.step(Millis(self.now), input);
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("{} node {i}: {input:?} -> {outs:?}", self.now);
            }
            for o in outs {
                match o {
                    FollowerOutput::Claim => self.start_claim(i, i),
                    FollowerOutput::HandTo { member } => {
                        let to = self.nodes.iter().position(|n| n.addr == member).unwrap();
                        self.start_claim(i, to);
                    }
                    FollowerOutput::ProbeHolder => inputs.push_back(FollowerInput::Probed {
                        serving: self.serving(),
                    }),
                    FollowerOutput::LateRead => inputs.push_back(FollowerInput::LateRead {
                        seen: Some(self.holder_seen(i)),
                        master: self.master_heard(i),
                    }),
                    FollowerOutput::Abandon => self.abandon_claim(i),
                    FollowerOutput::ReadHolder => {
                        inputs.push_back(FollowerInput::HolderRead(Some(self.holder_seen(i))))
                    }
                    FollowerOutput::Warm { .. } => inputs.push_back(FollowerInput::Warmed),
                    FollowerOutput::Release => inputs.push_back(FollowerInput::Released),
                    FollowerOutput::SetHeld(_) | FollowerOutput::SteppedBack(_) => {}
                    FollowerOutput::Announce => {
                        let e = &self.nodes[i].e;
                        if e.role() == Role::Master {
                            let p = e.priority().get();
                            self.send_advert(i, p);
                        }
                    }
                }
            }
        }
    }

    fn apply(&mut self, i: usize, actions: &[Action]) {
        for a in actions {
            match *a {
                Action::SendAdvert { priority, .. } => self.send_advert(i, priority),
                Action::BecomeMaster { .. } => self.feed(i, FollowerInput::Want(Want::Hold)),
                Action::BecomeBackup { .. } | Action::EnterFault { .. } => {
                    self.feed(i, FollowerInput::Want(Want::Release))
                }
                Action::Stop => {}
            }
        }
    }

    fn step_node(&mut self, i: usize, input: Input) {
        let now = Millis(self.now);
        let acts = self.nodes[i].e.step(now, input);
        let acts: Vec<Action> = acts.as_slice().to_vec();
        self.apply(i, &acts);
    }

    /// A process starts: the follower's first read, then the election.
    fn boot(&mut self, i: usize) {
        let outs = self.nodes[i].f.start();
        assert_eq!(outs, vec![FollowerOutput::Warm { first: true }]);
        self.feed(i, FollowerInput::Warmed);
        self.step_node(i, Input::Start);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.abandon_claim(i);
    }

    fn restart(&mut self, i: usize) {
        let seed = self.rng.next();
        let n = &mut self.nodes[i];
        let cfg = n.e.config().clone();
        n.e = Election::new(cfg).unwrap();
        n.f = Follower::new(FollowerConfig::new(self.heard_window), seed);
        n.alive = true;
        n.heard.iter_mut().for_each(|h| *h = None);
        n.master_heard = None;
        self.boot(i);
    }

    fn tick(&mut self) {
        let now = self.now;
        // Deliver.
        let mut rest = VecDeque::new();
        while let Some((at, to, from, msg)) = self.wire.pop_front() {
            if at > now {
                rest.push_back((at, to, from, msg));
                continue;
            }
            if !self.nodes[to].alive {
                continue;
            }
            self.nodes[to].heard[from] = Some(now);
            if let Msg::Advert {
                priority,
                interval_ms,
            } = msg
            {
                if priority > 0 {
                    self.nodes[to].master_heard = Some((from, now));
                }
                self.step_node(
                    to,
                    Input::Advert(AdvertIn {
                        from: self.nodes[from].addr,
                        priority,
                        interval_ms,
                    }),
                );
                if follower::lower_master_heard(&self.nodes[to].e, priority) {
                    if let Some(h) = self.heard_lower.as_mut() {
                        h[to].get_or_insert(now);
                    }
                    self.feed(to, FollowerInput::LowerMasterHeard);
                }
            }
        }
        self.wire = rest;

        for i in 0..self.nodes.len() {
            // A dead node's posted claim may still land.
            self.land_claims(i);
            if !self.nodes[i].alive {
                continue;
            }
            if self.nodes[i].e.next_deadline().is_some_and(|d| d.0 <= now) {
                self.step_node(i, Input::Tick);
            }
            let role = self.nodes[i].e.role();
            if self.heartbeats && role != Role::Master && now >= self.nodes[i].next_heartbeat {
                self.nodes[i].next_heartbeat = now + HEARTBEAT_MS;
                self.send(i, || Msg::Heartbeat);
            }
            if self.nodes[i].f.next_wake().is_some_and(|t| t.0 <= now) {
                self.feed(i, FollowerInput::Tick);
            }
        }
    }

    fn land_claims(&mut self, i: usize) {
        let now = self.now;
        let mut k = 0;
        while k < self.nodes[i].claims.len() {
            let c = &mut self.nodes[i].claims[k];
            if !c.fails && !c.posted && now >= c.post_at {
                c.posted = true;
            }
            let c = *c;
            if now < c.done_at || !(c.fails || c.posted) {
                k += 1;
                continue;
            }
            self.nodes[i].claims.remove(k);
            if !c.fails {
                self.holder = Some(c.to);
                self.assigns.push((now, c.to));
            }
            if c.wanted && self.nodes[i].alive {
                let ok = !c.fails;
                let input = if c.hand {
                    FollowerInput::HandedTo { ok }
                } else {
                    FollowerInput::Claimed { ok }
                };
                self.feed(i, input);
            }
        }
    }

    fn run_until(&mut self, t: u64, mut check: impl FnMut(&Sim)) {
        while self.now < t {
            self.now += TICK;
            self.tick();
            check(self);
        }
    }

    fn masters(&self, of: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| of(i) && self.nodes[i].alive && self.nodes[i].e.role() == Role::Master)
            .collect()
    }

    fn ctx(&self) -> String {
        format!(
            "seed {} (n={}, {}, interval {} ms, preempt {}, claim {:?} ms, {}% fail, side {:?}, prios {:?}) at {} ms: holder {:?}, assigns {:?}",
            self.seed,
            self.nodes.len(),
            if self.heartbeats { "dynia" } else { "vrrp3" },
            self.interval_ms,
            self.preempt,
            self.claim_ms,
            self.fail_percent,
            self.side,
            self.nodes.iter().map(|n| n.priority).collect::<Vec<_>>(),
            self.now,
            self.holder,
            self.assigns
        ) + &self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "; {} {:?} alive {} want {:?} wake {:?} back {:?}",
                    n.addr,
                    n.e.role(),
                    n.alive,
                    n.f.want(),
                    n.f.next_wake(),
                    n.f.stepped_back_from()
                )
            })
            .collect::<String>()
    }
}

/// What one seed did: assigns, and which of the rarer scenarios it ran.
#[derive(Default)]
struct Ran {
    assigns: usize,
    vrrp3: usize,
    dynia_dies: usize,
    late_claims: usize,
}

fn run_seed(seed: u64) -> Ran {
    let mut s = Sim::new(seed);
    let n = s.nodes.len();
    for i in 0..n {
        s.boot(i);
    }
    let claim_max = s.claim_ms.1;
    let mdi = 4 * u64::from(s.interval_ms);
    // Each failed claim costs a reconcile period and a claim more (12 in a
    // row at 30 % happen once in two million).
    let retries = if s.fail_percent > 0 { 12 } else { 0 };
    let heard_window = s.heard_window.as_millis() as u64;
    // vrrp3: a late claim on a backup is handed to the master by the
    // backup's reads after its step-down (up to two of them, then the
    // master's reconcile).
    let late_hand = if s.heartbeats {
        0
    } else {
        3 * LATE_FIRST_MS + 2 * claim_max + RECONCILE_MS
    };
    let settle = 2 * RECONCILE_MS
        + heard_window
        + 2 * claim_max
        + 2 * mdi
        + 2_000
        + retries * (RECONCILE_MS + claim_max)
        + late_hand;

    // 1. One network: one master holding the IP.
    s.run_until(settle, |_| {});
    let m = s.masters(|_| true);
    assert_eq!(m.len(), 1, "{}", s.ctx());
    assert_eq!(s.holder, Some(m[0]), "{}", s.ctx());

    // 1b. Sometimes the master's process dies (its droplet runs on): the
    // next one takes the IP, failed claims or not; then it comes back.
    if s.rng.chance(500) {
        let dead = m[0];
        s.crash(dead);
        let bound = s.now + settle;
        let taken = |s: &Sim| {
            let m = s.masters(|_| true);
            m.len() == 1 && s.holder == Some(m[0])
        };
        while s.now < bound && !taken(&s) {
            s.now += TICK;
            s.tick();
        }
        assert!(
            taken(&s),
            "no new master took the IP from a dead one: {}",
            s.ctx()
        );
        s.restart(dead);
        let t = s.now + settle;
        s.run_until(t, |_| {});
        let m = s.masters(|_| true);
        assert_eq!(m.len(), 1, "after restart: {}", s.ctx());
        assert_eq!(s.holder, Some(m[0]), "after restart: {}", s.ctx());
    }

    // 2. Split into two non-empty sides.
    let mut side: Vec<u8> = (0..n).map(|_| s.rng.range(0, 1) as u8).collect();
    side[0] = 0;
    side[n - 1] = 1;
    let split_at = s.now;
    let split_for = s.rng.range(60_000, 240_000);
    let dies = s.rng.chance(400);
    // Or: one backup alone on the minority side; it becomes master there
    // and takes the IP, then its dynia dies (its droplet runs on).
    let dynia_dies = !dies && s.rng.chance(500);
    if dynia_dies {
        let master = s.masters(|_| true)[0];
        let alone = (master + 1 + s.rng.range(0, n as u64 - 2) as usize) % n;
        side = (0..n).map(|i| u8::from(i == alone)).collect();
    }
    s.side = Some(side.clone());
    let die_at = split_at + split_for / 2;
    let end_of_split = split_at + split_for;
    s.run_until(split_at + settle, |_| {});
    assert!(
        s.assigns.iter().filter(|(t, _)| *t > split_at).count() <= 3,
        "too many assigns to settle a split: {}",
        s.ctx()
    );
    let settled = s.assigns.len();
    let holder = s.holder;
    let check_sides = |s: &Sim| {
        for sd in [0u8, 1] {
            let live = (0..n).any(|i| side[i] == sd && s.nodes[i].alive);
            if live {
                let m = s.masters(|i| side[i] == sd);
                assert_eq!(m.len(), 1, "side {sd}: masters {m:?}; {}", s.ctx());
            }
        }
    };
    let until = if dies || dynia_dies {
        die_at
    } else {
        end_of_split
    };
    s.run_until(until, |s| {
        assert_eq!(
            s.assigns.len(),
            settled,
            "ping-pong during the split: {}",
            s.ctx()
        );
        assert_eq!(s.holder, holder, "{}", s.ctx());
        check_sides(s);
    });

    if dies {
        // 3. The side holding the IP dies: processes and droplets.
        let h = s.holder.expect("someone holds it");
        let dead_side = side[h];
        for (i, sd) in side.iter().enumerate() {
            if *sd == dead_side {
                s.crash(i);
                s.running[i] = false;
            }
        }
        // Two reconcile periods and a claim; each failed claim costs one more.
        // (A long settle may end after `die_at`: count from the deaths.)
        let bound = s.now
            + 2 * RECONCILE_MS
            + claim_max
            + mdi
            + 1_000
            + retries * (RECONCILE_MS + claim_max);
        let taken = |s: &Sim| {
            let m = s.masters(|i| side[i] != dead_side);
            m.len() == 1 && s.holder == Some(m[0])
        };
        while s.now < bound && !taken(&s) {
            s.now += TICK;
            s.tick();
        }
        assert!(taken(&s), "the survivors never took the IP: {}", s.ctx());
        s.run_until(end_of_split, |_| {});
    }
    let dead_dynia =
        dynia_dies.then(|| holders_dynia_dies(&mut s, retries, mdi, end_of_split, &check_sides));

    // 4. Heal (the dead dynia comes back).
    s.side = None;
    s.heard_lower = Some(vec![None; n]);
    let heal_at = s.now;
    if let Some(h) = dead_dynia {
        s.restart(h);
    }
    let late_claims = !s.heartbeats && s.rng.chance(500);
    if late_claims {
        late_claims_at_heal(&mut s);
    }
    s.run_until(heal_at + settle, |_| {});
    let m = s.masters(|_| true);
    // A master that hears a lower master re-announces the IP at once, not
    // at its next reconcile (unless the API refused claims lately).
    if let (Some(&[m0]), Some(t), 0) = (
        Some(m.as_slice()),
        s.heard_lower.as_ref().and_then(|h| h[m[0]]),
        s.fail_percent,
    ) {
        assert!(
            s.assigns
                .iter()
                .any(|&(ta, i)| i == m0 && ta >= t && ta <= t + claim_max + 2 * TICK),
            "no re-announce after hearing a lower master at {t} ms: {}",
            s.ctx()
        );
    }
    assert_eq!(m.len(), 1, "after heal: {}", s.ctx());
    assert_eq!(s.holder, Some(m[0]), "after heal: {}", s.ctx());
    let believers: Vec<usize> = (0..n)
        .filter(|&i| s.nodes[i].alive && s.nodes[i].f.held())
        .collect();
    assert_eq!(
        believers,
        m,
        "after heal, who believes it holds: {}",
        s.ctx()
    );
    if s.preempt {
        let best = (0..n)
            .filter(|&i| s.nodes[i].alive)
            .max_by_key(|&i| s.nodes[i].priority)
            .unwrap();
        assert_eq!(m[0], best, "after heal with preempt: {}", s.ctx());
    }
    let done = s.assigns.len();
    s.run_until(heal_at + settle + 60_000, |s| {
        assert_eq!(s.assigns.len(), done, "assigns after heal: {}", s.ctx());
    });
    Ran {
        assigns: s.assigns.len(),
        vrrp3: usize::from(!s.heartbeats),
        dynia_dies: usize::from(dynia_dies),
        late_claims: usize::from(late_claims),
    }
}

/// 3b. The holder's dynia dies during the split (its droplet runs on): a
/// serving master holds the IP soon after (the other side's master once
/// its probes through the Reserved IP fail, or a new master on the
/// holder's side), and then it stays put until the heal. Returns the node.
fn holders_dynia_dies(
    s: &mut Sim,
    retries: u64,
    mdi: u64,
    end_of_split: u64,
    check_sides: &dyn Fn(&Sim),
) -> usize {
    let h = s.holder.expect("someone holds it");
    s.crash(h);
    let claim_max = s.claim_ms.1;
    let bound = s.now
        + (u64::from(UNSERVED_PROBES) + 2) * RECONCILE_MS
        + mdi
        + claim_max
        + 1_000
        + retries * (RECONCILE_MS + claim_max);
    let served = |s: &Sim| {
        s.holder
            .is_some_and(|h| s.nodes[h].alive && s.nodes[h].e.role() == Role::Master)
    };
    while s.now < bound && !served(s) {
        s.now += TICK;
        s.tick();
    }
    assert!(
        served(s),
        "the IP stayed on a dead dynia (node {h}): {}",
        s.ctx()
    );
    let (assigns, holder) = (s.assigns.len(), s.holder);
    s.run_until(end_of_split, |s| {
        assert_eq!(
            s.assigns.len(),
            assigns,
            "ping-pong after the holder's dynia died: {}",
            s.ctx()
        );
        assert_eq!(s.holder, holder, "{}", s.ctx());
        check_sides(s);
    });
    h
}

/// `vrrp3` at the heal: every master but the highest-priority one had an
/// assign in flight that lands after it stepped down (and after the
/// winner's re-announce): the IP is on a silent backup the master cannot
/// hear. The heal's checks then need the backup to hand it over.
fn late_claims_at_heal(s: &mut Sim) {
    let masters = s.masters(|_| true);
    let Some(&best) = masters.iter().max_by_key(|&&i| s.nodes[i].priority) else {
        return;
    };
    let claim_max = s.claim_ms.1;
    for i in masters.into_iter().filter(|&i| i != best) {
        let now = s.now;
        let done_at = now + claim_max + s.rng.range(100, 2_000);
        s.nodes[i].claims.push(Claim {
            post_at: now,
            done_at,
            posted: true,
            fails: false,
            wanted: false,
            to: i,
            hand: false,
        });
    }
}

#[test]
fn split_brains_settle_without_ping_pong() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        run_seed(seed.parse().expect("SIM_SEED is a number"));
        return;
    }
    let seeds = 100;
    let mut all = Ran::default();
    for seed in 0..seeds {
        let r = run_seed(seed);
        all.assigns += r.assigns;
        all.vrrp3 += r.vrrp3;
        all.dynia_dies += r.dynia_dies;
        all.late_claims += r.late_claims;
    }
    let assigns = all.assigns;
    println!(
        "{seeds} seeds: {assigns} assigns, {} vrrp3, {} with the holder's dynia dying, {} with late claims at the heal",
        all.vrrp3, all.dynia_dies, all.late_claims
    );
    // The rarer scenarios stay covered.
    assert!(all.vrrp3 >= 15 && all.dynia_dies >= 15 && all.late_claims >= 5);
    // Each seed moves the IP a handful of times, never hundreds.
    assert!(
        assigns <= seeds as usize * 8,
        "{assigns} assigns in {seeds} seeds"
    );
}
