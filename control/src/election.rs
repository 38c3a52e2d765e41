//! The election's I/O shell: the thin part around `dynia_vrrp::election`.
//!
//! It owns one thread with its own single-threaded Tokio runtime, so proxy
//! load cannot starve adverts (keepalived's false failovers under load come
//! from exactly that). On that thread:
//! - the transport (`crate::transport`: `dynia` UDP, or `vrrp3` raw IP
//!   protocol 112) sends adverts to every other member and receives theirs,
//!   filtered; only a master's adverts feed the state machine, every
//!   member's (master adverts and, with `dynia`, the slower heartbeats of
//!   backups) update the peer table behind `/status.json`;
//! - tracking polls whether the proxy can serve and tells the state machine;
//! - a driver task makes the Reserved IP follow the role: claim on MASTER and
//!   keep reconciling, by the pure rules of `dynia_vrrp::reconcile` (claim
//!   again if the IP went nowhere, outside the cluster, to a member we hear
//!   or whose droplet is off, or before our own claim ever succeeded; step
//!   back from the address without re-claiming, but stay MASTER, if after
//!   our claim it went to a running member we cannot hear: a split brain;
//!   staying master keeps the nodes on our side from electing another
//!   master that would claim in turn; the checks go on and claim it back
//!   once that holder is gone or heard again); it releases when leaving
//!   MASTER, abandons a claim the moment the role changes, and keeps the API
//!   connection warm while backup; hooks run after each transition.
//!
//! Every queue is bounded, every external call has a timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynia_vrrp::advert::{AdvertKey, DropReason, SenderRole};
use dynia_vrrp::driver::{ClaimOutcome, Driver, Holder};
use dynia_vrrp::election::{
    Action, AdvertIn, Election, ElectionConfig, Input, Millis, Priority, Reason, Role,
};
use dynia_vrrp::reconcile::{self, Verdict};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Transport as TransportKind;
use crate::transport::{Heard, Opened, Received, Transport, VRRP3_DROP_REASONS};

/// Heartbeat period of a node that is not master.
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// How often a master checks that the Reserved IP still points at it.
const RECONCILE: Duration = Duration::from_secs(5);
/// Pending commands to the election thread.
const COMMANDS: usize = 16;
/// Longest a hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// A master re-asserts the Reserved IP at most this often (see `Wakeups`).
const REASSERT_MIN_GAP: Duration = Duration::from_secs(1);
/// A leaving master keeps the Reserved IP this long after its successor says
/// it holds it (its gratuitous ARP is out: a moment for it to land).
const HANDOVER_SETTLE_MIN: Duration = Duration::from_millis(200);
/// A backup reads the Reserved IP's holder this often, which keeps the
/// driver's pooled API connection warm (under its 90 s idle limit) so a
/// failover pays no TCP + TLS handshake. About 45 API calls an hour per node,
/// against DigitalOcean's 5 000 per hour and token.
const WARM_EVERY: Duration = Duration::from_secs(80);
/// After resigning, how long a leaving master waits at least for a successor
/// that holds the Reserved IP (10 advert intervals if longer).
const HANDOVER_WAIT_MIN: Duration = Duration::from_secs(2);

/// One other member as the election knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    pub addr: IpAddr,
    pub droplet_id: Option<u64>,
}

/// Everything the election needs; rebuilt from the files on reload.
#[derive(Clone)]
pub struct Settings {
    /// `dynia` (UDP, authenticated) or `vrrp3` (RFC 5798, keepalived interop).
    pub transport: TransportKind,
    pub local: IpAddr,
    /// UDP port of the `dynia` transport (unused by `vrrp3`).
    pub port: u16,
    /// SCHED_RR priority of the election thread; 0 = normal scheduling.
    pub rt_priority: u8,
    pub priority: Priority,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub vrid: u8,
    pub cluster: String,
    /// The cluster key; required by `dynia`, `None` with `vrrp3`.
    pub key: Option<AdvertKey>,
    /// Every member but this one.
    pub peers: Vec<Peer>,
    pub generation: u64,
    pub config_hash: [u8; 32],
    pub reserved_ip: Option<IpAddr>,
    pub hooks: Hooks,
    /// Where the `dynia` transport keeps its boot epoch (`state_dir`), so a
    /// restart never reuses an epoch even if the wall clock stepped back.
    pub epoch_file: Option<PathBuf>,
}

