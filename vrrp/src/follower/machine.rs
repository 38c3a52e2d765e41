//! The follower's transitions: one driver call at a time, abandoned (claim,
//! check) or waited for (warm-up, release) when the wish changes. See
//! `docs/election.md`, "The Reserved-IP follower".

use super::*;

impl Follower {
    /// A follower at `Want::Idle`; `seed` spreads the keep-warm reads of a
    /// cluster's nodes (± 10 %).
    pub fn new(cfg: FollowerConfig, seed: u64) -> Follower {
        Follower {
            cfg,
            want: Want::Idle,
            entered: true,
            busy: None,
            next: None,
            claimed: false,
            last_claim: None,
            yielded_to: None,
            reassert_pending: false,
            held: false,
            stepped_back: None,
            unserved: 0,
            last_seen: None,
            probe_claimed_from: None,
            probe_claim: None,
            probes_off: false,
            claim_issued: false,
            late: None,
            rng: seed | 1,
            out: Vec::new(),
        }
    }

    /// The first read of the holder (discovers the droplet, opens the
    /// pooled connection, checks the token).
    pub fn start(&mut self) -> Vec<FollowerOutput> {
        self.busy = Some(Busy::Warm);
        self.out.push(FollowerOutput::Warm { first: true });
        std::mem::take(&mut self.out)
    }

    /// Feeds one input at `now`; returns what to do.
    pub fn step(&mut self, now: Millis, input: FollowerInput) -> Vec<FollowerOutput> {
        match input {
            FollowerInput::Want(w) => self.wish(now, w),
            FollowerInput::Tick => self.tick(now),
            FollowerInput::LowerMasterHeard => self.lower_master(now),
            FollowerInput::Claimed { ok } => self.claimed(now, ok),
            FollowerInput::HolderRead(seen) => self.checked(now, seen),
            FollowerInput::Warmed => self.done(now, Busy::Warm),
            FollowerInput::Released => {
                if self.busy == Some(Busy::Release) {
                    self.set_held(false);
                }
                self.done(now, Busy::Release)
            }
            FollowerInput::Probed { serving } => self.probed(now, serving),
            FollowerInput::LateRead { seen, master } => self.late_read(now, seen, master),
            FollowerInput::HandedTo { .. } => self.done(now, Busy::Hand),
        }
        std::mem::take(&mut self.out)
    }

    /// When to feed the next [`FollowerInput::Tick`]; `None` while a driver
    /// call is in flight.
    pub fn next_wake(&self) -> Option<Millis> {
        self.next
    }

    pub fn want(&self) -> Want {
        self.want
    }

    pub fn held(&self) -> bool {
        self.held
    }

    pub fn stepped_back_from(&self) -> Option<IpAddr> {
        self.stepped_back
    }

    fn wish(&mut self, now: Millis, w: Want) {
        self.want = w;
        self.entered = false;
        if matches!(
            self.busy,
            Some(Busy::Claim | Busy::Check | Busy::Probe | Busy::Late | Busy::Hand)
        ) {
            self.busy = None;
            self.out.push(FollowerOutput::Abandon);
        }
        if self.busy.is_none() {
            self.enter(now);
        }
    }

    fn enter(&mut self, now: Millis) {
        self.entered = true;
        self.reassert_pending = false;
        match self.want {
            Want::Hold => {
                self.claimed = false;
                self.yielded_to = None;
                self.unserved = 0;
                self.probe_claimed_from = None;
                self.probe_claim = None;
                self.probes_off = false;
                self.late = None;
                self.set_stepped_back(None);
                self.claim();
            }
            Want::Release => {
                self.after_step_down();
                self.busy = Some(Busy::Release);
                self.next = None;
                self.out.push(FollowerOutput::Release);
            }
            Want::Idle => {
                self.after_step_down();
                self.idle(now);
            }
        }
    }

