//! The `l2` Reserved-IP driver: on one L2 network (a bridge, a VLAN, a
//! provider's "VPC" that passes ARP), the Reserved IP is an extra address on
//! the MASTER's interface, announced with gratuitous ARP so that neighbours
//! (clients, routers) repoint their ARP caches at once instead of waiting for
//! their stale entries to time out (SPEC §5, "Drivers for the Reserved IP").
//!
//! - [`L2::claim`]: add `address/prefix` to the interface over rtnetlink
//!   (`RTM_NEWADDR`; already present = fine), then send `garp_count` rounds of
//!   gratuitous ARP spaced by `garp_interval`. The first round leaves right
//!   after the address is added and `claim` returns as soon as it is out; the
//!   remaining rounds go on in the background on the same blocking thread and
//!   stop as soon as [`L2::release`] runs.
//! - [`L2::release`]: stop any GARP still pending, remove the address
//!   (`RTM_DELADDR`; absent = fine).
//! - [`L2::holder`]: [`Holder::Me`] when the address is on the interface, else
//!   [`Holder::Nobody`]: L2 cannot tell who else has it, but a master that
//!   reads `Nobody` knows the address must be put back on its interface.
//!
//! What goes on the wire, and why: keepalived (`vrrp_arp.c`,
//! `send_gratuitous_arp_immediate`) sends an ARP *request* to the Ethernet
//! broadcast address with sender and target IP = the VIP, sender hardware
//! address = the interface's MAC and target hardware address ff:ff:ff:ff:ff:ff,
//! `vrrp_garp_master_repeat` times (default 5) on becoming MASTER, and again
//! after `vrrp_garp_master_delay` (default 5 s). We send the same request and,
//! in the same round, an unsolicited ARP *reply* (`arping -A` style, target
//! hardware address = sender's), because some hosts and switches only learn
//! from replies. Both forms pass Linux's `is_garp` test (sip == tip; for a
//! reply also tha == sha), which bypasses the neighbour `locktime`, so a Linux
//! client repoints an existing entry immediately. Frames are padded to the
//! 60-byte Ethernet minimum.
//!
//! Why rtnetlink rather than running `ip addr add`: one request/ack on a
//! socket (no fork/exec on the failover path, no dependency on iproute2 being
//! installed on the node), and the kernel's errno comes back typed (EEXIST =
//! already there, EADDRNOTAVAIL = already gone, EPERM = missing capability).
//! `netlink-packet-route` + `netlink-sys` (sync socket) are used instead of
//! `rtnetlink`, which would add an async netlink connection task and
//! `futures` plumbing for three one-shot requests.
//!
//! Capabilities: adding an address needs `CAP_NET_ADMIN`, the packet socket
//! needs `CAP_NET_RAW` (deploy/dynia.service grants both).
//!
//! Everything touching the kernel runs on tokio's blocking pool (or, for the
//! `*_blocking` methods, on the caller's thread): sockets are created in the
//! network namespace of the thread that runs them.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use pnet_datalink::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperation, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};

use super::{ClaimOutcome, DriverError, Holder, ReleaseOutcome};

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

/// Longest wait for the kernel's answer to one netlink request.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most datagrams read for one netlink request (a dump of every address).
const NETLINK_MAX_DATAGRAMS: usize = 4096;

const HINT_CAPS: &str =
    "the l2 driver needs CAP_NET_ADMIN and CAP_NET_RAW; run as root or see deploy/dynia.service";
const HINT_INTERFACE: &str =
    "check [reserved_ip] interface in the node file: it must name an Ethernet interface of this node (see `ip link`)";
const HINT_ADDRESS: &str =
    "check [reserved_ip] address and prefix in the node file (an IPv4 address and a prefix length 1..=32)";
const HINT_KERNEL: &str =
    "the kernel refused; check the interface with `ip addr show`; dynia claims again at the next reconcile";
const HINT_SEND: &str =
    "the address is on the interface but neighbours may not know yet; check that the interface is up; dynia claims again at the next reconcile";

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
}

/// Which form of gratuitous ARP a frame is.
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

/// The sending half of a packet socket bound to the interface.
type Sender = Box<dyn pnet_datalink::DataLinkSender>;

/// An interface as the kernel reports it.
#[derive(Clone, Copy, Debug)]
struct Link {
    index: u32,
    mac: [u8; 6],
}

