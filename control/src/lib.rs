//! dynia's control layer: the two configuration files, the daemon that runs
//! the proxy (and, later, the election) on them, the admin API and its client,
//! the status views, and the `dynia` subcommands.

pub mod admin;
pub mod apply;
pub mod catchup;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod election;
pub mod logging;
pub mod names;
pub mod node_metrics;
pub mod ops;
pub mod page;
pub mod rates;
pub mod status;
pub mod store;
pub mod transport;
pub mod wiring;
