//! Wants -> model services: each checked against its network and the ports already claimed, then
//! one service per target port (`<service>/<target>` when there are several), its tasks as backends.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddrV4,
};

use bollard::models::{NetworkTaskInfo, Task};

use super::{
    backends::{TaskBackend, task_backends},
    networks::{NetView, Networks},
    nodes::Nodes,
    ports::PortSpec,
    wants::Want,
};
use crate::model::{Backend, Frontend, Proto, Service};

pub(super) struct Built {
    pub services: Vec<Service>,
    /// Names of the networks the services are on.
    pub networks_used: BTreeSet<String>,
}

/// The owner of each published port.
type Claimed = BTreeMap<(u16, Proto), String>;

/// In the wants' order: a port goes to the first want that publishes it.
pub(super) fn build(
    wants: Vec<Want>,
    nets: &Networks,
    nodes: &Nodes,
    tasks: Option<&HashMap<&str, &Task>>,
    notes: &mut Vec<String>,
) -> Built {
    let mut built = Built { services: Vec::new(), networks_used: BTreeSet::new() };
    let mut claimed = Claimed::new();
    for want in wants {
        let name = &want.service;
        let Some(net) = usable_network(&want, nets, nodes, notes) else { continue };
        if let Err(why) = claim_ports(&mut claimed, &want) {
            notes.push(format!("service {name:?}: {why}; service left out"));
            continue;
        }
        let entries: &[NetworkTaskInfo] = net.services.get(name).and_then(|s| s.tasks.as_deref()).unwrap_or(&[]);
        let backends = task_backends(name, entries, tasks, nodes);
        built.services.extend(services_by_target(&want, net, &backends));
        built.networks_used.insert(net.network.name.clone());
    }
    built
}

/// The want's network, if this node can read it and has a load-balancer endpoint on it.
fn usable_network<'n>(
    want: &Want,
    nets: &'n Networks,
    nodes: &Nodes,
    notes: &mut Vec<String>,
) -> Option<&'n NetView<'n>> {
    let name = &want.service;
    let Some(net) = nets.by_ref(&want.network) else {
        notes.push(format!(
            "service {name:?}: network {:?} is not an overlay network this node can read; service left out",
            want.network
        ));
        return None;
    };
    if net.network.endpoint(&nodes.local).is_none() {
        notes.push(format!(
            "service {name:?}: network {:?} has no load-balancer endpoint on this node yet; service left out",
            net.network.name
        ));
        return None;
    }
    Some(net)
}

/// Claims all the want's ports, or none if one is claimed already or listed twice.
fn claim_ports(claimed: &mut Claimed, want: &Want) -> Result<(), String> {
    let clash: Vec<String> = want
        .ports
        .iter()
        .filter_map(|p| {
            claimed.get(&(p.published, p.proto)).map(|o| format!("{}/{} (service {o:?})", p.published, p.proto.name()))
        })
        .collect();
    if !clash.is_empty() {
        return Err(format!("port(s) {} already published", clash.join(", ")));
    }
    let mut dup = BTreeSet::new();
    if let Some(p) = want.ports.iter().find(|p| !dup.insert((p.published, p.proto))) {
        return Err(format!("port {}/{} published twice", p.published, p.proto.name()));
    }
    for p in &want.ports {
        claimed.insert((p.published, p.proto), want.service.clone());
    }
    Ok(())
}

fn services_by_target(want: &Want, net: &NetView, backends: &[TaskBackend]) -> Vec<Service> {
    let name = &want.service;
    let by_target: BTreeMap<u16, Vec<&PortSpec>> = want.ports.iter().fold(BTreeMap::new(), |mut m, p| {
        m.entry(p.target).or_insert_with(Vec::new).push(p);
        m
    });
    let split = by_target.len() > 1;
    by_target
        .into_iter()
        .map(|(target, ports)| {
            let mut frontends: Vec<Frontend> =
                ports.iter().map(|p| Frontend { addr: None, port: p.published, proto: p.proto }).collect();
            frontends.sort();
            let backends = backends
                .iter()
                .map(|b| Backend {
                    name: b.name.clone(),
                    addr: SocketAddrV4::new(b.ip, target),
                    weight: b.weight,
                    node: b.node.clone(),
                })
                .collect();
            Service {
                name: if split { format!("{name}/{target}") } else { name.clone() },
                frontends,
                backends,
                sticky: want.sticky,
                nat_addrs: Vec::new(),
                network: Some(net.network.name.clone()),
                vip: false,
                client_source: false,
            }
        })
        .collect()
}
