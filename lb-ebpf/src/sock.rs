//! Socket load balancing: the cgroup programs (attached at the cgroup v2 root, so they run for
//! every process) that send a registered namespace's connection to a frontend straight to a
//! backend, by rewriting the address `connect` or an unconnected `sendmsg` names, and that show
//! the frontend again where the application reads its peer (`recvmsg`, `getpeername`). The
//! decision is made once per connection (per destination, for an unconnected UDP socket): no
//! packet is translated, so nothing else of the socket's traffic changes.
//!
//! Which frontends a socket may use depends on its network namespace (`slb_sk_member`): the
//! VIPs of the overlays the namespace is attached to, and, for a namespace of this node, the
//! node's published ports at its addresses (127.0.0.0/8 too, for the node's own namespace). A
//! container the agent has not registered yet gets them all ([`lb_common::SockConfig`]); a
//! socket of any other namespace is never touched.
//!
//! Races, handled: the agent may change a service's table while a connect runs on another CPU;
//! the Maglev read is the same generation-once read the XDP program does (see
//! `select::maglev_backend`). Socket storage is per socket, and the kernel serialises a socket's
//! connect, sendmsg and recvmsg calls under its lock, so its slots need no atomics.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::{
    ANY_LOCAL_ADDR, FrontendKey, MEMBER_HOST, MEMBER_NODE, MEMBER_PUBLISHED, MemberKey, PROTO_TCP, PROTO_UDP,
    SERVICE_STICKY, SERVICE_VIP, SOCK_SLOTS, SockEvent, SockLb, SockSlot,
    hash::{namespace_hash, socket_hash},
};

use crate::{
    maps::{FRONTENDS_MAP, LOCAL_ADDRS_MAP, SK_CONFIG_MAP, SK_EVENTS_MAP, SK_LB_MAP, SK_MEMBER_MAP},
    select, stats,
};

const AF_INET: u32 = 2;

/// The address a socket call names (or reports), as the program may rewrite it.
struct Named {
    addr: [u8; 4],
    port: u16,
    proto: u8,
}

#[inline(always)]
fn named(ctx: &SockAddrContext) -> Option<Named> {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.user_family != AF_INET {
        return None;
    }
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    Some(Named { addr: sa.user_ip4.to_ne_bytes(), port: u16::from_be(sa.user_port as u16), proto })
}

#[inline(always)]
fn rewrite(ctx: &SockAddrContext, addr: [u8; 4], port: u16) {
    // SAFETY: as in `named`; the verifier allows these writes in the four hooks used here.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = u32::from_ne_bytes(addr);
    sa.user_port = port.to_be() as u32;
}

/// `connect` (TCP, connected UDP) and unconnected `sendmsg`: a frontend becomes a backend.
#[inline(always)]
pub fn balance(ctx: &SockAddrContext, unconnected: bool) {
    let Some(to) = named(ctx) else { return };
    // SAFETY: the context is valid; the helper only reads the socket.
    let storage = unsafe { SK_LB_MAP.get_ptr_mut(ctx) };
    if unconnected && !storage.is_null() {
        // SAFETY: socket storage, valid while the program runs; see the module's races note.
        if let Some(slot) = find_slot(unsafe { &*storage }, |s| s.frontend == to.addr && s.frontend_port == to.port) {
            if select::backend_is_still(slot.backend_id, slot.backend, slot.backend_port) {
                rewrite(ctx, slot.backend, slot.backend_port);
                count(SockEvent::Kept);
                return;
            }
        }
    }
    // SAFETY: the context is valid.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some((service_id, unregistered)) = find_service(&to, netns) else { return };
    let Some(service) = select::service(service_id) else { return };
    let hash = if service.flags & SERVICE_STICKY != 0 {
        namespace_hash(netns)
    } else {
        // SAFETY: the context is valid.
        socket_hash(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }, to.addr, to.port, to.proto)
    };
    let Some((backend_id, backend)) = select::maglev_backend(service_id, hash) else {
        count(SockEvent::NoBackend);
        return;
    };
    let backend_port = if backend.port == 0 { to.port } else { backend.port };
    rewrite(ctx, backend.addr, backend_port);
    stats::count_new_flow(service_id, backend_id);
    count(SockEvent::Balanced);
    if unregistered {
        count(SockEvent::Unregistered);
    }
    let slot = SockSlot {
        frontend: to.addr,
        backend: backend.addr,
        frontend_port: to.port,
        backend_port,
        service_id,
        backend_id,
    };
    remember(ctx, storage, &to, slot);
}

/// `recvmsg` (a datagram's source) and `getpeername`: a backend this socket was sent to shows
/// as the frontend the application named.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) {
    let Some(from) = named(ctx) else { return };
    // SAFETY: the context is valid; the helper only reads the socket.
    let storage = unsafe { SK_LB_MAP.get_ptr_mut(ctx) };
    if storage.is_null() {
        return;
    }
    // SAFETY: as in `balance`.
    if let Some(slot) = find_slot(unsafe { &*storage }, |s| s.backend == from.addr && s.backend_port == from.port) {
        rewrite(ctx, slot.frontend, slot.frontend_port);
        count(SockEvent::Reversed);
    }
}

