//! The bounds of the values a source reads, and their checks, in one place: VXLAN VNIs,
//! overlay MTUs (and the TCP MSS the planner derives from one), overlay subnets, SNAT port
//! ranges, UDP/TCP ports and backend weights. The file source and the Docker translation both validate through
//! these functions, so one value is accepted or refused the same way whichever source carries it;
//! each source only adds where the value came from (a line of the file, an option of a network).
//!
//! Bounds the datapath's maps impose (table sizes, default port ranges) are `lb_common::maps`'s:
//! the eBPF program shares them.

use std::{net::Ipv4Addr, ops::RangeInclusive};

use crate::model::Subnet;

/// VXLAN network identifiers are 24 bits (RFC 7348); 0 is not used. Docker's overlay driver
/// assigns them from 4096 up to the same 2^24 - 1.
pub const VNI: RangeInclusive<u32> = 1..=(1 << 24) - 1;
/// Overlay MTU bounds: IPv4's minimum reassembly size, up to a 9216-byte jumbo underlay (the
/// largest MTU most NICs take).
pub const OVERLAY_MTU: RangeInclusive<u16> = 576..=9216;
/// A 1500-byte underlay minus VXLAN's 50 bytes (Docker's default too).
pub const DEFAULT_OVERLAY_MTU: u16 = 1450;
/// IPv4 and TCP headers without options: MSS = MTU - this.
pub const TCP_IPV4_HEADERS: u16 = 40;
/// Subnet prefix lengths: /31 and /32 leave no room for endpoints and tasks, /0 overlaps all.
pub const SUBNET_PREFIX: RangeInclusive<u8> = 1..=30;
/// Fewest ports a SNAT range may have.
pub const MIN_SNAT_PORTS: u32 = 1024;
/// Largest accepted backend weight. Weights are relative; this bound keeps a typo such as
/// `weight = 10000000` from starving every other backend of Maglev slots.
pub const MAX_WEIGHT: u32 = 10_000;

/// Why a value is refused. The message names the value, never the field: the caller says
/// which field (and line, or network) it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{value} is out of range {}..={}", range.start(), range.end())]
    OutOfRange { value: i64, range: RangeInclusive<i64> },
    #[error("invalid subnet {0:?} (expected ADDR/PREFIX, e.g. \"198.19.1.0/24\")")]
    SubnetSyntax(String),
    #[error("invalid subnet {subnet:?}: {addr:?} is not an IPv4 address")]
    SubnetAddr { subnet: String, addr: String },
    #[error("invalid subnet {subnet:?}: bad prefix length {prefix:?}")]
    SubnetPrefixSyntax { subnet: String, prefix: String },
    #[error("invalid subnet {0:?}: prefix length must be {start}..={end}",
        start = SUBNET_PREFIX.start(), end = SUBNET_PREFIX.end())]
    SubnetPrefix(String),
    #[error("{given:?} has host bits set (did you mean \"{network}\"?)")]
    HostBits { given: String, network: Subnet },
    #[error("invalid port range {0:?} (expected \"FIRST-LAST\", e.g. \"16384-32767\")")]
    PortRangeSyntax(String),
    #[error("port range {0:?} is empty or starts at 0")]
    PortRangeEmpty(String),
    #[error("port range {0:?} is too small (at least {MIN_SNAT_PORTS} ports)")]
    PortRangeSmall(String),
}

fn in_range<T: Copy + Into<i64> + TryFrom<i64>>(value: i64, range: &RangeInclusive<T>) -> Result<T, Invalid> {
    let (start, end) = ((*range.start()).into(), (*range.end()).into());
    match T::try_from(value) {
        Ok(v) if (start..=end).contains(&value) => Ok(v),
        _ => Err(Invalid::OutOfRange { value, range: start..=end }),
    }
}

pub fn vni(value: i64) -> Result<u32, Invalid> {
    in_range(value, &VNI)
}

pub fn overlay_mtu(value: i64) -> Result<u16, Invalid> {
    in_range(value, &OVERLAY_MTU)
}

/// The TCP MSS that fits a packet in an overlay of `mtu` (see [`OVERLAY_MTU`]).
pub fn overlay_mss(mtu: u16) -> u16 {
    mtu.saturating_sub(TCP_IPV4_HEADERS)
}

/// A UDP or TCP port other than 0.
pub fn port(value: i64) -> Result<u16, Invalid> {
    in_range(value, &(1..=u16::MAX))
}

pub fn weight(value: i64) -> Result<u32, Invalid> {
    in_range(value, &(0..=MAX_WEIGHT))
}

/// `ADDR/PREFIX`, an IPv4 network with no host bits set and a prefix in [`SUBNET_PREFIX`].
pub fn subnet(s: &str) -> Result<Subnet, Invalid> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| Invalid::SubnetSyntax(s.to_owned()))?;
    let addr: Ipv4Addr =
        addr.parse().map_err(|_| Invalid::SubnetAddr { subnet: s.to_owned(), addr: addr.to_owned() })?;
    let prefix: u8 =
        prefix.parse().map_err(|_| Invalid::SubnetPrefixSyntax { subnet: s.to_owned(), prefix: prefix.to_owned() })?;
    if !SUBNET_PREFIX.contains(&prefix) {
        return Err(Invalid::SubnetPrefix(s.to_owned()));
    }
    let given = Subnet { addr, prefix };
    let network = Subnet { addr: Ipv4Addr::from(u32::from(addr) & given.mask()), prefix };
    if network != given {
        return Err(Invalid::HostBits { given: s.to_owned(), network });
    }
    Ok(given)
}

