//! RFC 5798 VRRPv3 advertisement codec for IPv4 (the IP protocol 112
//! payload, not the IPv4 header), keepalived-compatible, for the `vrrp3`
//! transport. Decoding borrows the datagram (no allocation per packet). The
//! layout and the two checksum conventions keepalived uses:
//! `docs/election.md`, "The VRRPv3 wire format".

use std::net::Ipv4Addr;

pub const VERSION: u8 = 3;
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The VRRP IPv4 multicast group.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Fixed part of the message.
pub const HEADER_LEN: usize = 8;
/// Count IPvX Addr is 8 bits.
pub const MAX_ADDRS: usize = 255;
/// Longest possible message.
pub const MAX_LEN: usize = HEADER_LEN + 4 * MAX_ADDRS;
/// Max Adver Int is 12 bits, in centiseconds.
pub const MAX_ADVER_INT_CS: u16 = 0x0fff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Vrrp3Error {
    #[error("VRRP message of {len} bytes is too short (need {need})")]
    Truncated { len: usize, need: usize },
    #[error("VRRP message of {len} bytes is longer than its {need} bytes")]
    TrailingBytes { len: usize, need: usize },
    #[error("VRRP version {0}, expected 3")]
    BadVersion(u8),
    #[error("VRRP type {0}, expected 1 (advertisement)")]
    BadType(u8),
    #[error("Max Adver Int is 0")]
    ZeroInterval,
    #[error("VRRP checksum mismatch")]
    BadChecksum,
    #[error("{0} addresses; at most 255")]
    TooManyAddrs(usize),
    #[error("Max Adver Int {0}cs out of 1..=4095")]
    IntervalOutOfRange(u16),
    #[error("output buffer of {len} bytes, need {need}")]
    BufferTooSmall { len: usize, need: usize },
}

/// A decoded advertisement, borrowing the datagram for its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vrrp3Packet<'a> {
    pub vrid: u8,
    pub priority: u8,
    /// Max Adver Int, centiseconds (1..=4095).
    pub max_adver_int_cs: u16,
    addrs: &'a [u8],
}

impl<'a> Vrrp3Packet<'a> {
    /// The advert interval in ms.
    #[must_use]
    pub fn interval_ms(&self) -> u32 {
        u32::from(self.max_adver_int_cs) * 10
    }

    #[must_use]
    pub fn addr_count(&self) -> usize {
        self.addrs.len() / 4
    }

    /// The virtual addresses carried.
    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.addrs
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
    }
}

