//! Whether the election hears a member: a member the election has lost is
//! skipped by every pool at once, before any health check says so, and taken
//! back only when it is heard again *and* a check passes. See docs/proxy.md,
//! "Members the election lost".

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

const HEARD: u8 = 0;
const LOST: u8 = 1;
/// Heard again; waits for a passing health check.
const RETURNING: u8 = 2;

/// One backend's view of its member's liveness (an atomic: the data path
/// reads it per pick).
#[derive(Debug, Default)]
pub struct MemberLiveness(AtomicU8, Notify);

impl MemberLiveness {
    /// Whether requests may go to the member (it is not lost or returning).
    pub fn routable(&self) -> bool {
        self.0.load(Ordering::Relaxed) == HEARD
    }

    /// `lost`, `returning` or `heard`, for the status views.
    pub fn as_str(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            LOST => "lost",
            RETURNING => "returning",
            _ => "heard",
        }
    }

    /// The election lost the member (`true`) or hears it again (`false`).
    /// Returns whether anything changed.
    pub fn set_lost(&self, lost: bool) -> bool {
        if lost {
            let changed = self.0.swap(LOST, Ordering::Relaxed) != LOST;
            if changed {
                self.1.notify_waiters();
            }
            changed
        } else {
            self.0
                .compare_exchange(LOST, RETURNING, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        }
    }

    /// Completes when the member is lost after this call (a request waiting
    /// for its response head may then go to another member).
    pub fn lost(&self) -> Notified<'_> {
        self.1.notified()
    }

    /// A health check passed: a returning member is routable again.
    pub fn check_passed(&self) {
        let _ = self
            .0
            .compare_exchange(RETURNING, HEARD, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_then_heard_waits_for_a_passing_check() {
        let l = MemberLiveness::default();
        assert!(l.routable());
        l.check_passed();
        assert!(l.routable(), "a check alone changes nothing");
        assert!(l.set_lost(true));
        assert!(!l.set_lost(true), "lost twice is one change");
        assert!(!l.routable());
        l.check_passed();
        assert!(!l.routable(), "a check does not bring back a lost member");
        assert!(l.set_lost(false));
        assert_eq!(l.as_str(), "returning");
        assert!(!l.routable());
        l.check_passed();
        assert!(l.routable());
        assert!(!l.set_lost(false), "heard while heard is no change");
    }

    #[tokio::test]
    async fn waiters_hear_of_the_loss() {
        let l = MemberLiveness::default();
        let w = l.lost();
        l.set_lost(true);
        tokio::time::timeout(std::time::Duration::from_secs(5), w)
            .await
            .expect("woken by the loss");
    }

    #[test]
    fn lost_while_returning_is_lost() {
        let l = MemberLiveness::default();
        l.set_lost(true);
        l.set_lost(false);
        assert!(l.set_lost(true));
        assert_eq!(l.as_str(), "lost");
    }
}
