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
//! is reused only when no never-used id is left, oldest first: with 4095 backend ids that is, in
//! practice, never within the life of the flows that still name it. Its `slb_backends` entry is
//! left in place until then, so established flows keep their stats target.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use lb_common::maps::{MAGLEV_SIZE, MAX_BACKENDS, MAX_SERVICES};
use serde::{Deserialize, Serialize};

use crate::{
    maglev,
    model::{Cluster, DEFAULT_VXLAN_PORT, Frontend, MalformedPolicy, NodeSettings, TCP_IPV4_HEADERS},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no free service id: at most {} services, and retired ids are all still queued", MAX_SERVICES - 1)]
    OutOfServiceIds,
    #[error("no free backend id: at most {} backends", MAX_BACKENDS - 1)]
    OutOfBackendIds,
    #[error("service {service:?}: unknown network {network:?}")]
    UnknownNetwork { service: String, network: String },
    #[error("service {service:?}: network {network:?} has no load-balancer endpoint for this node ({})",
        node.as_deref().map_or("no node named".to_owned(), |n| format!("{n:?}")))]
    NoLocalEndpoint { service: String, network: String, node: Option<String> },
    #[error("service {service:?} has no NAT address")]
    NoNatAddr { service: String },
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
    /// Id allocation state, carried from plan to plan.
    pub ids: IdState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedService {
    pub id: u32,
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub sticky: bool,
    /// The source address of translated packets: the local node's endpoint on `network`, or
    /// the configured NAT address.
    pub nat_addr: Ipv4Addr,
    /// The overlay network the backends are tasks on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// TCP MSS clamp (overlay MTU - 40); 0 for none.
    #[serde(default)]
    pub mss: u16,
    /// Sorted by id.
    pub backends: Vec<PlannedBackend>,
    /// Maglev table (backend id per slot); recomputed from `backends`, never stored.
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdState {
    /// Lowest service id never handed out.
    pub next_service: u32,
    pub next_backend: u32,
    /// Freed ids, oldest first.
    pub retired_services: VecDeque<u32>,
    pub retired_backends: VecDeque<u32>,
}

impl Default for IdState {
    fn default() -> Self {
        IdState { next_service: 1, next_backend: 1, retired_services: VecDeque::new(), retired_backends: VecDeque::new() }
    }
}

impl IdState {
    fn service_id(&mut self) -> Result<u32, PlanError> {
        take(&mut self.next_service, MAX_SERVICES, &mut self.retired_services).ok_or(PlanError::OutOfServiceIds)
    }

    fn backend_id(&mut self) -> Result<u32, PlanError> {
        take(&mut self.next_backend, MAX_BACKENDS, &mut self.retired_backends).ok_or(PlanError::OutOfBackendIds)
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

    pub fn frontend_count(&self) -> usize {
        self.services.iter().map(|s| s.frontends.len()).sum()
    }
}

fn table_for(backends: &[PlannedBackend]) -> Arc<[u32]> {
    let entries: Vec<maglev::Entry<'_>> =
        backends.iter().map(|b| maglev::Entry { name: &b.name, weight: b.weight, id: b.id }).collect();
    maglev::table(&entries, MAGLEV_SIZE).into()
}

/// The next plan: `cluster` as seen from swarm node `local` (`None`: a single-node setup), with
/// ids carried over from `prev`.
pub fn plan(cluster: &Cluster, local: Option<&str>, prev: &Plan) -> Result<Plan, PlanError> {
    let mut ids = prev.ids.clone();
    let prev_by_name: HashMap<&str, &PlannedService> = prev.services.iter().map(|s| (s.name.as_str(), s)).collect();

    // Retire first, so ids freed now go behind those freed earlier.
    for old in &prev.services {
        match cluster.services.iter().find(|s| s.name == old.name) {
            None => {
                ids.retired_services.push_back(old.id);
                ids.retired_backends.extend(old.backends.iter().map(|b| b.id));
            }
            Some(now) => {
                let gone = old.backends.iter().filter(|b| !now.backends.iter().any(|n| n.name == b.name && n.addr == b.addr));
                ids.retired_backends.extend(gone.map(|b| b.id));
            }
        }
    }

    let mut services = Vec::with_capacity(cluster.services.len());
    for service in &cluster.services {
        let old = prev_by_name.get(service.name.as_str()).copied();
        let id = match old {
            Some(old) => old.id,
            None => ids.service_id()?,
        };
        let mut backends = Vec::with_capacity(service.backends.len());
        for backend in &service.backends {
            let kept = old.and_then(|o| o.backends.iter().find(|b| b.name == backend.name && b.addr == backend.addr));
            let id = match kept {
                Some(b) => b.id,
                None => ids.backend_id()?,
            };
            backends.push(PlannedBackend {
                id,
                name: backend.name.clone(),
                addr: backend.addr,
                weight: backend.weight,
                node: backend.node.clone(),
            });
        }
        backends.sort_by_key(|b| b.id);
        // Reuse the previous table when the backend set is unchanged: building one costs
        // tens of milliseconds.
        let maglev = match old {
            Some(o) if same_table_input(&o.backends, &backends) && o.maglev.len() == MAGLEV_SIZE as usize => o.maglev.clone(),
            _ => table_for(&backends),
        };
        let mut frontends = service.frontends.clone();
        frontends.sort();
        let (nat_addr, mss) = match &service.network {
            Some(net_name) => {
                let network = cluster.network(net_name).ok_or_else(|| PlanError::UnknownNetwork {
                    service: service.name.clone(),
                    network: net_name.clone(),
                })?;
                let endpoint = local.and_then(|node| network.endpoint(node)).ok_or_else(|| PlanError::NoLocalEndpoint {
                    service: service.name.clone(),
                    network: net_name.clone(),
                    node: local.map(str::to_owned),
                })?;
                (endpoint, network.mtu.saturating_sub(TCP_IPV4_HEADERS))
            }
            None => (service.nat_addr.ok_or_else(|| PlanError::NoNatAddr { service: service.name.clone() })?, 0),
        };
        services.push(PlannedService {
            id,
            name: service.name.clone(),
            frontends,
            sticky: service.sticky,
            nat_addr,
            network: service.network.clone(),
            mss,
            backends,
            maglev,
        });
    }
    services.sort_by_key(|s| s.id);
    let mut overlays: Vec<u32> = cluster.networks.iter().map(|n| n.vni).collect();
    overlays.sort_unstable();
    Ok(Plan {
        node: cluster.node.clone(),
        local_node: local.map(str::to_owned),
        vxlan_port: cluster.swarm.vxlan_port,
        overlays,
        services,
        ids,
    })
}

/// Whether two backend lists give the same Maglev table (only ids, names and weights count).
fn same_table_input(a: &[PlannedBackend], b: &[PlannedBackend]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.id == y.id && x.name == y.name && x.weight == y.weight)
}

/// Map writes that take the datapath from `prev` to `next`, in the groups the writer applies in
/// order. `prev = None` means "unknown": every entry of `next` is written (a full sync).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub settings: Option<lb_common::Settings>,
    /// VNIs to add to `slb_overlays`.
    pub overlays: Vec<u32>,
    /// Backends that are new or whose address changed, with ids to reset stats for.
    pub backends: Vec<(u32, lb_common::Backend)>,
    /// Maglev slots of live services: (map index, backend id).
    pub maglev: Vec<(u32, u32)>,
    pub services: Vec<(u32, lb_common::Service)>,
    pub frontends: Vec<(lb_common::FrontendKey, lb_common::Frontend)>,
    /// `slb_fe_ports` values that change (0 clears the port).
    pub fe_ports: Vec<(u16, u8)>,
    pub removed_frontends: Vec<lb_common::FrontendKey>,
    /// Services that no longer exist: their entry is zeroed after their frontends are gone.
    pub removed_services: Vec<u32>,
    /// Their Maglev slots, cleared last.
    pub removed_maglev: Vec<(u32, u32)>,
    /// VNIs no network uses any more.
    pub removed_overlays: Vec<u32>,
    pub summary: Summary,
}

