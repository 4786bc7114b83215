//! Where a translated packet goes: the next hop (FIB lookup, cached per flow entry), the MAC
//! rewrite, and XDP_TX / XDP_REDIRECT, or the hand-off to the kernel's neighbour resolution
//! ([`crate::neigh`]) when XDP cannot send the frame itself.
//!
//! MTU rule: the egress MTU is checked *before* translating. A packet bigger than the egress
//! MTU (possible only when the egress link has a smaller MTU than the ingress one, e.g. an
//! overlay endpoint) with "don't fragment" set is answered from XDP with ICMP fragmentation
//! needed (`icmp::frag_needed`): the sender learns the path MTU, as through a router. Without
//! "don't fragment" it is translated and handed to the kernel, which fragments it
//! (`PassTooBig`). The datapath itself never fragments.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_TX},
    },
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup},
    programs::XdpContext,
};
use lb_common::{DIR_TO_CLIENT, Flow, FlowKey, NEXT_HOP_TTL_NS, NextHop, Reason};

use crate::{
    icmp,
    maps::TX_PORTS_MAP,
    nat, neigh,
    parse::{Packet, ptr_at},
    stats,
    verdict::Verdict,
};

const AF_INET: u8 = 2;

/// Outcome of next-hop resolution for a flow.
pub enum Route {
    /// Send it ourselves through this next hop.
    Via(NextHop),
    /// Routable out of this interface through this next-hop address, but it has no neighbour
    /// entry yet: translate and hand it to the kernel's neighbour resolution.
    Unresolved { ifindex: u32, next_hop: [u8; 4] },
    /// No route: pass untranslated.
    NoRoute,
    /// Too big for the egress MTU, which is this.
    TooBig(u16),
}

/// The next hop of the flow's translated packets: the cached one while it is fresh, else a
/// `bpf_fib_lookup` whose result is written back into `flow.next_hop` (the map entry itself
/// for established flows, the entry about to be inserted for new ones).
#[inline(always)]
pub fn resolve_next_hop(ctx: &XdpContext, flow: &mut Flow, pkt: &Packet, now: u64) -> Route {
    let cached = flow.next_hop;
    if cached.ifindex != 0 && now.wrapping_sub(cached.resolved_ns) < NEXT_HOP_TTL_NS {
        return fit_mtu(cached, pkt);
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.key.proto;
    params.sport = flow.new_src_port.to_be();
    params.dport = flow.new_dst_port.to_be();
    params.__bindgen_anon_1.tot_len = pkt.ip_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(flow.new_src_addr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(flow.new_dst_addr);
    // SAFETY: params is a properly sized, initialised bpf_fib_lookup on the stack.
    let ret = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut params, size_of::<FibParams>() as i32, 0) };
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // SAFETY: on NO_NEIGH the kernel has filled in the egress interface and the next hop.
        let next_hop = unsafe { params.__bindgen_anon_4.ipv4_dst }.to_ne_bytes();
        return Route::Unresolved { ifindex: params.ifindex, next_hop };
    }
    if ret == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // Too big for the route's MTU, which the FIB reports: see the module doc.
        // SAFETY: on FRAG_NEEDED the kernel fills in mtu_result.
        return Route::TooBig(unsafe { params.__bindgen_anon_1.mtu_result });
    }
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Route::NoRoute;
    }
    // The FIB only reports the MTU when the packet does not fit; ask the device for it so the
    // cached next hop can check later packets.
    let mut mtu: u32 = 0;
    // SAFETY: mtu is a valid u32 on the stack; flags must be 0 for XDP.
    let mtu_ret = unsafe { bpf_check_mtu(ctx.as_ptr(), params.ifindex, &mut mtu, 0, 0) };
    if mtu_ret < 0 || mtu == 0 || mtu > u16::MAX as u32 {
        mtu = u16::MAX as u32;
    }
    let hop = NextHop {
        resolved_ns: now,
        ifindex: params.ifindex,
        mtu: mtu as u16,
        src_mac: params.smac,
        dst_mac: params.dmac,
        _pad: [0; 6],
    };
    flow.next_hop = hop;
    fit_mtu(hop, pkt)
}

#[inline(always)]
fn fit_mtu(hop: NextHop, pkt: &Packet) -> Route {
    if pkt.ip_len > hop.mtu { Route::TooBig(hop.mtu) } else { Route::Via(hop) }
}