/// One's complement sum of `data` (as big-endian 16-bit words, odd byte
/// padded with zero) added to `acc`, not yet folded.
fn sum_words(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The RFC 5798 §5.2.8 checksum over the pseudo-header and `msg` (with
/// `msg`'s checksum field taken as is: zero it to compute, keep it to verify
/// — a valid message then sums to 0).
#[must_use]
pub fn checksum(src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> u16 {
    debug_assert!(msg.len() <= MAX_LEN);
    let mut acc = sum_words(0, &src.octets());
    acc = sum_words(acc, &dst.octets());
    acc += u32::from(IPPROTO_VRRP);
    acc += msg.len() as u32; // ≤ MAX_LEN, fits
    acc = sum_words(acc, msg);
    !fold(acc)
}

/// Writes an advertisement into `out`; returns its length.
pub fn encode(
    vrid: u8,
    priority: u8,
    max_adver_int_cs: u16,
    addrs: &[Ipv4Addr],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    out: &mut [u8],
) -> Result<usize, Vrrp3Error> {
    if addrs.len() > MAX_ADDRS {
        return Err(Vrrp3Error::TooManyAddrs(addrs.len()));
    }
    if max_adver_int_cs == 0 || max_adver_int_cs > MAX_ADVER_INT_CS {
        return Err(Vrrp3Error::IntervalOutOfRange(max_adver_int_cs));
    }
    let len = HEADER_LEN + 4 * addrs.len();
    if out.len() < len {
        return Err(Vrrp3Error::BufferTooSmall {
            len: out.len(),
            need: len,
        });
    }
    let msg = &mut out[..len];
    msg[0] = (VERSION << 4) | TYPE_ADVERTISEMENT;
    msg[1] = vrid;
    msg[2] = priority;
    msg[3] = addrs.len() as u8; // ≤ 255 checked above
    msg[4..6].copy_from_slice(&max_adver_int_cs.to_be_bytes());
    msg[6] = 0;
    msg[7] = 0;
    for (i, a) in addrs.iter().enumerate() {
        let at = HEADER_LEN + 4 * i;
        msg[at..at + 4].copy_from_slice(&a.octets());
    }
    let c = checksum(src, dst, msg);
    msg[6..8].copy_from_slice(&c.to_be_bytes());
    debug_assert_eq!(checksum(src, dst, msg), 0);
    Ok(len)
}

/// Parses and verifies an advertisement received from `src` to `dst` (the
/// IPv4 header's addresses). Never panics, whatever the bytes. Reserved bits
/// are ignored (RFC 5798: "ignored on reception"); the VRID is returned for
/// the caller to match against its own.
pub fn decode(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Vrrp3Packet<'_>, Vrrp3Error> {
    if msg.len() < HEADER_LEN {
        return Err(Vrrp3Error::Truncated {
            len: msg.len(),
            need: HEADER_LEN,
        });
    }
    let version = msg[0] >> 4;
    if version != VERSION {
        return Err(Vrrp3Error::BadVersion(version));
    }
    let ty = msg[0] & 0x0f;
    if ty != TYPE_ADVERTISEMENT {
        return Err(Vrrp3Error::BadType(ty));
    }
    let need = HEADER_LEN + 4 * usize::from(msg[3]);
    if msg.len() < need {
        return Err(Vrrp3Error::Truncated {
            len: msg.len(),
            need,
        });
    }
    if msg.len() > need {
        return Err(Vrrp3Error::TrailingBytes {
            len: msg.len(),
            need,
        });
    }
    if checksum(src, dst, msg) != 0 {
        return Err(Vrrp3Error::BadChecksum);
    }
    let max_adver_int_cs = u16::from_be_bytes([msg[4], msg[5]]) & MAX_ADVER_INT_CS;
    if max_adver_int_cs == 0 {
        return Err(Vrrp3Error::ZeroInterval);
    }
    Ok(Vrrp3Packet {
        vrid: msg[1],
        priority: msg[2],
        max_adver_int_cs,
        addrs: &msg[HEADER_LEN..need],
    })
}

/// Which pseudo-header destination made a unicast packet's checksum verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumDst {
    /// The packet's real destination (RFC 5798, current keepalived).
    Actual,
    /// 224.0.0.18 although sent unicast (older keepalived).
    Multicast,
}

/// [`decode`] for a unicast packet: verifies the checksum with the real
/// destination first, then with 224.0.0.18 (older keepalived).
pub fn decode_unicast(
    msg: &[u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<(Vrrp3Packet<'_>, ChecksumDst), Vrrp3Error> {
    match decode(msg, src, dst) {
        Ok(p) => Ok((p, ChecksumDst::Actual)),
        Err(Vrrp3Error::BadChecksum) if dst != MULTICAST_V4 => {
            decode(msg, src, MULTICAST_V4).map(|p| (p, ChecksumDst::Multicast))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    /// Built by hand from the RFC layout:
    /// v3 type 1, VRID 51, priority 100, 1 address, 100 cs (1 s),
    /// 10.0.0.100, from 10.0.0.1 to 224.0.0.18.
    ///
    /// Checksum by hand (16-bit words):
    ///   pseudo-header: 0x0a00 + 0x0001 + 0xe000 + 0x0012 + 0x0070 (proto)
    ///                  + 0x000c (length 12)
    ///   message:       0x3133 + 0x6401 + 0x0064 + 0x0000 + 0x0a00 + 0x0064
    ///   sum = 0x1_8a8b -> fold 0x8a8c -> complement 0x7573.
    const KNOWN: [u8; 12] = [
        0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x75, 0x73, 10, 0, 0, 100,
    ];

    #[test]
    fn known_packet_checksum() {
        let mut zeroed = KNOWN;
        zeroed[6] = 0;
        zeroed[7] = 0;
        assert_eq!(checksum(SRC, MULTICAST_V4, &zeroed), 0x7573);
        let p = decode(&KNOWN, SRC, MULTICAST_V4).unwrap();
        assert_eq!(p.vrid, 51);
        assert_eq!(p.priority, 100);
        assert_eq!(p.max_adver_int_cs, 100);
        assert_eq!(p.interval_ms(), 1000);
        assert_eq!(
            p.addrs().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 100)]
        );
        let mut buf = [0u8; MAX_LEN];
        let n = encode(
            51,
            100,
            100,
            &[Ipv4Addr::new(10, 0, 0, 100)],
            SRC,
            MULTICAST_V4,
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..n], &KNOWN);
    }

    #[test]
    fn checksum_covers_pseudo_header() {
        // Same bytes to a unicast peer: the checksum no longer verifies.
        assert_eq!(
            decode(&KNOWN, SRC, Ipv4Addr::new(10, 0, 0, 2)),
            Err(Vrrp3Error::BadChecksum)
        );
        assert_eq!(
            decode(&KNOWN, Ipv4Addr::new(10, 0, 0, 3), MULTICAST_V4),
            Err(Vrrp3Error::BadChecksum)
        );
    }

    #[test]
    fn unicast_accepts_either_pseudo_header_destination() {
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        // KNOWN was summed with 224.0.0.18: what older keepalived sends unicast.
        let (p, how) = decode_unicast(&KNOWN, SRC, peer).unwrap();
        assert_eq!((p.vrid, how), (51, ChecksumDst::Multicast));
        let mut buf = [0u8; MAX_LEN];
        let n = encode(
            51,
            100,
            100,
            &[Ipv4Addr::new(10, 0, 0, 100)],
            SRC,
            peer,
            &mut buf,
        )
        .unwrap();
        let (_, how) = decode_unicast(&buf[..n], SRC, peer).unwrap();
        assert_eq!(how, ChecksumDst::Actual);
        buf[2] ^= 1;
        assert_eq!(
            decode_unicast(&buf[..n], SRC, peer),
            Err(Vrrp3Error::BadChecksum)
        );
    }

    #[test]
    fn round_trip_many_addrs_and_odd_fields() {
        let addrs: Vec<Ipv4Addr> = (0..=254u8).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        let dst = Ipv4Addr::new(10, 0, 0, 9);
        let mut buf = [0u8; MAX_LEN];
        for (n_addrs, prio, cs) in [(0usize, 0u8, 1u16), (1, 255, 4095), (255, 254, 20)] {
            let n = encode(7, prio, cs, &addrs[..n_addrs.min(255)], SRC, dst, &mut buf).unwrap();
            assert_eq!(n, HEADER_LEN + 4 * n_addrs);
            let p = decode(&buf[..n], SRC, dst).unwrap();
            assert_eq!((p.vrid, p.priority, p.max_adver_int_cs), (7, prio, cs));
            assert_eq!(p.addr_count(), n_addrs);
            assert!(p.addrs().eq(addrs[..n_addrs].iter().copied()));
        }
    }

    #[test]
    fn encode_refuses_bad_input() {
        let mut buf = [0u8; 16];
        assert_eq!(
            encode(1, 1, 0, &[], SRC, SRC, &mut buf),
            Err(Vrrp3Error::IntervalOutOfRange(0))
        );
        assert_eq!(
            encode(1, 1, 4096, &[], SRC, SRC, &mut buf),
            Err(Vrrp3Error::IntervalOutOfRange(4096))
        );
        assert!(matches!(
            encode(1, 1, 100, &[SRC; 3], SRC, SRC, &mut buf),
            Err(Vrrp3Error::BufferTooSmall { .. })
        ));
        let many = vec![SRC; 256];
        let mut big = [0u8; 2048];
        assert_eq!(
            encode(1, 1, 100, &many, SRC, SRC, &mut big),
            Err(Vrrp3Error::TooManyAddrs(256))
        );
    }

    #[test]
    fn decode_rejects() {
        let d = MULTICAST_V4;
        assert!(matches!(
            decode(&KNOWN[..7], SRC, d),
            Err(Vrrp3Error::Truncated { .. })
        ));
        assert!(matches!(
            decode(&KNOWN[..11], SRC, d),
            Err(Vrrp3Error::Truncated { .. })
        ));
        let mut long = [0u8; 13];
        long[..12].copy_from_slice(&KNOWN);
        assert!(matches!(
            decode(&long, SRC, d),
            Err(Vrrp3Error::TrailingBytes { .. })
        ));
        let mut v2 = KNOWN;
        v2[0] = 0x21;
        assert_eq!(decode(&v2, SRC, d), Err(Vrrp3Error::BadVersion(2)));
        let mut t2 = KNOWN;
        t2[0] = 0x32;
        assert_eq!(decode(&t2, SRC, d), Err(Vrrp3Error::BadType(2)));
        let mut flipped = KNOWN;
        flipped[2] ^= 1;
        assert_eq!(decode(&flipped, SRC, d), Err(Vrrp3Error::BadChecksum));
        // Interval 0 with a correct checksum.
        let mut zero = KNOWN;
        zero[4] = 0;
        zero[5] = 0;
        zero[6] = 0;
        zero[7] = 0;
        let c = checksum(SRC, d, &zero);
        zero[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(decode(&zero, SRC, d), Err(Vrrp3Error::ZeroInterval));
    }

    #[test]
    fn reserved_bits_ignored() {
        let mut r = KNOWN;
        r[4] |= 0xf0;
        r[6] = 0;
        r[7] = 0;
        let c = checksum(SRC, MULTICAST_V4, &r);
        r[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(decode(&r, SRC, MULTICAST_V4).unwrap().max_adver_int_cs, 100);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = [0u8; 64];
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            for b in buf.iter_mut().take(len) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if i % 3 == 0 && len > 0 {
                buf[0] = 0x31; // get past the version check more often
            }
            let _ = decode(&buf[..len], SRC, MULTICAST_V4);
        }
    }
}
