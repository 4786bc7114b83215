//! Rewrites a packet's addresses and ports to what its flow entry says, decrements the TTL, and
//! updates the IPv4, TCP and UDP checksums incrementally (RFC 1624, `lb_common::csum`).
//! [`rewrite`] adds what a flow's service asks for: MSS clamping on SYN and SYN-ACK, and
//! checksums from scratch on overlay replies.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    DIR_TO_CLIENT, Flow, PROTO_TCP, SERVICE_OVERLAY,
    csum::{replace2, replace4, udp_nonzero},
};

use crate::{
    l4csum, mss,
    parse::{self, ETH_LEN, IPV4_LEN, L4_OFF, Packet, TCP_LEN, UDP_LEN, ptr_at},
    select,
};

/// Offset of the checksum inside the TCP and UDP headers.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;

/// Reads a 16-bit word in wire byte order (see `lb_common::csum`).
#[inline(always)]
pub unsafe fn load16(p: *mut u8) -> u16 {
    // SAFETY: caller checked bounds; bytes kept in wire order (see lb_common::csum).
    u16::from_ne_bytes(unsafe { (p as *const [u8; 2]).read_unaligned() })
}

#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: caller checked bounds.
    unsafe { (p as *mut [u8; 2]).write_unaligned(v.to_ne_bytes()) }
}

#[inline(always)]
pub unsafe fn store_addr(p: *mut u8, addr: [u8; 4]) {
    // SAFETY: caller checked bounds.
    unsafe { (p as *mut [u8; 4]).write_unaligned(addr) }
}

/// A port as the 16-bit word it is on the wire, in the packet's byte order.
#[inline(always)]
pub fn wire16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// An address as the 32-bit word it is on the wire, in the packet's byte order.
#[inline(always)]
pub fn wire32(addr: [u8; 4]) -> u32 {
    u32::from_ne_bytes(addr)
}

/// Everything done to a packet of `flow` on its way through: the MSS of a SYN or SYN-ACK clamped
/// to the service's, the NAT rewrite, and for replies of overlay services the L4 checksum from
/// scratch. Only SYNs and replies look the service up. Returns false as [`translate`] does.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, flow: &Flow) -> bool {
    let syn = pkt.tcp_flags & parse::TCP_FLAG_SYN != 0;
    let reply = flow.direction == DIR_TO_CLIENT;
    if !syn && !reply {
        return translate(ctx, pkt, flow);
    }
    let service = select::service(flow.service_id).unwrap_or_default();
    if syn && service.mss != 0 {
        mss::clamp_mss(ctx, service.mss);
    }
    if !translate(ctx, pkt, flow) {
        return false;
    }
    if reply && service.flags & SERVICE_OVERLAY != 0 {
        return l4csum::recompute_l4_checksum(ctx, pkt);
    }
    true
}

/// Rewrites the IPv4 header at `ip` of `pkt` to `flow`'s new source and destination and
/// decrements the TTL, updating the header checksum.
///
/// # Safety
/// `ip` must point at the packet's bounds-checked 20-byte IPv4 header.
#[inline(always)]
pub unsafe fn rewrite_ipv4(ip: *mut u8, pkt: &Packet, flow: &Flow) {
    let key = &pkt.key;
    // SAFETY: offsets 8..20 lie inside the header (the caller's guarantee).
    unsafe {
        let ttl_proto = ip.add(8);
        let old_tp = load16(ttl_proto);
        let new_tp = u16::from_ne_bytes([pkt.ttl.wrapping_sub(1), key.proto]);
        let mut check = load16(ip.add(10));
        check = replace4(check, wire32(key.src_addr), wire32(flow.new_src_addr));
        check = replace4(check, wire32(key.dst_addr), wire32(flow.new_dst_addr));
        check = replace2(check, old_tp, new_tp);
        store16(ttl_proto, new_tp);
        store16(ip.add(10), check);
        store_addr(ip.add(12), flow.new_src_addr);
        store_addr(ip.add(16), flow.new_dst_addr);
    }
}

/// Applies `flow`'s rewrite to the packet. Returns false only if the frame shrank under us,
/// which cannot happen (the bounds were checked by `parse`); the verifier needs the checks.
#[inline(always)]
pub fn translate(ctx: &XdpContext, pkt: &Packet, flow: &Flow) -> bool {
    let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN) else { return false };
    let ip = ip as *mut u8;
    let key = &pkt.key;
    let (old_src, old_dst) = (wire32(key.src_addr), wire32(key.dst_addr));
    let (new_src, new_dst) = (wire32(flow.new_src_addr), wire32(flow.new_dst_addr));

    // SAFETY: `ip` is the checked 20-byte header.
    unsafe { rewrite_ipv4(ip, pkt, flow) };

    // L4: ports, and the checksum over the pseudo-header and the ports.
    let (old_sp, old_dp) = (wire16(key.src_port), wire16(key.dst_port));
    let (new_sp, new_dp) = (wire16(flow.new_src_port), wire16(flow.new_dst_port));
    if key.proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<[u8; TCP_LEN]>(ctx, L4_OFF) else { return false };
        let tcp = tcp as *mut u8;
        // SAFETY: offsets 0..18 lie inside the checked 20-byte header.
        unsafe {
            let mut check = load16(tcp.add(TCP_CSUM_OFF));
            check = replace4(check, old_src, new_src);
            check = replace4(check, old_dst, new_dst);
            check = replace2(check, old_sp, new_sp);
            check = replace2(check, old_dp, new_dp);
            store16(tcp, new_sp);
            store16(tcp.add(2), new_dp);
            store16(tcp.add(TCP_CSUM_OFF), check);
        }
    } else {
        let Some(udp) = ptr_at::<[u8; UDP_LEN]>(ctx, L4_OFF) else { return false };
        let udp = udp as *mut u8;
        // SAFETY: offsets 0..8 lie inside the checked 8-byte header.
        unsafe {
            let old = load16(udp.add(UDP_CSUM_OFF));
            // A zero UDP checksum means "none" and stays zero.
            if old != 0 {
                let mut check = replace4(old, old_src, new_src);
                check = replace4(check, old_dst, new_dst);
                check = replace2(check, old_sp, new_sp);
                check = replace2(check, old_dp, new_dp);
                store16(udp.add(UDP_CSUM_OFF), udp_nonzero(check));
            }
            store16(udp, new_sp);
            store16(udp.add(2), new_dp);
        }
    }
    true
}
