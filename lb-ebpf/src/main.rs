//! swarmlb's XDP datapath. `swarmlb` reads top to bottom as a packet's decision path; each step
//! lives in its own module (parse, conntrack, select, snat, nat, forward, stats). `t` notes the
//! decisions for `swarmlb trace` ([`trace`]) in the traced copy of the program only.
#![no_std]
#![no_main]

mod conntrack;
mod forward;
mod icmp;
mod l4csum;
mod maps;
mod mss;
mod nat;
mod neigh;
mod parse;
mod select;
mod snat;
mod sock;
mod stats;
mod trace;
mod verdict;
mod vxlan;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_ktime_get_ns,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{
    CT_NEW, DIR_TO_BACKEND, DIR_TO_CLIENT, Flow, FlowKey, PROTO_TCP, Reason, SERVICE_CLIENT_SOURCE,
    SETTINGS_CLIENT_SOURCE, Settings,
};

use crate::{
    parse::{PROTO_ICMP, Packet},
    trace::Trace,
    verdict::Verdict,
};

#[xdp]
pub fn swarmlb(ctx: XdpContext) -> u32 {
    // While `swarmlb trace` runs, packets take `swarmlb_traced` instead: one lookup otherwise.
    trace::divert(&ctx);
    decide(&ctx, trace::Off)
}

/// `swarmlb` noting its decisions for `swarmlb trace`; ends in `swarmlb_log`, which logs them.
#[xdp]
pub fn swarmlb_traced(ctx: XdpContext) -> u32 {
    decide(&ctx, trace::On)
}

/// Logs a traced packet's decisions (aya-log) and returns the action `swarmlb_traced` chose.
#[xdp]
pub fn swarmlb_log(ctx: XdpContext) -> u32 {
    trace::log_record(&ctx)
}

#[inline(always)]
fn decide(ctx: &XdpContext, t: impl Trace) -> u32 {
    t.begin();
    let verdict = balance(ctx, &t);
    stats::count_reason(verdict.reason);
    t.finish(ctx, verdict);
    verdict.action
}

/// Passes everything: the benchmark floor, and the program veth peers need to receive redirects.
#[xdp]
pub fn swarmlb_pass(ctx: XdpContext) -> u32 {
    let _ = parse::ptr_at::<[u8; parse::ETH_LEN]>(&ctx, 0);
    XDP_PASS
}

/// TC ingress beside `swarmlb`: sends the frames it handed off through the kernel's neighbour
/// resolution ([`neigh`]).
#[classifier]
pub fn swarmlb_neigh(ctx: TcContext) -> i32 {
    neigh::redirect_handed_over(&ctx)
}

/// Socket load balancing ([`sock`]): a connect to a frontend goes to a backend. Always allows
/// the call (1): an address this program does not balance is left as the application gave it.
#[cgroup_sock_addr(connect4)]
pub fn swarmlb_conn4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx, false);
    1
}

/// An unconnected UDP socket's datagram to a frontend goes to a backend, the same one for the
/// socket's later datagrams to it.
#[cgroup_sock_addr(sendmsg4)]
pub fn swarmlb_send4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx, true);
    1
}

/// A datagram from a backend shows the frontend the socket sent to as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn swarmlb_recv4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx);
    1
}

/// A connected socket's peer shows as the frontend it connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn swarmlb_peer4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx);
    1
}

#[inline(always)]
fn balance(ctx: &XdpContext, t: &impl Trace) -> Verdict {
    let pkt = match parse::parse_packet(ctx) {
        Ok(pkt) => pkt,
        Err(verdict) => return verdict,
    };
    let settings = maps::settings();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    t.start(&pkt);
    if pkt.key.proto == PROTO_ICMP {
        return forward_icmp(ctx, &pkt, now);
    }

    // Tracked traffic is a client's packet to a frontend port (or to a port whose frontend was
    // removed while connections on it may still run) or a backend's reply to a SNAT address and
    // port this node handed out (or, for services that keep the client's address, to any client
    // address and port); the port ranges may overlap. Anything else leaves here.
    let to_frontend_port = select::port_has_frontend(&pkt.key);
    if !to_frontend_port && !may_be_reply(&settings, &pkt.key) {
        return not_for_a_frontend(ctx, &pkt, &settings);
    }
    // A tracked connection keeps its backend, even if its frontend or backend is gone, unless
    // the packet starts the flow over (see `starts_over`).
    if let Some(tracked) = conntrack::find_flow(&pkt.key, now) {
        if !starts_over(tracked, &pkt) {
            return forward_tracked(ctx, &pkt, tracked, now);
        }
        conntrack::retire_flow(&pkt.key, tracked);
    }
    if !to_frontend_port {
        return not_for_a_frontend(ctx, &pkt, &settings);
    }
    // A removed frontend refuses new connections: the kernel answers them.
    let Some(service_id) = select::find_service(&pkt.key) else {
        return not_for_a_frontend(ctx, &pkt, &settings);
    };
    t.frontend(service_id);
    if pkt.key.proto == PROTO_TCP && !pkt.is_syn_without_ack() {
        return Verdict::pass(Reason::PassNoConnection);
    }
    if pkt.ttl <= 1 {
        return Verdict::pass(Reason::PassTtlExpired);
    }
    forward_new(ctx, &pkt, service_id, now)
}

