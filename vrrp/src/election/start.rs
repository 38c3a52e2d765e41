//! The first master of a cluster that starts at once: the highest-priority
//! member that can serve, not whichever timer fires first. Backups hear each
//! other's heartbeats during the start window and leave the master-down
//! timer to a higher one (docs/election.md, "Start-up").

use std::net::IpAddr;

use super::{addr_greater, heartbeat_every_ms, Election, Millis, PeerIn};

/// How long after `Start` a backup defers to a higher member it hears but
/// has not heard as master: long enough for a slow start, short enough that
/// a higher member that never takes over costs little.
pub const START_WINDOW_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StartWindow {
    until: Option<Millis>,
    /// The highest member above us heard serving, and when.
    higher: Option<(IpAddr, u8, Millis)>,
}

impl Election {
    /// Opens the window; returns the first master-down delay: the usual one
    /// plus `start_grace`, so that every member is heard once first.
    pub(super) fn open_start_window(&mut self, now: Millis) -> u64 {
        self.start = StartWindow {
            until: Some(now.add_ms(START_WINDOW_MS)),
            higher: None,
        };
        let grace = u64::try_from(self.cfg.start_grace.as_millis()).unwrap_or(u64::MAX);
        self.master_down_interval_ms() + grace.min(super::MAX_HOLD_MS)
    }

    pub(super) fn on_peer_heard(&mut self, now: Millis, p: PeerIn) {
        if p.from == self.cfg.local_addr || !self.is_above_us(p.from, p.priority) {
            return;
        }
        let best = self.start.higher;
        if !p.serving {
            if best.is_some_and(|(a, _, _)| a == p.from) {
                self.start.higher = None;
            }
            return;
        }
        let replace = match best {
            None => true,
            Some((a, prio, _)) => a == p.from || p.priority > prio,
        };
        if replace {
            self.start.higher = Some((p.from, p.priority, now));
        }
    }

    /// At the master-down timer: whether to wait for a higher member instead.
    pub(super) fn defer_first_master(&self, now: Millis) -> bool {
        let in_window = self.start.until.is_some_and(|u| now < u);
        let fresh = u64::from(self.heartbeat_ms()) * 3;
        let higher = self
            .start
            .higher
            .is_some_and(|(_, _, at)| now.ms_since(at) <= fresh);
        in_window && self.heard.is_none() && higher
    }

    fn is_above_us(&self, from: IpAddr, priority: u8) -> bool {
        let local = self.priority.get();
        priority > local || (priority == local && addr_greater(from, self.cfg.local_addr))
    }

    fn heartbeat_ms(&self) -> u32 {
        heartbeat_every_ms(self.advert_interval_ms)
    }
}