/// How a packet of a flow is rewritten on its way.
#[derive(Clone, Copy)]
pub enum Rewrite<'a> {
    /// A packet of the connection: NAT per the entry (`nat::rewrite`).
    Nat,
    /// An ICMP error about the connection, quoting this tuple (`icmp::translate_error`).
    IcmpError(&'a FlowKey),
}

#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, flow: &Flow, how: Rewrite) -> bool {
    match how {
        Rewrite::Nat => nat::rewrite(ctx, pkt, flow),
        Rewrite::IcmpError(quoted) => icmp::translate_error(ctx, pkt, flow, quoted),
    }
}

/// Rewrites the packet per `flow` and `how` and sends it along `route`.
#[inline(always)]
pub fn deliver(ctx: &XdpContext, pkt: &Packet, flow: &Flow, route: Route, how: Rewrite) -> Verdict {
    let icmp_error = matches!(how, Rewrite::IcmpError(_));
    let hop = match route {
        Route::NoRoute => return Verdict::pass(Reason::PassNoRoute),
        // Never an ICMP error about an ICMP error (RFC 1122).
        Route::TooBig(mtu) if pkt.dont_fragment && !icmp_error => return icmp::frag_needed(ctx, pkt, mtu),
        Route::TooBig(_) => return to_kernel(ctx, pkt, flow, how, Reason::PassTooBig),
        Route::Unresolved { ifindex, next_hop } => return to_resolver(ctx, pkt, flow, how, ifindex, next_hop),
        Route::Via(hop) => hop,
    };
    // Only interfaces the agent manages may be transmitted on directly; anything else is sent by
    // the kernel (which routes it again: no next-hop address is cached).
    if TX_PORTS_MAP.get_ifindex(hop.ifindex).is_none() {
        return to_resolver(ctx, pkt, flow, how, hop.ifindex, [0; 4]);
    }
    if !rewrite(ctx, pkt, flow, how) || !set_macs(ctx, &hop) {
        return Verdict::pass(Reason::PassRewriteFailed);
    }
    let reason = if icmp_error {
        Reason::IcmpTranslated
    } else if flow.direction == DIR_TO_CLIENT {
        Reason::ToClient
    } else {
        Reason::ToBackend
    };
    let action = if hop.ifindex == ctx.ingress_ifindex() as u32 {
        XDP_TX
    } else {
        // The interface may have left the map since the lookup above (the agent detached it).
        match TX_PORTS_MAP.redirect(hop.ifindex, XDP_DROP as u64) {
            Ok(action) => action,
            Err(action) => return Verdict { action, reason: Reason::DropRedirectFailed },
        }
    };
    stats::count_traffic(flow, pkt.frame_len as u64);
    Verdict { action, reason }
}

/// Translates the frame and hands it to `swarmlb_neigh` (see [`crate::neigh`]); where the
/// driver cannot carry the hand-off, the kernel's IP forwarding gets the translated frame.
#[inline(always)]
fn to_resolver(ctx: &XdpContext, pkt: &Packet, flow: &Flow, how: Rewrite, ifindex: u32, next_hop: [u8; 4]) -> Verdict {
    if !rewrite(ctx, pkt, flow, how) {
        return Verdict::pass(Reason::PassRewriteFailed);
    }
    stats::count_traffic(flow, pkt.frame_len as u64);
    let reason =
        if neigh::hand_over(ctx, ifindex, next_hop) { Reason::ToNeighResolver } else { Reason::TranslatedToKernel };
    Verdict::pass(reason)
}

#[inline(always)]
fn to_kernel(ctx: &XdpContext, pkt: &Packet, flow: &Flow, how: Rewrite, reason: Reason) -> Verdict {
    if !rewrite(ctx, pkt, flow, how) {
        return Verdict::pass(Reason::PassRewriteFailed);
    }
    stats::count_traffic(flow, pkt.frame_len as u64);
    Verdict::pass(reason)
}

/// Rewrites the Ethernet addresses for the next hop.
#[inline(always)]
fn set_macs(ctx: &XdpContext, hop: &NextHop) -> bool {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else { return false };
    let eth = eth as *mut u8;
    // SAFETY: 12 bytes bounds-checked above.
    unsafe {
        (eth as *mut [u8; 6]).write_unaligned(hop.dst_mac);
        (eth.add(6) as *mut [u8; 6]).write_unaligned(hop.src_mac);
    }
    true
}
