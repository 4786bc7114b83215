//! Every map the datapath owns, described once: names (at most 15 bytes, the kernel's limit),
//! capacities and the [`SPECS`] table (type, key and value sizes, entries, flags) that the eBPF
//! definitions are checked against (a test loads the object and compares), that the agent checks
//! a pinned map against before reusing it, and that `README.md` lists. Maps are pinned under
//! [`PIN_DIR`] so the datapath outlives an agent restart.

use core::mem::size_of;

use crate::{
    Backend, CtEvent, Flow, FlowKey, Frontend, FrontendKey, MemberKey, Reason, Service, Settings, SockConfig,
    SockEvent, SockLb, TraceFilter, TraceRecord, Traffic,
};

/// bpffs directory holding the pinned maps and the pinned XDP links.
pub const PIN_DIR: &str = "/sys/fs/bpf/swarmlb";

/// Name of the load-balancing XDP program.
pub const PROG_LB: &str = "swarmlb";
/// Name of the pass-everything XDP program, for veth peers that need one to receive redirects.
pub const PROG_PASS: &str = "swarmlb_pass";
/// Name of the TC ingress program that sends what the XDP program handed off (a frame whose
/// next hop has no neighbour entry yet) through the kernel's neighbour resolution.
pub const PROG_NEIGH: &str = "swarmlb_neigh";
/// Name of [`PROG_LB`] built to note its decisions for `swarmlb trace`.
pub const PROG_TRACED: &str = "swarmlb_traced";
/// Name of the XDP program that logs a traced packet's decisions (aya-log).
pub const PROG_LOG: &str = "swarmlb_log";
/// The socket programs, attached to the cgroup v2 root (socket load balancing, see
/// [`SK_MEMBER`]), by program name and the attach point they are pinned under
/// (`link_cgroup:<hook>`).
pub const SOCK_PROGS: [(&str, &str); 4] = [
    ("swarmlb_conn4", "connect4"),
    ("swarmlb_send4", "sendmsg4"),
    ("swarmlb_recv4", "recvmsg4"),
    ("swarmlb_peer4", "getpeername4"),
];

/// Frontends: [`crate::FrontendKey`] -> [`crate::Frontend`].
pub const FRONTENDS: &str = "slb_frontends";
/// Port filter: destination port -> [`crate::PROTO_BIT_TCP`] / [`crate::PROTO_BIT_UDP`] bits.
pub const FE_PORTS: &str = "slb_fe_ports";
/// Addresses that "any local address" frontends answer on: address -> 1.
pub const LOCAL_ADDRS: &str = "slb_local_addrs";
/// Services by id: [`crate::Service`].
pub const SERVICES: &str = "slb_services";
/// Backends by id: [`crate::Backend`].
pub const BACKENDS: &str = "slb_backends";
/// Maglev lookup tables, two slots per service (`2 * id + generation`, [`maglev_slot`]), each
/// an array map of `M + 1` entries whose entry 0 holds `M` (the table's prime size,
/// [`maglev_size`]) and entries `1..=M` the backend ids. [`MAGLEV_GEN`] says which of a service's
/// two is in use: the agent writes the other one whole, then flips the generation, so a packet
/// sees the old table or the new one, never a mix, and its size travels with it.
pub const MAGLEV: &str = "slb_maglev";
/// Service id -> the generation (0 or 1) of its Maglev table in use in [`MAGLEV`].
pub const MAGLEV_GEN: &str = "slb_maglev_gen";
/// Connection table: [`crate::FlowKey`] -> [`crate::Flow`], two entries per connection.
pub const CONNTRACK: &str = "slb_conntrack";
/// New-flow table: entries of connections not yet confirmed ([`crate::CT_NEW`],
/// [`crate::CT_SYN_RECV`]), same key and value as [`CONNTRACK`]. A flood of spoofed SYNs fills
/// this small table and evicts only its own kind, never an established connection.
pub const NEW_FLOWS: &str = "slb_ct_new";
/// Addresses replies come back to (every service's SNAT address): address -> 1.
pub const SNAT_ADDRS: &str = "slb_snat_addrs";
/// Per-CPU count per [`crate::CtEvent`]: what the connection tables did besides packets' fates.
pub const CT_EVENTS: &str = "slb_ct_events";
/// Per-CPU [`crate::Traffic`] per service id.
pub const SVC_STATS: &str = "slb_svc_stats";
/// Per-CPU [`crate::Traffic`] per backend id.
pub const BE_STATS: &str = "slb_be_stats";
/// Per-CPU packet count per [`crate::Reason`].
pub const REASONS: &str = "slb_reasons";
/// One [`crate::Settings`] record.
pub const SETTINGS: &str = "slb_settings";
/// Interfaces the datapath may redirect to (devmap keyed by ifindex).
pub const TX_PORTS: &str = "slb_tx_ports";
/// VXLAN networks of this swarm: VNI -> 1. VXLAN packets with other VNIs are counted apart.
pub const OVERLAYS: &str = "slb_overlays";
/// Network namespaces whose sockets are balanced: [`crate::MemberKey`] -> `MEMBER_*` flags. A
/// socket in a namespace with no entry is never rewritten, so the node's and containers' traffic
/// to anything but a VIP of their own overlays or a published port is untouched, and agents of
/// several nodes sharing one kernel (Docker-in-Docker) each act on their own node's namespaces.
pub const SK_MEMBER: &str = "slb_sk_member";
/// One [`crate::SockConfig`] record: how unregistered containers are recognised.
pub const SK_CONFIG: &str = "slb_sk_config";
/// Socket-local storage: [`crate::SockLb`], a socket's translations, freed with the socket.
pub const SK_LB: &str = "slb_sk_lb";
/// Per-CPU count per [`crate::SockEvent`].
pub const SK_EVENTS: &str = "slb_sk_events";
/// One [`crate::TraceFilter`] record: which packets' decisions the datapath logs (`swarmlb trace`).
pub const TRACE: &str = "slb_trace";
/// Per-CPU [`crate::TraceRecord`]: the decisions about the packet being traced on that CPU.
pub const TRACE_RECORD: &str = "slb_trace_rec";
/// Program array: [`TRACE_PROG_TRACED`] and [`TRACE_PROG_LOG`], filled by whoever loads the
/// object.
pub const TRACE_PROGS: &str = "slb_trace_progs";
/// [`TRACE_PROGS`] entry of [`PROG_TRACED`], which [`PROG_LB`] tail-calls while tracing is on.
pub const TRACE_PROG_TRACED: u32 = 0;
/// [`TRACE_PROGS`] entry of [`PROG_LOG`], which [`PROG_TRACED`] tail-calls to log a packet.
pub const TRACE_PROG_LOG: u32 = 1;

