//! dynia's test fixtures, in one crate that no production crate depends on
//! (only tests, benches and the `dynia demo` / `dynia upstream` commands).
//! What each layer of tests uses is in docs/testing.md.
//!
//! * [`eventually`]: bounded waiting for an event (the one poll-until helper).
//! * [`dosim`]: a local DigitalOcean API + droplet metadata simulator.
//! * [`upstream`]: the demo application server members run in tests and demos.
//! * [`web`]: a small real HTTP client and hand-written members for failures.
//! * [`tls`]: a throwaway CA, HTTPS clients, bounded `curl` / `openssl` runs.
//! * [`daemon`]: whole-daemon fixtures (node files, `dynia run` processes).
//! * [`netns`]: the network-namespace cluster (root only).
//! * [`paced`]: a paced client (one request every 20 ms, say) and the figures
//!   of a node loss as it lived through them.

pub mod daemon;
pub mod dosim;
pub mod eventually;
pub mod netns;
pub mod paced;
pub mod tls;
pub mod upstream;
pub mod web;

pub use eventually::{eventually, eventually_async, eventually_every, TimedOut};
