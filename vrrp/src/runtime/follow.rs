//! The follower's async shell: runs on the election thread, executes what
//! the pure [`Follower`] asks with the real driver (one call at a time,
//! dropped when it says abandon) and feeds the results back. See
//! `docs/election.md`, "The Reserved-IP follower".

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::ElectionView;
use crate::advert::SenderRole;
use crate::driver::{ClaimOutcome, Driver, DriverError, Holder};
use crate::election::Millis;
use crate::follower::{self, Follower, FollowerConfig, FollowerInput, FollowerOutput, Want};
use crate::metrics::ElectionMetrics;

/// Wake-ups between the election loop and the follower task.
#[derive(Default)]
pub(super) struct Wakeups {
    /// To the follower: a master heard a lower-priority master.
    pub reassert: Notify,
    /// From the follower: a claim succeeded; a master sends an advert now.
    pub claimed: Notify,
}

pub(super) struct FollowCtx {
    pub driver: Driver,
    pub view: Arc<ElectionView>,
    pub metrics: ElectionMetrics,
    pub wake: Arc<Wakeups>,
    pub heard_window: Duration,
    /// Where a yielded master probes the holder's service: the Reserved IP
    /// and this node's first listener port (`None`: no probes).
    pub probe: Option<SocketAddr>,
    /// The election's clock origin.
    pub started: Instant,
}

/// One probe's connect timeout: the holder serves, or it does not.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A finished driver call.
enum Done {
    Claim(Result<ClaimOutcome, DriverError>, Instant),
    Holder(Result<Holder, DriverError>),
    Warmed,
    Released,
    Probed(bool),
    Late(Result<Holder, DriverError>),
    Handed(Result<ClaimOutcome, DriverError>),
}

type Call = Pin<Box<dyn Future<Output = Done> + Send>>;

enum Event {
    Want,
    Tick,
    Reassert,
    Done(Done),
}