/// Service ids are `1..MAX_SERVICES`; id 0 means "none". 4,095 services.
pub const MAX_SERVICES: u32 = 4096;
/// Backend ids are `1..MAX_BACKENDS`; id 0 means "no backend" in a Maglev slot. 65,536 backends.
pub const MAX_BACKENDS: u32 = 65_536 + 1;
pub const MAX_FRONTENDS: u32 = 8192;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_TX_PORTS: u32 = 256;
pub const MAX_OVERLAYS: u32 = 256;
/// [`SK_MEMBER`] entries: a namespace takes one plus one per overlay it is attached to.
pub const MAX_MEMBER_ENTRIES: u32 = 16_384;
/// VXLAN's IANA port, used when [`crate::Settings::vxlan_port`] is 0.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// The prime sizes a Maglev table can have, as Cilium offers them: each about twice the last.
/// The smallest (4 KiB) serves up to 10 backends, so the services most swarms run never cross a
/// size: a table that changes size remaps new connections as a new table would (established
/// ones keep their backend in the connection table).
pub const MAGLEV_SIZES: [u32; 8] = [1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];
/// Slots per backend a table aims for at least (the Maglev paper's M >= 100 N keeps every
/// backend's share within about 1% of the others').
pub const MAGLEV_SLOTS_PER_BACKEND: u32 = 100;
/// Largest Maglev table (a service of more than 1,310 backends gets fewer than 100 slots each).
pub const MAGLEV_MAX_SIZE: u32 = MAGLEV_SIZES[MAGLEV_SIZES.len() - 1];

/// The [`MAGLEV`] slot of generation `generation` (0 or 1) of service `service_id`'s table.
pub const fn maglev_slot(service_id: u32, generation: u32) -> u32 {
    service_id * 2 + (generation & 1)
}

/// The Maglev table size of a service of `backends` backends: the smallest of
/// [`MAGLEV_SIZES`] with at least [`MAGLEV_SLOTS_PER_BACKEND`] slots per backend, else the
/// largest. A function of the count alone, so every node builds the same table.
pub const fn maglev_size(backends: usize) -> u32 {
    let want = backends as u64 * MAGLEV_SLOTS_PER_BACKEND as u64;
    let mut i = 0;
    while i < MAGLEV_SIZES.len() {
        if MAGLEV_SIZES[i] as u64 >= want {
            return MAGLEV_SIZES[i];
        }
        i += 1;
    }
    MAGLEV_MAX_SIZE
}

/// Default connection-table entries (each connection takes two): 1,048,576 connections. The
/// agent's `--max-connections` sets it at load time.
pub const CONNTRACK_SIZE: u32 = 1 << 21;
/// New-flow table entries (two per unconfirmed connection). Half of this, 16384 half-open
/// connections, is what a SYN flood can hold at once; at 1 Mpps each lives ~16 ms, 100 times a
/// local round trip, so real handshakes complete beside it.
pub const NEW_FLOWS_SIZE: u32 = 1 << 15;
/// SNAT addresses one service can use on one node (each multiplies its NAT ports).
pub const MAX_SNAT_PER_SERVICE: usize = 4;
/// Upper bound of the SNAT addresses in [`SNAT_ADDRS`].
pub const MAX_SNAT_ADDRS: u32 = 256;
/// Default NAT port range, on node addresses and overlay endpoint addresses alike: every
/// unprivileged port below the kernel's default `ip_local_port_range` (32768-60999), so
/// translated flows never take a tuple the node's own connections could use (the node's sockets
/// reach published ports through an overlay endpoint address too, by socket load balancing).
pub const DEFAULT_NODE_SNAT_PORTS: (u16, u16) = (1024, 32767);
/// One entry per possible destination port.
pub const FE_PORTS_SIZE: u32 = 1 << 16;

