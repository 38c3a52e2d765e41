//! Reserved-IP drivers: the one place that knows how "the Reserved IP points
//! here" is made true on a platform (`digitalocean`, `l2`, `none`). The
//! follower (`crate::follower`) decides *whether* to claim, release or read
//! the holder; a driver only does it, bounded. An enum rather than a trait
//! object: the set is closed and small, and `async fn` in it needs no extra
//! crate. Hooks run beside any driver (`crate::hooks`). See
//! `docs/election.md`, "Drivers".

pub mod digitalocean;
mod http;
pub mod l2;
mod secret;

pub use digitalocean::{
    DigitalOcean, DigitalOceanConfig, MetadataClient, PollPolicy, RetryPolicy, Timeouts,
    DEFAULT_API_URL, DEFAULT_METADATA_URL,
};
pub use l2::{L2Config, L2};
pub use secret::Secret;

use std::fmt;

/// Who the Reserved IP points at right now, as far as the provider says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// It points at this node.
    Me,
    /// It points at another droplet (possibly a live member we cannot hear).
    Other {
        /// The provider's id of the droplet that holds it.
        droplet_id: u64,
        /// The provider's view of that droplet: `Some(true)` while it runs
        /// (DigitalOcean `status` `active` or `new`), `Some(false)` when it
        /// is `off` or `archive`, `None` when the answer does not say. The
        /// split-brain rules use it as the witness of a live holder.
        running: Option<bool>,
    },
    /// It is assigned to nobody (`l2`: the address is not on this node's
    /// interface; that driver cannot see which other host has it).
    Nobody,
    /// The driver cannot tell (the `none` driver, or a driver without a query).
    Unknown,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Me => f.write_str("me"),
            Holder::Other {
                droplet_id,
                running,
            } => match running {
                Some(true) => write!(f, "droplet {droplet_id} (running)"),
                Some(false) => write!(f, "droplet {droplet_id} (not running)"),
                None => write!(f, "droplet {droplet_id}"),
            },
            Holder::Nobody => f.write_str("nobody"),
            Holder::Unknown => f.write_str("unknown"),
        }
    }
}

/// What a successful [`Driver::claim`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The provider moved the address here; `action_id` is the provider's action.
    Assigned {
        /// The provider's id for the completed action (0 when it has none).
        action_id: u64,
    },
    /// The address already pointed here; nothing was changed.
    AlreadyHeld,
    /// The driver has nothing to do (`none`).
    NotApplicable,
}

/// What a successful [`Driver::release`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The driver took an action (e.g. removed a local address).
    Released,
    /// Releasing means nothing for this driver: on DigitalOcean the next MASTER
    /// simply re-assigns; unassigning first would only widen the gap.
    NotApplicable,
}

/// The kind of a driver error: what the operator must fix, or what failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The node file's driver settings are unusable.
    Config,
    /// The provider answered, and the answer was a refusal or nonsense.
    Provider,
    /// The provider could not be reached in time (connect, DNS, timeout, reset).
    Network,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::Provider => "provider",
            ErrorKind::Network => "network",
        })
    }
}

/// A driver failure. Its `Display` says what failed, where (the endpoint, never
/// a full URL with credentials), and what to do next. It never contains the API
/// token: tokens are held in [`Secret`] and any text a server sends back is
/// scrubbed of the token before it is kept here.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver settings are unusable (e.g. a token with characters a header cannot carry).
    #[error("config error: {what}; {hint}")]
    Config {
        /// What is wrong.
        what: String,
        /// What to do next.
        hint: &'static str,
    },
    /// The provider refused, or answered something we cannot use.
    #[error("provider error: {endpoint}: {detail}; {hint}")]
    Provider {
        /// Method and path, e.g. `POST /v2/reserved_ips/203.0.113.10/actions`.
        endpoint: String,
        /// HTTP status of the last answer, if there was one.
        status: Option<u16>,
        /// What the provider said (bounded, token-scrubbed) or why we gave up.
        detail: String,
        /// What to do next.
        hint: &'static str,
    },
    /// The provider could not be reached.
    #[error("network error: {endpoint}: {detail}; {hint}")]
    Network {
        /// Method and path, or the service we tried to reach.
        endpoint: String,
        /// What went wrong (timeout, refused, DNS…).
        detail: String,
        /// What to do next.
        hint: &'static str,
    },
}

