//! [`diff`]: the map writes that take the datapath from one plan to the next, and the map values
//! a plan stands for.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::{Plan, PlannedBackend, PlannedService};
use crate::model::{Frontend, MalformedPolicy, NodeSettings};

/// Map writes that take the datapath from `prev` to `next`, in the groups the writer applies in
/// order. `prev = None` means "unknown": every entry of `next` is written (a full sync).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// SNAT addresses to add to `slb_snat_addrs`, before anything else (replies of the first
    /// connections must be recognised).
    pub snat_addrs: Vec<[u8; 4]>,
    pub settings: Option<lb_common::Settings>,
    /// VNIs to add to `slb_overlays`.
    pub overlays: Vec<u32>,
    /// Backends that are new or whose address changed (or every backend, in a full sync).
    pub backends: Vec<(u32, lb_common::Backend)>,
    /// Maglev tables of live services that are new or changed: (service id, table). Each is
    /// written whole, as a new inner map swapped in at once.
    pub maglev: Vec<(u32, Arc<[u32]>)>,
    pub services: Vec<(u32, lb_common::Service)>,
    pub frontends: Vec<(lb_common::FrontendKey, lb_common::Frontend)>,
    /// `slb_fe_ports` values that change (0 clears the port).
    pub fe_ports: Vec<(u16, u8)>,
    pub removed_frontends: Vec<lb_common::FrontendKey>,
    /// Services that no longer exist: their entry is zeroed after their frontends are gone.
    pub removed_services: Vec<u32>,
    /// Their Maglev tables, removed after them.
    pub removed_maglev: Vec<u32>,
    /// Backends no service has any more, flagged [`lb_common::BACKEND_REMOVED`] once no slot
    /// names them (their UDP flows then move; their id may be handed out again later).
    pub removed_backends: Vec<(u32, lb_common::Backend)>,
    /// VNIs no network uses any more.
    pub removed_overlays: Vec<u32>,
    /// SNAT addresses no service uses any more, removed last.
    pub removed_snat_addrs: Vec<[u8; 4]>,
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

/// The node-wide settings of a plan; the NAT port range is the datapath's filter for replies.
pub fn settings_value(plan: &Plan) -> lb_common::Settings {
    let (min, max) = plan.node.snat_ports;
    lb_common::Settings {
        malformed_policy: match plan.node.malformed {
            MalformedPolicy::Pass => lb_common::MALFORMED_PASS,
            MalformedPolicy::Drop => lb_common::MALFORMED_DROP,
        },
        snat_port_min: min,
        snat_port_max: max,
        vxlan_port: plan.vxlan_port,
        flags: if plan.services.iter().any(|s| s.client_source) { lb_common::SETTINGS_CLIENT_SOURCE } else { 0 },
    }
}

pub fn service_value(s: &PlannedService, node: &NodeSettings) -> lb_common::Service {
    let (snat_port_min, snat_port_max) = node.snat_ports;
    let mut snat_addrs = [[0u8; 4]; lb_common::maps::MAX_SNAT_PER_SERVICE];
    let mut snat_count = 0;
    for (slot, addr) in snat_addrs.iter_mut().zip(s.nat_addrs()) {
        *slot = addr.octets();
        snat_count += 1;
    }
    lb_common::Service {
        snat_addrs,
        snat_count,
        flags: if s.sticky { lb_common::SERVICE_STICKY } else { 0 }
            | if s.network.is_some() { lb_common::SERVICE_OVERLAY } else { 0 }
            | if s.is_vip() { lb_common::SERVICE_VIP } else { 0 }
            | if s.client_source { lb_common::SERVICE_CLIENT_SOURCE } else { 0 },
        active_backends: s.backends.iter().filter(|b| b.weight > 0).count() as u32,
        mss: s.mss,
        _pad: 0,
        snat_port_min,
        snat_port_max,
        vni: s.vip_vni,
    }
}

/// Every SNAT address of a plan (`slb_snat_addrs`).
pub fn snat_addrs(plan: &Plan) -> BTreeSet<[u8; 4]> {
    plan.services.iter().flat_map(|s| s.nat_addrs()).map(|a| a.octets()).collect()
}

pub fn backend_value(b: &PlannedBackend) -> lb_common::Backend {
    lb_common::Backend { addr: b.addr.ip().octets(), port: b.addr.port(), flags: 0 }
}

pub fn frontend_key(f: &Frontend) -> lb_common::FrontendKey {
    lb_common::FrontendKey {
        addr: f.addr.map_or(lb_common::ANY_LOCAL_ADDR, |a| a.octets()),
        port: f.port,
        proto: f.proto.number(),
        _pad: 0,
    }
}

