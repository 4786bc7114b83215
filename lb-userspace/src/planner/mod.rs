//! The planner: pure functions from desired state to what the maps must hold.
//!
//! [`plan`] turns a [`Cluster`] and the previous [`Plan`] into the next plan, giving services and
//! backends ids that stay stable across plans (and, through `state.json`, across restarts, since
//! connection-table entries hold backend ids). [`diff`] lists the map writes that take the
//! datapath from one plan to the next. Neither touches the kernel.
//!
//! Which swarm node this agent is (`local`) is an input of [`plan`], not of the model: it picks
//! each overlay service's source address (the node's endpoint on the service's network). Nothing
//! else depends on it; in particular Maglev tables depend only on backend names and weights, so
//! every node computes the same tables from the same cluster.
//!
//! Id policy: a service keeps its id while its name exists; a backend keeps its id while its
//! service, name and address stay the same. A freed id goes to the back of a retirement queue and
//! is reused only when no never-used id is left, oldest first: with 65,536 backend ids that is, in
//! practice, never within the life of the flows that still name it. Its `slb_backends` entry is
//! left in place until then, so established flows keep their stats target.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use lb_common::maps::{
    MAX_BACKENDS, MAX_FRONTENDS, MAX_MEMBER_ENTRIES, MAX_OVERLAYS, MAX_SERVICES, MAX_SNAT_ADDRS, MAX_SNAT_PER_SERVICE,
    maglev_size,
};
use serde::{Deserialize, Serialize};

use crate::{
    limits, maglev,
    model::{Cluster, DEFAULT_VXLAN_PORT, Frontend, NodeSettings, Service},
};

/// Why the planner left something of the desired state out. Everything else is planned: one
/// service that does not fit never keeps the others from being served.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeftOut {
    #[error("service {service:?} left out: no free service id (at most {} services)", MAX_SERVICES - 1)]
    OutOfServiceIds { service: String },
    #[error("service {service:?}: {count} backend(s) left out, from {first:?}: no free backend id (at most {} backends)",
        MAX_BACKENDS - 1)]
    OutOfBackendIds { service: String, count: usize, first: String },
    #[error("service {service:?} left out: its {count} frontend(s) would pass the limit of {MAX_FRONTENDS} frontends")]
    TooManyFrontends { service: String, count: usize },
    #[error("service {service:?} left out: its NAT addresses would pass the limit of {MAX_SNAT_ADDRS} SNAT addresses")]
    TooManySnatAddrs { service: String },
    #[error("service {service:?}: NAT addresses after the first {MAX_SNAT_PER_SERVICE} left out ({count} given)")]
    NatAddrsPerService { service: String, count: usize },
    #[error("{count} overlay network(s) left out, from VNI {first}: at most {MAX_OVERLAYS} overlay networks")]
    TooManyOverlays { count: usize, first: u32 },
    #[error("service {service:?} left out: unknown network {network:?}")]
    UnknownNetwork { service: String, network: String },
    #[error("service {service:?} left out: network {network:?} has no load-balancer endpoint for this node ({})",
        node.as_deref().map_or("no node named".to_owned(), |n| format!("{n:?}")))]
    NoLocalEndpoint { service: String, network: String, node: Option<String> },
    #[error("service {service:?} left out: no NAT address")]
    NoNatAddr { service: String },
    #[error("VIP service {service:?} left out: it names no overlay network")]
    VipWithoutNetwork { service: String },
    #[error(
        "{count} namespace(s) left out of socket load balancing, from {first:?}: at most {MAX_MEMBER_ENTRIES} \
        namespace entries (one per namespace and one per overlay it is attached to)"
    )]
    TooManyMembers { count: usize, first: String },
}

/// A plan and what did not fit in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Planned {
    pub plan: Plan,
    pub left_out: Vec<LeftOut>,
}

/// Everything programmed into the datapath, with ids. Serialised as `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub node: NodeSettings,
    /// The swarm node this plan is for (`--node`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_node: Option<String>,
    /// UDP port of the swarm's VXLAN data path.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// VNIs of every overlay network of the swarm, sorted (`slb_overlays`).
    #[serde(default)]
    pub overlays: Vec<u32>,
    /// Sorted by id.
    pub services: Vec<PlannedService>,
    /// Namespaces whose sockets are balanced, with their overlays' VNIs (`slb_sk_member`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<PlannedMember>,
    /// Id allocation state, carried from plan to plan.
    pub ids: IdState,
}

/// A [`crate::model::Member`] with its networks as VNIs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMember {
    pub netns: std::path::PathBuf,
    pub name: String,
    /// Sorted.
    pub vnis: Vec<u32>,
    pub node: bool,
    pub host: bool,
}

