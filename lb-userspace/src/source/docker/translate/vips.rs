//! Service VIPs on user overlays -> VIP model services: one per (service, network), named
//! `<service>@<network>`, frontends `VIP:*` for TCP and UDP, the service's tasks on that network
//! as backends on port [`ANY_PORT`]. A worker takes the VIPs its networks' verbose inspects list;
//! a manager takes `/services`' `Endpoint.VirtualIPs` (none for dnsrr services) and notes where
//! an inspect disagrees. Ingress VIPs are not served: ingress is reached through published ports.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use bollard::models::{EndpointSpecModeEnum, NetworkTaskInfo, Service as DockerService, Task};

use super::{
    backends::task_backends,
    networks::{NetView, Networks},
    nodes::Nodes,
    parse_ip,
    services::Built,
};
use crate::model::{ANY_PORT, Backend, Frontend, Proto, Service};

/// Each VIP found and its network, by (network name, service name).
type Found<'n> = BTreeMap<(String, String), (&'n NetView<'n>, Ipv4Addr)>;

/// By network, then service. `managed`: a manager's `/services`.
pub(super) fn build(
    managed: Option<&[DockerService]>,
    nets: &Networks,
    nodes: &Nodes,
    tasks: Option<&HashMap<&str, &Task>>,
    notes: &mut Vec<String>,
) -> Built {
    let found = match managed {
        Some(services) => of_manager(services, nets, notes),
        None => of_inspects(nets),
    };
    let mut built = Built { services: Vec::new(), networks_used: BTreeSet::new() };
    let mut claimed: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for ((net_name, svc), (net, vip)) in found {
        let subnet = net.network.subnet;
        if !subnet.contains(vip) || subnet.is_reserved(vip) {
            notes.push(format!(
                "service {svc:?}: VIP {vip} is not a host address of network {net_name:?} ({subnet}); VIP left out"
            ));
            continue;
        }
        let name = format!("{svc}@{net_name}");
        if let Some(owner) = claimed.get(&vip) {
            notes.push(format!(
                "service {svc:?}: VIP {vip} on network {net_name:?} is {owner:?}'s already; VIP left out"
            ));
            continue;
        }
        claimed.insert(vip, name.clone());
        let entries: &[NetworkTaskInfo] = net.services.get(&svc).and_then(|s| s.tasks.as_deref()).unwrap_or(&[]);
        let backends = task_backends(&svc, entries, tasks, nodes)
            .into_iter()
            .map(|b| Backend { name: b.name, addr: SocketAddrV4::new(b.ip, ANY_PORT), weight: b.weight, node: b.node })
            .collect();
        built.services.push(Service {
            name,
            frontends: [Proto::Tcp, Proto::Udp]
                .map(|proto| Frontend { addr: Some(vip), port: ANY_PORT, proto })
                .to_vec(),
            backends,
            sticky: false,
            nat_addrs: Vec::new(),
            network: Some(net_name.clone()),
            vip: true,
            client_source: false,
        });
        built.networks_used.insert(net_name);
    }
    built
}

/// A worker's view: the VIP of every service its user overlays list.
fn of_inspects<'n>(nets: &'n Networks) -> Found<'n> {
    let mut found = Found::new();
    for net in nets.iter().filter(|n| !n.ingress) {
        for svc in net.services.keys().filter(|s| !s.is_empty()) {
            if let Some(vip) = listed_vip(net, svc).as_deref().and_then(parse_ip) {
                found.insert((net.network.name.clone(), svc.clone()), (net, vip));
            }
        }
    }
    found
}

/// What `net`'s inspect lists as `svc`'s VIP (`""` or `<nil>` for a dnsrr service), if it
/// lists `svc`.
fn listed_vip(net: &NetView, svc: &str) -> Option<String> {
    net.services.get(svc).map(|s| s.vip.clone().unwrap_or_default())
}

/// A manager's view: the `VirtualIPs` of every VIP-mode service on a user overlay this node
/// reads. A VIP only an inspect lists is noted and left out.
fn of_manager<'n>(services: &[DockerService], nets: &'n Networks, notes: &mut Vec<String>) -> Found<'n> {
    let mut found = Found::new();
    for s in services {
        let spec = s.spec.as_ref();
        let Some(svc) = spec.and_then(|s| s.name.as_deref()) else { continue };
        if spec.and_then(|s| s.endpoint_spec.as_ref()).and_then(|e| e.mode) == Some(EndpointSpecModeEnum::DNSRR) {
            continue;
        }
        for v in s.endpoint.iter().flat_map(|e| e.virtual_ips.iter().flatten()) {
            let (id, addr) = (v.network_id.as_deref().unwrap_or_default(), v.addr.as_deref().unwrap_or_default());
            // A network no local task or container is attached to is not this node's to serve.
            let Some(net) = (!id.is_empty()).then(|| nets.by_ref(id)).flatten() else { continue };
            if net.ingress {
                continue;
            }
            let net_name = &net.network.name;
            let Some(vip) = parse_ip(addr) else {
                notes.push(format!(
                    "service {svc:?}: VirtualIPs address {addr:?} on network {net_name:?} is not IPv4; VIP left out"
                ));
                continue;
            };
            if let Some(listed) = listed_vip(net, svc).filter(|l| parse_ip(l) != Some(vip)) {
                notes.push(format!(
                    "service {svc:?}: network {net_name:?} lists VIP {listed:?}, /services says {vip}; using {vip}"
                ));
            }
            found.insert((net_name.clone(), svc.to_owned()), (net, vip));
        }
    }
    for ((net_name, svc), (_, vip)) in of_inspects(nets) {
        if !found.contains_key(&(net_name.clone(), svc.clone())) {
            notes.push(format!(
                "service {svc:?}: network {net_name:?} lists VIP {vip}, /services has none there (dnsrr, or changed); VIP left out"
            ));
        }
    }
    found
}
