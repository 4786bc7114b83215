//! ICMP for tracked connections, so path-MTU discovery and error reporting work through the NAT.
//!
//! - [`translate_error`]: an ICMP error (destination unreachable, including fragmentation
//!   needed, or time exceeded) quotes the IPv4 header and first 8 bytes of the packet that caused
//!   it. That packet was one this node translated, so the quoted tuple, reversed, is the key of a
//!   connection entry, and that entry says where the error must go: its translation is exactly
//!   the reverse of the quoted packet's. The quoted header is put back the way its sender wrote
//!   it, the outer addresses become that entry's, and checksums are updated incrementally: the
//!   quoted IPv4 and UDP checksums, the ICMP checksum (over the quoted bytes), the outer IPv4
//!   checksum.
//! - [`frag_needed`]: a packet with "don't fragment" too big for the egress MTU is answered from
//!   XDP with ICMP fragmentation needed, from the address the sender used, quoting its header,
//!   instead of being handed to the kernel half-translated.

use aya_ebpf::{
    EbpfContext, bindings::xdp_action::XDP_TX, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use lb_common::{
    Flow, FlowKey, PROTO_TCP, PROTO_UDP, Reason,
    csum::{fold, replace2, replace4},
};

use crate::{
    conntrack,
    maps::TX_PORTS_MAP,
    nat::{load16, rewrite_ipv4, store_addr, store16, wire16, wire32},
    parse::{ETH_LEN, ICMP_LEN, IPV4_LEN, L4_OFF, Packet, ptr_at},
    verdict::Verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Where the quoted IPv4 header starts, and the bytes of it (and of its L4 header) read.
const QUOTED_OFF: usize = L4_OFF + ICMP_LEN;
const QUOTED_LEN: usize = IPV4_LEN + 8;
/// Offset of the quoted UDP checksum inside the quoted bytes.
const QUOTED_UDP_CSUM: usize = IPV4_LEN + 6;

/// The quoted packet's tuple, if this ICMP packet is an error quoting a TCP or UDP header.
#[inline(always)]
fn quoted_tuple(ctx: &XdpContext) -> Result<Option<FlowKey>, Verdict> {
    let Some(icmp) = ptr_at::<[u8; ICMP_LEN]>(ctx, L4_OFF) else {
        return Err(Verdict::malformed(Reason::MalformedIcmp));
    };
    // SAFETY: bounds-checked above.
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return Ok(None);
    }
    let Some(q) = ptr_at::<[u8; QUOTED_LEN]>(ctx, QUOTED_OFF) else {
        return Err(Verdict::malformed(Reason::MalformedIcmp));
    };
    // SAFETY: bounds-checked above.
    let q = unsafe { &*q };
    let proto = q[9];
    if q[0] != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        // Options in the quoted header, or another protocol: nothing of ours.
        return Ok(None);
    }
    Ok(Some(FlowKey {
        src_addr: [q[12], q[13], q[14], q[15]],
        dst_addr: [q[16], q[17], q[18], q[19]],
        src_port: u16::from_be_bytes([q[20], q[21]]),
        dst_port: u16::from_be_bytes([q[22], q[23]]),
        proto,
        _pad: [0; 3],
    }))
}

/// What an ICMP packet is about.
pub enum ErrorAbout {
    /// Not an error this module handles (an echo, an error quoting no TCP/UDP header).
    NotAnError,
    /// An error about no tracked connection.
    Nothing,
    /// An error about this connection entry, quoting this tuple.
    Connection(conntrack::Tracked, FlowKey),
}

/// The connection entry an ICMP error is about: the one whose packets, translated, are the
/// quoted packet (the quoted tuple reversed).
#[inline(always)]
pub fn find_error_flow(ctx: &XdpContext, now: u64) -> Result<ErrorAbout, Verdict> {
    let Some(quoted) = quoted_tuple(ctx)? else {
        return Ok(ErrorAbout::NotAnError);
    };
    let key = FlowKey {
        src_addr: quoted.dst_addr,
        dst_addr: quoted.src_addr,
        src_port: quoted.dst_port,
        dst_port: quoted.src_port,
        proto: quoted.proto,
        _pad: [0; 3],
    };
    Ok(match conntrack::find_flow(&key, now) {
        Some(t) => ErrorAbout::Connection(t, quoted),
        None => ErrorAbout::Nothing,
    })
}

