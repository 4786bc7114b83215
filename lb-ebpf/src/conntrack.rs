//! The connection tables. A connection has two entries, one per direction (client->frontend and
//! backend->SNAT address), each saying what to rewrite its packets to. An unconfirmed connection
//! (a TCP handshake in progress, a UDP flow not yet answered) lives in the small new-flow table;
//! the packet that confirms it (the client's ACK of the backend's SYN-ACK, the first UDP answer)
//! moves both entries to the main table. A flood of spoofed SYNs therefore only ever competes
//! with other unconfirmed flows and never evicts an established connection.
//!
//! TCP states move forward only: new -> SYN received -> established -> half-closed -> closing,
//! and reset from anywhere. Every state has an idle timeout (`lb_common::idle_timeout_ns`).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::XdpContext,
};
use lb_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_HALF_CLOSED, CT_NEW, CT_RESET, CT_SYN_RECV, CtEvent, DIR_TO_BACKEND, DIR_TO_CLIENT,
    FIN_FROM_BACKEND, FIN_FROM_CLIENT, Flow, FlowKey, LAST_SEEN_GRANULARITY_NS, NextHop, PROTO_TCP, idle_timeout_ns,
    is_unconfirmed,
};

use crate::{
    maps::{CONNTRACK_MAP, CT_NEW_MAP},
    parse::{self, Packet},
    stats,
};

/// Which table an entry was found in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Main,
    New,
}

/// A live entry: a map value pointer, valid until the program returns (or the entry is removed).
#[derive(Clone, Copy)]
pub struct Tracked {
    pub flow: *mut Flow,
    pub table: Table,
}

impl Tracked {
    #[inline(always)]
    pub fn get(&self) -> &Flow {
        // SAFETY: a map value pointer from `find_flow`, valid until the program returns.
        unsafe { &*self.flow }
    }
}

#[inline(always)]
pub fn is_expired(flow: &Flow, proto: u8, now: u64) -> bool {
    now.saturating_sub(flow.last_seen_ns) > idle_timeout_ns(proto, flow.state)
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

/// The other direction's entry of the connection whose entry `flow` is stored under `key`: it
/// rewrites the peer's packets back to `key`'s tuple, reversed. Both entries are derived from
/// each other, so either can be rebuilt from the one at hand.
#[inline(always)]
pub fn mirror(key: &FlowKey, flow: &Flow) -> Flow {
    Flow {
        new_src_addr: key.dst_addr,
        new_dst_addr: key.src_addr,
        new_src_port: key.dst_port,
        new_dst_port: key.src_port,
        direction: if flow.direction == DIR_TO_BACKEND { DIR_TO_CLIENT } else { DIR_TO_BACKEND },
        next_hop: NextHop::default(),
        ..*flow
    }
}

#[inline(always)]
fn live(flow: Option<*mut Flow>, proto: u8, now: u64, table: Table) -> Option<Tracked> {
    let flow = flow?;
    // SAFETY: a map value pointer, valid until the program returns.
    if is_expired(unsafe { &*flow }, proto, now) { None } else { Some(Tracked { flow, table }) }
}

/// The live entry for this packet's tuple: the main table first (established traffic pays one
/// lookup), then the new-flow table.
#[inline(always)]
pub fn find_flow(key: &FlowKey, now: u64) -> Option<Tracked> {
    if let Some(t) = live(CONNTRACK_MAP.get_ptr_mut(key), key.proto, now, Table::Main) {
        return Some(t);
    }
    live(CT_NEW_MAP.get_ptr_mut(key), key.proto, now, Table::New)
}

#[inline(always)]
fn lookup(table: Table, key: &FlowKey) -> Option<*mut Flow> {
    match table {
        Table::Main => CONNTRACK_MAP.get_ptr_mut(key),
        Table::New => CT_NEW_MAP.get_ptr_mut(key),
    }
}

#[inline(always)]
fn remove(table: Table, key: &FlowKey) {
    let _ = match table {
        Table::Main => CONNTRACK_MAP.remove(key),
        Table::New => CT_NEW_MAP.remove(key),
    };
}

/// What a packet of a tracked connection does to it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Forward it; the entries stay where they are.
    Stay,
    /// It confirms the connection: move both entries to the main table, then forward it.
    Confirm,
}