/// `FIRST-LAST`, inclusive, not starting at 0, at least [`MIN_SNAT_PORTS`] ports.
pub fn snat_ports(s: &str) -> Result<(u16, u16), Invalid> {
    let syntax = || Invalid::PortRangeSyntax(s.to_owned());
    let (lo, hi) = s.split_once('-').ok_or_else(syntax)?;
    let lo: u16 = lo.trim().parse().map_err(|_| syntax())?;
    let hi: u16 = hi.trim().parse().map_err(|_| syntax())?;
    if lo == 0 || lo > hi {
        return Err(Invalid::PortRangeEmpty(s.to_owned()));
    }
    if u32::from(hi - lo) + 1 < MIN_SNAT_PORTS {
        return Err(Invalid::PortRangeSmall(s.to_owned()));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnis_are_24_bits_without_0() {
        assert_eq!(vni(1), Ok(1));
        assert_eq!(vni(16_777_215), Ok(16_777_215));
        for bad in [0, -1, 16_777_216, i64::MAX] {
            assert_eq!(vni(bad).unwrap_err().to_string(), format!("{bad} is out of range 1..=16777215"));
        }
    }

    #[test]
    fn overlay_mtus_go_up_to_jumbo_frames() {
        assert_eq!(overlay_mtu(576), Ok(576));
        assert_eq!(overlay_mtu(9216), Ok(9216));
        assert_eq!(overlay_mtu(9217).unwrap_err().to_string(), "9217 is out of range 576..=9216");
        assert_eq!(overlay_mtu(70_000).unwrap_err().to_string(), "70000 is out of range 576..=9216");
        assert_eq!(overlay_mss(DEFAULT_OVERLAY_MTU), 1410);
    }

    #[test]
    fn ports_exclude_0() {
        assert_eq!(port(4789), Ok(4789));
        assert_eq!(port(0).unwrap_err().to_string(), "0 is out of range 1..=65535");
        assert_eq!(port(65_536).unwrap_err().to_string(), "65536 is out of range 1..=65535");
    }

    #[test]
    fn weights_go_from_drain_to_the_cap() {
        assert_eq!(weight(0), Ok(0));
        assert_eq!(weight(10_000), Ok(10_000));
        assert_eq!(weight(-1).unwrap_err().to_string(), "-1 is out of range 0..=10000");
    }

    #[test]
    fn subnets_are_networks_with_room_for_hosts() {
        assert_eq!(subnet("198.19.1.0/24"), Ok(Subnet { addr: Ipv4Addr::new(198, 19, 1, 0), prefix: 24 }));
        assert_eq!(subnet("10.0.0.0/30").map(|s| s.prefix), Ok(30));
        for (bad, why) in [
            ("198.19.1.0", r#"invalid subnet "198.19.1.0" (expected ADDR/PREFIX, e.g. "198.19.1.0/24")"#),
            ("198.19.1/24", r#"invalid subnet "198.19.1/24": "198.19.1" is not an IPv4 address"#),
            ("fd00::/64", r#"invalid subnet "fd00::/64": "fd00::" is not an IPv4 address"#),
            ("198.19.1.0/x", r#"invalid subnet "198.19.1.0/x": bad prefix length "x""#),
            ("198.19.1.0/31", r#"invalid subnet "198.19.1.0/31": prefix length must be 1..=30"#),
            ("0.0.0.0/0", r#"invalid subnet "0.0.0.0/0": prefix length must be 1..=30"#),
            ("198.19.1.5/24", r#""198.19.1.5/24" has host bits set (did you mean "198.19.1.0/24"?)"#),
        ] {
            assert_eq!(subnet(bad).unwrap_err().to_string(), why, "{bad}");
        }
    }

    #[test]
    fn snat_port_ranges_hold_at_least_1024_ports() {
        assert_eq!(snat_ports("16384-32767"), Ok((16384, 32767)));
        assert_eq!(snat_ports(" 1024 - 2047 "), Ok((1024, 2047)));
        for (bad, why) in [
            ("1024", r#"invalid port range "1024" (expected "FIRST-LAST", e.g. "16384-32767")"#),
            ("1024-70000", r#"invalid port range "1024-70000" (expected "FIRST-LAST", e.g. "16384-32767")"#),
            ("0-2000", r#"port range "0-2000" is empty or starts at 0"#),
            ("32767-16384", r#"port range "32767-16384" is empty or starts at 0"#),
            ("1024-2046", r#"port range "1024-2046" is too small (at least 1024 ports)"#),
        ] {
            assert_eq!(snat_ports(bad).unwrap_err().to_string(), why, "{bad}");
        }
    }
}