/// Traffic no frontend claims: VXLAN on the data-path port is inspected and counted, the rest
/// passes untouched.
#[inline(always)]
fn not_for_a_frontend(ctx: &XdpContext, pkt: &Packet, settings: &Settings) -> Verdict {
    if vxlan::is_vxlan(pkt, settings) { vxlan::inspect(ctx, pkt) } else { Verdict::pass(Reason::PassNoFrontend) }
}

/// Whether a tracked flow's packet is balanced afresh instead: a TCP SYN that reopens the tuple
/// (`conntrack::is_reopened_by`), or a client's UDP packet whose backend has left the service
/// (UDP has no close: a client that keeps its port would keep sending to a gone task).
#[inline(always)]
fn starts_over(tracked: conntrack::Tracked, pkt: &Packet) -> bool {
    let f = tracked.get();
    if f.direction != DIR_TO_BACKEND {
        return false;
    }
    if pkt.key.proto == PROTO_TCP {
        pkt.is_syn_without_ack() && conntrack::is_reopened_by(tracked, pkt, select::backend_is_gone(f))
    } else {
        select::backend_is_gone(f)
    }
}

/// A cheap filter for replies: the port lies in some service's NAT range and the destination is
/// a SNAT address; with services that keep the client's address, anything may be one.
#[inline(always)]
fn may_be_reply(settings: &Settings, key: &FlowKey) -> bool {
    settings.flags & SETTINGS_CLIENT_SOURCE != 0
        || key.dst_port >= settings.snat_port_min
            && key.dst_port <= settings.snat_port_max
            && select::is_snat_addr(key.dst_addr)
}

/// A packet of a tracked connection, either direction.
#[inline(always)]
fn forward_tracked(ctx: &XdpContext, pkt: &Packet, tracked: conntrack::Tracked, now: u64) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(Reason::PassTtlExpired);
    }
    let mut tracked = tracked;
    if conntrack::touch_flow(ctx, tracked, pkt, now) == conntrack::Step::Confirm {
        match conntrack::confirm(&pkt.key, tracked, now) {
            Some(main) => tracked = main,
            None => return Verdict::drop(Reason::DropConntrackFull),
        }
    }
    // SAFETY: map value pointer, valid until the program returns.
    let flow = unsafe { &mut *tracked.flow };
    let route = forward::resolve_next_hop(ctx, flow, pkt, now);
    forward::deliver(ctx, pkt, flow, route, forward::Rewrite::Nat)
}

/// An ICMP error about a tracked connection goes to the other side of it, translated back;
/// any other ICMP passes.
#[inline(always)]
fn forward_icmp(ctx: &XdpContext, pkt: &Packet, now: u64) -> Verdict {
    let (tracked, quoted) = match icmp::find_error_flow(ctx, now) {
        Ok(icmp::ErrorAbout::Connection(tracked, quoted)) => (tracked, quoted),
        Ok(icmp::ErrorAbout::Nothing) => return Verdict::pass(Reason::PassIcmpUntracked),
        Ok(icmp::ErrorAbout::NotAnError) => return Verdict::pass(Reason::PassNotTcpUdp),
        Err(verdict) => return verdict,
    };
    if pkt.ttl <= 1 {
        return Verdict::pass(Reason::PassTtlExpired);
    }
    // SAFETY: map value pointer, valid until the program returns.
    let flow = unsafe { &mut *tracked.flow };
    let route = forward::resolve_next_hop(ctx, flow, pkt, now);
    forward::deliver(ctx, pkt, flow, route, forward::Rewrite::IcmpError(&quoted))
}

/// The first packet of a connection: pick a backend, claim a NAT port, record both directions
/// in the new-flow table, send it.
#[inline(always)]
fn forward_new(ctx: &XdpContext, pkt: &Packet, service_id: u32, now: u64) -> Verdict {
    let Some(service) = select::service(service_id) else {
        return Verdict::drop(Reason::DropNoBackend);
    };
    let Some((backend_id, backend)) = select::pick_backend(service_id, &service, &pkt.key) else {
        return Verdict::drop(Reason::DropNoBackend);
    };
    let key = &pkt.key;
    let reverse = Flow {
        new_src_addr: key.dst_addr,
        new_dst_addr: key.src_addr,
        new_src_port: key.dst_port,
        new_dst_port: key.src_port,
        service_id,
        backend_id,
        direction: DIR_TO_CLIENT,
        state: CT_NEW,
        last_seen_ns: now,
        ..Flow::default()
    };
    let mut reverse_key = FlowKey {
        src_addr: backend.addr,
        dst_addr: [0; 4],
        src_port: backend.port,
        dst_port: 0,
        proto: key.proto,
        _pad: [0; 3],
    };
    // A service that keeps the client's address falls back to a NAT port when the client's own
    // tuple towards the backend is held by another of its live connections.
    let kept =
        service.flags & SERVICE_CLIENT_SOURCE != 0 && snat::keep_client_address(key, &mut reverse_key, &reverse, now);
    if !kept && !snat::claim_port(key, &mut reverse_key, &reverse, &service, now) {
        return Verdict::drop(Reason::DropPortsExhausted);
    }
    let mut forward = conntrack::mirror(&reverse_key, &reverse);
    // Resolved before insertion so the entry is born with its next hop cached.
    let route = forward::resolve_next_hop(ctx, &mut forward, pkt, now);
    if !conntrack::commit_flow(key, &forward, &reverse_key) {
        return Verdict::drop(Reason::DropConntrackFull);
    }
    stats::count_new_flow(service_id, backend_id);
    forward::deliver(ctx, pkt, &forward, route, forward::Rewrite::Nat)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
