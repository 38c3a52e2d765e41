//! dynia's election (replaces keepalived): a pure state machine, advert codecs, Reserved-IP drivers.

#[cfg(feature = "simulator")]
pub mod dosim;
pub mod driver;
