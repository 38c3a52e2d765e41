//! The `l2` Reserved-IP driver: on one L2 network the Reserved IP is an
//! extra address on the MASTER's interface (added over rtnetlink,
//! `netlink`), announced with gratuitous ARP (`arp`) so neighbours
//! repoint their caches at once. Claims never outlive a release (an epoch
//! checked under locks). The wire format, the choice of rtnetlink and the
//! capabilities needed: `docs/election.md`, "Drivers".

mod arp;
mod config;
mod errors;
mod netlink;
#[cfg(test)]
mod tests;

pub use arp::{garp_frame, GarpKind};
pub use config::{
    L2Config, DEFAULT_GARP_COUNT, DEFAULT_GARP_INTERVAL, GARP_FRAME_LEN, MAX_GARP_COUNT,
    MAX_GARP_INTERVAL,
};

use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arp::Sender;
use errors::{HINT_INTERFACE, HINT_KERNEL};
use netlink::{Netlink, NlError};

use super::{ClaimOutcome, DriverError, Holder, ReleaseOutcome};

/// The `l2` driver. Cheap to clone: clones share the GARP cancellation state.
#[derive(Clone, Debug)]
pub struct L2 {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    interface: String,
    address: Ipv4Addr,
    prefix: u8,
    garp_count: u32,
    garp_interval: Duration,
    /// Bumped by every release; a GARP round is sent only while holding this
    /// lock and only if the epoch is still the one its claim started under,
    /// so no GARP leaves after `release` has begun.
    epoch: Mutex<u64>,
    /// Signalled when `epoch` changes, so pending GARP rounds stop at once.
    released: Condvar,
    /// Held across adding or removing the address: a claim whose caller gave
    /// up (dropped future) cannot add the address after a later release
    /// removed it, because it re-checks the epoch under this lock.
    ops: Mutex<()>,
}

/// An interface as the kernel reports it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Link {
    pub index: u32,
    pub mac: [u8; 6],
}

impl L2 {
    /// Build the driver after checking the settings. Touches nothing.
    pub fn new(cfg: L2Config) -> Result<Self, DriverError> {
        let address = cfg.validate()?;
        Ok(L2 {
            inner: Arc::new(Inner {
                interface: cfg.interface,
                address,
                prefix: cfg.prefix,
                garp_count: cfg.garp_count,
                garp_interval: cfg.garp_interval,
                epoch: Mutex::new(0),
                released: Condvar::new(),
                ops: Mutex::new(()),
            }),
        })
    }

    /// The Reserved IP this driver moves.
    pub fn address(&self) -> Ipv4Addr {
        self.inner.address
    }

    /// The interface that carries it.
    pub fn interface(&self) -> &str {
        &self.inner.interface
    }

    /// Add the address (idempotent) and announce it. Returns once the address
    /// is on the interface and the first GARP round is out; the other rounds
    /// follow in the background unless [`L2::release`] runs first.
    pub async fn claim(&self) -> Result<ClaimOutcome, DriverError> {
        let me = self.clone();
        let epoch = self.epoch();
        let (first, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || match me.start_claim(epoch) {
            Ok((outcome, tx, link)) => {
                let _ = first.send(Ok(outcome));
                me.finish_garps(epoch, tx, link);
            }
            Err(e) => {
                let _ = first.send(Err(e));
            }
        });
        rx.await.unwrap_or_else(|_| {
            Err(DriverError::Provider {
                endpoint: self.endpoint("claim"),
                status: None,
                detail: "the claim's worker thread ended without an answer".into(),
                hint: HINT_KERNEL,
            })
        })
    }

    /// Stop pending GARPs and remove the address (absent = fine).
    pub async fn release(&self) -> Result<ReleaseOutcome, DriverError> {
        let me = self.clone();
        self.bump_epoch();
        tokio::task::spawn_blocking(move || me.remove_address())
            .await
            .unwrap_or_else(|e| Err(self.join_error(e)))
    }