impl L2 {
    /// Build the driver after checking the settings. Touches nothing.
    pub fn new(cfg: L2Config) -> Result<Self, DriverError> {
        let name = &cfg.interface;
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
        let address = match cfg.address {
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
        if cfg.prefix == 0 || cfg.prefix > 32 {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] prefix {} for {address} is out of range",
                    cfg.prefix
                ),
                hint: HINT_ADDRESS,
            });
        }
        if cfg.garp_count > MAX_GARP_COUNT {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] garp_count {} is more than {MAX_GARP_COUNT}",
                    cfg.garp_count
                ),
                hint: "a handful of gratuitous ARPs is enough (default 3)",
            });
        }
        if cfg.garp_interval > MAX_GARP_INTERVAL {
            return Err(DriverError::Config {
                what: format!(
                    "[reserved_ip] garp_interval {:?} is longer than {MAX_GARP_INTERVAL:?}",
                    cfg.garp_interval
                ),
                hint: "use a short interval (default 100 ms)",
            });
        }
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

    /// Waits `garp_interval` unless a release comes first (`false` then).
    fn pause_unless_released(&self, epoch: u64) -> bool {
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

    /// The remaining GARP rounds, paced by `garp_interval`; stops at once
    /// when a release has begun since the claim (bounded: `garp_count` rounds).
    fn finish_garps(&self, epoch: u64, mut tx: Sender, link: Link) {
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

    /// One GARP round (request + reply). `Ok(false)`: released meanwhile, nothing sent.
    fn send_round(
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

    fn open_sender(&self, link: Link) -> Result<Sender, DriverError> {
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

    fn endpoint(&self, what: &str) -> String {
        format!(
            "l2 {what} {}/{} on {}",
            self.inner.address, self.inner.prefix, self.inner.interface
        )
    }

    fn os_error(&self, what: &str, e: io::Error) -> DriverError {
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

    fn nl_error(&self, request: &str, e: NlError) -> DriverError {
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

    fn send_error(&self, e: io::Error) -> DriverError {
        if is_permission(&e) {
            return self.os_error("send gratuitous ARP", e);
        }
        DriverError::Network {
            endpoint: self.endpoint("gratuitous ARP"),
            detail: e.to_string(),
            hint: HINT_SEND,
        }
    }

    fn join_error(&self, e: tokio::task::JoinError) -> DriverError {
        DriverError::Provider {
            endpoint: self.endpoint("worker"),
            status: None,
            detail: format!("the blocking worker failed: {e}"),
            hint: HINT_KERNEL,
        }
    }
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        || e.kind() == io::ErrorKind::PermissionDenied
}

/// Why a netlink request failed.
#[derive(Debug)]
enum NlError {
    /// The socket itself failed.
    Os(io::Error),
    /// The kernel answered with this (positive) errno.
    Kernel(i32),
    /// No complete answer in time.
    Timeout,
    /// An answer we could not parse.
    Decode(String),
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NlError::Os(e) => write!(f, "socket: {e}"),
            NlError::Kernel(code) => write!(f, "kernel: {}", io::Error::from_raw_os_error(*code)),
            NlError::Timeout => f.write_str("timeout"),
            NlError::Decode(d) => write!(f, "decode: {d}"),
        }
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NlError::Timeout,
            _ => NlError::Os(e),
        }
    }
}

/// A blocking rtnetlink socket with a receive timeout, for one-shot requests.
struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: NETLINK_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: NETLINK_TIMEOUT.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid fd, a valid pointer to a timeval and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { sock, seq: 0 })
    }

    /// Send one request and collect the answer's messages: until the ACK
    /// (requests with `NLM_F_ACK`), `NLMSG_DONE` (dumps) or the first
    /// non-multipart message (plain gets). Bounded in datagrams and time.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0)?;

        let deadline = Instant::now() + NETLINK_TIMEOUT;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..NETLINK_MAX_DATAGRAMS {
            if Instant::now() > deadline {
                return Err(NlError::Timeout);
            }
            let n = self.sock.recv(&mut &mut buf[..], 0)?.min(buf.len());
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                let mflags = u16::from_ne_bytes(buf[off + 6..off + 8].try_into().expect("2 bytes"));
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
                if len < 16 || off + len > n {
                    return Err(NlError::Decode(format!(
                        "message length {len} at offset {off} of {n}"
                    )));
                }
                let raw = &buf[off..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue; // a late answer to an earlier request
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                    .map_err(|e| NlError::Decode(e.to_string()));
                match parsed.map(|m| m.payload) {
                    Ok(NetlinkPayload::Done(_)) => return Ok(found),
                    Ok(NetlinkPayload::Error(e)) => {
                        return match e.code {
                            None => Ok(found),
                            Some(code) => Err(NlError::Kernel(code.get().saturating_abs())),
                        }
                    }
                    Ok(NetlinkPayload::InnerMessage(m)) => {
                        found.push(m);
                        if mflags & NLM_F_MULTIPART == 0 && flags & NLM_F_ACK == 0 {
                            return Ok(found);
                        }
                    }
                    Ok(_) => {}
                    // In a dump, skip what we cannot parse (we only look for
                    // our address); elsewhere it is an error.
                    Err(e) if flags & NLM_F_DUMP == NLM_F_DUMP => {
                        tracing::debug!(error = %e, "l2: skipped an undecodable netlink message");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(NlError::Timeout)
    }

    /// Index and MAC of the interface named `name`; `Ok(None)` when it has no
    /// 6-byte hardware address.
    fn link(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let answer = self.request(RouteNetlinkMessage::GetLink(msg), 0)?;
        for m in answer {
            if let RouteNetlinkMessage::NewLink(link) = m {
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                    _ => None,
                });
                return Ok(mac.map(|mac| Link {
                    index: link.header.index,
                    mac,
                }));
            }
        }
        Err(NlError::Kernel(libc::ENODEV))
    }

    fn addr_message(index: u32, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        msg
    }

    /// Add `ip/prefix`; `Ok(false)` when it was already there.
    fn add_ipv4(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<bool, NlError> {
        let msg = Self::addr_message(index, ip, prefix);
        match self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(true),
            Err(NlError::Kernel(code)) if code == libc::EEXIST => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove `ip/prefix`; `Ok(false)` when it was not there.
    fn del_ipv4(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<bool, NlError> {
        let msg = Self::addr_message(index, ip, prefix);
        match self.request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(NlError::Kernel(code)) if code == libc::EADDRNOTAVAIL || code == libc::ENOENT => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `ip` is one of the interface's IPv4 addresses.
    fn has_ipv4(&mut self, index: u32, ip: Ipv4Addr) -> Result<bool, NlError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answer = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        Ok(answer.iter().any(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                let local = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(x) => Some(*x),
                    _ => None,
                });
                let address = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(x) => Some(*x),
                    _ => None,
                });
                local.or(address) == Some(IpAddr::V4(ip))
            }
            _ => false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::arp::ArpPacket;
    use pnet_packet::ethernet::EthernetPacket;
    use pnet_packet::Packet;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 100);

    #[test]
    fn garp_request_bytes() {
        let f = garp_frame(MAC, VIP, GarpKind::Request);
        assert_eq!(f.len(), 60);
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet dst: broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // Ethernet src: interface MAC
            0x08, 0x06,                         // EtherType ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet/IPv4, hlen 6, plen 4
            0x00, 0x01,                         // op: request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // sender MAC
            10, 99, 7, 100,                     // sender IP = VIP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // target MAC (keepalived's form)
            10, 99, 7, 100,                     // target IP = VIP
        ];
        assert_eq!(&f[..42], &want[..]);
        assert!(f[42..].iter().all(|b| *b == 0), "padding is zero");
    }

    #[test]
    fn garp_reply_bytes() {
        let f = garp_frame(MAC, VIP, GarpKind::Reply);
        let eth = EthernetPacket::new(&f).unwrap();
        assert_eq!(eth.get_destination(), MacAddr::broadcast());
        assert_eq!(eth.get_source(), MacAddr::from(MAC));
        assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Reply);
        assert_eq!(arp.get_sender_hw_addr(), MacAddr::from(MAC));
        assert_eq!(arp.get_target_hw_addr(), MacAddr::from(MAC), "tha == sha");
        assert_eq!(arp.get_sender_proto_addr(), VIP);
        assert_eq!(arp.get_target_proto_addr(), VIP);
    }

    #[test]
    fn config_checks() {
        let ok = L2Config::new("eth1", IpAddr::V4(VIP), 24);
        assert_eq!(ok.garp_count, 3);
        assert_eq!(ok.garp_interval, Duration::from_millis(100));
        let d = L2::new(ok.clone()).unwrap();
        assert_eq!(d.address(), VIP);
        assert_eq!(d.interface(), "eth1");

        let err = |c: L2Config| L2::new(c).unwrap_err().to_string();
        let e = err(L2Config::new("eth1", "2001:db8::1".parse().unwrap(), 64));
        assert!(e.contains("IPv6") && e.contains("2001:db8::1"), "{e}");
        let e = err(L2Config::new("a-very-long-interface", IpAddr::V4(VIP), 24));
        assert!(e.contains("a-very-long-interface"), "{e}");
        let e = err(L2Config::new("eth1", IpAddr::V4(VIP), 33));
        assert!(e.contains("prefix 33"), "{e}");
        let e = err(L2Config::new("eth1", "127.0.0.1".parse().unwrap(), 8));
        assert!(e.contains("127.0.0.1"), "{e}");
        let mut c = ok.clone();
        c.garp_count = 1000;
        assert!(err(c).contains("garp_count"));
        let mut c = ok;
        c.garp_interval = Duration::from_secs(60);
        assert!(err(c).contains("garp_interval"));
    }

    /// A missing interface is a config error that names it (works unprivileged:
    /// RTM_GETLINK needs no capability).
    #[test]
    fn missing_interface_is_named() {
        let d = L2::new(L2Config::new("dyn-nosuch0", IpAddr::V4(VIP), 24)).unwrap();
        let e = d.holder_blocking().unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("dyn-nosuch0") && s.contains("does not exist"),
            "{s}"
        );
        assert_eq!(e.kind(), super::super::ErrorKind::Config);
    }

    /// `true` when root and `ip` are there; otherwise prints why `test`
    /// skips, or fails with `DYNIA_REQUIRE_ROOT_TESTS=1` (CI, as root).
    fn root_and_ip(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let why = if unsafe { libc::geteuid() } != 0 {
            "needs root (network namespaces, CAP_NET_ADMIN, CAP_NET_RAW)"
        } else if std::process::Command::new("ip").arg("-V").output().is_err() {
            "`ip` (iproute2) is not installed"
        } else {
            return true;
        };
        assert!(
            std::env::var_os("DYNIA_REQUIRE_ROOT_TESTS").is_none_or(|v| v != "1"),
            "{test} must run here (DYNIA_REQUIRE_ROOT_TESTS=1) but cannot: {why}"
        );
        eprintln!("skip {test}: {why}");
        false
    }

    /// Root only: two namespaces joined by a veth pair; claim adds the address
    /// and a GARP is captured on the peer side; release removes it.
    #[test]
    fn claim_and_release_in_netns() {
        if !root_and_ip("claim_and_release_in_netns") {
            return;
        }
        let pair = root::VethPair::new();
        let vip = Ipv4Addr::new(10, 98, 1, 100);
        let mut cfg = L2Config::new("l2a", IpAddr::V4(vip), 24);
        cfg.garp_count = 2;
        cfg.garp_interval = Duration::from_millis(50);
        let drv = L2::new(cfg).unwrap();

        // Listen on the peer first, then claim on the other side.
        let listener = root::in_netns(&pair.b, || {
            let iface = pnet_datalink::interfaces()
                .into_iter()
                .find(|i| i.name == "l2b")
                .expect("l2b in peer namespace");
            let cfg = pnet_datalink::Config {
                read_timeout: Some(Duration::from_millis(100)),
                ..Default::default()
            };
            match pnet_datalink::channel(&iface, cfg) {
                Ok(pnet_datalink::Channel::Ethernet(_tx, rx)) => rx,
                _ => panic!("no channel on l2b"),
            }
        });
        let started = Instant::now();
        let drv2 = drv.clone();
        let (outcome, mac, present) = root::in_netns(&pair.a, move || {
            let outcome = drv2.claim_blocking().unwrap();
            let mut nl = Netlink::open().unwrap();
            let link = nl.link("l2a").unwrap().unwrap();
            (outcome, link.mac, drv2.holder_blocking().unwrap())
        });
        assert_eq!(outcome, ClaimOutcome::Assigned { action_id: 0 });
        assert_eq!(present, Holder::Me);
        // Claiming again is fine.
        let drv3 = drv.clone();
        let again = root::in_netns(&pair.a, move || drv3.claim_blocking().unwrap());
        assert_eq!(again, ClaimOutcome::AlreadyHeld);

        // Capture: at least one request and one reply for the VIP from `mac`.
        let mut rx = listener;
        let (mut req, mut rep) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(3);
        for _ in 0..10_000 {
            if (req && rep) || Instant::now() > deadline {
                break;
            }
            let Ok(frame) = rx.next() else { continue };
            let Some(eth) = EthernetPacket::new(frame) else {
                continue;
            };
            if eth.get_ethertype() != EtherTypes::Arp {
                continue;
            }
            let Some(arp) = ArpPacket::new(eth.payload()) else {
                continue;
            };
            if eth.get_destination() == MacAddr::broadcast()
                && arp.get_sender_proto_addr() == vip
                && arp.get_target_proto_addr() == vip
                && arp.get_sender_hw_addr() == MacAddr::from(mac)
            {
                match arp.get_operation() {
                    ArpOperations::Request => req = true,
                    ArpOperations::Reply => rep = true,
                    _ => {}
                }
            }
        }
        assert!(
            req && rep,
            "GARP request {req} / reply {rep} captured on the peer"
        );
        eprintln!("claim → GARPs captured in {:?}", started.elapsed());

        let drv4 = drv.clone();
        let (rel, after, rel2) = root::in_netns(&pair.a, move || {
            let r = drv4.release_blocking().unwrap();
            let h = drv4.holder_blocking().unwrap();
            let r2 = drv4.release_blocking().unwrap();
            (r, h, r2)
        });
        assert_eq!(rel, ReleaseOutcome::Released);
        assert_eq!(after, Holder::Nobody);
        assert_eq!(rel2, ReleaseOutcome::Released, "releasing twice is fine");
        let out = pair.ip(&["-n", &pair.a, "-4", "addr", "show", "dev", "l2a"]);
        assert!(!out.contains("10.98.1.100"), "address gone: {out}");

        // A claim that started before a release (its caller gave up) does
        // not add the address afterwards.
        let drv5 = drv.clone();
        let late = root::in_netns(&pair.a, move || {
            let started_under = drv5.epoch();
            drv5.release_blocking().unwrap();
            drv5.start_claim(started_under).map(|(o, _, _)| o)
        });
        let e = late.unwrap_err().to_string();
        assert!(e.contains("release began"), "{e}");
        let out = pair.ip(&["-n", &pair.a, "-4", "addr", "show", "dev", "l2a"]);
        assert!(
            !out.contains("10.98.1.100"),
            "late claim added nothing: {out}"
        );
    }

    /// The async API runs the same code on the blocking pool: in a runtime
    /// whose threads all start inside the namespace, it claims and releases.
    #[test]
    fn async_api_in_netns() {
        if !root_and_ip("async_api_in_netns") {
            return;
        }
        let pair = root::VethPair::new();
        // Slow rounds: claim must not wait for them, and release must stop
        // them at once (the runtime's drop waits for its blocking threads).
        let mut cfg = L2Config::new("l2a", "10.98.2.100".parse().unwrap(), 24);
        cfg.garp_interval = Duration::from_secs(3);
        let drv = L2::new(cfg).unwrap();
        let whole = Instant::now();
        let (c, h, r, h2) = root::in_netns(&pair.a, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let t = Instant::now();
                let c = drv.claim().await.unwrap();
                let took = t.elapsed();
                assert!(
                    took < Duration::from_secs(1),
                    "claim returned after {took:?}"
                );
                let h = drv.holder().await.unwrap();
                let r = drv.release().await.unwrap();
                let h2 = drv.holder().await.unwrap();
                (c, h, r, h2)
            })
        });
        let took = whole.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "pending GARPs outlived the release: {took:?}"
        );
        assert_eq!(c, ClaimOutcome::Assigned { action_id: 0 });
        assert_eq!(h, Holder::Me);
        assert_eq!(r, ReleaseOutcome::Released);
        assert_eq!(h2, Holder::Nobody);
    }

    /// Root only: on a thread without CAP_NET_ADMIN and CAP_NET_RAW (caps are
    /// per thread), a claim fails with a config error that says what to do,
    /// and leaves no address behind.
    #[test]
    fn missing_capabilities_are_named() {
        if !root_and_ip("missing_capabilities_are_named") {
            return;
        }
        let pair = root::VethPair::new();
        let drv = L2::new(L2Config::new("l2a", "10.98.3.100".parse().unwrap(), 24)).unwrap();
        let (claim, release) = root::in_netns(&pair.a, move || {
            root::drop_net_caps();
            (drv.claim_blocking(), drv.release_blocking())
        });
        for e in [claim.unwrap_err(), release.unwrap_err()] {
            let s = e.to_string();
            assert_eq!(e.kind(), super::super::ErrorKind::Config, "{s}");
            assert!(
                s.contains("CAP_NET_ADMIN") && s.contains("CAP_NET_RAW") && s.contains("l2a"),
                "{s}"
            );
        }
        let out = pair.ip(&["-n", &pair.a, "-4", "addr", "show", "dev", "l2a"]);
        assert!(!out.contains("10.98.3.100"), "no half-claim: {out}");
    }

    /// Root-only helpers: a veth pair between two fresh namespaces.
    mod root {
        use std::fs::File;
        use std::os::fd::AsRawFd;
        use std::process::Command;
        use std::sync::atomic::{AtomicU32, Ordering};

        static N: AtomicU32 = AtomicU32::new(0);

        pub struct VethPair {
            pub a: String,
            pub b: String,
        }

        impl VethPair {
            pub fn new() -> VethPair {
                remove_stale();
                let n = N.fetch_add(1, Ordering::SeqCst);
                let tag = format!("dyl2-{}-{n}", std::process::id());
                let p = VethPair {
                    a: format!("{tag}-a"),
                    b: format!("{tag}-b"),
                };
                p.ip(&["netns", "add", &p.a]);
                p.ip(&["netns", "add", &p.b]);
                p.ip(&[
                    "-n", &p.a, "link", "add", "l2a", "type", "veth", "peer", "name", "l2b",
                    "netns", &p.b,
                ]);
                p.ip(&["-n", &p.a, "link", "set", "l2a", "up"]);
                p.ip(&["-n", &p.b, "link", "set", "l2b", "up"]);
                p.ip(&["-n", &p.a, "addr", "add", "10.98.0.1/16", "dev", "l2a"]);
                p.ip(&["-n", &p.b, "addr", "add", "10.98.0.2/16", "dev", "l2b"]);
                p
            }

            pub fn ip(&self, args: &[&str]) -> String {
                let out = Command::new("ip").args(args).output().expect("run ip");
                assert!(
                    out.status.success(),
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        }

        /// Deletes `dyl2-<pid>-…` namespaces left by dead test processes.
        fn remove_stale() {
            let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
                return;
            };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(name) = line.split_whitespace().next() else {
                    continue;
                };
                let Some(pid) = name
                    .strip_prefix("dyl2-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid != std::process::id()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = Command::new("ip").args(["netns", "del", name]).output();
                }
            }
        }

        impl Drop for VethPair {
            fn drop(&mut self) {
                for ns in [&self.a, &self.b] {
                    let _ = Command::new("ip").args(["netns", "del", ns]).output();
                }
            }
        }

        /// Drops CAP_NET_ADMIN and CAP_NET_RAW from the calling thread's
        /// effective set (capabilities are per thread on Linux).
        pub fn drop_net_caps() {
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy, Default)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            const VERSION_3: u32 = 0x2008_0522;
            let mut h = Header {
                version: VERSION_3,
                pid: 0,
            };
            let mut d = [Data::default(); 2];
            // SAFETY: capget/capset with a v3 header and two data words.
            unsafe {
                assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
                d[0].effective &= !((1 << 12) | (1 << 13)); // CAP_NET_ADMIN, CAP_NET_RAW
                assert_eq!(libc::syscall(libc::SYS_capset, &h, d.as_ptr()), 0);
            }
        }

        /// Run `f` on a fresh thread that has entered network namespace `ns`.
        pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/run/netns/{ns}");
            std::thread::spawn(move || {
                let fd = File::open(&path).expect("open netns");
                // SAFETY: a valid namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        }
    }
}
