//! The simulator's call log: every request (API and metadata) with what it
//! asked for and what it got, bounded, for tests to assert on.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;

use super::{DoSim, World, MAX_CALLS};

/// Which server a logged call reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallTarget {
    /// The API (`/v2/…`).
    Api,
    /// The metadata service of this droplet.
    Metadata {
        /// The droplet whose metadata server answered.
        droplet_id: u64,
    },
}

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// API or metadata.
    pub service: CallTarget,
    /// `GET`, `POST`…
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// For action POSTs: the action type asked for (`assign`, `unassign`).
    pub action_type: Option<String>,
    /// For assigns: the droplet asked for.
    pub droplet_id: Option<u64>,
    /// The status answered.
    pub status: u16,
    /// Wall-clock time the answer was decided, on the simulator's clock
    /// (compare with `RateLimit-Reset`).
    pub at: SystemTime,
    /// tokio's monotonic time the answer was decided.
    pub instant: Instant,
}

impl Call {
    /// True for `POST /v2/reserved_ips/{ip}/actions`.
    pub fn is_action_post(&self) -> bool {
        self.method == "POST"
            && self.path.starts_with("/v2/reserved_ips/")
            && self.path.ends_with("/actions")
    }

    /// True for a GET of an action.
    pub fn is_action_poll(&self) -> bool {
        self.method == "GET"
            && (self.path.starts_with("/v2/actions/") || self.path.contains("/actions/"))
    }
}

impl World {
    /// Appends `call`, dropping the oldest beyond [`MAX_CALLS`].
    pub(super) fn log(&mut self, call: Call) {
        if self.calls.len() >= MAX_CALLS {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }
}

impl DoSim {
    /// Every call so far (API and metadata), oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.world().calls.iter().cloned().collect()
    }

    /// API calls only.
    pub fn api_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.service == CallTarget::Api)
            .collect()
    }

    /// TCP connections the API server has accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Forget the call log.
    pub fn clear_calls(&self) {
        self.shared.world().calls.clear();
    }
}
