//! NAT source ports for new connections. A port belongs to one connection per (SNAT address,
//! backend address, backend port, protocol): exactly the key of the connection's reverse entry,
//! so claiming a port is inserting that entry into the new-flow table with `BPF_NOEXIST`. Two
//! CPUs can never both take a port that way; a port whose entry sits in the main table is taken.
//!
//! The search: first the client's own source port when it lies in the service's range (what
//! Linux's nf_nat does: a client that reuses its port reaches the backend on the very tuple it
//! used before, whose TIME_WAIT accepts the newer SYN); otherwise a port derived from the
//! client's address and port, so a client reusing its port still lands on the same tuple; then
//! [`PORT_PROBES`] random ports. When
//! every probe is taken, the port of the oldest unconfirmed connection met on the way (or of a
//! holder that has idled out) is taken over, so a SYN flood that fills a backend's range gives
//! its ports back to real clients at once instead of after the new-flow timeout.
//!
//! Race, written down: two CPUs taking over the same victim in the same instant each remove it
//! and insert; only one insert succeeds unless the later removal lands between the other's
//! insert and its use. The loser's connection then sees its SYN-ACK go elsewhere, and its next
//! SYN retransmission finds its reverse entry gone and is balanced afresh
//! (`conntrack::is_reopened_by`). Only unconfirmed or idled-out connections are ever taken over.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use lb_common::{CtEvent, Flow, FlowKey, hash::flow_hash};

use crate::{
    conntrack::{Table, is_expired, peer_key},
    maps::{CONNTRACK_MAP, CT_NEW_MAP},
    stats,
};

/// Random ports tried after the client's own.
pub const PORT_PROBES: u32 = 32;

enum Probe {
    Claimed,
    Taken,
    /// Held by an unconfirmed or idled-out connection last seen at this time (0: idled out).
    Reclaimable(Table, u64),
}

#[inline(always)]
fn try_port(reverse_key: &FlowKey, reverse: &Flow, now: u64) -> Probe {
    if let Some(holder) = CONNTRACK_MAP.get_ptr_mut(reverse_key) {
        // SAFETY: map value pointer, valid until the program returns.
        return if is_expired(unsafe { &*holder }, reverse_key.proto, now) {
            Probe::Reclaimable(Table::Main, 0)
        } else {
            Probe::Taken
        };
    }
    if CT_NEW_MAP.insert(reverse_key, reverse, BPF_NOEXIST as u64).is_ok() {
        return Probe::Claimed;
    }
    match CT_NEW_MAP.get_ptr_mut(reverse_key) {
        Some(holder) => {
            // SAFETY: as above.
            let h = unsafe { &*holder };
            Probe::Reclaimable(Table::New, if is_expired(h, reverse_key.proto, now) { 0 } else { h.last_seen_ns })
        }
        None => Probe::Taken,
    }
}

/// Removes both entries of the connection holding `reverse_key` in `table`.
#[inline(always)]
fn evict(table: Table, reverse_key: &FlowKey) {
    let holder = match table {
        Table::Main => CONNTRACK_MAP.get_ptr_mut(reverse_key),
        Table::New => CT_NEW_MAP.get_ptr_mut(reverse_key),
    };
    let Some(holder) = holder else { return };
    // SAFETY: map value pointer; read before the entries are removed.
    let forward_key = peer_key(unsafe { &*holder }, reverse_key.proto);
    let _ = match table {
        Table::Main => CONNTRACK_MAP.remove(&forward_key).and(CONNTRACK_MAP.remove(reverse_key)),
        Table::New => CT_NEW_MAP.remove(&forward_key).and(CT_NEW_MAP.remove(reverse_key)),
    };
}

/// Claims a NAT port in `min..=max` for the connection `key` (the client's packet) by inserting
/// its reverse entry `reverse` under `reverse_key`, whose `dst_port` it sets to the port won.
/// False when the range is empty or every port tried is held by an established connection.
#[inline(always)]
pub fn claim_port(key: &FlowKey, reverse_key: &mut FlowKey, reverse: &Flow, range: (u16, u16), now: u64) -> bool {
    let (min, max) = range;
    if min == 0 || max < min {
        return false;
    }
    let span = (max - min) as u32 + 1;
    let mut victim_port: u16 = 0;
    let mut victim_table = Table::New;
    let mut victim_seen = u64::MAX;
    let mut consider = |port: u16, probe: Probe| -> bool {
        match probe {
            Probe::Claimed => return true,
            Probe::Taken => {}
            Probe::Reclaimable(table, seen) => {
                if seen < victim_seen {
                    victim_port = port;
                    victim_table = table;
                    victim_seen = seen;
                }
            }
        }
        false
    };
    if key.src_port >= min && key.src_port <= max {
        reverse_key.dst_port = key.src_port;
        if consider(key.src_port, try_port(reverse_key, reverse, now)) {
            stats::count_event(CtEvent::PortPreserved);
            return true;
        }
    } else {
        let hash = flow_hash(key.src_addr, key.dst_addr, key.src_port, key.dst_port, key.proto);
        let port = min + (hash % span) as u16;
        reverse_key.dst_port = port;
        if consider(port, try_port(reverse_key, reverse, now)) {
            return true;
        }
    }
    for _ in 0..PORT_PROBES {
        // SAFETY: helper without arguments.
        let port = min + (unsafe { bpf_get_prandom_u32() } % span) as u16;
        reverse_key.dst_port = port;
        if consider(port, try_port(reverse_key, reverse, now)) {
            return true;
        }
    }
    if victim_port == 0 {
        return false;
    }
    reverse_key.dst_port = victim_port;
    evict(victim_table, reverse_key);
    if CT_NEW_MAP.insert(reverse_key, reverse, BPF_NOEXIST as u64).is_err() {
        return false;
    }
    stats::count_event(CtEvent::PortTakenOver);
    true
}