/// Executables run after transitions, with arguments `<state> <address> <priority>`.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub on_master: Option<PathBuf>,
    pub on_backup: Option<PathBuf>,
    pub on_fault: Option<PathBuf>,
}

/// What one peer last told us.
#[derive(Debug, Clone)]
pub struct Seen {
    pub role: SenderRole,
    pub priority: u8,
    /// `None` with `vrrp3` (its adverts carry no generation).
    pub generation: Option<u64>,
    pub config_hash: Option<[u8; 32]>,
    pub at: Instant,
}

/// State readable from other threads (admin API, status).
pub struct Shared {
    role: AtomicU8,
    priority: AtomicU8,
    held: AtomicBool,
    /// Master in a split brain: the holder it stepped back from.
    stepped_back_from: Mutex<Option<IpAddr>>,
    peers: Mutex<HashMap<IpAddr, Seen>>,
    /// The other members as the cluster document lists them now (the driver
    /// task maps a holder's droplet id to a member with it).
    members: Mutex<Arc<Vec<Peer>>>,
}

impl Shared {
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            1 => Role::Backup,
            2 => Role::Master,
            3 => Role::Fault,
            _ => Role::Init,
        }
    }

    fn set_role(&self, r: Role) {
        let v = match r {
            Role::Init => 0,
            Role::Backup => 1,
            Role::Master => 2,
            Role::Fault => 3,
        };
        self.role.store(v, Ordering::Relaxed);
    }

    pub fn priority(&self) -> u8 {
        self.priority.load(Ordering::Relaxed)
    }

    /// Whether the driver last succeeded in making the Reserved IP point here.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// While master in a split brain: the holder we stepped back from.
    pub fn stepped_back_from(&self) -> Option<IpAddr> {
        if self.role() != Role::Master {
            return None;
        }
        *self
            .stepped_back_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn set_stepped_back_from(&self, holder: Option<IpAddr>) {
        *self
            .stepped_back_from
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = holder;
    }

    pub fn seen(&self, addr: IpAddr) -> Option<Seen> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    fn members(&self) -> Arc<Vec<Peer>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Election metrics.
#[derive(Clone)]
struct Metrics {
    state: IntGaugeVec,
    transitions: IntCounter,
    claims: IntCounterVec,
    received: IntCounter,
    dropped: IntCounterVec,
    sent: IntCounter,
    gap: Histogram,
}

/// Buckets of `dynia_election_advert_gap_seconds`: around the default
/// 100 ms interval up to well past any Master_Down_Interval.
const GAP_BUCKETS: [f64; 11] = [0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0, 5.0];

impl Metrics {
    fn new(registry: &Registry, transport: TransportKind) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            state: IntGaugeVec::new(
                Opts::new(
                    "dynia_election_state",
                    "1 for this node's current election state.",
                ),
                &["state"],
            )?,
            transitions: IntCounter::new(
                "dynia_election_transitions_total",
                "Election state changes of this node.",
            )?,
            claims: IntCounterVec::new(
                Opts::new(
                    "dynia_reserved_ip_claims_total",
                    "Reserved IP claims, by result.",
                ),
                &["result"],
            )?,
            received: IntCounter::new(
                "dynia_election_adverts_received_total",
                "Adverts accepted from members.",
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "dynia_election_adverts_dropped_total",
                    "Datagrams dropped, by reason.",
                ),
                &["reason"],
            )?,
            sent: IntCounter::new(
                "dynia_election_adverts_sent_total",
                "Adverts and heartbeats sent.",
            )?,
            gap: Histogram::with_opts(
                HistogramOpts::new(
                    "dynia_election_advert_gap_seconds",
                    "Time between consecutive adverts heard from the same master (how close a backup came to its Master_Down_Interval).",
                )
                .buckets(GAP_BUCKETS.to_vec()),
            )?,
        };
        for s in ["init", "backup", "master", "fault"] {
            m.state.with_label_values(&[s]).set(i64::from(s == "init"));
        }
        for r in ["success", "failure"] {
            m.claims.with_label_values(&[r]);
        }
        for r in DropReason::ALL {
            m.dropped.with_label_values(&[r.as_str()]);
        }
        if transport == TransportKind::Vrrp3 {
            for r in VRRP3_DROP_REASONS {
                m.dropped.with_label_values(&[r]);
            }
        }
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.claims.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.gap.clone()))?;
        Ok(m)
    }

    fn set_role(&self, r: Role) {
        for s in ["init", "backup", "master", "fault"] {
            self.state
                .with_label_values(&[s])
                .set(i64::from(s == r.as_str()));
        }
    }
}