    /// [`Holder::Me`] when the address is on the interface, else [`Holder::Nobody`].
    pub async fn holder(&self) -> Result<Holder, DriverError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.holder_blocking())
            .await
            .unwrap_or_else(|e| Err(self.join_error(e)))
    }

    /// [`L2::claim`] on the calling thread, all GARP rounds included (for a
    /// caller that must stay on one thread, e.g. inside a network namespace
    /// entered with `setns`).
    pub fn claim_blocking(&self) -> Result<ClaimOutcome, DriverError> {
        let epoch = self.epoch();
        let (outcome, tx, link) = self.start_claim(epoch)?;
        self.finish_garps(epoch, tx, link);
        Ok(outcome)
    }

    /// [`L2::release`] on the calling thread.
    pub fn release_blocking(&self) -> Result<ReleaseOutcome, DriverError> {
        self.bump_epoch();
        self.remove_address()
    }

    /// [`L2::holder`] on the calling thread.
    pub fn holder_blocking(&self) -> Result<Holder, DriverError> {
        let mut nl = Netlink::open().map_err(|e| self.os_error("open a netlink socket", e))?;
        let link = self.link(&mut nl)?;
        let present = nl
            .has_ipv4(link.index, self.inner.address)
            .map_err(|e| self.nl_error("list addresses (RTM_GETADDR)", e))?;
        // Not on our interface: as far as this host can tell, nobody has it
        // here. A master reading that puts it back (an interface reset or a
        // network manager removed it); other hosts' addresses are invisible.
        Ok(if present { Holder::Me } else { Holder::Nobody })
    }

    fn epoch(&self) -> u64 {
        *self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump_epoch(&self) {
        let mut e = self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner());
        *e = e.wrapping_add(1);
        self.inner.released.notify_all();
    }

    /// Add the address and send the first GARP round; what
    /// [`L2::finish_garps`] needs to send the others.
    fn start_claim(&self, epoch: u64) -> Result<(ClaimOutcome, Sender, Link), DriverError> {
        let started = Instant::now();
        let (outcome, tx, link) = self.add_and_announce(epoch)?;
        tracing::info!(
            interface = %self.inner.interface,
            address = %self.inner.address,
            prefix = self.inner.prefix,
            added = matches!(outcome, ClaimOutcome::Assigned { .. }),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "l2: address on interface, first gratuitous ARP sent"
        );
        Ok((outcome, tx, link))
    }

    /// Look up the interface, open the packet socket, add the address, send
    /// the first GARP round.
    fn add_and_announce(&self, epoch: u64) -> Result<(ClaimOutcome, Sender, Link), DriverError> {
        let mut nl = Netlink::open().map_err(|e| self.os_error("open a netlink socket", e))?;
        let link = self.link(&mut nl)?;
        // Open the packet socket before touching the address: a missing
        // CAP_NET_RAW then fails the claim without leaving a half-claim.
        let mut tx = self.open_sender(link)?;
        let _ops = self.inner.ops.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch() != epoch {
            return Err(DriverError::Provider {
                endpoint: self.endpoint("claim"),
                status: None,
                detail: "a release began before the address was added; not adding it".into(),
                hint: "nothing to do: the election released the address on purpose",
            });
        }
        let added = nl
            .add_ipv4(link.index, self.inner.address, self.inner.prefix)
            .map_err(|e| self.nl_error("add address (RTM_NEWADDR)", e))?;
        let outcome = if added {
            ClaimOutcome::Assigned { action_id: 0 }
        } else {
            ClaimOutcome::AlreadyHeld
        };
        if self.inner.garp_count > 0 {
            self.send_round(epoch, &mut *tx, link)?;
        }
        Ok((outcome, tx, link))
    }

    fn remove_address(&self) -> Result<ReleaseOutcome, DriverError> {
        let mut nl = Netlink::open().map_err(|e| self.os_error("open a netlink socket", e))?;
        let link = self.link(&mut nl)?;
        let _ops = self.inner.ops.lock().unwrap_or_else(|p| p.into_inner());
        let removed = nl
            .del_ipv4(link.index, self.inner.address, self.inner.prefix)
            .map_err(|e| self.nl_error("remove address (RTM_DELADDR)", e))?;
        tracing::info!(
            interface = %self.inner.interface,
            address = %self.inner.address,
            removed,
            "l2: address released"
        );
        Ok(ReleaseOutcome::Released)
    }

    fn link(&self, nl: &mut Netlink) -> Result<Link, DriverError> {
        match nl.link(&self.inner.interface) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(DriverError::Config {
                what: format!(
                    "interface {} has no Ethernet (6-byte) hardware address; the l2 driver announces {} with ARP",
                    self.inner.interface, self.inner.address
                ),
                hint: HINT_INTERFACE,
            }),
            Err(NlError::Kernel(code)) if code == libc::ENODEV => Err(DriverError::Config {
                what: format!(
                    "interface {} does not exist on this node (wanted for {})",
                    self.inner.interface, self.inner.address
                ),
                hint: HINT_INTERFACE,
            }),
            Err(e) => Err(self.nl_error("look up interface (RTM_GETLINK)", e)),
        }
    }
}