/// What changed, in words, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_reweighted: usize,
    pub frontends_added: usize,
    pub frontends_removed: usize,
    pub overlays_added: usize,
    pub overlays_removed: usize,
    pub settings_changed: bool,
}

impl Summary {
    pub fn is_empty(&self) -> bool {
        *self == Summary::default()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let parts: Vec<String> = [
            (self.services_added, "service", "added"),
            (self.services_removed, "service", "removed"),
            (self.services_changed, "service", "changed"),
            (self.backends_added, "backend", "added"),
            (self.backends_removed, "backend", "removed"),
            (self.backends_reweighted, "backend", "reweighted"),
            (self.frontends_added, "frontend", "added"),
            (self.frontends_removed, "frontend", "removed"),
            (self.overlays_added, "overlay", "added"),
            (self.overlays_removed, "overlay", "removed"),
        ]
        .into_iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, what, verb)| format!("{} {verb}", plural(n, what)))
        .chain(self.settings_changed.then(|| "settings".to_owned()))
        .collect();
        if parts.is_empty() { f.write_str("nothing") } else { f.write_str(&parts.join(", ")) }
    }
}

pub fn settings_value(node: &NodeSettings, vxlan_port: u16) -> lb_common::Settings {
    lb_common::Settings {
        malformed_policy: match node.malformed {
            MalformedPolicy::Pass => lb_common::MALFORMED_PASS,
            MalformedPolicy::Drop => lb_common::MALFORMED_DROP,
        },
        snat_port_min: node.snat_ports.0,
        snat_port_max: node.snat_ports.1,
        vxlan_port,
        _pad: 0,
    }
}