enum Command {
    Reconfigure(Box<Settings>),
    /// Resign (priority 0), hand over, release; answer when done.
    Shutdown(oneshot::Sender<()>),
}

/// Why the election could not start.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("election: cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("election: {0}")]
    Config(String),
    #[error("election: transport \"vrrp3\" needs a raw IP socket (protocol 112), which needs root or CAP_NET_RAW (e.g. AmbientCapabilities=CAP_NET_RAW in the unit): {0}")]
    RawSocketPermission(std::io::Error),
    #[error("election: cannot open the vrrp3 raw socket on {addr}: {source}")]
    RawSocket {
        addr: std::net::Ipv4Addr,
        source: std::io::Error,
    },
    #[error("election: cannot start its thread: {0}")]
    Thread(std::io::Error),
    #[error("election metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Handle to the running election.
pub struct ElectionHandle {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ElectionHandle {
    /// Starts the election thread. `can_serve` is polled for tracking.
    pub fn start(
        settings: Settings,
        driver: Driver,
        can_serve: impl Fn() -> bool + Send + 'static,
        registry: &Registry,
    ) -> Result<ElectionHandle, ElectionError> {
        let cfg = election_config(&settings);
        let election = Election::new(cfg).map_err(|e| ElectionError::Config(e.to_string()))?;
        let opened = Opened::open(&settings)?;
        let metrics = Metrics::new(registry, settings.transport)?;
        let shared = Arc::new(Shared {
            role: AtomicU8::new(0),
            priority: AtomicU8::new(settings.priority.get()),
            held: AtomicBool::new(false),
            stepped_back_from: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            members: Mutex::new(Arc::new(settings.peers.clone())),
        });
        let (tx, rx) = mpsc::channel(COMMANDS);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dynia-election".into())
            .spawn(move || {
                realtime(settings.rt_priority);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "election runtime failed to start");
                        return;
                    }
                };
                rt.block_on(async move {
                    let transport = match opened.into_transport(&settings) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(error = %e, "election socket unusable");
                            return;
                        }
                    };
                    let shell = Shell::new(settings, election, transport, driver, sh, metrics);
                    shell.run(rx, Box::new(can_serve)).await;
                });
            })
            .map_err(ElectionError::Thread)?;
        Ok(ElectionHandle {
            shared,
            commands: tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Applies new settings (members, generation, priority); bounded wait.
    pub async fn reconfigure(&self, settings: Settings) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.commands.send(Command::Reconfigure(Box::new(settings))),
        )
        .await;
    }

    /// Resigns mastership and hands over, then stops the thread (bounded).
    pub async fn shutdown(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Puts the calling thread (the election's) under SCHED_RR at `priority`,
/// as keepalived's `vrrp_rt_priority` does for its VRRP process: on a
/// machine whose cores the proxy, the apps and the load fill, a thread at
/// normal priority can wake late, and a master's adverts that arrive later
/// than the backups' Master_Down_Interval are a false failover. The thread
/// sleeps between adverts and each wake-up is a few microseconds of work,
/// so it takes next to nothing from the proxy; the kernel's RT throttling
/// (`sched_rt_runtime_us`, 95 % by default) bounds a runaway.
///
/// `SCHED_RESET_ON_FORK`: what this thread starts (Tokio's blocking pool
/// for driver work, hook processes) runs at normal priority again.
/// Refused (no CAP_SYS_NICE, or an RT cgroup budget of 0): normal
/// scheduling, said once in the log.
fn realtime(priority: u8) {
    if priority == 0 {
        tracing::info!("election thread at normal priority (rt_priority = 0)");
        return;
    }
    debug_assert!(priority <= 99, "validated: 1..=99");
    let param = libc::sched_param {
        sched_priority: i32::from(priority.min(99)),
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread on Linux.
    let rc =
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) };
    if rc == 0 {
        tracing::info!(rt_priority = priority, "election thread under SCHED_RR");
    } else {
        let e = std::io::Error::last_os_error();
        tracing::warn!(
            rt_priority = priority,
            error = %e,
            "election thread at normal priority: real-time scheduling refused (needs CAP_SYS_NICE); a saturated machine can delay adverts"
        );
    }
}

fn election_config(s: &Settings) -> ElectionConfig {
    let mut cfg = ElectionConfig::new(s.local, s.priority);
    cfg.advert_interval = s.advert_interval;
    cfg.preempt = s.preempt;
    cfg.preempt_delay = s.preempt_delay;
    cfg
}

/// Wake-ups between the election loop and its driver task.
#[derive(Default)]
struct Wakeups {
    /// To the driver: claim again while holding (see `Shell::wake`).
    reassert: tokio::sync::Notify,
    /// From the driver: a claim succeeded. A master then sends an advert at
    /// once, so peers (a predecessor handing over) learn that it holds the
    /// Reserved IP without waiting for the next interval.
    claimed: tokio::sync::Notify,
}

/// What the driver task should make true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Idle,
    /// Master: claim and reconcile.
    Hold,
    /// Not master: release where that means something.
    Release,
}