/// `slb_fe_ports` contents of a plan: each frontend's protocol bit, and the same bit shifted by
/// [`lb_common::PORT_TRACKED_SHIFT`] (connections may run on the port).
pub fn port_bits(plan: &Plan) -> BTreeMap<u16, u8> {
    let mut bits = BTreeMap::new();
    // A VIP's frontends (every port) are the socket programs' alone: no packet is for them.
    for f in plan.services.iter().filter(|s| !s.is_vip()).flat_map(|s| &s.frontends) {
        let bit = f.proto.port_bit();
        *bits.entry(f.port).or_insert(0) |= bit | bit << lb_common::PORT_TRACKED_SHIFT;
    }
    bits
}

/// The bits of a port value that say only "connections may still run here".
pub const TRACKED_BITS: u8 = (lb_common::PROTO_BIT_TCP | lb_common::PROTO_BIT_UDP) << lb_common::PORT_TRACKED_SHIFT;

/// The writes from `prev` (None: unknown, write everything) to `next`.
/// Counters (`slb_svc_stats`, `slb_be_stats`) that must start from zero before `next` is
/// written: those of ids that are new or now name something else than in `counted`, the plan
/// the counters were kept for (the last applied one, from `state.json` after a restart; `None`:
/// unknown, so all). A backend keeps its counters while its id names the same service task at
/// the same address, across agent restarts included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsReset {
    pub services: Vec<u32>,
    pub backends: Vec<u32>,
}

pub fn stats_to_reset(counted: Option<&Plan>, next: &Plan) -> StatsReset {
    let empty = Plan::default();
    let counted = counted.unwrap_or(&empty);
    let services: HashMap<u32, &str> = counted.services.iter().map(|s| (s.id, s.name.as_str())).collect();
    let backends: HashMap<u32, (&str, std::net::SocketAddrV4)> =
        counted.services.iter().flat_map(|s| &s.backends).map(|b| (b.id, (b.name.as_str(), b.addr))).collect();
    StatsReset {
        services: next
            .services
            .iter()
            .filter(|s| services.get(&s.id) != Some(&s.name.as_str()))
            .map(|s| s.id)
            .collect(),
        backends: next
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .filter(|b| backends.get(&b.id) != Some(&(b.name.as_str(), b.addr)))
            .map(|b| b.id)
            .collect(),
    }
}

pub fn diff(prev: Option<&Plan>, next: &Plan) -> Diff {
    let empty = Plan::default();
    let full = prev.is_none();
    let prev = prev.unwrap_or(&empty);
    let mut d = Diff::default();
    let s = &mut d.summary;

    let (old_snat, new_snat) = (snat_addrs(prev), snat_addrs(next));
    d.snat_addrs =
        if full { new_snat.iter().copied().collect() } else { new_snat.difference(&old_snat).copied().collect() };
    d.removed_snat_addrs = old_snat.difference(&new_snat).copied().collect();
    let settings = settings_value(next);
    if full || settings_value(prev) != settings {
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
                    || o.more_nat_addrs != svc.more_nat_addrs
                    || o.frontends != svc.frontends
                    || o.network != svc.network
                    || o.mss != svc.mss =>
            {
                s.services_changed += 1
            }
            _ => {}
        }
        let old_backends: HashMap<u32, &PlannedBackend> =
            old.map(|o| o.backends.iter().map(|b| (b.id, b)).collect()).unwrap_or_default();
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
        let same_table = old.is_some_and(|o| Arc::ptr_eq(&o.maglev, &svc.maglev) || o.maglev == svc.maglev);
        if full || !same_table {
            d.maglev.push((svc.id, svc.maglev.clone()));
        }
        let value = service_value(svc, &next.node);
        if full || old.map(|o| service_value(o, &prev.node)) != Some(value) {
            d.services.push((svc.id, value));
        }
    }
    for old in &prev.services {
        if !next_ids.contains_key(&old.id) {
            s.services_removed += 1;
            s.backends_removed += old.backends.len();
            d.removed_services.push(old.id);
            d.removed_maglev.push(old.id);
        }
    }

    let kept = next.backend_ids();
    d.removed_backends = prev
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .filter(|b| !kept.contains(&b.id))
        .map(|b| (b.id, lb_common::Backend { flags: lb_common::BACKEND_REMOVED, ..backend_value(b) }))
        .collect();

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
    // A port whose last frontend went keeps its "tracked" bits: the connections on it finish on
    // their backends; the agent's table sweep clears the bits once none is left.
    for (port, bits) in &old_ports {
        if !new_ports.contains_key(port) {
            d.fe_ports.push((*port, bits & TRACKED_BITS));
        }
    }
    if full {
        d.summary = Summary::default();
    }
    d
}