/// Runs until the election loop (the `want` sender) is gone.
pub(super) async fn follow(ctx: FollowCtx, mut want: watch::Receiver<Want>) {
    let mut cfg = FollowerConfig::new(ctx.heard_window);
    cfg.probe = ctx.probe.is_some();
    let mut f = Follower::new(cfg, rand::random());
    let mut call: Option<Call> = None;
    let outs = f.start();
    ctx.exec(&mut call, outs);
    // tokio's clock (the same as std's, but a test may pause it).
    let origin = tokio::time::Instant::from_std(ctx.started);
    loop {
        let wake = f.next_wake().map(|t| origin + Duration::from_millis(t.0));
        let event = tokio::select! {
            r = want.changed() => match r {
                Ok(()) => Event::Want,
                Err(_) => return,
            },
            _ = sleep_until(wake) => Event::Tick,
            _ = ctx.wake.reassert.notified() => Event::Reassert,
            d = in_flight(&mut call) => Event::Done(d),
        };
        let input = match event {
            Event::Want => FollowerInput::Want(*want.borrow_and_update()),
            Event::Tick => FollowerInput::Tick,
            Event::Reassert => FollowerInput::LowerMasterHeard,
            Event::Done(d) => {
                call = None;
                ctx.finished(d)
            }
        };
        let now = Millis(origin.elapsed().as_millis() as u64);
        let outs = f.step(now, input);
        ctx.exec(&mut call, outs);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn in_flight(call: &mut Option<Call>) -> Done {
    match call.as_mut() {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

impl FollowCtx {
    fn exec(&self, call: &mut Option<Call>, outs: Vec<FollowerOutput>) {
        for o in outs {
            let d = self.driver.clone();
            match o {
                FollowerOutput::Claim => {
                    *call = Some(Box::pin(async move {
                        let t = Instant::now();
                        Done::Claim(d.claim().await, t)
                    }))
                }
                FollowerOutput::ReadHolder => {
                    *call = Some(Box::pin(async move { Done::Holder(d.check().await) }))
                }
                FollowerOutput::Warm { first } => {
                    *call = Some(Box::pin(async move {
                        warm(&d, first).await;
                        Done::Warmed
                    }))
                }
                FollowerOutput::Release => {
                    *call = Some(Box::pin(async move {
                        release(&d).await;
                        Done::Released
                    }))
                }
                FollowerOutput::Abandon => *call = None,
                FollowerOutput::SetHeld(h) => {
                    self.view.set_held(h);
                    self.metrics.held.set(i64::from(h));
                }
                FollowerOutput::SteppedBack(h) => self.view.set_stepped_back_from(h),
                FollowerOutput::Announce => self.wake.claimed.notify_one(),
                FollowerOutput::ProbeHolder => {
                    let at = self.probe;
                    *call = Some(Box::pin(async move {
                        Done::Probed(probe(at, PROBE_TIMEOUT).await)
                    }))
                }
                FollowerOutput::LateRead => {
                    *call = Some(Box::pin(async move { Done::Late(d.holder().await) }))
                }
                FollowerOutput::HandTo { member } => *call = Some(self.hand_to(member)),
            }
        }
    }

    /// Logs and counts a finished call; what the follower is told.
    fn finished(&self, d: Done) -> FollowerInput {
        let name = self.driver.name();
        match d {
            Done::Claim(Ok(outcome), started) => {
                self.metrics.claims.with_label_values(&["success"]).inc();
                let action_id = match outcome {
                    ClaimOutcome::Assigned { action_id } => Some(action_id),
                    _ => None,
                };
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(driver = name, ?action_id, ms, "reserved ip claimed");
                FollowerInput::Claimed { ok: true }
            }
            Done::Claim(Err(e), _) => {
                self.metrics.claims.with_label_values(&["failure"]).inc();
                tracing::warn!(driver = name, error = %e, "reserved ip claim failed; reconcile will retry");
                FollowerInput::Claimed { ok: false }
            }
            Done::Holder(Err(e)) => {
                tracing::warn!(error = %e, "reconcile: cannot read the reserved ip's holder");
                FollowerInput::HolderRead(None)
            }
            Done::Holder(Ok(h)) => FollowerInput::HolderRead(Some(self.resolve(h))),
            Done::Warmed => FollowerInput::Warmed,
            Done::Released => FollowerInput::Released,
            Done::Probed(serving) => {
                tracing::info!(serving, at = ?self.probe, "probed the reserved ip's holder");
                FollowerInput::Probed { serving }
            }
            Done::Late(r) => self.late_read(r),
            Done::Handed(r) => {
                if let Err(e) = &r {
                    tracing::warn!(driver = name, error = %e, "handing the reserved ip to the master failed; the next read after the step-down retries");
                }
                FollowerInput::HandedTo { ok: r.is_ok() }
            }
        }
    }

    fn resolve(&self, h: Holder) -> crate::reconcile::HolderSeen {
        let members = self.view.members();
        follower::resolve(
            h,
            |id| {
                members
                    .iter()
                    .find(|p| p.droplet_id == Some(id))
                    .map(|p| p.addr)
            },
            |addr| self.view.seen(addr).map(|s| s.at.elapsed()),
        )
    }

    fn late_read(&self, r: Result<Holder, DriverError>) -> FollowerInput {
        let seen = match r {
            Ok(h) => Some(self.resolve(h)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the reserved ip's holder after the step-down");
                None
            }
        };
        FollowerInput::LateRead {
            seen,
            master: self.master_heard(),
        }
    }

    /// The member most recently heard as master, within the heard window.
    fn master_heard(&self) -> Option<IpAddr> {
        self.view
            .members()
            .iter()
            .filter_map(|p| self.view.seen(p.addr).map(|s| (p.addr, s)))
            .filter(|(_, s)| s.role == SenderRole::Master && s.at.elapsed() <= self.heard_window)
            .max_by_key(|(_, s)| s.at)
            .map(|(addr, _)| addr)
    }

    /// Assigns the Reserved IP to the member at `member` (its droplet id
    /// from the member list).
    fn hand_to(&self, member: IpAddr) -> Call {
        let d = self.driver.clone();
        let droplet = self
            .view
            .members()
            .iter()
            .find(|p| p.addr == member)
            .and_then(|p| p.droplet_id);
        Box::pin(async move {
            let Some(id) = droplet else {
                return Done::Handed(Err(DriverError::Config {
                    what: format!("member {member} has no droplet_id in the cluster document"),
                    hint: "set droplet_id for every member",
                }));
            };
            tracing::info!(%member, droplet_id = id, "handing the reserved ip to the master");
            Done::Handed(d.hand_to(id).await)
        })
    }
}

/// Whether the holder may be serving at `at`: only a refused connection
/// (the holder's kernel answers, nothing listens: its droplet runs, its
/// dynia does not) says it is not. A timeout, no route or any other error
/// says nothing about the holder (a filtered port, a Reserved IP this
/// network cannot reach), so it counts as serving, the safe answer that
/// keeps the yield; so does `None` (cannot probe).
pub(super) async fn probe(at: Option<SocketAddr>, timeout: Duration) -> bool {
    let Some(at) = at else { return true };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(at)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => false,
        Ok(Err(e)) => {
            tracing::debug!(%at, error = %e, "probe of the reserved ip says nothing");
            true
        }
        Ok(Ok(_)) | Err(_) => true,
    }
}

async fn release(driver: &Driver) {
    match driver.release().await {
        Ok(_) => tracing::debug!(driver = driver.name(), "reserved ip released"),
        Err(e) => {
            tracing::warn!(driver = driver.name(), error = %e, "reserved ip release failed")
        }
    }
}

/// Reads the holder once, one attempt (DigitalOcean: discovers the droplet
/// id, opens the pooled TLS connection, checks the token); a failure is
/// logged, not fatal. One attempt: a wish that arrives meanwhile waits for
/// it, so it must not sit out a `Retry-After`.
async fn warm(driver: &Driver, first: bool) {
    if !matches!(driver, Driver::DigitalOcean(_)) {
        return;
    }
    let why = if first { "start" } else { "keep-warm" };
    match driver.warm().await {
        Ok(h) if first => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_connects_or_says_nothing_serves() {
        // A local listener stands in for the holder behind the Reserved IP.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        assert!(probe(Some(at), PROBE_TIMEOUT).await);
        // The holder's dynia is dead: the port is closed.
        drop(l);
        assert!(!probe(Some(at), PROBE_TIMEOUT).await);
        // Nothing to probe: the safe answer (keep yielding).
        assert!(probe(None, PROBE_TIMEOUT).await);
        // No route to the Reserved IP (a documentation address): no evidence.
        let nowhere: SocketAddr = "203.0.113.20:80".parse().unwrap();
        assert!(probe(Some(nowhere), Duration::from_millis(300)).await);
    }
    /// Waits (simulated time) until `cond`, at most `limit`.
    async fn until(limit: Duration, cond: impl Fn() -> bool) -> Duration {
        let t0 = tokio::time::Instant::now();
        while !cond() {
            assert!(t0.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t0.elapsed()
    }

    /// The shell with the real driver against the simulator, and a local
    /// listener standing in for the holder's service behind the Reserved IP:
    /// a yielded master keeps yielding while it serves, and claims after
    /// three probes once it does not.
    #[tokio::test(start_paused = true)]
    async fn a_yielded_master_claims_once_the_holder_does_not_serve() {
        use dynia_testkit::dosim::DoSim;
        const TOKEN: &str = "dop_v1_5ecret70ken0123456789abcdef";
        let (me, other) = (3_164_444, 3_164_555);
        let rip: IpAddr = "203.0.113.10".parse().unwrap();
        let sim = DoSim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
            .await
            .unwrap();
        sim.add_droplet(me, "10.10.0.11".parse().unwrap());
        sim.add_droplet(other, "10.10.0.12".parse().unwrap());
        sim.add_reserved_ip(rip, None);
        sim.set_action_delay(Duration::from_millis(30));
        let mut c = crate::driver::DigitalOceanConfig::new(rip, crate::driver::Secret::new(TOKEN));
        c.api_url = sim.url();
        c.droplet_id = Some(me);
        c.metadata_url = "http://127.0.0.1:9".into();
        let driver = Driver::from(crate::driver::DigitalOcean::new(c).await.unwrap());
        let holder: IpAddr = "10.10.0.12".parse().unwrap();
        let peer = crate::settings::ElectionPeer {
            id: "b".into(),
            addr: holder,
            droplet_id: Some(other),
        };
        let view = Arc::new(ElectionView::new(100, vec![peer]));
        view.set_role(crate::election::Role::Master);
        let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let registry = prometheus::Registry::new();
        let ctx = FollowCtx {
            driver,
            view: view.clone(),
            metrics: ElectionMetrics::new(&registry, crate::settings::TransportKind::Dynia)
                .unwrap(),
            wake: Arc::new(Wakeups::default()),
            heard_window: Duration::from_secs(3),
            probe: Some(service.local_addr().unwrap()),
            started: Instant::now(),
        };
        let (want, rx) = watch::channel(Want::Idle);
        tokio::spawn(follow(ctx, rx));
        want.send(Want::Hold).unwrap();
        let limit = Duration::from_secs(60);
        until(limit, || sim.holder(rip) == Some(me) && view.held()).await;
        // The other side of a split takes it (a master we cannot hear).
        sim.set_holder(rip, Some(other));
        until(limit, || view.stepped_back_from() == Some(holder)).await;
        // It serves: a real split; no claim for a minute.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(sim.holder(rip), Some(other));
        assert_eq!(view.stepped_back_from(), Some(holder));
        // Its dynia dies (droplet still running): three failed probes, one
        // reconcile period apart, then the claim.
        drop(service);
        let took = until(limit, || sim.holder(rip) == Some(me) && view.held()).await;
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert_eq!(view.stepped_back_from(), None);
    }
}
