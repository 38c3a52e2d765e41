//! The election state machine: RFC 5798 (VRRPv3) semantics, pure. It owns
//! *who should be MASTER* and nothing else: the runtime feeds it [`Input`]s
//! with a monotonic [`Millis`] through [`Election::step`], performs the
//! [`Action`]s it returns, and calls again with [`Input::Tick`] no later
//! than [`Election::next_deadline`]. The rules (RFC 5798 §6.4, timers in
//! milliseconds) and why a master in a split brain stays master:
//! `docs/election.md`, "The state machine".

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A point on the caller's monotonic clock, in milliseconds since an
/// arbitrary origin (e.g. daemon start). Never wall-clock time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub const ZERO: Millis = Millis(0);

    /// `self + ms`, saturating (a deadline at `u64::MAX` ms is "never").
    #[must_use]
    pub const fn add_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    #[must_use]
    pub const fn ms_since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Converts a `Duration` since the clock origin (e.g.
    /// `std::time::Instant::now() - start`).
    #[must_use]
    pub fn from_duration(d: Duration) -> Millis {
        Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A member's VRRP priority: 1..=254. 0 means "resigning" and only appears
/// on the wire; 255 (address owner) is not used by dynia.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    pub const MIN: Priority = Priority(1);
    pub const MAX: Priority = Priority(254);

    /// `None` unless `p` is in 1..=254.
    #[must_use]
    pub const fn new(p: u8) -> Option<Priority> {
        if p >= Self::MIN.0 && p <= Self::MAX.0 {
            Some(Priority(p))
        } else {
            None
        }
    }

    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// Bounds on the advert interval, in ms. The upper bound is VRRPv3's 12-bit
/// centisecond field (4095 cs), so every interval fits both transports.
pub const MIN_ADVERT_INTERVAL_MS: u32 = 10;
pub const MAX_ADVERT_INTERVAL_MS: u32 = 40_950;
/// Bound on `preempt_delay`: one hour.
pub const MAX_HOLD_MS: u64 = 3_600_000;

/// `Skew_Time` in ms (RFC 5798 §6.1, in ms instead of centiseconds).
#[must_use]
pub const fn skew_time_ms(priority: u8, master_adver_interval_ms: u32) -> u64 {
    ((256 - priority as u64) * master_adver_interval_ms as u64) / 256
}

/// How often a `dynia` node that is not master sends its heartbeat: twice
/// the advert interval, between 200 ms and 1 s (docs/election.md, "Liveness").
#[must_use]
pub fn heartbeat_every_ms(advert_interval_ms: u32) -> u32 {
    advert_interval_ms.saturating_mul(2).clamp(200, 1_000)
}

/// `Master_Down_Interval` in ms: `3 × Master_Adver_Interval + Skew_Time`.
#[must_use]
pub const fn master_down_interval_ms(priority: u8, master_adver_interval_ms: u32) -> u64 {
    3 * master_adver_interval_ms as u64 + skew_time_ms(priority, master_adver_interval_ms)
}

/// The `[election]` settings of one node, plus its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Our primary address (the member's `private_ip`): the address we put in
    /// adverts and the tie-breaker between equal priorities.
    pub local_addr: IpAddr,
    /// The member's configured priority (before tracking).
    pub priority: Priority,
    /// `advert_interval`: how often the Master advertises.
    pub advert_interval: Duration,
    /// `preempt`: a higher-priority backup takes over from a lower master.
    pub preempt: bool,
    /// `preempt_delay`: how long we must have seen a lower master before we
    /// preempt it.
    pub preempt_delay: Duration,
    /// Added to the first Master_Down timer after `Start`, so that members
    /// that heartbeat (`dynia` transport) are heard once before anyone takes
    /// over: a heartbeat period there, zero (RFC 5798 timing) otherwise.
    pub start_grace: Duration,
}

impl ElectionConfig {
    /// The defaults of `cluster.example.toml`: 200 ms, preempt, no delay.
    #[must_use]
    pub fn new(local_addr: IpAddr, priority: Priority) -> ElectionConfig {
        ElectionConfig {
            local_addr,
            priority,
            advert_interval: Duration::from_millis(200),
            preempt: true,
            preempt_delay: Duration::ZERO,
            start_grace: Duration::ZERO,
        }
    }

    /// Checks every bound. [`Election::new`] calls it.
    pub fn validate(&self) -> Result<(), ElectionConfigError> {
        if self.local_addr.is_unspecified() {
            return Err(ElectionConfigError::UnspecifiedAddress);
        }
        let ms = self.advert_interval.as_millis();
        if ms < u128::from(MIN_ADVERT_INTERVAL_MS) || ms > u128::from(MAX_ADVERT_INTERVAL_MS) {
            return Err(ElectionConfigError::AdvertInterval { ms });
        }
        if self.preempt_delay.as_millis() > u128::from(MAX_HOLD_MS) {
            return Err(ElectionConfigError::PreemptDelay {
                ms: self.preempt_delay.as_millis(),
            });
        }
        Ok(())
    }
}

/// Why an [`ElectionConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionConfigError {
    #[error("election.advert_interval is {ms}ms; it must be between {MIN_ADVERT_INTERVAL_MS}ms and {MAX_ADVERT_INTERVAL_MS}ms")]
    AdvertInterval { ms: u128 },
    #[error("election.preempt_delay is {ms}ms; it must be at most {MAX_HOLD_MS}ms (1h)")]
    PreemptDelay { ms: u128 },
    #[error(
        "the node's election address is unspecified (0.0.0.0 or ::); set the member's private_ip"
    )]
    UnspecifiedAddress,
}

