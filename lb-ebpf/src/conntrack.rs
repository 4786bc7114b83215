//! The connection table: two entries per connection (client->frontend and backend->snat), lookup
//! with idle expiry, TCP FIN/RST state, and creation with SNAT source-port allocation.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use lb_common::{
    DIR_TO_BACKEND, DIR_TO_CLIENT, Flow, FlowKey, LAST_SEEN_GRANULARITY_NS, NextHop,
    Reason, Settings, TCP_FIN, TCP_OPEN, TCP_RST, idle_timeout_ns,
};

use crate::{
    maps::CONNTRACK_MAP,
    parse::{self, Packet},
    verdict::Verdict,
};

/// Default SNAT port range when the agent left `snat_port_min` at 0.
const DEFAULT_SNAT_MIN: u16 = 16384;
const DEFAULT_SNAT_MAX: u16 = 32767;
/// Source ports tried before giving up with `DropPortsExhausted`.
const PORT_TRIES: u32 = 16;

/// The inclusive SNAT source-port range from the settings.
#[inline(always)]
pub fn snat_range(settings: &Settings) -> (u16, u16) {
    if settings.snat_port_min == 0 {
        (DEFAULT_SNAT_MIN, DEFAULT_SNAT_MAX)
    } else if settings.snat_port_max < settings.snat_port_min {
        (settings.snat_port_min, settings.snat_port_min)
    } else {
        (settings.snat_port_min, settings.snat_port_max)
    }
}

#[inline(always)]
fn is_expired(flow: &Flow, proto: u8, now: u64) -> bool {
    now.saturating_sub(flow.last_seen_ns) > idle_timeout_ns(proto, flow.tcp_state)
}

/// The key of the other direction's entry: the translated packet's tuple, reversed.
#[inline(always)]
pub fn peer_key(flow: &Flow, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: flow.new_dst_addr,
        dst_addr: flow.new_src_addr,
        src_port: flow.new_dst_port,
        dst_port: flow.new_src_port,
        proto,
        _pad: [0; 3],
    }
}

/// The live (not idled-out) entry for this packet's tuple.
#[inline(always)]
pub fn find_flow(key: &FlowKey, now: u64) -> Option<*mut Flow> {
    let flow = CONNTRACK_MAP.get_ptr_mut(key)?;
    // SAFETY: a map value pointer, valid until the program returns.
    if is_expired(unsafe { &*flow }, key.proto, now) { None } else { Some(flow) }
}

/// The TCP state this segment moves the connection to (never backwards).
#[inline(always)]
fn next_tcp_state(current: u8, tcp_flags: u8) -> u8 {
    if tcp_flags & parse::TCP_RST != 0 {
        TCP_RST
    } else if tcp_flags & parse::TCP_FIN != 0 && current == TCP_OPEN {
        TCP_FIN
    } else {
        current
    }
}

/// Refreshes `last_seen_ns` (at most once per granularity) and records FIN/RST, on this entry
/// and on its peer so both directions idle out together.
#[inline(always)]
pub fn touch_flow(flow: *mut Flow, pkt: &Packet, now: u64) {
    // SAFETY: map value pointer from find_flow.
    let f = unsafe { &mut *flow };
    let state = next_tcp_state(f.tcp_state, pkt.tcp_flags);
    let stale = now.saturating_sub(f.last_seen_ns) > LAST_SEEN_GRANULARITY_NS;
    if !stale && state == f.tcp_state {
        return;
    }
    f.tcp_state = state;
    if stale {
        f.last_seen_ns = now;
    }
    let peer = peer_key(f, pkt.key.proto);
    if let Some(p) = CONNTRACK_MAP.get_ptr_mut(&peer) {
        // SAFETY: map value pointer.
        let p = unsafe { &mut *p };
        if state > p.tcp_state {
            p.tcp_state = state;
        }
        if stale {
            p.last_seen_ns = now;
        }
    }
}

