//! The election loop on its thread: adverts in and out, timers, tracking,
//! heartbeats, commands; transitions set the follower's wish and run hooks.
//! See `docs/election.md`, "The election thread".

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::follow::{self, Wakeups};
use super::{Command, ElectionSettings, ElectionView, OnLiveness, PeerSeen, ProxyLink};
use crate::advert::SenderRole;
use crate::driver::Driver;
use crate::election::{AdvertIn, Election, Input, Millis, Role};
use crate::follower::{self, Want};
use crate::liveness::Liveness;
use crate::metrics::ElectionMetrics;
use crate::transport::{AdvertHeard, Received, Wire};

pub(super) struct Shell {
    pub(super) settings: ElectionSettings,
    pub(super) election: Election,
    pub(super) wire: Wire,
    pub(super) driver: Driver,
    pub(super) view: Arc<ElectionView>,
    pub(super) metrics: ElectionMetrics,
    pub(super) started: Instant,
    pub(super) want: watch::Sender<Want>,
    /// To and from the follower task (see [`Wakeups`]).
    pub(super) wake: Arc<Wakeups>,
    /// While backup, the master last heard and when: the gap to its next
    /// advert is observed in `dynia_election_advert_gap_seconds`.
    pub(super) last_master_advert: Option<(IpAddr, Instant)>,
    /// Every member's liveness (`dynia` transport: every member sends).
    pub(super) liveness: Liveness,
    pub(super) on_liveness: OnLiveness,
}

impl Shell {
    pub(super) fn new(
        settings: ElectionSettings,
        election: Election,
        wire: Wire,
        driver: Driver,
        view: Arc<ElectionView>,
        metrics: ElectionMetrics,
    ) -> Shell {
        let (want, _) = watch::channel(Want::Idle);
        Shell {
            settings,
            election,
            wire,
            driver,
            view,
            metrics,
            started: Instant::now(),
            want,
            wake: Arc::new(Wakeups::default()),
            last_master_advert: None,
            liveness: Liveness::default(),
            on_liveness: Box::new(|_, _| {}),
        }
    }

    pub(super) fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    fn heard_window(&self) -> Duration {
        let mdi = Duration::from_millis(self.election.master_down_interval_ms());
        follower::heard_window(mdi, self.wire.heartbeats(), self.settings.advert_interval)
    }

    fn start_follower(&self) {
        tokio::spawn(follow::follow(
            follow::FollowCtx {
                driver: self.driver.clone(),
                view: self.view.clone(),
                metrics: self.metrics.clone(),
                wake: self.wake.clone(),
                heard_window: self.heard_window(),
                probe: self
                    .settings
                    .reserved_ip
                    .filter(|_| self.settings.probe_port != 0)
                    .map(|ip| std::net::SocketAddr::new(ip, self.settings.probe_port)),
                started: self.started,
            },
            self.want.subscribe(),
        ));
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, proxy: ProxyLink) {
        let ProxyLink {
            can_serve,
            on_liveness,
        } = proxy;
        self.on_liveness = on_liveness;
        self.start_follower();
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
        let track_every = self
            .settings
            .advert_interval
            .min(Duration::from_millis(200));
        let mut track = tokio::time::interval(track_every);
        track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.heartbeat_every());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep_for = self.next_wake();
            tokio::select! {
                r = self.wire.recv() => self.received(r).await,
                _ = tokio::time::sleep(sleep_for) => {
                    let a = self.election.step(self.now(), Input::Tick);
                    self.apply(a.as_slice()).await;
                    self.liveness_tick();
                }
                _ = track.tick() => {
                    self.view.beat();
                    let now_serving = can_serve();
                    if now_serving != serving {
                        serving = now_serving;
                        tracing::info!(can_serve = serving, "proxy tracking changed");
                        let a = self.election.step(self.now(), Input::Tracking { can_serve: serving });
                        self.apply(a.as_slice()).await;
                    }
                }
                _ = heartbeat.tick() => self.heartbeat().await,
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
                    None => return self.shutdown().await,
                },
            }
        }
    }

    async fn received(&mut self, r: Received) {
        match r {
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
        }
    }

    async fn heartbeat(&mut self) {
        let role = self.election.role();
        if role != Role::Master && self.wire.heartbeats() {
            let r = if role == Role::Fault {
                SenderRole::Fault
            } else {
                SenderRole::Backup
            };
            self.send(self.election.priority().get(), r).await;
        }
    }

    async fn receive(&mut self, h: AdvertHeard) {
        self.metrics.received.inc();
        let at = Instant::now();
        let seen = PeerSeen {
            role: h.role,
            priority: h.priority,
            generation: h.generation,
            config_hash: h.config_hash,
            at,
        };
        self.view.record(h.sender, seen);
        self.peer_heard(&h).await;
        if h.role != SenderRole::Master {
            return;
        }
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
        if follower::lower_master_heard(&self.election, h.priority) {
            self.wake.reassert.notify_one();
        }
    }

    pub(super) async fn send(&mut self, priority: u8, role: SenderRole) {
        let holds = self.view.held();
        if self.wire.send(&self.settings, priority, role, holds).await {
            self.metrics.sent.inc();
        }
    }
}
