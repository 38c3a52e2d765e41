//! dynia's control layer: the two configuration files, the daemon that runs
//! the proxy and the election on them, the admin API and its client, the
//! status views, and the cluster-wide workflows the `dynia` binary drives.
//!
//! Layers, each using only those above it (`tools/module-cycles.py` checks
//! there is no cycle): `wire`, `names`, `store`, `config` → `client`,
//! `loaded` → `ops` (plan, push, outcomes), `status`, `page` → `wiring`,
//! `daemon` → `apply`, `catchup`, `admin` → `process`. Nothing here prints or
//! picks an exit status; the protocol is in `docs/control.md`.

pub mod admin;
pub mod apply;
pub mod catchup;
pub mod client;
pub mod config;
pub mod daemon;
pub mod election;
pub mod loaded;
pub mod logging;
pub mod names;
pub mod node_metrics;
pub mod notify;
pub mod ops;
pub mod page;
pub mod process;
pub mod rates;
pub mod status;
pub mod store;
pub mod wire;
pub mod wiring;