    fn idle(&mut self, now: Millis) {
        if let Some(late) = self.late {
            self.next = Some(after(now, late.gap));
            return;
        }
        let d = self.jittered(self.cfg.warm_every);
        self.next = Some(after(now, d));
    }

    fn claim(&mut self) {
        self.claim_issued = true;
        self.busy = Some(Busy::Claim);
        self.next = None;
        self.out.push(FollowerOutput::Claim);
    }

    fn tick(&mut self, now: Millis) {
        if self.busy.is_some() || self.next.is_none_or(|t| t > now) {
            return;
        }
        self.next = None;
        if self.want == Want::Hold {
            self.busy = Some(Busy::Check);
            self.out.push(FollowerOutput::ReadHolder);
        } else if self.late.is_some() {
            self.busy = Some(Busy::Late);
            self.out.push(FollowerOutput::LateRead);
        } else {
            self.busy = Some(Busy::Warm);
            self.out.push(FollowerOutput::Warm { first: false });
        }
    }

    fn lower_master(&mut self, now: Millis) {
        if self.want != Want::Hold || !self.entered {
            return;
        }
        if self.busy.is_some() {
            self.reassert_pending = true;
        } else {
            self.reassert(now);
        }
    }

    /// Claims again unless the last claim was less than the gap ago.
    fn reassert(&mut self, now: Millis) {
        self.reassert_pending = false;
        let since = self
            .last_claim
            .map_or(u64::MAX, |t| now.0.saturating_sub(t.0));
        if Duration::from_millis(since) < self.cfg.reassert_gap {
            return;
        }
        if self.yielded_to.take().is_some() {
            tracing::info!("the split brain is over (a lower-priority master is heard); claiming the reserved ip");
        } else {
            tracing::info!("a lower-priority master is heard: re-announcing the reserved ip");
        }
        self.set_stepped_back(None);
        self.claim();
    }

    fn claimed(&mut self, now: Millis, ok: bool) {
        if self.busy != Some(Busy::Claim) {
            return;
        }
        self.last_claim = Some(now);
        if ok {
            // A claim made because the holder did not serve, and it landed.
            if let Some(h) = self.probe_claim.take() {
                self.probe_claimed_from = Some(h);
            }
            self.unserved = 0;
            self.claimed = true;
            self.set_held(true);
            self.out.push(FollowerOutput::Announce);
        }
        self.done(now, Busy::Claim);
    }

    /// A driver call finished: act on a deferred wish, a pending
    /// re-assertion, or wait for the next check or keep-warm read.
    pub(super) fn done(&mut self, now: Millis, what: Busy) {
        if self.busy != Some(what) {
            return;
        }
        self.busy = None;
        if !self.entered {
            self.enter(now);
        } else if self.want != Want::Hold {
            self.idle(now);
        } else if self.reassert_pending {
            self.next = Some(after(now, self.cfg.reconcile));
            self.reassert(now);
        } else {
            self.next = Some(after(now, self.cfg.reconcile));
        }
    }

    fn checked(&mut self, now: Millis, seen: Option<HolderSeen>) {
        if self.busy != Some(Busy::Check) {
            return;
        }
        let Some(seen) = seen else {
            return self.done(now, Busy::Check);
        };
        let verdict = self.decide(seen);
        if !matches!(verdict, Verdict::Yield { .. }) {
            // A claim because the holder does not serve keeps the count
            // until it lands (a failed one is retried at the next check).
            self.probe_claim = self.on_probes(seen, verdict);
            if self.probe_claim.is_none() {
                self.unserved = 0;
            }
            self.set_stepped_back(None);
        }
        match verdict {
            Verdict::Fine => self.fine(seen),
            Verdict::Claim => {
                if self.yielded_to.take().is_some() {
                    tracing::info!(holder = ?seen, "the split brain is over (the holder is gone or heard again); claiming the reserved ip");
                } else {
                    tracing::warn!(holder = ?seen, "reconcile: the reserved ip does not point here; claiming it again");
                }
                self.busy = None;
                self.reassert_pending = false;
                return self.claim();
            }
            Verdict::Yield { holder } => {
                if self.yielded_to != Some(holder) {
                    tracing::warn!(%holder, seen = ?seen, "reconcile: the reserved ip is on a running member we cannot hear (split brain); stepping back instead of re-claiming, and staying master for the nodes that hear us");
                    self.unserved = 0;
                }
                self.yielded_to = Some(holder);
                self.set_stepped_back(Some(holder));
                self.set_held(false);
                if self.probe_holder(holder, seen) {
                    return;
                }
            }
        }
        self.done(now, Busy::Check);
    }