/// RFC 5798 states (`Initialize` is `Init`) plus `Fault` (tracking failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Init,
    Backup,
    Master,
    Fault,
}

impl Role {
    /// The `/status.json` spelling: `init|backup|master|fault`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Backup => "backup",
            Role::Master => "master",
            Role::Fault => "fault",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The election-relevant content of a received advert (either transport),
/// after the transport has authenticated and filtered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdvertIn {
    /// Sender's primary address.
    pub from: IpAddr,
    /// 0 = the sender resigns; otherwise its priority.
    pub priority: u8,
    /// The sender's advert interval in ms. Clamped to
    /// [`MIN_ADVERT_INTERVAL_MS`]..=[`MAX_ADVERT_INTERVAL_MS`].
    pub interval_ms: u32,
}

/// A non-master member's heartbeat, after the transport authenticated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIn {
    pub from: IpAddr,
    pub priority: u8,
    /// False when the member reports Fault (its proxy cannot serve).
    pub serving: bool,
}

/// Everything that can happen to the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Leave Init (daemon start, or restart after `Shutdown`).
    Start,
    /// Time passed: fire every timer that is due at `now`.
    Tick,
    /// An authenticated advert from another member. Our own adverts are ignored.
    Advert(AdvertIn),
    /// A heartbeat from a member that is not master (`dynia` transport only):
    /// at start, a higher one that can serve is left to become master first.
    PeerHeard(PeerIn),
    /// Tracking result: can this node's proxy serve?
    Tracking { can_serve: bool },
    /// The member's priority changed (cluster document, make-active).
    SetPriority(Priority),
    /// Resign and stop (SIGTERM).
    Shutdown,
}

/// Why a role changed; for the log line and the hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `Start` (Init → Backup or Fault).
    Started,
    /// The Master_Down timer fired: no advert from a master we accept.
    MasterDown,
    /// A higher-priority advert (or equal priority from a higher address).
    PreemptedBy { from: IpAddr, priority: u8 },
    /// Tracking says we cannot serve.
    TrackingFailed,
    /// Tracking says we can serve again.
    TrackingRecovered,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Started => f.write_str("started"),
            Reason::MasterDown => f.write_str("master_down_timer"),
            Reason::PreemptedBy { from, priority } => {
                write!(f, "advert from {from} with priority {priority}")
            }
            Reason::TrackingFailed => f.write_str("tracking_failed"),
            Reason::TrackingRecovered => f.write_str("tracking_recovered"),
        }
    }
}

/// What the shell must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advert to every peer (priority 0 = resign).
    SendAdvert { priority: u8, interval_ms: u32 },
    /// We are Master: claim the Reserved IP (and keep reconciling it).
    BecomeMaster { reason: Reason },
    /// We are Backup: release the Reserved IP if held (idempotent).
    BecomeBackup { reason: Reason },
    /// We are in Fault: release the Reserved IP if held (idempotent).
    EnterFault { reason: Reason },
    /// We are back in Init after `Shutdown`: release if held; the shell may exit.
    Stop,
}

