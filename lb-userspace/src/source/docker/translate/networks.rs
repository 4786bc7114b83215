//! The overlay networks: VNI, subnet, MTU and each node's load-balancer endpoint from a verbose
//! inspect, and the lookup of a network by the name or id a service refers to it by.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{NetworkInspect, ServiceInfo};

use super::{nodes::Nodes, parse_ip};
use crate::{
    limits,
    model::{Endpoint, Network, Subnet},
};

pub const OPT_VNI: &str = "com.docker.network.driver.overlay.vxlanid_list";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";

/// A network as read, before we know whether a service uses it.
pub(super) struct NetView<'a> {
    id: &'a str,
    pub network: Network,
    pub ingress: bool,
    /// `Services` of the verbose inspect, decoded.
    pub services: BTreeMap<String, ServiceInfo>,
}

pub(super) struct Networks<'a>(Vec<NetView<'a>>);

impl<'a> Networks<'a> {
    /// The overlays among `inspects`; one that cannot be read is left out with a note.
    pub fn read(inspects: &'a [NetworkInspect], nodes: &Nodes, notes: &mut Vec<String>) -> Self {
        let mut nets = Vec::new();
        for inspect in inspects.iter().filter(|i| i.driver.as_deref() == Some("overlay")) {
            let name = inspect.name.clone().unwrap_or_default();
            match network_of(inspect, nodes) {
                Ok(network) => nets.push(NetView {
                    id: inspect.id.as_deref().unwrap_or(""),
                    network,
                    ingress: inspect.ingress == Some(true) || name == "ingress",
                    services: services_of(inspect),
                }),
                Err(why) => notes.push(format!("network {name:?}: {why}; services on it are left out")),
            }
        }
        Networks(nets)
    }

    /// The network named `r`, or with id `r`.
    pub fn by_ref(&self, r: &str) -> Option<&NetView<'a>> {
        self.0.iter().find(|n| n.network.name == r || (!n.id.is_empty() && (n.id == r)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &NetView<'a>> {
        self.0.iter()
    }

    pub fn ingress(&self) -> Option<&NetView<'a>> {
        self.0.iter().find(|n| n.ingress)
    }

    /// The networks named in `used`, by name.
    pub fn into_used(self, used: &BTreeSet<String>) -> Vec<Network> {
        let mut networks: Vec<Network> =
            self.0.into_iter().filter(|n| used.contains(&n.network.name)).map(|n| n.network).collect();
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        networks
    }
}

fn services_of(inspect: &NetworkInspect) -> BTreeMap<String, ServiceInfo> {
    inspect
        .services
        .iter()
        .flatten()
        .filter_map(|(k, v)| serde_json::from_value::<ServiceInfo>(v.clone()).ok().map(|s| (k.clone(), s)))
        .collect()
}

fn network_of(inspect: &NetworkInspect, nodes: &Nodes) -> Result<Network, String> {
    let name = inspect.name.clone().unwrap_or_default();
    let options = inspect.options.clone().unwrap_or_default();
    let vni_s = options.get(OPT_VNI).ok_or_else(|| format!("no option {OPT_VNI}"))?;
    let first = vni_s.split(',').next().unwrap_or_default();
    let vni = option_integer(OPT_VNI, vni_s, first, "a VNI", limits::vni)?;
    let mtu = match options.get(OPT_MTU) {
        None => limits::DEFAULT_OVERLAY_MTU,
        Some(m) => option_integer(OPT_MTU, m, m, "an MTU", limits::overlay_mtu)?,
    };
    // The first IPv4 subnet; IPv6 ones (dual-stack overlays) are not ours to serve.
    let subnet_s = inspect
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.iter().filter_map(|c| c.subnet.as_deref()).find(|s| !s.contains(':')))
        .ok_or("no IPv4 subnet in IPAM")?;
    let subnet = limits::subnet(subnet_s).map_err(|e| format!("IPAM subnet: {e}"))?;
    let endpoints = endpoints_of(inspect, &name, subnet, nodes);
    Ok(Network { name, vni, subnet, mtu, endpoints })
}

/// Each node's load-balancer endpoint, the task named `<network>-endpoint`: gossiped in
/// `Services[""]`, the local one also from `Containers`. One per node and per address.
fn endpoints_of(inspect: &NetworkInspect, name: &str, subnet: Subnet, nodes: &Nodes) -> Vec<Endpoint> {
    let endpoint_name = format!("{name}-endpoint");
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let gossiped = inspect
        .services
        .as_ref()
        .and_then(|s| s.get(""))
        .and_then(|v| serde_json::from_value::<ServiceInfo>(v.clone()).ok());
    for task in gossiped.iter().flat_map(|s| s.tasks.iter().flatten()) {
        if task.name.as_deref() != Some(endpoint_name.as_str()) {
            continue;
        }
        if let (Some(node), Some(addr)) = (nodes.host_of(task), task.endpoint_ip.as_deref().and_then(parse_ip)) {
            endpoints.push(Endpoint { node: node.clone(), addr });
        }
    }
    if !endpoints.iter().any(|e| e.node == nodes.local) {
        let own = inspect.containers.iter().flatten().find(|(_, c)| c.name.as_deref() == Some(endpoint_name.as_str()));
        if let Some(addr) = own.and_then(|(_, c)| c.ipv4_address.as_deref()).and_then(parse_ip) {
            endpoints.push(Endpoint { node: nodes.local.clone(), addr });
        }
    }
    endpoints.retain(|e| subnet.contains(e.addr));
    let mut seen = BTreeSet::new();
    endpoints.retain(|e| seen.insert(e.node.clone()) && seen.insert(e.addr.to_string()));
    endpoints.sort_by(|a, b| a.node.cmp(&b.node));
    endpoints
}

/// The integer `value`, taken from option `option` (whose whole value is `full`), if `check`
/// accepts it; the error names the option and the rule.
fn option_integer<T>(
    option: &str,
    full: &str,
    value: &str,
    what: &str,
    check: fn(i64) -> Result<T, limits::Invalid>,
) -> Result<T, String> {
    let not = |why: String| format!("option {option}={full:?} is not {what}: {why}");
    let n: i64 = value.trim().parse().map_err(|_| not(format!("{:?} is not an integer", value.trim())))?;
    check(n).map_err(|e| not(e.to_string()))
}
