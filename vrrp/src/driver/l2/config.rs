//! The `l2` driver's settings and their checks (node file `[reserved_ip]`
//! with `driver = "l2"`); see `docs/election.md`, "Drivers".

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::errors::{HINT_ADDRESS, HINT_INTERFACE};
use crate::driver::DriverError;

/// Default number of GARP rounds per claim.
pub const DEFAULT_GARP_COUNT: u32 = 3;
/// Default pause between GARP rounds.
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(100);
/// Most GARP rounds one claim may ask for.
pub const MAX_GARP_COUNT: u32 = 100;
/// Longest pause between GARP rounds.
pub const MAX_GARP_INTERVAL: Duration = Duration::from_secs(10);
/// Length of one GARP frame on the wire (Ethernet minimum, FCS excluded).
pub const GARP_FRAME_LEN: usize = 60;

/// Settings of the `l2` driver (node file `[reserved_ip]` with `driver = "l2"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2Config {
    /// The interface that carries the address (`interface`, e.g. `eth1`).
    pub interface: String,
    /// The Reserved IP (`address`). IPv4 only: IPv6 would need unsolicited
    /// neighbour advertisements, which this driver does not send.
    pub address: IpAddr,
    /// Prefix length of the address on the interface (`prefix`, 1..=32).
    pub prefix: u8,
    /// GARP rounds per claim (`garp_count`, default 3, at most 100; 0 = none).
    pub garp_count: u32,
    /// Pause between GARP rounds (`garp_interval`, default 100 ms, at most 10 s).
    pub garp_interval: Duration,
}

impl L2Config {
    /// Defaults for everything but interface, address and prefix.
    pub fn new(interface: impl Into<String>, address: IpAddr, prefix: u8) -> Self {
        L2Config {
            interface: interface.into(),
            address,
            prefix,
            garp_count: DEFAULT_GARP_COUNT,
            garp_interval: DEFAULT_GARP_INTERVAL,
        }
    }

    /// Checks every setting; the IPv4 address on success.
    pub(super) fn validate(&self) -> Result<Ipv4Addr, DriverError> {
        let name = &self.interface;
        if name.is_empty()
            || name.len() > 15
            || name == "."
            || name == ".."
            || name
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] interface {name:?} is not a valid interface name (1-15 bytes, no '/' or spaces)"
                ),
                hint: HINT_INTERFACE,
            });
        }
        let address = match self.address {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => {
                return Err(DriverError::Config {
                    what: format!(
                        "[reserved_ip] address {a} is IPv6; the l2 driver announces addresses with ARP, which is IPv4 only"
                    ),
                    hint: "use an IPv4 Reserved IP with driver = \"l2\"",
                })
            }
        };
        if address.is_unspecified()
            || address.is_loopback()
            || address.is_multicast()
            || address.is_broadcast()
        {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] address {address} cannot be a Reserved IP (unspecified, loopback, multicast or broadcast)"
                ),
                hint: HINT_ADDRESS,
            });
        }
        if self.prefix == 0 || self.prefix > 32 {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] prefix {} for {address} is out of range",
                    self.prefix
                ),
                hint: HINT_ADDRESS,
            });
        }
        if self.garp_count > MAX_GARP_COUNT {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] garp_count {} is more than {MAX_GARP_COUNT}",
                    self.garp_count
                ),
                hint: "a handful of gratuitous ARPs is enough (default 3)",
            });
        }
        if self.garp_interval > MAX_GARP_INTERVAL {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] garp_interval {:?} is longer than {MAX_GARP_INTERVAL:?}",
                    self.garp_interval
                ),
                hint: "use a short interval (default 100 ms)",
            });
        }
        Ok(address)
    }
}