/// Rewrites the ICMP error `pkt` about the connection entry `flow`, whose translation the quoted
/// packet `quoted` carries: the quoted packet becomes what its sender sent (source
/// `flow.new_dst`, destination `flow.new_src`), and the error goes from `flow.new_src` to
/// `flow.new_dst`. False if the frame is shorter than parsing found (unreachable).
#[inline(always)]
pub fn translate_error(ctx: &XdpContext, pkt: &Packet, flow: &Flow, quoted: &FlowKey) -> bool {
    let (Some(ip), Some(icmp)) =
        (ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN), ptr_at::<[u8; ICMP_LEN + QUOTED_LEN]>(ctx, L4_OFF))
    else {
        return false;
    };
    let (ip, icmp) = (ip as *mut u8, icmp as *mut u8);
    let q_src = (wire32(quoted.src_addr), wire32(flow.new_dst_addr));
    let q_dst = (wire32(quoted.dst_addr), wire32(flow.new_src_addr));
    let q_sport = (wire16(quoted.src_port), wire16(flow.new_dst_port));
    let q_dport = (wire16(quoted.dst_port), wire16(flow.new_src_port));
    // SAFETY: every offset lies inside the two bounds-checked regions above.
    unsafe {
        let q = icmp.add(ICMP_LEN);
        let mut icmp_check = load16(icmp.add(2));

        // The quoted IPv4 header: addresses, and its checksum, whose change the ICMP checksum
        // sees too.
        let old_q_check = load16(q.add(10));
        let mut q_check = replace4(old_q_check, q_src.0, q_src.1);
        q_check = replace4(q_check, q_dst.0, q_dst.1);
        store16(q.add(10), q_check);
        store_addr(q.add(12), flow.new_dst_addr);
        store_addr(q.add(16), flow.new_src_addr);
        icmp_check = replace4(icmp_check, q_src.0, q_src.1);
        icmp_check = replace4(icmp_check, q_dst.0, q_dst.1);
        icmp_check = replace2(icmp_check, old_q_check, q_check);

        // The quoted ports, and a quoted UDP checksum (covering the pseudo-header and ports).
        store16(q.add(IPV4_LEN), q_sport.1);
        store16(q.add(IPV4_LEN + 2), q_dport.1);
        icmp_check = replace2(icmp_check, q_sport.0, q_sport.1);
        icmp_check = replace2(icmp_check, q_dport.0, q_dport.1);
        if quoted.proto == PROTO_UDP {
            let old = load16(q.add(QUOTED_UDP_CSUM));
            if old != 0 {
                let mut c = replace4(old, q_src.0, q_src.1);
                c = replace4(c, q_dst.0, q_dst.1);
                c = replace2(c, q_sport.0, q_sport.1);
                c = replace2(c, q_dport.0, q_dport.1);
                store16(q.add(QUOTED_UDP_CSUM), c);
                icmp_check = replace2(icmp_check, old, c);
            }
        }
        store16(icmp.add(2), icmp_check);

        // The outer header: from the entry's new source to its new destination, TTL - 1.
        rewrite_ipv4(ip, pkt, flow);
    }
    true
}

/// The frame [`frag_needed`] leaves: Ethernet, IPv4, ICMP, the quoted header and 8 bytes.
const FRAG_NEEDED_LEN: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + QUOTED_LEN;
const ICMP_TTL: u8 = 64;

/// One's-complement checksum of `words` 16-bit words at `p` (in wire order).
#[inline(always)]
unsafe fn checksum<const WORDS: usize>(p: *const u8) -> u16 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: the caller guarantees 2 * WORDS readable bytes at p.
        sum += unsafe { load16(p.add(2 * i) as *mut u8) } as u64;
        i += 1;
    }
    !fold(sum)
}

/// Turns the frame into an ICMP fragmentation-needed answer to its sender, advertising `mtu`;
/// the frame goes back out of the interface it came in on, to the MAC it came from. Fails (passing the frame untouched) only if the frame cannot be resized.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Verdict {
    let Some(head) = ptr_at::<[u8; ETH_LEN + QUOTED_LEN]>(ctx, 0) else {
        return Verdict::pass(Reason::PassRewriteFailed);
    };
    // SAFETY: bounds-checked above; copied before the frame is resized.
    let head = unsafe { *head };
    let delta = FRAG_NEEDED_LEN as i32 - pkt.frame_len as i32;
    // SAFETY: shrinking the tail of the frame; every pointer is derived again below.
    if delta > 0 || unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, delta) } != 0 {
        return Verdict::pass(Reason::PassRewriteFailed);
    }
    let Some(out) = ptr_at::<[u8; FRAG_NEEDED_LEN]>(ctx, 0) else {
        return Verdict::pass(Reason::PassRewriteFailed);
    };
    let out = out as *mut u8;
    // SAFETY: `out` has FRAG_NEEDED_LEN bytes; `head` is a copy on the stack.
    unsafe {
        // Ethernet: back where it came from.
        core::ptr::copy_nonoverlapping(head.as_ptr().add(6), out, 6);
        core::ptr::copy_nonoverlapping(head.as_ptr(), out.add(6), 6);
        let ip = out.add(ETH_LEN);
        let total = (IPV4_LEN + ICMP_LEN + QUOTED_LEN) as u16;
        let ip_hdr: [u8; 12] =
            [0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, ICMP_TTL, crate::parse::PROTO_ICMP, 0, 0];
        core::ptr::copy_nonoverlapping(ip_hdr.as_ptr(), ip, 12);
        store_addr(ip.add(12), pkt.key.dst_addr);
        store_addr(ip.add(16), pkt.key.src_addr);
        store16(ip.add(10), checksum::<{ IPV4_LEN / 2 }>(ip));
        let icmp = ip.add(IPV4_LEN);
        let icmp_hdr: [u8; 8] = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, (mtu >> 8) as u8, mtu as u8];
        core::ptr::copy_nonoverlapping(icmp_hdr.as_ptr(), icmp, ICMP_LEN);
        core::ptr::copy_nonoverlapping(head.as_ptr().add(ETH_LEN), icmp.add(ICMP_LEN), QUOTED_LEN);
        store16(icmp.add(2), checksum::<{ (ICMP_LEN + QUOTED_LEN) / 2 }>(icmp));
    }
    // Back out of the ingress interface. Through the redirect map rather than XDP_TX: a veth
    // wakes its peer for a redirected frame even when the peer runs no XDP program, and not for
    // an XDP_TX one. An interface missing from the map falls back to XDP_TX.
    let action = match TX_PORTS_MAP.redirect(ctx.ingress_ifindex() as u32, XDP_TX as u64) {
        Ok(action) | Err(action) => action,
    };
    Verdict { action, reason: Reason::FragNeededSent }
}