/// Most actions one step can produce (e.g. Master → Fault: advert + fault).
pub const MAX_ACTIONS: usize = 4;

/// The actions of one step: a fixed-capacity list (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actions {
    buf: [Action; MAX_ACTIONS],
    len: usize,
}

impl Actions {
    const fn new() -> Actions {
        Actions {
            buf: [Action::Stop; MAX_ACTIONS],
            len: 0,
        }
    }

    fn push(&mut self, a: Action) {
        assert!(self.len < MAX_ACTIONS, "one step produced too many actions");
        self.buf[self.len] = a;
        self.len += 1;
    }

    #[must_use]
    pub fn as_slice(&self) -> &[Action] {
        &self.buf[..self.len]
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Action> {
        self.as_slice().iter()
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = std::slice::Iter<'a, Action>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The last master we heard (for `/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterHeard {
    pub addr: IpAddr,
    pub priority: u8,
    pub interval_ms: u32,
    pub last_seen: Millis,
}

/// One node's election. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Election {
    cfg: ElectionConfig,
    advert_interval_ms: u32,
    preempt_delay_ms: u64,
    /// Current configured priority (starts at `cfg.priority`).
    priority: Priority,
    can_serve: bool,
    role: Role,
    /// Learned from the master's advert; our own until we hear one.
    master_adver_interval_ms: u32,
    /// Master only.
    adver_deadline: Option<Millis>,
    /// Backup only.
    down_deadline: Option<Millis>,
    /// Backup: since when we have been seeing a lower master (preempt_delay).
    lower_since: Option<Millis>,
    heard: Option<MasterHeard>,
    /// The first-master rule at start (see [`start`]).
    start: start::StartWindow,
    /// Latest `now` seen; time never goes backwards inside the machine.
    last_now: Millis,
    transitions: u64,
}

impl Election {
    /// A machine in Init. Nothing happens until [`Input::Start`].
    pub fn new(cfg: ElectionConfig) -> Result<Election, ElectionConfigError> {
        cfg.validate()?;
        let advert_interval_ms = u32::try_from(cfg.advert_interval.as_millis())
            .expect("validated: advert_interval fits u32");
        let preempt_delay_ms =
            u64::try_from(cfg.preempt_delay.as_millis()).expect("validated: preempt_delay bound");
        Ok(Election {
            priority: cfg.priority,
            cfg,
            advert_interval_ms,
            preempt_delay_ms,
            can_serve: true,
            role: Role::Init,
            master_adver_interval_ms: advert_interval_ms,
            adver_deadline: None,
            down_deadline: None,
            lower_since: None,
            heard: None,
            start: start::StartWindow::default(),
            last_now: Millis::ZERO,
            transitions: 0,
        })
    }

    // ---- status ------------------------------------------------------------

    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    #[must_use]
    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    /// The priority we advertise as Master (the configured one; a node that
    /// cannot serve is in Fault and advertises nothing).
    #[must_use]
    pub fn priority(&self) -> Priority {
        self.priority
    }

    #[must_use]
    pub fn can_serve(&self) -> bool {
        self.can_serve
    }

    /// The last master we heard: address, priority, interval, when.
    #[must_use]
    pub fn heard(&self) -> Option<MasterHeard> {
        self.heard
    }

    /// Number of role changes since creation (`dynia_election_transitions_total`).
    #[must_use]
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// `Master_Adver_Interval` in ms (learned from the master).
    #[must_use]
    pub fn master_adver_interval_ms(&self) -> u32 {
        self.master_adver_interval_ms
    }

    /// `Skew_Time` in ms for our priority and the learned interval.
    #[must_use]
    pub fn skew_time_ms(&self) -> u64 {
        skew_time_ms(self.priority.get(), self.master_adver_interval_ms)
    }

    /// `Master_Down_Interval` in ms for our priority and the learned interval.
    #[must_use]
    pub fn master_down_interval_ms(&self) -> u64 {
        master_down_interval_ms(self.priority.get(), self.master_adver_interval_ms)
    }

    /// When the shell must call `step(_, Input::Tick)` next; `None` = only on
    /// other inputs. Calling earlier is harmless; later only delays timers.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Millis> {
        match self.role {
            Role::Master => self.adver_deadline,
            Role::Backup => self.down_deadline,
            Role::Init | Role::Fault => None,
        }
    }

    // ---- the machine -------------------------------------------------------

