//! dynia's election (replaces keepalived): a pure state machine, advert codecs, Reserved-IP drivers.
//!
//! * [`election`]: the RFC 5798 state machine, pure (clock and events injected).
//! * [`reconcile`]: what a master (or a yielded backup) does about who holds the Reserved IP, pure.
//! * [`advert`]: the `dynia` transport's authenticated advert, replay guard, receive filter.
//! * [`vrrp3`]: the RFC 5798 VRRPv3 IPv4 packet codec (keepalived interop).
//! * [`driver`]: what moves the Reserved IP (DigitalOcean API, L2 address + gratuitous ARP, none).

pub mod advert;
pub mod driver;
pub mod election;
pub mod reconcile;
pub mod vrrp3;
