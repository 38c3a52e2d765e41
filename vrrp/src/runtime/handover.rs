//! SIGTERM: resign with priority 0 and, if master, keep the Reserved IP
//! until a successor says it holds it (bounded), so clients never hit a
//! gap. See `docs/election.md`, "Shutdown and handover".

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::shell::Shell;
use crate::advert::SenderRole;
use crate::election::{Action, Input, Role};
use crate::follower::Want;
use crate::transport::Received;

/// A leaving master keeps the Reserved IP this long after its successor says
/// it holds it (its gratuitous ARP is out: a moment for it to land).
const HANDOVER_SETTLE_MIN: Duration = Duration::from_millis(200);
/// After resigning, how long a leaving master waits at least for a successor
/// that holds the Reserved IP (10 advert intervals if longer).
const HANDOVER_WAIT_MIN: Duration = Duration::from_secs(2);
/// How long the follower gets to release.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

impl Shell {
    pub(super) async fn shutdown(&mut self) {
        let was_master = self.election.role() == Role::Master;
        let a = self.election.step(self.now(), Input::Shutdown);
        for act in a.as_slice() {
            if let Action::SendAdvert { priority, .. } = *act {
                self.send(priority, SenderRole::Master).await;
            }
        }
        self.view.set_role(Role::Init);
        self.metrics.set_role(Role::Init);
        self.metrics.priority.set(0);
        tracing::info!(was_master, "election resigned");
        if was_master && !self.settings.peers.is_empty() {
            self.await_successor().await;
        }
        self.want.send_replace(Want::Release);
        // Give the follower a bounded moment to release.
        let _ = tokio::time::timeout(RELEASE_WAIT, async {
            while self.view.held() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// After resigning: keeps the Reserved IP (and the caller keeps serving)
    /// until a successor is master *and holds the address* (its adverts say
    /// so once its claim is done), then lets go. `vrrp3` adverts cannot say
    /// it: there a pause of three intervals. Bounded by `HANDOVER_WAIT_MIN`
    /// or 10 intervals (and the caller's own limit).
    async fn await_successor(&mut self) {
        let limit = (self.settings.advert_interval * 10).max(HANDOVER_WAIT_MIN);
        let start = Instant::now();
        let ms = |start: Instant| start.elapsed().as_millis() as u64;
        let mut successor: Option<IpAddr> = None;
        while start.elapsed() < limit {
            let left = limit - start.elapsed();
            let heard = match tokio::time::timeout(left, self.wire.recv()).await {
                Ok(Received::Heard(a)) => a,
                Ok(Received::Dropped { .. }) => continue,
                Ok(Received::Failed(_)) | Err(_) => break,
            };
            if heard.role != SenderRole::Master || heard.priority == 0 {
                continue;
            }
            if successor.is_none() {
                successor = Some(heard.sender);
                tracing::info!(successor = %heard.sender, ms = ms(start), "successor is master");
            }
            match heard.holds {
                Some(true) => {
                    tracing::info!(successor = %heard.sender, ms = ms(start), "successor holds the reserved ip; letting go");
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
            waited_ms = ms(start),
            "no successor said it holds the reserved ip in time; letting go anyway"
        );
    }
}
