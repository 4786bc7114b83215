//! Every map of the datapath, as BTF maps so `bpftool map dump name ...` prints field names.
//! Names are string literals (the `#[btf_map]` attribute takes nothing else); the `const` block
//! at the bottom proves each one is a map of `lb_common::maps::SPECS`, whose sizes the
//! definitions use. The agent's tests load the object and compare every map with its spec.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray, SkStorage},
    macros::btf_map,
};
use lb_common::{
    Backend, CtEvent, Flow, FlowKey, Frontend, FrontendKey, MemberKey, Reason, Service, Settings, SockConfig,
    SockEvent, SockLb, TraceFilter, TraceRecord, Traffic,
    maps::{self as names, *},
};

#[btf_map(name = "slb_settings")]
pub static SETTINGS_MAP: Array<Settings, 1> = Array::new();

#[btf_map(name = "slb_fe_ports")]
pub static FE_PORTS_MAP: Array<u8, { FE_PORTS_SIZE as usize }> = Array::new();

#[btf_map(name = "slb_frontends")]
pub static FRONTENDS_MAP: HashMap<FrontendKey, Frontend, { MAX_FRONTENDS as usize }> = HashMap::new();

#[btf_map(name = "slb_local_addrs")]
pub static LOCAL_ADDRS_MAP: HashMap<[u8; 4], u32, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

#[btf_map(name = "slb_services")]
pub static SERVICES_MAP: Array<Service, { MAX_SERVICES as usize }> = Array::new();

#[btf_map(name = "slb_backends")]
pub static BACKENDS_MAP: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// One service's Maglev table: entry 0 is its size `M`, entries `1..=M` backend ids.
pub type MaglevTable = Array<u32, { (MAGLEV_MAX_SIZE + 1) as usize }, { BPF_F_INNER_MAP as usize }>;

#[btf_map(name = "slb_maglev")]
pub static MAGLEV_MAP: ArrayOfMaps<MaglevTable, { 2 * MAX_SERVICES as usize }> = ArrayOfMaps::new();

#[btf_map(name = "slb_maglev_gen")]
pub static MAGLEV_GEN_MAP: Array<u32, { MAX_SERVICES as usize }> = Array::new();

#[btf_map(name = "slb_conntrack")]
pub static CONNTRACK_MAP: LruHashMap<FlowKey, Flow, { CONNTRACK_SIZE as usize }> = LruHashMap::new();

#[btf_map(name = "slb_ct_new")]
pub static CT_NEW_MAP: LruHashMap<FlowKey, Flow, { NEW_FLOWS_SIZE as usize }> = LruHashMap::new();

#[btf_map(name = "slb_snat_addrs")]
pub static SNAT_ADDRS_MAP: HashMap<[u8; 4], u32, { MAX_SNAT_ADDRS as usize }> = HashMap::new();

#[btf_map(name = "slb_ct_events")]
pub static CT_EVENTS_MAP: PerCpuArray<u64, { CtEvent::COUNT as usize }> = PerCpuArray::new();

#[btf_map(name = "slb_svc_stats")]
pub static SVC_STATS_MAP: PerCpuArray<Traffic, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map(name = "slb_be_stats")]
pub static BE_STATS_MAP: PerCpuArray<Traffic, { MAX_BACKENDS as usize }> = PerCpuArray::new();

#[btf_map(name = "slb_reasons")]
pub static REASONS_MAP: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

/// VXLAN networks of this swarm: VNI (host order, as bpftool prints it) -> 1.
#[btf_map(name = "slb_overlays")]
pub static OVERLAYS_MAP: HashMap<u32, u32, { MAX_OVERLAYS as usize }> = HashMap::new();

/// Devmap keyed by ifindex: the interfaces swarmlb may XDP_TX / XDP_REDIRECT to.
#[btf_map(name = "slb_tx_ports")]
pub static TX_PORTS_MAP: DevMapHash<{ MAX_TX_PORTS as usize }> = DevMapHash::new();

/// What `swarmlb trace` asks to be logged (see `crate::trace`).
#[btf_map(name = "slb_trace")]
pub static TRACE_MAP: Array<TraceFilter, 1> = Array::new();

#[btf_map(name = "slb_trace_rec")]
pub static TRACE_RECORD_MAP: PerCpuArray<TraceRecord, 1> = PerCpuArray::new();

/// `swarmlb_traced` and `swarmlb_log`, put there by whoever loads the object.
#[btf_map(name = "slb_trace_progs")]
pub static TRACE_PROGS_MAP: ProgramArray<2> = ProgramArray::new();

#[btf_map(name = "slb_sk_member")]
pub static SK_MEMBER_MAP: HashMap<MemberKey, u32, { MAX_MEMBER_ENTRIES as usize }> = HashMap::new();

#[btf_map(name = "slb_sk_config")]
pub static SK_CONFIG_MAP: Array<SockConfig, 1> = Array::new();

#[btf_map(name = "slb_sk_lb")]
pub static SK_LB_MAP: SkStorage<SockLb> = SkStorage::new();

#[btf_map(name = "slb_sk_events")]
pub static SK_EVENTS_MAP: PerCpuArray<u64, { SockEvent::COUNT as usize }> = PerCpuArray::new();

// The literals above must be exactly the names the agent opens.
const _: () = {
    assert!(same_name("slb_settings", names::SETTINGS));
    assert!(same_name("slb_fe_ports", names::FE_PORTS));
    assert!(same_name("slb_frontends", names::FRONTENDS));
    assert!(same_name("slb_local_addrs", names::LOCAL_ADDRS));
    assert!(same_name("slb_services", names::SERVICES));
    assert!(same_name("slb_backends", names::BACKENDS));
    assert!(same_name("slb_maglev", names::MAGLEV));
    assert!(same_name("slb_maglev_gen", names::MAGLEV_GEN));
    assert!(same_name("slb_conntrack", names::CONNTRACK));
    assert!(same_name("slb_ct_new", names::NEW_FLOWS));
    assert!(same_name("slb_snat_addrs", names::SNAT_ADDRS));
    assert!(same_name("slb_ct_events", names::CT_EVENTS));
    assert!(same_name("slb_svc_stats", names::SVC_STATS));
    assert!(same_name("slb_be_stats", names::BE_STATS));
    assert!(same_name("slb_reasons", names::REASONS));
    assert!(same_name("slb_tx_ports", names::TX_PORTS));
    assert!(same_name("slb_overlays", names::OVERLAYS));
    assert!(same_name("slb_trace", names::TRACE));
    assert!(same_name("slb_trace_rec", names::TRACE_RECORD));
    assert!(same_name("slb_trace_progs", names::TRACE_PROGS));
    assert!(same_name("slb_sk_member", names::SK_MEMBER));
    assert!(same_name("slb_sk_lb", names::SK_LB));
    assert!(same_name("slb_sk_config", names::SK_CONFIG));
    assert!(same_name("slb_sk_events", names::SK_EVENTS));
};

/// The node's settings record (all zero, i.e. defaults, if the agent has not written it).
#[inline(always)]
pub fn settings() -> Settings {
    match SETTINGS_MAP.get(0) {
        Some(s) => *s,
        None => Settings::default(),
    }
}
