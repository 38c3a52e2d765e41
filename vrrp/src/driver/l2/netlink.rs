//! The `l2` driver's rtnetlink: one blocking socket with a receive timeout
//! per request (look up the interface, add, remove and list IPv4 addresses),
//! errno typed. Why not `ip addr` or the `rtnetlink` crate: `docs/election.md`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::Link;

/// Longest wait for the kernel's answer to one netlink request.
pub(super) const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most datagrams read for one netlink request (a dump of every address).
const NETLINK_MAX_DATAGRAMS: usize = 4096;

/// Why a netlink request failed.
#[derive(Debug)]
pub(super) enum NlError {
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
pub(super) struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    pub(super) fn open() -> io::Result<Self> {
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
    pub(super) fn link(&mut self, name: &str) -> Result<Option<Link>, NlError> {
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
    pub(super) fn add_ipv4(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NlError> {
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
    pub(super) fn del_ipv4(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NlError> {
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
    pub(super) fn has_ipv4(&mut self, index: u32, ip: Ipv4Addr) -> Result<bool, NlError> {
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
