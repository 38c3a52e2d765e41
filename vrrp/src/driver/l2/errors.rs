//! How the `l2` driver's failures read: each names the address, prefix
//! and interface, with a hint of what to do (missing capabilities are
//! config errors).

use std::io;

use super::netlink::{NlError, NETLINK_TIMEOUT};
use super::L2;
use crate::driver::DriverError;

pub(super) const HINT_CAPS: &str =
    "the l2 driver needs CAP_NET_ADMIN and CAP_NET_RAW; run as root or see deploy/systemd/dynia.service";
pub(super) const HINT_INTERFACE: &str =
    "check [reserved_ip] interface in the node file: it must name an Ethernet interface of this node (see `ip link`)";
pub(super) const HINT_ADDRESS: &str =
    "check [reserved_ip] address and prefix in the node file (an IPv4 address and a prefix length 1..=32)";
pub(super) const HINT_KERNEL: &str =
    "the kernel refused; check the interface with `ip addr show`; dynia claims again at the next reconcile";
pub(super) const HINT_SEND: &str =
    "the address is on the interface but neighbours may not know yet; check that the interface is up; dynia claims again at the next reconcile";

impl L2 {
    pub(super) fn endpoint(&self, what: &str) -> String {
        format!(
            "l2 {what} {}/{} on {}",
            self.inner.address, self.inner.prefix, self.inner.interface
        )
    }

    pub(super) fn os_error(&self, what: &str, e: io::Error) -> DriverError {
        if is_permission(&e) {
            DriverError::Config {
                what: format!(
                    "cannot {what} for {}/{} on {}: {e}",
                    self.inner.address, self.inner.prefix, self.inner.interface
                ),
                hint: HINT_CAPS,
            }
        } else {
            DriverError::Provider {
                endpoint: self.endpoint(what),
                status: None,
                detail: e.to_string(),
                hint: HINT_KERNEL,
            }
        }
    }

    pub(super) fn nl_error(&self, request: &str, e: NlError) -> DriverError {
        match e {
            NlError::Os(e) => self.os_error(request, e),
            NlError::Kernel(code) => {
                let e = io::Error::from_raw_os_error(code);
                if is_permission(&e) {
                    self.os_error(request, e)
                } else {
                    DriverError::Provider {
                        endpoint: self.endpoint(request),
                        status: None,
                        detail: format!("the kernel answered: {e}"),
                        hint: HINT_KERNEL,
                    }
                }
            }
            NlError::Timeout => DriverError::Provider {
                endpoint: self.endpoint(request),
                status: None,
                detail: format!("no answer from the kernel within {NETLINK_TIMEOUT:?}"),
                hint: HINT_KERNEL,
            },
            NlError::Decode(d) => DriverError::Provider {
                endpoint: self.endpoint(request),
                status: None,
                detail: format!("undecodable netlink answer: {d}"),
                hint: "this is a bug in dynia's netlink code; please report it",
            },
        }
    }

    pub(super) fn send_error(&self, e: io::Error) -> DriverError {
        if is_permission(&e) {
            return self.os_error("send gratuitous ARP", e);
        }
        DriverError::Network {
            endpoint: self.endpoint("gratuitous ARP"),
            detail: e.to_string(),
            hint: HINT_SEND,
        }
    }

    pub(super) fn join_error(&self, e: tokio::task::JoinError) -> DriverError {
        DriverError::Provider {
            endpoint: self.endpoint("worker"),
            status: None,
            detail: format!("the blocking worker failed: {e}"),
            hint: HINT_KERNEL,
        }
    }
}

pub(super) fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        || e.kind() == io::ErrorKind::PermissionDenied
}