/// `BPF_F_NO_PREALLOC` (linux/bpf.h), which socket storage requires.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_INNER_MAP` (linux/bpf.h): inner maps of one outer map may differ in `max_entries`.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// The kinds of map the datapath uses (`enum bpf_map_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    ProgArray = 3,
    PerCpuArray = 6,
    LruHash = 9,
    ArrayOfMaps = 12,
    SkStorage = 24,
    DevMapHash = 25,
}

/// What a map is: everything the kernel compares to decide whether two maps are alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    /// For per-CPU maps, one CPU's value; for maps of maps, the inner map's id (4 bytes).
    pub value_size: u32,
    /// The default; [`CONNTRACK`]'s is set at load time.
    pub max_entries: u32,
    pub flags: u32,
}

const fn spec(name: &'static str, kind: MapKind, key: usize, value: usize, max_entries: u32) -> MapSpec {
    MapSpec { name, kind, key_size: key as u32, value_size: value as u32, max_entries, flags: 0 }
}

/// Every map of the datapath.
pub const SPECS: &[MapSpec] = {
    use MapKind::*;
    &[
        spec(SETTINGS, Array, 4, size_of::<Settings>(), 1),
        spec(FE_PORTS, Array, 4, 1, FE_PORTS_SIZE),
        spec(FRONTENDS, Hash, size_of::<FrontendKey>(), size_of::<Frontend>(), MAX_FRONTENDS),
        spec(LOCAL_ADDRS, Hash, 4, 4, MAX_LOCAL_ADDRS),
        spec(SERVICES, Array, 4, size_of::<Service>(), MAX_SERVICES),
        spec(BACKENDS, Array, 4, size_of::<Backend>(), MAX_BACKENDS),
        spec(MAGLEV, ArrayOfMaps, 4, 4, 2 * MAX_SERVICES),
        spec(MAGLEV_GEN, Array, 4, 4, MAX_SERVICES),
        spec(CONNTRACK, LruHash, size_of::<FlowKey>(), size_of::<Flow>(), CONNTRACK_SIZE),
        spec(NEW_FLOWS, LruHash, size_of::<FlowKey>(), size_of::<Flow>(), NEW_FLOWS_SIZE),
        spec(SNAT_ADDRS, Hash, 4, 4, MAX_SNAT_ADDRS),
        spec(CT_EVENTS, PerCpuArray, 4, 8, CtEvent::COUNT),
        spec(SVC_STATS, PerCpuArray, 4, size_of::<Traffic>(), MAX_SERVICES),
        spec(BE_STATS, PerCpuArray, 4, size_of::<Traffic>(), MAX_BACKENDS),
        spec(REASONS, PerCpuArray, 4, 8, Reason::COUNT),
        spec(TX_PORTS, DevMapHash, 4, 8, MAX_TX_PORTS),
        spec(OVERLAYS, Hash, 4, 4, MAX_OVERLAYS),
        spec(TRACE, Array, 4, size_of::<TraceFilter>(), 1),
        spec(TRACE_RECORD, PerCpuArray, 4, size_of::<TraceRecord>(), 1),
        spec(TRACE_PROGS, ProgArray, 4, 4, 2),
        spec(SK_MEMBER, Hash, size_of::<MemberKey>(), 4, MAX_MEMBER_ENTRIES),
        spec(SK_CONFIG, Array, 4, size_of::<SockConfig>(), 1),
        MapSpec { flags: BPF_F_NO_PREALLOC, ..spec(SK_LB, SkStorage, 4, size_of::<SockLb>(), 0) },
        spec(SK_EVENTS, PerCpuArray, 4, 8, SockEvent::COUNT),
    ]
};

/// The inner-map template of [`MAGLEV`]: every service's table is an array like it, with its
/// own `max_entries` (`M + 1`), named [`MAGLEV_TABLE_PREFIX`] and the service id.
pub const MAGLEV_INNER: MapSpec =
    MapSpec { flags: BPF_F_INNER_MAP, ..spec(MAGLEV_TABLE_PREFIX, MapKind::Array, 4, 4, MAGLEV_MAX_SIZE + 1) };
/// `slb_mgl_<service id>`: one service's Maglev table (`bpftool map dump name slb_mgl_7`).
pub const MAGLEV_TABLE_PREFIX: &str = "slb_mgl_";

/// The spec of the map named `name`.
pub const fn spec_of(name: &str) -> MapSpec {
    let mut i = 0;
    while i < SPECS.len() {
        if same_name(SPECS[i].name, name) {
            return SPECS[i];
        }
        i += 1;
    }
    panic!("no such map")
}

/// `a == b`, usable in `const` context.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = {
    let mut i = 0;
    while i < SPECS.len() {
        assert!(SPECS[i].name.len() <= 15, "map names are at most 15 bytes");
        i += 1;
    }
    assert!(MAGLEV_INNER.name.len() <= 15);
};