/// The fields of an entry a packet can move along (both entries of a connection share them).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Progress {
    state: u8,
    fins: u8,
    backend_isn: u32,
}

impl Progress {
    #[inline(always)]
    fn of(f: &Flow) -> Progress {
        Progress { state: f.state, fins: f.fins, backend_isn: f.backend_isn }
    }

    #[inline(always)]
    fn write(self, f: &mut Flow) {
        f.state = self.state;
        f.fins = self.fins;
        f.backend_isn = self.backend_isn;
    }
}

/// The entry's state, FIN bits and backend ISN after this packet, and whether it confirms the
/// connection.
#[inline(always)]
fn advance(ctx: &XdpContext, f: &Flow, pkt: &Packet) -> (Progress, Step) {
    let mut next = Progress::of(f);
    if pkt.key.proto != PROTO_TCP {
        if f.state == CT_NEW && f.direction == DIR_TO_CLIENT {
            next.state = CT_ESTABLISHED;
            return (next, Step::Confirm);
        }
        return (next, Step::Stay);
    }
    let flags = pkt.tcp_flags;
    if f.state == CT_RESET {
        return (next, Step::Stay);
    }
    if flags & parse::TCP_FLAG_RST != 0 {
        next.state = CT_RESET;
        return (next, Step::Stay);
    }
    let mut step = Step::Stay;
    let syn_ack = parse::TCP_FLAG_SYN | parse::TCP_FLAG_ACK;
    if f.state == CT_NEW || f.state == CT_SYN_RECV {
        if f.direction == DIR_TO_CLIENT && flags & syn_ack == syn_ack {
            // The backend's SYN-ACK (or its retransmission, with the same ISN).
            next.state = CT_SYN_RECV;
            next.backend_isn = parse::tcp_seq(ctx).unwrap_or(0);
        } else if f.state == CT_SYN_RECV && f.direction == DIR_TO_BACKEND && flags & syn_ack == parse::TCP_FLAG_ACK {
            if parse::tcp_ack(ctx) == Some(f.backend_isn.wrapping_add(1)) {
                next.state = CT_ESTABLISHED;
                step = Step::Confirm;
            } else {
                stats::count_event(CtEvent::HandshakeAckMismatch);
            }
        }
    }
    if flags & parse::TCP_FLAG_FIN != 0 && next.state >= CT_ESTABLISHED {
        next.fins |= if f.direction == DIR_TO_BACKEND { FIN_FROM_CLIENT } else { FIN_FROM_BACKEND };
        next.state = if next.fins == FIN_FROM_CLIENT | FIN_FROM_BACKEND { CT_CLOSING } else { CT_HALF_CLOSED };
    }
    (next, step)
}

/// Moves the connection along on this packet: refreshes `last_seen_ns` (at most once per
/// granularity, to keep the hot path free of writes), records state changes on both entries so
/// both directions idle out together, and says whether the packet confirms the connection.
///
/// Two CPUs may handle the two directions at once; each writes only fields that move forward
/// (state, FIN bits), and a lost update is corrected by the next packet of that direction.
#[inline(always)]
pub fn touch_flow(ctx: &XdpContext, t: Tracked, pkt: &Packet, now: u64) -> Step {
    // SAFETY: map value pointer from find_flow.
    let f = unsafe { &mut *t.flow };
    let (next, step) = advance(ctx, f, pkt);
    let stale = now.saturating_sub(f.last_seen_ns) > LAST_SEEN_GRANULARITY_NS;
    if !stale && next == Progress::of(f) {
        return step;
    }
    next.write(f);
    if step == Step::Confirm {
        // `confirm` copies this entry, and rebuilds the peer from it.
        return step;
    }
    if stale {
        f.last_seen_ns = now;
    }
    if let Some(p) = lookup(t.table, &peer_key(f, pkt.key.proto)) {
        // SAFETY: map value pointer.
        let p = unsafe { &mut *p };
        next.write(p);
        if stale {
            p.last_seen_ns = now;
        }
    }
    step
}

