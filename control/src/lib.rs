//! dynia's control layer: configuration files, the admin API, daemon wiring and status.

pub mod config;
