//! Bounds-checked parsing of Ethernet / IPv4 / TCP / UDP / ICMP. Every read is preceded by a check
//! against `data_end` the verifier can follow; anything unexpected becomes a counted verdict.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, Reason};

use crate::verdict::Verdict;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
/// Offset of the L4 header: IPv4 headers with options are passed, so it is constant.
pub const L4_OFF: usize = ETH_LEN + IPV4_LEN;
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const ICMP_LEN: usize = 8;
pub const PROTO_ICMP: u8 = 1;

const ETH_P_IPV4: u16 = 0x0800;
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// TCP header flag bits (the connection states are `lb_common::CT_*`).
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// A TCP, UDP or ICMP over IPv4 packet, bounds-checked up to the end of its L4 header (ICMP:
/// its 8-byte header; ports are 0).
pub struct Packet {
    pub frame_len: u32,
    /// The 5-tuple as on the wire (addresses in network order, ports in host order).
    pub key: FlowKey,
    /// IPv4 total length (host order).
    pub ip_len: u16,
    pub ttl: u8,
    /// TCP flags (0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// The IPv4 "don't fragment" bit.
    pub dont_fragment: bool,
}

impl Packet {
    #[inline(always)]
    pub fn is_syn_without_ack(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Pointer to a `T` at `off` bytes into the frame, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn read_u16_be(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    Some(u16::from_be_bytes(unsafe { p.read_unaligned() }))
}

#[inline(always)]
fn read_u32_be(ctx: &XdpContext, off: usize) -> Option<u32> {
    let p = ptr_at::<[u8; 4]>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    Some(u32::from_be_bytes(unsafe { p.read_unaligned() }))
}

/// The TCP sequence number of a parsed TCP packet (read only where the handshake needs it).
#[inline(always)]
pub fn tcp_seq(ctx: &XdpContext) -> Option<u32> {
    read_u32_be(ctx, L4_OFF + 4)
}

/// The TCP acknowledgment number of a parsed TCP packet.
#[inline(always)]
pub fn tcp_ack(ctx: &XdpContext) -> Option<u32> {
    read_u32_be(ctx, L4_OFF + 8)
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    let p = ptr_at::<u8>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    Some(unsafe { p.read() })
}

#[inline(always)]
fn read_addr(ctx: &XdpContext, off: usize) -> Option<[u8; 4]> {
    let p = ptr_at::<[u8; 4]>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    Some(unsafe { p.read_unaligned() })
}

/// Parses the frame, or says why the datapath will not translate it.
#[inline(always)]
pub fn parse_packet(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let frame_len = (ctx.data_end() - ctx.data()) as u32;

    // Ethernet
    let ether_type = match read_u16_be(ctx, 12) {
        Some(t) => t,
        None => return Err(Verdict::malformed(Reason::MalformedEth)),
    };
    if ether_type != ETH_P_IPV4 {
        return Err(Verdict::pass(Reason::PassNotIpv4));
    }

    // IPv4: the fixed 20 bytes must be present before anything else is read.
    if ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN).is_none() {
        return Err(Verdict::malformed(Reason::MalformedIpv4));
    }
    let (Some(ver_ihl), Some(ip_len), Some(frag), Some(ttl), Some(proto)) = (
        read_u8(ctx, ETH_LEN),
        read_u16_be(ctx, ETH_LEN + 2),
        read_u16_be(ctx, ETH_LEN + 6),
        read_u8(ctx, ETH_LEN + 8),
        read_u8(ctx, ETH_LEN + 9),
    ) else {
        return Err(Verdict::malformed(Reason::MalformedIpv4));
    };
    let ihl = (ver_ihl & 0x0f) as u32;
    if ver_ihl >> 4 != 4 || ihl < 5 || (ip_len as u32) < ihl * 4 || ip_len as u32 > frame_len - ETH_LEN as u32 {
        return Err(Verdict::malformed(Reason::MalformedIpv4));
    }
    if ihl > 5 {
        return Err(Verdict::pass(Reason::PassIpOptions));
    }
    if frag & (IP_MF | IP_OFFSET) != 0 {
        return Err(Verdict::pass(Reason::PassFragment));
    }
    let (Some(src_addr), Some(dst_addr)) = (read_addr(ctx, ETH_LEN + 12), read_addr(ctx, ETH_LEN + 16)) else {
        return Err(Verdict::malformed(Reason::MalformedIpv4));
    };
    let l4_len = ip_len as u32 - IPV4_LEN as u32;

    // TCP / UDP / ICMP
    let tcp_flags = match proto {
        PROTO_TCP => {
            let (Some(doff), Some(flags)) = (read_u8(ctx, L4_OFF + 12), read_u8(ctx, L4_OFF + 13)) else {
                return Err(Verdict::malformed(Reason::MalformedTcp));
            };
            let hdr_len = ((doff >> 4) as u32) * 4;
            if ptr_at::<[u8; TCP_LEN]>(ctx, L4_OFF).is_none() || hdr_len < TCP_LEN as u32 || hdr_len > l4_len {
                return Err(Verdict::malformed(Reason::MalformedTcp));
            }
            flags
        }
        PROTO_UDP => {
            if ptr_at::<[u8; UDP_LEN]>(ctx, L4_OFF).is_none() || l4_len < UDP_LEN as u32 {
                return Err(Verdict::malformed(Reason::MalformedUdp));
            }
            0
        }
        PROTO_ICMP => {
            if ptr_at::<[u8; ICMP_LEN]>(ctx, L4_OFF).is_none() || l4_len < ICMP_LEN as u32 {
                return Err(Verdict::malformed(Reason::MalformedIcmp));
            }
            // No ports: `icmp` reads what it needs.
            return Ok(Packet {
                frame_len,
                key: FlowKey { src_addr, dst_addr, src_port: 0, dst_port: 0, proto, _pad: [0; 3] },
                ip_len,
                ttl,
                tcp_flags: 0,
                dont_fragment: frag & IP_DF != 0,
            });
        }
        _ => return Err(Verdict::pass(Reason::PassNotTcpUdp)),
    };
    let (Some(src_port), Some(dst_port)) = (read_u16_be(ctx, L4_OFF), read_u16_be(ctx, L4_OFF + 2)) else {
        return Err(Verdict::malformed(Reason::MalformedUdp));
    };

    Ok(Packet {
        frame_len,
        key: FlowKey { src_addr, dst_addr, src_port, dst_port, proto, _pad: [0; 3] },
        ip_len,
        ttl,
        tcp_flags,
        dont_fragment: frag & IP_DF != 0,
    })
}