/// Moves the unconfirmed connection whose entry `t` is stored under `key` to the main table,
/// as established. The entry about to be used is inserted last, so a packet of either direction
/// on another CPU finds the connection in one table or the other throughout. Returns the main
/// table's entry for `key`, or `None` if the main table already holds the peer's tuple (a port
/// claimed twice in a race): the connection is dropped then.
#[inline(always)]
pub fn confirm(key: &FlowKey, t: Tracked, now: u64) -> Option<Tracked> {
    let mut this = *t.get();
    this.last_seen_ns = now;
    let peer_key = peer_key(&this, key.proto);
    let mut peer = mirror(key, &this);
    if let Some(p) = CT_NEW_MAP.get_ptr_mut(&peer_key) {
        // SAFETY: map value pointer; the cached next hop is worth keeping.
        peer.next_hop = unsafe { (*p).next_hop };
    }
    let confirmed = CONNTRACK_MAP.insert(&peer_key, &peer, BPF_NOEXIST as u64).is_ok()
        && CONNTRACK_MAP.insert(key, &this, BPF_ANY as u64).is_ok();
    let _ = CT_NEW_MAP.remove(&peer_key);
    let _ = CT_NEW_MAP.remove(key);
    if !confirmed {
        stats::count_event(CtEvent::ConfirmFailed);
        return None;
    }
    stats::count_event(CtEvent::Confirmed);
    CONNTRACK_MAP.get_ptr_mut(key).map(|flow| Tracked { flow, table: Table::Main })
}

/// Whether the TCP segment `pkt` on the client-side entry `t` starts a new connection instead:
/// a SYN on a connection that has seen FIN or RST (the client reuses its port, as clients
/// behind a NAT do within seconds; the old backend may be gone), or a SYN retransmitted on an
/// unconfirmed connection whose backend has left (its task was killed before it answered) or
/// whose NAT port another connection has taken since (see `snat`).
#[inline(always)]
pub fn is_reopened_by(t: Tracked, pkt: &Packet, backend_gone: bool) -> bool {
    let f = t.get();
    if !pkt.is_syn_without_ack() {
        return false;
    }
    if !is_unconfirmed(f.state) {
        return f.state != CT_ESTABLISHED;
    }
    if backend_gone {
        return true;
    }
    // The reverse entry must still lead back to this client.
    match CT_NEW_MAP.get_ptr_mut(&peer_key(f, pkt.key.proto)) {
        // SAFETY: map value pointer.
        Some(p) => unsafe { (*p).new_dst_addr != pkt.key.src_addr || (*p).new_dst_port != pkt.key.src_port },
        None => true,
    }
}

/// Removes both entries of the connection `t` (found under `key`), freeing its NAT port.
#[inline(always)]
pub fn retire_flow(key: &FlowKey, t: Tracked) {
    let peer = peer_key(t.get(), key.proto);
    remove(t.table, &peer);
    remove(t.table, key);
    stats::count_event(CtEvent::Reopened);
}

/// Records a new connection's client-side entry (its NAT port is already claimed by the
/// reverse entry, see `snat::claim`); undoes the claim if the table refuses it.
#[inline(always)]
pub fn commit_flow(key: &FlowKey, forward: &Flow, reverse_key: &FlowKey) -> bool {
    if CT_NEW_MAP.insert(key, forward, BPF_ANY as u64).is_err() {
        let _ = CT_NEW_MAP.remove(reverse_key);
        return false;
    }
    true
}

// `advance` relies on the forward order of the states.
const _: () = assert!(
    CT_NEW < CT_SYN_RECV
        && CT_SYN_RECV < CT_ESTABLISHED
        && CT_ESTABLISHED < CT_HALF_CLOSED
        && CT_HALF_CLOSED < CT_CLOSING
        && CT_CLOSING < CT_RESET
);
