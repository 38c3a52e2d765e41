//! dynia's election (replaces keepalived), end to end: the pure state
//! machine and rules, the transports, the thread that runs them, and the
//! Reserved-IP drivers. The reasoning is in `docs/election.md`.
//!
//! * [`election`]: the RFC 5798 state machine, pure (clock and events injected).
//! * [`reconcile`]: what a master does about who holds the Reserved IP, pure.
//! * [`follower`]: how the Reserved IP follows the role (claim, check, yield, release), pure.
//! * [`runtime`]: the election thread and its [`runtime::ElectionHandle`];
//!   [`settings`]: what it runs on and why it may not start.
//! * [`transport`]: the `dynia` UDP and `vrrp3` raw IP wires; [`advert`] and
//!   [`vrrp3`] their codecs. [`hooks`] and `metrics`: beside the transitions.
//! * [`driver`]: what moves the Reserved IP (DigitalOcean API, L2 address + gratuitous ARP, none).

pub mod advert;
pub mod driver;
pub mod election;
pub mod follower;
pub mod hooks;
pub mod liveness;
mod metrics;
pub mod reconcile;
pub mod runtime;
pub mod settings;
pub mod transport;
pub mod vrrp3;

pub use runtime::{
    ElectionError, ElectionHandle, ElectionPeer, ElectionSettings, ElectionView, PeerSeen,
    TransportKind,
};
