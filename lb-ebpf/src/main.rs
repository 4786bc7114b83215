//! swarmlb's XDP datapath. `swarmlb` reads top to bottom as a packet's decision path; each step
//! lives in its own module (parse, conntrack, select, nat, forward, stats).
#![no_std]
#![no_main]

mod conntrack;
mod forward;
mod l4csum;
mod maps;
mod mss;
mod nat;
mod parse;
mod select;
mod stats;
mod verdict;
mod vxlan;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use lb_common::{DIR_TO_BACKEND, Flow, PROTO_TCP, Reason, Settings};

use crate::{parse::Packet, verdict::Verdict};

#[xdp]
pub fn swarmlb(ctx: XdpContext) -> u32 {
    let verdict = balance(&ctx);
    stats::count_reason(verdict.reason);
    verdict.action
}

/// Passes everything: the benchmark floor, and the program veth peers need to receive redirects.
#[xdp]
pub fn swarmlb_pass(ctx: XdpContext) -> u32 {
    let _ = parse::ptr_at::<[u8; parse::ETH_LEN]>(&ctx, 0);
    XDP_PASS
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Verdict {
    let pkt = match parse::parse_packet(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return verdict,
    };
    let settings = maps::settings();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    // Tracked traffic is a backend's reply to a SNAT port this node handed out or a client's
    // packet to a frontend port; the two port ranges may overlap. Anything else leaves here.
    let to_frontend_port = select::port_has_frontend(&pkt.key);
    if !to_frontend_port && !is_snat_port(&settings, pkt.key.dst_port) {
        return not_for_a_frontend(ctx, &pkt, &settings);
    }
    // An established connection keeps its backend, even if its frontend or backend is gone,
    // unless the packet starts the flow over (see `starts_over`).
    if let Some(flow) = conntrack::find_flow(&pkt.key, now) {
        if !starts_over(flow, &pkt) {
            return forward_tracked(ctx, &pkt, flow, now);
        }
        conntrack::retire_flow(&pkt.key, flow);
    }
    if !to_frontend_port {
        return not_for_a_frontend(ctx, &pkt, &settings);
    }
    let Some(service_id) = select::find_service(&pkt.key) else {
        return not_for_a_frontend(ctx, &pkt, &settings);
    };
    if pkt.key.proto == PROTO_TCP && !pkt.is_syn_without_ack() {
        return Verdict::pass(Reason::PassNoConnection);
    }
    if pkt.ttl <= 1 {
        return Verdict::pass(Reason::PassTtlExpired);
    }
    forward_new(ctx, &pkt, &settings, service_id, now)
}

/// Traffic no frontend claims: VXLAN on the data-path port is inspected and counted, the rest
/// passes untouched.
#[inline(always)]
fn not_for_a_frontend(ctx: &XdpContext, pkt: &Packet, settings: &Settings) -> Verdict {
    if vxlan::is_vxlan(pkt, settings) {
        vxlan::inspect(ctx, pkt)
    } else {
        Verdict::pass(Reason::PassNoFrontend)
    }
}

/// Whether a tracked flow's packet is balanced afresh instead: a SYN on a closing TCP
/// connection (the client reusing its port), or a client's UDP packet whose backend has left the
/// service (UDP has no close: a client that keeps its port would keep sending to a gone task).
#[inline(always)]
fn starts_over(flow: *mut Flow, pkt: &Packet) -> bool {
    // SAFETY: map value pointer from find_flow, valid until the program returns.
    let f = unsafe { &*flow };
    if f.direction != DIR_TO_BACKEND {
        return false;
    }
    if pkt.key.proto == PROTO_TCP {
        conntrack::is_reopened_by(f, pkt)
    } else {
        select::backend_is_gone(f)
    }
}

#[inline(always)]
fn is_snat_port(settings: &Settings, port: u16) -> bool {
    let (min, max) = conntrack::snat_range(settings);
    port >= min && port <= max
}

/// A packet of a tracked connection, either direction.
#[inline(always)]
fn forward_tracked(ctx: &XdpContext, pkt: &Packet, flow: *mut Flow, now: u64) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(Reason::PassTtlExpired);
    }
    conntrack::touch_flow(flow, pkt, now);
    // SAFETY: map value pointer, valid until the program returns.
    let flow = unsafe { &mut *flow };
    let route = forward::resolve_next_hop(ctx, flow, pkt, now);
    forward::deliver(ctx, pkt, flow, route)
}

/// The first packet of a connection: pick a backend, allocate a SNAT port, record both
/// directions, send it.
#[inline(always)]
fn forward_new(
    ctx: &XdpContext,
    pkt: &Packet,
    settings: &Settings,
    service_id: u32,
    now: u64,
) -> Verdict {
    let Some(service) = select::service(service_id) else {
        return Verdict::drop(Reason::DropNoBackend);
    };
    let Some((backend_id, backend)) = select::pick_backend(service_id, &service, &pkt.key) else {
        return Verdict::drop(Reason::DropNoBackend);
    };
    let mut new = match conntrack::reserve_flow(
        pkt,
        settings,
        service_id,
        backend_id,
        service.snat_addr,
        backend.addr,
        backend.port,
        now,
    ) {
        Ok(new) => new,
        Err(verdict) => return verdict,
    };
    // Resolved before insertion so the entry is born with its next hop cached.
    let route = forward::resolve_next_hop(ctx, &mut new.forward, pkt, now);
    if let Err(verdict) = conntrack::commit_flow(&pkt.key, &new) {
        return verdict;
    }
    stats::count_new_flow(service_id, backend_id);
    forward::deliver(ctx, pkt, &new.forward, route)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
