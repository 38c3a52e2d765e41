//! The `dynia` transport's advert: wire codec, replay guard, receive filter.
//!
//! Owns the bytes members exchange over UDP unicast: HMAC-SHA256 under the
//! cluster key, replay guard per sender (boot epoch + sequence), non-members
//! dropped. No I/O: the shell hands datagrams to [`ReceiveFilter::accept`] and
//! feeds [`Advert::to_input`] to the election. Layout and reasoning:
//! docs/election.md, "The dynia advert wire format".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::election::{AdvertIn, Input, MAX_ADVERT_INTERVAL_MS, MIN_ADVERT_INTERVAL_MS};

type HmacSha256 = Hmac<Sha256>;

pub const MAGIC: [u8; 4] = *b"DYNV";
pub const VERSION: u8 = 1;
/// Bytes covered by the MAC.
pub const BODY_LEN: usize = 96;
pub const MAC_LEN: usize = 32;
/// Total datagram length.
pub const ADVERT_LEN: usize = BODY_LEN + MAC_LEN;
/// Shortest cluster key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;
/// Bound on senders tracked by a [`ReplayGuard`] (members are at most 32).
pub const MAX_TRACKED_SENDERS: usize = 256;
/// Bound on a [`MemberSet`].
pub const MAX_MEMBERS: usize = 256;

/// Identifies a cluster on the wire: the first 8 bytes of
/// `SHA-256("dynia-cluster\0" || name)`, so two clusters sharing a VPC (and,
/// by mistake, a key) do not hear each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u64);

impl ClusterId {
    #[must_use]
    pub fn from_name(name: &str) -> ClusterId {
        let mut h = Sha256::new();
        h.update(b"dynia-cluster\0");
        h.update(name.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        ClusterId(u64::from_be_bytes(b))
    }
}

/// The cluster key, keyed once (each packet clones the keyed state).
/// Its `Debug` never shows the key.
#[derive(Clone)]
pub struct AdvertKey {
    mac: HmacSha256,
}

impl AdvertKey {
    /// `key` is the content of the cluster key file (at least 16 bytes).
    pub fn new(key: &[u8]) -> Result<AdvertKey, KeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: key.len() });
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|_| KeyError::TooShort { len: 0 })?;
        Ok(AdvertKey { mac })
    }
}

impl fmt::Debug for AdvertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdvertKey(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the cluster key is {len} bytes; it must be at least {MIN_KEY_LEN} bytes (e.g. 32 random bytes)")]
    TooShort { len: usize },
}

/// One decoded (or to-be-encoded) advert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub cluster: ClusterId,
    /// The sender's primary address (its member `private_ip`).
    pub sender: IpAddr,
    /// 0 = resign, else 1..=254.
    pub priority: u8,
    pub interval_ms: u32,
    pub epoch: u64,
    pub seq: u64,
    /// The sender's cluster-document generation.
    pub generation: u64,
    /// The sender's cluster-document hash.
    pub config_hash: [u8; 32],
    /// What the sender is; only [`SenderRole::Master`] adverts feed the election.
    pub role: SenderRole,
    /// The sender holds the Reserved IP: its claim completed. A master that
    /// hands over (SIGTERM) lets go of the address only once its successor
    /// says this, so no client is left pointing at nobody.
    pub holds: bool,
}

/// Flag bit of byte 93: the sender holds the Reserved IP.
const FLAG_HOLDS: u8 = 0x01;

/// The sender's election role, carried in every advert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SenderRole {
    Master,
    Backup,
    Fault,
}

impl SenderRole {
    fn to_byte(self) -> u8 {
        match self {
            SenderRole::Master => 1,
            SenderRole::Backup => 2,
            SenderRole::Fault => 3,
        }
    }

    fn from_byte(b: u8) -> Option<SenderRole> {
        match b {
            1 => Some(SenderRole::Master),
            2 => Some(SenderRole::Backup),
            3 => Some(SenderRole::Fault),
            _ => None,
        }
    }

    /// The `/status.json` spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SenderRole::Master => "master",
            SenderRole::Backup => "backup",
            SenderRole::Fault => "fault",
        }
    }
}

impl Advert {
    /// What the election needs from it.
    #[must_use]
    pub fn to_input(&self) -> Input {
        Input::Advert(AdvertIn {
            from: self.sender,
            priority: self.priority,
            interval_ms: self.interval_ms,
        })
    }

    /// Field bounds that the wire format requires.
    fn fields_valid(&self) -> bool {
        self.priority != 255
            && (MIN_ADVERT_INTERVAL_MS..=MAX_ADVERT_INTERVAL_MS).contains(&self.interval_ms)
    }
}

