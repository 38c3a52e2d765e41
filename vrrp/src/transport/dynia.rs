//! The `dynia` transport: UDP unicast to every member's `private_ip:port`,
//! HMAC-SHA256 under the cluster key, replay-protected by (boot epoch,
//! sequence), carrying role, generation, config hash and whether the sender
//! holds the Reserved IP. See `docs/election.md`, "Transports".

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::{member_set, AdvertHeard, Received};
use crate::advert::{
    encode, Advert, ClusterId, ReceiveFilter, SendCounter, SenderRole, ADVERT_LEN,
};
use crate::settings::{ElectionError, ElectionSettings};

pub(crate) struct Dynia {
    socket: UdpSocket,
    filter: ReceiveFilter,
    counter: SendCounter,
    buf: Box<[u8]>,
}

/// Binds the UDP socket (before the election thread starts, so a taken
/// port fails at once).
pub(crate) fn open(s: &ElectionSettings) -> Result<std::net::UdpSocket, ElectionError> {
    if s.key.is_none() {
        return Err(ElectionError::Config(
            "no cluster key: set [election] key_file in the node file".into(),
        ));
    }
    let bind = SocketAddr::new(s.local, s.port);
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|source| ElectionError::Bind { addr: bind, source })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| ElectionError::Bind { addr: bind, source })?;
    Ok(socket)
}

impl Dynia {
    /// Must run inside the election thread's runtime. `boot_epoch` must
    /// grow across runs (peers drop adverts whose (epoch, seq) does not).
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        s: &ElectionSettings,
        boot_epoch: u64,
        buf: usize,
    ) -> io::Result<Dynia> {
        let key = s
            .key
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no cluster key"))?;
        Ok(Dynia {
            socket: UdpSocket::from_std(socket)?,
            filter: ReceiveFilter::new(
                key,
                ClusterId::from_name(&s.cluster),
                s.vrid,
                s.local,
                member_set(s),
            ),
            counter: SendCounter::new(boot_epoch),
            buf: vec![0; buf].into_boxed_slice(),
        })
    }

    pub(crate) fn set_members(&mut self, s: &ElectionSettings) {
        self.filter.set_members(member_set(s));
    }

    pub(crate) async fn send(
        &mut self,
        s: &ElectionSettings,
        priority: u8,
        role: SenderRole,
        holds: bool,
    ) -> bool {
        let Some(key) = &s.key else { return false };
        let (epoch, seq) = self.counter.advance();
        let a = Advert {
            vrid: s.vrid,
            cluster: ClusterId::from_name(&s.cluster),
            sender: s.local,
            priority,
            interval_ms: declared_interval_ms(s, role),
            epoch,
            seq,
            generation: s.generation,
            config_hash: s.config_hash,
            role,
            holds,
        };
        let bytes: [u8; ADVERT_LEN] = encode(&a, key);
        for p in &s.peers {
            let _ = self
                .socket
                .send_to(&bytes, SocketAddr::new(p.addr, s.port))
                .await;
        }
        true
    }

    /// Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Received {
        let (n, from) = match self.socket.recv_from(&mut self.buf).await {
            Ok(x) => x,
            Err(e) => return Received::Failed(e),
        };
        match self.filter.accept(&self.buf[..n], Some(from.ip())) {
            Ok(a) => Received::Heard(AdvertHeard {
                sender: a.sender,
                priority: a.priority,
                interval_ms: a.interval_ms,
                role: a.role,
                generation: Some(a.generation),
                config_hash: Some(a.config_hash),
                holds: Some(a.holds),
            }),
            Err(r) => Received::Dropped {
                from: Some(from.ip()),
                reason: r.as_str(),
            },
        }
    }
}

/// A master declares its advert interval; a heartbeat its own period, which
/// every member judges its liveness by (`crate::liveness`).
fn declared_interval_ms(s: &ElectionSettings, role: SenderRole) -> u32 {
    let advert = u32::try_from(s.advert_interval.as_millis()).unwrap_or(u32::MAX);
    if role == SenderRole::Master {
        advert
    } else {
        crate::election::heartbeat_every_ms(advert)
    }
}