    fn decide(&self, seen: HolderSeen) -> Verdict {
        reconcile::decide(&Observation {
            seen,
            heard_window: self.cfg.heard_window,
            claimed_since_master: self.claimed,
            unserved_probes: self.unserved,
        })
    }

    /// The holder a `Claim` verdict is taken from only because it does not
    /// serve (it would be a yield without the probes).
    fn on_probes(&self, seen: HolderSeen, verdict: Verdict) -> Option<IpAddr> {
        let without = reconcile::decide(&Observation {
            seen,
            heard_window: self.cfg.heard_window,
            claimed_since_master: self.claimed,
            unserved_probes: 0,
        });
        match (verdict, without) {
            (Verdict::Claim, Verdict::Yield { holder }) => Some(holder),
            _ => None,
        }
    }

    /// Yielded to `holder`: probe its service through the Reserved IP
    /// unless probes are off; true when a probe is asked for.
    fn probe_holder(&mut self, holder: IpAddr, seen: HolderSeen) -> bool {
        if self.probe_claimed_from == Some(holder) && !self.probes_off {
            tracing::warn!(%holder, "the holder took the reserved ip back after probes said nothing serves behind it: its dynia lives; no more probes until the next mastership (is the probe port reachable through the reserved ip?)");
            self.probes_off = true;
        }
        if !self.cfg.probe || self.probes_off {
            return false;
        }
        self.last_seen = Some(seen);
        self.busy = Some(Busy::Probe);
        self.out.push(FollowerOutput::ProbeHolder);
        true
    }

    /// A probe's answer: a holder that does not serve, [`reconcile::UNSERVED_PROBES`]
    /// times in a row, counts as gone.
    fn probed(&mut self, now: Millis, serving: bool) {
        if self.busy != Some(Busy::Probe) {
            return;
        }
        self.unserved = if serving { 0 } else { self.unserved + 1 };
        let seen = self.last_seen.take();
        let verdict = seen.map(|s| self.decide(s));
        if verdict != Some(Verdict::Claim) {
            return self.done(now, Busy::Probe);
        }
        tracing::warn!(holder = ?self.yielded_to, probes = self.unserved, "the holder's droplet runs but nothing serves behind the reserved ip (its dynia is down); claiming it");
        self.probe_claim = self.yielded_to.take();
        self.set_stepped_back(None);
        self.busy = None;
        self.reassert_pending = false;
        self.claim();
    }

    fn fine(&mut self, seen: HolderSeen) {
        if seen != HolderSeen::Me {
            return;
        }
        self.set_held(true);
        if self.yielded_to.take().is_some() {
            tracing::info!("the reserved ip points here again; the split brain is over");
        }
    }

    fn set_held(&mut self, held: bool) {
        if self.held != held {
            self.held = held;
            self.out.push(FollowerOutput::SetHeld(held));
        }
    }

    fn set_stepped_back(&mut self, holder: Option<IpAddr>) {
        if self.stepped_back != holder {
            self.stepped_back = holder;
            self.out.push(FollowerOutput::SteppedBack(holder));
        }
    }

    /// `d` ± 10 %, so a cluster's nodes do not call the API in step.
    fn jittered(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        d.mul_f64(0.9 + (self.rng % 2001) as f64 / 10_000.0)
    }
}

fn after(now: Millis, d: Duration) -> Millis {
    Millis(now.0.saturating_add(d.as_millis() as u64))
}