/// The service of the frontend `to` names, if the namespace may use it: a VIP (any port) of an
/// overlay the namespace is attached to; for namespaces that reach published ports an explicit
/// frontend, or a published port at one of the node's addresses. A container the agent has not
/// registered yet may use every VIP and published port (see `lb_common::SockConfig`): the second
/// value says it was one.
#[inline(always)]
fn find_service(to: &Named, netns: u64) -> Option<(u32, bool)> {
    let registered = member_flags(netns, MEMBER_NODE);
    let mut key = FrontendKey { addr: to.addr, port: 0, proto: to.proto, _pad: 0 };
    // SAFETY: values are copied out immediately.
    if let Some(fe) = unsafe { FRONTENDS_MAP.get(&key) } {
        let service = select::service(fe.service_id)?;
        if service.flags & SERVICE_VIP == 0 {
            return None;
        }
        if registered.is_some() && member_flags(netns, service.vni).is_none() {
            count(SockEvent::NotMember);
            return None;
        }
        let unregistered = registered.is_none();
        if unregistered && !is_unregistered_container() {
            return None;
        }
        return Some((fe.service_id, unregistered));
    }
    let node = match registered {
        Some(flags) if flags & MEMBER_PUBLISHED != 0 => flags,
        Some(_) => return None,
        None if is_unregistered_container() => MEMBER_PUBLISHED,
        None => return None,
    };
    let unregistered = registered.is_none();
    key.port = to.port;
    // SAFETY: as above.
    if let Some(fe) = unsafe { FRONTENDS_MAP.get(&key) } {
        return Some((fe.service_id, unregistered));
    }
    // SAFETY: only the presence is read.
    let local = unsafe { LOCAL_ADDRS_MAP.get(&to.addr) }.is_some() || (node & MEMBER_HOST != 0 && to.addr[0] == 127);
    if !local {
        return None;
    }
    key.addr = ANY_LOCAL_ADDR;
    // SAFETY: as above.
    unsafe { FRONTENDS_MAP.get(&key) }.map(|fe| (fe.service_id, unregistered))
}

/// Whether the calling process is below the container runtime's cgroup (asked only for a
/// namespace the agent has not registered).
#[inline(always)]
fn is_unregistered_container() -> bool {
    let Some(config) = SK_CONFIG_MAP.get(0) else { return false };
    if config.containers_cgroup == 0 {
        return false;
    }
    // SAFETY: helper without pointers.
    unsafe { bpf_get_current_ancestor_cgroup_id(config.containers_level as i32) == config.containers_cgroup }
}

#[inline(always)]
fn member_flags(netns: u64, vni: u32) -> Option<u32> {
    let key = MemberKey { netns_cookie: netns, vni, _pad: 0 };
    // SAFETY: the value is copied out immediately.
    unsafe { SK_MEMBER_MAP.get(&key) }.copied()
}

#[inline(always)]
fn find_slot(lb: &SockLb, matches: impl Fn(&SockSlot) -> bool) -> Option<SockSlot> {
    let mut i = 0;
    while i < SOCK_SLOTS {
        let slot = &lb.slots[i];
        if slot.backend_id != 0 && matches(slot) {
            return Some(*slot);
        }
        i += 1;
    }
    None
}

/// Notes the translation in the socket's storage: over the slot of the same frontend, else the
/// next in turn. A connected socket keeps one (a new connect replaces it).
#[inline(always)]
fn remember(ctx: &SockAddrContext, storage: *mut SockLb, to: &Named, slot: SockSlot) {
    let storage = if storage.is_null() {
        // SAFETY: the context is valid; a new zeroed value is created.
        unsafe { SK_LB_MAP.get_or_insert_ptr_mut(ctx, None) }
    } else {
        storage
    };
    if storage.is_null() {
        count(SockEvent::NoStorage);
        return;
    }
    // SAFETY: as in `balance`.
    let lb = unsafe { &mut *storage };
    let mut i = 0;
    while i < SOCK_SLOTS {
        let s = &lb.slots[i];
        if s.backend_id == 0 || (s.frontend == to.addr && s.frontend_port == to.port) {
            lb.slots[i] = slot;
            return;
        }
        i += 1;
    }
    let next = lb.next as usize % SOCK_SLOTS;
    lb.slots[next] = slot;
    lb.next = (next as u32 + 1) % SOCK_SLOTS as u32;
    count(SockEvent::SlotReused);
}

#[inline(always)]
fn count(event: SockEvent) {
    if let Some(counter) = SK_EVENTS_MAP.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, valid for the program's lifetime, no other writer on this CPU.
        unsafe { *counter += 1 };
    }
}
