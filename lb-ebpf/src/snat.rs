//! NAT source ports for new connections, on one of the service's SNAT addresses (the operator
//! may give several: each brings its own ports). A port belongs to one connection per (SNAT
//! address, backend address, backend port, protocol): exactly the key of the connection's reverse entry,
//! so claiming a port is inserting that entry into the new-flow table with `BPF_NOEXIST`. Two
//! CPUs can never both take a port that way; a port whose entry sits in the main table is taken.
//!
//! The search: first the client's own source port when it lies in the service's range (what
//! Linux's nf_nat does: a client that reuses its port reaches the backend on the very tuple it
//! used before, whose TIME_WAIT accepts the newer SYN), taken over at once from a holder that
//! has idled out (the client's own earlier connection, still in the LRU table); otherwise the client's port shifted by
//! an offset derived from its address, so a client reusing its port lands on the same tuple
//! again and one client's whole ephemeral range maps without collisions; then
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
use lb_common::{CtEvent, Flow, FlowKey, Service, hash::client_hash, maps::MAX_SNAT_PER_SERVICE};

use crate::{
    conntrack::{Table, is_expired, peer_key},
    maps::{CONNTRACK_MAP, CT_NEW_MAP},
    stats,
};

const _: () = assert!(MAX_SNAT_PER_SERVICE.is_power_of_two());

/// Random ports tried after the client's own.
pub const PORT_PROBES: u32 = 32;

/// What [`try_port`] found, in one word so it can be a BPF subprogram (its loop body would
/// otherwise be inlined into every probe and overflow the verifier's budget): [`CLAIMED`],
/// [`TAKEN`], or a holder that may be taken over: its `last_seen_ns` (0: idled out), with
/// [`IN_MAIN`] set if it sits in the main table.
type Probe = u64;
const CLAIMED: Probe = u64::MAX;
const TAKEN: Probe = u64::MAX - 1;
const IN_MAIN: Probe = 1 << 62;

#[inline(never)]
fn try_port(reverse_key: &FlowKey, reverse: &Flow, now: u64) -> Probe {
    if let Some(holder) = CONNTRACK_MAP.get_ptr_mut(reverse_key) {
        // SAFETY: map value pointer, valid until the program returns.
        return if is_expired(unsafe { &*holder }, reverse_key.proto, now) { IN_MAIN } else { TAKEN };
    }
    if CT_NEW_MAP.insert(reverse_key, reverse, BPF_NOEXIST as u64).is_ok() {
        return CLAIMED;
    }
    match CT_NEW_MAP.get_ptr_mut(reverse_key) {
        Some(holder) => {
            // SAFETY: as above.
            let h = unsafe { &*holder };
            if is_expired(h, reverse_key.proto, now) { 0 } else { h.last_seen_ns & (IN_MAIN - 1) }
        }
        None => TAKEN,
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

/// Claims a NAT port for the connection `key` (the client's packet) on one of `service`'s SNAT
/// addresses, by inserting its reverse entry `reverse` under `reverse_key`, whose `dst_addr` and
/// `dst_port` it sets to the address and port won. False when the service has no address or
/// range, or every port tried is held by an established connection.
#[inline(always)]
pub fn claim_port(key: &FlowKey, reverse_key: &mut FlowKey, reverse: &Flow, service: &Service, now: u64) -> bool {
    let (min, max) = (service.snat_port_min, service.snat_port_max);
    let count = service.snat_count as usize;
    if min == 0 || max < min || count == 0 || count > MAX_SNAT_PER_SERVICE {
        return false;
    }
    let span = (max - min) as u32 + 1;
    let mut victim_port: u16 = 0;
    let mut victim_addr = [0u8; 4];
    let mut victim: Probe = TAKEN;
    let mut consider = |addr: [u8; 4], port: u16, probe: Probe| -> bool {
        if probe == CLAIMED {
            return true;
        }
        // Idled-out holders (0, or IN_MAIN alone) sort first, then the least recently seen.
        if probe != TAKEN && probe & (IN_MAIN - 1) < victim & (IN_MAIN - 1) {
            victim_port = port;
            victim_addr = addr;
            victim = probe;
        }
        false
    };
    // The client's own port (or one derived from its tuple) on the first address; the random
    // probes then go round all of them.
    let keep = key.src_port >= min && key.src_port <= max;
    // Outside the range, the client's port shifted by an offset of its own: one client's ports,
    // up to `span` of them in a row (its whole ephemeral range), map to distinct NAT ports.
    let first =
        if keep { key.src_port } else { min + ((u32::from(key.src_port) + client_hash(key.src_addr)) % span) as u16 };
    reverse_key.dst_addr = service.snat_addrs[0];
    reverse_key.dst_port = first;
    let probe = try_port(reverse_key, reverse, now);
    // A holder of the first port that has idled out (typically this client's own earlier
    // connection from the same port) gives it up at once, so the backend sees the tuple again.
    let claimed =
        probe == CLAIMED || (probe != TAKEN && probe & (IN_MAIN - 1) == 0 && take_over(reverse_key, reverse, probe));
    if claimed {
        if keep {
            stats::count_event(CtEvent::PortPreserved);
        }
        return true;
    }
    consider(reverse_key.dst_addr, first, probe);
    for i in 0..PORT_PROBES {
        // SAFETY: helper without arguments.
        let port = min + (unsafe { bpf_get_prandom_u32() } % span) as u16;
        // The mask changes nothing (count <= MAX_SNAT_PER_SERVICE) but shows the verifier the
        // bound; the volatile read keeps LLVM from proving it away.
        let idx = (i as usize + 1) % count;
        // SAFETY: reads a local.
        let idx = unsafe { core::ptr::read_volatile(&idx) } & (MAX_SNAT_PER_SERVICE - 1);
        reverse_key.dst_addr = service.snat_addrs[idx];
        reverse_key.dst_port = port;
        if consider(reverse_key.dst_addr, port, try_port(reverse_key, reverse, now)) {
            return true;
        }
    }
    if victim_port == 0 {
        return false;
    }
    reverse_key.dst_addr = victim_addr;
    reverse_key.dst_port = victim_port;
    take_over(reverse_key, reverse, victim)
}

/// For a service that keeps the client's address: the connection's reverse entry goes to the
/// client's own address and port (`reverse_key`'s destination), claimed like a NAT port. The
/// tuple towards the backend is the client's, so it can be held only by that client's earlier
/// connection from the same port through another frontend of the same backend, or by an
/// idled-out one, which gives it up at once. False when a live connection holds it.
#[inline(always)]
pub fn keep_client_address(key: &FlowKey, reverse_key: &mut FlowKey, reverse: &Flow, now: u64) -> bool {
    reverse_key.dst_addr = key.src_addr;
    reverse_key.dst_port = key.src_port;
    match try_port(reverse_key, reverse, now) {
        CLAIMED => true,
        TAKEN => false,
        holder if holder & (IN_MAIN - 1) == 0 => take_over(reverse_key, reverse, holder),
        _ => false,
    }
}

/// Evicts the connection holding `reverse_key` (found by [`try_port`] as `holder`) and claims
/// its port; false if another CPU claimed it in between.
#[inline(always)]
fn take_over(reverse_key: &FlowKey, reverse: &Flow, holder: Probe) -> bool {
    evict(if holder & IN_MAIN != 0 { Table::Main } else { Table::New }, reverse_key);
    if CT_NEW_MAP.insert(reverse_key, reverse, BPF_NOEXIST as u64).is_err() {
        return false;
    }
    stats::count_event(CtEvent::PortTakenOver);
    true
}
