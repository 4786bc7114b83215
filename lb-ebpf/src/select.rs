//! Which service a packet is for (frontend match, including "any local address"), which
//! backend a new connection goes to (Maglev slot), and whether a flow's backend is still there.

use lb_common::{
    ANY_LOCAL_ADDR, BACKEND_REMOVED, Backend, Flow, FlowKey, FrontendKey, PORT_TRACKED_SHIFT, PROTO_BIT_TCP,
    PROTO_BIT_UDP, PROTO_TCP, SERVICE_STICKY, Service,
    hash::{client_hash, flow_hash},
    maps::maglev_slot,
};

use crate::maps::{
    BACKENDS_MAP, FE_PORTS_MAP, FRONTENDS_MAP, LOCAL_ADDRS_MAP, MAGLEV_GEN_MAP, MAGLEV_MAP, SERVICES_MAP,
    SNAT_ADDRS_MAP,
};

/// Cheap pre-filter: does any frontend of this protocol use the destination port, or did one
/// whose connections may still be running (`lb_common::PORT_TRACKED_SHIFT`)?
#[inline(always)]
pub fn port_has_frontend(key: &FlowKey) -> bool {
    let bit = if key.proto == PROTO_TCP { PROTO_BIT_TCP } else { PROTO_BIT_UDP };
    match FE_PORTS_MAP.get(key.dst_port as u32) {
        Some(bits) => *bits & (bit | bit << PORT_TRACKED_SHIFT) != 0,
        None => false,
    }
}

/// Whether replies may come back to `addr`: it is some service's SNAT address.
#[inline(always)]
pub fn is_snat_addr(addr: [u8; 4]) -> bool {
    // SAFETY: only the presence is read.
    unsafe { SNAT_ADDRS_MAP.get(&addr) }.is_some()
}

/// The service of the frontend the packet is addressed to: the exact address first, then the
/// node's "any local address" frontend if the destination is one of its addresses.
#[inline(always)]
pub fn find_service(key: &FlowKey) -> Option<u32> {
    let mut fk = FrontendKey { addr: key.dst_addr, port: key.dst_port, proto: key.proto, _pad: 0 };
    // SAFETY: values are copied out immediately.
    if let Some(fe) = unsafe { FRONTENDS_MAP.get(&fk) } {
        return Some(fe.service_id);
    }
    // SAFETY: as above.
    unsafe { LOCAL_ADDRS_MAP.get(&key.dst_addr) }?;
    fk.addr = ANY_LOCAL_ADDR;
    // SAFETY: as above.
    unsafe { FRONTENDS_MAP.get(&fk) }.map(|fe| fe.service_id)
}

#[inline(always)]
pub fn service(service_id: u32) -> Option<Service> {
    SERVICES_MAP.get(service_id).copied()
}

/// Whether the backend a flow was sent to has left its service: flagged removed by the agent, or
/// its id now holds another address.
#[inline(always)]
pub fn backend_is_gone(flow: &Flow) -> bool {
    !backend_is_still(flow.backend_id, flow.new_dst_addr, flow.new_dst_port)
}

/// Whether backend `backend_id` is still in its service at `addr` and `port` (a port of 0 in
/// the table, a VIP task's "the port the client asked for", matches any).
#[inline(always)]
pub fn backend_is_still(backend_id: u32, addr: [u8; 4], port: u16) -> bool {
    match BACKENDS_MAP.get(backend_id) {
        Some(b) => b.flags & BACKEND_REMOVED == 0 && b.addr == addr && (b.port == port || b.port == 0),
        None => false,
    }
}

/// The backend Maglev assigns to this connection (or to this client, for sticky services).
#[inline(always)]
pub fn pick_backend(service_id: u32, service: &Service, key: &FlowKey) -> Option<(u32, Backend)> {
    if service.active_backends == 0 {
        return None;
    }
    let hash = if service.flags & SERVICE_STICKY != 0 {
        client_hash(key.src_addr)
    } else {
        flow_hash(key.src_addr, key.dst_addr, key.src_port, key.dst_port, key.proto)
    };
    maglev_backend(service_id, hash)
}

/// The backend in the Maglev slot `hash` picks of the service's table in use.
#[inline(always)]
pub fn maglev_backend(service_id: u32, hash: u32) -> Option<(u32, Backend)> {
    // The generation read once picks one table; its size and slots are read from it alone.
    // Race, handled: the agent may flip the generation meanwhile (another CPU then reads the
    // new table), but it rewrites or frees the table it retired only after an RCU grace period
    // has passed since the flip, so this program finishes its reads on the table it found.
    let generation = *MAGLEV_GEN_MAP.get(service_id)?;
    let table = MAGLEV_MAP.get(maglev_slot(service_id, generation))?;
    let size = *table.get(0)?;
    if size == 0 {
        return None;
    }
    let backend_id = *table.get(1 + hash % size)?;
    if backend_id == 0 {
        return None;
    }
    let backend = *BACKENDS_MAP.get(backend_id)?;
    Some((backend_id, backend))
}