struct Shell {
    settings: Settings,
    election: Election,
    transport: Transport,
    driver: Driver,
    shared: Arc<Shared>,
    metrics: Metrics,
    started: Instant,
    want: watch::Sender<Want>,
    /// `reassert` wakes the driver task to claim again while holding: a
    /// master that hears a lower-priority master (a healed split)
    /// re-announces the Reserved IP, as keepalived re-sends gratuitous ARP
    /// in `vrrp_state_master_rx` (`vrrp_garp_lower_prio_repeat`), so clients
    /// whose cache points at the other node come back at once. `claimed`
    /// comes back from the driver task.
    wake: Arc<Wakeups>,
    /// While backup, the master last heard and when: the gap to its next
    /// advert is observed in `dynia_election_advert_gap_seconds`.
    last_master_advert: Option<(IpAddr, Instant)>,
}

impl Shell {
    fn new(
        settings: Settings,
        election: Election,
        transport: Transport,
        driver: Driver,
        shared: Arc<Shared>,
        metrics: Metrics,
    ) -> Shell {
        let (want, _) = watch::channel(Want::Idle);
        Shell {
            settings,
            election,
            transport,
            driver,
            shared,
            metrics,
            started: Instant::now(),
            want,
            wake: Arc::new(Wakeups::default()),
            last_master_advert: None,
        }
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// A member heard within this window is reachable on the election
    /// channel: three of the slowest messages a live member sends (a
    /// backup's heartbeat with `dynia`; with `vrrp3`, whose backups are
    /// silent, a master's advert), and never less than two
    /// Master_Down_Intervals.
    fn heard_window(&self) -> Duration {
        let mdi = Duration::from_millis(self.election.master_down_interval_ms());
        let slowest = if self.transport.heartbeats() {
            HEARTBEAT
        } else {
            self.settings.advert_interval
        };
        (slowest * 3).max(mdi * 2)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        can_serve: Box<dyn Fn() -> bool + Send>,
    ) {
        tokio::spawn(driver_task(
            DriverCtx {
                driver: self.driver.clone(),
                shared: self.shared.clone(),
                metrics: self.metrics.clone(),
                wake: self.wake.clone(),
                heard_window: self.heard_window(),
            },
            self.want.subscribe(),
        ));
        let mut serving = can_serve();
        let now = self.now();
        let a = self
            .election
            .step(now, Input::Tracking { can_serve: serving });
        self.apply(a.as_slice()).await;
        let a = self.election.step(now, Input::Start);
        self.apply(a.as_slice()).await;
        tracing::info!(
            transport = ?self.settings.transport,
            addr = %self.settings.local,
            port = self.settings.port,
            priority = self.settings.priority.get(),
            peers = self.settings.peers.len(),
            master_down_ms = self.election.master_down_interval_ms(),
            "election started"
        );
        let mut track = tokio::time::interval(
            self.settings
                .advert_interval
                .min(Duration::from_millis(200)),
        );
        track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.election.next_deadline();
            let sleep_for = deadline
                .map(|d| Duration::from_millis(d.0.saturating_sub(self.now().0)))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                r = self.transport.recv() => match r {
                    Received::Heard(h) => self.receive(h).await,
                    Received::Dropped { from, reason } => {
                        self.metrics.dropped.with_label_values(&[reason]).inc();
                        tracing::debug!(?from, reason, "advert dropped");
                    }
                    Received::Failed(e) => {
                        // Never spin on a failing socket; timers still run.
                        tracing::warn!(error = %e, "election socket receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tokio::time::sleep(sleep_for) => {
                    let a = self.election.step(self.now(), Input::Tick);
                    self.apply(a.as_slice()).await;
                }
                _ = track.tick() => {
                    let now_serving = can_serve();
                    if now_serving != serving {
                        serving = now_serving;
                        tracing::info!(can_serve = serving, "proxy tracking changed");
                        let a = self.election.step(self.now(), Input::Tracking { can_serve: serving });
                        self.apply(a.as_slice()).await;
                    }
                }
                _ = heartbeat.tick() => {
                    let role = self.election.role();
                    if role != Role::Master && self.transport.heartbeats() {
                        let r = if role == Role::Fault { SenderRole::Fault } else { SenderRole::Backup };
                        self.send(self.election.priority().get(), r).await;
                    }
                }
                _ = self.wake.claimed.notified() => {
                    if self.election.role() == Role::Master {
                        let p = self.election.priority().get();
                        self.send(p, SenderRole::Master).await;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconfigure(s)) => self.reconfigure(*s).await,
                    Some(Command::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
            }
        }
    }

    async fn receive(&mut self, h: Heard) {
        self.metrics.received.inc();
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                h.sender,
                Seen {
                    role: h.role,
                    priority: h.priority,
                    generation: h.generation,
                    config_hash: h.config_hash,
                    at: Instant::now(),
                },
            );
        if h.role == SenderRole::Master {
            let at = Instant::now();
            if self.election.role() == Role::Backup {
                if let Some((from, prev)) = self.last_master_advert {
                    if from == h.sender {
                        self.metrics.gap.observe((at - prev).as_secs_f64());
                    }
                }
                self.last_master_advert = Some((h.sender, at));
            }
            let input = Input::Advert(AdvertIn {
                from: h.sender,
                priority: h.priority,
                interval_ms: h.interval_ms,
            });
            let acts = self.election.step(self.now(), input);
            self.apply(acts.as_slice()).await;
            if self.election.role() == Role::Master
                && h.priority > 0
                && h.priority < self.election.priority().get()
            {
                self.wake.reassert.notify_one();
            }
        }
    }

    async fn send(&mut self, priority: u8, role: SenderRole) {
        let holds = self.shared.held();
        if self
            .transport
            .send(&self.settings, priority, role, holds)
            .await
        {
            self.metrics.sent.inc();
        }
    }

    async fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match *a {
                Action::SendAdvert { priority, .. } => {
                    self.send(priority, SenderRole::Master).await
                }
                Action::BecomeMaster { reason } => {
                    self.transition(Role::Master, reason, Want::Hold)
                }
                Action::BecomeBackup { reason } => {
                    self.transition(Role::Backup, reason, Want::Release)
                }
                Action::EnterFault { reason } => {
                    self.transition(Role::Fault, reason, Want::Release)
                }
                Action::Stop => {}
            }
        }
        let role = self.election.role();
        if role != self.shared.role() {
            self.shared.set_role(role);
            self.metrics.set_role(role);
        }
    }

