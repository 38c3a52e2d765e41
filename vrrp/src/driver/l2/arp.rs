//! Gratuitous ARP for the `l2` driver: the frames (keepalived's request
//! form plus an `arping -A` reply), the packet socket, and the paced rounds
//! that stop as soon as a release begins. See `docs/election.md`, "Drivers".

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pnet_datalink::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperation, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};

use super::config::GARP_FRAME_LEN;
use super::errors::HINT_INTERFACE;
use super::{Link, L2};
use crate::driver::DriverError;

/// The sending half of a packet socket bound to the interface.
pub(super) type Sender = Box<dyn pnet_datalink::DataLinkSender>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GarpKind {
    /// ARP request, target hardware address ff:ff:ff:ff:ff:ff (keepalived's form).
    Request,
    /// Unsolicited ARP reply, target hardware address = sender's (`arping -A`).
    Reply,
}

/// One gratuitous ARP frame for `ip` from `mac`: Ethernet broadcast
/// destination, EtherType ARP, sender and target IP = `ip`, sender hardware
/// address = `mac`, padded with zeros to [`GARP_FRAME_LEN`] bytes.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, kind: GarpKind) -> [u8; GARP_FRAME_LEN] {
    let mut buf = [0u8; GARP_FRAME_LEN];
    let src = MacAddr::from(mac);
    {
        // Both constructors only fail when the buffer is too short; 60 bytes
        // hold 14 (Ethernet) + 28 (ARP), so they cannot.
        let mut eth = MutableEthernetPacket::new(&mut buf[..]).expect("60 >= 14 bytes");
        eth.set_destination(MacAddr::broadcast());
        eth.set_source(src);
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut arp = MutableArpPacket::new(&mut buf[14..]).expect("46 >= 28 bytes");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    let (op, tha): (ArpOperation, MacAddr) = match kind {
        GarpKind::Request => (ArpOperations::Request, MacAddr::broadcast()),
        GarpKind::Reply => (ArpOperations::Reply, src),
    };
    arp.set_operation(op);
    arp.set_sender_hw_addr(src);
    arp.set_sender_proto_addr(ip);
    arp.set_target_hw_addr(tha);
    arp.set_target_proto_addr(ip);
    buf
}

impl L2 {
    /// Waits `garp_interval` unless a release comes first (`false` then).
    pub(super) fn pause_unless_released(&self, epoch: u64) -> bool {
        let deadline = Instant::now() + self.inner.garp_interval;
        let mut g = self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the deadline; the count only guards against a storm of
        // spurious wake-ups.
        for _ in 0..10_000 {
            if *g != epoch {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            g = self
                .inner
                .released
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *g == epoch
    }

    /// The remaining GARP rounds, paced by `garp_interval`; stops at once
    /// when a release has begun since the claim (bounded: `garp_count` rounds).
    pub(super) fn finish_garps(&self, epoch: u64, mut tx: Sender, link: Link) {
        for round in 1..self.inner.garp_count {
            if !self.pause_unless_released(epoch) {
                tracing::debug!(address = %self.inner.address, round, "l2: released; remaining GARPs dropped");
                break;
            }
            match self.send_round(epoch, &mut *tx, link) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(address = %self.inner.address, round, "l2: released; remaining GARPs dropped");
                    break;
                }
                Err(e) => {
                    tracing::warn!(address = %self.inner.address, round, error = %e, "l2: gratuitous ARP not sent");
                }
            }
        }
    }

    /// One GARP round (request + reply). `Ok(false)`: released meanwhile, nothing sent.
    pub(super) fn send_round(
        &self,
        epoch: u64,
        tx: &mut dyn pnet_datalink::DataLinkSender,
        link: Link,
    ) -> Result<bool, DriverError> {
        let guard = self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *guard != epoch {
            return Ok(false);
        }
        for kind in [GarpKind::Request, GarpKind::Reply] {
            let frame = garp_frame(link.mac, self.inner.address, kind);
            match tx.send_to(&frame, None) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(self.send_error(e)),
                None => {
                    return Err(
                        self.send_error(io::Error::other("the packet socket refused the frame"))
                    )
                }
            }
        }
        drop(guard);
        Ok(true)
    }

    pub(super) fn open_sender(&self, link: Link) -> Result<Sender, DriverError> {
        let iface = pnet_datalink::NetworkInterface {
            name: self.inner.interface.clone(),
            description: String::new(),
            index: link.index,
            mac: Some(MacAddr::from(link.mac)),
            ips: Vec::new(),
            flags: 0,
        };
        let cfg = pnet_datalink::Config {
            write_buffer_size: 256,
            read_buffer_size: 256,
            write_timeout: Some(Duration::from_millis(500)),
            read_timeout: Some(Duration::from_millis(1)),
            promiscuous: false,
            ..Default::default()
        };
        match pnet_datalink::channel(&iface, cfg) {
            Ok(pnet_datalink::Channel::Ethernet(tx, _rx)) => Ok(tx),
            Ok(_) => Err(DriverError::Provider {
                endpoint: self.endpoint("packet socket"),
                status: None,
                detail: "pnet returned a non-Ethernet channel".into(),
                hint: HINT_INTERFACE,
            }),
            Err(e) => Err(self.os_error("open a packet socket", e)),
        }
    }
}
