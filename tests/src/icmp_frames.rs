//! ICMP frames for the packet tests: errors quoting a packet (as a router or host sends them),
//! and their decoding with every checksum (outer IPv4, ICMP, quoted IPv4) recomputed from
//! scratch by the test, independently of the datapath's arithmetic.

use anyhow::{Context, Result, ensure};
use etherparse::Ipv4Header;

use crate::frames::Mac;

pub const DEST_UNREACH: u8 = 3;
pub const PORT_UNREACH: u8 = 3;
pub const FRAG_NEEDED: u8 = 4;
pub const TIME_EXCEEDED: u8 = 11;

/// RFC 1071 checksum over `bytes` (an odd last byte padded with zero).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP error `kind`/`code` from `src` to `dst`, its 4 "rest of header" bytes `rest` (the
/// next-hop MTU for fragmentation needed), quoting the IPv4 header and first 8 L4 bytes of
/// `offending` (a whole Ethernet frame, as the sender of the error received it).
pub fn icmp_error(
    macs: (Mac, Mac),
    src: [u8; 4],
    dst: [u8; 4],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    offending: &[u8],
) -> Vec<u8> {
    let quoted = &offending[14..14 + 28];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let c = internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

/// An ICMP frame the datapath produced, decoded and verified.
#[derive(Debug)]
pub struct IcmpParsed {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub kind: u8,
    pub code: u8,
    pub rest: [u8; 4],
    /// The quoted IPv4 header (its checksum verified) and the 8 L4 bytes after it.
    pub quoted_ip: Ipv4Header,
    pub quoted_l4: [u8; 8],
}

impl IcmpParsed {
    pub fn quoted_ports(&self) -> (u16, u16) {
        (
            u16::from_be_bytes([self.quoted_l4[0], self.quoted_l4[1]]),
            u16::from_be_bytes([self.quoted_l4[2], self.quoted_l4[3]]),
        )
    }
}

/// Decodes an ICMP error frame, recomputing the outer IPv4, ICMP and quoted IPv4 checksums.
pub fn parse_icmp(frame: &[u8]) -> Result<IcmpParsed> {
    ensure!(frame.len() >= 14 + 20 + 8 + 28, "frame of {} bytes is too short for an ICMP error", frame.len());
    ensure!(frame[12..14] == [0x08, 0x00], "not ipv4");
    let (ip, _) = Ipv4Header::from_slice(&frame[14..]).context("outer ipv4")?;
    ensure!(ip.protocol.0 == 1, "not icmp: protocol {}", ip.protocol.0);
    ensure!(ip.header_checksum == ip.calc_header_checksum(), "outer ipv4 checksum");
    let icmp = &frame[34..14 + ip.total_len as usize];
    ensure!(
        internet_checksum(icmp) == 0,
        "icmp checksum {:#06x} does not verify",
        u16::from_be_bytes([icmp[2], icmp[3]])
    );
    let (quoted_ip, _) = Ipv4Header::from_slice(&icmp[8..]).context("quoted ipv4")?;
    ensure!(quoted_ip.header_checksum == quoted_ip.calc_header_checksum(), "quoted ipv4 checksum");
    Ok(IcmpParsed {
        src_mac: frame[6..12].try_into()?,
        dst_mac: frame[0..6].try_into()?,
        src: ip.source,
        dst: ip.destination,
        ttl: ip.time_to_live,
        kind: icmp[0],
        code: icmp[1],
        rest: icmp[4..8].try_into()?,
        quoted_l4: icmp[28..36].try_into()?,
        quoted_ip,
    })
}