pub fn service_value(s: &PlannedService) -> lb_common::Service {
    lb_common::Service {
        snat_addr: s.nat_addr.octets(),
        flags: if s.sticky { lb_common::SERVICE_STICKY } else { 0 }
            | if s.network.is_some() { lb_common::SERVICE_OVERLAY } else { 0 },
        active_backends: s.backends.iter().filter(|b| b.weight > 0).count() as u32,
        mss: s.mss,
        _pad: 0,
    }
}

pub fn backend_value(b: &PlannedBackend) -> lb_common::Backend {
    lb_common::Backend { addr: b.addr.ip().octets(), port: b.addr.port(), _pad: 0 }
}

pub fn frontend_key(f: &Frontend) -> lb_common::FrontendKey {
    lb_common::FrontendKey {
        addr: f.addr.map_or(lb_common::ANY_LOCAL_ADDR, |a| a.octets()),
        port: f.port,
        proto: f.proto.number(),
        _pad: 0,
    }
}

/// `slb_fe_ports` contents of a plan.
pub fn port_bits(plan: &Plan) -> BTreeMap<u16, u8> {
    let mut bits = BTreeMap::new();
    for f in plan.services.iter().flat_map(|s| &s.frontends) {
        *bits.entry(f.port).or_insert(0) |= f.proto.port_bit();
    }
    bits
}

fn maglev_index(service_id: u32, slot: usize) -> u32 {
    service_id * MAGLEV_SIZE + slot as u32
}