    /// Feeds one input at `now` and returns what the shell must do, in order.
    /// `now` must be monotonic; an earlier `now` than a previous call is
    /// treated as the previous one.
    pub fn step(&mut self, now: Millis, input: Input) -> Actions {
        let now = now.max(self.last_now);
        self.last_now = now;
        let mut out = Actions::new();
        match input {
            Input::Start => self.on_start(now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::Advert(a) => self.on_advert(now, a, &mut out),
            Input::PeerHeard(p) => self.on_peer_heard(now, p),
            Input::Tracking { can_serve } => self.on_tracking(now, can_serve, &mut out),
            Input::SetPriority(p) => self.on_set_priority(now, p, &mut out),
            Input::Shutdown => self.on_shutdown(&mut out),
        }
        self.check_invariants();
        out
    }

    fn on_start(&mut self, now: Millis, out: &mut Actions) {
        if self.role != Role::Init {
            return; // already running: a second Start is a no-op
        }
        self.master_adver_interval_ms = self.advert_interval_ms;
        self.heard = None;
        if self.can_serve {
            let first_down = self.open_start_window(now);
            self.enter_backup(now, first_down);
            out.push(Action::BecomeBackup {
                reason: Reason::Started,
            });
        } else {
            self.enter_fault();
            out.push(Action::EnterFault {
                reason: Reason::Started,
            });
        }
    }

    fn on_tick(&mut self, now: Millis, out: &mut Actions) {
        match self.role {
            Role::Master => {
                let due = self.adver_deadline.expect("master has an advert timer");
                if now >= due {
                    self.send_advert(now, out);
                }
            }
            Role::Backup => {
                let due = self.down_deadline.expect("backup has a down timer");
                if now >= due && self.defer_first_master(now) {
                    self.down_deadline = Some(now.add_ms(self.master_down_interval_ms()));
                } else if now >= due {
                    self.enter_master(now);
                    self.send_advert(now, out);
                    out.push(Action::BecomeMaster {
                        reason: Reason::MasterDown,
                    });
                }
            }
            Role::Init | Role::Fault => {}
        }
    }

    fn on_advert(&mut self, now: Millis, a: AdvertIn, out: &mut Actions) {
        if a.from == self.cfg.local_addr || self.role == Role::Init {
            return;
        }
        let interval_ms = a
            .interval_ms
            .clamp(MIN_ADVERT_INTERVAL_MS, MAX_ADVERT_INTERVAL_MS);
        self.note_heard(now, a.from, a.priority, interval_ms);
        let local = self.priority.get();
        match self.role {
            Role::Init | Role::Fault => {}
            Role::Backup => {
                if a.priority == 0 {
                    // The master resigned: take over after Skew_Time unless a
                    // higher backup (shorter skew) does first.
                    self.lower_since = None;
                    self.down_deadline = Some(now.add_ms(self.skew_time_ms()));
                } else if !self.cfg.preempt || a.priority >= local {
                    self.lower_since = None;
                    self.accept_master(now, interval_ms);
                } else {
                    // A lower master and we may preempt it.
                    let since = *self.lower_since.get_or_insert(now);
                    if now.ms_since(since) < self.preempt_delay_ms {
                        self.accept_master(now, interval_ms);
                    }
                    // else: discard; the Master_Down timer will fire.
                }
            }
            Role::Master => {
                let higher = a.priority > local
                    || (a.priority == local && addr_greater(a.from, self.cfg.local_addr));
                if a.priority != 0 && higher {
                    self.master_adver_interval_ms = interval_ms;
                    self.enter_backup(now, self.master_down_interval_ms());
                    out.push(Action::BecomeBackup {
                        reason: Reason::PreemptedBy {
                            from: a.from,
                            priority: a.priority,
                        },
                    });
                } else {
                    // Lower (or resigning): tell it right away who is master.
                    self.send_advert(now, out);
                }
            }
        }
    }

    fn on_tracking(&mut self, now: Millis, can_serve: bool, out: &mut Actions) {
        let was = std::mem::replace(&mut self.can_serve, can_serve);
        if was == can_serve {
            return;
        }
        match (self.role, can_serve) {
            (Role::Master, false) => {
                out.push(Action::SendAdvert {
                    priority: 0,
                    interval_ms: self.advert_interval_ms,
                });
                self.enter_fault();
                out.push(Action::EnterFault {
                    reason: Reason::TrackingFailed,
                });
            }
            (Role::Backup, false) => {
                self.enter_fault();
                out.push(Action::EnterFault {
                    reason: Reason::TrackingFailed,
                });
            }
            (Role::Fault, true) => {
                self.enter_backup(now, self.master_down_interval_ms());
                out.push(Action::BecomeBackup {
                    reason: Reason::TrackingRecovered,
                });
            }
            _ => {}
        }
    }

    fn on_set_priority(&mut self, now: Millis, p: Priority, out: &mut Actions) {
        if p == self.priority {
            return;
        }
        self.priority = p;
        if self.role == Role::Master {
            // Let the backups learn at once (planned handover).
            self.send_advert(now, out);
        }
    }

    fn on_shutdown(&mut self, out: &mut Actions) {
        match self.role {
            Role::Init => return,
            Role::Master => out.push(Action::SendAdvert {
                priority: 0,
                interval_ms: self.advert_interval_ms,
            }),
            Role::Backup | Role::Fault => {}
        }
        self.set_role(Role::Init);
        self.adver_deadline = None;
        self.down_deadline = None;
        self.lower_since = None;
        out.push(Action::Stop);
    }

    // ---- helpers -----------------------------------------------------------

    fn accept_master(&mut self, now: Millis, interval_ms: u32) {
        self.master_adver_interval_ms = interval_ms;
        self.down_deadline = Some(now.add_ms(self.master_down_interval_ms()));
    }

    fn note_heard(&mut self, now: Millis, from: IpAddr, priority: u8, interval_ms: u32) {
        if priority == 0 {
            if self.heard.is_some_and(|h| h.addr == from) {
                self.heard = None;
            }
        } else {
            self.heard = Some(MasterHeard {
                addr: from,
                priority,
                interval_ms,
                last_seen: now,
            });
        }
    }

    fn send_advert(&mut self, now: Millis, out: &mut Actions) {
        debug_assert_eq!(self.role, Role::Master);
        out.push(Action::SendAdvert {
            priority: self.priority.get(),
            interval_ms: self.advert_interval_ms,
        });
        self.adver_deadline = Some(now.add_ms(u64::from(self.advert_interval_ms)));
    }

    fn set_role(&mut self, role: Role) {
        if self.role != role {
            self.role = role;
            self.transitions += 1;
        }
    }

    fn enter_backup(&mut self, now: Millis, down_in_ms: u64) {
        self.set_role(Role::Backup);
        self.adver_deadline = None;
        self.down_deadline = Some(now.add_ms(down_in_ms));
        self.lower_since = None;
    }

    fn enter_master(&mut self, now: Millis) {
        debug_assert!(self.can_serve);
        self.set_role(Role::Master);
        self.down_deadline = None;
        self.adver_deadline = Some(now);
        self.lower_since = None;
    }

    fn enter_fault(&mut self) {
        self.set_role(Role::Fault);
        self.adver_deadline = None;
        self.down_deadline = None;
        self.lower_since = None;
    }

    fn check_invariants(&self) {
        debug_assert!(Priority::new(self.priority.get()).is_some());
        debug_assert!((MIN_ADVERT_INTERVAL_MS..=MAX_ADVERT_INTERVAL_MS)
            .contains(&self.master_adver_interval_ms));
        match self.role {
            Role::Init => {
                debug_assert!(self.adver_deadline.is_none() && self.down_deadline.is_none());
            }
            Role::Backup => {
                debug_assert!(self.can_serve);
                debug_assert!(self.adver_deadline.is_none() && self.down_deadline.is_some());
            }
            Role::Master => {
                debug_assert!(self.can_serve);
                debug_assert!(self.adver_deadline.is_some() && self.down_deadline.is_none());
                debug_assert!(self.lower_since.is_none());
            }
            Role::Fault => {
                debug_assert!(!self.can_serve);
                debug_assert!(self.adver_deadline.is_none() && self.down_deadline.is_none());
            }
        }
    }
}

/// RFC 5798 §6.4.3: "the primary IPvX Address of the sender is greater than
/// the local primary IPvX Address", compared as unsigned integers in network
/// byte order. `IpAddr`'s `Ord` is exactly that within a family; across
/// families (a misconfiguration) IPv6 counts as greater.
#[must_use]
pub fn addr_greater(a: IpAddr, b: IpAddr) -> bool {
    a > b
}

mod start;
#[cfg(test)]
mod tests;
