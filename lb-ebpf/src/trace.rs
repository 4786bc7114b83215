//! The opt-in trace of the datapath's decisions (`swarmlb trace`): aya-log records about the
//! packets of one client and/or one service, read by userspace from the `AYA_LOGS` ring buffer.
//!
//! `swarmlb` looks `slb_trace` up once per packet ([`divert`]); while it is enabled, packets
//! tail-call into `swarmlb_traced`, the same pipeline built with [`On`] instead of [`Off`]: it
//! notes the packet, the frontend it hit and its verdict in this CPU's [`TraceRecord`] and ends
//! by tail-calling `swarmlb_log` ([`log_record`]), which reads the rest (backend, new or
//! existing connection, NAT) from the packet's connection-table entry as the pipeline left it,
//! checks the deadline and the filter, and logs one line per decision. Logging has a program of
//! its own because aya-log needs stack the pipeline has no room for (512 bytes in all).
//!
//! Lines name reasons, XDP actions, protocols and directions by number (`reason=`, `action=`,
//! `proto=`, `direction=`) and services and backends by id: `swarmlb trace` names them.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, helpers::bpf_ktime_get_ns, programs::XdpContext};
use aya_log_ebpf::info;
use lb_common::{
    DIR_TO_CLIENT, Flow, FlowKey, TraceRecord,
    maps::{TRACE_PROG_LOG, TRACE_PROG_TRACED},
};

use crate::{
    maps::{CONNTRACK_MAP, CT_NEW_MAP, TRACE_MAP, TRACE_PROGS_MAP, TRACE_RECORD_MAP},
    parse::Packet,
    verdict::Verdict,
};

/// While tracing is on (`slb_trace` enabled), tail-calls `swarmlb_traced`: the one lookup and
/// branch every packet pays for. Returns if tracing is off (or that program is not loaded).
#[inline(always)]
pub fn divert(ctx: &XdpContext) {
    if TRACE_MAP.get(0).is_some_and(|f| f.enabled != 0) {
        // SAFETY: a tail call either jumps away or fails and returns here.
        unsafe { TRACE_PROGS_MAP.tail_call(ctx, TRACE_PROG_TRACED) };
    }
}

/// The hooks of the pipeline.
pub trait Trace {
    /// A packet arrives: nothing is known of it yet.
    fn begin(&self);
    /// The packet parsed as `pkt`.
    fn start(&self, pkt: &Packet);
    /// The packet is addressed to a frontend of `service_id`.
    fn frontend(&self, service_id: u32);
    /// The packet's fate; a traced packet leaves through `swarmlb_log`.
    fn finish(&self, ctx: &XdpContext, verdict: Verdict);
}

/// `swarmlb`: nothing noted, nothing spent.
pub struct Off;

impl Trace for Off {
    #[inline(always)]
    fn begin(&self) {}
    #[inline(always)]
    fn start(&self, _: &Packet) {}
    #[inline(always)]
    fn frontend(&self, _: u32) {}
    #[inline(always)]
    fn finish(&self, _: &XdpContext, _: Verdict) {}
}

/// `swarmlb_traced`: each hook writes this CPU's record (looked up again each time: the
/// pipeline keeps no state of its own for tracing, its stack being nearly full).
pub struct On;

#[inline(always)]
fn record() -> Option<&'static mut TraceRecord> {
    // SAFETY: this CPU's slot; XDP runs to completion on it, so nothing else writes it.
    TRACE_RECORD_MAP.get_ptr_mut(0).map(|r| unsafe { &mut *r })
}

impl Trace for On {
    /// Clears what the last packet on this CPU left, so a packet that does not parse (never
    /// [`Trace::start`]ed) is not logged under the last one's tuple.
    #[inline(always)]
    fn begin(&self) {
        if let Some(r) = record() {
            *r = TraceRecord::default();
        }
    }