impl PlannedMember {
    /// The `slb_sk_member` entries it takes.
    pub fn entries(&self) -> usize {
        1 + self.vnis.len()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedService {
    pub id: u32,
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub sticky: bool,
    /// The source address of translated packets: the local node's endpoint on `network`, or
    /// the (first) configured NAT address.
    pub nat_addr: Ipv4Addr,
    /// Further configured NAT addresses, each with its own NAT ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_nat_addrs: Vec<Ipv4Addr>,
    /// The overlay network the backends are tasks on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// A VIP service's overlay VNI: reached by the sockets of that overlay's members, never by
    /// packets, so it has no NAT address. 0 for every other service.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vip_vni: u32,
    /// TCP MSS clamp (overlay MTU - 40); 0 for none.
    #[serde(default)]
    pub mss: u16,
    /// Backends see the client's own address ([`crate::model::Service::client_source`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_source: bool,
    /// Sorted by id.
    pub backends: Vec<PlannedBackend>,
    /// Maglev table (backend id per slot, [`lb_common::maps::maglev_size`] slots); recomputed
    /// from `backends`, never stored.
    #[serde(skip)]
    pub maglev: Arc<[u32]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBackend {
    pub id: u32,
    pub name: String,
    pub addr: SocketAddrV4,
    pub weight: u32,
    /// The swarm node the task runs on, when known (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdState {
    /// Lowest service id never handed out.
    pub next_service: u32,
    pub next_backend: u32,
    /// Freed ids, oldest first.
    pub retired_services: VecDeque<u32>,
    pub retired_backends: VecDeque<u32>,
    /// The names of retired ids while they stay retired: connections to a removed service or
    /// backend can outlive it, and `flows` names them.
    #[serde(default)]
    pub retired_service_names: BTreeMap<u32, String>,
    #[serde(default)]
    pub retired_backend_names: BTreeMap<u32, String>,
}

impl Default for IdState {
    fn default() -> Self {
        IdState {
            next_service: 1,
            next_backend: 1,
            retired_services: VecDeque::new(),
            retired_backends: VecDeque::new(),
            retired_service_names: BTreeMap::new(),
            retired_backend_names: BTreeMap::new(),
        }
    }
}

impl IdState {
    fn service_id(&mut self) -> Option<u32> {
        take(&mut self.next_service, MAX_SERVICES, &mut self.retired_services)
    }

    fn backend_id(&mut self) -> Option<u32> {
        take(&mut self.next_backend, MAX_BACKENDS, &mut self.retired_backends)
    }

    /// Keeps the names of ids that are still retired only.
    fn forget_reused_names(&mut self) {
        let services: HashSet<u32> = self.retired_services.iter().copied().collect();
        self.retired_service_names.retain(|id, _| services.contains(id));
        let backends: HashSet<u32> = self.retired_backends.iter().copied().collect();
        self.retired_backend_names.retain(|id, _| backends.contains(id));
    }
}

fn take(next: &mut u32, limit: u32, retired: &mut VecDeque<u32>) -> Option<u32> {
    if *next < limit {
        *next += 1;
        Some(*next - 1)
    } else {
        retired.pop_front()
    }
}

impl PlannedService {
    /// Every NAT address of the service, the first one first (none for a VIP service).
    pub fn nat_addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (!self.is_vip()).then_some(self.nat_addr).into_iter().chain(self.more_nat_addrs.iter().copied())
    }

    pub fn is_vip(&self) -> bool {
        self.vip_vni != 0
    }
}

impl Plan {
    /// Recomputes the Maglev tables, which `state.json` does not hold.
    pub fn rebuild_tables(&mut self) {
        for service in &mut self.services {
            service.maglev = table_for(&service.backends);
        }
    }

    pub fn backend_count(&self) -> usize {
        self.services.iter().map(|s| s.backends.len()).sum()
    }

    /// Ids of every backend of every service: the `slb_backends` entries in use.
    pub fn backend_ids(&self) -> std::collections::HashSet<u32> {
        self.services.iter().flat_map(|s| s.backends.iter().map(|b| b.id)).collect()
    }

    pub fn frontend_count(&self) -> usize {
        self.services.iter().map(|s| s.frontends.len()).sum()
    }
}

fn table_for(backends: &[PlannedBackend]) -> Arc<[u32]> {
    let entries: Vec<maglev::Entry<'_>> =
        backends.iter().map(|b| maglev::Entry { name: &b.name, weight: b.weight, id: b.id }).collect();
    maglev::table(&entries, maglev_size(backends.len())).into()
}

/// The next plan: `cluster` as seen from swarm node `local` (`None`: a single-node setup), with
/// ids carried over from `prev`, and what had to be left out of it.
///
/// Capacity is checked here and only here, whatever the source: services already planned in
/// `prev` are placed first, so a new service can never push out one that is serving; a service
/// that does not fit (no id, too many frontends or SNAT addresses, no usable NAT address) is left
/// out with a [`LeftOut`] naming it and the limit; a service whose new backends find no free id
/// keeps the backends that got one.
pub fn plan(cluster: &Cluster, local: Option<&str>, prev: &Plan) -> Planned {
    let mut ids = prev.ids.clone();
    let mut left_out = Vec::new();
    let prev_by_name: HashMap<&str, &PlannedService> = prev.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut order: Vec<&Service> = cluster.services.iter().collect();
    order.sort_by_key(|s| !prev_by_name.contains_key(s.name.as_str()));

    let mut services = Vec::with_capacity(cluster.services.len());
    let mut frontends_used = 0usize;
    let mut snat_used: HashSet<Ipv4Addr> = HashSet::new();
    for service in order {
        let old = prev_by_name.get(service.name.as_str()).copied();
        let (mut nat_addrs, mss, vip_vni) = match nat_source(cluster, service, local) {
            Ok(nat) => nat,
            Err(why) => {
                left_out.push(why);
                continue;
            }
        };
        if nat_addrs.len() > MAX_SNAT_PER_SERVICE {
            left_out.push(LeftOut::NatAddrsPerService { service: service.name.clone(), count: nat_addrs.len() });
            nat_addrs.truncate(MAX_SNAT_PER_SERVICE);
        }
        if frontends_used + service.frontends.len() > MAX_FRONTENDS as usize {
            left_out.push(LeftOut::TooManyFrontends { service: service.name.clone(), count: service.frontends.len() });
            continue;
        }
        let new_snat = nat_addrs.iter().filter(|a| !snat_used.contains(a)).count();
        if snat_used.len() + new_snat > MAX_SNAT_ADDRS as usize {
            left_out.push(LeftOut::TooManySnatAddrs { service: service.name.clone() });
            continue;
        }
        let Some(id) = old.map(|o| o.id).or_else(|| ids.service_id()) else {
            left_out.push(LeftOut::OutOfServiceIds { service: service.name.clone() });
            continue;
        };
        frontends_used += service.frontends.len();
        snat_used.extend(nat_addrs.iter().copied());
        let backends = plan_backends(service, old, &mut ids, &mut left_out);
        // Reuse the previous table when the backend set is unchanged: building one costs up to
        // milliseconds per service.
        let maglev = match old {
            Some(o) if same_table_input(&o.backends, &backends) && !o.maglev.is_empty() => o.maglev.clone(),
            _ => table_for(&backends),
        };
        let mut frontends = service.frontends.clone();
        frontends.sort();
        services.push(PlannedService {
            id,
            name: service.name.clone(),
            frontends,
            sticky: service.sticky,
            nat_addr: nat_addrs.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
            more_nat_addrs: nat_addrs.get(1..).unwrap_or_default().to_vec(),
            network: service.network.clone(),
            vip_vni,
            mss,
            client_source: service.client_source,
            backends,
            maglev,
        });
    }
    services.sort_by_key(|s| s.id);
    retire(prev, &services, &mut ids);
    ids.forget_reused_names();
    let mut overlays: Vec<u32> = cluster.networks.iter().map(|n| n.vni).collect();
    overlays.sort_unstable();
    if overlays.len() > MAX_OVERLAYS as usize {
        let dropped = overlays.split_off(MAX_OVERLAYS as usize);
        left_out.push(LeftOut::TooManyOverlays { count: dropped.len(), first: dropped[0] });
    }
    let members = plan_members(cluster, &mut left_out);
    let plan = Plan {
        node: cluster.node.clone(),
        local_node: local.map(str::to_owned),
        vxlan_port: cluster.swarm.vxlan_port,
        overlays,
        services,
        members,
        ids,
    };
    Planned { plan, left_out }
}

/// The members with their networks' VNIs (a network the cluster does not have is skipped: its
/// VIPs are not planned either), in the source's order, as many as `slb_sk_member` holds.
fn plan_members(cluster: &Cluster, left_out: &mut Vec<LeftOut>) -> Vec<PlannedMember> {
    let mut members = Vec::with_capacity(cluster.members.len());
    let mut entries = 0;
    let mut over: Vec<&str> = Vec::new();
    for m in &cluster.members {
        let mut vnis: Vec<u32> = m.networks.iter().filter_map(|n| cluster.network(n)).map(|n| n.vni).collect();
        vnis.sort_unstable();
        vnis.dedup();
        let member = PlannedMember { netns: m.netns.clone(), name: m.name.clone(), vnis, node: m.node, host: m.host };
        if entries + member.entries() > MAX_MEMBER_ENTRIES as usize {
            over.push(&m.name);
            continue;
        }
        entries += member.entries();
        members.push(member);
    }
    if let Some(first) = over.first() {
        left_out.push(LeftOut::TooManyMembers { count: over.len(), first: (*first).to_owned() });
    }
    members
}

/// A service's NAT addresses, MSS clamp and VIP VNI: none and the network's VNI for a VIP
/// service; the local node's endpoint on its overlay network (MSS from the network's MTU); or
/// its configured NAT addresses.
fn nat_source(cluster: &Cluster, service: &Service, local: Option<&str>) -> Result<(Vec<Ipv4Addr>, u16, u32), LeftOut> {
    match &service.network {
        Some(net_name) => {
            let network = cluster
                .network(net_name)
                .ok_or_else(|| LeftOut::UnknownNetwork { service: service.name.clone(), network: net_name.clone() })?;
            if service.vip {
                return Ok((Vec::new(), 0, network.vni));
            }
            let endpoint = local.and_then(|node| network.endpoint(node)).ok_or_else(|| LeftOut::NoLocalEndpoint {
                service: service.name.clone(),
                network: net_name.clone(),
                node: local.map(str::to_owned),
            })?;
            Ok((vec![endpoint], limits::overlay_mss(network.mtu), 0))
        }
        None if service.vip => Err(LeftOut::VipWithoutNetwork { service: service.name.clone() }),
        None if service.nat_addrs.is_empty() => Err(LeftOut::NoNatAddr { service: service.name.clone() }),
        None => Ok((service.nat_addrs.clone(), 0, 0)),
    }
}

/// The service's backends with ids: kept from `old` while name and address stay, new ones from
/// `ids`; those no id is left for are left out.
fn plan_backends(
    service: &Service,
    old: Option<&PlannedService>,
    ids: &mut IdState,
    left_out: &mut Vec<LeftOut>,
) -> Vec<PlannedBackend> {
    let mut backends = Vec::with_capacity(service.backends.len());
    let mut no_id: Vec<&str> = Vec::new();
    for backend in &service.backends {
        let kept = old.and_then(|o| o.backends.iter().find(|b| b.name == backend.name && b.addr == backend.addr));
        let Some(id) = kept.map(|b| b.id).or_else(|| ids.backend_id()) else {
            no_id.push(&backend.name);
            continue;
        };
        backends.push(PlannedBackend {
            id,
            name: backend.name.clone(),
            addr: backend.addr,
            weight: backend.weight,
            node: backend.node.clone(),
        });
    }
    if let Some(first) = no_id.first() {
        left_out.push(LeftOut::OutOfBackendIds {
            service: service.name.clone(),
            count: no_id.len(),
            first: (*first).to_owned(),
        });
    }
    backends.sort_by_key(|b| b.id);
    backends
}

/// Puts the ids `prev` used that `next` does not at the back of the retirement queues. After
/// this plan's allocations, so an id freed now is never handed out again in the same plan.
fn retire(prev: &Plan, next: &[PlannedService], ids: &mut IdState) {
    let next_by_name: HashMap<&str, &PlannedService> = next.iter().map(|s| (s.name.as_str(), s)).collect();
    for old in &prev.services {
        let now = next_by_name.get(old.name.as_str());
        if now.is_none() {
            ids.retired_services.push_back(old.id);
            ids.retired_service_names.insert(old.id, old.name.clone());
        }
        let gone = old.backends.iter().filter(|b| !now.is_some_and(|n| n.backends.iter().any(|k| k.id == b.id)));
        for b in gone {
            ids.retired_backends.push_back(b.id);
            ids.retired_backend_names.insert(b.id, b.name.clone());
        }
    }
}

/// Whether two backend lists give the same Maglev table (only ids, names and weights count).
fn same_table_input(a: &[PlannedBackend], b: &[PlannedBackend]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.id == y.id && x.name == y.name && x.weight == y.weight)
}

mod diff;

pub use diff::{
    Diff, StatsReset, Summary, TRACKED_BITS, backend_value, diff, frontend_key, port_bits, service_value,
    settings_value, snat_addrs, stats_to_reset,
};

#[cfg(test)]
mod tests;
