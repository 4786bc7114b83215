//! The swarm's nodes: the local one from `info`, the others from `/nodes` (manager) or the
//! networks' gossip peers (worker), and the lookup from a `Host IP` to the node it names.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use bollard::models::{NetworkInspect, NetworkTaskInfo, Node as DockerNode, SystemInfo};

use super::{Snapshot, TranslateError, parse_ip};
use crate::model::Node;

pub(super) struct Nodes {
    /// The local node's name (its Docker node id).
    pub local: String,
    /// Unique names and addresses; the local node first, the others by name.
    pub list: Vec<Node>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl Nodes {
    pub fn read(snap: &Snapshot, notes: &mut Vec<String>) -> Result<Self, TranslateError> {
        let local = local_node(&snap.info)?;
        let mut list = vec![local.clone()];
        match &snap.nodes {
            Some(listed) => list.extend(listed_nodes(listed, &local.name, notes)),
            None => list.extend(gossip_peers(&snap.networks)),
        }
        let mut seen_addr = BTreeSet::new();
        let mut seen_name = BTreeSet::new();
        list.retain(|n| seen_addr.insert(n.addr) && seen_name.insert(n.name.clone()));
        list[1..].sort_by(|a, b| a.name.cmp(&b.name));
        let by_addr = list.iter().map(|n| (n.addr, n.name.clone())).collect();
        Ok(Nodes { local: local.name, list, by_addr })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.list.iter().any(|n| n.name == name)
    }

    /// The node named by a network entry's `Host IP`.
    pub fn host_of(&self, entry: &NetworkTaskInfo) -> Option<&String> {
        let host = entry.info.as_ref().and_then(|i| i.get("Host IP")).and_then(|h| parse_ip(h))?;
        self.by_addr.get(&host)
    }
}

fn local_node(info: &SystemInfo) -> Result<Node, TranslateError> {
    let swarm = info.swarm.clone().unwrap_or_default();
    let local = swarm.node_id.clone().unwrap_or_default();
    let state = swarm.local_node_state.map(|s| s.to_string()).unwrap_or_default();
    if local.is_empty() || state != "active" {
        return Err(TranslateError::NotInSwarm { state, node_id: local });
    }
    let addr_s = swarm.node_addr.clone().unwrap_or_default();
    let addr = parse_ip(&addr_s).filter(|a| !a.is_unspecified()).ok_or(TranslateError::NoNodeAddr(addr_s))?;
    Ok(Node { name: local, addr })
}

/// The other nodes of a manager's `/nodes`.
fn listed_nodes(listed: &[DockerNode], local: &str, notes: &mut Vec<String>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for n in listed {
        let Some(id) = n.id.clone().filter(|i| i != local) else { continue };
        let status =
            n.status.as_ref().and_then(|s| s.addr.as_deref()).and_then(parse_ip).filter(|a| !a.is_unspecified());
        // A manager bound to 0.0.0.0 reports that as status.addr; its manager address has the IP.
        let manager = n
            .manager_status
            .as_ref()
            .and_then(|m| m.addr.as_deref())
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(ip, _)| parse_ip(ip));
        match status.or(manager) {
            Some(addr) => nodes.push(Node { name: id, addr }),
            None => notes.push(format!("node {id}: no address in status.addr; left out")),
        }
    }
    nodes
}

/// A worker's view: the gossip peers of its networks, named `peer-<address>`.
fn gossip_peers(networks: &[NetworkInspect]) -> impl Iterator<Item = Node> + '_ {
    networks
        .iter()
        .flat_map(|n| n.peers.iter().flatten())
        .filter_map(|peer| peer.ip.as_deref().and_then(parse_ip))
        .map(|addr| Node { name: format!("peer-{addr}"), addr })
}