/// The writes from `prev` (None: unknown, write everything) to `next`.
pub fn diff(prev: Option<&Plan>, next: &Plan) -> Diff {
    let empty = Plan::default();
    let full = prev.is_none();
    let prev = prev.unwrap_or(&empty);
    let mut d = Diff::default();
    let s = &mut d.summary;

    let settings = settings_value(&next.node, next.vxlan_port);
    if full || settings_value(&prev.node, prev.vxlan_port) != settings {
        d.settings = Some(settings);
        s.settings_changed = !full;
    }
    for vni in &next.overlays {
        if full || !prev.overlays.contains(vni) {
            d.overlays.push(*vni);
            s.overlays_added += 1;
        }
    }
    for vni in &prev.overlays {
        if !next.overlays.contains(vni) {
            d.removed_overlays.push(*vni);
            s.overlays_removed += 1;
        }
    }

    let prev_services: HashMap<u32, &PlannedService> = prev.services.iter().map(|s| (s.id, s)).collect();
    let next_ids: HashMap<u32, &PlannedService> = next.services.iter().map(|s| (s.id, s)).collect();
    for svc in &next.services {
        let old = prev_services.get(&svc.id).copied();
        match old {
            None => s.services_added += 1,
            Some(o)
                if o.sticky != svc.sticky
                    || o.nat_addr != svc.nat_addr
                    || o.frontends != svc.frontends
                    || o.network != svc.network
                    || o.mss != svc.mss =>
            {
                s.services_changed += 1
            }
            _ => {}
        }
        let old_backends: HashMap<u32, &PlannedBackend> = old.map(|o| o.backends.iter().map(|b| (b.id, b)).collect()).unwrap_or_default();
        for b in &svc.backends {
            match old_backends.get(&b.id) {
                None => {
                    d.backends.push((b.id, backend_value(b)));
                    s.backends_added += 1;
                }
                Some(o) if o.name != b.name || o.addr != b.addr => {
                    // A retired id handed out again within this service.
                    d.backends.push((b.id, backend_value(b)));
                    s.backends_added += 1;
                    s.backends_removed += 1;
                }
                Some(o) => {
                    if full {
                        d.backends.push((b.id, backend_value(b)));
                    }
                    if o.weight != b.weight {
                        s.backends_reweighted += 1;
                    }
                }
            }
        }
        if let Some(o) = old {
            s.backends_removed += o.backends.iter().filter(|b| !svc.backends.iter().any(|n| n.id == b.id)).count();
            // (an id handed out again to another backend was counted above)
        }
        match old {
            Some(o) if !full && o.maglev.len() == svc.maglev.len() => {
                if !Arc::ptr_eq(&o.maglev, &svc.maglev) {
                    let changed = o.maglev.iter().zip(svc.maglev.iter()).enumerate().filter(|(_, (a, b))| a != b);
                    d.maglev.extend(changed.map(|(slot, (_, b))| (maglev_index(svc.id, slot), *b)));
                }
            }
            _ => d.maglev.extend(svc.maglev.iter().enumerate().map(|(slot, b)| (maglev_index(svc.id, slot), *b))),
        }
        if full || old.map(service_value) != Some(service_value(svc)) {
            d.services.push((svc.id, service_value(svc)));
        }
    }
    for old in &prev.services {
        if !next_ids.contains_key(&old.id) {
            s.services_removed += 1;
            s.backends_removed += old.backends.len();
            d.removed_services.push(old.id);
            d.removed_maglev.extend((0..old.maglev.len()).map(|slot| (maglev_index(old.id, slot), 0)));
        }
    }

    let owners = |plan: &Plan| -> HashMap<lb_common::FrontendKey, u32> {
        plan.services.iter().flat_map(|s| s.frontends.iter().map(move |f| (frontend_key(f), s.id))).collect()
    };
    let (old_fe, new_fe) = (owners(prev), owners(next));
    for (key, id) in &new_fe {
        if full || old_fe.get(key) != Some(id) {
            d.frontends.push((*key, lb_common::Frontend { service_id: *id }));
        }
        if !old_fe.contains_key(key) {
            s.frontends_added += 1;
        }
    }
    for key in old_fe.keys() {
        if !new_fe.contains_key(key) {
            d.removed_frontends.push(*key);
            s.frontends_removed += 1;
        }
    }
    d.frontends.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    d.removed_frontends.sort_by_key(|k| (k.addr, k.port, k.proto));

    let (old_ports, new_ports) = (port_bits(prev), port_bits(next));
    for (port, bits) in &new_ports {
        if full || old_ports.get(port) != Some(bits) {
            d.fe_ports.push((*port, *bits));
        }
    }
    for port in old_ports.keys() {
        if !new_ports.contains_key(port) {
            d.fe_ports.push((*port, 0));
        }
    }
    if full {
        d.summary = Summary::default();
    }
    d
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