/// Whether the TCP segment `pkt` opens a new connection on the tuple of `flow`, a client-side
/// entry whose connection has seen FIN or RST: a SYN there means the client reuses its port (a
/// NAT in front of it, or a busy client), and the old backend may be gone or have moved on.
#[inline(always)]
pub fn is_reopened_by(flow: &Flow, pkt: &Packet) -> bool {
    pkt.is_syn_without_ack() && flow.tcp_state != TCP_OPEN
}

/// Removes both entries of the connection `flow` (found under `key`), freeing its SNAT port.
#[inline(always)]
pub fn retire_flow(key: &FlowKey, flow: *mut Flow) {
    // SAFETY: map value pointer from find_flow; read before the entries are removed.
    let peer = peer_key(unsafe { &*flow }, key.proto);
    let _ = CONNTRACK_MAP.remove(&peer);
    let _ = CONNTRACK_MAP.remove(key);
}

/// A connection about to be created: both entries' values, before insertion.
pub struct NewFlow {
    pub forward: Flow,
    pub reverse_key: FlowKey,
}

/// Builds the two directions of a new connection from `pkt` to backend `be_addr:be_port`,
/// source-NATed to `snat_addr`, and reserves a free SNAT port by inserting the reverse entry.
#[inline(always)]
pub fn reserve_flow(
    pkt: &Packet,
    settings: &Settings,
    service_id: u32,
    backend_id: u32,
    snat_addr: [u8; 4],
    be_addr: [u8; 4],
    be_port: u16,
    now: u64,
) -> Result<NewFlow, Verdict> {
    let key = &pkt.key;
    let reverse = Flow {
        new_src_addr: key.dst_addr,
        new_dst_addr: key.src_addr,
        new_src_port: key.dst_port,
        new_dst_port: key.src_port,
        service_id,
        backend_id,
        direction: DIR_TO_CLIENT,
        tcp_state: TCP_OPEN,
        _pad: [0; 2],
        last_seen_ns: now,
        next_hop: NextHop::default(),
    };
    let mut reverse_key = FlowKey {
        src_addr: be_addr,
        dst_addr: snat_addr,
        src_port: be_port,
        dst_port: 0,
        proto: key.proto,
        _pad: [0; 3],
    };
    let (min, max) = snat_range(settings);
    let span = (max - min) as u32 + 1;
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let mut found = false;
    for i in 0..PORT_TRIES {
        reverse_key.dst_port = min + ((start + i) % span) as u16;
        if claim_port(&reverse_key, &reverse, now) {
            found = true;
            break;
        }
    }
    if !found {
        return Err(Verdict::drop(Reason::DropPortsExhausted));
    }
    let forward = Flow {
        new_src_addr: snat_addr,
        new_dst_addr: be_addr,
        new_src_port: reverse_key.dst_port,
        new_dst_port: be_port,
        service_id,
        backend_id,
        direction: DIR_TO_BACKEND,
        tcp_state: TCP_OPEN,
        _pad: [0; 2],
        last_seen_ns: now,
        next_hop: NextHop::default(),
    };
    Ok(NewFlow { forward, reverse_key })
}

/// Takes the SNAT port in `reverse_key` if nobody holds it, or if its holder has idled out.
#[inline(always)]
fn claim_port(reverse_key: &FlowKey, reverse: &Flow, now: u64) -> bool {
    if CONNTRACK_MAP.insert(reverse_key, reverse, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    let taken_by_live_flow = find_flow(reverse_key, now).is_some();
    !taken_by_live_flow && CONNTRACK_MAP.insert(reverse_key, reverse, BPF_ANY as u64).is_ok()
}

/// Inserts the forward entry of a reserved connection; undoes the reservation if the table
/// refuses it. (An idled-out forward entry for the same tuple is overwritten.)
#[inline(always)]
pub fn commit_flow(key: &FlowKey, new: &NewFlow) -> Result<(), Verdict> {
    if CONNTRACK_MAP.insert(key, &new.forward, BPF_ANY as u64).is_err() {
        let _ = CONNTRACK_MAP.remove(&new.reverse_key);
        return Err(Verdict::drop(Reason::DropConntrackFull));
    }
    Ok(())
}