    fn transition(&mut self, role: Role, reason: Reason, want: Want) {
        self.metrics.transitions.inc();
        // Gaps are measured within one stretch of being backup.
        self.last_master_advert = None;
        self.shared.set_role(role);
        self.metrics.set_role(role);
        tracing::info!(
            role = role.as_str(),
            reason = %reason,
            priority = self.election.priority().get(),
            "election state changed"
        );
        self.want.send_replace(want);
        run_hook(&self.settings, role, self.election.priority().get());
    }

    async fn reconfigure(&mut self, s: Settings) {
        self.transport.set_members(&s);
        if s.priority != self.settings.priority {
            let a = self
                .election
                .step(self.now(), Input::SetPriority(s.priority));
            self.apply(a.as_slice()).await;
            self.shared
                .priority
                .store(s.priority.get(), Ordering::Relaxed);
        }
        if s.advert_interval != self.settings.advert_interval
            || s.preempt != self.settings.preempt
            || s.vrid != self.settings.vrid
            || s.port != self.settings.port
            || s.transport != self.settings.transport
        {
            tracing::warn!(
                "election timing, vrid, port or transport changed: takes effect at the next restart"
            );
        }
        let keep_timing = (
            self.settings.advert_interval,
            self.settings.preempt,
            self.settings.vrid,
            self.settings.port,
            self.settings.transport,
        );
        self.settings = s;
        (
            self.settings.advert_interval,
            self.settings.preempt,
            self.settings.vrid,
            self.settings.port,
            self.settings.transport,
        ) = keep_timing;
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a, _| self.settings.peers.iter().any(|p| p.addr == *a));
        *self
            .shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(self.settings.peers.clone());
    }

    /// SIGTERM: resign with priority 0 and, if master, keep the Reserved IP
    /// until a successor is heard (bounded), so clients never hit a gap.
    async fn shutdown(&mut self) {
        let was_master = self.election.role() == Role::Master;
        let a = self.election.step(self.now(), Input::Shutdown);
        for act in a.as_slice() {
            if let Action::SendAdvert { priority, .. } = *act {
                self.send(priority, SenderRole::Master).await;
            }
        }
        self.shared.set_role(Role::Init);
        self.metrics.set_role(Role::Init);
        tracing::info!(was_master, "election resigned");
        if was_master && !self.settings.peers.is_empty() {
            self.await_successor().await;
        }
        self.want.send_replace(Want::Release);
        // Give the driver task a bounded moment to release.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.shared.held() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

impl Shell {
    /// After resigning: keeps the Reserved IP (and the caller keeps serving)
    /// until a successor is master *and holds the address* (its adverts say
    /// so once its claim is done: address assigned and first gratuitous ARP
    /// out, or the DigitalOcean action completed), then lets go. Letting go
    /// on the successor's first advert alone lost a request when its claim
    /// was slower than the fixed pause that used to follow. `vrrp3` adverts
    /// cannot say it: there the old pause of three intervals remains.
    /// Bounded by `HANDOVER_WAIT` (and the caller's own limit).
    async fn await_successor(&mut self) {
        let limit = (self.settings.advert_interval * 10).max(HANDOVER_WAIT_MIN);
        let start = Instant::now();
        let mut successor: Option<IpAddr> = None;
        while start.elapsed() < limit {
            let left = limit - start.elapsed();
            let heard = match tokio::time::timeout(left, self.transport.recv()).await {
                Ok(Received::Heard(a)) => a,
                Ok(Received::Dropped { .. }) => continue,
                Ok(Received::Failed(_)) | Err(_) => break,
            };
            if heard.role != SenderRole::Master || heard.priority == 0 {
                continue;
            }
            if successor.is_none() {
                successor = Some(heard.sender);
                tracing::info!(successor = %heard.sender, ms = start.elapsed().as_millis() as u64, "successor is master");
            }
            match heard.holds {
                Some(true) => {
                    tracing::info!(
                        successor = %heard.sender,
                        ms = start.elapsed().as_millis() as u64,
                        "successor holds the reserved ip; letting go"
                    );
                    // Its gratuitous ARP is out; a moment for it to land.
                    tokio::time::sleep(HANDOVER_SETTLE_MIN).await;
                    return;
                }
                Some(false) => {}
                None => {
                    let settle = (self.settings.advert_interval * 3).max(HANDOVER_SETTLE_MIN);
                    tokio::time::sleep(settle).await;
                    return;
                }
            }
        }
        tracing::warn!(
            successor = ?successor,
            waited_ms = start.elapsed().as_millis() as u64,
            "no successor said it holds the reserved ip in time; letting go anyway"
        );
    }
}

/// What the driver task works with, apart from `want`.
struct DriverCtx {
    driver: Driver,
    shared: Arc<Shared>,
    metrics: Metrics,
    wake: Arc<Wakeups>,
    /// A member heard within this window is reachable on the election channel.
    heard_window: Duration,
}

/// The driver task ends when the election loop is gone.
struct Gone;

/// Makes the Reserved IP follow `want`: claims and reconciles while
/// master, releases otherwise; keeps the driver warm while not master. Every claim and probe is abandoned as soon as `want`
/// changes, so a demoted master never finishes a claim its successor would
/// have to undo.
async fn driver_task(ctx: DriverCtx, mut want: watch::Receiver<Want>) {
    warm(&ctx.driver, "start").await;
    loop {
        let w = *want.borrow_and_update();
        let next = match w {
            Want::Idle => idle(&ctx, &mut want).await,
            Want::Release => {
                release(&ctx).await;
                idle(&ctx, &mut want).await
            }
            Want::Hold => hold(&ctx, &mut want).await,
        };
        if next.is_err() {
            return;
        }
    }
}

async fn release(ctx: &DriverCtx) {
    match ctx.driver.release().await {
        Ok(_) => tracing::debug!(driver = ctx.driver.name(), "reserved ip released"),
        Err(e) => {
            tracing::warn!(driver = ctx.driver.name(), error = %e, "reserved ip release failed")
        }
    }
    ctx.shared.held.store(false, Ordering::Relaxed);
}

/// Backup, fault or init: wait for a new wish, reading the holder every
/// `WARM_EVERY` to keep the API connection warm.
async fn idle(ctx: &DriverCtx, want: &mut watch::Receiver<Want>) -> Result<(), Gone> {
    loop {
        tokio::select! {
            r = want.changed() => return r.map_err(|_| Gone),
            _ = tokio::time::sleep(jittered(WARM_EVERY)) => warm(&ctx.driver, "keep-warm").await,
        }
    }
}

/// Reads the holder once (DigitalOcean: discovers the droplet id, opens the
/// pooled TLS connection, checks the token); a failure is logged, not fatal.
async fn warm(driver: &Driver, why: &'static str) {
    if !matches!(driver, Driver::DigitalOcean(_)) {
        return;
    }
    match driver.holder().await {
        Ok(h) if why == "start" => {
            tracing::info!(driver = driver.name(), holder = %h, "reserved ip driver ready")
        }
        Ok(h) => {
            tracing::debug!(driver = driver.name(), holder = %h, why, "reserved ip holder read")
        }
        Err(e) => {
            tracing::warn!(driver = driver.name(), error = %e, why, "cannot read the reserved ip's holder")
        }
    }
}

/// Runs `f` unless `want` changes first (`None` then, the future dropped).
async fn unless_changed<T>(
    want: &mut watch::Receiver<Want>,
    f: impl std::future::Future<Output = T>,
) -> Result<Option<T>, Gone> {
    tokio::select! {
        v = f => Ok(Some(v)),
        r = want.changed() => r.map(|_| None).map_err(|_| Gone),
    }
}

/// Master: claim, then reconcile every `RECONCILE` until the wish changes.
async fn hold(ctx: &DriverCtx, want: &mut watch::Receiver<Want>) -> Result<(), Gone> {
    ctx.shared.set_stepped_back_from(None);
    let Some(mut claimed) = unless_changed(want, claim(ctx)).await? else {
        return Ok(());
    };
    let mut last_claim = Instant::now();
    // Split brain: the holder we stepped back from (we stay master).
    let mut yielded_to: Option<IpAddr> = None;
    loop {
        tokio::select! {
            r = want.changed() => return r.map_err(|_| Gone),
            _ = tokio::time::sleep(RECONCILE) => {}
            _ = ctx.wake.reassert.notified() => {
                if last_claim.elapsed() >= REASSERT_MIN_GAP {
                    if yielded_to.take().is_some() {
                        tracing::info!("the split brain is over (a lower-priority master is heard); claiming the reserved ip");
                    } else {
                        tracing::info!("a lower-priority master is heard: re-announcing the reserved ip");
                    }
                    ctx.shared.set_stepped_back_from(None);
                    let Some(ok) = unless_changed(want, claim(ctx)).await? else { return Ok(()) };
                    claimed |= ok;
                    last_claim = Instant::now();
                }
                continue;
            }
        }
        let Some(holder) = unless_changed(want, ctx.driver.holder()).await? else {
            return Ok(());
        };
        let Some(o) = observe(ctx, holder, claimed) else {
            continue;
        };
        let verdict = reconcile::decide(&o);
        if !matches!(verdict, Verdict::Yield { .. }) {
            ctx.shared.set_stepped_back_from(None);
        }
        match verdict {
            Verdict::Fine => {
                if o.seen == reconcile::Seen::Me {
                    ctx.shared.held.store(true, Ordering::Relaxed);
                    if yielded_to.take().is_some() {
                        tracing::info!(
                            "the reserved ip points here again; the split brain is over"
                        );
                    }
                }
            }
            Verdict::Claim => {
                if yielded_to.take().is_some() {
                    tracing::info!(holder = ?o.seen, "the split brain is over (the holder is gone or heard again); claiming the reserved ip");
                } else {
                    tracing::warn!(holder = ?o.seen, "reconcile: the reserved ip does not point here; claiming it again");
                }
                let Some(ok) = unless_changed(want, claim(ctx)).await? else {
                    return Ok(());
                };
                claimed |= ok;
                last_claim = Instant::now();
            }
            Verdict::Yield { holder } => {
                if yielded_to != Some(holder) {
                    tracing::warn!(%holder, seen = ?o.seen, "reconcile: the reserved ip is on a running member we cannot hear (split brain); stepping back instead of re-claiming, and staying master for the nodes that hear us");
                }
                yielded_to = Some(holder);
                ctx.shared.set_stepped_back_from(yielded_to);
                ctx.shared.held.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// The driver's answer, resolved against the members and the peer table;
/// `None` (logged) when the holder cannot be read.
fn observe(
    ctx: &DriverCtx,
    holder: Result<Holder, dynia_vrrp::driver::DriverError>,
    claimed: bool,
) -> Option<reconcile::Observation> {
    let seen = match holder {
        Err(e) => {
            tracing::warn!(error = %e, "reconcile: cannot read the reserved ip's holder");
            return None;
        }
        Ok(Holder::Me) => reconcile::Seen::Me,
        Ok(Holder::Nobody) => reconcile::Seen::Nobody,
        Ok(Holder::Unknown) => reconcile::Seen::Unknown,
        Ok(Holder::Other {
            droplet_id,
            running,
        }) => match ctx
            .shared
            .members()
            .iter()
            .find(|p| p.droplet_id == Some(droplet_id))
        {
            None => reconcile::Seen::Outsider,
            Some(p) => reconcile::Seen::Member {
                addr: p.addr,
                heard_ago: ctx.shared.seen(p.addr).map(|s| s.at.elapsed()),
                running,
            },
        },
    };
    Some(reconcile::Observation {
        seen,
        heard_window: ctx.heard_window,
        claimed_since_master: claimed,
    })
}

/// One claim through the driver (bounded by the driver's retry policy);
/// true when it succeeded.
async fn claim(ctx: &DriverCtx) -> bool {
    let started = Instant::now();
    match ctx.driver.claim().await {
        Ok(outcome) => {
            ctx.metrics.claims.with_label_values(&["success"]).inc();
            ctx.shared.held.store(true, Ordering::Relaxed);
            ctx.wake.claimed.notify_one();
            let action_id = match outcome {
                ClaimOutcome::Assigned { action_id } => Some(action_id),
                _ => None,
            };
            tracing::info!(
                driver = ctx.driver.name(),
                ?action_id,
                ms = started.elapsed().as_millis() as u64,
                "reserved ip claimed"
            );
            true
        }
        Err(e) => {
            ctx.metrics.claims.with_label_values(&["failure"]).inc();
            tracing::error!(driver = ctx.driver.name(), error = %e, "reserved ip claim failed; reconcile will retry");
            false
        }
    }
}

/// `d` ± 10 %, so a cluster's nodes do not call the API in step.
fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

/// Runs the hook for `role` (if any) with `<state> <address> <priority>`, bounded.
fn run_hook(s: &Settings, role: Role, priority: u8) {
    let path = match role {
        Role::Master => s.hooks.on_master.clone(),
        Role::Backup => s.hooks.on_backup.clone(),
        Role::Fault => s.hooks.on_fault.clone(),
        Role::Init => None,
    };
    let Some(path) = path else { return };
    let address = s.reserved_ip.map(|a| a.to_string()).unwrap_or_default();
    let state = role.as_str().to_string();
    tokio::spawn(async move {
        let child = tokio::process::Command::new(&path)
            .arg(&state)
            .arg(&address)
            .arg(priority.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Err(e) => tracing::warn!(hook = %path.display(), error = %e, "hook could not start"),
            Ok(mut c) => match tokio::time::timeout(HOOK_TIMEOUT, c.wait()).await {
                Ok(Ok(status)) if status.success() => {
                    tracing::info!(hook = %path.display(), state, "hook ran")
                }
                Ok(Ok(status)) => tracing::warn!(hook = %path.display(), %status, "hook failed"),
                Ok(Err(e)) => tracing::warn!(hook = %path.display(), error = %e, "hook failed"),
                Err(_) => {
                    let _ = c.kill().await;
                    tracing::warn!(hook = %path.display(), timeout = ?HOOK_TIMEOUT, "hook timed out and was killed");
                }
            },
        }
    });
}