/// Why bytes are not an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    #[error("datagram of {len} bytes is shorter than the advert header")]
    Truncated { len: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported advert version {0}")]
    UnsupportedVersion(u8),
    #[error("advert length {len}, expected {ADVERT_LEN}")]
    BadLength { len: usize },
    #[error("advert MAC does not verify (wrong cluster key or forged)")]
    BadMac,
    #[error("authenticated advert has an invalid field: {0}")]
    Malformed(&'static str),
}

/// Serialises `a` and appends its MAC. `a` must have valid fields (priority
/// not 255, interval in bounds); receivers refuse anything else as
/// [`AdvertError::Malformed`].
#[must_use]
pub fn encode(a: &Advert, key: &AdvertKey) -> [u8; ADVERT_LEN] {
    debug_assert!(a.fields_valid(), "encoding an invalid advert: {a:?}");
    let mut b = [0u8; ADVERT_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = a.vrid;
    b[6] = a.priority;
    match a.sender {
        IpAddr::V4(v4) => {
            b[7] = 4;
            b[20..24].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            b[7] = 6;
            b[20..36].copy_from_slice(&v6.octets());
        }
    }
    b[8..12].copy_from_slice(&a.interval_ms.to_be_bytes());
    b[12..20].copy_from_slice(&a.cluster.0.to_be_bytes());
    b[36..44].copy_from_slice(&a.epoch.to_be_bytes());
    b[44..52].copy_from_slice(&a.seq.to_be_bytes());
    b[52..60].copy_from_slice(&a.generation.to_be_bytes());
    b[60..92].copy_from_slice(&a.config_hash);
    b[92] = a.role.to_byte();
    b[93] = if a.holds { FLAG_HOLDS } else { 0 };
    let mut mac = key.mac.clone();
    mac.update(&b[..BODY_LEN]);
    b[BODY_LEN..].copy_from_slice(&mac.finalize().into_bytes());
    b
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

/// Parses and authenticates one datagram. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], key: &AdvertKey) -> Result<Advert, AdvertError> {
    if bytes.len() < 5 {
        return Err(AdvertError::Truncated { len: bytes.len() });
    }
    if bytes[0..4] != MAGIC {
        return Err(AdvertError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(AdvertError::UnsupportedVersion(bytes[4]));
    }
    if bytes.len() < ADVERT_LEN {
        return Err(AdvertError::Truncated { len: bytes.len() });
    }
    if bytes.len() != ADVERT_LEN {
        return Err(AdvertError::BadLength { len: bytes.len() });
    }
    let mut mac = key.mac.clone();
    mac.update(&bytes[..BODY_LEN]);
    mac.verify_slice(&bytes[BODY_LEN..])
        .map_err(|_| AdvertError::BadMac)?;

    let sender = match bytes[7] {
        4 => {
            if bytes[24..36].iter().any(|&x| x != 0) {
                return Err(AdvertError::Malformed("IPv4 sender with non-zero padding"));
            }
            IpAddr::V4(Ipv4Addr::new(bytes[20], bytes[21], bytes[22], bytes[23]))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&bytes[20..36]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(AdvertError::Malformed("address family")),
    };
    let mut config_hash = [0u8; 32];
    config_hash.copy_from_slice(&bytes[60..92]);
    let role = SenderRole::from_byte(bytes[92]).ok_or(AdvertError::Malformed("sender role"))?;
    if bytes[93] & !FLAG_HOLDS != 0 {
        return Err(AdvertError::Malformed("unknown flag bits"));
    }
    if bytes[94..96].iter().any(|&x| x != 0) {
        return Err(AdvertError::Malformed("reserved bytes not zero"));
    }
    let a = Advert {
        vrid: bytes[5],
        cluster: ClusterId(be_u64(&bytes[12..20])),
        sender,
        priority: bytes[6],
        interval_ms: be_u32(&bytes[8..12]),
        epoch: be_u64(&bytes[36..44]),
        seq: be_u64(&bytes[44..52]),
        generation: be_u64(&bytes[52..60]),
        config_hash,
        role,
        holds: bytes[93] & FLAG_HOLDS != 0,
    };
    if a.priority == 255 {
        return Err(AdvertError::Malformed("priority 255"));
    }
    if !a.fields_valid() {
        return Err(AdvertError::Malformed("advert interval out of bounds"));
    }
    Ok(a)
}

/// Why the replay guard refused an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    /// Same epoch, sequence not above the last one accepted.
    OldSeq,
    /// Epoch below the last one accepted (a previous boot's packet).
    OldEpoch,
    /// New sender but [`MAX_TRACKED_SENDERS`] already tracked.
    TableFull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LastAccepted {
    sender: IpAddr,
    epoch: u64,
    seq: u64,
}

/// Per sender, the highest (epoch, seq) accepted. Accepts a higher epoch (the
/// sender rebooted) or the same epoch with a higher sequence; drops the rest.
/// Bounded to [`MAX_TRACKED_SENDERS`]; linear scan (members ≤ 32).
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    seen: Vec<LastAccepted>,
}

impl ReplayGuard {
    #[must_use]
    pub fn new() -> ReplayGuard {
        ReplayGuard {
            seen: Vec::with_capacity(32),
        }
    }

    /// What [`ReplayGuard::check_and_record`] would answer, without recording.
    #[must_use]
    pub fn check(&self, sender: IpAddr, epoch: u64, seq: u64) -> ReplayVerdict {
        match self.seen.iter().find(|s| s.sender == sender) {
            Some(s) if epoch < s.epoch => ReplayVerdict::OldEpoch,
            Some(s) if epoch == s.epoch && seq <= s.seq => ReplayVerdict::OldSeq,
            Some(_) => ReplayVerdict::Fresh,
            None if self.seen.len() >= MAX_TRACKED_SENDERS => ReplayVerdict::TableFull,
            None => ReplayVerdict::Fresh,
        }
    }

    /// Checks and, when fresh, records (epoch, seq) as the sender's latest.
    pub fn check_and_record(&mut self, sender: IpAddr, epoch: u64, seq: u64) -> ReplayVerdict {
        let v = self.check(sender, epoch, seq);
        if v == ReplayVerdict::Fresh {
            if let Some(s) = self.seen.iter_mut().find(|s| s.sender == sender) {
                s.epoch = epoch;
                s.seq = seq;
            } else {
                self.seen.push(LastAccepted { sender, epoch, seq });
            }
        }
        debug_assert!(self.seen.len() <= MAX_TRACKED_SENDERS);
        v
    }

    /// The latest (epoch, seq) accepted from `sender`.
    #[must_use]
    pub fn last(&self, sender: IpAddr) -> Option<(u64, u64)> {
        self.seen
            .iter()
            .find(|s| s.sender == sender)
            .map(|s| (s.epoch, s.seq))
    }

    /// Forgets senders for which `keep` is false (members removed).
    pub fn retain(&mut self, mut keep: impl FnMut(IpAddr) -> bool) {
        self.seen.retain(|s| keep(s.sender));
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The members' primary addresses (bounded by [`MAX_MEMBERS`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSet {
    addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberSetError {
    #[error("{len} members; at most {MAX_MEMBERS} are supported")]
    TooMany { len: usize },
}

impl MemberSet {
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>) -> Result<MemberSet, MemberSetError> {
        let mut v: Vec<IpAddr> = addrs.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        if v.len() > MAX_MEMBERS {
            return Err(MemberSetError::TooMany { len: v.len() });
        }
        Ok(MemberSet { addrs: v })
    }

    #[must_use]
    pub fn contains(&self, a: IpAddr) -> bool {
        self.addrs.binary_search(&a).is_ok()
    }

    #[must_use]
    pub fn as_slice(&self) -> &[IpAddr] {
        &self.addrs
    }
}

/// Why a received datagram was dropped; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("truncated")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version")]
    BadVersion,
    #[error("bad length")]
    BadLength,
    #[error("bad MAC")]
    BadMac,
    #[error("malformed")]
    Malformed,
    #[error("another cluster")]
    WrongCluster,
    #[error("another VRID")]
    WrongVrid,
    #[error("sender is not a member")]
    NotMember,
    #[error("UDP source differs from the authenticated sender")]
    SourceMismatch,
    #[error("our own advert")]
    Own,
    #[error("replayed (old sequence)")]
    ReplayOldSeq,
    #[error("replayed (old epoch)")]
    ReplayOldEpoch,
    #[error("replay table full")]
    ReplayTableFull,
}

impl DropReason {
    /// All reasons, e.g. to pre-register metric label values.
    pub const ALL: [DropReason; 14] = [
        DropReason::Truncated,
        DropReason::BadMagic,
        DropReason::BadVersion,
        DropReason::BadLength,
        DropReason::BadMac,
        DropReason::Malformed,
        DropReason::WrongCluster,
        DropReason::WrongVrid,
        DropReason::NotMember,
        DropReason::SourceMismatch,
        DropReason::Own,
        DropReason::ReplayOldSeq,
        DropReason::ReplayOldEpoch,
        DropReason::ReplayTableFull,
    ];

    /// Stable snake_case label for `dynia_election_adverts_dropped_total{reason}`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadMagic => "bad_magic",
            DropReason::BadVersion => "bad_version",
            DropReason::BadLength => "bad_length",
            DropReason::BadMac => "bad_mac",
            DropReason::Malformed => "malformed",
            DropReason::WrongCluster => "wrong_cluster",
            DropReason::WrongVrid => "wrong_vrid",
            DropReason::NotMember => "not_member",
            DropReason::SourceMismatch => "source_mismatch",
            DropReason::Own => "own",
            DropReason::ReplayOldSeq => "replay_old_seq",
            DropReason::ReplayOldEpoch => "replay_old_epoch",
            DropReason::ReplayTableFull => "replay_table_full",
        }
    }
}

impl From<AdvertError> for DropReason {
    fn from(e: AdvertError) -> DropReason {
        match e {
            AdvertError::Truncated { .. } => DropReason::Truncated,
            AdvertError::BadMagic => DropReason::BadMagic,
            AdvertError::UnsupportedVersion(_) => DropReason::BadVersion,
            AdvertError::BadLength { .. } => DropReason::BadLength,
            AdvertError::BadMac => DropReason::BadMac,
            AdvertError::Malformed(_) => DropReason::Malformed,
        }
    }
}

/// The whole receive path of the `dynia` transport: decode + MAC, cluster
/// and VRID match, not our own, membership, optional UDP-source match, then
/// replay (recorded only for adverts that passed everything else).
#[derive(Clone, Debug)]
pub struct ReceiveFilter {
    key: AdvertKey,
    cluster: ClusterId,
    vrid: u8,
    local: IpAddr,
    members: MemberSet,
    guard: ReplayGuard,
}

impl ReceiveFilter {
    #[must_use]
    pub fn new(
        key: AdvertKey,
        cluster: ClusterId,
        vrid: u8,
        local: IpAddr,
        members: MemberSet,
    ) -> ReceiveFilter {
        ReceiveFilter {
            key,
            cluster,
            vrid,
            local,
            members,
            guard: ReplayGuard::new(),
        }
    }

    /// Replaces the member set (cluster document applied) and forgets the
    /// replay state of removed members.
    pub fn set_members(&mut self, members: MemberSet) {
        self.guard.retain(|a| members.contains(a));
        self.members = members;
    }

    #[must_use]
    pub fn members(&self) -> &MemberSet {
        &self.members
    }

    #[must_use]
    pub fn replay_guard(&self) -> &ReplayGuard {
        &self.guard
    }

    /// Filters one datagram. `source` is the UDP source address when known;
    /// when given it must equal the authenticated sender.
    pub fn accept(&mut self, bytes: &[u8], source: Option<IpAddr>) -> Result<Advert, DropReason> {
        let a = decode(bytes, &self.key)?;
        if a.cluster != self.cluster {
            return Err(DropReason::WrongCluster);
        }
        if a.vrid != self.vrid {
            return Err(DropReason::WrongVrid);
        }
        if a.sender == self.local {
            return Err(DropReason::Own);
        }
        if !self.members.contains(a.sender) {
            return Err(DropReason::NotMember);
        }
        if source.is_some_and(|s| s != a.sender) {
            return Err(DropReason::SourceMismatch);
        }
        match self.guard.check_and_record(a.sender, a.epoch, a.seq) {
            ReplayVerdict::Fresh => Ok(a),
            ReplayVerdict::OldSeq => Err(DropReason::ReplayOldSeq),
            ReplayVerdict::OldEpoch => Err(DropReason::ReplayOldEpoch),
            ReplayVerdict::TableFull => Err(DropReason::ReplayTableFull),
        }
    }
}

/// The sending side's (epoch, seq) counter.
///
/// `epoch` must strictly increase across restarts of this node; the shell
/// should use the Unix time in milliseconds at boot (or a persisted counter).
/// `seq` starts at 1 and increases by one per advert sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendCounter {
    epoch: u64,
    seq: u64,
}

impl SendCounter {
    #[must_use]
    pub const fn new(epoch: u64) -> SendCounter {
        SendCounter { epoch, seq: 0 }
    }

    /// (epoch, seq) for the next advert.
    pub fn advance(&mut self) -> (u64, u64) {
        // u64 sequence at 1000 adverts/s lasts ~5.8e8 years; saturate anyway.
        self.seq = self.seq.saturating_add(1);
        (self.epoch, self.seq)
    }

    #[must_use]
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }
}