impl DriverError {
    /// The kind of this error (for metrics labels and exit codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            DriverError::Config { .. } => ErrorKind::Config,
            DriverError::Provider { .. } => ErrorKind::Provider,
            DriverError::Network { .. } => ErrorKind::Network,
        }
    }

    /// The HTTP status of the provider's last answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            DriverError::Provider { status, .. } => *status,
            _ => None,
        }
    }
}

/// The `none` driver: the election runs, nothing moves (hooks may still act).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoneDriver;

/// The Reserved-IP driver the election shell holds. Cheap to clone (shared client).
#[derive(Clone, Debug)]
pub enum Driver {
    /// Nothing to claim (`driver = "none"`).
    None(NoneDriver),
    /// DigitalOcean Reserved IP through the public API (`driver = "digitalocean"`).
    DigitalOcean(DigitalOcean),
    /// An address on a local interface plus gratuitous ARP (`driver = "l2"`).
    L2(L2),
}

impl Driver {
    /// The driver's name as written in the node file.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::None(_) => "none",
            Driver::DigitalOcean(_) => "digitalocean",
            Driver::L2(_) => "l2",
        }
    }

    /// Make the Reserved IP point here. Idempotent: claiming what is already
    /// ours succeeds without harm. Bounded in attempts and total time.
    pub async fn claim(&self) -> Result<ClaimOutcome, DriverError> {
        match self {
            Driver::None(_) => Ok(ClaimOutcome::NotApplicable),
            Driver::DigitalOcean(d) => d.claim().await,
            Driver::L2(d) => d.claim().await,
        }
    }

    /// Make the Reserved IP point at another member's machine (`droplet_id`):
    /// a late claim landed here after this node stepped down, and the master
    /// cannot hear it (`vrrp3`). Same bounds as [`Driver::claim`]; only
    /// DigitalOcean can (`l2` and `none` have nothing to hand).
    pub async fn hand_to(&self, droplet_id: u64) -> Result<ClaimOutcome, DriverError> {
        match self {
            Driver::DigitalOcean(d) => d.hand_to(droplet_id).await,
            _ => Ok(ClaimOutcome::NotApplicable),
        }
    }

    /// Undo a claim where that means something for the driver.
    pub async fn release(&self) -> Result<ReleaseOutcome, DriverError> {
        match self {
            Driver::None(_) => Ok(ReleaseOutcome::NotApplicable),
            Driver::DigitalOcean(d) => d.release().await,
            Driver::L2(d) => d.release().await,
        }
    }

    /// Who the Reserved IP points at now, the cheapest way the driver can
    /// tell (the MASTER's periodic reconcile). DigitalOcean: the droplet's
    /// metadata service first, the API when it says "not here" or cannot
    /// answer, and the API every `verify_every` ([`DigitalOcean::check`]).
    pub async fn check(&self) -> Result<Holder, DriverError> {
        match self {
            Driver::DigitalOcean(d) => d.check().await,
            _ => self.holder().await,
        }
    }

    /// One attempt at [`Driver::holder`], no retry and no wait (start-up
    /// and keep-warm reads, which a role change waits for).
    pub async fn warm(&self) -> Result<Holder, DriverError> {
        match self {
            Driver::DigitalOcean(d) => d.warm().await,
            _ => self.holder().await,
        }
    }

    /// Who the Reserved IP points at now, from the provider's API itself,
    /// with bounded retries.
    pub async fn holder(&self) -> Result<Holder, DriverError> {
        match self {
            Driver::None(_) => Ok(Holder::Unknown),
            Driver::DigitalOcean(d) => d.holder().await,
            Driver::L2(d) => d.holder().await,
        }
    }
}

impl From<DigitalOcean> for Driver {
    fn from(d: DigitalOcean) -> Self {
        Driver::DigitalOcean(d)
    }
}

impl From<L2> for Driver {
    fn from(d: L2) -> Self {
        Driver::L2(d)
    }
}

impl From<NoneDriver> for Driver {
    fn from(d: NoneDriver) -> Self {
        Driver::None(d)
    }
}