    #[inline(always)]
    fn start(&self, pkt: &Packet) {
        if let Some(r) = record() {
            *r = TraceRecord { key: pkt.key, ..TraceRecord::default() };
        }
    }

    #[inline(always)]
    fn frontend(&self, service_id: u32) {
        if let Some(r) = record() {
            r.frontend_service = service_id;
        }
    }

    #[inline(always)]
    fn finish(&self, ctx: &XdpContext, verdict: Verdict) {
        if let Some(r) = record()
            && r.key.proto != 0
        {
            r.action = verdict.action;
            r.reason = verdict.reason as u32;
            // SAFETY: as in `divert`; on failure the packet leaves unlogged.
            unsafe { TRACE_PROGS_MAP.tail_call(ctx, TRACE_PROG_LOG) };
        }
    }
}

/// The packet's connection-table entry after the pipeline: the main table's, else the new-flow
/// table's (idle ones included: a line about a stale entry is still what the table holds).
#[inline(always)]
fn entry(key: &FlowKey) -> Option<&Flow> {
    // SAFETY: read only, before the program returns. Not copied: a copied `Option<Flow>` leaves
    // registers unset on the `None` path, which the verifier refuses to spill.
    unsafe { CONNTRACK_MAP.get(key).or_else(|| CT_NEW_MAP.get(key)) }
}

/// `swarmlb_trace`: logs this CPU's record, one line per decision, if it matches the filter,
/// and returns the action `swarmlb` decided.
#[inline(always)]
pub fn log_record(ctx: &XdpContext) -> u32 {
    let Some(r) = TRACE_RECORD_MAP.get(0) else { return XDP_PASS };
    let Some(f) = TRACE_MAP.get(0) else { return r.action };
    // SAFETY: helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= f.expires_ns {
        return r.action;
    }
    let k = &r.key;
    let flow = entry(k);
    let (client, service) = match flow {
        Some(e) if e.direction == DIR_TO_CLIENT => (e.new_dst_addr, e.service_id),
        Some(e) => (k.src_addr, e.service_id),
        None => (k.src_addr, r.frontend_service),
    };
    if (f.client != [0; 4] && f.client != client) || (f.service_id != 0 && f.service_id != service) {
        return r.action;
    }
    if r.frontend_service != 0 {
        info!(
            ctx,
            "{:i}:{} > {:i}:{} proto={} frontend service={}",
            k.src_addr,
            k.src_port,
            k.dst_addr,
            k.dst_port,
            k.proto,
            r.frontend_service
        );
    }
    // The frontend is only looked up for a packet no tracked connection took. One message per
    // kind: an `&str` argument chosen at run time trips the verifier (an unset register).
    match flow {
        Some(e) if r.frontend_service != 0 => info!(
            ctx,
            "{:i}:{} > {:i}:{} proto={} new flow direction={} service={} backend={} state={} nat {:i}:{} > {:i}:{}",
            k.src_addr,
            k.src_port,
            k.dst_addr,
            k.dst_port,
            k.proto,
            e.direction,
            e.service_id,
            e.backend_id,
            e.state,
            e.new_src_addr,
            e.new_src_port,
            e.new_dst_addr,
            e.new_dst_port
        ),
        Some(e) => info!(
            ctx,
            "{:i}:{} > {:i}:{} proto={} existing flow direction={} service={} backend={} state={} nat {:i}:{} > {:i}:{}",
            k.src_addr,
            k.src_port,
            k.dst_addr,
            k.dst_port,
            k.proto,
            e.direction,
            e.service_id,
            e.backend_id,
            e.state,
            e.new_src_addr,
            e.new_src_port,
            e.new_dst_addr,
            e.new_dst_port
        ),
        None => {}
    }
    info!(
        ctx,
        "{:i}:{} > {:i}:{} proto={} action={} reason={}",
        k.src_addr,
        k.src_port,
        k.dst_addr,
        k.dst_port,
        k.proto,
        r.action,
        r.reason
    );
    r.action
}
